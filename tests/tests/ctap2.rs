//! In-process tests of the CTAP2 commands (CTAP 2.1 §6) through the whole
//! device (CTAPHID framing + authenticator): exact status bytes (§8.2) and
//! response contents. Every response goes through [`call_raw`], which also
//! checks its shape (one status byte, or status 0 + exactly one CBOR item)
//! and that the CBOR is in CTAP2 canonical form (§8), using an encoder
//! written here independently of `fidoseal_ctap::cbor`.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::Duration;

use ciborium::value::Value;
use fidoseal_ctap::authenticator::FIDOSEAL_AAGUID;
use fidoseal_ctap::ctaphid;
use fidoseal_ctap::platform::{PresencePurpose, PromptOutcome};
use fidoseal_ctap::{AttestationMode, AuthenticatorConfig};
use fidoseal_tests::platform_client::command::{
    CLIENT_PIN, GET_ASSERTION, GET_INFO, GET_NEXT_ASSERTION, MAKE_CREDENTIAL, RESET, SELECTION,
};
use fidoseal_tests::requests::{self, descriptor, int_map, text_map};
use fidoseal_tests::responses::{self, get, get_text};
use fidoseal_tests::status as st;
use fidoseal_tests::Device;
use p256::ecdsa::VerifyingKey;
use sha2::{Digest, Sha256};

const RP: &str = "example.com";
const OTHER_RP: &str = "other.example";
/// The clientDataHash values the harness builders put in requests.
const MC_CDH: [u8; 32] = [0x11; 32];
const GA_CDH: [u8; 32] = [0x22; 32];

const UP: u8 = 0x01;
const AT: u8 = 0x40;
const ED: u8 = 0x80;

// ---------------------------------------------------------------------------
// Canonical CTAP2 CBOR encoder (CTAP 2.1 §8 "Message encoding"), independent
// of the crate under test: shortest heads, definite lengths, map keys sorted
// by the bytes of their encoding, no duplicate keys.

fn head(major: u8, n: u64, out: &mut Vec<u8>) {
    let m = major << 5;
    if n < 24 {
        out.push(m | n as u8);
    } else if n <= 0xff {
        out.extend([m | 24, n as u8]);
    } else if n <= 0xffff {
        out.push(m | 25);
        out.extend((n as u16).to_be_bytes());
    } else if n <= 0xffff_ffff {
        out.push(m | 26);
        out.extend((n as u32).to_be_bytes());
    } else {
        out.push(m | 27);
        out.extend(n.to_be_bytes());
    }
}

fn encode_canonical(value: &Value, out: &mut Vec<u8>) -> Result<(), String> {
    match value {
        Value::Integer(i) => {
            let i = i128::from(*i);
            if i >= 0 {
                head(0, i as u64, out);
            } else {
                head(1, (-1 - i) as u64, out);
            }
        }
        Value::Bytes(b) => {
            head(2, b.len() as u64, out);
            out.extend_from_slice(b);
        }
        Value::Text(t) => {
            head(3, t.len() as u64, out);
            out.extend_from_slice(t.as_bytes());
        }
        Value::Array(items) => {
            head(4, items.len() as u64, out);
            for item in items {
                encode_canonical(item, out)?;
            }
        }
        Value::Map(entries) => {
            let mut encoded = Vec::with_capacity(entries.len());
            for (k, v) in entries {
                encoded.push((try_canonical(k)?, try_canonical(v)?));
            }
            encoded.sort();
            if let Some(pair) = encoded.windows(2).find(|pair| pair[0].0 == pair[1].0) {
                return Err(format!("duplicate map key {:02x?}", pair[0].0));
            }
            head(5, encoded.len() as u64, out);
            for (k, v) in encoded {
                out.extend(k);
                out.extend(v);
            }
        }
        Value::Tag(tag, inner) => {
            head(6, *tag, out);
            encode_canonical(inner, out)?;
        }
        Value::Bool(false) => out.push(0xf4),
        Value::Bool(true) => out.push(0xf5),
        Value::Null => out.push(0xf6),
        other => return Err(format!("CTAP2 responses carry no {other:?}")),
    }
    Ok(())
}

fn try_canonical(value: &Value) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    encode_canonical(value, &mut out)?;
    Ok(out)
}

fn canonical(value: &Value) -> Vec<u8> {
    try_canonical(value).unwrap_or_else(|e| panic!("{e}"))
}

/// Decodes exactly one CBOR item filling `bytes`.
fn decode_exact(bytes: &[u8]) -> Result<Value, String> {
    let mut reader = bytes;
    let value: Value = ciborium::de::from_reader(&mut reader).map_err(|e| format!("undecodable CBOR: {e}"))?;
    if !reader.is_empty() {
        return Err(format!("{} bytes after the CBOR item", reader.len()));
    }
    Ok(value)
}

/// Plain (insertion-order) encoding, for building requests.
fn enc(value: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    ciborium::ser::into_writer(value, &mut out).unwrap();
    out
}

// ---------------------------------------------------------------------------
// Talking to the device.

struct Reply {
    status: u8,
    body: Option<Value>,
    raw: Vec<u8>,
}

impl Reply {
    fn body(&self) -> &Value {
        self.body.as_ref().expect("a response body")
    }
}

/// Checks the shape of a CTAP2 response: one non-zero status byte alone, or
/// status 0 optionally followed by exactly one canonical CBOR item.
fn check_shape(data: &[u8]) -> Result<Option<Value>, String> {
    let (&status, rest) = data.split_first().ok_or("empty CTAP2 response")?;
    if status != st::OK {
        return if rest.is_empty() {
            Ok(None)
        } else {
            Err(format!("error {status:#04x} followed by {} bytes", rest.len()))
        };
    }
    if rest.is_empty() {
        return Ok(None);
    }
    let value = decode_exact(rest)?;
    let canon = try_canonical(&value)?;
    if canon != rest {
        return Err(format!("non-canonical CBOR\n   got {rest:02x?}\n  want {canon:02x?}"));
    }
    Ok(Some(value))
}

fn call_raw(d: &mut Device, cid: u32, message: &[u8]) -> Reply {
    let (rcid, rcmd, raw) = d.transact(cid, ctaphid::command::CBOR, message);
    assert_eq!(rcid, cid, "answer on the request's channel");
    assert_eq!(rcmd, ctaphid::command::CBOR, "answer is CTAPHID_CBOR");
    let body = check_shape(&raw).unwrap_or_else(|e| panic!("bad response to {message:02x?}: {e}"));
    Reply { status: raw[0], body, raw }
}

fn call(d: &mut Device, cid: u32, command: u8, params: Option<&Value>) -> Reply {
    let mut message = vec![command];
    if let Some(p) = params {
        message.extend(enc(p));
    }
    call_raw(d, cid, &message)
}

fn device() -> (Device, u32) {
    let mut d = Device::new();
    let cid = d.init();
    (d, cid)
}

/// Prompts asked since the `n`th.
fn asked_since(d: &Device, n: usize) -> Vec<(PresencePurpose, Option<String>)> {
    d.prompt.asked()[n..].to_vec()
}

fn deny_rp(d: &Device, rp: &str) {
    d.denied_rps.0.lock().unwrap().push(rp.to_owned());
}

fn int(v: &Value) -> i128 {
    i128::from(v.as_integer().unwrap_or_else(|| panic!("an integer, got {v:?}")))
}

fn at(map: &Value, key: i64) -> &Value {
    get(map, key).unwrap_or_else(|| panic!("key {key} missing from {map:?}"))
}

/// The integer keys of a response map, in order.
fn int_keys(map: &Value) -> Vec<i128> {
    map.as_map().expect("a map").iter().map(|(k, _)| int(k)).collect()
}

/// `map` with `key` set to `value` (replaced in place or appended), or removed when `None`.
fn set(map: &Value, key: impl Into<Value>, value: Option<Value>) -> Value {
    let key = key.into();
    let mut entries = map.as_map().expect("a map").clone();
    match (entries.iter().position(|(k, _)| *k == key), value) {
        (Some(i), Some(v)) => entries[i].1 = v,
        (Some(i), None) => {
            entries.remove(i);
        }
        (None, Some(v)) => entries.push((key, v)),
        (None, None) => {}
    }
    Value::Map(entries)
}

fn rp_hash(rp: &str) -> Vec<u8> {
    Sha256::digest(rp.as_bytes()).to_vec()
}

/// Authenticator data, parsed strictly (WebAuthn §6.1).
struct AuthData {
    rp_id_hash: Vec<u8>,
    flags: u8,
    counter: u32,
    aaguid: Option<Vec<u8>>,
    credential_id: Option<Vec<u8>>,
    cose_key: Option<Value>,
    extensions: Option<Value>,
}

/// Decodes one CBOR item from the front of `bytes`; returns it and the rest.
fn decode_one(bytes: &[u8]) -> (Value, &[u8]) {
    let mut reader = bytes;
    let value: Value = ciborium::de::from_reader(&mut reader).expect("a CBOR item");
    (value, reader)
}

fn parse_auth_data(ad: &[u8]) -> AuthData {
    assert!(ad.len() >= 37, "authData too short: {}", ad.len());
    let flags = ad[32];
    let mut parsed = AuthData {
        rp_id_hash: ad[..32].to_vec(),
        flags,
        counter: u32::from_be_bytes(ad[33..37].try_into().unwrap()),
        aaguid: None,
        credential_id: None,
        cose_key: None,
        extensions: None,
    };
    let mut rest = &ad[37..];
    if flags & AT != 0 {
        parsed.aaguid = Some(rest[..16].to_vec());
        let len = usize::from(u16::from_be_bytes([rest[16], rest[17]]));
        parsed.credential_id = Some(rest[18..18 + len].to_vec());
        let key_bytes = &rest[18 + len..];
        let (key, after) = decode_one(key_bytes);
        assert_eq!(canonical(&key), &key_bytes[..key_bytes.len() - after.len()], "COSE key is canonical CBOR");
        parsed.cose_key = Some(key);
        rest = after;
    }
    if flags & ED != 0 {
        let extensions = decode_exact(rest).expect("extension outputs fill the rest of authData");
        assert_eq!(canonical(&extensions), rest, "extension outputs are canonical CBOR");
        assert!(extensions.as_map().is_some_and(|m| !m.is_empty()), "ED means a non-empty map");
        parsed.extensions = Some(extensions);
        rest = &[];
    }
    assert!(rest.is_empty(), "{} trailing bytes in authData", rest.len());
    parsed
}

/// A credential as registered.
struct Cred {
    id: Vec<u8>,
    key: VerifyingKey,
    counter: u32,
}

fn make_credential(rp: &str, user_id: &[u8], name: &str, rk: bool) -> Value {
    requests::make_credential(rp, user_id, name, if rk { vec![requests::rk()] } else { vec![] })
}

fn register(d: &mut Device, cid: u32, rp: &str, user_id: &[u8], name: &str, rk: bool) -> Cred {
    let r = call(d, cid, MAKE_CREDENTIAL, Some(&make_credential(rp, user_id, name, rk)));
    assert_eq!(r.status, st::OK, "makeCredential for {rp}");
    let reg = responses::parse_registration(r.body());
    let ad = parse_auth_data(&reg.auth_data);
    Cred { id: reg.credential_id, key: reg.public_key, counter: ad.counter }
}

fn get_assertion(rp: &str, allow: &[&[u8]], extra: Vec<(i64, Value)>) -> Value {
    requests::get_assertion(rp, allow, extra)
}

fn options(entries: &[(&str, bool)]) -> Value {
    Value::Map(entries.iter().map(|(k, v)| (Value::from(*k), Value::Bool(*v))).collect())
}

