//! Anti-rollback (issue #12; docs/tpm.md, "Anti-rollback"): restoring an
//! older copy of the state directory, or of one user's state, is found at
//! start and refused.
//!
//! - One NV counter index for the machine ([`NV_INDEX`], TPM_NT_COUNTER,
//!   owner read/write, noDA, not orderly), the same for every state.
//! - The anchor file `tpm-anchor` in the state directory: the counter value
//!   it was written for, and each state's rollback version (store
//!   rollback.rs), MACed with a key only this TPM computes (an HMAC key under
//!   the machine primary, whose blob the file carries): with the disk alone
//!   it cannot be forged or altered. With `[keystore] pcrs` the anchor key
//!   is bound like the generation's other objects (authPolicy
//!   PolicyAuthorize(A), no userWithAuth; pcr_policy.rs), and a file whose
//!   key is not exactly that is refused: another OS booted on the machine
//!   cannot compute the MAC, so it cannot forge a file either.
//! - Each credential database keeps its own version and a MAC of its
//!   rollback-relevant content with a key derived from the same one for
//!   that state: a record copied from the current database into an old
//!   copy does not match the old content.
//! - A change that must not be undone (a PIN retry spent, a credential
//!   deleted, a PIN changed, a reset) raises the database's version in the
//!   same transaction, then the anchor file is written with the counter's
//!   next value, then the counter is incremented ([`RollbackAnchor::anchor`]).
//!   A kill after the database commit leaves the database one version ahead
//!   of the anchor (accepted, and anchored); a kill after the file write
//!   leaves the file one ahead of the counter (accepted, the increment is
//!   done then). Nothing else is accepted: an anchor file behind the
//!   counter is a restored directory, a database behind its anchor entry a
//!   restored state.
//! - A stale state is refused with what is stale and the recovery: an
//!   administrator creates [`ACCEPT_FILE`] in that state's directory, and the
//!   next start anchors the state as it is (logged as an audit line). With
//!   `[keystore] pcrs` a plain file is not taken (another OS could write one
//!   next to an older copy): it must hold a MAC that only the approved boot
//!   state computes, for the counter's value at the start that uses it
//!   ([`write_accept_file`], `fidoseald --accept-current-state`).
//! - Signature counters are not anchored per assertion: each start (and a
//!   counter that used up its epoch) increments the counter once, and the
//!   counters of epoch E lie above every earlier epoch's ([`counter_range`]),
//!   so none goes back across any restore, accepted or not.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use tss_esapi::attributes::NvIndexAttributesBuilder;
use tss_esapi::constants::{CapabilityType, NvIndexType};
use tss_esapi::handles::{NvIndexHandle, NvIndexTpmHandle, ObjectHandle, TpmHandle};
use tss_esapi::interface_types::algorithm::HashingAlgorithm;
use tss_esapi::interface_types::resource_handles::{NvAuth, Provision};
use tss_esapi::interface_types::session_handles::AuthSession;
use tss_esapi::structures::{CapabilityData, NvPublic, NvPublicBuilder, Private, Public};
use tss_esapi::traits::{Marshall, UnMarshall};
use tss_esapi::Context;
use zeroize::Zeroizing;

use super::pcr_policy::BootBinding;
use super::{at, create_object, objects, tpm_hmac, with_machine_primary, Connection, OpError, Tpm};
use crate::state::write_atomically;
use fidoseal_store::RecordCheck;

/// fidoseal's NV counter index: in the owner range of the TCG handle
/// registry (0x01800000–0x01BFFFFF), away from systemd's assignments
/// (0x01800400–0x018005FF) and from the Linux community's range
/// (0x01D10200–0x01D105FF, outside the owner range).
pub const NV_INDEX: u32 = 0x01BF_1D05;
/// The anchor file in the (machine's) state directory.
pub const ANCHOR_FILE: &str = "tpm-anchor";
/// Created by an administrator in a state directory whose state was
/// refused as stale: the next start accepts that state as it is.
pub const ACCEPT_FILE: &str = "accept-current-state";

/// Epoch-based signature counters: the counters given in epoch E (the NV
/// counter's value at a start, or when a counter used up its epoch) are
/// BASE + E·BLOCK … BASE + (E+1)·BLOCK − 1. Every later epoch is a higher NV
/// value, so its counters are above every earlier one, whatever copy of the
/// state was restored. BASE is above the counters of states from before
/// anti-rollback (in practice); BLOCK assertions of one credential in one
/// epoch start a new epoch (one NV write).
const COUNTER_BASE: u64 = 1 << 24;
const COUNTER_BLOCK: u64 = 1 << 12;

/// The floor (every counter above it) and the ceiling (the last counter) of
/// `epoch`; saturated at u32::MAX (a counter then stops, never wraps).
pub fn counter_range(epoch: u64) -> (u32, u32) {
    let first = COUNTER_BASE.saturating_add(epoch.saturating_mul(COUNTER_BLOCK));
    let clamp = |v: u64| u32::try_from(v).unwrap_or(u32::MAX);
    (clamp(first - 1), clamp(first.saturating_add(COUNTER_BLOCK - 1)))
}

const MAGIC: &[u8] = b"fidoseal-anchor";
const FORMAT: u8 = 1;
const FILE_MAC_LABEL: &[u8] = b"fidoseal anchor file v1";
const STATE_KEY_LABEL: &[u8] = b"fidoseal rollback state key v1\0";
/// `pub(super)` for the tests' forgeries (rollback_tests.rs).
pub(super) const KEY_LABEL: &[u8] = b"fidoseal rollback anchor key v1";
const ACCEPT_LABEL: &[u8] = b"fidoseal accept-current-state v1\0";

