//! User prompts as the daemon runs them. The D-Bus agent comes later; for
//! now the only mode approves everything and is announced as a warning.

use fidoseal_ctap::platform::{PresenceRequest, PromptOutcome, TransactionSignals, UserPrompt};

/// Approves every request at once. For tests and unattended machines only.
pub struct AlwaysApprove;

impl UserPrompt for AlwaysApprove {
    fn request_presence(&mut self, request: &PresenceRequest<'_>, signals: &TransactionSignals) -> PromptOutcome {
        if signals.is_cancelled() {
            return PromptOutcome::Cancelled;
        }
        tracing::debug!(purpose = ?request.purpose, rp_id = request.rp_id, "presence approved without asking (always-approve)");
        PromptOutcome::Approved
    }
}
