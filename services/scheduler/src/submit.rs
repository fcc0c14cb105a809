//! Job submission, as a service of its own: it validates a request, checks
//! through a narrow trait that every input is stored, writes the job's rows
//! (`inserts.rs`), and loads the job into the dispatch core. It works on
//! one leader's handle from start to end, so a submission never mixes two
//! leaderships. The gRPC layer (`job_service.rs`) only translates.

use std::collections::HashSet;
use std::path::{Component, Path};
use std::sync::Arc;

use kiln_asset_client::{AssetClient, CallCredentials};
use kiln_jobmodel::{JobPlan, Limits, TemplateLibrary, plan_job};
use kiln_proto::v1 as pb;
use uuid::Uuid;

use crate::core::admission_policy::Admission;
use crate::core::command::Command;
use crate::error::{invalid, parse_uuid};
use crate::idempotency::{IdempotencyKey, Outcome};
use crate::inserts::{self, NewJob};
use crate::job_state::JobState;
use crate::loader::{self, JobSettings};
use crate::scheduler::Scheduler;
use crate::{SchedulerError, queries};

const DEFAULT_PRIORITY: u32 = 50;
const MAX_INPUTS: usize = 1000;
const MAX_DEPENDENCIES: usize = 100;
/// A week: longer limits are surely typos.
const MAX_RUN_LIMIT: u32 = 7 * 24 * 3600;

/// Defaults for what a submission leaves unset.
#[derive(Debug, Clone, Copy)]
pub struct JobDefaults {
    pub stall_seconds: u32,
}

/// Who submits, as the assets service should see them: it answers
/// FindMissing as that owner sees the store, so another tenant's file is
/// "not stored" for them, and a job can never make a worker fetch a file
/// its owner could not read.
#[derive(Debug, Clone, Copy)]
pub enum Submitter<'a> {
    /// The user the gateway named (`kiln-owner`), with their role if it said.
    Owner {
        name: &'a str,
        role: Option<&'a str>,
    },
    /// A call that named no owner: another Kiln service, which sees every file.
    Service,
}

/// How large one submission's text may be; over a limit it is refused with
/// RESOURCE_EXHAUSTED naming the quota (the template's size is
/// [`Limits::max_template_bytes`], its task count [`Limits::max_tasks`]).
#[derive(Debug, Clone, Copy)]
pub struct SizeLimits {
    pub max_name_bytes: usize,
    pub max_parameter_bytes: usize,
}

impl Default for SizeLimits {
    fn default() -> Self {
        Self {
            max_name_bytes: 256,
            max_parameter_bytes: 64 * 1024,
        }
    }
}

/// Where a submission's input files must already be stored.
#[tonic::async_trait]
pub trait StoredInputs: Send + Sync {
    /// Those of `digests` that are not stored, or not `submitter`'s to use
    /// (the two look the same).
    async fn missing(
        &self,
        submitter: Submitter<'_>,
        digests: &[String],
    ) -> Result<Vec<String>, SchedulerError>;
}

/// The asset service, through the mesh (every replica), asked once per
/// submission.
pub struct AssetService {
    /// Through the mesh (every replica).
    channel: kiln_mesh::MeshChannel,
    /// The farm's service token, which the assets service asks of callers.
    credentials: CallCredentials,
}

impl AssetService {
    pub fn new(
        channel: kiln_mesh::MeshChannel,
        service_token: &str,
    ) -> Result<Self, SchedulerError> {
        let credentials = CallCredentials::service(service_token)
            .map_err(|err| SchedulerError::Assets(err.to_string()))?;
        Ok(Self {
            channel,
            credentials,
        })
    }
}

#[tonic::async_trait]
impl StoredInputs for AssetService {
    async fn missing(
        &self,
        submitter: Submitter<'_>,
        digests: &[String],
    ) -> Result<Vec<String>, SchedulerError> {
        // As the farm service, acting for the submitter.
        let credentials = match submitter {
            Submitter::Owner { name, role } => self
                .credentials
                .clone()
                .on_behalf_of(name, role)
                .map_err(|err| invalid(err.to_string()))?,
            Submitter::Service => self.credentials.clone(),
        };
        // One call for the whole bundle rather than one Stat per file.
        AssetClient::with_credentials(self.channel.clone(), credentials)
            .find_missing(digests)
            .await
            .map_err(|err| SchedulerError::Assets(err.to_string()))
    }
}

