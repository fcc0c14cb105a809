//! Every output gets exactly one `OutputAdded` event, however it arrives:
//! its own report, its task's success, both, again after a reconnect or a
//! failover, or from a retry (issue 19's rules, on the core alone).

use super::*;
use crate::core::output_ledger::RecordedOutput;

fn stored(task: Uuid, attempt: i32, path: &str, digest: &str) -> pb::OutputStored {
    pb::OutputStored {
        task_id: task.to_string(),
        attempt: attempt as u32,
        path: path.into(),
        digest: digest.into(),
        size: 1,
        kind: String::new(),
    }
}

fn report_stored(bench: &mut Bench, task: Uuid, attempt: i32, path: &str, digest: &str) {
    let command = Command::OutputStored {
        worker_id: "w".into(),
        task_id: task,
        attempt,
        output: stored(task, attempt, path, digest),
    };
    bench.handle(command).expect("never refused");
}

fn succeed_listing(bench: &mut Bench, task: Uuid, attempt: i32, outputs: Vec<pb::OutputStored>) {
    let finished = Command::Finished {
        worker_id: "w".into(),
        task_id: task,
        attempt,
        report: AttemptReport {
            success: true,
            outputs,
            ..AttemptReport::default()
        },
    };
    bench.handle(finished).expect("never refused");
}

/// Announced outputs (`Some(path)`) and task state changes (`None`), in order.
fn announced(batch: &Batch) -> Vec<Option<String>> {
    batch
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

fn written(batch: &Batch) -> Vec<&str> {
    batch.outputs.iter().map(|o| o.path.as_str()).collect()
}

#[test]
fn after_a_failover_a_success_announces_only_the_outputs_never_recorded() {
    let mut bench = Bench::default();
    let spec = job("alice", 1);
    let (mut entry, mut tasks, submitted) = super::entries(&spec, TaskState::Running);
    let task = submitted.task(0);
    tasks[0].attempt = 1;
    tasks[0].worker_id = Some("w".into());
    bench.rows_insert(task, (TaskState::Running, 1));
    entry.counts = super::counts_of(&tasks);
    // The previous leader recorded (and announced) frame 1.
    entry.recorded_outputs = vec![(
        task,
        "frames/1.png".into(),
        RecordedOutput {
            digest: "a".into(),
            size: 1,
            kind: String::new(),
        },
    )];
    bench.core.restore(entry, tasks, bench.now);
    bench.join_holding("w", worker(), vec![(task, 1)]);
    bench.commit();

    // Frame 1 reported again, frame 2's report lost with the connection.
    report_stored(&mut bench, task, 1, "frames/1.png", "a");
    let listed = vec![
        stored(task, 1, "frames/1.png", "a"),
        stored(task, 1, "frames/2.png", "b"),
    ];
    succeed_listing(&mut bench, task, 1, listed);
    let batch = bench.commit();
    assert_eq!(
        announced(&batch),
        [Some("frames/2.png".to_owned()), None],
        "frame 2 once, before the success"
    );
    assert_eq!(written(&batch), ["frames/2.png"]);
}

#[test]
fn a_report_and_the_success_listing_it_announce_it_once() {
    let mut bench = Bench::default();
    let job = bench.submit(job("alice", 1));
    bench.join("w", worker());
    let a = bench.dispatch_one();
    report_stored(&mut bench, a.task, a.attempt, "frames/1.png", "a");
    report_stored(&mut bench, a.task, a.attempt, "frames/1.png", "a");
    let listed = vec![stored(a.task, a.attempt, "frames/1.png", "a")];
    succeed_listing(&mut bench, a.task, a.attempt, listed.clone());
    // The result sent again after a reconnect.
    succeed_listing(&mut bench, a.task, a.attempt, listed);
    let batch = bench.commit();
    assert_eq!(announced(&batch), [Some("frames/1.png".to_owned()), None]);
    assert_eq!(written(&batch), ["frames/1.png"]);
    let _ = job;
}

#[test]
fn a_superseded_attempt_records_nothing() {
    let mut bench = Bench::default();
    let job = bench.submit(job("alice", 1));
    bench.join("w", worker());
    bench.dispatch();
    bench.leave("w");
    bench.join("w", worker());
    let second = bench.dispatch_one();
    assert_eq!(second.attempt, 2);
    report_stored(&mut bench, job.task(0), 1, "frames/1.png", "old");
    succeed_listing(
        &mut bench,
        job.task(0),
        1,
        vec![stored(job.task(0), 1, "frames/1.png", "old")],
    );
    let batch = bench.commit();
    assert_eq!(announced(&batch), []);
    assert_eq!(written(&batch), Vec::<&str>::new());
}

#[test]
fn a_retry_storing_the_same_file_adds_no_event_and_a_new_file_one() {
    let mut bench = Bench::default();
    let job = bench.submit(job("alice", 1));
    bench.join("w", worker());
    let first = bench.dispatch_one();
    report_stored(&mut bench, first.task, 1, "frames/1.png", "a");
    report_stored(&mut bench, first.task, 1, "logs/t.log", "first");
    bench.fail("w", first.task, "boom");
    bench.advance(Duration::from_secs(600));
    bench.tick();
    let second = bench.dispatch_one();
    assert_eq!((second.task, second.attempt), (job.task(0), 2));

    let outputs = vec![
        stored(second.task, 2, "frames/1.png", "a"),
        stored(second.task, 2, "logs/t.log", "second"),
    ];
    for output in &outputs {
        report_stored(&mut bench, second.task, 2, &output.path, &output.digest);
    }
    succeed_listing(&mut bench, second.task, 2, outputs);
    let batch = bench.commit();
    assert_eq!(
        announced(&batch),
        [Some("logs/t.log".to_owned()), None],
        "only the changed log is news"
    );
}

#[test]
fn a_second_task_writing_a_path_of_the_job_fails_instead_of_replacing_the_file() {
    let mut bench = Bench::default();
    let job = bench.submit(job("alice", 2));
    bench.join("w", worker().slots(2));
    let assigned = bench.dispatch();
    assert_eq!(assigned.len(), 2);
    let (a, b) = (&assigned[0], &assigned[1]);
    succeed_listing(
        &mut bench,
        a.task,
        a.attempt,
        vec![stored(a.task, a.attempt, "frames/1.png", "a")],
    );
    // The other task reports the same path, then lists it in its success.
    report_stored(&mut bench, b.task, b.attempt, "frames/1.png", "b");
    succeed_listing(
        &mut bench,
        b.task,
        b.attempt,
        vec![stored(b.task, b.attempt, "frames/1.png", "b")],
    );
    let batch = bench.commit();
    assert_eq!(
        written(&batch),
        ["frames/1.png"],
        "only the first task's file"
    );
    assert_eq!(batch.outputs[0].digest, "a");
    let failed = batch
        .tasks
        .iter()
        .filter(|w| w.id == b.task)
        .find_map(|w| w.message.clone())
        .unwrap_or_default();
    assert!(
        failed.contains("frames/1.png") && failed.contains(&a.task.to_string()),
        "{failed}"
    );
    assert_ne!(bench.row_of(b.task).0, TaskState::Succeeded);
    assert_eq!(bench.row_of(a.task).0, TaskState::Succeeded);
    let _ = job;
}
