//! A job's state, derived from its tasks' states and the user's controls.

use kiln_proto::v1::JobState as ProtoJobState;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobState {
    Pending,
    Running,
    Paused,
    Succeeded,
    Failed,
    Cancelled,
}

impl JobState {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Running => "running",
            Self::Paused => "paused",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        [
            Self::Pending,
            Self::Running,
            Self::Paused,
            Self::Succeeded,
            Self::Failed,
            Self::Cancelled,
        ]
        .into_iter()
        .find(|s| s.as_str() == text)
    }

    pub const fn is_final(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed | Self::Cancelled)
    }

    pub fn from_proto(state: ProtoJobState) -> Option<Self> {
        match state {
            ProtoJobState::Unspecified => None,
            ProtoJobState::Pending => Some(Self::Pending),
            ProtoJobState::Running => Some(Self::Running),
            ProtoJobState::Paused => Some(Self::Paused),
            ProtoJobState::Succeeded => Some(Self::Succeeded),
            ProtoJobState::Failed => Some(Self::Failed),
            ProtoJobState::Cancelled => Some(Self::Cancelled),
        }
    }

    pub fn to_proto(self) -> ProtoJobState {
        match self {
            Self::Pending => ProtoJobState::Pending,
            Self::Running => ProtoJobState::Running,
            Self::Paused => ProtoJobState::Paused,
            Self::Succeeded => ProtoJobState::Succeeded,
            Self::Failed => ProtoJobState::Failed,
            Self::Cancelled => ProtoJobState::Cancelled,
        }
    }
}

/// How many of a job's tasks are in each state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TaskCounts {
    pub total: i64,
    /// Pending or waiting to retry.
    pub waiting: i64,
    pub in_flight: i64,
    pub succeeded: i64,
    pub failed: i64,
    pub cancelled: i64,
}

/// What the job's state depends on besides its current state.
#[derive(Debug, Clone, Copy, Default)]
pub struct JobFacts {
    pub counts: TaskCounts,
    pub paused: bool,
    /// Failed tasks the job tolerates before it fails.
    pub max_failed_tasks: i64,
    /// Some waiting task can still run (its step's dependencies can all
    /// still succeed); false when everything left is blocked behind failures.
    pub runnable_left: bool,
}

/// The state a job should be in. A final state is never left here; only a
/// user's retry reopens a job.
pub fn derive(current: JobState, facts: JobFacts) -> JobState {
    let counts = facts.counts;
    if current.is_final() {
        return current;
    }
    if counts.failed > facts.max_failed_tasks {
        return JobState::Failed;
    }
    if counts.total > 0 && counts.succeeded == counts.total {
        return JobState::Succeeded;
    }
    if counts.in_flight == 0 && !facts.runnable_left {
        // Nothing left can run: what failed blocks the rest.
        return JobState::Failed;
    }
    if facts.paused {
        return JobState::Paused;
    }
    if counts.in_flight > 0 || counts.succeeded > 0 || counts.failed > 0 {
        return JobState::Running;
    }
    if current == JobState::Running {
        return JobState::Running;
    }
    JobState::Pending
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(total: i64, in_flight: i64, succeeded: i64, failed: i64) -> JobFacts {
        let waiting = total - in_flight - succeeded - failed;
        JobFacts {
            counts: TaskCounts {
                total,
                waiting,
                in_flight,
                succeeded,
                failed,
                cancelled: 0,
            },
            paused: false,
            max_failed_tasks: 0,
            runnable_left: waiting > 0,
        }
    }

    #[test]
    fn follows_its_tasks() {
        assert_eq!(
            derive(JobState::Pending, facts(4, 0, 0, 0)),
            JobState::Pending
        );
        assert_eq!(
            derive(JobState::Pending, facts(4, 1, 0, 0)),
            JobState::Running
        );
        assert_eq!(
            derive(JobState::Running, facts(4, 0, 4, 0)),
            JobState::Succeeded
        );
        assert_eq!(
            derive(JobState::Running, facts(4, 1, 2, 1)),
            JobState::Failed
        );
        // A requeued task leaves a started job running.
        assert_eq!(
            derive(JobState::Running, facts(4, 0, 0, 0)),
            JobState::Running
        );
    }

    #[test]
    fn tolerates_failures_up_to_its_limit() {
        let mut f = facts(10, 2, 5, 1);
        f.max_failed_tasks = 1;
        assert_eq!(derive(JobState::Running, f), JobState::Running);
        f.counts.failed = 2;
        assert_eq!(derive(JobState::Running, f), JobState::Failed);
    }

    #[test]
    fn fails_when_the_rest_is_blocked_behind_a_failure() {
        let mut f = facts(3, 0, 1, 1);
        f.max_failed_tasks = 5;
        f.runnable_left = false;
        assert_eq!(derive(JobState::Running, f), JobState::Failed);
    }

    #[test]
    fn pause_holds_until_resumed() {
        let mut f = facts(4, 0, 1, 0);
        f.paused = true;
        assert_eq!(derive(JobState::Running, f), JobState::Paused);
        f.paused = false;
        assert_eq!(derive(JobState::Paused, f), JobState::Running);
    }

    #[test]
    fn final_states_stick() {
        assert_eq!(
            derive(JobState::Cancelled, facts(4, 0, 4, 0)),
            JobState::Cancelled
        );
        assert_eq!(
            derive(JobState::Failed, facts(4, 0, 4, 0)),
            JobState::Failed
        );
    }
}
