//! Unit tests of the dispatch core: no Postgres, no etcd, no clock; each
//! runs in milliseconds. `Bench` drives a core the way the dispatch loop
//! does and plays Postgres's part: every batch it takes is applied to a
//! shadow table of task rows with the batch writer's guard (state and
//! attempt), so every test also checks that each write the core makes is
//! guarded on what the row holds.

mod admission;
mod controls;
mod dependencies;
mod events;
mod failures;
mod fleet;
mod lookahead;
mod outputs;
mod pick_order;
mod property;
mod quotas;
mod reclaim;
mod session_steps;
mod waiting;
mod workers;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{TimeZone, Utc};
use kiln_jobmodel::{AmountRequirement, AttributeRequirement, HostRequirements};
use kiln_proto::v1 as pb;
use uuid::Uuid;

use crate::core::admission_policy::{Admission, AdmissionAction, AdmissionPolicy};
use crate::core::batch::{Batch, Effect, RequestId};
use crate::core::command::{AttemptReport, Command, Control, Refusal};
use crate::core::model::{Attempt, Clock, JobEntry, StepEntry, TaskEntry};
use crate::core::quota_policy::QuotaSettings;
use crate::core::{Core, CoreSettings};
use crate::job_state::{JobState, TaskCounts};
use crate::matching::Requirements;
use crate::retry::RetryPolicy;
use crate::task_state::TaskState;

/// A core under test, its clock, and the task rows as Postgres would hold them.
pub struct Bench {
    pub core: Core,
    pub now: Clock,
    /// Task rows: state and attempt, as the guarded writes left them.
    rows: HashMap<Uuid, (TaskState, i32)>,
    sessions: HashMap<String, u64>,
    next_session: u64,
    next_request: u64,
    /// Every batch taken, in order.
    pub batches: Vec<Batch>,
}

/// A worker to join: slots, GPUs, renderers and attributes.
#[derive(Clone)]
pub struct WorkerSpec {
    slots: u32,
    lookahead: u32,
    gpus: u32,
    renderers: Vec<String>,
    attributes: Vec<(String, String)>,
    any_command: bool,
}

pub fn worker() -> WorkerSpec {
    WorkerSpec {
        slots: 1,
        lookahead: 0,
        gpus: 0,
        renderers: vec!["blender".into(), "ffmpeg".into()],
        attributes: Vec::new(),
        any_command: false,
    }
}

impl WorkerSpec {
    pub fn slots(mut self, slots: u32) -> Self {
        self.slots = slots;
        self
    }
    /// Holds up to `n` tasks queued beyond its slots.
    pub fn lookahead(mut self, n: u32) -> Self {
        self.lookahead = n;
        self
    }
    pub fn gpus(mut self, gpus: u32) -> Self {
        self.gpus = gpus;
        self
    }
    pub fn renderers(mut self, renderers: &[&str]) -> Self {
        self.renderers = renderers.iter().map(|r| (*r).to_owned()).collect();
        self
    }
    pub fn attribute(mut self, name: &str, value: &str) -> Self {
        self.attributes.push((name.into(), value.into()));
        self
    }
    /// Runs any program (it sandboxes its tasks).
    pub fn any_command(mut self) -> Self {
        self.any_command = true;
        self
    }

    // `..Default::default()` keeps these literals building when the proto
    // gains fields.
    #[allow(clippy::needless_update)]
    fn capabilities(&self) -> pb::WorkerCapabilities {
        pb::WorkerCapabilities {
            cpu_cores: 8,
            memory_bytes: 16 << 30,
            gpus: self.gpus,
            gpu_memory_bytes: u64::from(self.gpus) * (8 << 30),
            slots: self.slots,
            os: "linux".into(),
            renderers: self
                .renderers
                .iter()
                .map(|name| pb::Renderer {
                    name: name.clone(),
                    version: "1".into(),
                    ..Default::default()
                })
                .collect(),
            attributes: self.attributes.iter().cloned().collect(),
            any_command: self.any_command,
            lookahead: self.lookahead,
            ..Default::default()
        }
    }
}

