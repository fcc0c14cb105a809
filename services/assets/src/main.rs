use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use kiln_asset_client::CallCredentials;
use kiln_discovery::Discovery;
use kiln_service::{Checks, Listing, OpsServer, checks, internal_auth};

/// mimalloc rather than glibc's malloc: a download allocates an 8 MiB
/// buffer per ranged GET and a 1 MiB one per chunk sent; glibc hands blocks
/// that large out with mmap and returns them with munmap, so every buffer
/// was fresh pages, faulted in and zeroed by the kernel (BENCHMARKS.md,
/// "Assets").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// How long to wait for etcd at start-up.
const ETCD_PATIENCE: Duration = Duration::from_secs(30);

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = kiln_assets::Config::parse();
    let _telemetry = kiln_telemetry::init("kiln-assets", &config.telemetry)?;
    let tls = config.tls.load()?;
    // Before anything else: an assets service anyone could call, as any
    // user, must not start.
    let credentials = config
        .auth
        .load(config.tls.tls_client_ca.is_some())
        .context("checking the assets service's credentials")?;
    let service_token = config.auth.service_token.as_deref().unwrap_or_default();
    let discovery = Discovery::connect(&config.discovery, ETCD_PATIENCE).await?;
    let checks = Checks::new().add("etcd", checks::etcd(&discovery));
    let scheduler = kiln_assets::references::SchedulerLink::new(
        discovery.clone(),
        tls.client(),
        CallCredentials::service(service_token)?,
    );
    let (routes, checks) =
        kiln_assets::routes_with_checks(&config, checks, Some(scheduler)).await?;
    let routes = internal_auth::guard(routes, credentials, kiln_assets::CALLERS);
    let ops = OpsServer::start("assets", &config.ops, checks).await?;
    kiln_assets::counters::describe();
    let listener = kiln_service::bind(config.listen).await?;
    let listing = Listing {
        ops: Some(&ops),
        tls: tls.grpc_server(),
        ..Listing::default()
    };
    kiln_service::serve_listed(
        kiln_discovery::service::ASSETS,
        listener,
        routes,
        &discovery,
        listing,
    )
    .await?;
    Ok(())
}
