//! The real `fidoseald`'s logs when stderr is not a terminal: a file, a pipe, or the journal's stream under systemd must
//! get plain text, never ANSI escape codes.

use std::process::{Command, Stdio};

/// A start that fails at once (no configuration file) still logs its
/// error through the daemon's subscriber: that line is checked.
#[test]
fn stderr_to_a_pipe_or_file_has_no_escape_codes() {
    let temp_dir = tempfile::tempdir().unwrap();
    let dir = temp_dir.path();
    let missing = dir.join("no-such-config.toml");
    let log_path = dir.join("stderr.log");

    // stderr to a pipe.
    let output = Command::new(env!("CARGO_BIN_EXE_fidoseald"))
        .arg("--config")
        .arg(&missing)
        .env_remove("JOURNAL_STREAM")
        .env_remove("NO_COLOR")
        .stdin(Stdio::null())
        .output()
        .expect("fidoseald runs");
    assert!(!output.status.success(), "fidoseald must fail without its configuration");
    let piped = String::from_utf8_lossy(&output.stderr).into_owned();

    // stderr to a file.
    let file = std::fs::File::create(&log_path).unwrap();
    let status = Command::new(env!("CARGO_BIN_EXE_fidoseald"))
        .arg("--config")
        .arg(&missing)
        .env_remove("JOURNAL_STREAM")
        .env_remove("NO_COLOR")
        .stdin(Stdio::null())
        .stderr(file)
        .status()
        .expect("fidoseald runs");
    assert!(!status.success());
    let filed = std::fs::read_to_string(&log_path).unwrap();

    for (what, text) in [("pipe", &piped), ("file", &filed)] {
        assert!(text.contains("ERROR"), "the error is logged to the {what}: {text:?}");
        assert!(text.contains("no-such-config.toml"), "the error names the file ({what}): {text:?}");
        assert!(!text.contains('\u{1b}'), "escape codes in the log written to a {what}: {text:?}");
    }
}
