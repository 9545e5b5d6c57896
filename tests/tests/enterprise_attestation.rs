//! Enterprise attestation (CTAP 2.1 §7.1, §6.1.2 step 9, §6.11.2) through
//! the whole device: "ep" in getInfo only while the policy holds a key,
//! enableEnterpriseAttestation behind an acfg token, the statement signed
//! by the administrator's key with its chain, only for rp IDs the policy
//! grants it to and only when the client asks, and reset turning it off.
//!
//! The key and certificates are the policy crate's test data, loaded
//! through the policy crate as the daemon loads them.

use std::path::PathBuf;
use std::sync::Arc;

use ciborium::value::Value;
use fidoseal_ctap::authenticator::{AttestationMode, AuthenticatorConfig, FIDOSEAL_AAGUID};
use fidoseal_ctap::platform::{AttestationPolicy, EnterpriseAttestationKey, PolicyVerdict};
use fidoseal_policy::Policy;
use fidoseal_tests::platform_client::config_subcommand::ENABLE_ENTERPRISE_ATTESTATION;
use fidoseal_tests::platform_client::{self as pc, command, permission, PinToken, Protocol};
use fidoseal_tests::requests;
use fidoseal_tests::responses::{self, get, get_text};
use fidoseal_tests::status as st;
use fidoseal_tests::Device;
use p256::ecdsa::VerifyingKey;
use x509_cert::der::{Decode, Encode};
use x509_cert::Certificate;

const EA_RP: &str = "idp.example.com";
const OTHER_RP: &str = "other.example.com";
const PIN: &str = "123456";
const CLIENT_DATA_HASH: [u8; 32] = [0x11; 32];

fn data(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../policy/tests/data/enterprise").join(name)
}

/// The test key and chain, through the policy loader (which wants the key
/// file 0600, which git does not keep).
fn enterprise_key() -> (Arc<EnterpriseAttestationKey>, Vec<Vec<u8>>) {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("attestation.key");
    std::fs::copy(data("attestation-sec1.key"), &key).unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let text = format!(
        "[enterprise_attestation]\nrp_ids = [\"{EA_RP}\"]\nkey = {:?}\ncertificates = [{:?}, {:?}]\n",
        key.display().to_string(),
        data("attestation.pem").display().to_string(),
        data("root-ca.pem").display().to_string(),
    );
    let policy = Policy::from_sources(&[("/p/ea.toml", text.as_str())]).expect("valid test policy");
    policy.check_authenticator_aaguid(&FIDOSEAL_AAGUID).expect("the certificate names fidoseal's AAGUID");
    let ea = policy.enterprise_attestation().unwrap();
    let chain = ea.certificates().to_vec();
    (Arc::new(EnterpriseAttestationKey::new(ea.signing_key().clone(), chain.clone())), chain)
}

/// A device whose policy can do enterprise attestation for [`EA_RP`].
fn capable_device(config: AuthenticatorConfig) -> (Device, u32, Vec<Vec<u8>>) {
    let mut d = Device::with_config(config, 10);
    let cid = d.init();
    let (key, chain) = enterprise_key();
    d.denied_rps.set_enterprise_attestation_capable(true);
    let mut verdict = PolicyVerdict::allow("test: enterprise rule");
    verdict.attestation = Some(AttestationPolicy::Enterprise(key));
    d.denied_rps.set_verdict(EA_RP, verdict);
    (d, cid, chain)
}

fn ep_option(d: &mut Device, cid: u32) -> Option<bool> {
    let (status, info) = d.ctap(cid, command::GET_INFO, None);
    assert_eq!(status, st::OK);
    get_text(get(info.as_ref().unwrap(), 4).unwrap(), "ep").and_then(Value::as_bool)
}

fn enable(d: &mut Device, cid: u32, token: Option<&PinToken>) -> u8 {
    d.ctap(cid, command::CONFIG, Some(pc::config_request(token, ENABLE_ENTERPRISE_ATTESTATION, None))).0
}

fn make_credential(d: &mut Device, cid: u32, rp: &str, ep: Option<Value>) -> (u8, Option<Value>) {
    let extra = ep.map(|v| vec![(0x0A, v)]).unwrap_or_default();
    d.ctap(cid, command::MAKE_CREDENTIAL, Some(requests::make_credential(rp, b"u", "alice", extra)))
}

fn keys_of(body: &Value) -> Vec<i128> {
    body.as_map().unwrap().iter().map(|(k, _)| k.as_integer().map(i128::from).unwrap()).collect()
}

