//! In-process harness: a whole fidoseal device (CTAPHID + authenticator)
//! with the software key store, a memory credential store and a scripted
//! prompt, driven packet by packet like a client on hidraw would.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ciborium::value::Value;
use fidoseal_ctap::ctaphid::{self, Action, CtapHid, Packet, BROADCAST_CID};
use fidoseal_ctap::platform::{
    AllowAll, AuthenticatorState, CredentialStore, PolicyDecision, PolicyRequest, PolicyVerdict, PresencePurpose,
    PresenceRequest, PromptOutcome, RelyingParty, ResidentCredential, Secret32, StoreError, TransactionSignals,
    UserPrompt, VerificationOutcome,
};
use fidoseal_ctap::software_keystore::SoftwareKeyStore;
use fidoseal_ctap::{Authenticator, AuthenticatorConfig, Platform, RequestContext};
use fidoseal_store::CredentialDatabase;

pub mod platform_client;
pub mod seeds;

/// What the scripted prompt answers to a verification request.
#[derive(Debug, Clone)]
pub enum ScriptedVerification {
    Verified,
    /// Verified, after the user took this long (reported to the
    /// transaction's signals, as a real prompt's wait is measured).
    VerifiedAfter(Duration),
    Pin(String),
    Failed,
    Refused(PromptOutcome),
}

/// What the scripted prompt was asked: the purpose and the rp ID.
pub type Asked = Arc<Mutex<Vec<(PresencePurpose, Option<String>)>>>;

/// A prompt that answers from a script (then `default`) and records what it
/// was asked. Built-in verification is offered only once `verifications` is
/// `Some`; passkey selection only once `selection` is `Some`.
#[derive(Clone)]
pub struct ScriptedPrompt {
    pub script: Arc<Mutex<VecDeque<PromptOutcome>>>,
    pub default: PromptOutcome,
    pub asked: Asked,
    pub verifications: Arc<Mutex<Option<VecDeque<ScriptedVerification>>>>,
    /// The index the user picks, or the refusal.
    pub selection: Arc<Mutex<Option<Result<usize, PromptOutcome>>>>,
    /// (purpose, accounts offered) of every selection asked.
    pub selections_asked: Arc<Mutex<Vec<Vec<String>>>>,
    /// Purposes of every verification asked, with whether a PIN was available.
    pub verifications_asked: Arc<Mutex<Vec<(PresencePurpose, bool)>>>,
    /// Built-in verification is configured even while it is not offered
    /// (the daemon's uv_methods with no agent in an active session).
    pub verification_configured: Arc<Mutex<bool>>,
}

impl ScriptedPrompt {
    pub fn approving() -> Self {
        Self {
            script: Default::default(),
            default: PromptOutcome::Approved,
            asked: Default::default(),
            verifications: Default::default(),
            selection: Default::default(),
            selections_asked: Default::default(),
            verifications_asked: Default::default(),
            verification_configured: Default::default(),
        }
    }

    /// Offers built-in verification, answering with `answers` in turn.
    pub fn offer_verification(&self, answers: Vec<ScriptedVerification>) {
        *self.verifications.lock().unwrap() = Some(answers.into());
    }

    pub fn offer_selection(&self, answer: Result<usize, PromptOutcome>) {
        *self.selection.lock().unwrap() = Some(answer);
    }

    pub fn push(&self, outcome: PromptOutcome) {
        self.script.lock().unwrap().push_back(outcome);
    }

    pub fn asked(&self) -> Vec<(PresencePurpose, Option<String>)> {
        self.asked.lock().unwrap().clone()
    }
}

impl UserPrompt for ScriptedPrompt {
    fn request_presence(&mut self, request: &PresenceRequest<'_>, _signals: &TransactionSignals) -> PromptOutcome {
        self.asked.lock().unwrap().push((request.purpose, request.rp_id.map(str::to_owned)));
        self.script.lock().unwrap().pop_front().unwrap_or(self.default)
    }

    fn verification_available(&self) -> bool {
        self.verifications.lock().unwrap().is_some()
    }

    fn verification_configured(&self) -> bool {
        *self.verification_configured.lock().unwrap() || self.verification_available()
    }

