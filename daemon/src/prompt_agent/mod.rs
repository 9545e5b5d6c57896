//! `[prompt] mode = "agent"`: presence, verification and the choice of a
//! passkey asked of the agent in the device user's session, over the
//! system bus (org.fidoseal.Agent1, docs/dbus.md).
//!
//! Threads: the CTAP core calls [`UserPrompt`] on the transport's blocking
//! worker thread (spawn_blocking). Each call drives its D-Bus work with
//! `Handle::block_on` on that thread; the connection's reader runs on the
//! runtime's worker, so replies arrive while this thread waits. PAM runs
//! on the blocking thread itself, outside any future.
//!
//! Every wait races four things: the agent's reply, the deadline (policy's
//! prompt_timeout, else `[prompt] timeout`), the host's CTAPHID_CANCEL
//! (polled from [`TransactionSignals`] every 20 ms) and the agent going
//! away (unregistered, or its connection closed: registry generation).
//! Whenever the daemon stops waiting for an answer it sends Agent1.Cancel
//! for that request. Only an explicit "yes" approves; every error, odd
//! answer or missing agent is a refusal.

pub mod registry;

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fidoseal_ctap::platform::{
    CredentialStore, PresenceRequest, PromptOutcome, TransactionSignals, UserPrompt, VerificationOutcome,
};
use fidoseal_dbus::{detail, details, Agent1Proxy, Details};
use tokio::sync::watch;
use zbus::proxy::CacheProperties;
use zbus::Connection;
use zeroize::Zeroizing;

pub use self::registry::{AgentRegistry, Bus, RegisteredAgent};
use crate::config::{Config, PromptMode, UvMethod};
use crate::dbus_service::caller;
use crate::device_user::DeviceOwner;
use crate::shared_credentials::SharedCredentialStore;
use crate::verification::fprintd::{self, ScanResult};
use crate::verification::pam::{PamResult, PamVerifier};

/// How often a wait looks at the host's cancel flag.
const CANCEL_POLL: Duration = Duration::from_millis(20);
/// How long fprintd's "has a reader and fingers" answer is trusted.
const FINGERPRINT_PROBE_TTL: Duration = Duration::from_secs(5);
/// Informational calls (ShowFailure) are not waited for longer than this.
const INFO_CALL_TIMEOUT: Duration = Duration::from_secs(2);

/// What the agent prompt needs to know from the configuration.
#[derive(Debug, Clone)]
pub struct PromptSettings {
    /// `[prompt] timeout`, unless policy gives the request its own.
    pub timeout: Duration,
    /// `[prompt] uv_methods`, in order of preference.
    pub uv_methods: Vec<UvMethod>,
    /// `[device] user`: whose password, whose finger.
    pub device_user: String,
    /// Who they are by uid (never looked up on the async runtime,
    /// device_user.rs): the only uid whose agent is asked. None: nobody's.
    pub owner: Option<DeviceOwner>,
    pub pam: PamVerifier,
}

impl PromptSettings {
    /// Built-in verification other than the PIN is configured: a
    /// fingerprint, or a password with its PAM service installed. Whether
    /// an agent is there to ask does not matter: the key is protected by it
    /// (CTAP 2.1 §6.11.1), so its settings change only with a token. The
    /// PIN typed into the agent protects only once a PIN is set, which the
    /// core checks itself.
    pub fn built_in_uv_configured(&self) -> bool {
        self.uv_methods.iter().any(|method| match method {
            UvMethod::Fingerprint => true,
            UvMethod::Password => self.pam.available(),
            UvMethod::Pin => false,
        })
    }
}

/// The [`UserPrompt`] of agent mode. Clones share everything (the
/// authenticator holds one, the D-Bus service another for Status).
#[derive(Clone)]
pub struct AgentPrompt {
    registry: Arc<AgentRegistry>,
    settings: Arc<PromptSettings>,
    /// The authenticator's persistent state, read for the PIN and uvRetries.
    store: SharedCredentialStore,
    fingerprint_probe: Arc<Mutex<Option<(Instant, bool)>>>,
}

/// Why the daemon stopped waiting for an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Abandoned {
    HostCancelled,
    /// The agent's CancelRequest: the user closed the dialog.
    UserStopped,
    TimedOut,
    AgentGone,
}

