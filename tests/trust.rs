//! The farm's trust boundary, attacked (issue 16): rogue workers, callers
//! that reach the internal services directly, tenants who try to take more
//! than their share, and viewers who try to push other tenants' live logs
//! out. Each attack is refused with a clear status, and nothing of the
//! other tenant's leaks or changes. Hand-driven workers (`hand_worker.rs`)
//! play the workers, honest and rogue, so each report is one the test chose.

use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use futures::StreamExt;
use kiln_asset_client::CallCredentials;
use kiln_localfarm::{Farm, locate_binary};
use kiln_proto::v1 as pb;
use kiln_proto::v1::asset_references_client::AssetReferencesClient;
use kiln_proto::v1::asset_service_client::AssetServiceClient;
use kiln_proto::v1::job_service_client::JobServiceClient;
use kiln_proto::v1::worker_message::Message as ToScheduler;
use kiln_proto::v1::worker_service_client::WorkerServiceClient;
use kiln_tests::hand_worker::{HandWorker, noop_request};
use kiln_tests::{
    Client, as_owner, create_token, rest_call, scheduler_jobs, start_farm_with, status_of,
};
use tokio::time::Instant;
use tonic::Code;
use tonic::transport::Channel;

/// How long a condition the farm should reach quickly may take.
const PATIENCE: Duration = Duration::from_secs(60);

// Item 2: workers authenticate, and count only for what they hold.

#[tokio::test(flavor = "multi_thread")]
async fn a_rogue_worker_neither_takes_a_live_id_nor_reports_for_attempts_it_does_not_hold()
-> Result<()> {
    let (mut farm, _dir) = start_farm_with(0, false, &[]).await?;
    let result = rogue_worker(&farm).await;
    farm.shutdown().await?;
    result
}

async fn rogue_worker(farm: &Farm) -> Result<()> {
    // Without the join token there is no session at all.
    assert_eq!(
        session_without_join_token(farm).await?,
        Code::Unauthenticated
    );

    let mut alice = Client::connect_as(farm, &user(farm, "alice").await?).await?;
    let mut bob = Client::connect_as(farm, &user(farm, "bob").await?).await?;
    let job = alice.jobs.submit_job(noop_request(1)).await?.into_inner();
    let mut victim = HandWorker::join(farm, "victim", &[]).await?;
    let task = victim.assignment().await?;
    victim.started(&task).await?;
    wait_for_task(&mut alice, &job.id, pb::TaskState::Running).await?;

    // Another process under the victim's live id is refused.
    let taken = HandWorker::try_join(farm, "victim", &[], "another-process-key-0001").await;
    let err = taken
        .err()
        .context("a second session under a live worker id was accepted")?;
    let status = status_of(&err).with_context(|| format!("no gRPC status in {err:#}"))?;
    assert_eq!(status.code(), Code::AlreadyExists, "{status:?}");

    let mut log = alice
        .jobs
        .watch_task_log(pb::WatchTaskLogRequest {
            job_id: job.id.clone(),
            task_id: task.task_id.clone(),
        })
        .await?
        .into_inner();

    // A worker with its own id and the join token reports for the victim's
    // attempt: progress, an output, log lines and a success.
    let bobs = bob.jobs.submit_job(noop_request(1)).await?.into_inner();
    let mut rogue = HandWorker::join(farm, "rogue", &[]).await?;
    let own = rogue.assignment().await?;
    ensure!(own.job_id == bobs.id, "the rogue got {own:?}");
    let forged = output(&task, "frames/forged.png", 'f');
    rogue
        .send(ToScheduler::Progress(pb::TaskProgressReport {
            task_id: task.task_id.clone(),
            attempt: task.attempt,
            fraction: 0.99,
            frame: Some(1),
            status: "forged status".into(),
        }))
        .await?;
    rogue.output_stored(&forged).await?;
    rogue
        .send(ToScheduler::Log(log_lines(&task, "forged line")))
        .await?;
    rogue.succeeded(&task, vec![forged.clone()]).await?;
    // Its session's messages are handled in order: once its own task has
    // succeeded, every forged report before it has been handled.
    rogue.started(&own).await?;
    rogue.succeeded(&own, Vec::new()).await?;
    let bobs = bob.wait_until_finished(&bobs.id).await?;
    assert_eq!(bobs.state(), pb::JobState::Succeeded);

    let tasks = alice.tasks(&job.id).await?;
    assert_eq!(
        tasks.first().map(pb::Task::state),
        Some(pb::TaskState::Running),
        "a forged success counted: {tasks:?}"
    );
    let listed = alice.all_outputs(&job.id).await?;
    assert!(listed.is_empty(), "a forged output is listed: {listed:?}");

    // The victim's own reports count.
    let real = output(&task, "frames/real.png", 'a');
    victim
        .send(ToScheduler::Log(log_lines(&task, "victim line")))
        .await?;
    victim.output_stored(&real).await?;
    victim.succeeded(&task, vec![real.clone()]).await?;
    let done = alice.wait_until_finished(&job.id).await?;
    assert_eq!(done.state(), pb::JobState::Succeeded);
    let paths: Vec<String> = alice
        .all_outputs(&job.id)
        .await?
        .into_iter()
        .map(|o| o.path)
        .collect();
    assert_eq!(paths, std::slice::from_ref(&real.path));
    // The log watch ends with the task: the victim's line, never the rogue's.
    let mut lines = Vec::new();
    while let Some(batch) = tokio::time::timeout(PATIENCE, log.next())
        .await
        .context("the log watch never ended")?
    {
        lines.extend(batch?.lines);
    }
    assert!(lines.iter().any(|l| l == "victim line"), "{lines:?}");
    assert!(!lines.iter().any(|l| l.contains("forged")), "{lines:?}");
    Ok(())
}

