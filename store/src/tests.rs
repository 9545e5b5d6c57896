use std::fs;
use std::os::unix::fs::PermissionsExt;

use fidoseal_ctap::platform::{Algorithm, PinRecord};

use super::*;

/// A new directory, removed when the returned value is dropped (also when a
/// test fails).
fn temp_dir(name: &str) -> tempfile::TempDir {
    tempfile::Builder::new().prefix(&format!("fidoseal-store-test-{name}-")).tempdir().unwrap()
}

fn credential(rp: &str, user: &[u8], id: u8) -> ResidentCredential {
    ResidentCredential {
        credential_id: vec![id; 16],
        rp_id: rp.into(),
        rp_name: Some(format!("{rp} name")),
        user_id: user.to_vec(),
        user_name: Some("alice".into()),
        user_display_name: None,
        algorithm: Algorithm::Es256,
        key_handle: vec![9; 60],
        created: u64::from(id),
        public_key_cose: vec![0xa0],
        extensions: CredentialExtensions {
            cred_protect: 2,
            hmac_secret: true,
            cred_blob: vec![1, 2],
            large_blob_key: true,
            third_party_payment: true,
        },
    }
}

fn bound_to(name: &str, byte: u8) -> KeyStoreBinding {
    KeyStoreBinding { name: name.into(), fingerprint: vec![byte; 16] }
}

fn with_pin() -> AuthenticatorState {
    let pin = Some(PinRecord { verifier: vec![5; 32], code_points: 4 });
    AuthenticatorState {
        pin,
        pin_retries: 5,
        large_blob_array: vec![0x81, 0x01, 0, 0],
        ..AuthenticatorState::default()
    }
}

fn files_starting(dir: &Path, prefix: &str) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with(prefix))
        .collect();
    found.sort();
    found
}

#[test]
fn credentials_state_and_counters_survive_reopen() {
    let dir_tmp = temp_dir("reopen");
    let dir = dir_tmp.path().to_path_buf();
    let mut store = CredentialDatabase::open(&dir, 10).unwrap();
    store.save(credential("a.example", b"u1", 1)).unwrap();
    store.save(credential("a.example", b"u2", 2)).unwrap();
    store.save(credential("b.example", b"u1", 3)).unwrap();
    store.save_state(&with_pin()).unwrap();
    assert_eq!(store.next_signature_counter(&[1; 16]).unwrap(), 1);
    assert_eq!(store.next_signature_counter(&[1; 16]).unwrap(), 2);
    assert_eq!(store.next_signature_counter(&[2; 16]).unwrap(), 1, "each credential has its own counter");
    assert_eq!(store.next_signature_counter(b"a non-discoverable id").unwrap(), 1);
    assert_eq!(store.next_signature_counter(b"a non-discoverable id").unwrap(), 2);
    drop(store);

    let mut reopened = CredentialDatabase::open(&dir, 10).unwrap();
    let mut a = reopened.credentials_for_rp(&rp_id_hash("a.example")).unwrap();
    a.sort_by_key(|c| c.created);
    assert_eq!(a, vec![credential("a.example", b"u1", 1), credential("a.example", b"u2", 2)]);
    assert_eq!(reopened.find(&[3; 16]).unwrap(), Some(credential("b.example", b"u1", 3)));
    assert_eq!(reopened.find(&[4; 16]).unwrap(), None);
    assert_eq!(reopened.load_state(), with_pin());
    assert_eq!(reopened.credential_count(), 3);
    assert_eq!(reopened.remaining_capacity(), 7);
    assert_eq!(reopened.next_creation_order(), 4);
    assert_eq!(reopened.next_signature_counter(&[1; 16]).unwrap(), 3);
    assert_eq!(reopened.next_signature_counter(b"a non-discoverable id").unwrap(), 3);
    let rps = reopened.relying_parties().unwrap();
    assert_eq!(
        rps,
        vec![
            RelyingParty { rp_id: "a.example".into(), rp_name: Some("a.example name".into()), credentials: 2 },
            RelyingParty { rp_id: "b.example".into(), rp_name: Some("b.example name".into()), credentials: 1 },
        ]
    );
    for file in files_starting(&dir, DATABASE_FILE) {
        assert_eq!(fs::metadata(&file).unwrap().permissions().mode() & 0o777, 0o600, "{}", file.display());
    }
}