impl Abandoned {
    fn outcome(self) -> PromptOutcome {
        match self {
            Abandoned::HostCancelled => PromptOutcome::Cancelled,
            // The user's no, as when a dialog is closed before it answers.
            Abandoned::UserStopped => PromptOutcome::Denied,
            Abandoned::TimedOut => PromptOutcome::TimedOut,
            Abandoned::AgentGone => PromptOutcome::Unavailable,
        }
    }
}

/// The step after the agent answered RequestVerification.
enum Verification {
    Done(VerificationOutcome),
    /// Checked with PAM on the blocking thread, outside the runtime.
    Password {
        secret: Zeroizing<String>,
        request: u64,
        agent: RegisteredAgent,
    },
}

/// One request to one agent.
struct Asking<'a> {
    agent: RegisteredAgent,
    proxy: Agent1Proxy<'a>,
    id: u64,
    deadline: tokio::time::Instant,
    timeout: Duration,
}

impl AgentPrompt {
    pub fn new(registry: Arc<AgentRegistry>, settings: PromptSettings, store: SharedCredentialStore) -> Self {
        Self { registry, settings: Arc::new(settings), store, fingerprint_probe: Arc::new(Mutex::new(None)) }
    }

    /// The agent prompt of `[prompt] mode = "agent"` for the device of
    /// `user` (whose agent is asked, whose password and finger verify);
    /// None in always-approve mode. `registry` must be that user's alone
    /// (devices.rs): RegisterAgent admits only its uid there.
    pub fn for_user(
        config: &Config,
        user: &str,
        owner: DeviceOwner,
        registry: &Arc<AgentRegistry>,
        store: &SharedCredentialStore,
    ) -> Option<Self> {
        if config.prompt.mode != PromptMode::Agent {
            return None;
        }
        let settings = PromptSettings {
            timeout: config.prompt.timeout(),
            uv_methods: config.prompt.uv_methods.clone(),
            // An empty name (single mode refuses agent mode without a user)
            // matches nobody, so nothing could be approved.
            device_user: user.to_owned(),
            owner: Some(owner),
            pam: PamVerifier::new(&config.prompt.pam_service),
        };
        let methods: Vec<&str> = settings.uv_methods.iter().map(|m| m.name()).collect();
        tracing::info!(
            user = settings.device_user,
            timeout_s = settings.timeout.as_secs(),
            uv_methods = ?methods,
            pam_service = config.prompt.pam_service,
            "prompts go to the device user's session agent over D-Bus"
        );
        Some(Self::new(Arc::clone(registry), settings, store.clone()))
    }

    fn timeout_for(&self, request: &PresenceRequest<'_>) -> Duration {
        request.timeout.unwrap_or(self.settings.timeout)
    }

    /// The registered agent, if its user still has an active session
    /// (checked on every prompt, not only at registration).
    async fn agent_for_prompt(&self, connection: &Connection) -> Option<RegisteredAgent> {
        let Some(agent) = self.registry.current() else {
            tracing::info!("no agent registered: nobody can be asked");
            return None;
        };
        // The registry is the device owner's alone (RegisterAgent checks the
        // uid); checked again here, since a prompt must never reach another
        // user's agent.
        if !self.settings.owner.as_ref().is_some_and(|owner| owner.is(agent.uid)) {
            tracing::warn!(agent = %agent.owner, uid = agent.uid, user = self.settings.device_user, "the agent is not the device owner's: not asking");
            return None;
        }
        match caller::check_session(connection, agent.pid, agent.uid).await {
            Ok(_) => Some(agent),
            Err(reason) => {
                tracing::info!(agent = %agent.owner, reason, "the agent's user is not in an active session: not asking");
                None
            }
        }
    }

