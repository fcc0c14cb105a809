//! The core announces every output exactly once, however it arrives: its
//! own report, its task's success, both, again after a reconnect or a
//! failover, or from a retry. Runs the core alone, without I/O.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use kiln_proto::v1 as pb;
use tokio::sync::oneshot;
use uuid::Uuid;

use crate::commands::Command;
use crate::core::StepEntry;
use crate::core::{Core, JobEntry, TaskEntry};
use crate::job_state::JobState;
use crate::job_state::TaskCounts;
use crate::matching::Requirements;
use crate::output_ledger::RecordedOutput;
use crate::retry::RetryPolicy;
use crate::task_state::TaskState;

const WORKER: &str = "w";

/// A one-task job as the core gets it: fresh (pending), or loaded after a
/// failover with its task in flight on [`WORKER`] at `attempt`.
fn job(task_id: Uuid, in_flight: Option<i32>, recorded: &[(&str, &str)]) -> Command {
    let job_id = Uuid::new_v4();
    let state = in_flight.map_or(TaskState::Pending, |_| TaskState::Running);
    let task = TaskEntry {
        id: task_id,
        job_id,
        step: 0,
        index: 0,
        state,
        attempt: in_flight.unwrap_or(0),
        failures: 0,
        worker_id: in_flight.map(|_| WORKER.to_owned()),
        command: "noop".into(),
        args: Vec::new(),
        frames: Vec::new(),
        dispatched_at: None,
        claimed_attempt: None,
        ready_at: None,
    };
    let counts = TaskCounts {
        total: 1,
        waiting: i64::from(in_flight.is_none()),
        in_flight: i64::from(in_flight.is_some()),
        ..TaskCounts::default()
    };
    let job = JobEntry {
        id: job_id,
        owner: "o".into(),
        priority: 50,
        seq: 0,
        state: in_flight.map_or(JobState::Pending, |_| JobState::Running),
        paused: false,
        max_failed_tasks: 0,
        max_run_seconds: 0,
        stall_seconds: 0,
        inputs: Vec::new(),
        steps: vec![StepEntry {
            name: "Noop".into(),
            command: "noop".into(),
            depends_on: Vec::new(),
            requirements: Requirements::from_openjd(None),
            ready: Default::default(),
            total: 1,
            succeeded: 0,
            failed: 0,
            mean_run_seconds: None,
        }],
        task_ids: Vec::new(),
        counts,
        worker_failures: HashMap::new(),
        waiting_on: HashSet::new(),
        message: String::new(),
        trace_context: HashMap::new(),
        name: "job".into(),
        event_seq: 0,
        earlier_run_times: HashMap::new(),
        recorded_outputs: recorded
            .iter()
            .map(|(path, digest)| {
                let file = RecordedOutput {
                    digest: (*digest).into(),
                    size: 1,
                    kind: String::new(),
                };
                (task_id, (*path).to_owned(), file)
            })
            .collect(),
    };
    let (reply, _) = oneshot::channel();
    Command::AddJob {
        job: Box::new(job),
        tasks: vec![task],
        reply,
    }
}

fn joined(held: Vec<(Uuid, i32)>) -> Command {
    Command::WorkerJoined {
        worker_id: WORKER.into(),
        session: 1,
        capabilities: pb::WorkerCapabilities {
            slots: 1,
            renderers: vec![pb::Renderer {
                name: "noop".into(),
                version: "0".into(),
            }],
            ..Default::default()
        },
        outbox: tokio::sync::mpsc::channel(64).0,
        held,
    }
}

fn output(task_id: Uuid, attempt: i32, path: &str, digest: &str) -> pb::OutputStored {
    pb::OutputStored {
        task_id: task_id.to_string(),
        attempt: attempt as u32,
        path: path.into(),
        digest: digest.into(),
        size: 1,
        kind: String::new(),
    }
}

fn stored(output: pb::OutputStored) -> Command {
    Command::OutputStored {
        worker_id: WORKER.into(),
        output,
    }
}

fn finished(task_id: Uuid, attempt: i32, success: bool, outputs: Vec<pb::OutputStored>) -> Command {
    Command::Finished {
        worker_id: WORKER.into(),
        result: pb::TaskResult {
            task_id: task_id.to_string(),
            attempt: attempt as u32,
            success,
            outputs,
            ..Default::default()
        },
    }
}

