//! Machine attestation (docs/policy.md, "Machine attestation") through the
//! whole device: packed with the machine's self-signed certificate where
//! `[authenticator] non_web_attestation` (shipped default: machine) or a
//! policy rule grants it, checked as a relying party checks it (pam-u2f
//! 1.1.0's `fido_cred_verify`: the certificate's key signed authData ‖
//! clientDataHash), the certificate checked against WebAuthn §8.2.1 by the
//! policy crate's enterprise-certificate checker; web rp IDs keep self
//! attestation; reset keeps the machine key; a key store without one is a
//! clean refusal.

use ciborium::value::Value;
use fidoseal_ctap::authenticator::{is_non_web_rp_id, AttestationMode, AuthenticatorConfig, FIDOSEAL_AAGUID};
use fidoseal_ctap::platform::{AttestationPolicy, KeyStore, PolicyVerdict};
use fidoseal_ctap::software_keystore::SoftwareKeyStore;
use fidoseal_tests::platform_client::command;
use fidoseal_tests::requests;
use fidoseal_tests::responses::{self, get, get_text};
use fidoseal_tests::status as st;
use fidoseal_tests::Device;
use p256::ecdsa::VerifyingKey;
use x509_cert::der::{Decode, Encode};
use x509_cert::Certificate;

const PAM_RP: &str = "pam://host1";
const SSH_RP: &str = "ssh:";
const WEB_RP: &str = "login.example.com";
const CLIENT_DATA_HASH: [u8; 32] = [0x11; 32];

fn make_credential(d: &mut Device, cid: u32, rp: &str, extra: Vec<(i64, Value)>) -> (u8, Option<Value>) {
    d.ctap(cid, command::MAKE_CREDENTIAL, Some(requests::make_credential(rp, b"u", "alice", extra)))
}

fn x5c(body: &Value) -> Option<Vec<Vec<u8>>> {
    get_text(get(body, 3).expect("attStmt"), "x5c")
        .and_then(Value::as_array)
        .map(|certs| certs.iter().map(|c| c.as_bytes().expect("DER bytes").clone()).collect())
}

/// Verifies a machine attestation as a relying party does and returns its
/// one certificate: packed, ES256, one certificate meeting §8.2.1 that
/// names fidoseal's AAGUID, whose key (not the credential's) signed
/// authData ‖ clientDataHash.
fn machine_certificate(body: &Value) -> Vec<u8> {
    assert_eq!(get(body, 1), Some(&Value::from("packed")));
    let statement = get(body, 3).unwrap();
    assert_eq!(get_text(statement, "alg").and_then(Value::as_integer).map(i128::from), Some(-7));
    let chain = x5c(body).expect("x5c");
    assert_eq!(chain.len(), 1, "one self-signed certificate");
    let aaguid = fidoseal_policy::check_attestation_certificate(&chain[0]).expect("WebAuthn §8.2.1 certificate");
    assert_eq!(aaguid, Some(FIDOSEAL_AAGUID), "the AAGUID extension names fidoseal");
    let cert = Certificate::from_der(&chain[0]).unwrap();
    let spki = cert.tbs_certificate().subject_public_key_info().to_der().unwrap();
    let key = <VerifyingKey as p256::pkcs8::DecodePublicKey>::from_public_key_der(&spki).expect("P-256");
    let auth_data = responses::bytes(get(body, 2));
    let sig = responses::bytes(get_text(statement, "sig"));
    assert!(responses::verify(&key, &auth_data, &CLIENT_DATA_HASH, &sig), "signed by the machine key");
    let credential_key = responses::parse_registration(body).public_key;
    assert!(!responses::verify(&credential_key, &auth_data, &CLIENT_DATA_HASH, &sig), "not by the credential key");
    // Self-signed: the certificate's own key signed its TBS.
    let tbs = cert.tbs_certificate().to_der().unwrap();
    let cert_sig = p256::ecdsa::DerSignature::try_from(cert.signature().raw_bytes()).expect("DER ECDSA");
    use p256::ecdsa::signature::Verifier;
    key.verify(&tbs, &p256::ecdsa::Signature::from_der(cert_sig.as_bytes()).unwrap()).expect("self-signed");
    let subject = cert.tbs_certificate().subject().to_string();
    assert!(subject.contains("OU=Authenticator Attestation"), "{subject}");
    assert!(subject.contains("CN=fidoseal machine attestation"), "{subject}");
    chain[0].clone()
}

