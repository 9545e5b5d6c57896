//! The platform's side of CTAP 2.1: PIN/UV auth protocols one and two
//! (§6.5.6, §6.5.7), clientPIN (§6.5.5), hmac-secret (§12.5) and the
//! pinUvAuthParam messages of credential management (§6.8), large blobs
//! (§6.10) and authenticatorConfig (§6.11).
//!
//! Written from the specification, independently of
//! `fidoseal_ctap::pin_protocol` (which it must never call): if both sides
//! shared a mistake, the tests would not see it. The primitives are checked
//! against published known-answer tests (RFC 4231, RFC 5869, NIST SP 800-38A)
//! in this module's unit tests, so a failure in an end-to-end test points at
//! the authenticator, not at this client.

use aes::cipher::{BlockCipherDecrypt, BlockCipherEncrypt, KeyInit};
use ciborium::value::Value;
use hmac::{Hmac, Mac};
use p256::elliptic_curve::sec1::ToSec1Point;
use sha2::{Digest, Sha256};

use crate::Device;

/// CTAP2 command bytes used here (§6).
pub mod command {
    pub const MAKE_CREDENTIAL: u8 = 0x01;
    pub const GET_ASSERTION: u8 = 0x02;
    pub const GET_INFO: u8 = 0x04;
    pub const CLIENT_PIN: u8 = 0x06;
    pub const RESET: u8 = 0x07;
    pub const GET_NEXT_ASSERTION: u8 = 0x08;
    pub const CREDENTIAL_MANAGEMENT: u8 = 0x0A;
    pub const SELECTION: u8 = 0x0B;
    pub const LARGE_BLOBS: u8 = 0x0C;
    pub const CONFIG: u8 = 0x0D;
}

/// authenticatorConfig subcommands (§6.11).
/// authenticatorCredentialManagement subcommands (§6.8).
pub mod credential_management_subcommand {
    pub const GET_CREDS_METADATA: u8 = 0x01;
    pub const ENUMERATE_RPS_BEGIN: u8 = 0x02;
    pub const ENUMERATE_RPS_GET_NEXT_RP: u8 = 0x03;
    pub const ENUMERATE_CREDENTIALS_BEGIN: u8 = 0x04;
    pub const ENUMERATE_CREDENTIALS_GET_NEXT_CREDENTIAL: u8 = 0x05;
    pub const DELETE_CREDENTIAL: u8 = 0x06;
    pub const UPDATE_USER_INFORMATION: u8 = 0x07;
}

pub mod config_subcommand {
    pub const ENABLE_ENTERPRISE_ATTESTATION: u8 = 0x01;
    pub const TOGGLE_ALWAYS_UV: u8 = 0x02;
    pub const SET_MIN_PIN_LENGTH: u8 = 0x03;
}

/// clientPIN subcommands (§6.5.5).
pub mod pin_subcommand {
    pub const GET_PIN_RETRIES: u8 = 0x01;
    pub const GET_KEY_AGREEMENT: u8 = 0x02;
    pub const SET_PIN: u8 = 0x03;
    pub const CHANGE_PIN: u8 = 0x04;
    pub const GET_PIN_TOKEN: u8 = 0x05;
    pub const GET_PIN_UV_AUTH_TOKEN_USING_UV_WITH_PERMISSIONS: u8 = 0x06;
    pub const GET_UV_RETRIES: u8 = 0x07;
    pub const GET_PIN_UV_AUTH_TOKEN_USING_PIN_WITH_PERMISSIONS: u8 = 0x09;
}

/// pinUvAuthToken permissions (§6.5.5.7).
pub mod permission {
    pub const MC: u8 = 0x01;
    pub const GA: u8 = 0x02;
    pub const CM: u8 = 0x04;
    pub const BE: u8 = 0x08;
    pub const LBW: u8 = 0x10;
    pub const ACFG: u8 = 0x20;
    /// pcmr: the persistent read-only credential management token (CTAP 2.2).
    pub const PCMR: u8 = 0x40;
}

/// A PIN/UV auth protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    One,
    Two,
}

impl Protocol {
    pub const BOTH: [Protocol; 2] = [Protocol::One, Protocol::Two];

    pub fn id(self) -> u8 {
        match self {
            Protocol::One => 1,
            Protocol::Two => 2,
        }
    }

    /// Length of authenticate()'s output: 16 bytes for one, 32 for two.
    pub fn tag_len(self) -> usize {
        match self {
            Protocol::One => 16,
            Protocol::Two => 32,
        }
    }
}

// ---------------------------------------------------------------------------
// Primitives

