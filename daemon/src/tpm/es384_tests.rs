//! ES384 (ECDSA P-384 with SHA-384, COSE -35) on the TPM store, on swtpm
//! (which has P-384 and SHA-384): a credential made and used through the
//! whole authenticator, checked with the `p384` crate; a key of a bound
//! generation refusing after a PCR extend; the probe's decision; and
//! forged P-384 key handles.

use ciborium::value::Value;
use fidoseal_ctap::credential::{encode_payload, MAX_CREDENTIAL_ID_LEN};
use fidoseal_ctap::ctaphid::command;
use fidoseal_ctap::platform::CredentialExtensions;
use fidoseal_ctap::AuthenticatorConfig;
use fidoseal_tests::requests::{get_assertion, int_map, text_map};
use fidoseal_tests::{responses, Device};
use p384::ecdsa::signature::Verifier;

use super::swtpm::{temp_dir, Swtpm};
use super::*;

const RP: &str = "es384.example";

fn settings(tpm: &Swtpm) -> TpmSettings {
    TpmSettings { tcti: tpm.tcti(), owner_auth_file: None }
}

fn algs(ids: &[i64]) -> Value {
    Value::Array(ids.iter().map(|&a| text_map(&[("alg", a.into()), ("type", "public-key".into())])).collect())
}

fn make_credential(preference: &[i64], extra: Vec<(i64, Value)>) -> Value {
    let mut entries = vec![
        (1, Value::Bytes(vec![0x11; 32])),
        (2, text_map(&[("id", RP.into())])),
        (3, text_map(&[("id", Value::Bytes(vec![1])), ("name", "p384".into())])),
        (4, algs(preference)),
    ];
    entries.extend(extra);
    int_map(entries)
}

fn p384_key(cose: &Value) -> p384::ecdsa::VerifyingKey {
    let mut sec1 = vec![4u8];
    sec1.extend(responses::bytes(responses::get(cose, -2)));
    sec1.extend(responses::bytes(responses::get(cose, -3)));
    p384::ecdsa::VerifyingKey::from_sec1_bytes(&sec1).expect("a P-384 point")
}

fn verify_p384(key: &p384::ecdsa::VerifyingKey, auth_data: &[u8], client_data_hash: &[u8], der: &[u8]) {
    let mut signed = auth_data.to_vec();
    signed.extend_from_slice(client_data_hash);
    let signature = p384::ecdsa::Signature::from_der(der).expect("a DER ECDSA signature");
    key.verify(&signed, &signature).expect("the signature verifies (SHA-384 over authData ‖ clientDataHash)");
}

fn u2f_authenticate(d: &mut Device, cid: u32, rp: &str, key_handle: &[u8]) -> u16 {
    let mut data = vec![0xC0; 32];
    data.extend_from_slice(&Sha256::digest(rp.as_bytes()));
    data.push(key_handle.len() as u8);
    data.extend_from_slice(key_handle);
    let mut apdu = vec![0x00, 0x02, 0x03, 0x00, 0x00];
    apdu.extend_from_slice(&(data.len() as u16).to_be_bytes());
    apdu.extend_from_slice(&data);
    apdu.extend_from_slice(&[0x00, 0x00]);
    let (_, _, answer) = d.transact(cid, command::MSG, &apdu);
    u16::from_be_bytes([answer[answer.len() - 2], answer[answer.len() - 1]])
}

