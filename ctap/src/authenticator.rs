//! The authenticator: CTAP2 command dispatch (CTAP 2.1 §6) over the
//! platform traits, plus the commands small enough to live beside it
//! (getInfo, reset, selection). makeCredential and getAssertion have files
//! of their own.

use std::time::{Duration, Instant};

use ciborium::value::Value;

use crate::audit::{AuditDecision, AuditEvent, AuditKind};
use crate::cbor::{self, MapBuilder};
use crate::client_pin::{ClientPin, PersistentToken};
use crate::command::Command;
use crate::config_command::MAX_RP_IDS_FOR_SET_MIN_PIN_LENGTH;
use crate::ctaphid::{capability, DeviceVersion, ADVERTISED_MAX_MSG_SIZE};
use crate::large_blobs::MAX_SERIALIZED_LARGE_BLOB_ARRAY;
use crate::pending::Pending;
use crate::pin_protocol::PinUvAuthProtocol;
use crate::platform::{
    AuthenticatorState, CredentialStore, KeyStore, Operation, PolicyDecision, PolicyRequest, PolicyVerdict,
    PresencePurpose, PresenceRequest, PromptOutcome, TransactionSignals, UserPrompt,
};
use crate::request::PinUvAuth;
use crate::status::{CtapResult, StatusCode};

/// CTAP2 command bytes (§6).
pub mod command {
    pub const MAKE_CREDENTIAL: u8 = 0x01;
    pub const GET_ASSERTION: u8 = 0x02;
    pub const GET_INFO: u8 = 0x04;
    pub const CLIENT_PIN: u8 = 0x06;
    pub const RESET: u8 = 0x07;
    pub const GET_NEXT_ASSERTION: u8 = 0x08;
    pub const CREDENTIAL_MANAGEMENT: u8 = 0x0A;
    /// The FIDO_2_1_PRE command byte of credential management, which
    /// libfido2 1.12 and OpenSSH still send (CTAP 2.1 §6.8, "credentialMgmtPreview").
    pub const CREDENTIAL_MANAGEMENT_PREVIEW: u8 = 0x41;
    pub const SELECTION: u8 = 0x0B;
    pub const LARGE_BLOBS: u8 = 0x0C;
    pub const CONFIG: u8 = 0x0D;
}

/// authenticatorReset is only honoured this soon after power-up (§6.6).
pub const RESET_WINDOW: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttestationMode {
    /// "packed" self attestation: signed by the credential's own key.
    SelfAttestation,
    /// "none".
    None,
    /// "packed" with the machine attestation certificate (`x5c`).
    Machine,
}

#[derive(Debug, Clone)]
pub struct AuthenticatorConfig {
    pub aaguid: [u8; 16],
    pub firmware_version: u32,
    /// The attestation of web relying parties (rp IDs that are domains)
    /// where the policy sets none.
    pub attestation: AttestationMode,
    /// The attestation of relying parties that are not web origins
    /// (pam_u2f's `pam://…`, OpenSSH's `ssh:…`; [`is_non_web_rp_id`]) where
    /// the policy sets none.
    pub non_web_attestation: AttestationMode,
}

/// rp IDs that no web origin can claim: pam_u2f's default `pam://host` and
/// OpenSSH's `ssh:` application strings. A browser only sends rp IDs that
/// are domains (WebAuthn §5.1.3: an rp ID is a valid domain string), so a
/// web relying party can never be taken for one of these.
pub fn is_non_web_rp_id(rp_id: &str) -> bool {
    rp_id.starts_with("pam://") || rp_id.starts_with("ssh:")
}

/// fidoseal's AAGUID: identifies the model, the same on every machine.
pub const FIDOSEAL_AAGUID: [u8; 16] =
    [0x5a, 0x0e, 0x3c, 0x1f, 0x8b, 0x47, 0x4d, 0x52, 0x9e, 0x61, 0x2c, 0xf0, 0x7d, 0x13, 0xa8, 0x46];

impl Default for AuthenticatorConfig {
    fn default() -> Self {
        Self {
            aaguid: FIDOSEAL_AAGUID,
            firmware_version: 1,
            attestation: AttestationMode::SelfAttestation,
            non_web_attestation: AttestationMode::Machine,
        }
    }
}

