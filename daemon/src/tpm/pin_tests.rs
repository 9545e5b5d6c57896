//! The PIN object against swtpm (pin_object.rs): PIN guessing through the
//! TPM meets its dictionary-attack lockout, through the key store and
//! through the whole authenticator; PINs set the old way (an HMAC
//! verifier) keep working and move to a PIN object.
//!
//! The DA parameters are set on each test's own swtpm with the lockout
//! hierarchy (its lockoutAuth is empty): that is the test's TPM. fidoseald
//! itself never changes them.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use fidoseal_ctap::platform::PinCheck;
use fidoseal_ctap::AuthenticatorConfig;
use fidoseal_tests::platform_client::{self as pc, Protocol};
use fidoseal_tests::{status as st, Device};
use sha2::{Digest as _, Sha256};

use super::swtpm::{temp_dir, Swtpm};
use super::*;

fn pin_hash(pin: &str) -> [u8; 16] {
    Sha256::digest(pin.as_bytes())[..16].try_into().unwrap()
}

/// Sets swtpm's DA parameters with the command an administrator would use
/// (tpm2-tools' TPM2_DictionaryAttackParameters, with the lockout
/// hierarchy; tss-esapi 7.7 does not wrap it), and reads them back. The
/// store must not be open: swtpm serves one connection at a time.
fn set_dictionary_attack(tpm: &Swtpm, max_tries: u32) -> pin_object::DictionaryAttackParameters {
    let status = std::process::Command::new("tpm2_dictionarylockout")
        .args(["-T", &tpm.tcti(), "-s", "-n", &max_tries.to_string(), "-t", "1000", "-l", "1000"])
        .status()
        .expect("tpm2_dictionarylockout (tpm2-tools, scripts/install-deps)");
    assert!(status.success(), "tpm2_dictionarylockout -s");
    read_dictionary_attack(tpm)
}

fn read_dictionary_attack(tpm: &Swtpm) -> pin_object::DictionaryAttackParameters {
    let (mut ctx, _) = open_context(&TctiNameConf::from_str(&tpm.tcti()).unwrap(), &tpm.tcti(), None).unwrap();
    pin_object::dictionary_attack_parameters(&mut ctx).map_err(|_| "reading the DA parameters").unwrap()
}

fn open_store(tpm: &Swtpm, state: &Path) -> TpmKeyStore {
    TpmKeyStore::open(&TpmSettings { tcti: tpm.tcti(), owner_auth_file: None }, state).expect("open the TPM key store")
}

#[test]
fn the_pin_object_is_not_no_da_and_its_blob_is_checked() {
    let template = pin_object::template().unwrap();
    let a = template.object_attributes();
    assert!(!a.no_da(), "DA-protected: wrong PINs count at the TPM");
    assert!(a.fixed_tpm() && a.fixed_parent() && a.user_with_auth() && !a.sensitive_data_origin());
    assert!(pin_object::decode(&[0x70], None).is_none());
    assert!(pin_object::decode(&[7; 32], None).is_none(), "an HMAC verifier is no PIN object");
    assert!(pin_object::decode(&[], None).is_none());
}

#[test]
fn wrong_pins_through_the_pin_object_hit_the_tpm_lockout_and_the_right_pin_is_then_locked_not_wrong() {
    let tpm = Swtpm::start();
    let parameters = set_dictionary_attack(&tpm, 4);
    assert_eq!((parameters.max_tries, parameters.recovery_time, parameters.failed_tries), (4, 1000, 0));
    let state = temp_dir("pin-lockout");
    let mut store = open_store(&tpm, &state);
    let object = store.create_pin_object(&pin_hash("1234")).unwrap().expect("the TPM store makes PIN objects");
    assert_ne!(object.len(), 32, "never taken for an HMAC verifier");
    assert!(!object.windows(16).any(|w| w == pin_hash("1234")), "the PIN hash is not in the blob");
    assert_eq!(store.check_pin_object(&object, &pin_hash("1234")).unwrap(), PinCheck::Match);
    // An attacker with the TPM (the key store directly, no CTAP counter).
    for guess in 0..4 {
        let wrong = pin_hash(&format!("{guess:04}9"));
        assert_eq!(store.check_pin_object(&object, &wrong).unwrap(), PinCheck::Mismatch, "guess {guess}");
    }
    assert_eq!(store.check_pin_object(&object, &pin_hash("0000")).unwrap(), PinCheck::Locked);
    assert_eq!(
        store.check_pin_object(&object, &pin_hash("1234")).unwrap(),
        PinCheck::Locked,
        "the right PIN is refused as locked, not as wrong"
    );
    assert_eq!(store.transient_objects().unwrap(), 1, "the PIN object and sessions are flushed");
    drop(store);
    assert_eq!(read_dictionary_attack(&tpm).failed_tries, 4, "the TPM counted the wrong PINs");
    std::fs::remove_dir_all(state).unwrap();
}

