//! authenticatorConfig (CTAP 2.1 §6.11): enableEnterpriseAttestation,
//! toggleAlwaysUv and setMinPINLength. The authenticator is enterprise
//! attestation capable only while the policy holds the administrator's
//! attestation key (`[enterprise_attestation]`, docs/policy.md); otherwise
//! "ep" is absent from getInfo and enableEnterpriseAttestation is refused.

use crate::authenticator::{Authenticator, RequestContext};
use crate::client_pin::permission;
use crate::command::{ConfigRequest, ConfigSubCommand, SetMinPinLength};
use crate::status::{CtapResult, StatusCode};

/// How many rp IDs setMinPINLength may name (getInfo 0x10).
pub const MAX_RP_IDS_FOR_SET_MIN_PIN_LENGTH: usize = 8;

impl Authenticator {
    pub(crate) fn config(&mut self, request: ConfigRequest, ctx: &RequestContext<'_>) -> CtapResult<()> {
        let ConfigRequest { sub_command, auth } = request;

        // A PIN or built-in UV protects configuration: the token must carry
        // acfg and authenticate 32×0xff ‖ 0x0d ‖ subCommand ‖
        // subCommandParams. On an unprotected key the subcommand runs as is,
        // alwaysUv or not (§6.11.1: "not protected by some form of user
        // verification and alwaysUv is true: invoke the subCommand"), so
        // alwaysUv can be switched off again.
        if self.is_protected() {
            let param = auth.param.as_deref();
            self.verify_command_token(auth.protocol, param, &auth.message, permission::AUTHENTICATOR_CONFIG, ctx.now)?;
        }

        match sub_command {
            ConfigSubCommand::EnableEnterpriseAttestation => self.enable_enterprise_attestation(),
            ConfigSubCommand::ToggleAlwaysUv => self.toggle_always_uv(),
            ConfigSubCommand::SetMinPinLength(params) => self.set_min_pin_length(params),
        }
    }

    /// §6.11.3 toggleAlwaysUv.
    fn toggle_always_uv(&mut self) -> CtapResult<()> {
        let mut state = self.state.clone();
        state.always_uv = !state.always_uv;
        tracing::info!(always_uv = state.always_uv, "alwaysUv toggled");
        self.save_state(state)
    }

    /// §6.11.2: enabled until authenticatorReset; enabling twice is fine.
    fn enable_enterprise_attestation(&mut self) -> CtapResult<()> {
        if !self.platform.policy.enterprise_attestation_capable() {
            return Err(StatusCode::InvalidCommand);
        }
        if self.state.enterprise_attestation {
            return Ok(());
        }
        let mut state = self.state.clone();
        state.enterprise_attestation = true;
        tracing::info!("enterprise attestation enabled");
        self.save_state(state)
    }

    /// §6.11.4: the minimum only grows; a PIN now too short must change.
    fn set_min_pin_length(&mut self, params: SetMinPinLength) -> CtapResult<()> {
        let mut state = self.state.clone();
        let SetMinPinLength {
            new_min_pin_length: new_length,
            min_pin_length_rp_ids: rp_ids,
            force_change_pin: force_change,
        } = params;
        let new_length = match new_length {
            Some(n) => u8::try_from(n).map_err(|_| StatusCode::PinPolicyViolation)?,
            None => state.min_pin_length,
        };
        if new_length < state.min_pin_length || usize::from(new_length) > 63 {
            return Err(StatusCode::PinPolicyViolation);
        }
        if let Some(rp_ids) = rp_ids {
            if rp_ids.len() > MAX_RP_IDS_FOR_SET_MIN_PIN_LENGTH {
                return Err(StatusCode::InvalidLength);
            }
            state.min_pin_length_rp_ids = rp_ids;
        }
        if force_change && state.pin.is_none() {
            return Err(StatusCode::PinNotSet);
        }
        let too_short = state.pin.as_ref().is_some_and(|p| p.code_points < new_length);
        state.force_pin_change |= force_change || too_short;
        state.min_pin_length = new_length;
        tracing::info!(
            min_pin_length = new_length,
            force_pin_change = state.force_pin_change,
            "minimum PIN length set"
        );
        self.save_state(state)?;
        if self.state.force_pin_change {
            // Tokens issued under the old rule stop working (§6.11.4 step 6).
            self.client_pin.reset_token()?;
        }
        Ok(())
    }
}
