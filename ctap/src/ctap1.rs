//! CTAP1/U2F over CTAPHID_MSG (FIDO U2F Raw Message Formats; CTAP 2.1 §10
//! and §11.2.9.1.1): REGISTER, AUTHENTICATE and VERSION.
//!
//! U2F key handles are the same sealed credential IDs as CTAP2's
//! non-discoverable credentials, bound to the application parameter (which
//! is the rp ID hash for a WebAuthn rp), so a credential registered one way
//! can be used the other way as CTAP 2.1 §10.2 allows.

use crate::audit::{AuditDecision, AuditEvent, AuditKind};
use crate::auth_data::flags;
use crate::authenticator::{Authenticator, RequestContext};
use crate::credential::{self, MAX_CREDENTIAL_ID_LEN};
use crate::platform::{Algorithm, CredentialExtensions, Operation, PresencePurpose, PresenceRequest, PublicKey};
use crate::status::StatusCode;

/// ISO 7816 status words used by U2F.
mod status_word {
    pub const NO_ERROR: u16 = 0x9000;
    pub const CONDITIONS_NOT_SATISFIED: u16 = 0x6985;
    pub const COMMAND_NOT_ALLOWED: u16 = 0x6986;
    pub const WRONG_DATA: u16 = 0x6A80;
    pub const WRONG_LENGTH: u16 = 0x6700;
    pub const CLA_NOT_SUPPORTED: u16 = 0x6E00;
    pub const INS_NOT_SUPPORTED: u16 = 0x6D00;
}

mod instruction {
    pub const REGISTER: u8 = 0x01;
    pub const AUTHENTICATE: u8 = 0x02;
    pub const VERSION: u8 = 0x03;
}

/// AUTHENTICATE control byte (P1).
mod control {
    pub const ENFORCE_USER_PRESENCE_AND_SIGN: u8 = 0x03;
    pub const CHECK_ONLY: u8 = 0x07;
    pub const DONT_ENFORCE_USER_PRESENCE_AND_SIGN: u8 = 0x08;
}

/// A command APDU in short or extended length encoding (ISO 7816-4 §5.1).
struct Apdu<'a> {
    cla: u8,
    ins: u8,
    p1: u8,
    data: &'a [u8],
}

fn parse_apdu(bytes: &[u8]) -> Result<Apdu<'_>, u16> {
    let [cla, ins, p1, _p2, body @ ..] = bytes else {
        return Err(status_word::WRONG_LENGTH);
    };
    let data: &[u8] = match body {
        // Case 1, or extended case 2 (Le only).
        [] | [0x00, _, _] => &[],
        // Short case 2 (Le only).
        [_] => &[],
        // Extended: 00 Lc1 Lc2 data [Le1 Le2].
        [0x00, hi, lo, rest @ ..] => {
            let lc = usize::from(u16::from_be_bytes([*hi, *lo]));
            if rest.len() != lc && rest.len() != lc + 2 {
                return Err(status_word::WRONG_LENGTH);
            }
            &rest[..lc]
        }
        // Short: Lc data [Le].
        [lc, rest @ ..] => {
            let lc = usize::from(*lc);
            if rest.len() != lc && rest.len() != lc + 1 {
                return Err(status_word::WRONG_LENGTH);
            }
            &rest[..lc]
        }
    };
    Ok(Apdu { cla: *cla, ins: *ins, p1: *p1, data })
}

fn with_status(mut body: Vec<u8>, sw: u16) -> Vec<u8> {
    body.extend_from_slice(&sw.to_be_bytes());
    body
}

fn status_only(sw: u16) -> Vec<u8> {
    sw.to_be_bytes().to_vec()
}

/// Any refusal of the user, the policy or the key store reads as "conditions
/// not satisfied" in U2F: the client may ask again.
fn refusal(status: StatusCode) -> Vec<u8> {
    tracing::debug!(%status, "U2F request refused");
    status_only(status_word::CONDITIONS_NOT_SATISFIED)
}

impl Authenticator {
    /// CTAP1/U2F is served: not while alwaysUv is on (getInfo then drops
    /// "U2F_V2" too).
    pub(crate) fn u2f_enabled(&self) -> bool {
        !self.state.always_uv
    }

