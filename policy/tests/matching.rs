//! Matching and precedence: table-driven cases, then property-style checks
//! of the index against a plain linear scan.

mod common;

use common::Rng;
use fidoseal_policy::{Action, LossReason, Operation, Policy, Principal, Request};

const POLICY: &str = r#"
[default]
action = "deny"

[[rule]]
rp = ["*.example.com"]
action = "allow"
require_user_verification = true

[[rule]]
rp = ["login.example.com"]
action = "allow"
min_cred_protect = 2

[[rule]]
rp = ["*.dev.example.com"]
action = "deny"

[[rule]]
rp = ["bücher.example", "ssh:", "XN--E1AFMKFD.com."]
action = "allow"

[[rule]]
rp = ["conflict.example"]
action = "deny"

[[rule]]
rp = ["conflict.example"]
action = "allow"

[[rule]]
rp = ["*.example.com"]
groups = ["contractors"]
action = "deny"

[[rule]]
rp = ["*.example.com"]
users = ["alice"]
action = "allow"
message = "Hello alice"

[[rule]]
rp = ["legacy.example.org"]
operations = ["get-assertion"]
action = "allow"

[[rule]]
rp = ["*"]
users = ["guest"]
action = "deny"

[[rule]]
rp = ["same.example"]
action = "allow"
prompt_timeout = 10

[[rule]]
rp = ["same.example"]
action = "allow"
prompt_timeout = 20
"#;

const FILE: &str = "/etc/fidoseal/policy.d/50-test.toml";

fn policy() -> Policy {
    Policy::from_sources(&[(FILE, POLICY)]).unwrap_or_else(|e| panic!("{e}"))
}

fn line_of_rule(n: usize) -> String {
    // The n-th [[rule]] header (1-based) of POLICY.
    let line = POLICY.lines().enumerate().filter(|(_, l)| *l == "[[rule]]").nth(n - 1).map(|(i, _)| i + 1).unwrap();
    format!("{FILE}:{line}")
}

#[test]
fn table_of_requests() {
    let policy = policy();
    let nobody = Principal::default();
    let bob_contractor = Principal::user("bob", ["bob", "contractors"]);
    let alice_contractor = Principal::user("alice", ["alice", "contractors"]);
    let guest = Principal::user("guest", ["guest"]);
    let mc = Operation::MakeCredential;
    let ga = Operation::GetAssertion;
    let default = format!("{FILE}:3");
    // (rp ID as sent, who, operation, action, rule: n-th [[rule]] or 0 for the default)
    let table: &[(&str, &Principal, Operation, Action, usize)] = &[
        ("login.example.com", &nobody, mc, Action::Allow, 2),
        ("LOGIN.Example.COM.", &nobody, mc, Action::Allow, 2),
        ("a.example.com", &nobody, mc, Action::Allow, 1),
        ("A.B.EXAMPLE.COM", &nobody, ga, Action::Allow, 1),
        ("example.com", &nobody, mc, Action::Deny, 0),
        ("evilexample.com", &nobody, mc, Action::Deny, 0),
        ("example.com.evil.org", &nobody, mc, Action::Deny, 0),
        ("x.dev.example.com", &nobody, mc, Action::Deny, 3),
        ("dev.example.com", &nobody, mc, Action::Allow, 1),
        ("bücher.example", &nobody, mc, Action::Allow, 4),
        ("xn--bcher-kva.example", &nobody, mc, Action::Allow, 4),
        ("BÜCHER.example.", &nobody, mc, Action::Allow, 4),
        ("пример.com", &nobody, mc, Action::Allow, 4),
        ("ПРИМЕР.COM.", &nobody, mc, Action::Allow, 4),
        ("ssh:", &nobody, mc, Action::Allow, 4),
        ("SSH:", &nobody, mc, Action::Allow, 4),
        ("conflict.example", &nobody, mc, Action::Deny, 5),
        ("a.example.com", &bob_contractor, mc, Action::Deny, 7),
        ("a.example.com", &alice_contractor, mc, Action::Allow, 8),
        ("login.example.com", &bob_contractor, mc, Action::Allow, 2),
        ("legacy.example.org", &nobody, ga, Action::Allow, 9),
        ("legacy.example.org", &nobody, mc, Action::Deny, 0),
        ("login.example.com", &guest, mc, Action::Allow, 2),
        ("a.example.com", &guest, mc, Action::Allow, 1),
        ("unknown.example.net", &guest, mc, Action::Deny, 10),
        ("same.example", &nobody, mc, Action::Allow, 12),
        ("", &nobody, mc, Action::Deny, 0),
        (".", &nobody, mc, Action::Deny, 0),
    ];
    for &(rp_id, principal, operation, action, rule) in table {
        let d = policy.evaluate(&Request { rp_id, operation, principal, ctap1: false });
        let want_rule = if rule == 0 { default.clone() } else { line_of_rule(rule) };
        assert_eq!((d.action, d.rule_id), (action, want_rule.as_str()), "{rp_id} for {principal:?} {operation:?}");
    }
}

