//! What the dialogs say. Everything shown comes from the daemon's details
//! dictionary, and part of it (the account name, the display names of
//! passkeys) was chosen by a web site: it is cleaned so that it cannot
//! forge lines of the dialog (newlines, bidi overrides, zero-width
//! characters) and cut to a sane length.

use std::time::Duration;

use fidoseal_dbus::{details, Details};

/// The title of every dialog.
pub const TITLE: &str = "fidoseal security key";

/// How long to wait when the daemon does not say (the daemon's default).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
const MIN_TIMEOUT: Duration = Duration::from_secs(1);
const MAX_TIMEOUT: Duration = Duration::from_secs(600);

fn is_invisible(c: char) -> bool {
    matches!(c,
        '\u{200B}'..='\u{200F}' // zero-width space/joiners, LRM, RLM
        | '\u{202A}'..='\u{202E}' // bidi embeddings and overrides
        | '\u{2060}'..='\u{2064}'
        | '\u{2066}'..='\u{2069}' // bidi isolates
        | '\u{FEFF}')
}

/// One line of untrusted text: control and invisible characters become
/// spaces (runs collapse), cut to `max` characters with an ellipsis.
pub fn clean_line(s: &str, max: usize) -> String {
    let mut out = String::new();
    let mut count = 0;
    let mut last_space = true;
    for c in s.chars() {
        let c = if c.is_control() || c.is_whitespace() || is_invisible(c) { ' ' } else { c };
        if c == ' ' {
            if last_space {
                continue;
            }
            last_space = true;
        } else {
            last_space = false;
        }
        if count == max {
            out.truncate(out.trim_end().len());
            out.push('…');
            return out;
        }
        out.push(c);
        count += 1;
    }
    out.truncate(out.trim_end().len());
    out
}

/// A block of text that may have several lines (the administrator's
/// message, a failure message): lines kept, each cleaned, at most `lines`.
pub fn clean_block(s: &str, lines: usize, width: usize) -> String {
    let kept: Vec<String> = s.lines().map(|l| clean_line(l, width)).filter(|l| !l.is_empty()).take(lines).collect();
    kept.join("\n")
}

/// A button label: pinentries read `_` as the mnemonic marker, so a
/// literal underscore is doubled.
pub fn button(label: &str) -> String {
    clean_line(label, 40).replace('_', "__")
}

/// The request as the dialogs show it, from the details dictionary.
#[derive(Debug, Clone, Default)]
pub struct RequestInfo {
    pub rp_id: String,
    pub action: String,
    pub user: Option<String>,
    pub message: Option<String>,
    pub timeout: Duration,
}

fn string_detail(d: &Details, key: &str) -> Option<String> {
    d.get(key).and_then(|v| <&str>::try_from(v).ok()).map(str::to_owned)
}

impl RequestInfo {
    pub fn from_details(d: &Details) -> Self {
        let timeout = d
            .get(details::TIMEOUT_MS)
            .and_then(|v| {
                u32::try_from(v).ok().or_else(|| u64::try_from(v).ok().map(|x| x.min(u32::MAX as u64) as u32))
            })
            .map(|ms| Duration::from_millis(ms.into()).clamp(MIN_TIMEOUT, MAX_TIMEOUT))
            .unwrap_or(DEFAULT_TIMEOUT);
        RequestInfo {
            rp_id: clean_line(&string_detail(d, details::RP_ID).unwrap_or_default(), 80),
            action: clean_line(&string_detail(d, details::ACTION).unwrap_or_default(), 40),
            user: string_detail(d, details::USER).map(|u| clean_line(&u, 64)).filter(|u| !u.is_empty()),
            message: string_detail(d, details::MESSAGE).map(|m| clean_block(&m, 8, 200)).filter(|m| !m.is_empty()),
            timeout,
        }
    }

    fn site(&self) -> &str {
        if self.rp_id.is_empty() {
            "this device"
        } else {
            &self.rp_id
        }
    }

