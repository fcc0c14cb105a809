//! The validated SHA-256 digest that addresses every stored file.

use std::fmt;

use sha2::{Digest as _, Sha256};

use crate::error::Error;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Digest(String);

impl Digest {
    /// Accepts only 64 lowercase hex characters, which also keeps digests
    /// safe to use as file names and object keys.
    pub fn parse(text: &str) -> Result<Self, Error> {
        if kiln_asset_client::digest::is_valid(text) {
            Ok(Self(text.to_owned()))
        } else {
            Err(Error::InvalidDigest(text.to_owned()))
        }
    }

    pub fn from_hasher(hasher: Sha256) -> Self {
        Self(hex::encode(hasher.finalize()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_valid_digests_only() {
        let hashed = Digest::from_hasher(Sha256::new());
        assert_eq!(Digest::parse(hashed.as_str()).ok(), Some(hashed));
        assert!(matches!(
            Digest::parse("../etc"),
            Err(Error::InvalidDigest(_))
        ));
        assert!(Digest::parse(&"A".repeat(64)).is_err());
    }
}
