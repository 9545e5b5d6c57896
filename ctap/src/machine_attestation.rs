//! Machine attestation: one attestation key per machine with a self-signed
//! X.509 certificate, for relying parties that insist on a certificate in
//! the packed attestation statement (`x5c`) but trust no vendor root:
//! pam-u2f 1.1.0's `pamu2fcfg` calls libfido2's `fido_cred_verify`, which
//! fails without `x5c`. Policy grants it (`attestation = "machine"`,
//! docs/policy.md); by default only to rp IDs that are not web origins.
//!
//! The certificate is written from a fixed template here rather than with
//! `x509-cert`'s builder, as `ctap1.rs` does for U2F: the builder wants an
//! in-process signer (and sha1, which nothing else here needs), while the
//! TPM store's attestation key signs inside the TPM. Every field has a fixed
//! length (so a stored certificate can be checked against its key, below),
//! and the encoding is a few nested TLVs; tests parse the result with
//! `x509-cert`, check WebAuthn §8.2.1's requirements with the policy
//! crate's checker, and the VM suite `pam` with openssl and libfido2.

use p256::ecdsa::signature::Signer;
use p256::ecdsa::{Signature, SigningKey, VerifyingKey};
use p256::elliptic_curve::Generate;
use zeroize::Zeroizing;

use crate::platform::KeyStoreError;

/// The length of the certificate's serial number (positive, 16 bytes).
pub const SERIAL_LEN: usize = 16;
/// An uncompressed P-256 point, `04 ‖ x ‖ y`.
pub const POINT_LEN: usize = 65;

const ECDSA_WITH_SHA256: &[u8] = &[0x30, 0x0a, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02];

/// WebAuthn §8.2.1 subject, also the issuer (self-signed): C, O,
/// OU = "Authenticator Attestation", CN. "ZZ" is the ISO 3166 user-assigned
/// code for "unknown": the key is the machine's, made by no vendor.
fn name() -> Vec<u8> {
    let attribute = |oid_last: u8, string_tag: u8, value: &[u8]| {
        let oid = tlv(0x06, &[0x55, 0x04, oid_last]);
        tlv(0x31, &tlv(0x30, &[oid, tlv(string_tag, value)].concat()))
    };
    tlv(
        0x30,
        &[
            attribute(0x06, 0x13, b"ZZ"),
            attribute(0x0a, 0x0c, b"fidoseal"),
            attribute(0x0b, 0x0c, b"Authenticator Attestation"),
            attribute(0x03, 0x0c, b"fidoseal machine attestation"),
        ]
        .concat(),
    )
}

/// A DER tag-length-value (definite lengths up to 65535 bytes).
fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    match content.len() {
        len @ 0..=0x7f => out.push(len as u8),
        len @ 0x80..=0xff => out.extend_from_slice(&[0x81, len as u8]),
        len => out.extend_from_slice(&[0x82, (len >> 8) as u8, len as u8]),
    }
    out.extend_from_slice(content);
    out
}

/// A fresh serial number: random, positive, and with a non-zero first byte
/// so that its DER INTEGER is always 16 bytes (RFC 5280 §4.1.2.2).
pub fn new_serial() -> Result<[u8; SERIAL_LEN], KeyStoreError> {
    let mut serial = [0u8; SERIAL_LEN];
    getrandom::fill(&mut serial).map_err(|e| KeyStoreError::Backend(format!("no randomness: {e}")))?;
    serial[0] = (serial[0] & 0x3f) | 0x40;
    Ok(serial)
}

