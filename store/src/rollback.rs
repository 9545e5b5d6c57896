//! The database's side of anti-rollback (docs/tpm.md, "Anti-rollback"):
//! a version and a MAC over the rollback-relevant content, kept in the
//! `rollback` settings row and changed in the same transaction as that
//! content.
//!
//! - Covered: the set of discoverable credential IDs, and the authenticator
//!   row (the PIN record, PIN and UV retries, the settings).
//! - The version grows with every change that an attacker could want to
//!   undo: a credential deleted, the PIN record changed, a retry counter
//!   lowered, a reset. Each such change is then anchored by the daemon
//!   ([`AnchorSink`]: the machine's anchor file and the TPM's NV counter),
//!   after the commit. Other covered changes (a new credential, retries
//!   restored by a correct PIN) only renew the MAC: restoring the state
//!   from before them gains nothing.
//! - The MAC key is the daemon's (derived from a TPM-only key): with the
//!   disk alone, a record copied from the current database into an older
//!   copy does not match that copy's content.
//!
//! Not covered: signature counters (a getAssertion writes no anchor: the
//! daemon's counter epochs raise the floor at each start above anything
//! given before, see [`crate::CredentialDatabase::set_counter_epoch`]),
//! the large-blob array.

use hmac::{Hmac, KeyInit, Mac};
use rusqlite::{OptionalExtension, Transaction};
use sha2::Sha256;
use zeroize::Zeroizing;

use fidoseal_ctap::platform::AuthenticatorState;

/// The settings row of the record.
pub const ROW: &str = "rollback";
const LABEL: &[u8] = b"fidoseal rollback record v1\0";
const RECORD_LEN: usize = 8 + 32;

/// Where a bump is anchored: called after the commit of a change that
/// raised the version. An error fails the request that made the change
/// (the change stays committed; the next start finds the database ahead of
/// its anchor, which is accepted, and anchors it).
pub trait AnchorSink: Send {
    fn anchor(&mut self, version: u64) -> Result<(), String>;
    /// A signature counter reached the ceiling of the counters' epoch: a
    /// new epoch (an NV increment); its floor and ceiling.
    fn new_epoch(&mut self) -> Result<(u32, u32), String>;
}

/// What the database's record says, checked against its content.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordCheck {
    /// The MAC matches the content: the database is at this version.
    Valid { version: u64 },
    /// No record: a database from before anti-rollback (or a new one).
    Missing,
    /// A record whose MAC does not match the content: a record copied from
    /// another copy of the state, or the content changed outside fidoseald.
    Mismatch,
}

/// The rollback protection of one database.
pub struct Protection {
    pub(crate) key: Zeroizing<[u8; 32]>,
    pub(crate) sink: Box<dyn AnchorSink>,
    pub(crate) version: u64,
    /// The highest signature counter this epoch may give (the daemon's
    /// epoch-based counters): reaching it starts a new epoch.
    pub(crate) counter_ceiling: Option<u32>,
}

/// Whether a change of the authenticator row is worth undoing for an
/// attacker (so must raise the version): the PIN record changed, or a
/// retry counter went down.
pub fn must_bump(old: &AuthenticatorState, new: &AuthenticatorState) -> bool {
    let pin = |s: &AuthenticatorState| s.pin.as_ref().map(|p| (p.verifier.clone(), p.code_points));
    pin(old) != pin(new)
        || new.pin_retries < old.pin_retries
        || new.uv_retries < old.uv_retries
        || new.force_pin_change != old.force_pin_change
        || new.min_pin_length != old.min_pin_length
        || new.always_uv != old.always_uv
}

/// MAC(key, label ‖ version ‖ each credential ID (u16 length ‖ bytes), in
/// ID order ‖ the authenticator row), read inside `tx`.
pub(crate) fn mac(tx: &rusqlite::Connection, key: &[u8; 32], version: u64) -> rusqlite::Result<[u8; 32]> {
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(LABEL);
    mac.update(&version.to_be_bytes());
    let mut statement = tx.prepare_cached("SELECT credential_id FROM credentials ORDER BY credential_id")?;
    let mut rows = statement.query([])?;
    let mut count: u64 = 0;
    while let Some(row) = rows.next()? {
        let id: Vec<u8> = row.get(0)?;
        mac.update(&(id.len() as u16).to_be_bytes());
        mac.update(&id);
        count += 1;
    }
    mac.update(&count.to_be_bytes());
    let row: Option<Vec<u8>> = tx
        .query_row("SELECT value FROM settings WHERE name = ?1", [crate::setting::AUTHENTICATOR], |r| r.get(0))
        .optional()?;
    match row {
        Some(bytes) => {
            mac.update(&[1]);
            mac.update(&bytes);
        }
        None => mac.update(&[0]),
    }
    Ok(mac.finalize().into_bytes().into())
}

/// Reads and checks the record of the database behind `connection`.
pub(crate) fn check(connection: &rusqlite::Connection, key: &[u8; 32]) -> rusqlite::Result<RecordCheck> {
    let record: Option<Vec<u8>> =
        connection.query_row("SELECT value FROM settings WHERE name = ?1", [ROW], |r| r.get(0)).optional()?;
    let Some(record) = record else {
        return Ok(RecordCheck::Missing);
    };
    if record.len() != RECORD_LEN {
        return Ok(RecordCheck::Mismatch);
    }
    let version = u64::from_be_bytes(record[..8].try_into().expect("8 bytes"));
    let expected = mac(connection, key, version)?;
    // Constant time is not needed against an attacker who can read the
    // database anyway, but costs nothing.
    let same = record[8..].iter().zip(expected.iter()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0;
    Ok(if same { RecordCheck::Valid { version } } else { RecordCheck::Mismatch })
}

/// Writes the record for `version` over the content as it is in `tx`.
pub(crate) fn write(tx: &Transaction<'_>, key: &[u8; 32], version: u64) -> rusqlite::Result<()> {
    let mac = mac(tx, key, version)?;
    let mut record = Vec::with_capacity(RECORD_LEN);
    record.extend_from_slice(&version.to_be_bytes());
    record.extend_from_slice(&mac);
    tx.execute(
        "INSERT INTO settings (name, value) VALUES (?1, ?2) ON CONFLICT (name) DO UPDATE SET value = excluded.value",
        rusqlite::params![ROW, record],
    )?;
    Ok(())
}
