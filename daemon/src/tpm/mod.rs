//! The TPM 2.0 key store (`[keystore] backend = "tpm"`), through tss-esapi
//! 7.7 and any tpm2-tss TCTI (`device:/dev/tpmrm0` in production,
//! `swtpm:host=…,port=…` in tests). docs/tpm.md is the user-facing account.
//!
//! - Credential keys: `generate` asks the TPM for a fresh ECC P-256 signing
//!   key (ES256), or P-384 (ES384) when the TPM has that curve and SHA-384
//!   (probed at start: [`probe_algorithms`]), under the storage primary
//!   (TPM2_Create); the key handle is the compact blob of
//!   [`objects::KeyBlob`]. `sign` hashes authData ‖ clientDataHash with
//!   SHA-256 (SHA-384) in software (the input is public, an
//!   unrestricted key accepts an outside digest with a null ticket, and it
//!   saves a round trip and TPM2_Hash's 1024-byte input limit), then
//!   TPM2_Load → TPM2_Sign → TPM2_FlushContext, and DER-encodes (r, s).
//! - Secrets: one TPM-generated HMAC-SHA-256 key per generation is the
//!   store's PRF. `derive_secret(c)` = TPM2_HMAC(key, 0x02 ‖ c); the
//!   AES-256-GCM key that seals credential IDs = TPM2_HMAC(key, 0x01 ‖ label),
//!   computed once at start and kept in zeroizing memory. Both HMAC calls
//!   run in a salted HMAC session with parameter encryption, so the PRF's
//!   input (a PIN hash) and output never cross the bus to the TPM in the
//!   clear. A copy of the state directory holds only TPM-encrypted blobs:
//!   elsewhere nothing in it opens.
//! - Credential IDs: `seal_credential_id` = `version | nonce(12) |
//!   AES-256-GCM(payload) | tag(16)` with `version ‖ rp_id_hash` as
//!   associated data (29 bytes of overhead). Forged, altered, foreign and
//!   other-rp IDs fail the tag check in software, before any TPM command.
//! - Reset: a new generation (so a new primary, under which no old blob
//!   loads) and a new HMAC key, written to the state file before use.
//! - The TPM cleared (or the state directory copied to another machine):
//!   found at start by the primary's name, which no longer matches. The
//!   daemon says so, keeps the old files aside, resets the credential state
//!   (its credentials and PIN depended on the lost keys) and starts over.
//! - Errors: a lost connection (TCTI error, TPM restarted, object gone) is
//!   retried once on a new connection; lockout, memory and failure are
//!   logged with what to do and returned as [`KeyStoreError`]s; the daemon
//!   keeps serving.
//!
//! The primary stays loaded between requests (re-creating an ECC primary
//! costs tens of milliseconds on hardware TPMs); every other object is
//! flushed after use, so at most three transient objects are ever loaded
//! (during reset) and nothing leaks.

pub mod admin;
mod boot_state_file;
mod errors;
#[cfg(test)]
mod es384_tests;
/// `pub` for the benchmark (benches/tpm_sign.rs).
pub mod objects;
pub mod pcr_policy;
#[cfg(test)]
pub(crate) mod pcr_tests;
mod pin_object;
#[cfg(test)]
mod pin_tests;
pub mod rollback;
#[cfg(test)]
mod rollback_tests;
mod state_file;
#[cfg(test)]
pub mod swtpm;
#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, Mutex, MutexGuard, Once};

use aes_gcm::aead::{Aead, Payload};
use aes_gcm::{Aes256Gcm, KeyInit};
use fidoseal_ctap::authenticator::FIDOSEAL_AAGUID;
use fidoseal_ctap::machine_attestation;
use fidoseal_ctap::platform::{Algorithm, CreatedKey, KeyStore, KeyStoreError, PinCheck, Secret32};
use sha2::{Digest as _, Sha256, Sha384};
use tss_esapi::attributes::SessionAttributesBuilder;
use tss_esapi::constants::{
    AlgorithmIdentifier, CapabilityType, EccCurveIdentifier, PropertyTag, SessionType, StartupType,
};
use tss_esapi::handles::{KeyHandle, ObjectHandle, SessionHandle};
use tss_esapi::interface_types::algorithm::HashingAlgorithm;
use tss_esapi::interface_types::resource_handles::Hierarchy;
use tss_esapi::interface_types::session_handles::AuthSession;
use tss_esapi::structures::{
    Auth, CapabilityData, Digest, MaxBuffer, Private, Public, Signature, SignatureScheme, SymmetricDefinition,
};
use tss_esapi::traits::{Marshall, UnMarshall};
use tss_esapi::{Context, TctiNameConf};
use zeroize::Zeroizing;

use self::errors::{classify, describe, Fault};
use self::objects::{Curve, KeyBlob};
use self::state_file::Persisted;
// For the tests' `use super::*` (objects.rs builds the public keys now).
#[cfg(test)]
use fidoseal_ctap::platform::PublicKey;

/// The kernel's TPM resource manager.
pub const DEFAULT_TCTI: &str = "device:/dev/tpmrm0";
/// The key store's file in the state directory.
pub const STATE_FILE: &str = "tpm-keystore";

const CREDENTIAL_ID_VERSION: u8 = 0x54; // 'T': never the software store's 1
const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;
/// Domain separation of the PRF's inputs.
const PRF_SEALING_KEY: u8 = 0x01;
const PRF_DERIVE: u8 = 0x02;
const PRF_DERIVE_HASHED: u8 = 0x03;
/// The key that signs a bound store's accept files (rollback.rs).
const PRF_ACCEPT: u8 = 0x04;
const SEALING_KEY_LABEL: &[u8] = b"fidoseal credential id sealing key v1";
/// Longer `derive_secret` contexts are hashed first (TPM2_HMAC takes at most
/// 1024 bytes per call).
const MAX_DIRECT_CONTEXT: usize = 512;

/// How to reach the TPM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TpmSettings {
    /// A tpm2-tss TCTI string: `device:/dev/tpmrm0`, `swtpm:host=…,port=…`,
    /// `mssim:…` or `tabrmd:…`.
    pub tcti: String,
    /// A file holding the owner hierarchy's authorization value, if the
    /// administrator set one (`tpm2_changeauth -c owner`); one trailing
    /// newline is ignored.
    pub owner_auth_file: Option<PathBuf>,
}

impl Default for TpmSettings {
    fn default() -> Self {
        Self { tcti: DEFAULT_TCTI.into(), owner_auth_file: None }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TpmSetupError {
    /// No TPM at the configured TCTI, or it does not answer.
    #[error("{0}")]
    Unreachable(String),
    #[error("{path} is damaged ({reason}); refusing to replace it, since every TPM credential depends on it — restore it from a backup or move it away to start over")]
    Damaged { path: PathBuf, reason: String },
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    /// The owner_auth_file may be read by group or others.
    #[error(
        "{path} ([keystore] owner_auth_file) has mode {mode:04o}: the TPM owner password must be readable by its \
         owner only; run `chmod 600 {path}` (and keep it owned by root)"
    )]
    Exposed { path: PathBuf, mode: u32 },
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error("TPM key store: {0}")]
    Tpm(String),
    /// `[keystore] pcrs` differs from what the key store's TPM objects
    /// were made with (pcr_policy.rs).
    #[error("{0}")]
    Configuration(String),
}

/// How the store came up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Startup {
    /// The state file was there and this TPM still has its keys.
    Reopened,
    /// First start on this state directory.
    Created,
    /// The TPM no longer has the keys of the state file (cleared, or the
    /// state directory comes from another machine): every credential made
    /// before is gone; the old files were kept under the names given.
    StartedOver { kept: Vec<PathBuf> },
}

/// An open connection with the storage primary loaded.
struct Connection {
    ctx: Context,
    primary: KeyHandle,
}

/// Where the TPM is and which primary is ours.
struct Tpm {
    tcti: TctiNameConf,
    tcti_text: String,
    owner_auth: Option<Zeroizing<Vec<u8>>>,
    generation: [u8; 32],
    primary_name: Vec<u8>,
    conn: Option<Connection>,
}

enum OpError {
    Tpm {
        step: &'static str,
        error: tss_esapi::Error,
    },
    /// The key handle was not made by this TPM under this primary.
    NotOurs,
    Internal(String),
    /// The keys are bound to the boot state, and the current one is not
    /// approved (pcr_policy.rs): the message says what changed.
    BootState(String),
}

