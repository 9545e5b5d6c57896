//! `fidosealctl metadata`: this authenticator's FIDO metadata statement
//! (FIDO Metadata Statement 3.0, "MDS3"), from the configuration the
//! daemon reads: the key store decides keyProtection and the algorithms,
//! `[prompt] uv_methods` the user verification methods, `[authenticator]
//! attestation` and the policy's enterprise attestation the attestation
//! types and root certificates. The authenticatorGetInfo member is the
//! getInfo answer of a fresh fidoseal authenticator so configured (the
//! core's own answer, decoded; no device is opened).

use std::path::Path;

use base64::Engine as _;
use ciborium::value::Value as Cbor;
use fidoseal_ctap::authenticator::FIDOSEAL_AAGUID;
use fidoseal_ctap::memory_store::MemoryCredentialStore;
use fidoseal_ctap::platform::{AllowAll, PresenceRequest, PromptOutcome, Secret32, TransactionSignals, UserPrompt};
use fidoseal_ctap::software_keystore::SoftwareKeyStore;
use fidoseal_ctap::{Authenticator, AuthenticatorConfig, Platform, RequestContext};
use serde_json::{json, Map, Value as Json};

use crate::cli::{KeyStoreArg, MetadataArgs};
use crate::CtlError;

/// What the statement depends on, as configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Facts {
    pub tpm: bool,
    /// "fingerprint", "password", "pin" (the PIN typed into the agent).
    pub uv_methods: Vec<String>,
    /// `[authenticator] attestation = "none"`.
    pub attestation_none: bool,
    /// DER of the enterprise attestation chain's last certificate, if any.
    pub enterprise_root: Option<Vec<u8>>,
}

/// Reads fidoseald's configuration file (only the keys that matter here;
/// the daemon validates the rest) and the policy directories it names.
pub fn facts_from_config(args: &MetadataArgs) -> Result<Facts, CtlError> {
    let text = match std::fs::read_to_string(&args.config) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && args.keystore.is_some() => String::new(),
        Err(e) => {
            return Err(CtlError::Config(format!(
                "cannot read {}: {e} (name the configuration with --config, or the key store with --keystore)",
                args.config.display()
            )))
        }
    };
    let config: toml::Table =
        text.parse().map_err(|e| CtlError::Config(format!("{} is not valid TOML: {e}", args.config.display())))?;
    let section = |name: &str| config.get(name).and_then(toml::Value::as_table);
    let backend = section("keystore").and_then(|k| k.get("backend")).and_then(toml::Value::as_str);
    let tpm = match (args.keystore, backend) {
        (Some(KeyStoreArg::Tpm), _) | (None, Some("tpm")) => true,
        (Some(KeyStoreArg::Software), _) | (None, Some("software")) => false,
        (None, other) => {
            return Err(CtlError::Config(format!(
                "{}: [keystore] backend is {other:?}, not \"tpm\" or \"software\" (or give --keystore)",
                args.config.display()
            )))
        }
    };
    let uv_methods = match section("prompt").and_then(|p| p.get("uv_methods")).and_then(toml::Value::as_array) {
        Some(methods) => methods.iter().filter_map(toml::Value::as_str).map(str::to_string).collect(),
        None => ["fingerprint", "password", "pin"].map(String::from).to_vec(),
    };
    let attestation_none =
        section("authenticator").and_then(|a| a.get("attestation")).and_then(toml::Value::as_str) == Some("none");
    let dirs: Vec<std::path::PathBuf> =
        match section("policy").and_then(|p| p.get("dirs")).and_then(toml::Value::as_array) {
            Some(dirs) => dirs.iter().filter_map(toml::Value::as_str).map(Into::into).collect(),
            None => fidoseal_policy::DEFAULT_DIRS.iter().map(Into::into).collect(),
        };
    let enterprise_root = enterprise_root(&dirs)?;
    Ok(Facts { tpm, uv_methods, attestation_none, enterprise_root })
}

fn enterprise_root(dirs: &[std::path::PathBuf]) -> Result<Option<Vec<u8>>, CtlError> {
    if dirs.iter().all(|d| !Path::new(d).exists()) {
        return Ok(None);
    }
    let policy = fidoseal_policy::Policy::load_dirs(dirs).map_err(|e| {
        CtlError::Config(format!("the policy is invalid ({e}): `fidosealctl policy check` lists the problems"))
    })?;
    Ok(policy.enterprise_attestation().and_then(|ea| ea.certificates().last().cloned()))
}

/// A prompt that answers nothing: getInfo only asks whether built-in
/// verification is configured.
struct ConfiguredPrompt {
    uv: bool,
}