/// A job to submit, step by step.
#[derive(Clone)]
pub struct JobSpec {
    owner: String,
    priority: i32,
    max_failed_tasks: i64,
    max_run_seconds: u32,
    waiting_on: Vec<Uuid>,
    steps: Vec<StepSpec>,
    inputs: Vec<pb::TaskInput>,
    tags: Vec<String>,
    template_name: String,
}

#[derive(Clone)]
struct StepSpec {
    name: String,
    tasks: usize,
    command: String,
    depends_on: Vec<usize>,
    requirements: Option<HostRequirements>,
    /// The step's script, for a step run as written (OpenJD session model).
    session: Option<Arc<str>>,
}

/// A job of `owner` with one step of `tasks` Blender tasks.
pub fn job(owner: &str, tasks: usize) -> JobSpec {
    JobSpec {
        owner: owner.into(),
        priority: 50,
        max_failed_tasks: 0,
        max_run_seconds: 0,
        waiting_on: Vec::new(),
        steps: vec![StepSpec {
            name: "Render".into(),
            tasks,
            command: "blender".into(),
            depends_on: Vec::new(),
            requirements: None,
            session: None,
        }],
        inputs: Vec::new(),
        tags: Vec::new(),
        template_name: String::new(),
    }
}

impl JobSpec {
    /// Made from the approved template `name` (not one the submitter wrote).
    pub fn made_from(mut self, name: &str) -> Self {
        self.template_name = name.into();
        self
    }
    pub fn priority(mut self, priority: i32) -> Self {
        self.priority = priority;
        self
    }
    pub fn max_failed_tasks(mut self, n: i64) -> Self {
        self.max_failed_tasks = n;
        self
    }
    pub fn max_run_seconds(mut self, seconds: u32) -> Self {
        self.max_run_seconds = seconds;
        self
    }
    /// The job's tasks go only to workers carrying `tag`.
    pub fn tag(mut self, tag: &str) -> Self {
        self.tags.push(tag.into());
        self
    }
    pub fn after_job(mut self, job: Uuid) -> Self {
        self.waiting_on.push(job);
        self
    }
    pub fn inputs(mut self, digest: &str) -> Self {
        self.inputs.push(pb::TaskInput {
            path: "scene.blend".into(),
            digest: digest.into(),
        });
        self
    }
    /// The first step needs a GPU.
    pub fn on_gpu(mut self) -> Self {
        self.steps[0].requirements = Some(HostRequirements {
            amounts: Some(vec![AmountRequirement {
                name: "amount.worker.gpu".into(),
                min: Some(1.0),
                max: None,
            }]),
            attributes: None,
        });
        self
    }
    /// The first step needs workers tagged `name=value`.
    pub fn tagged(mut self, name: &str, value: &str) -> Self {
        self.steps[0].requirements = Some(HostRequirements {
            amounts: None,
            attributes: Some(vec![AttributeRequirement {
                name: format!("attr.{name}"),
                any_of: Some(vec![value.into()]),
                all_of: None,
            }]),
        });
        self
    }
    /// The first step runs `command`.
    pub fn command(mut self, command: &str) -> Self {
        self.steps[0].command = command.into();
        self
    }
    /// The first step runs as written through the OpenJD session model,
    /// with `script` as its session step; each task's symbols name its index.
    pub fn with_session_step(mut self, script: &str) -> Self {
        self.steps[0].command = kiln_jobmodel::SESSION_COMMAND.into();
        self.steps[0].session = Some(script.into());
        self
    }
    /// Adds an ffmpeg step of `tasks` tasks depending on the step before it.
    pub fn then(mut self, name: &str, tasks: usize) -> Self {
        let before = self.steps.len() - 1;
        self.steps.push(StepSpec {
            name: name.into(),
            tasks,
            command: "ffmpeg".into(),
            depends_on: vec![before],
            requirements: None,
            session: None,
        });
        self
    }
}

/// A submitted job: its id and its tasks' ids, step by step.
#[derive(Debug, Clone)]
pub struct Submitted {
    pub id: Uuid,
    pub steps: Vec<Vec<Uuid>>,
}

impl Submitted {
    /// The first step's task `index`.
    pub fn task(&self, index: usize) -> Uuid {
        self.steps[0][index]
    }
    pub fn all_tasks(&self) -> Vec<Uuid> {
        self.steps.iter().flatten().copied().collect()
    }
}

