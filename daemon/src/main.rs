//! `fidoseald`: the fidoseal daemon. Creates virtual USB HID FIDO2
//! security keys through /dev/uhid and answers them from the fidoseal
//! authenticator, with the key store, prompt and policy the configuration
//! names: one key for `[device] user` (single mode), or one per user with
//! an admitted logind session (per-user mode, devices.rs). SIGTERM/SIGINT
//! remove the devices and exit; SIGUSR1 unplugs and re-plugs them, and a
//! device's user's Manager1.Replug their own (a power cycle, as CTAP's
//! reset and PIN rules know it).

mod audit_log;
mod config;
mod dbus_service;
mod device_user;
mod devices;
mod keystore;
mod logind;
mod machine_key;
mod migrate_users;
mod policy_service;
mod prompt;
mod prompt_agent;
mod replug;
mod shared_credentials;
mod state;
mod tpm;
mod transport;
mod uhid;
mod user_keys;
mod verification;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use fidoseal_ctap::platform::{KeyStore, UserPrompt};
use fidoseal_ctap::{Authenticator, Platform};
use tokio::signal::unix::{signal, SignalKind};

use crate::config::{Config, DeviceMode, KeyStoreBackend, PromptMode};

const USAGE: &str = "usage: fidoseald --config PATH [--release-tpm-anchor | --accept-current-state DIR]\n\nA \
                     virtual FIDO2 security key through /dev/uhid.\n--release-tpm-anchor: with fidoseald stopped, \
                     release the TPM's anti-rollback counter and remove the anchor file (uninstall, machine reset; \
                     docs/tpm.md), then exit.\n--accept-current-state DIR: with fidoseald stopped, accept the state \
                     in DIR (the state directory, or a user's under it) that the last start refused as stale, at \
                     the next start (with [keystore] pcrs: signed in the approved boot state; docs/tpm.md), then \
                     exit.\n";

/// What fidoseald was asked to do.
enum Command {
    Run,
    ReleaseAnchor,
    AcceptCurrentState(PathBuf),
}

/// The config path and the command.
fn parse_args() -> Result<(PathBuf, Command), String> {
    let mut args = std::env::args_os().skip(1);
    let mut config = None;
    let mut command = Command::Run;
    while let Some(arg) = args.next() {
        match arg.to_str() {
            Some("--config") => config = Some(PathBuf::from(args.next().ok_or("--config needs a path")?)),
            Some("--release-tpm-anchor") => command = Command::ReleaseAnchor,
            Some("--accept-current-state") => {
                command = Command::AcceptCurrentState(PathBuf::from(
                    args.next().ok_or("--accept-current-state needs the refused state's directory")?,
                ))
            }
            Some("--help" | "-h") => return Err(String::new()),
            Some("--version") => {
                println!("fidoseald {}", env!("CARGO_PKG_VERSION"));
                std::process::exit(0);
            }
            _ => return Err(format!("unknown argument {}", arg.to_string_lossy())),
        }
    }
    Ok((config.ok_or("--config is required")?, command))
}

