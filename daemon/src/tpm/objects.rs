//! The TPM objects of the key store: their fixed templates, and the compact
//! key handle that carries a credential key from one use to the next.
//!
//! Three kinds of object, all under the owner hierarchy, all `fixedTPM`,
//! `fixedParent`, `sensitiveDataOrigin` (the TPM made the secret), `userWithAuth`
//! with an empty auth value, and `noDA` (STACK-NOTES: dictionary-attack
//! lockout is TPM-wide; the CTAP PIN retry counter lives in the daemon):
//!
//! - the storage primary: ECC P-256, restricted decrypt, AES-128-CFB, its
//!   `unique.x` a random 32-byte "generation" kept in the state file. The TPM
//!   derives a primary key from the owner seed and the whole template, so the
//!   same generation gives the same key after every restart, and a new
//!   generation (authenticatorReset) gives a new parent under which no old
//!   blob loads any more;
//! - one HMAC-SHA-256 key (keyedhash) per generation: the store's PRF,
//!   never outside the TPM in the clear;
//! - one ECC signing key per credential: P-256 ECDSA-SHA-256 (ES256), or
//!   P-384 ECDSA-SHA-384 (ES384) when the TPM has that curve.

use tss_esapi::attributes::ObjectAttributesBuilder;
use tss_esapi::constants::tss::{TPM2_RH_NULL, TPM2_ST_HASHCHECK};
use tss_esapi::interface_types::algorithm::{HashingAlgorithm, PublicAlgorithm};
use tss_esapi::interface_types::ecc::EccCurve;
use tss_esapi::structures::{
    Digest, EccParameter, EccPoint, EccScheme, HashScheme, HashcheckTicket, KeyedHashScheme, Private, Public,
    PublicBuilder, PublicEccParametersBuilder, PublicKeyedHashParameters, SymmetricDefinitionObject,
};
use tss_esapi::tss2_esys::TPMT_TK_HASHCHECK;

use fidoseal_ctap::platform::PublicKey;

/// First byte of a P-256 key handle: the compact form (`| 1` when y is odd)…
const KEY_HANDLE_COMPACT: u8 = 0x50;
/// …or the long form, for a TPM that returns unpadded coordinates.
const KEY_HANDLE_LONG: u8 = 0x54;
/// The same two forms for a P-384 key (0x58 'X', 0x5C); a P-256 form never
/// decodes as a P-384 key nor the other way round.
const KEY_HANDLE_P384_COMPACT: u8 = 0x58;
const KEY_HANDLE_P384_LONG: u8 = 0x5C;
/// Largest TPM2B_PRIVATE we accept (sizeof(_PRIVATE) in tpm2-tss).
const MAX_PRIVATE: usize = 1024;

/// The curve of a credential key, and with it its signature hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Curve {
    /// ES256: ECDSA on P-256 with SHA-256.
    P256,
    /// ES384: ECDSA on P-384 with SHA-384.
    P384,
}

impl Curve {
    pub fn coordinate_len(self) -> usize {
        match self {
            Curve::P256 => 32,
            Curve::P384 => 48,
        }
    }

    fn tpm_curve(self) -> EccCurve {
        match self {
            Curve::P256 => EccCurve::NistP256,
            Curve::P384 => EccCurve::NistP384,
        }
    }

    fn hash(self) -> HashingAlgorithm {
        match self {
            Curve::P256 => HashingAlgorithm::Sha256,
            Curve::P384 => HashingAlgorithm::Sha384,
        }
    }

    fn compact_form(self) -> u8 {
        match self {
            Curve::P256 => KEY_HANDLE_COMPACT,
            Curve::P384 => KEY_HANDLE_P384_COMPACT,
        }
    }

    fn long_form(self) -> u8 {
        match self {
            Curve::P256 => KEY_HANDLE_LONG,
            Curve::P384 => KEY_HANDLE_P384_LONG,
        }
    }
}

fn attributes(restricted_decrypt: bool) -> tss_esapi::Result<tss_esapi::attributes::ObjectAttributes> {
    ObjectAttributesBuilder::new()
        .with_fixed_tpm(true)
        .with_fixed_parent(true)
        .with_sensitive_data_origin(true)
        .with_user_with_auth(true)
        .with_no_da(true)
        .with_restricted(restricted_decrypt)
        .with_decrypt(restricted_decrypt)
        .with_sign_encrypt(!restricted_decrypt)
        .build()
}