#[tokio::test]
async fn internal_services_without_credentials_refuse_to_start() -> Result<()> {
    let no_etcd = "http://127.0.0.1:9";
    for (binary, args) in [
        (
            "kiln-scheduler",
            vec!["--database-url", "postgres://nowhere/kiln"],
        ),
        ("kiln-assets", vec![]),
    ] {
        let refused = start_without(binary, &args, no_etcd, &[])?;
        ensure!(
            refused.contains("--service-token"),
            "{binary} without a service token: {refused}"
        );
        let refused = start_without(
            binary,
            &args,
            no_etcd,
            &[("KILN_SERVICE_TOKEN", "a-service-token-of-some-length")],
        )?;
        ensure!(
            refused.contains("workers cannot authenticate"),
            "{binary} without a join token or client CA: {refused}"
        );
    }
    Ok(())
}

/// Starts `binary` with only `env` of Kiln's settings; it must exit at
/// once, unsuccessfully. Returns what it printed.
fn start_without(binary: &str, args: &[&str], etcd: &str, env: &[(&str, &str)]) -> Result<String> {
    let output = std::process::Command::new(locate_binary(binary)?)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .envs(env.iter().copied())
        .args(args)
        .args(["--etcd", etcd])
        .output()?;
    ensure!(
        !output.status.success(),
        "{binary} started without credentials"
    );
    Ok(format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    ))
}

// Item 3: the internal services trust `kiln-owner` only from farm services.

#[tokio::test(flavor = "multi_thread")]
async fn internal_services_trust_the_owner_a_call_names_only_from_farm_services() -> Result<()> {
    let (mut farm, _dir) = start_farm_with(0, false, &[]).await?;
    let result = direct_calls(&farm).await;
    farm.shutdown().await?;
    result
}

