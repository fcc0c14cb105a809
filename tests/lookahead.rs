//! Lookahead dispatch on a real farm: a worker holds its next task queued
//! beyond its slot (`--lookahead`, 1 by default), so it never waits for the
//! scheduler between tasks. What a user sees: the worker shows one task
//! running and one waiting, every output arrives exactly once even when
//! the worker dies holding a queued task, and a queued task of a cancelled
//! job never starts. Tasks are ffmpeg clips encoded in real time (`-re`),
//! so each lasts as long as the test needs to look at it.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use kiln_localfarm::{Farm, worker_id};
use kiln_proto::v1 as pb;
use kiln_tests::{Client, clips_request, eventually, start_farm_with};

const RED: &str = "color=c=red:s=32x32";
const PATIENCE: Duration = Duration::from_secs(120);

/// One slot, one task queued; dead workers leave etcd within seconds.
const FARM_ENV: &[(&str, &str)] = &[("KILN_LOOKAHEAD", "1"), ("KILN_LEASE_TTL", "3")];

async fn submit(client: &mut Client, count: u32, seconds: u32) -> Result<String> {
    let mut request = clips_request(count, seconds, RED, false);
    request.name = "lookahead clips".into();
    Ok(client.jobs.submit_job(request).await?.into_inner().id)
}

async fn worker(client: &Client, id: &str) -> Result<pb::Worker> {
    let request = pb::GetWorkerRequest {
        worker_id: id.to_owned(),
    };
    Ok(client.farm.clone().get_worker(request).await?.into_inner())
}

/// Waits until `worker_id` holds two tasks of the job, one running and one
/// queued, as both the worker record and the job's tasks show them;
/// returns (running, queued) task ids.
async fn wait_holding_one_queued(
    client: &Client,
    worker_id: &str,
    job_id: &str,
) -> Result<(String, String)> {
    eventually(
        "a running and a queued task on the worker",
        PATIENCE,
        || {
            let mut client = client.clone();
            let (worker_id, job_id) = (worker_id.to_owned(), job_id.to_owned());
            async move {
                let record = worker(&client, &worker_id).await?;
                let started: Vec<&pb::RunningTask> =
                    record.running.iter().filter(|t| t.started).collect();
                let queued: Vec<&pb::RunningTask> =
                    record.running.iter().filter(|t| !t.started).collect();
                if record.running.len() != 2 || started.len() != 1 || queued.len() != 1 {
                    return Ok(None);
                }
                let (running, queued) = (started[0].task_id.clone(), queued[0].task_id.clone());
                // The job's tasks say the same: one running, the other only dispatched.
                let tasks = client.tasks(&job_id).await?;
                let state = |id: &str| tasks.iter().find(|t| t.id == id).map(pb::Task::state);
                let agreed = state(&running) == Some(pb::TaskState::Running)
                    && state(&queued) == Some(pb::TaskState::Dispatched);
                Ok(agreed.then_some((running, queued)))
            }
        },
    )
    .await
}

/// How many times each output path of the job was recorded.
async fn output_counts(client: &mut Client, job_id: &str) -> Result<BTreeMap<String, usize>> {
    let mut counts = BTreeMap::new();
    for output in client.outputs(job_id).await? {
        *counts.entry(output.path).or_default() += 1;
    }
    Ok(counts)
}

fn one_of_each_clip(count: u32) -> BTreeMap<String, usize> {
    (1..=count).map(|n| (format!("clip_{n}.mp4"), 1)).collect()
}

