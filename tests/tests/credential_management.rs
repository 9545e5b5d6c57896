//! authenticatorCredentialManagement (CTAP 2.1 §6.8) through the whole
//! device, with tokens from the independent platform client and
//! pinUvAuthParam = authenticate(token, subCommand ‖ subCommandParams),
//! for both PIN/UV auth protocols.

use ciborium::value::Value;
use fidoseal_tests::platform_client::{self as pc, command, ga_auth, mc_auth, permission, PinToken, Protocol};
use fidoseal_tests::requests::{self, int_map, text_map};
use fidoseal_tests::responses::{self, get, get_text};
use fidoseal_tests::status as st;
use fidoseal_tests::Device;
use p256::ecdsa::VerifyingKey;

use fidoseal_tests::platform_client::credential_management_subcommand as sub;

const RP_A: &str = "a.example";
const RP_B: &str = "b.example";
const PIN: &str = "1234";
const CAPACITY: usize = 50;

struct Cred {
    id: Vec<u8>,
    key: VerifyingKey,
}

fn user(id: &[u8], name: &str, display: &str) -> Value {
    text_map(&[("displayName", Value::from(display)), ("id", Value::Bytes(id.to_vec())), ("name", Value::from(name))])
}

/// A discoverable credential, made with an mc token of its own.
fn make_rk(
    d: &mut Device,
    cid: u32,
    protocol: Protocol,
    rp: &str,
    user_entity: Value,
    extra: Vec<(i64, Value)>,
) -> Cred {
    let t = pc::get_pin_uv_auth_token_with_permissions(d, cid, protocol, PIN, permission::MC, Some(rp)).unwrap();
    let mut params = vec![
        (1, Value::Bytes(pc::MC_CLIENT_DATA_HASH.to_vec())),
        (2, text_map(&[("id", Value::from(rp)), ("name", Value::from(format!("{rp} RP")))])),
        (3, user_entity),
        (4, requests::es256()),
        requests::rk(),
    ];
    params.extend(mc_auth(&t));
    params.extend(extra);
    let (status, body) = d.ctap(cid, command::MAKE_CREDENTIAL, Some(int_map(params)));
    assert_eq!(status, st::OK, "makeCredential");
    let reg = responses::parse_registration(&body.unwrap());
    Cred { id: reg.credential_id, key: reg.public_key }
}

/// A device with a PIN and three discoverable credentials: two for RP_A
/// (the second with credProtect 2), one for RP_B.
fn populated(protocol: Protocol) -> (Device, u32, Vec<Cred>) {
    let mut d = Device::with_capacity(CAPACITY);
    let cid = d.init();
    assert_eq!(pc::set_pin(&mut d, cid, protocol, PIN), st::OK);
    let creds = vec![
        make_rk(&mut d, cid, protocol, RP_A, user(b"a-1", "alice", "Alice A"), vec![]),
        make_rk(
            &mut d,
            cid,
            protocol,
            RP_A,
            user(b"a-2", "bob", "Bob A"),
            vec![(6, text_map(&[("credProtect", Value::from(2))]))],
        ),
        make_rk(&mut d, cid, protocol, RP_B, user(b"b-1", "carol", "Carol B"), vec![]),
    ];
    (d, cid, creds)
}

fn cm_token(d: &mut Device, cid: u32, protocol: Protocol, rp: Option<&str>) -> PinToken {
    pc::get_pin_uv_auth_token_with_permissions(d, cid, protocol, PIN, permission::CM, rp).unwrap()
}

fn cm(
    d: &mut Device,
    cid: u32,
    token: Option<&PinToken>,
    sub_command: u8,
    params: Option<Value>,
) -> (u8, Option<Value>) {
    d.ctap(cid, command::CREDENTIAL_MANAGEMENT, Some(pc::cred_mgmt_request(token, sub_command, params)))
}

fn rp_hash_params(rp: &str) -> Value {
    int_map(vec![(1, Value::Bytes(pc::sha256(rp.as_bytes()).to_vec()))])
}

fn descriptor_params(id: &[u8]) -> Value {
    int_map(vec![(2, requests::descriptor(id))])
}

fn int(v: Option<&Value>) -> i128 {
    i128::from(v.and_then(Value::as_integer).expect("an integer"))
}

