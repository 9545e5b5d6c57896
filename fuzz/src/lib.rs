//! What the fuzz targets share: an authenticator with the software key
//! store, the memory credential store and a prompt whose answers the fuzz
//! input chooses, on a clock the input moves.
//!
//! The authenticator lives for the whole run (state carries from one input
//! to the next, as on a real key: a PIN set by one input is asked for by
//! the next). A crash that needs earlier inputs may not reproduce from its
//! own file alone; rerun the corpus in order (docs/fuzzing.md).

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use fidoseal_ctap::memory_store::MemoryCredentialStore;
use fidoseal_ctap::platform::{
    AllowAll, PresenceRequest, PromptOutcome, Secret32, TransactionSignals, UserPrompt, VerificationOutcome,
};
use fidoseal_ctap::software_keystore::SoftwareKeyStore;
use fidoseal_ctap::{Authenticator, AuthenticatorConfig, Platform, RequestContext};

/// A prompt that answers as the current input's prompt byte says:
/// bits 0-2 presence, bits 3-5 verification (and whether it is offered),
/// bits 6-7 the passkey choice.
#[derive(Clone, Default)]
pub struct FuzzPrompt(Arc<AtomicU8>);

fn outcome(bits: u8) -> PromptOutcome {
    match bits % 5 {
        0 => PromptOutcome::Approved,
        1 => PromptOutcome::Denied,
        2 => PromptOutcome::TimedOut,
        3 => PromptOutcome::Cancelled,
        _ => PromptOutcome::Unavailable,
    }
}

impl FuzzPrompt {
    fn byte(&self) -> u8 {
        self.0.load(Ordering::Relaxed)
    }
}

impl UserPrompt for FuzzPrompt {
    fn request_presence(&mut self, _request: &PresenceRequest<'_>, _signals: &TransactionSignals) -> PromptOutcome {
        // Mostly yes, so that ceremonies get past presence.
        match self.byte() & 0x07 {
            0..=3 => PromptOutcome::Approved,
            bits => outcome(bits),
        }
    }

    fn verification_available(&self) -> bool {
        self.byte() & 0x20 != 0
    }

    fn request_verification(
        &mut self,
        _request: &PresenceRequest<'_>,
        _pin_available: bool,
        _signals: &TransactionSignals,
    ) -> VerificationOutcome {
        match (self.byte() >> 3) & 0x03 {
            0 => VerificationOutcome::Verified,
            1 => VerificationOutcome::Pin(String::from("1234").into()),
            2 => VerificationOutcome::Failed,
            _ => VerificationOutcome::NotVerified(outcome(self.byte())),
        }
    }

    fn select_credential(
        &mut self,
        _request: &PresenceRequest<'_>,
        accounts: &[String],
        _signals: &TransactionSignals,
    ) -> Option<Result<usize, PromptOutcome>> {
        match self.byte() >> 6 {
            0 => None,
            1 => Some(Ok(0)),
            // Possibly out of range: the core must check the agent's answer.
            2 => Some(Ok(accounts.len().saturating_sub(1) + usize::from(self.byte() & 1))),
            _ => Some(Err(PromptOutcome::Denied)),
        }
    }
}

/// The authenticator of a fuzz run and its clock.
pub struct Session {
    pub authenticator: Authenticator,
    pub prompt: FuzzPrompt,
    pub signals: TransactionSignals,
    pub now: Instant,
    pub channel: u32,
}

impl Session {
    fn new() -> Self {
        let prompt = FuzzPrompt::default();
        let platform = Platform {
            // A fixed master secret: the same sealed credential IDs in every run.
            keystore: Box::new(SoftwareKeyStore::new(Secret32([0x5e; 32]))),
            credentials: Box::new(MemoryCredentialStore::new(16)),
            prompt: Box::new(prompt.clone()),
            policy: Box::new(AllowAll),
        };
        let now = Instant::now();
        let authenticator = Authenticator::new(AuthenticatorConfig::default(), platform, now);
        Self { authenticator, prompt, signals: TransactionSignals::new(), now, channel: 1 }
    }

    /// The shared session of this process.
    pub fn shared() -> &'static Mutex<Session> {
        static SESSION: OnceLock<Mutex<Session>> = OnceLock::new();
        SESSION.get_or_init(|| Mutex::new(Session::new()))
    }

    /// Applies an input's control byte: bit 0 re-plugs the device (a power
    /// cycle, which opens the reset window), bit 1 switches the channel,
    /// bits 2-7 move the clock by 0..63 × 500 ms (so the 10 s reset window,
    /// the 30 s getNextAssertion and token timers all pass or not).
    pub fn control(&mut self, control: u8, prompt: u8) {
        self.prompt.0.store(prompt, Ordering::Relaxed);
        self.now += Duration::from_millis(500 * u64::from(control >> 2));
        if control & 0x01 != 0 {
            // Fails only without system randomness.
            let _ = self.authenticator.power_cycle(self.now);
        }
        if control & 0x02 != 0 {
            self.channel = if self.channel == 1 { 2 } else { 1 };
        }
    }

    pub fn process_cbor(&mut self, message: &[u8]) -> Vec<u8> {
        let ctx = RequestContext { now: self.now, channel: self.channel, signals: &self.signals };
        self.authenticator.process_cbor(message, &ctx)
    }

    pub fn process_apdu(&mut self, message: &[u8]) -> Vec<u8> {
        let ctx = RequestContext { now: self.now, channel: self.channel, signals: &self.signals };
        self.authenticator.process_apdu(message, &ctx)
    }
}

/// Locks the shared session even after a panic poisoned it (libFuzzer stops
/// at the first panic anyway).
pub fn session() -> std::sync::MutexGuard<'static, Session> {
    Session::shared().lock().unwrap_or_else(|e| e.into_inner())
}
