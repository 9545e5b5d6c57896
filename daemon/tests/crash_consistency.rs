//! Crash consistency of the real `fidoseald` (docs/architecture.md, "Crash
//! guarantees").
//!
//! The test plays the kernel: `[device] uhid_path` names a Unix socket
//! (SOCK_SEQPACKET, one uhid event per message, as uhid.rs accepts), so the
//! real binary runs on the host with the software key store and
//! always-approve prompts, and this file talks CTAPHID to it as hidraw
//! would. Everything is checked through CTAP (no file format is read), so
//! the test holds for any credential store behind the daemon.
//!
//! - `sigkill_at_random_moments_loses_nothing_acknowledged`: makeCredential
//!   (discoverable, with a PIN token), getAssertion, setPIN / changePIN, a
//!   wrong PIN now and then, and credential deletion in a loop; the daemon
//!   is killed with SIGKILL at a random moment of a random request (or
//!   between them) and started again, FIDOSEAL_KILL_ITERATIONS times
//!   (default 150; 1,000 and more for the full run, docs/fuzzing.md). After
//!   each start: the state opens, every credential whose makeCredential
//!   answer reached us signs (signature checked), no deleted or replaced
//!   credential comes back, the signature counter never goes back, and the
//!   PIN retries never go up (nor down without a wrong PIN).
//! - `damaged_state_files_stop_the_daemon_untouched`: software-master-key
//!   truncated and lengthened, credentials.db cut at and around every page
//!   boundary, emptied, and replaced by garbage: the daemon refuses to start
//!   with a message naming the file and what to do, and the file's bytes stay
//!   as they were. (Every byte offset of the database, truncated and
//!   damaged, is tested in process in store/src/tests.rs.)

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ciborium::value::Value;
use fidoseal_ctap::ctaphid::{self, command as hid, BROADCAST_CID, PACKET_SIZE};
use fidoseal_tests::platform_client::{
    change_pin_request, encapsulate, pad_pin, pin_token_request, set_pin_request, PinToken, Protocol, SharedSecret,
};
use fidoseal_tests::responses::{parse_registration, verify};
use p256::ecdsa::VerifyingKey;

const EVENT_SIZE: usize = 4380;
const UHID_OUTPUT: u32 = 6;
const UHID_CREATE2: u32 = 11;
const UHID_INPUT2: u32 = 12;
const OUTPUT_SIZE_OFF: usize = 4100;

const RP_ID: &str = "crash.example";
/// User slots: a discoverable credential replaces the one of the same user
/// (CTAP 2.1 §6.1.2 step 16), so the store never fills however many
/// makeCredential answers are lost to a kill.
const USER_SLOTS: u8 = 5;
const PINS: [&str; 2] = ["4711", "0815"];
const WRONG_PIN: &str = "9999";
/// CTAP status bytes the test expects.
const OK: u8 = 0x00;
const NO_CREDENTIALS: u8 = 0x2E;
const PIN_INVALID: u8 = 0x31;
const PIN_AUTH_BLOCKED: u8 = 0x34;

// ---------------------------------------------------------------------------
// A small random source (xorshift64*), seeded from the system or from
// FIDOSEAL_KILL_SEED, printed so that a failure's sequence can be replayed.

struct Rng(u64);