pub fn sha256(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

/// HMAC-SHA-256 (RFC 2104).
pub fn hmac_sha256(key: &[u8], message: &[u8]) -> [u8; 32] {
    let mut mac = <Hmac<Sha256> as hmac::KeyInit>::new_from_slice(key).expect("HMAC takes keys of any length");
    mac.update(message);
    mac.finalize().into_bytes().into()
}

/// HKDF-SHA-256 (RFC 5869), extract then expand, written out here.
pub fn hkdf_sha256(salt: &[u8], ikm: &[u8], info: &[u8], length: usize) -> Vec<u8> {
    assert!(length <= 255 * 32, "HKDF output too long");
    let prk = hmac_sha256(salt, ikm);
    let mut okm = Vec::with_capacity(length);
    let mut previous: Vec<u8> = Vec::new();
    let mut counter = 1u8;
    while okm.len() < length {
        let mut input = previous.clone();
        input.extend_from_slice(info);
        input.push(counter);
        previous = hmac_sha256(&prk, &input).to_vec();
        okm.extend_from_slice(&previous);
        counter += 1;
    }
    okm.truncate(length);
    okm
}

/// AES-256-CBC without padding, chaining written out over the block cipher.
pub fn aes256_cbc_encrypt(key: &[u8; 32], iv: &[u8; 16], plaintext: &[u8]) -> Vec<u8> {
    assert_eq!(plaintext.len() % 16, 0, "CBC input must be whole blocks");
    let cipher = aes::Aes256::new_from_slice(key).expect("32-byte key");
    let mut chain = *iv;
    let mut out = Vec::with_capacity(plaintext.len());
    for block in plaintext.chunks(16) {
        let mut b = aes::Block::default();
        for i in 0..16 {
            b[i] = block[i] ^ chain[i];
        }
        cipher.encrypt_block(&mut b);
        chain.copy_from_slice(&b);
        out.extend_from_slice(&b);
    }
    out
}

pub fn aes256_cbc_decrypt(key: &[u8; 32], iv: &[u8; 16], ciphertext: &[u8]) -> Vec<u8> {
    assert_eq!(ciphertext.len() % 16, 0, "CBC input must be whole blocks");
    let cipher = aes::Aes256::new_from_slice(key).expect("32-byte key");
    let mut chain = *iv;
    let mut out = Vec::with_capacity(ciphertext.len());
    for block in ciphertext.chunks(16) {
        let mut b = aes::Block::default();
        b.copy_from_slice(block);
        cipher.decrypt_block(&mut b);
        for i in 0..16 {
            out.push(b[i] ^ chain[i]);
        }
        chain.copy_from_slice(block);
    }
    out
}

/// getInfo's encIdentifier (CTAP 2.2 §6.4) decrypted with a persistent
/// token: iv ‖ AES-128-CBC(HKDF-SHA-256(32 zero bytes, token,
/// "encIdentifier", 16), iv, identifier); python-fido2's
/// `Info.get_identifier` does the same.
pub fn decrypt_enc_identifier(token: &PinToken, enc_identifier: &[u8]) -> Vec<u8> {
    assert_eq!(enc_identifier.len(), 32, "iv and one block");
    let key = hkdf_sha256(&[0u8; 32], &token.value, b"encIdentifier", 16);
    let cipher = aes::Aes128::new_from_slice(&key).expect("16-byte key");
    let mut block = aes::Block::default();
    block.copy_from_slice(&enc_identifier[16..]);
    cipher.decrypt_block(&mut block);
    block.iter().zip(&enc_identifier[..16]).map(|(b, iv)| b ^ iv).collect()
}

pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut out = [0u8; N];
    getrandom::fill(&mut out).expect("operating system randomness");
    out
}

/// authenticate(key, message) (§6.5.6 / §6.5.7): HMAC-SHA-256, truncated to
/// 16 bytes for protocol one.
pub fn authenticate(protocol: Protocol, key: &[u8], message: &[u8]) -> Vec<u8> {
    let mut tag = hmac_sha256(key, message).to_vec();
    tag.truncate(protocol.tag_len());
    tag
}

// ---------------------------------------------------------------------------
// Canonical CBOR (§8): map keys sorted by their encoded bytes. Values built
// with ciborium get the shortest heads; only the key order needs fixing.

pub fn to_bytes(value: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    ciborium::ser::into_writer(value, &mut out).expect("a Value always serializes");
    out
}

/// `value` with every map's keys in CTAP2 canonical order.
pub fn canonical(value: Value) -> Value {
    match value {
        Value::Map(entries) => {
            let mut entries: Vec<(Vec<u8>, Value, Value)> = entries
                .into_iter()
                .map(|(k, v)| {
                    let k = canonical(k);
                    (to_bytes(&k), k, canonical(v))
                })
                .collect();
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            Value::Map(entries.into_iter().map(|(_, k, v)| (k, v)).collect())
        }
        Value::Array(items) => Value::Array(items.into_iter().map(canonical).collect()),
        other => other,
    }
}

