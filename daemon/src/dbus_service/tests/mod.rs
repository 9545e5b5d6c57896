//! The D-Bus service and the agent prompt against a real dbus-daemon that
//! each test starts for itself: the system bus's default policy plus
//! dbus/org.fidoseal.Fidoseal1.conf, on a socket in a temporary directory
//! (the machine's own system bus is never touched). The test plays the
//! session agent, fprintd, polkit and logind on that bus (fakes.rs), and
//! other users through `setpriv … dbus-send`.
//!
//! Tests run on a one-worker runtime, as fidoseald does, and make the core's
//! prompt calls from the blocking pool, as the transport does.

mod agent;
mod contract;
mod ctl;
mod device_user;
mod fakes;
mod manager;
mod replug;
mod tpm;
mod verification;

use std::future::Future;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fidoseal_ctap::memory_store::MemoryCredentialStore;
use fidoseal_ctap::platform::{
    AllowAll, AuthenticatorState, CredentialStore, PinRecord, PolicyDecision, PolicyRequest, PolicyVerdict,
    PresencePurpose, PresenceRequest, PromptOutcome, Secret32, TransactionSignals, UserPrompt, VerificationOutcome,
};
use fidoseal_ctap::software_keystore::SoftwareKeyStore;
use fidoseal_ctap::{Authenticator, AuthenticatorConfig, Platform};
use zbus::connection::Builder;
use zbus::Connection;

use super::{DbusService, Service};
use crate::config::{DeviceMode, PromptMode, UvMethod};
use crate::device_user::{DeviceOwner, DeviceUser, UserLookup};
use crate::devices::{DeviceHandles, Devices, UserDevice};
use crate::prompt_agent::{AgentPrompt, AgentRegistry, PromptSettings};
use crate::shared_credentials::SharedCredentialStore;
use crate::verification::pam::PamVerifier;

/// The uid `setpriv` gives to "another user" (nobody on Debian).
pub const OTHER_UID: u32 = 65534;

/// A temporary directory, world-searchable so that other uids reach the
/// bus socket in it; removed on drop.
pub struct TempDir(tempfile::TempDir);

impl TempDir {
    pub fn new(name: &str) -> Self {
        let dir = tempfile::Builder::new().prefix(&format!("fidoseal-dbus-{name}-")).tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        Self(dir)
    }

    pub fn path(&self) -> &Path {
        self.0.path()
    }
}

/// The system bus's default policy (Debian 12's /usr/share/dbus-1/system.conf),
/// the fake system services' holes, and our policy file.
const BUS_CONFIG: &str = r#"<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <listen>unix:path=@SOCKET@</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <deny own="*"/>
    <deny send_type="method_call"/>
    <allow send_type="signal"/>
    <allow send_requested_reply="true" send_type="method_return"/>
    <allow send_requested_reply="true" send_type="error"/>
    <allow receive_type="method_call"/>
    <allow receive_type="method_return"/>
    <allow receive_type="error"/>
    <allow receive_type="signal"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus.Introspectable"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus.Properties"/>
    <deny send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus" send_member="UpdateActivationEnvironment"/>
    <!-- What fprintd's, polkit's and logind's own policy files open. -->
    <allow send_destination="net.reactivated.Fprint"/>
    <allow send_destination="org.freedesktop.PolicyKit1"/>
    <allow send_destination="org.freedesktop.login1"/>
  </policy>
  <policy user="root">
    <allow own="net.reactivated.Fprint"/>
    <allow own="org.freedesktop.PolicyKit1"/>
    <allow own="org.freedesktop.login1"/>
  </policy>
  <include>@FIDOSEAL_CONF@</include>
</busconfig>
"#;

/// A dbus-daemon of the test's own, stopped on drop.
pub struct TestBus {
    pub address: String,
    child: Child,
    pub dir: TempDir,
}

