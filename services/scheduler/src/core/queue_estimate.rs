//! The queue as admission control and the gauges see it: per renderer, the
//! runnable work and the slots that run it; per owner, the outstanding
//! tasks; how many tasks could be dispatched now.
//!
//! Building it walks every job and every worker. Every submission used to
//! build it, and every tick built it once per held job: O(jobs) per
//! submission and O(held × jobs) per tick, a third of the leader's CPU under
//! a stream of submissions. The core now builds it once per tick (and after
//! any change to workers or to a job's controls), and in between adds each
//! job that joins the queue and takes off each task dispatched. What a
//! worker's report changes (tasks finished, retried, or a step or a job they
//! unblock) shows at the next tick: the
//! estimate is at most one tick (250 ms) behind, against bounds of hours.

use std::collections::HashMap;

#[derive(Debug, Default)]
pub(super) struct QueueEstimate {
    /// Expected seconds of runnable work per renderer; every renderer a
    /// worker offers is listed, with no work if none waits.
    work: HashMap<String, f64>,
    /// Slots of the workers that run each listed renderer.
    slots: HashMap<String, usize>,
    /// Queued and in-flight tasks of jobs not held, per owner.
    outstanding: HashMap<String, usize>,
    /// Tasks that could be dispatched now if a worker were free.
    ready: usize,
}

/// An owner's part of the outstanding tasks, and their fair part.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Share {
    pub used: f64,
    pub fair: f64,
}

impl QueueEstimate {
    /// Lists `renderer` (a worker offers it) with no work yet.
    pub fn list_renderer(&mut self, renderer: &str, slots: impl FnOnce() -> usize) {
        if !self.work.contains_key(renderer) {
            self.work.insert(renderer.to_owned(), 0.0);
            self.slots.insert(renderer.to_owned(), slots());
        }
    }

    /// Adds `tasks` runnable tasks of `each` expected seconds for
    /// `renderer`; `slots` is asked only for a renderer not listed yet.
    pub fn add_work(
        &mut self,
        renderer: &str,
        tasks: usize,
        each: f64,
        slots: impl FnOnce() -> usize,
    ) {
        self.list_renderer(renderer, slots);
        if let Some(work) = self.work.get_mut(renderer) {
            *work += each * tasks as f64;
        }
        self.ready += tasks;
    }

    /// Takes a dispatched task of `each` expected seconds for `renderer`
    /// off (never below none: the task may have turned ready after the
    /// estimate was built, uncounted).
    pub fn task_dispatched(&mut self, renderer: &str, each: f64) {
        if let Some(work) = self.work.get_mut(renderer) {
            *work = (*work - each).max(0.0);
        }
        self.ready = self.ready.saturating_sub(1);
    }

    /// Adds `tasks` queued or in flight to `owner`'s outstanding tasks.
    pub fn add_outstanding(&mut self, owner: &str, tasks: usize) {
        if tasks > 0 {
            *self.outstanding.entry(owner.to_owned()).or_default() += tasks;
        }
    }

    /// The estimated queue wait for `renderer` in seconds: its work over
    /// its slots; `None` for a renderer no job needs and no worker offers.
    pub fn wait(&self, renderer: &str) -> Option<f64> {
        let work = self.work.get(renderer)?;
        let slots = self.slots.get(renderer).copied().unwrap_or(0);
        Some(work / slots.max(1) as f64)
    }

    /// Every listed renderer's estimated wait (see [`QueueEstimate::wait`]).
    pub fn waits(&self) -> HashMap<String, f64> {
        self.work
            .keys()
            .filter_map(|r| Some((r.clone(), self.wait(r)?)))
            .collect()
    }

    /// Tasks that could be dispatched now if a worker were free.
    pub fn ready(&self) -> usize {
        self.ready
    }

    /// `owner`'s share of the outstanding tasks against their fair share
    /// among every owner with outstanding work, `owner` included; `None`
    /// while nothing is outstanding.
    pub fn share(&self, owner: &str, weight_of: impl Fn(&str) -> f64) -> Option<Share> {
        let total: usize = self.outstanding.values().sum();
        if total == 0 {
            return None;
        }
        let mine = self.outstanding.get(owner).copied().unwrap_or(0);
        let others: f64 = self
            .outstanding
            .keys()
            .filter(|o| o.as_str() != owner)
            .map(|o| weight_of(o))
            .sum();
        let own = weight_of(owner);
        Some(Share {
            used: mine as f64 / total as f64,
            fair: own / (own + others),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wait_is_the_work_over_the_slots_that_run_it() {
        let mut estimate = QueueEstimate::default();
        estimate.list_renderer("blender", || 4);
        assert_eq!(estimate.wait("blender"), Some(0.0));
        estimate.add_work("blender", 10, 60.0, || unreachable!("already listed"));
        assert_eq!(estimate.wait("blender"), Some(150.0));
        assert_eq!(estimate.ready(), 10);
        estimate.task_dispatched("blender", 60.0);
        assert_eq!(estimate.wait("blender"), Some(135.0));
        assert_eq!(estimate.ready(), 9);
        estimate.task_dispatched("blender", 6000.0);
        assert_eq!(estimate.wait("blender"), Some(0.0), "never below none");
        // Work no worker can run waits as if for one slot.
        estimate.add_work("houdini", 1, 90.0, || 0);
        assert_eq!(estimate.wait("houdini"), Some(90.0));
        assert_eq!(estimate.wait("nuke"), None, "nobody needs or offers it");
        let waits = estimate.waits();
        assert_eq!((waits.len(), waits["houdini"]), (2, 90.0));
    }

    #[test]
    fn a_share_counts_every_owner_with_outstanding_work_and_the_asker() {
        let mut estimate = QueueEstimate::default();
        assert_eq!(estimate.share("alice", |_| 1.0), None);
        estimate.add_outstanding("alice", 9);
        estimate.add_outstanding("bob", 1);
        estimate.add_outstanding("carol", 0);
        let share = estimate
            .share("alice", |_| 1.0)
            .expect("work is outstanding");
        assert_eq!(
            share,
            Share {
                used: 0.9,
                fair: 0.5
            }
        );
        // A newcomer has none of the work and a third of the weight.
        let share = estimate
            .share("dave", |_| 1.0)
            .expect("work is outstanding");
        assert_eq!(share.used, 0.0);
        assert!((share.fair - 1.0 / 3.0).abs() < 1e-9);
        // Weights count.
        let share = estimate
            .share("alice", |o| if o == "alice" { 3.0 } else { 1.0 })
            .expect("work is outstanding");
        assert_eq!(share.fair, 0.75);
    }
}
