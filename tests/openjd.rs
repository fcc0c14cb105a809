//! Open Job Description templates run as written, from a submitter's token:
//! the specification's own samples (unchanged, in tests/fixtures/openjd)
//! and a template with job and step environments.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{Context, Result, bail};
use kiln_localfarm::Farm;
use kiln_proto::v1 as pb;
use kiln_proto::v1::token_service_client::TokenServiceClient;
use kiln_tests::{Client, example_scene, repo_root, start_farm, state_of};

fn fixture(name: &str) -> Result<String> {
    let path = repo_root().join("tests/fixtures/openjd").join(name);
    std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))
}

/// A client acting as `name`, a submitter (not an admin).
async fn submitter(farm: &Farm, name: &str) -> Result<Client> {
    let channel = tonic::transport::Channel::from_shared(farm.gateway_url())?
        .connect()
        .await?;
    let credentials = kiln_asset_client::CallCredentials::bearer(farm.admin_token())?;
    let mut tokens = TokenServiceClient::with_interceptor(channel, credentials);
    let secret = tokens
        .create_token(pb::CreateTokenRequest {
            name: name.to_owned(),
            role: pb::Role::Submitter as i32,
        })
        .await?
        .into_inner()
        .secret;
    Client::connect_as(farm, &secret).await
}

fn inline(
    template: String,
    parameters: &[(&str, &str)],
    inputs: Vec<pb::JobInput>,
) -> pb::SubmitJobRequest {
    pb::SubmitJobRequest {
        template: Some(pb::submit_job_request::Template::TemplateDocument(template)),
        parameters: parameters
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        inputs,
        ..Default::default()
    }
}

/// Every event of the job, from its first, until its final record.
async fn events(client: &mut Client, job_id: &str) -> Result<Vec<pb::JobEvent>> {
    let mut stream = client
        .jobs
        .watch_job(pb::WatchJobRequest {
            job_id: job_id.to_owned(),
            after_seq: Some(0),
        })
        .await?
        .into_inner();
    let mut seen = Vec::new();
    while let Some(event) = tokio::time::timeout(kiln_tests::JOB_DEADLINE, stream.message())
        .await
        .context("the job's events stopped")??
    {
        let done = matches!(&event.event, Some(pb::job_event::Event::JobChanged(job)) if kiln_tests::is_final(job));
        seen.push(event);
        if done {
            return Ok(seen);
        }
    }
    bail!("the watch ended before the job did")
}

async fn log_of(client: &mut Client, job_id: &str, task_id: &str, dir: &Path) -> Result<String> {
    let log = client
        .jobs
        .get_task_log(pb::GetTaskLogRequest {
            job_id: job_id.to_owned(),
            task_id: task_id.to_owned(),
        })
        .await?
        .into_inner();
    let path = dir.join(format!("{task_id}.log"));
    client.assets.download_to(&log.digest, &path).await?;
    Ok(std::fs::read_to_string(path)?)
}

