//! One policy file as written: the serde structures (every value kept with
//! its span, so that each rule and each bad key can be named by file and
//! line), and the mapping of toml's errors to `file:line: key: message`.

use std::ops::Range;

use serde::Deserialize;
use toml::Spanned;

/// A whole file. Every table refuses unknown keys.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawFile {
    pub default: Option<Spanned<RawDefault>>,
    #[serde(default)]
    pub rule: Vec<Spanned<RawRule>>,
    pub enterprise_attestation: Option<Spanned<RawEnterprise>>,
}

/// `[default]`: the action when no rule matches, and the settings every
/// rule starts from. Later files override earlier ones key by key.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawDefault {
    pub action: Option<Spanned<RawAction>>,
    pub require_user_verification: Option<Spanned<bool>>,
    pub allow_discoverable: Option<Spanned<bool>>,
    pub min_cred_protect: Option<Spanned<i64>>,
    pub attestation: Option<Spanned<RawAttestation>>,
    pub min_pin_length: Option<Spanned<i64>>,
    pub prompt_timeout: Option<Spanned<i64>>,
    pub message: Option<Spanned<String>>,
}

/// `[[rule]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRule {
    pub rp: Spanned<Vec<Spanned<String>>>,
    pub users: Option<Spanned<Vec<Spanned<String>>>>,
    pub groups: Option<Spanned<Vec<Spanned<String>>>>,
    pub operations: Option<Spanned<Vec<Spanned<RawOperation>>>>,
    pub action: Spanned<RawAction>,
    pub require_user_verification: Option<Spanned<bool>>,
    pub allow_discoverable: Option<Spanned<bool>>,
    pub min_cred_protect: Option<Spanned<i64>>,
    pub attestation: Option<Spanned<RawAttestation>>,
    pub min_pin_length: Option<Spanned<i64>>,
    pub prompt_timeout: Option<Spanned<i64>>,
    pub message: Option<Spanned<String>>,
}

/// The settings a rule or `[default]` can set (the same keys in both; serde's
/// `flatten` would lose the spans and `deny_unknown_fields`, hence the
/// copies). Numbers are read as i64 and range-checked afterwards, for
/// messages better than "expected u8".
#[derive(Debug, Default)]
pub(crate) struct RawSettings {
    pub require_user_verification: Option<Spanned<bool>>,
    pub allow_discoverable: Option<Spanned<bool>>,
    pub min_cred_protect: Option<Spanned<i64>>,
    pub attestation: Option<Spanned<RawAttestation>>,
    pub min_pin_length: Option<Spanned<i64>>,
    pub prompt_timeout: Option<Spanned<i64>>,
    pub message: Option<Spanned<String>>,
}

macro_rules! take_settings {
    ($raw:expr) => {
        RawSettings {
            require_user_verification: $raw.require_user_verification.take(),
            allow_discoverable: $raw.allow_discoverable.take(),
            min_cred_protect: $raw.min_cred_protect.take(),
            attestation: $raw.attestation.take(),
            min_pin_length: $raw.min_pin_length.take(),
            prompt_timeout: $raw.prompt_timeout.take(),
            message: $raw.message.take(),
        }
    };
}

impl RawDefault {
    pub fn take_settings(&mut self) -> RawSettings {
        take_settings!(self)
    }
}

impl RawRule {
    pub fn take_settings(&mut self) -> RawSettings {
        take_settings!(self)
    }
}

impl RawSettings {
    /// The keys that are set, with their spans (deny rules take none).
    pub fn set_keys(&self) -> Vec<(&'static str, Range<usize>)> {
        let mut keys = Vec::new();
        let mut add = |name: &'static str, span: Option<Range<usize>>| {
            if let Some(span) = span {
                keys.push((name, span));
            }
        };
        add("require_user_verification", self.require_user_verification.as_ref().map(Spanned::span));
        add("allow_discoverable", self.allow_discoverable.as_ref().map(Spanned::span));
        add("min_cred_protect", self.min_cred_protect.as_ref().map(Spanned::span));
        add("attestation", self.attestation.as_ref().map(Spanned::span));
        add("min_pin_length", self.min_pin_length.as_ref().map(Spanned::span));
        add("prompt_timeout", self.prompt_timeout.as_ref().map(Spanned::span));
        add("message", self.message.as_ref().map(Spanned::span));
        keys
    }
}

#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub(crate) enum RawAction {
    Allow,
    Deny,
}

