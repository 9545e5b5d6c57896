//! authenticatorClientPIN (CTAP 2.1 §6.5): PIN set/change, retries and the
//! power-cycle rule, and the pinUvAuthToken with its permissions, rp ID
//! binding and lifetime.

use crate::audit::{AuditDecision, AuditEvent, AuditKind};
use std::time::{Duration, Instant};

use ciborium::value::Value;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::authenticator::{Authenticator, RequestContext};
use crate::cbor::{self, MapBuilder};
use crate::command::{ClientPinRequest, ClientPinSubCommand};
use crate::pin_protocol::{KeyAgreementKey, PinUvAuthProtocol, SharedSecret};
use crate::platform::{
    Operation, PinCheck, PinRecord, PresencePurpose, PresenceRequest, MAX_PIN_RETRIES, MAX_UV_RETRIES,
};
use crate::status::{CtapResult, StatusCode};

/// pinUvAuthToken permissions (§6.5.5.7).
pub mod permission {
    pub const MAKE_CREDENTIAL: u8 = 0x01;
    pub const GET_ASSERTION: u8 = 0x02;
    pub const CREDENTIAL_MANAGEMENT: u8 = 0x04;
    pub const BIO_ENROLLMENT: u8 = 0x08;
    pub const LARGE_BLOB_WRITE: u8 = 0x10;
    pub const AUTHENTICATOR_CONFIG: u8 = 0x20;
    /// pcmr (CTAP 2.2 §6.5.5.7): read-only credential management with the
    /// persistentPinUvAuthToken, which a power cycle does not end.
    pub const PERSISTENT_CREDENTIAL_MANAGEMENT_READ_ONLY: u8 = 0x40;
}

/// Wrong PINs in a row before the authenticator wants a power cycle (§6.5.2.2).
const MAX_CONSECUTIVE_MISMATCHES: u8 = 3;
/// The longest a pinUvAuthToken stays usable (§6.5.2.1 "max usage time period").
pub const TOKEN_LIFETIME: Duration = Duration::from_secs(600);
/// How long after issuance a built-in-UV token still stands for user
/// presence (§6.5.2.1 "initial usage time limit").
const TOKEN_PRESENCE_LIMIT: Duration = Duration::from_secs(30);
/// A padded PIN is exactly 64 bytes, so a PIN is at most 63 bytes (§6.5.5.5).
const PADDED_PIN_LEN: usize = 64;

/// The pinUvAuthToken and its state (§6.5.2.1).
pub(crate) struct PinUvAuthToken {
    value: Zeroizing<[u8; 32]>,
    pub(crate) permissions: u8,
    pub(crate) rp_id: Option<String>,
    issued: Option<Instant>,
    /// The user was present when the token was issued (built-in UV), so
    /// the first use soon after needs no second touch (§6.5.2.1 userPresent).
    user_present: bool,
}

impl PinUvAuthToken {
    fn fresh() -> CtapResult<Self> {
        let mut value = Zeroizing::new([0u8; 32]);
        getrandom::fill(value.as_mut()).map_err(|_| StatusCode::Other)?;
        Ok(Self { value, permissions: 0, rp_id: None, issued: None, user_present: false })
    }

    pub(crate) fn is_in_use(&self, now: Instant) -> bool {
        self.issued.is_some_and(|t| now.saturating_duration_since(t) <= TOKEN_LIFETIME)
    }
}

/// The persistentPinUvAuthToken (CTAP 2.2 §6.5.2.1): granted only the pcmr
/// permission, so it can list credentials and nothing else, and kept across
/// power cycles (a re-plug) so that a platform can list passkeys again
/// without asking for the PIN. It is held in memory only: a daemon restart,
/// a PIN change, a reset or the next pcmr token ends it.
pub(crate) struct PersistentToken {
    value: Zeroizing<[u8; 32]>,
    /// The authenticator's identifier (getInfo encIdentifier, §6.4): the
    /// key store's PRF of a fixed label, so the same until a reset.
    identifier: Zeroizing<[u8; 16]>,
}

