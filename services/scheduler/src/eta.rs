//! A running job's expected finish, learnt from how long its finished tasks
//! took (per step) and how many of its tasks run at once.
//!
//! Each step keeps the mean and spread of its successful attempts' run
//! times (Welford's online algorithm, so memory is constant per step). What
//! remains is the waiting tasks' mean run time plus half of each running
//! task's, spread over the tasks the job currently runs at once. The ±
//! comes from the run times' standard deviation, scaled the way a sum of
//! independent durations spreads.

use std::collections::HashMap;

use kiln_proto::v1 as pb;
use uuid::Uuid;

use crate::core::JobEntry;

/// Mean and spread of one step's run times.
#[derive(Debug, Clone, Copy, Default)]
pub struct RunStats {
    count: u32,
    mean: f64,
    m2: f64,
}

impl RunStats {
    pub fn add(&mut self, seconds: f64) {
        self.count += 1;
        let delta = seconds - self.mean;
        self.mean += delta / f64::from(self.count);
        self.m2 += delta * (seconds - self.mean);
    }

    fn std_dev(&self) -> f64 {
        if self.count < 2 {
            return self.mean * 0.5;
        }
        (self.m2 / f64::from(self.count - 1)).sqrt()
    }
}

/// Run times per (job, step position).
#[derive(Default)]
pub struct EtaBook {
    steps: HashMap<(Uuid, usize), RunStats>,
}

impl EtaBook {
    pub fn learn(&mut self, job_id: Uuid, step: usize, seconds: f64) {
        self.steps.entry((job_id, step)).or_default().add(seconds);
    }

    pub fn forget(&mut self, job_id: Uuid, steps: usize) {
        for step in 0..steps {
            self.steps.remove(&(job_id, step));
        }
    }

    /// The job's ETA, or `None` until at least one task finished.
    pub fn estimate(&self, job: &JobEntry, running_per_step: &[usize]) -> Option<pb::Eta> {
        if job.state.is_final() {
            return None;
        }
        let known: Vec<RunStats> = (0..job.steps.len())
            .filter_map(|s| self.steps.get(&(job.id, s)).copied())
            .collect();
        let samples: u32 = known.iter().map(|s| s.count).sum();
        if samples == 0 {
            return None;
        }
        // Steps with no finished task yet are assumed to take what the others did.
        let fallback = known.iter().map(|s| s.mean).sum::<f64>() / known.len() as f64;
        let parallel = running_per_step.iter().sum::<usize>().max(1) as f64;
        let (mut work, mut variance) = (0.0, 0.0);
        for (position, step) in job.steps.iter().enumerate() {
            let stats = self.steps.get(&(job.id, position)).copied();
            let (mean, sd) = stats.map_or((fallback, fallback * 0.5), |s| (s.mean, s.std_dev()));
            let running = running_per_step.get(position).copied().unwrap_or(0);
            let left = step.total.saturating_sub(step.succeeded + step.failed);
            let waiting = left.saturating_sub(running) as f64;
            work += waiting * mean + running as f64 * mean * 0.5;
            variance += (waiting + running as f64) * sd * sd;
        }
        let seconds_left = work / parallel;
        let plus_minus = variance.sqrt() / parallel.sqrt();
        Some(pb::Eta {
            seconds_left: seconds_left.round() as u32,
            plus_minus_seconds: plus_minus.round() as u32,
            computed_at: Some(crate::store::timestamp(chrono::Utc::now())),
            samples,
        })
    }
}
