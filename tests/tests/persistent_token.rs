//! The persistentPinUvAuthToken (CTAP 2.2 §6.5.2.1, §6.5.5.7, §6.8): a
//! token with the pcmr permission alone, which lists credentials through
//! credential management (metadata, relying parties, credentials) and does
//! nothing else, survives power cycles and other tokens, and ends with a
//! PIN change, a reset or the next pcmr token; getInfo's perCredMgmtRO and
//! encIdentifier. Tokens come from the independent platform client, for
//! both PIN/UV auth protocols.

use ciborium::value::Value;
use fidoseal_tests::platform_client::{self as pc, command, mc_auth, permission, PinToken, Protocol};
use fidoseal_tests::requests::{self, int_map, text_map};
use fidoseal_tests::responses::{self, get};
use fidoseal_tests::status as st;
use fidoseal_tests::Device;

use fidoseal_tests::platform_client::credential_management_subcommand as sub;

const RP_A: &str = "a.example";
const RP_B: &str = "b.example";
const PIN: &str = "1234";

fn token(d: &mut Device, cid: u32, protocol: Protocol, permissions: u8) -> Result<PinToken, u8> {
    pc::get_pin_uv_auth_token_with_permissions(d, cid, protocol, PIN, permissions, None)
}

fn cm(d: &mut Device, cid: u32, t: Option<&PinToken>, sub_command: u8, params: Option<Value>) -> (u8, Option<Value>) {
    d.ctap(cid, command::CREDENTIAL_MANAGEMENT, Some(pc::cred_mgmt_request(t, sub_command, params)))
}

fn rp_hash_params(rp: &str) -> Value {
    int_map(vec![(1, Value::Bytes(pc::sha256(rp.as_bytes()).to_vec()))])
}

fn make_rk(d: &mut Device, cid: u32, protocol: Protocol, rp: &str, user: &[u8]) -> Vec<u8> {
    let t = pc::get_pin_uv_auth_token_with_permissions(d, cid, protocol, PIN, permission::MC, Some(rp)).unwrap();
    let mut extra = vec![requests::rk()];
    extra.extend(mc_auth(&t));
    let (status, body) = d.ctap(cid, command::MAKE_CREDENTIAL, Some(requests::make_credential(rp, user, "u", extra)));
    assert_eq!(status, st::OK, "makeCredential");
    responses::parse_registration(&body.unwrap()).credential_id
}

/// A device with a PIN, two credentials of RP_A and one of RP_B.
fn populated(protocol: Protocol) -> (Device, u32, Vec<Vec<u8>>) {
    let mut d = Device::new();
    let cid = d.init();
    assert_eq!(pc::set_pin(&mut d, cid, protocol, PIN), st::OK);
    let ids = vec![
        make_rk(&mut d, cid, protocol, RP_A, b"a-1"),
        make_rk(&mut d, cid, protocol, RP_A, b"a-2"),
        make_rk(&mut d, cid, protocol, RP_B, b"b-1"),
    ];
    (d, cid, ids)
}

fn count(body: &Option<Value>, key: i64) -> i128 {
    i128::from(get(body.as_ref().unwrap(), key).and_then(Value::as_integer).expect("an integer"))
}

/// Everything read-only credential management offers, with `t`.
fn lists_everything(d: &mut Device, cid: u32, t: &PinToken) {
    let (status, body) = cm(d, cid, Some(t), sub::GET_CREDS_METADATA, None);
    assert_eq!(status, st::OK, "getCredsMetadata");
    assert_eq!(count(&body, 1), 3, "existingResidentCredentialsCount");
    let (status, body) = cm(d, cid, Some(t), sub::ENUMERATE_RPS_BEGIN, None);
    assert_eq!(status, st::OK, "enumerateRPsBegin");
    assert_eq!(count(&body, 5), 2, "totalRPs");
    assert_eq!(cm(d, cid, None, sub::ENUMERATE_RPS_GET_NEXT_RP, None).0, st::OK);
    let (status, body) = cm(d, cid, Some(t), sub::ENUMERATE_CREDENTIALS_BEGIN, Some(rp_hash_params(RP_A)));
    assert_eq!(status, st::OK, "enumerateCredentialsBegin");
    assert_eq!(count(&body, 9), 2, "totalCredentials");
    assert_eq!(cm(d, cid, None, sub::ENUMERATE_CREDENTIALS_GET_NEXT_CREDENTIAL, None).0, st::OK);
}

