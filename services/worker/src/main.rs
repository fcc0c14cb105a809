use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use kiln_discovery::Discovery;
use kiln_proto::v1::RegisterWorker;
use kiln_service::{Checks, OpsServer, checks};
use kiln_worker::capabilities::{capabilities, detect_renderers, renderer_dirs};
use kiln_worker::config::Config;
use kiln_worker::devices::detect_nvidia;
use kiln_worker::health::LocalHealth;
use kiln_worker::quality_check;
use kiln_worker::sandbox::{self, Sandbox};
use kiln_worker::session::{Stopping, Worker};
use kiln_worker::task::RunnerSettings;
use kiln_worker::workdir::InputCache;
use tokio_util::sync::CancellationToken;

/// How long to wait for etcd at startup.
const ETCD_PATIENCE: Duration = Duration::from_secs(30);

fn main() -> anyhow::Result<()> {
    // Inside a task's sandbox the worker's binary runs its own helper
    // commands; nothing of the worker's configuration applies there.
    let mut args = std::env::args();
    match args.nth(1).as_deref() {
        Some(quality_check::COMMAND) => {
            let args: Vec<String> = args.collect();
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            std::process::exit(runtime.block_on(quality_check::run_in_task(&args)));
        }
        Some(sandbox::PROBE_ARG) => std::process::exit(sandbox::run_probe()),
        _ => {}
    }
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(serve())
}

async fn serve() -> anyhow::Result<()> {
    let config = Config::parse();
    let _telemetry = kiln_telemetry::init("kiln-worker", &config.telemetry)?;
    let tls = config.tls.load()?;
    let hostname = hostname::get()
        .map(|h| h.to_string_lossy().into_owned())
        .unwrap_or_else(|_| "localhost".into());
    let worker_id = config.resolved_worker_id(&hostname);
    let work_dir = config.resolved_work_dir();
    let cache = InputCache::open(&config.resolved_cache_dir(), config.cache_bytes)
        .await
        .context("opening the input cache")?;
    let mut detected = detect_renderers(&config.blender, &config.ffmpeg, &config.natron).await;
    let gpus = detect_nvidia(&config.nvidia_smi).await;
    let memory_total = {
        let mut system = sysinfo::System::new();
        system.refresh_memory();
        system.total_memory()
    };
    let sandbox = Sandbox::start(config.sandbox_settings(
        &worker_id,
        memory_total,
        renderer_dirs(&detected.paths),
        std::env::current_exe().context("finding the worker's own executable")?,
    ))
    .await;
    detected.paths.helper = sandbox.helper().map(std::path::Path::to_path_buf);
    let register = RegisterWorker {
        worker_id: worker_id.clone(),
        hostname,
        capabilities: Some(capabilities(&config, &detected, &gpus, &sandbox)),
        running: Vec::new(),
        // Made afresh by each process: the scheduler refuses another
        // process under this id while this one's session lives.
        instance_key: format!("{:032x}", rand::random::<u128>()),
    };
    tracing::info!(worker_id, work_dir = %work_dir.display(), capabilities = ?register.capabilities, "worker starting");
    let discovery = Discovery::connect(&config.discovery, ETCD_PATIENCE)
        .await
        .context("connecting to etcd")?;
    let health = Arc::new(LocalHealth {
        renderers: detected.renderers.iter().map(|r| r.name.clone()).collect(),
        work_dir: work_dir.clone(),
        min_free_bytes: config.min_free_bytes,
        sandbox: sandbox.readiness(),
    });
    let checks = health.register(Checks::new().add("etcd", checks::etcd(&discovery)));
    let ops = OpsServer::start("worker", &config.ops, checks).await?;
    let usage = kiln_worker::usage::HostUsage::default();
    tokio::spawn(usage.clone().sample(gpus.len() as u32));
    let runner = RunnerSettings {
        work_dir,
        renderers: detected.paths,
        log_tail_lines: config.log_tail_lines as usize,
        log_max_bytes: config.log_max_bytes as usize,
        keep_work_dirs: config.keep_work_dirs,
        warm: config.warm_settings(),
        gpus,
        session_idle_timeout: Duration::from_secs(config.session_idle_seconds),
        sandbox,
    };
    let stopping = Stopping {
        drain: CancellationToken::new(),
        stop: CancellationToken::new(),
        grace: Duration::from_secs(config.drain_seconds),
    };
    let mesh = kiln_mesh::Mesh::new(
        discovery.clone(),
        tls.client(),
        kiln_mesh::Settings::from_args(&config.mesh),
    );
    // The assets service asks workers for the join token (or, with mutual
    // TLS, the certificate the channel presents).
    let credentials = match config.join_token.as_deref() {
        Some(token) => kiln_asset_client::CallCredentials::worker(token)
            .context("--join-token must be printable ASCII")?,
        None => kiln_asset_client::CallCredentials::default(),
    };
    let assets = kiln_asset_client::AssetClient::with_credentials(
        mesh.channel(kiln_discovery::service::ASSETS),
        credentials,
    );
    let ops_addr = Some(discovery.advertised_address(ops.local_addr()));
    let ops = Arc::new(ops);
    tokio::spawn(stop_on_signals(stopping.clone(), ops.clone()));
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
        health,
        ops_addr,
        join_token,
        tls: tls.client(),
        usage,
        assets,
    }
    .run(stopping)
    .await?;
    Ok(())
}

/// The first SIGTERM/Ctrl-C drains the worker; a second stops it at once.
async fn stop_on_signals(stopping: Stopping, ops: Arc<OpsServer>) {
    kiln_service::shutdown_signal().await;
    ops.set_draining();
    stopping.drain.cancel();
    kiln_service::shutdown_signal().await;
    tracing::warn!("second stop signal: handing running tasks back now");
    stopping.stop.cancel();
}
