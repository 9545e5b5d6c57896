//! authenticatorConfig (CTAP 2.1 §6.11), authenticatorLargeBlobs (§6.10)
//! and authenticatorReset's effect on both (§6.6), through the whole
//! device, with tokens and pinUvAuthParam messages from the independent
//! platform client, for both PIN/UV auth protocols.

use ciborium::value::Value;
use fidoseal_tests::platform_client::config_subcommand as sub;
use fidoseal_tests::platform_client::{self as pc, command, ga_auth, mc_auth, permission, PinToken, Protocol};
use fidoseal_tests::requests::{self, int_map, text_map};
use fidoseal_tests::responses::{self, get, get_text};
use fidoseal_tests::status as st;
use fidoseal_tests::Device;

const RP: &str = "example.com";
const PIN: &str = "123456";
/// The serialized large-blob array of a fresh authenticator (§6.10.2).
const EMPTY_ARRAY: &str = "8076be8b528d0075f7aae98d6fa57a6d3c";

fn hex(s: &str) -> Vec<u8> {
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
}

fn device() -> (Device, u32) {
    let mut d = Device::new();
    let cid = d.init();
    (d, cid)
}

fn device_with_pin(protocol: Protocol) -> (Device, u32) {
    let (mut d, cid) = device();
    assert_eq!(pc::set_pin(&mut d, cid, protocol, PIN), st::OK);
    (d, cid)
}

fn token(d: &mut Device, cid: u32, protocol: Protocol, permissions: u8) -> PinToken {
    pc::get_pin_uv_auth_token_with_permissions(d, cid, protocol, PIN, permissions, None).expect("token")
}

fn get_info(d: &mut Device, cid: u32) -> Value {
    let (status, body) = d.ctap(cid, command::GET_INFO, None);
    assert_eq!(status, st::OK);
    body.unwrap()
}

fn info_option(info: &Value, name: &str) -> Option<bool> {
    get_text(get(info, 4).unwrap(), name).and_then(Value::as_bool)
}

fn min_pin_length(d: &mut Device, cid: u32) -> i128 {
    i128::from(get(&get_info(d, cid), 0x0D).and_then(Value::as_integer).unwrap())
}

fn force_pin_change(d: &mut Device, cid: u32) -> Option<bool> {
    get(&get_info(d, cid), 0x0C).and_then(Value::as_bool)
}

fn config(d: &mut Device, cid: u32, token: Option<&PinToken>, sub_command: u8, params: Option<Value>) -> u8 {
    d.ctap(cid, command::CONFIG, Some(pc::config_request(token, sub_command, params))).0
}

fn min_length_params(length: u64) -> Value {
    int_map(vec![(1, Value::from(length))])
}

fn make_credential(d: &mut Device, cid: u32, rk: bool, extra: Vec<(i64, Value)>) -> u8 {
    let mut extra = extra;
    if rk {
        extra.push(requests::rk());
    }
    d.ctap(cid, command::MAKE_CREDENTIAL, Some(requests::make_credential(RP, b"u", "alice", extra))).0
}

// ---------------------------------------------------------------------------
// authenticatorConfig

