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
    pub prompt: PromptConfig,
    #[serde(default)]
    pub authenticator: AuthenticatorSection,
    #[serde(default)]
    pub device: DeviceConfig,
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
}

#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum KeyStoreBackend {
    /// P-256 keys wrapped by a key file in the state directory.
    Software,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PromptConfig {
    pub mode: PromptMode,
}

#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum PromptMode {
    /// Every request is approved without asking anyone (tests, kiosks).
    AlwaysApprove,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct AuthenticatorSection {
    #[serde(default)]
    pub attestation: Attestation,
}

#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Attestation {
    /// "packed" self attestation.
    #[default]
    #[serde(rename = "self")]
    SelfAttestation,
    /// "none".
    None,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceConfig {
    /// The uhid character device.
    #[serde(default = "default_uhid_path")]
    pub uhid_path: PathBuf,
}

fn default_uhid_path() -> PathBuf {
    PathBuf::from("/dev/uhid")
}

impl Default for DeviceConfig {
    fn default() -> Self {
        Self { uhid_path: default_uhid_path() }
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
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = "[keystore]\nbackend = \"software\"\n[prompt]\nmode = \"always-approve\"\n";

    #[test]
    fn minimal_config_uses_defaults() {
        let c = Config::parse(MINIMAL).unwrap();
        assert_eq!(c.state_dir, PathBuf::from("/var/lib/fidoseal"));
        assert_eq!(c.keystore.backend, KeyStoreBackend::Software);
        assert_eq!(c.prompt.mode, PromptMode::AlwaysApprove);
        assert_eq!(c.authenticator.attestation, Attestation::SelfAttestation);
        assert_eq!(c.device.uhid_path, PathBuf::from("/dev/uhid"));
    }

    #[test]
    fn full_config() {
        let c = Config::parse(&format!(
            "state_dir = \"/tmp/s\"\n{MINIMAL}[authenticator]\nattestation = \"none\"\n[device]\nuhid_path = \"/dev/x\"\n"
        ))
        .unwrap();
        assert_eq!(c.state_dir, PathBuf::from("/tmp/s"));
        assert_eq!(c.authenticator.attestation, Attestation::None);
        assert_eq!(c.device.uhid_path, PathBuf::from("/dev/x"));
    }

    #[test]
    fn unknown_backend_is_refused_with_its_name_and_line() {
        let err = Config::parse("[keystore]\nbackend = \"cloud\"\n[prompt]\nmode = \"always-approve\"\n").unwrap_err();
        assert!(err.contains("cloud"), "{err}");
        assert!(err.contains("line 2"), "{err}");
    }

    #[test]
    fn missing_sections_and_unknown_keys_are_errors() {
        assert!(Config::parse("[prompt]\nmode = \"always-approve\"\n").unwrap_err().contains("keystore"));
        assert!(Config::parse("[keystore]\nbackend = \"software\"\n").unwrap_err().contains("prompt"));
        assert!(Config::parse(&format!("{MINIMAL}statedir = \"/x\"\n")).unwrap_err().contains("statedir"));
        assert!(Config::parse(&format!("{MINIMAL}[prompt2]\n")).is_err());
        assert!(Config::parse("[keystore]\nbackend = 1\n[prompt]\nmode = \"always-approve\"\n").is_err());
        assert!(Config::parse("not toml at all [").is_err());
    }

    #[test]
    fn relative_state_dir_is_refused() {
        assert!(Config::parse(&format!("state_dir = \"rel\"\n{MINIMAL}")).unwrap_err().contains("absolute"));
    }
}
