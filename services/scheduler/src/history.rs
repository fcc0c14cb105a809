//! What tasks did, read back from the event log (`job_events`): a task's
//! attempts (who ran each, from when to when, how it ended) and the farm's
//! recent task runs for a timeline. Every task state change is an event
//! written with the change itself, so these need no table of their own.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Duration, Utc};
use futures::TryStreamExt;
use kiln_proto::v1 as pb;
use kiln_proto::v1::job_event::Event;
use pbjson_types::Timestamp;
use prost::Message;
use sqlx::PgPool;
use uuid::Uuid;

use crate::timestamps::timestamp;

/// Events of one job read for a task's history, at most: a job's log is
/// bounded by its tasks, this by memory.
const MAX_JOB_EVENTS: i64 = 1_000_000;
/// The farm's most recent events a timeline looks through, at most.
const TIMELINE_EVENTS: i64 = 100_000;
pub const DEFAULT_SPANS: usize = 2000;
pub const MAX_SPANS: usize = 10_000;

/// A task's attempts, oldest first, from its job's events.
pub async fn task_attempts(
    db: &PgPool,
    job_id: Uuid,
    task_id: Uuid,
) -> Result<Vec<pb::TaskAttempt>, sqlx::Error> {
    let task = task_id.to_string();
    let mut rows = sqlx::query_scalar::<_, Vec<u8>>(
        "SELECT payload FROM job_events WHERE job_id = $1 ORDER BY seq LIMIT $2",
    )
    .bind(job_id)
    .bind(MAX_JOB_EVENTS)
    .fetch(db);
    let mut attempts = Attempts::default();
    while let Some(payload) = rows.try_next().await? {
        let Ok(event) = pb::JobEvent::decode(payload.as_slice()) else {
            continue;
        };
        if let Some(Event::TaskStateChanged(change)) = &event.event
            && change.task_id == task
        {
            attempts.apply(change, event.at);
        }
    }
    Ok(attempts.into_list())
}

/// The farm's task runs (or one owner's) that ended after `since` or are
/// still going, newest first, at most `limit`.
pub async fn task_spans(
    db: &PgPool,
    owner: Option<&str>,
    since: DateTime<Utc>,
    limit: usize,
) -> Result<Vec<pb::TaskSpan>, sqlx::Error> {
    // The newest events first, a bounded number, then filtered: the scan
    // follows the farm_seq index and stops at the bound whatever the filter.
    let rows: Vec<(Uuid, Vec<u8>, String)> = sqlx::query_as(
        "SELECT e.job_id, e.payload, j.name FROM
           (SELECT job_id, farm_seq, payload FROM job_events ORDER BY farm_seq DESC LIMIT $1) e
         JOIN jobs j ON j.id = e.job_id
         WHERE $2::text IS NULL OR j.owner = $2
         ORDER BY e.farm_seq",
    )
    .bind(TIMELINE_EVENTS)
    .bind(owner)
    .fetch_all(db)
    .await?;
    let mut spans: BTreeMap<(String, u32), pb::TaskSpan> = BTreeMap::new();
    for (job_id, payload, job_name) in rows {
        let Ok(event) = pb::JobEvent::decode(payload.as_slice()) else {
            continue;
        };
        let Some(Event::TaskStateChanged(change)) = &event.event else {
            continue;
        };
        let Some(at) = event.at else { continue };
        let state = pb::TaskState::try_from(change.state).unwrap_or_default();
        let key = (change.task_id.clone(), change.attempt);
        match state {
            pb::TaskState::Dispatched | pb::TaskState::Running => {
                let span = spans.entry(key).or_insert_with(|| pb::TaskSpan {
                    job_id: job_id.to_string(),
                    task_id: change.task_id.clone(),
                    attempt: change.attempt,
                    worker_id: change.worker_id.clone(),
                    step_name: change.step_name.clone(),
                    index: change.index,
                    started_at: Some(at),
                    job_name: job_name.clone(),
                    ..pb::TaskSpan::default()
                });
                span.state = change.state;
            }
            _ => {
                // An end without its start (older than the events read) is
                // left out: the timeline shows runs it can place.
                if let Some(span) = spans.get_mut(&key)
                    && span.ended_at.is_none()
                {
                    span.ended_at = Some(at);
                    span.state = change.state;
                }
            }
        }
    }
    let since = timestamp(since);
    let mut spans: Vec<pb::TaskSpan> = spans
        .into_values()
        .filter(|s| s.ended_at.is_none_or(|end| later(&end, &since)))
        .collect();
    spans.sort_by(|a, b| seconds(&b.started_at).total_cmp(&seconds(&a.started_at)));
    spans.truncate(limit);
    Ok(spans)
}

