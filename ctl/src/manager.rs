//! The commands that ask fidoseald: `status`, `passkeys list|show|delete`,
//! `reset`, through org.fidoseal.Manager1 on the system bus (docs/dbus.md).
//! fidoseald decides who may do what (the device's user, root, polkit for
//! a reset; the user's verification for a deletion); this side only asks
//! and says clearly why something was refused.

use std::collections::BTreeMap;
use std::future::Future;
use std::io::{BufRead, IsTerminal, Write};
use std::path::Path;

use fidoseal_dbus::{Details, Manager1Proxy};
use serde_json::{json, Value as Json};
use zbus::zvariant::{OwnedValue, Value};

use crate::cli::{DeleteArgs, DevicesArgs, ListArgs, ResetArgs, ShowArgs, StatusArgs};
use crate::CtlError;

/// Runs `f` with a Manager1 proxy on the system bus (`bus`: another bus's
/// address instead, for tests). One current-thread runtime per command.
pub fn with_manager<F, Fut>(bus: Option<&str>, f: F) -> Result<(), CtlError>
where
    F: FnOnce(Manager1Proxy<'static>) -> Fut,
    Fut: Future<Output = Result<(), CtlError>>,
{
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CtlError::Daemon(format!("cannot start a runtime: {e}")))?;
    runtime.block_on(async {
        let builder = match bus {
            Some(address) => zbus::connection::Builder::address(address),
            None => Ok(zbus::connection::Builder::system().map_err(|e| CtlError::NoDaemon(e.to_string()))?),
        };
        let connection = builder
            .map_err(|e| CtlError::NoDaemon(e.to_string()))?
            .build()
            .await
            .map_err(|e| CtlError::NoDaemon(e.to_string()))?;
        let manager = Manager1Proxy::new(&connection).await.map_err(from_dbus)?;
        f(manager).await
    })
}

/// A D-Bus error as the user should read it.
pub fn from_dbus(error: zbus::Error) -> CtlError {
    let zbus::Error::MethodError(name, message, _) = &error else {
        return match error {
            zbus::Error::InputOutput(e) => CtlError::NoDaemon(e.to_string()),
            zbus::Error::Address(e) => CtlError::NoDaemon(e),
            other => CtlError::Daemon(other.to_string()),
        };
    };
    let message = message.clone().unwrap_or_default();
    match name.as_str() {
        "org.fidoseal.Error.NotPermitted" | "org.freedesktop.DBus.Error.AccessDenied" => {
            CtlError::NotPermitted(message)
        }
        "org.fidoseal.Error.DoesNotExist" => CtlError::NoSuchPasskey(message),
        // The user said no, the request was cancelled, or the verification
        // failed (whatever name fidoseald gives a failed verification).
        "org.fidoseal.Error.Rejected" | "org.fidoseal.Error.Canceled" => CtlError::NotVerified(message),
        name if name.contains("Verif") => CtlError::NotVerified(message),
        "org.freedesktop.DBus.Error.ServiceUnknown" | "org.freedesktop.DBus.Error.NameHasNoOwner" => {
            CtlError::NoDaemon(message)
        }
        "org.freedesktop.DBus.Error.UnknownMethod" => {
            CtlError::Daemon(format!("{message} (is fidoseald older than fidosealctl?)"))
        }
        _ => CtlError::Daemon(if message.is_empty() { name.to_string() } else { message }),
    }
}

/// A details value as JSON (the types Manager1 uses: b, u, t, i, s, ay).
pub fn json_of(value: &OwnedValue) -> Json {
    match &**value {
        Value::Bool(b) => json!(b),
        Value::U8(n) => json!(n),
        Value::U16(n) => json!(n),
        Value::U32(n) => json!(n),
        Value::U64(n) => json!(n),
        Value::I16(n) => json!(n),
        Value::I32(n) => json!(n),
        Value::I64(n) => json!(n),
        Value::F64(n) => json!(n),
        Value::Str(s) => json!(s.as_str()),
        Value::Array(array) => {
            let bytes: Option<Vec<u8>> = array.iter().map(|v| u8::try_from(v).ok()).collect();
            match bytes {
                Some(bytes) if array.element_signature() == "y" => json!(hex::encode(&bytes)),
                _ => Json::Array(
                    array.iter().filter_map(|v| OwnedValue::try_from(v).ok()).map(|v| json_of(&v)).collect(),
                ),
            }
        }
        other => json!(other.to_string()),
    }
}

