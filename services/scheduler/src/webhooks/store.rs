//! Webhooks, their deliveries and the fan-out cursor in Postgres
//! (migration 0014).

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use kiln_proto::v1 as pb;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::event_blocks;
use crate::event_replay;
use crate::timestamps::timestamp;
use crate::webhooks::event_kind::EventKind;

/// A webhook as stored.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct WebhookRow {
    pub id: Uuid,
    pub owner: Option<String>,
    pub created_by: String,
    pub url: String,
    pub events: Vec<String>,
    pub paused: bool,
    pub failure_streak: i32,
    pub created_at: DateTime<Utc>,
}

impl WebhookRow {
    /// Whether this webhook hears about `kind` of a job of `owner`.
    pub fn wants(&self, owner: &str, kind: EventKind) -> bool {
        self.owner.as_deref().is_none_or(|mine| mine == owner)
            && self.events.iter().any(|name| name == kind.name())
    }

    pub fn to_proto(&self) -> pb::Webhook {
        pb::Webhook {
            id: self.id.to_string(),
            url: self.url.clone(),
            events: self
                .events
                .iter()
                .filter_map(|name| EventKind::parse(name))
                .map(|kind| kind.to_proto() as i32)
                .collect(),
            owner: self.owner.clone().unwrap_or_default(),
            created_by: self.created_by.clone(),
            paused: self.paused,
            failure_streak: self.failure_streak.max(0) as u32,
            created_at: Some(timestamp(self.created_at)),
        }
    }
}

/// The columns of a [`WebhookRow`], for `concat!` (queries are static text).
macro_rules! webhook_columns {
    () => {
        "id, owner, created_by, url, events, paused, failure_streak, created_at"
    };
}

/// What a registration stores.
pub struct NewWebhook<'a> {
    /// `None`: farm-wide.
    pub owner: Option<&'a str>,
    pub created_by: &'a str,
    pub url: &'a str,
    pub secret: &'a str,
    pub events: &'a [EventKind],
}

/// Stores a webhook unless `created_by` already has `max_per_owner`.
/// Returns `None` when over that bound.
pub async fn create(
    db: &PgPool,
    hook: NewWebhook<'_>,
    max_per_owner: i64,
) -> Result<Option<WebhookRow>, sqlx::Error> {
    let mut tx = db.begin().await?;
    // One registration of an owner at a time, so the bound holds.
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext('webhooks:' || $1))")
        .bind(hook.created_by)
        .execute(&mut *tx)
        .await?;
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM webhooks WHERE created_by = $1")
        .bind(hook.created_by)
        .fetch_one(&mut *tx)
        .await?;
    if count >= max_per_owner {
        return Ok(None);
    }
    let names: Vec<&str> = hook.events.iter().map(|kind| kind.name()).collect();
    let row: WebhookRow = sqlx::query_as(concat!(
        "INSERT INTO webhooks (id, owner, created_by, url, secret, events)
         VALUES ($1, $2, $3, $4, $5, $6) RETURNING ",
        webhook_columns!()
    ))
    .bind(Uuid::new_v4())
    .bind(hook.owner)
    .bind(hook.created_by)
    .bind(hook.url)
    .bind(hook.secret)
    .bind(names)
    .fetch_one(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(Some(row))
}

pub async fn get(db: &PgPool, id: Uuid) -> Result<Option<WebhookRow>, sqlx::Error> {
    sqlx::query_as(concat!(
        "SELECT ",
        webhook_columns!(),
        " FROM webhooks WHERE id = $1"
    ))
    .bind(id)
    .fetch_optional(db)
    .await
}

/// Webhooks oldest first after `after` (created_at, id); `creator` limits
/// them to one user's (`None`: every webhook, for admins).
pub async fn list(
    db: &PgPool,
    creator: Option<&str>,
    after: Option<(DateTime<Utc>, Uuid)>,
    limit: i64,
) -> Result<Vec<WebhookRow>, sqlx::Error> {
    let (after_time, after_id) = after.unzip();
    sqlx::query_as(concat!(
        "SELECT ",
        webhook_columns!(),
        " FROM webhooks
         WHERE ($1::text IS NULL OR created_by = $1 OR owner = $1)
           AND ($2::timestamptz IS NULL OR (created_at, id) > ($2, $3))
         ORDER BY created_at, id LIMIT $4"
    ))
    .bind(creator)
    .bind(after_time)
    .bind(after_id)
    .bind(limit)
    .fetch_all(db)
    .await
}

pub async fn delete(db: &PgPool, id: Uuid) -> Result<Option<WebhookRow>, sqlx::Error> {
    sqlx::query_as(concat!(
        "DELETE FROM webhooks WHERE id = $1 RETURNING ",
        webhook_columns!()
    ))
    .bind(id)
    .fetch_optional(db)
    .await
}

