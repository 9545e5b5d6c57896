//! The device's user is looked up in the user database (NSS: files, LDAP,
//! sssd) at start and on reload, never inside a D-Bus handler: the
//! handlers run on the daemon's one runtime worker, and a lookup that
//! hangs there would hang every prompt with it.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fidoseal_ctap::platform::PromptOutcome;
use fidoseal_dbus::{Manager1Proxy, BUS_NAME, OBJECT_PATH};

use super::fakes::{Agent, Answer};
use super::{dbus_send, presence, signals, Ask, Harness, Options, OTHER_UID};
use crate::device_user::UserLookup;

/// A user database the test controls: it counts lookups, can be made as
/// slow as an LDAP server that stopped answering, and can change its mind.
#[derive(Clone, Default)]
struct UserDatabase {
    lookups: Arc<AtomicUsize>,
    slow: Arc<AtomicBool>,
    /// The device user's uid is OTHER_UID instead of 0.
    moved: Arc<AtomicBool>,
}

const SLOW_LOOKUP: Duration = Duration::from_secs(3);
const DEVICE_USER: &str = "fidoseal-test-device-user";

impl UserDatabase {
    fn lookup(&self) -> UserLookup {
        let db = self.clone();
        Arc::new(move |name: &str| {
            db.lookups.fetch_add(1, Ordering::SeqCst);
            if db.slow.load(Ordering::SeqCst) {
                std::thread::sleep(SLOW_LOOKUP);
            }
            (name == DEVICE_USER).then(|| if db.moved.load(Ordering::SeqCst) { OTHER_UID } else { 0 })
        })
    }

    fn lookups(&self) -> usize {
        self.lookups.load(Ordering::SeqCst)
    }
}

fn options(db: &UserDatabase) -> Options {
    Options { device_user: DEVICE_USER, user_lookup: Some(db.lookup()), ..Options::default() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn handlers_never_wait_for_the_user_database() {
    let db = UserDatabase::default();
    let h = Harness::start("nss-slow", options(&db)).await;
    db.slow.store(true, Ordering::SeqCst);
    let lookups = db.lookups();
    let started = Instant::now();

    // Manager1 as the device user and as another user, RegisterAgent, and
    // a prompt through the registered agent: none of them looks anyone up.
    let me = h.bus.connect().await;
    Manager1Proxy::new(&me).await.unwrap().status().await.expect("Status");
    let (ok, output) =
        dbus_send(&h.bus.address, Some(OTHER_UID), BUS_NAME, OBJECT_PATH, "org.fidoseal.Manager1.Status", &[]).await;
    assert!(!ok && output.contains("org.fidoseal.Error.NotPermitted"), "{output}");
    let _agent = Agent::registered(&h.bus, Answer::Allow).await;
    assert_eq!(presence(&h.prompt, Ask::default(), signals()).await, PromptOutcome::Approved);

    let took = started.elapsed();
    assert_eq!(db.lookups(), lookups, "a D-Bus handler looked the device user up");
    assert!(took < SLOW_LOOKUP, "the calls took {took:?}: they waited for the user database");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn the_uid_resolved_at_start_decides() {
    // The database says uid 65534 for the device user (a name the system
    // does not know): that user may manage the key, root's agent may not
    // register.
    let db = UserDatabase::default();
    db.moved.store(true, Ordering::SeqCst);
    let h = Harness::start("nss-resolved", options(&db)).await;
    let (ok, output) =
        dbus_send(&h.bus.address, Some(OTHER_UID), BUS_NAME, OBJECT_PATH, "org.fidoseal.Manager1.ListPasskeys", &[])
            .await;
    assert!(ok, "{output}");
    let agent = Agent::start(&h.bus, Answer::Allow).await;
    let err = agent.register().await.expect_err("root is not the device user");
    assert!(matches!(fidoseal_dbus::Error::from(err), fidoseal_dbus::Error::NotPermitted(_)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn sighup_looks_the_user_up_again_off_the_runtime() {
    let db = UserDatabase::default();
    let h = Harness::start("nss-sighup", options(&db)).await;
    h.device_user.resolve_on_hangup().unwrap();
    // The directory now says 65534 for the device user, and says it slowly.
    db.moved.store(true, Ordering::SeqCst);
    db.slow.store(true, Ordering::SeqCst);
    let lookups = db.lookups();
    // SAFETY: raise(3) only sends a signal; tokio's handler for SIGHUP is
    // installed above, so the default action (exit) cannot happen.
    unsafe { libc::raise(libc::SIGHUP) };

    // While it looks, the handlers answer at once, with the uid they had.
    let started = Instant::now();
    let agent = Agent::start(&h.bus, Answer::Allow).await;
    agent.register().await.expect("root is still the device user meanwhile");
    assert!(started.elapsed() < SLOW_LOOKUP, "RegisterAgent waited {:?}", started.elapsed());

    // Once the answer is in, it decides.
    let deadline = Instant::now() + SLOW_LOOKUP * 3;
    while h.device_user.uid() != crate::device_user::DeviceUid::Known(OTHER_UID) {
        assert!(Instant::now() < deadline, "SIGHUP did not look the user up again");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(db.lookups(), lookups + 1, "one lookup for one SIGHUP");
    let (ok, output) =
        dbus_send(&h.bus.address, Some(OTHER_UID), BUS_NAME, OBJECT_PATH, "org.fidoseal.Manager1.ListPasskeys", &[])
            .await;
    assert!(ok, "{output}");
}
