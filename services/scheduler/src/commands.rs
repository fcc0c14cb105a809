//! What the dispatch core is told, and how it reacts. Each handler changes
//! memory through `Core::transition`, which queues the durable writes.

use std::cmp::Reverse;

use chrono::Utc;
use kiln_proto::v1 as pb;
use tokio::sync::oneshot;
use tokio::time::Instant;
use uuid::Uuid;

use crate::SchedulerError;
use crate::core::{
    Core, JobEntry, MAX_RUN_GRACE, Outbox, Outcome, START_TIMEOUT, TaskEntry, WorkerEntry,
};
use crate::effects::Effect;
use crate::job_state::JobState;
use crate::task_state::{TaskEvent, TaskState};
use crate::writer::{BlocklistWrite, OutputWrite};

pub type Reply = oneshot::Sender<Result<(), SchedulerError>>;

pub enum Command {
    WorkerJoined {
        worker_id: String,
        session: u64,
        capabilities: pb::WorkerCapabilities,
        outbox: Outbox,
        /// Attempts the worker says it still holds from an earlier session.
        held: Vec<(Uuid, i32)>,
    },
    WorkerLeft {
        worker_id: String,
        session: u64,
    },
    Started {
        worker_id: String,
        started: pb::TaskStarted,
    },
    Progress {
        worker_id: String,
        progress: pb::TaskProgressReport,
    },
    Finished {
        worker_id: String,
        result: pb::TaskResult,
    },
    /// A job (new, or loaded from Postgres) to schedule.
    AddJob {
        job: Box<JobEntry>,
        tasks: Vec<TaskEntry>,
        reply: Reply,
    },
    Control {
        job_id: Uuid,
        control: Control,
        reply: Reply,
    },
    /// The worker's etcd registration expired or was revoked.
    LeaseLost {
        worker_id: String,
    },
    /// An output was recorded; its event joins the job's sequence.
    OutputAdded {
        job_id: Uuid,
        added: pb::OutputAdded,
    },
    /// An assignment could not be handed to its worker.
    Undeliverable {
        worker_id: String,
        task_id: Uuid,
        attempt: i32,
    },
}

pub enum Control {
    Cancel,
    Pause,
    Resume,
    /// Reopen failed and cancelled tasks. Carries the job as Postgres has it,
    /// for a job that had already finished and left memory.
    Retry(Option<(Box<JobEntry>, Vec<TaskEntry>)>),
    SetPriority(i32),
    ClearBlocklist(Option<String>),
}

impl Core {
    pub fn handle(&mut self, command: Command) {
        match command {
            Command::WorkerJoined {
                worker_id,
                session,
                capabilities,
                outbox,
                held,
            } => self.worker_joined(worker_id, session, capabilities, outbox, held),
            Command::WorkerLeft { worker_id, session } => {
                if self
                    .workers
                    .get(&worker_id)
                    .is_some_and(|w| w.session == session)
                {
                    self.worker_left(&worker_id);
                    self.emit_worker(
                        &worker_id,
                        pb::WorkerChange::Left,
                        "its session ended".into(),
                    );
                }
            }
            Command::Started { worker_id, started } => self.started(&worker_id, &started),
            Command::Progress {
                worker_id,
                progress,
            } => self.progress(&worker_id, progress),
            Command::Finished { worker_id, result } => self.finished(&worker_id, result),
            Command::AddJob { job, tasks, reply } => {
                self.add_job(*job, tasks);
                self.batch.effects.push(Effect::Reply(reply));
            }
            Command::Control {
                job_id,
                control,
                reply,
            } => {
                let result = self.control(job_id, control);
                match result {
                    Ok(()) => self.batch.effects.push(Effect::Reply(reply)),
                    Err(err) => {
                        let _ = reply.send(Err(err));
                    }
                }
            }
            Command::LeaseLost { worker_id } => self.lease_lost(&worker_id),
            Command::OutputAdded { job_id, added } => {
                self.emit(job_id, pb::job_event::Event::OutputAdded(added))
            }
            Command::Undeliverable {
                worker_id,
                task_id,
                attempt,
            } => self.lose(
                &worker_id,
                task_id,
                attempt,
                "the assignment never reached the worker",
            ),
        }
        self.refresh_jobs();
    }