/// The DER TBSCertificate (RFC 5280 §4.1) of a machine attestation key:
/// version 3, `serial`, ecdsa-with-SHA256, issuer = subject = [`name`],
/// valid from 2020-01-01 with no well-defined expiry (99991231235959Z,
/// RFC 5280 §4.1.2.5), the P-256 key `point`, and the extensions
/// basicConstraints CA=false (critical) and id-fido-gen-ce-aaguid with
/// `aaguid` (WebAuthn §8.2.1).
pub fn tbs_certificate(point: &[u8; POINT_LEN], serial: &[u8; SERIAL_LEN], aaguid: &[u8; 16]) -> Vec<u8> {
    let version = tlv(0xa0, &tlv(0x02, &[0x02]));
    let validity = tlv(0x30, &[tlv(0x17, b"200101000000Z"), tlv(0x18, b"99991231235959Z")].concat());
    let algorithm = tlv(
        0x30,
        &[
            tlv(0x06, &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01]), // id-ecPublicKey
            tlv(0x06, &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07]), // prime256v1
        ]
        .concat(),
    );
    let spki = tlv(0x30, &[algorithm, tlv(0x03, &[&[0x00], &point[..]].concat())].concat());
    let basic_constraints = tlv(
        0x30,
        &[
            tlv(0x06, &[0x55, 0x1d, 0x13]),
            tlv(0x01, &[0xff]),         // critical
            tlv(0x04, &tlv(0x30, &[])), // cA absent: FALSE
        ]
        .concat(),
    );
    let aaguid_extension = tlv(
        0x30,
        &[
            // 1.3.6.1.4.1.45724.1.1.4, not critical (WebAuthn §8.2.1).
            tlv(0x06, &[0x2b, 0x06, 0x01, 0x04, 0x01, 0x82, 0xe5, 0x1c, 0x01, 0x01, 0x04]),
            tlv(0x04, &tlv(0x04, aaguid)),
        ]
        .concat(),
    );
    let extensions = tlv(0xa3, &tlv(0x30, &[basic_constraints, aaguid_extension].concat()));
    let name = name();
    tlv(
        0x30,
        &[version, tlv(0x02, serial), ECDSA_WITH_SHA256.to_vec(), name.clone(), validity, name, spki, extensions]
            .concat(),
    )
}

/// Certificate ::= SEQUENCE { tbsCertificate, signatureAlgorithm, signature }
/// with the DER ECDSA signature over `tbs`.
pub fn certificate(tbs: &[u8], signature_der: &[u8]) -> Vec<u8> {
    let signature = tlv(0x03, &[&[0x00], signature_der].concat());
    tlv(0x30, &[tbs, ECDSA_WITH_SHA256, &signature].concat())
}

/// Where the serial number's value starts in the TBSCertificate: after the
/// TBS header (4 bytes: the TBS is always 256..65535 bytes long), the
/// version (5) and the INTEGER's tag and length (2).
const SERIAL_OFFSET_IN_TBS: usize = 4 + 5 + 2;
/// The certificate's own SEQUENCE header (its body is 256..65535 bytes).
const CERTIFICATE_HEADER_LEN: usize = 4;

/// Whether `certificate` is a machine attestation certificate of this
/// template for `point` and `aaguid` (what a key store checks when it loads
/// a stored key and certificate: the pair must belong together). The
/// signature is not checked: the store made it and keeps it 0600.
pub fn certificate_matches(certificate: &[u8], point: &[u8; POINT_LEN], aaguid: &[u8; 16]) -> bool {
    let serial_at = CERTIFICATE_HEADER_LEN + SERIAL_OFFSET_IN_TBS;
    let Some(serial) = certificate.get(serial_at..serial_at + SERIAL_LEN) else {
        return false;
    };
    let Ok(serial) = <[u8; SERIAL_LEN]>::try_from(serial) else {
        return false;
    };
    let tbs = tbs_certificate(point, &serial, aaguid);
    certificate.get(..CERTIFICATE_HEADER_LEN).is_some_and(|h| h[0] == 0x30 && h[1] == 0x82)
        && certificate.get(CERTIFICATE_HEADER_LEN..CERTIFICATE_HEADER_LEN + tbs.len()) == Some(tbs.as_slice())
}

/// A machine attestation key held in memory: the software store's (which
/// the daemon keeps in its state directory) and the tests'.
pub struct SoftwareAttestationKey {
    signing_key: SigningKey,
    certificate: Vec<u8>,
}

