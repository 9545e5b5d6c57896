//! Re-plugging the device on request: Manager1.Replug asks, the device loop
//! (main.rs) unplugs and plugs the uhid device again and power-cycles the
//! authenticator, exactly as for SIGUSR1, and then answers.
//!
//! A re-plug is how this virtual key is "powered off and on": it ends what
//! CTAP 2.1 keeps only until power-off — the block after three wrong PINs
//! in a row (§6.5.5.5, PIN_AUTH_BLOCKED), the pinUvAuthToken and the key
//! agreement key (§6.5.5.1), pending getNextAssertion and enumeration
//! state — and it starts authenticatorReset's 10-second window (§6.6),
//! as plugging a real key in does (a reset still needs a touch).

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use fidoseal_ctap::Authenticator;
use tokio::sync::{mpsc, oneshot};

/// Manager1.Replug at most this often: the device stays plugged in at
/// least this long after a re-plug (SIGUSR1 is not limited).
pub const MIN_REPLUG_INTERVAL: Duration = Duration::from_secs(10);
/// How long Replug waits for the device to be back.
const REPLUG_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ReplugError {
    #[error("the device was re-plugged {ago} s ago; try again in {wait} s")]
    TooSoon { ago: u64, wait: u64 },
    #[error("the device is being re-plugged; try again in {0} s")]
    InProgress(u64),
    #[error("the device is not served (the daemon is stopping)")]
    NoDevice,
    #[error("the device did not come back within {0:?}")]
    TimedOut(Duration),
    #[error("{0}")]
    Failed(String),
}

/// One re-plug asked for; the device loop answers once the device is back.
pub struct ReplugRequest {
    done: oneshot::Sender<Result<(), String>>,
}

impl ReplugRequest {
    /// The device is plugged in again (Err: why not).
    pub fn finish(self, result: Result<(), String>) {
        let _ = self.done.send(result);
    }
}

/// The asking end (Manager1).
#[derive(Clone)]
pub struct Replugger {
    requests: mpsc::Sender<ReplugRequest>,
    min_interval: Duration,
    last: Arc<Mutex<LastReplug>>,
}

#[derive(Debug, Clone, Copy)]
enum LastReplug {
    Never,
    InProgress,
    /// When the device was back (or the attempt failed).
    Ended(Instant),
}

/// Marks the re-plug in progress as ended when dropped.
struct EndsReplug<'a>(&'a Mutex<LastReplug>);

impl Drop for EndsReplug<'_> {
    fn drop(&mut self) {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = LastReplug::Ended(Instant::now());
    }
}

/// The device loop's end.
pub struct ReplugRequests {
    requests: mpsc::Receiver<ReplugRequest>,
}

/// A connected pair; Replug may be accepted once per `min_interval`.
pub fn channel(min_interval: Duration) -> (Replugger, ReplugRequests) {
    let (tx, rx) = mpsc::channel(1);
    (
        Replugger { requests: tx, min_interval, last: Arc::new(Mutex::new(LastReplug::Never)) },
        ReplugRequests { requests: rx },
    )
}

impl Replugger {
    /// Asks the device loop to re-plug and waits until it has. Refused (and
    /// not counted) while a re-plug runs and within `min_interval` of the
    /// end of the last one.
    pub async fn replug(&self) -> Result<(), ReplugError> {
        let wait_secs = |d: Duration| (d.as_secs_f64().ceil() as u64).max(1);
        {
            let mut last = self.last.lock().unwrap_or_else(PoisonError::into_inner);
            match *last {
                LastReplug::InProgress => return Err(ReplugError::InProgress(wait_secs(self.min_interval))),
                LastReplug::Ended(at) if at.elapsed() < self.min_interval => {
                    let ago = at.elapsed();
                    return Err(ReplugError::TooSoon { ago: ago.as_secs(), wait: wait_secs(self.min_interval - ago) });
                }
                LastReplug::Never | LastReplug::Ended(_) => *last = LastReplug::InProgress,
            }
        }
        // Ended however this ends, even if the caller's future is dropped.
        let _ended = EndsReplug(&self.last);
        self.ask_device_loop().await
    }

    async fn ask_device_loop(&self) -> Result<(), ReplugError> {
        let (done, answer) = oneshot::channel();
        self.requests.send(ReplugRequest { done }).await.map_err(|_| ReplugError::NoDevice)?;
        match tokio::time::timeout(REPLUG_TIMEOUT, answer).await {
            Ok(Ok(result)) => result.map_err(ReplugError::Failed),
            Ok(Err(_)) => Err(ReplugError::NoDevice),
            Err(_) => Err(ReplugError::TimedOut(REPLUG_TIMEOUT)),
        }
    }
}

impl ReplugRequests {
    /// The next request; never completes once every Replugger is gone.
    pub async fn next(&mut self) -> ReplugRequest {
        match self.requests.recv().await {
            Some(request) => request,
            None => std::future::pending().await,
        }
    }
}

/// The authenticator's side of a re-plug, once the device is unplugged:
/// what a real key forgets at power-off, and a new power-up time.
pub fn power_cycle(authenticator: &Mutex<Authenticator>) -> Result<(), String> {
    authenticator
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .power_cycle(Instant::now())
        .map_err(|e| format!("cannot power-cycle the authenticator: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A device loop that re-plugs at once.
    fn answering(mut requests: ReplugRequests) {
        tokio::spawn(async move {
            loop {
                requests.next().await.finish(Ok(()));
            }
        });
    }

    #[tokio::test]
    async fn none_while_one_runs() {
        let (replugger, mut requests) = channel(Duration::from_millis(300));
        let (release, released) = oneshot::channel::<()>();
        tokio::spawn(async move {
            let request = requests.next().await;
            let _ = released.await;
            request.finish(Ok(()));
        });
        let first = tokio::spawn({
            let replugger = replugger.clone();
            async move { replugger.replug().await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(replugger.replug().await, Err(ReplugError::InProgress(1)));
        let _ = release.send(());
        assert_eq!(first.await.unwrap(), Ok(()));
        // The interval counts from the end of the re-plug.
        assert!(matches!(replugger.replug().await, Err(ReplugError::TooSoon { .. })));
    }

    #[tokio::test]
    async fn once_per_interval_and_refusals_do_not_count() {
        let (replugger, requests) = channel(Duration::from_millis(300));
        answering(requests);
        replugger.replug().await.unwrap();
        match replugger.replug().await {
            Err(ReplugError::TooSoon { wait, .. }) => assert_eq!(wait, 1),
            other => panic!("expected TooSoon, got {other:?}"),
        }
        tokio::time::sleep(Duration::from_millis(320)).await;
        replugger.replug().await.unwrap();
        assert!(matches!(replugger.replug().await, Err(ReplugError::TooSoon { .. })));
    }

    #[tokio::test]
    async fn no_device_loop_is_an_error_not_a_hang() {
        let (replugger, requests) = channel(Duration::ZERO);
        drop(requests);
        assert_eq!(replugger.replug().await, Err(ReplugError::NoDevice));
        // The loop took the request and ended without answering (it exited).
        let (replugger, mut requests) = channel(Duration::ZERO);
        tokio::spawn(async move { drop(requests.next().await) });
        assert_eq!(replugger.replug().await, Err(ReplugError::NoDevice));
        // The loop says it failed.
        let (replugger, mut requests) = channel(Duration::ZERO);
        tokio::spawn(async move { requests.next().await.finish(Err("uhid is gone".into())) });
        assert_eq!(replugger.replug().await, Err(ReplugError::Failed("uhid is gone".into())));
    }
}
