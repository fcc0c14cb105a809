//! The collect stage, on the line side: every line of the action goes to
//! the log tail, the stored log and the live log; Blender's lines say which
//! frames it saved (queued for upload at once) and how far it got; OpenJD
//! stdout messages give the status line, the failure message and progress.
//! When the action ends, every output not yet queued is queued.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use kiln_proto::v1::{TaskAssignment, TaskProgressReport, WorkerMessage, worker_message};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::blender_output::RenderTracker;
use crate::command::CommandKind;
use crate::log_tail::LogTail;
use crate::openjd_messages::{self, Message};
use crate::outputs::{self};
use crate::task::message;
use crate::task::supervise::LineSink;
use crate::task_log::TaskLog;
use crate::workdir::OUTPUTS_DIR;

/// Shortest time between two progress reports of one task.
const PROGRESS_INTERVAL: Duration = Duration::from_millis(500);

/// Everything learned from the action's output.
pub struct Observed {
    pub tracker: RenderTracker,
    pub tail: LogTail,
    /// The whole log (up to its cap), streamed live as it grows.
    pub log: TaskLog,
    /// The last `openjd_status:` line.
    pub status: Option<String>,
    /// The last `openjd_fail:` message.
    pub fail: Option<String>,
    /// Why the task fails even if the action succeeds.
    pub problem: Option<String>,
}

/// Follows one action's output for one task.
pub struct Collector<'a> {
    assignment: &'a TaskAssignment,
    kind: CommandKind,
    /// Where relative output paths resolve, and the outputs directory.
    workdir: PathBuf,
    outputs: PathBuf,
    /// Inputs placed under `outputs/`, which are not outputs.
    input_outputs: HashSet<PathBuf>,
    /// Outputs to upload, relative to the outputs directory.
    queue: mpsc::Sender<PathBuf>,
    queued: HashSet<PathBuf>,
    events: &'a mpsc::Sender<WorkerMessage>,
    last_progress: Option<Instant>,
    observed: Observed,
}

impl<'a> Collector<'a> {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        assignment: &'a TaskAssignment,
        kind: CommandKind,
        workdir: &Path,
        outputs: &Path,
        input_outputs: HashSet<PathBuf>,
        queue: mpsc::Sender<PathBuf>,
        events: &'a mpsc::Sender<WorkerMessage>,
        (tail_lines, log_max_bytes): (usize, usize),
    ) -> Self {
        Self {
            assignment,
            kind,
            workdir: workdir.to_path_buf(),
            outputs: outputs.to_path_buf(),
            input_outputs,
            queue,
            queued: HashSet::new(),
            events,
            last_progress: None,
            observed: Observed {
                tracker: RenderTracker::default(),
                tail: LogTail::new(tail_lines),
                log: TaskLog::new(assignment, log_max_bytes),
                status: None,
                fail: None,
                problem: None,
            },
        }
    }

    /// Queues every output not queued yet; what was seen, once the action ended.
    pub async fn finish(mut self) -> Observed {
        match outputs::list_files(&self.outputs).await {
            Ok(found) => {
                for relative in found {
                    if !self.input_outputs.contains(&relative) {
                        self.queue(relative).await;
                    }
                }
            }
            Err(error) => {
                self.observed
                    .problem
                    .get_or_insert_with(|| error.to_string());
            }
        }
        self.observed.log.flush(self.events);
        self.observed
    }

    fn message(&mut self, message: Message) {
        match message {
            // The parser bounds both texts.
            Message::Status(status) => self.observed.status = Some(status),
            Message::Fail(fail) => self.observed.fail = Some(fail),
            Message::Progress(fraction) if !self.kind.is_blender() => {
                self.report_progress(fraction, None)
            }
            Message::Malformed(problem) => {
                tracing::debug!(task_id = %self.assignment.task_id, problem, "malformed stdout message")
            }
            // Environment changes concern OpenJD sessions, which keep their
            // own environment between actions.
            _ => {}
        }
    }

    async fn queue_saved(&mut self, saved: &Path) {
        let absolute = self.workdir.join(saved);
        match outputs::relative_to(&absolute, &self.outputs) {
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

    fn report_progress(&mut self, fraction: f32, frame: Option<i64>) {
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
            fraction,
            frame,
            status: self.observed.status.clone().unwrap_or_default(),
        };
        // Progress may be dropped when the stream is busy; the next report supersedes it.
        let _ = self
            .events
            .try_send(message(worker_message::Message::Progress(report)));
    }
}

impl LineSink for Collector<'_> {
    async fn line(&mut self, line: String) {
        tracing::trace!(line, "task output");
        self.observed.tail.push(&line);
        self.observed.log.push(&line, self.events);
        if let Some(message) = openjd_messages::parse(&line) {
            self.message(message);
            return;
        }
        if !self.kind.is_blender() {
            return;
        }
        if let Some(saved) = self.observed.tracker.observe(&line) {
            self.queue_saved(&saved).await;
        }
        if let Some(frame) = self.observed.tracker.current_frame() {
            let fraction = self.observed.tracker.fraction(&self.assignment.frames);
            self.report_progress(fraction, Some(frame));
        }
    }
}
