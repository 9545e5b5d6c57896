//! The devices fidoseald serves, and whose they are.
//!
//! `[device] mode = "single"`: one device for `[device] user`, its store in
//! the state directory itself, as before per-user devices.
//!
//! `[device] mode = "per-user"`: a [`UserDevice`] for every user with an
//! admitted logind session (logind.rs): their own uhid device, CTAPHID
//! transport, authenticator, credential database under
//! `state_dir/users/<uid>/`, key context on the machine's key store
//! (user_keys.rs), policy evaluated for them, and prompts asked of their
//! own agent only (one [`AgentRegistry`] per uid). The device's HID `uniq`
//! is `fidoseal-uid-<uid>`: the shipped udev rule makes the hidraw node
//! that uid's alone (systemd/udev/72-fidoseal.rules). When the user has no
//! admitted session left, the device is removed.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Instant;

use fidoseal_ctap::platform::{KeyStore, PolicyDecision, UserPrompt};
use fidoseal_ctap::{AttestationMode, Authenticator, AuthenticatorConfig, Platform};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::{Attestation, Config};
use crate::device_user::{DeviceOwner, DeviceUser};
use crate::policy_service::PolicyService;
use crate::prompt_agent::{AgentPrompt, AgentRegistry, Bus};
use crate::replug::{self, ReplugRequests, Replugger};
use crate::shared_credentials::SharedCredentialStore;
use crate::transport::{self, Stop};
use crate::user_keys::{SharedKeyStore, UserKeyStore};
use crate::{keystore, migrate_users, prompt, state, uhid};

/// The HID `uniq` prefix the udev rule reads the owner's uid from.
pub const UNIQ_UID_PREFIX: &str = "fidoseal-uid-";

/// One virtual security key and everything that is its owner's.
pub struct UserDevice {
    /// The owner; None only for a single-mode device without `[device] user`.
    pub uid: Option<u32>,
    pub user: Option<String>,
    pub registry: Arc<AgentRegistry>,
    pub store: SharedCredentialStore,
    pub authenticator: Arc<Mutex<Authenticator>>,
    /// None in always-approve mode.
    pub prompt: Option<AgentPrompt>,
    /// Single mode: `[device] user` as a uid, resolved at start and on
    /// SIGHUP, never in a D-Bus handler (device_user.rs). None in per-user
    /// mode, where the owner is `uid`, from logind.
    pub device_user: Option<Arc<DeviceUser>>,
    /// For Manager1.Replug: asks this device's loop to re-plug it (rate
    /// limited per device).
    pub replugger: Replugger,
    /// Taken by the device loop that answers `replugger`.
    replug_requests: Mutex<Option<ReplugRequests>>,
    /// The policy as it applies to the owner: what credential management
    /// may show (`PolicyDecision::shows_passkeys_of`).
    pub policy: Box<dyn PolicyDecision + Sync>,
    /// The admitted logind sessions that keep it (per-user mode).
    sessions: Mutex<Vec<String>>,
}

/// What Manager1 needs of a device besides its authenticator and store:
/// whose it is (single mode), how to re-plug it, and the policy that
/// decides which passkeys are shown.
pub struct DeviceHandles {
    pub device_user: Option<Arc<DeviceUser>>,
    pub replug: (Replugger, ReplugRequests),
    pub policy: Box<dyn PolicyDecision + Sync>,
}

impl DeviceHandles {
    /// Re-plugs at most every [`replug::MIN_REPLUG_INTERVAL`].
    pub fn new(device_user: Option<Arc<DeviceUser>>, policy: Box<dyn PolicyDecision + Sync>) -> Self {
        Self { device_user, replug: replug::channel(replug::MIN_REPLUG_INTERVAL), policy }
    }
}

