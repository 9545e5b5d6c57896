//! Asking the user: presence, built-in verification and the choice of a
//! passkey (the agent in the user's session), and the signals a running
//! request shares with the transport (cancellation, KEEPALIVE, the time spent
//! waiting for the user).

use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::ctaphid::KeepaliveStatus;

/// What the user is asked to confirm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PresencePurpose {
    #[default]
    Register,
    Authenticate,
    /// The credential already exists (excludeList): the touch only confirms it.
    ConfirmExisting,
    /// authenticatorSelection: "touch the key you want to use".
    Select,
    Reset,
    /// A token to manage the key: list or delete passkeys (cm), change its
    /// settings (acfg) or write its large blobs (lbw).
    Manage,
    /// The platform's own deletion of one passkey (`rp_id`, `user_name`),
    /// verified by [`crate::Authenticator::verify_user_for_platform`]
    /// (fidoseald's Manager1.DeletePasskey).
    DeletePasskey,
}

impl PresencePurpose {
    /// The purpose's name: the agent's `action` detail and the audit trail's
    /// `FIDOSEAL_OPERATION=` of a prompt.
    pub fn name(self) -> &'static str {
        match self {
            Self::Register => "register",
            Self::Authenticate => "sign-in",
            Self::ConfirmExisting => "confirm-existing",
            Self::Select => "select-key",
            Self::Reset => "reset",
            Self::Manage => "manage",
            Self::DeletePasskey => "delete-passkey",
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct PresenceRequest<'a> {
    pub purpose: PresencePurpose,
    pub rp_id: Option<&'a str>,
    pub user_name: Option<&'a str>,
    /// From policy: a message to show, and how long to wait for an answer.
    pub message: Option<&'a str>,
    pub timeout: Option<std::time::Duration>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PromptOutcome {
    Approved,
    Denied,
    TimedOut,
    Cancelled,
    /// Nobody can be asked (no agent, agent gone): treated as a denial.
    Unavailable,
}

/// The result of asking the user to verify (built-in user verification).
pub enum VerificationOutcome {
    /// The prompt verified the user itself: a fingerprint through fprintd or
    /// a password through PAM, checked by the daemon. Presence is implied.
    Verified,
    /// The user typed the authenticator's PIN; the core checks it against
    /// its own PIN and retry counter.
    Pin(zeroize::Zeroizing<String>),
    /// The user tried and failed (no match, wrong password): one uvRetry is spent.
    Failed,
    /// Not verified for any other reason (denied, timed out, cancelled, no agent).
    NotVerified(PromptOutcome),
}

/// Asks the user for presence and, where the daemon offers it, for
/// verification and for a choice between passkeys.
pub trait UserPrompt: Send {
    /// Blocks until the user answers, the prompt times out, or `signals`
    /// reports a cancellation from the host.
    fn request_presence(&mut self, request: &PresenceRequest<'_>, signals: &TransactionSignals) -> PromptOutcome;

    /// Built-in user verification is configured and can be asked for now
    /// (getInfo option "uv").
    fn verification_available(&self) -> bool {
        false
    }

    /// Built-in user verification is configured, whether or not it can be
    /// asked for at this moment (no agent in an active session, reader
    /// unplugged): the key is then "protected by some form of user
    /// verification" (CTAP 2.1 §6.11.1, §6.10.3) and its settings and
    /// large blobs change only with a token, as with a PIN.
    fn verification_configured(&self) -> bool {
        self.verification_available()
    }

    /// Asks the user to verify; `pin_available` says the authenticator has a
    /// usable PIN the user may type instead of the other methods.
    fn request_verification(
        &mut self,
        _request: &PresenceRequest<'_>,
        _pin_available: bool,
        _signals: &TransactionSignals,
    ) -> VerificationOutcome {
        VerificationOutcome::NotVerified(PromptOutcome::Unavailable)
    }

    /// Several discoverable credentials match and no allow list narrows
    /// them: the user picks one of `accounts` (newest first). `None` when this
    /// prompt offers no choice; the platform then gets numberOfCredentials.
    fn select_credential(
        &mut self,
        _request: &PresenceRequest<'_>,
        _accounts: &[String],
        _signals: &TransactionSignals,
    ) -> Option<Result<usize, PromptOutcome>> {
        None
    }
}

/// Shared between the transport and a running request: the transport sets
/// `cancel`; the authenticator says whether it waits for the user, which the
/// transport reports in KEEPALIVE messages.
#[derive(Default)]
pub struct TransactionSignals {
    state: Mutex<SignalState>,
    changed: Condvar,
}

#[derive(Default)]
struct SignalState {
    cancelled: bool,
    waiting_for_user: bool,
    /// Since when, while waiting for the user.
    waiting_since: Option<Instant>,
    /// How long the transaction has waited for the user so far.
    time_with_user: Duration,
}

impl TransactionSignals {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SignalState> {
        // A poisoned lock only means another thread panicked while holding
        // two booleans; their values are still meaningful.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn cancel(&self) {
        self.lock().cancelled = true;
        self.changed.notify_all();
    }

    pub fn is_cancelled(&self) -> bool {
        self.lock().cancelled
    }

    /// Waits up to `timeout` for a cancellation; true if cancelled.
    pub fn wait_for_cancel(&self, timeout: Duration) -> bool {
        let guard = self.lock();
        let (guard, _) =
            self.changed.wait_timeout_while(guard, timeout, |s| !s.cancelled).unwrap_or_else(|e| e.into_inner());
        guard.cancelled
    }

    /// Marks the start and the end of a wait for the user (KEEPALIVE says
    /// UPNEEDED meanwhile); the time between counts as time with the user.
    pub fn set_waiting_for_user(&self, waiting: bool) {
        let mut state = self.lock();
        match (waiting, state.waiting_since) {
            (true, None) => state.waiting_since = Some(Instant::now()),
            (false, Some(since)) => {
                state.time_with_user += since.elapsed();
                state.waiting_since = None;
            }
            _ => {}
        }
        state.waiting_for_user = waiting;
    }

    /// How long this transaction has waited for the user: a prompt that
    /// took 35 s moves the timers that start when the user acted by 35 s
    /// ([`crate::RequestContext::after_user`]).
    pub fn time_with_user(&self) -> Duration {
        self.lock().time_with_user
    }

    /// Counts `time` as spent with the user, for prompts whose user does
    /// not take real time (scripted tests, simulated clocks).
    pub fn add_time_with_user(&self, time: Duration) {
        self.lock().time_with_user += time;
    }

    pub fn keepalive_status(&self) -> KeepaliveStatus {
        if self.lock().waiting_for_user {
            KeepaliveStatus::UserPresenceNeeded
        } else {
            KeepaliveStatus::Processing
        }
    }
}
