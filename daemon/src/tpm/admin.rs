//! The TPM key store shared between the authenticator (through
//! [`SharedTpmKeyStore`], a `KeyStore`) and Manager1's administration of
//! the boot-state binding (status, allow-boot-change, approve-boot-state):
//! one store, one TPM connection, one lock.

use std::sync::{Arc, Mutex, MutexGuard};

use fidoseal_ctap::platform::{Algorithm, CreatedKey, KeyStore, KeyStoreError, PinCheck, Secret32};
use fidoseal_dbus::{detail, Details};

use super::pcr_policy::{selection_text, BootReport};
use super::TpmKeyStore;

pub type SharedTpm = Arc<Mutex<TpmKeyStore>>;

/// Logged, and said by Manager1.Status, while fidoseald waits for the boot
/// state to be approved before it opens the devices (main.rs).
pub const WAITING_FOR_APPROVAL: &str = "waiting for the boot state to be approved";

pub struct SharedTpmKeyStore(pub SharedTpm);

impl SharedTpmKeyStore {
    fn lock(&self) -> MutexGuard<'_, TpmKeyStore> {
        // The store changes its memory only after an operation succeeded.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

// Every method forwarded, the defaulted ones too (a default here would
// hide the TPM store's own).
impl KeyStore for SharedTpmKeyStore {
    fn name(&self) -> &'static str {
        "tpm"
    }
    fn algorithms(&self) -> Vec<Algorithm> {
        self.lock().algorithms()
    }
    fn generate(&mut self, algorithm: Algorithm) -> Result<CreatedKey, KeyStoreError> {
        self.lock().generate(algorithm)
    }
    fn sign(&mut self, algorithm: Algorithm, key_handle: &[u8], message: &[u8]) -> Result<Vec<u8>, KeyStoreError> {
        self.lock().sign(algorithm, key_handle, message)
    }
    fn seal_credential_id(&mut self, rp_id_hash: &[u8; 32], payload: &[u8]) -> Result<Vec<u8>, KeyStoreError> {
        self.lock().seal_credential_id(rp_id_hash, payload)
    }
    fn open_credential_id(&mut self, rp_id_hash: &[u8; 32], credential_id: &[u8]) -> Result<Vec<u8>, KeyStoreError> {
        self.lock().open_credential_id(rp_id_hash, credential_id)
    }
    fn derive_secret(&mut self, context: &[u8]) -> Result<Secret32, KeyStoreError> {
        self.lock().derive_secret(context)
    }
    fn create_pin_object(&mut self, pin_hash: &[u8; 16]) -> Result<Option<Vec<u8>>, KeyStoreError> {
        self.lock().create_pin_object(pin_hash)
    }
    fn check_pin_object(&mut self, object: &[u8], pin_hash: &[u8; 16]) -> Result<PinCheck, KeyStoreError> {
        self.lock().check_pin_object(object, pin_hash)
    }
    fn reset(&mut self) -> Result<(), KeyStoreError> {
        self.lock().reset()
    }
    fn machine_attestation_certificate(&mut self) -> Result<Vec<u8>, KeyStoreError> {
        self.lock().machine_attestation_certificate()
    }
    fn sign_machine_attestation(&mut self, message: &[u8]) -> Result<Vec<u8>, KeyStoreError> {
        self.lock().sign_machine_attestation(message)
    }
}

/// Manager1.Status's boot-state entries (docs/dbus.md).
pub fn status_details(report: &BootReport, status: &mut Details) {
    status.insert("tpm_pcrs".into(), detail(selection_text(&report.pcrs)));
    status.insert("tpm_boot_state_approved".into(), detail(report.is_approved));
    if !report.is_approved {
        status.insert("tpm_boot_state".into(), detail(report.mismatch_message()));
    }
    status.insert("tpm_update_window_open".into(), detail(report.window_open));
    if report.recovery_key_on_disk {
        status.insert(
            "tpm_recovery_key_warning".into(),
            detail(format!(
                "the recovery key is still in {} (state directory): take it away for safe keeping and delete it",
                super::pcr_policy::RECOVERY_KEY_FILE
            )),
        );
    }
}