#[test]
fn settings_come_from_the_deciding_rule_over_the_default() {
    let policy = policy();
    let nobody = Principal::default();
    let d = policy.evaluate(&Request {
        rp_id: "login.example.com",
        operation: Operation::MakeCredential,
        principal: &nobody,
        ctap1: false,
    });
    assert_eq!(d.settings.min_cred_protect, 2);
    assert!(!d.settings.require_user_verification, "the exact rule does not inherit the wildcard's UV");
    let d = policy.evaluate(&Request {
        rp_id: "a.example.com",
        operation: Operation::MakeCredential,
        principal: &nobody,
        ctap1: false,
    });
    assert!(d.settings.require_user_verification);
    let alice = Principal::user("alice", ["alice"]);
    let d = policy.evaluate(&Request {
        rp_id: "a.example.com",
        operation: Operation::MakeCredential,
        principal: &alice,
        ctap1: false,
    });
    assert_eq!(d.settings.message.as_deref(), Some("Hello alice"));
    let d = policy.evaluate(&Request {
        rp_id: "same.example",
        operation: Operation::MakeCredential,
        principal: &nobody,
        ctap1: false,
    });
    assert_eq!(d.settings.prompt_timeout, Some(std::time::Duration::from_secs(20)), "the later rule wins");
}

#[test]
fn deny_beats_allow_at_equal_specificity_in_either_order() {
    for (first, second) in [("allow", "deny"), ("deny", "allow")] {
        let text = format!("[[rule]]\nrp = [\"x.example\"]\naction = \"{first}\"\n[[rule]]\nrp = [\"x.example\"]\naction = \"{second}\"\n");
        for split in [false, true] {
            // In one file, or in two files in either order.
            let policy = if split {
                let (a, b) = text.split_at(text.rfind("[[rule]]").unwrap());
                Policy::from_sources(&[("/p/1.toml", a), ("/p/2.toml", b)]).unwrap()
            } else {
                Policy::from_sources(&[("/p/1.toml", text.as_str())]).unwrap()
            };
            let nobody = Principal::default();
            let d = policy.evaluate(&Request {
                rp_id: "x.example",
                operation: Operation::GetAssertion,
                principal: &nobody,
                ctap1: false,
            });
            assert_eq!(d.action, Action::Deny, "{first} then {second}, split {split}");
        }
    }
}

#[test]
fn a_more_specific_allow_beats_a_broader_deny() {
    let policy = Policy::from_sources(&[(
        "/p/a.toml",
        "[[rule]]\nrp = [\"*.example.com\"]\naction = \"deny\"\n[[rule]]\nrp = [\"*.corp.example.com\"]\naction = \"allow\"\n\
         [[rule]]\nrp = [\"*\"]\ngroups = [\"staff\"]\naction = \"allow\"\n",
    )])
    .unwrap();
    let staff = Principal::user("u", ["staff"]);
    let eval = |rp_id| {
        policy
            .evaluate(&Request { rp_id, operation: Operation::MakeCredential, principal: &staff, ctap1: false })
            .action
    };
    assert_eq!(eval("a.corp.example.com"), Action::Allow);
    assert_eq!(eval("a.example.com"), Action::Deny, "rp specificity comes before the principal's");
    assert_eq!(eval("other.org"), Action::Allow);
}