#[test]
fn replace_update_delete_and_capacity() {
    let dir_tmp = temp_dir("rules");
    let dir = dir_tmp.path().to_path_buf();
    let mut store = CredentialDatabase::open(&dir, 2).unwrap();
    store.save(credential("a.example", b"u1", 1)).unwrap();
    store.next_signature_counter(&[1; 16]).unwrap();
    // Same rp and user: replaced, and the new credential's counter starts over.
    store.save(credential("a.example", b"u1", 3)).unwrap();
    assert_eq!(store.credential_count(), 1);
    assert_eq!(store.find(&[1; 16]).unwrap(), None);
    store.save(credential("b.example", b"u1", 4)).unwrap();
    assert_eq!(store.save(credential("c.example", b"u1", 5)), Err(StoreError::Full));
    assert_eq!(store.remaining_capacity(), 0);
    // Updating user information of a stored credential needs no room and keeps its counter.
    assert_eq!(store.next_signature_counter(&[4; 16]).unwrap(), 1);
    let mut updated = credential("b.example", b"u1", 4);
    updated.user_name = Some("bob".into());
    store.save(updated.clone()).unwrap();
    assert_eq!(store.find(&[4; 16]).unwrap(), Some(updated));
    assert_eq!(store.next_signature_counter(&[4; 16]).unwrap(), 2);
    assert!(store.delete(&[4; 16]).unwrap());
    assert!(!store.delete(&[4; 16]).unwrap());
    assert_eq!(store.remaining_capacity(), 1);
    assert_eq!(CredentialDatabase::open(&dir, 2).unwrap().credential_count(), 1);
    // A lower limit than what is stored: nothing is dropped, nothing fits.
    let mut smaller = CredentialDatabase::open(&dir, 0).unwrap();
    assert_eq!(smaller.remaining_capacity(), 0);
    assert_eq!(smaller.save(credential("d.example", b"u1", 6)), Err(StoreError::Full));
    assert_eq!(smaller.credential_count(), 1);
}

/// Counters never go back: not for a credential, and not across reset
/// (a credential that somehow survived it would still count upwards).
#[test]
fn counters_never_go_back_across_reset() {
    let dir_tmp = temp_dir("reset");
    let dir = dir_tmp.path().to_path_buf();
    let mut store = CredentialDatabase::open(&dir, 10).unwrap();
    store.save(credential("a.example", b"u1", 1)).unwrap();
    for _ in 0..5 {
        store.next_signature_counter(&[1; 16]).unwrap();
    }
    for _ in 0..7 {
        store.next_signature_counter(b"wrapped").unwrap();
    }
    assert_eq!(store.initial_signature_counter(), 0);
    store.save_state(&with_pin()).unwrap();
    store.reset().unwrap();
    assert_eq!(store.credential_count(), 0);
    assert_eq!(store.load_state(), AuthenticatorState::default());
    assert_eq!(store.initial_signature_counter(), 7, "the floor is the highest counter given out");
    assert_eq!(store.next_signature_counter(b"wrapped").unwrap(), 8);
    assert_eq!(store.next_signature_counter(&[1; 16]).unwrap(), 8);
    drop(store);
    let mut reopened = CredentialDatabase::open(&dir, 10).unwrap();
    assert_eq!(reopened.initial_signature_counter(), 7);
    assert!(reopened.load_state().pin.is_none());
    reopened.save(credential("b.example", b"u1", 2)).unwrap();
    assert_eq!(reopened.next_signature_counter(&[2; 16]).unwrap(), 8);
}

/// Every lookup a ceremony makes goes through an index, whatever the count.
#[test]
fn lookups_use_indexes() {
    let dir_tmp = temp_dir("plans");
    let dir = dir_tmp.path().to_path_buf();
    let store = CredentialDatabase::open(&dir, 10).unwrap();
    let plan = |sql: &str| -> String {
        let mut statement = store.connection.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
        let rows: Vec<String> = statement.query_map([], |r| r.get(3)).unwrap().map(|r| r.unwrap()).collect();
        rows.join(" | ")
    };
    for (sql, index) in [
        ("SELECT * FROM credentials WHERE credential_id = x'01'", "credentials_by_id"),
        ("SELECT * FROM credentials WHERE rp_id_hash = x'01'", "credentials_by_rp_user"),
        ("UPDATE credentials SET signature_counter = 1 WHERE credential_id = x'01'", "credentials_by_id"),
        (
            "DELETE FROM credentials WHERE rp_id_hash = x'01' AND user_id = x'02' AND credential_id != x'03'",
            "credentials_by_rp_user",
        ),
        ("SELECT rp_id, count(*) FROM credentials GROUP BY rp_id_hash", "credentials_by_rp_user"),
        ("SELECT value FROM signature_counters WHERE credential_id = x'01'", "PRIMARY KEY"),
    ] {
        let found = plan(sql);
        assert!(found.contains(index), "{sql}: {found}");
    }
}

