//! From the files' text to a [`Policy`]: parse each file, check every value,
//! merge `[default]` key by key in file order, give each rule its effective
//! settings, and index the rules by rp pattern. Every problem in every file
//! is collected, so `fidosealctl policy check` shows them all at once.

use std::collections::HashMap;
use std::ops::Range;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use toml::Spanned;
use zeroize::Zeroizing;

use crate::enterprise::{self, EnterpriseAttestation};
use crate::file::{self, RawAction, RawAttestation, RawOperation, RawSettings};
use crate::{
    Action, Attestation, DefaultRule, Diagnostic, Index, Operation, Policy, PolicyError, RpPattern, Rule, Settings,
    BUILT_IN_DEFAULT,
};

const MAX_MESSAGE_CHARS: usize = 256;
const MAX_PROMPT_TIMEOUT_SECS: i64 = 600;
/// CTAP 2.1 §6.5.1: PINs are 4 to 63 bytes.
const PIN_LENGTH_RANGE: std::ops::RangeInclusive<i64> = 4..=63;

/// A file's name and text.
pub(crate) struct Source {
    pub path: PathBuf,
    pub text: String,
}

/// Where a value was written.
struct Here<'a> {
    path: &'a Path,
    text: &'a str,
}

impl Here<'_> {
    fn diag(&self, span: Option<Range<usize>>, key: &str, message: impl Into<String>) -> Diagnostic {
        Diagnostic {
            file: self.path.to_path_buf(),
            line: span.map(|s| file::line_of(self.text, s.start)),
            key: (!key.is_empty()).then(|| key.to_string()),
            message: message.into(),
        }
    }

    fn id(&self, span: &Range<usize>) -> Box<str> {
        format!("{}:{}", self.path.display(), file::line_of(self.text, span.start)).into()
    }
}

/// Settings as one table writes them: only the keys it sets, each with
/// where it was set.
#[derive(Default)]
struct Partial {
    require_user_verification: Option<(bool, Box<str>)>,
    allow_discoverable: Option<(bool, Box<str>)>,
    min_cred_protect: Option<(u8, Box<str>)>,
    attestation: Option<(Attestation, Box<str>)>,
    min_pin_length: Option<(u8, Box<str>)>,
    prompt_timeout: Option<(Duration, Box<str>)>,
    message: Option<(Box<str>, Box<str>)>,
    /// `attestation = "enterprise"`, with its span.
    enterprise: Option<Range<usize>>,
}

impl Partial {
    /// `self` over `base`.
    fn apply(&self, base: &Settings) -> Settings {
        Settings {
            require_user_verification: self
                .require_user_verification
                .as_ref()
                .map_or(base.require_user_verification, |v| v.0),
            allow_discoverable: self.allow_discoverable.as_ref().map_or(base.allow_discoverable, |v| v.0),
            min_cred_protect: self.min_cred_protect.as_ref().map_or(base.min_cred_protect, |v| v.0),
            attestation: self.attestation.as_ref().map(|v| v.0).or(base.attestation),
            min_pin_length: self.min_pin_length.as_ref().map(|v| v.0).or(base.min_pin_length),
            prompt_timeout: self.prompt_timeout.as_ref().map(|v| v.0).or(base.prompt_timeout),
            message: self.message.as_ref().map(|v| v.0.clone()).or_else(|| base.message.clone()),
        }
    }

    /// Key by key, a later file's `[default]` over an earlier one's.
    fn override_with(&mut self, later: Partial) {
        macro_rules! over {
            ($($field:ident),*) => {$(
                if later.$field.is_some() {
                    self.$field = later.$field;
                }
            )*};
        }
        over!(
            require_user_verification,
            allow_discoverable,
            min_cred_protect,
            attestation,
            min_pin_length,
            prompt_timeout,
            message,
            enterprise
        );
    }

    fn origins(&self) -> Vec<(&'static str, Box<str>)> {
        let mut origins = Vec::new();
        let mut add = |key: &'static str, origin: Option<&Box<str>>| {
            if let Some(origin) = origin {
                origins.push((key, origin.clone()));
            }
        };
        add("require_user_verification", self.require_user_verification.as_ref().map(|v| &v.1));
        add("allow_discoverable", self.allow_discoverable.as_ref().map(|v| &v.1));
        add("min_cred_protect", self.min_cred_protect.as_ref().map(|v| &v.1));
        add("attestation", self.attestation.as_ref().map(|v| &v.1));
        add("min_pin_length", self.min_pin_length.as_ref().map(|v| &v.1));
        add("prompt_timeout", self.prompt_timeout.as_ref().map(|v| &v.1));
        add("message", self.message.as_ref().map(|v| &v.1));
        origins
    }
}

