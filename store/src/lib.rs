//! The credential store of one state directory: discoverable credentials,
//! per-credential signature counters, the PIN and settings, the large-blob
//! array and the key-store binding, in one SQLite database
//! (`credentials.db`).
//!
//! - Every state change is one transaction, durable before the call
//!   returns (WAL with `synchronous=FULL`: the commit is fsynced), so a
//!   kill at any instant loses nothing acknowledged.
//! - Lookups go through indexes (credential ID, rp ID hash + user ID); a
//!   getAssertion writes one counter row, a makeCredential inserts one
//!   credential row; the cost does not grow with the number of passkeys.
//! - A damaged database stops the start with the file named and the fix;
//!   it is never written over.
//! - A `credentials.cbor` from before is migrated at the first start
//!   (`migrate.rs`).

mod migrate;
mod rollback;
mod schema;

use std::fs::OpenOptions;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use fidoseal_ctap::platform::{
    Algorithm, AuthenticatorState, CredentialExtensions, CredentialStore, RelyingParty, ResidentCredential, StoreError,
    EMPTY_LARGE_BLOB_ARRAY,
};
use rusqlite::{params, Connection, OpenFlags, OptionalExtension, Row, TransactionBehavior};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub use migrate::{Migration, LEGACY_FILE};
pub use rollback::{AnchorSink, RecordCheck};

/// The database file in the state directory.
pub const DATABASE_FILE: &str = "credentials.db";

/// Which key store a credential state belongs to: the resident
/// credentials' ids, the PIN verifier and the large-blob keys all depend on
/// its secrets, so the state is of no use with any other.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct KeyStoreBinding {
    /// "software" or "tpm", for the log.
    pub name: String,
    /// A value only that key store can compute (a PRF of a fixed context).
    pub fingerprint: Vec<u8>,
}

/// What [`CredentialDatabase::bind_key_store`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum Binding {
    /// The state was made with this key store.
    Same,
    /// Recorded now: a new or empty state, or a state from before bindings
    /// whose key store was not just created.
    Recorded,
    /// The state belongs to another key store (a backend switch, a state
    /// directory from elsewhere): copied to `kept`, then reset.
    SetAside { kept: PathBuf, previous: String },
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("cannot read {path}: {reason}")]
    Read { path: PathBuf, reason: String },
    #[error(
        "{path} is damaged ({reason}); refusing to start rather than lose credentials, and leaving the file as it is. \
         Stop fidoseald, keep a copy of the file, then either restore it from a backup, or try \
         `sqlite3 {path} .recover | sqlite3 repaired.db` and put repaired.db in its place, or move it away to start \
         with no passkeys"
    )]
    Corrupt { path: PathBuf, reason: String },
    #[error("cannot write {path}: {reason}")]
    Write { path: PathBuf, reason: String },
    #[error(
        "cannot migrate {path} to {DATABASE_FILE}: {reason}; {path} is left as it was and nothing else was changed"
    )]
    Migration { path: PathBuf, reason: String },
}

/// Seconds since the epoch, for the names of files set aside.
pub fn unix_time() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn sql_error(e: rusqlite::Error) -> StoreError {
    StoreError::Io(e.to_string())
}

/// The credential database of one state directory.
pub struct CredentialDatabase {
    connection: Connection,
    path: PathBuf,
    capacity: usize,
    /// Kept in memory, changed only after a commit: the database is the
    /// truth, these answer getInfo and the ceremonies without a query.
    count: usize,
    newest_created: u64,
    counter_floor: u32,
    state: AuthenticatorState,
    key_store: Option<KeyStoreBinding>,
    migration: Option<Migration>,
    /// Anti-rollback (rollback.rs), once the daemon turned it on.
    rollback: Option<rollback::Protection>,
}

pub(crate) mod setting {
    pub const AUTHENTICATOR: &str = "authenticator";
    pub const LARGE_BLOB_ARRAY: &str = "large_blob_array";
    pub const KEY_STORE: &str = "key_store";
    pub const COUNTER_FLOOR: &str = "signature_counter_floor";
}

const CREDENTIAL_COLUMNS: &str = "credential_id, rp_id, rp_name, user_id, user_name, user_display_name, algorithm, \
     key_handle, created, public_key_cose, cred_protect, hmac_secret, cred_blob, large_blob_key, third_party_payment";

