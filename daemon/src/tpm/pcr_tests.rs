//! Boot-state binding (`[keystore] pcrs`, pcr_policy.rs) against swtpm:
//! PCR 7 is extended through the TPM as firmware would, and the keys must
//! refuse with the clear error until the update window or the recovery key
//! approves the new state. The raw-blob tests use tss-esapi directly, as an
//! attacker with the state directory and the TPM (another OS) would.

use std::os::unix::fs::PermissionsExt;
use std::str::FromStr;

use fidoseal_ctap::platform::{Algorithm, KeyStore, KeyStoreError};
use p256::ecdsa::signature::Verifier;
use p256::ecdsa::VerifyingKey;
use tss_esapi::constants::tss::TPM2_PT_LOCKOUT_COUNTER;
use tss_esapi::handles::PcrHandle;
use tss_esapi::structures::{DigestValues, Nonce, VerifiedTicket};
use tss_esapi::tss2_esys::TPMT_TK_VERIFIED;

use super::boot_state_file::BootState;
use super::pcr_policy::{BOOT_STATE_FILE, RECOVERY_KEY_FILE, WINDOW_FILE};
use super::swtpm::{temp_dir, Swtpm};
use super::*;

const PCR: u8 = 7;

fn settings(tpm: &Swtpm) -> TpmSettings {
    TpmSettings { tcti: tpm.tcti(), owner_auth_file: None }
}

fn open_bound(tpm: &Swtpm, state: &Path) -> TpmKeyStore {
    TpmKeyStore::open_bound(&settings(tpm), state, &[PCR]).expect("open the bound TPM key store")
}

fn raw_context(tpm: &Swtpm) -> Context {
    Context::new(TctiNameConf::from_str(&tpm.tcti()).unwrap()).unwrap()
}

/// TPM2_PCR_Extend(7) with a fixed digest, as a firmware or Secure Boot
/// database update changes it.
fn extend(ctx: &mut Context) {
    let mut values = DigestValues::new();
    values.set(HashingAlgorithm::Sha256, Digest::try_from(vec![0x42; 32]).unwrap());
    ctx.execute_with_session(Some(AuthSession::Password), |c| c.pcr_extend(PcrHandle::Pcr7, values)).unwrap();
}

impl TpmKeyStore {
    /// Extends PCR 7 through the store's own connection (swtpm serves one
    /// connection at a time).
    pub(crate) fn extend_pcr_for_test(&mut self) {
        self.tpm()
            .run("extend", |conn| {
                extend(&mut conn.ctx);
                Ok(())
            })
            .unwrap();
    }

    fn lockout_counter_for_test(&mut self) -> u32 {
        self.tpm()
            .run("lockout counter", |conn| {
                let (data, _) = conn
                    .ctx
                    .execute_without_session(|c| {
                        c.get_capability(CapabilityType::TpmProperties, TPM2_PT_LOCKOUT_COUNTER, 1)
                    })
                    .map_err(at("get capability"))?;
                match data {
                    CapabilityData::TpmProperties(list) => Ok(list.iter().next().map(|p| p.value()).unwrap_or(0)),
                    _ => Err(OpError::Internal("not properties".into())),
                }
            })
            .unwrap()
    }
}

fn verifies(created: &CreatedKey, message: &[u8], der: &[u8]) -> bool {
    let PublicKey::P256 { x, y } = &created.public_key else { return false };
    let mut sec1 = vec![4u8];
    sec1.extend_from_slice(x);
    sec1.extend_from_slice(y);
    let key = VerifyingKey::from_sec1_bytes(&sec1).unwrap();
    p256::ecdsa::Signature::from_der(der).map(|s| key.verify(message, &s).is_ok()).unwrap_or(false)
}

fn assert_boot_state_error<T>(result: Result<T, KeyStoreError>) {
    match result {
        Ok(_) => panic!("expected the boot-state error, got a success"),
        Err(KeyStoreError::Backend(message)) => {
            assert!(message.contains("the boot state changed: PCR 7 is "), "{message}");
            assert!(message.contains("approved: PCR 7 = "), "{message}");
            assert!(message.contains("approve-boot-state"), "{message}");
        }
        Err(other) => panic!("expected the boot-state error, got {other:?}"),
    }
}

