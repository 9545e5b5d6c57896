//! A small Assuan client, enough to drive a pinentry program.
//!
//! Why not the `pinentry` crate (0.8.0 was read before writing this): it
//! is blocking and keeps the child process private, so an open dialog
//! cannot be closed from another task when the daemon calls `Cancel`; it
//! reads answers with no deadline, so a pinentry that hangs would hang the
//! request (the CTAP transaction behind it) forever; and the secret passes
//! through a `BufReader` and growing `String`s whose freed copies are never
//! wiped. Here the child is a `tokio::process::Child` that the dialog layer
//! (`pinentry.rs`) kills on Cancel or deadline, and every byte read from
//! the pinentry lives in fixed-capacity buffers that are zeroized on drop.
//!
//! Protocol (https://gnupg.org/documentation/manuals/assuan/): the server
//! greets with `OK`; each request line gets status (`S`), comment (`#`),
//! data (`D`, percent-encoded) and inquiry lines, then exactly one `OK` or
//! `ERR <code> <text>`. Lines are at most 1000 bytes.

use std::collections::VecDeque;
use std::io;
use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use zeroize::Zeroizing;

/// Assuan's limit for one line, including the line feed.
pub const MAX_LINE: usize = 1000;
/// Room for the data of one answer (a PIN is at most 63 bytes, a password
/// a few hundred): more is refused rather than reallocated.
const MAX_DATA: usize = 4096;
/// How much of the pinentry's stderr is kept to explain a failure.
const STDERR_LINES: usize = 8;

/// libgpg-error codes (the low 16 bits of an `ERR` code; the high bits
/// name the source, 5 = pinentry).
pub mod code {
    pub const TIMEOUT: u16 = 62;
    pub const CANCELED: u16 = 99;
    pub const NOT_CONFIRMED: u16 = 114;
    pub const FULLY_CANCELED: u16 = 198;
}

/// The final answer to one request.
pub enum Reply {
    /// `OK`, with the decoded `D` data sent before it, if any.
    Ok(Option<Zeroizing<Vec<u8>>>),
    /// `ERR code text`.
    Err { code: u32, text: String },
}

impl Reply {
    /// The libgpg-error code without its source, for `ERR` answers.
    pub fn err_code(&self) -> Option<u16> {
        match self {
            Reply::Ok(_) => None,
            Reply::Err { code, .. } => Some((*code & 0xffff) as u16),
        }
    }
}

impl std::fmt::Debug for Reply {
    // Never prints the data: it is the PIN or password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Reply::Ok(None) => write!(f, "OK"),
            Reply::Ok(Some(d)) => write!(f, "OK (+{} bytes of data)", d.len()),
            Reply::Err { code, text } => write!(f, "ERR {code} {text}"),
        }
    }
}

/// Why talking to the pinentry failed.
#[derive(Debug)]
pub enum Failure {
    Io(io::Error),
    /// The pinentry closed its output (it exited or crashed).
    Eof,
    Protocol(String),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Io(e) => write!(f, "{e}"),
            Failure::Eof => write!(f, "pinentry closed the connection"),
            Failure::Protocol(p) => write!(f, "protocol error: {p}"),
        }
    }
}

impl From<io::Error> for Failure {
    fn from(e: io::Error) -> Self {
        Failure::Io(e)
    }
}

/// One line from the server, borrowed from the read buffer.
#[derive(Debug, PartialEq)]
pub enum Line<'a> {
    Ok,
    Err {
        code: u32,
        text: &'a str,
    },
    Status,
    Comment,
    /// Still percent-encoded.
    Data(&'a [u8]),
    Inquire(&'a str),
}

/// Parses one line (without its line feed).
pub fn parse_line(line: &[u8]) -> Result<Line<'_>, Failure> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let (word, rest) = match line.iter().position(|&b| b == b' ') {
        Some(i) => (&line[..i], &line[i + 1..]),
        None => (line, &[][..]),
    };
    match word {
        b"OK" => Ok(Line::Ok),
        b"D" => Ok(Line::Data(rest)),
        b"S" => Ok(Line::Status),
        b"#" => Ok(Line::Comment),
        _ if line.starts_with(b"#") => Ok(Line::Comment),
        b"ERR" => {
            let rest = std::str::from_utf8(rest).map_err(|_| Failure::Protocol("ERR line is not UTF-8".into()))?;
            let (num, text) = rest.split_once(' ').unwrap_or((rest, ""));
            let code = num.parse().map_err(|_| Failure::Protocol(format!("bad ERR code {num:?}")))?;
            Ok(Line::Err { code, text })
        }
        b"INQUIRE" => Ok(Line::Inquire(std::str::from_utf8(rest).unwrap_or("?"))),
        _ => Err(Failure::Protocol(format!(
            "unexpected line starting {:?}",
            String::from_utf8_lossy(&line[..line.len().min(16)])
        ))),
    }
}