/// The storage primary's template for a generation.
pub fn primary_template(generation: &[u8; 32]) -> tss_esapi::Result<Public> {
    PublicBuilder::new()
        .with_public_algorithm(PublicAlgorithm::Ecc)
        .with_name_hashing_algorithm(HashingAlgorithm::Sha256)
        .with_object_attributes(attributes(true)?)
        .with_ecc_parameters(
            PublicEccParametersBuilder::new_restricted_decryption_key(
                SymmetricDefinitionObject::AES_128_CFB,
                EccCurve::NistP256,
            )
            .build()?,
        )
        .with_ecc_unique_identifier(EccPoint::new(
            EccParameter::try_from(generation.to_vec())?,
            EccParameter::try_from(vec![0u8; 32])?,
        ))
        .build()
}

/// The PRF key's template.
pub fn hmac_key_template() -> tss_esapi::Result<Public> {
    PublicBuilder::new()
        .with_public_algorithm(PublicAlgorithm::KeyedHash)
        .with_name_hashing_algorithm(HashingAlgorithm::Sha256)
        .with_object_attributes(attributes(false)?)
        .with_keyed_hash_parameters(PublicKeyedHashParameters::new(KeyedHashScheme::HMAC_SHA_256))
        .with_keyed_hash_unique_identifier(Digest::default())
        .build()
}

/// A P-256 credential key's public area: the fixed template with the point
/// the TPM generated (empty coordinates for TPM2_Create).
pub fn credential_key_public(x: &[u8], y: &[u8]) -> tss_esapi::Result<Public> {
    credential_key_public_on(Curve::P256, x, y)
}

/// [`credential_key_public`] on `curve`: ECDSA with the curve's hash, the
/// attributes of every credential key.
pub fn credential_key_public_on(curve: Curve, x: &[u8], y: &[u8]) -> tss_esapi::Result<Public> {
    PublicBuilder::new()
        .with_public_algorithm(PublicAlgorithm::Ecc)
        .with_name_hashing_algorithm(HashingAlgorithm::Sha256)
        .with_object_attributes(attributes(false)?)
        .with_ecc_parameters(
            PublicEccParametersBuilder::new_unrestricted_signing_key(
                EccScheme::EcDsa(HashScheme::new(curve.hash())),
                curve.tpm_curve(),
            )
            .build()?,
        )
        .with_ecc_unique_identifier(EccPoint::new(
            EccParameter::try_from(x.to_vec())?,
            EccParameter::try_from(y.to_vec())?,
        ))
        .build()
}

/// `public` as an object of a generation bound to the boot state
/// (pcr_policy.rs): authPolicy = `policy` and no `userWithAuth`, so that
/// only a policy session authorizes it. `None`: unchanged.
pub fn bound(public: Public, policy: Option<&[u8]>) -> tss_esapi::Result<Public> {
    let Some(policy) = policy else {
        return Ok(public);
    };
    let digest = Digest::try_from(policy.to_vec())?;
    // TPMA_OBJECT.userWithAuth is bit 6 (Part 2, 8.3.2).
    let unset_user_with_auth = |attributes: tss_esapi::attributes::ObjectAttributes| {
        tss_esapi::attributes::ObjectAttributes::from(tss_esapi::tss2_esys::TPMA_OBJECT::from(attributes) & !(1 << 6))
    };
    Ok(match public {
        Public::Ecc { object_attributes, name_hashing_algorithm, parameters, unique, .. } => Public::Ecc {
            object_attributes: unset_user_with_auth(object_attributes),
            name_hashing_algorithm,
            auth_policy: digest,
            parameters,
            unique,
        },
        Public::KeyedHash { object_attributes, name_hashing_algorithm, parameters, unique, .. } => Public::KeyedHash {
            object_attributes: unset_user_with_auth(object_attributes),
            name_hashing_algorithm,
            auth_policy: digest,
            parameters,
            unique,
        },
        other => other,
    })
}

