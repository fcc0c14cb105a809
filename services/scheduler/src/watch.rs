//! One watch of a job or of the farm, without losing an event: what the
//! watcher missed comes from Postgres (`event_replay.rs`), then live events
//! from the bus (`event_bus.rs`), with no gap and no duplicate. The watcher
//! subscribes to the bus *before* reading Postgres, so any event not yet in
//! its read is published after it subscribed; live events at or below its
//! position are dropped. A watcher that falls behind the bus (or sees a gap)
//! resumes from Postgres instead of losing events.

use std::sync::Arc;
use std::time::Duration;

use kiln_proto::v1 as pb;
use tokio::sync::{broadcast, mpsc};
use tonic::Status;

use crate::event_bus::JobNotice;
use crate::event_replay::{Scope, page};
use crate::leader::LeaderSlot;
use crate::queries;
use crate::scheduler::Scheduler;

/// How often a watch checks that its scheduler still leads; one that does
/// not ends the stream (UNAVAILABLE) so the client resumes at the new leader.
const LEADER_CHECK: Duration = Duration::from_secs(1);

pub type Watcher = mpsc::Sender<Result<pb::JobEvent, Status>>;

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
            Scope::Job(id) => queries::job_state(&self.scheduler.db, id)
                .await
                .map_err(|err| Status::unavailable(err.to_string()))?
                .is_some_and(|s| s.is_final()),
            Scope::Farm => false,
        };
        let mut last_was_final = false;
        loop {
            // Pages vary in size (a batch is never split): each says
            // whether another may follow.
            let page = page(&self.scheduler.db, self.scope, self.after).await?;
            let more = page.more && !page.events.is_empty();
            for event in page.events {
                self.after = self.scope.position(&event);
                last_was_final = self.scope.ends_with(&event);
                if self.to.send(Ok(event)).await.is_err() {
                    return Ok(Next::Done);
                }
            }
            if !more {
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
