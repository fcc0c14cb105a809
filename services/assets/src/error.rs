use tonic::{Code, Status};

/// Everything the assets service can fail at; see the `From` impl for how
/// each reaches a gRPC caller.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("malformed digest {0:?}: expected 64 lowercase hex characters")]
    InvalidDigest(String),
    #[error("chunk of {size} bytes exceeds the limit of {limit} bytes")]
    ChunkTooLarge { size: usize, limit: usize },
    #[error("upload exceeds the limit of {limit} bytes")]
    UploadTooLarge { limit: u64 },
    #[error("content has digest {actual} but the upload expected {expected}; nothing stored")]
    DigestMismatch { expected: String, actual: String },
    #[error(
        "an upload can only resume (offset > 0) when its first chunk names the expected digest"
    )]
    ResumeWithoutDigest,
    #[error(
        "cannot resume at byte {offset}: the service holds {held} bytes of this upload (ask UploadOffset)"
    )]
    ResumeOffset { offset: u64, held: u64 },
    #[error("{count} digests in one request; the limit is {limit}")]
    TooManyDigests { count: usize, limit: usize },
    #[error("stored content of {digest} is corrupt (it hashes to {actual}); refusing to serve it")]
    Corrupt { digest: String, actual: String },
    #[error("presigned URLs need the s3 backend; download through the service instead")]
    PresignUnsupported,
    #[error("expires_seconds {0} is outside 1-{max}", max = crate::service::MAX_PRESIGN_SECONDS)]
    BadExpiry(u32),
    #[error("kiln-owner metadata must be a non-empty ASCII name")]
    BadOwner,
    #[error("asset {0} is being collected; upload it again")]
    Collecting(String),
    #[error("scheduler: {0}")]
    Scheduler(String),
    #[error(transparent)]
    Discovery(#[from] kiln_discovery::DiscoveryError),
    #[error("no asset with digest {0}")]
    NotFound(String),
    #[error("upload interrupted: {}", .0.message())]
    Interrupted(Status),
    #[error("spool: {0}")]
    Spool(std::io::Error),
    #[error("local store: {0}")]
    Local(std::io::Error),
    #[error("reading stored asset: {0}")]
    Read(std::io::Error),
    #[error("s3 {operation}: {message}")]
    S3 {
        operation: &'static str,
        message: String,
    },
    #[error("--{flag} ({env}) is required with --backend s3")]
    MissingS3Option {
        flag: &'static str,
        env: &'static str,
    },
    #[error(transparent)]
    Service(#[from] kiln_service::ServiceError),
}

impl Error {
    fn code(&self) -> Code {
        match self {
            Self::InvalidDigest(_)
            | Self::ChunkTooLarge { .. }
            | Self::UploadTooLarge { .. }
            | Self::DigestMismatch { .. }
            | Self::ResumeWithoutDigest
            | Self::TooManyDigests { .. } => Code::InvalidArgument,
            Self::ResumeOffset { .. } | Self::PresignUnsupported => Code::FailedPrecondition,
            Self::BadExpiry(_) | Self::BadOwner => Code::InvalidArgument,
            Self::Collecting(_) => Code::Unavailable,
            Self::Corrupt { .. } => Code::DataLoss,
            Self::Scheduler(_) | Self::Discovery(_) => Code::Unavailable,
            Self::NotFound(_) => Code::NotFound,
            Self::Interrupted(status) => status.code(),
            Self::S3 { .. } => Code::Unavailable,
            Self::Spool(_)
            | Self::Local(_)
            | Self::Read(_)
            | Self::MissingS3Option { .. }
            | Self::Service(_) => Code::Internal,
        }
    }
}

impl From<Error> for Status {
    fn from(err: Error) -> Self {
        let code = err.code();
        match (&err, code) {
            // A race the client resolves by retrying, not a fault.
            (Error::Collecting(_), _) => {
                tracing::info!(error = %err, "request raced the collector")
            }
            (_, Code::Internal | Code::Unavailable) => {
                tracing::error!(error = %err, "request failed")
            }
            _ => tracing::debug!(error = %err, "request rejected"),
        }
        Status::new(code, err.to_string())
    }
}
