//! The PIN object: PIN guessing bounded by the TPM's dictionary-attack
//! (DA) protection (issue #12; docs/tpm.md, "The PIN object and
//! dictionary-attack protection").
//!
//! A sealed-data keyedhash object created under the storage primary at
//! setPIN / changePIN, *without* `noDA`, whose authorization value is the
//! PIN hash (LEFT(SHA-256(PIN), 16)). Checking a PIN is a TPM2_Unseal of it
//! in an HMAC session salted with the primary: the PIN hash is the HMAC key
//! of the authorization and never crosses the bus (at creation it goes in
//! TPM2_Create's inSensitive, parameter-encrypted in the same kind of
//! session). A wrong PIN is TPM_RC_AUTH_FAIL and counts in the TPM's
//! failedTries; a TPM in lockout answers TPM_RC_LOCKOUT before comparing
//! anything. So whoever holds the disk and the TPM meets the TPM's lockout,
//! not just CTAP's retry counter (which is in the state directory).
//!
//! In a generation bound to the boot state (`[keystore] pcrs`,
//! pcr_policy.rs) the object has no `userWithAuth` and the authPolicy
//! PolicyAuthorize(approval key A, the generation's policyRef) followed by
//! TPM2_PolicyAuthValue: the check is a *policy* session (salted, response
//! encrypted) with PolicyPCR(current) → PolicyAuthorize(approved digest,
//! ticket) → PolicyAuthValue, so the PIN hash is still the HMAC key of the
//! authorization and a wrong one still counts at the TPM, but only in a boot
//! state A approved. In any other state PolicyAuthorize fails before the
//! Unseal: the clear boot-state error, no DA failure counted. Unbound
//! generations keep the object above byte for byte.
//!
//! The stored form (the PIN record's verifier field, never 32 bytes long,
//! which is how an HMAC verifier of earlier versions is told apart):
//!
//! ```text
//! 0x70 | TPMT_PUBLIC (u16 len + bytes) | TPM2B_PRIVATE contents
//! ```

use sha2::{Digest as _, Sha256};
use tss_esapi::attributes::{ObjectAttributesBuilder, SessionAttributesBuilder};
use tss_esapi::constants::PropertyTag;
use tss_esapi::handles::{KeyHandle, ObjectHandle, SessionHandle};
use tss_esapi::interface_types::algorithm::{HashingAlgorithm, PublicAlgorithm};
use tss_esapi::interface_types::session_handles::{AuthSession, PolicySession};
use tss_esapi::structures::{
    Auth, Digest, KeyedHashScheme, Private, Public, PublicBuilder, PublicKeyedHashParameters, SensitiveData,
};
use tss_esapi::traits::{Marshall, UnMarshall};
use tss_esapi::Context;

use super::errors::{classify, describe, raw_code, Fault};
use super::pcr_policy::{self, BootBinding};
use super::{at, objects, salted_session, then_flush, OpError};
use fidoseal_ctap::platform::{PinCheck, MAX_PIN_RETRIES};

const FORMAT: u8 = 0x70;
/// What the object seals: checked on unseal, so a blob that is some other
/// sealed object of this TPM is not taken for a PIN object.
const SEALED: &[u8] = b"fidoseal pin object v1";

/// The PIN object's template: sealed data (keyedhash, null scheme),
/// `fixedTPM`, `fixedParent`, `userWithAuth`, and no `noDA`.
pub fn template() -> tss_esapi::Result<Public> {
    let attributes = ObjectAttributesBuilder::new()
        .with_fixed_tpm(true)
        .with_fixed_parent(true)
        .with_user_with_auth(true)
        .with_no_da(false)
        .build()?;
    PublicBuilder::new()
        .with_public_algorithm(PublicAlgorithm::KeyedHash)
        .with_name_hashing_algorithm(HashingAlgorithm::Sha256)
        .with_object_attributes(attributes)
        .with_keyed_hash_parameters(PublicKeyedHashParameters::new(KeyedHashScheme::Null))
        .with_keyed_hash_unique_identifier(Digest::default())
        .build()
}

/// TPM_CC_PolicyAuthValue (Part 2, 6.5.2).
const TPM_CC_POLICY_AUTH_VALUE: u32 = 0x0000_016b;

/// The authPolicy of a bound generation's PIN object:
/// PolicyAuthorize(A, policyRef) then PolicyAuthValue (Part 3, 23.17:
/// policyDigest = H(policyDigest ‖ TPM_CC_PolicyAuthValue)).
pub fn bound_policy(approval_key_name: &[u8]) -> Vec<u8> {
    Sha256::new()
        .chain_update(pcr_policy::authorized_policy(approval_key_name))
        .chain_update(TPM_CC_POLICY_AUTH_VALUE.to_be_bytes())
        .finalize()
        .to_vec()
}

/// The PIN object's public template: [`template`], bound to `policy` when
/// the generation is bound (no `userWithAuth`, that authPolicy).
fn template_for(policy: Option<&[u8]>) -> tss_esapi::Result<Public> {
    objects::bound(template()?, policy)
}

