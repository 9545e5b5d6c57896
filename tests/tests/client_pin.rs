//! authenticatorClientPIN (CTAP 2.1 §6.5) and the pinUvAuthParam of
//! makeCredential / getAssertion (§6.1.2 steps 1–2 and 11, §6.2.2 steps
//! 1–2, 6 and 9), driven through the whole device with the independent
//! platform client of `fidoseal_tests::platform_client`, for both PIN/UV
//! auth protocols. Status bytes are spelled out from §8.2.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use ciborium::value::Value;
use fidoseal_ctap::ctaphid::CtapHid;
use fidoseal_ctap::memory_store::MemoryCredentialStore;
use fidoseal_ctap::platform::{
    AuthenticatorState, CredentialStore, PresencePurpose, PromptOutcome, RelyingParty, ResidentCredential, Secret32,
    StoreError,
};
use fidoseal_ctap::software_keystore::SoftwareKeyStore;
use fidoseal_ctap::{Authenticator, AuthenticatorConfig, Platform};
use fidoseal_tests::platform_client::{
    self as pc, command, ga_auth, mc_auth, parse_auth_data, permission, pin_subcommand, AuthData, Protocol,
};
use fidoseal_tests::requests::{self, int_map, text_map};
use fidoseal_tests::responses::{self, get, get_text};
use fidoseal_tests::status as st;
use fidoseal_tests::{DenyList, Device, ScriptedPrompt};

const RP: &str = "example.com";
const OTHER_RP: &str = "other.example";
const PIN: &str = "1234";
const WRONG_PIN: &str = "9999";

fn device() -> (Device, u32) {
    let mut d = Device::new();
    let cid = d.init();
    (d, cid)
}

fn device_with_pin(protocol: Protocol) -> (Device, u32) {
    let (mut d, cid) = device();
    assert_eq!(pc::set_pin(&mut d, cid, protocol, PIN), st::OK, "setPIN");
    (d, cid)
}

fn get_info(d: &mut Device, cid: u32) -> Value {
    let (status, body) = d.ctap(cid, command::GET_INFO, None);
    assert_eq!(status, st::OK);
    body.expect("getInfo body")
}

fn info_option(info: &Value, name: &str) -> Option<bool> {
    get_text(get(info, 4).expect("options"), name).and_then(Value::as_bool)
}

fn client_pin(d: &mut Device, cid: u32, params: Value) -> u8 {
    d.ctap(cid, command::CLIENT_PIN, Some(params)).0
}

fn retries(d: &mut Device, cid: u32) -> u64 {
    pc::get_pin_retries(d, cid).0
}

fn token(d: &mut Device, cid: u32, protocol: Protocol, permissions: u8, rp: Option<&str>) -> pc::PinToken {
    pc::get_pin_uv_auth_token_with_permissions(d, cid, protocol, PIN, permissions, rp).expect("pinUvAuthToken")
}

fn make_credential(
    d: &mut Device,
    cid: u32,
    rp: &str,
    user_id: &[u8],
    rk: bool,
    extra: Vec<(i64, Value)>,
) -> (u8, Option<Value>) {
    let mut extra = extra;
    if rk {
        extra.push(requests::rk());
    }
    d.ctap(cid, command::MAKE_CREDENTIAL, Some(requests::make_credential(rp, user_id, "alice", extra)))
}

fn get_assertion(d: &mut Device, cid: u32, rp: &str, allow: &[&[u8]], extra: Vec<(i64, Value)>) -> (u8, Option<Value>) {
    d.ctap(cid, command::GET_ASSERTION, Some(requests::get_assertion(rp, allow, extra)))
}

fn auth_data_of(body: &Value, key: i64) -> AuthData {
    parse_auth_data(&responses::bytes(get(body, key)))
}

fn flipped(mut bytes: Vec<u8>) -> Vec<u8> {
    bytes[0] ^= 0x01;
    bytes
}

fn options(entries: &[(&str, bool)]) -> (i64, Value) {
    (7, Value::Map(entries.iter().map(|(k, v)| (Value::from(*k), Value::Bool(*v))).collect()))
}

// ---------------------------------------------------------------------------
// getPINRetries, getKeyAgreement

#[test]
fn get_pin_retries_is_8_and_client_pin_option_turns_true_after_set_pin() {
    for protocol in Protocol::BOTH {
        let (mut d, cid) = device();
        assert_eq!(info_option(&get_info(&mut d, cid), "clientPin"), Some(false));
        assert_eq!(pc::set_pin(&mut d, cid, protocol, PIN), st::OK);
        assert_eq!(info_option(&get_info(&mut d, cid), "clientPin"), Some(true));
        assert_eq!(pc::get_pin_retries(&mut d, cid), (8, Some(false)), "{protocol:?}");
        // getPINRetries needs no protocol; with one it works alike.
        let request = int_map(vec![(1, Value::from(protocol.id())), (2, Value::from(pin_subcommand::GET_PIN_RETRIES))]);
        let (status, body) = d.ctap(cid, command::CLIENT_PIN, Some(request));
        assert_eq!(status, st::OK);
        assert_eq!(get(&body.unwrap(), 3), Some(&Value::from(8)));
    }
}

#[test]
fn get_key_agreement_is_a_cose_p256_ecdh_key_for_both_protocols() {
    let (mut d, cid) = device();
    for protocol in Protocol::BOTH {
        let (status, key) = pc::get_key_agreement(&mut d, cid, protocol);
        assert_eq!(status, st::OK);
        let key = key.expect("keyAgreement (0x01)");
        assert_eq!(get(&key, 1), Some(&Value::from(2)), "kty EC2");
        assert_eq!(get(&key, 3), Some(&Value::from(-25)), "alg ECDH-ES+HKDF-256");
        assert_eq!(get(&key, -1), Some(&Value::from(1)), "crv P-256");
        assert_eq!(responses::bytes(get(&key, -2)).len(), 32);
        assert_eq!(responses::bytes(get(&key, -3)).len(), 32);
        pc::parse_cose_p256(&key); // a point on the curve
                                   // Stable until something regenerates it.
        assert_eq!(pc::get_key_agreement(&mut d, cid, protocol).1, Some(key));
    }
}

#[test]
fn get_key_agreement_without_protocol_is_missing_parameter_and_protocol_3_is_invalid_parameter() {
    let (mut d, cid) = device();
    let missing = int_map(vec![(2, Value::from(pin_subcommand::GET_KEY_AGREEMENT))]);
    assert_eq!(client_pin(&mut d, cid, missing), st::MISSING_PARAMETER);
    let three = int_map(vec![(1, Value::from(3)), (2, Value::from(pin_subcommand::GET_KEY_AGREEMENT))]);
    assert_eq!(client_pin(&mut d, cid, three), st::INVALID_PARAMETER);
}

// ---------------------------------------------------------------------------
// setPIN