pub struct Submissions {
    limits: Limits,
    sizes: SizeLimits,
    defaults: JobDefaults,
    /// Built-in and admin-approved templates jobs may name.
    templates: Arc<TemplateLibrary>,
    stored: Arc<dyn StoredInputs>,
}

impl Submissions {
    pub fn new(limits: Limits, defaults: JobDefaults, stored: Arc<dyn StoredInputs>) -> Self {
        Self {
            limits,
            sizes: SizeLimits::default(),
            defaults,
            templates: Arc::default(),
            stored,
        }
    }

    /// Refuses names and parameters larger than `sizes`.
    pub fn with_sizes(mut self, sizes: SizeLimits) -> Self {
        self.sizes = sizes;
        self
    }

    /// Lets jobs name the admin-approved templates too.
    pub fn with_templates(mut self, templates: TemplateLibrary) -> Self {
        self.templates = Arc::new(templates);
        self
    }

    /// Validates, stores and schedules a job; answers with its record. A
    /// repeat of an earlier submission of `owner` with the same
    /// `request_id` answers with the job that one made
    /// ([`IdempotencyKey`]).
    pub async fn submit(
        &self,
        scheduler: &Scheduler,
        owner: &str,
        submitter: Submitter<'_>,
        request: pb::SubmitJobRequest,
    ) -> Result<pb::Job, SchedulerError> {
        let Some(key) = IdempotencyKey::of(&request)? else {
            return self
                .create(scheduler, owner, submitter, request, None)
                .await;
        };
        if let Some(job) = repeated(scheduler, owner, &key).await? {
            return Ok(job);
        }
        match self
            .create(scheduler, owner, submitter, request, Some(&key))
            .await
        {
            // A concurrent submission with the same key stored its job first.
            Err(err) if inserts::is_key_taken(&err) => {
                repeated(scheduler, owner, &key).await?.ok_or(err)
            }
            result => result,
        }
    }

    async fn create(
        &self,
        scheduler: &Scheduler,
        owner: &str,
        submitter: Submitter<'_>,
        request: pb::SubmitJobRequest,
        idempotency: Option<&IdempotencyKey>,
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
        check_sizes(&request, self.sizes, self.limits.max_template_bytes)?;
        let priority = priority_of(request.priority, request.priority_level, DEFAULT_PRIORITY)?;
        let limits = self.run_limits(&request)?;
        validate_inputs(&request.inputs)?;
        let tags: Vec<String> = crate::tags::check("tags", &request.tags)
            .map_err(invalid)?
            .into_iter()
            .collect();
        let depends_on = dependencies(scheduler, &request.depends_on_jobs).await?;
        let trace_context = kiln_telemetry::propagation::current_context_map();
        let rules = path_mapping_rules(&request.path_mapping_rules)?;
        let plan = plan_job(document, &request.parameters, &rules, self.limits)?;
        self.check_inputs_stored(submitter, &request.inputs).await?;
        // Admission control first: a refusal stores and reserves nothing.
        let held = admit(scheduler, owner, &plan).await?;
        // Room in the owner's quotas is reserved before any row is written.
        let mut admission = None;
        scheduler
            .ask(|request| {
                admission = Some(request);
                Command::Admit {
                    request,
                    owner: owner.to_owned(),
                    tasks: plan.task_count() as u64,
                }
            })
            .await?;
        let name = if request.name.is_empty() {
            plan.name.clone()
        } else {
            request.name.clone()
        };
        let new_job = NewJob {
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
            idempotency,
            tags: &tags,
        };
        let created = inserts::insert_job(&scheduler.db, scheduler.token, new_job, &plan).await?;
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
            tags,
            template_name: template_name.to_owned(),
        };
        let mut loaded = [loader::from_plan(id, settings, &plan, &created.task_ids)];
        loader::attach_earlier_run_times(&scheduler.db, &mut loaded).await;
        let [mut loaded] = loaded;
        loaded.job.held = held.clone();
        scheduler
            .ask(|request| Command::AddJob {
                request,
                admission,
                job: loaded.job,
                tasks: loaded.tasks,
            })
            .await?;
        tracing::info!(job_id = %id, owner, tasks = plan.task_count(), held = held.is_some(), "job submitted");
        let mut job = queries::get_job(&scheduler.db, id)
            .await?
            .ok_or_else(|| SchedulerError::JobNotFound(id.to_string()))?;
        job.held_reason = held.unwrap_or_default();
        Ok(job)
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

