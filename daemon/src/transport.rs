//! The device loop: uhid reports in, CTAPHID framing, the authenticator on
//! a blocking thread (it may wait for the user or the TPM), reports out.
//! While a request runs, the loop keeps reading so that CANCEL arrives,
//! other channels hear CHANNEL_BUSY, and KEEPALIVE goes out every 100 ms.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fidoseal_ctap::ctaphid::{Action, CtapHid, KeepaliveStatus, Request, RequestKind};
use fidoseal_ctap::platform::TransactionSignals;
use fidoseal_ctap::{Authenticator, RequestContext, StatusCode};
use tokio::sync::mpsc;
use tokio::time::Instant as TokioInstant;

use crate::uhid::{UhidDevice, UhidError, UhidEvent};

/// Events the reader thread may hold for the loop.
const READER_QUEUE: usize = 1024;
/// How often the reader thread looks up from poll(2) to see if it should stop.
const READER_POLL: Duration = Duration::from_millis(100);
/// Reports sent back to back before a short pause.
const ANSWER_BURST: usize = 32;
const ANSWER_PAUSE: Duration = Duration::from_millis(2);

#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("uhid device failed: {0}")]
    Uhid(#[from] UhidError),
    #[error("the uhid reader stopped")]
    ReaderStopped,
}

/// A request handed to the authenticator thread, and how to stop it.
struct Running {
    signals: Arc<TransactionSignals>,
}

/// Why [`serve`] stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// The daemon is shutting down.
    Exit,
    /// Unplug and plug the device again (a power cycle for CTAP's rules).
    Replug,
}

/// Serves `device` until `stop` completes, then removes the device.
pub async fn serve(
    device: UhidDevice,
    authenticator: Arc<Mutex<Authenticator>>,
    first_cid: u32,
    stop: impl Future<Output = Stop>,
) -> Result<Stop, TransportError> {
    let device = Arc::new(device);
    let version = authenticator.lock().unwrap_or_else(|e| e.into_inner()).device_version();
    let mut hid = CtapHid::new(version, first_cid);

    // Reading on an OS thread of its own: the kernel keeps only a few dozen
    // output reports per uhid device and drops the rest, so the reader must
    // never wait behind the async loop (a 7609-byte message is 130 reports).
    let (event_tx, mut events) = mpsc::channel::<Result<UhidEvent, UhidError>>(READER_QUEUE);
    let stop_reader = Arc::new(AtomicBool::new(false));
    let reader = {
        let device = Arc::clone(&device);
        let stop_reader = Arc::clone(&stop_reader);
        std::thread::Builder::new().name("uhid-reader".into()).spawn(move || {
            while !stop_reader.load(Ordering::Relaxed) {
                let event = match device.read_event_blocking(READER_POLL) {
                    Ok(None) => continue,
                    Ok(Some(event)) => Ok(event),
                    Err(e) => Err(e),
                };
                let fatal = matches!(&event, Err(e) if !e.is_recoverable());
                if event_tx.blocking_send(event).is_err() || fatal {
                    break;
                }
            }
        })
    }
    .map_err(|e| TransportError::Uhid(UhidError::Io(e)))?;

    let (done_tx, mut done) = mpsc::channel::<(u32, Vec<u8>)>(1);
    let mut running: Option<Running> = None;
    tokio::pin!(stop);

    let result = loop {
        let deadline = hid.next_deadline().map(TokioInstant::from_std);
        let actions = tokio::select! {
            reason = &mut stop => break Ok(reason),
            event = events.recv() => match event {
                None => break Err(TransportError::ReaderStopped),
                Some(Ok(UhidEvent::Output(report))) => hid.receive(&report, std::time::Instant::now()),
                Some(Ok(UhidEvent::MalformedOutput { size })) => {
                    tracing::warn!(size, "ignoring an output report of unexpected size");
                    Vec::new()
                }
                Some(Ok(other)) => {
                    tracing::debug!(event = ?other, "uhid event");
                    Vec::new()
                }
                Some(Err(e)) if e.is_recoverable() => {
                    tracing::warn!(error = %e, "ignoring a malformed uhid event");
                    Vec::new()
                }
                Some(Err(e)) => break Err(e.into()),
            },
            Some((cid, response)) = done.recv() => {
                running = None;
                for (index, packet) in hid.complete(cid, &response).iter().enumerate() {
                    if let Err(e) = device.send_input(packet).await {
                        tracing::warn!(error = %e, "could not send a report");
                    }
                    // hidraw buffers 64 reports per reader: pace long answers
                    // so a slow client does not lose the end of one.
                    if index % ANSWER_BURST == ANSWER_BURST - 1 {
                        tokio::time::sleep(ANSWER_PAUSE).await;
                    }
                }
                Vec::new()
            },
            () = sleep_until(deadline), if deadline.is_some() => {
                let status = running.as_ref().map_or(KeepaliveStatus::Processing, |r| r.signals.keepalive_status());
                hid.tick(std::time::Instant::now(), status)
            },
        };
        for action in actions {
            match action {
                Action::Send(packet) => {
                    if let Err(e) = device.send_input(&packet).await {
                        tracing::warn!(error = %e, "could not send a report");
                    }
                }
                Action::CancelProcessing => {
                    if let Some(r) = &running {
                        tracing::info!("host cancelled the request");
                        r.signals.cancel();
                    }
                }
                Action::Process(request) => {
                    let signals = Arc::new(TransactionSignals::new());
                    running = Some(Running { signals: Arc::clone(&signals) });
                    spawn_request(Arc::clone(&authenticator), request, signals, done_tx.clone());
                }
            }
        }
    };

    if let Some(r) = &running {
        r.signals.cancel();
    }
    stop_reader.store(true, Ordering::Relaxed);
    // Drain what the reader may still be handing over, so it cannot block.
    events.close();
    let _ = tokio::task::spawn_blocking(move || reader.join()).await;
    match Arc::try_unwrap(device) {
        Ok(device) => device.destroy()?,
        Err(_) => tracing::warn!("uhid device still in use at shutdown; it goes away with the process"),
    }
    result
}

