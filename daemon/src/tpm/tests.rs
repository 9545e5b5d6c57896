//! The TPM key store against swtpm processes started here (one per test,
//! own ports and state). Without swtpm these tests fail and say what to
//! install.

use std::os::unix::fs::PermissionsExt;
use std::str::FromStr;

use fidoseal_ctap::credential::{encode_payload, MAX_CREDENTIAL_ID_LEN};
use fidoseal_ctap::platform::{CredentialExtensions, CredentialStore, ResidentCredential};
use fidoseal_ctap::software_keystore::SoftwareKeyStore;
use p256::ecdsa::signature::Verifier;
use p256::ecdsa::VerifyingKey;
use tss_esapi::handles::AuthHandle;

use super::swtpm::{temp_dir, Swtpm};
use super::*;

const RP: [u8; 32] = [0xa1; 32];
const OTHER_RP: [u8; 32] = [0xb2; 32];

fn settings(tpm: &Swtpm) -> TpmSettings {
    TpmSettings { tcti: tpm.tcti(), owner_auth_file: None }
}

fn open(tpm: &Swtpm, state: &Path) -> TpmKeyStore {
    TpmKeyStore::open(&settings(tpm), state).expect("open the TPM key store")
}

fn verifying_key(created: &CreatedKey) -> VerifyingKey {
    let PublicKey::P256 { x, y } = &created.public_key else {
        panic!("the TPM store makes P-256 keys only");
    };
    let mut sec1 = vec![4u8];
    sec1.extend_from_slice(x);
    sec1.extend_from_slice(y);
    VerifyingKey::from_sec1_bytes(&sec1).expect("a P-256 point")
}

fn assert_verifies(created: &CreatedKey, message: &[u8], der: &[u8]) {
    let signature = p256::ecdsa::Signature::from_der(der).expect("DER signature");
    verifying_key(created).verify(message, &signature).expect("the signature verifies with the public key");
}

/// A raw tss-esapi context on `tpm` (the store must be closed: swtpm serves
/// one connection at a time).
fn raw_context(tpm: &Swtpm) -> Context {
    Context::new(TctiNameConf::from_str(&tpm.tcti()).unwrap()).unwrap()
}

#[test]
fn the_store_is_send_as_the_authenticator_thread_needs() {
    fn send<T: Send>() {}
    send::<TpmKeyStore>();
}

#[test]
fn generate_and_sign_verifies_with_p256() {
    let tpm = Swtpm::start();
    let state = temp_dir("sign");
    let mut store = open(&tpm, &state);
    assert_eq!(store.startup(), &Startup::Created);
    assert_eq!(store.name(), "tpm");
    assert_eq!(store.algorithms(), vec![Algorithm::Es256, Algorithm::Es384], "swtpm has P-384 (es384_tests.rs)");
    assert!(matches!(store.generate(Algorithm::EdDsa), Err(KeyStoreError::UnsupportedAlgorithm(Algorithm::EdDsa))));
    let created = store.generate(Algorithm::Es256).unwrap();
    for message in [&b"authenticator data and client data hash"[..], &[], &[7u8; 3000]] {
        let der = store.sign(Algorithm::Es256, &created.key_handle, message).unwrap();
        assert_verifies(&created, message, &der);
    }
    // Every key is fresh.
    let other = store.generate(Algorithm::Es256).unwrap();
    assert_ne!(other.public_key, created.public_key);
    assert_ne!(other.key_handle, created.key_handle);
    let der = store.sign(Algorithm::Es256, &other.key_handle, b"m").unwrap();
    assert!(p256::ecdsa::Signature::from_der(&der).map(|s| verifying_key(&created).verify(b"m", &s).is_err()).unwrap());
    assert_eq!(store.transient_objects().unwrap(), 1, "only the primary stays loaded");
    std::fs::remove_dir_all(state).unwrap();
}