#[test]
fn get_creds_metadata_counts_existing_and_remaining() {
    for protocol in Protocol::BOTH {
        let (mut d, cid, _) = populated(protocol);
        let t = cm_token(&mut d, cid, protocol, None);
        let (status, body) = cm(&mut d, cid, Some(&t), sub::GET_CREDS_METADATA, None);
        assert_eq!(status, st::OK);
        let body = body.unwrap();
        assert_eq!(int(get(&body, 1)), 3, "existingResidentCredentialsCount");
        assert_eq!(int(get(&body, 2)), (CAPACITY - 3) as i128, "maxPossibleRemainingResidentCredentialsCount");
    }
}

#[test]
fn enumerate_rps_returns_each_rp_once_then_not_allowed() {
    for protocol in Protocol::BOTH {
        let (mut d, cid, _) = populated(protocol);
        let t = cm_token(&mut d, cid, protocol, None);
        let (status, first) = cm(&mut d, cid, Some(&t), sub::ENUMERATE_RPS_BEGIN, None);
        assert_eq!(status, st::OK);
        let first = first.unwrap();
        assert_eq!(int(get(&first, 5)), 2, "totalRPs");
        let (status, second) = cm(&mut d, cid, None, sub::ENUMERATE_RPS_GET_NEXT_RP, None);
        assert_eq!(status, st::OK);
        let second = second.unwrap();
        assert_eq!(get(&second, 5), None, "totalRPs only in the first answer");

        let mut seen = Vec::new();
        for answer in [&first, &second] {
            let rp = get(answer, 3).expect("rp (0x03)");
            let id = get_text(rp, "id").and_then(Value::as_text).unwrap().to_owned();
            assert_eq!(get_text(rp, "name"), Some(&Value::from(format!("{id} RP"))));
            assert_eq!(responses::bytes(get(answer, 4)), pc::sha256(id.as_bytes()).to_vec(), "rpIDHash");
            seen.push(id);
        }
        seen.sort();
        assert_eq!(seen, vec![RP_A.to_owned(), RP_B.to_owned()]);
        assert_eq!(cm(&mut d, cid, None, sub::ENUMERATE_RPS_GET_NEXT_RP, None).0, st::NOT_ALLOWED);
    }
}

#[test]
fn get_next_without_begin_or_after_another_command_is_not_allowed() {
    let protocol = Protocol::Two;
    let (mut d, cid, _) = populated(protocol);
    assert_eq!(cm(&mut d, cid, None, sub::ENUMERATE_RPS_GET_NEXT_RP, None).0, st::NOT_ALLOWED);
    assert_eq!(cm(&mut d, cid, None, sub::ENUMERATE_CREDENTIALS_GET_NEXT_CREDENTIAL, None).0, st::NOT_ALLOWED);
    let t = cm_token(&mut d, cid, protocol, None);
    assert_eq!(cm(&mut d, cid, Some(&t), sub::ENUMERATE_RPS_BEGIN, None).0, st::OK);
    assert_eq!(d.ctap(cid, command::GET_INFO, None).0, st::OK);
    assert_eq!(cm(&mut d, cid, None, sub::ENUMERATE_RPS_GET_NEXT_RP, None).0, st::NOT_ALLOWED);
}

/// An enumeration is one pending operation (CTAP 2.1 §6.8.3, §6.8.5): only
/// its own channel continues it, and only within 30 seconds of its last step.
#[test]
fn an_enumeration_continues_only_on_its_channel_and_within_30_seconds() {
    let protocol = Protocol::Two;
    let (mut d, cid, _) = populated(protocol);
    let other = d.init();
    let rps_begin = |d: &mut Device| {
        let t = cm_token(d, cid, protocol, None);
        assert_eq!(cm(d, cid, Some(&t), sub::ENUMERATE_RPS_BEGIN, None).0, st::OK);
    };
    let creds_begin = |d: &mut Device| {
        let t = cm_token(d, cid, protocol, None);
        let params = Some(rp_hash_params(RP_A));
        assert_eq!(cm(d, cid, Some(&t), sub::ENUMERATE_CREDENTIALS_BEGIN, params).0, st::OK);
    };

    rps_begin(&mut d);
    assert_eq!(cm(&mut d, other, None, sub::ENUMERATE_RPS_GET_NEXT_RP, None).0, st::NOT_ALLOWED, "another channel");
    assert_eq!(cm(&mut d, cid, None, sub::ENUMERATE_RPS_GET_NEXT_RP, None).0, st::NOT_ALLOWED, "ended for its own too");
    creds_begin(&mut d);
    assert_eq!(cm(&mut d, other, None, sub::ENUMERATE_CREDENTIALS_GET_NEXT_CREDENTIAL, None).0, st::NOT_ALLOWED);

    rps_begin(&mut d);
    d.advance(std::time::Duration::from_secs(31));
    assert_eq!(cm(&mut d, cid, None, sub::ENUMERATE_RPS_GET_NEXT_RP, None).0, st::NOT_ALLOWED, "after 31 s");
    creds_begin(&mut d);
    d.advance(std::time::Duration::from_secs(31));
    assert_eq!(cm(&mut d, cid, None, sub::ENUMERATE_CREDENTIALS_GET_NEXT_CREDENTIAL, None).0, st::NOT_ALLOWED);

    rps_begin(&mut d);
    d.advance(std::time::Duration::from_secs(29));
    assert_eq!(cm(&mut d, cid, None, sub::ENUMERATE_RPS_GET_NEXT_RP, None).0, st::OK, "within 30 s");
}

