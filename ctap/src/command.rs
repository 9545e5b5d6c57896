//! A CTAP2 message parsed into what it asks for (CTAP 2.1 §6) before
//! anything acts on it: the command byte and its parameters become a
//! [`Command`], and the commands with subcommands (clientPIN, credential
//! management, config, large blobs) become one enum variant per subcommand.
//! Checks that need the authenticator's state (a PIN set, a token's
//! permissions, what is stored) stay with the handlers; what is checked
//! here is only the message's shape, with the status codes the handlers
//! returned before parsing moved here.

use ciborium::value::Value;

use crate::authenticator::command;
use crate::cbor::{self, expect_array, expect_bool, expect_bytes, expect_map, expect_text, expect_uint, ParamMap};
use crate::large_blobs::MAX_FRAGMENT_LENGTH;
use crate::pending::Continuation;
use crate::pin_protocol::PinUvAuthProtocol;
use crate::request::{GetAssertionRequest, MakeCredentialRequest};
use crate::status::{CtapResult, StatusCode};

pub(crate) enum Command {
    MakeCredential(Box<MakeCredentialRequest>),
    GetAssertion(Box<GetAssertionRequest>),
    GetInfo,
    ClientPin(ClientPinRequest),
    Reset,
    GetNextAssertion,
    Selection,
    CredentialManagement(CredentialManagementRequest),
    LargeBlobs(LargeBlobsRequest),
    Config(ConfigRequest),
}

impl Command {
    /// Parses a CTAPHID_CBOR message's command byte and parameters.
    pub(crate) fn parse(command_byte: u8, params: &[u8]) -> CtapResult<Self> {
        Ok(match command_byte {
            command::MAKE_CREDENTIAL => Self::MakeCredential(Box::new(MakeCredentialRequest::parse(params)?)),
            command::GET_ASSERTION => Self::GetAssertion(Box::new(GetAssertionRequest::parse(params)?)),
            command::GET_INFO => Self::GetInfo,
            command::CLIENT_PIN => Self::ClientPin(ClientPinRequest::parse(params)?),
            command::RESET => Self::Reset,
            command::GET_NEXT_ASSERTION => Self::GetNextAssertion,
            command::SELECTION => Self::Selection,
            command::CREDENTIAL_MANAGEMENT | command::CREDENTIAL_MANAGEMENT_PREVIEW => {
                Self::CredentialManagement(CredentialManagementRequest::parse(params)?)
            }
            command::LARGE_BLOBS => Self::LargeBlobs(LargeBlobsRequest::parse(params)?),
            command::CONFIG => Self::Config(ConfigRequest::parse(params)?),
            _ => return Err(StatusCode::InvalidCommand),
        })
    }

    /// The pending operation a message with this command byte may continue
    /// (pending.rs). Known from the byte alone, so that a malformed
    /// continuation ends nothing it could not have continued.
    pub(crate) fn continuation(command_byte: u8) -> Option<Continuation> {
        match command_byte {
            command::GET_NEXT_ASSERTION => Some(Continuation::GetNextAssertion),
            command::CREDENTIAL_MANAGEMENT | command::CREDENTIAL_MANAGEMENT_PREVIEW => {
                Some(Continuation::CredentialManagement)
            }
            command::LARGE_BLOBS => Some(Continuation::LargeBlobs),
            _ => None,
        }
    }
}

// ---------------------------------------------------------------------------
// authenticatorClientPIN (§6.5.5)

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ClientPinSubCommand {
    GetPinRetries,
    GetKeyAgreement,
    SetPin,
    ChangePin,
    GetPinToken,
    GetPinUvAuthTokenUsingUvWithPermissions,
    GetUvRetries,
    GetPinUvAuthTokenUsingPinWithPermissions,
}

impl TryFrom<u64> for ClientPinSubCommand {
    type Error = StatusCode;

    fn try_from(value: u64) -> CtapResult<Self> {
        Ok(match value {
            0x01 => Self::GetPinRetries,
            0x02 => Self::GetKeyAgreement,
            0x03 => Self::SetPin,
            0x04 => Self::ChangePin,
            0x05 => Self::GetPinToken,
            0x06 => Self::GetPinUvAuthTokenUsingUvWithPermissions,
            0x07 => Self::GetUvRetries,
            0x09 => Self::GetPinUvAuthTokenUsingPinWithPermissions,
            _ => return Err(StatusCode::InvalidSubcommand),
        })
    }
}