fn main() -> ExitCode {
    // Journald natively under systemd (the audit trail's fields), plain
    // text elsewhere, colour only on a terminal (log/).
    fidoseal_log::init("fidoseald", "info");
    let (config_path, command) = match parse_args() {
        Ok(p) => p,
        Err(message) => {
            if !message.is_empty() {
                eprintln!("fidoseald: {message}");
            }
            eprint!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    let result = match command {
        Command::Run => run(&config_path),
        Command::ReleaseAnchor => release_anchor(&config_path),
        Command::AcceptCurrentState(dir) => accept_current_state(&config_path, &dir),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            tracing::error!("{message}");
            ExitCode::FAILURE
        }
    }
}

fn release_anchor(config_path: &std::path::Path) -> Result<(), String> {
    let config = Config::load(config_path).map_err(|e| e.to_string())?;
    if config.keystore.backend != KeyStoreBackend::Tpm {
        return Err("--release-tpm-anchor: [keystore] backend is not \"tpm\"; there is no anchor".into());
    }
    let released =
        tpm::rollback::release(&config.keystore.tpm_settings(), &config.state_dir).map_err(|e| e.to_string())?;
    println!(
        "fidoseald: anti-rollback NV index {:#010x} {}",
        tpm::rollback::NV_INDEX,
        if released { "released" } else { "was not defined" }
    );
    Ok(())
}

/// `--accept-current-state DIR`: the accept file of the state in DIR, for
/// the next start (rollback.rs). The key store must be there with its keys.
fn accept_current_state(config_path: &std::path::Path, dir: &std::path::Path) -> Result<(), String> {
    let config = Config::load(config_path).map_err(|e| e.to_string())?;
    if config.keystore.backend != KeyStoreBackend::Tpm {
        return Err("--accept-current-state: [keystore] backend is not \"tpm\"; there is no anti-rollback".into());
    }
    let id = migrate_users::state_id(&config.state_dir, dir).ok_or_else(|| {
        format!(
            "{} is not a credential state's directory: the state directory {} or a user's {}/<uid> in it",
            dir.display(),
            config.state_dir.display(),
            migrate_users::USERS_DIR
        )
    })?;
    let store =
        tpm::TpmKeyStore::open_existing(&config.keystore.tpm_settings(), &config.state_dir, &config.keystore.pcrs)
            .map_err(|e| e.to_string())?;
    let path = store.write_accept_file(dir, &id)?;
    tracing::warn!(
        audit = "anti-rollback",
        path = %path.display(),
        "accept-current-state written: the next start of fidoseald accepts that state as it is"
    );
    println!("fidoseald: wrote {}; start fidoseald to accept the state as it is", path.display());
    Ok(())
}

fn run(config_path: &std::path::Path) -> Result<(), String> {
    let config = Config::load(config_path).map_err(|e| e.to_string())?;
    // Fail closed: an invalid policy stops the daemon here.
    let policy = policy_service::PolicyService::start(&config)?;
    state::prepare_state_dir(&config.state_dir)
        .map_err(|e| format!("cannot prepare state directory {}: {e}", config.state_dir.display()))?;
    let per_user = config.device.mode == DeviceMode::PerUser;
    if per_user {
        // Before the key store opens: it looks for a credential state beside it.
        let owner = config.device.user.as_deref().map(|user| (user, device_user::system_uid_of(user)));
        match migrate_users::migrate_single_user_state(&config.state_dir, owner).map_err(|e| e.to_string())? {
            migrate_users::Migration::Nothing => {}
            migrate_users::Migration::Moved { uid, to, files } => tracing::warn!(
                uid,
                user = config.device.user.as_deref().unwrap_or("-"),
                to = %to.display(),
                files = ?files,
                "per-user devices: the single-user state (every passkey, the PIN, the counters) is now this user's"
            ),
        }
    }

    let mut tpm_manufacturer = None;
    let mut tpm_store: Option<tpm::admin::SharedTpm> = None;
    let (keystore, key_store_created): (Box<dyn KeyStore>, bool) = match config.keystore.backend {
        KeyStoreBackend::Software => {
            tracing::warn!(
                state_dir = %config.state_dir.display(),
                "SOFTWARE KEY STORE: private keys are protected only by a key file in the state directory, not by a TPM"
            );
            tracing::warn!(
                "software key store: no anti-rollback (a restored copy of the state directory brings PIN retries, \
                 signature counters and deleted passkeys back) and no PIN guessing limit beyond CTAP's own counter \
                 (docs/tpm.md)"
            );
            let store = keystore::PersistentSoftwareKeyStore::open(&config.state_dir).map_err(|e| e.to_string())?;
            let created = store.just_created();
            (Box::new(store), created)
        }
        KeyStoreBackend::Tpm => {
            let store =
                tpm::TpmKeyStore::open_bound(&config.keystore.tpm_settings(), &config.state_dir, &config.keystore.pcrs)
                    .map_err(|e| e.to_string())?;
            let created = *store.startup() != tpm::Startup::Reopened;
            tpm_manufacturer = Some(store.manufacturer().to_owned());
            let shared = Arc::new(Mutex::new(store));
            tpm_store = Some(Arc::clone(&shared));
            (Box::new(tpm::admin::SharedTpmKeyStore(shared)), created)
        }
    };
    if per_user {
        tracing::info!(
            sessions = ?config.device.sessions.iter().map(|k| k.name()).collect::<Vec<_>>(),
            state = %config.state_dir.join(migrate_users::USERS_DIR).display(),
            "per-user devices: one key, store and PIN for each user with an admitted logind session"
        );
    }
    if config.prompt.mode != PromptMode::Agent {
        tracing::warn!("prompt mode always-approve: every request is approved without asking anyone");
    }
    // Single mode's owner, before the device opens (it may wait for the boot
    // state): looked up here, before the runtime, and again on SIGHUP; never
    // by a D-Bus handler (NSS may wait for LDAP or sssd).
    let single_owner = (!per_user).then(|| {
        (device_user::DeviceUser::resolve(config.device.user.clone()), Arc::new(prompt_agent::AgentRegistry::new()))
    });

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

        // The devices are opened after the bus is up: with a TPM store bound
        // to an unapproved boot state, only once Manager1.ApproveBootState
        // has approved it (below).
        let devices = Arc::new(match &single_owner {
            Some((device_user, registry)) => {
                device_user.resolve_on_hangup()?;
                devices::Devices::single_pending(Some(Arc::clone(device_user)), Arc::clone(registry))
            }
            None => devices::Devices::per_user(),
        });
        let mut service = dbus_service::Service::from_config(&config, Arc::clone(&devices));
        service.tpm_manufacturer = tpm_manufacturer;
        service.tpm = tpm_store.clone();
        service.policy = Some(policy.clone());
        let waiting = Arc::clone(&service.waiting_for_boot_state);
        // Per-user mode follows logind on the bus: it cannot do without it.
        let mut bus = if per_user {
            Some(dbus_service::DbusService::start(service, None).await.map_err(|e| format!("{e} (per-user devices follow logind on the system bus)"))?)
        } else {
            dbus_service::DbusService::start_for_daemon(service).await?
        };
        // Agent mode cannot ask anyone without the bus, nor follow logind:
        // off it, the daemon exits with a failure and systemd
        // (Restart=on-failure) starts it again, on the new bus.
        // Always-approve single mode keeps serving the key.
        let exit_when_off_the_bus = per_user || config.prompt.mode == PromptMode::Agent;

        if let Some(tpm) = &tpm_store {
            let mut approval = tpm.lock().unwrap_or_else(|e| e.into_inner()).approval();
            if !*approval.borrow() {
                // The bound anchor key cannot be computed: no state can be
                // verified, so none is opened (nor written, nor reset).
                waiting.store(true, Ordering::SeqCst);
                tracing::error!(
                    "{}: the TPM key store is bound to the boot state ([keystore] pcrs) and this \
                     boot state is not approved, so the anti-rollback anchor and the credential states cannot be \
                     verified; no device is created until then. If the change is expected, approve it: \
                     `fidosealctl tpm approve-boot-state` with the recovery key",
                    tpm::admin::WAITING_FOR_APPROVAL
                );
                tokio::select! {
                    _ = terminate.recv() => { tracing::info!("SIGTERM while waiting for the boot state to be approved: exiting"); return Ok(()); }
                    _ = interrupt.recv() => { tracing::info!("SIGINT while waiting for the boot state to be approved: exiting"); return Ok(()); }
                    reason = bus_lost(&mut bus, exit_when_off_the_bus) => {
                        return Err(format!("{reason} (exiting so that systemd starts fidoseald again)"));
                    }
                    approved = approval.wait_for(|approved| *approved) => {
                        approved.map_err(|_| "the TPM key store went away while waiting for the boot state".to_string())?;
                        tracing::warn!("the boot state was approved: opening the anti-rollback anchor and the credential states");
                    }
                }
            }
        }
        let anchor = match &tpm_store {
            Some(tpm) => Some(tokio::task::block_in_place(|| open_anchor(tpm, &config))?),
            None => None,
        };

        let (failed_tx, mut failed) = tokio::sync::mpsc::unbounded_channel::<String>();
        let mut supervisor = None;
        let mut single = None;
        let mut logind_changes = None;
        if let Some((device_user, registry)) = single_owner {
            let device = tokio::task::block_in_place(|| {
                open_single_device(&config, &policy, keystore, key_store_created, anchor.as_ref(), device_user, registry)
            })?;
            devices.set_single(Arc::clone(&device))?;
            single = Some(devices::spawn(device, config.device.uhid_path.clone(), failed_tx));
        } else {
            let factory = devices::DeviceFactory {
                keystore: Arc::new(Mutex::new(keystore)),
                policy: policy.clone(),
                state_dir: config.state_dir.clone(),
                capacity: config.authenticator.discoverable_credentials,
                authenticator: devices::authenticator_config(&config),
                anchor,
            };
            let connection = bus.as_ref().map(|b| b.connection().clone()).ok_or("no system bus")?;
            let changes = logind::Changes::follow(&connection).await?;
            let mut s = devices::Supervisor::new(Arc::clone(&devices), factory, config.device.uhid_path.clone(), failed_tx);
            follow_sessions(&mut s, &config, &connection).await;
            logind_changes = Some((changes, connection));
            supervisor = Some(s);
        }
        waiting.store(false, Ordering::SeqCst);
        let mut off_the_bus: Option<String> = None;
        let mut failure: Option<String> = None;
        loop {
            tokio::select! {
                _ = terminate.recv() => { tracing::info!("SIGTERM: removing the devices"); break; }
                _ = interrupt.recv() => { tracing::info!("SIGINT: removing the devices"); break; }
                _ = replug.recv() => {
                    tracing::info!("SIGUSR1: re-plugging the devices");
                    if let Some(s) = &supervisor { s.replug_all(); }
                    if let Some(r) = &single { r.replug(); }
                }
                reason = bus_lost(&mut bus, exit_when_off_the_bus) => {
                    tracing::error!(reason, "off the system bus: nobody can be asked; removing the devices and exiting");
                    off_the_bus = Some(reason);
                    break;
                }
                Some(reason) = failed.recv() => { failure = Some(reason); break; }
                changed = next_logind_change(&mut logind_changes) => {
                    match changed {
                        Ok(()) => {
                            if let (Some(s), Some((_, connection))) = (supervisor.as_mut(), logind_changes.as_ref()) {
                                follow_sessions(s, &config, connection).await;
                            }
                        }
                        Err(reason) => { off_the_bus = Some(reason); break; }
                    }
                }
            }
        }
        if let Some(mut s) = supervisor {
            s.stop_all().await;
        }
        if let Some(running) = single {
            // A device that already failed has nothing left to remove.
            let _ = running.stop().await;
        }
        if let Some(reason) = failure {
            return Err(reason);
        }
        if let Some(reason) = off_the_bus {
            return Err(format!("{reason} (exiting so that systemd starts fidoseald again)"));
        }
        tracing::info!("devices removed; exiting");
        Ok(())
    })
}

