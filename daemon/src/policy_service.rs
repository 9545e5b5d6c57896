//! The enterprise policy in the daemon (docs/policy.md).
//!
//! - At start the policy directories of `[policy] dirs` are loaded; an
//!   invalid policy stops the daemon with its errors (fail closed).
//! - The authenticator asks [`PolicyHandle`], which evaluates each request
//!   against one snapshot of the current policy: an `Arc` taken under a
//!   read lock, so a request sees the old or the new policy, never a mix.
//! - SIGHUP, and any change in the directories (inotify, debounced by
//!   200 ms), reload the policy. A new valid policy replaces the old one
//!   whole, for the next request; an invalid one is refused with a log line
//!   per problem (`file:line: key: message`) and the last good policy stays.
//!   Every reload is logged.
//! - The device's user (`[device] user`) and their groups are resolved at
//!   start and at each reload; without a user, rules with `users` or
//!   `groups` never match.

use std::collections::HashMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use fidoseal_ctap::audit::{AuditDecision, AuditEvent, AuditKind};
use fidoseal_ctap::authenticator::FIDOSEAL_AAGUID;
use fidoseal_ctap::platform::{
    AttestationPolicy, EnterpriseAttestationKey, Operation, PolicyDecision, PolicyRequest, PolicyVerdict,
};
use fidoseal_policy::{resolve_principal, Action, Attestation, Policy, PolicyError, Principal, Request};
use inotify::{EventMask, Inotify, WatchDescriptor, WatchMask, Watches};

use crate::config::Config;

/// Quiet time after the last file event before reloading.
const DEBOUNCE: Duration = Duration::from_millis(200);
/// A directory that never stops changing is still reloaded this often.
const DEBOUNCE_MAX: Duration = Duration::from_secs(2);

/// One policy and everything derived from it, swapped as a whole.
struct Snapshot {
    policy: Policy,
    principal: Principal,
    min_pin_length: Option<u8>,
    /// `[enterprise_attestation]`'s key and chain, for verdicts.
    enterprise: Option<Arc<EnterpriseAttestationKey>>,
    generation: u64,
}

struct Shared {
    dirs: Vec<PathBuf>,
    user: Option<String>,
    current: RwLock<Arc<Snapshot>>,
    /// One reload at a time, so a slow older load never replaces a newer one.
    reloading: Mutex<()>,
}

impl Shared {
    fn snapshot(&self) -> Arc<Snapshot> {
        // A panic elsewhere cannot leave an Arc half-written: use it.
        Arc::clone(&self.current.read().unwrap_or_else(PoisonError::into_inner))
    }
}

/// The daemon's policy: loads, reloads and hands out [`PolicyHandle`]s.
#[derive(Clone)]
pub struct PolicyService {
    shared: Arc<Shared>,
}

impl PolicyService {
    /// Loads the policy of `[policy] dirs` for the user of `[device] user`.
    /// An invalid policy is an error: the daemon does not start.
    pub fn start(config: &Config) -> Result<Self, String> {
        Self::load(config.policy.dirs.clone(), config.device.user.clone())
    }

    pub fn load(dirs: Vec<PathBuf>, user: Option<String>) -> Result<Self, String> {
        if dirs.is_empty() {
            tracing::warn!("[policy] dirs is empty: no policy, every relying party may use the key");
        }
        let principal = principal_for(user.as_deref());
        let policy = load_policy(&dirs).map_err(|e| {
            for diagnostic in &e.diagnostics {
                tracing::error!(error = %diagnostic, "invalid policy");
            }
            format!("invalid policy, not starting (fix it, then check with `fidosealctl policy check`):\n{e}")
        })?;
        let snapshot = snapshot(policy, principal, 1);
        log_loaded(&snapshot, &dirs, "start");
        Ok(Self {
            shared: Arc::new(Shared {
                dirs,
                user,
                current: RwLock::new(Arc::new(snapshot)),
                reloading: Mutex::new(()),
            }),
        })
    }

    /// What the authenticator asks.
    pub fn decision(&self) -> PolicyHandle {
        PolicyHandle { shared: Arc::clone(&self.shared), principal: None }
    }

    /// What the authenticator of `user`'s own device asks (per-user mode):
    /// rules with `users` and `groups` match that user, whoever
    /// `[device] user` is. Their groups are read now, once per device.
    pub fn decision_for(&self, user: &str) -> PolicyHandle {
        PolicyHandle { shared: Arc::clone(&self.shared), principal: Some(Arc::new(principal_for(Some(user)))) }
    }

