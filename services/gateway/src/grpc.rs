//! The public gRPC API: each call is checked against its caller (role, and
//! for non-admins the job's owner) and passed to the internal service that
//! owns it, with the caller's name as `kiln-owner` metadata.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use futures::{Stream, StreamExt};
use kiln_mesh::MeshChannel;
use kiln_proto::v1 as pb;
use kiln_proto::v1::asset_service_client::AssetServiceClient;
use kiln_proto::v1::farm_service_client::FarmServiceClient;
use kiln_proto::v1::job_service_client::JobServiceClient;
use kiln_proto::v1::webhook_service_client::WebhookServiceClient;
use kiln_service::cancel::BodyFailed;
use moka::sync::Cache;
use tokio::sync::oneshot;
use tonic::metadata::MetadataValue;
use tonic::{Request, Response, Status, Streaming};

use crate::auth::{self, Principal, Role};
use crate::upstream::Upstreams;

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// Job owners remembered, so checking a caller's access rarely costs a call;
/// a job's owner never changes, so entries never go stale.
const OWNER_CACHE_CAPACITY: u64 = 100_000;

#[derive(Clone)]
pub struct PublicApi {
    upstreams: Arc<Upstreams>,
    owners: Cache<String, String>,
}

impl PublicApi {
    pub fn new(upstreams: Arc<Upstreams>) -> Self {
        Self {
            upstreams,
            owners: Cache::new(OWNER_CACHE_CAPACITY),
        }
    }

    /// The authorization step every call passes, gRPC and REST alike
    /// (asset streaming included): the caller must have `role`, and a
    /// non-admin may reach only its own jobs.
    pub async fn authorize(
        &self,
        caller: &Principal,
        reach: Reach<'_>,
        role: Role,
    ) -> Result<(), Status> {
        caller.require(role)?;
        let Reach::Job(job_id) = reach else {
            return Ok(());
        };
        if caller.is_admin() {
            return Ok(());
        }
        let owner = match self.owners.get(job_id) {
            Some(owner) => owner,
            None => self.fetch_job(caller, job_id).await?.owner,
        };
        caller.may_access(&owner, job_id)
    }

    /// The asset client for a REST stream, once the caller is authorized
    /// as a gRPC asset call is; like a forwarded gRPC call it acts for the
    /// caller, so it reaches only their files (every file for admins).
    pub async fn asset_client(
        &self,
        caller: &Principal,
        role: Role,
    ) -> Result<kiln_asset_client::AssetClient, Status> {
        self.authorize(caller, Reach::Assets, role).await?;
        Ok(self
            .upstreams
            .asset_client()
            .await?
            .on_behalf_of(&caller.name, Some(caller.role.as_str()))?)
    }

    /// One call, authorized then forwarded: checks the caller against what
    /// the message reaches and `role`, connects to the upstream service,
    /// and passes the message on the caller's behalf with `call`.
    pub(crate) async fn pass<T, C, R, F, Fut>(
        &self,
        request: Request<T>,
        role: Role,
        call: F,
    ) -> Result<Response<R>, Status>
    where
        T: Reaches + Send + Sync,
        C: Upstream,
        F: FnOnce(C, Request<T>) -> Fut + Send,
        Fut: Future<Output = Result<Response<R>, Status>> + Send,
    {
        let caller = auth::principal(&request)?;
        let message = request.into_inner();
        self.authorize(&caller, message.reach(), role).await?;
        let upstream = C::connect(&self.upstreams).await?;
        call(upstream, self.forward(&caller, message)?).await
    }

    /// A job's owner, from the cache or the scheduler; `None` if it cannot be told.
    async fn owner_of(&self, caller: &Principal, job_id: &str) -> Option<String> {
        if let Some(owner) = self.owners.get(job_id) {
            return Some(owner);
        }
        self.fetch_job(caller, job_id).await.ok().map(|j| j.owner)
    }

    async fn fetch_job(&self, caller: &Principal, job_id: &str) -> Result<pb::Job, Status> {
        let request = pb::GetJobRequest {
            job_id: job_id.to_owned(),
        };
        let job = self
            .upstreams
            .jobs()
            .await?
            .get_job(self.forward(caller, request)?)
            .await?
            .into_inner();
        self.owners.insert(job.id.clone(), job.owner.clone());
        Ok(job)
    }

