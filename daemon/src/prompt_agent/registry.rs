//! The agent that answers prompts: at most one, registered by a connection
//! of the device's user (dbus_service/agent_manager.rs checks who may), and
//! forgotten when it unregisters or its connection leaves the bus.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock};

use tokio::sync::watch;
use zbus::names::OwnedUniqueName;
use zbus::zvariant::OwnedObjectPath;
use zbus::Connection;

/// A registered agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegisteredAgent {
    /// The agent's connection (unique name): every call goes there, so
    /// only that connection can answer.
    pub owner: OwnedUniqueName,
    /// Where it serves org.fidoseal.Agent1.
    pub path: OwnedObjectPath,
    pub uid: u32,
    pub pid: u32,
    /// Changes with every registration, so a prompt notices a replaced agent.
    pub generation: u64,
}

/// Why a registration was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum RegisterError {
    /// Another connection holds the agent.
    AlreadyExists(OwnedUniqueName),
}

/// The daemon's bus connection and the runtime that drives it, once the
/// D-Bus service runs.
#[derive(Clone)]
pub struct Bus {
    pub connection: Connection,
    pub runtime: tokio::runtime::Handle,
}

/// Shared by the D-Bus service (registers) and the prompt (asks).
pub struct AgentRegistry {
    agent: Mutex<Option<RegisteredAgent>>,
    /// The current registration's generation (0: none); prompts wait on it.
    changes: watch::Sender<u64>,
    generations: AtomicU64,
    requests: AtomicU64,
    /// The last request id the registered agent stopped (CancelRequest: the
    /// user closed a dialog the daemon still works behind, the fingerprint
    /// prompt). Ids only grow, so "this one" is an equality test.
    stopped_by_user: watch::Sender<u64>,
    bus: OnceLock<Bus>,
}

impl Default for AgentRegistry {
    fn default() -> Self {
        Self::new()
    }
}

impl AgentRegistry {
    pub fn new() -> Self {
        Self {
            agent: Mutex::new(None),
            changes: watch::Sender::new(0),
            generations: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            stopped_by_user: watch::Sender::new(0),
            bus: OnceLock::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Option<RegisteredAgent>> {
        self.agent.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Called once by the D-Bus service when it owns its name.
    pub fn attach(&self, bus: Bus) {
        if self.bus.set(bus).is_err() {
            tracing::warn!("the prompt registry was attached to a bus twice; keeping the first");
        }
    }

    pub fn bus(&self) -> Option<&Bus> {
        self.bus.get()
    }

    pub fn current(&self) -> Option<RegisteredAgent> {
        self.lock().clone()
    }

    /// A fresh request id for Agent1 calls.
    pub fn next_request_id(&self) -> u64 {
        self.requests.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Registers `owner`'s agent at `path`. The same connection may
    /// register again (a new path replaces the old); another connection
    /// is refused while the first is registered.
    pub fn register(
        &self,
        owner: OwnedUniqueName,
        path: OwnedObjectPath,
        uid: u32,
        pid: u32,
    ) -> Result<RegisteredAgent, RegisterError> {
        let mut agent = self.lock();
        if let Some(existing) = agent.as_ref().filter(|a| a.owner != owner) {
            return Err(RegisterError::AlreadyExists(existing.owner.clone()));
        }
        let generation = self.generations.fetch_add(1, Ordering::Relaxed) + 1;
        let registered = RegisteredAgent { owner, path, uid, pid, generation };
        *agent = Some(registered.clone());
        self.changes.send_replace(generation);
        Ok(registered)
    }

    /// UnregisterAgent: only the registering connection, with its path.
    pub fn unregister(&self, owner: &str, path: &str) -> bool {
        let mut agent = self.lock();
        if agent.as_ref().is_some_and(|a| a.owner.as_str() == owner && a.path.as_str() == path) {
            *agent = None;
            self.changes.send_replace(0);
            return true;
        }
        false
    }

    /// The connection `owner` left the bus: forget its agent, if it had one.
    pub fn connection_closed(&self, owner: &str) -> Option<RegisteredAgent> {
        let mut agent = self.lock();
        if agent.as_ref().is_some_and(|a| a.owner.as_str() == owner) {
            self.changes.send_replace(0);
            return agent.take();
        }
        None
    }

    /// The current generation (0: no agent) and its changes.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// CancelRequest from `owner`: only the registered agent's connection
    /// may stop a request, and only one the daemon has asked (an id it gave
    /// out). False (and nothing stopped) otherwise.
    pub fn stop_by_user(&self, owner: &str, request: u64) -> bool {
        let agent = self.lock();
        let asked = request != 0 && request <= self.requests.load(Ordering::Relaxed);
        let from_the_agent = agent.as_ref().is_some_and(|a| a.owner.as_str() == owner);
        if !(asked && from_the_agent) {
            return false;
        }
        self.stopped_by_user.send_replace(request);
        true
    }

    /// The last request the agent stopped, and its changes.
    pub fn subscribe_stopped(&self) -> watch::Receiver<u64> {
        self.stopped_by_user.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> OwnedUniqueName {
        OwnedUniqueName::try_from(s).unwrap()
    }

    fn path(s: &str) -> OwnedObjectPath {
        OwnedObjectPath::try_from(s).unwrap()
    }

    #[test]
    fn one_agent_at_a_time() {
        let registry = AgentRegistry::new();
        assert_eq!(registry.current(), None);
        let first = registry.register(name(":1.5"), path("/a"), 1000, 42).unwrap();
        assert_eq!(
            registry.register(name(":1.6"), path("/b"), 1000, 43),
            Err(RegisterError::AlreadyExists(name(":1.5")))
        );
        assert_eq!(registry.current(), Some(first.clone()));
        // The same connection re-registers at another path.
        let again = registry.register(name(":1.5"), path("/c"), 1000, 42).unwrap();
        assert!(again.generation > first.generation);
        assert!(!registry.unregister(":1.6", "/c"));
        assert!(!registry.unregister(":1.5", "/a"));
        assert!(registry.unregister(":1.5", "/c"));
        assert_eq!(registry.current(), None);
    }

    #[test]
    fn a_closed_connection_drops_its_agent_only() {
        let registry = AgentRegistry::new();
        let mut changes = registry.subscribe();
        registry.register(name(":1.5"), path("/a"), 1000, 42).unwrap();
        assert!(changes.has_changed().unwrap());
        assert_ne!(*changes.borrow_and_update(), 0);
        assert_eq!(registry.connection_closed(":1.9"), None);
        assert!(registry.current().is_some());
        assert!(registry.connection_closed(":1.5").is_some());
        assert_eq!(*changes.borrow_and_update(), 0);
        assert_eq!(registry.current(), None);
        assert_ne!(registry.next_request_id(), registry.next_request_id());
    }
}
