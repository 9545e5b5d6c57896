//! `[enterprise_attestation]`: the administrator's attestation key and
//! certificate chain, read and checked at load (CTAP 2.1 §7.1, WebAuthn
//! §8.2.1).
//!
//! Everything a relying party would reject is refused here, with the file
//! it is about, so a mistake shows in `fidosealctl policy check` and not as
//! registrations failing at the relying party: a key that is not P-256, a
//! first certificate for another key, a certificate out of chain order, and
//! an attestation certificate that does not meet the packed format's
//! requirements (version 3; subject C, O, OU "Authenticator Attestation",
//! CN; basic constraints with CA false).

use std::fmt;
use std::path::{Path, PathBuf};

use p256::ecdsa::{SigningKey, VerifyingKey};
use p256::pkcs8::{DecodePrivateKey, DecodePublicKey};
use x509_cert::der::{Encode, Reader, SliceReader};
use x509_cert::ext::pkix::BasicConstraints;
use x509_cert::Certificate;

/// FIDO's AAGUID certificate extension, id-fido-gen-ce-aaguid (WebAuthn §8.2.1).
const OID_FIDO_GEN_CE_AAGUID: &str = "1.3.6.1.4.1.45724.1.1.4";

/// What WebAuthn §8.2.1 requires as the attestation certificate's subject OU.
const ATTESTATION_OU: &str = "Authenticator Attestation";

/// The key and chain that sign enterprise attestation, with the rp IDs that
/// may receive it. Its `Debug` never shows the key.
pub struct EnterpriseAttestation {
    rp_ids: Vec<Box<str>>,
    signing_key: SigningKey,
    /// DER, the attestation certificate first, then its issuers in order.
    certificates: Vec<Vec<u8>>,
    aaguid: Option<[u8; 16]>,
    key_path: PathBuf,
    /// Where `certificates` was written, for problems found later.
    origin: (PathBuf, usize),
}

impl EnterpriseAttestation {
    /// The exact rp IDs listed in `rp_ids`.
    pub fn rp_ids(&self) -> &[Box<str>] {
        &self.rp_ids
    }

    pub fn signing_key(&self) -> &SigningKey {
        &self.signing_key
    }

    /// DER certificates for the attestation statement's `x5c`, leaf first.
    pub fn certificates(&self) -> &[Vec<u8>] {
        &self.certificates
    }

    /// The AAGUID the attestation certificate names in its
    /// id-fido-gen-ce-aaguid extension, if it has one: the authenticator's
    /// own AAGUID must be the same, or relying parties reject the statement.
    pub fn certificate_aaguid(&self) -> Option<[u8; 16]> {
        self.aaguid
    }

    pub fn key_path(&self) -> &Path {
        &self.key_path
    }

    /// Relying parties reject a packed statement whose certificate names
    /// another AAGUID than the authenticator data (WebAuthn §8.2.1).
    pub(crate) fn check_aaguid(&self, authenticator_aaguid: &[u8; 16]) -> Result<(), crate::Diagnostic> {
        match self.aaguid {
            Some(aaguid) if aaguid != *authenticator_aaguid => Err(crate::Diagnostic {
                file: self.origin.0.clone(),
                line: Some(self.origin.1),
                key: Some("enterprise_attestation.certificates".into()),
                message: format!(
                    "the attestation certificate's AAGUID extension says {} but this authenticator's AAGUID is {}: \
                     relying parties would reject every enterprise attestation",
                    hex::encode(aaguid),
                    hex::encode(authenticator_aaguid)
                ),
            }),
            _ => Ok(()),
        }
    }
}

impl fmt::Debug for EnterpriseAttestation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EnterpriseAttestation")
            .field("rp_ids", &self.rp_ids)
            .field("key_path", &self.key_path)
            .field("certificates", &self.certificates.len())
            .finish_non_exhaustive()
    }
}

/// A problem with one of the section's files: which file (an index into
/// the certificate list, or the key) and what.
pub(crate) enum Problem {
    Key(String),
    Certificate(usize, String),
}

