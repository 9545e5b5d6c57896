//! `attestation = "machine"` (docs/policy.md, "Machine attestation"): in
//! rules and `[default]`, per rp, and wrong values still refused.

use fidoseal_policy::{Attestation, Operation, Policy, Principal, Request};

fn ask(policy: &Policy, rp_id: &str) -> Option<Attestation> {
    let principal = Principal::default();
    policy
        .evaluate(&Request { rp_id, operation: Operation::MakeCredential, principal: &principal, ctap1: false })
        .settings
        .attestation
}

#[test]
fn machine_is_a_rule_and_default_setting() {
    let text = "[[rule]]\nrp = [\"pam://host1\"]\naction = \"allow\"\nattestation = \"self\"\n\
                [[rule]]\nrp = [\"intranet.example.com\"]\naction = \"allow\"\nattestation = \"machine\"\n";
    let policy = Policy::from_sources(&[("/p/50-m.toml", text)]).unwrap();
    assert_eq!(ask(&policy, "pam://host1"), Some(Attestation::SelfAttestation));
    assert_eq!(ask(&policy, "intranet.example.com"), Some(Attestation::Machine));
    assert_eq!(ask(&policy, "ssh:"), None, "no rule: the daemon's configuration decides");
    assert_eq!(Attestation::Machine.to_string(), "machine");

    let text = "[default]\nattestation = \"machine\"\n[[rule]]\nrp = [\"a.example\"]\naction = \"allow\"\n";
    let policy = Policy::from_sources(&[("/p/50-d.toml", text)]).unwrap();
    assert_eq!(ask(&policy, "a.example"), Some(Attestation::Machine));
}

#[test]
fn other_values_are_refused_with_the_line() {
    let text = "[[rule]]\nrp = [\"pam://host1\"]\naction = \"allow\"\nattestation = \"machines\"\n";
    let error = Policy::from_sources(&[("/p/50-m.toml", text)]).expect_err("refused");
    let lines: Vec<String> = error.diagnostics.iter().map(ToString::to_string).collect();
    assert!(lines.iter().any(|l| l.starts_with("/p/50-m.toml:4")), "{lines:#?}");
}