/// What the authenticator is plugged into.
pub struct Platform {
    pub keystore: Box<dyn KeyStore>,
    pub credentials: Box<dyn CredentialStore>,
    pub prompt: Box<dyn UserPrompt>,
    pub policy: Box<dyn PolicyDecision>,
}

/// Per-request facts from the transport.
pub struct RequestContext<'a> {
    /// When the request arrived.
    pub now: Instant,
    /// The CTAPHID channel the request came on.
    pub channel: u32,
    pub signals: &'a TransactionSignals,
}

impl RequestContext<'_> {
    /// The request's arrival plus the time it has waited for the user: when
    /// the timers that start with the user's action start (a token's
    /// userPresent, §6.5.2.1; getNextAssertion's 30 s, §6.3). A password
    /// typed in 35 s must not have used up a 30-second window.
    pub fn after_user(&self) -> Instant {
        self.now + self.signals.time_with_user()
    }
}

/// Largest credBlob stored (§12.2 maxCredBlobLength; at least 32).
pub const MAX_CRED_BLOB_LENGTH: usize = 32;
/// getInfo's maxCredentialCountInList: clients split longer allow and
/// exclude lists into batches of this many, so that a batch of the longest
/// IDs (4 × (255 + 24 bytes of descriptor)) and a full request around it fit
/// in maxMsgSize ([`ADVERTISED_MAX_MSG_SIZE`]). Longer lists are still read.
pub const MAX_CREDENTIAL_COUNT_IN_LIST: usize = 4;
/// getInfo's attestationFormats (CTAP 2.2 §6.4, 0x16): the statement
/// formats makeCredential can return, the default first;
/// attestationFormatsPreference picks among them (§6.1.2).
pub const ATTESTATION_FORMATS: [&str; 2] = ["packed", "none"];
/// getInfo's maxPINLength (CTAP 2.2 §6.4, 0x1D): a padded PIN is 64 bytes,
/// so a PIN is at most 63 bytes, and so at most 63 code points.
pub const MAX_PIN_LENGTH: usize = 63;

pub struct Authenticator {
    pub(crate) config: AuthenticatorConfig,
    pub(crate) platform: Platform,
    /// When the device was (re)created: "power-up" for the reset window.
    power_up: Instant,
    /// The operation that spans requests, if one is under way (pending.rs).
    pub(crate) pending: Option<Pending>,
    /// Persistent settings, as last stored through the credential store.
    pub(crate) state: AuthenticatorState,
    /// PIN state that a power cycle resets.
    pub(crate) client_pin: ClientPin,
    /// The persistentPinUvAuthToken, which a power cycle keeps (client_pin.rs).
    pub(crate) persistent_token: Option<PersistentToken>,
    /// Audit events not yet taken by the platform ([`Self::take_audit_events`]).
    audit: Vec<AuditEvent>,
}

/// Audit events kept for the platform at most: a platform that never takes
/// them (tests, tools) keeps the newest this many.
const MAX_PENDING_AUDIT_EVENTS: usize = 256;

impl Authenticator {
    /// A freshly powered-up authenticator; fails only if the operating
    /// system cannot provide random numbers for the PIN key agreement key,
    /// in which case no key can work (the daemon refuses to start).
    pub fn try_new(config: AuthenticatorConfig, platform: Platform, power_up: Instant) -> CtapResult<Self> {
        let state = platform.credentials.load_state();
        let client_pin = ClientPin::new()?;
        Ok(Self {
            config,
            platform,
            power_up,
            pending: None,
            state,
            client_pin,
            persistent_token: None,
            audit: Vec::new(),
        })
    }

    /// [`Authenticator::try_new`] for tests and tools, where a machine without
    /// random numbers may panic.
    pub fn new(config: AuthenticatorConfig, platform: Platform, power_up: Instant) -> Self {
        Self::try_new(config, platform, power_up).expect("the operating system's random number generator failed")
    }

