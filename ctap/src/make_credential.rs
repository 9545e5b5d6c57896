//! authenticatorMakeCredential (CTAP 2.1 §6.1).

use ciborium::value::Value;

use crate::auth_data::{authenticator_data, flags, rp_id_hash, AttestedCredential};
use crate::authenticator::{AttestationMode, Authenticator, RequestContext};
use crate::cbor::{self, truncate_utf8, MapBuilder};
use crate::credential::{self, MAX_CREDENTIAL_ID_LEN};
use crate::platform::{Algorithm, Operation, PresencePurpose, PresenceRequest, ResidentCredential};
use crate::request::MakeCredentialRequest;
use crate::status::{CtapResult, StatusCode};

/// Stored rp and user strings are cut at 64 bytes (§6.1.2 step 15).
const MAX_STORED_STRING: usize = 64;

impl Authenticator {
    pub(crate) fn make_credential(&mut self, params: &[u8], ctx: &RequestContext<'_>) -> CtapResult<Value> {
        let request = MakeCredentialRequest::parse(params)?;
        self.check_pin_uv_auth(request.pin_uv_auth.as_ref())?;

        // Step 3: the first requested algorithm the key store supports.
        let supported = self.platform.keystore.algorithms();
        let algorithm = request
            .algorithms
            .iter()
            .filter_map(|&id| Algorithm::from_cose_id(id))
            .find(|a| supported.contains(a))
            .ok_or(StatusCode::UnsupportedAlgorithm)?;

        // Step 5: options. "up" cannot be false for makeCredential, and
        // there is no built-in user verification yet.
        if request.options.up == Some(false) || request.options.uv == Some(true) {
            return Err(StatusCode::InvalidOption);
        }
        let discoverable = request.options.rk.unwrap_or(false);
        // Step 9: enterprise attestation is not offered ("ep" absent in getInfo).
        if request.enterprise_attestation.is_some() {
            return Err(StatusCode::InvalidParameter);
        }

        let rp_id = request.rp.id.as_str();
        let rp_id_hash = rp_id_hash(rp_id);

        // Step 11: a credential from the exclude list already lives here.
        for descriptor in request.exclude_list.iter().filter(|d| d.is_public_key) {
            let found = credential::resolve(
                self.platform.keystore.as_mut(),
                self.platform.credentials.as_ref(),
                rp_id,
                &rp_id_hash,
                &descriptor.id,
            )?;
            if found.is_some() {
                self.require_presence(
                    &PresenceRequest { purpose: PresencePurpose::ConfirmExisting, rp_id: Some(rp_id), user_name: None },
                    ctx,
                )?;
                return Err(StatusCode::CredentialExcluded);
            }
        }

        self.check_policy(Operation::MakeCredential, rp_id, discoverable)?;

        // Refuse before asking for a touch when there is no room left.
        if discoverable && self.platform.credentials.remaining_capacity() == 0 {
            let replaces = self
                .platform
                .credentials
                .credentials_for_rp(rp_id)?
                .iter()
                .any(|c| c.user_id == request.user.id);
            if !replaces {
                return Err(StatusCode::KeyStoreFull);
            }
        }

        let user_name = request.user.name.as_deref().or(request.user.display_name.as_deref());
        self.require_presence(
            &PresenceRequest { purpose: PresencePurpose::Register, rp_id: Some(rp_id), user_name },
            ctx,
        )?;

        let created = self.platform.keystore.generate(algorithm)?;
        let credential_id = if discoverable {
            credential::random_resident_id()?
        } else {
            let payload = credential::encode_payload(algorithm, &created.key_handle);
            self.platform.keystore.seal_credential_id(&rp_id_hash, &payload)?
        };
        if credential_id.len() > MAX_CREDENTIAL_ID_LEN {
            tracing::error!(len = credential_id.len(), "key store produced an over-long credential ID");
            return Err(StatusCode::Other);
        }

        let counter = self.next_signature_counter()?;
        if discoverable {
            self.platform.credentials.save(ResidentCredential {
                credential_id: credential_id.clone(),
                rp_id: rp_id.to_owned(),
                rp_name: request.rp.name.map(|s| truncate_utf8(s, MAX_STORED_STRING)),
                user_id: request.user.id.clone(),
                user_name: request.user.name.map(|s| truncate_utf8(s, MAX_STORED_STRING)),
                user_display_name: request.user.display_name.map(|s| truncate_utf8(s, MAX_STORED_STRING)),
                algorithm,
                key_handle: created.key_handle.clone(),
                created: u64::from(counter),
            })?;
        }

        let auth_data = authenticator_data(
            &rp_id_hash,
            flags::USER_PRESENT,
            counter,
            Some(&AttestedCredential {
                aaguid: &self.config.aaguid,
                credential_id: &credential_id,
                public_key: &created.public_key,
            }),
        );
        let (format, statement) = match self.config.attestation {
            AttestationMode::SelfAttestation => {
                // Packed self attestation (WebAuthn §8.2): the credential key
                // signs authData ‖ clientDataHash; no certificate.
                let mut signed = auth_data.clone();
                signed.extend_from_slice(&request.client_data_hash);
                let sig = self.platform.keystore.sign(algorithm, &created.key_handle, &signed)?;
                ("packed", MapBuilder::new().text("alg", algorithm.cose_id()).text("sig", cbor::bytes(sig)).build())
            }
            AttestationMode::None => ("none", MapBuilder::new().build()),
        };
        tracing::info!(rp_id, discoverable, "credential created");
        Ok(MapBuilder::new().int(0x01, format).int(0x02, cbor::bytes(auth_data)).int(0x03, statement).build())
    }
}
