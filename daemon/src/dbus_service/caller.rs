//! Who is calling: the caller's uid and process from the bus daemon, its
//! logind session, and polkit's word on administrator actions.

use std::collections::HashMap;

use zbus::fdo::DBusProxy;
use zbus::names::{BusName, UniqueName};
use zbus::proxy::CacheProperties;
use zbus::zvariant::{OwnedObjectPath, Value};
use zbus::Connection;

const LOGIND: &str = "org.freedesktop.login1";
const POLKIT: &str = "org.freedesktop.PolicyKit1";

/// polkit's CheckAuthorizationFlags.AllowUserInteraction: the caller's
/// polkit agent may ask for an administrator's password.
const POLKIT_ALLOW_USER_INTERACTION: u32 = 1;

/// The uid and pid of a connection, as the bus daemon saw them when it connected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Credentials {
    pub uid: u32,
    pub pid: u32,
}

pub async fn credentials(connection: &Connection, sender: &UniqueName<'_>) -> zbus::Result<Credentials> {
    let dbus = DBusProxy::new(connection).await?;
    let name = BusName::from(sender.as_ref());
    let uid = dbus.get_connection_unix_user(name.clone()).await?;
    let pid = dbus.get_connection_unix_process_id(name).await?;
    Ok(Credentials { uid, pid })
}

#[zbus::proxy(
    interface = "org.freedesktop.login1.Manager",
    default_service = "org.freedesktop.login1",
    default_path = "/org/freedesktop/login1"
)]
trait LoginManager {
    #[zbus(name = "GetSessionByPID")]
    fn get_session_by_pid(&self, pid: u32) -> zbus::Result<OwnedObjectPath>;
    fn get_user(&self, uid: u32) -> zbus::Result<OwnedObjectPath>;
}

#[zbus::proxy(interface = "org.freedesktop.login1.Session", default_service = "org.freedesktop.login1")]
trait LoginSession {
    #[zbus(property)]
    fn active(&self) -> zbus::Result<bool>;
    #[zbus(property)]
    fn user(&self) -> zbus::Result<(u32, OwnedObjectPath)>;
    #[zbus(property)]
    fn id(&self) -> zbus::Result<String>;
}

#[zbus::proxy(interface = "org.freedesktop.login1.User", default_service = "org.freedesktop.login1")]
trait LoginUser {
    #[zbus(property)]
    fn state(&self) -> zbus::Result<String>;
}

/// What logind says about a caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionCheck {
    /// logind is not on this bus (containers, minimal systems): not checked.
    NoLogind,
    /// The caller's process is in this active session of its user.
    ActiveSession(String),
    /// The caller is not in a session (e.g. a systemd user service), but
    /// its user has an active session on a seat.
    UserActive,
}

/// The caller (`pid`, `uid`) is in an active logind session of `uid`, or,
/// when its process belongs to no session (the agent as a systemd user
/// service), `uid` has an active session. Err says why not.
pub async fn check_session(connection: &Connection, pid: u32, uid: u32) -> Result<SessionCheck, String> {
    let dbus = DBusProxy::new(connection).await.map_err(|e| e.to_string())?;
    let logind = BusName::try_from(LOGIND).map_err(|e| e.to_string())?;
    if !dbus.name_has_owner(logind).await.map_err(|e| format!("cannot ask the bus about logind: {e}"))? {
        return Ok(SessionCheck::NoLogind);
    }
    let manager = LoginManagerProxy::builder(connection)
        .cache_properties(CacheProperties::No)
        .build()
        .await
        .map_err(|e| e.to_string())?;
    match manager.get_session_by_pid(pid).await {
        Ok(path) => {
            let session = LoginSessionProxy::builder(connection)
                .path(path)
                .map_err(|e| e.to_string())?
                .cache_properties(CacheProperties::No)
                .build()
                .await
                .map_err(|e| e.to_string())?;
            let id = session.id().await.unwrap_or_default();
            let (owner, _) = session.user().await.map_err(|e| format!("session {id}: cannot read its user: {e}"))?;
            if owner != uid {
                return Err(format!("session {id} belongs to uid {owner}, not {uid}"));
            }
            if !session.active().await.map_err(|e| format!("session {id}: cannot read Active: {e}"))? {
                return Err(format!("session {id} is not the active session of its seat"));
            }
            Ok(SessionCheck::ActiveSession(id))
        }
        Err(zbus::Error::MethodError(name, _, _)) if name.as_str() == "org.freedesktop.login1.NoSessionForPID" => {
            let path = manager
                .get_user(uid)
                .await
                .map_err(|e| format!("pid {pid} is in no session and uid {uid} has none: {e}"))?;
            let user = LoginUserProxy::builder(connection)
                .path(path)
                .map_err(|e| e.to_string())?
                .cache_properties(CacheProperties::No)
                .build()
                .await
                .map_err(|e| e.to_string())?;
            match user.state().await.map_err(|e| format!("cannot read uid {uid}'s state: {e}"))?.as_str() {
                "active" => Ok(SessionCheck::UserActive),
                state => Err(format!("pid {pid} is in no session and uid {uid} is {state}, not active")),
            }
        }
        Err(e) => Err(format!("logind cannot place pid {pid}: {e}")),
    }
}

#[zbus::proxy(
    interface = "org.freedesktop.PolicyKit1.Authority",
    default_service = "org.freedesktop.PolicyKit1",
    default_path = "/org/freedesktop/PolicyKit1/Authority"
)]
trait PolkitAuthority {
    #[allow(clippy::type_complexity)]
    fn check_authorization(
        &self,
        subject: &(&str, HashMap<&str, Value<'_>>),
        action_id: &str,
        details: HashMap<&str, &str>,
        flags: u32,
        cancellation_id: &str,
    ) -> zbus::Result<(bool, bool, HashMap<String, String>)>;
}

/// Asks polkit whether the connection `sender` may do `action`, letting
/// its polkit agent ask for a password. Err: polkit could not be asked.
pub async fn polkit_allows(connection: &Connection, sender: &UniqueName<'_>, action: &str) -> Result<bool, String> {
    let authority = PolkitAuthorityProxy::builder(connection)
        .cache_properties(CacheProperties::No)
        .build()
        .await
        .map_err(|e| e.to_string())?;
    let subject = ("system-bus-name", HashMap::from([("name", Value::from(sender.as_str()))]));
    let (authorized, challenge, _) = authority
        .check_authorization(&subject, action, HashMap::new(), POLKIT_ALLOW_USER_INTERACTION, "")
        .await
        .map_err(|e| format!("polkit ({POLKIT}) cannot be asked: {e}"))?;
    if !authorized && challenge {
        tracing::debug!(action, "polkit wants a challenge the caller's agent did not answer");
    }
    Ok(authorized)
}