/// The parameters of a clientPIN request (§6.5.5.1). Which of them a
/// subcommand needs is checked by its handler, in the order the spec gives.
pub(crate) struct ClientPinRequest {
    pub(crate) sub_command: ClientPinSubCommand,
    pub(crate) protocol: Option<PinUvAuthProtocol>,
    pub(crate) key_agreement: Option<Value>,
    pub(crate) pin_uv_auth_param: Option<Vec<u8>>,
    pub(crate) new_pin_enc: Option<Vec<u8>>,
    pub(crate) pin_hash_enc: Option<Vec<u8>>,
    pub(crate) permissions: Option<u64>,
    pub(crate) rp_id: Option<String>,
}

impl ClientPinRequest {
    fn parse(params: &[u8]) -> CtapResult<Self> {
        let mut map = ParamMap::decode(params)?;
        let protocol_id = map.take(0x01).map(expect_uint).transpose()?;
        let sub_command = expect_uint(map.required(0x02)?)?;
        let key_agreement = map.take(0x03);
        let pin_uv_auth_param = map.take(0x04).map(expect_bytes).transpose()?;
        let new_pin_enc = map.take(0x05).map(expect_bytes).transpose()?;
        let pin_hash_enc = map.take(0x06).map(expect_bytes).transpose()?;
        let permissions = map.take(0x09).map(expect_uint).transpose()?;
        let rp_id = map.take(0x0A).map(expect_text).transpose()?;
        let protocol = protocol_id.map(PinUvAuthProtocol::from_id).transpose()?;
        let sub_command = ClientPinSubCommand::try_from(sub_command)?;
        Ok(Self {
            sub_command,
            protocol,
            key_agreement,
            pin_uv_auth_param,
            new_pin_enc,
            pin_hash_enc,
            permissions,
            rp_id,
        })
    }

    pub(crate) fn protocol(&self) -> CtapResult<PinUvAuthProtocol> {
        self.protocol.ok_or(StatusCode::MissingParameter)
    }
}

// ---------------------------------------------------------------------------
// authenticatorCredentialManagement (§6.8)

/// A user entity as updateUserInformation sends it (§6.8.6).
pub(crate) struct UserUpdate {
    pub(crate) id: Vec<u8>,
    pub(crate) name: Option<String>,
    pub(crate) display_name: Option<String>,
}

/// Each subcommand with the subCommandParams it reads (§6.8.1); a missing
/// one is `MISSING_PARAMETER` from the handler, after the token check.
pub(crate) enum CredentialManagementSubCommand {
    GetCredsMetadata,
    EnumerateRpsBegin,
    EnumerateRpsGetNextRp,
    EnumerateCredentialsBegin { rp_id_hash: Option<Vec<u8>> },
    EnumerateCredentialsGetNextCredential,
    DeleteCredential { credential_id: Option<Vec<u8>> },
    UpdateUserInformation { credential_id: Option<Vec<u8>>, user: Option<UserUpdate> },
}

/// How a credential management or config request is authenticated: the
/// pinUvAuthParam and protocol sent, and the message the parameter must be
/// the token's MAC of.
pub(crate) struct SubCommandAuth {
    pub(crate) protocol: Option<u64>,
    pub(crate) param: Option<Vec<u8>>,
    pub(crate) message: Vec<u8>,
}

pub(crate) struct CredentialManagementRequest {
    pub(crate) sub_command: CredentialManagementSubCommand,
    /// Its message: subCommand ‖ subCommandParams (§6.8.1).
    pub(crate) auth: SubCommandAuth,
}

