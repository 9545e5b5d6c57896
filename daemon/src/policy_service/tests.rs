use std::os::unix::fs::PermissionsExt;
use std::sync::atomic::{AtomicBool, Ordering};

use super::*;

struct TempDir(tempfile::TempDir);

impl TempDir {
    fn new(tag: &str) -> Self {
        let dir = tempfile::Builder::new().prefix(&format!("fidoseald-policy-{tag}-")).tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        TempDir(dir)
    }

    fn path(&self) -> &Path {
        self.0.path()
    }

    fn write(&self, name: &str, text: &str) {
        write_policy(self.path(), name, text);
    }
}

/// Writes atomically, as packages and careful editors do.
fn write_policy(dir: &Path, name: &str, text: &str) {
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, text).unwrap();
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::rename(&tmp, dir.join(name)).unwrap();
}

fn request(rp_id: &str) -> PolicyRequest<'_> {
    PolicyRequest { operation: Operation::MakeCredential, rp_id, discoverable: false, ctap1: false }
}

const ALLOW_A: &str = "[default]\naction = \"deny\"\n[[rule]]\nrp = [\"a.example\"]\naction = \"allow\"\n";
const ALLOW_B: &str = "[default]\naction = \"deny\"\n[[rule]]\nrp = [\"b.example\"]\naction = \"allow\"\n\
                       require_user_verification = true\nmin_cred_protect = 3\nattestation = \"none\"\n\
                       prompt_timeout = 5\nmessage = \"B\"\nmin_pin_length = 8\n";

#[test]
fn verdicts_carry_every_setting_and_the_rule() {
    let dir = TempDir::new("verdict");
    dir.write("50-b.toml", ALLOW_B);
    let service = PolicyService::load(vec![dir.path().to_path_buf()], None).unwrap();
    let handle = service.decision();
    let v = handle.decide(&request("B.example."));
    assert_eq!(
        v,
        PolicyVerdict {
            allow: true,
            require_user_verification: true,
            allow_discoverable: true,
            min_cred_protect: 3,
            attestation: Some(AttestationPolicy::None),
            prompt_timeout: Some(Duration::from_secs(5)),
            prompt_message: Some("B".into()),
            rule: format!("{}:3", dir.path().join("50-b.toml").display()),
        }
    );
    assert_eq!(handle.min_pin_length(), Some(8));
    let v = handle.decide(&request("c.example"));
    assert_eq!(v, PolicyVerdict::deny(format!("{}:2", dir.path().join("50-b.toml").display())));
    let v = handle.decide(&PolicyRequest { operation: Operation::Reset, rp_id: "", discoverable: false, ctap1: false });
    assert!(v.allow);
}

#[test]
fn an_invalid_policy_at_start_is_an_error_naming_file_and_line() {
    let dir = TempDir::new("start");
    dir.write("10-bad.toml", "[default]\naction = \"deny\"\nbogus = true\n");
    let err = PolicyService::load(vec![dir.path().to_path_buf()], None).err().expect("refused");
    assert!(
        err.contains(&format!("{}:3: default.bogus: unknown field", dir.path().join("10-bad.toml").display())),
        "{err}"
    );
}

#[test]
fn no_dirs_or_missing_dirs_allow_everything() {
    let service = PolicyService::load(Vec::new(), None).unwrap();
    assert!(service.decision().decide(&request("any.example")).allow);
    let service = PolicyService::load(vec![PathBuf::from("/nonexistent/fidoseal/policy.d")], None).unwrap();
    assert!(service.decision().decide(&request("any.example")).allow);
}

#[test]
fn the_device_user_and_groups_decide_user_rules() {
    let dir = TempDir::new("user");
    dir.write(
        "10.toml",
        "[default]\naction = \"deny\"\n[[rule]]\nrp = [\"*\"]\ngroups = [\"root\"]\naction = \"allow\"\n",
    );
    let root = PolicyService::load(vec![dir.path().to_path_buf()], Some("root".into())).unwrap();
    assert!(root.decision().decide(&request("a.example")).allow);
    let nobody = PolicyService::load(vec![dir.path().to_path_buf()], None).unwrap();
    assert!(!nobody.decision().decide(&request("a.example")).allow);
    let unknown = PolicyService::load(vec![dir.path().to_path_buf()], Some("no-such-user-fidoseal".into())).unwrap();
    assert!(!unknown.decision().decide(&request("a.example")).allow);
}