async fn direct_calls(farm: &Farm) -> Result<()> {
    let mut alice = Client::connect_as(farm, &user(farm, "alice").await?).await?;
    let job = alice.jobs.submit_job(noop_request(1)).await?.into_inner();
    let scheduler = channel_to(farm, kiln_discovery::service::SCHEDULER).await?;
    let list = |owner: &str| {
        as_owner(
            owner,
            pb::ListJobsRequest {
                owner: String::new(),
                ..Default::default()
            },
        )
    };

    // The attack: ListJobs straight to the scheduler, naming any owner.
    let mut anonymous = JobServiceClient::new(scheduler.clone());
    for owner in ["x", "alice"] {
        let refused = anonymous.list_jobs(list(owner)?).await;
        assert_eq!(code(refused), Code::Unauthenticated, "ListJobs as {owner}");
    }
    let submitted = anonymous
        .submit_job(as_owner("alice", noop_request(1))?)
        .await;
    assert_eq!(code(submitted), Code::Unauthenticated);
    // A worker's credential is no service's.
    let mut as_worker = JobServiceClient::with_interceptor(
        scheduler.clone(),
        CallCredentials::worker(farm.join_token())?,
    );
    assert_eq!(
        code(as_worker.list_jobs(list("x")?).await),
        Code::PermissionDenied
    );
    let mut guessing = JobServiceClient::with_interceptor(
        scheduler.clone(),
        CallCredentials::service("a-guessed-service-token")?,
    );
    assert_eq!(
        code(guessing.list_jobs(list("x")?).await),
        Code::Unauthenticated
    );
    // The collector's reference list, and the assets service, likewise.
    let references = AssetReferencesClient::new(scheduler)
        .list_referenced_digests(pb::ListReferencedDigestsRequest::default())
        .await;
    assert_eq!(code(references), Code::Unauthenticated);
    let assets = channel_to(farm, kiln_discovery::service::ASSETS).await?;
    let find = AssetServiceClient::new(assets)
        .find_missing(as_owner(
            "alice",
            pb::FindMissingRequest {
                digests: vec!["a".repeat(64)],
            },
        )?)
        .await;
    assert_eq!(code(find), Code::Unauthenticated);

    // Nothing changed: alice, through the gateway, sees her one job, and
    // the scheduler answers the gateway (the service token) as before.
    let mut as_gateway = scheduler_jobs(farm).await?;
    let listed = as_gateway
        .list_jobs(list("alice")?)
        .await?
        .into_inner()
        .jobs;
    ensure!(!listed.is_empty(), "the service token is refused");
    let own = alice
        .jobs
        .list_jobs(pb::ListJobsRequest::default())
        .await?
        .into_inner()
        .jobs;
    let ids: Vec<&str> = own.iter().map(|j| j.id.as_str()).collect();
    assert_eq!(ids, [job.id.as_str()]);
    Ok(())
}

// Item 4: fair use, over two gateways.

#[tokio::test(flavor = "multi_thread")]
async fn quotas_refuse_clearly_naming_the_quota_over_two_gateways() -> Result<()> {
    let env = [
        ("KILN_MAX_UNFINISHED_JOBS_PER_OWNER", "3"),
        ("KILN_MAX_QUEUED_TASKS_PER_OWNER", "5"),
        ("KILN_MAX_RUNNING_PER_OWNER", "1"),
        ("KILN_MAX_STREAMS_PER_OWNER", "3"),
        ("KILN_MAX_JOB_NAME_BYTES", "32"),
        ("KILN_MAX_STREAMS_PER_TOKEN", "2"),
        ("KILN_MAX_TOKEN_LOOKUPS_PER_PEER", "1"),
        ("KILN_TOKEN_LOOKUP_BURST", "10"),
    ];
    let dir = tempfile::Builder::new().prefix("kiln-e2e-").tempdir()?;
    let mut builder = Farm::builder(dir.path().join("farm"))
        .workers(0)
        .gateways(2);
    for (key, value) in env {
        builder = builder.env(key, value);
    }
    let mut farm = builder.start().await?;
    let result = quotas(&farm).await;
    farm.shutdown().await?;
    result
}