    /// Reloads from the directories. On error the current policy stays and
    /// each problem is logged.
    pub fn reload(&self, reason: &str) -> Result<(), String> {
        let _one_at_a_time = self.shared.reloading.lock().unwrap_or_else(PoisonError::into_inner);
        match load_policy(&self.shared.dirs) {
            Ok(policy) => {
                let principal = principal_for(self.shared.user.as_deref());
                let snapshot = self.install(policy, principal);
                log_loaded(&snapshot, &self.shared.dirs, reason);
                crate::audit_log::write(
                    &AuditEvent::new(AuditKind::PolicyReloaded, AuditDecision::Allow)
                        .user(self.shared.user.clone())
                        .rule(format!("generation {}", snapshot.generation))
                        .reason(reason),
                );
                Ok(())
            }
            Err(e) => {
                let kept = self.shared.snapshot().generation;
                crate::audit_log::write(
                    &AuditEvent::new(AuditKind::PolicyReloaded, AuditDecision::Deny)
                        .user(self.shared.user.clone())
                        .rule(format!("generation {kept} kept"))
                        .reason(format!("{reason}: {} problem(s), the last good policy stays", e.diagnostics.len())),
                );
                for diagnostic in &e.diagnostics {
                    tracing::error!(
                        reason,
                        error = %diagnostic,
                        kept_generation = kept,
                        "policy reload refused; keeping the last good policy"
                    );
                }
                Err(e.to_string())
            }
        }
    }

    /// Replaces the current policy whole.
    fn install(&self, policy: Policy, principal: Principal) -> Arc<Snapshot> {
        let mut current = self.shared.current.write().unwrap_or_else(PoisonError::into_inner);
        let next = Arc::new(snapshot(policy, principal, current.generation + 1));
        *current = Arc::clone(&next);
        next
    }

    /// The generation of the current policy: 1 at start, +1 per reload that took.
    pub fn generation(&self) -> u64 {
        self.shared.snapshot().generation
    }

    /// Starts reloading on SIGHUP and when the directories change. Call
    /// from inside the tokio runtime (SIGHUP is a tokio signal stream); the
    /// inotify reader and the reloader are two small threads.
    pub fn watch(&self) -> Result<(), String> {
        let (triggers, trigger_rx) = mpsc::channel::<Trigger>();
        let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            .map_err(|e| format!("cannot handle SIGHUP: {e}"))?;
        let on_hangup = triggers.clone();
        tokio::spawn(async move {
            while hangup.recv().await.is_some() {
                if on_hangup.send(Trigger::Hangup).is_err() {
                    break;
                }
            }
        });
        // Without inotify (out of instances or watches) SIGHUP still reloads.
        let mut watcher = match DirWatcher::new(&self.shared.dirs) {
            Ok(watcher) => {
                let filters = Arc::clone(&watcher.filters);
                let mut inotify = watcher.inotify;
                std::thread::Builder::new()
                    .name("policy-inotify".into())
                    .spawn(move || read_events(&mut inotify, &filters, &triggers))
                    .map_err(|e| format!("cannot start the policy watcher: {e}"))?;
                Some((watcher.watches, watcher.filters))
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot watch the policy directories; only SIGHUP reloads the policy");
                None
            }
        };
        let service = self.clone();
        std::thread::Builder::new()
            .name("policy-reload".into())
            .spawn(move || {
                while let Some(reason) = next_reload(&trigger_rx) {
                    // Directories may have appeared or gone: watch what exists now.
                    if let Some((watches, filters)) = &mut watcher {
                        rewatch(watches, filters, &service.shared.dirs);
                    }
                    let _ = service.reload(reason);
                }
            })
            .map_err(|e| format!("cannot start the policy reloader: {e}"))?;
        tracing::info!(dirs = ?self.shared.dirs, "policy: reloading on SIGHUP and on changes in the policy directories");
        Ok(())
    }
}

/// The policy files, and what only the authenticator can check: that an
/// enterprise attestation certificate names this authenticator's AAGUID.
fn load_policy(dirs: &[PathBuf]) -> Result<Policy, PolicyError> {
    let policy = Policy::load_dirs(dirs)?;
    policy.check_authenticator_aaguid(&FIDOSEAL_AAGUID)?;
    Ok(policy)
}

fn snapshot(policy: Policy, principal: Principal, generation: u64) -> Snapshot {
    let min_pin_length = policy.min_pin_length(&principal).map(|(n, _)| n);
    // The core's copy of the key, made once per policy.
    let enterprise = policy
        .enterprise_attestation()
        .map(|e| Arc::new(EnterpriseAttestationKey::new(e.signing_key().clone(), e.certificates().to_vec())));
    Snapshot { policy, principal, min_pin_length, enterprise, generation }
}