    /// Handles a CTAPHID_MSG: a U2F request APDU; returns the response APDU.
    pub fn process_apdu(&mut self, message: &[u8], ctx: &RequestContext<'_>) -> Vec<u8> {
        if !self.u2f_enabled() {
            // alwaysUv turns CTAP1/U2F off (CTAP 2.1 §7.2): U2F cannot
            // verify the user, and AUTHENTICATE with P1 0x08 would sign
            // without even a touch. Every APDU, VERSION included, is refused.
            tracing::debug!("U2F request refused: alwaysUv is on");
            return status_only(status_word::COMMAND_NOT_ALLOWED);
        }
        let apdu = match parse_apdu(message) {
            Ok(a) => a,
            Err(sw) => return status_only(sw),
        };
        if apdu.cla != 0x00 {
            return status_only(status_word::CLA_NOT_SUPPORTED);
        }
        match apdu.ins {
            instruction::REGISTER => self.u2f_register(apdu.data, ctx),
            instruction::AUTHENTICATE => self.u2f_authenticate(apdu.p1, apdu.data, ctx),
            instruction::VERSION => {
                if !apdu.data.is_empty() {
                    return status_only(status_word::WRONG_LENGTH);
                }
                with_status(b"U2F_V2".to_vec(), status_word::NO_ERROR)
            }
            _ => status_only(status_word::INS_NOT_SUPPORTED),
        }
    }

    /// U2F_REGISTER: challenge(32) ‖ application(32).
    fn u2f_register(&mut self, data: &[u8], ctx: &RequestContext<'_>) -> Vec<u8> {
        let Ok::<&[u8; 64], _>(data) = data.try_into() else {
            return status_only(status_word::WRONG_LENGTH);
        };
        let (challenge, application) = data.split_at(32);
        let mut app = [0u8; 32];
        app.copy_from_slice(application);
        let rp_label = hex::encode(app);
        // A PIN or built-in UV protects registration on a CTAP2 key; U2F
        // cannot verify the user (§10.3).
        if self.is_protected() {
            return status_only(status_word::CONDITIONS_NOT_SATISFIED);
        }
        if let Err(status) = self.check_u2f_policy(Operation::MakeCredential, &rp_label) {
            return refusal(status);
        }
        if let Err(status) = self.require_presence(
            &PresenceRequest { purpose: PresencePurpose::Register, rp_id: Some(&rp_label), ..Default::default() },
            ctx,
        ) {
            return refusal(status);
        }
        match self.u2f_make_registration(challenge, &app) {
            Ok(response) => with_status(response, status_word::NO_ERROR),
            Err(status) => refusal(status),
        }
    }

    fn u2f_make_registration(&mut self, challenge: &[u8], application: &[u8; 32]) -> Result<Vec<u8>, StatusCode> {
        let created = self.platform.keystore.generate(Algorithm::Es256)?;
        let payload =
            credential::encode_payload(Algorithm::Es256, &created.key_handle, &CredentialExtensions::default())?;
        let key_handle = self.platform.keystore.seal_credential_id(application, &payload)?;
        if key_handle.len() > MAX_CREDENTIAL_ID_LEN {
            return Err(StatusCode::Other);
        }
        let PublicKey::P256 { x, y } = &created.public_key else {
            return Err(StatusCode::Other);
        };
        let mut user_public_key = Vec::with_capacity(65);
        user_public_key.push(0x04);
        user_public_key.extend_from_slice(x);
        user_public_key.extend_from_slice(y);

        // The attestation certificate is self-signed by the credential key:
        // no batch key to share, nothing that links credentials together.
        let tbs = u2f_certificate::tbs_certificate(&user_public_key);
        let tbs_signature = self.platform.keystore.sign(Algorithm::Es256, &created.key_handle, &tbs)?;
        let certificate = u2f_certificate::certificate(&tbs, &tbs_signature);

        let mut signed = vec![0x00];
        signed.extend_from_slice(application);
        signed.extend_from_slice(challenge);
        signed.extend_from_slice(&key_handle);
        signed.extend_from_slice(&user_public_key);
        let signature = self.platform.keystore.sign(Algorithm::Es256, &created.key_handle, &signed)?;

        let mut response = vec![0x05];
        response.extend_from_slice(&user_public_key);
        response.push(key_handle.len() as u8); // ≤ 255, checked above
        response.extend_from_slice(&key_handle);
        response.extend_from_slice(&certificate);
        response.extend_from_slice(&signature);
        self.audit(
            AuditEvent::new(AuditKind::CredentialCreated, AuditDecision::Allow)
                .rp(Some(&hex::encode(application)))
                .credential(&key_handle)
                .operation("u2f-register"),
        );
        Ok(response)
    }