/// An assignment that left the core: to which worker, which task, which attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assigned {
    pub worker: String,
    pub task: Uuid,
    pub attempt: i32,
}

pub fn policy() -> RetryPolicy {
    RetryPolicy {
        max_attempts: 3,
        base_delay: Duration::from_secs(2),
        max_delay: Duration::from_secs(300),
        blocklist_after: 3,
        reclaim_window: Duration::from_secs(15),
    }
}

pub fn start_clock() -> Clock {
    Clock {
        instant: Instant::now(),
        wall: Utc
            .with_ymd_and_hms(2026, 1, 1, 12, 0, 0)
            .single()
            .expect("a valid date"),
    }
}

impl Default for Bench {
    fn default() -> Self {
        Self::new(policy(), &[])
    }
}

impl Bench {
    pub fn new(policy: RetryPolicy, weights: &[(&str, f64)]) -> Self {
        Self::with_settings(
            policy,
            weights,
            QuotaSettings::default(),
            AdmissionPolicy::default(),
        )
    }

    /// A bench whose owners have `quotas`.
    pub fn with_quotas(
        policy: RetryPolicy,
        weights: &[(&str, f64)],
        quotas: QuotaSettings,
    ) -> Self {
        Self::with_settings(policy, weights, quotas, AdmissionPolicy::default())
    }

    /// A bench whose core applies `admission` to submissions made with
    /// [`Bench::submit_admitted`].
    pub fn with_admission(
        policy: RetryPolicy,
        weights: &[(&str, f64)],
        admission: AdmissionPolicy,
    ) -> Self {
        Self::with_settings(policy, weights, QuotaSettings::default(), admission)
    }

    fn with_settings(
        policy: RetryPolicy,
        weights: &[(&str, f64)],
        quotas: QuotaSettings,
        admission: AdmissionPolicy,
    ) -> Self {
        let now = start_clock();
        let core = Core::new(CoreSettings {
            policy,
            owner_weights: weights
                .iter()
                .map(|(owner, weight)| ((*owner).to_owned(), *weight))
                .collect(),
            quotas,
            farm_position: 0,
            jitter_seed: 7,
            now,
            known_workers: Vec::new(),
            network_templates: Default::default(),
            admission,
        });
        Self {
            core,
            now,
            rows: HashMap::new(),
            sessions: HashMap::new(),
            next_session: 1,
            next_request: 1,
            batches: Vec::new(),
        }
    }

    /// Adds a task row as Postgres holds it (for entries built by hand).
    pub fn rows_insert(&mut self, task: Uuid, row: (TaskState, i32)) {
        self.rows.insert(task, row);
    }

    pub fn advance(&mut self, by: Duration) {
        self.now = self.now.after(by);
    }

    pub fn handle(&mut self, command: Command) -> Result<(), Refusal> {
        self.core.handle(command, self.now)
    }

    fn request(&mut self) -> RequestId {
        self.next_request += 1;
        RequestId(self.next_request)
    }

    /// A fresh request id, as the dispatch loop numbers requests.
    pub fn next_request(&mut self) -> RequestId {
        self.request()
    }

    /// The id the next request will get, without taking it.
    pub fn peek_request(&self) -> RequestId {
        RequestId(self.next_request + 1)
    }

    /// A worker opens a session holding nothing.
    pub fn join(&mut self, worker_id: &str, spec: WorkerSpec) -> u64 {
        self.join_holding(worker_id, spec, Vec::new())
    }

    /// A worker opens a session, naming the attempts it still holds.
    pub fn join_holding(&mut self, worker_id: &str, spec: WorkerSpec, held: Vec<Attempt>) -> u64 {
        let session = self.next_session;
        self.next_session += 1;
        self.sessions.insert(worker_id.to_owned(), session);
        let joined = Command::WorkerJoined {
            worker_id: worker_id.into(),
            hostname: format!("{worker_id}.local"),
            session,
            capabilities: spec.capabilities(),
            held,
        };
        self.handle(joined).expect("joins are never refused");
        session
    }

    /// The worker's current session ends (its stream broke).
    pub fn leave(&mut self, worker_id: &str) {
        let session = self.sessions[worker_id];
        let left = Command::WorkerLeft {
            worker_id: worker_id.into(),
            session,
        };
        self.handle(left).expect("never refused");
    }

