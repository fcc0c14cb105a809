use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::error::{LocalFarmError, Result};
use crate::fs::{absolute, write_private};
use crate::log_tail::{TAIL_LINES, port_taken_since};
use crate::ports::{accepts_tcp, free_ports};
use crate::process::ServiceProcess;
use crate::secret::random_hex;
use crate::wait::wait_ready;

/// The bucket Garage creates at start-up.
pub const BUCKET: &str = "kiln";
/// The S3 region Garage answers for.
pub const REGION: &str = "garage";
/// How long Garage has to serve S3 after it is started.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// Starts tried when Garage exits during start-up (see [`Garage::start`]).
const START_ATTEMPTS: u32 = 3;
/// Bound on the answer read from the S3 port while probing it.
const PROBE_READ_LIMIT: u64 = 4096;

/// S3 credentials and the cluster secret of one Garage data directory.
#[derive(Clone, Serialize, Deserialize)]
pub struct GarageCredentials {
    pub access_key: String,
    pub secret_key: String,
    rpc_secret: String,
}

impl std::fmt::Debug for GarageCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GarageCredentials")
            .field("access_key", &self.access_key)
            .finish_non_exhaustive()
    }
}

/// A single-node Garage S3 server with one bucket, [`BUCKET`].
///
/// The binary comes from `KILN_GARAGE_BIN`, else
/// `$HOME/.cache/kiln/garage/bin/garage`, else `PATH`. Credentials are
/// random, made the first time a directory is used and kept beside the data
/// (`credentials.json`, mode 0600): Garage refuses to start with a different
/// secret for a key it already knows.
pub struct Garage {
    process: ServiceProcess,
    dir: PathBuf,
    s3_port: u16,
    credentials: GarageCredentials,
}

impl Garage {
    /// Writes `garage.toml` into `dir` (data and metadata go under it too),
    /// with output appended to `log`; nothing runs until [`Garage::start`].
    pub fn new(dir: impl AsRef<Path>, log: impl AsRef<Path>) -> Result<Self> {
        let dir = absolute(dir.as_ref())?;
        std::fs::create_dir_all(&dir).map_err(|e| LocalFarmError::io(&dir, e))?;
        let credentials = load_or_create_credentials(&dir.join("credentials.json"))?;
        let config = dir.join("garage.toml");
        let s3_port = write_config(&dir, &credentials)?;
        let process = ServiceProcess::new("garage", garage_binary()?, absolute(log.as_ref())?)
            .arg("-c")
            .arg(&config)
            .args(["server", "--single-node", "--default-bucket"])
            .env("GARAGE_DEFAULT_ACCESS_KEY", &credentials.access_key)
            .env("GARAGE_DEFAULT_SECRET_KEY", &credentials.secret_key)
            .env("GARAGE_DEFAULT_BUCKET", BUCKET);
        Ok(Self {
            process,
            dir,
            s3_port,
            credentials,
        })
    }

    /// The S3 endpoint, e.g. `http://127.0.0.1:39001`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.s3_port)
    }

    /// The S3 access key id.
    pub fn access_key(&self) -> &str {
        &self.credentials.access_key
    }

    /// The S3 secret key.
    pub fn secret_key(&self) -> &str {
        &self.credentials.secret_key
    }

    /// The directory holding the config, data and metadata.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The garage process, e.g. to kill it in an outage test.
    pub fn process_mut(&mut self) -> &mut ServiceProcess {
        &mut self.process
    }

    /// Starts Garage and waits until its S3 API answers HTTP; the bucket is
    /// created before the API starts serving.
    ///
    /// Its ports are picked free, then let go for Garage to bind: anything
    /// else may take one in between (an outgoing connection's local port,
    /// another farm). Garage then either exits at once or, when it is the S3
    /// listener that fails, logs "Address already in use" and hangs in its
    /// shutdown. Either way it is tried again on new ports, a few times.
    /// That moves the S3 endpoint, so it fits a farm's first start only,
    /// which is the one caller. etcd's first start does the same; Postgres
    /// moves to a new port whenever its start finds its port taken.
    pub async fn start(&mut self) -> Result<()> {
        let mut attempt = 1;
        loop {
            let log = self.process.log_path().to_path_buf();
            // Only what this start logs counts: the log is appended to.
            let from = std::fs::metadata(&log).map_or(0, |m| m.len());
            self.process.start()?;
            let port = self.s3_port;
            // Set by the probe when the wait ended on a taken port, so the
            // log is not read once more to tell why it ended.
            let taken = std::cell::Cell::new(false);
            let ready = wait_ready(
                &mut self.process,
                "answering S3 requests",
                READY_TIMEOUT,
                || {
                    taken.set(port_taken_since(&log, from));
                    let found_taken = taken.get();
                    async move { found_taken || answers_http(port).await }
                },
            )
            .await;
            let taken = taken.get();
            match ready {
                Ok(()) if !taken => break,
                Ok(()) if attempt < START_ATTEMPTS => {
                    tracing::warn!(attempt, tail = %self.process.log_tail(TAIL_LINES), "garage found a port taken at start-up; trying again on new ports");
                    self.process.kill().await?;
                }
                Ok(()) => {
                    let tail = self.process.log_tail(TAIL_LINES);
                    self.process.kill().await?;
                    return Err(LocalFarmError::NotReady {
                        name: "garage".to_owned(),
                        what: format!("listening: its ports were taken {START_ATTEMPTS} times"),
                        waited: Duration::ZERO,
                        log,
                        tail,
                    });
                }
                Err(LocalFarmError::Exited { status, tail, .. }) if attempt < START_ATTEMPTS => {
                    tracing::warn!(attempt, %status, %tail, "garage exited at start-up; trying again on new ports");
                }
                Err(err) => return Err(err),
            }
            self.s3_port = write_config(&self.dir, &self.credentials)?;
            attempt += 1;
        }
        tracing::info!(endpoint = %self.endpoint(), bucket = BUCKET, "garage ready");
        Ok(())
    }

    /// Stops Garage gracefully.
    pub async fn stop(&mut self) -> Result<()> {
        self.process.terminate().await
    }
}

