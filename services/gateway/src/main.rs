use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use kiln_discovery::{Discovery, service};
use kiln_gateway::config::Config;
use kiln_gateway::grpc::PublicApi;
use kiln_gateway::rest::{self, RestState};
use kiln_gateway::upstream::Upstreams;
use kiln_proto::v1::asset_service_server::AssetServiceServer;
use kiln_proto::v1::job_service_server::JobServiceServer;
use kiln_service::{Checks, Listing, OpsServer, checks};
use tonic::service::Routes;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    let _telemetry = kiln_telemetry::init("kiln-gateway", &config.telemetry)?;
    let discovery = Discovery::connect(&config.discovery, Duration::from_secs(30))
        .await
        .context("connecting to etcd")?;
    let checks = Checks::new()
        .add("etcd", checks::etcd(&discovery))
        .add(
            "scheduler",
            checks::registered(&discovery, service::SCHEDULER),
        )
        .add("assets", checks::registered(&discovery, service::ASSETS));
    let ops = OpsServer::start("gateway", &config.ops, checks).await?;
    let upstreams = Arc::new(Upstreams::new(discovery.clone()));
    let api = PublicApi::new(upstreams.clone());

    let http_listener = kiln_service::bind(config.http_listen).await?;
    let http_addr = http_listener.local_addr()?;
    let state = RestState {
        api: api.clone(),
        upstreams,
        max_upload_bytes: config.max_upload_bytes,
    };
    let app = rest::router(
        state,
        config.max_json_bytes,
        Duration::from_secs(config.request_timeout_seconds),
    )
    .layer(tower_http::trace::TraceLayer::new_for_http());
    tracing::info!(addr = %http_addr, "serving rest");
    let http = tokio::spawn(async move {
        axum::serve(http_listener, app)
            .with_graceful_shutdown(kiln_service::shutdown_signal())
            .await
    });

    let max_message = 8 * 1024 * 1024;
    let routes =
        Routes::new(JobServiceServer::new(api.clone()).max_decoding_message_size(max_message))
            .add_service(AssetServiceServer::new(api).max_decoding_message_size(max_message));
    let routes = kiln_service::with_standard_services(
        routes,
        &["kiln.v1.JobService", "kiln.v1.AssetService"],
    )
    .await?;
    let grpc_listener = kiln_service::bind(config.grpc_listen).await?;
    let listing = Listing {
        http: Some(discovery.advertised_address(http_addr)),
        ops: Some(&ops),
    };
    kiln_service::serve_listed(service::GATEWAY, grpc_listener, routes, &discovery, listing)
        .await?;
    http.await??;
    Ok(())
}