#[test]
fn an_es384_credential_through_the_whole_authenticator() {
    let tpm = Swtpm::start();
    let state = temp_dir("es384-ctap");
    let store = TpmKeyStore::open(&settings(&tpm), &state).unwrap();
    assert_eq!(store.algorithms(), vec![Algorithm::Es256, Algorithm::Es384], "swtpm has P-384 and SHA-384");
    let mut d = Device::with_keystore(AuthenticatorConfig::default(), Box::new(store));
    let cid = d.init();

    // getInfo lists ES256 first, then ES384.
    let (_, info) = d.ctap(cid, 0x04, None);
    let listed: Vec<Value> = responses::get(info.as_ref().unwrap(), 0x0A)
        .unwrap()
        .as_array()
        .unwrap()
        .iter()
        .map(|a| responses::get_text(a, "alg").unwrap().clone())
        .collect();
    assert_eq!(listed, vec![Value::from(-7), Value::from(-35)]);

    // A platform that lists -7 first gets ES256.
    let (status, body) = d.ctap(cid, 0x01, Some(make_credential(&[-7, -35], vec![])));
    assert_eq!(status, 0);
    assert_eq!(responses::get(&responses::attested_credential(body.as_ref().unwrap()).1, 3), Some(&Value::from(-7)));

    // pubKeyCredParams [-35]: an ES384 credential, EC2 / P-384 / -35.
    let (status, body) = d.ctap(cid, 0x01, Some(make_credential(&[-35], vec![])));
    assert_eq!(status, 0);
    let body = body.unwrap();
    let (id, cose) = responses::attested_credential(&body);
    assert!(id.len() <= MAX_CREDENTIAL_ID_LEN, "{} bytes", id.len());
    assert_eq!(responses::get(&cose, 1), Some(&Value::from(2)));
    assert_eq!(responses::get(&cose, 3), Some(&Value::from(-35)));
    assert_eq!(responses::get(&cose, -1), Some(&Value::from(2)));
    let key = p384_key(&cose);
    // Packed self attestation with alg -35.
    let statement = responses::get(&body, 3).unwrap();
    assert_eq!(responses::get_text(statement, "alg"), Some(&Value::from(-35)));
    let sig = responses::bytes(responses::get_text(statement, "sig"));
    verify_p384(&key, &responses::bytes(responses::get(&body, 2)), &[0x11; 32], &sig);

    // An assertion, verified with the p384 crate.
    let (status, body) = d.ctap(cid, 0x02, Some(get_assertion(RP, &[&id], vec![])));
    assert_eq!(status, 0);
    let body = body.unwrap();
    let auth_data = responses::bytes(responses::get(&body, 2));
    verify_p384(&key, &auth_data, &[0x22; 32], &responses::bytes(responses::get(&body, 3)));

    // U2F signatures are P-256: U2F does not use it (SW_WRONG_DATA).
    assert_eq!(u2f_authenticate(&mut d, cid, RP, &id), 0x6A80);

    // A discoverable ES384 credential too.
    let (status, body) =
        d.ctap(cid, 0x01, Some(make_credential(&[-35], vec![(7, text_map(&[("rk", Value::Bool(true))]))])));
    assert_eq!(status, 0);
    let key = p384_key(&responses::attested_credential(body.as_ref().unwrap()).1);
    let (status, body) = d.ctap(cid, 0x02, Some(get_assertion(RP, &[], vec![])));
    assert_eq!(status, 0);
    let body = body.unwrap();
    verify_p384(
        &key,
        &responses::bytes(responses::get(&body, 2)),
        &[0x22; 32],
        &responses::bytes(responses::get(&body, 3)),
    );

    // credBlob: 30 bytes still fit in a non-discoverable ES384 credential
    // ID (225 bytes without it); a 32-byte one does not, so the credential
    // is made without it and the output says "not stored" (CTAP 2.2 §12.2).
    for (length, stored) in [(30, true), (32, false)] {
        let extensions = (6, text_map(&[("credBlob", Value::Bytes(vec![0x42; length]))]));
        let (status, body) = d.ctap(cid, 0x01, Some(make_credential(&[-35], vec![extensions])));
        assert_eq!(status, 0);
        let auth_data = responses::bytes(responses::get(body.as_ref().unwrap(), 2));
        let len = usize::from(u16::from_be_bytes([auth_data[53], auth_data[54]]));
        assert!(len <= MAX_CREDENTIAL_ID_LEN, "{len} bytes");
        let mut tail = &auth_data[55 + len..];
        let _cose: Value = ciborium::de::from_reader(&mut tail).unwrap();
        let outputs: Value = ciborium::de::from_reader(&mut tail).unwrap();
        assert_eq!(responses::get_text(&outputs, "credBlob"), Some(&Value::Bool(stored)), "{length} bytes");
    }
    drop(d);
    std::fs::remove_dir_all(state).unwrap();
}

#[test]
fn es384_key_handles_and_credential_ids_fit_and_forgeries_are_refused() {
    let tpm = Swtpm::start();
    let state = temp_dir("es384-sizes");
    let mut store = TpmKeyStore::open(&settings(&tpm), &state).unwrap();
    let created = store.generate(Algorithm::Es384).unwrap();
    let blob = KeyBlob::decode(&created.key_handle).unwrap();
    assert_eq!(blob.curve, Curve::P384);
    assert_eq!(created.key_handle.len(), 1 + 48 + blob.private.len(), "the compact form");
    let bare = encode_payload(Algorithm::Es384, &created.key_handle, &CredentialExtensions::default()).unwrap();
    let id = store.seal_credential_id(&[1; 32], &bare).unwrap();
    // What room is left for credBlob (make_credential drops a credBlob that
    // does not fit and reports it as not stored).
    let room = MAX_CREDENTIAL_ID_LEN - id.len();
    eprintln!(
        "P-384 key handle {} bytes (private {}); credential ID {} bytes without credBlob, {room} bytes left",
        created.key_handle.len(),
        blob.private.len(),
        id.len()
    );
    assert!(id.len() <= MAX_CREDENTIAL_ID_LEN);

    let der = store.sign(Algorithm::Es384, &created.key_handle, b"m").unwrap();
    let PublicKey::P384 { x, y } = &created.public_key else { panic!("a P-384 key") };
    let mut sec1 = vec![4u8];
    sec1.extend_from_slice(x);
    sec1.extend_from_slice(y);
    let key = p384::ecdsa::VerifyingKey::from_sec1_bytes(&sec1).unwrap();
    key.verify(b"m", &p384::ecdsa::Signature::from_der(&der).unwrap()).unwrap();

    // Truncated, altered and cross-algorithm handles: NotAuthentic.
    let handle = &created.key_handle;
    assert_eq!(store.sign(Algorithm::Es384, &handle[..49], b"m"), Err(KeyStoreError::NotAuthentic));
    assert_eq!(store.sign(Algorithm::Es384, &handle[..30], b"m"), Err(KeyStoreError::NotAuthentic));
    assert_eq!(store.sign(Algorithm::Es384, &handle[..handle.len() - 1], b"m"), Err(KeyStoreError::NotAuthentic));
    for i in [0, 1, 30, 60, 100, handle.len() - 1] {
        let mut altered = handle.clone();
        altered[i] ^= 0x01;
        assert_eq!(store.sign(Algorithm::Es384, &altered, b"m"), Err(KeyStoreError::NotAuthentic), "byte {i}");
    }
    assert_eq!(store.sign(Algorithm::Es256, handle, b"m"), Err(KeyStoreError::NotAuthentic));
    let p256 = store.generate(Algorithm::Es256).unwrap();
    assert_eq!(store.sign(Algorithm::Es384, &p256.key_handle, b"m"), Err(KeyStoreError::NotAuthentic));
    let mut relabelled = p256.key_handle.clone();
    relabelled[0] = 0x58 | (relabelled[0] & 1);
    assert_eq!(store.sign(Algorithm::Es384, &relabelled, b"m"), Err(KeyStoreError::NotAuthentic));
    assert_eq!(store.transient_objects().unwrap(), 1, "nothing left loaded");
    // The store still signs after all that.
    store.sign(Algorithm::Es384, handle, b"m").unwrap();
    drop(store);
    std::fs::remove_dir_all(state).unwrap();
}