impl UserDevice {
    pub fn new(
        uid: Option<u32>,
        user: Option<String>,
        registry: Arc<AgentRegistry>,
        store: SharedCredentialStore,
        authenticator: Arc<Mutex<Authenticator>>,
        prompt: Option<AgentPrompt>,
        handles: DeviceHandles,
    ) -> Self {
        let DeviceHandles { device_user, replug: (replugger, replug_requests), policy } = handles;
        Self {
            uid,
            user,
            registry,
            store,
            authenticator,
            prompt,
            device_user,
            replugger,
            replug_requests: Mutex::new(Some(replug_requests)),
            policy,
            sessions: Mutex::new(Vec::new()),
        }
    }

    /// Whether `uid` owns the device: single mode's `[device] user` as last
    /// resolved (an unknown one is looked up again in the background), or
    /// per-user mode's logind uid. Never looks anything up itself.
    pub fn is_owner(&self, uid: u32) -> bool {
        match &self.device_user {
            Some(device_user) => device_user.is(uid),
            None => self.uid == Some(uid),
        }
    }

    /// The re-plug requests, for the one loop that serves the device.
    pub fn take_replug_requests(&self) -> Option<ReplugRequests> {
        self.replug_requests.lock().unwrap_or_else(|e| e.into_inner()).take()
    }

    /// The HID `uniq` string: the owner's uid for the udev rule, or the
    /// single-mode name of a device without a user (the seat's, by uaccess).
    pub fn uniq(&self) -> String {
        match self.uid {
            Some(uid) => format!("{UNIQ_UID_PREFIX}{uid}"),
            None => "fidoseal-0".into(),
        }
    }

    pub fn info(&self) -> uhid::DeviceInfo {
        uhid::DeviceInfo {
            name: "fidoseal virtual FIDO2 key".into(),
            phys: "fidoseal".into(),
            uniq: self.uniq(),
            // pid.codes, the open-source USB vendor ID; 0x0001 is its test product ID.
            vendor: 0x1209,
            product: 0x0001,
            version: crate::firmware_version(),
        }
    }

    pub fn sessions(&self) -> Vec<String> {
        self.sessions.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn set_sessions(&self, sessions: Vec<String>) {
        *self.sessions.lock().unwrap_or_else(|e| e.into_inner()) = sessions;
    }

    /// The device's hidraw node, found through sysfs by its `uniq`.
    pub fn node(&self) -> Option<PathBuf> {
        hidraw_node_with_uniq(Path::new("/sys/class/hidraw"), &self.uniq())
    }
}

/// The `/dev/hidrawN` whose HID device (`<class dir>/hidrawN/device/uevent`)
/// says `HID_UNIQ=<uniq>`.
pub fn hidraw_node_with_uniq(class_dir: &Path, uniq: &str) -> Option<PathBuf> {
    let wanted = format!("HID_UNIQ={uniq}");
    let mut entries: Vec<_> = std::fs::read_dir(class_dir).ok()?.filter_map(Result::ok).collect();
    entries.sort_by_key(|e| e.file_name());
    entries.into_iter().find_map(|entry| {
        let uevent = std::fs::read_to_string(entry.path().join("device/uevent")).ok()?;
        uevent.lines().any(|line| line == wanted).then(|| Path::new("/dev").join(entry.file_name()))
    })
}

/// Every device of the daemon, by owner; what the D-Bus service resolves
/// callers against.
pub struct Devices {
    /// Single mode (else per-user mode).
    single_mode: bool,
    /// Single mode's one device, once it is open: a start with a TPM store
    /// bound to an unapproved boot state opens it only after the approval
    /// (main.rs). Always empty in per-user mode.
    single: OnceLock<Arc<UserDevice>>,
    /// Single mode's owner, known before its device opens: `[device] user`
    /// and the registry its agent registers with. An agent that starts
    /// while fidoseald waits for the boot state to be approved registers
    /// then, and is asked once the device opens (it is not refused: it
    /// would not try again before the daemon's next start).
    single_user: Option<Arc<DeviceUser>>,
    single_registry: Option<Arc<AgentRegistry>>,
    per_user: Mutex<BTreeMap<u32, Arc<UserDevice>>>,
    /// Per-user mode: an agent may register before its user's device
    /// exists (both start with the session), so registries outlive devices.
    registries: Mutex<HashMap<u32, Arc<AgentRegistry>>>,
    bus: OnceLock<Bus>,
}

impl Devices {
    /// Single mode with its device open (the tests; fidoseald opens it
    /// after its start, [`Self::set_single`]).
    #[cfg(test)]
    pub fn single(device: Arc<UserDevice>) -> Self {
        let devices = Self::single_pending(device.device_user.clone(), Arc::clone(&device.registry));
        let _ = devices.single.set(device);
        devices
    }

