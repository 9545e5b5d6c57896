//! The policy decision: may this relying party use the key this way, and
//! what does the request need for it (the administrator's TOML policy in the
//! daemon).

use std::sync::Arc;

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
