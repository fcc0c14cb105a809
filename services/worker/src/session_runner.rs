//! Runs a task of a step that runs as written (the OpenJD session model):
//! its job's session on this worker (kept from the job's previous task, or
//! new), the inputs placed in it, the environments entered, the task's
//! `onRun`, then the files its OUT directories (and `outputs/`) gained,
//! uploaded, and the verdict.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use kiln_jobmodel::SessionStep;
use kiln_proto::v1::{
    TaskAssignment, TaskProgressReport, TaskResult, TaskStarted, WorkerMessage, worker_message,
};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::assets::AssetStore;
use crate::input_cache::InputCache;
use crate::log_tail::LogTail;
use crate::openjd_messages::Message;
use crate::openjd_session::{ActionWatcher, OpenJdSession, Ran};
use crate::outputs;
use crate::sandbox::{Sandbox, TaskSandbox};
use crate::session_action::ActionEnd;
use crate::session_pool::SessionPool;
use crate::task::supervise::Rules;
use crate::task::upload::{self, UploadPlan, Uploaded};
use crate::task::verdict::{broken_limit, failure, memory_hint};
use crate::task::{self as task_runner, TaskOutcome};
use crate::task_log::TaskLog;
use crate::workdir::{self, OUTPUTS_DIR};

/// Shortest time between two progress reports of one task.
const PROGRESS_INTERVAL: Duration = Duration::from_millis(500);
/// Output files waiting for upload.
const UPLOAD_QUEUE: usize = 64;

/// What a session task needs of its runner.
pub struct SessionRun<'a, A> {
    pub cache: &'a InputCache,
    pub assets: &'a A,
    pub pool: &'a SessionPool,
    pub sandbox: &'a Sandbox,
    pub log_tail_lines: usize,
    pub log_max_bytes: usize,
}

impl<A: AssetStore> SessionRun<'_, A> {
    pub async fn run(
        &self,
        assignment: &TaskAssignment,
        events: &mpsc::Sender<WorkerMessage>,
        cancel: &CancellationToken,
    ) -> TaskOutcome {
        let fail = |message: String| {
            TaskOutcome::Finished(failure(assignment, None, message, String::new()))
        };
        let step = match SessionStep::from_json(&assignment.session_step) {
            Ok(step) => step,
            Err(error) => return fail(error),
        };
        let task_symbols = match kiln_jobmodel::task_symbols_from_json(&assignment.task_symbols) {
            Ok(symbols) => symbols,
            Err(error) => return fail(error),
        };
        let mut session = match self.pool.take(&assignment.job_id) {
            Some(session) => {
                tracing::info!(
                    session = session.id(),
                    environments = session.environments_entered(),
                    "reusing openjd session"
                );
                session
            }
            None => {
                let (id, dir) = self.pool.new_session_dir();
                let created = OpenJdSession::create(
                    id,
                    &assignment.job_id,
                    dir,
                    &step,
                    self.sandbox,
                    assignment.allow_network,
                );
                match created.await {
                    Ok(session) => session,
                    Err(error) => return fail(error),
                }
            }
        };
        let placed = tokio::select! {
            _ = cancel.cancelled() => None,
            placed = self.place_inputs(assignment, &step, &mut session) => Some(placed),
        };
        match placed {
            None => {
                self.pool.end(session);
                return TaskOutcome::Cancelled;
            }
            Some(Err(error)) => {
                self.pool.end(session);
                return fail(error);
            }
            Some(Ok(())) => {}
        }
        let started = TaskStarted {
            task_id: assignment.task_id.clone(),
            attempt: assignment.attempt,
        };
        let _ = events
            .send(task_runner::message(worker_message::Message::Started(
                started,
            )))
            .await;
        if let Err(error) = create_output_dirs(&step, &session).await {
            self.pool.end(session);
            return fail(error);
        }
        let collected = collected_paths(&step, &session);
        let before = snapshot(session.dir(), &collected).await;
        let rules = Rules {
            timeout: None,
            max_run_seconds: assignment.max_run_seconds,
            stall_seconds: assignment.stall_seconds,
        };
        let mut watch = Watch {
            assignment,
            events,
            tail: LogTail::new(self.log_tail_lines),
            log: TaskLog::new(assignment, self.log_max_bytes),
            last_progress: None,
            fraction: 0.0,
            status: None,
        };
        let mut ran = session
            .prepare_environments(&step, rules, cancel, &mut watch)
            .await;
        let entered = ran.problem("").is_none();
        if entered {
            ran = session
                .run_task(&step, &task_symbols, rules, cancel, &mut watch)
                .await;
        }
        if cancel.is_cancelled() {
            self.pool.end(session);
            return TaskOutcome::Cancelled;
        }
        let (uploaded, problem) = self
            .upload_changes(assignment, &session, &collected, &before, events, cancel)
            .await;
        watch.report_progress(true);
        watch.log.flush(events);
        let log = upload::store_log(
            self.assets,
            assignment,
            session.scratch(),
            &watch.log,
            events,
        )
        .await;
        let log_tail = watch.tail.text();
        let what = if entered {
            "the task"
        } else {
            "an environment"
        };
        let failed = action_problem(&ran, what, session.sandbox(), &log_tail);
        let result = verdict(
            assignment,
            failed,
            exit_code(&ran),
            log_tail,
            uploaded,
            problem,
            log,
            watch.status.clone(),
        );
        match result.success {
            true => self.pool.put_back(session),
            // A failed task may have left the session in any state.
            false => self.pool.end(session),
        }
        TaskOutcome::Finished(result)
    }

    /// Places the inputs the session does not have yet. Inputs inside the
    /// places a task writes (OUT directories, `outputs/`) are copies, so a
    /// task cannot write through to the cache.
    async fn place_inputs(
        &self,
        assignment: &TaskAssignment,
        step: &SessionStep,
        session: &mut OpenJdSession,
    ) -> Result<(), String> {
        let writable: Vec<PathBuf> = collected_paths(step, session);
        for input in &assignment.inputs {
            let relative = workdir::relative_input_path(&input.path).map_err(|e| e.to_string())?;
            if session.has_input(&relative, &input.digest) {
                continue;
            }
            let copy = writable.iter().any(|w| relative.starts_with(w));
            self.cache
                .place_in(self.assets, &input.digest, &relative, session.dir(), copy)
                .await
                .map_err(|e| e.to_string())?;
            session.placed_input(relative, &input.digest);
        }
        Ok(())
    }

    /// Uploads every file the task added or changed in the collected places.
    async fn upload_changes(
        &self,
        assignment: &TaskAssignment,
        session: &OpenJdSession,
        collected: &[PathBuf],
        before: &HashMap<PathBuf, Stamp>,
        events: &mpsc::Sender<WorkerMessage>,
        cancel: &CancellationToken,
    ) -> (Uploaded, Option<String>) {
        let after = snapshot(session.dir(), collected).await;
        let mut changed: Vec<PathBuf> = after
            .iter()
            .filter(|(path, stamp)| before.get(*path) != Some(stamp))
            .map(|(path, _)| path.clone())
            .collect();
        changed.sort();
        let too_many = changed.len() > outputs::MAX_OUTPUT_FILES;
        changed.truncate(outputs::MAX_OUTPUT_FILES);
        let (queue, queued) = mpsc::channel(UPLOAD_QUEUE);
        let feed = async move {
            for path in changed {
                if queue.send(path).await.is_err() {
                    return;
                }
            }
        };
        let root = match crate::outputs::OutputsRoot::open(session.dir()) {
            Ok(root) => std::sync::Arc::new(root),
            Err(error) => {
                let failed = Uploaded {
                    failed: Some(format!("cannot open the session directory: {error}")),
                    ..Uploaded::default()
                };
                return (failed, None);
            }
        };
        let plan = UploadPlan {
            outputs: root,
            scratch: session.scratch(),
            output_limit: self.sandbox.limits().output_bytes,
        };
        let upload = upload::upload_outputs(self.assets, queued, plan, assignment, events, cancel);
        let ((), uploaded) = tokio::join!(feed, upload);
        let problem = too_many.then(|| {
            format!(
                "the task left more than {} new files in its outputs",
                outputs::MAX_OUTPUT_FILES
            )
        });
        (uploaded, problem)
    }
}

