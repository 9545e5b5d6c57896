//! org.fidoseal.Manager1: status, the device user's passkeys, reset, and
//! the list of devices.
//!
//! Every method acts on the caller's own device (per-user mode: the device
//! of the caller's uid; single mode: the device of `[device] user`). Root
//! acts on the only device there is; with several (per-user mode), root
//! sees them all through ListDevices. Status, the passkey methods and
//! Replug answer the device's user (and root); Reset needs polkit's
//! org.fidoseal.reset for the calling connection (root is let through
//! without asking, and that is logged). DeletePasskey also needs the
//! device owner's verification in their agent, and the passkey methods
//! show only what the policy lets credential management show for that
//! owner.
//!
//! Passkeys are read and deleted through the daemon's shared credential
//! store (shared_credentials.rs), not through the authenticator, whose
//! lock is held for whole CTAP requests. Reset goes through the
//! authenticator (`Authenticator::reset_by_platform`), since it must also
//! forget the key store's secrets, the PIN held in memory and the PIN
//! tokens; that waits for a running request to end.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use fidoseal_ctap::audit::{AuditDecision, AuditEvent, AuditKind};
use fidoseal_ctap::platform::{
    CredentialStore, PresencePurpose, PresenceRequest, ResidentCredential, TransactionSignals,
};
use fidoseal_ctap::{RequestContext, StatusCode};
use fidoseal_dbus::{detail, Details, Error, POLKIT_ACTION_RESET};
use zbus::message::Header;
use zbus::names::UniqueName;
use zbus::Connection;

use super::caller::{self, Credentials};
use super::Service;
use crate::device_user::DeviceUid;
use crate::devices::UserDevice;
use crate::replug::ReplugError;

pub struct Manager {
    service: Arc<Service>,
}

impl Manager {
    pub fn new(service: Arc<Service>) -> Self {
        Self { service }
    }

    /// The TPM store, for root only (the boot-state binding's commands).
    async fn tpm_for_root(
        &self,
        method: &str,
        header: &Header<'_>,
        connection: &Connection,
    ) -> Result<crate::tpm::admin::SharedTpm, Error> {
        let (sender, credentials) = identify(method, header, connection).await?;
        if credentials.uid != 0 {
            tracing::warn!(method, sender = %sender, uid = credentials.uid, decision = "refused", "Manager1: root only");
            return Err(Error::NotPermitted(format!("{method} is for root only")));
        }
        tracing::info!(method, sender = %sender, pid = credentials.pid, "Manager1: TPM boot-state administration by root");
        self.service
            .tpm
            .clone()
            .ok_or_else(|| Error::Failed("the key store is not the TPM ([keystore] backend = \"tpm\")".into()))
    }

    /// The caller and the device it acts on: its own (per-user mode: the
    /// caller's uid's device; single mode: the device of `[device] user`),
    /// or, for root, the only device there is. The owner's uid is known
    /// outside the handlers (device_user.rs, logind): nothing here waits
    /// for the user database.
    async fn owner_or_root(
        &self,
        method: &str,
        header: &Header<'_>,
        connection: &Connection,
    ) -> Result<(Credentials, Arc<UserDevice>), Error> {
        let (sender, credentials) = identify(method, header, connection).await?;
        match self.service.devices.for_caller(credentials.uid) {
            Ok(device) => {
                if !device.is_owner(credentials.uid) {
                    tracing::info!(method, sender = %sender, user = device.user.as_deref().unwrap_or("-"), "Manager1: root acts on the device user's passkeys");
                }
                Ok((credentials, device))
            }
            Err(reason) => {
                tracing::warn!(method, sender = %sender, uid = credentials.uid, decision = "refused", reason, "Manager1: not the device's user");
                let mut reason = format!("uid {} is not the device's user ({reason})", credentials.uid);
                let single_user = self.service.devices.single_user();
                if let Some(device_user) = single_user {
                    if let (DeviceUid::Unknown, Some(name)) = (device_user.uid(), device_user.name()) {
                        reason.push_str(&format!("; {name:?} is not in the user database yet"));
                    }
                }
                Err(Error::NotPermitted(reason))
            }
        }
    }

