//! Relying-party IDs and the patterns that match them.
//!
//! Both sides are normalized the same way before they are compared:
//! ASCII letters are lowercased, one trailing dot is removed
//! (`Example.COM.` is `example.com`), and a name written with Unicode
//! labels is converted to its A-label (punycode) form by UTS 46, so
//! `bücher.example` and `xn--bcher-kva.example` are the same rp ID. A-labels
//! are accepted as given (lowercased) once they decode.
//!
//! Patterns:
//! - `login.example.com`: exactly that rp ID;
//! - `*.example.com`: any name *under* `example.com`, at any depth
//!   (`a.example.com`, `a.b.example.com`), but **not** `example.com` itself
//!   and not `evilexample.com`: list `example.com` as well if it is meant;
//! - `*`: every rp ID, the least specific pattern;
//! - rp IDs that are not host names (OpenSSH's `ssh:`, pam_u2f's
//!   `pam://host`) can be matched exactly; wildcards only ever match host
//!   names.
//!
//! U2F (CTAP1) requests carry no rp ID, only the SHA-256 of the application
//! ID, which the authenticator passes on as 64 lowercase hex digits and
//! flags as CTAP1. For those requests only, an exact pattern matches the
//! hash of its rp ID (what WebAuthn clients and libfido2 send over U2F) and
//! of `https://` + its rp ID (a legacy U2F AppID). A CTAP2 rp ID of 64 hex
//! digits is an rp ID like any other: it matches no hash. Wildcards cannot
//! be matched from a hash: see [`crate::Policy::evaluate`].
//!
//! An rp ID that is an AppID URL, `https://host[:port][/path]` (what U2F-era
//! relying parties and some native tools send as a CTAP2 rp.id), stands for
//! its host, in requests and in exact patterns alike: exact and wildcard
//! rules for the host decide it.

use std::borrow::Cow;
use std::fmt;

/// Longest rp ID accepted in a pattern (a DNS name is at most 253 octets;
/// other rp IDs such as `pam://host` are a little longer).
const MAX_RP_LEN: usize = 512;

/// A normalized rp pattern.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum RpPattern {
    /// `*`: every rp ID.
    Any,
    /// `*.suffix`: the host names under `suffix` (stored without `*.`).
    Wildcard(Box<str>),
    /// One rp ID.
    Exact(Box<str>),
}

impl RpPattern {
    /// Parses and normalizes one pattern as written in a policy file.
    pub fn parse(text: &str) -> Result<Self, String> {
        if text.is_empty() {
            return Err("an rp pattern cannot be empty".into());
        }
        if text.len() > MAX_RP_LEN {
            return Err(format!("an rp pattern is at most {MAX_RP_LEN} bytes long"));
        }
        if let Some(c) = text.chars().find(|c| c.is_whitespace() || c.is_control()) {
            return Err(format!("{text:?} contains {c:?}; rp IDs have no spaces or control characters"));
        }
        if text == "*" {
            return Ok(RpPattern::Any);
        }
        if let Some(suffix) = text.strip_prefix("*.") {
            if suffix.contains('*') {
                return Err(format!(
                    "{text:?}: '*' is allowed only once, as the whole first label, as in \"*.example.com\""
                ));
            }
            let suffix = normalize_host(suffix).map_err(|e| format!("{text:?}: {e}"))?;
            if !is_host_name(&suffix) {
                return Err(format!("{text:?}: the part after \"*.\" must be a host name such as example.com"));
            }
            return Ok(RpPattern::Wildcard(suffix.into()));
        }
        if text.contains('*') {
            return Err(format!(
                "{text:?}: '*' is allowed only as the whole first label, as in \"*.example.com\" \
                 (which matches names under example.com), or alone as \"*\" (every rp ID)"
            ));
        }
        if looks_like_host(text) {
            let host = normalize_host(text).map_err(|e| format!("{text:?}: {e}"))?;
            Ok(RpPattern::Exact(host.into()))
        } else {
            // Not a host name (`ssh:`, `pam://host`): compared as a lowercased string.
            Ok(RpPattern::Exact(normalize_opaque(text).into_owned().into()))
        }
    }

