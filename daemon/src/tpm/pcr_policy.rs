//! Boot-state binding (`[keystore] pcrs = [7]`, docs/tpm.md "Boot-state
//! binding"): the TPM objects of a bound generation (credential keys, the
//! HMAC key) have no `userWithAuth` and the authPolicy
//! TPM2_PolicyAuthorize(approval key A, POLICY_REF) (the PIN object: that,
//! then TPM2_PolicyAuthValue; pin_object.rs). A session satisfies it
//! only with TPM2_PolicyPCR over the *current* PCR values followed by
//! TPM2_PolicyAuthorize with a ticket for A's signature over that PolicyPCR
//! digest: the keys work in boot states that A approved, and in no other
//! (TPM 2.0 Part 3, 23.16; the "authorized policy" that lets PCR values
//! change without re-creating the objects, as systemd-cryptenroll's
//! --tpm2-public-key does — no NV index, no systemd-pcrlock).
//!
//! A is a P-256 key made here. Its scalar is kept only sealed by the TPM,
//! under a primary of its own (fixed template, so a reset keeps A):
//! - sealed to the newest approved state (authPolicy = its PolicyPCR);
//! - sealed with a recovery key as auth value, not `noDA` (a wrong guess
//!   counts toward the TPM's dictionary-attack lockout); the recovery key is
//!   written once to `tpm-recovery-key` (0600) for the administrator to take
//!   away;
//! - while a planned change is allowed (`allow-boot-change`), sealed with
//!   no policy at all in `tpm-boot-update-window`, used and deleted at the
//!   next start.
//!
//! Approvals (A's signatures) are public and kept in `tpm-boot-state`;
//! TPM2_VerifySignature's ticket for the current one is kept in memory
//! (it stays valid while the owner hierarchy's proof does).

use std::path::{Path, PathBuf};

use p256::ecdsa::signature::hazmat::PrehashSigner;
use p256::ecdsa::{Signature as P256Signature, SigningKey, VerifyingKey};
use p256::elliptic_curve::Generate;
use sha2::{Digest as _, Sha256};
use tss_esapi::attributes::{ObjectAttributesBuilder, SessionAttributesBuilder};
use tss_esapi::constants::SessionType;
use tss_esapi::handles::{KeyHandle, ObjectHandle, SessionHandle};
use tss_esapi::interface_types::algorithm::{HashingAlgorithm, PublicAlgorithm};
use tss_esapi::interface_types::ecc::EccCurve;
use tss_esapi::interface_types::resource_handles::Hierarchy;
use tss_esapi::interface_types::session_handles::{AuthSession, PolicySession};
use tss_esapi::structures::{
    Auth, Digest, EccParameter, EccPoint, EccScheme, EccSignature, HashScheme, KeyedHashScheme, Nonce,
    PcrSelectionList, PcrSelectionListBuilder, PcrSlot, Private, Public, PublicBuilder, PublicEccParametersBuilder,
    PublicKeyedHashParameters, SensitiveData, Signature, SymmetricDefinition, VerifiedTicket,
};
use tss_esapi::traits::{Marshall, UnMarshall};
use tss_esapi::tss2_esys::TPMT_TK_VERIFIED;
use tss_esapi::Context;
use zeroize::Zeroizing;

use super::boot_state_file::{Approval, BootState, SealedBlob, UpdateWindow, CURRENT_FORMAT};
use super::errors::{classify, raw_code, Fault};
use super::{at, create_primary, then_flush, OpError};

pub const BOOT_STATE_FILE: &str = "tpm-boot-state";
pub const WINDOW_FILE: &str = "tpm-boot-update-window";
pub const RECOVERY_KEY_FILE: &str = "tpm-recovery-key";
/// TPM2_PolicyAuthorize's policyRef: A's signatures approve boot states for
/// fidoseal's objects and nothing else.
const POLICY_REF: &[u8] = b"fidoseal boot state v1";
/// The unique value of the primary that A's sealed copies live under. Fixed:
/// authenticatorReset makes a new storage primary, but A (and the recovery
/// key the administrator keeps) stays.
const APPROVAL_PRIMARY_UNIQUE: [u8; 32] = *b"fidoseal boot approval primary 1";
/// TPM_CC_PolicyAuthorize (Part 2, 6.5.2).
const TPM_CC_POLICY_AUTHORIZE: u32 = 0x0000_016a;
/// Highest PCR index of a PC Client TPM.
pub const MAX_PCR: u8 = 23;
/// Approved states kept (newest first); older ones are dropped.
const MAX_APPROVALS: usize = 4;
/// Recovery key: 16 random bytes, written as 8 groups of 4 hex digits.
const RECOVERY_KEY_LEN: usize = 16;

