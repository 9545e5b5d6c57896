//! CTAP 2.1 extensions (§12) through the whole device: credProtect (§12.1),
//! credBlob (§12.2), largeBlobKey (§12.3), minPinLength (§12.4) and
//! hmac-secret (§12.5), with the independent platform client for the
//! PIN/UV auth protocol parts, for both protocols.

use ciborium::value::Value;
use fidoseal_tests::platform_client::{
    self as pc, command, ga_auth, mc_auth, parse_auth_data, permission, AuthData, PinToken, Protocol, SharedSecret,
};
use fidoseal_tests::requests::{self, int_map, text_map};
use fidoseal_tests::responses::{self, get};
use fidoseal_tests::status as st;
use fidoseal_tests::Device;

const RP: &str = "example.com";
const OTHER_RP: &str = "other.example";
const PIN: &str = "1234";

fn device() -> (Device, u32) {
    let mut d = Device::new();
    let cid = d.init();
    (d, cid)
}

fn ext(entries: &[(&str, Value)]) -> (i64, Value) {
    (6, text_map(entries))
}

fn ga_ext(entries: &[(&str, Value)]) -> (i64, Value) {
    (4, text_map(entries))
}

fn token(d: &mut Device, cid: u32, protocol: Protocol, permissions: u8) -> PinToken {
    pc::get_pin_uv_auth_token_with_permissions(d, cid, protocol, PIN, permissions, None).expect("token")
}

struct Made {
    id: Vec<u8>,
    auth_data: AuthData,
    body: Value,
}

fn make(d: &mut Device, cid: u32, rp: &str, user: &[u8], rk: bool, extra: Vec<(i64, Value)>) -> Made {
    let mut extra = extra;
    if rk {
        extra.push(requests::rk());
    }
    let (status, body) =
        d.ctap(cid, command::MAKE_CREDENTIAL, Some(requests::make_credential(rp, user, "alice", extra)));
    assert_eq!(status, st::OK, "makeCredential");
    let body = body.unwrap();
    let auth_data = parse_auth_data(&responses::bytes(get(&body, 2)));
    Made { id: auth_data.credential_id.clone().unwrap(), auth_data, body }
}

fn assert_status(d: &mut Device, cid: u32, rp: &str, allow: &[&[u8]], extra: Vec<(i64, Value)>) -> u8 {
    d.ctap(cid, command::GET_ASSERTION, Some(requests::get_assertion(rp, allow, extra))).0
}

fn assertion(d: &mut Device, cid: u32, rp: &str, allow: &[&[u8]], extra: Vec<(i64, Value)>) -> (Value, AuthData) {
    let (status, body) = d.ctap(cid, command::GET_ASSERTION, Some(requests::get_assertion(rp, allow, extra)));
    assert_eq!(status, st::OK, "getAssertion");
    let body = body.unwrap();
    let ad = parse_auth_data(&responses::bytes(get(&body, 2)));
    (body, ad)
}

fn credential_id_of(body: &Value) -> Vec<u8> {
    responses::bytes(responses::get_text(get(body, 1).unwrap(), "id"))
}

// ---------------------------------------------------------------------------
// credProtect

#[test]
fn cred_protect_levels_are_echoed_with_the_ed_flag() {
    let (mut d, cid) = device();
    for level in 1u8..=3 {
        for rk in [false, true] {
            let m =
                make(&mut d, cid, RP, &[level, u8::from(rk)], rk, vec![ext(&[("credProtect", Value::from(level))])]);
            assert_eq!(m.auth_data.flags, AuthData::UP | AuthData::AT | AuthData::ED);
            assert_eq!(m.auth_data.extensions, Some(text_map(&[("credProtect", Value::from(level))])));
        }
    }
    // Not asked for, not reported.
    let m = make(&mut d, cid, RP, b"plain", true, vec![]);
    assert_eq!(m.auth_data.flags, AuthData::UP | AuthData::AT);
    assert_eq!(m.auth_data.extensions, None);
}