impl Rng {
    fn new() -> Self {
        let seed = std::env::var("FIDOSEAL_KILL_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
            let mut bytes = [0u8; 8];
            getrandom::fill(&mut bytes).expect("system randomness");
            u64::from_ne_bytes(bytes)
        });
        eprintln!("crash test seed: FIDOSEAL_KILL_SEED={seed}");
        Self(seed | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

// ---------------------------------------------------------------------------
// The kernel's side: a SOCK_SEQPACKET listener at uhid_path.

fn check(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

fn socket_address(path: &Path) -> libc::sockaddr_un {
    // SAFETY: sockaddr_un is plain data; zeroes are a valid value.
    let mut address: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    address.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let bytes = path.as_os_str().as_bytes();
    assert!(bytes.len() < address.sun_path.len(), "socket path too long: {}", path.display());
    for (slot, byte) in address.sun_path.iter_mut().zip(bytes) {
        *slot = *byte as libc::c_char;
    }
    address
}

struct Listener(OwnedFd);

impl Listener {
    fn bind(path: &Path) -> Self {
        let _ = std::fs::remove_file(path);
        // SAFETY: plain socket(2); the fd is owned right after.
        let fd = unsafe {
            OwnedFd::from_raw_fd(
                check(libc::socket(libc::AF_UNIX, libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC, 0)).unwrap(),
            )
        };
        let address = socket_address(path);
        let length = std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
        // SAFETY: a valid sockaddr_un of `length` bytes.
        check(unsafe { libc::bind(fd.as_raw_fd(), (&raw const address).cast(), length) }).unwrap();
        // SAFETY: listen on our own socket.
        check(unsafe { libc::listen(fd.as_raw_fd(), 4) }).unwrap();
        Self(fd)
    }

    /// The daemon's connection, once it opens its "device".
    fn accept(&self, daemon: &mut Child, log: &Path) -> Kernel {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if poll_readable(self.0.as_raw_fd(), Duration::from_millis(20)) {
                // SAFETY: accept on our listening socket; the fd is owned right after.
                let fd = check(unsafe {
                    libc::accept4(self.0.as_raw_fd(), std::ptr::null_mut(), std::ptr::null_mut(), libc::SOCK_CLOEXEC)
                })
                .unwrap();
                // SAFETY: fresh fd.
                return Kernel { fd: unsafe { OwnedFd::from_raw_fd(fd) } };
            }
            if let Some(status) = daemon.try_wait().unwrap() {
                panic!("fidoseald exited ({status}) before opening its device:\n{}", tail(log));
            }
            assert!(Instant::now() < deadline, "fidoseald did not open its device in 30 s:\n{}", tail(log));
        }
    }
}

fn poll_readable(fd: libc::c_int, timeout: Duration) -> bool {
    let mut poll = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
    // SAFETY: one valid pollfd.
    let n = unsafe { libc::poll(&mut poll, 1, timeout.as_millis().min(i32::MAX as u128) as libc::c_int) };
    n > 0
}

/// The daemon is gone (killed): its connection reached end of file.
#[derive(Debug)]
struct Gone;

struct Kernel {
    fd: OwnedFd,
}

impl Kernel {
    fn event(&self, timeout: Duration) -> Result<Vec<u8>, Gone> {
        if !poll_readable(self.fd.as_raw_fd(), timeout) {
            panic!("the daemon sent nothing for {timeout:?}");
        }
        let mut buf = vec![0u8; EVENT_SIZE];
        // SAFETY: reading into our own buffer of that length.
        let n = unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n <= 0 {
            return Err(Gone);
        }
        buf.truncate(n as usize);
        Ok(buf)
    }

    fn send_report(&self, report: &[u8; PACKET_SIZE]) -> Result<(), Gone> {
        let mut ev = vec![0u8; EVENT_SIZE];
        ev[..4].copy_from_slice(&UHID_OUTPUT.to_ne_bytes());
        ev[4..4 + PACKET_SIZE].copy_from_slice(report);
        ev[OUTPUT_SIZE_OFF..OUTPUT_SIZE_OFF + 2].copy_from_slice(&(PACKET_SIZE as u16).to_ne_bytes());
        // SAFETY: sending our own buffer; no SIGPIPE.
        let n = unsafe { libc::send(self.fd.as_raw_fd(), ev.as_ptr().cast(), ev.len(), libc::MSG_NOSIGNAL) };
        if n != ev.len() as isize {
            return Err(Gone);
        }
        Ok(())
    }

    fn input_report(&self) -> Result<[u8; PACKET_SIZE], Gone> {
        loop {
            let ev = self.event(Duration::from_secs(20))?;
            if u32::from_ne_bytes([ev[0], ev[1], ev[2], ev[3]]) == UHID_INPUT2 {
                return Ok(ev[6..6 + PACKET_SIZE].try_into().expect("a 64-byte report"));
            }
        }
    }

    fn send(&self, cid: u32, cmd: u8, payload: &[u8]) -> Result<(), Gone> {
        for packet in ctaphid::frame(cid, cmd, payload) {
            self.send_report(&packet)?;
        }
        Ok(())
    }

    /// The next whole message other than KEEPALIVE.
    fn answer(&self) -> Result<(u32, u8, Vec<u8>), Gone> {
        loop {
            let first = self.input_report()?;
            if first[4] == 0x80 | hid::KEEPALIVE {
                continue;
            }
            let len = usize::from(u16::from_be_bytes([first[5], first[6]]));
            let mut packets = vec![first];
            while 57 + (packets.len() - 1) * 59 < len {
                packets.push(self.input_report()?);
            }
            return Ok(ctaphid::unframe(&packets).expect("a well-framed answer"));
        }
    }
}

// ---------------------------------------------------------------------------
// A running daemon and a CTAP2 client of it, with a planned SIGKILL.

struct Setup {
    dir: PathBuf,
    config: PathBuf,
    state_dir: PathBuf,
    log: PathBuf,
    listener: Listener,
}

impl Setup {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("fidoseal-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let state_dir = dir.join("state");
        let socket = dir.join("uhid.sock");
        let config = dir.join("fidoseald.toml");
        std::fs::write(
            &config,
            format!(
                "state_dir = \"{}\"\n[keystore]\nbackend = \"software\"\n[prompt]\nmode = \"always-approve\"\n\
                 [device]\nuhid_path = \"{}\"\n[policy]\ndirs = [\"{}\"]\n",
                state_dir.display(),
                socket.display(),
                dir.join("policy.d").display()
            ),
        )
        .unwrap();
        let listener = Listener::bind(&socket);
        Self { log: dir.join("fidoseald.log"), dir, config, state_dir, listener }
    }

    fn command(&self) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_fidoseald"));
        command
            .arg("--config")
            .arg(&self.config)
            // No system bus: always-approve mode runs without Manager1.
            .env("DBUS_SYSTEM_BUS_ADDRESS", "unix:path=/nonexistent/fidoseal-test-bus")
            .env("RUST_LOG", "warn")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        command
    }

    fn start(&self) -> Daemon {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log).unwrap();
        let mut child = self.command().stderr(log).spawn().expect("fidoseald runs");
        let kernel = self.listener.accept(&mut child, &self.log);
        let create = kernel.event(Duration::from_secs(20)).expect("CREATE2");
        assert_eq!(u32::from_ne_bytes([create[0], create[1], create[2], create[3]]), UHID_CREATE2);
        let mut daemon = Daemon { child, kernel, cid: 0, kill_at: None, transactions: 0, killed: false };
        daemon.cid = daemon.init().expect("INIT before any kill");
        daemon
    }
}

