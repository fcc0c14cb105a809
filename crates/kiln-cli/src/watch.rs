//! Follows a job until it ends: a progress bar for the job (with its ETA)
//! and one per busy worker, fed by the job's event stream, which resumes
//! after the last event seen whenever it breaks. Without a terminal (a
//! pipeline script, a CI log) bars draw nothing, so the job's progress is
//! written as a line whenever its counts or state change.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use kiln_proto::v1::job_event::Event;
use kiln_proto::v1::{
    GetJobRequest, Job, TaskProgress, TaskState, TaskStateChanged, WatchJobRequest,
};

use crate::connect::JobClient;
use crate::error::CliError;
use crate::format::{frames, is_final, job_state};

/// Consecutive failed attempts to (re)open the progress stream before giving up.
const MAX_RECONNECTS: u32 = 20;
const RECONNECT_PAUSE: Duration = Duration::from_secs(1);
const BAR_TEMPLATE: &str =
    "{spinner:.green} [{elapsed_precise}] {bar:40.cyan/blue} {pos}/{len} tasks  {msg}";
const WORKER_TEMPLATE: &str = "  {prefix:<24} {bar:30.yellow/blue} {percent:>3}%  {msg}";

/// The job's bar and one bar per busy worker.
struct View {
    bars: MultiProgress,
    job: ProgressBar,
    /// Bars of running tasks, by task id.
    tasks: HashMap<String, ProgressBar>,
    /// Without a terminal: the last line written, so only changes are.
    plain: Option<String>,
    /// The last status line printed of each task, without a terminal.
    statuses: HashMap<String, String>,
}

impl View {
    fn new(job: &Job) -> Self {
        let bars = MultiProgress::new();
        let bar = bars.add(progress_bar(job));
        let plain = (!std::io::stderr().is_terminal()).then(String::new);
        Self {
            bars,
            job: bar,
            tasks: HashMap::new(),
            plain,
            statuses: HashMap::new(),
        }
    }

    /// The job's record: on its bar, or as a line when it changed.
    fn show(&mut self, job: &Job) {
        let summary = show(&self.job, job);
        if let Some(last) = &mut self.plain {
            let line = format!(
                "{}/{} tasks, {summary}",
                job.tasks_succeeded, job.tasks_total
            );
            // The ETA moves with every record; a line is worth it when the rest does.
            let without_eta = line.split(", ETA").next().unwrap_or_default();
            if last.split(", ETA").next().unwrap_or_default() != without_eta {
                eprintln!("{line}");
                *last = line;
            }
        }
    }

    fn task_changed(&mut self, change: &TaskStateChanged) {
        if let Some(failure) = failed_task_line(change) {
            match self.plain {
                Some(_) => eprintln!("{failure}"),
                None => self.job.println(failure),
            }
        }
        if change.state() == TaskState::Running {
            let bar = self.bars.add(ProgressBar::new(100));
            if let Ok(style) = ProgressStyle::with_template(WORKER_TEMPLATE) {
                bar.set_style(style.progress_chars("=> "));
            }
            let worker = if change.worker_id.is_empty() {
                "?"
            } else {
                &change.worker_id
            };
            bar.set_prefix(worker.to_owned());
            bar.set_message(format!("{}[{}]", change.step_name, change.index));
            if let Some(old) = self.tasks.insert(change.task_id.clone(), bar) {
                old.finish_and_clear();
            }
        } else if let Some(bar) = self.tasks.remove(&change.task_id) {
            bar.finish_and_clear();
            self.bars.remove(&bar);
        }
    }

    fn progress(&mut self, progress: &TaskProgress) {
        if let Some(bar) = self.tasks.get(&progress.task_id) {
            bar.set_position((f64::from(progress.fraction) * 100.0).round() as u64);
            let task = bar.message();
            let task = task.split([' ', '|']).next().unwrap_or_default().to_owned();
            let mut message = task.clone();
            if let Some(frame) = progress.frame {
                message.push_str(&format!(" frame {frame}"));
            }
            if !progress.status.is_empty() {
                message.push_str(&format!(" | {}", progress.status));
            }
            bar.set_message(message);
        }
        // Without a terminal, a task's status line is printed when it changes.
        if self.plain.is_some() && !progress.status.is_empty() {
            let last = self
                .statuses
                .insert(progress.task_id.clone(), progress.status.clone());
            if last.as_ref() != Some(&progress.status) {
                eprintln!(
                    "task {}: {} ({:.0}%)",
                    progress.task_id,
                    progress.status,
                    progress.fraction * 100.0
                );
            }
        }
    }