/// Appends the percent-decoded `data` to `out`, refusing to grow `out`
/// past its capacity (so the secret is never copied by a reallocation).
pub fn percent_decode_into(data: &[u8], out: &mut Vec<u8>) -> Result<(), Failure> {
    let mut i = 0;
    while i < data.len() {
        let byte = if data[i] == b'%' {
            let hex = data.get(i + 1..i + 3).ok_or_else(|| Failure::Protocol("truncated %-escape".into()))?;
            let hi = (hex[0] as char).to_digit(16);
            let lo = (hex[1] as char).to_digit(16);
            match (hi, lo) {
                (Some(hi), Some(lo)) => {
                    i += 3;
                    (hi * 16 + lo) as u8
                }
                _ => return Err(Failure::Protocol("bad %-escape".into())),
            }
        } else {
            i += 1;
            data[i - 1]
        };
        if out.len() == out.capacity() {
            return Err(Failure::Protocol("data too long".into()));
        }
        out.push(byte);
    }
    Ok(())
}

/// Builds a request line: `COMMAND parameter\n`, with the parameter's `%`,
/// CR and LF percent-encoded, other control characters dropped, a trailing
/// backslash escaped, and the whole cut to Assuan's line limit.
pub fn encode_request(command: &str, parameter: Option<&str>) -> String {
    let mut line = String::from(command);
    if let Some(p) = parameter {
        line.push(' ');
        for c in p.chars() {
            let piece: &str = match c {
                '%' => "%25",
                '\n' => "%0A",
                '\r' => "%0D",
                c if c.is_control() => continue,
                _ => {
                    // Keep room for a final "%5C" and the line feed.
                    if line.len() + c.len_utf8() > MAX_LINE - 4 {
                        break;
                    }
                    line.push(c);
                    continue;
                }
            };
            if line.len() + piece.len() > MAX_LINE - 4 {
                break;
            }
            line.push_str(piece);
        }
        if line.ends_with('\\') {
            line.pop();
            line.push_str("%5C");
        }
    }
    line.push('\n');
    line
}

/// Reads lines into a fixed buffer that is wiped when dropped.
struct LineReader<R> {
    inner: R,
    buf: Zeroizing<Vec<u8>>,
    filled: usize,
}

impl<R: AsyncRead + Unpin> LineReader<R> {
    fn new(inner: R) -> Self {
        LineReader { inner, buf: Zeroizing::new(vec![0; 2 * MAX_LINE]), filled: 0 }
    }

    /// Copies the next line (without its line feed) into `out`, whose
    /// capacity must be at least MAX_LINE. Ok(false) at end of file.
    async fn next_line(&mut self, out: &mut Zeroizing<Vec<u8>>) -> Result<bool, Failure> {
        loop {
            if let Some(pos) = self.buf[..self.filled].iter().position(|&b| b == b'\n') {
                out.clear();
                if pos > out.capacity() {
                    return Err(Failure::Protocol("line too long".into()));
                }
                out.extend_from_slice(&self.buf[..pos]);
                self.buf.copy_within(pos + 1..self.filled, 0);
                let left = self.filled - (pos + 1);
                self.buf[left..self.filled].fill(0);
                self.filled = left;
                return Ok(true);
            }
            if self.filled == self.buf.len() {
                return Err(Failure::Protocol("line too long".into()));
            }
            let n = self.inner.read(&mut self.buf[self.filled..]).await?;
            if n == 0 {
                return Ok(false);
            }
            self.filled += n;
        }
    }
}

/// Sends `true` when dropped: the stderr reader says it has finished,
/// however it ends.
struct DropSend(tokio::sync::watch::Sender<bool>);

impl Drop for DropSend {
    fn drop(&mut self) {
        self.0.send_replace(true);
    }
}

/// A running pinentry and the Assuan session with it.
pub struct Connection {
    child: Child,
    stdin: ChildStdin,
    reader: LineReader<ChildStdout>,
    line: Zeroizing<Vec<u8>>,
    stderr: Arc<Mutex<VecDeque<String>>>,
    /// True once the pinentry's stderr reached its end.
    stderr_done: tokio::sync::watch::Receiver<bool>,
}

