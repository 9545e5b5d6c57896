//! Authenticator data and COSE keys (WebAuthn §6.1 "Authenticator Data",
//! §6.5.1 "Attested Credential Data"; RFC 9052/9053 for COSE_Key).

use ciborium::value::Value;
use sha2::{Digest, Sha256};

use crate::cbor::{self, MapBuilder};
use crate::platform::PublicKey;

/// Authenticator data flags (WebAuthn §6.1).
pub mod flags {
    pub const USER_PRESENT: u8 = 0x01;
    pub const USER_VERIFIED: u8 = 0x04;
    pub const ATTESTED_CREDENTIAL_DATA: u8 = 0x40;
    pub const EXTENSION_DATA: u8 = 0x80;
}

pub fn rp_id_hash(rp_id: &str) -> [u8; 32] {
    Sha256::digest(rp_id.as_bytes()).into()
}

/// The COSE_Key of a credential public key.
pub fn cose_key(public_key: &PublicKey) -> Value {
    match public_key {
        // kty EC2 (2), alg ES256 (-7), crv P-256 (1), x, y.
        PublicKey::P256 { x, y } => MapBuilder::new()
            .int(1, 2)
            .int(3, -7)
            .int(-1, 1)
            .int(-2, cbor::bytes(x.to_vec()))
            .int(-3, cbor::bytes(y.to_vec()))
            .build(),
        // kty EC2 (2), alg ES384 (-35), crv P-384 (2), x, y (RFC 9053 §2.1, §7.1).
        PublicKey::P384 { x, y } => MapBuilder::new()
            .int(1, 2)
            .int(3, -35)
            .int(-1, 2)
            .int(-2, cbor::bytes(x.to_vec()))
            .int(-3, cbor::bytes(y.to_vec()))
            .build(),
        // kty OKP (1), alg EdDSA (-8), crv Ed25519 (6), x (RFC 8152 §13.2).
        PublicKey::Ed25519(x) => {
            MapBuilder::new().int(1, 1).int(3, -8).int(-1, 6).int(-2, cbor::bytes(x.to_vec())).build()
        }
    }
}

pub struct AttestedCredential<'a> {
    pub aaguid: &'a [u8; 16],
    pub credential_id: &'a [u8],
    pub public_key: &'a PublicKey,
}

/// Serializes authenticator data; `attested` adds the AT flag and data,
/// `extensions` (a CBOR map of extension outputs) the ED flag and map.
pub fn authenticator_data(
    rp_id_hash: &[u8; 32],
    mut flag_bits: u8,
    signature_counter: u32,
    attested: Option<&AttestedCredential<'_>>,
    extensions: Option<Value>,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(37 + attested.map_or(0, |a| 18 + a.credential_id.len() + 77));
    if attested.is_some() {
        flag_bits |= flags::ATTESTED_CREDENTIAL_DATA;
    }
    if extensions.is_some() {
        flag_bits |= flags::EXTENSION_DATA;
    }
    out.extend_from_slice(rp_id_hash);
    out.push(flag_bits);
    out.extend_from_slice(&signature_counter.to_be_bytes());
    if let Some(a) = attested {
        out.extend_from_slice(a.aaguid);
        // Credential IDs are kept ≤ 255 bytes, so this always fits.
        out.extend_from_slice(&(a.credential_id.len() as u16).to_be_bytes());
        out.extend_from_slice(a.credential_id);
        out.extend_from_slice(&cbor::encode(cose_key(a.public_key)));
    }
    if let Some(e) = extensions {
        out.extend_from_slice(&cbor::encode(e));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_without_attested_data() {
        let data = authenticator_data(&[0xAA; 32], flags::USER_PRESENT, 0x01020304, None, None);
        assert_eq!(data.len(), 37);
        assert_eq!(data[32], 0x01);
        assert_eq!(&data[33..], &[1, 2, 3, 4]);
    }

    #[test]
    fn layout_with_attested_data() {
        let key = PublicKey::P256 { x: [1; 32], y: [2; 32] };
        let aaguid = [9u8; 16];
        let id = [5u8; 20];
        let data = authenticator_data(
            &[0; 32],
            flags::USER_PRESENT,
            7,
            Some(&AttestedCredential { aaguid: &aaguid, credential_id: &id, public_key: &key }),
            None,
        );
        assert_eq!(data[32], flags::USER_PRESENT | flags::ATTESTED_CREDENTIAL_DATA);
        assert_eq!(&data[37..53], &aaguid);
        assert_eq!(&data[53..55], &[0, 20]);
        assert_eq!(&data[55..75], &id);
        // COSE key: map of 5, keys 1, 3, -1, -2, -3 in canonical order.
        assert_eq!(&data[75..82], &[0xa5, 0x01, 0x02, 0x03, 0x26, 0x20, 0x01]);
        assert_eq!(data.len(), 75 + 77);
    }

    #[test]
    fn p384_keys_are_ec2_es384_on_curve_2() {
        let key = PublicKey::P384 { x: [1; 48], y: [2; 48] };
        let encoded = cbor::encode(cose_key(&key));
        // Map of 5: kty 2, alg -35 (0x38 0x22), crv 2, x and y of 48 bytes (0x58 0x30).
        assert_eq!(&encoded[..9], &[0xa5, 0x01, 0x02, 0x03, 0x38, 0x22, 0x20, 0x02, 0x21]);
        assert_eq!(&encoded[9..11], &[0x58, 0x30]);
        assert_eq!(&encoded[11..59], &[1; 48]);
        assert_eq!(&encoded[59..62], &[0x22, 0x58, 0x30]);
        assert_eq!(encoded.len(), 62 + 48);
    }

    #[test]
    fn extensions_set_the_ed_flag_and_follow() {
        let ext = MapBuilder::new().text("credProtect", 2).build();
        let data = authenticator_data(&[0; 32], 0, 1, None, Some(ext));
        assert_eq!(data[32], flags::EXTENSION_DATA);
        assert_eq!(&data[37..], &cbor::encode(MapBuilder::new().text("credProtect", 2).build())[..]);
    }

    #[test]
    fn rp_id_hash_is_sha256() {
        // SHA-256("example.com")
        assert_eq!(rp_id_hash("example.com")[..4], [0xa3, 0x79, 0xa6, 0xf6]);
    }
}
