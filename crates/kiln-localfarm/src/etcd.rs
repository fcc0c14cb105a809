use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::binary::find_on_path;
use crate::error::{LocalFarmError, Result};
use crate::fs::absolute;
use crate::ports::free_port;
use crate::process::ServiceProcess;
use crate::wait::wait_ready;

/// How long etcd has to answer after it is started.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// A single-member etcd on 127.0.0.1, run from the system's `etcd` binary.
///
/// A farm's etcd holds only registrations and leases, which are meaningless
/// once the farm's processes are gone, so the first [`Etcd::start`] wipes the
/// data directory: a stale registration would otherwise point clients at a
/// dead gateway. Later restarts (outage tests) keep the data.
pub struct Etcd {
    process: ServiceProcess,
    data_dir: PathBuf,
    client_port: u16,
    started_once: bool,
}

impl Etcd {
    /// Prepares an etcd with data in `data_dir` and output appended to `log`,
    /// on two free ports; nothing runs until [`Etcd::start`].
    pub fn new(data_dir: impl AsRef<Path>, log: impl AsRef<Path>) -> Result<Self> {
        let data_dir = absolute(data_dir.as_ref())?;
        let client_port = free_port()?;
        let peer_port = free_port()?;
        let client_url = format!("http://127.0.0.1:{client_port}");
        let peer_url = format!("http://127.0.0.1:{peer_port}");
        let process = ServiceProcess::new("etcd", find_on_path("etcd")?, absolute(log.as_ref())?)
            .args(["--name", "kiln", "--data-dir"])
            .arg(&data_dir)
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
            .args(["--initial-cluster", &format!("kiln={peer_url}")]);
        Ok(Self {
            process,
            data_dir,
            client_port,
            started_once: false,
        })
    }

    /// The client URL, e.g. `http://127.0.0.1:34567`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    /// The etcd process, e.g. to pause it or kill it in an outage test.
    pub fn process_mut(&mut self) -> &mut ServiceProcess {
        &mut self.process
    }

    /// Starts etcd and waits until it answers a status request.
    pub async fn start(&mut self) -> Result<()> {
        if !self.started_once && self.data_dir.exists() {
            std::fs::remove_dir_all(&self.data_dir)
                .map_err(|e| LocalFarmError::io(&self.data_dir, e))?;
        }
        self.started_once = true;
        self.process.start()?;
        let url = self.url();
        wait_ready(
            &mut self.process,
            "answering status requests",
            READY_TIMEOUT,
            || answers(url.clone()),
        )
        .await?;
        tracing::info!(url = %self.url(), "etcd ready");
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

async fn answers(url: String) -> bool {
    let options = etcd_client::ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(1))
        .with_timeout(Duration::from_secs(2));
    match etcd_client::Client::connect([url], Some(options)).await {
        Ok(mut client) => client.status().await.is_ok(),
        Err(_) => false,
    }
}
