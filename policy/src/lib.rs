//! fidoseal's enterprise policy (the format is in docs/policy.md).
//!
//! Administrators ship TOML files in layered directories:
//! `/usr/share/fidoseal/policy.d/*.toml` (packages), then
//! `/etc/fidoseal/policy.d/*.toml` (the administrator's), each directory in
//! file-name order. `[default]` settings of a later file override earlier
//! ones key by key; `[[rule]]`s accumulate. For a request, the most specific
//! matching rule decides (exact rp ID, then longer wildcards, then `*`; then
//! a user over a group over everyone; then a rule limited to some operations
//! over one for all), a deny beats an allow of equal specificity, and among
//! equals the later rule wins. No match: the default action.
//!
//! ```no_run
//! use fidoseal_policy::{Operation, Policy, Principal, Request};
//! let policy = Policy::load_dirs(&fidoseal_policy::DEFAULT_DIRS)?;
//! let nobody = Principal::default();
//! let decision = policy.evaluate(&Request {
//!     rp_id: "login.example.com",
//!     operation: Operation::GetAssertion,
//!     principal: &nobody,
//!     ctap1: false,
//! });
//! println!("{:?} by {}", decision.action, decision.rule_id);
//! # Ok::<(), fidoseal_policy::PolicyError>(())
//! ```

mod compile;
mod enterprise;
mod eval;
mod file;
mod load;
mod principal;
mod rp;

use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

pub use enterprise::{check_attestation_certificate, EnterpriseAttestation};
pub use eval::{Decision, Explanation, LossReason, Match, Request, Specificity, U2F_UNATTRIBUTABLE};
pub use principal::{resolve_principal, Principal};
pub use rp::{is_u2f_application, normalize_rp_id, RpPattern};

/// The standard policy directories, in the order they are read.
pub const DEFAULT_DIRS: [&str; 2] = ["/usr/share/fidoseal/policy.d", "/etc/fidoseal/policy.d"];

/// Policy files larger than this are refused.
pub const MAX_FILE_SIZE: u64 = 1 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    Allow,
    Deny,
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Action::Allow => "allow",
            Action::Deny => "deny",
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Operation {
    MakeCredential,
    GetAssertion,
}

impl Operation {
    pub fn name(self) -> &'static str {
        match self {
            Operation::MakeCredential => "make-credential",
            Operation::GetAssertion => "get-assertion",
        }
    }

    fn bit(self) -> u8 {
        match self {
            Operation::MakeCredential => 1,
            Operation::GetAssertion => 2,
        }
    }
}

/// Which attestation a relying party gets, where policy says.
///
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Attestation {
    /// Format "none".
    None,
    /// "packed" self attestation.
    SelfAttestation,
    /// "packed" with the machine attestation key's self-signed certificate
    /// (`x5c`): one per machine, so it identifies the machine.
    Machine,
    /// Enterprise attestation (CTAP 2.1 §7.1) with the key and chain of
    /// `[enterprise_attestation]`, when the client asks for it; otherwise
    /// the daemon's configured attestation. Only on rules whose rp IDs are
    /// all listed there (checked at load).
    Enterprise,
}

impl fmt::Display for Attestation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Attestation::None => "none",
            Attestation::SelfAttestation => "self",
            Attestation::Machine => "machine",
            Attestation::Enterprise => "enterprise",
        })
    }
}

/// What an allowed request must satisfy and how it is shown: a rule's own
/// settings over the merged `[default]`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Settings {
    pub require_user_verification: bool,
    pub allow_discoverable: bool,
    /// 1..=3.
    pub min_cred_protect: u8,
    /// `None`: the daemon's configured attestation.
    pub attestation: Option<Attestation>,
    pub min_pin_length: Option<u8>,
    pub prompt_timeout: Option<Duration>,
    pub message: Option<Box<str>>,
}

impl Settings {
    /// What applies where no file says otherwise: a plain security key's behaviour.
    pub(crate) const BUILT_IN: Settings = Settings {
        require_user_verification: false,
        allow_discoverable: true,
        min_cred_protect: 1,
        attestation: None,
        min_pin_length: None,
        prompt_timeout: None,
        message: None,
    };
}

impl Default for Settings {
    fn default() -> Self {
        Self::BUILT_IN
    }
}

