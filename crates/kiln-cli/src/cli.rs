//! The command line: every option also reads a `KILN_*` environment variable.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use kiln_telemetry::TelemetryArgs;

#[derive(Debug, Parser)]
#[command(
    name = "kiln",
    version,
    about = "Kiln render farm: run a farm on this machine, submit Blender renders, follow and fetch jobs",
    after_help = crate::exit_code::HELP
)]
pub struct Cli {
    /// How results are printed: text, or json on stdout (JSON Lines when following a job)
    #[arg(short = 'o', long, env = "KILN_OUTPUT", global = true, value_enum, default_value_t = crate::output::Format::Text)]
    pub output: crate::output::Format,
    /// The farm saved by `kiln login --profile NAME` to use [default: the `kiln dev` farm nearby, else the profile "default"]
    #[arg(long, env = "KILN_PROFILE", global = true)]
    pub profile: Option<String>,
    #[command(flatten)]
    pub telemetry: TelemetryArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a whole farm on this machine (Postgres, etcd, assets, scheduler, gateway, workers) until Ctrl-C
    Dev(DevArgs),
    /// Upload a .blend, render it on the farm, and download its frames and video
    Render(RenderArgs),
    /// List jobs, newest first
    Jobs(JobsArgs),
    /// Show one job with its steps and tasks
    Status(JobArgs),
    /// Cancel a job: pending tasks never start, running ones are stopped
    Cancel(JobArgs),
    /// Follow a job until it ends: a progress bar for the job with its ETA, and one per busy worker
    Watch(JobArgs),
    /// Print a task's log: the stored log of its last attempt, or with -f its output live while it runs
    Logs(LogsArgs),
    /// List a job's output files, optionally downloading them
    Outputs(OutputsArgs),
    /// Pause a job: no new task starts; running ones finish
    Pause(JobArgs),
    /// Resume a paused job
    Resume(JobArgs),
    /// Run a failed or cancelled job's unfinished tasks again, with fresh attempts
    Retry(JobArgs),
    /// Change a job's priority; its next dispatch uses it
    Priority(PriorityArgs),
    /// Let workers blocklisted for a job take its tasks again
    Unblock(UnblockArgs),
    /// Create, list and revoke access tokens (needs an admin token)
    #[command(subcommand)]
    Token(TokenCommand),
    /// Register, list and remove webhooks for job events, and read their delivery logs
    #[command(subcommand)]
    Webhooks(WebhookCommand),
    /// The farm's workers: list and show them; admins disable, enable, drain and tag them
    #[command(subcommand)]
    Workers(WorkersCommand),
    /// Save a farm's gateway and token as a profile (--profile NAME, default "default") in your config directory
    Login(LoginArgs),
    /// Forget a saved profile (--profile NAME, default "default")
    Logout,
    /// Print a shell completion script, e.g. `kiln completions bash > /etc/bash_completion.d/kiln`
    Completions(CompletionsArgs),
    /// Print the kiln(1) man page, or write one page per command into --dir
    Man(ManArgs),
    /// Submit a Deadline Cloud job bundle (an OpenJD template with its parameter values and files)
    #[command(subcommand)]
    Bundle(BundleCommand),
}

#[derive(Debug, Args)]
pub struct LoginArgs {
    /// The farm's gateway gRPC URL, e.g. https://farm.example:7070
    #[arg(long, env = "KILN_GATEWAY")]
    pub gateway: String,
    /// Your bearer token (from `kiln token create`); stored in a file only you can read, never printed
    #[arg(long, env = "KILN_TOKEN", hide_env_values = true)]
    pub token: String,
    /// PEM CA certificate to trust for an https gateway [default: the system's roots]
    #[arg(long, env = "KILN_CA")]
    pub ca: Option<PathBuf>,
    /// Save without first checking that the farm accepts the token
    #[arg(long)]
    pub no_check: bool,
}

#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell to complete for
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

