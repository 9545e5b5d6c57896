//! Anti-rollback against swtpm (rollback.rs, store rollback.rs): restored
//! copies of the state directory, of one user's state, or of a database
//! with the record of a newer one are refused at start with what is stale
//! and the recovery; a kill at any point between a change and its anchor
//! starts again; the recovery file and the release work.

use std::path::{Path, PathBuf};

use fidoseal_ctap::platform::{AuthenticatorState, CredentialStore, PinRecord, ResidentCredential};
use fidoseal_store::{AnchorSink, CredentialDatabase, RecordCheck};

use std::str::FromStr;

use tss_esapi::interface_types::algorithm::HashingAlgorithm;
use tss_esapi::interface_types::session_handles::AuthSession;
use tss_esapi::structures::{MaxBuffer, Private, Public};
use tss_esapi::traits::{Marshall, UnMarshall};
use tss_esapi::{Context, TctiNameConf};

use super::rollback::{
    self, AnchorFile, AnchorStart, RollbackAnchor, RollbackError, StateStart, ACCEPT_FILE, ANCHOR_FILE, KEY_LABEL,
};
use super::swtpm::{temp_dir, Swtpm};
use super::{create_primary, errors, objects, pcr_tests, Startup, TpmKeyStore, TpmSettings, MACHINE_PRIMARY_UNIQUE};

fn settings(tpm: &Swtpm) -> TpmSettings {
    TpmSettings { tcti: tpm.tcti(), owner_auth_file: None }
}

/// One daemon start: the key store, the anchor, and the states `ids` (each
/// in its own directory under `state`), or the error that stopped it.
struct Started {
    store: TpmKeyStore,
    anchor: RollbackAnchor,
    start: AnchorStart,
}

fn start(tpm: &Swtpm, state: &Path) -> Result<Started, RollbackError> {
    let store = TpmKeyStore::open(&settings(tpm), state).expect("open the TPM key store");
    let (anchor, start) = store.rollback_anchor(state)?;
    Ok(Started { store, anchor, start })
}

fn state_dir(state: &Path, id: &str) -> PathBuf {
    let dir = if id == "." { state.to_path_buf() } else { state.join(id) };
    crate::state::prepare_state_dir(&dir).unwrap();
    dir
}

fn open_state(started: &Started, state: &Path, id: &str) -> Result<(CredentialDatabase, StateStart), RollbackError> {
    let dir = state_dir(state, id);
    let mut database = CredentialDatabase::open(&dir, 10).unwrap();
    let start = rollback::protect_state(&started.anchor, &mut database, id, &dir)?;
    Ok((database, start))
}

fn credential(n: u8) -> ResidentCredential {
    ResidentCredential {
        credential_id: vec![n; 16],
        rp_id: format!("rp{n}.example"),
        rp_name: None,
        user_id: vec![n],
        user_name: None,
        user_display_name: None,
        algorithm: fidoseal_ctap::platform::Algorithm::Es256,
        key_handle: vec![n; 40],
        created: u64::from(n),
        public_key_cose: vec![0xa0],
        extensions: Default::default(),
    }
}

fn with_pin(retries: u8) -> AuthenticatorState {
    AuthenticatorState {
        pin: Some(PinRecord { verifier: vec![7; 90], code_points: 4 }),
        pin_retries: retries,
        ..AuthenticatorState::default()
    }
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &to.join(entry.file_name()));
        } else {
            std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
        }
    }
}

fn restore(copy: &Path, state: &Path) {
    std::fs::remove_dir_all(state).unwrap();
    copy_tree(copy, state);
}

fn stale(result: Result<impl Sized, RollbackError>) -> String {
    match result {
        Err(e @ RollbackError::Stale { .. }) => e.to_string(),
        Err(other) => panic!("expected a stale state, got {other}"),
        Ok(_) => panic!("a restored state was accepted"),
    }
}

/// A first start with a PIN and two passkeys; the state directory is then
/// copied (daemon stopped), as a backup or a thief would.
fn first_start_then_copy(tpm: &Swtpm, state: &Path) -> PathBuf {
    let started = start(tpm, state).unwrap();
    assert_eq!(started.start, AnchorStart::Created);
    let (mut db, how) = open_state(&started, state, ".").unwrap();
    assert_eq!(how, StateStart::Adopted);
    db.save_state(&with_pin(8)).unwrap();
    db.save(credential(1)).unwrap();
    db.save(credential(2)).unwrap();
    drop((db, started));
    let copy = temp_dir("rollback-copy");
    copy_tree(state, &copy);
    copy
}

#[test]
fn a_restored_state_directory_is_refused_at_start_after_a_pin_failure_or_a_deletion() {
    for change in ["pin failure", "deletion"] {
        let tpm = Swtpm::start();
        let state = temp_dir("rollback-dir");
        let copy = first_start_then_copy(&tpm, &state);
        {
            let started = start(&tpm, &state).unwrap();
            assert_eq!(started.start, AnchorStart::Verified);
            let (mut db, how) = open_state(&started, &state, ".").unwrap();
            assert_eq!(how, StateStart::Verified);
            match change {
                "pin failure" => db.save_state(&with_pin(7)).unwrap(),
                _ => assert!(db.delete(&[1; 16]).unwrap()),
            }
        }
        restore(&copy, &state);
        let message = stale(start(&tpm, &state));
        assert!(message.contains("older than this TPM's anti-rollback counter"), "{change}: {message}");
        assert!(message.contains(&format!("touch {}", state.join(ACCEPT_FILE).display())), "{message}");
        // Refused again at every start: never a silent reset.
        assert!(matches!(start(&tpm, &state), Err(RollbackError::Stale { .. })));
        std::fs::remove_dir_all(&state).unwrap();
        std::fs::remove_dir_all(&copy).unwrap();
    }
}