#[test]
fn without_a_pin_toggle_always_uv_needs_no_auth_and_turns_make_cred_uv_not_rqd_off() {
    let (mut d, cid) = device();
    let info = get_info(&mut d, cid);
    assert_eq!((info_option(&info, "alwaysUv"), info_option(&info, "makeCredUvNotRqd")), (Some(false), Some(true)));
    assert_eq!(config(&mut d, cid, None, sub::TOGGLE_ALWAYS_UV, None), st::OK);
    let info = get_info(&mut d, cid);
    assert_eq!((info_option(&info, "alwaysUv"), info_option(&info, "makeCredUvNotRqd")), (Some(true), Some(false)));

    // §6.1.2 step 6.2.1 / §6.2.2 step 5.1.1: under alwaysUv, an
    // authenticator with clientPin support but no PIN yet answers
    // PUAT_REQUIRED (the platform then has a PIN set).
    assert_eq!(make_credential(&mut d, cid, false, vec![]), st::PUAT_REQUIRED);
    assert_eq!(make_credential(&mut d, cid, true, vec![]), st::PUAT_REQUIRED);
    let ga = requests::get_assertion(RP, &[], vec![]);
    assert_eq!(d.ctap(cid, command::GET_ASSERTION, Some(ga)).0, st::PUAT_REQUIRED);
    // Silent probes (up=false) still work: nothing the user is asked for.
    let probe = requests::get_assertion(RP, &[], vec![(5, text_map(&[("up", Value::Bool(false))]))]);
    assert_eq!(d.ctap(cid, command::GET_ASSERTION, Some(probe)).0, st::NO_CREDENTIALS);

    // Still no PIN: alwaysUv can be switched off again without auth (§6.11.1).
    assert_eq!(config(&mut d, cid, None, sub::TOGGLE_ALWAYS_UV, None), st::OK);
    assert_eq!(info_option(&get_info(&mut d, cid), "alwaysUv"), Some(false));
    assert_eq!(make_credential(&mut d, cid, false, vec![]), st::OK);
}

#[test]
fn with_a_pin_config_needs_an_acfg_token() {
    for protocol in Protocol::BOTH {
        let (mut d, cid) = device_with_pin(protocol);
        assert_eq!(config(&mut d, cid, None, sub::TOGGLE_ALWAYS_UV, None), st::PUAT_REQUIRED);
        let wrong = token(&mut d, cid, protocol, permission::MC | permission::GA | permission::CM | permission::LBW);
        assert_eq!(config(&mut d, cid, Some(&wrong), sub::TOGGLE_ALWAYS_UV, None), st::PIN_AUTH_INVALID);
        let t = token(&mut d, cid, protocol, permission::ACFG);
        // The parameter must cover this subcommand (and its parameters).
        let mut request = pc::config_request(Some(&t), sub::TOGGLE_ALWAYS_UV, None);
        if let Value::Map(entries) = &mut request {
            entries[0].1 = Value::from(sub::SET_MIN_PIN_LENGTH);
        }
        assert_eq!(d.ctap(cid, command::CONFIG, Some(request)).0, st::PIN_AUTH_INVALID);
        let without_protocol = int_map(vec![(1, Value::from(sub::TOGGLE_ALWAYS_UV)), (4, Value::Bytes(t.param(&[0])))]);
        assert_eq!(d.ctap(cid, command::CONFIG, Some(without_protocol)).0, 0x14, "MISSING_PARAMETER");
        assert_eq!(info_option(&get_info(&mut d, cid), "alwaysUv"), Some(false));

        assert_eq!(config(&mut d, cid, Some(&t), sub::TOGGLE_ALWAYS_UV, None), st::OK);
        // The acfg permission is not consumed by use.
        assert_eq!(config(&mut d, cid, Some(&t), sub::SET_MIN_PIN_LENGTH, Some(min_length_params(4))), st::OK);
        let info = get_info(&mut d, cid);
        assert_eq!((info_option(&info, "alwaysUv"), info_option(&info, "makeCredUvNotRqd")), (Some(true), Some(false)));
        // alwaysUv with a PIN: even a non-discoverable credential needs the token.
        assert_eq!(make_credential(&mut d, cid, false, vec![]), st::PUAT_REQUIRED);
        let mc = token(&mut d, cid, protocol, permission::MC);
        assert_eq!(make_credential(&mut d, cid, false, mc_auth(&mc)), st::OK);
        // Issuing the mc token voided the acfg token; a new one toggles back.
        assert_eq!(config(&mut d, cid, Some(&t), sub::TOGGLE_ALWAYS_UV, None), st::PIN_AUTH_INVALID);
        let t = token(&mut d, cid, protocol, permission::ACFG);
        assert_eq!(config(&mut d, cid, Some(&t), sub::TOGGLE_ALWAYS_UV, None), st::OK);
        assert_eq!(info_option(&get_info(&mut d, cid), "alwaysUv"), Some(false));
    }
}