fn assert_boot_state_error<T: std::fmt::Debug>(result: Result<T, KeyStoreError>) {
    match result {
        Err(KeyStoreError::Backend(message)) => assert!(message.contains("the boot state changed"), "{message}"),
        other => panic!("expected the boot-state error, got {other:?}"),
    }
}

#[test]
fn a_bound_p384_key_refuses_after_a_pcr_extend() {
    let tpm = Swtpm::start();
    let state = temp_dir("es384-pcr");
    let mut store = TpmKeyStore::open_bound(&settings(&tpm), &state, &[7]).unwrap();
    let created = store.generate(Algorithm::Es384).unwrap();
    let blob = KeyBlob::decode(&created.key_handle).unwrap();
    assert!(!blob.public_bound(store.object_policy().as_deref()).unwrap().object_attributes().user_with_auth());
    store.sign(Algorithm::Es384, &created.key_handle, b"m").unwrap();
    store.extend_pcr_for_test();
    assert_boot_state_error(store.sign(Algorithm::Es384, &created.key_handle, b"m"));
    assert_eq!(store.transient_objects().unwrap(), 1);
    drop(store);
    // After a restart in the changed state: neither signing nor making keys.
    let mut store = TpmKeyStore::open_bound(&settings(&tpm), &state, &[7]).unwrap();
    assert_boot_state_error(store.sign(Algorithm::Es384, &created.key_handle, b"m"));
    assert_boot_state_error(store.generate(Algorithm::Es384).map(|created| created.key_handle));
    assert_eq!(store.transient_objects().unwrap(), 1);
    drop(store);
    std::fs::remove_dir_all(state).unwrap();
}

#[test]
fn the_probe_offers_es384_only_with_p384_and_sha384() {
    use EccCurveIdentifier::{NistP256, NistP384};
    assert_eq!(algorithms_of(&[NistP256, NistP384], true), vec![Algorithm::Es256, Algorithm::Es384]);
    assert_eq!(algorithms_of(&[NistP256], true), vec![Algorithm::Es256], "no P-384");
    assert_eq!(algorithms_of(&[NistP256, NistP384], false), vec![Algorithm::Es256], "no SHA-384");
    assert_eq!(algorithms_of(&[], false), vec![Algorithm::Es256], "the TPM did not answer");
}

#[test]
fn a_store_without_es384_refuses_it() {
    let tpm = Swtpm::start();
    let state = temp_dir("es384-absent");
    let mut store = TpmKeyStore::open(&settings(&tpm), &state).unwrap();
    // As the probe leaves a TPM without P-384.
    store.algorithms = algorithms_of(&[EccCurveIdentifier::NistP256], true);
    assert_eq!(store.algorithms(), vec![Algorithm::Es256]);
    assert_eq!(store.generate(Algorithm::Es384).err(), Some(KeyStoreError::UnsupportedAlgorithm(Algorithm::Es384)));
    let mut d = Device::with_keystore(AuthenticatorConfig::default(), Box::new(store));
    let cid = d.init();
    let (status, _) = d.ctap(cid, 0x01, Some(make_credential(&[-35], vec![])));
    assert_eq!(status, 0x26, "CTAP2_ERR_UNSUPPORTED_ALGORITHM");
    drop(d);
    std::fs::remove_dir_all(state).unwrap();
}
