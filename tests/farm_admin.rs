//! The farm-management API on a real farm: an admin's actions on workers
//! (and that they survive restarts of the scheduler and of the worker),
//! tags (pools), why tasks wait (each cause named), and listing jobs with
//! filters and AIP-158 page tokens while jobs keep arriving.

use std::collections::HashSet;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use kiln_proto::v1 as pb;
use kiln_tests::{Client, clips_request, create_token, eventually, start_farm, start_farm_with};
use tonic::Code;

const PATIENCE: Duration = Duration::from_secs(60);

async fn worker(client: &mut Client, id: &str) -> Result<pb::Worker> {
    let request = pb::GetWorkerRequest {
        worker_id: id.to_owned(),
    };
    Ok(client.farm.get_worker(request).await?.into_inner())
}

/// GET on the gateway's REST API as the farm's admin.
fn rest_get(farm: &kiln_localfarm::Farm, path: &str) -> Result<serde_json::Value> {
    Ok(ureq::get(&format!("{}{path}", farm.gateway_http_url()))
        .set("authorization", &format!("Bearer {}", farm.admin_token()))
        .call()?
        .into_json()?)
}

fn action(id: &str) -> pb::WorkerActionRequest {
    pb::WorkerActionRequest {
        worker_id: id.to_owned(),
    }
}

fn tagged(mut request: pb::SubmitJobRequest, tags: &[&str]) -> pb::SubmitJobRequest {
    request.tags = tags.iter().map(|t| (*t).to_owned()).collect();
    request
}

async fn waiting(client: &mut Client, job_id: &str) -> Result<pb::ExplainWaitingResponse> {
    let request = pb::ExplainWaitingRequest {
        job_id: job_id.to_owned(),
        task_id: String::new(),
    };
    Ok(client.jobs.explain_waiting(request).await?.into_inner())
}