#[test]
fn a_failed_write_changes_nothing() {
    let dir_tmp = temp_dir("busy");
    let dir = dir_tmp.path().to_path_buf();
    let mut store = CredentialDatabase::open(&dir, 10).unwrap();
    store.save(credential("a.example", b"u1", 1)).unwrap();
    store.connection.busy_timeout(std::time::Duration::ZERO).unwrap();
    // Another writer holds the database: our transaction cannot begin.
    let other = Connection::open(dir.join(DATABASE_FILE)).unwrap();
    other.execute_batch("BEGIN IMMEDIATE").unwrap();
    assert!(matches!(store.save(credential("a.example", b"u2", 2)), Err(StoreError::Io(_))));
    assert!(store.next_signature_counter(&[1; 16]).is_err());
    assert!(store.save_state(&with_pin()).is_err());
    assert!(store.reset().is_err());
    assert_eq!(store.credential_count(), 1);
    assert_eq!(store.load_state(), AuthenticatorState::default());
    other.execute_batch("ROLLBACK").unwrap();
    assert_eq!(store.next_signature_counter(&[1; 16]).unwrap(), 1);
}

/// A damaged database stops the start, names the file and the way out,
/// and is left exactly as it was.
#[test]
fn damage_is_found_at_start_and_never_written_over() {
    let dir_tmp = temp_dir("corrupt");
    let dir = dir_tmp.path().to_path_buf();
    let path = dir.join(DATABASE_FILE);
    // Not a database at all.
    fs::write(&path, b"\xff\x00 this is not SQLite, it is garbage of some length ........................").unwrap();
    let before = fs::read(&path).unwrap();
    let error = CredentialDatabase::open(&dir, 10).err().expect("refused");
    assert!(matches!(error, StateError::Corrupt { .. }), "{error}");
    let message = error.to_string();
    assert!(message.contains(&path.display().to_string()) && message.contains("restore it from a backup"), "{message}");
    assert_eq!(fs::read(&path).unwrap(), before);
    fs::remove_file(&path).unwrap();

    // A real database with a damaged page in its credentials index.
    let mut store = CredentialDatabase::open(&dir, 100).unwrap();
    for i in 0..60u8 {
        store.save(credential(&format!("rp{i}.example"), b"user", i)).unwrap();
    }
    drop(store); // the last connection checkpoints the log into the file
    let mut bytes = fs::read(&path).unwrap();
    let page_size = 4096;
    assert!(bytes.len() > 3 * page_size, "several pages");
    for b in &mut bytes[2 * page_size + 16..2 * page_size + 600] {
        *b ^= 0x5a;
    }
    fs::write(&path, &bytes).unwrap();
    let error = CredentialDatabase::open(&dir, 100).err().expect("refused");
    assert!(matches!(error, StateError::Corrupt { .. }), "{error}");
    assert_eq!(fs::read(&path).unwrap(), bytes, "the damaged file is left as it was");
}

#[test]
fn a_database_from_a_newer_fidoseal_is_refused() {
    let dir_tmp = temp_dir("newer");
    let dir = dir_tmp.path().to_path_buf();
    drop(CredentialDatabase::open(&dir, 10).unwrap());
    Connection::open(dir.join(DATABASE_FILE)).unwrap().execute_batch("PRAGMA user_version = 99").unwrap();
    let error = CredentialDatabase::open(&dir, 10).err().expect("refused");
    assert!(error.to_string().contains("newer"), "{error}");
}