    fn worker_joined(
        &mut self,
        worker_id: String,
        session: u64,
        capabilities: pb::WorkerCapabilities,
        outbox: Outbox,
        held: Vec<(Uuid, i32)>,
    ) {
        let reconnected = self.workers.contains_key(&worker_id);
        // What the worker's old session held and it no longer names is lost.
        let kept = self.replace_session(&worker_id, &held);
        if !reconnected {
            let offer = describe_offer(&capabilities);
            self.emit_worker(&worker_id, pb::WorkerChange::Joined, offer);
        }
        let slots = capabilities.slots.max(1) as usize;
        self.workers.insert(
            worker_id.clone(),
            WorkerEntry {
                session,
                outbox,
                capabilities,
                slots,
                idle_since: kept.is_empty().then(Instant::now),
                running: kept,
            },
        );
        self.reclaim(&worker_id, held);
        if self
            .workers
            .get(&worker_id)
            .is_some_and(WorkerEntry::has_free_slot)
        {
            self.free_workers.insert(worker_id);
        }
        self.dispatch_wanted = true;
    }

    pub(crate) fn worker_left(&mut self, worker_id: &str) {
        let Some(worker) = self.workers.get(worker_id) else {
            return;
        };
        let held: Vec<(Uuid, i32)> = worker.running.iter().copied().collect();
        if !held.is_empty() {
            tracing::warn!(
                worker_id,
                tasks = held.len(),
                "requeueing the tasks of a departed worker"
            );
        }
        for (task_id, attempt) in held {
            self.lose(worker_id, task_id, attempt, "its worker went away");
        }
        self.workers.remove(worker_id);
        self.free_workers.remove(worker_id);
    }

    /// A worker etcd holds dead is dead, even if its stream looks open: its
    /// tasks are stopped and requeued, and dropping its outbox ends the
    /// stream, so a worker that is in fact alive reconnects afresh.
    fn lease_lost(&mut self, worker_id: &str) {
        self.release_unclaimed_of(worker_id);
        let Some(worker) = self.workers.get(worker_id) else {
            return;
        };
        let held: Vec<(Uuid, i32)> = worker.running.iter().copied().collect();
        for (task_id, attempt) in held {
            self.send_cancel(worker_id, task_id, attempt);
        }
        tracing::warn!(worker_id, "worker lease lost; treating it as dead");
        self.worker_left(worker_id);
        self.emit_worker(
            worker_id,
            pb::WorkerChange::Lost,
            "its etcd registration expired".into(),
        );
    }

    /// An attempt ended through no fault of the task: it goes back to the queue.
    pub(crate) fn lose(&mut self, worker_id: &str, task_id: Uuid, attempt: i32, why: &str) {
        if !self.holds(worker_id, task_id, attempt) {
            return;
        }
        let outcome = Outcome {
            message: format!("attempt {attempt} on worker {worker_id} lost: {why}"),
            ..Outcome::default()
        };
        if self
            .transition(task_id, TaskEvent::Lose, Some(&outcome))
            .is_some()
        {
            self.make_ready(task_id, true);
        }
    }

    /// Whether the task's current attempt is this one, on this worker.
    pub(crate) fn holds(&self, worker_id: &str, task_id: Uuid, attempt: i32) -> bool {
        self.tasks.get(&task_id).is_some_and(|t| {
            t.attempt == attempt
                && t.worker_id.as_deref() == Some(worker_id)
                && t.state.is_in_flight()
        })
    }

