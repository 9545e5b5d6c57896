//! Manager1's TPM boot-state administration (`[keystore] pcrs`) against a
//! swtpm-backed store: root only; Status tells the boot state; a wrong
//! recovery key is refused, the right one makes the keys work again.

use std::sync::{Arc, Mutex};

use fidoseal_ctap::platform::{Algorithm, KeyStore};
use fidoseal_dbus::{Manager1Proxy, BUS_NAME, OBJECT_PATH};

use super::{dbus_send, Harness, Options, OTHER_UID};
use crate::tpm::swtpm::{temp_dir, Swtpm};
use crate::tpm::{TpmKeyStore, TpmSettings};

fn get<T: TryFrom<zbus::zvariant::OwnedValue>>(details: &fidoseal_dbus::Details, key: &str) -> Option<T> {
    details.get(key).and_then(|v| v.try_clone().ok()).and_then(|v| T::try_from(v).ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn root_approves_a_changed_boot_state_with_the_recovery_key_over_manager1() {
    let tpm = Swtpm::start();
    let state = temp_dir("dbus-pcr");
    let settings = TpmSettings { tcti: tpm.tcti(), owner_auth_file: None };
    let store = TpmKeyStore::open_bound(&settings, &state, &[7]).unwrap();
    let shared = Arc::new(Mutex::new(store));
    let key = shared.lock().unwrap().generate(Algorithm::Es256).unwrap();
    let recovery = std::fs::read_to_string(state.join("tpm-recovery-key")).unwrap();
    let recovery = recovery.lines().next().unwrap().to_owned();
    let h = Harness::start("dbus-pcr", Options { tpm: Some(Arc::clone(&shared)), ..Options::default() }).await;
    let me = h.bus.connect().await;
    let manager = Manager1Proxy::new(&me).await.unwrap();

    let status = manager.status().await.unwrap();
    assert_eq!(get::<String>(&status, "tpm_pcrs").as_deref(), Some("[7]"));
    assert_eq!(get::<bool>(&status, "tpm_boot_state_approved"), Some(true));
    assert!(get::<String>(&status, "tpm_recovery_key_warning").unwrap().contains("tpm-recovery-key"));

    // Not for other users.
    for (method, args) in [
        ("org.fidoseal.Manager1.AllowBootChange", vec![]),
        ("org.fidoseal.Manager1.ApproveBootState", vec![format!("string:{recovery}")]),
    ] {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (ok, output) = dbus_send(&h.bus.address, Some(OTHER_UID), BUS_NAME, OBJECT_PATH, method, &args).await;
        assert!(!ok && output.contains("org.fidoseal.Error.NotPermitted"), "{method}: {output}");
    }

    shared.lock().unwrap().extend_pcr_for_test();
    let status = manager.status().await.unwrap();
    assert_eq!(get::<bool>(&status, "tpm_boot_state_approved"), Some(false));
    assert!(get::<String>(&status, "tpm_boot_state").unwrap().contains("the boot state changed: PCR 7 is "));
    assert!(manager.allow_boot_change().await.is_err(), "no window from an unapproved state");
    assert!(shared.lock().unwrap().sign(Algorithm::Es256, &key.key_handle, b"m").is_err());

    let err = manager.approve_boot_state("0000-0000-0000-0000-0000-0000-0000-0000").await.unwrap_err();
    assert!(err.to_string().contains("wrong recovery key"), "{err}");
    let approved = manager.approve_boot_state(&recovery).await.unwrap();
    assert_eq!(get::<bool>(&approved, "tpm_boot_state_approved"), Some(true));
    assert!(shared.lock().unwrap().sign(Algorithm::Es256, &key.key_handle, b"m").is_ok());

    manager.allow_boot_change().await.unwrap();
    assert_eq!(get::<bool>(&manager.status().await.unwrap(), "tpm_update_window_open"), Some(true));
    drop(h);
    drop(shared);
    std::fs::remove_dir_all(state).unwrap();
}

/// A start in an unapproved boot state (main.rs): Status says fidoseald
/// waits for the approval, with the recovery command, and ApproveBootState
/// is what ends the wait (the store's approval turns true).
#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn status_says_the_start_waits_for_the_boot_state_and_approve_boot_state_ends_the_wait() {
    let tpm = Swtpm::start();
    let state = temp_dir("dbus-pcr-wait");
    let settings = TpmSettings { tcti: tpm.tcti(), owner_auth_file: None };
    let mut store = TpmKeyStore::open_bound(&settings, &state, &[7]).unwrap();
    store.extend_pcr_for_test();
    drop(store);
    let store = TpmKeyStore::open_bound(&settings, &state, &[7]).unwrap();
    let mut approval = store.approval();
    assert!(!*approval.borrow(), "restarted in an unapproved boot state");
    let shared = Arc::new(Mutex::new(store));
    let recovery = std::fs::read_to_string(state.join("tpm-recovery-key")).unwrap();
    let recovery = recovery.lines().next().unwrap().to_owned();
    let h = Harness::start("dbus-pcr-wait", Options { tpm: Some(Arc::clone(&shared)), ..Options::default() }).await;
    h.waiting_for_boot_state.store(true, std::sync::atomic::Ordering::SeqCst);
    let me = h.bus.connect().await;
    let manager = Manager1Proxy::new(&me).await.unwrap();

    let status = manager.status().await.unwrap();
    let start = get::<String>(&status, "start").unwrap();
    assert!(start.contains("waiting for the boot state to be approved"), "{start}");
    assert!(start.contains("fidosealctl tpm approve-boot-state"), "{start}");
    assert_eq!(get::<bool>(&status, "tpm_boot_state_approved"), Some(false));
    assert!(get::<u32>(&status, "pin_retries").is_none() && get::<u32>(&status, "passkeys").is_none(), "no device yet");

    manager.approve_boot_state(&recovery).await.unwrap();
    tokio::time::timeout(std::time::Duration::from_secs(5), approval.wait_for(|approved| *approved))
        .await
        .expect("the approval ends the wait")
        .unwrap();
    drop(h);
    drop(shared);
    std::fs::remove_dir_all(state).unwrap();
}