#[test]
fn an_old_credentials_file_is_migrated_and_kept() {
    let dir_tmp = temp_dir("migrate");
    let dir = dir_tmp.path().to_path_buf();
    let old = [credential("a.example", b"u1", 1), credential("a.example", b"u2", 2), credential("b.example", b"u1", 3)];
    migrate::write_legacy_file(&dir, 41, &old, &with_pin(), Some(&bound_to("tpm", 7)));
    let legacy_bytes = fs::read(dir.join(LEGACY_FILE)).unwrap();

    let mut store = CredentialDatabase::open(&dir, 10).unwrap();
    let migration = store.migration().cloned().expect("migrated");
    assert_eq!(migration.credentials, 3);
    assert_eq!(migration.counter_floor, 41);
    assert_eq!(migration.backup, dir.join("credentials.cbor.migrated"));
    assert_eq!(fs::read(&migration.backup).unwrap(), legacy_bytes, "the old file is kept as it was");
    assert!(!dir.join(LEGACY_FILE).exists());
    assert!(files_starting(&dir, "credentials.db.migrating").is_empty());
    let mut all = store.all_credentials().unwrap();
    all.sort_by_key(|c| c.created);
    assert_eq!(all, old.to_vec());
    assert_eq!(store.load_state(), with_pin());
    assert_eq!(store.bind_key_store(bound_to("tpm", 7), false).unwrap(), Binding::Same, "the binding came along");
    // Relying parties saw the old global counter: every counter goes on above it.
    assert_eq!(store.initial_signature_counter(), 41);
    assert_eq!(store.next_signature_counter(&[1; 16]).unwrap(), 42);
    assert_eq!(store.next_signature_counter(b"a non-discoverable id").unwrap(), 42);
    drop(store);
    let reopened = CredentialDatabase::open(&dir, 10).unwrap();
    assert!(reopened.migration().is_none(), "once");
    assert_eq!(reopened.credential_count(), 3);
}

/// A migration that cannot finish leaves credentials.cbor as it was, no
/// database behind, and says why.
#[test]
fn a_failed_migration_leaves_the_old_file() {
    let dir_tmp = temp_dir("migrate-fail");
    let dir = dir_tmp.path().to_path_buf();
    fs::write(dir.join(LEGACY_FILE), b"\xa1\x61garbage").unwrap();
    let error = CredentialDatabase::open(&dir, 10).err().expect("refused");
    assert!(matches!(error, StateError::Migration { .. }), "{error}");
    assert!(error.to_string().contains("damaged"), "{error}");
    assert_eq!(fs::read(dir.join(LEGACY_FILE)).unwrap(), b"\xa1\x61garbage");
    assert_eq!(files_starting(&dir, DATABASE_FILE), Vec::<PathBuf>::new());

    // Two credentials for one rp and user: importing would drop one.
    let twins = [credential("a.example", b"u1", 1), credential("a.example", b"u1", 2)];
    migrate::write_legacy_file(&dir, 3, &twins, &AuthenticatorState::default(), None);
    let legacy_bytes = fs::read(dir.join(LEGACY_FILE)).unwrap();
    let error = CredentialDatabase::open(&dir, 10).err().expect("refused");
    assert!(matches!(error, StateError::Migration { .. }), "{error}");
    assert_eq!(fs::read(dir.join(LEGACY_FILE)).unwrap(), legacy_bytes);
    assert_eq!(files_starting(&dir, DATABASE_FILE), Vec::<PathBuf>::new());
}

/// A crash after the database was renamed into place but before the old
/// file was kept aside: the database counts, the old file is kept aside.
#[test]
fn an_interrupted_migration_is_finished() {
    let dir_tmp = temp_dir("migrate-interrupted");
    let dir = dir_tmp.path().to_path_buf();
    migrate::write_legacy_file(&dir, 5, &[credential("a.example", b"u1", 1)], &AuthenticatorState::default(), None);
    let legacy_bytes = fs::read(dir.join(LEGACY_FILE)).unwrap();
    let mut store = CredentialDatabase::open(&dir, 10).unwrap();
    store.save(credential("b.example", b"u1", 2)).unwrap();
    drop(store);
    fs::rename(dir.join("credentials.cbor.migrated"), dir.join(LEGACY_FILE)).unwrap();

    let store = CredentialDatabase::open(&dir, 10).unwrap();
    assert_eq!(store.credential_count(), 2, "the database, not the older file");
    assert!(!dir.join(LEGACY_FILE).exists());
    assert_eq!(fs::read(dir.join("credentials.cbor.migrated")).unwrap(), legacy_bytes);
}

#[test]
fn a_state_is_tied_to_its_key_store() {
    let dir_tmp = temp_dir("binding-same");
    let dir = dir_tmp.path().to_path_buf();
    let mut store = CredentialDatabase::open(&dir, 10).unwrap();
    assert_eq!(store.bind_key_store(bound_to("software", 1), true).unwrap(), Binding::Recorded);
    store.save(credential("a.example", b"u1", 1)).unwrap();
    drop(store);
    let mut reopened = CredentialDatabase::open(&dir, 10).unwrap();
    assert_eq!(reopened.bind_key_store(bound_to("software", 1), false).unwrap(), Binding::Same);
    assert_eq!(reopened.credential_count(), 1);
}

