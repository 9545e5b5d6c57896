//! Manager1: the device user's passkeys, status, and reset behind polkit.

use std::sync::Arc;

use fidoseal_ctap::platform::{Algorithm, CredentialStore, ResidentCredential, TransactionSignals};
use fidoseal_ctap::RequestContext;
use fidoseal_dbus::{Manager1Proxy, BUS_NAME, OBJECT_PATH};
use zbus::zvariant::OwnedValue;

use super::fakes::{Agent, Answer, Event, Polkit};
use super::{dbus_send, with_password_check, Harness, Options, OTHER_UID};

pub(super) fn passkey(id: u8, rp_id: &str, user: &str, created: u64) -> ResidentCredential {
    ResidentCredential {
        credential_id: vec![id; 16],
        rp_id: rp_id.into(),
        rp_name: Some(format!("{rp_id} site")),
        user_id: vec![id, 0xee],
        user_name: Some(user.into()),
        user_display_name: Some(format!("{user} display")),
        algorithm: Algorithm::Es256,
        key_handle: vec![9; 40],
        created,
        public_key_cose: vec![0xa0],
        extensions: fidoseal_ctap::platform::CredentialExtensions {
            cred_protect: 2,
            hmac_secret: true,
            ..Default::default()
        },
    }
}

fn get<T: TryFrom<OwnedValue>>(details: &fidoseal_dbus::Details, key: &str) -> Option<T> {
    T::try_from(details.get(key)?.try_clone().ok()?).ok()
}