#[test]
fn a_restored_database_is_refused_even_with_the_record_of_the_newer_one() {
    let tpm = Swtpm::start();
    let state = temp_dir("rollback-db");
    let copy = first_start_then_copy(&tpm, &state);
    {
        let started = start(&tpm, &state).unwrap();
        let (mut db, _) = open_state(&started, &state, ".").unwrap();
        db.save_state(&with_pin(7)).unwrap();
        db.save_state(&with_pin(6)).unwrap();
    }
    // Only the database goes back (the anchor file is the current one).
    let database = state.join(fidoseal_store::DATABASE_FILE);
    let current = temp_dir("rollback-db-current");
    copy_tree(&state, &current);
    std::fs::copy(copy.join(fidoseal_store::DATABASE_FILE), &database).unwrap();
    {
        let started = start(&tpm, &state).unwrap();
        let message = stale(open_state(&started, &state, "."));
        assert!(message.contains("older than its anti-rollback anchor"), "{message}");
    }
    // The old database with the current one's rollback record copied in.
    let record: Vec<u8> = rusqlite_record(&current.join(fidoseal_store::DATABASE_FILE));
    set_record(&database, &record);
    {
        let started = start(&tpm, &state).unwrap();
        let message = stale(open_state(&started, &state, "."));
        assert!(message.contains("does not match its content"), "{message}");
    }
    // Without any record (as if from before anti-rollback).
    delete_record(&database);
    {
        let started = start(&tpm, &state).unwrap();
        let message = stale(open_state(&started, &state, "."));
        assert!(message.contains("has no rollback record"), "{message}");
    }
    for dir in [state, copy, current] {
        std::fs::remove_dir_all(dir).unwrap();
    }
}

