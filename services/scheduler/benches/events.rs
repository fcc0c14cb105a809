//! Job events: latency from a worker's report to its watchers, and the
//! ETA's error. The real scheduler, Postgres and etcd, driven by simulated
//! workers over real gRPC (as `dispatch.rs`).
//!
//! - Latency: `--workers` simulated workers each hold a task and report
//!   progress with a new frame number every `1 / --rate-per-worker` s (a new
//!   frame always makes a durable event), while `--watchers` WatchJob
//!   streams follow the job. Each event's latency is from the moment its
//!   report was sent to the moment a watcher read it.
//! - ETA: two jobs of one scene (the same input file), each `--eta-tasks`
//!   tasks of 1-3 s on `--eta-workers` workers, one after the other; the ETA
//!   each job's records carry first and when 25, 50 and 75 % of its tasks
//!   are done is compared with when the job really finished. The second
//!   starts from what the first took.
//!
//! Run: `cargo bench -p kiln-scheduler --bench events` (after
//! `cargo build --release --workspace --bins`, so the farm runs release binaries).

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Parser;
use kiln_asset_client::CallCredentials;
use kiln_proto::v1 as pb;
use kiln_proto::v1::job_event::Event;
use kiln_proto::v1::job_service_client::JobServiceClient;
use kiln_proto::v1::worker_message::Message as ToScheduler;
use rand::Rng;
use tokio::time::Instant;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

use common::{message, noop_job, open_session, started, succeeded};

#[derive(Parser)]
struct Args {
    /// Simulated workers reporting progress
    #[arg(long, default_value_t = 100)]
    workers: usize,
    /// Progress reports (each a new frame) per worker per second
    #[arg(long, default_value_t = 10.0)]
    rate_per_worker: f64,
    /// Concurrent watchers of the job
    #[arg(long, default_value_t = 50)]
    watchers: usize,
    /// How long the latency run lasts, in seconds
    #[arg(long, default_value_t = 20)]
    seconds: u64,
    /// Tasks of the ETA job
    #[arg(long, default_value_t = 120)]
    eta_tasks: usize,
    /// Workers of the ETA job
    #[arg(long, default_value_t = 12)]
    eta_workers: usize,
    /// Copy the scheduler's log here at the end
    #[arg(long)]
    keep_log: Option<std::path::PathBuf>,
    // `cargo bench` passes --bench; accept and ignore it.
    #[arg(long, hide = true)]
    bench: bool,
}

/// When each (task, frame) report was sent.
type Sent = Arc<Mutex<HashMap<(String, i64), Instant>>>;

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let dir = tempfile::Builder::new()
        .prefix("kiln-bench-events-")
        .tempdir()?;
    let mut farm = kiln_localfarm::Farm::builder(dir.path().join("farm"))
        .workers(0)
        .s3(false)
        .start()
        .await?;
    let endpoint = farm
        .discovery()
        .find_one(kiln_discovery::service::SCHEDULER, Duration::from_secs(10))
        .await?;
    let scheduler = Scheduler {
        channel: Channel::from_shared(endpoint.grpc_uri())?.connect().await?,
        service: CallCredentials::service(farm.service_token())?,
    };
    let result = measure(
        &args,
        scheduler,
        farm.join_token(),
        farm.discovery(),
        dir.path(),
    )
    .await;
    if let (Some(keep), Some(scheduler)) = (&args.keep_log, farm.scheduler_mut()) {
        std::fs::copy(scheduler.log_path(), keep)?;
    }
    farm.shutdown().await?;
    result
}

/// The scheduler's job API is the farm services' (the service token);
/// worker sessions use the channel with the join token.
#[derive(Clone)]
struct Scheduler {
    channel: Channel,
    service: CallCredentials,
}

impl Scheduler {
    fn jobs(&self) -> JobServiceClient<InterceptedService<Channel, CallCredentials>> {
        JobServiceClient::with_interceptor(self.channel.clone(), self.service.clone())
    }
}

