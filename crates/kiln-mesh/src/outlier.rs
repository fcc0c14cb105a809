//! Outlier detection: a replica that keeps failing, leaves a prompt call
//! unanswered (it is frozen, or far too slow), or cannot be reached at all
//! (its connection failed: no need to wait for a second opinion, since a
//! failing connection answers fast and would otherwise draw the balancer's
//! calls) is ejected: the balancer
//! sends it nothing for a while. When the while is over it is probed
//! (`grpc.health.v1` Check); it is readmitted if it answers SERVING, else
//! ejected again for twice as long, up to a limit. Never more than half of
//! an upstream's replicas are ejected at once, so a fault on the caller's
//! side (its network, its own overload) cannot eject them all.
//!
//! Plain state: the endpoint (`endpoint.rs`) feeds it outcomes and time.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::time::Instant;

/// When a replica is ejected, and for how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutlierSettings {
    /// Failures in a row that eject a replica.
    pub failures: u32,
    /// The first ejection's length; each one in a row doubles it.
    pub base_ejection: Duration,
    pub max_ejection: Duration,
}

impl Default for OutlierSettings {
    fn default() -> Self {
        Self {
            failures: 2,
            base_ejection: Duration::from_secs(1),
            max_ejection: Duration::from_secs(10),
        }
    }
}

/// How a call to a replica went, as far as the replica's health goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// It answered (any status but UNAVAILABLE: an error of the caller's
    /// own making says nothing about the replica).
    Answered,
    /// It answered UNAVAILABLE, or left a prompt call unanswered too long.
    Failed,
    /// The connection to it failed.
    Unreachable,
}

/// How many of an upstream's replicas there are and how many are ejected,
/// shared by its endpoints.
#[derive(Debug, Default)]
pub struct EjectionBudget {
    endpoints: AtomicUsize,
    ejected: AtomicUsize,
}

impl EjectionBudget {
    pub fn endpoint_added(&self) -> usize {
        self.endpoints.fetch_add(1, Ordering::AcqRel) + 1
    }

    pub fn endpoint_removed(&self) -> usize {
        let before = self
            .endpoints
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                Some(n.saturating_sub(1))
            })
            .unwrap_or(0);
        before.saturating_sub(1)
    }

    /// Takes a place among the ejected, if fewer than half would then be.
    fn take(&self) -> bool {
        let endpoints = self.endpoints.load(Ordering::Acquire);
        self.ejected
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |ejected| {
                (ejected < endpoints / 2).then_some(ejected + 1)
            })
            .is_ok()
    }

    fn give_back(&self) {
        let _ = self
            .ejected
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                Some(n.saturating_sub(1))
            });
    }
}

/// One replica's health.
#[derive(Debug)]
pub struct Health {
    settings: OutlierSettings,
    failures_in_a_row: u32,
    /// Until when the replica is ejected, while it is.
    ejected_until: Option<Instant>,
    /// Ejections since it last served well, which lengthen the next.
    ejections_in_a_row: u32,
}

impl Health {
    pub fn new(settings: OutlierSettings) -> Self {
        Self {
            settings,
            failures_in_a_row: 0,
            ejected_until: None,
            ejections_in_a_row: 0,
        }
    }

    pub fn is_ejected(&self) -> bool {
        self.ejected_until.is_some()
    }

    /// Until when it is ejected; after that it is probed.
    pub fn ejected_until(&self) -> Option<Instant> {
        self.ejected_until
    }

    /// Notes how a call went; true if this ejected the replica.
    pub fn record(&mut self, outcome: Outcome, now: Instant, budget: &EjectionBudget) -> bool {
        if self.is_ejected() {
            // Calls sent before the ejection, ending now, change nothing.
            return false;
        }
        match outcome {
            Outcome::Answered => {
                self.failures_in_a_row = 0;
                self.ejections_in_a_row = 0;
                false
            }
            Outcome::Failed | Outcome::Unreachable => {
                self.failures_in_a_row += 1;
                let enough = outcome == Outcome::Unreachable
                    || self.failures_in_a_row >= self.settings.failures;
                if !enough || !budget.take() {
                    return false;
                }
                self.eject(now);
                true
            }
        }
    }