#[derive(Debug, Args)]
pub struct ManArgs {
    /// Write kiln.1 and a kiln-COMMAND.1 per command into this directory instead of printing kiln.1
    #[arg(long)]
    pub dir: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum WorkersCommand {
    /// Every worker the farm knows: state, tasks, tags, use, last seen
    List(WorkersListArgs),
    /// One worker in full: capabilities, GPUs, use, its tasks, jobs that blocklisted it
    Show(WorkerArgs),
    /// Stop it now: its tasks go back to the queue; it takes none until enabled (admins)
    Disable(WorkerArgs),
    /// Let it take tasks again (admins)
    Enable(WorkerArgs),
    /// Let it finish its tasks, take no new ones, then be disabled (admins)
    Drain(WorkerArgs),
    /// Replace its tags (pools); none clears them (admins)
    Tags(WorkerTagsArgs),
}

#[derive(Debug, Args)]
pub struct WorkersListArgs {
    /// Show at most this many workers
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=10000))]
    pub limit: u32,
    #[command(flatten)]
    pub gateway: GatewayArgs,
}

#[derive(Debug, Args)]
pub struct WorkerArgs {
    /// The worker's id
    pub worker: String,
    #[command(flatten)]
    pub gateway: GatewayArgs,
}

#[derive(Debug, Args)]
pub struct WorkerTagsArgs {
    /// The worker's id
    pub worker: String,
    /// Its tags, space- or comma-separated
    pub tags: Vec<String>,
    #[command(flatten)]
    pub gateway: GatewayArgs,
}

#[derive(Debug, Subcommand)]
pub enum BundleCommand {
    /// Upload the bundle's files, submit its template as written, follow it, and download what it writes into its output directories
    Submit(BundleSubmitArgs),
}

#[derive(Debug, Args)]
pub struct BundleSubmitArgs {
    /// The bundle's directory: template.yaml|json, and optionally parameter_values.yaml|json and asset_references.yaml|json
    pub bundle: PathBuf,
    /// A job parameter, Name=Value (repeatable); wins over parameter_values. Relative PATH values are taken from the current directory
    #[arg(short = 'p', long = "parameter")]
    pub parameters: Vec<String>,
    /// The job's name [default: the template's]
    #[arg(long)]
    pub name: Option<String>,
    /// Job priority: 0-100, or low, normal, high, critical [default: the bundle's deadline:priority, else normal]
    #[arg(long, value_parser = parse_priority)]
    pub priority: Option<u32>,
    /// Submit and return without following the job
    #[arg(long)]
    pub no_wait: bool,
    #[command(flatten)]
    pub gateway: GatewayArgs,
}

/// A priority: a number from 0 to 100 or one of low (25), normal (50), high (75), critical (100).
pub fn parse_priority(text: &str) -> Result<u32, String> {
    match text.to_ascii_lowercase().as_str() {
        "low" => Ok(25),
        "normal" => Ok(50),
        "high" => Ok(75),
        "critical" => Ok(100),
        number => match number.parse::<u32>() {
            Ok(p) if p <= 100 => Ok(p),
            _ => Err(format!(
                "{text:?} is neither a number from 0 to 100 nor low, normal, high or critical"
            )),
        },
    }
}

/// An RFC 3339 time.
pub fn parse_time(text: &str) -> Result<pbjson_types::Timestamp, String> {
    let at = chrono::DateTime::parse_from_rfc3339(text.trim()).map_err(|e| {
        format!("{text:?} is not an RFC 3339 time ({e}), e.g. 2026-12-04T09:00:00Z")
    })?;
    Ok(pbjson_types::Timestamp {
        seconds: at.timestamp(),
        nanos: at.timestamp_subsec_nanos() as i32,
    })
}