/// The CTAP2 canonical encoding of `value`.
pub fn encode(value: &Value) -> Vec<u8> {
    to_bytes(&canonical(value.clone()))
}

fn int_map(entries: Vec<(i64, Value)>) -> Value {
    canonical(Value::Map(entries.into_iter().map(|(k, v)| (Value::from(k), v)).collect()))
}

fn map_get(map: &Value, key: i64) -> Option<&Value> {
    map.as_map()?.iter().find(|(k, _)| k == &Value::from(key)).map(|(_, v)| v)
}

fn as_bytes(v: Option<&Value>) -> Option<Vec<u8>> {
    v.and_then(Value::as_bytes).cloned()
}

// ---------------------------------------------------------------------------
// Key agreement (§6.5.6 "encapsulate")

/// Parses the authenticator's key agreement key: COSE_Key
/// {1: 2 (EC2), 3: -25 (ECDH-ES+HKDF-256), -1: 1 (P-256), -2: x, -3: y}.
/// Panics, naming the field, when it is not exactly that.
pub fn parse_cose_p256(cose: &Value) -> p256::PublicKey {
    assert_eq!(map_get(cose, 1), Some(&Value::from(2)), "kty must be EC2 (2): {cose:?}");
    assert_eq!(map_get(cose, 3), Some(&Value::from(-25)), "alg must be ECDH-ES+HKDF-256 (-25): {cose:?}");
    assert_eq!(map_get(cose, -1), Some(&Value::from(1)), "crv must be P-256 (1): {cose:?}");
    let x = as_bytes(map_get(cose, -2)).expect("x coordinate");
    let y = as_bytes(map_get(cose, -3)).expect("y coordinate");
    assert_eq!((x.len(), y.len()), (32, 32), "coordinates are 32 bytes");
    let mut sec1 = vec![4u8];
    sec1.extend(x);
    sec1.extend(y);
    p256::PublicKey::from_sec1_bytes(&sec1).expect("a point on P-256")
}

/// The keys shared with the authenticator, and the platform key to send.
#[derive(Clone)]
pub struct SharedSecret {
    pub protocol: Protocol,
    pub hmac_key: [u8; 32],
    pub aes_key: [u8; 32],
    /// The platform's COSE_Key for the keyAgreement parameter.
    pub platform_key: Value,
}

impl SharedSecret {
    /// KDF(Z): protocol one SHA-256(Z) for both keys; protocol two
    /// HKDF-SHA-256(salt = 32 zero bytes, Z, "CTAP2 HMAC key" / "CTAP2 AES key").
    pub fn from_z(protocol: Protocol, z: &[u8], platform_key: Value) -> Self {
        let (hmac_key, aes_key) = match protocol {
            Protocol::One => (sha256(z), sha256(z)),
            Protocol::Two => {
                let salt = [0u8; 32];
                let h: [u8; 32] = hkdf_sha256(&salt, z, b"CTAP2 HMAC key", 32).try_into().unwrap();
                let a: [u8; 32] = hkdf_sha256(&salt, z, b"CTAP2 AES key", 32).try_into().unwrap();
                (h, a)
            }
        };
        Self { protocol, hmac_key, aes_key, platform_key }
    }

    /// encrypt(): zero IV for one; a random IV in front for two.
    pub fn encrypt(&self, plaintext: &[u8]) -> Vec<u8> {
        match self.protocol {
            Protocol::One => aes256_cbc_encrypt(&self.aes_key, &[0; 16], plaintext),
            Protocol::Two => {
                let iv: [u8; 16] = random_bytes();
                let mut out = iv.to_vec();
                out.extend(aes256_cbc_encrypt(&self.aes_key, &iv, plaintext));
                out
            }
        }
    }

    pub fn decrypt(&self, ciphertext: &[u8]) -> Vec<u8> {
        match self.protocol {
            Protocol::One => aes256_cbc_decrypt(&self.aes_key, &[0; 16], ciphertext),
            Protocol::Two => {
                assert!(ciphertext.len() >= 16, "protocol two ciphertext starts with its IV");
                let (iv, body) = ciphertext.split_at(16);
                aes256_cbc_decrypt(&self.aes_key, iv.try_into().unwrap(), body)
            }
        }
    }

    pub fn authenticate(&self, message: &[u8]) -> Vec<u8> {
        authenticate(self.protocol, &self.hmac_key, message)
    }
}

