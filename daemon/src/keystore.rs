//! Key stores as the daemon runs them. The software store's master secret
//! lives in the state directory; it is used only when the configuration
//! says so, and the daemon says so loudly at start.

use std::path::{Path, PathBuf};

use fidoseal_ctap::authenticator::FIDOSEAL_AAGUID;
use fidoseal_ctap::machine_attestation::SoftwareAttestationKey;
use fidoseal_ctap::platform::{Algorithm, CreatedKey, KeyStore, KeyStoreError, Secret32};
use fidoseal_ctap::software_keystore::SoftwareKeyStore;
use zeroize::Zeroizing;

use crate::state::{write_atomically, KeyStoreBinding};

const MASTER_SECRET_FILE: &str = "software-master-key";

#[derive(Debug, thiserror::Error)]
pub enum KeyStoreSetupError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error(
        "{path} is not a 32-byte key file ({len} bytes); refusing to replace it, since every credential depends on it"
    )]
    Damaged { path: PathBuf, len: usize },
    #[error("{0}")]
    KeyStore(#[from] KeyStoreError),
}

/// The software key store with its master secret kept in a file.
pub struct PersistentSoftwareKeyStore {
    inner: SoftwareKeyStore,
    path: PathBuf,
    /// `machine-attestation-software`, loaded (or made) on first use.
    machine_key_path: PathBuf,
    machine_key: Option<SoftwareAttestationKey>,
    /// The master secret was made by this start (there was none).
    created: bool,
}

/// What ties a credential state to `store` (state.rs, bind_key_store): a
/// PRF output for a context used for nothing else, cut to 16 bytes. It
/// tells key stores apart and reveals nothing of their other outputs.
pub fn binding(store: &mut dyn KeyStore) -> Result<KeyStoreBinding, KeyStoreError> {
    let derived = store.derive_secret(b"fidoseal key store binding v1")?;
    Ok(KeyStoreBinding { name: store.name().to_owned(), fingerprint: derived.0[..16].to_vec() })
}

impl PersistentSoftwareKeyStore {
    /// Loads the master secret from the state directory, creating it on first start.
    pub fn open(state_dir: &Path) -> Result<Self, KeyStoreSetupError> {
        let path = state_dir.join(MASTER_SECRET_FILE);
        let mut created = false;
        let secret = match std::fs::read(&path) {
            Ok(bytes) => {
                let bytes = Zeroizing::new(bytes);
                let Ok(secret) = <[u8; 32]>::try_from(bytes.as_slice()) else {
                    return Err(KeyStoreSetupError::Damaged { path, len: bytes.len() });
                };
                Secret32(secret)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let secret = SoftwareKeyStore::generate_master_secret()?;
                write_atomically(&path, &secret.0)
                    .map_err(|source| KeyStoreSetupError::Write { path: path.clone(), source })?;
                tracing::info!(path = %path.display(), "created a new software master key");
                created = true;
                secret
            }
            Err(source) => return Err(KeyStoreSetupError::Read { path, source }),
        };
        let machine_key_path = crate::machine_key::path(state_dir, "software");
        Ok(Self { inner: SoftwareKeyStore::new(secret), path, machine_key_path, machine_key: None, created })
    }

    /// The machine attestation key: read from its file, or made and written
    /// there (before it is used) when there is none. A damaged file is an
    /// error, never silently replaced.
    fn machine_key(&mut self) -> Result<&SoftwareAttestationKey, KeyStoreError> {
        if self.machine_key.is_none() {
            let key = match crate::machine_key::load(&self.machine_key_path)? {
                Some(stored) => SoftwareAttestationKey::from_parts(&stored.key, stored.certificate, &FIDOSEAL_AAGUID)
                    .map_err(|e| crate::machine_key::damaged(&self.machine_key_path, &e.to_string()))?,
                None => {
                    let key = SoftwareAttestationKey::generate(&FIDOSEAL_AAGUID)?;
                    let stored = crate::machine_key::StoredMachineKey {
                        key: key.secret_bytes(),
                        certificate: key.certificate().to_vec(),
                    };
                    crate::machine_key::save(&self.machine_key_path, &stored)?;
                    tracing::info!(path = %self.machine_key_path.display(), "created the machine attestation key");
                    key
                }
            };
            self.machine_key = Some(key);
        }
        self.machine_key.as_ref().ok_or_else(|| KeyStoreError::MachineAttestation("no machine attestation key".into()))
    }

    /// This start made the master secret (none was there).
    pub fn just_created(&self) -> bool {
        self.created
    }
}

