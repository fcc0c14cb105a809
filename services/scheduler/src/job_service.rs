//! The job API, as the scheduler serves it to the gateway.

use std::path::{Component, Path};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use kiln_discovery::{Discovery, service};
use kiln_jobmodel::{Limits, builtin_template, plan_job};
use kiln_proto::v1 as pb;
use kiln_proto::v1::job_event::Event;
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};
use uuid::Uuid;

use crate::scheduler::Scheduler;
use crate::{SchedulerError, store};

const DEFAULT_PRIORITY: u32 = 50;
const MAX_LIST: u32 = 1000;
const MAX_INPUTS: usize = 1000;
/// Events queued per watcher before the watcher is considered too slow.
const WATCH_BUFFER: usize = 256;

pub struct JobApi {
    scheduler: Arc<Scheduler>,
    discovery: Discovery,
    limits: Limits,
}

impl JobApi {
    pub fn new(scheduler: Arc<Scheduler>, discovery: Discovery, limits: Limits) -> Self {
        Self {
            scheduler,
            discovery,
            limits,
        }
    }

    async fn submit(
        &self,
        owner: &str,
        request: pb::SubmitJobRequest,
    ) -> Result<pb::Job, SchedulerError> {
        let (template_name, document) = match &request.template {
            Some(pb::submit_job_request::Template::BuiltinTemplate(name)) => {
                (name.as_str(), builtin_template(name)?)
            }
            Some(pb::submit_job_request::Template::TemplateDocument(doc)) => ("", doc.as_str()),
            None => {
                return Err(invalid(
                    "template: give builtin_template or template_document",
                ));
            }
        };
        let priority = match request.priority {
            0 => DEFAULT_PRIORITY,
            p if p <= 100 => p,
            p => return Err(invalid(format!("priority: {p} is outside 0-100"))),
        };
        validate_inputs(&request.inputs)?;
        let plan = plan_job(document, &request.parameters, self.limits)?;
        self.check_inputs_stored(&request.inputs).await?;
        let name = if request.name.is_empty() {
            plan.name.clone()
        } else {
            request.name.clone()
        };
        let new_job = store::NewJob {
            name: &name,
            owner,
            priority: priority as i32,
            template_name,
            template_document: document,
            parameters: &request.parameters,
            inputs: &request.inputs,
        };
        let id = store::create_job(&self.scheduler.db, new_job, &plan).await?;
        tracing::info!(job_id = %id, tasks = plan.task_count(), "job submitted");
        self.scheduler.dispatch_wanted.notify_one();
        self.load_job(id).await
    }

    async fn load_job(&self, id: Uuid) -> Result<pb::Job, SchedulerError> {
        store::get_job(&self.scheduler.db, id)
            .await?
            .ok_or_else(|| SchedulerError::JobNotFound(id.to_string()))
    }

    async fn check_inputs_stored(&self, inputs: &[pb::JobInput]) -> Result<(), SchedulerError> {
        if inputs.is_empty() {
            return Ok(());
        }
        let endpoint = self
            .discovery
            .find_one(service::ASSETS, Duration::from_secs(5))
            .await?;
        let channel = tonic::transport::Endpoint::from_shared(endpoint.grpc_uri())
            .map_err(|e| SchedulerError::Assets(e.to_string()))?
            .connect_lazy();
        let assets = kiln_asset_client::AssetClient::new(channel);
        for input in inputs {
            match assets.stat(&input.digest).await {
                Ok(Some(_)) => {}
                Ok(None) => {
                    return Err(invalid(format!(
                        "inputs: {} (digest {}) is not stored in the asset service; upload it first",
                        input.path, input.digest
                    )));
                }
                Err(err) => return Err(SchedulerError::Assets(err.to_string())),
            }
        }
        Ok(())
    }
}

fn invalid(message: impl Into<String>) -> SchedulerError {
    SchedulerError::InvalidArgument(message.into())
}

fn validate_inputs(inputs: &[pb::JobInput]) -> Result<(), SchedulerError> {
    if inputs.len() > MAX_INPUTS {
        return Err(invalid(format!(
            "inputs: {} files, more than the limit of {MAX_INPUTS}",
            inputs.len()
        )));
    }
    for input in inputs {
        if !kiln_asset_client::digest::is_valid(&input.digest) {
            return Err(invalid(format!(
                "inputs: digest {:?} is not 64 lowercase hex characters",
                input.digest
            )));
        }
        let path = Path::new(&input.path);
        let safe =
            !input.path.is_empty() && path.components().all(|c| matches!(c, Component::Normal(_)));
        if !safe {
            return Err(invalid(format!(
                "inputs: path {:?} must be relative, without '..'",
                input.path
            )));
        }
    }
    Ok(())
}

/// Metadata the gateway sets to the authenticated user's name; the scheduler
/// is internal and trusts it.
pub const OWNER_METADATA: &str = "kiln-owner";
const ANONYMOUS: &str = "anonymous";

fn owner_of<T>(request: &Request<T>) -> String {
    request
        .metadata()
        .get(OWNER_METADATA)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty())
        .unwrap_or(ANONYMOUS)
        .to_owned()
}

