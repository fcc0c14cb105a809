use std::path::PathBuf;

/// Everything a `kiln` command can fail with.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(
        "no farm to talk to: pass --gateway URL (or set KILN_GATEWAY), save one with `kiln login`, or start one with `kiln dev` in this directory or a parent"
    )]
    NoGateway,
    #[error("bad gateway URL {url:?}: {reason}")]
    BadGatewayUrl { url: String, reason: String },
    #[error("cannot reach the gateway at {url}: {reason}; is `kiln dev` (or the farm) running?")]
    Unreachable { url: String, reason: String },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a valid dev.json: {source}")]
    DevInfo {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("{action} failed: {code}: {message}", code = .status.code(), message = .status.message())]
    Rpc {
        action: &'static str,
        status: tonic::Status,
    },
    #[error(transparent)]
    Asset(#[from] kiln_asset_client::AssetClientError),
    #[error(transparent)]
    Tls(#[from] kiln_tls::TlsError),
    #[error(transparent)]
    Farm(#[from] kiln_localfarm::LocalFarmError),
    #[error("bundle: {0}")]
    Bundle(String),
    #[error("scene {0} is not a file")]
    NoScene(PathBuf),
    #[error("--frames is required: {0}")]
    FramesUnknown(String),
    #[error("--fps must be a positive number, got {0}")]
    BadFps(f64),
    #[error("job {id} {state}{message}", state = crate::format::job_state(*.state))]
    JobEnded {
        id: String,
        state: kiln_proto::v1::JobState,
        message: String,
    },
    #[error("lost track of job {id}: {reason}; follow it with `kiln status {id}`")]
    WatchLost { id: String, reason: String },
    #[error(
        "the farm named an output {0:?}, which is not a plain relative path; refusing to write it"
    )]
    UnsafeOutputPath(String),
    #[error("variant table {path}: {reason}")]
    Variants { path: PathBuf, reason: String },
    #[error("variant row {row:?}: image {path} is not a file")]
    NoImage { row: String, path: PathBuf },
    #[error(transparent)]
    JobModel(#[from] kiln_jobmodel::JobModelError),
    #[error("job {job} has no task {task:?}; see `kiln status {job}`")]
    NoSuchTask { job: String, task: String },
    #[error("interrupted")]
    Interrupted,
    #[error(
        "--events: {0:?} is not one of submitted, started, succeeded, failed, cancelled, quality-check-failed"
    )]
    BadWebhookEvent(String),
    #[error(
        "no profile {0:?}; save one with `kiln login --profile {0} --gateway URL --token TOKEN`"
    )]
    NoProfile(String),
    #[error("{path}: {reason}")]
    Profiles { path: PathBuf, reason: String },
    #[error("no config directory to keep profiles in (is HOME set?)")]
    NoConfigDir,
    #[error("listing {what}: {reason}")]
    Paging { what: &'static str, reason: String },
}

impl CliError {
    pub fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| Self::Io { path, source }
    }

    pub fn rpc(action: &'static str) -> impl FnOnce(tonic::Status) -> Self {
        move |status| Self::Rpc { action, status }
    }
}