fn credential_from_row(row: &Row<'_>) -> rusqlite::Result<ResidentCredential> {
    let algorithm: i64 = row.get(6)?;
    let algorithm = Algorithm::from_cose_id(algorithm).ok_or_else(|| {
        rusqlite::Error::FromSqlConversionFailure(6, rusqlite::types::Type::Integer, "unknown algorithm".into())
    })?;
    Ok(ResidentCredential {
        credential_id: row.get(0)?,
        rp_id: row.get(1)?,
        rp_name: row.get(2)?,
        user_id: row.get(3)?,
        user_name: row.get(4)?,
        user_display_name: row.get(5)?,
        algorithm,
        key_handle: row.get(7)?,
        created: u64::try_from(row.get::<_, i64>(8)?).unwrap_or(0),
        public_key_cose: row.get(9)?,
        extensions: CredentialExtensions {
            cred_protect: row.get(10)?,
            hmac_secret: row.get(11)?,
            cred_blob: row.get(12)?,
            large_blob_key: row.get(13)?,
            third_party_payment: row.get(14)?,
        },
    })
}

fn rp_id_hash(rp_id: &str) -> [u8; 32] {
    Sha256::digest(rp_id.as_bytes()).into()
}

/// Writes a credential row (a new one starts its counter at `counter`;
/// an existing one keeps its counter).
fn upsert_credential(tx: &rusqlite::Transaction<'_>, c: &ResidentCredential, counter: u32) -> rusqlite::Result<()> {
    tx.prepare_cached(
        "INSERT INTO credentials (credential_id, rp_id_hash, rp_id, rp_name, user_id, user_name, user_display_name, \
             algorithm, key_handle, created, public_key_cose, cred_protect, hmac_secret, cred_blob, large_blob_key, \
             third_party_payment, signature_counter)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17)
         ON CONFLICT (credential_id) DO UPDATE SET
             rp_name = excluded.rp_name, user_name = excluded.user_name,
             user_display_name = excluded.user_display_name, cred_protect = excluded.cred_protect,
             hmac_secret = excluded.hmac_secret, cred_blob = excluded.cred_blob,
             large_blob_key = excluded.large_blob_key, third_party_payment = excluded.third_party_payment",
    )?
    .execute(params![
        c.credential_id,
        rp_id_hash(&c.rp_id).as_slice(),
        c.rp_id,
        c.rp_name,
        c.user_id,
        c.user_name,
        c.user_display_name,
        c.algorithm.cose_id(),
        c.key_handle,
        i64::try_from(c.created).unwrap_or(i64::MAX),
        c.public_key_cose,
        c.extensions.cred_protect,
        c.extensions.hmac_secret,
        c.extensions.cred_blob,
        c.extensions.large_blob_key,
        c.extensions.third_party_payment,
        counter,
    ])?;
    Ok(())
}

fn put_setting(tx: &rusqlite::Transaction<'_>, name: &str, value: &dyn rusqlite::ToSql) -> rusqlite::Result<()> {
    tx.prepare_cached(
        "INSERT INTO settings (name, value) VALUES (?1, ?2) ON CONFLICT (name) DO UPDATE SET value = excluded.value",
    )?
    .execute(params![name, value])?;
    Ok(())
}

fn cbor<T: Serialize>(value: &T) -> Result<Vec<u8>, StoreError> {
    let mut bytes = Vec::new();
    ciborium::ser::into_writer(value, &mut bytes).map_err(|e| StoreError::Io(e.to_string()))?;
    Ok(bytes)
}

/// The settings row without the large-blob array, which has its own row
/// (a PIN retry does not rewrite the blobs).
fn authenticator_row(state: &AuthenticatorState) -> Result<Vec<u8>, StoreError> {
    cbor(&AuthenticatorState { large_blob_array: Vec::new(), ..state.clone() })
}

