//! Finding a task's output files in its `outputs/` directory.

use std::io;
use std::path::{Component, Path, PathBuf};

/// Most files one task may leave in `outputs/`.
pub const MAX_OUTPUT_FILES: usize = 10_000;

#[derive(Debug, thiserror::Error)]
pub enum OutputsError {
    #[error("cannot list outputs in {}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error("the task left more than {MAX_OUTPUT_FILES} files in its outputs directory")]
    TooMany,
    #[error("listing outputs was interrupted: {0}")]
    Interrupted(#[from] tokio::task::JoinError),
}

/// `path` relative to `outputs_dir`, when it lies strictly inside it.
/// An outputs directory held open from before the task ran. Files are
/// opened beneath it without following any symlink, so a task that swaps a
/// file or a directory for a link, even while the worker uploads, cannot
/// make the worker read (and store) anything outside its outputs.
#[derive(Debug)]
pub struct OutputsRoot {
    dir: std::os::fd::OwnedFd,
    path: PathBuf,
}

/// An output file opened for reading, checked to be a regular file.
#[derive(Debug)]
pub struct OpenedOutput {
    file: std::fs::File,
    len: u64,
}

impl OpenedOutput {
    /// A path that opens exactly this file again (`/proc/self/fd/N`), for
    /// code that reads by path.
    pub fn path(&self) -> PathBuf {
        use std::os::fd::AsRawFd;
        PathBuf::from(format!("/proc/self/fd/{}", self.file.as_raw_fd()))
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl OutputsRoot {
    /// Opens `path`, which must be a directory and not a symlink.
    pub fn open(path: &Path) -> io::Result<Self> {
        use nix::fcntl::{OFlag, open};
        use nix::sys::stat::Mode;
        let dir = open(
            path,
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        )?;
        Ok(Self {
            dir,
            path: path.to_path_buf(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Opens `relative` for reading, refusing symlinks anywhere on the way,
    /// anything outside the directory, and anything but a regular file
    /// (a FIFO would block a plain open forever).
    pub fn open_file(&self, relative: &Path) -> io::Result<OpenedOutput> {
        use nix::fcntl::{OFlag, OpenHow, ResolveFlag, openat2};
        let how = OpenHow::new()
            .flags(
                OFlag::O_RDONLY
                    | OFlag::O_NOFOLLOW
                    | OFlag::O_NONBLOCK
                    | OFlag::O_NOCTTY
                    | OFlag::O_CLOEXEC,
            )
            .resolve(
                ResolveFlag::RESOLVE_BENEATH
                    | ResolveFlag::RESOLVE_NO_SYMLINKS
                    | ResolveFlag::RESOLVE_NO_MAGICLINKS,
            );
        let fd = openat2(&self.dir, relative, how)?;
        let file = std::fs::File::from(fd);
        let meta = file.metadata()?;
        if !meta.is_file() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "not a regular file",
            ));
        }
        Ok(OpenedOutput {
            file,
            len: meta.len(),
        })
    }
}

pub fn relative_to(path: &Path, outputs_dir: &Path) -> Option<PathBuf> {
    let relative = path.strip_prefix(outputs_dir).ok()?;
    let inside = relative.components().next().is_some()
        && relative
            .components()
            .all(|c| matches!(c, Component::Normal(_)));
    inside.then(|| relative.to_path_buf())
}

/// The name an output is reported under: relative, `/`-separated.
pub fn display_path(relative: &Path) -> String {
    relative
        .components()
        .map(|c| c.as_os_str().to_string_lossy())
        .collect::<Vec<_>>()
        .join("/")
}

/// Every regular file under `outputs_dir`, relative to it, sorted. Symbolic
/// links are skipped: a renderer must not be able to upload files from
/// elsewhere on the worker by linking to them.
pub async fn list_files(outputs_dir: &Path) -> Result<Vec<PathBuf>, OutputsError> {
    let root = outputs_dir.to_path_buf();
    tokio::task::spawn_blocking(move || walk(&root)).await?
}

fn walk(root: &Path) -> Result<Vec<PathBuf>, OutputsError> {
    let mut files = Vec::new();
    let mut pending = vec![root.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let entries = std::fs::read_dir(&dir).map_err(|source| OutputsError::Io {
            path: dir.clone(),
            source,
        })?;
        for entry in entries {
            let entry = entry.map_err(|source| OutputsError::Io {
                path: dir.clone(),
                source,
            })?;
            let kind = entry.file_type().map_err(|source| OutputsError::Io {
                path: entry.path(),
                source,
            })?;
            if kind.is_dir() {
                pending.push(entry.path());
            } else if kind.is_file()
                && let Some(relative) = relative_to(&entry.path(), root)
            {
                if files.len() == MAX_OUTPUT_FILES {
                    return Err(OutputsError::TooMany);
                }
                files.push(relative);
            }
        }
    }
    files.sort();
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_inside_outputs_are_relative() {
        let outputs = Path::new("/w/t-1/outputs");
        assert_eq!(
            relative_to(Path::new("/w/t-1/outputs/frames/f_0001.png"), outputs),
            Some(PathBuf::from("frames/f_0001.png"))
        );
        assert_eq!(relative_to(Path::new("/w/t-1/scene.blend"), outputs), None);
        assert_eq!(relative_to(Path::new("/w/t-1/outputs"), outputs), None);
        assert_eq!(
            relative_to(Path::new("/w/t-1/outputs/../x.png"), outputs),
            None
        );
    }

    #[test]
    fn display_uses_forward_slashes() {
        assert_eq!(
            display_path(Path::new("frames/f_0001.png")),
            "frames/f_0001.png"
        );
    }

    #[test]
    fn opens_files_beneath_without_following_links() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let outputs = dir.path().join("outputs");
        std::fs::create_dir_all(outputs.join("frames"))?;
        std::fs::write(outputs.join("frames/f_0001.png"), b"png")?;
        std::fs::write(dir.path().join("secret"), b"secret")?;
        std::os::unix::fs::symlink(dir.path().join("secret"), outputs.join("leak.png"))?;
        std::os::unix::fs::symlink(dir.path(), outputs.join("up"))?;
        nix::unistd::mkfifo(&outputs.join("pipe.png"), nix::sys::stat::Mode::S_IRWXU)?;
        let root = OutputsRoot::open(&outputs)?;
        let frame = root.open_file(Path::new("frames/f_0001.png"))?;
        assert_eq!(std::fs::read(frame.path())?, b"png");
        for refused in [
            "leak.png",
            "up/secret",
            "../secret",
            "/etc/hostname",
            "pipe.png",
        ] {
            assert!(root.open_file(Path::new(refused)).is_err(), "{refused}");
        }
        Ok(())
    }

    #[tokio::test]
    async fn lists_regular_files_recursively_without_symlinks()
    -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        std::fs::create_dir_all(dir.path().join("frames/deep"))?;
        std::fs::write(dir.path().join("video.mp4"), b"v")?;
        std::fs::write(dir.path().join("frames/deep/f_0001.png"), b"p")?;
        std::os::unix::fs::symlink("/etc/hostname", dir.path().join("leak"))?;
        let files = list_files(dir.path()).await?;
        assert_eq!(
            files,
            vec![
                PathBuf::from("frames/deep/f_0001.png"),
                PathBuf::from("video.mp4")
            ]
        );
        Ok(())
    }
}
