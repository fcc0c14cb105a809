//! Workers that go away, sessions that are replaced, attempts never
//! confirmed or running too long, and reports from superseded attempts.

use super::*;

#[test]
fn a_departed_workers_task_goes_to_another_with_a_new_attempt() {
    let mut bench = Bench::default();
    let job = bench.submit(job("alice", 1));
    bench.join("a", worker());
    let first = bench.dispatch_one();
    bench.started("a", first.task);
    bench.leave("a");
    assert_eq!(bench.state_of(job.task(0)), Some(TaskState::Pending));
    bench.join("b", worker());
    let second = bench.dispatch();
    assert_eq!(
        second,
        [Assigned {
            worker: "b".into(),
            task: job.task(0),
            attempt: 2
        }]
    );
}

#[test]
fn a_lost_task_goes_back_to_the_front_of_its_queue() {
    let mut bench = Bench::default();
    let job = bench.submit(job("alice", 3));
    bench.join("a", worker());
    bench.dispatch();
    bench.leave("a");
    bench.join("b", worker());
    assert_eq!(bench.dispatch()[0].task, job.task(0));
}

#[test]
fn a_late_result_from_a_superseded_attempt_changes_nothing() {
    let mut bench = Bench::default();
    let job = bench.submit(job("alice", 1));
    bench.join("a", worker());
    bench.dispatch();
    bench.leave("a");
    bench.join("b", worker());
    bench.dispatch();
    bench.commit();
    // Worker a comes back and reports attempt 1, which b now runs as attempt 2.
    bench.join("a", worker());
    bench.commit();
    bench.report("a", job.task(0), 1, true, "");
    bench.started_attempt("a", job.task(0), 1);
    let batch = bench.commit();
    assert!(batch.tasks.is_empty(), "{:?}", batch.tasks);
    assert!(batch.events.is_empty());
    assert_eq!(bench.state_of(job.task(0)), Some(TaskState::Dispatched));
    assert_eq!(bench.attempt_of(job.task(0)), 2);
}

#[test]
fn reports_from_a_worker_not_running_the_attempt_are_ignored() {
    let mut bench = Bench::default();
    let job = bench.submit(job("alice", 1));
    bench.join("a", worker());
    bench.join("b", worker());
    let a = bench.dispatch_one();
    let other = if a.worker == "a" { "b" } else { "a" };
    bench.report(other, job.task(0), a.attempt, false, "not mine");
    let batch = bench.commit();
    assert!(batch.tasks.is_empty());
    assert!(
        batch.blocklist.is_empty(),
        "no failure counted against {other}"
    );
}

#[test]
fn a_duplicate_success_counts_once() {
    let mut bench = Bench::default();
    let job = bench.submit(job("alice", 2));
    bench.join("w", worker());
    let a = bench.dispatch_one();
    bench.report("w", a.task, a.attempt, true, "");
    bench.report("w", a.task, a.attempt, true, "");
    bench.commit();
    let counts = bench.core.job(job.id).expect("running").counts;
    assert_eq!((counts.succeeded, counts.waiting), (1, 1));
}

#[test]
fn a_reconnecting_worker_ends_its_old_session() {
    let mut bench = Bench::default();
    let old = bench.join("w", worker());
    bench.commit();
    let new = bench.join("w", worker());
    let batch = bench.commit();
    assert!(batch.effects.iter().any(|e| matches!(
        e,
        Effect::EndSession { worker_id, session } if worker_id == "w" && *session == old
    )));
    assert_eq!(bench.core.worker("w").map(|w| w.session), Some(new));
    // The old session's end, arriving late, changes nothing.
    let left = Command::WorkerLeft {
        worker_id: "w".into(),
        session: old,
    };
    bench.handle(left).expect("never refused");
    assert!(bench.core.worker("w").is_some());
}

#[test]
fn a_reconnecting_worker_keeps_the_attempts_it_names() {
    let mut bench = Bench::default();
    let job = bench.submit(job("alice", 2));
    bench.join("w", worker().slots(2));
    bench.dispatch();
    bench.started("w", job.task(0));
    bench.started("w", job.task(1));
    // It names task 0 only: task 1 is lost, task 0 keeps running.
    bench.join_holding("w", worker().slots(2), vec![(job.task(0), 1)]);
    bench.commit();
    assert_eq!(bench.state_of(job.task(0)), Some(TaskState::Running));
    assert_eq!(bench.state_of(job.task(1)), Some(TaskState::Pending));
    let next = bench.dispatch();
    assert_eq!(next.len(), 1);
    assert_eq!((next[0].task, next[0].attempt), (job.task(1), 2));
}

#[test]
fn a_worker_whose_lease_ended_is_told_to_stop_and_its_session_ends() {
    let mut bench = Bench::default();
    let job = bench.submit(job("alice", 1));
    let session = bench.join("w", worker());
    bench.dispatch();
    bench.started("w", job.task(0));
    bench.lease_lost("w");
    let batch = bench.commit();
    assert_eq!(cancels(&batch), [("w".to_owned(), session, job.task(0), 1)]);
    let ended = batch
        .effects
        .iter()
        .position(|e| matches!(e, Effect::EndSession { .. }))
        .expect("the session ends");
    let cancelled = batch
        .effects
        .iter()
        .position(|e| matches!(e, Effect::Cancel { .. }))
        .expect("a cancel");
    assert!(
        cancelled < ended,
        "the cancel goes out before the session ends"
    );
    assert_eq!(bench.state_of(job.task(0)), Some(TaskState::Pending));
    assert!(bench.core.worker("w").is_none());
}

