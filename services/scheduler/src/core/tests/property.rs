//! Random sequences of commands never break the core's invariants:
//! - a task is in flight on at most one worker, and a worker holds only
//!   attempts that are their task's current one, within its slots and lookahead;
//! - a job's counts (and its steps', and its owner's share) match its tasks;
//! - no state moves backwards: every task write is a move the state machine
//!   allows, attempts only grow, and a final job is left only by a retry;
//! - every write is guarded on what its row holds (checked by
//!   `Bench::commit` against the shadow rows, write by write).
//!
//! Reports pick among every assignment ever made, so many are stale or
//! from the wrong worker: those must change nothing.

use proptest::prelude::*;

use super::*;
use crate::task_state::TaskEvent;

#[derive(Debug, Clone)]
enum Op {
    Submit {
        owner: u8,
        tasks: u8,
        priority: u8,
        gpu: bool,
        encode: bool,
    },
    Join {
        worker: u8,
        slots: u8,
        gpu: bool,
    },
    Leave {
        worker: u8,
    },
    LeaseLost {
        worker: u8,
    },
    Dispatch,
    Start {
        pick: usize,
    },
    Succeed {
        pick: usize,
    },
    Fail {
        pick: usize,
    },
    Progress {
        pick: usize,
    },
    Undeliverable {
        pick: usize,
    },
    Advance {
        millis: u32,
    },
    Control {
        job: usize,
        kind: u8,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        2 => (0..3u8, 1..5u8, 0..3u8, any::<bool>(), any::<bool>()).prop_map(
            |(owner, tasks, priority, gpu, encode)| Op::Submit {
                owner,
                tasks,
                priority,
                gpu,
                encode
            }
        ),
        2 => (0..3u8, 1..3u8, any::<bool>()).prop_map(|(worker, slots, gpu)| Op::Join {
            worker,
            slots,
            gpu
        }),
        1 => (0..3u8).prop_map(|worker| Op::Leave { worker }),
        1 => (0..3u8).prop_map(|worker| Op::LeaseLost { worker }),
        4 => Just(Op::Dispatch),
        3 => any::<usize>().prop_map(|pick| Op::Start { pick }),
        4 => any::<usize>().prop_map(|pick| Op::Succeed { pick }),
        2 => any::<usize>().prop_map(|pick| Op::Fail { pick }),
        1 => any::<usize>().prop_map(|pick| Op::Progress { pick }),
        1 => any::<usize>().prop_map(|pick| Op::Undeliverable { pick }),
        2 => (0..90_000u32).prop_map(|millis| Op::Advance { millis }),
        2 => (any::<usize>(), 0..6u8).prop_map(|(job, kind)| Op::Control { job, kind }),
    ]
}

const WORKERS: [&str; 3] = ["w0", "w1", "w2"];
const OWNERS: [&str; 3] = ["alice", "bob", "carol"];

struct Run {
    bench: Bench,
    jobs: Vec<Submitted>,
    /// Every assignment made so far, stale ones included.
    assigned: Vec<Assigned>,
    /// The last written state of each job, and whether it was final.
    job_rows: HashMap<Uuid, JobState>,
    specs: HashMap<&'static str, WorkerSpec>,
}

