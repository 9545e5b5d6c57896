//! Built-in user verification through the prompt (fingerprint or password
//! checked by the daemon, or the PIN typed in the user's session) and the
//! user's choice among several passkeys.

use std::time::Duration;

use ciborium::value::Value;
use fidoseal_ctap::platform::{PresencePurpose, PromptOutcome};
use fidoseal_tests::platform_client::{self as pc, Protocol};
use fidoseal_tests::requests::{self, text_map};
use fidoseal_tests::status::{UV_BLOCKED, UV_INVALID};
use fidoseal_tests::{responses, Device, ScriptedVerification as V};

fn uv_option() -> (i64, Value) {
    (7, text_map(&[("uv", Value::Bool(true))]))
}

fn uv_rk_options() -> (i64, Value) {
    (7, text_map(&[("uv", Value::Bool(true)), ("rk", Value::Bool(true))]))
}

fn flags(body: &Value) -> u8 {
    responses::bytes(responses::get(body, 2))[32]
}

fn uv_retries(d: &mut Device, cid: u32) -> u64 {
    let (status, body) = d.ctap(cid, 0x06, Some(requests::int_map(vec![(2, Value::from(7))])));
    assert_eq!(status, 0);
    u64::try_from(responses::get(body.as_ref().unwrap(), 5).unwrap().as_integer().unwrap()).unwrap()
}

fn info_option(d: &mut Device, cid: u32, name: &str) -> Option<bool> {
    let (_, info) = d.ctap(cid, 0x04, None);
    responses::get(info.as_ref().unwrap(), 4).and_then(|o| responses::get_text(o, name)).and_then(Value::as_bool)
}

#[test]
fn get_info_says_uv_only_when_the_prompt_can_verify() {
    let mut d = Device::new();
    let cid = d.init();
    assert_eq!(info_option(&mut d, cid, "uv"), None);
    let (status, _) = d.ctap(cid, 0x01, Some(requests::make_credential("uv.example", b"u", "u", vec![uv_option()])));
    assert_eq!(status, 0x2C, "uv=true without built-in verification is INVALID_OPTION");
    d.prompt.offer_verification(vec![]);
    assert_eq!(info_option(&mut d, cid, "uv"), Some(true));
}

#[test]
fn verified_user_gets_the_uv_flag_with_one_prompt() {
    let mut d = Device::new();
    let cid = d.init();
    d.prompt.offer_verification(vec![V::Verified, V::Verified]);
    let (status, body) =
        d.ctap(cid, 0x01, Some(requests::make_credential("uv.example", b"u", "alice", vec![uv_rk_options()])));
    assert_eq!(status, 0);
    assert_eq!(flags(body.as_ref().unwrap()) & 0x05, 0x05, "UP and UV");
    assert!(d.prompt.asked().is_empty(), "verification stands for presence: no second prompt");
    // Discovery with UV returns the user's name.
    let (status, body) = d.ctap(
        cid,
        0x02,
        Some(requests::get_assertion("uv.example", &[], vec![(5, text_map(&[("uv", Value::Bool(true))]))])),
    );
    assert_eq!(status, 0);
    let body = body.unwrap();
    assert_eq!(flags(&body) & 0x05, 0x05);
    let user = responses::get(&body, 4).unwrap();
    assert_eq!(responses::get_text(user, "name"), Some(&Value::from("alice")));
    assert_eq!(d.prompt.verifications_asked.lock().unwrap()[0].0, PresencePurpose::Register);
}

#[test]
fn failures_spend_uv_retries_until_blocked_and_success_restores_them() {
    let mut d = Device::new();
    let cid = d.init();
    d.prompt.offer_verification(vec![V::Failed, V::Verified]);
    assert_eq!(uv_retries(&mut d, cid), 8);
    let req = || Some(requests::make_credential("uv.example", b"u", "u", vec![uv_option()]));
    assert_eq!(d.ctap(cid, 0x01, req()).0, UV_INVALID);
    assert_eq!(uv_retries(&mut d, cid), 7);
    assert_eq!(d.ctap(cid, 0x01, req()).0, 0);
    assert_eq!(uv_retries(&mut d, cid), 8, "a success restores the retries");
    d.prompt.offer_verification(vec![V::Failed; 8]);
    for _ in 0..7 {
        assert_eq!(d.ctap(cid, 0x01, req()).0, UV_INVALID);
    }
    assert_eq!(d.ctap(cid, 0x01, req()).0, UV_BLOCKED);
    d.prompt.offer_verification(vec![V::Verified]);
    assert_eq!(d.ctap(cid, 0x01, req()).0, UV_BLOCKED, "blocked: the prompt is not even asked");
    assert_eq!(d.prompt.verifications_asked.lock().unwrap().len(), 10);
}

