//! Runs one task assignment from start to result: working directory,
//! inputs, the renderer process, its output, uploads, and the verdict.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::Duration;

use kiln_proto::v1::{
    OutputStored, TaskAssignment, TaskProgressReport, TaskResult, TaskStarted, WorkerMessage,
    worker_message,
};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::assets::AssetStore;
use crate::blender_output::RenderTracker;
use crate::command::{self, RendererKind, RendererPaths};
use crate::log_tail::{LogTail, truncate_chars};
use crate::outputs;
use crate::process::{self, ProcessGroup};
use crate::workdir::{self, InputCache, OUTPUTS_DIR, TaskDir};

/// Shortest time between two progress reports of one task.
const PROGRESS_INTERVAL: Duration = Duration::from_millis(500);
/// Output files waiting for upload while the renderer keeps going.
const UPLOAD_QUEUE: usize = 64;
/// How long to keep reading output after the renderer exits.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest failure message, in characters.
const MAX_MESSAGE_CHARS: usize = 1000;

/// How the task runner behaves on this worker.
#[derive(Debug, Clone)]
pub struct RunnerSettings {
    /// Parent of every task's working directory.
    pub work_dir: PathBuf,
    pub renderers: RendererPaths,
    pub allow_blender_python: bool,
    pub log_tail_lines: usize,
    pub keep_work_dirs: bool,
}

/// How a task ended.
#[derive(Debug, Clone, PartialEq)]
pub enum TaskOutcome {
    /// The task ran to a result, successful or not, to report to the scheduler.
    Finished(TaskResult),
    /// The task was cancelled and its processes killed; nothing to report.
    Cancelled,
}

/// Runs assignments; one runner serves every slot of a session.
pub struct TaskRunner<A> {
    settings: RunnerSettings,
    cache: InputCache,
    assets: A,
}

/// What the renderer left behind when it stopped on its own or timed out.
struct Exit {
    status: std::io::Result<ExitStatus>,
    timed_out: bool,
}

/// Everything learned while watching the renderer.
struct Observed {
    tracker: RenderTracker,
    tail: LogTail,
    /// Why the task fails even if the renderer succeeds.
    problem: Option<String>,
}

impl<A: AssetStore> TaskRunner<A> {
    pub fn new(settings: RunnerSettings, cache: InputCache, assets: A) -> Self {
        Self {
            settings,
            cache,
            assets,
        }
    }

    /// Runs `assignment` to its end, sending `TaskStarted`, progress and
    /// `OutputStored` messages to `events`. Cancelling `cancel` kills the
    /// renderer's whole process group and ends with [`TaskOutcome::Cancelled`].
    pub async fn run(
        &self,
        assignment: &TaskAssignment,
        events: &mpsc::Sender<WorkerMessage>,
        cancel: &CancellationToken,
    ) -> TaskOutcome {
        let span = tracing::info_span!(
            "task",
            task_id = %assignment.task_id,
            attempt = assignment.attempt,
            job_id = %assignment.job_id,
            trace_id = tracing::field::Empty
        );
        kiln_telemetry::propagation::record_trace_id(&span);
        async {
            let dir = match TaskDir::create(
                &self.settings.work_dir,
                &assignment.task_id,
                assignment.attempt,
            )
            .await
            {
                Ok(dir) => dir,
                Err(error) => {
                    return TaskOutcome::Finished(failure(
                        assignment,
                        None,
                        error.to_string(),
                        String::new(),
                    ));
                }
            };
            let outcome = self.run_in(assignment, &dir, events, cancel).await;
            if !self.settings.keep_work_dirs {
                dir.remove().await;
            }
            match &outcome {
                TaskOutcome::Finished(result) if result.success => tracing::info!("task succeeded"),
                TaskOutcome::Finished(result) => {
                    tracing::warn!(message = %result.message, "task failed")
                }
                TaskOutcome::Cancelled => tracing::info!("task cancelled"),
            }
            outcome
        }
        .instrument(span)
        .await
    }