/// The TPM store, with PIN objects switched off until `objects` is set (a
/// PIN set before this version: an HMAC verifier), counting what is used.
struct Recording {
    inner: TpmKeyStore,
    objects: Arc<AtomicBool>,
    created: Arc<AtomicUsize>,
    checked: Arc<AtomicUsize>,
}

impl KeyStore for Recording {
    fn name(&self) -> &'static str {
        self.inner.name()
    }
    fn algorithms(&self) -> Vec<Algorithm> {
        self.inner.algorithms()
    }
    fn generate(&mut self, algorithm: Algorithm) -> Result<CreatedKey, KeyStoreError> {
        self.inner.generate(algorithm)
    }
    fn sign(&mut self, algorithm: Algorithm, key_handle: &[u8], message: &[u8]) -> Result<Vec<u8>, KeyStoreError> {
        self.inner.sign(algorithm, key_handle, message)
    }
    fn seal_credential_id(&mut self, rp_id_hash: &[u8; 32], payload: &[u8]) -> Result<Vec<u8>, KeyStoreError> {
        self.inner.seal_credential_id(rp_id_hash, payload)
    }
    fn open_credential_id(&mut self, rp_id_hash: &[u8; 32], credential_id: &[u8]) -> Result<Vec<u8>, KeyStoreError> {
        self.inner.open_credential_id(rp_id_hash, credential_id)
    }
    fn derive_secret(&mut self, context: &[u8]) -> Result<Secret32, KeyStoreError> {
        self.inner.derive_secret(context)
    }
    fn reset(&mut self) -> Result<(), KeyStoreError> {
        self.inner.reset()
    }
    fn create_pin_object(&mut self, pin_hash: &[u8; 16]) -> Result<Option<Vec<u8>>, KeyStoreError> {
        if !self.objects.load(Ordering::SeqCst) {
            return Ok(None);
        }
        self.created.fetch_add(1, Ordering::SeqCst);
        self.inner.create_pin_object(pin_hash)
    }
    fn check_pin_object(&mut self, object: &[u8], pin_hash: &[u8; 16]) -> Result<PinCheck, KeyStoreError> {
        self.checked.fetch_add(1, Ordering::SeqCst);
        self.inner.check_pin_object(object, pin_hash)
    }
}

struct Counters {
    objects: Arc<AtomicBool>,
    created: Arc<AtomicUsize>,
    checked: Arc<AtomicUsize>,
}

fn device(tpm: &Swtpm, state: &Path, objects: bool) -> (Device, u32, Counters) {
    let counters =
        Counters { objects: Arc::new(AtomicBool::new(objects)), created: Arc::default(), checked: Arc::default() };
    let store = Recording {
        inner: open_store(tpm, state),
        objects: Arc::clone(&counters.objects),
        created: Arc::clone(&counters.created),
        checked: Arc::clone(&counters.checked),
    };
    let mut d = Device::with_keystore(AuthenticatorConfig::default(), Box::new(store));
    let cid = d.init();
    (d, cid, counters)
}

fn power_cycle(d: &mut Device) {
    d.advance(std::time::Duration::from_secs(1));
    let now = d.now;
    d.authenticator.power_cycle(now).unwrap();
}