    /// A re-plug: what a real key forgets when it loses power (the PIN
    /// mismatch count, the key agreement key, the pinUvAuthToken, pending
    /// state), and the start of a new reset window. The persistent token
    /// stays: surviving this is what it is for (CTAP 2.2 §6.5.2.1).
    pub fn power_cycle(&mut self, now: Instant) -> CtapResult<()> {
        self.client_pin = ClientPin::new()?;
        self.power_up = now;
        self.pending = None;
        Ok(())
    }

    /// The audit events of the requests since the last call, oldest first
    /// (audit.rs): the platform writes them to its log.
    pub fn take_audit_events(&mut self) -> Vec<AuditEvent> {
        std::mem::take(&mut self.audit)
    }

    /// Records an audit event; `user` defaults to the device's user.
    pub(crate) fn audit(&mut self, mut event: AuditEvent) {
        if event.user.is_none() {
            event.user = self.platform.policy.user();
        }
        if self.audit.len() >= MAX_PENDING_AUDIT_EVENTS {
            self.audit.remove(0);
        }
        self.audit.push(event);
    }

    /// Version and capabilities for CTAPHID_INIT.
    pub fn device_version(&self) -> DeviceVersion {
        let [_, major, minor, build] = self.config.firmware_version.to_be_bytes();
        DeviceVersion { major, minor, build, capabilities: capability::WINK | capability::CBOR }
    }

    /// Handles a CTAPHID_CBOR message: a command byte and its parameters.
    /// Returns the status byte followed by the CBOR response, if any.
    pub fn process_cbor(&mut self, message: &[u8], ctx: &RequestContext<'_>) -> Vec<u8> {
        let Some((&cmd, params)) = message.split_first() else {
            return vec![StatusCode::InvalidLength.as_byte()];
        };
        // Every message but the one continuing it ends a pending operation.
        let continuation = Command::continuation(cmd);
        if self.pending.as_ref().is_some_and(|p| !p.continued_by(continuation, ctx.channel, ctx.now)) {
            self.pending = None;
        }
        let result = Command::parse(cmd, params).and_then(|command| self.dispatch(command, ctx));
        match result {
            Ok(Some(value)) => {
                let mut out = vec![StatusCode::Success.as_byte()];
                out.extend(cbor::encode(value));
                out
            }
            Ok(None) => vec![StatusCode::Success.as_byte()],
            Err(status) => {
                tracing::debug!(command = cmd, %status, "CTAP2 command failed");
                vec![status.as_byte()]
            }
        }
    }

    fn dispatch(&mut self, command: Command, ctx: &RequestContext<'_>) -> CtapResult<Option<Value>> {
        match command {
            Command::MakeCredential(request) => self.make_credential(*request, ctx).map(Some),
            Command::GetAssertion(request) => self.get_assertion(*request, ctx).map(Some),
            Command::GetInfo => Ok(Some(self.get_info())),
            Command::ClientPin(request) => self.client_pin(request, ctx),
            Command::Reset => self.reset(ctx).map(|()| None),
            Command::GetNextAssertion => self.get_next_assertion(ctx).map(Some),
            Command::Selection => self.selection(ctx).map(|()| None),
            Command::CredentialManagement(request) => self.credential_management(request, ctx),
            Command::LargeBlobs(request) => self.large_blobs(request, ctx),
            Command::Config(request) => self.config(request, ctx).map(|()| None),
        }
    }