    async fn run_in(
        &self,
        assignment: &TaskAssignment,
        dir: &TaskDir,
        events: &mpsc::Sender<WorkerMessage>,
        cancel: &CancellationToken,
    ) -> TaskOutcome {
        let prepared = tokio::select! {
            _ = cancel.cancelled() => return TaskOutcome::Cancelled,
            prepared = self.prepare(assignment, dir) => prepared,
        };
        let (invocation, input_outputs) = match prepared {
            Ok(prepared) => prepared,
            Err(message) => {
                return TaskOutcome::Finished(failure(assignment, None, message, String::new()));
            }
        };
        let renderer = match process::spawn(&invocation, dir.path()) {
            Ok(renderer) => renderer,
            Err(error) => {
                let message = format!("cannot start {}: {error}", invocation.program.display());
                return TaskOutcome::Finished(failure(assignment, None, message, String::new()));
            }
        };
        tracing::info!(program = %invocation.program.display(), args = ?invocation.args, "renderer started");
        let started = TaskStarted {
            task_id: assignment.task_id.clone(),
            attempt: assignment.attempt,
        };
        let _ = events
            .send(message(worker_message::Message::Started(started)))
            .await;

        let (queue, queued) = mpsc::channel(UPLOAD_QUEUE);
        let uploads = upload_outputs(
            &self.assets,
            queued,
            dir.outputs(),
            assignment,
            events,
            cancel,
        );
        let watch = Watch {
            assignment,
            kind: invocation.renderer,
            dir,
            input_outputs,
            queue,
            queued: HashSet::new(),
            events,
            cancel,
            last_progress: None,
            observed: Observed {
                tracker: RenderTracker::default(),
                tail: LogTail::new(self.settings.log_tail_lines),
                problem: None,
            },
        };
        let watch = watch.run(renderer);
        let (watched, upload_error) = tokio::join!(watch, uploads);
        match watched {
            _ if cancel.is_cancelled() => TaskOutcome::Cancelled,
            Some((exit, observed)) => TaskOutcome::Finished(verdict(
                assignment,
                invocation.renderer,
                exit,
                observed,
                upload_error,
            )),
            None => TaskOutcome::Cancelled,
        }
    }

    /// Places the inputs and builds the command line; on error, the message
    /// the task fails with. Returns the invocation and the inputs that were
    /// placed under `outputs/` (which are not outputs).
    async fn prepare(
        &self,
        assignment: &TaskAssignment,
        dir: &TaskDir,
    ) -> Result<(command::Invocation, HashSet<PathBuf>), String> {
        let invocation = command::build(
            &assignment.command,
            &assignment.args,
            dir.path(),
            &self.settings.renderers,
            self.settings.allow_blender_python,
        )
        .map_err(|error| error.to_string())?;
        let mut input_outputs = HashSet::new();
        for input in &assignment.inputs {
            let relative =
                workdir::relative_input_path(&input.path).map_err(|error| error.to_string())?;
            self.cache
                .place(&self.assets, &input.digest, &relative, dir)
                .await
                .map_err(|error| error.to_string())?;
            if let Ok(inside) = relative.strip_prefix(OUTPUTS_DIR) {
                input_outputs.insert(inside.to_path_buf());
            }
        }
        Ok((invocation, input_outputs))
    }
}

/// Following one renderer run: where its lines, outputs and progress go.
struct Watch<'a> {
    assignment: &'a TaskAssignment,
    kind: RendererKind,
    dir: &'a TaskDir,
    /// Inputs placed under `outputs/`, which are not outputs.
    input_outputs: HashSet<PathBuf>,
    /// Outputs to upload, relative to `outputs/`.
    queue: mpsc::Sender<PathBuf>,
    /// Everything already put in `queue`.
    queued: HashSet<PathBuf>,
    events: &'a mpsc::Sender<WorkerMessage>,
    cancel: &'a CancellationToken,
    last_progress: Option<Instant>,
    observed: Observed,
}