#[test]
fn a_pin_typed_in_the_session_is_checked_against_the_authenticator_pin() {
    let mut d = Device::new();
    let cid = d.init();
    assert_eq!(pc::set_pin(&mut d, cid, Protocol::Two, "4321"), 0);
    d.prompt.offer_verification(vec![V::Pin("4321".into()), V::Pin("0000".into())]);
    let req = || Some(requests::make_credential("uv.example", b"u", "u", vec![uv_rk_options()]));
    let (status, body) = d.ctap(cid, 0x01, req());
    assert_eq!(status, 0, "rk with UV through the prompt needs no pinUvAuthParam");
    assert_eq!(flags(body.as_ref().unwrap()) & 0x04, 0x04);
    assert!(d.prompt.verifications_asked.lock().unwrap()[0].1, "the prompt was told a PIN is available");
    assert_eq!(d.ctap(cid, 0x01, req()).0, UV_INVALID);
    assert_eq!(pc::get_pin_retries(&mut d, cid).0, 7, "a wrong typed PIN spends a PIN retry");
}

#[test]
fn refusals_of_verification_end_the_request_like_presence_refusals() {
    let mut d = Device::new();
    let cid = d.init();
    d.prompt.offer_verification(vec![
        V::Refused(PromptOutcome::Denied),
        V::Refused(PromptOutcome::TimedOut),
        V::Refused(PromptOutcome::Cancelled),
    ]);
    let req = || Some(requests::make_credential("uv.example", b"u", "u", vec![uv_option()]));
    assert_eq!(d.ctap(cid, 0x01, req()).0, 0x27);
    assert_eq!(d.ctap(cid, 0x01, req()).0, 0x2F);
    assert_eq!(d.ctap(cid, 0x01, req()).0, 0x2D);
    assert_eq!(uv_retries(&mut d, cid), 8, "a refusal is not a failed attempt");
}

#[test]
fn uv_token_needs_no_second_touch_when_used_at_once() {
    for protocol in [Protocol::One, Protocol::Two] {
        let mut d = Device::new();
        let cid = d.init();
        d.prompt.offer_verification(vec![V::Verified, V::Verified]);
        let ss = pc::key_agreement(&mut d, cid, protocol);
        let token = pc::request_token(&mut d, cid, &ss, pc::uv_token_request(&ss, 0x01, Some("uv.example"))).unwrap();
        assert_eq!(d.prompt.verifications_asked.lock().unwrap()[0].0, PresencePurpose::Register);
        let param = token.param(&[0x11; 32]);
        let auth = vec![(8, Value::Bytes(param)), (9, Value::from(protocol.id()))];
        let (status, body) = d.ctap(cid, 0x01, Some(requests::make_credential("uv.example", b"u", "u", auth)));
        assert_eq!(status, 0);
        assert_eq!(flags(body.as_ref().unwrap()) & 0x05, 0x05);
        assert!(d.prompt.asked().is_empty(), "presence came with the verification");

        // A token used later than the initial usage limit asks for a touch.
        let ss = pc::key_agreement(&mut d, cid, protocol);
        let token = pc::request_token(&mut d, cid, &ss, pc::uv_token_request(&ss, 0x01, Some("uv.example"))).unwrap();
        d.advance(Duration::from_secs(31));
        let param = token.param(&[0x11; 32]);
        let auth = vec![(8, Value::Bytes(param)), (9, Value::from(protocol.id()))];
        let (status, _) = d.ctap(cid, 0x01, Some(requests::make_credential("uv.example", b"v", "v", auth)));
        assert_eq!(status, 0);
        assert_eq!(d.prompt.asked().len(), 1, "a touch was asked after 31 s");
    }
}

