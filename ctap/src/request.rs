//! CTAP2 request parameters, parsed strictly (CTAP 2.1 §6.1, §6.2): unknown
//! keys are ignored; a missing required key is `MISSING_PARAMETER`; a key
//! of the wrong type is `CBOR_UNEXPECTED_TYPE`.

use ciborium::value::Value;

use crate::cbor::{
    expect_array, expect_bool, expect_bytes, expect_int, expect_map, expect_text, expect_uint, ParamMap,
};
use crate::status::{CtapResult, StatusCode};

/// Maximum length of a user handle (WebAuthn §5.4.3).
pub const MAX_USER_ID_LEN: usize = 64;

#[derive(Debug, Clone)]
pub struct RpEntity {
    pub id: String,
    pub name: Option<String>,
}

#[derive(Debug, Clone)]
pub struct UserEntity {
    pub id: Vec<u8>,
    pub name: Option<String>,
    pub display_name: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CredentialDescriptor {
    pub id: Vec<u8>,
    /// Only "public-key" descriptors name credentials; others are skipped.
    pub is_public_key: bool,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Options {
    pub rk: Option<bool>,
    pub up: Option<bool>,
    pub uv: Option<bool>,
}

#[derive(Debug, Clone)]
pub struct PinUvAuth {
    pub param: Vec<u8>,
    pub protocol: Option<u64>,
}

/// Extension inputs of makeCredential (CTAP 2.1 §12).
#[derive(Debug, Clone, Default)]
pub struct MakeCredentialExtensions {
    /// credProtect level 1..=3.
    pub cred_protect: Option<u8>,
    pub hmac_secret: bool,
    /// hmac-secret-mc (CTAP 2.2 §12.8): salts whose outputs come back at
    /// makeCredential already; read only together with `hmac_secret`.
    pub hmac_secret_mc: Option<HmacSecretInput>,
    pub cred_blob: Option<Vec<u8>>,
    pub large_blob_key: bool,
    pub min_pin_length: bool,
    /// thirdPartyPayment (CTAP 2.2 §12.9), as sent.
    pub third_party_payment: Option<bool>,
}

/// hmac-secret's getAssertion input (§12.5), and hmac-secret-mc's
/// makeCredential input, which is the same map (CTAP 2.2 §12.8).
#[derive(Debug, Clone)]
pub struct HmacSecretInput {
    pub key_agreement: Value,
    pub salt_enc: Vec<u8>,
    pub salt_auth: Vec<u8>,
    pub protocol: Option<u64>,
}

/// Extension inputs of getAssertion.
#[derive(Debug, Clone, Default)]
pub struct GetAssertionExtensions {
    pub hmac_secret: Option<HmacSecretInput>,
    pub cred_blob: bool,
    pub large_blob_key: bool,
    /// thirdPartyPayment: report whether the credential is enabled for it.
    pub third_party_payment: bool,
}

#[derive(Debug, Clone)]
pub struct MakeCredentialRequest {
    pub client_data_hash: Vec<u8>,
    pub rp: RpEntity,
    pub user: UserEntity,
    /// Algorithm IDs of the "public-key" entries of pubKeyCredParams, in order.
    pub algorithms: Vec<i64>,
    pub exclude_list: Vec<CredentialDescriptor>,
    pub options: Options,
    pub pin_uv_auth: Option<PinUvAuth>,
    pub enterprise_attestation: Option<u64>,
    /// attestationFormatsPreference (CTAP 2.2 §6.1, 0x0B): statement
    /// formats in the platform's order of preference.
    pub attestation_formats_preference: Vec<String>,
    pub extensions: MakeCredentialExtensions,
}

#[derive(Debug, Clone)]
pub struct GetAssertionRequest {
    pub rp_id: String,
    pub client_data_hash: Vec<u8>,
    pub allow_list: Vec<CredentialDescriptor>,
    pub options: Options,
    pub pin_uv_auth: Option<PinUvAuth>,
    pub extensions: GetAssertionExtensions,
}

fn optional_text(map: &mut ParamMap, key: &str) -> CtapResult<Option<String>> {
    map.take_text_key(key).map(expect_text).transpose()
}

fn client_data_hash(value: Value) -> CtapResult<Vec<u8>> {
    let hash = expect_bytes(value)?;
    if hash.len() != 32 {
        return Err(StatusCode::InvalidLength);
    }
    Ok(hash)
}

fn rp_entity(value: Value) -> CtapResult<RpEntity> {
    let mut map = expect_map(value)?;
    let id = expect_text(map.required_text_key("id")?)?;
    let name = optional_text(&mut map, "name")?;
    optional_text(&mut map, "icon")?;
    Ok(RpEntity { id, name })
}

fn user_entity(value: Value) -> CtapResult<UserEntity> {
    let mut map = expect_map(value)?;
    let id = expect_bytes(map.required_text_key("id")?)?;
    if id.len() > MAX_USER_ID_LEN {
        return Err(StatusCode::InvalidLength);
    }
    let name = optional_text(&mut map, "name")?;
    let display_name = optional_text(&mut map, "displayName")?;
    optional_text(&mut map, "icon")?;
    Ok(UserEntity { id, name, display_name })
}

fn credential_descriptor(value: Value) -> CtapResult<CredentialDescriptor> {
    let mut map = expect_map(value)?;
    let kind = expect_text(map.required_text_key("type")?)?;
    let id = expect_bytes(map.required_text_key("id")?)?;
    if let Some(transports) = map.take_text_key("transports") {
        for t in expect_array(transports)? {
            expect_text(t)?;
        }
    }
    Ok(CredentialDescriptor { id, is_public_key: kind == "public-key" })
}

fn descriptor_list(value: Value) -> CtapResult<Vec<CredentialDescriptor>> {
    expect_array(value)?.into_iter().map(credential_descriptor).collect()
}

fn algorithms(value: Value) -> CtapResult<Vec<i64>> {
    let mut out = Vec::new();
    for entry in expect_array(value)? {
        let mut map = expect_map(entry)?;
        let alg = expect_int(map.required_text_key("alg")?)?;
        let kind = expect_text(map.required_text_key("type")?)?;
        if kind == "public-key" {
            out.push(alg);
        }
    }
    Ok(out)
}

fn options(value: Value) -> CtapResult<Options> {
    let mut options = Options::default();
    for (key, value) in expect_map(value)?.into_entries() {
        let Value::Text(key) = key else { continue };
        let slot = match key.as_str() {
            "rk" => &mut options.rk,
            "up" => &mut options.up,
            "uv" => &mut options.uv,
            // Unknown options are ignored (§6.1.1), but must still be booleans.
            _ => {
                expect_bool(value)?;
                continue;
            }
        };
        *slot = Some(expect_bool(value)?);
    }
    Ok(options)
}

fn pin_uv_auth(param: Option<Value>, protocol: Option<Value>) -> CtapResult<Option<PinUvAuth>> {
    let protocol = protocol.map(expect_uint).transpose()?;
    match param {
        Some(v) => Ok(Some(PinUvAuth { param: expect_bytes(v)?, protocol })),
        None => Ok(None),
    }
}

/// The extensions map: text keys; unknown extensions are ignored (§6.1.1).
fn extension_entries(value: Option<Value>) -> CtapResult<Vec<(String, Value)>> {
    let Some(v) = value else { return Ok(Vec::new()) };
    expect_map(v)?.into_entries().into_iter().map(|(k, v)| Ok((expect_text(k)?, v))).collect()
}

fn make_credential_extensions(value: Option<Value>) -> CtapResult<MakeCredentialExtensions> {
    let mut out = MakeCredentialExtensions::default();
    for (name, value) in extension_entries(value)? {
        match name.as_str() {
            "credProtect" => {
                let level = expect_uint(value)?;
                out.cred_protect = Some(match level {
                    1..=3 => level as u8,
                    _ => return Err(StatusCode::InvalidParameter),
                });
            }
            "hmac-secret" => out.hmac_secret = expect_bool(value)?,
            "hmac-secret-mc" => out.hmac_secret_mc = Some(hmac_secret_input(value)?),
            "credBlob" => out.cred_blob = Some(expect_bytes(value)?),
            "largeBlobKey" => {
                // Only `true` is meaningful (§12.3); false is an invalid option.
                if !expect_bool(value)? {
                    return Err(StatusCode::InvalidOption);
                }
                out.large_blob_key = true;
            }
            "minPinLength" => out.min_pin_length = expect_bool(value)?,
            "thirdPartyPayment" => out.third_party_payment = Some(expect_bool(value)?),
            _ => {}
        }
    }
    Ok(out)
}

fn hmac_secret_input(value: Value) -> CtapResult<HmacSecretInput> {
    let mut map = expect_map(value)?;
    let key_agreement = map.required(0x01)?;
    let salt_enc = expect_bytes(map.required(0x02)?)?;
    let salt_auth = expect_bytes(map.required(0x03)?)?;
    let protocol = map.take(0x04).map(expect_uint).transpose()?;
    Ok(HmacSecretInput { key_agreement, salt_enc, salt_auth, protocol })
}

fn get_assertion_extensions(value: Option<Value>) -> CtapResult<GetAssertionExtensions> {
    let mut out = GetAssertionExtensions::default();
    for (name, value) in extension_entries(value)? {
        match name.as_str() {
            "hmac-secret" => out.hmac_secret = Some(hmac_secret_input(value)?),
            "credBlob" => out.cred_blob = expect_bool(value)?,
            "thirdPartyPayment" => out.third_party_payment = expect_bool(value)?,
            "largeBlobKey" => {
                if !expect_bool(value)? {
                    return Err(StatusCode::InvalidOption);
                }
                out.large_blob_key = true;
            }
            _ => {}
        }
    }
    Ok(out)
}

impl MakeCredentialRequest {
    pub fn parse(params: &[u8]) -> CtapResult<Self> {
        let mut map = ParamMap::decode(params)?;
        let client_data_hash = client_data_hash(map.required(0x01)?)?;
        let rp = rp_entity(map.required(0x02)?)?;
        let user = user_entity(map.required(0x03)?)?;
        let algorithms = algorithms(map.required(0x04)?)?;
        let exclude_list = map.take(0x05).map(descriptor_list).transpose()?.unwrap_or_default();
        let extensions = make_credential_extensions(map.take(0x06))?;
        let options = map.take(0x07).map(options).transpose()?.unwrap_or_default();
        let pin_uv_auth = pin_uv_auth(map.take(0x08), map.take(0x09))?;
        let enterprise_attestation = map.take(0x0A).map(expect_uint).transpose()?;
        let attestation_formats_preference = map
            .take(0x0B)
            .map(|v| expect_array(v)?.into_iter().map(expect_text).collect::<CtapResult<Vec<_>>>())
            .transpose()?
            .unwrap_or_default();
        Ok(Self {
            client_data_hash,
            rp,
            user,
            algorithms,
            exclude_list,
            options,
            pin_uv_auth,
            enterprise_attestation,
            attestation_formats_preference,
            extensions,
        })
    }
}

impl GetAssertionRequest {
    pub fn parse(params: &[u8]) -> CtapResult<Self> {
        let mut map = ParamMap::decode(params)?;
        let rp_id = expect_text(map.required(0x01)?)?;
        let client_data_hash = client_data_hash(map.required(0x02)?)?;
        let allow_list = map.take(0x03).map(descriptor_list).transpose()?.unwrap_or_default();
        let extensions = get_assertion_extensions(map.take(0x04))?;
        let options = map.take(0x05).map(options).transpose()?.unwrap_or_default();
        let pin_uv_auth = pin_uv_auth(map.take(0x06), map.take(0x07))?;
        Ok(Self { rp_id, client_data_hash, allow_list, options, pin_uv_auth, extensions })
    }
}
