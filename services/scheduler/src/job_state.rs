//! A job's state, derived from its tasks' states.

use kiln_proto::v1::JobState as ProtoJobState;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobState {
    Pending,
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl JobState {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Running => "running",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        [
            Self::Pending,
            Self::Running,
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

    pub fn to_proto(self) -> ProtoJobState {
        match self {
            Self::Pending => ProtoJobState::Pending,
            Self::Running => ProtoJobState::Running,
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
    pub pending: i64,
    pub in_flight: i64,
    pub succeeded: i64,
    pub failed: i64,
    pub cancelled: i64,
}

/// The state a job should be in, given its current state and its tasks.
/// A final state is never left.
pub fn derive(current: JobState, counts: TaskCounts) -> JobState {
    if current.is_final() {
        return current;
    }
    if counts.failed > 0 {
        return JobState::Failed;
    }
    if counts.total > 0 && counts.succeeded == counts.total {
        return JobState::Succeeded;
    }
    if counts.in_flight > 0 || counts.succeeded > 0 || current == JobState::Running {
        return JobState::Running;
    }
    JobState::Pending
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(total: i64, in_flight: i64, succeeded: i64, failed: i64) -> TaskCounts {
        TaskCounts {
            total,
            pending: total - in_flight - succeeded - failed,
            in_flight,
            succeeded,
            failed,
            cancelled: 0,
        }
    }

    #[test]
    fn follows_its_tasks() {
        assert_eq!(
            derive(JobState::Pending, counts(4, 0, 0, 0)),
            JobState::Pending
        );
        assert_eq!(
            derive(JobState::Pending, counts(4, 1, 0, 0)),
            JobState::Running
        );
        assert_eq!(
            derive(JobState::Running, counts(4, 0, 4, 0)),
            JobState::Succeeded
        );
        assert_eq!(
            derive(JobState::Running, counts(4, 1, 2, 1)),
            JobState::Failed
        );
        // A requeued task leaves a started job running.
        assert_eq!(
            derive(JobState::Running, counts(4, 0, 0, 0)),
            JobState::Running
        );
    }

    #[test]
    fn final_states_stick() {
        assert_eq!(
            derive(JobState::Cancelled, counts(4, 0, 4, 0)),
            JobState::Cancelled
        );
        assert_eq!(
            derive(JobState::Failed, counts(4, 0, 4, 0)),
            JobState::Failed
        );
    }
}
