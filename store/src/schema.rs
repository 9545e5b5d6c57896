//! The database schema. `PRAGMA user_version` says which one a file has;
//! a later change of it is a new numbered step in `migrate.rs`
//! ([`crate::migrate::upgrade_schema`]), run in a transaction, which a new
//! database goes through too: old and new files end with the same schema.

use rusqlite::Connection;

/// The schema this code reads and writes.
///
/// 1. The first database.
/// 2. `credentials.third_party_payment` (CTAP 2.2 thirdPartyPayment).
pub const VERSION: i32 = 2;

/// Creates the tables of a new database: schema 1 in one transaction, then
/// each later step ([`crate::migrate::upgrade_schema`]).
///
/// - `credentials`: one row per discoverable credential, its signature
///   counter included (a getAssertion updates that one row). Found by
///   credential ID (unique index) and by rp ID hash (the rp + user unique
///   index, which also enforces CTAP's one credential per rp and user).
/// - `signature_counters`: counters of non-discoverable credentials
///   (their key is in their ID; the row appears at the first assertion).
/// - `settings`: the PIN record, retries and config as one CBOR row, the
///   large-blob array, the key-store binding, the counters' floor.
pub fn create(connection: &Connection) -> rusqlite::Result<()> {
    create_version_1(connection)?;
    crate::migrate::upgrade_schema(connection)
}

/// Schema 1, as the first database had it.
pub(crate) fn create_version_1(connection: &Connection) -> rusqlite::Result<()> {
    connection.execute_batch(
        "BEGIN IMMEDIATE;
         CREATE TABLE credentials (
             id INTEGER PRIMARY KEY,
             credential_id BLOB NOT NULL,
             rp_id_hash BLOB NOT NULL,
             rp_id TEXT NOT NULL,
             rp_name TEXT,
             user_id BLOB NOT NULL,
             user_name TEXT,
             user_display_name TEXT,
             algorithm INTEGER NOT NULL,
             key_handle BLOB NOT NULL,
             created INTEGER NOT NULL,
             public_key_cose BLOB NOT NULL,
             cred_protect INTEGER NOT NULL,
             hmac_secret INTEGER NOT NULL,
             cred_blob BLOB NOT NULL,
             large_blob_key INTEGER NOT NULL,
             signature_counter INTEGER NOT NULL
         );
         CREATE UNIQUE INDEX credentials_by_id ON credentials (credential_id);
         CREATE UNIQUE INDEX credentials_by_rp_user ON credentials (rp_id_hash, user_id);
         CREATE TABLE signature_counters (
             credential_id BLOB PRIMARY KEY NOT NULL,
             value INTEGER NOT NULL
         ) WITHOUT ROWID;
         CREATE TABLE settings (
             name TEXT PRIMARY KEY NOT NULL,
             value NOT NULL
         ) WITHOUT ROWID;
         PRAGMA user_version = 1;
         COMMIT;",
    )
}