/// A token's userPresent (§6.5.2.1) runs from when the user verified, not
/// from when the request came: a password typed in 35 s needs no second
/// touch for the request right after it.
#[test]
fn a_slow_verification_still_proves_presence_to_the_next_request() {
    for protocol in [Protocol::One, Protocol::Two] {
        let mut d = Device::new();
        let cid = d.init();
        d.prompt.offer_verification(vec![V::VerifiedAfter(Duration::from_secs(35))]);
        let ss = pc::key_agreement(&mut d, cid, protocol);
        let token = pc::request_token(&mut d, cid, &ss, pc::uv_token_request(&ss, 0x01, Some("uv.example"))).unwrap();
        // The clock went on while the user typed, and a second more.
        d.advance(Duration::from_secs(36));
        let param = token.param(&[0x11; 32]);
        let auth = vec![(8, Value::Bytes(param)), (9, Value::from(protocol.id()))];
        let (status, body) = d.ctap(cid, 0x01, Some(requests::make_credential("uv.example", b"u", "u", auth)));
        assert_eq!(status, 0);
        assert_eq!(flags(body.as_ref().unwrap()) & 0x05, 0x05);
        assert!(d.prompt.asked().is_empty(), "asked for a touch 1 s after the user verified: {:?}", d.prompt.asked());
    }
}

/// getNextAssertion's 30 s (§6.3) also start when the user has answered.
#[test]
fn get_next_assertion_after_a_slow_verification() {
    let mut d = Device::new();
    let cid = d.init();
    for (id, name) in [(b"a", "alice"), (b"b", "bob")] {
        let (status, _) =
            d.ctap(cid, 0x01, Some(requests::make_credential("next.example", id, name, vec![requests::rk()])));
        assert_eq!(status, 0);
    }
    d.prompt.offer_verification(vec![V::VerifiedAfter(Duration::from_secs(35))]);
    let uv = vec![(5, text_map(&[("uv", Value::Bool(true))]))];
    let (status, body) = d.ctap(cid, 0x02, Some(requests::get_assertion("next.example", &[], uv)));
    assert_eq!(status, 0);
    assert_eq!(responses::get(body.as_ref().unwrap(), 5), Some(&Value::from(2)));
    d.advance(Duration::from_secs(36));
    assert_eq!(d.ctap(cid, 0x08, None).0, 0, "getNextAssertion 1 s after the user verified");
}

#[test]
fn uv_token_is_refused_without_built_in_verification_or_when_blocked() {
    let mut d = Device::new();
    let cid = d.init();
    let ss = pc::key_agreement(&mut d, cid, Protocol::Two);
    assert_eq!(pc::request_token(&mut d, cid, &ss, pc::uv_token_request(&ss, 0x01, None)).err(), Some(0x30));
    d.prompt.offer_verification(vec![V::Failed; 8]);
    for _ in 0..8 {
        let _ = pc::request_token(&mut d, cid, &ss, pc::uv_token_request(&ss, 0x02, None));
    }
    assert_eq!(pc::request_token(&mut d, cid, &ss, pc::uv_token_request(&ss, 0x02, None)).err(), Some(UV_BLOCKED));
}

#[test]
fn the_user_picks_one_of_several_passkeys() {
    let mut d = Device::new();
    let cid = d.init();
    for (id, name) in [(b"a", "alice"), (b"b", "bob")] {
        let (status, _) =
            d.ctap(cid, 0x01, Some(requests::make_credential("pick.example", id, name, vec![requests::rk()])));
        assert_eq!(status, 0);
    }
    d.prompt.offer_selection(Ok(1));
    let asked = d.prompt.asked().len();
    let (status, body) = d.ctap(cid, 0x02, Some(requests::get_assertion("pick.example", &[], vec![])));
    assert_eq!(status, 0);
    let body = body.unwrap();
    assert_eq!(responses::get(&body, 5), None, "one assertion: no numberOfCredentials");
    let user = responses::get(&body, 4).unwrap();
    assert_eq!(
        responses::get_text(user, "id"),
        Some(&Value::Bytes(b"a".to_vec())),
        "the older passkey, second in the list"
    );
    assert_eq!(d.prompt.selections_asked.lock().unwrap()[0], vec!["bob".to_owned(), "alice".to_owned()]);
    assert_eq!(d.prompt.asked().len(), asked, "choosing was the user's presence");
    assert_eq!(d.ctap(cid, 0x08, None).0, 0x30, "nothing left for getNextAssertion");

    d.prompt.offer_selection(Err(PromptOutcome::Denied));
    assert_eq!(d.ctap(cid, 0x02, Some(requests::get_assertion("pick.example", &[], vec![]))).0, 0x27);
    // A silent probe (up=false) never asks the user to choose.
    let silent = vec![(5, text_map(&[("up", Value::Bool(false))]))];
    let (status, body) = d.ctap(cid, 0x02, Some(requests::get_assertion("pick.example", &[], silent)));
    assert_eq!(status, 0);
    assert_eq!(responses::get(body.as_ref().unwrap(), 5), Some(&Value::from(2)));
}