    /// An upstream request for `message` carrying the caller's trace
    /// context, name and role, and the farm's service token that makes the
    /// internal services trust that name; nothing the client sent as
    /// metadata is passed on.
    fn forward<T>(&self, caller: &Principal, message: T) -> Result<Request<T>, Status> {
        let mut outgoing = Request::new(message);
        if let Ok(with_context) = kiln_telemetry::propagation::inject_context(Request::new(())) {
            *outgoing.metadata_mut() = with_context.metadata().clone();
        }
        let owner = MetadataValue::try_from(caller.name.as_str())
            .map_err(|_| Status::internal("token name is not valid metadata"))?;
        let metadata = outgoing.metadata_mut();
        metadata.insert(kiln_proto::metadata::OWNER, owner);
        // Admins see every tenant's files.
        metadata.insert(
            kiln_proto::metadata::ROLE,
            MetadataValue::from_static(caller.role.as_str()),
        );
        metadata.insert(
            kiln_proto::metadata::SERVICE_TOKEN,
            self.upstreams.service_token().clone(),
        );
        Ok(outgoing)
    }
}

/// A client's upload chunks, ending in an error instead of cleanly if the
/// client cut the upload off: tonic reports a client's RST_STREAM(CANCEL)
/// as a clean end of the stream, which would tell the assets service the
/// file is complete and get it stored truncated. `cut_off` says whether the
/// request body failed.
fn upload_pass_through(
    chunks: Streaming<pb::UploadChunk>,
    cut_off: BodyFailed,
) -> impl Stream<Item = Result<pb::UploadChunk, Status>> + Send + 'static {
    let end = futures::stream::once(async move {
        cut_off
            .get()
            .then(|| Err(Status::cancelled("upload cancelled by the client")))
    })
    .filter_map(futures::future::ready);
    chunks.chain(end)
}

/// Postgres text cannot hold NUL, and no name or path needs one: refused
/// here with the field's name rather than failing deep in the scheduler.
pub(crate) fn refuse_nul(field: &str, value: &str) -> Result<(), Status> {
    if value.contains('\0') {
        return Err(kiln_proto::status::invalid_field(
            field,
            "contains a NUL byte",
            format!("{field}: contains a NUL byte"),
        ));
    }
    Ok(())
}

/// The priority a request asks for, as the scheduler reads it: a named
/// level wins over the number, and 0 means normal (50). Values the
/// scheduler refuses pass through unchanged for it to refuse.
fn requested_priority(number: u32, level: i32) -> u32 {
    match pb::PriorityLevel::try_from(level) {
        Ok(pb::PriorityLevel::Low) => 25,
        Ok(pb::PriorityLevel::Normal) => 50,
        Ok(pb::PriorityLevel::High) => 75,
        Ok(pb::PriorityLevel::Critical) => 100,
        Ok(pb::PriorityLevel::Unspecified) | Err(_) => match number {
            0 => 50,
            n => n,
        },
    }
}

fn check_submission(message: &pb::SubmitJobRequest) -> Result<(), Status> {
    refuse_nul("name", &message.name)?;
    if let Some(template) = &message.template {
        let (field, text) = match template {
            pb::submit_job_request::Template::BuiltinTemplate(name) => ("builtin_template", name),
            pb::submit_job_request::Template::TemplateDocument(doc) => ("template_document", doc),
        };
        refuse_nul(field, text)?;
    }
    for (key, value) in &message.parameters {
        refuse_nul("parameters", key)?;
        refuse_nul(&format!("parameters.{key}"), value)?;
    }
    for (index, input) in message.inputs.iter().enumerate() {
        refuse_nul(&format!("inputs[{index}].path"), &input.path)?;
        refuse_nul(&format!("inputs[{index}].digest"), &input.digest)?;
    }
    Ok(())
}

/// What a call reaches, which decides its authorization with its role.
#[derive(Debug, Clone, Copy)]
pub enum Reach<'a> {
    /// Something of one job: its owner's (or an admin's) only.
    Job(&'a str),
    /// Files addressed by content: the role is enough here, since the
    /// assets service shows each caller only their own files (calls go to
    /// it as the caller).
    Assets,
    /// Every job of the farm: the role is enough (admin where it shows
    /// every owner's jobs).
    Farm,
}

/// A request message, and what it reaches.
pub trait Reaches {
    fn reach(&self) -> Reach<'_>;
}

