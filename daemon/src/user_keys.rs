//! Per-user mode: each user's key material on the machine's one key store.
//!
//! The TPM (or the software master key) is one per machine; what makes a
//! user's credentials theirs is a secret context of their own, 32 random
//! bytes in `users/<uid>/key-context` (0600, root). It enters every
//! credential ID's sealing as associated data (the relying party's hash is
//! replaced by a hash of uid, context and rp ID hash) and every derived
//! secret's input (hmac-secret, the PIN verifier, large-blob keys). So a
//! credential ID made on A's device fails authentication on B's, and B's
//! derived secrets have nothing to do with A's. authenticatorReset draws a
//! new context for that user alone: the machine's key store, and every
//! other user's credentials, are untouched.
//!
//! The user who inherits a single-user state directory (migrate_users.rs)
//! keeps the store's own sealing ("legacy"): their credential IDs and PIN
//! were made with it, and stay valid. Their first reset moves them to a
//! context of their own. A legacy user and a context user are as separate
//! as two context users: their associated data never coincide except by a
//! SHA-256 collision.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use fidoseal_ctap::platform::{Algorithm, CreatedKey, KeyStore, KeyStoreError, PinCheck, Secret32};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::keystore::KeyStoreSetupError;
use crate::state::write_atomically;

/// The machine's key store, shared by every user's authenticator (and the
/// TPM's one connection serialises them anyway).
pub type SharedKeyStore = Arc<Mutex<Box<dyn KeyStore>>>;

pub const KEY_CONTEXT_FILE: &str = "key-context";
const HEADER: &str = "fidoseal key context v1\n";
const LEGACY: &str = "legacy\n";
const CREDENTIAL_ID_LABEL: &[u8] = b"fidoseal per-user credential id v1\0";
const DERIVE_LABEL: &[u8] = b"fidoseal per-user secret v1\0";

enum Context {
    /// The key store's own sealing: the user who inherited a single-user state.
    Legacy,
    Own(Zeroizing<[u8; 32]>),
}

/// A user's view of the shared key store.
pub struct UserKeyStore {
    inner: SharedKeyStore,
    uid: u32,
    context: Context,
    path: PathBuf,
    created: bool,
}

impl UserKeyStore {
    /// Opens the context of `user_dir` (creating one on a user's first
    /// device). A damaged file stops: every credential depends on it.
    pub fn open(inner: SharedKeyStore, user_dir: &Path, uid: u32) -> Result<Self, KeyStoreSetupError> {
        let path = user_dir.join(KEY_CONTEXT_FILE);
        let (context, created) = match std::fs::read(&path) {
            Ok(bytes) => {
                let bytes = Zeroizing::new(bytes);
                (parse(&bytes).ok_or(KeyStoreSetupError::Damaged { path: path.clone(), len: bytes.len() })?, false)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let context = new_context()?;
                write_context(&path, &context)
                    .map_err(|source| KeyStoreSetupError::Write { path: path.clone(), source })?;
                (context, true)
            }
            Err(source) => return Err(KeyStoreSetupError::Read { path, source }),
        };
        Ok(Self { inner, uid, context, path, created })
    }

    /// Marks `user_dir`'s user as the heir of a single-user state (migration).
    pub fn write_legacy(user_dir: &Path) -> std::io::Result<()> {
        write_context(&user_dir.join(KEY_CONTEXT_FILE), &Context::Legacy)
    }

    /// This open made the context (the user had none).
    pub fn just_created(&self) -> bool {
        self.created
    }

    pub fn is_legacy(&self) -> bool {
        matches!(self.context, Context::Legacy)
    }

    fn lock(&self) -> MutexGuard<'_, Box<dyn KeyStore>> {
        // A key store changes its memory only after its operation succeeded.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// What the shared store seals a credential ID to, for this user.
    fn bound_rp(&self, rp_id_hash: &[u8; 32]) -> [u8; 32] {
        match &self.context {
            Context::Legacy => *rp_id_hash,
            Context::Own(secret) => {
                let mut hash = Sha256::new();
                hash.update(CREDENTIAL_ID_LABEL);
                hash.update(self.uid.to_be_bytes());
                hash.update(secret.as_slice());
                hash.update(rp_id_hash);
                hash.finalize().into()
            }
        }
    }

    fn bound_context(&self, context: &[u8]) -> Zeroizing<Vec<u8>> {
        match &self.context {
            Context::Legacy => Zeroizing::new(context.to_vec()),
            Context::Own(secret) => {
                let mut input = Zeroizing::new(Vec::with_capacity(DERIVE_LABEL.len() + 36 + context.len()));
                input.extend_from_slice(DERIVE_LABEL);
                input.extend_from_slice(&self.uid.to_be_bytes());
                input.extend_from_slice(secret.as_slice());
                input.extend_from_slice(context);
                input
            }
        }
    }
}