fn at(step: &'static str) -> impl FnOnce(tss_esapi::Error) -> OpError {
    move |error| OpError::Tpm { step, error }
}

/// Runs `op`, then flushes the transient object or session `handle`
/// whatever `op` gave (a TPM has only a few slots): `op`'s error first,
/// then the flush's (`step`).
fn then_flush<T>(
    ctx: &mut Context,
    handle: ObjectHandle,
    step: &'static str,
    op: impl FnOnce(&mut Context) -> Result<T, OpError>,
) -> Result<T, OpError> {
    let result = op(ctx);
    let flushed = ctx.flush_context(handle).map_err(at(step));
    let value = result?;
    flushed?;
    Ok(value)
}

pub struct TpmKeyStore {
    /// Shared with the anti-rollback anchor (rollback.rs), which uses the
    /// same connection: swtpm serves one at a time.
    tpm: Arc<Mutex<Tpm>>,
    path: PathBuf,
    hmac_public: Public,
    hmac_private: Private,
    /// None while the boot state is not approved (pcr_policy.rs).
    sealing_key: Option<Zeroizing<[u8; 32]>>,
    /// `[keystore] pcrs`: the generation's objects are bound to the boot state.
    boot: Option<pcr_policy::BootBinding>,
    startup: Startup,
    /// The TPM's manufacturer as it names itself (TPM_PT_MANUFACTURER).
    manufacturer: String,
    /// `machine-attestation-tpm` in the state directory.
    machine_key_path: PathBuf,
    /// The machine attestation key's blob and certificate, once loaded.
    machine_key: Option<(Vec<u8>, Vec<u8>)>,
    /// What this TPM can make credential keys for ([`probe_algorithms`]).
    algorithms: Vec<Algorithm>,
    /// Whether the boot state is approved (always, unbound): fidoseald
    /// opens the anti-rollback anchor and the credential states only then
    /// (the bound anchor key cannot be computed before), so it waits for
    /// this to turn true ([`Self::approval`]).
    approved: tokio::sync::watch::Sender<bool>,
}

impl std::fmt::Debug for TpmKeyStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TpmKeyStore").field("tcti", &self.tpm().tcti_text).finish_non_exhaustive()
    }
}

/// ESYS and the TCTIs log to stderr by default (every failed TPM command is
/// a "WARNING:esys:…" line): silence them unless the administrator asked.
fn quiet_tss_logs() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        if std::env::var_os("TSS2_LOG").is_none() {
            // Before the first tpm2-tss call of this process, which reads it.
            std::env::set_var("TSS2_LOG", "all+none");
        }
    });
}

fn unreachable_hint(tcti: &str) -> String {
    let how = if let Some(path) = tcti.strip_prefix("device:") {
        let path = if path.is_empty() { "/dev/tpm0" } else { path };
        let missing = if Path::new(path).exists() { String::new() } else { format!("{path} does not exist. ") };
        format!(
            "{missing}Is there a TPM 2.0 (`ls -l /dev/tpm*`; in a virtual machine add a TPM device, e.g. QEMU's tpm-tis or tpm-crb \
             backed by swtpm), is its driver loaded (`modprobe tpm_tis` or `modprobe tpm_crb`; /dev/tpmrm0 is the kernel's resource \
             manager, present since Linux 4.12), may fidoseald open {path} (root, or the tss group), and is libtss2-tcti-device0 installed?"
        )
    } else {
        "Is the TPM (or swtpm) listening there, and is the TCTI's libtss2-tcti-* package installed?".to_string()
    };
    format!(
        "{how} Or set [keystore] tcti to the TPM to use. fidoseald never falls back to the software key store by itself: \
         to use it, set [keystore] backend = \"software\"."
    )
}

fn random32() -> Result<[u8; 32], KeyStoreError> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| KeyStoreError::Backend(format!("no randomness: {e}")))?;
    Ok(bytes)
}

/// Creates (re-creates) the storage primary of a generation.
fn create_primary(ctx: &mut Context, generation: &[u8; 32]) -> Result<(KeyHandle, Vec<u8>), OpError> {
    let template = objects::primary_template(generation).map_err(at("building the primary template"))?;
    let created = ctx
        .execute_with_session(Some(AuthSession::Password), |c| {
            c.create_primary(Hierarchy::Owner, template, None, None, None, None)
        })
        .map_err(at("TPM2_CreatePrimary"))?;
    let handle = created.key_handle;
    match ctx.tr_get_name(handle.into()) {
        Ok(name) => Ok((handle, name.value().to_vec())),
        Err(error) => {
            let _ = ctx.flush_context(handle.into());
            Err(OpError::Tpm { step: "reading the primary's name", error })
        }
    }
}

/// TPM2_Create of a new object under `parent`.
fn create_object(ctx: &mut Context, parent: KeyHandle, template: Public) -> Result<(Public, Private), OpError> {
    let created = ctx
        .execute_with_session(Some(AuthSession::Password), |c| c.create(parent, template, None, None, None, None))
        .map_err(at("TPM2_Create"))?;
    Ok((created.out_public, created.out_private))
}

/// TPM2_HMAC with the store's PRF key: load, HMAC in a salted session with
/// command and response parameter encryption, flush.
fn tpm_hmac(
    ctx: &mut Context,
    parent: KeyHandle,
    public: &Public,
    private: &Private,
    data: &[u8],
    boot: Option<&pcr_policy::BootBinding>,
) -> Result<Zeroizing<[u8; 32]>, OpError> {
    let key = ctx
        .execute_with_session(Some(AuthSession::Password), |c| c.load(parent, private.clone(), public.clone()))
        .map_err(at("TPM2_Load of the HMAC key"))?;
    then_flush(ctx, key.into(), "TPM2_FlushContext of the HMAC key", |ctx| encrypted_hmac(ctx, parent, key, data, boot))
}

fn encrypted_hmac(
    ctx: &mut Context,
    salt_key: KeyHandle,
    key: KeyHandle,
    data: &[u8],
    boot: Option<&pcr_policy::BootBinding>,
) -> Result<Zeroizing<[u8; 32]>, OpError> {
    let buffer = MaxBuffer::try_from(data.to_vec()).map_err(at("building the HMAC input"))?;
    if let Some(boot) = boot {
        // A salted policy session, parameter-encrypted like the HMAC session below.
        let session = boot.session(ctx, Some(salt_key))?;
        let result = ctx
            .execute_with_session(Some(session), |c| c.hmac(key.into(), buffer, HashingAlgorithm::Sha256))
            .map_err(at("TPM2_HMAC"));
        pcr_policy::flush_session(ctx, session);
        return hmac_output(result?);
    }
    let session = salted_session(ctx, salt_key, true, true)?;
    let result = ctx
        .execute_with_session(Some(session), |c| c.hmac(key.into(), buffer, HashingAlgorithm::Sha256))
        .map_err(at("TPM2_HMAC"));
    let flushed =
        ctx.flush_context(SessionHandle::from(session).into()).map_err(at("TPM2_FlushContext of the session"));
    let digest = result?;
    flushed?;
    hmac_output(digest)
}

/// An HMAC session salted with `primary` (ECDH), AES-128-CFB parameter
/// encryption of the command (`decrypt`) and/or the response (`encrypt`).
fn salted_session(ctx: &mut Context, primary: KeyHandle, decrypt: bool, encrypt: bool) -> Result<AuthSession, OpError> {
    let session = ctx
        .execute_without_session(|c| {
            c.start_auth_session(
                Some(primary),
                None,
                None,
                SessionType::Hmac,
                SymmetricDefinition::AES_128_CFB,
                HashingAlgorithm::Sha256,
            )
        })
        .map_err(at("TPM2_StartAuthSession"))?
        .ok_or_else(|| OpError::Internal("TPM2_StartAuthSession returned no session".into()))?;
    let (attributes, mask) =
        SessionAttributesBuilder::new().with_decrypt(decrypt).with_encrypt(encrypt).with_continue_session(true).build();
    if let Err(error) = ctx.tr_sess_set_attributes(session, attributes, mask) {
        let _ = ctx.flush_context(SessionHandle::from(session).into());
        return Err(OpError::Tpm { step: "setting the session attributes", error });
    }
    Ok(session)
}