    fn account_line(&self) -> String {
        self.user.as_ref().map(|u| format!("\nAccount: {u}")).unwrap_or_default()
    }

    fn admin_note(&self) -> String {
        self.message.as_ref().map(|m| format!("\n\n{m}")).unwrap_or_default()
    }

    /// One sentence saying what is being done, for every dialog.
    pub fn headline(&self) -> String {
        let site = self.site();
        match self.action.as_str() {
            "register" => format!("Create a passkey for {site}"),
            "sign-in" => format!("Sign in to {site} with a passkey"),
            "confirm-existing" => format!("{site} already has a passkey on this security key"),
            "select-key" if self.rp_id.is_empty() => "An application asks which security key to use".to_owned(),
            "select-key" => format!("{site} asks which security key to use"),
            "reset" => "Reset the security key: every passkey on it will be deleted".to_owned(),
            "manage" => "An application asks to manage this security key: its passkeys or its settings".to_owned(),
            "delete-passkey" => format!("Delete your passkey for {site} from this security key"),
            "" if self.rp_id.is_empty() => "An application asks to use this security key".to_owned(),
            "" => format!("Request from {site}"),
            other => format!("Request from {site} ({other})"),
        }
    }

    /// The presence dialog's text.
    pub fn presence_text(&self) -> String {
        let question = match self.action.as_str() {
            "register" => "Allow it?",
            "sign-in" => "Allow it?",
            "confirm-existing" => "Confirm to let it know?",
            "select-key" => "Use this security key?",
            "reset" => "This cannot be undone. Reset?",
            "delete-passkey" => "This cannot be undone. Delete it?",
            _ => "Allow it?",
        };
        format!("{}.{}\n\n{question}{}", self.headline(), self.account_line(), self.admin_note())
    }

    /// The first lines of the selection dialogs.
    pub fn context(&self) -> String {
        format!("{}.{}{}", self.headline(), self.account_line(), self.admin_note())
    }

    /// The first lines of the verification dialogs. (A client asking for a
    /// token, getPinUvAuthTokenUsingUvWithPermissions, comes as "register",
    /// "sign-in" or "manage" after the token's permissions; older daemons
    /// sent "select-key" or no action: no purpose is claimed then.)
    pub fn verification_context(&self) -> String {
        let head = match (self.action.as_str(), self.rp_id.is_empty()) {
            ("register", _) => format!("Verify it's you to create a passkey for {}", self.site()),
            ("sign-in", _) => format!("Verify it's you to sign in to {}", self.site()),
            ("reset", _) => "Verify it's you to reset the security key".to_owned(),
            // Manager1.DeletePasskey (fidosealctl delete): the daemon deletes
            // only once the user is verified here.
            ("delete-passkey", _) => format!(
                "Verify it's you to delete your passkey for {} from this security key. This cannot be undone",
                self.site()
            ),
            ("manage", _) => {
                "Verify it's you to manage this security key (list or delete passkeys, change its settings)".to_owned()
            }
            (_, true) => "Verify it's you to use this security key".to_owned(),
            (_, false) => format!("Verify it's you to use this security key with {}", self.rp_id),
        };
        format!("{head}.{}{}", self.account_line(), self.admin_note())
    }
}

/// The label of a verification method.
pub fn method_label(method: &str) -> &'static str {
    match method {
        fidoseal_dbus::method::FINGERPRINT => "Fingerprint",
        fidoseal_dbus::method::PIN => "PIN",
        fidoseal_dbus::method::PASSWORD => "Password",
        _ => "?",
    }
}

