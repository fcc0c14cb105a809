use tonic::Status;
use uuid::Uuid;

use crate::core::command::Refusal;

#[derive(Debug, thiserror::Error)]
pub enum SchedulerError {
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("migration: {0}")]
    Migration(#[from] sqlx::migrate::MigrateError),
    #[error("{0}")]
    InvalidArgument(String),
    #[error("job {0} not found")]
    JobNotFound(String),
    /// Something other than a job is not there; the message names it.
    #[error("{0}")]
    NotFound(String),
    #[error("no worker {0:?} has ever joined this farm")]
    WorkerNotFound(String),
    #[error(transparent)]
    JobModel(#[from] kiln_jobmodel::JobModelError),
    #[error("asset service: {0}")]
    Assets(String),
    #[error(transparent)]
    Discovery(#[from] kiln_discovery::DiscoveryError),
    #[error("job {0} has finished")]
    JobFinished(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("the scheduler is stopping")]
    Stopping,
    #[error("this scheduler does not lead: {0}")]
    NotLeader(String),
    /// Admission control refused a submission; try again after the seconds.
    #[error("refused by admission control: {reason}")]
    Overloaded {
        reason: String,
        retry_after_seconds: u32,
    },
    /// Over one of the owner's quotas; the message names it.
    #[error("{0}")]
    Quota(String),
    /// A submission's idempotency key was used for a different request.
    #[error("{0}")]
    AlreadyExists(String),
}

impl From<Refusal> for SchedulerError {
    fn from(refusal: Refusal) -> Self {
        match refusal {
            Refusal::JobFinished(id) => Self::JobFinished(id.to_string()),
            Refusal::UnknownWorker(id) => Self::WorkerNotFound(id),
            Refusal::Quota(exceeded) => Self::Quota(exceeded.to_string()),
        }
    }
}

/// An INVALID_ARGUMENT error saying what is wrong with the request.
pub fn invalid(message: impl Into<String>) -> SchedulerError {
    SchedulerError::InvalidArgument(message.into())
}

pub fn parse_job_id(text: &str) -> Result<Uuid, SchedulerError> {
    parse_uuid("job_id", text)
}

/// A UUID from a request's field, or an error naming the field.
pub fn parse_uuid(field: &str, text: &str) -> Result<Uuid, SchedulerError> {
    Uuid::parse_str(text).map_err(|_| invalid(format!("{field}: {text:?} is not a UUID")))
}

impl From<crate::fence::FenceError> for SchedulerError {
    fn from(err: crate::fence::FenceError) -> Self {
        match err {
            crate::fence::FenceError::Database(err) => Self::Database(err),
            superseded => Self::NotLeader(superseded.to_string()),
        }
    }
}

impl From<SchedulerError> for Status {
    fn from(err: SchedulerError) -> Self {
        use kiln_proto::status::{invalid_argument, invalid_field, resource_exhausted};
        match &err {
            SchedulerError::JobModel(kiln_jobmodel::JobModelError::TooManyTasks { .. }) => {
                resource_exhausted(format!("quota max-tasks-per-job: {err}"), None)
            }
            SchedulerError::InvalidArgument(_) => invalid_argument(err.to_string()),
            SchedulerError::JobModel(model) => {
                invalid_field(template_field(model), &model.to_string(), err.to_string())
            }
            SchedulerError::Quota(_) => resource_exhausted(err.to_string(), None),
            SchedulerError::AlreadyExists(_) => Status::already_exists(err.to_string()),
            SchedulerError::JobNotFound(_)
            | SchedulerError::NotFound(_)
            | SchedulerError::WorkerNotFound(_) => Status::not_found(err.to_string()),
            SchedulerError::JobFinished(_) | SchedulerError::FailedPrecondition(_) => {
                Status::failed_precondition(err.to_string())
            }
            SchedulerError::Stopping | SchedulerError::NotLeader(_) => {
                Status::unavailable(err.to_string())
            }
            SchedulerError::Database(_)
            | SchedulerError::Assets(_)
            | SchedulerError::Discovery(_) => {
                tracing::warn!(error = %err, "request failed");
                Status::unavailable(err.to_string())
            }
            SchedulerError::Migration(_) => Status::internal(err.to_string()),
            SchedulerError::Overloaded {
                retry_after_seconds,
                ..
            } => resource_exhausted(err.to_string(), Some(*retry_after_seconds)),
        }
    }
}

/// The SubmitJobRequest field a job model error is about, for its
/// BadRequest field violation.
fn template_field(err: &kiln_jobmodel::JobModelError) -> &'static str {
    use kiln_jobmodel::JobModelError as E;
    match err {
        E::UnknownTemplate(_) | E::TemplateDir(_) => "builtin_template",
        E::Parameters(_) | E::FrameRange(_) => "parameters",
        E::RowId(..) => "variants",
        _ => "template_document",
    }
}

#[cfg(test)]
mod status_tests {
    use super::*;
    use kiln_proto::status::{field_violations, retry_delay};

    #[test]
    fn submit_refusals_name_their_field() {
        let status = Status::from(invalid("priority: 120 is outside 0-100"));
        assert_eq!(status.message(), "priority: 120 is outside 0-100");
        let violations = field_violations(&status);
        assert_eq!(violations.len(), 1);
        assert_eq!(violations[0].field, "priority");
        assert_eq!(violations[0].description, "120 is outside 0-100");

        let model = kiln_jobmodel::JobModelError::UnknownTemplate("nope".to_owned());
        let status = Status::from(SchedulerError::JobModel(model));
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert!(status.message().contains("unknown built-in template"));
        assert_eq!(field_violations(&status)[0].field, "builtin_template");
    }

    #[test]
    fn admission_refusals_say_when_to_retry() {
        let status = Status::from(SchedulerError::Overloaded {
            reason: "the queue is full".to_owned(),
            retry_after_seconds: 5,
        });
        assert_eq!(status.code(), tonic::Code::ResourceExhausted);
        assert_eq!(
            retry_delay(&status),
            Some(std::time::Duration::from_secs(5))
        );
    }
}
