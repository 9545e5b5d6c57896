//! Dialogs through the desktop's pinentry program: confirm (up to three
//! buttons), enter a secret, show a message.
//!
//! Every step runs under two guards: the request's deadline and its
//! "closer" (set by Cancel, by a newer call for the same request, or when
//! the daemon leaves the bus). Whichever fires first kills the pinentry at
//! once, so a request never waits on a pinentry that hangs, and an error
//! from the pinentry (EOF, ERR, exit, no display) ends the request at once
//! with the reason.

use std::path::PathBuf;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;
use zeroize::Zeroizing;

use crate::assuan::{code, Connection, Failure, Reply};

/// How long a pinentry may take to greet us, or to answer a command that
/// does not wait for the user (SETDESC, OPTION, ...).
const STEP_TIMEOUT: Duration = Duration::from_secs(10);

/// Which pinentry to run.
#[derive(Debug, Clone)]
pub struct Pinentry {
    pub program: PathBuf,
}

/// Why a dialog ended without an answer from the user.
#[derive(Debug)]
pub enum DialogError {
    /// Closed on purpose: Cancel, a newer call, the daemon left.
    Closed,
    /// The request's deadline passed (or the pinentry's own timeout).
    TimedOut,
    /// The pinentry failed: could not start, EOF, exited, ERR, garbage.
    Failed(String),
}

/// The button the user pressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Button {
    Ok,
    NotOk,
    Cancel,
}

/// What GETPIN gave back.
pub enum Entry {
    Value(Zeroizing<String>),
    Canceled,
}

/// One open pinentry session.
pub struct Dialog {
    conn: Connection,
    closer: watch::Receiver<bool>,
    deadline: Instant,
    dead: bool,
}

/// Waits until `closer` says "close". A dropped sender never closes.
async fn closed(closer: &mut watch::Receiver<bool>) {
    if closer.wait_for(|c| *c).await.is_err() {
        std::future::pending::<()>().await;
    }
}

impl Pinentry {
    /// Starts the pinentry and reads its greeting. `closer` and `deadline`
    /// guard the whole dialog.
    pub async fn open(&self, closer: watch::Receiver<bool>, deadline: Instant) -> Result<Dialog, DialogError> {
        if *closer.borrow() {
            return Err(DialogError::Closed);
        }
        let conn = Connection::spawn(&self.program)
            .map_err(|e| DialogError::Failed(format!("cannot start {}: {e}", self.program.display())))?;
        tracing::debug!(program = %self.program.display(), pid = conn.pid(), "pinentry started");
        let mut dialog = Dialog { conn, closer, deadline, dead: false };
        match dialog.step(None, true).await? {
            Reply::Ok(_) => {}
            reply => return Err(dialog.fail(format!("unexpected greeting {reply:?}")).await),
        }
        // Options a terminal pinentry needs; graphical ones take DISPLAY /
        // WAYLAND_DISPLAY from the environment. No SETKEYINFO is ever sent,
        // so no pinentry offers to store the secret in a password manager.
        let mut options = Vec::new();
        if let Some(tty) = std::env::var_os("GPG_TTY").and_then(|t| t.into_string().ok()) {
            options.push(format!("ttyname={tty}"));
        }
        if let Ok(term) = std::env::var("TERM") {
            options.push(format!("ttytype={term}"));
        }
        for var in ["LC_ALL", "LC_CTYPE", "LANG"] {
            if let Ok(v) = std::env::var(var) {
                if !v.is_empty() {
                    options.push(format!("lc-ctype={v}"));
                    break;
                }
            }
        }
        for option in options {
            // Pinentries refuse options they do not know: not fatal.
            if let Reply::Err { code, text } = dialog.step(Some(("OPTION", Some(&option))), false).await? {
                tracing::debug!(option, code, text, "pinentry refused option");
            }
        }
        Ok(dialog)
    }
}

impl Dialog {
    /// Runs one request (or reads the greeting when `request` is None)
    /// under the closer and the deadline; `interactive` steps wait for the
    /// user until the deadline, others get STEP_TIMEOUT.
    async fn step(&mut self, request: Option<(&str, Option<&str>)>, interactive: bool) -> Result<Reply, DialogError> {
        if self.dead {
            return Err(DialogError::Failed("pinentry already ended".into()));
        }
        let limit = if interactive { self.deadline } else { self.deadline.min(Instant::now() + STEP_TIMEOUT) };
        let outcome = {
            let conn = &mut self.conn;
            let io = async move {
                match request {
                    Some((command, parameter)) => conn.transact(command, parameter).await,
                    None => conn.read_reply().await,
                }
            };
            tokio::select! {
                r = io => Ok(r),
                _ = closed(&mut self.closer) => Err(DialogError::Closed),
                _ = tokio::time::sleep_until(limit) => Err(if limit == self.deadline {
                    DialogError::TimedOut
                } else {
                    DialogError::Failed(format!("pinentry did not answer {} within {STEP_TIMEOUT:?}", request.map_or("greeting", |r| r.0)))
                }),
            }
        };
        match outcome {
            Ok(Ok(reply)) => Ok(reply),
            Ok(Err(failure)) => Err(self.failed_io(failure).await),
            Err(e) => {
                self.kill().await;
                Err(e)
            }
        }
    }

