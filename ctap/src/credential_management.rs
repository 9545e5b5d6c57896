//! authenticatorCredentialManagement (CTAP 2.1 §6.8): metadata, enumerate
//! relying parties and their credentials, delete, update user information.

use crate::audit::{AuditDecision, AuditEvent, AuditKind};
use ciborium::value::Value;
use std::time::Instant;

use crate::auth_data::rp_id_hash;
use crate::authenticator::{Authenticator, RequestContext};
use crate::cbor::{self, MapBuilder};
use crate::client_pin::permission;
use crate::command::{CredentialManagementRequest, CredentialManagementSubCommand, SubCommandAuth, UserUpdate};
use crate::pending::{Pending, PendingOperation};
use crate::pin_protocol::PinUvAuthProtocol;
use crate::platform::{RelyingParty, ResidentCredential};
use crate::status::{CtapResult, StatusCode};

/// Whether a subcommand only reads (the persistent token may do it) or
/// changes what is stored (only the pinUvAuthToken with cm may).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Access {
    ReadOnly,
    Write,
}

/// What an enumeration has still to return (its channel and timer:
/// pending.rs).
pub(crate) enum PendingEnumeration {
    RelyingParties(Vec<RelyingParty>),
    Credentials(Vec<ResidentCredential>),
}

impl Authenticator {
    pub(crate) fn credential_management(
        &mut self,
        request: CredentialManagementRequest,
        ctx: &RequestContext<'_>,
    ) -> CtapResult<Option<Value>> {
        use CredentialManagementSubCommand as Sub;
        let CredentialManagementRequest { sub_command, auth } = request;
        match sub_command {
            // The two "get next" subcommands continue an enumeration and are
            // not authenticated themselves (§6.8.3, §6.8.5).
            Sub::EnumerateRpsGetNextRp => self.next_rp(None, ctx.now).map(Some),
            Sub::EnumerateCredentialsGetNextCredential => self.next_credential(None, ctx.now).map(Some),
            Sub::GetCredsMetadata => {
                let token_rp = self.credential_management_token(auth, Access::ReadOnly, ctx)?;
                self.get_creds_metadata(token_rp.as_deref()).map(Some)
            }
            Sub::EnumerateRpsBegin => {
                let token_rp = self.credential_management_token(auth, Access::ReadOnly, ctx)?;
                self.enumerate_rps_begin(token_rp.as_deref(), ctx).map(Some)
            }
            Sub::EnumerateCredentialsBegin { rp_id_hash } => {
                let token_rp = self.credential_management_token(auth, Access::ReadOnly, ctx)?;
                let rp_id_hash = rp_id_hash.ok_or(StatusCode::MissingParameter)?;
                self.enumerate_credentials_begin(&rp_id_hash, token_rp.as_deref(), ctx).map(Some)
            }
            Sub::DeleteCredential { credential_id } => {
                let token_rp = self.credential_management_token(auth, Access::Write, ctx)?;
                let credential_id = credential_id.ok_or(StatusCode::MissingParameter)?;
                self.delete_credential(&credential_id, token_rp.as_deref()).map(|()| None)
            }
            Sub::UpdateUserInformation { credential_id, user } => {
                let token_rp = self.credential_management_token(auth, Access::Write, ctx)?;
                let credential_id = credential_id.ok_or(StatusCode::MissingParameter)?;
                let user = user.ok_or(StatusCode::MissingParameter)?;
                self.update_user_information(&credential_id, user, token_rp.as_deref()).map(|()| None)
            }
        }
    }

