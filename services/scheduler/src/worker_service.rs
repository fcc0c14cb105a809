//! The scheduler's end of each worker's session stream.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use kiln_proto::v1 as pb;
use kiln_proto::v1::worker_message::Message as FromWorker;
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::scheduler::Scheduler;

/// Messages queued for one worker before the dispatcher waits on it.
const OUTBOX_CAPACITY: usize = 64;
/// An idle worker must say something this often.
const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(5);
/// Silence after which a worker is presumed dead even if its TCP stream looks open.
const SILENCE_LIMIT: Duration = Duration::from_secs(15);

pub struct WorkerSessions {
    scheduler: Arc<Scheduler>,
    join_token: Option<String>,
}

impl WorkerSessions {
    pub fn new(scheduler: Arc<Scheduler>) -> Self {
        Self {
            scheduler,
            join_token: None,
        }
    }

    /// Workers must then present `token` as metadata [`JOIN_TOKEN_METADATA`].
    pub fn with_join_token(mut self, token: Option<String>) -> Self {
        self.join_token = token;
        self
    }
}

pub const JOIN_TOKEN_METADATA: &str = "kiln-join-token";

type SessionStream = Pin<Box<dyn Stream<Item = Result<pb::SchedulerMessage, Status>> + Send>>;

#[tonic::async_trait]
impl pb::worker_service_server::WorkerService for WorkerSessions {
    type SessionStream = SessionStream;

    async fn session(
        &self,
        request: Request<Streaming<pb::WorkerMessage>>,
    ) -> Result<Response<SessionStream>, Status> {
        if let Some(expected) = &self.join_token {
            let presented = request.metadata().get(JOIN_TOKEN_METADATA);
            let presented = presented.map_or(&[][..], |v| v.as_bytes());
            if !bool::from(subtle::ConstantTimeEq::ct_eq(
                presented,
                expected.as_bytes(),
            )) {
                return Err(Status::unauthenticated("missing or wrong join token"));
            }
        }
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
        let (outbox, outbox_rx) = mpsc::channel(OUTBOX_CAPACITY);
        let registered = pb::Registered {
            heartbeat_interval_seconds: HEARTBEAT_INTERVAL.as_secs() as u32,
        };
        let hello = pb::SchedulerMessage {
            message: Some(pb::scheduler_message::Message::Registered(registered)),
        };
        outbox
            .send(Ok(hello))
            .await
            .map_err(|_| Status::internal("session closed during registration"))?;

        let worker_id = register.worker_id.clone();
        let capabilities = register.capabilities.unwrap_or_default();
        // A worker that reconnects gets a fresh session: whatever its old
        // session held is requeued before new work is handed out.
        if let Err(err) = self.scheduler.worker_gone(&worker_id).await {
            tracing::warn!(worker_id, error = %err, "cannot requeue a reconnecting worker's tasks");
        }
        let session = self
            .scheduler
            .workers
            .connect(&worker_id, capabilities, outbox);
        tracing::info!(worker_id, hostname = %register.hostname, session, "worker joined");
        self.scheduler.dispatch_wanted.notify_one();
        tokio::spawn(serve_session(
            self.scheduler.clone(),
            worker_id,
            session,
            inbound,
        ));
        Ok(Response::new(Box::pin(ReceiverStream::new(outbox_rx))))
    }
}

async fn serve_session(
    scheduler: Arc<Scheduler>,
    worker_id: String,
    session: u64,
    mut inbound: Streaming<pb::WorkerMessage>,
) {
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
        if let Err(err) = handle(&scheduler, &worker_id, message).await {
            tracing::warn!(worker_id, error = %err, "cannot record a worker report");
        }
    }
    if scheduler.workers.disconnect(&worker_id, session) {
        tracing::info!(worker_id, "worker left");
        if let Err(err) = scheduler.worker_gone(&worker_id).await {
            tracing::error!(worker_id, error = %err, "cannot requeue a departed worker's tasks");
        }
    }
}

async fn handle(
    scheduler: &Scheduler,
    worker_id: &str,
    message: pb::WorkerMessage,
) -> Result<(), crate::SchedulerError> {
    match message.message {
        Some(FromWorker::Started(started)) => scheduler.record_started(worker_id, started).await,
        Some(FromWorker::Progress(progress)) => scheduler.record_progress(worker_id, progress),
        Some(FromWorker::Output(output)) => scheduler.record_output(output).await,
        Some(FromWorker::Result(result)) => scheduler.record_result(worker_id, result).await,
        Some(FromWorker::Heartbeat(_)) | None => Ok(()),
        Some(FromWorker::Register(_)) => {
            tracing::warn!(worker_id, "ignored a second RegisterWorker on one session");
            Ok(())
        }
    }
}