    /// Opens a request on the agent: a proxy, an id and a deadline.
    async fn open<'a>(&self, connection: &'a Connection, request: &PresenceRequest<'_>) -> Option<Asking<'a>> {
        let agent = self.agent_for_prompt(connection).await?;
        let proxy = match agent_proxy(connection, &agent).await {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(agent = %agent.owner, error = %e, "cannot reach the agent");
                return None;
            }
        };
        let timeout = self.timeout_for(request);
        Some(Asking {
            agent,
            proxy,
            id: self.registry.next_request_id(),
            deadline: tokio::time::Instant::now() + timeout,
            timeout,
        })
    }

    /// Runs `work` until it ends, the host cancels, the deadline passes or
    /// the agent goes away.
    async fn race<T>(
        &self,
        asking: &Asking<'_>,
        signals: &TransactionSignals,
        work: impl Future<Output = T>,
    ) -> Result<T, Abandoned> {
        let mut changes = self.registry.subscribe();
        let mut stopped = self.registry.subscribe_stopped();
        tokio::select! {
            biased;
            () = host_cancelled(signals) => Err(Abandoned::HostCancelled),
            // The agent's CancelRequest for this request (AgentManager1).
            () = watch_until(&mut stopped, |&id| id == asking.id) => Err(Abandoned::UserStopped),
            // The registration this request went to is no longer current.
            () = watch_until(&mut changes, |&generation| generation != asking.agent.generation) => Err(Abandoned::AgentGone),
            () = tokio::time::sleep_until(asking.deadline) => Err(Abandoned::TimedOut),
            value = work => Ok(value),
        }
    }

    /// Waits for the agent's reply to `call`; on any other ending, tells the
    /// agent to close the request.
    async fn ask<T>(
        &self,
        asking: &Asking<'_>,
        what: &'static str,
        signals: &TransactionSignals,
        call: impl Future<Output = zbus::Result<T>>,
    ) -> Result<T, PromptOutcome> {
        match self.race(asking, signals, call).await {
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(error)) => Err(refusal(error, what, asking)),
            Err(abandoned) => {
                tracing::info!(request = asking.id, agent = %asking.agent.owner, ?abandoned, "{what}: stopped waiting for the agent");
                send_cancel(asking).await;
                Err(abandoned.outcome())
            }
        }
    }

    async fn presence(
        &self,
        connection: &Connection,
        request: &PresenceRequest<'_>,
        signals: &TransactionSignals,
    ) -> PromptOutcome {
        let Some(asking) = self.open(connection, request).await else {
            return PromptOutcome::Unavailable;
        };
        log_asking(&asking, "RequestPresence", request);
        let details = request_details(request, asking.timeout);
        match self.ask(&asking, "RequestPresence", signals, asking.proxy.request_presence(asking.id, details)).await {
            Ok(()) => PromptOutcome::Approved,
            Err(outcome) => outcome,
        }
    }

    async fn select(
        &self,
        connection: &Connection,
        request: &PresenceRequest<'_>,
        accounts: &[String],
        signals: &TransactionSignals,
    ) -> Result<usize, PromptOutcome> {
        let Some(asking) = self.open(connection, request).await else {
            return Err(PromptOutcome::Unavailable);
        };
        log_asking(&asking, "SelectCredential", request);
        let details = request_details(request, asking.timeout);
        let labels: Vec<&str> = accounts.iter().map(String::as_str).collect();
        let index = self
            .ask(&asking, "SelectCredential", signals, asking.proxy.select_credential(asking.id, details, &labels))
            .await?;
        match usize::try_from(index) {
            Ok(i) if i < accounts.len() => Ok(i),
            _ => {
                tracing::warn!(
                    request = asking.id,
                    index,
                    choices = accounts.len(),
                    "the agent chose a passkey that was not offered"
                );
                Err(PromptOutcome::Unavailable)
            }
        }
    }

    /// The methods that can be offered now, in the configured order.
    async fn usable_methods(&self, connection: &Connection, pin_available: bool) -> Vec<UvMethod> {
        let mut usable = Vec::new();
        for &method in &self.settings.uv_methods {
            let ok = match method {
                UvMethod::Fingerprint => self.fingerprint_ready(connection).await,
                UvMethod::Password => self.settings.pam.available(),
                UvMethod::Pin => pin_available,
            };
            if ok {
                usable.push(method);
            }
        }
        usable
    }

    async fn fingerprint_ready(&self, connection: &Connection) -> bool {
        if let Some((at, ready)) = *self.fingerprint_probe.lock().unwrap_or_else(|e| e.into_inner()) {
            if at.elapsed() < FINGERPRINT_PROBE_TTL {
                return ready;
            }
        }
        let ready = match fprintd::ready_for(connection, &self.settings.device_user).await {
            Ok(()) => true,
            Err(reason) => {
                tracing::debug!(user = self.settings.device_user, reason, "fingerprint not usable");
                false
            }
        };
        *self.fingerprint_probe.lock().unwrap_or_else(|e| e.into_inner()) = Some((Instant::now(), ready));
        ready
    }

    /// The PIN is set and not blocked, as the authenticator last stored it.
    fn pin_usable(&self) -> bool {
        let state = self.store.load_state();
        state.pin.is_some() && state.pin_retries > 0
    }

    /// uvRetries left once the failure being reported is counted.
    fn uv_retries_after_failure(&self) -> u32 {
        u32::from(self.store.load_state().uv_retries.saturating_sub(1))
    }

    /// Built-in UV can be asked for now: an agent in an active session and
    /// at least one configured method usable.
    pub async fn verification_ready(&self, connection: &Connection) -> bool {
        if self.settings.uv_methods.is_empty() || self.registry.current().is_none() {
            return false;
        }
        if self.agent_for_prompt(connection).await.is_none() {
            return false;
        }
        !self.usable_methods(connection, self.pin_usable()).await.is_empty()
    }

    async fn verification(
        &self,
        connection: &Connection,
        request: &PresenceRequest<'_>,
        pin_available: bool,
        signals: &TransactionSignals,
    ) -> Verification {
        use VerificationOutcome::NotVerified;
        let Some(asking) = self.open(connection, request).await else {
            return Verification::Done(NotVerified(PromptOutcome::Unavailable));
        };
        let methods = self.usable_methods(connection, pin_available).await;
        if methods.is_empty() {
            tracing::info!(request = asking.id, "no verification method is usable now");
            return Verification::Done(NotVerified(PromptOutcome::Unavailable));
        }
        let names: Vec<&str> = methods.iter().map(|m| m.name()).collect();
        log_asking(&asking, "RequestVerification", request);
        tracing::info!(request = asking.id, methods = ?names, "verification methods offered");
        let details = request_details(request, asking.timeout);
        let (method, secret) = match self
            .ask(&asking, "RequestVerification", signals, asking.proxy.request_verification(asking.id, details, &names))
            .await
        {
            Ok(answer) => answer,
            Err(outcome) => return Verification::Done(NotVerified(outcome)),
        };
        let secret = Zeroizing::new(secret);
        let chosen = UvMethod::from_name(&method).filter(|m| methods.contains(m));
        match chosen {
            None => {
                tracing::warn!(request = asking.id, method, "the agent answered with a method that was not offered");
                send_cancel(&asking).await;
                Verification::Done(NotVerified(PromptOutcome::Unavailable))
            }
            Some(UvMethod::Pin | UvMethod::Password) if secret.is_empty() => {
                tracing::info!(request = asking.id, method, "nothing was typed: not verified, no retry spent");
                Verification::Done(NotVerified(PromptOutcome::Denied))
            }
            Some(UvMethod::Pin) => {
                tracing::info!(request = asking.id, "PIN typed in the agent; the authenticator checks it");
                Verification::Done(VerificationOutcome::Pin(secret))
            }
            Some(UvMethod::Password) => {
                Verification::Password { secret, request: asking.id, agent: asking.agent.clone() }
            }
            Some(UvMethod::Fingerprint) => Verification::Done(self.fingerprint(connection, &asking, signals).await),
        }
    }

    /// fprintd verifies while the agent shows "touch the sensor"; the agent's
    /// request is closed with Cancel when the scan ends, however it ends.
    async fn fingerprint(
        &self,
        connection: &Connection,
        asking: &Asking<'_>,
        signals: &TransactionSignals,
    ) -> VerificationOutcome {
        use VerificationOutcome::{Failed, NotVerified, Verified};
        let user = &self.settings.device_user;
        let mut scan = match fprintd::Scan::start(connection, user).await {
            Ok(scan) => scan,
            Err(reason) => {
                tracing::warn!(request = asking.id, user, reason, "fingerprint verification could not start");
                send_cancel(asking).await;
                return NotVerified(PromptOutcome::Unavailable);
            }
        };
        tracing::info!(request = asking.id, user, "fingerprint verification started");
        let result = self.race(asking, signals, scan.result()).await;
        scan.finish().await;
        let outcome = match result {
            Ok(ScanResult::Match) => Verified,
            Ok(ScanResult::NoMatch) => {
                show_failure(asking, "The fingerprint did not match.", self.uv_retries_after_failure()).await;
                Failed
            }
            Ok(ScanResult::Unavailable(reason)) => {
                tracing::warn!(request = asking.id, reason, "fingerprint verification failed");
                NotVerified(PromptOutcome::Unavailable)
            }
            Err(abandoned) => NotVerified(abandoned.outcome()),
        };
        tracing::info!(request = asking.id, user, outcome = outcome_name(&outcome), "fingerprint verification");
        send_cancel(asking).await;
        outcome
    }

    /// PAM, on the calling (blocking) thread.
    fn check_password(&self, bus: &Bus, secret: &str, request: u64, agent: &RegisteredAgent) -> VerificationOutcome {
        let user = &self.settings.device_user;
        match self.settings.pam.verify(user, secret) {
            PamResult::Verified => {
                tracing::info!(request, user, "password verified by PAM");
                VerificationOutcome::Verified
            }
            PamResult::Failed(reason) => {
                tracing::warn!(request, user, reason, "password refused by PAM");
                let retries = self.uv_retries_after_failure();
                bus.runtime.block_on(async {
                    if let Ok(proxy) = agent_proxy(&bus.connection, agent).await {
                        let asking = Asking {
                            agent: agent.clone(),
                            proxy,
                            id: request,
                            deadline: tokio::time::Instant::now(),
                            timeout: Duration::ZERO,
                        };
                        show_failure(&asking, "The password was not accepted.", retries).await;
                    }
                });
                VerificationOutcome::Failed
            }
            PamResult::Error(reason) => {
                tracing::error!(request, user, reason, "PAM could not check the password");
                VerificationOutcome::NotVerified(PromptOutcome::Unavailable)
            }
        }
    }
}