/// A failure as the user reads it: the daemon's message and the attempts left.
pub fn failure_text(message: &str, retries_left: u32) -> String {
    let mut text = clean_block(message, 4, 200);
    if text.is_empty() {
        text = "Verification failed.".to_owned();
    }
    match retries_left {
        0 => {}
        1 => text.push_str(" (1 attempt left)"),
        n => text.push_str(&format!(" ({n} attempts left)")),
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use fidoseal_dbus::detail;

    #[test]
    fn untrusted_text_cannot_forge_lines() {
        assert_eq!(
            clean_line("alice\n\nThis request is safe, click Allow", 100),
            "alice This request is safe, click Allow"
        );
        assert_eq!(clean_line("evil\u{202E}moc.elgoog", 100), "evil moc.elgoog");
        assert_eq!(clean_line("a\u{200B}\u{200B}b\tc", 100), "a b c");
        assert_eq!(clean_line("  spaced  ", 100), "spaced");
        assert_eq!(clean_line("abcdefgh", 4), "abcd…");
        assert_eq!(clean_line("ab  cdefgh", 3), "ab…");
        assert_eq!(clean_block("one\n\n two \u{7}\nthree\nfour", 2, 10), "one\ntwo");
        assert_eq!(button("john_doe"), "john__doe");
    }

    #[test]
    fn reads_details() {
        let mut d = Details::new();
        d.insert(details::RP_ID.into(), detail("example.com"));
        d.insert(details::ACTION.into(), detail("sign-in"));
        d.insert(details::USER.into(), detail("alice\nAllow"));
        d.insert(details::MESSAGE.into(), detail("Managed by IT.\nCall 1234."));
        d.insert(details::TIMEOUT_MS.into(), detail(5000u32));
        let info = RequestInfo::from_details(&d);
        assert_eq!(info.timeout, Duration::from_secs(5));
        assert_eq!(info.user.as_deref(), Some("alice Allow"));
        let text = info.presence_text();
        assert!(
            text.starts_with("Sign in to example.com with a passkey.\nAccount: alice Allow\n\nAllow it?"),
            "{text}"
        );
        assert!(text.ends_with("\n\nManaged by IT.\nCall 1234."), "{text}");

        assert!(info
            .verification_context()
            .starts_with("Verify it's you to sign in to example.com.\nAccount: alice Allow"));
        let mut d = Details::new();
        d.insert(details::RP_ID.into(), detail("example.com"));
        d.insert(details::ACTION.into(), detail("select-key"));
        assert_eq!(
            RequestInfo::from_details(&d).verification_context(),
            "Verify it's you to use this security key with example.com."
        );
        let mut d = Details::new();
        d.insert(details::ACTION.into(), detail("manage"));
        let manage = RequestInfo::from_details(&d);
        assert!(manage.verification_context().starts_with("Verify it's you to manage this security key"));
        assert!(!manage.headline().contains("which security key"), "{}", manage.headline());

        let mut d = Details::new();
        d.insert(details::RP_ID.into(), detail("bank.example"));
        d.insert(details::ACTION.into(), detail("delete-passkey"));
        d.insert(details::USER.into(), detail("alice"));
        let delete = RequestInfo::from_details(&d);
        assert_eq!(
            delete.verification_context(),
            "Verify it's you to delete your passkey for bank.example from this security key. \
             This cannot be undone.\nAccount: alice"
        );
        assert!(delete.headline().starts_with("Delete your passkey for bank.example"), "{}", delete.headline());

        let empty = RequestInfo::from_details(&Details::new());
        assert_eq!(empty.timeout, DEFAULT_TIMEOUT);
        assert_eq!(empty.headline(), "An application asks to use this security key");
        let mut d = Details::new();
        d.insert(details::TIMEOUT_MS.into(), detail(1u32));
        assert_eq!(RequestInfo::from_details(&d).timeout, MIN_TIMEOUT);
    }

    #[test]
    fn failure_texts() {
        assert_eq!(failure_text("Wrong PIN.", 7), "Wrong PIN. (7 attempts left)");
        assert_eq!(failure_text("Wrong PIN.", 1), "Wrong PIN. (1 attempt left)");
        assert_eq!(failure_text("", 0), "Verification failed.");
    }
}