/// What credential management and config requests share (§6.8, §6.11):
/// subCommand (0x01), subCommandParams (0x02), pinUvAuthProtocol (0x03) and
/// pinUvAuthParam (0x04); the authenticated message is `message_prefix` ‖
/// subCommand ‖ subCommandParams.
fn parse_sub_command_request(params: &[u8], message_prefix: &[u8]) -> CtapResult<(u8, Option<Value>, SubCommandAuth)> {
    let mut map = ParamMap::decode(params)?;
    let sub_command_id = expect_uint(map.required(0x01)?)?;
    let raw_params = map.take(0x02);
    let protocol = map.take(0x03).map(expect_uint).transpose()?;
    let param = map.take(0x04).map(expect_bytes).transpose()?;
    let sub_command_byte = u8::try_from(sub_command_id).map_err(|_| StatusCode::InvalidSubcommand)?;
    let mut message = message_prefix.to_vec();
    message.push(sub_command_byte);
    if let Some(p) = &raw_params {
        message.extend(cbor::encode(p.clone()));
    }
    Ok((sub_command_byte, raw_params, SubCommandAuth { protocol, param, message }))
}

impl CredentialManagementRequest {
    fn parse(params: &[u8]) -> CtapResult<Self> {
        let (sub_command_byte, raw_params, auth) = parse_sub_command_request(params, &[])?;
        // The "get next" subcommands take no parameters (§6.8.3, §6.8.5):
        // whatever came with them is not read.
        let sub_command = match sub_command_byte {
            0x03 => CredentialManagementSubCommand::EnumerateRpsGetNextRp,
            0x05 => CredentialManagementSubCommand::EnumerateCredentialsGetNextCredential,
            0x01 | 0x02 | 0x04 | 0x06 | 0x07 => {
                let SubCommandParams { rp_id_hash, credential_id, user } =
                    raw_params.map(SubCommandParams::parse).transpose()?.unwrap_or_default();
                match sub_command_byte {
                    0x01 => CredentialManagementSubCommand::GetCredsMetadata,
                    0x02 => CredentialManagementSubCommand::EnumerateRpsBegin,
                    0x04 => CredentialManagementSubCommand::EnumerateCredentialsBegin { rp_id_hash },
                    0x06 => CredentialManagementSubCommand::DeleteCredential { credential_id },
                    _ => CredentialManagementSubCommand::UpdateUserInformation { credential_id, user },
                }
            }
            _ => return Err(StatusCode::InvalidSubcommand),
        };
        Ok(Self { sub_command, auth })
    }
}

/// subCommandParams (§6.8.1): rpIDHash (0x01), credentialID (0x02), user (0x03).
#[derive(Default)]
struct SubCommandParams {
    rp_id_hash: Option<Vec<u8>>,
    credential_id: Option<Vec<u8>>,
    user: Option<UserUpdate>,
}

impl SubCommandParams {
    fn parse(value: Value) -> CtapResult<Self> {
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
                Some(UserUpdate { id, name, display_name })
            }
            None => None,
        };
        Ok(Self { rp_id_hash, credential_id, user })
    }
}

// ---------------------------------------------------------------------------
// authenticatorLargeBlobs (§6.10)

pub(crate) enum LargeBlobsRequest {
    /// Read `length` bytes from `offset` (§6.10.2).
    Get { offset: usize, length: usize },
    /// Write a fragment at `offset`; the first one (offset 0) carries the
    /// whole array's `length` (§6.10.3).
    Set {
        fragment: Vec<u8>,
        offset: usize,
        length: Option<u64>,
        pin_uv_auth_param: Option<Vec<u8>>,
        protocol: Option<u64>,
    },
}

impl LargeBlobsRequest {
    fn parse(params: &[u8]) -> CtapResult<Self> {
        let mut map = ParamMap::decode(params)?;
        let get = map.take(0x01).map(expect_uint).transpose()?;
        let set = map.take(0x02).map(expect_bytes).transpose()?;
        let offset = map.take(0x03).map(expect_uint).transpose()?;
        let length = map.take(0x04).map(expect_uint).transpose()?;
        let pin_uv_auth_param = map.take(0x05).map(expect_bytes).transpose()?;
        let protocol = map.take(0x06).map(expect_uint).transpose()?;

        let offset =
            usize::try_from(offset.ok_or(StatusCode::InvalidParameter)?).map_err(|_| StatusCode::InvalidParameter)?;
        match (get, set) {
            (Some(get), None) => {
                if length.is_some() || pin_uv_auth_param.is_some() || protocol.is_some() {
                    return Err(StatusCode::InvalidParameter);
                }
                let length = usize::try_from(get).map_err(|_| StatusCode::InvalidLength)?;
                if length > MAX_FRAGMENT_LENGTH {
                    return Err(StatusCode::InvalidLength);
                }
                Ok(Self::Get { offset, length })
            }
            (None, Some(fragment)) => Ok(Self::Set { fragment, offset, length, pin_uv_auth_param, protocol }),
            _ => Err(StatusCode::InvalidParameter),
        }
    }
}

