//! The verdict: whether a task succeeded, and if not, the one line that
//! says why. A pure function of what the other stages found.

use kiln_proto::v1::{OutputStored, TaskAssignment, TaskResult};

use crate::blender_output::RenderTracker;
use crate::devices::CyclesDevice;
use crate::log_tail::truncate_chars;
use crate::sandbox::LimitHit;
use crate::task::run::ActionEnd;
use crate::task::supervise::Limit;

/// Longest failure message, in characters.
const MAX_MESSAGE_CHARS: usize = 1000;
/// SIGXFSZ: a process wrote past its file size limit (the disk limit).
const SIGXFSZ: i32 = 25;
/// Words programs print when an allocation fails.
const OUT_OF_MEMORY: [&str; 5] = [
    "MemoryError",
    "Cannot allocate memory",
    "out of memory",
    "bad_alloc",
    "Out of memory",
];

/// How the action ended, as the verdict sees it.
#[derive(Debug)]
pub enum Ending {
    Ended(ActionEnd),
    Killed(Limit),
}

/// Everything the verdict is decided from.
#[derive(Debug)]
pub struct Facts<'a> {
    pub assignment: &'a TaskAssignment,
    /// The command, for messages ("ffmpeg exited with status 1").
    pub name: &'a str,
    /// Whether it ran Blender, which must save every frame of the assignment.
    pub blender: bool,
    pub ending: Ending,
    /// A limit the kernel enforced (cgroup OOM kill, fork refused).
    pub kernel_hit: Option<LimitHit>,
    /// The memory limit, when it is an rlimit a process only sees as a
    /// failed allocation: named in the message when the output hints at one.
    pub rlimited_memory: Option<u64>,
    /// The disk limit, named when a process died of SIGXFSZ.
    pub disk_limit: u64,
    pub tracker: &'a RenderTracker,
    /// The last lines of output.
    pub log_tail: String,
    pub last_line: Option<&'a str>,
    /// OpenJD's `openjd_fail:` message, if the action printed one.
    pub fail: Option<String>,
    pub status: Option<String>,
    /// Why the task fails even if the action succeeded (an output outside
    /// `outputs/`, outputs that could not be listed).
    pub problem: Option<String>,
    /// Why storing outputs stopped, if it did.
    pub upload_failed: Option<String>,
    pub stored: Vec<OutputStored>,
    pub device: Option<CyclesDevice>,
}

/// Decides success and the one-line reason for failure.
pub fn verdict(facts: Facts<'_>) -> TaskResult {
    let Facts {
        assignment,
        name,
        blender,
        ending,
        kernel_hit,
        rlimited_memory,
        disk_limit,
        tracker,
        log_tail,
        last_line,
        fail,
        status,
        problem,
        upload_failed,
        stored,
        device,
    } = facts;
    let last_error = tracker.last_error().or(last_line).unwrap_or("no output");
    let (exit_code, failed) = match ending {
        Ending::Ended(ActionEnd::Exited(Err(error))) => {
            (None, Some(format!("cannot wait for {name}: {error}")))
        }
        Ending::Ended(ActionEnd::Exited(Ok(status))) => match status.code() {
            Some(0) => (Some(0), None),
            code => match broken_limit(status, kernel_hit, disk_limit) {
                Some(limit) => (code, Some(limit)),
                None => match code {
                    Some(code) => {
                        let said = fail.clone().unwrap_or_else(|| {
                            format!("{name} exited with status {code}: {last_error}")
                        });
                        let hint = memory_hint(rlimited_memory, &log_tail);
                        (Some(code), Some(format!("{said}{hint}")))
                    }
                    None => (
                        None,
                        Some(format!("{name} was killed by a signal ({status})")),
                    ),
                },
            },
        },
        Ending::Killed(limit) => (None, Some(limit.to_string())),
        Ending::Ended(ActionEnd::Done) => (None, None),
        Ending::Ended(ActionEnd::Failed(message)) => (None, Some(message)),
    };
    let missing = || {
        let missing = blender && !tracker.missing_frames(&assignment.frames).is_empty();
        missing.then(|| missing_frames_message(tracker, &assignment.frames))
    };
    let device = device.map(|d| d.name().to_owned()).unwrap_or_default();
    let status = status.unwrap_or_default();
    match failed.or_else(missing).or(problem).or(upload_failed) {
        Some(message) => TaskResult {
            device,
            status,
            ..failure(assignment, exit_code, message, log_tail)
        },
        None => TaskResult {
            task_id: assignment.task_id.clone(),
            attempt: assignment.attempt,
            success: true,
            exit_code,
            message: String::new(),
            log_tail,
            outputs: stored,
            device,
            status,
        },
    }
}

