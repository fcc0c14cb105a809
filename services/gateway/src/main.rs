use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use kiln_discovery::{Discovery, service};
use kiln_gateway::config::Config;
use kiln_gateway::grpc::PublicApi;
use kiln_gateway::limits::Limits;
use kiln_gateway::rest::RestState;
use kiln_gateway::token_service::TokenApi;
use kiln_gateway::tokens::TokenStore;
use kiln_gateway::upstream::Upstreams;
use kiln_proto::v1::asset_service_server::AssetServiceServer;
use kiln_proto::v1::farm_service_server::FarmServiceServer;
use kiln_proto::v1::job_service_server::JobServiceServer;
use kiln_proto::v1::token_service_server::TokenServiceServer;
use kiln_proto::v1::webhook_service_server::WebhookServiceServer;
use kiln_service::cancel::DetectCancel;
use kiln_service::{Checks, Listing, OpsServer, checks};
use tonic::service::Routes;

/// mimalloc rather than glibc's malloc: an asset transfer passes 1 MiB
/// messages through the gateway, and glibc maps and unmaps blocks that
/// large for each one, so every message was fresh pages faulted in and
/// zeroed by the kernel (BENCHMARKS.md, "Assets").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    let _telemetry = kiln_telemetry::init("kiln-gateway", &config.telemetry)?;
    let tls = config.tls.load().context("loading TLS certificates")?;
    let discovery = Discovery::connect(&config.discovery, Duration::from_secs(30))
        .await
        .context("connecting to etcd")?;
    // One gateway migrates its schema at a time, farm-wide.
    let migrating = discovery
        .lock_migrations(service::GATEWAY)
        .await
        .context("taking the migration lock in etcd")?;
    let store = TokenStore::connect(
        &config.database_url,
        config.database_max_connections,
        Duration::from_secs(60),
    )
    .await
    .context("opening the token store")?;
    migrating.release().await;
    if let Some(secret) = &config.bootstrap_admin_token {
        store
            .bootstrap_admin(secret)
            .await
            .context("creating the bootstrap admin token")?;
        tracing::info!("bootstrap admin token ready");
    }
    let checks = Checks::new()
        .add("etcd", checks::etcd(&discovery))
        .add(
            "scheduler",
            checks::registered(&discovery, service::SCHEDULER),
        )
        .add("assets", checks::registered(&discovery, service::ASSETS));
    let ops = OpsServer::start("gateway", &config.ops, checks).await?;
    let mesh = kiln_mesh::Mesh::new(
        discovery.clone(),
        tls.client(),
        kiln_mesh::Settings::from_args(&config.mesh),
    );
    let upstreams = Arc::new(
        Upstreams::new(&mesh, &config.service_token)
            .context("--service-token must be printable ASCII")?,
    );
    let api = PublicApi::new(upstreams);
    let tokens = TokenApi::new(store.clone());
    let limits = Limits::new(&config.limits, store.clone());
    let dashboard =
        kiln_gateway::dashboard::Dashboard::new(&store, tls.serves_tls(), limits.lookups());

    let http_listener = kiln_service::bind(config.http_listen).await?;
    let http_addr = http_listener.local_addr()?;
    let state = RestState {
        api: api.clone(),
        tokens: tokens.clone(),
        dashboard,
    };
    let app = limits
        .rest(state)
        .layer(tower_http::trace::TraceLayer::new_for_http());
    tracing::info!(addr = %http_addr, tls = tls.serves_tls(), "serving rest");
    let http = tokio::spawn(kiln_gateway::http_server::serve(
        http_listener,
        app,
        tls.http_server()?,
    ));

    let max_message = limits.max_grpc_message_bytes();
    let routes =
        Routes::new(JobServiceServer::new(api.clone()).max_decoding_message_size(max_message))
            .add_service(FarmServiceServer::new(api.clone()).max_decoding_message_size(max_message))
            // Uploads must tell a client's cancel from a clean end (see grpc.rs).
            .add_service(DetectCancel(
                AssetServiceServer::new(api.clone()).max_decoding_message_size(max_message),
            ))
            .add_service(TokenServiceServer::new(tokens).max_decoding_message_size(max_message))
            .add_service(WebhookServiceServer::new(api).max_decoding_message_size(max_message));
    let routes = kiln_service::with_standard_services(
        routes,
        &[
            "kiln.v1.JobService",
            "kiln.v1.FarmService",
            "kiln.v1.AssetService",
            "kiln.v1.TokenService",
            "kiln.v1.WebhookService",
        ],
    )
    .await?;
    let grpc_listener = kiln_service::bind(config.grpc_listen).await?;
    let listing = Listing {
        http: Some(discovery.advertised_address(http_addr)),
        ops: Some(&ops),
        tls: tls.grpc_server(),
    };
    kiln_service::serve_listed(
        service::GATEWAY,
        grpc_listener,
        limits.grpc(routes),
        &discovery,
        listing,
    )
    .await?;
    http.await??;
    Ok(())
}
