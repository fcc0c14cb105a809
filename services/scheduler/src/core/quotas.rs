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

use std::collections::HashMap;
use std::time::{Duration, Instant};

use uuid::Uuid;

use crate::core::Core;
use crate::core::batch::{Effect, RequestId};
use crate::core::command::Refusal;
use crate::core::pick_order::RunningCaps;

/// How long room reserved for a submission waits for its job.
pub const RESERVATION_TTL: Duration = Duration::from_secs(120);

/// What each owner may have; 0 means no limit.
#[derive(Debug, Clone, Default)]
pub struct QuotaSettings {
    /// Unfinished jobs per owner (any state but succeeded, failed, cancelled).
    pub max_unfinished_jobs: u64,
    /// Unfinished tasks per owner, over all its jobs.
    pub max_queued_tasks: u64,
    /// Tasks of one owner in flight at once: its share cap.
    pub running: RunningCaps,
}

/// A submission over one of its owner's quotas; the message names the quota
/// (as the scheduler's flag) and the numbers.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuotaExceeded {
    #[error(
        "quota max-unfinished-jobs-per-owner: {owner} has {has} unfinished jobs (submissions in progress included), the limit is {limit}"
    )]
    Jobs { owner: String, has: u64, limit: u64 },
    #[error(
        "quota max-queued-tasks-per-owner: {owner} has {has} unfinished tasks (submissions in progress included) and this job adds {adds}, the limit is {limit}"
    )]
    Tasks {
        owner: String,
        has: u64,
        adds: u64,
        limit: u64,
    },
}

/// What an owner has, or has reserved.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub jobs: u64,
    pub tasks: u64,
}

/// Whether one more job of `tasks` tasks fits next to `usage`.
pub fn admits(
    settings: &QuotaSettings,
    owner: &str,
    usage: Usage,
    tasks: u64,
) -> Result<(), QuotaExceeded> {
    let limit = settings.max_unfinished_jobs;
    if limit > 0 && usage.jobs + 1 > limit {
        return Err(QuotaExceeded::Jobs {
            owner: owner.to_owned(),
            has: usage.jobs,
            limit,
        });
    }
    let limit = settings.max_queued_tasks;
    if limit > 0 && usage.tasks.saturating_add(tasks) > limit {
        return Err(QuotaExceeded::Tasks {
            owner: owner.to_owned(),
            has: usage.tasks,
            adds: tasks,
            limit,
        });
    }
    Ok(())
}

struct Reservation {
    owner: String,
    tasks: u64,
    until: Instant,
}

/// Room reserved for submissions whose jobs have not arrived yet.
#[derive(Default)]
pub struct Reservations {
    by_request: HashMap<RequestId, Reservation>,
}

impl Reservations {
    fn of(&self, owner: &str) -> Usage {
        self.by_request
            .values()
            .filter(|r| r.owner == owner)
            .fold(Usage::default(), |usage, r| Usage {
                jobs: usage.jobs + 1,
                tasks: usage.tasks + r.tasks,
            })
    }

    fn expire(&mut self, now: Instant) {
        self.by_request.retain(|_, r| r.until > now);
    }
}

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
        self.reservations.by_request.insert(
            request,
            Reservation {
                owner,
                tasks,
                until,
            },
        );
        self.batch.effects.push(Effect::Answer(request));
        Ok(())
    }

    /// The job admitted under `admission` arrived: it counts itself now.
    pub(super) fn admitted(&mut self, admission: RequestId, job_id: Uuid) {
        if self.reservations.by_request.remove(&admission).is_none() {
            tracing::debug!(job_id = %job_id, "a job arrived after its reservation lapsed");
        }
    }

    pub(super) fn expire_reservations(&mut self) {
        self.reservations.expire(self.now.instant);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> QuotaSettings {
        QuotaSettings {
            max_unfinished_jobs: 2,
            max_queued_tasks: 100,
            running: RunningCaps::default(),
        }
    }

    #[test]
    fn a_job_fits_until_a_quota_is_full() {
        let s = settings();
        let usage = |jobs, tasks| Usage { jobs, tasks };
        assert_eq!(admits(&s, "a", usage(0, 0), 100), Ok(()));
        assert_eq!(admits(&s, "a", usage(1, 40), 60), Ok(()));
        assert_eq!(
            admits(&s, "a", usage(1, 40), 61),
            Err(QuotaExceeded::Tasks {
                owner: "a".into(),
                has: 40,
                adds: 61,
                limit: 100
            })
        );
        let full = admits(&s, "a", usage(2, 0), 1).expect_err("two jobs already");
        assert!(
            full.to_string()
                .starts_with("quota max-unfinished-jobs-per-owner: a has 2"),
            "{full}"
        );
        let unlimited = QuotaSettings::default();
        assert_eq!(admits(&unlimited, "a", usage(1_000, u64::MAX), 5), Ok(()));
    }

    #[test]
    fn reservations_count_for_their_owner_until_they_lapse() {
        let now = Instant::now();
        let mut reservations = Reservations::default();
        for (id, owner, tasks) in [(1, "a", 10), (2, "a", 5), (3, "b", 7)] {
            reservations.by_request.insert(
                RequestId(id),
                Reservation {
                    owner: owner.into(),
                    tasks,
                    until: now + Duration::from_secs(id),
                },
            );
        }
        assert_eq!(reservations.of("a"), Usage { jobs: 2, tasks: 15 });
        reservations.expire(now + Duration::from_secs(1));
        assert_eq!(reservations.of("a"), Usage { jobs: 1, tasks: 5 });
        assert_eq!(reservations.of("b"), Usage { jobs: 1, tasks: 7 });
    }
}