fn hmac_output(digest: Digest) -> Result<Zeroizing<[u8; 32]>, OpError> {
    let bytes: [u8; 32] = digest
        .value()
        .try_into()
        .map_err(|_| OpError::Internal(format!("TPM2_HMAC returned {} bytes, not 32", digest.value().len())))?;
    Ok(Zeroizing::new(bytes))
}

/// The credential algorithms of a TPM with these ECC curves, which has
/// SHA-384 or not, in order of preference: ES256 first (every TPM 2.0 has
/// it: TCG PC Client PTP), then ES384 if the TPM has both P-384 and SHA-384.
fn algorithms_of(curves: &[EccCurveIdentifier], has_sha384: bool) -> Vec<Algorithm> {
    let mut algorithms = vec![Algorithm::Es256];
    if has_sha384 && curves.contains(&EccCurveIdentifier::NistP384) {
        algorithms.push(Algorithm::Es384);
    }
    algorithms
}

/// Asks the TPM (TPM2_GetCapability: TPM_CAP_ECC_CURVES, TPM_CAP_ALGS) which
/// credential algorithms it can do; ES256 only if it cannot say.
fn probe_algorithms(ctx: &mut Context) -> Vec<Algorithm> {
    let curves = match ctx.execute_without_session(|c| c.get_capability(CapabilityType::EccCurves, 0, 64)) {
        Ok((CapabilityData::EccCurves(list), _)) => list.into_inner(),
        Ok(_) => Vec::new(),
        Err(e) => {
            tracing::warn!(error = %e, "TPM2_GetCapability(ECC curves) failed: offering ES256 only");
            Vec::new()
        }
    };
    let sha384 = u32::from(tss_esapi::constants::tss::TPM2_ALG_SHA384);
    let has_sha384 = match ctx.execute_without_session(|c| c.get_capability(CapabilityType::Algorithms, sha384, 1)) {
        Ok((CapabilityData::Algorithms(list), _)) => list.find(AlgorithmIdentifier::Sha384).is_some(),
        _ => false,
    };
    let algorithms = algorithms_of(&curves, has_sha384);
    tracing::info!(curves = ?curves, sha384 = has_sha384, algorithms = ?algorithms, "TPM credential algorithms");
    algorithms
}

#[allow(dead_code)]
/// Transient objects loaded in the TPM as this connection sees them (all
/// of the TPM's without a resource manager, only ours through /dev/tpmrm0).
fn transient_handles(ctx: &mut Context) -> Result<usize, OpError> {
    let (data, _) = ctx
        .execute_without_session(|c| {
            c.get_capability(CapabilityType::Handles, tss_esapi::constants::tss::TPM2_TRANSIENT_FIRST, 64)
        })
        .map_err(at("TPM2_GetCapability(handles)"))?;
    match data {
        CapabilityData::Handles(list) => Ok(list.into_inner().len()),
        _ => Err(OpError::Internal("TPM2_GetCapability answered with something else than handles".into())),
    }
}

/// Opens a context, sets the owner auth, and starts the TPM up if nobody did.
fn open_context(tcti: &TctiNameConf, tcti_text: &str, owner_auth: Option<&[u8]>) -> Result<(Context, String), String> {
    quiet_tss_logs();
    let mut ctx = Context::new(tcti.clone())
        .map_err(|e| format!("cannot open the TPM through TCTI \"{tcti_text}\": {}", describe(&e)))?;
    if let Some(auth) = owner_auth {
        let auth =
            Auth::try_from(auth.to_vec()).map_err(|_| "the owner auth value is longer than 64 bytes".to_string())?;
        ctx.tr_set_auth(ObjectHandle::from(Hierarchy::Owner), auth)
            .map_err(|e| format!("cannot set the owner auth value: {}", describe(&e)))?;
    }
    let manufacturer = match ctx.get_tpm_property(PropertyTag::Manufacturer) {
        Ok(value) => value,
        Err(e) if errors::raw_code(&e) == Some(0x100) => {
            // TPM_RC_INITIALIZE: a bare TPM (swtpm without startup-clear).
            ctx.startup(StartupType::Clear).map_err(|e| {
                format!("the TPM at \"{tcti_text}\" needs TPM2_Startup, which failed: {}", describe(&e))
            })?;
            ctx.get_tpm_property(PropertyTag::Manufacturer)
                .map_err(|e| format!("the TPM at \"{tcti_text}\" does not answer: {}", describe(&e)))?
        }
        Err(e) => return Err(format!("the TPM at \"{tcti_text}\" does not answer: {}", describe(&e))),
    };
    let manufacturer: String = manufacturer
        .unwrap_or(0)
        .to_be_bytes()
        .iter()
        .filter(|b| b.is_ascii_graphic())
        .map(|&b| char::from(b))
        .collect();
    Ok((ctx, manufacturer))
}

impl Tpm {
    /// The connection, re-established if it was lost.
    fn connection(&mut self) -> Result<&mut Connection, KeyStoreError> {
        if self.conn.is_none() {
            let (mut ctx, _) = open_context(&self.tcti, &self.tcti_text, self.owner_auth.as_deref().map(Vec::as_slice))
                .map_err(|message| {
                    tracing::error!("TPM unreachable: {message}");
                    KeyStoreError::Backend(format!("TPM unreachable: {message}"))
                })?;
            let (primary, name) = create_primary(&mut ctx, &self.generation).map_err(|e| match e {
                OpError::Tpm { step, error } => report("reconnect", step, &error, classify(&error)),
                OpError::NotOurs | OpError::Internal(_) | OpError::BootState(_) => {
                    KeyStoreError::Backend("cannot re-create the primary".into())
                }
            })?;
            if name != self.primary_name {
                let _ = ctx.flush_context(primary.into());
                tracing::error!(
                    tcti = %self.tcti_text,
                    "the TPM's owner hierarchy changed while fidoseald was running (TPM cleared?): every credential is unusable; \
                     restart fidoseald to start over"
                );
                return Err(KeyStoreError::Backend("the TPM was cleared while running; restart fidoseald".into()));
            }
            tracing::info!(tcti = %self.tcti_text, "reconnected to the TPM");
            self.conn = Some(Connection { ctx, primary });
        }
        self.conn.as_mut().ok_or_else(|| KeyStoreError::Backend("no TPM connection".into()))
    }

    /// Runs `op` on the connection; a lost connection is re-established and
    /// `op` tried once more (every operation here may safely run twice).
    fn run<T>(
        &mut self,
        operation: &'static str,
        mut op: impl FnMut(&mut Connection) -> Result<T, OpError>,
    ) -> Result<T, KeyStoreError> {
        for attempt in 0..2 {
            let conn = self.connection()?;
            let error = match op(conn) {
                Ok(value) => return Ok(value),
                Err(OpError::NotOurs) => return Err(KeyStoreError::NotAuthentic),
                Err(OpError::Internal(message)) => {
                    tracing::error!(operation, "TPM key store: {message}");
                    return Err(KeyStoreError::Backend(message));
                }
                Err(OpError::BootState(message)) => {
                    tracing::error!(operation, "{message}");
                    return Err(KeyStoreError::Backend(message));
                }
                Err(OpError::Tpm { step, error }) => (step, error),
            };
            let (step, error) = error;
            let fault = classify(&error);
            if fault == Fault::Lost {
                // Dropping the context flushes what it still can.
                self.conn = None;
                if attempt == 0 {
                    tracing::warn!(operation, step, error = %describe(&error), "lost the TPM connection; reconnecting");
                    continue;
                }
            }
            return Err(report(operation, step, &error, fault));
        }
        Err(KeyStoreError::Backend("TPM connection lost twice".into()))
    }
}