    pub fn lease_lost(&mut self, worker_id: &str) {
        let lost = Command::LeaseLost {
            worker_id: worker_id.into(),
        };
        self.handle(lost).expect("never refused");
    }

    /// Submits a job, as `submit.rs` does once its rows are stored.
    pub fn submit(&mut self, spec: JobSpec) -> Submitted {
        self.add(spec, None)
    }

    /// Submits a job as `submit.rs` does: admitted first (its owner's
    /// quotas checked and room reserved), then stored and added.
    pub fn admit_and_submit(&mut self, spec: JobSpec) -> Result<Submitted, Refusal> {
        let request = self.request();
        let tasks = spec.steps.iter().map(|s| s.tasks as u64).sum();
        self.handle(Command::Admit {
            request,
            owner: spec.owner.clone(),
            tasks,
        })?;
        Ok(self.add(spec, Some(request)))
    }

    fn add(&mut self, spec: JobSpec, admission: Option<RequestId>) -> Submitted {
        let (job, tasks, submitted) = entries(&spec, TaskState::Pending);
        for task in &tasks {
            self.rows.insert(task.id, (task.state, task.attempt));
        }
        let request = self.request();
        let add = Command::AddJob {
            request,
            admission,
            job: Box::new(job),
            tasks,
        };
        self.handle(add).expect("new jobs are never refused");
        submitted
    }

    /// Submits a job as `submit.rs` does: asks admission control first,
    /// then stores and adds it (held, if delayed) unless it was refused.
    pub fn submit_admitted(&mut self, spec: JobSpec) -> (Admission, Option<Submitted>) {
        let renderers: Vec<String> = spec.steps.iter().map(|s| s.command.clone()).collect();
        let admission = self.core.admission(&spec.owner, &renderers);
        let held = match &admission {
            Admission::Admit => None,
            Admission::Delay { reason } => Some(reason.clone()),
            Admission::Refuse { .. } => return (admission, None),
        };
        let (mut job, tasks, submitted) = entries(&spec, TaskState::Pending);
        job.held = held;
        for task in &tasks {
            self.rows.insert(task.id, (task.state, task.attempt));
        }
        let request = self.request();
        let add = Command::AddJob {
            request,
            admission: None,
            job: Box::new(job),
            tasks,
        };
        self.handle(add).expect("new jobs are never refused");
        (admission, Some(submitted))
    }

    /// Restores a job as a new leader loads it: every task in `state`,
    /// at attempt 1 on `worker` when in flight.
    pub fn restore(&mut self, spec: JobSpec, state: TaskState, worker: &str) -> Submitted {
        let (job, mut tasks, submitted) = entries(&spec, state);
        for task in &mut tasks {
            if state != TaskState::Pending {
                task.attempt = 1;
                task.worker_id = Some(worker.to_owned());
            }
            self.rows.insert(task.id, (task.state, task.attempt));
        }
        let mut job = job;
        job.counts = counts_of(&tasks);
        self.core.restore(job, tasks, self.now);
        submitted
    }

    pub fn control(&mut self, job: Uuid, control: Control) -> Result<(), Refusal> {
        let request = self.request();
        self.handle(Command::Control {
            request,
            job_id: job,
            control,
        })
    }

    pub fn worker_control(
        &mut self,
        worker_id: &str,
        control: crate::core::command::WorkerControl,
    ) -> Result<(), Refusal> {
        let request = self.request();
        self.handle(Command::WorkerControl {
            request,
            worker_id: worker_id.into(),
            control,
        })
    }

    pub fn tick(&mut self) {
        self.core.tick(self.now);
    }

    /// Dispatches, commits the batch, and returns the assignments it carried.
    pub fn dispatch(&mut self) -> Vec<Assigned> {
        self.core.dispatch(self.now);
        let batch = self.commit();
        assignments(&batch)
    }

    /// Dispatches, expecting exactly one assignment.
    pub fn dispatch_one(&mut self) -> Assigned {
        let mut assigned = self.dispatch();
        assert_eq!(assigned.len(), 1, "expected one assignment: {assigned:?}");
        assigned.remove(0)
    }