    /// U2F_AUTHENTICATE: challenge(32) ‖ application(32) ‖ L ‖ key handle.
    fn u2f_authenticate(&mut self, p1: u8, data: &[u8], ctx: &RequestContext<'_>) -> Vec<u8> {
        let Some((head, rest)) = data.split_at_checked(64) else {
            return status_only(status_word::WRONG_LENGTH);
        };
        let Some((&len, key_handle)) = rest.split_first() else {
            return status_only(status_word::WRONG_LENGTH);
        };
        if key_handle.len() != usize::from(len) {
            return status_only(status_word::WRONG_LENGTH);
        }
        let (challenge, application) = head.split_at(32);
        let mut app = [0u8; 32];
        app.copy_from_slice(application);

        // Policy before the key handle is even opened (the rp is known by
        // its application parameter only).
        let rp_label = hex::encode(app);
        if let Err(status) = self.check_u2f_policy(Operation::GetAssertion, &rp_label) {
            return refusal(status);
        }
        let found =
            credential::resolve(self.platform.keystore.as_mut(), self.platform.credentials.as_ref(), &app, key_handle);
        let credential = match found {
            // A credential that needs UV cannot be used without it (§12.1);
            // U2F signatures are ECDSA P-256 (FIDO U2F Raw Message Formats
            // §5.4), so an EdDSA or ES384 credential is not one U2F can use.
            Ok(Some(c)) if c.extensions.cred_protect < 3 && c.algorithm == Algorithm::Es256 => c,
            Ok(_) => return status_only(status_word::WRONG_DATA),
            Err(status) => return refusal(status),
        };
        let user_presence = match p1 {
            // "Yes, this key handle is mine": answered as an error by design.
            control::CHECK_ONLY => return status_only(status_word::CONDITIONS_NOT_SATISFIED),
            control::ENFORCE_USER_PRESENCE_AND_SIGN => true,
            control::DONT_ENFORCE_USER_PRESENCE_AND_SIGN => false,
            _ => return status_only(status_word::WRONG_DATA),
        };
        if user_presence {
            if let Err(status) = self.require_presence(
                &PresenceRequest {
                    purpose: PresencePurpose::Authenticate,
                    rp_id: Some(&rp_label),
                    ..Default::default()
                },
                ctx,
            ) {
                return refusal(status);
            }
        }
        let flag_bits = if user_presence { flags::USER_PRESENT } else { 0 };
        let counter = match self.next_signature_counter(&credential.credential_id) {
            Ok(c) => c,
            Err(status) => return refusal(status),
        };
        let mut signed = app.to_vec();
        signed.push(flag_bits);
        signed.extend_from_slice(&counter.to_be_bytes());
        signed.extend_from_slice(challenge);
        match self.platform.keystore.sign(credential.algorithm, &credential.key_handle, &signed) {
            Ok(signature) => {
                self.audit(
                    AuditEvent::new(AuditKind::Assertion, AuditDecision::Allow)
                        .rp(Some(&hex::encode(app)))
                        .credential(&credential.credential_id)
                        .operation("u2f-authenticate")
                        .reason(if flag_bits & 0x01 != 0 { "user present" } else { "silent (presence not enforced)" }),
                );
                let mut response = vec![flag_bits];
                response.extend_from_slice(&counter.to_be_bytes());
                response.extend_from_slice(&signature);
                with_status(response, status_word::NO_ERROR)
            }
            Err(e) => refusal(e.into()),
        }
    }
}

