//! Webhooks on a real farm: a receiver gets each event of a job exactly once
//! by id, with valid signatures, across a leader kill mid-job; a receiver
//! that fails three times still gets everything; one that always fails is
//! paused, and resumed on request; a webhook pointed at loopback is refused
//! by default (SSRF).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use kiln_localfarm::Farm;
use kiln_proto::v1 as pb;
use kiln_proto::v1::webhook_service_client::WebhookServiceClient;
use kiln_tests::{Client, example_scene, state_of};
use sha2::Sha256;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::time::Instant;

const PATIENCE: Duration = Duration::from_secs(180);
/// Frames of the one chunk rendering when the leader dies.
const FRAMES: usize = 24;

/// One request a receiver got.
#[derive(Debug, Clone)]
struct Received {
    id: String,
    timestamp: i64,
    signature: String,
    body: Vec<u8>,
    /// What the receiver answered.
    status: u16,
}

/// A webhook receiver on 127.0.0.1: answers each request with the next of
/// `statuses`, then 200, and keeps what it got.
#[derive(Clone)]
struct Receiver {
    port: u16,
    got: Arc<Mutex<Vec<Received>>>,
}

impl Receiver {
    async fn start(statuses: Vec<u16>) -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let got = Arc::new(Mutex::new(Vec::new()));
        let answers = Arc::new(Mutex::new(statuses.into_iter()));
        let kept = got.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (kept, answers) = (kept.clone(), answers.clone());
                tokio::spawn(async move {
                    let _ = serve(stream, kept, answers).await;
                });
            }
        });
        Ok(Self { port, got })
    }

    fn url(&self, host: &str) -> String {
        format!("http://{host}:{}/hooks/kiln", self.port)
    }

    fn received(&self) -> Vec<Received> {
        self.got.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// One HTTP/1.1 request, answered and closed.
async fn serve(
    mut stream: tokio::net::TcpStream,
    kept: Arc<Mutex<Vec<Received>>>,
    answers: Arc<Mutex<std::vec::IntoIter<u16>>>,
) -> Result<()> {
    let mut buffer = Vec::new();
    let header_end = loop {
        let mut chunk = [0u8; 4096];
        let read = stream.read(&mut chunk).await?;
        if read == 0 {
            bail!("closed before the headers ended");
        }
        buffer.extend_from_slice(&chunk[..read]);
        if let Some(at) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
    };
    let head = String::from_utf8_lossy(&buffer[..header_end]).to_string();
    let header = |name: &str| {
        head.lines()
            .filter_map(|line| line.split_once(':'))
            .find(|(key, _)| key.trim().eq_ignore_ascii_case(name))
            .map(|(_, value)| value.trim().to_owned())
            .unwrap_or_default()
    };
    let length: usize = header("content-length").parse().unwrap_or(0);
    while buffer.len() < header_end + length {
        let mut chunk = [0u8; 4096];
        let read = stream.read(&mut chunk).await?;
        if read == 0 {
            bail!("closed before the body ended");
        }
        buffer.extend_from_slice(&chunk[..read]);
    }
    let status = answers
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .next()
        .unwrap_or(200);
    kept.lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(Received {
            id: header("webhook-id"),
            timestamp: header("webhook-timestamp").parse().unwrap_or(0),
            signature: header("webhook-signature"),
            body: buffer[header_end..header_end + length].to_vec(),
            status,
        });
    let answer = format!("HTTP/1.1 {status} X\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
    stream.write_all(answer.as_bytes()).await?;
    stream.shutdown().await?;
    Ok(())
}

/// Whether `received` is signed with `secret` as Standard Webhooks says.
fn signed_with(secret: &str, received: &Received) -> bool {
    let Ok(key) = STANDARD.decode(secret.trim_start_matches("whsec_")) else {
        return false;
    };
    let Ok(mut mac) = <Hmac<Sha256> as Mac>::new_from_slice(&key) else {
        return false;
    };
    mac.update(format!("{}.{}.", received.id, received.timestamp).as_bytes());
    mac.update(&received.body);
    let expected = format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()));
    received.signature.split(' ').any(|s| s == expected)
}

/// The event type of each distinct delivery id the receiver answered 2xx
/// (repeats of an id, after a failover, count once).
fn delivered_types(received: &[Received], job_id: &str) -> BTreeMap<String, String> {
    let mut types = BTreeMap::new();
    for r in received.iter().filter(|r| (200..300).contains(&r.status)) {
        let Ok(body) = serde_json::from_slice::<serde_json::Value>(&r.body) else {
            continue;
        };
        if body["data"]["jobId"] != job_id {
            continue;
        }
        types.insert(r.id.clone(), body["type"].as_str().unwrap_or("").to_owned());
    }
    types
}

