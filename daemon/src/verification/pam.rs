//! The device user's password, checked by the daemon through PAM under its
//! own service (`/etc/pam.d/fidoseal`, packaging/pam.d/fidoseal).
//!
//! A direct binding of the five libpam calls used (pam_start_confdir,
//! pam_authenticate, pam_acct_mgmt, pam_end, pam_strerror) rather than the
//! `pam`/`pam-client` crates: both build on pam-sys 1.0, whose build script
//! runs bindgen and so needs libclang at build time, for an ABI that has
//! not changed since Linux-PAM 0.x. Linking needs libpam0g-dev
//! (scripts/install-deps).
//!
//! The password is handed to PAM only through the conversation function,
//! as a malloc'ed copy that PAM frees; our copies are zeroized. Nothing here
//! logs it.

use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::path::{Path, PathBuf};

use zeroize::Zeroizing;

// Linux-PAM's <security/_pam_types.h>.
const PAM_SUCCESS: c_int = 0;
const PAM_BUF_ERR: c_int = 5;
const PAM_PERM_DENIED: c_int = 6;
const PAM_AUTH_ERR: c_int = 7;
const PAM_CRED_INSUFFICIENT: c_int = 8;
const PAM_USER_UNKNOWN: c_int = 10;
const PAM_MAXTRIES: c_int = 11;
const PAM_NEW_AUTHTOK_REQD: c_int = 12;
const PAM_ACCT_EXPIRED: c_int = 13;
const PAM_CONV_ERR: c_int = 19;
const PAM_SILENT: c_int = 0x8000;
const PAM_DISALLOW_NULL_AUTHTOK: c_int = 0x0001;
const PAM_PROMPT_ECHO_OFF: c_int = 1;
const PAM_PROMPT_ECHO_ON: c_int = 2;
const PAM_ERROR_MSG: c_int = 3;
const PAM_TEXT_INFO: c_int = 4;

#[repr(C)]
struct PamMessage {
    msg_style: c_int,
    msg: *const c_char,
}

#[repr(C)]
struct PamResponse {
    resp: *mut c_char,
    resp_retcode: c_int,
}

type ConvFn = extern "C" fn(c_int, *mut *const PamMessage, *mut *mut PamResponse, *mut c_void) -> c_int;

#[repr(C)]
struct PamConv {
    conv: ConvFn,
    appdata_ptr: *mut c_void,
}

#[repr(C)]
struct PamHandle {
    _opaque: [u8; 0],
}

#[link(name = "pam")]
extern "C" {
    fn pam_start_confdir(
        service_name: *const c_char,
        user: *const c_char,
        pam_conversation: *const PamConv,
        confdir: *const c_char,
        pamh: *mut *mut PamHandle,
    ) -> c_int;
    fn pam_authenticate(pamh: *mut PamHandle, flags: c_int) -> c_int;
    fn pam_acct_mgmt(pamh: *mut PamHandle, flags: c_int) -> c_int;
    fn pam_end(pamh: *mut PamHandle, pam_status: c_int) -> c_int;
    fn pam_strerror(pamh: *mut PamHandle, errnum: c_int) -> *const c_char;
}

/// Where PAM service files are looked up (Linux-PAM's defaults).
const SERVICE_DIRS: [&str; 2] = ["/etc/pam.d", "/usr/lib/pam.d"];

/// What a PAM check found.
#[derive(Debug, PartialEq, Eq)]
pub enum PamResult {
    /// The password is right and the account may be used.
    Verified,
    /// Wrong password, or the account is locked or expired: a failed attempt.
    Failed(String),
    /// PAM could not decide (missing service, module error): not the user's fault.
    Error(String),
}

/// Checks passwords of one user under one PAM service.
#[derive(Debug, Clone)]
pub struct PamVerifier {
    service: String,
    /// A service directory other than PAM's default (tests only).
    confdir: Option<PathBuf>,
}

impl PamVerifier {
    pub fn new(service: &str) -> Self {
        Self { service: service.to_owned(), confdir: None }
    }

    /// Reads the service file from `confdir` instead of /etc/pam.d (tests).
    #[cfg(test)]
    pub fn with_confdir(service: &str, confdir: &Path) -> Self {
        Self { service: service.to_owned(), confdir: Some(confdir.to_owned()) }
    }

    /// The service file exists, so a password can be checked at all.
    pub fn available(&self) -> bool {
        match &self.confdir {
            Some(dir) => dir.join(&self.service).is_file(),
            None => SERVICE_DIRS.iter().any(|d| Path::new(d).join(&self.service).is_file()),
        }
    }

