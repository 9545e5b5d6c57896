//! Credentials and their IDs.
//!
//! A non-discoverable credential carries everything needed to use it in its
//! ID: the key store seals `version | reserved | algorithm | key handle`,
//! bound to the rp ID hash, so a forged, altered or foreign ID is rejected
//! before any key is touched. A discoverable credential has a random ID and
//! lives in the credential store, so deleting it really deletes it.

use crate::platform::{Algorithm, CredentialStore, KeyStore, KeyStoreError, ResidentCredential};
use crate::status::{CtapResult, StatusCode};

/// Credential IDs stay within 255 bytes so that CTAP1/U2F key handles
/// (one length byte) and CTAP2 credentials interoperate.
pub const MAX_CREDENTIAL_ID_LEN: usize = 255;
/// Length of a discoverable credential's random ID.
pub const RESIDENT_ID_LEN: usize = 16;
const PAYLOAD_VERSION: u8 = 1;

/// A credential located for a request.
pub struct Credential {
    pub credential_id: Vec<u8>,
    pub algorithm: Algorithm,
    pub key_handle: Vec<u8>,
    /// Set for discoverable credentials.
    pub resident: Option<ResidentCredential>,
}

impl From<ResidentCredential> for Credential {
    fn from(resident: ResidentCredential) -> Self {
        Self {
            credential_id: resident.credential_id.clone(),
            algorithm: resident.algorithm,
            key_handle: resident.key_handle.clone(),
            resident: Some(resident),
        }
    }
}

pub fn encode_payload(algorithm: Algorithm, key_handle: &[u8]) -> Vec<u8> {
    let mut payload = Vec::with_capacity(4 + key_handle.len());
    payload.push(PAYLOAD_VERSION);
    payload.push(0); // reserved for credential flags (credProtect)
    // COSE algorithm IDs in use fit in i16.
    payload.extend_from_slice(&(algorithm.cose_id() as i16).to_be_bytes());
    payload.extend_from_slice(key_handle);
    payload
}

fn decode_payload(payload: &[u8]) -> Option<(Algorithm, Vec<u8>)> {
    match payload {
        [PAYLOAD_VERSION, 0, a, b, key_handle @ ..] if !key_handle.is_empty() => {
            let algorithm = Algorithm::from_cose_id(i64::from(i16::from_be_bytes([*a, *b])))?;
            Some((algorithm, key_handle.to_vec()))
        }
        _ => None,
    }
}

/// A fresh random ID for a discoverable credential.
pub fn random_resident_id() -> CtapResult<Vec<u8>> {
    let mut id = vec![0u8; RESIDENT_ID_LEN];
    getrandom::fill(&mut id).map_err(|_| StatusCode::Other)?;
    Ok(id)
}

/// Finds the credential that `credential_id` names for `rp_id`, if it is ours.
pub fn resolve(
    keystore: &mut dyn KeyStore,
    credentials: &dyn CredentialStore,
    rp_id: &str,
    rp_id_hash: &[u8; 32],
    credential_id: &[u8],
) -> CtapResult<Option<Credential>> {
    if credential_id.is_empty() || credential_id.len() > MAX_CREDENTIAL_ID_LEN {
        return Ok(None);
    }
    if credential_id.len() == RESIDENT_ID_LEN {
        let found = credentials.find(credential_id).map_err(|e| {
            tracing::error!(error = %e, "credential store lookup failed");
            StatusCode::Other
        })?;
        return Ok(found.filter(|c| c.rp_id == rp_id).map(Credential::from));
    }
    match keystore.open_credential_id(rp_id_hash, credential_id) {
        Ok(payload) => Ok(decode_payload(&payload).map(|(algorithm, key_handle)| Credential {
            credential_id: credential_id.to_vec(),
            algorithm,
            key_handle,
            resident: None,
        })),
        Err(KeyStoreError::NotAuthentic) => Ok(None),
        Err(e) => {
            tracing::error!(error = %e, "key store could not open a credential ID");
            Err(StatusCode::Other)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_round_trip_and_rejections() {
        let p = encode_payload(Algorithm::Es256, &[1, 2, 3]);
        assert_eq!(decode_payload(&p), Some((Algorithm::Es256, vec![1, 2, 3])));
        assert_eq!(decode_payload(&p[..4]), None);
        let mut wrong_version = p.clone();
        wrong_version[0] = 2;
        assert_eq!(decode_payload(&wrong_version), None);
        let mut unknown_alg = p;
        unknown_alg[3] = 0x55;
        assert_eq!(decode_payload(&unknown_alg), None);
    }
}