#[test]
fn credential_ids_fit_in_255_bytes_with_a_full_cred_blob() {
    let tpm = Swtpm::start();
    let state = temp_dir("sizes");
    let mut store = open(&tpm, &state);
    let created = store.generate(Algorithm::Es256).unwrap();
    let full = CredentialExtensions {
        cred_protect: 3,
        hmac_secret: true,
        cred_blob: vec![0x42; 32],
        large_blob_key: true,
        third_party_payment: true,
    };
    let payload = encode_payload(Algorithm::Es256, &created.key_handle, &full).unwrap();
    let id = store.seal_credential_id(&RP, &payload).unwrap();
    let bare = encode_payload(Algorithm::Es256, &created.key_handle, &CredentialExtensions::default()).unwrap();
    let bare_id = store.seal_credential_id(&RP, &bare).unwrap();
    eprintln!(
        "key handle {} bytes; credential ID {} bytes without credBlob, {} with a 32-byte credBlob (limit {MAX_CREDENTIAL_ID_LEN})",
        created.key_handle.len(),
        bare_id.len(),
        id.len()
    );
    let blob = KeyBlob::decode(&created.key_handle).unwrap();
    assert_eq!(created.key_handle.len(), 1 + 32 + blob.private.len(), "the compact form");
    assert!(id.len() <= MAX_CREDENTIAL_ID_LEN, "{} bytes", id.len());
    assert_eq!(id.len(), payload.len() + 1 + NONCE_LEN + TAG_LEN);
    assert_eq!(store.open_credential_id(&RP, &id).unwrap(), payload);
    std::fs::remove_dir_all(state).unwrap();
}

#[test]
fn a_new_context_finds_the_same_keys_and_secrets() {
    let tpm = Swtpm::start();
    let state = temp_dir("reopen");
    let mut store = open(&tpm, &state);
    let created = store.generate(Algorithm::Es256).unwrap();
    let id = store.seal_credential_id(&RP, b"payload").unwrap();
    let secret = store.derive_secret(b"hmac-secret context").unwrap();
    drop(store);

    let mut again = open(&tpm, &state);
    assert_eq!(again.startup(), &Startup::Reopened);
    // As fidosealctl status shows it: swtpm names itself "IBM".
    assert_eq!(again.manufacturer(), "IBM");
    assert_eq!(again.open_credential_id(&RP, &id).unwrap(), b"payload");
    assert_eq!(again.derive_secret(b"hmac-secret context").unwrap().0, secret.0);
    let der = again.sign(Algorithm::Es256, &created.key_handle, b"after restart").unwrap();
    assert_verifies(&created, b"after restart", &der);
    std::fs::remove_dir_all(state).unwrap();
}

#[test]
fn a_swtpm_restart_keeps_the_keys() {
    let mut tpm = Swtpm::start();
    let state = temp_dir("swtpm-restart");
    let mut store = open(&tpm, &state);
    let created = store.generate(Algorithm::Es256).unwrap();
    let id = store.seal_credential_id(&RP, b"payload").unwrap();
    let secret = store.derive_secret(b"ctx").unwrap();
    drop(store);
    let tpm_state = tpm.state_dir().to_path_buf();
    tpm.stop();
    let restarted = Swtpm::start_in(&tpm_state);

    let mut store = open(&restarted, &state);
    assert_eq!(store.startup(), &Startup::Reopened);
    assert_eq!(store.open_credential_id(&RP, &id).unwrap(), b"payload");
    assert_eq!(store.derive_secret(b"ctx").unwrap().0, secret.0);
    let der = store.sign(Algorithm::Es256, &created.key_handle, b"m").unwrap();
    assert_verifies(&created, b"m", &der);
    drop((store, restarted, tpm));
    std::fs::remove_dir_all(state).unwrap();
    let _ = std::fs::remove_dir_all(tpm_state);
}

#[test]
fn a_running_store_survives_the_tpm_going_away_and_coming_back() {
    let mut tpm = Swtpm::start();
    let state = temp_dir("tpm-gone");
    let mut store = open(&tpm, &state);
    let created = store.generate(Algorithm::Es256).unwrap();
    let id = store.seal_credential_id(&RP, b"payload").unwrap();

    tpm.stop();
    // No TPM: errors, not panics; sealing works without the TPM.
    assert!(matches!(store.sign(Algorithm::Es256, &created.key_handle, b"m"), Err(KeyStoreError::Backend(_))));
    assert!(matches!(store.generate(Algorithm::Es256), Err(KeyStoreError::Backend(_))));
    assert!(matches!(store.derive_secret(b"c"), Err(KeyStoreError::Backend(_))));
    assert_eq!(store.open_credential_id(&RP, &id).unwrap(), b"payload");

    tpm.restart();
    let der = store.sign(Algorithm::Es256, &created.key_handle, b"back").unwrap();
    assert_verifies(&created, b"back", &der);

    // A TPM restart under a live connection (transient objects gone): the
    // next operation reconnects by itself.
    tpm.stop();
    tpm.restart();
    let der = store.sign(Algorithm::Es256, &created.key_handle, b"again").unwrap();
    assert_verifies(&created, b"again", &der);
    assert_eq!(store.transient_objects().unwrap(), 1);
    std::fs::remove_dir_all(state).unwrap();
}