#[test]
fn enumerate_credentials_returns_user_id_key_and_cred_protect() {
    for protocol in Protocol::BOTH {
        let (mut d, cid, creds) = populated(protocol);
        let t = cm_token(&mut d, cid, protocol, None);
        let (status, first) = cm(&mut d, cid, Some(&t), sub::ENUMERATE_CREDENTIALS_BEGIN, Some(rp_hash_params(RP_A)));
        assert_eq!(status, st::OK);
        let first = first.unwrap();
        assert_eq!(int(get(&first, 9)), 2, "totalCredentials");
        let (status, second) = cm(&mut d, cid, None, sub::ENUMERATE_CREDENTIALS_GET_NEXT_CREDENTIAL, None);
        assert_eq!(status, st::OK);
        let second = second.unwrap();
        assert_eq!(get(&second, 9), None);
        assert_eq!(cm(&mut d, cid, None, sub::ENUMERATE_CREDENTIALS_GET_NEXT_CREDENTIAL, None).0, st::NOT_ALLOWED);

        let expected = [(&creds[0], user(b"a-1", "alice", "Alice A"), 1), (&creds[1], user(b"a-2", "bob", "Bob A"), 2)];
        let mut found = 0;
        for answer in [&first, &second] {
            let id = responses::bytes(get_text(get(answer, 7).unwrap(), "id"));
            assert_eq!(get_text(get(answer, 7).unwrap(), "type"), Some(&Value::from("public-key")));
            let (cred, user_entity, level) = expected.iter().find(|(c, _, _)| c.id == id).expect("a known credential");
            found += 1;
            // User with name and displayName, by any key order.
            let got_user = get(answer, 6).unwrap();
            for key in ["id", "name", "displayName"] {
                assert_eq!(get_text(got_user, key), get_text(user_entity, key), "{key}");
            }
            assert_eq!(int(get(answer, 0x0A)), *level as i128, "credProtect");
            // CTAP 2.2: thirdPartyPayment (0x0C) for every credential.
            assert_eq!(get(answer, 0x0C), Some(&Value::Bool(false)), "thirdPartyPayment");

            // The public key is the credential's: it verifies an assertion.
            let cose = get(answer, 8).unwrap();
            assert_eq!(get(cose, 1), Some(&Value::from(2)));
            assert_eq!(get(cose, 3), Some(&Value::from(-7)));
            let mut sec1 = vec![4u8];
            sec1.extend(responses::bytes(get(cose, -2)));
            sec1.extend(responses::bytes(get(cose, -3)));
            let key = VerifyingKey::from_sec1_bytes(&sec1).unwrap();
            assert_eq!(key, cred.key);
            let (status, body) =
                d.ctap(cid, command::GET_ASSERTION, Some(requests::get_assertion(RP_A, &[&id], vec![])));
            assert_eq!(status, st::OK);
            let body = body.unwrap();
            let ad = responses::bytes(get(&body, 2));
            assert!(responses::verify(&key, &ad, &pc::GA_CLIENT_DATA_HASH, &responses::bytes(get(&body, 3))));
        }
        assert_eq!(found, 2);
    }
}