#[test]
fn cred_protect_outside_1_to_3_is_invalid_parameter() {
    let (mut d, cid) = device();
    for level in [0u8, 4, 255] {
        let params = requests::make_credential(RP, b"u", "alice", vec![ext(&[("credProtect", Value::from(level))])]);
        assert_eq!(d.ctap(cid, command::MAKE_CREDENTIAL, Some(params)).0, st::INVALID_PARAMETER, "level {level}");
    }
    assert!(d.prompt.asked().is_empty());
}

#[test]
fn cred_protect_2_hides_discoverable_credentials_without_uv_or_allow_list() {
    for protocol in Protocol::BOTH {
        let (mut d, cid) = device();
        let m = make(&mut d, cid, RP, b"u2", true, vec![ext(&[("credProtect", Value::from(2))])]);
        assert_eq!(pc::set_pin(&mut d, cid, protocol, PIN), st::OK);
        assert_eq!(assert_status(&mut d, cid, RP, &[], vec![]), st::NO_CREDENTIALS);
        // Named in the allow list: usable without UV.
        let (_, ad) = assertion(&mut d, cid, RP, &[&m.id], vec![]);
        assert_eq!(ad.flags, AuthData::UP);
        // With UV: discoverable again.
        let t = token(&mut d, cid, protocol, permission::GA);
        let (body, ad) = assertion(&mut d, cid, RP, &[], ga_auth(&t));
        assert_eq!(credential_id_of(&body), m.id);
        assert_eq!(ad.flags, AuthData::UP | AuthData::UV);
    }
}

#[test]
fn cred_protect_3_needs_uv_even_with_an_allow_list() {
    for protocol in Protocol::BOTH {
        let (mut d, cid) = device();
        let rk = make(&mut d, cid, RP, b"u3", true, vec![ext(&[("credProtect", Value::from(3))])]);
        let non_rk = make(&mut d, cid, RP, b"u4", false, vec![ext(&[("credProtect", Value::from(3))])]);
        assert_eq!(pc::set_pin(&mut d, cid, protocol, PIN), st::OK);
        assert_eq!(assert_status(&mut d, cid, RP, &[], vec![]), st::NO_CREDENTIALS);
        assert_eq!(assert_status(&mut d, cid, RP, &[&rk.id], vec![]), st::NO_CREDENTIALS);
        assert_eq!(assert_status(&mut d, cid, RP, &[&non_rk.id], vec![]), st::NO_CREDENTIALS);
        for id in [&rk.id, &non_rk.id] {
            let t = token(&mut d, cid, protocol, permission::GA);
            let (body, ad) = assertion(&mut d, cid, RP, &[id], ga_auth(&t));
            assert_eq!(&credential_id_of(&body), id);
            assert_eq!(ad.flags, AuthData::UP | AuthData::UV);
        }
        let t = token(&mut d, cid, protocol, permission::GA);
        let (body, _) = assertion(&mut d, cid, RP, &[], ga_auth(&t));
        assert_eq!(credential_id_of(&body), rk.id);
    }
}

#[test]
fn exclude_list_ignores_a_cred_protect_3_credential_without_uv() {
    for protocol in Protocol::BOTH {
        let (mut d, cid) = device();
        let level3 = make(&mut d, cid, RP, b"u3", false, vec![ext(&[("credProtect", Value::from(3))])]);
        let level2 = make(&mut d, cid, RP, b"u2", false, vec![ext(&[("credProtect", Value::from(2))])]);
        assert_eq!(pc::set_pin(&mut d, cid, protocol, PIN), st::OK);
        let exclude = |id: &[u8]| (5, Value::Array(vec![requests::descriptor(id)]));

        // Without UV the level-3 credential is invisible: a new credential is made.
        make(&mut d, cid, RP, b"new", false, vec![exclude(&level3.id)]);
        // Level 2 is excluded without UV.
        let params = requests::make_credential(RP, b"new", "alice", vec![exclude(&level2.id)]);
        assert_eq!(d.ctap(cid, command::MAKE_CREDENTIAL, Some(params)).0, st::CREDENTIAL_EXCLUDED);
        // With UV, level 3 is excluded too.
        let t = token(&mut d, cid, protocol, permission::MC);
        let mut extra = mc_auth(&t);
        extra.push(exclude(&level3.id));
        let params = requests::make_credential(RP, b"new", "alice", extra);
        assert_eq!(d.ctap(cid, command::MAKE_CREDENTIAL, Some(params)).0, st::CREDENTIAL_EXCLUDED);
    }
}