    /// Runs a store operation on the blocking pool.
    async fn with_store<T: Send + 'static>(
        device: &UserDevice,
        work: impl FnOnce(&mut crate::shared_credentials::SharedCredentialStore) -> T + Send + 'static,
    ) -> Result<T, Error> {
        let mut store = device.store.clone();
        tokio::task::spawn_blocking(move || work(&mut store))
            .await
            .map_err(|e| Error::Failed(format!("store task failed: {e}")))
    }

    /// The passkey `credential_id` names on `device`, if the policy shows
    /// it to the device's owner.
    async fn passkey(device: &UserDevice, credential_id: &str) -> Result<ResidentCredential, Error> {
        let Some(id) = hex::decode(credential_id).ok().filter(|id| !id.is_empty()) else {
            return Err(Error::DoesNotExist(format!("{credential_id:?} is not a credential id (hex)")));
        };
        Self::with_store(device, move |store| store.find(&id))
            .await?
            .map_err(|e| Error::Failed(e.to_string()))?
            // Hidden as credential management hides it: not there at all.
            .filter(|c| device.policy.shows_passkeys_of(&c.rp_id))
            .ok_or_else(|| Error::DoesNotExist(format!("no passkey {credential_id}")))
    }

    /// The device's owner verifies, in their session's agent (the device's
    /// own prompt asks only the owner's agent), that they
    /// want `passkey` deleted: the authenticator's built-in UV, as for a
    /// getPinUvAuthTokenUsingUvWithPermissions (password by PAM, finger by
    /// fprintd, or the PIN, counted against the same retries). It waits
    /// for a running CTAP request to end (the authenticator's lock).
    async fn verify_user_to_delete(device: &UserDevice, passkey: &ResidentCredential) -> Result<(), Error> {
        let authenticator = Arc::clone(&device.authenticator);
        let rp_id = passkey.rp_id.clone();
        let user_name = passkey.user_name.clone();
        let verified = tokio::task::spawn_blocking(move || {
            let signals = TransactionSignals::new();
            let ctx = RequestContext { now: Instant::now(), channel: 0, signals: &signals };
            let request = PresenceRequest {
                purpose: PresencePurpose::DeletePasskey,
                rp_id: Some(&rp_id),
                user_name: user_name.as_deref(),
                ..Default::default()
            };
            authenticator.lock().unwrap_or_else(|e| e.into_inner()).verify_user_for_platform(&request, &ctx)
        })
        .await
        .map_err(|e| Error::Failed(format!("verification task failed: {e}")))?;
        verified.map_err(|status| match status {
            StatusCode::NotAllowed => Error::NotPermitted(
                "deleting a passkey needs the user's verification, and none can be asked for now: no agent in an \
                 active session of the device's user, or no method (a PIN, or [prompt] uv_methods password or \
                 fingerprint) usable"
                    .into(),
            ),
            StatusCode::UvBlocked => Error::NotPermitted(
                "built-in user verification is blocked after too many failures: use the PIN once to unblock it".into(),
            ),
            StatusCode::PinBlocked | StatusCode::PinAuthBlocked => {
                Error::NotPermitted(format!("the PIN is blocked ({status}): re-plug (Replug) or reset the key"))
            }
            StatusCode::UvInvalid | StatusCode::PinInvalid => {
                Error::Rejected("the user was not verified (wrong password, PIN or finger)".into())
            }
            StatusCode::OperationDenied => {
                Error::Rejected("the user did not confirm, or could not be asked to the end".into())
            }
            StatusCode::UserActionTimeout => Error::Canceled("no answer in time".into()),
            StatusCode::KeepaliveCancel => Error::Canceled("the verification was cancelled".into()),
            other => Error::Failed(format!("user verification failed: {other}")),
        })
    }
}