/// The [keystore] backend switched: the passkeys and the PIN are copied
/// aside and the state starts over; the counters go on above the old ones.
#[test]
fn another_key_stores_state_is_set_aside_and_reset() {
    let dir_tmp = temp_dir("binding-other");
    let dir = dir_tmp.path().to_path_buf();
    let mut store = CredentialDatabase::open(&dir, 10).unwrap();
    store.bind_key_store(bound_to("software", 1), true).unwrap();
    store.save(credential("a.example", b"u1", 1)).unwrap();
    store.save_state(&with_pin()).unwrap();
    assert_eq!(store.next_signature_counter(&[1; 16]).unwrap(), 1);
    drop(store);

    let mut reopened = CredentialDatabase::open(&dir, 10).unwrap();
    let Binding::SetAside { kept, previous } = reopened.bind_key_store(bound_to("tpm", 2), false).unwrap() else {
        panic!("not set aside")
    };
    assert_eq!(previous, "software");
    assert_eq!(files_starting(&dir, "credentials.db.unusable-"), vec![kept.clone()]);
    assert_eq!(fs::metadata(&kept).unwrap().permissions().mode() & 0o777, 0o600);
    assert_eq!(reopened.credential_count(), 0);
    assert!(reopened.load_state().pin.is_none(), "no PIN that could never verify");
    assert_eq!(reopened.next_signature_counter(&[1; 16]).unwrap(), 2, "the counter never goes back");
    drop(reopened);
    // The copy is the whole old state, a database of its own.
    let copy_dir_tmp = temp_dir("binding-other-copy");
    let copy_dir = copy_dir_tmp.path().to_path_buf();
    fs::copy(&kept, copy_dir.join(DATABASE_FILE)).unwrap();
    let copy = CredentialDatabase::open(&copy_dir, 10).unwrap();
    assert_eq!(copy.credential_count(), 1);
    assert_eq!(copy.load_state(), with_pin());
    // Tied to the new store from now on.
    let mut again = CredentialDatabase::open(&dir, 10).unwrap();
    assert_eq!(again.bind_key_store(bound_to("tpm", 2), false).unwrap(), Binding::Same);
}

/// authenticatorReset gives the key store new secrets: the passkeys made
/// after it must survive the next start.
#[test]
fn a_reset_state_is_tied_again_at_the_next_start() {
    let dir_tmp = temp_dir("binding-reset");
    let dir = dir_tmp.path().to_path_buf();
    let mut store = CredentialDatabase::open(&dir, 10).unwrap();
    store.bind_key_store(bound_to("software", 1), true).unwrap();
    store.save(credential("a.example", b"u1", 1)).unwrap();
    store.reset().unwrap();
    store.save(credential("b.example", b"u2", 2)).unwrap();
    store.save_state(&with_pin()).unwrap();
    drop(store);
    let mut reopened = CredentialDatabase::open(&dir, 10).unwrap();
    assert_eq!(reopened.bind_key_store(bound_to("software", 2), false).unwrap(), Binding::Recorded);
    assert_eq!(reopened.credential_count(), 1);
    assert!(reopened.load_state().pin.is_some());
    assert!(files_starting(&dir, "credentials.db.unusable-").is_empty());
}

#[test]
fn an_empty_state_just_changes_hands() {
    let dir_tmp = temp_dir("binding-empty");
    let dir = dir_tmp.path().to_path_buf();
    let mut store = CredentialDatabase::open(&dir, 10).unwrap();
    store.bind_key_store(bound_to("tpm", 1), true).unwrap();
    assert_eq!(store.bind_key_store(bound_to("tpm", 2), true).unwrap(), Binding::Recorded);
    assert!(files_starting(&dir, "credentials.db.unusable-").is_empty(), "nothing to keep");
}