// ---------------------------------------------------------------------------
// hmac-secret

fn salt(byte: u8) -> [u8; 32] {
    [byte; 32]
}

/// getAssertion with hmac-secret: the decrypted output (32 or 64 bytes).
fn hmac_output(
    d: &mut Device,
    cid: u32,
    protocol: Protocol,
    allow: &[&[u8]],
    salts: &[u8],
    token: Option<&PinToken>,
) -> Vec<u8> {
    let ss = pc::key_agreement(d, cid, protocol);
    let mut extra = vec![(4, pc::hmac_secret_extension(&ss, salts))];
    if let Some(t) = token {
        extra.extend(ga_auth(t));
    }
    let (_, ad) = assertion(d, cid, RP, allow, extra);
    assert_eq!(ad.flags & AuthData::ED, AuthData::ED);
    let encrypted = responses::bytes(ad.extension("hmac-secret"));
    let overhead = if protocol == Protocol::One { 0 } else { 16 };
    assert_eq!(encrypted.len(), salts.len() + overhead, "{protocol:?}");
    let out = pc::decrypt_hmac_secret_output(&ss, &encrypted);
    assert_eq!(out.len(), salts.len());
    out
}

#[test]
fn hmac_secret_make_credential_reports_true() {
    let (mut d, cid) = device();
    for rk in [false, true] {
        let m = make(&mut d, cid, RP, &[u8::from(rk)], rk, vec![ext(&[("hmac-secret", Value::Bool(true))])]);
        assert_eq!(m.auth_data.flags, AuthData::UP | AuthData::AT | AuthData::ED);
        assert_eq!(m.auth_data.extensions, Some(text_map(&[("hmac-secret", Value::Bool(true))])));
    }
}

#[test]
fn hmac_secret_outputs_are_stable_per_credential_and_uv_state_for_both_protocols() {
    let (mut d, cid) = device();
    let a = make(&mut d, cid, RP, b"a", true, vec![ext(&[("hmac-secret", Value::Bool(true))])]);
    let b = make(&mut d, cid, RP, b"b", false, vec![ext(&[("hmac-secret", Value::Bool(true))])]);
    assert_eq!(pc::set_pin(&mut d, cid, Protocol::Two, PIN), st::OK);
    let two_salts: Vec<u8> = [salt(1), salt(2)].concat();

    let mut per_protocol = Vec::new();
    for protocol in Protocol::BOTH {
        // Without UV: one salt, then again with a fresh key agreement.
        let one = hmac_output(&mut d, cid, protocol, &[&a.id], &salt(1), None);
        assert_eq!(hmac_output(&mut d, cid, protocol, &[&a.id], &salt(1), None), one, "stable");
        // Two salts: the first half is the one-salt output, the second differs.
        let both = hmac_output(&mut d, cid, protocol, &[&a.id], &two_salts, None);
        assert_eq!(both[..32], one[..]);
        assert_ne!(both[32..], one[..]);
        assert_eq!(both[32..], hmac_output(&mut d, cid, protocol, &[&a.id], &salt(2), None)[..]);
        // Discovered rather than named: the same credential, the same output.
        assert_eq!(hmac_output(&mut d, cid, protocol, &[], &salt(1), None), one);

        // With UV: another CredRandom, stable too.
        let t = token(&mut d, cid, protocol, permission::GA);
        let uv = hmac_output(&mut d, cid, protocol, &[&a.id], &salt(1), Some(&t));
        assert_ne!(uv, one, "CredRandomWithUV differs from CredRandomWithoutUV");
        let t = token(&mut d, cid, protocol, permission::GA);
        assert_eq!(hmac_output(&mut d, cid, protocol, &[&a.id], &two_salts, Some(&t))[..32], uv[..]);

        // Another credential (non-resident): other outputs, also stable.
        let other = hmac_output(&mut d, cid, protocol, &[&b.id], &salt(1), None);
        assert_ne!(other, one);
        assert_eq!(hmac_output(&mut d, cid, protocol, &[&b.id], &salt(1), None), other);
        let t = token(&mut d, cid, protocol, permission::GA);
        let other_uv = hmac_output(&mut d, cid, protocol, &[&b.id], &salt(1), Some(&t));
        assert_ne!(other_uv, other);
        assert_ne!(other_uv, uv);
        per_protocol.push((one, uv, other));
    }
    // The PRF does not depend on the transport protocol used to ask for it.
    assert_eq!(per_protocol[0], per_protocol[1]);
}

