//! fidosealctl's commands (crate fidoseal-ctl, as its binary runs them)
//! against the service on a test bus: the device user's own passkeys
//! listed, shown and deleted, JSON parsed, exit codes; another user
//! refused (the ctl run in a child process under setpriv).

use std::process::Command;

use fidoseal_ctap::platform::CredentialStore;
use fidoseal_ctl::clap::Parser as _;
use fidoseal_ctl::cli::Cli;
use fidoseal_ctl::CtlError;
use serde_json::Value as Json;

use super::fakes::{Agent, Answer};
use super::manager::passkey;
use super::{with_password_check, Harness, Options, OTHER_UID};

/// The child's entry: set when a test runs this binary again as another user.
const CHILD_BUS: &str = "FIDOSEAL_CTL_TEST_BUS";
const CHILD_ARGS: &str = "FIDOSEAL_CTL_TEST_ARGS";

/// Runs `fidosealctl ARGS` on the harness's bus from the blocking pool
/// (the ctl has a runtime of its own). Returns (exit code, stdout, stderr)
/// as the binary would.
async fn ctl(h: &Harness, args: &[&str]) -> (u8, String, String) {
    let address = h.bus.address.clone();
    let args: Vec<String> = std::iter::once("fidosealctl").chain(args.iter().copied()).map(String::from).collect();
    tokio::task::spawn_blocking(move || run_ctl(&address, &args)).await.unwrap()
}

fn run_ctl(address: &str, args: &[String]) -> (u8, String, String) {
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) => return (u8::try_from(e.exit_code()).unwrap_or(2), String::new(), e.to_string()),
    };
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let code = match fidoseal_ctl::run_on_bus(&cli, Some(address), &mut out, &mut err) {
        Ok(()) => 0,
        Err(e) => {
            err.extend_from_slice(format!("fidosealctl: {e}\n").as_bytes());
            e.exit_code()
        }
    };
    (code, String::from_utf8(out).unwrap(), String::from_utf8(err).unwrap())
}