/// Packed self attestation: no certificate, the credential key signed.
fn assert_self_attestation(body: &Value) {
    assert_eq!(get(body, 1), Some(&Value::from("packed")));
    assert_eq!(x5c(body), None, "no certificate");
    let auth_data = responses::bytes(get(body, 2));
    let sig = responses::bytes(get_text(get(body, 3).unwrap(), "sig"));
    let credential_key = responses::parse_registration(body).public_key;
    assert!(responses::verify(&credential_key, &auth_data, &CLIENT_DATA_HASH, &sig));
}

#[test]
fn only_pam_and_ssh_rp_ids_are_non_web() {
    for rp in ["pam://host1", "pam://", "ssh:", "ssh:work"] {
        assert!(is_non_web_rp_id(rp), "{rp}");
    }
    for rp in ["login.example.com", "pam.example.com", "ssh.example.com", "https://pam.example/app", "localhost"] {
        assert!(!is_non_web_rp_id(rp), "{rp}");
    }
}

#[test]
fn pam_and_ssh_get_the_machine_certificate_under_the_shipped_default() {
    let mut d = Device::new();
    let cid = d.init();
    let (status, body) = make_credential(&mut d, cid, PAM_RP, vec![]);
    assert_eq!(status, st::OK);
    let first = machine_certificate(&body.unwrap());
    let (status, body) = make_credential(&mut d, cid, SSH_RP, vec![requests::rk()]);
    assert_eq!(status, st::OK);
    assert_eq!(machine_certificate(&body.unwrap()), first, "one certificate per machine");
}

#[test]
fn web_rp_ids_get_self_attestation_under_the_shipped_default() {
    let mut d = Device::new();
    let cid = d.init();
    for rp in [WEB_RP, "pam.example.com", "https://pam.example/app-id.json"] {
        let (status, body) = make_credential(&mut d, cid, rp, vec![]);
        assert_eq!(status, st::OK, "{rp}");
        assert_self_attestation(&body.unwrap());
    }
}

#[test]
fn the_configuration_and_the_policy_decide() {
    // [authenticator] non_web_attestation = "self" / "none": no certificate
    // (pamu2fcfg of pam-u2f 1.1.0 then refuses, as before).
    let config = AuthenticatorConfig { non_web_attestation: AttestationMode::SelfAttestation, ..Default::default() };
    let mut d = Device::with_config(config, 10);
    let cid = d.init();
    assert_self_attestation(&make_credential(&mut d, cid, PAM_RP, vec![]).1.unwrap());
    let config = AuthenticatorConfig { non_web_attestation: AttestationMode::None, ..Default::default() };
    let mut d = Device::with_config(config, 10);
    let cid = d.init();
    let body = make_credential(&mut d, cid, PAM_RP, vec![]).1.unwrap();
    assert_eq!(get(&body, 1), Some(&Value::from("none")));
    assert_eq!(get(&body, 3), Some(&Value::Map(vec![])));

    // A rule's attestation overrides the configuration both ways.
    let mut d = Device::new();
    let cid = d.init();
    let mut verdict = PolicyVerdict::allow("test: self for pam");
    verdict.attestation = Some(AttestationPolicy::SelfAttestation);
    d.denied_rps.set_verdict(PAM_RP, verdict);
    assert_self_attestation(&make_credential(&mut d, cid, PAM_RP, vec![]).1.unwrap());
    let mut verdict = PolicyVerdict::allow("test: none for ssh");
    verdict.attestation = Some(AttestationPolicy::None);
    d.denied_rps.set_verdict(SSH_RP, verdict);
    assert_eq!(get(&make_credential(&mut d, cid, SSH_RP, vec![]).1.unwrap(), 1), Some(&Value::from("none")));
    // An administrator may grant it to a web rp (their choice, documented).
    let mut verdict = PolicyVerdict::allow("test: machine for the intranet");
    verdict.attestation = Some(AttestationPolicy::Machine);
    d.denied_rps.set_verdict(WEB_RP, verdict);
    machine_certificate(&make_credential(&mut d, cid, WEB_RP, vec![]).1.unwrap());
    // A web-wide "machine" configuration, likewise.
    let config = AuthenticatorConfig { attestation: AttestationMode::Machine, ..Default::default() };
    let mut d = Device::with_config(config, 10);
    let cid = d.init();
    machine_certificate(&make_credential(&mut d, cid, WEB_RP, vec![]).1.unwrap());
}

