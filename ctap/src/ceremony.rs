//! What makeCredential and getAssertion share between their opening steps
//! (CTAP 2.1 §6.1.2 steps 1-2, 5, 11 and §6.2.2 steps 1-2, 4, 6): the "uv"
//! option, the token's proof of verification and presence, the policy's
//! verdict, and built-in user verification. Each ceremony calls them in the
//! spec's order around its own steps (getAssertion finds its credentials
//! before anyone is asked, so that an rp with none here prompts nobody);
//! nothing else decides these things.

use crate::authenticator::{Authenticator, RequestContext};
use crate::pin_protocol::PinUvAuthProtocol;
use crate::platform::{Operation, PolicyVerdict, PresenceRequest};
use crate::request::PinUvAuth;
use crate::status::{CtapResult, StatusCode};

/// What is known of the user during a ceremony.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct User {
    pub(crate) verified: bool,
    pub(crate) present: bool,
}

/// The request's claim to go through the policy with.
pub(crate) struct Admission<'a> {
    pub(crate) operation: Operation,
    pub(crate) rp_id: &'a str,
    /// makeCredential: a discoverable credential; getAssertion: discovery
    /// (no allow list).
    pub(crate) discoverable: bool,
    pub(crate) client_data_hash: &'a [u8],
    pub(crate) pin_uv_auth: Option<&'a PinUvAuth>,
    /// The permission the token must carry (mc or ga).
    pub(crate) permission: u8,
}

impl Authenticator {
    /// The "uv" option: built-in verification asked for, which needs a
    /// prompt that can verify (§6.1.2 step 5, §6.2.2 step 4). Moot when a
    /// pinUvAuthParam came: the token already says.
    pub(crate) fn uv_requested(
        &self,
        uv_option: Option<bool>,
        protocol: Option<PinUvAuthProtocol>,
    ) -> CtapResult<bool> {
        let requested = uv_option == Some(true) && protocol.is_none();
        if requested && !self.built_in_uv_available() {
            return Err(StatusCode::InvalidOption);
        }
        Ok(requested)
    }

    /// The token check (§6.1.2 step 11, §6.2.2 step 6), then the policy,
    /// before any credential is looked at: a refused rp learns nothing, not
    /// even whether any of its credentials live here. The policy is told the
    /// user is verified when the token says so or built-in UV will be done.
    pub(crate) fn admit(
        &mut self,
        admission: &Admission<'_>,
        protocol: Option<PinUvAuthProtocol>,
        uv_requested: bool,
        ctx: &RequestContext<'_>,
    ) -> CtapResult<(User, PolicyVerdict)> {
        let token = self.verify_request_token(
            protocol,
            admission.pin_uv_auth,
            admission.client_data_hash,
            admission.permission,
            admission.rp_id,
            ctx.now,
        )?;
        let verdict = self.check_policy(
            admission.operation,
            admission.rp_id,
            admission.discoverable,
            token.user_verified || uv_requested,
        )?;
        Ok((User { verified: token.user_verified, present: token.user_present }, verdict))
    }

    /// Built-in verification when it was asked for: the user verifies, and
    /// so is present, once for the whole ceremony.
    pub(crate) fn verify_if_requested(
        &mut self,
        uv_requested: bool,
        user: &mut User,
        prompt: &PresenceRequest<'_>,
        ctx: &RequestContext<'_>,
    ) -> CtapResult<()> {
        if uv_requested {
            self.perform_built_in_uv(prompt, ctx)?;
            user.verified = true;
            user.present = true;
        }
        Ok(())
    }
}