    /// Marks a picked task dispatched to a worker; the assignment leaves once that is durable.
    pub fn assign(&mut self, task_id: Uuid, worker_id: &str) {
        let Some(task) = self.tasks.get_mut(&task_id) else {
            return;
        };
        task.worker_id = Some(worker_id.to_owned());
        if self
            .transition(task_id, TaskEvent::Dispatch, None)
            .is_none()
        {
            return;
        }
        let (Some(task), Some(worker)) =
            (self.tasks.get(&task_id), self.workers.get_mut(worker_id))
        else {
            return;
        };
        worker.running.insert((task_id, task.attempt));
        worker.idle_since = None;
        if let Some(ready_at) = task.ready_at {
            metrics::histogram!(crate::scheduler_metrics::DISPATCH_LATENCY)
                .record(ready_at.elapsed().as_secs_f64());
        }
        let outbox = worker.outbox.clone();
        let Some(job) = self.jobs.get(&task.job_id) else {
            return;
        };
        self.dispatches += 1;
        self.owner_served.insert(job.owner.clone(), self.dispatches);
        tracing::debug!(task_id = %task_id, job_id = %job.id, owner = %job.owner, worker_id, "assigned");
        let step = &job.steps[task.step];
        let assignment = pb::TaskAssignment {
            task_id: task_id.to_string(),
            job_id: job.id.to_string(),
            attempt: task.attempt as u32,
            step_name: step.name.clone(),
            command: task.command.clone(),
            args: task.args.clone(),
            inputs: job.inputs.clone(),
            frames: task.frames.clone(),
            max_run_seconds: job.max_run_seconds,
            stall_seconds: job.stall_seconds,
            trace_context: job.trace_context.clone(),
            allow_network: !job.template_name.is_empty()
                && self.network_templates.contains(&job.template_name),
            session_step: step.session_step.as_deref().unwrap_or_default().to_owned(),
            task_symbols: task.task_symbols.clone().unwrap_or_default(),
        };
        let dependency_steps = step
            .depends_on
            .iter()
            .map(|&d| job.steps[d].name.clone())
            .collect();
        let attempt = (task_id, task.attempt);
        self.batch.effects.push(Effect::Deliver {
            worker_id: worker_id.to_owned(),
            outbox,
            job_id: job.id,
            attempt,
            assignment,
            dependency_steps,
        });
    }

    fn started(&mut self, worker_id: &str, started: &pb::TaskStarted) {
        let Ok(task_id) = Uuid::parse_str(&started.task_id) else {
            return;
        };
        if self.holds(worker_id, task_id, started.attempt as i32) {
            self.transition(task_id, TaskEvent::Start, None);
        }
    }

    fn progress(&mut self, worker_id: &str, progress: pb::TaskProgressReport) {
        let Ok(task_id) = Uuid::parse_str(&progress.task_id) else {
            return;
        };
        if !self.holds(worker_id, task_id, progress.attempt as i32) {
            return;
        }
        let Some(job_id) = self.tasks.get(&task_id).map(|t| t.job_id) else {
            return;
        };
        // Progress is frequent: the sequencer keeps at most about one a second per task.
        let progress = pb::TaskProgress {
            task_id: progress.task_id,
            fraction: progress.fraction,
            frame: progress.frame,
            status: progress.status,
        };
        self.emit_progress(job_id, task_id, progress);
    }

    fn finished(&mut self, worker_id: &str, result: pb::TaskResult) {
        let Ok(task_id) = Uuid::parse_str(&result.task_id) else {
            return;
        };
        let attempt = result.attempt as i32;
        if !self.holds(worker_id, task_id, attempt) {
            tracing::info!(task_id = %task_id, attempt, worker_id, "ignored a report for a superseded attempt");
            return;
        }
        let outcome = Outcome {
            exit_code: result.exit_code,
            message: result.message,
            log_tail: result.log_tail,
            device: Some(result.device),
            status: Some(result.status),
        };
        if result.success {
            if self
                .transition(task_id, TaskEvent::Succeed, Some(&outcome))
                .is_some()
            {
                self.record_outputs(task_id, result.outputs);
            }
            return;
        }
        self.fail_attempt(worker_id, task_id, &outcome);
    }

