//! Runs one task assignment from start to result, in five stages:
//!
//! 1. **prepare** (`prepare.rs`): the render device, the inputs in a fresh
//!    working directory, the command line;
//! 2. **run** (`run.rs`, `run_warm.rs`): an [`Action`](run::Action) in a
//!    sandbox: one process, or frames fed to a warm Blender;
//! 3. **supervise** (`supervise.rs`): deadline, stall, cancel and the
//!    sandbox's limits, the same for every action (an OpenJD session's
//!    actions, `session_action.rs`, go through it too);
//! 4. **collect** (`collect.rs`, `upload.rs`): lines, progress, status,
//!    outputs uploaded as they appear, thumbnails, the log;
//! 5. **verdict** (`verdict.rs`): success, or the one line saying why not.

pub mod collect;
pub mod prepare;
pub mod run;
pub mod run_warm;
pub mod supervise;
pub mod upload;
pub mod verdict;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use kiln_proto::v1::{TaskAssignment, TaskStarted, WorkerMessage, worker_message};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::assets::AssetStore;
use crate::command::{CommandKind, RendererPaths};
use crate::devices::Gpu;
use crate::outputs::OutputsRoot;
use crate::sandbox::{Sandbox, TaskSandbox};
use crate::session_pool::SessionPool;
use crate::session_runner::SessionRun;
use crate::task::collect::Collector;
use crate::task::prepare::Prepared;
use crate::task::run::{Action, ActionEnd, OutputPlace, ProcessAction};
use crate::task::run_warm::WarmAction;
use crate::task::supervise::{Rules, Supervised};
use crate::task::upload::UploadPlan;
use crate::task::verdict::{Ending, Facts, failure};
use crate::warm_plan::{self, WarmPlan};
use crate::warm_pool::{WarmPool, WarmSettings};
use crate::warm_session::WarmSession;
use crate::workdir::{self, InputCache, TaskDir};

pub use kiln_proto::v1::TaskResult;

/// Output files waiting for upload while the action keeps going.
const UPLOAD_QUEUE: usize = 64;
/// The worker's own per-attempt directories (thumbnails, the log), inside
/// the work dir and never shown to a sandbox.
const PRIVATE_DIR: &str = ".private";

