use std::path::{Path, PathBuf};

use crate::error::{LocalFarmError, Result};

const BUILD_HINT: &str = "run `cargo build --workspace --bins` first";
const INSTALL_HINT: &str = "install it or put it on PATH";

/// Finds one of Kiln's own binaries (e.g. `kiln-scheduler`).
///
/// Looks next to the running executable, then in its parent directory
/// (test binaries live in `target/<profile>/deps`, the service binaries one
/// level up), then on `PATH`.
pub fn locate_binary(name: &str) -> Result<PathBuf> {
    let mut dirs = Vec::new();
    if let Ok(exe) = std::env::current_exe()
        && let Some(dir) = exe.parent()
    {
        dirs.push(dir.to_path_buf());
        if let Some(parent) = dir.parent() {
            dirs.push(parent.to_path_buf());
        }
    }
    dirs.extend(path_dirs());
    search(name, &dirs, BUILD_HINT)
}

/// Finds a system program (etcd, initdb, ...) on `PATH`.
pub(crate) fn find_on_path(name: &str) -> Result<PathBuf> {
    search(name, &path_dirs(), INSTALL_HINT)
}

fn path_dirs() -> Vec<PathBuf> {
    std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).collect())
        .unwrap_or_default()
}

fn search(name: &str, dirs: &[PathBuf], hint: &'static str) -> Result<PathBuf> {
    dirs.iter()
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
        .ok_or_else(|| LocalFarmError::BinaryNotFound {
            name: name.to_owned(),
            searched: describe(dirs),
            hint,
        })
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .map(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

fn describe(dirs: &[PathBuf]) -> String {
    const SHOWN: usize = 4;
    let mut shown: Vec<String> = dirs
        .iter()
        .take(SHOWN)
        .map(|dir| dir.display().to_string())
        .collect();
    if dirs.len() > SHOWN {
        shown.push(format!("and {} more PATH entries", dirs.len() - SHOWN));
    }
    shown.join(", ")
}
