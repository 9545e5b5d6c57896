//! What the CTAP core does with a policy verdict: every requirement is
//! enforced before any key is used, and a refusal says nothing more than a
//! real key's refusal would.

use std::time::Duration;

use ciborium::value::Value;
use fidoseal_ctap::platform::{AttestationPolicy, PolicyVerdict, PresencePurpose};
use fidoseal_tests::requests::{self, text_map};
use fidoseal_tests::status::{OPERATION_DENIED, PUAT_REQUIRED};
use fidoseal_tests::{responses, Device};

fn verdict(change: impl FnOnce(&mut PolicyVerdict)) -> PolicyVerdict {
    let mut v = PolicyVerdict::allow("test rule");
    change(&mut v);
    v
}

#[test]
fn require_user_verification_refuses_requests_without_uv_before_any_prompt() {
    let mut d = Device::new();
    let cid = d.init();
    // A credential made before the rule existed.
    let (status, body) = d.ctap(cid, 0x01, Some(requests::make_credential("uv.example", b"u", "u", vec![])));
    assert_eq!(status, 0);
    let id = responses::parse_registration(body.as_ref().unwrap()).credential_id;
    d.denied_rps.set_verdict("uv.example", verdict(|v| v.require_user_verification = true));
    let asked = d.prompt.asked().len();
    let (status, _) = d.ctap(cid, 0x01, Some(requests::make_credential("uv.example", b"u2", "u2", vec![])));
    assert_eq!(status, PUAT_REQUIRED);
    let (status, _) = d.ctap(cid, 0x02, Some(requests::get_assertion("uv.example", &[&id], vec![])));
    assert_eq!(status, PUAT_REQUIRED);
    assert_eq!(d.prompt.asked().len(), asked, "refused before anyone was asked");
}

#[test]
fn forbidden_discoverable_credentials_are_operation_denied() {
    let mut d = Device::new();
    let cid = d.init();
    let (status, _) = d.ctap(cid, 0x01, Some(requests::make_credential("rk.example", b"u", "u", vec![requests::rk()])));
    assert_eq!(status, 0);
    d.denied_rps.set_verdict("rk.example", verdict(|v| v.allow_discoverable = false));
    let (status, _) = d.ctap(cid, 0x01, Some(requests::make_credential("rk.example", b"v", "v", vec![requests::rk()])));
    assert_eq!(status, OPERATION_DENIED);
    // Discovery of the existing passkey is refused too; a non-discoverable credential is fine.
    let (status, _) = d.ctap(cid, 0x02, Some(requests::get_assertion("rk.example", &[], vec![])));
    assert_eq!(status, OPERATION_DENIED);
    let (status, _) = d.ctap(cid, 0x01, Some(requests::make_credential("rk.example", b"w", "w", vec![])));
    assert_eq!(status, 0);
}

#[test]
fn min_cred_protect_raises_the_level_and_reports_it() {
    let mut d = Device::new();
    let cid = d.init();
    d.denied_rps.set_verdict("cp.example", verdict(|v| v.min_cred_protect = 3));
    let (status, body) = d.ctap(cid, 0x01, Some(requests::make_credential("cp.example", b"u", "u", vec![requests::rk()])));
    assert_eq!(status, 0);
    let auth_data = responses::bytes(responses::get(body.as_ref().unwrap(), 2));
    assert_eq!(auth_data[32] & 0x80, 0x80, "extension data present");
    let len = usize::from(u16::from_be_bytes([auth_data[53], auth_data[54]]));
    let mut rest = &auth_data[55 + len..];
    let _cose: Value = ciborium::de::from_reader(&mut rest).unwrap();
    let extensions: Value = ciborium::de::from_reader(rest).unwrap();
    assert_eq!(responses::get_text(&extensions, "credProtect"), Some(&Value::from(3)));
    // Level 3: invisible without UV, even to discovery.
    let (status, _) = d.ctap(cid, 0x02, Some(requests::get_assertion("cp.example", &[], vec![])));
    assert_eq!(status, 0x2E);
}