#[test]
fn delete_credential_removes_it() {
    for protocol in Protocol::BOTH {
        let (mut d, cid, creds) = populated(protocol);
        let t = cm_token(&mut d, cid, protocol, None);
        assert_eq!(cm(&mut d, cid, Some(&t), sub::DELETE_CREDENTIAL, Some(descriptor_params(&creds[2].id))).0, st::OK);
        let (status, _) =
            d.ctap(cid, command::GET_ASSERTION, Some(requests::get_assertion(RP_B, &[&creds[2].id], vec![])));
        assert_eq!(status, st::NO_CREDENTIALS);
        assert_eq!(
            d.ctap(cid, command::GET_ASSERTION, Some(requests::get_assertion(RP_B, &[], vec![]))).0,
            st::NO_CREDENTIALS
        );
        let (_, body) = cm(&mut d, cid, Some(&t), sub::GET_CREDS_METADATA, None);
        assert_eq!(int(get(&body.unwrap(), 1)), 2);
        // Deleting it again: it is gone.
        assert_eq!(
            cm(&mut d, cid, Some(&t), sub::DELETE_CREDENTIAL, Some(descriptor_params(&creds[2].id))).0,
            st::NO_CREDENTIALS
        );
        let (_, body) = cm(&mut d, cid, Some(&t), sub::ENUMERATE_RPS_BEGIN, None);
        assert_eq!(int(get(&body.unwrap(), 5)), 1, "only RP_A is left");
    }
}

#[test]
fn update_user_information_changes_name_and_display_name() {
    for protocol in Protocol::BOTH {
        let (mut d, cid, creds) = populated(protocol);
        let t = cm_token(&mut d, cid, protocol, None);
        let params =
            int_map(vec![(2, requests::descriptor(&creds[0].id)), (3, user(b"a-1", "alice.new", "Alice Renamed"))]);
        assert_eq!(cm(&mut d, cid, Some(&t), sub::UPDATE_USER_INFORMATION, Some(params)).0, st::OK);

        // Seen by a getAssertion with UV.
        let ga =
            pc::get_pin_uv_auth_token_with_permissions(&mut d, cid, protocol, PIN, permission::GA, Some(RP_A)).unwrap();
        let request = requests::get_assertion(RP_A, &[&creds[0].id], ga_auth(&ga));
        let (status, body) = d.ctap(cid, command::GET_ASSERTION, Some(request));
        assert_eq!(status, st::OK);
        let returned = get(body.as_ref().unwrap(), 4).unwrap();
        assert_eq!(get_text(returned, "name"), Some(&Value::from("alice.new")));
        assert_eq!(get_text(returned, "displayName"), Some(&Value::from("Alice Renamed")));

        // Fields left out are removed (a new cm token: the ga one replaced it).
        let t = cm_token(&mut d, cid, protocol, None);
        let params = int_map(vec![
            (2, requests::descriptor(&creds[0].id)),
            (3, text_map(&[("id", Value::Bytes(b"a-1".to_vec()))])),
        ]);
        assert_eq!(cm(&mut d, cid, Some(&t), sub::UPDATE_USER_INFORMATION, Some(params)).0, st::OK);
        let (_, body) = cm(&mut d, cid, Some(&t), sub::ENUMERATE_CREDENTIALS_BEGIN, Some(rp_hash_params(RP_A)));
        let mut answers = vec![body.unwrap()];
        answers.push(cm(&mut d, cid, None, sub::ENUMERATE_CREDENTIALS_GET_NEXT_CREDENTIAL, None).1.unwrap());
        let updated =
            answers.iter().find(|a| responses::bytes(get_text(get(a, 7).unwrap(), "id")) == creds[0].id).unwrap();
        assert_eq!(get(updated, 6), Some(&text_map(&[("id", Value::Bytes(b"a-1".to_vec()))])));

        // Another user's id is refused.
        let params = int_map(vec![(2, requests::descriptor(&creds[0].id)), (3, user(b"a-2", "mallory", "M"))]);
        assert_eq!(cm(&mut d, cid, Some(&t), sub::UPDATE_USER_INFORMATION, Some(params)).0, st::INVALID_PARAMETER);
    }
}

#[test]
fn missing_pin_uv_auth_param_is_puat_required_and_missing_protocol_is_missing_parameter() {
    for protocol in Protocol::BOTH {
        let (mut d, cid, creds) = populated(protocol);
        assert_eq!(cm(&mut d, cid, None, sub::GET_CREDS_METADATA, None).0, st::PUAT_REQUIRED);
        assert_eq!(cm(&mut d, cid, None, sub::ENUMERATE_RPS_BEGIN, None).0, st::PUAT_REQUIRED);
        assert_eq!(
            cm(&mut d, cid, None, sub::DELETE_CREDENTIAL, Some(descriptor_params(&creds[0].id))).0,
            st::PUAT_REQUIRED
        );
        let t = cm_token(&mut d, cid, protocol, None);
        let without_protocol =
            int_map(vec![(1, Value::from(sub::GET_CREDS_METADATA)), (4, Value::Bytes(t.param(&[1])))]);
        assert_eq!(d.ctap(cid, command::CREDENTIAL_MANAGEMENT, Some(without_protocol)).0, st::MISSING_PARAMETER);
    }
}