/// CTAP 2.1 §6.5.5.7.1/§6.5.5.7.2: a correct PIN restores uvRetries too, so
/// built-in UV blocked by failures works again once the PIN is used
/// (docs/dbus.md and the PAM file promise it). Both counters go back in one
/// stored write: a crash between them cannot leave one restored.
#[test]
fn a_correct_pin_restores_blocked_built_in_uv() {
    let mut d = Device::new();
    let cid = d.init();
    assert_eq!(pc::set_pin(&mut d, cid, Protocol::Two, "4321"), 0);
    d.prompt.offer_verification(vec![V::Failed; 8]);
    let req = || Some(requests::make_credential("uv.example", b"u", "u", vec![uv_option()]));
    for _ in 0..7 {
        assert_eq!(d.ctap(cid, 0x01, req()).0, UV_INVALID);
    }
    assert_eq!(d.ctap(cid, 0x01, req()).0, UV_BLOCKED);
    assert_eq!(uv_retries(&mut d, cid), 0);
    assert!(pc::get_pin_token(&mut d, cid, Protocol::Two, "4321").is_ok());
    assert_eq!(uv_retries(&mut d, cid), 8, "the PIN unblocked built-in UV");
    d.prompt.offer_verification(vec![V::Verified]);
    assert_eq!(d.ctap(cid, 0x01, req()).0, 0);

    // The same through getPinUvAuthTokenUsingPinWithPermissions.
    d.prompt.offer_verification(vec![V::Failed; 8]);
    for _ in 0..8 {
        let _ = d.ctap(cid, 0x01, req());
    }
    assert_eq!(uv_retries(&mut d, cid), 0);
    assert!(pc::get_pin_uv_auth_token_with_permissions(&mut d, cid, Protocol::One, "4321", 0x01, None).is_ok());
    assert_eq!(uv_retries(&mut d, cid), 8);

    // And through the PIN typed into the agent after failed fingerprints.
    d.prompt.offer_verification(vec![V::Failed, V::Failed, V::Pin("4321".into())]);
    assert_eq!(d.ctap(cid, 0x01, req()).0, UV_INVALID);
    assert_eq!(d.ctap(cid, 0x01, req()).0, UV_INVALID);
    assert_eq!(uv_retries(&mut d, cid), 6);
    assert_eq!(d.ctap(cid, 0x01, req()).0, 0);
    assert_eq!(uv_retries(&mut d, cid), 8);
}

/// The UV-token prompt says what the token is for: a token that can
/// delete passkeys (cm), change settings (acfg) or write large blobs
/// (lbw) is not "select a key".
#[test]
fn uv_token_prompts_name_management_purposes() {
    let mut d = Device::new();
    let cid = d.init();
    d.prompt.offer_verification(vec![V::Verified; 7]);
    let cases = [
        (0x01, PresencePurpose::Register),
        (0x02, PresencePurpose::Authenticate),
        (0x04, PresencePurpose::Manage),
        (0x20, PresencePurpose::Manage),
        (0x10, PresencePurpose::Manage),
        (0x04 | 0x01, PresencePurpose::Manage),
        // pcmr: the persistent read-only token (CTAP 2.2).
        (0x40, PresencePurpose::Manage),
    ];
    for (permissions, want) in cases {
        let ss = pc::key_agreement(&mut d, cid, Protocol::Two);
        pc::request_token(&mut d, cid, &ss, pc::uv_token_request(&ss, permissions, None)).unwrap();
        let asked = d.prompt.verifications_asked.lock().unwrap().last().unwrap().0;
        assert_eq!(asked, want, "permissions {permissions:#04x}");
    }
}

