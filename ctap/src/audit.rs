//! The audit trail's events: one value per decision the
//! authenticator makes that an administrator may have to answer for — a
//! policy decision, a presence or verification outcome, a credential made,
//! an assertion, a deletion, a PIN set or changed or wrong, a reset.
//!
//! The core only produces these values (it does no I/O); the daemon takes
//! them after each request ([`crate::Authenticator::take_audit_events`]) and
//! writes each as one journal entry with a fixed `MESSAGE_ID` per kind
//! (systemd/fidoseal.catalog documents every one).
//!
//! What an event never holds: a PIN, a key, a token, a full credential ID
//! (only [`credential_tag`], 8 bytes of its SHA-256), the WebAuthn user
//! handle or the account name at the relying party. `user` is the device's
//! operating-system account, which the policy already names.

use sha2::{Digest, Sha256};

/// What happened. Each kind has its own journal `MESSAGE_ID`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AuditKind {
    /// The policy allowed or refused a relying party (before any key use).
    PolicyDecision,
    /// The user was asked to confirm presence: approved or not.
    Presence,
    /// Built-in user verification (fingerprint, password, PIN typed into
    /// the agent): verified or not.
    Verification,
    /// makeCredential (or U2F register) made a credential.
    CredentialCreated,
    /// getAssertion (or U2F authenticate) signed.
    Assertion,
    /// A discoverable credential was deleted (credential management, or
    /// Manager1.DeletePasskey).
    CredentialDeleted,
    /// A PIN was set for the first time.
    PinSet,
    /// The PIN was changed.
    PinChanged,
    /// A wrong PIN was presented (a PIN retry spent).
    PinFailed,
    /// authenticatorReset or Manager1.Reset: every credential and the PIN gone.
    Reset,
    /// The daemon loaded the policy again (files changed, SIGHUP).
    PolicyReloaded,
}

impl AuditKind {
    pub const ALL: [AuditKind; 11] = [
        AuditKind::PolicyDecision,
        AuditKind::Presence,
        AuditKind::Verification,
        AuditKind::CredentialCreated,
        AuditKind::Assertion,
        AuditKind::CredentialDeleted,
        AuditKind::PinSet,
        AuditKind::PinChanged,
        AuditKind::PinFailed,
        AuditKind::Reset,
        AuditKind::PolicyReloaded,
    ];

    /// `FIDOSEAL_EVENT=`: a stable name, for queries and `fidosealctl log`.
    pub fn name(self) -> &'static str {
        match self {
            AuditKind::PolicyDecision => "policy-decision",
            AuditKind::Presence => "presence",
            AuditKind::Verification => "verification",
            AuditKind::CredentialCreated => "credential-created",
            AuditKind::Assertion => "assertion",
            AuditKind::CredentialDeleted => "credential-deleted",
            AuditKind::PinSet => "pin-set",
            AuditKind::PinChanged => "pin-changed",
            AuditKind::PinFailed => "pin-failed",
            AuditKind::Reset => "reset",
            AuditKind::PolicyReloaded => "policy-reloaded",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.name() == name)
    }

    /// The journal's `MESSAGE_ID` (128 bits, as journalctl's
    /// `--new-id128` makes them): fixed forever, documented in
    /// systemd/fidoseal.catalog.
    pub fn message_id(self) -> &'static str {
        match self {
            AuditKind::PolicyDecision => "21f9c1fa3ae44bdb982cea77a4888b8a",
            AuditKind::Presence => "8301d30d49e046e18590c6f530060fa7",
            AuditKind::Verification => "cd958c30f5fc4359abcc907656882fef",
            AuditKind::CredentialCreated => "033302e7ce4b46ea859a0333871ab9b5",
            AuditKind::Assertion => "316170caf4144e9b9cb246ccf3db3371",
            AuditKind::CredentialDeleted => "617d177eec954ef0935a9afc70dcd5ea",
            AuditKind::PinSet => "df8ce103e26140a592ac229cc290beca",
            AuditKind::PinChanged => "fc130d186ab84f5ba64f42e50302c21a",
            AuditKind::PinFailed => "96f8acb87c104194b9c848fca57b3cce",
            AuditKind::Reset => "193fdbdb1fe94136a9ef89f2a1a1e8b3",
            AuditKind::PolicyReloaded => "ab98e16e6e9b4a85a87b5bd4b61d4e56",
        }
    }
}

/// The outcome, `FIDOSEAL_DECISION=`: "allow" or "deny" for every kind, so
/// that one query (`FIDOSEAL_DECISION=deny`) finds everything refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuditDecision {
    Allow,
    Deny,
}