async fn identify<'h>(
    method: &str,
    header: &'h Header<'_>,
    connection: &Connection,
) -> Result<(&'h UniqueName<'h>, Credentials), Error> {
    let Some(sender) = header.sender() else {
        return Err(Error::NotPermitted("the call has no sender".into()));
    };
    let credentials = caller::credentials(connection, sender).await.map_err(|e| {
        tracing::warn!(method, sender = %sender, error = %e, "Manager1: cannot learn the caller's uid");
        Error::Failed("cannot identify the caller".into())
    })?;
    Ok((sender, credentials))
}

#[zbus::interface(name = "org.fidoseal.Manager1")]
impl Manager {
    async fn status(
        &self,
        #[zbus(header)] header: Header<'_>,
        #[zbus(connection)] connection: &Connection,
    ) -> Result<Details, Error> {
        if self.service.waiting_for_boot_state.load(std::sync::atomic::Ordering::SeqCst) {
            // No device yet: what the machine waits for (nothing of a user's).
            identify("Status", &header, connection).await?;
            let mut status = self.machine_status().await?;
            status.insert(
                "start".into(),
                detail(format!(
                    "{}: no device and no credential state is opened until then (the anti-rollback anchor is bound \
                     to the boot state); approve it with `fidosealctl tpm approve-boot-state` and the recovery key",
                    crate::tpm::admin::WAITING_FOR_APPROVAL
                )),
            );
            return Ok(status);
        }
        let (_, device) = self.owner_or_root("Status", &header, connection).await?;
        let (count, remaining, state) = Self::with_store(&device, |store| {
            // Counted by the store (no listing of 10,000 passkeys for a number).
            (store.credential_count(), store.remaining_capacity(), store.load_state())
        })
        .await?;
        let uv_configured = match &device.prompt {
            Some(prompt) => prompt.verification_ready(connection).await,
            None => false,
        };
        let mut status = self.machine_status().await?;
        status.insert("agent_registered".into(), detail(device.registry.current().is_some()));
        status.insert("pin_set".into(), detail(state.pin.is_some()));
        status.insert("pin_retries".into(), detail(u32::from(state.pin_retries)));
        status.insert("always_uv".into(), detail(state.always_uv));
        status.insert("uv_configured".into(), detail(uv_configured));
        status.insert("passkeys".into(), detail(u32::try_from(count).unwrap_or(u32::MAX)));
        status.insert("remaining_passkeys".into(), detail(u32::try_from(remaining).unwrap_or(u32::MAX)));
        status.insert("user".into(), detail(device.user.as_deref().unwrap_or("")));
        Ok(status)
    }

    async fn list_passkeys(
        &self,
        #[zbus(header)] header: Header<'_>,
        #[zbus(connection)] connection: &Connection,
    ) -> Result<Vec<(String, String, String, String)>, Error> {
        let (caller, device) = self.owner_or_root("ListPasskeys", &header, connection).await?;
        let mut credentials = Self::with_store(&device, |store| store.all_credentials())
            .await?
            .map_err(|e| Error::Failed(e.to_string()))?;
        let all = credentials.len();
        // Credential management's filter, one policy decision per rp.
        let mut shown: HashMap<String, bool> = HashMap::new();
        credentials
            .retain(|c| *shown.entry(c.rp_id.clone()).or_insert_with(|| device.policy.shows_passkeys_of(&c.rp_id)));
        credentials.sort_by_key(|c| std::cmp::Reverse(c.created));
        let hidden_by_policy = all - credentials.len();
        tracing::info!(uid = caller.uid, passkeys = credentials.len(), hidden_by_policy, "ListPasskeys");
        Ok(credentials
            .into_iter()
            .map(|c| {
                (
                    hex::encode(&c.credential_id),
                    c.rp_id,
                    c.user_name.unwrap_or_default(),
                    c.user_display_name.unwrap_or_default(),
                )
            })
            .collect())
    }

