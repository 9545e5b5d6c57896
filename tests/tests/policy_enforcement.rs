//! What the CTAP core does with a policy verdict: every requirement is
//! enforced before any key is used, and a refusal says nothing more than a
//! real key's refusal would.

use std::time::Duration;

use ciborium::value::Value;
use fidoseal_ctap::platform::{AttestationPolicy, PolicyVerdict, PresencePurpose};
use fidoseal_tests::requests::{self, text_map};
use fidoseal_tests::status::{OPERATION_DENIED, PUAT_REQUIRED};
use fidoseal_tests::{responses, Device};

fn verdict(change: impl FnOnce(&mut PolicyVerdict)) -> PolicyVerdict {
    let mut v = PolicyVerdict::allow("test rule");
    change(&mut v);
    v
}

#[test]
fn require_user_verification_refuses_requests_without_uv_before_any_prompt() {
    let mut d = Device::new();
    let cid = d.init();
    // A credential made before the rule existed.
    let (status, body) = d.ctap(cid, 0x01, Some(requests::make_credential("uv.example", b"u", "u", vec![])));
    assert_eq!(status, 0);
    let id = responses::parse_registration(body.as_ref().unwrap()).credential_id;
    d.denied_rps.set_verdict("uv.example", verdict(|v| v.require_user_verification = true));
    let asked = d.prompt.asked().len();
    let (status, _) = d.ctap(cid, 0x01, Some(requests::make_credential("uv.example", b"u2", "u2", vec![])));
    assert_eq!(status, PUAT_REQUIRED);
    let (status, _) = d.ctap(cid, 0x02, Some(requests::get_assertion("uv.example", &[&id], vec![])));
    assert_eq!(status, PUAT_REQUIRED);
    assert_eq!(d.prompt.asked().len(), asked, "refused before anyone was asked");
}

#[test]
fn forbidden_discoverable_credentials_are_operation_denied() {
    let mut d = Device::new();
    let cid = d.init();
    let (status, _) = d.ctap(cid, 0x01, Some(requests::make_credential("rk.example", b"u", "u", vec![requests::rk()])));
    assert_eq!(status, 0);
    d.denied_rps.set_verdict("rk.example", verdict(|v| v.allow_discoverable = false));
    let (status, _) = d.ctap(cid, 0x01, Some(requests::make_credential("rk.example", b"v", "v", vec![requests::rk()])));
    assert_eq!(status, OPERATION_DENIED);
    // Discovery of the existing passkey is refused too; a non-discoverable credential is fine.
    let (status, _) = d.ctap(cid, 0x02, Some(requests::get_assertion("rk.example", &[], vec![])));
    assert_eq!(status, OPERATION_DENIED);
    let (status, _) = d.ctap(cid, 0x01, Some(requests::make_credential("rk.example", b"w", "w", vec![])));
    assert_eq!(status, 0);
}

#[test]
fn min_cred_protect_raises_the_level_and_reports_it() {
    let mut d = Device::new();
    let cid = d.init();
    d.denied_rps.set_verdict("cp.example", verdict(|v| v.min_cred_protect = 3));
    let (status, body) =
        d.ctap(cid, 0x01, Some(requests::make_credential("cp.example", b"u", "u", vec![requests::rk()])));
    assert_eq!(status, 0);
    let auth_data = responses::bytes(responses::get(body.as_ref().unwrap(), 2));
    assert_eq!(auth_data[32] & 0x80, 0x80, "extension data present");
    let len = usize::from(u16::from_be_bytes([auth_data[53], auth_data[54]]));
    let mut rest = &auth_data[55 + len..];
    let _cose: Value = ciborium::de::from_reader(&mut rest).unwrap();
    let extensions: Value = ciborium::de::from_reader(rest).unwrap();
    assert_eq!(responses::get_text(&extensions, "credProtect"), Some(&Value::from(3)));
    // Level 3: invisible without UV, even to discovery.
    let (status, _) = d.ctap(cid, 0x02, Some(requests::get_assertion("cp.example", &[], vec![])));
    assert_eq!(status, 0x2E);
}

