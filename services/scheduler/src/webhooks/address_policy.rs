//! Where webhooks may be sent, without I/O: http or https URLs only, and
//! never to this farm's own network (SSRF): loopback, link-local (cloud
//! metadata lives at 169.254.169.254), private and unique-local ranges,
//! unspecified, multicast and broadcast addresses are refused unless an
//! admin allowed the URL's host (`--webhook-allow-hosts`). Private ranges
//! are refused too because a farm's Postgres, etcd and services usually sit
//! on one; an admin allows an internal receiver by name.
//!
//! Checked at registration and again at every attempt on the addresses the
//! host resolves to then (DNS can change), and the attempt connects to the
//! address that was checked, not to a second lookup's.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use url::Url;

/// Longest URL accepted.
pub const MAX_URL_BYTES: usize = 2048;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AddressError {
    #[error("url: {0}")]
    BadUrl(String),
    #[error(
        "url: {host} resolves to {address}, a {kind} address; webhooks to it are refused \
         (SSRF protection) unless an admin allows the host (--webhook-allow-hosts)"
    )]
    Refused {
        host: String,
        address: IpAddr,
        kind: &'static str,
    },
}

/// The hosts an admin allowed despite their addresses.
#[derive(Debug, Clone, Default)]
pub struct AddressPolicy {
    allowed_hosts: HashSet<String>,
}

/// A checked URL: where to connect and what to say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub url: Url,
    pub host: String,
    pub port: u16,
    pub https: bool,
    /// Whether an admin allowed the host, so its addresses are not checked.
    pub allowed: bool,
}

impl AddressPolicy {
    pub fn new(allowed_hosts: impl IntoIterator<Item = String>) -> Self {
        Self {
            allowed_hosts: allowed_hosts
                .into_iter()
                .map(|h| normalize_host(h.trim()))
                .filter(|h| !h.is_empty())
                .collect(),
        }
    }

    /// Parses and checks what can be checked without resolving: scheme,
    /// host, credentials, and a literal address.
    pub fn target(&self, text: &str) -> Result<Target, AddressError> {
        if text.len() > MAX_URL_BYTES {
            return Err(AddressError::BadUrl(format!(
                "longer than {MAX_URL_BYTES} bytes"
            )));
        }
        let url =
            Url::parse(text).map_err(|err| AddressError::BadUrl(format!("{text:?}: {err}")))?;
        let https = match url.scheme() {
            "https" => true,
            "http" => false,
            other => {
                return Err(AddressError::BadUrl(format!(
                    "scheme {other:?} is not http or https"
                )));
            }
        };
        if !url.username().is_empty() || url.password().is_some() {
            return Err(AddressError::BadUrl(
                "credentials in the URL are not allowed; the signature authenticates the farm"
                    .into(),
            ));
        }
        if url.fragment().is_some() {
            return Err(AddressError::BadUrl("a fragment is not allowed".into()));
        }
        let host = url
            .host_str()
            .map(normalize_host)
            .filter(|h| !h.is_empty())
            .ok_or_else(|| AddressError::BadUrl(format!("{text:?} names no host")))?;
        let port = url
            .port_or_known_default()
            .ok_or_else(|| AddressError::BadUrl(format!("{text:?} names no port")))?;
        let allowed = self.allowed_hosts.contains(&host);
        let target = Target {
            host,
            port,
            https,
            allowed,
            url,
        };
        if let Ok(literal) = target.host.parse::<IpAddr>() {
            self.check(&target, literal)?;
        }
        Ok(target)
    }

    /// Whether `target` may be reached at `address` (one its host resolved to).
    pub fn check(&self, target: &Target, address: IpAddr) -> Result<(), AddressError> {
        if target.allowed {
            return Ok(());
        }
        match forbidden(address) {
            Some(kind) => Err(AddressError::Refused {
                host: target.host.clone(),
                address,
                kind,
            }),
            None => Ok(()),
        }
    }
}

/// Lower case, without IPv6 brackets or a trailing dot.
fn normalize_host(host: &str) -> String {
    host.trim_start_matches('[')
        .trim_end_matches(']')
        .trim_end_matches('.')
        .to_ascii_lowercase()
}

/// What kind of address a webhook may not reach, if it is one.
pub fn forbidden(address: IpAddr) -> Option<&'static str> {
    match address {
        IpAddr::V4(v4) => forbidden_v4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => forbidden_v4(v4),
            None => forbidden_v6(v6),
        },
    }
}

fn forbidden_v4(a: Ipv4Addr) -> Option<&'static str> {
    let [first, second, ..] = a.octets();
    if a.is_loopback() {
        Some("loopback")
    } else if a.is_link_local() {
        Some("link-local")
    } else if a.is_unspecified() || first == 0 {
        Some("unspecified")
    } else if a.is_multicast() || a.is_broadcast() || first >= 240 {
        Some("multicast or reserved")
    } else if a.is_private() || (first == 100 && (64..128).contains(&second)) {
        // RFC 1918, and carrier-grade NAT (100.64/10).
        Some("private")
    } else {
        None
    }
}

fn forbidden_v6(a: Ipv6Addr) -> Option<&'static str> {
    let first = a.segments()[0];
    if a.is_loopback() {
        Some("loopback")
    } else if a.is_unspecified() {
        Some("unspecified")
    } else if a.is_multicast() {
        Some("multicast")
    } else if first & 0xffc0 == 0xfe80 {
        Some("link-local")
    } else if first & 0xfe00 == 0xfc00 {
        Some("private")
    } else if let Some(v4) = a.to_ipv4() {
        // IPv4-compatible (deprecated) addresses reach IPv4 hosts.
        forbidden_v4(v4)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_the_farm_s_own_network_by_default() {
        let policy = AddressPolicy::default();
        for url in [
            "http://127.0.0.1:8080/hook",
            "http://[::1]/",
            "http://169.254.169.254/latest/meta-data",
            "http://10.0.0.5/",
            "http://192.168.1.1/",
            "http://0.0.0.0/",
            "http://[::ffff:127.0.0.1]/",
            "http://[fe80::1]/",
            "http://224.0.0.1/",
        ] {
            let err = policy.target(url).expect_err(url);
            assert!(err.to_string().contains("SSRF"), "{url}: {err}");
        }
        assert!(policy.target("https://93.184.215.14/hook").is_ok());
        assert!(policy.target("https://hooks.example.com/x?y=1").is_ok());
    }

    #[test]
    fn refuses_bad_urls_with_a_reason() {
        let policy = AddressPolicy::default();
        for (url, says) in [
            ("ftp://example.com/", "scheme"),
            ("not a url", "url"),
            ("http://user:pw@example.com/", "credentials"),
            ("http://example.com/#frag", "fragment"),
        ] {
            let err = policy.target(url).expect_err(url).to_string();
            assert!(err.contains(says), "{url}: {err}");
        }
    }

    #[test]
    fn an_allowed_host_passes_whatever_it_resolves_to() {
        let policy = AddressPolicy::new(["LocalHost".to_owned(), "127.0.0.1".to_owned()]);
        let target = policy.target("http://localhost:9/").expect("allowed");
        assert!(target.allowed);
        assert!(
            policy
                .check(&target, "127.0.0.1".parse().expect("ip"))
                .is_ok()
        );
        assert!(policy.target("http://127.0.0.1:9/").is_ok());
        let other = policy.target("http://example.com/").expect("public name");
        assert!(
            policy
                .check(&other, "10.1.2.3".parse().expect("ip"))
                .is_err()
        );
        assert!(policy.check(&other, "8.8.8.8".parse().expect("ip")).is_ok());
    }
}