fn details_json(details: &Details) -> BTreeMap<String, Json> {
    details.iter().map(|(k, v)| (k.clone(), json_of(v))).collect()
}

/// The audit trail's name of a credential (fidoseal_ctap::audit::credential_tag),
/// so that `fidosealctl log` entries can be matched to `passkeys list`.
fn tag_of(id_hex: &str) -> Option<String> {
    hex::decode(id_hex).ok().filter(|b| !b.is_empty()).map(|b| fidoseal_ctap::audit::credential_tag(&b))
}

/// Human labels for Status keys, in the order printed; other keys follow by name.
const STATUS_LABELS: &[(&str, &str)] = &[
    ("version", "fidoseald version"),
    ("start", "start"),
    ("keystore", "key store"),
    ("tpm_manufacturer", "TPM manufacturer"),
    ("tpm_pcrs", "TPM bound to PCRs"),
    ("tpm_boot_state_approved", "boot state approved"),
    ("tpm_boot_state", "boot state"),
    ("tpm_update_window_open", "boot update window"),
    ("tpm_recovery_key_warning", "WARNING"),
    ("device", "device node"),
    ("prompt", "prompt mode"),
    ("agent_registered", "agent registered"),
    ("pin_set", "PIN set"),
    ("pin_retries", "PIN retries left"),
    ("uv_configured", "built-in verification"),
    ("always_uv", "alwaysUv"),
    ("passkeys", "passkeys"),
    ("remaining_passkeys", "room for passkeys"),
    ("policy_generation", "policy generation"),
    ("policy_files", "policy files"),
];

pub fn render_status(status: &BTreeMap<String, Json>) -> String {
    let text = |v: &Json| match v {
        Json::Bool(true) => "yes".to_string(),
        Json::Bool(false) => "no".to_string(),
        Json::String(s) => s.clone(),
        other => other.to_string(),
    };
    let mut out = String::new();
    for (key, label) in STATUS_LABELS {
        if let Some(v) = status.get(*key) {
            out.push_str(&format!("{:<23}{}\n", format!("{label}:"), text(v)));
        }
    }
    for (key, v) in status {
        if !STATUS_LABELS.iter().any(|(k, _)| k == key) {
            out.push_str(&format!("{:<23}{}\n", format!("{key}:"), text(v)));
        }
    }
    out
}

/// fidoseal's hidraw nodes, found through sysfs: the uhid device fidoseald
/// creates has the physical path "fidoseal" (HID_PHYS in its uevent).
pub fn device_nodes(sysfs_hidraw: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(sysfs_hidraw) else {
        return Vec::new();
    };
    let mut nodes: Vec<String> = entries
        .filter_map(Result::ok)
        .filter(|entry| {
            std::fs::read_to_string(entry.path().join("device/uevent")).is_ok_and(|uevent| {
                uevent.lines().any(|l| l == "HID_PHYS=fidoseal" || l.starts_with("HID_PHYS=fidoseal/"))
            })
        })
        .map(|entry| format!("/dev/{}", entry.file_name().to_string_lossy()))
        .collect();
    nodes.sort();
    nodes
}

pub async fn status(manager: Manager1Proxy<'static>, args: &StatusArgs, out: &mut dyn Write) -> Result<(), CtlError> {
    let mut status = details_json(&manager.status().await.map_err(from_dbus)?);
    let nodes = device_nodes(Path::new("/sys/class/hidraw"));
    status.entry("device".into()).or_insert_with(|| {
        if nodes.is_empty() {
            json!("none found")
        } else {
            json!(nodes.join(", "))
        }
    });
    if args.json {
        writeln!(out, "{}", serde_json::to_string_pretty(&status).unwrap_or_default())?;
    } else {
        write!(out, "{}", render_status(&status))?;
    }
    Ok(())
}

pub async fn devices(manager: Manager1Proxy<'static>, args: &DevicesArgs, out: &mut dyn Write) -> Result<(), CtlError> {
    let devices: Vec<BTreeMap<String, Json>> =
        manager.list_devices().await.map_err(from_dbus)?.iter().map(details_json).collect();
    if args.json {
        writeln!(out, "{}", serde_json::to_string_pretty(&devices).unwrap_or_default())?;
    } else {
        write!(out, "{}", render_devices(&devices))?;
    }
    Ok(())
}