impl TestBus {
    pub fn start(name: &str) -> Self {
        let dir = TempDir::new(name);
        let socket = dir.path().join("bus");
        let policy = Path::new(env!("CARGO_MANIFEST_DIR")).join("../dbus/org.fidoseal.Fidoseal1.conf");
        let config = BUS_CONFIG.replace("@SOCKET@", &socket.display().to_string()).replace(
            "@FIDOSEAL_CONF@",
            &policy.canonicalize().expect("dbus/org.fidoseal.Fidoseal1.conf").display().to_string(),
        );
        let config_path = dir.path().join("bus.conf");
        std::fs::write(&config_path, config).unwrap();
        // Its complaints (it cannot raise the fd limit in a container) go to a
        // file, shown if it does not start.
        let log_path = dir.path().join("dbus-daemon.log");
        let log = std::fs::File::create(&log_path).unwrap();
        let mut child = match Command::new("dbus-daemon")
            .arg(format!("--config-file={}", config_path.display()))
            .args(["--nofork", "--nopidfile", "--print-address=1"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
        {
            Ok(child) => child,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                panic!("dbus-daemon is not installed: run scripts/install-deps (Debian package dbus)")
            }
            Err(e) => panic!("cannot start dbus-daemon: {e}"),
        };
        let mut line = String::new();
        let stdout = child.stdout.take().expect("piped stdout");
        BufReader::new(stdout).read_line(&mut line).expect("dbus-daemon prints its address");
        let address = line.trim().to_string();
        assert!(
            address.starts_with("unix:"),
            "dbus-daemon did not start: {address:?}\n{}",
            std::fs::read_to_string(&log_path).unwrap_or_default()
        );
        // The socket must be reachable by other uids (setpriv tests).
        let _ = std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o777));
        Self { address, child, dir }
    }

    pub async fn connect(&self) -> Connection {
        Builder::address(self.address.as_str()).unwrap().build().await.unwrap()
    }

    /// The bus dies (as when dbus-daemon is restarted under a running daemon).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for TestBus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What a test changes about the daemon side.