/// encapsulate(peerCoseKey): a fresh platform key, ECDH with the
/// authenticator's key, Z = the shared point's x-coordinate, then the KDF.
pub fn encapsulate(protocol: Protocol, authenticator_key: &Value) -> SharedSecret {
    let peer = parse_cose_p256(authenticator_key);
    let secret = loop {
        if let Ok(k) = p256::SecretKey::from_slice(&random_bytes::<32>()) {
            break k;
        }
    };
    let point = secret.public_key().to_sec1_point(false);
    let platform_key = int_map(vec![
        (1, Value::from(2)),
        (3, Value::from(-25)),
        (-1, Value::from(1)),
        (-2, Value::Bytes(point.x().expect("uncompressed").to_vec())),
        (-3, Value::Bytes(point.y().expect("uncompressed").to_vec())),
    ]);
    let z = p256::ecdh::diffie_hellman(secret.to_nonzero_scalar(), peer.as_affine());
    SharedSecret::from_z(protocol, z.raw_secret_bytes().as_slice(), platform_key)
}

/// getKeyAgreement (§6.5.5.4): the authenticator's COSE key, unchecked.
pub fn get_key_agreement(d: &mut Device, cid: u32, protocol: Protocol) -> (u8, Option<Value>) {
    let request = int_map(vec![(1, Value::from(protocol.id())), (2, Value::from(pin_subcommand::GET_KEY_AGREEMENT))]);
    let (status, body) = d.ctap(cid, command::CLIENT_PIN, Some(request));
    (status, body.and_then(|b| map_get(&b, 1).cloned()))
}

/// getKeyAgreement, then encapsulate: a shared secret with the device.
pub fn key_agreement(d: &mut Device, cid: u32, protocol: Protocol) -> SharedSecret {
    let (status, key) = get_key_agreement(d, cid, protocol);
    assert_eq!(status, 0, "getKeyAgreement");
    encapsulate(protocol, &key.expect("keyAgreement in the response"))
}

// ---------------------------------------------------------------------------
// clientPIN (§6.5.5)

/// A pinUvAuthToken as the platform holds it.
#[derive(Clone, Debug)]
pub struct PinToken {
    pub protocol: Protocol,
    pub value: Vec<u8>,
}

impl PinToken {
    /// authenticate(pinUvAuthToken, message).
    pub fn param(&self, message: &[u8]) -> Vec<u8> {
        authenticate(self.protocol, &self.value, message)
    }
}

/// pinUvAuthParam = authenticate(token, message).
pub fn pin_uv_auth_param(token: &PinToken, message: &[u8]) -> Vec<u8> {
    token.param(message)
}

/// A PIN padded with zero bytes to 64 bytes (§6.5.5.5). PINs of 64 bytes
/// or more are returned unpadded, for tests of the limits.
pub fn pad_pin(pin: &[u8]) -> Vec<u8> {
    let mut padded = pin.to_vec();
    if padded.len() < 64 {
        padded.resize(64, 0);
    }
    padded
}

/// LEFT(SHA-256(pin), 16).
pub fn pin_hash(pin: &[u8]) -> [u8; 16] {
    sha256(pin)[..16].try_into().unwrap()
}

fn client_pin_map(ss: &SharedSecret, subcommand: u8, mut extra: Vec<(i64, Value)>) -> Value {
    let mut entries =
        vec![(1, Value::from(ss.protocol.id())), (2, Value::from(subcommand)), (3, ss.platform_key.clone())];
    entries.append(&mut extra);
    int_map(entries)
}

/// setPIN with an already padded (or deliberately malformed) new PIN block:
/// newPinEnc = encrypt(padded), pinUvAuthParam = authenticate(newPinEnc).
pub fn set_pin_request(ss: &SharedSecret, padded_new_pin: &[u8]) -> Value {
    let new_pin_enc = ss.encrypt(padded_new_pin);
    let auth = ss.authenticate(&new_pin_enc);
    client_pin_map(ss, pin_subcommand::SET_PIN, vec![(4, Value::Bytes(auth)), (5, Value::Bytes(new_pin_enc))])
}

/// changePIN: pinHashEnc = encrypt(LEFT(SHA-256(current), 16)),
/// pinUvAuthParam = authenticate(newPinEnc ‖ pinHashEnc).
pub fn change_pin_request(ss: &SharedSecret, current_pin: &[u8], padded_new_pin: &[u8]) -> Value {
    let new_pin_enc = ss.encrypt(padded_new_pin);
    let pin_hash_enc = ss.encrypt(&pin_hash(current_pin));
    let mut message = new_pin_enc.clone();
    message.extend_from_slice(&pin_hash_enc);
    let auth = ss.authenticate(&message);
    client_pin_map(
        ss,
        pin_subcommand::CHANGE_PIN,
        vec![(4, Value::Bytes(auth)), (5, Value::Bytes(new_pin_enc)), (6, Value::Bytes(pin_hash_enc))],
    )
}