impl Drop for Setup {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

fn tail(log: &Path) -> String {
    let text = String::from_utf8_lossy(&std::fs::read(log).unwrap_or_default()).into_owned();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

struct Daemon {
    child: Child,
    kernel: Kernel,
    cid: u32,
    /// Kill after sending this transaction (counted from 0), this long after.
    kill_at: Option<(u32, Duration)>,
    transactions: u32,
    killed: bool,
}

impl Daemon {
    fn init(&mut self) -> Result<u32, Gone> {
        let nonce = [7u8; 8];
        self.kernel.send(BROADCAST_CID, hid::INIT, &nonce)?;
        loop {
            let (cid, cmd, data) = self.kernel.answer()?;
            if cid == BROADCAST_CID && cmd == hid::INIT && data[..8] == nonce {
                return Ok(u32::from_be_bytes([data[8], data[9], data[10], data[11]]));
            }
        }
    }

    fn kill(&mut self) {
        if !self.killed {
            // SAFETY: kill(2) of our own child.
            unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGKILL) };
            let _ = self.child.wait();
            self.killed = true;
        }
    }

    /// One CTAP2 command; `Err(Gone)` when the daemon died before its whole
    /// answer reached us (an answer already sent is still read after a kill).
    fn ctap(&mut self, command: u8, params: Option<&Value>) -> Result<(u8, Option<Value>), Gone> {
        if self.killed {
            return Err(Gone);
        }
        let mut message = vec![command];
        if let Some(p) = params {
            ciborium::ser::into_writer(p, &mut message).unwrap();
        }
        let sent = self.kernel.send(self.cid, hid::CBOR, &message);
        if let Some((at, delay)) = self.kill_at {
            if at == self.transactions {
                std::thread::sleep(delay);
                self.kill();
            }
        }
        self.transactions += 1;
        sent?;
        let (cid, cmd, data) = loop {
            let answer = self.kernel.answer()?;
            // ERR_MSG_TIMEOUT: this process was not scheduled for 500 ms
            // between two reports of the request (a loaded machine). The
            // request was dropped unseen: send it again.
            if answer.1 == hid::ERROR && answer.2 == [0x05] {
                if self.killed {
                    return Err(Gone);
                }
                self.kernel.send(self.cid, hid::CBOR, &message)?;
                continue;
            }
            break answer;
        };
        assert_eq!((cid, cmd), (self.cid, hid::CBOR), "the answer to our request: {data:?}");
        let body = (data.len() > 1).then(|| ciborium::de::from_reader(&data[1..]).expect("response CBOR"));
        Ok((data[0], body))
    }