fn info(d: &mut Device, cid: u32) -> Value {
    let (status, body) = d.ctap(cid, command::GET_INFO, None);
    assert_eq!(status, st::OK);
    body.unwrap()
}

fn option(info: &Value, name: &str) -> Option<bool> {
    responses::get_text(get(info, 4).unwrap(), name).and_then(Value::as_bool)
}

fn enc_identifier(d: &mut Device, cid: u32) -> Option<Vec<u8>> {
    get(&info(d, cid), 0x19).map(|v| v.as_bytes().expect("encIdentifier is a byte string").clone())
}

#[test]
fn a_pcmr_token_lists_credentials_across_power_cycles_and_other_tokens() {
    for protocol in Protocol::BOTH {
        let (mut d, cid, _) = populated(protocol);
        let persistent = token(&mut d, cid, protocol, permission::PCMR).expect("pcmr token");
        lists_everything(&mut d, cid, &persistent);
        // Another token (what a platform gets for its next makeCredential)
        // leaves the persistent one working, and the other way round.
        let cm_token = token(&mut d, cid, protocol, permission::CM).unwrap();
        lists_everything(&mut d, cid, &persistent);
        lists_everything(&mut d, cid, &cm_token);
        // A power cycle ends the pinUvAuthToken, not the persistent one.
        let now = d.now;
        d.authenticator.power_cycle(now).unwrap();
        assert_eq!(cm(&mut d, cid, Some(&cm_token), sub::GET_CREDS_METADATA, None).0, st::PIN_AUTH_INVALID);
        lists_everything(&mut d, cid, &persistent);
    }
}

#[test]
fn a_pcmr_token_writes_nothing() {
    for protocol in Protocol::BOTH {
        let (mut d, cid, ids) = populated(protocol);
        let persistent = token(&mut d, cid, protocol, permission::PCMR).unwrap();
        let descriptor = int_map(vec![(2, requests::descriptor(&ids[0]))]);
        assert_eq!(
            cm(&mut d, cid, Some(&persistent), sub::DELETE_CREDENTIAL, Some(descriptor.clone())).0,
            st::PIN_AUTH_INVALID,
            "deleteCredential"
        );
        let user = text_map(&[("id", Value::Bytes(b"a-1".to_vec())), ("name", Value::from("renamed"))]);
        let update = int_map(vec![(2, requests::descriptor(&ids[0])), (3, user)]);
        assert_eq!(
            cm(&mut d, cid, Some(&persistent), sub::UPDATE_USER_INFORMATION, Some(update)).0,
            st::PIN_AUTH_INVALID,
            "updateUserInformation"
        );
        // Nor a ceremony, a setting or a large blob.
        let mut mc = vec![requests::rk()];
        mc.extend(mc_auth(&persistent));
        let params = requests::make_credential(RP_A, b"new", "new", mc);
        assert_eq!(d.ctap(cid, command::MAKE_CREDENTIAL, Some(params)).0, st::PIN_AUTH_INVALID, "makeCredential");
        let toggle = pc::config_request(Some(&persistent), pc::config_subcommand::TOGGLE_ALWAYS_UV, None);
        assert_eq!(d.ctap(cid, command::CONFIG, Some(toggle)).0, st::PIN_AUTH_INVALID, "toggleAlwaysUv");
        let array = pc::serialized_large_blob_array(&Value::Array(vec![]));
        let set = pc::large_blobs_set(Some(&persistent), &array, 0, Some(array.len() as u64));
        assert_eq!(d.ctap(cid, command::LARGE_BLOBS, Some(set)).0, st::PIN_AUTH_INVALID, "largeBlobs set");
        // Everything is still there, and a cm token may delete.
        let cm_token = token(&mut d, cid, protocol, permission::CM).unwrap();
        let (_, body) = cm(&mut d, cid, Some(&cm_token), sub::GET_CREDS_METADATA, None);
        assert_eq!(count(&body, 1), 3);
        assert_eq!(cm(&mut d, cid, Some(&cm_token), sub::DELETE_CREDENTIAL, Some(descriptor)).0, st::OK);
    }
}