/// Checks every setting a table writes; problems go to `errors`.
fn check_settings(raw: RawSettings, table: &str, here: &Here<'_>, errors: &mut Vec<Diagnostic>) -> Partial {
    let key = |name: &str| format!("{table}.{name}");
    let mut partial = Partial::default();
    if let Some(v) = raw.require_user_verification {
        partial.require_user_verification = Some((*v.get_ref(), here.id(&v.span())));
    }
    if let Some(v) = raw.allow_discoverable {
        partial.allow_discoverable = Some((*v.get_ref(), here.id(&v.span())));
    }
    if let Some(v) = raw.min_cred_protect {
        match u8::try_from(*v.get_ref()) {
            Ok(level @ 1..=3) => partial.min_cred_protect = Some((level, here.id(&v.span()))),
            _ => errors.push(here.diag(
                Some(v.span()),
                &key("min_cred_protect"),
                format!(
                    "{} is not a credProtect level: use 1 (userVerificationOptional), \
                     2 (userVerificationOptionalWithCredentialIDList) or 3 (userVerificationRequired)",
                    v.get_ref()
                ),
            )),
        }
    }
    if let Some(v) = raw.attestation {
        match v.get_ref() {
            RawAttestation::None => partial.attestation = Some((Attestation::None, here.id(&v.span()))),
            RawAttestation::SelfAttestation => {
                partial.attestation = Some((Attestation::SelfAttestation, here.id(&v.span())));
            }
            RawAttestation::Machine => partial.attestation = Some((Attestation::Machine, here.id(&v.span()))),
            RawAttestation::Enterprise => {
                partial.enterprise = Some(v.span());
                partial.attestation = Some((Attestation::Enterprise, here.id(&v.span())));
            }
        }
    }
    if let Some(v) = raw.min_pin_length {
        match u8::try_from(*v.get_ref()) {
            Ok(n) if PIN_LENGTH_RANGE.contains(&i64::from(n)) => {
                partial.min_pin_length = Some((n, here.id(&v.span())));
            }
            _ => errors.push(here.diag(
                Some(v.span()),
                &key("min_pin_length"),
                format!(
                    "{} is out of range: a PIN is {} to {} characters",
                    v.get_ref(),
                    PIN_LENGTH_RANGE.start(),
                    PIN_LENGTH_RANGE.end()
                ),
            )),
        }
    }
    if let Some(v) = raw.prompt_timeout {
        match u64::try_from(*v.get_ref()) {
            Ok(secs) if (1..=MAX_PROMPT_TIMEOUT_SECS.unsigned_abs()).contains(&secs) => {
                partial.prompt_timeout = Some((Duration::from_secs(secs), here.id(&v.span())));
            }
            _ => errors.push(here.diag(
                Some(v.span()),
                &key("prompt_timeout"),
                format!("{} is out of range: seconds, 1 to {MAX_PROMPT_TIMEOUT_SECS}", v.get_ref()),
            )),
        }
    }
    if let Some(v) = raw.message {
        let text = v.get_ref();
        if text.trim().is_empty() {
            errors.push(here.diag(Some(v.span()), &key("message"), "the message is empty; remove the key instead"));
        } else if text.chars().count() > MAX_MESSAGE_CHARS {
            errors.push(here.diag(
                Some(v.span()),
                &key("message"),
                format!("the message is longer than {MAX_MESSAGE_CHARS} characters"),
            ));
        } else if text.chars().any(char::is_control) {
            errors.push(here.diag(
                Some(v.span()),
                &key("message"),
                "the message contains control characters (newlines, tabs, escapes)",
            ));
        } else {
            partial.message = Some((text.as_str().into(), here.id(&v.span())));
        }
    }
    partial
}

/// A non-empty list of names (users or groups).
fn check_names(
    list: Option<Spanned<Vec<Spanned<String>>>>,
    key: &str,
    what: &str,
    here: &Here<'_>,
    errors: &mut Vec<Diagnostic>,
) -> Vec<Box<str>> {
    let Some(list) = list else { return Vec::new() };
    let span = list.span();
    let items = list.into_inner();
    if items.is_empty() {
        errors.push(here.diag(
            Some(span),
            key,
            format!("{} = [] matches nobody; remove the key to match every {what}", last_segment(key)),
        ));
    }
    items
        .into_iter()
        .filter_map(|name| {
            let ok = !name.get_ref().is_empty()
                && name.get_ref().len() <= 256
                && !name.get_ref().chars().any(|c| c.is_whitespace() || c.is_control() || c == ':' || c == ',');
            if ok {
                Some(name.get_ref().as_str().into())
            } else {
                errors.push(here.diag(Some(name.span()), key, format!("{:?} is not a {what} name", name.get_ref())));
                None
            }
        })
        .collect()
}

