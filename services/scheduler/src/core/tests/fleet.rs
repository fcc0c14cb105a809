//! An admin's actions on workers (disable, enable, drain, tags), what they
//! write, and how they survive a restart of the scheduler and of the worker.

use super::*;
use crate::core::command::WorkerControl;
use crate::core::model::{AdminState, Connection, KnownWorker};

fn tags(list: &[&str]) -> std::collections::BTreeSet<String> {
    list.iter().map(|t| (*t).to_owned()).collect()
}

/// The `workers` row as the batches last wrote it.
fn row(bench: &Bench, worker: &str) -> crate::core::batch::WorkerWrite {
    bench
        .batches
        .iter()
        .flat_map(|b| &b.workers)
        .rfind(|w| w.id == worker)
        .cloned()
        .unwrap_or_else(|| panic!("no row written for worker {worker}"))
}

#[test]
fn a_disabled_worker_hands_back_its_task_and_takes_none_until_enabled() {
    let mut bench = Bench::default();
    let job = bench.submit(job("alice", 2));
    bench.join("w", worker());
    let first = bench.dispatch_one();
    bench.started("w", first.task);
    bench
        .worker_control("w", WorkerControl::Disable)
        .expect("known");
    let batch = bench.commit();
    assert_eq!(cancels(&batch).len(), 1, "its running attempt is stopped");
    assert_eq!(
        bench.state_of(first.task),
        Some(TaskState::Pending),
        "requeued, not failed"
    );
    assert_eq!(row(&bench, "w").admin, AdminState::Disabled);
    assert!(
        bench.dispatch().is_empty(),
        "a disabled worker takes nothing"
    );
    bench
        .worker_control("w", WorkerControl::Enable)
        .expect("known");
    let again = bench.dispatch();
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].task, job.task(0), "the handed-back task first");
    assert_eq!(row(&bench, "w").admin, AdminState::Enabled);
}

#[test]
fn a_draining_worker_finishes_its_task_then_is_disabled() {
    let mut bench = Bench::default();
    bench.submit(job("alice", 3));
    bench.join("w", worker());
    let first = bench.dispatch_one();
    bench.started("w", first.task);
    bench
        .worker_control("w", WorkerControl::Drain)
        .expect("known");
    bench.commit();
    assert!(cancels(bench.batches.last().expect("a batch")).is_empty());
    assert_eq!(row(&bench, "w").admin, AdminState::Draining);
    bench.succeed("w", first.task);
    assert!(bench.dispatch().is_empty(), "it takes nothing new");
    assert_eq!(bench.state_of(first.task), Some(TaskState::Succeeded));
    assert_eq!(
        row(&bench, "w").admin,
        AdminState::Disabled,
        "drained, it is disabled"
    );
}

#[test]
fn tags_send_a_jobs_tasks_only_to_workers_carrying_all_of_them() {
    let mut bench = Bench::default();
    bench.join("plain", worker());
    bench.join("fx", worker());
    bench
        .worker_control("fx", WorkerControl::SetTags(tags(&["fx", "linux"])))
        .expect("known");
    let tagged = bench.submit(job("alice", 2).tag("fx"));
    let assigned = bench.dispatch();
    assert_eq!(
        assigned.len(),
        1,
        "only one worker carries fx: {assigned:?}"
    );
    assert_eq!(assigned[0].worker, "fx");
    assert_eq!(assigned[0].task, tagged.task(0));
    assert_eq!(row(&bench, "fx").tags, vec!["fx", "linux"]);
}

#[test]
fn an_unknown_worker_is_refused() {
    let mut bench = Bench::default();
    assert_eq!(
        bench.worker_control("ghost", WorkerControl::Disable),
        Err(Refusal::UnknownWorker("ghost".into()))
    );
}

#[test]
fn settings_survive_a_new_leader_and_a_worker_that_reconnects() {
    let mut bench = Bench::default();
    let now = bench.now;
    // A new leader loads what `workers` holds.
    let known = vec![
        KnownWorker {
            id: "off".into(),
            hostname: "off.local".into(),
            capabilities: pb::WorkerCapabilities::default(),
            tags: tags(&[]),
            admin: AdminState::Disabled,
            connection: Connection::Offline,
            last_seen: now.wall,
        },
        KnownWorker {
            id: "pool".into(),
            hostname: "pool.local".into(),
            capabilities: pb::WorkerCapabilities::default(),
            tags: tags(&["fx"]),
            admin: AdminState::Enabled,
            connection: Connection::Offline,
            last_seen: now.wall,
        },
    ];
    bench.core = Core::new(CoreSettings {
        policy: policy(),
        owner_weights: HashMap::new(),
        farm_position: 0,
        jitter_seed: 1,
        now,
        known_workers: known,
        network_templates: Default::default(),
        quotas: Default::default(),
        admission: Default::default(),
    });
    let tagged = bench.submit(job("bob", 1).tag("fx"));
    bench.join("off", worker());
    assert!(
        bench.dispatch().is_empty(),
        "still disabled after rejoining"
    );
    bench.join("pool", worker());
    let assigned = bench.dispatch_one();
    assert_eq!(assigned.worker, "pool");
    assert_eq!(assigned.task, tagged.task(0), "it still carries fx");
    assert_eq!(row(&bench, "off").connection, Connection::Online);
    bench.leave("off");
    bench.commit();
    assert_eq!(row(&bench, "off").connection, Connection::Offline);
    assert_eq!(row(&bench, "off").admin, AdminState::Disabled);
}

#[test]
fn a_workers_record_lists_a_bounded_number_of_blocklisting_jobs() {
    let mut bench = Bench::new(
        RetryPolicy {
            base_delay: Duration::ZERO,
            max_attempts: 10,
            blocklist_after: 1,
            ..policy()
        },
        &[],
    );
    let jobs = 103;
    for _ in 0..jobs {
        bench.submit(job("alice", 2));
    }
    bench.join("w", worker());
    // One failure each blocklists the worker for that job.
    for _ in 0..jobs {
        let a = bench.dispatch_one();
        bench.report("w", a.task, a.attempt, false, "boom");
        bench.tick();
    }
    assert_eq!(bench.dispatch(), [], "every job has blocklisted it");
    let record = bench.core.worker_record("w").expect("known");
    assert_eq!(record.blocklisted_by.len(), 100);
    assert_eq!(record.blocklisted_by_more, 3);
    let mut sorted = record.blocklisted_by.clone();
    sorted.sort();
    assert_eq!(sorted, record.blocklisted_by, "the first by id");
}