/// Logs a TPM failure with what to do about it, and turns it into the
/// error the CTAP core maps to a status code.
fn report(operation: &str, step: &str, error: &tss_esapi::Error, fault: Fault) -> KeyStoreError {
    let detail = describe(error);
    match fault {
        Fault::Exhausted => {
            tracing::error!(
                operation, step, error = %detail,
                "the TPM is out of memory for objects or sessions; without a resource manager another program may hold them \
                 (use device:/dev/tpmrm0, not /dev/tpm0)"
            );
            KeyStoreError::Exhausted(format!("TPM out of memory in {step}: {detail}"))
        }
        Fault::Lockout => {
            tracing::error!(
                operation, step, error = %detail,
                "the TPM is in dictionary-attack lockout; fidoseal's keys are noDA, so something else failed authorizations \
                 (a wrong owner_auth_file?): wait for the lockout to expire or clear it with `tpm2_dictionarylockout -c`"
            );
            KeyStoreError::Backend(format!("TPM in dictionary-attack lockout ({step})"))
        }
        Fault::Busy => {
            tracing::warn!(operation, step, error = %detail, "the TPM is busy; the client may try again");
            KeyStoreError::Backend(format!("TPM busy in {step}: {detail}"))
        }
        Fault::Failed => {
            tracing::error!(operation, step, error = %detail, "the TPM is in failure mode; the machine needs a reboot");
            KeyStoreError::Backend(format!("TPM failure mode ({step})"))
        }
        Fault::Lost => {
            tracing::error!(operation, step, error = %detail, "the TPM is unreachable");
            KeyStoreError::Backend(format!("TPM unreachable in {step}: {detail}"))
        }
        Fault::Refused | Fault::Other => {
            tracing::error!(operation, step, error = %detail, "TPM command failed");
            KeyStoreError::Backend(format!("{step} failed: {detail}"))
        }
    }
}

fn setup_error(what: &str, error: OpError) -> TpmSetupError {
    match error {
        OpError::Tpm { step, error } => {
            let extra = match (errors::raw_code(&error).map(|c| c & 0xfff), classify(&error)) {
                // TPM_RC_BAD_AUTH / AUTH_FAIL on the owner hierarchy
                (Some(0x9a2 | 0x1a2 | 0x98e | 0x18e), _) => {
                    " (the owner hierarchy has an authorization value: give it in [keystore] owner_auth_file)"
                }
                (_, Fault::Lockout) => {
                    " (the TPM is in dictionary-attack lockout: wait, or `tpm2_dictionarylockout -c`)"
                }
                _ => "",
            };
            TpmSetupError::Tpm(format!("{what}: {step} failed: {}{extra}", describe(&error)))
        }
        OpError::NotOurs => TpmSetupError::Tpm(format!("{what}: the TPM refused a blob of the state file")),
        OpError::Internal(message) => TpmSetupError::Tpm(format!("{what}: {message}")),
        OpError::BootState(message) => TpmSetupError::Tpm(format!("{what}: {message}")),
    }
}

/// Reads the owner auth file: its bytes, without one trailing newline.
/// A file that group or others may read is refused, as the policy refuses
/// such an enterprise attestation key: a password others can read protects
/// nothing.
fn read_owner_auth(path: &Path) -> Result<Zeroizing<Vec<u8>>, TpmSetupError> {
    use std::io::Read;
    use std::os::unix::fs::PermissionsExt;
    let read_error = |source| TpmSetupError::Read { path: path.into(), source };
    // The mode is checked on the file opened, not on the name.
    let file = std::fs::File::open(path).map_err(read_error)?;
    let mode = file.metadata().map_err(read_error)?.permissions().mode();
    if mode & 0o077 != 0 {
        return Err(TpmSetupError::Exposed { path: path.into(), mode: mode & 0o7777 });
    }
    // Sized up front (a growing Vec would leave unzeroized copies behind);
    // an authorization value is at most a digest long, so 4 KiB is plenty.
    const MAX_LEN: u64 = 4096;
    let mut bytes = Zeroizing::new(Vec::with_capacity(MAX_LEN as usize + 1));
    file.take(MAX_LEN).read_to_end(&mut bytes).map_err(read_error)?;
    if bytes.ends_with(b"\n") {
        bytes.pop();
        if bytes.ends_with(b"\r") {
            bytes.pop();
        }
    }
    Ok(bytes)
}

/// A generation's objects: the loaded primary, what goes into the state
/// file, the PRF key and the sealing key derived from it.
struct Generation {
    primary: KeyHandle,
    persisted: Persisted,
    hmac_public: Public,
    hmac_private: Private,
    /// None while the boot state is not approved (pcr_policy.rs).
    sealing_key: Option<Zeroizing<[u8; 32]>>,
}

/// A new generation: primary, PRF key, sealing key. Leaves the new primary
/// loaded; the caller persists before use.
fn new_generation(ctx: &mut Context, boot: Option<&pcr_policy::BootBinding>) -> Result<Generation, OpError> {
    let generation = random32().map_err(|e| OpError::Internal(e.to_string()))?;
    let (primary, primary_name) = create_primary(ctx, &generation)?;
    let result = (|| {
        let policy = boot.map(pcr_policy::BootBinding::object_policy);
        let template = objects::hmac_key_template()
            .and_then(|t| objects::bound(t, policy.as_deref()))
            .map_err(at("building the HMAC key template"))?;
        let (hmac_public, hmac_private) = create_object(ctx, primary, template)?;
        let sealing_key = Some(sealing_key(ctx, primary, &hmac_public, &hmac_private, boot)?);
        let persisted = Persisted {
            generation,
            primary_name,
            hmac_public: hmac_public.marshall().map_err(at("marshalling the HMAC key's public area"))?,
            hmac_private: hmac_private.value().to_vec(),
            approval_key_name: boot.map(|b| b.key_name().to_vec()),
        };
        Ok(Generation { primary, persisted, hmac_public, hmac_private, sealing_key })
    })();
    if result.is_err() {
        let _ = ctx.flush_context(primary.into());
    }
    result
}

fn sealing_key(
    ctx: &mut Context,
    primary: KeyHandle,
    public: &Public,
    private: &Private,
    boot: Option<&pcr_policy::BootBinding>,
) -> Result<Zeroizing<[u8; 32]>, OpError> {
    let mut input = vec![PRF_SEALING_KEY];
    input.extend_from_slice(SEALING_KEY_LABEL);
    tpm_hmac(ctx, primary, public, private, &input, boot)
}

/// The boot-state binding a stored generation was made with, checked
/// against `[keystore] pcrs` (`pcrs`). A difference is refused: a TPM
/// object's authPolicy is fixed when it is made, and nothing is reset
/// without the administrator saying so.
fn pcr_policy_of(
    state_dir: &Path,
    path: &Path,
    persisted: &Persisted,
    pcrs: &[u8],
) -> Result<Option<pcr_policy::BootBinding>, TpmSetupError> {
    let configured = pcr_policy::selection_text(pcrs);
    let apply = format!(
        "to apply pcrs = {configured}, every passkey and the PIN must be made again (the TPM objects' policy is fixed \
         when they are made): stop fidoseald, move {} aside (credentials.db is then set aside at start), and start it",
        path.display()
    );
    let Some(name) = &persisted.approval_key_name else {
        if pcrs.is_empty() {
            return Ok(None);
        }
        return Err(TpmSetupError::Configuration(format!(
            "[keystore] pcrs = {configured}, but the TPM key store in {} was made without boot-state binding. To keep \
             its passkeys, remove pcrs (or set pcrs = []); {apply}",
            path.display()
        )));
    };
    let boot = pcr_policy::BootBinding::open(state_dir, name).map_err(TpmSetupError::Tpm)?;
    if boot.pcrs() != pcrs {
        let made = pcr_policy::selection_text(boot.pcrs());
        return Err(TpmSetupError::Configuration(format!(
            "[keystore] pcrs = {configured}, but the TPM key store in {} is bound to pcrs = {made}. To keep its \
             passkeys, set pcrs = {made} again; {apply}",
            path.display()
        )));
    }
    Ok(Some(boot))
}

/// A connection to the TPM, before the store on it is reopened or created.
struct Opened {
    tcti: TctiNameConf,
    tcti_text: String,
    owner_auth: Option<Zeroizing<Vec<u8>>>,
    ctx: Context,
    manufacturer: String,
    /// The state file.
    path: PathBuf,
    machine_key_path: PathBuf,
}

impl Opened {
    fn connect(settings: &TpmSettings, state_dir: &Path, path: PathBuf) -> Result<Self, TpmSetupError> {
        let tcti_text = settings.tcti.clone();
        let tcti = TctiNameConf::from_str(&tcti_text).map_err(|_| {
            TpmSetupError::Unreachable(format!(
                "[keystore] tcti = \"{tcti_text}\" is not a TCTI fidoseald understands: use \"device:/dev/tpmrm0\", \
                 \"swtpm:host=HOST,port=PORT\", \"mssim:host=HOST,port=PORT\" or \"tabrmd:…\""
            ))
        })?;
        let owner_auth = settings.owner_auth_file.as_deref().map(read_owner_auth).transpose()?;
        let (mut ctx, manufacturer) = open_context(&tcti, &tcti_text, owner_auth.as_deref().map(Vec::as_slice))
            .map_err(|message| TpmSetupError::Unreachable(format!("{message}. {}", unreachable_hint(&tcti_text))))?;
        pin_object::log_dictionary_attack_parameters(&mut ctx);
        let machine_key_path = crate::machine_key::path(state_dir, "tpm");
        Ok(Self { tcti, tcti_text, owner_auth, ctx, manufacturer, path, machine_key_path })
    }
}