/// Every operation that needs the TPM's keys fails with the clear error.
fn assert_locked(store: &mut TpmKeyStore, created: &CreatedKey, id: &[u8]) {
    assert_boot_state_error(store.sign(Algorithm::Es256, &created.key_handle, b"m"));
    assert_boot_state_error(store.derive_secret(b"pin"));
    assert_boot_state_error(store.generate(Algorithm::Es256));
    assert_boot_state_error(store.open_credential_id(&[1; 32], id));
    assert_boot_state_error(store.seal_credential_id(&[1; 32], b"p"));
    assert!(!store.boot_state().unwrap().unwrap().is_approved);
}

fn assert_works(store: &mut TpmKeyStore, created: &CreatedKey, id: &[u8], secret: &[u8; 32]) {
    let der = store.sign(Algorithm::Es256, &created.key_handle, b"m").unwrap();
    assert!(verifies(created, b"m", &der));
    assert_eq!(&store.derive_secret(b"pin").unwrap().0, secret, "the same secrets as before");
    assert_eq!(store.open_credential_id(&[1; 32], id).unwrap(), b"payload");
    assert!(store.boot_state().unwrap().unwrap().is_approved);
}

struct Made {
    created: CreatedKey,
    id: Vec<u8>,
    secret: [u8; 32],
}

fn make(store: &mut TpmKeyStore) -> Made {
    let created = store.generate(Algorithm::Es256).unwrap();
    let id = store.seal_credential_id(&[1; 32], b"payload").unwrap();
    let secret = store.derive_secret(b"pin").unwrap().0;
    Made { created, id, secret }
}

#[test]
fn extending_a_bound_pcr_makes_the_keys_refuse_with_the_clear_error() {
    let tpm = Swtpm::start();
    let state = temp_dir("pcr-refuse");
    let mut store = open_bound(&tpm, &state);
    assert_eq!(store.startup(), &Startup::Created);
    let made = make(&mut store);
    assert_works(&mut store, &made.created, &made.id, &made.secret);
    assert_eq!(store.transient_objects().unwrap(), 1, "policy sessions and objects are flushed");

    // Under a running store…
    store.extend_pcr_for_test();
    assert_boot_state_error(store.sign(Algorithm::Es256, &made.created.key_handle, b"m"));
    assert_boot_state_error(store.derive_secret(b"pin"));
    assert_eq!(store.transient_objects().unwrap(), 1);
    let report = store.boot_state().unwrap().unwrap();
    assert!(!report.is_approved && report.pcrs == vec![7] && report.approved.len() == 1);
    assert_ne!(report.current, report.approved[0]);
    drop(store);

    // …and after a restart: the store opens (no reset, nothing set aside).
    let before = std::fs::read(state.join(STATE_FILE)).unwrap();
    let mut store = open_bound(&tpm, &state);
    assert_eq!(store.startup(), &Startup::Reopened);
    assert_locked(&mut store, &made.created, &made.id);
    // Nothing about the key store changed on disk.
    assert_eq!(std::fs::read(state.join(STATE_FILE)).unwrap(), before);
    assert!(std::fs::read_dir(&state).unwrap().all(|e| !e.unwrap().file_name().to_string_lossy().contains("unusable")));
    // Reset is refused too (it would make keys that cannot be used).
    assert_boot_state_error(store.reset());
    // Without an open window, allow-boot-change is refused in this state.
    assert_boot_state_error(store.allow_boot_change());
    drop(store);
    std::fs::remove_dir_all(state).unwrap();
}

