use std::net::SocketAddr;

use kiln_discovery::DiscoveryArgs;

use crate::core::pick_order::RunningCaps;
use crate::core::quota_policy::QuotaSettings;
use kiln_telemetry::TelemetryArgs;

use crate::core::admission_policy::{AdmissionAction, AdmissionPolicy};

/// Kiln's scheduler: owns job and task state in Postgres and dispatches tasks to workers.
#[derive(Debug, clap::Parser)]
#[command(name = "kiln-scheduler", version)]
pub struct Config {
    /// Address to serve gRPC on; port 0 picks a free port (registered in etcd)
    #[arg(long, env = "KILN_LISTEN", default_value = "127.0.0.1:0")]
    pub listen: SocketAddr,
    /// Postgres connection URL
    #[arg(long, env = "KILN_DATABASE_URL")]
    pub database_url: String,
    /// Most Postgres connections the scheduler holds
    #[arg(long, env = "KILN_DATABASE_MAX_CONNECTIONS", default_value_t = 16)]
    pub database_max_connections: u32,
    /// Seconds of the leadership lease: a leader that crashes is replaced this long after
    #[arg(long, env = "KILN_LEADER_TTL", default_value_t = 3, value_parser = clap::value_parser!(i64).range(2..=60))]
    pub leader_ttl: i64,
    /// Attempts a task gets before it fails for good
    #[arg(long, env = "KILN_MAX_ATTEMPTS", default_value_t = 3)]
    pub max_attempts: u32,
    /// Seconds before a failed task's second attempt; doubles with each further attempt
    #[arg(long, env = "KILN_RETRY_BASE_SECONDS", default_value_t = 2.0)]
    pub retry_base_seconds: f64,
    /// Failed attempts of one job's tasks after which a worker takes no more of them
    #[arg(long, env = "KILN_BLOCKLIST_AFTER", default_value_t = 3)]
    pub blocklist_after: u32,
    /// A task printing nothing for this many seconds is stalled: killed and
    /// counted as a failed attempt (jobs may set their own; 0 turns it off)
    #[arg(long, env = "KILN_STALL_SECONDS", default_value_t = 600)]
    pub stall_seconds: u32,
    /// Seconds a newly elected leader waits for workers to reconnect and
    /// confirm the tasks they kept running before requeueing those tasks
    #[arg(long, env = "KILN_RECLAIM_SECONDS", default_value_t = 15)]
    pub reclaim_seconds: u64,
    /// Seconds a finished job is kept before it is deleted with its tasks,
    /// outputs and events; 0 keeps finished jobs forever
    #[arg(
        long,
        env = "KILN_DELETE_FINISHED_JOBS_AFTER_SECONDS",
        default_value_t = 0
    )]
    pub delete_finished_jobs_after_seconds: u64,
    /// Directory of admin-approved OpenJD job templates (<name>.yaml/.yml/.json) that jobs may name like the built-ins; loaded at start
    #[arg(long, env = "KILN_TEMPLATE_DIR")]
    pub template_dir: Option<std::path::PathBuf>,
    /// Name of an admin-approved template (--template-dir) whose tasks may use the network; repeatable (comma-separated in the environment). Every other task runs without network
    #[arg(
        long = "network-template",
        env = "KILN_NETWORK_TEMPLATES",
        value_delimiter = ','
    )]
    pub network_templates: Vec<String>,
    /// An owner's weight in fair share, as NAME=WEIGHT (repeatable; default weight 1)
    #[arg(long = "owner-weight", env = "KILN_OWNER_WEIGHTS", value_delimiter = ',', value_parser = parse_weight)]
    pub owner_weights: Vec<(String, f64)>,
    /// Admission control: the estimated queue wait for a renderer, in seconds, above which a new job of an owner already over their fair share is held back (0 turns admission control off)
    #[arg(long, env = "KILN_ADMISSION_MAX_QUEUE_WAIT", default_value_t = 14_400)]
    pub admission_max_queue_wait: u64,
    /// What admission control does with a job it holds back: delay it (accepted, held, with the reason on the job) or refuse it (RESOURCE_EXHAUSTED / 429 with Retry-After)
    #[arg(long, env = "KILN_ADMISSION_POLICY", value_enum, default_value_t = AdmissionAction::Delay)]
    pub admission_policy: AdmissionAction,
    /// Most tasks one job may have
    #[arg(long, env = "KILN_MAX_TASKS_PER_JOB", default_value_t = 100_000)]
    pub max_tasks_per_job: usize,
    #[command(flatten)]
    pub quotas: QuotaArgs,
    #[command(flatten)]
    pub webhooks: crate::webhooks::WebhookArgs,
    /// Largest job template accepted, in bytes
    #[arg(long, env = "KILN_MAX_TEMPLATE_BYTES", default_value_t = 256 * 1024)]
    pub max_template_bytes: usize,
    /// Who may call: the gateway and the assets service by the farm's
    /// service token, workers by their join token or certificate
    #[command(flatten)]
    pub auth: kiln_service::internal_auth::InternalAuthArgs,
    #[command(flatten)]
    pub discovery: DiscoveryArgs,
    #[command(flatten)]
    pub telemetry: TelemetryArgs,
    #[command(flatten)]
    pub ops: kiln_service::OpsArgs,
    #[command(flatten)]
    pub tls: kiln_tls::TlsArgs,
    #[command(flatten)]
    pub mesh: kiln_mesh::MeshArgs,
}

