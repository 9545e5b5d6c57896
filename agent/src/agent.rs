//! org.fidoseal.Agent1, as served to fidoseald.
//!
//! The agent shows and collects; it decides nothing. Every call is checked
//! against the current owner of org.fidoseal.Fidoseal1 first.

use std::sync::Arc;
use std::time::Duration;

use fidoseal_dbus::{method, Details, Error, BUS_NAME};
use serde::{Serialize, Serializer};
use tokio::time::Instant;
use zbus::message::Header;
use zbus::zvariant::{Signature, Type};
use zeroize::Zeroizing;

use crate::daemon_watch::DaemonWatch;
use crate::pinentry::{Button, Dialog, DialogError, Entry, Pinentry};
use crate::requests::{Requests, Ticket};
use crate::text::{self, button, clean_line, method_label, RequestInfo, TITLE};

/// How long a failure message waits for a next dialog (which then shows
/// it inline) before it gets a window of its own.
const FAILURE_GRACE: Duration = Duration::from_millis(300);
/// How long a failure message stays up at most.
const FAILURE_SHOWN_FOR: Duration = Duration::from_secs(30);
/// Attempts at a valid entry (non-empty secret, a number in range).
const ENTRY_ATTEMPTS: usize = 3;
/// The selection list must fit Assuan's 1000-byte line with the context.
const LIST_BUDGET: usize = 700;

/// A secret on its way into the reply: wiped when the reply is built.
/// (The serialized message buffer is zbus's and is not wiped.)
pub struct Secret(Zeroizing<String>);