    /// A success lists every output of the attempt; those whose own report
    /// never arrived are recorded with it.
    fn record_outputs(&mut self, task_id: Uuid, outputs: Vec<pb::OutputStored>) {
        let Some(job_id) = self.tasks.get(&task_id).map(|t| t.job_id) else {
            return;
        };
        let valid = outputs
            .into_iter()
            .filter(|o| !o.path.is_empty() && !o.digest.is_empty());
        self.batch.outputs.extend(valid.map(|o| OutputWrite {
            job_id,
            task_id,
            path: o.path,
            digest: o.digest,
            size: i64::try_from(o.size).unwrap_or(i64::MAX),
            kind: o.kind,
        }));
    }

    /// A failed attempt: retried after a backoff or failed for good, and
    /// counted against the worker for the blocklist.
    fn fail_attempt(&mut self, worker_id: &str, task_id: Uuid, outcome: &Outcome) {
        let Some(task) = self.tasks.get(&task_id) else {
            return;
        };
        let (job_id, failures) = (task.job_id, task.failures as u32 + 1);
        let (event, delay) = self.policy.on_failure(failures);
        self.count_worker_failure(job_id, worker_id);
        if self.transition(task_id, event, Some(outcome)).is_none() {
            return;
        }
        tracing::info!(task_id = %task_id, worker_id, failures, message = %outcome.message, "task attempt failed");
        if let Some(delay) = delay {
            self.retries
                .push(Reverse((Instant::now() + delay, task_id)));
            if let Some(write) = self.batch.tasks.last_mut() {
                write.retry_at = chrono::Duration::from_std(delay)
                    .ok()
                    .map(|d| Utc::now() + d);
            }
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

    fn add_job(&mut self, mut job: JobEntry, tasks: Vec<TaskEntry>) {
        job.seq = self.next_seq;
        self.next_seq += 1;
        let job_id = job.id;
        let mut failed_dependency = None;
        for dependency in job.waiting_on.clone() {
            if self.jobs.contains_key(&dependency) {
                self.dependents.entry(dependency).or_default().push(job_id);
                continue;
            }
            // It finished since the submission looked at it.
            match self.recently_finished.get(&dependency) {
                Some(JobState::Succeeded) => {
                    job.waiting_on.remove(&dependency);
                }
                state => failed_dependency = Some((dependency, state.copied())),
            }
        }
        for task in &tasks {
            if task.state.is_in_flight() {
                *self.owner_running.entry(job.owner.clone()).or_default() += 1;
                // Dispatched by a previous leader: its worker may still run it.
                let deadline = Instant::now() + self.policy.reclaim_window;
                self.unclaimed.insert(task.id, deadline);
            }
        }
        let earlier = std::mem::take(&mut job.earlier_run_times);
        self.eta.open(&job, &tasks, &earlier);
        self.jobs.insert(job_id, job);
        for task in tasks {
            let (id, state) = (task.id, task.state);
            self.tasks.insert(id, task);
            if let Some(job) = self.jobs.get_mut(&job_id) {
                job.task_ids.push(id);
            }
            match state {
                TaskState::Pending => self.make_ready(id, false),
                TaskState::WaitingRetry => self.retries.push(Reverse((Instant::now(), id))),
                _ => {}
            }
        }
        self.dispatch_wanted = true;
        self.touch(job_id);
        if let Some((dependency, state)) = failed_dependency {
            if let Some(job) = self.jobs.get_mut(&job_id) {
                let state = state.map_or("finished without succeeding", JobState::as_str);
                job.message = format!("job {dependency} it depends on {state}");
            }
            self.set_job_state(job_id, JobState::Failed);
        }
    }

    fn control(&mut self, job_id: Uuid, control: Control) -> Result<(), SchedulerError> {
        if let Control::Retry(Some((job, tasks))) = control {
            if !self.jobs.contains_key(&job_id) {
                self.add_job(*job, tasks);
            }
            return self.control(job_id, Control::Retry(None));
        }
        let Some(job) = self.jobs.get_mut(&job_id) else {
            return Err(SchedulerError::JobFinished(job_id.to_string()));
        };
        match control {
            Control::Cancel => {
                job.message = "cancelled by user".into();
                self.set_job_state(job_id, JobState::Cancelled);
            }
            Control::Pause => {
                job.paused = true;
                self.touch(job_id);
            }
            Control::Resume => {
                job.paused = false;
                self.touch(job_id);
            }
            Control::SetPriority(priority) => {
                job.priority = priority;
                let state = job.state;
                self.batch.jobs.push(crate::writer::JobWrite {
                    id: job_id,
                    state,
                    priority,
                    message: job.message.clone(),
                    finished: false,
                    reopened: false,
                });
                self.dispatch_wanted = true;
            }
            Control::ClearBlocklist(worker) => {
                match &worker {
                    Some(w) => {
                        job.worker_failures.remove(w);
                    }
                    None => job.worker_failures.clear(),
                }
                self.batch.blocklist.push(BlocklistWrite::Clear {
                    job_id,
                    worker_id: worker,
                });
                self.dispatch_wanted = true;
            }
            Control::Retry(_) => self.reopen(job_id),
        }
        Ok(())
    }

    /// Puts a job's failed and cancelled tasks back in the queue.
    fn reopen(&mut self, job_id: Uuid) {
        let Some(job) = self.jobs.get_mut(&job_id) else {
            return;
        };
        job.message.clear();
        let task_ids = job.task_ids.clone();
        let was = job.state;
        let reason = Outcome {
            message: "retried by user".into(),
            ..Outcome::default()
        };
        for task_id in task_ids {
            if self
                .transition(task_id, TaskEvent::Reopen, Some(&reason))
                .is_some()
            {
                self.make_ready(task_id, false);
            }
        }
        if was.is_final() {
            self.set_job_state(job_id, JobState::Running);
        }
        self.touch(job_id);
    }

    /// Periodic work: due retries, attempts that outlived their limits, gauges.
    pub fn on_tick(&mut self, now: Instant) {
        self.release_due_retries(now);
        self.expire_unclaimed(now);
        self.publish_gauges(now);
        let mut overdue = Vec::new();
        for (worker_id, worker) in &self.workers {
            for &(task_id, attempt) in &worker.running {
                let Some(task) = self.tasks.get(&task_id) else {
                    continue;
                };
                let Some(since) = task.dispatched_at else {
                    continue;
                };
                let max_run = self.jobs.get(&task.job_id).map_or(0, |j| j.max_run_seconds);
                let age = now.saturating_duration_since(since);
                if task.state == TaskState::Dispatched && age > START_TIMEOUT {
                    overdue.push((worker_id.clone(), task_id, attempt, false));
                } else if max_run > 0
                    && age > std::time::Duration::from_secs(u64::from(max_run)) + MAX_RUN_GRACE
                {
                    overdue.push((worker_id.clone(), task_id, attempt, true));
                }
            }
        }
        for (worker_id, task_id, attempt, ran_too_long) in overdue {
            if ran_too_long {
                self.send_cancel(&worker_id, task_id, attempt);
                let outcome = Outcome {
                    message: "ran past its maximum run time".into(),
                    ..Outcome::default()
                };
                self.fail_attempt(&worker_id, task_id, &outcome);
            } else {
                self.lose(
                    &worker_id,
                    task_id,
                    attempt,
                    "the worker never confirmed it started",
                );
            }
        }
        self.refresh_jobs();
    }
}

/// "8 cores, 1 GPU, 2 slots: blender 3.4.1, ffmpeg 5.1".
fn describe_offer(capabilities: &pb::WorkerCapabilities) -> String {
    let renderers: Vec<String> = capabilities
        .renderers
        .iter()
        .map(|r| format!("{} {}", r.name, r.version))
        .collect();
    format!(
        "{} cores, {} GPU, {} slots: {}",
        capabilities.cpu_cores,
        capabilities.gpus,
        capabilities.slots.max(1),
        renderers.join(", ")
    )
}
