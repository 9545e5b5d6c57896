//! Built-in user verification through the prompt (CTAP 2.1 §6.5.2.3,
//! "performBuiltInUv"): a fingerprint or password checked by the daemon, or
//! the authenticator's PIN typed into the user's own session.

use crate::audit::{AuditDecision, AuditEvent, AuditKind};
use crate::authenticator::{prompt_outcome_name, Authenticator, RequestContext};
use crate::platform::{PresenceRequest, PromptOutcome, VerificationOutcome, MAX_UV_RETRIES};
use crate::status::{CtapResult, StatusCode};

/// How a prompt's refusal ends a request (shared with user presence).
pub(crate) fn refusal_status(outcome: PromptOutcome) -> StatusCode {
    match outcome {
        PromptOutcome::Approved => StatusCode::Other,
        PromptOutcome::Denied | PromptOutcome::Unavailable => StatusCode::OperationDenied,
        PromptOutcome::TimedOut => StatusCode::UserActionTimeout,
        PromptOutcome::Cancelled => StatusCode::KeepaliveCancel,
    }
}

impl Authenticator {
    /// Built-in UV is configured, usable now, and not blocked.
    pub(crate) fn built_in_uv_available(&self) -> bool {
        self.platform.prompt.verification_available()
    }

    /// Asks the user to verify. Success also proves presence. A failed
    /// attempt spends a uvRetry (or, for a typed PIN, a PIN retry).
    pub(crate) fn perform_built_in_uv(
        &mut self,
        request: &PresenceRequest<'_>,
        ctx: &RequestContext<'_>,
    ) -> CtapResult<()> {
        if self.state.uv_retries == 0 {
            return Err(StatusCode::UvBlocked);
        }
        if ctx.signals.is_cancelled() {
            return Err(StatusCode::KeepaliveCancel);
        }
        let pin_available = self.state.pin.is_some() && self.state.pin_retries > 0;
        ctx.signals.set_waiting_for_user(true);
        let outcome = self.platform.prompt.request_verification(request, pin_available, ctx.signals);
        ctx.signals.set_waiting_for_user(false);
        if ctx.signals.is_cancelled() {
            return Err(StatusCode::KeepaliveCancel);
        }
        let event = |decision, reason: String| {
            AuditEvent::new(AuditKind::Verification, decision)
                .rp(request.rp_id)
                .operation(request.purpose.name())
                .reason(reason)
        };
        match outcome {
            VerificationOutcome::Verified => {
                self.audit(event(AuditDecision::Allow, "verified".into()));
                self.reset_uv_retries()
            }
            VerificationOutcome::Pin(pin) => match self.check_typed_pin(&pin) {
                Ok(()) => {
                    self.audit(event(AuditDecision::Allow, "verified with the PIN".into()));
                    Ok(())
                }
                // A wrong PIN typed into the agent reads as a failed verification.
                Err(StatusCode::PinInvalid) => Err(StatusCode::UvInvalid),
                Err(other) => Err(other),
            },
            VerificationOutcome::Failed => {
                let mut state = self.state.clone();
                state.uv_retries = state.uv_retries.saturating_sub(1);
                let left = state.uv_retries;
                self.save_state(state)?;
                self.audit(event(AuditDecision::Deny, format!("not recognized, {left} retries left")));
                Err(if left == 0 { StatusCode::UvBlocked } else { StatusCode::UvInvalid })
            }
            VerificationOutcome::NotVerified(outcome) => {
                self.audit(event(AuditDecision::Deny, prompt_outcome_name(outcome).into()));
                Err(refusal_status(outcome))
            }
        }
    }

    /// Built-in user verification the platform asks for itself, with no
    /// CTAP request behind it (fidoseald's Manager1.DeletePasskey). The same
    /// path as getPinUvAuthTokenUsingUvWithPermissions (§6.5.5.7.3): the
    /// methods the prompt offers now, uvRetries spent and restored, a PIN
    /// typed into the agent checked and counted against the PIN retries;
    /// but no token is made. `NotAllowed`: no built-in verification can be
    /// asked for now (none configured, or nobody to ask).
    pub fn verify_user_for_platform(
        &mut self,
        request: &PresenceRequest<'_>,
        ctx: &RequestContext<'_>,
    ) -> CtapResult<()> {
        if !self.built_in_uv_available() {
            return Err(StatusCode::NotAllowed);
        }
        self.perform_built_in_uv(request, ctx)
    }

    fn reset_uv_retries(&mut self) -> CtapResult<()> {
        if self.state.uv_retries == MAX_UV_RETRIES {
            return Ok(());
        }
        let mut state = self.state.clone();
        state.uv_retries = MAX_UV_RETRIES;
        self.save_state(state)
    }
}