impl UserPrompt for AgentPrompt {
    fn request_presence(&mut self, request: &PresenceRequest<'_>, signals: &TransactionSignals) -> PromptOutcome {
        let Some(bus) = self.registry.bus().cloned() else {
            tracing::warn!("the D-Bus service is not running: nobody can be asked");
            return PromptOutcome::Unavailable;
        };
        // The core logs the outcome ("user presence").
        bus.runtime.block_on(self.presence(&bus.connection, request, signals))
    }

    fn verification_available(&self) -> bool {
        let Some(bus) = self.registry.bus().cloned() else {
            return false;
        };
        bus.runtime.block_on(self.verification_ready(&bus.connection))
    }

    fn verification_configured(&self) -> bool {
        self.settings.built_in_uv_configured()
    }

    fn request_verification(
        &mut self,
        request: &PresenceRequest<'_>,
        pin_available: bool,
        signals: &TransactionSignals,
    ) -> VerificationOutcome {
        let Some(bus) = self.registry.bus().cloned() else {
            return VerificationOutcome::NotVerified(PromptOutcome::Unavailable);
        };
        match bus.runtime.block_on(self.verification(&bus.connection, request, pin_available, signals)) {
            Verification::Done(outcome) => outcome,
            Verification::Password { secret, request: id, agent } => {
                if signals.is_cancelled() {
                    return VerificationOutcome::NotVerified(PromptOutcome::Cancelled);
                }
                self.check_password(&bus, &secret, id, &agent)
            }
        }
    }