impl Connection {
    /// Starts `program` with the agent's environment (DISPLAY,
    /// WAYLAND_DISPLAY, DBUS_SESSION_BUS_ADDRESS come from the session).
    /// The greeting is read by the caller, under its deadline.
    pub fn spawn(program: &Path) -> io::Result<Self> {
        let mut command = Command::new(program);
        command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // If a dialog is dropped without being closed, the child goes too.
            .kill_on_drop(true);
        // If the agent itself dies (SIGKILL, crash), no dialog stays on
        // screen asking for a PIN nobody will receive. (The signal follows
        // the spawning thread: a runtime worker, which lives as long as the
        // agent.)
        // SAFETY: prctl is async-signal-safe and touches only the child.
        unsafe {
            command.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) == -1 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = command.spawn()?;
        let stdin = child.stdin.take().ok_or_else(|| io::Error::other("no stdin pipe"))?;
        let stdout = child.stdout.take().ok_or_else(|| io::Error::other("no stdout pipe"))?;
        let stderr_tail = Arc::new(Mutex::new(VecDeque::new()));
        let (done_tx, stderr_done) = tokio::sync::watch::channel(false);
        if let Some(stderr) = child.stderr.take() {
            let tail = stderr_tail.clone();
            let pid = child.id();
            tokio::spawn(async move {
                let _done = DropSend(done_tx);
                let mut lines = BufReader::new(stderr).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    tracing::debug!(pinentry_pid = pid, "pinentry stderr: {line}");
                    let mut tail = tail.lock().unwrap_or_else(|p| p.into_inner());
                    if tail.len() == STDERR_LINES {
                        tail.pop_front();
                    }
                    tail.push_back(line);
                }
            });
        }
        Ok(Connection {
            child,
            stdin,
            reader: LineReader::new(stdout),
            line: Zeroizing::new(Vec::with_capacity(2 * MAX_LINE)),
            stderr: stderr_tail,
            stderr_done,
        })
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Sends one request and reads its answer.
    pub async fn transact(&mut self, command: &str, parameter: Option<&str>) -> Result<Reply, Failure> {
        let line = encode_request(command, parameter);
        tracing::trace!(command, "to pinentry");
        self.stdin.write_all(line.as_bytes()).await?;
        self.stdin.flush().await?;
        self.read_reply().await
    }

    /// Reads lines up to the final OK or ERR (also used for the greeting).
    pub async fn read_reply(&mut self) -> Result<Reply, Failure> {
        let mut data: Option<Zeroizing<Vec<u8>>> = None;
        loop {
            if !self.reader.next_line(&mut self.line).await? {
                return Err(Failure::Eof);
            }
            match parse_line(&self.line)? {
                Line::Ok => return Ok(Reply::Ok(data)),
                Line::Err { code, text } => return Ok(Reply::Err { code, text: text.to_owned() }),
                Line::Status | Line::Comment => {}
                Line::Data(encoded) => {
                    let out = data.get_or_insert_with(|| Zeroizing::new(Vec::with_capacity(MAX_DATA)));
                    percent_decode_into(encoded, out)?;
                }
                Line::Inquire(keyword) => {
                    // pinentry only inquires for optional features this
                    // client never enables (e.g. a quality bar): decline.
                    tracing::debug!(keyword, "pinentry inquiry declined");
                    self.stdin.write_all(b"CAN\n").await?;
                    self.stdin.flush().await?;
                }
            }
        }
    }

    /// The last lines the pinentry wrote to stderr, to explain a failure
    /// (e.g. "cannot open display"). A pinentry never echoes the secret there.
    /// Waits briefly for the end of stderr first (after the pinentry has
    /// exited or been killed, its last words may still be in the pipe).
    pub async fn stderr_tail(&mut self) -> String {
        let _ = tokio::time::timeout(Duration::from_millis(200), self.stderr_done.wait_for(|d| *d)).await;
        let tail = self.stderr.lock().unwrap_or_else(|p| p.into_inner());
        tail.iter().map(String::as_str).collect::<Vec<_>>().join(" | ")
    }

    /// The exit status, if the child exits within `wait`.
    pub async fn exit_status(&mut self, wait: Duration) -> Option<ExitStatus> {
        tokio::time::timeout(wait, self.child.wait()).await.ok().and_then(Result::ok)
    }