#[test]
fn forged_altered_foreign_and_other_rp_ids_are_rejected_without_the_tpm() {
    let tpm = Swtpm::start();
    let other_tpm = Swtpm::start();
    let state = temp_dir("forged");
    let other_state = temp_dir("forged-other");
    let mut store = open(&tpm, &state);
    let mut foreign = open(&other_tpm, &other_state);
    let created = store.generate(Algorithm::Es256).unwrap();
    let payload = encode_payload(Algorithm::Es256, &created.key_handle, &CredentialExtensions::default()).unwrap();
    let id = store.seal_credential_id(&RP, &payload).unwrap();
    let foreign_id = foreign.seal_credential_id(&RP, &payload).unwrap();
    let software_id = SoftwareKeyStore::new(Secret32([7; 32])).seal_credential_id(&RP, &payload).unwrap();
    drop(tpm); // From here on, anything that reached the TPM would fail differently.

    assert_eq!(store.open_credential_id(&RP, &id).unwrap(), payload);
    assert_eq!(store.open_credential_id(&OTHER_RP, &id), Err(KeyStoreError::NotAuthentic));
    for i in 0..id.len() {
        let mut altered = id.clone();
        altered[i] ^= 0x01;
        assert_eq!(store.open_credential_id(&RP, &altered), Err(KeyStoreError::NotAuthentic), "byte {i}");
    }
    for len in 0..id.len() {
        assert_eq!(store.open_credential_id(&RP, &id[..len]), Err(KeyStoreError::NotAuthentic), "length {len}");
    }
    let mut longer = id.clone();
    longer.push(0);
    assert_eq!(store.open_credential_id(&RP, &longer), Err(KeyStoreError::NotAuthentic));
    assert_eq!(store.open_credential_id(&RP, &foreign_id), Err(KeyStoreError::NotAuthentic));
    assert_eq!(store.open_credential_id(&RP, &software_id), Err(KeyStoreError::NotAuthentic));
    assert_eq!(store.open_credential_id(&RP, &[0x54; 200]), Err(KeyStoreError::NotAuthentic));
    drop((store, foreign, other_tpm));
    std::fs::remove_dir_all(state).unwrap();
    std::fs::remove_dir_all(other_state).unwrap();
}

#[test]
fn key_handles_of_another_tpm_or_altered_are_not_authentic() {
    let tpm = Swtpm::start();
    let other_tpm = Swtpm::start();
    let state = temp_dir("handles");
    let other_state = temp_dir("handles-other");
    let mut store = open(&tpm, &state);
    let mut foreign = open(&other_tpm, &other_state);
    let created = store.generate(Algorithm::Es256).unwrap();
    let foreign_key = foreign.generate(Algorithm::Es256).unwrap();

    assert_eq!(store.sign(Algorithm::Es256, &foreign_key.key_handle, b"m"), Err(KeyStoreError::NotAuthentic));
    assert_eq!(store.sign(Algorithm::Es256, &[], b"m"), Err(KeyStoreError::NotAuthentic));
    assert_eq!(store.sign(Algorithm::Es256, &[1, 2, 3], b"m"), Err(KeyStoreError::NotAuthentic));
    let software = SoftwareKeyStore::new(Secret32([7; 32])).generate(Algorithm::Es256).unwrap();
    assert_eq!(store.sign(Algorithm::Es256, &software.key_handle, b"m"), Err(KeyStoreError::NotAuthentic));
    // A changed byte in the public point or in the TPM-encrypted private part.
    for i in [5, 40, 80, 120, created.key_handle.len() - 1] {
        let mut altered = created.key_handle.clone();
        altered[i] ^= 0x01;
        assert_eq!(store.sign(Algorithm::Es256, &altered, b"m"), Err(KeyStoreError::NotAuthentic), "byte {i}");
    }
    // Refusals flush nothing they did not load and leak nothing.
    assert_eq!(store.transient_objects().unwrap(), 1);
    let der = store.sign(Algorithm::Es256, &created.key_handle, b"m").unwrap();
    assert_verifies(&created, b"m", &der);
    drop((store, foreign, tpm, other_tpm));
    std::fs::remove_dir_all(state).unwrap();
    std::fs::remove_dir_all(other_state).unwrap();
}