/// Checks a successful assertion: credential echoed, signature by `key`
/// over authData ‖ GA_CDH, rpIdHash of `rp`, flags as given. Returns the counter.
fn check_assertion(body: &Value, rp: &str, id: &[u8], key: &VerifyingKey, flags: u8) -> u32 {
    let credential = at(body, 1);
    assert_eq!(credential.as_map().unwrap().len(), 2, "credential descriptor is {{id, type}}");
    assert_eq!(
        get_text(credential, "id").and_then(Value::as_bytes).map(Vec::as_slice),
        Some(id),
        "credential id echoed"
    );
    assert_eq!(get_text(credential, "type"), Some(&Value::from("public-key")));
    let ad_bytes = responses::bytes(get(body, 2));
    let ad = parse_auth_data(&ad_bytes);
    assert_eq!(ad.rp_id_hash, rp_hash(rp));
    assert_eq!(ad.flags, flags, "assertion flags");
    let sig = responses::bytes(get(body, 3));
    assert!(responses::verify(key, &ad_bytes, &GA_CDH, &sig), "assertion signature verifies");
    ad.counter
}

/// The `user` member of an assertion: must be exactly `{id}` (no name
/// without user verification, CTAP 2.1 §6.2.2).
fn user_id_of(body: &Value) -> Vec<u8> {
    let user = at(body, 4);
    let entries = user.as_map().expect("user is a map");
    assert_eq!(entries.len(), 1, "user carries only its id: {user:?}");
    responses::bytes(get_text(user, "id"))
}

fn get_info(d: &mut Device, cid: u32) -> Value {
    let r = call(d, cid, GET_INFO, None);
    assert_eq!(r.status, st::OK);
    r.body().clone()
}

fn info_option(info: &Value, id: &str) -> Option<bool> {
    get(info, 0x04).and_then(|o| get_text(o, id)).and_then(Value::as_bool)
}

/// The answer to a (non-empty, made-up) pinUvAuthParam naming `protocol`
/// while no PIN is set: a protocol getInfo does not list (pinUvAuthProtocols,
/// 0x06) is INVALID_PARAMETER (§6.1.2/§6.2.2 step 2); a listed one has the
/// parameter verified, which fails: PIN_AUTH_INVALID.
fn pin_uv_auth_status(info: &Value, protocol: i64) -> u8 {
    let listed =
        get(info, 0x06).and_then(Value::as_array).is_some_and(|ps| ps.iter().any(|p| int(p) == i128::from(protocol)));
    if listed {
        st::PIN_AUTH_INVALID
    } else {
        st::INVALID_PARAMETER
    }
}