/// The places whose files are outputs, relative to the session's
/// directory: the OUT directories (or files) of the job's PATH parameters
/// that map inside the session, and `outputs/`.
fn collected_paths(step: &SessionStep, session: &OpenJdSession) -> Vec<PathBuf> {
    let mut places: Vec<PathBuf> = vec![PathBuf::from(OUTPUTS_DIR)];
    for output in &step.outputs {
        let mapped = session.mapping().map(&output.path);
        match outputs::relative_to(Path::new(&mapped), session.dir()) {
            Some(relative) => places.push(relative),
            None => {
                tracing::warn!(path = %mapped, "output path outside the session; not collected")
            }
        }
    }
    places.sort();
    places.dedup();
    // A place inside another is already collected with it.
    let all = places.clone();
    places.retain(|p| !all.iter().any(|other| other != p && p.starts_with(other)));
    places
}

/// Creates the OUT directories (and OUT files' directories) inside the
/// session, as a task expects to find them.
async fn create_output_dirs(step: &SessionStep, session: &OpenJdSession) -> Result<(), String> {
    // Kiln's own place for outputs, as in a Kiln command line's working directory.
    let outputs = session.dir().join(OUTPUTS_DIR);
    tokio::fs::create_dir_all(&outputs)
        .await
        .map_err(|e| format!("cannot create output directory {}: {e}", outputs.display()))?;
    for output in &step.outputs {
        let mapped = PathBuf::from(session.mapping().map(&output.path));
        let dir = match output.directory {
            true => mapped.as_path(),
            false => mapped.parent().unwrap_or(session.dir()),
        };
        if outputs::relative_to(dir, session.dir()).is_none() {
            continue;
        }
        tokio::fs::create_dir_all(dir)
            .await
            .map_err(|e| format!("cannot create output directory {}: {e}", dir.display()))?;
    }
    Ok(())
}