#[derive(Debug, thiserror::Error)]
pub enum RollbackError {
    #[error(
        "STALE STATE REFUSED: {what}. Someone may have restored an older copy to get PIN retries back, make \
         signature counters go back or bring a deleted passkey back. If the administrator restored it on purpose \
         (a backup), accept it as it is: {recovery}; the signature counters are raised above anything given \
         before. Otherwise restore the newest copy."
    )]
    Stale { what: String, recovery: String },
    /// A bound store in an unapproved boot state: the anchor key cannot be
    /// computed, so nothing can be verified (nor is anything written).
    #[error("{0}")]
    BootState(String),
    #[error("anti-rollback: {0}")]
    Tpm(String),
    #[error("anti-rollback: cannot write {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
}

/// The anchor file as written (`pub(super)` for the tests' forgeries).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct AnchorFile {
    pub(super) key_public: Vec<u8>,
    pub(super) key_private: Vec<u8>,
    /// The NV counter value this file was written for.
    pub(super) counter: u64,
    /// Each state's rollback version ("." for the single-user state,
    /// "users/<uid>" for a user's).
    pub(super) states: BTreeMap<String, u64>,
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u16).to_be_bytes());
    out.extend_from_slice(bytes);
}

fn take<'a>(input: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
    if input.len() < n {
        return None;
    }
    let (head, rest) = input.split_at(n);
    *input = rest;
    Some(head)
}

fn take_bytes<'a>(input: &mut &'a [u8]) -> Option<&'a [u8]> {
    let n = u16::from_be_bytes(take(input, 2)?.try_into().ok()?);
    take(input, usize::from(n))
}

impl AnchorFile {
    /// `MAGIC | FORMAT | key public | key private` (the key's blobs, TPM-
    /// protected) then the body `counter (u64) | n (u32) | (id, version)*`,
    /// then HMAC-SHA-256 of everything before with the anchor key.
    pub(super) fn encode(&self, key: &[u8; 32]) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(MAGIC);
        out.push(FORMAT);
        put_bytes(&mut out, &self.key_public);
        put_bytes(&mut out, &self.key_private);
        out.extend_from_slice(&self.counter.to_be_bytes());
        out.extend_from_slice(&(self.states.len() as u32).to_be_bytes());
        for (id, version) in &self.states {
            put_bytes(&mut out, id.as_bytes());
            out.extend_from_slice(&version.to_be_bytes());
        }
        let mac = file_mac(key, &out);
        out.extend_from_slice(&mac);
        out
    }

    /// Parses the file; the MAC is checked by [`Self::verify`] once the key
    /// is known. `None`: not an anchor file.
    pub(super) fn decode(bytes: &[u8]) -> Option<(Self, &[u8], [u8; 32])> {
        let body_len = bytes.len().checked_sub(32)?;
        let (signed, mac) = bytes.split_at(body_len);
        let mut input = signed;
        if take(&mut input, MAGIC.len())? != MAGIC || take(&mut input, 1)? != [FORMAT] {
            return None;
        }
        let key_public = take_bytes(&mut input)?.to_vec();
        let key_private = take_bytes(&mut input)?.to_vec();
        let counter = u64::from_be_bytes(take(&mut input, 8)?.try_into().ok()?);
        let count = u32::from_be_bytes(take(&mut input, 4)?.try_into().ok()?);
        let mut states = BTreeMap::new();
        for _ in 0..count {
            let id = String::from_utf8(take_bytes(&mut input)?.to_vec()).ok()?;
            let version = u64::from_be_bytes(take(&mut input, 8)?.try_into().ok()?);
            states.insert(id, version);
        }
        if !input.is_empty() {
            return None;
        }
        Some((Self { key_public, key_private, counter, states }, signed, mac.try_into().ok()?))
    }
}

fn file_mac(key: &[u8; 32], signed: &[u8]) -> [u8; 32] {
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(FILE_MAC_LABEL);
    mac.update(signed);
    mac.finalize().into_bytes().into()
}

fn tpm_error(e: OpError) -> RollbackError {
    RollbackError::Tpm(match e {
        OpError::Tpm { step, error } => format!("{step} failed: {}", super::describe(&error)),
        OpError::NotOurs => "the TPM refused the anchor key (TPM cleared?)".into(),
        OpError::Internal(message) => message,
        OpError::BootState(message) => message,
    })
}

// --- the NV counter --------------------------------------------------------

fn nv_tpm_handle() -> tss_esapi::Result<NvIndexTpmHandle> {
    NvIndexTpmHandle::new(NV_INDEX)
}

/// The public area fidoseal defines: TPM_NT_COUNTER, 8 bytes, owner read
/// and write (the owner's authorization: empty in the common case, else
/// [keystore] owner_auth_file), noDA, not orderly.
pub fn nv_public() -> tss_esapi::Result<NvPublic> {
    let attributes = NvIndexAttributesBuilder::new()
        .with_nv_index_type(NvIndexType::Counter)
        .with_owner_write(true)
        .with_owner_read(true)
        .with_no_da(true)
        .build()?;
    NvPublicBuilder::new()
        .with_nv_index(nv_tpm_handle()?)
        .with_index_name_algorithm(HashingAlgorithm::Sha256)
        .with_index_attributes(attributes)
        .with_data_area_size(8)
        .build()
}

/// Whether the index is defined (TPM2_GetCapability, handles).
fn nv_defined(ctx: &mut Context) -> Result<bool, OpError> {
    let (data, _) = ctx
        .execute_without_session(|c| c.get_capability(CapabilityType::Handles, NV_INDEX, 1))
        .map_err(at("TPM2_GetCapability(NV handles)"))?;
    match data {
        CapabilityData::Handles(list) => Ok(list.into_inner().first().is_some_and(|h| u32::from(*h) == NV_INDEX)),
        _ => Err(OpError::Internal("TPM2_GetCapability answered with something else than handles".into())),
    }
}