#[test]
fn hmac_secret_without_the_protocol_key_is_protocol_one() {
    let (mut d, cid) = device();
    let a = make(&mut d, cid, RP, b"a", false, vec![ext(&[("hmac-secret", Value::Bool(true))])]);
    let expected = hmac_output(&mut d, cid, Protocol::One, &[&a.id], &salt(7), None);
    let ss = pc::key_agreement(&mut d, cid, Protocol::One);
    let input = pc::hmac_secret_input(&ss, &salt(7), false);
    let (_, ad) = assertion(&mut d, cid, RP, &[&a.id], vec![ga_ext(&[("hmac-secret", input)])]);
    assert_eq!(pc::decrypt_hmac_secret_output(&ss, &responses::bytes(ad.extension("hmac-secret"))), expected);
}

#[test]
fn hmac_secret_with_a_bad_salt_auth_is_pin_auth_invalid() {
    let (mut d, cid) = device();
    let a = make(&mut d, cid, RP, b"a", false, vec![ext(&[("hmac-secret", Value::Bool(true))])]);
    for protocol in Protocol::BOTH {
        let ss = pc::key_agreement(&mut d, cid, protocol);
        let salt_enc = ss.encrypt(&salt(1));
        let mut auth = ss.authenticate(&salt_enc);
        auth[3] ^= 0x80;
        let input = int_map(vec![
            (1, ss.platform_key.clone()),
            (2, Value::Bytes(salt_enc.clone())),
            (3, Value::Bytes(auth)),
            (4, Value::from(protocol.id())),
        ]);
        let asked = d.prompt.asked().len();
        assert_eq!(
            assert_status(&mut d, cid, RP, &[&a.id], vec![ga_ext(&[("hmac-secret", input)])]),
            st::PIN_AUTH_INVALID
        );
        assert_eq!(d.prompt.asked().len(), asked, "refused before any touch");
    }
}

fn hmac_secret_status(
    d: &mut Device,
    cid: u32,
    protocol: Protocol,
    id: &[u8],
    salts: &[u8],
    extra: Vec<(i64, Value)>,
) -> u8 {
    let ss: SharedSecret = pc::key_agreement(d, cid, protocol);
    let mut extra = extra;
    extra.push(ga_ext(&[("hmac-secret", pc::hmac_secret_input(&ss, salts, true))]));
    assert_status(d, cid, RP, &[id], extra)
}

#[test]
fn hmac_secret_salts_of_other_lengths_are_invalid_length() {
    let (mut d, cid) = device();
    let a = make(&mut d, cid, RP, b"a", false, vec![ext(&[("hmac-secret", Value::Bool(true))])]);
    for protocol in Protocol::BOTH {
        for len in [16usize, 48, 96] {
            assert_eq!(
                hmac_secret_status(&mut d, cid, protocol, &a.id, &vec![9; len], vec![]),
                st::INVALID_LENGTH,
                "{len}"
            );
        }
    }
}

#[test]
fn hmac_secret_with_up_false_is_unsupported_option() {
    let (mut d, cid) = device();
    let a = make(&mut d, cid, RP, b"a", false, vec![ext(&[("hmac-secret", Value::Bool(true))])]);
    for protocol in Protocol::BOTH {
        let up_false = (5, text_map(&[("up", Value::Bool(false))]));
        assert_eq!(hmac_secret_status(&mut d, cid, protocol, &a.id, &salt(1), vec![up_false]), st::UNSUPPORTED_OPTION);
    }
}

