//! `[enterprise_attestation]`: the key and chain are read, checked against
//! each other and against WebAuthn's attestation certificate rules, and each
//! problem names the file, line and key. The keys and certificates are in
//! tests/data/enterprise (made by its make.sh).

mod common;

use std::path::{Path, PathBuf};

use common::{write_mode, TempDir};
use fidoseal_policy::{Attestation, Operation, Policy, PolicyError, Principal, Request};

/// fidoseal's AAGUID, which tests/data/enterprise/attestation.pem names.
const FIDOSEAL_AAGUID: [u8; 16] =
    [0x5a, 0x0e, 0x3c, 0x1f, 0x8b, 0x47, 0x4d, 0x52, 0x9e, 0x61, 0x2c, 0xf0, 0x7d, 0x13, 0xa8, 0x46];

fn data(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/enterprise").join(name)
}

/// A private key from the test data, copied with the mode given (git keeps
/// no 0600).
fn key(dir: &TempDir, name: &str, mode: u32) -> PathBuf {
    let text = std::fs::read_to_string(data(name)).unwrap();
    write_mode(dir.path(), name, &text, mode)
}

fn section(key: &Path, certificates: &[PathBuf]) -> String {
    let certs: Vec<String> = certificates.iter().map(|c| format!("{:?}", c.display().to_string())).collect();
    format!(
        "[enterprise_attestation]\nrp_ids = [\"idp.example.com\", \"login.example.org\"]\nkey = {:?}\ncertificates = [{}]\n",
        key.display().to_string(),
        certs.join(", ")
    )
}

const ENTERPRISE_RULE: &str =
    "[[rule]]\nrp = [\"idp.example.com\"]\naction = \"allow\"\nattestation = \"enterprise\"\n";

fn load(text: &str) -> Result<Policy, PolicyError> {
    Policy::from_sources(&[("/p/50-ea.toml", text)])
}

fn problems(text: &str) -> Vec<String> {
    load(text).expect_err("refused").diagnostics.iter().map(ToString::to_string).collect()
}

#[test]
fn a_valid_section_loads_the_key_and_the_chain_leaf_first() {
    let dir = TempDir::new("ea-valid");
    for key_file in ["attestation-sec1.key", "attestation-pkcs8.key"] {
        let key = key(&dir, key_file, 0o600);
        let text = section(&key, &[data("attestation.pem"), data("root-ca.pem")]) + ENTERPRISE_RULE;
        let policy = load(&text).unwrap_or_else(|e| panic!("{key_file}: {e}"));
        let ea = policy.enterprise_attestation().expect("loaded");
        assert_eq!(ea.rp_ids(), ["idp.example.com".into(), "login.example.org".into()] as [Box<str>; 2]);
        assert_eq!(policy.enterprise_rp_ids().len(), 2);
        assert_eq!(ea.certificates().len(), 2);
        // Leaf first, byte for byte the DER of the PEM files.
        let leaf_pem = std::fs::read_to_string(data("attestation.pem")).unwrap();
        assert!(leaf_pem.contains("BEGIN CERTIFICATE"));
        assert_eq!(ea.certificates()[0][0], 0x30, "DER SEQUENCE");
        assert_ne!(ea.certificates()[0], ea.certificates()[1]);
        assert_eq!(ea.certificate_aaguid(), Some(FIDOSEAL_AAGUID));
        policy.check_authenticator_aaguid(&FIDOSEAL_AAGUID).expect("fidoseal's AAGUID");
        // Debug never shows the key.
        let shown = format!("{ea:?}");
        assert!(!shown.to_lowercase().contains("secret") && shown.contains("certificates: 2"), "{shown}");

        let decision = policy.evaluate(&Request {
            rp_id: "IDP.example.com.",
            operation: Operation::MakeCredential,
            principal: &Principal::default(),
            ctap1: false,
        });
        assert_eq!(decision.settings.attestation, Some(Attestation::Enterprise));
        assert_eq!(decision.settings.attestation.map(|a| a.to_string()).as_deref(), Some("enterprise"));
    }
}

