//! Disk a task holds: the bytes under its working directory and its `/tmp`,
//! and how many of them are outputs. Counted by walking the directories
//! without following symlinks, in allocated blocks (a sparse file costs what
//! it takes on disk).

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::time::Instant;

use crate::sandbox::{LimitHit, MemoryProbe, TaskSandbox, Usage};

/// How often a running action's memory (and the kernel's limit events) is
/// sampled.
pub const SAMPLE_EVERY: Duration = Duration::from_millis(500);
/// How often its disk is measured (a directory walk).
const DISK_EVERY: Duration = Duration::from_secs(2);

/// Most entries one walk looks at; a task with more is over its disk
/// limit in spirit and is counted as if it were.
pub const MAX_ENTRIES: usize = 1_000_000;

/// Bytes found by one walk.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DiskUsage {
    pub total: u64,
    pub outputs: u64,
    /// The walk stopped at [`MAX_ENTRIES`].
    pub truncated: bool,
}

/// Walks `roots` (their total) and `outputs` (which lies inside one of them).
pub fn measure(roots: &[PathBuf], outputs: &Path) -> DiskUsage {
    let mut usage = DiskUsage::default();
    let mut seen = 0usize;
    let mut pending: Vec<(PathBuf, bool)> = roots
        .iter()
        .map(|root| (root.clone(), root.starts_with(outputs)))
        .collect();
    while let Some((dir, in_outputs)) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            seen += 1;
            if seen > MAX_ENTRIES {
                usage.truncated = true;
                return usage;
            }
            let Ok(meta) = entry.metadata() else {
                continue;
            };
            let bytes = meta.blocks() * 512;
            usage.total += bytes;
            let path = entry.path();
            let inside = in_outputs || path == outputs;
            if inside {
                usage.outputs += bytes;
            }
            // `DirEntry::metadata` does not follow symlinks: a symlinked
            // directory is counted as the link it is, never walked into.
            if meta.is_dir() {
                pending.push((path, inside));
            }
        }
    }
    usage
}

/// Checks a running action's sandbox against its limits, for every kind of
/// action (Kiln's own commands and OpenJD session actions alike).
#[derive(Debug)]
pub struct LimitSampler {
    disk_due: Instant,
}

impl Default for LimitSampler {
    fn default() -> Self {
        Self {
            disk_due: Instant::now() + DISK_EVERY,
        }
    }
}

impl LimitSampler {
    /// The limit `sandbox` is over, if any: the kernel's own report first,
    /// then memory (measured with `probe`), then, every few seconds, disk
    /// and the bytes under `outputs`.
    pub async fn over_limit(
        &mut self,
        sandbox: &TaskSandbox,
        probe: Option<MemoryProbe>,
        outputs: &Path,
    ) -> Option<LimitHit> {
        if let Some(hit) = sandbox.kernel_hit() {
            return Some(hit);
        }
        let limits = sandbox.limits();
        let mut usage = Usage::default();
        if let Some(probe) = probe {
            usage.memory_bytes = tokio::task::spawn_blocking(move || probe.sample())
                .await
                .unwrap_or(0);
        }
        if Instant::now() >= self.disk_due {
            self.disk_due = Instant::now() + DISK_EVERY;
            let dirs = sandbox.writable_dirs();
            let outputs = outputs.to_path_buf();
            if let Ok(disk) = tokio::task::spawn_blocking(move || measure(&dirs, &outputs)).await {
                usage.disk_bytes = if disk.truncated { u64::MAX } else { disk.total };
                usage.output_bytes = disk.outputs;
            }
        }
        limits.exceeded_by(&usage)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_everything_and_outputs_apart_without_following_links() -> std::io::Result<()> {
        let dir = tempfile::tempdir()?;
        let work = dir.path().join("w");
        let tmp = dir.path().join("tmp");
        let outputs = work.join("outputs");
        std::fs::create_dir_all(outputs.join("frames"))?;
        std::fs::create_dir_all(&tmp)?;
        std::fs::write(outputs.join("frames/f_0001.png"), vec![1u8; 64 * 1024])?;
        std::fs::write(work.join("scratch.bin"), vec![1u8; 128 * 1024])?;
        std::fs::write(tmp.join("t.bin"), vec![1u8; 32 * 1024])?;
        std::fs::write(dir.path().join("outside.bin"), vec![1u8; 1024 * 1024])?;
        std::os::unix::fs::symlink(dir.path(), work.join("loop"))?;
        let usage = measure(&[work.clone(), tmp], &outputs);
        assert!(
            usage.outputs >= 64 * 1024 && usage.outputs < 128 * 1024,
            "{usage:?}"
        );
        assert!(
            usage.total >= 224 * 1024 && usage.total < 1024 * 1024,
            "the symlink out is not followed: {usage:?}"
        );
        assert!(!usage.truncated);
        Ok(())
    }
}