#[test]
fn reset_invalidates_ids_handles_and_secrets() {
    let tpm = Swtpm::start();
    let state = temp_dir("reset");
    let mut store = open(&tpm, &state);
    let created = store.generate(Algorithm::Es256).unwrap();
    let id = store.seal_credential_id(&RP, b"payload").unwrap();
    let secret = store.derive_secret(b"ctx").unwrap();
    let file_before = std::fs::read(state.join(STATE_FILE)).unwrap();

    store.reset().unwrap();
    assert_ne!(std::fs::read(state.join(STATE_FILE)).unwrap(), file_before, "the new generation is on disk");
    assert_eq!(store.open_credential_id(&RP, &id), Err(KeyStoreError::NotAuthentic));
    assert_eq!(store.sign(Algorithm::Es256, &created.key_handle, b"m"), Err(KeyStoreError::NotAuthentic));
    let after = store.derive_secret(b"ctx").unwrap();
    assert_ne!(after.0, secret.0);
    assert_eq!(store.transient_objects().unwrap(), 1, "the old primary was flushed");
    // The store works on, and a restart finds the new generation.
    let fresh = store.generate(Algorithm::Es256).unwrap();
    let new_id = store.seal_credential_id(&RP, b"new").unwrap();
    drop(store);
    let mut again = open(&tpm, &state);
    assert_eq!(again.startup(), &Startup::Reopened);
    // As fidosealctl status shows it: swtpm names itself "IBM".
    assert_eq!(again.manufacturer(), "IBM");
    assert_eq!(again.derive_secret(b"ctx").unwrap().0, after.0);
    assert_eq!(again.open_credential_id(&RP, &new_id).unwrap(), b"new");
    assert_eq!(again.open_credential_id(&RP, &id), Err(KeyStoreError::NotAuthentic));
    assert_eq!(again.sign(Algorithm::Es256, &created.key_handle, b"m"), Err(KeyStoreError::NotAuthentic));
    let der = again.sign(Algorithm::Es256, &fresh.key_handle, b"m").unwrap();
    assert_verifies(&fresh, b"m", &der);
    std::fs::remove_dir_all(state).unwrap();
}

#[test]
fn a_failed_reset_keeps_the_old_keys() {
    let tpm = Swtpm::start();
    let state = temp_dir("reset-fails");
    let mut store = open(&tpm, &state);
    let id = store.seal_credential_id(&RP, b"payload").unwrap();
    let secret = store.derive_secret(b"ctx").unwrap();
    // The temporary file's place is taken: the new state cannot be written.
    std::fs::create_dir(state.join(format!(".{STATE_FILE}.tmp"))).unwrap();
    assert!(matches!(store.reset(), Err(KeyStoreError::Backend(_))));
    assert_eq!(store.open_credential_id(&RP, &id).unwrap(), b"payload");
    assert_eq!(store.derive_secret(b"ctx").unwrap().0, secret.0);
    assert_eq!(store.transient_objects().unwrap(), 1, "the new primary was flushed");
    std::fs::remove_dir_all(state).unwrap();
}

#[test]
fn derive_secret_is_a_stable_keyed_function() {
    let tpm = Swtpm::start();
    let state = temp_dir("derive");
    let mut store = open(&tpm, &state);
    let a = store.derive_secret(b"a").unwrap();
    assert_eq!(a.0, store.derive_secret(b"a").unwrap().0);
    assert_ne!(a.0, store.derive_secret(b"b").unwrap().0);
    assert_ne!(a.0, store.derive_secret(b"").unwrap().0);
    let long = vec![9u8; 5000];
    let long_secret = store.derive_secret(&long).unwrap();
    assert_eq!(long_secret.0, store.derive_secret(&long).unwrap().0);
    let mut long2 = long.clone();
    long2[4999] = 8;
    assert_ne!(long_secret.0, store.derive_secret(&long2).unwrap().0);
    // Not the HMAC of the context under some key the daemon holds: the same
    // context on another TPM gives something else.
    let other_tpm = Swtpm::start();
    let other_state = temp_dir("derive-other");
    drop(store);
    let mut other = open(&other_tpm, &other_state);
    assert_ne!(other.derive_secret(b"a").unwrap().0, a.0);
    drop(other);
    let mut again = open(&tpm, &state);
    assert_eq!(again.derive_secret(b"a").unwrap().0, a.0);
    assert_eq!(again.derive_secret(&long).unwrap().0, long_secret.0);
    std::fs::remove_dir_all(state).unwrap();
    std::fs::remove_dir_all(other_state).unwrap();
}

