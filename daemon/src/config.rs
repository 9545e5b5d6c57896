//! `fidoseald --config PATH`: the daemon's TOML configuration. Unknown keys
//! and unknown values are errors, so a typo never silently changes what the
//! daemon does.

use std::path::{Path, PathBuf};

use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Resident credentials, counters and key material live here (0700).
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    pub keystore: KeyStoreConfig,
    /// `[prompt]`: who is asked for presence and verification (docs/dbus.md).
    #[serde(default)]
    pub prompt: PromptConfig,
    #[serde(default)]
    pub authenticator: AuthenticatorSection,
    #[serde(default)]
    pub device: DeviceConfig,
    #[serde(default)]
    pub policy: PolicyConfig,
}

fn default_state_dir() -> PathBuf {
    PathBuf::from("/var/lib/fidoseal")
}

/// Which key store holds the private keys. There is no default: the choice
/// must be explicit, and an unknown backend stops the daemon.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyStoreConfig {
    pub backend: KeyStoreBackend,
    /// tpm only: the tpm2-tss TCTI string (default `device:/dev/tpmrm0`).
    pub tcti: Option<String>,
    /// tpm only: a file holding the owner hierarchy's authorization value,
    /// if one is set on the TPM.
    pub owner_auth_file: Option<PathBuf>,
    /// tpm only: PCRs (SHA-256 bank) the key store's TPM objects are bound
    /// to (docs/tpm.md, "Boot-state binding"); empty: off.
    #[serde(default)]
    pub pcrs: Vec<u8>,
}

impl KeyStoreConfig {
    pub fn tpm_settings(&self) -> crate::tpm::TpmSettings {
        crate::tpm::TpmSettings {
            tcti: self.tcti.clone().unwrap_or_else(|| crate::tpm::DEFAULT_TCTI.into()),
            owner_auth_file: self.owner_auth_file.clone(),
        }
    }

    fn check(&self) -> Result<(), String> {
        if self.backend != KeyStoreBackend::Tpm
            && (self.tcti.is_some() || self.owner_auth_file.is_some() || !self.pcrs.is_empty())
        {
            return Err("[keystore] tcti, owner_auth_file and pcrs apply only to backend = \"tpm\"".into());
        }
        crate::tpm::pcr_policy::check_selection(&self.pcrs)?;
        if self.tcti.as_deref().is_some_and(|t| t.trim().is_empty()) {
            return Err("[keystore] tcti is empty (the default is \"device:/dev/tpmrm0\")".into());
        }
        if let Some(path) = self.owner_auth_file.as_deref().filter(|p| !p.is_absolute()) {
            return Err(format!("[keystore] owner_auth_file must be an absolute path, not {}", path.display()));
        }
        Ok(())
    }
}

#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum KeyStoreBackend {
    /// P-256 keys wrapped by a key file in the state directory.
    Software,
    /// Keys made by and kept in the TPM 2.0 (docs/tpm.md).
    Tpm,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PromptConfig {
    #[serde(default)]
    pub mode: PromptMode,
    /// Seconds the user has to answer a prompt; a policy rule's
    /// `prompt_timeout` overrides it for its relying parties.
    #[serde(default = "default_prompt_timeout")]
    pub timeout: u64,
    /// Built-in user verification the agent may offer, in order of
    /// preference: "fingerprint" (fprintd), "password" (PAM), "pin" (the
    /// authenticator's own PIN typed in the agent). Empty: no built-in UV.
    #[serde(default = "default_uv_methods")]
    pub uv_methods: Vec<UvMethod>,
    /// The PAM service that checks the device user's password.
    #[serde(default = "default_pam_service")]
    pub pam_service: String,
}

/// The longest prompt timeout, as for policy's `prompt_timeout`.
pub const MAX_PROMPT_TIMEOUT_SECS: u64 = 600;

fn default_prompt_timeout() -> u64 {
    30
}

fn default_uv_methods() -> Vec<UvMethod> {
    vec![UvMethod::Fingerprint, UvMethod::Password, UvMethod::Pin]
}

fn default_pam_service() -> String {
    "fidoseal".into()
}

impl Default for PromptConfig {
    fn default() -> Self {
        Self {
            mode: PromptMode::default(),
            timeout: default_prompt_timeout(),
            uv_methods: default_uv_methods(),
            pam_service: default_pam_service(),
        }
    }
}