/// Runs `op` on the index's ESYS handle, closed after.
fn with_nv<T>(
    ctx: &mut Context,
    op: impl FnOnce(&mut Context, NvIndexHandle) -> Result<T, OpError>,
) -> Result<T, OpError> {
    let handle = nv_tpm_handle().map_err(at("NV index handle"))?;
    let mut object = ctx
        .execute_without_session(|c| c.tr_from_tpm_public(TpmHandle::NvIndex(handle)))
        .map_err(at("Esys_TR_FromTPMPublic(NV index)"))?;
    let result = op(ctx, NvIndexHandle::from(object));
    let _ = ctx.tr_close(&mut object);
    result
}

fn nv_read(ctx: &mut Context, handle: NvIndexHandle) -> Result<u64, OpError> {
    let data = ctx
        .execute_with_session(Some(AuthSession::Password), |c| c.nv_read(NvAuth::Owner, handle, 8, 0))
        .map_err(at("TPM2_NV_Read"))?;
    let bytes: [u8; 8] =
        data.value().try_into().map_err(|_| OpError::Internal("the NV counter did not read as 8 bytes".into()))?;
    Ok(u64::from_be_bytes(bytes))
}

fn nv_increment(ctx: &mut Context, handle: NvIndexHandle) -> Result<(), OpError> {
    ctx.execute_with_session(Some(AuthSession::Password), |c| c.nv_increment(NvAuth::Owner, handle))
        .map_err(at("TPM2_NV_Increment"))
}

/// The counter's value; `None` if the index is not defined. An index at
/// our handle that is not ours is an error naming it. (`pub(super)` for the
/// tests' forgeries.)
pub(super) fn counter_value(ctx: &mut Context) -> Result<Option<u64>, OpError> {
    if !nv_defined(ctx)? {
        return Ok(None);
    }
    with_nv(ctx, |ctx, handle| {
        let (public, _) =
            ctx.execute_without_session(|c| c.nv_read_public(handle)).map_err(at("TPM2_NV_ReadPublic"))?;
        let ours = nv_public().map_err(at("building the NV public area"))?;
        if public.attributes().index_type().ok() != Some(NvIndexType::Counter)
            || public.data_size() != 8
            || !public.attributes().owner_read()
        {
            return Err(OpError::Internal(format!(
                "NV index {NV_INDEX:#010x} is in use by something else (attributes {:?}, {} bytes, expected {:?}): \
                 fidoseald does not touch it; find its owner with `tpm2_nvreadpublic {NV_INDEX:#x}`",
                public.attributes(),
                public.data_size(),
                ours.attributes()
            )));
        }
        if !public.attributes().written() {
            // A counter reads only after its first increment.
            nv_increment(ctx, handle)?;
        }
        nv_read(ctx, handle)
    })
    .map(Some)
}

/// Defines the index (owner authorization) and gives its first value (the
/// TPM's highest counter value ever: a re-defined counter never goes back).
fn define_counter(ctx: &mut Context) -> Result<u64, OpError> {
    let public = nv_public().map_err(at("building the NV public area"))?;
    let handle = ctx
        .execute_with_session(Some(AuthSession::Password), |c| c.nv_define_space(Provision::Owner, None, public))
        .map_err(at("TPM2_NV_DefineSpace"))?;
    let mut object = ObjectHandle::from(handle);
    let value = nv_increment(ctx, handle).and_then(|()| nv_read(ctx, handle));
    let _ = ctx.tr_close(&mut object);
    value
}

/// Releases the index (uninstall, or a machine reset): TPM2_NV_UndefineSpace
/// with the owner's authorization. Nothing if it is not defined.
fn release_counter(ctx: &mut Context) -> Result<bool, OpError> {
    if !nv_defined(ctx)? {
        return Ok(false);
    }
    with_nv(ctx, |ctx, handle| {
        ctx.execute_with_session(Some(AuthSession::Password), |c| c.nv_undefine_space(Provision::Owner, handle))
            .map_err(at("TPM2_NV_UndefineSpace"))
    })?;
    Ok(true)
}

/// `fidoseald --release-tpm-anchor`: releases the NV index and removes the
/// anchor file of `state_dir` (with fidoseald stopped), so that nothing of
/// fidoseal is left in the TPM. The next start takes the state directory
/// as it is and anchors it anew. Says whether there was an index.
pub fn release(settings: &super::TpmSettings, state_dir: &Path) -> Result<bool, RollbackError> {
    use std::str::FromStr;
    let tcti = tss_esapi::TctiNameConf::from_str(&settings.tcti)
        .map_err(|_| RollbackError::Tpm(format!("[keystore] tcti = \"{}\" is not a TCTI", settings.tcti)))?;
    let owner_auth = settings
        .owner_auth_file
        .as_deref()
        .map(super::read_owner_auth)
        .transpose()
        .map_err(|e| RollbackError::Tpm(e.to_string()))?;
    let (mut ctx, _) = super::open_context(&tcti, &settings.tcti, owner_auth.as_deref().map(Vec::as_slice))
        .map_err(RollbackError::Tpm)?;
    let released = release_counter(&mut ctx).map_err(tpm_error)?;
    let path = state_dir.join(ANCHOR_FILE);
    match std::fs::remove_file(&path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(source) => return Err(RollbackError::Write { path, source }),
    }
    tracing::warn!(
        audit = "anti-rollback",
        nv_index = format!("{NV_INDEX:#010x}"),
        released,
        "the anti-rollback counter was released and the anchor file removed (uninstall or machine reset)"
    );
    Ok(released)
}

// --- accepting a refused state ---------------------------------------------

