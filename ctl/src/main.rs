//! `fidosealctl`: the administrator's tool. For now, policy:
//!
//! ```text
//! fidosealctl policy check [--dir DIR]...
//! fidosealctl policy explain --rp ID [--u2f] [--user U] [--group G]... [--operation OP] [--discoverable]
//!                            [--dir DIR]...
//! ```
//!
//! Without `--dir`, the standard directories are read
//! (`/usr/share/fidoseal/policy.d`, then `/etc/fidoseal/policy.d`); with
//! `--dir`, exactly the directories given, in the order given.

use std::path::PathBuf;
use std::process::ExitCode;

use fidoseal_policy::{
    is_u2f_application, resolve_principal, Action, Explanation, Operation, Policy, Principal, Request, DEFAULT_DIRS,
};

const USAGE: &str = "\
usage: fidosealctl policy check [--dir DIR]...
       fidosealctl policy explain --rp ID [--user USER] [--group GROUP]...
                                  [--operation make-credential|get-assertion]
                                  [--discoverable] [--u2f] [--dir DIR]...

  check     read every policy file and report each problem as file:line: key: message
            (exit 1 if there is any)
  explain   show what the policy decides for a request: the rule and file:line
            that decide, and the other rules that matched and why they lost

  --dir DIR       read DIR instead of the standard directories (repeatable, in order;
                  default: /usr/share/fidoseal/policy.d then /etc/fidoseal/policy.d)
  --rp ID         the relying party ID, as a browser or libfido2 sends it
  --user USER     the device's user; their groups come from the system (NSS)
  --group GROUP   add a group to the user's (repeatable), e.g. for a user not on this machine
  --operation OP  make-credential or get-assertion (default: get-assertion)
  --discoverable  a discoverable credential (passkey) is made or looked up
  --u2f           a U2F (CTAP1) request: --rp is its application parameter, the
                  SHA-256 of the app ID in 64 hex digits (only U2F is matched by hash)
";

fn main() -> ExitCode {
    let args: Vec<String> = match std::env::args_os().skip(1).map(|a| a.into_string()).collect() {
        Ok(args) => args,
        Err(arg) => return usage_error(&format!("argument {} is not UTF-8", arg.to_string_lossy())),
    };
    match args.first().map(String::as_str) {
        Some("--help" | "-h" | "help") => {
            print!("{USAGE}");
            ExitCode::SUCCESS
        }
        Some("--version") => {
            println!("fidosealctl {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        Some("policy") => match args.get(1).map(String::as_str) {
            Some("check") => match CheckArgs::parse(&args[2..]) {
                Ok(a) => check(&a),
                Err(e) => usage_error(&e),
            },
            Some("explain") => match ExplainArgs::parse(&args[2..]) {
                Ok(a) => explain(&a),
                Err(e) => usage_error(&e),
            },
            Some(other) => usage_error(&format!("unknown policy command {other:?}")),
            None => usage_error("policy needs a command: check or explain"),
        },
        Some(other) => usage_error(&format!("unknown command {other:?}")),
        None => usage_error("no command"),
    }
}

fn usage_error(message: &str) -> ExitCode {
    eprintln!("fidosealctl: {message}");
    eprint!("{USAGE}");
    ExitCode::from(2)
}

struct CheckArgs {
    dirs: Vec<PathBuf>,
}

impl CheckArgs {
    fn parse(args: &[String]) -> Result<Self, String> {
        let mut dirs = Vec::new();
        let mut it = args.iter();
        while let Some(arg) = it.next() {
            match arg.as_str() {
                "--dir" => dirs.push(PathBuf::from(value(&mut it, "--dir")?)),
                other => return Err(format!("unknown argument {other:?}")),
            }
        }
        Ok(Self { dirs: or_default_dirs(dirs) })
    }
}

struct ExplainArgs {
    dirs: Vec<PathBuf>,
    rp: String,
    user: Option<String>,
    groups: Vec<String>,
    operation: Operation,
    discoverable: bool,
    /// A CTAP1/U2F request: `rp` is the application parameter in hex.
    u2f: bool,
}

impl ExplainArgs {
    fn parse(args: &[String]) -> Result<Self, String> {
        let mut dirs = Vec::new();
        let mut rp = None;
        let mut user = None;
        let mut groups = Vec::new();
        let mut operation = Operation::GetAssertion;
        let mut discoverable = false;
        let mut u2f = false;
        let mut it = args.iter();
        while let Some(arg) = it.next() {
            match arg.as_str() {
                "--dir" => dirs.push(PathBuf::from(value(&mut it, "--dir")?)),
                "--rp" => rp = Some(value(&mut it, "--rp")?.to_string()),
                "--user" => user = Some(value(&mut it, "--user")?.to_string()),
                "--group" => groups.push(value(&mut it, "--group")?.to_string()),
                "--operation" => {
                    operation = match value(&mut it, "--operation")? {
                        "make-credential" => Operation::MakeCredential,
                        "get-assertion" => Operation::GetAssertion,
                        other => return Err(format!("--operation is make-credential or get-assertion, not {other:?}")),
                    }
                }
                "--discoverable" => discoverable = true,
                "--u2f" => u2f = true,
                other => return Err(format!("unknown argument {other:?}")),
            }
        }
        let rp = rp.ok_or("explain needs --rp ID")?;
        if !groups.is_empty() && user.is_none() {
            return Err("--group needs --user: rules with users or groups never match a device without a user".into());
        }
        if u2f && !is_u2f_application(&rp.to_ascii_lowercase()) {
            return Err("--u2f needs --rp to be a U2F application parameter: 64 hex digits".into());
        }
        Ok(Self { dirs: or_default_dirs(dirs), rp, user, groups, operation, discoverable, u2f })
    }
}

fn value<'a>(it: &mut std::slice::Iter<'a, String>, flag: &str) -> Result<&'a str, String> {
    it.next().map(String::as_str).ok_or_else(|| format!("{flag} needs a value"))
}

