//! authenticatorCredentialManagement (CTAP 2.1 §6.8): metadata, enumerate
//! relying parties and their credentials, delete, update user information.

use crate::audit::{AuditDecision, AuditEvent, AuditKind};
use ciborium::value::Value;
use std::time::Instant;

use crate::auth_data::rp_id_hash;
use crate::authenticator::{Authenticator, RequestContext};
use crate::cbor::{self, expect_bytes, expect_map, expect_text, expect_uint, MapBuilder, ParamMap};
use crate::client_pin::permission;
use crate::pending::{Pending, PendingOperation};
use crate::pin_protocol::PinUvAuthProtocol;
use crate::platform::{RelyingParty, ResidentCredential};
use crate::status::{CtapResult, StatusCode};

mod subcommand {
    pub const GET_CREDS_METADATA: u64 = 0x01;
    pub const ENUMERATE_RPS_BEGIN: u64 = 0x02;
    pub const ENUMERATE_RPS_GET_NEXT_RP: u64 = 0x03;
    pub const ENUMERATE_CREDENTIALS_BEGIN: u64 = 0x04;
    pub const ENUMERATE_CREDENTIALS_GET_NEXT_CREDENTIAL: u64 = 0x05;
    pub const DELETE_CREDENTIAL: u64 = 0x06;
    pub const UPDATE_USER_INFORMATION: u64 = 0x07;
}

/// What an enumeration has still to return (its channel and timer:
/// pending.rs).
pub(crate) enum PendingEnumeration {
    RelyingParties(Vec<RelyingParty>),
    Credentials(Vec<ResidentCredential>),
}

struct SubCommandParams {
    rp_id_hash: Option<Vec<u8>>,
    credential_id: Option<Vec<u8>>,
    user: Option<(Vec<u8>, Option<String>, Option<String>)>,
}

fn parse_sub_command_params(value: Value) -> CtapResult<SubCommandParams> {
    let mut map = expect_map(value)?;
    let rp_id_hash = map.take(0x01).map(expect_bytes).transpose()?;
    let credential_id = match map.take(0x02) {
        Some(v) => {
            let mut descriptor = expect_map(v)?;
            expect_text(descriptor.required_text_key("type")?)?;
            Some(expect_bytes(descriptor.required_text_key("id")?)?)
        }
        None => None,
    };
    let user = match map.take(0x03) {
        Some(v) => {
            let mut user = expect_map(v)?;
            let id = expect_bytes(user.required_text_key("id")?)?;
            let name = user.take_text_key("name").map(expect_text).transpose()?;
            let display_name = user.take_text_key("displayName").map(expect_text).transpose()?;
            Some((id, name, display_name))
        }
        None => None,
    };
    Ok(SubCommandParams { rp_id_hash, credential_id, user })
}

