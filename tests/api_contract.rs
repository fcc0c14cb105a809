//! What scripts rely on, over real HTTP and gRPC against a real farm (two
//! schedulers): a submit retried with the same Idempotency-Key after its
//! response was lost makes one job, also across a scheduler failover; a key
//! is its owner's alone and is refused for a different body; errors are
//! RFC 9457 problem documents keeping the `code` field; a download cut at
//! half resumes with `Range` (REST) or from its partial file (the client
//! the CLI uses) and matches its digest.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use kiln_localfarm::Farm;
use kiln_proto::v1 as pb;
use kiln_tests::{create_token, rest_call};
use serde_json::{Value, json};
use tonic::Code;

const KEY: &str = "render-shot-010-take-3";

#[tokio::test(flavor = "multi_thread")]
async fn scripts_can_retry_submissions_and_read_errors() -> Result<()> {
    let dir = kiln_tests::e2e_dir()?;
    let mut farm = Farm::builder(dir.path().join("farm"))
        .workers(0)
        .schedulers(2)
        .start()
        .await?;
    let result = run(&mut farm).await;
    farm.shutdown().await?;
    result
}

async fn run(farm: &mut Farm) -> Result<()> {
    let alice = create_token(farm, "alice", pb::Role::Submitter, 0).await?;
    let bob = create_token(farm, "bob", pb::Role::Submitter, 0).await?;
    let base = farm.gateway_http_url();

    // The first submission's answer is lost: the client sends it, the farm
    // stores the job, and the connection drops before the client reads.
    let first = {
        let (base, alice) = (base.clone(), alice.clone());
        tokio::task::spawn_blocking(move || submit_and_drop(&base, &alice, KEY, &body("1-4")))
            .await??
    };
    // The leader that stored it dies; the retry reaches the new leader.
    let leader = kiln_tests::leading_scheduler(farm).await?;
    farm.schedulers_mut()[leader].kill().await?;

    let (base2, alice2, bob2) = (base.clone(), alice.clone(), bob.clone());
    tokio::task::spawn_blocking(move || rest_checks(&base2, &alice2, &bob2, &first)).await??;

    grpc_request_id(farm, &alice).await?;

    let content = test_content();
    let digest = {
        let (base, alice, content) = (base.clone(), alice.clone(), content.clone());
        tokio::task::spawn_blocking(move || resumed_rest_download(&base, &alice, &content))
            .await??
    };
    resumed_client_download(farm, &alice, &digest, &content).await
}

/// 3 MiB that no other test stores.
fn test_content() -> Vec<u8> {
    (0..3 * 1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect()
}

fn sha256(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

/// Uploads `content`, reads half of it over a connection that then drops,
/// and fetches the rest with `Range`. Returns the digest.
fn resumed_rest_download(base: &str, token: &str, content: &[u8]) -> Result<String> {
    let auth = format!("Bearer {token}");
    let info: Value = ureq::post(&format!("{base}/v1/assets"))
        .set("authorization", &auth)
        .set("content-type", "application/octet-stream")
        .send_bytes(content)?
        .into_json()?;
    let digest = info["digest"].as_str().context("digest")?.to_owned();
    ensure!(digest == sha256(content), "stored as {digest}");
    let url = format!("{base}/v1/assets/{digest}");

    // The first half arrives, then the connection drops.
    let address = base.trim_start_matches("http://");
    let mut stream = TcpStream::connect(address)?;
    write!(
        stream,
        "GET /v1/assets/{digest} HTTP/1.1\r\nHost: {address}\r\nAuthorization: {auth}\r\n\r\n"
    )?;
    let half = content.len() / 2;
    let mut received = Vec::new();
    let mut buffer = vec![0u8; 64 * 1024];
    let body_start = loop {
        let read = stream.read(&mut buffer)?;
        ensure!(read > 0, "the download ended early");
        received.extend_from_slice(&buffer[..read]);
        if let Some(end) = received.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&received[..end]).to_ascii_lowercase();
            ensure!(head.starts_with("http/1.1 200"), "{head}");
            ensure!(head.contains(&format!("etag: \"{digest}\"")), "{head}");
            ensure!(head.contains("accept-ranges: bytes"), "{head}");
            ensure!(head.contains("immutable"), "{head}");
            break end + 4;
        }
    };
    while received.len() - body_start < half {
        let read = stream.read(&mut buffer)?;
        ensure!(read > 0, "the download ended early");
        received.extend_from_slice(&buffer[..read]);
    }
    drop(stream);
    let mut file = received.split_off(body_start);
    file.truncate(half);

    // The rest, by Range.
    let response = ureq::get(&url)
        .set("authorization", &auth)
        .set("range", &format!("bytes={}-", file.len()))
        .call()?;
    ensure!(response.status() == 206, "resume: {}", response.status());
    let expected = format!(
        "bytes {}-{}/{}",
        file.len(),
        content.len() - 1,
        content.len()
    );
    ensure!(
        response.header("content-range") == Some(expected.as_str()),
        "content-range {:?}",
        response.header("content-range")
    );
    response.into_reader().read_to_end(&mut file)?;
    ensure!(
        sha256(&file) == digest,
        "the resumed download does not match its digest"
    );

    // A current copy is not sent again; a range past the end is refused.
    let not_modified = ureq::get(&url)
        .set("authorization", &auth)
        .set("if-none-match", &format!("\"{digest}\""))
        .call()?;
    ensure!(
        not_modified.status() == 304,
        "if-none-match: {}",
        not_modified.status()
    );
    let past_end = ureq::get(&url)
        .set("authorization", &auth)
        .set("range", &format!("bytes={}-", content.len()))
        .call();
    match past_end {
        Err(ureq::Error::Status(416, response)) => {
            let expected = format!("bytes */{}", content.len());
            ensure!(response.header("content-range") == Some(expected.as_str()));
            ensure!(response.content_type() == "application/problem+json");
        }
        other => bail!("a range past the end: {other:?}"),
    }
    Ok(digest)
}

