//! What each call to a Kiln service carries: the caller's trace context and,
//! for the gateway, a bearer token; for the internal services, the farm's
//! service token or a worker's join token.

use tonic::metadata::{Ascii, MetadataValue};
use tonic::{Request, Status};

use crate::AssetClientError;

/// A tonic interceptor adding trace context and, if set, `authorization:
/// Bearer <token>` or a farm credential.
#[derive(Debug, Clone, Default)]
pub struct CallCredentials {
    authorization: Option<MetadataValue<Ascii>>,
    /// `kiln-service-token` or `kiln-join-token`, with its value.
    farm: Option<(&'static str, MetadataValue<Ascii>)>,
}

impl CallCredentials {
    /// Credentials presenting `token` to the gateway.
    pub fn bearer(token: &str) -> Result<Self, AssetClientError> {
        let value = MetadataValue::try_from(format!("Bearer {}", token.trim()))
            .map_err(|_| AssetClientError::InvalidToken)?;
        Ok(Self {
            authorization: Some(value),
            ..Self::default()
        })
    }

    /// Credentials of a farm service (the gateway, the scheduler, the
    /// assets collector) calling another: the farm's service token.
    pub fn service(token: &str) -> Result<Self, AssetClientError> {
        Self::farm(kiln_proto::metadata::SERVICE_TOKEN, token)
    }

    /// Credentials of a worker: its join token.
    pub fn worker(join_token: &str) -> Result<Self, AssetClientError> {
        Self::farm(kiln_proto::metadata::JOIN_TOKEN, join_token)
    }

    fn farm(key: &'static str, token: &str) -> Result<Self, AssetClientError> {
        let value =
            MetadataValue::try_from(token.trim()).map_err(|_| AssetClientError::InvalidToken)?;
        Ok(Self {
            farm: Some((key, value)),
            ..Self::default()
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
        if let Some((key, value)) = &self.farm {
            request.metadata_mut().insert(*key, value.clone());
        }
        Ok(request)
    }
}