impl Authenticator {
    pub(crate) fn credential_management(&mut self, params: &[u8], ctx: &RequestContext<'_>) -> CtapResult<Option<Value>> {
        let mut map = ParamMap::decode(params)?;
        let sub_command = expect_uint(map.required(0x01)?)?;
        let raw_params = map.take(0x02);
        let protocol = map.take(0x03).map(expect_uint).transpose()?;
        let auth_param = map.take(0x04).map(expect_bytes).transpose()?;

        // The two "get next" subcommands continue an enumeration and are not
        // authenticated themselves (§6.8.3, §6.8.5).
        match sub_command {
            subcommand::ENUMERATE_RPS_GET_NEXT_RP => return self.next_rp(None, ctx.now).map(Some),
            subcommand::ENUMERATE_CREDENTIALS_GET_NEXT_CREDENTIAL => {
                return self.next_credential(None, ctx.now).map(Some)
            }
            subcommand::GET_CREDS_METADATA
            | subcommand::ENUMERATE_RPS_BEGIN
            | subcommand::ENUMERATE_CREDENTIALS_BEGIN
            | subcommand::DELETE_CREDENTIAL
            | subcommand::UPDATE_USER_INFORMATION => {}
            _ => return Err(StatusCode::InvalidSubcommand),
        }

        // pinUvAuthParam = authenticate(token, subCommand ‖ subCommandParams).
        let auth_param = auth_param.ok_or(StatusCode::PuatRequired)?;
        let protocol = PinUvAuthProtocol::from_id(protocol.ok_or(StatusCode::MissingParameter)?)?;
        let mut message = vec![sub_command as u8];
        if let Some(p) = &raw_params {
            message.extend(cbor::encode(p.clone()));
        }
        self.verify_pin_uv_auth_token(protocol, &message, &auth_param, permission::CREDENTIAL_MANAGEMENT, None, ctx.now)?;
        let params = raw_params.map(parse_sub_command_params).transpose()?;
        let token_rp = self.client_pin.token.rp_id.clone();

        match sub_command {
            subcommand::GET_CREDS_METADATA => {
                if token_rp.is_some() {
                    return Err(StatusCode::PinAuthInvalid);
                }
                let existing: usize = self.visible_relying_parties()?.iter().map(|rp| rp.credentials).sum();
                Ok(Some(
                    MapBuilder::new()
                        .int(0x01, existing as u64)
                        .int(0x02, self.platform.credentials.remaining_capacity() as u64)
                        .build(),
                ))
            }
            subcommand::ENUMERATE_RPS_BEGIN => {
                if token_rp.is_some() {
                    return Err(StatusCode::PinAuthInvalid);
                }
                let rps = self.visible_relying_parties()?;
                if rps.is_empty() {
                    return Err(StatusCode::NoCredentials);
                }
                let total = rps.len();
                self.begin_enumeration(PendingEnumeration::RelyingParties(rps), ctx);
                self.next_rp(Some(total), ctx.now).map(Some)
            }
            subcommand::ENUMERATE_CREDENTIALS_BEGIN => {
                let wanted = params.and_then(|p| p.rp_id_hash).ok_or(StatusCode::MissingParameter)?;
                if token_rp.as_deref().is_some_and(|rp| rp_id_hash(rp).as_slice() != wanted.as_slice()) {
                    return Err(StatusCode::PinAuthInvalid);
                }
                let wanted: [u8; 32] = wanted.as_slice().try_into().map_err(|_| StatusCode::NoCredentials)?;
                let mut credentials = self.platform.credentials.credentials_for_rp(&wanted)?;
                // One rp: the policy decides for all of them at once.
                if credentials.first().is_some_and(|c| !self.visible(&c.rp_id)) {
                    credentials.clear();
                }
                if credentials.is_empty() {
                    return Err(StatusCode::NoCredentials);
                }
                credentials.sort_by_key(|c| std::cmp::Reverse(c.created));
                let total = credentials.len();
                self.begin_enumeration(PendingEnumeration::Credentials(credentials), ctx);
                self.next_credential(Some(total), ctx.now).map(Some)
            }
            subcommand::DELETE_CREDENTIAL => {
                let id = params.and_then(|p| p.credential_id).ok_or(StatusCode::MissingParameter)?;
                let credential = self.owned_credential(&id, token_rp.as_deref())?;
                self.platform.credentials.delete(&credential.credential_id)?;
                self.audit(
                    AuditEvent::new(AuditKind::CredentialDeleted, AuditDecision::Allow)
                        .rp(Some(&credential.rp_id))
                        .credential(&credential.credential_id)
                        .operation("credential-management"),
                );
                Ok(None)
            }
            subcommand::UPDATE_USER_INFORMATION => {
                let params = params.ok_or(StatusCode::MissingParameter)?;
                let id = params.credential_id.ok_or(StatusCode::MissingParameter)?;
                let (user_id, name, display_name) = params.user.ok_or(StatusCode::MissingParameter)?;
                let mut credential = self.owned_credential(&id, token_rp.as_deref())?;
                if credential.user_id != user_id {
                    return Err(StatusCode::InvalidParameter);
                }
                credential.user_name = name.map(|s| cbor::truncate_utf8(s, 64));
                credential.user_display_name = display_name.map(|s| cbor::truncate_utf8(s, 64));
                self.platform.credentials.save(credential)?;
                Ok(None)
            }
            _ => Err(StatusCode::InvalidSubcommand),
        }
    }