#[test]
fn through_ctap_a_tpm_lockout_answers_pin_auth_blocked_and_spends_no_retry() {
    // Failed before the PIN object: the HMAC verifier is noDA, the TPM
    // never locks, and the right PIN after the guesses got a token.
    let tpm = Swtpm::start();
    set_dictionary_attack(&tpm, 3);
    let state = temp_dir("pin-ctap-lockout");
    let (mut d, cid, counters) = device(&tpm, &state, true);
    assert_eq!(pc::set_pin(&mut d, cid, Protocol::Two, "1234"), st::OK);
    assert_eq!(counters.created.load(Ordering::SeqCst), 1, "setPIN made a PIN object");
    // CTAP's rule first: three wrong PINs, then a power cycle is needed.
    let wrong = |d: &mut Device| pc::get_pin_token(d, cid, Protocol::Two, "9999").err();
    assert_eq!(wrong(&mut d), Some(st::PIN_INVALID));
    assert_eq!(wrong(&mut d), Some(st::PIN_INVALID));
    assert_eq!(wrong(&mut d), Some(st::PIN_AUTH_BLOCKED));
    power_cycle(&mut d);
    assert_eq!(pc::get_pin_retries(&mut d, cid).0, 5);
    // The TPM counted the same three failures and is now locked out.
    let right = pc::get_pin_token(&mut d, cid, Protocol::Two, "1234");
    assert_eq!(right.err(), Some(st::PIN_AUTH_BLOCKED), "the right PIN is locked out, not wrong");
    assert_eq!(pc::get_pin_retries(&mut d, cid).0, 5, "a lockout spends no CTAP retry");
    assert_eq!(wrong(&mut d), Some(st::PIN_AUTH_BLOCKED));
    assert_eq!(pc::get_pin_retries(&mut d, cid).0, 5, "nor does a wrong PIN while locked out");
    assert_eq!(pc::get_pin_retries(&mut d, cid).1, Some(true), "until a power cycle (no TPM use per try)");
    drop(d);
    assert_eq!(read_dictionary_attack(&tpm).failed_tries, 3, "the tries while locked out reached no comparison");
    std::fs::remove_dir_all(state).unwrap();
}

#[test]
fn a_pin_set_the_old_way_works_and_moves_to_a_pin_object_at_its_first_use() {
    let tpm = Swtpm::start();
    let state = temp_dir("pin-migrate");
    let (mut d, cid, counters) = device(&tpm, &state, false);
    assert_eq!(pc::set_pin(&mut d, cid, Protocol::Two, "1234"), st::OK);
    assert_eq!(counters.created.load(Ordering::SeqCst), 0, "an HMAC verifier, as before");
    // The new version starts on that state.
    counters.objects.store(true, Ordering::SeqCst);
    assert_eq!(pc::get_pin_token(&mut d, cid, Protocol::Two, "9999").err(), Some(st::PIN_INVALID));
    assert_eq!(counters.created.load(Ordering::SeqCst), 0, "a wrong PIN does not migrate");
    assert!(pc::get_pin_token(&mut d, cid, Protocol::Two, "1234").is_ok(), "the old PIN works");
    assert_eq!(counters.created.load(Ordering::SeqCst), 1, "and is now a PIN object");
    assert_eq!(counters.checked.load(Ordering::SeqCst), 0);
    assert_eq!(pc::get_pin_retries(&mut d, cid).0, 8);
    assert!(pc::get_pin_token(&mut d, cid, Protocol::Two, "1234").is_ok());
    assert_eq!(counters.checked.load(Ordering::SeqCst), 1, "checked through the PIN object");
    assert_eq!(pc::get_pin_token(&mut d, cid, Protocol::Two, "9999").err(), Some(st::PIN_INVALID));
    assert_eq!(pc::get_pin_retries(&mut d, cid).0, 7);
    // changePIN makes a new object; the old PIN no longer works.
    assert_eq!(pc::change_pin(&mut d, cid, Protocol::Two, "1234", "5678"), st::OK);
    assert_eq!(counters.created.load(Ordering::SeqCst), 2);
    assert_eq!(pc::get_pin_token(&mut d, cid, Protocol::Two, "1234").err(), Some(st::PIN_INVALID));
    assert!(pc::get_pin_token(&mut d, cid, Protocol::Two, "5678").is_ok());
    std::fs::remove_dir_all(state).unwrap();
}
