//! The ops endpoint of every service of a real farm: `/metrics` passes
//! `promtool check metrics`, `/healthz` answers, `/readyz` names its checks;
//! a worker short of disk space reports not ready and takes no task; a
//! standby scheduler is not ready and its gRPC health answers NOT_SERVING.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use kiln_discovery::service;
use kiln_localfarm::{ETCD_PREFIX, ServiceProcess, free_port, locate_binary};
use kiln_proto::v1 as pb;
use kiln_tests::{Client, example_scene, start_farm_with, state_of};
use serde_json::Value;
use tokio::time::Instant;

const SERVICES: [(&str, &[&str]); 4] = [
    (service::GATEWAY, &["etcd", "scheduler", "assets"]),
    (service::SCHEDULER, &["postgres", "etcd", "leader"]),
    (service::ASSETS, &["etcd", "disk_space", "s3"]),
    (
        service::WORKER,
        &["etcd", "renderer", "sandbox", "disk_space"],
    ),
];

fn get(url: &str) -> anyhow::Result<(u16, String)> {
    match ureq::get(url).call() {
        Ok(response) => Ok((response.status(), response.into_string()?)),
        Err(ureq::Error::Status(code, response)) => Ok((code, response.into_string()?)),
        Err(err) => Err(err.into()),
    }
}

fn promtool_check_metrics(exposition: &str) -> anyhow::Result<String> {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(exposition.as_bytes())?;
    }
    let output = child.wait_with_output()?;
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    anyhow::ensure!(output.status.success(), "promtool check metrics: {report}");
    Ok(report)
}