/// Implements [`Reaches`] for messages of one job (`job`, by their
/// `job_id`) or of a fixed reach.
macro_rules! reaches {
    ($($message:ty),* => job) => {
        $(impl Reaches for $message {
            fn reach(&self) -> Reach<'_> {
                Reach::Job(&self.job_id)
            }
        })*
    };
    ($($message:ty),* => $reach:ident) => {
        $(impl Reaches for $message {
            fn reach(&self) -> Reach<'_> {
                Reach::$reach
            }
        })*
    };
}

reaches!(
    pb::CancelJobRequest, pb::PauseJobRequest, pb::ResumeJobRequest, pb::RetryJobRequest,
    pb::SetJobPriorityRequest, pb::ClearBlocklistRequest, pb::ListOutputsRequest,
    pb::ListTasksRequest, pb::GetTaskLogRequest, pb::WatchJobRequest, pb::WatchTaskLogRequest,
    pb::ExplainWaitingRequest, pb::GetTaskHistoryRequest
    => job
);
reaches!(
    pb::DownloadRequest, pb::StatRequest, pb::FindMissingRequest, pb::UploadOffsetRequest,
    pb::PresignDownloadRequest => Assets
);
reaches!(
    pb::WatchFarmRequest, pb::ListJobsRequest, pb::ListTaskSpansRequest, pb::ListWorkersRequest,
    pb::GetWorkerRequest, pb::WorkerActionRequest, pb::SetWorkerTagsRequest => Farm
);
// Webhooks are the scheduler's to scope: it shows each user their own.
reaches!(
    pb::CreateWebhookRequest, pb::ListWebhooksRequest, pb::DeleteWebhookRequest,
    pb::ResumeWebhookRequest, pb::ListDeliveriesRequest => Farm
);

/// An internal service calls are passed to.
pub trait Upstream: Sized {
    fn connect(upstreams: &Upstreams) -> impl Future<Output = Result<Self, Status>> + Send;
}

impl Upstream for JobServiceClient<MeshChannel> {
    fn connect(upstreams: &Upstreams) -> impl Future<Output = Result<Self, Status>> + Send {
        upstreams.jobs()
    }
}

impl Upstream for FarmServiceClient<MeshChannel> {
    fn connect(upstreams: &Upstreams) -> impl Future<Output = Result<Self, Status>> + Send {
        upstreams.farm()
    }
}

impl Upstream for AssetServiceClient<MeshChannel> {
    fn connect(upstreams: &Upstreams) -> impl Future<Output = Result<Self, Status>> + Send {
        upstreams.assets()
    }
}

impl Upstream for WebhookServiceClient<MeshChannel> {
    fn connect(upstreams: &Upstreams) -> impl Future<Output = Result<Self, Status>> + Send {
        upstreams.webhooks()
    }
}

type Jobs = JobServiceClient<MeshChannel>;
type Farm = FarmServiceClient<MeshChannel>;
type Assets = AssetServiceClient<MeshChannel>;

#[tonic::async_trait]
impl pb::job_service_server::JobService for PublicApi {
    async fn submit_job(
        &self,
        request: Request<pb::SubmitJobRequest>,
    ) -> Result<Response<pb::Job>, Status> {
        let caller = auth::principal(&request)?;
        self.authorize(&caller, Reach::Farm, Role::Submitter)
            .await?;
        let message = request.into_inner();
        check_submission(&message)?;
        caller.may_give_priority(requested_priority(message.priority, message.priority_level))?;
        for dependency in &message.depends_on_jobs {
            self.authorize(&caller, Reach::Job(dependency), Role::Submitter)
                .await
                .map_err(|status| {
                    Status::new(
                        status.code(),
                        format!("depends_on_jobs: {}", status.message()),
                    )
                })?;
        }
        let job = self
            .upstreams
            .jobs()
            .await?
            .submit_job(self.forward(&caller, message)?)
            .await?;
        self.owners
            .insert(job.get_ref().id.clone(), job.get_ref().owner.clone());
        Ok(job)
    }

    async fn get_job(
        &self,
        request: Request<pb::GetJobRequest>,
    ) -> Result<Response<pb::Job>, Status> {
        let caller = auth::principal(&request)?;
        // The job's record is what tells its owner: it is fetched once, and
        // its owner checked as `authorize` would.
        caller.require(Role::Viewer)?;
        let job = self.fetch_job(&caller, &request.get_ref().job_id).await?;
        caller.may_access(&job.owner, &job.id)?;
        Ok(Response::new(job))
    }