async fn quotas(farm: &Farm) -> Result<()> {
    let [first, second] = <[String; 2]>::try_from(farm.gateway_urls())
        .map_err(|urls| anyhow::anyhow!("two gateways, found {urls:?}"))?;
    let rest = farm.gateway_http_urls();
    let alice_token = user(farm, "alice").await?;
    let mut alice = Client::connect_url(&first, &alice_token).await?;
    let mut alice_too = Client::connect_url(&second, &alice_token).await?;
    let mut bob = Client::connect_url(&second, &user(farm, "bob").await?).await?;

    // Queued tasks: 3 + 3 > 5, over either gateway, gRPC and REST alike.
    let held = alice.jobs.submit_job(noop_request(3)).await?.into_inner();
    let refused = alice_too.jobs.submit_job(noop_request(3)).await;
    expect_quota(
        refused,
        Code::ResourceExhausted,
        "max-queued-tasks-per-owner",
    )?;
    let body = serde_json::to_value(noop_request(3))?;
    let (status, answer) = blocking_rest(
        "POST",
        &format!("{}/v1/jobs", rest[1]),
        &alice_token,
        Some(body),
    )
    .await?;
    assert_eq!(status, 429, "{answer}");
    let message = answer["error"]["message"].as_str().unwrap_or_default();
    ensure!(
        message.starts_with("quota max-queued-tasks-per-owner: alice has 3"),
        "{answer}"
    );
    // Another tenant is not held back.
    let bobs = bob.jobs.submit_job(noop_request(2)).await?.into_inner();
    // Sizes: a name past the limit.
    let mut long = noop_request(1);
    long.name = "n".repeat(33);
    expect_quota(
        alice.jobs.submit_job(long).await,
        Code::ResourceExhausted,
        "max-job-name-bytes",
    )?;

    // Priorities above high: only where an admin granted them.
    let mut critical = noop_request(1);
    critical.priority_level = pb::PriorityLevel::Critical as i32;
    expect_quota(
        alice.jobs.submit_job(critical.clone()).await,
        Code::PermissionDenied,
        "max-priority",
    )?;
    let raise = pb::SetJobPriorityRequest {
        job_id: held.id.clone(),
        priority: 100,
        ..Default::default()
    };
    expect_quota(
        alice.jobs.set_job_priority(raise).await,
        Code::PermissionDenied,
        "max-priority",
    )?;
    let granted = create_token(farm, "render-bot", pb::Role::Submitter, 100).await?;
    let mut bot = Client::connect_url(&first, &granted).await?;
    let urgent = bot.jobs.submit_job(critical).await?.into_inner();
    assert_eq!(urgent.priority, 100);
    bot.jobs
        .cancel_job(pb::CancelJobRequest { job_id: urgent.id })
        .await?;

    // The share cap: alice has one task running however many workers are free.
    let mut first_worker = HandWorker::join(farm, "w1", &[]).await?;
    let alices = first_worker.assignment().await?;
    ensure!(alices.job_id == held.id, "w1 got {alices:?}");
    let mut second_worker = HandWorker::join(farm, "w2", &[]).await?;
    let next = second_worker.assignment().await?;
    ensure!(
        next.job_id == bobs.id,
        "a second task of alice ran past her share cap: {next:?}"
    );
    let waiting = alice.tasks(&held.id).await?;
    let pending = waiting
        .iter()
        .filter(|t| t.state() == pb::TaskState::Pending)
        .count();
    assert_eq!(pending, 2, "{waiting:?}");

    // Streams: two per token on each gateway, three per owner on all of them.
    let watch = |client: &mut Client| {
        let mut jobs = client.jobs.clone();
        let request = pb::WatchJobRequest {
            job_id: held.id.clone(),
            after_seq: None,
        };
        async move { jobs.watch_job(request).await }
    };
    let mut open = vec![
        watch(&mut alice).await?.into_inner(),
        watch(&mut alice).await?.into_inner(),
    ];
    expect_quota(
        watch(&mut alice).await,
        Code::ResourceExhausted,
        "max-streams-per-token",
    )?;
    open.push(watch(&mut alice_too).await?.into_inner());
    expect_quota(
        watch(&mut alice_too).await,
        Code::ResourceExhausted,
        "max-streams-per-owner",
    )?;
    // Bob's streams are his own.
    let bobs_watch = watch_of(&mut bob, &bobs.id).await?;
    // A stream that ends gives its place back.
    drop(open.pop());
    let again = eventually(|| {
        let mut jobs = alice_too.jobs.clone();
        let request = pb::WatchJobRequest {
            job_id: held.id.clone(),
            after_seq: None,
        };
        async move { jobs.watch_job(request).await.map_err(anyhow::Error::from) }
    })
    .await?;
    drop((again, bobs_watch, open));

    // Unknown tokens: past the address's allowance, refused before any lookup.
    let mut codes = Vec::new();
    for n in 0..30 {
        let (status, answer) = blocking_rest(
            "GET",
            &format!("{}/v1/jobs", rest[0]),
            &format!("kiln_guess{n}"),
            None,
        )
        .await?;
        codes.push((
            status,
            answer["error"]["code"].as_str().unwrap_or("").to_owned(),
        ));
    }
    ensure!(
        codes.iter().any(|(status, _)| *status == 401),
        "the first guesses are checked: {codes:?}"
    );
    let (status, code) = codes.last().cloned().unwrap_or_default();
    assert_eq!(
        (status, code.as_str()),
        (429, "resource_exhausted"),
        "{codes:?}"
    );
    Ok(())
}

