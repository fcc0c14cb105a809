//! Scheduler throughput: the real scheduler, Postgres and etcd, driven by
//! simulated workers. The workers are one process holding many gRPC session
//! streams and running the named no-op renderer `noop`: each assignment is
//! answered at once with "started" and "succeeded", so what is measured is
//! the scheduler and its Postgres work, not rendering.
//!
//! Run: `scripts/bench-scheduler.sh` (builds release binaries first).

mod common;

use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Parser;
use sqlx::PgPool;
use tokio::time::Instant;

use common::noop_job;
use common::sim::{
    BenchFarm, Latencies, Sim, connect, cpu_seconds, simulated_worker, status_bytes,
};

#[derive(Parser)]
struct Args {
    /// Simulated workers (one session stream each)
    #[arg(long, default_value_t = 1000)]
    workers: usize,
    /// Tasks in total, spread over `jobs` jobs of two owners
    #[arg(long, default_value_t = 100_000)]
    tasks: usize,
    #[arg(long, default_value_t = 10)]
    jobs: usize,
    /// HTTP/2 connections the worker streams share; 0 for one per 125 workers (at least 8)
    #[arg(long, default_value_t = 0)]
    connections: usize,
    /// How long each simulated render takes. With 0 every worker is always
    /// waiting, so the dispatch latency is only workers / throughput (Little's
    /// law); a render time that keeps demand below the scheduler's throughput
    /// makes the latency measure the scheduler's own delay.
    #[arg(long, default_value_t = 0)]
    render_ms: u64,
    /// Tasks each simulated worker holds queued behind the one it runs, as
    /// a real worker's `--lookahead` (whose default is 1); 0 for none
    #[arg(long, default_value_t = 1)]
    lookahead: u32,
    /// Also run `riverqueue bench` against the same Postgres (path to the CLI)
    #[arg(long)]
    river: Option<std::path::PathBuf>,
    /// Copy the scheduler's log here at the end
    #[arg(long)]
    keep_log: Option<std::path::PathBuf>,
    // `cargo bench` passes --bench; accept and ignore it.
    #[arg(long, hide = true)]
    bench: bool,
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let mut bench = BenchFarm::start("kiln-bench-", &[]).await?;
    let (db, endpoint, scheduler_pid) = (
        bench.db.clone(),
        bench.endpoint.clone(),
        bench.scheduler_pid,
    );

    let per_job = args.tasks / args.jobs.max(1);
    let submit_started = Instant::now();
    let mut jobs = bench.jobs().await?;
    for n in 0..args.jobs {
        let owner = if n % 2 == 0 { "alice" } else { "bob" };
        let mut request = tonic::Request::new(noop_job(per_job));
        request
            .metadata_mut()
            .insert(kiln_proto::metadata::OWNER, owner.parse()?);
        jobs.submit_job(request).await?;
    }
    let submit_time = submit_started.elapsed();
    let total = (per_job * args.jobs) as u64;

    let rss_queued = status_bytes(scheduler_pid, "VmRSS")?;
    let before = pg_counters(&db).await?;
    let tables_before = table_writes(&db).await?;
    let cpu_before = cpu_seconds(scheduler_pid)?;
    let connections = match args.connections {
        0 => (args.workers / 125).max(8),
        n => n,
    };
    let channels = connect(&endpoint.grpc_uri(), connections).await?;
    let render = Duration::from_millis(args.render_ms);
    let completed = Arc::new(AtomicU64::new(0));
    let latencies = Arc::new(Mutex::new(Latencies {
        first: Vec::with_capacity(args.workers),
        between: Vec::with_capacity(total as usize),
    }));
    let started = Instant::now();
    let mut sims = Vec::with_capacity(args.workers);
    for i in 0..args.workers {
        let channel = channels[i % channels.len()].clone();
        let (completed, latencies) = (completed.clone(), latencies.clone());
        let join_token = bench.farm.join_token().to_owned();
        let sim = Sim {
            index: i,
            render,
            lookahead: args.lookahead,
            completed,
            latencies: Some(latencies),
        };
        sims.push(tokio::spawn(simulated_worker(channel, join_token, sim)));
    }
    wait_until_succeeded(&db, args.jobs as i64, Duration::from_secs(900)).await?;
    let elapsed = started.elapsed();
    let cpu = cpu_seconds(scheduler_pid)? - cpu_before;
    // Postgres publishes other backends' counters about once a second.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = pg_counters(&db).await?;
    let tables_after = table_writes(&db).await?;
    let peak_rss = status_bytes(scheduler_pid, "VmHWM")?;
    for sim in sims {
        sim.abort();
    }
    let mut latencies = std::mem::take(&mut *latencies.lock().unwrap_or_else(|p| p.into_inner()));
    latencies.first.sort_by(f64::total_cmp);
    latencies.between.sort_by(f64::total_cmp);