#[test]
fn a_credential_made_without_hmac_secret_gives_no_output() {
    let (mut d, cid) = device();
    let plain = make(&mut d, cid, RP, b"p", false, vec![]);
    for protocol in Protocol::BOTH {
        let ss = pc::key_agreement(&mut d, cid, protocol);
        let (_, ad) = assertion(&mut d, cid, RP, &[&plain.id], vec![(4, pc::hmac_secret_extension(&ss, &salt(1)))]);
        assert_eq!(ad.flags, AuthData::UP, "no ED flag");
        assert_eq!(ad.extensions, None);
    }
}

// ---------------------------------------------------------------------------
// credBlob

#[test]
fn cred_blob_up_to_32_bytes_is_stored_and_returned() {
    for rk in [true, false] {
        let (mut d, cid) = device();
        let blob: Vec<u8> = (0..32).collect();
        let m = make(&mut d, cid, RP, b"b", rk, vec![ext(&[("credBlob", Value::Bytes(blob.clone()))])]);
        assert_eq!(m.auth_data.extensions, Some(text_map(&[("credBlob", Value::Bool(true))])));
        let (_, ad) = assertion(&mut d, cid, RP, &[&m.id], vec![ga_ext(&[("credBlob", Value::Bool(true))])]);
        assert_eq!(ad.extensions, Some(text_map(&[("credBlob", Value::Bytes(blob))])), "rk: {rk}");
        // Not asked for, not returned.
        let (_, ad) = assertion(&mut d, cid, RP, &[&m.id], vec![]);
        assert_eq!(ad.extensions, None);
    }
}

#[test]
fn cred_blob_of_33_bytes_is_not_stored() {
    for rk in [true, false] {
        let (mut d, cid) = device();
        let m = make(&mut d, cid, RP, b"b", rk, vec![ext(&[("credBlob", Value::Bytes(vec![7; 33]))])]);
        assert_eq!(m.auth_data.extensions, Some(text_map(&[("credBlob", Value::Bool(false))])));
        let (_, ad) = assertion(&mut d, cid, RP, &[&m.id], vec![ga_ext(&[("credBlob", Value::Bool(true))])]);
        assert_eq!(ad.extensions, Some(text_map(&[("credBlob", Value::Bytes(vec![]))])), "empty when none stored");
    }
}

// ---------------------------------------------------------------------------
// largeBlobKey

#[test]
fn large_blob_key_is_the_same_from_make_credential_get_assertion_and_credential_management() {
    for protocol in Protocol::BOTH {
        let (mut d, cid) = device();
        let lbk = ext(&[("largeBlobKey", Value::Bool(true))]);
        let a = make(&mut d, cid, RP, b"a", true, vec![lbk.clone()]);
        let b = make(&mut d, cid, RP, b"b", true, vec![lbk]);
        let key_a = responses::bytes(get(&a.body, 5));
        let key_b = responses::bytes(get(&b.body, 5));
        assert_eq!((key_a.len(), key_b.len()), (32, 32));
        assert_ne!(key_a, key_b);
        assert_eq!(a.auth_data.extensions, None, "largeBlobKey has no authData output");

        let (body, _) = assertion(&mut d, cid, RP, &[&a.id], vec![ga_ext(&[("largeBlobKey", Value::Bool(true))])]);
        assert_eq!(responses::bytes(get(&body, 7)), key_a);
        let (body, _) = assertion(&mut d, cid, RP, &[&a.id], vec![]);
        assert_eq!(get(&body, 7), None, "only when asked for");

        assert_eq!(pc::set_pin(&mut d, cid, protocol, PIN), st::OK);
        let t = token(&mut d, cid, protocol, permission::CM);
        let params = int_map(vec![(1, Value::Bytes(pc::sha256(RP.as_bytes()).to_vec()))]);
        let (status, body) =
            d.ctap(cid, command::CREDENTIAL_MANAGEMENT, Some(pc::cred_mgmt_request(Some(&t), 0x04, Some(params))));
        assert_eq!(status, st::OK);
        let mut from_cm = vec![responses::bytes(get(body.as_ref().unwrap(), 0x0B))];
        let (status, body) = d.ctap(cid, command::CREDENTIAL_MANAGEMENT, Some(pc::cred_mgmt_request(None, 0x05, None)));
        assert_eq!(status, st::OK);
        from_cm.push(responses::bytes(get(body.as_ref().unwrap(), 0x0B)));
        from_cm.sort();
        let mut expected = vec![key_a, key_b];
        expected.sort();
        assert_eq!(from_cm, expected);
    }
}

