//! The mesh end to end: uploads through two gateways spread over three
//! assets replicas, and survive one replica frozen (SIGSTOP) or killed
//! mid-upload; a caller's deadline travels through the gateway to a frozen
//! scheduler. Real processes, real Garage.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use futures::StreamExt;
use kiln_localfarm::Farm;
use kiln_proto::v1 as pb;
use kiln_tests::{Client, e2e_dir};
use sha2::{Digest as _, Sha256};
use tokio::time::Instant;

/// Uploads in the first phase, and the share each replica must serve.
const UPLOADS: usize = 300;
const MIN_SHARE: f64 = 0.20;
/// Uploads in flight at once.
const CONCURRENCY: usize = 8;
/// The longest any one phase may take.
const PHASE_LIMIT: Duration = Duration::from_secs(120);

/// `count` files of `size` bytes under `dir`, each different.
fn make_files(dir: &Path, tag: &str, count: usize, size: usize) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir)?;
    (0..count)
        .map(|i| {
            let path = dir.join(format!("{tag}-{i}.bin"));
            let seed = Sha256::digest(format!("{tag}-{i}-{}", std::process::id()));
            let data: Vec<u8> = seed.iter().copied().cycle().take(size).collect();
            let mut data = data;
            data[..8].copy_from_slice(&(i as u64).to_le_bytes());
            std::fs::write(&path, data)?;
            Ok(path)
        })
        .collect()
}

fn sha256_of(path: &Path) -> Result<String> {
    Ok(hex::encode(Sha256::digest(std::fs::read(path)?)))
}

/// Uploads every file, alternating between the gateways' clients, a few at
/// a time; returns each upload's outcome (file, digest) in order.
async fn upload_all(clients: &[Client], files: &[PathBuf]) -> Vec<Result<(PathBuf, String)>> {
    let uploads: Vec<_> = files
        .iter()
        .enumerate()
        .map(|(i, file)| upload_one(clients[i % clients.len()].assets.clone(), file.clone()))
        .collect();
    futures::stream::iter(uploads)
        .buffered(CONCURRENCY)
        .collect()
        .await
}

async fn upload_one(
    assets: kiln_asset_client::AssetClient,
    file: PathBuf,
) -> Result<(PathBuf, String)> {
    let info = assets
        .upload_file(&file)
        .await
        .with_context(|| format!("uploading {}", file.display()))?;
    Ok((file, info.digest))
}

/// Every upload succeeded, under the digest of what was sent.
fn all_verified(outcomes: Vec<Result<(PathBuf, String)>>) -> Result<Vec<(PathBuf, String)>> {
    let mut done = Vec::new();
    for outcome in outcomes {
        let (file, digest) = outcome?;
        ensure!(
            digest == sha256_of(&file)?,
            "{} stored under the wrong digest",
            file.display()
        );
        done.push((file, digest));
    }
    Ok(done)
}

/// The text of `ops`'s /metrics.
async fn metrics_of(ops: &str) -> Result<String> {
    let url = format!("http://{ops}/metrics");
    tokio::task::spawn_blocking(move || -> Result<String> {
        Ok(ureq::get(&url)
            .timeout(Duration::from_secs(5))
            .call()?
            .into_string()?)
    })
    .await?
}

/// The sum of `metric`'s samples on `ops`'s /metrics whose labels contain
/// every one of `labels`.
async fn metric_sum(ops: &str, metric: &str, labels: &[String]) -> Result<f64> {
    let body = metrics_of(ops).await?;
    let mut sum = 0.0;
    for line in body.lines() {
        let Some(rest) = line.strip_prefix(metric) else {
            continue;
        };
        if !rest.starts_with([' ', '{']) || !labels.iter().all(|l| rest.contains(l.as_str())) {
            continue;
        }
        sum += rest
            .split_whitespace()
            .last()
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0);
    }
    Ok(sum)
}