    /// Ends the pinentry now: SIGTERM (a curses pinentry restores the
    /// terminal), then SIGKILL if it is still there after 300 ms; reaped.
    pub async fn terminate(&mut self) {
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        if let Some(pid) = self.child.id() {
            // SAFETY: plain kill(2) on our own child's pid, which is not yet
            // reaped (try_wait above), so the pid cannot have been reused.
            unsafe {
                libc::kill(pid as libc::pid_t, libc::SIGTERM);
            }
        }
        if self.exit_status(Duration::from_millis(300)).await.is_none() {
            let _ = self.child.kill().await;
        }
    }

    /// Ends the session politely (BYE), then as `terminate` if it lingers.
    pub async fn bye(&mut self) {
        let polite = async {
            let _ = self.stdin.write_all(b"BYE\n").await;
            let _ = self.stdin.flush().await;
            self.child.wait().await
        };
        if tokio::time::timeout(Duration::from_secs(1), polite).await.is_err() {
            self.terminate().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_server_lines() {
        assert_eq!(parse_line(b"OK Pleased to meet you").unwrap(), Line::Ok);
        assert_eq!(parse_line(b"OK").unwrap(), Line::Ok);
        assert_eq!(parse_line(b"OK\r").unwrap(), Line::Ok);
        assert_eq!(
            parse_line(b"ERR 83886179 Operation cancelled <Pinentry>").unwrap(),
            Line::Err { code: 83886179, text: "Operation cancelled <Pinentry>" }
        );
        assert_eq!(parse_line(b"ERR 5").unwrap(), Line::Err { code: 5, text: "" });
        assert_eq!(parse_line(b"S PASSWORD_FROM_CACHE").unwrap(), Line::Status);
        assert_eq!(parse_line(b"# a comment").unwrap(), Line::Comment);
        assert_eq!(parse_line(b"#").unwrap(), Line::Comment);
        assert_eq!(parse_line(b"D 12%2534").unwrap(), Line::Data(b"12%2534"));
        assert_eq!(parse_line(b"INQUIRE QUALITY 1234").unwrap(), Line::Inquire("QUALITY 1234"));
        assert!(parse_line(b"HELLO").is_err());
        assert!(parse_line(b"ERR x").is_err());
    }

    #[test]
    fn decodes_percent_escapes_without_growing() {
        let mut out = Vec::with_capacity(16);
        percent_decode_into(b"a%25b%0A%0d%5C", &mut out).unwrap();
        assert_eq!(out, b"a%b\n\r\\");
        let mut out = Vec::with_capacity(16);
        assert!(percent_decode_into(b"%4", &mut out).is_err());
        assert!(percent_decode_into(b"%zz", &mut out).is_err());
        let mut small = Vec::with_capacity(2);
        assert!(percent_decode_into(b"abc", &mut small).is_err());
        assert_eq!(small.capacity(), 2);
    }

    #[test]
    fn encodes_requests() {
        assert_eq!(encode_request("GETPIN", None), "GETPIN\n");
        assert_eq!(encode_request("SETDESC", Some("a\nb%c\r")), "SETDESC a%0Ab%25c%0D\n");
        assert_eq!(encode_request("SETDESC", Some("tab\there\u{7}")), "SETDESC tabhere\n");
        assert_eq!(encode_request("SETDESC", Some("ends with \\")), "SETDESC ends with %5C\n");
        let long = "é".repeat(2000);
        let line = encode_request("SETDESC", Some(&long));
        assert!(line.len() <= MAX_LINE, "{}", line.len());
        assert!(line.ends_with("é\n"));
    }

    #[tokio::test]
    async fn reads_lines_across_reads() {
        let (mut w, r) = tokio::io::duplex(64);
        let mut reader = LineReader::new(r);
        let mut out = Zeroizing::new(Vec::with_capacity(MAX_LINE));
        w.write_all(b"OK hi\nD 1").await.unwrap();
        assert!(reader.next_line(&mut out).await.unwrap());
        assert_eq!(&out[..], b"OK hi");
        w.write_all(b"234\nOK\n").await.unwrap();
        assert!(reader.next_line(&mut out).await.unwrap());
        assert_eq!(&out[..], b"D 1234");
        assert!(reader.next_line(&mut out).await.unwrap());
        assert_eq!(&out[..], b"OK");
        drop(w);
        assert!(!reader.next_line(&mut out).await.unwrap());
        assert!(reader.buf.iter().all(|&b| b == 0), "consumed bytes are wiped");
    }
}
