//! Every kind of bad policy file is refused with `file:line: key: message`.

use fidoseal_policy::{Policy, PolicyError};

fn errors(text: &str) -> PolicyError {
    match Policy::from_sources(&[("/p/10-test.toml", text)]) {
        Ok(_) => panic!("accepted:\n{text}"),
        Err(e) => e,
    }
}

/// (what, file text, expected line, expected key, a word of the message)
const CASES: &[(&str, &str, usize, &str, &str)] = &[
    ("bad toml", "[default]\naction = allow\n", 2, "default.action", "quoted"),
    ("unclosed table", "[default\naction = \"allow\"\n", 1, "default", "unclosed table"),
    ("unknown top-level table", "[defaults]\naction = \"deny\"\n", 1, "defaults", "unknown field `defaults`"),
    ("unknown key in default", "[default]\nactoin = \"deny\"\n", 2, "default.actoin", "unknown field `actoin`"),
    (
        "unknown key in rule",
        "[[rule]]\nrp = [\"a.example\"]\naction = \"allow\"\nrequire_uv = true\n",
        4,
        "rule.require_uv",
        "unknown field `require_uv`",
    ),
    (
        "wrong type bool",
        "[[rule]]\nrp = [\"a.example\"]\naction = \"allow\"\nrequire_user_verification = \"yes\"\n",
        4,
        "rule.require_user_verification",
        "expected a boolean",
    ),
    ("wrong type rp", "[[rule]]\nrp = \"a.example\"\naction = \"allow\"\n", 2, "rule.rp", "expected a sequence"),
    ("wrong type in rp list", "[[rule]]\nrp = [\"a.example\", 3]\naction = \"allow\"\n", 2, "rule.rp", "expected a string"),
    ("unknown action", "[default]\naction = \"permit\"\n", 2, "default.action", "unknown variant `permit`"),
    ("missing action", "[[rule]]\nrp = [\"a.example\"]\n", 1, "rule.action", "missing field `action`"),
    ("missing rp", "\n[[rule]]\naction = \"deny\"\n", 2, "rule.rp", "missing field `rp`"),
    ("bad wildcard *example.com", "[[rule]]\nrp = [\"*example.com\"]\naction = \"deny\"\n", 2, "rule.rp", "first label"),
    ("bad wildcard a.*.com", "[[rule]]\nrp = [\"ok.example\",\n  \"a.*.com\"]\naction = \"deny\"\n", 3, "rule.rp", "first label"),
    ("bad wildcard *.*.com", "[[rule]]\nrp = [\"*.*.com\"]\naction = \"deny\"\n", 2, "rule.rp", "only once"),
    ("empty label", "[[rule]]\nrp = [\"a..example\"]\naction = \"deny\"\n", 2, "rule.rp", "empty labels"),
    ("bad punycode", "[[rule]]\nrp = [\"xn--a.example\"]\naction = \"deny\"\n", 2, "rule.rp", "punycode"),
    (
        "min_cred_protect 4",
        "[[rule]]\nrp = [\"a.example\"]\naction = \"allow\"\nmin_cred_protect = 4\n",
        4,
        "rule.min_cred_protect",
        "not a credProtect level",
    ),
    ("min_cred_protect 0", "[default]\nmin_cred_protect = 0\n", 2, "default.min_cred_protect", "credProtect"),
    ("empty rp list", "[[rule]]\nrp = []\naction = \"deny\"\n", 2, "rule.rp", "matches nothing"),
    (
        "empty users list",
        "[[rule]]\nrp = [\"a.example\"]\nusers = []\naction = \"deny\"\n",
        3,
        "rule.users",
        "matches nobody",
    ),
    (
        "empty operations list",
        "[[rule]]\nrp = [\"a.example\"]\noperations = []\naction = \"deny\"\n",
        3,
        "rule.operations",
        "matches nothing",
    ),
    (
        "unknown operation",
        "[[rule]]\nrp = [\"a.example\"]\noperations = [\"reset\"]\naction = \"deny\"\n",
        3,
        "rule.operations",
        "unknown variant `reset`",
    ),
    ("duplicate default", "[default]\naction = \"allow\"\n\n[default]\naction = \"deny\"\n", 4, "default", "duplicate key"),
    ("duplicate key", "[default]\naction = \"allow\"\naction = \"deny\"\n", 3, "default.action", "duplicate key"),
    ("min_pin_length 3", "[default]\nmin_pin_length = 3\n", 2, "default.min_pin_length", "4 to 63"),
    ("min_pin_length 64", "[default]\nmin_pin_length = 64\n", 2, "default.min_pin_length", "4 to 63"),
    ("prompt_timeout 0", "[default]\nprompt_timeout = 0\n", 2, "default.prompt_timeout", "1 to 600"),
    ("prompt_timeout float", "[default]\nprompt_timeout = 1.5\n", 2, "default.prompt_timeout", "expected i64"),
    ("message with newline", "[default]\nmessage = \"a\\nb\"\n", 2, "default.message", "control"),
    ("empty message", "[default]\nmessage = \"\"\n", 2, "default.message", "empty"),
    (
        "settings on a deny rule",
        "[[rule]]\nrp = [\"a.example\"]\naction = \"deny\"\nrequire_user_verification = true\n",
        4,
        "rule.require_user_verification",
        "deny rule takes no settings",
    ),
    ("bad attestation", "[default]\nattestation = \"packed\"\n", 2, "default.attestation", "unknown variant `packed`"),
    (
        "enterprise attestation in default",
        "[default]\nattestation = \"enterprise\"\n",
        2,
        "default.attestation",
        "only for rp IDs listed",
    ),
    (
        "enterprise attestation without a section",
        "[[rule]]\nrp = [\"a.example\"]\naction = \"allow\"\nattestation = \"enterprise\"\n",
        4,
        "rule.attestation",
        "needs a valid [enterprise_attestation]",
    ),
    ("user name with a space", "[[rule]]\nrp = [\"*\"]\nusers = [\"a b\"]\naction = \"deny\"\n", 3, "rule.users", "not a user name"),
    (
        "unknown key in enterprise_attestation",
        "[enterprise_attestation]\nrp_ids = [\"a.example\"]\nkey = \"/k\"\ncertificates = [\"/c\"]\nchain = []\n",
        5,
        "enterprise_attestation.chain",
        "unknown field `chain`",
    ),
    (
        "relative enterprise key path",
        "[enterprise_attestation]\nrp_ids = [\"a.example\"]\nkey = \"k.pem\"\ncertificates = [\"/nonexistent/c.pem\"]\n",
        3,
        "enterprise_attestation.key",
        "absolute path",
    ),
    (
        "wildcard in enterprise rp_ids",
        "[enterprise_attestation]\nrp_ids = [\"*.a.example\"]\nkey = \"/nonexistent/k.pem\"\ncertificates = [\"/nonexistent/c.pem\"]\n",
        2,
        "enterprise_attestation.rp_ids",
        "listed rp IDs only",
    ),
];