// ---------------------------------------------------------------------------
// authenticatorConfig (§6.11)

/// setMinPINLength's parameters (§6.11.4).
#[derive(Default)]
pub(crate) struct SetMinPinLength {
    pub(crate) new_min_pin_length: Option<u64>,
    pub(crate) min_pin_length_rp_ids: Option<Vec<String>>,
    pub(crate) force_change_pin: bool,
}

pub(crate) enum ConfigSubCommand {
    EnableEnterpriseAttestation,
    ToggleAlwaysUv,
    SetMinPinLength(SetMinPinLength),
}

pub(crate) struct ConfigRequest {
    pub(crate) sub_command: ConfigSubCommand,
    /// Its message: 32×0xff ‖ 0x0d ‖ subCommand ‖ subCommandParams (§6.11.1).
    pub(crate) auth: SubCommandAuth,
}

impl ConfigRequest {
    fn parse(params: &[u8]) -> CtapResult<Self> {
        let mut prefix = [0xff; 33];
        prefix[32] = command::CONFIG;
        let (sub_command_byte, raw_params, auth) = parse_sub_command_request(params, &prefix)?;
        let sub_command = match sub_command_byte {
            0x01 => ConfigSubCommand::EnableEnterpriseAttestation,
            0x02 => ConfigSubCommand::ToggleAlwaysUv,
            0x03 => ConfigSubCommand::SetMinPinLength(
                raw_params.map(parse_set_min_pin_length).transpose()?.unwrap_or_default(),
            ),
            _ => return Err(StatusCode::InvalidSubcommand),
        };
        Ok(Self { sub_command, auth })
    }
}