#[test]
fn set_pin_when_a_pin_is_set_is_pin_auth_invalid() {
    // §6.5.5.5 step 3: "If a PIN has already been set, return
    // CTAP2_ERR_PIN_AUTH_INVALID" (fidoseal answered NOT_ALLOWED before).
    for protocol in Protocol::BOTH {
        let (mut d, cid) = device_with_pin(protocol);
        assert_eq!(pc::set_pin(&mut d, cid, protocol, "5678"), st::PIN_AUTH_INVALID);
        // The first PIN is still the PIN, and nothing was counted against it.
        assert!(pc::get_pin_token(&mut d, cid, protocol, PIN).is_ok());
        assert!(pc::get_pin_token(&mut d, cid, protocol, "5678").is_err());
    }
}

#[test]
fn set_pin_with_a_bad_pin_uv_auth_param_is_pin_auth_invalid_and_sets_nothing() {
    for protocol in Protocol::BOTH {
        let (mut d, cid) = device();
        let ss = pc::key_agreement(&mut d, cid, protocol);
        let new_pin_enc = ss.encrypt(&pc::pad_pin(PIN.as_bytes()));
        let good = ss.authenticate(&new_pin_enc);
        let truncated = good[..good.len() - 1].to_vec();
        // Protocol one's 16-byte tag sent to a protocol two request, and vice versa.
        let other_length = pc::authenticate(
            if protocol == Protocol::One { Protocol::Two } else { Protocol::One },
            &ss.hmac_key,
            &new_pin_enc,
        );
        for auth in [flipped(good.clone()), truncated, other_length, Vec::new()] {
            let request = int_map(vec![
                (1, Value::from(protocol.id())),
                (2, Value::from(pin_subcommand::SET_PIN)),
                (3, ss.platform_key.clone()),
                (4, Value::Bytes(auth)),
                (5, Value::Bytes(new_pin_enc.clone())),
            ]);
            assert_eq!(client_pin(&mut d, cid, request), st::PIN_AUTH_INVALID, "{protocol:?}");
        }
        assert_eq!(info_option(&get_info(&mut d, cid), "clientPin"), Some(false));
    }
}

#[test]
fn set_pin_shorter_than_4_code_points_is_pin_policy_violation() {
    for protocol in Protocol::BOTH {
        let (mut d, cid) = device();
        assert_eq!(pc::set_pin(&mut d, cid, protocol, "123"), st::PIN_POLICY_VIOLATION);
        // Length is in code points, not bytes: three 2-byte characters are too short.
        assert_eq!(pc::set_pin(&mut d, cid, protocol, "ééé"), st::PIN_POLICY_VIOLATION);
        assert_eq!(pc::set_pin(&mut d, cid, protocol, ""), st::PIN_POLICY_VIOLATION);
        assert_eq!(info_option(&get_info(&mut d, cid), "clientPin"), Some(false));
    }
}

#[test]
fn set_pin_of_63_bytes_works_and_a_64_byte_block_without_zero_is_pin_policy_violation() {
    for protocol in Protocol::BOTH {
        let (mut d, cid) = device();
        assert_eq!(pc::set_pin_padded(&mut d, cid, protocol, &[b'7'; 64]), st::PIN_POLICY_VIOLATION);
        let long = "7".repeat(63);
        assert_eq!(pc::set_pin(&mut d, cid, protocol, &long), st::OK);
        assert!(pc::get_pin_token(&mut d, cid, protocol, &long).is_ok());
    }
}

#[test]
fn set_pin_that_is_not_utf8_is_pin_policy_violation() {
    for protocol in Protocol::BOTH {
        let (mut d, cid) = device();
        let status = pc::set_pin_padded(&mut d, cid, protocol, &pc::pad_pin(&[0xff, 0xfe, 0xc3, 0x28, 0x80]));
        assert_eq!(status, st::PIN_POLICY_VIOLATION);
        assert_eq!(info_option(&get_info(&mut d, cid), "clientPin"), Some(false));
    }
}

#[test]
fn set_pin_of_four_emoji_is_four_code_points_and_works() {
    let emoji = "😀🔑🦀🎉";
    assert_eq!((emoji.chars().count(), emoji.len()), (4, 16));
    for protocol in Protocol::BOTH {
        let (mut d, cid) = device();
        assert_eq!(pc::set_pin(&mut d, cid, protocol, emoji), st::OK);
        assert!(pc::get_pin_token(&mut d, cid, protocol, emoji).is_ok());
    }
}

#[test]
fn new_pin_enc_of_the_wrong_length_is_invalid_parameter() {
    for protocol in Protocol::BOTH {
        let (mut d, cid) = device();
        for len in [48usize, 80] {
            let mut block = vec![0u8; len];
            block[..4].copy_from_slice(b"1234");
            assert_eq!(pc::set_pin_padded(&mut d, cid, protocol, &block), st::INVALID_PARAMETER, "setPIN {len}");
        }
        assert_eq!(pc::set_pin(&mut d, cid, protocol, PIN), st::OK);
        for len in [48usize, 80] {
            let mut block = vec![0u8; len];
            block[..4].copy_from_slice(b"5678");
            let ss = pc::key_agreement(&mut d, cid, protocol);
            let status = client_pin(&mut d, cid, pc::change_pin_request(&ss, PIN.as_bytes(), &block));
            assert_eq!(status, st::INVALID_PARAMETER, "changePIN {len}");
        }
        assert!(pc::get_pin_token(&mut d, cid, protocol, PIN).is_ok(), "PIN unchanged");
    }
}

// ---------------------------------------------------------------------------
// changePIN, retries, blocking

#[test]
fn change_pin_changes_the_pin() {
    for protocol in Protocol::BOTH {
        let (mut d, cid) = device_with_pin(protocol);
        assert_eq!(pc::change_pin(&mut d, cid, protocol, PIN, "24680"), st::OK);
        assert_eq!(pc::get_pin_token(&mut d, cid, protocol, PIN).err(), Some(st::PIN_INVALID));
        assert!(pc::get_pin_token(&mut d, cid, protocol, "24680").is_ok());
        assert_eq!(retries(&mut d, cid), 8);
    }
}

#[test]
fn change_pin_with_wrong_current_pin_is_pin_invalid_decrements_and_regenerates_the_key() {
    for protocol in Protocol::BOTH {
        let (mut d, cid) = device_with_pin(protocol);
        let stale = pc::key_agreement(&mut d, cid, protocol);
        let request = pc::change_pin_request(&stale, WRONG_PIN.as_bytes(), &pc::pad_pin(b"5678"));
        assert_eq!(client_pin(&mut d, cid, request), st::PIN_INVALID);
        assert_eq!(retries(&mut d, cid), 7);

        // The key agreement key was regenerated: the old shared secret no
        // longer authenticates (PIN_AUTH_INVALID, before any retry is spent)...
        let (_, new_key) = pc::get_key_agreement(&mut d, cid, protocol);
        assert_ne!(new_key.as_ref(), None);
        let request = pc::change_pin_request(&stale, PIN.as_bytes(), &pc::pad_pin(b"5678"));
        assert_eq!(client_pin(&mut d, cid, request), st::PIN_AUTH_INVALID);
        assert_eq!(retries(&mut d, cid), 7);
        // ...and a pinHashEnc under it decrypts to garbage: a wrong PIN.
        let request = pc::pin_token_request(&stale, PIN.as_bytes(), None, None);
        assert_eq!(pc::request_token(&mut d, cid, &stale, request).err(), Some(st::PIN_INVALID));
        assert_eq!(retries(&mut d, cid), 6);

        // The right PIN under a fresh key works and restores the retries.
        assert_eq!(pc::change_pin(&mut d, cid, protocol, PIN, "5678"), st::OK);
        assert_eq!(retries(&mut d, cid), 8);
    }
}