/// The machine's anti-rollback anchor on the TPM store (rollback.rs); a
/// stale state directory stops the daemon with what is stale and the
/// recovery.
fn open_anchor(tpm: &tpm::admin::SharedTpm, config: &Config) -> Result<tpm::rollback::RollbackAnchor, String> {
    let store = tpm.lock().unwrap_or_else(|e| e.into_inner());
    let (anchor, start) = store.rollback_anchor(&config.state_dir).map_err(|e| e.to_string())?;
    tracing::info!(
        nv_index = format!("{:#010x}", tpm::rollback::NV_INDEX),
        counter = anchor.counter(),
        start = ?start,
        "anti-rollback anchor ready"
    );
    Ok(anchor)
}

/// Single mode's device: the credential state (checked against the anchor),
/// the authenticator and the prompt of `[device] user` (`device_user`, whose
/// agent registers with `registry`, possibly before this).
fn open_single_device(
    config: &Config,
    policy: &policy_service::PolicyService,
    mut keystore: Box<dyn KeyStore>,
    key_store_created: bool,
    anchor: Option<&tpm::rollback::RollbackAnchor>,
    device_user: Arc<device_user::DeviceUser>,
    registry: Arc<prompt_agent::AgentRegistry>,
) -> Result<Arc<devices::UserDevice>, String> {
    let user = config.device.user.clone();
    let credentials = devices::open_credentials(
        &config.state_dir,
        config.authenticator.discoverable_credentials,
        &mut *keystore,
        key_store_created,
        user.as_deref(),
        anchor.map(|anchor| (anchor, tpm::rollback::SINGLE_USER)),
    )?;
    let agent_prompt = prompt_agent::AgentPrompt::for_user(
        config,
        user.as_deref().unwrap_or(""),
        device_user::DeviceOwner::Configured(Arc::clone(&device_user)),
        &registry,
        &credentials,
    );
    let prompt: Box<dyn UserPrompt> = match &agent_prompt {
        Some(agent_prompt) => Box::new(agent_prompt.clone()),
        None => Box::new(prompt::AlwaysApprove),
    };
    let platform =
        Platform { keystore, credentials: Box::new(credentials.clone()), prompt, policy: Box::new(policy.decision()) };
    let authenticator = Authenticator::try_new(devices::authenticator_config(config), platform, Instant::now())
        .map_err(|e| format!("cannot start the authenticator (no random numbers from the system?): {e:?}"))?;
    let uid = match device_user.uid() {
        device_user::DeviceUid::Known(uid) => Some(uid),
        device_user::DeviceUid::NotConfigured | device_user::DeviceUid::Unknown => None,
    };
    let handles = devices::DeviceHandles::new(Some(device_user), Box::new(policy.decision()));
    Ok(Arc::new(devices::UserDevice::new(
        uid,
        user,
        registry,
        credentials,
        Arc::new(Mutex::new(authenticator)),
        agent_prompt,
        handles,
    )))
}

