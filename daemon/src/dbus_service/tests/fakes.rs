//! Test doubles on the test bus: a session agent with a scripted answer,
//! fprintd, polkit and logind. Each is a zbus service of its own connection.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fidoseal_dbus::{AgentManager1Proxy, Details, Error, DEFAULT_AGENT_PATH};
use tokio::sync::mpsc;
use zbus::connection::Builder;
use zbus::object_server::SignalEmitter;
use zbus::zvariant::{ObjectPath, OwnedObjectPath, OwnedValue};
use zbus::Connection;

use super::TestBus;

/// What the agent was asked, in order (all fields show in failure output).
#[allow(dead_code)]
#[derive(Debug)]
pub enum Event {
    Presence(u64, Details),
    Verification(u64, Details, Vec<String>),
    Select(u64, Details, Vec<String>),
    Cancel(u64),
    Failure(u64, String, u32),
}

impl Event {
    pub fn request(&self) -> u64 {
        match self {
            Event::Presence(r, _)
            | Event::Verification(r, _, _)
            | Event::Select(r, _, _)
            | Event::Cancel(r)
            | Event::Failure(r, _, _) => *r,
        }
    }
}

/// How the fake agent answers every request.
#[derive(Debug, Clone)]
pub enum Answer {
    /// Yes (RequestPresence returns; others return an empty answer).
    Allow,
    /// org.fidoseal.Error.Rejected.
    Deny,
    /// org.fidoseal.Error.Canceled: the user closed the window.
    Closed,
    /// Never answers.
    Never,
    /// Answers yes after a while.
    Slow(Duration),
    /// RequestVerification's (method, secret).
    Method(&'static str, &'static str),
    /// SelectCredential's index.
    Index(u32),
}

struct FakeAgent {
    answer: Answer,
    events: mpsc::UnboundedSender<Event>,
}

impl FakeAgent {
    async fn answer(&self) -> Result<Answer, Error> {
        match &self.answer {
            Answer::Deny => Err(Error::Rejected("the user said no".into())),
            Answer::Closed => Err(Error::Canceled("the user closed the prompt".into())),
            Answer::Never => std::future::pending().await,
            Answer::Slow(d) => {
                tokio::time::sleep(*d).await;
                Ok(Answer::Allow)
            }
            other => Ok(other.clone()),
        }
    }
}

#[zbus::interface(name = "org.fidoseal.Agent1")]
impl FakeAgent {
    async fn request_presence(&self, request: u64, details: Details) -> Result<(), Error> {
        let _ = self.events.send(Event::Presence(request, details));
        self.answer().await.map(|_| ())
    }

    async fn request_verification(
        &self,
        request: u64,
        details: Details,
        methods: Vec<String>,
    ) -> Result<(String, String), Error> {
        let _ = self.events.send(Event::Verification(request, details, methods));
        match self.answer().await? {
            Answer::Method(method, secret) => Ok((method.into(), secret.into())),
            _ => Ok((String::new(), String::new())),
        }
    }

    async fn select_credential(&self, request: u64, details: Details, accounts: Vec<String>) -> Result<u32, Error> {
        let _ = self.events.send(Event::Select(request, details, accounts));
        match self.answer().await? {
            Answer::Index(i) => Ok(i),
            _ => Ok(0),
        }
    }

    async fn cancel(&self, request: u64) {
        let _ = self.events.send(Event::Cancel(request));
    }

    async fn show_failure(&self, request: u64, message: String, retries_left: u32) {
        let _ = self.events.send(Event::Failure(request, message, retries_left));
    }
}

/// The fake agent's Agent1, as zbus would introspect it.
pub fn agent_introspection() -> String {
    use zbus::object_server::Interface;
    let (tx, _rx) = mpsc::unbounded_channel();
    // zbus writes the <interface> element alone; a document is a <node>.
    let mut xml = String::from("<node>");
    FakeAgent { answer: Answer::Allow, events: tx }.introspect_to_writer(&mut xml, 0);
    xml.push_str("</node>");
    xml
}

/// A session agent served on a connection of its own.
pub struct Agent {
    pub connection: Connection,
    pub events: mpsc::UnboundedReceiver<Event>,
}

impl Agent {
    /// Serves Agent1 at the default path; does not register yet.
    pub async fn start(bus: &TestBus, answer: Answer) -> Self {
        let (tx, events) = mpsc::unbounded_channel();
        let connection = Builder::address(bus.address.as_str())
            .unwrap()
            .serve_at(DEFAULT_AGENT_PATH, FakeAgent { answer, events: tx })
            .unwrap()
            .build()
            .await
            .unwrap();
        Self { connection, events }
    }

    /// Starts and registers.
    pub async fn registered(bus: &TestBus, answer: Answer) -> Self {
        let agent = Self::start(bus, answer).await;
        agent.register().await.expect("RegisterAgent succeeds");
        agent
    }