#[test]
fn changing_pcrs_on_an_existing_store_is_refused_and_changes_nothing() {
    let tpm = Swtpm::start();
    let state = temp_dir("pcr-config");
    drop(TpmKeyStore::open(&settings(&tpm), &state).unwrap());
    let unbound = std::fs::read(state.join(STATE_FILE)).unwrap();
    let err = TpmKeyStore::open_bound(&settings(&tpm), &state, &[7]).unwrap_err().to_string();
    assert!(err.contains("pcrs = [7]") && err.contains("without boot-state binding"), "{err}");
    assert!(err.contains("To keep its passkeys") && err.contains("move"), "{err}");
    assert_eq!(std::fs::read(state.join(STATE_FILE)).unwrap(), unbound);
    assert!(!state.join(BOOT_STATE_FILE).exists());

    let bound_state = temp_dir("pcr-config-bound");
    drop(open_bound(&tpm, &bound_state));
    let bound = std::fs::read(bound_state.join(STATE_FILE)).unwrap();
    for other in [&[][..], &[7, 11]] {
        let err = TpmKeyStore::open_bound(&settings(&tpm), &bound_state, other).unwrap_err().to_string();
        assert!(err.contains("is bound to pcrs = [7]") && err.contains("set pcrs = [7] again"), "{err}");
    }
    assert!(TpmKeyStore::open_bound(&settings(&tpm), &bound_state, &[24]).is_err());
    assert_eq!(std::fs::read(bound_state.join(STATE_FILE)).unwrap(), bound);
    // The documented way to apply a new setting: the key store file moved aside.
    std::fs::rename(bound_state.join(STATE_FILE), bound_state.join("tpm-keystore.old")).unwrap();
    let store = TpmKeyStore::open(&settings(&tpm), &bound_state).unwrap();
    assert_eq!(store.startup(), &Startup::Created);
    drop(store);
    std::fs::remove_dir_all(state).unwrap();
    std::fs::remove_dir_all(bound_state).unwrap();
}

/// The store's primary, re-created from the state file as anyone with the
/// state directory and the TPM could.
fn raw_primary(ctx: &mut Context, state: &Path) -> KeyHandle {
    let persisted = Persisted::decode(&std::fs::read(state.join(STATE_FILE)).unwrap()).unwrap();
    create_primary(ctx, &persisted.generation).ok().unwrap().0
}

fn raw_password_sign(
    ctx: &mut Context,
    primary: KeyHandle,
    handle: &[u8],
    policy: Option<&[u8]>,
) -> tss_esapi::Result<()> {
    let blob = KeyBlob::decode(handle).unwrap();
    let key = ctx.execute_with_session(Some(AuthSession::Password), |c| {
        c.load(primary, blob.private().unwrap(), blob.public_bound(policy).unwrap())
    })?;
    let result = ctx.execute_with_session(Some(AuthSession::Password), |c| {
        c.sign(
            key,
            Digest::try_from(vec![9; 32]).unwrap(),
            SignatureScheme::Null,
            objects::null_hashcheck_ticket().unwrap(),
        )
    });
    ctx.flush_context(key.into()).unwrap();
    result.map(|_| ())
}

