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
    #[cfg(test)]
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
mod tests {
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
        let v =
            handle.decide(&PolicyRequest { operation: Operation::Reset, rp_id: "", discoverable: false, ctap1: false });
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
        let unknown =
            PolicyService::load(vec![dir.path().to_path_buf()], Some("no-such-user-fidoseal".into())).unwrap();
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
        let service =
            PolicyService::load(vec![dir.path().to_path_buf()], Some("no-such-user-fidoseal".into())).unwrap();
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
}