impl Watch<'_> {
    /// Follows the renderer until it exits, then queues every output not yet
    /// queued. `None` when cancelled.
    async fn run(mut self, renderer: process::Renderer) -> Option<(Exit, Observed)> {
        let process::Renderer {
            mut child,
            group,
            mut lines,
        } = renderer;
        let max_run_seconds = self.assignment.max_run_seconds;
        let deadline = async {
            match max_run_seconds {
                0 => std::future::pending().await,
                limit => tokio::time::sleep(Duration::from_secs(limit.into())).await,
            }
        };
        tokio::pin!(deadline);
        let wait = child.wait();
        tokio::pin!(wait);
        let mut lines_open = true;
        let exit = loop {
            tokio::select! {
                biased;
                _ = self.cancel.cancelled() => {
                    if let Err(error) = reap(group, &mut wait).await {
                        tracing::warn!(%error, "cannot reap cancelled renderer");
                    }
                    return None;
                }
                _ = &mut deadline => {
                    tracing::warn!(max_run_seconds, "task ran too long; killing it");
                    let status = reap(group, &mut wait).await;
                    break Exit { status, timed_out: true };
                }
                status = &mut wait => break Exit { status, timed_out: false },
                line = lines.recv(), if lines_open => match line {
                    Some(line) => self.line(&line).await,
                    None => lines_open = false,
                },
            }
        };
        // Helpers the renderer left behind would keep its pipes open.
        group.kill();
        if !self.drain(&mut lines).await {
            return None;
        }
        self.queue_remaining_outputs().await;
        Some((exit, self.observed))
    }

    /// Reads what is left of the output after exit; false when cancelled.
    async fn drain(&mut self, lines: &mut mpsc::Receiver<String>) -> bool {
        let deadline = tokio::time::sleep(DRAIN_TIMEOUT);
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                _ = self.cancel.cancelled() => return false,
                _ = &mut deadline => {
                    tracing::warn!("renderer output still open after exit; ignoring the rest");
                    return true;
                }
                line = lines.recv() => match line {
                    Some(line) => self.line(&line).await,
                    None => return true,
                },
            }
        }
    }

    async fn line(&mut self, line: &str) {
        tracing::trace!(line, "renderer output");
        self.observed.tail.push(line);
        if self.kind != RendererKind::Blender {
            return;
        }
        if let Some(saved) = self.observed.tracker.observe(line) {
            self.queue_saved(&saved).await;
        }
        self.report_progress();
    }

    async fn queue_saved(&mut self, saved: &Path) {
        let absolute = self.dir.path().join(saved);
        match outputs::relative_to(&absolute, self.dir.outputs()) {
            Some(relative) => self.queue(relative).await,
            None => {
                let problem = format!(
                    "blender saved {} outside the task's {OUTPUTS_DIR}/ directory",
                    saved.display()
                );
                self.observed.problem.get_or_insert(problem);
            }
        }
    }

    async fn queue(&mut self, relative: PathBuf) {
        if self.queued.insert(relative.clone()) {
            // Fails only when the uploader stopped (cancelled), which ends the task anyway.
            let _ = self.queue.send(relative).await;
        }
    }

    fn report_progress(&mut self) {
        let Some(frame) = self.observed.tracker.current_frame() else {
            return;
        };
        let now = Instant::now();
        if self
            .last_progress
            .is_some_and(|last| now.duration_since(last) < PROGRESS_INTERVAL)
        {
            return;
        }
        self.last_progress = Some(now);
        let report = TaskProgressReport {
            task_id: self.assignment.task_id.clone(),
            attempt: self.assignment.attempt,
            fraction: self.observed.tracker.fraction(&self.assignment.frames),
            frame: Some(frame),
        };
        // Progress may be dropped when the stream is busy; the next report supersedes it.
        let _ = self
            .events
            .try_send(message(worker_message::Message::Progress(report)));
    }

    async fn queue_remaining_outputs(&mut self) {
        let found = match outputs::list_files(self.dir.outputs()).await {
            Ok(found) => found,
            Err(error) => {
                self.observed
                    .problem
                    .get_or_insert_with(|| error.to_string());
                return;
            }
        };
        for relative in found {
            if !self.input_outputs.contains(&relative) {
                self.queue(relative).await;
            }
        }
    }
}

/// Kills the group and reaps its leader.
async fn reap(
    group: ProcessGroup,
    wait: &mut std::pin::Pin<&mut impl std::future::Future<Output = std::io::Result<ExitStatus>>>,
) -> std::io::Result<ExitStatus> {
    group.kill();
    wait.await
}