/// ListDevices as a table: user, uid, hidraw node, sessions, agent.
pub fn render_devices(devices: &[BTreeMap<String, Json>]) -> String {
    if devices.is_empty() {
        return "no devices (per-user mode: nobody with a session yet)\n".into();
    }
    let text = |device: &BTreeMap<String, Json>, key: &str| match device.get(key) {
        Some(Json::String(s)) if !s.is_empty() => s.clone(),
        Some(Json::Bool(b)) => if *b { "yes" } else { "no" }.to_string(),
        Some(Json::Array(items)) if !items.is_empty() => {
            items.iter().map(|i| i.as_str().map_or_else(|| i.to_string(), str::to_string)).collect::<Vec<_>>().join(",")
        }
        Some(Json::Number(n)) if n.as_u64() != Some(u64::from(u32::MAX)) => n.to_string(),
        _ => "-".to_string(),
    };
    let rows: Vec<[String; 5]> = devices
        .iter()
        .map(|d| [text(d, "user"), text(d, "uid"), text(d, "node"), text(d, "sessions"), text(d, "agent_registered")])
        .collect();
    render_table(["USER", "UID", "NODE", "SESSIONS", "AGENT"], rows)
}

/// A table for the terminal: the header, then one line per row, each
/// column as wide as its widest cell, two spaces apart.
fn render_table<const N: usize>(header: [&str; N], rows: Vec<[String; N]>) -> String {
    let mut widths = header.map(str::len);
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.len());
        }
    }
    let mut out = String::new();
    for row in std::iter::once(header.map(str::to_string)).chain(rows) {
        let line: Vec<String> = row.iter().zip(&widths).map(|(cell, width)| format!("{cell:<width$}")).collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// One row of ListPasskeys.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PasskeyRow {
    pub id: String,
    pub rp_id: String,
    pub user_name: String,
    pub user_display_name: String,
    /// FIDOSEAL_CREDENTIAL= in the audit trail.
    pub audit_tag: Option<String>,
}

pub fn rows(list: Vec<(String, String, String, String)>, rp: Option<&str>) -> Vec<PasskeyRow> {
    let rp = rp.map(|r| r.trim_end_matches('.').to_ascii_lowercase());
    list.into_iter()
        .filter(|(_, rp_id, _, _)| rp.as_deref().is_none_or(|r| rp_id.eq_ignore_ascii_case(r)))
        .map(|(id, rp_id, user_name, user_display_name)| PasskeyRow {
            audit_tag: tag_of(&id),
            id,
            rp_id,
            user_name,
            user_display_name,
        })
        .collect()
}

pub fn render_list(rows: &[PasskeyRow]) -> String {
    if rows.is_empty() {
        return "no passkeys\n".into();
    }
    let cells = rows.iter().map(|row| {
        let user = if row.user_name.is_empty() { "-" } else { &row.user_name };
        // The audit tag's column is as wide as a tag (16 hex digits) even
        // when no row has one.
        [
            row.rp_id.clone(),
            user.to_string(),
            format!("{:<16}", row.audit_tag.as_deref().unwrap_or("-")),
            row.id.clone(),
        ]
    });
    render_table(["RP", "USER", "AUDIT TAG", "ID"], cells.collect())
}

pub async fn list(manager: Manager1Proxy<'static>, args: &ListArgs, out: &mut dyn Write) -> Result<(), CtlError> {
    let rows = rows(manager.list_passkeys().await.map_err(from_dbus)?, args.rp.as_deref());
    if args.json {
        writeln!(out, "{}", serde_json::to_string_pretty(&rows).unwrap_or_default())?;
    } else {
        write!(out, "{}", render_list(&rows))?;
    }
    Ok(())
}

/// A credential ID as typed: hex, any case, spaces and colons allowed.
fn normalize_id(id: &str) -> Result<String, CtlError> {
    let id: String = id.chars().filter(|c| !c.is_whitespace() && *c != ':').collect::<String>().to_ascii_lowercase();
    if id.is_empty() || !id.len().is_multiple_of(2) || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(CtlError::Usage(format!(
            "{id:?} is not a credential ID: hex digits, as `fidosealctl passkeys list` prints them"
        )));
    }
    Ok(id)
}

