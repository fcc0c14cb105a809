//! A task's working directory and the digest-keyed cache its inputs come from.
//!
//! Layout: `<work-dir>/<task_id>-<attempt>/` holds the inputs at their
//! relative paths and `outputs/`, whose files are the task's outputs.

use std::io;
use std::path::{Component, Path, PathBuf};

use crate::assets::AssetStoreError;

/// Name of the directory inside the working directory whose files are outputs.
pub const OUTPUTS_DIR: &str = "outputs";

#[derive(Debug, thiserror::Error)]
pub enum WorkdirError {
    #[error("task id {0:?} cannot name a directory")]
    BadTaskId(String),
    #[error("input path {0:?} must be relative, non-empty and free of '..'")]
    BadInputPath(String),
    #[error("input digest {0:?} is not a sha-256 hex digest")]
    BadDigest(String),
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("cannot fetch input {path} ({digest}): {source}")]
    Fetch {
        path: String,
        digest: String,
        source: AssetStoreError,
    },
}

pub(crate) fn io_error(
    action: &'static str,
    path: &Path,
) -> impl FnOnce(io::Error) -> WorkdirError {
    let path = path.to_path_buf();
    move |source| WorkdirError::Io {
        action,
        path,
        source,
    }
}

/// A fresh working directory for one attempt of one task.
#[derive(Debug)]
pub struct TaskDir {
    root: PathBuf,
    outputs: PathBuf,
}

impl TaskDir {
    /// Creates `<work_root>/<task_id>-<attempt>/outputs/`, replacing any
    /// leftover of an earlier run of the same attempt.
    pub async fn create(
        work_root: &Path,
        task_id: &str,
        attempt: u32,
    ) -> Result<Self, WorkdirError> {
        if !is_plain_name(task_id) {
            return Err(WorkdirError::BadTaskId(task_id.to_owned()));
        }
        let root = work_root.join(format!("{task_id}-{attempt}"));
        if tokio::fs::symlink_metadata(&root).await.is_ok() {
            tokio::fs::remove_dir_all(&root)
                .await
                .map_err(io_error("remove", &root))?;
        }
        let outputs = root.join(OUTPUTS_DIR);
        tokio::fs::create_dir_all(&outputs)
            .await
            .map_err(io_error("create", &outputs))?;
        // Renderers print absolute, resolved paths; match them exactly.
        let root = tokio::fs::canonicalize(&root)
            .await
            .map_err(io_error("resolve", &root))?;
        let outputs = root.join(OUTPUTS_DIR);
        Ok(Self { root, outputs })
    }

    /// Absolute path of the working directory.
    pub fn path(&self) -> &Path {
        &self.root
    }

    /// Absolute path of `outputs/` inside it.
    pub fn outputs(&self) -> &Path {
        &self.outputs
    }

    /// Deletes the directory and everything in it.
    pub async fn remove(self) {
        if let Err(error) = tokio::fs::remove_dir_all(&self.root).await {
            tracing::warn!(path = %self.root.display(), %error, "cannot remove working directory");
        }
    }
}

fn is_plain_name(name: &str) -> bool {
    !name.is_empty()
        && name != "."
        && name != ".."
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// Checks an input's path from the assignment: relative, and unable to
/// climb out of the working directory.
pub fn relative_input_path(path: &str) -> Result<PathBuf, WorkdirError> {
    let candidate = Path::new(path);
    let plain = candidate
        .components()
        .all(|c| matches!(c, Component::Normal(_) | Component::CurDir));
    if path.is_empty() || !plain || candidate.components().all(|c| c == Component::CurDir) {
        return Err(WorkdirError::BadInputPath(path.to_owned()));
    }
    Ok(candidate
        .components()
        .filter(|c| *c != Component::CurDir)
        .collect())
}

pub use crate::input_cache::InputCache;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_relative_paths() {
        assert_eq!(
            relative_input_path("scene.blend").ok(),
            Some(PathBuf::from("scene.blend"))
        );
        assert_eq!(
            relative_input_path("./tex/wood.png").ok(),
            Some(PathBuf::from("tex/wood.png"))
        );
    }

    #[test]
    fn rejects_escaping_paths() {
        for path in ["", ".", "/etc/passwd", "../x", "tex/../../x", "a/.."] {
            assert!(
                matches!(
                    relative_input_path(path),
                    Err(WorkdirError::BadInputPath(_))
                ),
                "{path:?} should be rejected"
            );
        }
    }

    #[test]
    fn task_ids_must_be_plain_names() {
        assert!(is_plain_name("3f2a-11_b.c"));
        for id in ["", ".", "..", "a/b", "a b"] {
            assert!(!is_plain_name(id), "{id:?}");
        }
    }
}