fn parse_set_min_pin_length(value: Value) -> CtapResult<SetMinPinLength> {
    let mut map = expect_map(value)?;
    let new_min_pin_length = map.take(0x01).map(expect_uint).transpose()?;
    let min_pin_length_rp_ids = map
        .take(0x02)
        .map(|v| expect_array(v)?.into_iter().map(expect_text).collect::<CtapResult<Vec<_>>>())
        .transpose()?;
    let force_change_pin = map.take(0x03).map(expect_bool).transpose()?.unwrap_or(false);
    Ok(SetMinPinLength { new_min_pin_length, min_pin_length_rp_ids, force_change_pin })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encoded(entries: Vec<(i64, Value)>) -> Vec<u8> {
        cbor::encode(Value::Map(entries.into_iter().map(|(k, v)| (Value::from(k), v)).collect()))
    }

    fn parse_error(command_byte: u8, params: &[u8]) -> StatusCode {
        match Command::parse(command_byte, params) {
            Ok(_) => panic!("command {command_byte:#04x} parsed"),
            Err(status) => status,
        }
    }

    #[test]
    fn unknown_commands_and_subcommands_are_refused_by_name() {
        assert_eq!(parse_error(0x03, &[]), StatusCode::InvalidCommand);
        assert_eq!(parse_error(0x40, &[]), StatusCode::InvalidCommand);
        let pin = encoded(vec![(0x01, Value::from(2)), (0x02, Value::from(0x08))]);
        assert_eq!(parse_error(command::CLIENT_PIN, &pin), StatusCode::InvalidSubcommand);
        for sub_command in [0x00, 0x08, 0x100] {
            let cm = encoded(vec![(0x01, Value::from(sub_command))]);
            assert_eq!(parse_error(command::CREDENTIAL_MANAGEMENT, &cm), StatusCode::InvalidSubcommand);
        }
        let config = encoded(vec![(0x01, Value::from(0xff))]);
        assert_eq!(parse_error(command::CONFIG, &config), StatusCode::InvalidSubcommand);
    }

    #[test]
    fn a_subcommand_without_its_required_key_is_missing_parameter() {
        assert_eq!(
            parse_error(command::CLIENT_PIN, &encoded(vec![(0x01, Value::from(2))])),
            StatusCode::MissingParameter
        );
        assert_eq!(parse_error(command::CREDENTIAL_MANAGEMENT, &encoded(vec![])), StatusCode::MissingParameter);
        assert_eq!(parse_error(command::CONFIG, &encoded(vec![])), StatusCode::MissingParameter);
    }

    #[test]
    fn subcommand_parameters_of_the_wrong_type_are_refused_before_any_token_check() {
        let cm = encoded(vec![(0x01, Value::from(0x04)), (0x02, Value::from("not a map"))]);
        assert_eq!(parse_error(command::CREDENTIAL_MANAGEMENT, &cm), StatusCode::CborUnexpectedType);
        let min_pin = Value::Map(vec![(Value::from(0x01), Value::from("six"))]);
        let config = encoded(vec![(0x01, Value::from(0x03)), (0x02, min_pin)]);
        assert_eq!(parse_error(command::CONFIG, &config), StatusCode::CborUnexpectedType);
    }

    #[test]
    fn the_get_next_subcommands_ignore_what_comes_with_them() {
        let cm = encoded(vec![(0x01, Value::from(0x03)), (0x02, Value::from("ignored"))]);
        assert!(matches!(
            Command::parse(command::CREDENTIAL_MANAGEMENT_PREVIEW, &cm),
            Ok(Command::CredentialManagement(CredentialManagementRequest {
                sub_command: CredentialManagementSubCommand::EnumerateRpsGetNextRp,
                ..
            }))
        ));
    }

    #[test]
    fn the_authenticated_messages_are_the_ones_the_spec_names() {
        let params = Value::Map(vec![(Value::from(0x01), Value::Bytes(vec![7; 32]))]);
        let cm = encoded(vec![(0x01, Value::from(0x04)), (0x02, params.clone())]);
        let Ok(Command::CredentialManagement(request)) = Command::parse(command::CREDENTIAL_MANAGEMENT, &cm) else {
            panic!("enumerateCredentialsBegin did not parse");
        };
        let mut expected = vec![0x04];
        expected.extend(cbor::encode(params));
        assert_eq!(request.auth.message, expected, "subCommand ‖ subCommandParams (§6.8.1)");

        let config = encoded(vec![(0x01, Value::from(0x02))]);
        let Ok(Command::Config(request)) = Command::parse(command::CONFIG, &config) else {
            panic!("toggleAlwaysUv did not parse");
        };
        let mut expected = vec![0xff; 32];
        expected.extend([0x0d, 0x02]);
        assert_eq!(request.auth.message, expected, "32×0xff ‖ 0x0d ‖ subCommand (§6.11.1)");
    }

    #[test]
    fn large_blob_requests_are_a_get_or_a_set_never_both() {
        let both = encoded(vec![(0x01, Value::from(10)), (0x02, Value::Bytes(vec![1])), (0x03, Value::from(0))]);
        assert_eq!(parse_error(command::LARGE_BLOBS, &both), StatusCode::InvalidParameter);
        let neither = encoded(vec![(0x03, Value::from(0))]);
        assert_eq!(parse_error(command::LARGE_BLOBS, &neither), StatusCode::InvalidParameter);
        let no_offset = encoded(vec![(0x01, Value::from(10))]);
        assert_eq!(parse_error(command::LARGE_BLOBS, &no_offset), StatusCode::InvalidParameter);
        let too_long = encoded(vec![(0x01, Value::from(MAX_FRAGMENT_LENGTH as u64 + 1)), (0x03, Value::from(0))]);
        assert_eq!(parse_error(command::LARGE_BLOBS, &too_long), StatusCode::InvalidLength);
        let get = encoded(vec![(0x01, Value::from(10)), (0x03, Value::from(5))]);
        assert!(matches!(
            Command::parse(command::LARGE_BLOBS, &get),
            Ok(Command::LargeBlobs(LargeBlobsRequest::Get { offset: 5, length: 10 }))
        ));
    }
}