    async fn show_passkey(
        &self,
        credential_id: &str,
        #[zbus(header)] header: Header<'_>,
        #[zbus(connection)] connection: &Connection,
    ) -> Result<Details, Error> {
        let (_, device) = self.owner_or_root("ShowPasskey", &header, connection).await?;
        let c = Self::passkey(&device, credential_id).await?;
        let mut passkey: HashMap<String, _> = Details::new();
        passkey.insert("rp_id".into(), detail(c.rp_id.as_str()));
        passkey.insert("rp_name".into(), detail(c.rp_name.as_deref().unwrap_or("")));
        passkey.insert("user_name".into(), detail(c.user_name.as_deref().unwrap_or("")));
        passkey.insert("user_display_name".into(), detail(c.user_display_name.as_deref().unwrap_or("")));
        passkey.insert("user_id".into(), detail(c.user_id.clone()));
        passkey.insert("cred_protect".into(), detail(u32::from(c.extensions.cred_protect.max(1))));
        passkey.insert("hmac_secret".into(), detail(c.extensions.hmac_secret));
        passkey.insert("large_blob_key".into(), detail(c.extensions.large_blob_key));
        Ok(passkey)
    }

    async fn delete_passkey(
        &self,
        credential_id: &str,
        #[zbus(header)] header: Header<'_>,
        #[zbus(connection)] connection: &Connection,
    ) -> Result<(), Error> {
        let (caller, device) = self.owner_or_root("DeletePasskey", &header, connection).await?;
        let passkey = Self::passkey(&device, credential_id).await?;
        let audit = |decision, reason: String| {
            crate::audit_log::write(
                &AuditEvent::new(AuditKind::CredentialDeleted, decision)
                    .rp(Some(&passkey.rp_id))
                    .user(device.user.clone())
                    .credential(&passkey.credential_id)
                    .operation("manager1-delete")
                    .reason(reason),
            );
        };
        // Whoever calls (any program of the user, a login over SSH, root):
        // the device's owner confirms who they are first, in their agent.
        if let Err(e) = Self::verify_user_to_delete(&device, &passkey).await {
            // The audit trail, not a log line: it never holds a credential ID.
            audit(
                AuditDecision::Deny,
                format!("asked over D-Bus by uid {}; the user was not verified: {e}", caller.uid),
            );
            return Err(e);
        }
        let id = passkey.credential_id.clone();
        let deleted = Self::with_store(&device, move |store| store.delete(&id))
            .await?
            .map_err(|e| Error::Failed(e.to_string()))?;
        if !deleted {
            return Err(Error::DoesNotExist(format!("no passkey {credential_id}")));
        }
        audit(AuditDecision::Allow, format!("deleted over D-Bus by uid {}", caller.uid));
        Ok(())
    }

    /// `fidosealctl tpm allow-boot-change` (root only).
    async fn allow_boot_change(
        &self,
        #[zbus(header)] header: Header<'_>,
        #[zbus(connection)] connection: &Connection,
    ) -> Result<(), Error> {
        let tpm = self.tpm_for_root("AllowBootChange", &header, connection).await?;
        tokio::task::spawn_blocking(move || tpm.lock().unwrap_or_else(|e| e.into_inner()).allow_boot_change())
            .await
            .map_err(|e| Error::Failed(format!("task failed: {e}")))?
            .map_err(|e| Error::Failed(e.to_string()))
    }