fn sqlite(path: &Path, sql: &str) -> String {
    let out =
        std::process::Command::new("sqlite3").arg(path).arg(sql).output().expect("sqlite3 (scripts/install-deps)");
    assert!(out.status.success(), "sqlite3 {sql}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

fn rusqlite_record(path: &Path) -> Vec<u8> {
    let hex = sqlite(path, "SELECT hex(value) FROM settings WHERE name = 'rollback'");
    hex::decode(hex.trim()).unwrap()
}

fn set_record(path: &Path, record: &[u8]) {
    sqlite(path, &format!("UPDATE settings SET value = x'{}' WHERE name = 'rollback'", hex::encode(record)));
}

fn delete_record(path: &Path) {
    sqlite(path, "DELETE FROM settings WHERE name = 'rollback'");
}

/// Anchors nothing: a daemon killed after the database commit.
struct Killed;
impl AnchorSink for Killed {
    fn anchor(&mut self, _version: u64) -> Result<(), String> {
        Ok(())
    }
    fn new_epoch(&mut self) -> Result<(u32, u32), String> {
        Err("killed".into())
    }
}

#[test]
fn a_kill_between_the_state_write_and_the_counter_increment_starts_again() {
    let tpm = Swtpm::start();
    let state = temp_dir("rollback-kill");
    let copy = first_start_then_copy(&tpm, &state);
    // 1. Killed after the commit, before the anchor file was written.
    {
        let started = start(&tpm, &state).unwrap();
        let mut db = CredentialDatabase::open(&state, 10).unwrap();
        let check = db.protect(started.anchor.state_key("."), Box::new(Killed)).unwrap();
        assert!(matches!(check, RecordCheck::Valid { .. }));
        db.save_state(&with_pin(7)).unwrap();
    }
    {
        let started = start(&tpm, &state).unwrap();
        assert_eq!(started.start, AnchorStart::Verified);
        let (mut db, how) = open_state(&started, &state, ".").unwrap();
        assert_eq!(how, StateStart::Verified, "one change ahead of the anchor: accepted, and anchored now");
        assert_eq!(db.load_state().pin_retries, 7);
        // 2. Killed after the anchor file was written, before the increment.
        db.save_state(&with_pin(6)).unwrap();
        let version = db.rollback_version().unwrap();
        started.anchor.write_file_without_increment(".", version + 1);
        // (the database commit of version + 1, as the order is: commit, file, increment)
        let mut raw = CredentialDatabase::open(&state, 10).unwrap();
        raw.protect(started.anchor.state_key("."), Box::new(Killed)).unwrap();
        raw.save_state(&with_pin(5)).unwrap();
    }
    {
        let started = start(&tpm, &state).unwrap();
        assert_eq!(started.start, AnchorStart::IncrementCompleted);
        let (db, how) = open_state(&started, &state, ".").unwrap();
        assert_eq!(how, StateStart::Verified);
        assert_eq!(db.load_state().pin_retries, 5);
    }
    // And the restored copy is still refused after all that.
    {
        let started = start(&tpm, &state).unwrap();
        assert_eq!(started.start, AnchorStart::Verified, "the increment was completed once, not again");
    }
    restore(&copy, &state);
    stale(start(&tpm, &state));
    std::fs::remove_dir_all(state).unwrap();
    std::fs::remove_dir_all(copy).unwrap();
}

#[test]
fn every_user_state_is_protected_by_the_one_index() {
    let tpm = Swtpm::start();
    let state = temp_dir("rollback-users");
    {
        let started = start(&tpm, &state).unwrap();
        for id in ["users/1000", "users/1001"] {
            let (mut db, how) = open_state(&started, &state, id).unwrap();
            assert_eq!(how, StateStart::Adopted);
            db.save_state(&with_pin(8)).unwrap();
            db.save(credential(1)).unwrap();
        }
    }
    let copy = temp_dir("rollback-users-copy");
    copy_tree(&state.join("users/1001"), &copy);
    {
        let started = start(&tpm, &state).unwrap();
        let (mut db, _) = open_state(&started, &state, "users/1001").unwrap();
        assert!(db.delete(&[1; 16]).unwrap());
    }
    // Only user 1001's state goes back.
    restore(&copy, &state.join("users/1001"));
    {
        let started = start(&tpm, &state).unwrap();
        assert_eq!(started.start, AnchorStart::Verified);
        assert_eq!(open_state(&started, &state, "users/1000").unwrap().1, StateStart::Verified);
        let message = stale(open_state(&started, &state, "users/1001"));
        assert!(message.contains(&format!("touch {}", state.join("users/1001").join(ACCEPT_FILE).display())));
        // A state moved to another user's place does not open there either.
        let moved = temp_dir("rollback-users-moved");
        copy_tree(&state.join("users/1000"), &moved);
        drop(started);
        restore(&moved, &state.join("users/1001"));
        let started = start(&tpm, &state).unwrap();
        let message = stale(open_state(&started, &state, "users/1001"));
        assert!(message.contains("does not match its content"), "{message}");
        std::fs::remove_dir_all(moved).unwrap();
    }
    std::fs::remove_dir_all(state).unwrap();
    std::fs::remove_dir_all(copy).unwrap();
}

#[test]
fn an_administrator_accepts_a_restored_state_with_the_accept_file_once() {
    let tpm = Swtpm::start();
    let state = temp_dir("rollback-accept");
    let copy = first_start_then_copy(&tpm, &state);
    {
        let started = start(&tpm, &state).unwrap();
        let (mut db, _) = open_state(&started, &state, ".").unwrap();
        assert!(db.delete(&[2; 16]).unwrap());
    }
    restore(&copy, &state);
    stale(start(&tpm, &state));
    std::fs::write(state.join(ACCEPT_FILE), b"").unwrap();
    {
        let started = start(&tpm, &state).unwrap();
        assert_eq!(started.start, AnchorStart::Accepted);
        let (db, how) = open_state(&started, &state, ".").unwrap();
        assert_eq!(how, StateStart::Verified, "the accepted directory's states are as anchored in it");
        assert_eq!(db.credential_count(), 2, "the state as it is: the administrator's choice");
        assert!(!state.join(ACCEPT_FILE).exists(), "the acceptance is used once");
    }
    let started = start(&tpm, &state).unwrap();
    assert_eq!(started.start, AnchorStart::Verified, "the accepted state is the new anchor");
    drop(started);
    std::fs::remove_dir_all(state).unwrap();
    std::fs::remove_dir_all(copy).unwrap();
}

#[test]
fn an_upgrade_adopts_the_state_and_release_leaves_nothing_in_the_tpm() {
    let tpm = Swtpm::start();
    let state = temp_dir("rollback-upgrade");
    {
        // A state directory from before anti-rollback: key store and database.
        let store = TpmKeyStore::open(&settings(&tpm), &state).unwrap();
        let mut db = CredentialDatabase::open(&state, 10).unwrap();
        db.save_state(&with_pin(8)).unwrap();
        drop((store, db));
    }
    {
        let started = start(&tpm, &state).unwrap();
        assert_eq!(*started.store.startup(), Startup::Reopened);
        assert_eq!(started.start, AnchorStart::Created, "no file, no index: the first start with anti-rollback");
        assert_eq!(open_state(&started, &state, ".").unwrap().1, StateStart::Adopted);
    }
    assert!(state.join(ANCHOR_FILE).exists());
    assert!(rollback::release(&settings(&tpm), &state).unwrap(), "the index was there");
    assert!(!state.join(ANCHOR_FILE).exists());
    assert!(!rollback::release(&settings(&tpm), &state).unwrap(), "and is gone");
    std::fs::remove_dir_all(state).unwrap();
}

#[test]
fn the_counter_index_is_a_plain_owner_counter_at_the_documented_handle() {
    let public = rollback::nv_public().unwrap();
    assert_eq!(u32::from(public.nv_index()), 0x01BF_1D05);
    let a = public.attributes();
    assert_eq!(a.index_type().unwrap(), tss_esapi::constants::NvIndexType::Counter);
    assert!(a.owner_write() && a.owner_read() && a.no_da());
    assert!(!a.orderly(), "not orderly: a power loss never makes the counter jump ahead of the anchor");
    assert_eq!(public.data_size(), 8);
}

#[test]
fn signature_counters_never_go_back_across_a_restore() {
    let tpm = Swtpm::start();
    let state = temp_dir("rollback-counters");
    let copy = first_start_then_copy(&tpm, &state);
    let mut given = Vec::new();
    // Assertions alone change no rollback version: the database of the copy
    // put back alone (the anchor file is the current one, every start moves
    // the counter) is taken, and the counters still go on.
    {
        let started = start(&tpm, &state).unwrap();
        let (mut db, _) = open_state(&started, &state, ".").unwrap();
        for id in [[1u8; 16].as_slice(), &[2; 16], &[9; 40]] {
            for _ in 0..3 {
                given.push(db.next_signature_counter(id).unwrap());
            }
        }
    }
    assert!(given.windows(3).step_by(3).all(|w| w[0] < w[1] && w[1] < w[2]));
    assert!(given[0] > 1 << 24, "epoch-based: above the base");
    for file in std::fs::read_dir(&state).unwrap() {
        let name = file.unwrap().file_name();
        if name.to_string_lossy().starts_with(fidoseal_store::DATABASE_FILE) {
            std::fs::remove_file(state.join(&name)).unwrap();
        }
    }
    for file in std::fs::read_dir(&copy).unwrap() {
        let name = file.unwrap().file_name();
        if name.to_string_lossy().starts_with(fidoseal_store::DATABASE_FILE) {
            std::fs::copy(copy.join(&name), state.join(&name)).unwrap();
        }
    }
    let highest = *given.iter().max().unwrap();
    {
        let started = start(&tpm, &state).unwrap();
        assert_eq!(started.start, AnchorStart::Verified);
        let (mut db, _) = open_state(&started, &state, ".").unwrap();
        for id in [[1u8; 16].as_slice(), &[2; 16], &[9; 40]] {
            let next = db.next_signature_counter(id).unwrap();
            assert!(next > highest, "{next} after {highest}: a counter went back across the restore");
        }
        assert!(db.delete(&[2; 16]).unwrap());
    }
    // And across a whole directory put back (refused: the counter moved at
    // every start since) that an administrator accepted.
    restore(&copy, &state);
    stale(start(&tpm, &state));
    std::fs::write(state.join(ACCEPT_FILE), b"").unwrap();
    let started = start(&tpm, &state).unwrap();
    let (mut db, _) = open_state(&started, &state, ".").unwrap();
    let next = db.next_signature_counter(&[2; 16]).unwrap();
    assert!(next > highest + 1, "accepted: the deleted credential is back, its counter still goes on");
    drop((db, started));
    std::fs::remove_dir_all(state).unwrap();
    std::fs::remove_dir_all(copy).unwrap();
}

#[test]
fn a_counter_that_uses_up_its_epoch_starts_a_new_one() {
    let tpm = Swtpm::start();
    let state = temp_dir("rollback-epoch");
    let started = start(&tpm, &state).unwrap();
    let (mut db, _) = open_state(&started, &state, ".").unwrap();
    let (floor, ceiling) = started.anchor.counter_epoch();
    assert_eq!(ceiling - floor, 4096);
    let counter_before = started.anchor.counter();
    // A short epoch for the test: three values.
    db.set_counter_epoch(floor, floor + 3).unwrap();
    let values: Vec<u32> = (0..5).map(|_| db.next_signature_counter(&[5; 16]).unwrap()).collect();
    assert_eq!(&values[..3], &[floor + 1, floor + 2, floor + 3]);
    assert_eq!(started.anchor.counter(), counter_before + 1, "the ceiling started a new epoch (one NV write)");
    let (new_floor, _) = started.anchor.counter_epoch();
    assert_eq!(values[3], new_floor + 1);
    assert!(values[3] > ceiling, "above the whole earlier epoch");
    assert_eq!(values[4], values[3] + 1);
    drop((db, started));
    std::fs::remove_dir_all(state).unwrap();
}

#[test]
fn epochs_are_increasing_ranges() {
    let (f0, c0) = rollback::counter_range(0);
    assert_eq!((f0, c0), ((1 << 24) - 1, (1 << 24) + 4095));
    let (f1, _) = rollback::counter_range(1);
    assert_eq!(f1, c0, "the next epoch's first counter is above the last of this one");
    assert_eq!(rollback::counter_range(u64::MAX), (u32::MAX, u32::MAX), "saturates, never wraps");
}

#[test]
fn a_users_deleted_state_directory_starts_empty_and_a_single_user_state_moves_to_a_user() {
    let tpm = Swtpm::start();
    let state = temp_dir("rollback-moves");
    {
        let started = start(&tpm, &state).unwrap();
        let (mut db, _) = open_state(&started, &state, ".").unwrap();
        db.save_state(&with_pin(8)).unwrap();
        db.save_state(&with_pin(7)).unwrap();
        db.save(credential(1)).unwrap();
    }
    // Per-user mode: the single-user database moves, whole, to users/1000
    // (migrate_users.rs).
    let user = state_dir(&state, "users/1000");
    for file in std::fs::read_dir(&state).unwrap() {
        let name = file.unwrap().file_name();
        if name.to_string_lossy().starts_with(fidoseal_store::DATABASE_FILE) {
            std::fs::rename(state.join(&name), user.join(&name)).unwrap();
        }
    }
    {
        let started = start(&tpm, &state).unwrap();
        let (db, how) = open_state(&started, &state, "users/1000").unwrap();
        assert_eq!(how, StateStart::Verified, "the moved state is the single-user state, re-anchored");
        assert_eq!(db.load_state().pin_retries, 7);
        assert_eq!(started.anchor.anchored("."), None, "moved once");
    }
    {
        let started = start(&tpm, &state).unwrap();
        assert_eq!(open_state(&started, &state, "users/1000").unwrap().1, StateStart::Verified);
    }
    // The user's directory deleted (documented: that user's reset).
    std::fs::remove_dir_all(&user).unwrap();
    let started = start(&tpm, &state).unwrap();
    let (db, how) = open_state(&started, &state, "users/1000").unwrap();
    assert_eq!(how, StateStart::Adopted, "an empty state is nothing to roll back to");
    assert_eq!(db.credential_count(), 0);
    drop((db, started));
    std::fs::remove_dir_all(state).unwrap();
}

#[test]
fn a_removed_or_altered_anchor_file_is_refused() {
    let tpm = Swtpm::start();
    let state = temp_dir("rollback-file");
    let copy = first_start_then_copy(&tpm, &state);
    let anchor = state.join(ANCHOR_FILE);
    let bytes = std::fs::read(&anchor).unwrap();
    std::fs::remove_file(&anchor).unwrap();
    let message = stale(start(&tpm, &state));
    assert!(message.contains("has no tpm-anchor"), "{message}");
    let mut altered = bytes.clone();
    let last = altered.len() - 40;
    altered[last] ^= 1;
    std::fs::write(&anchor, &altered).unwrap();
    let message = stale(start(&tpm, &state));
    assert!(message.contains("was altered"), "{message}");
    std::fs::write(&anchor, &bytes).unwrap();
    assert_eq!(start(&tpm, &state).unwrap().start, AnchorStart::Verified);
    std::fs::remove_dir_all(state).unwrap();
    std::fs::remove_dir_all(copy).unwrap();
}

// --- a key store bound to the boot state ([keystore] pcrs) -------------------

fn start_bound(tpm: &Swtpm, state: &Path) -> Result<Started, RollbackError> {
    let store = TpmKeyStore::open_bound(&settings(tpm), state, &[7]).expect("open the bound TPM key store");
    let (anchor, start) = store.rollback_anchor(state)?;
    Ok(Started { store, anchor, start })
}

fn anchor_file(state: &Path) -> AnchorFile {
    AnchorFile::decode(&std::fs::read(state.join(ANCHOR_FILE)).unwrap()).unwrap().0
}

fn raw_context(tpm: &Swtpm) -> Context {
    Context::new(TctiNameConf::from_str(&tpm.tcti()).unwrap()).unwrap()
}

/// TPM2_HMAC(key, KEY_LABEL) with a password session under the machine
/// primary, as another OS with the TPM and the anchor file would try it.
fn raw_anchor_hmac(ctx: &mut Context, public: &[u8], private: &[u8]) -> tss_esapi::Result<[u8; 32]> {
    let (primary, _) = create_primary(ctx, &MACHINE_PRIMARY_UNIQUE).ok().unwrap();
    let public = Public::unmarshall(public).unwrap();
    let private = Private::try_from(private.to_vec()).unwrap();
    let key = ctx.execute_with_session(Some(AuthSession::Password), |c| c.load(primary, private, public)).unwrap();
    let buffer = MaxBuffer::try_from(KEY_LABEL.to_vec()).unwrap();
    let out =
        ctx.execute_with_session(Some(AuthSession::Password), |c| c.hmac(key.into(), buffer, HashingAlgorithm::Sha256));
    ctx.flush_context(key.into()).unwrap();
    ctx.flush_context(primary.into()).unwrap();
    out.map(|digest| digest.value().try_into().unwrap())
}

#[test]
fn a_bound_stores_anchor_key_has_the_generations_policy_and_no_password_use() {
    let tpm = Swtpm::start();
    let state = temp_dir("rollback-bound-key");
    let policy = {
        let started = start_bound(&tpm, &state).unwrap();
        assert_eq!(started.start, AnchorStart::Created);
        assert_eq!(open_state(&started, &state, ".").unwrap().1, StateStart::Adopted);
        started.store.object_policy().unwrap()
    };
    let file = anchor_file(&state);
    let public = Public::unmarshall(&file.key_public).unwrap();
    assert_eq!(public.auth_policy().value(), policy.as_slice(), "PolicyAuthorize(A), like the generation's keys");
    assert!(!public.object_attributes().user_with_auth(), "only a policy session authorizes it");
    // Computed in the policy session at every start: the anchor verifies.
    let started = start_bound(&tpm, &state).unwrap();
    assert_eq!(started.start, AnchorStart::Verified);
    assert_eq!(open_state(&started, &state, ".").unwrap().1, StateStart::Verified);
    drop(started);
    // The blob and the TPM without the policy: TPM_RC_AUTH_UNAVAILABLE.
    let err = raw_anchor_hmac(&mut raw_context(&tpm), &file.key_public, &file.key_private).unwrap_err();
    assert_eq!(errors::raw_code(&err).map(|c| c & 0xff), Some(0x2f), "{err}");

    // An unbound store's anchor key is as before.
    let unbound = temp_dir("rollback-unbound-key");
    drop(start(&tpm, &unbound).unwrap());
    let file = anchor_file(&unbound);
    let public = Public::unmarshall(&file.key_public).unwrap();
    assert!(public.auth_policy().value().is_empty() && public.object_attributes().user_with_auth());
    assert!(raw_anchor_hmac(&mut raw_context(&tpm), &file.key_public, &file.key_private).is_ok());
    std::fs::remove_dir_all(state).unwrap();
    std::fs::remove_dir_all(unbound).unwrap();
}

/// The anchor key of another OS's forgery.
#[derive(Clone, Copy, Debug)]
enum ForgedKey {
    /// A new unbound HMAC key under the machine primary (what the anchor
    /// key of an unbound store is): its MAC computed by the TPM.
    Unbound,
    /// A key with the bound generation's authPolicy and no userWithAuth,
    /// but a secret of the forger's choosing (sensitiveDataOrigin clear):
    /// the MAC computed in software, no boot state needed.
    ChosenSecret,
}

/// Another OS booted on the machine (the TPM and the state directory, not
/// the approved boot state) puts back an older state directory under a
/// forged anchor file: a new anchor key, the counter's current value (owner
/// read, empty owner auth), and the restored database's record MACed under
/// the forged key. Returns the forged key's public area.
fn forge_anchor(tpm: &Swtpm, state: &Path, key: ForgedKey, policy: &[u8]) -> Vec<u8> {
    use hmac::{Hmac, Mac};
    let mut ctx = raw_context(tpm);
    let counter = rollback::counter_value(&mut ctx).ok().unwrap().unwrap();
    let (primary, _) = create_primary(&mut ctx, &MACHINE_PRIMARY_UNIQUE).ok().unwrap();
    let chosen = [0x5a; 32];
    let template = objects::hmac_key_template().unwrap();
    let (template, secret) = match key {
        ForgedKey::Unbound => (template, None),
        ForgedKey::ChosenSecret => {
            let Public::KeyedHash { object_attributes, name_hashing_algorithm, parameters, unique, .. } =
                objects::bound(template, Some(policy)).unwrap()
            else {
                unreachable!()
            };
            // TPMA_OBJECT.sensitiveDataOrigin is bit 5 (Part 2, 8.3.2).
            let attributes = tss_esapi::attributes::ObjectAttributes::from(
                tss_esapi::tss2_esys::TPMA_OBJECT::from(object_attributes) & !(1 << 5),
            );
            let public = Public::KeyedHash {
                object_attributes: attributes,
                name_hashing_algorithm,
                auth_policy: tss_esapi::structures::Digest::try_from(policy.to_vec()).unwrap(),
                parameters,
                unique,
            };
            (public, Some(tss_esapi::structures::SensitiveData::try_from(chosen.to_vec()).unwrap()))
        }
    };
    let created = ctx
        .execute_with_session(Some(AuthSession::Password), |c| c.create(primary, template, None, secret, None, None))
        .unwrap();
    ctx.flush_context(primary.into()).unwrap();
    let key_public = created.out_public.marshall().unwrap();
    let key_private = created.out_private.value().to_vec();
    let mac_key: [u8; 32] = match key {
        ForgedKey::Unbound => raw_anchor_hmac(&mut ctx, &key_public, &key_private).unwrap(),
        ForgedKey::ChosenSecret => {
            let mut mac = <Hmac<sha2::Sha256> as hmac::digest::KeyInit>::new_from_slice(&chosen).unwrap();
            mac.update(KEY_LABEL);
            mac.finalize().into_bytes().into()
        }
    };
    drop(ctx);
    let version = 100;
    let file = AnchorFile {
        key_public: key_public.clone(),
        key_private,
        counter,
        states: [(".".to_string(), version)].into_iter().collect(),
    };
    std::fs::write(state.join(ANCHOR_FILE), file.encode(&mac_key)).unwrap();
    let mut db = CredentialDatabase::open(state, 10).unwrap();
    db.protect(rollback::state_key_under(&mac_key, "."), Box::new(Killed)).unwrap();
    db.set_rollback_version(version).unwrap();
    key_public
}

/// A bound store's first start with a PIN (8 retries) and a passkey, the
/// state directory copied, then a PIN retry spent and the passkey deleted:
/// the copy and the generation's policy.
fn bound_start_then_copy_then_change(tpm: &Swtpm, state: &Path) -> (PathBuf, Vec<u8>) {
    let policy = {
        let started = start_bound(tpm, state).unwrap();
        let (mut db, _) = open_state(&started, state, ".").unwrap();
        db.save_state(&with_pin(8)).unwrap();
        db.save(credential(1)).unwrap();
        started.store.object_policy().unwrap()
    };
    let copy = temp_dir("rollback-bound-copy");
    copy_tree(state, &copy);
    let started = start_bound(tpm, state).unwrap();
    let (mut db, _) = open_state(&started, state, ".").unwrap();
    db.save_state(&with_pin(7)).unwrap();
    assert!(db.delete(&[1; 16]).unwrap());
    (copy, policy)
}

/// The stale-state message of a start that must be refused.
fn refused_start(tpm: &Swtpm, state: &Path) -> String {
    match start_bound(tpm, state) {
        Ok(started) => {
            let opened = open_state(&started, state, ".").map(|(db, _)| db.load_state().pin_retries);
            panic!("the start was not refused ({:?}); the restored state: {opened:?}", started.start)
        }
        Err(e) => stale(Err::<(), _>(e)),
    }
}

/// `fidoseald --accept-current-state DIR` (fidoseald stopped) for state `id`.
fn sign_accept_file(tpm: &Swtpm, state: &Path, id: &str) -> Result<PathBuf, String> {
    let dir = if id == "." { state.to_path_buf() } else { state.join(id) };
    TpmKeyStore::open_existing(&settings(tpm), state, &[7]).unwrap().write_accept_file(&dir, id)
}

/// The documented recovery (accept-current-state): a plain file, as another
/// OS could write, is not taken; the signed one is: the state as it is (the
/// copy's 8 PIN retries), anchored under a new anchor key bound to `policy`,
/// verified at the next start. The new key's public area.
fn accepted_under_a_new_bound_key(tpm: &Swtpm, state: &Path, policy: &[u8]) -> Vec<u8> {
    std::fs::write(state.join(ACCEPT_FILE), b"").unwrap();
    let message = refused_start(tpm, state);
    assert!(message.contains(&format!("--accept-current-state {}", state.display())), "{message}");
    let signed = sign_accept_file(tpm, state, ".").unwrap();
    assert_eq!(signed, state.join(ACCEPT_FILE));
    let token = std::fs::read(&signed).unwrap();
    {
        let started = start_bound(tpm, state).unwrap();
        assert_eq!(started.start, AnchorStart::Accepted);
        let (db, _) = open_state(&started, state, ".").unwrap();
        assert_eq!(db.load_state().pin_retries, 8, "the state as it is: the administrator's choice");
    }
    let file = anchor_file(state);
    assert_eq!(Public::unmarshall(&file.key_public).unwrap().auth_policy().value(), policy);
    let started = start_bound(tpm, state).unwrap();
    assert_eq!(started.start, AnchorStart::Verified);
    assert_eq!(open_state(&started, state, ".").unwrap().1, StateStart::Verified);
    drop(started);
    // The signed file is good for the start it was signed for only: put
    // back with the same older copy after the counter moved, it is refused.
    let copy = temp_dir("rollback-bound-replay");
    copy_tree(state, &copy);
    {
        let started = start_bound(tpm, state).unwrap();
        let (mut db, _) = open_state(&started, state, ".").unwrap();
        db.save_state(&with_pin(6)).unwrap();
    }
    restore(&copy, state);
    std::fs::write(state.join(ACCEPT_FILE), token).unwrap();
    refused_start(tpm, state);
    std::fs::remove_file(state.join(ACCEPT_FILE)).unwrap();
    std::fs::remove_dir_all(copy).unwrap();
    file.key_public
}

/// Failed before the check of the anchor key's public area: the restored
/// state opened under the forged file (on main, with either key; with the
/// bound anchor key alone, with the chosen-secret one).
#[test]
fn another_os_cannot_put_back_an_older_state_under_a_forged_anchor_file() {
    for key in [ForgedKey::Unbound, ForgedKey::ChosenSecret] {
        let tpm = Swtpm::start();
        let state = temp_dir("rollback-forged");
        let (copy, policy) = bound_start_then_copy_then_change(&tpm, &state);
        restore(&copy, &state);
        let forged = forge_anchor(&tpm, &state, key, &policy);
        let message = refused_start(&tpm, &state);
        assert!(
            message.contains("the anchor key is not bound to the boot state: the anchor file was replaced"),
            "{key:?}: {message}"
        );
        assert!(message.contains(&format!("--accept-current-state {}`", state.display())), "{message}");
        let new_key = accepted_under_a_new_bound_key(&tpm, &state, &policy);
        assert_ne!(new_key, forged, "the forged key is not kept");
        std::fs::remove_dir_all(state).unwrap();
        std::fs::remove_dir_all(copy).unwrap();
    }
}

/// Failed before the fix: with no anchor file and no counter a bound store
/// took the restored state as the first start with anti-rollback (Created,
/// the state adopted with its PIN retries back).
#[test]
fn another_os_cannot_put_back_an_older_state_by_removing_the_index_and_the_anchor_file() {
    let tpm = Swtpm::start();
    let state = temp_dir("rollback-unanchored");
    let (copy, policy) = bound_start_then_copy_then_change(&tpm, &state);
    // Another OS: the index undefined (owner auth empty), the older copy put
    // back without its anchor file and without the database's rollback row.
    restore(&copy, &state);
    // (release: TPM2_NV_UndefineSpace and the file removed, as `tpm2_nvundefine` and `rm` would)
    assert!(rollback::release(&settings(&tpm), &state).unwrap());
    delete_record(&state.join(fidoseal_store::DATABASE_FILE));
    let message = refused_start(&tpm, &state);
    assert!(
        message.contains(
            "the anti-rollback anchor of a key store bound to the boot state is gone: someone removed the NV index \
             0x01bf1d05 and the anchor file"
        ),
        "{message}"
    );
    assert!(!state.join(ANCHOR_FILE).exists(), "nothing written");
    accepted_under_a_new_bound_key(&tpm, &state, &policy);
    std::fs::remove_dir_all(state).unwrap();
    std::fs::remove_dir_all(copy).unwrap();
}

/// A start in an unapproved boot state: the bound anchor key cannot be
/// computed, so the anchor is neither verified nor judged stale, and
/// nothing is written (fidoseald waits for the approval, main.rs); once
/// approved, the same anchor verifies.
#[test]
fn in_an_unapproved_boot_state_the_bound_anchor_waits_and_writes_nothing() {
    let tpm = Swtpm::start();
    let state = temp_dir("rollback-unapproved");
    {
        let started = start_bound(&tpm, &state).unwrap();
        let (mut db, _) = open_state(&started, &state, ".").unwrap();
        db.save_state(&with_pin(8)).unwrap();
    }
    let mut store = TpmKeyStore::open_bound(&settings(&tpm), &state, &[7]).unwrap();
    store.extend_pcr_for_test();
    drop(store);
    let anchor_before = std::fs::read(state.join(ANCHOR_FILE)).unwrap();
    let counter_before = rollback::counter_value(&mut raw_context(&tpm)).ok().unwrap();
    let mut store = TpmKeyStore::open_bound(&settings(&tpm), &state, &[7]).unwrap();
    assert!(!*store.approval().borrow());
    for _ in 0..2 {
        match store.rollback_anchor(&state) {
            Err(RollbackError::BootState(message)) => {
                assert!(message.contains("the boot state changed: PCR 7 is "), "{message}")
            }
            Err(other) => panic!("expected the boot-state error, got {other}"),
            Ok(_) => panic!("the anchor opened in an unapproved boot state"),
        }
    }
    assert_eq!(std::fs::read(state.join(ANCHOR_FILE)).unwrap(), anchor_before, "no anchor write");
    assert!(!state.join(ACCEPT_FILE).exists());
    // Nor can an accept file be signed in this boot state.
    let err = store.write_accept_file(&state, ".").unwrap_err();
    assert!(err.contains("the boot state changed"), "{err}");
    assert!(!state.join(ACCEPT_FILE).exists());
    store.approve_boot_state(&pcr_tests::recovery_key(&state)).unwrap();
    assert!(*store.approval().borrow(), "what fidoseald waits for");
    let (anchor, start) = store.rollback_anchor(&state).unwrap();
    assert_eq!(start, AnchorStart::Verified);
    let started = Started { store, anchor, start };
    let (db, how) = open_state(&started, &state, ".").unwrap();
    assert_eq!(how, StateStart::Verified);
    assert_eq!(db.load_state().pin_retries, 8);
    drop((db, started));
    let counter_after = rollback::counter_value(&mut raw_context(&tpm)).ok().unwrap();
    assert_eq!(counter_after.unwrap(), counter_before.unwrap() + 1, "one epoch increment, after the approval only");
    std::fs::remove_dir_all(state).unwrap();
}

/// With `pcrs`, a user's restored state is accepted only with a signed file
/// (another OS could write a plain one), and a plain one for an unbound store
/// still works (every_user_state_is_protected_by_the_one_index, accept tests).
#[test]
fn a_bound_users_restored_state_is_accepted_only_with_a_signed_file() {
    let tpm = Swtpm::start();
    let state = temp_dir("rollback-bound-user");
    let id = "users/1000";
    {
        let started = start_bound(&tpm, &state).unwrap();
        let (mut db, _) = open_state(&started, &state, id).unwrap();
        db.save_state(&with_pin(8)).unwrap();
        db.save(credential(1)).unwrap();
    }
    let copy = temp_dir("rollback-bound-user-copy");
    copy_tree(&state.join(id), &copy);
    {
        let started = start_bound(&tpm, &state).unwrap();
        let (mut db, _) = open_state(&started, &state, id).unwrap();
        assert!(db.delete(&[1; 16]).unwrap());
    }
    restore(&copy, &state.join(id));
    std::fs::write(state.join(id).join(ACCEPT_FILE), b"").unwrap();
    {
        let started = start_bound(&tpm, &state).unwrap();
        let message = stale(open_state(&started, &state, id));
        assert!(message.contains(&format!("--accept-current-state {}", state.join(id).display())), "{message}");
    }
    assert!(sign_accept_file(&tpm, &state, "users/1001").is_err(), "no such state directory");
    sign_accept_file(&tpm, &state, id).unwrap();
    {
        let started = start_bound(&tpm, &state).unwrap();
        let (db, how) = open_state(&started, &state, id).unwrap();
        assert_eq!(how, StateStart::Accepted);
        assert_eq!(db.credential_count(), 1, "the state as it is: the administrator's choice");
        assert!(!state.join(id).join(ACCEPT_FILE).exists(), "used once");
    }
    let started = start_bound(&tpm, &state).unwrap();
    assert_eq!(open_state(&started, &state, id).unwrap().1, StateStart::Verified);
    drop(started);
    std::fs::remove_dir_all(state).unwrap();
    std::fs::remove_dir_all(copy).unwrap();
}