/// States from before bindings (a migrated file without the record): kept
/// with a key store that was already there, set aside beside one this
/// start created (it cannot be theirs).
#[test]
fn unrecorded_states_follow_whether_the_key_store_is_new() {
    let dir_tmp = temp_dir("binding-legacy");
    let dir = dir_tmp.path().to_path_buf();
    let one = [credential("a.example", b"u1", 1)];
    migrate::write_legacy_file(&dir, 0, &one, &AuthenticatorState::default(), None);
    let mut store = CredentialDatabase::open(&dir, 10).unwrap();
    assert_eq!(store.bind_key_store(bound_to("software", 1), false).unwrap(), Binding::Recorded);
    assert_eq!(store.credential_count(), 1);
    drop(store);
    fs::remove_dir_all(&dir).unwrap();
    fs::create_dir_all(&dir).unwrap();

    migrate::write_legacy_file(&dir, 0, &one, &AuthenticatorState::default(), None);
    let mut store = CredentialDatabase::open(&dir, 10).unwrap();
    let outcome = store.bind_key_store(bound_to("tpm", 2), true).unwrap();
    assert!(matches!(&outcome, Binding::SetAside { previous, .. } if previous.contains("not recorded")), "{outcome:?}");
    assert_eq!(store.credential_count(), 0);
    assert_eq!(files_starting(&dir, "credentials.db.unusable-").len(), 1);
}

/// 10,000 discoverable credentials over 1,000 relying parties: all fit,
/// getInfo's remaining count is the truth, and one rp's lookups see only its own.
#[test]
fn ten_thousand_credentials() {
    let dir_tmp = temp_dir("ten-thousand");
    let dir = dir_tmp.path().to_path_buf();
    let mut store = CredentialDatabase::open(&dir, 10_000).unwrap();
    // One transaction for the fixture (the store's own path commits each).
    let tx = store.connection.transaction().unwrap();
    for i in 0..10_000u32 {
        let mut c = credential(&format!("rp{}.example", i % 1000), &i.to_be_bytes(), 0);
        c.credential_id = [i.to_be_bytes().as_slice(), &[0; 12]].concat();
        c.created = u64::from(i) + 1;
        upsert_credential(&tx, &c, 0).unwrap();
    }
    tx.commit().unwrap();
    drop(store);
    let mut store = CredentialDatabase::open(&dir, 10_000).unwrap();
    assert_eq!(store.credential_count(), 10_000);
    assert_eq!(store.remaining_capacity(), 0);
    assert_eq!(store.save(credential("new.example", b"u", 1)), Err(StoreError::Full));
    assert_eq!(store.credentials_for_rp(&rp_id_hash("rp7.example")).unwrap().len(), 10);
    assert_eq!(store.relying_parties().unwrap().len(), 1000);
    assert_eq!(store.next_creation_order(), 10_001);
    let id = [4242u32.to_be_bytes().as_slice(), &[0; 12]].concat();
    assert!(store.delete(&id).unwrap());
    assert_eq!(store.remaining_capacity(), 1);
    store.save(credential("new.example", b"u", 1)).unwrap();
    assert_eq!(CredentialDatabase::open(&dir, 20_000).unwrap().remaining_capacity(), 10_000);
}

/// A directory on a tmpfs when there is one: the every-offset tests open the
/// database tens of thousands of times, and its fsyncs are not what they test.
fn memory_dir(name: &str) -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    if !shm.is_dir() {
        return temp_dir(name);
    }
    tempfile::Builder::new().prefix(&format!("fidoseal-store-test-{name}-")).tempdir_in(shm).unwrap()
}

/// A small real database (credentials, a PIN, large blobs), closed so that
/// its log is checkpointed into the one file.
fn small_database(dir: &Path) -> Vec<u8> {
    let mut store = CredentialDatabase::open(dir, 10).unwrap();
    store.save(credential("a.example", b"u1", 1)).unwrap();
    store.save(credential("b.example", b"u2", 2)).unwrap();
    store.save_state(&with_pin()).unwrap();
    drop(store);
    assert!(files_starting(dir, &format!("{DATABASE_FILE}-")).is_empty(), "no log left behind");
    fs::read(dir.join(DATABASE_FILE)).unwrap()
}

/// Truncated at every byte offset (0 included: an empty file must not pass
/// for a new database and lose every credential), the database is refused
/// and left exactly as it was.
#[test]
fn a_truncated_database_is_refused_at_every_length() {
    let dir_tmp = memory_dir("truncated");
    let dir = dir_tmp.path().to_path_buf();
    let path = dir.join(DATABASE_FILE);
    let whole = small_database(&dir);
    for length in 0..whole.len() {
        fs::write(&path, &whole[..length]).unwrap();
        match CredentialDatabase::open(&dir, 10) {
            Err(StateError::Corrupt { .. }) => {}
            Err(other) => panic!("truncated to {length} of {} bytes: {other}", whole.len()),
            Ok(_) => panic!("truncated to {length} of {} bytes: opened", whole.len()),
        }
        assert_eq!(fs::read(&path).unwrap(), &whole[..length], "truncated to {length}: the file was changed");
        assert!(files_starting(&dir, &format!("{DATABASE_FILE}-")).is_empty(), "truncated to {length}: a log was made");
    }
    fs::write(&path, &whole).unwrap();
    let store = CredentialDatabase::open(&dir, 10).expect("the whole file opens again");
    assert_eq!(store.credential_count(), 2);
    drop(store);
}

