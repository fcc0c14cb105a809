//! Admission control's plain types: the farm's policy and the decision on
//! one submission (the rules are in `admission.rs`).

use std::time::Duration;

/// The farm's admission policy.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdmissionPolicy {
    /// The estimated queue wait above which an over-share owner's new work
    /// is held back; `None` admits everything.
    pub max_queue_wait: Option<Duration>,
    pub action: AdmissionAction,
}

impl Default for AdmissionPolicy {
    fn default() -> Self {
        Self {
            max_queue_wait: None,
            action: AdmissionAction::Delay,
        }
    }
}

/// What happens to a submission admission control holds back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum AdmissionAction {
    /// Accept it, but dispatch none of it until the hold is lifted.
    Delay,
    /// Refuse it with RESOURCE_EXHAUSTED and a retry-after.
    Refuse,
}

/// The decision on one submission.
#[derive(Debug, Clone, PartialEq)]
pub enum Admission {
    Admit,
    /// Accept and hold, for this reason.
    Delay {
        reason: String,
    },
    /// Refuse, for this reason (said as a refusal by the caller's error);
    /// the caller may try again after `retry_after`.
    Refuse {
        reason: String,
        retry_after: Duration,
    },
}
