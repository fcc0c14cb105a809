use std::path::PathBuf;
use std::time::Duration;

/// Everything that can go wrong while starting or supervising a local farm.
///
/// Variants about a process name it and point at its log file; when the
/// process died, the message ends with the last lines of that log.
#[derive(Debug, thiserror::Error)]
pub enum LocalFarmError {
    #[error("cannot find the `{name}` binary (looked in {searched}); {hint}")]
    BinaryNotFound {
        name: String,
        searched: String,
        hint: &'static str,
    },
    #[error("cannot start {name} ({program}): {source}")]
    Spawn {
        name: String,
        program: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{name} exited early ({status}); log: {log}\n--- last lines of {log} ---\n{tail}")]
    Exited {
        name: String,
        status: String,
        log: PathBuf,
        tail: String,
    },
    #[error(
        "{name} was not ready after {waited:?} ({what}); log: {log}\n--- last lines of {log} ---\n{tail}"
    )]
    NotReady {
        name: String,
        what: String,
        waited: Duration,
        log: PathBuf,
        tail: String,
    },
    #[error("cannot make the farm's TLS certificates: {0}")]
    Certificate(#[from] rcgen::Error),
    #[error("timed out after {waited:?} waiting for {what}")]
    Timeout { what: String, waited: Duration },
    #[error("{name}: `{command}` failed ({status}): {output}")]
    Command {
        name: String,
        command: String,
        status: String,
        output: String,
    },
    #[error("{name} is already running")]
    AlreadyRunning { name: String },
    #[error("{name} is not running")]
    NotRunning { name: String },
    #[error("cannot signal {name}: {source}")]
    Signal {
        name: String,
        #[source]
        source: nix::Error,
    },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot find a free port on 127.0.0.1: {0}")]
    NoFreePort(#[source] std::io::Error),
    #[error("the `postgres` system user is missing, and postgres refuses to run as root: {0}")]
    NoPostgresUser(String),
    #[error(
        "the postgres user cannot write {path}; every parent directory must be traversable by it (chmod o+x), or use a directory under /tmp"
    )]
    PostgresCannotReach { path: PathBuf },
    #[error("another farm is already running in {dir} (it holds {lock})")]
    Locked { dir: PathBuf, lock: PathBuf },
    #[error("garage credentials in {path} are unreadable: {source}")]
    Credentials {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("etcd: {0}")]
    Etcd(#[from] etcd_client::Error),
    #[error("discovery: {0}")]
    Discovery(#[from] kiln_discovery::DiscoveryError),
}

impl LocalFarmError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }
}

pub type Result<T, E = LocalFarmError> = std::result::Result<T, E>;