impl PersistentToken {
    /// encIdentifier (§6.4, 0x19): iv ‖ AES-128-CBC(key, iv, identifier),
    /// key = HKDF-SHA-256(salt = 32 zero bytes, IKM = the token,
    /// info = "encIdentifier", L = 16), a fresh IV at every getInfo.
    pub(crate) fn enc_identifier(&self) -> CtapResult<Vec<u8>> {
        use aes::cipher::block_padding::NoPadding;
        use aes::cipher::{BlockModeEncrypt, KeyIvInit};
        let mut key = Zeroizing::new([0u8; 16]);
        hkdf::Hkdf::<Sha256>::new(Some(&[0u8; 32]), self.value.as_ref())
            .expand(b"encIdentifier", key.as_mut())
            .map_err(|_| StatusCode::Other)?;
        let mut iv = [0u8; 16];
        getrandom::fill(&mut iv).map_err(|_| StatusCode::Other)?;
        let mut block = *self.identifier;
        cbc::Encryptor::<aes::Aes128>::new((&*key).into(), (&iv).into())
            .encrypt_padded::<NoPadding>(&mut block, 16)
            .map_err(|_| StatusCode::Other)?;
        let mut out = iv.to_vec();
        out.extend_from_slice(&block);
        Ok(out)
    }

    pub(crate) fn verifies(&self, protocol: PinUvAuthProtocol, message: &[u8], param: &[u8]) -> bool {
        protocol.verify(self.value.as_ref(), message, param)
    }
}

/// What a request's pinUvAuthParam proved.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct TokenUse {
    pub(crate) user_verified: bool,
    pub(crate) user_present: bool,
}

/// clientPIN state that lives only until the next power cycle.
pub(crate) struct ClientPin {
    key_agreement: KeyAgreementKey,
    pub(crate) token: PinUvAuthToken,
    consecutive_mismatches: u8,
    /// The key store answered "locked" (TPM dictionary-attack lockout):
    /// no more PIN checks until a power cycle, so that a client hammering
    /// a locked-out TPM costs no state (and NV) write per try.
    key_store_locked: bool,
}

impl ClientPin {
    pub(crate) fn new() -> CtapResult<Self> {
        Ok(Self {
            key_agreement: KeyAgreementKey::generate()?,
            token: PinUvAuthToken::fresh()?,
            consecutive_mismatches: 0,
            key_store_locked: false,
        })
    }

    /// resetPinUvAuthToken(): every earlier token stops working.
    pub(crate) fn reset_token(&mut self) -> CtapResult<()> {
        self.token = PinUvAuthToken::fresh()?;
        Ok(())
    }

    pub(crate) fn power_cycle_required(&self) -> bool {
        self.consecutive_mismatches >= MAX_CONSECUTIVE_MISMATCHES || self.key_store_locked
    }
}

fn required<T>(value: Option<T>) -> CtapResult<T> {
    value.ok_or(StatusCode::MissingParameter)
}

/// LEFT(SHA-256(pin), 16): the PIN hash platforms send. As good as the
/// PIN to anyone who has it: zeroized when dropped.
fn pin_hash(pin: &[u8]) -> Zeroizing<[u8; 16]> {
    let mut digest = Sha256::digest(pin);
    let mut out = Zeroizing::new([0u8; 16]);
    out.copy_from_slice(&digest[..16]);
    zeroize::Zeroize::zeroize(digest.as_mut_slice());
    out
}

/// The length of an HMAC verifier (a PRF output); a PIN object is longer.
const HMAC_VERIFIER_LEN: usize = 32;

/// What the key store's PRF turns into the PIN verifier: a label and the
/// PIN hash, so zeroized when dropped like the hash itself.
fn pin_verifier_context(hash: &[u8]) -> Zeroizing<Vec<u8>> {
    const LABEL: &[u8] = b"fidoseal pin verifier v1";
    let mut context = Zeroizing::new(Vec::with_capacity(LABEL.len() + hash.len()));
    context.extend_from_slice(LABEL);
    context.extend_from_slice(hash);
    context
}