#[test]
fn set_min_pin_length_only_raises_the_minimum() {
    for protocol in Protocol::BOTH {
        let (mut d, cid) = device_with_pin(protocol);
        assert_eq!(min_pin_length(&mut d, cid), 4);
        let t = token(&mut d, cid, protocol, permission::ACFG);
        assert_eq!(config(&mut d, cid, Some(&t), sub::SET_MIN_PIN_LENGTH, Some(min_length_params(6))), st::OK);
        assert_eq!(min_pin_length(&mut d, cid), 6);
        assert_eq!(force_pin_change(&mut d, cid), Some(false), "the 6-digit PIN is long enough");
        assert_eq!(
            config(&mut d, cid, Some(&t), sub::SET_MIN_PIN_LENGTH, Some(min_length_params(5))),
            st::PIN_POLICY_VIOLATION
        );
        assert_eq!(min_pin_length(&mut d, cid), 6);
        // The new minimum applies to new PINs.
        assert_eq!(pc::change_pin(&mut d, cid, protocol, PIN, "12345"), st::PIN_POLICY_VIOLATION);
        assert_eq!(pc::change_pin(&mut d, cid, protocol, PIN, "654321"), st::OK);
    }
}

#[test]
fn force_change_pin_blocks_tokens_until_the_pin_really_changes() {
    for protocol in Protocol::BOTH {
        let (mut d, cid) = device_with_pin(protocol);
        let t = token(&mut d, cid, protocol, permission::ACFG);
        let params = int_map(vec![(3, Value::Bool(true))]);
        assert_eq!(config(&mut d, cid, Some(&t), sub::SET_MIN_PIN_LENGTH, Some(params)), st::OK);
        assert_eq!(force_pin_change(&mut d, cid), Some(true));

        // The right PIN gets PIN_INVALID (§6.5.5.7; python-fido2's
        // test_force_pin_change expects the same), and costs no retry.
        assert_eq!(pc::get_pin_token(&mut d, cid, protocol, PIN).err(), Some(st::PIN_INVALID));
        let with_permissions =
            pc::get_pin_uv_auth_token_with_permissions(&mut d, cid, protocol, PIN, permission::GA, None);
        assert_eq!(with_permissions.err(), Some(st::PIN_INVALID));
        assert_eq!(pc::get_pin_retries(&mut d, cid).0, 8);
        // Tokens issued before are void too.
        assert_eq!(config(&mut d, cid, Some(&t), sub::TOGGLE_ALWAYS_UV, None), st::PIN_AUTH_INVALID);

        // Changing to the same PIN is no change.
        assert_eq!(pc::change_pin(&mut d, cid, protocol, PIN, PIN), st::PIN_POLICY_VIOLATION);
        assert_eq!(force_pin_change(&mut d, cid), Some(true));
        assert_eq!(pc::change_pin(&mut d, cid, protocol, PIN, "654321"), st::OK);
        assert_eq!(force_pin_change(&mut d, cid), Some(false));
        assert!(pc::get_pin_token(&mut d, cid, protocol, "654321").is_ok());
    }
}

#[test]
fn raising_the_minimum_above_the_current_pin_forces_a_change() {
    for protocol in Protocol::BOTH {
        let (mut d, cid) = device_with_pin(protocol);
        let t = token(&mut d, cid, protocol, permission::ACFG);
        assert_eq!(config(&mut d, cid, Some(&t), sub::SET_MIN_PIN_LENGTH, Some(min_length_params(8))), st::OK);
        assert_eq!(force_pin_change(&mut d, cid), Some(true));
        assert_eq!(pc::get_pin_token(&mut d, cid, protocol, PIN).err(), Some(st::PIN_INVALID));
        assert_eq!(pc::change_pin(&mut d, cid, protocol, PIN, "1234567"), st::PIN_POLICY_VIOLATION);
        assert_eq!(pc::change_pin(&mut d, cid, protocol, PIN, "12345678"), st::OK);
        assert_eq!(force_pin_change(&mut d, cid), Some(false));
    }
}

