//! `fidosealctl policy check` and `policy explain`, run as the real binary.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

struct TempDir(tempfile::TempDir);

impl TempDir {
    fn new(tag: &str) -> Self {
        let dir = tempfile::Builder::new().prefix(&format!("fidosealctl-{tag}-")).tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        TempDir(dir)
    }

    fn path(&self) -> &Path {
        self.0.path()
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.path().join(name);
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        path
    }
}

fn ctl(args: &[&str]) -> (i32, String, String) {
    let Output { status, stdout, stderr } =
        Command::new(env!("CARGO_BIN_EXE_fidosealctl")).args(args).output().expect("fidosealctl runs");
    (status.code().expect("exited"), String::from_utf8(stdout).unwrap(), String::from_utf8(stderr).unwrap())
}

fn example_dir() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/policy.d").display().to_string()
}

#[test]
fn check_accepts_the_shipped_example() {
    let (code, out, err) = ctl(&["policy", "check", "--dir", &example_dir()]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.starts_with("policy OK: 1 file, 2 rules\n"), "{out}");
    assert!(out.contains("default action: deny ("), "{out}");
}

#[test]
fn check_reports_every_problem_as_file_line_key_message_and_exits_1() {
    let tmp = TempDir::new("check");
    let a = tmp.write("10-a.toml", "[default]\naction = \"deny\"\nrequire_uv = true\n");
    let b = tmp.write(
        "20-b.toml",
        "[[rule]]\nrp = [\"login.example.com\",\n      \"*example.com\"]\naction = \"allow\"\nmin_cred_protect = 4\n",
    );
    let (code, out, err) = ctl(&["policy", "check", "--dir", tmp.path().to_str().unwrap()]);
    assert_eq!(code, 1, "{out}{err}");
    assert_eq!(out, "");
    let lines: Vec<&str> = err.lines().collect();
    assert!(
        lines[0].starts_with(&format!("{}:3: default.require_uv: unknown field `require_uv`", a.display())),
        "{err}"
    );
    assert!(lines[1].starts_with(&format!("{}:3: rule.rp: \"*example.com\": ", b.display())), "{err}");
    assert!(
        lines[2].starts_with(&format!("{}:5: rule.min_cred_protect: 4 is not a credProtect level", b.display())),
        "{err}"
    );
    assert_eq!(lines[3], "policy is invalid: 3 problems");
}

