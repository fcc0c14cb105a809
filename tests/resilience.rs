//! Cancel stops running renders; a scheduler restart loses nothing.

use std::collections::BTreeSet;
use std::time::Duration;

use kiln_proto::v1 as pb;
use kiln_tests::{Client, blender_processes_under, example_scene, start_farm, state_of};
use tokio::time::Instant;

#[tokio::test(flavor = "multi_thread")]
async fn cancel_kills_running_blender_processes() -> anyhow::Result<()> {
    let (mut farm, dir) = start_farm(2, false).await?;
    let scene = example_scene(dir.path())?;
    let mut client = Client::connect(&farm).await?;
    let job = client.submit_blender(&scene, "1-200", 100).await?;

    client
        .wait_for_job(&job.id, Duration::from_secs(60), |j| j.tasks_running > 0)
        .await?;
    let workers_dir = farm.workers_dir().to_path_buf();
    let deadline = Instant::now() + Duration::from_secs(60);
    while blender_processes_under(&workers_dir).is_empty() {
        assert!(Instant::now() < deadline, "blender never started");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let cancelled = client
        .jobs
        .cancel_job(pb::CancelJobRequest {
            job_id: job.id.clone(),
        })
        .await?
        .into_inner();
    assert_eq!(state_of(&cancelled), pb::JobState::Cancelled);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = blender_processes_under(&workers_dir);
        if left.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "blender processes {left:?} outlived the cancel by 10 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let tasks = client.tasks(&job.id).await?;
    assert!(
        tasks
            .iter()
            .all(|t| t.state == pb::TaskState::Cancelled as i32),
        "{tasks:?}"
    );
    assert_eq!(
        state_of(&client.job(&job.id).await?),
        pb::JobState::Cancelled
    );
    farm.shutdown().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn restarting_the_scheduler_mid_job_loses_no_job_and_no_frame() -> anyhow::Result<()> {
    let (mut farm, dir) = start_farm(1, false).await?;
    let scene = example_scene(dir.path())?;
    let mut client = Client::connect(&farm).await?;
    let job = client.submit_blender(&scene, "1-12", 2).await?;

    // Wait until some frames are finished, then restart the scheduler.
    client
        .wait_for_job(&job.id, Duration::from_secs(120), |j| {
            j.tasks_succeeded >= 1
        })
        .await?;
    let before: BTreeSet<String> = client
        .outputs(&job.id)
        .await?
        .into_iter()
        .map(|o| o.path)
        .collect();
    assert!(!before.is_empty());
    let scheduler = farm.scheduler_mut().expect("a scheduler");
    scheduler.terminate().await?;
    scheduler.restart().await?;

    let job = client.wait_until_finished(&job.id).await?;
    assert_eq!(state_of(&job), pb::JobState::Succeeded, "{job:?}");
    let after: BTreeSet<String> = client
        .outputs(&job.id)
        .await?
        .into_iter()
        .map(|o| o.path)
        .collect();
    assert!(
        before.is_subset(&after),
        "frames finished before the restart are still there"
    );
    let expected: BTreeSet<String> = (1..=12)
        .map(|f| format!("frames/frame_{f:04}.png"))
        .chain(["video.mp4".to_owned(), "check/report.json".to_owned()])
        .collect();
    assert_eq!(after, expected);
    let jobs = client
        .jobs
        .list_jobs(pb::ListJobsRequest::default())
        .await?
        .into_inner()
        .jobs;
    assert_eq!(jobs.len(), 1, "the job survived the restart");
    farm.shutdown().await?;
    Ok(())
}