    println!(
        "## Kiln scheduler: {} workers, {total} tasks in {} jobs, {} ms per simulated render, lookahead {}",
        args.workers, args.jobs, args.render_ms, args.lookahead
    );
    println!("| figure | value |\n|---|---|");
    println!(
        "| submission of all jobs | {:.2} s |",
        submit_time.as_secs_f64()
    );
    println!(
        "| run, first worker to last job succeeded | {:.2} s |",
        elapsed.as_secs_f64()
    );
    println!(
        "| tasks completed per second, end to end | {:.0} |",
        total as f64 / elapsed.as_secs_f64()
    );
    println!(
        "| dispatch latency p50 / p99 (a task's end to the next one's start) | {:.2} ms / {:.2} ms |",
        percentile(&latencies.between, 0.50),
        percentile(&latencies.between, 0.99)
    );
    println!(
        "| first task after joining, p50 / p99 (every worker joins at once) | {:.2} ms / {:.2} ms |",
        percentile(&latencies.first, 0.50),
        percentile(&latencies.first, 0.99)
    );
    println!("| scheduler CPU during the run | {cpu:.2} s |");
    println!(
        "| scheduler RSS with every task queued, before the run | {:.1} MiB |",
        rss_queued as f64 / (1024.0 * 1024.0)
    );
    println!(
        "| scheduler peak RSS | {:.1} MiB |",
        peak_rss as f64 / (1024.0 * 1024.0)
    );
    let rows = (after.rows - before.rows) as f64 / total as f64;
    let wal = (after.wal_bytes - before.wal_bytes) as f64 / total as f64;
    println!("| Postgres rows written per task during the run | {rows:.2} |");
    println!(
        "| of which HOT updates | {:.0} % |",
        100.0 * (after.hot - before.hot) as f64 / (after.updates - before.updates).max(1) as f64
    );
    println!("| WAL bytes per task | {wal:.0} |");
    println!("| dead tuples in tasks after the run | {} |", after.dead);
    let (payload, stored): (i64, i64) = sqlx::query_as(
        "SELECT COALESCE(sum(octet_length(payload)), 0)::bigint,
                pg_total_relation_size('job_events')
         FROM job_events",
    )
    .fetch_one(&db)
    .await?;
    println!(
        "| event log: payload / stored bytes per task (table, TOAST, indexes) | {:.0} / {:.0} |",
        payload as f64 / total as f64,
        stored as f64 / total as f64
    );
    for (table, (rows, updates, hot)) in &tables_after {
        let (rows_before, updates_before, hot_before) =
            tables_before.get(table).copied().unwrap_or_default();
        let written = rows - rows_before;
        // The event log is shown however small its share (one row per job
        // per batch since migration 0015).
        if written * 100 < total as i64 && table != "job_events" {
            continue;
        }
        println!(
            "| rows written per task in `{table}` (HOT updates) | {:.3} ({:.0} %) |",
            written as f64 / total as f64,
            100.0 * (hot - hot_before) as f64 / (updates - updates_before).max(1) as f64
        );
    }

    if let (Some(keep), Some(scheduler)) = (&args.keep_log, bench.farm.scheduler_mut()) {
        std::fs::copy(scheduler.log_path(), keep)?;
    }
    if let Some(river) = &args.river {
        run_river(river, &bench.farm.database_url(), args.tasks)?;
    }
    bench.farm.shutdown().await?;
    Ok(())
}

async fn wait_until_succeeded(db: &PgPool, jobs: i64, limit: Duration) -> Result<()> {
    let deadline = Instant::now() + limit;
    loop {
        let done: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs WHERE state = 'succeeded'")
            .fetch_one(db)
            .await?;
        if done >= jobs {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("only {done} of {jobs} jobs succeeded within {limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

struct PgCounters {
    rows: i64,
    updates: i64,
    hot: i64,
    dead: i64,
    wal_bytes: i64,
}

async fn pg_counters(db: &PgPool) -> Result<PgCounters> {
    let (rows, updates, hot, dead): (i64, i64, i64, i64) = sqlx::query_as(
        "SELECT COALESCE(sum(n_tup_ins + n_tup_upd + n_tup_del), 0)::bigint,
                COALESCE(sum(n_tup_upd), 0)::bigint, COALESCE(sum(n_tup_hot_upd), 0)::bigint,
                COALESCE(sum(n_dead_tup) FILTER (WHERE relname = 'tasks'), 0)::bigint
         FROM pg_stat_user_tables",
    )
    .fetch_one(db)
    .await?;
    let wal_bytes: i64 =
        sqlx::query_scalar("SELECT (pg_current_wal_lsn() - '0/0'::pg_lsn)::bigint")
            .fetch_one(db)
            .await?;
    Ok(PgCounters {
        rows,
        updates,
        hot,
        dead,
        wal_bytes,
    })
}

/// Rows written, rows updated and HOT updates, by table, sorted by name.
async fn table_writes(db: &PgPool) -> Result<std::collections::BTreeMap<String, (i64, i64, i64)>> {
    let rows: Vec<(String, i64, i64, i64)> = sqlx::query_as(
        "SELECT relname::text, (n_tup_ins + n_tup_upd + n_tup_del)::bigint, n_tup_upd::bigint,
                n_tup_hot_upd::bigint
         FROM pg_stat_user_tables",
    )
    .fetch_all(db)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(table, rows, updates, hot)| (table, (rows, updates, hot)))
        .collect())
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// River's own benchmark against the same Postgres, in a database of its own.
fn run_river(river: &std::path::Path, url: &str, tasks: usize) -> Result<()> {
    let admin = std::process::Command::new("psql")
        .args([url, "-c", "CREATE DATABASE river"])
        .output()?;
    if !admin.status.success() {
        bail!(
            "creating the river database: {}",
            String::from_utf8_lossy(&admin.stderr)
        );
    }
    let river_url = url
        .rsplit_once('/')
        .map(|(base, _)| format!("{base}/river"))
        .context("url")?;
    let migrate = std::process::Command::new(river)
        .args(["migrate-up", "--database-url", &river_url])
        .output()?;
    if !migrate.status.success() {
        bail!(
            "river migrate-up: {}",
            String::from_utf8_lossy(&migrate.stderr)
        );
    }
    println!("\n## riverqueue bench -n {tasks}, same Postgres\n```");
    let bench = std::process::Command::new(river)
        .args([
            "bench",
            "--database-url",
            &river_url,
            "-n",
            &tasks.to_string(),
        ])
        .output()?;
    print!(
        "{}{}",
        String::from_utf8_lossy(&bench.stdout),
        String::from_utf8_lossy(&bench.stderr)
    );
    println!("```");
    Ok(())
}
