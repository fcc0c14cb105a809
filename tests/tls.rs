//! A farm with TLS everywhere: a job renders end to end through the gateway
//! over TLS (gRPC and REST), the gateway refuses plaintext and clients that
//! do not trust the farm's CA, and the internal services refuse callers
//! without a client certificate signed by the farm's CA (mutual TLS).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result};
use kiln_discovery::service;
use kiln_localfarm::DevCa;
use kiln_proto::v1 as pb;
use kiln_proto::v1::job_service_client::JobServiceClient;
use kiln_proto::v1::worker_service_client::WorkerServiceClient;
use kiln_tests::{Client, example_scene, start_farm_tls, state_of};
use kiln_tls::{ClientTls, TlsArgs};
use tonic::transport::Channel;

#[tokio::test(flavor = "multi_thread")]
async fn a_tls_farm_renders_a_job_through_the_gateway_over_tls() -> Result<()> {
    let (mut farm, dir) = start_farm_tls(1).await?;
    assert!(
        farm.gateway_url().starts_with("https://"),
        "{}",
        farm.gateway_url()
    );
    assert!(farm.gateway_http_url().starts_with("https://"));
    for name in [service::GATEWAY, service::SCHEDULER, service::ASSETS] {
        let listed = farm.discovery().find(name).await?;
        assert!(!listed.is_empty(), "{name} is listed in etcd");
        for endpoint in listed {
            assert!(
                endpoint.tls,
                "{name} must list itself as serving TLS: {endpoint:?}"
            );
        }
    }

    // Upload, submit, watch and download over gRPC with TLS: the gateway
    // reaches the scheduler and the assets service, the worker both of them,
    // and the scheduler the assets service (to check inputs), all with mutual TLS.
    let scene = example_scene(dir.path())?;
    let mut client = Client::connect(&farm).await?;
    let job = client.submit_blender(&scene, "1-2", 2).await?;
    let finished = client.wait_until_finished(&job.id).await?;
    assert_eq!(state_of(&finished), pb::JobState::Succeeded, "{finished:?}");
    let downloaded = client
        .download_outputs(&job.id, &dir.path().join("out"))
        .await?;
    let video = downloaded
        .iter()
        .find(|p| p.ends_with("video.mp4"))
        .context("a video output")?;
    assert_eq!(&std::fs::read(video)?[4..8], b"ftyp", "an mp4 file");

    // REST over TLS, checked by curl trusting only the farm's CA.
    let ca = farm.tls_ca().context("a TLS farm has a CA")?;
    let url = format!("{}/v1/jobs/{}/status", farm.gateway_http_url(), job.id);
    let (code, body) = curl(&url, Some(ca), farm.admin_token())?;
    assert_eq!(code, "200", "{body}");
    assert!(body.contains("JOB_STATE_SUCCEEDED"), "{body}");
    farm.shutdown().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn the_tls_gateway_refuses_plaintext_and_clients_that_do_not_trust_its_ca() -> Result<()> {
    let (mut farm, dir) = start_farm_tls(0).await?;
    let token = farm.admin_token().to_owned();
    let stranger_ca = stranger_ca(dir.path())?;

    // Control: a client trusting the farm's CA gets answers.
    let trusted = ClientTls::trusting(farm.tls_ca())?;
    list_jobs(&trusted, &farm.gateway_url(), &token)
        .await
        .map_err(anyhow::Error::msg)
        .context("a client trusting the farm's CA")?;
    let ca = farm.tls_ca().context("a TLS farm has a CA")?;
    let (code, _) = curl(
        &format!("{}/v1/jobs", farm.gateway_http_url()),
        Some(ca),
        &token,
    )?;
    assert_eq!(code, "200");

    // Plaintext gRPC and HTTP to the same ports get no answer at all.
    let plain = format!("http://{}", farm.gateway_grpc_addr());
    let refused = list_jobs(&ClientTls::default(), &plain, &token)
        .await
        .expect_err("plaintext gRPC to a TLS gateway");
    assert!(
        !refused.contains("Unauthenticated") && !refused.contains("PermissionDenied"),
        "refused by the transport, not by the API: {refused}"
    );
    let plain_http = farm.gateway_http_url().replacen("https://", "http://", 1);
    let (code, _) = curl(&format!("{plain_http}/v1/jobs"), None, &token)?;
    assert_eq!(
        code, "000",
        "plaintext HTTP to the TLS REST port got an answer"
    );

    // A client trusting another CA refuses the gateway's certificate.
    let untrusting = ClientTls::trusting(Some(&stranger_ca))?;
    let refused = list_jobs(&untrusting, &farm.gateway_url(), &token)
        .await
        .expect_err("a client that does not trust the farm's CA");
    assert!(
        refused.to_lowercase().contains("certificate"),
        "the refusal names the certificate: {refused}"
    );
    let (code, _) = curl(
        &format!("{}/v1/jobs", farm.gateway_http_url()),
        Some(&stranger_ca),
        &token,
    )?;
    assert_eq!(code, "000", "curl trusting another CA got an answer");

    // The CLI: `--ca` makes it trust the farm; without it, the system's roots do not.
    let kiln = |ca: Option<&Path>| -> Result<std::process::Output> {
        let mut command = Command::new(kiln_localfarm::locate_binary("kiln")?);
        command.current_dir(dir.path()).env_remove("KILN_CA").args([
            "jobs",
            "--gateway",
            &farm.gateway_url(),
            "--token",
            &token,
        ]);
        if let Some(ca) = ca {
            command.arg("--ca").arg(ca);
        }
        Ok(command.output()?)
    };
    let trusted = kiln(Some(ca))?;
    assert!(
        trusted.status.success(),
        "kiln jobs --ca: {}",
        String::from_utf8_lossy(&trusted.stderr)
    );
    let untrusted = kiln(None)?;
    assert!(
        !untrusted.status.success(),
        "kiln trusted the farm without --ca"
    );
    let stderr = String::from_utf8_lossy(&untrusted.stderr).to_lowercase();
    assert!(stderr.contains("certificate"), "{stderr}");
    farm.shutdown().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn internal_services_refuse_callers_without_a_farm_client_certificate() -> Result<()> {
    let (mut farm, dir) = start_farm_tls(0).await?;
    let scheduler = farm
        .discovery()
        .find_one(service::SCHEDULER, Duration::from_secs(10))
        .await?;
    let uri = scheduler.grpc_uri();
    assert!(uri.starts_with("https://"), "{uri}");
    let ca = farm.tls_ca().context("a TLS farm has a CA")?.to_path_buf();
    let certs = farm.tls_certs().context("a TLS farm has certificates")?;

    // Control: the farm's own certificate opens a worker session.
    let farm_identity = identity(&certs.cert, &certs.key, &ca)?;
    let answer = open_worker_session(&farm_identity, &uri, farm.join_token())
        .await
        .map_err(anyhow::Error::msg)?;
    assert!(
        matches!(answer, Some(pb::scheduler_message::Message::Registered(_))),
        "{answer:?}"
    );

    // Trusting the farm's CA but presenting no certificate: refused, even
    // with the right join token.
    let anonymous = ClientTls::trusting(Some(&ca))?;
    let refused = open_worker_session(&anonymous, &uri, farm.join_token())
        .await
        .expect_err("a session without a client certificate");
    note("no client certificate", &refused);

    // A certificate signed by another CA: refused too.
    let stranger = DevCa::generate("stranger CA")?;
    let (cert, key) = stranger.issue("intruder")?.write(dir.path(), "intruder")?;
    let rogue = identity(&cert, &key, &ca)?;
    let refused = open_worker_session(&rogue, &uri, farm.join_token())
        .await
        .expect_err("a session with a certificate from another CA");
    note("foreign client certificate", &refused);

    // The assets service too.
    let assets = farm
        .discovery()
        .find_one(service::ASSETS, Duration::from_secs(10))
        .await?;
    let channel = anonymous.endpoint(&assets.grpc_uri())?.connect_lazy();
    let stat = kiln_asset_client::AssetClient::new(channel)
        .stat(&"0".repeat(64))
        .await;
    assert!(
        stat.is_err(),
        "assets answered a caller without a certificate"
    );
    farm.shutdown().await?;
    Ok(())
}

/// A TLS client presenting `cert`/`key` and trusting `ca`, loaded the way a service loads its own.
fn identity(cert: &Path, key: &Path, ca: &Path) -> Result<ClientTls> {
    let args = TlsArgs {
        tls_cert: Some(cert.to_path_buf()),
        tls_key: Some(key.to_path_buf()),
        tls_client_ca: None,
        tls_ca: Some(ca.to_path_buf()),
    };
    Ok(args.load()?.client())
}

/// Opens a worker session as a worker would and returns the scheduler's first message.
async fn open_worker_session(
    tls: &ClientTls,
    uri: &str,
    join_token: &str,
) -> Result<Option<pb::scheduler_message::Message>, String> {
    let channel = connect(tls, uri).await?;
    let mut client = WorkerServiceClient::new(channel);
    let register = pb::WorkerMessage {
        message: Some(pb::worker_message::Message::Register(pb::RegisterWorker {
            worker_id: "tls-probe".into(),
            hostname: "tls-probe".into(),
            instance_key: "tls-probe-instance-key".into(),
            ..Default::default()
        })),
    };
    let mut request = tonic::Request::new(futures::stream::iter([register]));
    request.metadata_mut().insert(
        kiln_proto::metadata::JOIN_TOKEN,
        join_token.parse().map_err(|_| "join token".to_owned())?,
    );
    let mut inbound = client
        .session(request)
        .await
        .map_err(|s| format!("{s:?}"))?
        .into_inner();
    let first = inbound.message().await.map_err(|s| format!("{s:?}"))?;
    Ok(first.and_then(|m| m.message))
}

async fn list_jobs(tls: &ClientTls, uri: &str, token: &str) -> Result<(), String> {
    let channel = connect(tls, uri).await?;
    let mut request = tonic::Request::new(pb::ListJobsRequest::default());
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}")
            .parse()
            .map_err(|_| "token".to_owned())?,
    );
    JobServiceClient::new(channel)
        .list_jobs(request)
        .await
        .map(|_| ())
        .map_err(|s| format!("{s:?}"))
}