/// Checks a packed statement with x5c the way a relying party does: the
/// chain is the administrator's, and the leaf certificate's key signed
/// authData ‖ clientDataHash.
fn assert_enterprise_statement(body: &Value, chain: &[Vec<u8>]) {
    assert_eq!(get(body, 1), Some(&Value::from("packed")));
    let auth_data = responses::bytes(get(body, 2));
    let statement = get(body, 3).unwrap();
    assert_eq!(get_text(statement, "alg").and_then(Value::as_integer).map(i128::from), Some(-7));
    let x5c: Vec<Vec<u8>> = get_text(statement, "x5c")
        .and_then(Value::as_array)
        .expect("x5c")
        .iter()
        .map(|c| c.as_bytes().expect("DER bytes").clone())
        .collect();
    assert_eq!(x5c, chain, "the administrator's chain, leaf first");
    let leaf = Certificate::from_der(&x5c[0]).expect("X.509");
    let spki = leaf.tbs_certificate().subject_public_key_info().to_der().unwrap();
    let key = <VerifyingKey as p256::pkcs8::DecodePublicKey>::from_public_key_der(&spki).expect("P-256");
    let sig = responses::bytes(get_text(statement, "sig"));
    assert!(responses::verify(&key, &auth_data, &CLIENT_DATA_HASH, &sig), "signed by the attestation key");
    // The credential is an ordinary one; its own key did not sign.
    let credential_key = responses::parse_registration(body).public_key;
    assert!(!responses::verify(&credential_key, &auth_data, &CLIENT_DATA_HASH, &sig));
    assert_eq!(&auth_data[37..37 + 16], &FIDOSEAL_AAGUID, "AAGUID the certificate names");
    assert_eq!(get(body, 4), Some(&Value::Bool(true)), "epAtt");
}

#[test]
fn ep_is_absent_without_a_policy_key_and_then_enable_and_requests_are_refused() {
    let mut d = Device::new();
    let cid = d.init();
    assert_eq!(ep_option(&mut d, cid), None);
    assert_eq!(enable(&mut d, cid, None), st::INVALID_COMMAND);
    for ep in [1, 2] {
        assert_eq!(make_credential(&mut d, cid, EA_RP, Some(ep.into())).0, st::INVALID_PARAMETER, "ep={ep}");
    }
}

#[test]
fn capable_but_disabled_until_enabled_then_enabled_until_reset() {
    let (mut d, cid, chain) = capable_device(AuthenticatorConfig::default());
    assert_eq!(ep_option(&mut d, cid), Some(false));
    assert_eq!(make_credential(&mut d, cid, EA_RP, Some(1.into())).0, st::INVALID_PARAMETER, "disabled");

    assert_eq!(enable(&mut d, cid, None), st::OK);
    assert_eq!(ep_option(&mut d, cid), Some(true));
    assert_eq!(enable(&mut d, cid, None), st::OK, "enabling twice is fine");
    let (status, body) = make_credential(&mut d, cid, EA_RP, Some(1.into()));
    assert_eq!(status, st::OK);
    assert_enterprise_statement(body.as_ref().unwrap(), &chain);

    // authenticatorReset (within the power-up window, after a touch) turns it off.
    assert_eq!(d.ctap(cid, command::RESET, None).0, st::OK);
    assert_eq!(ep_option(&mut d, cid), Some(false));
    assert_eq!(make_credential(&mut d, cid, EA_RP, Some(1.into())).0, st::INVALID_PARAMETER);
}

#[test]
fn vendor_facilitated_and_platform_managed_both_get_it_for_a_granted_rp() {
    let (mut d, cid, chain) = capable_device(AuthenticatorConfig::default());
    assert_eq!(enable(&mut d, cid, None), st::OK);
    for ep in [1, 2] {
        let (status, body) = make_credential(&mut d, cid, EA_RP, Some(ep.into()));
        assert_eq!(status, st::OK, "ep={ep}");
        let body = body.unwrap();
        assert_eq!(keys_of(&body), [1, 2, 3, 4], "fmt, authData, attStmt, epAtt");
        assert_enterprise_statement(&body, &chain);
    }
}