#[test]
fn rules_with_users_or_groups_never_match_a_device_without_a_user() {
    let policy = Policy::from_sources(&[(
        "/p/a.toml",
        "[default]\naction = \"deny\"\n[[rule]]\nrp = [\"*\"]\nusers = [\"root\"]\ngroups = [\"root\"]\naction = \"allow\"\n",
    )])
    .unwrap();
    let nobody = Principal::default();
    let not_a_user = Principal { user: None, groups: vec!["root".into()] };
    for principal in [&nobody, &not_a_user] {
        let d = policy.evaluate(&Request {
            rp_id: "a.example",
            operation: Operation::GetAssertion,
            principal,
            ctap1: false,
        });
        assert_eq!(d.action, Action::Deny);
    }
    let root = Principal::user("root", ["root"]);
    let d = policy.evaluate(&Request {
        rp_id: "a.example",
        operation: Operation::GetAssertion,
        principal: &root,
        ctap1: false,
    });
    assert_eq!(d.action, Action::Allow);
}

#[test]
fn explain_names_the_winner_and_why_each_other_rule_lost() {
    let policy = policy();
    let bob = Principal::user("bob", ["contractors"]);
    let e = policy.explain(&Request {
        rp_id: "Login.Example.com.",
        operation: Operation::MakeCredential,
        principal: &bob,
        ctap1: false,
    });
    assert_eq!(e.rp_id, "login.example.com");
    assert_eq!(e.decision.rule_id, line_of_rule(2));
    let summary: Vec<(String, Option<LossReason>, String)> =
        e.matches.iter().map(|m| (m.rule.id.to_string(), m.lost, m.pattern.to_string())).collect();
    assert_eq!(
        summary,
        vec![
            (line_of_rule(2), None, "login.example.com".to_string()),
            (line_of_rule(7), Some(LossReason::LessSpecific), "*.example.com".to_string()),
            (line_of_rule(1), Some(LossReason::LessSpecific), "*.example.com".to_string()),
        ]
    );
    let nobody = Principal::default();
    let e = policy.explain(&Request {
        rp_id: "conflict.example",
        operation: Operation::MakeCredential,
        principal: &nobody,
        ctap1: false,
    });
    assert_eq!(e.matches[1].lost, Some(LossReason::DenyBeatsAllow));
    let e = policy.explain(&Request {
        rp_id: "same.example",
        operation: Operation::MakeCredential,
        principal: &nobody,
        ctap1: false,
    });
    assert_eq!(e.matches[1].lost, Some(LossReason::EarlierThanWinner));
    let e = policy.explain(&Request {
        rp_id: "nothing.example",
        operation: Operation::MakeCredential,
        principal: &nobody,
        ctap1: false,
    });
    assert!(e.matches.is_empty());
    assert_eq!(e.decision.rule_id, format!("{FILE}:3"));
}

#[test]
fn no_files_allow_everything_by_the_built_in_default() {
    let policy = Policy::empty();
    let nobody = Principal::default();
    let d = policy.evaluate(&Request {
        rp_id: "any.example",
        operation: Operation::MakeCredential,
        principal: &nobody,
        ctap1: false,
    });
    assert_eq!((d.action, d.rule_id), (Action::Allow, fidoseal_policy::BUILT_IN_DEFAULT));
}

#[test]
fn min_pin_length_is_the_strictest_rule_that_applies_to_the_user() {
    let policy = Policy::from_sources(&[(
        "/p/a.toml",
        "[default]\nmin_pin_length = 6\n\
         [[rule]]\nrp = [\"*.bank.example\"]\naction = \"allow\"\nmin_pin_length = 8\n\
         [[rule]]\nrp = [\"*\"]\ngroups = [\"admins\"]\naction = \"allow\"\nmin_pin_length = 10\n",
    )])
    .unwrap();
    assert_eq!(policy.min_pin_length(&Principal::default()), Some((8, "/p/a.toml:3")));
    assert_eq!(policy.min_pin_length(&Principal::user("a", ["admins"])), Some((10, "/p/a.toml:7")));
    let plain = Policy::from_sources(&[("/p/a.toml", "[default]\nmin_pin_length = 6\n")]).unwrap();
    assert_eq!(plain.min_pin_length(&Principal::default()), Some((6, "/p/a.toml:2")));
    assert_eq!(Policy::empty().min_pin_length(&Principal::default()), None);
}

// ---- property-style: the index against a linear scan ----