    /// The rank of this pattern in "most specific match decides": every
    /// exact pattern beats every wildcard, a wildcard with more labels beats
    /// one with fewer (`*.corp.example.com` beats `*.example.com`), and `*`
    /// is the least specific.
    pub fn rank(&self) -> u16 {
        match self {
            RpPattern::Any => 0,
            RpPattern::Wildcard(suffix) => wildcard_rank(suffix),
            RpPattern::Exact(_) => EXACT_RANK,
        }
    }

    /// Whether the CTAP2 rp ID `rp_id` (already normalized with
    /// [`normalize_rp_id`]) matches. An exact AppID URL pattern matches its host.
    pub fn matches(&self, rp_id: &str) -> bool {
        match self {
            RpPattern::Any => true,
            RpPattern::Exact(exact) => **exact == *rp_id || app_id_host(exact).is_some_and(|host| host == rp_id),
            RpPattern::Wildcard(suffix) => wildcard_matches(suffix, rp_id),
        }
    }

    /// Whether the U2F application parameter `application` (64 lowercase
    /// hex digits, from a CTAP1 request) matches: exact patterns by hash,
    /// `*`, never a wildcard.
    pub fn matches_u2f(&self, application: &str) -> bool {
        match self {
            RpPattern::Any => true,
            RpPattern::Exact(exact) => u2f_applications(exact).iter().any(|h| h == application),
            RpPattern::Wildcard(_) => false,
        }
    }
}

impl fmt::Display for RpPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RpPattern::Any => f.write_str("*"),
            RpPattern::Wildcard(suffix) => write!(f, "*.{suffix}"),
            RpPattern::Exact(exact) => f.write_str(exact),
        }
    }
}

pub(crate) const EXACT_RANK: u16 = u16::MAX;

pub(crate) fn wildcard_rank(suffix: &str) -> u16 {
    // At most 127 labels fit in a host name: no overlap with EXACT_RANK.
    let labels = suffix.bytes().filter(|&b| b == b'.').count() + 1;
    u16::try_from(labels).unwrap_or(EXACT_RANK - 1).min(EXACT_RANK - 1)
}

/// `*.suffix` matches `rp_id` when `rp_id` is a host name that ends in
/// `.suffix` with at least one label before it.
pub(crate) fn wildcard_matches(suffix: &str, rp_id: &str) -> bool {
    rp_id.len() > suffix.len() + 1
        && rp_id.ends_with(suffix)
        && rp_id.as_bytes()[rp_id.len() - suffix.len() - 1] == b'.'
        && is_host_name(rp_id)
}

/// Whether a (normalized) rp ID is a U2F application parameter as the
/// authenticator passes it: 64 hex digits. No host name looks like that (a
/// DNS label is at most 63 characters).
pub fn is_u2f_application(rp_id: &str) -> bool {
    rp_id.len() == 64 && rp_id.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// The U2F application parameters an exact rp ID stands for, in hex:
/// SHA-256 of the rp ID, and for host names of `https://` + the rp ID.
pub(crate) fn u2f_applications(rp_id: &str) -> Vec<String> {
    use sha2::{Digest, Sha256};
    let digest = |data: &[u8]| hex::encode(Sha256::digest(data));
    let mut out = vec![digest(rp_id.as_bytes())];
    if is_host_name(rp_id) {
        out.push(digest(format!("https://{rp_id}").as_bytes()));
    }
    out
}

/// The host an AppID URL stands for: `https://host[:port][/path][?…][#…]`
/// with a valid host name, normalized like an rp ID. `None` for anything
/// else, including URLs with user information (`https://a@b/`), which are
/// compared as they are written.
pub(crate) fn app_id_host(rp_id: &str) -> Option<String> {
    let scheme = rp_id.get(..8)?;
    if !scheme.eq_ignore_ascii_case("https://") {
        return None;
    }
    let authority = rp_id[8..].split(['/', '?', '#']).next().unwrap_or("");
    if authority.contains('@') {
        return None;
    }
    let host = match authority.rsplit_once(':') {
        Some((host, port)) if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => host,
        Some(_) => return None,
        None => authority,
    };
    if !looks_like_host(host) {
        return None;
    }
    let host = normalize_plain_rp_id(host);
    is_host_name(&host).then(|| host.into_owned())
}

/// Normalizes an rp ID from a request: lowercase, no trailing dot, A-labels
/// for Unicode names, an AppID URL replaced by its host. Borrows when the ID
/// is already in that form (what browsers send), so the common case does not
/// allocate. An ID that is not a valid internationalized name is lowercased
/// and compared as it is: it can then only match an exact pattern written
/// the same way, or `*`.
pub fn normalize_rp_id(rp_id: &str) -> Cow<'_, str> {
    match app_id_host(rp_id) {
        Some(host) => Cow::Owned(host),
        None => normalize_plain_rp_id(rp_id),
    }
}

