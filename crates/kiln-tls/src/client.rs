//! Dialing Kiln services: plaintext for `http://` addresses, TLS for
//! `https://` ones, trusting the configured CA and presenting the service's
//! own certificate when it has one.

use std::path::Path;

use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

use crate::TlsError;

/// What a client trusts and presents; the default trusts the system's roots
/// and presents nothing.
#[derive(Debug, Clone, Default)]
pub struct ClientTls {
    ca: Option<Certificate>,
    identity: Option<Identity>,
}

impl ClientTls {
    pub(crate) fn new(ca: Option<Certificate>, identity: Option<Identity>) -> Self {
        Self { ca, identity }
    }

    /// A client trusting the PEM CA certificate(s) at `ca` (the CLI's
    /// `--ca`), or the system's roots without one.
    pub fn trusting(ca: Option<&Path>) -> Result<Self, TlsError> {
        crate::install_provider();
        let ca = ca.map(crate::read).transpose()?;
        Ok(Self::new(ca.map(Certificate::from_pem), None))
    }

    /// An endpoint for `uri`, with TLS when its scheme is `https`.
    pub fn endpoint(&self, uri: &str) -> Result<Endpoint, TlsError> {
        let endpoint = Endpoint::from_shared(uri.to_owned()).map_err(|e| TlsError::BadUri {
            uri: uri.to_owned(),
            reason: e.to_string(),
        })?;
        if !uri.starts_with("https://") {
            return Ok(endpoint);
        }
        endpoint
            .tls_config(self.config())
            .map_err(|source| TlsError::Transport {
                uri: uri.to_owned(),
                source,
            })
    }

    fn config(&self) -> ClientTlsConfig {
        let config = match &self.ca {
            Some(ca) => ClientTlsConfig::new().ca_certificate(ca.clone()),
            None => ClientTlsConfig::new().with_native_roots(),
        };
        match &self.identity {
            Some(identity) => config.identity(identity.clone()),
            None => config,
        }
    }
}
