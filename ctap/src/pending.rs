//! The one operation that spans several requests: getNextAssertion after a
//! getAssertion (CTAP 2.1 §6.3), the "get next" steps of a credential
//! management enumeration (§6.8.3, §6.8.5) and the fragments of a
//! large-blob write (§6.10.3). A key runs at most one at a time. Only the
//! command that continues it, on the channel that began it, within
//! [`PENDING_WINDOW`] of its last step, sees it; any other request ends it,
//! in one place ([`Pending::continued_by`], called by the dispatcher).

use std::time::{Duration, Instant};

use crate::credential_management::PendingEnumeration;
use crate::get_assertion::PendingAssertions;
use crate::large_blobs::PendingLargeBlobWrite;

/// §6.3: getNextAssertion's 30-second timer, applied to every pending
/// operation (the spec sets none for the other two; a platform that pauses
/// longer starts again).
pub(crate) const PENDING_WINDOW: Duration = Duration::from_secs(30);

/// Which command continues a pending operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Continuation {
    GetNextAssertion,
    CredentialManagement,
    LargeBlobs,
}

pub(crate) enum PendingOperation {
    Assertions(PendingAssertions),
    Enumeration(PendingEnumeration),
    LargeBlobWrite(PendingLargeBlobWrite),
}

impl PendingOperation {
    fn continuation(&self) -> Continuation {
        match self {
            Self::Assertions(_) => Continuation::GetNextAssertion,
            Self::Enumeration(_) => Continuation::CredentialManagement,
            Self::LargeBlobWrite(_) => Continuation::LargeBlobs,
        }
    }
}

/// A pending operation with the channel that began it and the time of its
/// last step.
pub(crate) struct Pending {
    channel: u32,
    last_step: Instant,
    pub(crate) operation: PendingOperation,
}

impl Pending {
    pub(crate) fn new(channel: u32, now: Instant, operation: PendingOperation) -> Self {
        Self { channel, last_step: now, operation }
    }

    /// Whether a request of `command` on `channel` at `now` may continue
    /// this operation; if not, the dispatcher drops it.
    pub(crate) fn continued_by(&self, command: Option<Continuation>, channel: u32, now: Instant) -> bool {
        command == Some(self.operation.continuation())
            && channel == self.channel
            && now.saturating_duration_since(self.last_step) <= PENDING_WINDOW
    }

    /// Records a step: the window starts again.
    pub(crate) fn stepped(&mut self, now: Instant) {
        self.last_step = now;
    }
}
