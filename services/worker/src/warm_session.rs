//! One warm Blender process: a scene loaded once, frames rendered on request
//! through the driver script shipped with the worker.

use std::io;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;

use tokio::io::AsyncWriteExt;
use tokio::process::{Child, ChildStdin};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::command;
use crate::outputs::OutputsRoot;
use crate::process::{self, ProcessGroup};
use crate::sandbox::TaskSandbox;
use crate::task::run::OutputPlace;
use crate::warm_plan::SessionKey;
use crate::workdir::OUTPUTS_DIR;

/// The driver, written next to the session's scene at start.
const DRIVER: &str = include_str!("blender_driver.py");
const DRIVER_FILE: &str = "kiln_blender_driver.py";
/// Prefix of the directories of the session Blender may write to: one per
/// task, `out-N`, for its outputs. The session's directory itself (scene,
/// driver) stays the worker's.
const OUT_DIR: &str = "out";
/// Requests waiting to be written to Blender's stdin.
const REQUEST_QUEUE: usize = 16;

#[derive(Debug, thiserror::Error)]
pub enum WarmSessionError {
    #[error("cannot write the blender driver to {}: {source}", path.display())]
    Driver { path: PathBuf, source: io::Error },
    #[error("cannot start blender: {0}")]
    Spawn(io::Error),
    #[error("the warm blender session has no input pipe")]
    NoStdin,
    #[error("cannot send a request to the warm blender session: its input is closed or full")]
    Request,
    #[error("cannot prepare the session's output directory: {0}")]
    Output(io::Error),
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

/// A running Blender holding one scene, in a sandbox of its own (its own
/// uid, for its whole life). Dropping it kills the process group and the
/// sandbox; the session's directory goes once no task still uploads from
/// it (`SessionDir`).
pub struct WarmSession {
    id: u64,
    key: SessionKey,
    dir: Arc<SessionDir>,
    /// Number of the next task's output directory.
    next_outputs: u64,
    /// The Blender process; awaited by the task using the session, to notice a crash.
    pub child: Child,
    group: ProcessGroup,
    /// Requests, written to Blender's stdin by a task of their own so that
    /// sending one never blocks (and is never half done when a task moves on).
    requests: mpsc::Sender<Vec<u8>>,
    sandbox: TaskSandbox,
    /// Blender's stdout and stderr, line by line.
    pub lines: mpsc::Receiver<String>,
    frames_rendered: u32,
    /// Resident memory after the first frame, the base for measuring growth.
    baseline_rss: Option<u64>,
    idle_since: Instant,
}

impl WarmSession {
    /// Starts Blender on `key` in `sandbox`, whose directory `dir` already
    /// holds the key's inputs.
    pub async fn start(
        id: u64,
        key: SessionKey,
        dir: PathBuf,
        blender: &Path,
        sandbox: TaskSandbox,
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
        let command = sandbox.command(blender.as_os_str(), &args, &[]);
        let process::Renderer {
            mut child,
            group,
            lines,
        } = process::spawn(command, Stdio::piped()).map_err(WarmSessionError::Spawn)?;
        let stdin = child.stdin.take().ok_or(WarmSessionError::NoStdin)?;
        let (requests, queued) = mpsc::channel(REQUEST_QUEUE);
        tokio::spawn(write_requests(stdin, queued));
        tracing::info!(
            session = id,
            pid = child.id(),
            "warm blender session started"
        );
        Ok(Self {
            id,
            key,
            dir: Arc::new(SessionDir(dir)),
            next_outputs: 0,
            child,
            group,
            requests,
            sandbox,
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
    pub fn request(&mut self, frame: i64, output: &str) -> Result<(), WarmSessionError> {
        let mut line = serde_json::to_vec(&Request { frame, output })?;
        line.push(b'\n');
        self.requests
            .try_send(line)
            .map_err(|_| WarmSessionError::Request)
    }

    /// A new output directory for the next task, handed to the session's
    /// uid: where that task's frames go. Each task has its own, so a task
    /// still uploading its frames after it handed the session back (to free
    /// its slot) is not wiped by the next one; the directory goes when the
    /// task drops its place.
    pub fn fresh_outputs(&mut self) -> Result<OutputPlace, WarmSessionError> {
        let out = self.dir.0.join(format!("{OUT_DIR}-{}", self.next_outputs));
        self.next_outputs += 1;
        match std::fs::remove_dir_all(&out) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                return Err(WarmSessionError::Output(e));
            }
            _ => {}
        }
        // Made by the worker in its own directory, then handed over: nothing
        // the session did before can redirect them.
        let outputs = out.join(OUTPUTS_DIR);
        std::fs::create_dir(&out).map_err(WarmSessionError::Output)?;
        let kept = Arc::new(TaskOutputs {
            path: out.clone(),
            _session: self.dir.clone(),
        });
        std::fs::create_dir(&outputs).map_err(WarmSessionError::Output)?;
        self.sandbox
            .hand_over(&out)
            .map_err(|e| WarmSessionError::Output(io::Error::other(e.to_string())))?;
        Ok(OutputPlace {
            outputs: std::sync::Arc::new(
                OutputsRoot::open(&outputs).map_err(WarmSessionError::Output)?,
            ),
            workdir: out,
            kept: Some(kept),
        })
    }

    /// The sandbox Blender runs in.
    pub fn sandbox(&self) -> &TaskSandbox {
        &self.sandbox
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
        Some(self.sandbox.memory_bytes(self.child.id()?))
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
        self.sandbox.kill();
    }

    /// Kills Blender and whatever it started, and waits until they are gone.
    pub async fn kill_and_wait(&mut self) {
        self.sandbox.kill();
        let sandboxed = self.sandbox.uid().is_some();
        let _ = process::stop(&mut self.child, self.group, sandboxed).await;
    }
}

/// Writes queued requests to Blender's stdin until either side closes.
async fn write_requests(mut stdin: ChildStdin, mut queued: mpsc::Receiver<Vec<u8>>) {
    while let Some(line) = queued.recv().await {
        let written = async {
            stdin.write_all(&line).await?;
            stdin.flush().await
        };
        if let Err(error) = written.await {
            tracing::debug!(%error, "warm blender session's input closed");
            return;
        }
    }
}

impl Drop for WarmSession {
    fn drop(&mut self) {
        self.kill();
        tracing::info!(
            session = self.id,
            frames = self.frames_rendered,
            "warm blender session ended"
        );
    }
}

/// A warm session's directory (hard links to cached inputs, a driver
/// script, the tasks' output directories), deleted when the session and
/// every task that rendered in it are done with it.
#[derive(Debug)]
pub struct SessionDir(PathBuf);

impl Drop for SessionDir {
    fn drop(&mut self) {
        remove_dir(&self.0, "cannot remove warm session directory");
    }
}

/// One task's output directory in a warm session, deleted when the task is
/// done with it (its uploads included).
#[derive(Debug)]
pub struct TaskOutputs {
    path: PathBuf,
    _session: Arc<SessionDir>,
}

impl Drop for TaskOutputs {
    fn drop(&mut self) {
        remove_dir(&self.path, "cannot remove a warm task's output directory");
    }
}

fn remove_dir(path: &Path, what: &'static str) {
    if let Err(error) = std::fs::remove_dir_all(path)
        && error.kind() != io::ErrorKind::NotFound
    {
        tracing::warn!(path = %path.display(), %error, "{what}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A task that handed its session back (to free its slot) still uploads
    /// from its output directory, even if the session is recycled meanwhile.
    #[test]
    fn a_session_directory_outlives_the_session_until_its_tasks_are_done() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("session-1");
        let frame = dir.join("out-0/outputs/0001.png");
        std::fs::create_dir_all(frame.parent().unwrap()).unwrap();
        std::fs::write(&frame, b"png").unwrap();
        let session = Arc::new(SessionDir(dir.clone()));
        let task = TaskOutputs {
            path: dir.join("out-0"),
            _session: session.clone(),
        };
        drop(session);
        assert!(frame.exists(), "the task still holds its outputs");
        drop(task);
        assert!(
            !dir.exists(),
            "the last holder removes the session directory"
        );
    }

    #[test]
    fn a_task_is_done_with_only_its_own_output_directory() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("session-1");
        for n in 0..2 {
            std::fs::create_dir_all(dir.join(format!("out-{n}/outputs"))).unwrap();
        }
        let session = Arc::new(SessionDir(dir.clone()));
        let first = TaskOutputs {
            path: dir.join("out-0"),
            _session: session.clone(),
        };
        drop(first);
        assert!(!dir.join("out-0").exists());
        assert!(dir.join("out-1/outputs").exists(), "the next task's stays");
    }

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