#[test]
fn three_wrong_pins_block_until_power_cycle_even_the_right_pin() {
    for protocol in Protocol::BOTH {
        let (mut d, cid) = device_with_pin(protocol);
        assert_eq!(pc::get_pin_token(&mut d, cid, protocol, WRONG_PIN).err(), Some(st::PIN_INVALID));
        assert_eq!(pc::get_pin_token(&mut d, cid, protocol, WRONG_PIN).err(), Some(st::PIN_INVALID));
        assert_eq!(pc::get_pin_token(&mut d, cid, protocol, WRONG_PIN).err(), Some(st::PIN_AUTH_BLOCKED));
        assert_eq!(pc::get_pin_retries(&mut d, cid), (5, Some(true)));

        // Soft-locked: the right PIN is refused and nothing is counted.
        assert_eq!(pc::get_pin_token(&mut d, cid, protocol, PIN).err(), Some(st::PIN_AUTH_BLOCKED));
        let refused = pc::get_pin_uv_auth_token_with_permissions(&mut d, cid, protocol, PIN, permission::GA, None);
        assert_eq!(refused.err(), Some(st::PIN_AUTH_BLOCKED));
        assert_eq!(pc::change_pin(&mut d, cid, protocol, PIN, "5678"), st::PIN_AUTH_BLOCKED);
        assert_eq!(retries(&mut d, cid), 5);

        let now = d.now;
        d.authenticator.power_cycle(now).unwrap();
        assert_eq!(pc::get_pin_retries(&mut d, cid), (5, Some(false)));
        assert!(pc::get_pin_token(&mut d, cid, protocol, PIN).is_ok());
        assert_eq!(pc::get_pin_retries(&mut d, cid), (8, Some(false)));
    }
}

#[test]
fn eight_wrong_pins_across_power_cycles_block_the_pin_for_good() {
    for protocol in Protocol::BOTH {
        let (mut d, cid) = device_with_pin(protocol);
        let expected = [
            st::PIN_INVALID,
            st::PIN_INVALID,
            st::PIN_AUTH_BLOCKED,
            st::PIN_INVALID,
            st::PIN_INVALID,
            st::PIN_AUTH_BLOCKED,
            st::PIN_INVALID,
            st::PIN_BLOCKED,
        ];
        for (attempt, want) in expected.into_iter().enumerate() {
            let status = pc::get_pin_token(&mut d, cid, protocol, WRONG_PIN).err();
            assert_eq!(status, Some(want), "{protocol:?} attempt {}", attempt + 1);
            assert_eq!(retries(&mut d, cid), 7 - attempt as u64);
            if want == st::PIN_AUTH_BLOCKED {
                let now = d.now;
                d.authenticator.power_cycle(now).unwrap();
            }
        }
        for _ in 0..2 {
            assert_eq!(pc::get_pin_token(&mut d, cid, protocol, PIN).err(), Some(st::PIN_BLOCKED));
            assert_eq!(pc::change_pin(&mut d, cid, protocol, PIN, "5678"), st::PIN_BLOCKED);
            assert_eq!(retries(&mut d, cid), 0);
            let now = d.now;
            d.authenticator.power_cycle(now).unwrap();
        }
        assert_eq!(info_option(&get_info(&mut d, cid), "clientPin"), Some(true));
    }
}

/// A credential store shared between two authenticators, as the daemon's
/// state directory is shared between two runs.
#[derive(Clone)]
struct SharedStore(Arc<Mutex<MemoryCredentialStore>>, Arc<Mutex<bool>>);

impl SharedStore {
    fn new(capacity: usize) -> Self {
        Self(Arc::new(Mutex::new(MemoryCredentialStore::new(capacity))), Arc::default())
    }

    /// From now on `reset` fails, as a full or read-only disk would make it.
    fn fail_resets(&self) {
        *self.1.lock().unwrap() = true;
    }
}

impl CredentialStore for SharedStore {
    fn credentials_for_rp(&self, rp_id_hash: &[u8; 32]) -> Result<Vec<ResidentCredential>, StoreError> {
        self.0.lock().unwrap().credentials_for_rp(rp_id_hash)
    }
    fn relying_parties(&self) -> Result<Vec<RelyingParty>, StoreError> {
        self.0.lock().unwrap().relying_parties()
    }
    fn credential_count(&self) -> usize {
        self.0.lock().unwrap().credential_count()
    }
    fn next_creation_order(&self) -> u64 {
        self.0.lock().unwrap().next_creation_order()
    }
    fn initial_signature_counter(&self) -> u32 {
        self.0.lock().unwrap().initial_signature_counter()
    }
    fn all_credentials(&self) -> Result<Vec<ResidentCredential>, StoreError> {
        self.0.lock().unwrap().all_credentials()
    }
    fn find(&self, credential_id: &[u8]) -> Result<Option<ResidentCredential>, StoreError> {
        self.0.lock().unwrap().find(credential_id)
    }
    fn save(&mut self, credential: ResidentCredential) -> Result<(), StoreError> {
        self.0.lock().unwrap().save(credential)
    }
    fn delete(&mut self, credential_id: &[u8]) -> Result<bool, StoreError> {
        self.0.lock().unwrap().delete(credential_id)
    }
    fn remaining_capacity(&self) -> usize {
        self.0.lock().unwrap().remaining_capacity()
    }
    fn next_signature_counter(&mut self, credential_id: &[u8]) -> Result<u32, StoreError> {
        self.0.lock().unwrap().next_signature_counter(credential_id)
    }
    fn load_state(&self) -> AuthenticatorState {
        self.0.lock().unwrap().load_state()
    }
    fn save_state(&mut self, state: &AuthenticatorState) -> Result<(), StoreError> {
        self.0.lock().unwrap().save_state(state)
    }
    fn reset(&mut self) -> Result<(), StoreError> {
        if *self.1.lock().unwrap() {
            return Err(StoreError::Io("test: the disk is full".into()));
        }
        self.0.lock().unwrap().reset()
    }
}