/// The recovery a stale-state message gives for `accept` (a state's
/// [`ACCEPT_FILE`]): a plain file for an unbound store; with `pcrs`, the
/// file [`write_accept_file`] writes.
fn recovery(accept: &Path, bound: bool) -> String {
    if !bound {
        return format!("`touch {}` and restart fidoseald (it is logged)", accept.display());
    }
    let dir = accept.parent().unwrap_or(Path::new("."));
    format!(
        "with fidoseald stopped and the boot state approved, run `fidoseald --config <its configuration> \
         --accept-current-state {}` and start fidoseald (it is logged; with [keystore] pcrs a plain {ACCEPT_FILE} \
         file is not taken, since another OS could write one next to an older copy)",
        dir.display()
    )
}

/// The MAC an accept file of a bound store holds: of the state's id and
/// the NV counter's value at the start that uses it (`None`: no index), so
/// that a file is good for one start only, under the acceptance key (the
/// bound PRF's, mod.rs: only the approved boot state computes it).
fn accept_mac(key: &[u8; 32], id: &str, counter: Option<u64>) -> Hmac<Sha256> {
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(ACCEPT_LABEL);
    mac.update(id.as_bytes());
    match counter {
        Some(value) => mac.update(&[&[1u8][..], &value.to_be_bytes()].concat()),
        None => mac.update(&[0]),
    }
    mac
}

/// Whether `path` holds the accept MAC of `id` at `counter` (hex, first line).
fn accept_file_is_signed(path: &Path, key: &[u8; 32], id: &str, counter: Option<u64>) -> bool {
    use std::io::Read;
    // Whoever wrote the file may have made it huge: its first line is enough.
    let mut text = String::new();
    let read = std::fs::File::open(path).and_then(|file| file.take(1024).read_to_string(&mut text));
    if read.is_err() {
        return false;
    }
    let Some(mac) = text.lines().next().and_then(|line| hex::decode(line.trim()).ok()) else {
        return false;
    };
    // Constant time (hmac's verify).
    accept_mac(key, id, counter).verify_slice(&mac).is_ok()
}

/// Whether state `id`'s accept file `path` is there and counts: any file
/// for an unbound store; for a `bound` one, only a file signed with this
/// start's `acceptance` key and counter (an ignored file is logged).
fn accept_file_counts(
    path: &Path,
    id: &str,
    bound: bool,
    acceptance: Option<&(Zeroizing<[u8; 32]>, Option<u64>)>,
) -> bool {
    if !path.exists() {
        return false;
    }
    if !bound {
        return true;
    }
    let signed = acceptance.is_some_and(|(key, counter)| accept_file_is_signed(path, key, id, *counter));
    if !signed {
        tracing::warn!(
            path = %path.display(),
            "{ACCEPT_FILE} ignored: with [keystore] pcrs it must be written by `fidoseald --accept-current-state` \
             in the approved boot state, for this start"
        );
    }
    signed
}

/// `fidoseald --accept-current-state DIR`: the accept file of state `id`
/// (in `dir`), for the next start. `acceptance`: a bound store's acceptance
/// key and the NV counter's value now (fidoseald stopped: what the next
/// start reads); `None` (unbound): a plain file.
pub(super) fn write_accept_file(
    dir: &Path,
    id: &str,
    acceptance: Option<(&[u8; 32], Option<u64>)>,
) -> Result<PathBuf, RollbackError> {
    let path = dir.join(ACCEPT_FILE);
    let text = match acceptance {
        None => "# fidoseal: accept this state as it is at the next start (docs/tpm.md, Anti-rollback)\n".to_string(),
        Some((key, counter)) => format!(
            "{}\n# fidoseal: accept this state as it is at the next start only (docs/tpm.md, Anti-rollback)\n",
            hex::encode(accept_mac(key, id, counter).finalize().into_bytes())
        ),
    };
    write_atomically(&path, text.as_bytes()).map_err(|source| RollbackError::Write { path: path.clone(), source })?;
    Ok(path)
}

/// Any accept file in the state directory: the machine's, or a user's two
/// levels down (`users/<uid>`): only then does a bound store's start
/// compute the acceptance key.
fn any_accept_file(state_dir: &Path) -> bool {
    let subdirs = |dir: &Path| -> Vec<PathBuf> {
        std::fs::read_dir(dir)
            .map(|entries| entries.filter_map(Result::ok).map(|e| e.path()).filter(|p| p.is_dir()).collect())
            .unwrap_or_default()
    };
    state_dir.join(ACCEPT_FILE).exists()
        || subdirs(state_dir).iter().flat_map(|dir| subdirs(dir)).any(|dir| dir.join(ACCEPT_FILE).exists())
}

// --- the anchor key ----------------------------------------------------------

/// A new anchor key (HMAC, under the machine primary: it survives
/// authenticatorReset, and goes only with a cleared TPM). `policy`: a bound
/// generation's authPolicy (pcr_policy.rs), so that the key, like the
/// generation's other objects, is usable only in an approved boot state.
fn new_anchor_key(conn: &mut Connection, policy: Option<&[u8]>) -> Result<(Vec<u8>, Vec<u8>), OpError> {
    with_machine_primary(conn, |ctx, primary| {
        let template = objects::hmac_key_template()
            .and_then(|t| objects::bound(t, policy))
            .map_err(at("building the HMAC key template"))?;
        let (public, private) = create_object(ctx, primary, template)?;
        Ok((public.marshall().map_err(at("marshalling the anchor key"))?, private.value().to_vec()))
    })
}

/// The anchor MAC key: TPM2_HMAC(anchor key, label), in a salted session;
/// with `boot`, the bound generation's policy session (the same code as
/// derive_secret).
fn anchor_key(
    conn: &mut Connection,
    public: &[u8],
    private: &[u8],
    boot: Option<&BootBinding>,
) -> Result<Zeroizing<[u8; 32]>, OpError> {
    let public = Public::unmarshall(public).map_err(|_| OpError::NotOurs)?;
    let private = Private::try_from(private.to_vec()).map_err(|_| OpError::NotOurs)?;
    with_machine_primary(conn, |ctx, primary| {
        tpm_hmac(ctx, primary, &public, &private, KEY_LABEL, boot).map_err(|e| match e {
            OpError::Tpm { error, .. } if super::classify(&error) == super::Fault::Refused => OpError::NotOurs,
            other => other,
        })
    })
}

