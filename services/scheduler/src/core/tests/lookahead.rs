//! Workers that hold tasks queued beyond their slots (lookahead): free
//! slots are filled first, the queue is bounded, a queued task is held like
//! a running one, and it never waits behind a busy worker while another
//! worker that could run it is idle.

use super::*;

fn held_by(bench: &Bench, worker_id: &str) -> usize {
    bench.core.worker(worker_id).map_or(0, |w| w.running.len())
}

#[test]
fn idle_workers_slots_are_filled_before_any_task_is_queued() {
    let mut bench = Bench::default();
    bench.submit(job("alice", 2));
    bench.join("a", worker().lookahead(1));
    bench.join("b", worker().lookahead(1));
    let assigned = bench.dispatch();
    let mut workers: Vec<&str> = assigned.iter().map(|a| a.worker.as_str()).collect();
    workers.sort();
    assert_eq!(workers, ["a", "b"], "one each, none queued: {assigned:?}");
}

#[test]
fn a_worker_holds_at_most_its_slots_and_lookahead() {
    let mut bench = Bench::default();
    let job = bench.submit(job("alice", 6));
    bench.join("a", worker().slots(2).lookahead(1));
    let first = bench.dispatch();
    assert_eq!(first.len(), 3);
    assert_eq!(held_by(&bench, "a"), 3);
    // Nothing more until one ends; then exactly one more.
    assert!(bench.dispatch().is_empty());
    bench.started("a", first[0].task);
    bench.succeed("a", first[0].task);
    assert_eq!(bench.dispatch().len(), 1);
    assert_eq!(held_by(&bench, "a"), 3);
    assert_eq!(bench.state_of(job.task(5)), Some(TaskState::Pending));
}

#[test]
fn a_worker_without_lookahead_holds_only_its_slots() {
    let mut bench = Bench::default();
    bench.submit(job("alice", 3));
    bench.join("a", worker());
    assert_eq!(bench.dispatch().len(), 1);
    bench.join("b", worker().slots(2));
    assert_eq!(bench.dispatch().len(), 2);
    assert!(bench.dispatch().is_empty());
}

#[test]
fn the_lookahead_a_worker_asks_for_is_bounded() {
    let mut bench = Bench::default();
    bench.submit(job("alice", 20));
    bench.join("a", worker().lookahead(1000));
    let assigned = bench.dispatch();
    assert_eq!(assigned.len(), 1 + crate::core::MAX_LOOKAHEAD as usize);
}

#[test]
fn a_queued_task_moves_to_a_worker_that_joins_idle() {
    let mut bench = Bench::default();
    let job = bench.submit(job("alice", 2));
    let session = bench.join("a", worker().lookahead(1));
    let assigned = bench.dispatch();
    assert_eq!(assigned.len(), 2);
    bench.started("a", job.task(0));
    bench.commit();
    // Task 1 waits in a's queue behind task 0; b joins with nothing to do.
    bench.join("b", worker().lookahead(1));
    bench.core.dispatch(bench.now);
    let batch = bench.commit();
    assert_eq!(cancels(&batch), [("a".to_owned(), session, job.task(1), 1)]);
    assert_eq!(
        assignments(&batch),
        [Assigned {
            worker: "b".into(),
            task: job.task(1),
            attempt: 2
        }]
    );
    assert_eq!(held_by(&bench, "a"), 1);
    assert_eq!(bench.state_of(job.task(0)), Some(TaskState::Running));
}

#[test]
fn a_task_the_worker_will_start_next_in_a_free_slot_is_not_moved() {
    let mut bench = Bench::default();
    let job = bench.submit(job("alice", 1));
    bench.join("a", worker().lookahead(1));
    bench.dispatch_one();
    // Not yet started, but in a free slot: it is not queued behind anything.
    bench.join("b", worker());
    bench.core.dispatch(bench.now);
    let batch = bench.commit();
    assert!(cancels(&batch).is_empty());
    assert!(assignments(&batch).is_empty());
    assert_eq!(
        bench
            .core
            .task(job.task(0))
            .and_then(|t| t.worker_id.clone()),
        Some("a".into())
    );
}

#[test]
fn a_queued_task_is_not_lost_for_not_starting_while_the_slot_is_busy() {
    let mut bench = Bench::default();
    let job = bench.submit(job("alice", 2));
    bench.join("a", worker().lookahead(1));
    bench.dispatch();
    bench.started("a", job.task(0));
    bench.advance(crate::core::START_TIMEOUT * 3);
    bench.tick();
    bench.commit();
    assert_eq!(bench.state_of(job.task(1)), Some(TaskState::Dispatched));
    assert_eq!(held_by(&bench, "a"), 2);
    // Once the slot is free the worker must start it in time, like any task.
    bench.succeed("a", job.task(0));
    bench.advance(crate::core::START_TIMEOUT / 2);
    bench.tick();
    assert_eq!(bench.state_of(job.task(1)), Some(TaskState::Dispatched));
    bench.advance(crate::core::START_TIMEOUT);
    bench.tick();
    let batch = bench.commit();
    assert_eq!(bench.state_of(job.task(1)), Some(TaskState::Pending));
    assert_eq!(cancels(&batch).len(), 1, "the worker drops it");
}

#[test]
fn the_maximum_run_time_counts_from_the_start_not_the_queue() {
    let mut bench = Bench::default();
    let job = bench.submit(job("alice", 2).max_run_seconds(100));
    bench.join("a", worker().lookahead(1));
    bench.dispatch();
    bench.started("a", job.task(0));
    bench.advance(std::time::Duration::from_secs(90));
    bench.succeed("a", job.task(0));
    bench.started("a", job.task(1));
    bench.advance(std::time::Duration::from_secs(90));
    bench.tick();
    assert_eq!(bench.state_of(job.task(1)), Some(TaskState::Running));
}

