//! A swtpm process for tests and the benchmark: its own TCP ports and
//! state directory, stopped when dropped. Without swtpm installed, starting
//! one panics with what to install: a TPM test must never pass silently.

use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

pub struct Swtpm {
    child: Option<Child>,
    port: u16,
    state_dir: PathBuf,
    /// Removed on drop when we made it.
    owned_dir: bool,
}

/// Ports are handed out from a per-process counter, checked free before use.
static NEXT_PORT: AtomicU16 = AtomicU16::new(0);

fn port_pair_free(port: u16) -> bool {
    let bind = |p| TcpListener::bind(SocketAddrV4::new(Ipv4Addr::LOCALHOST, p)).is_ok();
    bind(port) && bind(port + 1)
}

fn next_port() -> u16 {
    // Spread processes apart (two test binaries may run at once).
    let _ = NEXT_PORT.compare_exchange(
        0,
        20000 + (std::process::id() % 2000) as u16 * 10,
        Ordering::SeqCst,
        Ordering::SeqCst,
    );
    loop {
        let port = NEXT_PORT.fetch_add(2, Ordering::SeqCst);
        if port > 60000 {
            NEXT_PORT.store(20000, Ordering::SeqCst);
            continue;
        }
        if port_pair_free(port) {
            return port;
        }
    }
}

/// A fresh directory under the system temporary directory.
pub fn temp_dir(name: &str) -> PathBuf {
    static COUNTER: AtomicU16 = AtomicU16::new(0);
    let dir = std::env::temp_dir().join(format!(
        "fidoseal-tpm-{name}-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::SeqCst)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("cannot create a temporary directory");
    dir
}

fn require_swtpm() {
    if Command::new("swtpm").arg("--version").stdout(Stdio::null()).stderr(Stdio::null()).status().is_err() {
        panic!(
            "swtpm is not installed, and the TPM key store tests need it: run `sudo scripts/install-deps` \
         (Debian packages swtpm, swtpm-tools, libtss2-dev, tpm2-tools)"
        );
    }
}

fn spawn(port: u16, state_dir: &Path) -> Child {
    Command::new("swtpm")
        .args(["socket", "--tpm2"])
        .args(["--server", &format!("type=tcp,port={port},bindaddr=127.0.0.1")])
        .args(["--ctrl", &format!("type=tcp,port={},bindaddr=127.0.0.1", port + 1)])
        .arg("--tpmstate")
        .arg(format!("dir={}", state_dir.display()))
        .args(["--flags", "not-need-init,startup-clear"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cannot start swtpm")
}

impl Swtpm {
    /// A new swtpm with a fresh state directory (a new TPM: new seeds).
    pub fn start() -> Self {
        require_swtpm();
        let dir = temp_dir("swtpm");
        let mut tpm = Self::start_in(&dir);
        tpm.owned_dir = true;
        tpm
    }

    /// A swtpm on the TPM state kept in `state_dir` (the same TPM as the
    /// last swtpm that used it).
    pub fn start_in(state_dir: &Path) -> Self {
        require_swtpm();
        for _attempt in 0..5 {
            let port = next_port();
            let mut tpm = Swtpm {
                child: Some(spawn(port, state_dir)),
                port,
                state_dir: state_dir.to_path_buf(),
                owned_dir: false,
            };
            if tpm.wait_ready() {
                return tpm;
            }
            // Lost a race for the port: try another.
            tpm.stop();
        }
        panic!("swtpm did not start (see its messages above)");
    }

    /// Starts swtpm again on the same port and TPM state (after [`Swtpm::stop`]):
    /// a TPM restart as a running key store sees it.
    pub fn restart(&mut self) {
        self.stop();
        self.child = Some(spawn(self.port, &self.state_dir));
        assert!(self.wait_ready(), "swtpm did not restart on port {}", self.port);
    }

    fn wait_ready(&mut self) -> bool {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    let mut message = String::new();
                    if let Some(mut err) = child.stderr.take() {
                        use std::io::Read;
                        let _ = err.read_to_string(&mut message);
                    }
                    eprintln!("swtpm exited with {status}: {message}");
                    return false;
                }
            }
            // The control port answers once swtpm is up; a bare connect and
            // close is harmless there.
            if TcpStream::connect(SocketAddrV4::new(Ipv4Addr::LOCALHOST, self.port + 1)).is_ok() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    pub fn tcti(&self) -> String {
        format!("swtpm:host=127.0.0.1,port={}", self.port)
    }

    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }

    /// Stops swtpm (SIGTERM, so that it saves its state) and waits for it.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: kill(2) on the pid of our own child, which we have not reaped yet.
            unsafe {
                libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
            }
            let deadline = Instant::now() + Duration::from_secs(5);
            loop {
                match child.try_wait() {
                    Ok(Some(_)) => break,
                    Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
                    _ => {
                        let _ = child.kill();
                        let _ = child.wait();
                        break;
                    }
                }
            }
        }
    }
}

impl Drop for Swtpm {
    fn drop(&mut self) {
        self.stop();
        if self.owned_dir {
            let _ = std::fs::remove_dir_all(&self.state_dir);
        }
    }
}