/// Whether the anchor key's public area (from the anchor file) is the
/// template [`new_anchor_key`] makes for `policy`: that authPolicy, no
/// userWithAuth, and fixedTPM, fixedParent and sensitiveDataOrigin, so the
/// TPM made its secret and it never left (a key with a secret chosen by
/// whoever made it, or imported, would let them compute the MAC without the
/// TPM). The TPM checks the private blob against this public area at
/// TPM2_Load, so the area cannot lie about the key.
fn is_bound_key(public: &[u8], policy: &[u8]) -> bool {
    let Ok(Public::KeyedHash { object_attributes, name_hashing_algorithm, auth_policy, parameters, .. }) =
        Public::unmarshall(public)
    else {
        return false;
    };
    let expected = objects::hmac_key_template().and_then(|t| objects::bound(t, Some(policy)));
    let Ok(Public::KeyedHash {
        object_attributes: want_attributes,
        name_hashing_algorithm: want_name_hash,
        auth_policy: want_policy,
        parameters: want_parameters,
        ..
    }) = expected
    else {
        return false;
    };
    object_attributes == want_attributes
        && name_hashing_algorithm == want_name_hash
        && auth_policy == want_policy
        && parameters == want_parameters
}

// --- the anchor ----------------------------------------------------------------

struct Inner {
    tpm: Arc<Mutex<Tpm>>,
    path: PathBuf,
    key: Zeroizing<[u8; 32]>,
    file: AnchorFile,
    /// This start accepted the whole state directory (the machine's
    /// [`ACCEPT_FILE`]): every state opened is accepted as it is.
    accept_all: bool,
    /// The signature counters' epoch: the NV value of this start's (or the
    /// latest) epoch increment.
    epoch: u64,
    /// A bound store: an accept file must be signed ([`accept_mac`]).
    bound: bool,
    /// With `bound` and an accept file at start: the acceptance key, and the
    /// NV counter's value when this start read it (what the files sign).
    acceptance: Option<(Zeroizing<[u8; 32]>, Option<u64>)>,
}

impl Inner {
    /// Every change of the anchor, in the order that survives a kill at any
    /// point (module comment): the file with the counter's next value and
    /// `change` applied, then the increment. The new counter value.
    fn advance(&mut self, change: impl FnOnce(&mut BTreeMap<String, u64>)) -> Result<u64, RollbackError> {
        let file = self.write_next(change)?;
        run_op(&self.tpm, "increment the anti-rollback counter", |conn| with_nv(&mut conn.ctx, nv_increment))?;
        self.file = file;
        Ok(self.file.counter)
    }

    /// The first half of [`Self::advance`]: the next file, written.
    fn write_next(&self, change: impl FnOnce(&mut BTreeMap<String, u64>)) -> Result<AnchorFile, RollbackError> {
        let mut file = self.file.clone();
        file.counter += 1;
        change(&mut file.states);
        write_atomically(&self.path, &file.encode(&self.key))
            .map_err(|source| RollbackError::Write { path: self.path.clone(), source })?;
        Ok(file)
    }
}

/// A bound store's side of the anchor (mod.rs): the binding, whose policy
/// session computes the anchor key, and the store's PRF key, from which the
/// key that signs accept files comes.
pub(super) struct Bound<'a> {
    pub(super) boot: &'a BootBinding,
    pub(super) prf_public: &'a Public,
    pub(super) prf_private: &'a Private,
}

impl Bound<'_> {
    /// The acceptance key: the bound PRF of a fixed input (mod.rs's
    /// derive_secret code), so only the approved boot state computes it.
    pub(super) fn acceptance_key(&self, conn: &mut Connection) -> Result<Zeroizing<[u8; 32]>, OpError> {
        let input = [&[super::PRF_ACCEPT][..], ACCEPT_LABEL].concat();
        tpm_hmac(&mut conn.ctx, conn.primary, self.prf_public, self.prf_private, &input, Some(self.boot))
    }
}

/// The machine's anchor, shared by every state's database.
#[derive(Clone)]
pub struct RollbackAnchor {
    inner: Arc<Mutex<Inner>>,
}

impl std::fmt::Debug for RollbackAnchor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RollbackAnchor")
    }
}

/// How the anchor came up, for the log and the tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AnchorStart {
    /// The counter and the file agree.
    Verified,
    /// A kill between the file write and the increment: done now.
    IncrementCompleted,
    /// First start (or a new state directory, or a cleared TPM).
    Created,
    /// An administrator accepted the state directory as it is.
    Accepted,
}

fn lock(tpm: &Arc<Mutex<Tpm>>) -> MutexGuard<'_, Tpm> {
    tpm.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn run<T>(
    tpm: &Arc<Mutex<Tpm>>,
    what: &'static str,
    op: impl FnMut(&mut Connection) -> Result<T, OpError>,
) -> Result<T, RollbackError> {
    lock(tpm).run(what, op).map_err(|e| RollbackError::Tpm(format!("{what}: {e}")))
}

fn run_op<T>(
    tpm: &Arc<Mutex<Tpm>>,
    what: &'static str,
    mut op: impl FnMut(&mut Connection) -> Result<T, OpError>,
) -> Result<T, RollbackError> {
    // Errors of ours (OpError::Internal) keep their message; an unapproved
    // boot state stays one (never taken for a stale state).
    let mut kept = None;
    let result = run(tpm, what, |conn| {
        op(conn).inspect_err(|e| match e {
            OpError::Internal(m) => kept = Some(RollbackError::Tpm(m.clone())),
            OpError::BootState(m) => kept = Some(RollbackError::BootState(m.clone())),
            OpError::Tpm { .. } | OpError::NotOurs => {}
        })
    });
    result.map_err(|e| kept.unwrap_or(e))
}