/// Everything [`CredentialStore::reset`] clears, inside `tx`; returns the new floor.
fn reset_in(tx: &rusqlite::Transaction<'_>, floor: u32) -> rusqlite::Result<u32> {
    // No counter ever goes back: the floor rises above every value given out.
    let highest: Option<i64> = tx.query_row(
        "SELECT max(v) FROM (SELECT max(signature_counter) AS v FROM credentials
                            UNION ALL SELECT max(value) FROM signature_counters)",
        [],
        |r| r.get(0),
    )?;
    let floor = highest.and_then(|h| u32::try_from(h).ok()).map_or(floor, |h| h.max(floor));
    tx.execute("DELETE FROM credentials", [])?;
    tx.execute("DELETE FROM signature_counters", [])?;
    // The rollback record goes too: a protected store writes a new one in
    // the same transaction (covered_transaction).
    tx.execute(
        "DELETE FROM settings WHERE name IN (?1, ?2, ?3, ?4)",
        params![setting::AUTHENTICATOR, setting::LARGE_BLOB_ARRAY, setting::KEY_STORE, rollback::ROW],
    )?;
    put_setting(tx, setting::COUNTER_FLOOR, &floor)?;
    Ok(floor)
}

impl CredentialDatabase {
    /// Opens the database of `state_dir` (creating it, or migrating a
    /// `credentials.cbor` found there), checks it, and holds at most
    /// `capacity` discoverable credentials.
    pub fn open(state_dir: &Path, capacity: usize) -> Result<Self, StateError> {
        let path = state_dir.join(DATABASE_FILE);
        let migration = migrate::migrate_if_needed(state_dir, &path)?;
        if !path.exists() {
            create_database(state_dir, &path)?;
        }
        let connection = open_connection(&path)?;
        let mut database = Self {
            connection,
            path,
            capacity,
            count: 0,
            newest_created: 0,
            counter_floor: 0,
            state: AuthenticatorState::default(),
            key_store: None,
            migration,
            rollback: None,
        };
        database.load()?;
        Ok(database)
    }

