//! Per-user mode follows logind: which users have an admitted session.
//!
//! logind (org.freedesktop.login1) lists sessions with their user, seat,
//! Type, Class, Remote and State. A session admits its user when it is of
//! class "user" (not a greeter or lock screen), not closing, and of a kind
//! `[device] sessions` names (config.rs, [`SessionKind`]). The daemon
//! re-reads the list whenever logind signals anything (SessionNew,
//! SessionRemoved, UserNew, UserRemoved, PropertiesChanged) and every few
//! seconds besides (a session's State turning "closing" is not always
//! signalled), so sessions that existed before the daemon started count,
//! and a restart brings every device back.

use std::collections::BTreeMap;
use std::time::Duration;

use futures_lite::StreamExt;
use zbus::proxy::CacheProperties;
use zbus::zvariant::OwnedObjectPath;
use zbus::Connection;

use crate::config::SessionKind;

pub const LOGIND: &str = "org.freedesktop.login1";
/// How often the session list is read without a signal.
pub const RESCAN: Duration = Duration::from_secs(5);
/// Signals come in bursts (a login is a dozen): one read after the burst.
const SETTLE: Duration = Duration::from_millis(200);

/// ListSessions' row: id, uid, user name, seat (empty: none), object path.
type SessionRow = (String, u32, String, String, OwnedObjectPath);

#[zbus::proxy(
    interface = "org.freedesktop.login1.Manager",
    default_service = "org.freedesktop.login1",
    default_path = "/org/freedesktop/login1"
)]
trait Manager {
    fn list_sessions(&self) -> zbus::Result<Vec<SessionRow>>;
}

#[zbus::proxy(interface = "org.freedesktop.login1.Session", default_service = "org.freedesktop.login1")]
trait Session {
    #[zbus(property)]
    fn remote(&self) -> zbus::Result<bool>;
    #[zbus(property, name = "Type")]
    fn kind(&self) -> zbus::Result<String>;
    #[zbus(property)]
    fn class(&self) -> zbus::Result<String>;
    #[zbus(property)]
    fn state(&self) -> zbus::Result<String>;
}

/// A logind session, as far as admission goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionInfo {
    pub id: String,
    pub uid: u32,
    pub user: String,
    /// Empty: no seat.
    pub seat: String,
    pub remote: bool,
    /// logind's Type: x11, wayland, mir, tty, unspecified, web.
    pub kind: String,
    /// logind's Class: user, greeter, lock-screen, background, …
    pub class: String,
    /// online, active, closing.
    pub state: String,
}

impl SessionInfo {
    /// The kind of `[device] sessions` this session is, if it may count at all.
    pub fn admission_kind(&self) -> Option<SessionKind> {
        // "user-early" (systemd 256+) is a user session started before the
        // user's full runtime; greeters, lock screens, background and
        // manager sessions never own a key.
        if !matches!(self.class.as_str(), "user" | "user-early") || self.state == "closing" {
            return None;
        }
        if self.remote {
            return Some(SessionKind::Remote);
        }
        if self.seat.is_empty() {
            return Some(SessionKind::Unseated);
        }
        match self.kind.as_str() {
            "x11" | "wayland" | "mir" => Some(SessionKind::Graphical),
            "tty" | "unspecified" => Some(SessionKind::Text),
            _ => None,
        }
    }
}

/// A user with admitted sessions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdmittedUser {
    pub user: String,
    pub sessions: Vec<String>,
}

/// The users `sessions` admit under `kinds`, by uid.
pub fn admitted(sessions: &[SessionInfo], kinds: &[SessionKind]) -> BTreeMap<u32, AdmittedUser> {
    let mut users: BTreeMap<u32, AdmittedUser> = BTreeMap::new();
    for session in sessions {
        if session.admission_kind().is_some_and(|kind| kinds.contains(&kind)) {
            let entry = users
                .entry(session.uid)
                .or_insert_with(|| AdmittedUser { user: session.user.clone(), sessions: Vec::new() });
            entry.sessions.push(session.id.clone());
        }
    }
    for user in users.values_mut() {
        user.sessions.sort();
    }
    users
}

/// Every session logind knows. A session that vanishes while it is read
/// is left out.
pub async fn list_sessions(connection: &Connection) -> Result<Vec<SessionInfo>, String> {
    let manager = ManagerProxy::builder(connection)
        .cache_properties(CacheProperties::No)
        .build()
        .await
        .map_err(|e| e.to_string())?;
    let listed = manager.list_sessions().await.map_err(|e| format!("logind ListSessions: {e}"))?;
    let mut sessions = Vec::with_capacity(listed.len());
    for (id, uid, user, seat, path) in listed {
        let read = async {
            let session =
                SessionProxy::builder(connection).path(path)?.cache_properties(CacheProperties::No).build().await?;
            Ok::<_, zbus::Error>((
                session.remote().await?,
                session.kind().await?,
                session.class().await?,
                session.state().await?,
            ))
        };
        match read.await {
            Ok((remote, kind, class, state)) => {
                sessions.push(SessionInfo { id, uid, user, seat, remote, kind, class, state })
            }
            Err(e) => tracing::debug!(session = id, error = %e, "session gone while reading it"),
        }
    }
    Ok(sessions)
}

