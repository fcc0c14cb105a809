//! Steps that wait for steps, and jobs that wait for jobs.

use super::*;

#[test]
fn a_step_waits_until_every_task_of_the_step_before_succeeded() {
    let mut bench = Bench::default();
    let job = bench.submit(job("alice", 2).then("Encode", 1));
    bench.join("w", worker().slots(4));
    let first = bench.dispatch();
    assert_eq!(first.len(), 2, "only the renders are ready: {first:?}");
    bench.succeed("w", job.task(0));
    assert_eq!(bench.dispatch(), [], "one render is still running");
    bench.succeed("w", job.task(1));
    let encode = bench.dispatch();
    assert_eq!(encode.len(), 1);
    assert_eq!(encode[0].task, job.steps[1][0]);
}

#[test]
fn a_task_receives_the_outputs_of_the_steps_it_depends_on() {
    let mut bench = Bench::default();
    let job = bench.submit(job("alice", 1).then("Encode", 1));
    bench.join("w", worker());
    bench.run_to_end();
    let encode = bench.effects().find_map(|e| match e {
        Effect::Deliver {
            attempt,
            dependency_steps,
            ..
        } if attempt.0 == job.steps[1][0] => Some(dependency_steps.clone()),
        _ => None,
    });
    assert_eq!(encode, Some(vec!["Render".to_owned()]));
}

#[test]
fn a_job_waits_for_the_job_it_depends_on() {
    let mut bench = Bench::default();
    let first = bench.submit(job("alice", 1));
    let second = bench.submit(job("alice", 1).priority(100).after_job(first.id));
    bench.join("w", worker());
    let a = bench.dispatch_one();
    assert_eq!(
        a.task,
        first.task(0),
        "the dependent job waits, whatever its priority"
    );
    bench.succeed("w", a.task);
    let next = bench.dispatch();
    assert_eq!(next[0].task, second.task(0));
}

#[test]
fn a_job_fails_when_the_job_it_waits_for_is_cancelled() {
    let mut bench = Bench::default();
    let first = bench.submit(job("alice", 1));
    let second = bench.submit(job("alice", 1).after_job(first.id));
    bench
        .control(first.id, Control::Cancel)
        .expect("in the queue");
    bench.commit();
    assert_eq!(bench.written_job_state(second.id), Some(JobState::Failed));
    let message = bench
        .batches
        .iter()
        .flat_map(|b| &b.jobs)
        .rfind(|w| w.id == second.id)
        .map(|w| w.message.clone())
        .unwrap_or_default();
    assert!(message.contains(&first.id.to_string()), "{message}");
    assert!(message.contains("cancelled"), "{message}");
}

#[test]
fn a_job_submitted_as_its_dependency_finishes_still_learns_how_it_ended() {
    let mut bench = Bench::default();
    let done = bench.submit(job("alice", 1));
    let failed = bench.submit(job("alice", 1));
    bench
        .control(failed.id, Control::Cancel)
        .expect("in the queue");
    bench.join("w", worker());
    bench.run_to_end();
    // Both left the queue before these submissions reached the core.
    let after_success = bench.submit(job("alice", 1).after_job(done.id));
    let after_cancel = bench.submit(job("alice", 1).after_job(failed.id));
    bench.commit();
    assert_eq!(
        bench.written_job_state(after_cancel.id),
        Some(JobState::Failed)
    );
    let runs = bench.dispatch();
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0].task, after_success.task(0));
}
