//! fidoseal's D-Bus API. The interfaces are documented, method by method,
//! in the introspection files under `dbus/interfaces/`; this crate holds the
//! names, the error type and the zbus proxies that the daemon, the agent and
//! `fidosealctl` share, so no name is typed twice.

use zbus::proxy;
use zbus::zvariant::{ObjectPath, OwnedValue, Value};

/// fidoseald's well-known name on the system bus.
pub const BUS_NAME: &str = "org.fidoseal.Fidoseal1";
/// The object serving AgentManager1 and Manager1.
pub const OBJECT_PATH: &str = "/org/fidoseal/Fidoseal1";
pub const AGENT_MANAGER_INTERFACE: &str = "org.fidoseal.AgentManager1";
pub const MANAGER_INTERFACE: &str = "org.fidoseal.Manager1";
pub const AGENT_INTERFACE: &str = "org.fidoseal.Agent1";
/// Where fidoseal-agent serves Agent1 on its own connection.
pub const DEFAULT_AGENT_PATH: &str = "/org/fidoseal/Agent";
/// The polkit action guarding Manager1.Reset.
pub const POLKIT_ACTION_RESET: &str = "org.fidoseal.reset";

/// Keys of the `details` dictionary passed to every Agent1 request.
pub mod details {
    /// s: relying party ID, or "" for device actions.
    pub const RP_ID: &str = "rp_id";
    /// s: "register" | "sign-in" | "confirm-existing" | "select-key" | "reset" | "manage" |
    /// "delete-passkey" (Manager1.DeletePasskey: verification to delete the passkey of `rp_id`).
    pub const ACTION: &str = "action";
    /// s: the account name, if known.
    pub const USER: &str = "user";
    /// s: the administrator's message from policy.
    pub const MESSAGE: &str = "message";
    /// u: how long the daemon waits for the answer, in milliseconds.
    pub const TIMEOUT_MS: &str = "timeout_ms";
}

/// Verification methods named in RequestVerification.
pub mod method {
    pub const FINGERPRINT: &str = "fingerprint";
    pub const PIN: &str = "pin";
    pub const PASSWORD: &str = "password";
}

/// The errors of the fidoseal interfaces (`org.fidoseal.Error.*`).
#[derive(Debug, Clone, PartialEq, zbus::DBusError)]
#[zbus(prefix = "org.fidoseal.Error")]
pub enum Error {
    #[zbus(error)]
    ZBus(zbus::Error),
    /// The caller may not do this (wrong user, no polkit authorization).
    NotPermitted(String),
    /// RegisterAgent from the device's user, but not from an active logind
    /// session now (another user at the seat, a locked-out session): it may
    /// succeed once the session is active again.
    NotActive(String),
    /// Another connection holds the agent of this session.
    AlreadyExists(String),
    DoesNotExist(String),
    /// The user said no.
    Rejected(String),
    /// The request was closed, or cancelled by the daemon.
    Canceled(String),
    /// Asked again too soon (Manager1.Replug): the message says when to try again.
    RateLimited(String),
    Failed(String),
}

/// A details dictionary as sent on the bus.
pub type Details = std::collections::HashMap<String, OwnedValue>;

/// Builds a details dictionary entry.
pub fn detail<'a>(value: impl Into<Value<'a>>) -> OwnedValue {
    // Values built from strings and integers never hold file descriptors,
    // the only thing that makes this conversion fail.
    OwnedValue::try_from(value.into()).unwrap_or_else(|_| OwnedValue::from(0u32))
}

#[proxy(
    interface = "org.fidoseal.AgentManager1",
    default_service = "org.fidoseal.Fidoseal1",
    default_path = "/org/fidoseal/Fidoseal1"
)]
pub trait AgentManager1 {
    fn register_agent(&self, agent: &ObjectPath<'_>) -> zbus::Result<()>;
    fn unregister_agent(&self, agent: &ObjectPath<'_>) -> zbus::Result<()>;
    fn cancel_request(&self, request: u64) -> zbus::Result<()>;
}

#[proxy(interface = "org.fidoseal.Agent1")]
pub trait Agent1 {
    fn request_presence(&self, request: u64, details: Details) -> zbus::Result<()>;
    fn request_verification(&self, request: u64, details: Details, methods: &[&str]) -> zbus::Result<(String, String)>;
    fn select_credential(&self, request: u64, details: Details, accounts: &[&str]) -> zbus::Result<u32>;
    fn cancel(&self, request: u64) -> zbus::Result<()>;
    fn show_failure(&self, request: u64, message: &str, retries_left: u32) -> zbus::Result<()>;
}

#[proxy(
    interface = "org.fidoseal.Manager1",
    default_service = "org.fidoseal.Fidoseal1",
    default_path = "/org/fidoseal/Fidoseal1"
)]
pub trait Manager1 {
    fn status(&self) -> zbus::Result<Details>;
    fn list_passkeys(&self) -> zbus::Result<Vec<(String, String, String, String)>>;
    fn show_passkey(&self, credential_id: &str) -> zbus::Result<Details>;
    fn delete_passkey(&self, credential_id: &str) -> zbus::Result<()>;
    fn reset(&self) -> zbus::Result<()>;
    fn list_devices(&self) -> zbus::Result<Vec<Details>>;
    fn replug(&self) -> zbus::Result<()>;
    fn allow_boot_change(&self) -> zbus::Result<()>;
    fn approve_boot_state(&self, recovery_key: &str) -> zbus::Result<Details>;
}
