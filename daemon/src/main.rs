//! `fidoseald`: the fidoseal daemon. Creates a virtual USB HID FIDO2
//! security key through /dev/uhid and answers it from the fidoseal
//! authenticator, with the key store, prompt and policy the configuration
//! names. SIGTERM/SIGINT remove the device and exit; SIGUSR1 (or the
//! device user's Manager1.Replug) unplugs and re-plugs it (a power cycle,
//! as CTAP's reset and PIN rules know it).

mod audit_log;
mod config;
mod dbus_service;
mod device_user;
mod keystore;
mod policy_service;
mod prompt;
mod prompt_agent;
mod replug;
mod shared_credentials;
mod state;
mod tpm;
mod transport;
mod uhid;
mod verification;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use fidoseal_ctap::platform::{KeyStore, UserPrompt};
use fidoseal_ctap::{AttestationMode, Authenticator, AuthenticatorConfig, Platform};
use tokio::signal::unix::{signal, SignalKind};

use crate::config::{Attestation, Config, KeyStoreBackend, PromptMode};

const USAGE: &str = "usage: fidoseald --config PATH\n\nA virtual FIDO2 security key through /dev/uhid.\n";

fn parse_args() -> Result<PathBuf, String> {
    let mut args = std::env::args_os().skip(1);
    let mut config = None;
    while let Some(arg) = args.next() {
        match arg.to_str() {
            Some("--config") => config = Some(PathBuf::from(args.next().ok_or("--config needs a path")?)),
            Some("--help" | "-h") => return Err(String::new()),
            Some("--version") => {
                println!("fidoseald {}", env!("CARGO_PKG_VERSION"));
                std::process::exit(0);
            }
            _ => return Err(format!("unknown argument {}", arg.to_string_lossy())),
        }
    }
    config.ok_or_else(|| "--config is required".into())
}

fn main() -> ExitCode {
    // Journald natively under systemd (the audit trail's fields), plain
    // text elsewhere, colour only on a terminal (log/).
    fidoseal_log::init("fidoseald", "info");
    let config_path = match parse_args() {
        Ok(p) => p,
        Err(message) => {
            if !message.is_empty() {
                eprintln!("fidoseald: {message}");
            }
            eprint!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    match run(&config_path) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            tracing::error!("{message}");
            ExitCode::FAILURE
        }
    }
}