#[test]
fn check_reads_directories_in_the_order_given() {
    let tmp = TempDir::new("order");
    let usr = tmp.path().join("usr");
    let etc = tmp.path().join("etc");
    for d in [&usr, &etc] {
        std::fs::create_dir(d).unwrap();
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let write = |dir: &Path, name: &str, text: &str| {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
    };
    write(&usr, "90-vendor.toml", "[default]\naction = \"allow\"\n");
    write(&etc, "10-admin.toml", "[default]\naction = \"deny\"\n");
    let missing = tmp.path().join("missing");
    let (code, out, _) = ctl(&[
        "policy",
        "check",
        "--dir",
        usr.to_str().unwrap(),
        "--dir",
        etc.to_str().unwrap(),
        "--dir",
        missing.to_str().unwrap(),
    ]);
    assert_eq!(code, 0);
    assert!(out.contains(&format!("default action: deny ({}/10-admin.toml:2)", etc.display())), "{out}");
    assert!(out.contains(&format!("{}: does not exist", missing.display())), "{out}");
}

#[test]
fn explain_shows_the_decision_the_rule_and_the_losers() {
    let dir = example_dir();
    let (code, out, err) =
        ctl(&["policy", "explain", "--rp", "Login.Example.COM.", "--operation", "make-credential", "--dir", &dir]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("rp ID:       login.example.com (given as \"Login.Example.COM.\")"), "{out}");
    assert!(out.contains("decision:    allow\n"), "{out}");
    assert!(out.contains("50-example.toml:16 (rp pattern login.example.com)"), "{out}");
    assert!(out.contains("settings:    user verification; credProtect at least 3"), "{out}");
    assert!(out.contains("message:     \"Sign in to Example Corp\""), "{out}");
    assert!(out.contains("50-example.toml:25  allow (rp pattern *.example.com): less specific"), "{out}");

    let (code, out, _) = ctl(&["policy", "explain", "--rp", "evilexample.com", "--dir", &dir]);
    assert_eq!(code, 0);
    assert!(out.contains("decision:    deny\n"), "{out}");
    assert!(
        out.contains("the default action, set at ") && out.contains("50-example.toml:14 (no rule matched)"),
        "{out}"
    );
    assert!(out.contains("outcome:     refused: CTAP2_ERR_OPERATION_DENIED"), "{out}");
}

/// `--u2f` explains a CTAP1 request, matched by hash; the same 64 hex
/// digits without it are a CTAP2 rp ID, which no hash matches.
#[test]
fn explain_tells_u2f_application_parameters_from_ctap2_rp_ids() {
    let dir = example_dir();
    // SHA-256("login.example.com").
    let hash = "0c6ca0839c3a5683557833f618a2556665df2a088964787d53850b4ad4d3bedc";
    let (code, out, err) = ctl(&["policy", "explain", "--rp", hash, "--u2f", "--dir", &dir]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("(a U2F application parameter: SHA-256 of the app ID)"), "{out}");
    assert!(out.contains("50-example.toml:16 (rp pattern login.example.com)"), "{out}");
    let (code, out, _) = ctl(&["policy", "explain", "--rp", hash, "--dir", &dir]);
    assert_eq!(code, 0);
    assert!(!out.contains("U2F") && out.contains("decision:    deny\n"), "{out}");
    let (code, out, _) = ctl(&["policy", "explain", "--rp", "https://login.example.com/app-id.json", "--dir", &dir]);
    assert_eq!(code, 0);
    assert!(out.contains("rp ID:       login.example.com (given as"), "{out}");
    let (code, _, err) = ctl(&["policy", "explain", "--rp", "login.example.com", "--u2f", "--dir", &dir]);
    assert_eq!(code, 2, "{err}");
}

#[test]
fn explain_matches_users_and_their_system_groups() {
    let tmp = TempDir::new("users");
    tmp.write(
        "10.toml",
        "[default]\naction = \"deny\"\n\
         [[rule]]\nrp = [\"*\"]\ngroups = [\"root\"]\naction = \"allow\"\nallow_discoverable = false\n\
         [[rule]]\nrp = [\"*\"]\nusers = [\"nobody-here\"]\ngroups = [\"testers\"]\naction = \"allow\"\n",
    );
    let dir = tmp.path().to_str().unwrap();
    // root's groups come from the system: the group rule matches.
    let (_, out, _) =
        ctl(&["policy", "explain", "--rp", "a.example", "--user", "root", "--discoverable", "--dir", dir]);
    assert!(out.contains("user:        root (groups: root"), "{out}");
    assert!(out.contains("decision:    allow\n"), "{out}");
    assert!(out.contains("outcome:     refused: discoverable credentials are not allowed here"), "{out}");
    // No user: rules with users or groups never match.
    let (_, out, _) = ctl(&["policy", "explain", "--rp", "a.example", "--dir", dir]);
    assert!(out.contains("decision:    deny\n"), "{out}");
    // A user this machine does not know: a warning, then name and --group only.
    let (code, out, err) =
        ctl(&["policy", "explain", "--rp", "a.example", "--user", "nobody-here", "--group", "testers", "--dir", dir]);
    assert_eq!(code, 0);
    assert!(err.contains("warning: no such user \"nobody-here\""), "{err}");
    assert!(out.contains("decision:    allow\n"), "{out}");
    assert!(out.contains("(rp pattern *, users nobody-here, groups testers)"), "{out}");
}

#[test]
fn explain_on_an_invalid_policy_prints_the_errors_and_exits_1() {
    let tmp = TempDir::new("explain-bad");
    let bad = tmp.write("10.toml", "[default]\naction = \"maybe\"\n");
    let (code, out, err) = ctl(&["policy", "explain", "--rp", "a.example", "--dir", tmp.path().to_str().unwrap()]);
    assert_eq!(code, 1);
    assert_eq!(out, "");
    assert!(err.starts_with(&format!("{}:2: default.action: unknown variant `maybe`", bad.display())), "{err}");
}

#[test]
fn usage_errors_exit_2() {
    for args in [
        &["policy"][..],
        &["policy", "explain"],
        &["policy", "explain", "--rp"],
        &["policy", "explain", "--rp", "x", "--operation", "reset"],
        &["policy", "explain", "--rp", "x", "--group", "g"],
        &["policy", "check", "--bogus"],
        &["frobnicate"],
    ] {
        let (code, _, err) = ctl(args);
        assert_eq!(code, 2, "{args:?}: {err}");
        // clap's own message ("error: ..."), or its usage and help.
        assert!(err.starts_with("error: ") || err.to_lowercase().contains("usage: fidosealctl"), "{args:?}: {err}");
    }
    // A check clap cannot make: a U2F request names its rp by hash.
    let (code, _, err) = ctl(&["policy", "explain", "--rp", "example.com", "--u2f"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.starts_with("fidosealctl: --u2f needs --rp to be a U2F application parameter"), "{err}");
    assert!(err.contains("usage: see `fidosealctl --help`"), "{err}");

    let (code, out, _) = ctl(&["--help"]);
    assert_eq!(code, 0);
    for command in ["status", "devices", "passkeys", "reset", "policy", "log"] {
        assert!(out.contains(&format!("\n  {command} ")), "{command}: {out}");
    }
    // --help on every command.
    for args in [
        &["status", "--help"][..],
        &["devices", "--help"],
        &["passkeys", "list", "--help"],
        &["passkeys", "show", "--help"],
        &["passkeys", "delete", "--help"],
        &["reset", "--help"],
        &["policy", "check", "--help"],
        &["log", "--help"],
    ] {
        let (code, out, err) = ctl(args);
        assert_eq!(code, 0, "{args:?}: {err}");
        assert!(out.contains("Usage: fidosealctl"), "{args:?}: {out}");
    }
    let (code, out, _) = ctl(&["policy", "explain", "--help"]);
    assert_eq!(code, 0);
    assert!(out.contains("--rp <ID>"), "{out}");
}

/// Without a daemon on the bus: one line with the fix, exit 1.
#[test]
fn no_daemon_is_one_line_and_exit_1() {
    let output = Command::new(env!("CARGO_BIN_EXE_fidosealctl"))
        .args(["passkeys", "list"])
        .env("DBUS_SYSTEM_BUS_ADDRESS", "unix:path=/nonexistent/fidoseal-test-bus")
        .output()
        .expect("fidosealctl runs");
    let err = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.starts_with("fidosealctl: cannot reach fidoseald on the system bus: "), "{err}");
    assert!(err.contains("systemctl status fidoseald"), "{err}");
}

/// `reset` without a terminal and without --yes never reaches the daemon.
#[test]
fn reset_without_a_terminal_needs_yes() {
    let output = Command::new(env!("CARGO_BIN_EXE_fidosealctl"))
        .arg("reset")
        .env("DBUS_SYSTEM_BUS_ADDRESS", "unix:path=/nonexistent/fidoseal-test-bus")
        .stdin(std::process::Stdio::null())
        .output()
        .expect("fidosealctl runs");
    let err = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{err}");
    assert!(err.contains("add --yes"), "{err}");
}

/// The man pages and completions are written at build time.
#[test]
fn man_pages_and_completions_are_built() {
    let bin = std::path::Path::new(env!("CARGO_BIN_EXE_fidosealctl"));
    let share = bin.parent().expect("target/<profile>").join("share");
    for page in ["fidosealctl.1", "fidosealctl-passkeys-list.1", "fidosealctl-log.1", "fidosealctl-reset.1"] {
        let text = std::fs::read_to_string(share.join("man/man1").join(page)).unwrap_or_else(|e| panic!("{page}: {e}"));
        assert!(text.starts_with(".ie \\n(.g .ds Aq") || text.contains(".TH"), "{page}: {text}");
    }
    let bash = std::fs::read_to_string(share.join("completions/fidosealctl.bash")).unwrap();
    assert!(bash.contains("passkeys") && bash.contains("--decision"), "{bash}");
    assert!(share.join("completions/_fidosealctl").is_file());
    assert!(share.join("completions/fidosealctl.fish").is_file());
}

/// `[enterprise_attestation]` with the policy crate's test key (copied 0600)
/// and chain; `certificate` picks the attestation certificate.
fn enterprise_policy(tmp: &TempDir, certificate: &str) -> PathBuf {
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("../policy/tests/data/enterprise");
    let keys = tmp.path().join("keys");
    std::fs::create_dir_all(&keys).unwrap();
    let key = keys.join("ea.key");
    std::fs::copy(data.join("attestation-pkcs8.key"), &key).unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let dir = tmp.path().join("policy.d");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let text = format!(
        "[enterprise_attestation]\nrp_ids = [\"login.example.com\"]\nkey = {:?}\ncertificates = [{:?}, {:?}]\n\
         [[rule]]\nrp = [\"login.example.com\"]\naction = \"allow\"\nattestation = \"enterprise\"\n",
        key.display().to_string(),
        data.join(certificate).display().to_string(),
        data.join("root-ca.pem").display().to_string()
    );
    let file = dir.join("50-ea.toml");
    std::fs::write(&file, text).unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    dir
}

#[test]
fn check_shows_the_enterprise_section_and_refuses_a_certificate_for_another_aaguid() {
    let tmp = TempDir::new("enterprise");
    let dir = enterprise_policy(&tmp, "attestation.pem");
    let (code, out, err) = ctl(&["policy", "check", "--dir", dir.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains(&format!(
            "enterprise attestation: for login.example.com; key {}; 2 certificates",
            tmp.path().join("keys/ea.key").display()
        )),
        "{out}"
    );
    let (code, out, _) = ctl(&["policy", "explain", "--dir", dir.to_str().unwrap(), "--rp", "login.example.com"]);
    assert_eq!(code, 0);
    assert!(out.contains("attestation enterprise"), "{out}");

    // Only fidosealctl and the daemon know fidoseal's AAGUID: checked here too.
    let dir = enterprise_policy(&tmp, "other-aaguid.pem");
    let (code, out, err) = ctl(&["policy", "check", "--dir", dir.to_str().unwrap()]);
    assert_eq!(code, 1, "{out}{err}");
    let file = dir.join("50-ea.toml");
    assert!(err.starts_with(&format!("{}:4: enterprise_attestation.certificates: ", file.display())), "{err}");
    assert!(err.contains("AAGUID"), "{err}");
}

/// `metadata` prints an MDS3 statement as JSON (its fields are checked in
/// src/metadata.rs); without a readable configuration it needs --keystore.
#[test]
fn metadata_prints_the_statement() {
    let (code, out, err) = ctl(&["metadata", "--config", "/nonexistent/fidoseald.toml", "--keystore", "tpm"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("\"keyProtection\": [\n    \"hardware\",\n    \"tpm\"\n  ]"), "{out}");
    assert!(out.contains("\"protocolFamily\": \"fido2\""), "{out}");
    let (code, _, err) = ctl(&["metadata", "--config", "/nonexistent/fidoseald.toml"]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.starts_with("fidosealctl: cannot read /nonexistent/fidoseald.toml: ") && err.contains("--keystore"),
        "{err}"
    );
}
