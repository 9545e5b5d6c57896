//! authenticatorGetAssertion and authenticatorGetNextAssertion (CTAP 2.1
//! §6.2, §6.3), with the credProtect, hmac-secret, credBlob and
//! largeBlobKey extensions.

use crate::audit::{AuditDecision, AuditEvent, AuditKind};

use ciborium::value::Value;

use crate::auth_data::{authenticator_data, flags, rp_id_hash};
use crate::authenticator::{Authenticator, RequestContext};
use crate::cbor::{self, MapBuilder};
use crate::ceremony::{Admission, User};
use crate::client_pin::permission;
use crate::credential::{self, Credential};
use crate::hmac_secret::HmacSecretRequest;
use crate::pending::{Pending, PendingOperation};
use crate::platform::{Operation, PresencePurpose, PresenceRequest};
use crate::request::GetAssertionRequest;
use crate::status::{CtapResult, StatusCode};

/// What every assertion of one getAssertion shares.
struct AssertionContext {
    /// For the audit trail.
    rp_id: String,
    rp_id_hash: [u8; 32],
    client_data_hash: Vec<u8>,
    flag_bits: u8,
    hmac_secret: Option<HmacSecretRequest>,
    cred_blob: bool,
    large_blob_key: bool,
    third_party_payment: bool,
}

/// The state getNextAssertion continues from (its channel and timer:
/// pending.rs).
pub(crate) struct PendingAssertions {
    context: AssertionContext,
    /// Still to be returned, next first.
    remaining: Vec<Credential>,
}

/// How a discoverable credential is shown when the user picks one.
fn account_label(credential: &Credential) -> String {
    let Some(r) = &credential.resident else { return String::new() };
    r.user_display_name.clone().or_else(|| r.user_name.clone()).unwrap_or_else(|| hex::encode(&r.user_id))
}

impl Authenticator {
    pub(crate) fn get_assertion(
        &mut self,
        request: GetAssertionRequest,
        ctx: &RequestContext<'_>,
    ) -> CtapResult<Value> {
        let protocol = self.pin_uv_auth_protocol(request.pin_uv_auth.as_ref(), ctx)?;

        // Step 4: "rk" is meaningless here; "uv" needs built-in verification.
        if request.options.rk.is_some() {
            return Err(StatusCode::UnsupportedOption);
        }
        let uv_requested = self.uv_requested(request.options.uv, protocol)?;
        let user_presence = request.options.up.unwrap_or(true);
        // Step 5: alwaysUv wants UV for every assertion the user is asked
        // for; with clientPin supported the answer is PUAT_REQUIRED whether
        // or not a PIN is set yet (steps 5.1.1 and 5.4).
        if self.state.always_uv && user_presence && protocol.is_none() && !uv_requested {
            return Err(StatusCode::PuatRequired);
        }
        let rp_id = request.rp_id.as_str();
        let rp_id_hash = rp_id_hash(rp_id);

        // Step 6 (the token may get assertions for this rp), then policy: no
        // credential ID is opened for a refused rp.
        let from_allow_list = !request.allow_list.is_empty();
        let admission = Admission {
            operation: Operation::GetAssertion,
            rp_id,
            discoverable: !from_allow_list,
            client_data_hash: &request.client_data_hash,
            pin_uv_auth: request.pin_uv_auth.as_ref(),
            permission: permission::GET_ASSERTION,
        };
        let (mut user, verdict) = self.admit(&admission, protocol, uv_requested, ctx)?;
        let user_verified = user.verified;

        // Step 7: locate credentials. With an allow list, the first of ours;
        // without, every discoverable credential of the rp, newest first.
        // credProtect (§12.1) hides level 3 without UV, and level 2 from
        // discovery without UV.
        let mut found: Vec<Credential> = Vec::new();
        if from_allow_list {
            for descriptor in request.allow_list.iter().filter(|d| d.is_public_key) {
                let credential = credential::resolve(
                    self.platform.keystore.as_mut(),
                    self.platform.credentials.as_ref(),
                    &rp_id_hash,
                    &descriptor.id,
                )?;
                if let Some(c) = credential.filter(|c| user_verified || uv_requested || c.extensions.cred_protect < 3) {
                    found.push(c);
                    break;
                }
            }
        } else {
            let mut residents = self.platform.credentials.credentials_for_rp(&rp_id_hash)?;
            residents.retain(|c| user_verified || uv_requested || c.extensions.cred_protect < 2);
            residents.sort_by_key(|c| std::cmp::Reverse(c.created));
            found.extend(residents.into_iter().map(Credential::from));
        }
        if found.is_empty() {
            return Err(StatusCode::NoCredentials);
        }

        // hmac-secret is checked before anyone is asked to touch anything.
        let hmac_secret = match &request.extensions.hmac_secret {
            Some(input) => {
                if !user_presence {
                    return Err(StatusCode::UnsupportedOption);
                }
                Some(self.hmac_secret_request(input)?)
            }
            None => None,
        };

        let user_name = match found.as_slice() {
            [only] => only.resident.as_ref().and_then(|r| r.user_name.clone()),
            _ => None,
        };
        let prompt = PresenceRequest {
            purpose: PresencePurpose::Authenticate,
            rp_id: Some(rp_id),
            user_name: user_name.as_deref(),
            message: verdict.prompt_message.as_deref(),
            timeout: verdict.prompt_timeout,
        };
        // Built-in verification proves presence too; choosing one of several
        // passkeys in the agent is itself a user action.
        self.verify_if_requested(uv_requested, &mut user, &prompt, ctx)?;
        let User { verified: user_verified, present: mut user_present } = user;
        if found.len() > 1 && user_presence {
            let accounts: Vec<String> = found.iter().map(account_label).collect();
            ctx.signals.set_waiting_for_user(true);
            let choice = self.platform.prompt.select_credential(&prompt, &accounts, ctx.signals);
            ctx.signals.set_waiting_for_user(false);
            match choice {
                None => {}
                Some(Ok(index)) if index < found.len() => {
                    found = vec![found.swap_remove(index)];
                    user_present = true;
                }
                Some(Ok(_)) => return Err(StatusCode::Other),
                Some(Err(outcome)) => return Err(crate::user_verification::refusal_status(outcome)),
            }
        }
        if user_presence && !user_present {
            self.require_presence(&prompt, ctx)?;
        }
        let mut flag_bits = 0;
        if user_presence {
            flag_bits |= flags::USER_PRESENT;
        }
        if user_verified {
            flag_bits |= flags::USER_VERIFIED;
        }

        let context = AssertionContext {
            rp_id: rp_id.to_string(),
            rp_id_hash,
            client_data_hash: request.client_data_hash,
            flag_bits,
            hmac_secret,
            cred_blob: request.extensions.cred_blob,
            large_blob_key: request.extensions.large_blob_key,
            third_party_payment: request.extensions.third_party_payment,
        };
        let total = found.len();
        let first = found.remove(0);
        let response = self.sign_assertion(&first, &context, (total > 1).then_some(total))?;
        if user_verified && user_presence {
            // §6.2.2 step 9: only an assertion with "up" consumes the
            // token's permissions; platforms pre-flight allow lists with
            // up=false and the same token before the real request.
            self.clear_token_permissions_except_lbw();
        }
        if !found.is_empty() {
            let assertions = PendingAssertions { context, remaining: found };
            self.pending = Some(Pending::new(ctx.channel, ctx.after_user(), PendingOperation::Assertions(assertions)));
        }
        tracing::debug!(rp_id, credentials = total, user_presence, user_verified, "assertion made");
        Ok(response)
    }

