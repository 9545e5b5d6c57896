//! PIN/UV auth protocols one and two (CTAP 2.1 §6.5.6, §6.5.7): the key
//! agreement key, the shared secret's KDF, AES-256-CBC and HMAC-SHA-256
//! exactly as the spec defines them.

use aes::cipher::block_padding::NoPadding;
use aes::cipher::{BlockModeDecrypt, BlockModeEncrypt, KeyIvInit};
use ciborium::value::Value;
use hkdf::Hkdf;
use hmac::{Hmac, KeyInit, Mac};
use p256::elliptic_curve::sec1::ToSec1Point;
use p256::elliptic_curve::Generate;
use p256::{PublicKey as P256PublicKey, SecretKey};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use crate::cbor::{self, expect_bytes, expect_int, MapBuilder, ParamMap};
use crate::status::{CtapResult, StatusCode};

type Aes256CbcEnc = cbc::Encryptor<aes::Aes256>;
type Aes256CbcDec = cbc::Decryptor<aes::Aes256>;
type HmacSha256 = Hmac<Sha256>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PinUvAuthProtocol {
    One,
    Two,
}

impl PinUvAuthProtocol {
    /// The protocols this authenticator implements, in order of preference.
    pub const SUPPORTED: [PinUvAuthProtocol; 2] = [PinUvAuthProtocol::Two, PinUvAuthProtocol::One];

    pub fn from_id(id: u64) -> CtapResult<Self> {
        match id {
            1 => Ok(Self::One),
            2 => Ok(Self::Two),
            // §6.5.5.1: an unsupported protocol is an invalid parameter.
            _ => Err(StatusCode::InvalidParameter),
        }
    }

    pub fn id(self) -> u64 {
        match self {
            Self::One => 1,
            Self::Two => 2,
        }
    }

    /// authenticate(key, message): protocol one keeps the first 16 bytes.
    pub fn authenticate(self, key: &[u8], message: &[u8]) -> Vec<u8> {
        let mut tag = hmac_sha256(key, message).to_vec();
        if self == Self::One {
            tag.truncate(16);
        }
        tag
    }

    /// verify(key, message, signature), in constant time. The signature must
    /// have exactly the length `authenticate` produces.
    pub fn verify(self, key: &[u8], message: &[u8], signature: &[u8]) -> bool {
        let expected = self.authenticate(key, message);
        expected.len() == signature.len() && bool::from(expected.ct_eq(signature))
    }
}

pub fn hmac_sha256(key: &[u8], message: &[u8]) -> [u8; 32] {
    // HMAC accepts keys of any length; new_from_slice cannot fail.
    let mut mac = <HmacSha256 as KeyInit>::new_from_slice(key).unwrap_or_else(|_| unreachable_hmac());
    mac.update(message);
    mac.finalize().into_bytes().into()
}

#[cold]
fn unreachable_hmac() -> HmacSha256 {
    // HMAC-SHA-256 accepts every key length (RFC 2104); this is never reached.
    <HmacSha256 as KeyInit>::new(&Default::default())
}

/// The authenticator's key agreement key (§6.5.6 "initialize"/"regenerate").
pub struct KeyAgreementKey {
    secret: SecretKey,
}

impl KeyAgreementKey {
    pub fn generate() -> CtapResult<Self> {
        SecretKey::try_generate().map(|secret| Self { secret }).map_err(|_| StatusCode::Other)
    }

    /// getPublicKey(): COSE_Key {1: 2, 3: -25, -1: 1, -2: x, -3: y}.
    pub fn cose_public_key(&self) -> Value {
        let point = self.secret.public_key().to_sec1_point(false);
        let x = point.x().map(|x| x.to_vec()).unwrap_or_default();
        let y = point.y().map(|y| y.to_vec()).unwrap_or_default();
        MapBuilder::new().int(1, 2).int(3, -25).int(-1, 1).int(-2, cbor::bytes(x)).int(-3, cbor::bytes(y)).build()
    }

    /// decapsulate(peerCoseKey) → the shared secret for `protocol`.
    pub fn shared_secret(&self, protocol: PinUvAuthProtocol, peer_cose_key: Value) -> CtapResult<SharedSecret> {
        let peer = parse_cose_p256(peer_cose_key)?;
        let z = p256::ecdh::diffie_hellman(self.secret.to_nonzero_scalar(), peer.as_affine());
        Ok(SharedSecret::derive(protocol, z.raw_secret_bytes().as_slice()))
    }
}