impl TpmKeyStore {
    /// Opens the TPM key store of `state_dir`: reaches the TPM, then reopens
    /// the store its state file describes ([`Self::reopen`]) or, on first
    /// start or when the TPM no longer has those keys, creates one
    /// ([`Self::create`]).
    /// Without boot-state binding (the tests and the benchmark; fidoseald
    /// calls [`Self::open_bound`] with its `[keystore] pcrs`).
    #[cfg_attr(not(test), allow(dead_code))]
    pub fn open(settings: &TpmSettings, state_dir: &Path) -> Result<Self, TpmSetupError> {
        Self::open_bound(settings, state_dir, &[])
    }

    /// [`Self::open`] with `[keystore] pcrs` (empty: off). The setting must
    /// be the one the store's TPM objects were made with (a key's policy is
    /// fixed when it is made): otherwise the store refuses to open, and says
    /// how to keep the old setting or apply the new one.
    pub fn open_bound(settings: &TpmSettings, state_dir: &Path, pcrs: &[u8]) -> Result<Self, TpmSetupError> {
        Self::open_with(settings, state_dir, pcrs, true)
    }

    /// [`Self::open_bound`] of a store that must be there and still have
    /// its keys: nothing is created, started over or set aside (the
    /// administrator's commands, with fidoseald stopped).
    pub fn open_existing(settings: &TpmSettings, state_dir: &Path, pcrs: &[u8]) -> Result<Self, TpmSetupError> {
        Self::open_with(settings, state_dir, pcrs, false)
    }

    fn open_with(settings: &TpmSettings, state_dir: &Path, pcrs: &[u8], create: bool) -> Result<Self, TpmSetupError> {
        pcr_policy::check_selection(pcrs).map_err(TpmSetupError::Configuration)?;
        let path = state_dir.join(STATE_FILE);
        let persisted = match std::fs::read(&path) {
            Ok(bytes) => Some(
                Persisted::decode(&bytes).map_err(|reason| TpmSetupError::Damaged { path: path.clone(), reason })?,
            ),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(source) => return Err(TpmSetupError::Read { path, source }),
        };
        let boot = match &persisted {
            Some(persisted) => pcr_policy_of(state_dir, &path, persisted, pcrs)?,
            None => None,
        };
        if !create && persisted.is_none() {
            return Err(TpmSetupError::Configuration(format!("there is no TPM key store in {}", state_dir.display())));
        }
        let opened = Opened::connect(settings, state_dir, path)?;
        let Some(persisted) = persisted else {
            return Self::create(opened, Startup::Created, pcrs);
        };
        match Self::reopen(opened, persisted, boot)? {
            Ok(store) => Ok(store),
            Err(_) if !create => Err(TpmSetupError::Tpm(
                "this TPM no longer has the key store's keys (cleared, or another machine's state directory): \
                 start fidoseald to start over"
                    .into(),
            )),
            Err(opened) => {
                let kept = vec![Self::keep_state_file_aside(&opened.path)?];
                tracing::error!(
                    tcti = %opened.tcti_text, kept = ?kept,
                    "THE TPM NO LONGER HAS THIS KEY STORE'S KEYS: the TPM was cleared (or its owner seed changed), or this \
                     state directory comes from another machine. Every credential made before is gone for good, and so is \
                     the PIN; fidoseald starts over with an empty key store. Register this security key again with every \
                     site."
                );
                Self::create(opened, Startup::StartedOver { kept }, pcrs)
            }
        }
    }

    /// The store of `persisted`, if this TPM re-creates the same primary;
    /// the connection back otherwise (its keys are gone).
    fn reopen(
        mut opened: Opened,
        persisted: Persisted,
        mut boot: Option<pcr_policy::BootBinding>,
    ) -> Result<Result<Self, Opened>, TpmSetupError> {
        let (primary, name) = create_primary(&mut opened.ctx, &persisted.generation)
            .map_err(|e| setup_error("re-creating the primary", e))?;
        if name != persisted.primary_name {
            let _ = opened.ctx.flush_context(primary.into());
            return Ok(Err(opened));
        }
        let path = &opened.path;
        let hmac_public = Public::unmarshall(&persisted.hmac_public)
            .map_err(|e| TpmSetupError::Damaged { path: path.clone(), reason: format!("HMAC key public area: {e}") })?;
        let hmac_private = Private::try_from(persisted.hmac_private.clone())
            .map_err(|e| TpmSetupError::Damaged { path: path.clone(), reason: format!("HMAC key blob: {e}") })?;
        let unlocked = match boot.as_mut() {
            None => true,
            Some(boot) => {
                let report = boot.unlock(&mut opened.ctx).map_err(|e| setup_error("checking the boot state", e))?;
                if !report.is_approved {
                    tracing::error!("{}", report.mismatch_message());
                }
                report.is_approved
            }
        };
        let sealing_key = if unlocked {
            let key = sealing_key(&mut opened.ctx, primary, &hmac_public, &hmac_private, boot.as_ref());
            match key {
                Ok(key) => Some(key),
                // The PCRs moved between the check and the use.
                Err(OpError::BootState(message)) => {
                    tracing::error!("{message}");
                    None
                }
                Err(e) => return Err(setup_error("loading the key store's HMAC key", e)),
            }
        } else {
            None
        };
        tracing::info!(
            tcti = %opened.tcti_text, manufacturer = %opened.manufacturer, state = %path.display(),
            pcrs = %boot.as_ref().map(|b| pcr_policy::selection_text(b.pcrs())).unwrap_or_else(|| "off".into()),
            "TPM key store ready: credential keys are made by the TPM and never leave it"
        );
        let generation = Generation { primary, persisted, hmac_public, hmac_private, sealing_key };
        Ok(Ok(Self::assemble(opened, generation, Startup::Reopened, boot)))
    }

    /// A new store: a new generation's primary and keys, its state file
    /// written before the store is used. A credential state beside it
    /// belongs to another key store and is set aside by the one path that
    /// does that for every store (devices::open_credentials,
    /// `CredentialDatabase::bind_key_store`), also after a crash here.
    fn create(mut opened: Opened, startup: Startup, pcrs: &[u8]) -> Result<Self, TpmSetupError> {
        let boot = if pcrs.is_empty() {
            None
        } else {
            // A new approval key for a new store; an earlier one is kept aside.
            let state_dir = opened.path.parent().unwrap_or(Path::new(".")).to_path_buf();
            let earlier = state_dir.join(pcr_policy::BOOT_STATE_FILE);
            if earlier.exists() {
                Self::keep_state_file_aside(&earlier)?;
            }
            Some(
                pcr_policy::BootBinding::create(&mut opened.ctx, &state_dir, pcrs)
                    .map_err(|e| setup_error("binding the key store to the boot state", e))?,
            )
        };
        let generation =
            new_generation(&mut opened.ctx, boot.as_ref()).map_err(|e| setup_error("creating the key store", e))?;
        if let Err(source) = crate::state::write_atomically(&opened.path, &generation.persisted.encode()) {
            let _ = opened.ctx.flush_context(generation.primary.into());
            return Err(TpmSetupError::Write { path: opened.path, source });
        }
        tracing::info!(
            tcti = %opened.tcti_text, manufacturer = %opened.manufacturer, state = %opened.path.display(),
            "created a new TPM key store: credential keys are made by the TPM and never leave it"
        );
        Ok(Self::assemble(opened, generation, startup, boot))
    }

    fn assemble(
        opened: Opened,
        generation: Generation,
        startup: Startup,
        boot: Option<pcr_policy::BootBinding>,
    ) -> Self {
        let Opened { tcti, tcti_text, owner_auth, mut ctx, manufacturer, path, machine_key_path } = opened;
        let algorithms = probe_algorithms(&mut ctx);
        let Generation { primary, persisted, hmac_public, hmac_private, sealing_key } = generation;
        Self {
            tpm: Arc::new(Mutex::new(Tpm {
                tcti,
                tcti_text,
                owner_auth,
                generation: persisted.generation,
                primary_name: persisted.primary_name,
                conn: Some(Connection { ctx, primary }),
            })),
            path,
            hmac_public,
            hmac_private,
            sealing_key,
            startup,
            manufacturer,
            machine_key_path,
            machine_key: None,
            algorithms,
            approved: tokio::sync::watch::Sender::new(boot.as_ref().is_none_or(pcr_policy::BootBinding::is_unlocked)),
            boot,
        }
    }