fn json(text: &str) -> Json {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn fidosealctl_lists_shows_and_deletes_the_users_own_passkeys() {
    let h = with_password_check("ctl-passkeys", Options::default()).await;
    let mut store = h.store.clone();
    store.save(passkey(1, "old.example", "alice", 1)).unwrap();
    store.save(passkey(2, "new.example", "bob", 2)).unwrap();
    let (id1, id2) = ("01".repeat(16), "02".repeat(16));

    let (code, out, err) = ctl(&h, &["passkeys", "list", "--json"]).await;
    assert_eq!(code, 0, "{err}");
    let list = json(&out);
    let list = list.as_array().unwrap();
    assert_eq!(list.len(), 2);
    assert_eq!(list[0]["id"], id2.as_str(), "newest first: {out}");
    assert_eq!(list[0]["rp_id"], "new.example");
    assert_eq!(list[1]["user_name"], "alice");
    assert_eq!(list[1]["user_display_name"], "alice display");
    assert_eq!(list[1]["audit_tag"], fidoseal_ctap::audit::credential_tag(&[1; 16]).as_str());

    let (code, out, _) = ctl(&h, &["passkeys", "list", "--rp", "old.example"]).await;
    assert_eq!(code, 0);
    assert!(out.contains("old.example") && !out.contains("new.example"), "{out}");

    let (code, out, err) = ctl(&h, &["passkeys", "show", &id1.to_uppercase(), "--json"]).await;
    assert_eq!(code, 0, "{err}");
    let shown = json(&out);
    assert_eq!(shown["rp_id"], "old.example");
    assert_eq!(shown["user_id"], "01ee");
    assert_eq!(shown["cred_protect"], 2);
    assert_eq!(shown["hmac_secret"], true);

    let (code, out, err) = ctl(&h, &["status", "--json"]).await;
    assert_eq!(code, 0, "{err}");
    let status = json(&out);
    assert_eq!(status["passkeys"], 2);
    assert_eq!(status["keystore"], "software");
    assert_eq!(status["pin_set"], false);
    assert_eq!(status["pin_retries"], 8);
    assert_eq!(status["policy_generation"], 1, "{out}");
    assert!(status.get("tpm_manufacturer").is_none(), "no TPM on the software store: {out}");
    let (code, out, _) = ctl(&h, &["status"]).await;
    assert_eq!(code, 0);
    assert!(out.contains("key store:             software\n"), "{out}");

    // The device this user may see: their own (the harness's one device).
    let (code, out, err) = ctl(&h, &["devices", "--json"]).await;
    assert_eq!(code, 0, "{err}");
    let devices = json(&out);
    let devices = devices.as_array().unwrap();
    assert_eq!(devices.len(), 1, "{out}");
    assert!(devices[0].get("agent_registered").is_some_and(Json::is_boolean), "{out}");
    let (code, out, _) = ctl(&h, &["devices"]).await;
    assert_eq!(code, 0);
    assert!(out.starts_with("USER") && out.lines().count() == 2, "{out}");

    // Deleting needs the user's verification through their agent: with no
    // agent to ask, refused with the way out, nothing gone.
    let (code, _, err) = ctl(&h, &["passkeys", "delete", &id1]).await;
    assert_eq!(code, 1, "{err}");
    assert!(err.starts_with("fidosealctl: not permitted: ") && err.contains("verif"), "{err}");
    assert_eq!(store.all_credentials().unwrap().len(), 2);

    let _agent = Agent::registered(&h.bus, Answer::Method("password", "correct horse")).await;
    let (code, out, err) = ctl(&h, &["passkeys", "delete", &id1]).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("deleted: old.example (alice)"), "{out}");
    assert_eq!(store.all_credentials().unwrap().len(), 1);

    // Gone, malformed: exit 1 and 2, one line each, nothing else deleted.
    let (code, _, err) = ctl(&h, &["passkeys", "delete", &id1]).await;
    assert_eq!(code, 1, "{err}");
    assert!(err.starts_with("fidosealctl: no such passkey: "), "{err}");
    let (code, _, err) = ctl(&h, &["passkeys", "show", "nothex"]).await;
    assert_eq!(code, 2, "{err}");
    let (code, _, _) = ctl(&h, &["passkeys", "delete"]).await;
    assert_eq!(code, 2);
    assert_eq!(store.all_credentials().unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn fidosealctl_as_another_user_is_refused() {
    let h = Harness::start("ctl-other", Options::default()).await;
    h.store.clone().save(passkey(1, "secret.example", "alice", 1)).unwrap();
    let id = "01".repeat(16);
    for args in [vec!["passkeys", "list"], vec!["passkeys", "delete", id.as_str()], vec!["status", "--json"]] {
        let address = h.bus.address.clone();
        let joined = args.join("\u{1f}");
        let output = tokio::task::spawn_blocking(move || {
            Command::new("setpriv")
                .args([&format!("--reuid={OTHER_UID}"), &format!("--regid={OTHER_UID}"), "--clear-groups"])
                .arg(std::env::current_exe().unwrap())
                .args(["--exact", "dbus_service::tests::ctl::child_fidosealctl", "--ignored", "--nocapture"])
                .env(CHILD_BUS, address)
                .env(CHILD_ARGS, joined)
                .output()
                .expect("setpriv runs this test binary")
        })
        .await
        .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{args:?}: {stdout}{stderr}");
        assert!(
            stderr.contains("fidosealctl: not permitted: uid 65534 is not the device's user"),
            "{args:?}: {stderr}"
        );
        assert!(!stdout.contains("secret.example") && !stderr.contains("secret.example"), "{args:?}");
    }
    assert_eq!(h.store.all_credentials().unwrap().len(), 1);
}

/// Not a test of its own: the other user's fidosealctl run by
/// `fidosealctl_as_another_user_is_refused` (exits with the ctl's code).
#[test]
#[ignore = "run by fidosealctl_as_another_user_is_refused as another user"]
fn child_fidosealctl() {
    let (Ok(address), Ok(args)) = (std::env::var(CHILD_BUS), std::env::var(CHILD_ARGS)) else {
        panic!("run only by fidosealctl_as_another_user_is_refused");
    };
    let args: Vec<String> = std::iter::once("fidosealctl").chain(args.split('\u{1f}')).map(String::from).collect();
    let (code, out, err) = run_ctl(&address, &args);
    print!("{out}");
    eprint!("{err}");
    std::process::exit(i32::from(code));
}

/// A deletion the daemon refuses for want of verification reads as such.
#[test]
fn a_refused_verification_says_what_to_do() {
    let e = CtlError::NotVerified("the user said no".into());
    assert_eq!(e.exit_code(), 1);
    assert!(e.to_string().contains("your verification through fidoseal-agent"), "{e}");
}
