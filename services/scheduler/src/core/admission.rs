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

use std::time::Duration;

use uuid::Uuid;

use crate::core::Core;
use crate::core::admission_policy::{Admission, AdmissionAction};
use crate::core::gauges::DEFAULT_TASK_SECONDS;
use crate::core::queue_estimate::QueueEstimate;

/// The longest a refused caller is told to wait before trying again.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(600);

impl Core {
    /// The decision on a new job of `owner` running `renderers`.
    pub fn admission(&mut self, owner: &str, renderers: &[String]) -> Admission {
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
            let (owner, renderers) = (job.owner.clone(), job_renderers(job));
            if self.reason_to_hold(&owner, &renderers).is_some() {
                continue;
            }
            if let Some(job) = self.jobs.get_mut(&job_id) {
                job.held = None;
            }
            // It counts towards the wait and its owner's share for the next.
            self.estimate_job_joined(job_id);
            tracing::info!(%job_id, "admission hold lifted");
            self.dispatch_wanted = true;
            self.emit_record(job_id, true);
        }
    }

    fn reason_to_hold(&mut self, owner: &str, renderers: &[String]) -> Option<HoldReason> {
        let bound = self.admission.max_queue_wait?;
        let estimate = self.estimate();
        let (renderer, wait) = renderers
            .iter()
            .filter_map(|r| estimate.wait(r).map(|w| (r, w)))
            .max_by(|a, b| a.1.total_cmp(&b.1))?;
        if wait <= bound.as_secs_f64() {
            return None;
        }
        let shares = &self.shares;
        let share = self
            .estimate
            .as_ref()?
            .share(owner, |o| shares.weight_of(o))?;
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

    /// The queue as admission and the gauges see it, built if a change
    /// dropped it.
    pub(super) fn estimate(&mut self) -> &QueueEstimate {
        if self.estimate.is_none() {
            let mut estimate = QueueEstimate::default();
            for worker in self.workers.values() {
                for renderer in &worker.capabilities.renderers {
                    estimate.list_renderer(&renderer.name, || self.slots_for(&renderer.name));
                }
            }
            for job in self.jobs.values() {
                self.add_job_to(&mut estimate, job);
            }
            self.estimate = Some(estimate);
        }
        self.estimate.get_or_insert_default()
    }

    /// Counts a job that joined the queue (added, or no longer held) in the
    /// estimate, if one is kept.
    pub(super) fn estimate_job_joined(&mut self, job_id: Uuid) {
        let (Some(mut estimate), Some(job)) = (self.estimate.take(), self.jobs.get(&job_id)) else {
            return;
        };
        self.add_job_to(&mut estimate, job);
        self.estimate = Some(estimate);
    }

    /// Takes a task of the job's step, dispatched, off the estimate's work.
    pub(super) fn estimate_task_left(&mut self, job_id: Uuid, step: usize) {
        let (Some(estimate), Some(step)) = (
            self.estimate.as_mut(),
            self.jobs.get(&job_id).and_then(|j| j.steps.get(step)),
        ) else {
            return;
        };
        let each = step.mean_run_seconds.unwrap_or(DEFAULT_TASK_SECONDS);
        estimate.task_dispatched(&step.command, each);
    }

    /// Drops the estimate: something it cannot follow changed (workers,
    /// controls, a new tick).
    pub(super) fn forget_estimate(&mut self) {
        self.estimate = None;
    }

    fn add_job_to(&self, estimate: &mut QueueEstimate, job: &crate::core::model::JobEntry) {
        if job.held.is_some() || job.state.is_final() {
            return;
        }
        estimate.add_outstanding(
            &job.owner,
            (job.counts.waiting + job.counts.in_flight) as usize,
        );
        if !job.is_dispatchable() {
            return;
        }
        for (s, step) in job.steps.iter().enumerate() {
            if step.ready.is_empty() || !job.step_unblocked(s) {
                continue;
            }
            let each = step.mean_run_seconds.unwrap_or(DEFAULT_TASK_SECONDS);
            estimate.add_work(&step.command, step.ready.len(), each, || {
                self.slots_for(&step.command)
            });
        }
    }

    /// Slots of the connected workers that run `renderer`.
    pub(super) fn slots_for(&self, renderer: &str) -> usize {
        self.workers
            .values()
            .filter(|w| w.has_renderer(renderer))
            .map(|w| w.slots)
            .sum()
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