#[test]
fn force_change_pin_without_a_pin_is_pin_not_set() {
    let (mut d, cid) = device();
    let params = int_map(vec![(3, Value::Bool(true))]);
    assert_eq!(config(&mut d, cid, None, sub::SET_MIN_PIN_LENGTH, Some(params)), st::PIN_NOT_SET);
}

#[test]
fn more_than_eight_min_pin_length_rp_ids_is_invalid_length() {
    let (mut d, cid) = device();
    assert_eq!(get(&get_info(&mut d, cid), 0x10), Some(&Value::from(8)), "maxRPIDsForSetMinPINLength");
    let ids = |n: usize| Value::Array((0..n).map(|i| Value::from(format!("rp{i}.example"))).collect());
    assert_eq!(
        config(&mut d, cid, None, sub::SET_MIN_PIN_LENGTH, Some(int_map(vec![(2, ids(9))]))),
        st::INVALID_LENGTH
    );
    assert_eq!(config(&mut d, cid, None, sub::SET_MIN_PIN_LENGTH, Some(int_map(vec![(2, ids(8))]))), st::OK);
}

#[test]
fn enable_enterprise_attestation_without_a_policy_key_is_invalid_command() {
    for protocol in Protocol::BOTH {
        let (mut d, cid) = device_with_pin(protocol);
        let t = token(&mut d, cid, protocol, permission::ACFG);
        assert_eq!(config(&mut d, cid, Some(&t), sub::ENABLE_ENTERPRISE_ATTESTATION, None), st::INVALID_COMMAND);
        assert_eq!(info_option(&get_info(&mut d, cid), "ep"), None);
    }
    let (mut d, cid) = device();
    assert_eq!(config(&mut d, cid, None, sub::ENABLE_ENTERPRISE_ATTESTATION, None), st::INVALID_COMMAND);
}

// ---------------------------------------------------------------------------
// authenticatorLargeBlobs

fn large_blobs(d: &mut Device, cid: u32, params: Value) -> (u8, Option<Value>) {
    d.ctap(cid, command::LARGE_BLOBS, Some(params))
}

/// maxFragmentLength = maxMsgSize − 64 (§6.10.1), with maxMsgSize 57 + 29 × 59.
const MAX_FRAGMENT: usize = 57 + 29 * 59 - 64;

/// The whole serialized array, read as a platform does: fragments of
/// maxFragmentLength until a shorter one.
fn read_array(d: &mut Device, cid: u32) -> Vec<u8> {
    let mut array = Vec::new();
    loop {
        let (status, body) = large_blobs(d, cid, pc::large_blobs_get(MAX_FRAGMENT as u64, array.len() as u64));
        assert_eq!(status, st::OK);
        let fragment = responses::bytes(get(&body.unwrap(), 1));
        let done = fragment.len() < MAX_FRAGMENT;
        array.extend(fragment);
        if done {
            return array;
        }
    }
}

/// A serialized array of about `size` bytes.
fn sample_array(size: usize) -> Vec<u8> {
    let entry = int_map(vec![
        (1, Value::Bytes((0..size as u32).map(|i| i as u8).collect())),
        (2, Value::Bytes(vec![0x42; 12])),
        (3, Value::from(size as u64)),
    ]);
    pc::serialized_large_blob_array(&Value::Array(vec![entry]))
}

/// Writes `array` in at least two fragments (halves, or maxFragmentLength
/// each when halves would be longer); returns the status of the first and
/// of the last (those between must be OK).
fn write_in_two(d: &mut Device, cid: u32, token: Option<&PinToken>, array: &[u8]) -> (u8, u8) {
    let size = array.len().div_ceil(2).clamp(1, MAX_FRAGMENT);
    let fragments: Vec<&[u8]> = array.chunks(size).collect();
    let first = large_blobs(d, cid, pc::large_blobs_set(token, fragments[0], 0, Some(array.len() as u64))).0;
    let mut offset = fragments[0].len();
    let mut last = first;
    for (i, fragment) in fragments.iter().enumerate().skip(1) {
        last = large_blobs(d, cid, pc::large_blobs_set(token, fragment, offset as u64, None)).0;
        offset += fragment.len();
        if i + 1 < fragments.len() {
            assert_eq!(last, st::OK, "fragment {i}");
        }
    }
    (first, last)
}

