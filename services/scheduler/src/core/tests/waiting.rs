//! Why a task waits, as a dashboard would ask.

use super::*;
use crate::core::command::WorkerControl;
use crate::core::waiting::{Exclusion, QueuePlace, Waiting};

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
        Some(Waiting::NoMatchingWorker(Vec::new())),
        "no worker at all"
    );
    bench.join("w", worker());
    let other = bench.submit(self::job("bob", 1));
    bench.dispatch();
    assert_eq!(bench.core.why_waiting(job.task(0)), None, "it runs");
    assert_eq!(
        bench.core.why_waiting(other.task(0)),
        Some(Waiting::Queued(QueuePlace {
            position: 1,
            length: 1,
            ahead_higher_priority: 0
        })),
        "its job is first in the queue; the only worker is busy"
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
    let due = bench.now.wall + chrono::Duration::seconds(2);
    match bench.core.why_waiting(a.task) {
        Some(Waiting::RetryBackoff(Some(at))) => {
            assert!(at > bench.now.wall && at <= due + chrono::Duration::seconds(1))
        }
        other => panic!("expected a backoff, got {other:?}"),
    }
    bench.advance(Duration::from_secs(5));
    bench.tick();
    assert_eq!(
        bench.core.why_waiting(job.task(0)),
        Some(Waiting::WorkersExcluded(vec![(
            "w".into(),
            Exclusion::Blocklisted
        )]))
    );
}

#[test]
fn requirements_no_connected_worker_meets_are_named() {
    let mut bench = Bench::default();
    let job = bench.submit(job("alice", 1).on_gpu());
    bench.join("cpu", worker());
    bench.join("encoder", worker().renderers(&["ffmpeg"]));
    assert_eq!(
        bench.core.why_waiting(job.task(0)),
        Some(Waiting::NoMatchingWorker(vec![
            "amount.worker.gpu >= 1".into()
        ])),
        "blender is there (on cpu); a GPU is on none"
    );
}

#[test]
fn workers_kept_away_by_tags_or_an_admin_are_named_with_their_reason() {
    let mut bench = Bench::default();
    bench.join("a", worker());
    bench.join("b", worker());
    bench.join("c", worker());
    bench
        .worker_control("a", WorkerControl::Disable)
        .expect("known");
    bench
        .worker_control("c", WorkerControl::SetTags(["fx".to_owned()].into()))
        .expect("known");
    let job = bench.submit(job("alice", 1).tag("fx").tag("gpu-pool"));
    assert_eq!(
        bench.core.why_waiting(job.task(0)),
        Some(Waiting::WorkersExcluded(vec![
            ("a".into(), Exclusion::Disabled),
            (
                "b".into(),
                Exclusion::MissingTags(vec!["fx".into(), "gpu-pool".into()])
            ),
            ("c".into(), Exclusion::MissingTags(vec!["gpu-pool".into()])),
        ]))
    );
    assert!(bench.dispatch().is_empty(), "no worker carries both tags");
}

#[test]
fn a_queued_job_knows_its_place_and_who_is_ahead_by_priority() {
    let mut bench = Bench::default();
    bench.join("w", worker());
    let running = bench.submit(job("alice", 1));
    bench.dispatch_one();
    let urgent = bench.submit(job("bob", 1).priority(90));
    let normal = bench.submit(job("carol", 1));
    let low = bench.submit(job("dave", 1).priority(10));
    let place = |bench: &Bench, task| match bench.core.why_waiting(task) {
        Some(Waiting::Queued(place)) => place,
        other => panic!("expected a place in the queue, got {other:?}"),
    };
    assert_eq!(place(&bench, urgent.task(0)).position, 1);
    assert_eq!(
        place(&bench, low.task(0)),
        QueuePlace {
            position: 3,
            length: 3,
            ahead_higher_priority: 2
        }
    );
    assert_eq!(place(&bench, normal.task(0)).ahead_higher_priority, 1);
    assert_eq!(bench.core.why_waiting(running.task(0)), None, "it runs");
}

#[test]
fn a_paused_job_is_not_said_to_wait_in_the_queue() {
    let mut bench = Bench::default();
    bench.join("w", worker());
    let job = bench.submit(job("alice", 2).then("Encode", 1));
    bench.control(job.id, Control::Pause).expect("in the queue");
    let explained = bench.core.explain_job(job.id);
    assert_eq!(explained.len(), 2, "one entry per step");
    assert_eq!(explained[0].similar, 1, "two Render tasks wait alike");
    assert_eq!(explained[0].reasons, vec![Waiting::JobPaused]);
    assert_eq!(
        explained[1].reasons,
        vec![Waiting::JobPaused, Waiting::ForSteps(vec!["Render".into()])]
    );
}
