//! Failover figures: two real scheduler replicas, Postgres and etcd, with
//! simulated workers (the named no-op renderer `noop`, each task held for
//! 200 ms) that reconnect to whichever scheduler etcd lists.
//!
//! - leader failover: kill -9 the leading scheduler, time until a worker
//!   receives its next assignment;
//! - handover: SIGTERM the leader (it resigns), time until the next assignment;
//! - dead-worker requeue: a worker's stream is cut (as a killed process's
//!   connection is reset), time until its task is assigned to another worker.
//!
//! Run: `scripts/bench-failover.sh`.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Parser;
use kiln_discovery::service;
use kiln_localfarm::Farm;
use kiln_proto::v1 as pb;
use kiln_proto::v1::job_service_client::JobServiceClient;
use tokio::sync::mpsc;
use tokio::time::Instant;

use common::{noop_job, open_session, started, succeeded};

#[derive(Parser)]
struct Args {
    /// Measurements of each kind
    #[arg(long, default_value_t = 10)]
    runs: usize,
    #[arg(long, default_value_t = 4)]
    workers: usize,
    /// Tasks queued while the leader is killed, in jobs of at most 100,000
    /// (the scheduler's default bound per job): a new leader loads every
    /// unfinished task before it dispatches.
    #[arg(long, default_value_t = 100_000)]
    queued: usize,
    // `cargo bench` passes --bench; accept and ignore it.
    #[arg(long, hide = true)]
    bench: bool,
}

/// What the simulated workers saw: when the last assignment arrived, and
/// which task each worker holds.
#[derive(Default)]
struct Seen {
    last_assignment: Option<Instant>,
    holding: HashMap<usize, String>,
    assigned_at: HashMap<String, Instant>,
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let dir = tempfile::Builder::new()
        .prefix("kiln-failover-")
        .tempdir()?;
    let mut farm = Farm::builder(dir.path().join("farm"))
        .workers(0)
        .schedulers(2)
        .start()
        .await?;
    let discovery = farm.discovery().clone();
    let endpoint = discovery
        .find_one(service::SCHEDULER, Duration::from_secs(10))
        .await?;
    // The job API is the farm services': it asks for the service token.
    let mut jobs = JobServiceClient::with_interceptor(
        tonic::transport::Channel::from_shared(endpoint.grpc_uri())?
            .connect()
            .await?,
        kiln_asset_client::CallCredentials::service(farm.service_token())?,
    );
    // Owners take turns: each may queue at most half a million tasks by default.
    let mut left = args.queued.max(1);
    for n in 0.. {
        if left == 0 {
            break;
        }
        let tasks = left.min(100_000);
        let mut request = tonic::Request::new(noop_job(tasks));
        let owner = if n % 2 == 0 { "alice" } else { "bob" };
        request
            .metadata_mut()
            .insert(kiln_proto::metadata::OWNER, owner.parse()?);
        jobs.submit_job(request).await?;
        left -= tasks;
    }

    let seen = Arc::new(Mutex::new(Seen::default()));
    let mut cutters = Vec::new();
    for index in 0..args.workers {
        let (cut, cut_rx) = mpsc::channel(1);
        cutters.push(cut);
        tokio::spawn(simulated_worker(
            discovery.clone(),
            index,
            farm.join_token().to_owned(),
            seen.clone(),
            cut_rx,
        ));
    }
    wait_for_assignments(&seen).await?;

    let mut failovers = Vec::new();
    for _ in 0..args.runs {
        let leader = leading(&farm).await?;
        let killed = Instant::now();
        farm.schedulers_mut()[leader].kill().await?;
        failovers.push(
            next_assignment_after(&seen, killed)
                .await
                .context("after a leader's kill -9")?,
        );
        farm.schedulers_mut()[leader].start()?;
        tokio::time::sleep(Duration::from_secs(2)).await;
    }

    let mut handovers = Vec::new();
    for _ in 0..args.runs {
        let leader = leading(&farm).await?;
        let stopped = Instant::now();
        farm.schedulers_mut()[leader].signal_terminate()?;
        handovers.push(
            next_assignment_after(&seen, stopped)
                .await
                .context("after a leader's SIGTERM")?,
        );
        farm.schedulers_mut()[leader].terminate().await?;
        farm.schedulers_mut()[leader].start()?;
        tokio::time::sleep(Duration::from_secs(2)).await;
    }