#[tokio::test(flavor = "multi_thread")]
async fn stdout_messages_sample_reports_progress_and_status() -> Result<()> {
    let (farm, dir) = start_farm(1, false).await?;
    let mut client = submitter(&farm, "studio").await?;
    let job = client
        .jobs
        .submit_job(inline(fixture("stdout-messages.yaml")?, &[], Vec::new()))
        .await?
        .into_inner();
    let events = events(&mut client, &job.id).await?;
    let job = client.job(&job.id).await?;
    assert_eq!(state_of(&job), pb::JobState::Succeeded, "{job:?}");
    let progress: Vec<(f32, String)> = events
        .iter()
        .filter_map(|e| match &e.event {
            Some(pb::job_event::Event::TaskProgress(p)) => Some((p.fraction, p.status.clone())),
            _ => None,
        })
        .collect();
    // The scheduler keeps about one progress event a second per task, but
    // always one whose status line changed: the sample's second status
    // arrives with its 50 % progress.
    assert!(
        progress.contains(&(0.5, "Processing the things".to_owned())),
        "openjd_progress and openjd_status reach the event stream: {progress:?}"
    );
    assert!(
        progress
            .iter()
            .any(|(_, status)| status == "Loading the things"),
        "{progress:?}"
    );
    let tasks = client.tasks(&job.id).await?;
    let log = log_of(&mut client, &job.id, &tasks[0].id, dir.path()).await?;
    assert!(
        log.contains("openjd_status: Processing the things"),
        "{log}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn blender_ffmpeg_sample_renders_a_blend_and_encodes_it() -> Result<()> {
    let (farm, dir) = start_farm(1, false).await?;
    let scene = example_scene(dir.path())?;
    let mut client = submitter(&farm, "studio").await?;
    let stored = client.assets.upload_file(&scene).await?;
    // The sample's default BlenderFile is ./scene/blender_scene.blend, relative
    // to the job: the scene goes there. Its encode step reads
    // render-%04d.<Format>, so the frames keep the format's name as extension.
    let request = inline(
        fixture("blender-ffmpeg.yaml")?,
        &[("EndFrame", "3"), ("OutputPattern", "render-####.PNG")],
        vec![pb::JobInput {
            path: "scene/blender_scene.blend".into(),
            digest: stored.digest,
        }],
    );
    let job = client.jobs.submit_job(request).await?.into_inner();
    let job = client.wait_until_finished(&job.id).await?;
    let tasks = client.tasks(&job.id).await?;
    assert_eq!(state_of(&job), pb::JobState::Succeeded, "{job:?} {tasks:?}");
    let outputs: Vec<String> = client
        .outputs(&job.id)
        .await?
        .into_iter()
        .map(|o| o.path)
        .collect();
    assert_eq!(
        outputs,
        [
            "output/render-0001.PNG",
            "output/render-0002.PNG",
            "output/render-0003.PNG"
        ]
    );
    let encode = tasks
        .iter()
        .find(|t| t.step_name == "CreateVideoFromRender")
        .context("no encode task")?;
    let log = log_of(&mut client, &job.id, &encode.id, dir.path()).await?;
    assert!(
        log.contains("Output #0, mp4") && log.contains("blend-video-"),
        "ffmpeg encoded the frames the first step rendered: {log}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn environments_are_entered_once_per_session() -> Result<()> {
    let (farm, dir) = start_farm(1, false).await?;
    let mut client = submitter(&farm, "studio").await?;
    let job = client
        .jobs
        .submit_job(inline(fixture("step-environment.yaml")?, &[], Vec::new()))
        .await?
        .into_inner();
    let job = client.wait_until_finished(&job.id).await?;
    let tasks = client.tasks(&job.id).await?;
    assert_eq!(state_of(&job), pb::JobState::Succeeded, "{job:?} {tasks:?}");
    let out = dir.path().join("downloaded");
    client.download_outputs(&job.id, &out).await?;
    let mut lines = HashMap::new();
    for shot in 1..=3 {
        let text = std::fs::read_to_string(out.join(format!("out/shot-{shot}.txt")))?;
        lines.insert(shot, text.trim().to_owned());
    }
    for (shot, line) in &lines {
        let fields: Vec<&str> = line.split(' ').collect();
        // STUDIO_NAME (job environment), TOOL_MODE (step environment's
        // variables, with the OUT directory mapped into the session),
        // TOOL_TOKEN (exported by onEnter), and how often onEnter ran.
        assert_eq!(fields[0], "kiln-studio", "shot {shot}: {line}");
        assert_eq!(fields[1], "fast", "shot {shot}: {line}");
        assert!(fields[2].ends_with("/out"), "shot {shot}: {line}");
        assert_eq!(
            fields[3..],
            ["token-1", "1"],
            "one worker slot: one session, entered once ({line})"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn bundle_submit_brings_back_the_out_directory() -> Result<()> {
    let (farm, dir) = start_farm(1, false).await?;
    let token = {
        // `kiln bundle submit` as the submitter: a token of its own.
        let channel = tonic::transport::Channel::from_shared(farm.gateway_url())?
            .connect()
            .await?;
        let credentials = kiln_asset_client::CallCredentials::bearer(farm.admin_token())?;
        TokenServiceClient::with_interceptor(channel, credentials)
            .create_token(pb::CreateTokenRequest {
                name: "bundler".to_owned(),
                role: pb::Role::Submitter as i32,
            })
            .await?
            .into_inner()
            .secret
    };
    // The Blender + ffmpeg sample as a Deadline job bundle: the template, its
    // scene where the template's default names it, and parameter values.
    let bundle = dir.path().join("bundle");
    std::fs::create_dir_all(bundle.join("scene"))?;
    std::fs::write(
        bundle.join("template.yaml"),
        fixture("blender-ffmpeg.yaml")?,
    )?;
    let scene = example_scene(dir.path())?;
    std::fs::copy(&scene, bundle.join("scene/blender_scene.blend"))?;
    std::fs::write(
        bundle.join("parameter_values.yaml"),
        "parameterValues:\n  - name: EndFrame\n    value: 2\n  - name: deadline:priority\n    value: 60\n",
    )?;
    let kiln = kiln_localfarm::locate_binary("kiln")?;
    let output = tokio::process::Command::new(kiln)
        .args(["bundle", "submit"])
        .arg(&bundle)
        .args(["-p", "OutputPattern=render-####.PNG"])
        .args(["--gateway", &farm.gateway_url()])
        .args(["--token", &token])
        .env_remove("KILN_GATEWAY")
        .env_remove("KILN_TOKEN")
        .current_dir(dir.path())
        .kill_on_drop(true)
        .output()
        .await?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "kiln bundle submit failed: {stderr}"
    );
    for frame in ["render-0001.PNG", "render-0002.PNG"] {
        let path = bundle.join("output").join(frame);
        let image = image::open(&path)
            .with_context(|| format!("{} was not brought back: {stderr}", path.display()))?;
        assert_eq!((image.width(), image.height()), (320, 180));
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_templates_and_rules_are_refused_at_submission() -> Result<()> {
    let (farm, _dir) = start_farm(1, false).await?;
    let mut client = submitter(&farm, "studio").await?;
    let sample = fixture("stdout-messages.yaml")?;
    let many_files: String = (0..40)
        .map(|n| format!("    - name: F{n}\n      type: TEXT\n      data: x\n"))
        .collect();
    let too_many_files = format!(
        "specificationVersion: jobtemplate-2023-09\nname: files\nsteps:\n- name: S\n  script:\n    actions:\n      onRun:\n        command: bash\n        args: ['{{{{Task.File.F0}}}}']\n    embeddedFiles:\n{many_files}"
    );
    let rule = |source_format: &str, destination: &str| pb::PathMappingRule {
        source_path_format: source_format.to_owned(),
        source_path: "/mnt/projects".to_owned(),
        destination_path: destination.to_owned(),
    };
    let mut climbing = inline(sample.clone(), &[], Vec::new());
    climbing.path_mapping_rules = vec![rule("POSIX", "../../etc")];
    let mut unknown_format = inline(sample.clone(), &[], Vec::new());
    unknown_format.path_mapping_rules = vec![rule("VMS", "projects")];
    let cases = [
        (
            "an undefined embedded file",
            inline(
                sample.replace("Task.File.Run", "Task.File.Nope"),
                &[],
                Vec::new(),
            ),
            "Nope",
        ),
        (
            "too many embedded files",
            inline(too_many_files, &[], Vec::new()),
            "embedded files",
        ),
        ("a rule climbing out of the session", climbing, "'..'"),
        ("a rule of an unknown path format", unknown_format, "VMS"),
        (
            "a template that is not YAML",
            inline("steps: [".to_owned(), &[], Vec::new()),
            "template",
        ),
    ];
    for (what, request, mentions) in cases {
        let status = client.jobs.submit_job(request).await.expect_err(what);
        assert_eq!(
            status.code(),
            tonic::Code::InvalidArgument,
            "{what}: {status:?}"
        );
        assert!(
            status.message().contains(mentions),
            "{what}: {:?} should mention {mentions:?}",
            status.message()
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn ffmpeg_review_media_sample_reads_path_parameters_in_its_steps() -> Result<()> {
    let (farm, dir) = start_farm(1, false).await?;
    let mut client = submitter(&farm, "studio").await?;
    let frames = dir.path().join("frames");
    std::fs::create_dir_all(&frames)?;
    let status = std::process::Command::new("ffmpeg")
        .args([
            "-v",
            "error",
            "-f",
            "lavfi",
            "-i",
            "testsrc=size=128x72:rate=24",
            "-frames:v",
            "4",
        ])
        .arg(frames.join("f_%04d.png"))
        .status()?;
    assert!(status.success(), "ffmpeg could not make the test frames");
    let mut inputs = Vec::new();
    for n in 1..=4 {
        let stored = client
            .assets
            .upload_file(&frames.join(format!("f_{n:04}.png")))
            .await?;
        inputs.push(pb::JobInput {
            path: format!("frames/f_{n:04}.png"),
            digest: stored.digest,
        });
    }
    // InputFile and OutputDir are PATH parameters the steps use as
    // {{Param.InputFile}}: relative values are places in the session.
    let request = inline(
        fixture("ffmpeg.yaml")?,
        &[
            ("InputFile", "frames/f_%04d.png"),
            ("OutputDir", "review"),
            ("EndFrame", "4"),
        ],
        inputs,
    );
    let job = client.jobs.submit_job(request).await?.into_inner();
    let job = client.wait_until_finished(&job.id).await?;
    let tasks = client.tasks(&job.id).await?;
    assert_eq!(state_of(&job), pb::JobState::Succeeded, "{job:?} {tasks:?}");
    let outputs: Vec<String> = client
        .outputs(&job.id)
        .await?
        .into_iter()
        .map(|o| o.path)
        .collect();
    assert_eq!(
        outputs,
        [
            "review/h264_hq_output.mp4",
            "review/prores_0_output.mov",
            "review/prores_3_output.mov",
            "review/webm_output.webm"
        ]
    );
    let out = dir.path().join("downloaded");
    client.download_outputs(&job.id, &out).await?;
    let (frames, _, _) = kiln_tests::probe_video(&out.join("review/webm_output.webm"))?;
    assert_eq!(
        frames, 4,
        "the webm step read the h264 step's output at the same path"
    );
    Ok(())
}