#[test]
fn the_initial_large_blob_array_is_the_empty_array_and_its_hash() {
    let (mut d, cid) = device();
    assert_eq!(read_array(&mut d, cid), hex(EMPTY_ARRAY));
    // Partial reads.
    let (status, body) = large_blobs(&mut d, cid, pc::large_blobs_get(5, 3));
    assert_eq!(status, st::OK);
    assert_eq!(responses::bytes(get(&body.unwrap(), 1)), hex(EMPTY_ARRAY)[3..8].to_vec());
    let (status, body) = large_blobs(&mut d, cid, pc::large_blobs_get(10, 17));
    assert_eq!(status, st::OK);
    assert_eq!(responses::bytes(get(&body.unwrap(), 1)), Vec::<u8>::new());
    assert_eq!(large_blobs(&mut d, cid, pc::large_blobs_get(10, 18)).0, st::INVALID_PARAMETER, "offset past the end");
    let over = (MAX_FRAGMENT + 1) as u64;
    assert_eq!(
        large_blobs(&mut d, cid, pc::large_blobs_get(over, 0)).0,
        st::INVALID_LENGTH,
        "more than maxFragmentLength"
    );
    let set_over = pc::large_blobs_set(None, &vec![0; MAX_FRAGMENT + 1], 0, Some(4096));
    assert_eq!(large_blobs(&mut d, cid, set_over).0, st::INVALID_LENGTH, "a set fragment over maxFragmentLength");
    assert_eq!(large_blobs(&mut d, cid, pc::large_blobs_get(MAX_FRAGMENT as u64, 0)).0, st::OK);
}

#[test]
fn a_two_fragment_write_with_an_lbw_token_replaces_the_array() {
    for protocol in Protocol::BOTH {
        let (mut d, cid) = device_with_pin(protocol);
        let t = token(&mut d, cid, protocol, permission::LBW);
        let array = sample_array(600);
        assert_eq!(write_in_two(&mut d, cid, Some(&t), &array), (st::OK, st::OK));
        assert_eq!(read_array(&mut d, cid), array);
        // And again, smaller, with the same token (lbw is not consumed).
        let array = sample_array(10);
        assert_eq!(write_in_two(&mut d, cid, Some(&t), &array), (st::OK, st::OK));
        assert_eq!(read_array(&mut d, cid), array);
    }
}

#[test]
fn a_wrong_integrity_hash_is_integrity_failure_and_keeps_the_old_array() {
    for protocol in Protocol::BOTH {
        let (mut d, cid) = device_with_pin(protocol);
        let t = token(&mut d, cid, protocol, permission::LBW);
        let mut array = sample_array(100);
        let last = array.len() - 1;
        array[last] ^= 0xff;
        assert_eq!(write_in_two(&mut d, cid, Some(&t), &array), (st::OK, st::INTEGRITY_FAILURE));
        assert_eq!(read_array(&mut d, cid), hex(EMPTY_ARRAY));
    }
}

#[test]
fn fragments_out_of_sequence_are_invalid_seq() {
    for protocol in Protocol::BOTH {
        let (mut d, cid) = device_with_pin(protocol);
        let t = token(&mut d, cid, protocol, permission::LBW);
        let array = sample_array(100);
        let (first, second) = array.split_at(50);
        // A continuation with nothing begun.
        assert_eq!(large_blobs(&mut d, cid, pc::large_blobs_set(Some(&t), second, 50, None)).0, st::INVALID_SEQ);
        assert_eq!(
            large_blobs(&mut d, cid, pc::large_blobs_set(Some(&t), first, 0, Some(array.len() as u64))).0,
            st::OK
        );
        // Skipping ahead, or repeating.
        assert_eq!(large_blobs(&mut d, cid, pc::large_blobs_set(Some(&t), &second[1..], 51, None)).0, st::INVALID_SEQ);
        assert_eq!(large_blobs(&mut d, cid, pc::large_blobs_set(Some(&t), second, 49, None)).0, st::INVALID_SEQ);
        // The right offset still completes the write.
        assert_eq!(large_blobs(&mut d, cid, pc::large_blobs_set(Some(&t), second, 50, None)).0, st::OK);
        assert_eq!(read_array(&mut d, cid), array);
    }
}

