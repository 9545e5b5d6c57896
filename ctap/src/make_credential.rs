//! authenticatorMakeCredential (CTAP 2.1 §6.1).

use crate::audit::{AuditDecision, AuditEvent, AuditKind};
use std::sync::Arc;

use ciborium::value::Value;

use crate::auth_data::{authenticator_data, cose_key, flags, rp_id_hash, AttestedCredential};
use crate::authenticator::{
    is_non_web_rp_id, AttestationMode, Authenticator, RequestContext, ATTESTATION_FORMATS, MAX_CRED_BLOB_LENGTH,
};
use crate::cbor::{self, truncate_utf8, MapBuilder};
use crate::ceremony::{Admission, User};
use crate::client_pin::permission;
use crate::credential::{self, MAX_CREDENTIAL_ID_LEN};
use crate::platform::{
    Algorithm, AttestationPolicy, CredentialExtensions, EnterpriseAttestationKey, Operation, PresencePurpose,
    PresenceRequest, ResidentCredential,
};
use crate::request::MakeCredentialRequest;
use crate::status::{CtapResult, StatusCode};

/// Stored rp and user strings are cut at 64 bytes (§6.1.2 step 15).
const MAX_STORED_STRING: usize = 64;

/// The attestation statement a new credential gets.
enum Statement {
    None,
    SelfAttestation,
    /// With the machine attestation certificate (DER).
    Machine(Vec<u8>),
    Enterprise(Arc<EnterpriseAttestationKey>),
}