#[test]
fn large_blob_key_on_a_non_discoverable_credential_is_invalid_option() {
    let (mut d, cid) = device();
    let params = requests::make_credential(RP, b"u", "alice", vec![ext(&[("largeBlobKey", Value::Bool(true))])]);
    assert_eq!(d.ctap(cid, command::MAKE_CREDENTIAL, Some(params)).0, st::INVALID_OPTION);
}

// ---------------------------------------------------------------------------
// minPinLength

#[test]
fn min_pin_length_is_reported_only_to_rp_ids_set_through_set_min_pin_length() {
    let (mut d, cid) = device();
    let min_pin_length = ext(&[("minPinLength", Value::Bool(true))]);
    // Nobody is on the list yet.
    let m = make(&mut d, cid, RP, b"u", false, vec![min_pin_length.clone()]);
    assert_eq!(m.auth_data.extensions, None);

    // No PIN set: authenticatorConfig needs no token.
    let params = int_map(vec![(1, Value::from(6)), (2, Value::Array(vec![Value::from(RP)]))]);
    let (status, _) = d.ctap(cid, command::CONFIG, Some(pc::config_request(None, 0x03, Some(params))));
    assert_eq!(status, st::OK);

    let m = make(&mut d, cid, RP, b"u", false, vec![min_pin_length.clone()]);
    assert_eq!(m.auth_data.flags & AuthData::ED, AuthData::ED);
    assert_eq!(m.auth_data.extensions, Some(text_map(&[("minPinLength", Value::from(6))])));
    let m = make(&mut d, cid, OTHER_RP, b"u", false, vec![min_pin_length]);
    assert_eq!(m.auth_data.extensions, None, "not on the list");
    let m = make(&mut d, cid, RP, b"u", false, vec![]);
    assert_eq!(m.auth_data.extensions, None, "not asked for");
}

// ---------------------------------------------------------------------------
// hmac-secret-mc (CTAP 2.2 §12.8): hmac-secret's outputs at makeCredential

/// makeCredential with "hmac-secret": true and "hmac-secret-mc" salts; the
/// response body and the decrypted hmac-secret-mc output.
fn make_with_hmac_secret_mc(
    d: &mut Device,
    cid: u32,
    protocol: Protocol,
    user: &[u8],
    rk: bool,
    salts: &[u8],
    token: Option<&PinToken>,
) -> (Made, Vec<u8>) {
    let ss = pc::key_agreement(d, cid, protocol);
    let mut extra =
        vec![ext(&[("hmac-secret", Value::Bool(true)), ("hmac-secret-mc", pc::hmac_secret_input(&ss, salts, true))])];
    if let Some(t) = token {
        extra.extend(mc_auth(t));
    }
    let m = make(d, cid, RP, user, rk, extra);
    assert_eq!(m.auth_data.extension("hmac-secret"), Some(&Value::Bool(true)));
    let encrypted = responses::bytes(m.auth_data.extension("hmac-secret-mc"));
    let out = pc::decrypt_hmac_secret_output(&ss, &encrypted);
    assert_eq!(out.len(), salts.len());
    (m, out)
}

#[test]
fn get_info_lists_hmac_secret_mc() {
    let (mut d, cid) = device();
    let (_, info) = d.ctap(cid, command::GET_INFO, None);
    let extensions = get(info.as_ref().unwrap(), 2).unwrap().as_array().unwrap().clone();
    assert!(extensions.contains(&Value::from("hmac-secret")) && extensions.contains(&Value::from("hmac-secret-mc")));
}