/// Uploads queued outputs one by one, telling the scheduler about each.
/// Returns why uploading failed, if it did; after a failure the rest of the
/// queue is drained without uploading, since the task has failed anyway.
async fn upload_outputs<A: AssetStore>(
    assets: &A,
    mut queued: mpsc::Receiver<PathBuf>,
    outputs_dir: &Path,
    assignment: &TaskAssignment,
    events: &mpsc::Sender<WorkerMessage>,
    cancel: &CancellationToken,
) -> Option<String> {
    let mut failed = None;
    loop {
        let relative = tokio::select! {
            _ = cancel.cancelled() => return failed,
            relative = queued.recv() => match relative {
                Some(relative) => relative,
                None => return failed,
            },
        };
        if failed.is_some() {
            continue;
        }
        let upload = upload_one(assets, outputs_dir, &relative, assignment, events);
        let result = tokio::select! {
            _ = cancel.cancelled() => return failed,
            result = upload => result,
        };
        failed = result.err();
    }
}

async fn upload_one<A: AssetStore>(
    assets: &A,
    outputs_dir: &Path,
    relative: &Path,
    assignment: &TaskAssignment,
    events: &mpsc::Sender<WorkerMessage>,
) -> Result<(), String> {
    let name = outputs::display_path(relative);
    let path = outputs_dir.join(relative);
    let is_file = tokio::fs::symlink_metadata(&path)
        .await
        .is_ok_and(|m| m.is_file());
    if !is_file {
        return Err(format!("output {name} is not a regular file"));
    }
    let stored = assets
        .upload_file(&path)
        .await
        .map_err(|error| format!("cannot upload output {name}: {error}"))?;
    tracing::info!(path = %name, digest = %stored.digest, size = stored.size, "output stored");
    let output = OutputStored {
        task_id: assignment.task_id.clone(),
        attempt: assignment.attempt,
        path: name,
        digest: stored.digest,
        size: stored.size,
    };
    let _ = events
        .send(message(worker_message::Message::Output(output)))
        .await;
    Ok(())
}

/// Decides success and the one-line reason for failure.
fn verdict(
    assignment: &TaskAssignment,
    kind: RendererKind,
    exit: Exit,
    observed: Observed,
    upload_error: Option<String>,
) -> TaskResult {
    let name = kind.name();
    let log_tail = observed.tail.text();
    let last_error = observed
        .tracker
        .last_error()
        .or(observed.tail.last())
        .unwrap_or("no output");
    let status = match exit.status {
        Ok(status) => status,
        Err(error) => {
            return failure(
                assignment,
                None,
                format!("cannot wait for {name}: {error}"),
                log_tail,
            );
        }
    };
    let exit_code = status.code();
    let problem = if exit.timed_out {
        Some(format!(
            "exceeded maximum run time of {} s",
            assignment.max_run_seconds
        ))
    } else if let Some(code) = exit_code.filter(|code| *code != 0) {
        Some(format!("{name} exited with status {code}: {last_error}"))
    } else if exit_code.is_none() {
        Some(format!("{name} was killed by a signal ({status})"))
    } else if kind == RendererKind::Blender
        && !observed
            .tracker
            .missing_frames(&assignment.frames)
            .is_empty()
    {
        Some(missing_frames_message(
            &observed.tracker,
            &assignment.frames,
        ))
    } else {
        observed.problem.or(upload_error)
    };
    match problem {
        Some(problem) => failure(assignment, exit_code, problem, log_tail),
        None => TaskResult {
            task_id: assignment.task_id.clone(),
            attempt: assignment.attempt,
            success: true,
            exit_code,
            message: String::new(),
            log_tail,
        },
    }
}

fn missing_frames_message(tracker: &RenderTracker, frames: &[i64]) -> String {
    let saved = tracker.saved_count(frames);
    let head = format!(
        "blender exited 0 but saved {saved} of {} frames",
        frames.len()
    );
    match tracker.first_error() {
        Some(error) => format!("{head}: {error}"),
        None => format!(
            "{head}: no saved output for frames {:?}",
            tracker.missing_frames(frames)
        ),
    }
}

fn failure(
    assignment: &TaskAssignment,
    exit_code: Option<i32>,
    message: String,
    log_tail: String,
) -> TaskResult {
    let one_line = message.replace(['\n', '\r'], " ");
    TaskResult {
        task_id: assignment.task_id.clone(),
        attempt: assignment.attempt,
        success: false,
        exit_code,
        message: truncate_chars(&one_line, MAX_MESSAGE_CHARS).to_owned(),
        log_tail,
    }
}

pub(crate) fn message(message: worker_message::Message) -> WorkerMessage {
    WorkerMessage {
        message: Some(message),
    }
}
