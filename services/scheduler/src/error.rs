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
        match &err {
            SchedulerError::JobModel(kiln_jobmodel::JobModelError::TooManyTasks { .. }) => {
                Status::resource_exhausted(format!("quota max-tasks-per-job: {err}"))
            }
            SchedulerError::InvalidArgument(_) | SchedulerError::JobModel(_) => {
                Status::invalid_argument(err.to_string())
            }
            SchedulerError::Quota(_) => Status::resource_exhausted(err.to_string()),
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
            } => {
                let mut status = Status::resource_exhausted(err.to_string());
                status.metadata_mut().insert(
                    kiln_proto::metadata::RETRY_AFTER,
                    tonic::metadata::MetadataValue::from(*retry_after_seconds),
                );
                status
            }
        }
    }
}
