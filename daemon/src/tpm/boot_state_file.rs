//! `tpm-boot-state` and `tpm-boot-update-window` in the state directory:
//! what the boot-state binding (`[keystore] pcrs`, pcr_policy.rs) needs
//! across restarts. Nothing in them is secret in the clear: the approval
//! key's public point, the approvals (signatures over public policy
//! digests) and TPM-wrapped sealed objects that only this TPM unseals,
//! each under its own policy. CBOR (ciborium), one map per file.

use serde::{Deserialize, Serialize};

const FORMAT: u8 = 1;

/// A sealed-data object as the TPM wrapped it: its TPMT_PUBLIC (marshalled)
/// and TPM2B_PRIVATE contents, under the approval primary.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SealedBlob {
    pub public: Vec<u8>,
    pub private: Vec<u8>,
}

/// One approved boot state: the values of the selected PCRs (SHA-256 bank,
/// in the order of `pcrs`), the TPM2_PolicyPCR digest they give, and the
/// approval key's signature over SHA-256(policy ‖ policyRef) as
/// TPM2_PolicyAuthorize checks it (r ‖ s, 64 bytes).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Approval {
    pub pcr_values: Vec<Vec<u8>>,
    pub policy: Vec<u8>,
    pub signature: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootState {
    pub format: u8,
    /// The PCRs (SHA-256 bank) the approvals cover, ascending.
    pub pcrs: Vec<u8>,
    /// The approval key's uncompressed P-256 point (65 bytes).
    pub approval_key: Vec<u8>,
    /// Approved states, newest first.
    pub approvals: Vec<Approval>,
    /// The approval key's scalar sealed to the newest approved state
    /// (authPolicy = its TPM2_PolicyPCR digest, no auth value).
    pub pcr_sealed: SealedBlob,
    /// The approval key's scalar sealed with the recovery key as auth value
    /// (not noDA: wrong guesses count toward the TPM's lockout).
    pub recovery_sealed: SealedBlob,
}

/// `tpm-boot-update-window`: the approval key sealed without any PCR
/// policy (TPM-bound only), while a planned boot change is allowed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdateWindow {
    pub format: u8,
    pub sealed: SealedBlob,
}

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    let mut out = Vec::new();
    // Writing to a Vec cannot fail; the types here have no map keys that
    // serde could refuse.
    let _ = ciborium::into_writer(value, &mut out);
    out
}

impl BootState {
    pub fn encode(&self) -> Vec<u8> {
        encode(self)
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, String> {
        let state: Self = ciborium::from_reader(bytes).map_err(|e| format!("not a boot state file: {e}"))?;
        if state.format != FORMAT {
            return Err(format!("format {} is not {FORMAT} (written by a newer fidoseald?)", state.format));
        }
        if state.pcrs.is_empty() || state.approval_key.len() != 65 || state.approvals.is_empty() {
            return Err("an empty or malformed field".into());
        }
        for approval in &state.approvals {
            if approval.pcr_values.len() != state.pcrs.len()
                || approval.pcr_values.iter().any(|v| v.len() != 32)
                || approval.policy.len() != 32
                || approval.signature.len() != 64
            {
                return Err("a malformed approval".into());
            }
        }
        Ok(state)
    }
}

impl UpdateWindow {
    pub fn new(sealed: SealedBlob) -> Self {
        Self { format: FORMAT, sealed }
    }

    pub fn encode(&self) -> Vec<u8> {
        encode(self)
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, String> {
        let window: Self = ciborium::from_reader(bytes).map_err(|e| format!("not an update window file: {e}"))?;
        if window.format != FORMAT {
            return Err(format!("format {} is not {FORMAT}", window.format));
        }
        Ok(window)
    }
}

pub const CURRENT_FORMAT: u8 = FORMAT;

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> BootState {
        BootState {
            format: FORMAT,
            pcrs: vec![7],
            approval_key: vec![4; 65],
            approvals: vec![Approval { pcr_values: vec![vec![1; 32]], policy: vec![2; 32], signature: vec![3; 64] }],
            pcr_sealed: SealedBlob { public: vec![5; 40], private: vec![6; 80] },
            recovery_sealed: SealedBlob { public: vec![7; 40], private: vec![8; 80] },
        }
    }

    #[test]
    fn round_trip_and_damage() {
        let state = sample();
        let bytes = state.encode();
        assert_eq!(BootState::decode(&bytes), Ok(state.clone()));
        for cut in 0..bytes.len() {
            assert!(BootState::decode(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        let mut newer = state.clone();
        newer.format = 2;
        assert!(BootState::decode(&newer.encode()).unwrap_err().contains("newer"));
        let mut short = state.clone();
        short.approvals[0].signature.pop();
        assert!(BootState::decode(&short.encode()).is_err());
        let mut none = state;
        none.approvals.clear();
        assert!(BootState::decode(&none.encode()).is_err());
        let window = UpdateWindow::new(SealedBlob { public: vec![1], private: vec![2] });
        assert_eq!(UpdateWindow::decode(&window.encode()), Ok(window));
        assert!(UpdateWindow::decode(b"junk").is_err());
    }
}
