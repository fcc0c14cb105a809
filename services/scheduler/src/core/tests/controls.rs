//! Users' controls: pause, resume, cancel, clear a blocklist; and how
//! requests are answered.

use super::*;

#[test]
fn a_paused_job_starts_nothing_until_resumed() {
    let mut bench = Bench::default();
    let job = bench.submit(job("alice", 3));
    bench.join("w", worker());
    bench.dispatch();
    bench.control(job.id, Control::Pause).expect("in the queue");
    bench.started("w", job.task(0));
    bench.succeed("w", job.task(0));
    assert_eq!(bench.dispatch(), [], "nothing new starts while paused");
    assert_eq!(bench.job_state(job.id), Some(JobState::Paused));
    assert_eq!(bench.written_job_state(job.id), Some(JobState::Paused));
    bench
        .control(job.id, Control::Resume)
        .expect("in the queue");
    assert_eq!(bench.dispatch()[0].task, job.task(1));
    assert_eq!(bench.job_state(job.id), Some(JobState::Running));
}

#[test]
fn pausing_lets_running_tasks_finish() {
    let mut bench = Bench::default();
    let job = bench.submit(job("alice", 2));
    bench.join("w", worker());
    bench.dispatch();
    bench.started("w", job.task(0));
    bench.control(job.id, Control::Pause).expect("in the queue");
    let batch = bench.commit();
    assert!(cancels(&batch).is_empty());
    assert_eq!(bench.state_of(job.task(0)), Some(TaskState::Running));
}

#[test]
fn cancelling_a_job_stops_what_runs_and_closes_it() {
    let mut bench = Bench::default();
    let job = bench.submit(job("alice", 3));
    let session = bench.join("w", worker());
    bench.dispatch();
    bench.started("w", job.task(0));
    bench
        .control(job.id, Control::Cancel)
        .expect("in the queue");
    let batch = bench.commit();
    assert_eq!(cancels(&batch), [("w".to_owned(), session, job.task(0), 1)]);
    for task in job.all_tasks() {
        assert_eq!(bench.row_of(task).0, TaskState::Cancelled);
    }
    assert_eq!(bench.written_job_state(job.id), Some(JobState::Cancelled));
    // Its slot is free again, and nothing of the job is left to run.
    assert!(bench.core.worker("w").is_some_and(|w| w.running.is_empty()));
    assert!(bench.core.job(job.id).is_none());
}

#[test]
fn a_control_of_a_job_no_longer_queued_is_refused_and_answers_nothing() {
    let mut bench = Bench::default();
    let job = bench.submit(job("alice", 1));
    bench.join("w", worker());
    bench.run_to_end();
    let before = bench
        .effects()
        .filter(|e| matches!(e, Effect::Answer(_)))
        .count();
    assert_eq!(
        bench.control(job.id, Control::Cancel),
        Err(Refusal::JobFinished(job.id))
    );
    bench.commit();
    let after = bench
        .effects()
        .filter(|e| matches!(e, Effect::Answer(_)))
        .count();
    assert_eq!(before, after);
}

#[test]
fn clearing_a_finished_jobs_blocklist_goes_through_the_core() {
    let mut bench = Bench::default();
    let job = bench.submit(job("alice", 1));
    bench.join("w", worker());
    bench.run_to_end();
    bench
        .control(job.id, Control::ClearBlocklist(None))
        .expect("a finished job's blocklist is cleared too");
    let batch = bench.commit();
    assert_eq!(
        batch.blocklist,
        [crate::core::batch::BlocklistWrite::Clear {
            job_id: job.id,
            worker_id: None
        }]
    );
    assert!(batch.effects.iter().any(|e| matches!(e, Effect::Answer(_))));
}

#[test]
fn a_new_job_is_answered_in_the_batch_that_adds_it() {
    let mut bench = Bench::default();
    let job = bench.submit(job("alice", 2));
    let batch = bench.commit();
    let answered = batch
        .effects
        .iter()
        .position(|e| matches!(e, Effect::Answer(_)));
    let recorded = batch.events.iter().position(|(id, _)| *id == job.id);
    assert!(answered.is_some(), "{:?}", batch.effects);
    assert!(
        recorded.is_some(),
        "the job's first record is in the same batch"
    );
}

#[test]
fn a_finished_job_leaves_the_queue_with_every_task_done() {
    let mut bench = Bench::default();
    let job = bench.submit(job("alice", 3).then("Encode", 1));
    bench.join("w", worker().slots(2));
    let ran = bench.run_to_end();
    assert_eq!(ran.len(), 4);
    for task in job.all_tasks() {
        assert_eq!(bench.row_of(task), (TaskState::Succeeded, 1));
    }
    assert_eq!(bench.written_job_state(job.id), Some(JobState::Succeeded));
    assert!(bench.core.job(job.id).is_none());
    assert_eq!(bench.core.tasks().count(), 0);
    assert_eq!(bench.core.in_flight_of("alice"), 0);
}

#[test]
fn the_gauges_show_waiting_work_and_idle_workers() {
    let mut bench = Bench::default();
    bench.join("idle", worker());
    bench.advance(crate::core::gauges::IDLE_AFTER);
    let gauges = bench.core.gauges(bench.now.instant);
    assert_eq!(
        (gauges.workers, gauges.idle_workers, gauges.queue_depth),
        (1, 1, 0)
    );
    bench.submit(job("alice", 3).command("natron"));
    let gauges = bench.core.gauges(bench.now.instant);
    assert_eq!(gauges.queue_depth, 3);
    assert_eq!(gauges.idle_workers, 0, "no worker is idle while work waits");
    assert_eq!(gauges.tasks.waiting, 3);
    // Nobody offers natron: its wait is its work over one slot.
    let wait = gauges.queue_wait_seconds["natron"];
    assert_eq!(wait, 3.0 * crate::core::gauges::DEFAULT_TASK_SECONDS);
    assert_eq!(gauges.queue_wait_seconds["blender"], 0.0);
}