/// A whole device over `store`, with a fixed key-store master secret.
fn device_over(store: &SharedStore) -> (Device, u32) {
    let prompt = ScriptedPrompt::approving();
    let denied_rps = DenyList::default();
    let now = std::time::Instant::now();
    let platform = Platform {
        keystore: Box::new(SoftwareKeyStore::new(Secret32([0x5a; 32]))),
        credentials: Box::new(store.clone()),
        prompt: Box::new(prompt.clone()),
        policy: Box::new(denied_rps.clone()),
    };
    let authenticator = Authenticator::new(AuthenticatorConfig::default(), platform, now);
    let hid = CtapHid::new(authenticator.device_version(), 0x1000);
    let mut d = Device { hid, authenticator, prompt, denied_rps, now };
    let cid = d.init();
    (d, cid)
}

#[test]
fn pin_retries_persist_in_the_store_across_power_cycles_and_restarts() {
    for protocol in Protocol::BOTH {
        let store = SharedStore::new(10);
        let (mut d, cid) = device_over(&store);
        assert_eq!(pc::set_pin(&mut d, cid, protocol, PIN), st::OK);
        assert_eq!(pc::get_pin_token(&mut d, cid, protocol, WRONG_PIN).err(), Some(st::PIN_INVALID));
        assert_eq!(pc::get_pin_token(&mut d, cid, protocol, WRONG_PIN).err(), Some(st::PIN_INVALID));
        assert_eq!(store.load_state().pin_retries, 6, "stored before the answer");

        let now = d.now;
        d.authenticator.power_cycle(now).unwrap();
        assert_eq!(retries(&mut d, cid), 6, "a power cycle does not restore retries");

        // A new authenticator over the same store (the daemon restarting).
        drop(d);
        let (mut d, cid) = device_over(&store);
        assert_eq!(pc::get_pin_retries(&mut d, cid), (6, Some(false)));
        assert_eq!(pc::get_pin_token(&mut d, cid, protocol, WRONG_PIN).err(), Some(st::PIN_INVALID));
        assert_eq!(retries(&mut d, cid), 5);
        assert!(pc::get_pin_token(&mut d, cid, protocol, PIN).is_ok());
        assert_eq!(retries(&mut d, cid), 8);
        assert_eq!(store.load_state().pin_retries, 8);
    }
}

/// authenticatorReset whose credential-state write fails must leave the
/// PIN and the key store that checks it together: the old PIN still
/// verifies, no retry is spent, the credentials still work, and a reset
/// once the disk is fine completes.
#[test]
fn a_reset_that_cannot_write_the_state_leaves_the_pin_working() {
    for protocol in Protocol::BOTH {
        let store = SharedStore::new(10);
        let (mut d, cid) = device_over(&store);
        assert_eq!(pc::set_pin(&mut d, cid, protocol, PIN), st::OK);
        let t = pc::get_pin_token(&mut d, cid, protocol, PIN).unwrap();
        let request = requests::make_credential(RP, b"u", "a", mc_auth(&t));
        let (status, body) = d.ctap(cid, command::MAKE_CREDENTIAL, Some(request));
        assert_eq!(status, st::OK);
        let id = responses::parse_registration(&body.unwrap()).credential_id;

        store.fail_resets();
        assert_ne!(d.ctap(cid, command::RESET, None).0, st::OK, "the reset failed and says so");
        for _ in 0..3 {
            assert!(pc::get_pin_token(&mut d, cid, protocol, PIN).is_ok(), "{protocol:?}: the PIN still verifies");
        }
        assert_eq!(retries(&mut d, cid), 8, "no retry was spent");
        let t = pc::get_pin_token(&mut d, cid, protocol, PIN).unwrap();
        let request = requests::get_assertion(RP, &[&id], ga_auth(&t));
        assert_eq!(d.ctap(cid, command::GET_ASSERTION, Some(request)).0, st::OK, "the credential still works");

        *store.1.lock().unwrap() = false;
        let now = d.now;
        d.authenticator.power_cycle(now).unwrap();
        assert_eq!(d.ctap(cid, command::RESET, None).0, st::OK);
        assert_eq!(pc::get_pin_token(&mut d, cid, protocol, PIN).err(), Some(st::PIN_NOT_SET));
        let request = requests::get_assertion(RP, &[&id], vec![]);
        assert_eq!(d.ctap(cid, command::GET_ASSERTION, Some(request)).0, st::NO_CREDENTIALS, "gone after the reset");
    }
}

// ---------------------------------------------------------------------------
// Token requests

#[test]
fn get_pin_token_with_permissions_or_rp_id_is_invalid_parameter() {
    for protocol in Protocol::BOTH {
        let (mut d, cid) = device_with_pin(protocol);
        let ss = pc::key_agreement(&mut d, cid, protocol);
        let pin_hash_enc = ss.encrypt(&pc::pin_hash(PIN.as_bytes()));
        for extra in [(9, Value::from(permission::GA)), (0x0A, Value::from(RP))] {
            let request = int_map(vec![
                (1, Value::from(protocol.id())),
                (2, Value::from(pin_subcommand::GET_PIN_TOKEN)),
                (3, ss.platform_key.clone()),
                (6, Value::Bytes(pin_hash_enc.clone())),
                extra,
            ]);
            assert_eq!(client_pin(&mut d, cid, request), st::INVALID_PARAMETER);
        }
        assert_eq!(retries(&mut d, cid), 8, "refused before the PIN is checked");
    }
}

#[test]
fn token_permissions_zero_is_invalid_parameter_and_bio_enrollment_is_unauthorized() {
    for protocol in Protocol::BOTH {
        let (mut d, cid) = device_with_pin(protocol);
        let ask = |d: &mut Device, permissions: u8| {
            pc::get_pin_uv_auth_token_with_permissions(d, cid, protocol, PIN, permissions, None).err()
        };
        assert_eq!(ask(&mut d, 0), Some(st::INVALID_PARAMETER));
        assert_eq!(ask(&mut d, permission::BE), Some(st::UNAUTHORIZED_PERMISSION));
        assert_eq!(ask(&mut d, permission::BE | permission::GA), Some(st::UNAUTHORIZED_PERMISSION));
        assert_eq!(ask(&mut d, 0x80), Some(st::UNAUTHORIZED_PERMISSION), "undefined bit");
        // 0x40 is CTAP 2.2's pcmr (tests/persistent_token.rs).
        assert!(ask(&mut d, permission::PCMR).is_none(), "pcmr is granted");
        // Permissions beyond a byte.
        let ss = pc::key_agreement(&mut d, cid, protocol);
        let mut request = pc::pin_token_request(&ss, PIN.as_bytes(), Some(permission::GA), None);
        if let Value::Map(entries) = &mut request {
            for (k, v) in entries.iter_mut() {
                if *k == Value::from(9) {
                    *v = Value::from(0x102);
                }
            }
        }
        assert_eq!(pc::request_token(&mut d, cid, &ss, request).err(), Some(st::UNAUTHORIZED_PERMISSION));
        // Missing permissions.
        let request = int_map(vec![
            (1, Value::from(protocol.id())),
            (2, Value::from(pin_subcommand::GET_PIN_UV_AUTH_TOKEN_USING_PIN_WITH_PERMISSIONS)),
            (3, ss.platform_key.clone()),
            (6, Value::Bytes(ss.encrypt(&pc::pin_hash(PIN.as_bytes())))),
        ]);
        assert_eq!(client_pin(&mut d, cid, request), st::MISSING_PARAMETER);
        assert_eq!(retries(&mut d, cid), 8, "refused before the PIN is checked");
        // Every supported permission together is fine.
        let all = permission::MC | permission::GA | permission::CM | permission::LBW | permission::ACFG;
        assert!(pc::get_pin_uv_auth_token_with_permissions(&mut d, cid, protocol, PIN, all, Some(RP)).is_ok());
    }
}

