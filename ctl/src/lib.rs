//! `fidosealctl`: the tool for fidoseal's users and administrators.
//! The command line is in [`cli`] (also compiled by build.rs for the man
//! pages and completions); each command is a module that writes to the
//! given streams and returns a typed error, which `main` turns into one
//! line on stderr and an exit code (never `process::exit` here).

pub mod cli;
// For callers that parse a command line themselves (the daemon's tests).
pub use clap;
pub mod journal;
pub mod manager;
pub mod metadata;
pub mod policy;
pub mod tpm;

use std::io::Write;

use cli::{Cli, Command, PasskeysCommand, PolicyCommand, TpmCommand};

/// Why a command failed; [`CtlError::exit_code`] is its exit status.
#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    /// The command line is wrong in a way clap cannot see (exit 2).
    #[error("{0}")]
    Usage(String),
    /// fidoseald is not on the system bus, or the bus is not there.
    #[error("cannot reach fidoseald on the system bus: {0} (is it running? `systemctl status fidoseald`)")]
    NoDaemon(String),
    /// fidoseald refused: not the device's user, no polkit authorization.
    #[error("not permitted: {0}")]
    NotPermitted(String),
    /// A passkey deletion was not confirmed by the user's verification.
    #[error("not verified: {0} (the deletion needs your verification through fidoseal-agent in your session)")]
    NotVerified(String),
    #[error("no such passkey: {0} (see `fidosealctl passkeys list`)")]
    NoSuchPasskey(String),
    /// Any other error from the daemon.
    #[error("fidoseald: {0}")]
    Daemon(String),
    /// fidoseald's configuration or policy could not be read.
    #[error("{0}")]
    Config(String),
    /// journalctl could not be run or failed.
    #[error("{0}")]
    Journal(String),
    /// A destructive command was not confirmed.
    #[error("not confirmed: nothing was reset")]
    NotConfirmed,
    /// The problems were already written to stderr; this is the last line.
    #[error("{0}")]
    Reported(String),
    #[error("cannot write the output: {0}")]
    Output(#[from] std::io::Error),
}

impl CtlError {
    /// 0 success (not an error), 1 failure, 2 usage (as clap's own).
    pub fn exit_code(&self) -> u8 {
        match self {
            CtlError::Usage(_) => 2,
            _ => 1,
        }
    }
}

/// Runs a parsed command line against the system bus.
pub fn run(cli: &Cli, out: &mut dyn Write, err: &mut dyn Write) -> Result<(), CtlError> {
    run_on_bus(cli, None, out, err)
}

/// [`run`], with `bus` (an address) instead of the system bus: for tests.
pub fn run_on_bus(cli: &Cli, bus: Option<&str>, out: &mut dyn Write, err: &mut dyn Write) -> Result<(), CtlError> {
    match &cli.command {
        Command::Policy(PolicyCommand::Check(args)) => policy::check(args, out, err),
        Command::Policy(PolicyCommand::Explain(args)) => policy::explain(args, out, err),
        Command::Log(args) => journal::log(args, out),
        Command::Metadata(args) => metadata::metadata(args, out),
        Command::Status(args) => manager::with_manager(bus, |m| async move { manager::status(m, args, out).await }),
        Command::Devices(args) => manager::with_manager(bus, |m| async move { manager::devices(m, args, out).await }),
        Command::Passkeys(PasskeysCommand::List(args)) => {
            manager::with_manager(bus, |m| async move { manager::list(m, args, out).await })
        }
        Command::Passkeys(PasskeysCommand::Show(args)) => {
            manager::with_manager(bus, |m| async move { manager::show(m, args, out).await })
        }
        Command::Passkeys(PasskeysCommand::Delete(args)) => {
            manager::with_manager(bus, |m| async move { manager::delete(m, args, out).await })
        }
        Command::Tpm(TpmCommand::AllowBootChange) => {
            manager::with_manager(bus, |m| async move { tpm::allow_boot_change(m, out).await })
        }
        Command::Tpm(TpmCommand::ApproveBootState(args)) => {
            let key = tpm::read_recovery_key(args, &mut std::io::stdin().lock(), err)?;
            manager::with_manager(bus, |m| async move { tpm::approve_boot_state(m, &key, out).await })
        }
        Command::Reset(args) => {
            manager::confirm_reset(args, err)?;
            manager::with_manager(bus, |m| async move { manager::reset(m, out).await })
        }
    }
}