pub async fn show(manager: Manager1Proxy<'static>, args: &ShowArgs, out: &mut dyn Write) -> Result<(), CtlError> {
    let id = normalize_id(&args.id)?;
    let mut passkey = details_json(&manager.show_passkey(&id).await.map_err(from_dbus)?);
    passkey.insert("id".into(), json!(id));
    if let Some(tag) = tag_of(&id) {
        passkey.insert("audit_tag".into(), json!(tag));
    }
    if args.json {
        writeln!(out, "{}", serde_json::to_string_pretty(&passkey).unwrap_or_default())?;
        return Ok(());
    }
    for (key, value) in &passkey {
        let value = match value {
            Json::String(s) if s.is_empty() => "-".to_string(),
            Json::String(s) => s.clone(),
            Json::Bool(b) => if *b { "yes" } else { "no" }.to_string(),
            other => other.to_string(),
        };
        writeln!(out, "{:<19}{value}", format!("{key}:"))?;
    }
    Ok(())
}

pub async fn delete(manager: Manager1Proxy<'static>, args: &DeleteArgs, out: &mut dyn Write) -> Result<(), CtlError> {
    let id = normalize_id(&args.id)?;
    // What is deleted, said before the daemon asks for verification.
    let shown = details_json(&manager.show_passkey(&id).await.map_err(from_dbus)?);
    let rp = shown.get("rp_id").and_then(Json::as_str).unwrap_or("").to_string();
    let user = shown.get("user_name").and_then(Json::as_str).unwrap_or("").to_string();
    if !args.json {
        writeln!(out, "deleting the passkey for {rp} ({user}): confirm with your verification when asked")?;
        out.flush()?;
    }
    manager.delete_passkey(&id).await.map_err(from_dbus)?;
    if args.json {
        writeln!(out, "{}", json!({ "deleted": id, "rp_id": rp, "user_name": user }))?;
    } else {
        writeln!(out, "deleted: {rp} ({user}) will no longer accept it; remove it from your account there too")?;
    }
    Ok(())
}

/// `reset` asks for the word "reset" on a terminal; elsewhere it needs --yes.
pub fn confirm_reset(args: &ResetArgs, prompt: &mut dyn Write) -> Result<(), CtlError> {
    if args.yes {
        return Ok(());
    }
    let stdin = std::io::stdin();
    if !stdin.is_terminal() {
        return Err(CtlError::Usage(
            "reset erases every credential and the PIN: add --yes when not on a terminal".into(),
        ));
    }
    write!(
        prompt,
        "This erases every passkey and credential of this machine's key and its PIN; no site will accept it again.\n\
         Type \"reset\" to go on: "
    )?;
    prompt.flush()?;
    let mut answer = String::new();
    stdin.lock().read_line(&mut answer)?;
    confirm_answer(&answer)
}

pub fn confirm_answer(answer: &str) -> Result<(), CtlError> {
    if answer.trim() == "reset" {
        Ok(())
    } else {
        Err(CtlError::NotConfirmed)
    }
}

