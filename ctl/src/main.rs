//! `fidosealctl`: see `fidosealctl --help`, the man pages (fidosealctl(1)
//! and one per command) and docs/admin.md.

use std::process::ExitCode;

use clap::Parser;
use fidoseal_ctl::cli::Cli;

fn main() -> ExitCode {
    // clap prints --help/--version (exit 0) and usage errors (exit 2) itself.
    let cli = Cli::parse();
    let mut out = std::io::stdout().lock();
    let mut err = std::io::stderr().lock();
    match fidoseal_ctl::run(&cli, &mut out, &mut err) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            use std::io::Write;
            match &error {
                // The problems are already on stderr; this closes them.
                fidoseal_ctl::CtlError::Reported(last) => {
                    let _ = writeln!(err, "{last}");
                }
                _ => {
                    let _ = writeln!(err, "fidosealctl: {error}");
                }
            }
            if matches!(error, fidoseal_ctl::CtlError::Usage(_)) {
                let _ = writeln!(err, "usage: see `fidosealctl --help`");
            }
            ExitCode::from(error.exit_code())
        }
    }
}