/// A platform's COSE_Key: kty EC2, crv P-256, a point on the curve.
fn parse_cose_p256(value: Value) -> CtapResult<P256PublicKey> {
    let mut map = ParamMap::from_value(value)?;
    let kty = expect_int(map.required(1)?)?;
    let crv = expect_int(map.required(-1)?)?;
    let x = expect_bytes(map.required(-2)?)?;
    let y = expect_bytes(map.required(-3)?)?;
    if let Some(alg) = map.take(3) {
        // Platforms send -25 (ECDH-ES+HKDF-256); anything else is not ours.
        if expect_int(alg)? != -25 {
            return Err(StatusCode::InvalidParameter);
        }
    }
    if kty != 2 || crv != 1 || x.len() != 32 || y.len() != 32 {
        return Err(StatusCode::InvalidParameter);
    }
    let mut sec1 = Vec::with_capacity(65);
    sec1.push(0x04);
    sec1.extend_from_slice(&x);
    sec1.extend_from_slice(&y);
    P256PublicKey::from_sec1_bytes(&sec1).map_err(|_| StatusCode::InvalidParameter)
}

/// The keys derived from the ECDH shared point's x-coordinate Z.
pub struct SharedSecret {
    pub protocol: PinUvAuthProtocol,
    hmac_key: Zeroizing<[u8; 32]>,
    aes_key: Zeroizing<[u8; 32]>,
}

impl SharedSecret {
    /// KDF(Z): protocol one SHA-256(Z) for both keys; protocol two
    /// HKDF-SHA-256 with a zero salt and the info strings of §6.5.7.
    pub fn derive(protocol: PinUvAuthProtocol, z: &[u8]) -> Self {
        let mut hmac_key = Zeroizing::new([0u8; 32]);
        let mut aes_key = Zeroizing::new([0u8; 32]);
        match protocol {
            PinUvAuthProtocol::One => {
                let digest: [u8; 32] = Sha256::digest(z).into();
                *hmac_key = digest;
                *aes_key = digest;
            }
            PinUvAuthProtocol::Two => {
                let hkdf = Hkdf::<Sha256>::new(Some(&[0u8; 32]), z);
                // 32-byte outputs never exceed HKDF's limit.
                let _ = hkdf.expand(b"CTAP2 HMAC key", hmac_key.as_mut());
                let _ = hkdf.expand(b"CTAP2 AES key", aes_key.as_mut());
            }
        }
        Self { protocol, hmac_key, aes_key }
    }

    /// encrypt(key, demPlaintext): AES-256-CBC; protocol one with a zero IV,
    /// protocol two with a random IV in front of the ciphertext.
    pub fn encrypt(&self, plaintext: &[u8]) -> CtapResult<Vec<u8>> {
        if !plaintext.len().is_multiple_of(16) {
            return Err(StatusCode::Other);
        }
        let mut iv = [0u8; 16];
        if self.protocol == PinUvAuthProtocol::Two {
            getrandom::fill(&mut iv).map_err(|_| StatusCode::Other)?;
        }
        let mut buffer = plaintext.to_vec();
        let len = buffer.len();
        Aes256CbcEnc::new((&*self.aes_key).into(), (&iv).into())
            .encrypt_padded::<NoPadding>(&mut buffer, len)
            .map_err(|_| StatusCode::Other)?;
        if self.protocol == PinUvAuthProtocol::Two {
            let mut out = iv.to_vec();
            out.extend_from_slice(&buffer);
            return Ok(out);
        }
        Ok(buffer)
    }

    /// decrypt(key, demCiphertext). A length that is not whole blocks (or,
    /// for protocol two, lacks the IV) is an error.
    pub fn decrypt(&self, ciphertext: &[u8]) -> CtapResult<Zeroizing<Vec<u8>>> {
        let (iv, body) = match self.protocol {
            PinUvAuthProtocol::One => ([0u8; 16], ciphertext),
            PinUvAuthProtocol::Two => {
                if ciphertext.len() < 16 {
                    return Err(StatusCode::InvalidParameter);
                }
                let (iv, body) = ciphertext.split_at(16);
                let iv: [u8; 16] = iv.try_into().map_err(|_| StatusCode::InvalidParameter)?;
                (iv, body)
            }
        };
        if body.is_empty() || !body.len().is_multiple_of(16) {
            return Err(StatusCode::InvalidParameter);
        }
        let mut buffer = Zeroizing::new(body.to_vec());
        Aes256CbcDec::new((&*self.aes_key).into(), (&iv).into())
            .decrypt_padded::<NoPadding>(&mut buffer)
            .map_err(|_| StatusCode::InvalidParameter)?;
        Ok(buffer)
    }

    pub fn authenticate(&self, message: &[u8]) -> Vec<u8> {
        self.protocol.authenticate(self.hmac_key.as_ref(), message)
    }

