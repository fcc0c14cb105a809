//! One warm Blender process: a scene loaded once, frames rendered on request
//! through the driver script shipped with the worker.

use std::io;
use std::path::{Path, PathBuf};

use tokio::io::AsyncWriteExt;
use tokio::process::{Child, ChildStdin};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::command::{self, Invocation, RendererKind};
use crate::process::{self, ProcessGroup};
use crate::warm_plan::SessionKey;

/// The driver, written next to the session's scene at start.
const DRIVER: &str = include_str!("blender_driver.py");
const DRIVER_FILE: &str = "kiln_blender_driver.py";

#[derive(Debug, thiserror::Error)]
pub enum WarmSessionError {
    #[error("cannot write the blender driver to {}: {source}", path.display())]
    Driver { path: PathBuf, source: io::Error },
    #[error("cannot start blender: {0}")]
    Spawn(io::Error),
    #[error("the warm blender session has no input pipe")]
    NoStdin,
    #[error("cannot send a request to the warm blender session: {0}")]
    Request(io::Error),
    #[error("cannot encode a request: {0}")]
    Encode(#[from] serde_json::Error),
}

/// What the driver says about a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DriverLine {
    Ready,
    Done { frame: i64 },
    Failed { frame: String, message: String },
}

/// Recognises the driver's own lines among Blender's output.
pub fn parse_driver_line(line: &str) -> Option<DriverLine> {
    let line = line.trim_end();
    if line == "KILN_DRIVER_READY" {
        return Some(DriverLine::Ready);
    }
    if let Some(frame) = line.strip_prefix("KILN_FRAME_DONE ") {
        return frame
            .trim()
            .parse()
            .ok()
            .map(|frame| DriverLine::Done { frame });
    }
    let rest = line.strip_prefix("KILN_FRAME_FAILED ")?;
    let (frame, message) = rest.split_once(' ').unwrap_or((rest, ""));
    Some(DriverLine::Failed {
        frame: frame.to_owned(),
        message: message.to_owned(),
    })
}

#[derive(serde::Serialize)]
struct Request<'a> {
    frame: i64,
    output: &'a str,
}

/// A running Blender holding one scene. Dropping it kills the process
/// group and deletes the session's directory.
pub struct WarmSession {
    id: u64,
    key: SessionKey,
    dir: PathBuf,
    /// The Blender process; awaited by the task using the session, to notice a crash.
    pub child: Child,
    group: ProcessGroup,
    stdin: ChildStdin,
    /// Blender's stdout and stderr, line by line.
    pub lines: mpsc::Receiver<String>,
    frames_rendered: u32,
    /// Resident memory after the first frame, the base for measuring growth.
    baseline_rss: Option<u64>,
    idle_since: Instant,
}

impl WarmSession {
    /// Starts Blender on `key` in `dir`, which already holds the key's inputs.
    pub async fn start(
        id: u64,
        key: SessionKey,
        dir: PathBuf,
        blender: &Path,
    ) -> Result<Self, WarmSessionError> {
        let driver = dir.join(DRIVER_FILE);
        tokio::fs::write(&driver, DRIVER)
            .await
            .map_err(|source| WarmSessionError::Driver {
                path: driver.clone(),
                source,
            })?;
        let mut args = vec!["-b".to_owned(), "-Y".to_owned()];
        args.extend(command::substitute_working_directory(&key.args, &dir));
        args.extend([
            "--python".to_owned(),
            driver.to_string_lossy().into_owned(),
            "--".to_owned(),
        ]);
        args.extend(key.script_args.iter().cloned());
        let invocation = Invocation {
            renderer: RendererKind::Blender,
            program: blender.to_path_buf(),
            args,
        };
        let process::Renderer {
            mut child,
            group,
            lines,
        } = process::spawn_with_stdin(&invocation, &dir).map_err(WarmSessionError::Spawn)?;
        let stdin = child.stdin.take().ok_or(WarmSessionError::NoStdin)?;
        tracing::info!(
            session = id,
            pid = child.id(),
            "warm blender session started"
        );
        Ok(Self {
            id,
            key,
            dir,
            child,
            group,
            stdin,
            lines,
            frames_rendered: 0,
            baseline_rss: None,
            idle_since: Instant::now(),
        })
    }

    pub fn id(&self) -> u64 {
        self.id
    }

    pub fn key(&self) -> &SessionKey {
        &self.key
    }

    pub fn frames_rendered(&self) -> u32 {
        self.frames_rendered
    }

    /// When the session last finished a task.
    pub fn idle_since(&self) -> Instant {
        self.idle_since
    }

    pub fn mark_idle(&mut self) {
        self.idle_since = Instant::now();
    }

    /// Asks the driver to render `frame` to `output` (a `-o` style pattern).
    pub async fn request(&mut self, frame: i64, output: &str) -> Result<(), WarmSessionError> {
        let mut line = serde_json::to_vec(&Request { frame, output })?;
        line.push(b'\n');
        self.stdin
            .write_all(&line)
            .await
            .map_err(WarmSessionError::Request)?;
        self.stdin.flush().await.map_err(WarmSessionError::Request)
    }

    /// Counts a rendered frame; the first one sets the memory baseline,
    /// once the scene and the render engine are fully loaded.
    pub fn frame_done(&mut self) {
        self.frames_rendered += 1;
        if self.baseline_rss.is_none() {
            self.baseline_rss = self.rss();
        }
    }

    /// How much resident memory grew since the first frame.
    pub fn memory_growth(&self) -> Option<u64> {
        Some(self.rss()?.saturating_sub(self.baseline_rss?))
    }

    fn rss(&self) -> Option<u64> {
        let pid = sysinfo::Pid::from_u32(self.child.id()?);
        let mut system = sysinfo::System::new();
        system.refresh_processes_specifics(
            sysinfo::ProcessesToUpdate::Some(&[pid]),
            true,
            sysinfo::ProcessRefreshKind::nothing().with_memory(),
        );
        system.process(pid).map(sysinfo::Process::memory)
    }

    /// Whether Blender is still running.
    pub fn is_alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Throws away output left from before, so that a new task sees only its own.
    pub fn discard_pending_lines(&mut self) {
        while self.lines.try_recv().is_ok() {}
    }

    /// Kills Blender and whatever it started.
    pub fn kill(&self) {
        self.group.kill();
    }
}

impl Drop for WarmSession {
    fn drop(&mut self) {
        self.group.kill();
        tracing::info!(
            session = self.id,
            frames = self.frames_rendered,
            "warm blender session ended"
        );
        // Hard links to cached inputs and a driver script: quick to delete.
        if let Err(error) = std::fs::remove_dir_all(&self.dir)
            && error.kind() != io::ErrorKind::NotFound
        {
            tracing::warn!(path = %self.dir.display(), %error, "cannot remove warm session directory");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_driver_lines() {
        assert_eq!(
            parse_driver_line("KILN_DRIVER_READY"),
            Some(DriverLine::Ready)
        );
        assert_eq!(
            parse_driver_line("KILN_FRAME_DONE 12"),
            Some(DriverLine::Done { frame: 12 })
        );
        assert_eq!(
            parse_driver_line("KILN_FRAME_FAILED 3 RuntimeError: Error: No camera found in scene"),
            Some(DriverLine::Failed {
                frame: "3".into(),
                message: "RuntimeError: Error: No camera found in scene".into()
            })
        );
        assert_eq!(parse_driver_line("Saved: '/w/f_0001.png'"), None);
        assert_eq!(parse_driver_line("KILN_FRAME_DONE x"), None);
    }
}
