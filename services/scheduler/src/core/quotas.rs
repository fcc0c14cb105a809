//! Per-owner quotas the core enforces, so one tenant cannot fill the farm:
//! how many unfinished jobs and unfinished ("queued") tasks an owner may
//! have, checked when a job is admitted, and how many of its tasks may be
//! in flight at once (its share cap, which the pick order applies:
//! `pick_order.rs`).
//!
//! Admission reserves room for a submission before its rows are written,
//! so two submissions racing each other cannot both pass a quota that has
//! room for one; the job's arrival in the queue takes the reservation's
//! place, and a reservation whose job never arrives (its submission failed)
//! lapses after [`RESERVATION_TTL`].

use std::time::Duration;

use uuid::Uuid;

use crate::core::Core;
use crate::core::batch::{Effect, RequestId};
use crate::core::command::Refusal;
use crate::core::quota_policy::{Usage, admits};

/// How long room reserved for a submission waits for its job.
pub const RESERVATION_TTL: Duration = Duration::from_secs(120);

impl Core {
    /// What `owner` has in the queue now, with what is reserved for it.
    pub fn usage_of(&self, owner: &str) -> Usage {
        let queued = self
            .jobs
            .values()
            .filter(|job| job.owner == owner && !job.state.is_final())
            .fold(Usage::default(), |usage, job| Usage {
                jobs: usage.jobs + 1,
                tasks: usage.tasks + (job.counts.waiting + job.counts.in_flight).max(0) as u64,
            });
        let reserved = self.reservations.of(owner);
        Usage {
            jobs: queued.jobs + reserved.jobs,
            tasks: queued.tasks + reserved.tasks,
        }
    }

    /// Reserves room for a job of `tasks` tasks of `owner`, or refuses it.
    pub(super) fn admit(
        &mut self,
        request: RequestId,
        owner: String,
        tasks: u64,
    ) -> Result<(), Refusal> {
        admits(&self.quotas, &owner, self.usage_of(&owner), tasks).map_err(Refusal::Quota)?;
        let until = self.now.instant + RESERVATION_TTL;
        self.reservations.reserve(request, owner, tasks, until);
        self.batch.effects.push(Effect::Answer(request));
        Ok(())
    }

    /// The job admitted under `admission` arrived: it counts itself now.
    pub(super) fn admitted(&mut self, admission: RequestId, job_id: Uuid) {
        if !self.reservations.release(admission) {
            tracing::debug!(job_id = %job_id, "a job arrived after its reservation lapsed");
        }
    }

    pub(super) fn expire_reservations(&mut self) {
        self.reservations.expire(self.now.instant);
    }
}
