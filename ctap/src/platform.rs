//! The four traits through which the authenticator reaches the outside
//! world (docs/architecture.md, "The request path"): a key store, a credential store, a user
//! prompt and a policy decision. The daemon gives TPM, files, D-Bus and
//! policy files; tests and benchmarks give software keys, memory and scripts.

use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use zeroize::Zeroize;

use crate::ctaphid::KeepaliveStatus;

/// COSE algorithm identifiers (IANA "COSE Algorithms").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Algorithm {
    /// ECDSA with P-256 and SHA-256, COSE -7.
    Es256,
    /// EdDSA with Ed25519, COSE -8 (software key store only: TPMs generally cannot).
    EdDsa,
}

impl Algorithm {
    pub fn cose_id(self) -> i64 {
        match self {
            Algorithm::Es256 => -7,
            Algorithm::EdDsa => -8,
        }
    }

    pub fn from_cose_id(id: i64) -> Option<Self> {
        match id {
            -7 => Some(Algorithm::Es256),
            -8 => Some(Algorithm::EdDsa),
            _ => None,
        }
    }
}

/// A credential public key, as it goes into attested credential data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PublicKey {
    /// Uncompressed P-256 point coordinates.
    P256 { x: [u8; 32], y: [u8; 32] },
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

/// Where private keys are made and used; private keys never leave it in the
/// clear.
pub trait KeyStore: Send {
    /// A short name for logs ("software", "tpm").
    fn name(&self) -> &'static str;
    /// Algorithms this store can create keys for, in order of preference.
    fn algorithms(&self) -> Vec<Algorithm>;
    fn generate(&mut self, algorithm: Algorithm) -> Result<CreatedKey, KeyStoreError>;
    /// Signs `message` (authenticator data ‖ client data hash) with the key
    /// behind `key_handle`; ES256 signatures are DER-encoded, EdDSA ones the
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

/// What the user is asked to confirm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PresencePurpose {
    #[default]
    Register,
    Authenticate,
    /// The credential already exists (excludeList): the touch only confirms it.
    ConfirmExisting,
    /// authenticatorSelection: "touch the key you want to use".
    Select,
    Reset,
    /// A token to manage the key: list or delete passkeys (cm), change its
    /// settings (acfg) or write its large blobs (lbw).
    Manage,
    /// The platform's own deletion of one passkey (`rp_id`, `user_name`),
    /// verified by [`crate::Authenticator::verify_user_for_platform`]
    /// (fidoseald's Manager1.DeletePasskey).
    DeletePasskey,
}