/// The rp patterns of a rule or of `[enterprise_attestation]`.
fn check_rp_list(
    list: Spanned<Vec<Spanned<String>>>,
    key: &str,
    here: &Here<'_>,
    errors: &mut Vec<Diagnostic>,
) -> Vec<(RpPattern, Range<usize>)> {
    let span = list.span();
    let items = list.into_inner();
    if items.is_empty() {
        errors.push(here.diag(
            Some(span),
            key,
            format!(
                "{} = [] matches nothing: list at least one rp ID pattern (or \"*\" for every rp ID)",
                last_segment(key)
            ),
        ));
    }
    items
        .into_iter()
        .filter_map(|text| match RpPattern::parse(text.get_ref()) {
            Ok(pattern) => Some((pattern, text.span())),
            Err(message) => {
                errors.push(here.diag(Some(text.span()), key, message));
                None
            }
        })
        .collect()
}

fn check_enterprise(
    raw: Spanned<file::RawEnterprise>,
    here: &Here<'_>,
    errors: &mut Vec<Diagnostic>,
) -> Option<EnterpriseAttestation> {
    let before = errors.len();
    let raw = raw.into_inner();
    let mut rp_ids = Vec::new();
    for (pattern, span) in check_rp_list(raw.rp_ids, "enterprise_attestation.rp_ids", here, errors) {
        match pattern {
            RpPattern::Exact(id) => rp_ids.push(id),
            other => errors.push(here.diag(
                Some(span),
                "enterprise_attestation.rp_ids",
                format!("{other}: enterprise attestation goes to listed rp IDs only, not to patterns"),
            )),
        }
    }
    let key_pem = read_pem_file(&raw.key, "enterprise_attestation.key", PemKind::PrivateKey, here, errors);
    let span = raw.certificates.span();
    let certificates = raw.certificates.into_inner();
    if certificates.is_empty() {
        errors.push(here.diag(
            Some(span.clone()),
            "enterprise_attestation.certificates",
            "list the attestation certificate first, then its chain",
        ));
    }
    let mut certificate_pems = Vec::with_capacity(certificates.len());
    for cert in &certificates {
        let key = "enterprise_attestation.certificates";
        if let Some(pem) = read_pem_file(cert, key, PemKind::Certificate, here, errors) {
            certificate_pems.push((PathBuf::from(cert.get_ref()), pem.to_string()));
        }
    }
    if errors.len() != before {
        return None;
    }
    let key_pem = key_pem?;
    let origin = (here.path.to_path_buf(), file::line_of(here.text, span.start));
    match enterprise::load(origin, rp_ids, Path::new(raw.key.get_ref()), &key_pem, &certificate_pems) {
        Ok(section) => Some(section),
        Err(problems) => {
            for problem in problems {
                errors.push(match problem {
                    enterprise::Problem::Key(message) => {
                        here.diag(Some(raw.key.span()), "enterprise_attestation.key", message)
                    }
                    enterprise::Problem::Certificate(index, message) => here.diag(
                        certificates.get(index).map(Spanned::span),
                        "enterprise_attestation.certificates",
                        message,
                    ),
                });
            }
            None
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum PemKind {
    PrivateKey,
    Certificate,
}

/// Reads a PEM file named in the policy after checking where it is, who may
/// read it (a private key: its owner only) and its size. `None` after
/// recording the problem.
fn read_pem_file(
    path: &Spanned<String>,
    key: &str,
    kind: PemKind,
    here: &Here<'_>,
    errors: &mut Vec<Diagnostic>,
) -> Option<Zeroizing<String>> {
    let mut fail = |message: String| {
        errors.push(here.diag(Some(path.span()), key, message));
        None
    };
    let name = Path::new(path.get_ref());
    if !name.is_absolute() {
        return fail(format!("{} must be an absolute path", name.display()));
    }
    let metadata = match std::fs::metadata(name) {
        Ok(m) if m.is_file() => m,
        Ok(_) => return fail(format!("{} is not a regular file", name.display())),
        Err(e) => return fail(format!("cannot read {}: {e}", name.display())),
    };
    if kind == PemKind::PrivateKey && metadata.permissions().mode() & 0o077 != 0 {
        return fail(format!("{} is readable by group or others; it must be 0600 or 0400", name.display()));
    }
    if metadata.len() > crate::MAX_FILE_SIZE {
        return fail(format!("{} is too large for a PEM file", name.display()));
    }
    let text = match std::fs::read(name) {
        Ok(bytes) => Zeroizing::new(String::from_utf8_lossy(&bytes).into_owned()),
        Err(e) => return fail(format!("cannot read {}: {e}", name.display())),
    };
    let looks_right = match kind {
        PemKind::PrivateKey => text.contains("-----BEGIN") && text.contains("PRIVATE KEY-----"),
        PemKind::Certificate => text.contains("-----BEGIN CERTIFICATE-----"),
    };
    if !looks_right {
        let want = if kind == PemKind::PrivateKey { "a PEM private key" } else { "a PEM certificate" };
        return fail(format!("{} does not contain {want}", name.display()));
    }
    Some(text)
}

/// A rule as checked, before the final `[default]` is known.
struct Pending {
    id: Box<str>,
    rp: Vec<(RpPattern, Range<usize>)>,
    users: Vec<Box<str>>,
    groups: Vec<Box<str>>,
    operations: Vec<Operation>,
    action: Action,
    settings: Partial,
    file: usize,
}

/// Compiles the files, in order. `dirs` is only recorded, for reports.
pub(crate) fn compile(sources: &[Source], dirs: Vec<(PathBuf, bool)>) -> Result<Policy, PolicyError> {
    let mut errors = Vec::new();
    let mut default_action: Option<(Action, Box<str>)> = None;
    let mut default_settings = Partial::default();
    let mut pending: Vec<Pending> = Vec::new();
    let mut enterprise: Option<EnterpriseAttestation> = None;
    // Where [default] asked for enterprise attestation (refused below).
    let mut default_enterprise: Option<(usize, Range<usize>)> = None;

    for (file_index, source) in sources.iter().enumerate() {
        let here = Here { path: &source.path, text: &source.text };
        let raw = match file::parse(&source.text) {
            Ok(raw) => raw,
            Err(e) => {
                errors.push(Diagnostic {
                    file: source.path.clone(),
                    line: e.offset.map(|o| file::line_of(&source.text, o)),
                    key: Some(e.key),
                    message: e.message,
                });
                continue;
            }
        };
        if let Some(default) = raw.default {
            let mut default = default.into_inner();
            if let Some(action) = &default.action {
                default_action = Some((action_of(*action.get_ref()), here.id(&action.span())));
            }
            let partial = check_settings(default.take_settings(), "default", &here, &mut errors);
            if let Some(span) = &partial.enterprise {
                default_enterprise = Some((file_index, span.clone()));
            }
            default_settings.override_with(partial);
        }
        for rule in raw.rule {
            let header = rule.span();
            let mut rule = rule.into_inner();
            let action = action_of(*rule.action.get_ref());
            let raw_settings = rule.take_settings();
            if action == Action::Deny {
                for (key, span) in raw_settings.set_keys() {
                    errors.push(here.diag(
                        Some(span),
                        &format!("rule.{key}"),
                        "a deny rule takes no settings (only rp, users, groups and operations): \
                         the request is refused before any of them would apply",
                    ));
                }
            }
            let settings = check_settings(raw_settings, "rule", &here, &mut errors);
            let operations = match rule.operations {
                None => Vec::new(),
                Some(list) => {
                    if list.get_ref().is_empty() {
                        errors.push(here.diag(
                            Some(list.span()),
                            "rule.operations",
                            "operations = [] matches nothing; remove the key to match every operation",
                        ));
                    }
                    let mut ops: Vec<Operation> = list
                        .into_inner()
                        .into_iter()
                        .map(|op| match op.into_inner() {
                            RawOperation::MakeCredential => Operation::MakeCredential,
                            RawOperation::GetAssertion => Operation::GetAssertion,
                        })
                        .collect();
                    ops.dedup();
                    ops
                }
            };
            pending.push(Pending {
                id: here.id(&header),
                rp: check_rp_list(rule.rp, "rule.rp", &here, &mut errors),
                users: check_names(rule.users, "rule.users", "user", &here, &mut errors),
                groups: check_names(rule.groups, "rule.groups", "group", &here, &mut errors),
                operations,
                action,
                settings,
                file: file_index,
            });
        }
        if let Some(section) = raw.enterprise_attestation {
            // A later file's section replaces an earlier one's whole.
            enterprise = check_enterprise(section, &here, &mut errors);
        }
    }

    if let Some((file_index, span)) = default_enterprise {
        let source = &sources[file_index];
        let here = Here { path: &source.path, text: &source.text };
        errors.push(here.diag(
            Some(span),
            "default.attestation",
            "enterprise attestation is only for rp IDs listed in [enterprise_attestation]: \
             set it on a rule for those rp IDs, not in [default]",
        ));
    }
    for rule in &pending {
        let Some(span) = &rule.settings.enterprise else { continue };
        let source = &sources[rule.file];
        let here = Here { path: &source.path, text: &source.text };
        let key = "rule.attestation";
        match &enterprise {
            None => errors.push(here.diag(
                Some(span.clone()),
                key,
                "attestation = \"enterprise\" needs a valid [enterprise_attestation] section \
                 (rp_ids, key, certificates)",
            )),
            Some(section) => {
                for (pattern, rp_span) in &rule.rp {
                    let listed = matches!(pattern, RpPattern::Exact(id) if section.rp_ids().contains(id));
                    if !listed {
                        errors.push(here.diag(
                            Some(rp_span.clone()),
                            "rule.rp",
                            format!(
                                "{pattern} is not listed in [enterprise_attestation] rp_ids: \
                                 enterprise attestation goes to listed rp IDs only"
                            ),
                        ));
                    }
                }
            }
        }
    }

    if !errors.is_empty() {
        // In file order, then line order (stable: a line's problems keep their order).
        let position = |d: &Diagnostic| sources.iter().position(|s| s.path == d.file).unwrap_or(usize::MAX);
        errors.sort_by_key(|d| (position(d), d.line));
        return Err(PolicyError { diagnostics: errors });
    }

    let settings = default_settings.apply(&Settings::default());
    let default = DefaultRule {
        id: default_action.as_ref().map_or_else(|| BUILT_IN_DEFAULT.into(), |(_, id)| id.clone()),
        action: default_action.map_or(Action::Allow, |(action, _)| action),
        origins: default_settings.origins(),
        settings,
    };
    let mut index = Index::default();
    let mut rules = Vec::with_capacity(pending.len());
    for (order, rule) in pending.into_iter().enumerate() {
        let order = u32::try_from(order).map_err(|_| PolicyError {
            diagnostics: vec![Diagnostic {
                file: PathBuf::new(),
                line: None,
                key: None,
                message: "too many rules".into(),
            }],
        })?;
        let mut rp: Vec<RpPattern> = Vec::with_capacity(rule.rp.len());
        for (pattern, _) in rule.rp {
            if !rp.contains(&pattern) {
                rp.push(pattern);
            }
        }
        for pattern in &rp {
            match pattern {
                RpPattern::Any => index.any.push(order),
                RpPattern::Exact(id) => {
                    // An AppID URL pattern stands for its host too (rp.rs).
                    let host = crate::rp::app_id_host(id).map(Box::<str>::from);
                    for key in std::iter::once(id.clone()).chain(host) {
                        let ids = index.exact.entry(key).or_default();
                        if !ids.contains(&order) {
                            ids.push(order);
                        }
                    }
                    for application in crate::rp::u2f_applications(id) {
                        let ids = index.u2f.entry(application.into()).or_default();
                        if !ids.contains(&order) {
                            ids.push(order);
                        }
                    }
                }
                RpPattern::Wildcard(suffix) => index.wildcard.entry(suffix.clone()).or_default().push(order),
            }
        }
        let operation_mask = rule.operations.iter().fold(0, |mask, op| mask | op.bit());
        rules.push(Rule {
            id: rule.id,
            rp,
            users: rule.users,
            groups: rule.groups,
            operations: rule.operations,
            action: rule.action,
            settings: rule.settings.apply(&default.settings),
            order,
            operation_mask,
        });
    }
    shrink(&mut index.exact);
    shrink(&mut index.u2f);
    shrink(&mut index.wildcard);
    Ok(Policy {
        files: sources.iter().map(|s| s.path.clone()).collect(),
        dirs,
        rules,
        default,
        index,
        enterprise: enterprise.map(Arc::new),
    })
}

fn shrink(map: &mut HashMap<Box<str>, Vec<u32>>) {
    for ids in map.values_mut() {
        ids.shrink_to_fit();
    }
    map.shrink_to_fit();
}

fn last_segment(key: &str) -> &str {
    key.rsplit('.').next().unwrap_or(key)
}

fn action_of(raw: RawAction) -> Action {
    match raw {
        RawAction::Allow => Action::Allow,
        RawAction::Deny => Action::Deny,
    }
}

impl Rule {
    pub(crate) fn operation_mask(&self) -> u8 {
        self.operation_mask
    }
}