// Item 6: a viewer cannot push other tenants' live logs out.

#[tokio::test(flavor = "multi_thread")]
async fn watching_random_task_ids_pushes_no_other_tenants_log_out() -> Result<()> {
    let (mut farm, _dir) = start_farm_with(0, false, &[]).await?;
    let result = log_eviction(&farm).await;
    farm.shutdown().await?;
    result
}

async fn log_eviction(farm: &Farm) -> Result<()> {
    let mut alice = Client::connect_as(farm, &user(farm, "alice").await?).await?;
    let mut mallory = Client::connect_as(farm, &user(farm, "mallory").await?).await?;
    let job = alice.jobs.submit_job(noop_request(1)).await?.into_inner();
    let mut worker = HandWorker::join(farm, "w", &[]).await?;
    let task = worker.assignment().await?;
    worker.started(&task).await?;
    worker
        .send(ToScheduler::Log(log_lines(&task, "alice's frame 1")))
        .await?;
    // Mallory's own job, whose random "tasks" she watches.
    let own = mallory.jobs.submit_job(noop_request(1)).await?.into_inner();
    let refused = mallory
        .jobs
        .watch_task_log(pb::WatchTaskLogRequest {
            job_id: own.id.clone(),
            task_id: uuid_like(0),
        })
        .await;
    assert_eq!(code(refused), Code::NotFound);
    // More random ids than the scheduler keeps logs for, as the gateway
    // would forward them (the gateway's rate limit only slows this down).
    let as_gateway = scheduler_jobs(farm).await?;
    let attempts = futures::stream::iter(1..=10_050u64)
        .map(|n| {
            let mut jobs = as_gateway.clone();
            let request = as_owner(
                "mallory",
                pb::WatchTaskLogRequest {
                    job_id: own.id.clone(),
                    task_id: uuid_like(n),
                },
            );
            async move {
                match request {
                    Ok(request) => code(jobs.watch_task_log(request).await),
                    Err(_) => Code::Internal,
                }
            }
        })
        .buffer_unordered(16)
        .collect::<Vec<Code>>()
        .await;
    ensure!(
        attempts.iter().all(|c| *c == Code::NotFound),
        "a random task id was watched: {:?}",
        attempts.iter().find(|c| **c != Code::NotFound)
    );
    // Alice's late watcher still gets the lines her task printed.
    let mut log = alice
        .jobs
        .watch_task_log(pb::WatchTaskLogRequest {
            job_id: job.id.clone(),
            task_id: task.task_id.clone(),
        })
        .await?
        .into_inner();
    let first = tokio::time::timeout(PATIENCE, log.next())
        .await
        .context("no lines")?
        .context("the watch ended")??;
    assert_eq!(first.lines, ["alice's frame 1"]);
    Ok(())
}

