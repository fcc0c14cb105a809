use std::time::Duration;

use clap::Parser;
use kiln_discovery::Discovery;

/// How long to wait for etcd at start-up.
const ETCD_PATIENCE: Duration = Duration::from_secs(30);

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = kiln_assets::Config::parse();
    let _telemetry = kiln_telemetry::init("kiln-assets", &config.telemetry)?;
    let routes = kiln_assets::routes(&config).await?;
    let discovery = Discovery::connect(&config.discovery, ETCD_PATIENCE).await?;
    let listener = kiln_service::bind(config.listen).await?;
    kiln_service::serve(
        kiln_discovery::service::ASSETS,
        listener,
        routes,
        &discovery,
        None,
    )
    .await?;
    Ok(())
}
