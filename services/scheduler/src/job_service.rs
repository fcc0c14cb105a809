//! The job API, as the scheduler serves it to the gateway: gRPC translated
//! into submissions (`submit.rs`), controls for the dispatch core, and reads.
//! Each request takes this process's leader handle once and uses it
//! throughout.

use std::pin::Pin;
use std::sync::Arc;

use futures::{Stream, StreamExt};
use kiln_proto::v1 as pb;
use kiln_proto::v1::job_event::Event;
use kiln_service::paging::{self, BadPageToken, PageSize};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};
use uuid::Uuid;

use crate::core::command::{Command, Control};
use crate::core::waiting::Waiting;
use crate::error::{invalid, parse_job_id, parse_uuid};
use crate::event_replay::{self, Scope};
use crate::job_state::JobState;
use crate::leader::LeaderSlot;
use crate::loader;
use crate::retention::JobRetention;
use crate::scheduler::Scheduler;
use crate::stream_quota::{StreamPermit, StreamQuota};
use crate::submit::{Submissions, Submitter, priority_of};
use crate::watch::Watch;
use crate::{SchedulerError, queries};

/// Jobs a page: `limit`'s old rule (100, at most 1000).
const JOB_PAGE: PageSize = PageSize {
    default: 100,
    max: 1000,
};
/// Outputs a page: a JobOutput is a few hundred bytes, so the most fits
/// well within the gateway's 8 MiB upstream limit.
const OUTPUT_PAGE: PageSize = PageSize {
    default: 10_000,
    max: 10_000,
};
/// Tasks a page; their log tails make them larger, hence the byte bound too.
const TASK_PAGE: PageSize = PageSize {
    default: 1000,
    max: 1000,
};
/// A page stops before this many bytes, below the gateway's 8 MiB limit.
const MAX_PAGE_BYTES: usize = 4 * 1024 * 1024;

/// A task page token's position: `step position,index` of the last task.
fn task_position(text: &str) -> Result<queries::TaskPosition, BadPageToken> {
    let (step, index) = text.split_once(',').ok_or(BadPageToken)?;
    Ok((
        step.parse().map_err(|_| BadPageToken)?,
        index.parse().map_err(|_| BadPageToken)?,
    ))
}
/// Events queued per watcher before the watcher is considered too slow.
const WATCH_BUFFER: usize = 256;

pub struct JobApi {
    leader: Arc<LeaderSlot>,
    submissions: Submissions,
    /// Watch streams each owner holds open.
    streams: StreamQuota,
    /// How long finished jobs are kept: a retry must not reopen one about to go.
    retention: JobRetention,
}

impl JobApi {
    pub fn new(leader: Arc<LeaderSlot>, submissions: Submissions) -> Self {
        Self {
            leader,
            submissions,
            streams: StreamQuota::new(0),
            retention: JobRetention::forever(),
        }
    }

    /// Finished jobs are deleted after `retention` (`retention.rs`).
    pub fn with_retention(mut self, retention: JobRetention) -> Self {
        self.retention = retention;
        self
    }

    /// At most `quota` watch streams open per owner.
    pub fn with_stream_quota(mut self, quota: StreamQuota) -> Self {
        self.streams = quota;
        self
    }

    /// A permit for one more stream of the request's owner (none for a
    /// service's own call, which names no owner).
    fn stream_permit<T>(&self, request: &Request<T>) -> Result<Option<StreamPermit>, Status> {
        match owner_named(request) {
            Some(owner) => self
                .streams
                .open(owner)
                .map(Some)
                .map_err(Status::resource_exhausted),
            None => Ok(None),
        }
    }
}

/// `stream`, holding `permit` for as long as it lives.
fn holding<S>(stream: S, permit: Option<StreamPermit>) -> impl Stream<Item = S::Item> + Send
where
    S: Stream + Send,
{
    stream.map(move |item| {
        let _held = &permit;
        item
    })
}

/// Applies a control to a job and answers with the job as it is now.
async fn control(
    scheduler: &Scheduler,
    job_id: &str,
    control: Control,
) -> Result<pb::Job, SchedulerError> {
    let id = parse_job_id(job_id)?;
    require_job(scheduler, id).await?;
    scheduler
        .ask(|request| Command::Control {
            request,
            job_id: id,
            control,
        })
        .await?;
    load_job(scheduler, id).await
}