    pub fn verify(&self, message: &[u8], signature: &[u8]) -> bool {
        self.protocol.verify(self.hmac_key.as_ref(), message, signature)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Plays the platform's side of §6.5.6: its own key, the shared secret.
    fn platform_side(authenticator: &KeyAgreementKey, protocol: PinUvAuthProtocol) -> (Value, SharedSecret) {
        let platform = SecretKey::try_generate().unwrap();
        let point = platform.public_key().to_sec1_point(false);
        let cose = MapBuilder::new()
            .int(1, 2)
            .int(3, -25)
            .int(-1, 1)
            .int(-2, cbor::bytes(point.x().unwrap().to_vec()))
            .int(-3, cbor::bytes(point.y().unwrap().to_vec()))
            .build();
        let mut map = ParamMap::from_value(authenticator.cose_public_key()).unwrap();
        let x = expect_bytes(map.required(-2).unwrap()).unwrap();
        let y = expect_bytes(map.required(-3).unwrap()).unwrap();
        let mut sec1 = vec![4u8];
        sec1.extend(x);
        sec1.extend(y);
        let peer = P256PublicKey::from_sec1_bytes(&sec1).unwrap();
        let z = p256::ecdh::diffie_hellman(platform.to_nonzero_scalar(), peer.as_affine());
        (cose, SharedSecret::derive(protocol, z.raw_secret_bytes().as_slice()))
    }

    #[test]
    fn both_sides_agree_for_both_protocols() {
        let key = KeyAgreementKey::generate().unwrap();
        for protocol in PinUvAuthProtocol::SUPPORTED {
            let (cose, platform) = platform_side(&key, protocol);
            let ours = key.shared_secret(protocol, cose).unwrap();
            let ciphertext = platform.encrypt(&[7u8; 64]).unwrap();
            assert_eq!(ciphertext.len(), if protocol == PinUvAuthProtocol::One { 64 } else { 80 });
            assert_eq!(ours.decrypt(&ciphertext).unwrap().as_slice(), &[7u8; 64]);
            let tag = platform.authenticate(b"message");
            assert_eq!(tag.len(), if protocol == PinUvAuthProtocol::One { 16 } else { 32 });
            assert!(ours.verify(b"message", &tag));
            assert!(!ours.verify(b"other", &tag));
            assert!(!ours.verify(b"message", &tag[..tag.len() - 1]));
        }
    }

    #[test]
    fn protocol_one_kdf_is_sha256_of_z() {
        let s = SharedSecret::derive(PinUvAuthProtocol::One, &[1u8; 32]);
        let expected: [u8; 32] = Sha256::digest([1u8; 32]).into();
        assert_eq!(*s.hmac_key, expected);
        assert_eq!(*s.aes_key, expected);
    }

    #[test]
    fn protocol_two_kdf_is_hkdf_with_zero_salt() {
        // Independently: HKDF-Extract(salt = 0^32, Z) then one Expand block,
        // T(1) = HMAC(PRK, info ‖ 0x01).
        let z = [1u8; 32];
        let prk = hmac_sha256(&[0u8; 32], &z);
        let mut info = b"CTAP2 HMAC key".to_vec();
        info.push(1);
        let s = SharedSecret::derive(PinUvAuthProtocol::Two, &z);
        assert_eq!(*s.hmac_key, hmac_sha256(&prk, &info));
        let mut info = b"CTAP2 AES key".to_vec();
        info.push(1);
        assert_eq!(*s.aes_key, hmac_sha256(&prk, &info));
    }

    #[test]
    fn hmac_sha256_rfc4231_case_2() {
        let tag = hmac_sha256(b"Jefe", b"what do ya want for nothing?");
        assert_eq!(tag[..4], [0x5b, 0xdc, 0xc1, 0x46]);
        assert_eq!(tag[28..], [0x64, 0xec, 0x38, 0x43]);
    }

    #[test]
    fn bad_peer_keys_are_invalid_parameters() {
        let key = KeyAgreementKey::generate().unwrap();
        let off_curve = MapBuilder::new()
            .int(1, 2)
            .int(3, -25)
            .int(-1, 1)
            .int(-2, cbor::bytes(vec![1u8; 32]))
            .int(-3, cbor::bytes(vec![2u8; 32]))
            .build();
        assert_eq!(key.shared_secret(PinUvAuthProtocol::Two, off_curve).err(), Some(StatusCode::InvalidParameter));
        let missing_y = MapBuilder::new().int(1, 2).int(-1, 1).int(-2, cbor::bytes(vec![1u8; 32])).build();
        assert_eq!(key.shared_secret(PinUvAuthProtocol::Two, missing_y).err(), Some(StatusCode::MissingParameter));
        let text_x = MapBuilder::new().int(1, 2).int(-1, 1).int(-2, "x").int(-3, cbor::bytes(vec![2u8; 32])).build();
        assert_eq!(key.shared_secret(PinUvAuthProtocol::One, text_x).err(), Some(StatusCode::CborUnexpectedType));
        assert_eq!(
            key.shared_secret(PinUvAuthProtocol::One, Value::from(3)).err(),
            Some(StatusCode::CborUnexpectedType)
        );
    }

    #[test]
    fn decrypt_rejects_partial_blocks() {
        for protocol in PinUvAuthProtocol::SUPPORTED {
            let s = SharedSecret::derive(protocol, &[3u8; 32]);
            assert!(s.decrypt(&[0u8; 15]).is_err());
            assert!(s.decrypt(&[]).is_err());
            assert!(s.decrypt(&[0u8; 33]).is_err());
        }
        assert!(SharedSecret::derive(PinUvAuthProtocol::Two, &[3u8; 32]).decrypt(&[0u8; 16]).is_err());
    }
}