/// Checks `[keystore] pcrs`: PCR indices 0–23, each once.
pub fn check_selection(pcrs: &[u8]) -> Result<(), String> {
    if let Some(bad) = pcrs.iter().find(|&&p| p > MAX_PCR) {
        return Err(format!("[keystore] pcrs: {bad} is not a PCR (0 to {MAX_PCR})"));
    }
    let mut sorted = pcrs.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    if sorted.len() != pcrs.len() {
        return Err("[keystore] pcrs names a PCR twice".into());
    }
    Ok(())
}

/// `[7, 11]` as the configuration writes it.
pub fn selection_text(pcrs: &[u8]) -> String {
    format!("[{}]", pcrs.iter().map(u8::to_string).collect::<Vec<_>>().join(", "))
}

/// The authPolicy of every object of a bound generation:
/// TPM2_PolicyAuthorize(A, POLICY_REF) from an empty policy (Part 3, 23.16:
/// policyDigest = H(H(0…0 ‖ TPM_CC_PolicyAuthorize ‖ keySign.name) ‖ policyRef)).
pub fn authorized_policy(key_name: &[u8]) -> Vec<u8> {
    let first = Sha256::new()
        .chain_update([0u8; 32])
        .chain_update(TPM_CC_POLICY_AUTHORIZE.to_be_bytes())
        .chain_update(key_name);
    Sha256::new().chain_update(first.finalize()).chain_update(POLICY_REF).finalize().to_vec()
}

/// A's public area as TPM2_LoadExternal takes it: P-256, ECDSA-SHA-256.
fn approval_key_public(point: &[u8]) -> tss_esapi::Result<Public> {
    let (x, y) = point
        .get(1..33)
        .zip(point.get(33..65))
        .ok_or(tss_esapi::Error::WrapperError(tss_esapi::WrapperErrorKind::WrongParamSize))?;
    PublicBuilder::new()
        .with_public_algorithm(PublicAlgorithm::Ecc)
        .with_name_hashing_algorithm(HashingAlgorithm::Sha256)
        .with_object_attributes(
            ObjectAttributesBuilder::new().with_user_with_auth(true).with_sign_encrypt(true).build()?,
        )
        .with_ecc_parameters(
            PublicEccParametersBuilder::new_unrestricted_signing_key(
                EccScheme::EcDsa(HashScheme::new(HashingAlgorithm::Sha256)),
                EccCurve::NistP256,
            )
            .build()?,
        )
        .with_ecc_unique_identifier(EccPoint::new(
            EccParameter::try_from(x.to_vec())?,
            EccParameter::try_from(y.to_vec())?,
        ))
        .build()
}

/// An object's name: nameAlg (TPM_ALG_SHA256) ‖ SHA-256(TPMT_PUBLIC).
fn name_of(public: &Public) -> tss_esapi::Result<Vec<u8>> {
    let mut name = vec![0x00, 0x0b];
    name.extend_from_slice(&Sha256::digest(public.marshall()?));
    Ok(name)
}

/// A's name, as the generation's authPolicy names it.
pub fn approval_key_name(point: &[u8]) -> Result<Vec<u8>, String> {
    approval_key_public(point).and_then(|p| name_of(&p)).map_err(|e| format!("the approval key: {e}"))
}

fn selection_list(pcrs: &[u8]) -> Result<PcrSelectionList, OpError> {
    let slots = pcrs
        .iter()
        .map(|&p| PcrSlot::try_from(1u32 << p))
        .collect::<tss_esapi::Result<Vec<_>>>()
        .map_err(at("building the PCR selection"))?;
    PcrSelectionListBuilder::new()
        .with_selection(HashingAlgorithm::Sha256, &slots)
        .build()
        .map_err(at("building the PCR selection"))
}

/// The selected PCRs' SHA-256 values, in the order of `pcrs` (one
/// TPM2_PCR_Read each: a TPM returns at most 8 per call).
pub(super) fn read_pcrs(ctx: &mut Context, pcrs: &[u8]) -> Result<Vec<Vec<u8>>, OpError> {
    let mut values = Vec::with_capacity(pcrs.len());
    for &pcr in pcrs {
        let selection = selection_list(&[pcr])?;
        let (_, _, digests) = ctx.execute_without_session(|c| c.pcr_read(selection)).map_err(at("TPM2_PCR_Read"))?;
        let value = digests.value().first().map(|d| d.value().to_vec()).unwrap_or_default();
        if value.len() != 32 {
            return Err(OpError::Internal(format!(
                "the TPM has no SHA-256 value for PCR {pcr} (is its SHA-256 bank enabled?)"
            )));
        }
        values.push(value);
    }
    Ok(values)
}