fn resident(key_handle: &[u8]) -> ResidentCredential {
    ResidentCredential {
        credential_id: vec![3; 16],
        rp_id: "example.com".into(),
        rp_name: None,
        user_id: b"u".to_vec(),
        user_name: Some("alice".into()),
        user_display_name: None,
        algorithm: Algorithm::Es256,
        key_handle: key_handle.to_vec(),
        created: 1,
        public_key_cose: vec![0xa0],
        extensions: Default::default(),
    }
}

/// The `unusable-<time>` suffix of a file kept aside.
fn suffix_of(kept: &Path) -> String {
    let name = kept.file_name().unwrap().to_string_lossy().into_owned();
    name[name.find("unusable-").expect("a kept file")..].to_owned()
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}

#[test]
fn a_state_directory_copied_to_another_tpm_opens_nothing() {
    let tpm = Swtpm::start();
    let state = temp_dir("copied");
    let mut store = open(&tpm, &state);
    let created = store.generate(Algorithm::Es256).unwrap();
    let id = store.seal_credential_id(&RP, b"payload").unwrap();
    let secret = store.derive_secret(b"pin verifier").unwrap();
    let mut credentials = crate::state::CredentialDatabase::open(&state, 10).unwrap();
    credentials.save(resident(&created.key_handle)).unwrap();

    let copy = temp_dir("copied-elsewhere");
    copy_dir(&state, &copy);
    let elsewhere = Swtpm::start();
    let mut thief = open(&elsewhere, &copy);
    let Startup::StartedOver { kept } = thief.startup().clone() else {
        panic!("a foreign state directory must be detected, not used");
    };
    assert_eq!(kept, vec![PathBuf::from(format!("{}.{}", copy.join("tpm-keystore").display(), suffix_of(&kept[0])))]);
    assert!(kept[0].exists());
    assert_eq!(thief.open_credential_id(&RP, &id), Err(KeyStoreError::NotAuthentic));
    assert_eq!(thief.sign(Algorithm::Es256, &created.key_handle, b"m"), Err(KeyStoreError::NotAuthentic));
    assert_ne!(thief.derive_secret(b"pin verifier").unwrap().0, secret.0);
    // The credential state that depended on the lost keys is copied aside
    // and reset when it is tied to the new store: the one path that does
    // this for every key store (and after a crash between the two).
    let credentials = crate::devices::open_credentials(&copy, 10, &mut thief, true, None, None).unwrap();
    drop(credentials);
    assert_eq!(crate::state::CredentialDatabase::open(&copy, 10).unwrap().credential_count(), 0);
    let set_aside = std::fs::read_dir(&copy)
        .unwrap()
        .filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().starts_with("credentials.db.unusable-"))
        .count();
    assert_eq!(set_aside, 1, "the old credential database is kept");

    // The original, on its own TPM, is untouched.
    assert_eq!(store.open_credential_id(&RP, &id).unwrap(), b"payload");
    assert_eq!(crate::state::CredentialDatabase::open(&state, 10).unwrap().credential_count(), 1);
    drop((store, thief, tpm, elsewhere));
    std::fs::remove_dir_all(state).unwrap();
    std::fs::remove_dir_all(copy).unwrap();
}

#[test]
fn a_cleared_tpm_is_detected_at_start() {
    let tpm = Swtpm::start();
    let state = temp_dir("cleared");
    let mut store = open(&tpm, &state);
    let created = store.generate(Algorithm::Es256).unwrap();
    let id = store.seal_credential_id(&RP, b"payload").unwrap();
    drop(store);
    // tpm2_clear: new owner seed.
    let mut ctx = raw_context(&tpm);
    ctx.execute_with_session(Some(AuthSession::Password), |c| c.clear(AuthHandle::Lockout)).unwrap();
    drop(ctx);

    let mut store = open(&tpm, &state);
    assert!(matches!(store.startup(), Startup::StartedOver { .. }), "{:?}", store.startup());
    assert_eq!(store.open_credential_id(&RP, &id), Err(KeyStoreError::NotAuthentic));
    assert_eq!(store.sign(Algorithm::Es256, &created.key_handle, b"m"), Err(KeyStoreError::NotAuthentic));
    let fresh = store.generate(Algorithm::Es256).unwrap();
    let der = store.sign(Algorithm::Es256, &fresh.key_handle, b"m").unwrap();
    assert_verifies(&fresh, b"m", &der);
    drop(store);
    assert_eq!(open(&tpm, &state).startup(), &Startup::Reopened, "started over once, then normal");
    std::fs::remove_dir_all(state).unwrap();
}