#[test]
fn attestation_override_and_prompt_details_reach_their_places() {
    let mut d = Device::new();
    let cid = d.init();
    d.denied_rps.set_verdict(
        "att.example",
        verdict(|v| {
            v.attestation = Some(AttestationPolicy::None);
            v.prompt_message = Some("Managed by Example IT".into());
            v.prompt_timeout = Some(Duration::from_secs(5));
        }),
    );
    let (status, body) = d.ctap(cid, 0x01, Some(requests::make_credential("att.example", b"u", "u", vec![])));
    assert_eq!(status, 0);
    let body = body.unwrap();
    assert_eq!(responses::get(&body, 1), Some(&Value::from("none")));
    assert_eq!(responses::get(&body, 3), Some(&text_map(&[])));
    let (status, body) = d.ctap(cid, 0x01, Some(requests::make_credential("other.example", b"u", "u", vec![])));
    assert_eq!(status, 0);
    assert_eq!(responses::get(body.as_ref().unwrap(), 1), Some(&Value::from("packed")));
    assert!(d
        .prompt
        .asked()
        .iter()
        .any(|(p, rp)| *p == PresencePurpose::Register && rp.as_deref() == Some("att.example")));
}

#[test]
fn denied_rp_never_learns_that_an_excluded_credential_exists() {
    let mut d = Device::new();
    let cid = d.init();
    let (status, body) = d.ctap(cid, 0x01, Some(requests::make_credential("ex.example", b"u", "u", vec![])));
    assert_eq!(status, 0);
    let id = responses::parse_registration(body.as_ref().unwrap()).credential_id;
    d.denied_rps.0.lock().unwrap().push("ex.example".into());
    let asked = d.prompt.asked().len();
    let exclude = (5, Value::Array(vec![requests::descriptor(&id)]));
    let (status, _) = d.ctap(cid, 0x01, Some(requests::make_credential("ex.example", b"u", "u", vec![exclude])));
    assert_eq!(status, OPERATION_DENIED, "not CREDENTIAL_EXCLUDED");
    assert_eq!(d.prompt.asked().len(), asked);
}

#[test]
fn policy_minimum_pin_length_applies_to_new_pins_and_shows_in_get_info() {
    use fidoseal_tests::platform_client as pc;
    let mut d = Device::new();
    let cid = d.init();
    d.denied_rps.set_min_pin_length(6);
    let (_, info) = d.ctap(cid, 0x04, None);
    assert_eq!(responses::get(info.as_ref().unwrap(), 0x0D), Some(&Value::from(6)));
    assert_eq!(pc::set_pin(&mut d, cid, pc::Protocol::Two, "12345"), 0x37, "PIN_POLICY_VIOLATION");
    assert_eq!(pc::set_pin(&mut d, cid, pc::Protocol::Two, "123456"), 0x00);
}

#[test]
fn a_pin_shorter_than_a_raised_policy_minimum_must_change() {
    use fidoseal_tests::platform_client as pc;
    let mut d = Device::new();
    let cid = d.init();
    assert_eq!(pc::set_pin(&mut d, cid, pc::Protocol::Two, "1234"), 0x00);
    assert!(pc::get_pin_token(&mut d, cid, pc::Protocol::Two, "1234").is_ok());
    d.denied_rps.set_min_pin_length(6);
    let (_, info) = d.ctap(cid, 0x04, None);
    assert_eq!(responses::get(info.as_ref().unwrap(), 0x0C), Some(&Value::Bool(true)), "forcePINChange");
    assert_eq!(pc::get_pin_token(&mut d, cid, pc::Protocol::Two, "1234").err(), Some(0x31));
    assert_eq!(pc::change_pin(&mut d, cid, pc::Protocol::Two, "1234", "12345"), 0x37);
    assert_eq!(pc::change_pin(&mut d, cid, pc::Protocol::Two, "1234", "123456"), 0x00);
    assert!(pc::get_pin_token(&mut d, cid, pc::Protocol::Two, "123456").is_ok());
}

#[test]
fn a_denied_rp_is_refused_before_any_credential_is_looked_up() {
    let mut d = Device::new();
    let cid = d.init();
    d.denied_rps.0.lock().unwrap().push("nothing.example".into());
    // No credential exists: still OPERATION_DENIED, never NO_CREDENTIALS.
    let (status, _) = d.ctap(cid, 0x02, Some(requests::get_assertion("nothing.example", &[], vec![])));
    assert_eq!(status, OPERATION_DENIED);
    let (status, _) = d.ctap(cid, 0x02, Some(requests::get_assertion("nothing.example", &[&[7u8; 90]], vec![])));
    assert_eq!(status, OPERATION_DENIED);
}