async fn measure(
    args: &Args,
    scheduler: Scheduler,
    join_token: &str,
    discovery: &kiln_discovery::Discovery,
    dir: &std::path::Path,
) -> Result<()> {
    let (p50, p99, events, rate) = latency(args, scheduler.clone(), join_token)
        .await
        .context("latency run")?;
    println!(
        "## Job events: {} workers, {} watchers",
        args.workers, args.watchers
    );
    println!("| figure | value |\n|---|---|");
    println!("| durable events per second (progress with a new frame) | {rate:.0} |");
    println!("| events read by all watchers | {events} |");
    println!("| latency worker report -> watcher, p50 | {p50:.1} ms |");
    println!("| latency worker report -> watcher, p99 | {p99:.1} ms |");

    let runs = eta_runs(args, scheduler, join_token, discovery, dir)
        .await
        .context("eta run")?;
    println!(
        "\n## ETA: two jobs of one scene, {} tasks of 1-3 s each on {} workers",
        args.eta_tasks, args.eta_workers
    );
    println!(
        "| job | done | ETA said (s left) | ± | really left (s) | error |\n|---|---|---|---|---|---|"
    );
    for (job, marks) in ["first", "second (same scene)"].iter().zip(runs) {
        for mark in marks {
            println!(
                "| {job} | {:.1} % | {} | {} | {:.1} | {:.0} % |",
                mark.percent_done,
                mark.said,
                mark.plus_minus,
                mark.really,
                100.0 * (f64::from(mark.said) - mark.really).abs() / mark.really.max(0.1)
            );
        }
    }
    Ok(())
}

async fn latency(
    args: &Args,
    scheduler: Scheduler,
    join_token: &str,
) -> Result<(f64, f64, usize, f64)> {
    let mut jobs = scheduler.jobs();
    let job = jobs.submit_job(noop_job(args.workers)).await?.into_inner();
    let sent: Sent = Arc::new(Mutex::new(HashMap::new()));
    let latencies = Arc::new(Mutex::new(Vec::new()));
    let mut watchers = Vec::new();
    for _ in 0..args.watchers {
        let mut jobs = scheduler.jobs();
        let request = pb::WatchJobRequest {
            job_id: job.id.clone(),
            after_seq: None,
        };
        let mut stream = jobs.watch_job(request).await?.into_inner();
        let (sent, latencies) = (sent.clone(), latencies.clone());
        watchers.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            while let Ok(Some(event)) = stream.message().await {
                if let Some(Event::TaskProgress(p)) = &event.event
                    && let Some(frame) = p.frame
                    && let Some(at) = lock(&sent).get(&(p.task_id.clone(), frame))
                {
                    mine.push(at.elapsed().as_secs_f64() * 1000.0);
                }
            }
            lock(&latencies).extend(mine);
        }));
    }
    let run_until = Instant::now() + Duration::from_secs(args.seconds);
    let interval = Duration::from_secs_f64(1.0 / args.rate_per_worker);
    let reports = Arc::new(AtomicU64::new(0));
    let mut workers = Vec::new();
    for i in 0..args.workers {
        let (tx, mut inbound) = open_session(scheduler.channel.clone(), i, join_token, 0).await?;
        let (sent, reports) = (sent.clone(), reports.clone());
        workers.push(tokio::spawn(async move {
            let Some(task) = next_assignment(&mut inbound).await else {
                return anyhow::Ok(());
            };
            tx.send(started(&task)).await.context("sending started")?;
            let mut tick = tokio::time::interval(interval);
            let mut frame = 0;
            while Instant::now() < run_until {
                tick.tick().await;
                frame += 1;
                reports.fetch_add(1, Ordering::Relaxed);
                lock(&sent).insert((task.task_id.clone(), frame), Instant::now());
                let report = pb::TaskProgressReport {
                    task_id: task.task_id.clone(),
                    attempt: task.attempt,
                    fraction: 0.5,
                    frame: Some(frame),
                    status: String::new(),
                };
                tx.send(message(ToScheduler::Progress(report)))
                    .await
                    .with_context(|| format!("sending progress of frame {frame}"))?;
            }
            tx.send(succeeded(task)).await?;
            // Anything handed out later (a task requeued from a session that
            // broke) finishes at once, until the job ends.
            serve_instantly(&tx, &mut inbound).await
        }));
    }
    for watcher in watchers {
        watcher.await?;
    }
    let rate = reports.load(Ordering::Relaxed) as f64 / args.seconds as f64;
    for worker in workers {
        worker.abort();
    }
    let mut all = std::mem::take(&mut *lock(&latencies));
    all.sort_by(f64::total_cmp);
    Ok((
        percentile(&all, 0.5),
        percentile(&all, 0.99),
        all.len(),
        rate,
    ))
}

