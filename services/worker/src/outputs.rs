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
