use std::path::PathBuf;

/// What can go wrong talking to the assets service.
#[derive(Debug, thiserror::Error)]
pub enum AssetClientError {
    /// The service answered with an error; kept whole so callers can pass
    /// NotFound or InvalidArgument on to their own callers.
    #[error("assets service: {}", .0.message())]
    Status(#[from] tonic::Status),
    #[error("malformed digest {0:?}: expected 64 lowercase hex characters")]
    InvalidDigest(String),
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("upload source failed: {0}")]
    Source(std::io::Error),
    #[error("downloaded content has digest {actual}, expected {expected}")]
    DigestMismatch { expected: String, actual: String },
    #[error("the token contains characters not allowed in a header")]
    InvalidToken,
    #[error("owner {0:?} contains characters not allowed in a header")]
    InvalidOwner(String),
}

impl AssetClientError {
    /// The gRPC code this error amounts to, for callers that report errors
    /// by code (e.g. as an HTTP status).
    pub fn code(&self) -> tonic::Code {
        match self {
            Self::Status(status) => status.code(),
            Self::InvalidDigest(_) => tonic::Code::InvalidArgument,
            Self::Read { .. } | Self::Write { .. } | Self::Source(_) => tonic::Code::Internal,
            Self::DigestMismatch { .. } => tonic::Code::DataLoss,
            Self::InvalidToken | Self::InvalidOwner(_) => tonic::Code::InvalidArgument,
        }
    }
}

impl From<AssetClientError> for tonic::Status {
    fn from(err: AssetClientError) -> Self {
        match err {
            AssetClientError::Status(status) => status,
            other => tonic::Status::new(other.code(), other.to_string()),
        }
    }
}