    /// Takes the core's batch and applies its task writes to the shadow rows
    /// with the batch writer's guard: a write that would find its row moved
    /// fails the test.
    pub fn commit(&mut self) -> Batch {
        let batch = self.core.take_batch().unwrap_or_default();
        // Write by write, each guarded on what the one before it left...
        let mut after = self.rows.clone();
        for write in &batch.tasks {
            let row = after
                .get_mut(&write.id)
                .unwrap_or_else(|| panic!("a write of task {} that has no row", write.id));
            assert_eq!(
                *row,
                (write.expect_state, write.expect_attempt),
                "a write of task {} does not follow the one before it",
                write.id
            );
            *row = (write.state, write.attempt);
        }
        // ...and coalesced as the batch writer sends them, to the same end.
        let mut coalesced = batch.clone();
        coalesced.coalesce_tasks();
        for write in &coalesced.tasks {
            let row = self
                .rows
                .get_mut(&write.id)
                .unwrap_or_else(|| panic!("a write of task {} that has no row", write.id));
            assert_eq!(
                *row,
                (write.expect_state, write.expect_attempt),
                "the write of task {} is guarded on a state its row is not in",
                write.id
            );
            *row = (write.state, write.attempt);
        }
        assert_eq!(self.rows, after, "coalescing changed where rows end");
        self.batches.push(batch.clone());
        batch
    }

    pub fn started(&mut self, worker_id: &str, task: Uuid) {
        let attempt = self.attempt_of(task);
        self.started_attempt(worker_id, task, attempt);
    }

    pub fn started_attempt(&mut self, worker_id: &str, task: Uuid, attempt: i32) {
        let started = Command::Started {
            worker_id: worker_id.into(),
            task_id: task,
            attempt,
        };
        self.handle(started).expect("never refused");
    }

    pub fn succeed(&mut self, worker_id: &str, task: Uuid) {
        let attempt = self.attempt_of(task);
        self.report(worker_id, task, attempt, true, "");
    }

    pub fn fail(&mut self, worker_id: &str, task: Uuid, message: &str) {
        let attempt = self.attempt_of(task);
        self.report(worker_id, task, attempt, false, message);
    }

    pub fn report(
        &mut self,
        worker_id: &str,
        task: Uuid,
        attempt: i32,
        success: bool,
        message: &str,
    ) {
        let finished = Command::Finished {
            worker_id: worker_id.into(),
            task_id: task,
            attempt,
            report: AttemptReport {
                success,
                exit_code: Some(if success { 0 } else { 1 }),
                message: message.into(),
                ..AttemptReport::default()
            },
        };
        self.handle(finished).expect("never refused");
    }

    /// Dispatches and runs every assignment to success, until nothing is left.
    pub fn run_to_end(&mut self) -> Vec<Assigned> {
        let mut all = Vec::new();
        for _ in 0..1000 {
            let round = self.dispatch();
            if round.is_empty() {
                break;
            }
            for a in &round {
                self.started_attempt(&a.worker, a.task, a.attempt);
                self.report(&a.worker, a.task, a.attempt, true, "");
            }
            all.extend(round);
        }
        self.commit();
        all
    }

    pub fn attempt_of(&self, task: Uuid) -> i32 {
        self.core.task(task).map_or(0, |t| t.attempt)
    }

    pub fn state_of(&self, task: Uuid) -> Option<TaskState> {
        self.core.task(task).map(|t| t.state)
    }

    /// The task's state as its row holds it (also once its job left memory).
    pub fn row_of(&self, task: Uuid) -> (TaskState, i32) {
        self.rows[&task]
    }

    pub fn job_state(&self, job: Uuid) -> Option<JobState> {
        self.core.job(job).map(|j| j.state)
    }

    /// The job's state as last written (also once it left memory).
    pub fn written_job_state(&self, job: Uuid) -> Option<JobState> {
        self.batches
            .iter()
            .flat_map(|b| &b.jobs)
            .rfind(|w| w.id == job)
            .map(|w| w.state)
    }

    /// Every effect of every batch taken so far.
    pub fn effects(&self) -> impl Iterator<Item = &Effect> {
        self.batches.iter().flat_map(|b| &b.effects)
    }

