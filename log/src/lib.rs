//! Where fidoseald's and fidoseal-agent's logs go:
//!
//! - under systemd, when stderr is the journal's stream (`JOURNAL_STREAM`
//!   names stderr's device and inode, systemd.exec(5)): the audit trail
//!   (events of target [`AUDIT_TARGET`]) is sent to journald natively, so
//!   its fields (`FIDOSEAL_RP=`, `MESSAGE_ID=`, ...) are journal fields;
//!   everything else stays text lines on the stream, fields and all (as
//!   `journalctl -u fidoseald` has always shown them), without colour codes
//!   or timestamps (the journal has its own);
//! - otherwise plain text on stderr, with colour only when stderr is a
//!   terminal (a file, a pipe or a stream gets no escape codes).
//!
//! Audit field names reach the journal upper-cased and without a prefix
//! (`fidoseal_rp` → `FIDOSEAL_RP`, `message_id` → `MESSAGE_ID`).

use std::io::IsTerminal;
use std::os::fd::AsRawFd;

use tracing_subscriber::filter::filter_fn;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// The target of the audit trail's events (daemon/src/audit_log.rs).
pub const AUDIT_TARGET: &str = "fidoseal::audit";

/// Where [`init`] sent the logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Destination {
    /// The audit trail natively to journald, the rest as text on the stream.
    Journal,
    /// Text on stderr; `colour` only on a terminal.
    Stderr { colour: bool },
}

/// Sets the global subscriber. `default_filter` applies unless `RUST_LOG`
/// is set. `identifier` is the journal's `SYSLOG_IDENTIFIER=`.
pub fn init(identifier: &str, default_filter: &str) -> Destination {
    let filter = || EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    if stderr_is_the_journal() {
        match tracing_journald::layer() {
            Ok(journald) => {
                let audit = journald
                    .with_field_prefix(None)
                    .with_syslog_identifier(identifier.to_string())
                    .with_filter(filter_fn(|meta| meta.target() == AUDIT_TARGET));
                let text = tracing_subscriber::fmt::layer()
                    .with_writer(std::io::stderr)
                    .with_ansi(false)
                    .without_time()
                    .with_filter(filter_fn(|meta| meta.target() != AUDIT_TARGET));
                tracing_subscriber::registry().with(filter()).with(audit).with(text).init();
                return Destination::Journal;
            }
            // No journal socket (a container with the variable inherited):
            // text on the stream, which still reaches whoever reads it.
            Err(e) => eprintln!("{identifier}: cannot reach journald natively ({e}); logging to stderr"),
        }
    }
    let colour = std::io::stderr().is_terminal();
    let builder = tracing_subscriber::fmt().with_env_filter(filter()).with_writer(std::io::stderr).with_ansi(colour);
    // Under systemd the journal adds its own timestamps.
    if std::env::var_os("JOURNAL_STREAM").is_some() {
        builder.without_time().init();
    } else {
        builder.init();
    }
    Destination::Stderr { colour }
}

/// systemd.exec(5): `JOURNAL_STREAM=DEVICE:INODE` of the stream connected
/// to stderr/stdout; a process should use the native protocol only if its
/// stderr is still that stream (not redirected by a wrapper).
pub fn stderr_is_the_journal() -> bool {
    let Some(value) = std::env::var_os("JOURNAL_STREAM") else { return false };
    let Some((device, inode)) = value.to_str().and_then(|v| v.split_once(':')) else { return false };
    let (Ok(device), Ok(inode)) = (device.parse::<u64>(), inode.parse::<u64>()) else { return false };
    // SAFETY: fstat on our own stderr descriptor into a zeroed stat buffer.
    let mut stat: libc::stat = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstat(std::io::stderr().as_raw_fd(), &mut stat) } != 0 {
        return false;
    }
    stat.st_dev as u64 == device && stat.st_ino as u64 == inode
}

#[cfg(test)]
mod tests {
    use super::*;

    // The environment is process-wide: one test sets and checks it all.
    #[test]
    fn journal_stream_must_name_stderr_itself() {
        std::env::remove_var("JOURNAL_STREAM");
        assert!(!stderr_is_the_journal(), "no variable");
        std::env::set_var("JOURNAL_STREAM", "garbage");
        assert!(!stderr_is_the_journal(), "unparsable");
        std::env::set_var("JOURNAL_STREAM", "1:1");
        assert!(!stderr_is_the_journal(), "another stream");
        let mut stat: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        assert_eq!(unsafe { libc::fstat(2, &mut stat) }, 0);
        std::env::set_var("JOURNAL_STREAM", format!("{}:{}", stat.st_dev, stat.st_ino));
        assert!(stderr_is_the_journal(), "stderr's own device and inode");
        std::env::remove_var("JOURNAL_STREAM");
    }
}
