//! Written events, read back: a job's events after a position (from the
//! `job_events` table) or the farm's (`job_events` and `farm_events`), for
//! watchers that connect late or fall behind the live bus (`watch.rs`).

use kiln_proto::v1 as pb;
use kiln_proto::v1::job_event::Event;
use prost::Message;
use sqlx::PgPool;
use tonic::Status;
use uuid::Uuid;

/// Events read from Postgres per query while catching up.
pub const PAGE: i64 = 500;

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

/// Events of `scope` after `after`, oldest first, at most PAGE.
pub async fn page(db: &PgPool, scope: Scope, after: u64) -> Result<Vec<pb::JobEvent>, Status> {
    let rows: Vec<Vec<u8>> = match scope {
        Scope::Job(id) => sqlx::query_scalar(
            "SELECT payload FROM job_events WHERE job_id = $1 AND seq > $2 ORDER BY seq LIMIT $3",
        )
        .bind(id)
        .bind(after as i64)
        .bind(PAGE)
        .fetch_all(db)
        .await,
        Scope::Farm => {
            sqlx::query_scalar(
                "SELECT payload FROM (
                     SELECT farm_seq, payload FROM job_events WHERE farm_seq > $1
                     UNION ALL
                     SELECT farm_seq, payload FROM farm_events WHERE farm_seq > $1
                 ) AS events ORDER BY farm_seq LIMIT $2",
            )
            .bind(after as i64)
            .bind(PAGE)
            .fetch_all(db)
            .await
        }
    }
    .map_err(|err| Status::unavailable(format!("cannot read job events: {err}")))?;
    rows.iter()
        .map(|bytes| {
            pb::JobEvent::decode(bytes.as_slice())
                .map_err(|err| Status::data_loss(format!("a stored job event is corrupt: {err}")))
        })
        .collect()
}

/// The last position written for `scope`.
pub async fn last_position(db: &PgPool, scope: Scope) -> Result<u64, sqlx::Error> {
    let last: Option<i64> = match scope {
        Scope::Job(id) => {
            sqlx::query_scalar("SELECT max(seq) FROM job_events WHERE job_id = $1")
                .bind(id)
                .fetch_one(db)
                .await?
        }
        Scope::Farm => {
            sqlx::query_scalar(
                "SELECT greatest((SELECT max(farm_seq) FROM job_events),
                                 (SELECT max(farm_seq) FROM farm_events))",
            )
            .fetch_one(db)
            .await?
        }
    };
    Ok(last.unwrap_or(0) as u64)
}