/// Unpauses a webhook; its waiting deliveries are due now and get a fresh
/// retry window.
pub async fn resume(
    db: &PgPool,
    id: Uuid,
    window: std::time::Duration,
) -> Result<Option<WebhookRow>, sqlx::Error> {
    let mut tx = db.begin().await?;
    let row: Option<WebhookRow> = sqlx::query_as(concat!(
        "UPDATE webhooks SET paused = false, failure_streak = 0 WHERE id = $1
         RETURNING ",
        webhook_columns!()
    ))
    .bind(id)
    .fetch_optional(&mut *tx)
    .await?;
    sqlx::query(
        "UPDATE webhook_deliveries
         SET next_attempt_at = now(), give_up_at = now() + make_interval(secs => $2)
         WHERE webhook_id = $1 AND state = 'pending'",
    )
    .bind(id)
    .bind(window.as_secs_f64())
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(row)
}

#[derive(Debug, sqlx::FromRow)]
pub struct DeliveryRow {
    pub id: String,
    pub webhook_id: Uuid,
    pub job_id: Uuid,
    pub event: String,
    pub body: String,
    pub state: String,
    pub attempts: i32,
    pub last_status: i32,
    pub last_error: String,
    pub created_at: DateTime<Utc>,
    pub next_attempt_at: DateTime<Utc>,
}

impl DeliveryRow {
    pub fn to_proto(&self) -> pb::Delivery {
        let state = match self.state.as_str() {
            "pending" => pb::DeliveryState::Pending,
            "delivered" => pb::DeliveryState::Delivered,
            "failed" => pb::DeliveryState::Failed,
            _ => pb::DeliveryState::Unspecified,
        };
        pb::Delivery {
            id: self.id.clone(),
            webhook_id: self.webhook_id.to_string(),
            job_id: self.job_id.to_string(),
            event: EventKind::parse(&self.event).map_or(0, |kind| kind.to_proto() as i32),
            state: state as i32,
            attempts: self.attempts.max(0) as u32,
            last_status: self.last_status.max(0) as u32,
            last_error: self.last_error.clone(),
            created_at: Some(timestamp(self.created_at)),
            next_attempt_at: (state == pb::DeliveryState::Pending)
                .then(|| timestamp(self.next_attempt_at)),
            body: self.body.clone(),
        }
    }
}

/// A webhook's deliveries, newest first, after `after` (created_at, id).
pub async fn list_deliveries(
    db: &PgPool,
    webhook: Uuid,
    after: Option<(DateTime<Utc>, String)>,
    limit: i64,
) -> Result<Vec<DeliveryRow>, sqlx::Error> {
    let (after_time, after_id) = after.unzip();
    sqlx::query_as(
        "SELECT id, webhook_id, job_id, event, body, state, attempts, last_status, last_error,
                created_at, next_attempt_at
         FROM webhook_deliveries
         WHERE webhook_id = $1
           AND ($2::timestamptz IS NULL OR (created_at, id) < ($2, $3))
         ORDER BY created_at DESC, id DESC LIMIT $4",
    )
    .bind(webhook)
    .bind(after_time)
    .bind(after_id)
    .bind(limit)
    .fetch_all(db)
    .await
}

/// Every webhook (few: bounded per user), for matching events.
pub async fn all_webhooks(conn: &mut PgConnection) -> Result<Vec<WebhookRow>, sqlx::Error> {
    sqlx::query_as(concat!("SELECT ", webhook_columns!(), " FROM webhooks"))
        .fetch_all(conn)
        .await
}

/// A delivery to be made.
#[derive(Debug, Clone)]
pub struct NewDelivery {
    pub id: String,
    pub webhook_id: Uuid,
    pub job_id: Uuid,
    pub event: EventKind,
    pub body: String,
}

/// Inserts deliveries, skipping any made already (same id).
pub async fn insert_deliveries(
    conn: &mut PgConnection,
    deliveries: &[NewDelivery],
) -> Result<(), sqlx::Error> {
    if deliveries.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO webhook_deliveries (id, webhook_id, job_id, event, body)
         SELECT d.id, d.webhook_id, d.job_id, d.event, d.body
         FROM UNNEST($1::text[], $2::uuid[], $3::uuid[], $4::text[], $5::text[])
              AS d(id, webhook_id, job_id, event, body)
         ON CONFLICT (id) DO NOTHING",
    )
    .bind(deliveries.iter().map(|d| d.id.clone()).collect::<Vec<_>>())
    .bind(deliveries.iter().map(|d| d.webhook_id).collect::<Vec<_>>())
    .bind(deliveries.iter().map(|d| d.job_id).collect::<Vec<_>>())
    .bind(
        deliveries
            .iter()
            .map(|d| d.event.name())
            .collect::<Vec<_>>(),
    )
    .bind(
        deliveries
            .iter()
            .map(|d| d.body.clone())
            .collect::<Vec<_>>(),
    )
    .execute(conn)
    .await?;
    Ok(())
}