const LABELS: &[&str] = &["a", "b", "login", "example", "com", "xn--bcher-kva", "corp", "evilexample"];
const USERS: &[&str] = &["alice", "bob", "carol"];
const GROUPS: &[&str] = &["staff", "admins", "contractors"];

fn random_host(rng: &mut Rng, max_labels: usize) -> String {
    let n = 1 + rng.below(max_labels);
    (0..n).map(|_| *rng.pick(LABELS)).collect::<Vec<_>>().join(".")
}

/// A random policy file, and the rules as the oracle sees them.
fn random_policy(rng: &mut Rng, rules: usize) -> (String, Vec<OracleRule>) {
    let mut text = format!("[default]\naction = \"{}\"\n", if rng.chance(50) { "allow" } else { "deny" });
    let mut oracle = Vec::new();
    for _ in 0..rules {
        let mut patterns = Vec::new();
        for _ in 0..1 + rng.below(3) {
            patterns.push(match rng.below(10) {
                0 => "*".to_string(),
                1..=4 => format!("*.{}", random_host(rng, 2)),
                _ => random_host(rng, 3),
            });
        }
        let users: Vec<&str> = if rng.chance(20) { vec![*rng.pick(USERS)] } else { vec![] };
        let groups: Vec<&str> = if rng.chance(20) { vec![*rng.pick(GROUPS)] } else { vec![] };
        let operations: Vec<&str> =
            if rng.chance(20) { vec![*rng.pick(&["make-credential", "get-assertion"])] } else { vec![] };
        let deny = rng.chance(40);
        text.push_str("[[rule]]\n");
        let line = text.lines().count();
        let quoted = |v: &[&str]| v.iter().map(|s| format!("{s:?}")).collect::<Vec<_>>().join(", ");
        let pattern_refs: Vec<&str> = patterns.iter().map(String::as_str).collect();
        text.push_str(&format!("rp = [{}]\n", quoted(&pattern_refs)));
        if !users.is_empty() {
            text.push_str(&format!("users = [{}]\n", quoted(&users)));
        }
        if !groups.is_empty() {
            text.push_str(&format!("groups = [{}]\n", quoted(&groups)));
        }
        if !operations.is_empty() {
            text.push_str(&format!("operations = [{}]\n", quoted(&operations)));
        }
        text.push_str(if deny { "action = \"deny\"\n" } else { "action = \"allow\"\n" });
        oracle.push(OracleRule {
            id: format!("/p/r.toml:{line}"),
            patterns,
            users: users.iter().map(|s| s.to_string()).collect(),
            groups: groups.iter().map(|s| s.to_string()).collect(),
            operations: operations.iter().map(|s| s.to_string()).collect(),
            deny,
        });
    }
    (text, oracle)
}

struct OracleRule {
    id: String,
    patterns: Vec<String>,
    users: Vec<String>,
    groups: Vec<String>,
    operations: Vec<String>,
    deny: bool,
}

/// The rules as the documentation states them, by brute force.
fn oracle(rules: &[OracleRule], rp_id: &str, principal: &Principal, operation: &str) -> Option<String> {
    let rp = rp_id.strip_suffix('.').unwrap_or(rp_id).to_ascii_lowercase();
    let host_like = rp.split('.').all(|l| !l.is_empty());
    let mut best: Option<((u16, u8, u8), bool, usize)> = None;
    for (order, rule) in rules.iter().enumerate() {
        let rp_rank = rule
            .patterns
            .iter()
            .filter_map(|p| {
                if p == "*" {
                    Some(0)
                } else if let Some(suffix) = p.strip_prefix("*.") {
                    (host_like && rp.ends_with(&format!(".{suffix}"))).then(|| suffix.split('.').count() as u16)
                } else {
                    (*p == rp).then_some(u16::MAX)
                }
            })
            .max();
        let Some(rp_rank) = rp_rank else { continue };
        let principal_rank = if rule.users.is_empty() && rule.groups.is_empty() {
            0
        } else if principal.user.as_ref().is_some_and(|u| rule.users.contains(u)) {
            2
        } else if principal.user.is_some() && rule.groups.iter().any(|g| principal.groups.contains(g)) {
            1
        } else {
            continue;
        };
        let op_rank = if rule.operations.is_empty() {
            0
        } else if rule.operations.iter().any(|o| o == operation) {
            1
        } else {
            continue;
        };
        let key = ((rp_rank, principal_rank, op_rank), rule.deny, order);
        if best.is_none_or(|b| key > b) {
            best = Some(key);
        }
    }
    best.map(|(_, _, order)| rules[order].id.clone())
}

