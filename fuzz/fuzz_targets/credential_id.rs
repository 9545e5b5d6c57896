//! Credential-ID opening: a credential ID from a client (allow list,
//! exclude list, U2F key handle) goes through `credential::resolve`.
//!
//! Input byte 0 chooses the rp ID hash (bits 0-1) and the mode (bit 7):
//! 0: the rest is a credential ID as a client sends it (forged, truncated,
//!    of another rp): it must be rejected before any key is used;
//! 1: the rest is a payload that the key store seals into an authentic ID
//!    first, so the payload decoder behind the seal (version, flags,
//!    algorithm, key handle, credBlob) sees anything too.
#![no_main]

use std::sync::{Mutex, OnceLock};

use fidoseal_ctap::credential;
use fidoseal_ctap::memory_store::MemoryCredentialStore;
use fidoseal_ctap::platform::{KeyStore, Secret32};
use fidoseal_ctap::software_keystore::SoftwareKeyStore;
use libfuzzer_sys::fuzz_target;

struct Stores {
    keystore: SoftwareKeyStore,
    credentials: MemoryCredentialStore,
}

fn stores() -> &'static Mutex<Stores> {
    static STORES: OnceLock<Mutex<Stores>> = OnceLock::new();
    STORES.get_or_init(|| {
        Mutex::new(Stores {
            keystore: SoftwareKeyStore::new(Secret32([0x5e; 32])),
            credentials: MemoryCredentialStore::new(4),
        })
    })
}

fuzz_target!(|data: &[u8]| {
    let [mode, rest @ ..] = data else { return };
    let mut stores = stores().lock().unwrap_or_else(|e| e.into_inner());
    let Stores { keystore, credentials } = &mut *stores;
    let rp_id_hash = [mode & 0x03; 32];
    if mode & 0x80 == 0 {
        let found = credential::resolve(keystore, credentials, &rp_id_hash, rest);
        // Only IDs the key store sealed open; the fuzzer cannot forge a GCM tag.
        assert!(matches!(found, Ok(None)), "a client's bytes never open as a credential");
        return;
    }
    let Ok(id) = keystore.seal_credential_id(&rp_id_hash, rest) else { return };
    let found = credential::resolve(keystore, credentials, &rp_id_hash, &id).expect("the software store cannot fail");
    if let Some(found) = found {
        assert_eq!(found.credential_id, id);
        assert!(!found.key_handle.is_empty());
    }
    // Bound to its rp: another rp ID hash never opens it.
    let other = [(mode & 0x03) ^ 0x01; 32];
    assert!(matches!(credential::resolve(keystore, credentials, &other, &id), Ok(None)));
});