    async fn list_jobs(
        &self,
        request: Request<pb::ListJobsRequest>,
    ) -> Result<Response<pb::ListJobsResponse>, Status> {
        let caller = auth::principal(&request)?;
        let (metadata, extensions, mut message) = request.into_parts();
        refuse_nul("owner", &message.owner)?;
        refuse_nul("name_contains", &message.name_contains)?;
        // Non-admins list their own jobs only.
        if !caller.is_admin() {
            if message.owner.is_empty() {
                message.owner = caller.name.clone();
            } else if message.owner != caller.name {
                return Err(Status::permission_denied(
                    "owner: only admins may list other users' jobs",
                ));
            }
        }
        let request = Request::from_parts(metadata, extensions, message);
        self.pass(request, Role::Viewer, |mut jobs: Jobs, r| async move {
            jobs.list_jobs(r).await
        })
        .await
    }

    async fn cancel_job(
        &self,
        request: Request<pb::CancelJobRequest>,
    ) -> Result<Response<pb::Job>, Status> {
        self.pass(request, Role::Submitter, |mut jobs: Jobs, r| async move {
            jobs.cancel_job(r).await
        })
        .await
    }

    async fn list_outputs(
        &self,
        request: Request<pb::ListOutputsRequest>,
    ) -> Result<Response<pb::ListOutputsResponse>, Status> {
        self.pass(request, Role::Viewer, |mut jobs: Jobs, r| async move {
            jobs.list_outputs(r).await
        })
        .await
    }

    async fn list_tasks(
        &self,
        request: Request<pb::ListTasksRequest>,
    ) -> Result<Response<pb::ListTasksResponse>, Status> {
        self.pass(request, Role::Viewer, |mut jobs: Jobs, r| async move {
            jobs.list_tasks(r).await
        })
        .await
    }

    async fn get_task_log(
        &self,
        request: Request<pb::GetTaskLogRequest>,
    ) -> Result<Response<pb::TaskLog>, Status> {
        self.pass(request, Role::Viewer, |mut jobs: Jobs, r| async move {
            jobs.get_task_log(r).await
        })
        .await
    }

    async fn pause_job(
        &self,
        request: Request<pb::PauseJobRequest>,
    ) -> Result<Response<pb::Job>, Status> {
        self.pass(request, Role::Submitter, |mut jobs: Jobs, r| async move {
            jobs.pause_job(r).await
        })
        .await
    }

    async fn resume_job(
        &self,
        request: Request<pb::ResumeJobRequest>,
    ) -> Result<Response<pb::Job>, Status> {
        self.pass(request, Role::Submitter, |mut jobs: Jobs, r| async move {
            jobs.resume_job(r).await
        })
        .await
    }

    async fn retry_job(
        &self,
        request: Request<pb::RetryJobRequest>,
    ) -> Result<Response<pb::Job>, Status> {
        self.pass(request, Role::Submitter, |mut jobs: Jobs, r| async move {
            jobs.retry_job(r).await
        })
        .await
    }

    async fn set_job_priority(
        &self,
        request: Request<pb::SetJobPriorityRequest>,
    ) -> Result<Response<pb::Job>, Status> {
        let caller = auth::principal(&request)?;
        let message = request.get_ref();
        caller.may_give_priority(requested_priority(message.priority, message.priority_level))?;
        self.pass(request, Role::Submitter, |mut jobs: Jobs, r| async move {
            jobs.set_job_priority(r).await
        })
        .await
    }

    async fn clear_blocklist(
        &self,
        request: Request<pb::ClearBlocklistRequest>,
    ) -> Result<Response<pb::Job>, Status> {
        refuse_nul("worker_id", &request.get_ref().worker_id)?;
        self.pass(request, Role::Submitter, |mut jobs: Jobs, r| async move {
            jobs.clear_blocklist(r).await
        })
        .await
    }

    async fn explain_waiting(
        &self,
        request: Request<pb::ExplainWaitingRequest>,
    ) -> Result<Response<pb::ExplainWaitingResponse>, Status> {
        self.pass(request, Role::Viewer, |mut jobs: Jobs, r| async move {
            jobs.explain_waiting(r).await
        })
        .await
    }

    async fn get_task_history(
        &self,
        request: Request<pb::GetTaskHistoryRequest>,
    ) -> Result<Response<pb::TaskHistory>, Status> {
        self.pass(request, Role::Viewer, |mut jobs: Jobs, r| async move {
            jobs.get_task_history(r).await
        })
        .await
    }