    async fn check_inputs_stored(
        &self,
        submitter: Submitter<'_>,
        inputs: &[pb::JobInput],
    ) -> Result<(), SchedulerError> {
        if inputs.is_empty() {
            return Ok(());
        }
        let digests: Vec<String> = inputs.iter().map(|i| i.digest.clone()).collect();
        let missing = self.stored.missing(submitter, &digests).await?;
        if let Some(input) = inputs.iter().find(|i| missing.contains(&i.digest)) {
            return Err(invalid(format!(
                "inputs: {} (digest {}) is not stored in the asset service; upload it first",
                input.path, input.digest
            )));
        }
        Ok(())
    }
}

/// The job `owner` made earlier with `key`'s request, if any; refuses a
/// reuse of the key for a different request.
async fn repeated(
    scheduler: &Scheduler,
    owner: &str,
    key: &IdempotencyKey,
) -> Result<Option<pb::Job>, SchedulerError> {
    let stored = queries::remembered_submission(&scheduler.db, owner, key.key()).await?;
    match key.decide(stored.as_ref())? {
        Outcome::Create => Ok(None),
        Outcome::Repeat(id) => {
            tracing::info!(job_id = %id, owner, "repeated submission answered with its job");
            queries::get_job(&scheduler.db, id)
                .await?
                .map(Some)
                .ok_or_else(|| SchedulerError::JobNotFound(id.to_string()))
        }
    }
}

