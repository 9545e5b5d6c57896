//! A fingerprint, checked by the daemon through fprintd on the system bus
//! (net.reactivated.Fprint): GetDefaultDevice, Claim(user), VerifyStart
//! ("any"), then the VerifyStatus signal; VerifyStop and Release always
//! follow, whatever happened. The agent only shows "touch the sensor".

use std::time::Duration;

use futures_lite::StreamExt;
use zbus::proxy::CacheProperties;
use zbus::zvariant::OwnedObjectPath;
use zbus::Connection;

/// How long a question to fprintd may take outside a verification
/// (finding the device, listing fingers, claiming, stopping, releasing).
const CALL_TIMEOUT: Duration = Duration::from_secs(3);

#[zbus::proxy(
    interface = "net.reactivated.Fprint.Manager",
    default_service = "net.reactivated.Fprint",
    default_path = "/net/reactivated/Fprint/Manager"
)]
trait FprintManager {
    fn get_default_device(&self) -> zbus::Result<OwnedObjectPath>;
}

#[zbus::proxy(interface = "net.reactivated.Fprint.Device", default_service = "net.reactivated.Fprint")]
trait FprintDevice {
    fn list_enrolled_fingers(&self, username: &str) -> zbus::Result<Vec<String>>;
    fn claim(&self, username: &str) -> zbus::Result<()>;
    fn release(&self) -> zbus::Result<()>;
    fn verify_start(&self, finger_name: &str) -> zbus::Result<()>;
    fn verify_stop(&self) -> zbus::Result<()>;
}

/// How a verification ended, as far as fprintd is concerned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScanResult {
    Match,
    NoMatch,
    /// The reader went away, fprintd failed, or it said something unknown.
    Unavailable(String),
}

async fn default_device(connection: &Connection) -> zbus::Result<FprintDeviceProxy<'static>> {
    let manager = FprintManagerProxy::builder(connection).cache_properties(CacheProperties::No).build().await?;
    let path = manager.get_default_device().await?;
    FprintDeviceProxy::builder(connection).path(path)?.cache_properties(CacheProperties::No).build().await
}

/// fprintd has a reader and `user` has enrolled at least one finger.
pub async fn ready_for(connection: &Connection, user: &str) -> Result<(), String> {
    let probe = async {
        let device = default_device(connection).await?;
        device.list_enrolled_fingers(user).await
    };
    match tokio::time::timeout(CALL_TIMEOUT, probe).await {
        Ok(Ok(fingers)) if !fingers.is_empty() => Ok(()),
        Ok(Ok(_)) => Err("no enrolled fingers".into()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("fprintd did not answer in time".into()),
    }
}

/// A claimed reader with a verification running. Call [`Scan::finish`]
/// whatever happens: it stops the verification and releases the reader.
pub struct Scan {
    device: FprintDeviceProxy<'static>,
    status: zbus::proxy::SignalStream<'static>,
    started: bool,
}

impl Scan {
    /// Claims the default reader for `user` and starts verifying any finger.
    pub async fn start(connection: &Connection, user: &str) -> Result<Self, String> {
        let claimed = tokio::time::timeout(CALL_TIMEOUT, async {
            let device = default_device(connection).await?;
            device.claim(user).await?;
            Ok::<_, zbus::Error>(device)
        })
        .await
        .map_err(|_| "fprintd did not answer in time".to_string())?
        .map_err(|e| format!("cannot claim the fingerprint reader: {e}"))?;
        // Subscribe before starting, so that no status is missed.
        let status = match claimed.inner().receive_signal("VerifyStatus").await {
            Ok(stream) => stream,
            Err(e) => {
                release(&claimed).await;
                return Err(format!("cannot watch VerifyStatus: {e}"));
            }
        };
        let mut scan = Self { device: claimed, status, started: false };
        match tokio::time::timeout(CALL_TIMEOUT, scan.device.verify_start("any")).await {
            Ok(Ok(())) => {
                scan.started = true;
                Ok(scan)
            }
            Ok(Err(e)) => {
                scan.finish().await;
                Err(format!("VerifyStart failed: {e}"))
            }
            Err(_) => {
                scan.started = true; // it may have started: stop it to be sure
                scan.finish().await;
                Err("VerifyStart did not answer in time".into())
            }
        }
    }

    /// Waits for the verification's result; retry-* statuses keep waiting.
    pub async fn result(&mut self) -> ScanResult {
        while let Some(message) = self.status.next().await {
            let Ok((result, done)) = message.body().deserialize::<(String, bool)>() else {
                tracing::warn!("ignoring a VerifyStatus signal of the wrong type");
                continue;
            };
            tracing::debug!(result, done, "fprintd VerifyStatus");
            match result.as_str() {
                "verify-match" => return ScanResult::Match,
                "verify-no-match" => return ScanResult::NoMatch,
                "verify-retry-scan"
                | "verify-swipe-too-short"
                | "verify-finger-not-centered"
                | "verify-remove-and-retry" => continue,
                other => return ScanResult::Unavailable(format!("fprintd says {other}")),
            }
        }
        ScanResult::Unavailable("the VerifyStatus stream ended".into())
    }

    /// VerifyStop (if started) and Release; failures are logged, not fatal.
    pub async fn finish(self) {
        if self.started {
            match tokio::time::timeout(CALL_TIMEOUT, self.device.verify_stop()).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::debug!(error = %e, "fprintd VerifyStop failed"),
                Err(_) => tracing::warn!("fprintd VerifyStop did not answer in time"),
            }
        }
        release(&self.device).await;
    }
}

async fn release(device: &FprintDeviceProxy<'static>) {
    match tokio::time::timeout(CALL_TIMEOUT, device.release()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "fprintd Release failed"),
        Err(_) => tracing::warn!("fprintd Release did not answer in time"),
    }
}
