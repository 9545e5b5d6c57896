use super::*;

const MINIMAL: &str = "[keystore]\nbackend = \"software\"\n[prompt]\nmode = \"always-approve\"\n";

#[test]
fn minimal_config_uses_defaults() {
    let c = Config::parse(MINIMAL).unwrap();
    assert_eq!(c.state_dir, PathBuf::from("/var/lib/fidoseal"));
    assert_eq!(c.keystore.backend, KeyStoreBackend::Software);
    assert_eq!(c.prompt.mode, PromptMode::AlwaysApprove);
    assert_eq!(c.authenticator.attestation, Attestation::SelfAttestation);
    assert_eq!(c.authenticator.non_web_attestation, Attestation::Machine, "pamu2fcfg of pam-u2f 1.1.0 enrols");
    assert_eq!(c.authenticator.discoverable_credentials, 10_000);
    assert_eq!(c.device.uhid_path, PathBuf::from("/dev/uhid"));
}

#[test]
fn full_config() {
    let c = Config::parse(&format!(
        "state_dir = \"/tmp/s\"\n{MINIMAL}[authenticator]\nattestation = \"none\"\nnon_web_attestation = \"self\"\n\
         discoverable_credentials = 50000\n\
         [device]\nuhid_path = \"/dev/x\"\n"
    ))
    .unwrap();
    assert_eq!(c.authenticator.discoverable_credentials, 50_000);
    assert_eq!(c.state_dir, PathBuf::from("/tmp/s"));
    assert_eq!(c.authenticator.attestation, Attestation::None);
    assert_eq!(c.authenticator.non_web_attestation, Attestation::SelfAttestation);
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
    // [prompt] may be left out: agent mode, which needs [device] user.
    assert!(Config::parse("[keystore]\nbackend = \"software\"\n").unwrap_err().contains("[device] user"));
    assert!(Config::parse(&format!("{MINIMAL}statedir = \"/x\"\n")).unwrap_err().contains("statedir"));
    assert!(Config::parse(&format!("{MINIMAL}[prompt2]\n")).is_err());
    assert!(Config::parse("[keystore]\nbackend = 1\n[prompt]\nmode = \"always-approve\"\n").is_err());
    assert!(Config::parse("not toml at all [").is_err());
}

#[test]
fn tpm_backend_with_default_and_explicit_tcti() {
    let c = Config::parse("[keystore]\nbackend = \"tpm\"\n[prompt]\nmode = \"always-approve\"\n").unwrap();
    assert_eq!(c.keystore.backend, KeyStoreBackend::Tpm);
    assert_eq!(c.keystore.tpm_settings(), crate::tpm::TpmSettings::default());
    assert_eq!(c.keystore.tpm_settings().tcti, "device:/dev/tpmrm0");
    let c = Config::parse(
        "[keystore]\nbackend = \"tpm\"\ntcti = \"swtpm:host=127.0.0.1,port=2321\"\nowner_auth_file = \"/etc/fidoseal/owner-auth\"\n\
         [prompt]\nmode = \"always-approve\"\n",
    )
    .unwrap();
    let settings = c.keystore.tpm_settings();
    assert_eq!(settings.tcti, "swtpm:host=127.0.0.1,port=2321");
    assert_eq!(settings.owner_auth_file, Some(PathBuf::from("/etc/fidoseal/owner-auth")));
}

#[test]
fn tpm_settings_are_refused_where_they_mean_nothing() {
    let with = |extra: &str, backend: &str| {
        Config::parse(&format!("[keystore]\nbackend = \"{backend}\"\n{extra}\n[prompt]\nmode = \"always-approve\"\n"))
    };
    assert!(with("tcti = \"device:/dev/tpmrm0\"", "software").unwrap_err().contains("only to backend"));
    assert!(with("owner_auth_file = \"/x\"", "software").unwrap_err().contains("only to backend"));
    assert!(with("tcti = \"\"", "tpm").unwrap_err().contains("empty"));
    assert!(with("owner_auth_file = \"rel\"", "tpm").unwrap_err().contains("absolute"));
    assert!(with("tcit = \"device:/dev/tpm0\"", "tpm").unwrap_err().contains("tcit"));
}

