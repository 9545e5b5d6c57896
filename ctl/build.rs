//! Writes fidosealctl's man pages (fidosealctl.1 and one per command, e.g.
//! fidosealctl-passkeys-list.1) and its bash, zsh and fish completions from
//! the clap definitions in src/cli.rs, at build time.
//!
//! They go to OUT_DIR and, for the packages (daemon/Cargo.toml's assets),
//! to `target/<profile>/share/`: `man/man1/*.1`, `completions/`
//! (fidosealctl.bash, _fidosealctl, fidosealctl.fish).

use std::path::{Path, PathBuf};

use clap::CommandFactory;

#[allow(dead_code)]
mod cli {
    include!("src/cli.rs");
}

fn main() -> std::io::Result<()> {
    println!("cargo:rerun-if-changed=src/cli.rs");
    println!("cargo:rerun-if-changed=build.rs");
    let Some(out_dir) = std::env::var_os("OUT_DIR").map(PathBuf::from) else {
        return Err(std::io::Error::other("cargo sets OUT_DIR"));
    };
    write_all(&out_dir.join("share"))?;
    // OUT_DIR is target/<profile>/build/fidoseal-ctl-<hash>/out.
    if let Some(profile_dir) = out_dir.ancestors().nth(3) {
        write_all(&profile_dir.join("share"))?;
    }
    Ok(())
}

fn write_all(share: &Path) -> std::io::Result<()> {
    let man = share.join("man/man1");
    let completions = share.join("completions");
    std::fs::create_dir_all(&man)?;
    std::fs::create_dir_all(&completions)?;
    let mut command = cli::Cli::command();
    command.build();
    // One page per command and subcommand (fidosealctl-passkeys-delete.1 ...).
    clap_mangen::generate_to(command.clone(), &man)?;
    use clap_complete::Shell;
    for (shell, name) in
        [(Shell::Bash, "fidosealctl.bash"), (Shell::Zsh, "_fidosealctl"), (Shell::Fish, "fidosealctl.fish")]
    {
        let mut buffer = Vec::new();
        clap_complete::generate(shell, &mut command, "fidosealctl", &mut buffer);
        std::fs::write(completions.join(name), buffer)?;
    }
    Ok(())
}
