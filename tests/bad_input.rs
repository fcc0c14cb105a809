//! Bad input gets a clear error and changes nothing; a bad scene fails its
//! job without hurting the worker; a scene's embedded Python never runs.

use std::path::Path;

use anyhow::Context;
use kiln_localfarm::Farm;
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
            "frame range whose step overflows",
            blender_request(&digest, "0--9223372036854775808:-1", 2),
            "0--9223372036854775808:-1",
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
        allowed.status.success()
            && marker.exists()
            && String::from_utf8_lossy(&allowed.stdout).contains(kiln_tests::AUTOEXEC_RAN),
        "the trap is armed"
    );
    std::fs::remove_file(&marker)?;
    let job = client.submit_blender(&trap, "1", 1).await?;
    let job = client.wait_until_finished(&job.id).await?;
    assert_eq!(state_of(&job), pb::JobState::Succeeded, "{job:?}");
    assert!(!marker.exists(), "the text block inside the .blend ran");
    for log in client.all_outputs(&job.id).await? {
        if log.kind != "log" {
            continue;
        }
        let path = dir.path().join("task.log");
        client.assets.download_to(&log.digest, &path).await?;
        assert!(
            !std::fs::read_to_string(&path)?.contains(kiln_tests::AUTOEXEC_RAN),
            "the text block inside the .blend ran in its sandbox ({})",
            log.path
        );
    }
    assert_eq!(farm.worker_count(), 1);
    assert!(
        farm.worker_mut(0).expect("worker 0").is_running(),
        "the worker survived the bad scene"
    );
    farm.shutdown().await?;
    Ok(())
}

/// The same hostile input as over REST (tests/gateway_api.rs), over gRPC:
/// each refused with a clear status naming what is wrong, creating nothing,
/// and a template's arguments reach the program as literal argv.
#[tokio::test(flavor = "multi_thread")]
async fn hostile_grpc_input_is_refused_and_leaves_nothing_behind() -> anyhow::Result<()> {
    let (mut farm, dir) = start_farm(1, false).await?;
    let result = hostile_grpc(&farm, dir.path()).await;
    farm.shutdown().await?;
    result
}

