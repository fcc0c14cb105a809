//! The failure policy: retries and their timing, failing for good, and how
//! a job fails.

use super::*;

/// Runs the task's next attempt on `w` and fails it.
fn fail_next(bench: &mut Bench, task: Uuid) {
    let assigned = bench.dispatch();
    assert_eq!(assigned.len(), 1, "expected the task to be dispatched");
    assert_eq!(assigned[0].task, task);
    bench.started("w", task);
    bench.fail("w", task, "exit 1");
}

#[test]
fn a_failed_attempt_waits_out_its_backoff_before_the_next() {
    let mut bench = Bench::default();
    let job = bench.submit(job("alice", 1));
    bench.join("w", worker());
    fail_next(&mut bench, job.task(0));
    let batch = bench.commit();
    assert_eq!(bench.state_of(job.task(0)), Some(TaskState::WaitingRetry));
    let retry_at = batch
        .tasks
        .iter()
        .rev()
        .find(|w| w.id == job.task(0))
        .and_then(|w| w.retry_at)
        .expect("the row says when the retry is due");
    let delay = (retry_at - bench.now.wall).to_std().expect("in the future");
    // From 2 s, jittered in its upper half.
    assert!(
        delay >= Duration::from_secs(1) && delay <= Duration::from_secs(2),
        "{delay:?}"
    );
    // Not before the delay...
    bench.advance(delay - Duration::from_millis(10));
    bench.tick();
    assert_eq!(bench.dispatch(), []);
    // ...and at once after it, with a new attempt.
    bench.advance(Duration::from_millis(20));
    bench.tick();
    let again = bench.dispatch();
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].attempt, 2);
}

#[test]
fn backoff_doubles_with_each_failure() {
    let mut bench = Bench::new(
        RetryPolicy {
            max_attempts: 10,
            blocklist_after: 10,
            ..policy()
        },
        &[],
    );
    let job = bench.submit(job("alice", 1));
    bench.join("w", worker());
    let mut delays = Vec::new();
    for _ in 0..4 {
        fail_next(&mut bench, job.task(0));
        let batch = bench.commit();
        let retry_at = batch
            .tasks
            .last()
            .and_then(|w| w.retry_at)
            .expect("a retry");
        let delay = (retry_at - bench.now.wall).to_std().expect("in the future");
        delays.push(delay);
        bench.advance(delay);
        bench.tick();
    }
    for (n, delay) in delays.iter().enumerate() {
        let nominal = Duration::from_secs(2) * 2u32.pow(n as u32);
        assert!(
            *delay >= nominal / 2 && *delay <= nominal,
            "failure {}: {delay:?}",
            n + 1
        );
    }
}

#[test]
fn the_same_seed_gives_the_same_delays() {
    let delays = || {
        let mut bench = Bench::default();
        let job = bench.submit(job("alice", 1));
        bench.join("w", worker());
        fail_next(&mut bench, job.task(0));
        let batch = bench.commit();
        let at = batch
            .tasks
            .last()
            .and_then(|w| w.retry_at)
            .expect("a retry");
        at - bench.now.wall
    };
    assert_eq!(delays(), delays());
}

#[test]
fn the_last_attempt_fails_the_task_and_the_job_saying_why() {
    let mut bench = Bench::new(
        RetryPolicy {
            base_delay: Duration::ZERO,
            ..policy()
        },
        &[],
    );
    let job = bench.submit(job("alice", 2));
    bench.join("w", worker());
    for _ in 0..3 {
        fail_next(&mut bench, job.task(0));
        bench.tick();
    }
    bench.commit();
    assert_eq!(bench.row_of(job.task(0)), (TaskState::Failed, 3));
    assert_eq!(bench.written_job_state(job.id), Some(JobState::Failed));
    let message = bench
        .batches
        .iter()
        .flat_map(|b| &b.jobs)
        .rfind(|w| w.id == job.id)
        .map(|w| w.message.clone())
        .unwrap_or_default();
    assert_eq!(message, "task 0 of step Render failed: exit 1");
    // The job is gone from the queue, and its other task was cancelled.
    assert!(bench.core.job(job.id).is_none());
    assert_eq!(bench.row_of(job.task(1)).0, TaskState::Cancelled);
}

#[test]
fn a_job_tolerates_failed_tasks_up_to_its_limit() {
    let mut bench = Bench::new(
        RetryPolicy {
            max_attempts: 1,
            ..policy()
        },
        &[],
    );
    let job = bench.submit(job("alice", 3).max_failed_tasks(1));
    bench.join("w", worker());
    fail_next(&mut bench, job.task(0));
    bench.commit();
    assert_eq!(bench.job_state(job.id), Some(JobState::Running));
    fail_next(&mut bench, job.task(1));
    bench.commit();
    assert_eq!(bench.written_job_state(job.id), Some(JobState::Failed));
}

#[test]
fn a_failed_step_fails_the_job_when_the_rest_is_blocked_behind_it() {
    let mut bench = Bench::new(
        RetryPolicy {
            max_attempts: 1,
            ..policy()
        },
        &[],
    );
    let job = bench.submit(job("alice", 1).max_failed_tasks(5).then("Encode", 1));
    bench.join("w", worker());
    fail_next(&mut bench, job.task(0));
    bench.commit();
    assert_eq!(bench.written_job_state(job.id), Some(JobState::Failed));
    assert_eq!(bench.row_of(job.steps[1][0]).0, TaskState::Cancelled);
}

#[test]
fn a_users_retry_reopens_a_failed_job_with_fresh_attempts() {
    let mut bench = Bench::new(
        RetryPolicy {
            max_attempts: 1,
            ..policy()
        },
        &[],
    );
    let spec = job("alice", 1);
    let job = bench.submit(spec.clone());
    bench.join("w", worker());
    fail_next(&mut bench, job.task(0));
    bench.commit();
    assert!(
        bench.core.job(job.id).is_none(),
        "a failed job leaves the queue"
    );
    // Not in the queue: a control other than retry is refused.
    assert_eq!(
        bench.control(job.id, Control::Pause),
        Err(Refusal::JobFinished(job.id))
    );
    // The job service reloads it from Postgres for a retry: here, as it was written.
    let (mut entry, mut tasks, _) = super::entries(&spec, TaskState::Failed);
    entry.id = job.id;
    entry.state = JobState::Failed;
    for (task, id) in tasks.iter_mut().zip(job.all_tasks()) {
        task.id = id;
        task.job_id = job.id;
        task.attempt = 1;
        task.failures = 1;
    }
    entry.counts = super::counts_of(&tasks);
    bench
        .control(job.id, Control::Retry(Some((Box::new(entry), tasks))))
        .expect("a retry reloads the job");
    assert_eq!(bench.job_state(job.id), Some(JobState::Running));
    let again = bench.dispatch();
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].attempt, 2);
}
