//! `kiln render`: upload a scene, submit it, follow it, fetch the results.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use kiln_proto::v1::submit_job_request::Template;
use kiln_proto::v1::{Job, JobInput, JobState, SubmitJobRequest, TaskState};

use crate::cli::RenderArgs;
use crate::connect::{Gateway, JobClient};
use crate::error::CliError;
use crate::format::{job_state, last_lines};
use crate::scene_probe::{self, SceneInfo};
use crate::variants::{self, LocalRow};
use crate::{bundle, outputs, watch};

const DEFAULT_FPS: f64 = 24.0;
/// Lines of each failed task's log shown.
const LOG_TAIL_LINES: usize = 20;

pub async fn run(args: RenderArgs) -> Result<(), CliError> {
    if !args.scene.is_file() {
        return Err(CliError::NoScene(args.scene.clone()));
    }
    let rows = args
        .variants
        .as_deref()
        .map(variants::read_table)
        .transpose()?;
    let (frames, fps) = frames_and_fps(&args).await?;
    let gateway = Gateway::connect(&args.gateway).await?;

    let mut inputs = send_bundle(&gateway, &args).await?;
    if let Some(rows) = &rows {
        inputs.extend(variants::upload(&gateway.assets(), rows).await?);
        say!("uploaded the variant table ({} rows)", rows.len());
    }
    let job = submit(&gateway.jobs, &args, &frames, fps, inputs, rows.as_deref()).await?;
    say!(
        "submitted job {} ({} tasks, frames {frames}, {fps} fps)",
        job.id,
        job.tasks_total
    );
    crate::output::emit(&serde_json::json!({"submitted": job}));
    if args.no_wait {
        say!("follow it with `kiln status {}`", job.id);
        return Ok(());
    }

    let job = follow_until_done(&gateway.jobs, job).await?;
    if job.state() != JobState::Succeeded {
        report_failure(&gateway.jobs, &job).await;
        return Err(job_ended(&job));
    }
    let out = args.out.clone().unwrap_or_else(|| default_out_dir(&job.id));
    fetch_outputs(&gateway, &job.id, &out).await
}

/// Hashes the scene and the files around it, uploads what the farm lacks,
/// and returns the job's inputs.
async fn send_bundle(gateway: &Gateway, args: &RenderArgs) -> Result<Vec<JobInput>, CliError> {
    let files = if args.no_bundle {
        bundle::collect_scene_only(&args.scene).await?
    } else {
        bundle::collect(&args.scene, args.bundle_max_bytes, args.out.as_deref()).await?
    };
    let total: u64 = files.iter().map(|f| f.size).sum();
    let sent = bundle::upload(&gateway.assets(), &files).await?;
    say!(
        "bundle of {}: {} files, {total} bytes; uploaded {} files ({} bytes), the rest already on the farm",
        args.scene.display(),
        files.len(),
        sent.files,
        sent.bytes
    );
    Ok(bundle::inputs(&files))
}

/// Frames and fps from the flags, filling gaps from the scene itself.
async fn frames_and_fps(args: &RenderArgs) -> Result<(String, f64), CliError> {
    if let Some(fps) = args.fps
        && !(fps.is_finite() && fps > 0.0)
    {
        return Err(CliError::BadFps(fps));
    }
    let probed = match (&args.frames, args.fps) {
        (Some(_), Some(_)) => None,
        _ => Some(probe(&args.scene).await),
    };
    let frames = match (&args.frames, &probed) {
        (Some(frames), _) => frames.clone(),
        (None, Some(Ok(scene))) => scene.frames(),
        (None, Some(Err(reason))) => return Err(CliError::FramesUnknown(reason.clone())),
        (None, None) => return Err(CliError::FramesUnknown("no frame range".to_owned())),
    };
    let fps = args
        .fps
        .or_else(|| probed.and_then(|p| p.ok()).map(|scene| scene.fps))
        .unwrap_or(DEFAULT_FPS);
    Ok((frames, fps))
}

