//! `fidosealctl policy check|explain`: the policy files as the daemon
//! reads them, without the daemon.

use std::io::Write;
use std::path::PathBuf;

use fidoseal_policy::{
    is_u2f_application, resolve_principal, Action, Explanation, Operation, Policy, Principal, Request, DEFAULT_DIRS,
};

use crate::cli::{OperationArg, PolicyCheckArgs, PolicyExplainArgs};
use crate::CtlError;

fn or_default_dirs(dirs: &[PathBuf]) -> Vec<PathBuf> {
    if dirs.is_empty() {
        DEFAULT_DIRS.iter().map(PathBuf::from).collect()
    } else {
        dirs.to_vec()
    }
}

/// Loads the policy, or prints every problem and fails.
fn load(dirs: &[PathBuf], err: &mut dyn Write) -> Result<Policy, CtlError> {
    let aaguid = fidoseal_ctap::authenticator::FIDOSEAL_AAGUID;
    Policy::load_dirs(dirs).and_then(|p| p.check_authenticator_aaguid(&aaguid).map(|()| p)).map_err(|error| {
        for diagnostic in &error.diagnostics {
            let _ = writeln!(err, "{diagnostic}");
        }
        let n = error.diagnostics.len();
        CtlError::Reported(format!("policy is invalid: {n} problem{}", if n == 1 { "" } else { "s" }))
    })
}

pub fn check(args: &PolicyCheckArgs, out: &mut dyn Write, err: &mut dyn Write) -> Result<(), CtlError> {
    let policy = load(&or_default_dirs(&args.dirs), err)?;
    let files = policy.files().len();
    let rules = policy.rules().len();
    writeln!(
        out,
        "policy OK: {files} file{}, {rules} rule{}",
        if files == 1 { "" } else { "s" },
        if rules == 1 { "" } else { "s" }
    )?;
    for (dir, exists) in policy.dirs() {
        let n = policy.files().iter().filter(|f| f.parent() == Some(dir.as_path())).count();
        if *exists {
            writeln!(out, "  {}: {n} file{}", dir.display(), if n == 1 { "" } else { "s" })?;
        } else {
            writeln!(out, "  {}: does not exist (no files)", dir.display())?;
        }
    }
    let default = policy.default_rule();
    writeln!(out, "default action: {} ({})", default.action, default.id)?;
    if let Some(ea) = policy.enterprise_attestation() {
        let rp_ids: Vec<&str> = ea.rp_ids().iter().map(|r| &**r).collect();
        writeln!(
            out,
            "enterprise attestation: for {}; key {}; {} certificate{} (checked against the key)",
            rp_ids.join(", "),
            ea.key_path().display(),
            ea.certificates().len(),
            if ea.certificates().len() == 1 { "" } else { "s" }
        )?;
    }
    Ok(())
}

pub fn explain(args: &PolicyExplainArgs, out: &mut dyn Write, err: &mut dyn Write) -> Result<(), CtlError> {
    if args.u2f && !is_u2f_application(&args.rp.to_ascii_lowercase()) {
        return Err(CtlError::Usage("--u2f needs --rp to be a U2F application parameter: 64 hex digits".into()));
    }
    let policy = load(&or_default_dirs(&args.dirs), err)?;
    let principal = match &args.user {
        None => Principal::default(),
        Some(user) => {
            let mut principal = resolve_principal(user).unwrap_or_else(|e| {
                let _ = writeln!(err, "fidosealctl: warning: {e}: only its name and the --group options are matched");
                Principal::user(user.clone(), Vec::<String>::new())
            });
            for group in &args.groups {
                if !principal.groups.contains(group) {
                    principal.groups.push(group.clone());
                }
            }
            principal
        }
    };
    let operation = match args.operation {
        OperationArg::MakeCredential => Operation::MakeCredential,
        OperationArg::GetAssertion => Operation::GetAssertion,
    };
    let request = Request { rp_id: &args.rp, operation, principal: &principal, ctap1: args.u2f };
    let explanation = policy.explain(&request);
    write!(out, "{}", render(&policy, &explanation, args, operation, &principal))?;
    Ok(())
}

