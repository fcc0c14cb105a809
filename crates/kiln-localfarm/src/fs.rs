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

/// Creates `file` (and its directory) if missing, leaving its content
/// alone; readable by its owner only.
pub(crate) fn touch(file: &Path) -> Result<()> {
    if let Some(dir) = file.parent() {
        std::fs::create_dir_all(dir).map_err(|e| LocalFarmError::io(dir, e))?;
    }
    open_private(file, OpenOptions::new().append(true)).map(drop)
}

pub(crate) fn chown_to(path: &Path, user: &User) -> Result<()> {
    std::os::unix::fs::chown(path, Some(user.uid.as_raw()), Some(user.gid.as_raw()))
        .map_err(|e| LocalFarmError::io(path, e))
}

/// Writes `contents` to `path` readable by its owner only (it holds
/// secrets), also when the file already existed with a wider mode.
pub(crate) fn write_private(path: &Path, contents: &[u8]) -> Result<()> {
    use std::io::Write;
    let mut file = open_private(path, OpenOptions::new().write(true).truncate(true))?;
    file.write_all(contents)
        .map_err(|e| LocalFarmError::io(path, e))
}

/// Opens (creating) `path` with `options` as a file only its owner may
/// read or write: mode 0600 from creation on, and narrowed to it if it
/// already existed.
pub(crate) fn open_private(path: &Path, options: &mut OpenOptions) -> Result<std::fs::File> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let file = options
        .create(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| LocalFarmError::io(path, e))?;
    file.set_permissions(std::fs::Permissions::from_mode(0o600))
        .map_err(|e| LocalFarmError::io(path, e))?;
    Ok(file)
}

/// Who besides a directory's owner may pass through it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Passage {
    /// No one: mode 0700.
    Closed,
    /// Anyone who knows a path inside may go through, but not list it
    /// (0711): for directories above a service that runs as another
    /// account (Postgres as `postgres` when the farm runs as root).
    TraverseOnly,
}

/// Creates `dir` if needed and narrows its mode so other local users
/// cannot list or read it, also when it already existed.
pub(crate) fn private_dir(dir: &Path, passage: Passage) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir).map_err(|e| LocalFarmError::io(dir, e))?;
    let mode = match passage {
        Passage::Closed => 0o700,
        Passage::TraverseOnly => 0o711,
    };
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode))
        .map_err(|e| LocalFarmError::io(dir, e))
}