    /// Single mode whose device is not open yet ([`Self::set_single`]): its
    /// user and the registry the device will use.
    pub fn single_pending(device_user: Option<Arc<DeviceUser>>, registry: Arc<AgentRegistry>) -> Self {
        Self { single_mode: true, single_user: device_user, single_registry: Some(registry), ..Self::per_user() }
    }

    pub fn per_user() -> Self {
        Self {
            single_mode: false,
            single: OnceLock::new(),
            single_user: None,
            single_registry: None,
            per_user: Mutex::new(BTreeMap::new()),
            registries: Mutex::new(HashMap::new()),
            bus: OnceLock::new(),
        }
    }

    /// Single mode's device, now open; its registry joins the bus. Once.
    pub fn set_single(&self, device: Arc<UserDevice>) -> Result<(), String> {
        if !self.single_mode {
            return Err("per-user mode has no single device".into());
        }
        if !self.single_registry.as_ref().is_some_and(|registry| Arc::ptr_eq(registry, &device.registry)) {
            return Err("the single device must use the registry its agent registered with".into());
        }
        self.single.set(Arc::clone(&device)).map_err(|_| "the single device is already open".to_string())?;
        if let (Some(bus), None) = (self.bus.get(), device.registry.bus()) {
            device.registry.attach(bus.clone());
        }
        Ok(())
    }

    fn table(&self) -> MutexGuard<'_, BTreeMap<u32, Arc<UserDevice>>> {
        self.per_user.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Every device, ordered by uid (single mode: its one).
    pub fn all(&self) -> Vec<Arc<UserDevice>> {
        match self.single.get() {
            Some(device) => vec![Arc::clone(device)],
            None if self.single_mode => Vec::new(),
            None => self.table().values().cloned().collect(),
        }
    }

    /// The device `uid`'s own (its owner), in either mode.
    pub fn owned_by(&self, uid: u32) -> Option<Arc<UserDevice>> {
        match self.single.get() {
            Some(device) => device.is_owner(uid).then(|| Arc::clone(device)),
            None if self.single_mode => None,
            None => self.table().get(&uid).cloned(),
        }
    }

    /// The device a Manager1 call of `uid` acts on: its own; for root, the
    /// only device there is (several: root must say whose, which Manager1
    /// does not offer beyond ListDevices, so it is refused).
    pub fn for_caller(&self, uid: u32) -> Result<Arc<UserDevice>, String> {
        if let Some(device) = self.owned_by(uid) {
            return Ok(device);
        }
        if uid == 0 {
            let all = self.all();
            return match all.as_slice() {
                [only] => Ok(Arc::clone(only)),
                [] => Err("there is no device (no user has an admitted session)".into()),
                _ => Err(format!(
                    "there are {} devices, one per user: act as their user (ListDevices shows them)",
                    all.len()
                )),
            };
        }
        Err(format!("uid {uid} has no device here"))
    }

    /// The device a Reset authorized for `uid` (polkit, or root) acts on:
    /// the caller's own; single mode's one device (the machine's key, as
    /// an administrator's action); for root, the only device there is.
    pub fn for_reset(&self, uid: u32) -> Result<Arc<UserDevice>, String> {
        if let Some(device) = self.owned_by(uid).or_else(|| self.single.get().cloned()) {
            return Ok(device);
        }
        self.for_caller(uid)
    }