/// The sandbox limit that ended a process which exited with `status` (not
/// 0), when the kernel enforced one (`kernel_hit`: a cgroup OOM kill, a fork
/// refused) or the process died of SIGXFSZ (a file past the disk limit).
/// For every kind of action: Kiln's own commands and OpenJD session actions.
pub fn broken_limit(
    status: std::process::ExitStatus,
    kernel_hit: Option<LimitHit>,
    disk_limit: u64,
) -> Option<String> {
    use std::os::unix::process::ExitStatusExt;
    // Bubblewrap reports a command killed by signal N as 128 + N.
    let signal = status
        .signal()
        .or(status.code().filter(|c| *c > 128).map(|c| c - 128));
    match kernel_hit {
        Some(hit) => Some(hit.to_string()),
        None if signal == Some(SIGXFSZ) => Some(format!(
            "{} (a file grew past it)",
            LimitHit::Disk { limit: disk_limit }
        )),
        None => None,
    }
}

/// With a memory limit the kernel enforces only as an rlimit
/// (`rlimited_memory`), a process just sees an allocation fail: when its
/// output says one did, a note naming the limit (to append to the failure
/// message); empty otherwise.
pub fn memory_hint(rlimited_memory: Option<u64>, log_tail: &str) -> String {
    rlimited_memory
        .filter(|_| OUT_OF_MEMORY.iter().any(|w| log_tail.contains(w)))
        .map(|limit| {
            format!(
                " (an allocation failed: {})",
                LimitHit::Memory { limit }
                    .to_string()
                    .replacen("exceeded", "likely at", 1)
            )
        })
        .unwrap_or_default()
}

fn missing_frames_message(tracker: &RenderTracker, frames: &[i64]) -> String {
    let saved = tracker.saved_count(frames);
    let head = format!(
        "blender exited 0 but saved {saved} of {} frames",
        frames.len()
    );
    match tracker.first_error() {
        Some(error) => format!("{head}: {error}"),
        None => format!(
            "{head}: no saved output for frames {:?}",
            tracker.missing_frames(frames)
        ),
    }
}

