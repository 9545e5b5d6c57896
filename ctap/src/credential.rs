//! Credentials and their IDs.
//!
//! A non-discoverable credential carries everything needed to use it in its
//! ID: the key store seals `version | flags | algorithm | key handle length |
//! key handle | credBlob`, bound to the rp ID hash, so a forged, altered or foreign ID is rejected
//! before any key is touched. A discoverable credential has a random ID and
//! lives in the credential store, so deleting it really deletes it.

use crate::platform::{Algorithm, CredentialExtensions, CredentialStore, KeyStore, KeyStoreError, ResidentCredential};
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
    pub extensions: CredentialExtensions,
    /// Set for discoverable credentials.
    pub resident: Option<ResidentCredential>,
}

impl From<ResidentCredential> for Credential {
    fn from(resident: ResidentCredential) -> Self {
        Self {
            credential_id: resident.credential_id.clone(),
            algorithm: resident.algorithm,
            key_handle: resident.key_handle.clone(),
            extensions: resident.extensions.clone(),
            resident: Some(resident),
        }
    }
}

/// Flag bits of a sealed payload: credProtect level in bits 0–1.
const FLAG_CRED_PROTECT_MASK: u8 = 0x03;
const FLAG_HMAC_SECRET: u8 = 0x04;
const FLAG_LARGE_BLOB_KEY: u8 = 0x08;
/// Older IDs have this bit clear: not enabled for third-party payment.
const FLAG_THIRD_PARTY_PAYMENT: u8 = 0x10;

pub fn encode_payload(
    algorithm: Algorithm,
    key_handle: &[u8],
    extensions: &CredentialExtensions,
) -> CtapResult<Vec<u8>> {
    let key_handle_len = u8::try_from(key_handle.len()).map_err(|_| StatusCode::Other)?;
    let mut flags = extensions.cred_protect & FLAG_CRED_PROTECT_MASK;
    if extensions.hmac_secret {
        flags |= FLAG_HMAC_SECRET;
    }
    if extensions.large_blob_key {
        flags |= FLAG_LARGE_BLOB_KEY;
    }
    if extensions.third_party_payment {
        flags |= FLAG_THIRD_PARTY_PAYMENT;
    }
    let mut payload = Vec::with_capacity(5 + key_handle.len() + extensions.cred_blob.len());
    payload.push(PAYLOAD_VERSION);
    payload.push(flags);
    // COSE algorithm IDs in use fit in i16.
    payload.extend_from_slice(&(algorithm.cose_id() as i16).to_be_bytes());
    payload.push(key_handle_len);
    payload.extend_from_slice(key_handle);
    payload.extend_from_slice(&extensions.cred_blob);
    Ok(payload)
}

fn decode_payload(payload: &[u8]) -> Option<(Algorithm, Vec<u8>, CredentialExtensions)> {
    let [PAYLOAD_VERSION, flags, a, b, len, rest @ ..] = payload else {
        return None;
    };
    let algorithm = Algorithm::from_cose_id(i64::from(i16::from_be_bytes([*a, *b])))?;
    let len = usize::from(*len);
    if len == 0 || rest.len() < len {
        return None;
    }
    let (key_handle, cred_blob) = rest.split_at(len);
    let extensions = CredentialExtensions {
        cred_protect: (flags & FLAG_CRED_PROTECT_MASK).max(1),
        hmac_secret: flags & FLAG_HMAC_SECRET != 0,
        cred_blob: cred_blob.to_vec(),
        large_blob_key: flags & FLAG_LARGE_BLOB_KEY != 0,
        third_party_payment: flags & FLAG_THIRD_PARTY_PAYMENT != 0,
    };
    Some((algorithm, key_handle.to_vec(), extensions))
}

/// A fresh random ID for a discoverable credential.
pub fn random_resident_id() -> CtapResult<Vec<u8>> {
    let mut id = vec![0u8; RESIDENT_ID_LEN];
    getrandom::fill(&mut id).map_err(|_| StatusCode::Other)?;
    Ok(id)
}

/// Finds the credential that `credential_id` names for the relying party
/// with `rp_id_hash` (CTAP2's rp ID hash, or U2F's application parameter),
/// if it is ours.
pub fn resolve(
    keystore: &mut dyn KeyStore,
    credentials: &dyn CredentialStore,
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
        return Ok(found.filter(|c| crate::auth_data::rp_id_hash(&c.rp_id) == *rp_id_hash).map(Credential::from));
    }
    match keystore.open_credential_id(rp_id_hash, credential_id) {
        Ok(payload) => Ok(decode_payload(&payload).map(|(algorithm, key_handle, extensions)| Credential {
            credential_id: credential_id.to_vec(),
            algorithm,
            key_handle,
            extensions,
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
        let ext = CredentialExtensions {
            cred_protect: 3,
            hmac_secret: true,
            cred_blob: vec![9, 9],
            large_blob_key: false,
            third_party_payment: true,
        };
        let p = encode_payload(Algorithm::Es256, &[1, 2, 3], &ext).unwrap();
        assert_eq!(decode_payload(&p), Some((Algorithm::Es256, vec![1, 2, 3], ext)));
        assert_eq!(decode_payload(&p[..6]), None);
        let mut wrong_version = p.clone();
        wrong_version[0] = 2;
        assert_eq!(decode_payload(&wrong_version), None);
        let mut unknown_alg = p.clone();
        unknown_alg[3] = 0x55;
        assert_eq!(decode_payload(&unknown_alg), None);
        let mut overlong = p;
        overlong[4] = 200;
        assert_eq!(decode_payload(&overlong), None);
        let plain = encode_payload(Algorithm::Es256, &[1], &CredentialExtensions::default()).unwrap();
        assert_eq!(decode_payload(&plain).unwrap().2.cred_protect, 1, "no credProtect reads as level 1");
        assert!(!decode_payload(&plain).unwrap().2.third_party_payment, "an ID without the bit: not for payments");
        assert!(encode_payload(Algorithm::Es256, &[0; 256], &CredentialExtensions::default()).is_err());
    }
}