impl Authenticator {
    pub(crate) fn client_pin(
        &mut self,
        request: ClientPinRequest,
        ctx: &RequestContext<'_>,
    ) -> CtapResult<Option<Value>> {
        match request.sub_command {
            // Without a PIN there are no retries to count (what python-fido2's
            // device tests and real keys answer).
            ClientPinSubCommand::GetPinRetries if self.state.pin.is_none() => Err(StatusCode::PinNotSet),
            ClientPinSubCommand::GetPinRetries => Ok(Some(
                MapBuilder::new()
                    .int(0x03, u64::from(self.state.pin_retries))
                    .int(0x04, self.client_pin.power_cycle_required())
                    .build(),
            )),
            ClientPinSubCommand::GetKeyAgreement => {
                request.protocol()?;
                Ok(Some(MapBuilder::new().int(0x01, self.client_pin.key_agreement.cose_public_key()).build()))
            }
            ClientPinSubCommand::SetPin => self.set_pin(request).map(|()| None),
            ClientPinSubCommand::ChangePin => self.change_pin(request).map(|()| None),
            ClientPinSubCommand::GetPinToken => {
                if request.permissions.is_some() || request.rp_id.is_some() {
                    return Err(StatusCode::InvalidParameter);
                }
                // Legacy tokens may make credentials and assertions (§6.5.5.7.1).
                self.pin_token(request, permission::MAKE_CREDENTIAL | permission::GET_ASSERTION, None, ctx).map(Some)
            }
            ClientPinSubCommand::GetPinUvAuthTokenUsingPinWithPermissions => {
                let permissions = self.requested_permissions(request.permissions)?;
                let rp_id = request.rp_id.clone();
                self.pin_token(request, permissions, rp_id, ctx).map(Some)
            }
            ClientPinSubCommand::GetPinUvAuthTokenUsingUvWithPermissions => self.uv_token(request, ctx).map(Some),
            ClientPinSubCommand::GetUvRetries => {
                if !self.platform.prompt.verification_available() {
                    return Err(StatusCode::InvalidSubcommand);
                }
                Ok(Some(MapBuilder::new().int(0x05, u64::from(self.state.uv_retries)).build()))
            }
        }
    }

    /// §6.5.5.7.3 getPinUvAuthTokenUsingUvWithPermissions: the user
    /// verifies through the prompt instead of the platform sending a PIN.
    fn uv_token(&mut self, mut request: ClientPinRequest, ctx: &RequestContext<'_>) -> CtapResult<Value> {
        request.protocol()?;
        required(request.key_agreement.as_ref())?;
        let permissions = self.requested_permissions(request.permissions)?;
        if !self.platform.prompt.verification_available() {
            return Err(StatusCode::NotAllowed);
        }
        let shared = self.shared_secret(&mut request)?;
        let rp_id = request.rp_id.clone();
        // A token for an rp the policy refuses would only lead to a refused
        // request: refuse it before anyone is asked to verify (docs/policy.md,
        // the policy decides first). Asked as the request will be, short of
        // what only the request says (a discoverable credential or not).
        if let Some(rp) = rp_id.as_deref() {
            for (needed, operation) in [
                (permission::MAKE_CREDENTIAL, Operation::MakeCredential),
                (permission::GET_ASSERTION, Operation::GetAssertion),
            ] {
                if permissions & needed != 0 {
                    self.check_policy(operation, rp, false, true)?;
                }
            }
        }
        // Tell the user what the token is for, as far as its permissions
        // say; the most powerful first: a token that can delete passkeys or
        // change settings is not asked for as "sign in".
        let manage = permission::CREDENTIAL_MANAGEMENT
            | permission::AUTHENTICATOR_CONFIG
            | permission::PERSISTENT_CREDENTIAL_MANAGEMENT_READ_ONLY;
        let purpose = if permissions & manage != 0 {
            PresencePurpose::Manage
        } else if permissions & permission::MAKE_CREDENTIAL != 0 {
            PresencePurpose::Register
        } else if permissions & permission::GET_ASSERTION != 0 {
            PresencePurpose::Authenticate
        } else {
            // lbw alone (a bare be is refused as unsupported above).
            PresencePurpose::Manage
        };
        self.perform_built_in_uv(&PresenceRequest { purpose, rp_id: rp_id.as_deref(), ..Default::default() }, ctx)?;
        if permissions == permission::PERSISTENT_CREDENTIAL_MANAGEMENT_READ_ONLY {
            return self.issue_persistent_token(&shared);
        }
        let token = self.issue_token(&shared, permissions, rp_id, ctx.after_user())?;
        self.client_pin.token.user_present = true;
        Ok(token)
    }