#[test]
fn hmac_secret_mc_outputs_are_the_ones_get_assertion_gives_later_for_both_protocols() {
    for protocol in Protocol::BOTH {
        for rk in [false, true] {
            let (mut d, cid) = device();
            let two_salts = [salt(1), salt(2)].concat();
            let (m, at_creation) = make_with_hmac_secret_mc(&mut d, cid, protocol, b"mc", rk, &two_salts, None);
            assert_ne!(at_creation[..32], at_creation[32..], "one output per salt");
            // Without UV at creation: the CredRandom without UV.
            assert_eq!(hmac_output(&mut d, cid, protocol, &[&m.id], &two_salts, None), at_creation, "rk {rk}");
            assert_eq!(hmac_output(&mut d, cid, protocol, &[&m.id], &salt(1), None), at_creation[..32]);
        }
    }
}

#[test]
fn hmac_secret_mc_with_uv_gives_the_outputs_with_uv() {
    for protocol in Protocol::BOTH {
        let (mut d, cid) = device();
        assert_eq!(pc::set_pin(&mut d, cid, protocol, PIN), st::OK);
        let t = token(&mut d, cid, protocol, permission::MC);
        let (m, with_uv) = make_with_hmac_secret_mc(&mut d, cid, protocol, b"uv", true, &salt(5), Some(&t));
        assert_eq!(m.auth_data.flags & AuthData::UV, AuthData::UV);
        let t = token(&mut d, cid, protocol, permission::GA);
        assert_eq!(hmac_output(&mut d, cid, protocol, &[&m.id], &salt(5), Some(&t)), with_uv);
        // The credential is usable without UV, with the other CredRandom.
        assert_ne!(hmac_output(&mut d, cid, protocol, &[&m.id], &salt(5), None), with_uv);
    }
}

/// makeCredential's status with this extensions map.
fn make_status(d: &mut Device, cid: u32, extensions: Value) -> u8 {
    d.ctap(cid, command::MAKE_CREDENTIAL, Some(requests::make_credential(RP, b"bad", "alice", vec![(6, extensions)]))).0
}

#[test]
fn hmac_secret_mc_with_bad_input_is_refused_before_anyone_is_asked() {
    for protocol in Protocol::BOTH {
        let (mut d, cid) = device();
        let ss = pc::key_agreement(&mut d, cid, protocol);
        let with = |input: Value| text_map(&[("hmac-secret", Value::Bool(true)), ("hmac-secret-mc", input)]);
        // saltAuth of other bytes: PIN_AUTH_INVALID (§12.5 step 3, as at getAssertion).
        let mut input = pc::hmac_secret_input(&ss, &salt(1), true);
        if let Value::Map(entries) = &mut input {
            entries[2].1 = Value::Bytes(vec![0; protocol.tag_len()]);
        }
        assert_eq!(make_status(&mut d, cid, with(input)), st::PIN_AUTH_INVALID);
        // Salts of neither 32 nor 64 bytes.
        for len in [16, 48, 96] {
            let input = pc::hmac_secret_input(&ss, &vec![3; len], true);
            assert_eq!(make_status(&mut d, cid, with(input)), st::INVALID_LENGTH, "{len} bytes");
        }
        // Wrong CBOR types and a missing member.
        assert_eq!(make_status(&mut d, cid, with(Value::Bool(true))), st::CBOR_UNEXPECTED_TYPE);
        let mut no_salt_auth = pc::hmac_secret_input(&ss, &salt(1), true);
        if let Value::Map(entries) = &mut no_salt_auth {
            entries.remove(2);
        }
        assert_eq!(make_status(&mut d, cid, with(no_salt_auth)), st::MISSING_PARAMETER);
        let mut text_salts = pc::hmac_secret_input(&ss, &salt(1), true);
        if let Value::Map(entries) = &mut text_salts {
            entries[1].1 = Value::from("salts");
        }
        assert_eq!(make_status(&mut d, cid, with(text_salts)), st::CBOR_UNEXPECTED_TYPE);
        // An unsupported protocol.
        let mut bad_protocol = pc::hmac_secret_input(&ss, &salt(1), true);
        if let Value::Map(entries) = &mut bad_protocol {
            entries[3].1 = Value::from(7);
        }
        assert_eq!(make_status(&mut d, cid, with(bad_protocol)), st::INVALID_PARAMETER);
        assert!(d.prompt.asked().is_empty(), "nobody was asked");
    }
}