impl UserPrompt for ConfiguredPrompt {
    fn request_presence(&mut self, _: &PresenceRequest<'_>, _: &TransactionSignals) -> PromptOutcome {
        PromptOutcome::Unavailable
    }
    fn verification_available(&self) -> bool {
        self.uv
    }
}

/// getInfo (CTAP 2.1 §6.4) of a fresh authenticator with this configuration,
/// with the member names MDS3's authenticatorGetInfo uses.
pub fn get_info(facts: &Facts) -> Result<Map<String, Json>, CtlError> {
    let uv = facts.uv_methods.iter().any(|m| m == "fingerprint" || m == "password");
    let platform = Platform {
        // Only its algorithm list reaches getInfo; for the TPM store it is cut to ES256 (below).
        keystore: Box::new(SoftwareKeyStore::new(Secret32([0; 32]))),
        credentials: Box::new(MemoryCredentialStore::new(10_000)),
        prompt: Box::new(ConfiguredPrompt { uv }),
        policy: Box::new(AllowAll),
    };
    let config = AuthenticatorConfig { firmware_version: firmware_version(), ..AuthenticatorConfig::default() };
    let mut authenticator = Authenticator::try_new(config, platform, std::time::Instant::now())
        .map_err(|e| CtlError::Config(format!("cannot build the authenticator: {e}")))?;
    let signals = TransactionSignals::new();
    let ctx = RequestContext { now: std::time::Instant::now(), channel: 1, signals: &signals };
    let response = authenticator.process_cbor(&[fidoseal_ctap::authenticator::command::GET_INFO], &ctx);
    let info: Cbor = match response.split_first() {
        Some((0, body)) => ciborium::from_reader(body).map_err(|e| CtlError::Config(format!("getInfo: {e}")))?,
        _ => return Err(CtlError::Config("getInfo failed".into())),
    };
    let mut out = Map::new();
    for (key, value) in info.as_map().into_iter().flatten() {
        let Some(name) = key.as_integer().and_then(|k| i64::try_from(k).ok()).and_then(get_info_name) else {
            continue;
        };
        let mut value = json_of(value);
        if name == "algorithms" && facts.tpm {
            // The TPM key store signs ES256 (-7) on every TPM; ES384 only
            // where the machine's TPM has P-384 (probed by fidoseald at
            // start), which this statement, made without the TPM, cannot
            // know: it lists the algorithm every TPM machine has.
            if let Json::Array(algorithms) = &mut value {
                algorithms.retain(|a| a["alg"] == -7);
            }
        }
        out.insert(name.into(), value);
    }
    // The aaguid as MDS3 writes it: 32 hex digits.
    out.insert("aaguid".into(), json!(hex::encode(FIDOSEAL_AAGUID)));
    Ok(out)
}

fn get_info_name(key: i64) -> Option<&'static str> {
    Some(match key {
        0x01 => "versions",
        0x02 => "extensions",
        0x03 => "aaguid",
        0x04 => "options",
        0x05 => "maxMsgSize",
        0x06 => "pinUvAuthProtocols",
        0x07 => "maxCredentialCountInList",
        0x08 => "maxCredentialIdLength",
        0x09 => "transports",
        0x0A => "algorithms",
        0x0B => "maxSerializedLargeBlobArray",
        0x0C => "forcePINChange",
        0x0D => "minPINLength",
        0x0E => "firmwareVersion",
        0x0F => "maxCredBlobLength",
        0x10 => "maxRPIDsForSetMinPINLength",
        0x11 => "preferredPlatformUvAttempts",
        0x12 => "uvModality",
        0x13 => "certifications",
        0x14 => "remainingDiscoverableCredentials",
        0x16 => "attestationFormats",
        0x1D => "maxPINLength",
        _ => return None,
    })
}

fn json_of(value: &Cbor) -> Json {
    match value {
        Cbor::Integer(i) => i64::try_from(*i).map(Json::from).unwrap_or(Json::Null),
        Cbor::Bytes(b) => json!(hex::encode(b)),
        Cbor::Text(t) => json!(t),
        Cbor::Bool(b) => json!(b),
        Cbor::Array(items) => Json::Array(items.iter().map(json_of).collect()),
        Cbor::Map(entries) => Json::Object(
            entries
                .iter()
                .map(|(k, v)| {
                    let key = match k {
                        Cbor::Text(t) => t.clone(),
                        Cbor::Integer(i) => i64::try_from(*i).map(|i| i.to_string()).unwrap_or_default(),
                        other => format!("{other:?}"),
                    };
                    (key, json_of(v))
                })
                .collect(),
        ),
        _ => Json::Null,
    }
}