    let mut requeues = Vec::new();
    for run in 0..args.runs {
        let victim = run % args.workers;
        let task = held_by(&seen, victim).await?;
        let cut = Instant::now();
        cutters[victim].send(()).await.context("worker gone")?;
        requeues.push(
            reassigned_after(&seen, &task, victim, cut)
                .await
                .context("after a worker's stream was cut")?,
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    println!(
        "| figure ({} runs, {} tasks queued) | median | worst |\n|---|---|---|",
        args.runs, args.queued
    );
    print_row("leader kill -9 to next dispatch", &mut failovers);
    print_row("leader SIGTERM (resigns) to next dispatch", &mut handovers);
    print_row(
        "worker stream cut to its task dispatched elsewhere",
        &mut requeues,
    );
    let mut loads = Vec::new();
    for scheduler in farm.schedulers_mut() {
        loads.extend(load_times(scheduler.log_path())?);
    }
    if !loads.is_empty() {
        print_row(
            "a new leader's load of the unfinished jobs into its core (its log)",
            &mut loads,
        );
    }
    // The leader now is the last handover's: it loaded every unfinished
    // task while taking over, so its peak is the failover's memory cost.
    // (A standby restarted since has loaded nothing.)
    let (mut now, mut peak) = (0, 0);
    for scheduler in farm.schedulers_mut() {
        if let Some(pid) = scheduler.pid() {
            now = now.max(common::sim::status_bytes(pid, "VmRSS")?);
            peak = peak.max(common::sim::status_bytes(pid, "VmHWM")?);
        }
    }
    println!(
        "\nRSS of the last new leader, now / at its peak (VmRSS / VmHWM): {:.1} / {:.1} MiB",
        now as f64 / common::sim::MIB,
        peak as f64 / common::sim::MIB
    );
    farm.shutdown().await?;
    Ok(())
}

/// The `elapsed_ms` of each "loaded unfinished jobs" line a scheduler logged.
fn load_times(log: &std::path::Path) -> Result<Vec<Duration>> {
    let text = std::fs::read_to_string(log)?;
    Ok(text
        .lines()
        // Not the first leader's load of an empty farm.
        .filter(|line| line.contains("loaded unfinished jobs") && !line.contains(" tasks=0 "))
        .filter_map(|line| {
            let (_, rest) = line.split_once("elapsed_ms=")?;
            let ms = rest.split(|c: char| !c.is_ascii_digit()).next()?;
            ms.parse().ok().map(Duration::from_millis)
        })
        .collect())
}

fn print_row(name: &str, samples: &mut [Duration]) {
    samples.sort();
    let median = samples[samples.len() / 2];
    let worst = samples[samples.len() - 1];
    println!(
        "| {name} | {:.2} s | {:.2} s |",
        median.as_secs_f64(),
        worst.as_secs_f64()
    );
}

async fn leading(farm: &Farm) -> Result<usize> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(index) = farm.leading_scheduler().await? {
            return Ok(index);
        }
        if Instant::now() > deadline {
            bail!("no scheduler leads");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn poll<T>(mut probe: impl FnMut() -> Option<T>) -> Result<T> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(found) = probe() {
            return Ok(found);
        }
        if Instant::now() > deadline {
            bail!("gave up waiting");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn lock(seen: &Mutex<Seen>) -> std::sync::MutexGuard<'_, Seen> {
    seen.lock().unwrap_or_else(|p| p.into_inner())
}

async fn wait_for_assignments(seen: &Mutex<Seen>) -> Result<()> {
    poll(|| lock(seen).last_assignment.map(|_| ())).await
}

async fn next_assignment_after(seen: &Mutex<Seen>, since: Instant) -> Result<Duration> {
    poll(|| {
        lock(seen)
            .last_assignment
            .filter(|at| *at > since)
            .map(|at| at - since)
    })
    .await
}

async fn held_by(seen: &Mutex<Seen>, worker: usize) -> Result<String> {
    poll(|| lock(seen).holding.get(&worker).cloned()).await
}

async fn reassigned_after(
    seen: &Mutex<Seen>,
    task: &str,
    victim: usize,
    since: Instant,
) -> Result<Duration> {
    poll(|| {
        let seen = lock(seen);
        let elsewhere = seen.holding.iter().any(|(w, t)| *w != victim && t == task);
        let at = seen.assigned_at.get(task).copied().filter(|at| *at > since);
        at.filter(|_| elsewhere).map(|at| at - since)
    })
    .await
}

/// A simulated worker that finds the scheduler in etcd, holds each task for
/// 200 ms, and reconnects whenever its session ends or is cut.
async fn simulated_worker(
    discovery: kiln_discovery::Discovery,
    index: usize,
    join_token: String,
    seen: Arc<Mutex<Seen>>,
    mut cut: mpsc::Receiver<()>,
) {
    loop {
        let session = session(&discovery, index, &join_token, &seen);
        // A cut worker plays a dead one: it stays away long enough for its
        // task to be dispatched elsewhere rather than handed back to it.
        let pause = tokio::select! {
            _ = session => Duration::from_millis(100),
            _ = cut.recv() => Duration::from_secs(3),
        };
        lock(&seen).holding.remove(&index);
        tokio::time::sleep(pause).await;
    }
}

async fn session(
    discovery: &kiln_discovery::Discovery,
    index: usize,
    join_token: &str,
    seen: &Mutex<Seen>,
) -> Result<()> {
    let endpoint = discovery
        .find_one(service::SCHEDULER, Duration::from_secs(30))
        .await?;
    let channel = tonic::transport::Channel::from_shared(endpoint.grpc_uri())?
        .http2_keep_alive_interval(Duration::from_secs(3))
        .keep_alive_timeout(Duration::from_secs(3))
        .connect()
        .await?;
    let (tx, mut inbound) = open_session(channel, index, join_token, 0).await?;
    while let Some(incoming) = inbound.message().await? {
        let Some(pb::scheduler_message::Message::Assignment(task)) = incoming.message else {
            continue;
        };
        {
            let mut seen = lock(seen);
            let now = Instant::now();
            seen.last_assignment = Some(now);
            seen.assigned_at.insert(task.task_id.clone(), now);
            seen.holding.insert(index, task.task_id.clone());
        }
        tx.send(started(&task)).await?;
        tokio::time::sleep(Duration::from_millis(200)).await;
        lock(seen).holding.remove(&index);
        tx.send(succeeded(task)).await?;
    }
    Ok(())
}