/// PolicyPCR(current) + PolicyAuthorize with the newest approval of the
/// state directory, then TPM2_Sign: what another OS would try.
fn raw_policy_sign(ctx: &mut Context, primary: KeyHandle, state: &Path, handle: &[u8]) -> tss_esapi::Result<()> {
    let boot = BootState::decode(&std::fs::read(state.join(BOOT_STATE_FILE)).unwrap()).unwrap();
    let name = pcr_policy::approval_key_name(&boot.approval_key).unwrap();
    let policy = pcr_policy::authorized_policy(&name);
    let blob = KeyBlob::decode(handle).unwrap();
    let key = ctx.execute_with_session(Some(AuthSession::Password), |c| {
        c.load(primary, blob.private().unwrap(), blob.public_bound(Some(&policy)).unwrap())
    })?;
    let approval = &boot.approvals[0];
    let result = (|| {
        // The ticket, as the daemon gets it.
        let (x, y) = (boot.approval_key[1..33].to_vec(), boot.approval_key[33..].to_vec());
        let public = tss_esapi::structures::PublicBuilder::new()
            .with_public_algorithm(tss_esapi::interface_types::algorithm::PublicAlgorithm::Ecc)
            .with_name_hashing_algorithm(HashingAlgorithm::Sha256)
            .with_object_attributes(
                tss_esapi::attributes::ObjectAttributesBuilder::new()
                    .with_user_with_auth(true)
                    .with_sign_encrypt(true)
                    .build()?,
            )
            .with_ecc_parameters(
                tss_esapi::structures::PublicEccParametersBuilder::new_unrestricted_signing_key(
                    tss_esapi::structures::EccScheme::EcDsa(tss_esapi::structures::HashScheme::new(
                        HashingAlgorithm::Sha256,
                    )),
                    tss_esapi::interface_types::ecc::EccCurve::NistP256,
                )
                .build()?,
            )
            .with_ecc_unique_identifier(tss_esapi::structures::EccPoint::new(x.try_into()?, y.try_into()?))
            .build()?;
        let external = ctx.load_external_public(public, Hierarchy::Owner)?;
        let a_hash = Sha256::new().chain_update(&approval.policy).chain_update(b"fidoseal boot state v1").finalize();
        let (r, s) = approval.signature.split_at(32);
        let signature = tss_esapi::structures::Signature::EcDsa(tss_esapi::structures::EccSignature::create(
            HashingAlgorithm::Sha256,
            r.to_vec().try_into()?,
            s.to_vec().try_into()?,
        )?);
        let ticket = ctx.verify_signature(external, Digest::try_from(a_hash.to_vec())?, signature)?;
        let ticket = TPMT_TK_VERIFIED::try_from(ticket)?;
        ctx.flush_context(external.into())?;
        let session = ctx
            .start_auth_session(
                None,
                None,
                None,
                SessionType::Policy,
                SymmetricDefinition::AES_128_CFB,
                HashingAlgorithm::Sha256,
            )?
            .unwrap();
        let policy_session = tss_esapi::interface_types::session_handles::PolicySession::try_from(session)?;
        let selection = tss_esapi::structures::PcrSelectionListBuilder::new()
            .with_selection(HashingAlgorithm::Sha256, &[tss_esapi::structures::PcrSlot::Slot7])
            .build()?;
        let signed = ctx.policy_pcr(policy_session, Digest::default(), selection).and_then(|()| {
            ctx.policy_authorize(
                policy_session,
                Digest::try_from(approval.policy.clone())?,
                Nonce::try_from(b"fidoseal boot state v1".to_vec())?,
                &tss_esapi::structures::Name::try_from(name.clone())?,
                VerifiedTicket::try_from(ticket)?,
            )?;
            ctx.execute_with_session(Some(session), |c| {
                c.sign(
                    key,
                    Digest::try_from(vec![9; 32]).unwrap(),
                    SignatureScheme::Null,
                    objects::null_hashcheck_ticket().unwrap(),
                )
            })
        });
        ctx.flush_context(SessionHandle::from(session).into())?;
        signed.map(|_| ())
    })();
    ctx.flush_context(key.into()).unwrap();
    result
}

#[test]
fn a_key_blob_and_the_tpm_do_not_sign_without_the_approved_boot_state() {
    let tpm = Swtpm::start();

    // Without pcrs (today's default), the blob and the TPM sign with an
    // empty password: the exposure the binding closes.
    let unbound_state = temp_dir("pcr-raw-unbound");
    let mut unbound = TpmKeyStore::open(&settings(&tpm), &unbound_state).unwrap();
    let unbound_key = unbound.generate(Algorithm::Es256).unwrap();
    drop(unbound);
    let mut ctx = raw_context(&tpm);
    let primary = raw_primary(&mut ctx, &unbound_state);
    raw_password_sign(&mut ctx, primary, &unbound_key.key_handle, None).expect("an unbound key signs with a password");
    ctx.flush_context(primary.into()).unwrap();
    drop(ctx);

    let state = temp_dir("pcr-raw");
    let mut store = open_bound(&tpm, &state);
    let created = store.generate(Algorithm::Es256).unwrap();
    drop(store);
    let mut ctx = raw_context(&tpm);
    let primary = raw_primary(&mut ctx, &state);
    // A password session is refused (no userWithAuth)…
    let policy = {
        let boot = BootState::decode(&std::fs::read(state.join(BOOT_STATE_FILE)).unwrap()).unwrap();
        pcr_policy::authorized_policy(&pcr_policy::approval_key_name(&boot.approval_key).unwrap())
    };
    let err = raw_password_sign(&mut ctx, primary, &created.key_handle, Some(&policy)).unwrap_err();
    assert_eq!(errors::raw_code(&err).map(|c| c & 0xff), Some(0x2f), "TPM_RC_AUTH_UNAVAILABLE: {err}");
    // …a policy session works in the approved state (so the next check can fail for the right reason)…
    raw_policy_sign(&mut ctx, primary, &state, &created.key_handle).expect("signs in the approved state");
    // …and not once PCR 7 moved, with every public part of the state directory.
    extend(&mut ctx);
    let err = raw_policy_sign(&mut ctx, primary, &state, &created.key_handle).unwrap_err();
    eprintln!("policy session after the PCR change: {err}");
    assert!(raw_password_sign(&mut ctx, primary, &created.key_handle, Some(&policy)).is_err());
    ctx.flush_context(primary.into()).unwrap();
    drop(ctx);
    std::fs::remove_dir_all(state).unwrap();
    std::fs::remove_dir_all(unbound_state).unwrap();
}

