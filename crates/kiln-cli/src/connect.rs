//! Finding and connecting to the farm's gateway.

use std::path::{Path, PathBuf};
use std::time::Duration;

use kiln_asset_client::{AssetClient, CallCredentials};
use kiln_proto::v1::job_service_client::JobServiceClient;
use serde::{Deserialize, Serialize};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

use crate::cli::GatewayArgs;
use crate::error::CliError;

/// Directory `kiln dev` uses by default, searched for in the current
/// directory and its parents.
pub const DEV_DIR: &str = ".kiln";
/// File in the dev directory telling other commands where the farm is.
pub const DEV_FILE: &str = "dev.json";
/// Largest response accepted; a long job's task or output list is big.
const MAX_MESSAGE_SIZE: usize = 64 * 1024 * 1024;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

pub type JobClient = JobServiceClient<InterceptedService<Channel, CallCredentials>>;

/// What `kiln dev` writes to `<dir>/dev.json` while its farm runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DevInfo {
    pub gateway_grpc: String,
    pub gateway_http: String,
    pub etcd: String,
    /// The etcd user and password (authentication is on).
    #[serde(default)]
    pub etcd_user: String,
    #[serde(default)]
    pub etcd_password: String,
    /// The database URL, password included.
    #[serde(default)]
    pub database: String,
    #[serde(default)]
    pub logs: PathBuf,
    /// The farm's admin token; the file is readable by its owner only.
    #[serde(default)]
    pub token: String,
    /// The farm's CA certificate when it serves TLS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<PathBuf>,
}

/// A connection to the gateway with the clients every command needs.
pub struct Gateway {
    pub channel: Channel,
    pub jobs: JobClient,
    pub credentials: CallCredentials,
}

impl Gateway {
    /// Connects to `--gateway`, else to the farm in the nearest `.kiln/dev.json`.
    pub async fn connect(args: &GatewayArgs) -> Result<Self, CliError> {
        let cwd = current_dir()?;
        let url = gateway_url(args.gateway.as_deref(), &cwd)?;
        let credentials = credentials(args, &cwd)?;
        let ca = match &args.ca {
            Some(ca) => Some(ca.clone()),
            None => find_dev_info(&cwd)?.and_then(|info| info.ca),
        };
        let endpoint = kiln_tls::ClientTls::trusting(ca.as_deref())?
            .endpoint(&url)
            .map_err(|err| CliError::BadGatewayUrl {
                url: url.clone(),
                reason: err.to_string(),
            })?;
        let channel = endpoint
            .connect_timeout(CONNECT_TIMEOUT)
            .connect()
            .await
            .map_err(|err| CliError::Unreachable {
                url: url.clone(),
                reason: error_chain(&err),
            })?;
        let jobs = JobServiceClient::with_interceptor(channel.clone(), credentials.clone())
            .max_decoding_message_size(MAX_MESSAGE_SIZE);
        Ok(Self {
            channel,
            jobs,
            credentials,
        })
    }

    pub fn assets(&self) -> AssetClient {
        AssetClient::with_credentials(self.channel.clone(), self.credentials.clone())
    }
}

/// `--token`, else the token in the nearest dev.json, else none (the
/// gateway then answers "unauthenticated", which says what is missing).
fn credentials(args: &GatewayArgs, cwd: &Path) -> Result<CallCredentials, CliError> {
    let explicit = args
        .token
        .as_deref()
        .map(str::trim)
        .filter(|t| !t.is_empty());
    let token = match explicit {
        Some(token) => Some(token.to_owned()),
        None => find_dev_info(cwd)?
            .map(|info| info.token)
            .filter(|t| !t.is_empty()),
    };
    match token {
        Some(token) => Ok(CallCredentials::bearer(&token)?),
        None => Ok(CallCredentials::default()),
    }
}