/// The default start of a timeline: the last hour.
pub fn default_since(now: DateTime<Utc>) -> DateTime<Utc> {
    now - Duration::hours(1)
}

fn later(a: &Timestamp, b: &Timestamp) -> bool {
    (a.seconds, a.nanos) > (b.seconds, b.nanos)
}

fn seconds(at: &Option<Timestamp>) -> f64 {
    at.as_ref()
        .map_or(0.0, |t| t.seconds as f64 + f64::from(t.nanos) / 1e9)
}

/// A task's attempts folded from its state changes.
#[derive(Default)]
struct Attempts {
    by_number: HashMap<u32, pb::TaskAttempt>,
    /// Changes written before events named their attempt count dispatches.
    dispatches: u32,
}

impl Attempts {
    fn apply(&mut self, change: &pb::TaskStateChanged, at: Option<Timestamp>) {
        let state = pb::TaskState::try_from(change.state).unwrap_or_default();
        if state == pb::TaskState::Dispatched {
            self.dispatches += 1;
        }
        let number = if change.attempt > 0 {
            change.attempt
        } else {
            self.dispatches
        };
        if number == 0 {
            return;
        }
        let attempt = self
            .by_number
            .entry(number)
            .or_insert_with(|| pb::TaskAttempt {
                attempt: number,
                ..pb::TaskAttempt::default()
            });
        if !change.worker_id.is_empty() {
            attempt.worker_id = change.worker_id.clone();
        }
        match state {
            pb::TaskState::Dispatched => attempt.dispatched_at = at,
            pb::TaskState::Running => attempt.started_at = at,
            _ => {
                if attempt.ended_at.is_none() {
                    attempt.ended_at = at;
                }
            }
        }
        attempt.state = change.state;
        if !change.message.is_empty() {
            attempt.message = change.message.clone();
        }
    }

    fn into_list(self) -> Vec<pb::TaskAttempt> {
        let mut list: Vec<pb::TaskAttempt> = self.by_number.into_values().collect();
        list.sort_by_key(|a| a.attempt);
        list
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(state: pb::TaskState, attempt: u32, worker: &str) -> pb::TaskStateChanged {
        pb::TaskStateChanged {
            task_id: "t".into(),
            state: state as i32,
            attempt,
            worker_id: worker.into(),
            ..Default::default()
        }
    }

    fn at(seconds: i64) -> Option<Timestamp> {
        Some(Timestamp { seconds, nanos: 0 })
    }

    #[test]
    fn attempts_fold_from_state_changes_with_their_times() {
        let mut attempts = Attempts::default();
        attempts.apply(&change(pb::TaskState::Dispatched, 1, "a"), at(10));
        attempts.apply(&change(pb::TaskState::Running, 1, "a"), at(11));
        let mut failed = change(pb::TaskState::WaitingRetry, 1, "a");
        failed.message = "exit 1".into();
        attempts.apply(&failed, at(20));
        attempts.apply(&change(pb::TaskState::Dispatched, 2, "b"), at(23));
        attempts.apply(&change(pb::TaskState::Running, 2, "b"), at(24));
        let list = attempts.into_list();
        assert_eq!(list.len(), 2);
        assert_eq!(list[0].worker_id, "a");
        assert_eq!(list[0].ended_at, at(20));
        assert_eq!(list[0].message, "exit 1");
        assert_eq!(list[0].state, pb::TaskState::WaitingRetry as i32);
        assert_eq!(list[1].started_at, at(24));
        assert_eq!(list[1].ended_at, None, "still running");
    }

    #[test]
    fn changes_without_an_attempt_number_count_dispatches() {
        let mut attempts = Attempts::default();
        attempts.apply(&change(pb::TaskState::Dispatched, 0, "a"), at(1));
        attempts.apply(&change(pb::TaskState::Pending, 0, "a"), at(2));
        attempts.apply(&change(pb::TaskState::Dispatched, 0, "b"), at(3));
        let list = attempts.into_list();
        assert_eq!(
            list.iter().map(|a| a.attempt).collect::<Vec<_>>(),
            vec![1, 2]
        );
    }
}
