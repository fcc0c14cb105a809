use std::path::{Path, PathBuf};
use std::time::Duration;

use etcd_client::{ConnectOptions, Permission};

use crate::binary::find_on_path;
use crate::error::{LocalFarmError, Result};
use crate::fs::absolute;
use crate::log_tail::port_taken_since;
use crate::ports::free_ports;
use crate::process::ServiceProcess;
use crate::secret::random_hex;
use crate::wait::wait_ready;

/// How long etcd has to answer after it is started.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// Tries of etcd's first start, each on new ports when the last found one
/// taken.
const START_ATTEMPTS: u32 = 3;
/// The key prefix every farm process uses; each farm has its own etcd.
pub const ETCD_PREFIX: &str = "/kiln";
/// The etcd user Kiln's services connect as: it may read and write keys
/// under [`ETCD_PREFIX`] and nothing else.
pub const ETCD_USER: &str = "kiln";

/// A single-member etcd on 127.0.0.1, run from the system's `etcd` binary,
/// with authentication on: anyone else on the machine can reach its port,
/// but without the password (made at random for each farm, held only in
/// memory and handed to the farm's processes in their environment) reads
/// and writes nothing.
///
/// A farm's etcd holds only registrations and leases, which are meaningless
/// once the farm's processes are gone, so the first [`Etcd::start`] wipes the
/// data directory: a stale registration would otherwise point clients at a
/// dead gateway. Later restarts (outage tests) keep the data, users included.
pub struct Etcd {
    process: ServiceProcess,
    data_dir: PathBuf,
    client_port: u16,
    password: String,
    started_once: bool,
    auth: bool,
}

impl Etcd {
    /// Prepares an etcd with data in `data_dir` and output appended to `log`,
    /// on two free ports; nothing runs until [`Etcd::start`].
    pub fn new(data_dir: impl AsRef<Path>, log: impl AsRef<Path>) -> Result<Self> {
        let data_dir = absolute(data_dir.as_ref())?;
        let log = absolute(log.as_ref())?;
        let [client_port, peer_port] = free_ports()?;
        Ok(Self {
            process: process(&data_dir, &log, client_port, peer_port)?,
            data_dir,
            client_port,
            password: random_hex(24),
            started_once: false,
            auth: true,
        })
    }

    /// Leaves authentication off, as a deployment's own etcd may run (the
    /// Kubernetes manifests' does: it is reachable only from Kiln's pods).
    pub fn without_auth(mut self) -> Self {
        self.auth = false;
        self
    }

    /// The client URL, e.g. `http://127.0.0.1:34567`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    /// The user ([`ETCD_USER`]) and password the farm's processes connect as.
    pub fn credentials(&self) -> (&str, &str) {
        (ETCD_USER, &self.password)
    }

    /// Connection options carrying [`Etcd::credentials`].
    pub fn connect_options(&self) -> ConnectOptions {
        kiln_discovery::connect_options(ConnectOptions::new(), Some(self.credentials()))
    }

    /// The etcd process, e.g. to pause it or kill it in an outage test.
    pub fn process_mut(&mut self) -> &mut ServiceProcess {
        &mut self.process
    }

    /// Starts etcd and waits until it answers a status request; the first
    /// time, also creates its users and turns authentication on.
    ///
    /// Its ports are picked free, then let go for etcd to bind: anything
    /// else may take one in between (an outgoing connection's local port,
    /// another farm), and etcd then exits logging "address already in use".
    /// The first start tries again on new ports, a few times; a restart
    /// keeps its ports, which the farm's processes were given.
    pub async fn start(&mut self) -> Result<()> {
        let fresh = !self.started_once;
        self.started_once = true;
        let mut attempt = 1;
        loop {
            if fresh && self.data_dir.exists() {
                std::fs::remove_dir_all(&self.data_dir)
                    .map_err(|e| LocalFarmError::io(&self.data_dir, e))?;
            }
            let log = self.process.log_path().to_path_buf();
            // Only what this start logs counts: the log is appended to.
            let from = std::fs::metadata(&log).map_or(0, |m| m.len());
            self.process.start()?;
            let url = self.url();
            let credentials =
                (!fresh && self.auth).then(|| (ETCD_USER.to_owned(), self.password.clone()));
            let ready = wait_ready(
                &mut self.process,
                "answering status requests",
                READY_TIMEOUT,
                || answers(url.clone(), credentials.clone()),
            )
            .await;
            match ready {
                Err(LocalFarmError::Exited { status, tail, .. })
                    if fresh && attempt < START_ATTEMPTS && port_taken_since(&log, from) =>
                {
                    tracing::warn!(attempt, %status, %tail, "etcd found a port taken at start-up; trying again on new ports");
                    let [client_port, peer_port] = free_ports()?;
                    self.process = process(&self.data_dir, &log, client_port, peer_port)?;
                    self.client_port = client_port;
                    attempt += 1;
                }
                ready => break ready?,
            }
        }
        if fresh && self.auth {
            self.enable_auth().await?;
        }
        tracing::info!(url = %self.url(), "etcd ready");
        Ok(())
    }

