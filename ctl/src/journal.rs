//! `fidosealctl log`: the audit trail from the journal. fidoseald writes
//! each audit event as one entry with a fixed MESSAGE_ID per kind and
//! FIDOSEAL_* fields (daemon/src/audit_log.rs, systemd/fidoseal.catalog);
//! this runs `journalctl -o json` with matches on those fields and prints
//! one line (or one JSON object) per entry.

use std::io::Write;
use std::process::Command;

use fidoseal_ctap::audit::AuditKind;
use serde_json::{json, Map, Value as Json};

use crate::cli::{DecisionArg, LogArgs};
use crate::CtlError;

/// The journalctl arguments for `args`. journalctl ORs matches of the same
/// field and ANDs different fields: (MESSAGE_ID=a or b ...) and FIDOSEAL_RP=x ...
pub fn journalctl_args(args: &LogArgs) -> Result<Vec<String>, CtlError> {
    let mut out = vec!["--no-pager".to_string(), "--output=json".to_string(), "--quiet".to_string()];
    if let Some(dir) = &args.directory {
        out.push(format!("--directory={}", dir.display()));
    }
    if let Some(since) = &args.since {
        out.push(format!("--since={since}"));
    }
    if let Some(until) = &args.until {
        out.push(format!("--until={until}"));
    }
    if let Some(n) = args.lines {
        out.push(format!("--lines={n}"));
    }
    let kinds: Vec<AuditKind> = if args.events.is_empty() {
        AuditKind::ALL.to_vec()
    } else {
        args.events
            .iter()
            .map(|name| {
                AuditKind::from_name(name).ok_or_else(|| {
                    let known: Vec<&str> = AuditKind::ALL.iter().map(|k| k.name()).collect();
                    CtlError::Usage(format!("--event {name:?} is not one of {}", known.join(", ")))
                })
            })
            .collect::<Result<_, _>>()?
    };
    for kind in kinds {
        out.push(format!("MESSAGE_ID={}", kind.message_id()));
    }
    for (field, value) in [("FIDOSEAL_RP", args.rp.as_deref()), ("FIDOSEAL_USER", args.user.as_deref())] {
        if let Some(value) = value {
            if value.is_empty() || value.contains('\n') {
                return Err(CtlError::Usage(format!("{field} cannot be matched against {value:?}")));
            }
            let value =
                if field == "FIDOSEAL_RP" { value.trim_end_matches('.').to_ascii_lowercase() } else { value.into() };
            out.push(format!("{field}={value}"));
        }
    }
    if let Some(decision) = args.decision {
        out.push(format!(
            "FIDOSEAL_DECISION={}",
            match decision {
                DecisionArg::Allow => "allow",
                DecisionArg::Deny => "deny",
            }
        ));
    }
    Ok(out)
}

/// The fields of one journal entry (`journalctl -o json` line) that `log`
/// prints, or None for a line that is not one of ours.
pub fn entry(line: &str) -> Option<Map<String, Json>> {
    let raw: Map<String, Json> = serde_json::from_str(line).ok()?;
    let text = |key: &str| raw.get(key).and_then(Json::as_str).map(str::to_string);
    let message_id = text("MESSAGE_ID")?;
    let kind = AuditKind::ALL.into_iter().find(|k| k.message_id() == message_id)?;
    let mut entry = Map::new();
    if let Some(time) = text("__REALTIME_TIMESTAMP").and_then(|t| t.parse::<u64>().ok()) {
        entry.insert("time".into(), json!(utc_timestamp(time)));
    }
    entry.insert("event".into(), json!(kind.name()));
    for (key, field) in [
        ("decision", "FIDOSEAL_DECISION"),
        ("operation", "FIDOSEAL_OPERATION"),
        ("rp", "FIDOSEAL_RP"),
        ("user", "FIDOSEAL_USER"),
        ("credential", "FIDOSEAL_CREDENTIAL"),
        ("rule", "FIDOSEAL_RULE"),
        ("reason", "FIDOSEAL_REASON"),
        ("user_verified", "FIDOSEAL_USER_VERIFIED"),
        ("host", "_HOSTNAME"),
        ("pid", "_PID"),
    ] {
        if let Some(value) = text(field) {
            entry.insert(key.into(), json!(value));
        }
    }
    entry.insert("message_id".into(), json!(message_id));
    Some(entry)
}

/// One line for people: time, decision, event, then what there is.
pub fn render(entry: &Map<String, Json>) -> String {
    let get = |key: &str| entry.get(key).and_then(Json::as_str).unwrap_or("");
    let mut line = format!("{:<20}  {:<5}  {:<18}", get("time"), get("decision"), get("event"));
    if !get("operation").is_empty() {
        line.push_str(&format!(" {}", get("operation")));
    }
    for key in ["rp", "user", "credential", "rule"] {
        if !get(key).is_empty() {
            line.push_str(&format!(" {key}={}", get(key)));
        }
    }
    if get("user_verified") == "true" {
        line.push_str(" uv");
    }
    if !get("reason").is_empty() {
        line.push_str(&format!(" ({})", get("reason")));
    }
    line.trim_end().to_string()
}

