use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use kiln_discovery::{Discovery, service};
use kiln_jobmodel::Limits;
use kiln_proto::v1::job_service_server::JobServiceServer;
use kiln_proto::v1::worker_service_server::WorkerServiceServer;
use kiln_scheduler::config::Config;
use kiln_scheduler::connect_database;
use kiln_scheduler::job_service::{JobApi, JobDefaults};
use kiln_scheduler::retry::RetryPolicy;
use kiln_scheduler::scheduler::Scheduler;
use kiln_scheduler::worker_service::WorkerSessions;
use kiln_service::{CheckResult, Checks, Listing, OpsServer, checks};
use tonic::service::Routes;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    let _telemetry = kiln_telemetry::init("kiln-scheduler", &config.telemetry)?;
    let db = connect_database(
        &config.database_url,
        config.database_max_connections,
        Duration::from_secs(60),
    )
    .await
    .context("connecting to postgres")?;
    let discovery = Discovery::connect(&config.discovery, Duration::from_secs(30))
        .await
        .context("connecting to etcd")?;
    let checks = Checks::new()
        .add("postgres", postgres_check(db.clone()))
        .add("etcd", checks::etcd(&discovery));
    let ops = OpsServer::start("scheduler", &config.ops, checks).await?;
    kiln_scheduler::scheduler_metrics::describe();

    let policy = RetryPolicy {
        max_attempts: config.max_attempts.max(1),
        base_delay: Duration::from_secs_f64(config.retry_base_seconds.max(0.0)),
        blocklist_after: config.blocklist_after.max(1),
        ..RetryPolicy::default()
    };
    let weights = config.owner_weights.iter().cloned().collect();
    let started = Scheduler::start(db, policy, weights).await?;
    let scheduler = started.scheduler;
    let dispatch = tokio::spawn(started.dispatch.run());
    tokio::spawn(kiln_scheduler::liveness::watch_worker_leases(
        discovery.clone(),
        scheduler.clone(),
    ));

    let limits = Limits {
        max_tasks: config.max_tasks_per_job,
        max_template_bytes: config.max_template_bytes,
    };
    let defaults = JobDefaults {
        stall_seconds: config.stall_seconds,
    };
    let jobs = JobApi::new(scheduler.clone(), discovery.clone(), limits, defaults);
    let routes = Routes::new(JobServiceServer::new(jobs))
        .add_service(WorkerServiceServer::new(WorkerSessions::new(scheduler)));
    let routes = kiln_service::with_standard_services(
        routes,
        &["kiln.v1.JobService", "kiln.v1.WorkerService"],
    )
    .await?;
    let listener = kiln_service::bind(config.listen).await?;
    let listing = Listing {
        ops: Some(&ops),
        ..Listing::default()
    };
    tokio::select! {
        served = kiln_service::serve_listed(service::SCHEDULER, listener, routes, &discovery, listing) => served?,
        stopped = dispatch => {
            // The dispatch loop only stops on a write conflict: this
            // scheduler's view is wrong, so it must not keep serving.
            stopped.context("dispatch loop panicked")?.context("dispatch loop stopped")?;
        }
    }
    Ok(())
}

/// Ready while Postgres answers a trivial query.
fn postgres_check(
    db: sqlx::PgPool,
) -> impl Fn() -> futures::future::BoxFuture<'static, CheckResult> + Send + Sync + 'static {
    move || {
        let db = db.clone();
        Box::pin(async move {
            sqlx::query("SELECT 1")
                .execute(&db)
                .await
                .map(|_| "postgres answers".to_owned())
                .map_err(|e| format!("postgres: {e}"))
        })
    }
}
