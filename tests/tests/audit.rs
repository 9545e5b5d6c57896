//! The audit trail the core produces (ctap/src/audit.rs), driven through
//! the whole device: which events a ceremony yields, with which fields, and
//! that none carries a credential ID, a user handle or a PIN.

use fidoseal_ctap::audit::{credential_tag, AuditDecision, AuditEvent, AuditKind};
use fidoseal_ctap::platform::PromptOutcome;
use fidoseal_tests::platform_client::{self as pc, Protocol};
use fidoseal_tests::requests;
use fidoseal_tests::status::OPERATION_DENIED;
use fidoseal_tests::{responses, Device};

fn kinds(events: &[AuditEvent]) -> Vec<(AuditKind, AuditDecision)> {
    events.iter().map(|e| (e.kind, e.decision)).collect()
}

/// Nothing in an event holds `secret` (bytes, as hex or as text).
fn assert_nowhere(events: &[AuditEvent], secret: &[u8]) {
    let hex = hex::encode(secret);
    let text = String::from_utf8_lossy(secret).into_owned();
    for event in events {
        let line = format!("{event:?} {}", event.summary());
        assert!(!line.contains(&hex), "{line}");
        if text.len() >= 4 {
            assert!(!line.contains(&text), "{line}");
        }
    }
}

#[test]
fn a_policy_denial_is_one_deny_event_before_anyone_is_asked() {
    let mut d = Device::new();
    let cid = d.init();
    d.denied_rps.0.lock().unwrap().push("evil.example".into());
    let _ = d.authenticator.take_audit_events();
    let (status, _) = d.ctap(cid, 0x01, Some(requests::make_credential("evil.example", b"u", "u", vec![])));
    assert_eq!(status, OPERATION_DENIED);
    let events = d.authenticator.take_audit_events();
    assert_eq!(kinds(&events), [(AuditKind::PolicyDecision, AuditDecision::Deny)]);
    let denial = &events[0];
    assert_eq!(denial.rp_id.as_deref(), Some("evil.example"));
    assert_eq!(denial.rule.as_deref(), Some("test deny list"));
    assert_eq!(denial.operation, Some("make-credential"));
    assert_eq!(denial.reason.as_deref(), Some("refused by the policy"));
    assert!(d.authenticator.take_audit_events().is_empty(), "taken once");
}

#[test]
fn registration_and_sign_in_name_the_credential_by_its_tag_only() {
    let mut d = Device::new();
    let cid = d.init();
    let user_id = b"user-handle-secret";
    let (status, body) = d.ctap(
        cid,
        0x01,
        Some(requests::make_credential("login.example", user_id, "alice@example", vec![requests::rk()])),
    );
    assert_eq!(status, 0);
    let id = responses::parse_registration(body.as_ref().unwrap()).credential_id;
    let events = d.authenticator.take_audit_events();
    assert_eq!(
        kinds(&events),
        [
            (AuditKind::PolicyDecision, AuditDecision::Allow),
            (AuditKind::Presence, AuditDecision::Allow),
            (AuditKind::CredentialCreated, AuditDecision::Allow),
        ]
    );
    let created = &events[2];
    assert_eq!(created.rp_id.as_deref(), Some("login.example"));
    assert_eq!(created.credential.as_deref(), Some(credential_tag(&id).as_str()));
    assert_eq!(created.reason.as_deref(), Some("discoverable"));
    assert_eq!(events[1].operation, Some("register"));
    assert_nowhere(&events, &id);
    assert_nowhere(&events, user_id);
    assert_nowhere(&events, b"alice@example");

    let (status, _) = d.ctap(cid, 0x02, Some(requests::get_assertion("login.example", &[&id], vec![])));
    assert_eq!(status, 0);
    let events = d.authenticator.take_audit_events();
    assert_eq!(
        kinds(&events),
        [
            (AuditKind::PolicyDecision, AuditDecision::Allow),
            (AuditKind::Presence, AuditDecision::Allow),
            (AuditKind::Assertion, AuditDecision::Allow),
        ]
    );
    assert_eq!(events[2].credential.as_deref(), Some(credential_tag(&id).as_str()));
    assert_eq!(events[2].user_verified, Some(false));
    assert_eq!(events[2].operation, Some("get-assertion"));
    assert_nowhere(&events, &id);
}

#[test]
fn a_refused_touch_is_a_deny_event_with_the_reason() {
    let mut d = Device::new();
    let cid = d.init();
    d.prompt.push(PromptOutcome::TimedOut);
    let (status, _) = d.ctap(cid, 0x01, Some(requests::make_credential("slow.example", b"u", "u", vec![])));
    assert_ne!(status, 0);
    let events = d.authenticator.take_audit_events();
    assert_eq!(
        kinds(&events),
        [(AuditKind::PolicyDecision, AuditDecision::Allow), (AuditKind::Presence, AuditDecision::Deny)]
    );
    assert_eq!(events[1].reason.as_deref(), Some("timed out"));
    assert_eq!(events[1].rp_id.as_deref(), Some("slow.example"));
}

#[test]
fn pin_set_changed_and_wrong_are_events_without_the_pin() {
    let mut d = Device::new();
    let cid = d.init();
    assert_eq!(pc::set_pin(&mut d, cid, Protocol::Two, "4711abcd"), 0);
    assert_eq!(pc::change_pin(&mut d, cid, Protocol::Two, "4711abcd", "0815wxyz"), 0);
    assert_ne!(pc::change_pin(&mut d, cid, Protocol::Two, "9999zzzz", "1234qrst"), 0);
    let events = d.authenticator.take_audit_events();
    assert_eq!(
        kinds(&events),
        [
            (AuditKind::PinSet, AuditDecision::Allow),
            (AuditKind::PinChanged, AuditDecision::Allow),
            (AuditKind::PinFailed, AuditDecision::Deny),
        ]
    );
    assert_eq!(events[2].reason.as_deref(), Some("wrong PIN, 7 retries left"));
    for pin in ["4711abcd", "0815wxyz", "9999zzzz", "1234qrst"] {
        assert_nowhere(&events, pin.as_bytes());
    }
}

#[test]
fn a_reset_is_an_event() {
    let mut d = Device::new();
    let cid = d.init();
    let (status, _) = d.ctap(cid, 0x07, None);
    assert_eq!(status, 0);
    let events = d.authenticator.take_audit_events();
    assert_eq!(kinds(&events), [(AuditKind::Presence, AuditDecision::Allow), (AuditKind::Reset, AuditDecision::Allow)]);
    assert_eq!(events[0].operation, Some("reset"));
}

#[test]
fn events_not_taken_are_bounded() {
    let mut d = Device::new();
    let cid = d.init();
    d.denied_rps.0.lock().unwrap().push("evil.example".into());
    for _ in 0..300 {
        let _ = d.ctap(cid, 0x01, Some(requests::make_credential("evil.example", b"u", "u", vec![])));
    }
    assert_eq!(d.authenticator.take_audit_events().len(), 256);
}
