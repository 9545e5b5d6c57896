//! Follows fidoseald on the system bus: who owns org.fidoseal.Fidoseal1
//! (only that connection may call the agent), and registration with it
//! each time it appears.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use fidoseal_dbus::{AgentManager1Proxy, BUS_NAME};
use futures_util::StreamExt;
use zbus::fdo::DBusProxy;
use zbus::names::{BusName, OwnedUniqueName, UniqueName};
use zbus::zvariant::ObjectPath;
use zbus::Connection;

use crate::requests::Requests;

/// Waits between registration attempts while the daemon has its name but
/// does not serve AgentManager1 yet (it takes the name before exporting
/// objects, or is still starting).
const REGISTER_BACKOFF_MS: &[u64] = &[0, 100, 250, 500, 1000, 2000, 4000, 8000];

pub struct DaemonWatch {
    dbus: DBusProxy<'static>,
    owner: RwLock<Option<OwnedUniqueName>>,
}

fn bus_name() -> BusName<'static> {
    BusName::try_from(BUS_NAME).expect("BUS_NAME is a valid bus name")
}

/// The D-Bus error name of a failed call, if it is one.
fn error_name(e: &zbus::Error) -> Option<String> {
    match e {
        zbus::Error::MethodError(name, _, _) => Some(name.to_string()),
        zbus::Error::FDO(fdo) => Some(zbus::DBusError::name(fdo.as_ref()).to_string()),
        _ => None,
    }
}

impl DaemonWatch {
    pub async fn new(conn: &Connection) -> zbus::Result<Arc<Self>> {
        Ok(Arc::new(DaemonWatch { dbus: DBusProxy::new(conn).await?, owner: RwLock::new(None) }))
    }