#[test]
fn pcrs_bind_the_tpm_store_and_nothing_else() {
    let with = |extra: &str, backend: &str| {
        Config::parse(&format!("[keystore]\nbackend = \"{backend}\"\n{extra}\n[prompt]\nmode = \"always-approve\"\n"))
    };
    assert!(with("", "tpm").unwrap().keystore.pcrs.is_empty(), "off by default");
    assert_eq!(with("pcrs = [7]", "tpm").unwrap().keystore.pcrs, vec![7]);
    assert_eq!(with("pcrs = [7, 11]", "tpm").unwrap().keystore.pcrs, vec![7, 11]);
    assert!(with("pcrs = []", "tpm").unwrap().keystore.pcrs.is_empty());
    assert!(with("pcrs = [7]", "software").unwrap_err().contains("only to backend"));
    assert!(with("pcrs = [24]", "tpm").unwrap_err().contains("24 is not a PCR"));
    assert!(with("pcrs = [7, 7]", "tpm").unwrap_err().contains("twice"));
    assert!(with("pcrs = [-1]", "tpm").is_err());
    assert!(with("pcrs = 7", "tpm").is_err());
}

#[test]
fn policy_dirs_and_device_user() {
    let c = Config::parse(MINIMAL).unwrap();
    assert_eq!(c.policy.dirs, [PathBuf::from("/usr/share/fidoseal/policy.d"), PathBuf::from("/etc/fidoseal/policy.d")]);
    assert_eq!(c.device.user, None);
    let c = Config::parse(&format!("{MINIMAL}[policy]\ndirs = [\"/tmp/x\"]\n[device]\nuser = \"alice\"\n")).unwrap();
    assert_eq!(c.policy.dirs, [PathBuf::from("/tmp/x")]);
    assert_eq!(c.device.user.as_deref(), Some("alice"));
    assert!(Config::parse(&format!("{MINIMAL}[policy]\ndirs = []\n")).unwrap().policy.dirs.is_empty());
    assert!(Config::parse(&format!("{MINIMAL}[policy]\ndirs = [\"rel\"]\n")).unwrap_err().contains("absolute"));
    assert!(Config::parse(&format!("{MINIMAL}[policy]\ndir = [\"/x\"]\n")).unwrap_err().contains("dir"));
    assert!(Config::parse(&format!("{MINIMAL}[device]\nuser = \"\"\n")).unwrap_err().contains("user"));
}

#[test]
fn prompt_defaults_to_the_agent() {
    let c = Config::parse("[keystore]\nbackend = \"software\"\n[device]\nuser = \"alice\"\n").unwrap();
    assert_eq!(c.prompt.mode, PromptMode::Agent);
    assert_eq!(c.prompt.timeout(), std::time::Duration::from_secs(30));
    assert_eq!(c.prompt.uv_methods, [UvMethod::Fingerprint, UvMethod::Password, UvMethod::Pin]);
    assert_eq!(c.prompt.pam_service, "fidoseal");
    let c = Config::parse("[keystore]\nbackend = \"software\"\n[device]\nuser = \"alice\"\n[prompt]\n").unwrap();
    assert_eq!(c.prompt.mode, PromptMode::Agent);
}

