//! Runs one task assignment from start to result: working directory,
//! inputs, the renderer process, its output, uploads, and the verdict.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::sync::Arc;
use std::time::Duration;

use kiln_proto::v1::{
    OutputStored, TaskAssignment, TaskProgressReport, TaskResult, TaskStarted, WorkerMessage,
    worker_message,
};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::assets::{AssetStore, StoredAsset};
use crate::blender_output::RenderTracker;
use crate::command::{self, RendererKind, RendererPaths};
use crate::devices::{self, CyclesDevice, Gpu};
use crate::log_tail::{LogTail, truncate_chars};
use crate::outputs;
use crate::process::{self, ProcessGroup};
use crate::quality_check;
use crate::session_pool::SessionPool;
use crate::session_runner::SessionRun;
use crate::stall::StallTimer;
use crate::task_log::TaskLog;
use crate::thumbnails;
use crate::variant;
use crate::warm_plan::{self, WarmPlan};
use crate::warm_pool::{WarmPool, WarmSettings};
use crate::warm_session::{self, DriverLine, WarmSession};
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
    /// Cap of each attempt's stored log, in bytes.
    pub log_max_bytes: usize,
    pub keep_work_dirs: bool,
    pub warm: WarmSettings,
    /// GPUs Cycles may render on; empty renders every frame on the CPU.
    pub gpus: Vec<Gpu>,
    /// How long an OpenJD session (its environments entered) waits for its
    /// job's next task before it ends.
    pub session_idle_timeout: Duration,
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
    /// Idle warm Blender sessions; `None` when they are off or Blender is missing.
    warm: Option<Arc<WarmPool>>,
    /// OpenJD sessions waiting for their job's next task.
    sessions: Arc<SessionPool>,
}

/// How the renderer's part of a task ended.
enum Ending {
    /// The renderer exited on its own.
    Exited(std::io::Result<ExitStatus>),
    /// The renderer was killed for breaking one of the assignment's limits.
    Killed(Limit),
    /// A warm session rendered every frame it was asked for.
    WarmDone,
    /// A warm session crashed or could not render a frame.
    WarmFailed(String),
}

/// A limit of the assignment that gets a renderer killed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Limit {
    /// `max_run_seconds` passed.
    RunTime,
    /// `stall_seconds` passed without an output line.
    Stall,
}

/// What renders the task.
enum Engine {
    /// A renderer started for this task alone; taken when watched.
    Cold(Option<process::Renderer>),
    /// A warm Blender session, lent by the pool for this task.
    Warm {
        pool: Arc<WarmPool>,
        /// Taken back when the task ends: returned to the pool, or dropped (killed).
        session: Option<Box<WarmSession>>,
        reused: bool,
        /// Output pattern, resolved against the task's directory.
        output: String,
    },
}

/// Everything learned while watching the renderer.
struct Observed {
    tracker: RenderTracker,
    tail: LogTail,
    /// The whole log (up to its cap), streamed live as it grows.
    log: TaskLog,
    /// Why the task fails even if the renderer succeeds.
    problem: Option<String>,
}

