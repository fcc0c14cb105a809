//! A private certificate authority for a farm with TLS everywhere, made
//! afresh at every start: nothing secret outlives the farm's directory, and
//! no certificate or key lives in the repository.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};

use crate::error::{LocalFarmError, Result};

/// Names every farm service's certificate is valid for: the farm listens on loopback.
const HOSTS: &[&str] = &["localhost", "127.0.0.1"];

/// A CA able to sign certificates; dropped with the farm.
pub struct DevCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

/// A certificate and its private key, both PEM.
pub struct IssuedCert {
    pub cert_pem: String,
    pub key_pem: String,
}

impl DevCa {
    /// A new self-signed CA called `name`.
    pub fn generate(name: &str) -> Result<Self> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate()?)?;
        Ok(Self { issuer })
    }

    /// The CA's certificate, PEM: what clients trust.
    pub fn cert_pem(&self) -> String {
        self.issuer.pem()
    }

    /// A certificate for `name` valid on loopback, usable both to serve and
    /// as a client certificate (a service is both).
    pub fn issue(&self, name: &str) -> Result<IssuedCert> {
        let hosts: Vec<String> = HOSTS.iter().map(|h| (*h).to_owned()).collect();
        let mut params = CertificateParams::new(hosts)?;
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(IssuedCert {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

impl IssuedCert {
    /// Writes `<dir>/<name>.pem` and `<dir>/<name>-key.pem` (owner-only); returns both paths.
    pub fn write(&self, dir: &Path, name: &str) -> Result<(PathBuf, PathBuf)> {
        let cert = dir.join(format!("{name}.pem"));
        let key = dir.join(format!("{name}-key.pem"));
        crate::fs::write_private(&cert, self.cert_pem.as_bytes())?;
        crate::fs::write_private(&key, self.key_pem.as_bytes())?;
        Ok((cert, key))
    }
}

/// The files a TLS farm hands its services.
#[derive(Debug, Clone)]
pub struct FarmCerts {
    /// The farm CA's certificate.
    pub ca: PathBuf,
    /// The certificate every service serves and presents to the others.
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl FarmCerts {
    /// Makes a fresh CA and one service certificate under `dir`.
    pub fn generate(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|e| LocalFarmError::io(dir, e))?;
        let ca = DevCa::generate("Kiln dev farm CA")?;
        let ca_path = dir.join("ca.pem");
        crate::fs::write_private(&ca_path, ca.cert_pem().as_bytes())?;
        let (cert, key) = ca.issue("kiln-service")?.write(dir, "service")?;
        Ok(Self {
            ca: ca_path,
            cert,
            key,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ca_signs_service_certificates() -> Result<()> {
        let ca = DevCa::generate("test CA")?;
        let issued = ca.issue("svc")?;
        assert!(ca.cert_pem().starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(issued.cert_pem.starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(issued.key_pem.contains("PRIVATE KEY"));
        Ok(())
    }
}