#[test]
fn hmac_secret_mc_without_hmac_secret_is_ignored() {
    let (mut d, cid) = device();
    let ss = pc::key_agreement(&mut d, cid, Protocol::Two);
    for hmac_secret in [None, Some(false)] {
        let mut entries = vec![("hmac-secret-mc", pc::hmac_secret_input(&ss, &salt(1), true))];
        if let Some(v) = hmac_secret {
            entries.push(("hmac-secret", Value::Bool(v)));
        }
        let m = make(&mut d, cid, RP, b"ignored", false, vec![ext(&entries)]);
        assert_eq!(m.auth_data.extensions, None, "hmac-secret {hmac_secret:?}");
        assert_eq!(m.auth_data.flags, AuthData::UP | AuthData::AT);
    }
}

// ---------------------------------------------------------------------------
// thirdPartyPayment (CTAP 2.2 §12.9)

#[test]
fn third_party_payment_is_kept_with_the_credential_and_reported_when_asked() {
    let (mut d, cid) = device();
    let (_, info) = d.ctap(cid, command::GET_INFO, None);
    let extensions = get(info.as_ref().unwrap(), 2).unwrap().as_array().unwrap().clone();
    assert!(extensions.contains(&Value::from("thirdPartyPayment")));
    let ask = || ga_ext(&[("thirdPartyPayment", Value::Bool(true))]);
    for rk in [false, true] {
        let user = [u8::from(rk)];
        let paying = make(&mut d, cid, RP, &user, rk, vec![ext(&[("thirdPartyPayment", Value::Bool(true))])]);
        assert_eq!(paying.auth_data.extensions, Some(text_map(&[("thirdPartyPayment", Value::Bool(true))])));
        let plain = make(&mut d, cid, OTHER_RP, &user, rk, vec![]);
        let (_, ad) = assertion(&mut d, cid, RP, &[&paying.id], vec![ask()]);
        assert_eq!(ad.extension("thirdPartyPayment"), Some(&Value::Bool(true)), "rk {rk}");
        assert_eq!(ad.flags & AuthData::ED, AuthData::ED);
        let (_, ad) = assertion(&mut d, cid, OTHER_RP, &[&plain.id], vec![ask()]);
        assert_eq!(ad.extension("thirdPartyPayment"), Some(&Value::Bool(false)), "rk {rk}: not enabled");
        // Not asked, not reported.
        let (_, ad) = assertion(&mut d, cid, RP, &[&paying.id], vec![]);
        assert_eq!(ad.extensions, None);
        // Asked with false: nothing to report either.
        let (_, ad) =
            assertion(&mut d, cid, RP, &[&paying.id], vec![ga_ext(&[("thirdPartyPayment", Value::Bool(false))])]);
        assert_eq!(ad.extensions, None);
    }
    // Asked for with false at creation: reported as false, not enabled.
    let declined = make(&mut d, cid, RP, b"no", false, vec![ext(&[("thirdPartyPayment", Value::Bool(false))])]);
    assert_eq!(declined.auth_data.extensions, Some(text_map(&[("thirdPartyPayment", Value::Bool(false))])));
    let (_, ad) = assertion(&mut d, cid, RP, &[&declined.id], vec![ask()]);
    assert_eq!(ad.extension("thirdPartyPayment"), Some(&Value::Bool(false)));
}

#[test]
fn third_party_payment_of_the_wrong_type_is_cbor_unexpected_type() {
    let (mut d, cid) = device();
    let m = make(&mut d, cid, RP, b"u", false, vec![]);
    for bad in [Value::from(1), Value::from("true"), Value::Bytes(vec![1])] {
        let params = requests::make_credential(RP, b"u", "alice", vec![ext(&[("thirdPartyPayment", bad.clone())])]);
        assert_eq!(d.ctap(cid, command::MAKE_CREDENTIAL, Some(params)).0, st::CBOR_UNEXPECTED_TYPE, "{bad:?}");
        let extra = vec![ga_ext(&[("thirdPartyPayment", bad.clone())])];
        assert_eq!(assert_status(&mut d, cid, RP, &[&m.id], extra), st::CBOR_UNEXPECTED_TYPE, "{bad:?}");
    }
}