    async fn failed_io(&mut self, failure: Failure) -> DialogError {
        let mut reason = failure.to_string();
        if matches!(failure, Failure::Eof | Failure::Io(_)) {
            if let Some(status) = self.conn.exit_status(Duration::from_millis(200)).await {
                reason.push_str(&format!(" ({status})"));
            }
        }
        self.fail(reason).await
    }

    /// Kills the pinentry and builds the failure, with its last stderr lines.
    async fn fail(&mut self, reason: String) -> DialogError {
        self.kill().await;
        let tail = self.conn.stderr_tail().await;
        if tail.is_empty() {
            DialogError::Failed(reason)
        } else {
            DialogError::Failed(format!("{reason}; pinentry said: {tail}"))
        }
    }

    async fn kill(&mut self) {
        if !self.dead {
            self.dead = true;
            self.conn.terminate().await;
        }
    }

    /// A setting (SETDESC, SETOK, ...): an ERR here means a broken pinentry.
    pub async fn set(&mut self, command: &str, value: &str) -> Result<(), DialogError> {
        match self.step(Some((command, Some(value))), false).await? {
            Reply::Ok(_) => Ok(()),
            reply => Err(self.fail(format!("{command} refused: {reply:?}")).await),
        }
    }

    /// A setting that older pinentries may not know (SETNOTOK): logged only.
    /// Ok(false) when it was refused.
    pub async fn set_optional(&mut self, command: &str, value: &str) -> Result<bool, DialogError> {
        if let Reply::Err { code, text } = self.step(Some((command, Some(value))), false).await? {
            tracing::debug!(command, code, text, "pinentry refused an optional setting");
            return Ok(false);
        }
        Ok(true)
    }

    /// Asks the pinentry to give up by itself a little before our deadline,
    /// so that it can say so; our own deadline stays the hard limit.
    pub async fn set_timeout_from_deadline(&mut self) -> Result<(), DialogError> {
        let secs = self.deadline.saturating_duration_since(Instant::now()).as_secs().max(1);
        self.set_optional("SETTIMEOUT", &secs.to_string()).await.map(drop)
    }

    /// CONFIRM: which button was pressed. With no SETNOTOK, Cancel and
    /// closing the window both come back as `Cancel`.
    pub async fn confirm(&mut self) -> Result<Button, DialogError> {
        let reply = self.step(Some(("CONFIRM", None)), true).await?;
        match reply.err_code() {
            None => Ok(Button::Ok),
            Some(code::NOT_CONFIRMED) => Ok(Button::NotOk),
            Some(code::CANCELED) | Some(code::FULLY_CANCELED) => Ok(Button::Cancel),
            Some(code::TIMEOUT) => {
                self.kill().await;
                Err(DialogError::TimedOut)
            }
            Some(_) => Err(self.fail(format!("CONFIRM failed: {reply:?}")).await),
        }
    }

    /// MESSAGE: a text with one button; returns when it is dismissed.
    pub async fn message(&mut self) -> Result<(), DialogError> {
        let reply = self.step(Some(("MESSAGE", None)), true).await?;
        match reply.err_code() {
            None | Some(code::CANCELED) | Some(code::FULLY_CANCELED) | Some(code::NOT_CONFIRMED) => Ok(()),
            Some(code::TIMEOUT) => {
                self.kill().await;
                Err(DialogError::TimedOut)
            }
            Some(_) => Err(self.fail(format!("MESSAGE failed: {reply:?}")).await),
        }
    }

    /// GETPIN: the text typed, or Canceled if the user cancelled.
    pub async fn get_pin(&mut self) -> Result<Entry, DialogError> {
        let reply = self.step(Some(("GETPIN", None)), true).await?;
        match reply {
            Reply::Ok(data) => {
                let mut bytes = data.unwrap_or_else(|| Zeroizing::new(Vec::new()));
                // The allocation moves into the String without a copy.
                match String::from_utf8(std::mem::take(&mut *bytes)) {
                    Ok(s) => Ok(Entry::Value(Zeroizing::new(s))),
                    Err(e) => {
                        drop(Zeroizing::new(e.into_bytes()));
                        Err(self.fail("GETPIN answer is not UTF-8".into()).await)
                    }
                }
            }
            ref r => match r.err_code() {
                Some(code::CANCELED) | Some(code::FULLY_CANCELED) => Ok(Entry::Canceled),
                Some(code::TIMEOUT) => {
                    self.kill().await;
                    Err(DialogError::TimedOut)
                }
                _ => Err(self.fail(format!("GETPIN failed: {reply:?}")).await),
            },
        }
    }

    /// Ends a dialog that answered: BYE in the background, so the reply to
    /// the daemon does not wait for the window to go.
    pub fn close(mut self) {
        if self.dead {
            return;
        }
        self.dead = true;
        tokio::spawn(async move { self.conn.bye().await });
    }
}
