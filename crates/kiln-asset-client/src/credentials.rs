//! What each call to a Kiln service carries: the caller's trace context and,
//! for the gateway, a bearer token; for the internal services, the farm's
//! service token or a worker's join token and, from a farm service, the user
//! a call acts for.

use tonic::metadata::{Ascii, MetadataValue};
use tonic::{Request, Status};

use crate::AssetClientError;

/// Metadata naming the user a call between services acts for; the gateway
/// sets it from the caller's token, and the assets service answers as that
/// user would see (their own files only). Trusted only from a caller with
/// the farm's service token.
pub const OWNER_METADATA: &str = kiln_proto::metadata::OWNER;
/// Metadata with that user's role (`viewer`, `submitter`, `admin`).
pub const ROLE_METADATA: &str = kiln_proto::metadata::ROLE;

/// A tonic interceptor adding trace context and, if set, `authorization:
/// Bearer <token>` or a farm credential, and the user the call acts for.
#[derive(Debug, Clone, Default)]
pub struct CallCredentials {
    authorization: Option<MetadataValue<Ascii>>,
    /// `kiln-service-token` or `kiln-join-token`, with its value.
    farm: Option<(&'static str, MetadataValue<Ascii>)>,
    owner: Option<(MetadataValue<Ascii>, Option<MetadataValue<Ascii>>)>,
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

    /// These credentials, with calls acting for user `owner` (of `role`,
    /// if known): for Kiln services calling the assets service on a user's
    /// behalf, never for clients of the gateway (it sets this itself).
    pub fn on_behalf_of(
        mut self,
        owner: &str,
        role: Option<&str>,
    ) -> Result<Self, AssetClientError> {
        let value = |text: &str| {
            MetadataValue::try_from(text)
                .map_err(|_| AssetClientError::InvalidOwner(text.to_owned()))
        };
        let role = role.map(value).transpose()?;
        self.owner = Some((value(owner)?, role));
        Ok(self)
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
        if let Some((owner, role)) = &self.owner {
            request.metadata_mut().insert(OWNER_METADATA, owner.clone());
            if let Some(role) = role {
                request.metadata_mut().insert(ROLE_METADATA, role.clone());
            }
        }
        Ok(request)
    }
}