impl KeyStore for PersistentSoftwareKeyStore {
    fn name(&self) -> &'static str {
        self.inner.name()
    }

    fn algorithms(&self) -> Vec<Algorithm> {
        self.inner.algorithms()
    }

    fn generate(&mut self, algorithm: Algorithm) -> Result<CreatedKey, KeyStoreError> {
        self.inner.generate(algorithm)
    }

    fn sign(&mut self, algorithm: Algorithm, key_handle: &[u8], message: &[u8]) -> Result<Vec<u8>, KeyStoreError> {
        self.inner.sign(algorithm, key_handle, message)
    }

    fn seal_credential_id(&mut self, rp_id_hash: &[u8; 32], payload: &[u8]) -> Result<Vec<u8>, KeyStoreError> {
        self.inner.seal_credential_id(rp_id_hash, payload)
    }

    fn open_credential_id(&mut self, rp_id_hash: &[u8; 32], credential_id: &[u8]) -> Result<Vec<u8>, KeyStoreError> {
        self.inner.open_credential_id(rp_id_hash, credential_id)
    }

    fn create_pin_object(&mut self, pin_hash: &[u8; 16]) -> Result<Option<Vec<u8>>, KeyStoreError> {
        self.inner.create_pin_object(pin_hash)
    }
    fn check_pin_object(
        &mut self,
        object: &[u8],
        pin_hash: &[u8; 16],
    ) -> Result<fidoseal_ctap::platform::PinCheck, KeyStoreError> {
        self.inner.check_pin_object(object, pin_hash)
    }
    fn derive_secret(&mut self, context: &[u8]) -> Result<Secret32, KeyStoreError> {
        self.inner.derive_secret(context)
    }

    /// The new secret is on disk before it is used, so a crash leaves
    /// either the old key store or the new one, never a mix.
    fn reset(&mut self) -> Result<(), KeyStoreError> {
        let secret = SoftwareKeyStore::generate_master_secret()?;
        write_atomically(&self.path, &secret.0)
            .map_err(|e| KeyStoreError::Backend(format!("cannot write {}: {e}", self.path.display())))?;
        self.inner = SoftwareKeyStore::new(secret);
        Ok(())
    }

    fn machine_attestation_certificate(&mut self) -> Result<Vec<u8>, KeyStoreError> {
        Ok(self.machine_key()?.certificate().to_vec())
    }

    fn sign_machine_attestation(&mut self, message: &[u8]) -> Result<Vec<u8>, KeyStoreError> {
        Ok(self.machine_key()?.sign(message))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::prepare_state_dir;

    #[test]
    fn the_binding_tells_key_stores_apart() {
        let dir = std::env::temp_dir().join(format!("fidoseal-ks-binding-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        prepare_state_dir(&dir).unwrap();
        let mut first = PersistentSoftwareKeyStore::open(&dir).unwrap();
        assert!(first.just_created());
        let bound = binding(&mut first).unwrap();
        assert_eq!((bound.name.as_str(), bound.fingerprint.len()), ("software", 16));
        let mut reopened = PersistentSoftwareKeyStore::open(&dir).unwrap();
        assert!(!reopened.just_created());
        assert_eq!(binding(&mut reopened).unwrap(), bound, "the same store, the same binding");
        reopened.reset().unwrap();
        assert_ne!(binding(&mut reopened).unwrap(), bound, "a new master secret is another store");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn master_secret_persists_and_reset_replaces_it() {
        let dir = std::env::temp_dir().join(format!("fidoseal-ks-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        prepare_state_dir(&dir).unwrap();
        let rp = [3u8; 32];
        let mut store = PersistentSoftwareKeyStore::open(&dir).unwrap();
        let id = store.seal_credential_id(&rp, b"p").unwrap();
        let mut again = PersistentSoftwareKeyStore::open(&dir).unwrap();
        assert_eq!(again.open_credential_id(&rp, &id).unwrap(), b"p");
        again.reset().unwrap();
        let mut after_reset = PersistentSoftwareKeyStore::open(&dir).unwrap();
        assert_eq!(after_reset.open_credential_id(&rp, &id), Err(KeyStoreError::NotAuthentic));
        std::fs::write(dir.join(MASTER_SECRET_FILE), b"short").unwrap();
        assert!(matches!(PersistentSoftwareKeyStore::open(&dir), Err(KeyStoreSetupError::Damaged { len: 5, .. })));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn the_machine_key_is_written_once_kept_by_reset_and_a_damaged_file_is_an_error() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("fidoseal-ks-machine-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        prepare_state_dir(&dir).unwrap();
        let file = dir.join("machine-attestation-software");
        let mut store = PersistentSoftwareKeyStore::open(&dir).unwrap();
        assert!(!file.exists(), "made on first use only");
        let certificate = store.machine_attestation_certificate().unwrap();
        assert_eq!(std::fs::metadata(&file).unwrap().permissions().mode() & 0o777, 0o600);
        let signature = store.sign_machine_attestation(b"m").unwrap();
        store.reset().unwrap();
        assert_eq!(store.machine_attestation_certificate().unwrap(), certificate, "reset keeps it");
        let mut reopened = PersistentSoftwareKeyStore::open(&dir).unwrap();
        assert_eq!(reopened.machine_attestation_certificate().unwrap(), certificate, "kept across restarts");
        // ECDSA by RFC 6979: the same key signs the same message the same way.
        assert_eq!(reopened.sign_machine_attestation(b"m").unwrap(), signature);

        // Another store's certificate beside this key: refused, not used.
        let other = dir.join("other");
        prepare_state_dir(&other).unwrap();
        let other_certificate =
            PersistentSoftwareKeyStore::open(&other).unwrap().machine_attestation_certificate().unwrap();
        let mut stored = crate::machine_key::load(&file).unwrap().unwrap();
        stored.certificate = other_certificate;
        crate::machine_key::save(&file, &stored).unwrap();
        for damage in [None, Some(&b"not cbor"[..]), Some(&[0xa0][..])] {
            if let Some(bytes) = damage {
                std::fs::write(&file, bytes).unwrap();
            }
            let before = std::fs::read(&file).unwrap();
            let mut damaged = PersistentSoftwareKeyStore::open(&dir).unwrap();
            match damaged.machine_attestation_certificate() {
                Err(KeyStoreError::MachineAttestation(message)) => {
                    assert!(message.contains("machine-attestation-software"), "{message}")
                }
                other => panic!("expected a machine attestation error, got {other:?}"),
            }
            assert!(damaged.sign_machine_attestation(b"m").is_err());
            assert_eq!(std::fs::read(&file).unwrap(), before, "never replaced silently");
        }
        std::fs::remove_dir_all(dir).unwrap();
    }
}