/// getPinToken (0x05) when `permissions` is None, otherwise
/// getPinUvAuthTokenUsingPinWithPermissions (0x09).
pub fn pin_token_request(ss: &SharedSecret, pin: &[u8], permissions: Option<u8>, rp_id: Option<&str>) -> Value {
    let pin_hash_enc = ss.encrypt(&pin_hash(pin));
    let mut extra = vec![(6, Value::Bytes(pin_hash_enc))];
    let subcommand = match permissions {
        None => pin_subcommand::GET_PIN_TOKEN,
        Some(p) => {
            extra.push((9, Value::from(p)));
            pin_subcommand::GET_PIN_UV_AUTH_TOKEN_USING_PIN_WITH_PERMISSIONS
        }
    };
    if let Some(rp) = rp_id {
        extra.push((0x0A, Value::from(rp)));
    }
    client_pin_map(ss, subcommand, extra)
}

pub fn set_pin_padded(d: &mut Device, cid: u32, protocol: Protocol, padded: &[u8]) -> u8 {
    let ss = key_agreement(d, cid, protocol);
    d.ctap(cid, command::CLIENT_PIN, Some(set_pin_request(&ss, padded))).0
}

/// setPIN; returns the status byte.
pub fn set_pin(d: &mut Device, cid: u32, protocol: Protocol, pin: &str) -> u8 {
    set_pin_padded(d, cid, protocol, &pad_pin(pin.as_bytes()))
}

/// changePIN; returns the status byte.
pub fn change_pin(d: &mut Device, cid: u32, protocol: Protocol, current: &str, new: &str) -> u8 {
    let ss = key_agreement(d, cid, protocol);
    d.ctap(cid, command::CLIENT_PIN, Some(change_pin_request(&ss, current.as_bytes(), &pad_pin(new.as_bytes())))).0
}

/// Sends a token request made with `ss` and decrypts the token.
pub fn request_token(d: &mut Device, cid: u32, ss: &SharedSecret, request: Value) -> Result<PinToken, u8> {
    let (status, body) = d.ctap(cid, command::CLIENT_PIN, Some(request));
    if status != 0 {
        return Err(status);
    }
    let encrypted = as_bytes(body.as_ref().and_then(|b| map_get(b, 2))).expect("pinUvAuthToken (0x02)");
    let expected = match ss.protocol {
        Protocol::One => 32,
        Protocol::Two => 48,
    };
    assert_eq!(encrypted.len(), expected, "encrypted pinUvAuthToken length");
    let value = ss.decrypt(&encrypted);
    assert_eq!(value.len(), 32, "pinUvAuthToken is 32 bytes");
    Ok(PinToken { protocol: ss.protocol, value })
}

/// getPinToken (0x05): a legacy token (mc and ga).
pub fn get_pin_token(d: &mut Device, cid: u32, protocol: Protocol, pin: &str) -> Result<PinToken, u8> {
    let ss = key_agreement(d, cid, protocol);
    request_token(d, cid, &ss, pin_token_request(&ss, pin.as_bytes(), None, None))
}

/// getPinUvAuthTokenUsingPinWithPermissions (0x09).
pub fn get_pin_uv_auth_token_with_permissions(
    d: &mut Device,
    cid: u32,
    protocol: Protocol,
    pin: &str,
    permissions: u8,
    rp_id: Option<&str>,
) -> Result<PinToken, u8> {
    let ss = key_agreement(d, cid, protocol);
    request_token(d, cid, &ss, pin_token_request(&ss, pin.as_bytes(), Some(permissions), rp_id))
}

/// getPINRetries: (pinRetries, powerCycleState).
pub fn get_pin_retries(d: &mut Device, cid: u32) -> (u64, Option<bool>) {
    let request = int_map(vec![(2, Value::from(pin_subcommand::GET_PIN_RETRIES))]);
    let (status, body) = d.ctap(cid, command::CLIENT_PIN, Some(request));
    assert_eq!(status, 0, "getPINRetries");
    let body = body.expect("getPINRetries body");
    let retries = map_get(&body, 3).and_then(|v| v.as_integer()).map(|i| u64::try_from(i).unwrap());
    let power_cycle = map_get(&body, 4).and_then(Value::as_bool);
    (retries.expect("pinRetries (0x03)"), power_cycle)
}

// ---------------------------------------------------------------------------
// hmac-secret (§12.5)

/// hmac-secret's getAssertion input {1: keyAgreement, 2: saltEnc,
/// 3: saltAuth, 4: pinUvAuthProtocol}; salts are 32 or 64 bytes (or any
/// length, for error tests). `send_protocol` false omits key 4, which
/// means protocol one.
pub fn hmac_secret_input(ss: &SharedSecret, salts: &[u8], send_protocol: bool) -> Value {
    let salt_enc = ss.encrypt(salts);
    let salt_auth = ss.authenticate(&salt_enc);
    let mut entries = vec![(1, ss.platform_key.clone()), (2, Value::Bytes(salt_enc)), (3, Value::Bytes(salt_auth))];
    if send_protocol {
        entries.push((4, Value::from(ss.protocol.id())));
    }
    int_map(entries)
}

