//! Graceful drain: a worker sent SIGTERM mid-task takes no new task,
//! finishes the one it runs within its grace period or hands it back, and
//! exits; either way the job completes with every frame.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use kiln_localfarm::Farm;
use kiln_proto::v1 as pb;
use kiln_tests::{Client, blender_processes_under, example_scene, start_farm, state_of};
use tokio::time::Instant;

async fn wait_for_blender_under(dir: &Path) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(120);
    while blender_processes_under(dir).is_empty() {
        anyhow::ensure!(
            Instant::now() < deadline,
            "blender never started under {}",
            dir.display()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

async fn all_frames_rendered(client: &mut Client, job_id: &str, frames: u32) -> anyhow::Result<()> {
    let job = client.wait_until_finished(job_id).await?;
    assert_eq!(state_of(&job), pb::JobState::Succeeded, "{job:?}");
    let outputs: BTreeSet<String> = client
        .outputs(job_id)
        .await?
        .into_iter()
        .map(|o| o.path)
        .collect();
    let expected: BTreeSet<String> = (1..=frames)
        .map(|f| format!("frames/frame_{f:04}.png"))
        .chain(["video.mp4".to_owned(), "check/report.json".to_owned()])
        .collect();
    assert_eq!(outputs, expected);
    Ok(())
}

/// SIGTERMs worker `index` once its Blender runs, and waits for it to exit by itself.
async fn drain_worker(farm: &mut Farm, index: usize, within: Duration) -> anyhow::Result<()> {
    let name = kiln_localfarm::worker_id(index);
    wait_for_blender_under(&farm.workers_dir().to_path_buf().join(&name)).await?;
    let worker = farm
        .worker_mut(index)
        .ok_or_else(|| anyhow::anyhow!("no {name}"))?;
    worker.signal_terminate()?;
    let status = worker.wait_exit(within).await;
    assert!(
        status.is_some_and(|s| s.success()),
        "{name} should exit cleanly by itself after draining, got {status:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_mid_task_finishes_or_hands_back_and_loses_no_frame() -> anyhow::Result<()> {
    let (mut farm, dir) = start_farm(2, false).await?;
    let scene = example_scene(dir.path())?;
    let mut client = Client::connect(&farm).await?;

    // Finish within the grace period (the default, 300 s): worker-0's chunk
    // completes on worker-0, and it takes nothing more.
    let job = client.submit_blender(&scene, "1-8", 4).await?;
    drain_worker(&mut farm, 0, Duration::from_secs(120)).await?;
    all_frames_rendered(&mut client, &job.id, 8).await?;
    let tasks = client.tasks(&job.id).await?;
    let on_drained: Vec<_> = tasks.iter().filter(|t| t.worker_id == "worker-0").collect();
    assert_eq!(
        on_drained.len(),
        1,
        "the drained worker ran only its chunk: {tasks:?}"
    );
    assert_eq!(
        on_drained[0].attempts, 1,
        "its chunk was finished, not redone"
    );

    // Grace of one second: the chunk is handed back, requeued, and rendered elsewhere.
    farm.add_worker_with_env(&[("KILN_DRAIN_SECONDS", "1")])
        .await?;
    let job = client.submit_blender(&scene, "1-8", 4).await?;
    drain_worker(&mut farm, 2, Duration::from_secs(30)).await?;
    all_frames_rendered(&mut client, &job.id, 8).await?;
    let tasks = client.tasks(&job.id).await?;
    assert!(
        tasks.iter().all(|t| t.worker_id == "worker-1"),
        "every task was finished by the remaining worker: {tasks:?}"
    );
    assert!(
        tasks.iter().any(|t| t.attempts == 2),
        "the handed-back chunk ran a second time: {tasks:?}"
    );
    farm.shutdown().await?;
    Ok(())
}