    fn get_info(&self) -> Value {
        let algorithms: Vec<Value> = self
            .platform
            .keystore
            .algorithms()
            .into_iter()
            .map(|a| MapBuilder::new().text("alg", a.cose_id()).text("type", "public-key").build())
            .collect();
        let options = MapBuilder::new()
            .text("rk", true)
            .text("up", true)
            .text("plat", false)
            .text("clientPin", self.state.pin.is_some())
            .text("pinUvAuthToken", true)
            .text("makeCredUvNotRqd", !self.state.always_uv)
            .text("credMgmt", true)
            .text("largeBlobs", true)
            .text("authnrCfg", true)
            .text("alwaysUv", self.state.always_uv)
            .text("setMinPINLength", true)
            // Read-only credential management with the persistent token (CTAP 2.2 §6.4).
            .text("perCredMgmtRO", true)
            // "ep" only while the policy can sign enterprise attestation.
            .text_opt(
                "ep",
                self.platform.policy.enterprise_attestation_capable().then_some(self.state.enterprise_attestation),
            )
            .text_opt("uv", self.built_in_uv_available().then_some(true))
            .build();
        let extensions = [
            "credBlob",
            "credProtect",
            "hmac-secret",
            "hmac-secret-mc",
            "largeBlobKey",
            "minPinLength",
            "thirdPartyPayment",
        ]
        .into_iter()
        .map(Value::from)
        .collect();
        let protocols = PinUvAuthProtocol::SUPPORTED.iter().map(|p| Value::from(p.id())).collect();
        let versions = ["U2F_V2", "FIDO_2_0", "FIDO_2_1", "FIDO_2_2"]
            .into_iter()
            .filter(|v| *v != "U2F_V2" || self.u2f_enabled())
            .map(Value::from)
            .collect();
        MapBuilder::new()
            .int(0x01, Value::Array(versions))
            .int(0x02, Value::Array(extensions))
            .int(0x03, cbor::bytes(self.config.aaguid.to_vec()))
            .int(0x04, options)
            .int(0x05, ADVERTISED_MAX_MSG_SIZE as u64)
            .int(0x06, Value::Array(protocols))
            .int(0x07, MAX_CREDENTIAL_COUNT_IN_LIST as u64)
            .int(0x08, crate::credential::MAX_CREDENTIAL_ID_LEN as u64)
            .int(0x09, Value::Array(vec![Value::from("usb")]))
            .int(0x0A, Value::Array(algorithms))
            .int(0x0B, MAX_SERIALIZED_LARGE_BLOB_ARRAY as u64)
            .int(0x0C, self.pin_change_required())
            .int(0x0D, u64::from(self.effective_min_pin_length()))
            .int(0x0E, u64::from(self.config.firmware_version))
            .int(0x0F, MAX_CRED_BLOB_LENGTH as u64)
            .int(0x10, MAX_RP_IDS_FOR_SET_MIN_PIN_LENGTH as u64)
            .int(0x14, self.platform.credentials.remaining_capacity() as u64)
            // CTAP 2.2 members (§6.4). Not set: uvCountSinceLastPinEntry
            // (0x17: for biometric sensors a platform rate-limits; built-in
            // UV here is the agent's password or fprintd, which keep their
            // own count), longTouchForReset (0x18: absent is false, and a
            // touch is a prompt here), transportsForReset (0x1A: absent is
            // every transport, and USB is the only one), pinComplexityPolicy
            // and its URL (0x1B, 0x1C: present would offer setMinPINLength's
            // pinComplexityPolicy, and fidoseal enforces only a minimum
            // length). encCredStoreState and authenticatorConfigCommands
            // (0x1E, 0x1F) are CTAP 2.3's.
            .int(0x16, Value::Array(ATTESTATION_FORMATS.iter().map(|f| Value::from(*f)).collect()))
            // encIdentifier: only while a persistent token exists to encrypt it
            // with; without random numbers for its IV it is left out, not faked.
            .int_opt(0x19, self.persistent_token.as_ref().and_then(|t| t.enc_identifier().ok()).map(cbor::bytes))
            .int(0x1D, MAX_PIN_LENGTH as u64)
            .build()
    }

    /// The authenticator is protected by some form of user verification: a
    /// PIN is set, or built-in verification is configured (§6.1.2 step 6,
    /// §6.10.3, §6.11.1). The one test for "may this change without a
    /// token": configured, not merely usable now, so that built-in UV that
    /// cannot be asked for at the moment (no agent) opens nothing.
    pub(crate) fn is_protected(&self) -> bool {
        self.state.pin.is_some() || self.platform.prompt.verification_configured()
    }

    /// Stores new persistent settings; memory follows only once they are durable.
    pub(crate) fn save_state(&mut self, state: AuthenticatorState) -> CtapResult<()> {
        self.platform.credentials.save_state(&state)?;
        self.state = state;
        Ok(())
    }

    /// authenticatorReset (§6.6): within 10 s of power-up, after a touch.
    fn reset(&mut self, ctx: &RequestContext<'_>) -> CtapResult<()> {
        if ctx.now.saturating_duration_since(self.power_up) > RESET_WINDOW {
            return Err(StatusCode::NotAllowed);
        }
        self.require_presence(&PresenceRequest { purpose: PresencePurpose::Reset, ..Default::default() }, ctx)?;
        self.reset_now()
    }