    /// Reads what is kept in memory.
    fn load(&mut self) -> Result<(), StateError> {
        let corrupt = |path: &Path, reason: String| StateError::Corrupt { path: path.to_owned(), reason };
        let path = self.path.clone();
        let c = &self.connection;
        let (count, newest): (i64, Option<i64>) = c
            .query_row("SELECT count(*), max(created) FROM credentials", [], |r| Ok((r.get(0)?, r.get(1)?)))
            .map_err(|e| corrupt(&path, e.to_string()))?;
        let setting = |name: &str| -> Result<Option<rusqlite::types::Value>, StateError> {
            c.query_row("SELECT value FROM settings WHERE name = ?1", [name], |r| r.get(0))
                .optional()
                .map_err(|e| corrupt(&path, e.to_string()))
        };
        use rusqlite::types::Value;
        let floor = match setting(setting::COUNTER_FLOOR)? {
            Some(Value::Integer(n)) => {
                u32::try_from(n).map_err(|_| corrupt(&path, "counter floor out of range".into()))?
            }
            None => 0,
            Some(_) => return Err(corrupt(&path, "counter floor is not a number".into())),
        };
        let mut state = match setting(setting::AUTHENTICATOR)? {
            Some(Value::Blob(bytes)) => ciborium::de::from_reader::<AuthenticatorState, _>(bytes.as_slice())
                .map_err(|e| corrupt(&path, format!("authenticator settings: {e}")))?,
            None => AuthenticatorState::default(),
            Some(_) => return Err(corrupt(&path, "authenticator settings are not a blob".into())),
        };
        state.large_blob_array = match setting(setting::LARGE_BLOB_ARRAY)? {
            Some(Value::Blob(bytes)) => bytes,
            None => EMPTY_LARGE_BLOB_ARRAY.to_vec(),
            Some(_) => return Err(corrupt(&path, "large-blob array is not a blob".into())),
        };
        let key_store = match setting(setting::KEY_STORE)? {
            Some(Value::Blob(bytes)) => Some(
                ciborium::de::from_reader::<KeyStoreBinding, _>(bytes.as_slice())
                    .map_err(|e| corrupt(&path, format!("key store record: {e}")))?,
            ),
            None => None,
            Some(_) => return Err(corrupt(&path, "key store record is not a blob".into())),
        };
        self.count = usize::try_from(count).unwrap_or(0);
        self.newest_created = newest.and_then(|n| u64::try_from(n).ok()).unwrap_or(0);
        self.counter_floor = floor;
        self.state = state;
        self.key_store = key_store;
        Ok(())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// What the start migrated from `credentials.cbor`, if it did.
    pub fn migration(&self) -> Option<&Migration> {
        self.migration.as_ref()
    }

    /// Runs `change` in one immediate transaction and commits it; memory
    /// is updated by the caller only after this returned Ok.
    fn transaction<T>(
        &mut self,
        change: impl FnOnce(&rusqlite::Transaction<'_>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let tx = self.connection.transaction_with_behavior(TransactionBehavior::Immediate).map_err(sql_error)?;
        let result = change(&tx)?;
        tx.commit().map_err(sql_error)?;
        Ok(result)
    }

    /// Runs `change` like [`Self::transaction`] and, with anti-rollback on,
    /// renews the rollback record in the same transaction: a new version
    /// when `change` says the change must not be undone, then anchored
    /// after the commit ([`AnchorSink`]). `committed` updates memory after
    /// the commit, before the anchor: a failed anchor fails the request,
    /// but memory stays what the database holds.
    fn covered_transaction<T>(
        &mut self,
        change: impl FnOnce(&rusqlite::Transaction<'_>) -> Result<(T, bool), StoreError>,
        committed: impl FnOnce(&mut Self, &T),
    ) -> Result<T, StoreError> {
        let protection = self.rollback.as_ref().map(|p| (p.key.clone(), p.version));
        let (value, bumped) = self.transaction(|tx| {
            let (value, bump) = change(tx)?;
            let bumped = match &protection {
                Some((key, version)) => {
                    let next = if bump { version + 1 } else { *version };
                    rollback::write(tx, key, next).map_err(sql_error)?;
                    bump.then_some(next)
                }
                None => None,
            };
            Ok((value, bumped))
        })?;
        committed(self, &value);
        if let (Some(version), Some(protection)) = (bumped, self.rollback.as_mut()) {
            protection.version = version;
            protection.sink.anchor(version).map_err(|e| StoreError::Io(format!("anti-rollback anchor: {e}")))?;
        }
        Ok(value)
    }

    /// Turns anti-rollback on with the daemon's MAC `key` for this state,
    /// and says what the database's record is. The caller compares it with
    /// the anchor and then calls [`Self::set_rollback_version`] or refuses.
    pub fn protect(
        &mut self,
        key: zeroize::Zeroizing<[u8; 32]>,
        sink: Box<dyn AnchorSink>,
    ) -> Result<RecordCheck, StateError> {
        let check = rollback::check(&self.connection, &key)
            .map_err(|e| StateError::Corrupt { path: self.path.clone(), reason: format!("rollback record: {e}") })?;
        let version = match check {
            RecordCheck::Valid { version } => version,
            RecordCheck::Missing | RecordCheck::Mismatch => 0,
        };
        self.rollback = Some(rollback::Protection { key, sink, version, counter_ceiling: None });
        Ok(check)
    }

    /// Writes the rollback record for the content as it is, at `version`
    /// (a database from before anti-rollback, or a state an administrator
    /// accepted); not anchored here.
    pub fn set_rollback_version(&mut self, version: u64) -> Result<(), StateError> {
        let path = self.path.clone();
        let Some(key) = self.rollback.as_ref().map(|p| p.key.clone()) else {
            return Ok(());
        };
        self.transaction(|tx| rollback::write(tx, &key, version).map_err(sql_error))
            .map_err(|e| StateError::Write { path, reason: e.to_string() })?;
        if let Some(protection) = self.rollback.as_mut() {
            protection.version = version;
        }
        Ok(())
    }

    /// Epoch-based signature counters (docs/tpm.md, "Signature counters"):
    /// every counter given from now on is above `floor` (raised, never
    /// lowered, and stored), and reaching `ceiling` asks the anchor for a
    /// new epoch. The daemon's epochs are such that a later epoch's floor is
    /// at or above every earlier epoch's ceiling, so no counter goes back,
    /// even after an older copy of the state was restored.
    pub fn set_counter_epoch(&mut self, floor: u32, ceiling: u32) -> Result<(), StoreError> {
        if floor > self.counter_floor {
            self.transaction(|tx| put_setting(tx, setting::COUNTER_FLOOR, &floor).map_err(sql_error))?;
            self.counter_floor = floor;
        }
        if let Some(protection) = self.rollback.as_mut() {
            protection.counter_ceiling = Some(ceiling);
        }
        Ok(())
    }

    /// What the rollback record says under another `key` (a state moved
    /// from the single-user place to a user's: its record has the old key).
    pub fn rollback_record_under(&self, key: &[u8; 32]) -> Result<RecordCheck, StateError> {
        rollback::check(&self.connection, key)
            .map_err(|e| StateError::Corrupt { path: self.path.clone(), reason: format!("rollback record: {e}") })
    }

    /// Nothing in it: no credential, no PIN, no large blob (a new state, or
    /// one reset by deleting its directory).
    pub fn is_empty(&self) -> bool {
        !self.holds_key_store_data()
    }

    /// The version of the rollback record, with anti-rollback on.
    pub fn rollback_version(&self) -> Option<u64> {
        self.rollback.as_ref().map(|p| p.version)
    }

    /// Credentials, a PIN or large blobs: something that a key store
    /// switch would make unusable.
    fn holds_key_store_data(&self) -> bool {
        let blobs = !self.state.large_blob_array.is_empty() && self.state.large_blob_array != EMPTY_LARGE_BLOB_ARRAY;
        self.count > 0 || self.state.pin.is_some() || blobs
    }

    /// A consistent copy of the whole database at `target` (0600), taken
    /// with `VACUUM INTO`, for keeping a state aside before it is reset.
    pub fn copy_to(&self, target: &Path) -> Result<(), StateError> {
        let write_error = |reason: String| StateError::Write { path: target.to_owned(), reason };
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(target)
            .map_err(|e| write_error(e.to_string()))?;
        let target_text = target.to_str().ok_or_else(|| write_error("not a UTF-8 path".into()))?;
        // VACUUM INTO wants a new or empty file: the empty one made above
        // fixes the mode. It is synced before the statement returns.
        self.connection.execute("VACUUM INTO ?1", [target_text]).map_err(|e| write_error(e.to_string()))?;
        Ok(())
    }

    /// Ties the state to `binding`, the key store in use. A state that holds
    /// something and belongs to another key store — recorded as another, or
    /// unrecorded while the key store was `just_created` — is useless with
    /// this one (its PIN would never verify and burn the retries; its
    /// passkeys would be listed but fail): it is copied aside (nothing is
    /// deleted) and reset, keeping the signature counters' floor.
    pub fn bind_key_store(&mut self, binding: KeyStoreBinding, just_created: bool) -> Result<Binding, StateError> {
        let recorded = self.key_store.clone();
        if recorded.as_ref() == Some(&binding) {
            return Ok(Binding::Same);
        }
        let foreign = match &recorded {
            Some(_) => true,
            None => just_created,
        };
        let path = self.path.clone();
        let write_error = |e: StoreError| StateError::Write { path: path.clone(), reason: e.to_string() };
        let record = cbor(&binding).map_err(write_error)?;
        if !(foreign && self.holds_key_store_data()) {
            self.transaction(|tx| put_setting(tx, setting::KEY_STORE, &record).map_err(sql_error))
                .map_err(write_error)?;
            self.key_store = Some(binding);
            return Ok(Binding::Recorded);
        }
        let kept = PathBuf::from(format!("{}.unusable-{}", path.display(), unix_time()));
        self.copy_to(&kept)?;
        let floor = self.counter_floor;
        self.covered_transaction(
            |tx| {
                let floor = reset_in(tx, floor).map_err(sql_error)?;
                put_setting(tx, setting::KEY_STORE, &record).map_err(sql_error)?;
                Ok((floor, true))
            },
            |db, &floor| db.after_reset(floor),
        )
        .map_err(write_error)?;
        self.key_store = Some(binding);
        let previous = recorded.map_or_else(|| "an earlier key store (not recorded)".to_owned(), |b| b.name);
        Ok(Binding::SetAside { kept, previous })
    }

    fn after_reset(&mut self, floor: u32) {
        self.count = 0;
        self.newest_created = 0;
        self.counter_floor = floor;
        self.state = AuthenticatorState::default();
        self.key_store = None;
    }

    fn select_credentials(&self, sql_where: &str, param: &[u8]) -> Result<Vec<ResidentCredential>, StoreError> {
        let sql = format!("SELECT {CREDENTIAL_COLUMNS} FROM credentials WHERE {sql_where}");
        let mut statement = self.connection.prepare_cached(&sql).map_err(sql_error)?;
        let rows = statement.query_map([param], credential_from_row).map_err(sql_error)?;
        rows.collect::<Result<_, _>>().map_err(sql_error)
    }
}

/// Opens `path`, checks it before anything is written, and sets the
/// connection up (WAL, synchronous=FULL, foreign keys, schema).
fn open_connection(path: &Path) -> Result<Connection, StateError> {
    let corrupt = |reason: String| StateError::Corrupt { path: path.to_owned(), reason };
    let connection = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX | OpenFlags::SQLITE_OPEN_URI,
    )
    .map_err(|e| StateError::Read { path: path.to_owned(), reason: e.to_string() })?;
    // quick_check: the b-trees, pages and records, without the slower
    // index-content cross-check of integrity_check (milliseconds for
    // 10,000 credentials). A file that is not a database fails here too.
    let verdict: Vec<String> = connection
        .prepare("PRAGMA quick_check")
        .and_then(|mut s| s.query_map([], |r| r.get(0))?.collect())
        .map_err(|e| corrupt(e.to_string()))?;
    if verdict != ["ok"] {
        return Err(corrupt(verdict.join("; ")));
    }
    whole_pages(path, &connection).map_err(corrupt)?;
    let version: i32 =
        connection.query_row("PRAGMA user_version", [], |r| r.get(0)).map_err(|e| corrupt(e.to_string()))?;
    if version > schema::VERSION {
        return Err(corrupt(format!(
            "schema version {version} is newer than this fidoseal's {} (a downgrade?)",
            schema::VERSION
        )));
    }
    if version == 0 {
        // Every credentials.db is made with its schema before it gets its
        // name (create_database, the migration): an empty or schema-less
        // file is damage (a truncation to nothing, a foreign file), never a
        // new database to fill, which would silently lose every credential.
        return Err(corrupt("it holds no fidoseal schema: empty, or not made by fidoseal".into()));
    }
    let setup = |c: &Connection| -> rusqlite::Result<()> {
        // WAL: a commit appends to the log and fsyncs it (synchronous=FULL),
        // one sequential write per ceremony; readers never block the writer.
        let mode: String = c.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(rusqlite::Error::InvalidParameterName(format!("journal mode stayed {mode}")));
        }
        c.execute_batch("PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON; PRAGMA secure_delete = ON;")
    };
    setup(&connection).map_err(|e| StateError::Write { path: path.to_owned(), reason: e.to_string() })?;
    if version < schema::VERSION {
        migrate::upgrade_schema(&connection).map_err(|e| StateError::Write {
            path: path.to_owned(),
            reason: format!("upgrading schema {version} to {}: {e}", schema::VERSION),
        })?;
        tracing::info!(from = version, to = schema::VERSION, path = %path.display(), "credential database schema upgraded");
    }
    Ok(connection)
}

/// A database file is whole pages, all of them there: a file cut short
/// (even where the lost bytes were a page's free space, which SQLite would
/// read back as zeros) is damage. Pages still in the write-ahead log are not
/// in the file yet, so with a log only the whole-page rule applies.
fn whole_pages(path: &Path, connection: &Connection) -> Result<(), String> {
    let length = std::fs::metadata(path).map_err(|e| e.to_string())?.len();
    let page_size: u64 = connection.query_row("PRAGMA page_size", [], |r| r.get(0)).map_err(|e| e.to_string())?;
    let page_count: u64 = connection.query_row("PRAGMA page_count", [], |r| r.get(0)).map_err(|e| e.to_string())?;
    let log_length = std::fs::metadata(format!("{}-wal", path.display())).map(|m| m.len()).unwrap_or(0);
    let expected = page_size.saturating_mul(page_count);
    if page_size == 0 || length % page_size != 0 || (log_length == 0 && length != expected) {
        return Err(format!("{length} bytes where {page_count} pages of {page_size} bytes were expected: cut short"));
    }
    Ok(())
}

/// Makes a new, empty database at `path` so that it never exists without
/// its schema: built and synced as `credentials.db.creating` (0600: SQLite's
/// -wal and -shm files copy the mode), then renamed into place.
fn create_database(state_dir: &Path, path: &Path) -> Result<(), StateError> {
    let write_error = |reason: String| StateError::Write { path: path.to_owned(), reason };
    let building = state_dir.join(format!("{DATABASE_FILE}.creating"));
    migrate::remove_database_files(&building);
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&building)
        .map_err(|e| write_error(e.to_string()))?;
    let built = Connection::open(&building).and_then(|connection| {
        // Rollback journal and synchronous=FULL: synced when create returns.
        connection.execute_batch("PRAGMA synchronous = FULL;")?;
        schema::create(&connection)?;
        connection.close().map_err(|(_, e)| e)
    });
    let placed = built
        .map_err(|e| e.to_string())
        .and_then(|()| std::fs::rename(&building, path).map_err(|e| e.to_string()))
        .and_then(|()| migrate::sync_dir(state_dir).map_err(|e| e.to_string()));
    if let Err(reason) = placed {
        migrate::remove_database_files(&building);
        return Err(write_error(reason));
    }
    Ok(())
}