#[test]
fn the_update_window_approves_a_planned_change_at_the_next_start_then_closes() {
    let tpm = Swtpm::start();
    let state = temp_dir("pcr-window");
    let mut store = open_bound(&tpm, &state);
    let made = make(&mut store);
    store.allow_boot_change().unwrap();
    assert!(state.join(WINDOW_FILE).exists());
    assert!(store.boot_state().unwrap().unwrap().window_open);
    // The firmware update (PCR 7 changes), then the reboot.
    store.extend_pcr_for_test();
    drop(store);
    let mut store = open_bound(&tpm, &state);
    assert!(!state.join(WINDOW_FILE).exists(), "the window closes when it is used");
    assert_works(&mut store, &made.created, &made.id, &made.secret);
    let report = store.boot_state().unwrap().unwrap();
    assert_eq!(report.approved.len(), 2, "the new state first, the old one kept");
    assert_eq!(report.current, report.approved[0]);
    assert!(!report.window_open);

    // Another change without a window: refused again.
    store.extend_pcr_for_test();
    drop(store);
    let mut store = open_bound(&tpm, &state);
    assert_locked(&mut store, &made.created, &made.id);
    drop(store);

    // A window opened and a restart without any change: closed all the same.
    let other = temp_dir("pcr-window-unused");
    let mut store = open_bound(&tpm, &other);
    store.allow_boot_change().unwrap();
    drop(store);
    let mut store = open_bound(&tpm, &other);
    assert!(!other.join(WINDOW_FILE).exists(), "closed at the next start, used or not");
    store.extend_pcr_for_test();
    drop(store);
    let mut store = open_bound(&tpm, &other);
    assert!(!store.boot_state().unwrap().unwrap().is_approved);
    drop(store);
    std::fs::remove_dir_all(state).unwrap();
    std::fs::remove_dir_all(other).unwrap();
}

pub(super) fn recovery_key(state: &Path) -> String {
    let text = std::fs::read_to_string(state.join(RECOVERY_KEY_FILE)).unwrap();
    text.lines().next().unwrap().to_owned()
}

#[test]
fn the_recovery_key_approves_the_current_state_and_a_wrong_one_counts_as_a_dictionary_attack_failure() {
    let tpm = Swtpm::start();
    let state = temp_dir("pcr-recovery");
    let mut store = open_bound(&tpm, &state);
    let made = make(&mut store);
    let mode = std::fs::metadata(state.join(RECOVERY_KEY_FILE)).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let key = recovery_key(&state);
    assert!(store.boot_state().unwrap().unwrap().recovery_key_on_disk);
    // The administrator takes it away.
    std::fs::remove_file(state.join(RECOVERY_KEY_FILE)).unwrap();
    assert!(!store.boot_state().unwrap().unwrap().recovery_key_on_disk);
    store.extend_pcr_for_test();
    drop(store);
    let mut store = open_bound(&tpm, &state);
    assert_locked(&mut store, &made.created, &made.id);

    assert!(matches!(store.approve_boot_state("not a key"), Err(ApproveError::Malformed)));
    assert_eq!(store.lockout_counter_for_test(), 0, "a malformed key never reaches the TPM");
    let mut wrong = key.clone().into_bytes();
    wrong[0] = if wrong[0] == b'0' { b'1' } else { b'0' };
    let wrong = String::from_utf8(wrong).unwrap();
    assert!(matches!(store.approve_boot_state(&wrong), Err(ApproveError::WrongKey)));
    assert_eq!(store.lockout_counter_for_test(), 1, "the TPM counted the wrong recovery key");
    assert_locked(&mut store, &made.created, &made.id);

    // The right key: the keys work at once, with the same secrets.
    let report = store.approve_boot_state(&key.to_uppercase()).unwrap();
    assert!(report.is_approved);
    assert_works(&mut store, &made.created, &made.id, &made.secret);
    drop(store);
    let mut store = open_bound(&tpm, &state);
    assert_works(&mut store, &made.created, &made.id, &made.secret);
    // An approved state can be reset: the new generation is bound too.
    store.reset().unwrap();
    let after = make(&mut store);
    store.extend_pcr_for_test();
    assert_boot_state_error(store.sign(Algorithm::Es256, &after.created.key_handle, b"m"));
    assert!(store.approve_boot_state(&key).unwrap().is_approved, "the recovery key outlives a reset");
    assert_works(&mut store, &after.created, &after.id, &after.secret);
    drop(store);
    std::fs::remove_dir_all(state).unwrap();
}