impl RollbackAnchor {
    /// Opens (or creates) the anchor of `state_dir` on `tpm`. `fresh`: the
    /// key store was just created (a new state directory, or a cleared TPM):
    /// there is nothing older to protect, so a counter or file left from
    /// before is taken over rather than refused. `boot`: the store's
    /// generation is bound to the boot state; so is the anchor key.
    pub(super) fn open(
        tpm: Arc<Mutex<Tpm>>,
        state_dir: &Path,
        fresh: bool,
        bound: Option<Bound<'_>>,
    ) -> Result<(Self, AnchorStart), RollbackError> {
        let boot = bound.as_ref().map(|b| b.boot);
        if let Some(boot) = boot {
            // Before anything is read: no state is judged, or written,
            // without the key that verifies it.
            run_op(&tpm, "check the boot state", |conn| boot.check(&mut conn.ctx))?;
        }
        let policy = boot.map(BootBinding::object_policy);
        let path = state_dir.join(ANCHOR_FILE);
        let accept_path = state_dir.join(ACCEPT_FILE);
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => Some(bytes),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(RollbackError::Tpm(format!("cannot read {}: {e}", path.display()))),
        };
        let counter = run_op(&tpm, "read the anti-rollback counter", |conn| counter_value(&mut conn.ctx))?;
        let stale = |what: String| RollbackError::Stale { what, recovery: recovery(&accept_path, boot.is_some()) };
        // Only when there is an accept file (one HMAC in the policy session).
        let acceptance = match &bound {
            Some(bound) if any_accept_file(state_dir) => {
                let key = run_op(&tpm, "compute the acceptance key", |conn| bound.acceptance_key(conn))?;
                Some((key, counter))
            }
            _ => None,
        };
        let accept = accept_file_counts(&accept_path, SINGLE_USER, bound.is_some(), acceptance.as_ref());

        // The file, its key and its MAC, if it is there and opens.
        let unbound = |file: &AnchorFile| policy.as_deref().is_some_and(|p| !is_bound_key(&file.key_public, p));
        let mut opened = None;
        if let Some(bytes) = &bytes {
            match AnchorFile::decode(bytes) {
                // A bound store's anchor key was made bound with the store
                // (a bound store is always a fresh one): any other key is a
                // file made by someone who could compute its MAC without the
                // approved boot state.
                Some((file, _, _)) if unbound(&file) && !(fresh || accept) => {
                    return Err(stale(format!(
                        "the anchor key is not bound to the boot state: the anchor file was replaced ({})",
                        path.display()
                    )))
                }
                // Fresh or accepted: a new, bound key below; this one is never used.
                Some((file, _, _)) if unbound(&file) => {}
                Some((file, signed, mac)) => {
                    let key = run_op(&tpm, "load the anchor key", |conn| {
                        anchor_key(conn, &file.key_public, &file.key_private, boot)
                    });
                    match key {
                        // The PCRs moved since the check above: not a stale state.
                        Err(e @ RollbackError::BootState(_)) => return Err(e),
                        Ok(key) if file_mac(&key, signed) == mac => opened = Some((file, key)),
                        Ok(_) if !(fresh || accept) => {
                            return Err(stale(format!("{} was altered (its MAC does not match)", path.display())))
                        }
                        Err(e) if !(fresh || accept) => {
                            return Err(stale(format!("{} does not open with this TPM ({e})", path.display())))
                        }
                        _ => {}
                    }
                }
                None if !(fresh || accept) => return Err(stale(format!("{} is damaged", path.display()))),
                None => {}
            }
        }

        let start = match (&opened, counter) {
            (Some((file, _)), Some(value)) if file.counter == value => AnchorStart::Verified,
            (Some((file, _)), Some(value)) if file.counter == value + 1 => AnchorStart::IncrementCompleted,
            _ if accept => AnchorStart::Accepted,
            _ if fresh => AnchorStart::Created,
            (Some((file, _)), Some(value)) => {
                return Err(stale(format!(
                    "the state directory {} is older than this TPM's anti-rollback counter (anchored at {}, the \
                     counter is at {value}): it was restored from an older copy",
                    state_dir.display(),
                    file.counter
                )))
            }
            (Some(_), None) => {
                return Err(stale(format!(
                    "the TPM's anti-rollback counter (NV index {NV_INDEX:#010x}) is gone but {} is there: someone \
                     removed the index",
                    path.display()
                )))
            }
            (None, Some(_)) => {
                return Err(stale(format!(
                    "the TPM has fidoseal's anti-rollback counter (NV index {NV_INDEX:#010x}) but the state \
                     directory {} has no {ANCHOR_FILE}: the directory was replaced or the file removed",
                    state_dir.display()
                )))
            }
            // A bound store made its anchor when it was made (binding needs
            // a fresh store), so neither is left only if someone removed both.
            (None, None) if boot.is_some() => {
                return Err(stale(format!(
                    "the anti-rollback anchor of a key store bound to the boot state is gone: someone removed the NV \
                     index {NV_INDEX:#010x} and the anchor file {}",
                    path.display()
                )))
            }
            // No file and no counter: the first start with anti-rollback (an
            // upgrade); a file that does not open was refused above.
            (None, None) => AnchorStart::Created,
        };