impl<A: AssetStore> TaskRunner<A> {
    /// Must be called within a Tokio runtime when warm sessions are enabled.
    pub fn new(settings: RunnerSettings, cache: InputCache, assets: A) -> Self {
        let warm = (settings.warm.enabled && settings.renderers.blender.is_some())
            .then(|| WarmPool::new(settings.warm.clone(), &settings.work_dir));
        let sessions = SessionPool::new(
            &settings.work_dir,
            settings.session_idle_timeout,
            settings.keep_work_dirs,
        );
        Self {
            settings,
            cache,
            assets,
            warm,
            sessions,
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
        // The task joins the trace of the job's submission.
        kiln_telemetry::propagation::adopt_parent_from_map(&span, &assignment.trace_context);
        kiln_telemetry::propagation::record_trace_id(&span);
        async {
            if !assignment.session_step.is_empty() {
                let session = SessionRun {
                    cache: &self.cache,
                    assets: &self.assets,
                    pool: &self.sessions,
                    log_tail_lines: self.settings.log_tail_lines,
                    log_max_bytes: self.settings.log_max_bytes,
                };
                return log_outcome(session.run(assignment, events, cancel).await);
            }
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
            log_outcome(outcome)
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
        let (assignment, device) = self.with_device(assignment);
        let outcome = self.run_on(&assignment, dir, events, cancel).await;
        match (outcome, device) {
            // The device is reported in the result's message, which the
            // scheduler keeps as the task's message.
            (TaskOutcome::Finished(mut result), Some(device)) if result.success => {
                result.message = format!("device: {}", device.name());
                TaskOutcome::Finished(result)
            }
            (outcome, _) => outcome,
        }
    }

    /// The assignment with its Cycles device request (`-- --cycles-device
    /// cpu|gpu`) replaced by the device this worker renders it on.
    fn with_device(&self, assignment: &TaskAssignment) -> (TaskAssignment, Option<CyclesDevice>) {
        let mut assignment = assignment.clone();
        let gpus = &self.settings.gpus;
        let device = match assignment.command.as_str() {
            command if command == RendererKind::Blender.name() => {
                devices::resolve_cycles_device(&mut assignment.args, gpus)
            }
            variant::COMMAND => devices::resolve_variant_device(&mut assignment.args, gpus),
            _ => None,
        };
        if let Some(device) = device {
            tracing::info!(device = device.name(), "cycles device chosen");
        }
        (assignment, device)
    }

    async fn run_on(
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
        if invocation.renderer == RendererKind::Check {
            return self
                .run_check(assignment, dir, &invocation, events, cancel)
                .await;
        }
        let warm = match invocation.renderer {
            RendererKind::Blender => self.warm_plan(assignment),
            _ => None,
        };
        let mut engine = match warm {
            Some((pool, plan)) => {
                let session = tokio::select! {
                    _ = cancel.cancelled() => return TaskOutcome::Cancelled,
                    session = self.warm_session(&pool, &plan) => session,
                };
                match session {
                    Ok((session, reused)) => Engine::Warm {
                        pool,
                        session: Some(Box::new(session)),
                        reused,
                        output: command::substitute_working_directory(
                            std::slice::from_ref(&plan.output),
                            dir.path(),
                        )
                        .concat(),
                    },
                    Err(message) => {
                        return TaskOutcome::Finished(failure(
                            assignment,
                            None,
                            message,
                            String::new(),
                        ));
                    }
                }
            }
            None => match process::spawn(&invocation, dir.path()) {
                Ok(renderer) => {
                    tracing::info!(program = %invocation.program.display(), args = ?invocation.args, "renderer started");
                    Engine::Cold(Some(renderer))
                }
                Err(error) => {
                    let message = format!("cannot start {}: {error}", invocation.program.display());
                    return TaskOutcome::Finished(failure(
                        assignment,
                        None,
                        message,
                        String::new(),
                    ));
                }
            },
        };
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
                log: TaskLog::new(assignment, self.settings.log_max_bytes),
                problem: None,
            },
        };
        let watch = async {
            match &mut engine {
                Engine::Cold(renderer) => match renderer.take() {
                    Some(renderer) => watch.run(renderer).await,
                    None => None,
                },
                Engine::Warm {
                    session: Some(session),
                    reused,
                    output,
                    ..
                } => watch.run_warm(session, *reused, output).await,
                Engine::Warm { session: None, .. } => None,
            }
        };
        let (watched, mut uploaded) = tokio::join!(watch, uploads);
        let watched = match watched {
            Some((ending, mut observed)) if !cancel.is_cancelled() => {
                observed.log.flush(events);
                let log = self.store_log(assignment, dir, &observed.log, events).await;
                uploaded.stored.extend(log);
                Some((ending, observed))
            }
            other => other,
        };
        if let Engine::Warm { pool, session, .. } = &mut engine
            && let Some(session) = session.take()
            && matches!(watched, Some((Ending::WarmDone, _)))
            && !cancel.is_cancelled()
        {
            pool.put_back(*session);
        }
        match watched {
            _ if cancel.is_cancelled() => TaskOutcome::Cancelled,
            Some((ending, observed)) => TaskOutcome::Finished(verdict(
                assignment,
                invocation.renderer,
                ending,
                observed,
                uploaded,
            )),
            None => TaskOutcome::Cancelled,
        }
    }

