use std::time::Duration;

use clap::Parser;
use kiln_discovery::Discovery;
use kiln_service::{Checks, Listing, OpsServer, checks};

/// How long to wait for etcd at start-up.
const ETCD_PATIENCE: Duration = Duration::from_secs(30);

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = kiln_assets::Config::parse();
    let _telemetry = kiln_telemetry::init("kiln-assets", &config.telemetry)?;
    let tls = config.tls.load()?;
    let discovery = Discovery::connect(&config.discovery, ETCD_PATIENCE).await?;
    let checks = Checks::new().add("etcd", checks::etcd(&discovery));
    let (routes, checks) =
        kiln_assets::routes_with_checks(&config, checks, Some((discovery.clone(), tls.client())))
            .await?;
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