    fn request_verification(
        &mut self,
        request: &PresenceRequest<'_>,
        pin_available: bool,
        signals: &TransactionSignals,
    ) -> VerificationOutcome {
        self.verifications_asked.lock().unwrap().push((request.purpose, pin_available));
        let answer = self.verifications.lock().unwrap().as_mut().and_then(VecDeque::pop_front);
        match answer {
            Some(ScriptedVerification::Verified) => VerificationOutcome::Verified,
            Some(ScriptedVerification::VerifiedAfter(took)) => {
                signals.add_time_with_user(took);
                VerificationOutcome::Verified
            }
            Some(ScriptedVerification::Pin(pin)) => VerificationOutcome::Pin(pin.into()),
            Some(ScriptedVerification::Failed) => VerificationOutcome::Failed,
            Some(ScriptedVerification::Refused(outcome)) => VerificationOutcome::NotVerified(outcome),
            None => VerificationOutcome::NotVerified(PromptOutcome::Unavailable),
        }
    }

    fn select_credential(
        &mut self,
        _request: &PresenceRequest<'_>,
        accounts: &[String],
        _signals: &TransactionSignals,
    ) -> Option<Result<usize, PromptOutcome>> {
        let answer = *self.selection.lock().unwrap();
        if answer.is_some() {
            self.selections_asked.lock().unwrap().push(accounts.to_vec());
        }
        answer
    }
}

/// A scripted policy: denies the rp IDs in the list, gives the verdicts in
/// `verdicts` to their rp IDs, allows the rest, and demands `min_pin_length`.
#[derive(Clone, Default)]
pub struct DenyList(
    pub Arc<Mutex<Vec<String>>>,
    pub Arc<Mutex<Vec<(String, PolicyVerdict)>>>,
    pub Arc<Mutex<Option<u8>>>,
    /// The policy holds an enterprise attestation key.
    pub Arc<Mutex<bool>>,
);

impl DenyList {
    /// Gives `verdict` to every request for `rp_id`.
    pub fn set_verdict(&self, rp_id: &str, verdict: PolicyVerdict) {
        self.1.lock().unwrap().push((rp_id.to_owned(), verdict));
    }

    pub fn set_min_pin_length(&self, length: u8) {
        *self.2.lock().unwrap() = Some(length);
    }

    pub fn set_enterprise_attestation_capable(&self, capable: bool) {
        *self.3.lock().unwrap() = capable;
    }
}

impl PolicyDecision for DenyList {
    fn decide(&self, request: &PolicyRequest<'_>) -> PolicyVerdict {
        if self.0.lock().unwrap().iter().any(|rp| rp == request.rp_id) {
            return PolicyVerdict::deny("test deny list");
        }
        if let Some((_, verdict)) = self.1.lock().unwrap().iter().find(|(rp, _)| rp == request.rp_id) {
            return verdict.clone();
        }
        AllowAll.decide(request)
    }

    fn min_pin_length(&self) -> Option<u8> {
        *self.2.lock().unwrap()
    }

    fn enterprise_attestation_capable(&self) -> bool {
        *self.3.lock().unwrap()
    }
}

pub fn software_platform(prompt: Box<dyn UserPrompt>, policy: Box<dyn PolicyDecision>, capacity: usize) -> Platform {
    let master = SoftwareKeyStore::generate_master_secret().unwrap_or(Secret32([1; 32]));
    Platform {
        keystore: Box::new(SoftwareKeyStore::new(master)),
        credentials: Box::new(TemporaryDatabase::new(capacity)),
        prompt,
        policy,
    }
}

/// The daemon's credential database (crate `fidoseal-store`) in a
/// directory of its own, removed on drop: the in-process suites run on the
/// store the daemon uses.
pub struct TemporaryDatabase {
    // Closed before its directory goes (fields drop in this order).
    database: Option<CredentialDatabase>,
    dir: tempfile::TempDir,
}

impl TemporaryDatabase {
    pub fn new(capacity: usize) -> Self {
        Self::new_in(&std::env::temp_dir(), capacity)
    }

    /// In a new directory under `parent` (the benchmark uses a tmpfs).
    pub fn new_in(parent: &std::path::Path, capacity: usize) -> Self {
        let dir =
            tempfile::Builder::new().prefix("fidoseal-tests-store-").tempdir_in(parent).expect("a temporary directory");
        let database = CredentialDatabase::open(dir.path(), capacity).expect("a new credential database");
        Self { database: Some(database), dir }
    }

    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }

    fn db(&self) -> &CredentialDatabase {
        self.database.as_ref().expect("open until dropped")
    }

    fn db_mut(&mut self) -> &mut CredentialDatabase {
        self.database.as_mut().expect("open until dropped")
    }
}

