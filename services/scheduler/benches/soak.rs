//! Soak: the real scheduler, Postgres and etcd under a steady load for an
//! hour, to see whether anything grows that should not. Simulated workers
//! (the no-op renderer, each render taking `--render-ms`) keep running
//! tasks; new jobs are submitted whenever fewer than `--queued` tasks wait,
//! so the queue stays full; finished jobs are deleted after
//! `--retention-seconds` (the scheduler's
//! `KILN_DELETE_FINISHED_JOBS_AFTER_SECONDS`). Every `--sample-seconds` it
//! prints the size of the `tasks` table and its indexes, the whole
//! database, dead tuples, autovacuum runs and the scheduler's RSS.
//!
//! Run: `scripts/bench-soak.sh [MINUTES]` (builds release binaries first).

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Result;
use clap::Parser;
use sqlx::PgPool;
use tokio::time::Instant;

use common::noop_job;
use common::sim::{BenchFarm, Jobs, MIB, Sim, connect, simulated_worker, status_bytes};

#[derive(Parser)]
struct Args {
    /// How long the steady load lasts
    #[arg(long, default_value_t = 60)]
    minutes: u64,
    /// Simulated workers (one session stream each)
    #[arg(long, default_value_t = 1000)]
    workers: usize,
    /// How long each simulated render takes; workers / render time is the
    /// load in tasks per second
    #[arg(long, default_value_t = 1000)]
    render_ms: u64,
    /// Tasks kept waiting: a job is submitted whenever fewer wait
    #[arg(long, default_value_t = 100_000)]
    queued: u64,
    /// Tasks per submitted job
    #[arg(long, default_value_t = 10_000)]
    job_tasks: usize,
    /// Seconds the scheduler keeps a finished job before deleting it
    #[arg(long, default_value_t = 300)]
    retention_seconds: u64,
    /// Seconds between samples
    #[arg(long, default_value_t = 60)]
    sample_seconds: u64,
    // `cargo bench` passes --bench; accept and ignore it.
    #[arg(long, hide = true)]
    bench: bool,
}

/// One sample of what could grow.
struct Sample {
    minute: f64,
    completed: u64,
    submitted_jobs: u64,
    jobs: i64,
    live_tasks: i64,
    dead_tasks: i64,
    tasks_heap: i64,
    tasks_indexes: i64,
    database: i64,
    autovacuums: i64,
    rss: u64,
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let retention = [(
        "KILN_DELETE_FINISHED_JOBS_AFTER_SECONDS",
        args.retention_seconds.to_string(),
    )];
    let mut bench = BenchFarm::start("kiln-soak-", &retention).await?;
    let (db, endpoint, scheduler_pid) = (
        bench.db.clone(),
        bench.endpoint.clone(),
        bench.scheduler_pid,
    );
    let jobs = bench.jobs().await?;
    let submitted = Arc::new(AtomicU64::new(0));
    let completed = Arc::new(AtomicU64::new(0));
    let mut submitter = tokio::spawn(
        Submitter {
            jobs,
            queued: args.queued,
            job_tasks: args.job_tasks,
            held: 2 * args.workers as u64,
            completed: completed.clone(),
            submitted_jobs: submitted.clone(),
        }
        .run(),
    );

    let channels = connect(&endpoint.grpc_uri(), (args.workers / 125).max(8)).await?;
    let mut sims = Vec::with_capacity(args.workers);
    for i in 0..args.workers {
        let sim = Sim {
            index: i,
            render: Duration::from_millis(args.render_ms),
            lookahead: 1,
            completed: completed.clone(),
            latencies: None,
        };
        sims.push(tokio::spawn(simulated_worker(
            channels[i % channels.len()].clone(),
            bench.farm.join_token().to_owned(),
            sim,
        )));
    }