    /// Before starting over: the old state file is copied aside (nothing is
    /// deleted). Crash-safe: until the new state file replaces the old one,
    /// a restart finds the old one and does this again.
    fn keep_state_file_aside(path: &Path) -> Result<PathBuf, TpmSetupError> {
        let aside = PathBuf::from(format!("{}.unusable-{}", path.display(), crate::state::unix_time()));
        let bytes = std::fs::read(path).map_err(|source| TpmSetupError::Read { path: path.to_path_buf(), source })?;
        crate::state::write_atomically(&aside, &bytes)
            .map_err(|source| TpmSetupError::Write { path: aside.clone(), source })?;
        Ok(aside)
    }

    /// The TPM connection (a poisoned lock is taken over: the connection is
    /// re-established when an operation finds it broken).
    fn tpm(&self) -> MutexGuard<'_, Tpm> {
        locked(&self.tpm)
    }

    /// Whether the boot state is approved, now and as it changes: turns true
    /// when `approve-boot-state` approves it (fidoseald waits for that to
    /// open the anchor and the credential states).
    pub fn approval(&self) -> tokio::sync::watch::Receiver<bool> {
        self.approved.subscribe()
    }

    /// The machine's anti-rollback anchor (rollback.rs) in `state_dir`, on
    /// this store's TPM connection. A stale state directory is an error;
    /// so is an unapproved boot state with a bound store
    /// ([`rollback::RollbackError::BootState`]: the bound anchor key cannot
    /// be computed, nothing was read or written).
    pub fn rollback_anchor(
        &self,
        state_dir: &Path,
    ) -> Result<(rollback::RollbackAnchor, rollback::AnchorStart), rollback::RollbackError> {
        let fresh = self.startup != Startup::Reopened;
        rollback::RollbackAnchor::open(Arc::clone(&self.tpm), state_dir, fresh, self.bound())
    }

    /// `fidoseald --accept-current-state DIR` (fidoseald stopped): the accept
    /// file of state `id` (rollback.rs: "." or "users/<uid>", in `dir`) for
    /// the next start. With `pcrs` it is signed by the acceptance key, which
    /// needs the approved boot state.
    pub fn write_accept_file(&self, dir: &Path, id: &str) -> Result<PathBuf, String> {
        if !dir.is_dir() {
            return Err(format!("{} does not exist", dir.display()));
        }
        let acceptance = match self.bound() {
            None => None,
            Some(bound) => {
                let (key, counter) = self
                    .tpm()
                    .run("sign the accept file", |conn| {
                        bound.boot.check(&mut conn.ctx)?;
                        let counter = rollback::counter_value(&mut conn.ctx)?;
                        Ok((bound.acceptance_key(conn)?, counter))
                    })
                    .map_err(|e| e.to_string())?;
                Some((key, counter))
            }
        };
        rollback::write_accept_file(dir, id, acceptance.as_ref().map(|(key, counter)| (&**key, *counter)))
            .map_err(|e| e.to_string())
    }

    /// A bound store's side of the anchor (rollback.rs).
    fn bound(&self) -> Option<rollback::Bound<'_>> {
        self.boot.as_ref().map(|boot| rollback::Bound {
            boot,
            prf_public: &self.hmac_public,
            prf_private: &self.hmac_private,
        })
    }

    /// The TPM's manufacturer, for `fidosealctl status`.
    pub fn manufacturer(&self) -> &str {
        &self.manufacturer
    }

    /// How the store came up (logged by `open`; main.rs ties the credential
    /// state to the store by it).
    pub fn startup(&self) -> &Startup {
        &self.startup
    }

    /// Transient objects loaded in the TPM as seen by this store's
    /// connection; 1 (the primary) between requests. For the handle-leak
    /// tests and the benchmark.
    #[allow(dead_code)]
    pub fn transient_objects(&mut self) -> Result<usize, KeyStoreError> {
        self.tpm().run("count handles", |conn| transient_handles(&mut conn.ctx))
    }

    /// The credential-ID cipher; in an unapproved boot state, the error
    /// that says so.
    fn sealing_cipher(&mut self) -> Result<Aes256Gcm, KeyStoreError> {
        if self.sealing_key.is_none() {
            self.require_approved_boot_state()?;
            // Approved since start (pcr_policy.rs): compute the key now.
            let (public, private, boot) = (&self.hmac_public, &self.hmac_private, self.boot.as_ref());
            let key = self
                .tpm()
                .run("load the sealing key", |conn| sealing_key(&mut conn.ctx, conn.primary, public, private, boot))?;
            self.sealing_key = Some(key);
        }
        let key = self.sealing_key.as_ref().ok_or_else(|| KeyStoreError::Backend("no sealing key".into()))?;
        Ok(Aes256Gcm::new((&**key).into()))
    }

    /// With `[keystore] pcrs`: the clear error of an unapproved boot state.
    fn require_approved_boot_state(&mut self) -> Result<(), KeyStoreError> {
        let Some(boot) = self.boot.as_ref() else {
            return Ok(());
        };
        self.tpm().run("check the boot state", |conn| boot.check(&mut conn.ctx))
    }

    /// The curve of `algorithm`, if this TPM can do it.
    fn curve_of(&self, algorithm: Algorithm) -> Result<Curve, KeyStoreError> {
        match algorithm {
            Algorithm::Es256 => Ok(Curve::P256),
            Algorithm::Es384 if self.algorithms.contains(&Algorithm::Es384) => Ok(Curve::P384),
            _ => Err(KeyStoreError::UnsupportedAlgorithm(algorithm)),
        }
    }

    /// The authPolicy of this generation's objects, if it is bound.
    fn object_policy(&self) -> Option<Vec<u8>> {
        self.boot.as_ref().map(pcr_policy::BootBinding::object_policy)
    }

    /// The authPolicy of this generation's PIN object, if it is bound
    /// (pin_object.rs: the object policy, then PolicyAuthValue).
    fn pin_object_policy(&self) -> Option<Vec<u8>> {
        self.boot.as_ref().map(|boot| pin_object::bound_policy(boot.key_name()))
    }
}

/// TPM2_Load of a signing key on `curve` under `parent`, TPM2_Sign of
/// `digest` (SHA-256 for P-256, SHA-384 for P-384), TPM2_FlushContext; the
/// signature DER-encoded.
fn sign_digest(
    ctx: &mut Context,
    parent: KeyHandle,
    curve: Curve,
    public: &Public,
    private: &Private,
    digest: &[u8],
    boot: Option<&pcr_policy::BootBinding>,
) -> Result<Vec<u8>, OpError> {
    let key = ctx
        .execute_with_session(Some(AuthSession::Password), |c| c.load(parent, private.clone(), public.clone()))
        .map_err(|error| match classify(&error) {
            // Integrity, size, value…: not made by this TPM under this primary.
            Fault::Refused => OpError::NotOurs,
            _ => OpError::Tpm { step: "TPM2_Load", error },
        })?;
    let signature = then_flush(ctx, key.into(), "TPM2_FlushContext", |ctx| {
        let session = match boot {
            // Unsalted: the digest and the signature are public.
            Some(boot) => boot.session(ctx, None).map(Some),
            None => Ok(Some(AuthSession::Password)),
        }?;
        let signed = Digest::try_from(digest.to_vec())
            .and_then(|digest| {
                let ticket = objects::null_hashcheck_ticket()?;
                ctx.execute_with_session(session, |c| c.sign(key, digest, SignatureScheme::Null, ticket))
            })
            .map_err(at("TPM2_Sign"));
        if let Some(policy) = session.filter(|_| boot.is_some()) {
            pcr_policy::flush_session(ctx, policy);
        }
        signed
    })?;
    match signature {
        Signature::EcDsa(ecdsa) => {
            objects::der_signature(curve, ecdsa.signature_r().value(), ecdsa.signature_s().value())
                .ok_or_else(|| OpError::Internal("the TPM returned an invalid ECDSA signature".into()))
        }
        other => Err(OpError::Internal(format!("the TPM returned a {:?} signature", other.algorithm()))),
    }
}