    /// A timeline of the farm's tasks: non-admins see their own jobs' only.
    async fn list_task_spans(
        &self,
        request: Request<pb::ListTaskSpansRequest>,
    ) -> Result<Response<pb::ListTaskSpansResponse>, Status> {
        let caller = auth::principal(&request)?;
        let (metadata, extensions, mut message) = request.into_parts();
        refuse_nul("owner", &message.owner)?;
        if !caller.is_admin() {
            message.owner = caller.name.clone();
        }
        let request = Request::from_parts(metadata, extensions, message);
        self.pass(request, Role::Viewer, |mut jobs: Jobs, r| async move {
            jobs.list_task_spans(r).await
        })
        .await
    }

    type WatchJobStream = BoxStream<pb::JobEvent>;

    async fn watch_job(
        &self,
        request: Request<pb::WatchJobRequest>,
    ) -> Result<Response<Self::WatchJobStream>, Status> {
        let events = self
            .pass(request, Role::Viewer, |mut jobs: Jobs, r| async move {
                jobs.watch_job(r).await
            })
            .await?;
        Ok(Response::new(Box::pin(events.into_inner())))
    }

    type WatchFarmStream = BoxStream<pb::JobEvent>;

    /// Every job's events for admins; anyone else gets the events of their
    /// own jobs and the workers' comings and goings, in the same order and
    /// with the same positions (so they resume the same way).
    async fn watch_farm(
        &self,
        request: Request<pb::WatchFarmRequest>,
    ) -> Result<Response<Self::WatchFarmStream>, Status> {
        let caller = auth::principal(&request)?;
        let events = self
            .pass(request, Role::Viewer, |mut jobs: Jobs, r| async move {
                jobs.watch_farm(r).await
            })
            .await?
            .into_inner();
        if caller.is_admin() {
            return Ok(Response::new(Box::pin(events)));
        }
        let api = self.clone();
        let own = events.filter_map(move |event| {
            let (api, caller) = (api.clone(), caller.clone());
            async move {
                let Ok(event) = event else {
                    return Some(event);
                };
                if event.job_id.is_empty() {
                    return Some(Ok(event));
                }
                api.owner_of(&caller, &event.job_id)
                    .await
                    .filter(|owner| *owner == caller.name)
                    .map(|_| Ok(event))
            }
        });
        Ok(Response::new(Box::pin(own)))
    }

    type WatchTaskLogStream = BoxStream<pb::TaskLogLines>;

    async fn watch_task_log(
        &self,
        request: Request<pb::WatchTaskLogRequest>,
    ) -> Result<Response<Self::WatchTaskLogStream>, Status> {
        let lines = self
            .pass(request, Role::Viewer, |mut jobs: Jobs, r| async move {
                jobs.watch_task_log(r).await
            })
            .await?;
        Ok(Response::new(Box::pin(lines.into_inner())))
    }
}

/// Every asset call is forwarded as the caller: the assets service answers
/// as the caller sees the store (their own files; all of them for admins).
#[tonic::async_trait]
impl pb::asset_service_server::AssetService for PublicApi {
    async fn upload(
        &self,
        request: Request<Streaming<pb::UploadChunk>>,
    ) -> Result<Response<pb::AssetInfo>, Status> {
        let caller = auth::principal(&request)?;
        self.authorize(&caller, Reach::Assets, Role::Submitter)
            .await?;
        let cut_off = request
            .extensions()
            .get::<BodyFailed>()
            .cloned()
            .unwrap_or_default();
        // Chunks pass straight through: the gateway never holds a whole file.
        let chunks = upload_pass_through(request.into_inner(), cut_off);
        let (failed_tx, failed_rx) = oneshot::channel();
        let chunks = kiln_asset_client::stall_on_error(chunks, failed_tx);
        let mut assets = self.upstreams.assets().await?;
        let upload = assets.upload(self.forward(&caller, chunks)?);
        // Biased so that a client's failure always wins: returning drops the
        // upstream call, which resets its stream, and the assets service
        // keeps what it received for the client to resume.
        tokio::select! {
            biased;
            Ok(status) = failed_rx => Err(status),
            result = upload => result,
        }
    }

    type DownloadStream = BoxStream<pb::DownloadChunk>;

    async fn download(
        &self,
        request: Request<pb::DownloadRequest>,
    ) -> Result<Response<Self::DownloadStream>, Status> {
        let chunks = self
            .pass(request, Role::Viewer, |mut assets: Assets, r| async move {
                assets.download(r).await
            })
            .await?;
        Ok(Response::new(Box::pin(chunks.into_inner())))
    }

