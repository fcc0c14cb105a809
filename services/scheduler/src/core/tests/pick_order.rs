//! The order of dispatch: priority, then fair share, then submission, step
//! and task order; GPU preference; tags, renderers and blocklists.

use super::*;

/// Which job each of `n` dispatches on a one-slot worker went to, finishing
/// each task before the next dispatch.
fn serve_one_at_a_time(bench: &mut Bench, worker_id: &str, n: usize) -> Vec<Uuid> {
    let mut order = Vec::new();
    for _ in 0..n {
        let a = bench.dispatch_one();
        order.push(a.task);
        bench.report(worker_id, a.task, a.attempt, true, "");
    }
    order
}

fn job_of(bench: &Bench, jobs: &[&Submitted], task: Uuid) -> usize {
    jobs.iter()
        .position(|j| j.all_tasks().contains(&task))
        .unwrap_or_else(|| {
            let _ = bench;
            panic!("task {task} is of no job")
        })
}

#[test]
fn higher_priority_goes_first_even_when_submitted_later() {
    let mut bench = Bench::default();
    let low = bench.submit(job("alice", 2).priority(25));
    let high = bench.submit(job("alice", 2).priority(75));
    bench.join("w", worker());
    let order = serve_one_at_a_time(&mut bench, "w", 4);
    let jobs: Vec<usize> = order
        .iter()
        .map(|t| job_of(&bench, &[&low, &high], *t))
        .collect();
    assert_eq!(jobs, [1, 1, 0, 0]);
}

#[test]
fn equal_priority_alternates_owners_by_share() {
    let mut bench = Bench::default();
    let alice = bench.submit(job("alice", 3));
    let bob = bench.submit(job("bob", 3));
    bench.join("w", worker());
    let order = serve_one_at_a_time(&mut bench, "w", 6);
    let owners: Vec<usize> = order
        .iter()
        .map(|t| job_of(&bench, &[&alice, &bob], *t))
        .collect();
    // Neither runs anything between tasks: the least recently served goes next.
    assert_eq!(owners, [0, 1, 0, 1, 0, 1]);
}

#[test]
fn a_small_job_is_not_starved_by_a_large_one_submitted_before() {
    let mut bench = Bench::default();
    let large = bench.submit(job("alice", 6));
    let small = bench.submit(job("bob", 2));
    bench.join("w", worker().slots(2));
    let first = bench.dispatch();
    let jobs: Vec<usize> = first
        .iter()
        .map(|a| job_of(&bench, &[&large, &small], a.task))
        .collect();
    // Two slots: one for alice's large job, one for bob's, not both for alice.
    assert_eq!(jobs, [0, 1]);
}

#[test]
fn weights_give_an_owner_a_larger_share_of_the_slots() {
    let mut bench = Bench::new(policy(), &[("alice", 3.0)]);
    let alice = bench.submit(job("alice", 10));
    let bob = bench.submit(job("bob", 10));
    bench.join("w", worker().slots(4));
    let jobs: Vec<usize> = bench
        .dispatch()
        .iter()
        .map(|a| job_of(&bench, &[&alice, &bob], a.task))
        .collect();
    assert_eq!(jobs.iter().filter(|&&j| j == 0).count(), 3, "{jobs:?}");
    assert_eq!(jobs.iter().filter(|&&j| j == 1).count(), 1, "{jobs:?}");
    assert_eq!(bench.core.in_flight_of("alice"), 3);
}

#[test]
fn one_owner_goes_in_submission_order_then_task_order() {
    let mut bench = Bench::default();
    let first = bench.submit(job("alice", 2));
    let second = bench.submit(job("alice", 2));
    bench.join("w", worker());
    let order = serve_one_at_a_time(&mut bench, "w", 4);
    assert_eq!(
        order,
        [first.task(0), first.task(1), second.task(0), second.task(1)]
    );
}

#[test]
fn raising_a_jobs_priority_reorders_what_waits() {
    let mut bench = Bench::default();
    let first = bench.submit(job("alice", 2));
    let second = bench.submit(job("alice", 2));
    bench
        .control(second.id, Control::SetPriority(100))
        .expect("in the queue");
    bench.join("w", worker());
    let order = serve_one_at_a_time(&mut bench, "w", 2);
    assert_eq!(order, [second.task(0), second.task(1)]);
    let written = bench
        .batches
        .iter()
        .flat_map(|b| &b.jobs)
        .find(|w| w.id == second.id);
    assert_eq!(written.map(|w| w.priority), Some(100));
    let _ = first;
}