    pub(crate) fn get_next_assertion(&mut self, ctx: &RequestContext<'_>) -> CtapResult<Value> {
        // The dispatcher has dropped an operation of another kind, channel
        // or age (pending.rs).
        let Some(mut pending) = self.pending.take() else {
            return Err(StatusCode::NotAllowed);
        };
        let PendingOperation::Assertions(assertions) = &mut pending.operation else {
            return Err(StatusCode::NotAllowed);
        };
        if assertions.remaining.is_empty() {
            return Err(StatusCode::NotAllowed);
        }
        let next = assertions.remaining.remove(0);
        let response = self.sign_assertion(&next, &assertions.context, None)?;
        if !assertions.remaining.is_empty() {
            pending.stepped(ctx.now);
            self.pending = Some(pending);
        }
        Ok(response)
    }

    fn sign_assertion(
        &mut self,
        credential: &Credential,
        context: &AssertionContext,
        number_of_credentials: Option<usize>,
    ) -> CtapResult<Value> {
        let user_verified = context.flag_bits & flags::USER_VERIFIED != 0;
        let mut outputs = MapBuilder::new();
        if let Some(request) = context.hmac_secret.as_ref().filter(|_| credential.extensions.hmac_secret) {
            let output = self.hmac_secret_output(&credential.key_handle, request, user_verified)?;
            outputs = outputs.text("hmac-secret", cbor::bytes(output));
        }
        if context.cred_blob {
            outputs = outputs.text("credBlob", cbor::bytes(credential.extensions.cred_blob.clone()));
        }
        if context.third_party_payment {
            // Whether this credential may sign a third party's payment
            // (CTAP 2.2 §12.9): false for the others, never left out.
            outputs = outputs.text("thirdPartyPayment", credential.extensions.third_party_payment);
        }
        let counter = self.next_signature_counter(&credential.credential_id)?;
        let auth_data =
            authenticator_data(&context.rp_id_hash, context.flag_bits, counter, None, outputs.build_unless_empty());
        let mut signed = auth_data.clone();
        signed.extend_from_slice(&context.client_data_hash);
        let signature = self.platform.keystore.sign(credential.algorithm, &credential.key_handle, &signed)?;
        let descriptor = MapBuilder::new()
            .text("id", cbor::bytes(credential.credential_id.clone()))
            .text("type", "public-key")
            .build();
        // Name and display name only after user verification (§6.2.2 "user").
        let user = credential.resident.as_ref().map(|r| {
            let mut user = MapBuilder::new().text("id", cbor::bytes(r.user_id.clone()));
            if user_verified {
                user = user.text_opt("name", r.user_name.clone()).text_opt("displayName", r.user_display_name.clone());
            }
            user.build()
        });
        let large_blob_key = if context.large_blob_key && credential.extensions.large_blob_key {
            Some(cbor::bytes(self.large_blob_key(&credential.credential_id)?.to_vec()))
        } else {
            None
        };
        self.audit(
            AuditEvent::new(AuditKind::Assertion, AuditDecision::Allow)
                .rp(Some(&context.rp_id))
                .credential(&credential.credential_id)
                .operation("get-assertion")
                .user_verified(user_verified)
                .reason(if context.flag_bits & flags::USER_PRESENT != 0 {
                    "user present"
                } else {
                    "silent (up=false)"
                }),
        );
        Ok(MapBuilder::new()
            .int(0x01, descriptor)
            .int(0x02, cbor::bytes(auth_data))
            .int(0x03, cbor::bytes(signature))
            .int_opt(0x04, user)
            .int_opt(0x05, number_of_credentials.map(|n| n as u64))
            .int_opt(0x07, large_blob_key)
            .build())
    }
}