/// What a file looked like: a file that keeps its size and modification
/// time across the task was not written by it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stamp {
    size: u64,
    modified: Option<SystemTime>,
}

/// Every regular file in the collected places, relative to `dir`.
async fn snapshot(dir: &Path, places: &[PathBuf]) -> HashMap<PathBuf, Stamp> {
    let mut files = HashMap::new();
    for place in places {
        let root = dir.join(place);
        let Ok(meta) = tokio::fs::symlink_metadata(&root).await else {
            continue;
        };
        let found: Vec<PathBuf> = if meta.is_file() {
            vec![place.clone()]
        } else if meta.is_dir() {
            match outputs::list_files(&root).await {
                Ok(found) => found.into_iter().map(|f| place.join(f)).collect(),
                Err(error) => {
                    tracing::warn!(path = %root.display(), %error, "cannot list outputs");
                    Vec::new()
                }
            }
        } else {
            Vec::new()
        };
        for relative in found {
            if let Ok(meta) = tokio::fs::symlink_metadata(dir.join(&relative)).await {
                files.insert(
                    relative,
                    Stamp {
                        size: meta.len(),
                        modified: meta.modified().ok(),
                    },
                );
            }
        }
    }
    files
}

/// Following a session task: its lines to the log, its messages to the
/// task's progress, status and failure message.
struct Watch<'a> {
    assignment: &'a TaskAssignment,
    events: &'a mpsc::Sender<WorkerMessage>,
    tail: LogTail,
    log: TaskLog,
    last_progress: Option<Instant>,
    fraction: f32,
    status: Option<String>,
}

impl Watch<'_> {
    /// Sends the latest progress and status, at most every
    /// [`PROGRESS_INTERVAL`] unless `now`.
    fn report_progress(&mut self, now: bool) {
        let at = Instant::now();
        if !now
            && self
                .last_progress
                .is_some_and(|last| at.duration_since(last) < PROGRESS_INTERVAL)
        {
            return;
        }
        self.last_progress = Some(at);
        let report = TaskProgressReport {
            task_id: self.assignment.task_id.clone(),
            attempt: self.assignment.attempt,
            fraction: self.fraction,
            frame: None,
            status: self.status.clone().unwrap_or_default(),
        };
        // Progress may be dropped when the stream is busy; the next report supersedes it.
        let _ = self
            .events
            .try_send(task_runner::message(worker_message::Message::Progress(
                report,
            )));
    }
}

impl ActionWatcher for Watch<'_> {
    fn line(&mut self, line: &str) {
        self.tail.push(line);
        self.log.push(line, self.events);
    }

    fn message(&mut self, message: &Message) {
        match message {
            Message::Progress(fraction) => {
                self.fraction = *fraction;
                self.report_progress(false);
            }
            Message::Status(status) => {
                self.status = Some(status.clone());
                self.report_progress(true);
            }
            Message::Malformed(problem) => self.log.push(&format!("kiln: {problem}"), self.events),
            Message::Fail(_) | Message::SetEnv { .. } | Message::UnsetEnv(_) => {}
        }
    }
}

/// Why the last action failed (`what` it was: the task, an environment),
/// naming the sandbox limit when one explains it, as for Kiln's own
/// commands; `None` when it succeeded.
fn action_problem(ran: &Ran, what: &str, sandbox: &TaskSandbox, log_tail: &str) -> Option<String> {
    let problem = ran.problem(what)?;
    let ActionEnd::Exited(status) = &ran.end else {
        return Some(problem);
    };
    let limits = sandbox.limits();
    if let Some(limit) = broken_limit(*status, sandbox.kernel_hit(), limits.disk_bytes) {
        return Some(limit);
    }
    let rlimited_memory = sandbox.rlimited().then_some(limits.memory_bytes);
    Some(format!(
        "{problem}{}",
        memory_hint(rlimited_memory, log_tail)
    ))
}

fn exit_code(ran: &Ran) -> Option<i32> {
    match &ran.end {
        ActionEnd::Exited(status) => status.code(),
        _ => None,
    }
}

/// Success when the environments were entered (`action_failed` is then
/// `None`), the task's action exited 0 and every output was stored;
/// otherwise the first reason, the action's own first.
#[allow(clippy::too_many_arguments)]
fn verdict(
    assignment: &TaskAssignment,
    action_failed: Option<String>,
    exit_code: Option<i32>,
    log_tail: String,
    uploaded: Uploaded,
    problem: Option<String>,
    log: Option<kiln_proto::v1::OutputStored>,
    status: Option<String>,
) -> TaskResult {
    let failed = action_failed.or(problem).or(uploaded.failed);
    let mut outputs = uploaded.stored;
    outputs.extend(log);
    match failed {
        // Like a failed render's: outputs were reported one by one as stored.
        Some(message) => failure(assignment, exit_code, message, log_tail),
        None => TaskResult {
            task_id: assignment.task_id.clone(),
            attempt: assignment.attempt,
            success: true,
            exit_code,
            message: String::new(),
            log_tail,
            outputs,
            device: String::new(),
            status: status.unwrap_or_default(),
        },
    }
}