/// The job's first waiting task's reason of `cause`, once it holds.
async fn reason(client: &mut Client, job_id: &str, cause: pb::WaitCause) -> Result<pb::WaitReason> {
    eventually(&format!("{cause:?} for job {job_id}"), PATIENCE, || {
        let mut client = client.clone();
        let job_id = job_id.to_owned();
        async move {
            let answer = waiting(&mut client, &job_id).await?;
            Ok(answer
                .tasks
                .first()
                .and_then(|t| t.reasons.iter().find(|r| r.cause == cause as i32).cloned()))
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_settings_survive_restarts_and_admins_alone_change_them() -> Result<()> {
    let (mut farm, _dir) = start_farm(1, false).await?;
    let mut admin = Client::connect(&farm).await?;
    let id = kiln_localfarm::worker_id(0);
    eventually("the worker to join", PATIENCE, || {
        let mut admin = admin.clone();
        let id = id.clone();
        async move { Ok(worker(&mut admin, &id).await.ok().filter(|w| w.connected)) }
    })
    .await?;

    // A viewer sees the worker but may not act on it, over gRPC and REST.
    let viewer_token = create_token(&farm, "carol", pb::Role::Viewer, 0).await?;
    let mut viewer = Client::connect_as(&farm, &viewer_token).await?;
    let listed = viewer
        .farm
        .list_workers(pb::ListWorkersRequest::default())
        .await?
        .into_inner();
    ensure!(listed.workers.iter().any(|w| w.id == id), "{listed:?}");
    for refused in [
        viewer.farm.disable_worker(action(&id)).await.map(|_| ()),
        viewer.farm.drain_worker(action(&id)).await.map(|_| ()),
        viewer
            .farm
            .set_worker_tags(pb::SetWorkerTagsRequest {
                worker_id: id.clone(),
                tags: vec!["mine".into()],
            })
            .await
            .map(|_| ()),
    ] {
        ensure!(
            refused
                .as_ref()
                .is_err_and(|s| s.code() == Code::PermissionDenied),
            "a viewer's action was not refused: {refused:?}"
        );
    }
    let rest = ureq::post(&format!(
        "{}/v1/workers/{id}/disable",
        farm.gateway_http_url()
    ))
    .set("authorization", &format!("Bearer {viewer_token}"))
    .call();
    ensure!(
        matches!(rest, Err(ureq::Error::Status(403, _))),
        "REST let a viewer disable a worker: {rest:?}"
    );

    // Tags and disable, then restart the scheduler and the worker.
    admin
        .farm
        .set_worker_tags(pb::SetWorkerTagsRequest {
            worker_id: id.clone(),
            tags: vec!["fx".into(), "linux".into()],
        })
        .await?;
    let disabled = admin.farm.disable_worker(action(&id)).await?.into_inner();
    ensure!(
        disabled.state == pb::WorkerState::Disabled as i32,
        "{disabled:?}"
    );
    farm.scheduler_mut().expect("a scheduler").restart().await?;
    farm.worker_mut(0).expect("a worker").restart().await?;
    let back = eventually("the worker back after both restarts", PATIENCE, || {
        let mut admin = admin.clone();
        let id = id.clone();
        async move { Ok(worker(&mut admin, &id).await.ok().filter(|w| w.connected)) }
    })
    .await?;
    ensure!(back.disabled, "disabled was forgotten: {back:?}");
    ensure!(back.state == pb::WorkerState::Disabled as i32, "{back:?}");
    ensure!(
        back.tags == ["fx", "linux"],
        "tags were forgotten: {back:?}"
    );
    ensure!(back.usage.is_some() || back.connected, "{back:?}");

    // A disabled worker takes nothing, and the job says why.
    let job = admin
        .jobs
        .submit_job(tagged(clips_request(1, 1, "testsrc", false), &["fx"]))
        .await?
        .into_inner();
    let excluded = reason(&mut admin, &job.id, pb::WaitCause::WorkersExcluded).await?;
    ensure!(
        excluded
            .workers
            .iter()
            .any(|w| w.worker_id == id && w.reason == "disabled"),
        "{excluded:?}"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    ensure!(
        admin.job(&job.id).await?.tasks_running == 0,
        "a disabled worker took a task"
    );

    // Enabled, it runs the fx job.
    admin.farm.enable_worker(action(&id)).await?;
    let done = admin.wait_until_finished(&job.id).await?;
    ensure!(done.state == pb::JobState::Succeeded as i32, "{done:?}");
    let tasks = admin.tasks(&job.id).await?;
    ensure!(tasks.iter().all(|t| t.worker_id == id), "{tasks:?}");

    // Draining: it finishes what it runs, takes nothing new, then is disabled.
    let long = admin
        .jobs
        .submit_job(clips_request(3, 3, "testsrc", false))
        .await?
        .into_inner();
    eventually("a task of the long job to run", PATIENCE, || {
        let mut admin = admin.clone();
        let job = long.id.clone();
        async move { Ok((admin.job(&job).await?.tasks_running > 0).then_some(())) }
    })
    .await?;
    let draining = admin.farm.drain_worker(action(&id)).await?.into_inner();
    ensure!(
        draining.state == pb::WorkerState::Draining as i32,
        "{draining:?}"
    );
    let drained = eventually("the drain to end", PATIENCE, || {
        let mut admin = admin.clone();
        let id = id.clone();
        async move {
            let w = worker(&mut admin, &id).await?;
            Ok((w.state == pb::WorkerState::Disabled as i32).then_some(w))
        }
    })
    .await?;
    ensure!(drained.running.is_empty(), "{drained:?}");
    // The worker's state is the scheduler's memory; a job's counts are read
    // from Postgres, which the batch writer reaches a cycle later.
    let after = eventually("the job to show no running task", PATIENCE, || {
        let mut admin = admin.clone();
        let job = long.id.clone();
        async move {
            let job = admin.job(&job).await?;
            Ok((job.tasks_running == 0).then_some(job))
        }
    })
    .await?;
    ensure!(
        after.tasks_succeeded >= 1 && after.tasks_succeeded < 3 && after.tasks_running == 0,
        "the running task should finish and no new one start: {after:?}"
    );
    Ok(())
}

/// A two-step ffmpeg job: `Second` waits for `First`.
fn two_steps() -> pb::SubmitJobRequest {
    let template = r#"specificationVersion: jobtemplate-2023-09
name: Two steps
steps:
  - name: First
    script:
      actions:
        onRun:
          command: ffmpeg
          args: ["-y", "-hide_banner", "-re", "-f", "lavfi", "-i", "testsrc=d=20", "{{Session.WorkingDirectory}}/outputs/first.mp4"]
  - name: Second
    dependencies:
      - dependsOn: First
    script:
      actions:
        onRun:
          command: ffmpeg
          args: ["-y", "-hide_banner", "-f", "lavfi", "-i", "testsrc=d=1", "{{Session.WorkingDirectory}}/outputs/second.mp4"]
"#;
    pb::SubmitJobRequest {
        template: Some(pb::submit_job_request::Template::TemplateDocument(
            template.into(),
        )),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn why_a_task_waits_names_each_cause() -> Result<()> {
    // A failed attempt waits a minute before the next, long enough to see.
    // The worker holds no task queued beyond the one it runs (lookahead 0),
    // so the jobs submitted while it is busy wait in the scheduler's queue.
    let (farm, _dir) = start_farm_with(
        1,
        false,
        &[("KILN_RETRY_BASE_SECONDS", "60"), ("KILN_LOOKAHEAD", "0")],
    )
    .await?;
    let mut client = Client::connect(&farm).await?;
    let failing = client
        .jobs
        .submit_job(clips_request(1, 1, "no-such-filter", false))
        .await?
        .into_inner();
    reason(&mut client, &failing.id, pb::WaitCause::RetryBackoff).await?;

    // The worker is busy with the first step of a two-step job.
    let busy = client.jobs.submit_job(two_steps()).await?.into_inner();
    let steps = reason(&mut client, &busy.id, pb::WaitCause::StepsUnfinished).await?;
    ensure!(steps.steps == ["First"], "{steps:?}");

    let normal = client
        .jobs
        .submit_job(clips_request(1, 1, "testsrc", false))
        .await?
        .into_inner();
    let mut urgent_request = clips_request(1, 1, "testsrc", false);
    urgent_request.priority = 90;
    let urgent = client.jobs.submit_job(urgent_request).await?.into_inner();
    let queued = reason(&mut client, &normal.id, pb::WaitCause::Queued).await?;
    ensure!(
        queued.jobs_ahead_higher_priority == 1 && queued.jobs_ahead == 1,
        "the urgent job is ahead: {queued:?}"
    );
    let first = reason(&mut client, &urgent.id, pb::WaitCause::Queued).await?;
    ensure!(first.jobs_ahead == 0, "{first:?}");
    let place = waiting(&mut client, &normal.id).await?;
    ensure!(
        place.queue_position == 2 && place.queue_length >= 2,
        "{place:?}"
    );

    let gpu = client
        .jobs
        .submit_job(clips_request(1, 1, "testsrc", true))
        .await?
        .into_inner();
    let unmet = reason(&mut client, &gpu.id, pb::WaitCause::NoMatchingWorker).await?;
    ensure!(
        unmet.requirements == ["amount.worker.gpu >= 1"],
        "{unmet:?}"
    );

    let pool = client
        .jobs
        .submit_job(tagged(clips_request(1, 1, "testsrc", false), &["nowhere"]))
        .await?
        .into_inner();
    let excluded = reason(&mut client, &pool.id, pb::WaitCause::WorkersExcluded).await?;
    ensure!(
        excluded.workers.len() == 1 && excluded.workers[0].reason == "missing tags: nowhere",
        "{excluded:?}"
    );

    let mut after_request = clips_request(1, 1, "testsrc", false);
    after_request.depends_on_jobs = vec![busy.id.clone()];
    let after = client.jobs.submit_job(after_request).await?.into_inner();
    let jobs_reason = reason(&mut client, &after.id, pb::WaitCause::JobsUnfinished).await?;
    ensure!(jobs_reason.jobs == [busy.id.clone()], "{jobs_reason:?}");

    let paused = client
        .jobs
        .submit_job(tagged(clips_request(1, 1, "testsrc", false), &["nowhere"]))
        .await?
        .into_inner();
    client
        .jobs
        .pause_job(pb::PauseJobRequest {
            job_id: paused.id.clone(),
        })
        .await?;
    let held = waiting(&mut client, &paused.id).await?;
    let causes: Vec<i32> = held.tasks[0].reasons.iter().map(|r| r.cause).collect();
    ensure!(
        causes
            == [
                pb::WaitCause::Paused as i32,
                pb::WaitCause::WorkersExcluded as i32
            ],
        "paused first, the tag still named: {held:?}"
    );

    // One task explained on its own, over REST as well.
    let task = client.tasks(&pool.id).await?.remove(0);
    let body: serde_json::Value = ureq::get(&format!(
        "{}/v1/jobs/{}/waiting?taskId={}",
        farm.gateway_http_url(),
        pool.id,
        task.id
    ))
    .set("authorization", &format!("Bearer {}", farm.admin_token()))
    .call()?
    .into_json()?;
    ensure!(
        body["tasks"][0]["reasons"][0]["cause"] == "WAIT_CAUSE_WORKERS_EXCLUDED",
        "{body}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filtered_pages_miss_and_repeat_nothing_while_jobs_arrive() -> Result<()> {
    // No worker: the jobs only wait, which is all a listing needs.
    let (farm, _dir) = start_farm(0, false).await?;
    let mut client = Client::connect(&farm).await?;
    let mut before: HashSet<String> = HashSet::new();
    for i in 0..30 {
        let mut request = tagged(clips_request(1, 1, "testsrc", false), &["nowhere"]);
        request.name = format!("shot-{i:03}");
        before.insert(client.jobs.submit_job(request).await?.into_inner().id);
    }
    let mut other = client.jobs.clone();
    let arriving = tokio::spawn(async move {
        let mut ids = Vec::new();
        for i in 0..20 {
            let mut request = tagged(clips_request(1, 1, "testsrc", false), &["nowhere"]);
            // They pass the filter too: new jobs come before the first
            // page, so a listing already under way shows none of them.
            request.name = format!("shot-late-{i:03}");
            ids.push(other.submit_job(request).await?.into_inner().id);
        }
        anyhow::Ok(ids)
    });
    let filter = pb::ListJobsRequest {
        page_size: 7,
        name_contains: "SHOT-".into(),
        states: vec![pb::JobState::Pending as i32],
        ..Default::default()
    };
    let mut seen = Vec::new();
    let mut pages = 0;
    let mut page_token = String::new();
    let mut next_page = None;
    loop {
        let page = client
            .jobs
            .list_jobs(pb::ListJobsRequest {
                page_token: page_token.clone(),
                ..filter.clone()
            })
            .await?
            .into_inner();
        pages += 1;
        if pages == 1 {
            ensure!(page.jobs.len() == 7, "a full first page");
        }
        seen.extend(page.jobs.iter().map(|j| j.id.clone()));
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
        next_page.get_or_insert_with(|| page_token.clone());
        ensure!(pages < 100, "the pages never end");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let late: HashSet<String> = arriving.await??.into_iter().collect();
    let unique: HashSet<String> = seen.iter().cloned().collect();
    ensure!(unique.len() == seen.len(), "a job was listed twice");
    ensure!(
        unique.is_superset(&before),
        "jobs missed: {:?}",
        before.difference(&unique)
    );
    // Late jobs submitted before the first page was taken lead it; none
    // submitted later shows up in a later page.
    ensure!(
        unique.difference(&before).all(|id| late.contains(id)),
        "only the filter's jobs are listed"
    );
    let none = client
        .jobs
        .list_jobs(pb::ListJobsRequest {
            states: vec![pb::JobState::Succeeded as i32],
            ..Default::default()
        })
        .await?
        .into_inner();
    ensure!(none.jobs.is_empty(), "no job succeeded");
    let token = next_page.context("more than one page")?;
    let other_filters = client
        .jobs
        .list_jobs(pb::ListJobsRequest {
            page_token: token.clone(),
            name_contains: "late".into(),
            ..filter.clone()
        })
        .await;
    ensure!(
        other_filters.is_err_and(
            |s| s.code() == Code::InvalidArgument && s.message().contains("other filters")
        ),
        "a page token is refused under other filters"
    );
    let forged = client
        .jobs
        .list_jobs(pb::ListJobsRequest {
            page_token: "not-a-token".into(),
            ..filter.clone()
        })
        .await;
    ensure!(
        forged.is_err_and(|s| s.code() == Code::InvalidArgument),
        "a made-up page token is refused"
    );
    let rest = rest_get(
        &farm,
        &format!("/v1/jobs?pageSize=7&name=shot-&state=pending&pageToken={token}"),
    )?;
    ensure!(
        rest["jobs"].as_array().is_some_and(|j| j.len() == 7) && rest["nextPageToken"].is_string(),
        "REST pages with the same token: {rest}"
    );
    let bad = client
        .jobs
        .list_jobs(pb::ListJobsRequest {
            states: vec![42],
            ..Default::default()
        })
        .await;
    ensure!(
        bad.is_err_and(|s| s.code() == Code::InvalidArgument),
        "an unknown state is refused"
    );
    Ok(())
}