    /// A root user (whose random password is forgotten at once: nothing
    /// needs it later), the [`ETCD_USER`] confined to [`ETCD_PREFIX`], then
    /// authentication on.
    async fn enable_auth(&self) -> Result<()> {
        let failed = |step: &str, err: etcd_client::Error| LocalFarmError::Command {
            name: "etcd".to_owned(),
            command: step.to_owned(),
            status: "failed".to_owned(),
            output: err.to_string(),
        };
        let mut client = etcd_client::Client::connect([self.url()], None)
            .await
            .map_err(|e| failed("connect", e))?;
        client
            .user_add("root", random_hex(24), None)
            .await
            .map_err(|e| failed("add user root", e))?;
        client
            .user_grant_role("root", "root")
            .await
            .map_err(|e| failed("grant role root", e))?;
        client
            .role_add(ETCD_USER)
            .await
            .map_err(|e| failed("add role", e))?;
        client
            .role_grant_permission(ETCD_USER, Permission::read_write(ETCD_PREFIX).with_prefix())
            .await
            .map_err(|e| failed("grant permission", e))?;
        client
            .user_add(ETCD_USER, self.password.clone(), None)
            .await
            .map_err(|e| failed("add user", e))?;
        client
            .user_grant_role(ETCD_USER, ETCD_USER)
            .await
            .map_err(|e| failed("grant role", e))?;
        client
            .auth_enable()
            .await
            .map_err(|e| failed("enable authentication", e))?;
        Ok(())
    }

    /// Stops etcd gracefully.
    pub async fn stop(&mut self) -> Result<()> {
        self.process.terminate().await
    }

    /// Stops and starts etcd on the same ports, keeping its data.
    pub async fn restart(&mut self) -> Result<()> {
        self.stop().await?;
        self.start().await
    }
}

/// The etcd process for `data_dir` on the two ports, logging to `log`.
fn process(
    data_dir: &Path,
    log: &Path,
    client_port: u16,
    peer_port: u16,
) -> Result<ServiceProcess> {
    let client_url = format!("http://127.0.0.1:{client_port}");
    let peer_url = format!("http://127.0.0.1:{peer_port}");
    Ok(
        ServiceProcess::new("etcd", find_on_path("etcd")?, log.to_path_buf())
            .args(["--name", "kiln", "--data-dir"])
            .arg(data_dir)
            .args([
                "--listen-client-urls",
                &client_url,
                "--advertise-client-urls",
                &client_url,
            ])
            .args([
                "--listen-peer-urls",
                &peer_url,
                "--initial-advertise-peer-urls",
                &peer_url,
            ])
            .args(["--initial-cluster", &format!("kiln={peer_url}")]),
    )
}

async fn answers(url: String, credentials: Option<(String, String)>) -> bool {
    let options = ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(1))
        .with_timeout(Duration::from_secs(2));
    let options = kiln_discovery::connect_options(
        options,
        credentials
            .as_ref()
            .map(|(user, password)| (user.as_str(), password.as_str())),
    );
    match etcd_client::Client::connect([url], Some(options)).await {
        Ok(mut client) => client.status().await.is_ok(),
        Err(_) => false,
    }
}