    fn finish(&mut self, job: &Job) {
        for (_, bar) in self.tasks.drain() {
            bar.finish_and_clear();
        }
        self.job.finish_with_message(job_state(job.state()));
    }

    fn abandon(&self) {
        self.job.abandon();
    }
}

/// Shows `job`'s progress until it reaches a final state and returns it as
/// it ended. Reconnects if the stream breaks (e.g. the gateway restarts).
pub async fn follow(jobs: &JobClient, job: Job) -> Result<Job, CliError> {
    let mut view = View::new(&job);
    let mut job = job;
    let mut failures = 0;
    let mut last_error = String::from("the progress stream kept ending early");
    // The last event seen: a reconnect resumes after it, missing nothing.
    let mut last_seq = None;
    loop {
        match stream_events(jobs, &job.id, &mut view, &mut last_seq).await {
            // Progress was made, so the connection works; start counting afresh.
            Ok(Some(latest)) => {
                job = latest;
                failures = 0;
            }
            Ok(None) => failures += 1,
            Err(status) if is_permanent(&status) => {
                view.abandon();
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
            view.show(&job);
            // Scripts read the job's end as an event like any other.
            crate::output::emit(&kiln_proto::v1::JobEvent {
                job_id: job.id.clone(),
                event: Some(Event::JobChanged(job.clone())),
                ..Default::default()
            });
        }
        if is_final(job.state()) {
            break;
        }
        if failures > MAX_RECONNECTS {
            view.abandon();
            return Err(CliError::WatchLost {
                id: job.id.clone(),
                reason: last_error,
            });
        }
        tokio::time::sleep(RECONNECT_PAUSE).await;
    }
    view.finish(&job);
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
    view: &mut View,
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
        crate::output::emit(&event);
        if event.seq > 0 {
            *last_seq = Some(event.seq);
        }
        let snapshot = match event.event {
            Some(Event::JobChanged(job)) => Some(job),
            Some(Event::TaskStateChanged(change)) => {
                view.task_changed(&change);
                None
            }
            Some(Event::TaskProgress(progress)) => {
                view.progress(&progress);
                None
            }
            _ => None,
        };
        if let Some(job) = snapshot {
            view.show(&job);
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

/// Puts the job's record on its bar; returns the bar's message.
fn show(bar: &ProgressBar, job: &Job) -> String {
    bar.set_length(u64::from(job.tasks_total));
    bar.set_position(u64::from(job.tasks_succeeded));
    let mut message = job_state(job.state()).to_owned();
    if job.tasks_running > 0 {
        message.push_str(&format!(", {} running", job.tasks_running));
    }
    if job.tasks_failed > 0 {
        message.push_str(&format!(", {} failed", job.tasks_failed));
    }
    if let Some(eta) = &job.eta {
        message.push_str(&format!(", {}", eta_text(eta)));
    }
    bar.set_message(message.clone());
    message
}

/// Task failures are worth a line above the bar as they happen.
fn failed_task_line(change: &TaskStateChanged) -> Option<String> {
    if change.state() != TaskState::Failed {
        return None;
    }
    let worker = if change.worker_id.is_empty() {
        "?"
    } else {
        &change.worker_id
    };
    Some(format!(
        "task {}[{}] failed on {worker}: {}",
        change.step_name, change.index, change.message
    ))
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

/// "ETA 2m05s ± 20s", marked when it rests on earlier jobs of the scene alone.
pub fn eta_text(eta: &kiln_proto::v1::Eta) -> String {
    let basis = if eta.samples == 0 && eta.earlier_samples > 0 {
        " (from earlier jobs of this scene)"
    } else {
        ""
    };
    format!(
        "ETA {} ± {}{basis}",
        duration_text(eta.seconds_left),
        duration_text(eta.plus_minus_seconds)
    )
}

fn duration_text(seconds: u32) -> String {
    match seconds {
        s if s >= 3600 => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
        s if s >= 60 => format!("{}m{:02}s", s / 60, s % 60),
        s => format!("{s}s"),
    }
}