/// A failed result with `message` made one line and bounded.
pub fn failure(
    assignment: &TaskAssignment,
    exit_code: Option<i32>,
    message: String,
    log_tail: String,
) -> TaskResult {
    let one_line = message.replace(['\n', '\r'], " ");
    TaskResult {
        task_id: assignment.task_id.clone(),
        attempt: assignment.attempt,
        success: false,
        exit_code,
        message: truncate_chars(&one_line, MAX_MESSAGE_CHARS).to_owned(),
        log_tail,
        outputs: Vec::new(),
        device: String::new(),
        status: String::new(),
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::process::ExitStatusExt;
    use std::process::ExitStatus;

    use super::*;

    fn assignment(frames: &[i64]) -> TaskAssignment {
        TaskAssignment {
            task_id: "t".into(),
            attempt: 2,
            frames: frames.to_vec(),
            max_run_seconds: 60,
            ..TaskAssignment::default()
        }
    }

    fn facts<'a>(
        assignment: &'a TaskAssignment,
        tracker: &'a RenderTracker,
        ending: Ending,
    ) -> Facts<'a> {
        Facts {
            assignment,
            name: "ffmpeg",
            blender: false,
            ending,
            kernel_hit: None,
            rlimited_memory: None,
            disk_limit: 1 << 30,
            tracker,
            log_tail: "line one\nline two".into(),
            last_line: Some("line two"),
            fail: None,
            status: None,
            problem: None,
            upload_failed: None,
            stored: Vec::new(),
            device: None,
        }
    }

    fn exited(code: i32) -> Ending {
        Ending::Ended(ActionEnd::Exited(Ok(ExitStatus::from_raw(code << 8))))
    }

    #[test]
    fn success_carries_outputs_device_and_status() {
        let assignment = assignment(&[]);
        let tracker = RenderTracker::default();
        let mut facts = facts(&assignment, &tracker, exited(0));
        facts.device = Some(CyclesDevice::Cpu);
        facts.status = Some("quality check passed".into());
        facts.stored = vec![OutputStored::default()];
        let result = verdict(facts);
        assert!(result.success);
        assert_eq!(result.message, "", "the message is for failures");
        assert_eq!(result.device, "cpu");
        assert_eq!(result.status, "quality check passed");
        assert_eq!(result.outputs.len(), 1);
        assert_eq!(result.exit_code, Some(0));
    }

    #[test]
    fn a_failure_names_the_command_and_its_last_line_or_its_own_message() {
        let assignment = assignment(&[]);
        let tracker = RenderTracker::default();
        let result = verdict(facts(&assignment, &tracker, exited(3)));
        assert!(!result.success);
        assert_eq!(result.exit_code, Some(3));
        assert_eq!(result.message, "ffmpeg exited with status 3: line two");
        assert!(result.outputs.is_empty());
        let mut own = facts(&assignment, &tracker, exited(1));
        own.fail = Some("quality check failed: frame 3 is uniform".into());
        assert_eq!(
            verdict(own).message,
            "quality check failed: frame 3 is uniform"
        );
    }

    #[test]
    fn limits_are_named() {
        let assignment = assignment(&[]);
        let tracker = RenderTracker::default();
        let killed = verdict(facts(
            &assignment,
            &tracker,
            Ending::Killed(Limit::RunTime { seconds: 60 }),
        ));
        assert_eq!(killed.message, "exceeded maximum run time of 60 s");
        let sampled = verdict(facts(
            &assignment,
            &tracker,
            Ending::Killed(Limit::Sandbox(LimitHit::Memory { limit: 256 << 20 })),
        ));
        assert_eq!(
            sampled.message,
            "exceeded its memory limit of 256 MiB (--task-memory-bytes)"
        );
        let mut oom = facts(&assignment, &tracker, exited(137));
        oom.kernel_hit = Some(LimitHit::Memory { limit: 1 << 30 });
        assert_eq!(
            verdict(oom).message,
            "exceeded its memory limit of 1 GiB (--task-memory-bytes)"
        );
        let too_big = verdict(facts(&assignment, &tracker, exited(128 + SIGXFSZ)));
        assert_eq!(
            too_big.message,
            "exceeded its disk limit of 1 GiB (--task-disk-bytes) (a file grew past it)"
        );
        let mut allocation = facts(&assignment, &tracker, exited(1));
        allocation.rlimited_memory = Some(256 << 20);
        allocation.log_tail = "Traceback\nMemoryError".into();
        allocation.last_line = Some("MemoryError");
        assert_eq!(
            verdict(allocation).message,
            "ffmpeg exited with status 1: MemoryError (an allocation failed: likely at its memory limit of 256 MiB (--task-memory-bytes))"
        );
    }

    #[test]
    fn blender_must_save_every_frame_even_when_it_exits_zero() {
        let assignment = assignment(&[1, 2]);
        let mut tracker = RenderTracker::default();
        tracker.observe("Fra:1 Mem:1M | Time:00:00.01 | Sample 1/1");
        tracker.observe("Saved: '/w/outputs/f_0001.png'");
        let mut facts = facts(&assignment, &tracker, exited(0));
        facts.blender = true;
        facts.name = "blender";
        let result = verdict(facts);
        assert!(!result.success);
        assert_eq!(
            result.message,
            "blender exited 0 but saved 1 of 2 frames: no saved output for frames [2]"
        );
    }

    #[test]
    fn messages_are_one_bounded_line() {
        let assignment = assignment(&[]);
        let result = failure(
            &assignment,
            None,
            format!("a\nb{}", "x".repeat(5000)),
            String::new(),
        );
        assert!(!result.message.contains('\n'));
        assert_eq!(result.message.chars().count(), MAX_MESSAGE_CHARS);
    }

    #[test]
    fn a_crashed_warm_session_and_upload_failures_fail_the_task() {
        let assignment = assignment(&[]);
        let tracker = RenderTracker::default();
        let crashed = verdict(facts(
            &assignment,
            &tracker,
            Ending::Ended(ActionEnd::Failed("warm blender session 3 ended".into())),
        ));
        assert_eq!(crashed.message, "warm blender session 3 ended");
        let mut upload = facts(&assignment, &tracker, Ending::Ended(ActionEnd::Done));
        upload.upload_failed = Some("cannot upload output a.png: gone".into());
        assert_eq!(verdict(upload).message, "cannot upload output a.png: gone");
    }
}