    /// The registry where `uid`'s agent registers: the single device's (its
    /// user only), or `uid`'s own in per-user mode.
    pub fn registry_for(&self, uid: u32) -> Option<Arc<AgentRegistry>> {
        if self.single_mode {
            return match self.single.get() {
                Some(device) => device.is_owner(uid).then(|| Arc::clone(&device.registry)),
                // Not open yet (main.rs): its user's agent registers now.
                None => self
                    .single_user
                    .as_ref()
                    .is_some_and(|user| user.is(uid))
                    .then(|| self.single_registry.clone())
                    .flatten(),
            };
        }
        let mut registries = self.registries.lock().unwrap_or_else(|e| e.into_inner());
        let registry = registries.entry(uid).or_insert_with(|| {
            let registry = Arc::new(AgentRegistry::new());
            if let Some(bus) = self.bus.get() {
                registry.attach(bus.clone());
            }
            registry
        });
        Some(Arc::clone(registry))
    }

    /// Every registry (CancelRequest, UnregisterAgent: each checks the
    /// caller's connection itself).
    pub fn registries(&self) -> Vec<Arc<AgentRegistry>> {
        match self.single.get() {
            Some(device) => vec![Arc::clone(&device.registry)],
            None if self.single_mode => self.single_registry.iter().cloned().collect(),
            None => self.registries.lock().unwrap_or_else(|e| e.into_inner()).values().cloned().collect(),
        }
    }

    /// The D-Bus service owns its name: prompts can be sent.
    pub fn attach(&self, bus: Bus) {
        let _ = self.bus.set(bus.clone());
        for registry in self.registries() {
            registry.attach(bus.clone());
        }
    }

    /// Single mode's `[device] user`, also before its device opens (None in
    /// per-user mode).
    pub fn single_user(&self) -> Option<&Arc<DeviceUser>> {
        match self.single.get() {
            Some(device) => device.device_user.as_ref(),
            None => self.single_user.as_ref(),
        }
    }

    pub(crate) fn insert(&self, device: Arc<UserDevice>) {
        if let Some(uid) = device.uid {
            self.table().insert(uid, device);
        }
    }