/// A browser asks for a token through built-in UV before it registers or
/// signs in (getPinUvAuthTokenUsingUvWithPermissions with the rp ID): for an
/// rp the policy refuses, nobody is asked for their password or
/// fingerprint — OPERATION_DENIED at once, as the request itself would get.
#[test]
fn a_uv_token_for_a_denied_rp_is_refused_before_the_user_is_asked() {
    use fidoseal_tests::platform_client::{self as pc, Protocol};
    use fidoseal_tests::ScriptedVerification as V;
    let mut d = Device::new();
    let cid = d.init();
    d.prompt.offer_verification(vec![V::Verified, V::Verified]);
    d.denied_rps.0.lock().unwrap().push("blocked.example".into());
    for permissions in [0x01, 0x02, 0x03] {
        let ss = pc::key_agreement(&mut d, cid, Protocol::Two);
        let refused =
            pc::request_token(&mut d, cid, &ss, pc::uv_token_request(&ss, permissions, Some("blocked.example")));
        assert_eq!(refused.err(), Some(OPERATION_DENIED), "permissions {permissions:#04x}");
    }
    assert!(d.prompt.verifications_asked.lock().unwrap().is_empty(), "the user was asked for a refused rp");
    // An allowed rp, and a token without an rp (credential management), still verify.
    let ss = pc::key_agreement(&mut d, cid, Protocol::Two);
    assert!(pc::request_token(&mut d, cid, &ss, pc::uv_token_request(&ss, 0x01, Some("fine.example"))).is_ok());
    assert_eq!(d.prompt.verifications_asked.lock().unwrap().len(), 1);
}

// ---------------------------------------------------------------------------
// CTAP1 and CTAP2 requests reach the policy told apart

/// A policy that records every request it is asked about.
#[derive(Clone, Default)]
struct Recording(std::sync::Arc<std::sync::Mutex<Vec<(String, bool)>>>);

impl fidoseal_ctap::platform::PolicyDecision for Recording {
    fn decide(&self, request: &fidoseal_ctap::platform::PolicyRequest<'_>) -> PolicyVerdict {
        self.0.lock().unwrap().push((request.rp_id.to_owned(), request.ctap1));
        PolicyVerdict::allow("recorded")
    }
}

/// The real policy crate behind the core, mapped the way fidoseald maps it.
struct RealPolicy(fidoseal_policy::Policy, Option<std::sync::Arc<fidoseal_ctap::platform::EnterpriseAttestationKey>>);

impl fidoseal_ctap::platform::PolicyDecision for RealPolicy {
    fn decide(&self, request: &fidoseal_ctap::platform::PolicyRequest<'_>) -> PolicyVerdict {
        use fidoseal_policy::{Action, Attestation, Operation as PolicyOperation, Principal, Request};
        let operation = match request.operation {
            fidoseal_ctap::platform::Operation::MakeCredential => PolicyOperation::MakeCredential,
            fidoseal_ctap::platform::Operation::GetAssertion => PolicyOperation::GetAssertion,
            fidoseal_ctap::platform::Operation::Reset => return PolicyVerdict::allow("reset"),
        };
        let principal = Principal::default();
        let d =
            self.0.evaluate(&Request { rp_id: request.rp_id, operation, principal: &principal, ctap1: request.ctap1 });
        if d.action == Action::Deny {
            return PolicyVerdict::deny(d.rule_id);
        }
        verdict(|v| {
            v.rule = d.rule_id.to_string();
            v.attestation = match d.settings.attestation {
                Some(Attestation::Enterprise) => self.1.clone().map(AttestationPolicy::Enterprise),
                Some(Attestation::None) => Some(AttestationPolicy::None),
                Some(Attestation::SelfAttestation) => Some(AttestationPolicy::SelfAttestation),
                Some(Attestation::Machine) => Some(AttestationPolicy::Machine),
                None => None,
            };
        })
    }

    fn enterprise_attestation_capable(&self) -> bool {
        self.1.is_some()
    }
}

fn device_with_policy(policy: Box<dyn fidoseal_ctap::platform::PolicyDecision>) -> (Device, u32) {
    let mut d = Device::new();
    let prompt = Box::new(d.prompt.clone());
    d.authenticator = fidoseal_ctap::Authenticator::new(
        fidoseal_ctap::AuthenticatorConfig::default(),
        fidoseal_tests::software_platform(prompt, policy, 10),
        d.now,
    );
    let cid = d.init();
    (d, cid)
}