fn run(config_path: &std::path::Path) -> Result<(), String> {
    let config = Config::load(config_path).map_err(|e| e.to_string())?;
    // Fail closed: an invalid policy stops the daemon here.
    let policy = policy_service::PolicyService::start(&config)?;
    state::prepare_state_dir(&config.state_dir)
        .map_err(|e| format!("cannot prepare state directory {}: {e}", config.state_dir.display()))?;

    let (mut keystore, key_store_created): (Box<dyn KeyStore>, bool) = match config.keystore.backend {
        KeyStoreBackend::Software => {
            tracing::warn!(
                state_dir = %config.state_dir.display(),
                "SOFTWARE KEY STORE: private keys are protected only by a key file in the state directory, not by a TPM"
            );
            let store = keystore::PersistentSoftwareKeyStore::open(&config.state_dir).map_err(|e| e.to_string())?;
            let created = store.just_created();
            (Box::new(store), created)
        }
        KeyStoreBackend::Tpm => {
            let store =
                tpm::TpmKeyStore::open(&config.keystore.tpm_settings(), &config.state_dir).map_err(|e| e.to_string())?;
            let created = *store.startup() != tpm::Startup::Reopened;
            (Box::new(store), created)
        }
    };
    let mut credentials =
        state::CredentialDatabase::open(&config.state_dir, config.authenticator.discoverable_credentials)
            .map_err(|e| e.to_string())?;
    if let Some(migration) = credentials.migration() {
        tracing::info!(
            credentials = migration.credentials,
            counter_floor = migration.counter_floor,
            kept = %migration.backup.display(),
            database = %credentials.path().display(),
            "credential state migrated from credentials.cbor to the database (the old file is kept)"
        );
    }
    let binding = keystore::binding(&mut *keystore).map_err(|e| format!("cannot identify the key store: {e}"))?;
    let key_store_name = binding.name.clone();
    match credentials.bind_key_store(binding, key_store_created).map_err(|e| e.to_string())? {
        state::Binding::Same => {}
        state::Binding::Recorded => tracing::info!(key_store = key_store_name, "credential state tied to this key store"),
        state::Binding::SetAside { kept, previous } => tracing::error!(
            key_store = key_store_name,
            previous,
            kept = %kept.display(),
            "THE CREDENTIAL STATE BELONGS TO ANOTHER KEY STORE (the [keystore] backend was switched, or the state \
             directory comes from elsewhere): its passkeys and PIN cannot work with this one. It was copied aside and \
             reset; the signature counter goes on. Register this security key again with every site, or switch the \
             backend back and restore the copy."
        ),
    }
    tracing::info!(
        resident_credentials = fidoseal_ctap::platform::CredentialStore::credential_count(&credentials),
        remaining = fidoseal_ctap::platform::CredentialStore::remaining_capacity(&credentials),
        "state loaded"
    );
    // Shared with the D-Bus management interface (shared_credentials.rs).
    let credentials = shared_credentials::SharedCredentialStore::new(credentials);
    let agents = Arc::new(prompt_agent::AgentRegistry::new());
    let agent_prompt = prompt_agent::AgentPrompt::for_config(&config, &agents, &credentials);
    let prompt: Box<dyn UserPrompt> = match &agent_prompt {
        Some(agent_prompt) => Box::new(agent_prompt.clone()),
        None => {
            tracing::warn!("prompt mode always-approve: every request is approved without asking anyone");
            Box::new(prompt::AlwaysApprove)
        }
    };

    let authenticator_config = AuthenticatorConfig {
        attestation: match config.authenticator.attestation {
            Attestation::SelfAttestation => AttestationMode::SelfAttestation,
            Attestation::None => AttestationMode::None,
        },
        firmware_version: firmware_version(),
        ..AuthenticatorConfig::default()
    };
    let platform = Platform { keystore, credentials: Box::new(credentials.clone()), prompt, policy: Box::new(policy.decision()) };
    // Looked up here, before the runtime, and again on SIGHUP: never by a
    // D-Bus handler (NSS may wait for LDAP or sssd).
    let device_user = device_user::DeviceUser::resolve(config.device.user.clone());

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .max_blocking_threads(4)
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))?;
    runtime.block_on(async {
        let mut terminate = signal(SignalKind::terminate()).map_err(|e| format!("cannot handle SIGTERM: {e}"))?;
        let mut interrupt = signal(SignalKind::interrupt()).map_err(|e| format!("cannot handle SIGINT: {e}"))?;
        let mut replug = signal(SignalKind::user_defined1()).map_err(|e| format!("cannot handle SIGUSR1: {e}"))?;
        policy.watch()?;
        device_user.resolve_on_hangup()?;

        let authenticator = Authenticator::try_new(authenticator_config, platform, Instant::now())
            .map_err(|e| format!("cannot start the authenticator (no random numbers from the system?): {e:?}"))?;
        let authenticator = Arc::new(Mutex::new(authenticator));
        // Manager1.Replug asks the loop below for what SIGUSR1 does.
        let (replugger, mut replug_requests) = replug::channel(replug::MIN_REPLUG_INTERVAL);
        let service = dbus_service::Service::from_config(
            &config,
            agents,
            credentials,
            Arc::clone(&authenticator),
            agent_prompt,
            dbus_service::DeviceHandles {
                device_user: Arc::clone(&device_user),
                replugger,
                policy: Box::new(policy.decision()),
            },
        );
        let mut bus = dbus_service::DbusService::start_for_daemon(service).await?;
        // Agent mode cannot ask anyone without the bus: off it, the daemon
        // exits with a failure and systemd (Restart=on-failure) starts it
        // again, on the new bus. Always-approve mode keeps serving the key.
        let exit_when_off_the_bus = config.prompt.mode == PromptMode::Agent;
        let mut off_the_bus: Option<String> = None;
        // A Manager1.Replug being carried out: answered once the device is back.
        let mut replug_asked: Option<replug::ReplugRequest> = None;
        loop {
            let device = uhid::UhidDevice::create(&config.device.uhid_path, &device_info())
                .map_err(|e| format!("{e} (is the uhid module loaded? try `modprobe uhid`)"))?;
            tracing::info!(uhid = %config.device.uhid_path.display(), "virtual FIDO device created");
            if let Some(request) = replug_asked.take() {
                request.finish(Ok(()));
            }
            let stop = async {
                tokio::select! {
                    _ = terminate.recv() => { tracing::info!("SIGTERM: removing the device"); transport::Stop::Exit }
                    _ = interrupt.recv() => { tracing::info!("SIGINT: removing the device"); transport::Stop::Exit }
                    _ = replug.recv() => { tracing::info!("SIGUSR1: re-plugging the device"); transport::Stop::Replug }
                    request = replug_requests.next() => {
                        tracing::info!("Manager1.Replug: re-plugging the device");
                        replug_asked = Some(request);
                        transport::Stop::Replug
                    }
                    reason = bus_lost(&mut bus, exit_when_off_the_bus) => {
                        tracing::error!(reason, "off the system bus: nobody can be asked; removing the device and exiting");
                        off_the_bus = Some(reason);
                        transport::Stop::Exit
                    }
                }
            };
            let reason = transport::serve(device, Arc::clone(&authenticator), random_first_cid(), stop)
                .await
                .map_err(|e| e.to_string())?;
            if reason == transport::Stop::Exit {
                break;
            }
            // Unplugged: give udev and clients a moment to see the device go.
            tokio::time::sleep(std::time::Duration::from_millis(300)).await;
            // The cancelled request may still hold the authenticator for a
            // moment (a PAM check ends on its own): wait off the runtime.
            let device = Arc::clone(&authenticator);
            tokio::task::spawn_blocking(move || replug::power_cycle(&device))
                .await
                .map_err(|e| format!("power-cycle task failed: {e}"))??;
        }
        if let Some(reason) = off_the_bus {
            return Err(format!("{reason} (exiting so that systemd starts fidoseald again)"));
        }
        tracing::info!("device removed; exiting");
        Ok(())
    })
}