/// What the ETA said at one point of a job, against what really remained.
struct EtaMark {
    percent_done: f64,
    said: u32,
    plus_minus: u32,
    really: f64,
}

/// Two jobs of one scene (the same input file) on the same workers: the
/// first learns from its own tasks only, the second starts from the first's.
async fn eta_runs(
    args: &Args,
    scheduler: Scheduler,
    join_token: &str,
    discovery: &kiln_discovery::Discovery,
    dir: &std::path::Path,
) -> Result<[Vec<EtaMark>; 2]> {
    let scene = dir.join("scene.blend");
    std::fs::write(&scene, b"the same scene for both ETA jobs")?;
    let assets = discovery
        .find_one(kiln_discovery::service::ASSETS, Duration::from_secs(10))
        .await?;
    let assets = kiln_asset_client::AssetClient::with_credentials(
        Channel::from_shared(assets.grpc_uri())?.connect().await?,
        scheduler.service.clone(),
    );
    let input = pb::JobInput {
        path: "scene.blend".into(),
        digest: assets.upload_file(&scene).await?.digest,
    };
    let mut workers = Vec::new();
    for i in 0..args.eta_workers {
        let (tx, inbound) =
            open_session(scheduler.channel.clone(), 10_000 + i, join_token, 0).await?;
        workers.push(tokio::spawn(serve_slowly(tx, inbound)));
    }
    let first = eta(args, scheduler.clone(), &input)
        .await
        .context("first job");
    let second = eta(args, scheduler.clone(), &input)
        .await
        .context("second job");
    for worker in workers {
        worker.abort();
    }
    Ok([first?, second?])
}

/// Runs each task for 1-3 s (uniformly random).
async fn serve_slowly(
    tx: tokio::sync::mpsc::Sender<pb::WorkerMessage>,
    mut inbound: tonic::Streaming<pb::SchedulerMessage>,
) -> Result<()> {
    while let Some(task) = next_assignment(&mut inbound).await {
        tx.send(started(&task)).await?;
        let seconds = rand::rng().random_range(1.0..3.0);
        tokio::time::sleep(Duration::from_secs_f64(seconds)).await;
        tx.send(succeeded(task)).await?;
    }
    Ok(())
}

/// The ETA of a job's first record that has one, and at 25, 50 and 75 %.
async fn eta(args: &Args, scheduler: Scheduler, input: &pb::JobInput) -> Result<Vec<EtaMark>> {
    let mut jobs = scheduler.jobs();
    let mut request = noop_job(args.eta_tasks);
    request.inputs = vec![input.clone()];
    let job = jobs.submit_job(request).await?.into_inner();
    let request = pb::WatchJobRequest {
        job_id: job.id.clone(),
        after_seq: Some(0),
    };
    let mut stream = jobs.watch_job(request).await?.into_inner();
    let mut marks = vec![0.0, 0.25, 0.5, 0.75];
    let mut said = Vec::new();
    while let Some(event) = stream.message().await? {
        let Some(Event::JobChanged(record)) = event.event else {
            continue;
        };
        let done = f64::from(record.tasks_succeeded) / f64::from(record.tasks_total.max(1));
        if let (Some(&mark), Some(eta)) = (marks.first(), record.eta.as_ref())
            && done >= mark
        {
            marks.remove(0);
            said.push((
                done * 100.0,
                eta.seconds_left,
                eta.plus_minus_seconds,
                Instant::now(),
            ));
        }
    }
    let finished = Instant::now();
    Ok(said
        .into_iter()
        .map(|(percent_done, said, plus_minus, at)| EtaMark {
            percent_done,
            said,
            plus_minus,
            really: (finished - at).as_secs_f64(),
        })
        .collect())
}

async fn serve_instantly(
    tx: &tokio::sync::mpsc::Sender<pb::WorkerMessage>,
    inbound: &mut tonic::Streaming<pb::SchedulerMessage>,
) -> Result<()> {
    while let Some(task) = next_assignment(inbound).await {
        tx.send(started(&task)).await?;
        tx.send(succeeded(task)).await?;
    }
    Ok(())
}

async fn next_assignment(
    inbound: &mut tonic::Streaming<pb::SchedulerMessage>,
) -> Option<pb::TaskAssignment> {
    while let Ok(Some(incoming)) = inbound.message().await {
        if let Some(pb::scheduler_message::Message::Assignment(task)) = incoming.message {
            return Some(task);
        }
    }
    None
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}