/// The crate version as 0x00MMmmpp, as fidoseald reports it.
fn firmware_version() -> u32 {
    let part = |s: &str| s.parse::<u32>().unwrap_or(0) & 0xff;
    (part(env!("CARGO_PKG_VERSION_MAJOR")) << 16)
        | (part(env!("CARGO_PKG_VERSION_MINOR")) << 8)
        | part(env!("CARGO_PKG_VERSION_PATCH"))
}

fn aaguid_text() -> String {
    let h = hex::encode(FIDOSEAL_AAGUID);
    format!("{}-{}-{}-{}-{}", &h[..8], &h[8..12], &h[12..16], &h[16..20], &h[20..])
}

/// The metadata statement (MDS3 §4, "Metadata Keys").
pub fn statement(facts: &Facts) -> Result<Json, CtlError> {
    let mut algorithms = vec!["secp256r1_ecdsa_sha256_raw"];
    if !facts.tpm {
        algorithms.push("ed25519_eddsa_sha512_raw");
    }
    let mut attestation_types = vec![if facts.attestation_none { "none" } else { "basic_surrogate" }];
    if facts.enterprise_root.is_some() {
        // Enterprise attestation: signed by the organisation's key under its CA.
        attestation_types.push("basic_full");
    }
    // Alternatives (each an AND-combination of one method): a touch, the
    // client PIN, and the configured built-in methods.
    let mut uv = vec![json!([{ "userVerificationMethod": "presence_internal" }])];
    uv.push(json!([{ "userVerificationMethod": "passcode_external" }]));
    for method in &facts.uv_methods {
        let name = match method.as_str() {
            "fingerprint" => "fingerprint_internal",
            "password" | "pin" => "passcode_internal",
            _ => continue,
        };
        let entry = json!([{ "userVerificationMethod": name }]);
        if !uv.contains(&entry) {
            uv.push(entry);
        }
    }
    let roots: Vec<String> =
        facts.enterprise_root.iter().map(|der| base64::engine::general_purpose::STANDARD.encode(der)).collect();
    Ok(json!({
        "legalHeader": "Submission of this statement and retrieval and use of this statement indicates acceptance of the appropriate agreement located at https://fidoalliance.org/metadata/metadata-legal-terms/.",
        "aaguid": aaguid_text(),
        "description": if facts.tpm { "fidoseal virtual FIDO2 security key (keys in the TPM)" } else { "fidoseal virtual FIDO2 security key (software key store)" },
        "authenticatorVersion": firmware_version(),
        "protocolFamily": "fido2",
        "schema": 3,
        "upv": [{ "major": 1, "minor": 1 }, { "major": 1, "minor": 0 }],
        "authenticationAlgorithms": algorithms,
        "publicKeyAlgAndEncodings": ["cose"],
        "attestationTypes": attestation_types,
        "userVerificationDetails": uv,
        "keyProtection": if facts.tpm { json!(["hardware", "tpm"]) } else { json!(["software"]) },
        // The daemon (PAM, fprintd, the PIN verifier) matches, in software.
        "matcherProtection": ["software"],
        "cryptoStrength": 128,
        "attachmentHint": ["internal"],
        "tcDisplay": [],
        "attestationRootCertificates": roots,
        "supportedExtensions": [
            { "id": "credProtect", "fail_if_unknown": false },
            { "id": "hmac-secret", "fail_if_unknown": false },
            { "id": "hmac-secret-mc", "fail_if_unknown": false },
            { "id": "credBlob", "fail_if_unknown": false },
            { "id": "largeBlobKey", "fail_if_unknown": false },
            { "id": "minPinLength", "fail_if_unknown": false },
            { "id": "thirdPartyPayment", "fail_if_unknown": false },
        ],
        "authenticatorGetInfo": get_info(facts)?,
    }))
}

