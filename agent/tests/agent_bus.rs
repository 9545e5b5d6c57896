//! fidoseal-agent on a real bus: each test starts its own dbus-daemon
//! (standing in for the system bus), a fake fidoseald (a zbus service that
//! owns org.fidoseal.Fidoseal1 and serves AgentManager1), and the real
//! agent binary with the scripted pinentry (tests/agent/scripted-pinentry).
//!
//! Needs dbus-daemon and python3 (scripts/install-deps installs both).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fidoseal_dbus::{detail, Agent1Proxy, Details, Error, BUS_NAME, DEFAULT_AGENT_PATH, OBJECT_PATH};
use tokio::sync::mpsc;
use zbus::message::Header;
use zbus::zvariant::ObjectPath;

const REPO: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
/// "At once": far below any prompt timeout used here (30 s).
const PROMPT: Duration = Duration::from_secs(3);
/// How long to wait for something that should happen soon, on a loaded machine.
const SOON: Duration = Duration::from_secs(20);

fn require(tool: &str) {
    let found = std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|d| d.join(tool).is_file()))
        .unwrap_or(false);
    assert!(found, "{tool} not found: run scripts/install-deps (as root) to install what the agent tests need");
}

fn test_dir(name: &str) -> PathBuf {
    static N: AtomicU32 = AtomicU32::new(0);
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!(
        "agent-{name}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A private bus, configured like a system bus that lets everyone do everything.
struct Bus {
    child: Child,
    address: String,
}

impl Bus {
    fn start(dir: &Path) -> Bus {
        require("dbus-daemon");
        let config = dir.join("bus.conf");
        std::fs::write(
            &config,
            format!(
                r#"<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <listen>unix:path={}/system_bus_socket</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <allow own="*"/>
    <allow send_type="method_call"/>
    <allow send_type="method_return"/>
    <allow send_type="error"/>
    <allow send_type="signal"/>
    <allow receive_type="method_call"/>
    <allow receive_type="method_return"/>
    <allow receive_type="error"/>
    <allow receive_type="signal"/>
  </policy>
</busconfig>
"#,
                dir.display()
            ),
        )
        .unwrap();
        let mut child = Command::new("dbus-daemon")
            .arg(format!("--config-file={}", config.display()))
            .args(["--nofork", "--nopidfile", "--print-address=1"])
            .stdout(Stdio::piped())
            .spawn()
            .expect("dbus-daemon starts");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let address = line.trim().to_owned();
        assert!(!address.is_empty(), "dbus-daemon printed no address");
        Bus { child, address }
    }

    async fn connect(&self) -> zbus::Connection {
        zbus::connection::Builder::address(self.address.as_str()).unwrap().build().await.unwrap()
    }
}

impl Drop for Bus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What RegisterAgent saw.
#[derive(Debug, Clone)]
struct Registration {
    sender: String,
    path: String,
}

struct FakeManager {
    tx: mpsc::UnboundedSender<Registration>,
    /// RegisterAgent calls to refuse (NotActive) before accepting; u32::MAX:
    /// refuse every one with NotPermitted (not the device's user).
    refusals: Arc<AtomicU32>,
    attempts: Arc<AtomicU32>,
    /// CancelRequest calls, by request id.
    stopped: mpsc::UnboundedSender<u64>,
}

#[zbus::interface(name = "org.fidoseal.AgentManager1")]
impl FakeManager {
    async fn register_agent(&self, #[zbus(header)] hdr: Header<'_>, agent: ObjectPath<'_>) -> Result<(), Error> {
        self.attempts.fetch_add(1, Ordering::SeqCst);
        if self.refusals.load(Ordering::SeqCst) == u32::MAX {
            return Err(Error::NotPermitted("uid 1001 is not the device's user alice".into()));
        }
        let refuse = self.refusals.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok();
        if refuse {
            return Err(Error::NotActive("session 3 is not the active session of its seat".into()));
        }
        let sender = hdr.sender().map(|s| s.to_string()).unwrap_or_default();
        let _ = self.tx.send(Registration { sender, path: agent.to_string() });
        Ok(())
    }

    async fn unregister_agent(&self, _agent: ObjectPath<'_>) -> Result<(), Error> {
        Ok(())
    }

    async fn cancel_request(&self, request: u64) -> Result<(), Error> {
        let _ = self.stopped.send(request);
        Ok(())
    }
}

/// A fake fidoseald: owns the name (or waits in its queue), serves AgentManager1.
struct FakeDaemon {
    conn: zbus::Connection,
    registrations: mpsc::UnboundedReceiver<Registration>,
    refusals: Arc<AtomicU32>,
    attempts: Arc<AtomicU32>,
    stopped: mpsc::UnboundedReceiver<u64>,
}

impl FakeDaemon {
    async fn connect(bus: &Bus) -> FakeDaemon {
        let (tx, registrations) = mpsc::unbounded_channel();
        let (stop_tx, stopped) = mpsc::unbounded_channel();
        let (refusals, attempts) = (Arc::new(AtomicU32::new(0)), Arc::new(AtomicU32::new(0)));
        let manager =
            FakeManager { tx, refusals: Arc::clone(&refusals), attempts: Arc::clone(&attempts), stopped: stop_tx };
        let conn = zbus::connection::Builder::address(bus.address.as_str())
            .unwrap()
            .serve_at(OBJECT_PATH, manager)
            .unwrap()
            .build()
            .await
            .unwrap();
        FakeDaemon { conn, registrations, refusals, attempts, stopped }
    }

    async fn start(bus: &Bus) -> FakeDaemon {
        let daemon = Self::connect(bus).await;
        daemon.conn.request_name(BUS_NAME).await.expect("the fake daemon owns the name");
        daemon
    }

    async fn registration(&mut self) -> Registration {
        tokio::time::timeout(SOON, self.registrations.recv()).await.expect("the agent registers").unwrap()
    }

    async fn agent<'a>(&self, reg: &Registration) -> Agent1Proxy<'a> {
        Agent1Proxy::builder(&self.conn)
            .destination(reg.sender.clone())
            .unwrap()
            .path(reg.path.clone())
            .unwrap()
            .build()
            .await
            .unwrap()
    }
}

/// The agent binary, run with the scripted pinentry.
struct AgentProc {
    child: Child,
    dir: PathBuf,
}

impl AgentProc {
    fn start(dir: &Path, bus: &Bus, extra_args: &[&str]) -> AgentProc {
        Self::start_with_env(dir, bus, extra_args, &[])
    }

    fn start_with_env(dir: &Path, bus: &Bus, extra_args: &[&str], env: &[(&str, &str)]) -> AgentProc {
        let log = std::fs::File::create(dir.join("agent.log")).unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_fidoseal-agent"));
        cmd.env("DBUS_SYSTEM_BUS_ADDRESS", &bus.address)
            .env("FIDOSEAL_PINENTRY", scripted_pinentry(dir))
            .env("FIDOSEAL_PINENTRY_SCRIPT", dir.join("script"))
            .env("FIDOSEAL_PINENTRY_LOG", dir.join("pinentry.log"))
            .env("RUST_LOG", "trace")
            .env_remove("JOURNAL_STREAM")
            .env_remove("GPG_TTY")
            .envs(env.iter().copied())
            .args(extra_args)
            .stdout(Stdio::null())
            .stderr(log);
        AgentProc { child: cmd.spawn().expect("fidoseal-agent starts"), dir: dir.to_owned() }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("agent.log")).unwrap_or_default()
    }

    /// Waits for the agent to log `needle`.
    async fn wait_log(&self, needle: &str) {
        let start = Instant::now();
        while !self.log().contains(needle) {
            assert!(start.elapsed() < SOON, "the agent never logged {needle:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for AgentProc {
    fn drop(&mut self) {
        // SIGTERM first, so the agent closes its pinentries as it would under systemd.
        // SAFETY: kill(2) on our own child, not yet reaped.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(2) && matches!(self.child.try_wait(), Ok(None)) {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("---- agent log ----\n{}", self.log());
            eprintln!("---- pinentry log ----\n{}", read(&self.dir.join("pinentry.log")));
            eprintln!("---- left in the script ----\n{}", read(&self.dir.join("script")));
            eprintln!("(kept in {})", self.dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// The scripted pinentry, behind a wrapper that runs it with the system's
/// python3 directly: through a version manager's shim (pyenv) each start
/// costs more than half a second, which adds up and makes timings noisy.
fn scripted_pinentry(dir: &Path) -> PathBuf {
    let python = ["/usr/bin/python3", "/usr/local/bin/python3"].into_iter().find(|p| Path::new(p).is_file());
    let python = match python {
        Some(p) => p.to_owned(),
        None => {
            require("python3");
            "python3".to_owned()
        }
    };
    let wrapper = dir.join("pinentry");
    std::fs::write(&wrapper, format!("#!/bin/sh\nexec {python} {REPO}/tests/agent/scripted-pinentry \"$@\"\n"))
        .unwrap();
    let mut perms = std::fs::metadata(&wrapper).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o755);
    std::fs::set_permissions(&wrapper, perms).unwrap();
    wrapper
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_default()
}

/// Bus, fake daemon and agent, registered.
struct Env {
    dir: PathBuf,
    daemon: FakeDaemon,
    reg: Registration,
    agent: AgentProc,
    // Dropped last: the others need the bus.
    bus: Bus,
}

impl Env {
    async fn start(name: &str) -> Env {
        Self::start_with(name, &[]).await
    }

    async fn start_with(name: &str, args: &[&str]) -> Env {
        Self::start_with_env(name, args, &[]).await
    }

    async fn start_with_env(name: &str, args: &[&str], env: &[(&str, &str)]) -> Env {
        let dir = test_dir(name);
        let bus = Bus::start(&dir);
        let mut daemon = FakeDaemon::start(&bus).await;
        let agent = AgentProc::start_with_env(&dir, &bus, args, env);
        let reg = daemon.registration().await;
        Env { dir, daemon, reg, agent, bus }
    }

    /// The pinentry actions for what comes next.
    fn script(&self, actions: &[&str]) {
        std::fs::write(self.dir.join("script"), actions.iter().map(|a| format!("{a}\n")).collect::<String>()).unwrap();
    }

    fn pinentry_log(&self) -> String {
        read(&self.dir.join("pinentry.log"))
    }

    async fn proxy(&self) -> Agent1Proxy<'static> {
        self.daemon.agent(&self.reg).await
    }

    /// Waits for a line of the pinentry log that contains `needle`.
    async fn wait_pinentry(&self, needle: &str) {
        self.wait_pinentry_times(needle, 1).await
    }

    /// Waits until `needle` is in the pinentry log `times` times.
    async fn wait_pinentry_times(&self, needle: &str, times: usize) {
        let start = Instant::now();
        while self.pinentry_log().matches(needle).count() < times {
            assert!(start.elapsed() < SOON, "pinentry never logged {needle:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The pids of the pinentries started so far.
    fn pinentry_pids(&self) -> Vec<u32> {
        self.pinentry_log().lines().filter_map(|l| l.strip_prefix("START ")).map(|p| p.parse().unwrap()).collect()
    }
}

fn details(rp: &str, action: &str) -> Details {
    let mut d = Details::new();
    d.insert("rp_id".into(), detail(rp));
    d.insert("action".into(), detail(action));
    d.insert("timeout_ms".into(), detail(30_000u32));
    d
}

fn error_name<T: std::fmt::Debug>(r: zbus::Result<T>) -> String {
    match r {
        Err(zbus::Error::MethodError(name, _, _)) => name.to_string(),
        other => panic!("expected a D-Bus error, got {other:?}"),
    }
}

fn error_text<T: std::fmt::Debug>(r: zbus::Result<T>) -> (String, String) {
    match r {
        Err(zbus::Error::MethodError(name, text, _)) => (name.to_string(), text.unwrap_or_default()),
        other => panic!("expected a D-Bus error, got {other:?}"),
    }
}

/// Alive and not a zombie.
fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat.rsplit_once(") ").map(|(_, rest)| !rest.starts_with('Z')).unwrap_or(false),
        Err(_) => false,
    }
}

async fn wait_dead(pid: u32) {
    let start = Instant::now();
    while alive(pid) {
        assert!(start.elapsed() < PROMPT, "pinentry {pid} still runs");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn timed<T>(f: impl std::future::Future<Output = T>) -> (T, Duration) {
    let start = Instant::now();
    let out = tokio::time::timeout(Duration::from_secs(20), f).await.expect("the call answers within 20 s");
    (out, start.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registers_with_the_daemon() {
    let env = Env::start("registers").await;
    assert_eq!(env.reg.path, DEFAULT_AGENT_PATH);
    assert!(env.reg.sender.starts_with(':'));
    env.agent.wait_log("registered with fidoseald").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waits_for_the_daemon_then_registers() {
    let dir = test_dir("waits");
    let bus = Bus::start(&dir);
    let agent = AgentProc::start(&dir, &bus, &[]);
    agent.wait_log("waiting for it to appear").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut daemon = FakeDaemon::start(&bus).await;
    let reg = daemon.registration().await;
    assert_eq!(reg.path, DEFAULT_AGENT_PATH);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn re_registers_when_the_daemon_restarts() {
    let Env { dir, daemon, reg, agent, bus } = Env::start("restart").await;
    // The daemon goes away; a new one takes the name.
    drop(daemon);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut second = FakeDaemon::start(&bus).await;
    let reg2 = second.registration().await;
    assert_eq!(reg2.sender, reg.sender, "the same agent");
    assert_eq!(reg2.path, DEFAULT_AGENT_PATH);
    // The old daemon's connection may not call any more; the new one may.
    let (env_script, proxy) = (dir.join("script"), second.agent(&reg2).await);
    std::fs::write(&env_script, "ok\n").unwrap();
    proxy.request_presence(1, details("example.com", "sign-in")).await.expect("the new daemon is obeyed");

    // The name passes straight to another connection, with no moment
    // without an owner (queued, or replacing: zbus asks with ReplaceExisting).
    let mut third = FakeDaemon::connect(&bus).await;
    let reply = third.conn.request_name_with_flags(BUS_NAME, Default::default()).await.unwrap();
    if matches!(reply, zbus::fdo::RequestNameReply::InQueue) {
        second.conn.release_name(BUS_NAME).await.unwrap();
    }
    let reg3 = third.registration().await;
    assert_eq!(reg3.sender, reg.sender);
    // The previous owner is still connected, but may not call any more.
    let old = second.agent(&reg2).await;
    let refused = old.request_presence(2, details("example.com", "sign-in")).await;
    assert_eq!(error_name(refused), "org.fidoseal.Error.NotPermitted");
    drop(agent);
    drop(bus);
}

/// A session's Active property changing, as logind announces it.
async fn emit_session_active(conn: &zbus::Connection, active: bool) {
    emit_session_property(conn, "Active", active).await
}

async fn emit_session_property(conn: &zbus::Connection, property: &str, value: bool) {
    let changed = std::collections::HashMap::from([(property, zbus::zvariant::Value::from(value))]);
    conn.emit_signal(
        None::<()>,
        "/org/freedesktop/login1/session/_33",
        "org.freedesktop.DBus.Properties",
        "PropertiesChanged",
        &("org.freedesktop.login1.Session", changed, Vec::<String>::new()),
    )
    .await
    .unwrap();
}

/// Registered from an inactive session (refused), the agent registers when
/// logind says a session changed: switching back to the desktop is enough.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_then_registers_when_a_login_session_changes() {
    let dir = test_dir("session-change");
    let bus = Bus::start(&dir);
    let mut daemon = FakeDaemon::connect(&bus).await;
    daemon.refusals.store(2, Ordering::SeqCst);
    daemon.conn.request_name(BUS_NAME).await.unwrap();
    let agent = AgentProc::start(&dir, &bus, &[]);
    agent.wait_log("fidoseald refused the registration; trying again when a login session changes").await;
    assert_eq!(daemon.attempts.load(Ordering::SeqCst), 1, "a refusal is not retried on a timer");

    // The same signal from a client that is not logind changes nothing ...
    let impostor = bus.connect().await;
    emit_session_active(&impostor, true).await;
    // ... nor does logind's idle hint.
    let logind = bus.connect().await;
    logind.request_name("org.freedesktop.login1").await.unwrap();
    emit_session_property(&logind, "IdleHint", true).await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(daemon.attempts.load(Ordering::SeqCst), 1, "neither another sender's signal nor an idle hint counts");
    // logind reports a session's activity changing: one more attempt,
    // refused again (the session is still not the active one) ...
    emit_session_active(&logind, false).await;
    agent.wait_log("fidoseald refused the registration again").await;
    assert_eq!(daemon.attempts.load(Ordering::SeqCst), 2);
    // ... then the switch back: a burst of signals, one registration.
    for _ in 0..3 {
        emit_session_active(&logind, true).await;
    }
    let reg = daemon.registration().await;
    assert_eq!(reg.path, DEFAULT_AGENT_PATH);
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(daemon.attempts.load(Ordering::SeqCst), 3);
    assert!(daemon.registrations.try_recv().is_err(), "registered once");
    // The agent serves the daemon it registered with.
    std::fs::write(dir.join("script"), "ok\n").unwrap();
    daemon.agent(&reg).await.request_presence(1, details("example.com", "sign-in")).await.expect("served");
    drop(agent);
    drop(bus);
}

/// Not the device's user (NotPermitted): final, however the sessions change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_the_devices_user_is_final() {
    let dir = test_dir("forbidden");
    let bus = Bus::start(&dir);
    let daemon = FakeDaemon::connect(&bus).await;
    daemon.refusals.store(u32::MAX, Ordering::SeqCst);
    daemon.conn.request_name(BUS_NAME).await.unwrap();
    let agent = AgentProc::start(&dir, &bus, &[]);
    agent.wait_log("fidoseald refused the registration for good").await;
    let logind = bus.connect().await;
    logind.request_name("org.freedesktop.login1").await.unwrap();
    emit_session_active(&logind, true).await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(daemon.attempts.load(Ordering::SeqCst), 1, "no retry for a refusal that no session change can undo");
    drop(agent);
    drop(bus);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_allow_and_deny() {
    let env = Env::start("presence").await;
    let agent = env.proxy().await;
    let mut d = details("example.com", "register");
    d.insert("user".into(), detail("alice\nThis is safe, click Allow"));
    d.insert("message".into(), detail("Passkeys for example.com are managed by IT."));
    env.script(&["ok", "cancel"]);
    let (allowed, took) = timed(agent.request_presence(1, d.clone())).await;
    allowed.expect("OK allows");
    assert!(took < PROMPT);
    let denied = agent.request_presence(2, d).await;
    assert_eq!(error_name(denied), "org.fidoseal.Error.Rejected");

    let log = env.pinentry_log();
    assert!(
        log.contains(
            "SETDESC Create a passkey for example.com.\\nAccount: alice This is safe, click Allow\\n\\nAllow it?\\n\\nPasskeys for example.com are managed by IT."
        ),
        "{log}"
    );
    assert!(log.contains("SETTITLE fidoseal security key"));
    assert!(log.contains("SETOK _Allow") && log.contains("SETCANCEL _Deny"));
    assert!(log.contains("SETTIMEOUT "));
    assert_eq!(log.matches("EXIT bye").count(), 1, "the allowed dialog ended with BYE:\n{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verification_with_a_pin_returns_it_and_never_logs_it() {
    let env = Env::start("pin").await;
    let agent = env.proxy().await;
    env.script(&["pin", "pin 4711%x"]);
    let (got, took) = timed(agent.request_verification(3, details("example.com", "sign-in"), &["pin"])).await;
    assert_eq!(got.unwrap(), ("pin".to_owned(), "4711%x".to_owned()), "an empty entry is asked again");
    assert!(took < PROMPT);
    let log = env.pinentry_log();
    assert!(log.contains("SETPROMPT PIN:"));
    assert!(log.contains("SETERROR Nothing was entered."));
    // The PIN as entered and as pinentry sends it (percent-encoded); digits
    // alone would also match timestamps (…50.814711Z).
    let agent_log = env.agent.log();
    assert!(
        !agent_log.contains("4711%x") && !agent_log.contains("4711%25x"),
        "the PIN is in the agent's log (RUST_LOG=trace)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verification_lets_the_user_pick_a_method() {
    let env = Env::start("methods").await;
    let agent = env.proxy().await;
    env.script(&["notok", "notok", "pin hunter2"]);
    let got = agent
        .request_verification(4, details("example.com", "sign-in"), &["fingerprint", "pin", "password", "retina"])
        .await
        .unwrap();
    assert_eq!(got, ("password".to_owned(), "hunter2".to_owned()));
    let log = env.pinentry_log();
    let order: Vec<&str> = log.lines().filter(|l| l.starts_with("SETOK ") || l.starts_with("SETNOTOK ")).collect();
    assert_eq!(
        order,
        ["SETOK Fingerprint", "SETNOTOK Other method…", "SETOK PIN", "SETNOTOK Password", "SETOK _OK"],
        "{log}"
    );
    assert!(log.contains("SETPROMPT Password:"));
    assert_eq!(env.pinentry_pids().len(), 1, "one pinentry session for choice and entry");
    env.agent.wait_log("ignoring an unknown verification method").await;

    env.script(&["ok", "pin pw"]);
    let got = agent.request_verification(5, details("example.com", "sign-in"), &["password", "pin"]).await;
    assert_eq!(got.unwrap().0, "password", "OK picks the first method offered");
    let none = agent.request_verification(6, details("example.com", "sign-in"), &["retina"]).await;
    assert_eq!(error_name(none), "org.fidoseal.Error.Failed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fingerprint_answers_at_once_and_cancel_closes_its_prompt() {
    let mut env = Env::start("fingerprint").await;
    let agent = env.proxy().await;
    env.script(&["hang"]);
    let (got, took) = timed(agent.request_verification(7, details("example.com", "sign-in"), &["fingerprint"])).await;
    assert_eq!(got.unwrap(), ("fingerprint".to_owned(), String::new()));
    assert!(took < PROMPT);
    env.wait_pinentry("ACTION MESSAGE hang").await;
    assert!(env.pinentry_log().contains("Touch the fingerprint sensor."));
    let pid = env.pinentry_pids()[0];
    assert!(alive(pid), "the prompt stays up while the daemon runs fprintd");
    agent.cancel(7).await.unwrap();
    wait_dead(pid).await;

    // The next call for the same request closes it too (here: the PIN after a failed finger).
    env.script(&["hang", "pin 1234"]);
    agent.request_verification(8, details("example.com", "sign-in"), &["fingerprint"]).await.unwrap();
    env.wait_pinentry_times("ACTION MESSAGE hang", 2).await;
    let pid = *env.pinentry_pids().last().unwrap();
    let got = agent.request_verification(8, details("example.com", "sign-in"), &["pin"]).await.unwrap();
    assert_eq!(got.1, "1234");
    wait_dead(pid).await;
    // Closed by the daemon, not by the user: nothing to stop.
    assert!(env.daemon.stopped.try_recv().is_err(), "no CancelRequest for a prompt the daemon closed");
}

/// The fingerprint prompt's button is Cancel: the user stops the scan, and
/// the agent tells the daemon that asked (AgentManager1.CancelRequest).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_the_fingerprint_prompt_stops_the_request() {
    let mut env = Env::start("finger-stop").await;
    let agent = env.proxy().await;
    // The window closed by hand ...
    env.script(&["cancel"]);
    agent.request_verification(32, details("example.com", "sign-in"), &["fingerprint"]).await.unwrap();
    env.wait_pinentry("ACTION MESSAGE cancel").await;
    assert!(env.pinentry_log().contains("SETOK _Cancel"));
    let stopped = tokio::time::timeout(SOON, env.daemon.stopped.recv()).await.expect("CancelRequest sent");
    assert_eq!(stopped, Some(32));

    env.script(&["ok"]);
    agent.request_verification(33, details("example.com", "sign-in"), &["fingerprint"]).await.unwrap();
    let stopped = tokio::time::timeout(SOON, env.daemon.stopped.recv()).await.expect("CancelRequest sent");
    assert_eq!(stopped, Some(33), "... or its Cancel button");
    assert!(env.daemon.stopped.try_recv().is_err(), "once per request");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_while_the_pinentry_hangs() {
    let env = Env::start("cancel").await;
    let agent = env.proxy().await;
    env.script(&["hang"]);
    let call = {
        let agent = agent.clone();
        tokio::spawn(async move { agent.request_presence(9, details("example.com", "sign-in")).await })
    };
    env.wait_pinentry("ACTION CONFIRM hang").await;
    let pid = env.pinentry_pids()[0];
    let start = Instant::now();
    agent.cancel(9).await.unwrap();
    let answer = tokio::time::timeout(PROMPT, call).await.expect("answered at once after Cancel").unwrap();
    assert_eq!(error_name(answer), "org.fidoseal.Error.Canceled");
    assert!(start.elapsed() < PROMPT, "took {:?}", start.elapsed());
    wait_dead(pid).await;

    // A Cancel for a request with nothing open is harmless.
    agent.cancel(12345).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_pinentry_answers_at_once() {
    let env = Env::start("failing").await;
    let agent = env.proxy().await;
    for (action, expect) in [
        ("eof", "pinentry closed the connection"),
        ("die-at-start", "cannot open display"),
        ("err", "General error"),
        ("timeout", "no answer in time"),
    ] {
        env.script(&[action]);
        let (answer, took) = timed(agent.request_presence(10, details("example.com", "sign-in"))).await;
        let (name, text) = error_text(answer);
        assert_eq!(name, "org.fidoseal.Error.Canceled", "{action}");
        assert!(text.contains(expect), "{action}: {text}");
        assert!(took < PROMPT, "{action} took {took:?}");
        let (answer, _) = timed(agent.request_verification(11, details("example.com", "sign-in"), &["pin"])).await;
        assert!(answer.is_err(), "{action}: verification must fail too");
    }
    env.agent.wait_log("pinentry failed").await;
    for pid in env.pinentry_pids() {
        wait_dead(pid).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_pinentry_answers_at_once() {
    let env = Env::start_with("missing", &["--pinentry", "/nonexistent/pinentry"]).await;
    let agent = env.proxy().await;
    let (answer, took) = timed(agent.request_presence(1, details("example.com", "sign-in"))).await;
    let (name, text) = error_text(answer);
    assert_eq!(name, "org.fidoseal.Error.Canceled");
    assert!(text.contains("cannot start /nonexistent/pinentry"), "{text}");
    assert!(took < PROMPT);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_deadline_closes_a_hung_pinentry() {
    let env = Env::start("deadline").await;
    let agent = env.proxy().await;
    env.script(&["hang"]);
    let mut d = details("example.com", "sign-in");
    d.insert("timeout_ms".into(), detail(1000u32));
    let (answer, took) = timed(agent.request_presence(1, d)).await;
    let (name, text) = error_text(answer);
    assert_eq!((name.as_str(), text.as_str()), ("org.fidoseal.Error.Canceled", "no answer in time"));
    assert!(took >= Duration::from_secs(1) && took < PROMPT, "{took:?}");
    for pid in env.pinentry_pids() {
        wait_dead(pid).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn select_credential_returns_the_chosen_index() {
    let env = Env::start("select").await;
    let agent = env.proxy().await;
    let d = details("example.com", "sign-in");

    env.script(&["notok"]);
    assert_eq!(agent.select_credential(1, d.clone(), &["alice", "bob_b"]).await.unwrap(), 1);
    let log = env.pinentry_log();
    assert!(log.contains("SETOK 1) alice") && log.contains("SETNOTOK 2) bob__b"), "{log}");

    env.script(&["pin 7", "pin  3 "]);
    assert_eq!(agent.select_credential(2, d.clone(), &["alice", "bob", "carol"]).await.unwrap(), 2);
    let log = env.pinentry_log();
    assert!(log.contains("Several passkeys match. Which one?\\n1) alice\\n2) bob\\n3) carol"), "{log}");
    assert!(log.contains("SETPROMPT Number:") && log.contains("SETERROR Type a number from 1 to 3."));

    // A pinentry without SETNOTOK: two accounts are chosen by number.
    env.script(&["no-notok", "pin 2"]);
    assert_eq!(agent.select_credential(3, d.clone(), &["alice", "bob"]).await.unwrap(), 1);

    env.script(&["ok"]);
    assert_eq!(agent.select_credential(4, d.clone(), &["alice"]).await.unwrap(), 0);

    env.script(&["cancel"]);
    let none = agent.select_credential(5, d.clone(), &["alice", "bob", "carol"]).await;
    assert_eq!(error_name(none), "org.fidoseal.Error.Rejected");

    let many: Vec<String> = (0..40).map(|i| format!("user{i}@example.com")).collect();
    let many: Vec<&str> = many.iter().map(String::as_str).collect();
    env.script(&["pin 40"]);
    assert_eq!(agent.select_credential(6, d, &many).await.unwrap(), 39);
    assert!(env.pinentry_log().contains("more (numbers"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuses_callers_other_than_the_daemon() {
    let env = Env::start("intruder").await;
    env.script(&["ok", "ok"]);
    let intruder = env.bus.connect().await;
    let proxy = Agent1Proxy::builder(&intruder)
        .destination(env.reg.sender.clone())
        .unwrap()
        .path(DEFAULT_AGENT_PATH)
        .unwrap()
        .build()
        .await
        .unwrap();
    let refused = proxy.request_presence(1, details("evil.example", "sign-in")).await;
    assert_eq!(error_name(refused), "org.fidoseal.Error.NotPermitted");
    assert_eq!(
        error_name(proxy.request_verification(1, details("evil.example", "sign-in"), &["pin"]).await),
        "org.fidoseal.Error.NotPermitted"
    );
    assert_eq!(
        error_name(proxy.select_credential(1, details("evil.example", "sign-in"), &["a", "b"]).await),
        "org.fidoseal.Error.NotPermitted"
    );
    assert_eq!(error_name(proxy.show_failure(1, "x", 1).await), "org.fidoseal.Error.NotPermitted");
    assert_eq!(error_name(proxy.cancel(1).await), "org.fidoseal.Error.NotPermitted");
    assert!(env.pinentry_pids().is_empty(), "no dialog for an intruder");
    env.agent.wait_log("refused a call from a connection that is not fidoseald").await;

    // An intruder's Cancel does not close the daemon's dialog.
    env.script(&["hang"]);
    let agent = env.proxy().await;
    let call = {
        let agent = agent.clone();
        tokio::spawn(async move { agent.request_presence(2, details("example.com", "sign-in")).await })
    };
    env.wait_pinentry("ACTION CONFIRM hang").await;
    assert!(proxy.cancel(2).await.is_err());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!call.is_finished());
    agent.cancel(2).await.unwrap();
    assert_eq!(error_name(call.await.unwrap()), "org.fidoseal.Error.Canceled");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn show_failure_appears_on_the_next_dialog_or_alone() {
    let env = Env::start("failure").await;
    let agent = env.proxy().await;
    env.script(&["pin 0000"]);
    agent.show_failure(5, "Wrong PIN.", 7).await.unwrap();
    let got = agent.request_verification(5, details("example.com", "sign-in"), &["pin"]).await.unwrap();
    assert_eq!(got.1, "0000");
    assert!(env.pinentry_log().contains("SETERROR Wrong PIN. (7 attempts left)"));
    assert_eq!(env.pinentry_pids().len(), 1, "no separate window when a dialog follows");

    // No dialog follows: the message gets its own window, and ShowFailure
    // does not wait for the user to close it (the window never closes here).
    env.script(&["hang"]);
    let (shown, took) = timed(agent.show_failure(6, "Fingerprint not recognised.", 2)).await;
    shown.unwrap();
    assert!(took < PROMPT, "ShowFailure does not wait for the user");
    env.wait_pinentry("ACTION MESSAGE hang").await;
    assert!(env.pinentry_log().contains("SETDESC Fingerprint not recognised. (2 attempts left)"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_leaving_closes_its_dialogs() {
    let Env { dir, daemon, reg, agent, bus } = Env::start("leaving").await;
    std::fs::write(dir.join("script"), "hang\n").unwrap();
    let proxy = daemon.agent(&reg).await;
    let _call = tokio::spawn(async move { proxy.request_presence(1, details("example.com", "sign-in")).await });
    let start = Instant::now();
    while !read(&dir.join("pinentry.log")).contains("ACTION CONFIRM hang") {
        assert!(start.elapsed() < SOON);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let pid: u32 =
        read(&dir.join("pinentry.log")).lines().find_map(|l| l.strip_prefix("START ")).unwrap().parse().unwrap();
    daemon.conn.release_name(BUS_NAME).await.unwrap();
    wait_dead(pid).await;
    drop(agent);
    drop(bus);
}

/// A pseudo-terminal for pinentry-curses: the test plays the user at the
/// master side.
struct Pty {
    master: std::fs::File,
    _slave: std::os::fd::OwnedFd,
    name: String,
}

impl Pty {
    fn open() -> Pty {
        use std::os::fd::FromRawFd;
        let (mut master, mut slave) = (-1, -1);
        // SAFETY: openpty fills two fds; name, termios and winsize may be null.
        let rc =
            unsafe { libc::openpty(&mut master, &mut slave, std::ptr::null_mut(), std::ptr::null(), std::ptr::null()) };
        assert_eq!(rc, 0, "openpty: {}", std::io::Error::last_os_error());
        let mut buf = [0 as libc::c_char; 128];
        // SAFETY: slave is an open fd and buf is writable for its length.
        let rc = unsafe { libc::ttyname_r(slave, buf.as_mut_ptr(), buf.len()) };
        assert_eq!(rc, 0, "ttyname_r");
        // SAFETY: ttyname_r wrote a NUL-terminated string into buf.
        let name = unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) }.to_string_lossy().into_owned();
        // SAFETY: both fds are ours, open, and owned by nothing else.
        let (master, slave) = unsafe { (std::fs::File::from_raw_fd(master), std::os::fd::OwnedFd::from_raw_fd(slave)) };
        Pty { master, _slave: slave, name }
    }

    /// Waits until the screen shows `text` (and has been quiet for a moment),
    /// then types `keys`.
    fn answer(&mut self, text: &str, keys: &[u8]) -> String {
        use std::io::{Read, Write};
        use std::os::fd::AsRawFd;
        let mut screen = Vec::new();
        let start = Instant::now();
        let mut last = Instant::now();
        loop {
            let mut pfd = libc::pollfd { fd: self.master.as_raw_fd(), events: libc::POLLIN, revents: 0 };
            // SAFETY: one valid pollfd.
            let n = unsafe { libc::poll(&mut pfd, 1, 50) };
            if n > 0 {
                let mut buf = [0u8; 4096];
                let got = self.master.read(&mut buf).unwrap_or(0);
                screen.extend_from_slice(&buf[..got]);
                last = Instant::now();
            } else if String::from_utf8_lossy(&screen).contains(text) && last.elapsed() > Duration::from_millis(300) {
                break;
            }
            assert!(
                start.elapsed() < SOON,
                "the terminal never showed {text:?}: {:?}",
                String::from_utf8_lossy(&screen)
            );
        }
        self.master.write_all(keys).unwrap();
        String::from_utf8_lossy(&screen).into_owned()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_pinentry_curses_on_a_terminal() {
    require("pinentry-curses");
    let mut pty = Pty::open();
    let tty = pty.name.clone();
    let env = Env::start_with_env(
        "curses",
        &["--pinentry", "pinentry-curses"],
        &[("GPG_TTY", tty.as_str()), ("TERM", "xterm"), ("LC_ALL", "C.UTF-8")],
    )
    .await;
    let agent = env.proxy().await;
    let user = std::thread::spawn(move || {
        let first = pty.answer("example.com", b"\r"); // Enter on the default button: Allow
        let second = pty.answer("PIN", b"2468\r");
        (first, second)
    });
    let mut d = details("example.com", "sign-in");
    d.insert("user".into(), detail("alice"));
    agent.request_presence(1, d.clone()).await.expect("Enter allows");
    let got = agent.request_verification(2, d, &["pin"]).await.unwrap();
    assert_eq!(got, ("pin".to_owned(), "2468".to_owned()));
    let (first, second) = user.join().unwrap();
    assert!(first.contains("Allow") && first.contains("alice"), "{first}");
    assert!(second.contains("Enter the PIN"), "{second}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_killed_mid_prompt_takes_its_pinentry_along() {
    let mut env = Env::start("killed").await;
    let agent = env.proxy().await;
    env.script(&["hang"]);
    let call = {
        let agent = agent.clone();
        tokio::spawn(async move { agent.request_presence(1, details("example.com", "sign-in")).await })
    };
    env.wait_pinentry("ACTION CONFIRM hang").await;
    let pid = env.pinentry_pids()[0];
    env.agent.child.kill().unwrap(); // SIGKILL: no cleanup of its own
    env.agent.child.wait().unwrap();
    wait_dead(pid).await;
    // What the daemon sees: the bus answers for the vanished agent at once.
    let answer = tokio::time::timeout(PROMPT, call).await.expect("the bus answers").unwrap();
    assert_eq!(error_name(answer), "org.freedesktop.DBus.Error.NoReply");
}

/// fidoseald's order when a finger does not match: ShowFailure, then Cancel
/// of the same request; the browser then retries with a new request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_finger_then_cancel_still_shows_the_failure() {
    let env = Env::start("finger-failed").await;
    let agent = env.proxy().await;
    // Chooser: Fingerprint; "touch the sensor" stays up; the failure's
    // window stays up; then the retry's PIN.
    env.script(&["ok", "hang", "hang", "pin 1357"]);
    let got = agent.request_verification(21, details("example.com", "sign-in"), &["fingerprint", "pin"]);
    let got = tokio::time::timeout(SOON, got).await.unwrap().unwrap();
    assert_eq!(got.0, "fingerprint");
    env.wait_pinentry("ACTION MESSAGE hang").await;
    let finger_pid = *env.pinentry_pids().last().unwrap();

    agent.show_failure(21, "The fingerprint did not match.", 2).await.unwrap();
    agent.inner().call_noreply("Cancel", &(21u64,)).await.unwrap();
    wait_dead(finger_pid).await;
    // No dialog follows at once: the failure gets its own window ...
    env.wait_pinentry("SETDESC The fingerprint did not match. (2 attempts left)").await;
    // ... (which has taken its "hang" from the script before the retry comes:
    // the retry's pinentry must get the PIN, not the window's action) ...
    env.wait_pinentry_times("ACTION MESSAGE hang", 2).await;
    let window_pid = *env.pinentry_pids().last().unwrap();
    assert!(alive(window_pid));
    // ... which the retry's dialog closes, showing the failure inline.
    let got = agent.request_verification(22, details("example.com", "sign-in"), &["pin"]).await.unwrap();
    assert_eq!(got, ("pin".to_owned(), "1357".to_owned()));
    wait_dead(window_pid).await;
    assert!(env.pinentry_log().contains("SETERROR The fingerprint did not match. (2 attempts left)"));
}

/// Method → [(direction, name, type)] of `interface` in an introspection document.
fn interface_methods(xml: &str, interface: &str) -> std::collections::BTreeMap<String, Vec<(String, String, String)>> {
    fn attr(tag: &str, name: &str) -> Option<String> {
        let tag = tag.split('>').next().unwrap_or(tag);
        let at = tag.find(&format!("{name}=\""))? + name.len() + 2;
        Some(tag[at..at + tag[at..].find('"')?].to_owned())
    }
    let mut xml = xml.to_owned();
    while let Some(open) = xml.find("<!--") {
        let close = xml[open..].find("-->").map_or(xml.len(), |c| open + c + 3);
        xml.replace_range(open..close, "");
    }
    let start = xml.find(&format!("<interface name=\"{interface}\"")).expect("the interface is there");
    let body = &xml[start..start + xml[start..].find("</interface>").expect("it closes")];
    let mut methods = std::collections::BTreeMap::new();
    for method in body.split("<method ").skip(1) {
        let name = attr(method, "name").unwrap();
        let method = method.split("</method>").next().unwrap();
        let args = method
            .split("<arg ")
            .skip(1)
            .map(|a| {
                (
                    attr(a, "direction").unwrap_or_else(|| "in".into()),
                    attr(a, "name").unwrap_or_default(),
                    attr(a, "type").unwrap(),
                )
            })
            .collect();
        methods.insert(name, args);
    }
    methods
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_agent1_as_documented() {
    let env = Env::start("contract").await;
    let introspect = zbus::fdo::IntrospectableProxy::builder(&env.daemon.conn)
        .destination(env.reg.sender.clone())
        .unwrap()
        .path(DEFAULT_AGENT_PATH)
        .unwrap()
        .build()
        .await
        .unwrap();
    let served = interface_methods(&introspect.introspect().await.unwrap(), "org.fidoseal.Agent1");
    let document = std::fs::read_to_string(format!("{REPO}/dbus/interfaces/org.fidoseal.Agent1.xml")).unwrap();
    let documented = interface_methods(&document, "org.fidoseal.Agent1");
    assert_eq!(documented.len(), 5, "{documented:?}");
    assert_eq!(served, documented);
}
