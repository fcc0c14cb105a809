//! Follows a job's progress on a progress bar until it ends.

use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use kiln_proto::v1::job_event::Event;
use kiln_proto::v1::{GetJobRequest, Job, TaskState, TaskStateChanged, WatchJobRequest};

use crate::connect::JobClient;
use crate::error::CliError;
use crate::format::{frames, is_final, job_state};

/// Consecutive failed attempts to (re)open the progress stream before giving up.
const MAX_RECONNECTS: u32 = 20;
const RECONNECT_PAUSE: Duration = Duration::from_secs(1);
const BAR_TEMPLATE: &str =
    "{spinner:.green} [{elapsed_precise}] {bar:40.cyan/blue} {pos}/{len} tasks  {msg}";

/// Shows `job`'s progress until it reaches a final state and returns it as
/// it ended. Reconnects if the stream breaks (e.g. the gateway restarts).
pub async fn follow(jobs: &JobClient, job: Job) -> Result<Job, CliError> {
    let bar = progress_bar(&job);
    let mut job = job;
    let mut failures = 0;
    let mut last_error = String::from("the progress stream kept ending early");
    // The last event seen: a reconnect resumes after it, missing nothing.
    let mut last_seq = None;
    loop {
        match stream_events(jobs, &job.id, &bar, &mut last_seq).await {
            // Progress was made, so the connection works; start counting afresh.
            Ok(Some(latest)) => {
                job = latest;
                failures = 0;
            }
            Ok(None) => failures += 1,
            Err(status) if is_permanent(&status) => {
                bar.abandon();
                return Err(CliError::Rpc {
                    action: "watching the job",
                    status,
                });
            }
            Err(status) => {
                tracing::debug!(error = %status, failures, "job progress stream broke");
                last_error = status.message().to_owned();
                failures += 1;
            }
        }
        // The stream may end without a final event; ask for the job itself.
        if !is_final(job.state())
            && let Some(current) = fetch_job(jobs, &job.id).await
        {
            job = current;
            show(&bar, &job);
        }
        if is_final(job.state()) {
            break;
        }
        if failures > MAX_RECONNECTS {
            bar.abandon();
            return Err(CliError::WatchLost {
                id: job.id.clone(),
                reason: last_error,
            });
        }
        tokio::time::sleep(RECONNECT_PAUSE).await;
    }
    bar.finish_with_message(job_state(job.state()));
    Ok(job)
}

/// Errors that retrying cannot fix.
fn is_permanent(status: &tonic::Status) -> bool {
    use tonic::Code;
    matches!(
        status.code(),
        Code::NotFound
            | Code::InvalidArgument
            | Code::PermissionDenied
            | Code::Unauthenticated
            | Code::Unimplemented
    )
}

/// Reads one WatchJob stream to its end; returns the last job snapshot seen.
async fn stream_events(
    jobs: &JobClient,
    job_id: &str,
    bar: &ProgressBar,
    last_seq: &mut Option<u64>,
) -> Result<Option<Job>, tonic::Status> {
    let request = WatchJobRequest {
        job_id: job_id.to_owned(),
        after_seq: *last_seq,
    };
    let mut stream = jobs.clone().watch_job(request).await?.into_inner();
    let mut latest = None;
    while let Some(event) = stream.message().await? {
        tracing::debug!(?event, "job event");
        if event.seq > 0 {
            *last_seq = Some(event.seq);
        }
        let snapshot = match event.event {
            Some(Event::JobChanged(job)) => Some(job),
            Some(Event::TaskStateChanged(change)) => {
                report_failed_task(bar, &change);
                // Task counts may change without a JobChanged event; read them.
                fetch_job(jobs, job_id).await
            }
            _ => None,
        };
        if let Some(job) = snapshot {
            show(bar, &job);
            let done = is_final(job.state());
            latest = Some(job);
            if done {
                break;
            }
        }
    }
    Ok(latest)
}

/// The job as it is now, or `None` if the gateway cannot say.
async fn fetch_job(jobs: &JobClient, job_id: &str) -> Option<Job> {
    let request = GetJobRequest {
        job_id: job_id.to_owned(),
    };
    match jobs.clone().get_job(request).await {
        Ok(response) => Some(response.into_inner()),
        Err(status) => {
            tracing::debug!(error = %status, "cannot read the job");
            None
        }
    }
}

fn progress_bar(job: &Job) -> ProgressBar {
    let bar = ProgressBar::new(u64::from(job.tasks_total));
    if let Ok(style) = ProgressStyle::with_template(BAR_TEMPLATE) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.enable_steady_tick(Duration::from_millis(200));
    show(&bar, job);
    bar
}

fn show(bar: &ProgressBar, job: &Job) {
    bar.set_length(u64::from(job.tasks_total));
    bar.set_position(u64::from(job.tasks_succeeded));
    let mut message = job_state(job.state()).to_owned();
    if job.tasks_running > 0 {
        message.push_str(&format!(", {} running", job.tasks_running));
    }
    if job.tasks_failed > 0 {
        message.push_str(&format!(", {} failed", job.tasks_failed));
    }
    bar.set_message(message);
}

/// Task failures are worth a line above the bar as they happen.
fn report_failed_task(bar: &ProgressBar, change: &TaskStateChanged) {
    if change.state() != TaskState::Failed {
        return;
    }
    let worker = if change.worker_id.is_empty() {
        "?"
    } else {
        &change.worker_id
    };
    bar.println(format!(
        "task {}[{}] failed on {worker}: {}",
        change.step_name, change.index, change.message
    ));
}

/// One line about a task for failure reports.
pub fn describe_task(task: &kiln_proto::v1::Task) -> String {
    let mut text = format!("{}[{}]", task.step_name, task.index);
    if !task.frames.is_empty() {
        text.push_str(&format!(" frames {}", frames(&task.frames)));
    }
    if !task.worker_id.is_empty() {
        text.push_str(&format!(" on {}", task.worker_id));
    }
    if let Some(code) = task.exit_code {
        text.push_str(&format!(", exit code {code}"));
    }
    text
}
