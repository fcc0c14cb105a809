use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use kiln_discovery::{Discovery, service};
use kiln_jobmodel::Limits;
use kiln_proto::v1::job_service_server::JobServiceServer;
use kiln_proto::v1::worker_service_server::WorkerServiceServer;
use kiln_scheduler::config::Config;
use kiln_scheduler::job_service::JobApi;
use kiln_scheduler::retry::RetryPolicy;
use kiln_scheduler::scheduler::Scheduler;
use kiln_scheduler::task_state::{self, TaskEvent};
use kiln_scheduler::worker_service::WorkerSessions;
use kiln_scheduler::{connect_database, dispatch};
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

    // This scheduler has no worker sessions yet, so nothing can be running
    // for it: whatever the database says is in flight was lost with the
    // previous scheduler's sessions and goes back to the queue.
    let requeued = task_state::apply_to_all_in_flight(&db, TaskEvent::Lose).await?;
    if requeued > 0 {
        tracing::warn!(
            tasks = requeued,
            "requeued tasks left in flight by a previous scheduler"
        );
    }

    let retry = RetryPolicy {
        max_attempts: config.max_attempts.max(1),
        base_delay: Duration::from_secs_f64(config.retry_base_seconds.max(0.0)),
        ..RetryPolicy::default()
    };
    let scheduler = Scheduler::new(db, retry);
    let limits = Limits {
        max_tasks: config.max_tasks_per_job,
        max_template_bytes: config.max_template_bytes,
    };
    tokio::spawn(dispatch::run(scheduler.clone()));

    let routes = Routes::new(JobServiceServer::new(JobApi::new(
        scheduler.clone(),
        discovery.clone(),
        limits,
    )))
    .add_service(WorkerServiceServer::new(
        WorkerSessions::new(scheduler).with_join_token(config.join_token.clone()),
    ));
    let routes = kiln_service::with_standard_services(
        routes,
        &["kiln.v1.JobService", "kiln.v1.WorkerService"],
    )
    .await?;
    let listener = kiln_service::bind(config.listen).await?;
    kiln_service::serve(service::SCHEDULER, listener, routes, &discovery, None).await?;
    Ok(())
}