#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub(crate) enum RawAttestation {
    None,
    #[serde(rename = "self")]
    SelfAttestation,
    Machine,
    Enterprise,
}

#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum RawOperation {
    MakeCredential,
    GetAssertion,
}

/// `[enterprise_attestation]`: which rp IDs may receive enterprise
/// attestation, and the administrator's attestation key and chain.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawEnterprise {
    pub rp_ids: Spanned<Vec<Spanned<String>>>,
    pub key: Spanned<String>,
    pub certificates: Spanned<Vec<Spanned<String>>>,
}

/// A toml error as (byte offset, key path, message).
pub(crate) struct LocatedError {
    pub offset: Option<usize>,
    pub key: String,
    pub message: String,
}

/// Parses `text`; on error, finds the key the error is about.
pub(crate) fn parse(text: &str) -> Result<RawFile, LocatedError> {
    toml::from_str::<RawFile>(text).map_err(|error| {
        let offset = error.span().map(|s| s.start);
        let message = error.message().trim().to_string();
        let mut key = offset.map(|o| key_at(text, o)).unwrap_or_default();
        if key.is_empty() {
            key = offset.map(|o| key_on_line(text, o)).unwrap_or_default();
        }
        // "missing field `rp`" points at the table header.
        if let Some(field) = between(&message, "missing field `", "`") {
            key = if key.is_empty() { field.to_string() } else { format!("{key}.{field}") };
        }
        if key.is_empty() {
            key = "toml".into();
        }
        LocatedError { offset, key, message }
    })
}

fn between<'a>(text: &'a str, start: &str, end: &str) -> Option<&'a str> {
    let rest = &text[text.find(start)? + start.len()..];
    Some(&rest[..rest.find(end)?])
}

/// The dotted key path (`rule.min_cred_protect`, `default.action`) whose key
/// or value contains byte `offset`, from the document's own spans. Empty
/// when the document does not parse far enough or nothing contains it.
fn key_at(text: &str, offset: usize) -> String {
    let (table, _errors) = toml::de::DeTable::parse_recoverable(text);
    let mut path = Vec::new();
    if find_in_table(table.get_ref(), offset, &mut path) {
        path.join(".")
    } else {
        String::new()
    }
}

fn find_in_table(table: &toml::de::DeTable<'_>, offset: usize, path: &mut Vec<String>) -> bool {
    for (key, value) in table {
        path.push(key.get_ref().to_string());
        if key.span().contains(&offset) || find_in_value(value, offset, path) {
            return true;
        }
        path.pop();
    }
    false
}

fn find_in_value(value: &Spanned<toml::de::DeValue<'_>>, offset: usize, path: &mut Vec<String>) -> bool {
    use toml::de::DeValue;
    match value.get_ref() {
        // Tables (headers, inline, dotted) are not one contiguous span: look inside.
        DeValue::Table(table) => find_in_table(table, offset, path) || value.span().contains(&offset),
        DeValue::Array(array) => {
            array.iter().any(|item| find_in_value(item, offset, path)) || value.span().contains(&offset)
        }
        _ => value.span().contains(&offset),
    }
}

/// When the document does not parse far enough to hold the key (a
/// duplicate key, a syntax error), the key is read off the error's line:
/// `name = ...` under the nearest `[table]` header above it, or the header.
fn key_on_line(text: &str, offset: usize) -> String {
    let Some(before) = text.get(..offset.min(text.len())) else { return String::new() };
    let start = before.rfind('\n').map_or(0, |i| i + 1);
    let line = text.get(start..).and_then(|rest| rest.lines().next()).unwrap_or("").trim();
    let header = |line: &str| -> Option<String> {
        let name = line.strip_prefix('[')?.trim_start_matches('[');
        let name = name.split(']').next()?.trim();
        (!name.is_empty() && is_bare_key_path(name)).then(|| name.to_string())
    };
    if line.starts_with('[') {
        return header(line).unwrap_or_default();
    }
    let Some((name, _)) = line.split_once('=') else { return String::new() };
    let name = name.trim();
    if name.is_empty() || !is_bare_key_path(name) {
        return String::new();
    }
    let table = before[..start].lines().rev().map(str::trim).find(|l| l.starts_with('[')).and_then(header);
    match table {
        Some(table) => format!("{table}.{name}"),
        None => name.to_string(),
    }
}

fn is_bare_key_path(name: &str) -> bool {
    name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
}

/// 1-based line of byte `offset` in `text`.
pub(crate) fn line_of(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes()[..end].iter().filter(|&&b| b == b'\n').count() + 1
}
