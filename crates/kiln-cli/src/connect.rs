//! Finding and connecting to the farm's gateway.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use kiln_asset_client::{AssetClient, CallCredentials};
use kiln_proto::v1::job_service_client::JobServiceClient;
use serde::{Deserialize, Serialize};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

use crate::cli::GatewayArgs;
use crate::error::CliError;
use crate::profiles::{self, Fallback, Profiles};

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
    /// Every gateway replica's REST base URL, the first being `gateway_http`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gateways_http: Vec<String>,
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

/// The profile `--profile` (or KILN_PROFILE) names, set once by `main`.
static PROFILE: OnceLock<Option<String>> = OnceLock::new();

pub fn set_profile(name: Option<String>) {
    let _ = PROFILE.set(name);
}

fn profile_name() -> Option<&'static str> {
    PROFILE.get().and_then(|name| name.as_deref())
}

/// Where the farm is and how to sign in, each taken from the first that
/// gives it: the flags (or KILN_GATEWAY, KILN_TOKEN, KILN_CA), then one of
/// `--profile`'s saved farm, the nearest `.kiln/dev.json`, the default
/// profile of `kiln login`, in that order.
#[derive(Debug, Clone, PartialEq)]
pub struct Target {
    pub url: String,
    pub token: Option<String>,
    pub ca: Option<PathBuf>,
}

impl Target {
    pub fn resolve(args: &GatewayArgs, cwd: &Path) -> Result<Self, CliError> {
        let named = profile_name();
        // dev.json is read only when it can matter.
        let dev = match named {
            Some(_) => None,
            None => find_dev_info(cwd)?,
        };
        let profiles = match (named, &dev) {
            (None, Some(_)) => Profiles::default(),
            (Some(_), _) => profiles::load(&profiles::path()?)?,
            // Without a config directory there is simply no default profile.
            (None, None) => match profiles::path() {
                Ok(path) => profiles::load(&path)?,
                Err(_) => Profiles::default(),
            },
        };
        let fallback = profiles::fallback(named, &profiles, dev)?;
        Self::choose(args, &fallback)
    }

    /// Each of gateway, token and CA from the flags, else from `fallback`.
    pub fn choose(args: &GatewayArgs, fallback: &Fallback) -> Result<Self, CliError> {
        let url = non_empty(args.gateway.as_deref())
            .or(fallback.gateway())
            .map(with_scheme)
            .ok_or(CliError::NoGateway)?;
        let token = non_empty(args.token.as_deref())
            .or(fallback.token())
            .map(str::to_owned);
        let ca = args
            .ca
            .clone()
            .or_else(|| fallback.ca().map(Path::to_path_buf));
        Ok(Self { url, token, ca })
    }
}

fn non_empty(text: Option<&str>) -> Option<&str> {
    text.map(str::trim).filter(|t| !t.is_empty())
}

impl Gateway {
    /// Connects to the farm [`Target::resolve`] finds.
    pub async fn connect(args: &GatewayArgs) -> Result<Self, CliError> {
        let target = Target::resolve(args, &current_dir()?)?;
        Self::connect_to(&target).await
    }

    pub async fn connect_to(target: &Target) -> Result<Self, CliError> {
        let url = target.url.clone();
        // No token: the gateway answers "unauthenticated", which says what is missing.
        let credentials = match &target.token {
            Some(token) => CallCredentials::bearer(token)?,
            None => CallCredentials::default(),
        };
        let endpoint = kiln_tls::ClientTls::trusting(target.ca.as_deref())?
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

/// The gateway URL: `explicit` if given, else the nearest dev.json's.
#[cfg(test)]
fn gateway_url(explicit: Option<&str>, cwd: &Path) -> Result<String, CliError> {
    let fallback = match find_dev_info(cwd)? {
        Some(dev) => Fallback::Dev(dev),
        None => Fallback::Nothing,
    };
    let args = GatewayArgs {
        gateway: explicit.map(str::to_owned),
        token: None,
        ca: None,
    };
    Target::choose(&args, &fallback).map(|target| target.url)
}

/// `host:port` becomes `http://host:port`; URLs with a scheme stay as they are.
pub fn with_scheme(url: &str) -> String {
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
            gateways_http: Vec::new(),
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
    fn flags_win_over_the_profile_field_by_field() {
        let profile = crate::profiles::Profile {
            gateway: "https://farm:7070".to_owned(),
            token: "saved".to_owned(),
            ca: Some(PathBuf::from("/etc/farm-ca.pem")),
        };
        let fallback = Fallback::Named("studio".to_owned(), profile);
        let none = GatewayArgs {
            gateway: None,
            token: None,
            ca: None,
        };
        let from_profile = Target::choose(&none, &fallback).expect("target");
        assert_eq!(from_profile.url, "https://farm:7070");
        assert_eq!(from_profile.token.as_deref(), Some("saved"));
        assert_eq!(from_profile.ca, Some(PathBuf::from("/etc/farm-ca.pem")));
        let token_only = GatewayArgs {
            token: Some("mine".to_owned()),
            ..none.clone()
        };
        let mixed = Target::choose(&token_only, &fallback).expect("target");
        assert_eq!(mixed.url, "https://farm:7070");
        assert_eq!(mixed.token.as_deref(), Some("mine"));
        let everything = GatewayArgs {
            gateway: Some("10.0.0.5:7070".to_owned()),
            token: Some("mine".to_owned()),
            ca: None,
        };
        let explicit = Target::choose(&everything, &fallback).expect("target");
        assert_eq!(explicit.url, "http://10.0.0.5:7070");
        assert_eq!(explicit.token.as_deref(), Some("mine"));
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
