//! Admission control: what happens to a new job when the farm is
//! saturated. A submission is held back only when both hold:
//!
//! - the estimated queue wait for one of its renderers (the runnable work
//!   queued for it over the slots of the workers that have it, as the
//!   `kiln_scheduler_estimated_queue_wait_seconds` gauge shows) is above the
//!   farm's bound;
//! - its owner is already over their fair share: their outstanding tasks
//!   (queued and in flight, of jobs not themselves held) are a larger part
//!   of the farm's than their weight is of the weights of every owner with
//!   outstanding work (the submitter included). An owner alone on the farm
//!   is never over their share: holding them back would help nobody.
//!
//! The farm's policy then either delays the job (it is accepted and stored,
//! but not dispatched, and its record says why) or refuses it (the caller
//! gets RESOURCE_EXHAUSTED with a retry-after and the same reason, and
//! nothing is stored). A held job is released, oldest first, as soon as
//! either condition no longer holds, which it must: the owner's other work
//! drains. Holds live in the leader's memory; a job held when a leader
//! fails over is queued normally by the next one.

use std::collections::HashMap;
use std::time::Duration;

use uuid::Uuid;

use crate::core::Core;
use crate::core::admission_policy::{Admission, AdmissionAction};

/// The longest a refused caller is told to wait before trying again.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(600);

impl Core {
    /// The decision on a new job of `owner` running `renderers`.
    pub fn admission(&self, owner: &str, renderers: &[String]) -> Admission {
        let Some(reason) = self.reason_to_hold(owner, renderers) else {
            return Admission::Admit;
        };
        match self.admission.action {
            AdmissionAction::Delay => Admission::Delay {
                reason: format!("held by admission control: {}", reason.text),
            },
            AdmissionAction::Refuse => Admission::Refuse {
                reason: reason.text,
                retry_after: reason.excess.clamp(Duration::from_secs(1), MAX_RETRY_AFTER),
            },
        }
    }

    /// Lifts the holds whose reason has gone, oldest job first (each
    /// release counts towards its owner's share for the next).
    pub(super) fn release_holds(&mut self) {
        let mut held: Vec<(u64, Uuid)> = self
            .jobs
            .values()
            .filter(|job| job.held.is_some() && !job.state.is_final())
            .map(|job| (job.submission_order, job.id))
            .collect();
        if held.is_empty() {
            return;
        }
        held.sort_unstable();
        for (_, job_id) in held {
            let Some(job) = self.jobs.get(&job_id) else {
                continue;
            };
            let renderers = job_renderers(job);
            if self.reason_to_hold(&job.owner, &renderers).is_some() {
                continue;
            }
            if let Some(job) = self.jobs.get_mut(&job_id) {
                job.held = None;
            }
            tracing::info!(%job_id, "admission hold lifted");
            self.dispatch_wanted = true;
            self.emit_record(job_id, true);
        }
    }

    fn reason_to_hold(&self, owner: &str, renderers: &[String]) -> Option<HoldReason> {
        let bound = self.admission.max_queue_wait?;
        let waits = self.queue_wait_seconds();
        let (renderer, wait) = renderers
            .iter()
            .filter_map(|r| waits.get(r.as_str()).map(|w| (r, *w)))
            .max_by(|a, b| a.1.total_cmp(&b.1))?;
        if wait <= bound.as_secs_f64() {
            return None;
        }
        let share = self.share_of_outstanding(owner)?;
        if share.used <= share.fair {
            return None;
        }
        let text = format!(
            "the estimated queue wait for {renderer} is {wait:.0} s, \
             above the farm's bound of {bound} s, and {owner} already has {used:.0}% of the \
             farm's outstanding tasks against a fair share of {fair:.0}%",
            bound = bound.as_secs(),
            used = share.used * 100.0,
            fair = share.fair * 100.0,
        );
        Some(HoldReason {
            text,
            excess: Duration::from_secs_f64(wait - bound.as_secs_f64()),
        })
    }

    /// The owner's part of the outstanding tasks of jobs not held, and their
    /// fair part; `None` while nothing is outstanding.
    fn share_of_outstanding(&self, owner: &str) -> Option<Share> {
        let mut outstanding: HashMap<&str, usize> = HashMap::new();
        for job in self.jobs.values() {
            if job.held.is_some() || job.state.is_final() {
                continue;
            }
            let left = job.counts.waiting + job.counts.in_flight;
            if left > 0 {
                *outstanding.entry(job.owner.as_str()).or_default() += left as usize;
            }
        }
        let total: usize = outstanding.values().sum();
        if total == 0 {
            return None;
        }
        let mine = outstanding.get(owner).copied().unwrap_or(0);
        outstanding.entry(owner).or_default();
        let weights: f64 = outstanding.keys().map(|o| self.shares.weight_of(o)).sum();
        Some(Share {
            used: mine as f64 / total as f64,
            fair: self.shares.weight_of(owner) / weights,
        })
    }
}

/// The renderers a job's steps run.
fn job_renderers(job: &crate::core::model::JobEntry) -> Vec<String> {
    let mut renderers: Vec<String> = job.steps.iter().map(|s| s.command.clone()).collect();
    renderers.sort();
    renderers.dedup();
    renderers
}

struct HoldReason {
    text: String,
    /// How far the queue wait is above the bound.
    excess: Duration,
}

struct Share {
    used: f64,
    fair: f64,
}
