//! org.fidoseal.AgentManager1: the session agent registers the object where
//! it serves org.fidoseal.Agent1. Only a device's user, from an active
//! logind session, may register, and only for their own device (per-user
//! mode: the registry of their uid, devices.rs); one agent per device at a
//! time; an agent whose connection leaves the bus is forgotten
//! (NameOwnerChanged).

use std::sync::Arc;

use fidoseal_dbus::Error;
use futures_lite::StreamExt;
use zbus::fdo::DBusProxy;
use zbus::message::Header;
use zbus::names::{BusName, OwnedUniqueName};
use zbus::zvariant::{ObjectPath, OwnedObjectPath};
use zbus::Connection;

use super::caller::{self, SessionCheck};
use super::Service;
use crate::device_user::DeviceUid;
use crate::prompt_agent::registry::{AgentRegistry, RegisterError};

pub struct AgentManager {
    service: Arc<Service>,
}

impl AgentManager {
    pub fn new(service: Arc<Service>) -> Self {
        Self { service }
    }
}

#[zbus::interface(name = "org.fidoseal.AgentManager1")]
impl AgentManager {
    async fn register_agent(
        &self,
        agent: ObjectPath<'_>,
        #[zbus(header)] header: Header<'_>,
        #[zbus(connection)] connection: &Connection,
    ) -> Result<(), Error> {
        let Some(sender) = header.sender() else {
            return Err(Error::NotPermitted("the call has no sender".into()));
        };
        let credentials = caller::credentials(connection, sender).await.map_err(|e| {
            tracing::warn!(sender = %sender, error = %e, "RegisterAgent: cannot learn the caller's uid");
            Error::Failed("cannot identify the caller".into())
        })?;
        let log_refusal = |reason: &str| {
            tracing::warn!(
                sender = %sender,
                uid = credentials.uid,
                pid = credentials.pid,
                agent = %agent,
                decision = "refused",
                reason,
                "RegisterAgent"
            );
        };
        let refuse = |reason: String| {
            log_refusal(&reason);
            Error::NotPermitted(reason)
        };
        // Single mode: the uid resolved at start or on SIGHUP
        // (device_user.rs), so that a slow user database never holds up
        // this handler. Per-user mode: each user registers with their own
        // device's registry (logind's uid): an agent is never asked about
        // another user's device.
        if let Some(device_user) = self.service.devices.single_user() {
            match device_user.uid() {
                DeviceUid::NotConfigured => return Err(refuse("this device has no [device] user".into())),
                DeviceUid::Unknown => {
                    // Looked up again in the background; Failed (not
                    // NotPermitted), so that the agent tries again shortly.
                    device_user.is(credentials.uid);
                    let reason = format!(
                        "the device's user {:?} is not in the user database (yet); looking again",
                        device_user.name().unwrap_or("")
                    );
                    log_refusal(&reason);
                    return Err(Error::Failed(reason));
                }
                DeviceUid::Known(device_uid) if device_uid != credentials.uid => {
                    let user = device_user.name().unwrap_or("");
                    return Err(refuse(format!("uid {} is not the device's user {user}", credentials.uid)));
                }
                DeviceUid::Known(_) => {}
            }
        }
        let Some(registry) = self.service.devices.registry_for(credentials.uid) else {
            return Err(refuse(format!("uid {} is not the device's user", credentials.uid)));
        };
        // The right user in the wrong session state: NotActive, which the
        // agent tries again when logind reports a change.
        let session = caller::check_session(connection, credentials.pid, credentials.uid).await.map_err(|reason| {
            log_refusal(&reason);
            Error::NotActive(reason)
        })?;
        let owner = OwnedUniqueName::from(sender.to_owned());
        let new_connection = registry.current().is_none_or(|a| a.owner != owner);
        match registry.register(
            owner.clone(),
            OwnedObjectPath::from(agent.to_owned()),
            credentials.uid,
            credentials.pid,
        ) {
            Ok(registered) => {
                let session = match session {
                    SessionCheck::NoLogind => "not checked (no logind)".to_string(),
                    SessionCheck::ActiveSession(id) => format!("active session {id}"),
                    SessionCheck::UserActive => "user service of a user with an active session".to_string(),
                };
                tracing::info!(
                    sender = %sender,
                    uid = credentials.uid,
                    pid = credentials.pid,
                    agent = %agent,
                    generation = registered.generation,
                    session,
                    decision = "registered",
                    "RegisterAgent"
                );
                if new_connection {
                    tokio::spawn(watch_agent(connection.clone(), Arc::clone(&registry), owner));
                }
                Ok(())
            }
            Err(RegisterError::AlreadyExists(holder)) => {
                tracing::warn!(
                    sender = %sender,
                    uid = credentials.uid,
                    holder = %holder,
                    decision = "refused",
                    "RegisterAgent: another connection holds the agent"
                );
                Err(Error::AlreadyExists(format!("{holder} is the registered agent")))
            }
        }
    }