    println!(
        "## Soak: {} workers, {} ms per simulated render, {} tasks kept queued in jobs of {}, finished jobs deleted after {} s, {} min\n",
        args.workers,
        args.render_ms,
        args.queued,
        args.job_tasks,
        args.retention_seconds,
        args.minutes
    );
    println!(
        "| minute | tasks done | jobs submitted | jobs in Postgres | `tasks` rows live / dead | `tasks` heap MiB | `tasks` indexes MiB | database MiB | autovacuums of `tasks` | scheduler RSS MiB |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    let started = Instant::now();
    let end = started + Duration::from_secs(args.minutes * 60);
    let mut samples = Vec::new();
    let mut ticks = tokio::time::interval(Duration::from_secs(args.sample_seconds.max(1)));
    loop {
        ticks.tick().await;
        if submitter.is_finished() {
            (&mut submitter).await??;
            anyhow::bail!("the submitter stopped");
        }
        if let Some(gone) = sims.iter_mut().find(|sim| sim.is_finished()) {
            gone.await??;
            anyhow::bail!("a simulated worker's session ended");
        }
        let sample = sample(
            &db,
            scheduler_pid,
            started,
            completed.load(Ordering::Relaxed),
            submitted.load(Ordering::Relaxed),
        )
        .await?;
        println!(
            "| {:.1} | {} | {} | {} | {} / {} | {:.1} | {:.1} | {:.1} | {} | {:.1} |",
            sample.minute,
            sample.completed,
            sample.submitted_jobs,
            sample.jobs,
            sample.live_tasks,
            sample.dead_tasks,
            sample.tasks_heap as f64 / MIB,
            sample.tasks_indexes as f64 / MIB,
            sample.database as f64 / MIB,
            sample.autovacuums,
            sample.rss as f64 / MIB,
        );
        samples.push(sample);
        if Instant::now() >= end {
            break;
        }
    }
    summarize(&samples, args.retention_seconds);
    submitter.abort();
    for sim in sims {
        sim.abort();
    }
    bench.farm.shutdown().await?;
    Ok(())
}

/// What keeps the queue full: submits a job of `job_tasks` no-op tasks
/// whenever fewer than `queued` tasks wait, checking every second;
/// alternates two owners.
struct Submitter {
    jobs: Jobs,
    queued: u64,
    job_tasks: usize,
    /// Tasks the simulated workers may hold at once (running and queued).
    held: u64,
    completed: Arc<AtomicU64>,
    submitted_jobs: Arc<AtomicU64>,
}

impl Submitter {
    /// Counts what waits from its own tallies, not from Postgres: a
    /// `count(*)` over `tasks` every second would read the whole table,
    /// and reading prunes dead rows from its pages, which would hide the
    /// growth this benchmark looks for.
    async fn run(mut self) -> Result<()> {
        let mut submitted_tasks = 0u64;
        let mut ticks = tokio::time::interval(Duration::from_secs(1));
        loop {
            ticks.tick().await;
            let finished_or_held = self.completed.load(Ordering::Relaxed) + self.held;
            let waiting = submitted_tasks.saturating_sub(finished_or_held);
            // Bounded: at most enough jobs to fill the queue once per check.
            let missing = self.queued.saturating_sub(waiting) as usize;
            for _ in 0..missing.div_ceil(self.job_tasks.max(1)) {
                let n = self.submitted_jobs.fetch_add(1, Ordering::Relaxed);
                let owner = if n.is_multiple_of(2) { "alice" } else { "bob" };
                let mut request = tonic::Request::new(noop_job(self.job_tasks));
                request
                    .metadata_mut()
                    .insert(kiln_proto::metadata::OWNER, owner.parse()?);
                self.jobs.submit_job(request).await?;
                submitted_tasks += self.job_tasks as u64;
            }
        }
    }
}

async fn sample(
    db: &PgPool,
    scheduler_pid: u32,
    started: Instant,
    completed: u64,
    submitted_jobs: u64,
) -> Result<Sample> {
    let (jobs, live_tasks, dead_tasks, tasks_heap, tasks_indexes, database, autovacuums): (
        i64,
        i64,
        i64,
        i64,
        i64,
        i64,
        i64,
    ) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM jobs),
                n_live_tup, n_dead_tup,
                pg_relation_size('tasks'), pg_indexes_size('tasks'),
                pg_database_size(current_database()), autovacuum_count
         FROM pg_stat_user_tables WHERE relname = 'tasks'",
    )
    .fetch_one(db)
    .await?;
    Ok(Sample {
        minute: started.elapsed().as_secs_f64() / 60.0,
        completed,
        submitted_jobs,
        jobs,
        live_tasks,
        dead_tasks,
        tasks_heap,
        tasks_indexes,
        database,
        autovacuums,
        rss: status_bytes(scheduler_pid, "VmRSS")?,
    })
}

/// Growth from the first sample after two retention periods (the deletions
/// have caught up by then) to the last.
fn summarize(samples: &[Sample], retention_seconds: u64) {
    let settled_minute = 2.0 * retention_seconds as f64 / 60.0;
    let (Some(first), Some(last)) = (
        samples.iter().find(|s| s.minute >= settled_minute),
        samples.last(),
    ) else {
        println!("\n(too short to compare: no sample after {settled_minute:.0} min)");
        return;
    };
    let growth = |a: i64, b: i64| 100.0 * (b - a) as f64 / a.max(1) as f64;
    println!(
        "\nFrom minute {:.0} to minute {:.0}: `tasks` heap {:.1} -> {:.1} MiB ({:+.1} %), its indexes {:.1} -> {:.1} MiB ({:+.1} %), database {:.1} -> {:.1} MiB ({:+.1} %), scheduler RSS {:.1} -> {:.1} MiB; {} tasks done in all.",
        first.minute,
        last.minute,
        first.tasks_heap as f64 / MIB,
        last.tasks_heap as f64 / MIB,
        growth(first.tasks_heap, last.tasks_heap),
        first.tasks_indexes as f64 / MIB,
        last.tasks_indexes as f64 / MIB,
        growth(first.tasks_indexes, last.tasks_indexes),
        first.database as f64 / MIB,
        last.database as f64 / MIB,
        growth(first.database, last.database),
        first.rss as f64 / MIB,
        last.rss as f64 / MIB,
        last.completed,
    );
}
