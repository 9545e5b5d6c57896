//! Reading the layered directories: each directory in the order given,
//! each directory's `*.toml` files in file-name order. A directory that does
//! not exist is empty. Files and directories that someone other than their
//! owner can write are refused: whoever can write a policy file can open the
//! door.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::compile::{self, Source};
use crate::{Diagnostic, Policy, PolicyError, MAX_FILE_SIZE};

impl Policy {
    /// Loads every `*.toml` file of `dirs`, in order.
    pub fn load_dirs<P: AsRef<Path>>(dirs: &[P]) -> Result<Self, PolicyError> {
        let mut errors = Vec::new();
        let mut sources = Vec::new();
        let mut seen = Vec::new();
        for dir in dirs {
            let dir = dir.as_ref();
            match list_dir(dir) {
                Ok(None) => seen.push((dir.to_path_buf(), false)),
                Ok(Some(files)) => {
                    seen.push((dir.to_path_buf(), true));
                    for path in files {
                        match read_file(&path) {
                            Ok(text) => sources.push(Source { path, text }),
                            Err(message) => errors.push(file_error(&path, message)),
                        }
                    }
                }
                Err(message) => errors.push(file_error(dir, message)),
            }
        }
        match compile::compile(&sources, seen) {
            Ok(policy) if errors.is_empty() => Ok(policy),
            Ok(_) => Err(PolicyError { diagnostics: errors }),
            Err(mut more) => {
                errors.append(&mut more.diagnostics);
                Err(PolicyError { diagnostics: errors })
            }
        }
    }

    /// Compiles files given as (name, text), in order, without reading any
    /// directory (tests, fuzzing, `fidosealctl` on single files).
    pub fn from_sources<P: AsRef<Path>, T: AsRef<str>>(files: &[(P, T)]) -> Result<Self, PolicyError> {
        let sources: Vec<Source> = files
            .iter()
            .map(|(path, text)| Source { path: path.as_ref().to_path_buf(), text: text.as_ref().to_string() })
            .collect();
        compile::compile(&sources, Vec::new())
    }
}

fn file_error(path: &Path, message: String) -> Diagnostic {
    Diagnostic { file: path.to_path_buf(), line: None, key: None, message }
}

/// The policy files of `dir` in file-name order; `None` if it does not exist.
fn list_dir(dir: &Path) -> Result<Option<Vec<PathBuf>>, String> {
    let metadata = match std::fs::metadata(dir) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot read the policy directory: {e}")),
    };
    if !metadata.is_dir() {
        return Err("is not a directory".into());
    }
    check_writers(&metadata)?;
    let entries = std::fs::read_dir(dir).map_err(|e| format!("cannot read the policy directory: {e}"))?;
    let mut files = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| format!("cannot read the policy directory: {e}"))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        // Hidden files are editors' and package managers' temporaries.
        if name.starts_with('.') || !name.ends_with(".toml") {
            continue;
        }
        let path = entry.path();
        // Directories and devices (a symlink to /dev/null) are not policy
        // files; a dangling symlink is kept, and reported when read.
        if std::fs::metadata(&path).is_ok_and(|m| !m.is_file()) {
            continue;
        }
        files.push(path);
    }
    files.sort_by(|a, b| a.file_name().cmp(&b.file_name()));
    Ok(Some(files))
}

fn read_file(path: &Path) -> Result<String, String> {
    let metadata = std::fs::metadata(path).map_err(|e| format!("cannot read: {e}"))?;
    if !metadata.is_file() {
        return Err("is not a regular file".into());
    }
    check_writers(&metadata)?;
    if metadata.len() > MAX_FILE_SIZE {
        return Err(format!("is larger than {MAX_FILE_SIZE} bytes"));
    }
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read: {e}"))?;
    String::from_utf8(bytes).map_err(|e| format!("is not UTF-8 text (byte {})", e.utf8_error().valid_up_to()))
}

/// Only root or the reader itself may own a policy file or directory, and
/// nobody else may write it.
fn check_writers(metadata: &std::fs::Metadata) -> Result<(), String> {
    let mode = metadata.permissions().mode();
    if mode & 0o022 != 0 {
        return Err(format!(
            "is writable by group or others (mode {:o}); anyone who can write policy can open the door: chmod go-w",
            mode & 0o7777
        ));
    }
    let owner = metadata.uid();
    let me = nix::unistd::geteuid().as_raw();
    if owner != 0 && owner != me {
        return Err(format!("is owned by uid {owner}, neither root nor this process (uid {me})"));
    }
    Ok(())
}