/// The unique value of the machine attestation key's primary. Fixed, not a
/// generation: authenticatorReset makes a new storage primary (so no
/// credential key loads again), but the machine key, made under this one,
/// stays usable. Only a cleared TPM (a new owner seed) loses it.
const MACHINE_PRIMARY_UNIQUE: [u8; 32] = *b"fidoseal machine attestation v1\0";

/// Runs `op` with the machine primary loaded, and flushes it after (with
/// the storage primary and one key, three transient objects at most).
fn with_machine_primary<T>(
    conn: &mut Connection,
    op: impl FnOnce(&mut Context, KeyHandle) -> Result<T, OpError>,
) -> Result<T, OpError> {
    let (primary, _) = create_primary(&mut conn.ctx, &MACHINE_PRIMARY_UNIQUE)?;
    then_flush(&mut conn.ctx, primary.into(), "TPM2_FlushContext", |ctx| op(ctx, primary))
}

impl TpmKeyStore {
    /// The machine attestation key blob and certificate: read from its
    /// file, or made in the TPM (non-exportable, like credential keys) with
    /// a certificate the TPM signs, and written before it is used.
    fn machine_key(&mut self) -> Result<(Vec<u8>, Vec<u8>), KeyStoreError> {
        if let Some(loaded) = &self.machine_key {
            return Ok(loaded.clone());
        }
        let path = self.machine_key_path.clone();
        let loaded = match crate::machine_key::load(&path)? {
            Some(stored) => {
                let blob =
                    KeyBlob::decode(&stored.key).ok_or_else(|| crate::machine_key::damaged(&path, "no key blob"))?;
                let (x, y) = blob.coordinates().ok_or_else(|| crate::machine_key::damaged(&path, "not a P-256 key"))?;
                let point = p256_point(&x, &y);
                if !machine_attestation::certificate_matches(&stored.certificate, &point, &FIDOSEAL_AAGUID) {
                    return Err(crate::machine_key::damaged(&path, "the certificate is not the key's"));
                }
                (stored.key.to_vec(), stored.certificate)
            }
            None => {
                let serial = machine_attestation::new_serial()?;
                let (blob, certificate) = self.tpm().run("create the machine attestation key", |conn| {
                    with_machine_primary(conn, |ctx, primary| {
                        let template =
                            objects::credential_key_public(&[], &[]).map_err(at("building the key template"))?;
                        let (public, private) = create_object(ctx, primary, template)?;
                        let blob = KeyBlob::from_created(&public, &private).map_err(OpError::Internal)?;
                        let (x, y) = blob
                            .coordinates()
                            .ok_or_else(|| OpError::Internal("the TPM returned a point that is not P-256".into()))?;
                        let tbs = machine_attestation::tbs_certificate(&p256_point(&x, &y), &serial, &FIDOSEAL_AAGUID);
                        // Not bound to the boot state: it names the machine, under a primary of its own.
                        let signature =
                            sign_digest(ctx, primary, Curve::P256, &public, &private, &Sha256::digest(&tbs), None)?;
                        Ok((blob.encode(), machine_attestation::certificate(&tbs, &signature)))
                    })
                })?;
                let stored = crate::machine_key::StoredMachineKey {
                    key: Zeroizing::new(blob.clone()),
                    certificate: certificate.clone(),
                };
                crate::machine_key::save(&path, &stored)?;
                tracing::info!(path = %path.display(), "created the machine attestation key in the TPM");
                (blob, certificate)
            }
        };
        self.machine_key = Some(loaded.clone());
        Ok(loaded)
    }
}

fn p256_point(x: &[u8; 32], y: &[u8; 32]) -> [u8; machine_attestation::POINT_LEN] {
    let mut point = [0u8; machine_attestation::POINT_LEN];
    point[0] = 0x04;
    point[1..33].copy_from_slice(x);
    point[33..].copy_from_slice(y);
    point
}

fn id_aad(rp_id_hash: &[u8; 32]) -> [u8; 33] {
    let mut aad = [0u8; 33];
    aad[0] = CREDENTIAL_ID_VERSION;
    aad[1..].copy_from_slice(rp_id_hash);
    aad
}

