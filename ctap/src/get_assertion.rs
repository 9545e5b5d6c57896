//! authenticatorGetAssertion and authenticatorGetNextAssertion (CTAP 2.1
//! §6.2, §6.3).

use std::time::{Duration, Instant};

use ciborium::value::Value;

use crate::auth_data::{authenticator_data, flags, rp_id_hash};
use crate::authenticator::{Authenticator, RequestContext};
use crate::cbor::{self, MapBuilder};
use crate::credential::{self, Credential};
use crate::platform::{Operation, PresencePurpose, PresenceRequest};
use crate::request::GetAssertionRequest;
use crate::status::{CtapResult, StatusCode};

/// getNextAssertion must follow within 30 s of the previous assertion (§6.3).
const NEXT_ASSERTION_WINDOW: Duration = Duration::from_secs(30);

/// The state getNextAssertion continues from.
pub(crate) struct PendingAssertions {
    channel: u32,
    rp_id_hash: [u8; 32],
    client_data_hash: Vec<u8>,
    flag_bits: u8,
    /// Still to be returned, next first.
    remaining: Vec<Credential>,
    last_used: Instant,
}

impl Authenticator {
    pub(crate) fn get_assertion(&mut self, params: &[u8], ctx: &RequestContext<'_>) -> CtapResult<Value> {
        let request = GetAssertionRequest::parse(params)?;
        self.check_pin_uv_auth(request.pin_uv_auth.as_ref())?;

        // Step 5: "rk" is meaningless here; "uv" needs built-in verification.
        if request.options.rk.is_some() {
            return Err(StatusCode::UnsupportedOption);
        }
        if request.options.uv == Some(true) {
            return Err(StatusCode::InvalidOption);
        }
        let user_presence = request.options.up.unwrap_or(true);
        let rp_id = request.rp_id.as_str();
        let rp_id_hash = rp_id_hash(rp_id);

        // Step 7: locate credentials. With an allow list, the first of ours;
        // without, every discoverable credential of the rp, newest first.
        let from_allow_list = !request.allow_list.is_empty();
        let mut found: Vec<Credential> = Vec::new();
        if from_allow_list {
            for descriptor in request.allow_list.iter().filter(|d| d.is_public_key) {
                if let Some(c) = credential::resolve(
                    self.platform.keystore.as_mut(),
                    self.platform.credentials.as_ref(),
                    rp_id,
                    &rp_id_hash,
                    &descriptor.id,
                )? {
                    found.push(c);
                    break;
                }
            }
        } else {
            let mut residents = self.platform.credentials.credentials_for_rp(rp_id)?;
            residents.sort_by(|a, b| b.created.cmp(&a.created));
            found.extend(residents.into_iter().map(Credential::from));
        }
        if found.is_empty() {
            return Err(StatusCode::NoCredentials);
        }

        self.check_policy(Operation::GetAssertion, rp_id, !from_allow_list)?;

        let mut flag_bits = 0;
        if user_presence {
            let user_name = match found.as_slice() {
                [only] => only.resident.as_ref().and_then(|r| r.user_name.as_deref()),
                _ => None,
            };
            self.require_presence(
                &PresenceRequest { purpose: PresencePurpose::Authenticate, rp_id: Some(rp_id), user_name },
                ctx,
            )?;
            flag_bits |= flags::USER_PRESENT;
        }

        let total = found.len();
        let first = found.remove(0);
        let response = self.sign_assertion(&first, &rp_id_hash, flag_bits, &request.client_data_hash, (total > 1).then_some(total))?;
        if !found.is_empty() {
            self.pending_assertions = Some(PendingAssertions {
                channel: ctx.channel,
                rp_id_hash,
                client_data_hash: request.client_data_hash,
                flag_bits,
                remaining: found,
                last_used: ctx.now,
            });
        }
        tracing::info!(rp_id, credentials = total, user_presence, "assertion made");
        Ok(response)
    }

    pub(crate) fn get_next_assertion(&mut self, ctx: &RequestContext<'_>) -> CtapResult<Value> {
        let Some(mut pending) = self.pending_assertions.take() else {
            return Err(StatusCode::NotAllowed);
        };
        if pending.channel != ctx.channel
            || ctx.now.saturating_duration_since(pending.last_used) > NEXT_ASSERTION_WINDOW
            || pending.remaining.is_empty()
        {
            return Err(StatusCode::NotAllowed);
        }
        let next = pending.remaining.remove(0);
        let response =
            self.sign_assertion(&next, &pending.rp_id_hash, pending.flag_bits, &pending.client_data_hash, None)?;
        if !pending.remaining.is_empty() {
            pending.last_used = ctx.now;
            self.pending_assertions = Some(pending);
        }
        Ok(response)
    }

    fn sign_assertion(
        &mut self,
        credential: &Credential,
        rp_id_hash: &[u8; 32],
        flag_bits: u8,
        client_data_hash: &[u8],
        number_of_credentials: Option<usize>,
    ) -> CtapResult<Value> {
        let counter = self.next_signature_counter()?;
        let auth_data = authenticator_data(rp_id_hash, flag_bits, counter, None);
        let mut signed = auth_data.clone();
        signed.extend_from_slice(client_data_hash);
        let signature = self.platform.keystore.sign(credential.algorithm, &credential.key_handle, &signed)?;
        let descriptor = MapBuilder::new()
            .text("id", cbor::bytes(credential.credential_id.clone()))
            .text("type", "public-key")
            .build();
        // Without user verification only the user handle is returned, never
        // name or display name (§6.2.2, "user" member).
        let user = credential
            .resident
            .as_ref()
            .map(|r| MapBuilder::new().text("id", cbor::bytes(r.user_id.clone())).build());
        Ok(MapBuilder::new()
            .int(0x01, descriptor)
            .int(0x02, cbor::bytes(auth_data))
            .int(0x03, cbor::bytes(signature))
            .int_opt(0x04, user)
            .int_opt(0x05, number_of_credentials.map(|n| n as u64))
            .build())
    }
}