/// Every byte of the database damaged in turn: never a panic; a refusal
/// leaves the file as it was. (A changed byte inside a record's payload,
/// a name for instance, is a valid database to SQLite: no page checksums.
/// Key handles are sealed, so a damaged one fails to open, never signs
/// with another key. The figure is printed.)
#[test]
fn a_damaged_byte_anywhere_never_panics_and_a_refusal_writes_nothing() {
    let dir_tmp = memory_dir("every-byte");
    let dir = dir_tmp.path().to_path_buf();
    let path = dir.join(DATABASE_FILE);
    let whole = small_database(&dir);
    let mut refused = 0;
    for offset in 0..whole.len() {
        let mut damaged = whole.clone();
        damaged[offset] ^= 0xff;
        fs::write(&path, &damaged).unwrap();
        for suffix in ["-wal", "-shm"] {
            let _ = fs::remove_file(format!("{}{suffix}", path.display()));
        }
        if CredentialDatabase::open(&dir, 10).is_err() {
            refused += 1;
            assert_eq!(fs::read(&path).unwrap(), damaged, "damaged at {offset}: a refused file was changed");
        }
    }
    eprintln!("{refused} of {} single-byte damages refused at start", whole.len());
}

/// The schema as SQLite keeps it: every table's and index's SQL.
fn schema_sql(path: &Path) -> Vec<String> {
    let connection = Connection::open(path).unwrap();
    let mut statement =
        connection.prepare("SELECT sql FROM sqlite_master WHERE sql IS NOT NULL ORDER BY name").unwrap();
    let rows = statement.query_map([], |r| r.get(0)).unwrap();
    rows.collect::<Result<_, _>>().unwrap()
}

fn user_version(path: &Path) -> i32 {
    Connection::open(path).unwrap().query_row("PRAGMA user_version", [], |r| r.get(0)).unwrap()
}

/// A credentials.db of schema 1 (fidoseal before thirdPartyPayment) with one
/// credential row, as that version wrote it.
fn schema_1_database(dir: &Path) -> PathBuf {
    let path = dir.join(DATABASE_FILE);
    let connection = Connection::open(&path).unwrap();
    schema::create_version_1(&connection).unwrap();
    let c = credential("old.example", b"u1", 1);
    connection
        .execute(
            "INSERT INTO credentials (credential_id, rp_id_hash, rp_id, rp_name, user_id, user_name, user_display_name, \
                 algorithm, key_handle, created, public_key_cose, cred_protect, hmac_secret, cred_blob, large_blob_key, \
                 signature_counter)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, 7)",
            params![
                c.credential_id,
                rp_id_hash(&c.rp_id).as_slice(),
                c.rp_id,
                c.rp_name,
                c.user_id,
                c.user_name,
                c.user_display_name,
                c.algorithm.cose_id(),
                c.key_handle,
                1,
                c.public_key_cose,
                2,
                true,
                c.extensions.cred_blob,
                true,
            ],
        )
        .unwrap();
    connection.close().unwrap();
    path
}

#[test]
fn a_schema_1_database_is_upgraded_keeping_its_credentials() {
    let dir_tmp = temp_dir("upgrade");
    let dir = dir_tmp.path().to_path_buf();
    let path = schema_1_database(&dir);
    assert_eq!(user_version(&path), 1);

    let mut store = CredentialDatabase::open(&dir, 10).unwrap();
    assert_eq!(user_version(&path), schema::VERSION);
    let old = store.find(&[1; 16]).unwrap().expect("the old credential is still there");
    let expected =
        CredentialExtensions { third_party_payment: false, ..credential("old.example", b"u1", 1).extensions };
    assert_eq!(old.extensions, expected, "made before thirdPartyPayment: not enabled for it");
    assert_eq!(store.next_signature_counter(&[1; 16]).unwrap(), 8, "its counter went on");
    // New credentials keep the new member.
    store.save(credential("new.example", b"u2", 2)).unwrap();
    drop(store);
    let store = CredentialDatabase::open(&dir, 10).unwrap();
    assert!(store.find(&[2; 16]).unwrap().unwrap().extensions.third_party_payment);

    // An upgraded file and a new one have the same schema.
    let new_tmp = temp_dir("upgrade-new");
    drop(CredentialDatabase::open(new_tmp.path(), 10).unwrap());
    assert_eq!(schema_sql(&path), schema_sql(&new_tmp.path().join(DATABASE_FILE)));
    assert_eq!(user_version(&new_tmp.path().join(DATABASE_FILE)), schema::VERSION);
}

