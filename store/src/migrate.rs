//! From `credentials.cbor` (fidoseal before the database: the whole state
//! in one CBOR file rewritten at every change) to `credentials.db`, and from
//! one schema of `credentials.db` to the next ([`upgrade_schema`]).
//!
//! The database is built beside the old file under a temporary name, in
//! one transaction, and renamed into place only once complete; then the old
//! file is renamed to `credentials.cbor.migrated` and kept. A failure at
//! any step leaves `credentials.cbor` as it was (and the error says why);
//! a crash between the two renames is finished at the next start, since a
//! `credentials.db` only ever appears whole.

use std::fs::{self, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use fidoseal_ctap::platform::{AuthenticatorState, ResidentCredential};
use rusqlite::Connection;
use serde::Deserialize;

use crate::{
    authenticator_row, cbor, put_setting, schema, setting, unix_time, upsert_credential, KeyStoreBinding, StateError,
};

/// The old state file.
pub const LEGACY_FILE: &str = "credentials.cbor";
/// The only version of the old file's format there was.
const LEGACY_FORMAT_VERSION: u32 = 1;

/// What a start migrated, for the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Migration {
    pub credentials: usize,
    /// The old file, kept.
    pub backup: PathBuf,
    /// The old global signature counter: every credential's counter starts above it.
    pub counter_floor: u32,
}

/// The old file's layout (written by fidoseal's `state.rs` until the database).
#[derive(Deserialize)]
struct CredentialFile {
    version: u32,
    signature_counter: u32,
    credentials: Vec<ResidentCredential>,
    #[serde(default)]
    state: AuthenticatorState,
    #[serde(default)]
    key_store: Option<KeyStoreBinding>,
}

pub(crate) fn sync_dir(dir: &Path) -> std::io::Result<()> {
    fs::File::open(dir)?.sync_all()
}

/// Migrates `state_dir/credentials.cbor` into `database` if there is no
/// database yet; finishes an interrupted migration if there is.
pub(crate) fn migrate_if_needed(state_dir: &Path, database: &Path) -> Result<Option<Migration>, StateError> {
    let legacy = state_dir.join(LEGACY_FILE);
    if !legacy.exists() {
        return Ok(None);
    }
    let failed = |reason: String| StateError::Migration { path: legacy.clone(), reason };
    if database.exists() {
        // The database was renamed into place, the old file was not yet
        // kept aside: the database is the newer and complete state.
        let backup = keep_aside(state_dir, &legacy).map_err(|e| failed(format!("keeping it aside: {e}")))?;
        tracing::warn!(kept = %backup.display(), "a credentials.cbor beside credentials.db was kept aside (an interrupted migration)");
        return Ok(None);
    }
    let bytes = fs::read(&legacy).map_err(|e| failed(e.to_string()))?;
    let old: CredentialFile =
        ciborium::de::from_reader(bytes.as_slice()).map_err(|e| failed(format!("it is damaged: {e}")))?;
    if old.version != LEGACY_FORMAT_VERSION {
        return Err(failed(format!("its format version {} is not {LEGACY_FORMAT_VERSION}", old.version)));
    }
    let building = state_dir.join(format!("{}.migrating", crate::DATABASE_FILE));
    let result = build(&building, &old).and_then(|()| {
        fs::rename(&building, database).map_err(|e| e.to_string())?;
        sync_dir(state_dir).map_err(|e| e.to_string())
    });
    if let Err(reason) = result {
        remove_database_files(&building);
        return Err(failed(reason));
    }
    let backup = keep_aside(state_dir, &legacy)
        .map_err(|e| StateError::Write { path: legacy.clone(), reason: format!("keeping it aside: {e}") })?;
    Ok(Some(Migration { credentials: old.credentials.len(), backup, counter_floor: old.signature_counter }))
}

/// Brings a database up to [`schema::VERSION`], one numbered step per
/// transaction, each setting `user_version` as it commits: a crash between
/// steps leaves a database of the earlier version, which the next start
/// upgrades. Nothing is rewritten; new columns get the value that is true
/// of every credential made before them.
pub(crate) fn upgrade_schema(connection: &Connection) -> rusqlite::Result<()> {
    let version: i32 = connection.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if version < 2 {
        // thirdPartyPayment (CTAP 2.2 §12.9): no credential made before it
        // was enabled for third-party payment.
        step(
            connection,
            "ALTER TABLE credentials ADD COLUMN third_party_payment INTEGER NOT NULL DEFAULT 0;
             PRAGMA user_version = 2;",
        )?;
    }
    Ok(())
}

