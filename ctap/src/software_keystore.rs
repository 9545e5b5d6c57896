//! The software key store: P-256 keys made by `p256` and Ed25519 keys made
//! by `ed25519-dalek`, private keys wrapped
//! with AES-256-GCM under a key-encryption key derived from one master
//! secret. For machines without a TPM and for tests; the daemon keeps the
//! master secret in its state directory and says loudly that it uses this.
//!
//! No I/O: the caller supplies the master secret and persists it again
//! after [`KeyStore::reset`] (see [`SoftwareKeyStore::master_secret`]).

use aes_gcm::aead::{Aead, Payload};
use aes_gcm::{Aes256Gcm, KeyInit};
use hkdf::Hkdf;
use p256::ecdsa::{Signature, SigningKey, VerifyingKey};
use p256::elliptic_curve::Generate;
use p256::{NistP256, NonZeroScalar};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::authenticator::FIDOSEAL_AAGUID;
use crate::machine_attestation::SoftwareAttestationKey;
use crate::platform::{Algorithm, CreatedKey, KeyStore, KeyStoreError, PinCheck, PublicKey, Secret32};

const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;
/// Version byte in front of every sealed credential ID, also authenticated.
const CREDENTIAL_ID_VERSION: u8 = 1;
const KEY_HANDLE_AAD: &[u8] = b"fidoseal software key handle v1";
/// Ed25519 handles are authenticated apart, so one algorithm's handle is
/// never taken for the other's.
const ED25519_KEY_HANDLE_AAD: &[u8] = b"fidoseal software ed25519 key handle v1";

pub struct SoftwareKeyStore {
    master: Secret32,
    key_wrapping: Aes256Gcm,
    credential_id_sealing: Aes256Gcm,
    secret_derivation: Secret32,
    /// Made in memory on first use; the daemon's store keeps its own on disk.
    machine_attestation: Option<SoftwareAttestationKey>,
}

impl SoftwareKeyStore {
    pub fn new(master: Secret32) -> Self {
        let (key_wrapping, credential_id_sealing, secret_derivation) = derive_keys(&master);
        Self { master, key_wrapping, credential_id_sealing, secret_derivation, machine_attestation: None }
    }

    /// A fresh random master secret.
    pub fn generate_master_secret() -> Result<Secret32, KeyStoreError> {
        let mut secret = Secret32([0; 32]);
        getrandom::fill(&mut secret.0).map_err(|e| KeyStoreError::Backend(format!("no randomness: {e}")))?;
        Ok(secret)
    }

    /// The master secret, for the caller to persist (after a reset it changes).
    pub fn master_secret(&self) -> &Secret32 {
        &self.master
    }
}

fn derive_keys(master: &Secret32) -> (Aes256Gcm, Aes256Gcm, Secret32) {
    let hkdf = Hkdf::<Sha256>::new(None, &master.0);
    let mut wrap = Zeroizing::new([0u8; 32]);
    let mut seal = Zeroizing::new([0u8; 32]);
    let mut derive = Secret32([0u8; 32]);
    // 32-byte outputs are far below HKDF-SHA-256's limit; expand cannot fail.
    let _ = hkdf.expand(b"fidoseal key wrapping", wrap.as_mut());
    let _ = hkdf.expand(b"fidoseal credential id sealing", seal.as_mut());
    let _ = hkdf.expand(b"fidoseal secret derivation", &mut derive.0);
    (Aes256Gcm::new((&*wrap).into()), Aes256Gcm::new((&*seal).into()), derive)
}

fn random_nonce() -> Result<[u8; NONCE_LEN], KeyStoreError> {
    let mut nonce = [0u8; NONCE_LEN];
    getrandom::fill(&mut nonce).map_err(|e| KeyStoreError::Backend(format!("no randomness: {e}")))?;
    Ok(nonce)
}

fn seal(cipher: &Aes256Gcm, aad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, KeyStoreError> {
    let nonce = random_nonce()?;
    let ciphertext = cipher
        .encrypt((&nonce).into(), Payload { msg: plaintext, aad })
        .map_err(|_| KeyStoreError::Backend("encryption failed".into()))?;
    let mut out = Vec::with_capacity(NONCE_LEN + ciphertext.len());
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&ciphertext);
    Ok(out)
}

