//! The key store: where credential keys are made and used, and the secrets
//! derived from the store's own key (the TPM, or the software store).

use serde::{Deserialize, Serialize};
use zeroize::Zeroize;

/// COSE algorithm identifiers (IANA "COSE Algorithms").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Algorithm {
    /// ECDSA with P-256 and SHA-256, COSE -7.
    Es256,
    /// EdDSA with Ed25519, COSE -8 (software key store only: TPMs generally cannot).
    EdDsa,
    /// ECDSA with P-384 and SHA-384, COSE -35 (the TPM key store, when its
    /// TPM has the curve).
    Es384,
}

impl Algorithm {
    pub fn cose_id(self) -> i64 {
        match self {
            Algorithm::Es256 => -7,
            Algorithm::EdDsa => -8,
            Algorithm::Es384 => -35,
        }
    }

    pub fn from_cose_id(id: i64) -> Option<Self> {
        match id {
            -7 => Some(Algorithm::Es256),
            -8 => Some(Algorithm::EdDsa),
            -35 => Some(Algorithm::Es384),
            _ => None,
        }
    }
}

/// A credential public key, as it goes into attested credential data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PublicKey {
    /// Uncompressed P-256 point coordinates.
    P256 { x: [u8; 32], y: [u8; 32] },
    /// Uncompressed P-384 point coordinates.
    P384 { x: [u8; 48], y: [u8; 48] },
    /// An Ed25519 public key (RFC 8032 encoding).
    Ed25519([u8; 32]),
}

/// A freshly generated credential key.
pub struct CreatedKey {
    pub public_key: PublicKey,
    /// The private key as only this key store can use it again (wrapped by
    /// the TPM or by the software key-encryption key); safe to store.
    pub key_handle: Vec<u8>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyStoreError {
    #[error("algorithm {0:?} is not supported by this key store")]
    UnsupportedAlgorithm(Algorithm),
    /// The blob was not made by this key store for this relying party, or
    /// was changed: treat the credential as unknown.
    #[error("credential was not issued by this key store or was altered")]
    NotAuthentic,
    #[error("key store is out of resources: {0}")]
    Exhausted(String),
    #[error("key store failure: {0}")]
    Backend(String),
    /// The machine attestation key is missing, damaged or unusable
    /// (docs/policy.md, "Machine attestation"): the registration fails.
    #[error("machine attestation is unavailable: {0}")]
    MachineAttestation(String),
}

/// What a PIN object said about a PIN hash ([`KeyStore::check_pin_object`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PinCheck {
    /// The PIN hash is the object's authorization value.
    Match,
    /// It is not; the store's own guessing limit counted the failure (for
    /// the TPM, its dictionary-attack counter).
    Mismatch,
    /// The store refuses every PIN for now (the TPM is in dictionary-attack
    /// lockout): nothing was compared, so nothing may be counted.
    Locked,
}

/// Where private keys are made and used; private keys never leave it in the
/// clear.
pub trait KeyStore: Send {
    /// A short name for logs ("software", "tpm").
    fn name(&self) -> &'static str;
    /// Algorithms this store can create keys for, in order of preference.
    fn algorithms(&self) -> Vec<Algorithm>;
    fn generate(&mut self, algorithm: Algorithm) -> Result<CreatedKey, KeyStoreError>;
    /// Signs `message` (authenticator data ‖ client data hash) with the key
    /// behind `key_handle`; ES256 and ES384 signatures are DER-encoded, EdDSA ones the
    /// 64 bytes of RFC 8032.
    fn sign(&mut self, algorithm: Algorithm, key_handle: &[u8], message: &[u8]) -> Result<Vec<u8>, KeyStoreError>;
    /// Authenticated encryption of a credential ID payload, bound to the
    /// relying party by `rp_id_hash` as associated data.
    fn seal_credential_id(&mut self, rp_id_hash: &[u8; 32], payload: &[u8]) -> Result<Vec<u8>, KeyStoreError>;
    /// Reverses [`KeyStore::seal_credential_id`]; `NotAuthentic` for any ID
    /// that this store did not seal for this relying party.
    fn open_credential_id(&mut self, rp_id_hash: &[u8; 32], credential_id: &[u8]) -> Result<Vec<u8>, KeyStoreError>;
    /// A keyed pseudo-random function held by the store: the same `context`
    /// always gives the same 32 bytes here, and nothing related on another
    /// store. Used for hmac-secret's CredRandom, the PIN verifier and
    /// large-blob keys, so those secrets are as bound to the machine as the
    /// credential keys.
    fn derive_secret(&mut self, context: &[u8]) -> Result<Secret32, KeyStoreError>;
    /// A PIN object for `pin_hash` (LEFT(SHA-256(PIN), 16)): something of
    /// the store that only this PIN hash can use, under a guessing limit of
    /// the store's own (the TPM's dictionary-attack lockout), stored in the
    /// PIN record. `None`: the store has no such object (the software
    /// store), and the PIN record keeps the HMAC verifier made with
    /// [`derive_secret`]. No default: a wrapper that forgot to forward this
    /// would silently store the weaker verifier.
    ///
    /// [`derive_secret`]: KeyStore::derive_secret
    fn create_pin_object(&mut self, pin_hash: &[u8; 16]) -> Result<Option<Vec<u8>>, KeyStoreError>;
    /// Uses a PIN object of [`KeyStore::create_pin_object`] with `pin_hash`.
    fn check_pin_object(&mut self, object: &[u8], pin_hash: &[u8; 16]) -> Result<PinCheck, KeyStoreError>;
    /// authenticatorReset: forget every secret so that all earlier
    /// credential IDs and key handles become unusable. The machine
    /// attestation key stays: it names the machine, not its user.
    fn reset(&mut self) -> Result<(), KeyStoreError>;
    /// The machine attestation certificate (DER, self-signed, WebAuthn
    /// §8.2.1), made with its key on first use and kept across resets. One
    /// per machine: every user's key shares it (docs/policy.md).
    fn machine_attestation_certificate(&mut self) -> Result<Vec<u8>, KeyStoreError> {
        Err(KeyStoreError::MachineAttestation(format!("the {} key store has no machine attestation key", self.name())))
    }
    /// Signs `message` with the machine attestation key (ES256, DER).
    fn sign_machine_attestation(&mut self, _message: &[u8]) -> Result<Vec<u8>, KeyStoreError> {
        Err(KeyStoreError::MachineAttestation(format!("the {} key store has no machine attestation key", self.name())))
    }
}

/// A 32-byte secret that is wiped when dropped.
#[derive(Clone, Zeroize, zeroize::ZeroizeOnDrop)]
pub struct Secret32(pub [u8; 32]);

impl std::fmt::Debug for Secret32 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret32(..)")
    }
}

impl From<KeyStoreError> for crate::status::StatusCode {
    fn from(error: KeyStoreError) -> Self {
        use crate::status::StatusCode;
        match error {
            KeyStoreError::UnsupportedAlgorithm(_) => StatusCode::UnsupportedAlgorithm,
            KeyStoreError::NotAuthentic => StatusCode::InvalidCredential,
            KeyStoreError::Exhausted(_) | KeyStoreError::Backend(_) | KeyStoreError::MachineAttestation(_) => {
                tracing::error!(error = %error, "key store operation failed");
                StatusCode::Other
            }
        }
    }
}
