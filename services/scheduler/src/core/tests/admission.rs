//! Admission control: an owner over their share of a saturated farm is
//! delayed (held, with the reason) or refused; others are not; nothing is lost.

use super::*;
use crate::core::waiting::Waiting;

/// A farm that holds back work once 100 s of it queue for a renderer.
fn bench(action: AdmissionAction, weights: &[(&str, f64)]) -> Bench {
    let admission = AdmissionPolicy {
        max_queue_wait: Some(Duration::from_secs(100)),
        action,
    };
    let mut bench = Bench::with_admission(policy(), weights, admission);
    bench.join("w", worker());
    bench
}

/// Alice's ten tasks fill the one-slot farm: one runs, nine queue (9 × 60 s
/// expected, far above the bound).
fn saturate(bench: &mut Bench) -> (Submitted, Assigned) {
    let (admission, first) = bench.submit_admitted(job("alice", 10));
    assert_eq!(admission, Admission::Admit, "an empty farm admits anything");
    let running = bench.dispatch_one();
    (first.expect("admitted"), running)
}

fn held_reason(bench: &Bench, job: Uuid) -> Option<String> {
    bench.core.job(job).and_then(|j| j.held.clone())
}

#[test]
fn an_owner_over_their_share_is_delayed_with_the_reason_and_others_are_not() {
    let mut bench = bench(AdmissionAction::Delay, &[]);
    let (first, running) = saturate(&mut bench);

    let (admission, bobs) = bench.submit_admitted(job("bob", 1));
    assert_eq!(admission, Admission::Admit, "bob has nothing outstanding");
    let bobs = bobs.expect("admitted");

    let (admission, second) = bench.submit_admitted(job("alice", 2));
    let Admission::Delay { reason } = admission else {
        panic!("alice is over her share of a saturated farm: {admission:?}");
    };
    for part in ["queue wait for blender", "alice", "91%", "50%"] {
        assert!(reason.contains(part), "{part:?} missing from {reason:?}");
    }
    let second = second.expect("a delayed job is stored");
    assert_eq!(held_reason(&bench, second.id).as_deref(), Some(&*reason));
    assert_eq!(
        bench.core.why_waiting(second.task(0)),
        Some(Waiting::Held(reason.clone()))
    );
    let record = bench.commit();
    let said = record.events.iter().any(|(job, event)| {
        *job == second.id
            && matches!(&event.event, Some(pb::job_event::Event::JobChanged(j)) if j.held_reason == reason)
    });
    assert!(said, "the job's record carries the reason");

    // Everything runs to the end: the held job once the queue drained, and
    // nothing is lost.
    bench.started_attempt(&running.worker, running.task, running.attempt);
    bench.report(&running.worker, running.task, running.attempt, true, "");
    let mut ran = Vec::new();
    for _ in 0..20 {
        bench.tick();
        let round = bench.run_to_end();
        if round.is_empty() && held_reason(&bench, second.id).is_none() {
            break;
        }
        ran.extend(round.into_iter().map(|a| a.task));
    }
    let bob_at = ran.iter().position(|t| *t == bobs.task(0));
    let held_at = ran.iter().position(|t| *t == second.task(0));
    assert!(
        bob_at.is_some() && bob_at < held_at,
        "bob's job ran before the held one, which ran too: {bob_at:?} {held_at:?}"
    );
    for job in [first.id, bobs.id, second.id] {
        assert_eq!(bench.written_job_state(job), Some(JobState::Succeeded));
    }
}

#[test]
fn an_owner_alone_on_a_saturated_farm_is_never_held() {
    let mut bench = bench(AdmissionAction::Delay, &[]);
    saturate(&mut bench);
    let (admission, _) = bench.submit_admitted(job("alice", 5));
    assert_eq!(admission, Admission::Admit);
}

#[test]
fn a_short_queue_admits_even_an_owner_over_their_share() {
    let mut bench = bench(AdmissionAction::Delay, &[]);
    bench.join("w2", worker());
    let (_, first) = bench.submit_admitted(job("alice", 2));
    bench.dispatch();
    bench.submit_admitted(job("bob", 1));
    // Alice has two of three outstanding tasks, but only bob's 60 s wait
    // for two slots: below the bound.
    let (admission, _) = bench.submit_admitted(job("alice", 1));
    assert_eq!(admission, Admission::Admit);
    assert!(first.is_some());
}

#[test]
fn the_refuse_policy_refuses_with_a_retry_after_and_stores_nothing() {
    let mut bench = bench(AdmissionAction::Refuse, &[]);
    saturate(&mut bench);
    let (admission, _) = bench.submit_admitted(job("bob", 1));
    assert_eq!(admission, Admission::Admit);
    let jobs_before = bench.core.jobs().count();
    let (admission, stored) = bench.submit_admitted(job("alice", 1));
    let Admission::Refuse {
        reason,
        retry_after,
    } = admission
    else {
        panic!("expected a refusal: {admission:?}");
    };
    assert!(reason.contains("alice"), "{reason}");
    // Nine queued tasks of 60 s and bob's one, over one slot, minus the bound.
    assert_eq!(retry_after, Duration::from_secs(10 * 60 - 100));
    assert!(stored.is_none());
    assert_eq!(bench.core.jobs().count(), jobs_before);
}

#[test]
fn weights_set_the_fair_share() {
    // Alice may have three quarters of the farm.
    let mut bench = bench(AdmissionAction::Delay, &[("alice", 3.0)]);
    saturate(&mut bench);
    bench.submit_admitted(job("bob", 4));
    // 10 of 14 outstanding tasks is 71%, under her 75%.
    let (admission, _) = bench.submit_admitted(job("alice", 1));
    assert_eq!(admission, Admission::Admit);
    let mut heavy = self::bench(AdmissionAction::Delay, &[("alice", 3.0)]);
    saturate(&mut heavy);
    heavy.submit_admitted(job("bob", 2));
    // 10 of 12 is 83%, over 75%.
    let (admission, _) = heavy.submit_admitted(job("alice", 1));
    assert!(
        matches!(admission, Admission::Delay { .. }),
        "{admission:?}"
    );
}

#[test]
fn without_a_bound_everything_is_admitted() {
    let mut bench = Bench::default();
    bench.join("w", worker());
    bench.submit(job("alice", 50));
    bench.dispatch_one();
    bench.submit(job("bob", 1));
    let (admission, _) = bench.submit_admitted(job("alice", 50));
    assert_eq!(admission, Admission::Admit);
}
