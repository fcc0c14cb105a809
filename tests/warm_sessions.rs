//! Warm Blender sessions through a whole farm: a frame rendered warm equals
//! the cold render of the same frame, and a warm Blender killed mid-frame
//! costs only that attempt.

use std::path::Path;

use anyhow::{Context, bail};
use kiln_proto::v1 as pb;
use kiln_proto::v1::job_event::Event;
use kiln_tests::{Client, example_scene, start_farm, state_of};

/// The warm driver's file name, which only warm Blender processes mention.
const DRIVER: &str = "kiln_blender_driver.py";

#[tokio::test(flavor = "multi_thread")]
async fn warm_frames_match_cold_ones_and_a_killed_session_costs_one_attempt() -> anyhow::Result<()>
{
    let (mut farm, dir) = start_farm(1, false).await?;
    let scene = example_scene(dir.path())?;
    let mut client = Client::connect(&farm).await?;

    // (a) Four one-frame tasks through one warm session, compared with a cold render.
    let job = client.submit_blender(&scene, "1-4", 1).await?;
    let job = client.wait_until_finished(&job.id).await?;
    assert_eq!(state_of(&job), pb::JobState::Succeeded, "{job:?}");
    let tasks = client.tasks(&job.id).await?;
    let renders: Vec<&pb::Task> = tasks.iter().filter(|t| t.step_name == "Render").collect();
    assert!(
        renders
            .iter()
            .all(|t| t.log_tail.contains("warm blender session")),
        "every render ran warm: {renders:?}"
    );
    assert!(
        renders
            .iter()
            .any(|t| t.log_tail.contains("frames rendered before")),
        "a later task reused the session: {renders:?}"
    );
    let out = dir.path().join("warm");
    client.download_outputs(&job.id, &out).await?;
    let cold = cold_render(&scene, 3, &dir.path().join("cold"))?;
    let psnr = psnr(&out.join("frames/frame_0003.png"), &cold)?;
    assert!(
        psnr > 40.0,
        "warm frame 3 differs from the cold one: {psnr} dB"
    );

    // (b) A slower scene, so that the kill lands while a frame renders: Blender
    // reports a frame's first progress as it starts on it.
    let slow = slower_scene(&scene, &dir.path().join("slow.blend"))?;
    let workers = farm.workers_dir().to_path_buf();
    let idle = warm_blender_processes(&workers);
    assert_eq!(idle.len(), 1, "the first job's session waits for more work");
    let job = client.submit_blender(&slow, "1-2", 1).await?;
    let mut events = client
        .jobs
        .watch_job(pb::WatchJobRequest {
            job_id: job.id.clone(),
            after_seq: None,
        })
        .await?
        .into_inner();
    let mut killed_task = None;
    while let Some(event) = events.message().await? {
        if let Some(Event::TaskProgress(progress)) = event.event
            && progress.frame.is_some()
            && progress.fraction < 1.0
            && killed_task.is_none()
        {
            let pids: Vec<u32> = warm_blender_processes(&workers)
                .into_iter()
                .filter(|pid| !idle.contains(pid))
                .collect();
            assert_eq!(pids.len(), 1, "one new warm blender renders: {pids:?}");
            let status = std::process::Command::new("kill")
                .args(["-KILL", &pids[0].to_string()])
                .status()?;
            assert!(status.success());
            killed_task = Some(progress.task_id);
        }
    }
    let killed_task = killed_task.context("no progress was reported mid-frame")?;
    let job = client.job(&job.id).await?;
    assert_eq!(
        state_of(&job),
        pb::JobState::Succeeded,
        "the retry succeeded: {job:?}"
    );
    for task in client.tasks(&job.id).await? {
        let expected = if task.id == killed_task { 2 } else { 1 };
        assert_eq!(
            task.attempts, expected,
            "only the killed frame's task ran twice: {task:?}"
        );
    }

    farm.shutdown().await?;
    Ok(())
}

/// Renders `frame` of `scene` the way a cold task does.
fn cold_render(scene: &Path, frame: i64, dir: &Path) -> anyhow::Result<std::path::PathBuf> {
    let pattern = dir.join("frame_####");
    let output = std::process::Command::new("blender")
        .args(["-b", "-Y"])
        .arg(scene)
        .arg("-o")
        .arg(&pattern)
        .args(["-F", "PNG", "-x", "1", "-f", &frame.to_string()])
        .output()?;
    if !output.status.success() {
        bail!(
            "cold render failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(dir.join(format!("frame_{frame:04}.png")))
}

/// The example scene with enough samples that a frame takes a few seconds.
fn slower_scene(scene: &Path, out: &Path) -> anyhow::Result<std::path::PathBuf> {
    let expr = format!(
        "import bpy; bpy.context.scene.cycles.samples = 96; bpy.ops.wm.save_as_mainfile(filepath={:?})",
        out.to_string_lossy()
    );
    let status = std::process::Command::new("blender")
        .args(["-b", "-Y"])
        .arg(scene)
        .args(["--python-expr", &expr])
        .stdout(std::process::Stdio::null())
        .status()?;
    if !status.success() {
        bail!("blender could not save the slower scene");
    }
    Ok(out.to_path_buf())
}

/// Peak signal-to-noise ratio of two 8-bit RGB images, in dB.
fn psnr(a: &Path, b: &Path) -> anyhow::Result<f64> {
    let a = image::open(a)?.to_rgb8();
    let b = image::open(b)?.to_rgb8();
    if a.dimensions() != b.dimensions() {
        bail!(
            "sizes differ: {:?} and {:?}",
            a.dimensions(),
            b.dimensions()
        );
    }
    let squared: f64 = a
        .as_raw()
        .iter()
        .zip(b.as_raw())
        .map(|(x, y)| (f64::from(*x) - f64::from(*y)).powi(2))
        .sum();
    let mse = squared / a.as_raw().len() as f64;
    Ok(if mse == 0.0 {
        f64::INFINITY
    } else {
        10.0 * (255.0_f64 * 255.0 / mse).log10()
    })
}

/// Live warm Blender processes under `dir`.
fn warm_blender_processes(dir: &Path) -> Vec<u32> {
    kiln_tests::blender_processes_under(dir)
        .into_iter()
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|cmdline| String::from_utf8_lossy(&cmdline).contains(DRIVER))
        })
        .collect()
}