    /// The permissions a token request asks for: present, not zero, and
    /// all of them ones this authenticator grants (§6.5.5.7.2 steps 1–4).
    fn requested_permissions(&self, permissions: Option<u64>) -> CtapResult<u8> {
        let permissions = required(permissions)?;
        if permissions == 0 {
            return Err(StatusCode::InvalidParameter);
        }
        let permissions = u8::try_from(permissions).map_err(|_| StatusCode::UnauthorizedPermission)?;
        if permissions & !self.supported_permissions() != 0 {
            return Err(StatusCode::UnauthorizedPermission);
        }
        // pcmr names a token of its own, the persistent one (CTAP 2.2
        // §6.5.5.7): it cannot share a token with other permissions.
        let pcmr = permission::PERSISTENT_CREDENTIAL_MANAGEMENT_READ_ONLY;
        if permissions & pcmr != 0 && permissions != pcmr {
            return Err(StatusCode::InvalidParameter);
        }
        Ok(permissions)
    }

    /// resetPinUvAuthToken() and beginUsingPinUvAuthToken(): a new token
    /// with these permissions, encrypted for the platform.
    fn issue_token(
        &mut self,
        shared: &SharedSecret,
        permissions: u8,
        rp_id: Option<String>,
        now: Instant,
    ) -> CtapResult<Value> {
        self.client_pin.reset_token()?;
        let token = &mut self.client_pin.token;
        token.permissions = permissions;
        token.rp_id = rp_id;
        token.issued = Some(now);
        let encrypted = shared.encrypt(token.value.as_ref())?;
        tracing::info!(permissions, rp_id = token.rp_id.as_deref(), "pinUvAuthToken issued");
        Ok(MapBuilder::new().int(0x02, cbor::bytes(encrypted)).build())
    }

    /// Permissions this authenticator can grant.
    pub(crate) fn supported_permissions(&self) -> u8 {
        permission::MAKE_CREDENTIAL
            | permission::GET_ASSERTION
            | permission::CREDENTIAL_MANAGEMENT
            | permission::LARGE_BLOB_WRITE
            | permission::AUTHENTICATOR_CONFIG
            | permission::PERSISTENT_CREDENTIAL_MANAGEMENT_READ_ONLY
    }

    fn shared_secret(&self, request: &mut ClientPinRequest) -> CtapResult<SharedSecret> {
        let protocol = request.protocol()?;
        let peer = required(request.key_agreement.take())?;
        self.client_pin.key_agreement.shared_secret(protocol, peer)
    }

    /// §6.5.5.5 setPIN.
    fn set_pin(&mut self, mut request: ClientPinRequest) -> CtapResult<()> {
        request.protocol()?;
        let new_pin_enc = required(request.new_pin_enc.take())?;
        let auth = required(request.pin_uv_auth_param.take())?;
        required(request.key_agreement.as_ref())?;
        if self.state.pin.is_some() {
            // §6.5.5.5 step 3: "If a PIN has already been set, return
            // CTAP2_ERR_PIN_AUTH_INVALID".
            return Err(StatusCode::PinAuthInvalid);
        }
        let shared = self.shared_secret(&mut request)?;
        if !shared.verify(&new_pin_enc, &auth) {
            return Err(StatusCode::PinAuthInvalid);
        }
        let record = self.new_pin_record(&shared, &new_pin_enc, None)?;
        let mut state = self.state.clone();
        state.pin = Some(record);
        state.pin_retries = MAX_PIN_RETRIES;
        state.force_pin_change = false;
        self.save_state(state)?;
        self.audit(AuditEvent::new(AuditKind::PinSet, AuditDecision::Allow).operation("client-pin"));
        Ok(())
    }