#[test]
fn other_rps_and_requests_that_do_not_ask_get_the_ordinary_attestation() {
    for (mode, format) in [(AttestationMode::SelfAttestation, "packed"), (AttestationMode::None, "none")] {
        let config = AuthenticatorConfig { attestation: mode, ..AuthenticatorConfig::default() };
        let (mut d, cid, _) = capable_device(config);
        assert_eq!(enable(&mut d, cid, None), st::OK);
        // An rp the policy does not grant it to: epAtt false, no certificate.
        for ep in [1, 2] {
            let (status, body) = make_credential(&mut d, cid, OTHER_RP, Some(ep.into()));
            assert_eq!(status, st::OK);
            let body = body.unwrap();
            assert_eq!(get(&body, 1), Some(&Value::from(format)), "{mode:?} ep={ep}");
            assert_eq!(get_text(get(&body, 3).unwrap(), "x5c"), None, "no certificate for {OTHER_RP}");
            assert_eq!(get(&body, 4), Some(&Value::Bool(false)), "epAtt false");
        }
        // The granted rp without asking: never an identifying statement.
        let (status, body) = make_credential(&mut d, cid, EA_RP, None);
        assert_eq!(status, st::OK);
        let body = body.unwrap();
        assert_eq!(get(&body, 1), Some(&Value::from(format)), "{mode:?} without ep");
        assert_eq!(get_text(get(&body, 3).unwrap(), "x5c"), None);
        assert_eq!(keys_of(&body), [1, 2, 3], "no epAtt when not asked");
    }
}

#[test]
fn bad_enterprise_attestation_values_are_refused() {
    let (mut d, cid, _) = capable_device(AuthenticatorConfig::default());
    assert_eq!(enable(&mut d, cid, None), st::OK);
    for (what, value, want) in [
        ("0", Value::from(0), st::INVALID_OPTION),
        ("3", Value::from(3), st::INVALID_OPTION),
        ("a large value", Value::from(u64::MAX), st::INVALID_OPTION),
        ("a negative value", Value::from(-1), st::CBOR_UNEXPECTED_TYPE),
        ("text", Value::from("1"), st::CBOR_UNEXPECTED_TYPE),
        ("true", Value::Bool(true), st::CBOR_UNEXPECTED_TYPE),
    ] {
        assert_eq!(make_credential(&mut d, cid, EA_RP, Some(value)).0, want, "{what}");
    }
}

#[test]
fn with_a_pin_enabling_needs_an_acfg_token() {
    for protocol in Protocol::BOTH {
        let (mut d, cid, chain) = capable_device(AuthenticatorConfig::default());
        assert_eq!(pc::set_pin(&mut d, cid, protocol, PIN), st::OK);
        assert_eq!(enable(&mut d, cid, None), st::PUAT_REQUIRED);
        let wrong =
            pc::get_pin_uv_auth_token_with_permissions(&mut d, cid, protocol, PIN, permission::MC, None).unwrap();
        assert_eq!(enable(&mut d, cid, Some(&wrong)), st::PIN_AUTH_INVALID);
        assert_eq!(ep_option(&mut d, cid), Some(false));
        let acfg =
            pc::get_pin_uv_auth_token_with_permissions(&mut d, cid, protocol, PIN, permission::ACFG, None).unwrap();
        assert_eq!(enable(&mut d, cid, Some(&acfg)), st::OK);
        assert_eq!(ep_option(&mut d, cid), Some(true));
        // And the credential itself with an mc token, as a browser sends it.
        let mc = pc::get_pin_uv_auth_token_with_permissions(&mut d, cid, protocol, PIN, permission::MC, Some(EA_RP))
            .unwrap();
        let mut extra = pc::mc_auth(&mc);
        extra.push((0x0A, Value::from(2)));
        let (status, body) =
            d.ctap(cid, command::MAKE_CREDENTIAL, Some(requests::make_credential(EA_RP, b"u", "alice", extra)));
        assert_eq!(status, st::OK);
        assert_enterprise_statement(body.as_ref().unwrap(), &chain);
    }
}

#[test]
fn a_policy_without_the_key_makes_the_enabled_authenticator_incapable_again() {
    let (mut d, cid, _) = capable_device(AuthenticatorConfig::default());
    assert_eq!(enable(&mut d, cid, None), st::OK);
    // The administrator removes [enterprise_attestation] (a reload).
    d.denied_rps.set_enterprise_attestation_capable(false);
    assert_eq!(ep_option(&mut d, cid), None);
    assert_eq!(make_credential(&mut d, cid, EA_RP, Some(1.into())).0, st::INVALID_PARAMETER);
    assert_eq!(enable(&mut d, cid, None), st::INVALID_COMMAND);
    // Back again: still enabled, as the setting was never reset.
    d.denied_rps.set_enterprise_attestation_capable(true);
    assert_eq!(ep_option(&mut d, cid), Some(true));
}