/// The getAssertion extensions map {"hmac-secret": input}.
pub fn hmac_secret_extension(ss: &SharedSecret, salts: &[u8]) -> Value {
    Value::Map(vec![(Value::from("hmac-secret"), hmac_secret_input(ss, salts, true))])
}

/// Decrypts hmac-secret's output: 32 or 64 bytes of HMAC-SHA-256(CredRandom, salt).
pub fn decrypt_hmac_secret_output(ss: &SharedSecret, output: &[u8]) -> Vec<u8> {
    let expected_overhead = match ss.protocol {
        Protocol::One => 0,
        Protocol::Two => 16,
    };
    assert!(
        output.len() == 32 + expected_overhead || output.len() == 64 + expected_overhead,
        "hmac-secret output of {} bytes for protocol {:?}",
        output.len(),
        ss.protocol
    );
    ss.decrypt(output)
}

// ---------------------------------------------------------------------------
// Credential management (§6.8), authenticatorConfig (§6.11), large blobs (§6.10)

/// authenticatorCredentialManagement parameters; with a token, pinUvAuthParam
/// = authenticate(token, subCommand ‖ subCommandParams).
pub fn cred_mgmt_request(token: Option<&PinToken>, sub_command: u8, params: Option<Value>) -> Value {
    let params = params.map(canonical);
    let mut entries = vec![(1, Value::from(sub_command))];
    if let Some(p) = &params {
        entries.push((2, p.clone()));
    }
    if let Some(token) = token {
        let mut message = vec![sub_command];
        if let Some(p) = &params {
            message.extend(encode(p));
        }
        entries.push((3, Value::from(token.protocol.id())));
        entries.push((4, Value::Bytes(token.param(&message))));
    }
    int_map(entries)
}

/// authenticatorConfig parameters; with a token, pinUvAuthParam =
/// authenticate(token, 32×0xff ‖ 0x0d ‖ uint8(subCommand) ‖ subCommandParams).
pub fn config_request(token: Option<&PinToken>, sub_command: u8, params: Option<Value>) -> Value {
    let params = params.map(canonical);
    let mut entries = vec![(1, Value::from(sub_command))];
    if let Some(p) = &params {
        entries.push((2, p.clone()));
    }
    if let Some(token) = token {
        let mut message = vec![0xff; 32];
        message.push(command::CONFIG);
        message.push(sub_command);
        if let Some(p) = &params {
            message.extend(encode(p));
        }
        entries.push((3, Value::from(token.protocol.id())));
        entries.push((4, Value::Bytes(token.param(&message))));
    }
    int_map(entries)
}

/// largeBlobs get: {1: get, 3: offset}.
pub fn large_blobs_get(get: u64, offset: u64) -> Value {
    int_map(vec![(1, Value::from(get)), (3, Value::from(offset))])
}

/// The pinUvAuthParam message of a large-blob write:
/// 32×0xff ‖ 0x0c 0x00 ‖ uint32LE(offset) ‖ SHA-256(fragment).
pub fn large_blob_message(offset: u32, fragment: &[u8]) -> Vec<u8> {
    let mut message = vec![0xff; 32];
    message.extend_from_slice(&[command::LARGE_BLOBS, 0x00]);
    message.extend_from_slice(&offset.to_le_bytes());
    message.extend_from_slice(&sha256(fragment));
    message
}

/// largeBlobs set: {2: set, 3: offset, 4: length (offset 0 only),
/// 5: pinUvAuthParam, 6: pinUvAuthProtocol}.
pub fn large_blobs_set(token: Option<&PinToken>, fragment: &[u8], offset: u64, length: Option<u64>) -> Value {
    let mut entries = vec![(2, Value::Bytes(fragment.to_vec())), (3, Value::from(offset))];
    if let Some(l) = length {
        entries.push((4, Value::from(l)));
    }
    if let Some(token) = token {
        let message = large_blob_message(u32::try_from(offset).expect("offsets fit 32 bits"), fragment);
        entries.push((5, Value::Bytes(token.param(&message))));
        entries.push((6, Value::from(token.protocol.id())));
    }
    int_map(entries)
}

/// A serialized large-blob array: the CBOR array followed by
/// LEFT(SHA-256(array), 16) (§6.10.2).
pub fn serialized_large_blob_array(array: &Value) -> Vec<u8> {
    let mut out = encode(array);
    let check = sha256(&out);
    out.extend_from_slice(&check[..16]);
    out
}

// ---------------------------------------------------------------------------
// makeCredential / getAssertion helpers