fn normalize_plain_rp_id(rp_id: &str) -> Cow<'_, str> {
    let trimmed = rp_id.strip_suffix('.').unwrap_or(rp_id);
    if trimmed.is_ascii() {
        if trimmed.bytes().any(|b| b.is_ascii_uppercase()) {
            Cow::Owned(trimmed.to_ascii_lowercase())
        } else {
            Cow::Borrowed(trimmed)
        }
    } else if looks_like_host(trimmed) {
        match idna::domain_to_ascii_cow(trimmed.as_bytes(), idna::AsciiDenyList::URL) {
            Ok(ascii) => Cow::Owned(ascii.into_owned()),
            Err(_) => Cow::Owned(trimmed.to_lowercase()),
        }
    } else {
        Cow::Owned(trimmed.to_lowercase())
    }
}

/// A host name as rp patterns understand it: dot-separated labels of
/// ASCII lowercase letters, digits, '-' and '_', none empty, none longer
/// than 63, at most 253 bytes in all.
pub(crate) fn is_host_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
        })
}

/// Whether `text` is meant as a host name rather than an opaque rp ID
/// such as `ssh:` or `pam://host`.
fn looks_like_host(text: &str) -> bool {
    !text.contains([':', '/', '@', '?', '#', '[', ']', '\\'])
}

fn normalize_opaque(text: &str) -> Cow<'_, str> {
    if text.bytes().any(|b| b.is_ascii_uppercase()) || !text.is_ascii() {
        Cow::Owned(text.to_lowercase())
    } else {
        Cow::Borrowed(text)
    }
}

