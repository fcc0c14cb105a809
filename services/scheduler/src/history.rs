//! What tasks did, read back from the event log (`job_events`): a task's
//! attempts (who ran each, from when to when, how it ended) and the farm's
//! recent task runs for a timeline. Every task state change is an event
//! written with the change itself, so these need no table of their own.
//! The log holds a batch's events of one job as one block
//! (`event_blocks.rs`). A block that does not decode is skipped, as a
//! corrupt event was before blocks: a history with a hole beats none.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Duration, Utc};
use futures::TryStreamExt;
use kiln_proto::v1 as pb;
use kiln_proto::v1::job_event::Event;
use pbjson_types::Timestamp;
use sqlx::PgPool;
use uuid::Uuid;

use crate::event_blocks;
use crate::timestamps::timestamp;

/// Events of one job read for a task's history, at most: a job's log is
/// bounded by its tasks, this by memory.
const MAX_JOB_EVENTS: i64 = 1_000_000;
/// The farm's most recent events a timeline looks through, at most.
const TIMELINE_EVENTS: usize = 100_000;
/// Blocks read per query while looking back through the farm's newest.
const TIMELINE_CHUNK: i64 = 1000;
pub const DEFAULT_SPANS: usize = 2000;
pub const MAX_SPANS: usize = 10_000;

/// A task's attempts, oldest first, from its job's events.
pub async fn task_attempts(
    db: &PgPool,
    job_id: Uuid,
    task_id: Uuid,
) -> Result<Vec<pb::TaskAttempt>, sqlx::Error> {
    let task = task_id.to_string();
    // A job's events are numbered from 1 without gaps: its first
    // MAX_JOB_EVENTS are in the blocks that start at or below that.
    let mut rows = sqlx::query_scalar::<_, Vec<u8>>(
        "SELECT payload FROM job_events WHERE job_id = $1 AND first_seq <= $2 ORDER BY first_seq",
    )
    .bind(job_id)
    .bind(MAX_JOB_EVENTS)
    .fetch(db);
    let mut attempts = Attempts::default();
    let mut read = 0;
    while let Some(payload) = rows.try_next().await? {
        let Some(events) = decoded(job_id, &payload) else {
            continue;
        };
        for event in events {
            read += 1;
            if read > MAX_JOB_EVENTS {
                break;
            }
            if let Some(Event::TaskStateChanged(change)) = &event.event
                && change.task_id == task
            {
                attempts.apply(change, event.at);
            }
        }
    }
    Ok(attempts.into_list())
}

fn decoded(job_id: Uuid, payload: &[u8]) -> Option<Vec<pb::JobEvent>> {
    event_blocks::unpack(payload)
        .inspect_err(
            |err| tracing::warn!(%job_id, error = %err, "skipping a corrupt block of job events"),
        )
        .ok()
}

/// The farm's newest `count` job events, oldest first, with their jobs.
async fn newest_events(
    db: &PgPool,
    count: usize,
) -> Result<Vec<(Uuid, pb::JobEvent)>, sqlx::Error> {
    // Newest blocks first, a chunk at a time, until `count` events are read
    // and the batch last reached is read whole: a batch's blocks overlap in
    // farm_seq, so only all of them give its newest events.
    const FIRST: &str = "SELECT job_id, batch_first, first_farm_seq, payload FROM job_events
         ORDER BY batch_first DESC, first_farm_seq DESC LIMIT $1";
    const OLDER: &str = "SELECT job_id, batch_first, first_farm_seq, payload FROM job_events
         WHERE (batch_first, first_farm_seq) < ($2, $3)
         ORDER BY batch_first DESC, first_farm_seq DESC LIMIT $1";
    const REST_OF_BATCH: &str =
        "SELECT job_id, batch_first, first_farm_seq, payload FROM job_events
         WHERE batch_first = $2 AND first_farm_seq < $3
         ORDER BY batch_first DESC, first_farm_seq DESC LIMIT $1";
    let mut blocks: Vec<(Uuid, Vec<pb::JobEvent>)> = Vec::new();
    let mut read = 0;
    let mut last: Option<(i64, i64)> = None;
    loop {
        let query = match last {
            None => sqlx::query_as(FIRST).bind(TIMELINE_CHUNK),
            Some((batch_first, first_farm_seq)) => {
                sqlx::query_as(if read >= count { REST_OF_BATCH } else { OLDER })
                    .bind(TIMELINE_CHUNK)
                    .bind(batch_first)
                    .bind(first_farm_seq)
            }
        };
        let chunk: Vec<(Uuid, i64, i64, Vec<u8>)> = query.fetch_all(db).await?;
        let exhausted = (chunk.len() as i64) < TIMELINE_CHUNK;
        for (job_id, batch_first, first_farm_seq, payload) in chunk {
            last = Some((batch_first, first_farm_seq));
            if let Some(events) = decoded(job_id, &payload) {
                read += events.len();
                blocks.push((job_id, events));
            }
        }
        if exhausted {
            break;
        }
    }
    let mut events = event_blocks::farm_order_after(blocks, 0);
    events.drain(..events.len().saturating_sub(count));
    Ok(events)
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
    // follows the batch index and stops at the bound whatever the filter.
    let events = newest_events(db, TIMELINE_EVENTS).await?;
    let mut job_ids: Vec<Uuid> = events.iter().map(|(id, _)| *id).collect();
    job_ids.sort_unstable();
    job_ids.dedup();
    let jobs: HashMap<Uuid, (String, String)> = sqlx::query_as::<_, (Uuid, String, String)>(
        "SELECT id, name, owner FROM jobs WHERE id = ANY($1)",
    )
    .bind(&job_ids)
    .fetch_all(db)
    .await?
    .into_iter()
    .map(|(id, name, job_owner)| (id, (name, job_owner)))
    .collect();
    let mut spans: BTreeMap<(String, u32), pb::TaskSpan> = BTreeMap::new();
    for (job_id, event) in events {
        let Some((job_name, job_owner)) = jobs.get(&job_id) else {
            continue;
        };
        if owner.is_some_and(|owner| owner != job_owner) {
            continue;
        }
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