    fn eject(&mut self, now: Instant) {
        let doublings = self.ejections_in_a_row.min(16);
        let length = self
            .settings
            .base_ejection
            .saturating_mul(1 << doublings)
            .min(self.settings.max_ejection);
        self.ejections_in_a_row += 1;
        self.ejected_until = Some(now + length);
    }

    /// The probe at the end of an ejection failed: ejected again, longer.
    pub fn probe_failed(&mut self, now: Instant) {
        if self.is_ejected() {
            self.eject(now);
        }
    }

    /// The probe passed: the replica takes calls again.
    pub fn probe_passed(&mut self, budget: &EjectionBudget) {
        if self.ejected_until.take().is_some() {
            budget.give_back();
        }
        self.failures_in_a_row = 0;
    }

    /// The replica left the upstream (its listing went away) while ejected.
    pub fn forget(&mut self, budget: &EjectionBudget) {
        if self.ejected_until.take().is_some() {
            budget.give_back();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budget(endpoints: usize) -> EjectionBudget {
        let budget = EjectionBudget::default();
        for _ in 0..endpoints {
            budget.endpoint_added();
        }
        budget
    }

    #[test]
    fn failures_in_a_row_eject_and_an_answer_in_between_forgives() {
        let budget = budget(3);
        let now = Instant::now();
        let mut health = Health::new(OutlierSettings::default());
        assert!(!health.record(Outcome::Failed, now, &budget));
        assert!(!health.record(Outcome::Answered, now, &budget));
        assert!(!health.record(Outcome::Failed, now, &budget));
        assert!(health.record(Outcome::Failed, now, &budget));
        assert_eq!(health.ejected_until(), Some(now + Duration::from_secs(1)));
        // Late failures of calls sent before do not extend it.
        assert!(!health.record(Outcome::Failed, now, &budget));
        assert_eq!(health.ejected_until(), Some(now + Duration::from_secs(1)));
    }

    #[test]
    fn an_unreachable_replica_is_ejected_at_once() {
        let budget = budget(2);
        let now = Instant::now();
        let mut health = Health::new(OutlierSettings::default());
        assert!(health.record(Outcome::Unreachable, now, &budget));
    }

    #[test]
    fn failed_probes_double_the_ejection_up_to_the_limit() {
        let budget = budget(3);
        let now = Instant::now();
        let mut health = Health::new(OutlierSettings::default());
        health.record(Outcome::Failed, now, &budget);
        health.record(Outcome::Failed, now, &budget);
        let mut lengths = Vec::new();
        for _ in 0..6 {
            health.probe_failed(now);
            lengths.push(health.ejected_until().map(|t| t - now));
        }
        let secs = |s| Some(Duration::from_secs(s));
        assert_eq!(
            lengths,
            [secs(2), secs(4), secs(8), secs(10), secs(10), secs(10)]
        );
        health.probe_passed(&budget);
        assert!(!health.is_ejected());
    }

    #[test]
    fn never_more_than_half_of_the_replicas_are_ejected() {
        let now = Instant::now();
        let lone = budget(1);
        let mut only = Health::new(OutlierSettings::default());
        for _ in 0..5 {
            assert!(!only.record(Outcome::Failed, now, &lone));
        }

        let three = budget(3);
        let mut a = Health::new(OutlierSettings::default());
        let mut b = Health::new(OutlierSettings::default());
        for _ in 0..2 {
            a.record(Outcome::Failed, now, &three);
            b.record(Outcome::Failed, now, &three);
        }
        assert!(a.is_ejected());
        assert!(!b.is_ejected(), "a second of three must stay in");
        a.probe_passed(&three);
        assert!(
            b.record(Outcome::Failed, now, &three),
            "a's place is free again"
        );
    }

    #[test]
    fn a_readmitted_replica_that_serves_well_starts_over_from_the_shortest_ejection() {
        let budget = budget(2);
        let now = Instant::now();
        let mut health = Health::new(OutlierSettings::default());
        health.record(Outcome::Failed, now, &budget);
        health.record(Outcome::Failed, now, &budget);
        health.probe_failed(now);
        health.probe_passed(&budget);
        health.record(Outcome::Answered, now, &budget);
        health.record(Outcome::Failed, now, &budget);
        health.record(Outcome::Failed, now, &budget);
        assert_eq!(health.ejected_until(), Some(now + Duration::from_secs(1)));
    }
}
