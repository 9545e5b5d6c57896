//! Per-user mode's state layout, and the upgrade from a single-user state.
//!
//! ```text
//! state_dir/                    0700 root
//!   software-master-key | tpm-keystore    the machine's key store (shared)
//!   users/                      0700 root
//!     <uid>/                    0700 root: one user's authenticator
//!       credentials.db (-wal, -shm)       passkeys, PIN and retries,
//!                                         counters, large blobs,
//!                                         minPinLength, alwaysUv
//!       key-context                       user_keys.rs
//! ```
//!
//! A single-user state directory has its credential files at the top. On
//! the first per-user start they move, whole, to the `[device] user`'s
//! directory, with a "legacy" key context so that every credential ID and
//! the PIN made before keep working (user_keys.rs). The move is a series
//! of renames into `users/.migrating-<uid>/`, then one rename of that
//! directory to `users/<uid>/`: a crash at any point leaves files either
//! at the top or in the staging directory, and the next start finishes
//! the move. Nothing is deleted or rewritten; SQLite's -wal and -shm go
//! with their database (no process has it open during the move).

use std::ffi::OsString;
use std::fs::{self, DirBuilder};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::state::{DATABASE_FILE, LEGACY_FILE};
use crate::user_keys::{UserKeyStore, KEY_CONTEXT_FILE};

pub const USERS_DIR: &str = "users";

/// The anti-rollback id (tpm/rollback.rs) of the credential state in `dir`:
/// "." for the state directory itself, "users/<uid>" for a user's under it;
/// None for any other directory.
pub fn state_id(state_dir: &Path, dir: &Path) -> Option<String> {
    use std::path::Component;
    let parts: Vec<Component> = dir.strip_prefix(state_dir).ok()?.components().collect();
    match parts.as_slice() {
        [] => Some(crate::tpm::rollback::SINGLE_USER.to_owned()),
        [Component::Normal(users), Component::Normal(uid)]
            if *users == USERS_DIR && uid.to_str().is_some_and(|u| u.parse::<u32>().is_ok()) =>
        {
            Some(format!("{USERS_DIR}/{}", uid.to_string_lossy()))
        }
        _ => None,
    }
}
const STAGING_PREFIX: &str = ".migrating-";

pub fn user_dir(state_dir: &Path, uid: u32) -> PathBuf {
    state_dir.join(USERS_DIR).join(uid.to_string())
}

fn private_dir(dir: &Path) -> std::io::Result<()> {
    DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
}

/// Creates (or tightens) `users/` and `users/<uid>/`: root's only.
pub fn prepare_user_dir(state_dir: &Path, uid: u32) -> std::io::Result<PathBuf> {
    private_dir(&state_dir.join(USERS_DIR))?;
    let dir = user_dir(state_dir, uid);
    private_dir(&dir)?;
    Ok(dir)
}

/// A single-user credential file at the top of the state directory: the
/// database and SQLite's companions, the CBOR file of older versions, and
/// the copies kept aside by migrations and resets (`credentials.*`).
fn is_single_user_file(name: &str) -> bool {
    name == DATABASE_FILE
        || name == LEGACY_FILE
        || name.starts_with(&format!("{DATABASE_FILE}-"))
        || name.starts_with(&format!("{DATABASE_FILE}."))
        || name.starts_with(&format!("{LEGACY_FILE}."))
}

fn single_user_files(state_dir: &Path) -> std::io::Result<Vec<OsString>> {
    let mut files = Vec::new();
    for entry in fs::read_dir(state_dir)? {
        let entry = entry?;
        if entry.file_name().to_str().is_some_and(is_single_user_file) && entry.file_type()?.is_file() {
            files.push(entry.file_name());
        }
    }
    files.sort();
    Ok(files)
}

/// What [`migrate_single_user_state`] did.
#[derive(Debug, PartialEq, Eq)]
pub enum Migration {
    /// No single-user state: nothing to do.
    Nothing,
    /// These files moved to `to`.
    Moved { uid: u32, to: PathBuf, files: Vec<OsString> },
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MigrationError {
    #[error(
        "{dir} holds a single-user key's credentials ({files}), and [device] mode = \"per-user\" must know whose \
         they are: set [device] user to that user (their device gets them, with the PIN and every passkey), or \
         set mode = \"single\" to go on as before"
    )]
    OwnerUnknown { dir: String, files: String },
    #[error("[device] user {0:?} does not exist: cannot give them the single-user state")]
    NoSuchUser(String),
    #[error(
        "{staging} holds a migration for uid {staging_uid} that did not finish, but [device] user is uid {uid}: \
         finish it with that user, or move the files back by hand"
    )]
    OtherMigration { staging: String, staging_uid: u32, uid: u32 },
    #[error(
        "both {dir} (single-user credentials: {files}) and {user_dir} exist: refusing to choose. Keep one: move \
         the other aside"
    )]
    BothExist { dir: String, files: String, user_dir: String },
    #[error("cannot move the single-user state: {0}")]
    Io(String),
}

