//! The machine attestation key's file in the state directory (docs/policy.md,
//! "Machine attestation"): the key as its store keeps it (the software
//! store's private scalar, or the TPM store's TPM-wrapped blob) and its
//! self-signed certificate, one CBOR map, 0600, written atomically. One per
//! machine: in per-user mode every user's key store shares the machine's
//! store, and so this key. authenticatorReset leaves it alone.

use std::path::{Path, PathBuf};

use ciborium::value::Value;
use fidoseal_ctap::platform::KeyStoreError;
use zeroize::Zeroizing;

use crate::state::write_atomically;

const VERSION: u64 = 1;

/// A stored machine attestation key: `key` in its store's own form.
pub struct StoredMachineKey {
    pub key: Zeroizing<Vec<u8>>,
    pub certificate: Vec<u8>,
}

/// Reads `path`; `Ok(None)` when there is no such file (the key is made on
/// first use), an error naming the file when it cannot be read or decoded.
pub fn load(path: &Path) -> Result<Option<StoredMachineKey>, KeyStoreError> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => Zeroizing::new(bytes),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(damaged(path, &format!("cannot read it: {e}"))),
    };
    let value: Value =
        ciborium::de::from_reader(bytes.as_slice()).map_err(|_| damaged(path, "it is not a CBOR map"))?;
    let Value::Map(entries) = value else { return Err(damaged(path, "it is not a CBOR map")) };
    let field = |name: &str| entries.iter().find(|(k, _)| k.as_text() == Some(name)).map(|(_, v)| v);
    if field("version").and_then(Value::as_integer) != Some(VERSION.into()) {
        return Err(damaged(path, "unknown version"));
    }
    let bytes_of =
        |name: &str| field(name).and_then(Value::as_bytes).cloned().ok_or_else(|| damaged(path, &format!("no {name}")));
    Ok(Some(StoredMachineKey { key: Zeroizing::new(bytes_of("key")?), certificate: bytes_of("certificate")? }))
}

/// Writes `stored` to `path` atomically (0600).
pub fn save(path: &Path, stored: &StoredMachineKey) -> Result<(), KeyStoreError> {
    let value = Value::Map(vec![
        (Value::Text("version".into()), Value::Integer(VERSION.into())),
        (Value::Text("key".into()), Value::Bytes(stored.key.to_vec())),
        (Value::Text("certificate".into()), Value::Bytes(stored.certificate.clone())),
    ]);
    let mut encoded = Zeroizing::new(Vec::new());
    ciborium::ser::into_writer(&value, &mut *encoded)
        .map_err(|e| KeyStoreError::MachineAttestation(format!("cannot encode the machine attestation key: {e}")))?;
    // The key's bytes were copied into `value`: wipe them too.
    if let Value::Map(mut entries) = value {
        if let Some((_, Value::Bytes(key))) = entries.get_mut(1) {
            zeroize::Zeroize::zeroize(key);
        }
    }
    write_atomically(path, &encoded)
        .map_err(|e| KeyStoreError::MachineAttestation(format!("cannot write {}: {e}", path.display())))
}

pub fn damaged(path: &Path, reason: &str) -> KeyStoreError {
    KeyStoreError::MachineAttestation(format!(
        "{} is damaged ({reason}); move it aside to make a new machine attestation key \
         (relying parties that pinned the old certificate will see a new one)",
        path.display()
    ))
}

/// The file of the `store`'s machine attestation key in `state_dir`.
pub fn path(state_dir: &Path, store: &str) -> PathBuf {
    state_dir.join(format!("machine-attestation-{store}"))
}
