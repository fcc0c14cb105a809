//! The farm API as the scheduler serves it to the gateway: workers listed
//! from the dispatch core's own state (with the presence map's usage and
//! last-seen times) and an admin's actions, applied by the core and
//! durable before the answer.

use std::sync::Arc;

use chrono::{Duration, Utc};
use kiln_proto::v1 as pb;
use tonic::{Request, Response, Status};

use crate::SchedulerError;
use crate::core::command::{Command, WorkerControl};
use crate::error::invalid;
use crate::leader::LeaderSlot;
use crate::scheduler::Scheduler;
use crate::timestamps::timestamp;

/// Workers that left or were lost longer ago than this are not listed
/// (what an admin set on them is kept for when they come back).
const FORGET_AFTER_HOURS: i64 = 24;
const DEFAULT_LIST: usize = 1000;
const MAX_LIST: usize = 10_000;

pub struct FarmApi {
    leader: Arc<LeaderSlot>,
}

impl FarmApi {
    pub fn new(leader: Arc<LeaderSlot>) -> Self {
        Self { leader }
    }

    fn scheduler(&self) -> Result<Arc<Scheduler>, SchedulerError> {
        self.leader.get()
    }
}

fn check_worker_id(id: &str) -> Result<(), SchedulerError> {
    if id.is_empty() || id.len() > 256 || id.contains('\0') {
        return Err(invalid(format!(
            "worker_id: {id:?} must be 1 to 256 characters without NUL"
        )));
    }
    Ok(())
}

/// Adds what the presence map knows: usage and when it last spoke.
fn with_presence(scheduler: &Scheduler, mut worker: pb::Worker) -> pb::Worker {
    if worker.connected
        && let Some(seen) = scheduler.presence.of(&worker.id)
    {
        worker.last_seen = Some(timestamp(seen.at));
        worker.usage = seen.usage;
    }
    worker
}

async fn record(scheduler: &Scheduler, worker_id: &str) -> Result<pb::Worker, SchedulerError> {
    let id = worker_id.to_owned();
    scheduler
        .query(move |core| core.worker_record(&id))
        .await?
        .map(|w| with_presence(scheduler, w))
        .ok_or_else(|| SchedulerError::WorkerNotFound(worker_id.to_owned()))
}

async fn act(
    scheduler: &Scheduler,
    worker_id: &str,
    control: WorkerControl,
) -> Result<pb::Worker, SchedulerError> {
    check_worker_id(worker_id)?;
    scheduler
        .ask(|request| Command::WorkerControl {
            request,
            worker_id: worker_id.to_owned(),
            control,
        })
        .await?;
    tracing::info!(worker_id, "worker settings changed");
    record(scheduler, worker_id).await
}

#[tonic::async_trait]
impl pb::farm_service_server::FarmService for FarmApi {
    async fn list_workers(
        &self,
        request: Request<pb::ListWorkersRequest>,
    ) -> Result<Response<pb::ListWorkersResponse>, Status> {
        let limit = match request.get_ref().limit as usize {
            0 => DEFAULT_LIST,
            n => n.min(MAX_LIST),
        };
        let scheduler = self.scheduler()?;
        let records = scheduler.query(|core| core.worker_records()).await?;
        let horizon = timestamp(Utc::now() - Duration::hours(FORGET_AFTER_HOURS));
        let workers = records
            .into_iter()
            .filter(|w| {
                w.connected
                    || w.last_seen
                        .is_some_and(|t| (t.seconds, t.nanos) >= (horizon.seconds, horizon.nanos))
            })
            .take(limit)
            .map(|w| with_presence(&scheduler, w))
            .collect();
        Ok(Response::new(pb::ListWorkersResponse { workers }))
    }

    async fn get_worker(
        &self,
        request: Request<pb::GetWorkerRequest>,
    ) -> Result<Response<pb::Worker>, Status> {
        let id = &request.get_ref().worker_id;
        check_worker_id(id)?;
        let scheduler = self.scheduler()?;
        Ok(Response::new(record(&scheduler, id).await?))
    }

    async fn disable_worker(
        &self,
        request: Request<pb::WorkerActionRequest>,
    ) -> Result<Response<pb::Worker>, Status> {
        let scheduler = self.scheduler()?;
        let id = &request.get_ref().worker_id;
        Ok(Response::new(
            act(&scheduler, id, WorkerControl::Disable).await?,
        ))
    }

    async fn enable_worker(
        &self,
        request: Request<pb::WorkerActionRequest>,
    ) -> Result<Response<pb::Worker>, Status> {
        let scheduler = self.scheduler()?;
        let id = &request.get_ref().worker_id;
        Ok(Response::new(
            act(&scheduler, id, WorkerControl::Enable).await?,
        ))
    }

    async fn drain_worker(
        &self,
        request: Request<pb::WorkerActionRequest>,
    ) -> Result<Response<pb::Worker>, Status> {
        let scheduler = self.scheduler()?;
        let id = &request.get_ref().worker_id;
        Ok(Response::new(
            act(&scheduler, id, WorkerControl::Drain).await?,
        ))
    }

    async fn set_worker_tags(
        &self,
        request: Request<pb::SetWorkerTagsRequest>,
    ) -> Result<Response<pb::Worker>, Status> {
        let request = request.into_inner();
        let tags = crate::tags::check("tags", &request.tags).map_err(invalid)?;
        let scheduler = self.scheduler()?;
        Ok(Response::new(
            act(&scheduler, &request.worker_id, WorkerControl::SetTags(tags)).await?,
        ))
    }
}