    fn stop(mut self) {
        // SAFETY: kill(2) of our own child.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let status = self.child.wait().unwrap();
        assert!(status.success(), "fidoseald exits cleanly on SIGTERM: {status}");
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn int_map(entries: Vec<(i64, Value)>) -> Value {
    Value::Map(entries.into_iter().map(|(k, v)| (Value::from(k), v)).collect())
}

fn text_map(entries: Vec<(&str, Value)>) -> Value {
    Value::Map(entries.into_iter().map(|(k, v)| (Value::from(k), v)).collect())
}

fn get(map: &Value, key: i64) -> Option<&Value> {
    map.as_map()?.iter().find(|(k, _)| k == &Value::from(key)).map(|(_, v)| v)
}

fn descriptor(id: &[u8]) -> Value {
    text_map(vec![("id", Value::Bytes(id.to_vec())), ("type", Value::from("public-key"))])
}

fn counter_of(auth_data: &[u8]) -> u32 {
    u32::from_be_bytes(auth_data[33..37].try_into().expect("authData has a counter"))
}

// ---------------------------------------------------------------------------
// CTAP operations

fn key_agreement(d: &mut Daemon) -> Result<SharedSecret, Gone> {
    let request = int_map(vec![(1, Value::from(2)), (2, Value::from(2))]);
    let (status, body) = d.ctap(0x06, Some(&request))?;
    assert_eq!(status, OK, "getKeyAgreement");
    let key = body.as_ref().and_then(|b| get(b, 1)).cloned().expect("keyAgreement");
    Ok(encapsulate(Protocol::Two, &key))
}

fn pin_retries(d: &mut Daemon) -> Result<u64, Gone> {
    let (status, body) = d.ctap(0x06, Some(&int_map(vec![(2, Value::from(1))])))?;
    assert_eq!(status, OK, "getPINRetries");
    let retries = body.as_ref().and_then(|b| get(b, 3)).and_then(Value::as_integer).expect("pinRetries");
    Ok(u64::try_from(retries).expect("retries fit"))
}

fn pin_is_set(d: &mut Daemon) -> Result<bool, Gone> {
    let (status, info) = d.ctap(0x04, None)?;
    assert_eq!(status, OK, "getInfo: the state opens");
    let options = info.as_ref().and_then(|i| get(i, 4)).and_then(Value::as_map).expect("options");
    Ok(options.iter().any(|(k, v)| k == &Value::from("clientPin") && v == &Value::Bool(true)))
}

/// getPinUvAuthTokenUsingPinWithPermissions (protocol 2).
fn token(d: &mut Daemon, pin: &str, permissions: u8, rp_id: Option<&str>) -> Result<Result<PinToken, u8>, Gone> {
    let ss = key_agreement(d)?;
    let (status, body) = d.ctap(0x06, Some(&pin_token_request(&ss, pin.as_bytes(), Some(permissions), rp_id)))?;
    if status != OK {
        return Ok(Err(status));
    }
    let encrypted = body.as_ref().and_then(|b| get(b, 2)).and_then(Value::as_bytes).expect("pinUvAuthToken").clone();
    Ok(Ok(PinToken { protocol: Protocol::Two, value: ss.decrypt(&encrypted) }))
}

#[derive(Clone)]
struct Credential {
    id: Vec<u8>,
    key: VerifyingKey,
}

// ---------------------------------------------------------------------------
// What the client knows, and may not know, about the device.

#[derive(Clone)]
enum Slot {
    Empty,
    Known(Credential),
    /// A makeCredential or deletion for this user was under way at a kill:
    /// the old credential may be there or gone (and an unknown new one may
    /// have replaced it).
    Uncertain(Option<Credential>),
}

#[derive(Clone)]
enum PinState {
    NotSet,
    Known(&'static str),
    /// setPIN / changePIN under way at a kill: `old` (None: no PIN) or `new`.
    Uncertain {
        old: Option<&'static str>,
        new: &'static str,
    },
}

struct Model {
    slots: Vec<Slot>,
    /// Deleted (or replaced) credentials: they must never sign again.
    gone: Vec<Vec<u8>>,
    /// The highest signature counter seen, per credential (each
    /// credential counts on its own).
    counters: std::collections::HashMap<Vec<u8>, u32>,
    pin: PinState,
    /// pinRetries as last read.
    retries: u64,
    /// Set while a PIN was sent whose answer was lost: (correct, wrong).
    pin_in_flight: (bool, bool),
    wrong_in_a_row: u32,
}

impl Model {
    fn see_counter(&mut self, id: &[u8], auth_data: &[u8], what: &str) {
        let counter = counter_of(auth_data);
        let last = self.counters.get(id).copied().unwrap_or(0);
        assert!(
            counter > last || (counter == 0 && last == 0),
            "{what}: signature counter {counter} after {last} (it went back)"
        );
        self.counters.insert(id.to_vec(), counter);
    }

    fn current_pin(&self) -> Option<&'static str> {
        match self.pin {
            PinState::Known(p) => Some(p),
            _ => None,
        }
    }
}

/// getAssertion with an allow list of `id`: the status, and the checked
/// signature's counter.
fn assert_with(d: &mut Daemon, model: &mut Model, credential: &Credential) -> Result<u8, Gone> {
    let client_data_hash = [0x42u8; 32];
    let request = int_map(vec![
        (1, Value::from(RP_ID)),
        (2, Value::Bytes(client_data_hash.to_vec())),
        (3, Value::Array(vec![descriptor(&credential.id)])),
    ]);
    let (status, body) = d.ctap(0x02, Some(&request))?;
    if status == OK {
        let body = body.expect("getAssertion answer");
        let auth_data = get(&body, 2).and_then(Value::as_bytes).expect("authData").clone();
        let signature = get(&body, 3).and_then(Value::as_bytes).expect("signature").clone();
        assert!(verify(&credential.key, &auth_data, &client_data_hash, &signature), "a valid signature");
        model.see_counter(&credential.id, &auth_data, "getAssertion");
    }
    Ok(status)
}

/// A credential ID that was never ours is refused the same way as a
/// deleted one: NO_CREDENTIALS.
fn assert_gone(d: &mut Daemon, model: &mut Model, id: &[u8]) -> Result<(), Gone> {
    // The key does not matter: a gone credential never reaches signing.
    let credential = Credential { id: id.to_vec(), key: *dummy_key() };
    let status = assert_with(d, model, &credential)?;
    assert_eq!(status, NO_CREDENTIALS, "a deleted or replaced credential came back");
    Ok(())
}

fn dummy_key() -> &'static VerifyingKey {
    static KEY: std::sync::OnceLock<VerifyingKey> = std::sync::OnceLock::new();
    KEY.get_or_init(|| *p256::ecdsa::SigningKey::from_slice(&[1; 32]).unwrap().verifying_key())
}

/// After a start: the checks of the guarantees, and the model brought up
/// to date where a kill left it unsure. Runs before any kill is planned.
fn verify_after_start(d: &mut Daemon, model: &mut Model) {
    let pin_set = pin_is_set(d).unwrap();
    // PIN: set and unset only as the client asked.
    model.pin = match (model.pin.clone(), pin_set) {
        (PinState::NotSet, false) => PinState::NotSet,
        (PinState::Known(p), true) => PinState::Known(p),
        (PinState::Uncertain { old: None, .. }, false) => PinState::NotSet,
        (PinState::Uncertain { old: None, new }, true) => PinState::Known(new),
        (PinState::Uncertain { old: Some(old), new }, true) => PinState::Uncertain { old: Some(old), new },
        (_, set) => panic!("clientPin is {set}, against what the client was told"),
    };
    if pin_set {
        let retries = pin_retries(d).unwrap();
        let (correct, wrong) = model.pin_in_flight;
        let upper = if correct { 8 } else { model.retries };
        let lower = model.retries.saturating_sub(u64::from(correct || wrong));
        assert!(retries <= upper, "PIN retries went up: {retries} after {} (no correct PIN in flight)", model.retries);
        assert!(
            retries >= lower,
            "PIN retries went down by more than the PIN in flight: {retries} after {}",
            model.retries
        );
        model.retries = retries;
        if let PinState::Uncertain { old: Some(old), new } = model.pin {
            // The new PIN first; a wrong guess costs one retry.
            model.pin = match token(d, new, 0x02, Some(RP_ID)).unwrap() {
                Ok(_) => PinState::Known(new),
                Err(PIN_INVALID) => {
                    let again = token(d, old, 0x02, Some(RP_ID)).unwrap();
                    assert!(again.is_ok(), "neither the old nor the new PIN works: {again:?}");
                    PinState::Known(old)
                }
                Err(status) => panic!("PIN token: status {status:#04x}"),
            };
            model.retries = pin_retries(d).unwrap();
            assert_eq!(model.retries, 8, "a correct PIN restores the retries");
        }
    } else {
        model.retries = 8;
    }
    model.pin_in_flight = (false, false);
    model.wrong_in_a_row = 0;

    for index in 0..model.slots.len() {
        match model.slots[index].clone() {
            Slot::Empty => {}
            Slot::Known(credential) => {
                let status = assert_with(d, model, &credential).unwrap();
                assert_eq!(status, OK, "an acknowledged credential no longer works");
            }
            Slot::Uncertain(None) => model.slots[index] = Slot::Empty,
            Slot::Uncertain(Some(credential)) => {
                let status = assert_with(d, model, &credential).unwrap();
                model.slots[index] = match status {
                    OK => Slot::Known(credential),
                    NO_CREDENTIALS => {
                        model.gone.push(credential.id);
                        Slot::Empty
                    }
                    other => panic!("getAssertion: status {other:#04x}"),
                };
            }
        }
    }
    // The most recent deletions (all of them would grow without bound).
    let recent: Vec<Vec<u8>> = model.gone.iter().rev().take(12).cloned().collect();
    for id in recent {
        assert_gone(d, model, &id).unwrap();
    }
}

/// makeCredential of a discoverable credential for user `slot`.
fn make_credential(d: &mut Daemon, model: &mut Model, slot: usize) -> Result<(), Gone> {
    let pin = model.current_pin();
    let before = model.slots[slot].clone();
    let old = match &before {
        Slot::Known(c) => Some(c.clone()),
        Slot::Uncertain(c) => c.clone(),
        Slot::Empty => None,
    };
    let client_data_hash = [0x11u8; 32];
    let mut entries = vec![
        (1, Value::Bytes(client_data_hash.to_vec())),
        (2, text_map(vec![("id", Value::from(RP_ID))])),
        (3, text_map(vec![("id", Value::Bytes(vec![b'u', slot as u8])), ("name", Value::from(format!("user{slot}")))])),
        (4, Value::Array(vec![text_map(vec![("alg", Value::from(-7)), ("type", Value::from("public-key"))])])),
        (7, text_map(vec![("rk", Value::Bool(true))])),
    ];
    if let Some(pin) = pin {
        let token = match with_pin_in_flight(model, true, |d| token(d, pin, 0x01, Some(RP_ID)), d)? {
            Ok(t) => t,
            Err(status) => panic!("mc token with the right PIN: {status:#04x}"),
        };
        entries.push((8, Value::Bytes(token.param(&client_data_hash))));
        entries.push((9, Value::from(2)));
    }
    model.slots[slot] = Slot::Uncertain(old.clone());
    let (status, body) = d.ctap(0x01, Some(&int_map(entries)))?;
    assert_eq!(status, OK, "makeCredential");
    let registered = parse_registration(&body.expect("makeCredential answer"));
    model.see_counter(&registered.credential_id, &registered.auth_data, "makeCredential");
    if let Some(old) = old {
        model.gone.push(old.id);
    }
    model.slots[slot] = Slot::Known(Credential { id: registered.credential_id, key: registered.public_key });
    Ok(())
}

/// Runs a PIN-using step with the PIN marked in flight until its answer
/// came, then reads the retries it left.
fn with_pin_in_flight<T>(
    model: &mut Model,
    correct: bool,
    step: impl FnOnce(&mut Daemon) -> Result<T, Gone>,
    d: &mut Daemon,
) -> Result<T, Gone> {
    if correct {
        model.pin_in_flight.0 = true;
    } else {
        model.pin_in_flight.1 = true;
    }
    let result = step(d)?;
    // In flight until the retries it left are read: a kill before that
    // leaves the model with the retries from before.
    model.retries = pin_retries(d)?;
    model.pin_in_flight = (false, false);
    Ok(result)
}

/// credentialManagement deleteCredential (0x06) with a cm token.
fn delete_credential(d: &mut Daemon, model: &mut Model, slot: usize) -> Result<(), Gone> {
    let Slot::Known(credential) = model.slots[slot].clone() else { return Ok(()) };
    let Some(pin) = model.current_pin() else { return Ok(()) };
    let token = match with_pin_in_flight(model, true, |d| token(d, pin, 0x04, None), d)? {
        Ok(t) => t,
        Err(status) => panic!("cm token with the right PIN: {status:#04x}"),
    };
    let params = int_map(vec![(2, descriptor(&credential.id))]);
    let mut message = vec![0x06];
    ciborium::ser::into_writer(&params, &mut message).unwrap();
    let request = int_map(vec![
        (1, Value::from(0x06)),
        (2, params),
        (3, Value::from(2)),
        (4, Value::Bytes(token.param(&message))),
    ]);
    model.slots[slot] = Slot::Uncertain(Some(credential.clone()));
    let (status, _) = d.ctap(0x0A, Some(&request))?;
    assert_eq!(status, OK, "deleteCredential");
    model.gone.push(credential.id);
    model.slots[slot] = Slot::Empty;
    Ok(())
}

/// setPIN, or changePIN to the other PIN.
fn set_or_change_pin(d: &mut Daemon, model: &mut Model) -> Result<(), Gone> {
    let old = model.current_pin();
    let new = if old == Some(PINS[0]) { PINS[1] } else { PINS[0] };
    let ss = key_agreement(d)?;
    let request = match old {
        None => set_pin_request(&ss, &pad_pin(new.as_bytes())),
        Some(old) => change_pin_request(&ss, old.as_bytes(), &pad_pin(new.as_bytes())),
    };
    model.pin = PinState::Uncertain { old, new };
    let status = with_pin_in_flight(model, old.is_some(), |d| d.ctap(0x06, Some(&request)), d)?.0;
    assert_eq!(status, OK, "setPIN / changePIN");
    model.pin = PinState::Known(new);
    Ok(())
}

/// A wrong PIN: one retry spent (never enough to block the PIN).
fn wrong_pin(d: &mut Daemon, model: &mut Model) -> Result<(), Gone> {
    if model.current_pin().is_none() || model.retries < 5 || model.wrong_in_a_row >= 2 {
        return Ok(());
    }
    let before = model.retries;
    let result = with_pin_in_flight(model, false, |d| token(d, WRONG_PIN, 0x02, Some(RP_ID)), d)?;
    assert!(matches!(result, Err(PIN_INVALID | PIN_AUTH_BLOCKED)), "a wrong PIN is refused: {:?}", result.err());
    assert_eq!(model.retries, before - 1, "a wrong PIN costs one retry");
    model.wrong_in_a_row += 1;
    Ok(())
}

fn random_operation(d: &mut Daemon, model: &mut Model, rng: &mut Rng) -> Result<(), Gone> {
    let slot = rng.below(u64::from(USER_SLOTS)) as usize;
    match rng.below(10) {
        0..=3 => make_credential(d, model, slot),
        4..=5 => {
            if let Slot::Known(c) = model.slots[slot].clone() {
                let status = assert_with(d, model, &c)?;
                assert_eq!(status, OK, "getAssertion of a live credential");
            }
            Ok(())
        }
        6 => set_or_change_pin(d, model),
        7 => wrong_pin(d, model),
        _ => delete_credential(d, model, slot),
    }
}

fn kill_iterations() -> u32 {
    std::env::var("FIDOSEAL_KILL_ITERATIONS").ok().and_then(|s| s.parse().ok()).unwrap_or(150)
}

#[test]
fn sigkill_at_random_moments_loses_nothing_acknowledged() {
    let setup = Setup::new("crash-kill");
    let mut rng = Rng::new();
    let mut model = Model {
        slots: vec![Slot::Empty; usize::from(USER_SLOTS)],
        gone: Vec::new(),
        counters: Default::default(),
        pin: PinState::NotSet,
        retries: 8,
        pin_in_flight: (false, false),
        wrong_in_a_row: 0,
    };
    let iterations = kill_iterations();
    let started = Instant::now();
    let mut killed_in_request = 0u32;
    for _ in 0..iterations {
        let mut daemon = setup.start();
        verify_after_start(&mut daemon, &mut model);
        // The kill: after sending one of the next few requests, at once or
        // up to 4 ms later (the software store answers in about a
        // millisecond; each write is a file write, fsync and rename).
        let at = rng.below(12) as u32;
        let delay = Duration::from_micros(rng.below(4000));
        daemon.kill_at = Some((daemon.transactions + at, delay));
        while !daemon.killed {
            if random_operation(&mut daemon, &mut model, &mut rng).is_err() {
                killed_in_request += 1;
            }
        }
    }
    // The last start: everything still holds, and the daemon stops cleanly.
    let mut daemon = setup.start();
    verify_after_start(&mut daemon, &mut model);
    daemon.stop();
    let live = model.slots.iter().filter(|s| matches!(s, Slot::Known(_))).count();
    eprintln!(
        "{iterations} SIGKILLs ({killed_in_request} with an answer lost) in {:.1} s; highest signature counter {}, \
         {live} live and {} deleted credentials checked",
        started.elapsed().as_secs_f64(),
        model.counters.values().max().copied().unwrap_or(0),
        model.gone.len()
    );
}

// ---------------------------------------------------------------------------
// Damaged state files

enum Attempt {
    Refused { code: Option<i32>, stderr: String },
    Started(#[allow(dead_code)] Daemon),
}

/// Starts the daemon on the state as it is: it either exits (a refusal)
/// or opens its device.
fn attempt_start(setup: &Setup) -> Attempt {
    let log = setup.dir.join("attempt.log");
    let file = std::fs::File::create(&log).unwrap();
    let mut child = setup.command().stderr(file).spawn().expect("fidoseald runs");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let stderr = String::from_utf8_lossy(&std::fs::read(&log).unwrap_or_default()).into_owned();
            return Attempt::Refused { code: status.code(), stderr };
        }
        if poll_readable(setup.listener.0.as_raw_fd(), Duration::from_millis(5)) {
            let kernel = setup.listener.accept(&mut child, &log);
            let create = kernel.event(Duration::from_secs(20)).expect("CREATE2");
            assert_eq!(u32::from_ne_bytes([create[0], create[1], create[2], create[3]]), UHID_CREATE2);
            let mut daemon = Daemon { child, kernel, cid: 0, kill_at: None, transactions: 0, killed: false };
            daemon.cid = daemon.init().expect("INIT");
            return Attempt::Started(daemon);
        }
        assert!(Instant::now() < deadline, "fidoseald neither started nor stopped in 30 s");
    }
}

