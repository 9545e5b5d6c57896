//! `[prompt] mode = "always-approve"`: presence approved without asking,
//! for tests and kiosks; announced as a warning at start. The agent mode is
//! `prompt_agent/`.

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
