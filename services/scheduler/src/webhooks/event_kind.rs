//! Which webhook events a job event is, without I/O: a job's record becomes
//! an event only when its state changed from what the webhook loop last saw
//! (records repeat for task counts), and a task of the `Check` step failing
//! for good is the quality check failing.

use kiln_proto::v1 as pb;
use kiln_proto::v1::job_event::Event;

use crate::job_state::JobState;

/// The step the built-in Blender templates run `kiln-check` in.
pub const QUALITY_CHECK_STEP: &str = "Check";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventKind {
    Submitted,
    Started,
    Succeeded,
    Failed,
    Cancelled,
    QualityCheckFailed,
}

impl EventKind {
    pub const ALL: [EventKind; 6] = [
        Self::Submitted,
        Self::Started,
        Self::Succeeded,
        Self::Failed,
        Self::Cancelled,
        Self::QualityCheckFailed,
    ];

    /// The body's `type`, and how the kind is stored.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Submitted => "job.submitted",
            Self::Started => "job.started",
            Self::Succeeded => "job.succeeded",
            Self::Failed => "job.failed",
            Self::Cancelled => "job.cancelled",
            Self::QualityCheckFailed => "job.quality_check_failed",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|kind| kind.name() == name)
    }

    pub fn to_proto(self) -> pb::WebhookEvent {
        match self {
            Self::Submitted => pb::WebhookEvent::JobSubmitted,
            Self::Started => pb::WebhookEvent::JobStarted,
            Self::Succeeded => pb::WebhookEvent::JobSucceeded,
            Self::Failed => pb::WebhookEvent::JobFailed,
            Self::Cancelled => pb::WebhookEvent::JobCancelled,
            Self::QualityCheckFailed => pb::WebhookEvent::JobQualityCheckFailed,
        }
    }

    /// The kind a request names; `None` for UNSPECIFIED or an unknown number.
    pub fn from_proto(value: i32) -> Option<Self> {
        match pb::WebhookEvent::try_from(value).ok()? {
            pb::WebhookEvent::Unspecified => None,
            pb::WebhookEvent::JobSubmitted => Some(Self::Submitted),
            pb::WebhookEvent::JobStarted => Some(Self::Started),
            pb::WebhookEvent::JobSucceeded => Some(Self::Succeeded),
            pb::WebhookEvent::JobFailed => Some(Self::Failed),
            pb::WebhookEvent::JobCancelled => Some(Self::Cancelled),
            pb::WebhookEvent::JobQualityCheckFailed => Some(Self::QualityCheckFailed),
        }
    }
}

/// What a job event means to webhooks, given the job's state as last seen
/// (`None`: never seen, i.e. just submitted). Returns the kind, if any, and
/// the state to remember from now on.
pub fn classify(
    event: &pb::JobEvent,
    last_seen: Option<JobState>,
) -> (Option<EventKind>, Option<JobState>) {
    match &event.event {
        Some(Event::JobChanged(job)) => {
            let Some(state) = job_state(job.state) else {
                return (None, last_seen);
            };
            (transition(last_seen, state), Some(state))
        }
        Some(Event::TaskStateChanged(task))
            if task.step_name == QUALITY_CHECK_STEP
                && task.state == pb::TaskState::Failed as i32 =>
        {
            (Some(EventKind::QualityCheckFailed), last_seen)
        }
        _ => (None, last_seen),
    }
}

fn job_state(value: i32) -> Option<JobState> {
    Some(match pb::JobState::try_from(value).ok()? {
        pb::JobState::Unspecified => return None,
        pb::JobState::Pending => JobState::Pending,
        pb::JobState::Running => JobState::Running,
        pb::JobState::Paused => JobState::Paused,
        pb::JobState::Succeeded => JobState::Succeeded,
        pb::JobState::Failed => JobState::Failed,
        pb::JobState::Cancelled => JobState::Cancelled,
    })
}

/// The event a change of a job's state is, if any. A job starts when it
/// first runs, and again when a retry runs it after it finished; a resume
/// from pause is not a start.
fn transition(from: Option<JobState>, to: JobState) -> Option<EventKind> {
    let from = from.unwrap_or(JobState::Pending);
    if from == to {
        return None;
    }
    match to {
        JobState::Running if from == JobState::Pending || from.is_final() => {
            Some(EventKind::Started)
        }
        JobState::Succeeded => Some(EventKind::Succeeded),
        JobState::Failed => Some(EventKind::Failed),
        JobState::Cancelled => Some(EventKind::Cancelled),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(state: pb::JobState) -> pb::JobEvent {
        pb::JobEvent {
            job_id: "j".into(),
            seq: 1,
            farm_seq: 1,
            at: None,
            event: Some(Event::JobChanged(pb::Job {
                state: state as i32,
                ..Default::default()
            })),
        }
    }

    fn task(step: &str, state: pb::TaskState) -> pb::JobEvent {
        pb::JobEvent {
            event: Some(Event::TaskStateChanged(pb::TaskStateChanged {
                step_name: step.into(),
                state: state as i32,
                ..Default::default()
            })),
            ..Default::default()
        }
    }

    #[test]
    fn a_job_starts_once_and_finishes_once() {
        let (kind, seen) = classify(&record(pb::JobState::Running), None);
        assert_eq!(kind, Some(EventKind::Started));
        assert_eq!(seen, Some(JobState::Running));
        // A repeated record (task counts moved) is no event.
        assert_eq!(classify(&record(pb::JobState::Running), seen).0, None);
        let (kind, seen) = classify(&record(pb::JobState::Succeeded), seen);
        assert_eq!(kind, Some(EventKind::Succeeded));
        assert_eq!(classify(&record(pb::JobState::Succeeded), seen).0, None);
    }

    #[test]
    fn a_resume_is_not_a_start_but_a_retry_is() {
        let paused = Some(JobState::Paused);
        assert_eq!(classify(&record(pb::JobState::Running), paused).0, None);
        let failed = Some(JobState::Failed);
        assert_eq!(
            classify(&record(pb::JobState::Running), failed).0,
            Some(EventKind::Started)
        );
        assert_eq!(
            classify(&record(pb::JobState::Cancelled), Some(JobState::Paused)).0,
            Some(EventKind::Cancelled)
        );
    }

    #[test]
    fn only_a_check_task_failing_for_good_is_a_quality_check_failure() {
        let seen = Some(JobState::Running);
        let (kind, kept) = classify(&task("Check", pb::TaskState::Failed), seen);
        assert_eq!(kind, Some(EventKind::QualityCheckFailed));
        assert_eq!(kept, seen);
        assert_eq!(
            classify(&task("Check", pb::TaskState::WaitingRetry), seen).0,
            None
        );
        assert_eq!(
            classify(&task("Render", pb::TaskState::Failed), seen).0,
            None
        );
    }

    #[test]
    fn names_round_trip() {
        for kind in EventKind::ALL {
            assert_eq!(EventKind::parse(kind.name()), Some(kind));
            assert_eq!(EventKind::from_proto(kind.to_proto() as i32), Some(kind));
        }
        assert_eq!(EventKind::from_proto(0), None);
    }
}
