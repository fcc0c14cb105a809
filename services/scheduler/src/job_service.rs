//! The job API, as the scheduler serves it to the gateway.

use std::path::{Component, Path};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use kiln_discovery::{Discovery, service};
use kiln_jobmodel::{Limits, TemplateLibrary, plan_job};
use kiln_proto::v1 as pb;
use kiln_proto::v1::job_event::Event;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};
use uuid::Uuid;

use crate::commands::{Command, Control};
use crate::event_log::{self, Scope, Watch};
use crate::job_state::JobState;
use crate::leader::LeaderSlot;
use crate::loader::{self, JobSettings};
use crate::scheduler::Scheduler;
use crate::{SchedulerError, store};

const DEFAULT_PRIORITY: u32 = 50;
const MAX_LIST: u32 = 1000;
const MAX_INPUTS: usize = 1000;
const MAX_DEPENDENCIES: usize = 100;
/// A week: longer limits are surely typos.
const MAX_RUN_LIMIT: u32 = 7 * 24 * 3600;

/// The submission's path-mapping rules in the OpenJD model's terms.
fn path_mapping_rules(
    rules: &[pb::PathMappingRule],
) -> Result<Vec<kiln_jobmodel::PathMappingRule>, SchedulerError> {
    if rules.len() > kiln_jobmodel::MAX_PATH_MAPPING_RULES {
        return Err(invalid(format!(
            "path_mapping_rules: {} rules, more than the limit of {}",
            rules.len(),
            kiln_jobmodel::MAX_PATH_MAPPING_RULES
        )));
    }
    rules
        .iter()
        .enumerate()
        .map(|(i, rule)| {
            let source_path_format = match rule.source_path_format.to_ascii_uppercase().as_str() {
                "POSIX" => kiln_jobmodel::PathFormat::Posix,
                "WINDOWS" => kiln_jobmodel::PathFormat::Windows,
                other => {
                    return Err(invalid(format!(
                        "path_mapping_rules[{i}].source_path_format: {other:?} is not POSIX or WINDOWS"
                    )));
                }
            };
            Ok(kiln_jobmodel::PathMappingRule {
                source_path_format,
                source_path: rule.source_path.clone(),
                destination_path: rule.destination_path.clone(),
            })
        })
        .collect()
}

/// Defaults for what a submission leaves unset.
#[derive(Debug, Clone, Copy)]
pub struct JobDefaults {
    pub stall_seconds: u32,
}
/// Events queued per watcher before the watcher is considered too slow.
const WATCH_BUFFER: usize = 256;

pub struct JobApi {
    leader: Arc<LeaderSlot>,
    discovery: Discovery,
    limits: Limits,
    defaults: JobDefaults,
    /// How the assets service is dialled (TLS when it lists itself so).
    assets_tls: kiln_tls::ClientTls,
    /// Built-in and admin-approved templates jobs may name.
    templates: Arc<TemplateLibrary>,
}

impl JobApi {
    pub fn new(
        leader: Arc<LeaderSlot>,
        discovery: Discovery,
        limits: Limits,
        defaults: JobDefaults,
    ) -> Self {
        Self {
            leader,
            discovery,
            limits,
            defaults,
            assets_tls: kiln_tls::ClientTls::default(),
            templates: Arc::default(),
        }
    }

    /// Dials the assets service with `tls` (its CA, and this scheduler's certificate).
    pub fn with_client_tls(mut self, tls: kiln_tls::ClientTls) -> Self {
        self.assets_tls = tls;
        self
    }

    /// Lets jobs name the admin-approved templates too.
    pub fn with_templates(mut self, templates: TemplateLibrary) -> Self {
        self.templates = Arc::new(templates);
        self
    }