/// Admission control's decision on the job `plan` describes, before any of
/// it is stored: the reason to hold it, if it is delayed.
async fn admit(
    scheduler: &Scheduler,
    owner: &str,
    plan: &JobPlan,
) -> Result<Option<String>, SchedulerError> {
    let mut renderers: Vec<String> = plan
        .steps
        .iter()
        .filter_map(|step| step.tasks.first().map(|t| t.command.clone()))
        .collect();
    renderers.sort();
    renderers.dedup();
    match scheduler.admission(owner, renderers).await? {
        Admission::Admit => Ok(None),
        Admission::Delay { reason } => {
            tracing::info!(owner, %reason, "submission delayed");
            Ok(Some(reason))
        }
        Admission::Refuse {
            reason,
            retry_after,
        } => {
            tracing::info!(owner, %reason, "submission refused");
            Err(SchedulerError::Overloaded {
                reason,
                retry_after_seconds: retry_after.as_secs().clamp(1, u64::from(u32::MAX)) as u32,
            })
        }
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
    unfinished: HashSet<Uuid>,
}

/// The jobs a submission waits for: each must exist and must not have
/// failed or been cancelled already.
async fn dependencies(
    scheduler: &Scheduler,
    ids: &[String],
) -> Result<Dependencies, SchedulerError> {
    if ids.len() > MAX_DEPENDENCIES {
        return Err(invalid(format!(
            "depends_on_jobs: {} jobs, more than the limit of {MAX_DEPENDENCIES}",
            ids.len()
        )));
    }
    let mut dependencies = Dependencies::default();
    for text in ids {
        let id = parse_uuid("depends_on_jobs", text)?;
        match queries::job_state(&scheduler.db, id).await? {
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

/// A priority from a number (0 meaning `default`) or a named level, which wins.
pub fn priority_of(number: u32, level: i32, default: u32) -> Result<u32, SchedulerError> {
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

/// The submission's path-mapping rules in the OpenJD model's terms (which
/// checks the paths themselves when it plans the job).
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

/// Refuses a submission whose name, parameters or template are larger than
/// their quotas allow.
fn check_sizes(
    request: &pb::SubmitJobRequest,
    sizes: SizeLimits,
    max_template_bytes: usize,
) -> Result<(), SchedulerError> {
    let over = |quota: &str, what: &str, bytes: usize, limit: usize| {
        SchedulerError::Quota(format!(
            "quota {quota}: {what} is {bytes} bytes, the limit is {limit}"
        ))
    };
    if request.name.len() > sizes.max_name_bytes {
        return Err(over(
            "max-job-name-bytes",
            "the job's name",
            request.name.len(),
            sizes.max_name_bytes,
        ));
    }
    let parameters: usize = request
        .parameters
        .iter()
        .map(|(name, value)| name.len() + value.len())
        .sum();
    if parameters > sizes.max_parameter_bytes {
        return Err(over(
            "max-parameter-bytes",
            "the job's parameters (names and values)",
            parameters,
            sizes.max_parameter_bytes,
        ));
    }
    if let Some(pb::submit_job_request::Template::TemplateDocument(document)) = &request.template
        && document.len() > max_template_bytes
    {
        return Err(over(
            "max-template-bytes",
            "the job's template",
            document.len(),
            max_template_bytes,
        ));
    }
    Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_named_priority_level_wins_over_the_number() {
        let high = pb::PriorityLevel::High as i32;
        assert_eq!(priority_of(10, high, DEFAULT_PRIORITY).ok(), Some(75));
        let low = pb::PriorityLevel::Low as i32;
        assert_eq!(priority_of(0, low, DEFAULT_PRIORITY).ok(), Some(25));
        let critical = pb::PriorityLevel::Critical as i32;
        assert_eq!(priority_of(0, critical, DEFAULT_PRIORITY).ok(), Some(100));
    }

    #[test]
    fn a_priority_number_is_0_to_100_and_0_means_the_default() {
        assert_eq!(priority_of(0, 0, DEFAULT_PRIORITY).ok(), Some(50));
        assert_eq!(priority_of(100, 0, DEFAULT_PRIORITY).ok(), Some(100));
        assert!(matches!(
            priority_of(101, 0, DEFAULT_PRIORITY),
            Err(SchedulerError::InvalidArgument(_))
        ));
        assert!(matches!(
            priority_of(0, 99, DEFAULT_PRIORITY),
            Err(SchedulerError::InvalidArgument(_))
        ));
    }

    #[test]
    fn path_mapping_rules_name_a_known_format_and_are_bounded() {
        let rule = |format: &str| pb::PathMappingRule {
            source_path_format: format.into(),
            source_path: "/mnt/projects".into(),
            destination_path: "root-0".into(),
        };
        let rules = path_mapping_rules(&[rule("posix"), rule("WINDOWS")]).expect("valid rules");
        assert_eq!(
            rules[0].source_path_format,
            kiln_jobmodel::PathFormat::Posix
        );
        assert_eq!(
            rules[1].source_path_format,
            kiln_jobmodel::PathFormat::Windows
        );
        assert_eq!(rules[0].destination_path, "root-0");
        let Err(SchedulerError::InvalidArgument(message)) = path_mapping_rules(&[rule("MACOS")])
        else {
            panic!("an unknown format is refused");
        };
        assert!(
            message.contains("path_mapping_rules[0].source_path_format"),
            "{message}"
        );
        let many = vec![rule("POSIX"); kiln_jobmodel::MAX_PATH_MAPPING_RULES + 1];
        assert!(matches!(
            path_mapping_rules(&many),
            Err(SchedulerError::InvalidArgument(_))
        ));
    }

    #[test]
    fn names_parameters_and_templates_larger_than_their_quotas_are_refused() {
        let sizes = SizeLimits {
            max_name_bytes: 8,
            max_parameter_bytes: 16,
        };
        let request = |name: &str, value: &str, template: &str| pb::SubmitJobRequest {
            name: name.into(),
            parameters: [("Frames".to_owned(), value.to_owned())].into(),
            template: Some(pb::submit_job_request::Template::TemplateDocument(
                template.into(),
            )),
            ..Default::default()
        };
        assert!(check_sizes(&request("short", "1-10", "x"), sizes, 10).is_ok());
        let quota = |r: Result<(), SchedulerError>| match r {
            Err(SchedulerError::Quota(message)) => message,
            other => panic!("expected a quota refusal, got {other:?}"),
        };
        let long_name = quota(check_sizes(&request("a-long-name", "1", "x"), sizes, 10));
        assert!(
            long_name.starts_with("quota max-job-name-bytes: "),
            "{long_name}"
        );
        let parameters = quota(check_sizes(&request("n", &"9".repeat(11), "x"), sizes, 10));
        assert!(
            parameters.starts_with("quota max-parameter-bytes: "),
            "{parameters}"
        );
        assert!(parameters.contains("17 bytes"), "{parameters}");
        let template = quota(check_sizes(&request("n", "1", &"y".repeat(11)), sizes, 10));
        assert!(
            template.starts_with("quota max-template-bytes: "),
            "{template}"
        );
    }

    #[test]
    fn inputs_must_be_relative_paths_with_valid_digests() {
        let input = |path: &str, digest: &str| pb::JobInput {
            path: path.into(),
            digest: digest.into(),
        };
        let digest = "a".repeat(64);
        assert!(validate_inputs(&[input("scene.blend", &digest)]).is_ok());
        assert!(validate_inputs(&[input("../etc/passwd", &digest)]).is_err());
        assert!(validate_inputs(&[input("/abs", &digest)]).is_err());
        assert!(validate_inputs(&[input("scene.blend", "nothex")]).is_err());
    }
}
