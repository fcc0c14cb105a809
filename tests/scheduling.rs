//! The order of dispatch, matching, the failure policy and the job controls,
//! against a real scheduler, Postgres, etcd and workers running ffmpeg.
//! Each task encodes a clip in real time (`-re`), so its length is known.
//!
//! The order of dispatch itself (priority, then fair share, then submission
//! order; GPU preference; blocklists; retry timing; reclaim) is unit-tested
//! in milliseconds in `services/scheduler/src/core/tests/`; these check that
//! a real farm follows it.

use std::time::Duration;

use anyhow::Result;
use kiln_localfarm::worker_id;
use kiln_proto::v1 as pb;
use kiln_tests::{as_owner, clips_request, finished_at, scheduler_jobs, start_farm, state_of};
use tokio::time::Instant;

type Jobs = pb::job_service_client::JobServiceClient<kiln_tests::AuthChannel>;

const RED: &str = "color=c=red:s=32x32";

async fn submit(jobs: &mut Jobs, owner: &str, mut request: pb::SubmitJobRequest) -> Result<String> {
    request.name = format!("{owner}'s clips");
    Ok(jobs
        .submit_job(as_owner(owner, request)?)
        .await?
        .into_inner()
        .id)
}

async fn job(jobs: &mut Jobs, id: &str) -> Result<pb::Job> {
    let request = pb::GetJobRequest {
        job_id: id.to_owned(),
    };
    Ok(jobs.get_job(request).await?.into_inner())
}

async fn tasks(jobs: &mut Jobs, id: &str) -> Result<Vec<pb::Task>> {
    let request = pb::ListTasksRequest {
        job_id: id.to_owned(),
        ..Default::default()
    };
    Ok(jobs.list_tasks(request).await?.into_inner().tasks)
}

async fn wait_for(
    jobs: &mut Jobs,
    id: &str,
    what: &str,
    condition: impl Fn(&pb::Job) -> bool,
) -> Result<pb::Job> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let job = job(jobs, id).await?;
        if condition(&job) {
            return Ok(job);
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "job {id} never became {what}: {job:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn wait_final(jobs: &mut Jobs, id: &str) -> Result<pb::Job> {
    wait_for(jobs, id, "final", kiln_tests::is_final).await
}