/// A stored job event, with its job's owner and when it was written.
#[derive(Debug, Clone)]
pub struct StoredEvent {
    pub job_id: Uuid,
    pub owner: String,
    pub created_at: DateTime<Utc>,
    pub event: pb::JobEvent,
}

/// Job events after a farm position, oldest first.
#[derive(Debug, Default)]
pub struct EventsAfter {
    pub events: Vec<StoredEvent>,
    /// Whether events may follow the last.
    pub more: bool,
}

/// The cursor, locked until the transaction ends: one fan-out at a time.
pub async fn lock_cursor(conn: &mut PgConnection) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT farm_seq FROM webhook_cursor FOR UPDATE")
        .fetch_one(conn)
        .await
}

pub async fn set_cursor(conn: &mut PgConnection, farm_seq: i64) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE webhook_cursor SET farm_seq = $1")
        .bind(farm_seq)
        .execute(conn)
        .await?;
    Ok(())
}

/// With no webhook to deliver to, moves the cursor past every event after
/// `after` without reading them: only which jobs they touched, and those
/// jobs' states now, are kept, so a webhook created later judges its first
/// events against the states they follow (a running job's next record is
/// not its start). One statement is one snapshot, so the states and the
/// cursor agree; it reads no payload, so it is not paged. (Cursor and
/// states reach the end together: a state ahead of the cursor could make a
/// later event look like a new start.)
pub async fn pass_over_events(conn: &mut PgConnection, after: i64) -> Result<(), sqlx::Error> {
    sqlx::query(
        "WITH passed AS (
             SELECT job_id, last_farm_seq FROM job_events
             WHERE batch_first >= COALESCE(
                       (SELECT max(batch_first) FROM job_events WHERE batch_first <= $1), 0)
               AND last_farm_seq > $1),
         states AS (
             INSERT INTO webhook_job_states (job_id, state)
             SELECT j.id, j.state FROM jobs j WHERE j.id IN (SELECT job_id FROM passed)
             ON CONFLICT (job_id) DO UPDATE SET state = EXCLUDED.state
             WHERE webhook_job_states.state <> EXCLUDED.state)
         UPDATE webhook_cursor
         SET farm_seq = GREATEST(farm_seq, (SELECT max(last_farm_seq) FROM passed))
         WHERE EXISTS (SELECT 1 FROM passed)",
    )
    .bind(after)
    .execute(conn)
    .await?;
    Ok(())
}

/// Job events after farm position `after`, oldest first, about `limit`:
/// whole batches of blocks (`event_replay::batch_window`), so more when a
/// batch is larger. A block that does not decode is skipped, as a corrupt
/// event was before blocks: one bad row must not stop every webhook.
pub async fn events_after(
    conn: &mut PgConnection,
    after: i64,
    limit: i64,
) -> Result<EventsAfter, sqlx::Error> {
    let Some(window) = event_replay::batch_window(&mut *conn, after, limit).await? else {
        return Ok(EventsAfter::default());
    };
    let rows: Vec<(Uuid, Vec<u8>, DateTime<Utc>, String)> = sqlx::query_as(
        "SELECT e.job_id, e.payload, e.created_at, j.owner
         FROM job_events e JOIN jobs j ON j.id = e.job_id
         WHERE e.batch_first BETWEEN $1 AND $2",
    )
    .bind(window.from)
    .bind(window.to)
    .fetch_all(&mut *conn)
    .await?;
    let beyond = event_replay::batch_after(&mut *conn, window.to).await?;
    let blocks = rows
        .into_iter()
        .filter_map(
            |(job_id, payload, created_at, owner)| match event_blocks::unpack(&payload) {
                Ok(events) => Some(((job_id, created_at, owner), events)),
                Err(err) => {
                    tracing::warn!(%job_id, error = %err, "skipping a corrupt block of job events");
                    None
                }
            },
        )
        .collect();
    let events = event_blocks::farm_order_after(blocks, after.max(0) as u64)
        .into_iter()
        .map(|((job_id, created_at, owner), event)| StoredEvent {
            job_id,
            owner,
            created_at,
            event,
        })
        .collect();
    Ok(EventsAfter {
        events,
        more: beyond.is_some(),
    })
}