/// The authenticator's own view: getInfo's clientPin option.
async fn client_pin_option(h: &Harness) -> bool {
    let authenticator = Arc::clone(&h.authenticator);
    tokio::task::spawn_blocking(move || {
        let signals = TransactionSignals::new();
        let ctx = RequestContext { now: std::time::Instant::now(), channel: 1, signals: &signals };
        let response = authenticator.lock().unwrap().process_cbor(&[0x04], &ctx);
        assert_eq!(response[0], 0);
        let info: ciborium::Value = ciborium::from_reader(&response[1..]).unwrap();
        let options = info.as_map().unwrap().iter().find(|(k, _)| k.as_integer() == Some(4.into())).unwrap().1.clone();
        options
            .as_map()
            .unwrap()
            .iter()
            .find(|(k, _)| k.as_text() == Some("clientPin"))
            .and_then(|(_, v)| v.as_bool())
            .unwrap()
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn the_device_user_manages_their_passkeys() {
    let h = with_password_check("passkeys", Options::default()).await;
    let _agent = Agent::registered(&h.bus, Answer::Method("password", "correct horse")).await;
    let mut store = h.store.clone();
    store.save(passkey(1, "old.example", "alice", 1)).unwrap();
    store.save(passkey(2, "new.example", "bob", 2)).unwrap();
    let me = h.bus.connect().await;
    let manager = Manager1Proxy::new(&me).await.unwrap();

    let list = manager.list_passkeys().await.unwrap();
    let id2 = "02".repeat(16);
    let id1 = "01".repeat(16);
    assert_eq!(
        list,
        [
            (id2.clone(), "new.example".into(), "bob".into(), "bob display".into()),
            (id1.clone(), "old.example".into(), "alice".into(), "alice display".into()),
        ]
    );

    let shown = manager.show_passkey(&id1).await.unwrap();
    assert_eq!(get::<String>(&shown, "rp_id").as_deref(), Some("old.example"));
    assert_eq!(get::<String>(&shown, "rp_name").as_deref(), Some("old.example site"));
    assert_eq!(get::<String>(&shown, "user_name").as_deref(), Some("alice"));
    assert_eq!(get::<Vec<u8>>(&shown, "user_id"), Some(vec![1, 0xee]));
    assert_eq!(get::<u32>(&shown, "cred_protect"), Some(2));
    assert_eq!(get::<bool>(&shown, "hmac_secret"), Some(true));
    assert_eq!(get::<bool>(&shown, "large_blob_key"), Some(false));

    manager.delete_passkey(&id1).await.unwrap();
    assert_eq!(store.all_credentials().unwrap().len(), 1);
    for missing in [id1.as_str(), "zz", ""] {
        let err = manager.delete_passkey(missing).await.unwrap_err();
        assert!(matches!(fidoseal_dbus::Error::from(err), fidoseal_dbus::Error::DoesNotExist(_)), "{missing:?}");
        let err = manager.show_passkey(missing).await.unwrap_err();
        assert!(matches!(fidoseal_dbus::Error::from(err), fidoseal_dbus::Error::DoesNotExist(_)), "{missing:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn other_users_cannot_see_or_delete_passkeys() {
    let h = Harness::start("passkeys-other", Options::default()).await;
    h.store.clone().save(passkey(1, "secret.example", "alice", 1)).unwrap();
    let id = "01".repeat(16);
    for (method, args) in [
        ("ListPasskeys", vec![]),
        ("ShowPasskey", vec![format!("string:{id}")]),
        ("DeletePasskey", vec![format!("string:{id}")]),
        ("Status", vec![]),
    ] {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (ok, output) = dbus_send(
            &h.bus.address,
            Some(OTHER_UID),
            BUS_NAME,
            OBJECT_PATH,
            &format!("org.fidoseal.Manager1.{method}"),
            &args,
        )
        .await;
        assert!(!ok && output.contains("org.fidoseal.Error.NotPermitted"), "{method}: {output}");
        assert!(!output.contains("secret.example"), "{method}: {output}");
    }
    assert_eq!(h.store.all_credentials().unwrap().len(), 1);

    // When the device is theirs, they may.
    let h = Harness::start("passkeys-nobody", Options { device_user: "nobody", ..Options::default() }).await;
    h.store.clone().save(passkey(1, "mine.example", "me", 1)).unwrap();
    let (ok, output) =
        dbus_send(&h.bus.address, Some(OTHER_UID), BUS_NAME, OBJECT_PATH, "org.fidoseal.Manager1.ListPasskeys", &[])
            .await;
    assert!(ok && output.contains("mine.example"), "{output}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn status_tells_the_state() {
    let h = Harness::start("status", Options::default()).await;
    h.store.clone().save(passkey(1, "a.example", "alice", 1)).unwrap();
    let me = h.bus.connect().await;
    let manager = Manager1Proxy::new(&me).await.unwrap();
    let status = manager.status().await.unwrap();
    assert_eq!(get::<String>(&status, "version").as_deref(), Some(env!("CARGO_PKG_VERSION")));
    assert_eq!(get::<String>(&status, "keystore").as_deref(), Some("software"));
    assert_eq!(get::<String>(&status, "prompt").as_deref(), Some("agent"));
    assert_eq!(get::<bool>(&status, "agent_registered"), Some(false));
    assert_eq!(get::<bool>(&status, "pin_set"), Some(false));
    assert_eq!(get::<bool>(&status, "uv_configured"), Some(false));
    assert_eq!(get::<u32>(&status, "passkeys"), Some(1));
    assert_eq!(get::<u32>(&status, "remaining_passkeys"), Some(7));
    assert_eq!(get::<u32>(&status, "policy_files"), Some(0));
    let _agent = Agent::registered(&h.bus, Answer::Allow).await;
    assert_eq!(get::<bool>(&manager.status().await.unwrap(), "agent_registered"), Some(true));
}

async fn reset_as_other_user(h: &Harness) -> (bool, String) {
    dbus_send(&h.bus.address, Some(OTHER_UID), BUS_NAME, OBJECT_PATH, "org.fidoseal.Manager1.Reset", &[]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn reset_needs_polkit() {
    // No polkit on the bus: refused.
    let h = Harness::start("reset-no-polkit", Options { pin_set: true, ..Options::default() }).await;
    h.store.clone().save(passkey(1, "a.example", "alice", 1)).unwrap();
    let (ok, output) = reset_as_other_user(&h).await;
    assert!(!ok && output.contains("org.fidoseal.Error.NotPermitted"), "{output}");

    // polkit says no: refused, nothing deleted.
    let polkit = Polkit::start(&h.bus, false).await;
    let (ok, output) = reset_as_other_user(&h).await;
    assert!(!ok && output.contains("org.fidoseal.Error.NotPermitted"), "{output}");
    assert_eq!(h.store.all_credentials().unwrap().len(), 1);
    assert!(h.store.load_state().pin.is_some());
    let checks = polkit.checks();
    assert_eq!(checks.len(), 1);
    assert_eq!(checks[0].subject_kind, "system-bus-name");
    assert!(checks[0].subject_name.starts_with(':'), "{checks:?}");
    assert_eq!(checks[0].action, "org.fidoseal.reset");
    assert_eq!(checks[0].flags, 1, "the caller's polkit agent may ask for a password");

    // polkit says yes: every credential and the PIN are gone, in the
    // store and in the authenticator.
    let h = Harness::start("reset-polkit-yes", Options { pin_set: true, ..Options::default() }).await;
    h.store.clone().save(passkey(1, "a.example", "alice", 1)).unwrap();
    assert!(client_pin_option(&h).await);
    let _polkit = Polkit::start(&h.bus, true).await;
    let (ok, output) = reset_as_other_user(&h).await;
    assert!(ok, "{output}");
    assert!(h.store.all_credentials().unwrap().is_empty());
    assert!(h.store.load_state().pin.is_none());
    assert!(!client_pin_option(&h).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn root_resets_without_polkit() {
    let h = Harness::start("reset-root", Options { pin_set: true, ..Options::default() }).await;
    h.store.clone().save(passkey(1, "a.example", "alice", 1)).unwrap();
    let me = h.bus.connect().await;
    Manager1Proxy::new(&me).await.unwrap().reset().await.unwrap();
    assert!(h.store.all_credentials().unwrap().is_empty());
    assert!(!client_pin_option(&h).await);
}

/// Per-user mode: each caller sees and manages their own device only;
/// root sees every device.
#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn per_user_callers_reach_their_own_device_only() {
    let h = Harness::start("per-user", Options { second_user: Some("nobody"), ..Options::default() }).await;
    let nobodys = h.second.as_ref().expect("nobody's device");
    h.store.clone().save(passkey(1, "root.example", "root-user", 1)).unwrap();
    nobodys.store.clone().save(passkey(2, "nobody.example", "nobody-user", 1)).unwrap();
    let call = |method: &'static str, args: Vec<String>| {
        let address = h.bus.address.clone();
        async move {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let method = format!("org.fidoseal.Manager1.{method}");
            dbus_send(&address, Some(OTHER_UID), BUS_NAME, OBJECT_PATH, &method, &args).await
        }
    };

    // nobody: their passkeys, their status, their device.
    let (ok, output) = call("ListPasskeys", Vec::new()).await;
    assert!(ok && output.contains("nobody.example") && !output.contains("root.example"), "{output}");
    let (ok, output) = call("Status", Vec::new()).await;
    assert!(ok && output.contains("\"nobody\""), "{output}");
    let (ok, output) = call("ListDevices", Vec::new()).await;
    assert!(ok && output.contains("\"nobody\"") && !output.contains("\"root\""), "{output}");
    assert!(output.contains("fidoseal-uid-65534"), "{output}");
    // Root's passkey is not theirs to see or delete.
    let root_id = hex::encode([1; 16]);
    let (ok, output) = call("ShowPasskey", vec![format!("string:{root_id}")]).await;
    assert!(!ok && output.contains("DoesNotExist"), "{output}");
    let (ok, output) = call("DeletePasskey", vec![format!("string:{root_id}")]).await;
    assert!(!ok && output.contains("DoesNotExist"), "{output}");
    assert_eq!(h.store.all_credentials().unwrap().len(), 1, "root's passkey stays");

    // root: every device; its own passkeys.
    let me = h.bus.connect().await;
    let manager = Manager1Proxy::new(&me).await.unwrap();
    let devices = manager.list_devices().await.unwrap();
    let users: Vec<String> = devices.iter().filter_map(|d| get::<String>(d, "user")).collect();
    assert_eq!(users, ["root", "nobody"]);
    let listed = manager.list_passkeys().await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].1, "root.example");
    assert_eq!(get::<String>(&manager.status().await.unwrap(), "device_mode").as_deref(), Some("per-user"));
}

fn error_of(err: zbus::Error) -> fidoseal_dbus::Error {
    fidoseal_dbus::Error::from(err)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn deleting_a_passkey_needs_the_users_verification() {
    let h = with_password_check("delete-verify", Options::default()).await;
    let mut store = h.store.clone();
    store.save(passkey(1, "bank.example", "alice", 1)).unwrap();
    let id = "01".repeat(16);
    let me = h.bus.connect().await;
    let manager = Manager1Proxy::new(&me).await.unwrap();

    // Nobody to verify the user (no agent): refused, nothing deleted.
    match error_of(manager.delete_passkey(&id).await.unwrap_err()) {
        fidoseal_dbus::Error::NotPermitted(message) => {
            assert!(message.contains("verification"), "{message}")
        }
        other => panic!("expected NotPermitted, got {other:?}"),
    }
    assert_eq!(store.all_credentials().unwrap().len(), 1);

    // The user says no: refused, nothing deleted.
    let agent = Agent::registered(&h.bus, Answer::Deny).await;
    assert!(matches!(error_of(manager.delete_passkey(&id).await.unwrap_err()), fidoseal_dbus::Error::Rejected(_)));
    assert_eq!(store.all_credentials().unwrap().len(), 1);
    drop(agent);
    h.wait_for_agent(false).await;

    // A wrong password: refused by PAM, nothing deleted, one uvRetry spent.
    let mut agent = Agent::registered(&h.bus, Answer::Method("password", "wrong horse")).await;
    assert!(matches!(error_of(manager.delete_passkey(&id).await.unwrap_err()), fidoseal_dbus::Error::Rejected(_)));
    assert_eq!(store.all_credentials().unwrap().len(), 1);
    assert_eq!(h.store.load_state().uv_retries, 7);
    // The agent was asked, through the built-in UV path, for this deletion.
    let Event::Verification(_, details, methods) = agent.next_event().await else {
        panic!("expected RequestVerification")
    };
    assert_eq!(methods, ["password"]);
    assert_eq!(get::<String>(&details, "action").as_deref(), Some("delete-passkey"));
    assert_eq!(get::<String>(&details, "rp_id").as_deref(), Some("bank.example"));
    assert_eq!(get::<String>(&details, "user").as_deref(), Some("alice"));
    drop(agent);
    h.wait_for_agent(false).await;

    // The right password: deleted, and the uvRetries are back.
    let _agent = Agent::registered(&h.bus, Answer::Method("password", "correct horse")).await;
    manager.delete_passkey(&id).await.expect("deleted after verification");
    assert!(store.all_credentials().unwrap().is_empty());
    assert_eq!(h.store.load_state().uv_retries, 8);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn deleting_needs_a_configured_verification_method() {
    // An agent, but no method to verify with (no PIN, no password, no finger).
    let h = Harness::start("delete-no-uv", Options { uv_methods: Vec::new(), ..Options::default() }).await;
    h.store.clone().save(passkey(1, "bank.example", "alice", 1)).unwrap();
    let mut agent = Agent::registered(&h.bus, Answer::Allow).await;
    let me = h.bus.connect().await;
    let manager = Manager1Proxy::new(&me).await.unwrap();
    let err = manager.delete_passkey(&"01".repeat(16)).await.unwrap_err();
    assert!(matches!(error_of(err), fidoseal_dbus::Error::NotPermitted(_)));
    assert_eq!(h.store.all_credentials().unwrap().len(), 1);
    // Not even a presence prompt stands in for verification.
    assert!(agent.drain(std::time::Duration::from_millis(200)).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn passkeys_the_policy_hides_from_credential_management_are_hidden_here() {
    let h = with_password_check("hidden", Options { hidden_rps: vec!["hidden.example"], ..Options::default() }).await;
    let _agent = Agent::registered(&h.bus, Answer::Method("password", "correct horse")).await;
    let mut store = h.store.clone();
    store.save(passkey(1, "hidden.example", "alice", 1)).unwrap();
    store.save(passkey(2, "shown.example", "bob", 2)).unwrap();
    let (hidden, shown) = ("01".repeat(16), "02".repeat(16));
    let me = h.bus.connect().await;
    let manager = Manager1Proxy::new(&me).await.unwrap();

    let list = manager.list_passkeys().await.unwrap();
    assert_eq!(list, [(shown.clone(), "shown.example".into(), "bob".into(), "bob display".into())]);
    let err = manager.show_passkey(&hidden).await.unwrap_err();
    assert!(matches!(error_of(err), fidoseal_dbus::Error::DoesNotExist(_)));
    let err = manager.delete_passkey(&hidden).await.unwrap_err();
    assert!(matches!(error_of(err), fidoseal_dbus::Error::DoesNotExist(_)));
    assert_eq!(store.all_credentials().unwrap().len(), 2);
    // Root sees what the device user sees: the filter is the policy's, not the caller's.
    let (ok, output) =
        dbus_send(&h.bus.address, None, BUS_NAME, OBJECT_PATH, "org.fidoseal.Manager1.ListPasskeys", &[]).await;
    assert!(ok && output.contains("shown.example") && !output.contains("hidden.example"), "{output}");
    manager.show_passkey(&shown).await.expect("a passkey the policy shows");
}