    /// The user closed a dialog whose answer the agent had already given
    /// (the fingerprint prompt): stop what the daemon does for `request`.
    async fn cancel_request(&self, request: u64, #[zbus(header)] header: Header<'_>) -> Result<(), Error> {
        let Some(sender) = header.sender() else {
            return Err(Error::NotPermitted("the call has no sender".into()));
        };
        // Each registry checks that the sender is its registered agent.
        if self.service.devices.registries().iter().any(|r| r.stop_by_user(sender.as_str(), request)) {
            tracing::info!(sender = %sender, request, decision = "stopped", "CancelRequest: the user stopped the request");
            Ok(())
        } else {
            tracing::warn!(sender = %sender, request, decision = "refused", "CancelRequest: not the registered agent, or no such request");
            Err(Error::NotPermitted(format!("{sender} may not cancel request {request}")))
        }
    }

    async fn unregister_agent(&self, agent: ObjectPath<'_>, #[zbus(header)] header: Header<'_>) -> Result<(), Error> {
        let Some(sender) = header.sender() else {
            return Err(Error::NotPermitted("the call has no sender".into()));
        };
        if self.service.devices.registries().iter().any(|r| r.unregister(sender.as_str(), agent.as_str())) {
            tracing::info!(sender = %sender, agent = %agent, "UnregisterAgent: agent unregistered");
            Ok(())
        } else {
            tracing::info!(sender = %sender, agent = %agent, "UnregisterAgent: no such agent of this connection");
            Err(Error::DoesNotExist(format!("{sender} has no agent at {agent}")))
        }
    }
}

/// Forgets `owner`'s agent when its connection leaves the bus. Ends when
/// that happens, or when `owner` no longer holds the registration.
async fn watch_agent(connection: Connection, registry: Arc<AgentRegistry>, owner: OwnedUniqueName) {
    let watched = async {
        let dbus = DBusProxy::new(&connection).await?;
        let mut owner_changes = dbus.receive_name_owner_changed_with_args(&[(0, owner.as_str())]).await?;
        // The agent may have left between RegisterAgent and the match rule.
        if !dbus.name_has_owner(BusName::from(owner.as_ref())).await? {
            return Ok::<bool, zbus::Error>(true);
        }
        let mut changes = registry.subscribe();
        loop {
            tokio::select! {
                signal = owner_changes.next() => match signal {
                    Some(signal) => {
                        if signal.args().map(|a| a.new_owner().is_none()).unwrap_or(false) {
                            return Ok(true);
                        }
                    }
                    None => return Ok(true),
                },
                changed = changes.changed() => {
                    let still_ours = registry.current().is_some_and(|a| a.owner == owner);
                    if changed.is_err() || !still_ours {
                        return Ok(false);
                    }
                }
            }
        }
    };
    match watched.await {
        Ok(true) => {
            if let Some(agent) = registry.connection_closed(owner.as_str()) {
                tracing::info!(sender = %agent.owner, agent = %agent.path, "the agent left the bus; registration dropped");
            }
        }
        Ok(false) => {}
        Err(e) => {
            // Without a watch a dead agent would only be noticed by the next
            // prompt's failed call; drop it now rather than keep it blind.
            tracing::warn!(sender = %owner, error = %e, "cannot watch the agent's connection; dropping its registration");
            registry.connection_closed(owner.as_str());
        }
    }
}
