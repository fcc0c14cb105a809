//! A real Blender job rendered and encoded through all four services, with
//! assets stored in a real S3 server (Garage).

use std::collections::HashSet;

use kiln_proto::v1 as pb;
use kiln_proto::v1::job_event::Event;
use kiln_tests::{Client, example_scene, probe_video, start_farm, state_of};

#[tokio::test(flavor = "multi_thread")]
async fn twelve_frames_in_chunks_of_four_across_two_workers() -> anyhow::Result<()> {
    let (mut farm, dir) = start_farm(2, true).await?;
    let scene = example_scene(dir.path())?;
    let mut client = Client::connect(&farm).await?;

    let job = client.submit_blender(&scene, "1-12", 4).await?;
    assert_eq!(
        job.tasks_total, 5,
        "three render chunks, one encode task and one quality check"
    );
    // Follow the job through the streaming watch, as `kiln render` does.
    let mut events = client
        .jobs
        .watch_job(pb::WatchJobRequest {
            job_id: job.id.clone(),
            after_seq: None,
        })
        .await?
        .into_inner();
    let (mut progress, mut outputs, mut last_job) = (0, 0, None);
    while let Some(event) = events.message().await? {
        match event.event {
            Some(Event::TaskProgress(_)) => progress += 1,
            Some(Event::OutputAdded(added))
                if added.output.as_ref().is_some_and(|o| o.kind.is_empty()) =>
            {
                outputs += 1
            }
            Some(Event::JobChanged(job)) => last_job = Some(job),
            _ => {}
        }
    }
    let job = last_job.expect("the watch reports the job");
    assert_eq!(
        state_of(&job),
        pb::JobState::Succeeded,
        "the watch ends with the final state: {job:?}"
    );
    assert_eq!(job.tasks_succeeded, 5);
    assert!(progress > 0, "render progress was streamed");
    assert_eq!(
        outputs, 14,
        "every frame, the video and the check report were announced as they were stored"
    );

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