/// Every P-256 scalar that appears anywhere in `bytes`, at any offset, in
/// either byte order, checked against the public key.
fn contains_private_key(bytes: &[u8], public: &VerifyingKey) -> bool {
    bytes.windows(32).any(|window| {
        let mut reversed: [u8; 32] = window.try_into().unwrap();
        reversed.reverse();
        [window, &reversed[..]].iter().any(|candidate| {
            p256::ecdsa::SigningKey::from_slice(candidate).is_ok_and(|k| VerifyingKey::from(&k) == *public)
        })
    })
}

#[test]
fn the_private_key_never_reaches_the_state_directory() {
    // The key is made inside the TPM (sensitiveDataOrigin) and leaves it only
    // encrypted under the primary; this catches any regression that would
    // make or store it in software (a key imported, a blob decrypted): no
    // 32-byte window of any file is the scalar of the public key.
    let self_check = p256::ecdsa::SigningKey::from_slice(&[0x42; 32]).unwrap();
    let mut haystack = vec![1u8; 50];
    haystack.extend_from_slice(&[0x42; 32]);
    assert!(contains_private_key(&haystack, &VerifyingKey::from(&self_check)), "the search finds a planted key");

    let tpm = Swtpm::start();
    let state = temp_dir("no-private");
    let mut store = open(&tpm, &state);
    let created = store.generate(Algorithm::Es256).unwrap();
    let payload = encode_payload(Algorithm::Es256, &created.key_handle, &CredentialExtensions::default()).unwrap();
    let id = store.seal_credential_id(&RP, &payload).unwrap();
    let mut credentials = crate::state::CredentialDatabase::open(&state, 10).unwrap();
    credentials.save(resident(&created.key_handle)).unwrap();
    store.sign(Algorithm::Es256, &created.key_handle, b"m").unwrap();
    let public = verifying_key(&created);
    let mut files = vec![created.key_handle.clone(), id];
    for entry in std::fs::read_dir(&state).unwrap() {
        files.push(std::fs::read(entry.unwrap().path()).unwrap());
    }
    assert!(files.len() >= 4);
    for bytes in &files {
        assert!(!contains_private_key(bytes, &public));
    }
    std::fs::remove_dir_all(state).unwrap();
}

fn ceremonies(store: &mut TpmKeyStore, count: usize) {
    let created = store.generate(Algorithm::Es256).unwrap();
    let payload = encode_payload(Algorithm::Es256, &created.key_handle, &CredentialExtensions::default()).unwrap();
    let id = store.seal_credential_id(&RP, &payload).unwrap();
    for i in 0..count {
        // getAssertion: open the ID, sign; every 100th also makes a
        // credential and derives a secret (hmac-secret, PIN).
        let opened = store.open_credential_id(&RP, &id).unwrap();
        assert_eq!(opened, payload);
        let message = (i as u64).to_be_bytes();
        let der = store.sign(Algorithm::Es256, &created.key_handle, &message).unwrap();
        if i % 100 == 0 {
            assert_verifies(&created, &message, &der);
            store.generate(Algorithm::Es256).unwrap();
            store.derive_secret(&message).unwrap();
            let _ = store.sign(Algorithm::Es256, &[0x54, 1, 1, 1, 1, 0], b"forged");
        }
    }
}

#[test]
fn no_transient_object_is_left_after_1000_signatures() {
    let tpm = Swtpm::start();
    let state = temp_dir("leak");
    let mut store = open(&tpm, &state);
    ceremonies(&mut store, 1000);
    // swtpm has no resource manager: this is every transient object in the TPM.
    assert_eq!(store.transient_objects().unwrap(), 1, "only the primary");
    drop(store);
    let mut ctx = raw_context(&tpm);
    assert_eq!(transient_handles(&mut ctx).ok(), Some(0), "dropping the store flushes the primary");
    std::fs::remove_dir_all(state).unwrap();
}