fn open(cipher: &Aes256Gcm, aad: &[u8], sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, KeyStoreError> {
    if sealed.len() < NONCE_LEN + TAG_LEN {
        return Err(KeyStoreError::NotAuthentic);
    }
    let (nonce, ciphertext) = sealed.split_at(NONCE_LEN);
    let nonce: [u8; NONCE_LEN] = nonce.try_into().map_err(|_| KeyStoreError::NotAuthentic)?;
    cipher
        .decrypt((&nonce).into(), Payload { msg: ciphertext, aad })
        .map(Zeroizing::new)
        .map_err(|_| KeyStoreError::NotAuthentic)
}

/// The P-256 private scalar behind `key_handle`, wiped when dropped.
fn secret_scalar(store: &SoftwareKeyStore, key_handle: &[u8]) -> Result<Zeroizing<NonZeroScalar>, KeyStoreError> {
    let scalar = open(&store.key_wrapping, KEY_HANDLE_AAD, key_handle)?;
    NonZeroScalar::try_from(scalar.as_slice()).map(Zeroizing::new).map_err(|_| KeyStoreError::NotAuthentic)
}

/// ES256 over `message` with the scalar itself: RFC 6979 deterministic
/// ECDSA, exactly what `SigningKey::sign` computes, but without building a
/// `SigningKey`, whose constructor computes the public key (a second scalar
/// multiplication that doubled the cost of every signature). Nothing is
/// cached, so no prepared key outlives the call.
fn sign_es256(scalar: &NonZeroScalar, message: &[u8]) -> Signature {
    let digest = Sha256::digest(message);
    ecdsa::hazmat::sign_prehashed_rfc6979::<NistP256, Sha256>(scalar, &digest, &[]).0
}

impl KeyStore for SoftwareKeyStore {
    fn name(&self) -> &'static str {
        "software"
    }

    fn algorithms(&self) -> Vec<Algorithm> {
        vec![Algorithm::Es256, Algorithm::EdDsa]
    }

    fn generate(&mut self, algorithm: Algorithm) -> Result<CreatedKey, KeyStoreError> {
        match algorithm {
            Algorithm::Es256 => {
                let key = SigningKey::try_generate()
                    .map_err(|e| KeyStoreError::Backend(format!("key generation failed: {e}")))?;
                let point = VerifyingKey::from(&key).to_sec1_point(false);
                let (Some(x), Some(y)) = (point.x(), point.y()) else {
                    return Err(KeyStoreError::Backend("public key has no coordinates".into()));
                };
                let public_key = PublicKey::P256 { x: (*x).into(), y: (*y).into() };
                let scalar = Zeroizing::new(key.to_bytes());
                let key_handle = seal(&self.key_wrapping, KEY_HANDLE_AAD, scalar.as_slice())?;
                Ok(CreatedKey { public_key, key_handle })
            }
            Algorithm::EdDsa => {
                let mut seed = Zeroizing::new([0u8; 32]);
                getrandom::fill(seed.as_mut()).map_err(|e| KeyStoreError::Backend(format!("no randomness: {e}")))?;
                let key = ed25519_dalek::SigningKey::from_bytes(&seed);
                let public_key = PublicKey::Ed25519(key.verifying_key().to_bytes());
                let key_handle = seal(&self.key_wrapping, ED25519_KEY_HANDLE_AAD, seed.as_slice())?;
                Ok(CreatedKey { public_key, key_handle })
            }
            Algorithm::Es384 => Err(KeyStoreError::UnsupportedAlgorithm(algorithm)),
        }
    }

    fn sign(&mut self, algorithm: Algorithm, key_handle: &[u8], message: &[u8]) -> Result<Vec<u8>, KeyStoreError> {
        match algorithm {
            Algorithm::Es256 => {
                let scalar = secret_scalar(self, key_handle)?;
                Ok(sign_es256(&scalar, message).to_der().as_bytes().to_vec())
            }
            Algorithm::EdDsa => {
                let seed = open(&self.key_wrapping, ED25519_KEY_HANDLE_AAD, key_handle)?;
                let seed: [u8; 32] = seed.as_slice().try_into().map_err(|_| KeyStoreError::NotAuthentic)?;
                let key = ed25519_dalek::SigningKey::from_bytes(&seed);
                Ok(ed25519_dalek::Signer::sign(&key, message).to_bytes().to_vec())
            }
            Algorithm::Es384 => Err(KeyStoreError::UnsupportedAlgorithm(algorithm)),
        }
    }

    fn seal_credential_id(&mut self, rp_id_hash: &[u8; 32], payload: &[u8]) -> Result<Vec<u8>, KeyStoreError> {
        let mut aad = [0u8; 33];
        aad[0] = CREDENTIAL_ID_VERSION;
        aad[1..].copy_from_slice(rp_id_hash);
        let sealed = seal(&self.credential_id_sealing, &aad, payload)?;
        let mut id = Vec::with_capacity(1 + sealed.len());
        id.push(CREDENTIAL_ID_VERSION);
        id.extend_from_slice(&sealed);
        Ok(id)
    }

    fn open_credential_id(&mut self, rp_id_hash: &[u8; 32], credential_id: &[u8]) -> Result<Vec<u8>, KeyStoreError> {
        let Some((&CREDENTIAL_ID_VERSION, sealed)) = credential_id.split_first() else {
            return Err(KeyStoreError::NotAuthentic);
        };
        let mut aad = [0u8; 33];
        aad[0] = CREDENTIAL_ID_VERSION;
        aad[1..].copy_from_slice(rp_id_hash);
        open(&self.credential_id_sealing, &aad, sealed).map(|p| p.to_vec())
    }

    /// No PIN objects: the PIN record keeps the HMAC verifier (this store
    /// has no guessing limit of its own; docs/tpm.md).
    fn create_pin_object(&mut self, _pin_hash: &[u8; 16]) -> Result<Option<Vec<u8>>, KeyStoreError> {
        Ok(None)
    }

    fn check_pin_object(&mut self, _object: &[u8], _pin_hash: &[u8; 16]) -> Result<PinCheck, KeyStoreError> {
        Err(KeyStoreError::Backend("the software key store has no PIN objects".into()))
    }

    fn derive_secret(&mut self, context: &[u8]) -> Result<Secret32, KeyStoreError> {
        Ok(Secret32(crate::pin_protocol::hmac_sha256(&self.secret_derivation.0, context)))
    }

    /// The machine attestation key stays (it names the machine, not the user).
    fn reset(&mut self) -> Result<(), KeyStoreError> {
        let machine_attestation = self.machine_attestation.take();
        *self = Self::new(Self::generate_master_secret()?);
        self.machine_attestation = machine_attestation;
        Ok(())
    }

    fn machine_attestation_certificate(&mut self) -> Result<Vec<u8>, KeyStoreError> {
        Ok(self.machine_attestation_key()?.certificate().to_vec())
    }

    fn sign_machine_attestation(&mut self, message: &[u8]) -> Result<Vec<u8>, KeyStoreError> {
        Ok(self.machine_attestation_key()?.sign(message))
    }
}

