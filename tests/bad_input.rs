//! Bad input gets a clear error and changes nothing; a bad scene fails its
//! job without hurting the worker; a scene's embedded Python never runs.

use kiln_proto::v1 as pb;
use kiln_tests::{Client, blender_request, booby_trapped_scene, start_farm, state_of};
use tonic::Code;

#[tokio::test(flavor = "multi_thread")]
async fn invalid_submissions_are_rejected_and_change_nothing() -> anyhow::Result<()> {
    let (mut farm, dir) = start_farm(1, false).await?;
    let mut client = Client::connect(&farm).await?;
    let scene = dir.path().join("some.blend");
    std::fs::write(&scene, b"BLENDER-v304 not really")?;
    let digest = client.assets.upload_file(&scene).await?.digest;
    let unknown = "0".repeat(64);

    let mut bad_template = blender_request(&digest, "1-4", 2);
    bad_template.template = Some(pb::submit_job_request::Template::TemplateDocument(
        "specificationVersion: jobtemplate-2023-09\nname: broken\nsteps: []\n".into(),
    ));
    let cases = [
        (
            "unknown scene digest",
            blender_request(&unknown, "1-4", 2),
            "not stored",
        ),
        (
            "reversed frame range",
            blender_request(&digest, "12-1", 2),
            "12-1",
        ),
        (
            "empty frame range",
            blender_request(&digest, "", 2),
            "Frames",
        ),
        (
            "chunk size 0",
            blender_request(&digest, "1-4", 0),
            "ChunkSize",
        ),
        ("template that does not validate", bad_template, "template"),
    ];
    for (what, request, mentions) in cases {
        let status = client.jobs.submit_job(request).await.expect_err(what);
        assert_eq!(status.code(), Code::InvalidArgument, "{what}: {status:?}");
        assert!(
            status.message().contains(mentions),
            "{what}: {:?} should mention {mentions:?}",
            status.message()
        );
    }
    let jobs = client
        .jobs
        .list_jobs(pb::ListJobsRequest::default())
        .await?
        .into_inner()
        .jobs;
    assert!(
        jobs.is_empty(),
        "rejected submissions created jobs: {jobs:?}"
    );

    let status = client.job("not-a-uuid").await.expect_err("malformed id");
    assert!(format!("{status:?}").contains("not a UUID"), "{status:?}");
    farm.shutdown().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_file_that_is_not_a_blend_fails_its_job_and_the_worker_survives() -> anyhow::Result<()> {
    let (mut farm, dir) = start_farm(1, false).await?;
    let mut client = Client::connect(&farm).await?;

    let not_a_blend = dir.path().join("notes.blend");
    std::fs::write(
        &not_a_blend,
        b"these are not the frames you are looking for\n",
    )?;
    let job = client.submit_blender(&not_a_blend, "1-2", 2).await?;
    let job = client.wait_until_finished(&job.id).await?;
    assert_eq!(state_of(&job), pb::JobState::Failed, "{job:?}");
    let tasks = client.tasks(&job.id).await?;
    let render = tasks
        .iter()
        .find(|t| t.step_name == "Render")
        .expect("a render task");
    assert!(
        render.log_tail.contains("not a blend file")
            || render.log_tail.contains("File format is not supported"),
        "the task log carries Blender's message: {:?}",
        render.log_tail
    );
    assert!(
        job.message.contains("step Render failed"),
        "the job says why it failed: {:?}",
        job.message
    );

    // The same worker then renders a real scene, whose embedded script must not run.
    let marker = dir.path().join("autoexec-ran");
    let trap = booby_trapped_scene(dir.path(), &marker)?;
    // Control: with auto-run allowed, Blender does run the block.
    let allowed = std::process::Command::new("blender")
        .args(["-b", "-y"])
        .arg(&trap)
        .output()?;
    assert!(
        allowed.status.success() && marker.exists(),
        "the trap is armed"
    );
    std::fs::remove_file(&marker)?;
    let job = client.submit_blender(&trap, "1", 1).await?;
    let job = client.wait_until_finished(&job.id).await?;
    assert_eq!(state_of(&job), pb::JobState::Succeeded, "{job:?}");
    assert!(!marker.exists(), "the text block inside the .blend ran");
    assert_eq!(farm.worker_count(), 1);
    assert!(
        farm.worker_mut(0).expect("worker 0").is_running(),
        "the worker survived the bad scene"
    );
    farm.shutdown().await?;
    Ok(())
}