    pub async fn register(&self) -> zbus::Result<()> {
        let manager = AgentManager1Proxy::new(&self.connection).await?;
        manager.register_agent(&ObjectPath::try_from(DEFAULT_AGENT_PATH)?).await
    }

    pub fn unique_name(&self) -> String {
        self.connection.unique_name().map(|n| n.to_string()).unwrap_or_default()
    }

    pub async fn next_event(&mut self) -> Event {
        tokio::time::timeout(Duration::from_secs(5), self.events.recv())
            .await
            .expect("the agent hears from the daemon in time")
            .expect("the agent's event channel is open")
    }

    /// Events that arrive within `within`.
    pub async fn drain(&mut self, within: Duration) -> Vec<Event> {
        let mut events = Vec::new();
        let deadline = tokio::time::Instant::now() + within;
        while let Ok(Some(event)) = tokio::time::timeout_at(deadline, self.events.recv()).await {
            events.push(event);
        }
        events
    }
}

#[derive(Debug, zbus::DBusError)]
#[zbus(prefix = "net.reactivated.Fprint.Error")]
enum FprintError {
    #[zbus(error)]
    ZBus(zbus::Error),
    NoSuchDevice(String),
    NoEnrolledPrints(String),
}

/// What the fake fprintd has and says.
#[derive(Clone)]
pub struct FprintdScript {
    pub has_device: bool,
    pub fingers: Vec<&'static str>,
    /// VerifyStatus results sent after VerifyStart (the last one with done).
    pub statuses: Vec<&'static str>,
}

impl FprintdScript {
    pub fn answering(statuses: &[&'static str]) -> Self {
        Self { has_device: true, fingers: vec!["right-index-finger"], statuses: statuses.to_vec() }
    }
}

struct FakeFprintManager {
    has_device: bool,
}

const FPRINT_DEVICE: &str = "/net/reactivated/Fprint/Device/0";

#[zbus::interface(name = "net.reactivated.Fprint.Manager")]
impl FakeFprintManager {
    async fn get_default_device(&self) -> Result<OwnedObjectPath, FprintError> {
        if !self.has_device {
            return Err(FprintError::NoSuchDevice("no devices".into()));
        }
        Ok(OwnedObjectPath::try_from(FPRINT_DEVICE).unwrap())
    }
}

struct FakeFprintDevice {
    script: FprintdScript,
    log: Arc<Mutex<Vec<String>>>,
}

impl FakeFprintDevice {
    fn log(&self, line: String) {
        self.log.lock().unwrap().push(line);
    }
}

#[zbus::interface(name = "net.reactivated.Fprint.Device")]
impl FakeFprintDevice {
    async fn list_enrolled_fingers(&self, username: String) -> Result<Vec<String>, FprintError> {
        if self.script.fingers.is_empty() {
            return Err(FprintError::NoEnrolledPrints(format!("{username} has none")));
        }
        Ok(self.script.fingers.iter().map(|f| f.to_string()).collect())
    }

    async fn claim(&self, username: String) {
        self.log(format!("Claim {username}"));
    }

    async fn release(&self) {
        self.log("Release".into());
    }

    async fn verify_start(&self, finger_name: String, #[zbus(signal_emitter)] emitter: SignalEmitter<'_>) {
        self.log(format!("VerifyStart {finger_name}"));
        let emitter = emitter.to_owned();
        let statuses = self.script.statuses.clone();
        tokio::spawn(async move {
            for (i, status) in statuses.iter().enumerate() {
                tokio::time::sleep(Duration::from_millis(30)).await;
                let _ = FakeFprintDevice::verify_status(&emitter, status, i + 1 == statuses.len()).await;
            }
        });
    }

    async fn verify_stop(&self) {
        self.log("VerifyStop".into());
    }

    #[zbus(signal)]
    async fn verify_status(emitter: &SignalEmitter<'_>, result: &str, done: bool) -> zbus::Result<()>;
}

/// fprintd on the test bus.
pub struct Fprintd {
    /// Held: the service stays on the bus.
    pub _connection: Connection,
    pub log: Arc<Mutex<Vec<String>>>,
}

impl Fprintd {
    pub async fn start(bus: &TestBus, script: FprintdScript) -> Self {
        let log = Arc::new(Mutex::new(Vec::new()));
        let connection = Builder::address(bus.address.as_str())
            .unwrap()
            .name("net.reactivated.Fprint")
            .unwrap()
            .serve_at("/net/reactivated/Fprint/Manager", FakeFprintManager { has_device: script.has_device })
            .unwrap()
            .serve_at(FPRINT_DEVICE, FakeFprintDevice { script, log: Arc::clone(&log) })
            .unwrap()
            .build()
            .await
            .unwrap();
        Self { _connection: connection, log }
    }

