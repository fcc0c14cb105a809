//! TLS for Kiln, all of it optional: a service given `--tls-cert` and
//! `--tls-key` serves TLS (gRPC, and the gateway's REST) and presents the same
//! certificate as its client certificate when it calls other services; with
//! `--tls-client-ca` it also refuses clients without a certificate signed by
//! that CA (mutual TLS). Which peers speak TLS is read from etcd, where a
//! service serving TLS lists itself as such, so callers pick the scheme.
//!
//! rustls with the aws-lc-rs provider: the assets service already links it
//! through aws-sdk-s3, and one provider in the build lets rustls choose it
//! without being told.

mod client;
mod rest;

use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use client::ClientTls;
pub use rest::TlsListener;
pub use rustls;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tonic::transport::{Certificate, Identity, ServerTlsConfig};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} holds no PEM {what}")]
    NoPem { path: PathBuf, what: &'static str },
    #[error("invalid TLS configuration: {0}")]
    Config(#[from] rustls::Error),
    #[error("invalid client CA: {0}")]
    ClientCa(#[from] rustls::server::VerifierBuilderError),
    #[error("bad address {uri}: {reason}")]
    BadUri { uri: String, reason: String },
    #[error("TLS for {uri}: {source}")]
    Transport {
        uri: String,
        source: tonic::transport::Error,
    },
}

/// Certificate paths; every option is optional, and without `--tls-cert`
/// the service serves plaintext as before.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct TlsArgs {
    /// PEM certificate chain to serve with TLS and to present as client certificate to other Kiln services (needs --tls-key)
    #[arg(long, env = "KILN_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert
    #[arg(long, env = "KILN_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// PEM CA certificate(s) that clients' certificates must be signed by; set, it refuses clients without one (mutual TLS)
    #[arg(long, env = "KILN_TLS_CLIENT_CA", requires = "tls_cert")]
    pub tls_client_ca: Option<PathBuf>,
    /// PEM CA certificate(s) trusted for Kiln services this one calls over TLS [default: --tls-client-ca, else the system's roots]
    #[arg(long, env = "KILN_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
}

/// PEM contents of [`TlsArgs`], read once at start-up.
#[derive(Debug, Clone, Default)]
pub struct TlsSettings {
    identity: Option<(Vec<u8>, Vec<u8>)>,
    client_ca: Option<Vec<u8>>,
    client: ClientTls,
}

impl TlsArgs {
    /// Reads every file named, so a wrong path fails at start-up.
    pub fn load(&self) -> Result<TlsSettings, TlsError> {
        install_provider();
        let identity = match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => Some((read(cert)?, read(key)?)),
            _ => None,
        };
        let client_ca = self.tls_client_ca.as_deref().map(read).transpose()?;
        let trusted = match (&self.tls_ca, &client_ca) {
            (Some(path), _) => Some(read(path)?),
            (None, Some(pem)) => Some(pem.clone()),
            (None, None) => None,
        };
        let client = ClientTls::new(
            trusted.map(Certificate::from_pem),
            identity
                .as_ref()
                .map(|(cert, key)| Identity::from_pem(cert, key)),
        );
        Ok(TlsSettings {
            identity,
            client_ca,
            client,
        })
    }
}

impl TlsSettings {
    /// Whether this service serves TLS.
    pub fn serves_tls(&self) -> bool {
        self.identity.is_some()
    }

    /// The gRPC server's TLS, requiring client certificates when a client CA is set.
    pub fn grpc_server(&self) -> Option<ServerTlsConfig> {
        let (cert, key) = self.identity.as_ref()?;
        let config = ServerTlsConfig::new().identity(Identity::from_pem(cert, key));
        Some(match &self.client_ca {
            Some(ca) => config.client_ca_root(Certificate::from_pem(ca)),
            None => config,
        })
    }

    /// The rustls configuration of an HTTP/1.1 listener (the gateway's REST).
    pub fn http_server(&self) -> Result<Option<Arc<rustls::ServerConfig>>, TlsError> {
        let Some((cert, key)) = &self.identity else {
            return Ok(None);
        };
        let chain = certificates(cert, Path::new("--tls-cert"))?;
        let key = PrivateKeyDer::from_pem_slice(key).map_err(|_| TlsError::NoPem {
            path: PathBuf::from("--tls-key"),
            what: "private key",
        })?;
        let builder = rustls::ServerConfig::builder();
        let builder = match &self.client_ca {
            Some(ca) => {
                let mut roots = rustls::RootCertStore::empty();
                for cert in certificates(ca, Path::new("--tls-client-ca"))? {
                    roots.add(cert)?;
                }
                let verifier =
                    rustls::server::WebPkiClientVerifier::builder(Arc::new(roots)).build()?;
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let mut config = builder.with_single_cert(chain, key)?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Some(Arc::new(config)))
    }

    /// How this service dials other Kiln services.
    pub fn client(&self) -> ClientTls {
        self.client.clone()
    }
}

fn certificates(pem: &[u8], path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs: Vec<_> = CertificateDer::pem_slice_iter(pem)
        .filter_map(Result::ok)
        .collect();
    if certs.is_empty() {
        return Err(TlsError::NoPem {
            path: path.to_path_buf(),
            what: "certificate",
        });
    }
    Ok(certs)
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// Makes aws-lc-rs the process's rustls provider, so no crate that enables
/// another can leave rustls unable to choose.
pub fn install_provider() {
    // Err means one is installed already, which is all this wants.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_a_certificate_nothing_changes() -> Result<(), TlsError> {
        let settings = TlsArgs::default().load()?;
        assert!(!settings.serves_tls());
        assert!(settings.grpc_server().is_none());
        assert!(settings.http_server()?.is_none());
        settings.client().endpoint("http://127.0.0.1:7070")?;
        Ok(())
    }

    #[test]
    fn certificates_are_read_at_start_up() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let issued = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()])?;
        let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
        std::fs::write(&cert, issued.cert.pem())?;
        std::fs::write(&key, issued.signing_key.serialize_pem())?;
        let args = TlsArgs {
            tls_cert: Some(cert.clone()),
            tls_key: Some(key),
            tls_client_ca: Some(cert.clone()),
            tls_ca: None,
        };
        let settings = args.load()?;
        assert!(settings.serves_tls());
        assert!(settings.grpc_server().is_some());
        assert!(settings.http_server()?.is_some());
        settings.client().endpoint("https://localhost:7070")?;

        let missing = TlsArgs {
            tls_key: Some(dir.path().join("nope.pem")),
            ..args
        };
        let err = missing.load().expect_err("a missing key file");
        assert!(err.to_string().contains("nope.pem"), "{err}");
        Ok(())
    }

    #[test]
    fn a_bad_address_is_a_clear_error() {
        let err = ClientTls::default()
            .endpoint("http://bad host")
            .expect_err("a space in the host");
        assert!(err.to_string().contains("bad host"), "{err}");
    }
}