impl CredentialStore for CredentialDatabase {
    fn credentials_for_rp(&self, rp_id_hash: &[u8; 32]) -> Result<Vec<ResidentCredential>, StoreError> {
        self.select_credentials("rp_id_hash = ?1", rp_id_hash)
    }

    fn all_credentials(&self) -> Result<Vec<ResidentCredential>, StoreError> {
        let sql = format!("SELECT {CREDENTIAL_COLUMNS} FROM credentials ORDER BY rp_id, created");
        let mut statement = self.connection.prepare_cached(&sql).map_err(sql_error)?;
        let rows = statement.query_map([], credential_from_row).map_err(sql_error)?;
        rows.collect::<Result<_, _>>().map_err(sql_error)
    }

    fn relying_parties(&self) -> Result<Vec<RelyingParty>, StoreError> {
        // Grouped along the (rp_id_hash, user_id) index; the bare columns
        // come from the newest credential of each rp (SQLite's max() rule).
        let mut statement = self
            .connection
            .prepare_cached(
                "SELECT rp_id, rp_name, count(*), max(created) FROM credentials GROUP BY rp_id_hash ORDER BY rp_id",
            )
            .map_err(sql_error)?;
        let rows = statement
            .query_map([], |r| {
                Ok(RelyingParty {
                    rp_id: r.get(0)?,
                    rp_name: r.get(1)?,
                    credentials: usize::try_from(r.get::<_, i64>(2)?).unwrap_or(0),
                })
            })
            .map_err(sql_error)?;
        rows.collect::<Result<_, _>>().map_err(sql_error)
    }