/// Expects the daemon to refuse `contents` in `file` with a message that
/// names the file and says what to do, leaving the bytes as they were.
fn expect_refusal(setup: &Setup, file: &Path, contents: &[u8], what: &str) {
    std::fs::write(file, contents).unwrap();
    let Attempt::Refused { code, stderr } = attempt_start(setup) else {
        panic!("{what}: fidoseald started on a damaged {}", file.display());
    };
    check_refusal(file, contents, what, code, &stderr);
}

fn check_refusal(file: &Path, contents: &[u8], what: &str, code: Option<i32>, stderr: &str) {
    assert_eq!(code, Some(1), "{what}: an orderly refusal, not a crash: {stderr}");
    assert!(stderr.contains(&file.display().to_string()), "{what}: the message names the file: {stderr}");
    assert!(
        stderr.contains("restore it from a backup") || stderr.contains("refusing to replace it"),
        "{what}: the message says what to do: {stderr}"
    );
    assert_eq!(std::fs::read(file).unwrap(), contents, "{what}: the file was changed");
}

#[test]
fn damaged_state_files_stop_the_daemon_untouched() {
    let setup = Setup::new("crash-damaged");
    // A small real state: one discoverable credential, a PIN.
    let mut model = Model {
        slots: vec![Slot::Empty; 1],
        gone: Vec::new(),
        counters: Default::default(),
        pin: PinState::NotSet,
        retries: 8,
        pin_in_flight: (false, false),
        wrong_in_a_row: 0,
    };
    let mut daemon = setup.start();
    set_or_change_pin(&mut daemon, &mut model).unwrap();
    make_credential(&mut daemon, &mut model, 0).unwrap();
    daemon.stop();

    let started = Instant::now();
    let mut starts = 0;

    // The credential database (every byte offset is in store/src/tests.rs,
    // in process; here the real daemon's refusal, at page boundaries and
    // around them, empty, and garbage).
    let database = setup.state_dir.join("credentials.db");
    let whole = std::fs::read(&database).unwrap();
    assert!(whole.len() >= 4096, "a database of whole pages");
    let mut lengths: Vec<usize> = (0..whole.len()).step_by(4096).flat_map(|p| [p, p + 1, p + 100, p + 4095]).collect();
    lengths.retain(|&l| l < whole.len());
    for length in lengths {
        expect_refusal(&setup, &database, &whole[..length], &format!("database cut to {length} bytes"));
        starts += 1;
    }
    let mut rng = Rng::new();
    for piece in 0..5 {
        let garbage: Vec<u8> = (0..4096 * (piece + 1)).map(|_| rng.below(256) as u8).collect();
        expect_refusal(&setup, &database, &garbage, &format!("garbage database {piece}"));
        starts += 1;
    }
    std::fs::write(&database, &whole).unwrap();

    let master = setup.state_dir.join("software-master-key");
    let key = std::fs::read(&master).unwrap();
    for length in (0..key.len()).chain([key.len() + 1, 64]) {
        let mut contents = key.clone();
        contents.resize(length, 0xA5);
        expect_refusal(&setup, &master, &contents, &format!("master key of {length} bytes"));
        starts += 1;
    }
    std::fs::write(&master, &key).unwrap();

    // Undamaged again: it starts, and the credential is there.
    let mut daemon = setup.start();
    verify_after_start(&mut daemon, &mut model);
    daemon.stop();
    eprintln!("{starts} starts on damaged master keys in {:.1} s", started.elapsed().as_secs_f64());
}