impl KeyStore for TpmKeyStore {
    fn name(&self) -> &'static str {
        "tpm"
    }

    fn algorithms(&self) -> Vec<Algorithm> {
        self.algorithms.clone()
    }

    fn generate(&mut self, algorithm: Algorithm) -> Result<CreatedKey, KeyStoreError> {
        let curve = self.curve_of(algorithm)?;
        // No key is made that could not be used.
        self.require_approved_boot_state()?;
        let policy = self.object_policy();
        let blob = self.tpm().run("generate", |conn| {
            // Bound generations: the same policy on every curve.
            let template = objects::credential_key_public_on(curve, &[], &[])
                .and_then(|t| objects::bound(t, policy.as_deref()))
                .map_err(at("building the key template"))?;
            let (public, private) = create_object(&mut conn.ctx, conn.primary, template)?;
            KeyBlob::from_created_bound(&public, &private, policy.as_deref()).map_err(OpError::Internal)
        })?;
        let public_key = blob
            .public_key()
            .filter(|_| blob.curve == curve)
            .ok_or_else(|| KeyStoreError::Backend(format!("the TPM returned a point that is not on {curve:?}")))?;
        Ok(CreatedKey { public_key, key_handle: blob.encode() })
    }

    fn sign(&mut self, algorithm: Algorithm, key_handle: &[u8], message: &[u8]) -> Result<Vec<u8>, KeyStoreError> {
        let curve = self.curve_of(algorithm)?;
        let blob = KeyBlob::decode(key_handle).ok_or(KeyStoreError::NotAuthentic)?;
        // A key of another curve is not this credential's key.
        if blob.curve != curve {
            return Err(KeyStoreError::NotAuthentic);
        }
        let public = blob.public_bound(self.object_policy().as_deref()).map_err(|_| KeyStoreError::NotAuthentic)?;
        let private = blob.private().map_err(|_| KeyStoreError::NotAuthentic)?;
        let digest = match curve {
            Curve::P256 => Sha256::digest(message).to_vec(),
            Curve::P384 => Sha384::digest(message).to_vec(),
        };
        let boot = self.boot.as_ref();
        self.tpm().run("sign", |conn| {
            let parent = conn.primary;
            sign_digest(&mut conn.ctx, parent, curve, &public, &private, &digest, boot)
        })
    }

    fn seal_credential_id(&mut self, rp_id_hash: &[u8; 32], payload: &[u8]) -> Result<Vec<u8>, KeyStoreError> {
        let mut nonce = [0u8; NONCE_LEN];
        getrandom::fill(&mut nonce).map_err(|e| KeyStoreError::Backend(format!("no randomness: {e}")))?;
        let aad = id_aad(rp_id_hash);
        let ciphertext = self
            .sealing_cipher()?
            .encrypt((&nonce).into(), Payload { msg: payload, aad: &aad })
            .map_err(|_| KeyStoreError::Backend("encryption failed".into()))?;
        let mut id = Vec::with_capacity(1 + NONCE_LEN + ciphertext.len());
        id.push(CREDENTIAL_ID_VERSION);
        id.extend_from_slice(&nonce);
        id.extend_from_slice(&ciphertext);
        Ok(id)
    }

    fn open_credential_id(&mut self, rp_id_hash: &[u8; 32], credential_id: &[u8]) -> Result<Vec<u8>, KeyStoreError> {
        let Some((&CREDENTIAL_ID_VERSION, sealed)) = credential_id.split_first() else {
            return Err(KeyStoreError::NotAuthentic);
        };
        if sealed.len() < NONCE_LEN + TAG_LEN {
            return Err(KeyStoreError::NotAuthentic);
        }
        let (nonce, ciphertext) = sealed.split_at(NONCE_LEN);
        let nonce: [u8; NONCE_LEN] = nonce.try_into().map_err(|_| KeyStoreError::NotAuthentic)?;
        let aad = id_aad(rp_id_hash);
        self.sealing_cipher()?
            .decrypt((&nonce).into(), Payload { msg: ciphertext, aad: &aad })
            .map_err(|_| KeyStoreError::NotAuthentic)
    }

    fn derive_secret(&mut self, context: &[u8]) -> Result<Secret32, KeyStoreError> {
        let mut input = Zeroizing::new(Vec::with_capacity(1 + context.len().min(MAX_DIRECT_CONTEXT)));
        if context.len() <= MAX_DIRECT_CONTEXT {
            input.push(PRF_DERIVE);
            input.extend_from_slice(context);
        } else {
            input.push(PRF_DERIVE_HASHED);
            input.extend_from_slice(&Sha256::digest(context));
        }
        let (public, private, boot) = (&self.hmac_public, &self.hmac_private, self.boot.as_ref());
        let out = self
            .tpm()
            .run("derive secret", |conn| tpm_hmac(&mut conn.ctx, conn.primary, public, private, &input, boot))?;
        Ok(Secret32(*out))
    }

    fn create_pin_object(&mut self, pin_hash: &[u8; 16]) -> Result<Option<Vec<u8>>, KeyStoreError> {
        // No PIN object is made that could not be checked.
        self.require_approved_boot_state()?;
        let policy = self.pin_object_policy();
        let object = self.tpm().run("create the PIN object", |conn| {
            pin_object::create(&mut conn.ctx, conn.primary, pin_hash, policy.as_deref())
        })?;
        Ok(Some(object))
    }

    fn check_pin_object(&mut self, object: &[u8], pin_hash: &[u8; 16]) -> Result<PinCheck, KeyStoreError> {
        let (public, private) = pin_object::decode(object, self.pin_object_policy().as_deref())
            .ok_or_else(|| KeyStoreError::Backend("the PIN record holds no PIN object of this key store".into()))?;
        let boot = self.boot.as_ref();
        let check = self.tpm().run("check the PIN", |conn| {
            pin_object::check(&mut conn.ctx, conn.primary, &public, &private, pin_hash, boot)
        })?;
        if check == PinCheck::Locked {
            tracing::warn!(
                "the TPM is in dictionary-attack lockout: the PIN was not checked and no CTAP retry was counted \
                 (PIN_AUTH_BLOCKED); it recovers by itself (TPM_PT_LOCKOUT_INTERVAL), or an administrator runs \
                 `tpm2_dictionarylockout -c`"
            );
        }
        Ok(check)
    }

    /// A new generation: new primary and PRF key, so that no earlier
    /// credential ID opens and no earlier key blob loads. The new state file
    /// is written before anything uses the new keys.
    fn reset(&mut self) -> Result<(), KeyStoreError> {
        let boot = self.boot.as_ref();
        let Generation { primary, persisted, hmac_public, hmac_private, sealing_key } =
            self.tpm().run("reset", |conn| new_generation(&mut conn.ctx, boot))?;
        let mut tpm = self.tpm();
        if let Err(e) = crate::state::write_atomically(&self.path, &persisted.encode()) {
            if let Some(conn) = tpm.conn.as_mut() {
                let _ = conn.ctx.flush_context(primary.into());
            }
            let message = format!("cannot write {}: {e}", self.path.display());
            tracing::error!("TPM key store reset failed, the old keys stay in use: {message}");
            return Err(KeyStoreError::Backend(message));
        }
        // `run` returned with the connection that holds the new primary.
        if let Some(conn) = tpm.conn.as_mut() {
            let old = std::mem::replace(&mut conn.primary, primary);
            if let Err(e) = conn.ctx.flush_context(old.into()) {
                tracing::warn!(error = %describe(&e), "could not flush the previous primary");
            }
        }
        tpm.generation = persisted.generation;
        tpm.primary_name = persisted.primary_name;
        drop(tpm);
        self.hmac_public = hmac_public;
        self.hmac_private = hmac_private;
        self.sealing_key = sealing_key;
        tracing::info!("TPM key store reset: a new primary and secret; every earlier credential is unusable");
        Ok(())
    }

    fn machine_attestation_certificate(&mut self) -> Result<Vec<u8>, KeyStoreError> {
        Ok(self.machine_key()?.1)
    }

    fn sign_machine_attestation(&mut self, message: &[u8]) -> Result<Vec<u8>, KeyStoreError> {
        let (blob, _) = self.machine_key()?;
        let path = self.machine_key_path.clone();
        let blob = KeyBlob::decode(&blob).ok_or_else(|| crate::machine_key::damaged(&path, "no key blob"))?;
        let public = blob.public().map_err(|_| crate::machine_key::damaged(&path, "bad public area"))?;
        let private = blob.private().map_err(|_| crate::machine_key::damaged(&path, "bad private blob"))?;
        let digest = Sha256::digest(message);
        self.tpm()
            .run("sign with the machine attestation key", |conn| {
                with_machine_primary(conn, |ctx, primary| {
                    sign_digest(ctx, primary, Curve::P256, &public, &private, &digest, None)
                })
            })
            .map_err(|e| match e {
                // The blob no longer loads: the TPM was cleared, or the file comes from another machine.
                KeyStoreError::NotAuthentic => crate::machine_key::damaged(
                    &path,
                    "its key does not load in this TPM: the TPM was cleared or the file comes from another machine",
                ),
                other => other,
            })
    }
}

/// Why `fidosealctl tpm approve-boot-state` failed.
#[derive(Debug, thiserror::Error)]
pub enum ApproveError {
    #[error("boot-state binding is off ([keystore] pcrs is not set)")]
    NotBound,
    #[error("that is not a recovery key (32 hexadecimal digits, dashes allowed)")]
    Malformed,
    /// The TPM counted a dictionary-attack failure.
    #[error("wrong recovery key (the TPM counted a failed authorization toward its dictionary-attack lockout)")]
    WrongKey,
    #[error("the TPM is in dictionary-attack lockout: wait for it to expire (or `tpm2_dictionarylockout -c` with the lockout authorization)")]
    Lockout,
    #[error("{0}")]
    KeyStore(#[from] KeyStoreError),
}

/// The boot-state binding as an administrator drives it (pcr_policy.rs).
impl TpmKeyStore {
    /// The current boot state against the approved ones; None when
    /// `[keystore] pcrs` is off.
    pub fn boot_state(&mut self) -> Result<Option<pcr_policy::BootReport>, KeyStoreError> {
        let Some(boot) = self.boot.as_ref() else {
            return Ok(None);
        };
        self.tpm().run("read the boot state", |conn| boot.report(&mut conn.ctx)).map(Some)
    }

    /// `fidosealctl tpm allow-boot-change`: opens the update window (only
    /// in an approved state); the next start approves a changed state.
    pub fn allow_boot_change(&mut self) -> Result<(), KeyStoreError> {
        let Some(boot) = self.boot.as_mut() else {
            return Err(KeyStoreError::Backend("boot-state binding is off ([keystore] pcrs is not set)".into()));
        };
        locked(&self.tpm).run("open the update window", |conn| boot.open_window(&mut conn.ctx))
    }

    /// `fidosealctl tpm approve-boot-state`: approves the current boot
    /// state with the recovery key; the keys work again at once.
    pub fn approve_boot_state(&mut self, recovery_key: &str) -> Result<pcr_policy::BootReport, ApproveError> {
        let Some(boot) = self.boot.as_mut() else {
            return Err(ApproveError::NotBound);
        };
        let mut failure = None;
        let outcome = locked(&self.tpm).run("approve the boot state", |conn| {
            match boot.approve_with_recovery(&mut conn.ctx, recovery_key) {
                Ok(report) => Ok(Some(report)),
                Err(pcr_policy::RecoveryError::Op(e)) => Err(e),
                Err(other) => {
                    failure = Some(other);
                    Ok(None)
                }
            }
        })?;
        match (outcome, failure) {
            (Some(report), _) => {
                // The sealing key, if start could not compute it.
                self.sealing_cipher()?;
                // A start waiting for this opens the anchor and the states now.
                self.approved.send_replace(true);
                Ok(report)
            }
            (None, Some(pcr_policy::RecoveryError::Malformed)) => Err(ApproveError::Malformed),
            (None, Some(pcr_policy::RecoveryError::Lockout)) => Err(ApproveError::Lockout),
            (None, _) => {
                tracing::warn!("approve-boot-state: a wrong recovery key (a dictionary-attack failure for the TPM)");
                Err(ApproveError::WrongKey)
            }
        }
    }
}

/// A TPM connection shared by the key store and the rollback anchor; a
/// poisoned lock is taken over (the connection is re-established when an
/// operation finds it broken). A free function, so that a method can hold
/// another field mutably while it uses the TPM.
fn locked(tpm: &Mutex<Tpm>) -> MutexGuard<'_, Tpm> {
    tpm.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