fn flush_session(ctx: &mut Context, session: AuthSession) -> Result<(), OpError> {
    ctx.flush_context(SessionHandle::from(session).into()).map_err(at("TPM2_FlushContext of the session"))
}

/// TPM2_Create of a PIN object for `pin_hash` under `primary`; its stored
/// form. `policy`: [`bound_policy`] in a bound generation.
pub fn create(
    ctx: &mut Context,
    primary: KeyHandle,
    pin_hash: &[u8; 16],
    policy: Option<&[u8]>,
) -> Result<Vec<u8>, OpError> {
    let template = template_for(policy).map_err(at("building the PIN object template"))?;
    let auth = Auth::try_from(pin_hash.to_vec()).map_err(at("building the PIN object's auth value"))?;
    let sealed = SensitiveData::try_from(SEALED.to_vec()).map_err(at("building the sealed data"))?;
    // The primary's authorization (empty) in a salted session with `decrypt`:
    // inSensitive, which carries the PIN hash, goes to the TPM encrypted.
    let session = salted_session(ctx, primary, true, false)?;
    let created = ctx
        .execute_with_session(Some(session), |c| c.create(primary, template, Some(auth), Some(sealed), None, None))
        .map_err(at("TPM2_Create of the PIN object"));
    let flushed = flush_session(ctx, session);
    let created = created?;
    flushed?;
    encode(&created.out_public, &created.out_private)
}

fn encode(public: &Public, private: &Private) -> Result<Vec<u8>, OpError> {
    let public = public.marshall().map_err(at("marshalling the PIN object's public area"))?;
    let length =
        u16::try_from(public.len()).map_err(|_| OpError::Internal("PIN object public area too long".into()))?;
    let mut out = Vec::with_capacity(3 + public.len() + private.value().len());
    out.push(FORMAT);
    out.extend_from_slice(&length.to_be_bytes());
    out.extend_from_slice(&public);
    out.extend_from_slice(private.value());
    Ok(out)
}

/// The public area and private blob of a stored PIN object; `None` for
/// anything that is not one (the public area must be our template's, bound
/// to `policy` exactly when the generation is: an unbound PIN object never
/// loads under a bound generation's primary anyway, binding being fixed
/// when a generation is made).
pub fn decode(stored: &[u8], policy: Option<&[u8]>) -> Option<(Public, Private)> {
    let (&FORMAT, rest) = stored.split_first()? else {
        return None;
    };
    let length = usize::from(u16::from_be_bytes(rest.get(..2)?.try_into().ok()?));
    let public = Public::unmarshall(rest.get(2..2 + length)?).ok()?;
    let private = Private::try_from(rest.get(2 + length..)?.to_vec()).ok()?;
    let expected = template_for(policy).ok()?;
    if public.object_attributes() != expected.object_attributes()
        || public.name_hashing_algorithm() != expected.name_hashing_algorithm()
        || public.auth_policy() != expected.auth_policy()
        || !matches!(public, Public::KeyedHash { .. })
    {
        return None;
    }
    Some((public, private))
}

/// TPM_RC_AUTH_FAIL (format one, 0x08E, with the session number): the
/// authorization of a DA-protected object failed, and failedTries grew.
fn is_auth_fail(error: &tss_esapi::Error) -> bool {
    // Layer 0: the TPM; 12: tpm2-abrmd answering for it.
    raw_code(error).is_some_and(|code| matches!((code >> 16) & 0xff, 0 | 12) && code & 0x80 != 0 && code & 0x3f == 0x0e)
}

/// Uses the PIN object with `pin_hash`: TPM2_Load, TPM2_Unseal in a salted
/// session (`encrypt`: the sealed data comes back encrypted), flushes.
/// `boot`: the generation is bound, the session is a policy session.
pub fn check(
    ctx: &mut Context,
    primary: KeyHandle,
    public: &Public,
    private: &Private,
    pin_hash: &[u8; 16],
    boot: Option<&BootBinding>,
) -> Result<PinCheck, OpError> {
    let object = ctx
        .execute_with_session(Some(AuthSession::Password), |c| c.load(primary, private.clone(), public.clone()))
        .map_err(|error| match classify(&error) {
            Fault::Refused => OpError::Internal(
                "the PIN object does not load under this primary (the PIN record is from another key store)".into(),
            ),
            _ => OpError::Tpm { step: "TPM2_Load of the PIN object", error },
        })?;
    then_flush(ctx, object.into(), "TPM2_FlushContext of the PIN object", |ctx| {
        unseal(ctx, primary, object, pin_hash, boot)
    })
}