/// Microseconds since the epoch as `YYYY-MM-DDTHH:MM:SSZ`. Written here
/// rather than pulling a date crate for one format: days to a civil date
/// by Howard Hinnant's `civil_from_days`.
pub fn utc_timestamp(micros: u64) -> String {
    let seconds = micros / 1_000_000;
    let days = (seconds / 86_400) as i64;
    let rem = seconds % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

pub fn log(args: &LogArgs, out: &mut dyn Write) -> Result<(), CtlError> {
    let journalctl_args = journalctl_args(args)?;
    let output = Command::new("journalctl").args(&journalctl_args).output().map_err(|e| {
        CtlError::Journal(format!("cannot run journalctl: {e} (the audit trail is in the systemd journal)"))
    })?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        return Err(CtlError::Journal(format!(
            "journalctl failed ({}): {} (reading the system journal needs root or the systemd-journal group)",
            output.status,
            stderr.trim()
        )));
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    let mut printed = 0;
    for entry in stdout.lines().filter_map(entry) {
        if args.json {
            writeln!(out, "{}", Json::Object(entry))?;
        } else {
            writeln!(out, "{}", render(&entry))?;
        }
        printed += 1;
    }
    if printed == 0 && !args.json {
        // A user outside systemd-journal sees only their own entries: say so.
        let hint = if unsafe_is_root() { "" } else { " (not root: only the entries you may read were searched)" };
        writeln!(out, "no audit entries{hint}")?;
    }
    Ok(())
}

fn unsafe_is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn parse(args: &[&str]) -> LogArgs {
        let cli = crate::cli::Cli::try_parse_from([&["fidosealctl", "log"], args].concat()).unwrap();
        match cli.command {
            crate::cli::Command::Log(args) => args,
            _ => unreachable!(),
        }
    }

    #[test]
    fn filters_become_journal_matches() {
        let args =
            journalctl_args(&parse(&["--rp", "Login.Example.COM.", "--decision", "deny", "--since", "-1h"])).unwrap();
        assert!(args.contains(&"--output=json".to_string()));
        assert!(args.contains(&"--since=-1h".to_string()));
        assert!(args.contains(&"FIDOSEAL_RP=login.example.com".to_string()), "{args:?}");
        assert!(args.contains(&"FIDOSEAL_DECISION=deny".to_string()));
        let ids = args.iter().filter(|a| a.starts_with("MESSAGE_ID=")).count();
        assert_eq!(ids, AuditKind::ALL.len(), "every kind by default");

        let args = journalctl_args(&parse(&["--event", "assertion", "--event", "reset", "--user", "alice"])).unwrap();
        let ids: Vec<&String> = args.iter().filter(|a| a.starts_with("MESSAGE_ID=")).collect();
        assert_eq!(ids.len(), 2);
        assert!(args.contains(&format!("MESSAGE_ID={}", AuditKind::Reset.message_id())));
        assert!(args.contains(&"FIDOSEAL_USER=alice".to_string()));

        let e = journalctl_args(&parse(&["--event", "everything"])).unwrap_err();
        assert_eq!(e.exit_code(), 2);
        assert!(e.to_string().contains("policy-decision"), "{e}");
        assert!(crate::cli::Cli::try_parse_from(["fidosealctl", "log", "--decision", "maybe"]).is_err());
    }

    #[test]
    fn journal_entries_are_read_and_printed() {
        let line = json!({
            "__REALTIME_TIMESTAMP": "1765000000123456",
            "MESSAGE_ID": AuditKind::PolicyDecision.message_id(),
            "MESSAGE": "policy-decision: deny",
            "FIDOSEAL_EVENT": "policy-decision",
            "FIDOSEAL_DECISION": "deny",
            "FIDOSEAL_RP": "evil.example",
            "FIDOSEAL_USER": "alice",
            "FIDOSEAL_RULE": "/etc/fidoseal/policy.d/10.toml:3",
            "FIDOSEAL_OPERATION": "make-credential",
            "FIDOSEAL_REASON": "refused by the policy",
            "FIDOSEAL_USER_VERIFIED": "false",
            "_PID": "42",
            "BINARY": [1, 2, 3],
        })
        .to_string();
        let entry = entry(&line).expect("one of ours");
        assert_eq!(entry["time"], "2025-12-06T05:46:40Z");
        assert_eq!(entry["rp"], "evil.example");
        assert_eq!(
            render(&entry),
            "2025-12-06T05:46:40Z  deny   policy-decision    make-credential rp=evil.example user=alice \
             rule=/etc/fidoseal/policy.d/10.toml:3 (refused by the policy)"
        );
        let other = json!({"MESSAGE_ID": "00000000000000000000000000000000", "MESSAGE": "x"}).to_string();
        assert!(super::entry(&other).is_none(), "not an audit entry");
        assert!(super::entry("not json").is_none());
    }

    #[test]
    fn utc_timestamps() {
        assert_eq!(utc_timestamp(0), "1970-01-01T00:00:00Z");
        assert_eq!(utc_timestamp(951_782_400_000_000), "2000-02-29T00:00:00Z");
        assert_eq!(utc_timestamp(1_798_761_599_000_000), "2026-12-31T23:59:59Z");
    }
}
