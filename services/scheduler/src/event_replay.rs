//! Written events, read back: a job's events after a position (from the
//! `job_events` table) or the farm's (`job_events` and `farm_events`), for
//! watchers that connect late or fall behind the live bus (`watch.rs`).
//! `job_events` holds a batch's events of one job as one block
//! (`event_blocks.rs`): a job's are read block by block, the farm's a whole
//! batch at a time, so a page holds about [`PAGE`] events, more when a batch
//! is larger, and says whether another may follow.

use kiln_proto::v1 as pb;
use kiln_proto::v1::job_event::Event;
use prost::Message;
use sqlx::{PgConnection, PgPool};
use tonic::Status;
use uuid::Uuid;

use crate::event_blocks::{self, CorruptBlock, Window};

/// Events read from Postgres per page while catching up, about: a page
/// never splits a block of a job's events, nor a batch of the farm's.
pub const PAGE: i64 = 500;

/// Events after a position, oldest first.
#[derive(Debug, Default)]
pub struct Page {
    pub events: Vec<pb::JobEvent>,
    /// Whether events may follow the page's last (then it is not empty).
    pub more: bool,
}

/// Which events a watch follows.
#[derive(Debug, Clone, Copy)]
pub enum Scope {
    Job(Uuid),
    Farm,
}

impl Scope {
    pub fn position(self, event: &pb::JobEvent) -> u64 {
        match self {
            Self::Job(_) => event.seq,
            Self::Farm => event.farm_seq,
        }
    }

    pub fn wants(self, event: &pb::JobEvent) -> bool {
        match self {
            Self::Job(id) => Uuid::parse_str(&event.job_id).is_ok_and(|e| e == id),
            Self::Farm => true,
        }
    }

    /// A job watch ends with the job's final record.
    pub fn ends_with(self, event: &pb::JobEvent) -> bool {
        matches!(self, Self::Job(_)) && is_final_record(event)
    }
}

pub fn is_final_record(event: &pb::JobEvent) -> bool {
    let Some(Event::JobChanged(job)) = &event.event else {
        return false;
    };
    matches!(
        pb::JobState::try_from(job.state),
        Ok(pb::JobState::Succeeded | pb::JobState::Failed | pb::JobState::Cancelled)
    )
}

/// Events of `scope` after `after`, oldest first, about PAGE of them.
pub async fn page(db: &PgPool, scope: Scope, after: u64) -> Result<Page, Status> {
    let after_key = i64::try_from(after).unwrap_or(i64::MAX);
    match scope {
        Scope::Job(id) => {
            let mut conn = db.acquire().await.map_err(unavailable)?;
            job_page(&mut conn, id, after, after_key).await
        }
        Scope::Farm => {
            // One snapshot: a batch's job events and farm events commit
            // together, and a page must not see the one without the other.
            let mut tx = db
                .begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                .await
                .map_err(unavailable)?;
            let page = farm_page(&mut tx, after, after_key).await?;
            tx.commit().await.map_err(unavailable)?;
            Ok(page)
        }
    }
}

async fn job_page(
    conn: &mut PgConnection,
    id: Uuid,
    after: u64,
    after_key: i64,
) -> Result<Page, Status> {
    let (containing, next): (Option<i64>, Option<i64>) = sqlx::query_as(
        "SELECT (SELECT max(first_seq) FROM job_events WHERE job_id = $1 AND first_seq <= $2),
                (SELECT min(first_seq) FROM job_events WHERE job_id = $1 AND first_seq > $2)",
    )
    .bind(id)
    .bind(after_key)
    .fetch_one(&mut *conn)
    .await
    .map_err(unavailable)?;
    let Some(window) = Window::after(containing, next, PAGE) else {
        return Ok(Page::default());
    };
    let payloads: Vec<Vec<u8>> = sqlx::query_scalar(
        "SELECT payload FROM job_events WHERE job_id = $1 AND first_seq BETWEEN $2 AND $3
         ORDER BY first_seq",
    )
    .bind(id)
    .bind(window.from)
    .bind(window.to)
    .fetch_all(&mut *conn)
    .await
    .map_err(unavailable)?;
    let beyond: Option<i64> = sqlx::query_scalar(
        "SELECT min(first_seq) FROM job_events WHERE job_id = $1 AND first_seq > $2",
    )
    .bind(id)
    .bind(window.to)
    .fetch_one(&mut *conn)
    .await
    .map_err(unavailable)?;
    let blocks = payloads
        .iter()
        .map(|payload| event_blocks::unpack(payload))
        .collect::<Result<Vec<_>, _>>()
        .map_err(corrupt)?;
    Ok(Page {
        events: event_blocks::job_order_after(blocks, after),
        more: beyond.is_some(),
    })
}