impl PromptConfig {
    pub fn timeout(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.timeout)
    }

    fn check(&self) -> Result<(), String> {
        if !(1..=MAX_PROMPT_TIMEOUT_SECS).contains(&self.timeout) {
            return Err(format!(
                "[prompt] timeout {} is out of range: seconds, 1 to {MAX_PROMPT_TIMEOUT_SECS}",
                self.timeout
            ));
        }
        if let Some(twice) =
            self.uv_methods.iter().enumerate().find_map(|(i, m)| self.uv_methods[..i].contains(m).then_some(m))
        {
            return Err(format!("[prompt] uv_methods names {} twice", twice.name()));
        }
        let service = &self.pam_service;
        if service.is_empty()
            || service.starts_with('.')
            || !service.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            return Err(format!(
                "[prompt] pam_service {service:?} is not a PAM service name (a file name in /etc/pam.d)"
            ));
        }
        Ok(())
    }
}

#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum PromptMode {
    /// Ask the agent in the device user's desktop session over D-Bus.
    #[default]
    Agent,
    /// Every request is approved without asking anyone (tests, kiosks).
    AlwaysApprove,
}

impl PromptMode {
    pub fn name(self) -> &'static str {
        match self {
            PromptMode::Agent => "agent",
            PromptMode::AlwaysApprove => "always-approve",
        }
    }
}

/// A built-in user verification method, as named on the bus.
#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum UvMethod {
    Fingerprint,
    Password,
    Pin,
}

impl UvMethod {
    pub fn name(self) -> &'static str {
        match self {
            UvMethod::Fingerprint => fidoseal_dbus::method::FINGERPRINT,
            UvMethod::Password => fidoseal_dbus::method::PASSWORD,
            UvMethod::Pin => fidoseal_dbus::method::PIN,
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        [UvMethod::Fingerprint, UvMethod::Password, UvMethod::Pin].into_iter().find(|m| m.name() == name)
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthenticatorSection {
    /// Web relying parties (rp IDs that are domains).
    #[serde(default)]
    pub attestation: Attestation,
    /// rp IDs that no web origin can claim (`pam://…`, `ssh:…`).
    #[serde(default = "default_non_web_attestation")]
    pub non_web_attestation: Attestation,
    /// How many discoverable credentials (passkeys) the key holds; getInfo
    /// reports what is left. Lowering it below the stored count deletes
    /// nothing: new ones are refused until there is room.
    #[serde(default = "default_discoverable_credentials")]
    pub discoverable_credentials: usize,
}

/// Enough for a password manager's worth of passkeys; the store's cost per
/// ceremony does not grow with it (docs/performance.md).
pub const DEFAULT_DISCOVERABLE_CREDENTIALS: usize = 10_000;

/// pamu2fcfg of pam-u2f 1.1.0 (Debian 12) refuses a registration without a
/// certificate, and these rp IDs are this machine's own services.
fn default_non_web_attestation() -> Attestation {
    Attestation::Machine
}

fn default_discoverable_credentials() -> usize {
    DEFAULT_DISCOVERABLE_CREDENTIALS
}

impl Default for AuthenticatorSection {
    fn default() -> Self {
        Self {
            attestation: Attestation::default(),
            non_web_attestation: default_non_web_attestation(),
            discoverable_credentials: DEFAULT_DISCOVERABLE_CREDENTIALS,
        }
    }
}

// `Self` is a keyword: the variant for "self" keeps the enum's name.
#[allow(clippy::enum_variant_names)]
#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Attestation {
    /// "packed" self attestation.
    #[default]
    #[serde(rename = "self")]
    SelfAttestation,
    /// "none".
    None,
    /// "packed" with the machine attestation certificate (docs/policy.md).
    Machine,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceConfig {
    /// Who gets a device: one per admitted user ("per-user"), or one for
    /// `user` ("single"). Left out: "single", so that a configuration
    /// written before per-user devices keeps its meaning on upgrade; the
    /// shipped configuration says "per-user".
    #[serde(default)]
    pub mode: DeviceMode,
    /// per-user: the logind session kinds that give their user a device.
    #[serde(default = "default_session_kinds")]
    pub sessions: Vec<SessionKind>,
    /// The uhid character device; a Unix socket there is connected to
    /// instead (tests that play the kernel, uhid.rs).
    #[serde(default = "default_uhid_path")]
    pub uhid_path: PathBuf,
    /// single: the user this device belongs to (their agent answers, their
    /// policy rules apply; None: such rules never match). per-user: the
    /// owner of a single-user state directory found at start, which
    /// becomes their store (docs/packaging.md, "Migration").
    pub user: Option<String>,
}

#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum DeviceMode {
    /// One device for `[device] user` (kiosks, tests, the behaviour before
    /// per-user devices).
    #[default]
    Single,
    /// A device, a store and a PIN for each user with an admitted logind
    /// session (devices.rs).
    PerUser,
}

impl DeviceMode {
    pub fn name(self) -> &'static str {
        match self {
            DeviceMode::Single => "single",
            DeviceMode::PerUser => "per-user",
        }
    }
}