    fn select_credential(
        &mut self,
        request: &PresenceRequest<'_>,
        accounts: &[String],
        signals: &TransactionSignals,
    ) -> Option<Result<usize, PromptOutcome>> {
        // Without an agent the core answers with numberOfCredentials, as a
        // key without a display does.
        self.registry.current()?;
        let bus = self.registry.bus().cloned()?;
        let choice = bus.runtime.block_on(self.select(&bus.connection, request, accounts, signals));
        tracing::info!(rp_id = request.rp_id, choices = accounts.len(), ?choice, "agent passkey choice");
        Some(choice)
    }
}

async fn agent_proxy<'a>(connection: &'a Connection, agent: &RegisteredAgent) -> zbus::Result<Agent1Proxy<'a>> {
    Agent1Proxy::builder(connection)
        .destination(agent.owner.to_string())?
        .path(agent.path.to_string())?
        .cache_properties(CacheProperties::No)
        .build()
        .await
}

/// Agent1.Cancel, sent without waiting for a reply: it is queued on the
/// connection before anything the daemon sends next, so a later request
/// never overtakes it.
async fn send_cancel(asking: &Asking<'_>) {
    if let Err(e) = asking.proxy.inner().call_noreply("Cancel", &(asking.id,)).await {
        tracing::debug!(request = asking.id, error = %e, "could not send Cancel to the agent");
    }
}