/// Reads logind's sessions and makes the devices follow. A failed read
/// changes nothing (logged); the next change or rescan tries again.
async fn follow_sessions(supervisor: &mut devices::Supervisor, config: &Config, connection: &zbus::Connection) {
    match logind::list_sessions(connection).await {
        Ok(sessions) => {
            let admitted = logind::admitted(&sessions, &config.device.sessions);
            supervisor.reconcile(config, &admitted).await;
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot read logind's sessions; devices stay as they are")
        }
    }
}

async fn next_logind_change(changes: &mut Option<(logind::Changes, zbus::Connection)>) -> Result<(), String> {
    match changes.as_mut() {
        Some((changes, _)) => changes.next().await,
        None => std::future::pending().await,
    }
}

/// Completes when the daemon should stop for being off the bus (agent mode
/// only); in always-approve mode the loss is logged once and the key goes on.
async fn bus_lost(bus: &mut Option<dbus_service::DbusService>, fatal: bool) -> String {
    let Some(service) = bus.as_mut() else {
        return std::future::pending().await;
    };
    let reason = service.lost().await;
    if fatal {
        return reason;
    }
    tracing::warn!(reason, "off the system bus: Manager1 is gone until fidoseald restarts; the key goes on");
    *bus = None;
    std::future::pending().await
}

/// The crate version as 0x00MMmmpp.
pub(crate) fn firmware_version() -> u32 {
    let part = |s: &str| s.parse::<u32>().unwrap_or(0) & 0xff;
    (part(env!("CARGO_PKG_VERSION_MAJOR")) << 16)
        | (part(env!("CARGO_PKG_VERSION_MINOR")) << 8)
        | part(env!("CARGO_PKG_VERSION_PATCH"))
}

/// Channel IDs start at a random place so that a client holding a channel
/// from before a restart does not collide with a new one.
pub(crate) fn random_first_cid() -> u32 {
    let mut bytes = [0u8; 4];
    if getrandom::fill(&mut bytes).is_err() {
        return 1;
    }
    (u32::from_ne_bytes(bytes) & 0x3fff_ffff).max(1)
}
