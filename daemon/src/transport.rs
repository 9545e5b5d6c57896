//! The device loop: uhid reports in, CTAPHID framing, the authenticator on
//! a blocking thread (it may wait for the user or the TPM), reports out.
//! While a request runs, the loop keeps reading so that CANCEL arrives,
//! other channels hear CHANNEL_BUSY, and KEEPALIVE goes out every 100 ms.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};

use fidoseal_ctap::ctaphid::{Action, CtapHid, KeepaliveStatus, Request, RequestKind};
use fidoseal_ctap::platform::TransactionSignals;
use fidoseal_ctap::{Authenticator, RequestContext, StatusCode};
use tokio::sync::mpsc;
use tokio::time::Instant as TokioInstant;

use crate::uhid::{UhidDevice, UhidError, UhidEvent};

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

/// Serves `device` until `shutdown` completes, then removes the device.
pub async fn serve(
    device: UhidDevice,
    authenticator: Authenticator,
    first_cid: u32,
    shutdown: impl Future<Output = ()>,
) -> Result<(), TransportError> {
    let device = Arc::new(device);
    let mut hid = CtapHid::new(authenticator.device_version(), first_cid);
    let authenticator = Arc::new(Mutex::new(authenticator));

    // Reading in a task of its own keeps each uhid event whole: the loop
    // below never cancels a read half-way through.
    let (event_tx, mut events) = mpsc::channel::<Result<UhidEvent, UhidError>>(64);
    let reader = {
        let device = Arc::clone(&device);
        tokio::spawn(async move {
            loop {
                let event = device.read_event().await;
                let fatal = matches!(&event, Err(e) if !e.is_recoverable());
                if event_tx.send(event).await.is_err() || fatal {
                    break;
                }
            }
        })
    };

    let (done_tx, mut done) = mpsc::channel::<(u32, Vec<u8>)>(1);
    let mut running: Option<Running> = None;
    tokio::pin!(shutdown);

    let result = loop {
        let deadline = hid.next_deadline().map(TokioInstant::from_std);
        let actions = tokio::select! {
            () = &mut shutdown => break Ok(()),
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
                for packet in hid.complete(cid, &response) {
                    if let Err(e) = device.send_input(&packet).await {
                        tracing::warn!(error = %e, "could not send a report");
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
    reader.abort();
    let _ = reader.await;
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
        let response = std::panic::catch_unwind(AssertUnwindSafe(|| {
            let mut authenticator = authenticator.lock().unwrap_or_else(|e| e.into_inner());
            let ctx = RequestContext { now: std::time::Instant::now(), channel: cid, signals: &signals };
            match request.kind {
                RequestKind::Cbor => authenticator.process_cbor(&request.payload, &ctx),
                // CTAPHID only dispatches MSG when CTAP1 is advertised, and it is not yet.
                RequestKind::Msg => vec![0x6D, 0x00],
            }
        }))
        .unwrap_or_else(|_| {
            tracing::error!("request handler panicked; answered CTAP1_ERR_OTHER");
            vec![StatusCode::Other.as_byte()]
        });
        let _ = done.blocking_send((cid, response));
    });
}
