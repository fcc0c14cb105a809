//! What workers report about their attempts: started, progress, finished.
//! A report counts only for the task's current attempt on that worker, so a
//! late report from a superseded attempt changes nothing.

use kiln_proto::v1 as pb;
use uuid::Uuid;

use crate::core::Core;
use crate::core::batch::{BlocklistWrite, OutputWrite};
use crate::core::command::AttemptReport;
use crate::core::model::Outcome;
use crate::core::output_ledger::{RecordedOutput, Recording};
use crate::task_state::TaskEvent;

impl Core {
    pub(super) fn started(&mut self, worker_id: &str, task_id: Uuid, attempt: i32) {
        if self.holds(worker_id, task_id, attempt) {
            self.transition(task_id, TaskEvent::Start, None);
        }
    }

    pub(super) fn progress(
        &mut self,
        worker_id: &str,
        task_id: Uuid,
        attempt: i32,
        fraction: f32,
        frame: Option<i64>,
        status: String,
    ) {
        if !self.holds(worker_id, task_id, attempt) {
            return;
        }
        let Some(job_id) = self.tasks.get(&task_id).map(|t| t.job_id) else {
            return;
        };
        // Progress is frequent: numbering keeps at most about one a second per task.
        let progress = pb::TaskProgress {
            task_id: task_id.to_string(),
            fraction,
            frame,
            status,
        };
        self.emit_progress(job_id, task_id, progress);
    }

    pub(super) fn finished(
        &mut self,
        worker_id: &str,
        task_id: Uuid,
        attempt: i32,
        report: AttemptReport,
    ) {
        if !self.holds(worker_id, task_id, attempt) {
            tracing::info!(task_id = %task_id, attempt, worker_id, "ignored a report for a superseded attempt");
            return;
        }
        let outcome = Outcome {
            exit_code: report.exit_code,
            message: report.message,
            log_tail: report.log_tail,
            device: Some(report.device),
            status: Some(report.status),
        };
        if report.success {
            // A success lists every output of the attempt: those whose own
            // report never arrived (lost with a connection) are recorded and
            // announced now, before the success (which applies: the attempt
            // is in flight), so a watcher that sees it knows all its files.
            let mut taken = None;
            for output in report.outputs {
                if let Err(clash) = self.record_output(task_id, output) {
                    taken = taken.or(Some(clash));
                }
            }
            match taken {
                None => {
                    self.transition(task_id, TaskEvent::Succeed, Some(&outcome));
                }
                Some(clash) => {
                    // The attempt's own log and exit code, with why it failed.
                    let outcome = Outcome {
                        message: clash.message,
                        ..outcome
                    };
                    self.fail_attempt(worker_id, task_id, &outcome);
                }
            }
            return;
        }
        self.fail_attempt(worker_id, task_id, &outcome);
    }

    /// An output reported as soon as it was stored: recorded only while its
    /// attempt is current, so a file saved by a superseded attempt is never listed.
    pub(super) fn output_stored(
        &mut self,
        worker_id: &str,
        task_id: Uuid,
        attempt: i32,
        output: pb::OutputStored,
    ) {
        if self.holds(worker_id, task_id, attempt)
            && let Err(clash) = self.record_output(task_id, output)
        {
            self.fail_attempt(worker_id, task_id, &clash);
        }
    }

    /// Records an output of a task's current attempt with its `OutputAdded`
    /// event, in one batch; a repeat of what the task recorded is neither
    /// written nor announced (`output_ledger.rs`). A path another task of
    /// the job wrote is refused, with the outcome that fails the attempt:
    /// recording it would silently replace the other task's file.
    fn record_output(&mut self, task_id: Uuid, output: pb::OutputStored) -> Result<(), Outcome> {
        if output.path.is_empty() || output.digest.is_empty() {
            return Ok(());
        }
        let Some(job_id) = self.tasks.get(&task_id).map(|t| t.job_id) else {
            return Ok(());
        };
        let size = i64::try_from(output.size).unwrap_or(i64::MAX);
        let recorded = RecordedOutput {
            digest: output.digest.clone(),
            size,
            kind: output.kind.clone(),
        };
        match self.outputs.record(job_id, task_id, &output.path, recorded) {
            Recording::News => {}
            Recording::Repeat => return Ok(()),
            Recording::Taken(other) => {
                return Err(Outcome {
                    exit_code: None,
                    message: format!(
                        "output {} was already written by task {other} of this job; two tasks may not write the same path",
                        output.path
                    ),
                    log_tail: String::new(),
                    device: None,
                    status: None,
                });
            }
        }
        self.batch.outputs.push(OutputWrite {
            job_id,
            task_id,
            path: output.path.clone(),
            digest: output.digest.clone(),
            size,
            kind: output.kind.clone(),
        });
        let added = pb::OutputAdded {
            output: Some(pb::JobOutput {
                path: output.path,
                digest: output.digest,
                size: size as u64,
                task_id: task_id.to_string(),
                kind: output.kind,
            }),
        };
        self.emit(job_id, pb::job_event::Event::OutputAdded(added));
        Ok(())
    }

    /// A failed attempt: retried after a backoff or failed for good, and
    /// counted against the worker for the blocklist.
    pub(super) fn fail_attempt(&mut self, worker_id: &str, task_id: Uuid, outcome: &Outcome) {
        let Some(task) = self.tasks.get(&task_id) else {
            return;
        };
        let (job_id, failures) = (task.job_id, task.failures as u32 + 1);
        let jitter = self.jitter();
        let (event, delay) = self.policy.on_failure(failures, jitter);
        self.count_worker_failure(job_id, worker_id);
        let retry_at = delay.map(|delay| self.now.after(delay));
        if self
            .transition_until(task_id, event, Some(outcome), retry_at.map(|at| at.wall))
            .is_none()
        {
            return;
        }
        tracing::info!(task_id = %task_id, worker_id, failures, message = %outcome.message, "task attempt failed");
        if let Some(at) = retry_at {
            self.retry_later(task_id, at.instant);
        } else if let Some(job) = self.jobs.get_mut(&job_id)
            && job.message.is_empty()
        {
            let step = self.tasks.get(&task_id).map(|t| (t.step, t.index));
            if let Some((step, index)) = step {
                job.message = format!(
                    "task {index} of step {} failed: {}",
                    job.steps[step].name, outcome.message
                );
            }
        }
    }

    fn count_worker_failure(&mut self, job_id: Uuid, worker_id: &str) {
        let Some(job) = self.jobs.get_mut(&job_id) else {
            return;
        };
        let failures = job.worker_failures.entry(worker_id.to_owned()).or_default();
        *failures += 1;
        let blocked = self.policy.blocklists(*failures);
        if blocked {
            tracing::warn!(job_id = %job_id, worker_id, failures = *failures, "worker blocklisted for the job");
        }
        self.batch.blocklist.push(BlocklistWrite::Set {
            job_id,
            worker_id: worker_id.to_owned(),
            failures: *failures as i32,
            blocked,
        });
    }
}
