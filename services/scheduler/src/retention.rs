//! Finished jobs kept for a while, then deleted: the leader sweeps jobs that
//! finished longer ago than `--delete-finished-jobs-after-seconds`, and the
//! foreign keys take their steps, tasks, outputs, events and idempotency
//! records with them (webhook deliveries keep their own week). A farm that runs for months then holds its recent
//! history and its queue, not every task it ever ran; the `tasks` table and
//! its indexes stay the same size under a steady load, and autovacuum reuses
//! the space deleted jobs leave. Off by default: a job's record is the
//! studio's history, and deleting it is for the farm's admin to choose. The
//! assets service keeps a finished job's files for its own
//! `KILN_RETAIN_FINISHED_SECONDS`; once the job is deleted here, nothing
//! names its files and they are collected after that.
//!
//! A user's retry reopens a finished job from Postgres (`loader::load_one`),
//! and the core writes it back a moment later. A sweep between the two would
//! leave the core writing into a deleted job, so a job stops being
//! retryable a margin before it may be deleted ([`JobRetention::may_reopen`]).

use std::time::Duration;

use sqlx::PgPool;

use crate::scheduler_metrics;

/// Jobs one statement deletes. Each takes its tasks with it (up to
/// `KILN_MAX_TASKS_PER_JOB`), so this bounds one transaction's rows.
const JOBS_PER_STATEMENT: i64 = 10;
/// Statements one sweep runs at most; the rest waits for the next sweep, so
/// a first sweep over years of history does not hold Postgres for minutes.
const STATEMENTS_PER_SWEEP: usize = 1_000;
/// Longest gap between sweeps.
const MAX_SWEEP_EVERY: Duration = Duration::from_secs(300);
/// Longest margin before deletion in which a job can no longer be retried.
const MAX_REOPEN_MARGIN: Duration = Duration::from_secs(3600);

/// How long finished jobs are kept. Plain data, unit-tested without I/O.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JobRetention {
    keep: Option<Duration>,
}

impl JobRetention {
    /// Finished jobs deleted `seconds` after they finished; 0 keeps them.
    pub fn after_seconds(seconds: u64) -> Self {
        Self {
            keep: (seconds > 0).then(|| Duration::from_secs(seconds)),
        }
    }

    /// Finished jobs are never deleted.
    pub fn forever() -> Self {
        Self { keep: None }
    }

    /// How long a finished job is kept, if it is deleted at all.
    pub fn keep(&self) -> Option<Duration> {
        self.keep
    }

    /// How often the leader sweeps: a tenth of the retention, from one
    /// second to five minutes. A job outlives its retention by at most that.
    fn sweep_every(&self) -> Option<Duration> {
        self.keep
            .map(|keep| (keep / 10).clamp(Duration::from_secs(1), MAX_SWEEP_EVERY))
    }

    /// Whether a job that finished `age` ago may be reopened by a retry:
    /// not in the last stretch before it may be deleted (half the
    /// retention, at most an hour), which is far longer than a retry takes
    /// from loading the job to writing it back.
    pub fn may_reopen(&self, age: Duration) -> bool {
        match self.keep {
            None => true,
            Some(keep) => {
                let margin = (keep / 2).min(MAX_REOPEN_MARGIN);
                age.saturating_add(margin) < keep
            }
        }
    }
}

/// Deletes up to $2 jobs that finished more than $1 seconds ago, oldest
/// first, except:
/// - a job an unfinished job waits for (`depends_on_jobs`): a leader
///   loading the waiting job would count a missing dependency as one that
///   never succeeded, and fail it;
/// - a job with events the webhook loop has not turned into deliveries yet.
///
/// Before the rows go, `farm_seq_floor` is raised to their events' highest
/// farm position (see migration 0017). The outer condition is checked again
/// on each row: a job reopened while the statement waited for its lock has
/// no `finished_at` any more and stays.
const DELETE_OLDEST: &str = "
    WITH doomed AS (
        SELECT j.id FROM jobs j
        WHERE j.finished_at < now() - make_interval(secs => $1)
          AND NOT EXISTS (SELECT 1 FROM jobs w
                          WHERE w.finished_at IS NULL AND j.id = ANY (w.depends_on_jobs))
          AND NOT EXISTS (SELECT 1 FROM job_events e
                          WHERE e.job_id = j.id
                            AND e.last_farm_seq > (SELECT farm_seq FROM webhook_cursor))
        ORDER BY j.finished_at LIMIT $2
    ), floor AS (
        UPDATE farm_seq_floor SET farm_seq = greatest(farm_seq,
            (SELECT coalesce(max(e.last_farm_seq), 0) FROM job_events e
             WHERE e.job_id IN (SELECT id FROM doomed)))
    )
    DELETE FROM jobs
    WHERE id IN (SELECT id FROM doomed)
      AND finished_at < now() - make_interval(secs => $1)";

/// Sweeps while this process leads (the caller aborts it when it stops).
/// Deleting jobs that finished long ago needs no fence: a deposed leader
/// doing it deletes what the new one would.
pub async fn run(db: PgPool, retention: JobRetention) {
    let (Some(keep), Some(every)) = (retention.keep(), retention.sweep_every()) else {
        return;
    };
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        match sweep(&db, keep).await {
            Ok(0) => {}
            Ok(deleted) => tracing::info!(
                deleted,
                kept_seconds = keep.as_secs(),
                "deleted jobs finished longer ago than the retention"
            ),
            Err(err) => tracing::warn!(error = %err, "sweeping finished jobs failed; trying again"),
        }
    }
}

/// Deletes jobs that finished more than `keep` ago, a few at a time, and
/// says how many.
async fn sweep(db: &PgPool, keep: Duration) -> Result<u64, sqlx::Error> {
    let mut deleted = 0;
    for _ in 0..STATEMENTS_PER_SWEEP {
        let done = sqlx::query(DELETE_OLDEST)
            .bind(keep.as_secs_f64())
            .bind(JOBS_PER_STATEMENT)
            .execute(db)
            .await?
            .rows_affected();
        deleted += done;
        metrics::counter!(scheduler_metrics::JOBS_DELETED).increment(done);
        if done < JOBS_PER_STATEMENT as u64 {
            break;
        }
    }
    Ok(deleted)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: Duration = Duration::from_secs(86_400);

    #[test]
    fn zero_keeps_finished_jobs_forever() {
        let forever = JobRetention::after_seconds(0);
        assert_eq!(forever, JobRetention::forever());
        assert_eq!(forever.sweep_every(), None);
        assert!(forever.may_reopen(DAY * 10_000));
    }

    #[test]
    fn sweeps_come_every_tenth_of_the_retention_within_bounds() {
        let sweep = |secs| JobRetention::after_seconds(secs).sweep_every();
        assert_eq!(sweep(2), Some(Duration::from_secs(1)));
        assert_eq!(sweep(600), Some(Duration::from_secs(60)));
        assert_eq!(sweep(30 * 86_400), Some(MAX_SWEEP_EVERY));
    }

    #[test]
    fn a_job_near_its_deletion_can_no_longer_be_reopened() {
        let month = JobRetention::after_seconds(30 * 86_400);
        assert!(month.may_reopen(DAY * 29));
        // Within the last hour before it may be deleted.
        assert!(!month.may_reopen(DAY * 30 - Duration::from_secs(1800)));
        assert!(!month.may_reopen(DAY * 31));
        // A short retention keeps half of it retryable.
        let short = JobRetention::after_seconds(10);
        assert!(short.may_reopen(Duration::from_secs(4)));
        assert!(!short.may_reopen(Duration::from_secs(6)));
    }
}