/// Writes `garage.toml` into `dir` with newly picked free ports; returns
/// the S3 port.
fn write_config(dir: &Path, credentials: &GarageCredentials) -> Result<u16> {
    let [rpc_port, s3_port] = free_ports()?;
    write_private(
        &dir.join("garage.toml"),
        render_config(dir, rpc_port, s3_port, credentials).as_bytes(),
    )?;
    Ok(s3_port)
}

fn garage_binary() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os("KILN_GARAGE_BIN") {
        return Ok(PathBuf::from(path));
    }
    if let Some(home) = std::env::var_os("HOME") {
        let cached = PathBuf::from(home).join(".cache/kiln/garage/bin/garage");
        if cached.is_file() {
            return Ok(cached);
        }
    }
    crate::binary::find_on_path("garage").map_err(|_| LocalFarmError::BinaryNotFound {
        name: "garage".to_owned(),
        searched: "KILN_GARAGE_BIN, $HOME/.cache/kiln/garage/bin, PATH".to_owned(),
        hint: "build it with `cargo install --locked garage --version 2.5.0 --root ~/.cache/kiln/garage` or set KILN_GARAGE_BIN",
    })
}

fn load_or_create_credentials(path: &Path) -> Result<GarageCredentials> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|source| LocalFarmError::Credentials {
            path: path.to_path_buf(),
            source,
        }),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
            let credentials = GarageCredentials {
                access_key: format!("GK{}", random_hex(12)),
                secret_key: random_hex(32),
                rpc_secret: random_hex(32),
            };
            let json = serde_json::to_vec_pretty(&credentials).map_err(|source| {
                LocalFarmError::Credentials {
                    path: path.to_path_buf(),
                    source,
                }
            })?;
            write_private(path, &json)?;
            Ok(credentials)
        }
        Err(err) => Err(LocalFarmError::io(path, err)),
    }
}

fn render_config(
    dir: &Path,
    rpc_port: u16,
    s3_port: u16,
    credentials: &GarageCredentials,
) -> String {
    format!(
        r#"metadata_dir = {meta}
data_dir = {data}
db_engine = "sqlite"
replication_factor = 1
rpc_bind_addr = "127.0.0.1:{rpc_port}"
rpc_public_addr = "127.0.0.1:{rpc_port}"
rpc_secret = "{secret}"

[s3_api]
s3_region = "{REGION}"
api_bind_addr = "127.0.0.1:{s3_port}"
"#,
        meta = toml_string(&dir.join("meta")),
        data = toml_string(&dir.join("data")),
        secret = credentials.rpc_secret,
    )
}

/// A TOML basic string; JSON's escaping is a subset TOML accepts.
fn toml_string(path: &Path) -> String {
    serde_json::Value::String(path.display().to_string()).to_string()
}

/// Whether the S3 port accepts a connection and answers an HTTP request as
/// an S3 API does: any status (an anonymous request is refused, which is
/// fine), with an S3 XML error body. Any HTTP answer is not enough: the port
/// was picked free and released, and another local process (another farm's
/// service) may have taken it before Garage bound it; its answer would pass,
/// and the port would go dead when that process exits.
async fn answers_http(port: u16) -> bool {
    if !accepts_tcp(port).await {
        return false;
    }
    let probe = async {
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
        let request = format!(
            "GET /{BUCKET} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).await?;
        let mut answer = Vec::new();
        stream
            .take(PROBE_READ_LIMIT)
            .read_to_end(&mut answer)
            .await?;
        Ok::<_, std::io::Error>(is_s3_answer(&answer))
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(2), probe).await,
        Ok(Ok(true))
    )
}

/// An HTTP/1 response carrying an S3 error document (`<Error><Code>…`).
fn is_s3_answer(answer: &[u8]) -> bool {
    let text = String::from_utf8_lossy(answer);
    text.starts_with("HTTP/1.") && text.contains("<Error>") && text.contains("<Code>")
}

#[cfg(test)]
mod tests {
    use super::is_s3_answer;

    #[test]
    fn only_an_s3_error_document_counts_as_garage_answering() {
        let garage = b"HTTP/1.1 403 Forbidden\r\ncontent-type: application/xml\r\n\r\n\
            <?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>AccessDenied</Code></Error>";
        assert!(is_s3_answer(garage));
        let other_service = b"HTTP/1.1 404 Not Found\r\ncontent-type: application/json\r\n\r\n{}";
        assert!(!is_s3_answer(other_service));
        assert!(!is_s3_answer(b""));
    }
}
