//! The state directory. Credentials, counters, the PIN and settings are in
//! its SQLite database (crate `fidoseal-store`, `credentials.db`); the key
//! stores keep their own small files beside it, written atomically (write a
//! temporary file, fsync, rename, fsync the directory) so that a crash at
//! any instant loses nothing acknowledged.

use std::fs::{self, DirBuilder, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

pub use fidoseal_store::{unix_time, Binding, CredentialDatabase, KeyStoreBinding, DATABASE_FILE, LEGACY_FILE};

/// Creates (or tightens) the state directory: owner-only access.
pub fn prepare_state_dir(dir: &Path) -> std::io::Result<()> {
    DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
}

/// Replaces `path` with `contents` atomically, the file readable by its owner only.
pub fn write_atomically(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let temporary = dir.join(format!(".{name}.tmp"));
    {
        let mut file = OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&temporary)?;
        file.write_all(contents)?;
        file.sync_all()?;
    }
    fs::rename(&temporary, path)?;
    fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_writes_replace_whole_files_owner_only() {
        let temp_dir = tempfile::tempdir().unwrap();
        let dir = temp_dir.path().join("state");
        prepare_state_dir(&dir).unwrap();
        assert_eq!(fs::metadata(&dir).unwrap().permissions().mode() & 0o777, 0o700);
        let file = dir.join("key");
        write_atomically(&file, b"one").unwrap();
        write_atomically(&file, b"two").unwrap();
        assert_eq!(fs::read(&file).unwrap(), b"two");
        assert_eq!(fs::metadata(&file).unwrap().permissions().mode() & 0o777, 0o600);
        assert!(!dir.join(".key.tmp").exists());
    }
}