#[test]
fn attestation_override_and_prompt_details_reach_their_places() {
    let mut d = Device::new();
    let cid = d.init();
    d.denied_rps.set_verdict(
        "att.example",
        verdict(|v| {
            v.attestation = Some(AttestationPolicy::None);
            v.prompt_message = Some("Managed by Example IT".into());
            v.prompt_timeout = Some(Duration::from_secs(5));
        }),
    );
    let (status, body) = d.ctap(cid, 0x01, Some(requests::make_credential("att.example", b"u", "u", vec![])));
    assert_eq!(status, 0);
    let body = body.unwrap();
    assert_eq!(responses::get(&body, 1), Some(&Value::from("none")));
    assert_eq!(responses::get(&body, 3), Some(&text_map(&[])));
    let (status, body) = d.ctap(cid, 0x01, Some(requests::make_credential("other.example", b"u", "u", vec![])));
    assert_eq!(status, 0);
    assert_eq!(responses::get(body.as_ref().unwrap(), 1), Some(&Value::from("packed")));
    assert!(d.prompt.asked().iter().any(|(p, rp)| *p == PresencePurpose::Register && rp.as_deref() == Some("att.example")));
}

#[test]
fn denied_rp_never_learns_that_an_excluded_credential_exists() {
    let mut d = Device::new();
    let cid = d.init();
    let (status, body) = d.ctap(cid, 0x01, Some(requests::make_credential("ex.example", b"u", "u", vec![])));
    assert_eq!(status, 0);
    let id = responses::parse_registration(body.as_ref().unwrap()).credential_id;
    d.denied_rps.0.lock().unwrap().push("ex.example".into());
    let asked = d.prompt.asked().len();
    let exclude = (5, Value::Array(vec![requests::descriptor(&id)]));
    let (status, _) = d.ctap(cid, 0x01, Some(requests::make_credential("ex.example", b"u", "u", vec![exclude])));
    assert_eq!(status, OPERATION_DENIED, "not CREDENTIAL_EXCLUDED");
    assert_eq!(d.prompt.asked().len(), asked);
}

#[test]
fn policy_minimum_pin_length_applies_to_new_pins_and_shows_in_get_info() {
    use fidoseal_tests::platform_client as pc;
    let mut d = Device::new();
    let cid = d.init();
    d.denied_rps.set_min_pin_length(6);
    let (_, info) = d.ctap(cid, 0x04, None);
    assert_eq!(responses::get(info.as_ref().unwrap(), 0x0D), Some(&Value::from(6)));
    assert_eq!(pc::set_pin(&mut d, cid, pc::Protocol::Two, "12345"), 0x37, "PIN_POLICY_VIOLATION");
    assert_eq!(pc::set_pin(&mut d, cid, pc::Protocol::Two, "123456"), 0x00);
}

#[test]
fn a_pin_shorter_than_a_raised_policy_minimum_must_change() {
    use fidoseal_tests::platform_client as pc;
    let mut d = Device::new();
    let cid = d.init();
    assert_eq!(pc::set_pin(&mut d, cid, pc::Protocol::Two, "1234"), 0x00);
    assert!(pc::get_pin_token(&mut d, cid, pc::Protocol::Two, "1234").is_ok());
    d.denied_rps.set_min_pin_length(6);
    let (_, info) = d.ctap(cid, 0x04, None);
    assert_eq!(responses::get(info.as_ref().unwrap(), 0x0C), Some(&Value::Bool(true)), "forcePINChange");
    assert_eq!(pc::get_pin_token(&mut d, cid, pc::Protocol::Two, "1234").err(), Some(0x31));
    assert_eq!(pc::change_pin(&mut d, cid, pc::Protocol::Two, "1234", "12345"), 0x37);
    assert_eq!(pc::change_pin(&mut d, cid, pc::Protocol::Two, "1234", "123456"), 0x00);
    assert!(pc::get_pin_token(&mut d, cid, pc::Protocol::Two, "123456").is_ok());
}

#[test]
fn a_denied_rp_is_refused_before_any_credential_is_looked_up() {
    let mut d = Device::new();
    let cid = d.init();
    d.denied_rps.0.lock().unwrap().push("nothing.example".into());
    // No credential exists: still OPERATION_DENIED, never NO_CREDENTIALS.
    let (status, _) = d.ctap(cid, 0x02, Some(requests::get_assertion("nothing.example", &[], vec![])));
    assert_eq!(status, OPERATION_DENIED);
    let (status, _) = d.ctap(cid, 0x02, Some(requests::get_assertion("nothing.example", &[&[7u8; 90]], vec![])));
    assert_eq!(status, OPERATION_DENIED);
}
