//! Job events into deliveries: the leader reads `job_events` after the
//! cursor, a bounded number at a time (whole batches of blocks,
//! `store::events_after`), and in ONE transaction (fenced like
//! every leader write) inserts a delivery per matching webhook, remembers
//! the jobs' states and advances the cursor. A failover in between repeats
//! the whole batch or none of it; repeated ids are skipped (`ON CONFLICT`).
//! A job's submission is not a job event: `submitted` deliveries are made in
//! the submission's own transaction (`enqueue_submitted`).

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use kiln_proto::v1 as pb;
use kiln_proto::v1::job_event::Event;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::SchedulerError;
use crate::fence::{self, Token};
use crate::job_state::JobState;
use crate::webhooks::event_kind::{EventKind, classify};
use crate::webhooks::signature::delivery_id;
use crate::webhooks::store::{self, NewDelivery, WebhookRow};

/// Events read per fan-out transaction, about (a batch is never split).
pub const BATCH: i64 = 500;

/// One fan-out batch. Returns whether more events wait (false: caught up).
pub async fn fan_out(db: &PgPool, token: Token) -> Result<bool, SchedulerError> {
    let mut tx = db.begin().await?;
    fence::check(&mut tx, token).await?;
    let cursor = store::lock_cursor(&mut tx).await?;
    let hooks = store::all_webhooks(&mut tx).await?;
    if hooks.is_empty() {
        // Nothing to deliver: decoding every event only to find no webhook
        // wants it was a seventh of a busy leader's CPU.
        store::pass_over_events(&mut tx, cursor).await?;
        tx.commit().await?;
        return Ok(false);
    }
    let store::EventsAfter { events, more } = store::events_after(&mut tx, cursor, BATCH).await?;
    let Some(last) = events.last().map(|e| e.event.farm_seq as i64) else {
        return Ok(false);
    };
    let mut jobs: Vec<Uuid> = events.iter().map(|e| e.job_id).collect();
    jobs.sort_unstable();
    jobs.dedup();
    let mut seen: HashMap<Uuid, JobState> = store::job_states(&mut tx, &jobs)
        .await?
        .into_iter()
        .filter_map(|(id, state)| Some((id, JobState::parse(&state)?)))
        .collect();
    let mut changed: HashMap<Uuid, &'static str> = HashMap::new();
    let mut deliveries = Vec::new();
    for row in &events {
        let event = &row.event;
        let last_seen = seen.get(&row.job_id).copied();
        let (kind, now_seen) = classify(event, last_seen);
        if let Some(state) = now_seen
            && Some(state) != last_seen
        {
            seen.insert(row.job_id, state);
            changed.insert(row.job_id, state.as_str());
        }
        let Some(kind) = kind else {
            continue;
        };
        let body = body(kind, row.job_id, &row.owner, event, row.created_at);
        deliveries.extend(matching(&hooks, &row.owner, kind).map(|hook| NewDelivery {
            id: delivery_id(hook.id, row.job_id, &event.seq.to_string()),
            webhook_id: hook.id,
            job_id: row.job_id,
            event: kind,
            body: body.clone(),
        }));
    }
    store::insert_deliveries(&mut tx, &deliveries).await?;
    store::set_job_states(&mut tx, &changed).await?;
    store::set_cursor(&mut tx, last).await?;
    tx.commit().await?;
    if !deliveries.is_empty() {
        tracing::debug!(
            events = events.len(),
            deliveries = deliveries.len(),
            "webhook deliveries made"
        );
    }
    Ok(more)
}

fn matching<'a>(
    hooks: &'a [WebhookRow],
    owner: &'a str,
    kind: EventKind,
) -> impl Iterator<Item = &'a WebhookRow> + 'a {
    hooks.iter().filter(move |hook| hook.wants(owner, kind))
}

/// Makes the `submitted` deliveries of a job being stored, inside the
/// submission's transaction: a job and its deliveries commit together.
pub async fn enqueue_submitted(conn: &mut PgConnection, job: &pb::Job) -> Result<(), sqlx::Error> {
    let Ok(job_id) = Uuid::parse_str(&job.id) else {
        return Ok(());
    };
    let hooks: Vec<WebhookRow> = store::all_webhooks(&mut *conn)
        .await?
        .into_iter()
        .filter(|hook| hook.wants(&job.owner, EventKind::Submitted))
        .collect();
    if hooks.is_empty() {
        return Ok(());
    }
    let event = pb::JobEvent {
        job_id: job.id.clone(),
        event: Some(Event::JobChanged(job.clone())),
        ..Default::default()
    };
    let body = body(EventKind::Submitted, job_id, &job.owner, &event, Utc::now());
    let deliveries: Vec<NewDelivery> = hooks
        .iter()
        .map(|hook| NewDelivery {
            // Position 0: before the job's first event.
            id: delivery_id(hook.id, job_id, "0"),
            webhook_id: hook.id,
            job_id,
            event: EventKind::Submitted,
            body: body.clone(),
        })
        .collect();
    store::insert_deliveries(conn, &deliveries).await
}

/// A delivery's JSON body (Standard Webhooks' `type`, `timestamp`, `data`):
/// the job's record for a change of state, the task for a failed check.
pub fn body(
    kind: EventKind,
    job_id: Uuid,
    owner: &str,
    event: &pb::JobEvent,
    at: DateTime<Utc>,
) -> String {
    let mut data = serde_json::json!({
        "jobId": job_id.to_string(),
        "owner": owner,
        "seq": event.seq,
    });
    match &event.event {
        Some(Event::JobChanged(job)) => {
            data["job"] = serde_json::to_value(job).unwrap_or_default();
        }
        Some(Event::TaskStateChanged(task)) => {
            data["task"] = serde_json::to_value(task).unwrap_or_default();
        }
        _ => {}
    }
    serde_json::json!({
        "type": kind.name(),
        "timestamp": at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        "data": data,
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_body_names_its_type_and_carries_the_job() {
        let job = pb::Job {
            id: Uuid::nil().to_string(),
            state: pb::JobState::Succeeded as i32,
            owner: "alice".into(),
            ..Default::default()
        };
        let event = pb::JobEvent {
            job_id: job.id.clone(),
            seq: 9,
            farm_seq: 30,
            at: None,
            event: Some(Event::JobChanged(job)),
        };
        let at = DateTime::from_timestamp(1_700_000_000, 0).expect("a time");
        let text = body(EventKind::Succeeded, Uuid::nil(), "alice", &event, at);
        let value: serde_json::Value = serde_json::from_str(&text).expect("json");
        assert_eq!(value["type"], "job.succeeded");
        assert_eq!(value["timestamp"], "2023-11-14T22:13:20.000Z");
        assert_eq!(value["data"]["owner"], "alice");
        assert_eq!(value["data"]["job"]["state"], "JOB_STATE_SUCCEEDED");
        assert_eq!(value["data"]["seq"], 9);
    }
}