/// The TPM2_PolicyPCR digest of `values`, computed by the TPM in a trial
/// session (so that it is exactly what a policy session will compute).
fn policy_pcr_digest(ctx: &mut Context, pcrs: &[u8], values: &[Vec<u8>]) -> Result<Vec<u8>, OpError> {
    let pcr_digest = Digest::try_from(Sha256::digest(values.concat()).to_vec()).map_err(at("PCR digest"))?;
    let selection = selection_list(pcrs)?;
    let session = start_session(ctx, None, SessionType::Trial)?;
    let policy = PolicySession::try_from(session).map_err(at("trial session"));
    let result = policy.and_then(|policy| {
        ctx.execute_without_session(|c| {
            c.policy_pcr(policy, pcr_digest, selection)?;
            c.policy_get_digest(policy)
        })
        .map_err(at("TPM2_PolicyPCR (trial)"))
    });
    flush_session(ctx, session);
    Ok(result?.value().to_vec())
}

fn start_session(ctx: &mut Context, salt: Option<KeyHandle>, kind: SessionType) -> Result<AuthSession, OpError> {
    let session = ctx
        .execute_without_session(|c| {
            c.start_auth_session(salt, None, None, kind, SymmetricDefinition::AES_128_CFB, HashingAlgorithm::Sha256)
        })
        .map_err(at("TPM2_StartAuthSession"))?
        .ok_or_else(|| OpError::Internal("TPM2_StartAuthSession returned no session".into()))?;
    if salt.is_some() {
        // Parameter encryption both ways: secrets going in (an HMAC input)
        // and coming out (an unsealed scalar) never cross the bus in the clear.
        let (attributes, mask) = SessionAttributesBuilder::new().with_decrypt(true).with_encrypt(true).build();
        if let Err(error) = ctx.tr_sess_set_attributes(session, attributes, mask) {
            flush_session(ctx, session);
            return Err(OpError::Tpm { step: "setting the session attributes", error });
        }
    }
    Ok(session)
}

pub(super) fn flush_session(ctx: &mut Context, session: AuthSession) {
    if let Err(e) = ctx.flush_context(SessionHandle::from(session).into()) {
        tracing::warn!(error = %super::errors::describe(&e), "could not flush a policy session");
    }
}

fn sign_approval(key: &SigningKey, policy: &[u8]) -> Result<Vec<u8>, OpError> {
    let a_hash = Sha256::new().chain_update(policy).chain_update(POLICY_REF).finalize();
    let signature: P256Signature =
        key.sign_prehash(&a_hash).map_err(|e| OpError::Internal(format!("signing an approval: {e}")))?;
    Ok(signature.to_bytes().to_vec())
}

/// TPM2_LoadExternal of A's public key in the owner hierarchy (a null-
/// hierarchy key would give a NULL ticket, which TPM2_PolicyAuthorize
/// refuses), TPM2_VerifySignature of an approval, flush.
fn approval_ticket(ctx: &mut Context, point: &[u8], approval: &Approval) -> Result<TPMT_TK_VERIFIED, OpError> {
    let public = approval_key_public(point).map_err(at("building the approval key's public area"))?;
    let a_hash = Sha256::new().chain_update(&approval.policy).chain_update(POLICY_REF).finalize();
    let digest = Digest::try_from(a_hash.to_vec()).map_err(at("approval digest"))?;
    let (r, s) = approval.signature.split_at(32);
    let signature = EccParameter::try_from(r.to_vec())
        .and_then(|r| Ok((r, EccParameter::try_from(s.to_vec())?)))
        .and_then(|(r, s)| EccSignature::create(HashingAlgorithm::Sha256, r, s))
        .map(Signature::EcDsa)
        .map_err(at("building the approval signature"))?;
    let key = ctx
        .execute_without_session(|c| c.load_external_public(public, Hierarchy::Owner))
        .map_err(at("TPM2_LoadExternal of the approval key"))?;
    let ticket = then_flush(ctx, key.into(), "TPM2_FlushContext of the approval key", |ctx| {
        ctx.execute_without_session(|c| c.verify_signature(key, digest, signature))
            .map_err(at("TPM2_VerifySignature of an approval"))
    })?;
    TPMT_TK_VERIFIED::try_from(ticket).map_err(at("the verification ticket"))
}