fn unseal(
    ctx: &mut Context,
    primary: KeyHandle,
    object: KeyHandle,
    pin_hash: &[u8; 16],
    boot: Option<&BootBinding>,
) -> Result<PinCheck, OpError> {
    let auth = Auth::try_from(pin_hash.to_vec()).map_err(at("building the PIN object's auth value"))?;
    // In a policy session too: after PolicyAuthValue, ESAPI keys the
    // command's HMAC with the object's auth value.
    ctx.tr_set_auth(ObjectHandle::from(object), auth).map_err(at("setting the PIN object's auth value"))?;
    let session = match boot {
        Some(boot) => bound_session(ctx, primary, boot)?,
        None => salted_session(ctx, primary, false, true)?,
    };
    let unsealed = ctx.execute_with_session(Some(session), |c| c.unseal(object.into()));
    let flushed = flush_session(ctx, session);
    let check = match unsealed {
        Ok(data) if data.value() == SEALED => PinCheck::Match,
        Ok(_) => return Err(OpError::Internal("the PIN object sealed something else".into())),
        Err(error) if is_auth_fail(&error) => PinCheck::Mismatch,
        Err(error) if classify(&error) == Fault::Lockout => PinCheck::Locked,
        Err(error) => return Err(OpError::Tpm { step: "TPM2_Unseal of the PIN object", error }),
    };
    flushed?;
    Ok(check)
}

/// A salted policy session that satisfies a bound PIN object's authPolicy
/// in the current boot state, with the response encrypted (TPM2_Unseal has
/// no command parameter to encrypt). An unapproved state fails here, with
/// the boot-state error, before the PIN hash is used.
fn bound_session(ctx: &mut Context, primary: KeyHandle, boot: &BootBinding) -> Result<AuthSession, OpError> {
    let session = boot.session(ctx, Some(primary))?;
    let (attributes, mask) =
        SessionAttributesBuilder::new().with_decrypt(false).with_encrypt(true).with_continue_session(true).build();
    let ready = ctx
        .tr_sess_set_attributes(session, attributes, mask)
        .map_err(at("setting the session attributes"))
        .and_then(|()| PolicySession::try_from(session).map_err(at("the policy session")))
        .and_then(|policy| {
            ctx.execute_without_session(|c| c.policy_auth_value(policy)).map_err(at("TPM2_PolicyAuthValue"))
        });
    match ready {
        Ok(()) => Ok(session),
        Err(e) => {
            pcr_policy::flush_session(ctx, session);
            Err(e)
        }
    }
}

/// The TPM's dictionary-attack parameters (TPM2_GetCapability,
/// TPM_PROPERTIES), as the TPM reports them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DictionaryAttackParameters {
    /// TPM_PT_MAX_AUTH_FAIL: failures before lockout (maxTries).
    pub max_tries: u32,
    /// TPM_PT_LOCKOUT_INTERVAL: seconds for failedTries to drop by one (recoveryTime).
    pub recovery_time: u32,
    /// TPM_PT_LOCKOUT_RECOVERY: seconds after a failed lockoutAuth.
    pub lockout_recovery: u32,
    /// TPM_PT_LOCKOUT_COUNTER: failedTries now.
    pub failed_tries: u32,
}

pub fn dictionary_attack_parameters(ctx: &mut Context) -> Result<DictionaryAttackParameters, OpError> {
    let mut read = |tag| {
        ctx.get_tpm_property(tag).map_err(at("TPM2_GetCapability(TPM_PROPERTIES)")).map(|value| value.unwrap_or(0))
    };
    Ok(DictionaryAttackParameters {
        max_tries: read(PropertyTag::MaxAuthFail)?,
        recovery_time: read(PropertyTag::LockoutInterval)?,
        lockout_recovery: read(PropertyTag::LockoutRecovery)?,
        failed_tries: read(PropertyTag::LockoutCounter)?,
    })
}

/// Logs the DA parameters at start, with a warning where they are tighter
/// than CTAP needs. fidoseal never changes them: they belong to the
/// administrator and to every other user of the TPM.
pub fn log_dictionary_attack_parameters(ctx: &mut Context) {
    let parameters = match dictionary_attack_parameters(ctx) {
        Ok(parameters) => parameters,
        Err(OpError::Tpm { step, error }) => {
            tracing::warn!(step, error = %describe(&error), "cannot read the TPM's dictionary-attack parameters");
            return;
        }
        Err(_) => return,
    };
    let DictionaryAttackParameters { max_tries, recovery_time, lockout_recovery, failed_tries } = parameters;
    tracing::info!(
        max_tries,
        recovery_time_s = recovery_time,
        lockout_recovery_s = lockout_recovery,
        failed_tries,
        "TPM dictionary-attack parameters: wrong PINs count against max_tries, shared with every DA-protected object of \
         the TPM (docs/tpm.md)"
    );
    if max_tries < u32::from(MAX_PIN_RETRIES) {
        tracing::warn!(
            max_tries,
            ctap_pin_retries = MAX_PIN_RETRIES,
            "the TPM locks out after fewer failed authorizations than CTAP's PIN retries: wrong PINs may put the whole \
             TPM in dictionary-attack lockout before the PIN blocks (PIN_AUTH_BLOCKED until it recovers, for every \
             DA-protected object on this TPM). An administrator may raise it, e.g. `tpm2_dictionarylockout -s -n 32 \
             -t 600 -l 86400` (fidoseald never changes it)"
        );
    }
    if failed_tries >= max_tries && max_tries > 0 {
        tracing::warn!(
            failed_tries,
            "the TPM is in dictionary-attack lockout now: PINs are refused as blocked (not counted) until it recovers"
        );
    }
}
