//! Why a task waits, as a dashboard would ask.

use super::*;
use crate::core::waiting::Waiting;

#[test]
fn a_task_waits_for_its_steps_then_for_a_worker_then_its_turn() {
    let mut bench = Bench::default();
    let job = bench.submit(job("alice", 1).then("Encode", 1));
    let encode = job.steps[1][0];
    assert_eq!(
        bench.core.why_waiting(encode),
        Some(Waiting::ForSteps(vec!["Render".into()]))
    );
    assert_eq!(
        bench.core.why_waiting(job.task(0)),
        Some(Waiting::NoMatchingWorker)
    );
    bench.join("w", worker());
    let other = bench.submit(self::job("bob", 1));
    bench.dispatch();
    assert_eq!(bench.core.why_waiting(job.task(0)), None, "it runs");
    assert_eq!(
        bench.core.why_waiting(other.task(0)),
        Some(Waiting::WorkersBusy)
    );
}

#[test]
fn a_task_waits_while_its_job_is_paused_or_waits_for_a_job() {
    let mut bench = Bench::default();
    let first = bench.submit(job("alice", 1));
    let second = bench.submit(job("alice", 1).after_job(first.id));
    assert_eq!(
        bench.core.why_waiting(second.task(0)),
        Some(Waiting::ForJobs(vec![first.id]))
    );
    bench
        .control(first.id, Control::Pause)
        .expect("in the queue");
    assert_eq!(
        bench.core.why_waiting(first.task(0)),
        Some(Waiting::JobPaused)
    );
}

#[test]
fn a_task_waits_when_every_matching_worker_is_blocklisted_or_it_backs_off() {
    let mut bench = Bench::new(
        RetryPolicy {
            blocklist_after: 1,
            ..policy()
        },
        &[],
    );
    let job = bench.submit(job("alice", 1));
    bench.join("w", worker());
    let a = bench.dispatch_one();
    bench.fail("w", a.task, "boom");
    assert_eq!(bench.core.why_waiting(a.task), Some(Waiting::RetryBackoff));
    bench.advance(Duration::from_secs(5));
    bench.tick();
    assert_eq!(
        bench.core.why_waiting(job.task(0)),
        Some(Waiting::Blocklisted)
    );
}