    /// Checks pinUvAuthParam = authenticate(token, subCommand ‖
    /// subCommandParams): made by the pinUvAuthToken with the cm
    /// permission, or, for a read-only subcommand, by the persistent token
    /// (pcmr, CTAP 2.2 §6.8.1); the rp the token is bound to, if any (the
    /// persistent token is bound to none).
    fn credential_management_token(
        &mut self,
        auth: SubCommandAuth,
        access: Access,
        ctx: &RequestContext<'_>,
    ) -> CtapResult<Option<String>> {
        let param = auth.param.as_deref();
        match self.verify_command_token(auth.protocol, param, &auth.message, permission::CREDENTIAL_MANAGEMENT, ctx.now)
        {
            Ok(()) => Ok(self.client_pin.token.rp_id.clone()),
            Err(StatusCode::PinAuthInvalid) if access == Access::ReadOnly => {
                // verify_command_token has checked that both are there.
                let (Some(protocol), Some(param)) = (auth.protocol, param) else {
                    return Err(StatusCode::PinAuthInvalid);
                };
                let protocol = PinUvAuthProtocol::from_id(protocol)?;
                match &self.persistent_token {
                    Some(token) if token.verifies(protocol, &auth.message, param) => Ok(None),
                    _ => Err(StatusCode::PinAuthInvalid),
                }
            }
            Err(e) => Err(e),
        }
    }

    /// §6.8.2 getCredsMetadata: not with a token bound to one rp.
    fn get_creds_metadata(&self, token_rp: Option<&str>) -> CtapResult<Value> {
        if token_rp.is_some() {
            return Err(StatusCode::PinAuthInvalid);
        }
        let existing: usize = self.visible_relying_parties()?.iter().map(|rp| rp.credentials).sum();
        Ok(MapBuilder::new()
            .int(0x01, existing as u64)
            .int(0x02, self.platform.credentials.remaining_capacity() as u64)
            .build())
    }

    /// §6.8.3 enumerateRPsBegin: not with a token bound to one rp.
    fn enumerate_rps_begin(&mut self, token_rp: Option<&str>, ctx: &RequestContext<'_>) -> CtapResult<Value> {
        if token_rp.is_some() {
            return Err(StatusCode::PinAuthInvalid);
        }
        let rps = self.visible_relying_parties()?;
        if rps.is_empty() {
            return Err(StatusCode::NoCredentials);
        }
        let total = rps.len();
        self.begin_enumeration(PendingEnumeration::RelyingParties(rps), ctx);
        self.next_rp(Some(total), ctx.now)
    }

    /// §6.8.4 enumerateCredentialsBegin: newest first.
    fn enumerate_credentials_begin(
        &mut self,
        wanted: &[u8],
        token_rp: Option<&str>,
        ctx: &RequestContext<'_>,
    ) -> CtapResult<Value> {
        if token_rp.is_some_and(|rp| rp_id_hash(rp).as_slice() != wanted) {
            return Err(StatusCode::PinAuthInvalid);
        }
        let wanted: [u8; 32] = wanted.try_into().map_err(|_| StatusCode::NoCredentials)?;
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
        self.next_credential(Some(total), ctx.now)
    }

    /// §6.8.6 deleteCredential.
    fn delete_credential(&mut self, id: &[u8], token_rp: Option<&str>) -> CtapResult<()> {
        let credential = self.owned_credential(id, token_rp)?;
        self.platform.credentials.delete(&credential.credential_id)?;
        self.audit(
            AuditEvent::new(AuditKind::CredentialDeleted, AuditDecision::Allow)
                .rp(Some(&credential.rp_id))
                .credential(&credential.credential_id)
                .operation("credential-management"),
        );
        Ok(())
    }

    /// §6.8.7 updateUserInformation: the user handle must match.
    fn update_user_information(&mut self, id: &[u8], user: UserUpdate, token_rp: Option<&str>) -> CtapResult<()> {
        let mut credential = self.owned_credential(id, token_rp)?;
        if credential.user_id != user.id {
            return Err(StatusCode::InvalidParameter);
        }
        credential.user_name = user.name.map(|s| cbor::truncate_utf8(s, 64));
        credential.user_display_name = user.display_name.map(|s| cbor::truncate_utf8(s, 64));
        self.platform.credentials.save(credential)?;
        Ok(())
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
        let credential =
            self.platform.credentials.find(id)?.filter(|c| self.visible(&c.rp_id)).ok_or(StatusCode::NoCredentials)?;
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
        let descriptor =
            MapBuilder::new().text("id", cbor::bytes(c.credential_id.clone())).text("type", "public-key").build();
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
            // thirdPartyPayment (CTAP 2.2 §6.8.4), for every credential: the
            // extension is supported.
            .int(0x0C, c.extensions.third_party_payment)
            .build())
    }
}
