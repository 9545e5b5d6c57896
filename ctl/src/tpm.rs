//! `fidosealctl tpm allow-boot-change | approve-boot-state`: the TPM key
//! store's boot-state binding (docs/tpm.md), through Manager1 (root only).

use std::io::{BufRead, IsTerminal, Write};

use fidoseal_dbus::Manager1Proxy;
use zeroize::Zeroizing;

use crate::cli::ApproveBootStateArgs;
use crate::manager::{from_dbus, json_of, render_status};
use crate::CtlError;

pub async fn allow_boot_change(manager: Manager1Proxy<'static>, out: &mut dyn Write) -> Result<(), CtlError> {
    manager.allow_boot_change().await.map_err(from_dbus)?;
    writeln!(
        out,
        "update window open: the next start of fidoseald approves a changed boot state, then the window closes.\n\
         Until then, whoever has this disk and this TPM can use the keys in any boot state: update and reboot soon."
    )?;
    Ok(())
}

/// The recovery key: the first line of --recovery-key-file, or of standard
/// input (with a prompt on a terminal). Never from the command line, where
/// other users could read it in the process list.
pub fn read_recovery_key(
    args: &ApproveBootStateArgs,
    stdin: &mut dyn BufRead,
    prompt: &mut dyn Write,
) -> Result<Zeroizing<String>, CtlError> {
    let mut line = Zeroizing::new(String::new());
    match &args.recovery_key_file {
        Some(path) => {
            let text = Zeroizing::new(
                std::fs::read_to_string(path)
                    .map_err(|e| CtlError::Usage(format!("cannot read {}: {e}", path.display())))?,
            );
            line.push_str(text.lines().next().unwrap_or(""));
        }
        None => {
            if std::io::stdin().is_terminal() {
                write!(prompt, "recovery key: ")?;
                prompt.flush()?;
            }
            stdin.read_line(&mut line)?;
        }
    }
    let key = Zeroizing::new(line.trim().to_owned());
    if key.is_empty() {
        return Err(CtlError::Usage("no recovery key given (on standard input or with --recovery-key-file)".into()));
    }
    Ok(key)
}

pub async fn approve_boot_state(
    manager: Manager1Proxy<'static>,
    recovery_key: &str,
    out: &mut dyn Write,
) -> Result<(), CtlError> {
    let details = manager.approve_boot_state(recovery_key).await.map_err(from_dbus)?;
    let state = details.iter().map(|(k, v)| (k.clone(), json_of(v))).collect();
    writeln!(out, "the current boot state is approved; the TPM keys work again")?;
    write!(out, "{}", render_status(&state))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_recovery_key_comes_from_a_file_or_stdin_never_empty() {
        let args = ApproveBootStateArgs { recovery_key_file: None };
        let key = read_recovery_key(&args, &mut &b"  abcd-0123\n"[..], &mut Vec::new()).unwrap();
        assert_eq!(key.as_str(), "abcd-0123");
        assert!(matches!(read_recovery_key(&args, &mut &b"\n"[..], &mut Vec::new()), Err(CtlError::Usage(_))));
        let file = std::env::temp_dir().join(format!("fidosealctl-recovery-{}", std::process::id()));
        std::fs::write(&file, "1111-2222\n# comment\n").unwrap();
        let args = ApproveBootStateArgs { recovery_key_file: Some(file.clone()) };
        assert_eq!(read_recovery_key(&args, &mut &b""[..], &mut Vec::new()).unwrap().as_str(), "1111-2222");
        std::fs::remove_file(file).unwrap();
    }
}