fn new_context() -> Result<Context, KeyStoreError> {
    let mut secret = Zeroizing::new([0u8; 32]);
    getrandom::fill(secret.as_mut_slice()).map_err(|e| KeyStoreError::Backend(format!("no randomness: {e}")))?;
    Ok(Context::Own(secret))
}

fn write_context(path: &Path, context: &Context) -> std::io::Result<()> {
    let text = Zeroizing::new(match context {
        Context::Legacy => format!("{HEADER}{LEGACY}"),
        Context::Own(secret) => format!("{HEADER}own {}\n", hex::encode(secret.as_slice())),
    });
    write_atomically(path, text.as_bytes())
}

fn parse(bytes: &[u8]) -> Option<Context> {
    let text = std::str::from_utf8(bytes).ok()?;
    let body = text.strip_prefix(HEADER)?;
    if body == LEGACY {
        return Some(Context::Legacy);
    }
    let own = body.strip_prefix("own ")?.strip_suffix('\n')?;
    let bytes = Zeroizing::new(hex::decode(own).ok()?);
    let secret: [u8; 32] = bytes.as_slice().try_into().ok()?;
    Some(Context::Own(Zeroizing::new(secret)))
}

impl KeyStore for UserKeyStore {
    fn name(&self) -> &'static str {
        self.lock().name()
    }

    fn algorithms(&self) -> Vec<Algorithm> {
        self.lock().algorithms()
    }

    fn generate(&mut self, algorithm: Algorithm) -> Result<CreatedKey, KeyStoreError> {
        self.lock().generate(algorithm)
    }

    /// Key handles reach this only from the user's own store or from a
    /// credential ID opened with the user's context.
    fn sign(&mut self, algorithm: Algorithm, key_handle: &[u8], message: &[u8]) -> Result<Vec<u8>, KeyStoreError> {
        self.lock().sign(algorithm, key_handle, message)
    }

    fn seal_credential_id(&mut self, rp_id_hash: &[u8; 32], payload: &[u8]) -> Result<Vec<u8>, KeyStoreError> {
        let bound = self.bound_rp(rp_id_hash);
        self.lock().seal_credential_id(&bound, payload)
    }

    fn open_credential_id(&mut self, rp_id_hash: &[u8; 32], credential_id: &[u8]) -> Result<Vec<u8>, KeyStoreError> {
        let bound = self.bound_rp(rp_id_hash);
        self.lock().open_credential_id(&bound, credential_id)
    }

    fn derive_secret(&mut self, context: &[u8]) -> Result<Secret32, KeyStoreError> {
        let bound = self.bound_context(context);
        self.lock().derive_secret(&bound)
    }

    /// A PIN object is the user's own by its blob, kept in the user's
    /// state; the PIN hash is its authorization value as it is.
    fn create_pin_object(&mut self, pin_hash: &[u8; 16]) -> Result<Option<Vec<u8>>, KeyStoreError> {
        self.lock().create_pin_object(pin_hash)
    }

    fn check_pin_object(&mut self, object: &[u8], pin_hash: &[u8; 16]) -> Result<PinCheck, KeyStoreError> {
        self.lock().check_pin_object(object, pin_hash)
    }

    /// The machine's one attestation key, the same for every user.
    fn machine_attestation_certificate(&mut self) -> Result<Vec<u8>, KeyStoreError> {
        self.lock().machine_attestation_certificate()
    }

    fn sign_machine_attestation(&mut self, message: &[u8]) -> Result<Vec<u8>, KeyStoreError> {
        self.lock().sign_machine_attestation(message)
    }

    /// This user's reset: a new context, on disk before it is used. The
    /// machine's key store is not reset: it holds every other user's keys.
    fn reset(&mut self) -> Result<(), KeyStoreError> {
        let context = new_context()?;
        write_context(&self.path, &context)
            .map_err(|e| KeyStoreError::Backend(format!("cannot write {}: {e}", self.path.display())))?;
        self.context = context;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::prepare_state_dir;
    use fidoseal_ctap::software_keystore::SoftwareKeyStore;

    fn temp(name: &str) -> tempfile::TempDir {
        let dir = tempfile::Builder::new().prefix(&format!("fidoseal-user-keys-{name}-")).tempdir().unwrap();
        prepare_state_dir(&dir.path().join("a")).unwrap();
        prepare_state_dir(&dir.path().join("b")).unwrap();
        dir
    }

    fn shared() -> SharedKeyStore {
        Arc::new(Mutex::new(Box::new(SoftwareKeyStore::new(Secret32([9; 32])))))
    }

    #[test]
    fn one_users_credential_ids_and_secrets_are_not_anothers() {
        let temp_dir = temp("separate");
        let dir = temp_dir.path();
        let store = shared();
        let mut a = UserKeyStore::open(Arc::clone(&store), &dir.join("a"), 1001).unwrap();
        let mut b = UserKeyStore::open(Arc::clone(&store), &dir.join("b"), 1002).unwrap();
        assert!(a.just_created() && !a.is_legacy());
        let rp = [5u8; 32];
        let id = a.seal_credential_id(&rp, b"alice's key").unwrap();
        assert_eq!(a.open_credential_id(&rp, &id).unwrap(), b"alice's key");
        assert_eq!(b.open_credential_id(&rp, &id), Err(KeyStoreError::NotAuthentic), "A's ID on B's device");
        assert_eq!(store.lock().unwrap().open_credential_id(&rp, &id), Err(KeyStoreError::NotAuthentic), "nor bare");
        assert_ne!(a.derive_secret(b"pin").unwrap().0, b.derive_secret(b"pin").unwrap().0);
        // The same context file under another uid is another user.
        std::fs::copy(dir.join("a").join(KEY_CONTEXT_FILE), dir.join("b").join(KEY_CONTEXT_FILE)).unwrap();
        let mut copied = UserKeyStore::open(Arc::clone(&store), &dir.join("b"), 1002).unwrap();
        assert_eq!(copied.open_credential_id(&rp, &id), Err(KeyStoreError::NotAuthentic));
        // Reopened: the same user again.
        let mut again = UserKeyStore::open(Arc::clone(&store), &dir.join("a"), 1001).unwrap();
        assert!(!again.just_created());
        assert_eq!(again.open_credential_id(&rp, &id).unwrap(), b"alice's key");
    }

    #[test]
    fn a_users_reset_leaves_the_others_and_the_machine_alone() {
        let temp_dir = temp("reset");
        let dir = temp_dir.path();
        let store = shared();
        let mut a = UserKeyStore::open(Arc::clone(&store), &dir.join("a"), 1001).unwrap();
        let mut b = UserKeyStore::open(Arc::clone(&store), &dir.join("b"), 1002).unwrap();
        let rp = [6u8; 32];
        let a_id = a.seal_credential_id(&rp, b"a").unwrap();
        let b_id = b.seal_credential_id(&rp, b"b").unwrap();
        let bare = store.lock().unwrap().seal_credential_id(&rp, b"bare").unwrap();
        a.reset().unwrap();
        assert_eq!(a.open_credential_id(&rp, &a_id), Err(KeyStoreError::NotAuthentic));
        assert_eq!(b.open_credential_id(&rp, &b_id).unwrap(), b"b");
        assert_eq!(store.lock().unwrap().open_credential_id(&rp, &bare).unwrap(), b"bare");
        let mut reopened = UserKeyStore::open(Arc::clone(&store), &dir.join("a"), 1001).unwrap();
        assert_eq!(
            reopened.open_credential_id(&rp, &a_id),
            Err(KeyStoreError::NotAuthentic),
            "the new context is on disk"
        );
    }

    #[test]
    fn the_legacy_user_keeps_the_stores_sealing_until_a_reset() {
        let temp_dir = temp("legacy");
        let dir = temp_dir.path();
        let store = shared();
        let rp = [7u8; 32];
        let old_id = store.lock().unwrap().seal_credential_id(&rp, b"from before").unwrap();
        let old_pin_secret = store.lock().unwrap().derive_secret(b"pin").unwrap().0;
        UserKeyStore::write_legacy(&dir.join("a")).unwrap();
        let mut heir = UserKeyStore::open(Arc::clone(&store), &dir.join("a"), 1001).unwrap();
        let mut other = UserKeyStore::open(Arc::clone(&store), &dir.join("b"), 1002).unwrap();
        assert!(heir.is_legacy() && !heir.just_created());
        assert_eq!(heir.open_credential_id(&rp, &old_id).unwrap(), b"from before");
        assert_eq!(heir.derive_secret(b"pin").unwrap().0, old_pin_secret);
        assert_eq!(other.open_credential_id(&rp, &old_id), Err(KeyStoreError::NotAuthentic));
        let other_id = other.seal_credential_id(&rp, b"b").unwrap();
        assert_eq!(heir.open_credential_id(&rp, &other_id), Err(KeyStoreError::NotAuthentic));
        heir.reset().unwrap();
        assert!(!heir.is_legacy());
        assert_eq!(heir.open_credential_id(&rp, &old_id), Err(KeyStoreError::NotAuthentic));
    }

    #[test]
    fn a_damaged_context_stops_and_is_kept() {
        let temp_dir = temp("damaged");
        let dir = temp_dir.path();
        let path = dir.join("a").join(KEY_CONTEXT_FILE);
        for damaged in [&b"junk"[..], b"fidoseal key context v1\nown 00\n", b"fidoseal key context v1\n", b""] {
            std::fs::write(&path, damaged).unwrap();
            assert!(matches!(UserKeyStore::open(shared(), &dir.join("a"), 1), Err(KeyStoreSetupError::Damaged { .. })));
            assert_eq!(std::fs::read(&path).unwrap(), damaged, "never replaced");
        }
    }
}