#[test]
fn each_users_device_is_judged_for_its_owner() {
    let dir = TempDir::new("per-user");
    dir.write(
        "10.toml",
        "[default]\naction = \"deny\"\n[[rule]]\nrp = [\"*\"]\ngroups = [\"root\"]\naction = \"allow\"\n\
         min_pin_length = 9\n",
    );
    // [device] user names someone else (per-user mode: the heir of an old state).
    let service = PolicyService::load(vec![dir.path().to_path_buf()], Some("no-such-user-fidoseal".into())).unwrap();
    let root = service.decision_for("root");
    let stranger = service.decision_for("no-such-user-fidoseal-2");
    assert!(root.decide(&request("a.example")).allow);
    assert_eq!(root.user().as_deref(), Some("root"));
    assert_eq!(root.min_pin_length(), Some(9));
    assert!(!stranger.decide(&request("a.example")).allow);
    assert_eq!(stranger.user().as_deref(), Some("no-such-user-fidoseal-2"));
    assert_eq!(stranger.min_pin_length(), None);
    assert!(!service.decision().decide(&request("a.example")).allow);
}

#[test]
fn reload_keeps_the_last_good_policy_until_the_files_are_fixed() {
    let dir = TempDir::new("reload");
    dir.write("50-policy.toml", ALLOW_A);
    let service = PolicyService::load(vec![dir.path().to_path_buf()], None).unwrap();
    let handle = service.decision();
    assert!(handle.decide(&request("a.example")).allow);
    assert_eq!(service.generation(), 1);

    // A broken file: refused, the old policy stays.
    dir.write("60-broken.toml", "[[rule]]\nrp = [\"*bad.example\"]\naction = \"allow\"\n");
    let err = service.reload("test").unwrap_err();
    assert!(err.contains("60-broken.toml:2: rule.rp:"), "{err}");
    assert_eq!(service.generation(), 1);
    assert!(handle.decide(&request("a.example")).allow);
    assert!(!handle.decide(&request("b.example")).allow);

    // Fixed: the new policy takes effect for the next request.
    dir.write("60-broken.toml", "");
    dir.write("50-policy.toml", ALLOW_B);
    service.reload("test").unwrap();
    assert_eq!(service.generation(), 2);
    assert!(!handle.decide(&request("a.example")).allow);
    assert!(handle.decide(&request("b.example")).allow);
    assert_eq!(handle.min_pin_length(), Some(8));
}

/// `[enterprise_attestation]` with the policy crate's test key and
/// chain; `leaf` picks the attestation certificate.
fn enterprise_section(dir: &TempDir, leaf: &str) -> String {
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("../policy/tests/data/enterprise");
    let key = dir.path().join("ea.key");
    std::fs::copy(data.join("attestation-sec1.key"), &key).unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    format!(
        "[enterprise_attestation]\nrp_ids = [\"idp.example\"]\nkey = {:?}\ncertificates = [{:?}, {:?}]\n",
        key.display().to_string(),
        data.join(leaf).display().to_string(),
        data.join("root-ca.pem").display().to_string()
    )
}