/// What the core has queued so far: announced paths, and whether each
/// event announced an output (`Some(path)`) or a task state (`None`).
fn announced(core: &Core) -> Vec<Option<String>> {
    core.batch
        .events
        .iter()
        .filter_map(|(_, e)| match &e.event {
            Some(pb::job_event::Event::OutputAdded(a)) => {
                Some(a.output.as_ref().map(|o| o.path.clone()))
            }
            Some(pb::job_event::Event::TaskStateChanged(_)) => Some(None),
            _ => None,
        })
        .collect()
}

fn written(core: &Core) -> Vec<&str> {
    core.batch.outputs.iter().map(|o| o.path.as_str()).collect()
}

#[test]
fn after_a_failover_a_success_announces_only_the_outputs_never_recorded() {
    let task = Uuid::new_v4();
    let mut core = Core::new(RetryPolicy::default(), HashMap::new());
    // The previous leader recorded (and announced) frame 1.
    core.handle(job(task, Some(1), &[("frames/1.png", "a")]));
    core.handle(joined(vec![(task, 1)]));
    core.batch = Default::default();

    // Frame 1 reported again, frame 2's report lost with the connection.
    core.handle(stored(output(task, 1, "frames/1.png", "a")));
    let listed = vec![
        output(task, 1, "frames/1.png", "a"),
        output(task, 1, "frames/2.png", "b"),
    ];
    core.handle(finished(task, 1, true, listed));

    assert_eq!(
        announced(&core),
        [Some("frames/2.png".to_owned()), None],
        "frame 2 once, before the success"
    );
    assert_eq!(written(&core), ["frames/2.png"]);
}

#[test]
fn a_report_and_the_success_listing_it_announce_it_once() {
    let task = Uuid::new_v4();
    let mut core = Core::new(RetryPolicy::default(), HashMap::new());
    core.handle(job(task, None, &[]));
    core.handle(joined(Vec::new()));
    core.dispatch_round();
    core.batch = Default::default();

    core.handle(stored(output(task, 1, "frames/1.png", "a")));
    core.handle(stored(output(task, 1, "frames/1.png", "a")));
    let listed = vec![output(task, 1, "frames/1.png", "a")];
    core.handle(finished(task, 1, true, listed.clone()));
    // The result sent again after a reconnect.
    core.handle(finished(task, 1, true, listed));

    assert_eq!(announced(&core), [Some("frames/1.png".to_owned()), None]);
    assert_eq!(written(&core), ["frames/1.png"]);
}

#[test]
fn a_superseded_attempt_records_nothing() {
    let task = Uuid::new_v4();
    let mut core = Core::new(RetryPolicy::default(), HashMap::new());
    core.handle(job(task, Some(2), &[]));
    core.handle(joined(vec![(task, 2)]));
    core.batch = Default::default();

    core.handle(stored(output(task, 1, "frames/1.png", "old")));
    core.handle(finished(
        task,
        1,
        true,
        vec![output(task, 1, "frames/1.png", "old")],
    ));

    assert_eq!(announced(&core), []);
    assert_eq!(written(&core), Vec::<&str>::new());
}

#[test]
fn a_retry_storing_the_same_file_adds_no_event_and_a_new_file_one() {
    let task = Uuid::new_v4();
    let mut core = Core::new(RetryPolicy::default(), HashMap::new());
    core.handle(job(task, None, &[]));
    core.handle(joined(Vec::new()));
    core.dispatch_round();
    core.handle(stored(output(task, 1, "frames/1.png", "a")));
    core.handle(stored(output(task, 1, "logs/t.log", "first")));
    core.handle(finished(task, 1, false, Vec::new()));
    core.release_due_retries(tokio::time::Instant::now() + Duration::from_secs(600));
    core.dispatch_round();
    core.batch = Default::default();

    let second = vec![
        output(task, 2, "frames/1.png", "a"),
        output(task, 2, "logs/t.log", "second"),
    ];
    for report in second.clone() {
        core.handle(stored(report));
    }
    core.handle(finished(task, 2, true, second));

    assert_eq!(
        announced(&core),
        [Some("logs/t.log".to_owned()), None],
        "only the changed log is news"
    );
}