#[test]
fn an_assignment_that_never_arrived_is_requeued() {
    let mut bench = Bench::default();
    let job = bench.submit(job("alice", 1));
    bench.join("w", worker());
    let a = bench.dispatch_one();
    let undeliverable = Command::Undeliverable {
        worker_id: "w".into(),
        task_id: a.task,
        attempt: a.attempt,
    };
    bench.handle(undeliverable).expect("never refused");
    assert_eq!(bench.state_of(job.task(0)), Some(TaskState::Pending));
    assert_eq!(bench.dispatch()[0].attempt, 2);
}

#[test]
fn a_dispatch_never_confirmed_is_requeued_after_the_start_timeout() {
    let mut bench = Bench::default();
    let job = bench.submit(job("alice", 1));
    bench.join("w", worker());
    bench.dispatch();
    bench.advance(crate::core::START_TIMEOUT - Duration::from_secs(1));
    bench.tick();
    assert_eq!(bench.state_of(job.task(0)), Some(TaskState::Dispatched));
    bench.advance(Duration::from_secs(2));
    bench.tick();
    assert_eq!(bench.state_of(job.task(0)), Some(TaskState::Pending));
    // A started one is not subject to it.
    let a = bench.dispatch_one();
    bench.started("w", a.task);
    bench.advance(crate::core::START_TIMEOUT * 2);
    bench.tick();
    assert_eq!(bench.state_of(job.task(0)), Some(TaskState::Running));
}

#[test]
fn an_attempt_past_its_maximum_run_time_is_cancelled_and_fails() {
    let mut bench = Bench::default();
    let job = bench.submit(job("alice", 1).max_run_seconds(10));
    let session = bench.join("w", worker());
    bench.dispatch();
    bench.started("w", job.task(0));
    bench.advance(Duration::from_secs(10) + crate::core::MAX_RUN_GRACE + Duration::from_secs(1));
    bench.tick();
    let batch = bench.commit();
    assert_eq!(cancels(&batch), [("w".to_owned(), session, job.task(0), 1)]);
    assert_eq!(bench.state_of(job.task(0)), Some(TaskState::WaitingRetry));
    let message = batch.tasks.last().and_then(|w| w.message.clone());
    assert_eq!(message.as_deref(), Some("ran past its maximum run time"));
}

#[test]
fn effects_name_the_session_they_are_for() {
    let mut bench = Bench::default();
    let job = bench.submit(job("alice", 1));
    let session = bench.join("w", worker());
    bench.core.dispatch(bench.now);
    let batch = bench.commit();
    let delivered = batch.effects.iter().find_map(|e| match e {
        Effect::Deliver {
            session, attempt, ..
        } => Some((*session, *attempt)),
        _ => None,
    });
    assert_eq!(delivered, Some((session, (job.task(0), 1))));
}

#[test]
fn only_workers_that_run_any_command_take_a_program_that_is_no_renderer() {
    let mut bench = Bench::default();
    let job = bench.submit(job("alice", 1).command("bash"));
    bench.join("renderers-only", worker());
    assert!(
        bench.dispatch().is_empty(),
        "bash is not one of its renderers"
    );
    bench.join("sandboxing", worker().any_command());
    let assigned = bench.dispatch_one();
    assert_eq!(
        (assigned.worker.as_str(), assigned.task),
        ("sandboxing", job.task(0))
    );
}

#[test]
fn only_tasks_of_a_template_approved_for_the_network_may_use_it() {
    let mut bench = Bench::default();
    let mut core = Core::new(CoreSettings {
        policy: policy(),
        owner_weights: HashMap::new(),
        farm_position: 0,
        jitter_seed: 1,
        now: bench.now,
        network_templates: ["net-probe".to_owned()].into(),
        known_workers: Vec::new(),
        admission: Default::default(),
        quotas: Default::default(),
    });
    std::mem::swap(&mut bench.core, &mut core);
    bench.join("w", worker().slots(3));
    bench.submit(job("alice", 1).made_from("net-probe"));
    bench.submit(job("alice", 1).made_from("blender"));
    bench.submit(job("alice", 1));
    bench.core.dispatch(bench.now);
    let batch = bench.commit();
    let mut network: Vec<(String, bool)> = batch
        .effects
        .iter()
        .filter_map(|effect| match effect {
            Effect::Deliver {
                assignment, job_id, ..
            } => Some((job_id.to_string(), assignment.allow_network)),
            _ => None,
        })
        .collect();
    network.sort_by_key(|(_, allowed)| !*allowed);
    assert_eq!(network.len(), 3);
    assert_eq!(
        network
            .iter()
            .map(|(_, allowed)| *allowed)
            .collect::<Vec<_>>(),
        [true, false, false],
        "only the approved network template: {network:?}"
    );
}
