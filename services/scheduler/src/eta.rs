//! A running job's expected finish, learnt from how long its finished tasks
//! took (per step), from earlier jobs of the same scene, and from how many
//! of its tasks run at once.
//!
//! Run times are kept per frame (a task's time over its frame count, a
//! frameless task counting as one), so a chunk size that differs from an
//! earlier job's still compares. Each step keeps the mean and spread of its
//! successful attempts (Welford's online algorithm, so memory is constant
//! per step). Earlier jobs of the scene (`scene_history.rs`) count as at
//! most EARLIER_WEIGHT samples: they give an ETA before the job's first task
//! ends, and the job's own frames outweigh them soon after. What remains is
//! the waiting tasks' mean run time plus half of each running task's, spread
//! over the tasks the job runs at once (while none runs, as many as when it
//! last ran any; before it ever ran, the slots of the workers that could take
//! its tasks, as many as it has tasks left). The ± comes from the run
//! times' standard deviation, scaled the way a sum of independent durations
//! spreads.

use std::cell::Cell;
use std::collections::HashMap;

use chrono::{DateTime, Utc};
use kiln_proto::v1 as pb;
use uuid::Uuid;

use crate::timestamps::timestamp;

/// The most samples earlier jobs of a scene count for, against the job's own.
const EARLIER_WEIGHT: u32 = 4;

/// Mean and spread of run times.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct RunStats {
    pub count: u32,
    pub mean: f64,
    /// Sum of squared differences from the mean.
    pub m2: f64,
}

impl RunStats {
    pub fn add(&mut self, seconds: f64) {
        self.count += 1;
        let delta = seconds - self.mean;
        self.mean += delta / f64::from(self.count);
        self.m2 += delta * (seconds - self.mean);
    }

    /// Both sets of samples as one (Chan et al.'s parallel update).
    pub fn merged(self, other: RunStats) -> RunStats {
        if self.count == 0 {
            return other;
        }
        if other.count == 0 {
            return self;
        }
        let (a, b) = (f64::from(self.count), f64::from(other.count));
        let n = a + b;
        let delta = other.mean - self.mean;
        RunStats {
            count: self.count + other.count,
            mean: self.mean + delta * b / n,
            m2: self.m2 + other.m2 + delta * delta * a * b / n,
        }
    }

    /// The same mean and spread, counted as at most `count` samples.
    pub fn weighed_as(self, count: u32) -> RunStats {
        if self.count <= count {
            return self;
        }
        let scale = f64::from(count) / f64::from(self.count);
        RunStats {
            count,
            mean: self.mean,
            m2: self.m2 * scale,
        }
    }

    fn std_dev(&self) -> f64 {
        if self.count < 2 {
            return self.mean * 0.5;
        }
        (self.m2 / f64::from(self.count - 1)).sqrt()
    }
}

/// What one step of a running job has learnt.
#[derive(Debug, Clone, Default)]
pub struct StepTimes {
    pub name: String,
    /// Seconds per frame of the job's own successful attempts.
    pub own: RunStats,
    /// Seconds per frame in earlier jobs of the same scene.
    pub earlier: RunStats,
    /// Mean frames of the step's unfinished tasks.
    pub frames_per_task: f64,
}

impl StepTimes {
    fn per_frame(&self) -> RunStats {
        self.own.merged(self.earlier.weighed_as(EARLIER_WEIGHT))
    }
}

/// What a running job has learnt.
#[derive(Default)]
struct JobTimes {
    steps: Vec<StepTimes>,
    /// Tasks of the job running at once when last seen running; kept for
    /// the moments none runs (between a success and the next dispatch, a
    /// pause), so the ETA does not jump.
    parallel: Cell<usize>,
}

/// Run times of each running job's steps.
#[derive(Default)]
pub struct EtaBook {
    jobs: HashMap<Uuid, JobTimes>,
}

/// A step of a job as its book starts: its name, and the frames of its
/// unfinished tasks (a frameless task counting as one).
pub struct StepShape {
    pub name: String,
    pub task_frames: Vec<f64>,
}

/// A step of a running job as it is now.
#[derive(Debug, Clone, Copy, Default)]
pub struct StepLeft {
    /// Tasks neither succeeded nor failed for good.
    pub left: usize,
    /// Of those, tasks in flight.
    pub running: usize,
}