/// The asset client (which `kiln download` and `kiln outputs --download`
/// use) finds the first half of a cut download in its partial file and
/// fetches only the rest; a partial file of other bytes is started over.
async fn resumed_client_download(
    farm: &Farm,
    token: &str,
    digest: &str,
    content: &[u8],
) -> Result<()> {
    let client = kiln_tests::Client::connect_as(farm, token).await?;
    let dir = tempfile::tempdir()?;
    let dest = dir.path().join("frame.exr");
    let partial = kiln_asset_client::download::partial_path(&dest, digest);
    std::fs::write(&partial, &content[..content.len() / 2])?;
    let size = client.assets.download_to(digest, &dest).await?;
    ensure!(size == content.len() as u64, "downloaded {size} bytes");
    ensure!(
        sha256(&std::fs::read(&dest)?) == digest,
        "the resumed file differs"
    );
    ensure!(!partial.exists(), "the partial file was left behind");

    std::fs::remove_file(&dest)?;
    std::fs::write(&partial, b"not the first bytes of the content")?;
    client.assets.download_to(digest, &dest).await?;
    ensure!(
        sha256(&std::fs::read(&dest)?) == digest,
        "a bad partial file survived"
    );
    Ok(())
}

/// A noop job's JSON body (no worker here offers `noop`: it stays pending).
fn body(frames: &str) -> Value {
    let template = format!(
        "specificationVersion: jobtemplate-2023-09
name: idempotent
steps:
  - name: Noop
    parameterSpace:
      taskParameterDefinitions:
        - name: N
          type: INT
          range: \"{frames}\"
    script:
      actions:
        onRun:
          command: noop
          args: [\"{{{{Task.Param.N}}}}\"]
"
    );
    json!({"templateDocument": template, "name": "idempotent"})
}

/// Sends `POST /v1/jobs` over a raw connection and drops it without
/// reading the answer, once the job it made is listed. Returns that job's id.
fn submit_and_drop(base: &str, token: &str, key: &str, body: &Value) -> Result<String> {
    let address = base.trim_start_matches("http://");
    let mut stream = TcpStream::connect(address)?;
    let body = body.to_string();
    write!(
        stream,
        "POST /v1/jobs HTTP/1.1\r\nHost: {address}\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\nIdempotency-Key: {key}\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    )?;
    stream.flush()?;
    let deadline = Instant::now() + Duration::from_secs(60);
    let id = loop {
        let jobs = list_jobs(base, token)?;
        if let Some(job) = jobs.first() {
            ensure!(jobs.len() == 1, "one submission made {} jobs", jobs.len());
            break job["id"].as_str().context("job id")?.to_owned();
        }
        ensure!(Instant::now() < deadline, "the submission never made a job");
        std::thread::sleep(Duration::from_millis(100));
    };
    drop(stream);
    Ok(id)
}

fn list_jobs(base: &str, token: &str) -> Result<Vec<Value>> {
    let (status, page) = rest_call("GET", &format!("{base}/v1/jobs"), Some(token), None)?;
    ensure!(status == 200, "listing jobs: {status} {page}");
    Ok(page["jobs"].as_array().cloned().unwrap_or_default())
}

/// `POST /v1/jobs` with an Idempotency-Key: the status, the content type and the body.
fn submit(base: &str, token: &str, key: &str, body: &Value) -> Result<(u16, String, Value)> {
    let result = ureq::post(&format!("{base}/v1/jobs"))
        .set("authorization", &format!("Bearer {token}"))
        .set("content-type", "application/json")
        .set("idempotency-key", key)
        .send_string(&body.to_string());
    let response = match result {
        Ok(response) => response,
        Err(ureq::Error::Status(_, response)) => response,
        Err(err) => bail!("POST /v1/jobs: {err}"),
    };
    let status = response.status();
    let content_type = response.content_type().to_owned();
    Ok((status, content_type, response.into_json()?))
}

fn rest_checks(base: &str, alice: &str, bob: &str, first: &str) -> Result<()> {
    // The retry, answered by the new leader, is the same job. Until a
    // standby leads, the farm answers 503, which a script retries too.
    let deadline = Instant::now() + Duration::from_secs(60);
    let (status, _, job) = loop {
        let answer = submit(base, alice, KEY, &body("1-4"))?;
        if answer.0 != 503 || Instant::now() > deadline {
            break answer;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    ensure!(status == 202, "retry: {status} {job}");
    ensure!(
        job["id"] == first,
        "the retry made job {} besides {first}",
        job["id"]
    );
    let jobs = list_jobs(base, alice)?;
    ensure!(
        jobs.len() == 1,
        "after the retry alice has {} jobs",
        jobs.len()
    );

    // The same key for another body is refused, naming the key.
    let (status, content_type, problem) = submit(base, alice, KEY, &body("1-8"))?;
    ensure!(status == 409, "reuse for another body: {status} {problem}");
    ensure!(
        content_type == "application/problem+json",
        "content type {content_type}"
    );
    ensure!(problem["code"] == "already_exists", "{problem}");
    ensure!(problem["status"] == 409, "{problem}");
    let detail = problem["detail"].as_str().unwrap_or_default();
    ensure!(
        detail.contains(KEY),
        "the refusal does not name the key: {problem}"
    );
    ensure!(
        list_jobs(base, alice)?.len() == 1,
        "the refused reuse made a job"
    );

    // Keys are per owner: bob's same key makes bob's own job.
    let (status, _, bobs) = submit(base, bob, KEY, &body("1-4"))?;
    ensure!(status == 202, "bob: {status} {bobs}");
    ensure!(bobs["id"] != first, "bob's key answered with alice's job");
    ensure!(bobs["owner"] == "bob", "{bobs}");

    // A bad key is a bad request, as a problem document keeping `code`.
    let (status, content_type, problem) = submit(base, alice, "two words", &body("1-4"))?;
    ensure!(status == 400, "bad key: {status} {problem}");
    ensure!(
        content_type == "application/problem+json",
        "content type {content_type}"
    );
    ensure!(problem["code"] == "invalid_argument", "{problem}");
    ensure!(
        problem["title"].is_string() && problem["type"].is_string(),
        "{problem}"
    );
    ensure!(
        problem["detail"]
            .as_str()
            .is_some_and(|d| d.starts_with("request_id: ")),
        "{problem}"
    );
    // Malformed JSON too.
    let mut raw = TcpStream::connect(base.trim_start_matches("http://"))?;
    write!(
        raw,
        "POST /v1/jobs HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {alice}\r\n\
         Content-Type: application/json\r\nContent-Length: 1\r\nConnection: close\r\n\r\n{{"
    )?;
    let mut answer = String::new();
    raw.read_to_string(&mut answer)?;
    ensure!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    ensure!(
        answer
            .to_ascii_lowercase()
            .contains("content-type: application/problem+json"),
        "{answer}"
    );
    ensure!(answer.contains("\"code\":\"invalid_json\""), "{answer}");
    Ok(())
}

/// The same over gRPC with `request_id`.
async fn grpc_request_id(farm: &Farm, alice: &str) -> Result<()> {
    let mut client = kiln_tests::Client::connect_as(farm, alice).await?;
    let template = body("1-2")["templateDocument"]
        .as_str()
        .context("template")?
        .to_owned();
    let mut request = pb::SubmitJobRequest {
        template: Some(pb::submit_job_request::Template::TemplateDocument(template)),
        request_id: "grpc-retry-1".into(),
        ..Default::default()
    };
    let first = client.jobs.submit_job(request.clone()).await?.into_inner();
    let again = client.jobs.submit_job(request.clone()).await?.into_inner();
    ensure!(
        first.id == again.id,
        "gRPC retry made {} besides {}",
        again.id,
        first.id
    );
    request.name = "another".into();
    let refused = client
        .jobs
        .submit_job(request)
        .await
        .expect_err("a reused request_id with another request is refused");
    ensure!(
        refused.code() == Code::AlreadyExists,
        "reuse: {:?} {}",
        refused.code(),
        refused.message()
    );
    ensure!(
        refused.message().contains("grpc-retry-1"),
        "{}",
        refused.message()
    );
    Ok(())
}