#[test]
#[ignore = "10,000 ceremonies: about 10 s (debug or release); cargo test -p fidoseal-daemon -- --ignored"]
fn no_transient_object_is_left_after_10000_ceremonies() {
    let tpm = Swtpm::start();
    let state = temp_dir("leak-10k");
    let mut store = open(&tpm, &state);
    ceremonies(&mut store, 10_000);
    assert_eq!(store.transient_objects().unwrap(), 1, "only the primary");
    std::fs::remove_dir_all(state).unwrap();
}

#[test]
fn no_reachable_tpm_is_an_error_that_says_what_to_do() {
    let state = temp_dir("unreachable");
    // A port nobody listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let tcti = format!("swtpm:host=127.0.0.1,port={port}");
    let err = TpmKeyStore::open(&TpmSettings { tcti: tcti.clone(), owner_auth_file: None }, &state).unwrap_err();
    let message = err.to_string();
    eprintln!("{message}");
    assert!(matches!(err, TpmSetupError::Unreachable(_)), "{message}");
    assert!(message.contains(&tcti), "{message}");
    assert!(message.contains("backend = \"software\""), "{message}");

    let err =
        TpmKeyStore::open(&TpmSettings { tcti: "device:/dev/no-such-tpmrm".into(), owner_auth_file: None }, &state)
            .unwrap_err()
            .to_string();
    eprintln!("{err}");
    assert!(err.contains("/dev/no-such-tpmrm") && err.contains("modprobe"), "{err}");

    let err = TpmKeyStore::open(&TpmSettings { tcti: "tpm-please".into(), owner_auth_file: None }, &state)
        .unwrap_err()
        .to_string();
    assert!(err.contains("tpm-please") && err.contains("device:/dev/tpmrm0"), "{err}");
    assert!(!state.join(STATE_FILE).exists(), "nothing is created without a TPM");
    std::fs::remove_dir_all(state).unwrap();
}

/// The owner hierarchy's password is as secret as the enterprise
/// attestation key: a file that group or others may read is refused before
/// the TPM is even contacted, with the file and the fix named.
#[test]
fn an_owner_auth_file_readable_by_others_is_refused() {
    let state = temp_dir("owner-auth-mode");
    let auth_file = state.join("owner-auth");
    std::fs::write(&auth_file, b"owner secret\n").unwrap();
    // No TPM listens there: only the file check can answer.
    let settings = TpmSettings { tcti: "swtpm:host=127.0.0.1,port=1".into(), owner_auth_file: Some(auth_file.clone()) };
    for mode in [0o644, 0o640, 0o604, 0o660] {
        std::fs::set_permissions(&auth_file, std::fs::Permissions::from_mode(mode)).unwrap();
        let err = TpmKeyStore::open(&settings, &state).unwrap_err();
        let text = err.to_string();
        assert!(!matches!(err, TpmSetupError::Unreachable(_)), "{mode:o}: refused before the TPM: {text}");
        assert!(text.contains(&auth_file.display().to_string()) && text.contains("chmod 600"), "{text}");
    }
    for mode in [0o600, 0o400] {
        std::fs::set_permissions(&auth_file, std::fs::Permissions::from_mode(mode)).unwrap();
        let err = TpmKeyStore::open(&settings, &state).unwrap_err();
        assert!(matches!(err, TpmSetupError::Unreachable(_)), "{mode:o}: the file passes, the TPM is next: {err}");
    }
    std::fs::remove_dir_all(state).unwrap();
}