    fn remove(&self, uid: u32) -> Option<Arc<UserDevice>> {
        self.table().remove(&uid)
    }
}

/// What every user's device is made from: the machine's key store and
/// policy, and the configuration.
pub struct DeviceFactory {
    pub keystore: SharedKeyStore,
    pub policy: PolicyService,
    pub state_dir: PathBuf,
    pub capacity: usize,
    pub authenticator: AuthenticatorConfig,
    /// The TPM's anti-rollback anchor, shared by every user's state.
    pub anchor: Option<crate::tpm::rollback::RollbackAnchor>,
}

pub fn authenticator_config(config: &Config) -> AuthenticatorConfig {
    let mode = |attestation: Attestation| match attestation {
        Attestation::SelfAttestation => AttestationMode::SelfAttestation,
        Attestation::None => AttestationMode::None,
        Attestation::Machine => AttestationMode::Machine,
    };
    AuthenticatorConfig {
        attestation: mode(config.authenticator.attestation),
        non_web_attestation: mode(config.authenticator.non_web_attestation),
        firmware_version: crate::firmware_version(),
        ..AuthenticatorConfig::default()
    }
}

impl DeviceFactory {
    /// `uid`'s device (per-user mode): opens (or creates) their store and
    /// key context under `users/<uid>/`.
    pub fn open_user(
        &self,
        config: &Config,
        devices: &Devices,
        uid: u32,
        user: &str,
        now: Instant,
    ) -> Result<Arc<UserDevice>, String> {
        let dir = migrate_users::prepare_user_dir(&self.state_dir, uid)
            .map_err(|e| format!("cannot prepare {}: {e}", migrate_users::user_dir(&self.state_dir, uid).display()))?;
        let mut keys = UserKeyStore::open(Arc::clone(&self.keystore), &dir, uid).map_err(|e| e.to_string())?;
        let created = keys.just_created();
        if created || keys.is_legacy() {
            tracing::info!(
                uid,
                user,
                new = created,
                inherited_single_user_state = keys.is_legacy(),
                "the user's key context"
            );
        }
        let id = format!("{}/{uid}", migrate_users::USERS_DIR);
        let anchor = self.anchor.as_ref().map(|anchor| (anchor, id.as_str()));
        let credentials = open_credentials(&dir, self.capacity, &mut keys, created, Some(user), anchor)?;
        let registry = devices.registry_for(uid).ok_or("no agent registry")?;
        let agent_prompt = AgentPrompt::for_user(config, user, DeviceOwner::Uid(uid), &registry, &credentials);
        let prompt: Box<dyn UserPrompt> = match &agent_prompt {
            Some(agent_prompt) => Box::new(agent_prompt.clone()),
            None => Box::new(prompt::AlwaysApprove),
        };
        let platform = Platform {
            keystore: Box::new(keys),
            credentials: Box::new(credentials.clone()),
            prompt,
            policy: Box::new(self.policy.decision_for(user)),
        };
        // The owner is logind's uid: no user database lookup (finding 7).
        let handles = DeviceHandles::new(None, Box::new(self.policy.decision_for(user)));
        let authenticator = Authenticator::try_new(self.authenticator.clone(), platform, now)
            .map_err(|e| format!("cannot start the authenticator (no random numbers from the system?): {e:?}"))?;
        Ok(Arc::new(UserDevice::new(
            Some(uid),
            Some(user.to_owned()),
            registry,
            credentials,
            Arc::new(Mutex::new(authenticator)),
            agent_prompt,
            handles,
        )))
    }
}

/// Opens the credential database of `dir` and ties it to `keys` (a
/// database of another key store is set aside, loudly).
pub fn open_credentials(
    dir: &Path,
    capacity: usize,
    keys: &mut dyn KeyStore,
    key_store_created: bool,
    user: Option<&str>,
    anchor: Option<(&crate::tpm::rollback::RollbackAnchor, &str)>,
) -> Result<SharedCredentialStore, String> {
    let mut credentials = state::CredentialDatabase::open(dir, capacity).map_err(|e| e.to_string())?;
    let user = user.unwrap_or("-");
    if let Some(migration) = credentials.migration() {
        tracing::info!(
            user,
            credentials = migration.credentials,
            counter_floor = migration.counter_floor,
            kept = %migration.backup.display(),
            database = %credentials.path().display(),
            "credential state migrated from credentials.cbor to the database (the old file is kept)"
        );
    }
    // A TPM store whose boot state is not approved ([keystore] pcrs,
    // docs/tpm.md) cannot compute the binding: the device then serves with
    // the boot-state error, and the check waits for the next start.
    let binding = match keystore::binding(keys) {
        Ok(binding) => Some(binding),
        Err(e) if !key_store_created => {
            tracing::error!(
                user,
                error = %e,
                "cannot identify the key store now: every request that needs it fails until it can; the credential \
                 state is checked against it at the next start"
            );
            None
        }
        Err(e) => return Err(format!("cannot identify the key store: {e}")),
    };
    let key_store_name = binding.as_ref().map(|b| b.name.clone()).unwrap_or_default();
    let bound = match binding {
        Some(binding) => credentials.bind_key_store(binding, key_store_created).map_err(|e| e.to_string())?,
        None => state::Binding::Same,
    };
    match bound {
        state::Binding::Same => {}
        state::Binding::Recorded => {
            tracing::info!(user, key_store = key_store_name, "credential state tied to this key store")
        }
        state::Binding::SetAside { kept, previous } => tracing::error!(
            user,
            key_store = key_store_name,
            previous,
            kept = %kept.display(),
            "THE CREDENTIAL STATE BELONGS TO ANOTHER KEY STORE (the [keystore] backend was switched, or the state \
             directory comes from elsewhere): its passkeys and PIN cannot work with this one. It was copied aside and \
             reset; the signature counter goes on. Register this security key again with every site, or switch the \
             backend back and restore the copy."
        ),
    }
    if let Some((anchor, id)) = anchor {
        // A stale state is refused here, with what is stale and the recovery.
        let start =
            crate::tpm::rollback::protect_state(anchor, &mut credentials, id, dir).map_err(|e| e.to_string())?;
        tracing::info!(user, state = id, start = ?start, anchored_at = anchor.counter(), "anti-rollback: state checked");
    }
    tracing::info!(
        user,
        database = %credentials.path().display(),
        resident_credentials = fidoseal_ctap::platform::CredentialStore::credential_count(&credentials),
        remaining = fidoseal_ctap::platform::CredentialStore::remaining_capacity(&credentials),
        "state loaded"
    );
    Ok(SharedCredentialStore::new(credentials))
}

/// A device being served: its task and how to tell it to stop or re-plug.
pub struct Running {
    commands: watch::Sender<Option<Stop>>,
    task: JoinHandle<Result<(), String>>,
}

impl Running {
    /// Re-plugs the device (SIGUSR1).
    pub fn replug(&self) {
        self.commands.send_replace(Some(Stop::Replug));
    }