    fn find(&self, credential_id: &[u8]) -> Result<Option<ResidentCredential>, StoreError> {
        Ok(self.select_credentials("credential_id = ?1", credential_id)?.pop())
    }

    fn save(&mut self, credential: ResidentCredential) -> Result<(), StoreError> {
        let (count, capacity, floor) = (self.count, self.capacity, self.counter_floor);
        let created = credential.created;
        self.covered_transaction(
            |tx| {
                // Same rp and user: the new credential replaces the old one (§6.1.2 step 15).
                let replaced = tx
                    .prepare_cached(
                        "DELETE FROM credentials WHERE rp_id_hash = ?1 AND user_id = ?2 AND credential_id != ?3",
                    )
                    .and_then(|mut s| {
                        s.execute(params![
                            rp_id_hash(&credential.rp_id).as_slice(),
                            credential.user_id,
                            credential.credential_id
                        ])
                    })
                    .map_err(sql_error)?;
                let exists = tx
                    .prepare_cached("SELECT 1 FROM credentials WHERE credential_id = ?1")
                    .and_then(|mut s| s.exists([&credential.credential_id]))
                    .map_err(sql_error)?;
                let count = count - replaced.min(count);
                if !exists && count >= capacity {
                    return Err(StoreError::Full);
                }
                upsert_credential(tx, &credential, floor).map_err(sql_error)?;
                // A replaced credential is one deleted: undoing that must not work.
                Ok((if exists { count } else { count + 1 }, replaced > 0))
            },
            |db, &count| {
                db.count = count;
                db.newest_created = db.newest_created.max(created);
            },
        )?;
        Ok(())
    }

