//! EdDSA (Ed25519, COSE -8) with the software key store: offered in
//! getInfo, chosen when the platform prefers it, and verifiable.

use ciborium::value::Value;
use fidoseal_tests::requests::{int_map, text_map};
use fidoseal_tests::{responses, Device};

fn algs(ids: &[i64]) -> Value {
    Value::Array(ids.iter().map(|&a| text_map(&[("alg", a.into()), ("type", "public-key".into())])).collect())
}

fn make_credential(d: &mut Device, cid: u32, preference: &[i64]) -> (u8, Option<Value>) {
    let params = int_map(vec![
        (1, Value::Bytes(vec![0x11; 32])),
        (2, text_map(&[("id", "ed.example".into())])),
        (3, text_map(&[("id", Value::Bytes(vec![1])), ("name", "ed".into())])),
        (4, algs(preference)),
    ]);
    d.ctap(cid, 0x01, Some(params))
}

#[test]
fn get_info_lists_es256_then_eddsa() {
    let mut d = Device::new();
    let cid = d.init();
    let (_, info) = d.ctap(cid, 0x04, None);
    let list = responses::get(info.as_ref().unwrap(), 0x0A).unwrap().as_array().unwrap().clone();
    let ids: Vec<i128> =
        list.iter().map(|a| responses::get_text(a, "alg").unwrap().as_integer().unwrap().into()).collect();
    assert_eq!(ids, vec![-7, -8]);
}

#[test]
fn eddsa_credential_signs_verifiable_assertions() {
    let mut d = Device::new();
    let cid = d.init();
    let (status, body) = make_credential(&mut d, cid, &[-8, -7]);
    assert_eq!(status, 0);
    let body = body.unwrap();
    let (id, cose) = responses::attested_credential(&body);
    // OKP, EdDSA, Ed25519.
    assert_eq!(responses::get(&cose, 1), Some(&Value::from(1)));
    assert_eq!(responses::get(&cose, 3), Some(&Value::from(-8)));
    assert_eq!(responses::get(&cose, -1), Some(&Value::from(6)));
    let x: [u8; 32] = responses::bytes(responses::get(&cose, -2)).try_into().unwrap();
    let key = ed25519_dalek::VerifyingKey::from_bytes(&x).unwrap();

    // Packed self attestation with alg -8.
    let statement = responses::get(&body, 3).unwrap();
    assert_eq!(responses::get_text(statement, "alg"), Some(&Value::from(-8)));
    let mut signed = responses::bytes(responses::get(&body, 2));
    signed.extend_from_slice(&[0x11; 32]);
    let sig = ed25519_dalek::Signature::from_slice(&responses::bytes(responses::get_text(statement, "sig"))).unwrap();
    ed25519_dalek::Verifier::verify(&key, &signed, &sig).expect("attestation signature");

    let (status, body) = d.ctap(cid, 0x02, Some(fidoseal_tests::requests::get_assertion("ed.example", &[&id], vec![])));
    assert_eq!(status, 0);
    let body = body.unwrap();
    let mut signed = responses::bytes(responses::get(&body, 2));
    signed.extend_from_slice(&[0x22; 32]);
    let sig = ed25519_dalek::Signature::from_slice(&responses::bytes(responses::get(&body, 3))).unwrap();
    ed25519_dalek::Verifier::verify(&key, &signed, &sig).expect("assertion signature");
}

#[test]
fn platform_order_decides_between_supported_algorithms() {
    let mut d = Device::new();
    let cid = d.init();
    let (status, body) = make_credential(&mut d, cid, &[-7, -8]);
    assert_eq!(status, 0);
    let (_, cose) = responses::attested_credential(body.as_ref().unwrap());
    assert_eq!(responses::get(&cose, 3), Some(&Value::from(-7)));
    let (status, _) = make_credential(&mut d, cid, &[-257, -8]);
    assert_eq!(status, 0, "unsupported entries are skipped");
    let (status, _) = make_credential(&mut d, cid, &[-257, -35]);
    assert_eq!(status, 0x26, "CTAP2_ERR_UNSUPPORTED_ALGORITHM");
}