    pub fn calls(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }
}

/// A CheckAuthorization call as polkit saw it.
#[derive(Debug, Clone)]
pub struct PolkitCheck {
    pub subject_kind: String,
    pub subject_name: String,
    pub action: String,
    pub flags: u32,
}

struct FakeAuthority {
    allow: bool,
    log: Arc<Mutex<Vec<PolkitCheck>>>,
}

#[zbus::interface(name = "org.freedesktop.PolicyKit1.Authority")]
impl FakeAuthority {
    async fn check_authorization(
        &self,
        subject: (String, HashMap<String, OwnedValue>),
        action_id: String,
        _details: HashMap<String, String>,
        flags: u32,
        _cancellation_id: String,
    ) -> (bool, bool, HashMap<String, String>) {
        let name = subject.1.get("name").and_then(|v| String::try_from(v.try_clone().ok()?).ok()).unwrap_or_default();
        self.log.lock().unwrap().push(PolkitCheck {
            subject_kind: subject.0,
            subject_name: name,
            action: action_id,
            flags,
        });
        (self.allow, false, HashMap::new())
    }
}

/// polkit on the test bus, answering every question with `allow`.
pub struct Polkit {
    /// Held: the service stays on the bus.
    pub _connection: Connection,
    pub log: Arc<Mutex<Vec<PolkitCheck>>>,
}

impl Polkit {
    pub async fn start(bus: &TestBus, allow: bool) -> Self {
        let log = Arc::new(Mutex::new(Vec::new()));
        let connection = Builder::address(bus.address.as_str())
            .unwrap()
            .name("org.freedesktop.PolicyKit1")
            .unwrap()
            .serve_at("/org/freedesktop/PolicyKit1/Authority", FakeAuthority { allow, log: Arc::clone(&log) })
            .unwrap()
            .build()
            .await
            .unwrap();
        Self { _connection: connection, log }
    }

    pub fn checks(&self) -> Vec<PolkitCheck> {
        self.log.lock().unwrap().clone()
    }
}

#[derive(Debug, zbus::DBusError)]
#[zbus(prefix = "org.freedesktop.login1")]
enum LoginError {
    #[zbus(error)]
    ZBus(zbus::Error),
    #[zbus(name = "NoSessionForPID")]
    NoSessionForPid(String),
}

const SESSION_PATH: &str = "/org/freedesktop/login1/session/_31";
const USER_PATH: &str = "/org/freedesktop/login1/user/_0";

struct FakeLoginManager {
    in_session: bool,
}

#[zbus::interface(name = "org.freedesktop.login1.Manager")]
impl FakeLoginManager {
    #[zbus(name = "GetSessionByPID")]
    async fn get_session_by_pid(&self, pid: u32) -> Result<OwnedObjectPath, LoginError> {
        if !self.in_session {
            return Err(LoginError::NoSessionForPid(format!("PID {pid} does not belong to any known session")));
        }
        Ok(OwnedObjectPath::try_from(SESSION_PATH).unwrap())
    }

    async fn get_user(&self, _uid: u32) -> OwnedObjectPath {
        OwnedObjectPath::try_from(USER_PATH).unwrap()
    }
}

struct FakeSession {
    active: Arc<AtomicBool>,
    uid: u32,
}

#[zbus::interface(name = "org.freedesktop.login1.Session")]
impl FakeSession {
    #[zbus(property)]
    async fn active(&self) -> bool {
        self.active.load(Ordering::SeqCst)
    }

    #[zbus(property)]
    async fn user(&self) -> (u32, OwnedObjectPath) {
        (self.uid, OwnedObjectPath::try_from(USER_PATH).unwrap())
    }

    #[zbus(property)]
    async fn id(&self) -> String {
        "31".into()
    }
}

struct FakeUser {
    state: &'static str,
}

#[zbus::interface(name = "org.freedesktop.login1.User")]
impl FakeUser {
    #[zbus(property)]
    async fn state(&self) -> String {
        self.state.into()
    }
}

/// What the fake logind says about every process.
pub struct LogindScript {
    /// GetSessionByPID finds a session (else NoSessionForPID).
    pub in_session: bool,
    pub session_active: bool,
    /// The session's user.
    pub session_uid: u32,
    /// The user's State, for processes in no session.
    pub user_state: &'static str,
}

/// logind on the test bus.
pub struct Logind {
    /// Held: the service stays on the bus.
    pub _connection: Connection,
    pub active: Arc<AtomicBool>,
}

impl Logind {
    pub async fn start(bus: &TestBus, script: LogindScript) -> Self {
        let active = Arc::new(AtomicBool::new(script.session_active));
        let connection = Builder::address(bus.address.as_str())
            .unwrap()
            .name("org.freedesktop.login1")
            .unwrap()
            .serve_at("/org/freedesktop/login1", FakeLoginManager { in_session: script.in_session })
            .unwrap()
            .serve_at(SESSION_PATH, FakeSession { active: Arc::clone(&active), uid: script.session_uid })
            .unwrap()
            .serve_at(USER_PATH, FakeUser { state: script.user_state })
            .unwrap()
            .build()
            .await
            .unwrap();
        Self { _connection: connection, active }
    }
}