    /// Authenticates `user` with `password`, then checks the account
    /// (expired, locked). Blocks: PAM modules may sleep (pam_faildelay).
    pub fn verify(&self, user: &str, password: &str) -> PamResult {
        if !self.available() {
            return PamResult::Error(format!("PAM service {:?} is not installed", self.service));
        }
        let (Ok(service), Ok(user_c)) = (CString::new(self.service.as_str()), CString::new(user)) else {
            return PamResult::Error("a NUL byte in the PAM service or user name".into());
        };
        let confdir = match &self.confdir {
            Some(dir) => match CString::new(dir.as_os_str().as_encoded_bytes()) {
                Ok(c) => Some(c),
                Err(_) => return PamResult::Error("a NUL byte in the PAM directory".into()),
            },
            None => None,
        };
        let Ok(secret) = CString::new(password.as_bytes()) else {
            // A password with a NUL byte cannot be anyone's password.
            return PamResult::Failed("the password holds a NUL byte".into());
        };
        let secret = Zeroizing::new(secret.into_bytes_with_nul());
        let mut appdata = Conversation { password: &secret };
        let conv = PamConv { conv: converse, appdata_ptr: (&mut appdata as *mut Conversation<'_>).cast() };
        let mut handle: *mut PamHandle = std::ptr::null_mut();
        // SAFETY: every pointer is valid for the duration of the calls:
        // `conv` and `appdata` outlive `handle`, which pam_end releases
        // before they go out of scope; the C strings are NUL-terminated.
        unsafe {
            let started = pam_start_confdir(
                service.as_ptr(),
                user_c.as_ptr(),
                &conv,
                confdir.as_ref().map_or(std::ptr::null(), |c| c.as_ptr()),
                &mut handle,
            );
            if started != PAM_SUCCESS || handle.is_null() {
                return PamResult::Error(format!("pam_start({}) failed: {}", self.service, describe(handle, started)));
            }
            let flags = PAM_SILENT | PAM_DISALLOW_NULL_AUTHTOK;
            let mut status = pam_authenticate(handle, flags);
            let stage = "authenticate";
            let result = if status == PAM_SUCCESS {
                status = pam_acct_mgmt(handle, flags);
                classify("account", status, describe(handle, status))
            } else {
                classify(stage, status, describe(handle, status))
            };
            pam_end(handle, status);
            result
        }
    }
}

fn classify(stage: &str, status: c_int, text: String) -> PamResult {
    match status {
        PAM_SUCCESS => PamResult::Verified,
        // pam_acct_mgmt asks for a new password: the password was right.
        PAM_NEW_AUTHTOK_REQD => PamResult::Verified,
        PAM_AUTH_ERR | PAM_PERM_DENIED | PAM_CRED_INSUFFICIENT | PAM_MAXTRIES | PAM_ACCT_EXPIRED | PAM_USER_UNKNOWN => {
            PamResult::Failed(format!("{stage}: {text}"))
        }
        _ => PamResult::Error(format!("{stage}: {text}")),
    }
}

/// pam_strerror's text for `status`.
///
/// # Safety
/// `handle` is null or a live PAM handle.
unsafe fn describe(handle: *mut PamHandle, status: c_int) -> String {
    let text = pam_strerror(handle, status);
    if text.is_null() {
        return format!("PAM error {status}");
    }
    format!("{} ({status})", CStr::from_ptr(text).to_string_lossy())
}

struct Conversation<'a> {
    /// The password, NUL-terminated.
    password: &'a [u8],
}

/// PAM's conversation: answers hidden prompts with the password, logs the
/// modules' messages, refuses visible prompts (the user is already set).
extern "C" fn converse(
    count: c_int,
    messages: *mut *const PamMessage,
    responses: *mut *mut PamResponse,
    appdata: *mut c_void,
) -> c_int {
    let Ok(count) = usize::try_from(count) else { return PAM_CONV_ERR };
    if count == 0 || messages.is_null() || responses.is_null() || appdata.is_null() {
        return PAM_CONV_ERR;
    }
    // SAFETY: PAM passes `count` messages and a place for the answers;
    // `appdata` is the Conversation that `verify` gave to pam_start. The
    // answer array and every answer string are malloc'ed, as PAM frees them.
    unsafe {
        let conversation = &*(appdata as *const Conversation<'_>);
        let answers = libc::calloc(count, std::mem::size_of::<PamResponse>()) as *mut PamResponse;
        if answers.is_null() {
            return PAM_BUF_ERR;
        }
        for i in 0..count {
            // Linux-PAM passes an array of pointers (`*messages[i]`).
            let message = *messages.add(i);
            if message.is_null() {
                free_answers(answers, i);
                return PAM_CONV_ERR;
            }
            let text = || {
                if (*message).msg.is_null() {
                    String::new()
                } else {
                    CStr::from_ptr((*message).msg).to_string_lossy().into_owned()
                }
            };
            match (*message).msg_style {
                PAM_PROMPT_ECHO_OFF => {
                    let copy = libc::malloc(conversation.password.len()) as *mut u8;
                    if copy.is_null() {
                        free_answers(answers, i);
                        return PAM_BUF_ERR;
                    }
                    std::ptr::copy_nonoverlapping(conversation.password.as_ptr(), copy, conversation.password.len());
                    (*answers.add(i)).resp = copy.cast();
                }
                PAM_PROMPT_ECHO_ON => {
                    tracing::warn!(prompt = %text(), "PAM module asked a visible question; refused");
                    free_answers(answers, i);
                    return PAM_CONV_ERR;
                }
                PAM_ERROR_MSG => tracing::info!(message = %text(), "PAM error message"),
                PAM_TEXT_INFO => tracing::debug!(message = %text(), "PAM message"),
                other => {
                    tracing::warn!(style = other, "unknown PAM message style; refused");
                    free_answers(answers, i);
                    return PAM_CONV_ERR;
                }
            }
        }
        *responses = answers;
        PAM_SUCCESS
    }
}

/// Frees the first `filled` answers (wiping them) and the array.
///
/// # Safety
/// `answers` came from calloc with at least `filled` entries.
unsafe fn free_answers(answers: *mut PamResponse, filled: usize) {
    for i in 0..filled {
        let resp = (*answers.add(i)).resp;
        if !resp.is_null() {
            let len = libc::strlen(resp);
            std::ptr::write_bytes(resp, 0, len);
            libc::free(resp.cast());
        }
    }
    libc::free(answers.cast());
}

#[cfg(test)]
mod tests {
    //! PAM service files written into a temporary directory and read with
    //! pam_start_confdir: /etc/pam.d is never touched.
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    struct TempDir(tempfile::TempDir);

    impl TempDir {
        fn new(name: &str) -> Self {
            Self(tempfile::Builder::new().prefix(&format!("fidoseal-pam-{name}-")).tempdir().unwrap())
        }

        fn service(&self, name: &str, text: &str) -> PamVerifier {
            std::fs::write(self.0.path().join(name), text).unwrap();
            PamVerifier::with_confdir(name, self.0.path())
        }
    }

    /// A service whose auth step runs a script that reads the password from
    /// stdin (pam_exec expose_authtok) and accepts only "correct horse".
    fn checking_service(dir: &TempDir) -> PamVerifier {
        let script = dir.0.path().join("check-password");
        std::fs::write(&script, "#!/bin/sh\n# pam_exec writes the password and a NUL byte.\npw=$(tr -d '\\000')\n[ \"$pw\" = 'correct horse' ]\n").unwrap();
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        dir.service(
            "fidoseal-test-exec",
            // pam_exec fails with PAM_SYSTEM_ERR; jump over pam_deny on
            // success so that a wrong password is PAM_AUTH_ERR, as pam_unix says.
            &format!(
                "auth [success=1 default=ignore] pam_exec.so quiet expose_authtok {}\n\
                 auth requisite pam_deny.so\nauth required pam_permit.so\naccount required pam_permit.so\n",
                script.display()
            ),
        )
    }

    #[test]
    fn permit_and_deny() {
        let dir = TempDir::new("permit-deny");
        let permit =
            dir.service("fidoseal-test-permit", "auth required pam_permit.so\naccount required pam_permit.so\n");
        assert!(permit.available());
        assert_eq!(permit.verify("root", "anything"), PamResult::Verified);
        let deny = dir.service("fidoseal-test-deny", "auth required pam_deny.so\naccount required pam_permit.so\n");
        assert!(matches!(deny.verify("root", "anything"), PamResult::Failed(_)));
        let account =
            dir.service("fidoseal-test-account", "auth required pam_permit.so\naccount required pam_deny.so\n");
        assert!(matches!(account.verify("root", "anything"), PamResult::Failed(m) if m.starts_with("account")));
    }

    #[test]
    fn the_typed_password_reaches_the_module() {
        let dir = TempDir::new("exec");
        let service = checking_service(&dir);
        assert_eq!(service.verify("root", "correct horse"), PamResult::Verified);
        let wrong = service.verify("root", "wrong horse");
        assert!(matches!(wrong, PamResult::Failed(_)), "{wrong:?}");
        assert!(matches!(service.verify("root", "nul\0byte"), PamResult::Failed(_)));
    }

    #[test]
    fn the_user_name_reaches_pam() {
        let dir = TempDir::new("user");
        let service = dir.service(
            "fidoseal-test-user",
            "auth required pam_succeed_if.so quiet user = root\naccount required pam_permit.so\n",
        );
        assert_eq!(service.verify("root", "x"), PamResult::Verified);
        assert!(matches!(service.verify("nobody", "x"), PamResult::Failed(_)));
    }

    #[test]
    fn the_packaged_service_refuses_a_wrong_password() {
        // packaging/pam.d/fidoseal, read where it lies: pam_unix answers
        // (a failure, not an error), whatever root's password is.
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/pam.d");
        let packaged = PamVerifier::with_confdir("fidoseal", &dir);
        assert!(packaged.available());
        let result = packaged.verify("root", "surely not root's password \u{1f511}");
        assert!(matches!(result, PamResult::Failed(_)), "{result:?}");
    }

    #[test]
    fn a_missing_service_is_an_error_not_a_failure() {
        let dir = TempDir::new("missing");
        let missing = PamVerifier::with_confdir("fidoseal-test-none", dir.0.path());
        assert!(!missing.available());
        assert!(matches!(missing.verify("root", "x"), PamResult::Error(_)));
        assert!(!PamVerifier::new("fidoseal-test-surely-not-installed").available());
    }
}