fn random_principal(rng: &mut Rng) -> Principal {
    if rng.chance(25) {
        return Principal::default();
    }
    let groups: Vec<&str> = GROUPS.iter().copied().filter(|_| rng.chance(40)).collect();
    Principal::user(*rng.pick(USERS), groups)
}

fn scramble_case(rng: &mut Rng, text: &str) -> String {
    let mut out: String = text.chars().map(|c| if rng.chance(30) { c.to_ascii_uppercase() } else { c }).collect();
    if rng.chance(30) {
        out.push('.');
    }
    out
}

#[test]
fn property_index_agrees_with_a_linear_scan() {
    let mut rng = Rng::new(0x5eed_f1d0);
    for round in 0..200 {
        let count = 1 + rng.below(40);
        let (text, rules) = random_policy(&mut rng, count);
        let policy = Policy::from_sources(&[("/p/r.toml", text.as_str())]).unwrap_or_else(|e| panic!("{e}\n{text}"));
        for _ in 0..100 {
            let host = random_host(&mut rng, 4);
            let rp_id = scramble_case(&mut rng, &host);
            let principal = random_principal(&mut rng);
            let (operation, op_name) = if rng.chance(50) {
                (Operation::MakeCredential, "make-credential")
            } else {
                (Operation::GetAssertion, "get-assertion")
            };
            let request = Request { rp_id: &rp_id, operation, principal: &principal, ctap1: false };
            let decision = policy.evaluate(&request);
            let expected = oracle(&rules, &rp_id, &principal, op_name);
            assert_eq!(
                decision.rule.map(|r| r.id.to_string()),
                expected,
                "round {round}: {rp_id} {principal:?} {op_name}\n{text}"
            );
            // explain agrees with evaluate, and no loser outranks the winner.
            let explanation = policy.explain(&request);
            assert_eq!(explanation.decision.rule_id, decision.rule_id);
            if let Some((winner, losers)) = explanation.matches.split_first() {
                assert!(winner.lost.is_none());
                assert!(losers.iter().all(|l| l.lost.is_some() && l.specificity <= winner.specificity));
            }
        }
    }
}

#[test]
fn property_case_and_trailing_dot_never_change_a_decision() {
    let mut rng = Rng::new(42);
    for _ in 0..50 {
        let (text, _) = random_policy(&mut rng, 30);
        let policy = Policy::from_sources(&[("/p/r.toml", text.as_str())]).unwrap();
        for _ in 0..100 {
            let rp_id = random_host(&mut rng, 4);
            let variant = scramble_case(&mut rng, &rp_id);
            let principal = random_principal(&mut rng);
            let a = policy.evaluate(&Request {
                rp_id: &rp_id,
                operation: Operation::GetAssertion,
                principal: &principal,
                ctap1: false,
            });
            let b = policy.evaluate(&Request {
                rp_id: &variant,
                operation: Operation::GetAssertion,
                principal: &principal,
                ctap1: false,
            });
            assert_eq!(a.rule_id, b.rule_id, "{rp_id} vs {variant}");
        }
    }
}

#[test]
fn property_a_wildcard_matches_only_names_under_its_suffix() {
    let mut rng = Rng::new(7);
    for _ in 0..2000 {
        let suffix = random_host(&mut rng, 2);
        let policy = Policy::from_sources(&[(
            "/p/w.toml",
            format!("[default]\naction = \"deny\"\n[[rule]]\nrp = [\"*.{suffix}\"]\naction = \"allow\"\n"),
        )])
        .unwrap();
        let rp_id = random_host(&mut rng, 4);
        let nobody = Principal::default();
        let allowed = policy
            .evaluate(&Request { rp_id: &rp_id, operation: Operation::GetAssertion, principal: &nobody, ctap1: false })
            .action
            == Action::Allow;
        assert_eq!(allowed, rp_id.ends_with(&format!(".{suffix}")), "*.{suffix} vs {rp_id}");
    }
}