    /// Removes the device and waits until it is gone.
    pub async fn stop(self) -> Result<(), String> {
        self.commands.send_replace(Some(Stop::Exit));
        self.task.await.map_err(|e| format!("device task failed: {e}"))?
    }
}

/// Serves `device` through `uhid_path` until told to stop: re-plugs power
/// cycle the authenticator. A failure ends the task with its reason and
/// tells `failed`.
pub fn spawn(
    device: Arc<UserDevice>,
    uhid_path: PathBuf,
    failed: tokio::sync::mpsc::UnboundedSender<String>,
) -> Running {
    let (commands, mut receiver) = watch::channel(None::<Stop>);
    let task = tokio::spawn(async move {
        let result = serve_until_stopped(&device, &uhid_path, &mut receiver).await;
        if let Err(reason) = &result {
            let _ = failed.send(format!("device of {}: {reason}", device.user.as_deref().unwrap_or("-")));
        }
        result
    });
    Running { commands, task }
}

async fn serve_until_stopped(
    device: &Arc<UserDevice>,
    uhid_path: &Path,
    commands: &mut watch::Receiver<Option<Stop>>,
) -> Result<(), String> {
    let mut replug_requests = device.take_replug_requests();
    // A Manager1.Replug being carried out: answered once the device is back.
    let mut replug_asked: Option<replug::ReplugRequest> = None;
    loop {
        let uhid = uhid::UhidDevice::create(uhid_path, &device.info())
            .map_err(|e| format!("{e} (is the uhid module loaded? try `modprobe uhid`)"))?;
        tracing::info!(
            uhid = %uhid_path.display(),
            user = device.user.as_deref().unwrap_or("-"),
            uid = device.uid,
            uniq = device.uniq(),
            "virtual FIDO device created"
        );
        if let Some(request) = replug_asked.take() {
            request.finish(Ok(()));
        }
        commands.mark_unchanged();
        let (asked_slot, requests_slot) = (&mut replug_asked, &mut replug_requests);
        let stop = async {
            let asked = async {
                match requests_slot.as_mut() {
                    Some(requests) => requests.next().await,
                    None => std::future::pending().await,
                }
            };
            tokio::pin!(asked);
            loop {
                tokio::select! {
                    changed = commands.changed() => {
                        if changed.is_err() {
                            return Stop::Exit;
                        }
                        if let Some(stop) = *commands.borrow_and_update() {
                            return stop;
                        }
                    }
                    request = &mut asked => {
                        tracing::info!(
                            user = device.user.as_deref().unwrap_or("-"),
                            uid = device.uid,
                            "Manager1.Replug: re-plugging the device"
                        );
                        *asked_slot = Some(request);
                        return Stop::Replug;
                    }
                }
            }
        };
        let served = transport::serve(uhid, Arc::clone(&device.authenticator), crate::random_first_cid(), stop).await;
        let reason = match served {
            Ok(reason) => reason,
            Err(e) => {
                if let Some(request) = replug_asked.take() {
                    request.finish(Err(e.to_string()));
                }
                return Err(e.to_string());
            }
        };
        if reason == Stop::Exit {
            tracing::info!(
                user = device.user.as_deref().unwrap_or("-"),
                uid = device.uid,
                "virtual FIDO device removed"
            );
            return Ok(());
        }
        // Unplugged: give udev and clients a moment to see the device go.
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        // The cancelled request may still hold the authenticator for a
        // moment (a PAM check ends on its own): wait off the runtime.
        let authenticator = Arc::clone(&device.authenticator);
        let power_cycled = tokio::task::spawn_blocking(move || replug::power_cycle(&authenticator))
            .await
            .map_err(|e| format!("power-cycle task failed: {e}"))
            .and_then(|r| r);
        if let Err(e) = power_cycled {
            if let Some(request) = replug_asked.take() {
                request.finish(Err(e.clone()));
            }
            return Err(e);
        }
    }
}

/// Per-user mode: makes the running devices follow the admitted users.
pub struct Supervisor {
    pub devices: Arc<Devices>,
    pub factory: DeviceFactory,
    pub uhid_path: PathBuf,
    running: BTreeMap<u32, Running>,
    failed: tokio::sync::mpsc::UnboundedSender<String>,
}

impl Supervisor {
    pub fn new(
        devices: Arc<Devices>,
        factory: DeviceFactory,
        uhid_path: PathBuf,
        failed: tokio::sync::mpsc::UnboundedSender<String>,
    ) -> Self {
        Self { devices, factory, uhid_path, running: BTreeMap::new(), failed }
    }