    /// `fidosealctl tpm approve-boot-state` (root only).
    async fn approve_boot_state(
        &self,
        recovery_key: String,
        #[zbus(header)] header: Header<'_>,
        #[zbus(connection)] connection: &Connection,
    ) -> Result<Details, Error> {
        let recovery_key = zeroize::Zeroizing::new(recovery_key);
        let tpm = self.tpm_for_root("ApproveBootState", &header, connection).await?;
        let report = tokio::task::spawn_blocking(move || {
            tpm.lock().unwrap_or_else(|e| e.into_inner()).approve_boot_state(&recovery_key)
        })
        .await
        .map_err(|e| Error::Failed(format!("task failed: {e}")))?
        .map_err(|e| match e {
            crate::tpm::ApproveError::WrongKey | crate::tpm::ApproveError::Malformed => {
                Error::NotPermitted(e.to_string())
            }
            other => Error::Failed(other.to_string()),
        })?;
        let mut details = Details::new();
        crate::tpm::admin::status_details(&report, &mut details);
        Ok(details)
    }

    async fn reset(
        &self,
        #[zbus(header)] header: Header<'_>,
        #[zbus(connection)] connection: &Connection,
    ) -> Result<(), Error> {
        let (sender, credentials) = identify("Reset", &header, connection).await?;
        if credentials.uid == 0 {
            tracing::warn!(sender = %sender, pid = credentials.pid, "Reset by root: polkit not asked");
        } else {
            match caller::polkit_allows(connection, sender, POLKIT_ACTION_RESET).await {
                Ok(true) => {
                    tracing::info!(sender = %sender, uid = credentials.uid, action = POLKIT_ACTION_RESET, "Reset authorized by polkit")
                }
                Ok(false) => {
                    tracing::warn!(sender = %sender, uid = credentials.uid, decision = "refused", "Reset: polkit said no");
                    return Err(Error::NotPermitted(format!("not authorized for {POLKIT_ACTION_RESET}")));
                }
                Err(reason) => {
                    tracing::warn!(sender = %sender, uid = credentials.uid, reason, decision = "refused", "Reset: polkit could not be asked");
                    return Err(Error::NotPermitted("polkit could not be asked".into()));
                }
            }
        }
        let device = self.service.devices.for_reset(credentials.uid).map_err(|reason| {
            tracing::warn!(sender = %sender, uid = credentials.uid, reason, decision = "refused", "Reset: no device of the caller's");
            Error::NotPermitted(reason)
        })?;
        let authenticator = Arc::clone(&device.authenticator);
        tokio::task::spawn_blocking(move || {
            let mut authenticator = authenticator.lock().unwrap_or_else(|e| e.into_inner());
            let result = authenticator.reset_by_platform();
            crate::audit_log::drain(&mut authenticator);
            result
        })
        .await
        .map_err(|e| Error::Failed(format!("reset task failed: {e}")))?
        .map_err(|status| {
            tracing::error!(%status, "Reset failed");
            Error::Failed(format!("reset failed: {status}"))
        })?;
        tracing::warn!(sender = %sender, uid = credentials.uid, user = device.user.as_deref().unwrap_or("-"), "Reset: every credential and the PIN were deleted");
        Ok(())
    }

    /// Every device the caller may see: root sees all, a user their own.
    async fn list_devices(
        &self,
        #[zbus(header)] header: Header<'_>,
        #[zbus(connection)] connection: &Connection,
    ) -> Result<Vec<Details>, Error> {
        let (_, credentials) = identify("ListDevices", &header, connection).await?;
        let visible: Vec<Arc<UserDevice>> = if credentials.uid == 0 {
            self.service.devices.all()
        } else {
            self.service.devices.owned_by(credentials.uid).into_iter().collect()
        };
        let mut devices = Vec::with_capacity(visible.len());
        for device in visible {
            let node = tokio::task::spawn_blocking({
                let device = Arc::clone(&device);
                move || device.node()
            })
            .await
            .map_err(|e| Error::Failed(format!("device lookup failed: {e}")))?;
            let mut entry = Details::new();
            entry.insert("uid".into(), detail(device.uid.unwrap_or(u32::MAX)));
            entry.insert("user".into(), detail(device.user.as_deref().unwrap_or("")));
            entry.insert("node".into(), detail(node.map(|n| n.display().to_string()).unwrap_or_default()));
            entry.insert("uniq".into(), detail(device.uniq()));
            entry.insert("sessions".into(), detail(device.sessions()));
            entry.insert("agent_registered".into(), detail(device.registry.current().is_some()));
            devices.push(entry);
        }
        tracing::info!(uid = credentials.uid, devices = devices.len(), "ListDevices");
        Ok(devices)
    }