        let (file, key) = match (start, opened) {
            (AnchorStart::Verified | AnchorStart::IncrementCompleted, Some(opened)) => opened,
            (AnchorStart::Accepted, Some((mut file, key))) => {
                // The directory as it is, its entries and key kept: anchored
                // at the counter's value now.
                file.counter = match counter {
                    Some(value) => value,
                    None => run_op(&tpm, "define the anti-rollback counter", |conn| define_counter(&mut conn.ctx))?,
                };
                write_atomically(&path, &file.encode(&key))
                    .map_err(|source| RollbackError::Write { path: path.clone(), source })?;
                (file, key)
            }
            _ => {
                // A new anchor (and key) over the states as they are.
                let (key_public, key_private) =
                    run_op(&tpm, "create the anchor key", |conn| new_anchor_key(conn, policy.as_deref()))?;
                let key =
                    run_op(&tpm, "load the anchor key", |conn| anchor_key(conn, &key_public, &key_private, boot))?;
                let counter = match counter {
                    Some(value) => value,
                    None => run_op(&tpm, "define the anti-rollback counter", |conn| define_counter(&mut conn.ctx))?,
                };
                let file = AnchorFile { key_public, key_private, counter, states: BTreeMap::new() };
                write_atomically(&path, &file.encode(&key))
                    .map_err(|source| RollbackError::Write { path: path.clone(), source })?;
                (file, key)
            }
        };
        if start == AnchorStart::IncrementCompleted {
            run_op(&tpm, "increment the anti-rollback counter", |conn| with_nv(&mut conn.ctx, nv_increment))?;
        }
        let inner = Inner {
            tpm,
            path,
            key,
            file,
            accept_all: start == AnchorStart::Accepted,
            epoch: 0,
            bound: boot.is_some(),
            acceptance,
        };
        if start == AnchorStart::Accepted {
            tracing::warn!(
                audit = "anti-rollback",
                state_dir = %state_dir.display(),
                "AN ADMINISTRATOR ACCEPTED THE STATE DIRECTORY AS IT IS ({ACCEPT_FILE} was there): it is the new \
                 anti-rollback anchor"
            );
            let _ = std::fs::remove_file(&accept_path);
        }
        let anchor = Self { inner: Arc::new(Mutex::new(inner)) };
        // This start's counter epoch: above every counter given before it.
        anchor.advance_epoch()?;
        Ok((anchor, start))
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The MAC key of one state's rollback record.
    pub fn state_key(&self, id: &str) -> Zeroizing<[u8; 32]> {
        state_key_under(&self.lock().key, id)
    }

    /// Anchors `version` for state `id`: the file with the counter's next
    /// value first, then the increment (see the module's comment for why
    /// this order survives a kill at any point).
    pub fn anchor(&self, id: &str, version: u64) -> Result<(), RollbackError> {
        self.lock().advance(|states| {
            states.insert(id.to_owned(), version);
        })?;
        Ok(())
    }

    /// A kill between the anchor file's write and the increment, for the
    /// tests: the file says the next counter value, the counter does not.
    #[cfg(test)]
    pub fn write_file_without_increment(&self, id: &str, version: u64) {
        let mut inner = self.lock();
        inner.file = inner
            .write_next(|states| {
                states.insert(id.to_owned(), version);
            })
            .unwrap();
    }

    /// A new signature counter epoch: the anchor file with the counter's
    /// next value, then the increment (as [`Self::anchor`]); its range.
    pub fn advance_epoch(&self) -> Result<(u32, u32), RollbackError> {
        let mut inner = self.lock();
        inner.epoch = inner.advance(|_| {})?;
        let range = counter_range(inner.epoch);
        if range.1 == u32::MAX {
            tracing::warn!(epoch = inner.epoch, "signature counters reached u32::MAX: they stop (never wrap)");
        }
        Ok(range)
    }

    /// The signature counters' range of the current epoch.
    pub fn counter_epoch(&self) -> (u32, u32) {
        counter_range(self.lock().epoch)
    }

    /// Moves the entry of state `from` to `to`, at `version` (anchored as
    /// [`Self::anchor`]).
    pub fn move_entry(&self, from: &str, to: &str, version: u64) -> Result<(), RollbackError> {
        self.lock().advance(|states| {
            states.remove(from);
            states.insert(to.to_owned(), version);
        })?;
        Ok(())
    }

    /// The version anchored for state `id`.
    pub fn anchored(&self, id: &str) -> Option<u64> {
        self.lock().file.states.get(id).copied()
    }

    /// Whether this start accepts every state as it is.
    pub fn accepts_all(&self) -> bool {
        self.lock().accept_all
    }

    /// Whether state `id`'s accept file (`path`) is there and counts: any
    /// file for an unbound store; with `pcrs`, one signed for this start.
    fn accepts(&self, id: &str, path: &Path) -> bool {
        let inner = self.lock();
        accept_file_counts(path, id, inner.bound, inner.acceptance.as_ref())
    }

    /// The recovery of a stale state whose accept file is `path`.
    fn recovery(&self, path: &Path) -> String {
        recovery(path, self.lock().bound)
    }

    /// The counter value the anchor is at.
    pub fn counter(&self) -> u64 {
        self.lock().file.counter
    }
}

/// The MAC key of state `id`'s rollback record under the anchor MAC key
/// `key` (`pub(super)` for the tests' forgeries).
pub(super) fn state_key_under(key: &[u8; 32], id: &str) -> Zeroizing<[u8; 32]> {
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(key).expect("any key length");
    mac.update(STATE_KEY_LABEL);
    mac.update(id.as_bytes());
    Zeroizing::new(mac.finalize().into_bytes().into())
}

/// One state's [`fidoseal_store::AnchorSink`].
pub struct StateSink {
    pub anchor: RollbackAnchor,
    pub id: String,
}

impl fidoseal_store::AnchorSink for StateSink {
    fn anchor(&mut self, version: u64) -> Result<(), String> {
        self.anchor.anchor(&self.id, version).map_err(|e| e.to_string())
    }

    fn new_epoch(&mut self) -> Result<(u32, u32), String> {
        self.anchor.advance_epoch().map_err(|e| e.to_string())
    }
}