#[test]
fn a_token_without_cm_or_a_wrong_param_is_pin_auth_invalid() {
    for protocol in Protocol::BOTH {
        let (mut d, cid, creds) = populated(protocol);
        let mc_ga = pc::get_pin_token(&mut d, cid, protocol, PIN).unwrap();
        assert_eq!(cm(&mut d, cid, Some(&mc_ga), sub::GET_CREDS_METADATA, None).0, st::PIN_AUTH_INVALID);
        let others = pc::get_pin_uv_auth_token_with_permissions(
            &mut d,
            cid,
            protocol,
            PIN,
            permission::MC | permission::GA | permission::LBW | permission::ACFG,
            None,
        )
        .unwrap();
        assert_eq!(cm(&mut d, cid, Some(&others), sub::ENUMERATE_RPS_BEGIN, None).0, st::PIN_AUTH_INVALID);

        // A cm token over the wrong message: another subcommand's parameters.
        let t = cm_token(&mut d, cid, protocol, None);
        let mut request =
            pc::cred_mgmt_request(Some(&t), sub::DELETE_CREDENTIAL, Some(descriptor_params(&creds[0].id)));
        if let Value::Map(entries) = &mut request {
            for (k, v) in entries.iter_mut() {
                if *k == Value::from(2) {
                    *v = descriptor_params(&creds[1].id);
                }
            }
        }
        assert_eq!(d.ctap(cid, command::CREDENTIAL_MANAGEMENT, Some(request)).0, st::PIN_AUTH_INVALID);
        let (_, body) = cm(&mut d, cid, Some(&t), sub::GET_CREDS_METADATA, None);
        assert_eq!(int(get(&body.unwrap(), 1)), 3, "nothing deleted");
    }
}

#[test]
fn an_rp_bound_token_manages_only_that_rp() {
    for protocol in Protocol::BOTH {
        let (mut d, cid, creds) = populated(protocol);
        let t = cm_token(&mut d, cid, protocol, Some(RP_A));
        assert_eq!(cm(&mut d, cid, Some(&t), sub::GET_CREDS_METADATA, None).0, st::PIN_AUTH_INVALID);
        assert_eq!(cm(&mut d, cid, Some(&t), sub::ENUMERATE_RPS_BEGIN, None).0, st::PIN_AUTH_INVALID);
        let (status, _) = cm(&mut d, cid, Some(&t), sub::ENUMERATE_CREDENTIALS_BEGIN, Some(rp_hash_params(RP_B)));
        assert_eq!(status, st::PIN_AUTH_INVALID);
        assert_eq!(
            cm(&mut d, cid, Some(&t), sub::DELETE_CREDENTIAL, Some(descriptor_params(&creds[2].id))).0,
            st::PIN_AUTH_INVALID
        );
        let (status, body) = cm(&mut d, cid, Some(&t), sub::ENUMERATE_CREDENTIALS_BEGIN, Some(rp_hash_params(RP_A)));
        assert_eq!(status, st::OK);
        assert_eq!(int(get(&body.unwrap(), 9)), 2);
        assert_eq!(cm(&mut d, cid, Some(&t), sub::DELETE_CREDENTIAL, Some(descriptor_params(&creds[0].id))).0, st::OK);
    }
}

#[test]
fn without_credentials_enumeration_is_no_credentials_and_metadata_counts_zero() {
    for protocol in Protocol::BOTH {
        let mut d = Device::with_capacity(CAPACITY);
        let cid = d.init();
        assert_eq!(pc::set_pin(&mut d, cid, protocol, PIN), st::OK);
        let t = cm_token(&mut d, cid, protocol, None);
        let (status, body) = cm(&mut d, cid, Some(&t), sub::GET_CREDS_METADATA, None);
        assert_eq!(status, st::OK);
        let body = body.unwrap();
        assert_eq!((int(get(&body, 1)), int(get(&body, 2))), (0, CAPACITY as i128));
        assert_eq!(cm(&mut d, cid, Some(&t), sub::ENUMERATE_RPS_BEGIN, None).0, st::NO_CREDENTIALS);
        let (status, _) = cm(&mut d, cid, Some(&t), sub::ENUMERATE_CREDENTIALS_BEGIN, Some(rp_hash_params(RP_A)));
        assert_eq!(status, st::NO_CREDENTIALS);
        assert_eq!(
            cm(&mut d, cid, Some(&t), sub::DELETE_CREDENTIAL, Some(descriptor_params(&[7; 16]))).0,
            st::NO_CREDENTIALS
        );
    }
}