impl SoftwareKeyStore {
    fn machine_attestation_key(&mut self) -> Result<&SoftwareAttestationKey, KeyStoreError> {
        if self.machine_attestation.is_none() {
            self.machine_attestation = Some(SoftwareAttestationKey::generate(&FIDOSEAL_AAGUID)?);
        }
        self.machine_attestation
            .as_ref()
            .ok_or_else(|| KeyStoreError::MachineAttestation("no machine attestation key".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use p256::ecdsa::signature::Verifier;

    fn store() -> SoftwareKeyStore {
        SoftwareKeyStore::new(Secret32([7; 32]))
    }

    /// Signing from the bare scalar gives what `SigningKey` (RFC 6979) gives.
    #[test]
    fn scalar_signatures_are_the_signing_keys() {
        use p256::ecdsa::signature::Signer;
        let key = SigningKey::try_generate().unwrap();
        let expected: Signature = key.sign(b"authenticator data");
        assert_eq!(sign_es256(key.as_nonzero_scalar(), b"authenticator data"), expected);
    }

    #[test]
    fn signatures_verify_with_the_public_key() {
        let mut s = store();
        let created = s.generate(Algorithm::Es256).unwrap();
        let PublicKey::P256 { x, y } = created.public_key else { panic!("a P-256 key") };
        let mut sec1 = vec![4u8];
        sec1.extend_from_slice(&x);
        sec1.extend_from_slice(&y);
        let vk = VerifyingKey::from_sec1_bytes(&sec1).unwrap();
        let der = s.sign(Algorithm::Es256, &created.key_handle, b"message").unwrap();
        let sig = Signature::from_der(&der).unwrap();
        vk.verify(b"message", &sig).unwrap();
    }

    #[test]
    fn ed25519_signatures_verify_and_handles_do_not_cross_algorithms() {
        let mut s = store();
        let created = s.generate(Algorithm::EdDsa).unwrap();
        let PublicKey::Ed25519(x) = created.public_key else { panic!("an Ed25519 key") };
        let vk = ed25519_dalek::VerifyingKey::from_bytes(&x).unwrap();
        let sig = s.sign(Algorithm::EdDsa, &created.key_handle, b"message").unwrap();
        let sig = ed25519_dalek::Signature::from_slice(&sig).unwrap();
        ed25519_dalek::Verifier::verify(&vk, b"message", &sig).unwrap();
        assert_eq!(s.sign(Algorithm::Es256, &created.key_handle, b"m"), Err(KeyStoreError::NotAuthentic));
        let p256 = s.generate(Algorithm::Es256).unwrap();
        assert_eq!(s.sign(Algorithm::EdDsa, &p256.key_handle, b"m"), Err(KeyStoreError::NotAuthentic));
    }

    #[test]
    fn key_handle_does_not_contain_the_scalar_and_rejects_tampering() {
        let mut s = store();
        let created = s.generate(Algorithm::Es256).unwrap();
        let mut bad = created.key_handle.clone();
        bad[20] ^= 1;
        assert_eq!(s.sign(Algorithm::Es256, &bad, b"m"), Err(KeyStoreError::NotAuthentic));
        assert_eq!(s.sign(Algorithm::Es256, &[1, 2, 3], b"m"), Err(KeyStoreError::NotAuthentic));
        // Another master secret cannot use the handle.
        let mut other = SoftwareKeyStore::new(Secret32([8; 32]));
        assert_eq!(other.sign(Algorithm::Es256, &created.key_handle, b"m"), Err(KeyStoreError::NotAuthentic));
    }

    #[test]
    fn credential_ids_are_bound_to_rp_and_store() {
        let mut s = store();
        let rp = [1u8; 32];
        let id = s.seal_credential_id(&rp, b"payload").unwrap();
        assert_eq!(s.open_credential_id(&rp, &id).unwrap(), b"payload");
        assert_eq!(s.open_credential_id(&[2u8; 32], &id), Err(KeyStoreError::NotAuthentic));
        for i in 0..id.len() {
            let mut forged = id.clone();
            forged[i] ^= 0x80;
            assert_eq!(s.open_credential_id(&rp, &forged), Err(KeyStoreError::NotAuthentic), "byte {i}");
        }
        assert_eq!(s.open_credential_id(&rp, &id[..id.len() - 1]), Err(KeyStoreError::NotAuthentic));
        assert_eq!(s.open_credential_id(&rp, &[]), Err(KeyStoreError::NotAuthentic));
        let mut other = SoftwareKeyStore::new(Secret32([8; 32]));
        assert_eq!(other.open_credential_id(&rp, &id), Err(KeyStoreError::NotAuthentic));
    }

    #[test]
    fn reset_invalidates_everything() {
        let mut s = store();
        let rp = [1u8; 32];
        let id = s.seal_credential_id(&rp, b"payload").unwrap();
        let created = s.generate(Algorithm::Es256).unwrap();
        let derived = s.derive_secret(b"context").unwrap();
        assert_eq!(derived.0, s.derive_secret(b"context").unwrap().0);
        assert_ne!(derived.0, s.derive_secret(b"other").unwrap().0);
        s.reset().unwrap();
        assert_ne!(s.master_secret().0, [7; 32]);
        assert_ne!(derived.0, s.derive_secret(b"context").unwrap().0);
        assert_eq!(s.open_credential_id(&rp, &id), Err(KeyStoreError::NotAuthentic));
        assert_eq!(s.sign(Algorithm::Es256, &created.key_handle, b"m"), Err(KeyStoreError::NotAuthentic));
    }
}