impl EtaBook {
    /// Starts a job's book from its steps and what earlier jobs of its
    /// scene took per step (by step name).
    pub fn open(
        &mut self,
        job_id: Uuid,
        steps: Vec<StepShape>,
        earlier: &HashMap<String, RunStats>,
    ) {
        let steps = steps
            .into_iter()
            .map(|step| StepTimes {
                own: RunStats::default(),
                earlier: earlier.get(&step.name).copied().unwrap_or_default(),
                frames_per_task: if step.task_frames.is_empty() {
                    1.0
                } else {
                    step.task_frames.iter().sum::<f64>() / step.task_frames.len() as f64
                },
                name: step.name,
            })
            .collect();
        self.jobs.insert(
            job_id,
            JobTimes {
                steps,
                parallel: Cell::new(0),
            },
        );
    }

    pub fn learn(&mut self, job_id: Uuid, step: usize, seconds: f64, frames: f64) {
        if let Some(times) = self
            .jobs
            .get_mut(&job_id)
            .and_then(|j| j.steps.get_mut(step))
        {
            times.own.add(seconds / frames.max(1.0));
        }
    }

    /// Closes a job's book, returning what it learnt.
    pub fn close(&mut self, job_id: Uuid) -> Vec<StepTimes> {
        self.jobs.remove(&job_id).unwrap_or_default().steps
    }

    /// The job's ETA, or `None` until one of its tasks finished or an
    /// earlier job of its scene is known. `farm_slots` is the slots of the
    /// workers that could take its tasks.
    pub fn estimate(
        &self,
        job_id: Uuid,
        now: &[StepLeft],
        farm_slots: usize,
        computed_at: DateTime<Utc>,
    ) -> Option<pb::Eta> {
        let job_times = self.jobs.get(&job_id)?;
        let times = &job_times.steps;
        let per_frame: Vec<RunStats> = times.iter().map(StepTimes::per_frame).collect();
        let samples: u32 = times.iter().map(|t| t.own.count).sum();
        let earlier_samples: u32 = times.iter().map(|t| t.earlier.count).sum();
        let known: Vec<f64> = per_frame
            .iter()
            .zip(times)
            .filter(|(stats, _)| stats.count > 0)
            .map(|(stats, step)| stats.mean * step.frames_per_task)
            .collect();
        if known.is_empty() {
            return None;
        }
        // Steps with nothing known yet are assumed to take what the others did per task.
        let fallback = known.iter().sum::<f64>() / known.len() as f64;
        let running: usize = now.iter().map(|s| s.running).sum();
        let left: usize = now.iter().map(|s| s.left).sum();
        if running > 0 {
            job_times.parallel.set(running);
        }
        let parallel = match job_times.parallel.get() {
            0 => farm_slots.min(left),
            seen => running.max(seen.min(left)),
        }
        .max(1) as f64;
        let (mut work, mut variance) = (0.0, 0.0);
        for (position, step) in now.iter().enumerate() {
            let (mean, sd) = match (per_frame.get(position), times.get(position)) {
                (Some(stats), Some(t)) if stats.count > 0 => (
                    stats.mean * t.frames_per_task,
                    stats.std_dev() * t.frames_per_task,
                ),
                _ => (fallback, fallback * 0.5),
            };
            let running = step.running;
            let waiting = step.left.saturating_sub(running) as f64;
            work += waiting * mean + running as f64 * mean * 0.5;
            variance += (waiting + running as f64) * sd * sd;
        }
        let seconds_left = work / parallel;
        let plus_minus = variance.sqrt() / parallel.sqrt();
        Some(pb::Eta {
            seconds_left: seconds_left.round() as u32,
            plus_minus_seconds: plus_minus.round() as u32,
            computed_at: Some(timestamp(computed_at)),
            samples,
            earlier_samples,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(samples: &[f64]) -> RunStats {
        let mut stats = RunStats::default();
        for s in samples {
            stats.add(*s);
        }
        stats
    }

    #[test]
    fn merging_matches_adding_every_sample() {
        let both = stats(&[1.0, 2.0, 4.0]).merged(stats(&[8.0, 3.0]));
        let all = stats(&[1.0, 2.0, 4.0, 8.0, 3.0]);
        assert_eq!(both.count, all.count);
        assert!((both.mean - all.mean).abs() < 1e-9);
        assert!((both.m2 - all.m2).abs() < 1e-9);
    }

    #[test]
    fn earlier_jobs_weigh_no_more_than_a_few_samples() {
        let earlier = stats(&[10.0; 100]);
        let step = StepTimes {
            own: stats(&[2.0; 8]),
            earlier,
            frames_per_task: 1.0,
            ..StepTimes::default()
        };
        // 8 own samples at 2 s against 4 earlier ones at 10 s.
        let mean = step.per_frame().mean;
        assert!(
            (mean - (8.0 * 2.0 + 4.0 * 10.0) / 12.0).abs() < 1e-9,
            "{mean}"
        );
    }
}