async fn hostile_grpc(farm: &Farm, dir: &Path) -> anyhow::Result<()> {
    let mut client = Client::connect(farm).await?;
    let scene = dir.join("scene.blend");
    std::fs::write(&scene, b"BLENDER-v304 placeholder")?;
    let digest = client.assets.upload_file(&scene).await?.digest;
    let with_input = |path: &str| {
        let mut request = blender_request(&digest, "1", 1);
        request.inputs[0].path = path.to_owned();
        request
    };
    let mut nul_name = blender_request(&digest, "1", 1);
    nul_name.name = "render\0me".into();
    let cases = [
        ("path traversal", with_input("../escape.blend"), "inputs"),
        ("absolute path", with_input("/etc/passwd"), "inputs"),
        ("NUL byte in a path", with_input("scene\0.blend"), "inputs"),
        ("NUL byte in the name", nul_name, "name"),
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

    // A job bigger than the farm allows is over a quota, and says which.
    let status = client
        .jobs
        .submit_job(blender_request(&digest, "1-1000000000", 1))
        .await
        .expect_err("a billion frames");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(
        status.message().contains("max-tasks-per-job"),
        "a billion frames: {:?} should name the quota",
        status.message()
    );

    // Malformed protobuf: a field sent with the wrong wire type.
    let status = raw_call(farm, "SubmitJob", WrongWireType { name: 7 })
        .await
        .expect_err("a malformed message");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    // Unknown fields are skipped, as proto3 wants: they smuggle nothing in.
    let status = raw_call(
        farm,
        "GetJob",
        WithUnknownField {
            job_id: "00000000-0000-4000-8000-000000000000".into(),
            owner: "someone-else".into(),
        },
    )
    .await
    .expect_err("an unknown job");
    assert_eq!(status.code(), Code::NotFound, "{status:?}");

    // A message over the size limit (8 MiB by default), and oversized metadata.
    let mut huge = blender_request(&digest, "1", 1);
    huge.name = "x".repeat(9 * 1024 * 1024);
    let status = client.jobs.submit_job(huge).await.expect_err("9 MiB");
    assert!(
        matches!(status.code(), Code::OutOfRange | Code::ResourceExhausted),
        "{status:?}"
    );
    assert!(status.message().contains("too large"), "{status:?}");
    let mut request = tonic::Request::new(pb::ListJobsRequest::default());
    request
        .metadata_mut()
        .insert("x-padding", "p".repeat(32 * 1024).parse()?);
    // HTTP/2's own header limit (16 KiB, as the gateway's --max-header-bytes)
    // answers 431 before any handler runs; a lower --max-header-bytes is
    // answered INVALID_ARGUMENT naming the metadata.
    let status = client.jobs.list_jobs(request).await.expect_err("32 KiB");
    assert!(
        status.message().contains("431") || status.message().contains("metadata"),
        "{status:?}"
    );

    let jobs = client
        .jobs
        .list_jobs(pb::ListJobsRequest::default())
        .await?
        .into_inner()
        .jobs;
    assert!(
        jobs.is_empty(),
        "hostile submissions created jobs: {jobs:?}"
    );

    // Shell syntax in a template's arguments: ffmpeg gets each as one
    // literal argument, fails on it, and no shell ever runs the payload.
    let marker = dir.join("injected");
    let m = marker.display();
    let template = format!(
        "specificationVersion: jobtemplate-2023-09\nname: sneaky\nsteps:\n- name: Pwn\n  script:\n    actions:\n      onRun:\n        command: ffmpeg\n        args: ['-i', '$(touch {m})', '; touch {m}', '`touch {m}`', '| touch {m}', '&& touch {m}']\n"
    );
    let request = pb::SubmitJobRequest {
        template: Some(pb::submit_job_request::Template::TemplateDocument(template)),
        ..Default::default()
    };
    let job = client.jobs.submit_job(request).await?.into_inner();
    let job = client.wait_until_finished(&job.id).await?;
    assert_eq!(state_of(&job), pb::JobState::Failed, "{job:?}");
    let tasks = client.tasks(&job.id).await?;
    assert!(
        tasks.iter().any(|t| t.log_tail.contains("$(touch")),
        "ffmpeg saw the payload as a literal argument: {tasks:?}"
    );
    assert!(!marker.exists(), "a shell ran the injected command");
    Ok(())
}

#[derive(Clone, PartialEq, prost::Message)]
struct WrongWireType {
    /// `builtin_template` is a string (length-delimited); this is a fixed64.
    #[prost(fixed64, tag = "1")]
    name: u64,
}

#[derive(Clone, PartialEq, prost::Message)]
struct WithUnknownField {
    #[prost(string, tag = "1")]
    job_id: String,
    #[prost(string, tag = "99")]
    owner: String,
}

/// Calls `kiln.v1.JobService/<method>` with `message` as its request bytes.
async fn raw_call<M>(farm: &Farm, method: &str, message: M) -> Result<pb::Job, tonic::Status>
where
    M: prost::Message + Send + Sync + Default + 'static,
{
    let internal = |e: String| tonic::Status::internal(e);
    let channel = tonic::transport::Channel::from_shared(farm.gateway_url())
        .map_err(|e| internal(e.to_string()))?
        .connect()
        .await
        .map_err(|e| internal(e.to_string()))?;
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.map_err(|e| internal(e.to_string()))?;
    let mut request = tonic::Request::new(message);
    let bearer = format!("Bearer {}", farm.admin_token());
    request.metadata_mut().insert(
        "authorization",
        bearer.parse().map_err(|_| internal("token".into()))?,
    );
    let path = http::uri::PathAndQuery::try_from(format!("/kiln.v1.JobService/{method}"))
        .map_err(|e| internal(e.to_string()))?;
    grpc.unary(
        request,
        path,
        tonic_prost::ProstCodec::<M, pb::Job>::default(),
    )
    .await
    .map(tonic::Response::into_inner)
}

/// A call the gateway cannot finish in time (its scheduler is frozen)
/// answers DEADLINE_EXCEEDED on gRPC and 504 on REST instead of hanging.
#[tokio::test(flavor = "multi_thread")]
async fn a_call_the_gateway_cannot_finish_times_out() -> anyhow::Result<()> {
    let (mut farm, _dir) =
        kiln_tests::start_farm_with(0, false, &[("KILN_REQUEST_TIMEOUT_SECONDS", "1")]).await?;
    let mut client = Client::connect(&farm).await?;
    // Warm the gateway's channel to the scheduler first.
    client
        .jobs
        .list_jobs(pb::ListJobsRequest::default())
        .await?;
    let scheduler = farm.scheduler_mut().context("a scheduler")?;
    scheduler.pause()?;
    let status = client
        .jobs
        .list_jobs(pb::ListJobsRequest::default())
        .await
        .expect_err("a frozen scheduler");
    let base = farm.gateway_http_url();
    let token = farm.admin_token().to_owned();
    let rest = tokio::task::spawn_blocking(move || {
        match ureq::get(&format!("{base}/v1/jobs"))
            .set("authorization", &format!("Bearer {token}"))
            .call()
        {
            Ok(response) => response.status(),
            Err(ureq::Error::Status(code, _)) => code,
            Err(_) => 0,
        }
    })
    .await?;
    farm.scheduler_mut().context("a scheduler")?.resume()?;
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert_eq!(rest, 504);
    farm.shutdown().await?;
    Ok(())
}