impl PresencePurpose {
    /// The purpose's name: the agent's `action` detail and the audit trail's
    /// `FIDOSEAL_OPERATION=` of a prompt.
    pub fn name(self) -> &'static str {
        match self {
            Self::Register => "register",
            Self::Authenticate => "sign-in",
            Self::ConfirmExisting => "confirm-existing",
            Self::Select => "select-key",
            Self::Reset => "reset",
            Self::Manage => "manage",
            Self::DeletePasskey => "delete-passkey",
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct PresenceRequest<'a> {
    pub purpose: PresencePurpose,
    pub rp_id: Option<&'a str>,
    pub user_name: Option<&'a str>,
    /// From policy: a message to show, and how long to wait for an answer.
    pub message: Option<&'a str>,
    pub timeout: Option<std::time::Duration>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PromptOutcome {
    Approved,
    Denied,
    TimedOut,
    Cancelled,
    /// Nobody can be asked (no agent, agent gone): treated as a denial.
    Unavailable,
}

/// The result of asking the user to verify (built-in user verification).
pub enum VerificationOutcome {
    /// The prompt verified the user itself: a fingerprint through fprintd or
    /// a password through PAM, checked by the daemon. Presence is implied.
    Verified,
    /// The user typed the authenticator's PIN; the core checks it against
    /// its own PIN and retry counter.
    Pin(zeroize::Zeroizing<String>),
    /// The user tried and failed (no match, wrong password): one uvRetry is spent.
    Failed,
    /// Not verified for any other reason (denied, timed out, cancelled, no agent).
    NotVerified(PromptOutcome),
}

/// Asks the user for presence and, where the daemon offers it, for
/// verification and for a choice between passkeys.
pub trait UserPrompt: Send {
    /// Blocks until the user answers, the prompt times out, or `signals`
    /// reports a cancellation from the host.
    fn request_presence(&mut self, request: &PresenceRequest<'_>, signals: &TransactionSignals) -> PromptOutcome;

    /// Built-in user verification is configured and can be asked for now
    /// (getInfo option "uv").
    fn verification_available(&self) -> bool {
        false
    }

    /// Built-in user verification is configured, whether or not it can be
    /// asked for at this moment (no agent in an active session, reader
    /// unplugged): the key is then "protected by some form of user
    /// verification" (CTAP 2.1 §6.11.1, §6.10.3) and its settings and
    /// large blobs change only with a token, as with a PIN.
    fn verification_configured(&self) -> bool {
        self.verification_available()
    }

    /// Asks the user to verify; `pin_available` says the authenticator has a
    /// usable PIN the user may type instead of the other methods.
    fn request_verification(
        &mut self,
        _request: &PresenceRequest<'_>,
        _pin_available: bool,
        _signals: &TransactionSignals,
    ) -> VerificationOutcome {
        VerificationOutcome::NotVerified(PromptOutcome::Unavailable)
    }

    /// Several discoverable credentials match and no allow list narrows
    /// them: the user picks one of `accounts` (newest first). `None` when this
    /// prompt offers no choice; the platform then gets numberOfCredentials.
    fn select_credential(
        &mut self,
        _request: &PresenceRequest<'_>,
        _accounts: &[String],
        _signals: &TransactionSignals,
    ) -> Option<Result<usize, PromptOutcome>> {
        None
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    MakeCredential,
    GetAssertion,
    Reset,
}

#[derive(Debug, Clone, Copy)]
pub struct PolicyRequest<'a> {
    pub operation: Operation,
    /// The rp ID. CTAP1/U2F requests carry only the application parameter
    /// (SHA-256 of the app ID), passed as 64 lowercase hex digits; policy
    /// matches those against the hashes of its exact rp IDs.
    pub rp_id: &'a str,
    /// A discoverable credential is to be made, or found without an allow list.
    pub discoverable: bool,
    /// A CTAP1/U2F request: `rp_id` is the application parameter in hex.
    /// Only then may policy match it by hash; a CTAP2 rp.id that looks like
    /// a hash is an rp ID like any other.
    pub ctap1: bool,
}

/// Which attestation a relying party gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttestationPolicy {
    /// Format "none": nothing about the authenticator is revealed.
    None,
    /// "packed" self attestation.
    SelfAttestation,
    /// "packed" with `x5c`: the machine attestation key signs, its
    /// self-signed certificate goes along. One key per machine, so the
    /// relying party can tell two credentials from this machine apart from
    /// others': a tracking identifier, granted by policy only.
    Machine,
    /// This relying party may receive enterprise attestation (CTAP 2.1
    /// §7.1) signed with this key, when the client asks for it and it is
    /// enabled; any other request gets the configured attestation.
    Enterprise(Arc<EnterpriseAttestationKey>),
}

/// The administrator's enterprise attestation key and certificate chain.
/// Enterprise attestation may identify the device uniquely, so it goes only
/// to the relying parties the administrator lists (CTAP 2.1 §7.1).
pub struct EnterpriseAttestationKey {
    signing_key: p256::ecdsa::SigningKey,
    /// DER, the attestation certificate first (the attStmt's `x5c`).
    certificates: Vec<Vec<u8>>,
}

impl EnterpriseAttestationKey {
    /// `certificates[0]` must be the certificate of `signing_key` (the
    /// policy loader checks it; the core trusts its caller).
    pub fn new(signing_key: p256::ecdsa::SigningKey, certificates: Vec<Vec<u8>>) -> Self {
        Self { signing_key, certificates }
    }

    /// An ES256 signature, DER-encoded as WebAuthn's packed format wants.
    pub fn sign(&self, message: &[u8]) -> Vec<u8> {
        use p256::ecdsa::signature::Signer;
        let signature: p256::ecdsa::Signature = self.signing_key.sign(message);
        signature.to_der().as_bytes().to_vec()
    }

    pub fn certificates(&self) -> &[Vec<u8>] {
        &self.certificates
    }
}

impl PartialEq for EnterpriseAttestationKey {
    fn eq(&self, other: &Self) -> bool {
        self.signing_key.verifying_key() == other.signing_key.verifying_key() && self.certificates == other.certificates
    }
}

impl Eq for EnterpriseAttestationKey {}

impl std::fmt::Debug for EnterpriseAttestationKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EnterpriseAttestationKey")
            .field("certificates", &self.certificates.len())
            .finish_non_exhaustive()
    }
}

/// The decision for one request, with what it requires of the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyVerdict {
    pub allow: bool,
    /// A request without user verification is refused.
    pub require_user_verification: bool,
    pub allow_discoverable: bool,
    /// credProtect level new credentials get at least (1..=3).
    pub min_cred_protect: u8,
    /// Overrides the configured attestation for this relying party.
    pub attestation: Option<AttestationPolicy>,
    /// How long the user has to answer a prompt.
    pub prompt_timeout: Option<std::time::Duration>,
    /// Shown in the prompt beside the relying party.
    pub prompt_message: Option<String>,
    /// Which rule decided, for the log ("file:line" or a name).
    pub rule: String,
}