#[test]
fn without_built_in_uv_the_uv_subcommands_are_refused_and_unknown_subcommands_are_invalid_subcommand() {
    // The scripted prompt offers no built-in verification, so getInfo has no
    // "uv" option: getPinUvAuthTokenUsingUvWithPermissions is NOT_ALLOWED
    // once its parameters check out (§6.5.5.7.3), getUVRetries is unknown.
    for protocol in Protocol::BOTH {
        let (mut d, cid) = device_with_pin(protocol);
        assert_eq!(info_option(&get_info(&mut d, cid), "uv"), None);
        let ss = pc::key_agreement(&mut d, cid, protocol);
        let uv_token = |extra: Vec<(i64, Value)>| {
            let mut entries = vec![
                (1, Value::from(protocol.id())),
                (2, Value::from(pin_subcommand::GET_PIN_UV_AUTH_TOKEN_USING_UV_WITH_PERMISSIONS)),
            ];
            entries.extend(extra);
            int_map(entries)
        };
        let key = (3, ss.platform_key.clone());
        let ga = (9, Value::from(permission::GA));
        assert_eq!(client_pin(&mut d, cid, uv_token(vec![key.clone(), ga.clone()])), st::NOT_ALLOWED);
        assert_eq!(client_pin(&mut d, cid, uv_token(vec![ga.clone()])), st::MISSING_PARAMETER);
        assert_eq!(client_pin(&mut d, cid, uv_token(vec![key.clone()])), st::MISSING_PARAMETER);
        assert_eq!(client_pin(&mut d, cid, uv_token(vec![key.clone(), (9, Value::from(0))])), st::INVALID_PARAMETER);
        assert_eq!(
            client_pin(&mut d, cid, uv_token(vec![key.clone(), (9, Value::from(permission::BE))])),
            st::UNAUTHORIZED_PERMISSION
        );
        assert_eq!(retries(&mut d, cid), 8);
    }
    let (mut d, cid) = device_with_pin(Protocol::Two);
    for sub in [pin_subcommand::GET_UV_RETRIES, 0x00, 0x08, 0x0A, 0xFF] {
        let request = int_map(vec![(1, Value::from(2)), (2, Value::from(sub)), (9, Value::from(permission::GA))]);
        assert_eq!(client_pin(&mut d, cid, request), st::INVALID_SUBCOMMAND, "subcommand {sub:#04x}");
    }
}

#[test]
fn client_pin_parameters_of_the_wrong_cbor_type_are_unexpected_type() {
    for protocol in Protocol::BOTH {
        let (mut d, cid) = device_with_pin(protocol);
        let ss = pc::key_agreement(&mut d, cid, protocol);
        let p = Value::from(protocol.id());
        let hash_enc = Value::Bytes(ss.encrypt(&pc::pin_hash(PIN.as_bytes())));
        let cases: Vec<(&str, Value)> = vec![
            ("subCommand text", int_map(vec![(1, p.clone()), (2, Value::from("2"))])),
            ("protocol text", int_map(vec![(1, Value::from("2")), (2, Value::from(2))])),
            (
                "pinHashEnc text",
                int_map(vec![(1, p.clone()), (2, Value::from(5)), (3, ss.platform_key.clone()), (6, Value::from("x"))]),
            ),
            (
                "permissions text",
                int_map(vec![
                    (1, p.clone()),
                    (2, Value::from(9)),
                    (3, ss.platform_key.clone()),
                    (6, hash_enc.clone()),
                    (9, Value::from("ga")),
                ]),
            ),
            (
                "rpId bytes",
                int_map(vec![
                    (1, p.clone()),
                    (2, Value::from(9)),
                    (3, ss.platform_key.clone()),
                    (6, hash_enc.clone()),
                    (9, Value::from(2)),
                    (0x0A, Value::Bytes(RP.into())),
                ]),
            ),
            (
                "keyAgreement bytes",
                int_map(vec![
                    (1, p.clone()),
                    (2, Value::from(5)),
                    (3, Value::Bytes(vec![4; 65])),
                    (6, hash_enc.clone()),
                ]),
            ),
            ("parameters not a map", Value::Array(vec![p.clone(), Value::from(1)])),
        ];
        for (label, request) in cases {
            assert_eq!(client_pin(&mut d, cid, request), st::CBOR_UNEXPECTED_TYPE, "{label}");
        }
        assert_eq!(retries(&mut d, cid), 8);
    }
}

// ---------------------------------------------------------------------------
// pinUvAuthParam in makeCredential and getAssertion

#[test]
fn a_valid_token_sets_the_uv_flag_in_make_credential_and_get_assertion() {
    for protocol in Protocol::BOTH {
        let (mut d, cid) = device_with_pin(protocol);
        // Legacy getPinToken token (mc | ga).
        let legacy = pc::get_pin_token(&mut d, cid, protocol, PIN).unwrap();
        let (status, body) = make_credential(&mut d, cid, RP, b"u1", true, mc_auth(&legacy));
        assert_eq!(status, st::OK);
        let body = body.unwrap();
        let ad = auth_data_of(&body, 2);
        assert_eq!(ad.flags, AuthData::UP | AuthData::UV | AuthData::AT);
        let reg = responses::parse_registration(&body);

        let t = token(&mut d, cid, protocol, permission::GA, Some(RP));
        let (status, body) = get_assertion(&mut d, cid, RP, &[&reg.credential_id], ga_auth(&t));
        assert_eq!(status, st::OK);
        let body = body.unwrap();
        let ad_bytes = responses::bytes(get(&body, 2));
        assert_eq!(parse_auth_data(&ad_bytes).flags, AuthData::UP | AuthData::UV);
        assert!(responses::verify(
            &reg.public_key,
            &ad_bytes,
            &pc::GA_CLIENT_DATA_HASH,
            &responses::bytes(get(&body, 3))
        ));
    }
}

