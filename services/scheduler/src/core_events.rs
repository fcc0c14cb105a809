//! The job event sequence. Every event the core produces for a job gets the
//! job's next sequence number and the farm's next position here, and is
//! queued in the current batch: written in the same transaction as the
//! state change that caused it, and published only after that commit. The
//! core is the only writer, so numbering in memory is gap-free; a new leader
//! starts from the maxima in Postgres (`loader.rs`).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use kiln_proto::v1 as pb;
use kiln_proto::v1::job_event::Event;
use tokio::time::Instant;
use uuid::Uuid;

use crate::core::{Core, JobEntry};
use crate::effects::Effect;

/// Least time between two progress events of one task, unless its frame changes.
const PROGRESS_INTERVAL: Duration = Duration::from_secs(1);
/// Least time between two job records of one job while only its counts move;
/// a change of state always goes out at once.
const RECORD_INTERVAL: Duration = Duration::from_millis(500);
/// Tasks and jobs remembered for throttling before old entries are swept.
const THROTTLE_MEMORY: usize = 100_000;

#[derive(Default)]
pub struct EventSequencer {
    /// The last farm-wide position handed out.
    pub farm_seq: u64,
    /// When each task's last progress event went out, and its frame.
    /// When each task's progress was last kept, with its frame and status
    /// line: a new frame or status is always kept.
    progress_sent: HashMap<Uuid, (Instant, Option<i64>, String)>,
    /// When each job's record last went out.
    record_sent: HashMap<Uuid, Instant>,
    /// Jobs whose counts moved while their record was throttled.
    records_due: HashSet<Uuid>,
}

impl Core {
    /// Numbers `event`, queues its write in the current batch and its
    /// publication after the commit. Events of jobs no longer in memory
    /// (finished) are dropped: their sequence is closed.
    pub fn emit(&mut self, job_id: Uuid, event: Event) {
        let Some(job) = self.jobs.get_mut(&job_id) else {
            return;
        };
        job.event_seq += 1;
        self.events.farm_seq += 1;
        let event = Arc::new(pb::JobEvent {
            job_id: job_id.to_string(),
            seq: job.event_seq,
            farm_seq: self.events.farm_seq,
            event: Some(event),
        });
        self.batch.events.push((job_id, event.clone()));
        self.batch.effects.push(Effect::Publish(event));
    }

    /// Numbers a farm event (one of no job): the next farm position, written
    /// and published like a job's.
    pub fn emit_farm(&mut self, event: Event) {
        self.events.farm_seq += 1;
        let event = Arc::new(pb::JobEvent {
            job_id: String::new(),
            seq: 0,
            farm_seq: self.events.farm_seq,
            event: Some(event),
        });
        self.batch.farm_events.push(event.clone());
        self.batch.effects.push(Effect::Publish(event));
    }

    /// A worker joined, left or was lost.
    pub fn emit_worker(&mut self, worker_id: &str, change: pb::WorkerChange, message: String) {
        self.emit_farm(Event::WorkerChanged(pb::WorkerChanged {
            worker_id: worker_id.to_owned(),
            change: change as i32,
            message,
        }));
    }

    /// A running task's progress: kept at most once a second per task, or
    /// when it moves to another frame, so a busy farm does not flood Postgres.
    pub fn emit_progress(&mut self, job_id: Uuid, task_id: Uuid, progress: pb::TaskProgress) {
        let now = Instant::now();
        if let Some((at, frame, status)) = self.events.progress_sent.get(&task_id)
            && *frame == progress.frame
            && *status == progress.status
            && now.duration_since(*at) < PROGRESS_INTERVAL
        {
            return;
        }
        if self.events.progress_sent.len() >= THROTTLE_MEMORY {
            self.events
                .progress_sent
                .retain(|_, (at, _, _)| now.duration_since(*at) < PROGRESS_INTERVAL);
        }
        self.events
            .progress_sent
            .insert(task_id, (now, progress.frame, progress.status.clone()));
        self.emit(job_id, Event::TaskProgress(progress));
    }

    /// The job's record after it changed: always when its state changed,
    /// otherwise at most every RECORD_INTERVAL (the rest comes on a tick).
    pub fn emit_record(&mut self, job_id: Uuid, state_changed: bool) {
        let now = Instant::now();
        if !state_changed
            && self
                .events
                .record_sent
                .get(&job_id)
                .is_some_and(|at| now.duration_since(*at) < RECORD_INTERVAL)
        {
            self.events.records_due.insert(job_id);
            return;
        }
        if self.events.record_sent.len() >= THROTTLE_MEMORY {
            self.events
                .record_sent
                .retain(|_, at| now.duration_since(*at) < RECORD_INTERVAL);
        }
        self.events.record_sent.insert(job_id, now);
        self.events.records_due.remove(&job_id);
        let Some(record) = self.jobs.get(&job_id).map(|job| self.job_record(job)) else {
            return;
        };
        self.emit(job_id, Event::JobChanged(record));
    }

    /// Sends the records that were held back while their jobs' counts moved.
    pub fn emit_due_records(&mut self, now: Instant) {
        let due: Vec<Uuid> = self
            .events
            .records_due
            .iter()
            .filter(|id| {
                self.events
                    .record_sent
                    .get(id)
                    .is_none_or(|at| now.duration_since(*at) >= RECORD_INTERVAL)
            })
            .copied()
            .collect();
        for job_id in due {
            self.events.records_due.remove(&job_id);
            if self.jobs.contains_key(&job_id) {
                self.emit_record(job_id, true);
            }
        }
    }

    /// The job's record as the core knows it: state, counts, steps, limits
    /// and ETA. (A watch's opening record, read from Postgres, has the rest.)
    fn job_record(&self, job: &JobEntry) -> pb::Job {
        let steps = job
            .steps
            .iter()
            .map(|step| pb::Step {
                name: step.name.clone(),
                depends_on: step
                    .depends_on
                    .iter()
                    .filter_map(|&d| job.steps.get(d).map(|s| s.name.clone()))
                    .collect(),
                tasks_total: step.total as u32,
                tasks_succeeded: step.succeeded as u32,
            })
            .collect();
        let finished_at = job
            .state
            .is_final()
            .then(|| crate::store::timestamp(chrono::Utc::now()));
        pb::Job {
            id: job.id.to_string(),
            name: job.name.clone(),
            state: job.state.to_proto() as i32,
            priority: job.priority as u32,
            owner: job.owner.clone(),
            steps,
            tasks_total: job.counts.total as u32,
            tasks_succeeded: job.counts.succeeded as u32,
            tasks_failed: job.counts.failed as u32,
            tasks_running: job.counts.in_flight as u32,
            message: job.message.clone(),
            max_failed_tasks: job.max_failed_tasks as u32,
            max_run_seconds: job.max_run_seconds,
            stall_seconds: job.stall_seconds,
            finished_at,
            eta: self.eta_of(job),
            ..pb::Job::default()
        }
    }
}

impl Core {
    fn eta_of(&self, job: &JobEntry) -> Option<pb::Eta> {
        let mut running = vec![0; job.steps.len()];
        for task in job.task_ids.iter().filter_map(|id| self.tasks.get(id)) {
            if task.state.is_in_flight()
                && let Some(count) = running.get_mut(task.step)
            {
                *count += 1;
            }
        }
        let farm_slots = self
            .workers
            .values()
            .filter(|w| crate::queue::can_run_some_step(job, w))
            .map(|w| w.slots)
            .sum();
        self.eta.estimate(job, &running, farm_slots)
    }
}