#[test]
fn enterprise_rules_carry_the_key_and_a_reload_without_it_drops_the_capability() {
    let keys = TempDir::new("ea-keys");
    let dir = TempDir::new("ea");
    let rule = "[[rule]]\nrp = [\"idp.example\"]\naction = \"allow\"\nattestation = \"enterprise\"\n";
    dir.write("50-ea.toml", &(enterprise_section(&keys, "attestation.pem") + rule));
    let service = PolicyService::load(vec![dir.path().to_path_buf()], None).unwrap();
    let handle = service.decision();
    assert!(handle.enterprise_attestation_capable());
    match handle.decide(&request("idp.example")).attestation {
        Some(AttestationPolicy::Enterprise(key)) => assert_eq!(key.certificates().len(), 2),
        other => panic!("want the enterprise key, got {other:?}"),
    }
    assert_eq!(handle.decide(&request("other.example")).attestation, None);

    // A certificate for another AAGUID: refused on reload, the last good stays.
    dir.write("50-ea.toml", &(enterprise_section(&keys, "other-aaguid.pem") + rule));
    let err = service.reload("test").unwrap_err();
    assert!(err.contains("50-ea.toml:4: enterprise_attestation.certificates: ") && err.contains("AAGUID"), "{err}");
    assert!(handle.enterprise_attestation_capable());

    // The section removed: no longer capable ("ep" leaves getInfo).
    dir.write("50-ea.toml", ALLOW_A);
    service.reload("test").unwrap();
    assert!(!handle.enterprise_attestation_capable());

    // At start, the same AAGUID mismatch stops the daemon.
    dir.write("50-ea.toml", &(enterprise_section(&keys, "other-aaguid.pem") + rule));
    let err = PolicyService::load(vec![dir.path().to_path_buf()], None).err().expect("refused");
    assert!(err.contains("AAGUID"), "{err}");
}