#[test]
fn with_a_pin_rk_needs_a_token_but_non_rk_does_not() {
    for protocol in Protocol::BOTH {
        let (mut d, cid) = device_with_pin(protocol);
        let info = get_info(&mut d, cid);
        assert_eq!(info_option(&info, "makeCredUvNotRqd"), Some(true));
        assert_eq!(make_credential(&mut d, cid, RP, b"u1", true, vec![]).0, st::PUAT_REQUIRED);
        let (status, body) = make_credential(&mut d, cid, RP, b"u1", false, vec![]);
        assert_eq!(status, st::OK);
        assert_eq!(auth_data_of(&body.unwrap(), 2).flags, AuthData::UP | AuthData::AT, "no UV");
    }
}

#[test]
fn a_wrong_pin_uv_auth_param_is_pin_auth_invalid() {
    for protocol in Protocol::BOTH {
        let (mut d, cid) = device_with_pin(protocol);
        let t = token(&mut d, cid, protocol, permission::MC | permission::GA, None);
        let mut bad = mc_auth(&t);
        bad[0].1 = Value::Bytes(flipped(t.param(&pc::MC_CLIENT_DATA_HASH)));
        assert_eq!(make_credential(&mut d, cid, RP, b"u1", true, bad).0, st::PIN_AUTH_INVALID);
        // Authenticating another clientDataHash.
        let other = vec![(8, Value::Bytes(t.param(&[0x33; 32]))), (9, Value::from(protocol.id()))];
        assert_eq!(make_credential(&mut d, cid, RP, b"u1", true, other).0, st::PIN_AUTH_INVALID);
        // A truncated tag.
        let short = t.param(&pc::GA_CLIENT_DATA_HASH)[..8].to_vec();
        let short = vec![(6, Value::Bytes(short)), (7, Value::from(protocol.id()))];
        assert_eq!(get_assertion(&mut d, cid, RP, &[], short).0, st::PIN_AUTH_INVALID);
        // Nothing was consumed: the token still works.
        assert_eq!(make_credential(&mut d, cid, RP, b"u1", true, mc_auth(&t)).0, st::OK);
    }
}

#[test]
fn a_token_without_the_needed_permission_is_pin_auth_invalid() {
    for protocol in Protocol::BOTH {
        let (mut d, cid) = device_with_pin(protocol);
        let (_, body) = make_credential(&mut d, cid, RP, b"u1", false, vec![]);
        let id = responses::parse_registration(&body.unwrap()).credential_id;
        let ga_only = token(&mut d, cid, protocol, permission::GA, None);
        assert_eq!(make_credential(&mut d, cid, RP, b"u2", true, mc_auth(&ga_only)).0, st::PIN_AUTH_INVALID);
        assert_eq!(make_credential(&mut d, cid, RP, b"u2", false, mc_auth(&ga_only)).0, st::PIN_AUTH_INVALID);
        let mc_only = token(&mut d, cid, protocol, permission::MC, None);
        assert_eq!(get_assertion(&mut d, cid, RP, &[&id], ga_auth(&mc_only)).0, st::PIN_AUTH_INVALID);
        let others = token(&mut d, cid, protocol, permission::CM | permission::LBW | permission::ACFG, None);
        assert_eq!(make_credential(&mut d, cid, RP, b"u2", true, mc_auth(&others)).0, st::PIN_AUTH_INVALID);
        assert_eq!(get_assertion(&mut d, cid, RP, &[&id], ga_auth(&others)).0, st::PIN_AUTH_INVALID);
    }
}

#[test]
fn a_token_bound_to_one_rp_is_pin_auth_invalid_for_another() {
    for protocol in Protocol::BOTH {
        let (mut d, cid) = device_with_pin(protocol);
        let t = token(&mut d, cid, protocol, permission::MC | permission::GA, Some(RP));
        assert_eq!(make_credential(&mut d, cid, OTHER_RP, b"u1", true, mc_auth(&t)).0, st::PIN_AUTH_INVALID);
        assert_eq!(get_assertion(&mut d, cid, OTHER_RP, &[], ga_auth(&t)).0, st::PIN_AUTH_INVALID);
        assert_eq!(make_credential(&mut d, cid, RP, b"u1", true, mc_auth(&t)).0, st::OK);
    }
}

#[test]
fn a_token_without_rp_id_is_bound_to_the_rp_of_its_first_use() {
    for protocol in Protocol::BOTH {
        let (mut d, cid) = device_with_pin(protocol);
        let (_, body) = make_credential(&mut d, cid, RP, b"u1", false, vec![]);
        let existing = responses::parse_registration(&body.unwrap()).credential_id;
        let t = token(&mut d, cid, protocol, permission::MC | permission::GA, None);
        // First use, for RP: the exclude list hit ends the request after the
        // token was checked (§6.1.2 step 11 binds the rp, step 12 excludes).
        let exclude = (5, Value::Array(vec![requests::descriptor(&existing)]));
        let mut extra = mc_auth(&t);
        extra.push(exclude);
        assert_eq!(make_credential(&mut d, cid, RP, b"u2", false, extra).0, st::CREDENTIAL_EXCLUDED);
        // Now bound to RP: another rp is refused, RP itself still works.
        assert_eq!(get_assertion(&mut d, cid, OTHER_RP, &[], ga_auth(&t)).0, st::PIN_AUTH_INVALID);
        let (status, body) = get_assertion(&mut d, cid, RP, &[&existing], ga_auth(&t));
        assert_eq!(status, st::OK);
        assert_eq!(auth_data_of(&body.unwrap(), 2).flags, AuthData::UP | AuthData::UV);
    }
}

#[test]
fn after_make_credential_the_token_keeps_only_large_blob_write() {
    for protocol in Protocol::BOTH {
        let (mut d, cid) = device_with_pin(protocol);
        let t = token(&mut d, cid, protocol, permission::MC | permission::GA | permission::LBW, None);
        let (status, body) = make_credential(&mut d, cid, RP, b"u1", true, mc_auth(&t));
        assert_eq!(status, st::OK);
        let id = responses::parse_registration(&body.unwrap()).credential_id;
        assert_eq!(make_credential(&mut d, cid, RP, b"u2", true, mc_auth(&t)).0, st::PIN_AUTH_INVALID);
        assert_eq!(get_assertion(&mut d, cid, RP, &[&id], ga_auth(&t)).0, st::PIN_AUTH_INVALID);
        // lbw survives (and ignores the rp binding).
        let array = pc::serialized_large_blob_array(&Value::Array(vec![Value::from(1)]));
        let request = pc::large_blobs_set(Some(&t), &array, 0, Some(array.len() as u64));
        assert_eq!(d.ctap(cid, command::LARGE_BLOBS, Some(request)).0, st::OK);
    }
}

