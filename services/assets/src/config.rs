//! Command-line and environment configuration.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, ValueEnum};
use kiln_discovery::DiscoveryArgs;
use kiln_telemetry::TelemetryArgs;

use crate::error::Error;
use crate::retention::RetentionPolicy;
use crate::s3::S3Settings;

const GIB: u64 = 1024 * 1024 * 1024;

#[derive(Debug, Parser)]
#[command(
    name = "kiln-assets",
    version,
    about = "Kiln's content-addressed file store"
)]
pub struct Config {
    /// Address to serve gRPC on; port 0 picks a free port
    #[arg(long, env = "KILN_LISTEN", default_value = "127.0.0.1:0")]
    pub listen: SocketAddr,
    /// Where files are kept
    #[arg(long, env = "KILN_BACKEND", value_enum, default_value_t = BackendKind::Local)]
    pub backend: BackendKind,
    /// Directory of the local backend
    #[arg(long, env = "KILN_DATA_DIR", default_value = "./.kiln/assets")]
    pub data_dir: PathBuf,
    /// Directory uploads are written to while they are hashed [default: <data-dir>/spool for the
    /// local backend, the system temp directory for s3]
    #[arg(long, env = "KILN_SPOOL_DIR")]
    pub spool_dir: Option<PathBuf>,
    /// Largest upload accepted, in bytes
    #[arg(long, env = "KILN_MAX_UPLOAD_BYTES", default_value_t = 20 * GIB)]
    pub max_upload_bytes: u64,
    /// Least free space, in bytes, the spool directory's filesystem must have for the service to report ready
    #[arg(long, env = "KILN_MIN_FREE_BYTES", default_value_t = GIB)]
    pub min_free_bytes: u64,
    /// Seconds between collections of objects no job needs; 0 never collects
    #[arg(long, env = "KILN_GC_INTERVAL_SECONDS", default_value_t = 3600)]
    pub gc_interval_seconds: u64,
    /// Seconds an object is safe from collection after it is stored or a client is told it is
    /// stored (time to submit the job that uses it)
    #[arg(long, env = "KILN_GC_GRACE_SECONDS", default_value_t = 24 * 3600)]
    pub gc_grace_seconds: u64,
    /// Seconds a finished job's inputs and outputs are kept after it finished
    #[arg(long, env = "KILN_RETAIN_FINISHED_SECONDS", default_value_t = 30 * 24 * 3600)]
    pub retain_finished_seconds: u64,
    /// Who may call: the gateway and the scheduler by the farm's service
    /// token, workers by their join token or certificate
    #[command(flatten)]
    pub auth: kiln_service::internal_auth::InternalAuthArgs,
    #[command(flatten)]
    pub s3: S3Args,
    #[command(flatten)]
    pub ops: kiln_service::OpsArgs,
    #[command(flatten)]
    pub tls: kiln_tls::TlsArgs,
    #[command(flatten)]
    pub discovery: DiscoveryArgs,
    #[command(flatten)]
    pub telemetry: TelemetryArgs,
}

impl Config {
    /// The collector's policy, or None when collection is off.
    pub fn retention(&self) -> Option<RetentionPolicy> {
        (self.gc_interval_seconds > 0).then(|| RetentionPolicy {
            interval: Duration::from_secs(self.gc_interval_seconds),
            grace: Duration::from_secs(self.gc_grace_seconds),
            retain_finished: Duration::from_secs(self.retain_finished_seconds),
        })
    }

    pub fn spool_dir(&self) -> PathBuf {
        match (&self.spool_dir, self.backend) {
            (Some(dir), _) => dir.clone(),
            // Same filesystem as the objects, so storing one is a rename.
            (None, BackendKind::Local) => self.data_dir.join("spool"),
            (None, BackendKind::S3) => std::env::temp_dir().join("kiln-assets-spool"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BackendKind {
    /// A directory on this machine
    Local,
    /// An S3-compatible object store (Garage, MinIO, AWS S3, ...)
    S3,
}

#[derive(Debug, Clone, Args)]
pub struct S3Args {
    /// S3 endpoint URL, e.g. http://127.0.0.1:3900 (s3 backend)
    #[arg(long = "s3-endpoint", env = "KILN_S3_ENDPOINT")]
    pub endpoint: Option<String>,
    /// Bucket that holds the files (s3 backend)
    #[arg(long = "s3-bucket", env = "KILN_S3_BUCKET")]
    pub bucket: Option<String>,
    /// Region requests are signed for (s3 backend)
    #[arg(long = "s3-region", env = "KILN_S3_REGION", default_value = "garage")]
    pub region: String,
    /// Access key id (s3 backend)
    #[arg(long = "s3-access-key", env = "KILN_S3_ACCESS_KEY")]
    pub access_key: Option<String>,
    /// Secret access key (s3 backend); prefer the environment variable, since other users can read
    /// command lines
    #[arg(
        long = "s3-secret-key",
        env = "KILN_S3_SECRET_KEY",
        hide_env_values = true
    )]
    pub secret_key: Option<Secret>,
}

impl S3Args {
    /// The settings the s3 backend needs, or which one is missing.
    pub fn settings(&self) -> Result<S3Settings, Error> {
        Ok(S3Settings {
            endpoint: required(&self.endpoint, "s3-endpoint", "KILN_S3_ENDPOINT")?,
            bucket: required(&self.bucket, "s3-bucket", "KILN_S3_BUCKET")?,
            region: self.region.clone(),
            access_key: required(&self.access_key, "s3-access-key", "KILN_S3_ACCESS_KEY")?,
            secret_key: required(&self.secret_key, "s3-secret-key", "KILN_S3_SECRET_KEY")?,
        })
    }
}

fn required<T: Clone>(
    value: &Option<T>,
    flag: &'static str,
    env: &'static str,
) -> Result<T, Error> {
    value.clone().ok_or(Error::MissingS3Option { flag, env })
}

/// A string that never shows in logs or debug output.
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Self {
        Self(value)
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn command_line_is_well_formed() {
        Config::command().debug_assert();
    }

    #[test]
    fn secret_key_stays_out_of_debug_output() -> Result<(), clap::Error> {
        let config = Config::try_parse_from(["kiln-assets", "--s3-secret-key", "hunter2hunter2"])?;
        assert!(!format!("{config:?}").contains("hunter2"));
        Ok(())
    }

    #[test]
    fn s3_settings_name_the_missing_option() -> Result<(), clap::Error> {
        let config = Config::try_parse_from([
            "kiln-assets",
            "--backend",
            "s3",
            "--s3-endpoint",
            "http://x",
        ])?;
        let err = config
            .s3
            .settings()
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("--s3-bucket"), "{err}");
        Ok(())
    }

    #[test]
    fn spool_defaults_beside_local_objects() -> Result<(), clap::Error> {
        let config = Config::try_parse_from(["kiln-assets", "--data-dir", "/srv/assets"])?;
        assert_eq!(config.spool_dir(), PathBuf::from("/srv/assets/spool"));
        Ok(())
    }
}