/// A job state by its name.
pub fn parse_job_state(text: &str) -> Result<i32, String> {
    kiln_proto::v1::JobState::from_str_name(&format!(
        "JOB_STATE_{}",
        text.trim().to_ascii_uppercase()
    ))
    .filter(|s| *s != kiln_proto::v1::JobState::Unspecified)
    .map(|s| s as i32)
    .ok_or_else(|| {
        format!("{text:?} is not one of pending, running, paused, succeeded, failed, cancelled")
    })
}

#[derive(Debug, Args)]
pub struct PriorityArgs {
    /// The job's id
    pub job: String,
    /// 0-100, or low, normal, high, critical
    #[arg(value_parser = parse_priority)]
    pub priority: u32,
    #[command(flatten)]
    pub gateway: GatewayArgs,
}

#[derive(Debug, Args)]
pub struct UnblockArgs {
    /// The job's id
    pub job: String,
    /// Only this worker [default: every worker blocklisted for the job]
    #[arg(long)]
    pub worker: Option<String>,
    #[command(flatten)]
    pub gateway: GatewayArgs,
}

#[derive(Debug, Subcommand)]
pub enum WebhookCommand {
    /// Register an http(s) endpoint and print its signing secret (shown only this once)
    Add(WebhookAddArgs),
    /// List your webhooks (every one, for admins)
    List(WebhookListArgs),
    /// Remove a webhook by id
    Rm(WebhookIdArgs),
    /// Let a webhook paused after repeated failures receive again
    Resume(WebhookIdArgs),
    /// Show a webhook's recent deliveries
    Deliveries(WebhookIdArgs),
}

#[derive(Debug, Args)]
pub struct WebhookAddArgs {
    /// Where deliveries are POSTed
    pub url: String,
    /// Events to receive (repeatable or comma-separated): submitted, started, succeeded, failed, cancelled, quality-check-failed [default: all]
    #[arg(long = "events", value_delimiter = ',')]
    pub events: Vec<String>,
    /// Hear about every job of the farm (admins only)
    #[arg(long)]
    pub farm_wide: bool,
    #[command(flatten)]
    pub gateway: GatewayArgs,
}

#[derive(Debug, Args)]
pub struct WebhookListArgs {
    #[command(flatten)]
    pub gateway: GatewayArgs,
}