/// "This digest was not made by the TPM": allowed for unrestricted keys.
pub fn null_hashcheck_ticket() -> tss_esapi::Result<HashcheckTicket> {
    HashcheckTicket::try_from(TPMT_TK_HASHCHECK {
        tag: TPM2_ST_HASHCHECK,
        hierarchy: TPM2_RH_NULL,
        digest: Default::default(),
    })
}

/// A credential key as the TPM wrapped it: its public point and its
/// TPM2B_PRIVATE (the sensitive area encrypted and integrity-protected with
/// the primary's seed; useless to anyone but this TPM under this primary).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyBlob {
    pub curve: Curve,
    pub x: Vec<u8>,
    pub y: Vec<u8>,
    pub private: Vec<u8>,
}

impl KeyBlob {
    /// Takes the blob out of TPM2_Create's answer, checking that the public
    /// area is exactly our template (so that it can be rebuilt from x, y).
    pub fn from_created(public: &Public, private: &Private) -> Result<Self, String> {
        Self::from_created_bound(public, private, None)
    }

    /// [`Self::from_created`] for a key of a generation bound to the boot
    /// state (pcr_policy.rs): its template carries `policy`.
    pub fn from_created_bound(public: &Public, private: &Private, policy: Option<&[u8]>) -> Result<Self, String> {
        let Public::Ecc { unique, parameters, .. } = public else {
            return Err("TPM2_Create returned a non-ECC public area".into());
        };
        let curve = match parameters.ecc_curve() {
            EccCurve::NistP256 => Curve::P256,
            EccCurve::NistP384 => Curve::P384,
            other => return Err(format!("TPM2_Create returned a key on {other:?}")),
        };
        let blob = KeyBlob {
            curve,
            x: unique.x().value().to_vec(),
            y: unique.y().value().to_vec(),
            private: private.value().to_vec(),
        };
        let rebuilt = blob.public_bound(policy).map_err(|e| format!("cannot rebuild the public area: {e}"))?;
        if &rebuilt != public {
            return Err("TPM2_Create returned a public area that differs from the template".into());
        }
        Ok(blob)
    }

    pub fn public(&self) -> tss_esapi::Result<Public> {
        credential_key_public_on(self.curve, &self.x, &self.y)
    }

    pub fn public_bound(&self, policy: Option<&[u8]>) -> tss_esapi::Result<Public> {
        bound(self.public()?, policy)
    }

    pub fn private(&self) -> tss_esapi::Result<Private> {
        Private::try_from(self.private.clone())
    }

    /// The P-256 coordinates left-padded to 32 bytes (TPMs may drop leading
    /// zeros); `None` for a P-384 key.
    pub fn coordinates(&self) -> Option<([u8; 32], [u8; 32])> {
        if self.curve != Curve::P256 {
            return None;
        }
        Some((pad(&self.x)?, pad(&self.y)?))
    }

    /// The credential public key, coordinates left-padded.
    pub fn public_key(&self) -> Option<PublicKey> {
        Some(match self.curve {
            Curve::P256 => PublicKey::P256 { x: pad(&self.x)?, y: pad(&self.y)? },
            Curve::P384 => PublicKey::P384 { x: pad(&self.x)?, y: pad(&self.y)? },
        })
    }