async fn webhooks(farm: &Farm) -> Result<WebhookServiceClient<kiln_tests::AuthChannel>> {
    webhooks_as(farm, farm.admin_token()).await
}

async fn webhooks_as(
    farm: &Farm,
    token: &str,
) -> Result<WebhookServiceClient<kiln_tests::AuthChannel>> {
    let channel = kiln_tls::ClientTls::trusting(farm.tls_ca())?
        .endpoint(&farm.gateway_url())?
        .connect()
        .await?;
    Ok(WebhookServiceClient::with_interceptor(
        channel,
        kiln_asset_client::CallCredentials::bearer(token)?,
    ))
}

/// Waits until `done` holds for what `receiver` got.
async fn wait_for(
    receiver: &Receiver,
    what: &str,
    done: impl Fn(&[Received]) -> bool,
) -> Result<Vec<Received>> {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let got = receiver.received();
        if done(&got) {
            return Ok(got);
        }
        if Instant::now() > deadline {
            bail!("{what}: the receiver got {} requests: {got:?}", got.len());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits until the leader's webhook loop, with no webhook to deliver to, has
/// passed over `job_id`'s events and kept its state as running: until then a
/// webhook created now would still be handed the job's start.
async fn wait_until_passed_over(farm: &Farm, job_id: &str) -> Result<()> {
    // A UUID from the farm: hex digits and dashes only, safe inside the query.
    if !job_id.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
        bail!("not a job id: {job_id:?}");
    }
    let query = format!("SELECT state FROM webhook_job_states WHERE job_id = '{job_id}'");
    let deadline = Instant::now() + PATIENCE;
    loop {
        let (url, query) = (farm.database_url(), query.clone());
        let seen = tokio::task::spawn_blocking(move || {
            std::process::Command::new("psql")
                .args([url.as_str(), "-Atc", query.as_str()])
                .output()
        })
        .await??;
        let state = String::from_utf8_lossy(&seen.stdout).trim().to_owned();
        if state == "running" {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "the webhook loop never passed over job {job_id}: state {state:?}, {}",
                String::from_utf8_lossy(&seen.stderr)
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn webhooks_deliver_each_event_once_by_id_across_a_failover() -> Result<()> {
    let dir = kiln_tests::e2e_dir()?;
    // `localhost` is allowed; 127.0.0.1 is not, so the default policy is
    // tested on the same farm.
    let mut farm = Farm::builder(dir.path().join("farm"))
        .workers(1)
        .schedulers(2)
        .env("KILN_LEASE_TTL", "3")
        .env("KILN_WEBHOOK_ALLOW_HOSTS", "localhost")
        .env("KILN_WEBHOOK_RETRY_BASE_MS", "200")
        // The flaky receiver fails 3 times in a row: not enough to pause it.
        .env("KILN_WEBHOOK_PAUSE_AFTER", "4")
        .start()
        .await?;
    let mut hooks = webhooks(&farm).await?;

    // SSRF: loopback is refused by default, naming why.
    let refused = hooks
        .create_webhook(pb::CreateWebhookRequest {
            url: "http://127.0.0.1:9/hook".into(),
            ..Default::default()
        })
        .await
        .expect_err("a loopback webhook is refused");
    assert!(
        matches!(
            refused.code(),
            tonic::Code::FailedPrecondition | tonic::Code::InvalidArgument
        ) && refused.message().contains("SSRF"),
        "{refused:?}"
    );
    let bad = hooks
        .create_webhook(pb::CreateWebhookRequest {
            url: "ftp://example.com/".into(),
            ..Default::default()
        })
        .await
        .expect_err("an ftp url is refused");
    assert_eq!(bad.code(), tonic::Code::InvalidArgument, "{bad:?}");

    // A job already running when the first webhook is created: its start
    // came before any webhook (the leader passed over those events without
    // reading them), so it is not announced later as a start, and its end
    // is.
    let scene = example_scene(dir.path())?;
    let mut client = Client::connect(&farm).await?;
    // As long as the main job: it must still run when the webhooks exist.
    let early = client
        .submit_blender(&scene, &format!("1-{FRAMES}"), FRAMES as u32)
        .await?;
    client.wait_running(&early.id).await?;
    wait_until_passed_over(&farm, &early.id).await?;

    let steady = Receiver::start(Vec::new()).await?;
    let flaky = Receiver::start(vec![500, 500, 500]).await?;
    let dead = Receiver::start(vec![503; 10_000]).await?;
    let steady_hook = hooks
        .create_webhook(pb::CreateWebhookRequest {
            url: steady.url("localhost"),
            events: Vec::new(),
            farm_wide: true,
        })
        .await?
        .into_inner();
    let flaky_hook = hooks
        .create_webhook(pb::CreateWebhookRequest {
            url: flaky.url("localhost"),
            events: Vec::new(),
            farm_wide: false,
        })
        .await?
        .into_inner();
    let dead_hook = hooks
        .create_webhook(pb::CreateWebhookRequest {
            url: dead.url("localhost"),
            events: vec![pb::WebhookEvent::JobSubmitted as i32],
            farm_wide: false,
        })
        .await?
        .into_inner()
        .webhook
        .context("a webhook")?;
    assert!(steady_hook.secret.starts_with("whsec_"));
    let listed = hooks
        .list_webhooks(pb::ListWebhooksRequest::default())
        .await?
        .into_inner();
    assert_eq!(listed.webhooks.len(), 3, "{listed:?}");

    let job = client
        .submit_blender(&scene, &format!("1-{FRAMES}"), FRAMES as u32)
        .await?;
    client.wait_running(&job.id).await?;
    let leader = kiln_tests::leading_scheduler(&farm).await?;
    farm.schedulers_mut()[leader].kill().await?;
    println!(
        "killed the leading scheduler while job {} was rendering",
        job.id
    );
    let done = client.wait_until_finished(&job.id).await?;
    assert_eq!(state_of(&done), pb::JobState::Succeeded, "{done:?}");

    let expected: BTreeSet<&str> = ["job.submitted", "job.started", "job.succeeded"].into();
    for (receiver, secret, name) in [
        (&steady, &steady_hook.secret, "steady"),
        (&flaky, &flaky_hook.secret, "flaky"),
    ] {
        wait_for(receiver, name, |got| {
            let types: BTreeSet<String> = delivered_types(got, &job.id).into_values().collect();
            expected.iter().all(|t| types.contains(*t))
        })
        .await?;
        // Let any late repeat arrive before counting.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let got = receiver.received();
        for r in &got {
            assert!(signed_with(secret, r), "{name}: a bad signature on {r:?}");
        }
        let types = delivered_types(&got, &job.id);
        let mut kinds: Vec<&str> = types.values().map(String::as_str).collect();
        kinds.sort_unstable();
        assert_eq!(
            kinds,
            ["job.started", "job.submitted", "job.succeeded"],
            "{name}: each event once by id: {types:?}"
        );
        println!(
            "{name}: {} requests for {} deliveries",
            got.len(),
            types.len()
        );
    }
    let early_done = client.wait_until_finished(&early.id).await?;
    assert_eq!(
        state_of(&early_done),
        pb::JobState::Succeeded,
        "{early_done:?}"
    );
    wait_for(&steady, "the early job's end", |got| {
        delivered_types(got, &early.id)
            .values()
            .any(|t| t == "job.succeeded")
    })
    .await?;
    let early_kinds: Vec<String> = delivered_types(&steady.received(), &early.id)
        .into_values()
        .collect();
    assert_eq!(
        early_kinds,
        ["job.succeeded"],
        "a job running before the first webhook: its end only"
    );
    let failed_first: usize = flaky.received().iter().filter(|r| r.status == 500).count();
    assert_eq!(failed_first, 3, "the flaky receiver failed three times");

    // The delivery log tells the same story.
    let log = hooks
        .list_deliveries(pb::ListDeliveriesRequest {
            webhook_id: flaky_hook.webhook.as_ref().context("a webhook")?.id.clone(),
            ..Default::default()
        })
        .await?
        .into_inner();
    // The early job's end goes to this webhook too; count the main job's.
    let mains: Vec<&pb::Delivery> = log
        .deliveries
        .iter()
        .filter(|d| d.job_id == job.id)
        .collect();
    assert_eq!(mains.len(), 3, "{log:?}");
    assert!(
        mains
            .iter()
            .all(|d| d.state() == pb::DeliveryState::Delivered),
        "{log:?}"
    );
    // A failed attempt whose record died with the killed leader is not
    // counted, so only "some delivery needed retries" is certain.
    assert!(
        log.deliveries.iter().any(|d| d.attempts > 1),
        "retries are logged: {log:?}"
    );

    // The receiver that always fails got its webhook paused after 4 failed
    // attempts in a row; its delivery waits, and a resume sends it again.
    let deadline = Instant::now() + PATIENCE;
    let paused = loop {
        let listed = hooks
            .list_webhooks(pb::ListWebhooksRequest::default())
            .await?
            .into_inner();
        let hook = listed
            .webhooks
            .into_iter()
            .find(|h| h.id == dead_hook.id)
            .context("the dead receiver's webhook is listed")?;
        if hook.paused {
            break hook;
        }
        if Instant::now() > deadline {
            bail!("the failing webhook was never paused: {hook:?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(paused.failure_streak >= 4, "{paused:?}");
    let tried = dead.received().len();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        dead.received().len() <= tried + 1,
        "a paused webhook is not called"
    );
    let log = hooks
        .list_deliveries(pb::ListDeliveriesRequest {
            webhook_id: dead_hook.id.clone(),
            ..Default::default()
        })
        .await?
        .into_inner();
    assert_eq!(log.deliveries.len(), 1, "submitted only: {log:?}");
    assert_eq!(
        log.deliveries[0].state(),
        pb::DeliveryState::Pending,
        "{log:?}"
    );
    assert!(log.deliveries[0].last_error.contains("503"), "{log:?}");
    let resumed = hooks
        .resume_webhook(pb::ResumeWebhookRequest {
            webhook_id: dead_hook.id.clone(),
        })
        .await?
        .into_inner();
    assert!(
        !resumed.paused && resumed.failure_streak == 0,
        "{resumed:?}"
    );
    let before = dead.received().len();
    wait_for(&dead, "an attempt after the resume", |got| {
        got.len() > before
    })
    .await?;
    hooks
        .delete_webhook(pb::DeleteWebhookRequest {
            webhook_id: dead_hook.id.clone(),
        })
        .await?;

    // Another user sees none of this, and may not register farm-wide.
    let bob = kiln_tests::create_token(&farm, "bob", pb::Role::Submitter, 0).await?;
    let mut bobs = webhooks_as(&farm, &bob).await?;
    let seen = bobs
        .list_webhooks(pb::ListWebhooksRequest::default())
        .await?
        .into_inner();
    assert!(seen.webhooks.is_empty(), "{seen:?}");
    let hidden = bobs
        .list_deliveries(pb::ListDeliveriesRequest {
            webhook_id: steady_hook
                .webhook
                .as_ref()
                .context("a webhook")?
                .id
                .clone(),
            ..Default::default()
        })
        .await
        .expect_err("another user's webhook");
    assert_eq!(hidden.code(), tonic::Code::NotFound, "{hidden:?}");
    let denied = bobs
        .create_webhook(pb::CreateWebhookRequest {
            url: steady.url("localhost"),
            events: Vec::new(),
            farm_wide: true,
        })
        .await
        .expect_err("farm-wide is for admins");
    assert_eq!(denied.code(), tonic::Code::PermissionDenied, "{denied:?}");

    // REST: the same API, with problem documents for bad input.
    let (base, token) = (farm.gateway_http_url(), farm.admin_token().to_owned());
    let hook_id = flaky_hook.webhook.as_ref().context("a webhook")?.id.clone();
    let (bad, listed, deliveries) = tokio::task::spawn_blocking(move || -> Result<_> {
        let bad = kiln_tests::rest_call(
            "POST",
            &format!("{base}/v1/webhooks"),
            Some(&token),
            Some(&serde_json::json!({"url": "http://[::1]:9/"})),
        )?;
        let listed =
            kiln_tests::rest_call("GET", &format!("{base}/v1/webhooks"), Some(&token), None)?;
        let deliveries = kiln_tests::rest_call(
            "GET",
            &format!("{base}/v1/webhooks/{hook_id}/deliveries?pageSize=2"),
            Some(&token),
            None,
        )?;
        Ok((bad, listed, deliveries))
    })
    .await??;
    assert!(
        matches!(bad.0, 400 | 409) && bad.1["detail"].as_str().unwrap_or("").contains("SSRF"),
        "{bad:?}"
    );
    assert_eq!(listed.0, 200, "{listed:?}");
    assert_eq!(
        listed.1["webhooks"].as_array().map(Vec::len),
        Some(2),
        "{listed:?}"
    );
    assert_eq!(deliveries.0, 200, "{deliveries:?}");
    assert_eq!(
        deliveries.1["deliveries"].as_array().map(Vec::len),
        Some(2),
        "{deliveries:?}"
    );
    assert!(
        deliveries.1["nextPageToken"]
            .as_str()
            .is_some_and(|t| !t.is_empty()),
        "{deliveries:?}"
    );
    farm.shutdown().await?;
    Ok(())
}