    /// §6.5.5.6 changePIN.
    fn change_pin(&mut self, mut request: ClientPinRequest) -> CtapResult<()> {
        request.protocol()?;
        let new_pin_enc = required(request.new_pin_enc.take())?;
        let pin_hash_enc = required(request.pin_hash_enc.take())?;
        let auth = required(request.pin_uv_auth_param.take())?;
        required(request.key_agreement.as_ref())?;
        self.check_pin_blocked()?;
        let shared = self.shared_secret(&mut request)?;
        let mut message = new_pin_enc.clone();
        message.extend_from_slice(&pin_hash_enc);
        if !shared.verify(&message, &auth) {
            return Err(StatusCode::PinAuthInvalid);
        }
        let current_pin_hash = self.check_pin_hash(&shared, &pin_hash_enc)?;
        let record = self.new_pin_record(&shared, &new_pin_enc, Some(&current_pin_hash))?;
        let mut state = self.state.clone();
        state.pin = Some(record);
        state.force_pin_change = false;
        self.save_state(state)?;
        self.client_pin.reset_token()?;
        // A token that outlives power cycles must not outlive the PIN it was got with.
        self.persistent_token = None;
        self.audit(AuditEvent::new(AuditKind::PinChanged, AuditDecision::Allow).operation("client-pin"));
        Ok(())
    }

    /// §6.5.5.7 getPinToken / getPinUvAuthTokenUsingPinWithPermissions.
    fn pin_token(
        &mut self,
        mut request: ClientPinRequest,
        permissions: u8,
        rp_id: Option<String>,
        ctx: &RequestContext<'_>,
    ) -> CtapResult<Value> {
        request.protocol()?;
        let pin_hash_enc = required(request.pin_hash_enc.take())?;
        required(request.key_agreement.as_ref())?;
        self.check_pin_blocked()?;
        let shared = self.shared_secret(&mut request)?;
        self.check_pin_hash(&shared, &pin_hash_enc)?;
        if self.pin_change_required() {
            // §6.5.5.7.1/§6.5.5.7.2: with forcePINChange set, the right PIN
            // still gets CTAP2_ERR_PIN_INVALID until it is changed.
            return Err(StatusCode::PinInvalid);
        }
        if permissions == permission::PERSISTENT_CREDENTIAL_MANAGEMENT_READ_ONLY {
            return self.issue_persistent_token(&shared);
        }
        self.issue_token(&shared, permissions, rp_id, ctx.now)
    }

    /// A new persistentPinUvAuthToken (the pcmr permission alone), encrypted
    /// for the platform; the earlier one stops working, the ordinary token
    /// is left as it is. An rp ID sent with it is ignored (§6.5.5.7).
    fn issue_persistent_token(&mut self, shared: &SharedSecret) -> CtapResult<Value> {
        let mut value = Zeroizing::new([0u8; 32]);
        getrandom::fill(value.as_mut()).map_err(|_| StatusCode::Other)?;
        let derived = self.platform.keystore.derive_secret(b"fidoseal authenticator identifier v1")?;
        let mut identifier = Zeroizing::new([0u8; 16]);
        identifier.copy_from_slice(&derived.0[..16]);
        let encrypted = shared.encrypt(value.as_ref())?;
        self.persistent_token = Some(PersistentToken { value, identifier });
        tracing::info!("persistentPinUvAuthToken issued (read-only credential management)");
        Ok(MapBuilder::new().int(0x02, cbor::bytes(encrypted)).build())
    }

    fn check_pin_blocked(&self) -> CtapResult<()> {
        if self.state.pin.is_none() {
            return Err(StatusCode::PinNotSet);
        }
        if self.state.pin_retries == 0 {
            return Err(StatusCode::PinBlocked);
        }
        if self.client_pin.power_cycle_required() {
            return Err(StatusCode::PinAuthBlocked);
        }
        Ok(())
    }