/// A sealed-data object's template: no sign/decrypt, the TPM cannot make
/// its data (we give it). `policy`: authPolicy, and no userWithAuth;
/// `da`: subject to dictionary-attack protection.
fn sealed_template(policy: Option<&[u8]>, da: bool) -> tss_esapi::Result<Public> {
    let attributes = ObjectAttributesBuilder::new()
        .with_fixed_tpm(true)
        .with_fixed_parent(true)
        .with_user_with_auth(policy.is_none())
        .with_no_da(!da)
        .build()?;
    let mut builder = PublicBuilder::new()
        .with_public_algorithm(PublicAlgorithm::KeyedHash)
        .with_name_hashing_algorithm(HashingAlgorithm::Sha256)
        .with_object_attributes(attributes)
        .with_keyed_hash_parameters(PublicKeyedHashParameters::new(KeyedHashScheme::Null))
        .with_keyed_hash_unique_identifier(Digest::default());
    if let Some(policy) = policy {
        builder = builder.with_auth_policy(Digest::try_from(policy.to_vec())?);
    }
    builder.build()
}

/// Runs `op` with the approval primary loaded, and flushes it after.
fn with_approval_primary<T>(
    ctx: &mut Context,
    op: impl FnOnce(&mut Context, KeyHandle) -> Result<T, OpError>,
) -> Result<T, OpError> {
    let (primary, _) = create_primary(ctx, &APPROVAL_PRIMARY_UNIQUE)?;
    then_flush(ctx, primary.into(), "TPM2_FlushContext", |ctx| op(ctx, primary))
}

fn seal(
    ctx: &mut Context,
    parent: KeyHandle,
    secret: &[u8],
    policy: Option<&[u8]>,
    auth: Option<&[u8]>,
) -> Result<SealedBlob, OpError> {
    let template = sealed_template(policy, auth.is_some()).map_err(at("building the sealed object's template"))?;
    let data = SensitiveData::try_from(secret.to_vec()).map_err(at("sealed data"))?;
    let auth = auth.map(|a| Auth::try_from(a.to_vec())).transpose().map_err(at("auth value"))?;
    let created = ctx
        .execute_with_session(Some(AuthSession::Password), |c| c.create(parent, template, auth, Some(data), None, None))
        .map_err(at("TPM2_Create of a sealed object"))?;
    Ok(SealedBlob {
        public: created.out_public.marshall().map_err(at("marshalling a sealed object"))?,
        private: created.out_private.value().to_vec(),
    })
}

/// How a sealed copy of A is opened.
enum Opening<'a> {
    /// PolicyPCR over the current values of `pcrs`.
    Pcrs(&'a [u8]),
    /// Its auth value (the recovery key; empty for the update window).
    Auth(&'a [u8]),
}

fn unseal(ctx: &mut Context, parent: KeyHandle, blob: &SealedBlob, how: Opening) -> Result<SigningKey, OpError> {
    let public = Public::unmarshall(&blob.public).map_err(|_| OpError::NotOurs)?;
    let private = Private::try_from(blob.private.clone()).map_err(|_| OpError::NotOurs)?;
    let object = ctx.execute_with_session(Some(AuthSession::Password), |c| c.load(parent, private, public)).map_err(
        |error| match classify(&error) {
            Fault::Refused => OpError::NotOurs,
            _ => OpError::Tpm { step: "TPM2_Load of a sealed object", error },
        },
    )?;
    let result = (|| {
        let session = match how {
            Opening::Pcrs(pcrs) => {
                let session = start_session(ctx, Some(parent), SessionType::Policy)?;
                let selection = selection_list(pcrs)?;
                let satisfied = PolicySession::try_from(session).and_then(|policy| {
                    ctx.execute_without_session(|c| c.policy_pcr(policy, Digest::default(), selection))
                });
                if let Err(error) = satisfied {
                    flush_session(ctx, session);
                    return Err(OpError::Tpm { step: "TPM2_PolicyPCR", error });
                }
                session
            }
            Opening::Auth(auth) => {
                let auth = Auth::try_from(auth.to_vec()).map_err(at("auth value"))?;
                ctx.tr_set_auth(ObjectHandle::from(object), auth).map_err(at("setting the auth value"))?;
                start_session(ctx, Some(parent), SessionType::Hmac)?
            }
        };
        let data = ctx.execute_with_session(Some(session), |c| c.unseal(object.into())).map_err(at("TPM2_Unseal"));
        flush_session(ctx, session);
        let data = Zeroizing::new(data?.value().to_vec());
        SigningKey::from_slice(&data)
            .map_err(|_| OpError::Internal("a sealed approval key is not a P-256 scalar".into()))
    })();
    let _ = ctx.flush_context(object.into());
    result
}

fn point_of(key: &SigningKey) -> Vec<u8> {
    VerifyingKey::from(key).to_sec1_point(false).as_bytes().to_vec()
}

fn hex_values(values: &[Vec<u8>]) -> Vec<String> {
    values.iter().map(hex::encode).collect()
}

/// The recovery key as the administrator sees it: `xxxx-xxxx-…`.
fn recovery_text(bytes: &[u8]) -> String {
    hex::encode(bytes)
        .as_bytes()
        .chunks(4)
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .collect::<Vec<_>>()
        .join("-")
}

/// A typed recovery key back to its bytes: hex digits, dashes and spaces
/// ignored, any case.
pub fn parse_recovery_key(text: &str) -> Option<Zeroizing<Vec<u8>>> {
    let digits: Zeroizing<String> =
        Zeroizing::new(text.chars().filter(|c| !matches!(c, '-' | ' ' | '\n' | '\r' | '\t')).collect());
    let bytes = Zeroizing::new(hex::decode(digits.as_bytes()).ok()?);
    (bytes.len() == RECOVERY_KEY_LEN).then_some(bytes)
}

/// The current boot state against the approved ones, for logs and status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootReport {
    pub pcrs: Vec<u8>,
    /// Hex SHA-256 values of the selected PCRs now.
    pub current: Vec<String>,
    /// The approved states, newest first.
    pub approved: Vec<Vec<String>>,
    pub is_approved: bool,
    pub window_open: bool,
    /// The recovery key file is still in the state directory.
    pub recovery_key_on_disk: bool,
}

