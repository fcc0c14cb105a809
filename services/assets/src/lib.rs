//! Kiln's assets service: files addressed by the SHA-256 of their content,
//! kept in a local directory or an S3 bucket.
//!
//! An upload is hashed as it arrives and published under its digest only
//! once verified: the local backend spools it to disk first, the S3
//! backend streams it into the bucket (`intake.rs`).
//! Who may see which object, and what the collector must spare, is kept in
//! marker objects beside the content (`markers.rs`, `access.rs`).

pub mod access;
pub mod backend;
pub mod caller;
pub mod config;
pub mod counters;
pub mod digest;
pub mod download_route;
pub mod error;
pub mod intake;
pub mod local;
pub mod markers;
pub mod part_plan;
pub mod rechunk;
pub mod references;
pub mod retention;
pub mod s3;
pub mod s3_deadline;
pub mod s3_intake;
pub mod s3_multipart;
pub mod s3_read;
pub mod service;
pub mod spool;
pub mod verified_download;

use std::sync::Arc;
use std::time::Duration;

use kiln_discovery::Discovery;
use kiln_proto::v1::asset_service_server::AssetServiceServer;
use kiln_service::{CheckResult, Checks};
use tonic::service::Routes;

pub use config::{BackendKind, Config};
pub use error::Error;

use crate::access::Access;
use crate::backend::Backend;
use crate::download_route::DownloadRoute;
use crate::intake::Intake;
use crate::local::LocalBackend;
use crate::references::SchedulerLink;
use crate::retention::{Collector, RetentionPolicy};
use crate::s3::S3Backend;
use crate::s3_intake::S3Intake;
use crate::service::AssetsService;
use crate::spool::{MAX_CHUNK_BYTES, Spool};
use kiln_service::cancel::DetectCancel;

/// The gRPC service name, as health checks report it.
pub const GRPC_SERVICE: &str = "kiln.v1.AssetService";

/// Who may call what: every asset call is the farm services' (the gateway
/// acting for a user, the scheduler checking a submission's inputs) and the
/// workers' (fetching inputs, storing outputs for the job's owner).
pub const CALLERS: kiln_service::internal_auth::Policy = kiln_service::internal_auth::Policy {
    routes: &[(
        "/kiln.v1.AssetService/",
        kiln_service::internal_auth::Admit::ServicesAndWorkers,
    )],
    workers_name_owners: true,
};

/// Room for a full 4 MiB upload chunk plus its framing.
const MAX_DECODING_MESSAGE_BYTES: usize = 5 * 1024 * 1024;
const _: () = assert!(MAX_CHUNK_BYTES < MAX_DECODING_MESSAGE_BYTES);

/// The service's gRPC routes (with health and reflection) for `config`.
pub async fn routes(config: &Config) -> Result<Routes, Error> {
    Ok(routes_with_checks(config, Checks::new(), None).await?.0)
}

/// [`routes`], and `checks` with the storage's own readiness checks added:
/// the backend (`s3` or `local_storage`) and the spool's `disk_space`. With
/// the farm's discovery (and how to dial its scheduler), also starts the
/// collector (unless configured off).
pub async fn routes_with_checks(
    config: &Config,
    checks: Checks,
    farm: Option<SchedulerLink>,
) -> Result<(Routes, Checks), Error> {
    let grace = Duration::from_secs(config.gc_grace_seconds);
    let farm = farm.map(|scheduler| FarmLink {
        discovery: scheduler.discovery().clone(),
        scheduler: Arc::new(scheduler),
    });
    let spool_dir = config.spool_dir();
    tracing::info!(backend = ?config.backend, spool = %spool_dir.display(), "preparing storage");
    let spool = Spool::create(spool_dir.clone(), config.max_upload_bytes).await?;
    let spool_dir_for_s3 = spool_dir.clone();
    let checks = checks.add(
        "disk_space",
        kiln_service::checks::disk_space(spool_dir, config.min_free_bytes),
    );
    let (routes, checks) = match config.backend {
        BackendKind::Local => {
            tracing::info!(data_dir = %config.data_dir.display(), "using local backend");
            let backend = Arc::new(LocalBackend::create(&config.data_dir).await?);
            let checks = checks.add("local_storage", backend_check(&backend));
            let intake = Intake::Spool(spool);
            (serve(backend, intake, grace, farm, config), checks)
        }
        BackendKind::S3 => {
            let backend = Arc::new(S3Backend::new(config.s3.settings()?));
            let checks = checks.add("s3", backend_check(&backend));
            // The spool holds only paused uploads' tails here; created
            // anyway so its sweep clears what a crash left.
            drop(spool);
            let intake = Intake::S3(S3Intake::new(
                &backend,
                spool_dir_for_s3,
                config.max_upload_bytes,
            ));
            (serve(backend, intake, grace, farm, config), checks)
        }
    };
    let routes = kiln_service::with_standard_services(routes, &[GRPC_SERVICE]).await?;
    Ok((routes, checks))
}

fn backend_check<B: Backend>(
    backend: &Arc<B>,
) -> impl Fn() -> futures::future::BoxFuture<'static, CheckResult> + Send + Sync + 'static {
    let backend = backend.clone();
    move || {
        let backend = backend.clone();
        Box::pin(async move { backend.check().await.map_err(|e| e.to_string()) })
    }
}

/// The rest of the farm, as the assets service reaches it.
struct FarmLink {
    discovery: Discovery,
    scheduler: Arc<SchedulerLink>,
}

/// The service's routes over `backend`; with the farm, also starts the
/// collector (unless configured off).
fn serve<B: Backend>(
    backend: Arc<B>,
    intake: Intake,
    grace: Duration,
    farm: Option<FarmLink>,
    config: &Config,
) -> Routes {
    let mut access = Access::new(backend.clone(), grace);
    if let Some(farm) = farm {
        access = access.with_scheduler(farm.scheduler.clone());
        if let Some(policy) = config.retention() {
            start_collector(&backend, farm, policy);
        }
    }
    let service = Arc::new(AssetsService::new(backend, intake, access));
    let server = AssetServiceServer::from_arc(service.clone())
        .max_decoding_message_size(MAX_DECODING_MESSAGE_BYTES);
    Routes::new(DownloadRoute::new(DetectCancel(server), service))
}

fn start_collector<B: Backend>(backend: &Arc<B>, farm: FarmLink, policy: RetentionPolicy) {
    tracing::info!(?policy, "collecting unreferenced objects");
    let collector = Collector::new(backend.clone(), farm.discovery, farm.scheduler, policy);
    tokio::spawn(collector.run());
}