impl Run {
    fn apply(&mut self, op: Op) {
        let bench = &mut self.bench;
        let pick = |assigned: &[Assigned], n: usize| -> Option<Assigned> {
            (!assigned.is_empty()).then(|| assigned[n % assigned.len()].clone())
        };
        match op {
            Op::Submit {
                owner,
                tasks,
                priority,
                gpu,
                encode,
            } => {
                let mut spec = job(OWNERS[owner as usize], tasks as usize)
                    .priority([25, 50, 75][priority as usize]);
                if gpu {
                    spec = spec.on_gpu();
                }
                if encode {
                    spec = spec.then("Encode", 1);
                }
                self.jobs.push(bench.submit(spec));
            }
            Op::Join { worker, slots, gpu } => {
                let name = WORKERS[worker as usize];
                // A worker keeps its slots and GPUs across reconnections.
                let spec = self
                    .specs
                    .entry(name)
                    .or_insert_with(|| worker_spec(slots, gpu))
                    .clone();
                // A reconnecting worker names what it holds, as workers do.
                let held: Vec<Attempt> = bench
                    .core
                    .worker(name)
                    .map(|w| w.running.iter().copied().collect())
                    .unwrap_or_default();
                bench.join_holding(name, spec, held);
            }
            Op::Leave { worker } => {
                let name = WORKERS[worker as usize];
                if bench.core.worker(name).is_some() {
                    bench.leave(name);
                }
            }
            Op::LeaseLost { worker } => bench.lease_lost(WORKERS[worker as usize]),
            Op::Dispatch => {
                let made = bench.dispatch();
                self.assigned.extend(made);
            }
            Op::Start { pick: n } => {
                if let Some(a) = pick(&self.assigned, n) {
                    bench.started_attempt(&a.worker, a.task, a.attempt);
                }
            }
            Op::Succeed { pick: n } => {
                if let Some(a) = pick(&self.assigned, n) {
                    bench.report(&a.worker, a.task, a.attempt, true, "");
                }
            }
            Op::Fail { pick: n } => {
                if let Some(a) = pick(&self.assigned, n) {
                    bench.report(&a.worker, a.task, a.attempt, false, "boom");
                }
            }
            Op::Progress { pick: n } => {
                if let Some(a) = pick(&self.assigned, n) {
                    let progress = Command::Progress {
                        worker_id: a.worker,
                        task_id: a.task,
                        attempt: a.attempt,
                        fraction: 0.5,
                        frame: Some(1),
                        status: String::new(),
                    };
                    bench.handle(progress).expect("never refused");
                }
            }
            Op::Undeliverable { pick: n } => {
                if let Some(a) = pick(&self.assigned, n) {
                    let lost = Command::Undeliverable {
                        worker_id: a.worker,
                        task_id: a.task,
                        attempt: a.attempt,
                    };
                    bench.handle(lost).expect("never refused");
                }
            }
            Op::Advance { millis } => {
                bench.advance(Duration::from_millis(u64::from(millis)));
                bench.tick();
            }
            Op::Control { job, kind } => {
                if self.jobs.is_empty() {
                    return;
                }
                let id = self.jobs[job % self.jobs.len()].id;
                let control = match kind {
                    0 => Control::Cancel,
                    1 => Control::Pause,
                    2 => Control::Resume,
                    3 => Control::SetPriority(100),
                    4 => Control::ClearBlocklist(None),
                    _ => Control::Retry(None),
                };
                // A job that left the queue refuses; that is fine here.
                let _ = bench.control(id, control);
            }
        }
        let batch = bench.commit();
        self.check_moves(&batch);
        self.check_state();
    }

    /// No state moves backwards: each task write is a move of the state
    /// machine, attempts only grow, and a final job is left only by a retry.
    fn check_moves(&mut self, batch: &Batch) {
        for write in &batch.tasks {
            let allowed = ALL_EVENTS
                .iter()
                .any(|e| e.next(write.expect_state) == Some(write.state));
            assert!(
                allowed,
                "task {} moved {:?} -> {:?}",
                write.id, write.expect_state, write.state
            );
            let dispatch = write.state == TaskState::Dispatched;
            let expected_attempt = write.expect_attempt + i32::from(dispatch);
            assert_eq!(write.attempt, expected_attempt, "{write:?}");
        }
        for write in &batch.jobs {
            if let Some(before) = self.job_rows.get(&write.id)
                && before.is_final()
            {
                assert!(
                    write.reopened || write.state == *before,
                    "job {} left {before:?} for {:?} without a retry",
                    write.id,
                    write.state
                );
            }
            self.job_rows.insert(write.id, write.state);
        }
    }

