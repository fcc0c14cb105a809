//! Owners' quotas: the share cap in the pick order, and admission of jobs
//! against unfinished jobs and tasks.

use super::*;
use crate::core::pick_order::RunningCaps;
use crate::core::quota_policy::QuotaExceeded;
use crate::core::quotas::RESERVATION_TTL;
use crate::core::waiting::Waiting;

fn capped(default: u64, per_owner: &[(&str, u64)]) -> QuotaSettings {
    QuotaSettings {
        running: RunningCaps {
            default,
            per_owner: per_owner
                .iter()
                .map(|(owner, cap)| ((*owner).to_owned(), *cap))
                .collect(),
        },
        ..QuotaSettings::default()
    }
}

fn owners(bench: &Bench, assigned: &[Assigned], jobs: &[(&str, &Submitted)]) -> Vec<String> {
    let _ = bench;
    assigned
        .iter()
        .map(|a| {
            jobs.iter()
                .find(|(_, job)| job.all_tasks().contains(&a.task))
                .map_or("?".to_owned(), |(owner, _)| (*owner).to_owned())
        })
        .collect()
}

#[test]
fn an_owner_at_its_share_cap_gets_no_more_slots_even_at_critical_priority() {
    let mut bench = Bench::with_quotas(policy(), &[], capped(2, &[]));
    let alice = bench.submit(job("alice", 10).priority(100));
    bench.join("w", worker().slots(8));
    let first = bench.dispatch();
    assert_eq!(first.len(), 2, "alice's cap is 2 though 8 slots are free");
    assert_eq!(bench.core.in_flight_of("alice"), 2);
    assert_eq!(
        bench.core.why_waiting(alice.task(2)),
        Some(Waiting::OwnerAtCap { running: 2, cap: 2 })
    );
    // Bob, at normal priority, takes slots alice may not, up to his own cap.
    let bob = bench.submit(job("bob", 3));
    let second = bench.dispatch();
    assert_eq!(
        owners(&bench, &second, &[("alice", &alice), ("bob", &bob)]),
        ["bob", "bob"]
    );
    // One of alice's tasks ends: she gets exactly one slot back, and bob,
    // at his cap, none though four slots are free.
    bench.succeed("w", alice.task(0));
    let third = bench.dispatch();
    assert_eq!(
        owners(&bench, &third, &[("alice", &alice), ("bob", &bob)]),
        ["alice"]
    );
}

#[test]
fn named_owners_have_their_own_caps_and_zero_means_none() {
    let mut bench = Bench::with_quotas(
        policy(),
        &[],
        capped(1, &[("render-bot", 3), ("farm-admin", 0)]),
    );
    let alice = bench.submit(job("alice", 5));
    let bot = bench.submit(job("render-bot", 5));
    let admin = bench.submit(job("farm-admin", 5));
    bench.join("w", worker().slots(12));
    let assigned = bench.dispatch();
    let jobs = [
        ("alice", &alice),
        ("render-bot", &bot),
        ("farm-admin", &admin),
    ];
    let got = owners(&bench, &assigned, &jobs);
    let count = |owner: &str| got.iter().filter(|o| *o == owner).count();
    assert_eq!(
        (count("alice"), count("render-bot"), count("farm-admin")),
        (1, 3, 5),
        "{got:?}"
    );
}

#[test]
fn a_job_over_its_owners_queued_task_quota_is_refused_naming_the_quota() {
    let quotas = QuotaSettings {
        max_queued_tasks: 10,
        ..QuotaSettings::default()
    };
    let mut bench = Bench::with_quotas(policy(), &[], quotas);
    bench
        .admit_and_submit(job("alice", 6))
        .expect("6 of 10 tasks");
    let refused = bench
        .admit_and_submit(job("alice", 5))
        .expect_err("6 + 5 > 10");
    assert_eq!(
        refused,
        Refusal::Quota(QuotaExceeded::Tasks {
            owner: "alice".into(),
            has: 6,
            adds: 5,
            limit: 10
        })
    );
    assert!(
        refused
            .to_string()
            .starts_with("quota max-queued-tasks-per-owner: alice has 6"),
        "{refused}"
    );
    // Other owners are not held back by alice's queue.
    bench
        .admit_and_submit(job("bob", 10))
        .expect("bob's own quota");
    // Finished tasks leave the quota: alice may queue more once hers end.
    bench.join("w", worker().slots(6));
    for a in bench.dispatch() {
        bench.report("w", a.task, a.attempt, true, "");
    }
    bench
        .admit_and_submit(job("alice", 5))
        .expect("her queue emptied");
}

#[test]
fn admissions_hold_room_until_their_job_arrives_or_lapses() {
    let quotas = QuotaSettings {
        max_unfinished_jobs: 1,
        ..QuotaSettings::default()
    };
    let mut bench = Bench::with_quotas(policy(), &[], quotas);
    // Two submissions race: the first admitted holds the only job slot...
    let first = bench.next_request();
    bench
        .handle(Command::Admit {
            request: first,
            owner: "alice".into(),
            tasks: 1,
        })
        .expect("room for one job");
    let second = bench.handle(Command::Admit {
        request: bench.peek_request(),
        owner: "alice".into(),
        tasks: 1,
    });
    assert!(
        matches!(second, Err(Refusal::Quota(QuotaExceeded::Jobs { .. }))),
        "{second:?}"
    );
    // ...until it lapses because its job never arrived (its submission failed).
    bench.advance(RESERVATION_TTL + Duration::from_secs(1));
    bench.tick();
    assert_eq!(bench.core.usage_of("alice").jobs, 0);
    bench
        .admit_and_submit(job("alice", 1))
        .expect("the lapsed room is free again");
    assert_eq!(
        bench.core.usage_of("alice").jobs,
        1,
        "the job, not its admission"
    );
}