/// How the task runner behaves on this worker.
#[derive(Debug, Clone)]
pub struct RunnerSettings {
    /// Parent of every task's working directory.
    pub work_dir: PathBuf,
    pub renderers: RendererPaths,
    pub log_tail_lines: usize,
    /// Cap of each attempt's stored log, in bytes.
    pub log_max_bytes: usize,
    pub keep_work_dirs: bool,
    pub warm: WarmSettings,
    /// GPUs Cycles may render on; empty renders every frame on the CPU.
    pub gpus: Vec<Gpu>,
    /// Where every process of a task runs.
    pub sandbox: Sandbox,
    /// How long an OpenJD session (its environments entered) waits for its
    /// job's next task before it ends.
    pub session_idle_timeout: std::time::Duration,
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

/// Whether an action could start.
enum Start {
    Action(Box<dyn Action>),
    Cancelled,
    Failed(String),
}

impl<A: AssetStore> TaskRunner<A> {
    /// Must be called within a Tokio runtime when warm sessions are enabled.
    pub fn new(settings: RunnerSettings, cache: InputCache, assets: A) -> Self {
        let warm = (settings.warm.enabled && settings.renderers.blender.is_some())
            .then(|| WarmPool::new(settings.warm.clone(), &settings.work_dir));
        let sessions = SessionPool::new(
            &settings.work_dir,
            &settings.work_dir.join(PRIVATE_DIR),
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
    /// `OutputStored` messages to `events`. Cancelling `cancel` kills every
    /// process of the task and ends with [`TaskOutcome::Cancelled`].
    pub async fn run(
        &self,
        assignment: &TaskAssignment,
        events: &mpsc::Sender<WorkerMessage>,
        cancel: &CancellationToken,
    ) -> TaskOutcome {
        self.run_releasing(assignment, events, cancel, || {}).await
    }

    /// [`TaskRunner::run`], calling `release` once the task's processes have
    /// ended (its warm session handed back), before its last uploads, its log
    /// and its result: from then on it needs no slot, and the worker can
    /// start its next task while this one finishes.
    pub async fn run_releasing(
        &self,
        assignment: &TaskAssignment,
        events: &mpsc::Sender<WorkerMessage>,
        cancel: &CancellationToken,
        release: impl FnOnce() + Send,
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
                    sandbox: &self.settings.sandbox,
                    log_tail_lines: self.settings.log_tail_lines,
                    log_max_bytes: self.settings.log_max_bytes,
                };
                let outcome = session.run(assignment, events, cancel).await;
                match &outcome {
                    TaskOutcome::Finished(result) if result.success => {
                        tracing::info!("task succeeded")
                    }
                    TaskOutcome::Finished(result) => {
                        tracing::warn!(message = %result.message, "task failed")
                    }
                    TaskOutcome::Cancelled => tracing::info!("task cancelled"),
                }
                return outcome;
            }
            let work_dir = &self.settings.work_dir;
            let created = async {
                let dir =
                    TaskDir::create(work_dir, &assignment.task_id, assignment.attempt).await?;
                let scratch = TaskDir::create(
                    &work_dir.join(PRIVATE_DIR),
                    &assignment.task_id,
                    assignment.attempt,
                )
                .await;
                match scratch {
                    Ok(scratch) => Ok((dir, scratch)),
                    Err(error) => {
                        dir.remove().await;
                        Err(error)
                    }
                }
            };
            let (dir, scratch) = match created.await {
                Ok(dirs) => dirs,
                Err(error) => {
                    return TaskOutcome::Finished(failure(
                        assignment,
                        None,
                        error.to_string(),
                        String::new(),
                    ));
                }
            };
            let outcome = self
                .run_in(assignment, &dir, scratch.path(), events, cancel, release)
                .await;
            scratch.remove().await;
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

    /// Fetches the assignment's inputs into the input cache, so a task held
    /// queued starts without waiting for its downloads. Failures are only
    /// logged: the task fetches again when it starts, and fails there.
    pub async fn prefetch(&self, assignment: &TaskAssignment) {
        for input in &assignment.inputs {
            if let Err(error) = self
                .cache
                .prefetch(&self.assets, &input.digest, &input.path)
                .await
            {
                tracing::info!(task_id = %assignment.task_id, path = %input.path, %error, "prefetching an input failed; the task fetches it when it starts");
            }
        }
    }

    async fn run_in(
        &self,
        assignment: &TaskAssignment,
        dir: &TaskDir,
        scratch: &Path,
        events: &mpsc::Sender<WorkerMessage>,
        cancel: &CancellationToken,
        release: impl FnOnce() + Send,
    ) -> TaskOutcome {
        let (assignment, device) = prepare::choose_device(assignment, &self.settings.gpus);
        let prepare = prepare::prepare(
            &assignment,
            dir,
            &self.settings.renderers,
            &self.cache,
            &self.assets,
        );
        let prepared = tokio::select! {
            _ = cancel.cancelled() => return TaskOutcome::Cancelled,
            prepared = prepare => prepared,
        };
        let prepared = match prepared {
            Ok(prepared) => prepared,
            Err(message) => {
                return TaskOutcome::Finished(failure(&assignment, None, message, String::new()));
            }
        };
        let mut action = match self.start(&assignment, &prepared, dir, cancel).await {
            Start::Action(action) => action,
            Start::Cancelled => return TaskOutcome::Cancelled,
            Start::Failed(message) => {
                return TaskOutcome::Finished(failure(&assignment, None, message, String::new()));
            }
        };
        let started = TaskStarted {
            task_id: assignment.task_id.clone(),
            attempt: assignment.attempt,
        };
        let _ = events
            .send(message(worker_message::Message::Started(started)))
            .await;

        let limits = self.settings.sandbox.limits();
        let place = action.outputs();
        // `kept` holds a warm task's output directory until its uploads are
        // done, after the action that made it is gone (below).
        let (workdir, outputs, _kept) = (
            place.workdir.clone(),
            place.outputs.clone(),
            place.kept.clone(),
        );
        let (queue, queued) = mpsc::channel(UPLOAD_QUEUE);
        let plan = UploadPlan {
            outputs: outputs.clone(),
            scratch,
            output_limit: limits.output_bytes,
        };
        let uploads =
            upload::upload_outputs(&self.assets, queued, plan, &assignment, events, cancel);
        let kind = prepared.invocation.kind;
        let mut collector = Collector::new(
            &assignment,
            kind,
            &workdir,
            outputs.path(),
            prepared.input_outputs,
            queue,
            events,
            (self.settings.log_tail_lines, self.settings.log_max_bytes),
        );
        let rules = Rules {
            timeout: None,
            max_run_seconds: assignment.max_run_seconds,
            stall_seconds: assignment.stall_seconds,
        };
        let supervising = async move {
            let supervised =
                supervise::supervise(action.as_mut(), rules, cancel, &mut collector).await;
            let observed = collector.finish().await;
            let ending = match supervised {
                Supervised::Cancelled => None,
                _ if cancel.is_cancelled() => None,
                Supervised::Ended(end) => Some(Ending::Ended(end)),
                Supervised::Killed(limit) => Some(Ending::Killed(limit)),
            };
            // The action is over. What the verdict needs of its sandbox is
            // read now; then a warm session goes back to the pool and the
            // slot frees, so the next task renders while this one's last
            // uploads, its log and its result finish. With one frame a task
            // that tail was most of the cost of a frame.
            let sandbox = action.sandbox();
            let kernel_hit = sandbox.and_then(TaskSandbox::kernel_hit);
            let rlimited_memory = sandbox
                .filter(|s| s.rlimited())
                .map(|s| s.limits().memory_bytes);
            action.finish(matches!(ending, Some(Ending::Ended(ActionEnd::Done))));
            // Its sandbox goes with it (the cgroup removed, the uid back in
            // the pool): a released task holds nothing a new one needs.
            drop(action);
            release();
            (ending, observed, kernel_hit, rlimited_memory)
        };
        let ((ending, observed, kernel_hit, rlimited_memory), mut uploaded) =
            tokio::join!(supervising, uploads);
        let Some(ending) = ending else {
            return TaskOutcome::Cancelled;
        };
        let log = upload::store_log(&self.assets, &assignment, scratch, &observed.log, events);
        uploaded.stored.extend(log.await);
        let result = verdict::verdict(Facts {
            assignment: &assignment,
            name: &prepared.invocation.name,
            blender: kind.is_blender(),
            ending,
            kernel_hit,
            rlimited_memory,
            disk_limit: limits.disk_bytes,
            tracker: &observed.tracker,
            log_tail: observed.tail.text(),
            last_line: observed.tail.last(),
            fail: observed.fail.clone(),
            status: observed.status.clone(),
            problem: observed.problem.clone(),
            upload_failed: uploaded.failed,
            stored: uploaded.stored,
            device,
        });
        TaskOutcome::Finished(result)
    }

    /// Starts the task's action: a warm Blender session when the task can
    /// render warm, else its command in a sandbox of its own.
    async fn start(
        &self,
        assignment: &TaskAssignment,
        prepared: &Prepared,
        dir: &TaskDir,
        cancel: &CancellationToken,
    ) -> Start {
        let invocation = &prepared.invocation;
        if invocation.kind == CommandKind::Blender
            && let Some((pool, plan)) = self.warm_plan(assignment)
        {
            let session = tokio::select! {
                _ = cancel.cancelled() => return Start::Cancelled,
                session = self.warm_session(&pool, &plan) => session,
            };
            return match session {
                Ok((session, reused)) => {
                    match WarmAction::new(pool, session, reused, &plan.output, plan.frames) {
                        Ok(action) => Start::Action(Box::new(action)),
                        Err(error) => Start::Failed(error.to_string()),
                    }
                }
                Err(message) => Start::Failed(message),
            };
        }
        let name = format!("task-{}-{}", assignment.task_id, assignment.attempt);
        let sandbox = match self
            .settings
            .sandbox
            .enter(&name, dir.path(), assignment.allow_network)
        {
            Ok(sandbox) => sandbox,
            Err(error) => return Start::Failed(error.to_string()),
        };
        if let Err(error) = sandbox.hand_over(dir.path()) {
            return Start::Failed(error.to_string());
        }
        let outputs = match OutputsRoot::open(dir.outputs()) {
            Ok(outputs) => Arc::new(outputs),
            Err(error) => return Start::Failed(format!("cannot open outputs/: {error}")),
        };
        let place = OutputPlace {
            workdir: dir.path().to_path_buf(),
            outputs,
            kept: None,
        };
        match ProcessAction::start(sandbox, &invocation.program, &invocation.args, &[], place) {
            Ok(action) => {
                tracing::info!(program = ?invocation.program, args = ?invocation.args, "task process started");
                Start::Action(Box::new(action))
            }
            Err(error) => Start::Failed(format!("cannot start {}: {error}", invocation.name)),
        }
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
        // The session's directory stays the worker's; Blender writes only
        // the output directory each task gets (`WarmSession::fresh_outputs`).
        let sandbox = match self
            .settings
            .sandbox
            .enter(&format!("warm-{id}"), &path, false)
        {
            Ok(sandbox) => sandbox,
            Err(error) => {
                dir.remove().await;
                return Err(error.to_string());
            }
        };
        match WarmSession::start(id, plan.key.clone(), path, blender, sandbox).await {
            Ok(session) => Ok((session, false)),
            Err(error) => {
                dir.remove().await;
                Err(format!("cannot start a warm blender session: {error}"))
            }
        }
    }
}

pub(crate) fn message(message: worker_message::Message) -> WorkerMessage {
    WorkerMessage {
        message: Some(message),
    }
}