    fn delete(&mut self, credential_id: &[u8]) -> Result<bool, StoreError> {
        let deleted = self.covered_transaction(
            |tx| {
                let deleted = tx
                    .prepare_cached("DELETE FROM credentials WHERE credential_id = ?1")
                    .and_then(|mut s| s.execute([credential_id]))
                    .map_err(sql_error)?;
                Ok((deleted, deleted > 0))
            },
            |db, &deleted| db.count -= deleted.min(db.count),
        )?;
        Ok(deleted > 0)
    }

    fn credential_count(&self) -> usize {
        self.count
    }

    fn remaining_capacity(&self) -> usize {
        self.capacity.saturating_sub(self.count)
    }

    fn next_creation_order(&self) -> u64 {
        self.newest_created.saturating_add(1)
    }

    fn initial_signature_counter(&self) -> u32 {
        self.counter_floor
    }

    fn next_signature_counter(&mut self, credential_id: &[u8]) -> Result<u32, StoreError> {
        // Above the floor: after a reset, and each epoch of the daemon's
        // anti-rollback (set_counter_epoch), every counter jumps above it.
        let first = self.counter_floor.saturating_add(1);
        let value = self.transaction(|tx| {
            // A discoverable credential's counter lives in its row; any
            // other credential (its key is in its ID) gets a counter row at
            // its first assertion. Counters stop at u32::MAX, never wrap.
            let resident: Option<i64> = tx
                .prepare_cached(
                    "UPDATE credentials SET signature_counter = min(max(signature_counter + 1, ?2), 4294967295)
                     WHERE credential_id = ?1 RETURNING signature_counter",
                )
                .and_then(|mut s| s.query_row(params![credential_id, first], |r| r.get(0)).optional())
                .map_err(sql_error)?;
            let value = match resident {
                Some(value) => value,
                None => tx
                    .prepare_cached(
                        "INSERT INTO signature_counters (credential_id, value) VALUES (?1, ?2)
                         ON CONFLICT (credential_id) DO UPDATE SET value = min(max(value + 1, ?2), 4294967295)
                         RETURNING value",
                    )
                    .and_then(|mut s| s.query_row(params![credential_id, first], |r| r.get(0)))
                    .map_err(sql_error)?,
            };
            u32::try_from(value).map_err(|_| StoreError::Io(format!("signature counter {value} out of range")))
        })?;
        if let Some(protection) = self.rollback.as_mut() {
            if protection.counter_ceiling == Some(value) {
                // The last value of this epoch: the next ones come from a new one.
                let (floor, ceiling) =
                    protection.sink.new_epoch().map_err(|e| StoreError::Io(format!("anti-rollback epoch: {e}")))?;
                self.set_counter_epoch(floor, ceiling)?;
            }
        }
        Ok(value)
    }