/// A write in fragments is one pending operation (§6.10.3): another
/// channel's fragment, or one more than 30 seconds after the last, does not
/// continue it, and the array stays as it was.
#[test]
fn a_write_continues_only_on_its_channel_and_within_30_seconds() {
    let protocol = Protocol::Two;
    let (mut d, cid) = device_with_pin(protocol);
    let other = d.init();
    let array = sample_array(100);
    let (first, second) = array.split_at(50);
    // One token for all: getting one is a command of its own, which ends a write.
    let t = token(&mut d, cid, protocol, permission::LBW);
    let begin = |d: &mut Device| {
        let status = large_blobs(d, cid, pc::large_blobs_set(Some(&t), first, 0, Some(array.len() as u64))).0;
        assert_eq!(status, st::OK);
    };
    let finish = |d: &mut Device, on: u32| large_blobs(d, on, pc::large_blobs_set(Some(&t), second, 50, None)).0;

    begin(&mut d);
    assert_eq!(finish(&mut d, other), st::INVALID_SEQ, "another channel");
    assert_eq!(read_array(&mut d, cid), hex(EMPTY_ARRAY));
    begin(&mut d);
    d.advance(std::time::Duration::from_secs(31));
    assert_eq!(finish(&mut d, cid), st::INVALID_SEQ, "after 31 s");
    assert_eq!(read_array(&mut d, cid), hex(EMPTY_ARRAY));
    begin(&mut d);
    d.advance(std::time::Duration::from_secs(29));
    assert_eq!(finish(&mut d, cid), st::OK, "within 30 s");
    assert_eq!(read_array(&mut d, cid), array);
}

#[test]
fn a_length_over_4096_is_large_blob_storage_full() {
    let (mut d, cid) = device();
    assert_eq!(get(&get_info(&mut d, cid), 0x0B), Some(&Value::from(4096)), "maxSerializedLargeBlobArray");
    assert_eq!(
        large_blobs(&mut d, cid, pc::large_blobs_set(None, &[0; 16], 0, Some(4097))).0,
        st::LARGE_BLOB_STORAGE_FULL
    );
    // Exactly 4096 fits.
    let body = Value::Array(vec![Value::Bytes(vec![7; 4096 - 16 - 1 - 3])]);
    let array = pc::serialized_large_blob_array(&body);
    assert_eq!(array.len(), 4096);
    assert_eq!(write_in_two(&mut d, cid, None, &array), (st::OK, st::OK));
    assert_eq!(read_array(&mut d, cid), array);
}

#[test]
fn malformed_large_blob_requests_are_invalid_parameter() {
    let (mut d, cid) = device();
    let cases: Vec<(&str, Value)> = vec![
        ("get and set", int_map(vec![(1, Value::from(10)), (2, Value::Bytes(vec![1])), (3, Value::from(0))])),
        ("neither get nor set", int_map(vec![(3, Value::from(0))])),
        ("get without offset", int_map(vec![(1, Value::from(10))])),
        ("set without offset", int_map(vec![(2, Value::Bytes(vec![1])), (4, Value::from(17))])),
        ("get with length", int_map(vec![(1, Value::from(10)), (3, Value::from(0)), (4, Value::from(17))])),
        ("set at 0 without length", int_map(vec![(2, Value::Bytes(vec![1])), (3, Value::from(0))])),
        ("length under 17", int_map(vec![(2, Value::Bytes(vec![1])), (3, Value::from(0)), (4, Value::from(16))])),
    ];
    for (label, params) in cases {
        assert_eq!(large_blobs(&mut d, cid, params).0, st::INVALID_PARAMETER, "{label}");
    }
    assert_eq!(read_array(&mut d, cid), hex(EMPTY_ARRAY));
}