    async fn submit(
        &self,
        owner: &str,
        request: pb::SubmitJobRequest,
    ) -> Result<pb::Job, SchedulerError> {
        let (template_name, document) = match &request.template {
            Some(pb::submit_job_request::Template::BuiltinTemplate(name)) => {
                (name.as_str(), self.templates.get(name)?)
            }
            Some(pb::submit_job_request::Template::TemplateDocument(doc)) => ("", doc.as_str()),
            None => {
                return Err(invalid(
                    "template: give builtin_template or template_document",
                ));
            }
        };
        let priority = priority_of(request.priority, request.priority_level, DEFAULT_PRIORITY)?;
        let limits = self.run_limits(&request)?;
        validate_inputs(&request.inputs)?;
        let depends_on = self.dependencies(&request.depends_on_jobs).await?;
        let trace_context = kiln_telemetry::propagation::current_context_map();
        let rules = path_mapping_rules(&request.path_mapping_rules)?;
        let plan = plan_job(document, &request.parameters, &rules, self.limits)?;
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
            depends_on_jobs: &depends_on.all,
            max_failed_tasks: limits.max_failed_tasks as i32,
            max_run_seconds: limits.max_run_seconds as i32,
            stall_seconds: limits.stall_seconds as i32,
            trace_context: &trace_context,
        };
        let created = store::create_job(
            &self.scheduler()?.db,
            self.scheduler()?.token,
            new_job,
            &plan,
        )
        .await?;
        let id = created.id;
        let settings = JobSettings {
            owner: owner.to_owned(),
            priority: priority as i32,
            max_failed_tasks: i64::from(limits.max_failed_tasks),
            max_run_seconds: limits.max_run_seconds,
            stall_seconds: limits.stall_seconds,
            inputs: request.inputs.clone(),
            waiting_on: depends_on.unfinished,
            trace_context,
            name: name.clone(),
            template_name: template_name.to_owned(),
        };
        let mut loaded = [loader::from_plan(id, settings, &plan, &created.task_ids)];
        loader::attach_earlier_run_times(&self.scheduler()?.db, &mut loaded).await;
        let [loaded] = loaded;
        self.scheduler()?
            .ask(|reply| Command::AddJob {
                job: loaded.job,
                tasks: loaded.tasks,
                reply,
            })
            .await?;
        tracing::info!(job_id = %id, owner, tasks = plan.task_count(), "job submitted");
        self.load_job(id).await
    }

    fn run_limits(&self, request: &pb::SubmitJobRequest) -> Result<RunLimits, SchedulerError> {
        for (field, value) in [
            ("max_run_seconds", request.max_run_seconds),
            ("stall_seconds", request.stall_seconds),
        ] {
            if value > MAX_RUN_LIMIT {
                return Err(invalid(format!(
                    "{field}: {value} is more than the limit of {MAX_RUN_LIMIT} (a week)"
                )));
            }
        }
        Ok(RunLimits {
            max_failed_tasks: request.max_failed_tasks.unwrap_or(0).min(i32::MAX as u32),
            max_run_seconds: request.max_run_seconds,
            stall_seconds: match request.stall_seconds {
                0 => self.defaults.stall_seconds,
                s => s,
            },
        })
    }

    /// The jobs a submission waits for: each must exist and must not have
    /// failed or been cancelled already.
    async fn dependencies(&self, ids: &[String]) -> Result<Dependencies, SchedulerError> {
        if ids.len() > MAX_DEPENDENCIES {
            return Err(invalid(format!(
                "depends_on_jobs: {} jobs, more than the limit of {MAX_DEPENDENCIES}",
                ids.len()
            )));
        }
        let mut dependencies = Dependencies::default();
        for text in ids {
            let id = parse_uuid("depends_on_jobs", text)?;
            match store::job_state(&self.scheduler()?.db, id).await? {
                None => return Err(invalid(format!("depends_on_jobs: job {id} does not exist"))),
                Some(JobState::Succeeded) => {}
                Some(state) if state.is_final() => {
                    return Err(SchedulerError::FailedPrecondition(format!(
                        "depends_on_jobs: job {id} has {} and will never succeed",
                        state.as_str()
                    )));
                }
                Some(_) => {
                    dependencies.unfinished.insert(id);
                }
            }
            dependencies.all.push(id);
        }
        Ok(dependencies)
    }

    /// Applies a control to a job and answers with the job as it is now.
    async fn control(&self, job_id: &str, control: Control) -> Result<pb::Job, SchedulerError> {
        let id = parse_job_id(job_id)?;
        self.require_job(id).await?;
        self.scheduler()?
            .ask(|reply| Command::Control {
                job_id: id,
                control,
                reply,
            })
            .await?;
        self.load_job(id).await
    }

    async fn cancel(&self, job_id: &str) -> Result<pb::Job, SchedulerError> {
        match self.control(job_id, Control::Cancel).await {
            // Cancelling a finished job changes nothing.
            Err(SchedulerError::JobFinished(_)) => self.load_job(parse_job_id(job_id)?).await,
            other => other,
        }
    }

    async fn retry(&self, job_id: &str) -> Result<pb::Job, SchedulerError> {
        let id = parse_job_id(job_id)?;
        let state = store::job_state(&self.scheduler()?.db, id)
            .await?
            .ok_or_else(|| SchedulerError::JobNotFound(id.to_string()))?;
        if state == JobState::Succeeded {
            return Err(SchedulerError::FailedPrecondition(format!(
                "job {id} succeeded; nothing to retry"
            )));
        }
        let reload = if state.is_final() {
            loader::load_one(&self.scheduler()?.db, id)
                .await?
                .map(|l| (l.job, l.tasks))
        } else {
            None
        };
        self.control(job_id, Control::Retry(reload)).await
    }

    async fn load_job(&self, id: Uuid) -> Result<pb::Job, SchedulerError> {
        store::get_job(&self.scheduler()?.db, id)
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
        let channel = self
            .assets_tls
            .endpoint(&endpoint.grpc_uri())
            .map_err(|e| SchedulerError::Assets(e.to_string()))?
            .connect_lazy();
        let assets = kiln_asset_client::AssetClient::new(channel);
        // One call for the whole bundle rather than one Stat per file.
        let digests: Vec<String> = inputs.iter().map(|i| i.digest.clone()).collect();
        let missing = assets
            .find_missing(&digests)
            .await
            .map_err(|err| SchedulerError::Assets(err.to_string()))?;
        if let Some(input) = inputs.iter().find(|i| missing.contains(&i.digest)) {
            return Err(invalid(format!(
                "inputs: {} (digest {}) is not stored in the asset service; upload it first",
                input.path, input.digest
            )));
        }
        Ok(())
    }
}

