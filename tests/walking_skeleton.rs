//! A real Blender job rendered and encoded through all four services, with
//! assets stored in a real S3 server (Garage).

use std::collections::HashSet;

use kiln_proto::v1 as pb;
use kiln_tests::{Client, example_scene, probe_video, start_farm, state_of};

#[tokio::test(flavor = "multi_thread")]
async fn twelve_frames_in_chunks_of_four_across_two_workers() -> anyhow::Result<()> {
    let (mut farm, dir) = start_farm(2, true).await?;
    let scene = example_scene(dir.path())?;
    let mut client = Client::connect(&farm).await?;

    let job = client.submit_blender(&scene, "1-12", 4).await?;
    assert_eq!(
        job.tasks_total, 4,
        "three render chunks and one encode task"
    );
    let job = client.wait_until_finished(&job.id).await?;
    assert_eq!(state_of(&job), pb::JobState::Succeeded, "{job:?}");

    let tasks = client.tasks(&job.id).await?;
    let render_workers: HashSet<_> = tasks
        .iter()
        .filter(|t| t.step_name == "Render")
        .map(|t| t.worker_id.clone())
        .collect();
    assert_eq!(
        render_workers.len(),
        2,
        "both workers should have rendered: {tasks:?}"
    );

    let out = dir.path().join("out");
    client.download_outputs(&job.id, &out).await?;
    let mut previous: Option<image::RgbImage> = None;
    for frame in 1..=12 {
        let path = out.join(format!("frames/frame_{frame:04}.png"));
        let image = image::open(&path)?.to_rgb8();
        assert_eq!(
            image.dimensions(),
            (320, 180),
            "{} has the scene's resolution",
            path.display()
        );
        if let Some(previous) = &previous {
            assert_ne!(
                previous.as_raw(),
                image.as_raw(),
                "frame {frame} differs from the one before"
            );
        }
        previous = Some(image);
    }
    let (frames, codec, pix_fmt) = probe_video(&out.join("video.mp4"))?;
    assert_eq!(
        (frames, codec.as_str(), pix_fmt.as_str()),
        (12, "h264", "yuv420p")
    );

    farm.shutdown().await?;
    Ok(())
}