impl BootReport {
    /// "the boot state changed: PCR 7 is …, approved: PCR 7 = …".
    pub fn mismatch_message(&self) -> String {
        let now = self.pcrs.iter().zip(&self.current).map(|(p, v)| format!("PCR {p} is {v}"));
        let approved = self
            .approved
            .iter()
            .map(|state| {
                self.pcrs.iter().zip(state).map(|(p, v)| format!("PCR {p} = {v}")).collect::<Vec<_>>().join(", ")
            })
            .collect::<Vec<_>>()
            .join("; or ");
        format!(
            "the boot state changed: {}; approved: {approved}. The TPM keys are bound to the approved boot state \
             ([keystore] pcrs = {}); if this change is expected (firmware or Secure Boot update), approve it with \
             `fidosealctl tpm approve-boot-state` and the recovery key; next time, run `fidosealctl tpm \
             allow-boot-change` before such an update",
            now.collect::<Vec<_>>().join(", "),
            selection_text(&self.pcrs)
        )
    }
}

/// Why a recovery failed.
pub(super) enum RecoveryError {
    /// Not a recovery key (format); the TPM was not asked.
    Malformed,
    /// The TPM refused the auth value (one more dictionary-attack failure).
    WrongKey,
    /// The TPM is in dictionary-attack lockout.
    Lockout,
    Op(OpError),
}

impl From<OpError> for RecoveryError {
    fn from(e: OpError) -> Self {
        RecoveryError::Op(e)
    }
}

/// The approval that matches the current boot state, ready for use.
struct Current {
    policy: Vec<u8>,
    ticket: TPMT_TK_VERIFIED,
}

/// The boot-state binding of a store with `pcrs` set.
pub struct BootBinding {
    state_dir: PathBuf,
    file: BootState,
    key_name: Vec<u8>,
    current: Option<Current>,
}

impl BootBinding {
    fn file_path(&self) -> PathBuf {
        self.state_dir.join(BOOT_STATE_FILE)
    }

    /// A's name (the generation's authPolicy names it).
    pub fn key_name(&self) -> &[u8] {
        &self.key_name
    }

    pub fn pcrs(&self) -> &[u8] {
        &self.file.pcrs
    }

    /// Whether the current boot state was approved (at start, by the update
    /// window, or since by the recovery key): the objects can be used.
    pub fn is_unlocked(&self) -> bool {
        self.current.is_some()
    }

    /// The authPolicy of a bound generation's objects.
    pub fn object_policy(&self) -> Vec<u8> {
        authorized_policy(&self.key_name)
    }

