//! A new leader's in-flight attempts: confirmed by their worker, or requeued.

use super::*;

#[test]
fn a_worker_that_names_its_attempt_after_a_failover_keeps_rendering_it() {
    let mut bench = Bench::default();
    let job = bench.restore(job("alice", 1), TaskState::Dispatched, "w");
    bench.commit();
    bench.join_holding("w", worker(), vec![(job.task(0), 1)]);
    // Confirmed: it has started, whatever reports were lost, and is not dispatched again.
    assert_eq!(bench.state_of(job.task(0)), Some(TaskState::Running));
    assert_eq!(bench.dispatch(), []);
    bench.advance(Duration::from_secs(60));
    bench.tick();
    assert_eq!(bench.state_of(job.task(0)), Some(TaskState::Running));
    bench.succeed("w", job.task(0));
    bench.commit();
    assert_eq!(bench.row_of(job.task(0)), (TaskState::Succeeded, 1));
}

#[test]
fn an_attempt_nobody_confirms_is_requeued_after_the_reclaim_window() {
    let mut bench = Bench::default();
    let job = bench.restore(job("alice", 1), TaskState::Running, "gone");
    bench.join("other", worker());
    assert_eq!(bench.dispatch(), [], "it may still run on its worker");
    bench.advance(Duration::from_secs(14));
    bench.tick();
    assert_eq!(bench.dispatch(), []);
    bench.advance(Duration::from_secs(2));
    bench.tick();
    let again = bench.dispatch();
    assert_eq!(
        again,
        [Assigned {
            worker: "other".into(),
            task: job.task(0),
            attempt: 2
        }]
    );
}

#[test]
fn a_worker_that_reconnects_without_naming_its_attempt_loses_it_soon() {
    let mut bench = Bench::default();
    let job = bench.restore(job("alice", 1), TaskState::Running, "w");
    bench.join("w", worker());
    bench.advance(Duration::from_secs(1));
    bench.tick();
    assert_eq!(bench.state_of(job.task(0)), Some(TaskState::Running));
    // Two seconds for its re-sent results, not the whole window.
    bench.advance(Duration::from_secs(2));
    bench.tick();
    assert_eq!(bench.dispatch().len(), 1);
    assert_eq!(bench.attempt_of(job.task(0)), 2);
}

#[test]
fn a_result_resent_after_a_failover_is_recorded_once() {
    let mut bench = Bench::default();
    let job = bench.restore(job("alice", 2), TaskState::Running, "w");
    bench.join_holding(
        "w",
        worker().slots(2),
        vec![(job.task(0), 1), (job.task(1), 1)],
    );
    bench.succeed("w", job.task(0));
    bench.report("w", job.task(0), 1, true, "");
    bench.commit();
    let counts = bench.core.job(job.id).expect("still running").counts;
    assert_eq!((counts.succeeded, counts.in_flight), (1, 1));
}

#[test]
fn an_attempt_named_by_a_worker_that_no_longer_owns_it_is_cancelled_there() {
    let mut bench = Bench::default();
    let job = bench.submit(job("alice", 1));
    bench.join("a", worker());
    bench.dispatch();
    bench.leave("a");
    bench.join("b", worker());
    bench.dispatch();
    // a comes back still rendering attempt 1, which b now runs as attempt 2.
    let session = bench.join_holding("a", worker(), vec![(job.task(0), 1)]);
    let batch = bench.commit();
    assert_eq!(cancels(&batch), [("a".to_owned(), session, job.task(0), 1)]);
    assert_eq!(
        bench
            .core
            .task(job.task(0))
            .and_then(|t| t.worker_id.clone())
            .as_deref(),
        Some("b")
    );
}

#[test]
fn an_unclaimed_attempt_of_a_worker_whose_lease_ended_is_requeued_at_once() {
    let mut bench = Bench::default();
    let job = bench.restore(job("alice", 1), TaskState::Running, "w");
    bench.join("other", worker());
    bench.lease_lost("w");
    let again = bench.dispatch();
    assert_eq!(again.len(), 1);
    assert_eq!(
        (again[0].task, again[0].worker.as_str()),
        (job.task(0), "other")
    );
}

#[test]
fn a_confirmed_attempt_teaches_the_eta_nothing() {
    let mut bench = Bench::default();
    let job = bench.restore(job("alice", 2), TaskState::Running, "w");
    bench.join_holding("w", worker().slots(2), vec![(job.task(0), 1)]);
    bench.advance(Duration::from_secs(30));
    bench.succeed("w", job.task(0));
    bench.commit();
    // Its start is unknown, so its run time is too: no ETA from it.
    let step = &bench.core.job(job.id).expect("running").steps[0];
    assert_eq!(step.mean_run_seconds, None);
}