impl AuditDecision {
    pub fn name(self) -> &'static str {
        match self {
            AuditDecision::Allow => "allow",
            AuditDecision::Deny => "deny",
        }
    }
}

/// One audit trail entry. Fields that do not apply are `None`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEvent {
    pub kind: AuditKind,
    pub decision: AuditDecision,
    /// `FIDOSEAL_RP=`: the relying party ID (for U2F, the application
    /// parameter in hex, which is all U2F names).
    pub rp_id: Option<String>,
    /// `FIDOSEAL_USER=`: the device's operating-system account.
    pub user: Option<String>,
    /// `FIDOSEAL_RULE=`: the policy rule that decided ("file:line" or a name).
    pub rule: Option<String>,
    /// `FIDOSEAL_CREDENTIAL=`: [`credential_tag`] of the credential.
    pub credential: Option<String>,
    /// `FIDOSEAL_OPERATION=`: make-credential, get-assertion, reset, u2f-register, ...
    pub operation: Option<&'static str>,
    /// `FIDOSEAL_REASON=`: why, in a few words ("timed out", "no rule matched").
    pub reason: Option<String>,
    /// `FIDOSEAL_USER_VERIFIED=`: the user was verified in this request.
    pub user_verified: Option<bool>,
}

impl AuditEvent {
    pub fn new(kind: AuditKind, decision: AuditDecision) -> Self {
        Self {
            kind,
            decision,
            rp_id: None,
            user: None,
            rule: None,
            credential: None,
            operation: None,
            reason: None,
            user_verified: None,
        }
    }

    pub fn rp(mut self, rp_id: Option<&str>) -> Self {
        self.rp_id = rp_id.map(str::to_string);
        self
    }

    pub fn user(mut self, user: Option<String>) -> Self {
        self.user = user;
        self
    }

    pub fn rule(mut self, rule: impl Into<String>) -> Self {
        self.rule = Some(rule.into());
        self
    }

    pub fn credential(mut self, credential_id: &[u8]) -> Self {
        self.credential = Some(credential_tag(credential_id));
        self
    }

    pub fn operation(mut self, operation: &'static str) -> Self {
        self.operation = Some(operation);
        self
    }

    pub fn reason(mut self, reason: impl Into<String>) -> Self {
        self.reason = Some(reason.into());
        self
    }

    pub fn user_verified(mut self, verified: bool) -> Self {
        self.user_verified = Some(verified);
        self
    }

    /// One line for people (the journal's `MESSAGE=`, or the text log).
    pub fn summary(&self) -> String {
        let mut line = format!("{}: {}", self.kind.name(), self.decision.name());
        if let Some(operation) = self.operation {
            line.push_str(&format!(" {operation}"));
        }
        if let Some(rp) = &self.rp_id {
            line.push_str(&format!(" rp={rp}"));
        }
        if let Some(user) = &self.user {
            line.push_str(&format!(" user={user}"));
        }
        if let Some(credential) = &self.credential {
            line.push_str(&format!(" credential={credential}"));
        }
        if let Some(rule) = &self.rule {
            line.push_str(&format!(" rule={rule}"));
        }
        if let Some(reason) = &self.reason {
            line.push_str(&format!(" ({reason})"));
        }
        line
    }
}

/// A credential's name in the audit trail: the first 8 bytes of the
/// SHA-256 of its ID, in hex. Enough to tell a user's credentials apart
/// and to match `fidosealctl passkeys list`, useless to present to a
/// relying party (a credential ID can carry the sealed key).
pub fn credential_tag(credential_id: &[u8]) -> String {
    hex::encode(&Sha256::digest(credential_id)[..8])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_message_ids_are_unique_and_well_formed() {
        let mut names = std::collections::HashSet::new();
        let mut ids = std::collections::HashSet::new();
        for kind in AuditKind::ALL {
            assert!(names.insert(kind.name()), "{kind:?}");
            assert!(ids.insert(kind.message_id()), "{kind:?}");
            let id = kind.message_id();
            assert_eq!(id.len(), 32, "{kind:?}");
            assert!(id.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()), "{kind:?}");
            assert_eq!(AuditKind::from_name(kind.name()), Some(kind));
        }
        assert_eq!(AuditKind::from_name("nonsense"), None);
    }

    #[test]
    fn the_credential_tag_is_a_short_hash_not_the_id() {
        let id = [0xabu8; 64];
        let tag = credential_tag(&id);
        assert_eq!(tag.len(), 16);
        assert!(!tag.contains("abab"));
        assert_eq!(tag, credential_tag(&id));
        assert_ne!(tag, credential_tag(&[0xab; 63]));
    }
}
