//! Per-owner quotas as plain data: what each owner may have, what a
//! refusal says, and whether one more job fits. `quotas.rs` applies them in
//! the core; this file depends on nothing of the core's state, so the
//! command types can name a refusal without a cycle.

use std::collections::HashMap;
use std::time::Instant;

use crate::core::batch::RequestId;
use crate::core::pick_order::RunningCaps;

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
    pub(crate) fn reserve(
        &mut self,
        request: RequestId,
        owner: String,
        tasks: u64,
        until: Instant,
    ) {
        self.by_request.insert(
            request,
            Reservation {
                owner,
                tasks,
                until,
            },
        );
    }

    /// Drops the reservation of `request`; false when it had lapsed.
    pub(crate) fn release(&mut self, request: RequestId) -> bool {
        self.by_request.remove(&request).is_some()
    }

    pub(crate) fn of(&self, owner: &str) -> Usage {
        self.by_request
            .values()
            .filter(|r| r.owner == owner)
            .fold(Usage::default(), |usage, r| Usage {
                jobs: usage.jobs + 1,
                tasks: usage.tasks + r.tasks,
            })
    }

    pub(crate) fn expire(&mut self, now: Instant) {
        self.by_request.retain(|_, r| r.until > now);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

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
