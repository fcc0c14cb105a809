use std::fs::OpenOptions;
use std::path::{Path, PathBuf};

use nix::unistd::User;

use crate::error::{LocalFarmError, Result};

/// `path` made absolute against the current directory, so that it still
/// names the same file for a child running elsewhere.
pub(crate) fn absolute(path: &Path) -> Result<PathBuf> {
    std::path::absolute(path).map_err(|e| LocalFarmError::io(path, e))
}

/// Creates `dir` and its missing parents; returns the directories it created.
pub(crate) fn create_dirs(dir: &Path) -> Result<Vec<PathBuf>> {
    let missing: Vec<PathBuf> = dir
        .ancestors()
        .take_while(|ancestor| !ancestor.exists())
        .map(Path::to_path_buf)
        .collect();
    std::fs::create_dir_all(dir).map_err(|e| LocalFarmError::io(dir, e))?;
    Ok(missing)
}

/// Creates `file` (and its directory) if missing, leaving its content alone.
pub(crate) fn touch(file: &Path) -> Result<()> {
    if let Some(dir) = file.parent() {
        std::fs::create_dir_all(dir).map_err(|e| LocalFarmError::io(dir, e))?;
    }
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(file)
        .map(drop)
        .map_err(|e| LocalFarmError::io(file, e))
}

pub(crate) fn chown_to(path: &Path, user: &User) -> Result<()> {
    std::os::unix::fs::chown(path, Some(user.uid.as_raw()), Some(user.gid.as_raw()))
        .map_err(|e| LocalFarmError::io(path, e))
}

/// Writes `contents` to `path` readable by its owner only (it holds secrets).
pub(crate) fn write_private(path: &Path, contents: &[u8]) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| LocalFarmError::io(path, e))?;
    file.write_all(contents)
        .map_err(|e| LocalFarmError::io(path, e))
}
