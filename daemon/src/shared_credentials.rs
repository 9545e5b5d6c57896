//! One credential store, two users: the authenticator (through the
//! [`CredentialStore`] trait, on its worker thread) and the D-Bus management
//! interface (list, show, delete passkeys; read the PIN and uv state for
//! Status and for the prompt).
//!
//! Why a shared handle rather than going through the authenticator: the
//! authenticator's own lock is held for a whole CTAP request, prompt
//! included (up to the prompt timeout), so `fidosealctl list` would hang
//! behind a browser waiting for a touch. This lock is held only for one
//! store call (at most one database transaction). Each trait method locks on
//! its own, so the authenticator sees every change as if it had happened
//! between two of its calls.

use std::sync::{Arc, Mutex, MutexGuard};

use fidoseal_ctap::platform::{AuthenticatorState, CredentialStore, RelyingParty, ResidentCredential, StoreError};

/// A cloneable handle on one credential store.
#[derive(Clone)]
pub struct SharedCredentialStore {
    inner: Arc<Mutex<Box<dyn CredentialStore>>>,
}

impl SharedCredentialStore {
    pub fn new(store: impl CredentialStore + 'static) -> Self {
        Self { inner: Arc::new(Mutex::new(Box::new(store))) }
    }

    fn lock(&self) -> MutexGuard<'_, Box<dyn CredentialStore>> {
        // The store changes memory only after its commit succeeded
        // (fidoseal-store), so a panic elsewhere leaves it consistent.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl CredentialStore for SharedCredentialStore {
    fn credentials_for_rp(&self, rp_id_hash: &[u8; 32]) -> Result<Vec<ResidentCredential>, StoreError> {
        self.lock().credentials_for_rp(rp_id_hash)
    }

    fn relying_parties(&self) -> Result<Vec<RelyingParty>, StoreError> {
        self.lock().relying_parties()
    }

    fn credential_count(&self) -> usize {
        self.lock().credential_count()
    }

    fn next_creation_order(&self) -> u64 {
        self.lock().next_creation_order()
    }

    fn initial_signature_counter(&self) -> u32 {
        self.lock().initial_signature_counter()
    }

    fn all_credentials(&self) -> Result<Vec<ResidentCredential>, StoreError> {
        self.lock().all_credentials()
    }

    fn find(&self, credential_id: &[u8]) -> Result<Option<ResidentCredential>, StoreError> {
        self.lock().find(credential_id)
    }

    fn save(&mut self, credential: ResidentCredential) -> Result<(), StoreError> {
        self.lock().save(credential)
    }

    fn delete(&mut self, credential_id: &[u8]) -> Result<bool, StoreError> {
        self.lock().delete(credential_id)
    }

    fn remaining_capacity(&self) -> usize {
        self.lock().remaining_capacity()
    }

    fn next_signature_counter(&mut self, credential_id: &[u8]) -> Result<u32, StoreError> {
        self.lock().next_signature_counter(credential_id)
    }

    fn load_state(&self) -> AuthenticatorState {
        self.lock().load_state()
    }

    fn save_state(&mut self, state: &AuthenticatorState) -> Result<(), StoreError> {
        self.lock().save_state(state)
    }

    fn reset(&mut self) -> Result<(), StoreError> {
        self.lock().reset()
    }
}

#[cfg(test)]
mod tests {
    use fidoseal_ctap::memory_store::MemoryCredentialStore;
    use fidoseal_ctap::platform::Algorithm;

    use super::*;

    #[test]
    fn clones_see_each_others_changes() {
        let mut a = SharedCredentialStore::new(MemoryCredentialStore::new(4));
        let mut b = a.clone();
        let credential = ResidentCredential {
            credential_id: vec![1; 16],
            rp_id: "example.com".into(),
            rp_name: None,
            user_id: vec![7],
            user_name: Some("alice".into()),
            user_display_name: None,
            algorithm: Algorithm::Es256,
            key_handle: vec![2; 8],
            created: 1,
            public_key_cose: Vec::new(),
            extensions: Default::default(),
        };
        a.save(credential).unwrap();
        assert_eq!(b.all_credentials().unwrap().len(), 1);
        assert_eq!(b.remaining_capacity(), 3);
        assert!(b.delete(&[1; 16]).unwrap());
        assert!(a.all_credentials().unwrap().is_empty());
        assert_eq!(a.next_signature_counter(b"id").unwrap(), b.next_signature_counter(b"id").unwrap() - 1);
    }
}