    /// Checks pinHashEnc against the stored PIN (§6.5.5.6 steps 5–7) and
    /// returns the PIN hash it verified. The retry counter is decremented
    /// and stored before the comparison, so cutting the power mid-check
    /// gains an attacker nothing.
    fn check_pin_hash(&mut self, shared: &SharedSecret, pin_hash_enc: &[u8]) -> CtapResult<Zeroizing<[u8; 16]>> {
        let candidate =
            shared.decrypt(pin_hash_enc).ok().and_then(|h| <[u8; 16]>::try_from(h.as_slice()).ok()).map(Zeroizing::new);
        self.verify_pin_hash(candidate.as_deref())?;
        candidate.ok_or(StatusCode::PinInvalid)
    }

    /// Checks a PIN the user typed into the prompt (built-in verification
    /// with the authenticator's PIN), under the same retry rules.
    pub(crate) fn check_typed_pin(&mut self, pin: &str) -> CtapResult<()> {
        self.check_pin_blocked()?;
        self.verify_pin_hash(Some(&pin_hash(pin.as_bytes())))
    }

    /// The retry rules around one PIN comparison (§6.5.5.6 steps 5–7).
    ///
    /// The key store's own limit comes second (docs/tpm.md, "The PIN object
    /// and dictionary-attack protection"): a wrong PIN counts at both, and
    /// a TPM in dictionary-attack lockout compares nothing, so the retry is
    /// given back and the answer is PIN_AUTH_BLOCKED ("try again later"),
    /// never PIN_BLOCKED, which would send the user to a reset. A key store
    /// that cannot compare at all (TPM unreachable, boot state not approved)
    /// fails the request and gives the retry back too.
    fn verify_pin_hash(&mut self, candidate: Option<&[u8; 16]>) -> CtapResult<()> {
        let retries_before = self.state.pin_retries;
        let mut state = self.state.clone();
        state.pin_retries = state.pin_retries.saturating_sub(1);
        self.save_state(state)?;
        let stored = self.state.pin.as_ref().map(|p| p.verifier.clone()).unwrap_or_default();
        let compared = match candidate {
            Some(hash) => self.compare_pin(&stored, hash),
            None => Ok((PinCheck::Mismatch, None)),
        };
        let (check, upgraded) = match compared {
            Ok(compared) => compared,
            Err(e) => {
                let mut state = self.state.clone();
                state.pin_retries = retries_before;
                self.save_state(state)?;
                return Err(e);
            }
        };
        if check == PinCheck::Locked {
            let mut state = self.state.clone();
            state.pin_retries = retries_before;
            self.save_state(state)?;
            self.client_pin.key_store_locked = true;
            self.audit(AuditEvent::new(AuditKind::PinFailed, AuditDecision::Deny).operation("client-pin").reason(
                "the TPM is in dictionary-attack lockout: no PIN was compared and no retry counted".to_string(),
            ));
            return Err(StatusCode::PinAuthBlocked);
        }
        if check == PinCheck::Mismatch {
            self.client_pin.key_agreement = KeyAgreementKey::generate()?;
            self.client_pin.consecutive_mismatches = self.client_pin.consecutive_mismatches.saturating_add(1);
            let retries_left = self.state.pin_retries;
            self.audit(
                AuditEvent::new(AuditKind::PinFailed, AuditDecision::Deny)
                    .operation("client-pin")
                    .reason(format!("wrong PIN, {retries_left} retries left")),
            );
            if self.state.pin_retries == 0 {
                return Err(StatusCode::PinBlocked);
            }
            if self.client_pin.power_cycle_required() {
                return Err(StatusCode::PinAuthBlocked);
            }
            return Err(StatusCode::PinInvalid);
        }
        self.client_pin.consecutive_mismatches = 0;
        // A correct PIN restores both counters in one write (§6.5.5.7.1 and
        // §6.5.5.7.2: "reset the uvRetries counter"): built-in UV blocked by
        // failed fingerprints or passwords works again once the PIN is used.
        let mut state = self.state.clone();
        state.pin_retries = MAX_PIN_RETRIES;
        state.uv_retries = MAX_UV_RETRIES;
        if let (Some(record), Some(object)) = (state.pin.as_mut(), upgraded) {
            // Same write: the HMAC verifier is gone once the PIN object is stored.
            record.verifier = object;
        }
        self.save_state(state)
    }