fn or_default_dirs(dirs: Vec<PathBuf>) -> Vec<PathBuf> {
    if dirs.is_empty() {
        DEFAULT_DIRS.iter().map(PathBuf::from).collect()
    } else {
        dirs
    }
}

/// Loads the policy, or prints every problem and returns the exit code.
fn load(dirs: &[PathBuf]) -> Result<Policy, ExitCode> {
    let aaguid = fidoseal_ctap::authenticator::FIDOSEAL_AAGUID;
    Policy::load_dirs(dirs).and_then(|p| p.check_authenticator_aaguid(&aaguid).map(|()| p)).map_err(|error| {
        for diagnostic in &error.diagnostics {
            eprintln!("{diagnostic}");
        }
        let n = error.diagnostics.len();
        eprintln!("policy is invalid: {n} problem{}", if n == 1 { "" } else { "s" });
        ExitCode::FAILURE
    })
}

fn check(args: &CheckArgs) -> ExitCode {
    let policy = match load(&args.dirs) {
        Ok(p) => p,
        Err(code) => return code,
    };
    let files = policy.files().len();
    let rules = policy.rules().len();
    println!(
        "policy OK: {files} file{}, {rules} rule{}",
        if files == 1 { "" } else { "s" },
        if rules == 1 { "" } else { "s" }
    );
    for (dir, exists) in policy.dirs() {
        let n = policy.files().iter().filter(|f| f.parent() == Some(dir.as_path())).count();
        if *exists {
            println!("  {}: {n} file{}", dir.display(), if n == 1 { "" } else { "s" });
        } else {
            println!("  {}: does not exist (no files)", dir.display());
        }
    }
    let default = policy.default_rule();
    println!("default action: {} ({})", default.action, default.id);
    if let Some(ea) = policy.enterprise_attestation() {
        let rp_ids: Vec<&str> = ea.rp_ids().iter().map(|r| &**r).collect();
        println!(
            "enterprise attestation: for {}; key {}; {} certificate{} (checked against the key)",
            rp_ids.join(", "),
            ea.key_path().display(),
            ea.certificates().len(),
            if ea.certificates().len() == 1 { "" } else { "s" }
        );
    }
    ExitCode::SUCCESS
}

fn explain(args: &ExplainArgs) -> ExitCode {
    let policy = match load(&args.dirs) {
        Ok(p) => p,
        Err(code) => return code,
    };
    let principal = match &args.user {
        None => Principal::default(),
        Some(user) => {
            let mut principal = resolve_principal(user).unwrap_or_else(|e| {
                eprintln!("fidosealctl: warning: {e}: only its name and the --group options are matched");
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
    let request = Request { rp_id: &args.rp, operation: args.operation, principal: &principal, ctap1: args.u2f };
    let explanation = policy.explain(&request);
    print!("{}", render(&policy, &explanation, args, &principal));
    ExitCode::SUCCESS
}

fn render(policy: &Policy, e: &Explanation<'_>, args: &ExplainArgs, principal: &Principal) -> String {
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
        args.operation.name(),
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