struct RunLimits {
    max_failed_tasks: u32,
    max_run_seconds: u32,
    stall_seconds: u32,
}

#[derive(Default)]
struct Dependencies {
    all: Vec<Uuid>,
    unfinished: std::collections::HashSet<Uuid>,
}

/// A priority from a number (0 meaning `default`) or a named level, which wins.
fn priority_of(number: u32, level: i32, default: u32) -> Result<u32, SchedulerError> {
    match pb::PriorityLevel::try_from(level) {
        Ok(pb::PriorityLevel::Low) => return Ok(25),
        Ok(pb::PriorityLevel::Normal) => return Ok(50),
        Ok(pb::PriorityLevel::High) => return Ok(75),
        Ok(pb::PriorityLevel::Critical) => return Ok(100),
        Ok(pb::PriorityLevel::Unspecified) => {}
        Err(_) => {
            return Err(invalid(format!(
                "priority_level: {level} is not a known level"
            )));
        }
    }
    match number {
        0 => Ok(default),
        p if p <= 100 => Ok(p),
        p => Err(invalid(format!("priority: {p} is outside 0-100"))),
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
    parse_uuid("job_id", text)
}

pub fn parse_uuid(field: &str, text: &str) -> Result<Uuid, SchedulerError> {
    Uuid::parse_str(text).map_err(|_| invalid(format!("{field}: {text:?} is not a UUID")))
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<pb::JobEvent, Status>> + Send>>;
type LogStream = Pin<Box<dyn Stream<Item = Result<pb::TaskLogLines, Status>> + Send>>;

fn parse_task(request: &pb::WatchTaskLogRequest) -> Result<(Uuid, Uuid), SchedulerError> {
    Ok((
        parse_job_id(&request.job_id)?,
        parse_uuid("task_id", &request.task_id)?,
    ))
}

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
        let mut job = self.load_job(id).await?;
        job.eta = self.scheduler()?.events.eta(id);
        Ok(Response::new(job))
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
        let jobs = store::list_jobs(&self.scheduler()?.db, owner, limit as i64)
            .await
            .map_err(SchedulerError::from)?;
        Ok(Response::new(pb::ListJobsResponse { jobs }))
    }

    async fn cancel_job(
        &self,
        request: Request<pb::CancelJobRequest>,
    ) -> Result<Response<pb::Job>, Status> {
        Ok(Response::new(self.cancel(&request.get_ref().job_id).await?))
    }

    type WatchJobStream = WatchStream;

    async fn watch_job(
        &self,
        request: Request<pb::WatchJobRequest>,
    ) -> Result<Response<WatchStream>, Status> {
        let id = parse_job_id(&request.get_ref().job_id)?;
        let scheduler = self.scheduler()?;
        // Subscribe before reading Postgres, so nothing between the two is missed.
        let live = scheduler.events.subscribe();
        let (tx, rx) = mpsc::channel(WATCH_BUFFER);
        let after = match request.get_ref().after_seq {
            Some(after) => {
                self.require_job(id).await?;
                after
            }
            None => {
                // The record is read after the position, so it shows at
                // least what the events up to it did.
                let position = event_log::last_position(&scheduler.db, Scope::Job(id))
                    .await
                    .map_err(SchedulerError::from)?;
                let job = self.load_job(id).await?;
                let opening = pb::JobEvent {
                    job_id: id.to_string(),
                    event: Some(Event::JobChanged(job)),
                    ..pb::JobEvent::default()
                };
                let _ = tx.try_send(Ok(opening));
                position
            }
        };
        let watch = Watch {
            scheduler,
            leader: self.leader.clone(),
            scope: Scope::Job(id),
            after,
            live,
            to: tx,
        };
        tokio::spawn(watch.run());
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    type WatchFarmStream = WatchStream;

    async fn watch_farm(
        &self,
        request: Request<pb::WatchFarmRequest>,
    ) -> Result<Response<WatchStream>, Status> {
        let scheduler = self.scheduler()?;
        let live = scheduler.events.subscribe();
        let after = match request.get_ref().after_farm_seq {
            Some(after) => after,
            None => event_log::last_position(&scheduler.db, Scope::Farm)
                .await
                .map_err(SchedulerError::from)?,
        };
        let (tx, rx) = mpsc::channel(WATCH_BUFFER);
        let watch = Watch {
            scheduler,
            leader: self.leader.clone(),
            scope: Scope::Farm,
            after,
            live,
            to: tx,
        };
        tokio::spawn(watch.run());
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    type WatchTaskLogStream = LogStream;

    async fn watch_task_log(
        &self,
        request: Request<pb::WatchTaskLogRequest>,
    ) -> Result<Response<LogStream>, Status> {
        let (job_id, task_id) = parse_task(request.get_ref())?;
        let scheduler = self.scheduler()?;
        let events = scheduler.events.subscribe();
        let subscription = scheduler.logs.subscribe(task_id);
        let state = store::task_state(&scheduler.db, job_id, task_id)
            .await
            .map_err(SchedulerError::from)?
            .ok_or_else(|| Status::not_found(format!("job {job_id} has no task {task_id}")))?;
        let (tx, rx) = mpsc::channel(WATCH_BUFFER);
        tokio::spawn(crate::task_log::follow(
            task_id,
            state.is_in_flight(),
            subscription,
            events,
            tx,
        ));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn get_task_log(
        &self,
        request: Request<pb::GetTaskLogRequest>,
    ) -> Result<Response<pb::TaskLog>, Status> {
        let (job_id, task_id) = parse_task(&pb::WatchTaskLogRequest {
            job_id: request.get_ref().job_id.clone(),
            task_id: request.get_ref().task_id.clone(),
        })?;
        let log = store::task_log(&self.scheduler()?.db, job_id, task_id)
            .await
            .map_err(SchedulerError::from)?
            .ok_or_else(|| {
                Status::not_found(format!(
                    "task {task_id} of job {job_id} has no stored log (yet: it is stored when an attempt ends)"
                ))
            })?;
        Ok(Response::new(log))
    }

    async fn list_outputs(
        &self,
        request: Request<pb::ListOutputsRequest>,
    ) -> Result<Response<pb::ListOutputsResponse>, Status> {
        let id = parse_job_id(&request.get_ref().job_id)?;
        self.require_job(id).await?;
        let outputs = store::list_outputs(&self.scheduler()?.db, id)
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
        let tasks = store::list_tasks(&self.scheduler()?.db, id)
            .await
            .map_err(SchedulerError::from)?;
        Ok(Response::new(pb::ListTasksResponse { tasks }))
    }

    async fn pause_job(
        &self,
        request: Request<pb::PauseJobRequest>,
    ) -> Result<Response<pb::Job>, Status> {
        let job_id = &request.get_ref().job_id;
        Ok(Response::new(self.control(job_id, Control::Pause).await?))
    }

    async fn resume_job(
        &self,
        request: Request<pb::ResumeJobRequest>,
    ) -> Result<Response<pb::Job>, Status> {
        let job_id = &request.get_ref().job_id;
        Ok(Response::new(self.control(job_id, Control::Resume).await?))
    }

    async fn retry_job(
        &self,
        request: Request<pb::RetryJobRequest>,
    ) -> Result<Response<pb::Job>, Status> {
        Ok(Response::new(self.retry(&request.get_ref().job_id).await?))
    }

    async fn set_job_priority(
        &self,
        request: Request<pb::SetJobPriorityRequest>,
    ) -> Result<Response<pb::Job>, Status> {
        let request = request.into_inner();
        if request.priority == 0 && request.priority_level == 0 {
            return Err(
                invalid("priority: give a priority from 0 to 100 or a priority_level").into(),
            );
        }
        let priority = priority_of(request.priority, request.priority_level, 0)?;
        let control = Control::SetPriority(priority as i32);
        Ok(Response::new(self.control(&request.job_id, control).await?))
    }

    async fn clear_blocklist(
        &self,
        request: Request<pb::ClearBlocklistRequest>,
    ) -> Result<Response<pb::Job>, Status> {
        let request = request.into_inner();
        let worker = Some(request.worker_id).filter(|w| !w.is_empty());
        let control = Control::ClearBlocklist(worker.clone());
        match self.control(&request.job_id, control).await {
            // A finished job is not in the queue: its record is all there is.
            Err(SchedulerError::JobFinished(_)) => {
                let id = parse_job_id(&request.job_id)?;
                let mut tx = self
                    .scheduler()?
                    .db
                    .begin()
                    .await
                    .map_err(SchedulerError::from)?;
                crate::fence::check(&mut tx, self.scheduler()?.token)
                    .await
                    .map_err(SchedulerError::from)?;
                store::clear_blocklist(&mut *tx, id, worker.as_deref())
                    .await
                    .map_err(SchedulerError::from)?;
                tx.commit().await.map_err(SchedulerError::from)?;
                Ok(Response::new(self.load_job(id).await?))
            }
            other => Ok(Response::new(other?)),
        }
    }
}

impl JobApi {
    /// The scheduler this process runs while it leads.
    fn scheduler(&self) -> Result<Arc<Scheduler>, SchedulerError> {
        self.leader.get()
    }

    async fn require_job(&self, id: Uuid) -> Result<(), SchedulerError> {
        match store::job_state(&self.scheduler()?.db, id).await? {
            Some(_) => Ok(()),
            None => Err(SchedulerError::JobNotFound(id.to_string())),
        }
    }
}