fn render(
    policy: &Policy,
    e: &Explanation<'_>,
    args: &PolicyExplainArgs,
    operation: Operation,
    principal: &Principal,
) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let d = &e.decision;
    let s = d.settings;
    let _ = writeln!(
        out,
        "rp ID:       {}{}{}",
        e.rp_id,
        if e.rp_id != args.rp { format!(" (given as {:?})", args.rp) } else { String::new() },
        if args.u2f { " (a U2F application parameter: SHA-256 of the app ID)" } else { "" }
    );
    let _ = match &principal.user {
        None => writeln!(out, "user:        none (rules with users or groups do not match)"),
        Some(user) => writeln!(out, "user:        {user} (groups: {})", principal.groups.join(", ")),
    };
    let _ = writeln!(
        out,
        "operation:   {}{}",
        operation.name(),
        if args.discoverable { ", discoverable credential" } else { "" }
    );
    let _ = writeln!(out, "decision:    {}", d.action);
    match d.rule {
        Some(rule) => {
            let pattern = e.matches.first().map(|m| m.pattern.to_string()).unwrap_or_default();
            let _ = writeln!(out, "rule:        {} (rp pattern {pattern}{})", d.rule_id, who(rule));
        }
        None if d.rule_id == fidoseal_policy::U2F_UNATTRIBUTABLE => {
            let _ = writeln!(out, "rule:        {}", d.rule_id);
        }
        None if d.rule_id == fidoseal_policy::BUILT_IN_DEFAULT => {
            let _ = writeln!(out, "rule:        built-in default: no rule matched and no file sets [default] action");
        }
        None => {
            let _ = writeln!(out, "rule:        the default action, set at {} (no rule matched)", d.rule_id);
        }
    }
    if d.action == Action::Allow {
        let mut requires = Vec::new();
        if s.require_user_verification {
            requires.push("user verification".to_string());
        }
        if !s.allow_discoverable {
            requires.push("no discoverable credentials".to_string());
        }
        if s.min_cred_protect > 1 {
            requires.push(format!("credProtect at least {}", s.min_cred_protect));
        }
        if let Some(a) = s.attestation {
            requires.push(format!("attestation {a}"));
        }
        if let Some(t) = s.prompt_timeout {
            requires.push(format!("prompt timeout {} s", t.as_secs()));
        }
        let _ = writeln!(out, "settings:    {}", if requires.is_empty() { "none".into() } else { requires.join("; ") });
        if let Some(message) = &s.message {
            let _ = writeln!(out, "message:     {message:?}");
        }
        if let Some((n, origin)) = policy.min_pin_length(principal) {
            let _ = writeln!(out, "PIN length:  at least {n} for this device ({origin})");
        }
    }
    let u2f = args.u2f;
    let outcome = if u2f && d.action == Action::Deny {
        "refused: U2F status conditions-not-satisfied, before any key is used or anyone is asked"
    } else if u2f && s.require_user_verification {
        "refused: U2F status conditions-not-satisfied (user verification is required; U2F cannot verify the user)"
    } else if d.action == Action::Deny {
        "refused: CTAP2_ERR_OPERATION_DENIED, before any key is used or anyone is asked"
    } else if args.discoverable && !s.allow_discoverable {
        "refused: discoverable credentials are not allowed here (CTAP2_ERR_OPERATION_DENIED)"
    } else if s.require_user_verification {
        "allowed with user verification only (without it: CTAP2_ERR_PUAT_REQUIRED; the client asks for the PIN)"
    } else {
        "allowed"
    };
    let _ = writeln!(out, "outcome:     {outcome}");
    let losers = &e.matches[e.matches.len().min(1)..];
    if losers.is_empty() {
        let _ = writeln!(out, "other rules: none matched");
    } else {
        let _ = writeln!(out, "other rules that matched and lost:");
        for m in losers {
            let reason = m.lost.map(|r| r.to_string()).unwrap_or_default();
            let _ =
                writeln!(out, "  {}  {} (rp pattern {}{}): {reason}", m.rule.id, m.rule.action, m.pattern, who(m.rule));
        }
    }
    out
}

fn who(rule: &fidoseal_policy::Rule) -> String {
    let mut parts = Vec::new();
    if !rule.users.is_empty() {
        parts.push(format!("users {}", rule.users.join(", ")));
    }
    if !rule.groups.is_empty() {
        parts.push(format!("groups {}", rule.groups.join(", ")));
    }
    if !rule.operations.is_empty() {
        let ops: Vec<&str> = rule.operations.iter().map(|o| o.name()).collect();
        parts.push(format!("operations {}", ops.join(", ")));
    }
    if parts.is_empty() {
        String::new()
    } else {
        format!(", {}", parts.join(", "))
    }
}
