//! The state directory: resident credentials and the signature counter,
//! written atomically (write a temporary file, fsync, rename, fsync the
//! directory) so that a crash at any instant loses nothing acknowledged.

use std::fs::{self, DirBuilder, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use fidoseal_ctap::memory_store::apply_save;
use fidoseal_ctap::platform::{AuthenticatorState, CredentialStore, ResidentCredential, StoreError};
use serde::{Deserialize, Serialize};

const CREDENTIALS_FILE: &str = "credentials.cbor";
const STATE_FORMAT_VERSION: u32 = 1;

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

#[derive(Serialize, Deserialize, Clone, Default)]
struct CredentialFile {
    version: u32,
    signature_counter: u32,
    credentials: Vec<ResidentCredential>,
    #[serde(default)]
    state: AuthenticatorState,
    /// The key store this state was made with (absent in files written
    /// before fidoseal recorded it).
    #[serde(default)]
    key_store: Option<KeyStoreBinding>,
}

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

/// What [`FileCredentialStore::bind_key_store`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum Binding {
    /// The state was made with this key store.
    Same,
    /// Recorded now: a new or empty state, or a file from before bindings
    /// whose key store was not just created.
    Recorded,
    /// The state belongs to another key store (a backend switch, a state
    /// directory from elsewhere): copied to `kept`, then reset.
    SetAside { kept: PathBuf, previous: String },
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path} is damaged ({reason}); refusing to start rather than lose credentials — restore it from a backup or move it away")]
    Corrupt { path: PathBuf, reason: String },
    #[error("cannot write {path}: {reason}")]
    Write { path: PathBuf, reason: String },
}

/// Seconds since the epoch, for the names of files set aside.
pub fn unix_time() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Discoverable credentials and the signature counter in `credentials.cbor`.
pub struct FileCredentialStore {
    path: PathBuf,
    data: CredentialFile,
    capacity: usize,
}

impl FileCredentialStore {
    pub fn open(state_dir: &Path, capacity: usize) -> Result<Self, StateError> {
        let path = state_dir.join(CREDENTIALS_FILE);
        let data = match fs::read(&path) {
            Ok(bytes) => {
                let data: CredentialFile = ciborium::de::from_reader(bytes.as_slice())
                    .map_err(|e| StateError::Corrupt { path: path.clone(), reason: e.to_string() })?;
                if data.version != STATE_FORMAT_VERSION {
                    return Err(StateError::Corrupt {
                        path,
                        reason: format!("format version {} is not {STATE_FORMAT_VERSION}", data.version),
                    });
                }
                data
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                CredentialFile { version: STATE_FORMAT_VERSION, ..Default::default() }
            }
            Err(source) => return Err(StateError::Read { path, source }),
        };
        Ok(Self { path, data, capacity })
    }

    pub fn credential_count(&self) -> usize {
        self.data.credentials.len()
    }

    /// Credentials, a PIN or large blobs: something that a key store
    /// switch would make unusable.
    fn holds_key_store_data(&self) -> bool {
        let state = &self.data.state;
        let blobs = !state.large_blob_array.is_empty()
            && state.large_blob_array != fidoseal_ctap::platform::EMPTY_LARGE_BLOB_ARRAY;
        !self.data.credentials.is_empty() || state.pin.is_some() || blobs
    }

    /// Ties the state to `binding`, the key store in use. A state that holds
    /// something and belongs to another key store — recorded as another, or
    /// unrecorded while the key store was `just_created` — is useless with
    /// this one (its PIN would never verify and burn the retries; its
    /// passkeys would be listed but fail): it is copied aside (nothing is
    /// deleted) and reset, keeping the signature counter.
    pub fn bind_key_store(&mut self, binding: KeyStoreBinding, just_created: bool) -> Result<Binding, StateError> {
        let recorded = self.data.key_store.clone();
        if recorded.as_ref() == Some(&binding) {
            return Ok(Binding::Same);
        }
        let foreign = match &recorded {
            Some(_) => true,
            None => just_created,
        };
        let path = self.path.clone();
        let write_error = |e: StoreError| StateError::Write { path: path.clone(), reason: e.to_string() };
        if !(foreign && self.holds_key_store_data()) {
            self.update(|d| {
                d.key_store = Some(binding);
                Ok(())
            })
            .map_err(write_error)?;
            return Ok(Binding::Recorded);
        }
        let kept = PathBuf::from(format!("{}.unusable-{}", path.display(), unix_time()));
        let bytes = fs::read(&path).map_err(|source| StateError::Read { path: path.clone(), source })?;
        write_atomically(&kept, &bytes)
            .map_err(|e| StateError::Write { path: kept.clone(), reason: e.to_string() })?;
        self.update(|d| {
            // The counter keeps counting: relying parties must never see it go back.
            d.credentials.clear();
            d.state = AuthenticatorState::default();
            d.key_store = Some(binding);
            Ok(())
        })
        .map_err(write_error)?;
        let previous = recorded.map_or_else(|| "an earlier key store (not recorded)".to_owned(), |b| b.name);
        Ok(Binding::SetAside { kept, previous })
    }