#[test]
fn both_pem_forms_of_one_key_are_the_same_key() {
    let dir = TempDir::new("ea-forms");
    let sec1 = key(&dir, "attestation-sec1.key", 0o600);
    let pkcs8 = key(&dir, "attestation-pkcs8.key", 0o400);
    let a = load(&section(&sec1, &[data("attestation.pem")])).unwrap();
    let b = load(&section(&pkcs8, &[data("attestation.pem")])).unwrap();
    let a = a.enterprise_attestation().unwrap().signing_key().verifying_key().to_owned();
    let b = b.enterprise_attestation().unwrap().signing_key().verifying_key().to_owned();
    assert_eq!(a, b);
}

#[test]
fn every_bad_key_or_certificate_is_refused_with_file_line_and_key() {
    let dir = TempDir::new("ea-bad");
    let good_key = key(&dir, "attestation-sec1.key", 0o600);
    let cases: Vec<(&str, PathBuf, Vec<PathBuf>, &str, &str)> = vec![
        (
            "a key for another certificate",
            key(&dir, "other.key", 0o600),
            vec![data("attestation.pem")],
            "enterprise_attestation.certificates",
            "is not for the key in",
        ),
        (
            "an RSA key",
            key(&dir, "rsa.key", 0o600),
            vec![data("attestation.pem")],
            "enterprise_attestation.key",
            "not a P-256 private key",
        ),
        (
            "a key readable by others",
            key(&dir, "attestation-pkcs8.key", 0o644),
            vec![data("attestation.pem")],
            "enterprise_attestation.key",
            "readable by group or others",
        ),
        (
            "a certificate as the key",
            {
                let text = std::fs::read_to_string(data("attestation.pem")).unwrap();
                write_mode(dir.path(), "cert-as-key.pem", &text, 0o600)
            },
            vec![data("attestation.pem")],
            "enterprise_attestation.key",
            "does not contain a PEM private key",
        ),
        (
            "a subject without OU",
            good_key.clone(),
            vec![data("no-ou.pem")],
            "enterprise_attestation.certificates",
            "OU = \"Authenticator Attestation\"",
        ),
        (
            "a CA as the attestation certificate",
            good_key.clone(),
            vec![data("ca-leaf.pem")],
            "enterprise_attestation.certificates",
            "must not be a CA",
        ),
        (
            "the chain in the wrong order",
            good_key.clone(),
            vec![data("root-ca.pem"), data("attestation.pem")],
            "enterprise_attestation.certificates",
            "not issued by the next one listed",
        ),
        (
            "a key as the certificate",
            good_key.clone(),
            vec![good_key.clone()],
            "enterprise_attestation.certificates",
            "does not contain a PEM certificate",
        ),
        (
            "a damaged certificate",
            good_key.clone(),
            vec![{
                // The base64 body cut short: PEM armour intact, DER broken.
                let text = std::fs::read_to_string(data("attestation.pem")).unwrap();
                let mut lines: Vec<&str> = text.lines().collect();
                lines.drain(3..6);
                let text = lines.join("\n") + "\n";
                write_mode(dir.path(), "damaged.pem", &text, 0o644)
            }],
            "enterprise_attestation.certificates",
            "is not a PEM X.509 certificate",
        ),
        (
            "a missing certificate",
            good_key.clone(),
            vec![dir.path().join("missing.pem")],
            "enterprise_attestation.certificates",
            "cannot read",
        ),
    ];
    for (what, key, certs, key_path, words) in cases {
        let lines = problems(&(section(&key, &certs) + ENTERPRISE_RULE));
        let line = if key_path.ends_with("key") { 3 } else { 4 };
        let prefix = format!("/p/50-ea.toml:{line}: {key_path}: ");
        assert!(
            lines.iter().any(|l| l.starts_with(&prefix) && l.contains(words)),
            "{what}: want {prefix}…{words}; got {lines:#?}"
        );
        // The rule that asked for it is refused too: no quiet downgrade.
        assert!(lines.iter().any(|l| l.contains("rule.attestation")), "{what}: {lines:#?}");
    }
}

#[test]
fn a_certificate_for_another_aaguid_is_refused_where_the_aaguid_is_known() {
    let dir = TempDir::new("ea-aaguid");
    let key = key(&dir, "attestation-sec1.key", 0o600);
    let policy = load(&section(&key, &[data("other-aaguid.pem"), data("root-ca.pem")])).expect("files are valid");
    let err = policy.check_authenticator_aaguid(&FIDOSEAL_AAGUID).expect_err("another AAGUID");
    let shown = err.to_string();
    assert!(shown.starts_with("/p/50-ea.toml:4: enterprise_attestation.certificates: "), "{shown}");
    assert!(shown.contains("00112233445566778899aabbccddeeff"), "{shown}");
    assert!(shown.contains("5a0e3c1f8b474d529e612cf07d13a846"), "{shown}");
}