    /// Runs `kiln-check` in the worker and uploads its report, which is an
    /// output whether the check passed or not.
    async fn run_check(
        &self,
        assignment: &TaskAssignment,
        dir: &TaskDir,
        invocation: &command::Invocation,
        events: &mpsc::Sender<WorkerMessage>,
        cancel: &CancellationToken,
    ) -> TaskOutcome {
        let started = TaskStarted {
            task_id: assignment.task_id.clone(),
            attempt: assignment.attempt,
        };
        let _ = events
            .send(message(worker_message::Message::Started(started)))
            .await;
        let plan = match quality_check::parse(&invocation.args, dir.path()) {
            Ok(plan) => plan,
            Err(error) => {
                return TaskOutcome::Finished(failure(
                    assignment,
                    None,
                    error.to_string(),
                    String::new(),
                ));
            }
        };
        let report = tokio::select! {
            _ = cancel.cancelled() => return TaskOutcome::Cancelled,
            report = quality_check::run(&plan, &invocation.program) => report,
        };
        let mut tail = LogTail::new(self.settings.log_tail_lines);
        for line in report.log_lines() {
            tail.push(&line);
        }
        let stored = self.store_report(&report, &plan.report, dir, assignment, events);
        let stored = tokio::select! {
            _ = cancel.cancelled() => return TaskOutcome::Cancelled,
            stored = stored => stored,
        };
        tracing::info!(
            passed = report.passed,
            problems = report.problems_total,
            "quality check done"
        );
        let (stored, store_error) = match stored {
            Ok(output) => (vec![output], None),
            Err(error) => (Vec::new(), Some(error)),
        };
        match report.failure_message().or(store_error) {
            Some(problem) => TaskOutcome::Finished(failure(assignment, None, problem, tail.text())),
            None => TaskOutcome::Finished(TaskResult {
                task_id: assignment.task_id.clone(),
                attempt: assignment.attempt,
                success: true,
                exit_code: None,
                message: match report.skipped {
                    true => "quality check skipped".to_owned(),
                    false => "quality check passed".to_owned(),
                },
                log_tail: tail.text(),
                outputs: stored,
            }),
        }
    }

    async fn store_report(
        &self,
        report: &quality_check::Report,
        relative: &Path,
        dir: &TaskDir,
        assignment: &TaskAssignment,
        events: &mpsc::Sender<WorkerMessage>,
    ) -> Result<OutputStored, String> {
        let path = dir.outputs().join(relative);
        let json = serde_json::to_vec_pretty(report).map_err(|e| e.to_string())?;
        if let Some(parent) = path.parent() {
            tokio::fs::create_dir_all(parent)
                .await
                .map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
        }
        tokio::fs::write(&path, json)
            .await
            .map_err(|e| format!("cannot write the check report: {e}"))?;
        let output = upload_one(&self.assets, dir.outputs(), relative, assignment).await?;
        report_output(events, &output).await;
        Ok(output)
    }

    async fn store_log(
        &self,
        assignment: &TaskAssignment,
        dir: &TaskDir,
        log: &TaskLog,
        events: &mpsc::Sender<WorkerMessage>,
    ) -> Option<OutputStored> {
        store_log(&self.assets, assignment, dir.path(), log, events).await
    }

    /// The pool and plan when `assignment` can render warm.
    fn warm_plan(&self, assignment: &TaskAssignment) -> Option<(Arc<WarmPool>, WarmPlan)> {
        let pool = self.warm.clone()?;
        match warm_plan::plan(assignment) {
            Ok(plan) => Some((pool, plan)),
            Err(reason) => {
                tracing::info!(%reason, "rendering cold");
                None
            }
        }
    }