fn io<'a>(what: &str, path: &'a Path) -> impl Fn(std::io::Error) -> MigrationError + 'a {
    let what = what.to_owned();
    move |e| MigrationError::Io(format!("{what} {}: {e}", path.display()))
}

fn pending_staging(users: &Path) -> Result<Option<(u32, PathBuf)>, MigrationError> {
    let Ok(entries) = fs::read_dir(users) else { return Ok(None) };
    for entry in entries {
        let entry = entry.map_err(io("cannot read", users))?;
        let name = entry.file_name();
        if let Some(uid) = name.to_str().and_then(|n| n.strip_prefix(STAGING_PREFIX)).and_then(|n| n.parse().ok()) {
            return Ok(Some((uid, entry.path())));
        }
    }
    Ok(None)
}

/// Per-user mode's start: moves a single-user state to its owner
/// (`owner`: `[device] user` and its uid), or finishes a move a crash
/// interrupted. Errors stop the daemon: credentials are never dropped or
/// given to a guessed user.
pub fn migrate_single_user_state(
    state_dir: &Path,
    owner: Option<(&str, Option<u32>)>,
) -> Result<Migration, MigrationError> {
    let files = single_user_files(state_dir).map_err(io("cannot read", state_dir))?;
    let users = state_dir.join(USERS_DIR);
    let staging = pending_staging(&users)?;
    if files.is_empty() && staging.is_none() {
        return Ok(Migration::Nothing);
    }
    let listed = files.iter().map(|f| f.to_string_lossy()).collect::<Vec<_>>().join(", ");
    let Some((user, uid)) = owner else {
        return Err(MigrationError::OwnerUnknown { dir: state_dir.display().to_string(), files: listed });
    };
    let Some(uid) = uid else { return Err(MigrationError::NoSuchUser(user.to_owned())) };
    if let Some((staging_uid, staging)) = &staging {
        if *staging_uid != uid {
            return Err(MigrationError::OtherMigration {
                staging: staging.display().to_string(),
                staging_uid: *staging_uid,
                uid,
            });
        }
    }
    let target = user_dir(state_dir, uid);
    if target.exists() {
        return Err(MigrationError::BothExist {
            dir: state_dir.display().to_string(),
            files: listed,
            user_dir: target.display().to_string(),
        });
    }
    private_dir(&users).map_err(io("cannot create", &users))?;
    let staging = users.join(format!("{STAGING_PREFIX}{uid}"));
    private_dir(&staging).map_err(io("cannot create", &staging))?;
    for file in &files {
        let from = state_dir.join(file);
        fs::rename(&from, staging.join(file)).map_err(io("cannot move", &from))?;
    }
    if !staging.join(KEY_CONTEXT_FILE).exists() {
        UserKeyStore::write_legacy(&staging).map_err(io("cannot write the key context in", &staging))?;
    }
    sync_dir(state_dir)?;
    sync_dir(&staging)?;
    fs::rename(&staging, &target).map_err(io("cannot rename", &staging))?;
    sync_dir(&users)?;
    let moved = fs::read_dir(&target)
        .map_err(io("cannot read", &target))?
        .filter_map(|e| e.ok().map(|e| e.file_name()))
        .filter(|name| name.to_str() != Some(KEY_CONTEXT_FILE))
        .collect::<Vec<_>>();
    let mut moved = moved;
    moved.sort();
    Ok(Migration::Moved { uid, to: target, files: moved })
}

fn sync_dir(dir: &Path) -> Result<(), MigrationError> {
    fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io("cannot sync", dir))
}

#[cfg(test)]
mod tests {

    use super::*;

    #[test]
    fn state_ids_are_the_state_directory_or_a_users_under_it() {
        let state = Path::new("/var/lib/fidoseal");
        assert_eq!(state_id(state, state).as_deref(), Some("."));
        assert_eq!(state_id(state, Path::new("/var/lib/fidoseal/")).as_deref(), Some("."));
        assert_eq!(state_id(state, &state.join("users/1000")).as_deref(), Some("users/1000"));
        for other in ["users", "users/alice", "users/1000/x", "other/1000", "../fidoseal"] {
            assert_eq!(state_id(state, &state.join(other)), None, "{other}");
        }
        assert_eq!(state_id(state, Path::new("/tmp")), None);
    }