/// The clientDataHash values `crate::requests` puts in requests.
pub const MC_CLIENT_DATA_HASH: [u8; 32] = [0x11; 32];
pub const GA_CLIENT_DATA_HASH: [u8; 32] = [0x22; 32];

/// makeCredential's pinUvAuthParam (0x08) and pinUvAuthProtocol (0x09),
/// authenticating the harness's clientDataHash.
pub fn mc_auth(token: &PinToken) -> Vec<(i64, Value)> {
    vec![(8, Value::Bytes(token.param(&MC_CLIENT_DATA_HASH))), (9, Value::from(token.protocol.id()))]
}

/// getAssertion's pinUvAuthParam (0x06) and pinUvAuthProtocol (0x07).
pub fn ga_auth(token: &PinToken) -> Vec<(i64, Value)> {
    vec![(6, Value::Bytes(token.param(&GA_CLIENT_DATA_HASH))), (7, Value::from(token.protocol.id()))]
}

/// Authenticator data, parsed (WebAuthn §6.1).
#[derive(Debug, Clone)]
pub struct AuthData {
    pub rp_id_hash: [u8; 32],
    pub flags: u8,
    pub sign_count: u32,
    pub credential_id: Option<Vec<u8>>,
    pub credential_key: Option<Value>,
    /// The extension outputs map, when the ED flag is set.
    pub extensions: Option<Value>,
}

impl AuthData {
    pub const UP: u8 = 0x01;
    pub const UV: u8 = 0x04;
    pub const AT: u8 = 0x40;
    pub const ED: u8 = 0x80;

    /// The output of one extension, by name.
    pub fn extension(&self, name: &str) -> Option<&Value> {
        self.extensions.as_ref()?.as_map()?.iter().find(|(k, _)| k == &Value::from(name)).map(|(_, v)| v)
    }
}

/// Parses authenticator data, checking that nothing trails it.
pub fn parse_auth_data(data: &[u8]) -> AuthData {
    assert!(data.len() >= 37, "authData too short: {} bytes", data.len());
    let flags = data[32];
    let mut rest = &data[37..];
    let (mut credential_id, mut credential_key, mut extensions) = (None, None, None);
    if flags & AuthData::AT != 0 {
        let len = usize::from(u16::from_be_bytes([rest[16], rest[17]]));
        credential_id = Some(rest[18..18 + len].to_vec());
        rest = &rest[18 + len..];
        let key: Value = ciborium::de::from_reader(&mut rest).expect("credential public key");
        credential_key = Some(key);
    }
    if flags & AuthData::ED != 0 {
        let ext: Value = ciborium::de::from_reader(&mut rest).expect("extension outputs");
        assert!(ext.is_map(), "extension outputs are a map");
        extensions = Some(ext);
    }
    assert!(rest.is_empty(), "{} bytes after authData", rest.len());
    AuthData {
        rp_id_hash: data[..32].try_into().unwrap(),
        flags,
        sign_count: u32::from_be_bytes(data[33..37].try_into().unwrap()),
        credential_id,
        credential_key,
        extensions,
    }
}