/// One upgrade step in one immediate transaction; rolled back if it fails.
fn step(connection: &Connection, sql: &str) -> rusqlite::Result<()> {
    connection.execute_batch("BEGIN IMMEDIATE;")?;
    match connection.execute_batch(sql) {
        Ok(()) => connection.execute_batch("COMMIT;"),
        Err(e) => {
            let _ = connection.execute_batch("ROLLBACK;");
            Err(e)
        }
    }
}

/// Renames the old file to `credentials.cbor.migrated` (never over another).
fn keep_aside(state_dir: &Path, legacy: &Path) -> std::io::Result<PathBuf> {
    let mut backup = state_dir.join(format!("{LEGACY_FILE}.migrated"));
    if backup.exists() {
        backup = state_dir.join(format!("{LEGACY_FILE}.migrated-{}", unix_time()));
    }
    fs::rename(legacy, &backup)?;
    sync_dir(state_dir)?;
    Ok(backup)
}

pub(crate) fn remove_database_files(path: &Path) {
    for suffix in ["", "-journal", "-wal", "-shm"] {
        let _ = fs::remove_file(format!("{}{suffix}", path.display()));
    }
}

/// Writes the whole old state into a new database at `path` in one
/// transaction (rollback journal, synchronous=FULL: the file is complete
/// and synced when this returns).
fn build(path: &Path, old: &CredentialFile) -> Result<(), String> {
    remove_database_files(path);
    OpenOptions::new().write(true).create_new(true).mode(0o600).open(path).map_err(|e| e.to_string())?;
    let mut connection = Connection::open(path).map_err(|e| e.to_string())?;
    connection.execute_batch("PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON;").map_err(|e| e.to_string())?;
    schema::create(&connection).map_err(|e| e.to_string())?;
    let tx = connection.transaction().map_err(|e| e.to_string())?;
    // Every credential's counter starts above the old global counter, the
    // highest value any relying party may have seen from it.
    for credential in &old.credentials {
        upsert_credential(&tx, credential, old.signature_counter).map_err(|e| e.to_string())?;
    }
    let row = authenticator_row(&old.state).map_err(|e| e.to_string())?;
    put_setting(&tx, setting::AUTHENTICATOR, &row).map_err(|e| e.to_string())?;
    put_setting(&tx, setting::LARGE_BLOB_ARRAY, &old.state.large_blob_array).map_err(|e| e.to_string())?;
    put_setting(&tx, setting::COUNTER_FLOOR, &old.signature_counter).map_err(|e| e.to_string())?;
    if let Some(binding) = &old.key_store {
        let record = cbor(binding).map_err(|e| e.to_string())?;
        put_setting(&tx, setting::KEY_STORE, &record).map_err(|e| e.to_string())?;
    }
    let imported: i64 =
        tx.query_row("SELECT count(*) FROM credentials", [], |r| r.get(0)).map_err(|e| e.to_string())?;
    if usize::try_from(imported).ok() != Some(old.credentials.len()) {
        // Two credentials with one rp and user (or one ID) in the old file:
        // one would be dropped silently. Refuse instead.
        return Err(format!(
            "{} credentials in the file, {imported} after import (duplicates?); nothing is dropped silently",
            old.credentials.len()
        ));
    }
    tx.commit().map_err(|e| e.to_string())?;
    connection.close().map_err(|(_, e)| e.to_string())
}

#[cfg(test)]
pub(crate) fn write_legacy_file(
    state_dir: &Path,
    counter: u32,
    credentials: &[ResidentCredential],
    state: &AuthenticatorState,
    key_store: Option<&KeyStoreBinding>,
) {
    #[derive(serde::Serialize)]
    struct File<'a> {
        version: u32,
        signature_counter: u32,
        credentials: &'a [ResidentCredential],
        state: &'a AuthenticatorState,
        key_store: Option<&'a KeyStoreBinding>,
    }
    let file = File { version: 1, signature_counter: counter, credentials, state, key_store };
    let mut bytes = Vec::new();
    ciborium::ser::into_writer(&file, &mut bytes).unwrap();
    fs::write(state_dir.join(LEGACY_FILE), bytes).unwrap();
}