#[test]
fn pcmr_comes_alone_and_a_wrong_param_is_pin_auth_invalid() {
    let protocol = Protocol::Two;
    let (mut d, cid, _) = populated(protocol);
    for mixed in [permission::PCMR | permission::CM, permission::PCMR | permission::MC, 0x77] {
        assert_eq!(token(&mut d, cid, protocol, mixed).unwrap_err(), st::INVALID_PARAMETER, "{mixed:#04x}");
    }
    // A permission not granted here (be, or a bit no spec defines) is unauthorized first.
    for unsupported in [permission::PCMR | permission::BE, 0x80] {
        assert_eq!(token(&mut d, cid, protocol, unsupported).unwrap_err(), st::UNAUTHORIZED_PERMISSION);
    }
    // An rp ID sent with it is ignored: every rp is listed.
    let bound = pc::get_pin_uv_auth_token_with_permissions(&mut d, cid, protocol, PIN, permission::PCMR, Some(RP_B))
        .expect("pcmr with an rp ID");
    lists_everything(&mut d, cid, &bound);
    // A param made with another key is refused.
    let forged = PinToken { protocol, value: vec![7; 32] };
    assert_eq!(cm(&mut d, cid, Some(&forged), sub::GET_CREDS_METADATA, None).0, st::PIN_AUTH_INVALID);
    // No pinUvAuthParam: PUAT_REQUIRED as before.
    assert_eq!(cm(&mut d, cid, None, sub::GET_CREDS_METADATA, None).0, st::PUAT_REQUIRED);
}

#[test]
fn a_pin_change_a_reset_or_the_next_pcmr_token_end_it() {
    for protocol in Protocol::BOTH {
        let (mut d, cid, _) = populated(protocol);
        let first = token(&mut d, cid, protocol, permission::PCMR).unwrap();
        let second = token(&mut d, cid, protocol, permission::PCMR).unwrap();
        assert_eq!(cm(&mut d, cid, Some(&first), sub::GET_CREDS_METADATA, None).0, st::PIN_AUTH_INVALID);
        lists_everything(&mut d, cid, &second);

        assert_eq!(pc::change_pin(&mut d, cid, protocol, PIN, "5678"), st::OK);
        assert_eq!(cm(&mut d, cid, Some(&second), sub::GET_CREDS_METADATA, None).0, st::PIN_AUTH_INVALID);
        assert_eq!(enc_identifier(&mut d, cid), None, "no token, no encIdentifier");
        assert_eq!(pc::change_pin(&mut d, cid, protocol, "5678", PIN), st::OK);

        let third = token(&mut d, cid, protocol, permission::PCMR).unwrap();
        let now = d.now;
        d.authenticator.power_cycle(now).unwrap();
        assert_eq!(d.ctap(cid, command::RESET, None).0, st::OK);
        assert_eq!(cm(&mut d, cid, Some(&third), sub::GET_CREDS_METADATA, None).0, st::PIN_AUTH_INVALID);
        assert_eq!(enc_identifier(&mut d, cid), None);
    }
}

#[test]
fn get_info_offers_per_cred_mgmt_ro_and_an_enc_identifier_only_a_token_holder_reads() {
    for protocol in Protocol::BOTH {
        let (mut d, cid, _) = populated(protocol);
        assert_eq!(option(&info(&mut d, cid), "perCredMgmtRO"), Some(true));
        assert_eq!(enc_identifier(&mut d, cid), None, "nothing to encrypt it with yet");
        let t = token(&mut d, cid, protocol, permission::PCMR).unwrap();
        let first = enc_identifier(&mut d, cid).expect("encIdentifier with a persistent token");
        let again = enc_identifier(&mut d, cid).unwrap();
        assert_ne!(first, again, "a fresh IV every time");
        let identifier = pc::decrypt_enc_identifier(&t, &first);
        assert_eq!(pc::decrypt_enc_identifier(&t, &again), identifier);
        // Another token (a new persistent one) reads the same identifier;
        // so does the same token after a power cycle.
        let t2 = token(&mut d, cid, protocol, permission::PCMR).unwrap();
        assert_eq!(pc::decrypt_enc_identifier(&t2, &enc_identifier(&mut d, cid).unwrap()), identifier);
        let now = d.now;
        d.authenticator.power_cycle(now).unwrap();
        assert_eq!(pc::decrypt_enc_identifier(&t2, &enc_identifier(&mut d, cid).unwrap()), identifier);
        // The old token no longer decrypts it.
        assert_ne!(pc::decrypt_enc_identifier(&t, &enc_identifier(&mut d, cid).unwrap()), identifier);

        // A reset (the key store's secrets are new): another identifier.
        assert_eq!(d.ctap(cid, command::RESET, None).0, st::OK);
        assert_eq!(pc::set_pin(&mut d, cid, protocol, PIN), st::OK);
        let t3 = token(&mut d, cid, protocol, permission::PCMR).unwrap();
        assert_ne!(pc::decrypt_enc_identifier(&t3, &enc_identifier(&mut d, cid).unwrap()), identifier);
    }
}