/// Normalizes and validates a host name written in a policy file.
fn normalize_host(text: &str) -> Result<String, String> {
    let trimmed = text.strip_suffix('.').unwrap_or(text);
    if trimmed.is_empty() || trimmed.split('.').any(str::is_empty) {
        return Err("a host name has no empty labels (\"..\", or a leading dot)".into());
    }
    let ascii = if trimmed.is_ascii() {
        let lower = trimmed.to_ascii_lowercase();
        if lower.split('.').any(|l| l.starts_with("xn--")) {
            // A-labels are kept as written, but they must decode.
            let checked = idna::domain_to_ascii_cow(lower.as_bytes(), idna::AsciiDenyList::URL)
                .map_err(|_| "an xn-- label is not valid punycode (IDNA)".to_string())?;
            if *checked != *lower {
                return Err(format!("the A-labels are not in canonical form; write {checked}"));
            }
        }
        lower
    } else {
        idna::domain_to_ascii_cow(trimmed.as_bytes(), idna::AsciiDenyList::URL)
            .map_err(|_| "not a valid internationalized domain name (UTS 46)".to_string())?
            .into_owned()
    };
    if !is_host_name(&ascii) {
        return Err(
            "not a valid host name (labels of letters, digits, '-' and '_', 1 to 63 characters, 253 in all)".into()
        );
    }
    Ok(ascii)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(text: &str) -> RpPattern {
        RpPattern::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"))
    }

    #[test]
    fn patterns_are_normalized() {
        let table: &[(&str, RpPattern)] = &[
            ("example.com", RpPattern::Exact("example.com".into())),
            ("Example.COM.", RpPattern::Exact("example.com".into())),
            ("*.Example.com", RpPattern::Wildcard("example.com".into())),
            ("*.example.com.", RpPattern::Wildcard("example.com".into())),
            ("*", RpPattern::Any),
            ("bücher.example", RpPattern::Exact("xn--bcher-kva.example".into())),
            ("BÜCHER.example", RpPattern::Exact("xn--bcher-kva.example".into())),
            ("XN--BCHER-KVA.example", RpPattern::Exact("xn--bcher-kva.example".into())),
            ("*.bücher.example", RpPattern::Wildcard("xn--bcher-kva.example".into())),
            ("ssh:", RpPattern::Exact("ssh:".into())),
            ("pam://Host1", RpPattern::Exact("pam://host1".into())),
            ("_acme.example.com", RpPattern::Exact("_acme.example.com".into())),
        ];
        for (text, want) in table {
            assert_eq!(&p(text), want, "{text}");
        }
    }

    #[test]
    fn bad_patterns_are_refused_with_a_reason() {
        let table: &[(&str, &str)] = &[
            ("", "empty"),
            ("*example.com", "first label"),
            ("a.*.com", "first label"),
            ("*.*.com", "only once"),
            ("**.example.com", "first label"),
            ("*.", "empty labels"),
            ("*.example..com", "empty labels"),
            (".example.com", "empty labels"),
            ("exa mple.com", "spaces"),
            ("example.com\n", "control"),
            ("xn--zz.example", "punycode"),
            ("exa$mple.com", "not a valid host name"),
        ];
        for (text, reason) in table {
            let err = RpPattern::parse(text).expect_err(text);
            assert!(err.contains(reason), "{text:?}: {err}");
        }
    }

    #[test]
    fn request_rp_ids_are_normalized_without_allocating_when_canonical() {
        assert!(matches!(normalize_rp_id("login.example.com"), Cow::Borrowed("login.example.com")));
        assert_eq!(normalize_rp_id("Login.Example.COM."), "login.example.com");
        assert_eq!(normalize_rp_id("bücher.example"), "xn--bcher-kva.example");
        assert_eq!(normalize_rp_id("ssh:"), "ssh:");
        assert_eq!(normalize_rp_id("https://Login.Example.com:8443/app-id.json"), "login.example.com");
        assert_eq!(normalize_rp_id("HTTPS://bücher.example/"), "xn--bcher-kva.example");
        assert_eq!(normalize_rp_id("https://a@login.example.com/"), "https://a@login.example.com/");
        assert_eq!(normalize_rp_id("https://[::1]/"), "https://[::1]/");
        assert_eq!(normalize_rp_id("https:///x"), "https:///x");
        assert!(p("https://login.example.com/app.json").matches("login.example.com"));
    }

    #[test]
    fn wildcards_match_names_under_the_suffix_only() {
        let w = p("*.example.com");
        let table: &[(&str, bool)] = &[
            ("a.example.com", true),
            ("a.b.example.com", true),
            ("example.com", false),
            ("evilexample.com", false),
            ("example.com.evil.org", false),
            (".example.com", false),
            ("a..example.com", false),
            ("pam://x.example.com", false),
            ("com", false),
        ];
        for (rp, want) in table {
            assert_eq!(w.matches(rp), *want, "{rp}");
        }
    }

    #[test]
    fn exact_patterns_match_u2f_application_hashes() {
        let apps = u2f_applications("login.example.com");
        assert_eq!(
            apps,
            [
                // SHA-256("login.example.com") and SHA-256("https://login.example.com").
                "0c6ca0839c3a5683557833f618a2556665df2a088964787d53850b4ad4d3bedc",
                "4b246bc1a12459de3b1003951d2219e7408ab213dfd526443a48642f9b3facf1",
            ]
        );
        assert!(apps.iter().all(|a| is_u2f_application(a)));
        let exact = p("login.example.com");
        assert!(apps.iter().all(|a| exact.matches_u2f(a)));
        assert!(!apps.iter().any(|a| exact.matches(a)), "a CTAP2 rp ID is never matched by hash");
        assert!(!p("other.example.com").matches_u2f(&apps[0]));
        assert!(!p("*.example.com").matches_u2f(&apps[0]));
        assert!(p("*").matches_u2f(&apps[0]));
        assert_eq!(u2f_applications("ssh:").len(), 1);
        assert!(!is_u2f_application("login.example.com"));
        assert!(!is_u2f_application(&"A".repeat(64)), "normalized hashes are lowercase");
    }

    #[test]
    fn ranks_order_exact_over_longer_wildcards_over_shorter_over_any() {
        assert!(p("a.example.com").rank() > p("*.corp.example.com").rank());
        assert!(p("*.corp.example.com").rank() > p("*.example.com").rank());
        assert!(p("*.com").rank() > p("*").rank());
    }
}