    /// authenticatorReset's effect without its power-up window and touch:
    /// for a reset the platform has authorized itself (fidoseald's
    /// Manager1.Reset, behind polkit). Every credential, the PIN and the
    /// settings are gone, and so are all key-store secrets.
    pub fn reset_by_platform(&mut self) -> CtapResult<()> {
        self.pending = None;
        self.reset_now()
    }

    /// The credential state goes first, the key store second. The PIN
    /// verifier is derived by the key store: resetting the key store first
    /// and then failing to write the state would keep a PIN that no PIN can
    /// match any more, and every correct PIN would spend a retry. This way a
    /// failed state write changes nothing, and a failed key-store reset
    /// leaves a fresh state (no PIN, no passkeys) beside the old key store,
    /// whose credential IDs keep opening until a reset completes.
    fn reset_now(&mut self) -> CtapResult<()> {
        let event = AuditEvent::new(AuditKind::Reset, AuditDecision::Deny).operation("reset");
        if let Err(e) = self.platform.credentials.reset() {
            self.audit(event.reason(format!("the credential state could not be reset: {e}")));
            return Err(e.into());
        }
        self.state = self.platform.credentials.load_state();
        self.client_pin = ClientPin::new()?;
        self.persistent_token = None;
        if let Err(e) = self.platform.keystore.reset() {
            tracing::error!(error = %e, "authenticator reset: passkeys and PIN are gone, the key store kept its keys");
            self.audit(event.reason(format!("passkeys and PIN are gone, the key store kept its keys: {e}")));
            return Err(e.into());
        }
        self.audit(
            AuditEvent { decision: AuditDecision::Allow, ..event }.reason("every credential and the PIN are gone"),
        );
        Ok(())
    }

    /// authenticatorSelection (§6.9): the user touches the key to pick it.
    fn selection(&mut self, ctx: &RequestContext<'_>) -> CtapResult<()> {
        self.require_presence(&PresenceRequest { purpose: PresencePurpose::Select, ..Default::default() }, ctx)
    }

    /// Asks the user for presence; any answer but approval ends the request.
    pub(crate) fn require_presence(
        &mut self,
        request: &PresenceRequest<'_>,
        ctx: &RequestContext<'_>,
    ) -> CtapResult<()> {
        if ctx.signals.is_cancelled() {
            return Err(StatusCode::KeepaliveCancel);
        }
        ctx.signals.set_waiting_for_user(true);
        let outcome = self.platform.prompt.request_presence(request, ctx.signals);
        ctx.signals.set_waiting_for_user(false);
        if ctx.signals.is_cancelled() {
            return Err(StatusCode::KeepaliveCancel);
        }
        let decision = if outcome == PromptOutcome::Approved { AuditDecision::Allow } else { AuditDecision::Deny };
        self.audit(
            AuditEvent::new(AuditKind::Presence, decision)
                .rp(request.rp_id)
                .operation(request.purpose.name())
                .reason(prompt_outcome_name(outcome)),
        );
        match outcome {
            PromptOutcome::Approved => Ok(()),
            refused => Err(crate::user_verification::refusal_status(refused)),
        }
    }

    /// Asks the policy before any key is used, and enforces what it
    /// requires. A refused relying party learns only OPERATION_DENIED.
    pub(crate) fn check_policy(
        &mut self,
        operation: Operation,
        rp_id: &str,
        discoverable: bool,
        user_verified: bool,
    ) -> CtapResult<PolicyVerdict> {
        self.decide_policy(&PolicyRequest { operation, rp_id, discoverable, ctap1: false }, user_verified)
    }

    /// [`Self::check_policy`] for a CTAP1/U2F request, which names its rp
    /// only by the application parameter (`application_hex`, 64 hex digits):
    /// the one kind of request policy may match by hash.
    pub(crate) fn check_u2f_policy(
        &mut self,
        operation: Operation,
        application_hex: &str,
    ) -> CtapResult<PolicyVerdict> {
        self.decide_policy(
            &PolicyRequest { operation, rp_id: application_hex, discoverable: false, ctap1: true },
            false,
        )
    }

