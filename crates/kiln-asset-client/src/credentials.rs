//! What each call to a Kiln service carries: the caller's trace context and,
//! for the gateway, a bearer token.

use tonic::metadata::{Ascii, MetadataValue};
use tonic::{Request, Status};

use crate::AssetClientError;

/// A tonic interceptor adding trace context and, if set, `authorization: Bearer <token>`.
#[derive(Debug, Clone, Default)]
pub struct CallCredentials {
    authorization: Option<MetadataValue<Ascii>>,
}

impl CallCredentials {
    /// Credentials presenting `token` to the gateway.
    pub fn bearer(token: &str) -> Result<Self, AssetClientError> {
        let value = MetadataValue::try_from(format!("Bearer {}", token.trim()))
            .map_err(|_| AssetClientError::InvalidToken)?;
        Ok(Self {
            authorization: Some(value),
        })
    }
}

impl tonic::service::Interceptor for CallCredentials {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        let mut request = kiln_telemetry::propagation::inject_context(request)?;
        if let Some(value) = &self.authorization {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}