    /// A new approval key for `pcrs`, the current boot state approved, its
    /// sealed copies, `tpm-boot-state` and `tpm-recovery-key` written.
    pub(super) fn create(ctx: &mut Context, state_dir: &Path, pcrs: &[u8]) -> Result<Self, OpError> {
        let key = SigningKey::try_generate().map_err(|e| OpError::Internal(format!("no randomness: {e}")))?;
        let mut recovery = Zeroizing::new([0u8; RECOVERY_KEY_LEN]);
        getrandom::fill(&mut *recovery).map_err(|e| OpError::Internal(format!("no randomness: {e}")))?;
        let values = read_pcrs(ctx, pcrs)?;
        let policy = policy_pcr_digest(ctx, pcrs, &values)?;
        let signature = sign_approval(&key, &policy)?;
        let scalar = Zeroizing::new(key.to_bytes().to_vec());
        let (pcr_sealed, recovery_sealed) = with_approval_primary(ctx, |ctx, parent| {
            Ok((seal(ctx, parent, &scalar, Some(&policy), None)?, seal(ctx, parent, &scalar, None, Some(&*recovery))?))
        })?;
        let point = point_of(&key);
        let file = BootState {
            format: CURRENT_FORMAT,
            pcrs: pcrs.to_vec(),
            approval_key: point.clone(),
            approvals: vec![Approval { pcr_values: values, policy, signature }],
            pcr_sealed,
            recovery_sealed,
        };
        let key_name = approval_key_name(&point).map_err(OpError::Internal)?;
        let mut binding = Self { state_dir: state_dir.to_path_buf(), file, key_name, current: None };
        binding.save()?;
        let recovery_path = state_dir.join(RECOVERY_KEY_FILE);
        let text = Zeroizing::new(format!(
            "{}\n# fidoseal TPM recovery key: approves a changed boot state (`fidosealctl tpm approve-boot-state`).\n\
             # Keep it somewhere safe away from this machine, then delete this file.\n",
            recovery_text(&*recovery)
        ));
        crate::state::write_atomically(&recovery_path, text.as_bytes())
            .map_err(|e| OpError::Internal(format!("cannot write {}: {e}", recovery_path.display())))?;
        tracing::warn!(
            path = %recovery_path.display(),
            pcrs = %selection_text(pcrs),
            "boot-state binding on: a new recovery key was written; take it away for safe keeping and delete the file"
        );
        binding.current_is(ctx, 0)?;
        Ok(binding)
    }

    /// `tpm-boot-state` of a bound generation whose authPolicy names
    /// `key_name`.
    pub fn open(state_dir: &Path, key_name: &[u8]) -> Result<Self, String> {
        let path = state_dir.join(BOOT_STATE_FILE);
        let bytes = std::fs::read(&path).map_err(|e| {
            format!(
                "{} cannot be read ({e}), and the TPM key store's keys are bound to the boot state it approves: \
                 restore it from a backup",
                path.display()
            )
        })?;
        let file = BootState::decode(&bytes).map_err(|reason| format!("{} is damaged ({reason})", path.display()))?;
        let name = approval_key_name(&file.approval_key)?;
        if name != key_name {
            return Err(format!(
                "{} holds another approval key than the one the TPM keys are bound to: restore the right file",
                path.display()
            ));
        }
        Ok(Self { state_dir: state_dir.to_path_buf(), file, key_name: name, current: None })
    }

    fn save(&self) -> Result<(), OpError> {
        let path = self.file_path();
        crate::state::write_atomically(&path, &self.file.encode())
            .map_err(|e| OpError::Internal(format!("cannot write {}: {e}", path.display())))
    }

    fn current_is(&mut self, ctx: &mut Context, index: usize) -> Result<(), OpError> {
        let approval =
            self.file.approvals.get(index).ok_or_else(|| OpError::Internal("no such approval".into()))?.clone();
        let ticket = approval_ticket(ctx, &self.file.approval_key, &approval)?;
        self.current = Some(Current { policy: approval.policy, ticket });
        Ok(())
    }

    /// At start: is the current boot state approved? If not and the update
    /// window is open, approves it with the window's copy of A. The window
    /// is closed (its file deleted) in any case.
    pub(super) fn unlock(&mut self, ctx: &mut Context) -> Result<BootReport, OpError> {
        let values = read_pcrs(ctx, &self.file.pcrs)?;
        let window_path = self.state_dir.join(WINDOW_FILE);
        let window = match std::fs::read(&window_path) {
            Ok(bytes) => Some(bytes),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(OpError::Internal(format!("cannot read {}: {e}", window_path.display()))),
        };
        self.current = None;
        if let Some(index) = self.file.approvals.iter().position(|a| a.pcr_values == values) {
            self.current_is(ctx, index)?;
        } else if let Some(bytes) = &window {
            match self.approve_from_window(ctx, bytes, values) {
                Ok(()) => tracing::warn!(
                    pcrs = %selection_text(&self.file.pcrs),
                    "the boot state changed during an allowed update window: the new state is approved"
                ),
                Err(e) => tracing::error!(
                    path = %window_path.display(),
                    error = %op_error_text(&e),
                    "the update window could not approve the new boot state"
                ),
            }
        }
        if window.is_some() {
            // Closed at the first start after it was opened, used or not.
            if let Err(e) = std::fs::remove_file(&window_path) {
                tracing::error!(path = %window_path.display(), "cannot close the update window: {e}");
            }
        }
        self.report(ctx)
    }

