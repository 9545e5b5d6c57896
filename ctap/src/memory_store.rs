//! A credential store in memory, for in-process tests, fuzzing and
//! benchmarks. The daemon's store (files in the state directory) follows
//! the same rules; [`apply_save`] is shared so both replace and count alike.

use crate::platform::{AuthenticatorState, CredentialStore, ResidentCredential, StoreError};

/// Inserts `credential` into `credentials` as [`CredentialStore::save`]
/// defines it: same rp ID and user ID replaces, otherwise it needs room.
pub fn apply_save(
    credentials: &mut Vec<ResidentCredential>,
    credential: ResidentCredential,
    capacity: usize,
) -> Result<(), StoreError> {
    if let Some(existing) = credentials
        .iter_mut()
        .find(|c| c.rp_id == credential.rp_id && c.user_id == credential.user_id)
    {
        *existing = credential;
        return Ok(());
    }
    if credentials.len() >= capacity {
        return Err(StoreError::Full);
    }
    credentials.push(credential);
    Ok(())
}

pub struct MemoryCredentialStore {
    credentials: Vec<ResidentCredential>,
    capacity: usize,
    signature_counter: u32,
    state: AuthenticatorState,
}

impl MemoryCredentialStore {
    pub fn new(capacity: usize) -> Self {
        Self { credentials: Vec::new(), capacity, signature_counter: 0, state: AuthenticatorState::default() }
    }
}

impl CredentialStore for MemoryCredentialStore {
    fn credentials_for_rp(&self, rp_id: &str) -> Result<Vec<ResidentCredential>, StoreError> {
        Ok(self.credentials.iter().filter(|c| c.rp_id == rp_id).cloned().collect())
    }

    fn all_credentials(&self) -> Result<Vec<ResidentCredential>, StoreError> {
        Ok(self.credentials.clone())
    }

    fn find(&self, credential_id: &[u8]) -> Result<Option<ResidentCredential>, StoreError> {
        Ok(self.credentials.iter().find(|c| c.credential_id == credential_id).cloned())
    }

    fn save(&mut self, credential: ResidentCredential) -> Result<(), StoreError> {
        apply_save(&mut self.credentials, credential, self.capacity)
    }

    fn delete(&mut self, credential_id: &[u8]) -> Result<bool, StoreError> {
        let before = self.credentials.len();
        self.credentials.retain(|c| c.credential_id != credential_id);
        Ok(self.credentials.len() != before)
    }

    fn remaining_capacity(&self) -> usize {
        self.capacity.saturating_sub(self.credentials.len())
    }

    fn next_signature_counter(&mut self) -> Result<u32, StoreError> {
        self.signature_counter = self.signature_counter.wrapping_add(1);
        Ok(self.signature_counter)
    }

    fn load_state(&self) -> AuthenticatorState {
        self.state.clone()
    }

    fn save_state(&mut self, state: &AuthenticatorState) -> Result<(), StoreError> {
        self.state = state.clone();
        Ok(())
    }

    fn reset(&mut self) -> Result<(), StoreError> {
        self.credentials.clear();
        self.state = AuthenticatorState::default();
        Ok(())
    }
}
