//! The credential store: discoverable credentials, signature counters and
//! the authenticator's persistent settings (the daemon's SQLite database,
//! or memory in tests).

use serde::{Deserialize, Serialize};

use super::Algorithm;

/// A discoverable credential as kept by the credential store.
#[derive(Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ResidentCredential {
    #[serde(with = "serde_bytes")]
    pub credential_id: Vec<u8>,
    pub rp_id: String,
    pub rp_name: Option<String>,
    #[serde(with = "serde_bytes")]
    pub user_id: Vec<u8>,
    pub user_name: Option<String>,
    pub user_display_name: Option<String>,
    pub algorithm: Algorithm,
    #[serde(with = "serde_bytes")]
    pub key_handle: Vec<u8>,
    /// Creation order (newest first in getAssertion, CTAP 2.1 §6.2.2 step 7).
    pub created: u64,
    /// The COSE_Key of the public key, for credential management.
    #[serde(with = "serde_bytes", default)]
    pub public_key_cose: Vec<u8>,
    #[serde(default)]
    pub extensions: CredentialExtensions,
}

/// What extensions a credential was made with (stored with discoverable
/// credentials, sealed into the ID of the others).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct CredentialExtensions {
    /// credProtect level 1..=3 (CTAP 2.1 §12.1); 1 when not requested.
    pub cred_protect: u8,
    /// hmac-secret was requested: CredRandom is derived for this credential.
    pub hmac_secret: bool,
    /// credBlob (at most 32 bytes).
    #[serde(with = "serde_bytes", default)]
    pub cred_blob: Vec<u8>,
    /// largeBlobKey was requested.
    pub large_blob_key: bool,
    /// thirdPartyPayment (CTAP 2.2 §12.9): the credential may be used for
    /// payments a third party asks for (Secure Payment Confirmation).
    #[serde(default)]
    pub third_party_payment: bool,
}

impl std::fmt::Debug for ResidentCredential {
    // The key handle is wrapped, but there is no reason to print it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResidentCredential")
            .field("rp_id", &self.rp_id)
            .field("user_name", &self.user_name)
            .field("created", &self.created)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum StoreError {
    #[error("no room for another discoverable credential")]
    Full,
    #[error("credential state could not be read or written: {0}")]
    Io(String),
}

/// A relying party with discoverable credentials, for credential
/// management's enumeration (CTAP 2.1 §6.8.3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelyingParty {
    pub rp_id: String,
    pub rp_name: Option<String>,
    /// How many discoverable credentials it has.
    pub credentials: usize,
}

/// Discoverable credentials, signature counters and the authenticator's
/// settings. Every mutating call returns only once the change is durable.
///
/// Signature counters are per credential (WebAuthn §6.1.1 allows either;
/// one global counter would tell every relying party how much the key is
/// used elsewhere). A counter never goes back: new credentials start above
/// the store's floor, which is at least every value given out before the
/// last reset (and, after a migration, the old global counter).
pub trait CredentialStore: Send {
    /// The discoverable credentials of the relying party whose rp ID hashes to `rp_id_hash`.
    fn credentials_for_rp(&self, rp_id_hash: &[u8; 32]) -> Result<Vec<ResidentCredential>, StoreError>;
    /// Every discoverable credential (the management interface's listing).
    fn all_credentials(&self) -> Result<Vec<ResidentCredential>, StoreError>;
    /// Every relying party with discoverable credentials, with its count.
    fn relying_parties(&self) -> Result<Vec<RelyingParty>, StoreError>;
    fn find(&self, credential_id: &[u8]) -> Result<Option<ResidentCredential>, StoreError>;
    /// Stores `credential`, replacing any credential of the same rp ID and
    /// user ID (CTAP 2.1 §6.1.2 step 15).
    fn save(&mut self, credential: ResidentCredential) -> Result<(), StoreError>;
    fn delete(&mut self, credential_id: &[u8]) -> Result<bool, StoreError>;
    /// How many discoverable credentials there are.
    fn credential_count(&self) -> usize;
    /// How many more discoverable credentials fit.
    fn remaining_capacity(&self) -> usize;
    /// A `created` value above every stored credential's (newest first in
    /// getAssertion, CTAP 2.1 §6.2.2 step 7).
    fn next_creation_order(&self) -> u64;
    /// The counter a new credential reports at makeCredential: the floor,
    /// which never decreases. Nothing is written.
    fn initial_signature_counter(&self) -> u32;
    /// Increments and durably stores the signature counter of
    /// `credential_id` (starting above the floor), returning the new value.
    fn next_signature_counter(&mut self, credential_id: &[u8]) -> Result<u32, StoreError>;
    /// The authenticator's persistent settings: PIN verifier, retries, config.
    fn load_state(&self) -> AuthenticatorState;
    fn save_state(&mut self, state: &AuthenticatorState) -> Result<(), StoreError>;
    /// authenticatorReset: delete every credential and its counter, the PIN
    /// and the settings. The floor rises to the highest counter given out,
    /// so no counter ever goes back.
    fn reset(&mut self) -> Result<(), StoreError>;
}