impl Secret {
    fn empty() -> Self {
        Secret(Zeroizing::new(String::new()))
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl Type for Secret {
    const SIGNATURE: &'static Signature = &Signature::Str;
}

pub struct Agent {
    pub pinentry: Pinentry,
    pub requests: Arc<Requests>,
    pub daemon: Arc<DaemonWatch>,
}

/// What the user did, when it was not an answer.
enum Refusal {
    /// Deny, Cancel, closed the window, gave up on the entry.
    User(&'static str),
    Dialog(DialogError),
}

impl From<DialogError> for Refusal {
    fn from(e: DialogError) -> Self {
        Refusal::Dialog(e)
    }
}

/// Maps the end of a dialog to the D-Bus error, with one log line.
fn refusal(request: u64, call: &str, info: &RequestInfo, r: Refusal) -> Error {
    match r {
        Refusal::User(why) => {
            tracing::info!(request, call, rp_id = %info.rp_id, action = %info.action, outcome = "rejected", "{why}");
            Error::Rejected(why.to_owned())
        }
        Refusal::Dialog(DialogError::Closed) => {
            tracing::info!(request, call, rp_id = %info.rp_id, outcome = "canceled", "dialog closed");
            Error::Canceled("the request was cancelled".to_owned())
        }
        Refusal::Dialog(DialogError::TimedOut) => {
            tracing::info!(request, call, rp_id = %info.rp_id, outcome = "canceled", "no answer in time");
            Error::Canceled("no answer in time".to_owned())
        }
        Refusal::Dialog(DialogError::Failed(reason)) => {
            tracing::warn!(request, call, rp_id = %info.rp_id, outcome = "canceled", reason = %reason, "pinentry failed");
            Error::Canceled(format!("pinentry failed: {reason}"))
        }
    }
}

impl Agent {
    /// The caller must be the daemon: returns its unique name and the
    /// call's serial number.
    async fn caller(&self, hdr: &Header<'_>, call: &str, request: u64) -> Result<(String, u32), Error> {
        let serial = hdr.primary().serial_num().get();
        let Some(sender) = hdr.sender() else {
            tracing::warn!(call, request, "refused a call without a sender");
            return Err(Error::NotPermitted("no sender".into()));
        };
        if self.daemon.is_daemon(sender).await {
            return Ok((sender.to_string(), serial));
        }
        let uid = self.daemon.unix_user(sender).await;
        tracing::warn!(call, request, sender = %sender, uid, "refused a call from a connection that is not fidoseald");
        Err(Error::NotPermitted(format!("only the owner of {BUS_NAME} may call this agent")))
    }

    fn begin(&self, request: u64, sender: &str, serial: u32, call: &str) -> Result<(Ticket, Option<String>), Error> {
        self.requests.begin(request, sender, serial).map_err(|_| {
            tracing::info!(request, call, outcome = "canceled", "cancelled before it started");
            Error::Canceled("the request was cancelled".to_owned())
        })
    }

    async fn open(&self, ticket: &Ticket, info: &RequestInfo) -> Result<Dialog, DialogError> {
        // A little past the daemon's own limit: the daemon gives up first
        // and says so with Cancel; this is the backstop.
        let deadline = Instant::now() + info.timeout + Duration::from_millis(500);
        self.pinentry.open(ticket.closer.clone(), deadline).await
    }
}

/// AgentManager1.CancelRequest to the daemon that asked (its unique name):
/// the user stopped a request the agent had already answered.
async fn cancel_request(conn: &zbus::Connection, daemon: &str, request: u64) {
    let call = async {
        let manager = fidoseal_dbus::AgentManager1Proxy::builder(conn).destination(daemon.to_owned())?.build().await?;
        manager.cancel_request(request).await
    };
    match tokio::time::timeout(Duration::from_secs(2), call).await {
        Ok(Ok(())) => tracing::debug!(request, "CancelRequest sent"),
        // The request may have ended meanwhile, or the daemon left.
        Ok(Err(e)) => tracing::info!(request, error = %e, "CancelRequest was not taken"),
        Err(_) => tracing::warn!(request, "CancelRequest was not answered in time"),
    }
}

fn with_failure(failure: Option<&str>, text: String) -> String {
    match failure {
        Some(f) => format!("{f}\n\n{text}"),
        None => text,
    }
}

async fn presence(dlg: &mut Dialog, info: &RequestInfo, failure: Option<&str>) -> Result<(), Refusal> {
    dlg.set("SETTITLE", TITLE).await?;
    dlg.set("SETDESC", &with_failure(failure, info.presence_text())).await?;
    let ok = if info.action == "reset" { "_Reset" } else { "_Allow" };
    dlg.set("SETOK", ok).await?;
    dlg.set("SETCANCEL", "_Deny").await?;
    dlg.set_timeout_from_deadline().await?;
    match dlg.confirm().await? {
        Button::Ok => Ok(()),
        Button::NotOk | Button::Cancel => Err(Refusal::User("denied by the user")),
    }
}

/// Several methods: the user picks one with successive CONFIRMs, two
/// methods per dialog (OK = the first, "not OK" = the second or "Other
/// method…" when more remain), Cancel = no.
async fn choose_method(
    dlg: &mut Dialog,
    info: &RequestInfo,
    offered: &[&'static str],
    failure: Option<&str>,
) -> Result<&'static str, Refusal> {
    dlg.set("SETTITLE", TITLE).await?;
    dlg.set(
        "SETDESC",
        &with_failure(failure, format!("{}\n\nHow do you want to verify it's you?", info.verification_context())),
    )
    .await?;
    dlg.set("SETCANCEL", "_Cancel").await?;
    let mut rest = offered;
    while rest.len() > 1 {
        dlg.set("SETOK", method_label(rest[0])).await?;
        let other = if rest.len() == 2 { method_label(rest[1]) } else { "Other method…" };
        dlg.set_optional("SETNOTOK", other).await?;
        dlg.set_timeout_from_deadline().await?;
        match dlg.confirm().await? {
            Button::Ok => return Ok(rest[0]),
            Button::NotOk => rest = &rest[1..],
            Button::Cancel => return Err(Refusal::User("verification cancelled by the user")),
        }
    }
    Ok(rest[0])
}

/// GETPIN for a PIN or a password; an empty entry is asked again.
async fn enter_secret(
    dlg: &mut Dialog,
    info: &RequestInfo,
    chosen: &str,
    failure: Option<String>,
) -> Result<Zeroizing<String>, Refusal> {
    let (what, prompt) = if chosen == method::PIN {
        ("Enter the PIN of this security key.", "PIN:")
    } else {
        ("Enter your login password.", "Password:")
    };
    dlg.set("SETTITLE", TITLE).await?;
    dlg.set("SETDESC", &format!("{}\n\n{what}", info.verification_context())).await?;
    dlg.set("SETPROMPT", prompt).await?;
    dlg.set("SETOK", "_OK").await?;
    dlg.set("SETCANCEL", "_Cancel").await?;
    let mut error = failure;
    for _ in 0..ENTRY_ATTEMPTS {
        if let Some(e) = error.take() {
            dlg.set("SETERROR", &e).await?;
        }
        dlg.set_timeout_from_deadline().await?;
        match dlg.get_pin().await? {
            Entry::Value(v) if !v.is_empty() => return Ok(v),
            Entry::Value(_) => error = Some("Nothing was entered.".to_owned()),
            Entry::Canceled => return Err(Refusal::User("entry cancelled by the user")),
        }
    }
    Err(Refusal::User("nothing entered"))
}

/// The numbered list of accounts for the selection dialogs, cut to fit one
/// Assuan line; accounts that do not fit are counted.
fn account_list(accounts: &[String]) -> String {
    let mut list = String::new();
    for (i, a) in accounts.iter().enumerate() {
        let line = format!("\n{}) {}", i + 1, clean_line(a, 48));
        if list.len() + line.len() > LIST_BUDGET {
            list.push_str(&format!("\n… and {} more (numbers {} to {})", accounts.len() - i, i + 1, accounts.len()));
            break;
        }
        list.push_str(&line);
    }
    list
}

/// Picks one account. One: a CONFIRM. Two: a CONFIRM whose OK and "not OK"
/// buttons are the two accounts. Three or more (or a pinentry without
/// SETNOTOK): GETPIN asking for the number from the list (pinentry has no
/// list widget).
async fn select(
    dlg: &mut Dialog,
    info: &RequestInfo,
    accounts: &[String],
    failure: Option<&str>,
) -> Result<u32, Refusal> {
    let n = accounts.len();
    dlg.set("SETTITLE", TITLE).await?;
    dlg.set("SETCANCEL", "_Cancel").await?;
    if n == 1 {
        let text = format!("{}\n\nUse the passkey of {}?", info.context(), clean_line(&accounts[0], 48));
        dlg.set("SETDESC", &with_failure(failure, text)).await?;
        dlg.set("SETOK", "_Use").await?;
        dlg.set_timeout_from_deadline().await?;
        return match dlg.confirm().await? {
            Button::Ok => Ok(0),
            _ => Err(Refusal::User("selection cancelled by the user")),
        };
    }
    let text = format!("{}\n\nSeveral passkeys match. Which one?{}", info.context(), account_list(accounts));
    if n == 2 {
        dlg.set("SETDESC", &with_failure(failure, text.clone())).await?;
        dlg.set("SETOK", &button(&format!("1) {}", accounts[0]))).await?;
        if dlg.set_optional("SETNOTOK", &button(&format!("2) {}", accounts[1]))).await? {
            dlg.set_timeout_from_deadline().await?;
            return match dlg.confirm().await? {
                Button::Ok => Ok(0),
                Button::NotOk => Ok(1),
                Button::Cancel => Err(Refusal::User("selection cancelled by the user")),
            };
        }
    }
    dlg.set("SETDESC", &format!("{text}\n\nType the number of the passkey to use.")).await?;
    dlg.set("SETPROMPT", "Number:").await?;
    dlg.set("SETOK", "_OK").await?;
    let mut error = failure.map(str::to_owned);
    for _ in 0..ENTRY_ATTEMPTS {
        if let Some(e) = error.take() {
            dlg.set("SETERROR", &e).await?;
        }
        dlg.set_timeout_from_deadline().await?;
        match dlg.get_pin().await? {
            Entry::Value(v) => match v.trim().trim_end_matches(')').parse::<usize>() {
                Ok(k) if (1..=n).contains(&k) => return Ok((k - 1) as u32),
                _ => error = Some(format!("Type a number from 1 to {n}.")),
            },
            Entry::Canceled => return Err(Refusal::User("selection cancelled by the user")),
        }
    }
    Err(Refusal::User("no valid choice"))
}

#[zbus::interface(name = "org.fidoseal.Agent1")]
impl Agent {
    async fn request_presence(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        request: u64,
        details: Details,
    ) -> Result<(), Error> {
        let (sender, serial) = self.caller(&hdr, "RequestPresence", request).await?;
        let info = RequestInfo::from_details(&details);
        tracing::info!(request, rp_id = %info.rp_id, action = %info.action, "presence requested");
        let (ticket, failure) = self.begin(request, &sender, serial, "RequestPresence")?;
        let result = async {
            let mut dlg = self.open(&ticket, &info).await?;
            presence(&mut dlg, &info, failure.as_deref()).await?;
            dlg.close();
            Ok(())
        }
        .await;
        match result {
            Ok(()) => {
                tracing::info!(request, rp_id = %info.rp_id, action = %info.action, outcome = "allowed", "presence confirmed");
                Ok(())
            }
            Err(r) => Err(refusal(request, "RequestPresence", &info, r)),
        }
    }

    #[zbus(out_args("method", "secret"))]
    async fn request_verification(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        request: u64,
        details: Details,
        methods: Vec<String>,
        #[zbus(connection)] conn: &zbus::Connection,
    ) -> Result<(String, Secret), Error> {
        let (sender, serial) = self.caller(&hdr, "RequestVerification", request).await?;
        let info = RequestInfo::from_details(&details);
        let mut offered: Vec<&'static str> = Vec::new();
        for m in &methods {
            let known = match m.as_str() {
                method::FINGERPRINT => method::FINGERPRINT,
                method::PIN => method::PIN,
                method::PASSWORD => method::PASSWORD,
                other => {
                    tracing::warn!(request, method = %clean_line(other, 32), "ignoring an unknown verification method");
                    continue;
                }
            };
            if !offered.contains(&known) {
                offered.push(known);
            }
        }
        tracing::info!(request, rp_id = %info.rp_id, action = %info.action, methods = ?offered, "verification requested");
        if offered.is_empty() {
            return Err(Error::Failed(format!("none of the methods {methods:?} is known to this agent")));
        }
        let (ticket, failure) = self.begin(request, &sender, serial, "RequestVerification")?;
        let mut dlg = match self.open(&ticket, &info).await {
            Ok(d) => d,
            Err(e) => return Err(refusal(request, "RequestVerification", &info, e.into())),
        };
        let mut failure = failure;
        let chosen = if offered.len() == 1 {
            offered[0]
        } else {
            match choose_method(&mut dlg, &info, &offered, failure.as_deref()).await {
                Ok(m) => {
                    failure = None; // shown in the chooser already
                    m
                }
                Err(r) => return Err(refusal(request, "RequestVerification", &info, r)),
            }
        };

        if chosen == method::FINGERPRINT {
            // Answer now so the daemon runs fprintd; keep "touch the sensor"
            // up until Cancel, the next call for this request, or the
            // deadline. Its button (or closing the window) stops the scan:
            // the agent tells the daemon with AgentManager1.CancelRequest.
            let text = with_failure(
                failure.as_deref(),
                format!("{}\n\nTouch the fingerprint sensor.", info.verification_context()),
            );
            let shown = async {
                dlg.set("SETTITLE", TITLE).await?;
                dlg.set("SETDESC", &text).await?;
                dlg.set("SETOK", "_Cancel").await?;
                dlg.set_timeout_from_deadline().await
            }
            .await;
            if let Err(e) = shown {
                return Err(refusal(request, "RequestVerification", &info, e.into()));
            }
            self.requests.set_linger(&ticket);
            let (conn, daemon) = (conn.clone(), sender);
            tokio::spawn(async move {
                let ticket = ticket;
                match dlg.message().await {
                    Ok(()) => {
                        tracing::info!(
                            request = ticket.request,
                            outcome = "canceled",
                            "fingerprint prompt cancelled by the user"
                        );
                        dlg.close();
                        cancel_request(&conn, &daemon, ticket.request).await;
                    }
                    Err(DialogError::Failed(reason)) => {
                        tracing::warn!(request = ticket.request, reason = %reason, "fingerprint prompt failed")
                    }
                    Err(_) => tracing::debug!(request = ticket.request, "fingerprint prompt closed"),
                }
            });
            tracing::info!(request, rp_id = %info.rp_id, outcome = "fingerprint", "user chose fingerprint");
            return Ok((method::FINGERPRINT.to_owned(), Secret::empty()));
        }

        match enter_secret(&mut dlg, &info, chosen, failure).await {
            Ok(secret) => {
                dlg.close();
                drop(ticket);
                // Logged without the secret, of course.
                tracing::info!(request, rp_id = %info.rp_id, outcome = chosen, "secret entered");
                Ok((chosen.to_owned(), Secret(secret)))
            }
            Err(r) => Err(refusal(request, "RequestVerification", &info, r)),
        }
    }

    #[zbus(out_args("index"))]
    async fn select_credential(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        request: u64,
        details: Details,
        accounts: Vec<String>,
    ) -> Result<u32, Error> {
        let (sender, serial) = self.caller(&hdr, "SelectCredential", request).await?;
        let info = RequestInfo::from_details(&details);
        tracing::info!(request, rp_id = %info.rp_id, accounts = accounts.len(), "selection requested");
        if accounts.is_empty() {
            return Err(Error::Failed("no accounts to choose from".into()));
        }
        let (ticket, failure) = self.begin(request, &sender, serial, "SelectCredential")?;
        let result = async {
            let mut dlg = self.open(&ticket, &info).await?;
            let index = select(&mut dlg, &info, &accounts, failure.as_deref()).await?;
            dlg.close();
            Ok(index)
        }
        .await;
        match result {
            Ok(index) => {
                tracing::info!(request, rp_id = %info.rp_id, index, outcome = "selected", "passkey chosen");
                Ok(index)
            }
            Err(r) => Err(refusal(request, "SelectCredential", &info, r)),
        }
    }

    async fn cancel(&self, #[zbus(header)] hdr: Header<'_>, request: u64) -> Result<(), Error> {
        let (sender, serial) = self.caller(&hdr, "Cancel", request).await?;
        let closed = self.requests.cancel(request, &sender, serial);
        tracing::info!(request, closed, "cancel");
        Ok(())
    }

    async fn show_failure(
        &self,
        #[zbus(header)] hdr: Header<'_>,
        request: u64,
        message: String,
        retries_left: u32,
    ) -> Result<(), Error> {
        let (_, serial) = self.caller(&hdr, "ShowFailure", request).await?;
        let text = text::failure_text(&message, retries_left);
        tracing::info!(request, retries_left, message = %text, "verification failure");
        let token = self.requests.show_failure(request, serial, text);
        let requests = self.requests.clone();
        let pinentry = self.pinentry.clone();
        tokio::spawn(async move {
            tokio::time::sleep(FAILURE_GRACE).await;
            // Taken by a newer dialog (shown there), or replaced: nothing to do.
            let Some((text, window)) = requests.notice_window(token) else { return };
            let shown = async {
                let mut dlg = pinentry.open(window.closer.clone(), Instant::now() + FAILURE_SHOWN_FOR).await?;
                dlg.set("SETTITLE", TITLE).await?;
                dlg.set("SETDESC", &text).await?;
                dlg.set("SETOK", "_OK").await?;
                dlg.set_timeout_from_deadline().await?;
                dlg.message().await?;
                dlg.close();
                Ok::<(), DialogError>(())
            }
            .await;
            if let Err(DialogError::Failed(reason)) = shown {
                tracing::warn!(request, reason = %reason, "could not show the failure message");
            }
            drop(window);
        });
        Ok(())
    }
}
