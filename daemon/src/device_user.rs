//! The device's user (`[device] user`) as a uid, for the D-Bus checks
//! "is this caller the device's user?".
//!
//! The uid comes from the system's user database (getpwnam_r through NSS:
//! /etc/passwd, but also LDAP or sssd), which may block for as long as a
//! directory server takes to answer. D-Bus handlers run on the daemon's
//! one runtime worker, so a lookup there would let any local user stall
//! every prompt by calling Manager1. The name is
//! therefore resolved at start (before the runtime) and again on SIGHUP
//! and, while it is unknown, at most every [`RETRY_UNKNOWN`] — always on a
//! thread of its own. Handlers only read the last answer.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

/// How a user name becomes a uid: the system's user database
/// ([`system_uid_of`]), or a test's.
pub type UserLookup = Arc<dyn Fn(&str) -> Option<u32> + Send + Sync>;

/// A device user not found is looked up again on a caller's behalf at most
/// this often (it may appear once sssd is up, after the daemon started).
const RETRY_UNKNOWN: Duration = Duration::from_secs(10);

/// The device's user as last resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceUid {
    /// `[device] user` is not set: nobody is the device's user.
    NotConfigured,
    /// The user database did not know the name at the last lookup.
    Unknown,
    Known(u32),
}

/// The device's user of one device (one Manager1): its name and the uid
/// last resolved for it.
pub struct DeviceUser {
    name: Option<String>,
    lookup: UserLookup,
    uid: RwLock<DeviceUid>,
    /// A background lookup is running (one at a time).
    resolving: AtomicBool,
    /// When the last background lookup for an unknown user started.
    last_retry: Mutex<Option<Instant>>,
}

impl DeviceUser {
    /// The user `name` of the system's user database, looked up now. Blocks
    /// for as long as NSS takes: call at start, before the runtime serves.
    pub fn resolve(name: Option<String>) -> Arc<Self> {
        Self::resolve_with(name, Arc::new(system_uid_of))
    }

    /// As [`DeviceUser::resolve`], with another user database (tests).
    pub fn resolve_with(name: Option<String>, lookup: UserLookup) -> Arc<Self> {
        let user = Arc::new(Self {
            name,
            lookup,
            uid: RwLock::new(DeviceUid::NotConfigured),
            resolving: AtomicBool::new(false),
            last_retry: Mutex::new(None),
        });
        user.resolve_now("start");
        user
    }

    pub fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }

    /// The uid as last resolved. Never looks anything up.
    pub fn uid(&self) -> DeviceUid {
        *self.uid.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether `uid` is the device's user. If the user was unknown, a new
    /// lookup starts in the background (at most every [`RETRY_UNKNOWN`]), so
    /// a user the directory did not know at start is found without a
    /// restart; this call does not wait for it.
    pub fn is(self: &Arc<Self>, uid: u32) -> bool {
        match self.uid() {
            DeviceUid::Known(device_uid) => device_uid == uid,
            DeviceUid::NotConfigured => false,
            DeviceUid::Unknown => {
                let mut last = self.last_retry.lock().unwrap_or_else(PoisonError::into_inner);
                if last.is_none_or(|at| at.elapsed() >= RETRY_UNKNOWN) {
                    *last = Some(Instant::now());
                    drop(last);
                    self.resolve_in_background("the device user was unknown");
                }
                false
            }
        }
    }

    /// Looks the name up again on a thread of its own; callers meanwhile
    /// see the previous answer. A lookup already running is not doubled.
    pub fn resolve_in_background(self: &Arc<Self>, reason: &'static str) {
        if self.resolving.swap(true, Ordering::AcqRel) {
            return;
        }
        let user = Arc::clone(self);
        let spawned = std::thread::Builder::new().name("device-user".into()).spawn(move || {
            user.resolve_now(reason);
            user.resolving.store(false, Ordering::Release);
        });
        if let Err(e) = spawned {
            self.resolving.store(false, Ordering::Release);
            tracing::warn!(error = %e, reason, "cannot start a thread to look the device user up again");
        }
    }

    /// Looks the name up again on every SIGHUP (with the policy reload).
    /// Call from inside the tokio runtime.
    pub fn resolve_on_hangup(self: &Arc<Self>) -> Result<(), String> {
        let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            .map_err(|e| format!("cannot handle SIGHUP: {e}"))?;
        let user = Arc::clone(self);
        tokio::spawn(async move {
            while hangup.recv().await.is_some() {
                user.resolve_in_background("SIGHUP");
            }
        });
        Ok(())
    }

    /// Blocks for the lookup; the answer replaces the last one whole.
    fn resolve_now(&self, reason: &str) {
        let Some(name) = self.name.as_deref() else {
            *self.uid.write().unwrap_or_else(PoisonError::into_inner) = DeviceUid::NotConfigured;
            return;
        };
        let resolved = match (self.lookup)(name) {
            Some(uid) => DeviceUid::Known(uid),
            None => DeviceUid::Unknown,
        };
        let previous = std::mem::replace(&mut *self.uid.write().unwrap_or_else(PoisonError::into_inner), resolved);
        match resolved {
            DeviceUid::Known(uid) if previous != resolved => {
                tracing::info!(user = name, uid, reason, "device user resolved")
            }
            DeviceUid::Unknown if previous != resolved => tracing::warn!(
                user = name,
                reason,
                "the device user is not in the user database: nobody can register an agent or manage passkeys \
                 until it is (looked up again on SIGHUP, and when someone asks)"
            ),
            _ => tracing::debug!(user = name, reason, uid = ?resolved, "device user looked up again"),
        }
    }
}

