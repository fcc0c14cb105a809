//! Simulated workers and the scheduler process's own figures, for the
//! dispatch and soak benchmarks.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use kiln_proto::v1 as pb;
use kiln_proto::v1::job_service_client::JobServiceClient;
use sqlx::PgPool;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tonic::transport::Channel;

use super::{open_session, started, succeeded};

/// The job API as the farm's services call it (with the service token).
pub type Jobs = JobServiceClient<
    tonic::service::interceptor::InterceptedService<Channel, kiln_asset_client::CallCredentials>,
>;

/// A local farm of the real scheduler, with no workers and no S3, and what
/// a benchmark reads of it. Fields drop in order: the farm stops before its
/// directory goes.
pub struct BenchFarm {
    pub farm: kiln_localfarm::Farm,
    pub db: PgPool,
    pub endpoint: kiln_discovery::Endpoint,
    pub scheduler_pid: u32,
    _dir: tempfile::TempDir,
}

impl BenchFarm {
    /// Starts one in a temporary directory named `prefix...`, with `env` set
    /// for every service.
    pub async fn start(prefix: &str, env: &[(&str, String)]) -> Result<Self> {
        let dir = tempfile::Builder::new().prefix(prefix).tempdir()?;
        let mut builder = kiln_localfarm::Farm::builder(dir.path().join("farm"))
            .workers(0)
            .s3(false);
        for (key, value) in env {
            builder = builder.env(key, value.clone());
        }
        let mut farm = builder.start().await?;
        let db = PgPool::connect(&farm.database_url()).await?;
        let endpoint = farm
            .discovery()
            .find_one(kiln_discovery::service::SCHEDULER, Duration::from_secs(10))
            .await?;
        let scheduler_pid = farm
            .scheduler_mut()
            .and_then(|s| s.pid())
            .context("scheduler pid")?;
        Ok(Self {
            farm,
            db,
            endpoint,
            scheduler_pid,
            _dir: dir,
        })
    }

    /// A job API client: it asks for the service token.
    pub async fn jobs(&self) -> Result<Jobs> {
        Ok(JobServiceClient::with_interceptor(
            Channel::from_shared(self.endpoint.grpc_uri())?
                .connect()
                .await?,
            kiln_asset_client::CallCredentials::service(self.farm.service_token())?,
        ))
    }
}

/// `connections` HTTP/2 connections to `uri`, for simulated workers to share.
pub async fn connect(uri: &str, connections: usize) -> Result<Vec<Channel>> {
    let mut channels = Vec::new();
    for _ in 0..connections.max(1) {
        channels.push(Channel::from_shared(uri.to_owned())?.connect().await?);
    }
    Ok(channels)
}

pub struct Sim {
    pub index: usize,
    pub render: Duration,
    pub lookahead: u32,
    pub completed: Arc<AtomicU64>,
    /// Where to record each dispatch latency, if anywhere (the soak's hour
    /// of tasks would make the list grow without bound).
    pub latencies: Option<Arc<Mutex<Latencies>>>,
}

/// Dispatch latencies in ms, apart: a worker's first task comes in the
/// burst of every worker joining at once, which says nothing of how long a
/// worker that finished a task waits for its next.
#[derive(Debug, Default)]
pub struct Latencies {
    /// From the session opening to the first task.
    pub first: Vec<f64>,
    /// From a task's end to the start of the next.
    pub between: Vec<f64>,
}

/// One simulated worker: registers with the `noop` renderer and runs its
/// assignments one after another, each for `render`, recording its dispatch
/// latency in ms: from the moment it is free to the start of its next task,
/// which is at once when a task waits in its lookahead queue.
pub async fn simulated_worker(channel: Channel, join_token: String, sim: Sim) -> Result<()> {
    let (tx, mut inbound) = open_session(channel, sim.index, &join_token, sim.lookahead).await?;
    // The scheduler sends at most 1 + lookahead tasks ahead of their results.
    let (queue_tx, mut queue) = mpsc::channel(sim.lookahead as usize + 1);
    let reader = tokio::spawn(async move {
        while let Some(incoming) = inbound.message().await? {
            if let Some(pb::scheduler_message::Message::Assignment(task)) = incoming.message
                && queue_tx.send(task).await.is_err()
            {
                break;
            }
        }
        anyhow::Ok(())
    });
    let mut free_since = Instant::now();
    let mut first = true;
    while let Some(task) = queue.recv().await {
        if let Some(latencies) = &sim.latencies {
            let latency = free_since.elapsed().as_secs_f64() * 1000.0;
            let mut latencies = latencies.lock().unwrap_or_else(|p| p.into_inner());
            match std::mem::take(&mut first) {
                true => latencies.first.push(latency),
                false => latencies.between.push(latency),
            }
        }
        tx.send(started(&task)).await?;
        if !sim.render.is_zero() {
            tokio::time::sleep(sim.render).await;
        }
        free_since = Instant::now();
        tx.send(succeeded(task)).await?;
        sim.completed.fetch_add(1, Ordering::Relaxed);
    }
    reader.await??;
    Ok(())
}

/// CPU seconds (user and system) the process `pid` has used.
pub fn cpu_seconds(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .context("malformed stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = fields
        .get(11)
        .zip(fields.get(12))
        .context("short stat")
        .and_then(|(user, system)| Ok(user.parse::<f64>()? + system.parse::<f64>()?))?;
    Ok(ticks / 100.0)
}

/// A memory figure of /proc/PID/status: "VmHWM" (peak RSS) or "VmRSS".
pub fn status_bytes(pid: u32, field: &str) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|l| l.split(':').next() == Some(field))
        .with_context(|| format!("no {field}"))?;
    let kib: u64 = line
        .split_whitespace()
        .nth(1)
        .with_context(|| format!("{field} value"))?
        .parse()?;
    Ok(kib * 1024)
}

pub const MIB: f64 = 1024.0 * 1024.0;