pub fn metadata(args: &MetadataArgs, out: &mut dyn std::io::Write) -> Result<(), CtlError> {
    let facts = facts_from_config(args)?;
    writeln!(out, "{}", serde_json::to_string_pretty(&statement(&facts)?).unwrap_or_default())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// MDS3 §4's required keys of a FIDO2 statement, with their JSON types
    /// (the schema's "required" list, checked here instead of vendoring it).
    const REQUIRED: &[(&str, &str)] = &[
        ("legalHeader", "string"),
        ("aaguid", "string"),
        ("description", "string"),
        ("authenticatorVersion", "number"),
        ("protocolFamily", "string"),
        ("schema", "number"),
        ("upv", "array"),
        ("authenticationAlgorithms", "array"),
        ("publicKeyAlgAndEncodings", "array"),
        ("attestationTypes", "array"),
        ("userVerificationDetails", "array"),
        ("keyProtection", "array"),
        ("matcherProtection", "array"),
        ("attachmentHint", "array"),
        ("tcDisplay", "array"),
        ("attestationRootCertificates", "array"),
    ];

    fn kind(v: &Json) -> &'static str {
        match v {
            Json::String(_) => "string",
            Json::Number(_) => "number",
            Json::Array(_) => "array",
            Json::Object(_) => "object",
            Json::Bool(_) => "boolean",
            Json::Null => "null",
        }
    }

    fn facts(tpm: bool) -> Facts {
        Facts {
            tpm,
            uv_methods: vec!["fingerprint".into(), "password".into(), "pin".into()],
            attestation_none: false,
            enterprise_root: None,
        }
    }

    #[test]
    fn the_statement_has_every_required_key_with_its_type() {
        for tpm in [true, false] {
            let statement = statement(&facts(tpm)).unwrap();
            for (key, expected) in REQUIRED {
                let value = statement.get(*key).unwrap_or_else(|| panic!("{key} missing"));
                assert_eq!(kind(value), *expected, "{key}");
            }
            assert_eq!(statement["protocolFamily"], "fido2");
            assert_eq!(statement["schema"], 3);
            let aaguid = statement["aaguid"].as_str().unwrap();
            assert_eq!(aaguid.len(), 36);
            assert_eq!(aaguid.replace('-', ""), statement["authenticatorGetInfo"]["aaguid"].as_str().unwrap());
            assert!(statement["authenticatorGetInfo"]["versions"].as_array().unwrap().contains(&json!("FIDO_2_1")));
            assert_eq!(statement["authenticatorGetInfo"]["options"]["uv"], true, "fingerprint/password configured");
            let protection = &statement["keyProtection"];
            let algorithms = statement["authenticatorGetInfo"]["algorithms"].as_array().unwrap().clone();
            if tpm {
                assert_eq!(protection, &json!(["hardware", "tpm"]));
                assert_eq!(algorithms, [json!({"alg": -7, "type": "public-key"})]);
                assert_eq!(statement["authenticationAlgorithms"], json!(["secp256r1_ecdsa_sha256_raw"]));
            } else {
                assert_eq!(protection, &json!(["software"]));
                assert!(algorithms.len() >= 2, "{algorithms:?}");
            }
            // Every value of an enumerated key is one MDS3 defines.
            for v in statement["userVerificationDetails"].as_array().unwrap() {
                let method = v[0]["userVerificationMethod"].as_str().unwrap();
                assert!(
                    ["presence_internal", "passcode_external", "fingerprint_internal", "passcode_internal"]
                        .contains(&method),
                    "{method}"
                );
            }
        }
    }

    #[test]
    fn configuration_decides_the_facts() {
        let temp_dir = tempfile::tempdir().unwrap();
        let dir = temp_dir.path();
        let config = dir.join("fidoseald.toml");
        std::fs::write(
            &config,
            format!(
                "[keystore]\nbackend = \"software\"\n[prompt]\nuv_methods = [\"pin\"]\n[authenticator]\nattestation = \"none\"\n\
                 [policy]\ndirs = [\"{}\"]\n",
                dir.join("no-policy").display()
            ),
        )
        .unwrap();
        let args = MetadataArgs { config: config.clone(), keystore: None };
        let facts = facts_from_config(&args).unwrap();
        assert_eq!(
            facts,
            Facts { tpm: false, uv_methods: vec!["pin".into()], attestation_none: true, enterprise_root: None }
        );
        let statement = statement(&facts).unwrap();
        assert_eq!(statement["attestationTypes"], json!(["none"]));
        assert_eq!(
            statement["authenticatorGetInfo"]["options"].get("uv"),
            None,
            "no built-in UV without fingerprint/password"
        );
        // --keystore overrides; a missing file is an error unless it is given.
        let args = MetadataArgs { config: config.clone(), keystore: Some(KeyStoreArg::Tpm) };
        assert!(facts_from_config(&args).unwrap().tpm);
        let missing = MetadataArgs { config: dir.join("missing.toml"), keystore: None };
        let e = facts_from_config(&missing).unwrap_err();
        assert!(e.to_string().contains("--keystore"), "{e}");
        let missing = MetadataArgs { config: dir.join("missing.toml"), keystore: Some(KeyStoreArg::Software) };
        assert!(!facts_from_config(&missing).unwrap().tpm);
        std::fs::write(&config, "[keystore]\nbackend = \"floppy\"\n").unwrap();
        assert!(facts_from_config(&MetadataArgs { config, keystore: None }).is_err());
    }
}