    /// Applies `change` to a copy, persists the copy, and only then makes
    /// it current: memory never runs ahead of the disk.
    fn update<T>(&mut self, change: impl FnOnce(&mut CredentialFile) -> Result<T, StoreError>) -> Result<T, StoreError> {
        let mut next = self.data.clone();
        let result = change(&mut next)?;
        let mut bytes = Vec::new();
        ciborium::ser::into_writer(&next, &mut bytes).map_err(|e| StoreError::Io(e.to_string()))?;
        write_atomically(&self.path, &bytes).map_err(|e| StoreError::Io(format!("{}: {e}", self.path.display())))?;
        self.data = next;
        Ok(result)
    }
}

impl CredentialStore for FileCredentialStore {
    fn credentials_for_rp(&self, rp_id: &str) -> Result<Vec<ResidentCredential>, StoreError> {
        Ok(self.data.credentials.iter().filter(|c| c.rp_id == rp_id).cloned().collect())
    }

    fn all_credentials(&self) -> Result<Vec<ResidentCredential>, StoreError> {
        Ok(self.data.credentials.clone())
    }

    fn find(&self, credential_id: &[u8]) -> Result<Option<ResidentCredential>, StoreError> {
        Ok(self.data.credentials.iter().find(|c| c.credential_id == credential_id).cloned())
    }

    fn save(&mut self, credential: ResidentCredential) -> Result<(), StoreError> {
        let capacity = self.capacity;
        self.update(|d| apply_save(&mut d.credentials, credential, capacity))
    }

    fn delete(&mut self, credential_id: &[u8]) -> Result<bool, StoreError> {
        if !self.data.credentials.iter().any(|c| c.credential_id == credential_id) {
            return Ok(false);
        }
        self.update(|d| {
            d.credentials.retain(|c| c.credential_id != credential_id);
            Ok(true)
        })
    }

    fn remaining_capacity(&self) -> usize {
        self.capacity.saturating_sub(self.data.credentials.len())
    }

    fn next_signature_counter(&mut self) -> Result<u32, StoreError> {
        self.update(|d| {
            d.signature_counter = d.signature_counter.wrapping_add(1);
            Ok(d.signature_counter)
        })
    }

    fn load_state(&self) -> AuthenticatorState {
        self.data.state.clone()
    }

    fn save_state(&mut self, state: &AuthenticatorState) -> Result<(), StoreError> {
        self.update(|d| {
            d.state = state.clone();
            Ok(())
        })
    }

