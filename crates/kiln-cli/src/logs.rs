//! `kiln watch` and `kiln logs`: following a job, and reading or tailing a
//! task's log.

use std::io::Write;

use futures::StreamExt;
use kiln_proto::v1::{GetJobRequest, GetTaskLogRequest, JobState, Task, WatchTaskLogRequest};

use crate::cli::{JobArgs, LogsArgs};
use crate::connect::{Gateway, JobClient};
use crate::error::CliError;
use crate::format::job_state;
use crate::watch;

pub async fn watch(args: JobArgs) -> Result<(), CliError> {
    let gateway = Gateway::connect(&args.gateway).await?;
    let request = GetJobRequest { job_id: args.job };
    let job = gateway
        .jobs
        .clone()
        .get_job(request)
        .await
        .map_err(CliError::rpc("getting the job"))?
        .into_inner();
    let id = job.id.clone();
    let job = tokio::select! {
        result = watch::follow(&gateway.jobs, job) => result?,
        _ = tokio::signal::ctrl_c() => return Err(CliError::Interrupted),
    };
    say!("job {id} {}", job_state(job.state()));
    // A script waiting on the job learns how it ended from the exit code.
    match job.state() {
        JobState::Failed | JobState::Cancelled => Err(crate::render::job_ended(&job)),
        _ => Ok(()),
    }
}

pub async fn run(args: LogsArgs) -> Result<(), CliError> {
    let gateway = Gateway::connect(&args.gateway).await?;
    let task = find_task(&gateway.jobs, &args).await?;
    if args.follow {
        return follow(&gateway.jobs, &args.job, &task.id).await;
    }
    let request = GetTaskLogRequest {
        job_id: args.job.clone(),
        task_id: task.id.clone(),
    };
    let log = gateway
        .jobs
        .clone()
        .get_task_log(request)
        .await
        .map_err(CliError::rpc("finding the task's log"))?
        .into_inner();
    let mut chunks = gateway.assets().download_stream(&log.digest).await?;
    if crate::output::is_json() {
        let mut text = Vec::new();
        while let Some(chunk) = chunks.next().await {
            text.extend_from_slice(&chunk?);
        }
        crate::output::emit(&serde_json::json!({
            "job_id": args.job,
            "task_id": task.id,
            "log": String::from_utf8_lossy(&text),
        }));
        return Ok(());
    }
    let mut stdout = std::io::stdout().lock();
    while let Some(chunk) = chunks.next().await {
        let chunk = chunk?;
        if stdout.write_all(&chunk).is_err() {
            // The reader went away (e.g. `| head`): nothing more to do.
            return Ok(());
        }
    }
    Ok(())
}

/// Prints the task's recent lines, then new ones until the task ends.
async fn follow(jobs: &JobClient, job_id: &str, task_id: &str) -> Result<(), CliError> {
    let request = WatchTaskLogRequest {
        job_id: job_id.to_owned(),
        task_id: task_id.to_owned(),
    };
    let mut lines = jobs
        .clone()
        .watch_task_log(request)
        .await
        .map_err(CliError::rpc("following the task's log"))?
        .into_inner();
    while let Some(batch) = lines
        .message()
        .await
        .map_err(CliError::rpc("following the task's log"))?
    {
        for line in batch.lines {
            if crate::output::is_json() {
                crate::output::emit(&serde_json::json!({"task_id": task_id, "line": line}));
            } else {
                say!("{line}");
            }
        }
    }
    Ok(())
}

/// The task named by id, or by index within `--step` (default: the first step).
async fn find_task(jobs: &JobClient, args: &LogsArgs) -> Result<Task, CliError> {
    let tasks = crate::outputs::tasks(jobs, &args.job).await?;
    let step = args
        .step
        .clone()
        .or_else(|| tasks.first().map(|t| t.step_name.clone()));
    let wanted_index: Option<u32> = args.task.parse().ok();
    tasks
        .into_iter()
        .find(|t| {
            t.id == args.task
                || (wanted_index == Some(t.index) && Some(&t.step_name) == step.as_ref())
        })
        .ok_or_else(|| CliError::NoSuchTask {
            job: args.job.clone(),
            task: args.task.clone(),
        })
}