/// Whether a worker's log shows the attempt's runner at work: every line a
/// running task logs carries its span, `task{task_id=…`.
fn ran_on_any_worker(farm: &Farm, task_id: &str) -> Result<bool> {
    let span = format!("task{{task_id={task_id} ");
    for index in 0..farm.worker_count() {
        let id = worker_id(index);
        let log = std::fs::read_to_string(farm.log_dir().join(format!("{id}.log")))
            .with_context(|| format!("reading {id}'s log"))?;
        if log.lines().any(|line| line.contains(&span)) {
            return Ok(true);
        }
    }
    Ok(false)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_one_slot_worker_holds_its_next_task_and_every_clip_arrives_once() -> Result<()> {
    let (farm, _dir) = start_farm_with(1, false, FARM_ENV).await?;
    let mut client = Client::connect(&farm).await?;
    let record = kiln_tests::worker_connected(&client, &worker_id(0), PATIENCE).await?;
    let offered = record.capabilities.context("capabilities")?;
    ensure!(offered.slots == 1 && offered.lookahead == 1, "{offered:?}");

    let job_id = submit(&mut client, 4, 2).await?;
    wait_holding_one_queued(&client, &worker_id(0), &job_id).await?;
    let job = client.wait_until_finished(&job_id).await?;
    ensure!(
        job.state() == pb::JobState::Succeeded,
        "the job ended {:?}: {}",
        job.state(),
        job.message
    );
    ensure!(output_counts(&mut client, &job_id).await? == one_of_each_clip(4));
    // One attempt each: nothing queued was lost or run twice.
    for task in client.tasks(&job_id).await? {
        ensure!(task.attempts == 1, "{task:?}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_task_queued_on_a_killed_worker_runs_elsewhere_once() -> Result<()> {
    let (mut farm, _dir) = start_farm_with(1, false, FARM_ENV).await?;
    let mut client = Client::connect(&farm).await?;
    kiln_tests::worker_connected(&client, &worker_id(0), PATIENCE).await?;

    let job_id = submit(&mut client, 3, 5).await?;
    let (_, queued) = wait_holding_one_queued(&client, &worker_id(0), &job_id).await?;
    farm.worker_mut(0).context("worker 0")?.kill().await?;
    farm.add_worker().await?;

    let job = client.wait_until_finished(&job_id).await?;
    ensure!(
        job.state() == pb::JobState::Succeeded,
        "the job ended {:?}: {}",
        job.state(),
        job.message
    );
    ensure!(output_counts(&mut client, &job_id).await? == one_of_each_clip(3));
    let tasks = client.tasks(&job_id).await?;
    let moved = tasks
        .iter()
        .find(|t| t.id == queued)
        .context("the queued task")?;
    ensure!(
        moved.worker_id == worker_id(1),
        "the task queued on the killed worker ran on {}",
        moved.worker_id
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_queued_task_of_a_cancelled_job_never_starts() -> Result<()> {
    let (farm, _dir) = start_farm_with(1, false, FARM_ENV).await?;
    let mut client = Client::connect(&farm).await?;
    kiln_tests::worker_connected(&client, &worker_id(0), PATIENCE).await?;

    // Long clips: the queued one waits behind the first until the cancel.
    let job_id = submit(&mut client, 2, 60).await?;
    let (_, queued) = wait_holding_one_queued(&client, &worker_id(0), &job_id).await?;
    client
        .jobs
        .cancel_job(pb::CancelJobRequest {
            job_id: job_id.clone(),
        })
        .await?;
    let job = client.wait_until_finished(&job_id).await?;
    ensure!(job.state() == pb::JobState::Cancelled, "{job:?}");

    // The worker lets it go: it holds nothing, and the queued task never ran.
    eventually("the worker to hold nothing", PATIENCE, || {
        let client = client.clone();
        async move {
            let record = worker(&client, &worker_id(0)).await?;
            Ok(record.running.is_empty().then_some(()))
        }
    })
    .await?;
    let history = client
        .jobs
        .get_task_history(pb::GetTaskHistoryRequest {
            job_id: job_id.clone(),
            task_id: queued.clone(),
        })
        .await?
        .into_inner();
    ensure!(
        history.attempts.iter().all(|a| a.started_at.is_none()),
        "the queued task started: {history:?}"
    );
    ensure!(
        !ran_on_any_worker(&farm, &queued)?,
        "a worker ran the queued task {queued}"
    );
    Ok(())
}