/// Completes when the daemon should stop for being off the bus (agent mode
/// only); in always-approve mode the loss is logged once and the key goes on.
async fn bus_lost(bus: &mut Option<dbus_service::DbusService>, fatal: bool) -> String {
    let Some(service) = bus.as_mut() else { return std::future::pending().await };
    let reason = service.lost().await;
    if fatal {
        return reason;
    }
    tracing::warn!(reason, "off the system bus: Manager1 is gone until fidoseald restarts; the key goes on");
    *bus = None;
    std::future::pending().await
}

fn device_info() -> uhid::DeviceInfo {
    uhid::DeviceInfo {
        name: "fidoseal virtual FIDO2 key".into(),
        phys: "fidoseal".into(),
        uniq: "fidoseal-0".into(),
        // pid.codes, the open-source USB vendor ID; 0x0001 is its test product ID.
        vendor: 0x1209,
        product: 0x0001,
        version: firmware_version(),
    }
}

/// The crate version as 0x00MMmmpp.
fn firmware_version() -> u32 {
    let part = |s: &str| s.parse::<u32>().unwrap_or(0) & 0xff;
    (part(env!("CARGO_PKG_VERSION_MAJOR")) << 16)
        | (part(env!("CARGO_PKG_VERSION_MINOR")) << 8)
        | part(env!("CARGO_PKG_VERSION_PATCH"))
}

/// Channel IDs start at a random place so that a client holding a channel
/// from before a restart does not collide with a new one.
fn random_first_cid() -> u32 {
    let mut bytes = [0u8; 4];
    if getrandom::fill(&mut bytes).is_err() {
        return 1;
    }
    (u32::from_ne_bytes(bytes) & 0x3fff_ffff).max(1)
}