#[test]
fn after_get_assertion_with_up_the_token_keeps_only_large_blob_write_but_up_false_consumes_nothing() {
    for protocol in Protocol::BOTH {
        let (mut d, cid) = device_with_pin(protocol);
        let (_, body) = make_credential(&mut d, cid, RP, b"u1", false, vec![]);
        let id = responses::parse_registration(&body.unwrap()).credential_id;
        let t = token(&mut d, cid, protocol, permission::GA | permission::LBW, Some(RP));
        // Platforms pre-flight allow lists with up=false and the same token
        // (python-fido2 does): §6.2.2 step 9 clears permissions only with up.
        for _ in 0..2 {
            let mut extra = ga_auth(&t);
            extra.push((5, text_map(&[("up", Value::Bool(false))])));
            let (status, body) = get_assertion(&mut d, cid, RP, &[&id], extra);
            assert_eq!(status, st::OK);
            assert_eq!(auth_data_of(&body.unwrap(), 2).flags, AuthData::UV, "UV without UP");
        }
        let (status, body) = get_assertion(&mut d, cid, RP, &[&id], ga_auth(&t));
        assert_eq!(status, st::OK);
        assert_eq!(auth_data_of(&body.unwrap(), 2).flags, AuthData::UP | AuthData::UV);
        assert_eq!(get_assertion(&mut d, cid, RP, &[&id], ga_auth(&t)).0, st::PIN_AUTH_INVALID);
        let array = pc::serialized_large_blob_array(&Value::Array(vec![]));
        let request = pc::large_blobs_set(Some(&t), &array, 0, Some(array.len() as u64));
        assert_eq!(d.ctap(cid, command::LARGE_BLOBS, Some(request)).0, st::OK);
    }
}

#[test]
fn a_token_expires_600_seconds_after_it_was_issued() {
    for protocol in Protocol::BOTH {
        let (mut d, cid) = device_with_pin(protocol);
        let (_, body) = make_credential(&mut d, cid, RP, b"u1", false, vec![]);
        let id = responses::parse_registration(&body.unwrap()).credential_id;

        let t = token(&mut d, cid, protocol, permission::GA, None);
        d.advance(Duration::from_secs(599));
        assert_eq!(get_assertion(&mut d, cid, RP, &[&id], ga_auth(&t)).0, st::OK, "599 s");

        let t = token(&mut d, cid, protocol, permission::GA, None);
        d.advance(Duration::from_secs(601));
        assert_eq!(get_assertion(&mut d, cid, RP, &[&id], ga_auth(&t)).0, st::PIN_AUTH_INVALID, "601 s");
        let t = token(&mut d, cid, protocol, permission::CM, None);
        d.advance(Duration::from_secs(601));
        let request = pc::cred_mgmt_request(Some(&t), 0x01, None);
        assert_eq!(d.ctap(cid, command::CREDENTIAL_MANAGEMENT, Some(request)).0, st::PIN_AUTH_INVALID);
    }
}

#[test]
fn change_pin_invalidates_the_old_token() {
    for protocol in Protocol::BOTH {
        let (mut d, cid) = device_with_pin(protocol);
        let t = token(&mut d, cid, protocol, permission::MC | permission::GA, None);
        assert_eq!(pc::change_pin(&mut d, cid, protocol, PIN, "5678"), st::OK);
        assert_eq!(make_credential(&mut d, cid, RP, b"u1", true, mc_auth(&t)).0, st::PIN_AUTH_INVALID);
        let fresh = pc::get_pin_token(&mut d, cid, protocol, "5678").unwrap();
        assert_eq!(make_credential(&mut d, cid, RP, b"u1", true, mc_auth(&fresh)).0, st::OK);
    }
}

#[test]
fn a_new_token_invalidates_the_previous_one() {
    for protocol in Protocol::BOTH {
        let (mut d, cid) = device_with_pin(protocol);
        let first = token(&mut d, cid, protocol, permission::MC, None);
        let _second = token(&mut d, cid, protocol, permission::MC, None);
        assert_eq!(make_credential(&mut d, cid, RP, b"u1", true, mc_auth(&first)).0, st::PIN_AUTH_INVALID);
    }
}

#[test]
fn zero_length_pin_uv_auth_param_asks_for_a_touch_then_tells_whether_a_pin_is_set() {
    for pin_set in [false, true] {
        let (mut d, cid) = if pin_set { device_with_pin(Protocol::Two) } else { device() };
        let want = if pin_set { st::PIN_INVALID } else { st::PIN_NOT_SET };
        let probes: Vec<(u8, Value)> = vec![
            (
                command::MAKE_CREDENTIAL,
                requests::make_credential(RP, b"u1", "alice", vec![(8, Value::Bytes(vec![])), (9, Value::from(2))]),
            ),
            (
                command::MAKE_CREDENTIAL,
                requests::make_credential(RP, b"u1", "alice", vec![(8, Value::Bytes(vec![])), (9, Value::from(1))]),
            ),
            // Before the protocol is even looked at (§6.1.2 step 1 precedes step 2).
            (command::MAKE_CREDENTIAL, requests::make_credential(RP, b"u1", "alice", vec![(8, Value::Bytes(vec![]))])),
            (
                command::GET_ASSERTION,
                requests::get_assertion(RP, &[], vec![(6, Value::Bytes(vec![])), (7, Value::from(2))]),
            ),
            (command::GET_ASSERTION, requests::get_assertion(RP, &[], vec![(6, Value::Bytes(vec![]))])),
        ];
        for (i, (cmd, params)) in probes.into_iter().enumerate() {
            let asked = d.prompt.asked().len();
            assert_eq!(d.ctap(cid, cmd, Some(params)).0, want, "probe {i}, PIN set: {pin_set}");
            let new: Vec<_> = d.prompt.asked()[asked..].to_vec();
            assert_eq!(new, vec![(PresencePurpose::Select, None)], "probe {i}");
        }
        if pin_set {
            assert_eq!(retries(&mut d, cid), 8, "the probe costs no retry");
        }
        // A refused or timed-out touch is OPERATION_DENIED (§6.1.2 step 1.2, §6.2.2 step 1.2).
        for outcome in [PromptOutcome::Denied, PromptOutcome::TimedOut] {
            d.prompt.push(outcome);
            let params =
                requests::make_credential(RP, b"u1", "alice", vec![(8, Value::Bytes(vec![])), (9, Value::from(2))]);
            assert_eq!(d.ctap(cid, command::MAKE_CREDENTIAL, Some(params)).0, st::OPERATION_DENIED, "{outcome:?}");
            d.prompt.push(outcome);
            let params = requests::get_assertion(RP, &[], vec![(6, Value::Bytes(vec![])), (7, Value::from(2))]);
            assert_eq!(d.ctap(cid, command::GET_ASSERTION, Some(params)).0, st::OPERATION_DENIED, "{outcome:?}");
        }
    }
}

#[test]
fn uv_option_without_pin_uv_auth_param_is_invalid_option() {
    for pin_set in [false, true] {
        let (mut d, cid) = if pin_set { device_with_pin(Protocol::One) } else { device() };
        let uv = options(&[("uv", true)]);
        assert_eq!(make_credential(&mut d, cid, RP, b"u1", false, vec![uv.clone()]).0, st::INVALID_OPTION);
        let (_, body) = make_credential(&mut d, cid, RP, b"u1", false, vec![]);
        let id = responses::parse_registration(&body.unwrap()).credential_id;
        assert_eq!(get_assertion(&mut d, cid, RP, &[&id], vec![(5, uv.1)]).0, st::INVALID_OPTION);
        assert!(d.prompt.asked().len() == 1, "only the registration asked for a touch");
    }
}