impl Authenticator {
    pub(crate) fn make_credential(
        &mut self,
        request: MakeCredentialRequest,
        ctx: &RequestContext<'_>,
    ) -> CtapResult<Value> {
        // Steps 1–2: the zero-length probe and the protocol.
        let protocol = self.pin_uv_auth_protocol(request.pin_uv_auth.as_ref(), ctx)?;

        // Step 3: the first requested algorithm the key store supports.
        let supported = self.platform.keystore.algorithms();
        let algorithm = request
            .algorithms
            .iter()
            .filter_map(|&id| Algorithm::from_cose_id(id))
            .find(|a| supported.contains(a))
            .ok_or(StatusCode::UnsupportedAlgorithm)?;

        // Step 5: options. "up" cannot be false here; "uv" asks for built-in
        // verification, and is moot when a pinUvAuthParam is given.
        if request.options.up == Some(false) {
            return Err(StatusCode::InvalidOption);
        }
        let uv_requested = self.uv_requested(request.options.uv, protocol)?;
        let discoverable = request.options.rk.unwrap_or(false);

        // Steps 6–7: a protected authenticator wants UV for discoverable
        // credentials (makeCredUvNotRqd covers only the others), and for
        // every credential under alwaysUv.
        if protocol.is_none() && !uv_requested && (discoverable || self.state.always_uv) {
            if self.is_protected() {
                return Err(StatusCode::PuatRequired);
            }
            if self.state.always_uv {
                // Step 6.2.1: alwaysUv on an authenticator without a PIN yet,
                // clientPin supported: CTAP2_ERR_PUAT_REQUIRED.
                return Err(StatusCode::PuatRequired);
            }
        }
        // Step 9: enterprise attestation, asked for with 1 (vendor-facilitated)
        // or 2 (platform-managed), only when capable and enabled. Whether this
        // rp gets it is the policy's: fidoseal's list is the administrator's
        // `[enterprise_attestation]`, and it decides for both kinds (a
        // platform's own list cannot widen it).
        let enterprise_requested = match request.enterprise_attestation {
            None => false,
            Some(kind) => {
                if !self.enterprise_attestation_enabled() {
                    return Err(StatusCode::InvalidParameter);
                }
                if kind != 1 && kind != 2 {
                    return Err(StatusCode::InvalidOption);
                }
                true
            }
        };
        if request.extensions.large_blob_key && !discoverable {
            // largeBlobKey only makes sense for discoverable credentials (§12.3).
            return Err(StatusCode::InvalidOption);
        }

        let rp_id = request.rp.id.as_str();
        let rp_id_hash = rp_id_hash(rp_id);

        // Step 11 (the token may make credentials for this rp), then policy.
        let admission = Admission {
            operation: Operation::MakeCredential,
            rp_id,
            discoverable,
            client_data_hash: &request.client_data_hash,
            pin_uv_auth: request.pin_uv_auth.as_ref(),
            permission: permission::MAKE_CREDENTIAL,
        };
        let (mut user, verdict) = self.admit(&admission, protocol, uv_requested, ctx)?;

        // hmac-secret-mc's salts are checked before anyone is asked
        // anything (as getAssertion's hmac-secret). A platform sends it only
        // beside "hmac-secret": true (CTAP 2.2 §12.8); without that there is
        // no CredRandom to use, and it is ignored.
        let hmac_secret_mc = match request.extensions.hmac_secret_mc.as_ref() {
            Some(input) if request.extensions.hmac_secret => Some(self.hmac_secret_request(input)?),
            _ => None,
        };

        let user_name = request.user.name.as_deref().or(request.user.display_name.as_deref());
        let prompt = PresenceRequest {
            purpose: PresencePurpose::Register,
            rp_id: Some(rp_id),
            user_name,
            message: verdict.prompt_message.as_deref(),
            timeout: verdict.prompt_timeout,
        };
        self.verify_if_requested(uv_requested, &mut user, &prompt, ctx)?;
        let User { verified: user_verified, present: user_present } = user;

        // Step 12: a credential from the exclude list already lives here
        // (one that needs UV counts only when UV was done).
        for descriptor in request.exclude_list.iter().filter(|d| d.is_public_key) {
            let found = credential::resolve(
                self.platform.keystore.as_mut(),
                self.platform.credentials.as_ref(),
                &rp_id_hash,
                &descriptor.id,
            )?;
            if found.is_some_and(|c| c.extensions.cred_protect < 3 || user_verified) {
                if !user_present {
                    self.require_presence(
                        &PresenceRequest {
                            purpose: PresencePurpose::ConfirmExisting,
                            rp_id: Some(rp_id),
                            ..Default::default()
                        },
                        ctx,
                    )?;
                }
                return Err(StatusCode::CredentialExcluded);
            }
        }

        // Refuse before asking for a touch when there is no room left.
        if discoverable && self.platform.credentials.remaining_capacity() == 0 {
            let replaces =
                self.platform.credentials.credentials_for_rp(&rp_id_hash)?.iter().any(|c| c.user_id == request.user.id);
            if !replaces {
                return Err(StatusCode::KeyStoreFull);
            }
        }

        if !user_present {
            self.require_presence(&prompt, ctx)?;
        }

        // Extensions (§12): what the credential keeps, and what we report.
        let requested = &request.extensions;
        let cred_blob = requested.cred_blob.as_ref().filter(|b| b.len() <= MAX_CRED_BLOB_LENGTH);
        let extensions = CredentialExtensions {
            // Policy may raise, never lower, the level asked for.
            cred_protect: requested.cred_protect.unwrap_or(1).max(verdict.min_cred_protect.clamp(1, 3)),
            hmac_secret: requested.hmac_secret,
            cred_blob: cred_blob.cloned().unwrap_or_default(),
            large_blob_key: requested.large_blob_key,
            third_party_payment: requested.third_party_payment == Some(true),
        };

        // The attestation: the policy's, else the configuration's for web or
        // non-web rp IDs. The machine certificate (made on first use) is
        // fetched before anything is created: a missing or damaged machine
        // key refuses the request without leaving a credential behind.
        let configured =
            if is_non_web_rp_id(rp_id) { self.config.non_web_attestation } else { self.config.attestation };
        // A platform that prefers "none" (attestationFormatsPreference, CTAP
        // 2.2 §6.1.2 step 9.1: the first format supported counts) gets none,
        // unless it asked for enterprise attestation too; "packed" first
        // keeps what policy and configuration chose.
        let prefers_none = request
            .attestation_formats_preference
            .iter()
            .find(|f| ATTESTATION_FORMATS.contains(&f.as_str()))
            .is_some_and(|f| f == "none");
        let statement_kind = match verdict.attestation {
            Some(AttestationPolicy::Enterprise(key)) if enterprise_requested => Statement::Enterprise(key),
            _ if prefers_none => Statement::None,
            Some(AttestationPolicy::Enterprise(_)) | None => self.statement(configured)?,
            Some(AttestationPolicy::None) => Statement::None,
            Some(AttestationPolicy::SelfAttestation) => Statement::SelfAttestation,
            Some(AttestationPolicy::Machine) => self.statement(AttestationMode::Machine)?,
        };
        let created = self.platform.keystore.generate(algorithm)?;
        let mut extensions = extensions;
        let credential_id = if discoverable {
            credential::random_resident_id()?
        } else {
            let payload = credential::encode_payload(algorithm, &created.key_handle, &extensions)?;
            let mut id = self.platform.keystore.seal_credential_id(&rp_id_hash, &payload)?;
            if id.len() > MAX_CREDENTIAL_ID_LEN && !extensions.cred_blob.is_empty() {
                // A large key handle leaves no room for the blob in the ID:
                // keep the credential, report credBlob as not stored (§12.2).
                extensions.cred_blob.clear();
                let payload = credential::encode_payload(algorithm, &created.key_handle, &extensions)?;
                id = self.platform.keystore.seal_credential_id(&rp_id_hash, &payload)?;
            }
            id
        };
        if credential_id.len() > MAX_CREDENTIAL_ID_LEN {
            tracing::error!(len = credential_id.len(), "key store produced an over-long credential ID");
            return Err(StatusCode::Other);
        }

        // A new credential's counter starts at the floor: nothing to write
        // for it here, so a discoverable credential costs one insert and a
        // non-discoverable one no write at all.
        let counter = self.platform.credentials.initial_signature_counter();
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
                created: self.platform.credentials.next_creation_order(),
                public_key_cose: cbor::encode(cose_key(&created.public_key)),
                extensions: extensions.clone(),
            })?;
        }

        let mut outputs = MapBuilder::new();
        if requested.cred_protect.is_some() || extensions.cred_protect > 1 {
            outputs = outputs.text("credProtect", u64::from(extensions.cred_protect));
        }
        if requested.hmac_secret {
            outputs = outputs.text("hmac-secret", true);
        }
        if let Some(salts) = &hmac_secret_mc {
            // The CredRandom of this ceremony's UV state, as a getAssertion
            // with the same UV would use (§12.8).
            let output = self.hmac_secret_output(&created.key_handle, salts, user_verified)?;
            outputs = outputs.text("hmac-secret-mc", cbor::bytes(output));
        }
        if requested.cred_blob.is_some() {
            outputs = outputs.text("credBlob", cred_blob.is_some() && !extensions.cred_blob.is_empty());
        }
        if let Some(asked) = requested.third_party_payment {
            // What the credential now is (CTAP 2.2 §12.9).
            outputs = outputs.text("thirdPartyPayment", asked);
        }
        if requested.min_pin_length && self.state.min_pin_length_rp_ids.iter().any(|r| r == rp_id) {
            outputs = outputs.text("minPinLength", u64::from(self.effective_min_pin_length()));
        }

        let mut flag_bits = flags::USER_PRESENT;
        if user_verified {
            flag_bits |= flags::USER_VERIFIED;
        }
        let auth_data = authenticator_data(
            &rp_id_hash,
            flag_bits,
            counter,
            Some(&AttestedCredential {
                aaguid: &self.config.aaguid,
                credential_id: &credential_id,
                public_key: &created.public_key,
            }),
            outputs.build_unless_empty(),
        );
        let enterprise_attested = matches!(statement_kind, Statement::Enterprise(_));
        let machine_attested = matches!(statement_kind, Statement::Machine(_));
        let mut signed = auth_data.clone();
        signed.extend_from_slice(&request.client_data_hash);
        let (format, statement) = match statement_kind {
            Statement::SelfAttestation => {
                // Packed self attestation (WebAuthn §8.2): the credential key
                // signs authData ‖ clientDataHash; no certificate.
                let sig = self.platform.keystore.sign(algorithm, &created.key_handle, &signed)?;
                ("packed", MapBuilder::new().text("alg", algorithm.cose_id()).text("sig", cbor::bytes(sig)).build())
            }
            Statement::Machine(certificate) => {
                // Packed with the machine's self-signed certificate (WebAuthn
                // §8.2): the machine attestation key signs the same bytes.
                let sig = self.platform.keystore.sign_machine_attestation(&signed)?;
                let statement = MapBuilder::new()
                    .text("alg", Algorithm::Es256.cose_id())
                    .text("sig", cbor::bytes(sig))
                    .text("x5c", Value::Array(vec![cbor::bytes(certificate)]))
                    .build();
                ("packed", statement)
            }
            Statement::Enterprise(key) => {
                // Packed with a certificate chain (WebAuthn §8.2): the
                // administrator's attestation key signs the same bytes.
                let x5c = key.certificates().iter().map(|der| cbor::bytes(der.clone())).collect();
                let statement = MapBuilder::new()
                    .text("alg", Algorithm::Es256.cose_id())
                    .text("sig", cbor::bytes(key.sign(&signed)))
                    .text("x5c", Value::Array(x5c))
                    .build();
                ("packed", statement)
            }
            Statement::None => ("none", MapBuilder::new().build()),
        };
        let large_blob_key = if extensions.large_blob_key {
            Some(cbor::bytes(self.large_blob_key(&credential_id)?.to_vec()))
        } else {
            None
        };
        if user_verified {
            self.clear_token_permissions_except_lbw();
        }
        tracing::debug!(
            rp_id,
            discoverable,
            user_verified,
            enterprise_attested,
            machine_attested,
            "credential created"
        );
        self.audit(
            AuditEvent::new(AuditKind::CredentialCreated, AuditDecision::Allow)
                .rp(Some(rp_id))
                .credential(&credential_id)
                .operation("make-credential")
                .user_verified(user_verified)
                .reason(match (discoverable, enterprise_attested) {
                    (true, true) => "discoverable, enterprise attestation",
                    (true, false) => "discoverable",
                    (false, true) => "enterprise attestation",
                    (false, false) => "server-side",
                }),
        );
        Ok(MapBuilder::new()
            .int(0x01, format)
            .int(0x02, cbor::bytes(auth_data))
            .int(0x03, statement)
            // epAtt (§6.1, response member 0x04): present only when asked for, true only
            // when the statement is an enterprise attestation.
            .int_opt(0x04, enterprise_requested.then_some(Value::Bool(enterprise_attested)))
            .int_opt(0x05, large_blob_key)
            .build())
    }

    /// The statement of an attestation mode (the machine's with its certificate).
    fn statement(&mut self, mode: AttestationMode) -> CtapResult<Statement> {
        Ok(match mode {
            AttestationMode::None => Statement::None,
            AttestationMode::SelfAttestation => Statement::SelfAttestation,
            AttestationMode::Machine => Statement::Machine(self.platform.keystore.machine_attestation_certificate()?),
        })
    }

    /// Capable (the policy holds a key) and enabled (authenticatorConfig).
    pub(crate) fn enterprise_attestation_enabled(&self) -> bool {
        self.state.enterprise_attestation && self.platform.policy.enterprise_attestation_capable()
    }

    /// A credential's largeBlobKey (§12.3), derived inside the key store.
    pub(crate) fn large_blob_key(&mut self, credential_id: &[u8]) -> CtapResult<[u8; 32]> {
        let mut context = b"fidoseal largeBlobKey v1".to_vec();
        context.extend_from_slice(credential_id);
        Ok(self.platform.keystore.derive_secret(&context)?.0)
    }
}