#[test]
fn a_failed_upgrade_step_changes_nothing() {
    let dir_tmp = temp_dir("upgrade-fails");
    let dir = dir_tmp.path().to_path_buf();
    let path = schema_1_database(&dir);
    // A column of that name already there: the ALTER TABLE fails.
    Connection::open(&path)
        .unwrap()
        .execute_batch("ALTER TABLE credentials ADD COLUMN third_party_payment INTEGER")
        .unwrap();
    let before = schema_sql(&path);
    let error = CredentialDatabase::open(&dir, 10).err().expect("refused");
    assert!(error.to_string().contains("upgrading schema 1 to 2"), "{error}");
    assert_eq!(user_version(&path), 1, "the step rolled back");
    assert_eq!(schema_sql(&path), before);
}

/// Records what is anchored; fails when told to.
#[derive(Clone, Default)]
struct Anchored(std::sync::Arc<std::sync::Mutex<(Vec<u64>, bool)>>);

impl AnchorSink for Anchored {
    fn anchor(&mut self, version: u64) -> Result<(), String> {
        let mut inner = self.0.lock().unwrap();
        if inner.1 {
            return Err("TPM gone".into());
        }
        inner.0.push(version);
        Ok(())
    }
    fn new_epoch(&mut self) -> Result<(u32, u32), String> {
        Err("no epochs here".into())
    }
}

#[test]
fn rollback_records_follow_the_content_and_bump_only_what_must_not_be_undone() {
    let dir = temp_dir("rollback");
    let key = zeroize::Zeroizing::new([7u8; 32]);
    let sink = Anchored::default();
    let mut db = CredentialDatabase::open(dir.path(), 10).unwrap();
    assert_eq!(db.protect(key.clone(), Box::new(sink.clone())).unwrap(), RecordCheck::Missing);
    db.set_rollback_version(1).unwrap();
    db.save(credential("a.example", b"u", 1)).unwrap();
    db.save_state(&with_pin()).unwrap();
    assert_eq!(sink.0.lock().unwrap().0, vec![2], "a new credential renews the MAC only; a PIN set is anchored");
    let fewer = AuthenticatorState { pin_retries: 4, ..with_pin() };
    db.save_state(&fewer).unwrap();
    db.save_state(&with_pin()).unwrap();
    assert_eq!(sink.0.lock().unwrap().0, vec![2, 3], "a retry spent is anchored, retries given back are not");
    assert!(db.delete(&[1; 16]).unwrap());
    assert_eq!(sink.0.lock().unwrap().0, vec![2, 3, 4]);
    // A failed anchor fails the request, and memory stays what the database holds.
    sink.0.lock().unwrap().1 = true;
    db.save(credential("b.example", b"u", 2)).unwrap();
    assert!(matches!(db.delete(&[2; 16]), Err(StoreError::Io(_))));
    assert_eq!(db.credential_count(), 0);
    drop(db);
    let mut db = CredentialDatabase::open(dir.path(), 10).unwrap();
    assert_eq!(db.credential_count(), 0);
    assert_eq!(db.protect(key.clone(), Box::new(Anchored::default())).unwrap(), RecordCheck::Valid { version: 5 });
    // Another key, or content changed outside: the record does not match.
    assert_eq!(db.rollback_record_under(&[8; 32]).unwrap(), RecordCheck::Mismatch);
    drop(db);
    let connection = rusqlite::Connection::open(dir.path().join(DATABASE_FILE)).unwrap();
    connection.execute("DELETE FROM settings WHERE name = 'authenticator'", []).unwrap();
    drop(connection);
    let mut db = CredentialDatabase::open(dir.path(), 10).unwrap();
    assert_eq!(db.protect(key, Box::new(Anchored::default())).unwrap(), RecordCheck::Mismatch);
}