/// Uploads an assets replica served, from its own server metrics.
async fn uploads_served(replica: &kiln_discovery::Endpoint) -> Result<f64> {
    let ops = replica
        .ops
        .as_deref()
        .context("replica lists no ops address")?;
    metric_sum(
        ops,
        "kiln_grpc_server_requests_total",
        &[
            r#"service="kiln.v1.AssetService""#.to_owned(),
            r#"method="Upload""#.to_owned(),
        ],
    )
    .await
}

/// Calls the gateways sent to the assets replica `instance` (attempts, from
/// their balancers' metrics).
async fn calls_sent_to(gateways: &[kiln_discovery::Endpoint], instance: &str) -> Result<f64> {
    let mut total = 0.0;
    for gateway in gateways {
        let ops = gateway
            .ops
            .as_deref()
            .context("gateway lists no ops address")?;
        total += metric_sum(
            ops,
            "kiln_balancer_endpoint_requests_total",
            &[
                r#"upstream="assets""#.to_owned(),
                format!(r#"endpoint="{instance}""#),
            ],
        )
        .await?;
    }
    Ok(total)
}

async fn mesh_farm(dir: &Path) -> Result<Farm> {
    Ok(Farm::builder(dir.join("farm"))
        .workers(0)
        .s3(true)
        .assets_replicas(3)
        .gateways(2)
        // Hundreds of uploads from one token: above the per-token limit.
        .env("KILN_RATE_LIMIT_PER_SECOND", "100000")
        .env("KILN_RATE_LIMIT_BURST", "100000")
        .start()
        .await?)
}

#[tokio::test(flavor = "multi_thread")]
async fn uploads_spread_over_every_assets_replica_and_survive_one_frozen_or_killed() -> Result<()> {
    let dir = e2e_dir()?;
    let mut farm = mesh_farm(dir.path()).await?;
    let replicas = farm.assets_endpoints().to_vec();
    let gateways = farm
        .discovery()
        .find(kiln_discovery::service::GATEWAY)
        .await?;
    ensure!(replicas.len() == 3 && gateways.len() == 2);
    let mut clients = Vec::new();
    for url in farm.gateway_urls() {
        clients.push(Client::connect_url(&url, farm.admin_token()).await?);
    }
    let files = dir.path().join("files");

    // 1. Every replica serves its share: of the calls the gateways' balancers
    // sent (each upload is a Stat, an UploadOffset and an Upload, each
    // balanced on its own).
    let small = make_files(&files, "spread", UPLOADS, 16 * 1024)?;
    all_verified(upload_all(&clients, &small).await)?;
    let mut sent = Vec::new();
    let mut served = Vec::new();
    for replica in &replicas {
        sent.push(calls_sent_to(&gateways, &replica.instance).await?);
        served.push(uploads_served(replica).await?);
    }
    let total: f64 = sent.iter().sum();
    println!("calls the gateways sent to each replica: {sent:?}");
    println!("uploads each replica counted itself (kiln_grpc_server_*): {served:?}");
    ensure!(
        total >= UPLOADS as f64 * 3.0,
        "every upload's calls are counted: {sent:?}"
    );
    // Each replica's own server metrics count the uploads it served (a
    // Grafana panel reads these): together, every upload, once.
    let served_total: f64 = served.iter().sum();
    ensure!(
        served_total >= UPLOADS as f64,
        "the replicas' kiln_grpc_server_requests_total count every upload: {served:?}"
    );
    for (replica, count) in replicas.iter().zip(&sent) {
        ensure!(
            *count >= total * MIN_SHARE,
            "replica {} took {count} of {total} calls (all: {sent:?})",
            replica.instance
        );
    }

    // 2. A frozen replica gets no new calls within a bounded wait, while
    // every upload still succeeds.
    let frozen = &replicas[1];
    farm.assets_replica_mut(1).context("replica 1")?.pause()?;
    let started = Instant::now();
    let mut quiet_batches = 0;
    let mut batch = 0;
    while quiet_batches < 2 {
        ensure!(
            started.elapsed() < PHASE_LIMIT,
            "the frozen replica {} kept receiving calls",
            frozen.instance
        );
        let before = calls_sent_to(&gateways, &frozen.instance).await?;
        let some = make_files(&files, &format!("frozen-{batch}"), 16, 16 * 1024)?;
        batch += 1;
        all_verified(upload_all(&clients, &some).await)?;
        let after = calls_sent_to(&gateways, &frozen.instance).await?;
        quiet_batches = if after == before {
            quiet_batches + 1
        } else {
            0
        };
    }
    println!(
        "the frozen replica got no new calls after {:.1} s ({batch} batches of uploads)",
        started.elapsed().as_secs_f64()
    );

    // ... and is used again once it runs again.
    farm.assets_replica_mut(1).context("replica 1")?.resume()?;
    let resumed = Instant::now();
    let sent_before = calls_sent_to(&gateways, &frozen.instance).await?;
    loop {
        ensure!(
            resumed.elapsed() < PHASE_LIMIT,
            "the thawed replica {} was never used again",
            frozen.instance
        );
        let some = make_files(&files, &format!("thawed-{batch}"), 16, 16 * 1024)?;
        batch += 1;
        all_verified(upload_all(&clients, &some).await)?;
        // It answered them too: every upload of the batch succeeded.
        if calls_sent_to(&gateways, &frozen.instance).await? > sent_before {
            break;
        }
    }
    println!(
        "the thawed replica served uploads again after {:.1} s",
        resumed.elapsed().as_secs_f64()
    );

    // 3. A replica killed mid-upload: every upload completes and verifies.
    let large = make_files(&files, "killed", 32, 2 * 1024 * 1024)?;
    let uploads = {
        let clients = clients.clone();
        let large = large.clone();
        tokio::spawn(async move { upload_all(&clients, &large).await })
    };
    let victim = &replicas[2];
    let deadline = Instant::now() + PHASE_LIMIT;
    // Kill it once it is serving some of these uploads.
    let busy_before = calls_sent_to(&gateways, &victim.instance).await?;
    loop {
        let sent = calls_sent_to(&gateways, &victim.instance).await?;
        if sent > busy_before + 3.0 || uploads.is_finished() || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    ensure!(
        !uploads.is_finished(),
        "the uploads ended before the replica could be killed mid-upload"
    );
    farm.assets_replica_mut(2)
        .context("replica 2")?
        .kill()
        .await?;
    println!("killed replica {} mid-upload", victim.instance);
    let stored = all_verified(uploads.await?)?;
    ensure!(stored.len() == large.len());
    // What was stored downloads intact (through either gateway).
    for (i, (file, digest)) in stored.iter().enumerate() {
        let back = dir.path().join("back.bin");
        clients[i % clients.len()]
            .assets
            .download_to(digest, &back)
            .await?;
        ensure!(
            sha256_of(&back)? == *digest,
            "{} came back different",
            file.display()
        );
    }
    farm.shutdown().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_deadline_travels_through_the_gateway_to_a_frozen_scheduler() -> Result<()> {
    let dir = e2e_dir()?;
    let mut farm = Farm::builder(dir.path().join("farm"))
        .workers(0)
        .start()
        .await?;
    let mut client = Client::connect(&farm).await?;
    // The link works before the freeze.
    client
        .jobs
        .list_jobs(pb::ListJobsRequest::default())
        .await?;
    let Some(scheduler) = farm.scheduler_mut() else {
        bail!("no scheduler");
    };
    scheduler.pause()?;
    let mut request = tonic::Request::new(pb::ListJobsRequest::default());
    request.set_timeout(Duration::from_secs(1));
    let started = Instant::now();
    let result = client.jobs.list_jobs(request).await;
    let elapsed = started.elapsed();
    println!(
        "the call ended after {:.3} s: {result:?}",
        elapsed.as_secs_f64()
    );
    let Some(scheduler) = farm.scheduler_mut() else {
        bail!("no scheduler");
    };
    scheduler.resume()?;
    match result {
        Err(status) => ensure!(
            status.code() == tonic::Code::DeadlineExceeded,
            "expected DEADLINE_EXCEEDED, got {status:?}"
        ),
        Ok(_) => bail!("a frozen scheduler answered"),
    }
    farm.shutdown().await?;
    Ok(())
}