#[test]
fn get_assertion_returns_user_name_and_display_name_only_after_uv() {
    for protocol in Protocol::BOTH {
        let (mut d, cid) = device_with_pin(protocol);
        let t = token(&mut d, cid, protocol, permission::MC, Some(RP));
        let user = text_map(&[
            ("displayName", Value::from("Alice Example")),
            ("id", Value::Bytes(b"user-1".to_vec())),
            ("name", Value::from("alice@example.com")),
        ]);
        let mut params = vec![
            (1, Value::Bytes(pc::MC_CLIENT_DATA_HASH.to_vec())),
            (2, text_map(&[("id", Value::from(RP))])),
            (3, user.clone()),
            (4, requests::es256()),
            requests::rk(),
        ];
        params.extend(mc_auth(&t));
        assert_eq!(d.ctap(cid, command::MAKE_CREDENTIAL, Some(int_map(params))).0, st::OK);

        let (status, body) = get_assertion(&mut d, cid, RP, &[], vec![]);
        assert_eq!(status, st::OK);
        let body = body.unwrap();
        assert_eq!(get(&body, 4), Some(&text_map(&[("id", Value::Bytes(b"user-1".to_vec()))])), "id only without UV");
        assert_eq!(auth_data_of(&body, 2).flags, AuthData::UP);

        let t = token(&mut d, cid, protocol, permission::GA, Some(RP));
        let (status, body) = get_assertion(&mut d, cid, RP, &[], ga_auth(&t));
        assert_eq!(status, st::OK);
        let returned = get(body.as_ref().unwrap(), 4).unwrap();
        assert_eq!(get_text(returned, "id"), Some(&Value::Bytes(b"user-1".to_vec())));
        assert_eq!(get_text(returned, "name"), Some(&Value::from("alice@example.com")));
        assert_eq!(get_text(returned, "displayName"), Some(&Value::from("Alice Example")));
    }
}

#[test]
fn get_pin_retries_without_a_pin_is_pin_not_set() {
    let mut d = Device::new();
    let cid = d.init();
    let (status, _) = d.ctap(cid, 0x06, Some(fidoseal_tests::requests::int_map(vec![(2, Value::from(1))])));
    assert_eq!(status, 0x35);
}

/// A software key store whose derive_secret can be made to fail, as the TPM
/// store's does while the TPM is gone or the boot state is not approved
/// (docs/tpm.md, "Boot-state binding").
struct FailingPrf {
    inner: SoftwareKeyStore,
    failing: Arc<std::sync::atomic::AtomicBool>,
}

impl fidoseal_ctap::platform::KeyStore for FailingPrf {
    fn name(&self) -> &'static str {
        "failing-prf"
    }
    fn algorithms(&self) -> Vec<fidoseal_ctap::platform::Algorithm> {
        self.inner.algorithms()
    }
    fn generate(
        &mut self,
        algorithm: fidoseal_ctap::platform::Algorithm,
    ) -> Result<fidoseal_ctap::platform::CreatedKey, fidoseal_ctap::platform::KeyStoreError> {
        self.inner.generate(algorithm)
    }
    fn sign(
        &mut self,
        algorithm: fidoseal_ctap::platform::Algorithm,
        key_handle: &[u8],
        message: &[u8],
    ) -> Result<Vec<u8>, fidoseal_ctap::platform::KeyStoreError> {
        self.inner.sign(algorithm, key_handle, message)
    }
    fn seal_credential_id(
        &mut self,
        rp_id_hash: &[u8; 32],
        payload: &[u8],
    ) -> Result<Vec<u8>, fidoseal_ctap::platform::KeyStoreError> {
        self.inner.seal_credential_id(rp_id_hash, payload)
    }
    fn open_credential_id(
        &mut self,
        rp_id_hash: &[u8; 32],
        credential_id: &[u8],
    ) -> Result<Vec<u8>, fidoseal_ctap::platform::KeyStoreError> {
        self.inner.open_credential_id(rp_id_hash, credential_id)
    }
    fn create_pin_object(
        &mut self,
        pin_hash: &[u8; 16],
    ) -> Result<Option<Vec<u8>>, fidoseal_ctap::platform::KeyStoreError> {
        self.inner.create_pin_object(pin_hash)
    }
    fn check_pin_object(
        &mut self,
        object: &[u8],
        pin_hash: &[u8; 16],
    ) -> Result<fidoseal_ctap::platform::PinCheck, fidoseal_ctap::platform::KeyStoreError> {
        self.inner.check_pin_object(object, pin_hash)
    }
    fn derive_secret(&mut self, context: &[u8]) -> Result<Secret32, fidoseal_ctap::platform::KeyStoreError> {
        if self.failing.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(fidoseal_ctap::platform::KeyStoreError::Backend("the boot state changed: test".into()));
        }
        self.inner.derive_secret(context)
    }
    fn reset(&mut self) -> Result<(), fidoseal_ctap::platform::KeyStoreError> {
        self.inner.reset()
    }
}

/// A key store that cannot compute the PIN verifier (TPM unreachable, boot
/// state not approved) must not cost a PIN retry: eight such attempts would
/// block the PIN, and only a reset (every passkey lost) would end that.
/// Failed before the verifier was computed ahead of the decrement: the
/// retries went 8 → 7.
#[test]
fn a_key_store_that_cannot_verify_the_pin_costs_no_retry() {
    let failing = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let keystore = FailingPrf { inner: SoftwareKeyStore::new(Secret32([5; 32])), failing: Arc::clone(&failing) };
    let mut d = Device::with_keystore(AuthenticatorConfig::default(), Box::new(keystore));
    let cid = d.init();
    assert_eq!(pc::set_pin(&mut d, cid, Protocol::Two, PIN), st::OK, "setPIN");
    assert_eq!(retries(&mut d, cid), 8);
    failing.store(true, std::sync::atomic::Ordering::SeqCst);
    for _ in 0..3 {
        let status = pc::get_pin_token(&mut d, cid, Protocol::Two, PIN).err();
        assert_eq!(status, Some(0x7f), "CTAP1_ERR_OTHER: the key store's failure, not PIN_INVALID");
    }
    assert_eq!(retries(&mut d, cid), 8, "no retry spent");
    failing.store(false, std::sync::atomic::Ordering::SeqCst);
    assert!(pc::get_pin_token(&mut d, cid, Protocol::Two, PIN).is_ok());
    // A wrong PIN still costs one, as before.
    assert!(pc::get_pin_token(&mut d, cid, Protocol::Two, WRONG_PIN).is_err());
    assert_eq!(retries(&mut d, cid), 7);
}