/// A persistent token (pcmr) from built-in UV lists credentials, also after
/// a power cycle, and deletes none (CTAP 2.2 §6.5.5.7.3).
#[test]
fn a_pcmr_token_from_built_in_uv_lists_and_survives_a_power_cycle() {
    let mut d = Device::new();
    let cid = d.init();
    d.prompt.offer_verification(vec![V::Verified; 2]);
    let (status, body) =
        d.ctap(cid, 0x01, Some(requests::make_credential("uv.example", b"u", "u", vec![uv_rk_options()])));
    assert_eq!(status, 0);
    let id = responses::parse_registration(body.as_ref().unwrap()).credential_id;
    let ss = pc::key_agreement(&mut d, cid, Protocol::Two);
    let token = pc::request_token(&mut d, cid, &ss, pc::uv_token_request(&ss, 0x40, None)).unwrap();
    let now = d.now;
    d.authenticator.power_cycle(now).unwrap();
    let metadata = pc::cred_mgmt_request(Some(&token), 0x01, None);
    let (status, body) = d.ctap(cid, 0x0A, Some(metadata));
    assert_eq!(status, 0);
    assert_eq!(responses::get(body.as_ref().unwrap(), 1), Some(&Value::from(1)));
    let delete =
        pc::cred_mgmt_request(Some(&token), 0x06, Some(requests::int_map(vec![(2, requests::descriptor(&id))])));
    assert_eq!(d.ctap(cid, 0x0A, Some(delete)).0, 0x33, "PIN_AUTH_INVALID");
}

/// The platform's own verification (fidoseald's Manager1.DeletePasskey):
/// the built-in UV path of getPinUvAuthTokenUsingUv, with no token made.
#[test]
fn the_platform_verifies_the_user_through_the_built_in_uv_path() {
    use fidoseal_ctap::platform::{PresenceRequest, TransactionSignals};
    use fidoseal_ctap::{RequestContext, StatusCode};

    fn verify(d: &mut Device) -> Result<(), StatusCode> {
        let signals = TransactionSignals::new();
        let ctx = RequestContext { now: d.now, channel: 0, signals: &signals };
        let request = PresenceRequest {
            purpose: PresencePurpose::DeletePasskey,
            rp_id: Some("bank.example"),
            user_name: Some("alice"),
            ..Default::default()
        };
        d.authenticator.verify_user_for_platform(&request, &ctx)
    }

    let mut d = Device::new();
    let cid = d.init();
    // Nothing to verify with: refused, and nobody was asked.
    assert_eq!(verify(&mut d), Err(StatusCode::NotAllowed));
    assert!(d.prompt.verifications_asked.lock().unwrap().is_empty());
    assert!(d.prompt.asked().is_empty(), "presence never stands in for verification");

    d.prompt.offer_verification(vec![V::Failed, V::Refused(PromptOutcome::Denied), V::Verified]);
    assert_eq!(verify(&mut d), Err(StatusCode::UvInvalid));
    assert_eq!(uv_retries(&mut d, cid), 7, "a failure spends a uvRetry");
    assert_eq!(verify(&mut d), Err(StatusCode::OperationDenied));
    assert_eq!(verify(&mut d), Ok(()));
    assert_eq!(uv_retries(&mut d, cid), 8, "a success restores them");
    let asked = d.prompt.verifications_asked.lock().unwrap().clone();
    assert_eq!(asked.len(), 3);
    assert!(asked.iter().all(|(purpose, _)| *purpose == PresencePurpose::DeletePasskey), "{asked:?}");

    // Blocked built-in UV stays blocked here too.
    d.prompt.offer_verification(vec![V::Failed; 8]);
    for _ in 0..7 {
        assert_eq!(verify(&mut d), Err(StatusCode::UvInvalid));
    }
    assert_eq!(verify(&mut d), Err(StatusCode::UvBlocked));
    d.prompt.offer_verification(vec![V::Verified]);
    assert_eq!(verify(&mut d), Err(StatusCode::UvBlocked));
}
