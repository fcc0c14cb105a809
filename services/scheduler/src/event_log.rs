//! Watching jobs without losing an event: what a watcher missed comes from
//! the `job_events` table, then live events from the bus, with no gap and no
//! duplicate. The watcher subscribes to the bus *before* reading Postgres,
//! so any event not yet in its read is published after it subscribed; live
//! events at or below its position are dropped. A watcher that falls behind
//! the bus (or sees a gap) resumes from Postgres instead of losing events.

use std::sync::Arc;
use std::time::Duration;

use kiln_proto::v1 as pb;
use kiln_proto::v1::job_event::Event;
use prost::Message;
use sqlx::PgPool;
use tokio::sync::{broadcast, mpsc};
use tonic::Status;
use uuid::Uuid;

use crate::events::JobNotice;
use crate::leader::LeaderSlot;
use crate::scheduler::Scheduler;
use crate::store;

/// Events read from Postgres per query while catching up.
const PAGE: i64 = 500;
/// How often a watch checks that its scheduler still leads; one that does
/// not ends the stream (UNAVAILABLE) so the client resumes at the new leader.
const LEADER_CHECK: Duration = Duration::from_secs(1);

pub type Watcher = mpsc::Sender<Result<pb::JobEvent, Status>>;

/// Which events a watch follows.
#[derive(Debug, Clone, Copy)]
pub enum Scope {
    Job(Uuid),
    Farm,
}

impl Scope {
    fn position(self, event: &pb::JobEvent) -> u64 {
        match self {
            Self::Job(_) => event.seq,
            Self::Farm => event.farm_seq,
        }
    }

    fn wants(self, event: &pb::JobEvent) -> bool {
        match self {
            Self::Job(id) => Uuid::parse_str(&event.job_id).is_ok_and(|e| e == id),
            Self::Farm => true,
        }
    }

    /// A job watch ends with the job's final record.
    fn ends_with(self, event: &pb::JobEvent) -> bool {
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
async fn page(db: &PgPool, scope: Scope, after: u64) -> Result<Vec<pb::JobEvent>, Status> {
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

/// How a stretch of a watch ended.
enum Next {
    /// The watch is over (the job ended, or the watcher left).
    Done,
    /// Read Postgres again from the current position.
    CatchUp,
}

/// One watch: replays from Postgres after `after`, then follows the bus.
pub struct Watch {
    pub scheduler: Arc<Scheduler>,
    pub leader: Arc<LeaderSlot>,
    pub scope: Scope,
    pub after: u64,
    pub live: broadcast::Receiver<JobNotice>,
    pub to: Watcher,
}

impl Watch {
    pub async fn run(mut self) {
        loop {
            let next = match self.catch_up().await {
                Ok(Next::Done) => return,
                Ok(Next::CatchUp) => self.follow().await,
                Err(status) => {
                    let _ = self.to.send(Err(status)).await;
                    return;
                }
            };
            if let Next::Done = next {
                return;
            }
        }
    }

    /// Sends what Postgres holds after the current position.
    async fn catch_up(&mut self) -> Result<Next, Status> {
        // A job already finished when we look has its whole sequence written.
        let finished = match self.scope {
            Scope::Job(id) => store::job_state(&self.scheduler.db, id)
                .await
                .map_err(|err| Status::unavailable(err.to_string()))?
                .is_some_and(|s| s.is_final()),
            Scope::Farm => false,
        };
        let mut last_was_final = false;
        loop {
            let events = page(&self.scheduler.db, self.scope, self.after).await?;
            let full = events.len() as i64 == PAGE;
            for event in events {
                self.after = self.scope.position(&event);
                last_was_final = self.scope.ends_with(&event);
                if self.to.send(Ok(event)).await.is_err() {
                    return Ok(Next::Done);
                }
            }
            if !full {
                break;
            }
        }
        // Replayed events may end in a final record that a retry later
        // reopened; only the last one written ends the watch.
        if last_was_final || finished {
            return Ok(Next::Done);
        }
        Ok(Next::CatchUp)
    }

    /// Sends live events until the job ends, the watcher falls behind, or
    /// this scheduler stops leading.
    async fn follow(&mut self) -> Next {
        let mut check = tokio::time::interval(LEADER_CHECK);
        loop {
            let notice = tokio::select! {
                notice = self.live.recv() => notice,
                // The client left: stop now rather than at the next event.
                _ = self.to.closed() => return Next::Done,
                _ = check.tick() => {
                    if self.still_leads() {
                        continue;
                    }
                    let status = Status::unavailable("this scheduler stopped leading; resume the watch from your last sequence number");
                    let _ = self.to.send(Err(status)).await;
                    return Next::Done;
                }
            };
            let event = match notice {
                Ok(event) => event,
                Err(broadcast::error::RecvError::Lagged(skipped)) => {
                    tracing::debug!(skipped, "watcher fell behind; resuming from postgres");
                    return Next::CatchUp;
                }
                Err(broadcast::error::RecvError::Closed) => return Next::Done,
            };
            if !self.scope.wants(&event) {
                continue;
            }
            let position = self.scope.position(&event);
            if position <= self.after {
                continue;
            }
            if position > self.after + 1 {
                // Something between is committed but not seen here: read it.
                return Next::CatchUp;
            }
            self.after = position;
            let ends = self.scope.ends_with(&event);
            if self.to.send(Ok(pb::JobEvent::clone(&event))).await.is_err() || ends {
                return Next::Done;
            }
        }
    }

    fn still_leads(&self) -> bool {
        self.leader
            .get()
            .is_ok_and(|current| Arc::ptr_eq(&current, &self.scheduler))
    }
}
