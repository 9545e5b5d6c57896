//! authenticatorConfig (CTAP 2.1 §6.11): enableEnterpriseAttestation,
//! toggleAlwaysUv and setMinPINLength. The authenticator is enterprise
//! attestation capable only while the policy holds the administrator's
//! attestation key (`[enterprise_attestation]`, docs/policy.md); otherwise
//! "ep" is absent from getInfo and enableEnterpriseAttestation is refused.

use ciborium::value::Value;

use crate::authenticator::{Authenticator, RequestContext};
use crate::cbor::{self, expect_array, expect_bool, expect_bytes, expect_map, expect_text, expect_uint, ParamMap};
use crate::client_pin::permission;
use crate::pin_protocol::PinUvAuthProtocol;
use crate::status::{CtapResult, StatusCode};

mod subcommand {
    pub const ENABLE_ENTERPRISE_ATTESTATION: u64 = 0x01;
    pub const TOGGLE_ALWAYS_UV: u64 = 0x02;
    pub const SET_MIN_PIN_LENGTH: u64 = 0x03;
}

/// How many rp IDs setMinPINLength may name (getInfo 0x10).
pub const MAX_RP_IDS_FOR_SET_MIN_PIN_LENGTH: usize = 8;

impl Authenticator {
    pub(crate) fn config(&mut self, params: &[u8], ctx: &RequestContext<'_>) -> CtapResult<()> {
        let mut map = ParamMap::decode(params)?;
        let sub_command = expect_uint(map.required(0x01)?)?;
        let raw_params = map.take(0x02);
        let protocol = map.take(0x03).map(expect_uint).transpose()?;
        let auth_param = map.take(0x04).map(expect_bytes).transpose()?;

        // A PIN or built-in UV protects configuration: the token must carry
        // acfg and authenticate 32×0xff ‖ 0x0d ‖ subCommand ‖
        // subCommandParams. On an unprotected key the subcommand runs as is,
        // alwaysUv or not (§6.11.1: "not protected by some form of user
        // verification and alwaysUv is true: invoke the subCommand"), so
        // alwaysUv can be switched off again.
        if self.is_protected() {
            let auth_param = auth_param.ok_or(StatusCode::PuatRequired)?;
            let protocol = PinUvAuthProtocol::from_id(protocol.ok_or(StatusCode::MissingParameter)?)?;
            let mut message = vec![0xff; 32];
            message.push(0x0d);
            message.push(u8::try_from(sub_command).map_err(|_| StatusCode::InvalidSubcommand)?);
            if let Some(p) = &raw_params {
                message.extend(cbor::encode(p.clone()));
            }
            self.verify_pin_uv_auth_token(protocol, &message, &auth_param, permission::AUTHENTICATOR_CONFIG, None, ctx.now)?;
        }

        match sub_command {
            subcommand::ENABLE_ENTERPRISE_ATTESTATION => self.enable_enterprise_attestation(),
            subcommand::TOGGLE_ALWAYS_UV => {
                let mut state = self.state.clone();
                state.always_uv = !state.always_uv;
                tracing::info!(always_uv = state.always_uv, "alwaysUv toggled");
                self.save_state(state)
            }
            subcommand::SET_MIN_PIN_LENGTH => self.set_min_pin_length(raw_params),
            _ => Err(StatusCode::InvalidSubcommand),
        }
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
    fn set_min_pin_length(&mut self, params: Option<Value>) -> CtapResult<()> {
        let mut state = self.state.clone();
        let (new_length, rp_ids, force_change) = match params {
            Some(v) => {
                let mut map = expect_map(v)?;
                let new_length = map.take(0x01).map(expect_uint).transpose()?;
                let rp_ids = map
                    .take(0x02)
                    .map(|v| expect_array(v)?.into_iter().map(expect_text).collect::<CtapResult<Vec<_>>>())
                    .transpose()?;
                let force = map.take(0x03).map(expect_bool).transpose()?.unwrap_or(false);
                (new_length, rp_ids, force)
            }
            None => (None, None, false),
        };
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
        tracing::info!(min_pin_length = new_length, force_pin_change = state.force_pin_change, "minimum PIN length set");
        self.save_state(state)?;
        if self.state.force_pin_change {
            // Tokens issued under the old rule stop working (§6.11.4 step 6).
            self.client_pin.reset_token()?;
        }
        Ok(())
    }
}