/// Whose a device is, as the handlers and the prompt check it without a
/// lookup: single mode's `[device] user` as last resolved, or per-user
/// mode's uid, which logind gave.
#[derive(Clone)]
pub enum DeviceOwner {
    Configured(Arc<DeviceUser>),
    Uid(u32),
}

impl std::fmt::Debug for DeviceOwner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Configured(user) => f.debug_tuple("Configured").field(&user.name()).field(&user.uid()).finish(),
            Self::Uid(uid) => f.debug_tuple("Uid").field(uid).finish(),
        }
    }
}

impl DeviceOwner {
    /// Whether `uid` is the owner (see [`DeviceUser::is`]).
    pub fn is(&self, uid: u32) -> bool {
        match self {
            Self::Configured(user) => user.is(uid),
            Self::Uid(owner) => *owner == uid,
        }
    }
}

/// The uid of a user name, from the system's user database. Blocks for as
/// long as NSS takes: never call it on the runtime.
pub fn system_uid_of(user: &str) -> Option<u32> {
    // getpwnam_r with a growing buffer; an NSS error reads as unknown.
    let entry = nix::unistd::User::from_name(user).ok()??;
    (entry.name == user).then_some(entry.uid.as_raw())
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, AtomicUsize};

    use super::*;

    #[test]
    fn uids_of_users() {
        assert_eq!(system_uid_of("root"), Some(0));
        assert_eq!(system_uid_of("fidoseal-no-such-user"), None);
        assert_eq!(system_uid_of("ro\0ot"), None);
    }

    fn wait_for(what: &str, condition: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !condition() {
            assert!(Instant::now() < deadline, "never: {what}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    #[test]
    fn resolved_once_then_only_read() {
        let lookups = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&lookups);
        let user = DeviceUser::resolve_with(
            Some("alice".into()),
            Arc::new(move |name: &str| {
                counted.fetch_add(1, Ordering::SeqCst);
                (name == "alice").then_some(1000)
            }),
        );
        assert_eq!(user.name(), Some("alice"));
        assert_eq!(user.uid(), DeviceUid::Known(1000));
        assert!(user.is(1000) && !user.is(0) && !user.is(1001));
        assert_eq!(lookups.load(Ordering::SeqCst), 1, "one lookup, at start");

        let nobody = DeviceUser::resolve_with(None, Arc::new(|_: &str| panic!("no name, no lookup")));
        assert_eq!(nobody.uid(), DeviceUid::NotConfigured);
        assert!(!nobody.is(0));
    }

    #[test]
    fn a_lookup_again_replaces_the_uid_and_never_blocks_readers() {
        let uid = Arc::new(AtomicU32::new(1000));
        let slow = Arc::new(AtomicBool::new(false));
        let (u, s) = (Arc::clone(&uid), Arc::clone(&slow));
        let user = DeviceUser::resolve_with(
            Some("alice".into()),
            Arc::new(move |_: &str| {
                if s.load(Ordering::SeqCst) {
                    std::thread::sleep(Duration::from_millis(500));
                }
                Some(u.load(Ordering::SeqCst))
            }),
        );
        slow.store(true, Ordering::SeqCst);
        uid.store(1001, Ordering::SeqCst);
        let started = Instant::now();
        user.resolve_in_background("test");
        // The old answer holds while the directory is slow...
        assert!(user.is(1000));
        assert!(started.elapsed() < Duration::from_millis(250), "a reader waited for the lookup");
        // ...and the new one replaces it when it comes.
        wait_for("the new uid", || user.uid() == DeviceUid::Known(1001));
    }

    #[test]
    fn an_unknown_user_is_looked_up_again_when_asked_at_most_every_ten_seconds() {
        let lookups = Arc::new(AtomicUsize::new(0));
        let exists = Arc::new(AtomicBool::new(false));
        let (l, e) = (Arc::clone(&lookups), Arc::clone(&exists));
        let user = DeviceUser::resolve_with(
            Some("late".into()),
            Arc::new(move |_: &str| {
                l.fetch_add(1, Ordering::SeqCst);
                e.load(Ordering::SeqCst).then_some(1500)
            }),
        );
        assert_eq!(user.uid(), DeviceUid::Unknown);
        // sssd came up: the first caller is refused, and starts a lookup.
        exists.store(true, Ordering::SeqCst);
        assert!(!user.is(1500));
        wait_for("the user found", || user.uid() == DeviceUid::Known(1500));
        assert!(user.is(1500));
        assert_eq!(lookups.load(Ordering::SeqCst), 2);

        // A user that stays unknown: callers start at most one lookup per interval.
        let lookups = Arc::new(AtomicUsize::new(0));
        let l = Arc::clone(&lookups);
        let user = DeviceUser::resolve_with(
            Some("never".into()),
            Arc::new(move |_: &str| {
                l.fetch_add(1, Ordering::SeqCst);
                None
            }),
        );
        for _ in 0..100 {
            assert!(!user.is(0));
        }
        wait_for("the one retry", || lookups.load(Ordering::SeqCst) == 2);
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(lookups.load(Ordering::SeqCst), 2, "100 refused calls, one lookup");
    }
}
