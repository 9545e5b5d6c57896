//! fidoseal-agent: the session agent of fidoseald.
//!
//! Runs in the user's session (systemd/fidoseal-agent.service), connects to
//! the system bus, serves org.fidoseal.Agent1 at /org/fidoseal/Agent and
//! registers it with fidoseald, again each time the daemon (re)appears.
//! Prompts go through the desktop's pinentry program. See docs/agent.md.

mod agent;
mod assuan;
mod daemon_watch;
mod pinentry;
mod requests;
mod text;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use fidoseal_dbus::DEFAULT_AGENT_PATH;
use tokio::signal::unix::{signal, SignalKind};
use zbus::zvariant::ObjectPath;

const USAGE: &str = "\
Usage: fidoseal-agent [--pinentry PROGRAM] [--verbose]

Shows fidoseald's prompts (presence, PIN or password, fingerprint, choice of
passkey) in this session, through a pinentry program.

Options:
  --pinentry PROGRAM  the pinentry to run (default: $FIDOSEAL_PINENTRY, else
                      `pinentry` from PATH)
  -v, --verbose       debug logging (or RUST_LOG=debug)
  -h, --help          this text
  -V, --version       the version

The system bus is DBUS_SYSTEM_BUS_ADDRESS if set, else the standard one.";

struct Options {
    pinentry: PathBuf,
    verbose: bool,
}

fn parse_args() -> Result<Option<Options>, String> {
    let mut pinentry = None;
    let mut verbose = false;
    let mut args = std::env::args_os().skip(1);
    while let Some(arg) = args.next() {
        match arg.to_str() {
            Some("-h") | Some("--help") => {
                println!("{USAGE}");
                return Ok(None);
            }
            Some("-V") | Some("--version") => {
                println!("fidoseal-agent {}", env!("CARGO_PKG_VERSION"));
                return Ok(None);
            }
            Some("-v") | Some("--verbose") => verbose = true,
            Some("--pinentry") => {
                pinentry = Some(PathBuf::from(args.next().ok_or("--pinentry needs a program")?));
            }
            Some(s) if s.starts_with("--pinentry=") => pinentry = Some(PathBuf::from(&s["--pinentry=".len()..])),
            _ => return Err(format!("unknown argument {arg:?}\n\n{USAGE}")),
        }
    }
    let pinentry = pinentry
        .or_else(|| std::env::var_os("FIDOSEAL_PINENTRY").filter(|p| !p.is_empty()).map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("pinentry"));
    Ok(Some(Options { pinentry, verbose }))
}

/// Plain text on stderr, without colour codes on anything but a terminal
/// and without timestamps in the journal (fidoseal-log, the daemon's rules).
fn init_logging(verbose: bool) {
    fidoseal_log::init("fidoseal-agent", if verbose { "debug" } else { "info" });
}

fn main() -> ExitCode {
    let options = match parse_args() {
        Ok(Some(o)) => o,
        Ok(None) => return ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fidoseal-agent: {e}");
            return ExitCode::from(2);
        }
    };
    init_logging(options.verbose);
    let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!("cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(options)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(options: Options) -> Result<(), String> {
    let path = ObjectPath::try_from(DEFAULT_AGENT_PATH).map_err(|e| e.to_string())?;
    let conn = async { zbus::connection::Builder::system()?.build().await }
        .await
        .map_err(|e: zbus::Error| format!("cannot connect to the system bus: {e}"))?;
    let daemon = daemon_watch::DaemonWatch::new(&conn).await.map_err(|e| e.to_string())?;
    let requests = Arc::new(requests::Requests::default());
    let agent = agent::Agent {
        pinentry: pinentry::Pinentry { program: options.pinentry.clone() },
        requests: requests.clone(),
        daemon: daemon.clone(),
    };
    conn.object_server().at(&path, agent).await.map_err(|e| format!("cannot serve {path}: {e}"))?;
    tracing::info!(
        bus = %conn.unique_name().map(|n| n.to_string()).unwrap_or_default(),
        path = %path,
        pinentry = %options.pinentry.display(),
        "fidoseal-agent serving org.fidoseal.Agent1"
    );

    let mut term = signal(SignalKind::terminate()).map_err(|e| e.to_string())?;
    let mut int = signal(SignalKind::interrupt()).map_err(|e| e.to_string())?;
    let watch = tokio::spawn(daemon.clone().run(conn.clone(), path.clone(), requests.clone()));
    let result = tokio::select! {
        r = watch => match r {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(format!("lost the system bus: {e}")),
            Err(e) => Err(format!("the daemon watch stopped: {e}")),
        },
        _ = term.recv() => { tracing::info!("SIGTERM: stopping"); Ok(()) }
        _ = int.recv() => { tracing::info!("SIGINT: stopping"); Ok(()) }
    };
    requests.close_all();
    if result.is_ok() {
        daemon.unregister(&conn, &path).await;
    }
    // Let the closed dialogs kill their pinentries.
    tokio::time::sleep(Duration::from_millis(400)).await;
    result
}