    /// Every job event written so far, in order.
    pub fn events(&self) -> Vec<pb::JobEvent> {
        self.batches
            .iter()
            .flat_map(|b| &b.events)
            .map(|(_, e)| pb::JobEvent::clone(e))
            .collect()
    }
}

pub fn assignments(batch: &Batch) -> Vec<Assigned> {
    batch
        .effects
        .iter()
        .filter_map(|e| match e {
            Effect::Deliver {
                worker_id, attempt, ..
            } => Some(Assigned {
                worker: worker_id.clone(),
                task: attempt.0,
                attempt: attempt.1,
            }),
            _ => None,
        })
        .collect()
}

/// The cancels a batch sends: worker, session, task, attempt.
pub fn cancels(batch: &Batch) -> Vec<(String, u64, Uuid, i32)> {
    batch
        .effects
        .iter()
        .filter_map(|e| match e {
            Effect::Cancel {
                worker_id,
                session,
                task_id,
                attempt,
            } => Some((worker_id.clone(), *session, *task_id, *attempt)),
            _ => None,
        })
        .collect()
}

fn counts_of(tasks: &[TaskEntry]) -> TaskCounts {
    let mut counts = TaskCounts {
        total: tasks.len() as i64,
        ..TaskCounts::default()
    };
    for task in tasks {
        match task.state {
            TaskState::Pending | TaskState::WaitingRetry => counts.waiting += 1,
            TaskState::Dispatched | TaskState::Running => counts.in_flight += 1,
            TaskState::Succeeded => counts.succeeded += 1,
            TaskState::Failed => counts.failed += 1,
            TaskState::Cancelled => counts.cancelled += 1,
        }
    }
    counts
}

/// A job's entries as `loader.rs` builds them, every task in `state`.
fn entries(spec: &JobSpec, state: TaskState) -> (JobEntry, Vec<TaskEntry>, Submitted) {
    let id = Uuid::new_v4();
    let mut tasks = Vec::new();
    let mut ids = Vec::new();
    let steps = spec
        .steps
        .iter()
        .enumerate()
        .map(|(position, step)| {
            let step_ids: Vec<Uuid> = (0..step.tasks).map(|_| Uuid::new_v4()).collect();
            for (index, task_id) in step_ids.iter().enumerate() {
                tasks.push(TaskEntry {
                    id: *task_id,
                    job_id: id,
                    step: position,
                    index: index as i32,
                    state,
                    attempt: 0,
                    failures: 0,
                    worker_id: None,
                    command: step.command.clone(),
                    args: vec![format!("--frame={index}")],
                    frames: vec![index as i64 + 1],
                    task_symbols: step
                        .session
                        .as_ref()
                        .map(|_| format!(r#"{{"Task.Param.Index":{index}}}"#)),
                    dispatched_at: None,
                    started_at: None,
                    claimed_attempt: None,
                    ready_at: None,
                });
            }
            ids.push(step_ids);
            StepEntry {
                name: step.name.clone(),
                command: step.command.clone(),
                depends_on: step.depends_on.clone(),
                requirements: Requirements::from_openjd(step.requirements.as_ref()),
                session_step: step.session.clone(),
                ready: Default::default(),
                total: step.tasks,
                succeeded: 0,
                failed: 0,
                mean_run_seconds: None,
            }
        })
        .collect();
    let job = JobEntry {
        id,
        owner: spec.owner.clone(),
        priority: spec.priority,
        submission_order: 0,
        state: JobState::Pending,
        paused: false,
        held: None,
        max_failed_tasks: spec.max_failed_tasks,
        max_run_seconds: spec.max_run_seconds,
        stall_seconds: 0,
        inputs: spec.inputs.clone(),
        steps,
        task_ids: Vec::new(),
        counts: counts_of(&tasks),
        worker_failures: HashMap::new(),
        waiting_on: spec.waiting_on.iter().copied().collect(),
        message: String::new(),
        trace_context: HashMap::new(),
        name: format!("{}'s job", spec.owner),
        template_name: spec.template_name.clone(),
        last_event_seq: 0,
        earlier_run_times: HashMap::new(),
        recorded_outputs: Vec::new(),
        tags: spec.tags.iter().cloned().collect(),
        finished_outputs: Vec::new(),
    };
    (job, tasks, Submitted { id, steps: ids })
}