async fn cancel(scheduler: &Scheduler, job_id: &str) -> Result<pb::Job, SchedulerError> {
    match control(scheduler, job_id, Control::Cancel).await {
        // Cancelling a finished job changes nothing.
        Err(SchedulerError::JobFinished(_)) => load_job(scheduler, parse_job_id(job_id)?).await,
        other => other,
    }
}

async fn retry(
    scheduler: &Scheduler,
    retention: JobRetention,
    job_id: &str,
) -> Result<pb::Job, SchedulerError> {
    let id = parse_job_id(job_id)?;
    let (state, finished_ago) = queries::job_state_and_age(&scheduler.db, id)
        .await?
        .ok_or_else(|| SchedulerError::JobNotFound(id.to_string()))?;
    if state == JobState::Succeeded {
        return Err(SchedulerError::FailedPrecondition(format!(
            "job {id} succeeded; nothing to retry"
        )));
    }
    if let Some(age) = finished_ago
        && !retention.may_reopen(age)
    {
        return Err(SchedulerError::FailedPrecondition(format!(
            "job {id} finished {}s ago and is about to be deleted (the farm keeps finished jobs {}s); submit it again",
            age.as_secs(),
            retention.keep().map_or(0, |keep| keep.as_secs()),
        )));
    }
    // A deleted dependency cannot be told from one that failed: the core
    // would fail the job at once, for a reason that is not the real one.
    if state.is_final()
        && let Some(gone) = queries::deleted_dependencies(&scheduler.db, id)
            .await?
            .first()
    {
        return Err(SchedulerError::FailedPrecondition(format!(
            "job {id} depends on job {gone}, which was deleted after the farm's retention; submit it again"
        )));
    }
    let reload = if state.is_final() {
        loader::load_one(&scheduler.db, id)
            .await?
            .map(|l| (l.job, l.tasks))
    } else {
        None
    };
    control(scheduler, job_id, Control::Retry(reload)).await
}

async fn load_job(scheduler: &Scheduler, id: Uuid) -> Result<pb::Job, SchedulerError> {
    queries::get_job(&scheduler.db, id)
        .await?
        .ok_or_else(|| SchedulerError::JobNotFound(id.to_string()))
}

async fn require_job(scheduler: &Scheduler, id: Uuid) -> Result<(), SchedulerError> {
    match queries::job_state(&scheduler.db, id).await? {
        Some(_) => Ok(()),
        None => Err(SchedulerError::JobNotFound(id.to_string())),
    }
}

pub(crate) const ANONYMOUS: &str = "anonymous";