#[test]
fn enterprise_goes_only_to_listed_rp_ids() {
    let dir = TempDir::new("ea-listed");
    let key = key(&dir, "attestation-sec1.key", 0o600);
    let base = section(&key, &[data("attestation.pem")]);
    for (rule_rp, why) in [
        ("\"other.example.com\"", "not listed"),
        ("\"*.example.com\"", "not listed"),
        ("\"*\"", "not listed"),
        ("\"idp.example.com\", \"evil.example\"", "not listed"),
    ] {
        let text = format!("{base}[[rule]]\nrp = [{rule_rp}]\naction = \"allow\"\nattestation = \"enterprise\"\n");
        let lines = problems(&text);
        assert!(
            lines.iter().any(|l| l.starts_with("/p/50-ea.toml:6: rule.rp: ") && l.contains(why)),
            "{rule_rp}: {lines:#?}"
        );
    }
    // A listed rp with its own rule: fine; and a rule for others without
    // enterprise is untouched by the list.
    let text = format!(
        "{base}[[rule]]\nrp = [\"login.example.org\"]\naction = \"allow\"\nattestation = \"enterprise\"\n\
         [[rule]]\nrp = [\"*.example.com\"]\naction = \"allow\"\nattestation = \"self\"\n"
    );
    let policy = load(&text).unwrap();
    let principal = Principal::default();
    let ask = |rp_id| {
        policy
            .evaluate(&Request { rp_id, operation: Operation::MakeCredential, principal: &principal, ctap1: false })
            .settings
            .attestation
    };
    assert_eq!(ask("login.example.org"), Some(Attestation::Enterprise));
    assert_eq!(ask("idp.example.com"), Some(Attestation::SelfAttestation));
    assert_eq!(ask("elsewhere.example"), None);
}

#[test]
fn a_later_file_replaces_the_section_whole() {
    let dir = TempDir::new("ea-later");
    let key = key(&dir, "attestation-sec1.key", 0o600);
    let first = section(&key, &[data("attestation.pem"), data("root-ca.pem")]);
    let second = section(&key, &[data("attestation.pem")]).replace("\"idp.example.com\", ", "");
    let policy = Policy::from_sources(&[("/p/10-a.toml", first.as_str()), ("/p/20-b.toml", second.as_str())]).unwrap();
    let ea = policy.enterprise_attestation().unwrap();
    assert_eq!(ea.rp_ids(), ["login.example.org".into()] as [Box<str>; 1]);
    assert_eq!(ea.certificates().len(), 1);
}

/// Enterprise attestation goes to the listed rp, never to a CTAP2 rp.id
/// that merely equals the SHA-256 of it (only U2F names rps by hash, and
/// U2F has no enterprise attestation).
#[test]
fn a_ctap2_rp_id_equal_to_the_hash_of_a_listed_rp_gets_no_enterprise_attestation() {
    use sha2::{Digest, Sha256};
    let dir = TempDir::new("ea-hash");
    let key = key(&dir, "attestation-sec1.key", 0o600);
    let text = format!("[default]\naction = \"deny\"\n{}{ENTERPRISE_RULE}", section(&key, &[data("attestation.pem")]));
    let policy = load(&text).unwrap();
    let principal = Principal::default();
    for name in ["idp.example.com", "https://idp.example.com"] {
        let hash: String = Sha256::digest(name.as_bytes()).iter().map(|b| format!("{b:02x}")).collect();
        let d = policy.evaluate(&Request {
            rp_id: &hash,
            operation: Operation::MakeCredential,
            principal: &principal,
            ctap1: false,
        });
        assert_eq!((d.action, d.settings.attestation), (fidoseal_policy::Action::Deny, None), "{name}");
    }
    let d = policy.evaluate(&Request {
        rp_id: "https://idp.example.com/app-id.json",
        operation: Operation::MakeCredential,
        principal: &principal,
        ctap1: false,
    });
    assert_eq!(d.settings.attestation, Some(Attestation::Enterprise), "an AppID URL is its host");
}