    fn check_state(&self) {
        let core = &self.bench.core;
        // In flight on at most one worker, and only as its current attempt.
        let mut holders: HashMap<Uuid, &str> = HashMap::new();
        for (worker_id, worker) in core.workers() {
            assert!(
                worker.running.len() <= worker.capacity(),
                "{worker_id} holds more than its slots and lookahead"
            );
            for &(task_id, attempt) in &worker.running {
                if let Some(other) = holders.insert(task_id, worker_id) {
                    panic!("task {task_id} is in flight on {other} and {worker_id}");
                }
                let task = core.task(task_id).expect("a held task is in memory");
                assert!(
                    task.state.is_in_flight(),
                    "{worker_id} holds a {:?} task",
                    task.state
                );
                assert_eq!(task.attempt, attempt, "{worker_id} holds a stale attempt");
                assert_eq!(task.worker_id.as_deref(), Some(worker_id.as_str()));
            }
        }
        // Counts match the tasks.
        let mut in_flight_by_owner: HashMap<&str, u64> = HashMap::new();
        for job in core.jobs() {
            let tasks: Vec<&TaskEntry> = job
                .task_ids
                .iter()
                .filter_map(|id| core.task(*id))
                .collect();
            assert_eq!(tasks.len(), job.task_ids.len(), "a job's task left memory");
            assert_eq!(
                job.counts,
                counts_of_refs(&tasks),
                "counts of job {}",
                job.id
            );
            for (position, step) in job.steps.iter().enumerate() {
                let of_step = || tasks.iter().filter(|t| t.step == position);
                let done = |state| of_step().filter(|t| t.state == state).count();
                assert_eq!(step.succeeded, done(TaskState::Succeeded));
                assert_eq!(step.failed, done(TaskState::Failed));
                assert_eq!(step.total, of_step().count());
            }
            *in_flight_by_owner.entry(job.owner.as_str()).or_default() +=
                job.counts.in_flight as u64;
            assert!(!job.state.is_final(), "a final job stays in memory");
        }
        for owner in OWNERS {
            assert_eq!(
                core.in_flight_of(owner),
                in_flight_by_owner.get(owner).copied().unwrap_or(0),
                "{owner}'s share"
            );
        }
    }
}

const ALL_EVENTS: [TaskEvent; 8] = [
    TaskEvent::Dispatch,
    TaskEvent::Start,
    TaskEvent::Succeed,
    TaskEvent::FailAndRetry,
    TaskEvent::FailFinally,
    TaskEvent::Lose,
    TaskEvent::Cancel,
    TaskEvent::Reopen,
];

/// Workers with one slot hold one task queued (lookahead), the others none.
fn worker_spec(slots: u8, gpu: bool) -> WorkerSpec {
    worker()
        .slots(u32::from(slots))
        .lookahead(u32::from(slots == 1))
        .gpus(u32::from(gpu))
}

fn counts_of_refs(tasks: &[&TaskEntry]) -> TaskCounts {
    let mut counts = TaskCounts {
        total: tasks.len() as i64,
        ..TaskCounts::default()
    };
    for task in tasks {
        match task.state {
            TaskState::Pending | TaskState::WaitingRetry => counts.waiting += 1,
            TaskState::Dispatched | TaskState::Running => counts.in_flight += 1,
            TaskState::Succeeded => counts.succeeded += 1,
            TaskState::Failed => counts.failed += 1,
            TaskState::Cancelled => counts.cancelled += 1,
        }
    }
    counts
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 256,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn random_commands_never_break_the_invariants(ops in prop::collection::vec(op(), 1..120)) {
        let mut run = Run {
            bench: Bench::default(),
            jobs: Vec::new(),
            assigned: Vec::new(),
            job_rows: HashMap::new(),
            specs: HashMap::new(),
        };
        for op in ops {
            run.apply(op);
        }
        // And everything left can still finish: every worker (re)joins able
        // to run anything, naming what it holds.
        for name in WORKERS {
            let held: Vec<Attempt> = run
                .bench
                .core
                .worker(name)
                .map(|w| w.running.iter().copied().collect())
                .unwrap_or_default();
            run.bench.join_holding(name, worker_spec(2, true), held);
        }
        for id in run.jobs.iter().map(|j| j.id).collect::<Vec<_>>() {
            let _ = run.bench.control(id, Control::Resume);
            let _ = run.bench.control(id, Control::ClearBlocklist(None));
        }
        for _ in 0..50 {
            let held: Vec<(String, Attempt)> = run
                .bench
                .core
                .workers()
                .flat_map(|(id, w)| w.running.iter().map(move |a| (id.clone(), *a)))
                .collect();
            for (worker_id, (task, attempt)) in held {
                run.bench.report(&worker_id, task, attempt, true, "");
            }
            run.bench.advance(Duration::from_secs(400));
            run.bench.tick();
            run.bench.run_to_end();
            run.check_state();
        }
        prop_assert_eq!(run.bench.core.jobs().count(), 0, "every job finished");
    }
}