/// The caller's role as the gateway named it (`kiln-role`), if it did.
pub(crate) fn role_of<T>(request: &Request<T>) -> Option<String> {
    request
        .metadata()
        .get(kiln_proto::metadata::ROLE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// The user the gateway named for this call. Only a caller holding the
/// farm's service token gets this far with one (`internal_auth`).
pub(crate) fn owner_named<T>(request: &Request<T>) -> Option<&str> {
    request
        .metadata()
        .get(kiln_proto::metadata::OWNER)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty())
}

fn owner_of<T>(request: &Request<T>) -> String {
    owner_named(request).unwrap_or(ANONYMOUS).to_owned()
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
        let role = role_of(&request);
        let submitter = match owner_named(&request) {
            Some(_) => Submitter::Owner {
                name: &owner,
                role: role.as_deref(),
            },
            None => Submitter::Service,
        };
        let scheduler = self.scheduler()?;
        let job = self
            .submissions
            .submit(&scheduler, &owner, submitter, request.into_inner())
            .await?;
        Ok(Response::new(job))
    }

    async fn get_job(
        &self,
        request: Request<pb::GetJobRequest>,
    ) -> Result<Response<pb::Job>, Status> {
        let id = parse_job_id(&request.get_ref().job_id)?;
        let scheduler = self.scheduler()?;
        let mut job = load_job(&scheduler, id).await?;
        job.eta = scheduler.events.eta(id);
        job.held_reason = scheduler.events.held_reason(id);
        Ok(Response::new(job))
    }

    async fn list_jobs(
        &self,
        request: Request<pb::ListJobsRequest>,
    ) -> Result<Response<pb::ListJobsResponse>, Status> {
        let message = request.get_ref();
        let size = JOB_PAGE.of(match message.page_size {
            0 => message.limit,
            n => n,
        });
        let filter = job_filter(message)?;
        let filters = filter.fingerprint();
        let after = paging::decode_filtered("jobs", &filters, &message.page_token)?
            .map(|position| paging::parse_time_and_id(&position))
            .transpose()?;
        let jobs = queries::list_jobs(&self.scheduler()?.db, &filter, size as i64 + 1, after)
            .await
            .map_err(SchedulerError::from)?;
        let (jobs, next_page_token) = paging::page(
            "jobs",
            jobs,
            size,
            MAX_PAGE_BYTES,
            prost::Message::encoded_len,
            |job| {
                let created = job.created_at.unwrap_or_default();
                let position = paging::time_and_id(created.seconds, created.nanos, &job.id);
                paging::filtered(&filters, &position)
            },
        );
        Ok(Response::new(pb::ListJobsResponse {
            jobs,
            next_page_token,
        }))
    }

    async fn cancel_job(
        &self,
        request: Request<pb::CancelJobRequest>,
    ) -> Result<Response<pb::Job>, Status> {
        let scheduler = self.scheduler()?;
        Ok(Response::new(
            cancel(&scheduler, &request.get_ref().job_id).await?,
        ))
    }

    type WatchJobStream = WatchStream;

    async fn watch_job(
        &self,
        request: Request<pb::WatchJobRequest>,
    ) -> Result<Response<WatchStream>, Status> {
        let id = parse_job_id(&request.get_ref().job_id)?;
        let scheduler = self.scheduler()?;
        let permit = self.stream_permit(&request)?;
        // Subscribe before reading Postgres, so nothing between the two is missed.
        let live = scheduler.events.subscribe();
        let (tx, rx) = mpsc::channel(WATCH_BUFFER);
        let after = match request.get_ref().after_seq {
            Some(after) => {
                require_job(&scheduler, id).await?;
                after
            }
            None => {
                // The record is read after the position, so it shows at
                // least what the events up to it did.
                let position = event_replay::last_position(&scheduler.db, Scope::Job(id))
                    .await
                    .map_err(SchedulerError::from)?;
                let job = load_job(&scheduler, id).await?;
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
        Ok(Response::new(Box::pin(holding(
            ReceiverStream::new(rx),
            permit,
        ))))
    }

    type WatchFarmStream = WatchStream;

    async fn watch_farm(
        &self,
        request: Request<pb::WatchFarmRequest>,
    ) -> Result<Response<WatchStream>, Status> {
        let scheduler = self.scheduler()?;
        let permit = self.stream_permit(&request)?;
        let live = scheduler.events.subscribe();
        let after = match request.get_ref().after_farm_seq {
            Some(after) => after,
            None => event_replay::last_position(&scheduler.db, Scope::Farm)
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
        Ok(Response::new(Box::pin(holding(
            ReceiverStream::new(rx),
            permit,
        ))))
    }

    type WatchTaskLogStream = LogStream;

    async fn watch_task_log(
        &self,
        request: Request<pb::WatchTaskLogRequest>,
    ) -> Result<Response<LogStream>, Status> {
        let (job_id, task_id) = parse_task(request.get_ref())?;
        let scheduler = self.scheduler()?;
        let permit = self.stream_permit(&request)?;
        // Subscribed first, so the task's end is not missed.
        let events = scheduler.events.subscribe();
        // Only a task of this job (which the gateway checked is the
        // caller's) is watched, and only a running one makes room for its
        // lines: any other id would push other tasks' lines out.
        let state = queries::task_state(&scheduler.db, job_id, task_id)
            .await
            .map_err(SchedulerError::from)?
            .ok_or_else(|| Status::not_found(format!("job {job_id} has no task {task_id}")))?;
        let (tx, rx) = mpsc::channel(WATCH_BUFFER);
        if state.is_in_flight() {
            let subscription = scheduler.logs.subscribe(task_id);
            tokio::spawn(crate::task_log::follow(task_id, subscription, events, tx));
        } else if let Some((attempt, lines)) = scheduler.logs.recent(task_id)
            && !lines.is_empty()
        {
            let _ = tx.try_send(Ok(pb::TaskLogLines {
                task_id: task_id.to_string(),
                attempt,
                lines,
            }));
        }
        Ok(Response::new(Box::pin(holding(
            ReceiverStream::new(rx),
            permit,
        ))))
    }

    async fn get_task_log(
        &self,
        request: Request<pb::GetTaskLogRequest>,
    ) -> Result<Response<pb::TaskLog>, Status> {
        let (job_id, task_id) = parse_task(&pb::WatchTaskLogRequest {
            job_id: request.get_ref().job_id.clone(),
            task_id: request.get_ref().task_id.clone(),
        })?;
        let log = queries::task_log(&self.scheduler()?.db, job_id, task_id)
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
        let message = request.get_ref();
        let id = parse_job_id(&message.job_id)?;
        let size = OUTPUT_PAGE.of(message.page_size);
        let after = paging::decode("outputs", &message.page_token)?;
        let scheduler = self.scheduler()?;
        require_job(&scheduler, id).await?;
        let filter = queries::OutputFilter {
            path: Some(message.path.as_str()).filter(|p| !p.is_empty()),
            kind: Some(message.kind.as_str()).filter(|k| !k.is_empty()),
            after: after.as_deref(),
        };
        let outputs = queries::list_outputs(&scheduler.db, id, filter, size as i64 + 1)
            .await
            .map_err(SchedulerError::from)?;
        let (outputs, next_page_token) = paging::page(
            "outputs",
            outputs,
            size,
            MAX_PAGE_BYTES,
            prost::Message::encoded_len,
            |output| output.path.clone(),
        );
        Ok(Response::new(pb::ListOutputsResponse {
            outputs,
            next_page_token,
        }))
    }

    async fn list_tasks(
        &self,
        request: Request<pb::ListTasksRequest>,
    ) -> Result<Response<pb::ListTasksResponse>, Status> {
        let message = request.get_ref();
        let id = parse_job_id(&message.job_id)?;
        let size = TASK_PAGE.of(message.page_size);
        let after = paging::decode("tasks", &message.page_token)?
            .map(|position| task_position(&position))
            .transpose()?;
        let scheduler = self.scheduler()?;
        require_job(&scheduler, id).await?;
        let tasks = queries::list_tasks(&scheduler.db, id, size as i64 + 1, after)
            .await
            .map_err(SchedulerError::from)?;
        let (tasks, next_page_token) = paging::page(
            "tasks",
            tasks,
            size,
            MAX_PAGE_BYTES,
            |(_, task)| prost::Message::encoded_len(task),
            |((step, index), _)| format!("{step},{index}"),
        );
        Ok(Response::new(pb::ListTasksResponse {
            tasks: tasks.into_iter().map(|(_, task)| task).collect(),
            next_page_token,
        }))
    }

    async fn pause_job(
        &self,
        request: Request<pb::PauseJobRequest>,
    ) -> Result<Response<pb::Job>, Status> {
        let scheduler = self.scheduler()?;
        let job_id = &request.get_ref().job_id;
        Ok(Response::new(
            control(&scheduler, job_id, Control::Pause).await?,
        ))
    }

    async fn resume_job(
        &self,
        request: Request<pb::ResumeJobRequest>,
    ) -> Result<Response<pb::Job>, Status> {
        let scheduler = self.scheduler()?;
        let job_id = &request.get_ref().job_id;
        Ok(Response::new(
            control(&scheduler, job_id, Control::Resume).await?,
        ))
    }

    async fn retry_job(
        &self,
        request: Request<pb::RetryJobRequest>,
    ) -> Result<Response<pb::Job>, Status> {
        let scheduler = self.scheduler()?;
        Ok(Response::new(
            retry(&scheduler, self.retention, &request.get_ref().job_id).await?,
        ))
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
        let scheduler = self.scheduler()?;
        let set = Control::SetPriority(priority as i32);
        Ok(Response::new(
            control(&scheduler, &request.job_id, set).await?,
        ))
    }

    async fn clear_blocklist(
        &self,
        request: Request<pb::ClearBlocklistRequest>,
    ) -> Result<Response<pb::Job>, Status> {
        let request = request.into_inner();
        let scheduler = self.scheduler()?;
        let worker = Some(request.worker_id).filter(|w| !w.is_empty());
        // Through the core, for a finished job too: it writes the rows.
        let clear = Control::ClearBlocklist(worker);
        Ok(Response::new(
            control(&scheduler, &request.job_id, clear).await?,
        ))
    }

    async fn explain_waiting(
        &self,
        request: Request<pb::ExplainWaitingRequest>,
    ) -> Result<Response<pb::ExplainWaitingResponse>, Status> {
        let job_id = parse_job_id(&request.get_ref().job_id)?;
        let task_id = match request.get_ref().task_id.as_str() {
            "" => None,
            text => Some(parse_uuid("task_id", text)?),
        };
        let scheduler = self.scheduler()?;
        require_job(&scheduler, job_id).await?;
        let (waiting, place) = scheduler
            .query(move |core| {
                let waiting = match task_id {
                    None => core.explain_job(job_id),
                    Some(task_id) => core
                        .explain(task_id)
                        .filter(|_| core.task(task_id).is_some_and(|t| t.job_id == job_id))
                        .and_then(|reasons| {
                            let task = core.task(task_id)?;
                            let job = core.job(job_id)?;
                            Some(vec![crate::core::waiting::TaskWaiting {
                                task_id,
                                step: job.steps.get(task.step)?.name.clone(),
                                index: task.index,
                                similar: 0,
                                reasons,
                            }])
                        })
                        .unwrap_or_default(),
                };
                (waiting, core.queue_place(job_id))
            })
            .await?;
        let tasks = waiting
            .iter()
            .map(|w| pb::TaskWaiting {
                task_id: w.task_id.to_string(),
                step_name: w.step.clone(),
                index: w.index.max(0) as u32,
                similar_tasks: w.similar as u32,
                reasons: w.reasons.iter().map(wait_reason).collect(),
            })
            .collect();
        Ok(Response::new(pb::ExplainWaitingResponse {
            tasks,
            queue_position: place.position as u32,
            queue_length: place.length as u32,
        }))
    }

    async fn get_task_history(
        &self,
        request: Request<pb::GetTaskHistoryRequest>,
    ) -> Result<Response<pb::TaskHistory>, Status> {
        let job_id = parse_job_id(&request.get_ref().job_id)?;
        let task_id = parse_uuid("task_id", &request.get_ref().task_id)?;
        let scheduler = self.scheduler()?;
        let task = queries::get_task(&scheduler.db, job_id, task_id)
            .await
            .map_err(SchedulerError::from)?
            .ok_or_else(|| Status::not_found(format!("job {job_id} has no task {task_id}")))?;
        let attempts = crate::history::task_attempts(&scheduler.db, job_id, task_id)
            .await
            .map_err(SchedulerError::from)?;
        Ok(Response::new(pb::TaskHistory {
            task: Some(task),
            attempts,
        }))
    }

    async fn list_task_spans(
        &self,
        request: Request<pb::ListTaskSpansRequest>,
    ) -> Result<Response<pb::ListTaskSpansResponse>, Status> {
        let request = request.into_inner();
        let limit = match request.limit as usize {
            0 => crate::history::DEFAULT_SPANS,
            n => n.min(crate::history::MAX_SPANS),
        };
        let since = match time_filter("since", request.since.as_ref())? {
            Some(since) => since,
            None => crate::history::default_since(chrono::Utc::now()),
        };
        let owner = Some(request.owner.as_str()).filter(|o| !o.is_empty());
        let scheduler = self.scheduler()?;
        // The position first: a watch from it repeats nothing the spans
        // miss (it may repeat what they show; clients key spans by attempt).
        let farm_seq = event_replay::last_position(&scheduler.db, Scope::Farm)
            .await
            .map_err(SchedulerError::from)?;
        let spans = crate::history::task_spans(&scheduler.db, owner, since, limit)
            .await
            .map_err(SchedulerError::from)?;
        Ok(Response::new(pb::ListTaskSpansResponse { spans, farm_seq }))
    }
}

/// Workers kept away that a waiting reason lists, at most (by id).
const MAX_EXCLUDED_LISTED: usize = 100;
/// ... and names in its message.
const MAX_EXCLUDED_NAMED: usize = 10;

/// Longest name filter, in characters.
const MAX_NAME_FILTER: usize = 200;

/// A listing's filters, checked.
fn job_filter(request: &pb::ListJobsRequest) -> Result<queries::JobFilter, SchedulerError> {
    let mut states = Vec::with_capacity(request.states.len());
    for &state in &request.states {
        let state = pb::JobState::try_from(state)
            .ok()
            .and_then(JobState::from_proto)
            .ok_or_else(|| invalid(format!("states: {state} is not a job state")))?;
        states.push(state);
    }
    let name = request.name_contains.as_str();
    if name.chars().count() > MAX_NAME_FILTER || name.contains('\0') {
        return Err(invalid(format!(
            "name_contains: at most {MAX_NAME_FILTER} characters, without NUL"
        )));
    }
    Ok(queries::JobFilter {
        owner: Some(request.owner.clone()).filter(|o| !o.is_empty()),
        states,
        name_contains: Some(name.to_owned()).filter(|n| !n.is_empty()),
        submitted_after: time_filter("submitted_after", request.submitted_after.as_ref())?,
        submitted_before: time_filter("submitted_before", request.submitted_before.as_ref())?,
    })
}

fn time_filter(
    field: &str,
    at: Option<&pbjson_types::Timestamp>,
) -> Result<Option<chrono::DateTime<chrono::Utc>>, SchedulerError> {
    at.map(|t| {
        chrono::DateTime::from_timestamp(t.seconds, t.nanos.max(0) as u32)
            .ok_or_else(|| invalid(format!("{field}: not a valid time")))
    })
    .transpose()
}

/// The core's reasons, as the API tells them.
fn wait_reason(reason: &Waiting) -> pb::WaitReason {
    use pb::WaitCause as Cause;
    let mut out = pb::WaitReason::default();
    let (cause, message) = match reason {
        Waiting::JobPaused => (Cause::Paused, "the job is paused".to_owned()),
        Waiting::Held(why) => (
            Cause::Held,
            format!("admission control holds the job back: {why}"),
        ),
        Waiting::ForJobs(jobs) => {
            out.jobs = jobs.iter().map(Uuid::to_string).collect();
            (
                Cause::JobsUnfinished,
                format!("waiting for {} job(s) it depends on to succeed", jobs.len()),
            )
        }
        Waiting::ForSteps(steps) => {
            out.steps = steps.clone();
            (
                Cause::StepsUnfinished,
                format!("waiting for step(s) {} to finish", steps.join(", ")),
            )
        }
        Waiting::RetryBackoff(at) => {
            out.retry_at = at.map(crate::timestamps::timestamp);
            (
                Cause::RetryBackoff,
                "an attempt failed; the next waits out its backoff".to_owned(),
            )
        }
        Waiting::OwnerAtCap { running, cap } => (
            Cause::Quota,
            format!(
                "its owner has {running} task(s) running, as many as their share allows ({cap})"
            ),
        ),
        Waiting::NoMatchingWorker(unmet) => {
            out.requirements = unmet.clone();
            let message = if unmet.is_empty() {
                "no worker is connected".to_owned()
            } else {
                format!("no connected worker meets: {}", unmet.join("; "))
            };
            (Cause::NoMatchingWorker, message)
        }
        Waiting::WorkersExcluded(workers) => {
            // A large farm may keep thousands away: name a bounded few.
            out.workers = workers
                .iter()
                .take(MAX_EXCLUDED_LISTED)
                .map(|(id, why)| pb::ExcludedWorker {
                    worker_id: id.clone(),
                    reason: why.describe(),
                })
                .collect();
            let mut list: Vec<String> = workers
                .iter()
                .take(MAX_EXCLUDED_NAMED)
                .map(|(id, why)| format!("{id} ({})", why.describe()))
                .collect();
            if workers.len() > MAX_EXCLUDED_NAMED {
                list.push(format!("and {} more", workers.len() - MAX_EXCLUDED_NAMED));
            }
            (
                Cause::WorkersExcluded,
                format!("workers kept away: {}", list.join(", ")),
            )
        }
        Waiting::Queued(place) => {
            out.jobs_ahead = place.position.saturating_sub(1) as u32;
            out.jobs_ahead_higher_priority = place.ahead_higher_priority as u32;
            let message = match place.position {
                0 => "waiting for a free worker".to_owned(),
                1 => "next in the queue; waiting for a free worker".to_owned(),
                n => format!(
                    "number {n} of {} in the queue: {} job(s) ahead, {} of higher priority",
                    place.length,
                    n - 1,
                    place.ahead_higher_priority
                ),
            };
            (Cause::Queued, message)
        }
    };
    out.cause = cause as i32;
    out.message = message;
    out
}

impl JobApi {
    /// The scheduler this process runs while it leads.
    fn scheduler(&self) -> Result<Arc<Scheduler>, SchedulerError> {
        self.leader.get()
    }
}