impl Config {
    /// The farm's admission policy, from `--admission-*`.
    pub fn admission_policy(&self) -> AdmissionPolicy {
        AdmissionPolicy {
            max_queue_wait: (self.admission_max_queue_wait > 0)
                .then(|| std::time::Duration::from_secs(self.admission_max_queue_wait)),
            action: self.admission_policy,
        }
    }
}

/// What one owner may ask of the farm. A submission over a quota is refused
/// with RESOURCE_EXHAUSTED naming it (HTTP 429 through the gateway).
#[derive(Debug, Clone, clap::Args)]
pub struct QuotaArgs {
    /// Unfinished jobs one owner may have at once (0: no limit)
    #[arg(
        long,
        env = "KILN_MAX_UNFINISHED_JOBS_PER_OWNER",
        default_value_t = 1_000
    )]
    pub max_unfinished_jobs_per_owner: u64,
    /// Unfinished tasks one owner may have over all its jobs (0: no limit)
    #[arg(
        long,
        env = "KILN_MAX_QUEUED_TASKS_PER_OWNER",
        default_value_t = 500_000
    )]
    pub max_queued_tasks_per_owner: u64,
    /// Tasks of one owner running at once, its share cap, even on an idle farm (0: no cap)
    #[arg(long, env = "KILN_MAX_RUNNING_PER_OWNER", default_value_t = 0)]
    pub max_running_per_owner: u64,
    /// A named owner's share cap instead of --max-running-per-owner, as NAME=TASKS (repeatable; 0: no cap)
    #[arg(long = "owner-max-running", env = "KILN_OWNER_MAX_RUNNING", value_delimiter = ',', value_parser = parse_cap)]
    pub owner_max_running: Vec<(String, u64)>,
    /// Longest job name, in bytes
    #[arg(long, env = "KILN_MAX_JOB_NAME_BYTES", default_value_t = 256)]
    pub max_job_name_bytes: usize,
    /// Most bytes of a job's parameters, names and values together
    #[arg(long, env = "KILN_MAX_PARAMETER_BYTES", default_value_t = 64 * 1024)]
    pub max_parameter_bytes: usize,
    /// Watch streams (job events, farm events, task logs) one owner may hold open at once, over every gateway
    #[arg(long, env = "KILN_MAX_STREAMS_PER_OWNER", default_value_t = 64)]
    pub max_streams_per_owner: usize,
}

impl QuotaArgs {
    /// The quotas the dispatch core enforces.
    pub fn core(&self) -> QuotaSettings {
        QuotaSettings {
            max_unfinished_jobs: self.max_unfinished_jobs_per_owner,
            max_queued_tasks: self.max_queued_tasks_per_owner,
            running: RunningCaps {
                default: self.max_running_per_owner,
                per_owner: self.owner_max_running.iter().cloned().collect(),
            },
        }
    }
}

fn parse_cap(text: &str) -> Result<(String, u64), String> {
    let (name, cap) = text
        .split_once('=')
        .ok_or_else(|| format!("{text:?} is not NAME=TASKS"))?;
    let cap = cap
        .parse()
        .map_err(|_| format!("share cap {cap:?} of {name:?} is not a whole number"))?;
    Ok((name.to_owned(), cap))
}

fn parse_weight(text: &str) -> Result<(String, f64), String> {
    let (name, weight) = text
        .split_once('=')
        .ok_or_else(|| format!("{text:?} is not NAME=WEIGHT"))?;
    let weight: f64 = weight
        .parse()
        .map_err(|_| format!("weight {weight:?} of {name:?} is not a number"))?;
    if !(weight > 0.0 && weight.is_finite()) {
        return Err(format!("weight of {name:?} must be a positive number"));
    }
    Ok((name.to_owned(), weight))
}