/// A status table: every (label, message, expected status) must match.
fn expect_statuses(d: &mut Device, cid: u32, cases: Vec<(String, Vec<u8>, u8)>) {
    let mut failures = Vec::new();
    for (label, message, want) in cases {
        let before = d.prompt.asked().len();
        let r = call_raw(d, cid, &message);
        if r.status != want {
            failures.push(format!("{label}: got {:#04x}, want {want:#04x}", r.status));
        } else if want != st::OK && d.prompt.asked().len() != before {
            failures.push(format!("{label}: prompted before failing"));
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

fn msg(command: u8, params: &Value) -> Vec<u8> {
    let mut m = vec![command];
    m.extend(enc(params));
    m
}

// ---------------------------------------------------------------------------
// The canonical encoder itself.

#[test]
fn canonical_encoder_sorts_keys_by_encoded_bytes_and_uses_shortest_heads() {
    let v = int_map(vec![(-1, Value::from(1)), (24, Value::from(2)), (1, Value::from(3))]);
    assert_eq!(canonical(&v), [0xa3, 0x01, 0x03, 0x18, 0x18, 0x02, 0x20, 0x01]);
    let v = options(&[("up", true), ("plat", false), ("rk", true)]);
    assert_eq!(
        canonical(&v),
        [0xa3, 0x62, b'r', b'k', 0xf5, 0x62, b'u', b'p', 0xf5, 0x64, b'p', b'l', b'a', b't', 0xf4]
    );
    for (n, want) in [
        (0i64, vec![0x00]),
        (23, vec![0x17]),
        (24, vec![0x18, 0x18]),
        (255, vec![0x18, 0xff]),
        (256, vec![0x19, 0x01, 0x00]),
        (7609, vec![0x19, 0x1d, 0xb9]),
        (65536, vec![0x1a, 0x00, 0x01, 0x00, 0x00]),
        (1 << 32, vec![0x1b, 0, 0, 0, 1, 0, 0, 0, 0]),
        (-1, vec![0x20]),
        (-7, vec![0x26]),
        (-25, vec![0x38, 0x18]),
        (-257, vec![0x39, 0x01, 0x00]),
    ] {
        assert_eq!(canonical(&Value::from(n)), want, "{n}");
    }
    // A non-canonical input (long-form integer, unsorted keys) is told apart.
    assert!(check_shape(&[0x00, 0x18, 0x05]).is_err());
    assert!(check_shape(&[0x00, 0xa2, 0x02, 0x00, 0x01, 0x00]).is_err());
    assert!(check_shape(&[0x00, 0xa2, 0x01, 0x00, 0x01, 0x00]).is_err(), "duplicate keys");
    assert!(check_shape(&[0x00, 0x5f, 0x41, 0x00, 0xff]).is_err(), "indefinite length");
    assert!(check_shape(&[0x00, 0xa1, 0x01, 0x00, 0x00]).is_err(), "trailing bytes");
    assert!(check_shape(&[0x27, 0x00]).is_err(), "error status with data");
}

// ---------------------------------------------------------------------------
// authenticatorGetInfo (§6.4)

#[test]
fn get_info_reports_exact_versions_aaguid_options_and_limits() {
    let (mut d, cid) = device();
    let r = call(&mut d, cid, GET_INFO, None);
    assert_eq!(r.status, st::OK);
    let info = r.body();
    let keys = int_keys(info);
    for required in [0x01, 0x03, 0x04, 0x05, 0x09, 0x0A, 0x0E] {
        assert!(keys.contains(&required), "getInfo member {required:#04x} missing: {keys:02x?}");
    }
    // U2F_V2 (CTAPHID_MSG), FIDO_2_1 (clientPIN with permissions, credMgmt,
    // credProtect, selection) and FIDO_2_2 (hmac-secret-mc, thirdPartyPayment,
    // the persistent read-only token, the 2.2 getInfo members).
    assert_eq!(
        at(info, 0x01),
        &Value::Array(vec![
            Value::from("U2F_V2"),
            Value::from("FIDO_2_0"),
            Value::from("FIDO_2_1"),
            Value::from("FIDO_2_2")
        ]),
        "versions"
    );
    // CTAP 2.2 members: attestationFormats (0x16), the default first, and
    // maxPINLength (0x1D); the ones fidoseal has no use for are absent
    // (uvCountSinceLastPinEntry, longTouchForReset, transportsForReset,
    // pinComplexityPolicy and its URL), and so is encIdentifier (0x19) until
    // a persistent token exists.
    assert_eq!(at(info, 0x16), &Value::Array(vec![Value::from("packed"), Value::from("none")]));
    assert_eq!(int(at(info, 0x1D)), 63, "maxPINLength");
    for absent in [0x17, 0x18, 0x19, 0x1A, 0x1B, 0x1C, 0x1E, 0x1F] {
        assert!(!keys.contains(&absent), "getInfo member {absent:#04x} present: {keys:02x?}");
    }
    let aaguid = at(info, 0x03).as_bytes().expect("aaguid is a byte string");
    assert_eq!(aaguid.len(), 16);
    assert_eq!(aaguid.as_slice(), FIDOSEAL_AAGUID);
    let opts = at(info, 0x04).as_map().expect("options map");
    let opts: Vec<(String, bool)> = opts
        .iter()
        .map(|(k, v)| {
            let k = k.as_text().expect("option ids are text").to_owned();
            let v = v.as_bool().unwrap_or_else(|| panic!("option {k} is not a bool"));
            (k, v)
        })
        .collect();
    let option = |id: &str| opts.iter().find(|(k, _)| k == id).map(|(_, v)| *v);
    assert_eq!(option("rk"), Some(true));
    assert_eq!(option("up"), Some(true));
    assert_eq!(option("plat"), Some(false));
    assert_eq!(option("uv"), None, "no built-in user verification");
    // Chromium rejects a whole getInfo that claims clientPin or
    // pinUvAuthToken without listing any pinUvAuthProtocols.
    if option("clientPin").is_some() || option("pinUvAuthToken").is_some() {
        let protocols = get(info, 0x06).and_then(Value::as_array);
        assert!(protocols.is_some_and(|p| !p.is_empty()), "clientPin/pinUvAuthToken need pinUvAuthProtocols");
    }
    if option("largeBlobs").is_some() {
        assert_eq!(option("rk"), Some(true), "largeBlobs needs rk");
    }
    // 30 output reports: what the kernel's uhid queue always holds (ctaphid.rs).
    assert_eq!(int(at(info, 0x05)), 57 + 29 * 59, "maxMsgSize");
    assert_eq!(at(info, 0x09), &Value::Array(vec![Value::from("usb")]), "transports");
    // What the software key store supports: ES256 first, then EdDSA.
    let algs = at(info, 0x0A).as_array().expect("algorithms array");
    assert_eq!(algs.len(), 2);
    for (entry, alg) in algs.iter().zip([-7, -8]) {
        assert_eq!(entry.as_map().unwrap().len(), 2);
        assert_eq!(int(get_text(entry, "alg").unwrap()), alg);
        assert_eq!(get_text(entry, "type"), Some(&Value::from("public-key")));
    }
    assert!(int(at(info, 0x0E)) >= 0, "firmwareVersion is an unsigned integer");
}

#[test]
fn get_info_response_is_canonical_ctap2_cbor() {
    let (mut d, cid) = device();
    let (_, _, raw) = d.transact(cid, ctaphid::command::CBOR, &[GET_INFO]);
    assert_eq!(raw[0], st::OK);
    let value = decode_exact(&raw[1..]).unwrap();
    assert_eq!(canonical(&value), &raw[1..], "getInfo bytes are canonical");
    // Unsigned keys in canonical order are simply ascending.
    let keys = int_keys(&value);
    assert!(keys.windows(2).all(|w| w[0] < w[1]), "getInfo keys ascending: {keys:?}");
    // And the answer does not change between calls.
    let again = call(&mut d, cid, GET_INFO, None);
    assert_eq!(again.raw, raw);
}

// ---------------------------------------------------------------------------
// authenticatorMakeCredential (§6.1)

/// makeCredential with attestationFormatsPreference (CTAP 2.2 §6.1, 0x0B).
fn format_with_preference(d: &mut Device, cid: u32, preference: Value) -> (u8, Option<Value>) {
    let params = requests::make_credential(RP, b"fmt", "alice", vec![(0x0B, preference)]);
    let r = call(d, cid, MAKE_CREDENTIAL, Some(&params));
    (r.status, (r.status == st::OK).then(|| at(r.body(), 1).clone()))
}

#[test]
fn attestation_formats_preference_picks_the_first_supported_format() {
    let (mut d, cid) = device();
    let texts = |formats: &[&str]| Value::Array(formats.iter().map(|f| Value::from(*f)).collect());
    for (preference, expected) in [
        (&["none"][..], "none"),
        (&["tpm", "none", "packed"][..], "none"),
        (&["packed", "none"][..], "packed"),
        (&["android-key"][..], "packed"),
        (&[][..], "packed"),
    ] {
        let (status, format) = format_with_preference(&mut d, cid, texts(preference));
        assert_eq!(status, st::OK, "{preference:?}");
        assert_eq!(format, Some(Value::from(expected)), "{preference:?}");
    }
    // "none" means an empty statement, and an authData that still verifies.
    let params = requests::make_credential(RP, b"fmt", "alice", vec![(0x0B, texts(&["none"]))]);
    let r = call(&mut d, cid, MAKE_CREDENTIAL, Some(&params));
    assert_eq!(at(r.body(), 3), &Value::Map(vec![]), "attStmt of none");
}

#[test]
fn attestation_formats_preference_of_the_wrong_type_is_cbor_unexpected_type() {
    let (mut d, cid) = device();
    for bad in [Value::from("none"), Value::Array(vec![Value::from(1)]), Value::Bytes(b"none".to_vec())] {
        assert_eq!(format_with_preference(&mut d, cid, bad.clone()).0, st::CBOR_UNEXPECTED_TYPE, "{bad:?}");
    }
    assert!(d.prompt.asked().is_empty(), "refused before anyone is asked");
}

#[test]
fn make_credential_packed_self_attestation_verifies() {
    let (mut d, cid) = device();
    let r = call(&mut d, cid, MAKE_CREDENTIAL, Some(&make_credential(RP, b"u1", "alice", false)));
    assert_eq!(r.status, st::OK);
    let body = r.body();
    assert_eq!(int_keys(body), [1, 2, 3], "fmt, authData, attStmt only");
    assert_eq!(at(body, 1), &Value::from("packed"));
    let ad_bytes = responses::bytes(get(body, 2));
    let ad = parse_auth_data(&ad_bytes);
    assert_eq!(ad.rp_id_hash, rp_hash(RP));
    assert_eq!(ad.flags, UP | AT, "flags UP|AT");
    assert_eq!(ad.aaguid.as_deref(), Some(&FIDOSEAL_AAGUID[..]), "aaguid in attested data");
    let id = ad.credential_id.unwrap();
    assert!(!id.is_empty() && id.len() <= 255, "credential id length {}", id.len());
    let cose = ad.cose_key.unwrap();
    assert_eq!(int_keys(&cose), [1, 3, -1, -2, -3], "COSE_Key members in canonical order");
    assert_eq!(int(at(&cose, 1)), 2, "kty EC2");
    assert_eq!(int(at(&cose, 3)), -7, "alg ES256");
    assert_eq!(int(at(&cose, -1)), 1, "crv P-256");
    assert_eq!(at(&cose, -2).as_bytes().unwrap().len(), 32);
    assert_eq!(at(&cose, -3).as_bytes().unwrap().len(), 32);

    let stmt = at(body, 3);
    assert_eq!(stmt.as_map().unwrap().len(), 2, "self attestation: {{alg, sig}}, no x5c");
    assert_eq!(int(get_text(stmt, "alg").unwrap()), -7);
    let sig = responses::bytes(get_text(stmt, "sig"));
    let reg = responses::parse_registration(body);
    assert_eq!(reg.credential_id, id);
    assert!(responses::verify(&reg.public_key, &ad_bytes, &MC_CDH, &sig), "sig over authData ‖ clientDataHash");
    assert!(!responses::verify(&reg.public_key, &ad_bytes, &GA_CDH, &sig), "bound to the clientDataHash");

    assert_eq!(d.prompt.asked(), [(PresencePurpose::Register, Some(RP.to_owned()))]);
}

#[test]
fn make_credential_none_attestation_when_configured() {
    let config = AuthenticatorConfig { attestation: AttestationMode::None, ..AuthenticatorConfig::default() };
    let mut d = Device::with_config(config, 10);
    let cid = d.init();
    let r = call(&mut d, cid, MAKE_CREDENTIAL, Some(&make_credential(RP, b"u1", "alice", false)));
    assert_eq!(r.status, st::OK);
    let body = r.body();
    assert_eq!(at(body, 1), &Value::from("none"));
    assert_eq!(at(body, 3), &Value::Map(vec![]), "empty attStmt");
    let ad = parse_auth_data(&responses::bytes(get(body, 2)));
    assert_eq!(ad.flags, UP | AT);
    assert_eq!(ad.aaguid.as_deref(), Some(&FIDOSEAL_AAGUID[..]));
    // The credential is usable.
    let reg = responses::parse_registration(body);
    let r = call(&mut d, cid, GET_ASSERTION, Some(&get_assertion(RP, &[&reg.credential_id], vec![])));
    assert_eq!(r.status, st::OK);
    check_assertion(r.body(), RP, &reg.credential_id, &reg.public_key, UP);
}

/// Each credential has its own signature counter (WebAuthn §6.1.1): it
/// strictly increases with every assertion, whatever the other credentials
/// do, and one relying party learns nothing of the key's use elsewhere.
#[test]
fn signature_counters_are_per_credential_and_strictly_increase() {
    let (mut d, cid) = device();
    let a = register(&mut d, cid, RP, b"u1", "alice", false);
    let b = register(&mut d, cid, RP, b"u2", "bob", true);
    let mut counters_a = vec![a.counter];
    for extra in [vec![], vec![(5, options(&[("up", false)]))], vec![]] {
        let r = call(&mut d, cid, GET_ASSERTION, Some(&get_assertion(RP, &[&a.id], extra)));
        assert_eq!(r.status, st::OK);
        let ad = parse_auth_data(&responses::bytes(get(r.body(), 2)));
        counters_a.push(ad.counter);
    }
    let c = register(&mut d, cid, OTHER_RP, b"u3", "carol", false);
    assert_eq!(c.counter, a.counter, "a new credential does not show how much others were used");
    let mut counters_b = vec![b.counter];
    for _ in 0..2 {
        let r = call(&mut d, cid, GET_ASSERTION, Some(&get_assertion(RP, &[], vec![])));
        assert_eq!(r.status, st::OK);
        counters_b.push(check_assertion(r.body(), RP, &b.id, &b.key, UP));
    }
    let r = call(&mut d, cid, GET_ASSERTION, Some(&get_assertion(RP, &[&a.id], vec![])));
    counters_a.push(check_assertion(r.body(), RP, &a.id, &a.key, UP));
    assert!(counters_a[1] > 0);
    assert!(counters_a.windows(2).all(|w| w[0] < w[1]), "counters of a {counters_a:?}");
    assert!(counters_b.windows(2).all(|w| w[0] < w[1]), "counters of b {counters_b:?}");
    assert_eq!(counters_b[1], counters_a[1], "b's first assertion: b's counter, untouched by a's use");
}

#[test]
fn make_credential_discoverable_has_16_byte_id_and_same_user_replaces_it() {
    let (mut d, cid) = device();
    let first = register(&mut d, cid, RP, b"user-1", "alice", true);
    assert_eq!(first.id.len(), 16, "discoverable credential ID");
    let r = call(&mut d, cid, GET_ASSERTION, Some(&get_assertion(RP, &[], vec![])));
    assert_eq!(r.status, st::OK);
    check_assertion(r.body(), RP, &first.id, &first.key, UP);
    assert_eq!(user_id_of(r.body()), b"user-1");

    let second = register(&mut d, cid, RP, b"user-1", "alice again", true);
    assert_eq!(second.id.len(), 16);
    assert_ne!(second.id, first.id);
    let r = call(&mut d, cid, GET_ASSERTION, Some(&get_assertion(RP, &[], vec![])));
    assert_eq!(r.status, st::OK);
    assert_eq!(get(r.body(), 5), None, "one credential: no numberOfCredentials");
    check_assertion(r.body(), RP, &second.id, &second.key, UP);
    assert_eq!(user_id_of(r.body()), b"user-1");
    // The replaced credential is gone.
    let r = call(&mut d, cid, GET_ASSERTION, Some(&get_assertion(RP, &[&first.id], vec![])));
    assert_eq!(r.status, st::NO_CREDENTIALS);
    let r = call(&mut d, cid, GET_NEXT_ASSERTION, None);
    assert_eq!(r.status, st::NOT_ALLOWED);
}

#[test]
fn make_credential_key_store_full_but_replacing_same_user_works() {
    let mut d = Device::with_capacity(1);
    let cid = d.init();
    let first = register(&mut d, cid, RP, b"u1", "alice", true);

    for (rp, user) in [(RP, &b"u2"[..]), (OTHER_RP, &b"u1"[..])] {
        let before = d.prompt.asked().len();
        let r = call(&mut d, cid, MAKE_CREDENTIAL, Some(&make_credential(rp, user, "x", true)));
        assert_eq!(r.status, st::KEY_STORE_FULL, "{rp}");
        assert!(asked_since(&d, before).is_empty(), "refused before asking for a touch");
    }
    // Non-discoverable credentials need no room.
    register(&mut d, cid, RP, b"u2", "bob", false);

    let replacement = register(&mut d, cid, RP, b"u1", "alice", true);
    assert_ne!(replacement.id, first.id);
    let r = call(&mut d, cid, GET_ASSERTION, Some(&get_assertion(RP, &[], vec![])));
    assert_eq!(r.status, st::OK);
    check_assertion(r.body(), RP, &replacement.id, &replacement.key, UP);
    let r = call(&mut d, cid, GET_ASSERTION, Some(&get_assertion(RP, &[&first.id], vec![])));
    assert_eq!(r.status, st::NO_CREDENTIALS);
}

#[test]
fn make_credential_exclude_list_hit_asks_confirmation_then_credential_excluded() {
    let (mut d, cid) = device();
    let plain = register(&mut d, cid, RP, b"u1", "alice", false);
    let resident = register(&mut d, cid, RP, b"u2", "bob", true);
    let unknown = vec![0x55u8; 16];
    for (label, exclude, rk) in [
        ("non-discoverable", vec![plain.id.clone()], false),
        ("discoverable", vec![resident.id.clone()], false),
        ("hit after unknown entries", vec![unknown.clone(), vec![1, 2, 3], plain.id.clone()], false),
        ("rk request", vec![resident.id.clone()], true),
    ] {
        let list = Value::Array(exclude.iter().map(|id| descriptor(id)).collect());
        let mut extra = vec![(5, list)];
        if rk {
            extra.push(requests::rk());
        }
        let before = d.prompt.asked().len();
        let r = call(&mut d, cid, MAKE_CREDENTIAL, Some(&requests::make_credential(RP, b"u3", "carol", extra)));
        assert_eq!(r.status, st::CREDENTIAL_EXCLUDED, "{label}");
        assert_eq!(
            asked_since(&d, before),
            [(PresencePurpose::ConfirmExisting, Some(RP.to_owned()))],
            "{label}: a touch confirms before the answer"
        );
    }
    // Nothing new was stored: only bob's credential is discoverable.
    let r = call(&mut d, cid, GET_ASSERTION, Some(&get_assertion(RP, &[], vec![])));
    assert_eq!(r.status, st::OK);
    assert_eq!(get(r.body(), 5), None);
    check_assertion(r.body(), RP, &resident.id, &resident.key, UP);
}

#[test]
fn make_credential_exclude_list_ignores_foreign_and_unknown_ids() {
    let (mut d, cid) = device();
    let mine = register(&mut d, cid, RP, b"u1", "alice", false);
    let foreign = register(&mut d, cid, OTHER_RP, b"u1", "alice", false);
    let foreign_rk = register(&mut d, cid, OTHER_RP, b"u2", "bob", true);
    let mut tampered = mine.id.clone();
    *tampered.last_mut().unwrap() ^= 1;
    let other_type = text_map(&[("id", Value::Bytes(mine.id.clone())), ("type", Value::from("not-a-public-key"))]);
    let list = Value::Array(vec![
        descriptor(&foreign.id),
        descriptor(&foreign_rk.id),
        descriptor(&[0x42; 16]),
        descriptor(&tampered),
        descriptor(&[]),
        descriptor(&[0x01; 300]),
        other_type,
    ]);
    let before = d.prompt.asked().len();
    let r = call(&mut d, cid, MAKE_CREDENTIAL, Some(&requests::make_credential(RP, b"u3", "carol", vec![(5, list)])));
    assert_eq!(r.status, st::OK);
    assert_eq!(asked_since(&d, before), [(PresencePurpose::Register, Some(RP.to_owned()))]);
}

fn alg_entry(alg: Value, kind: &str) -> Value {
    text_map(&[("alg", alg), ("type", Value::from(kind))])
}

#[test]
fn make_credential_unsupported_algorithms_only_is_unsupported_algorithm() {
    let (mut d, cid) = device();
    let base = make_credential(RP, b"u1", "alice", false);
    let cases = [
        // The software store offers ES256 and EdDSA (tests/tests/eddsa.rs).
        ("RS256", vec![alg_entry((-257).into(), "public-key")]),
        (
            "several",
            vec![
                alg_entry((-36).into(), "public-key"),
                alg_entry((-257).into(), "public-key"),
                alg_entry((-35).into(), "public-key"),
            ],
        ),
        ("ES256 of another type", vec![alg_entry((-7).into(), "secret-key")]),
        ("empty list", vec![]),
    ];
    let cases = cases
        .into_iter()
        .map(|(label, algs)| {
            (
                label.to_owned(),
                msg(MAKE_CREDENTIAL, &set(&base, 4, Some(Value::Array(algs)))),
                st::UNSUPPORTED_ALGORITHM,
            )
        })
        .collect();
    expect_statuses(&mut d, cid, cases);
}

#[test]
fn make_credential_skips_pub_key_cred_params_of_other_types() {
    let (mut d, cid) = device();
    let algs = Value::Array(vec![
        alg_entry((-7).into(), "secret-key"),
        text_map(&[("alg", Value::from(-7)), ("type", Value::from("x")), ("extra", Value::from(1))]),
        alg_entry((-257).into(), "public-key"),
        alg_entry((-7).into(), "public-key"),
    ]);
    let params = set(&make_credential(RP, b"u1", "alice", false), 4, Some(algs));
    let r = call(&mut d, cid, MAKE_CREDENTIAL, Some(&params));
    assert_eq!(r.status, st::OK);
    assert_eq!(int(get_text(at(r.body(), 3), "alg").unwrap()), -7);
    let cose = parse_auth_data(&responses::bytes(get(r.body(), 2))).cose_key.unwrap();
    assert_eq!(int(at(&cose, 3)), -7);
}

#[test]
fn make_credential_up_false_and_uv_true_are_invalid_option() {
    let (mut d, cid) = device();
    let base = make_credential(RP, b"u1", "alice", false);
    let with = |o: Value| msg(MAKE_CREDENTIAL, &set(&base, 7, Some(o)));
    expect_statuses(
        &mut d,
        cid,
        vec![
            ("up=false".into(), with(options(&[("up", false)])), st::INVALID_OPTION),
            ("uv=true".into(), with(options(&[("uv", true)])), st::INVALID_OPTION),
            ("rk=true,up=false".into(), with(options(&[("rk", true), ("up", false)])), st::INVALID_OPTION),
            ("up=true".into(), with(options(&[("up", true)])), st::OK),
            ("uv=false".into(), with(options(&[("uv", false)])), st::OK),
            ("rk=false".into(), with(options(&[("rk", false)])), st::OK),
        ],
    );
}

#[test]
fn make_credential_enterprise_attestation_without_a_policy_key_is_invalid_parameter() {
    let (mut d, cid) = device();
    let base = make_credential(RP, b"u1", "alice", false);
    let cases = [1, 2]
        .into_iter()
        .map(|ep| (format!("ep={ep}"), msg(MAKE_CREDENTIAL, &set(&base, 0x0A, Some(ep.into()))), st::INVALID_PARAMETER))
        .collect();
    expect_statuses(&mut d, cid, cases);
}

#[test]
fn make_credential_pin_uv_auth_param_without_protocol_is_missing_parameter_with_protocol_invalid_parameter() {
    let (mut d, cid) = device();
    let info = get_info(&mut d, cid);
    let base = make_credential(RP, b"u1", "alice", false);
    let param = |len: usize| Some(Value::Bytes(vec![0xAB; len]));
    let case = |label: &str, len: usize, protocol: Option<i64>, want: u8| {
        let m = set(&set(&base, 8, param(len)), 9, protocol.map(Value::from));
        (label.to_owned(), msg(MAKE_CREDENTIAL, &m), want)
    };
    expect_statuses(
        &mut d,
        cid,
        vec![
            case("16 bytes, no protocol", 16, None, st::MISSING_PARAMETER),
            case("32 bytes, no protocol", 32, None, st::MISSING_PARAMETER),
            case("protocol 1", 16, Some(1), pin_uv_auth_status(&info, 1)),
            case("protocol 2", 32, Some(2), pin_uv_auth_status(&info, 2)),
            case("protocol 3", 32, Some(3), st::INVALID_PARAMETER),
            case("protocol 0", 32, Some(0), st::INVALID_PARAMETER),
            case("protocol 99", 32, Some(99), st::INVALID_PARAMETER),
        ],
    );
}

#[test]
fn make_credential_prompt_denial_timeout_and_cancel() {
    let (mut d, cid) = device();
    for (outcome, want) in [
        (PromptOutcome::Denied, st::OPERATION_DENIED),
        (PromptOutcome::Unavailable, st::OPERATION_DENIED),
        (PromptOutcome::TimedOut, st::USER_ACTION_TIMEOUT),
        (PromptOutcome::Cancelled, st::KEEPALIVE_CANCEL),
    ] {
        d.prompt.push(outcome);
        let before = d.prompt.asked().len();
        let r = call(&mut d, cid, MAKE_CREDENTIAL, Some(&make_credential(RP, b"u1", "alice", true)));
        assert_eq!(r.status, want, "{outcome:?}");
        assert_eq!(asked_since(&d, before), [(PresencePurpose::Register, Some(RP.to_owned()))]);
        // Nothing was stored.
        let r = call(&mut d, cid, GET_ASSERTION, Some(&get_assertion(RP, &[], vec![])));
        assert_eq!(r.status, st::NO_CREDENTIALS, "{outcome:?}: nothing stored");
    }
}

#[test]
fn make_credential_policy_deny_is_operation_denied_without_prompt() {
    let (mut d, cid) = device();
    deny_rp(&d, RP);
    for rk in [false, true] {
        let r = call(&mut d, cid, MAKE_CREDENTIAL, Some(&make_credential(RP, b"u1", "alice", rk)));
        assert_eq!(r.status, st::OPERATION_DENIED);
    }
    assert!(d.prompt.asked().is_empty());
    // Other relying parties are unaffected.
    register(&mut d, cid, OTHER_RP, b"u1", "alice", false);
    // The denied rp is refused before any lookup; allowed again, it has nothing stored.
    let r = call(&mut d, cid, GET_ASSERTION, Some(&get_assertion(RP, &[], vec![])));
    assert_eq!(r.status, st::OPERATION_DENIED);
    d.denied_rps.0.lock().unwrap().clear();
    let r = call(&mut d, cid, GET_ASSERTION, Some(&get_assertion(RP, &[], vec![])));
    assert_eq!(r.status, st::NO_CREDENTIALS);
}

// ---------------------------------------------------------------------------
// Strict parsing (§6.1, §6.2, §8).

/// Malformed CBOR bodies, common to both commands.
fn malformed_bodies(valid: &[u8]) -> Vec<(String, Vec<u8>)> {
    let mut trailing = valid.to_vec();
    trailing.push(0x00);
    let mut two_items = valid.to_vec();
    two_items.extend_from_slice(valid);
    vec![
        ("empty params".into(), vec![]),
        ("break byte".into(), vec![0xff]),
        ("reserved additional info".into(), vec![0x1c]),
        ("truncated map".into(), vec![0xa2, 0x01]),
        ("truncated byte string".into(), vec![0xa1, 0x01, 0x58, 0x20, 0x00]),
        ("text garbage".into(), b"hello, authenticator".to_vec()),
        ("truncated valid body".into(), valid[..valid.len() - 1].to_vec()),
        ("trailing zero byte".into(), trailing),
        ("two maps".into(), two_items),
    ]
}

#[test]
fn make_credential_and_get_assertion_reject_malformed_cbor_as_invalid_cbor() {
    let (mut d, cid) = device();
    let mut cases = Vec::new();
    for (command, valid) in [
        (MAKE_CREDENTIAL, enc(&make_credential(RP, b"u1", "alice", false))),
        (GET_ASSERTION, enc(&get_assertion(RP, &[], vec![]))),
    ] {
        for (label, body) in malformed_bodies(&valid) {
            let mut m = vec![command];
            m.extend(body);
            cases.push((format!("cmd {command:#04x}: {label}"), m, st::INVALID_CBOR));
        }
    }
    expect_statuses(&mut d, cid, cases);
}

#[test]
fn make_credential_and_get_assertion_params_not_a_map_is_unexpected_type() {
    let (mut d, cid) = device();
    let mut cases = Vec::new();
    for command in [MAKE_CREDENTIAL, GET_ASSERTION] {
        for (label, v) in [
            ("array", Value::Array(vec![Value::from(1)])),
            ("int", Value::from(1)),
            ("text", Value::from("map")),
            ("bytes", Value::Bytes(vec![0xa0])),
            ("null", Value::Null),
        ] {
            cases.push((format!("cmd {command:#04x}: {label}"), msg(command, &v), st::CBOR_UNEXPECTED_TYPE));
        }
    }
    expect_statuses(&mut d, cid, cases);
}

#[test]
fn make_credential_missing_required_member_is_missing_parameter() {
    let (mut d, cid) = device();
    let base = make_credential(RP, b"u1", "alice", false);
    let exclude = |entry: Value| set(&base, 5, Some(Value::Array(vec![entry])));
    let mut cases: Vec<(String, Value)> = (1..=4).map(|k| (format!("key {k}"), set(&base, k, None))).collect();
    cases.extend([
        ("rp.id".to_owned(), set(&base, 2, Some(text_map(&[("name", Value::from("Example"))])))),
        ("user.id".to_owned(), set(&base, 3, Some(text_map(&[("name", Value::from("alice"))])))),
        (
            "pubKeyCredParams alg".to_owned(),
            set(&base, 4, Some(Value::Array(vec![text_map(&[("type", Value::from("public-key"))])]))),
        ),
        (
            "pubKeyCredParams type".to_owned(),
            set(&base, 4, Some(Value::Array(vec![text_map(&[("alg", Value::from(-7))])]))),
        ),
        ("excludeList id".to_owned(), exclude(text_map(&[("type", Value::from("public-key"))]))),
        ("excludeList type".to_owned(), exclude(text_map(&[("id", Value::Bytes(vec![1; 16]))]))),
    ]);
    let cases = cases.into_iter().map(|(l, v)| (l, msg(MAKE_CREDENTIAL, &v), st::MISSING_PARAMETER)).collect();
    expect_statuses(&mut d, cid, cases);
}

#[test]
fn make_credential_wrong_types_are_unexpected_type() {
    let (mut d, cid) = device();
    let base = make_credential(RP, b"u1", "alice", false);
    let rp = at(&base, 2).clone();
    let user = at(&base, 3).clone();
    let exclude = |entry: Value| set(&base, 5, Some(Value::Array(vec![entry])));
    let algs = |entry: Value| set(&base, 4, Some(Value::Array(vec![entry])));
    let cases: Vec<(&str, Value)> = vec![
        ("clientDataHash as text", set(&base, 1, Some(Value::from("a".repeat(32))))),
        ("clientDataHash as array", set(&base, 1, Some(Value::Array(vec![Value::from(0); 32])))),
        ("rp as array", set(&base, 2, Some(Value::Array(vec![Value::from(RP)])))),
        ("rp as text", set(&base, 2, Some(Value::from(RP)))),
        ("rp.id as bytes", set(&base, 2, Some(set(&rp, "id", Some(Value::Bytes(RP.as_bytes().to_vec())))))),
        ("rp.name as int", set(&base, 2, Some(set(&rp, "name", Some(Value::from(5)))))),
        ("user as bytes", set(&base, 3, Some(Value::Bytes(b"u1".to_vec())))),
        ("user.id as text", set(&base, 3, Some(set(&user, "id", Some(Value::from("u1")))))),
        ("user.name as bytes", set(&base, 3, Some(set(&user, "name", Some(Value::Bytes(b"alice".to_vec())))))),
        ("user.displayName as int", set(&base, 3, Some(set(&user, "displayName", Some(Value::from(1)))))),
        (
            "pubKeyCredParams as map",
            set(&base, 4, Some(text_map(&[("alg", Value::from(-7)), ("type", Value::from("public-key"))]))),
        ),
        ("pubKeyCredParams entry as int", algs(Value::from(-7))),
        ("alg as text", algs(alg_entry(Value::from("ES256"), "public-key"))),
        ("alg as float", algs(alg_entry(Value::Float(-7.0), "public-key"))),
        ("alg type as int", algs(text_map(&[("alg", Value::from(-7)), ("type", Value::from(1))]))),
        ("excludeList as map", set(&base, 5, Some(descriptor(&[1; 16])))),
        ("excludeList entry as bytes", exclude(Value::Bytes(vec![1; 16]))),
        (
            "excludeList entry id as text",
            exclude(text_map(&[("id", Value::from("abc")), ("type", Value::from("public-key"))])),
        ),
        (
            "excludeList entry type as int",
            exclude(text_map(&[("id", Value::Bytes(vec![1; 16])), ("type", Value::from(0))])),
        ),
        (
            "excludeList transports as text",
            exclude(text_map(&[
                ("id", Value::Bytes(vec![1; 16])),
                ("type", Value::from("public-key")),
                ("transports", Value::from("usb")),
            ])),
        ),
        ("extensions as array", set(&base, 6, Some(Value::Array(vec![])))),
        ("extensions as text", set(&base, 6, Some(Value::from("hmac-secret")))),
        ("options as array", set(&base, 7, Some(Value::Array(vec![Value::from("rk")])))),
        ("options rk as int", set(&base, 7, Some(text_map(&[("rk", Value::from(1))])))),
        ("options up as text", set(&base, 7, Some(text_map(&[("up", Value::from("true"))])))),
        ("options uv as null", set(&base, 7, Some(text_map(&[("uv", Value::Null)])))),
        ("pinUvAuthParam as text", set(&set(&base, 8, Some(Value::from("abc"))), 9, Some(Value::from(1)))),
        ("pinUvAuthProtocol as text", set(&base, 9, Some(Value::from("1")))),
        (
            "pinUvAuthProtocol as text with param",
            set(&set(&base, 8, Some(Value::Bytes(vec![0; 16]))), 9, Some(Value::from("1"))),
        ),
        ("pinUvAuthProtocol negative", set(&base, 9, Some(Value::from(-1)))),
        ("enterpriseAttestation as text", set(&base, 0x0A, Some(Value::from("1")))),
    ];
    let cases =
        cases.into_iter().map(|(l, v)| (l.to_owned(), msg(MAKE_CREDENTIAL, &v), st::CBOR_UNEXPECTED_TYPE)).collect();
    expect_statuses(&mut d, cid, cases);
}

#[test]
fn make_credential_bad_lengths_are_invalid_length() {
    let (mut d, cid) = device();
    let base = make_credential(RP, b"u1", "alice", false);
    let user = at(&base, 3).clone();
    let user_id = |len: usize| set(&base, 3, Some(set(&user, "id", Some(Value::Bytes(vec![7; len])))));
    let mut cases: Vec<(String, Vec<u8>, u8)> = [0usize, 16, 31, 33, 64]
        .into_iter()
        .map(|len| {
            (
                format!("clientDataHash {len} bytes"),
                msg(MAKE_CREDENTIAL, &set(&base, 1, Some(Value::Bytes(vec![1; len])))),
                st::INVALID_LENGTH,
            )
        })
        .collect();
    cases.push(("user.id 65 bytes".into(), msg(MAKE_CREDENTIAL, &user_id(65)), st::INVALID_LENGTH));
    cases.push(("user.id 300 bytes".into(), msg(MAKE_CREDENTIAL, &user_id(300)), st::INVALID_LENGTH));
    cases.push(("user.id 64 bytes".into(), msg(MAKE_CREDENTIAL, &user_id(64)), st::OK));
    expect_statuses(&mut d, cid, cases);
}

#[test]
fn make_credential_ignores_unknown_keys_options_and_extensions() {
    let (mut d, cid) = device();
    let mut params = make_credential(RP, b"u1", "alice", false);
    params = set(
        &params,
        6,
        Some(text_map(&[
            ("x-unknown-flag", Value::Bool(true)),
            ("x-unknown-int", Value::from(2)),
            ("x-unknown", Value::Array(vec![])),
        ])),
    );
    params = set(&params, 7, Some(options(&[("plat", true), ("zz-unknown", false), ("rk", true)])));
    // 0x0B is CTAP 2.2's attestationFormatsPreference; 0x0E is no member.
    params = set(&params, 0x0E, Some(Value::from("unknown member")));
    params = set(&params, 0x1F, Some(int_map(vec![(1, Value::Null)])));
    params = set(&params, "textkey", Some(Value::from(1)));
    params = set(&params, -5, Some(Value::Bytes(vec![])));
    // A descriptor with transports nests four levels deep.
    let with_transports = text_map(&[
        ("id", Value::Bytes(vec![0x42; 16])),
        ("type", Value::from("public-key")),
        ("transports", Value::Array(vec![Value::from("usb"), Value::from("nfc")])),
    ]);
    params = set(&params, 5, Some(Value::Array(vec![with_transports])));
    // Unknown members of rp, user and pubKeyCredParams entries, too.
    let rp = set(at(&params, 2), "icon", Some(Value::from("https://example.com/i.png")));
    params = set(&params, 2, Some(set(&rp, "zz", Some(Value::from(1)))));
    let user = set(at(&params, 3), "displayName", Some(Value::from("Alice")));
    params = set(&params, 3, Some(set(&user, "zz", Some(Value::Null))));
    let r = call(&mut d, cid, MAKE_CREDENTIAL, Some(&params));
    assert_eq!(r.status, st::OK);
    let ad = parse_auth_data(&responses::bytes(get(r.body(), 2)));
    assert_eq!(ad.flags, UP | AT, "no output for unknown extensions: ED clear");
    assert_eq!(ad.credential_id.unwrap().len(), 16, "rk honoured among unknown options");
}

#[test]
fn get_assertion_missing_required_member_is_missing_parameter() {
    let (mut d, cid) = device();
    let base = get_assertion(RP, &[&[1; 16]], vec![]);
    let allow = |entry: Value| set(&base, 3, Some(Value::Array(vec![entry])));
    let cases = vec![
        ("rpId".to_owned(), msg(GET_ASSERTION, &set(&base, 1, None)), st::MISSING_PARAMETER),
        ("clientDataHash".to_owned(), msg(GET_ASSERTION, &set(&base, 2, None)), st::MISSING_PARAMETER),
        (
            "allowList id".to_owned(),
            msg(GET_ASSERTION, &allow(text_map(&[("type", Value::from("public-key"))]))),
            st::MISSING_PARAMETER,
        ),
        (
            "allowList type".to_owned(),
            msg(GET_ASSERTION, &allow(text_map(&[("id", Value::Bytes(vec![1; 16]))]))),
            st::MISSING_PARAMETER,
        ),
        ("empty map".to_owned(), msg(GET_ASSERTION, &Value::Map(vec![])), st::MISSING_PARAMETER),
    ];
    expect_statuses(&mut d, cid, cases);
}

#[test]
fn get_assertion_wrong_types_are_unexpected_type() {
    let (mut d, cid) = device();
    let base = get_assertion(RP, &[&[1; 16]], vec![]);
    let allow = |entry: Value| set(&base, 3, Some(Value::Array(vec![entry])));
    let cases: Vec<(&str, Value)> = vec![
        ("rpId as bytes", set(&base, 1, Some(Value::Bytes(RP.as_bytes().to_vec())))),
        ("rpId as int", set(&base, 1, Some(Value::from(1)))),
        ("clientDataHash as text", set(&base, 2, Some(Value::from("a".repeat(32))))),
        ("allowList as map", set(&base, 3, Some(descriptor(&[1; 16])))),
        ("allowList entry as text", allow(Value::from("id"))),
        (
            "allowList entry id as text",
            allow(text_map(&[("id", Value::from("abc")), ("type", Value::from("public-key"))])),
        ),
        (
            "allowList entry type as int",
            allow(text_map(&[("id", Value::Bytes(vec![1; 16])), ("type", Value::from(0))])),
        ),
        ("extensions as array", set(&base, 4, Some(Value::Array(vec![])))),
        ("options as array", set(&base, 5, Some(Value::Array(vec![])))),
        ("options up as int", set(&base, 5, Some(text_map(&[("up", Value::from(0))])))),
        ("pinUvAuthParam as text", set(&set(&base, 6, Some(Value::from("abc"))), 7, Some(Value::from(1)))),
        ("pinUvAuthProtocol as text", set(&base, 7, Some(Value::from("1")))),
    ];
    let cases =
        cases.into_iter().map(|(l, v)| (l.to_owned(), msg(GET_ASSERTION, &v), st::CBOR_UNEXPECTED_TYPE)).collect();
    expect_statuses(&mut d, cid, cases);
}

#[test]
fn get_assertion_client_data_hash_not_32_bytes_is_invalid_length() {
    let (mut d, cid) = device();
    let base = get_assertion(RP, &[], vec![]);
    let cases = [0usize, 20, 31, 33, 48]
        .into_iter()
        .map(|len| {
            (
                format!("{len} bytes"),
                msg(GET_ASSERTION, &set(&base, 2, Some(Value::Bytes(vec![1; len])))),
                st::INVALID_LENGTH,
            )
        })
        .collect();
    expect_statuses(&mut d, cid, cases);
}

#[test]
fn get_assertion_ignores_unknown_keys_options_and_extensions() {
    let (mut d, cid) = device();
    let cred = register(&mut d, cid, RP, b"u1", "alice", false);
    let mut params = get_assertion(RP, &[&cred.id], vec![]);
    // Shaped like hmac-secret's input: four levels deep, the most CTAP2 allows (§8).
    let key_agreement = int_map(vec![
        (1, Value::from(2)),
        (3, Value::from(-25)),
        (-1, Value::from(1)),
        (-2, Value::Bytes(vec![1; 32])),
        (-3, Value::Bytes(vec![2; 32])),
    ]);
    let hmac_secret = int_map(vec![
        (1, key_agreement),
        (2, Value::Bytes(vec![3; 32])),
        (3, Value::Bytes(vec![4; 16])),
        (4, Value::from(1)),
    ]);
    params =
        set(&params, 4, Some(text_map(&[("x-unknown-secret", hmac_secret), ("x-unknown-flag", Value::Bool(true))])));
    params = set(&params, 5, Some(options(&[("zz-unknown", true), ("up", true)])));
    params = set(&params, 0x0C, Some(Value::from("unknown")));
    params = set(&params, "textkey", Some(Value::Null));
    let r = call(&mut d, cid, GET_ASSERTION, Some(&params));
    assert_eq!(r.status, st::OK);
    check_assertion(r.body(), RP, &cred.id, &cred.key, UP);
}

#[test]
fn get_assertion_options_and_pin_uv_auth_errors() {
    let (mut d, cid) = device();
    let info = get_info(&mut d, cid);
    let cred = register(&mut d, cid, RP, b"u1", "alice", true);
    let base = get_assertion(RP, &[&cred.id], vec![]);
    let with_opts = |o: Value| msg(GET_ASSERTION, &set(&base, 5, Some(o)));
    let pin = |protocol: Option<i64>| {
        msg(GET_ASSERTION, &set(&set(&base, 6, Some(Value::Bytes(vec![0xAB; 16]))), 7, protocol.map(Value::from)))
    };
    expect_statuses(
        &mut d,
        cid,
        vec![
            ("rk=true".into(), with_opts(options(&[("rk", true)])), st::UNSUPPORTED_OPTION),
            (
                "rk=true without allowList".into(),
                msg(GET_ASSERTION, &set(&set(&base, 3, None), 5, Some(options(&[("rk", true)])))),
                st::UNSUPPORTED_OPTION,
            ),
            ("uv=true".into(), with_opts(options(&[("uv", true)])), st::INVALID_OPTION),
            ("uv=true,up=false".into(), with_opts(options(&[("uv", true), ("up", false)])), st::INVALID_OPTION),
            ("pinUvAuthParam without protocol".into(), pin(None), st::MISSING_PARAMETER),
            ("pinUvAuthParam protocol 1".into(), pin(Some(1)), pin_uv_auth_status(&info, 1)),
            ("pinUvAuthParam protocol 2".into(), pin(Some(2)), pin_uv_auth_status(&info, 2)),
            ("pinUvAuthParam protocol 3".into(), pin(Some(3)), st::INVALID_PARAMETER),
            ("uv=false".into(), with_opts(options(&[("uv", false)])), st::OK),
        ],
    );
}

// ---------------------------------------------------------------------------
// authenticatorGetAssertion (§6.2) and authenticatorGetNextAssertion (§6.3)

#[test]
fn get_assertion_with_allow_list_verifies_sets_up_and_echoes_credential_id() {
    let (mut d, cid) = device();
    let cred = register(&mut d, cid, RP, b"u1", "alice", false);
    let before = d.prompt.asked().len();
    let r = call(&mut d, cid, GET_ASSERTION, Some(&get_assertion(RP, &[&cred.id], vec![])));
    assert_eq!(r.status, st::OK);
    let body = r.body();
    assert_eq!(int_keys(body), [1, 2, 3], "non-discoverable: no user, no numberOfCredentials");
    let c1 = check_assertion(body, RP, &cred.id, &cred.key, UP);
    assert!(c1 > cred.counter);
    assert_eq!(asked_since(&d, before), [(PresencePurpose::Authenticate, Some(RP.to_owned()))]);
    let r = call(&mut d, cid, GET_ASSERTION, Some(&get_assertion(RP, &[&cred.id], vec![])));
    assert_eq!(r.status, st::OK);
    let c2 = check_assertion(r.body(), RP, &cred.id, &cred.key, UP);
    assert!(c2 > c1, "counter increments: {c1} then {c2}");
    // Unknown entries and entries of other types before ours are skipped.
    let other_type = text_map(&[("id", Value::Bytes(cred.id.clone())), ("type", Value::from("x"))]);
    let list = Value::Array(vec![descriptor(&[9; 16]), other_type, descriptor(&[1; 80]), descriptor(&cred.id)]);
    let params = set(&get_assertion(RP, &[], vec![]), 3, Some(list));
    let r = call(&mut d, cid, GET_ASSERTION, Some(&params));
    assert_eq!(r.status, st::OK);
    check_assertion(r.body(), RP, &cred.id, &cred.key, UP);
    // A discoverable credential named in the allow list returns its user handle.
    let rk = register(&mut d, cid, RP, b"u2", "bob", true);
    let r = call(&mut d, cid, GET_ASSERTION, Some(&get_assertion(RP, &[&rk.id], vec![])));
    assert_eq!(r.status, st::OK);
    check_assertion(r.body(), RP, &rk.id, &rk.key, UP);
    assert_eq!(user_id_of(r.body()), b"u2");
    assert_eq!(get(r.body(), 5), None);
}

#[test]
fn get_assertion_up_false_has_no_up_flag_and_no_prompt() {
    let (mut d, cid) = device();
    let cred = register(&mut d, cid, RP, b"u1", "alice", false);
    let rk = register(&mut d, cid, RP, b"u2", "bob", true);
    let before = d.prompt.asked().len();
    let up_false = || vec![(5, options(&[("up", false)]))];
    let r = call(&mut d, cid, GET_ASSERTION, Some(&get_assertion(RP, &[&cred.id], up_false())));
    assert_eq!(r.status, st::OK);
    check_assertion(r.body(), RP, &cred.id, &cred.key, 0);
    let r = call(&mut d, cid, GET_ASSERTION, Some(&get_assertion(RP, &[], up_false())));
    assert_eq!(r.status, st::OK);
    check_assertion(r.body(), RP, &rk.id, &rk.key, 0);
    // The probe of a credential that is not here answers NO_CREDENTIALS.
    let r = call(&mut d, cid, GET_ASSERTION, Some(&get_assertion(OTHER_RP, &[&cred.id], up_false())));
    assert_eq!(r.status, st::NO_CREDENTIALS);
    assert!(asked_since(&d, before).is_empty(), "up=false asks nobody");
    // A denial script is not consumed either.
    d.prompt.push(PromptOutcome::Denied);
    let r = call(&mut d, cid, GET_ASSERTION, Some(&get_assertion(RP, &[&cred.id], up_false())));
    assert_eq!(r.status, st::OK);
}

fn flipped(id: &[u8], i: usize) -> Vec<u8> {
    let mut f = id.to_vec();
    f[i] ^= 0x01;
    f
}

#[test]
fn get_assertion_forged_credential_ids_are_no_credentials() {
    let (mut d, cid) = device();
    let cred = register(&mut d, cid, RP, b"u1", "alice", false);
    let rk = register(&mut d, cid, RP, b"u2", "bob", true);
    let n = cred.id.len();
    let mut forged: Vec<(String, Vec<u8>)> = [0, 1, 2, 5, 12, 13, 20, n / 2, n - 17, n - 16, n - 2, n - 1]
        .into_iter()
        .map(|i| (format!("byte {i} of {n} flipped"), flipped(&cred.id, i)))
        .collect();
    for i in [0, 7, 15] {
        forged.push((format!("discoverable byte {i} flipped"), flipped(&rk.id, i)));
    }
    let mut extended = cred.id.clone();
    extended.push(0);
    let mut extended16 = cred.id.clone();
    extended16.extend([0xAA; 16]);
    let mut rk_extended = rk.id.clone();
    rk_extended.push(rk.id[0]);
    forged.extend([
        ("truncated by one".to_owned(), cred.id[..n - 1].to_vec()),
        ("truncated to half".to_owned(), cred.id[..n / 2].to_vec()),
        ("truncated to 16".to_owned(), cred.id[..16].to_vec()),
        ("truncated to 1".to_owned(), cred.id[..1].to_vec()),
        ("discoverable truncated".to_owned(), rk.id[..15].to_vec()),
        ("extended by one".to_owned(), extended),
        ("extended by 16".to_owned(), extended16),
        ("discoverable extended".to_owned(), rk_extended),
        ("empty".to_owned(), vec![]),
        ("300 bytes".to_owned(), vec![0x01; 300]),
        ("255 bytes".to_owned(), (0..255u8).collect()),
        (
            "256 bytes starting with ours".to_owned(),
            cred.id.iter().copied().chain(std::iter::repeat(0)).take(256).collect(),
        ),
    ]);
    let cases = forged
        .into_iter()
        .map(|(label, id)| (label, msg(GET_ASSERTION, &get_assertion(RP, &[&id], vec![])), st::NO_CREDENTIALS))
        .collect();
    expect_statuses(&mut d, cid, cases);
    assert_eq!(d.prompt.asked().len(), 2, "only the two registrations prompted");
}

#[test]
fn get_assertion_credential_of_other_rp_is_no_credentials() {
    let (mut d, cid) = device();
    let cred = register(&mut d, cid, RP, b"u1", "alice", false);
    let rk = register(&mut d, cid, RP, b"u2", "bob", true);
    let before = d.prompt.asked().len();
    for id in [&cred.id, &rk.id] {
        let r = call(&mut d, cid, GET_ASSERTION, Some(&get_assertion(OTHER_RP, &[id], vec![])));
        assert_eq!(r.status, st::NO_CREDENTIALS);
    }
    let r = call(&mut d, cid, GET_ASSERTION, Some(&get_assertion(OTHER_RP, &[], vec![])));
    assert_eq!(r.status, st::NO_CREDENTIALS);
    // An rp ID differing only in case or a trailing dot is another rp.
    for rp in ["Example.com", "example.com.", "sub.example.com"] {
        let r = call(&mut d, cid, GET_ASSERTION, Some(&get_assertion(rp, &[&cred.id], vec![])));
        assert_eq!(r.status, st::NO_CREDENTIALS, "{rp}");
    }
    assert!(asked_since(&d, before).is_empty());
}

#[test]
fn get_assertion_without_credentials_is_no_credentials_without_prompt() {
    let (mut d, cid) = device();
    for params in [get_assertion(RP, &[], vec![]), get_assertion(RP, &[&[5; 16], &[6; 70]], vec![])] {
        let r = call(&mut d, cid, GET_ASSERTION, Some(&params));
        assert_eq!(r.status, st::NO_CREDENTIALS);
    }
    // Non-discoverable credentials are not found without an allow list.
    register(&mut d, cid, RP, b"u1", "alice", false);
    let before = d.prompt.asked().len();
    let r = call(&mut d, cid, GET_ASSERTION, Some(&get_assertion(RP, &[], vec![])));
    assert_eq!(r.status, st::NO_CREDENTIALS);
    assert!(asked_since(&d, before).is_empty());
}

/// Registers two discoverable credentials for RP (alice first, then bob).
fn two_residents(d: &mut Device, cid: u32) -> (Cred, Cred) {
    let alice = register(d, cid, RP, b"user-alice", "alice", true);
    register(d, cid, OTHER_RP, b"user-carol", "carol", true);
    register(d, cid, RP, b"user-plain", "plain", false);
    let bob = register(d, cid, RP, b"user-bob", "bob", true);
    (alice, bob)
}

#[test]
fn get_assertion_discoverable_newest_first_then_get_next_assertion() {
    let (mut d, cid) = device();
    let (alice, bob) = two_residents(&mut d, cid);
    let before = d.prompt.asked().len();
    let r = call(&mut d, cid, GET_ASSERTION, Some(&get_assertion(RP, &[], vec![])));
    assert_eq!(r.status, st::OK);
    let body = r.body();
    assert_eq!(int_keys(body), [1, 2, 3, 4, 5]);
    assert_eq!(int(at(body, 5)), 2, "numberOfCredentials");
    let c1 = check_assertion(body, RP, &bob.id, &bob.key, UP);
    assert_eq!(user_id_of(body), b"user-bob", "newest first");
    assert_eq!(asked_since(&d, before), [(PresencePurpose::Authenticate, Some(RP.to_owned()))]);

    let r = call(&mut d, cid, GET_NEXT_ASSERTION, None);
    assert_eq!(r.status, st::OK);
    let body = r.body();
    assert_eq!(int_keys(body), [1, 2, 3, 4], "no numberOfCredentials in getNextAssertion");
    let c2 = check_assertion(body, RP, &alice.id, &alice.key, UP);
    assert_eq!(user_id_of(body), b"user-alice");
    assert_eq!(c2, c1, "per-credential counters: alice's first assertion counts like bob's");
    assert_eq!(d.prompt.asked().len(), before + 1, "getNextAssertion asks nobody");

    let r = call(&mut d, cid, GET_NEXT_ASSERTION, None);
    assert_eq!(r.status, st::NOT_ALLOWED, "only two credentials");
    let r = call(&mut d, cid, GET_NEXT_ASSERTION, None);
    assert_eq!(r.status, st::NOT_ALLOWED);
}

#[test]
fn get_next_assertion_keeps_up_false_flags() {
    let (mut d, cid) = device();
    let (alice, bob) = two_residents(&mut d, cid);
    let before = d.prompt.asked().len();
    let r = call(&mut d, cid, GET_ASSERTION, Some(&get_assertion(RP, &[], vec![(5, options(&[("up", false)]))])));
    assert_eq!(r.status, st::OK);
    check_assertion(r.body(), RP, &bob.id, &bob.key, 0);
    let r = call(&mut d, cid, GET_NEXT_ASSERTION, None);
    assert_eq!(r.status, st::OK);
    check_assertion(r.body(), RP, &alice.id, &alice.key, 0);
    assert!(asked_since(&d, before).is_empty());
}

#[test]
fn get_next_assertion_without_prior_get_assertion_is_not_allowed() {
    let (mut d, cid) = device();
    let r = call(&mut d, cid, GET_NEXT_ASSERTION, None);
    assert_eq!(r.status, st::NOT_ALLOWED);
    // Nor after a getAssertion that found only one credential, or failed.
    let one = register(&mut d, cid, RP, b"u1", "alice", true);
    let r = call(&mut d, cid, GET_ASSERTION, Some(&get_assertion(RP, &[], vec![])));
    assert_eq!(r.status, st::OK);
    check_assertion(r.body(), RP, &one.id, &one.key, UP);
    let r = call(&mut d, cid, GET_NEXT_ASSERTION, None);
    assert_eq!(r.status, st::NOT_ALLOWED);
    let r = call(&mut d, cid, GET_ASSERTION, Some(&get_assertion(OTHER_RP, &[], vec![])));
    assert_eq!(r.status, st::NO_CREDENTIALS);
    let r = call(&mut d, cid, GET_NEXT_ASSERTION, None);
    assert_eq!(r.status, st::NOT_ALLOWED);
}

#[test]
fn get_next_assertion_after_31_seconds_is_not_allowed() {
    let (mut d, cid) = device();
    two_residents(&mut d, cid);
    let r = call(&mut d, cid, GET_ASSERTION, Some(&get_assertion(RP, &[], vec![])));
    assert_eq!(r.status, st::OK);
    d.advance(Duration::from_secs(31));
    let r = call(&mut d, cid, GET_NEXT_ASSERTION, None);
    assert_eq!(r.status, st::NOT_ALLOWED);
}

#[test]
fn get_next_assertion_within_30_seconds_of_the_last_call_succeeds() {
    let (mut d, cid) = device();
    let (alice, bob) = two_residents(&mut d, cid);
    let carol = register(&mut d, cid, RP, b"user-carol", "carol", true);
    let r = call(&mut d, cid, GET_ASSERTION, Some(&get_assertion(RP, &[], vec![])));
    assert_eq!(r.status, st::OK);
    assert_eq!(int(at(r.body(), 5)), 3);
    check_assertion(r.body(), RP, &carol.id, &carol.key, UP);
    // The 30 s run from the latest getAssertion/getNextAssertion (§6.3).
    d.advance(Duration::from_secs(25));
    let r = call(&mut d, cid, GET_NEXT_ASSERTION, None);
    assert_eq!(r.status, st::OK);
    check_assertion(r.body(), RP, &bob.id, &bob.key, UP);
    d.advance(Duration::from_secs(25));
    let r = call(&mut d, cid, GET_NEXT_ASSERTION, None);
    assert_eq!(r.status, st::OK);
    check_assertion(r.body(), RP, &alice.id, &alice.key, UP);
}

#[test]
fn get_next_assertion_after_another_command_is_not_allowed() {
    let (mut d, cid) = device();
    two_residents(&mut d, cid);
    for between in [GET_INFO, SELECTION, 0x40] {
        let r = call(&mut d, cid, GET_ASSERTION, Some(&get_assertion(RP, &[], vec![])));
        assert_eq!(r.status, st::OK);
        call(&mut d, cid, between, None);
        let r = call(&mut d, cid, GET_NEXT_ASSERTION, None);
        assert_eq!(r.status, st::NOT_ALLOWED, "after command {between:#04x}");
    }
}

#[test]
fn get_next_assertion_from_another_channel_is_not_allowed() {
    let (mut d, cid) = device();
    two_residents(&mut d, cid);
    let other = d.init();
    assert_ne!(other, cid);
    let r = call(&mut d, cid, GET_ASSERTION, Some(&get_assertion(RP, &[], vec![])));
    assert_eq!(r.status, st::OK);
    let r = call(&mut d, other, GET_NEXT_ASSERTION, None);
    assert_eq!(r.status, st::NOT_ALLOWED);
}

#[test]
fn get_assertion_policy_deny_is_operation_denied_without_prompt() {
    let (mut d, cid) = device();
    let cred = register(&mut d, cid, RP, b"u1", "alice", false);
    register(&mut d, cid, RP, b"u2", "bob", true);
    deny_rp(&d, RP);
    let before = d.prompt.asked().len();
    for params in [
        get_assertion(RP, &[&cred.id], vec![]),
        get_assertion(RP, &[], vec![]),
        get_assertion(RP, &[&cred.id], vec![(5, options(&[("up", false)]))]),
    ] {
        let r = call(&mut d, cid, GET_ASSERTION, Some(&params));
        assert_eq!(r.status, st::OPERATION_DENIED);
    }
    assert!(asked_since(&d, before).is_empty());
}

#[test]
fn get_assertion_prompt_denial_timeout_and_cancel() {
    let (mut d, cid) = device();
    let cred = register(&mut d, cid, RP, b"u1", "alice", false);
    two_residents(&mut d, cid);
    for (outcome, want) in [
        (PromptOutcome::Denied, st::OPERATION_DENIED),
        (PromptOutcome::Unavailable, st::OPERATION_DENIED),
        (PromptOutcome::TimedOut, st::USER_ACTION_TIMEOUT),
        (PromptOutcome::Cancelled, st::KEEPALIVE_CANCEL),
    ] {
        for params in [get_assertion(RP, &[&cred.id], vec![]), get_assertion(RP, &[], vec![])] {
            d.prompt.push(outcome);
            let r = call(&mut d, cid, GET_ASSERTION, Some(&params));
            assert_eq!(r.status, want, "{outcome:?}");
            // No assertion state survives a refused getAssertion.
            let r = call(&mut d, cid, GET_NEXT_ASSERTION, None);
            assert_eq!(r.status, st::NOT_ALLOWED);
        }
    }
}

// ---------------------------------------------------------------------------
// authenticatorSelection (§6.9), authenticatorReset (§6.6), unknown commands

#[test]
fn selection_approved_is_success_denied_is_operation_denied() {
    let (mut d, cid) = device();
    let r = call(&mut d, cid, SELECTION, None);
    assert_eq!(r.raw, [st::OK], "status only, no body");
    d.prompt.push(PromptOutcome::Denied);
    let r = call(&mut d, cid, SELECTION, None);
    assert_eq!(r.raw, [st::OPERATION_DENIED]);
    d.prompt.push(PromptOutcome::TimedOut);
    let r = call(&mut d, cid, SELECTION, None);
    assert_eq!(r.raw, [st::USER_ACTION_TIMEOUT]);
    assert_eq!(d.prompt.asked(), vec![(PresencePurpose::Select, None); 3]);
}

#[test]
fn reset_within_10_seconds_after_approval_deletes_every_credential() {
    let (mut d, cid) = device();
    let plain = register(&mut d, cid, RP, b"u1", "alice", false);
    let resident = register(&mut d, cid, RP, b"u2", "bob", true);
    let other = register(&mut d, cid, OTHER_RP, b"u3", "carol", true);
    d.advance(Duration::from_secs(5));
    let before = d.prompt.asked().len();
    let r = call(&mut d, cid, RESET, None);
    assert_eq!(r.raw, [st::OK]);
    assert_eq!(asked_since(&d, before), [(PresencePurpose::Reset, None)]);

    let before = d.prompt.asked().len();
    for (rp, id) in [(RP, &plain.id), (RP, &resident.id), (OTHER_RP, &other.id)] {
        let r = call(&mut d, cid, GET_ASSERTION, Some(&get_assertion(rp, &[id], vec![])));
        assert_eq!(r.status, st::NO_CREDENTIALS, "{rp} {id:02x?}");
    }
    for rp in [RP, OTHER_RP] {
        let r = call(&mut d, cid, GET_ASSERTION, Some(&get_assertion(rp, &[], vec![])));
        assert_eq!(r.status, st::NO_CREDENTIALS);
    }
    assert!(asked_since(&d, before).is_empty());
    // Old IDs no longer exclude anything.
    let list = Value::Array(vec![descriptor(&plain.id), descriptor(&resident.id)]);
    let r = call(&mut d, cid, MAKE_CREDENTIAL, Some(&requests::make_credential(RP, b"u4", "dave", vec![(5, list)])));
    assert_eq!(r.status, st::OK);
    assert_eq!(asked_since(&d, before), [(PresencePurpose::Register, Some(RP.to_owned()))]);
}

#[test]
fn reset_after_11_seconds_is_not_allowed_without_prompt() {
    let (mut d, cid) = device();
    let plain = register(&mut d, cid, RP, b"u1", "alice", false);
    d.advance(Duration::from_secs(11));
    let before = d.prompt.asked().len();
    let r = call(&mut d, cid, RESET, None);
    assert_eq!(r.raw, [st::NOT_ALLOWED]);
    assert!(asked_since(&d, before).is_empty());
    let r = call(&mut d, cid, GET_ASSERTION, Some(&get_assertion(RP, &[&plain.id], vec![])));
    assert_eq!(r.status, st::OK);
}

#[test]
fn reset_denied_is_operation_denied_and_deletes_nothing() {
    let (mut d, cid) = device();
    let plain = register(&mut d, cid, RP, b"u1", "alice", false);
    let resident = register(&mut d, cid, RP, b"u2", "bob", true);
    for (outcome, want) in
        [(PromptOutcome::Denied, st::OPERATION_DENIED), (PromptOutcome::TimedOut, st::USER_ACTION_TIMEOUT)]
    {
        d.prompt.push(outcome);
        let r = call(&mut d, cid, RESET, None);
        assert_eq!(r.raw, [want], "{outcome:?}");
    }
    let r = call(&mut d, cid, GET_ASSERTION, Some(&get_assertion(RP, &[&plain.id], vec![])));
    assert_eq!(r.status, st::OK);
    check_assertion(r.body(), RP, &plain.id, &plain.key, UP);
    let r = call(&mut d, cid, GET_ASSERTION, Some(&get_assertion(RP, &[], vec![])));
    assert_eq!(r.status, st::OK);
    check_assertion(r.body(), RP, &resident.id, &resident.key, UP);
}

#[test]
fn unknown_commands_are_invalid_command() {
    let (mut d, cid) = device();
    // A command becomes known once getInfo advertises its feature (§6.4):
    // clientPIN with clientPin/pinUvAuthToken, and so on. Until then it is unknown.
    let info = get_info(&mut d, cid);
    let features: &[(u8, &[&str])] = &[
        (CLIENT_PIN, &["clientPin", "pinUvAuthToken"]),
        (0x09, &["bioEnroll"]),
        (0x0A, &["credMgmt"]),
        (0x0C, &["largeBlobs"]),
        (0x0D, &["authnrCfg"]),
        (0x40, &["userVerificationMgmtPreview"]),
        // The preview byte is served beside credMgmt: libfido2 1.12 sends it.
        (0x41, &["credentialMgmtPreview", "credMgmt"]),
    ];
    let advertised = |command: u8| {
        features.iter().any(|(c, ids)| *c == command && ids.iter().any(|id| info_option(&info, id).is_some()))
    };
    let pin_get_retries = int_map(vec![(1, Value::from(1)), (2, Value::from(1))]);
    let mut cases = vec![
        ("0x40".to_owned(), vec![0x40], st::INVALID_COMMAND),
        ("0x40 with params".to_owned(), msg(0x40, &Value::Map(vec![])), st::INVALID_COMMAND),
        ("clientPIN getRetries".to_owned(), msg(CLIENT_PIN, &pin_get_retries), st::INVALID_COMMAND),
        ("clientPIN bare".to_owned(), vec![CLIENT_PIN], st::INVALID_COMMAND),
    ];
    for command in [0x00u8, 0x03, 0x05, 0x09, 0x0A, 0x0C, 0x0D, 0x0E, 0x20, 0x41, 0x7F, 0x80, 0xC0, 0xFF] {
        cases.push((format!("{command:#04x}"), vec![command], st::INVALID_COMMAND));
    }
    cases.retain(|(label, message, _)| {
        let skip = advertised(message[0]);
        if skip {
            eprintln!("skipped {label}: getInfo advertises the feature");
        }
        !skip
    });
    expect_statuses(&mut d, cid, cases);
    assert!(d.prompt.asked().is_empty());
}

// ---------------------------------------------------------------------------
// Robustness

struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// CBOR head bytes that tend to matter: size boundaries, every major type,
/// indefinite lengths, simple values, floats, break.
const INTERESTING: &[u8] = &[
    0x00, 0x01, 0x17, 0x18, 0x19, 0x1a, 0x1b, 0x1c, 0x1f, 0x20, 0x37, 0x38, 0x3b, 0x40, 0x57, 0x58, 0x5b, 0x5f, 0x60,
    0x78, 0x7b, 0x7f, 0x80, 0x98, 0x9b, 0x9f, 0xa0, 0xb8, 0xbb, 0xbf, 0xc0, 0xc2, 0xd8, 0xe0, 0xf4, 0xf5, 0xf6, 0xf7,
    0xf8, 0xf9, 0xfa, 0xfb, 0xff,
];

fn mutate(rng: &mut XorShift, body: &[u8]) -> Vec<u8> {
    let mut b = body.to_vec();
    for _ in 0..1 + rng.below(4) {
        if b.is_empty() {
            b.push(INTERESTING[rng.below(INTERESTING.len())]);
            continue;
        }
        let i = rng.below(b.len());
        match rng.below(9) {
            0 => b[i] ^= 1 << rng.below(8),
            1 => b[i] = rng.next() as u8,
            2 => b[i] = INTERESTING[rng.below(INTERESTING.len())],
            3 => b.insert(i, INTERESTING[rng.below(INTERESTING.len())]),
            4 => {
                b.remove(i);
            }
            5 => b.truncate(i),
            6 => {
                let len = 1 + rng.below(16.min(b.len() - i));
                let chunk = b[i..i + len].to_vec();
                let at = rng.below(b.len() + 1);
                b.splice(at..at, chunk);
            }
            7 => b[i] = b[i].wrapping_add(rng.below(9) as u8).wrapping_sub(4),
            _ => {
                // Replace a byte with a run of random bytes.
                let run: Vec<u8> = (0..1 + rng.below(8)).map(|_| rng.next() as u8).collect();
                b.splice(i..i + 1, run);
            }
        }
    }
    b
}

/// A random CBOR value, biased towards what CTAP2 requests contain.
fn random_value(rng: &mut XorShift, depth: usize) -> Value {
    const TEXTS: &[&str] =
        &["", "public-key", "rk", "up", "uv", "id", "type", "alg", "name", "example.com", "hmac-secret", "é"];
    const LENGTHS: &[usize] = &[0, 1, 15, 16, 17, 31, 32, 33, 64, 65, 93, 255, 256, 300];
    match rng.below(if depth >= 3 { 8 } else { 10 }) {
        0 => Value::from(rng.below(300) as i64),
        1 => Value::from(-(rng.below(300) as i64) - 1),
        2 => Value::Bytes((0..LENGTHS[rng.below(LENGTHS.len())]).map(|_| rng.next() as u8).collect()),
        3 => Value::from(TEXTS[rng.below(TEXTS.len())]),
        4 => Value::Bool(rng.below(2) == 0),
        5 => Value::Null,
        6 => [Value::Float(-7.0), Value::from(u64::MAX), Value::from(i64::MIN)][rng.below(3)].clone(),
        7 => Value::Tag(rng.below(30) as u64, Box::new(Value::Bytes(vec![0; 32]))),
        8 => Value::Array((0..rng.below(4)).map(|_| random_value(rng, depth + 1)).collect()),
        _ => Value::Map((0..rng.below(4)).map(|_| (random_key(rng), random_value(rng, depth + 1))).collect()),
    }
}

fn random_key(rng: &mut XorShift) -> Value {
    const TEXTS: &[&str] = &["id", "type", "alg", "name", "displayName", "rk", "up", "uv", "transports", "hmac-secret"];
    if rng.below(2) == 0 {
        Value::from(rng.below(16) as i64 - 3)
    } else {
        Value::from(TEXTS[rng.below(TEXTS.len())])
    }
}

/// Changes one node of a request tree: a value replaced by one of any type,
/// a map entry dropped, duplicated, re-keyed or added, an array item dropped
/// or duplicated.
fn mutate_tree(rng: &mut XorShift, value: &mut Value, depth: usize) {
    match value {
        Value::Map(entries) if !entries.is_empty() && rng.below(4) != 0 => {
            let i = rng.below(entries.len());
            match rng.below(8) {
                0 => {
                    entries.remove(i);
                }
                1 => {
                    let entry = entries[i].clone();
                    entries.push(entry);
                }
                2 => entries[i].0 = random_key(rng),
                3 => entries.push((random_key(rng), random_value(rng, depth + 1))),
                _ => mutate_tree(rng, &mut entries[i].1, depth + 1),
            }
        }
        Value::Array(items) if !items.is_empty() && rng.below(4) != 0 => {
            let i = rng.below(items.len());
            match rng.below(5) {
                0 => {
                    items.remove(i);
                }
                1 => {
                    let item = items[i].clone();
                    items.push(item);
                }
                _ => mutate_tree(rng, &mut items[i], depth + 1),
            }
        }
        _ => *value = random_value(rng, depth),
    }
}

#[test]
fn mutated_requests_never_panic_and_answer_one_status_byte_or_success_with_cbor() {
    let (mut d, cid) = device();
    let plain = register(&mut d, cid, RP, b"u1", "alice", false);
    let resident = register(&mut d, cid, RP, b"u2", "bob", true);
    register(&mut d, cid, RP, b"u3", "carol", true);
    // Past the reset window, so that a mutated command byte cannot wipe the credentials.
    d.advance(Duration::from_secs(11));

    let exclude = Value::Array(vec![descriptor(&[0x33; 16]), descriptor(&plain.id)]);
    let full_mc = requests::make_credential(
        RP,
        b"u9",
        "dave",
        vec![
            (5, exclude),
            (6, text_map(&[("hmac-secret", Value::Bool(true))])),
            (7, options(&[("rk", true), ("up", true)])),
        ],
    );
    let bases: Vec<(u8, Value)> = vec![
        (MAKE_CREDENTIAL, make_credential(RP, b"u7", "erin", false)),
        (MAKE_CREDENTIAL, make_credential(RP, b"u8", "frank", true)),
        (MAKE_CREDENTIAL, full_mc),
        (GET_ASSERTION, get_assertion(RP, &[&plain.id], vec![])),
        (
            GET_ASSERTION,
            get_assertion(RP, &[&[0x44; 16], &resident.id, &plain.id], vec![(5, options(&[("up", false)]))]),
        ),
        (GET_ASSERTION, get_assertion(RP, &[], vec![])),
    ];
    let commands = [MAKE_CREDENTIAL, GET_ASSERTION, GET_INFO, CLIENT_PIN, RESET, GET_NEXT_ASSERTION, SELECTION, 0x0A];

    const SEED: u64 = 0x9E37_79B9_7F4A_7C15;
    const ROUNDS: usize = 4000;
    let mut rng = XorShift(SEED);
    let mut by_status = std::collections::BTreeMap::<u8, usize>::new();
    for round in 0..ROUNDS {
        let (mut command, mut base) = bases[rng.below(bases.len())].clone();
        if rng.below(20) == 0 {
            command = commands[rng.below(commands.len())];
        }
        let mut message = vec![command];
        // Half the rounds change the bytes, half the structure.
        if rng.below(2) == 0 {
            message.extend(mutate(&mut rng, &enc(&base)));
        } else {
            for _ in 0..1 + rng.below(3) {
                mutate_tree(&mut rng, &mut base, 0);
            }
            message.extend(enc(&base));
        }
        // Now and then, let the prompt refuse.
        if rng.below(10) == 0 {
            d.prompt.push(PromptOutcome::Denied);
        }
        let outcome = catch_unwind(AssertUnwindSafe(|| {
            let (_, rcmd, raw) = d.transact(cid, ctaphid::command::CBOR, &message);
            (rcmd, raw)
        }));
        let (rcmd, raw) =
            outcome.unwrap_or_else(|_| panic!("round {round} (seed {SEED:#x}) panicked on {message:02x?}"));
        assert_eq!(rcmd, ctaphid::command::CBOR, "round {round}: answer is CTAPHID_CBOR for {message:02x?}");
        if let Err(e) = check_shape(&raw) {
            panic!("round {round} (seed {SEED:#x}): {e}\n request {message:02x?}");
        }
        *by_status.entry(raw[0]).or_default() += 1;
        // Drain any scripted answer left unused.
        d.prompt.script.lock().unwrap().clear();
    }
    eprintln!("status counts over {ROUNDS} mutated requests: {by_status:02x?}");
    for status in [st::OK, st::INVALID_CBOR, st::CBOR_UNEXPECTED_TYPE, st::MISSING_PARAMETER, st::INVALID_LENGTH] {
        assert!(by_status.contains_key(&status), "mutations should reach status {status:#04x}: {by_status:02x?}");
    }
    // The device still works afterwards.
    let r = call(&mut d, cid, GET_ASSERTION, Some(&get_assertion(RP, &[&plain.id], vec![])));
    assert_eq!(r.status, st::OK);
    check_assertion(r.body(), RP, &plain.id, &plain.key, UP);
}

#[test]
fn random_bytes_never_panic() {
    let (mut d, cid) = device();
    let mut rng = XorShift(0xD1B5_4A32_D192_ED03);
    for round in 0..1000 {
        let len = rng.below(200);
        let mut message = vec![[MAKE_CREDENTIAL, GET_ASSERTION][rng.below(2)]];
        // Mostly maps, so that the parser goes past the first byte.
        if rng.below(2) == 0 {
            message.push(0xa0 | (1 + rng.below(10)) as u8);
        }
        message.extend((0..len).map(|_| rng.next() as u8));
        let outcome = catch_unwind(AssertUnwindSafe(|| d.transact(cid, ctaphid::command::CBOR, &message)));
        let (_, _, raw) = outcome.unwrap_or_else(|_| panic!("round {round} panicked on {message:02x?}"));
        if let Err(e) = check_shape(&raw) {
            panic!("round {round}: {e}\n request {message:02x?}");
        }
    }
}
