//! A credential store in memory, for in-process tests, fuzzing and
//! benchmarks. The daemon's store (an SQLite database in the state
//! directory, crate `fidoseal-store`) follows the same rules: same rp ID and
//! user ID replaces, per-credential counters above a floor that reset raises.

use std::collections::HashMap;

use crate::auth_data::rp_id_hash;
use crate::platform::{AuthenticatorState, CredentialStore, RelyingParty, ResidentCredential, StoreError};

pub struct MemoryCredentialStore {
    credentials: Vec<ResidentCredential>,
    capacity: usize,
    counters: HashMap<Vec<u8>, u32>,
    counter_floor: u32,
    state: AuthenticatorState,
}

impl MemoryCredentialStore {
    pub fn new(capacity: usize) -> Self {
        Self {
            credentials: Vec::new(),
            capacity,
            counters: HashMap::new(),
            counter_floor: 0,
            state: AuthenticatorState::default(),
        }
    }
}

impl CredentialStore for MemoryCredentialStore {
    fn credentials_for_rp(&self, rp_id_hash_wanted: &[u8; 32]) -> Result<Vec<ResidentCredential>, StoreError> {
        Ok(self.credentials.iter().filter(|c| &rp_id_hash(&c.rp_id) == rp_id_hash_wanted).cloned().collect())
    }

    fn all_credentials(&self) -> Result<Vec<ResidentCredential>, StoreError> {
        Ok(self.credentials.clone())
    }

    fn relying_parties(&self) -> Result<Vec<RelyingParty>, StoreError> {
        let mut rps: Vec<RelyingParty> = Vec::new();
        for c in &self.credentials {
            match rps.iter_mut().find(|r| r.rp_id == c.rp_id) {
                Some(rp) => rp.credentials += 1,
                None => rps.push(RelyingParty { rp_id: c.rp_id.clone(), rp_name: c.rp_name.clone(), credentials: 1 }),
            }
        }
        Ok(rps)
    }

    fn find(&self, credential_id: &[u8]) -> Result<Option<ResidentCredential>, StoreError> {
        Ok(self.credentials.iter().find(|c| c.credential_id == credential_id).cloned())
    }

    fn save(&mut self, credential: ResidentCredential) -> Result<(), StoreError> {
        if let Some(existing) =
            self.credentials.iter_mut().find(|c| c.rp_id == credential.rp_id && c.user_id == credential.user_id)
        {
            if existing.credential_id != credential.credential_id {
                self.counters.remove(&existing.credential_id);
            }
            *existing = credential;
            return Ok(());
        }
        if self.credentials.len() >= self.capacity {
            return Err(StoreError::Full);
        }
        self.credentials.push(credential);
        Ok(())
    }

    fn delete(&mut self, credential_id: &[u8]) -> Result<bool, StoreError> {
        let before = self.credentials.len();
        self.credentials.retain(|c| c.credential_id != credential_id);
        self.counters.remove(credential_id);
        Ok(self.credentials.len() != before)
    }

    fn credential_count(&self) -> usize {
        self.credentials.len()
    }

    fn remaining_capacity(&self) -> usize {
        self.capacity.saturating_sub(self.credentials.len())
    }

    fn next_creation_order(&self) -> u64 {
        self.credentials.iter().map(|c| c.created).max().map_or(1, |newest| newest.saturating_add(1))
    }

    fn initial_signature_counter(&self) -> u32 {
        self.counter_floor
    }

    fn next_signature_counter(&mut self, credential_id: &[u8]) -> Result<u32, StoreError> {
        let counter = self.counters.entry(credential_id.to_vec()).or_insert(self.counter_floor);
        *counter = counter.saturating_add(1);
        Ok(*counter)
    }

    fn load_state(&self) -> AuthenticatorState {
        self.state.clone()
    }

    fn save_state(&mut self, state: &AuthenticatorState) -> Result<(), StoreError> {
        self.state = state.clone();
        Ok(())
    }

    fn reset(&mut self) -> Result<(), StoreError> {
        self.counter_floor = self.counters.values().copied().fold(self.counter_floor, u32::max);
        self.counters.clear();
        self.credentials.clear();
        self.state = AuthenticatorState::default();
        Ok(())
    }
}