/// The U2F attestation certificate: a fixed X.509 v3 template with the
/// credential's public key, self-signed by the credential key.
///
/// Written out here rather than with `x509-cert`'s builder because that
/// builder wants an in-process signer, while our key lives in the key store
/// (the TPM); the template has one variable field of fixed length, and its
/// encoding is checked against a real X.509 parser in the tests.
mod u2f_certificate {
    /// TBSCertificate up to the public key point (RFC 5280 §4.1):
    /// version 3, serial 1, ecdsa-with-SHA256, issuer = subject =
    /// CN=fidoseal U2F, validity 2020-01-01 .. 9999-12-31, ecPublicKey P-256.
    const TBS_PREFIX: &[u8] = &[
        0x30, 0x81, 0xc3, // TBSCertificate, 195 bytes
        0xa0, 0x03, 0x02, 0x01, 0x02, // [0] version v3
        0x02, 0x01, 0x01, // serialNumber 1
        0x30, 0x0a, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02, // ecdsa-with-SHA256
        0x30, 0x17, 0x31, 0x15, 0x30, 0x13, 0x06, 0x03, 0x55, 0x04, 0x03, 0x0c, 0x0c, // issuer CN, UTF8String(12)
        b'f', b'i', b'd', b'o', b's', b'e', b'a', b'l', b' ', b'U', b'2', b'F', 0x30, 0x20, // validity
        0x17, 0x0d, b'2', b'0', b'0', b'1', b'0', b'1', b'0', b'0', b'0', b'0', b'0', b'0', b'Z', 0x18, 0x0f, b'9',
        b'9', b'9', b'9', b'1', b'2', b'3', b'1', b'2', b'3', b'5', b'9', b'5', b'9', b'Z', 0x30, 0x17, 0x31, 0x15,
        0x30, 0x13, 0x06, 0x03, 0x55, 0x04, 0x03, 0x0c, 0x0c, // subject CN
        b'f', b'i', b'd', b'o', b's', b'e', b'a', b'l', b' ', b'U', b'2', b'F', 0x30,
        0x59, // SubjectPublicKeyInfo
        0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, // ecPublicKey
        0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, // prime256v1
        0x03, 0x42, 0x00, // BIT STRING, 66 bytes, no unused bits
    ];
    const SIGNATURE_ALGORITHM: &[u8] = &[0x30, 0x0a, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02];

    /// The DER TBSCertificate for `point` (65 bytes, uncompressed).
    pub fn tbs_certificate(point: &[u8]) -> Vec<u8> {
        let mut tbs = TBS_PREFIX.to_vec();
        tbs.extend_from_slice(point);
        tbs
    }

    fn der_length(len: usize, out: &mut Vec<u8>) {
        match len {
            0..=0x7f => out.push(len as u8),
            0x80..=0xff => out.extend_from_slice(&[0x81, len as u8]),
            _ => out.extend_from_slice(&[0x82, (len >> 8) as u8, len as u8]),
        }
    }

    /// Certificate ::= SEQUENCE { tbs, signatureAlgorithm, BIT STRING sig }.
    pub fn certificate(tbs: &[u8], signature_der: &[u8]) -> Vec<u8> {
        let mut bit_string = vec![0x03];
        der_length(signature_der.len() + 1, &mut bit_string);
        bit_string.push(0x00);
        bit_string.extend_from_slice(signature_der);
        let body_len = tbs.len() + SIGNATURE_ALGORITHM.len() + bit_string.len();
        let mut out = vec![0x30];
        der_length(body_len, &mut out);
        out.extend_from_slice(tbs);
        out.extend_from_slice(SIGNATURE_ALGORITHM);
        out.extend_from_slice(&bit_string);
        out
    }

    #[cfg(test)]
    mod tests {
        #[test]
        fn tbs_length_matches_its_header() {
            let tbs = super::tbs_certificate(&[4u8; 65]);
            assert_eq!(tbs.len(), 3 + 0xc3);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn apdu_encodings() {
        let short = parse_apdu(&[0, 3, 0, 0]).unwrap();
        assert_eq!((short.ins, short.data.len()), (3, 0));
        let extended = parse_apdu(&[0, 1, 0, 0, 0, 0, 2, 9, 9, 0, 0]).unwrap();
        assert_eq!(extended.data, &[9, 9]);
        let short_lc = parse_apdu(&[0, 1, 0, 0, 2, 7, 7]).unwrap();
        assert_eq!(short_lc.data, &[7, 7]);
        assert!(parse_apdu(&[0, 1, 0]).is_err());
        assert!(parse_apdu(&[0, 1, 0, 0, 0, 0, 5, 1]).is_err());
        assert!(parse_apdu(&[0, 1, 0, 0, 9, 1]).is_err());
    }
}
