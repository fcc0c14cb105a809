//! The task state machine, written as data.
//!
//! Every change of a task's state goes through [`TaskEvent::rule`]: the
//! states it may leave from and the state it leads to. The dispatch core
//! applies an event in memory only if the rule allows it, and the batched
//! write in `batch_writer.rs` guards each row on the state and attempt it expects,
//! so a late or duplicate report can never move a task backwards or count
//! twice.

use kiln_proto::v1::TaskState as ProtoTaskState;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskState {
    Pending,
    Dispatched,
    Running,
    Succeeded,
    Failed,
    Cancelled,
    /// An attempt failed; the next one waits out its backoff.
    WaitingRetry,
}

impl TaskState {
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Dispatched => "dispatched",
            Self::Running => "running",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
            Self::WaitingRetry => "waiting_retry",
        }
    }

    pub const fn is_final(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed | Self::Cancelled)
    }

    pub const fn is_in_flight(self) -> bool {
        matches!(self, Self::Dispatched | Self::Running)
    }

    pub fn parse(text: &str) -> Option<Self> {
        [
            Self::Pending,
            Self::Dispatched,
            Self::Running,
            Self::Succeeded,
            Self::Failed,
            Self::Cancelled,
            Self::WaitingRetry,
        ]
        .into_iter()
        .find(|s| s.as_str() == text)
    }

    pub fn to_proto(self) -> ProtoTaskState {
        match self {
            Self::Pending => ProtoTaskState::Pending,
            Self::Dispatched => ProtoTaskState::Dispatched,
            Self::Running => ProtoTaskState::Running,
            Self::Succeeded => ProtoTaskState::Succeeded,
            Self::Failed => ProtoTaskState::Failed,
            Self::Cancelled => ProtoTaskState::Cancelled,
            Self::WaitingRetry => ProtoTaskState::WaitingRetry,
        }
    }
}

/// Something that happens to a task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskEvent {
    /// Handed to a worker.
    Dispatch,
    /// The worker started it.
    Start,
    /// It finished and produced everything expected.
    Succeed,
    /// It failed, and the retry policy allows another attempt.
    FailAndRetry,
    /// It failed for the last time.
    FailFinally,
    /// Its worker went away before it finished.
    Lose,
    /// A user cancelled it (or its job).
    Cancel,
    /// A user asked for a failed or cancelled task to run again.
    Reopen,
}

/// One row of the state machine: an event, the states it applies in, and the state it leads to.
pub struct Rule {
    pub from: &'static [TaskState],
    pub to: TaskState,
}

use TaskState::*;

const IN_FLIGHT: &[TaskState] = &[Dispatched, Running];

impl TaskEvent {
    pub const fn rule(self) -> Rule {
        match self {
            Self::Dispatch => Rule {
                from: &[Pending, WaitingRetry],
                to: Dispatched,
            },
            Self::Start => Rule {
                from: &[Dispatched],
                to: Running,
            },
            Self::Succeed => Rule {
                from: IN_FLIGHT,
                to: Succeeded,
            },
            Self::FailAndRetry => Rule {
                from: IN_FLIGHT,
                to: WaitingRetry,
            },
            Self::FailFinally => Rule {
                from: IN_FLIGHT,
                to: Failed,
            },
            Self::Lose => Rule {
                from: IN_FLIGHT,
                to: Pending,
            },
            Self::Cancel => Rule {
                from: &[Pending, Dispatched, Running, WaitingRetry],
                to: Cancelled,
            },
            Self::Reopen => Rule {
                from: &[Failed, Cancelled],
                to: Pending,
            },
        }
    }

    /// The state `event` leads to from `state`, or `None` if it does not apply there.
    pub fn next(self, state: TaskState) -> Option<TaskState> {
        let rule = self.rule();
        rule.from.contains(&state).then_some(rule.to)
    }
}

impl Rule {
    pub fn from_strs(&self) -> Vec<String> {
        self.from.iter().map(|s| s.as_str().to_owned()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finished_tasks_move_only_when_reopened() {
        let events = [
            TaskEvent::Dispatch,
            TaskEvent::Start,
            TaskEvent::Succeed,
            TaskEvent::FailAndRetry,
            TaskEvent::FailFinally,
            TaskEvent::Lose,
            TaskEvent::Cancel,
        ];
        for event in events {
            for terminal in [Succeeded, Failed, Cancelled] {
                assert_eq!(event.next(terminal), None, "{event:?} left {terminal:?}");
            }
        }
        assert_eq!(TaskEvent::Reopen.next(Failed), Some(Pending));
        assert_eq!(TaskEvent::Reopen.next(Succeeded), None);
    }

    #[test]
    fn reports_from_a_task_not_in_flight_change_nothing() {
        for event in [TaskEvent::Succeed, TaskEvent::FailAndRetry, TaskEvent::Lose] {
            assert_eq!(event.next(Pending), None);
            assert_eq!(event.next(WaitingRetry), None);
        }
        assert_eq!(TaskEvent::Dispatch.next(WaitingRetry), Some(Dispatched));
    }

    #[test]
    fn state_names_round_trip() {
        for state in [
            Pending,
            Dispatched,
            Running,
            Succeeded,
            Failed,
            Cancelled,
            WaitingRetry,
        ] {
            assert_eq!(TaskState::parse(state.as_str()), Some(state));
        }
    }
}