// Helpers.

async fn user(farm: &Farm, name: &str) -> Result<String> {
    create_token(farm, name, pb::Role::Submitter, 0).await
}

fn code<T>(result: Result<T, tonic::Status>) -> Code {
    match result {
        Ok(_) => Code::Ok,
        Err(status) => status.code(),
    }
}

/// The call was refused with `code`, and its message names `quota`.
fn expect_quota<T: std::fmt::Debug>(
    result: Result<T, tonic::Status>,
    code: Code,
    quota: &str,
) -> Result<()> {
    match result {
        Ok(answer) => bail!("quota {quota} let through: {answer:?}"),
        Err(status) => {
            ensure!(status.code() == code, "{quota}: {status:?}");
            ensure!(
                status.message().starts_with(&format!("quota {quota}: ")),
                "the refusal does not name {quota}: {status:?}"
            );
            Ok(())
        }
    }
}

async fn blocking_rest(
    method: &'static str,
    url: &str,
    token: &str,
    body: Option<serde_json::Value>,
) -> Result<(u16, serde_json::Value)> {
    let (url, token) = (url.to_owned(), token.to_owned());
    tokio::task::spawn_blocking(move || rest_call(method, &url, Some(&token), body.as_ref()))
        .await?
}

async fn watch_of(client: &mut Client, job_id: &str) -> Result<tonic::Streaming<pb::JobEvent>> {
    let request = pb::WatchJobRequest {
        job_id: job_id.to_owned(),
        after_seq: None,
    };
    Ok(client.jobs.watch_job(request).await?.into_inner())
}

/// Retries `attempt` until it succeeds or [`PATIENCE`] runs out.
async fn eventually<T, F, Fut>(mut attempt: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T>>,
{
    let deadline = Instant::now() + PATIENCE;
    loop {
        match attempt().await {
            Ok(value) => return Ok(value),
            Err(err) if Instant::now() > deadline => return Err(err),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

async fn wait_for_task(client: &mut Client, job_id: &str, state: pb::TaskState) -> Result<()> {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let tasks = client.tasks(job_id).await?;
        if tasks.iter().all(|t| t.state() == state) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("tasks of {job_id} never all {state:?}: {tasks:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn channel_to(farm: &Farm, service: &str) -> Result<Channel> {
    let endpoint = farm.discovery().find_one(service, PATIENCE).await?;
    Ok(Channel::from_shared(endpoint.grpc_uri())?.connect().await?)
}

async fn session_without_join_token(farm: &Farm) -> Result<Code> {
    let channel = channel_to(farm, kiln_discovery::service::SCHEDULER).await?;
    let register = pb::WorkerMessage {
        message: Some(ToScheduler::Register(pb::RegisterWorker {
            worker_id: "intruder".into(),
            instance_key: "intruder-instance-key".into(),
            ..Default::default()
        })),
    };
    let request = tonic::Request::new(futures::stream::iter([register]));
    Ok(code(
        WorkerServiceClient::new(channel).session(request).await,
    ))
}

fn output(task: &pb::TaskAssignment, path: &str, fill: char) -> pb::OutputStored {
    pb::OutputStored {
        task_id: task.task_id.clone(),
        attempt: task.attempt,
        path: path.to_owned(),
        digest: fill.to_string().repeat(64),
        size: 1,
        kind: String::new(),
    }
}

fn log_lines(task: &pb::TaskAssignment, line: &str) -> pb::TaskLogLines {
    pb::TaskLogLines {
        task_id: task.task_id.clone(),
        attempt: task.attempt,
        lines: vec![line.to_owned()],
    }
}

/// A UUID-shaped id no task has.
fn uuid_like(n: u64) -> String {
    format!("00000000-0000-4000-8000-{n:012x}")
}
