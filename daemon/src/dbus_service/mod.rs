//! fidoseald on the system bus: owns org.fidoseal.Fidoseal1 and serves
//! org.fidoseal.AgentManager1 and org.fidoseal.Manager1 at
//! /org/fidoseal/Fidoseal1 (docs/dbus.md, dbus/interfaces/).
//!
//! The connection lives on the daemon's tokio runtime; method handlers run
//! as tasks there (zbus spawns one per call) and never block: anything that
//! takes a lock the authenticator may hold for a whole prompt (Reset, the
//! verification of DeletePasskey), or reads and writes the store, goes to
//! the blocking pool; the device owner's uid is known beforehand (single
//! mode: resolved at start and on SIGHUP, device_user.rs; per-user mode:
//! logind's).

mod agent_manager;
pub mod caller;
mod manager;
#[cfg(test)]
mod tests;

use std::path::PathBuf;
use std::sync::Arc;

use fidoseal_dbus::{BUS_NAME, OBJECT_PATH};
use zbus::connection::Builder;
use zbus::Connection;

use crate::config::{Config, DeviceMode, PromptMode};
use crate::devices::Devices;
use crate::prompt_agent::Bus;

/// What the two interfaces reach.
pub struct Service {
    /// Every device and whose it is: callers are resolved against it
    /// (agents register with their own device's registry, Manager1 acts on
    /// the caller's own device).
    pub devices: Arc<Devices>,
    pub prompt_mode: PromptMode,
    pub device_mode: DeviceMode,
    /// "tpm" or "software".
    pub keystore: &'static str,
    /// The TPM's manufacturer, on the TPM store.
    pub tpm_manufacturer: Option<String>,
    /// The TPM store, for the boot-state binding's administration.
    pub tpm: Option<crate::tpm::admin::SharedTpm>,
    pub policy_dirs: Vec<PathBuf>,
    /// The running policy (Status reports its generation).
    pub policy: Option<crate::policy_service::PolicyService>,
    /// fidoseald waits for the boot state to be approved before it opens
    /// the devices (main.rs): Status says so instead of failing for want of
    /// a device.
    pub waiting_for_boot_state: Arc<std::sync::atomic::AtomicBool>,
}

impl Service {
    /// The service of a daemon started with `config`.
    pub fn from_config(config: &Config, devices: Arc<Devices>) -> Self {
        Self {
            devices,
            prompt_mode: config.prompt.mode,
            device_mode: config.device.mode,
            keystore: match config.keystore.backend {
                crate::config::KeyStoreBackend::Software => "software",
                crate::config::KeyStoreBackend::Tpm => "tpm",
            },
            tpm_manufacturer: None,
            tpm: None,
            policy_dirs: config.policy.dirs.clone(),
            policy: None,
            waiting_for_boot_state: Arc::default(),
        }
    }
}

/// The running service; dropping it leaves the bus.
pub struct DbusService {
    /// Held so that the name and the objects stay on the bus; per-user
    /// mode follows logind on it.
    connection: Connection,
    /// NameLost for our name; it fails and ends when the connection closes.
    name_lost: zbus::MessageStream,
}

impl DbusService {
    /// Connects to the system bus (`DBUS_SYSTEM_BUS_ADDRESS`, else the
    /// standard socket) — or to `address` (tests) —, owns the name and
    /// serves both interfaces. Call from inside the tokio runtime.
    pub async fn start(service: Service, address: Option<&str>) -> Result<Self, String> {
        let devices = Arc::clone(&service.devices);
        let service = Arc::new(service);
        let builder = match address {
            Some(address) => Builder::address(address),
            None => Builder::system(),
        }
        .map_err(|e| format!("cannot reach the system bus: {e}"))?;
        let connection = builder
            .name(BUS_NAME)
            .and_then(|b| b.serve_at(OBJECT_PATH, agent_manager::AgentManager::new(Arc::clone(&service))))
            .and_then(|b| b.serve_at(OBJECT_PATH, manager::Manager::new(Arc::clone(&service))))
            .map_err(|e| format!("cannot set up the D-Bus service: {e}"))?
            .build()
            .await
            .map_err(|e| format!("cannot own {BUS_NAME} on the system bus: {e}"))?;
        let rule = zbus::MatchRule::builder()
            .msg_type(zbus::message::Type::Signal)
            .sender("org.freedesktop.DBus")
            .and_then(|b| b.interface("org.freedesktop.DBus"))
            .and_then(|b| b.member("NameLost"))
            .and_then(|b| b.arg(0, BUS_NAME))
            .map(|b| b.build())
            .map_err(|e| format!("cannot build the NameLost rule: {e}"))?;
        let name_lost = zbus::MessageStream::for_match_rule(rule, &connection, None)
            .await
            .map_err(|e| format!("cannot follow NameLost on the system bus: {e}"))?;
        devices.attach(Bus { connection: connection.clone(), runtime: tokio::runtime::Handle::current() });
        tracing::info!(name = BUS_NAME, path = OBJECT_PATH, unique_name = ?connection.unique_name().map(|n| n.as_str()), "D-Bus service started");
        Ok(Self { connection, name_lost })
    }

    pub fn connection(&self) -> &Connection {
        &self.connection
    }

    /// Completes when the daemon is off the bus: the connection closed or
    /// failed (dbus-daemon restarted or died), or the name was taken away.
    /// Says which.
    pub async fn lost(&mut self) -> String {
        use futures_lite::StreamExt;
        match self.name_lost.next().await {
            Some(Ok(_)) => format!("lost the name {BUS_NAME} on the system bus"),
            Some(Err(e)) => format!("the system bus connection failed: {e}"),
            None => "the system bus connection closed".to_owned(),
        }
    }

    /// The daemon's start: in agent mode the bus is required (without it
    /// nobody could ever be asked); in always-approve mode it only carries
    /// Manager1, and a missing bus is a warning.
    pub async fn start_for_daemon(service: Service) -> Result<Option<Self>, String> {
        let mode = service.prompt_mode;
        match Self::start(service, None).await {
            Ok(running) => Ok(Some(running)),
            Err(e) if mode == PromptMode::AlwaysApprove => {
                tracing::warn!(error = %e, "no D-Bus service (Manager1 unavailable); always-approve prompts need none");
                Ok(None)
            }
            Err(e) => Err(format!("{e} (prompt mode agent needs the system bus)")),
        }
    }
}
