//! The scheduler's end of each worker's session stream.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::Stream;
use kiln_proto::v1 as pb;
use kiln_proto::v1::worker_message::Message as FromWorker;
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::SchedulerError;
use crate::core::command::{AttemptReport, Command};
use crate::error::parse_uuid;
use crate::leader::LeaderSlot;
use crate::live_sessions::{LiveSessions, SessionRefusal};
use crate::scheduler::Scheduler;

/// Messages queued for one worker before the dispatcher waits on it.
const OUTBOX_CAPACITY: usize = 64;
/// An idle worker must say something this often.
const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(5);
/// Silence after which a worker is presumed dead even if its TCP stream looks open.
const SILENCE_LIMIT: Duration = Duration::from_secs(15);

/// Worker sessions. Only workers reach this service: the scheduler's
/// `internal_auth` gate has checked the caller's join token (or, with
/// mutual TLS, its certificate) before a session starts.
pub struct WorkerSessions {
    leader: Arc<LeaderSlot>,
    next_session: AtomicU64,
    /// Which process holds each worker id while its session lives.
    live: Arc<Mutex<LiveSessions>>,
}

impl WorkerSessions {
    pub fn new(leader: Arc<LeaderSlot>) -> Self {
        Self {
            leader,
            next_session: AtomicU64::new(1),
            live: Arc::default(),
        }
    }
}

/// The live-session table, whatever a panicking holder left in it.
fn lock(live: &Mutex<LiveSessions>) -> std::sync::MutexGuard<'_, LiveSessions> {
    live.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

type SessionStream = Pin<Box<dyn Stream<Item = Result<pb::SchedulerMessage, Status>> + Send>>;

#[tonic::async_trait]
impl pb::worker_service_server::WorkerService for WorkerSessions {
    type SessionStream = SessionStream;

    async fn session(
        &self,
        request: Request<Streaming<pb::WorkerMessage>>,
    ) -> Result<Response<SessionStream>, Status> {
        // A standby refuses sessions: the worker looks for the leader again.
        let scheduler = self.leader.get()?;
        let mut inbound = request.into_inner();
        let register = match inbound.next().await {
            Some(Ok(pb::WorkerMessage {
                message: Some(FromWorker::Register(register)),
            })) => register,
            Some(Err(status)) => return Err(status),
            _ => {
                return Err(Status::invalid_argument(
                    "the first message of a session must be RegisterWorker",
                ));
            }
        };
        if register.worker_id.is_empty() {
            return Err(Status::invalid_argument("worker_id must not be empty"));
        }
        // Postgres text holds no NUL: a worker id with one could never be written.
        if register.worker_id.contains('\0') {
            return Err(Status::invalid_argument("worker_id must not contain NUL"));
        }
        let (outbox, outbox_rx) = mpsc::channel(OUTBOX_CAPACITY);
        let registered = pb::Registered {
            heartbeat_interval_seconds: HEARTBEAT_INTERVAL.as_secs() as u32,
        };
        let hello = pb::SchedulerMessage {
            message: Some(pb::scheduler_message::Message::Registered(registered)),
        };
        outbox
            .send(Box::new(hello))
            .await
            .map_err(|_| Status::internal("session closed during registration"))?;

        let worker_id = register.worker_id.clone();
        let session = self.next_session.fetch_add(1, Ordering::Relaxed);
        let held = held_attempts(&register.running)?;
        lock(&self.live)
            .claim(&worker_id, &register.instance_key, session)
            .map_err(|refusal| match refusal {
                SessionRefusal::IdInUse(_) => Status::already_exists(refusal.to_string()),
                SessionRefusal::BadKey => Status::invalid_argument(refusal.to_string()),
            })?;
        let release = SessionClaim {
            live: self.live.clone(),
            worker_id: worker_id.clone(),
            session,
        };
        // A worker that reconnects replaces its old session: what that held
        // and the worker no longer names is requeued before new work is
        // handed out; what it names it keeps, if it is still its to run.
        scheduler.presence.heard(&worker_id, None);
        scheduler
            .join(
                worker_id.clone(),
                without_nul(register.hostname.clone()),
                session,
                register.capabilities.unwrap_or_default(),
                held,
                outbox,
            )
            .await?;
        tracing::info!(worker_id, hostname = %register.hostname, session, "worker joined");
        tokio::spawn(serve_session(scheduler, release, inbound));
        Ok(Response::new(Box::pin(
            ReceiverStream::new(outbox_rx).map(|message| Ok(*message)),
        )))
    }
}

/// Most attempts a worker may name when it registers.
const MAX_HELD: usize = 4096;