/// How a state came up under the anchor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StateStart {
    /// At its anchored version (or one change ahead of it, now anchored).
    Verified,
    /// Not anchored before: a new state, or one from before anti-rollback.
    Adopted,
    /// Refused as stale before, accepted by an administrator.
    Accepted,
}

/// Turns anti-rollback on for the credential state `id` (in `dir`) and
/// checks it against the anchor: a stale state is an error, never reset.
pub fn protect_state(
    anchor: &RollbackAnchor,
    database: &mut fidoseal_store::CredentialDatabase,
    id: &str,
    dir: &Path,
) -> Result<StateStart, RollbackError> {
    let sink = StateSink { anchor: anchor.clone(), id: id.to_owned() };
    let check =
        database.protect(anchor.state_key(id), Box::new(sink)).map_err(|e| RollbackError::Tpm(e.to_string()))?;
    let accept_path = dir.join(ACCEPT_FILE);
    let accept = anchor.accepts_all() || anchor.accepts(id, &accept_path);
    let start = match (check, anchor.anchored(id)) {
        (RecordCheck::Mismatch, None) if id != SINGLE_USER => migrated(anchor, database, id)?,
        _ => None,
    };
    let start = match start {
        Some(start) => start,
        None => check_state(anchor, database, id, check, anchor.anchored(id), accept, &accept_path)?,
    };
    // Every counter from now on is above anything given in an earlier epoch.
    let (floor, ceiling) = anchor.counter_epoch();
    database.set_counter_epoch(floor, ceiling).map_err(|e| RollbackError::Tpm(e.to_string()))?;
    Ok(start)
}

/// The single-user state's id.
pub const SINGLE_USER: &str = ".";

/// A user's state that is the single-user state moved to per-user mode
/// (migrate_users.rs): its record verifies under the single-user key and is
/// not behind the single-user entry. Re-keyed and anchored under the user,
/// and the single-user entry dropped (so this works once).
fn migrated(
    anchor: &RollbackAnchor,
    database: &mut fidoseal_store::CredentialDatabase,
    id: &str,
) -> Result<Option<StateStart>, RollbackError> {
    let Some(anchored) = anchor.anchored(SINGLE_USER) else {
        return Ok(None);
    };
    let check = database
        .rollback_record_under(&anchor.state_key(SINGLE_USER))
        .map_err(|e| RollbackError::Tpm(e.to_string()))?;
    let RecordCheck::Valid { version } = check else {
        return Ok(None);
    };
    if version < anchored {
        return Ok(None);
    }
    database.set_rollback_version(version).map_err(|e| RollbackError::Tpm(e.to_string()))?;
    anchor.move_entry(SINGLE_USER, id, version)?;
    tracing::info!(state = id, version, "anti-rollback: the single-user state moved to this user, anchored here");
    Ok(Some(StateStart::Verified))
}

/// The state's record against its anchor entry (module comment); a state
/// accepted or adopted is anchored here.
fn check_state(
    anchor: &RollbackAnchor,
    database: &mut fidoseal_store::CredentialDatabase,
    id: &str,
    check: fidoseal_store::RecordCheck,
    anchored: Option<u64>,
    accept: bool,
    accept_path: &Path,
) -> Result<StateStart, RollbackError> {
    let write = |database: &mut fidoseal_store::CredentialDatabase, version| {
        database.set_rollback_version(version).map_err(|e| RollbackError::Tpm(e.to_string()))
    };
    let stale = |what: String| RollbackError::Stale { what, recovery: anchor.recovery(accept_path) };
    match (check, anchored) {
        (RecordCheck::Valid { version }, Some(at)) if version >= at => {
            if version > at {
                // Killed after the commit, before the anchor: anchor it now.
                anchor.anchor(id, version)?;
            }
            Ok(StateStart::Verified)
        }
        (RecordCheck::Valid { version }, None) => {
            anchor.anchor(id, version)?;
            Ok(StateStart::Adopted)
        }
        (RecordCheck::Missing, None) => {
            write(database, 1)?;
            anchor.anchor(id, 1)?;
            Ok(StateStart::Adopted)
        }
        (RecordCheck::Missing, Some(at)) if database.is_empty() => {
            // Its directory was deleted (a reset of that state): nothing in
            // an empty state is worth rolling back to (no PIN to guess, no
            // passkey; counters come from the epoch).
            write(database, at + 1)?;
            anchor.anchor(id, at + 1)?;
            Ok(StateStart::Adopted)
        }
        _ if accept => {
            let version = match check {
                RecordCheck::Valid { version } => version,
                RecordCheck::Missing | RecordCheck::Mismatch => 0,
            }
            .max(anchored.unwrap_or(0))
                + 1;
            write(database, version)?;
            anchor.anchor(id, version)?;
            tracing::warn!(
                audit = "anti-rollback",
                state = id,
                database = %database.path().display(),
                "AN ADMINISTRATOR ACCEPTED THIS CREDENTIAL STATE AS IT IS ({ACCEPT_FILE} was there): it is now \
                 anchored at version {version}"
            );
            let _ = std::fs::remove_file(accept_path);
            Ok(StateStart::Accepted)
        }
        (RecordCheck::Valid { version }, Some(at)) => Err(stale(format!(
            "the credential state {} is older than its anti-rollback anchor (version {version}, anchored at {at}): \
             it was restored from an older copy",
            database.path().display()
        ))),
        (RecordCheck::Missing, Some(at)) => Err(stale(format!(
            "the credential state {} has no rollback record but was anchored at version {at}: it was replaced by a \
             copy from before anti-rollback, or its record was removed",
            database.path().display()
        ))),
        (RecordCheck::Mismatch, _) => Err(stale(format!(
            "the rollback record of {} does not match its content: an older copy with the record of a newer one, \
             or a database changed outside fidoseald",
            database.path().display()
        ))),
    }
}