    /// The key handle. Compact form, whenever the TPM gave 32-byte
    /// coordinates (always, in practice): `0x50 | y parity` ‖ x ‖ TPM2B_PRIVATE
    /// contents, y being recomputed from x on use — 159 bytes on swtpm
    /// (private 126 = integrity 2+32, IV 2+16, encrypted sensitive 2+72).
    /// Long form otherwise: `0x54 | len(x) | x | len(y) | y | private`, so
    /// that the public area is rebuilt byte for byte as the TPM made it.
    /// A P-384 key has the same two forms with 0x58 (`| 1` for an odd y) and
    /// 0x5C, its x 48 bytes: 191 bytes on swtpm (private 142).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(3 + self.x.len() + self.y.len() + self.private.len());
        let coordinate = self.curve.coordinate_len();
        if self.x.len() == coordinate && self.y.len() == coordinate {
            out.push(self.curve.compact_form() | (self.y[coordinate - 1] & 1));
            out.extend_from_slice(&self.x);
        } else {
            out.push(self.curve.long_form());
            out.push(self.x.len() as u8);
            out.extend_from_slice(&self.x);
            out.push(self.y.len() as u8);
            out.extend_from_slice(&self.y);
        }
        out.extend_from_slice(&self.private);
        out
    }

    /// Parses a key handle; `None` for anything this store did not make
    /// (including an x that is not on the curve).
    pub fn decode(handle: &[u8]) -> Option<Self> {
        let (&format, rest) = handle.split_first()?;
        let (curve, compact) = match format {
            KEY_HANDLE_COMPACT | 0x51 => (Curve::P256, true),
            KEY_HANDLE_LONG => (Curve::P256, false),
            KEY_HANDLE_P384_COMPACT | 0x59 => (Curve::P384, true),
            KEY_HANDLE_P384_LONG => (Curve::P384, false),
            _ => return None,
        };
        let coordinate = curve.coordinate_len();
        let (x, y, private) = match compact {
            true => {
                if rest.len() <= coordinate {
                    return None;
                }
                let (x, private) = rest.split_at(coordinate);
                (x.to_vec(), decompress_y(curve, x, format & 1 == 1)?, private)
            }
            false => {
                let (&x_len, rest) = rest.split_first()?;
                let x_len = usize::from(x_len);
                if x_len == 0 || x_len > coordinate || rest.len() < x_len + 1 {
                    return None;
                }
                let (x, rest) = rest.split_at(x_len);
                let (&y_len, rest) = rest.split_first()?;
                let y_len = usize::from(y_len);
                if y_len == 0 || y_len > coordinate || rest.len() <= y_len {
                    return None;
                }
                let (y, private) = rest.split_at(y_len);
                (x.to_vec(), y.to_vec(), private)
            }
        };
        if private.len() > MAX_PRIVATE {
            return None;
        }
        Some(KeyBlob { curve, x, y, private: private.to_vec() })
    }
}

/// The y coordinate of the point on `curve` with this x and y parity.
fn decompress_y(curve: Curve, x: &[u8], odd: bool) -> Option<Vec<u8>> {
    let mut sec1 = vec![if odd { 3 } else { 2 }];
    sec1.extend_from_slice(x);
    let y = match curve {
        Curve::P256 => p256::ecdsa::VerifyingKey::from_sec1_bytes(&sec1).ok()?.to_sec1_point(false).y()?.to_vec(),
        Curve::P384 => p384::ecdsa::VerifyingKey::from_sec1_bytes(&sec1).ok()?.to_sec1_point(false).y()?.to_vec(),
    };
    Some(y)
}

/// `value` left-padded to N bytes.
fn pad<const N: usize>(value: &[u8]) -> Option<[u8; N]> {
    if value.len() > N {
        return None;
    }
    let mut out = [0u8; N];
    out[N - value.len()..].copy_from_slice(value);
    Some(out)
}