/// Maximum PIN retries (CTAP 2.1 §6.5.2.2).
pub const MAX_PIN_RETRIES: u8 = 8;
/// Built-in user verification attempts before it blocks (CTAP 2.1 §6.5.2.3).
pub const MAX_UV_RETRIES: u8 = 8;
/// Default minimum PIN length in Unicode code points (§6.4).
pub const DEFAULT_MIN_PIN_LENGTH: u8 = 4;

/// The authenticator's persistent settings.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct AuthenticatorState {
    pub pin: Option<PinRecord>,
    pub pin_retries: u8,
    /// Built-in user verification attempts left (getUVRetries).
    pub uv_retries: u8,
    pub min_pin_length: u8,
    /// setMinPINLength's forceChangePin, or a PIN shorter than a new minimum.
    pub force_pin_change: bool,
    pub always_uv: bool,
    pub enterprise_attestation: bool,
    /// rp IDs allowed to read the minimum PIN length (minPinLength extension).
    pub min_pin_length_rp_ids: Vec<String>,
    /// The serialized large-blob array (CTAP 2.1 §6.10), integrity check included.
    #[serde(with = "serde_bytes")]
    pub large_blob_array: Vec<u8>,
}

/// The large-blob array of a fresh authenticator: an empty CBOR array and
/// LEFT(SHA-256(0x80), 16) (CTAP 2.1 §6.10.2).
pub const EMPTY_LARGE_BLOB_ARRAY: [u8; 17] =
    [0x80, 0x76, 0xbe, 0x8b, 0x52, 0x8d, 0x00, 0x75, 0xf7, 0xaa, 0xe9, 0x8d, 0x6f, 0xa5, 0x7a, 0x6d, 0x3c];

impl Default for AuthenticatorState {
    fn default() -> Self {
        Self {
            pin: None,
            pin_retries: MAX_PIN_RETRIES,
            uv_retries: MAX_UV_RETRIES,
            min_pin_length: DEFAULT_MIN_PIN_LENGTH,
            force_pin_change: false,
            always_uv: false,
            enterprise_attestation: false,
            min_pin_length_rp_ids: Vec::new(),
            large_blob_array: EMPTY_LARGE_BLOB_ARRAY.to_vec(),
        }
    }
}

/// The PIN as stored: not the PIN hash itself but the key store's PRF of
/// it, so a copied state directory is useless without the key store.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PinRecord {
    #[serde(with = "serde_bytes")]
    pub verifier: Vec<u8>,
    /// Length of the PIN in Unicode code points (for setMinPINLength).
    pub code_points: u8,
}

impl From<StoreError> for crate::status::StatusCode {
    fn from(error: StoreError) -> Self {
        use crate::status::StatusCode;
        match error {
            StoreError::Full => StatusCode::KeyStoreFull,
            StoreError::Io(_) => {
                tracing::error!(error = %error, "credential store operation failed");
                StatusCode::Other
            }
        }
    }
}