#[test]
fn the_owner_auth_file_is_used() {
    let tpm = Swtpm::start();
    let state = temp_dir("owner-auth");
    let mut ctx = raw_context(&tpm);
    let auth = Auth::try_from(b"owner secret".to_vec()).unwrap();
    ctx.execute_with_session(Some(AuthSession::Password), |c| c.hierarchy_change_auth(AuthHandle::Owner, auth))
        .unwrap();
    drop(ctx);

    let err = TpmKeyStore::open(&settings(&tpm), &state).unwrap_err().to_string();
    eprintln!("{err}");
    assert!(err.contains("owner_auth_file"), "{err}");
    let auth_file = state.join("owner-auth");
    std::fs::write(&auth_file, b"owner secret\n").unwrap();
    std::fs::set_permissions(&auth_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let with_auth = TpmSettings { tcti: tpm.tcti(), owner_auth_file: Some(auth_file.clone()) };
    let mut store = TpmKeyStore::open(&with_auth, &state).unwrap();
    let created = store.generate(Algorithm::Es256).unwrap();
    store.sign(Algorithm::Es256, &created.key_handle, b"m").unwrap();
    drop(store);
    let missing = TpmSettings { tcti: tpm.tcti(), owner_auth_file: Some(state.join("nope")) };
    assert!(matches!(TpmKeyStore::open(&missing, &state), Err(TpmSetupError::Read { .. })));
    std::fs::remove_dir_all(state).unwrap();
}

#[test]
fn a_damaged_state_file_stops_the_start_and_is_kept() {
    let tpm = Swtpm::start();
    let state = temp_dir("damaged");
    drop(open(&tpm, &state));
    let path = state.join(STATE_FILE);
    let good = std::fs::read(&path).unwrap();
    std::fs::write(&path, &good[..good.len() - 3]).unwrap();
    let err = TpmKeyStore::open(&settings(&tpm), &state).unwrap_err();
    assert!(matches!(err, TpmSetupError::Damaged { .. }), "{err}");
    assert_eq!(std::fs::read(&path).unwrap(), &good[..good.len() - 3], "left as it was");
    std::fs::remove_dir_all(state).unwrap();
}

/// The P-256 key of a machine attestation certificate (the template's
/// subjectPublicKey: BIT STRING of 66 bytes, no unused bits, uncompressed).
fn machine_certificate_key(certificate: &[u8]) -> VerifyingKey {
    let at = certificate.windows(4).position(|w| w == [0x03, 0x42, 0x00, 0x04]).expect("an uncompressed P-256 key");
    let point: [u8; 65] = certificate[at + 3..at + 3 + 65].try_into().unwrap();
    assert!(fidoseal_ctap::machine_attestation::certificate_matches(certificate, &point, &FIDOSEAL_AAGUID));
    VerifyingKey::from_sec1_bytes(&point).unwrap()
}

#[test]
fn the_machine_key_is_made_in_the_tpm_once_survives_reset_and_restart_and_a_damaged_file_is_an_error() {
    let tpm = Swtpm::start();
    let state = temp_dir("machine");
    let file = state.join("machine-attestation-tpm");
    let mut store = open(&tpm, &state);
    assert!(!file.exists(), "made on first use only");
    let certificate = store.machine_attestation_certificate().unwrap();
    assert_eq!(std::fs::metadata(&file).unwrap().permissions().mode() & 0o777, 0o600);
    let key = machine_certificate_key(&certificate);
    let signature = store.sign_machine_attestation(b"authData and clientDataHash").unwrap();
    key.verify(b"authData and clientDataHash", &p256::ecdsa::Signature::from_der(&signature).unwrap()).unwrap();
    // The private key is the TPM's: the file holds a TPM-wrapped blob, not a scalar
    // that signs (the public key is in the certificate, the blob is the KeyBlob).
    let stored = crate::machine_key::load(&file).unwrap().unwrap();
    assert!(KeyBlob::decode(&stored.key).is_some());
    assert_eq!(store.transient_objects().unwrap(), 1, "the machine primary and key are flushed");

    store.reset().unwrap();
    assert_eq!(store.machine_attestation_certificate().unwrap(), certificate, "reset keeps the machine key");
    let signature = store.sign_machine_attestation(b"after reset").unwrap();
    key.verify(b"after reset", &p256::ecdsa::Signature::from_der(&signature).unwrap()).unwrap();
    drop(store);

    let mut reopened = open(&tpm, &state);
    assert_eq!(reopened.machine_attestation_certificate().unwrap(), certificate, "kept across restarts");
    drop(reopened);

    std::fs::write(&file, b"not cbor").unwrap();
    let mut damaged = open(&tpm, &state);
    match damaged.machine_attestation_certificate() {
        Err(KeyStoreError::MachineAttestation(message)) => {
            assert!(message.contains("machine-attestation-tpm"), "{message}")
        }
        other => panic!("expected a machine attestation error, got {other:?}"),
    }
    assert_eq!(std::fs::read(&file).unwrap(), b"not cbor", "a damaged file is never replaced silently");
    std::fs::remove_dir_all(state).unwrap();
}