impl CredentialStore for TemporaryDatabase {
    fn credentials_for_rp(&self, rp_id_hash: &[u8; 32]) -> Result<Vec<ResidentCredential>, StoreError> {
        self.db().credentials_for_rp(rp_id_hash)
    }
    fn all_credentials(&self) -> Result<Vec<ResidentCredential>, StoreError> {
        self.db().all_credentials()
    }
    fn relying_parties(&self) -> Result<Vec<RelyingParty>, StoreError> {
        self.db().relying_parties()
    }
    fn find(&self, credential_id: &[u8]) -> Result<Option<ResidentCredential>, StoreError> {
        self.db().find(credential_id)
    }
    fn save(&mut self, credential: ResidentCredential) -> Result<(), StoreError> {
        self.db_mut().save(credential)
    }
    fn delete(&mut self, credential_id: &[u8]) -> Result<bool, StoreError> {
        self.db_mut().delete(credential_id)
    }
    fn credential_count(&self) -> usize {
        self.db().credential_count()
    }
    fn remaining_capacity(&self) -> usize {
        self.db().remaining_capacity()
    }
    fn next_creation_order(&self) -> u64 {
        self.db().next_creation_order()
    }
    fn initial_signature_counter(&self) -> u32 {
        self.db().initial_signature_counter()
    }
    fn next_signature_counter(&mut self, credential_id: &[u8]) -> Result<u32, StoreError> {
        self.db_mut().next_signature_counter(credential_id)
    }
    fn load_state(&self) -> AuthenticatorState {
        self.db().load_state()
    }
    fn save_state(&mut self, state: &AuthenticatorState) -> Result<(), StoreError> {
        self.db_mut().save_state(state)
    }
    fn reset(&mut self) -> Result<(), StoreError> {
        self.db_mut().reset()
    }
}

/// A complete device driven synchronously: requests run to completion
/// inside [`Device::send`].
pub struct Device {
    pub hid: CtapHid,
    pub authenticator: Authenticator,
    pub prompt: ScriptedPrompt,
    pub denied_rps: DenyList,
    pub now: Instant,
}

impl Device {
    pub fn new() -> Self {
        Self::with_capacity(50)
    }

    pub fn with_capacity(capacity: usize) -> Self {
        Self::with_config(AuthenticatorConfig::default(), capacity)
    }

    /// A device whose authenticator uses `config` (e.g. "none" attestation).
    pub fn with_config(config: AuthenticatorConfig, capacity: usize) -> Self {
        Self::with_store(config, Box::new(TemporaryDatabase::new(capacity)))
    }

    /// A device over `credentials` (the benchmark compares stores).
    pub fn with_store(config: AuthenticatorConfig, credentials: Box<dyn CredentialStore>) -> Self {
        let prompt = ScriptedPrompt::approving();
        let denied_rps = DenyList::default();
        let now = Instant::now();
        let mut platform = software_platform(Box::new(prompt.clone()), Box::new(denied_rps.clone()), 0);
        platform.credentials = credentials;
        let authenticator = Authenticator::new(config, platform, now);
        let hid = CtapHid::new(authenticator.device_version(), 0x1000);
        Self { hid, authenticator, prompt, denied_rps, now }
    }

    /// A device over the key store `keystore` (a store without a machine
    /// attestation key, a failing one).
    pub fn with_keystore(config: AuthenticatorConfig, keystore: Box<dyn fidoseal_ctap::platform::KeyStore>) -> Self {
        let prompt = ScriptedPrompt::approving();
        let denied_rps = DenyList::default();
        let now = Instant::now();
        let mut platform = software_platform(Box::new(prompt.clone()), Box::new(denied_rps.clone()), 0);
        platform.credentials = Box::new(TemporaryDatabase::new(50));
        platform.keystore = keystore;
        let authenticator = Authenticator::new(config, platform, now);
        let hid = CtapHid::new(authenticator.device_version(), 0x1000);
        Self { hid, authenticator, prompt, denied_rps, now }
    }

    pub fn advance(&mut self, by: Duration) {
        self.now += by;
    }

    /// Feeds one report; runs any complete request at once and returns
    /// every report the device sends in answer.
    pub fn send(&mut self, report: &[u8]) -> Vec<Packet> {
        seeds::record_report(report);
        let actions = self.hid.receive(report, self.now);
        self.run(actions)
    }

    pub fn tick(&mut self) -> Vec<Packet> {
        let actions = self.hid.tick(self.now, ctaphid::KeepaliveStatus::Processing);
        self.run(actions)
    }