#[test]
fn prompt_settings() {
    let with = |prompt: &str| {
        Config::parse(&format!("[keystore]\nbackend = \"software\"\n[device]\nuser = \"alice\"\n[prompt]\n{prompt}\n"))
    };
    let c =
        with("mode = \"agent\"\ntimeout = 12\nuv_methods = [\"pin\", \"fingerprint\"]\npam_service = \"fidoseal-x\"")
            .unwrap();
    assert_eq!(c.prompt.timeout, 12);
    assert_eq!(c.prompt.uv_methods, [UvMethod::Pin, UvMethod::Fingerprint]);
    assert_eq!(c.prompt.pam_service, "fidoseal-x");
    assert!(with("uv_methods = []").unwrap().prompt.uv_methods.is_empty());
    assert!(with("uv_methods = [\"retina\"]").unwrap_err().contains("retina"));
    assert!(with("uv_methods = [\"pin\", \"pin\"]").unwrap_err().contains("twice"));
    assert!(with("timeout = 0").unwrap_err().contains("out of range"));
    assert!(with("timeout = 601").unwrap_err().contains("out of range"));
    assert!(with("pam_service = \"../shadow\"").unwrap_err().contains("pam_service"));
    assert!(with("pam_service = \"\"").unwrap_err().contains("pam_service"));
    assert!(with("mode = \"telepathy\"").unwrap_err().contains("telepathy"));
    // always-approve needs no device user.
    assert!(Config::parse(MINIMAL).is_ok());
    assert_eq!(UvMethod::from_name("password"), Some(UvMethod::Password));
    assert_eq!(UvMethod::from_name("face"), None);
}

#[test]
fn relative_state_dir_is_refused() {
    assert!(Config::parse(&format!("state_dir = \"rel\"\n{MINIMAL}")).unwrap_err().contains("absolute"));
}

#[test]
fn device_mode_single_by_default_per_user_by_choice() {
    let c = Config::parse(MINIMAL).unwrap();
    assert_eq!(c.device.mode, DeviceMode::Single, "a configuration from before per-user devices keeps its meaning");
    let agent = "[keystore]\nbackend = \"software\"\n[device]\nmode = \"per-user\"\n";
    let c = Config::parse(agent).unwrap();
    assert_eq!(c.device.mode, DeviceMode::PerUser);
    assert_eq!(c.prompt.mode, PromptMode::Agent, "per-user agent mode needs no [device] user");
    assert_eq!(c.device.sessions, [SessionKind::Graphical, SessionKind::Text]);
    assert_eq!(c.device.user, None);
    let c = Config::parse(&format!("{agent}sessions = [\"remote\", \"graphical\", \"unseated\"]\nuser = \"alice\"\n"))
        .unwrap();
    assert_eq!(c.device.sessions, [SessionKind::Remote, SessionKind::Graphical, SessionKind::Unseated]);
    assert_eq!(c.device.user.as_deref(), Some("alice"), "per-user: the owner of an old single-user state");
}

#[test]
fn bad_device_sections_say_what_is_wrong() {
    let per_user = |extra: &str| {
        Config::parse(&format!("[keystore]\nbackend = \"software\"\n[device]\nmode = \"per-user\"\n{extra}\n"))
    };
    assert!(per_user("sessions = []").unwrap_err().contains("nobody would get a device"));
    assert!(per_user("sessions = [\"text\", \"text\"]").unwrap_err().contains("text twice"));
    let err = per_user("sessions = [\"vnc\"]").unwrap_err();
    assert!(err.contains("vnc") && err.contains("line 5"), "{err}");
    assert!(per_user("sessions = \"text\"").is_err());
    assert!(per_user("user = \"a b\"").unwrap_err().contains("not a user name"));
    let err = Config::parse("[keystore]\nbackend = \"software\"\n[device]\nmode = \"everyone\"\n").unwrap_err();
    assert!(err.contains("everyone") && err.contains("per-user"), "{err}");
    let err = Config::parse(&format!("{MINIMAL}[device]\nsessions = [\"remote\"]\n")).unwrap_err();
    assert!(err.contains("only to mode = \"per-user\""), "{err}");
    let err = Config::parse("[keystore]\nbackend = \"software\"\n[device]\nmode = \"single\"\n").unwrap_err();
    assert!(err.contains("needs [device] user"), "{err}");
    assert!(per_user("session = [\"text\"]").unwrap_err().contains("session"));
}