    /// One comparison of a PIN hash with the stored form of the PIN. An HMAC
    /// verifier (a PIN set before the key store had PIN objects) that
    /// matches is replaced by a PIN object, if the store makes them: the
    /// second value, stored by the caller with the restored retries.
    fn compare_pin(&mut self, stored: &[u8], hash: &[u8; 16]) -> CtapResult<(PinCheck, Option<Vec<u8>>)> {
        if stored.len() != HMAC_VERIFIER_LEN {
            return Ok((self.platform.keystore.check_pin_object(stored, hash)?, None));
        }
        let verifier = self.pin_verifier(hash)?;
        if !bool::from(subtle::ConstantTimeEq::ct_eq(verifier.as_slice(), stored)) {
            return Ok((PinCheck::Mismatch, None));
        }
        Ok((PinCheck::Match, self.platform.keystore.create_pin_object(hash)?))
    }

    /// The HMAC verifier of a PIN hash: a PRF of it held by the key store
    /// (the stored form where the store has no PIN objects).
    fn pin_verifier(&mut self, hash: &[u8]) -> CtapResult<Zeroizing<Vec<u8>>> {
        let context = pin_verifier_context(hash);
        Ok(Zeroizing::new(self.platform.keystore.derive_secret(&context)?.0.to_vec()))
    }

    /// The stored form of a new PIN: the key store's PIN object (guessing
    /// limited by the TPM), or else the HMAC verifier.
    fn stored_pin_form(&mut self, hash: &[u8; 16]) -> CtapResult<Vec<u8>> {
        match self.platform.keystore.create_pin_object(hash)? {
            Some(object) => Ok(object),
            None => Ok(self.pin_verifier(hash)?.to_vec()),
        }
    }

    /// Decrypts and checks a new PIN (§6.5.5.5 steps 6–8): 64 padded bytes,
    /// UTF-8, at least the minimum length in code points, at most 63 bytes.
    fn new_pin_record(
        &mut self,
        shared: &SharedSecret,
        new_pin_enc: &[u8],
        current_pin_hash: Option<&[u8; 16]>,
    ) -> CtapResult<PinRecord> {
        let padded = shared.decrypt(new_pin_enc)?;
        if padded.len() != PADDED_PIN_LEN {
            return Err(StatusCode::InvalidParameter);
        }
        let end = padded.iter().position(|&b| b == 0).ok_or(StatusCode::PinPolicyViolation)?;
        let pin = &padded[..end];
        let code_points = std::str::from_utf8(pin).map_err(|_| StatusCode::PinPolicyViolation)?.chars().count();
        if code_points < usize::from(self.effective_min_pin_length()) {
            return Err(StatusCode::PinPolicyViolation);
        }
        let hash = pin_hash(pin);
        if self.pin_change_required()
            && current_pin_hash
                .is_some_and(|current| bool::from(subtle::ConstantTimeEq::ct_eq(&current[..], &hash[..])))
        {
            // A forced change must really change the PIN (§6.5.5.6 step 9).
            // Compared with the PIN hash just verified: a PIN object cannot
            // be compared without a use that a mismatch would count.
            return Err(StatusCode::PinPolicyViolation);
        }
        let verifier = self.stored_pin_form(&hash)?;
        Ok(PinRecord { verifier, code_points: code_points as u8 })
    }

    /// The PIN must change before it is used again: setMinPINLength asked
    /// for it, or the PIN is shorter than the minimum now in force (which
    /// policy may have raised since the PIN was set).
    pub(crate) fn pin_change_required(&self) -> bool {
        self.state.force_pin_change
            || self.state.pin.as_ref().is_some_and(|p| p.code_points < self.effective_min_pin_length())
    }

    /// The minimum PIN length in force: the authenticator's setting, raised
    /// by policy where an administrator asks for more.
    pub(crate) fn effective_min_pin_length(&self) -> u8 {
        self.platform.policy.min_pin_length().map_or(self.state.min_pin_length, |p| p.max(self.state.min_pin_length))
    }