    fn run(&mut self, actions: Vec<Action>) -> Vec<Packet> {
        let mut out = Vec::new();
        for action in actions {
            match action {
                Action::Send(p) => out.push(p),
                Action::CancelProcessing => {}
                Action::Process(request) => {
                    seeds::record_request(&request);
                    let signals = TransactionSignals::new();
                    let ctx = RequestContext { now: self.now, channel: request.cid, signals: &signals };
                    let response = match request.kind {
                        ctaphid::RequestKind::Cbor => self.authenticator.process_cbor(&request.payload, &ctx),
                        ctaphid::RequestKind::Msg => self.authenticator.process_apdu(&request.payload, &ctx),
                    };
                    out.extend(self.hid.complete(request.cid, &response));
                }
            }
        }
        out
    }

    /// Sends a whole message and returns the reassembled answer.
    pub fn transact(&mut self, cid: u32, cmd: u8, payload: &[u8]) -> (u32, u8, Vec<u8>) {
        let mut answer = Vec::new();
        for packet in ctaphid::frame(cid, cmd, payload) {
            answer.extend(self.send(&packet));
        }
        ctaphid::unframe(&answer).expect("a well-framed answer")
    }

    /// Allocates a channel through INIT on the broadcast channel.
    pub fn init(&mut self) -> u32 {
        let nonce = [1, 2, 3, 4, 5, 6, 7, 8];
        let (cid, cmd, data) = self.transact(BROADCAST_CID, ctaphid::command::INIT, &nonce);
        assert_eq!((cid, cmd), (BROADCAST_CID, ctaphid::command::INIT));
        assert_eq!(&data[..8], &nonce);
        u32::from_be_bytes([data[8], data[9], data[10], data[11]])
    }

    /// Sends a CTAP2 command; returns the status byte and the decoded body.
    pub fn ctap(&mut self, cid: u32, command: u8, params: Option<Value>) -> (u8, Option<Value>) {
        let mut message = vec![command];
        if let Some(p) = params {
            ciborium::ser::into_writer(&p, &mut message).unwrap();
        }
        self.ctap_raw(cid, &message)
    }

    pub fn ctap_raw(&mut self, cid: u32, message: &[u8]) -> (u8, Option<Value>) {
        let (_, cmd, data) = self.transact(cid, ctaphid::command::CBOR, message);
        assert_eq!(cmd, ctaphid::command::CBOR, "answer is CTAPHID_CBOR");
        let body = (data.len() > 1).then(|| ciborium::de::from_reader(&data[1..]).expect("response CBOR"));
        (data[0], body)
    }
}

impl Default for Device {
    fn default() -> Self {
        Self::new()
    }
}

/// Builders for CTAP2 request maps.
/// CTAP status bytes (CTAP 2.1 §8.2), spelled out rather than taken from
/// the crate under test, for the tests' expectations.
pub mod status {
    pub const OK: u8 = 0x00;
    pub const INVALID_COMMAND: u8 = 0x01;
    pub const INVALID_PARAMETER: u8 = 0x02;
    pub const INVALID_LENGTH: u8 = 0x03;
    pub const INVALID_SEQ: u8 = 0x04;
    pub const CBOR_UNEXPECTED_TYPE: u8 = 0x11;
    pub const INVALID_CBOR: u8 = 0x12;
    pub const MISSING_PARAMETER: u8 = 0x14;
    pub const LARGE_BLOB_STORAGE_FULL: u8 = 0x18;
    pub const CREDENTIAL_EXCLUDED: u8 = 0x19;
    pub const UNSUPPORTED_ALGORITHM: u8 = 0x26;
    pub const OPERATION_DENIED: u8 = 0x27;
    pub const KEY_STORE_FULL: u8 = 0x28;
    pub const UNSUPPORTED_OPTION: u8 = 0x2B;
    pub const INVALID_OPTION: u8 = 0x2C;
    pub const KEEPALIVE_CANCEL: u8 = 0x2D;
    pub const NO_CREDENTIALS: u8 = 0x2E;
    pub const USER_ACTION_TIMEOUT: u8 = 0x2F;
    pub const NOT_ALLOWED: u8 = 0x30;
    pub const PIN_INVALID: u8 = 0x31;
    pub const PIN_BLOCKED: u8 = 0x32;
    pub const PIN_AUTH_INVALID: u8 = 0x33;
    pub const PIN_AUTH_BLOCKED: u8 = 0x34;
    pub const PIN_NOT_SET: u8 = 0x35;
    pub const PUAT_REQUIRED: u8 = 0x36;
    pub const PIN_POLICY_VIOLATION: u8 = 0x37;
    pub const UV_BLOCKED: u8 = 0x3C;
    pub const INTEGRITY_FAILURE: u8 = 0x3D;
    pub const INVALID_SUBCOMMAND: u8 = 0x3E;
    pub const UV_INVALID: u8 = 0x3F;
    pub const UNAUTHORIZED_PERMISSION: u8 = 0x40;
}

