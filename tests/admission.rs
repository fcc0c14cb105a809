//! Admission control on a real farm: one worker saturated by alice's clips,
//! a low bound on the estimated queue wait. Alice's next job is delayed
//! (held, with the reason on the job) or refused (RESOURCE_EXHAUSTED with a
//! retry-after and the reason), as the farm's policy says; bob's job is
//! accepted; no job is lost. Real scheduler, gateway, Postgres, etcd, and a
//! worker running ffmpeg.

use anyhow::{Result, bail, ensure};
use kiln_proto::v1 as pb;
use kiln_tests::{Client, clips_request, create_token, start_farm_with, state_of, submitter};

const SOURCE: &str = "color=c=blue:s=32x32";
/// Seconds of queued work above which an over-share owner is held back:
/// alice's queued tasks count 60 s each until one has finished.
const BOUND: &str = "30";

async fn submit(client: &mut Client, count: u32) -> Result<pb::Job, tonic::Status> {
    // Ten seconds a task: no task finishes (which would shorten the
    // estimate) while the test submits.
    let request = clips_request(count, 10, SOURCE, false);
    Ok(client.jobs.submit_job(request).await?.into_inner())
}

fn template_of(request: &pb::SubmitJobRequest) -> String {
    match &request.template {
        Some(pb::submit_job_request::Template::TemplateDocument(doc)) => doc.clone(),
        _ => String::new(),
    }
}

/// Waits until every job succeeded, each asked by its owner's client; each
/// is still there to be asked.
async fn all_succeed(jobs: &mut [(&mut Client, &str)]) -> Result<()> {
    for (client, id) in jobs {
        let job = client.wait_until_finished(id).await?;
        ensure!(
            state_of(&job) == pb::JobState::Succeeded,
            "job {id} did not succeed: {job:?}"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn an_over_share_owner_is_delayed_with_the_reason_and_nothing_is_lost() -> Result<()> {
    let (mut farm, _dir) =
        start_farm_with(1, false, &[("KILN_ADMISSION_MAX_QUEUE_WAIT", BOUND)]).await?;
    let mut alice = submitter(&farm, "alice").await?;
    let mut bob = submitter(&farm, "bob").await?;

    let first = submit(&mut alice, 6).await?;
    ensure!(
        first.held_reason.is_empty(),
        "an empty farm admits: {first:?}"
    );
    let bobs = submit(&mut bob, 1).await?;
    ensure!(
        bobs.held_reason.is_empty(),
        "bob has nothing outstanding, so he is accepted: {bobs:?}"
    );
    let second = submit(&mut alice, 2).await?;
    println!("alice's second job: {:?}", second.held_reason);
    ensure!(
        second.held_reason.contains("admission control")
            && second.held_reason.contains("alice")
            && second.held_reason.contains("queue wait for ffmpeg"),
        "alice is over her share of a saturated farm: {second:?}"
    );
    // The reason is on the job for anyone who asks, while it is held.
    let asked = alice.job(&second.id).await?;
    ensure!(
        asked.held_reason == second.held_reason,
        "GetJob shows the reason: {asked:?}"
    );

    all_succeed(&mut [(&mut alice, &first.id), (&mut bob, &bobs.id)]).await?;
    all_succeed(&mut [(&mut alice, &second.id)]).await?;
    let second = alice.job(&second.id).await?;
    ensure!(
        second.held_reason.is_empty(),
        "the hold was lifted: {second:?}"
    );
    farm.shutdown().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn the_refuse_policy_refuses_an_over_share_owner_with_retry_after() -> Result<()> {
    let (mut farm, _dir) = start_farm_with(
        1,
        false,
        &[
            ("KILN_ADMISSION_MAX_QUEUE_WAIT", BOUND),
            ("KILN_ADMISSION_POLICY", "refuse"),
        ],
    )
    .await?;
    let alice_secret = create_token(&farm, "alice", pb::Role::Submitter, 0).await?;
    let mut alice = Client::connect_as(&farm, &alice_secret).await?;
    let mut bob = submitter(&farm, "bob").await?;

    let first = submit(&mut alice, 6).await?;
    let bobs = submit(&mut bob, 1).await?;
    let before = alice
        .jobs
        .list_jobs(pb::ListJobsRequest::default())
        .await?
        .into_inner()
        .jobs
        .len();
    let status = match submit(&mut alice, 2).await {
        Ok(job) => bail!("alice's job was accepted: {job:?}"),
        Err(status) => status,
    };
    println!("refused: {status:?}");
    ensure!(
        status.code() == tonic::Code::ResourceExhausted,
        "expected RESOURCE_EXHAUSTED: {status:?}"
    );
    ensure!(
        status.message().contains("queue wait for ffmpeg") && status.message().contains("alice"),
        "the refusal says why: {status:?}"
    );
    let retry_after: u64 = status
        .metadata()
        .get(kiln_proto::metadata::RETRY_AFTER)
        .and_then(|v| v.to_str().ok()?.parse().ok())
        .unwrap_or(0);
    ensure!(retry_after >= 1, "a retry-after in seconds: {status:?}");
    let after = alice
        .jobs
        .list_jobs(pb::ListJobsRequest::default())
        .await?
        .into_inner()
        .jobs
        .len();
    ensure!(after == before, "a refused job leaves nothing behind");

    // REST says the same: 429 with Retry-After and a JSON body saying why.
    let url = format!("{}/v1/jobs", farm.gateway_http_url());
    let body = serde_json::json!({
        "templateDocument": template_of(&clips_request(2, 10, SOURCE, false)),
        "parameters": {"Count": "2", "Seconds": "10", "Source": SOURCE},
    });
    let auth = format!("Bearer {alice_secret}");
    let (code, retry_after, text) = tokio::task::spawn_blocking(move || {
        match ureq::post(&url).set("authorization", &auth).send_json(body) {
            Ok(response) => (response.status(), None, response.into_string().ok()),
            Err(ureq::Error::Status(code, response)) => (
                code,
                response.header("retry-after").map(str::to_owned),
                response.into_string().ok(),
            ),
            Err(other) => (0, None, Some(other.to_string())),
        }
    })
    .await?;
    println!("REST: {code} retry-after {retry_after:?} {text:?}");
    ensure!(code == 429, "REST refuses with 429: {code} {text:?}");
    ensure!(
        retry_after.is_some_and(|s| s.parse::<u64>().is_ok_and(|s| s >= 1)),
        "REST gives a Retry-After"
    );
    ensure!(
        text.is_some_and(|t| t.contains("queue wait for ffmpeg")),
        "REST says why"
    );

    all_succeed(&mut [(&mut alice, &first.id), (&mut bob, &bobs.id)]).await?;
    farm.shutdown().await?;
    Ok(())
}