/// The `(name, ok)` of each check a `/readyz` answer lists.
fn checks_of(readyz: &Value) -> Vec<(String, bool)> {
    readyz["checks"]
        .as_array()
        .map(|checks| {
            checks
                .iter()
                .map(|c| {
                    let name = c["name"].as_str().unwrap_or_default().to_owned();
                    (name, c["ok"].as_bool().unwrap_or(false))
                })
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread")]
async fn every_service_serves_metrics_health_and_named_readiness() -> anyhow::Result<()> {
    let (mut farm, dir) = start_farm_with(1, true, &[]).await?;
    // A second worker whose disk is "full": it needs more free space than any disk has.
    farm.add_worker_with_env(&[("KILN_MIN_FREE_BYTES", "18446744073709551615")])
        .await?;
    let scene = example_scene(dir.path())?;
    let mut client = Client::connect(&farm).await?;
    let job = client.submit_blender(&scene, "1-2", 1).await?;
    let job = client.wait_until_finished(&job.id).await?;
    assert_eq!(state_of(&job), pb::JobState::Succeeded, "{job:?}");
    let tasks = client.tasks(&job.id).await?;
    assert!(
        tasks.iter().all(|t| t.worker_id == "worker-0"),
        "the worker short of disk space took no task: {tasks:?}"
    );

    let discovery = farm.discovery().clone();
    let result = async {
        let mut metrics_by_service = Vec::new();
        for (name, expected_checks) in SERVICES {
            for endpoint in discovery.find(name).await? {
                let ops = endpoint
                    .ops
                    .clone()
                    .ok_or_else(|| anyhow::anyhow!("{name} lists no ops address: {endpoint:?}"))?;
                let base = format!("http://{ops}");
                let (blocking_base, instance) = (base.clone(), endpoint.instance.clone());
                let (healthz, readyz, metrics) = tokio::task::spawn_blocking(move || {
                    anyhow::Ok((
                        get(&format!("{blocking_base}/healthz"))?,
                        get(&format!("{blocking_base}/readyz"))?,
                        get(&format!("{blocking_base}/metrics"))?,
                    ))
                })
                .await??;
                assert_eq!(healthz.0, 200, "{instance} /healthz");
                let readiness: Value = serde_json::from_str(&readyz.1)?;
                let checks = checks_of(&readiness);
                let names: Vec<&str> = checks.iter().map(|(n, _)| n.as_str()).collect();
                assert_eq!(names, expected_checks, "{instance} /readyz: {readiness}");
                assert_eq!(metrics.0, 200, "{instance} /metrics");
                promtool_check_metrics(&metrics.1)?;
                if instance == "worker-1" {
                    assert_eq!(readyz.0, 503, "a full disk makes the worker not ready");
                    assert!(
                        checks.contains(&("disk_space".to_owned(), false)),
                        "{readiness}"
                    );
                } else {
                    assert_eq!(readyz.0, 200, "{instance} is ready: {readiness}");
                    assert!(checks.iter().all(|(_, ok)| *ok), "{readiness}");
                }
                metrics_by_service.push((instance, metrics.1));
            }
        }
        anyhow::Ok(metrics_by_service)
    }
    .await;
    farm.shutdown().await?;
    let metrics = result?;
    let of = |instance: &str| {
        metrics
            .iter()
            .find(|(i, _)| i.as_str() == instance)
            .map(|(_, m)| m.as_str())
            .unwrap_or_default()
    };
    let worker = of("worker-0");
    for name in [
        "jobs_processed_total{job_type=\"blender\",status=\"succeeded\"} 2",
        "jobs_processed_total{job_type=\"kiln-encode\",status=\"succeeded\"} 1",
        "job_duration_seconds_bucket{job_type=\"blender\"",
        "worker_cpu_usage_percent ",
        "worker_memory_usage_bytes ",
        "health_check_up{check=\"renderer\"} 1",
    ] {
        assert!(
            worker.contains(name),
            "worker-0 /metrics lacks {name}:\n{worker}"
        );
    }
    let assets = metrics
        .iter()
        .find(|(i, _)| i.starts_with("assets"))
        .map(|(_, m)| m.as_str())
        .unwrap_or_default();
    for name in [
        "asset_bytes_received_total ",
        "asset_bytes_sent_total ",
        "health_check_up{check=\"s3\"} 1",
    ] {
        assert!(
            assets.contains(name),
            "assets /metrics lacks {name}:\n{assets}"
        );
    }
    let scheduler = metrics
        .iter()
        .find(|(i, _)| i.starts_with("scheduler"))
        .map(|(_, m)| m.as_str())
        .unwrap_or_default();
    for name in [
        "kiln_scheduler_jobs_finished_total{state=\"succeeded\"} 1",
        // Gauges are sampled every 250 ms: their names, not their values.
        "kiln_scheduler_queue_depth ",
        "kiln_scheduler_tasks{state=\"in_flight\"} ",
        "kiln_scheduler_workers 1",
        "kiln_scheduler_dispatch_latency_seconds_count 4",
        "kiln_scheduler_batch_write_seconds_count",
        "kiln_scheduler_idle_workers 0",
    ] {
        assert!(
            scheduler.contains(name),
            "scheduler /metrics lacks {name}:\n{scheduler}"
        );
    }
    Ok(())
}

/// `/readyz` status and the `leader` check's outcome, and gRPC health's
/// status for the whole server and for the job API, of a scheduler.
async fn scheduler_readiness(ops: u16, grpc: u16) -> anyhow::Result<(u16, bool, [i32; 2])> {
    let (code, body) =
        tokio::task::spawn_blocking(move || get(&format!("http://127.0.0.1:{ops}/readyz")))
            .await??;
    let readiness: Value = serde_json::from_str(&body)?;
    let leader = checks_of(&readiness).contains(&("leader".to_owned(), true));
    let channel = tonic::transport::Channel::from_shared(format!("http://127.0.0.1:{grpc}"))?
        .connect()
        .await?;
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let mut statuses = [0; 2];
    for (status, service) in statuses.iter_mut().zip(["", "kiln.v1.JobService"]) {
        *status = health
            .check(tonic_health::pb::HealthCheckRequest {
                service: service.to_owned(),
            })
            .await?
            .into_inner()
            .status;
    }
    Ok((code, leader, statuses))
}

const SERVING: i32 = 1;
const NOT_SERVING: i32 = 2;

#[tokio::test(flavor = "multi_thread")]
async fn a_standby_scheduler_is_not_ready_until_it_leads() -> anyhow::Result<()> {
    let (mut farm, dir) = start_farm_with(0, false, &[]).await?;
    let (grpc, ops) = (free_port()?, free_port()?);
    let mut standby = ServiceProcess::new(
        "standby",
        locate_binary("kiln-scheduler")?,
        dir.path().join("standby.log"),
    )
    .args(["--etcd", &farm.etcd_url(), "--etcd-prefix", ETCD_PREFIX])
    .args(["--database-url", &farm.database_url()])
    .args(["--listen", &format!("127.0.0.1:{grpc}")])
    .args(["--ops-listen", &format!("127.0.0.1:{ops}")])
    .env("KILN_SERVICE_TOKEN", farm.service_token())
    .env("KILN_JOIN_TOKEN", farm.join_token())
    // The farm's etcd takes only its user.
    .env("KILN_ETCD_USER", farm.etcd_credentials().0)
    .env("KILN_ETCD_PASSWORD", farm.etcd_credentials().1);
    standby.start()?;
    let result = async {
        // Up, and standing by: alive, not ready, NOT_SERVING.
        let deadline = Instant::now() + Duration::from_secs(60);
        let standing_by = loop {
            match scheduler_readiness(ops, grpc).await {
                Ok(found) => break found,
                Err(err) if Instant::now() > deadline => return Err(err),
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        };
        assert_eq!(
            standing_by,
            (503, false, [NOT_SERVING; 2]),
            "a standby is not ready"
        );
        farm.scheduler_mut()
            .ok_or_else(|| anyhow::anyhow!("the farm has a scheduler"))?
            .kill()
            .await?;
        // The leader is gone: the standby leads, and turns ready and SERVING.
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let now = scheduler_readiness(ops, grpc).await?;
            if now == (200, true, [SERVING; 2]) {
                return anyhow::Ok(());
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "the standby never turned ready after the leader died: {now:?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    .await;
    standby.kill().await?;
    farm.shutdown().await?;
    result
}