    fn decide_policy(&mut self, request: &PolicyRequest<'_>, user_verified: bool) -> CtapResult<PolicyVerdict> {
        let PolicyRequest { operation, rp_id, discoverable, ctap1 } = *request;
        let verdict = self.platform.policy.decide(request);
        let decision = if !verdict.allow || (discoverable && !verdict.allow_discoverable) {
            Err(StatusCode::OperationDenied)
        } else if verdict.require_user_verification && !user_verified {
            // As under alwaysUv (§6.1.2 step 6, §6.2.2 step 5): the platform
            // must come back with a pinUvAuthToken, setting a PIN first if need be.
            Err(StatusCode::PuatRequired)
        } else {
            Ok(())
        };
        let reason = match decision {
            Ok(()) => None,
            Err(_) if !verdict.allow => Some("refused by the policy"),
            Err(StatusCode::OperationDenied) => Some("discoverable credentials are not allowed here"),
            Err(_) => Some("user verification required"),
        };
        let mut event = AuditEvent::new(
            AuditKind::PolicyDecision,
            if decision.is_ok() { AuditDecision::Allow } else { AuditDecision::Deny },
        )
        .rp(Some(rp_id))
        .rule(verdict.rule.clone())
        .operation(operation_name(operation, ctap1))
        .user_verified(user_verified);
        if let Some(reason) = reason {
            event = event.reason(reason);
        }
        tracing::debug!(discoverable, ctap1, "policy decision: {}", event.summary());
        self.audit(event);
        decision.map(|()| verdict)
    }

    /// The pinUvAuthParam steps shared by makeCredential and getAssertion
    /// (§6.1.2 steps 1–2, §6.2.2 steps 1–2): the zero-length probe, which
    /// only asks for a touch, and the protocol check. Returns the protocol
    /// to verify the parameter with later.
    pub(crate) fn pin_uv_auth_protocol(
        &mut self,
        auth: Option<&PinUvAuth>,
        ctx: &RequestContext<'_>,
    ) -> CtapResult<Option<PinUvAuthProtocol>> {
        let Some(auth) = auth else { return Ok(None) };
        if auth.param.is_empty() {
            // Browsers ask "which key?" this way: touch, then tell whether a PIN is set.
            // A refusal or a timeout is OPERATION_DENIED here (§6.1.2 step 1.2, §6.2.2 step 1.2).
            self.require_presence(&PresenceRequest { purpose: PresencePurpose::Select, ..Default::default() }, ctx)
                .map_err(|e| if e == StatusCode::UserActionTimeout { StatusCode::OperationDenied } else { e })?;
            return Err(if self.state.pin.is_some() { StatusCode::PinInvalid } else { StatusCode::PinNotSet });
        }
        let protocol = auth.protocol.ok_or(StatusCode::MissingParameter)?;
        PinUvAuthProtocol::from_id(protocol).map(Some)
    }

    /// The next value of `credential_id`'s own signature counter, durable
    /// before it is used (one small write).
    pub(crate) fn next_signature_counter(&mut self, credential_id: &[u8]) -> CtapResult<u32> {
        Ok(self.platform.credentials.next_signature_counter(credential_id)?)
    }
}

/// `FIDOSEAL_OPERATION=` of a policy decision.
pub(crate) fn operation_name(operation: Operation, ctap1: bool) -> &'static str {
    match (operation, ctap1) {
        (Operation::MakeCredential, false) => "make-credential",
        (Operation::GetAssertion, false) => "get-assertion",
        (Operation::MakeCredential, true) => "u2f-register",
        (Operation::GetAssertion, true) => "u2f-authenticate",
        (Operation::Reset, _) => "reset",
    }
}

/// `FIDOSEAL_REASON=` of a prompt's answer.
pub(crate) fn prompt_outcome_name(outcome: PromptOutcome) -> &'static str {
    match outcome {
        PromptOutcome::Approved => "approved",
        PromptOutcome::Denied => "the user said no",
        PromptOutcome::TimedOut => "timed out",
        PromptOutcome::Cancelled => "cancelled",
        PromptOutcome::Unavailable => "nobody could be asked",
    }
}