    fn approve_from_window(&mut self, ctx: &mut Context, bytes: &[u8], values: Vec<Vec<u8>>) -> Result<(), OpError> {
        let window = UpdateWindow::decode(bytes).map_err(OpError::Internal)?;
        let key = with_approval_primary(ctx, |ctx, parent| unseal(ctx, parent, &window.sealed, Opening::Auth(&[])))?;
        self.approve(ctx, &key, values)
    }

    /// Approves `values` with A: a new approval (newest first), A re-sealed
    /// to it, the file written, the ticket cached.
    fn approve(&mut self, ctx: &mut Context, key: &SigningKey, values: Vec<Vec<u8>>) -> Result<(), OpError> {
        if point_of(key) != self.file.approval_key {
            return Err(OpError::Internal("the unsealed approval key is not this store's".into()));
        }
        let policy = policy_pcr_digest(ctx, &self.file.pcrs, &values)?;
        let signature = sign_approval(key, &policy)?;
        let scalar = Zeroizing::new(key.to_bytes().to_vec());
        let pcr_sealed = with_approval_primary(ctx, |ctx, parent| seal(ctx, parent, &scalar, Some(&policy), None))?;
        self.file.approvals.retain(|a| a.pcr_values != values);
        self.file.approvals.insert(0, Approval { pcr_values: values, policy, signature });
        self.file.approvals.truncate(MAX_APPROVALS);
        self.file.pcr_sealed = pcr_sealed;
        self.save()?;
        self.current_is(ctx, 0)
    }

    /// The current state against the approved ones.
    pub(super) fn report(&self, ctx: &mut Context) -> Result<BootReport, OpError> {
        let values = read_pcrs(ctx, &self.file.pcrs)?;
        let is_approved = self.file.approvals.iter().any(|a| a.pcr_values == values) && self.current.is_some();
        Ok(BootReport {
            pcrs: self.file.pcrs.clone(),
            current: hex_values(&values),
            approved: self.file.approvals.iter().map(|a| hex_values(&a.pcr_values)).collect(),
            is_approved,
            window_open: self.state_dir.join(WINDOW_FILE).exists(),
            recovery_key_on_disk: self.state_dir.join(RECOVERY_KEY_FILE).exists(),
        })
    }

    /// The clear error of an unapproved boot state, or Ok.
    pub(super) fn check(&self, ctx: &mut Context) -> Result<(), OpError> {
        match self.current {
            Some(_) => Ok(()),
            None => Err(self.mismatch(ctx)),
        }
    }

    /// A policy session that satisfies the objects' authPolicy in the
    /// current boot state: PolicyPCR(current values), PolicyAuthorize(the
    /// approved policy, A's ticket). `salt`: a salted session with
    /// parameter encryption. The caller flushes the session.
    pub(super) fn session(&self, ctx: &mut Context, salt: Option<KeyHandle>) -> Result<AuthSession, OpError> {
        let Some(current) = &self.current else {
            return Err(self.mismatch(ctx));
        };
        let session = start_session(ctx, salt, SessionType::Policy)?;
        let selection = selection_list(&self.file.pcrs)?;
        let approved = Digest::try_from(current.policy.clone()).map_err(at("approved policy"))?;
        let policy_ref = Nonce::try_from(POLICY_REF.to_vec()).map_err(at("policyRef"))?;
        let name = tss_esapi::structures::Name::try_from(self.key_name.clone()).map_err(at("approval key name"))?;
        let satisfied = PolicySession::try_from(session)
            .and_then(|policy| {
                let ticket = VerifiedTicket::try_from(current.ticket)?;
                ctx.execute_without_session(|c| {
                    c.policy_pcr(policy, Digest::default(), selection)?;
                    c.policy_authorize(policy, approved, policy_ref, &name, ticket)
                })
            })
            .map_err(at("TPM2_PolicyAuthorize"));
        match satisfied {
            Ok(()) => Ok(session),
            Err(OpError::Tpm { step, error }) => {
                flush_session(ctx, session);
                if classify(&error) == Fault::Lost {
                    return Err(OpError::Tpm { step, error });
                }
                // The PCRs moved since the approval matched.
                Err(self.mismatch(ctx))
            }
            Err(other) => {
                flush_session(ctx, session);
                Err(other)
            }
        }
    }