fn wait_for(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn file_changes_and_sighup_reload_the_policy() {
    let tmp = TempDir::new("watch");
    // The directory does not exist yet: its parent is watched for it.
    let dir = tmp.path().join("policy.d");
    let service = PolicyService::load(vec![dir.clone()], None).unwrap();
    let handle = service.decision();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async { service.watch() }).unwrap();
    assert!(handle.decide(&request("a.example")).allow, "no policy yet");

    std::fs::create_dir(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    write_policy(&dir, "50-a.toml", ALLOW_A);
    wait_for("the new file to be loaded", || !handle.decide(&request("c.example")).allow);
    let loaded = service.generation();

    // A broken edit: logged and refused; the last good policy stays.
    write_policy(&dir, "50-a.toml", "[default]\naction = \"deny\"\n[[rule]]\nrp = []\naction = \"allow\"\n");
    std::thread::sleep(DEBOUNCE * 3);
    assert_eq!(service.generation(), loaded);
    assert!(handle.decide(&request("a.example")).allow);

    // Fixed: picked up.
    write_policy(&dir, "50-a.toml", ALLOW_B);
    wait_for("the fixed file to be loaded", || handle.decide(&request("b.example")).allow);
    assert!(!handle.decide(&request("a.example")).allow);

    // Files that are not policy (editor temporaries) do not reload.
    let before = service.generation();
    std::fs::write(dir.join(".50-a.toml.swp"), "x").unwrap();
    std::fs::write(dir.join("notes.txt"), "x").unwrap();
    std::thread::sleep(DEBOUNCE * 3);
    assert_eq!(service.generation(), before);

    // SIGHUP reloads even without a change. The runtime must be polled for
    // the signal task to run: keep it busy while waiting.
    runtime.block_on(async {
        // SAFETY: raising a signal this process handles (the tokio handler is installed by watch()).
        unsafe { libc::raise(libc::SIGHUP) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while service.generation() == before {
            assert!(Instant::now() < deadline, "SIGHUP did not reload");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
}

/// A whole authenticator (software keys, memory store, approving
/// prompt) driven with CTAP2 makeCredential, its policy from files.
mod through_the_authenticator {
    use std::time::Instant;

    use ciborium::value::Value;
    use fidoseal_ctap::memory_store::MemoryCredentialStore;
    use fidoseal_ctap::platform::{Secret32, TransactionSignals};
    use fidoseal_ctap::software_keystore::SoftwareKeyStore;
    use fidoseal_ctap::{Authenticator, AuthenticatorConfig, Platform, RequestContext};

    use super::*;

    const OK: u8 = 0x00;
    const OPERATION_DENIED: u8 = 0x27;
    const PIN_NOT_SET: u8 = 0x35;
    const PUAT_REQUIRED: u8 = 0x36;

    fn authenticator(service: &PolicyService) -> Authenticator {
        let platform = Platform {
            keystore: Box::new(SoftwareKeyStore::new(Secret32([7; 32]))),
            credentials: Box::new(MemoryCredentialStore::new(10)),
            prompt: Box::new(crate::prompt::AlwaysApprove),
            policy: Box::new(service.decision()),
        };
        Authenticator::new(AuthenticatorConfig::default(), platform, Instant::now())
    }

    fn make_credential(authenticator: &mut Authenticator, rp_id: &str, discoverable: bool) -> u8 {
        let text = |s: &str| Value::Text(s.into());
        let mut params = vec![
            (Value::Integer(1.into()), Value::Bytes(vec![0x11; 32])),
            (Value::Integer(2.into()), Value::Map(vec![(text("id"), text(rp_id))])),
            (
                Value::Integer(3.into()),
                Value::Map(vec![(text("id"), Value::Bytes(vec![1, 2, 3])), (text("name"), text("alice"))]),
            ),
            (
                Value::Integer(4.into()),
                Value::Array(vec![Value::Map(vec![
                    (text("alg"), Value::Integer((-7).into())),
                    (text("type"), text("public-key")),
                ])]),
            ),
        ];
        if discoverable {
            params.push((Value::Integer(7.into()), Value::Map(vec![(text("rk"), Value::Bool(true))])));
        }
        let mut message = vec![0x01];
        ciborium::ser::into_writer(&Value::Map(params), &mut message).unwrap();
        let signals = TransactionSignals::new();
        let ctx = RequestContext { now: Instant::now(), channel: 1, signals: &signals };
        authenticator.process_cbor(&message, &ctx)[0]
    }

    #[test]
    fn the_policy_decides_make_credential_and_a_reload_takes_effect_on_the_same_device() {
        let dir = TempDir::new("ctap");
        dir.write(
            "50.toml",
            "[default]\naction = \"deny\"\n\
             [[rule]]\nrp = [\"allowed.example\"]\naction = \"allow\"\n\
             [[rule]]\nrp = [\"uv.example\"]\naction = \"allow\"\nrequire_user_verification = true\n\
             [[rule]]\nrp = [\"no-passkeys.example\"]\naction = \"allow\"\nallow_discoverable = false\n",
        );
        let service = PolicyService::load(vec![dir.path().to_path_buf()], None).unwrap();
        let mut device = authenticator(&service);
        assert_eq!(make_credential(&mut device, "allowed.example", false), OK);
        assert_eq!(make_credential(&mut device, "Allowed.Example.", false), OK);
        assert_eq!(make_credential(&mut device, "denied.example", false), OPERATION_DENIED);
        // UV is required and the request has none: the client must come back with a PIN token.
        assert!([PUAT_REQUIRED, PIN_NOT_SET].contains(&make_credential(&mut device, "uv.example", false)));
        assert_eq!(make_credential(&mut device, "no-passkeys.example", false), OK);
        assert_eq!(make_credential(&mut device, "no-passkeys.example", true), OPERATION_DENIED);

        // The administrator turns allowed.example off: the same device obeys.
        dir.write(
            "50.toml",
            "[default]\naction = \"allow\"\n[[rule]]\nrp = [\"allowed.example\"]\naction = \"deny\"\n",
        );
        service.reload("test").unwrap();
        assert_eq!(make_credential(&mut device, "allowed.example", false), OPERATION_DENIED);
        assert_eq!(make_credential(&mut device, "denied.example", false), OK);
    }

    /// U2F_REGISTER; returns the status word.
    fn u2f_register(authenticator: &mut Authenticator, app_id: &str) -> u16 {
        use sha2::{Digest, Sha256};
        let mut apdu = vec![0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 64];
        apdu.extend_from_slice(&[0x22; 32]);
        apdu.extend_from_slice(&Sha256::digest(app_id.as_bytes()));
        apdu.extend_from_slice(&[0x00, 0x00]);
        let signals = TransactionSignals::new();
        let ctx = RequestContext { now: Instant::now(), channel: 1, signals: &signals };
        let response = authenticator.process_apdu(&apdu, &ctx);
        u16::from_be_bytes([response[response.len() - 2], response[response.len() - 1]])
    }

    #[test]
    fn u2f_requests_are_matched_by_the_hash_of_exact_rp_ids() {
        const NO_ERROR: u16 = 0x9000;
        const CONDITIONS_NOT_SATISFIED: u16 = 0x6985;
        let dir = TempDir::new("u2f");
        dir.write(
            "50.toml",
            "[default]\naction = \"deny\"\n\
             [[rule]]\nrp = [\"allowed.example\", \"legacy.example\"]\naction = \"allow\"\n\
             [[rule]]\nrp = [\"*.corp.example\"]\naction = \"allow\"\n",
        );
        let service = PolicyService::load(vec![dir.path().to_path_buf()], None).unwrap();
        let mut device = authenticator(&service);
        assert_eq!(u2f_register(&mut device, "allowed.example"), NO_ERROR);
        assert_eq!(u2f_register(&mut device, "https://legacy.example"), NO_ERROR);
        assert_eq!(u2f_register(&mut device, "denied.example"), CONDITIONS_NOT_SATISFIED);
        // A wildcard cannot be matched from a hash: refused, not guessed.
        assert_eq!(u2f_register(&mut device, "a.corp.example"), CONDITIONS_NOT_SATISFIED);
        // Only U2F is matched by hash: a CTAP2 rp.id that is the hash of
        // an allowed rp is an unknown rp, refused by the default.
        let hash: String = {
            use sha2::{Digest, Sha256};
            Sha256::digest(b"allowed.example").iter().map(|b| format!("{b:02x}")).collect()
        };
        assert_eq!(make_credential(&mut device, &hash, false), OPERATION_DENIED);
    }
}

#[test]
fn requests_during_reloads_see_one_whole_policy() {
    // Two policies whose every verdict field differs: a verdict that mixes
    // them would show.
    let dir = TempDir::new("race");
    let a = "[default]\naction = \"allow\"\nrequire_user_verification = false\nallow_discoverable = true\n\
             min_cred_protect = 1\nattestation = \"self\"\nprompt_timeout = 10\nmessage = \"policy A\"\nmin_pin_length = 4\n";
    let b = "\n[default]\naction = \"allow\"\nrequire_user_verification = true\nallow_discoverable = false\n\
             min_cred_protect = 3\nattestation = \"none\"\nprompt_timeout = 20\nmessage = \"policy B\"\nmin_pin_length = 9\n";
    dir.write("50.toml", a);
    let service = PolicyService::load(vec![dir.path().to_path_buf()], None).unwrap();
    let policy_a = Policy::load_dirs(&[dir.path()]).unwrap();
    dir.write("50.toml", b);
    let policy_b = Policy::load_dirs(&[dir.path()]).unwrap();
    let expected_a = PolicyHandle::verdict(
        &snapshot(policy_a, Principal::default(), 0),
        &Principal::default(),
        &request("x.example"),
    );
    let expected_b = PolicyHandle::verdict(
        &snapshot(policy_b, Principal::default(), 0),
        &Principal::default(),
        &request("x.example"),
    );
    assert_ne!(expected_a, expected_b);

    let stop = Arc::new(AtomicBool::new(false));
    let readers: Vec<_> = (0..4)
        .map(|_| {
            let handle = service.decision();
            let (expected_a, expected_b, stop) = (expected_a.clone(), expected_b.clone(), Arc::clone(&stop));
            std::thread::spawn(move || {
                let (mut saw_a, mut saw_b) = (0u32, 0u32);
                while !stop.load(Ordering::Relaxed) {
                    let v = handle.decide(&request("x.example"));
                    if v == expected_a {
                        saw_a += 1;
                    } else if v == expected_b {
                        saw_b += 1;
                    } else {
                        panic!("a verdict from no single policy: {v:?}");
                    }
                }
                (saw_a, saw_b)
            })
        })
        .collect();
    // Swap back and forth, through the same path a reload takes.
    for i in 0..400 {
        dir.write("50.toml", if i % 2 == 0 { a } else { b });
        service.reload("race test").unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    let (mut total_a, mut total_b) = (0, 0);
    for reader in readers {
        let (saw_a, saw_b) = reader.join().expect("no mixed verdict");
        total_a += saw_a;
        total_b += saw_b;
    }
    assert!(total_a > 0 && total_b > 0, "both policies were seen ({total_a} A, {total_b} B)");
    assert_eq!(service.generation(), 401);
}