    pub fn owner(&self) -> Option<OwnedUniqueName> {
        self.owner.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Is `sender` the current owner of the daemon's name? The cached owner
    /// answers; on a mismatch the bus is asked, in case the signal that
    /// the name moved is still on its way.
    pub async fn is_daemon(&self, sender: &UniqueName<'_>) -> bool {
        if self.owner().as_deref() == Some(sender) {
            return true;
        }
        match self.dbus.get_name_owner(bus_name()).await {
            Ok(owner) => owner.as_str() == sender.as_str(),
            Err(_) => false,
        }
    }

    /// The uid behind a connection, for the log.
    pub async fn unix_user(&self, sender: &UniqueName<'_>) -> Option<u32> {
        self.dbus.get_connection_unix_user(BusName::from(sender.to_owned())).await.ok()
    }

    /// Runs for the life of the agent: registers with the daemon now if it
    /// is there, and again each time its name gets a new owner. Returns
    /// only if the bus connection is lost.
    pub async fn run(
        self: Arc<Self>,
        conn: Connection,
        agent_path: ObjectPath<'static>,
        requests: Arc<Requests>,
    ) -> zbus::Result<()> {
        // Subscribe first, then ask: an owner change in between is seen twice at worst.
        let mut changes = self.dbus.receive_name_owner_changed_with_args(&[(0, BUS_NAME)]).await?;
        let initial = match self.dbus.get_name_owner(bus_name()).await {
            Ok(owner) => Some(owner),
            Err(zbus::fdo::Error::NameHasNoOwner(_)) => None,
            Err(e) => return Err(e.into()),
        };
        let mut registering: Option<tokio::task::JoinHandle<()>> = None;
        self.owner_changed(initial, true, &conn, &agent_path, &requests, &mut registering);
        while let Some(signal) = changes.next().await {
            let args = match signal.args() {
                Ok(args) => args,
                Err(e) => {
                    tracing::warn!("malformed NameOwnerChanged: {e}");
                    continue;
                }
            };
            let new_owner: Option<OwnedUniqueName> =
                args.new_owner().as_ref().map(|n| OwnedUniqueName::from(n.to_owned()));
            if new_owner == self.owner() {
                continue;
            }
            self.owner_changed(new_owner, false, &conn, &agent_path, &requests, &mut registering);
        }
        Err(zbus::Error::Failure("the system bus connection was closed".into()))
    }

    fn owner_changed(
        &self,
        owner: Option<OwnedUniqueName>,
        at_start: bool,
        conn: &Connection,
        agent_path: &ObjectPath<'static>,
        requests: &Arc<Requests>,
        registering: &mut Option<tokio::task::JoinHandle<()>>,
    ) {
        if let Some(task) = registering.take() {
            task.abort();
        }
        // Whatever the old daemon asked is void: nobody waits for the answers.
        let closed = requests.close_all();
        if closed > 0 {
            tracing::info!(closed, "closed the dialogs of the previous fidoseald");
        }
        *self.owner.write().unwrap_or_else(|p| p.into_inner()) = owner.clone();
        match owner {
            Some(owner) => {
                tracing::info!(daemon = %owner, "fidoseald is on the bus; registering");
                let conn = conn.clone();
                let path = agent_path.clone();
                *registering = Some(tokio::spawn(register(conn, owner, path)));
            }
            None if at_start => {
                tracing::info!(name = BUS_NAME, "fidoseald is not running; waiting for it to appear on the system bus")
            }
            None => tracing::info!(name = BUS_NAME, "fidoseald left the bus; waiting for it to come back"),
        }
    }

    /// Best effort, when the agent stops.
    pub async fn unregister(&self, conn: &Connection, agent_path: &ObjectPath<'_>) {
        let Some(owner) = self.owner() else { return };
        let call = async {
            let proxy = AgentManager1Proxy::builder(conn).destination(owner)?.build().await?;
            proxy.unregister_agent(agent_path).await
        };
        match tokio::time::timeout(Duration::from_secs(1), call).await {
            Ok(Ok(())) => tracing::info!("unregistered from fidoseald"),
            Ok(Err(e)) => tracing::debug!("UnregisterAgent failed: {e}"),
            Err(_) => tracing::debug!("UnregisterAgent timed out"),
        }
    }
}

/// RegisterAgent with the daemon that owns the name now (addressed by its
/// unique name, so a call can never reach a later owner by mistake). A
/// refusal for the session (org.fidoseal.Error.NotActive) is tried again
/// each time logind reports a change, so switching back to this session
/// registers the agent without a daemon restart; NotPermitted (not the
/// device's user) is final.
async fn register(conn: Connection, owner: OwnedUniqueName, path: ObjectPath<'static>) {
    let proxy = match AgentManager1Proxy::builder(&conn).destination(owner.clone()) {
        Ok(b) => match b.build().await {
            Ok(p) => p,
            Err(e) => return tracing::error!("cannot build the AgentManager1 proxy: {e}"),
        },
        Err(e) => return tracing::error!("cannot build the AgentManager1 proxy: {e}"),
    };
    // Followed from before the first attempt: a change between a refusal
    // and the wait for one is not missed.
    let session_changes = match SessionChanges::follow(&conn).await {
        Ok(changes) => Some(changes),
        Err(e) => {
            tracing::debug!("cannot follow logind's signals: {e}");
            None
        }
    };
    let mut refusals = 0u32;
    loop {
        let refusal = match register_with_backoff(&proxy, &owner, &path).await {
            Attempt::Registered => return,
            Attempt::GaveUp(error) => {
                return tracing::error!(daemon = %owner, error, "could not register with fidoseald; waiting for it to restart")
            }
            Attempt::Forbidden(error) => {
                return tracing::error!(daemon = %owner, error = %error, "fidoseald refused the registration for good")
            }
            Attempt::Refused(refusal) => refusal,
        };
        refusals += 1;
        let Some(changes) = session_changes.as_ref() else {
            return tracing::error!(daemon = %owner, error = %refusal, "fidoseald refused the registration; waiting for it to restart");
        };
        if refusals == 1 {
            tracing::error!(
                daemon = %owner,
                error = %refusal,
                "fidoseald refused the registration; trying again when a login session changes"
            );
        } else {
            tracing::info!(daemon = %owner, error = %refusal, refusals, "fidoseald refused the registration again");
        }
        if !changes.next().await {
            return tracing::error!(daemon = %owner, "logind's signals ended; waiting for fidoseald to restart");
        }
        tracing::info!(daemon = %owner, "a login session changed; registering again");
    }
}

enum Attempt {
    Registered,
    /// NotActive: the right user, not from an active session now.
    Refused(zbus::Error),
    /// NotPermitted: not this user's key (final for this daemon).
    Forbidden(zbus::Error),
    /// Every attempt failed otherwise (no AgentManager1, AlreadyExists held on).
    GaveUp(String),
}

async fn register_with_backoff(
    proxy: &AgentManager1Proxy<'_>,
    owner: &OwnedUniqueName,
    path: &ObjectPath<'_>,
) -> Attempt {
    let mut last_error = String::new();
    for (attempt, delay) in REGISTER_BACKOFF_MS.iter().enumerate() {
        tokio::time::sleep(Duration::from_millis(*delay)).await;
        match proxy.register_agent(path).await {
            Ok(()) => {
                tracing::info!(daemon = %owner, path = %path, "registered with fidoseald");
                return Attempt::Registered;
            }
            Err(e) => {
                match error_name(&e).as_deref() {
                    Some("org.fidoseal.Error.NotActive") => return Attempt::Refused(e),
                    Some("org.fidoseal.Error.NotPermitted") => return Attempt::Forbidden(e),
                    _ => {}
                }
                // AlreadyExists is retried: the holder is often this agent's
                // previous run, whose connection the daemon has not yet seen close.
                tracing::debug!(attempt, error = %e, "RegisterAgent failed; retrying");
                last_error = e.to_string();
            }
        }
    }
    Attempt::GaveUp(last_error)
}

const LOGIND: &str = "org.freedesktop.login1";

/// logind's signals, drained as they come by a task of their own (a zbus
/// stream that is not read holds up the whole connection once its queue is
/// full) and kept as "something changed since the last look".
struct SessionChanges {
    changed: Arc<tokio::sync::Notify>,
    ended: Arc<std::sync::atomic::AtomicBool>,
    /// Ends with the stream, or when this value is dropped.
    drain: tokio::task::JoinHandle<()>,
}

impl SessionChanges {
    /// logind's signals (only the owner of org.freedesktop.login1 matches,
    /// so another client cannot fake one; and a retry it caused would only
    /// be refused again: the daemon decides), of which those that
    /// [`is_session_change`] counts.
    async fn follow(conn: &Connection) -> zbus::Result<SessionChanges> {
        let rule = zbus::MatchRule::builder()
            .msg_type(zbus::message::Type::Signal)
            .sender(LOGIND)?
            .path_namespace("/org/freedesktop/login1")?
            .build();
        let mut stream = zbus::MessageStream::for_match_rule(rule, conn, None).await?;
        let changed = Arc::new(tokio::sync::Notify::new());
        let ended = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (notify, end) = (Arc::clone(&changed), Arc::clone(&ended));
        let drain = tokio::spawn(async move {
            while let Some(message) = stream.next().await {
                if message.as_ref().is_ok_and(|m| !is_session_change(m)) {
                    continue;
                }
                notify.notify_one();
            }
            end.store(true, std::sync::atomic::Ordering::Release);
            notify.notify_one();
        });
        Ok(SessionChanges { changed, ended, drain })
    }