/// One `[[rule]]`, normalized, with its effective settings.
#[derive(Debug, Clone)]
pub struct Rule {
    /// `path:line` of its `[[rule]]` header: what logs and explanations name.
    pub id: Box<str>,
    pub rp: Vec<RpPattern>,
    /// Empty with `groups` empty: every user (and no user).
    pub users: Vec<Box<str>>,
    pub groups: Vec<Box<str>>,
    /// Empty: every operation.
    pub operations: Vec<Operation>,
    pub action: Action,
    pub settings: Settings,
    /// Position in load order (later wins among equals).
    pub order: u32,
    operation_mask: u8,
}

/// The default action and settings, merged over all files.
#[derive(Debug, Clone)]
pub struct DefaultRule {
    /// `path:line` of the `action` key that set the default action, or
    /// "built-in default" when no file sets it (then every rp is allowed).
    pub id: Box<str>,
    pub action: Action,
    pub settings: Settings,
    /// For each `[default]` key that some file sets: `path:line` of the
    /// file that set it last.
    pub origins: Vec<(&'static str, Box<str>)>,
}

pub const BUILT_IN_DEFAULT: &str = "built-in default";

/// A loaded, valid policy. Immutable: a reload builds a new one.
#[derive(Debug)]
pub struct Policy {
    files: Vec<PathBuf>,
    /// The directories read, and whether each existed.
    dirs: Vec<(PathBuf, bool)>,
    rules: Vec<Rule>,
    default: DefaultRule,
    index: Index,
    enterprise: Option<Arc<EnterpriseAttestation>>,
}

#[derive(Debug, Default)]
struct Index {
    /// Exact rp IDs (an AppID URL pattern also under its host).
    exact: HashMap<Box<str>, Vec<u32>>,
    /// U2F application parameters (hex) of exact rp IDs, for CTAP1 requests only.
    u2f: HashMap<Box<str>, Vec<u32>>,
    wildcard: HashMap<Box<str>, Vec<u32>>,
    any: Vec<u32>,
}

impl Policy {
    /// The policy of no files at all: everything is allowed, as by a plain
    /// security key.
    pub fn empty() -> Self {
        Self {
            files: Vec::new(),
            dirs: Vec::new(),
            rules: Vec::new(),
            default: DefaultRule {
                id: BUILT_IN_DEFAULT.into(),
                action: Action::Allow,
                settings: Settings::default(),
                origins: Vec::new(),
            },
            index: Index::default(),
            enterprise: None,
        }
    }

    /// Files read, in order.
    pub fn files(&self) -> &[PathBuf] {
        &self.files
    }

    /// Directories read, and whether each existed (a missing one is empty).
    pub fn dirs(&self) -> &[(PathBuf, bool)] {
        &self.dirs
    }

    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    pub fn default_rule(&self) -> &DefaultRule {
        &self.default
    }

    /// rp IDs listed in `[enterprise_attestation]`.
    pub fn enterprise_rp_ids(&self) -> &[Box<str>] {
        self.enterprise.as_deref().map_or(&[], EnterpriseAttestation::rp_ids)
    }

    /// What only the authenticator knows: its AAGUID must be the one the
    /// enterprise attestation certificate names, if it names one.
    pub fn check_authenticator_aaguid(&self, aaguid: &[u8; 16]) -> Result<(), PolicyError> {
        match self.enterprise.as_deref().map(|e| e.check_aaguid(aaguid)) {
            Some(Err(diagnostic)) => Err(PolicyError { diagnostics: vec![diagnostic] }),
            _ => Ok(()),
        }
    }

    /// The `[enterprise_attestation]` key and chain, when a file has a valid one.
    pub fn enterprise_attestation(&self) -> Option<&Arc<EnterpriseAttestation>> {
        self.enterprise.as_ref()
    }
}

/// One problem in a policy file, shown as `file:line: key: message`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub file: PathBuf,
    pub line: Option<usize>,
    /// Dotted key path (`rule.min_cred_protect`), when the problem has one.
    pub key: Option<String>,
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        if let Some(key) = &self.key {
            write!(f, ": {key}")?;
        }
        write!(f, ": {}", self.message)
    }
}

/// Why a policy was not loaded: every problem found, in file order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyError {
    pub diagnostics: Vec<Diagnostic>,
}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.diagnostics.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{d}")?;
        }
        Ok(())
    }
}

impl std::error::Error for PolicyError {}