    fn temp(name: &str) -> tempfile::TempDir {
        let dir = tempfile::Builder::new().prefix(&format!("fidoseal-migrate-users-{name}-")).tempdir().unwrap();
        crate::state::prepare_state_dir(dir.path()).unwrap();
        dir
    }

    fn names(list: &[&str]) -> Vec<OsString> {
        list.iter().map(OsString::from).collect()
    }

    #[test]
    fn nothing_to_move_is_nothing() {
        let temp_dir = temp("nothing");
        let dir = temp_dir.path();
        fs::write(dir.join("software-master-key"), [0u8; 32]).unwrap();
        assert_eq!(migrate_single_user_state(dir, None), Ok(Migration::Nothing));
        assert!(!dir.join(USERS_DIR).exists());
    }

    #[test]
    fn credential_files_move_to_the_owner_and_the_key_store_stays() {
        let temp_dir = temp("move");
        let dir = temp_dir.path();
        for (file, body) in [
            ("credentials.db", "db"),
            ("credentials.db-wal", "wal"),
            ("credentials.db-shm", "shm"),
            ("credentials.cbor.migrated", "old"),
            ("software-master-key", "key"),
            ("tpm-keystore", "tpm"),
        ] {
            fs::write(dir.join(file), body).unwrap();
        }
        let moved = migrate_single_user_state(dir, Some(("alice", Some(1001)))).unwrap();
        let to = dir.join("users/1001");
        assert_eq!(
            moved,
            Migration::Moved {
                uid: 1001,
                to: to.clone(),
                files: names(&[
                    "credentials.cbor.migrated",
                    "credentials.db",
                    "credentials.db-shm",
                    "credentials.db-wal"
                ])
            }
        );
        assert_eq!(fs::read_to_string(to.join("credentials.db-wal")).unwrap(), "wal");
        assert_eq!(
            fs::read_to_string(dir.join("software-master-key")).unwrap(),
            "key",
            "the machine's key store stays"
        );
        assert!(dir.join("tpm-keystore").exists() && !dir.join("credentials.db").exists());
        for d in [dir.join("users"), to.clone()] {
            assert_eq!(fs::metadata(&d).unwrap().permissions().mode() & 0o777, 0o700, "{}", d.display());
        }
        assert!(UserKeyStore::open(
            std::sync::Arc::new(std::sync::Mutex::new(Box::new(
                fidoseal_ctap::software_keystore::SoftwareKeyStore::new(fidoseal_ctap::platform::Secret32([1; 32]))
            ))),
            &to,
            1001
        )
        .unwrap()
        .is_legacy());
        assert_eq!(migrate_single_user_state(dir, Some(("alice", Some(1001)))), Ok(Migration::Nothing), "done once");
    }

    #[test]
    fn an_interrupted_move_is_finished() {
        let temp_dir = temp("resume");
        let dir = temp_dir.path();
        // The crash came after the database moved, before its -wal did.
        let staging = dir.join("users/.migrating-1001");
        fs::create_dir_all(&staging).unwrap();
        fs::write(staging.join("credentials.db"), "db").unwrap();
        fs::write(dir.join("credentials.db-wal"), "wal").unwrap();
        assert!(matches!(
            migrate_single_user_state(dir, Some(("bob", Some(1002)))),
            Err(MigrationError::OtherMigration { staging_uid: 1001, uid: 1002, .. })
        ));
        let moved = migrate_single_user_state(dir, Some(("alice", Some(1001)))).unwrap();
        assert!(matches!(moved, Migration::Moved { uid: 1001, .. }));
        assert_eq!(fs::read_to_string(dir.join("users/1001/credentials.db-wal")).unwrap(), "wal");
        assert_eq!(fs::read_to_string(dir.join("users/1001/credentials.db")).unwrap(), "db");
        assert!(!staging.exists());
    }

    #[test]
    fn no_owner_or_a_conflict_stops_and_moves_nothing() {
        let temp_dir = temp("refuse");
        let dir = temp_dir.path();
        fs::write(dir.join("credentials.db"), "db").unwrap();
        let err = migrate_single_user_state(dir, None).unwrap_err();
        assert!(err.to_string().contains("set [device] user"), "{err}");
        assert_eq!(
            migrate_single_user_state(dir, Some(("ghost", None))),
            Err(MigrationError::NoSuchUser("ghost".into()))
        );
        fs::create_dir_all(dir.join("users/1001")).unwrap();
        assert!(matches!(
            migrate_single_user_state(dir, Some(("alice", Some(1001)))),
            Err(MigrationError::BothExist { .. })
        ));
        assert_eq!(fs::read_to_string(dir.join("credentials.db")).unwrap(), "db", "left where it was");
    }
}
