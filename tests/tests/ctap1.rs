//! CTAP1/U2F over CTAPHID_MSG, in process: REGISTER, AUTHENTICATE in its
//! three modes, VERSION, malformed APDUs, and credentials shared with CTAP2.

use fidoseal_ctap::ctaphid::command;
use fidoseal_ctap::platform::PromptOutcome;
use fidoseal_tests::{requests, responses, Device};
use p256::ecdsa::signature::Verifier;
use p256::ecdsa::{Signature, VerifyingKey};
use sha2::{Digest, Sha256};
use x509_cert::der::{Decode, Encode};
use x509_cert::Certificate;

const CHALLENGE: [u8; 32] = [0xC0; 32];

fn app(rp_id: &str) -> [u8; 32] {
    Sha256::digest(rp_id.as_bytes()).into()
}

fn apdu(ins: u8, p1: u8, data: &[u8]) -> Vec<u8> {
    // Extended length encoding, as libfido2 sends it.
    let mut out = vec![0x00, ins, p1, 0x00, 0x00];
    out.extend_from_slice(&(data.len() as u16).to_be_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(&[0x00, 0x00]);
    out
}

fn msg(d: &mut Device, cid: u32, request: &[u8]) -> (Vec<u8>, u16) {
    let (_, cmd, mut data) = d.transact(cid, command::MSG, request);
    assert_eq!(cmd, command::MSG);
    assert!(data.len() >= 2);
    let sw = u16::from_be_bytes([data[data.len() - 2], data[data.len() - 1]]);
    data.truncate(data.len() - 2);
    (data, sw)
}

struct Registration {
    public_key: VerifyingKey,
    key_handle: Vec<u8>,
}

fn register(d: &mut Device, cid: u32, application: &[u8; 32]) -> Registration {
    let mut data = CHALLENGE.to_vec();
    data.extend_from_slice(application);
    let (body, sw) = msg(d, cid, &apdu(0x01, 0x00, &data));
    assert_eq!(sw, 0x9000);
    assert_eq!(body[0], 0x05, "reserved byte");
    let point = &body[1..66];
    let public_key = VerifyingKey::from_sec1_bytes(point).unwrap();
    let kh_len = usize::from(body[66]);
    let key_handle = body[67..67 + kh_len].to_vec();
    let rest = &body[67 + kh_len..];
    let certificate = Certificate::from_der(&rest[..der_len(rest)]).expect("an X.509 certificate");
    let signature = Signature::from_der(&rest[der_len(rest)..]).expect("a DER signature");

    // The certificate is self-signed by the credential key itself.
    let spki = certificate.tbs_certificate().subject_public_key_info();
    assert_eq!(spki.subject_public_key.raw_bytes(), point);
    let tbs = certificate.tbs_certificate().to_der().unwrap();
    let cert_sig = Signature::from_der(certificate.signature().raw_bytes()).unwrap();
    public_key.verify(&tbs, &cert_sig).expect("certificate signature");

    let mut signed = vec![0x00];
    signed.extend_from_slice(application);
    signed.extend_from_slice(&CHALLENGE);
    signed.extend_from_slice(&key_handle);
    signed.extend_from_slice(point);
    public_key.verify(&signed, &signature).expect("registration signature");
    Registration { public_key, key_handle }
}

/// Length of the DER element at the start of `bytes`.
fn der_len(bytes: &[u8]) -> usize {
    match bytes[1] {
        n if n < 0x80 => 2 + usize::from(n),
        0x81 => 3 + usize::from(bytes[2]),
        0x82 => 4 + usize::from(u16::from_be_bytes([bytes[2], bytes[3]])),
        _ => panic!("unexpected DER length"),
    }
}

fn authenticate(d: &mut Device, cid: u32, p1: u8, application: &[u8; 32], key_handle: &[u8]) -> (Vec<u8>, u16) {
    let mut data = CHALLENGE.to_vec();
    data.extend_from_slice(application);
    data.push(key_handle.len() as u8);
    data.extend_from_slice(key_handle);
    msg(d, cid, &apdu(0x02, p1, &data))
}

fn verify_authentication(key: &VerifyingKey, application: &[u8; 32], body: &[u8]) -> u32 {
    let mut signed = application.to_vec();
    signed.extend_from_slice(&body[..5]);
    signed.extend_from_slice(&CHALLENGE);
    key.verify(&signed, &Signature::from_der(&body[5..]).unwrap()).expect("authentication signature");
    u32::from_be_bytes([body[1], body[2], body[3], body[4]])
}

#[test]
fn version_is_u2f_v2_and_get_info_lists_it() {
    let mut d = Device::new();
    let cid = d.init();
    assert_eq!(msg(&mut d, cid, &[0, 3, 0, 0]), (b"U2F_V2".to_vec(), 0x9000));
    assert_eq!(msg(&mut d, cid, &apdu(0x03, 0, &[])), (b"U2F_V2".to_vec(), 0x9000));
    assert_eq!(msg(&mut d, cid, &apdu(0x03, 0, &[1])).1, 0x6700);
    let (_, info) = d.ctap(cid, 0x04, None);
    let versions = responses::get(info.as_ref().unwrap(), 1).unwrap().as_array().unwrap().clone();
    assert!(versions.contains(&"U2F_V2".into()));
}

#[test]
fn register_and_authenticate_in_every_mode() {
    let mut d = Device::new();
    let cid = d.init();
    let application = app("u2f.example");
    let reg = register(&mut d, cid, &application);
    assert!(reg.key_handle.len() <= 255);

    let (body, sw) = authenticate(&mut d, cid, 0x03, &application, &reg.key_handle);
    assert_eq!(sw, 0x9000);
    assert_eq!(body[0], 0x01, "user present");
    let first = verify_authentication(&reg.public_key, &application, &body);

    let asked = d.prompt.asked().len();
    let (body, sw) = authenticate(&mut d, cid, 0x08, &application, &reg.key_handle);
    assert_eq!(sw, 0x9000);
    assert_eq!(body[0], 0x00, "don't-enforce: no user presence");
    assert_eq!(d.prompt.asked().len(), asked, "no prompt for dont-enforce");
    let second = verify_authentication(&reg.public_key, &application, &body);
    assert!(second > first, "counter increases");

    // check-only answers "conditions not satisfied" for its own key handles.
    assert_eq!(authenticate(&mut d, cid, 0x07, &application, &reg.key_handle), (vec![], 0x6985));
}

#[test]
fn foreign_forged_and_other_application_key_handles_are_wrong_data() {
    let mut d = Device::new();
    let cid = d.init();
    let application = app("u2f.example");
    let reg = register(&mut d, cid, &application);
    for p1 in [0x03, 0x07, 0x08] {
        assert_eq!(authenticate(&mut d, cid, p1, &app("other.example"), &reg.key_handle).1, 0x6A80);
        let mut forged = reg.key_handle.clone();
        forged[10] ^= 1;
        assert_eq!(authenticate(&mut d, cid, p1, &application, &forged).1, 0x6A80);
        assert_eq!(authenticate(&mut d, cid, p1, &application, &[1, 2, 3]).1, 0x6A80);
    }
    // Another device's key handle.
    let mut other = Device::new();
    let other_cid = other.init();
    let foreign = register(&mut other, other_cid, &application);
    assert_eq!(authenticate(&mut d, cid, 0x03, &application, &foreign.key_handle).1, 0x6A80);
}

#[test]
fn refusals_are_conditions_not_satisfied() {
    let mut d = Device::new();
    let cid = d.init();
    let application = app("u2f.example");
    let reg = register(&mut d, cid, &application);
    d.prompt.push(PromptOutcome::Denied);
    assert_eq!(authenticate(&mut d, cid, 0x03, &application, &reg.key_handle), (vec![], 0x6985));
    d.prompt.push(PromptOutcome::TimedOut);
    let mut data = CHALLENGE.to_vec();
    data.extend_from_slice(&application);
    assert_eq!(msg(&mut d, cid, &apdu(0x01, 0, &data)), (vec![], 0x6985));
}

#[test]
fn malformed_apdus_get_iso_status_words() {
    let mut d = Device::new();
    let cid = d.init();
    assert_eq!(msg(&mut d, cid, &[0x00, 0x01, 0x00]).1, 0x6700, "too short for a header");
    assert_eq!(msg(&mut d, cid, &[0x80, 0x03, 0x00, 0x00]).1, 0x6E00, "class");
    assert_eq!(msg(&mut d, cid, &[0x00, 0x55, 0x00, 0x00]).1, 0x6D00, "instruction");
    assert_eq!(msg(&mut d, cid, &apdu(0x01, 0, &[0; 63])).1, 0x6700, "register needs 64 bytes");
    assert_eq!(msg(&mut d, cid, &apdu(0x02, 3, &[0; 64])).1, 0x6700, "authenticate needs L");
    let mut data = vec![0u8; 64];
    data.push(5);
    data.extend_from_slice(&[1, 2]);
    assert_eq!(msg(&mut d, cid, &apdu(0x02, 3, &data)).1, 0x6700, "L longer than the key handle");
    assert_eq!(msg(&mut d, cid, &[0, 1, 0, 0, 0, 0, 9, 1]).1, 0x6700, "extended Lc too long");
}

#[test]
fn u2f_credentials_work_in_ctap2_and_back() {
    let mut d = Device::new();
    let cid = d.init();
    // U2F registration, CTAP2 getAssertion with the same rp.
    let reg = register(&mut d, cid, &app("shared.example"));
    let (status, body) = d.ctap(cid, 0x02, Some(requests::get_assertion("shared.example", &[&reg.key_handle], vec![])));
    assert_eq!(status, 0);
    let body = body.unwrap();
    let auth_data = responses::bytes(responses::get(&body, 2));
    let sig = responses::bytes(responses::get(&body, 3));
    assert!(responses::verify(&reg.public_key, &auth_data, &[0x22; 32], &sig));

    // CTAP2 non-discoverable credential, U2F authenticate with its rp ID hash.
    let (status, body) = d.ctap(cid, 0x01, Some(requests::make_credential("shared.example", b"u", "u", vec![])));
    assert_eq!(status, 0);
    let made = responses::parse_registration(body.as_ref().unwrap());
    let (body, sw) = authenticate(&mut d, cid, 0x03, &app("shared.example"), &made.credential_id);
    assert_eq!(sw, 0x9000);
    verify_authentication(&made.public_key, &app("shared.example"), &body);
}

/// U2F signatures are ECDSA P-256: a CTAP2 credential of another algorithm
/// (EdDSA here; ES384 on the TPM store, daemon/src/tpm/es384_tests.rs) is
/// not one U2F can use, in any mode.
#[test]
fn u2f_does_not_use_a_credential_that_is_not_p256() {
    let mut d = Device::new();
    let cid = d.init();
    let mut params = requests::make_credential("shared.example", b"u", "u", vec![]);
    let eddsa = requests::text_map(&[("alg", (-8).into()), ("type", "public-key".into())]);
    if let Some(entry) = params.as_map_mut().and_then(|m| m.iter_mut().find(|(k, _)| k == &4.into())) {
        entry.1 = ciborium::value::Value::Array(vec![eddsa]);
    }
    let (status, body) = d.ctap(cid, 0x01, Some(params));
    assert_eq!(status, 0);
    let auth_data = responses::bytes(responses::get(body.as_ref().unwrap(), 2));
    let len = usize::from(u16::from_be_bytes([auth_data[53], auth_data[54]]));
    let id = auth_data[55..55 + len].to_vec();
    for p1 in [0x03, 0x07, 0x08] {
        let (_, sw) = authenticate(&mut d, cid, p1, &app("shared.example"), &id);
        assert_eq!(sw, 0x6A80, "SW_WRONG_DATA in mode {p1:#04x}");
    }
    let (status, _) = d.ctap(cid, 0x02, Some(requests::get_assertion("shared.example", &[&id], vec![])));
    assert_eq!(status, 0, "CTAP2 still uses it");
}

/// CTAP 2.1 §7.2 (alwaysUv): U2F cannot verify the user, so while alwaysUv
/// is on every CTAP1 request is refused — register, authenticate in all
/// three modes (0x08 would otherwise sign with no touch at all) and
/// version — and getInfo stops listing U2F_V2.
#[test]
fn always_uv_turns_u2f_off() {
    use fidoseal_tests::platform_client::{command as ctap2, config_subcommand};
    let mut d = Device::new();
    let cid = d.init();
    let application = app("u2f.example");
    let reg = register(&mut d, cid, &application);
    let toggle = fidoseal_tests::platform_client::config_request(None, config_subcommand::TOGGLE_ALWAYS_UV, None);
    assert_eq!(d.ctap(cid, ctap2::CONFIG, Some(toggle.clone())).0, 0);

    let asked = d.prompt.asked().len();
    const COMMAND_NOT_ALLOWED: u16 = 0x6986;
    for p1 in [0x03, 0x07, 0x08] {
        let answer = authenticate(&mut d, cid, p1, &application, &reg.key_handle);
        assert_eq!(answer, (vec![], COMMAND_NOT_ALLOWED), "P1 {p1:#04x}");
    }
    let mut data = CHALLENGE.to_vec();
    data.extend_from_slice(&application);
    assert_eq!(msg(&mut d, cid, &apdu(0x01, 0, &data)), (vec![], COMMAND_NOT_ALLOWED), "register");
    assert_eq!(msg(&mut d, cid, &[0, 3, 0, 0]), (vec![], COMMAND_NOT_ALLOWED), "version");
    assert_eq!(d.prompt.asked().len(), asked, "nobody was asked");
    let (_, info) = d.ctap(cid, 0x04, None);
    let versions = responses::get(info.as_ref().unwrap(), 1).unwrap().as_array().unwrap().clone();
    assert_eq!(versions, [ciborium::value::Value::from("FIDO_2_0"), "FIDO_2_1".into(), "FIDO_2_2".into()]);

    // alwaysUv off again: U2F is back, with the same key handle.
    assert_eq!(d.ctap(cid, ctap2::CONFIG, Some(toggle)).0, 0);
    assert_eq!(authenticate(&mut d, cid, 0x03, &application, &reg.key_handle).1, 0x9000);
    let (_, info) = d.ctap(cid, 0x04, None);
    let versions = responses::get(info.as_ref().unwrap(), 1).unwrap().as_array().unwrap().clone();
    assert!(versions.contains(&"U2F_V2".into()));
}

/// A key protected by built-in UV (no PIN) refuses U2F registration as a
/// key with a PIN does: U2F cannot verify the user (CTAP 2.1 §10.3).
#[test]
fn built_in_uv_refuses_u2f_registration_like_a_pin() {
    let mut d = Device::new();
    let cid = d.init();
    *d.prompt.verification_configured.lock().unwrap() = true;
    let mut data = CHALLENGE.to_vec();
    data.extend_from_slice(&app("u2f.example"));
    assert_eq!(msg(&mut d, cid, &apdu(0x01, 0, &data)), (vec![], 0x6985));
    assert!(d.prompt.asked().is_empty());
}