    async fn stat(
        &self,
        request: Request<pb::StatRequest>,
    ) -> Result<Response<pb::StatResponse>, Status> {
        self.pass(request, Role::Viewer, |mut assets: Assets, r| async move {
            assets.stat(r).await
        })
        .await
    }

    async fn find_missing(
        &self,
        request: Request<pb::FindMissingRequest>,
    ) -> Result<Response<pb::FindMissingResponse>, Status> {
        self.pass(request, Role::Viewer, |mut assets: Assets, r| async move {
            assets.find_missing(r).await
        })
        .await
    }

    async fn upload_offset(
        &self,
        request: Request<pb::UploadOffsetRequest>,
    ) -> Result<Response<pb::UploadOffsetResponse>, Status> {
        self.pass(
            request,
            Role::Submitter,
            |mut assets: Assets, r| async move { assets.upload_offset(r).await },
        )
        .await
    }

    async fn presign_download(
        &self,
        request: Request<pb::PresignDownloadRequest>,
    ) -> Result<Response<pb::PresignDownloadResponse>, Status> {
        self.pass(request, Role::Viewer, |mut assets: Assets, r| async move {
            assets.presign_download(r).await
        })
        .await
    }
}

/// What a non-admin may see of a worker: not which other users' tasks it runs.
fn redact(caller: &Principal, mut worker: pb::Worker) -> pb::Worker {
    if caller.is_admin() {
        return worker;
    }
    let before = worker.running.len();
    worker.running.retain(|task| task.owner == caller.name);
    worker.hidden_running = (before - worker.running.len()) as u32;
    worker.blocklisted_by.clear();
    worker.blocklisted_by_more = 0;
    worker
}

/// Workers, for everyone (other users' tasks hidden); actions, for admins.
#[tonic::async_trait]
impl pb::farm_service_server::FarmService for PublicApi {
    async fn list_workers(
        &self,
        request: Request<pb::ListWorkersRequest>,
    ) -> Result<Response<pb::ListWorkersResponse>, Status> {
        let caller = auth::principal(&request)?;
        let mut list = self
            .pass(request, Role::Viewer, |mut farm: Farm, r| async move {
                farm.list_workers(r).await
            })
            .await?
            .into_inner();
        list.workers = list
            .workers
            .into_iter()
            .map(|w| redact(&caller, w))
            .collect();
        Ok(Response::new(list))
    }

    async fn get_worker(
        &self,
        request: Request<pb::GetWorkerRequest>,
    ) -> Result<Response<pb::Worker>, Status> {
        let caller = auth::principal(&request)?;
        refuse_nul("worker_id", &request.get_ref().worker_id)?;
        let worker = self
            .pass(request, Role::Viewer, |mut farm: Farm, r| async move {
                farm.get_worker(r).await
            })
            .await?
            .into_inner();
        Ok(Response::new(redact(&caller, worker)))
    }

    async fn disable_worker(
        &self,
        request: Request<pb::WorkerActionRequest>,
    ) -> Result<Response<pb::Worker>, Status> {
        refuse_nul("worker_id", &request.get_ref().worker_id)?;
        self.pass(request, Role::Admin, |mut farm: Farm, r| async move {
            farm.disable_worker(r).await
        })
        .await
    }

    async fn enable_worker(
        &self,
        request: Request<pb::WorkerActionRequest>,
    ) -> Result<Response<pb::Worker>, Status> {
        refuse_nul("worker_id", &request.get_ref().worker_id)?;
        self.pass(request, Role::Admin, |mut farm: Farm, r| async move {
            farm.enable_worker(r).await
        })
        .await
    }

    async fn drain_worker(
        &self,
        request: Request<pb::WorkerActionRequest>,
    ) -> Result<Response<pb::Worker>, Status> {
        refuse_nul("worker_id", &request.get_ref().worker_id)?;
        self.pass(request, Role::Admin, |mut farm: Farm, r| async move {
            farm.drain_worker(r).await
        })
        .await
    }

    async fn set_worker_tags(
        &self,
        request: Request<pb::SetWorkerTagsRequest>,
    ) -> Result<Response<pb::Worker>, Status> {
        refuse_nul("worker_id", &request.get_ref().worker_id)?;
        for tag in &request.get_ref().tags {
            refuse_nul("tags", tag)?;
        }
        self.pass(request, Role::Admin, |mut farm: Farm, r| async move {
            farm.set_worker_tags(r).await
        })
        .await
    }
}
