//! Steps run as written (OpenJD session model): every assignment of such a
//! step carries the step's script and the task's own parameter values, on
//! every attempt and after a failover; Kiln command lines carry neither.

use super::*;

const SCRIPT: &str = r#"{"script":{"actions":{"onRun":{"command":"bash"}}}}"#;

/// The session fields of every assignment delivered so far, by task and attempt.
fn delivered(bench: &Bench) -> Vec<(Uuid, u32, String, String)> {
    bench
        .effects()
        .filter_map(|effect| match effect {
            Effect::Deliver { assignment, .. } => Some((
                assignment.task_id.parse().expect("a task id"),
                assignment.attempt,
                assignment.session_step.clone(),
                assignment.task_symbols.clone(),
            )),
            _ => None,
        })
        .collect()
}

fn symbols(index: usize) -> String {
    format!(r#"{{"Task.Param.Index":{index}}}"#)
}

fn session_worker() -> WorkerSpec {
    worker().renderers(&[kiln_jobmodel::SESSION_COMMAND, "ffmpeg"])
}

#[test]
fn a_step_run_as_written_sends_its_script_and_each_tasks_values() {
    let mut bench = Bench::default();
    let job = bench.submit(job("alice", 2).with_session_step(SCRIPT).then("Encode", 1));
    bench.join("w", session_worker());
    bench.run_to_end();
    let delivered = delivered(&bench);
    assert_eq!(delivered.len(), 3, "{delivered:?}");
    for (index, &task) in job.steps[0].iter().enumerate() {
        let (_, _, script, values) = delivered
            .iter()
            .find(|d| d.0 == task)
            .expect("each task of the step was delivered");
        assert_eq!(script, SCRIPT);
        assert_eq!(values, &symbols(index), "each task gets its own values");
    }
    let (_, _, script, values) = delivered
        .iter()
        .find(|d| d.0 == job.steps[1][0])
        .expect("the encode was delivered");
    assert_eq!(
        (script.as_str(), values.as_str()),
        ("", ""),
        "a Kiln command line carries no session step"
    );
}

#[test]
fn a_retried_attempt_carries_the_same_script_and_values() {
    let mut bench = Bench::default();
    let job = bench.submit(job("alice", 1).with_session_step(SCRIPT));
    bench.join("w", session_worker());
    bench.dispatch_one();
    bench.started("w", job.task(0));
    bench.fail("w", job.task(0), "exit 1");
    bench.commit();
    bench.advance(policy().max_delay);
    bench.tick();
    let retry = bench.dispatch_one();
    assert_eq!(retry.attempt, 2);
    let attempts: Vec<_> = delivered(&bench)
        .into_iter()
        .map(|(_, attempt, script, values)| (attempt, script, values))
        .collect();
    assert_eq!(
        attempts,
        [
            (1, SCRIPT.to_owned(), symbols(0)),
            (2, SCRIPT.to_owned(), symbols(0))
        ]
    );
}

#[test]
fn a_new_leader_sends_the_script_it_loaded() {
    let mut bench = Bench::default();
    let job = bench.restore(
        job("alice", 1).with_session_step(SCRIPT),
        TaskState::Pending,
        "w",
    );
    bench.join("w", session_worker());
    bench.dispatch_one();
    let delivered = delivered(&bench);
    assert_eq!(
        delivered,
        [(job.task(0), 1, SCRIPT.to_owned(), symbols(0))],
        "the restored step's script and task values"
    );
}

#[test]
fn a_worker_without_the_session_runtime_takes_no_session_step() {
    let mut bench = Bench::default();
    bench.submit(job("alice", 1).with_session_step(SCRIPT));
    bench.join("w", worker().renderers(&["blender", "ffmpeg"]));
    assert_eq!(bench.dispatch(), []);
}