/// DER `ECDSA-Sig-Value ::= SEQUENCE { r INTEGER, s INTEGER }` from the
/// TPM's big-endian r and s (of any length up to the curve's 32 or 48 bytes).
pub fn der_signature(curve: Curve, r: &[u8], s: &[u8]) -> Option<Vec<u8>> {
    Some(match curve {
        Curve::P256 => {
            let signature = p256::ecdsa::Signature::from_scalars(pad::<32>(r)?, pad::<32>(s)?).ok()?;
            signature.to_der().as_bytes().to_vec()
        }
        Curve::P384 => {
            let signature = p384::ecdsa::Signature::from_scalars(pad::<48>(r)?, pad::<48>(s)?).ok()?;
            signature.to_der().as_bytes().to_vec()
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn real_point(seed: u8) -> (Vec<u8>, Vec<u8>) {
        let key = p256::ecdsa::SigningKey::from_slice(&[seed; 32]).unwrap();
        let point = p256::ecdsa::VerifyingKey::from(&key).to_sec1_point(false);
        (point.x().unwrap().to_vec(), point.y().unwrap().to_vec())
    }

    #[test]
    fn compact_key_handles_round_trip_for_both_parities() {
        let mut parities = std::collections::HashSet::new();
        for seed in 1..=8 {
            let (x, y) = real_point(seed);
            parities.insert(y[31] & 1);
            let blob = KeyBlob { curve: Curve::P256, x, y, private: vec![3; 126] };
            let encoded = blob.encode();
            assert_eq!(encoded.len(), 1 + 32 + 126);
            assert_eq!(KeyBlob::decode(&encoded), Some(blob));
        }
        assert_eq!(parities.len(), 2, "both parities were tried");
    }

    #[test]
    fn key_handles_reject_garbage() {
        let (x, y) = real_point(1);
        let compact = KeyBlob { curve: Curve::P256, x: x.clone(), y, private: vec![3; 126] }.encode();
        assert_eq!(KeyBlob::decode(&compact[..33]), None, "no private part");
        let mut off_curve = compact.clone();
        // Some x has no point; flipping bits until one fails shows the check.
        let mut rejected = false;
        for bit in 0..64 {
            off_curve[1 + bit / 8] ^= 1 << (bit % 8);
            if KeyBlob::decode(&off_curve).is_none() {
                rejected = true;
                break;
            }
        }
        assert!(rejected, "an x that is not on the curve is refused");
        assert_eq!(KeyBlob::decode(&[]), None);
        assert_eq!(KeyBlob::decode(&[0x52; 100]), None);
        // A software key store handle is not ours either.
        assert_eq!(KeyBlob::decode(&[1u8; 60]), None);
    }

    fn real_p384_point(seed: u8) -> (Vec<u8>, Vec<u8>) {
        let key = p384::ecdsa::SigningKey::from_slice(&[seed; 48]).unwrap();
        let point = p384::ecdsa::VerifyingKey::from(&key).to_sec1_point(false);
        (point.x().unwrap().to_vec(), point.y().unwrap().to_vec())
    }

    #[test]
    fn p384_key_handles_round_trip_and_never_pass_for_p256_ones() {
        let mut parities = std::collections::HashSet::new();
        for seed in 1..=8 {
            let (x, y) = real_p384_point(seed);
            parities.insert(y[47] & 1);
            let blob = KeyBlob { curve: Curve::P384, x, y, private: vec![3; 142] };
            let encoded = blob.encode();
            assert_eq!(encoded[0] & !1, KEY_HANDLE_P384_COMPACT);
            assert_eq!(encoded.len(), 1 + 48 + 142);
            assert_eq!(KeyBlob::decode(&encoded), Some(blob.clone()));
            assert!(blob.coordinates().is_none(), "not a P-256 key");
            assert!(matches!(blob.public_key(), Some(PublicKey::P384 { .. })));
            // Truncated: no private part, or a short x.
            assert_eq!(KeyBlob::decode(&encoded[..49]), None);
            assert_eq!(KeyBlob::decode(&encoded[..40]), None);
            // The same bytes under a P-256 format byte are a P-256 x of 32
            // bytes and 174 of "private": either refused, or a different key
            // (whose TPM2_Load then fails the integrity check).
            let mut as_p256 = encoded.clone();
            as_p256[0] = KEY_HANDLE_COMPACT | (encoded[0] & 1);
            assert_ne!(KeyBlob::decode(&as_p256).map(|b| b.curve), Some(Curve::P384));
        }
        assert_eq!(parities.len(), 2, "both parities were tried");
        // A P-256 handle relabelled as P-384 does not decode as the P-256 key.
        let (x, y) = real_point(1);
        let p256 = KeyBlob { curve: Curve::P256, x, y, private: vec![3; 126] }.encode();
        let mut as_p384 = p256.clone();
        as_p384[0] = KEY_HANDLE_P384_COMPACT;
        assert_ne!(KeyBlob::decode(&as_p384).map(|b| b.curve), Some(Curve::P256));
        // Long form, short coordinates kept exactly; too-long ones refused.
        let long = KeyBlob { curve: Curve::P384, x: vec![1; 48], y: vec![2; 47], private: vec![3; 150] };
        let encoded = long.encode();
        assert_eq!(encoded[0], KEY_HANDLE_P384_LONG);
        assert_eq!(KeyBlob::decode(&encoded), Some(long.clone()));
        assert_eq!(long.public_key(), Some(PublicKey::P384 { x: [1; 48], y: pad(&[2; 47]).unwrap() }));
        let mut long_x = encoded;
        long_x[1] = 49;
        assert_eq!(KeyBlob::decode(&long_x), None);
    }

    #[test]
    fn p384_x_values_off_the_curve_are_refused() {
        let (x, y) = real_p384_point(2);
        let mut handle = KeyBlob { curve: Curve::P384, x, y, private: vec![3; 142] }.encode();
        let mut rejected = false;
        for bit in 0..64 {
            handle[1 + bit / 8] ^= 1 << (bit % 8);
            if KeyBlob::decode(&handle).is_none() {
                rejected = true;
                break;
            }
        }
        assert!(rejected, "an x that is not on P-384 is refused");
    }

    #[test]
    fn the_p384_template_is_the_p256_one_on_another_curve() {
        let p256 = credential_key_public(&[], &[]).unwrap();
        let p384 = credential_key_public_on(Curve::P384, &[], &[]).unwrap();
        assert_eq!(p256.object_attributes(), p384.object_attributes());
        let Public::Ecc { parameters, .. } = &p384 else { panic!("an ECC key") };
        assert_eq!(parameters.ecc_curve(), EccCurve::NistP384);
        assert_eq!(parameters.ecc_scheme(), EccScheme::EcDsa(HashScheme::new(HashingAlgorithm::Sha384)));
        // Bound generations: the same policy and no userWithAuth.
        let bound_key = bound(p384, Some(&[9; 32])).unwrap();
        assert!(!bound_key.object_attributes().user_with_auth());
        assert_eq!(bound_key.auth_policy().value(), &[9; 32]);
    }

    #[test]
    fn long_key_handles_keep_short_coordinates_exactly() {
        let blob = KeyBlob { curve: Curve::P256, x: vec![1; 32], y: vec![2; 31], private: vec![3; 108] };
        let encoded = blob.encode();
        assert_eq!(encoded[0], KEY_HANDLE_LONG);
        assert_eq!(encoded.len(), 3 + 32 + 31 + 108);
        assert_eq!(KeyBlob::decode(&encoded), Some(blob.clone()));
        assert_eq!(blob.coordinates().unwrap().1[0], 0, "short coordinates are left-padded");
        assert_eq!(KeyBlob::decode(&encoded[..40]), None);
        assert_eq!(KeyBlob::decode(&encoded[..2 + 32 + 1 + 31]), None, "no private part");
        let mut long_x = encoded;
        long_x[1] = 33;
        assert_eq!(KeyBlob::decode(&long_x), None);
    }

    #[test]
    fn the_credential_template_is_what_the_issue_asks_for() {
        let public = credential_key_public(&[], &[]).unwrap();
        let a = public.object_attributes();
        assert!(a.fixed_tpm() && a.fixed_parent() && a.sensitive_data_origin() && a.user_with_auth());
        assert!(a.no_da() && a.sign_encrypt() && !a.decrypt() && !a.restricted());
        let primary = primary_template(&[7; 32]).unwrap();
        let p = primary.object_attributes();
        assert!(p.fixed_tpm() && p.fixed_parent() && p.restricted() && p.decrypt() && !p.sign_encrypt());
        assert_ne!(primary, primary_template(&[8; 32]).unwrap(), "the generation is part of the template");
    }

    #[test]
    fn der_signatures_are_minimal() {
        let der = der_signature(Curve::P256, &[0x80; 32], &[1; 31]).unwrap();
        let parsed = p256::ecdsa::Signature::from_der(&der).unwrap();
        assert_eq!(parsed.r().to_bytes().as_slice(), &[0x80; 32]);
        assert_eq!(der[3], 33, "r with its high bit set gets a 0x00 prefix");
        assert!(der_signature(Curve::P256, &[0; 32], &[1; 32]).is_none(), "r = 0 is not a signature");
        assert!(der_signature(Curve::P256, &[1; 33], &[1; 32]).is_none());
        let der = der_signature(Curve::P384, &[0x80; 48], &[1; 47]).unwrap();
        let parsed = p384::ecdsa::Signature::from_der(&der).unwrap();
        assert_eq!(parsed.r().to_bytes().as_slice(), &[0x80; 48]);
        assert!(der_signature(Curve::P384, &[1; 49], &[1; 48]).is_none());
    }
}