    /// Waits for a change, then for a quiet moment: one session switch is a
    /// burst of signals, and a retry per signal would only repeat itself.
    /// False when the signals ended (the bus connection is gone).
    async fn next(&self) -> bool {
        const QUIET: Duration = Duration::from_millis(300);
        self.changed.notified().await;
        while !self.has_ended() && tokio::time::timeout(QUIET, self.changed.notified()).await.is_ok() {}
        !self.has_ended()
    }

    fn has_ended(&self) -> bool {
        self.ended.load(std::sync::atomic::Ordering::Acquire)
    }
}

/// A logind signal that can change whether this agent may register: a
/// session's or seat's activity (PropertiesChanged naming Active,
/// ActiveSession or State), sessions and users coming and going. Idle hints
/// and the like are left out: on a busy machine they would make every
/// refused agent ask again and again.
fn is_session_change(message: &zbus::Message) -> bool {
    const RELEVANT: [&str; 3] = ["Active", "ActiveSession", "State"];
    let header = message.header();
    match header.member().map(|m| m.as_str()) {
        Some("PropertiesChanged") => {
            type Changed = (String, std::collections::HashMap<String, zbus::zvariant::OwnedValue>, Vec<String>);
            match message.body().deserialize::<Changed>() {
                Ok((_, changed, invalidated)) => {
                    changed.keys().chain(invalidated.iter()).any(|name| RELEVANT.contains(&name.as_str()))
                }
                Err(_) => false,
            }
        }
        Some("SessionNew" | "SessionRemoved" | "UserNew" | "UserRemoved") => true,
        _ => false,
    }
}

impl Drop for SessionChanges {
    fn drop(&mut self) {
        self.drain.abort();
    }
}