/// Parses the key and the certificates (the PEM texts of the files, in the
/// order listed) and checks that they fit together.
pub(crate) fn load(
    origin: (PathBuf, usize),
    rp_ids: Vec<Box<str>>,
    key_path: &Path,
    key_pem: &str,
    certificate_pems: &[(PathBuf, String)],
) -> Result<EnterpriseAttestation, Vec<Problem>> {
    let mut problems = Vec::new();
    let signing_key = parse_private_key(key_path, key_pem).map_err(|m| problems.push(Problem::Key(m))).ok();

    // Every file's certificates, in order, remembering which file each came from.
    let mut chain: Vec<(usize, Certificate)> = Vec::new();
    for (index, (path, pem)) in certificate_pems.iter().enumerate() {
        match Certificate::load_pem_chain(pem.as_bytes()) {
            Ok(certs) if certs.is_empty() => {
                problems.push(Problem::Certificate(index, format!("{} holds no certificate", path.display())));
            }
            Ok(certs) => chain.extend(certs.into_iter().map(|c| (index, c))),
            Err(e) => problems
                .push(Problem::Certificate(index, format!("{} is not a PEM X.509 certificate: {e}", path.display()))),
        }
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    let Some(signing_key) = signing_key else { return Err(problems) };
    let Some((leaf_file, leaf)) = chain.first() else {
        return Err(vec![Problem::Certificate(0, "list the attestation certificate first, then its chain".into())]);
    };
    let leaf_path = &certificate_pems[*leaf_file].0;

    let mut leaf_problem = |message: String| {
        problems.push(Problem::Certificate(*leaf_file, format!("{}: {message}", leaf_path.display())))
    };
    match certificate_key(leaf) {
        Ok(key) if key == *signing_key.verifying_key() => {}
        Ok(_) => leaf_problem(format!(
            "the attestation certificate (listed first) is not for the key in {}",
            key_path.display()
        )),
        Err(message) => leaf_problem(message),
    }
    for message in attestation_certificate_problems(leaf) {
        leaf_problem(message);
    }
    let aaguid = match certificate_aaguid(leaf) {
        Ok(aaguid) => aaguid,
        Err(message) => {
            leaf_problem(message);
            None
        }
    };

    // Each certificate must be issued by the next one (leaf first).
    for pair in chain.windows(2) {
        let [(file, cert), (_, issuer)] = pair else { continue };
        if cert.tbs_certificate().issuer() != issuer.tbs_certificate().subject() {
            problems.push(Problem::Certificate(
                *file,
                format!(
                    "{}: certificate for \"{}\" is not issued by the next one listed (\"{}\"): list the \
                     attestation certificate first, then each issuer in order",
                    certificate_pems[*file].0.display(),
                    cert.tbs_certificate().subject(),
                    issuer.tbs_certificate().subject()
                ),
            ));
        }
    }

    let mut certificates = Vec::with_capacity(chain.len());
    for (file, cert) in &chain {
        match cert.to_der() {
            Ok(der) => certificates.push(der),
            Err(e) => problems.push(Problem::Certificate(
                *file,
                format!("{}: cannot re-encode the certificate: {e}", certificate_pems[*file].0.display()),
            )),
        }
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    Ok(EnterpriseAttestation { rp_ids, signing_key, certificates, aaguid, key_path: key_path.to_path_buf(), origin })
}

/// A P-256 private key from PKCS#8 ("PRIVATE KEY", what `openssl genpkey`
/// writes) or SEC1 ("EC PRIVATE KEY", what `openssl ecparam -genkey` writes).
fn parse_private_key(path: &Path, pem: &str) -> Result<SigningKey, String> {
    if let Ok(key) = SigningKey::from_pkcs8_pem(pem) {
        return Ok(key);
    }
    match p256::SecretKey::from_sec1_pem(pem) {
        Ok(secret) => Ok(SigningKey::from(&secret)),
        Err(_) => Err(format!(
            "{} is not a P-256 private key in PEM (PKCS#8 \"PRIVATE KEY\" or SEC1 \"EC PRIVATE KEY\"); \
             enterprise attestation signs with ES256 only",
            path.display()
        )),
    }
}

/// The problems of a DER attestation certificate against WebAuthn §8.2.1
/// (packed attestation statement certificate requirements) and its AAGUID
/// extension, if it has one: what the loader checks of an enterprise
/// attestation certificate, for other attestation certificates (fidoseal's
/// machine attestation certificate, in tests).
pub fn check_attestation_certificate(der: &[u8]) -> Result<Option<[u8; 16]>, Vec<String>> {
    use x509_cert::der::Decode;
    let cert = Certificate::from_der(der).map_err(|e| vec![format!("not a DER X.509 certificate: {e}")])?;
    let problems = attestation_certificate_problems(&cert);
    if !problems.is_empty() {
        return Err(problems);
    }
    certificate_aaguid(&cert).map_err(|e| vec![e])
}

fn certificate_key(cert: &Certificate) -> Result<VerifyingKey, String> {
    let spki = cert
        .tbs_certificate()
        .subject_public_key_info()
        .to_der()
        .map_err(|e| format!("cannot read the certificate's public key: {e}"))?;
    VerifyingKey::from_public_key_der(&spki)
        .map_err(|_| "the attestation certificate's key is not a P-256 key (ES256 only)".to_string())
}

/// WebAuthn §8.2.1, packed attestation statement certificate requirements.
fn attestation_certificate_problems(cert: &Certificate) -> Vec<String> {
    let tbs = cert.tbs_certificate();
    let subject = tbs.subject();
    let mut problems = Vec::new();
    if tbs.version() != x509_cert::certificate::Version::V3 {
        problems.push("the attestation certificate must be X.509 version 3".to_string());
    }
    if !matches!(subject.country(), Ok(Some(_))) {
        problems.push("the attestation certificate's subject needs C (country)".to_string());
    }
    if !matches!(subject.organization(), Ok(Some(_))) {
        problems.push("the attestation certificate's subject needs O (organization)".to_string());
    }
    match subject.organization_unit() {
        Ok(Some(ou)) if ou.value() == ATTESTATION_OU => {}
        _ => problems.push(format!("the attestation certificate's subject needs OU = \"{ATTESTATION_OU}\"")),
    }
    if !matches!(subject.common_name(), Ok(Some(_))) {
        problems.push("the attestation certificate's subject needs CN (common name)".to_string());
    }
    match tbs.get_extension::<BasicConstraints>() {
        Ok(Some((_, constraints))) if !constraints.ca => {}
        Ok(Some(_)) => {
            problems.push("the attestation certificate must not be a CA (basic constraints CA=false)".into())
        }
        Ok(None) => problems.push("the attestation certificate needs basic constraints with CA=false".into()),
        Err(e) => problems.push(format!("cannot read the attestation certificate's basic constraints: {e}")),
    }
    problems
}

/// The AAGUID of the id-fido-gen-ce-aaguid extension: an OCTET STRING of 16
/// bytes inside the extension value. It must not be critical.
fn certificate_aaguid(cert: &Certificate) -> Result<Option<[u8; 16]>, String> {
    let Some(extensions) = cert.tbs_certificate().extensions() else { return Ok(None) };
    let Some(extension) = extensions.iter().find(|e| e.extn_id.to_string() == OID_FIDO_GEN_CE_AAGUID) else {
        return Ok(None);
    };
    if extension.critical {
        return Err("the AAGUID extension (1.3.6.1.4.1.45724.1.1.4) must not be critical".into());
    }
    let malformed = || "the AAGUID extension (1.3.6.1.4.1.45724.1.1.4) is not an OCTET STRING of 16 bytes".to_string();
    let mut reader = SliceReader::new(extension.extn_value.as_bytes()).map_err(|_| malformed())?;
    let inner: x509_cert::der::asn1::OctetString = reader.decode().map_err(|_| malformed())?;
    if !reader.is_finished() {
        return Err(malformed());
    }
    <[u8; 16]>::try_from(inner.as_bytes()).map(Some).map_err(|_| malformed())
}