    fn reset(&mut self) -> Result<(), StoreError> {
        // The counter keeps counting: relying parties must never see it go back.
        self.update(|d| {
            d.credentials.clear();
            d.state = AuthenticatorState::default();
            // The key store is reset with us and gets new secrets: the state
            // is tied to it again at the next start (bind_key_store adopts
            // an unrecorded state beside a key store that was already there).
            d.key_store = None;
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fidoseal_ctap::platform::Algorithm;

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("fidoseal-state-test-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        prepare_state_dir(&dir).unwrap();
        dir
    }

    fn credential(rp: &str, user: &[u8], id: u8) -> ResidentCredential {
        ResidentCredential {
            credential_id: vec![id; 16],
            rp_id: rp.into(),
            rp_name: None,
            user_id: user.to_vec(),
            user_name: Some("alice".into()),
            user_display_name: None,
            algorithm: Algorithm::Es256,
            key_handle: vec![9; 60],
            created: u64::from(id),
            public_key_cose: vec![0xa0],
            extensions: Default::default(),
        }
    }

    fn bound_to(name: &str, byte: u8) -> KeyStoreBinding {
        KeyStoreBinding { name: name.into(), fingerprint: vec![byte; 16] }
    }

    fn set_aside_files(dir: &Path) -> Vec<PathBuf> {
        let mut found: Vec<PathBuf> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with("credentials.cbor.unusable-"))
            .collect();
        found.sort();
        found
    }

    fn with_pin() -> AuthenticatorState {
        let pin = Some(fidoseal_ctap::platform::PinRecord { verifier: vec![5; 32], code_points: 4 });
        AuthenticatorState { pin, ..AuthenticatorState::default() }
    }

    #[test]
    fn a_state_is_tied_to_its_key_store() {
        let dir = temp_dir("binding-same");
        let mut store = FileCredentialStore::open(&dir, 10).unwrap();
        assert_eq!(store.bind_key_store(bound_to("software", 1), true).unwrap(), Binding::Recorded);
        store.save(credential("a.example", b"u1", 1)).unwrap();
        let mut reopened = FileCredentialStore::open(&dir, 10).unwrap();
        assert_eq!(reopened.bind_key_store(bound_to("software", 1), false).unwrap(), Binding::Same);
        assert_eq!(reopened.credential_count(), 1);
        fs::remove_dir_all(dir).unwrap();
    }

    /// The [keystore] backend switched: the passkeys and the PIN are copied
    /// aside and the state starts over; the counter goes on.
    #[test]
    fn another_key_stores_state_is_set_aside_and_reset() {
        let dir = temp_dir("binding-other");
        let mut store = FileCredentialStore::open(&dir, 10).unwrap();
        store.bind_key_store(bound_to("software", 1), true).unwrap();
        store.save(credential("a.example", b"u1", 1)).unwrap();
        store.save_state(&with_pin()).unwrap();
        assert_eq!(store.next_signature_counter().unwrap(), 1);
        let before = fs::read(dir.join(CREDENTIALS_FILE)).unwrap();

        let mut reopened = FileCredentialStore::open(&dir, 10).unwrap();
        let Binding::SetAside { kept, previous } = reopened.bind_key_store(bound_to("tpm", 2), false).unwrap() else {
            panic!("not set aside")
        };
        assert_eq!(previous, "software");
        assert_eq!(set_aside_files(&dir), vec![kept.clone()]);
        assert_eq!(fs::read(&kept).unwrap(), before, "the copy is the whole old state");
        assert_eq!(fs::metadata(&kept).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(reopened.credential_count(), 0);
        assert!(reopened.load_state().pin.is_none(), "no PIN that could never verify");
        assert_eq!(reopened.next_signature_counter().unwrap(), 2, "the counter never goes back");
        // Tied to the new store from now on.
        let mut again = FileCredentialStore::open(&dir, 10).unwrap();
        assert_eq!(again.bind_key_store(bound_to("tpm", 2), false).unwrap(), Binding::Same);
        fs::remove_dir_all(dir).unwrap();
    }

    /// authenticatorReset gives the key store new secrets: the passkeys made
    /// after it must survive the next start.
    #[test]
    fn a_reset_state_is_tied_again_at_the_next_start() {
        let dir = temp_dir("binding-reset");
        let mut store = FileCredentialStore::open(&dir, 10).unwrap();
        store.bind_key_store(bound_to("software", 1), true).unwrap();
        store.save(credential("a.example", b"u1", 1)).unwrap();
        store.reset().unwrap();
        store.save(credential("b.example", b"u2", 2)).unwrap();
        store.save_state(&with_pin()).unwrap();
        let mut reopened = FileCredentialStore::open(&dir, 10).unwrap();
        assert_eq!(reopened.bind_key_store(bound_to("software", 2), false).unwrap(), Binding::Recorded);
        assert_eq!(reopened.credential_count(), 1);
        assert!(reopened.load_state().pin.is_some());
        assert!(set_aside_files(&dir).is_empty());
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn an_empty_state_just_changes_hands() {
        let dir = temp_dir("binding-empty");
        let mut store = FileCredentialStore::open(&dir, 10).unwrap();
        store.bind_key_store(bound_to("tpm", 1), true).unwrap();
        assert_eq!(store.next_signature_counter().unwrap(), 1);
        assert_eq!(store.bind_key_store(bound_to("tpm", 2), true).unwrap(), Binding::Recorded);
        assert!(set_aside_files(&dir).is_empty(), "nothing to keep");
        assert_eq!(store.next_signature_counter().unwrap(), 2);
        fs::remove_dir_all(dir).unwrap();
    }

    /// Files from before bindings: kept with a key store that was already
    /// there, set aside beside one this start created (it cannot be theirs).
    #[test]
    fn unrecorded_states_follow_whether_the_key_store_is_new() {
        let dir = temp_dir("binding-legacy");
        let legacy = |dir: &Path| {
            let mut store = FileCredentialStore::open(dir, 10).unwrap();
            store.save(credential("a.example", b"u1", 1)).unwrap();
            store.update(|d| {
                d.key_store = None;
                Ok(())
            })
            .unwrap();
        };
        legacy(&dir);
        let mut store = FileCredentialStore::open(&dir, 10).unwrap();
        assert_eq!(store.bind_key_store(bound_to("software", 1), false).unwrap(), Binding::Recorded);
        assert_eq!(store.credential_count(), 1);
        assert!(set_aside_files(&dir).is_empty());

        legacy(&dir);
        let mut store = FileCredentialStore::open(&dir, 10).unwrap();
        let outcome = store.bind_key_store(bound_to("tpm", 2), true).unwrap();
        assert!(matches!(&outcome, Binding::SetAside { previous, .. } if previous.contains("not recorded")), "{outcome:?}");
        assert_eq!(store.credential_count(), 0);
        assert_eq!(set_aside_files(&dir).len(), 1);
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn credentials_and_counter_survive_reopen() {
        let dir = temp_dir("reopen");
        let mut store = FileCredentialStore::open(&dir, 10).unwrap();
        store.save(credential("a.example", b"u1", 1)).unwrap();
        store.save(credential("a.example", b"u2", 2)).unwrap();
        assert_eq!(store.next_signature_counter().unwrap(), 1);
        assert_eq!(store.next_signature_counter().unwrap(), 2);
        let mut reopened = FileCredentialStore::open(&dir, 10).unwrap();
        assert_eq!(reopened.credentials_for_rp("a.example").unwrap().len(), 2);
        assert_eq!(reopened.next_signature_counter().unwrap(), 3);
        let mode = fs::metadata(dir.join(CREDENTIALS_FILE)).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(fs::metadata(&dir).unwrap().permissions().mode() & 0o777, 0o700);
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn replace_delete_reset_and_capacity() {
        let dir = temp_dir("rules");
        let mut store = FileCredentialStore::open(&dir, 2).unwrap();
        store.save(credential("a.example", b"u1", 1)).unwrap();
        store.save(credential("a.example", b"u1", 3)).unwrap();
        assert_eq!(store.credential_count(), 1);
        store.save(credential("b.example", b"u1", 4)).unwrap();
        assert_eq!(store.save(credential("c.example", b"u1", 5)), Err(StoreError::Full));
        assert_eq!(store.remaining_capacity(), 0);
        assert!(store.delete(&[4; 16]).unwrap());
        assert!(!store.delete(&[4; 16]).unwrap());
        store.next_signature_counter().unwrap();
        store.reset().unwrap();
        let mut reopened = FileCredentialStore::open(&dir, 2).unwrap();
        assert_eq!(reopened.credential_count(), 0);
        assert_eq!(reopened.next_signature_counter().unwrap(), 2, "reset never rewinds the counter");
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn failed_write_changes_nothing() {
        let dir = temp_dir("readonly");
        let mut store = FileCredentialStore::open(&dir, 10).unwrap();
        store.save(credential("a.example", b"u1", 1)).unwrap();
        // Make the temporary file's place unusable: a directory in its way.
        fs::create_dir(dir.join(".credentials.cbor.tmp")).unwrap();
        assert!(matches!(store.save(credential("a.example", b"u2", 2)), Err(StoreError::Io(_))));
        assert!(store.next_signature_counter().is_err());
        assert_eq!(store.credential_count(), 1);
        fs::remove_dir(dir.join(".credentials.cbor.tmp")).unwrap();
        assert_eq!(store.next_signature_counter().unwrap(), 1);
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn corrupt_or_foreign_files_stop_the_start() {
        let dir = temp_dir("corrupt");
        fs::write(dir.join(CREDENTIALS_FILE), b"\xff\x00garbage").unwrap();
        assert!(matches!(FileCredentialStore::open(&dir, 10), Err(StateError::Corrupt { .. })));
        let mut bytes = Vec::new();
        let future = CredentialFile { version: 99, ..Default::default() };
        ciborium::ser::into_writer(&future, &mut bytes).unwrap();
        fs::write(dir.join(CREDENTIALS_FILE), bytes).unwrap();
        assert!(matches!(FileCredentialStore::open(&dir, 10), Err(StateError::Corrupt { .. })));
        fs::remove_dir_all(dir).unwrap();
    }
}