    /// Unplugs the caller's device and plugs it in again: a power cycle (replug.rs).
    /// It ends the block after three wrong PINs in a row (CTAP 2.1 §6.5.5.5),
    /// which only a power cycle ends, so that the device's user does not
    /// need root (SIGUSR1) or a restart after someone typed wrong PINs into
    /// their key. Once per [`crate::replug::MIN_REPLUG_INTERVAL`] per device.
    async fn replug(
        &self,
        #[zbus(header)] header: Header<'_>,
        #[zbus(connection)] connection: &Connection,
    ) -> Result<(), Error> {
        let (caller, device) = self.owner_or_root("Replug", &header, connection).await?;
        match device.replugger.replug().await {
            Ok(()) => {
                tracing::warn!(
                    uid = caller.uid,
                    pid = caller.pid,
                    user = device.user.as_deref().unwrap_or("-"),
                    "Replug: the device was unplugged and plugged in again (a power cycle)"
                );
                Ok(())
            }
            Err(e @ (ReplugError::TooSoon { .. } | ReplugError::InProgress(_))) => {
                tracing::info!(uid = caller.uid, decision = "refused", reason = %e, "Replug");
                Err(Error::RateLimited(e.to_string()))
            }
            Err(e) => {
                tracing::error!(uid = caller.uid, error = %e, "Replug failed");
                Err(Error::Failed(e.to_string()))
            }
        }
    }
}

impl Manager {
    /// Status's entries about the daemon and the machine (no device's).
    async fn machine_status(&self) -> Result<Details, Error> {
        let mut status = Details::new();
        status.insert("version".into(), detail(env!("CARGO_PKG_VERSION")));
        status.insert("keystore".into(), detail(self.service.keystore));
        status.insert("prompt".into(), detail(self.service.prompt_mode.name()));
        status.insert("policy_files".into(), detail(policy_file_count(&self.service.policy_dirs)));
        if let Some(policy) = &self.service.policy {
            status.insert("policy_generation".into(), detail(policy.generation()));
        }
        if let Some(manufacturer) = &self.service.tpm_manufacturer {
            status.insert("tpm_manufacturer".into(), detail(manufacturer.as_str()));
        }
        if let Some(tpm) = self.service.tpm.clone() {
            let report =
                tokio::task::spawn_blocking(move || tpm.lock().unwrap_or_else(|e| e.into_inner()).boot_state())
                    .await
                    .map_err(|e| Error::Failed(format!("status task failed: {e}")))?;
            match report {
                Ok(Some(report)) => crate::tpm::admin::status_details(&report, &mut status),
                Ok(None) => {}
                Err(e) => {
                    status.insert("tpm_boot_state".into(), detail(format!("cannot be read: {e}")));
                }
            }
        }
        status.insert("device_mode".into(), detail(self.service.device_mode.name()));
        Ok(status)
    }
}

/// `*.toml` files in the policy directories (what the daemon reads).
fn policy_file_count(dirs: &[std::path::PathBuf]) -> u32 {
    let count = dirs
        .iter()
        .filter_map(|dir| std::fs::read_dir(dir).ok())
        .flat_map(|entries| entries.filter_map(Result::ok))
        .filter(|e| e.path().extension().is_some_and(|x| x == "toml") && e.path().is_file())
        .count();
    u32::try_from(count).unwrap_or(u32::MAX)
}