/// A channel to `uri`; with TLS 1.3 a refused client certificate may only
/// show on the first call, so callers look at both.
async fn connect(tls: &ClientTls, uri: &str) -> Result<Channel, String> {
    tls.endpoint(uri)
        .map_err(|e| e.to_string())?
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(10))
        .connect()
        .await
        .map_err(|e| error_chain(&e))
}

fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Why a refusal happened, for the test's output.
fn note(what: &str, refused: &str) {
    eprintln!("refused ({what}): {refused}");
}

/// A CA certificate no farm service's certificate chains to.
fn stranger_ca(dir: &Path) -> Result<PathBuf> {
    let path = dir.join("stranger-ca.pem");
    std::fs::write(&path, DevCa::generate("stranger CA")?.cert_pem())?;
    Ok(path)
}

/// GETs `url` with curl (trusting only `ca` when given); returns the HTTP
/// status ("000" when there was no HTTP answer) and the body.
fn curl(url: &str, ca: Option<&Path>, token: &str) -> Result<(String, String)> {
    let body = tempfile::NamedTempFile::new()?;
    let mut command = Command::new("curl");
    command
        .args(["-s", "--max-time", "10", "-o"])
        .arg(body.path())
        .args(["-w", "%{http_code}", "-H"])
        .arg(format!("authorization: Bearer {token}"));
    if let Some(ca) = ca {
        command.arg("--cacert").arg(ca);
    }
    let output = command.arg(url).output().context("running curl")?;
    let code = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    Ok((
        code,
        std::fs::read_to_string(body.path()).unwrap_or_default(),
    ))
}