    /// An idle session for the plan's key, or a new one; whether it was reused.
    async fn warm_session(
        &self,
        pool: &WarmPool,
        plan: &WarmPlan,
    ) -> Result<(WarmSession, bool), String> {
        if let Some(session) = pool.take(&plan.key) {
            return Ok((session, true));
        }
        let blender = self
            .settings
            .renderers
            .blender
            .as_deref()
            .ok_or("blender is not available on this worker")?;
        let id = pool.next_id();
        let dir = TaskDir::create(pool.dir(), &format!("session-{id}"), 0)
            .await
            .map_err(|error| error.to_string())?;
        for (path, digest) in &plan.key.inputs {
            let placed = match workdir::relative_input_path(path) {
                Ok(relative) => {
                    self.cache
                        .place(&self.assets, digest, &relative, &dir)
                        .await
                }
                Err(error) => Err(error),
            };
            if let Err(error) = placed {
                dir.remove().await;
                return Err(error.to_string());
            }
        }
        let path = dir.path().to_path_buf();
        match WarmSession::start(id, plan.key.clone(), path, blender).await {
            Ok(session) => Ok((session, false)),
            Err(error) => {
                dir.remove().await;
                Err(format!("cannot start a warm blender session: {error}"))
            }
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
        if invocation.renderer == RendererKind::BlenderVariant {
            write_variant_driver(dir.path()).await?;
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
    async fn run(mut self, renderer: process::Renderer) -> Option<(Ending, Observed)> {
        let process::Renderer {
            mut child,
            group,
            mut lines,
        } = renderer;
        let max_run_seconds = self.assignment.max_run_seconds;
        let deadline = run_deadline(max_run_seconds);
        tokio::pin!(deadline);
        let mut stall = StallTimer::new(self.assignment.stall_seconds);
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
                    log_reaped(reap(group, &mut wait).await);
                    break Ending::Killed(Limit::RunTime);
                }
                _ = stall.expired() => {
                    tracing::warn!(stall_seconds = self.assignment.stall_seconds, "renderer stalled; killing it");
                    log_reaped(reap(group, &mut wait).await);
                    break Ending::Killed(Limit::Stall);
                }
                status = &mut wait => break Ending::Exited(status),
                line = lines.recv(), if lines_open => match line {
                    Some(line) => {
                        stall.reset();
                        self.line(&line).await
                    }
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

    /// Feeds the assignment's frames to a warm session one by one, following
    /// its output until the driver reports each done. `None` when cancelled;
    /// the caller then drops (kills) the session, as after any other failure.
    async fn run_warm(
        mut self,
        session: &mut WarmSession,
        reused: bool,
        output: &str,
    ) -> Option<(Ending, Observed)> {
        let note = match reused {
            true => format!(
                "kiln: rendering in warm blender session {} ({} frames rendered before)",
                session.id(),
                session.frames_rendered()
            ),
            false => format!(
                "kiln: rendering in new warm blender session {}",
                session.id()
            ),
        };
        tracing::info!(session = session.id(), reused, "rendering warm");
        self.observed.tail.push(&note);
        let deadline = run_deadline(self.assignment.max_run_seconds);
        tokio::pin!(deadline);
        let mut stall = StallTimer::new(self.assignment.stall_seconds);
        let mut ending = Ending::WarmDone;
        'frames: for &frame in &self.assignment.frames {
            if let Err(error) = session.request(frame, output).await {
                ending = Ending::WarmFailed(format!(
                    "warm blender session {} stopped before frame {frame}: {error}",
                    session.id()
                ));
                break;
            }
            loop {
                tokio::select! {
                    biased;
                    _ = self.cancel.cancelled() => return None,
                    _ = &mut deadline => {
                        ending = Ending::Killed(Limit::RunTime);
                        break 'frames;
                    }
                    _ = stall.expired() => {
                        ending = Ending::Killed(Limit::Stall);
                        break 'frames;
                    }
                    status = session.child.wait() => {
                        let status = status.map_or_else(|e| e.to_string(), |s| s.to_string());
                        ending = Ending::WarmFailed(format!("warm blender session {} ended ({status}) while rendering frame {frame}", session.id()));
                        break 'frames;
                    }
                    line = session.lines.recv() => {
                        let Some(line) = line else {
                            ending = Ending::WarmFailed(format!("warm blender session {} closed its output while rendering frame {frame}", session.id()));
                            break 'frames;
                        };
                        stall.reset();
                        match warm_session::parse_driver_line(&line) {
                            Some(DriverLine::Done { frame: done }) if done == frame => {
                                session.frame_done();
                                continue 'frames;
                            }
                            Some(DriverLine::Failed { message, .. }) => {
                                self.observed.tail.push(&line);
                                ending = Ending::WarmFailed(format!("frame {frame} failed in warm blender session {}: {message}", session.id()));
                                break 'frames;
                            }
                            _ => self.line(&line).await,
                        }
                    }
                }
            }
        }
        if !matches!(ending, Ending::WarmDone) {
            tracing::warn!(session = session.id(), "killing warm blender session");
            session.kill();
            if !self.drain(&mut session.lines).await {
                return None;
            }
        }
        self.queue_remaining_outputs().await;
        Some((ending, self.observed))
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
        self.observed.log.push(line, self.events);
        if !self.kind.is_blender() {
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
            status: String::new(),
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

fn log_outcome(outcome: TaskOutcome) -> TaskOutcome {
    match &outcome {
        TaskOutcome::Finished(result) if result.success => tracing::info!("task succeeded"),
        TaskOutcome::Finished(result) => {
            tracing::warn!(message = %result.message, "task failed")
        }
        TaskOutcome::Cancelled => tracing::info!("task cancelled"),
    }
    outcome
}

/// Writes the trusted variant driver into the task's directory, replacing
/// whatever an input placed there (inputs are hard links into the cache,
/// which must not be written through).
async fn write_variant_driver(workdir: &Path) -> Result<(), String> {
    let path = variant::driver_path(workdir);
    let cannot = |e: std::io::Error| format!("cannot write the variant driver: {e}");
    if let Some(parent) = path.parent() {
        tokio::fs::create_dir_all(parent).await.map_err(cannot)?;
    }
    match tokio::fs::remove_file(&path).await {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(cannot(e)),
    }
    tokio::fs::write(&path, variant::DRIVER)
        .await
        .map_err(cannot)
}

/// Never completes when `max_run_seconds` is 0.
async fn run_deadline(max_run_seconds: u32) {
    match max_run_seconds {
        0 => std::future::pending().await,
        limit => tokio::time::sleep(Duration::from_secs(limit.into())).await,
    }
}

fn log_reaped(status: std::io::Result<ExitStatus>) {
    if let Err(error) = status {
        tracing::warn!(%error, "cannot reap killed renderer");
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

/// Stores the attempt's log (written into `dir` first) through the asset
/// service and reports it (before the result, while the attempt is still
/// current). A log that cannot be stored is only worth a warning.
pub(crate) async fn store_log<A: AssetStore>(
    assets: &A,
    assignment: &TaskAssignment,
    dir: &Path,
    log: &TaskLog,
    events: &mpsc::Sender<WorkerMessage>,
) -> Option<OutputStored> {
    let path = dir.join("kiln-task.log");
    if let Err(error) = tokio::fs::write(&path, log.contents()).await {
        tracing::warn!(%error, "cannot write the task's log");
        return None;
    }
    let stored = match assets.upload_file(&path).await {
        Ok(stored) => stored,
        Err(error) => {
            tracing::warn!(%error, "cannot store the task's log");
            return None;
        }
    };
    let output = stored_output(
        assignment,
        format!("logs/{}.log", assignment.task_id),
        stored,
        "log",
    );
    report_output(events, &output).await;
    Some(output)
}

/// What the uploader stored, and why it stopped storing, if it did.
#[derive(Default)]
pub(crate) struct Uploaded {
    pub(crate) stored: Vec<OutputStored>,
    pub(crate) failed: Option<String>,
}

/// Uploads queued outputs one by one, telling the scheduler about each.
/// After a failure the rest of the queue is drained without uploading,
/// since the task has failed anyway.
pub(crate) async fn upload_outputs<A: AssetStore>(
    assets: &A,
    mut queued: mpsc::Receiver<PathBuf>,
    outputs_dir: &Path,
    assignment: &TaskAssignment,
    events: &mpsc::Sender<WorkerMessage>,
    cancel: &CancellationToken,
) -> Uploaded {
    let mut uploaded = Uploaded::default();
    loop {
        let relative = tokio::select! {
            _ = cancel.cancelled() => return uploaded,
            relative = queued.recv() => match relative {
                Some(relative) => relative,
                None => return uploaded,
            },
        };
        if uploaded.failed.is_some() {
            continue;
        }
        let upload = upload_one(assets, outputs_dir, &relative, assignment);
        let result = tokio::select! {
            _ = cancel.cancelled() => return uploaded,
            result = upload => result,
        };
        match result {
            Ok(output) => {
                report_output(events, &output).await;
                uploaded.stored.push(output);
                if thumbnails::is_frame(&relative) {
                    let thumbnail =
                        upload_thumbnail(assets, outputs_dir, &relative, assignment, events).await;
                    uploaded.stored.extend(thumbnail);
                }
            }
            Err(error) => uploaded.failed = Some(error),
        }
    }
}

async fn upload_one<A: AssetStore>(
    assets: &A,
    outputs_dir: &Path,
    relative: &Path,
    assignment: &TaskAssignment,
) -> Result<OutputStored, String> {
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
    Ok(stored_output(assignment, name, stored, ""))
}

/// What the scheduler records of a file this attempt stored.
fn stored_output(
    assignment: &TaskAssignment,
    path: String,
    stored: StoredAsset,
    kind: impl Into<String>,
) -> OutputStored {
    OutputStored {
        task_id: assignment.task_id.clone(),
        attempt: assignment.attempt,
        path,
        digest: stored.digest,
        size: stored.size,
        kind: kind.into(),
    }
}

/// Tells the scheduler at once that an output is stored, so watchers see it.
async fn report_output(events: &mpsc::Sender<WorkerMessage>, output: &OutputStored) {
    let _ = events
        .send(message(worker_message::Message::Output(output.clone())))
        .await;
}

/// Makes, stores and reports a frame's thumbnail; a frame without one is
/// only worth a warning.
async fn upload_thumbnail<A: AssetStore>(
    assets: &A,
    outputs_dir: &Path,
    relative: &Path,
    assignment: &TaskAssignment,
    events: &mpsc::Sender<WorkerMessage>,
) -> Option<OutputStored> {
    let name = outputs::display_path(relative);
    let dest = thumbnails::path_for(outputs_dir, relative);
    if let Err(error) = thumbnails::make(outputs_dir.join(relative), dest.clone()).await {
        tracing::warn!(path = %name, %error, "cannot make a thumbnail");
        return None;
    }
    let stored = match assets.upload_file(&dest).await {
        Ok(stored) => stored,
        Err(error) => {
            tracing::warn!(path = %name, %error, "cannot store a thumbnail");
            return None;
        }
    };
    let output = stored_output(
        assignment,
        format!("thumbnails/{name}"),
        stored,
        "thumbnail",
    );
    report_output(events, &output).await;
    Some(output)
}

/// Decides success and the one-line reason for failure.
fn verdict(
    assignment: &TaskAssignment,
    kind: RendererKind,
    ending: Ending,
    observed: Observed,
    uploaded: Uploaded,
) -> TaskResult {
    let name = kind.name();
    let log_tail = observed.tail.text();
    let last_error = observed
        .tracker
        .last_error()
        .or(observed.tail.last())
        .unwrap_or("no output");
    let (exit_code, problem) = match ending {
        Ending::Exited(Err(error)) => {
            return failure(
                assignment,
                None,
                format!("cannot wait for {name}: {error}"),
                log_tail,
            );
        }
        Ending::Exited(Ok(status)) => match status.code() {
            Some(0) => (Some(0), None),
            Some(code) => (
                Some(code),
                Some(format!("{name} exited with status {code}: {last_error}")),
            ),
            None => (
                None,
                Some(format!("{name} was killed by a signal ({status})")),
            ),
        },
        Ending::Killed(limit) => (None, Some(limit_message(assignment, limit))),
        Ending::WarmDone => (None, None),
        Ending::WarmFailed(message) => (None, Some(message)),
    };
    let problem = problem.or_else(|| {
        let missing = kind.is_blender()
            && !observed
                .tracker
                .missing_frames(&assignment.frames)
                .is_empty();
        missing.then(|| missing_frames_message(&observed.tracker, &assignment.frames))
    });
    match problem.or(observed.problem).or(uploaded.failed) {
        Some(problem) => failure(assignment, exit_code, problem, log_tail),
        None => TaskResult {
            task_id: assignment.task_id.clone(),
            attempt: assignment.attempt,
            success: true,
            exit_code,
            message: String::new(),
            log_tail,
            outputs: uploaded.stored,
        },
    }
}

fn limit_message(assignment: &TaskAssignment, limit: Limit) -> String {
    match limit {
        Limit::RunTime => format!(
            "exceeded maximum run time of {} s",
            assignment.max_run_seconds
        ),
        Limit::Stall => format!("stalled: no output for {} s", assignment.stall_seconds),
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

pub(crate) fn failure(
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
        outputs: Vec::new(),
    }
}

pub(crate) fn message(message: worker_message::Message) -> WorkerMessage {
    WorkerMessage {
        message: Some(message),
    }
}