pub mod requests {
    use ciborium::value::Value;

    pub fn text_map(entries: &[(&str, Value)]) -> Value {
        Value::Map(entries.iter().map(|(k, v)| (Value::from(*k), v.clone())).collect())
    }

    pub fn int_map(entries: Vec<(i64, Value)>) -> Value {
        Value::Map(entries.into_iter().map(|(k, v)| (Value::from(k), v)).collect())
    }

    pub fn es256() -> Value {
        Value::Array(vec![text_map(&[("alg", Value::from(-7)), ("type", Value::from("public-key"))])])
    }

    pub fn descriptor(id: &[u8]) -> Value {
        text_map(&[("id", Value::Bytes(id.to_vec())), ("type", Value::from("public-key"))])
    }

    /// A makeCredential parameter map; `extra` entries are appended.
    pub fn make_credential(rp: &str, user_id: &[u8], user_name: &str, extra: Vec<(i64, Value)>) -> Value {
        let mut entries = vec![
            (1, Value::Bytes(vec![0x11; 32])),
            (2, text_map(&[("id", Value::from(rp)), ("name", Value::from("Example"))])),
            (3, text_map(&[("id", Value::Bytes(user_id.to_vec())), ("name", Value::from(user_name))])),
            (4, es256()),
        ];
        entries.extend(extra);
        int_map(entries)
    }

    pub fn rk() -> (i64, Value) {
        (7, text_map(&[("rk", Value::Bool(true))]))
    }

    pub fn get_assertion(rp: &str, allow: &[&[u8]], extra: Vec<(i64, Value)>) -> Value {
        let mut entries = vec![(1, Value::from(rp)), (2, Value::Bytes(vec![0x22; 32]))];
        if !allow.is_empty() {
            entries.push((3, Value::Array(allow.iter().map(|id| descriptor(id)).collect())));
        }
        entries.extend(extra);
        int_map(entries)
    }
}

/// Reading CTAP2 responses.
pub mod responses {
    use ciborium::value::Value;
    use p256::ecdsa::signature::Verifier;
    use p256::ecdsa::{Signature, VerifyingKey};

    pub fn get(map: &Value, key: i64) -> Option<&Value> {
        map.as_map()?.iter().find(|(k, _)| k == &Value::from(key)).map(|(_, v)| v)
    }

    pub fn get_text<'a>(map: &'a Value, key: &str) -> Option<&'a Value> {
        map.as_map()?.iter().find(|(k, _)| k == &Value::from(key)).map(|(_, v)| v)
    }

    pub fn bytes(v: Option<&Value>) -> Vec<u8> {
        v.and_then(Value::as_bytes).cloned().expect("a byte string")
    }

    /// A registered credential, parsed from makeCredential's authData.
    pub struct Registered {
        pub credential_id: Vec<u8>,
        pub public_key: VerifyingKey,
        pub auth_data: Vec<u8>,
    }

    /// The credential ID and COSE key (any algorithm) of makeCredential's
    /// attested credential data (WebAuthn §6.5.1).
    pub fn attested_credential(response: &Value) -> (Vec<u8>, Value) {
        let auth_data = bytes(get(response, 2));
        let len = usize::from(u16::from_be_bytes([auth_data[53], auth_data[54]]));
        let credential_id = auth_data[55..55 + len].to_vec();
        let cose: Value = ciborium::de::from_reader(&auth_data[55 + len..]).expect("COSE key");
        (credential_id, cose)
    }

    pub fn parse_registration(response: &Value) -> Registered {
        let auth_data = bytes(get(response, 2));
        let (credential_id, cose) = attested_credential(response);
        let x = bytes(get(&cose, -2));
        let y = bytes(get(&cose, -3));
        let mut sec1 = vec![4u8];
        sec1.extend(x);
        sec1.extend(y);
        let public_key = VerifyingKey::from_sec1_bytes(&sec1).expect("P-256 point");
        Registered { credential_id, public_key, auth_data }
    }

    /// Checks an ES256 signature over authData ‖ clientDataHash.
    pub fn verify(key: &VerifyingKey, auth_data: &[u8], client_data_hash: &[u8], der: &[u8]) -> bool {
        let mut signed = auth_data.to_vec();
        signed.extend_from_slice(client_data_hash);
        Signature::from_der(der).is_ok_and(|sig| key.verify(&signed, &sig).is_ok())
    }
}