fn held_attempts(running: &[pb::HeldAttempt]) -> Result<Vec<(uuid::Uuid, i32)>, Status> {
    if running.len() > MAX_HELD {
        return Err(Status::invalid_argument(format!(
            "running names {} attempts; at most {MAX_HELD} are allowed",
            running.len()
        )));
    }
    running
        .iter()
        .map(|held| {
            let task_id = parse_uuid("running.task_id", &held.task_id)?;
            let attempt = i32::try_from(held.attempt)
                .map_err(|_| Status::invalid_argument("running.attempt is out of range"))?;
            Ok((task_id, attempt))
        })
        .collect()
}

/// A session's hold on its worker id, let go when the session ends
/// however it ends (the id is then free for another process).
struct SessionClaim {
    live: Arc<Mutex<LiveSessions>>,
    worker_id: String,
    session: u64,
}

impl Drop for SessionClaim {
    fn drop(&mut self) {
        lock(&self.live).release(&self.worker_id, self.session);
    }
}

async fn serve_session(
    scheduler: Arc<Scheduler>,
    claim: SessionClaim,
    mut inbound: Streaming<pb::WorkerMessage>,
) {
    let (worker_id, session) = (claim.worker_id.clone(), claim.session);
    loop {
        let message = match tokio::time::timeout(SILENCE_LIMIT, inbound.next()).await {
            Ok(Some(Ok(message))) => message,
            Ok(Some(Err(status))) => {
                tracing::info!(worker_id, error = %status, "worker stream failed");
                break;
            }
            Ok(None) => break,
            Err(_) => {
                tracing::warn!(worker_id, silence = ?SILENCE_LIMIT, "worker went silent");
                break;
            }
        };
        let usage = match &message.message {
            Some(FromWorker::Heartbeat(beat)) => beat.usage,
            _ => None,
        };
        scheduler.presence.heard(&worker_id, usage);
        if let Err(err) = handle(&scheduler, &worker_id, message).await {
            tracing::warn!(worker_id, error = %err, "cannot record a worker report");
        }
    }
    tracing::info!(worker_id, session, "worker left");
    scheduler.presence.forget_usage(&worker_id);
    let left = Command::WorkerLeft {
        worker_id: worker_id.clone(),
        session,
    };
    if scheduler.tell(left).await.is_err() {
        tracing::warn!(
            worker_id,
            "scheduler stopping; the worker's tasks are requeued at next start"
        );
    }
}

async fn handle(
    scheduler: &Scheduler,
    worker_id: &str,
    message: pb::WorkerMessage,
) -> Result<(), SchedulerError> {
    let worker_id = worker_id.to_owned();
    match message.message {
        Some(FromWorker::Started(started)) => {
            let command = Command::Started {
                worker_id,
                task_id: parse_uuid("task_id", &started.task_id)?,
                attempt: started.attempt as i32,
            };
            scheduler.tell(command).await
        }
        Some(FromWorker::Progress(progress)) => {
            let command = Command::Progress {
                worker_id,
                task_id: parse_uuid("task_id", &progress.task_id)?,
                attempt: progress.attempt as i32,
                fraction: progress.fraction,
                frame: progress.frame,
                status: without_nul(progress.status),
            };
            scheduler.tell(command).await
        }
        Some(FromWorker::Output(output)) => {
            if [&output.path, &output.digest, &output.kind]
                .iter()
                .any(|t| t.contains('\0'))
            {
                return Ok(());
            }
            let command = Command::OutputStored {
                worker_id,
                task_id: parse_uuid("task_id", &output.task_id)?,
                attempt: output.attempt as i32,
                output,
            };
            scheduler.tell(command).await
        }
        Some(FromWorker::Result(result)) => {
            let command = Command::Finished {
                worker_id,
                task_id: parse_uuid("task_id", &result.task_id)?,
                attempt: result.attempt as i32,
                report: AttemptReport {
                    success: result.success,
                    exit_code: result.exit_code,
                    message: without_nul(result.message),
                    log_tail: without_nul(result.log_tail),
                    device: without_nul(result.device),
                    status: without_nul(result.status),
                    outputs: result
                        .outputs
                        .into_iter()
                        .filter(|o| {
                            ![&o.path, &o.digest, &o.kind]
                                .iter()
                                .any(|t| t.contains('\0'))
                        })
                        .collect(),
                },
            };
            scheduler.tell(command).await
        }
        Some(FromWorker::Log(lines)) => {
            scheduler.log_lines(worker_id, lines);
            Ok(())
        }
        Some(FromWorker::Heartbeat(_)) | None => Ok(()),
        Some(FromWorker::Register(_)) => {
            tracing::warn!(worker_id, "ignored a second RegisterWorker on one session");
            Ok(())
        }
    }
}

/// A worker's text as Postgres can store it: text columns hold no NUL, and a
/// value Postgres refuses would end this scheduler's leadership.
fn without_nul(text: String) -> String {
    if text.contains('\0') {
        text.replace('\0', "")
    } else {
        text
    }
}