pub async fn job_states(
    conn: &mut PgConnection,
    jobs: &[Uuid],
) -> Result<HashMap<Uuid, String>, sqlx::Error> {
    let rows: Vec<(Uuid, String)> =
        sqlx::query_as("SELECT job_id, state FROM webhook_job_states WHERE job_id = ANY($1)")
            .bind(jobs)
            .fetch_all(conn)
            .await?;
    Ok(rows.into_iter().collect())
}

pub async fn set_job_states(
    conn: &mut PgConnection,
    states: &HashMap<Uuid, &'static str>,
) -> Result<(), sqlx::Error> {
    if states.is_empty() {
        return Ok(());
    }
    let (ids, names): (Vec<Uuid>, Vec<&str>) = states.iter().map(|(id, s)| (*id, *s)).unzip();
    sqlx::query(
        "INSERT INTO webhook_job_states (job_id, state)
         SELECT * FROM UNNEST($1::uuid[], $2::text[])
         ON CONFLICT (job_id) DO UPDATE SET state = EXCLUDED.state",
    )
    .bind(ids)
    .bind(names)
    .execute(conn)
    .await?;
    Ok(())
}

/// A delivery whose attempt is due, with where and how to send it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct DueDelivery {
    pub id: String,
    pub webhook_id: Uuid,
    pub body: String,
    pub attempts: i32,
    pub give_up_at: DateTime<Utc>,
    pub url: String,
    pub secret: String,
}

/// Pending deliveries due now of webhooks that are not paused, oldest
/// first; those without a give-up time give up `window` after they were made.
pub async fn due(
    db: &PgPool,
    limit: i64,
    window: std::time::Duration,
) -> Result<Vec<DueDelivery>, sqlx::Error> {
    sqlx::query_as(
        "SELECT d.id, d.webhook_id, d.body, d.attempts,
                COALESCE(d.give_up_at, d.created_at + make_interval(secs => $2)) AS give_up_at,
                w.url, w.secret
         FROM webhook_deliveries d JOIN webhooks w ON w.id = d.webhook_id
         WHERE d.state = 'pending' AND d.next_attempt_at <= now() AND NOT w.paused
         ORDER BY d.next_attempt_at LIMIT $1",
    )
    .bind(limit)
    .bind(window.as_secs_f64())
    .fetch_all(db)
    .await
}

/// The receiver answered 2xx: delivered, and its webhook's streak ends.
pub async fn delivered(
    db: &PgPool,
    delivery: &DueDelivery,
    status: u16,
) -> Result<(), sqlx::Error> {
    let mut tx = db.begin().await?;
    sqlx::query(
        "UPDATE webhook_deliveries
         SET state = 'delivered', attempts = attempts + 1, last_status = $2, last_error = ''
         WHERE id = $1",
    )
    .bind(&delivery.id)
    .bind(i32::from(status))
    .execute(&mut *tx)
    .await?;
    sqlx::query("UPDATE webhooks SET failure_streak = 0 WHERE id = $1")
        .bind(delivery.webhook_id)
        .execute(&mut *tx)
        .await?;
    tx.commit().await
}

/// An attempt failed: tried again at `next`, or failed for good (`None`);
/// the webhook is paused once `pause_after` attempts in a row failed.
pub async fn attempt_failed(
    db: &PgPool,
    delivery: &DueDelivery,
    status: Option<u16>,
    error: &str,
    next: Option<DateTime<Utc>>,
    pause_after: u32,
) -> Result<bool, sqlx::Error> {
    let mut tx = db.begin().await?;
    sqlx::query(
        "UPDATE webhook_deliveries
         SET state = CASE WHEN $3::timestamptz IS NULL THEN 'failed' ELSE 'pending' END,
             next_attempt_at = COALESCE($3, next_attempt_at),
             attempts = attempts + 1, last_status = $2, last_error = $4
         WHERE id = $1",
    )
    .bind(&delivery.id)
    .bind(status.map_or(0, i32::from))
    .bind(next)
    .bind(error)
    .execute(&mut *tx)
    .await?;
    let paused: Option<bool> = sqlx::query_scalar(
        "UPDATE webhooks SET failure_streak = failure_streak + 1,
                             paused = paused OR failure_streak + 1 >= $2
         WHERE id = $1 RETURNING paused",
    )
    .bind(delivery.webhook_id)
    .bind(i32::try_from(pause_after).unwrap_or(i32::MAX))
    .fetch_optional(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(paused.unwrap_or(false))
}

/// Prunes finished deliveries older than `keep` (the log is bounded).
pub async fn prune(db: &PgPool, keep: std::time::Duration) -> Result<u64, sqlx::Error> {
    let done = sqlx::query(
        "DELETE FROM webhook_deliveries
         WHERE state <> 'pending' AND created_at < now() - make_interval(secs => $1)",
    )
    .bind(keep.as_secs_f64())
    .execute(db)
    .await?;
    Ok(done.rows_affected())
}