#[tokio::test(flavor = "multi_thread")]
async fn gpu_work_runs_only_on_gpu_workers_and_has_them_first() -> Result<()> {
    let dir = kiln_tests::e2e_dir()?;
    let mut farm = kiln_localfarm::Farm::builder(dir.path().join("farm"))
        .workers(2)
        .worker_gpus(vec![0, 1])
        .start()
        .await?;
    let (cpu_worker, gpu_worker) = (worker_id(0), worker_id(1));
    let mut jobs = scheduler_jobs(&farm).await?;
    let cpu = submit(&mut jobs, "alice", clips_request(10, 1, RED, false)).await?;
    let gpu = submit(&mut jobs, "alice", clips_request(3, 1, RED, true)).await?;

    let gpu_job = wait_final(&mut jobs, &gpu).await?;
    let cpu_on_gpu_worker_so_far = tasks(&mut jobs, &cpu)
        .await?
        .iter()
        .filter(|t| t.worker_id == gpu_worker && t.state != pb::TaskState::Pending as i32)
        .count();
    assert_eq!(state_of(&gpu_job), pb::JobState::Succeeded, "{gpu_job:?}");
    for task in tasks(&mut jobs, &gpu).await? {
        assert_eq!(
            task.worker_id, gpu_worker,
            "a GPU task ran on {}",
            task.worker_id
        );
        assert_eq!(task.attempts, 1);
    }
    // In submission order the GPU worker would have taken half of the
    // earlier CPU job first; it took at most the task it had before the GPU
    // job arrived and the one it held queued behind it (lookahead 1), plus
    // as many since the GPU job ended (one started, one queued).
    assert!(
        cpu_on_gpu_worker_so_far <= 4,
        "GPU worker took {cpu_on_gpu_worker_so_far} CPU tasks while GPU work waited"
    );
    let cpu_job = wait_final(&mut jobs, &cpu).await?;
    assert_eq!(state_of(&cpu_job), pb::JobState::Succeeded);
    assert!(
        tasks(&mut jobs, &cpu)
            .await?
            .iter()
            .any(|t| t.worker_id == cpu_worker)
    );
    farm.shutdown().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failing_task_backs_off_fails_the_job_and_blocklists_its_worker() -> Result<()> {
    let dir = kiln_tests::e2e_dir()?;
    let mut farm = kiln_localfarm::Farm::builder(dir.path().join("farm"))
        .workers(1)
        .env("KILN_RETRY_BASE_SECONDS", "1")
        .start()
        .await?;
    let mut jobs = scheduler_jobs(&farm).await?;
    let id = submit(
        &mut jobs,
        "alice",
        clips_request(1, 1, "nosuchsource", false),
    )
    .await?;

    // Between attempts the task visibly waits out its backoff.
    let deadline = Instant::now() + Duration::from_secs(60);
    let waiting = loop {
        let task = tasks(&mut jobs, &id).await?.remove(0);
        if task.state == pb::TaskState::WaitingRetry as i32 {
            break task;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "task never waited to retry: {task:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(waiting.retry_at.is_some(), "{waiting:?}");

    let failed = wait_final(&mut jobs, &id).await?;
    assert_eq!(state_of(&failed), pb::JobState::Failed);
    assert!(
        failed.message.contains("task 0 of step Clip failed"),
        "{}",
        failed.message
    );
    let task = tasks(&mut jobs, &id).await?.remove(0);
    assert_eq!(
        (task.attempts, task.state),
        (3, pb::TaskState::Failed as i32),
        "{task:?}"
    );
    assert!(
        !task.log_tail.is_empty(),
        "the failed attempt's log is kept"
    );
    assert_eq!(
        failed.blocklist,
        [pb::BlockedWorker {
            worker_id: worker_id(0),
            failures: 3
        }]
    );

    let cleared = jobs
        .clear_blocklist(pb::ClearBlocklistRequest {
            job_id: id.clone(),
            worker_id: String::new(),
        })
        .await?
        .into_inner();
    assert!(cleared.blocklist.is_empty());
    // A retry reopens the job with fresh attempts; it fails again the same way.
    let reopened = jobs
        .retry_job(pb::RetryJobRequest { job_id: id.clone() })
        .await?
        .into_inner();
    assert!(!kiln_tests::is_final(&reopened), "{reopened:?}");
    let failed_again = wait_final(&mut jobs, &id).await?;
    assert_eq!(state_of(&failed_again), pb::JobState::Failed);
    assert_eq!(tasks(&mut jobs, &id).await?[0].attempts, 6);
    farm.shutdown().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn pause_resume_priority_and_jobs_that_wait_for_jobs() -> Result<()> {
    let (mut farm, _dir) = start_farm(1, false).await?;
    let mut jobs = scheduler_jobs(&farm).await?;
    let first = submit(&mut jobs, "alice", clips_request(4, 1, RED, false)).await?;
    let mut after = clips_request(2, 1, RED, false);
    after.depends_on_jobs = vec![first.clone()];
    let second = submit(&mut jobs, "alice", after).await?;

    let paused = jobs
        .pause_job(pb::PauseJobRequest {
            job_id: first.clone(),
        })
        .await?
        .into_inner();
    assert_eq!(state_of(&paused), pb::JobState::Paused);
    let idle = wait_for(&mut jobs, &first, "idle", |j| j.tasks_running == 0).await?;
    // Nothing starts while paused, and the dependent job waits.
    let watch_until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < watch_until {
        let now = job(&mut jobs, &first).await?;
        assert_eq!(
            (now.tasks_running, now.tasks_succeeded),
            (0, idle.tasks_succeeded),
            "{now:?}"
        );
        assert_eq!(job(&mut jobs, &second).await?.tasks_running, 0);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let raised = jobs
        .set_job_priority(pb::SetJobPriorityRequest {
            job_id: first.clone(),
            priority_level: pb::PriorityLevel::Critical as i32,
            ..Default::default()
        })
        .await?
        .into_inner();
    assert_eq!(raised.priority, 100);
    jobs.resume_job(pb::ResumeJobRequest {
        job_id: first.clone(),
    })
    .await?;
    let first_job = wait_final(&mut jobs, &first).await?;
    let second_job = wait_final(&mut jobs, &second).await?;
    assert_eq!(state_of(&first_job), pb::JobState::Succeeded);
    assert_eq!(state_of(&second_job), pb::JobState::Succeeded);
    assert!(finished_at(&first_job) < finished_at(&second_job));

    // A job waiting for a job that is cancelled fails, saying why.
    let doomed = submit(&mut jobs, "alice", clips_request(3, 2, RED, false)).await?;
    let mut waiting = clips_request(1, 1, RED, false);
    waiting.depends_on_jobs = vec![doomed.clone()];
    let orphan = submit(&mut jobs, "alice", waiting).await?;
    jobs.cancel_job(pb::CancelJobRequest {
        job_id: doomed.clone(),
    })
    .await?;
    let orphan_job = wait_final(&mut jobs, &orphan).await?;
    assert_eq!(state_of(&orphan_job), pb::JobState::Failed);
    assert!(
        orphan_job.message.contains(&doomed),
        "{}",
        orphan_job.message
    );
    farm.shutdown().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_task_on_a_killed_worker_reruns_elsewhere_and_counts_once() -> Result<()> {
    let (mut farm, _dir) = start_farm(2, false).await?;
    let mut jobs = scheduler_jobs(&farm).await?;
    let id = submit(&mut jobs, "alice", clips_request(4, 3, RED, false)).await?;
    wait_for(&mut jobs, &id, "running on both workers", |j| {
        j.tasks_running == 2
    })
    .await?;
    let victim = worker_id(0);
    // The job's count includes tasks dispatched but not yet started; wait
    // until the victim's task has started rendering.
    let deadline = Instant::now() + Duration::from_secs(120);
    let lost: Vec<String> = loop {
        let running: Vec<String> = tasks(&mut jobs, &id)
            .await?
            .into_iter()
            .filter(|t| t.worker_id == victim && t.state == pb::TaskState::Running as i32)
            .map(|t| t.id)
            .collect();
        if !running.is_empty() || Instant::now() > deadline {
            break running;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(lost.len(), 1);
    farm.worker_mut(0).expect("worker 0").kill().await?;

    let done = wait_final(&mut jobs, &id).await?;
    assert_eq!(state_of(&done), pb::JobState::Succeeded, "{done:?}");
    let rerun = tasks(&mut jobs, &id)
        .await?
        .into_iter()
        .find(|t| t.id == lost[0])
        .expect("task");
    assert_eq!(
        (rerun.attempts, rerun.worker_id.as_str()),
        (2, worker_id(1).as_str())
    );
    let outputs = jobs
        .list_outputs(pb::ListOutputsRequest {
            job_id: id.clone(),
            ..Default::default()
        })
        .await?
        .into_inner()
        .outputs
        .into_iter()
        .filter(|o| o.kind.is_empty())
        .collect::<Vec<_>>();
    let mut paths: Vec<&str> = outputs.iter().map(|o| o.path.as_str()).collect();
    paths.sort();
    assert_eq!(
        paths,
        ["clip_1.mp4", "clip_2.mp4", "clip_3.mp4", "clip_4.mp4"]
    );
    farm.shutdown().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_frozen_worker_is_dead_once_its_lease_ends_and_counts_once() -> Result<()> {
    let dir = kiln_tests::e2e_dir()?;
    // A short lease, so etcd gives up on the frozen worker well before the
    // scheduler's 15 s silence limit would.
    let mut farm = kiln_localfarm::Farm::builder(dir.path().join("farm"))
        .workers(2)
        .env("KILN_LEASE_TTL", "3")
        .start()
        .await?;
    let mut jobs = scheduler_jobs(&farm).await?;
    let id = submit(&mut jobs, "alice", clips_request(2, 5, RED, false)).await?;
    wait_for(&mut jobs, &id, "running on both workers", |j| {
        j.tasks_running == 2
    })
    .await?;
    let frozen_task = tasks(&mut jobs, &id)
        .await?
        .into_iter()
        .find(|t| t.worker_id == worker_id(0))
        .expect("a task on worker 0");
    farm.worker_mut(0).expect("worker 0").pause()?;

    let done = wait_final(&mut jobs, &id).await?;
    assert_eq!(state_of(&done), pb::JobState::Succeeded, "{done:?}");
    let rerun = tasks(&mut jobs, &id)
        .await?
        .into_iter()
        .find(|t| t.id == frozen_task.id)
        .expect("task");
    assert_eq!(
        (rerun.attempts, rerun.worker_id.as_str()),
        (2, worker_id(1).as_str())
    );
    // Thawed, the worker's stale attempt changes nothing.
    farm.worker_mut(0).expect("worker 0").resume()?;
    farm.wait_for_instances(kiln_discovery::service::WORKER, 2, Duration::from_secs(30))
        .await?;
    let after = job(&mut jobs, &id).await?;
    assert_eq!((after.tasks_succeeded, after.tasks_total), (2, 2));
    let outputs = jobs
        .list_outputs(pb::ListOutputsRequest {
            job_id: id.clone(),
            ..Default::default()
        })
        .await?
        .into_inner()
        .outputs
        .into_iter()
        .filter(|o| o.kind.is_empty())
        .collect::<Vec<_>>();
    assert_eq!(outputs.len(), 2, "{outputs:?}");
    farm.shutdown().await?;
    Ok(())
}

/// With a retention set, a finished job goes with its tasks once it is
/// older than that; an unfinished one stays however old, and so does a
/// finished one it depends on. A retry near the deletion is refused with
/// the reason rather than racing the sweep.
#[tokio::test(flavor = "multi_thread")]
async fn finished_jobs_are_deleted_after_the_retention_and_unfinished_ones_kept() -> Result<()> {
    const KEEP_SECONDS: u64 = 20;
    let dir = kiln_tests::e2e_dir()?;
    let mut farm = kiln_localfarm::Farm::builder(dir.path().join("farm"))
        .workers(1)
        .env("KILN_MAX_ATTEMPTS", "1")
        .env(
            "KILN_DELETE_FINISHED_JOBS_AFTER_SECONDS",
            KEEP_SECONDS.to_string(),
        )
        .start()
        .await?;
    let mut jobs = scheduler_jobs(&farm).await?;
    let failed = submit(
        &mut jobs,
        "alice",
        clips_request(1, 1, "nosuchsource", false),
    )
    .await?;
    let needed = submit(&mut jobs, "alice", clips_request(1, 1, RED, false)).await?;
    let mut after = clips_request(2, 1, RED, false);
    after.depends_on_jobs = vec![needed.clone()];
    let held = submit(&mut jobs, "alice", after).await?;
    jobs.pause_job(pb::PauseJobRequest {
        job_id: held.clone(),
    })
    .await?;
    let done = wait_final(&mut jobs, &failed).await?;
    assert_eq!(state_of(&done), pb::JobState::Failed, "{done:?}");
    let succeeded = wait_final(&mut jobs, &needed).await?;
    assert_eq!(
        state_of(&succeeded),
        pb::JobState::Succeeded,
        "{succeeded:?}"
    );

    // Past half the retention: too close to its deletion to reopen.
    let finished = std::time::UNIX_EPOCH + Duration::from_secs(finished_at(&done).0 as u64);
    let retry_from = finished + Duration::from_secs(KEEP_SECONDS / 2 + 1);
    if let Ok(wait) = retry_from.duration_since(std::time::SystemTime::now()) {
        tokio::time::sleep(wait).await;
    }
    let refused = jobs
        .retry_job(pb::RetryJobRequest {
            job_id: failed.clone(),
        })
        .await
        .expect_err("a job about to be deleted cannot be reopened");
    assert_eq!(
        refused.code(),
        tonic::Code::FailedPrecondition,
        "{refused:?}"
    );
    assert!(
        refused.message().contains("about to be deleted"),
        "{refused:?}"
    );

    let deadline = Instant::now() + Duration::from_secs(120);
    let gone = loop {
        match jobs
            .get_job(pb::GetJobRequest {
                job_id: failed.clone(),
            })
            .await
        {
            Err(status) if status.code() == tonic::Code::NotFound => break status,
            other => {
                anyhow::ensure!(
                    Instant::now() < deadline,
                    "the failed job was never deleted: {other:?}"
                );
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
    };
    assert!(gone.message().contains(&failed), "{gone:?}");
    let tasks_gone = tasks(&mut jobs, &failed)
        .await
        .expect_err("its tasks go with it");
    assert_eq!(
        kiln_tests::status_of(&tasks_gone).map(|s| s.code()),
        Some(tonic::Code::NotFound),
        "{tasks_gone:?}"
    );
    // The paused job is as old, but not finished: kept, with its tasks.
    let kept = job(&mut jobs, &held).await?;
    assert_eq!(state_of(&kept), pb::JobState::Paused, "{kept:?}");
    assert_eq!(tasks(&mut jobs, &held).await?.len(), 2);
    // So is the finished job it depends on, past its retention too: a new
    // leader loading the paused job must find it succeeded.
    // Watched until two sweeps (a tenth of the retention apart) after it
    // is past the retention.
    let past = std::time::UNIX_EPOCH
        + Duration::from_secs(finished_at(&succeeded).0 as u64 + KEEP_SECONDS + 5);
    while std::time::SystemTime::now() < past {
        let dependency = job(&mut jobs, &needed).await?;
        assert_eq!(state_of(&dependency), pb::JobState::Succeeded);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    farm.shutdown().await?;
    Ok(())
}