async fn show_failure(asking: &Asking<'_>, message: &str, retries_left: u32) {
    match tokio::time::timeout(INFO_CALL_TIMEOUT, asking.proxy.show_failure(asking.id, message, retries_left)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::debug!(request = asking.id, error = %e, "ShowFailure failed"),
        Err(_) => tracing::debug!(request = asking.id, "ShowFailure was not answered in time"),
    }
}

/// How an error reply of the agent ends the prompt: the user's no is
/// Denied; anything else (unknown method, disconnected, …) Unavailable.
fn refusal(error: zbus::Error, what: &str, asking: &Asking<'_>) -> PromptOutcome {
    match fidoseal_dbus::Error::from(error) {
        fidoseal_dbus::Error::Rejected(_) => PromptOutcome::Denied,
        // The user closed the prompt: a no, not the host's cancel.
        fidoseal_dbus::Error::Canceled(_) => PromptOutcome::Denied,
        other => {
            tracing::warn!(request = asking.id, agent = %asking.agent.owner, error = ?other, "{what}: the agent call failed");
            PromptOutcome::Unavailable
        }
    }
}

async fn host_cancelled(signals: &TransactionSignals) {
    while !signals.is_cancelled() {
        tokio::time::sleep(CANCEL_POLL).await;
    }
}

/// Completes when the registry's `value` satisfies `done`, checked now and
/// at every change; never once the registry is gone with the daemon.
async fn watch_until(value: &mut watch::Receiver<u64>, done: impl FnMut(&u64) -> bool) {
    if value.wait_for(done).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// The details dictionary of every Agent1 request (dbus/interfaces/org.fidoseal.Agent1.xml).
fn request_details(request: &PresenceRequest<'_>, timeout: Duration) -> Details {
    let mut d = Details::new();
    d.insert(details::RP_ID.into(), detail(request.rp_id.unwrap_or("")));
    d.insert(details::ACTION.into(), detail(request.purpose.name()));
    if let Some(user) = request.user_name {
        d.insert(details::USER.into(), detail(user));
    }
    if let Some(message) = request.message {
        d.insert(details::MESSAGE.into(), detail(message));
    }
    let timeout_ms = u32::try_from(timeout.as_millis()).unwrap_or(u32::MAX);
    d.insert(details::TIMEOUT_MS.into(), detail(timeout_ms));
    d
}

fn log_asking(asking: &Asking<'_>, what: &str, request: &PresenceRequest<'_>) {
    tracing::info!(
        request = asking.id,
        agent = %asking.agent.owner,
        rp_id = request.rp_id,
        action = request.purpose.name(),
        timeout_ms = asking.timeout.as_millis() as u64,
        "{what}"
    );
}

fn outcome_name(outcome: &VerificationOutcome) -> &'static str {
    match outcome {
        VerificationOutcome::Verified => "verified",
        VerificationOutcome::Pin(_) => "pin",
        VerificationOutcome::Failed => "failed",
        VerificationOutcome::NotVerified(_) => "not-verified",
    }
}

#[cfg(test)]
mod configured_tests {
    use super::*;

    fn settings(uv_methods: Vec<UvMethod>, pam: PamVerifier) -> PromptSettings {
        PromptSettings { timeout: Duration::from_secs(1), uv_methods, device_user: "alice".into(), owner: None, pam }
    }

    #[test]
    fn built_in_uv_is_configured_by_fingerprint_or_an_installed_password_service() {
        let temp_dir = tempfile::tempdir().unwrap();
        let dir = temp_dir.path();
        let missing = || PamVerifier::with_confdir("fidoseal-test", dir);
        assert!(!settings(vec![], missing()).built_in_uv_configured());
        assert!(!settings(vec![UvMethod::Pin], missing()).built_in_uv_configured(), "the PIN counts once set");
        assert!(settings(vec![UvMethod::Fingerprint], missing()).built_in_uv_configured());
        assert!(!settings(vec![UvMethod::Password], missing()).built_in_uv_configured(), "no PAM service");
        std::fs::write(dir.join("fidoseal-test"), "auth required pam_deny.so\n").unwrap();
        assert!(settings(vec![UvMethod::Pin, UvMethod::Password], missing()).built_in_uv_configured());
    }
}