async fn farm_page(conn: &mut PgConnection, after: u64, after_key: i64) -> Result<Page, Status> {
    let (blocks, beyond) = match batch_window(&mut *conn, after_key, PAGE)
        .await
        .map_err(unavailable)?
    {
        Some(window) => {
            let payloads: Vec<Vec<u8>> = sqlx::query_scalar(
                "SELECT payload FROM job_events WHERE batch_first BETWEEN $1 AND $2",
            )
            .bind(window.from)
            .bind(window.to)
            .fetch_all(&mut *conn)
            .await
            .map_err(unavailable)?;
            let beyond = batch_after(&mut *conn, window.to)
                .await
                .map_err(unavailable)?;
            let blocks = payloads
                .iter()
                .map(|payload| Ok(((), event_blocks::unpack(payload)?)))
                .collect::<Result<Vec<_>, CorruptBlock>>()
                .map_err(corrupt)?;
            (blocks, beyond)
        }
        None => (Vec::new(), None),
    };
    let job_events = event_blocks::farm_order_after(blocks, after)
        .into_iter()
        .map(|((), event)| event)
        .collect();
    let farm_payloads: Vec<Vec<u8>> = sqlx::query_scalar(
        "SELECT payload FROM farm_events
         WHERE farm_seq > $1 AND ($2::bigint IS NULL OR farm_seq < $2)
         ORDER BY farm_seq LIMIT $3",
    )
    .bind(after_key)
    .bind(beyond)
    .bind(PAGE)
    .fetch_all(&mut *conn)
    .await
    .map_err(unavailable)?;
    let farm_events = farm_payloads
        .iter()
        .map(|bytes| pb::JobEvent::decode(bytes.as_slice()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| Status::data_loss(format!("a stored farm event is corrupt: {err}")))?;
    let (events, more) = event_blocks::farm_page(job_events, beyond, farm_events, PAGE as usize);
    Ok(Page { events, more })
}

/// The batches of job events to read after farm position `after`, about
/// `span` events' worth ([`Window`]).
pub async fn batch_window(
    conn: &mut PgConnection,
    after: i64,
    span: i64,
) -> Result<Option<Window>, sqlx::Error> {
    let (containing, next): (Option<i64>, Option<i64>) = sqlx::query_as(
        "SELECT (SELECT max(batch_first) FROM job_events WHERE batch_first <= $1),
                (SELECT min(batch_first) FROM job_events WHERE batch_first > $1)",
    )
    .bind(after)
    .fetch_one(conn)
    .await?;
    Ok(Window::after(containing, next, span))
}

/// Where the first batch of job events after `key` starts, if one does.
pub async fn batch_after(conn: &mut PgConnection, key: i64) -> Result<Option<i64>, sqlx::Error> {
    sqlx::query_scalar("SELECT min(batch_first) FROM job_events WHERE batch_first > $1")
        .bind(key)
        .fetch_one(conn)
        .await
}

fn unavailable(err: sqlx::Error) -> Status {
    Status::unavailable(format!("cannot read job events: {err}"))
}

fn corrupt(err: CorruptBlock) -> Status {
    Status::data_loss(err.to_string())
}

/// The last position written for `scope`.
pub async fn last_position(db: &PgPool, scope: Scope) -> Result<u64, sqlx::Error> {
    let last: Option<i64> =
        match scope {
            Scope::Job(id) => sqlx::query_scalar(
                "SELECT last_seq FROM job_events WHERE job_id = $1 ORDER BY first_seq DESC LIMIT 1",
            )
            .bind(id)
            .fetch_optional(db)
            .await?,
            Scope::Farm => {
                // The newest batch holds the log's last position, in one of its
                // blocks.
                // Deleted jobs' events count too (`farm_seq_floor`,
                // retention.rs): positions are never handed out twice.
                sqlx::query_scalar(
                    "SELECT greatest(
                     (SELECT max(last_farm_seq) FROM job_events
                      WHERE batch_first = (SELECT max(batch_first) FROM job_events)),
                     (SELECT max(farm_seq) FROM farm_events),
                     (SELECT farm_seq FROM farm_seq_floor))",
                )
                .fetch_one(db)
                .await?
            }
        };
    Ok(last.unwrap_or(0) as u64)
}