fn sha256_hex(text: &str) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(text.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

/// U2F_REGISTER for `app_id`; returns the status word.
fn u2f_register(d: &mut Device, cid: u32, app_id: &str) -> u16 {
    use sha2::{Digest, Sha256};
    let mut apdu = vec![0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 64];
    apdu.extend_from_slice(&[0x22; 32]);
    apdu.extend_from_slice(&Sha256::digest(app_id.as_bytes()));
    apdu.extend_from_slice(&[0x00, 0x00]);
    let (_, _, answer) = d.transact(cid, fidoseal_ctap::ctaphid::command::MSG, &apdu);
    u16::from_be_bytes([answer[answer.len() - 2], answer[answer.len() - 1]])
}

#[test]
fn the_policy_is_told_which_requests_are_ctap1() {
    let recording = Recording::default();
    let (mut d, cid) = device_with_policy(Box::new(recording.clone()));
    assert_eq!(u2f_register(&mut d, cid, "u2f.example"), 0x9000);
    let hash = sha256_hex("u2f.example");
    let (status, _) = d.ctap(cid, 0x01, Some(requests::make_credential(&hash, b"u", "u", vec![])));
    assert_eq!(status, 0);
    assert_eq!(*recording.0.lock().unwrap(), [(hash.clone(), true), (hash, false)]);
}

/// A CTAP2 rp.id of 64 hex digits equal to SHA-256 of an allowed rp is not
/// that rp: under default-deny it is refused, and it never gets the
/// allowed rp's enterprise attestation; U2F for the allowed rp still works.
#[test]
fn a_ctap2_rp_id_that_is_the_hash_of_an_allowed_rp_is_not_that_rp() {
    use fidoseal_tests::platform_client::{self as pc, config_subcommand, permission, Protocol};
    let (key, policy) = enterprise_policy();
    let (mut d, cid) = device_with_policy(Box::new(RealPolicy(policy, Some(key))));
    // U2F names the rp by hash: that is how U2F for the rp is allowed
    // (registration first: a key with a PIN refuses U2F registration).
    for name in [EA_RP, &format!("https://{EA_RP}")] {
        assert_eq!(u2f_register(&mut d, cid, name), 0x9000, "U2F {name}");
    }
    assert_eq!(u2f_register(&mut d, cid, "other.example"), 0x6985, "default deny");
    assert_eq!(pc::set_pin(&mut d, cid, Protocol::Two, "123456"), 0);
    let t = token(&mut d, cid, permission::ACFG);
    let enable = pc::config_request(Some(&t), config_subcommand::ENABLE_ENTERPRISE_ATTESTATION, None);
    assert_eq!(d.ctap(cid, 0x0D, Some(enable)).0, 0);

    for name in [EA_RP, &format!("https://{EA_RP}")] {
        let hash = sha256_hex(name);
        let t = token(&mut d, cid, permission::MC);
        let mut extra = pc::mc_auth(&t);
        extra.push((0x0A, Value::from(1)));
        let (status, _) = d.ctap(cid, 0x01, Some(requests::make_credential(&hash, b"u", "u", extra)));
        assert_eq!(status, OPERATION_DENIED, "CTAP2 rp.id {hash} (SHA-256 of {name})");
    }
    // The rp itself gets its enterprise attestation.
    let t = token(&mut d, cid, permission::MC);
    let mut extra = pc::mc_auth(&t);
    extra.push((0x0A, Value::from(1)));
    let (status, body) = d.ctap(cid, 0x01, Some(requests::make_credential(EA_RP, b"u", "u", extra)));
    assert_eq!(status, 0);
    assert_eq!(responses::get(body.as_ref().unwrap(), 4), Some(&Value::Bool(true)), "epAtt");
}

const EA_RP: &str = "idp.example.com";

fn token(d: &mut Device, cid: u32, permissions: u8) -> fidoseal_tests::platform_client::PinToken {
    use fidoseal_tests::platform_client::{self as pc, Protocol};
    pc::get_pin_uv_auth_token_with_permissions(d, cid, Protocol::Two, "123456", permissions, None).unwrap()
}

/// The policy crate's enterprise test key behind a default-deny policy
/// that allows [`EA_RP`] with enterprise attestation.
fn enterprise_policy() -> (std::sync::Arc<fidoseal_ctap::platform::EnterpriseAttestationKey>, fidoseal_policy::Policy) {
    use std::os::unix::fs::PermissionsExt;
    let data = |name: &str| {
        std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../policy/tests/data/enterprise").join(name)
    };
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("attestation.key");
    std::fs::copy(data("attestation-sec1.key"), &key).unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let text = format!(
        "[default]\naction = \"deny\"\n\
         [enterprise_attestation]\nrp_ids = [\"{EA_RP}\"]\nkey = {:?}\ncertificates = [{:?}]\n\
         [[rule]]\nrp = [\"{EA_RP}\"]\naction = \"allow\"\nattestation = \"enterprise\"\n",
        key.display().to_string(),
        data("attestation.pem").display().to_string(),
    );
    let policy = fidoseal_policy::Policy::from_sources(&[("/p/50.toml", text.as_str())]).expect("valid test policy");
    let ea = policy.enterprise_attestation().unwrap().clone();
    let key =
        fidoseal_ctap::platform::EnterpriseAttestationKey::new(ea.signing_key().clone(), ea.certificates().to_vec());
    (std::sync::Arc::new(key), policy)
}