    fn load_state(&self) -> AuthenticatorState {
        self.state.clone()
    }

    fn save_state(&mut self, state: &AuthenticatorState) -> Result<(), StoreError> {
        // Only the rows that changed: a PIN retry does not rewrite the blobs.
        let settings = (AuthenticatorState { large_blob_array: Vec::new(), ..state.clone() }
            != AuthenticatorState { large_blob_array: Vec::new(), ..self.state.clone() })
        .then(|| authenticator_row(state))
        .transpose()?;
        let blobs = (state.large_blob_array != self.state.large_blob_array).then_some(&state.large_blob_array);
        if settings.is_none() && blobs.is_none() {
            return Ok(());
        }
        let bump = settings.is_some() && rollback::must_bump(&self.state, state);
        self.covered_transaction(
            |tx| {
                if let Some(row) = &settings {
                    put_setting(tx, setting::AUTHENTICATOR, row).map_err(sql_error)?;
                }
                if let Some(blobs) = blobs {
                    put_setting(tx, setting::LARGE_BLOB_ARRAY, blobs).map_err(sql_error)?;
                }
                Ok(((), bump))
            },
            |db, ()| db.state = state.clone(),
        )
    }

    fn reset(&mut self) -> Result<(), StoreError> {
        // The key store is reset with us and gets new secrets: the state is
        // tied to it again at the next start (bind_key_store adopts an
        // unrecorded state beside a key store that was already there).
        let floor = self.counter_floor;
        self.covered_transaction(
            |tx| Ok((reset_in(tx, floor).map_err(sql_error)?, true)),
            |db, &floor| db.after_reset(floor),
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests;
