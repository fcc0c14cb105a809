//! Event numbering: gap-free per job and farm-wide, written with the change
//! that caused it; progress and records throttled.

use super::*;

fn progress(bench: &mut Bench, worker_id: &str, task: Uuid, frame: Option<i64>) {
    progress_saying(bench, worker_id, task, frame, "");
}

fn progress_saying(
    bench: &mut Bench,
    worker_id: &str,
    task: Uuid,
    frame: Option<i64>,
    status: &str,
) {
    let attempt = bench.attempt_of(task);
    let report = Command::Progress {
        worker_id: worker_id.into(),
        task_id: task,
        attempt,
        fraction: 0.5,
        frame,
        status: status.into(),
    };
    bench.handle(report).expect("never refused");
}

/// The progress events of a batch: status lines, in order.
fn statuses(batch: &Batch) -> Vec<String> {
    batch
        .events
        .iter()
        .filter_map(|(_, e)| match &e.event {
            Some(pb::job_event::Event::TaskProgress(p)) => Some(p.status.clone()),
            _ => None,
        })
        .collect()
}

#[test]
fn job_events_are_numbered_without_gaps_per_job_and_farm_wide() {
    let mut bench = Bench::default();
    bench.submit(job("alice", 2));
    bench.submit(job("bob", 1));
    bench.join("w", worker().slots(3));
    bench.run_to_end();
    let events = bench.events();
    let mut per_job: HashMap<String, Vec<u64>> = HashMap::new();
    for event in &events {
        per_job
            .entry(event.job_id.clone())
            .or_default()
            .push(event.seq);
    }
    for seqs in per_job.values() {
        let expected: Vec<u64> = (1..=seqs.len() as u64).collect();
        assert_eq!(seqs, &expected);
    }
    let mut positions: Vec<u64> = events.iter().map(|e| e.farm_seq).collect();
    positions.extend(
        bench
            .batches
            .iter()
            .flat_map(|b| &b.farm_events)
            .map(|e| e.farm_seq),
    );
    positions.sort_unstable();
    let expected: Vec<u64> = (1..=positions.len() as u64).collect();
    assert_eq!(positions, expected);
    assert_eq!(bench.core.farm_position(), positions.len() as u64);
}

#[test]
fn farm_positions_continue_after_those_already_written() {
    let mut bench = Bench::default();
    let mut core = Core::new(CoreSettings {
        policy: policy(),
        owner_weights: HashMap::new(),
        quotas: Default::default(),
        farm_position: 41,
        jitter_seed: 1,
        now: bench.now,
        known_workers: Vec::new(),
        network_templates: Default::default(),
        admission: Default::default(),
    });
    std::mem::swap(&mut bench.core, &mut core);
    bench.join("w", worker());
    let batch = bench.commit();
    assert_eq!(batch.farm_events[0].farm_seq, 42, "worker joined");
}

#[test]
fn every_event_is_published_after_its_batch_is_written() {
    let mut bench = Bench::default();
    bench.submit(job("alice", 1));
    bench.join("w", worker());
    bench.core.dispatch(bench.now);
    let batch = bench.commit();
    let written: Vec<u64> = batch.events.iter().map(|(_, e)| e.farm_seq).collect();
    let published: Vec<u64> = batch
        .effects
        .iter()
        .filter_map(|e| match e {
            Effect::Publish(event) if !event.job_id.is_empty() => Some(event.farm_seq),
            _ => None,
        })
        .collect();
    assert_eq!(written, published);
}

#[test]
fn progress_is_kept_once_a_second_unless_the_frame_changes() {
    let mut bench = Bench::default();
    let job = bench.submit(job("alice", 1));
    bench.join("w", worker());
    bench.dispatch();
    bench.started("w", job.task(0));
    bench.commit();
    let kinds = |batch: &Batch| {
        batch
            .events
            .iter()
            .filter(|(_, e)| matches!(e.event, Some(pb::job_event::Event::TaskProgress(_))))
            .count()
    };
    progress(&mut bench, "w", job.task(0), Some(1));
    progress(&mut bench, "w", job.task(0), Some(1));
    bench.advance(Duration::from_millis(500));
    progress(&mut bench, "w", job.task(0), Some(1));
    assert_eq!(kinds(&bench.commit()), 1, "the same frame within a second");
    progress(&mut bench, "w", job.task(0), Some(2));
    assert_eq!(kinds(&bench.commit()), 1, "a new frame goes out at once");
    bench.advance(Duration::from_secs(1));
    progress(&mut bench, "w", job.task(0), Some(2));
    assert_eq!(kinds(&bench.commit()), 1, "and again after a second");
}