fn principal_for(user: Option<&str>) -> Principal {
    let Some(user) = user else { return Principal::default() };
    resolve_principal(user).unwrap_or_else(|e| {
        tracing::warn!(user, error = %e, "policy: cannot resolve the device user's groups; matching `users` rules by name only");
        Principal::user(user, Vec::<String>::new())
    })
}

fn log_loaded(snapshot: &Snapshot, dirs: &[PathBuf], reason: &str) {
    let policy = &snapshot.policy;
    let default = policy.default_rule();
    tracing::info!(
        reason,
        generation = snapshot.generation,
        dirs = ?dirs,
        files = policy.files().len(),
        rules = policy.rules().len(),
        default = %default.action,
        default_rule = %default.id,
        user = snapshot.principal.user.as_deref().unwrap_or("-"),
        groups = ?snapshot.principal.groups,
        min_pin_length = snapshot.min_pin_length,
        enterprise_attestation_rp_ids = ?policy.enterprise_rp_ids(),
        "policy loaded"
    );
}

/// The [`PolicyDecision`] the authenticator holds.
pub struct PolicyHandle {
    shared: Arc<Shared>,
    /// The device's owner, when not `[device] user` (per-user mode).
    principal: Option<Arc<Principal>>,
}

impl PolicyHandle {
    fn principal<'a>(&'a self, snapshot: &'a Snapshot) -> &'a Principal {
        self.principal.as_deref().unwrap_or(&snapshot.principal)
    }

    fn verdict(snapshot: &Snapshot, principal: &Principal, request: &PolicyRequest<'_>) -> PolicyVerdict {
        let operation = match request.operation {
            Operation::MakeCredential => fidoseal_policy::Operation::MakeCredential,
            Operation::GetAssertion => fidoseal_policy::Operation::GetAssertion,
            // authenticatorReset is not a relying party's request; policy
            // files do not govern it (yet).
            Operation::Reset => return PolicyVerdict::allow("policy: reset is not governed by policy files"),
        };
        let decision =
            snapshot.policy.evaluate(&Request { rp_id: request.rp_id, operation, principal, ctap1: request.ctap1 });
        if decision.action == Action::Deny {
            return PolicyVerdict::deny(decision.rule_id);
        }
        let s = decision.settings;
        PolicyVerdict {
            allow: true,
            require_user_verification: s.require_user_verification,
            allow_discoverable: s.allow_discoverable,
            min_cred_protect: s.min_cred_protect,
            attestation: s.attestation.and_then(|a| match a {
                Attestation::None => Some(AttestationPolicy::None),
                Attestation::SelfAttestation => Some(AttestationPolicy::SelfAttestation),
                Attestation::Machine => Some(AttestationPolicy::Machine),
                // A valid policy has the key whenever a rule says enterprise.
                Attestation::Enterprise => snapshot.enterprise.clone().map(AttestationPolicy::Enterprise),
            }),
            prompt_timeout: s.prompt_timeout,
            prompt_message: s.message.as_deref().map(String::from),
            rule: decision.rule_id.to_string(),
        }
    }
}

impl PolicyDecision for PolicyHandle {
    fn decide(&self, request: &PolicyRequest<'_>) -> PolicyVerdict {
        let snapshot = self.shared.snapshot();
        let principal = self.principal(&snapshot);
        let verdict = Self::verdict(&snapshot, principal, request);
        // The core logs every decision at info; this adds who and which policy.
        tracing::debug!(
            rp_id = request.rp_id,
            operation = ?request.operation,
            user = principal.user.as_deref().unwrap_or("-"),
            decision = if verdict.allow { "allow" } else { "deny" },
            rule = %verdict.rule,
            generation = snapshot.generation,
            "policy evaluated"
        );
        verdict
    }

    fn min_pin_length(&self) -> Option<u8> {
        let snapshot = self.shared.snapshot();
        match &self.principal {
            Some(principal) => snapshot.policy.min_pin_length(principal).map(|(n, _)| n),
            None => snapshot.min_pin_length,
        }
    }

    fn user(&self) -> Option<String> {
        let snapshot = self.shared.snapshot();
        self.principal(&snapshot).user.clone()
    }

    fn enterprise_attestation_capable(&self) -> bool {
        self.shared.snapshot().enterprise.is_some()
    }
}

// ---- watching the directories ----

enum Trigger {
    Hangup,
    Files,
}

