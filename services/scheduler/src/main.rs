use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use kiln_discovery::{Discovery, Endpoint, service};
use kiln_jobmodel::Limits;
use kiln_proto::v1::asset_references_server::AssetReferencesServer;
use kiln_proto::v1::farm_service_server::FarmServiceServer;
use kiln_proto::v1::job_service_server::JobServiceServer;
use kiln_proto::v1::webhook_service_server::WebhookServiceServer;
use kiln_proto::v1::worker_service_server::WorkerServiceServer;
use kiln_scheduler::config::Config;
use kiln_scheduler::connect_database;
use kiln_scheduler::farm_service::FarmApi;
use kiln_scheduler::job_service::JobApi;
use kiln_scheduler::leader::{self, LeaderSlot, Leading};
use kiln_scheduler::references::References;
use kiln_scheduler::retention::JobRetention;
use kiln_scheduler::retry::RetryPolicy;
use kiln_scheduler::standby;
use kiln_scheduler::stream_quota::StreamQuota;
use kiln_scheduler::submit::{AssetService, JobDefaults, SizeLimits, Submissions};
use kiln_scheduler::webhooks::service::WebhookApi;
use kiln_scheduler::worker_service::WorkerSessions;
use kiln_service::internal_auth::{self, Admit, Policy};
use kiln_service::{CheckResult, Checks, OpsServer, checks};
use tonic::service::Routes;

/// mimalloc rather than glibc's malloc: at 10,000 workers the dispatch
/// path allocates per message on several threads, and glibc spent a
/// quarter of the leader's CPU in malloc, free and their arena locks
/// (BENCHMARKS.md, "Scale").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Who may call what: the job API and the assets collector's references
/// are the farm services' (the gateway names the user it acts for), the
/// session stream is the workers'.
const CALLERS: Policy = Policy {
    routes: &[
        ("/kiln.v1.JobService/", Admit::Services),
        ("/kiln.v1.AssetReferences/", Admit::Services),
        ("/kiln.v1.WebhookService/", Admit::Services),
        ("/kiln.v1.FarmService/", Admit::Services),
        ("/kiln.v1.WorkerService/", Admit::Workers),
    ],
    workers_name_owners: false,
};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    let _telemetry = kiln_telemetry::init("kiln-scheduler", &config.telemetry)?;
    let tls = config.tls.load()?;
    // Before anything else: a scheduler anyone could call as any user, or
    // join as a worker, must not start.
    let credentials = config
        .auth
        .load(config.tls.tls_client_ca.is_some())
        .context("checking the scheduler's credentials")?;
    let service_token = config.auth.service_token.clone().unwrap_or_default();
    let discovery = Discovery::connect(&config.discovery, Duration::from_secs(30))
        .await
        .context("connecting to etcd")?;
    // One replica migrates at a time, farm-wide; the others wait, then find
    // nothing left to apply.
    let migrating = discovery
        .lock_migrations(service::SCHEDULER)
        .await
        .context("taking the migration lock in etcd")?;
    let db = connect_database(
        &config.database_url,
        config.database_max_connections,
        Duration::from_secs(60),
        kiln_scheduler::fence::abandoned_after(config.leader_ttl),
    )
    .await
    .context("connecting to postgres")?;
    migrating.release().await;
    let slot = Arc::new(LeaderSlot::default());
    let checks = Checks::new()
        .add("postgres", postgres_check(db.clone()))
        .add("etcd", checks::etcd(&discovery))
        .add("leader", standby::leader_check(slot.leading()));
    let ops = OpsServer::start("scheduler", &config.ops, checks).await?;
    kiln_scheduler::scheduler_metrics::describe();

    let limits = Limits {
        max_tasks: config.max_tasks_per_job,
        max_template_bytes: config.max_template_bytes,
    };
    let defaults = JobDefaults {
        stall_seconds: config.stall_seconds,
    };
    let templates = match &config.template_dir {
        Some(dir) => kiln_jobmodel::TemplateLibrary::load_dir(dir, limits.max_template_bytes)
            .context("loading the approved templates")?,
        None => kiln_jobmodel::TemplateLibrary::default(),
    };
    let mesh = kiln_mesh::Mesh::new(
        discovery.clone(),
        tls.client(),
        kiln_mesh::Settings::from_args(&config.mesh),
    );
    let assets = AssetService::new(mesh.channel(service::ASSETS), &service_token)?;
    let sizes = SizeLimits {
        max_name_bytes: config.quotas.max_job_name_bytes,
        max_parameter_bytes: config.quotas.max_parameter_bytes,
    };
    let submissions = Submissions::new(limits, defaults, Arc::new(assets))
        .with_templates(templates)
        .with_sizes(sizes);
    let webhooks = config.webhooks.settings();
    let retention = JobRetention::after_seconds(config.delete_finished_jobs_after_seconds);
    let jobs = JobApi::new(slot.clone(), submissions)
        .with_stream_quota(StreamQuota::new(config.quotas.max_streams_per_owner))
        .with_retention(retention);
    let routes = Routes::new(JobServiceServer::new(jobs))
        .add_service(WorkerServiceServer::new(WorkerSessions::new(slot.clone())))
        .add_service(AssetReferencesServer::new(References::new(db.clone())))
        .add_service(WebhookServiceServer::new(WebhookApi::new(
            slot.clone(),
            webhooks.clone(),
        )))
        .add_service(FarmServiceServer::new(FarmApi::new(slot.clone())));
    // NOT_SERVING while standing by (standby.rs).
    let (routes, health) = kiln_service::with_health(
        routes,
        &[
            "kiln.v1.JobService",
            "kiln.v1.WorkerService",
            "kiln.v1.AssetReferences",
            "kiln.v1.WebhookService",
            "kiln.v1.FarmService",
        ],
    )
    .await?;
    tokio::spawn(standby::report_health(slot.leading(), health));
    let routes = internal_auth::guard(routes, credentials, CALLERS);
    let listener = kiln_service::bind(config.listen).await?;
    let endpoint = Endpoint {
        instance: kiln_service::instance_name(service::SCHEDULER),
        grpc: discovery.advertised_address(listener.local_addr()?),
        http: None,
        ops: Some(discovery.advertised_address(ops.local_addr())),
        tls: tls.serves_tls(),
    };
    let leading = Leading {
        db,
        discovery,
        slot,
        policy: RetryPolicy {
            max_attempts: config.max_attempts.max(1),
            base_delay: Duration::from_secs_f64(config.retry_base_seconds.max(0.0)),
            blocklist_after: config.blocklist_after.max(1),
            reclaim_window: Duration::from_secs(config.reclaim_seconds),
            ..RetryPolicy::default()
        },
        owner_weights: config.owner_weights.iter().cloned().collect(),
        quotas: config.quotas.core(),
        network_templates: config.network_templates.iter().cloned().collect(),
        admission: config.admission_policy(),
        webhooks,
        endpoint,
        lease_ttl: config.leader_ttl,
        retention,
    };
    // Both end on SIGTERM: the election first resigns, so a standby leads at once.
    let (served, ()) = tokio::join!(
        kiln_service::serve_unlisted_tls(listener, routes, Some(&ops), tls.grpc_server()),
        leader::run(leading),
    );
    served?;
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