#[test]
fn a_new_status_line_goes_out_at_once_and_a_repeated_one_is_throttled() {
    let mut bench = Bench::default();
    let job = bench.submit(job("alice", 1).with_session_step("{}"));
    bench.join("w", worker().renderers(&[kiln_jobmodel::SESSION_COMMAND]));
    bench.dispatch();
    bench.started("w", job.task(0));
    bench.commit();
    // Session actions report no frame: only the status line tells them apart.
    progress_saying(&mut bench, "w", job.task(0), None, "Loading");
    progress_saying(&mut bench, "w", job.task(0), None, "Loading");
    progress_saying(&mut bench, "w", job.task(0), None, "Rendering");
    progress_saying(&mut bench, "w", job.task(0), None, "Rendering");
    assert_eq!(
        statuses(&bench.commit()),
        ["Loading", "Rendering"],
        "each new status at once, a repeat within a second not at all"
    );
    bench.advance(Duration::from_millis(500));
    progress_saying(&mut bench, "w", job.task(0), None, "Loading");
    assert_eq!(
        statuses(&bench.commit()),
        ["Loading"],
        "a status that differs from the last one sent, even one seen before"
    );
    bench.advance(Duration::from_secs(1));
    progress_saying(&mut bench, "w", job.task(0), None, "Loading");
    assert_eq!(
        statuses(&bench.commit()),
        ["Loading"],
        "again after a second"
    );
}

#[test]
fn a_jobs_record_is_held_back_while_only_counts_move_then_sent_on_a_tick() {
    let mut bench = Bench::default();
    let job = bench.submit(job("alice", 4));
    bench.join("w", worker().slots(4));
    bench.dispatch();
    bench.started("w", job.task(0));
    bench.commit();
    let records = |batch: &Batch| {
        batch
            .events
            .iter()
            .filter(|(_, e)| matches!(e.event, Some(pb::job_event::Event::JobChanged(_))))
            .count()
    };
    bench.succeed("w", job.task(0));
    bench.succeed("w", job.task(1));
    assert_eq!(
        records(&bench.commit()),
        0,
        "counts moved within 500 ms of the last record"
    );
    bench.advance(crate::core::numbering::RECORD_INTERVAL);
    bench.tick();
    let batch = bench.commit();
    assert_eq!(records(&batch), 1);
    let record = batch
        .events
        .iter()
        .find_map(|(_, e)| match &e.event {
            Some(pb::job_event::Event::JobChanged(job)) => Some(job.clone()),
            _ => None,
        })
        .expect("a record");
    assert_eq!(record.tasks_succeeded, 2);
}

#[test]
fn a_jobs_record_carries_an_eta_once_a_task_finished() {
    let mut bench = Bench::default();
    let job = bench.submit(job("alice", 3));
    bench.join("w", worker());
    bench.dispatch();
    bench.advance(Duration::from_secs(10));
    bench.succeed("w", job.task(0));
    bench.advance(crate::core::numbering::RECORD_INTERVAL);
    bench.tick();
    let batch = bench.commit();
    let eta = batch
        .events
        .iter()
        .filter_map(|(_, e)| match &e.event {
            Some(pb::job_event::Event::JobChanged(job)) => job.eta,
            _ => None,
        })
        .next_back()
        .expect("an ETA");
    // Two tasks of 10 s left, one at a time.
    assert_eq!(eta.seconds_left, 20);
    assert_eq!(eta.samples, 1);
}

#[test]
fn a_succeeded_job_leaves_its_run_times_for_its_scene() {
    let mut bench = Bench::default();
    bench.submit(job("alice", 2).inputs(&"a".repeat(64)));
    bench.join("w", worker());
    for _ in 0..2 {
        let a = bench.dispatch_one();
        bench.advance(Duration::from_secs(4));
        bench.report("w", a.task, a.attempt, true, "");
    }
    let batch = bench.commit();
    assert_eq!(batch.scene_times.len(), 1);
    let times = &batch.scene_times[0];
    assert_eq!((times.step_name.as_str(), times.stats.count), ("Render", 2));
    assert!((times.stats.mean - 4.0).abs() < 1e-9);
}