    fn mismatch(&self, ctx: &mut Context) -> OpError {
        match self.report(ctx) {
            Ok(report) => OpError::BootState(report.mismatch_message()),
            Err(e) => e,
        }
    }

    /// `fidosealctl tpm allow-boot-change`: in an approved state, A sealed
    /// with no PCR policy into the update window file.
    pub(super) fn open_window(&mut self, ctx: &mut Context) -> Result<(), OpError> {
        if self.current.is_none() {
            return Err(self.mismatch(ctx));
        }
        let pcrs = self.file.pcrs.clone();
        let sealed = with_approval_primary(ctx, |ctx, parent| {
            let key = unseal(ctx, parent, &self.file.pcr_sealed, Opening::Pcrs(&pcrs))?;
            let scalar = Zeroizing::new(key.to_bytes().to_vec());
            seal(ctx, parent, &scalar, None, None)
        })
        .map_err(|e| match e {
            // The PCRs moved after the approval matched.
            OpError::Tpm { ref error, .. } if classify(error) != Fault::Lost => self.mismatch(ctx),
            other => other,
        })?;
        let path = self.state_dir.join(WINDOW_FILE);
        crate::state::write_atomically(&path, &UpdateWindow::new(sealed).encode())
            .map_err(|e| OpError::Internal(format!("cannot write {}: {e}", path.display())))?;
        tracing::warn!(
            path = %path.display(),
            "update window open: at the next start a changed boot state is approved; until then, whoever has this \
             disk and this TPM can use the keys in any boot state"
        );
        Ok(())
    }

    /// `fidosealctl tpm approve-boot-state`: A unsealed with the recovery
    /// key, the current state approved.
    pub(super) fn approve_with_recovery(
        &mut self,
        ctx: &mut Context,
        recovery: &str,
    ) -> Result<BootReport, RecoveryError> {
        let recovery = parse_recovery_key(recovery).ok_or(RecoveryError::Malformed)?;
        let blob = self.file.recovery_sealed.clone();
        let key = with_approval_primary(ctx, |ctx, parent| unseal(ctx, parent, &blob, Opening::Auth(&recovery)))
            .map_err(|e| match e {
                OpError::Tpm { ref error, .. } => match (raw_code(error).map(|c| c & 0x8bf), classify(error)) {
                    // TPM_RC_AUTH_FAIL / TPM_RC_BAD_AUTH for session 1 (Part 2, 6.6.3).
                    (Some(0x88e | 0x8a2), _) => RecoveryError::WrongKey,
                    (_, Fault::Lockout) => RecoveryError::Lockout,
                    _ => RecoveryError::Op(e),
                },
                other => RecoveryError::Op(other),
            })?;
        let values = read_pcrs(ctx, &self.file.pcrs)?;
        self.approve(ctx, &key, values)?;
        tracing::warn!(pcrs = %selection_text(&self.file.pcrs), "the current boot state was approved with the recovery key");
        Ok(self.report(ctx)?)
    }
}

/// For logs.
fn op_error_text(e: &OpError) -> String {
    match e {
        OpError::Tpm { step, error } => format!("{step}: {}", super::errors::describe(error)),
        OpError::NotOurs => "the TPM refused a sealed object (TPM cleared?)".into(),
        OpError::Internal(m) | OpError::BootState(m) => m.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selections_are_checked() {
        assert!(check_selection(&[7]).is_ok());
        assert!(check_selection(&[0, 7, 23]).is_ok());
        assert!(check_selection(&[]).is_ok());
        assert!(check_selection(&[24]).unwrap_err().contains("24"));
        assert!(check_selection(&[7, 7]).unwrap_err().contains("twice"));
        assert_eq!(selection_text(&[7, 11]), "[7, 11]");
    }

    #[test]
    fn recovery_keys_read_back_as_written() {
        let bytes = [0xab; RECOVERY_KEY_LEN];
        let text = recovery_text(&bytes);
        assert_eq!(text.len(), 32 + 7);
        assert_eq!(parse_recovery_key(&text).unwrap().as_slice(), &bytes);
        assert_eq!(parse_recovery_key(&format!(" {}\n", text.to_uppercase())).unwrap().as_slice(), &bytes);
        assert!(parse_recovery_key(&text[..30]).is_none());
        assert!(parse_recovery_key("zz").is_none());
        assert!(parse_recovery_key("").is_none());
    }
}