async fn probe(scene: &Path) -> Result<SceneInfo, String> {
    say!(
        "reading the frame range and frame rate of {} with blender",
        scene.display()
    );
    let result = scene_probe::probe(scene).await;
    if let Err(reason) = &result {
        say!("could not read the scene ({reason}); using the flags and defaults");
    }
    result
}

/// The built-in blender job, or with `rows` the personalised-video job
/// (one video per row).
async fn submit(
    jobs: &JobClient,
    args: &RenderArgs,
    frames: &str,
    fps: f64,
    inputs: Vec<JobInput>,
    rows: Option<&[LocalRow]>,
) -> Result<Job, CliError> {
    let mut parameters = HashMap::from([
        ("Frames".to_owned(), frames.to_owned()),
        ("ChunkSize".to_owned(), args.chunk.to_string()),
        ("FrameRate".to_owned(), fps.to_string()),
    ]);
    parameters.insert("Device".to_owned(), args.device.clone());
    let check = if args.no_quality_check { "off" } else { "on" };
    parameters.insert("QualityCheck".to_owned(), check.to_owned());
    let template = match rows {
        Some(rows) => {
            let ids: Vec<String> = rows.iter().map(|row| row.id.clone()).collect();
            Template::TemplateDocument(kiln_jobmodel::variants_template(&ids)?)
        }
        None => Template::BuiltinTemplate("blender".to_owned()),
    };
    let name = args
        .scene
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default();
    let request = SubmitJobRequest {
        template: Some(template),
        parameters,
        inputs,
        name,
        priority: args.priority,
        depends_on_jobs: args.after.clone(),
        ..Default::default()
    };
    let job = jobs
        .clone()
        .submit_job(request)
        .await
        .map_err(CliError::rpc("submitting the job"))?;
    Ok(job.into_inner())
}

/// Follows the job; Ctrl-C stops watching but leaves the job running.
pub(crate) async fn follow_until_done(jobs: &JobClient, job: Job) -> Result<Job, CliError> {
    let id = job.id.clone();
    tokio::select! {
        result = watch::follow(jobs, job) => result,
        _ = tokio::signal::ctrl_c() => {
            say!("\nstopped watching; job {id} keeps running (see `kiln status {id}`, cancel with `kiln cancel {id}`)");
            Err(CliError::Interrupted)
        }
    }
}

fn default_out_dir(job_id: &str) -> PathBuf {
    PathBuf::from("kiln-out").join(job_id)
}

async fn fetch_outputs(gateway: &Gateway, job_id: &str, out: &Path) -> Result<(), CliError> {
    let outputs = outputs::list(&gateway.jobs, job_id).await?;
    let written = outputs::download_all(&gateway.assets(), &outputs, out).await?;
    for path in &written {
        say!("{}", path.display());
    }
    say!("downloaded {} files into {}", written.len(), out.display());
    crate::output::emit(&serde_json::json!({"downloaded": written, "dir": out}));
    Ok(())
}

/// Prints each failed task with its message and the end of its log.
pub async fn report_failure(jobs: &JobClient, job: &Job) {
    if !job.message.is_empty() {
        eprintln!("job {} {}: {}", job.id, job_state(job.state()), job.message);
    }
    let tasks = match crate::outputs::tasks(jobs, &job.id).await {
        Ok(tasks) => tasks,
        Err(err) => {
            eprintln!("cannot list the job's tasks: {err}");
            return;
        }
    };
    for task in tasks
        .iter()
        .filter(|task| task.state() == TaskState::Failed)
    {
        eprintln!(
            "\ntask {} failed: {}",
            watch::describe_task(task),
            task.message
        );
        if !task.log_tail.trim().is_empty() {
            eprintln!(
                "--- end of its log ---\n{}",
                last_lines(&task.log_tail, LOG_TAIL_LINES)
            );
        }
    }
}

pub fn job_ended(job: &Job) -> CliError {
    CliError::JobEnded {
        id: job.id.clone(),
        state: job.state(),
        message: if job.message.is_empty() {
            String::new()
        } else {
            format!(": {}", job.message)
        },
    }
}