/// A kind of logind session (`loginctl show-session`: Remote, Seat, Type).
/// Only sessions of class "user" count; greeters and lock screens never do.
#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "kebab-case")]
pub enum SessionKind {
    /// Local, on a seat, Type x11, wayland or mir: a desktop.
    Graphical,
    /// Local, on a seat, Type tty (or unspecified): a text console login.
    Text,
    /// Local without a seat: `su -l`, `machinectl shell`, a PAM session
    /// started by a service.
    Unseated,
    /// Remote = yes: ssh and other network logins.
    Remote,
}

impl SessionKind {
    pub fn name(self) -> &'static str {
        match self {
            SessionKind::Graphical => "graphical",
            SessionKind::Text => "text",
            SessionKind::Unseated => "unseated",
            SessionKind::Remote => "remote",
        }
    }
}

fn default_session_kinds() -> Vec<SessionKind> {
    vec![SessionKind::Graphical, SessionKind::Text]
}

fn default_uhid_path() -> PathBuf {
    PathBuf::from("/dev/uhid")
}

impl Default for DeviceConfig {
    fn default() -> Self {
        Self {
            mode: DeviceMode::default(),
            sessions: default_session_kinds(),
            uhid_path: default_uhid_path(),
            user: None,
        }
    }
}

impl DeviceConfig {
    fn check(&self, prompt: PromptMode) -> Result<(), String> {
        if let Some(user) = self.user.as_deref().filter(|u| u.is_empty() || u.contains(char::is_whitespace)) {
            return Err(format!("[device] user {user:?} is not a user name"));
        }
        match self.mode {
            DeviceMode::Single => {
                if self.sessions != default_session_kinds() {
                    return Err("[device] sessions applies only to mode = \"per-user\"".into());
                }
                if prompt == PromptMode::Agent && self.user.is_none() {
                    return Err(
                        "[prompt] mode = \"agent\" with [device] mode = \"single\" needs [device] user: the user whose \
                         session agent answers prompts (or set [device] mode = \"per-user\")"
                            .into(),
                    );
                }
            }
            DeviceMode::PerUser => {
                if self.sessions.is_empty() {
                    return Err("[device] sessions is empty: nobody would get a device (the default is \
                                [\"graphical\", \"text\"])"
                        .into());
                }
                if let Some(twice) =
                    self.sessions.iter().enumerate().find_map(|(i, k)| self.sessions[..i].contains(k).then_some(k))
                {
                    return Err(format!("[device] sessions names {} twice", twice.name()));
                }
            }
        }
        Ok(())
    }
}

/// `[policy]`: where the policy files are (docs/policy.md).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    /// Read in this order, each directory's `*.toml` in file-name order.
    #[serde(default = "default_policy_dirs")]
    pub dirs: Vec<PathBuf>,
}

fn default_policy_dirs() -> Vec<PathBuf> {
    fidoseal_policy::DEFAULT_DIRS.iter().map(PathBuf::from).collect()
}

impl Default for PolicyConfig {
    fn default() -> Self {
        Self { dirs: default_policy_dirs() }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read configuration {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("invalid configuration {path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

impl Config {
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.into(), source })?;
        Self::parse(&text).map_err(|message| ConfigError::Invalid { path: path.into(), message })
    }

    pub fn parse(text: &str) -> Result<Self, String> {
        let config: Config = toml::from_str(text).map_err(|e| e.to_string())?;
        if !config.state_dir.is_absolute() {
            return Err(format!("state_dir must be an absolute path, not {}", config.state_dir.display()));
        }
        config.keystore.check()?;
        if let Some(dir) = config.policy.dirs.iter().find(|d| !d.is_absolute()) {
            return Err(format!("[policy] dirs must be absolute paths, not {}", dir.display()));
        }
        config.device.check(config.prompt.mode)?;
        config.prompt.check()?;
        Ok(config)
    }
}

#[cfg(test)]
mod tests;