pub struct Options {
    pub device_user: &'static str,
    pub timeout: Duration,
    pub uv_methods: Vec<UvMethod>,
    /// A PAM service (name, file text) written into the bus's directory;
    /// "@DIR@" in the text stands for that directory.
    pub pam_service: Option<(&'static str, String)>,
    /// A PIN is set before the authenticator starts.
    pub pin_set: bool,
    /// Per-user mode: besides `device_user`'s device, one of this user's.
    pub second_user: Option<&'static str>,
    /// Relying parties the policy denies (and so hides from credential
    /// management); every other one is allowed.
    pub hidden_rps: Vec<&'static str>,
    /// The user database, in place of the system's (None: the system's).
    pub user_lookup: Option<UserLookup>,
    /// Manager1.Replug's minimum interval.
    pub replug_interval: Duration,
    /// The TPM store Manager1 administers (boot-state binding).
    pub tpm: Option<crate::tpm::admin::SharedTpm>,
}

/// A policy that denies the listed relying parties and allows the rest.
pub struct HidingPolicy(pub Vec<&'static str>);

impl PolicyDecision for HidingPolicy {
    fn decide(&self, request: &PolicyRequest<'_>) -> PolicyVerdict {
        if self.0.contains(&request.rp_id) {
            PolicyVerdict::deny("test: hidden")
        } else {
            PolicyVerdict::allow("test: allowed")
        }
    }
}

impl Default for Options {
    fn default() -> Self {
        Self {
            device_user: "root",
            timeout: Duration::from_secs(5),
            uv_methods: vec![UvMethod::Fingerprint, UvMethod::Password, UvMethod::Pin],
            pam_service: None,
            pin_set: false,
            second_user: None,
            hidden_rps: Vec::new(),
            user_lookup: None,
            replug_interval: Duration::from_secs(10),
            tpm: None,
        }
    }
}

/// fidoseald's D-Bus side on a test bus: the service, its registry, a
/// credential store and an authenticator, and the agent prompt.
pub struct Harness {
    pub registry: Arc<AgentRegistry>,
    pub store: SharedCredentialStore,
    pub authenticator: Arc<Mutex<Authenticator>>,
    pub prompt: AgentPrompt,
    pub device_user: Arc<DeviceUser>,
    /// Re-plugs done by the stand-in device loop of the device user's device.
    replugs: Arc<AtomicUsize>,
    /// Per-user mode (`Options::second_user`): the other user's device.
    pub second: Option<Arc<UserDevice>>,
    /// Re-plugs done by the stand-in device loop of the second device.
    pub second_replugs: Arc<AtomicUsize>,
    /// Held: the service stays on the bus for the test.
    pub service: DbusService,
    pub bus: TestBus,
    /// The service's "waiting for the boot state" flag, as main.rs sets it.
    pub waiting_for_boot_state: Arc<std::sync::atomic::AtomicBool>,
}

impl Harness {
    pub async fn start(name: &str, options: Options) -> Self {
        let bus = TestBus::start(name);
        let pam = match &options.pam_service {
            Some((service, text)) => {
                let text = text.replace("@DIR@", &bus.dir.path().display().to_string());
                std::fs::write(bus.dir.path().join(service), text).unwrap();
                PamVerifier::with_confdir(service, bus.dir.path())
            }
            None => PamVerifier::with_confdir("fidoseal-test-none", bus.dir.path()),
        };
        let registry = Arc::new(AgentRegistry::new());
        let mut store = SharedCredentialStore::new(MemoryCredentialStore::new(8));
        if options.pin_set {
            let pin = Some(PinRecord { verifier: vec![1; 32], code_points: 4 });
            store.save_state(&AuthenticatorState { pin, ..AuthenticatorState::default() }).unwrap();
        }
        // Resolved off the runtime, as fidoseald does before it starts one.
        let (name, lookup) = (options.device_user.to_string(), options.user_lookup.clone());
        let device_user = tokio::task::spawn_blocking(move || match lookup {
            Some(lookup) => DeviceUser::resolve_with(Some(name), lookup),
            None => DeviceUser::resolve(Some(name)),
        })
        .await
        .unwrap();
        let settings = PromptSettings {
            timeout: options.timeout,
            uv_methods: options.uv_methods,
            device_user: options.device_user.into(),
            owner: if options.second_user.is_some() {
                crate::device_user::system_uid_of(options.device_user).map(DeviceOwner::Uid)
            } else {
                Some(DeviceOwner::Configured(Arc::clone(&device_user)))
            },
            pam,
        };
        let prompt = AgentPrompt::new(Arc::clone(&registry), settings, store.clone());
        let platform = Platform {
            keystore: Box::new(SoftwareKeyStore::new(Secret32([7; 32]))),
            credentials: Box::new(store.clone()),
            prompt: Box::new(prompt.clone()),
            policy: Box::new(HidingPolicy(options.hidden_rps.clone())),
        };
        let authenticator = Arc::new(Mutex::new(Authenticator::new(
            AuthenticatorConfig::default(),
            platform,
            std::time::Instant::now(),
        )));
        // Single mode: the owner is `[device] user`, resolved as fidoseald
        // does; per-user mode: the uid logind gave (here the system's).
        let per_user = options.second_user.is_some();
        let first_uid = crate::device_user::system_uid_of(options.device_user);
        let handles = DeviceHandles {
            device_user: (!per_user).then(|| Arc::clone(&device_user)),
            replug: crate::replug::channel(options.replug_interval),
            policy: Box::new(HidingPolicy(options.hidden_rps.clone())),
        };
        let device = Arc::new(UserDevice::new(
            first_uid,
            Some(options.device_user.into()),
            Arc::clone(&registry),
            store.clone(),
            Arc::clone(&authenticator),
            Some(prompt.clone()),
            handles,
        ));
        let replugs = stand_in_device_loop(&device);
        let (devices, second, device_mode) = match options.second_user {
            None => (Devices::single(device), None, DeviceMode::Single),
            Some(user) => {
                let devices = Devices::per_user();
                devices.insert(device);
                let uid = crate::device_user::system_uid_of(user).expect("the second user exists");
                let registry = devices.registry_for(uid).expect("per-user registries");
                let store = SharedCredentialStore::new(MemoryCredentialStore::new(8));
                let platform = Platform {
                    keystore: Box::new(SoftwareKeyStore::new(Secret32([8; 32]))),
                    credentials: Box::new(store.clone()),
                    prompt: Box::new(crate::prompt::AlwaysApprove),
                    policy: Box::new(AllowAll),
                };
                let authenticator =
                    Authenticator::new(AuthenticatorConfig::default(), platform, std::time::Instant::now());
                let handles = DeviceHandles {
                    device_user: None,
                    replug: crate::replug::channel(options.replug_interval),
                    policy: Box::new(HidingPolicy(options.hidden_rps.clone())),
                };
                let second = Arc::new(UserDevice::new(
                    Some(uid),
                    Some(user.into()),
                    registry,
                    store,
                    Arc::new(Mutex::new(authenticator)),
                    None,
                    handles,
                ));
                let counted = stand_in_device_loop(&second);
                devices.insert(Arc::clone(&second));
                (devices, Some((second, counted)), DeviceMode::PerUser)
            }
        };
        let (second, second_replugs) = match second {
            Some((device, replugs)) => (Some(device), replugs),
            None => (None, Arc::new(AtomicUsize::new(0))),
        };
        let service = Service {
            devices: Arc::new(devices),
            prompt_mode: PromptMode::Agent,
            device_mode,
            keystore: "software",
            tpm_manufacturer: None,
            tpm: options.tpm.clone(),
            policy_dirs: Vec::new(),
            policy: Some(crate::policy_service::PolicyService::load(Vec::new(), None).expect("the built-in policy")),
            waiting_for_boot_state: Arc::default(),
        };
        let waiting_for_boot_state = Arc::clone(&service.waiting_for_boot_state);
        let service =
            DbusService::start(service, Some(&bus.address)).await.expect("the service starts on the test bus");
        Self {
            registry,
            store,
            authenticator,
            prompt,
            device_user,
            replugs,
            second,
            second_replugs,
            service,
            bus,
            waiting_for_boot_state,
        }
    }

    /// How often the device loop re-plugged the device for Manager1.Replug.
    pub fn device_loop_replugs(&self) -> usize {
        self.replugs.load(Ordering::SeqCst)
    }

    /// Waits until the registry holds an agent (Some) or none (None).
    pub async fn wait_for_agent(&self, present: bool) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.registry.current().is_some() != present {
            assert!(Instant::now() < deadline, "the registry never had present={present}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// The device loop of devices.rs, without a uhid device: each Replug
/// request power-cycles the device's authenticator as a re-plug does, then
/// answers. Counts the re-plugs.
fn stand_in_device_loop(device: &UserDevice) -> Arc<AtomicUsize> {
    let mut requests = device.take_replug_requests().expect("the device's re-plug requests");
    let replugs = Arc::new(AtomicUsize::new(0));
    let (authenticator, done) = (Arc::clone(&device.authenticator), Arc::clone(&replugs));
    tokio::spawn(async move {
        loop {
            let request = requests.next().await;
            let authenticator = Arc::clone(&authenticator);
            let result = tokio::task::spawn_blocking(move || crate::replug::power_cycle(&authenticator)).await.unwrap();
            done.fetch_add(1, Ordering::SeqCst);
            request.finish(result);
        }
    });
    replugs
}

/// A harness whose PAM service accepts only the password "correct horse"
/// (pam_exec hands the typed password to a script on its stdin), the only
/// verification method.
pub async fn with_password_check(name: &str, options: Options) -> Harness {
    let service = "auth [success=1 default=ignore] pam_exec.so quiet expose_authtok @DIR@/check\n\
                   auth requisite pam_deny.so\nauth required pam_permit.so\naccount required pam_permit.so\n"
        .to_string();
    let h = Harness::start(
        name,
        Options { uv_methods: vec![UvMethod::Password], pam_service: Some(("fidoseal-test", service)), ..options },
    )
    .await;
    let script = h.bus.dir.path().join("check");
    std::fs::write(&script, "#!/bin/sh\npw=$(tr -d '\\000')\n[ \"$pw\" = 'correct horse' ]\n").unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    h
}

/// A prompt request as the core would make it.
#[derive(Clone)]
pub struct Ask {
    pub purpose: PresencePurpose,
    pub rp_id: &'static str,
    pub user: Option<&'static str>,
    pub message: Option<&'static str>,
    pub timeout: Option<Duration>,
}

impl Default for Ask {
    fn default() -> Self {
        Self {
            purpose: PresencePurpose::Register,
            rp_id: "example.com",
            user: Some("alice"),
            message: None,
            timeout: None,
        }
    }
}

impl Ask {
    fn with<T>(&self, f: impl FnOnce(&PresenceRequest<'_>) -> T) -> T {
        f(&PresenceRequest {
            purpose: self.purpose,
            rp_id: Some(self.rp_id),
            user_name: self.user,
            message: self.message,
            timeout: self.timeout,
        })
    }
}

/// The core's calls, made on a blocking thread as the transport makes them.
/// (The futures own a clone of the prompt, so they can be spawned.)
pub fn presence(
    prompt: &AgentPrompt,
    ask: Ask,
    signals: Arc<TransactionSignals>,
) -> impl Future<Output = PromptOutcome> + 'static {
    let mut prompt = prompt.clone();
    async move { tokio::task::spawn_blocking(move || ask.with(|r| prompt.request_presence(r, &signals))).await.unwrap() }
}

pub fn verification(
    prompt: &AgentPrompt,
    ask: Ask,
    pin_available: bool,
    signals: Arc<TransactionSignals>,
) -> impl Future<Output = VerificationOutcome> + 'static {
    let mut prompt = prompt.clone();
    async move {
        tokio::task::spawn_blocking(move || ask.with(|r| prompt.request_verification(r, pin_available, &signals)))
            .await
            .unwrap()
    }
}

pub async fn selection(
    prompt: &AgentPrompt,
    ask: Ask,
    accounts: Vec<String>,
    signals: Arc<TransactionSignals>,
) -> Option<Result<usize, PromptOutcome>> {
    let mut prompt = prompt.clone();
    tokio::task::spawn_blocking(move || ask.with(|r| prompt.select_credential(r, &accounts, &signals))).await.unwrap()
}

pub async fn verification_available(prompt: &AgentPrompt) -> bool {
    let prompt = prompt.clone();
    tokio::task::spawn_blocking(move || prompt.verification_available()).await.unwrap()
}

/// `dbus-send --print-reply` on `address`, as root or (Some(uid)) under
/// setpriv as another user. Returns whether it succeeded, and its output.
pub async fn dbus_send(
    address: &str,
    uid: Option<u32>,
    dest: &str,
    path: &str,
    method: &str,
    args: &[&str],
) -> (bool, String) {
    let mut command = match uid {
        Some(uid) => {
            let mut c = Command::new("setpriv");
            c.args([&format!("--reuid={uid}"), &format!("--regid={uid}"), "--clear-groups", "dbus-send"]);
            c
        }
        None => Command::new("dbus-send"),
    };
    command.args([&format!("--bus={address}"), "--print-reply", &format!("--dest={dest}"), path, method]).args(args);
    let output =
        tokio::task::spawn_blocking(move || command.output()).await.unwrap().expect("setpriv and dbus-send run");
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    (output.status.success(), text)
}

pub fn signals() -> Arc<TransactionSignals> {
    Arc::new(TransactionSignals::new())
}