/// logind's signals, as "something may have changed" events.
pub struct Changes {
    stream: zbus::MessageStream,
}

impl Changes {
    pub async fn follow(connection: &Connection) -> Result<Self, String> {
        let rule = zbus::MatchRule::builder()
            .msg_type(zbus::message::Type::Signal)
            .sender(LOGIND)
            .map(|b| b.build())
            .map_err(|e| format!("cannot build the logind match rule: {e}"))?;
        let stream = zbus::MessageStream::for_match_rule(rule, connection, None)
            .await
            .map_err(|e| format!("cannot follow logind's signals: {e}"))?;
        Ok(Self { stream })
    }

    /// Completes after a burst of signals, or after [`RESCAN`] without one.
    /// Err: the connection ended.
    pub async fn next(&mut self) -> Result<(), String> {
        match tokio::time::timeout(RESCAN, self.stream.next()).await {
            Err(_) => return Ok(()),
            Ok(None) => return Err("the system bus connection closed".into()),
            Ok(Some(Err(e))) => return Err(format!("the system bus connection failed: {e}")),
            Ok(Some(Ok(_))) => {}
        }
        // Drain the rest of the burst.
        while let Ok(Some(message)) = tokio::time::timeout(SETTLE, self.stream.next()).await {
            if let Err(e) = message {
                return Err(format!("the system bus connection failed: {e}"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(id: &str, uid: u32, seat: &str, remote: bool, kind: &str, class: &str, state: &str) -> SessionInfo {
        SessionInfo {
            id: id.into(),
            uid,
            user: format!("user{uid}"),
            seat: seat.into(),
            remote,
            kind: kind.into(),
            class: class.into(),
            state: state.into(),
        }
    }

    #[test]
    fn kinds_of_sessions() {
        let kind = |s: SessionInfo| s.admission_kind();
        assert_eq!(kind(session("1", 1, "seat0", false, "wayland", "user", "active")), Some(SessionKind::Graphical));
        assert_eq!(kind(session("1", 1, "seat0", false, "x11", "user", "online")), Some(SessionKind::Graphical));
        assert_eq!(kind(session("1", 1, "seat0", false, "tty", "user", "active")), Some(SessionKind::Text));
        assert_eq!(kind(session("1", 1, "", false, "unspecified", "user", "active")), Some(SessionKind::Unseated));
        assert_eq!(kind(session("1", 1, "", true, "tty", "user", "active")), Some(SessionKind::Remote));
        assert_eq!(kind(session("1", 1, "seat0", true, "x11", "user", "active")), Some(SessionKind::Remote));
        assert_eq!(kind(session("1", 1, "seat0", false, "wayland", "greeter", "active")), None);
        assert_eq!(kind(session("1", 1, "seat0", false, "x11", "lock-screen", "active")), None);
        assert_eq!(kind(session("1", 1, "", false, "unspecified", "background", "active")), None);
        assert_eq!(
            kind(session("1", 1, "seat0", false, "tty", "user", "closing")),
            None,
            "logged out, processes linger"
        );
        assert_eq!(kind(session("1", 1, "seat0", false, "web", "user", "active")), None);
    }

    #[test]
    fn admitted_users_by_configured_kinds() {
        let sessions = [
            session("2", 1001, "seat0", false, "wayland", "user", "active"),
            session("c3", 1001, "", true, "tty", "user", "online"),
            session("5", 1002, "", true, "tty", "user", "online"),
            session("6", 1003, "seat0", false, "tty", "user", "closing"),
            session("7", 1004, "seat0", false, "x11", "greeter", "online"),
            session("8", 1005, "", false, "unspecified", "user", "online"),
            session("1", 1001, "seat0", false, "tty", "user", "online"),
        ];
        let default = admitted(&sessions, &[SessionKind::Graphical, SessionKind::Text]);
        assert_eq!(default.keys().copied().collect::<Vec<_>>(), [1001]);
        assert_eq!(default[&1001], AdmittedUser { user: "user1001".into(), sessions: vec!["1".into(), "2".into()] });
        let with_remote = admitted(&sessions, &[SessionKind::Graphical, SessionKind::Text, SessionKind::Remote]);
        assert_eq!(with_remote.keys().copied().collect::<Vec<_>>(), [1001, 1002]);
        assert_eq!(with_remote[&1001].sessions, ["1", "2", "c3"]);
        let unseated = admitted(&sessions, &[SessionKind::Unseated]);
        assert_eq!(unseated.keys().copied().collect::<Vec<_>>(), [1005]);
        assert!(admitted(&[], &[SessionKind::Text]).is_empty());
    }
}
