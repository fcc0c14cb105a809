use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use kiln_discovery::Discovery;
use kiln_proto::v1::RegisterWorker;
use kiln_worker::capabilities::{capabilities, detect_renderers};
use kiln_worker::config::Config;
use kiln_worker::session::Worker;
use kiln_worker::task_runner::RunnerSettings;
use kiln_worker::workdir::InputCache;
use tokio_util::sync::CancellationToken;

/// How long to wait for etcd at startup.
const ETCD_PATIENCE: Duration = Duration::from_secs(30);

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    let _telemetry = kiln_telemetry::init("kiln-worker", &config.telemetry)?;
    let hostname = hostname::get()
        .map(|h| h.to_string_lossy().into_owned())
        .unwrap_or_else(|_| "localhost".into());
    let worker_id = config.resolved_worker_id(&hostname);
    let work_dir = config.resolved_work_dir();
    let cache = InputCache::open(&config.resolved_cache_dir())
        .await
        .context("opening the input cache")?;
    let detected = detect_renderers(&config.blender, &config.ffmpeg).await;
    let register = RegisterWorker {
        worker_id: worker_id.clone(),
        hostname,
        capabilities: Some(capabilities(&config, &detected)),
    };
    tracing::info!(worker_id, work_dir = %work_dir.display(), capabilities = ?register.capabilities, "worker starting");
    let discovery = Discovery::connect(&config.discovery, ETCD_PATIENCE)
        .await
        .context("connecting to etcd")?;
    let runner = RunnerSettings {
        work_dir,
        renderers: detected.paths,
        allow_blender_python: config.allow_blender_python,
        log_tail_lines: config.log_tail_lines as usize,
        keep_work_dirs: config.keep_work_dirs,
    };
    let shutdown = CancellationToken::new();
    tokio::spawn({
        let shutdown = shutdown.clone();
        async move {
            kiln_service::shutdown_signal().await;
            shutdown.cancel();
        }
    });
    let join_token = config
        .join_token
        .as_deref()
        .map(str::parse)
        .transpose()
        .context("--join-token must be printable ASCII")?;
    Worker {
        register,
        discovery,
        runner,
        cache,
        join_token,
    }
    .run(shutdown)
    .await?;
    Ok(())
}
