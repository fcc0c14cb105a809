//! Event numbering: the farm-wide position every event gets (`farm_seq`),
//! and how often progress and job records are worth an event at all.
//!
//! Three counters are easy to confuse; each has its own name here:
//! - a job's *submission order* (`JobEntry::submission_order`) breaks ties
//!   in the pick order and is never written;
//! - a job's *event number* (`JobEntry::last_event_seq`, `JobEvent.seq`)
//!   numbers that job's events from 1, gap-free;
//! - the *farm position* (`JobEvent.farm_seq`) numbers every event of every
//!   job and of the farm, gap-free, for WatchFarm.
//!
//! The core is the only writer, so numbering in memory is gap-free; a new
//! leader starts from the maxima in Postgres (`loader.rs`, `event_replay.rs`).

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use uuid::Uuid;

/// Least time between two progress events of one task, unless its frame or
/// status line changes.
pub const PROGRESS_INTERVAL: Duration = Duration::from_secs(1);
/// Least time between two job records of one job while only its counts move;
/// a change of state always goes out at once.
pub const RECORD_INTERVAL: Duration = Duration::from_millis(500);
/// Tasks and jobs remembered for throttling before old entries are swept.
const THROTTLE_MEMORY: usize = 100_000;

/// The last progress event of a task that went out.
#[derive(Debug)]
struct SentProgress {
    at: Instant,
    frame: Option<i64>,
    status: Box<str>,
}

#[derive(Debug, Default)]
pub struct EventNumbering {
    /// The last farm position handed out.
    farm_position: u64,
    /// When each task's last progress event went out, with its frame and
    /// status line.
    progress_sent: HashMap<Uuid, SentProgress>,
    /// When each job's record last went out.
    record_sent: HashMap<Uuid, Instant>,
    /// Jobs whose counts moved while their record was throttled.
    records_due: HashSet<Uuid>,
}

impl EventNumbering {
    /// Continues after the last farm position already written.
    pub fn starting_after(farm_position: u64) -> Self {
        Self {
            farm_position,
            ..Self::default()
        }
    }

    pub fn farm_position(&self) -> u64 {
        self.farm_position
    }

    /// The next farm position.
    pub fn next_farm_position(&mut self) -> u64 {
        self.farm_position += 1;
        self.farm_position
    }

    /// Whether a task's progress is worth an event now: at most once a
    /// second per task, or at once when it moves to another frame or says
    /// something new on its status line (a status is rare and meant to be
    /// read, so none is lost to the throttle). Notes it as sent when it is.
    pub fn progress_due(
        &mut self,
        task_id: Uuid,
        frame: Option<i64>,
        status: &str,
        now: Instant,
    ) -> bool {
        if let Some(last) = self.progress_sent.get(&task_id)
            && last.frame == frame
            && *last.status == *status
            && now.saturating_duration_since(last.at) < PROGRESS_INTERVAL
        {
            return false;
        }
        if self.progress_sent.len() >= THROTTLE_MEMORY {
            self.progress_sent
                .retain(|_, last| now.saturating_duration_since(last.at) < PROGRESS_INTERVAL);
        }
        let sent = SentProgress {
            at: now,
            frame,
            status: status.into(),
        };
        self.progress_sent.insert(task_id, sent);
        true
    }

    /// Whether the job's record is worth an event now: always when its state
    /// changed, otherwise at most every RECORD_INTERVAL (a held-back record
    /// is due later, see `due_records`). Notes it as sent when it is.
    pub fn record_due(&mut self, job_id: Uuid, state_changed: bool, now: Instant) -> bool {
        if !state_changed
            && self
                .record_sent
                .get(&job_id)
                .is_some_and(|at| now.saturating_duration_since(*at) < RECORD_INTERVAL)
        {
            self.records_due.insert(job_id);
            return false;
        }
        if self.record_sent.len() >= THROTTLE_MEMORY {
            self.record_sent
                .retain(|_, at| now.saturating_duration_since(*at) < RECORD_INTERVAL);
        }
        self.record_sent.insert(job_id, now);
        self.records_due.remove(&job_id);
        true
    }

    /// Takes the jobs whose held-back records may go out now.
    pub fn take_due_records(&mut self, now: Instant) -> Vec<Uuid> {
        let due: Vec<Uuid> = self
            .records_due
            .iter()
            .filter(|id| {
                self.record_sent
                    .get(id)
                    .is_none_or(|at| now.saturating_duration_since(*at) >= RECORD_INTERVAL)
            })
            .copied()
            .collect();
        for job_id in &due {
            self.records_due.remove(job_id);
        }
        due
    }
}
