//! Open Job Description templates run as written, from a submitter's token:
//! the specification's own samples (unchanged, in tests/fixtures/openjd),
//! a template with job and step environments, and a cancelled action.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use kiln_proto::v1 as pb;
use kiln_tests::{
    Client, example_scene, processes_with, repo_root, start_farm, state_of, submitter,
};
use tokio::time::Instant;

fn fixture(name: &str) -> Result<String> {
    let path = repo_root().join("tests/fixtures/openjd").join(name);
    std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))
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
    // `kiln bundle submit` as the submitter: a token of its own.
    let token = kiln_tests::create_token(&farm, "bundler", pb::Role::Submitter, 0).await?;
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

/// A step whose action runs an embedded script that ignores the notify of
/// a cancel (NOTIFY_THEN_TERMINATE, 10 s) and leaves children behind: one
/// that ends on SIGTERM, and one in a session of its own that ignores it.
const TERM_IGNORING_TEMPLATE: &str = r#"
specificationVersion: jobtemplate-2023-09
name: IgnoresTerm
steps:
  - name: Wait
    script:
      actions:
        onRun:
          command: "{{Task.File.Run}}"
          cancelation:
            mode: NOTIFY_THEN_TERMINATE
            notifyPeriodInSeconds: 10
      embeddedFiles:
        - name: Run
          type: TEXT
          runnable: true
          data: |
            #!/usr/bin/env bash
            trap 'echo "openjd_status: notified, carrying on"' TERM
            sleep 4107 &
            setsid sh -c 'trap "" TERM HUP; sleep 4109' &
            echo "openjd_status: waiting"
            while true; do sleep 1; done
"#;

/// The child that ends on the notify, and the one only the terminate ends.
const POLITE_CHILD: &str = "sleep 4107";
const TERM_IGNORING_CHILD: &str = "sleep 4109";

/// Waits (at most `within`) until no process matches any of `needles`;
/// answers with those left.
async fn gone(needles: &[&str], within: Duration) -> Vec<(u32, String)> {
    let deadline = Instant::now() + within;
    loop {
        let left: Vec<(u32, String)> = needles.iter().flat_map(|n| processes_with(n)).collect();
        if left.is_empty() || Instant::now() >= deadline {
            return left;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn cancelling_an_action_notifies_it_then_ends_it_and_its_processes() -> Result<()> {
    let (mut farm, _dir) = start_farm(1, false).await?;
    let mut client = submitter(&farm, "studio").await?;
    let job = client
        .jobs
        .submit_job(inline(TERM_IGNORING_TEMPLATE.to_owned(), &[], Vec::new()))
        .await?
        .into_inner();
    client.wait_running(&job.id).await?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while [POLITE_CHILD, TERM_IGNORING_CHILD]
        .iter()
        .any(|c| processes_with(c).is_empty())
    {
        anyhow::ensure!(
            Instant::now() < deadline,
            "the action's processes never all started"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    client
        .jobs
        .cancel_job(pb::CancelJobRequest {
            job_id: job.id.clone(),
        })
        .await?;
    let cancelled = client.wait_until_finished(&job.id).await?;
    assert_eq!(
        state_of(&cancelled),
        pb::JobState::Cancelled,
        "{cancelled:?}"
    );
    // The notify: SIGTERM, which ends the polite child while the SIGTERM-ignoring
    // one lives on into the notify period (not a SIGKILL at once).
    let left = gone(&[POLITE_CHILD], Duration::from_secs(8)).await;
    assert!(left.is_empty(), "the notify never came: {left:?}");
    assert!(
        !processes_with(TERM_IGNORING_CHILD).is_empty(),
        "the action was killed at once, without its notify period"
    );
    // Then the terminate: nothing is left after the notify period (10 s)
    // and the worker's wait for killed processes (at most 5 s), with room
    // for a busy machine.
    let left = gone(&[TERM_IGNORING_CHILD], Duration::from_secs(30)).await;
    assert!(
        left.is_empty(),
        "processes outlived the cancelled action: {left:?}"
    );
    let tasks = client.tasks(&job.id).await?;
    assert!(
        tasks.iter().all(|t| t.state() == pb::TaskState::Cancelled),
        "{tasks:?}"
    );
    // The worker ended that session and runs the next job as usual.
    let next = client
        .jobs
        .submit_job(inline(fixture("stdout-messages.yaml")?, &[], Vec::new()))
        .await?
        .into_inner();
    let next = client.wait_until_finished(&next.id).await?;
    assert_eq!(state_of(&next), pb::JobState::Succeeded, "{next:?}");
    assert!(farm.worker_mut(0).is_some_and(|w| w.is_running()));
    farm.shutdown().await?;
    Ok(())
}