async fn sleep_until(deadline: Option<TokioInstant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

fn spawn_request(
    authenticator: Arc<Mutex<Authenticator>>,
    request: Request,
    signals: Arc<TransactionSignals>,
    done: mpsc::Sender<(u32, Vec<u8>)>,
) {
    tokio::task::spawn_blocking(move || {
        let cid = request.cid;
        // A bug in a command must cost one request, not the device: the
        // host gets an error answer and the daemon keeps serving.
        let started = std::time::Instant::now();
        let response = std::panic::catch_unwind(AssertUnwindSafe(|| {
            let mut authenticator = authenticator.lock().unwrap_or_else(|e| e.into_inner());
            let ctx = RequestContext { now: std::time::Instant::now(), channel: cid, signals: &signals };
            match request.kind {
                RequestKind::Cbor => authenticator.process_cbor(&request.payload, &ctx),
                RequestKind::Msg => authenticator.process_apdu(&request.payload, &ctx),
            }
        }))
        .unwrap_or_else(|_| {
            tracing::error!("request handler panicked; answered CTAP1_ERR_OTHER");
            vec![StatusCode::Other.as_byte()]
        });
        // The audit trail of this request (and of a panicked one, up to the panic).
        crate::audit_log::drain_shared(&authenticator);
        log_request(cid, &request, &response, started.elapsed());
        let _ = done.blocking_send((cid, response));
    });
}

/// `RUST_LOG=debug`: every request with its command, outcome and duration
/// (no payload: it may hold a PIN's ciphertext or a credential ID).
fn log_request(cid: u32, request: &Request, response: &[u8], elapsed: std::time::Duration) {
    if !tracing::enabled!(tracing::Level::DEBUG) {
        return;
    }
    let micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
    match request.kind {
        RequestKind::Cbor => {
            let command = request.payload.first().copied().unwrap_or(0);
            let status = response.first().copied().unwrap_or(0);
            tracing::debug!(cid, command = %format!("0x{command:02x}"), status = %format!("0x{status:02x}"), micros, "CTAP2 request");
        }
        RequestKind::Msg => {
            let instruction = request.payload.get(1).copied().unwrap_or(0);
            let status = response.len().checked_sub(2).map(|i| &response[i..]).unwrap_or(&[]);
            let status = hex::encode(status);
            tracing::debug!(cid, instruction = %format!("0x{instruction:02x}"), status, micros, "U2F request");
        }
    }
}

#[cfg(test)]
mod tests;