pub async fn reset(manager: Manager1Proxy<'static>, out: &mut dyn Write) -> Result<(), CtlError> {
    manager.reset().await.map_err(|e| match from_dbus(e) {
        CtlError::NotPermitted(m) => CtlError::NotPermitted(format!(
            "{m} (a reset needs polkit's org.fidoseal.reset: an administrator, or root)"
        )),
        other => other,
    })?;
    writeln!(out, "reset: every credential and the PIN are gone")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn devices_render_as_a_table_with_their_sessions() {
        let device = |user: &str, uid: u32, node: &str, sessions: &[&str], agent: bool| {
            BTreeMap::from([
                ("user".to_string(), json!(user)),
                ("uid".to_string(), json!(uid)),
                ("node".to_string(), json!(node)),
                ("uniq".to_string(), json!(format!("fidoseal-uid-{uid}"))),
                ("sessions".to_string(), json!(sessions)),
                ("agent_registered".to_string(), json!(agent)),
            ])
        };
        let table = render_devices(&[
            device("alice", 1000, "/dev/hidraw3", &["2", "5"], true),
            device("bob", 1001, "", &[], false),
        ]);
        assert_eq!(
            table,
            "USER   UID   NODE          SESSIONS  AGENT\n\
             alice  1000  /dev/hidraw3  2,5       yes\n\
             bob    1001  -             -         no\n"
        );
        // Single mode's device has no uid (u32::MAX on the bus).
        let single = render_devices(&[device("", u32::MAX, "/dev/hidraw0", &[], false)]);
        assert!(single.ends_with("\n-     -    /dev/hidraw0  -         no\n"), "{single}");
        assert!(render_devices(&[]).starts_with("no devices"));
    }

    use super::*;

    #[test]
    fn list_filters_by_rp_and_tags_each_credential() {
        let list = vec![
            ("0102".into(), "github.com".into(), "alice".into(), "Alice".into()),
            ("0a0b".into(), "example.com".into(), "".into(), "".into()),
        ];
        let all = rows(list.clone(), None);
        assert_eq!(all.len(), 2);
        assert_eq!(all[0].audit_tag.as_deref(), Some(fidoseal_ctap::audit::credential_tag(&[1, 2]).as_str()));
        let only = rows(list, Some("GitHub.com."));
        assert_eq!(only.len(), 1);
        assert_eq!(only[0].rp_id, "github.com");
        let text = render_list(&all);
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("RP "), "{text}");
        assert!(lines[1].starts_with("github.com   alice") && lines[1].ends_with("0102"), "{text}");
        assert!(lines[2].contains("  -  "), "an empty user name shows as -: {text}");
        assert_eq!(render_list(&[]), "no passkeys\n");
        let json: Json = serde_json::from_str(&serde_json::to_string(&all).unwrap()).unwrap();
        assert_eq!(json[1]["rp_id"], "example.com");
        assert_eq!(json[0]["id"], "0102");
    }

    #[test]
    fn credential_ids_are_hex_or_a_usage_error() {
        assert_eq!(normalize_id("AB:cd 01").unwrap(), "abcd01");
        for bad in ["", "abc", "xyz0", "--json"] {
            let e = normalize_id(bad).unwrap_err();
            assert_eq!(e.exit_code(), 2, "{bad:?}");
        }
    }

    #[test]
    fn status_prints_known_keys_in_order_then_the_rest() {
        let mut status = BTreeMap::new();
        status.insert("pin_set".to_string(), json!(true));
        status.insert("keystore".to_string(), json!("tpm"));
        status.insert("new_thing".to_string(), json!(7));
        let text = render_status(&status);
        assert_eq!(text, "key store:             tpm\nPIN set:               yes\nnew_thing:             7\n");
    }

    #[test]
    fn daemon_errors_read_as_what_to_do() {
        let error = |name: &str| {
            zbus::Error::MethodError(
                zbus::names::OwnedErrorName::try_from(name.to_string()).unwrap(),
                Some("because".into()),
                zbus::message::Message::method_call("/", "Ping").unwrap().build(&()).unwrap(),
            )
        };
        assert!(matches!(from_dbus(error("org.fidoseal.Error.NotPermitted")), CtlError::NotPermitted(_)));
        assert!(matches!(from_dbus(error("org.fidoseal.Error.DoesNotExist")), CtlError::NoSuchPasskey(_)));
        assert!(matches!(from_dbus(error("org.fidoseal.Error.Rejected")), CtlError::NotVerified(_)));
        assert!(matches!(from_dbus(error("org.fidoseal.Error.NotVerified")), CtlError::NotVerified(_)));
        assert!(matches!(from_dbus(error("org.freedesktop.DBus.Error.ServiceUnknown")), CtlError::NoDaemon(_)));
        let other = from_dbus(error("org.fidoseal.Error.Failed"));
        assert_eq!(other.to_string(), "fidoseald: because");
        assert_eq!(other.exit_code(), 1);
        let not_verified = from_dbus(error("org.fidoseal.Error.Rejected")).to_string();
        assert!(not_verified.contains("verification through fidoseal-agent"), "{not_verified}");
    }

    #[test]
    fn device_nodes_are_found_by_their_physical_path() {
        let temp_dir = tempfile::tempdir().unwrap();
        let dir = temp_dir.path();
        for (node, phys) in
            [("hidraw0", "usb-0000:00:14.0-1/input0"), ("hidraw3", "fidoseal"), ("hidraw1", "fidoseal/0")]
        {
            std::fs::create_dir_all(dir.join(node).join("device")).unwrap();
            let uevent = format!("HID_ID=0003:00001209:00000001\nHID_PHYS={phys}\n");
            std::fs::write(dir.join(node).join("device/uevent"), uevent).unwrap();
        }
        assert_eq!(device_nodes(dir), ["/dev/hidraw1", "/dev/hidraw3"]);
        assert!(device_nodes(&dir.join("missing")).is_empty());
    }

    #[test]
    fn reset_needs_the_word() {
        assert!(confirm_answer("reset\n").is_ok());
        assert!(confirm_answer("yes\n").is_err());
        assert!(confirm_answer("").is_err());
    }
}