#[test]
fn a_gpu_worker_takes_gpu_work_first_whatever_its_priority() {
    let mut bench = Bench::default();
    let cpu = bench.submit(job("alice", 2).priority(100));
    let gpu = bench.submit(job("alice", 2).priority(25).on_gpu());
    bench.join("gpu", worker().gpus(1));
    let order = serve_one_at_a_time(&mut bench, "gpu", 4);
    assert_eq!(
        order,
        [gpu.task(0), gpu.task(1), cpu.task(0), cpu.task(1)],
        "GPU work first, then CPU work rather than idling"
    );
}

#[test]
fn gpu_work_never_goes_to_a_cpu_worker() {
    let mut bench = Bench::default();
    bench.submit(job("alice", 2).on_gpu());
    bench.join("cpu", worker());
    assert_eq!(bench.dispatch(), []);
    bench.join("gpu", worker().gpus(1));
    let assigned = bench.dispatch();
    assert_eq!(assigned.len(), 1);
    assert_eq!(assigned[0].worker, "gpu");
}

#[test]
fn tagged_steps_go_only_to_workers_with_the_tag() {
    let mut bench = Bench::default();
    let fx = bench.submit(job("alice", 1).tagged("pool", "fx"));
    bench.join("plain", worker());
    assert_eq!(bench.dispatch(), []);
    bench.join("fx", worker().attribute("pool", "fx, fast"));
    let assigned = bench.dispatch();
    assert_eq!(
        assigned,
        [Assigned {
            worker: "fx".into(),
            task: fx.task(0),
            attempt: 1
        }]
    );
}

#[test]
fn a_worker_without_the_steps_renderer_takes_none_of_it() {
    let mut bench = Bench::default();
    bench.submit(job("alice", 1).command("natron"));
    bench.join("w", worker());
    assert_eq!(bench.dispatch(), []);
    bench.join("natron", worker().renderers(&["natron"]));
    assert_eq!(bench.dispatch().len(), 1);
}

#[test]
fn a_blocklisted_worker_gets_none_of_the_jobs_tasks_until_cleared() {
    let mut bench = Bench::new(
        RetryPolicy {
            base_delay: Duration::ZERO,
            max_attempts: 10,
            ..policy()
        },
        &[],
    );
    let failing = bench.submit(job("alice", 4));
    let other = bench.submit(job("alice", 1));
    bench.join("w", worker());
    for _ in 0..3 {
        let a = bench.dispatch_one();
        assert!(failing.all_tasks().contains(&a.task));
        bench.report("w", a.task, a.attempt, false, "boom");
        bench.tick();
    }
    bench.commit();
    let blocked = bench
        .batches
        .iter()
        .flat_map(|b| &b.blocklist)
        .next_back()
        .cloned();
    assert_eq!(
        blocked,
        Some(crate::core::batch::BlocklistWrite::Set {
            job_id: failing.id,
            worker_id: "w".into(),
            failures: 3,
            blocked: true
        })
    );
    // The worker now takes the other job, and nothing more of the failing one.
    let a = bench.dispatch_one();
    assert_eq!(a.task, other.task(0));
    bench.report("w", a.task, a.attempt, true, "");
    assert_eq!(bench.dispatch(), []);
    bench
        .control(failing.id, Control::ClearBlocklist(Some("w".into())))
        .expect("in the queue");
    let again = bench.dispatch();
    assert_eq!(again.len(), 1);
    assert!(failing.all_tasks().contains(&again[0].task));
}

#[test]
fn a_full_worker_gets_nothing_more_until_a_slot_frees() {
    let mut bench = Bench::default();
    let job = bench.submit(job("alice", 3));
    bench.join("w", worker().slots(2));
    assert_eq!(bench.dispatch().len(), 2);
    assert_eq!(bench.dispatch(), []);
    bench.succeed("w", job.task(0));
    let next = bench.dispatch();
    assert_eq!(next.len(), 1);
    assert_eq!(next[0].task, job.task(2));
}