#[test]
fn with_a_pin_writes_need_an_lbw_token() {
    for protocol in Protocol::BOTH {
        let (mut d, cid) = device_with_pin(protocol);
        let array = sample_array(40);
        assert_eq!(
            large_blobs(&mut d, cid, pc::large_blobs_set(None, &array, 0, Some(array.len() as u64))).0,
            st::PUAT_REQUIRED
        );
        let others = token(&mut d, cid, protocol, permission::MC | permission::GA | permission::CM | permission::ACFG);
        assert_eq!(
            large_blobs(&mut d, cid, pc::large_blobs_set(Some(&others), &array, 0, Some(array.len() as u64))).0,
            st::PIN_AUTH_INVALID
        );
        // A parameter over another offset's message.
        let t = token(&mut d, cid, protocol, permission::LBW);
        let mut request = pc::large_blobs_set(Some(&t), &array, 0, Some(array.len() as u64));
        if let Value::Map(entries) = &mut request {
            for (k, v) in entries.iter_mut() {
                if *k == Value::from(5) {
                    *v = Value::Bytes(t.param(&pc::large_blob_message(1, &array)));
                }
            }
        }
        assert_eq!(large_blobs(&mut d, cid, request).0, st::PIN_AUTH_INVALID);
        assert_eq!(read_array(&mut d, cid), hex(EMPTY_ARRAY));
        // Reading needs nothing.
        let (status, _) = large_blobs(&mut d, cid, pc::large_blobs_get(100, 0));
        assert_eq!(status, st::OK);
        assert_eq!(
            large_blobs(&mut d, cid, pc::large_blobs_set(Some(&t), &array, 0, Some(array.len() as u64))).0,
            st::OK
        );
        assert_eq!(read_array(&mut d, cid), array);
    }
}

#[test]
fn without_a_pin_writes_need_no_auth() {
    let (mut d, cid) = device();
    let array = sample_array(300);
    assert_eq!(write_in_two(&mut d, cid, None, &array), (st::OK, st::OK));
    assert_eq!(read_array(&mut d, cid), array);
}

// ---------------------------------------------------------------------------
// authenticatorReset

#[test]
fn reset_clears_the_pin_the_config_and_the_large_blobs() {
    for protocol in Protocol::BOTH {
        let (mut d, cid) = device_with_pin(protocol);
        let t = token(&mut d, cid, protocol, permission::LBW | permission::ACFG | permission::MC | permission::GA);
        let array = sample_array(64);
        assert_eq!(write_in_two(&mut d, cid, Some(&t), &array), (st::OK, st::OK));
        assert_eq!(config(&mut d, cid, Some(&t), sub::SET_MIN_PIN_LENGTH, Some(min_length_params(6))), st::OK);
        let (_, body) = d.ctap(
            cid,
            command::MAKE_CREDENTIAL,
            Some(requests::make_credential(RP, b"u", "a", {
                let mut e = mc_auth(&t);
                e.push(requests::rk());
                e
            })),
        );
        let id = responses::parse_registration(&body.unwrap()).credential_id;

        assert_eq!(d.ctap(cid, command::RESET, None).0, st::OK);
        let info = get_info(&mut d, cid);
        assert_eq!(info_option(&info, "clientPin"), Some(false));
        assert_eq!(get(&info, 0x0D), Some(&Value::from(4)), "minPINLength back to 4");
        assert_eq!(read_array(&mut d, cid), hex(EMPTY_ARRAY));
        assert_eq!(pc::get_pin_token(&mut d, cid, protocol, PIN).err(), Some(st::PIN_NOT_SET));
        assert_eq!(
            d.ctap(cid, command::GET_ASSERTION, Some(requests::get_assertion(RP, &[&id], vec![]))).0,
            st::NO_CREDENTIALS,
            "the credential is gone"
        );
        // The old token went with the PIN.
        let request = requests::get_assertion(RP, &[&id], ga_auth(&t));
        assert_eq!(d.ctap(cid, command::GET_ASSERTION, Some(request)).0, st::PIN_AUTH_INVALID);
        // A new PIN can be set.
        assert_eq!(pc::set_pin(&mut d, cid, protocol, "4321"), st::OK);
        assert_eq!(pc::get_pin_retries(&mut d, cid).0, 8);
    }
}