// ---- U2F: the rp is known only by the SHA-256 of the application ID ----

fn sha256_hex(text: &str) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(text.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn u2f_requests_match_exact_rules_by_hash_and_are_refused_where_only_a_wildcard_could_decide() {
    let nobody = Principal::default();
    let eval = |policy: &Policy, rp_id: &str| {
        let d =
            policy.evaluate(&Request { rp_id, operation: Operation::MakeCredential, principal: &nobody, ctap1: true });
        (d.action, d.rule_id.to_string())
    };
    // The enterprise shape: deny by default, an exact IdP and a wildcard.
    let policy = Policy::from_sources(&[(
        "/p/u2f.toml",
        "[default]\naction = \"deny\"\n[[rule]]\nrp = [\"login.example.com\"]\naction = \"allow\"\n\
         [[rule]]\nrp = [\"*.example.com\"]\naction = \"allow\"\n",
    )])
    .unwrap();
    for app_id in ["login.example.com", "https://login.example.com"] {
        assert_eq!(eval(&policy, &sha256_hex(app_id)), (Action::Allow, "/p/u2f.toml:3".into()), "{app_id}");
        assert_eq!(eval(&policy, &sha256_hex(app_id).to_uppercase()).0, Action::Allow, "{app_id}");
    }
    let other = sha256_hex("a.example.com");
    assert_eq!(eval(&policy, &other), (Action::Deny, fidoseal_policy::U2F_UNATTRIBUTABLE.into()));

    // Allow by default with a wildcard deny: a U2F client must not slip past it.
    let policy = Policy::from_sources(&[(
        "/p/u2f.toml",
        "[[rule]]\nrp = [\"*.evil.example\"]\naction = \"deny\"\n[[rule]]\nrp = [\"ok.example\"]\naction = \"allow\"\n",
    )])
    .unwrap();
    assert_eq!(eval(&policy, &sha256_hex("x.evil.example")).0, Action::Deny);
    assert_eq!(eval(&policy, &sha256_hex("ok.example")).0, Action::Allow);
    let e = policy.explain(&Request {
        rp_id: &sha256_hex("x.evil.example"),
        operation: Operation::MakeCredential,
        principal: &nobody,
        ctap1: true,
    });
    assert_eq!(e.decision.rule_id, fidoseal_policy::U2F_UNATTRIBUTABLE);

    // Without wildcard rules that apply, U2F is decided like anything else.
    let policy = Policy::from_sources(&[(
        "/p/u2f.toml",
        "[[rule]]\nrp = [\"*.evil.example\"]\nusers = [\"mallory\"]\naction = \"deny\"\n[[rule]]\nrp = [\"ssh:\"]\naction = \"deny\"\n",
    )])
    .unwrap();
    assert_eq!(
        eval(&policy, &sha256_hex("anything.example")),
        (Action::Allow, fidoseal_policy::BUILT_IN_DEFAULT.into())
    );
    assert_eq!(eval(&policy, &sha256_hex("ssh:")), (Action::Deny, "/p/u2f.toml:5".into()));
}

/// Only a CTAP1 request names its rp by a hash. A CTAP2 rp.id of 64 hex
/// digits is just an odd rp ID: that it equals SHA-256 of an allowed rp
/// must not make it that rp (a page cannot choose such an rp.id, but any
/// local program talking CTAP2 can).
#[test]
fn a_ctap2_rp_id_equal_to_the_hash_of_an_allowed_rp_does_not_match_it() {
    let nobody = Principal::default();
    let policy = Policy::from_sources(&[(
        "/p/hash.toml",
        "[default]\naction = \"deny\"\n[[rule]]\nrp = [\"login.example.com\"]\naction = \"allow\"\n\
         [[rule]]\nrp = [\"*.example.com\"]\naction = \"allow\"\n",
    )])
    .unwrap();
    for app_id in ["login.example.com", "https://login.example.com"] {
        let hash = sha256_hex(app_id);
        for operation in [Operation::MakeCredential, Operation::GetAssertion] {
            let ctap2 = policy.evaluate(&Request { rp_id: &hash, operation, principal: &nobody, ctap1: false });
            assert_eq!((ctap2.action, ctap2.rule_id), (Action::Deny, "/p/hash.toml:2"), "CTAP2 {app_id}");
            let ctap1 = policy.evaluate(&Request { rp_id: &hash, operation, principal: &nobody, ctap1: true });
            assert_eq!((ctap1.action, ctap1.rule_id), (Action::Allow, "/p/hash.toml:3"), "CTAP1 {app_id}");
        }
        let e = policy.explain(&Request {
            rp_id: &hash,
            operation: Operation::MakeCredential,
            principal: &nobody,
            ctap1: false,
        });
        assert!(e.matches.is_empty(), "nothing matches a CTAP2 hash: {:?}", e.matches);
    }
    // A CTAP1 request is never judged by the host-name rules.
    let hash = sha256_hex("a.example.com");
    let d =
        policy.evaluate(&Request { rp_id: &hash, operation: Operation::GetAssertion, principal: &nobody, ctap1: true });
    assert_eq!(d.rule_id, fidoseal_policy::U2F_UNATTRIBUTABLE);
    // ... while a CTAP2 request with that odd rp ID is refused by the default, not as U2F.
    let d = policy.evaluate(&Request {
        rp_id: &hash,
        operation: Operation::GetAssertion,
        principal: &nobody,
        ctap1: false,
    });
    assert_eq!(d.rule_id, "/p/hash.toml:2");
}

/// An rp.id that is an AppID URL (`https://host/path`, what U2F-era
/// relying parties and some native tools send) is judged by its host, by
/// exact and wildcard rules alike.
#[test]
fn an_app_id_url_rp_id_is_judged_by_its_host() {
    let nobody = Principal::default();
    let policy = Policy::from_sources(&[(
        "/p/appid.toml",
        "[default]\naction = \"deny\"\n[[rule]]\nrp = [\"login.example.com\"]\naction = \"allow\"\n\
         [[rule]]\nrp = [\"*.corp.example\"]\naction = \"allow\"\n\
         [[rule]]\nrp = [\"*.evil.example\"]\naction = \"deny\"\n\
         [[rule]]\nrp = [\"*\"]\nusers = [\"alice\"]\naction = \"allow\"\n",
    )])
    .unwrap();
    let alice = Principal::user("alice", Vec::<String>::new());
    let eval = |rp_id: &str, principal: &Principal| {
        let d = policy.evaluate(&Request { rp_id, operation: Operation::GetAssertion, principal, ctap1: false });
        (d.action, d.rule_id.to_string())
    };
    let table: &[(&str, Action, &str)] = &[
        ("https://login.example.com", Action::Allow, "/p/appid.toml:3"),
        ("https://login.example.com/", Action::Allow, "/p/appid.toml:3"),
        ("https://Login.Example.com/u2f/app-id.json", Action::Allow, "/p/appid.toml:3"),
        ("https://login.example.com:8443/app-id.json?x=1", Action::Allow, "/p/appid.toml:3"),
        ("https://a.corp.example/app-id.json", Action::Allow, "/p/appid.toml:6"),
        ("https://b.a.corp.example#frag", Action::Allow, "/p/appid.toml:6"),
        ("https://corp.example/app-id.json", Action::Deny, "/p/appid.toml:2"),
        ("https://other.example/app-id.json", Action::Deny, "/p/appid.toml:2"),
        // Not a host: compared as written.
        ("https://user@login.example.com/", Action::Deny, "/p/appid.toml:2"),
        ("http://login.example.com/", Action::Deny, "/p/appid.toml:2"),
    ];
    for (rp_id, action, rule) in table {
        assert_eq!(eval(rp_id, &nobody), (*action, rule.to_string()), "{rp_id}");
    }
    // A wildcard deny is not escaped by writing the rp as a URL.
    assert_eq!(eval("https://x.evil.example/app.json", &alice), (Action::Deny, "/p/appid.toml:9".into()));
    assert_eq!(eval("x.evil.example", &alice), (Action::Deny, "/p/appid.toml:9".into()));
    let e = policy.explain(&Request {
        rp_id: "https://a.corp.example/app-id.json",
        operation: Operation::MakeCredential,
        principal: &nobody,
        ctap1: false,
    });
    assert_eq!(e.rp_id, "a.corp.example");
    assert_eq!(e.matches.first().map(|m| m.pattern.to_string()), Some("*.corp.example".into()));
}