    /// Starts a device for every admitted user without one, removes those
    /// of users no longer admitted, and records each device's sessions.
    /// A user whose store cannot be opened is logged and left without a
    /// device (the others are served); the next change tries again.
    pub async fn reconcile(&mut self, config: &Config, admitted: &BTreeMap<u32, crate::logind::AdmittedUser>) {
        let gone: Vec<u32> = self.running.keys().filter(|uid| !admitted.contains_key(uid)).copied().collect();
        for uid in gone {
            let user = self.devices.remove(uid).and_then(|d| d.user.clone()).unwrap_or_default();
            tracing::info!(uid, user, "no admitted session left: removing the user's device");
            if let Some(running) = self.running.remove(&uid) {
                if let Err(e) = running.stop().await {
                    tracing::error!(uid, error = %e, "the device did not stop cleanly");
                }
            }
        }
        for (uid, admitted_user) in admitted {
            if let Some(device) = self.devices.owned_by(*uid) {
                if self.running.contains_key(uid) {
                    device.set_sessions(admitted_user.sessions.clone());
                    continue;
                }
            }
            let opened = tokio::task::block_in_place(|| {
                self.factory.open_user(config, &self.devices, *uid, &admitted_user.user, Instant::now())
            });
            match opened {
                Ok(device) => {
                    device.set_sessions(admitted_user.sessions.clone());
                    tracing::info!(
                        uid,
                        user = admitted_user.user,
                        sessions = ?admitted_user.sessions,
                        "admitted session: starting the user's device"
                    );
                    self.devices.insert(Arc::clone(&device));
                    self.running.insert(*uid, spawn(device, self.uhid_path.clone(), self.failed.clone()));
                }
                Err(e) => {
                    tracing::error!(uid, user = admitted_user.user, error = %e, "cannot start the user's device")
                }
            }
        }
    }

    pub fn replug_all(&self) {
        for running in self.running.values() {
            running.replug();
        }
    }

    /// Removes every device (the daemon stops).
    pub async fn stop_all(&mut self) {
        for (uid, running) in std::mem::take(&mut self.running) {
            self.devices.remove(uid);
            if let Err(e) = running.stop().await {
                tracing::error!(uid, error = %e, "the device did not stop cleanly");
            }
        }
    }
}

#[cfg(test)]
mod tests;