// ---------------------------------------------------------------------------
// Built-in user verification protects the key as a PIN does

/// A device with built-in UV (fingerprint or password through the prompt)
/// and no PIN.
fn device_with_built_in_uv() -> (Device, u32) {
    let (d, cid) = device();
    d.prompt.offer_verification(vec![fidoseal_tests::ScriptedVerification::Verified; 4]);
    (d, cid)
}

fn uv_token(d: &mut Device, cid: u32, permissions: u8) -> PinToken {
    let ss = pc::key_agreement(d, cid, Protocol::Two);
    pc::request_token(d, cid, &ss, pc::uv_token_request(&ss, permissions, None)).expect("UV token")
}

/// §6.11.1, §6.10.3 step 5: "protected by some form of user verification"
/// is a PIN *or* built-in UV. With built-in UV and no PIN, nobody may
/// toggle alwaysUv, enable enterprise attestation, raise the minimum PIN
/// length or overwrite the large-blob array without a token.
#[test]
fn with_built_in_uv_and_no_pin_config_and_large_blob_writes_need_a_token() {
    let (mut d, cid) = device_with_built_in_uv();
    d.denied_rps.set_enterprise_attestation_capable(true);
    assert_eq!(info_option(&get_info(&mut d, cid), "clientPin"), Some(false));
    assert_eq!(config(&mut d, cid, None, sub::TOGGLE_ALWAYS_UV, None), st::PUAT_REQUIRED);
    assert_eq!(config(&mut d, cid, None, sub::ENABLE_ENTERPRISE_ATTESTATION, None), st::PUAT_REQUIRED);
    assert_eq!(config(&mut d, cid, None, sub::SET_MIN_PIN_LENGTH, Some(min_length_params(63))), st::PUAT_REQUIRED);
    let array = sample_array(40);
    let write = pc::large_blobs_set(None, &array, 0, Some(array.len() as u64));
    assert_eq!(large_blobs(&mut d, cid, write).0, st::PUAT_REQUIRED);
    let info = get_info(&mut d, cid);
    assert_eq!((info_option(&info, "alwaysUv"), info_option(&info, "ep")), (Some(false), Some(false)));
    assert_eq!(min_pin_length(&mut d, cid), 4);
    assert_eq!(read_array(&mut d, cid), hex(EMPTY_ARRAY));
    // A discoverable credential wants the token too (§6.1.2 step 6).
    assert_eq!(make_credential(&mut d, cid, true, vec![]), st::PUAT_REQUIRED);

    // The owner verifies and gets tokens with acfg and lbw.
    let t = uv_token(&mut d, cid, permission::ACFG | permission::LBW);
    assert_eq!(config(&mut d, cid, Some(&t), sub::TOGGLE_ALWAYS_UV, None), st::OK);
    assert_eq!(write_in_two(&mut d, cid, Some(&t), &array), (st::OK, st::OK));
    assert_eq!(read_array(&mut d, cid), array);
    assert_eq!(info_option(&get_info(&mut d, cid), "alwaysUv"), Some(true));
}

/// Configured built-in UV protects the key even while it cannot be asked
/// for (no agent in an active session): being away from the seat must
/// not open the key's settings to anyone who can open its hidraw node.
#[test]
fn configured_built_in_uv_protects_the_key_while_it_is_not_offered() {
    let (mut d, cid) = device();
    *d.prompt.verification_configured.lock().unwrap() = true;
    assert_eq!(info_option(&get_info(&mut d, cid), "uv"), None, "not offered now");
    assert_eq!(config(&mut d, cid, None, sub::TOGGLE_ALWAYS_UV, None), st::PUAT_REQUIRED);
    let array = sample_array(40);
    let write = pc::large_blobs_set(None, &array, 0, Some(array.len() as u64));
    assert_eq!(large_blobs(&mut d, cid, write).0, st::PUAT_REQUIRED);
    assert_eq!(info_option(&get_info(&mut d, cid), "alwaysUv"), Some(false));
}