/// Blocks for the next trigger; a file change waits until the directory
/// has been quiet for [`DEBOUNCE`]. `None` when every sender is gone.
fn next_reload(triggers: &mpsc::Receiver<Trigger>) -> Option<&'static str> {
    match triggers.recv().ok()? {
        Trigger::Hangup => Some("SIGHUP"),
        Trigger::Files => {
            let start = Instant::now();
            loop {
                match triggers.recv_timeout(DEBOUNCE) {
                    Ok(Trigger::Hangup) => return Some("SIGHUP"),
                    Ok(Trigger::Files) if start.elapsed() < DEBOUNCE_MAX => continue,
                    Ok(Trigger::Files) | Err(RecvTimeoutError::Timeout) => return Some("files changed"),
                    Err(RecvTimeoutError::Disconnected) => return Some("files changed"),
                }
            }
        }
    }
}

/// What a watch reports on: every `*.toml` of a policy directory, or, on an
/// ancestor of a directory that does not exist yet, only the one child on
/// the way to it (so that creating /etc/fidoseal/policy.d is noticed
/// without reloading for every file created in /etc).
type Filters = Arc<Mutex<HashMap<WatchDescriptor, Option<OsString>>>>;

struct DirWatcher {
    inotify: Inotify,
    watches: Watches,
    filters: Filters,
}

// MASK_ADD: one directory can be both a policy directory and the ancestor
// of another; its watch then reports both kinds of events.
const DIR_EVENTS: WatchMask = WatchMask::MASK_ADD
    .union(WatchMask::CLOSE_WRITE)
    .union(WatchMask::MOVED_TO)
    .union(WatchMask::MOVED_FROM)
    .union(WatchMask::CREATE)
    .union(WatchMask::DELETE)
    .union(WatchMask::ATTRIB)
    .union(WatchMask::DELETE_SELF)
    .union(WatchMask::MOVE_SELF);
const ANCESTOR_EVENTS: WatchMask = WatchMask::MASK_ADD
    .union(WatchMask::CREATE)
    .union(WatchMask::MOVED_TO)
    .union(WatchMask::DELETE_SELF)
    .union(WatchMask::MOVE_SELF);

impl DirWatcher {
    fn new(dirs: &[PathBuf]) -> std::io::Result<Self> {
        let inotify = Inotify::init()?;
        let mut watches = inotify.watches();
        let filters: Filters = Arc::default();
        rewatch(&mut watches, &filters, dirs);
        Ok(Self { inotify, watches, filters })
    }
}

/// Watches each policy directory that exists, and for each that does not,
/// its nearest existing ancestor.
fn rewatch(watches: &mut Watches, filters: &Filters, dirs: &[PathBuf]) {
    let mut filters = filters.lock().unwrap_or_else(PoisonError::into_inner);
    for dir in dirs {
        if dir.is_dir() {
            match watches.add(dir, DIR_EVENTS) {
                Ok(wd) => {
                    filters.insert(wd, None);
                }
                Err(e) => {
                    tracing::warn!(dir = %dir.display(), error = %e, "cannot watch a policy directory; SIGHUP still reloads")
                }
            }
            continue;
        }
        let mut child: &Path = dir;
        while let Some(parent) = child.parent() {
            if parent.is_dir() {
                if let (Ok(wd), Some(name)) = (watches.add(parent, ANCESTOR_EVENTS), child.file_name()) {
                    // Kept unless the same directory is already watched whole.
                    filters.entry(wd).or_insert_with(|| Some(name.to_os_string()));
                }
                break;
            }
            child = parent;
        }
    }
}

fn read_events(inotify: &mut Inotify, filters: &Filters, triggers: &mpsc::Sender<Trigger>) {
    let mut buffer = [0u8; 4096];
    loop {
        let events = match inotify.read_events_blocking(&mut buffer) {
            Ok(events) => events,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                tracing::error!(error = %e, "policy watcher stopped; SIGHUP still reloads");
                return;
            }
        };
        let mut relevant = false;
        {
            let mut filters = filters.lock().unwrap_or_else(PoisonError::into_inner);
            for event in events {
                if event.mask.contains(EventMask::IGNORED) {
                    // The watched directory is gone: let the reloader watch again.
                    filters.remove(&event.wd);
                    relevant = true;
                    continue;
                }
                relevant |= match (filters.get(&event.wd), event.name) {
                    // An ancestor: only the child on the way to a policy directory.
                    (Some(Some(child)), Some(name)) => name == child,
                    (Some(Some(_)), None) => true,
                    // A policy directory: its *.toml files, or the directory itself.
                    (Some(None), Some(name)) => {
                        name.to_str().is_some_and(|n| n.ends_with(".toml") && !n.starts_with('.'))
                    }
                    (Some(None), None) => true,
                    (None, _) => event.mask.contains(EventMask::Q_OVERFLOW),
                };
            }
        }
        if relevant && triggers.send(Trigger::Files).is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests;
