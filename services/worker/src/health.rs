//! Whether this worker can take tasks: it needs a renderer, a sandbox for
//! its tasks (unless its operator opted out) and room on disk.
//! The same checks answer `/readyz` and decide whether the worker asks the
//! scheduler for work at all.

use std::path::PathBuf;
use std::sync::Arc;

use kiln_service::{CheckResult, Checks};

/// What the worker checks before it takes tasks.
#[derive(Debug, Clone)]
pub struct LocalHealth {
    /// Names of the renderers found at start-up.
    pub renderers: Vec<String>,
    /// The directory tasks run in; its filesystem must keep `min_free_bytes` free.
    pub work_dir: PathBuf,
    pub min_free_bytes: u64,
    /// Whether tasks can be sandboxed (or the operator opted out), and how.
    pub sandbox: Result<String, String>,
}

impl LocalHealth {
    pub fn renderer(&self) -> CheckResult {
        match self.renderers.is_empty() {
            true => Err("no usable renderer (blender or ffmpeg) was found".to_owned()),
            false => Ok(self.renderers.join(", ")),
        }
    }

    pub fn sandbox(&self) -> CheckResult {
        self.sandbox.clone()
    }

    pub fn disk_space(&self) -> CheckResult {
        kiln_service::checks::free_space_at_least(&self.work_dir, self.min_free_bytes)
    }

    /// `Err(reason)` when the worker must not take tasks now.
    pub fn can_take_tasks(&self) -> Result<(), String> {
        self.renderer()?;
        self.sandbox()?;
        self.disk_space()?;
        Ok(())
    }

    /// Adds the `renderer`, `sandbox` and `disk_space` checks to `checks`.
    pub fn register(self: &Arc<Self>, checks: Checks) -> Checks {
        let renderer = self.clone();
        let sandbox = self.clone();
        let disk = self.clone();
        checks
            .add("renderer", move || std::future::ready(renderer.renderer()))
            .add("sandbox", move || std::future::ready(sandbox.sandbox()))
            .add("disk_space", move || std::future::ready(disk.disk_space()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn not_ready_without_renderer_or_disk_space() {
        let mut health = LocalHealth {
            renderers: vec!["blender".into()],
            work_dir: std::env::temp_dir(),
            min_free_bytes: 0,
            sandbox: Ok("bubblewrap".into()),
        };
        assert!(health.can_take_tasks().is_ok());
        health.min_free_bytes = u64::MAX;
        assert!(
            health
                .can_take_tasks()
                .is_err_and(|r| r.contains("below the minimum"))
        );
        health.min_free_bytes = 0;
        health.sandbox = Err("cannot sandbox tasks: bwrap is missing".into());
        assert!(
            health
                .can_take_tasks()
                .is_err_and(|r| r.contains("cannot sandbox tasks"))
        );
        health.sandbox = Ok("bubblewrap".into());
        health.renderers.clear();
        assert!(
            health
                .can_take_tasks()
                .is_err_and(|r| r.contains("no usable renderer"))
        );
    }
}