#[derive(Debug, Args)]
pub struct WebhookIdArgs {
    /// The webhook's id
    pub id: String,
    #[command(flatten)]
    pub gateway: GatewayArgs,
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create a token and print its secret (shown only this once)
    Create(TokenCreateArgs),
    /// List tokens (never their secrets)
    List(TokenListArgs),
    /// Revoke a token by id
    Revoke(TokenRevokeArgs),
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum RoleArg {
    /// Reads its own jobs
    Viewer,
    /// Also submits, cancels and controls its own jobs
    Submitter,
    /// Everything, every owner, and tokens
    Admin,
}

#[derive(Debug, Args)]
pub struct TokenCreateArgs {
    /// The user the token acts as; jobs it submits are owned by this name
    #[arg(long, env = "KILN_TOKEN_NAME")]
    pub name: String,
    /// What the token may do
    #[arg(long, env = "KILN_TOKEN_ROLE", value_enum)]
    pub role: RoleArg,
    /// The highest job priority the token may give (0-100, or low, normal, high, critical) [default: high]
    #[arg(long, value_parser = parse_priority)]
    pub max_priority: Option<u32>,
    #[command(flatten)]
    pub gateway: GatewayArgs,
}

#[derive(Debug, Args)]
pub struct TokenListArgs {
    /// Include revoked tokens
    #[arg(long, env = "KILN_TOKEN_LIST_ALL")]
    pub all: bool,
    #[command(flatten)]
    pub gateway: GatewayArgs,
}

#[derive(Debug, Args)]
pub struct TokenRevokeArgs {
    /// The token's id (from `kiln token list`)
    pub id: String,
    #[command(flatten)]
    pub gateway: GatewayArgs,
}

#[derive(Debug, Args)]
pub struct DevArgs {
    /// Number of workers to start
    #[arg(long, env = "KILN_DEV_WORKERS", default_value_t = 2, value_parser = clap::value_parser!(u16).range(0..=64))]
    pub workers: u16,
    /// Directory holding the farm's data and logs; kept between runs so earlier jobs remain
    #[arg(long, env = "KILN_DEV_DIR", default_value = ".kiln")]
    pub dir: PathBuf,
    /// Gateway replicas; the ports below are the first's, the others pick free ones (dev.json lists them all)
    #[arg(long, env = "KILN_DEV_GATEWAYS", default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=8))]
    pub gateways: u8,
    /// Port of the gateway's gRPC API on 127.0.0.1
    #[arg(long, env = "KILN_DEV_GRPC_PORT", default_value_t = 7070)]
    pub grpc_port: u16,
    /// Port of the gateway's REST API on 127.0.0.1
    #[arg(long, env = "KILN_DEV_HTTP_PORT", default_value_t = 7080)]
    pub http_port: u16,
    /// Store assets in a local Garage S3 server instead of a directory
    #[arg(long, env = "KILN_DEV_S3")]
    pub s3: bool,
    /// TLS everywhere: a private CA made at start-up (in <dir>/tls) signs every service's certificate; services require each other's (mutual TLS)
    #[arg(long, env = "KILN_DEV_TLS")]
    pub tls: bool,
    /// Run tasks WITHOUT a sandbox (the workers' --no-sandbox): only on a trusted single-user machine where the workers cannot sandbox (not root)
    #[arg(long, env = "KILN_DEV_NO_SANDBOX")]
    pub no_sandbox: bool,
}

/// How to reach the farm.
#[derive(Debug, Clone, Args)]
pub struct GatewayArgs {
    /// Gateway gRPC URL, e.g. http://127.0.0.1:7070 [default: the one `kiln dev` wrote to .kiln/dev.json in this or a parent directory]
    #[arg(long = "gateway", env = "KILN_GATEWAY")]
    pub gateway: Option<String>,
    /// Bearer token for the gateway [default: the admin token `kiln dev` wrote to .kiln/dev.json]
    #[arg(long = "token", env = "KILN_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// PEM CA certificate to trust for an https gateway [default: the one `kiln dev --tls` wrote to .kiln/dev.json, else the system's roots]
    #[arg(long = "ca", env = "KILN_CA")]
    pub ca: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct RenderArgs {
    /// The Blender scene to render
    pub scene: PathBuf,
    /// Frames to render, e.g. "1-250" or "1-10,20" [default: the scene's frame range, read with a local blender]
    #[arg(long, env = "KILN_RENDER_FRAMES")]
    pub frames: Option<String>,
    /// Frames per task
    #[arg(long, env = "KILN_RENDER_CHUNK", default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..=10000))]
    pub chunk: u32,
    /// Directory to download the outputs into [default: ./kiln-out/<job-id>]
    #[arg(long, env = "KILN_RENDER_OUT")]
    pub out: Option<PathBuf>,
    /// Frame rate of the encoded video [default: the scene's, read with a local blender, else 24]
    #[arg(long, env = "KILN_RENDER_FPS")]
    pub fps: Option<f64>,
    /// Job priority: 0-100, or low, normal, high, critical [default: normal, 50]
    #[arg(long, env = "KILN_RENDER_PRIORITY", default_value = "normal", value_parser = parse_priority)]
    pub priority: u32,
    /// Start only after this job has succeeded (repeatable)
    #[arg(long = "after", env = "KILN_RENDER_AFTER", value_delimiter = ',')]
    pub after: Vec<String>,
    /// Submit the job and print its id without waiting for it to finish
    #[arg(long, env = "KILN_RENDER_NO_WAIT")]
    pub no_wait: bool,
    /// Variant table (.csv, or .json: an array of objects) making one personalised video per row: column "id" names the row (variants/<id>/video.mp4), "image:<Name>" columns replace image <Name>'s file with a local file (relative to the table), other columns (optionally "text:<Name>") replace text object <Name>'s body
    #[arg(long, env = "KILN_RENDER_VARIANTS")]
    pub variants: Option<PathBuf>,
    /// Where Cycles renders: cpu, or gpu (a worker's NVIDIA GPU when it has one, its CPU otherwise)
    #[arg(long, env = "KILN_RENDER_DEVICE", default_value = "cpu", value_parser = ["cpu", "gpu"])]
    pub device: String,
    /// Skip the quality check of frames and video after encoding
    #[arg(long, env = "KILN_RENDER_NO_QUALITY_CHECK")]
    pub no_quality_check: bool,
    /// Send only the scene file, not the files in its directory tree (textures, caches, ...)
    #[arg(long, env = "KILN_RENDER_NO_BUNDLE")]
    pub no_bundle: bool,
    /// Largest scene directory tree sent with the scene, in bytes
    #[arg(long, env = "KILN_RENDER_BUNDLE_MAX_BYTES", default_value_t = 50 * 1024 * 1024 * 1024)]
    pub bundle_max_bytes: u64,
    #[command(flatten)]
    pub gateway: GatewayArgs,
}

#[derive(Debug, Args)]
pub struct JobsArgs {
    /// Jobs per page
    #[arg(long, env = "KILN_JOBS_LIMIT", default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub limit: u32,
    /// The page after the one that printed this token
    #[arg(long)]
    pub page_token: Option<String>,
    /// Every page, not just the first
    #[arg(long, conflicts_with = "page_token")]
    pub all: bool,
    /// Only jobs submitted at or after this time (RFC 3339, e.g. 2026-12-04T09:00:00Z)
    #[arg(long, value_parser = parse_time)]
    pub submitted_after: Option<pbjson_types::Timestamp>,
    /// Only jobs submitted before this time (RFC 3339)
    #[arg(long, value_parser = parse_time)]
    pub submitted_before: Option<pbjson_types::Timestamp>,
    /// Only jobs in these states (comma-separated: pending, running, paused, succeeded, failed, cancelled)
    #[arg(long, value_delimiter = ',', value_parser = parse_job_state)]
    pub state: Vec<i32>,
    /// Only jobs whose name contains this
    #[arg(long)]
    pub name: Option<String>,
    /// Only this user's jobs (admins)
    #[arg(long)]
    pub owner: Option<String>,
    #[command(flatten)]
    pub gateway: GatewayArgs,
}

#[derive(Debug, Args)]
pub struct JobArgs {
    /// The job's id
    pub job: String,
    #[command(flatten)]
    pub gateway: GatewayArgs,
}

#[derive(Debug, Args)]
pub struct LogsArgs {
    /// The job's id
    pub job: String,
    /// The task: its id, or its index within --step
    pub task: String,
    /// The step a task index refers to [default: the job's first step]
    #[arg(long, env = "KILN_LOGS_STEP")]
    pub step: Option<String>,
    /// Follow the running task's output as it is printed, until the task ends
    #[arg(short = 'f', long, env = "KILN_LOGS_FOLLOW")]
    pub follow: bool,
    #[command(flatten)]
    pub gateway: GatewayArgs,
}

#[derive(Debug, Args)]
pub struct OutputsArgs {
    /// The job's id
    pub job: String,
    /// Download every output into this directory, keeping relative paths
    #[arg(long, env = "KILN_OUTPUTS_DOWNLOAD")]
    pub download: Option<PathBuf>,
    #[command(flatten)]
    pub gateway: GatewayArgs,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn priorities_by_name_or_number() {
        assert_eq!(parse_priority("HIGH"), Ok(75));
        assert_eq!(parse_priority("critical"), Ok(100));
        assert_eq!(parse_priority("0"), Ok(0));
        assert!(parse_priority("101").is_err());
        assert!(parse_priority("urgent").is_err());
    }
}