#[test]
fn cancelling_a_job_cancels_its_queued_task_on_the_worker() {
    let mut bench = Bench::default();
    let job = bench.submit(job("alice", 2));
    let session = bench.join("a", worker().lookahead(1));
    bench.dispatch();
    bench.started("a", job.task(0));
    bench.commit();
    bench.control(job.id, Control::Cancel).expect("queued");
    let batch = bench.commit();
    // The queued one first: the running one's cancel frees the slot, and
    // the worker must not start the queued one in it.
    assert_eq!(
        cancels(&batch),
        [
            ("a".to_owned(), session, job.task(1), 1),
            ("a".to_owned(), session, job.task(0), 1)
        ]
    );
    assert_eq!(held_by(&bench, "a"), 0);
}

#[test]
fn a_departed_workers_queued_task_is_requeued() {
    let mut bench = Bench::default();
    let job = bench.submit(job("alice", 2));
    bench.join("a", worker().lookahead(1));
    bench.dispatch();
    bench.started("a", job.task(0));
    bench.leave("a");
    assert_eq!(bench.state_of(job.task(0)), Some(TaskState::Pending));
    assert_eq!(bench.state_of(job.task(1)), Some(TaskState::Pending));
    bench.join("b", worker());
    let ran = bench.run_to_end();
    assert_eq!(ran.len(), 2);
    assert_eq!(bench.row_of(job.task(1)).0, TaskState::Succeeded);
}

#[test]
fn a_reconnecting_worker_that_names_only_started_tasks_loses_its_queue() {
    let mut bench = Bench::default();
    let job = bench.submit(job("alice", 2));
    bench.join("a", worker().lookahead(1));
    bench.dispatch();
    bench.started("a", job.task(0));
    // Its stream broke; it kept rendering task 0 and forgot its queue.
    bench.join_holding("a", worker().lookahead(1), vec![(job.task(0), 1)]);
    assert_eq!(bench.state_of(job.task(0)), Some(TaskState::Running));
    assert_eq!(bench.attempt_of(job.task(0)), 1);
    // Task 1 is requeued, and the same worker may queue it again.
    let again = bench.dispatch_one();
    assert_eq!(again.task, job.task(1));
    assert_eq!(again.attempt, 2);
}

#[test]
fn the_worker_record_tells_a_queued_task_from_a_running_one() {
    let mut bench = Bench::default();
    let job = bench.submit(job("alice", 2));
    bench.join("a", worker().lookahead(1));
    bench.dispatch();
    bench.started("a", job.task(0));
    let record = bench.core.worker_record("a").expect("joined");
    let started: Vec<(String, bool)> = record
        .running
        .iter()
        .map(|t| (t.task_id.clone(), t.started))
        .collect();
    assert_eq!(
        started,
        [
            (job.task(0).to_string(), true),
            (job.task(1).to_string(), false)
        ]
    );
}

#[test]
fn draining_hands_queued_tasks_back_and_lets_the_running_one_finish() {
    let mut bench = Bench::default();
    let job = bench.submit(job("alice", 3));
    let session = bench.join("a", worker().lookahead(1));
    bench.dispatch();
    bench.started("a", job.task(0));
    bench.commit();
    bench
        .worker_control("a", crate::core::command::WorkerControl::Drain)
        .expect("known");
    let batch = bench.commit();
    assert_eq!(cancels(&batch), [("a".to_owned(), session, job.task(1), 1)]);
    assert_eq!(bench.state_of(job.task(1)), Some(TaskState::Pending));
    assert!(
        bench.dispatch().is_empty(),
        "a draining worker takes nothing"
    );
    bench.succeed("a", job.task(0));
    bench.commit();
    assert_eq!(bench.row_of(job.task(0)).0, TaskState::Succeeded);
    // Another worker takes what was queued, first.
    bench.join("b", worker());
    assert_eq!(bench.dispatch_one().task, job.task(1));
}

#[test]
fn pausing_a_job_takes_its_queued_task_back_and_lets_the_running_one_finish() {
    let mut bench = Bench::default();
    let job = bench.submit(job("alice", 2));
    let session = bench.join("a", worker().lookahead(1));
    bench.dispatch();
    bench.started("a", job.task(0));
    bench.commit();
    bench.control(job.id, Control::Pause).expect("queued");
    let batch = bench.commit();
    assert_eq!(cancels(&batch), [("a".to_owned(), session, job.task(1), 1)]);
    assert_eq!(bench.state_of(job.task(0)), Some(TaskState::Running));
    assert_eq!(bench.state_of(job.task(1)), Some(TaskState::Pending));
    assert!(bench.dispatch().is_empty());
    bench.control(job.id, Control::Resume).expect("queued");
    bench.succeed("a", job.task(0));
    let again = bench.dispatch_one();
    assert_eq!((again.task, again.attempt), (job.task(1), 2));
}

#[test]
fn disabling_a_worker_cancels_its_queued_task_before_the_running_one() {
    let mut bench = Bench::default();
    let job = bench.submit(job("alice", 2));
    let session = bench.join("a", worker().lookahead(1));
    bench.dispatch();
    bench.started("a", job.task(0));
    bench.commit();
    bench
        .worker_control("a", crate::core::command::WorkerControl::Disable)
        .expect("known");
    let batch = bench.commit();
    assert_eq!(
        cancels(&batch),
        [
            ("a".to_owned(), session, job.task(1), 1),
            ("a".to_owned(), session, job.task(0), 1)
        ]
    );
    assert_eq!(bench.state_of(job.task(0)), Some(TaskState::Pending));
    assert_eq!(bench.state_of(job.task(1)), Some(TaskState::Pending));
}