    /// The policy lets this machine's user see the discoverable credentials of `rp_id`.
    fn visible(&self, rp_id: &str) -> bool {
        self.platform.policy.shows_passkeys_of(rp_id)
    }

    /// Relying parties with discoverable credentials the policy lets this
    /// machine's user see (one store query, one policy decision per rp).
    fn visible_relying_parties(&self) -> CtapResult<Vec<RelyingParty>> {
        let mut rps = self.platform.credentials.relying_parties()?;
        rps.retain(|rp| self.visible(&rp.rp_id));
        Ok(rps)
    }

    /// The credential `id` names, if it is visible and the token may touch it.
    fn owned_credential(&self, id: &[u8], token_rp: Option<&str>) -> CtapResult<ResidentCredential> {
        let credential = self
            .platform
            .credentials
            .find(id)?
            .filter(|c| self.visible(&c.rp_id))
            .ok_or(StatusCode::NoCredentials)?;
        if token_rp.is_some_and(|rp| rp != credential.rp_id) {
            return Err(StatusCode::PinAuthInvalid);
        }
        Ok(credential)
    }

    fn begin_enumeration(&mut self, enumeration: PendingEnumeration, ctx: &RequestContext<'_>) {
        self.pending = Some(Pending::new(ctx.channel, ctx.now, PendingOperation::Enumeration(enumeration)));
    }

    /// The enumeration under way, its window started again; `None` (and
    /// nothing pending) when there is none or it has run out.
    fn step_enumeration(&mut self, now: Instant) -> Option<&mut PendingEnumeration> {
        let exhausted = match self.pending.as_ref().map(|p| &p.operation) {
            Some(PendingOperation::Enumeration(PendingEnumeration::RelyingParties(rps))) => rps.is_empty(),
            Some(PendingOperation::Enumeration(PendingEnumeration::Credentials(credentials))) => credentials.is_empty(),
            _ => return None,
        };
        if exhausted {
            self.pending = None;
            return None;
        }
        let pending = self.pending.as_mut()?;
        pending.stepped(now);
        match &mut pending.operation {
            PendingOperation::Enumeration(enumeration) => Some(enumeration),
            _ => None,
        }
    }

    fn next_rp(&mut self, total: Option<usize>, now: Instant) -> CtapResult<Value> {
        let Some(PendingEnumeration::RelyingParties(rps)) = self.step_enumeration(now) else {
            return Err(StatusCode::NotAllowed);
        };
        let rp = rps.remove(0);
        let entity = MapBuilder::new().text("id", rp.rp_id.clone()).text_opt("name", rp.rp_name.clone()).build();
        Ok(MapBuilder::new()
            .int(0x03, entity)
            .int(0x04, cbor::bytes(rp_id_hash(&rp.rp_id).to_vec()))
            .int_opt(0x05, total.map(|t| t as u64))
            .build())
    }

    fn next_credential(&mut self, total: Option<usize>, now: Instant) -> CtapResult<Value> {
        let Some(PendingEnumeration::Credentials(credentials)) = self.step_enumeration(now) else {
            return Err(StatusCode::NotAllowed);
        };
        let c = credentials.remove(0);
        let user = MapBuilder::new()
            .text("id", cbor::bytes(c.user_id.clone()))
            .text_opt("name", c.user_name.clone())
            .text_opt("displayName", c.user_display_name.clone())
            .build();
        let descriptor = MapBuilder::new()
            .text("id", cbor::bytes(c.credential_id.clone()))
            .text("type", "public-key")
            .build();
        let public_key = cbor::decode(&c.public_key_cose).map_err(|_| StatusCode::Other)?;
        let large_blob_key = if c.extensions.large_blob_key {
            Some(cbor::bytes(self.large_blob_key(&c.credential_id)?.to_vec()))
        } else {
            None
        };
        Ok(MapBuilder::new()
            .int(0x06, user)
            .int(0x07, descriptor)
            .int(0x08, public_key)
            .int_opt(0x09, total.map(|t| t as u64))
            .int(0x0A, u64::from(c.extensions.cred_protect.max(1)))
            .int_opt(0x0B, large_blob_key)
            .build())
    }
}
