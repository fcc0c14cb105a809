//! Errors of the gateway's own state (its token store).

use tonic::Status;

#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("database migration: {0}")]
    Migration(#[from] sqlx::migrate::MigrateError),
    #[error("invalid {field}: {reason}")]
    Invalid { field: &'static str, reason: String },
    #[error("no token {0}")]
    UnknownToken(String),
}

impl From<GatewayError> for Status {
    fn from(err: GatewayError) -> Self {
        match err {
            GatewayError::Invalid { .. } => Status::invalid_argument(err.to_string()),
            GatewayError::UnknownToken(_) => Status::not_found(err.to_string()),
            GatewayError::Database(_) | GatewayError::Migration(_) => {
                tracing::error!(error = %err, "token store failed");
                Status::unavailable("the token store is unavailable")
            }
        }
    }
}
