//! How jobs, tasks and times read on a terminal.

use chrono::{DateTime, Local};
use comfy_table::presets::UTF8_BORDERS_ONLY;
use comfy_table::{ContentArrangement, Table};
use kiln_proto::v1::{Job, JobState, TaskState};

/// A table in the style every command uses.
pub fn table<const N: usize>(header: [&str; N]) -> Table {
    let mut table = Table::new();
    table
        .load_preset(UTF8_BORDERS_ONLY)
        .set_content_arrangement(ContentArrangement::Dynamic)
        .set_header(header);
    table
}

pub fn job_state(state: JobState) -> &'static str {
    match state {
        JobState::Unspecified => "unknown",
        JobState::Pending => "pending",
        JobState::Running => "running",
        JobState::Succeeded => "succeeded",
        JobState::Failed => "failed",
        JobState::Cancelled => "cancelled",
        JobState::Paused => "paused",
    }
}

pub fn task_state(state: TaskState) -> &'static str {
    match state {
        TaskState::Unspecified => "unknown",
        TaskState::Pending => "pending",
        TaskState::Dispatched => "dispatched",
        TaskState::Running => "running",
        TaskState::Succeeded => "succeeded",
        TaskState::Failed => "failed",
        TaskState::Cancelled => "cancelled",
        TaskState::WaitingRetry => "waiting to retry",
    }
}

/// Whether a job in `state` will not change any more.
pub fn is_final(state: JobState) -> bool {
    matches!(
        state,
        JobState::Succeeded | JobState::Failed | JobState::Cancelled
    )
}

/// "12/40 (30%)"
pub fn progress(job: &Job) -> String {
    let percent = (job.tasks_succeeded * 100)
        .checked_div(job.tasks_total)
        .unwrap_or(0);
    format!("{}/{} ({percent}%)", job.tasks_succeeded, job.tasks_total)
}

/// A protobuf timestamp in local time, or "-" when unset.
pub fn timestamp(time: Option<&pbjson_types::Timestamp>) -> String {
    let Some(time) = time else {
        return "-".to_owned();
    };
    let nanos = u32::try_from(time.nanos).unwrap_or(0);
    match DateTime::from_timestamp(time.seconds, nanos) {
        Some(utc) => utc
            .with_timezone(&Local)
            .format("%Y-%m-%d %H:%M:%S")
            .to_string(),
        None => "-".to_owned(),
    }
}

/// Frames as compact ranges: [1,2,3,4,7] reads "1-4,7".
pub fn frames(frames: &[i64]) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut iter = frames.iter().copied().peekable();
    while let Some(start) = iter.next() {
        let mut end = start;
        while iter.peek() == Some(&(end + 1)) {
            end += 1;
            iter.next();
        }
        parts.push(if start == end {
            start.to_string()
        } else {
            format!("{start}-{end}")
        });
    }
    parts.join(",")
}

/// The last `lines` lines of `text`.
pub fn last_lines(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// The first `len` characters of a digest, enough to tell files apart.
pub fn short_digest(digest: &str) -> &str {
    digest.get(..12).unwrap_or(digest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_collapse_into_ranges() {
        assert_eq!(frames(&[1, 2, 3, 4, 7, 9, 10]), "1-4,7,9-10");
        assert_eq!(frames(&[5]), "5");
        assert_eq!(frames(&[]), "");
    }

    #[test]
    fn progress_handles_empty_jobs() {
        let job = Job::default();
        assert_eq!(progress(&job), "0/0 (0%)");
        let job = Job {
            tasks_total: 4,
            tasks_succeeded: 1,
            ..Job::default()
        };
        assert_eq!(progress(&job), "1/4 (25%)");
    }

    #[test]
    fn last_lines_keeps_the_end() {
        assert_eq!(last_lines("a\nb\nc\n", 2), "b\nc");
        assert_eq!(last_lines("only", 5), "only");
    }
}