impl PolicyVerdict {
    pub fn allow(rule: impl Into<String>) -> Self {
        Self {
            allow: true,
            require_user_verification: false,
            allow_discoverable: true,
            min_cred_protect: 1,
            attestation: None,
            prompt_timeout: None,
            prompt_message: None,
            rule: rule.into(),
        }
    }

    pub fn deny(rule: impl Into<String>) -> Self {
        Self { allow: false, ..Self::allow(rule) }
    }
}

/// May this relying party use the key this way? Asked before any key use.
pub trait PolicyDecision: Send {
    fn decide(&self, request: &PolicyRequest<'_>) -> PolicyVerdict;
    /// This machine's user may see (and delete) the discoverable
    /// credentials of `rp_id`: the relying party may sign in with them.
    /// Credential management's filter (a relying party the policy denies
    /// is not enumerated), shared with fidoseald's Manager1 so that both
    /// ways of managing the key show the same passkeys.
    fn shows_passkeys_of(&self, rp_id: &str) -> bool {
        self.decide(&PolicyRequest { operation: Operation::GetAssertion, rp_id, discoverable: true, ctap1: false })
            .allow
    }
    /// The minimum PIN length the policy demands, if any (never lowers the
    /// authenticator's own minimum).
    fn min_pin_length(&self) -> Option<u8> {
        None
    }
    /// The user whose device this is, for the decision log.
    fn user(&self) -> Option<String> {
        None
    }
    /// The policy holds an enterprise attestation key: the authenticator is
    /// enterprise attestation capable ("ep" in getInfo).
    fn enterprise_attestation_capable(&self) -> bool {
        false
    }
}

/// The policy of the walking skeleton: everything is allowed.
pub struct AllowAll;

impl PolicyDecision for AllowAll {
    fn decide(&self, _request: &PolicyRequest<'_>) -> PolicyVerdict {
        PolicyVerdict::allow("built-in: allow all")
    }
}

/// Shared between the transport and a running request: the transport sets
/// `cancel`; the authenticator says whether it waits for the user, which the
/// transport reports in KEEPALIVE messages.
#[derive(Default)]
pub struct TransactionSignals {
    state: Mutex<SignalState>,
    changed: Condvar,
}

#[derive(Default)]
struct SignalState {
    cancelled: bool,
    waiting_for_user: bool,
    /// Since when, while waiting for the user.
    waiting_since: Option<Instant>,
    /// How long the transaction has waited for the user so far.
    time_with_user: Duration,
}

impl TransactionSignals {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SignalState> {
        // A poisoned lock only means another thread panicked while holding
        // two booleans; their values are still meaningful.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn cancel(&self) {
        self.lock().cancelled = true;
        self.changed.notify_all();
    }

    pub fn is_cancelled(&self) -> bool {
        self.lock().cancelled
    }

    /// Waits up to `timeout` for a cancellation; true if cancelled.
    pub fn wait_for_cancel(&self, timeout: Duration) -> bool {
        let guard = self.lock();
        let (guard, _) =
            self.changed.wait_timeout_while(guard, timeout, |s| !s.cancelled).unwrap_or_else(|e| e.into_inner());
        guard.cancelled
    }

    /// Marks the start and the end of a wait for the user (KEEPALIVE says
    /// UPNEEDED meanwhile); the time between counts as time with the user.
    pub fn set_waiting_for_user(&self, waiting: bool) {
        let mut state = self.lock();
        match (waiting, state.waiting_since) {
            (true, None) => state.waiting_since = Some(Instant::now()),
            (false, Some(since)) => {
                state.time_with_user += since.elapsed();
                state.waiting_since = None;
            }
            _ => {}
        }
        state.waiting_for_user = waiting;
    }

    /// How long this transaction has waited for the user: a prompt that
    /// took 35 s moves the timers that start when the user acted by 35 s
    /// ([`crate::RequestContext::after_user`]).
    pub fn time_with_user(&self) -> Duration {
        self.lock().time_with_user
    }

    /// Counts `time` as spent with the user, for prompts whose user does
    /// not take real time (scripted tests, simulated clocks).
    pub fn add_time_with_user(&self, time: Duration) {
        self.lock().time_with_user += time;
    }

    pub fn keepalive_status(&self) -> KeepaliveStatus {
        if self.lock().waiting_for_user {
            KeepaliveStatus::UserPresenceNeeded
        } else {
            KeepaliveStatus::Processing
        }
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