/// The gateway URL: `explicit` if given, else the nearest dev.json's.
pub fn gateway_url(explicit: Option<&str>, cwd: &Path) -> Result<String, CliError> {
    if let Some(url) = explicit.map(str::trim).filter(|url| !url.is_empty()) {
        return Ok(with_scheme(url));
    }
    match find_dev_info(cwd)? {
        Some(info) => Ok(with_scheme(&info.gateway_grpc)),
        None => Err(CliError::NoGateway),
    }
}

/// `host:port` becomes `http://host:port`; URLs with a scheme stay as they are.
fn with_scheme(url: &str) -> String {
    if url.contains("://") {
        url.to_owned()
    } else {
        format!("http://{url}")
    }
}

/// The dev.json in `.kiln/` of `start` or its nearest parent that has one.
pub fn find_dev_info(start: &Path) -> Result<Option<DevInfo>, CliError> {
    let Some(path) = start
        .ancestors()
        .map(|dir| dir.join(DEV_DIR).join(DEV_FILE))
        .find(|candidate| candidate.is_file())
    else {
        return Ok(None);
    };
    read_dev_info(&path).map(Some)
}

pub fn read_dev_info(path: &Path) -> Result<DevInfo, CliError> {
    let bytes = std::fs::read(path).map_err(CliError::io(path))?;
    serde_json::from_slice(&bytes).map_err(|source| CliError::DevInfo {
        path: path.to_path_buf(),
        source,
    })
}

pub fn current_dir() -> Result<PathBuf, CliError> {
    std::env::current_dir().map_err(CliError::io("."))
}

/// An error and its causes on one line; tonic's transport errors say little
/// at the top level.
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> DevInfo {
        DevInfo {
            gateway_grpc: "http://127.0.0.1:7070".to_owned(),
            gateway_http: "http://127.0.0.1:7080".to_owned(),
            etcd: "http://127.0.0.1:2379".to_owned(),
            etcd_user: "kiln".to_owned(),
            etcd_password: String::new(),
            database: "postgres://postgres:secret@127.0.0.1:5432/kiln".to_owned(),
            logs: PathBuf::from("/tmp/logs"),
            token: String::new(),
            ca: None,
        }
    }

    #[test]
    fn explicit_gateway_wins_and_gets_a_scheme() {
        let dir = tempfile::tempdir().expect("temp dir");
        assert_eq!(
            gateway_url(Some("10.0.0.5:7070"), dir.path()).expect("url"),
            "http://10.0.0.5:7070"
        );
        assert_eq!(
            gateway_url(Some("https://farm:443"), dir.path()).expect("url"),
            "https://farm:443"
        );
    }

    #[test]
    fn dev_json_is_found_in_a_parent_directory() {
        let dir = tempfile::tempdir().expect("temp dir");
        let dev_dir = dir.path().join(DEV_DIR);
        std::fs::create_dir_all(&dev_dir).expect("mkdir");
        std::fs::write(
            dev_dir.join(DEV_FILE),
            serde_json::to_vec(&sample()).expect("json"),
        )
        .expect("write");
        let nested = dir.path().join("shots/010");
        std::fs::create_dir_all(&nested).expect("mkdir");
        assert_eq!(
            gateway_url(None, &nested).expect("url"),
            "http://127.0.0.1:7070"
        );
    }

    #[test]
    fn no_gateway_anywhere_is_a_clear_error() {
        let dir = tempfile::tempdir().expect("temp dir");
        let err = gateway_url(None, dir.path()).expect_err("no farm");
        assert!(err.to_string().contains("kiln dev"), "{err}");
    }

    #[test]
    fn broken_dev_json_names_the_file() {
        let dir = tempfile::tempdir().expect("temp dir");
        let dev_dir = dir.path().join(DEV_DIR);
        std::fs::create_dir_all(&dev_dir).expect("mkdir");
        std::fs::write(dev_dir.join(DEV_FILE), b"{not json").expect("write");
        let err = gateway_url(None, dir.path()).expect_err("bad json");
        assert!(err.to_string().contains("dev.json"), "{err}");
    }
}