/// The extra cost of the binding per signature (policy session: start,
/// PolicyPCR, PolicyAuthorize, flush): `cargo test -p fidoseal-daemon --
/// --ignored cost_per_signature --nocapture` (docs/tpm.md, Performance).
#[test]
#[ignore]
fn cost_per_signature() {
    let tpm = Swtpm::start();
    let (plain_state, bound_state) = (temp_dir("pcr-cost-plain"), temp_dir("pcr-cost-bound"));
    let mut plain = TpmKeyStore::open(&settings(&tpm), &plain_state).unwrap();
    let plain_key = plain.generate(Algorithm::Es256).unwrap();
    drop(plain);
    let mut bound = open_bound(&tpm, &bound_state);
    let bound_key = bound.generate(Algorithm::Es256).unwrap();
    drop(bound);
    let rounds = 200;
    let mut totals = [std::time::Duration::ZERO; 4];
    for (round, total) in totals.iter_mut().enumerate() {
        let bound_round = round % 2 == 1;
        let (mut store, key) = if bound_round {
            (open_bound(&tpm, &bound_state), &bound_key)
        } else {
            (TpmKeyStore::open(&settings(&tpm), &plain_state).unwrap(), &plain_key)
        };
        let start = std::time::Instant::now();
        for _ in 0..rounds {
            store.sign(Algorithm::Es256, &key.key_handle, b"m").unwrap();
        }
        *total = start.elapsed() / rounds;
    }
    eprintln!("per signature: unbound {:?} / {:?}, bound {:?} / {:?}", totals[0], totals[2], totals[1], totals[3]);
    std::fs::remove_dir_all(plain_state).unwrap();
    std::fs::remove_dir_all(bound_state).unwrap();
}

fn pin_hash(pin: &str) -> [u8; 16] {
    Sha256::digest(pin.as_bytes())[..16].try_into().unwrap()
}

/// The public area and private blob of a stored PIN object, parsed by hand
/// as an attacker with the state directory would (0x70 | u16 len | TPMT_PUBLIC | private).
fn raw_pin_object(stored: &[u8]) -> (Public, Private) {
    assert_eq!(stored[0], 0x70);
    let length = usize::from(u16::from_be_bytes([stored[1], stored[2]]));
    let public = Public::unmarshall(&stored[3..3 + length]).unwrap();
    (public, Private::try_from(stored[3 + length..].to_vec()).unwrap())
}