#[test]
fn every_kind_of_bad_file_names_file_line_and_key() {
    for (what, text, line, key, word) in CASES {
        let err = errors(text);
        let first = &err.diagnostics[0];
        let shown = first.to_string();
        assert_eq!(first.file.to_str(), Some("/p/10-test.toml"), "{what}: {shown}");
        assert_eq!(first.line, Some(*line), "{what}: {shown}");
        assert_eq!(first.key.as_deref(), Some(*key), "{what}: {shown}");
        assert!(first.message.contains(word), "{what}: {shown}");
        assert!(shown.starts_with(&format!("/p/10-test.toml:{line}: {key}: ")), "{what}: {shown}");
    }
}

#[test]
fn all_problems_of_all_files_are_reported_at_once() {
    let err = Policy::from_sources(&[
        ("/p/10-a.toml", "[default]\nmin_cred_protect = 9\nprompt_timeout = -1\n"),
        ("/p/20-ok.toml", "[[rule]]\nrp = [\"a.example\"]\naction = \"deny\"\n"),
        ("/p/30-b.toml", "[[rule]]\nrp = [\"*x.example\", \"y..example\"]\naction = \"deny\"\n"),
    ])
    .unwrap_err();
    let lines: Vec<String> = err.diagnostics.iter().map(ToString::to_string).collect();
    assert_eq!(lines.len(), 4, "{lines:#?}");
    assert!(lines[0].starts_with("/p/10-a.toml:2: default.min_cred_protect: "), "{lines:#?}");
    assert!(lines[1].starts_with("/p/10-a.toml:3: default.prompt_timeout: "), "{lines:#?}");
    assert!(lines[2].starts_with("/p/30-b.toml:2: rule.rp: "), "{lines:#?}");
    assert!(lines[3].starts_with("/p/30-b.toml:2: rule.rp: "), "{lines:#?}");
}

#[test]
fn a_bad_file_never_yields_a_partial_policy() {
    // One good file and one bad one: nothing is loaded.
    let result = Policy::from_sources(&[
        ("/p/10-good.toml", "[default]\naction = \"deny\"\n"),
        ("/p/20-bad.toml", "[[rule]]\nrp = [\"a.example\"]\naction = \"alow\"\n"),
    ]);
    assert!(result.is_err());
}

#[test]
fn empty_files_and_comments_are_valid() {
    let policy = Policy::from_sources(&[("/p/a.toml", ""), ("/p/b.toml", "# nothing yet\n")]).unwrap();
    assert!(policy.rules().is_empty());
}

#[test]
fn property_mangled_files_are_refused_or_accepted_but_never_panic() {
    let base = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../packaging/policy.d/50-example.toml"))
        .expect("the shipped example");
    let pieces = ["[", "]", "\"", "=", "\n", "*.", "ü", "[[rule]]", "rp", "#", "'", "{", "}", ",", "\\", "\u{0}"];
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move |n: usize| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state % n as u64) as usize
    };
    for _ in 0..3000 {
        let mut text = base.clone();
        for _ in 0..1 + next(4) {
            let mut at = next(text.len() + 1);
            while !text.is_char_boundary(at) {
                at -= 1;
            }
            match next(3) {
                0 => text.insert_str(at, pieces[next(pieces.len())]),
                1 => text.truncate(at),
                _ => {
                    let mut end = (at + 1 + next(8)).min(text.len());
                    while !text.is_char_boundary(end) {
                        end += 1;
                    }
                    text.replace_range(at..end, "");
                }
            }
        }
        if let Err(e) = Policy::from_sources(&[("/p/m.toml", text.as_str())]) {
            for d in &e.diagnostics {
                assert!(d.line.is_some_and(|l| l >= 1 && l <= text.lines().count() + 1), "{d}\n{text}");
                assert!(d.key.as_deref().is_some_and(|k| !k.is_empty()), "{d}\n{text}");
            }
        }
    }
}