    /// Checks a pinUvAuthParam made with the pinUvAuthToken over `message`
    /// and that the token may do `needed` for `rp_id` (§6.1.2 step 11,
    /// §6.2.2 step 6). A token without an rp ID is bound to `rp_id` here.
    pub(crate) fn verify_pin_uv_auth_token(
        &mut self,
        protocol: PinUvAuthProtocol,
        message: &[u8],
        param: &[u8],
        needed: u8,
        rp_id: Option<&str>,
        now: Instant,
    ) -> CtapResult<()> {
        let token = &mut self.client_pin.token;
        if !token.is_in_use(now) || !protocol.verify(token.value.as_ref(), message, param) {
            return Err(StatusCode::PinAuthInvalid);
        }
        if token.permissions & needed != needed {
            return Err(StatusCode::PinAuthInvalid);
        }
        if let Some(rp_id) = rp_id {
            match &token.rp_id {
                Some(bound) if bound != rp_id => return Err(StatusCode::PinAuthInvalid),
                Some(_) => {}
                None => token.rp_id = Some(rp_id.to_owned()),
            }
        }
        Ok(())
    }

    /// The token check of the commands other than the ceremonies
    /// (credential management, config, large-blob writes): a pinUvAuthParam
    /// must come (PUAT_REQUIRED) with its protocol (MISSING_PARAMETER), made
    /// over `message` by a token with the `needed` permission.
    pub(crate) fn verify_command_token(
        &mut self,
        protocol: Option<u64>,
        param: Option<&[u8]>,
        message: &[u8],
        needed: u8,
        now: Instant,
    ) -> CtapResult<()> {
        let param = param.ok_or(StatusCode::PuatRequired)?;
        let protocol = PinUvAuthProtocol::from_id(protocol.ok_or(StatusCode::MissingParameter)?)?;
        self.verify_pin_uv_auth_token(protocol, message, param, needed, None, now)
    }

    /// makeCredential step 11 / getAssertion step 6: when the request
    /// carries a pinUvAuthParam, it must authenticate clientDataHash with a
    /// token that may do `needed` for `rp_id`. Returns whether the user was
    /// verified, and whether the token also stands for their presence.
    pub(crate) fn verify_request_token(
        &mut self,
        protocol: Option<PinUvAuthProtocol>,
        auth: Option<&crate::request::PinUvAuth>,
        client_data_hash: &[u8],
        needed: u8,
        rp_id: &str,
        now: Instant,
    ) -> CtapResult<TokenUse> {
        let (Some(protocol), Some(auth)) = (protocol, auth) else {
            return Ok(TokenUse::default());
        };
        self.verify_pin_uv_auth_token(protocol, client_data_hash, &auth.param, needed, Some(rp_id), now)?;
        Ok(TokenUse { user_verified: true, user_present: self.token_proves_presence(now) })
    }

    /// After a makeCredential or getAssertion that used the token, only the
    /// large-blob-write permission remains (§6.1.2 step 20, §6.2.2 step 12),
    /// and the token no longer stands for presence.
    pub(crate) fn clear_token_permissions_except_lbw(&mut self) {
        self.client_pin.token.permissions &= permission::LARGE_BLOB_WRITE;
        self.client_pin.token.user_present = false;
    }

    /// The token was issued after built-in UV moments ago: the user is
    /// present, and makeCredential/getAssertion need not ask again.
    fn token_proves_presence(&self, now: Instant) -> bool {
        let token = &self.client_pin.token;
        token.user_present && token.issued.is_some_and(|t| now.saturating_duration_since(t) <= TOKEN_PRESENCE_LIMIT)
    }
}

impl Authenticator {
    /// The key agreement key, for extensions that encrypt to the platform.
    pub(crate) fn client_pin_key_agreement(&self) -> &KeyAgreementKey {
        &self.client_pin.key_agreement
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Takes only values that wipe themselves on drop.
    fn zeroized_on_drop<T: zeroize::Zeroize>(_: &Zeroizing<T>) {}

    #[test]
    fn the_pin_hash_and_the_verifier_context_are_zeroized_on_drop() {
        let hash = pin_hash(b"1234");
        zeroized_on_drop(&hash);
        let context = pin_verifier_context(hash.as_slice());
        zeroized_on_drop(&context);
        assert!(context.starts_with(b"fidoseal pin verifier v1") && context.ends_with(hash.as_slice()));
    }
}