/// getPinUvAuthTokenUsingUvWithPermissions (0x06): the user verifies on
/// the authenticator's side (built-in UV) instead of the platform sending a PIN.
pub fn uv_token_request(ss: &SharedSecret, permissions: u8, rp_id: Option<&str>) -> Value {
    let mut extra = vec![(9, Value::from(permissions))];
    if let Some(rp) = rp_id {
        extra.push((0x0A, Value::from(rp)));
    }
    client_pin_map(ss, 0x06, extra)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        let s: String = s.split_whitespace().collect();
        (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
    }

    #[test]
    fn hmac_sha256_matches_rfc4231_test_case_1() {
        let tag = hmac_sha256(&[0x0b; 20], b"Hi There");
        assert_eq!(tag.to_vec(), hex("b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7"));
        // Protocol one keeps the first 16 bytes, two all 32.
        assert_eq!(authenticate(Protocol::One, &[0x0b; 20], b"Hi There"), tag[..16].to_vec());
        assert_eq!(authenticate(Protocol::Two, &[0x0b; 20], b"Hi There"), tag.to_vec());
    }

    #[test]
    fn hkdf_sha256_matches_rfc5869_test_case_1() {
        let ikm = [0x0b; 22];
        let salt = hex("000102030405060708090a0b0c");
        let info = hex("f0f1f2f3f4f5f6f7f8f9");
        let okm = hkdf_sha256(&salt, &ikm, &info, 42);
        assert_eq!(okm, hex("3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865"));
        // And the PRK of the same test case, through the extract step alone.
        assert_eq!(
            hmac_sha256(&salt, &ikm).to_vec(),
            hex("077709362c2e32df0ddc3f0dc47bba6390b6c73bb50f9c3122ec844ad7c2b3e5")
        );
    }

    #[test]
    fn aes256_cbc_matches_nist_sp800_38a_f_2_5() {
        let key: [u8; 32] = hex("603deb1015ca71be2b73aef0857d77811f352c073b6108d72d9810a30914dff4").try_into().unwrap();
        let iv: [u8; 16] = hex("000102030405060708090a0b0c0d0e0f").try_into().unwrap();
        let plaintext = hex("6bc1bee22e409f96e93d7e117393172a ae2d8a571e03ac9c9eb76fac45af8e51");
        let ciphertext = hex("f58c4c04d6e5f1ba779eabfb5f7bfbd6 9cfc4e967edb808d679f777bc6702c7d");
        assert_eq!(aes256_cbc_encrypt(&key, &iv, &plaintext), ciphertext);
        assert_eq!(aes256_cbc_decrypt(&key, &iv, &ciphertext), plaintext);
    }

    #[test]
    fn kdf_one_is_sha256_of_z_and_two_is_hkdf_with_zero_salt() {
        let z = [7u8; 32];
        let one = SharedSecret::from_z(Protocol::One, &z, Value::Null);
        assert_eq!(one.hmac_key, sha256(&z));
        assert_eq!(one.aes_key, sha256(&z));
        let two = SharedSecret::from_z(Protocol::Two, &z, Value::Null);
        // One HKDF-Expand block: T(1) = HMAC(PRK, info ‖ 0x01).
        let prk = hmac_sha256(&[0u8; 32], &z);
        assert_eq!(two.hmac_key, hmac_sha256(&prk, b"CTAP2 HMAC key\x01"));
        assert_eq!(two.aes_key, hmac_sha256(&prk, b"CTAP2 AES key\x01"));
        assert_ne!(two.hmac_key, two.aes_key);
    }

    #[test]
    fn encrypt_decrypt_round_trip_and_iv_placement() {
        for protocol in Protocol::BOTH {
            let ss = SharedSecret::from_z(protocol, &[9u8; 32], Value::Null);
            let ct = ss.encrypt(&[5u8; 64]);
            assert_eq!(ct.len(), if protocol == Protocol::One { 64 } else { 80 });
            assert_eq!(ss.decrypt(&ct), vec![5u8; 64]);
        }
        // Protocol one's zero IV makes equal plaintexts encrypt equally; two's random IV does not.
        let one = SharedSecret::from_z(Protocol::One, &[9u8; 32], Value::Null);
        assert_eq!(one.encrypt(&[1; 16]), one.encrypt(&[1; 16]));
        let two = SharedSecret::from_z(Protocol::Two, &[9u8; 32], Value::Null);
        assert_ne!(two.encrypt(&[1; 16]), two.encrypt(&[1; 16]));
    }

    #[test]
    fn ecdh_agrees_between_two_parties() {
        // Both ends of encapsulate derive the same Z (x-coordinate of the shared point).
        let a = p256::SecretKey::from_slice(&[3u8; 32]).unwrap();
        let point = a.public_key().to_sec1_point(false);
        let cose = int_map(vec![
            (1, Value::from(2)),
            (3, Value::from(-25)),
            (-1, Value::from(1)),
            (-2, Value::Bytes(point.x().unwrap().to_vec())),
            (-3, Value::Bytes(point.y().unwrap().to_vec())),
        ]);
        let ss = encapsulate(Protocol::Two, &cose);
        let platform_public = parse_cose_p256(&ss.platform_key);
        let z = p256::ecdh::diffie_hellman(a.to_nonzero_scalar(), platform_public.as_affine());
        let other = SharedSecret::from_z(Protocol::Two, z.raw_secret_bytes().as_slice(), Value::Null);
        assert_eq!(ss.hmac_key, other.hmac_key);
        assert_eq!(ss.aes_key, other.aes_key);
    }

    #[test]
    fn canonical_orders_keys_by_encoded_bytes() {
        let v = Value::Map(vec![
            (Value::from(-1), Value::from(0)),
            (Value::from("type"), Value::from(0)),
            (Value::from(24), Value::from(0)),
            (Value::from("id"), Value::from(0)),
            (Value::from(1), Value::from(0)),
        ]);
        let keys: Vec<Value> = canonical(v).as_map().unwrap().iter().map(|(k, _)| k.clone()).collect();
        assert_eq!(
            keys,
            vec![Value::from(1), Value::from(24), Value::from(-1), Value::from("id"), Value::from("type")]
        );
    }

    #[test]
    fn empty_large_blob_array_serializes_to_the_spec_value() {
        assert_eq!(serialized_large_blob_array(&Value::Array(vec![])), hex("8076be8b528d0075f7aae98d6fa57a6d3c"));
    }
}