#[test]
fn unknown_subcommands_are_invalid_subcommand() {
    let protocol = Protocol::One;
    let (mut d, cid, _) = populated(protocol);
    let t = cm_token(&mut d, cid, protocol, None);
    for sub_command in [0x00u8, 0x08, 0x09, 0x41, 0xFF] {
        assert_eq!(cm(&mut d, cid, Some(&t), sub_command, None).0, st::INVALID_SUBCOMMAND, "{sub_command:#04x}");
        assert_eq!(cm(&mut d, cid, None, sub_command, None).0, st::INVALID_SUBCOMMAND, "{sub_command:#04x}");
    }
}

#[test]
fn the_preview_command_byte_0x41_is_served_like_0x0a() {
    // libfido2 1.12 (Debian 12) and OpenSSH send credential management as
    // the FIDO_2_1_PRE command 0x41.
    let (mut d, cid, _) = populated(Protocol::Two);
    let token = cm_token(&mut d, cid, Protocol::Two, None);
    let request = pc::cred_mgmt_request(Some(&token), sub::GET_CREDS_METADATA, None);
    let (status, body) = d.ctap(cid, 0x41, Some(request));
    assert_eq!(status, st::OK);
    assert_eq!(int(get(body.as_ref().unwrap(), 1)), 3);
    let (status, _) = d.ctap(cid, 0x41, Some(int_map(vec![(1, Value::from(sub::GET_CREDS_METADATA))])));
    assert_eq!(status, 0x36, "PUAT_REQUIRED without a token, as with 0x0A");
    // An enumeration begun with 0x41 continues with 0x41.
    let token = cm_token(&mut d, cid, Protocol::Two, None);
    let (status, body) = d.ctap(cid, 0x41, Some(pc::cred_mgmt_request(Some(&token), sub::ENUMERATE_RPS_BEGIN, None)));
    assert_eq!(status, st::OK);
    assert_eq!(int(get(body.as_ref().unwrap(), 5)), 2);
    let (status, _) = d.ctap(cid, 0x41, Some(pc::cred_mgmt_request(None, sub::ENUMERATE_RPS_GET_NEXT_RP, None)));
    assert_eq!(status, st::OK);
}

/// CTAP 2.2 §6.8.4: enumerateCredentials says which credentials are enabled
/// for third-party payment (0x0C), and updateUserInformation keeps it.
#[test]
fn enumerate_credentials_reports_third_party_payment() {
    let protocol = Protocol::Two;
    let (mut d, cid, _) = populated(protocol);
    let paying = make_rk(
        &mut d,
        cid,
        protocol,
        RP_B,
        user(b"b-2", "dave", "Dave B"),
        vec![(6, text_map(&[("thirdPartyPayment", Value::Bool(true))]))],
    );
    let enumerate = |d: &mut Device| {
        let t = cm_token(d, cid, protocol, None);
        let (status, first) = cm(d, cid, Some(&t), sub::ENUMERATE_CREDENTIALS_BEGIN, Some(rp_hash_params(RP_B)));
        assert_eq!(status, st::OK);
        let (status, second) = cm(d, cid, None, sub::ENUMERATE_CREDENTIALS_GET_NEXT_CREDENTIAL, None);
        assert_eq!(status, st::OK);
        let mut seen: Vec<(Vec<u8>, Value)> = [first.unwrap(), second.unwrap()]
            .iter()
            .map(|a| (responses::bytes(get_text(get(a, 7).unwrap(), "id")), get(a, 0x0C).cloned().unwrap()))
            .collect();
        seen.sort_by(|a, b| a.0.cmp(&b.0));
        seen
    };
    let seen = enumerate(&mut d);
    assert_eq!(seen.len(), 2);
    for (id, flag) in &seen {
        assert_eq!(flag, &Value::Bool(*id == paying.id), "only the paying credential");
    }
    let t = cm_token(&mut d, cid, protocol, None);
    let update = int_map(vec![(2, requests::descriptor(&paying.id)), (3, user(b"b-2", "dave2", "Dave 2"))]);
    assert_eq!(cm(&mut d, cid, Some(&t), sub::UPDATE_USER_INFORMATION, Some(update)).0, st::OK);
    assert_eq!(enumerate(&mut d), seen, "an update keeps it");
}