/// Failed before the PIN object was bound: with `pcrs` set, another boot
/// state still checked PINs through it (Match after the PCR 7 extend), and a
/// password session unsealed it.
#[test]
fn a_bound_generations_pin_object_works_only_in_an_approved_boot_state_and_counts_no_failure_outside_it() {
    let tpm = Swtpm::start();
    let state = temp_dir("pcr-pin");
    let mut store = open_bound(&tpm, &state);
    let object = store.create_pin_object(&pin_hash("1234")).unwrap().expect("a PIN object");
    let (public, _) = raw_pin_object(&object);
    assert!(!public.object_attributes().user_with_auth(), "only a policy session authorizes it");
    assert!(!public.object_attributes().no_da(), "still DA-protected");
    assert!(pin_object::decode(&object, None).is_none(), "not taken for an unbound generation's object");
    let other_key = pcr_policy::approval_key_name(&[4; 65]).unwrap_or_default();
    assert!(pin_object::decode(&object, Some(&pin_object::bound_policy(&other_key))).is_none(), "nor another policy's");
    assert_eq!(store.check_pin_object(&object, &pin_hash("1234")).unwrap(), PinCheck::Match);
    assert_eq!(store.check_pin_object(&object, &pin_hash("9999")).unwrap(), PinCheck::Mismatch);
    assert_eq!(store.lockout_counter_for_test(), 1, "the PIN hash is still the object's auth: a wrong one counts");
    assert_eq!(store.transient_objects().unwrap(), 1, "the PIN object and sessions are flushed");

    // Another boot state: refused with the clear error, before any PIN is compared.
    store.extend_pcr_for_test();
    assert_boot_state_error(store.check_pin_object(&object, &pin_hash("1234")));
    assert_boot_state_error(store.check_pin_object(&object, &pin_hash("9999")));
    assert_eq!(store.lockout_counter_for_test(), 1, "no dictionary-attack failure counted");
    assert_eq!(store.transient_objects().unwrap(), 1);
    drop(store);

    // Not even with the blob, the TPM and the right PIN hash in a password session.
    let mut ctx = raw_context(&tpm);
    let primary = raw_primary(&mut ctx, &state);
    let (public, private) = raw_pin_object(&object);
    let loaded = ctx.execute_with_session(Some(AuthSession::Password), |c| c.load(primary, private, public)).unwrap();
    ctx.tr_set_auth(loaded.into(), Auth::try_from(pin_hash("1234").to_vec()).unwrap()).unwrap();
    let err = ctx.execute_with_session(Some(AuthSession::Password), |c| c.unseal(loaded.into())).unwrap_err();
    assert_eq!(errors::raw_code(&err).map(|c| c & 0xff), Some(0x2f), "TPM_RC_AUTH_UNAVAILABLE: {err}");
    ctx.flush_context(loaded.into()).unwrap();
    ctx.flush_context(primary.into()).unwrap();
    drop(ctx);

    // Approved with the recovery key: the right PIN works again.
    let key = recovery_key(&state);
    let mut store = open_bound(&tpm, &state);
    assert_boot_state_error(store.check_pin_object(&object, &pin_hash("1234")));
    store.approve_boot_state(&key).unwrap();
    assert_eq!(store.check_pin_object(&object, &pin_hash("1234")).unwrap(), PinCheck::Match);
    assert_eq!(store.lockout_counter_for_test(), 1);
    drop(store);
    std::fs::remove_dir_all(state).unwrap();
}

/// Through CTAP, when the boot state changes under a running daemon (PCR 7
/// extended after the start; a start in an unapproved state opens no device
/// at all until the approval: main.rs, rollback_tests.rs): getPinToken fails
/// with the key store's error and spends no CTAP retry (client_pin.rs gives
/// it back) and no TPM dictionary-attack try.
#[test]
fn through_ctap_an_unapproved_boot_state_spends_no_pin_retry() {
    use fidoseal_tests::platform_client::{self as pc, Protocol};
    let tpm = Swtpm::start();
    let state = temp_dir("pcr-pin-ctap");
    let shared = std::sync::Arc::new(Mutex::new(open_bound(&tpm, &state)));
    let mut d = fidoseal_tests::Device::with_keystore(
        fidoseal_ctap::AuthenticatorConfig::default(),
        Box::new(super::admin::SharedTpmKeyStore(std::sync::Arc::clone(&shared))),
    );
    let cid = d.init();
    assert_eq!(pc::set_pin(&mut d, cid, Protocol::Two, "1234"), fidoseal_tests::status::OK);
    assert!(pc::get_pin_token(&mut d, cid, Protocol::Two, "1234").is_ok());
    shared.lock().unwrap().extend_pcr_for_test();
    for _ in 0..3 {
        let status = pc::get_pin_token(&mut d, cid, Protocol::Two, "1234").err();
        assert_eq!(status, Some(0x7f), "CTAP1_ERR_OTHER: the key store's failure, not PIN_INVALID");
        let status = pc::get_pin_token(&mut d, cid, Protocol::Two, "9999").err();
        assert_eq!(status, Some(0x7f), "a wrong PIN is not compared either");
    }
    assert_eq!(pc::get_pin_retries(&mut d, cid).0, 8, "no CTAP retry spent");
    assert_eq!(shared.lock().unwrap().lockout_counter_for_test(), 0, "no TPM try spent");
    shared.lock().unwrap().approve_boot_state(&recovery_key(&state)).unwrap();
    assert!(pc::get_pin_token(&mut d, cid, Protocol::Two, "1234").is_ok());
    drop(d);
    drop(shared);
    std::fs::remove_dir_all(state).unwrap();
}