#[test]
fn reset_keeps_the_machine_key() {
    let mut d = Device::new();
    let cid = d.init();
    let before = machine_certificate(&make_credential(&mut d, cid, PAM_RP, vec![]).1.unwrap());
    assert_eq!(d.ctap(cid, command::RESET, None).0, st::OK);
    let after = machine_certificate(&make_credential(&mut d, cid, PAM_RP, vec![]).1.unwrap());
    assert_eq!(before, after, "the machine key names the machine, not its user");
}

/// The software store without its machine attestation methods: what a key
/// store whose machine key is missing or damaged answers.
struct NoMachineKey(SoftwareKeyStore);

impl KeyStore for NoMachineKey {
    fn name(&self) -> &'static str {
        "test"
    }
    fn algorithms(&self) -> Vec<fidoseal_ctap::platform::Algorithm> {
        self.0.algorithms()
    }
    fn generate(
        &mut self,
        algorithm: fidoseal_ctap::platform::Algorithm,
    ) -> Result<fidoseal_ctap::platform::CreatedKey, fidoseal_ctap::platform::KeyStoreError> {
        self.0.generate(algorithm)
    }
    fn sign(
        &mut self,
        algorithm: fidoseal_ctap::platform::Algorithm,
        key_handle: &[u8],
        message: &[u8],
    ) -> Result<Vec<u8>, fidoseal_ctap::platform::KeyStoreError> {
        self.0.sign(algorithm, key_handle, message)
    }
    fn seal_credential_id(
        &mut self,
        rp_id_hash: &[u8; 32],
        payload: &[u8],
    ) -> Result<Vec<u8>, fidoseal_ctap::platform::KeyStoreError> {
        self.0.seal_credential_id(rp_id_hash, payload)
    }
    fn open_credential_id(
        &mut self,
        rp_id_hash: &[u8; 32],
        credential_id: &[u8],
    ) -> Result<Vec<u8>, fidoseal_ctap::platform::KeyStoreError> {
        self.0.open_credential_id(rp_id_hash, credential_id)
    }
    fn create_pin_object(
        &mut self,
        pin_hash: &[u8; 16],
    ) -> Result<Option<Vec<u8>>, fidoseal_ctap::platform::KeyStoreError> {
        self.0.create_pin_object(pin_hash)
    }
    fn check_pin_object(
        &mut self,
        object: &[u8],
        pin_hash: &[u8; 16],
    ) -> Result<fidoseal_ctap::platform::PinCheck, fidoseal_ctap::platform::KeyStoreError> {
        self.0.check_pin_object(object, pin_hash)
    }
    fn derive_secret(
        &mut self,
        context: &[u8],
    ) -> Result<fidoseal_ctap::platform::Secret32, fidoseal_ctap::platform::KeyStoreError> {
        self.0.derive_secret(context)
    }
    fn reset(&mut self) -> Result<(), fidoseal_ctap::platform::KeyStoreError> {
        self.0.reset()
    }
}

#[test]
fn no_machine_key_refuses_the_registration_and_leaves_nothing_behind() {
    let store = NoMachineKey(SoftwareKeyStore::new(SoftwareKeyStore::generate_master_secret().unwrap()));
    let mut d = Device::with_keystore(AuthenticatorConfig::default(), Box::new(store));
    let cid = d.init();
    let (status, body) = make_credential(&mut d, cid, PAM_RP, vec![requests::rk()]);
    assert_eq!(status, 0x7F, "CTAP1_ERR_OTHER, logged");
    assert!(body.is_none());
    let (status, _) = d.ctap(cid, command::GET_ASSERTION, Some(requests::get_assertion(PAM_RP, &[], vec![])));
    assert_eq!(status, st::NO_CREDENTIALS, "no discoverable credential was stored");
    // Web rp IDs (self attestation) are unaffected.
    let (status, body) = make_credential(&mut d, cid, WEB_RP, vec![]);
    assert_eq!(status, st::OK);
    assert_self_attestation(&body.unwrap());
}