impl SoftwareAttestationKey {
    /// A new random key and its self-signed certificate.
    pub fn generate(aaguid: &[u8; 16]) -> Result<Self, KeyStoreError> {
        let signing_key =
            SigningKey::try_generate().map_err(|e| KeyStoreError::Backend(format!("key generation failed: {e}")))?;
        let serial = new_serial()?;
        let tbs = tbs_certificate(&point(signing_key.verifying_key()), &serial, aaguid);
        let signature: Signature = signing_key.sign(&tbs);
        let certificate = certificate(&tbs, signature.to_der().as_bytes());
        Ok(Self { signing_key, certificate })
    }

    /// A stored key and certificate; refused unless the certificate is this
    /// key's (a damaged or mixed-up state must not sign with one key and
    /// present another's certificate).
    pub fn from_parts(secret: &[u8], certificate: Vec<u8>, aaguid: &[u8; 16]) -> Result<Self, KeyStoreError> {
        let signing_key = SigningKey::from_slice(secret)
            .map_err(|_| KeyStoreError::MachineAttestation("the stored key is not a P-256 private key".into()))?;
        if !certificate_matches(&certificate, &point(signing_key.verifying_key()), aaguid) {
            return Err(KeyStoreError::MachineAttestation(
                "the stored certificate is not the machine attestation certificate of the stored key".into(),
            ));
        }
        Ok(Self { signing_key, certificate })
    }

    /// The private scalar, for the caller to persist.
    pub fn secret_bytes(&self) -> Zeroizing<Vec<u8>> {
        Zeroizing::new(self.signing_key.to_bytes().to_vec())
    }

    /// The DER certificate (the attestation statement's `x5c`).
    pub fn certificate(&self) -> &[u8] {
        &self.certificate
    }

    /// An ES256 signature, DER-encoded as WebAuthn's packed format wants.
    pub fn sign(&self, message: &[u8]) -> Vec<u8> {
        let signature: Signature = self.signing_key.sign(message);
        signature.to_der().as_bytes().to_vec()
    }
}

/// The uncompressed point of `key`.
pub fn point(key: &VerifyingKey) -> [u8; POINT_LEN] {
    let encoded = key.to_sec1_point(false);
    let mut out = [0u8; POINT_LEN];
    out.copy_from_slice(encoded.as_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const AAGUID: [u8; 16] = [7; 16];

    #[test]
    fn a_stored_pair_loads_only_when_the_certificate_is_the_keys() {
        let key = SoftwareAttestationKey::generate(&AAGUID).unwrap();
        let other = SoftwareAttestationKey::generate(&AAGUID).unwrap();
        let again =
            SoftwareAttestationKey::from_parts(&key.secret_bytes(), key.certificate().to_vec(), &AAGUID).unwrap();
        assert_eq!(again.certificate(), key.certificate());
        for (what, secret, certificate, aaguid) in [
            ("another key's certificate", key.secret_bytes().to_vec(), other.certificate().to_vec(), AAGUID),
            ("another AAGUID", key.secret_bytes().to_vec(), key.certificate().to_vec(), [8; 16]),
            ("a truncated certificate", key.secret_bytes().to_vec(), key.certificate()[..100].to_vec(), AAGUID),
            ("no certificate", key.secret_bytes().to_vec(), vec![], AAGUID),
            ("a short key", vec![1; 31], key.certificate().to_vec(), AAGUID),
            ("a zero key", vec![0; 32], key.certificate().to_vec(), AAGUID),
        ] {
            assert!(
                matches!(
                    SoftwareAttestationKey::from_parts(&secret, certificate, &aaguid),
                    Err(KeyStoreError::MachineAttestation(_))
                ),
                "{what}"
            );
        }
    }

    #[test]
    fn serials_are_positive_sixteen_byte_integers_and_differ() {
        let (a, b) = (new_serial().unwrap(), new_serial().unwrap());
        assert_ne!(a, b);
        for serial in [a, b] {
            assert!((0x40..0x80).contains(&serial[0]), "positive, no leading zero byte");
        }
        let key = SoftwareAttestationKey::generate(&AAGUID).unwrap();
        assert_eq!(&key.certificate()[..2], &[0x30, 0x82], "a long-form SEQUENCE, as the template assumes");
    }
}