pub fn parse_job_id(text: &str) -> Result<Uuid, SchedulerError> {
    Uuid::parse_str(text).map_err(|_| invalid(format!("job_id: {text:?} is not a UUID")))
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<pb::JobEvent, Status>> + Send>>;

#[tonic::async_trait]
impl pb::job_service_server::JobService for JobApi {
    async fn submit_job(
        &self,
        request: Request<pb::SubmitJobRequest>,
    ) -> Result<Response<pb::Job>, Status> {
        let owner = owner_of(&request);
        Ok(Response::new(
            self.submit(&owner, request.into_inner()).await?,
        ))
    }

    async fn get_job(
        &self,
        request: Request<pb::GetJobRequest>,
    ) -> Result<Response<pb::Job>, Status> {
        let id = parse_job_id(&request.get_ref().job_id)?;
        Ok(Response::new(self.load_job(id).await?))
    }

    async fn list_jobs(
        &self,
        request: Request<pb::ListJobsRequest>,
    ) -> Result<Response<pb::ListJobsResponse>, Status> {
        let limit = match request.get_ref().limit {
            0 => 100,
            n => n.min(MAX_LIST),
        };
        let owner = Some(request.get_ref().owner.as_str()).filter(|o| !o.is_empty());
        let jobs = store::list_jobs(&self.scheduler.db, owner, limit as i64)
            .await
            .map_err(SchedulerError::from)?;
        Ok(Response::new(pb::ListJobsResponse { jobs }))
    }

    async fn cancel_job(
        &self,
        request: Request<pb::CancelJobRequest>,
    ) -> Result<Response<pb::Job>, Status> {
        let id = parse_job_id(&request.get_ref().job_id)?;
        self.scheduler.cancel_job(id).await?;
        Ok(Response::new(self.load_job(id).await?))
    }

    type WatchJobStream = WatchStream;

    async fn watch_job(
        &self,
        request: Request<pb::WatchJobRequest>,
    ) -> Result<Response<WatchStream>, Status> {
        let id = parse_job_id(&request.get_ref().job_id)?;
        // Subscribe before reading the job, so nothing between the two is missed.
        let notices = self.scheduler.events.subscribe();
        let job = self.load_job(id).await?;
        let (tx, rx) = mpsc::channel(WATCH_BUFFER);
        tokio::spawn(forward_events(self.scheduler.clone(), id, job, notices, tx));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn list_outputs(
        &self,
        request: Request<pb::ListOutputsRequest>,
    ) -> Result<Response<pb::ListOutputsResponse>, Status> {
        let id = parse_job_id(&request.get_ref().job_id)?;
        self.require_job(id).await?;
        let outputs = store::list_outputs(&self.scheduler.db, id)
            .await
            .map_err(SchedulerError::from)?;
        Ok(Response::new(pb::ListOutputsResponse { outputs }))
    }

    async fn list_tasks(
        &self,
        request: Request<pb::ListTasksRequest>,
    ) -> Result<Response<pb::ListTasksResponse>, Status> {
        let id = parse_job_id(&request.get_ref().job_id)?;
        self.require_job(id).await?;
        let tasks = store::list_tasks(&self.scheduler.db, id)
            .await
            .map_err(SchedulerError::from)?;
        Ok(Response::new(pb::ListTasksResponse { tasks }))
    }

    async fn pause_job(
        &self,
        _request: Request<pb::PauseJobRequest>,
    ) -> Result<Response<pb::Job>, Status> {
        Err(Status::unimplemented("pause is not available yet"))
    }

    async fn resume_job(
        &self,
        _request: Request<pb::ResumeJobRequest>,
    ) -> Result<Response<pb::Job>, Status> {
        Err(Status::unimplemented("resume is not available yet"))
    }

    async fn retry_job(
        &self,
        _request: Request<pb::RetryJobRequest>,
    ) -> Result<Response<pb::Job>, Status> {
        Err(Status::unimplemented("retry is not available yet"))
    }

    async fn set_job_priority(
        &self,
        _request: Request<pb::SetJobPriorityRequest>,
    ) -> Result<Response<pb::Job>, Status> {
        Err(Status::unimplemented(
            "priority changes are not available yet",
        ))
    }

    async fn clear_blocklist(
        &self,
        _request: Request<pb::ClearBlocklistRequest>,
    ) -> Result<Response<pb::Job>, Status> {
        Err(Status::unimplemented("blocklists are not available yet"))
    }
}

impl JobApi {
    async fn require_job(&self, id: Uuid) -> Result<(), SchedulerError> {
        match store::job_state(&self.scheduler.db, id).await? {
            Some(_) => Ok(()),
            None => Err(SchedulerError::JobNotFound(id.to_string())),
        }
    }
}

fn is_final(job: &pb::Job) -> bool {
    pb::JobState::try_from(job.state).ok().is_some_and(|s| {
        matches!(
            s,
            pb::JobState::Succeeded | pb::JobState::Failed | pb::JobState::Cancelled
        )
    })
}

async fn forward_events(
    scheduler: Arc<Scheduler>,
    job_id: Uuid,
    job: pb::Job,
    mut notices: broadcast::Receiver<crate::events::JobNotice>,
    tx: mpsc::Sender<Result<pb::JobEvent, Status>>,
) {
    let event = |event: Event| pb::JobEvent {
        job_id: job_id.to_string(),
        event: Some(event),
    };
    let done = is_final(&job);
    if tx.send(Ok(event(Event::JobChanged(job)))).await.is_err() || done {
        return;
    }
    loop {
        let notice = match notices.recv().await {
            Ok(notice) if notice.job_id == job_id => notice,
            Ok(_) => continue,
            Err(broadcast::error::RecvError::Lagged(_)) => {
                // Fell behind: the job's current record says where things stand.
                match store::get_job(&scheduler.db, job_id).await {
                    Ok(Some(job)) => crate::events::JobNotice {
                        job_id,
                        event: Event::JobChanged(job),
                    },
                    _ => return,
                }
            }
            Err(broadcast::error::RecvError::Closed) => return,
        };
        let done = matches!(&notice.event, Event::JobChanged(job) if is_final(job));
        if tx.send(Ok(event(notice.event))).await.is_err() || done {
            return;
        }
    }
}
