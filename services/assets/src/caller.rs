//! On whose behalf a call is made, read from the metadata the gateway sets.
//!
//! The gateway names the authenticated user in `kiln-owner` and their role in
//! `kiln-role` on every call it forwards (and strips whatever its own client
//! sent). A call without `kiln-owner` comes from another Kiln service (a
//! worker fetching a task's inputs, the gateway reading a job's outputs
//! after checking the job) and sees every object. Which callers may set
//! that metadata at all is decided by the transport (mutual TLS, service
//! credentials), not here.

use kiln_asset_client::{OWNER_METADATA, ROLE_METADATA};
use sha2::{Digest as _, Sha256};
use tonic::metadata::MetadataMap;

use crate::error::Error;

/// Who a request acts for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// Another Kiln service: sees every object; what it stores or is told
    /// is stored is held under [`Holder::SERVICE`].
    Service,
    /// A user, as the gateway authenticated them.
    Owner { name: String, admin: bool },
}

impl Caller {
    pub fn from_metadata(metadata: &MetadataMap) -> Result<Self, Error> {
        let Some(owner) = metadata.get(OWNER_METADATA) else {
            return Ok(Self::Service);
        };
        let name = owner
            .to_str()
            .ok()
            .filter(|name| !name.is_empty())
            .ok_or(Error::BadOwner)?;
        let admin = metadata
            .get(ROLE_METADATA)
            .is_some_and(|role| role.as_bytes() == b"admin");
        Ok(Self::Owner {
            name: name.to_owned(),
            admin,
        })
    }

    /// Whether the caller may read any stored object, held or not.
    pub fn sees_everything(&self) -> bool {
        match self {
            Self::Service => true,
            Self::Owner { admin, .. } => *admin,
        }
    }

    /// The key the caller's holdings are recorded under.
    pub fn holder(&self) -> Holder {
        match self {
            Self::Service => Holder(Holder::SERVICE.to_owned()),
            Self::Owner { name, .. } => Holder(hex::encode(Sha256::digest(name.as_bytes()))),
        }
    }
}

/// Whom an ownership marker is for: the SHA-256 (hex) of an owner's name,
/// so any name makes a safe, fixed-length object key, or `service`, which
/// no hash can equal.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Holder(String);

impl Holder {
    pub const SERVICE: &str = "service";

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metadata(pairs: &[(&'static str, &'static str)]) -> MetadataMap {
        let mut map = MetadataMap::new();
        for (key, value) in pairs {
            map.insert(*key, value.parse().expect("ascii"));
        }
        map
    }

    #[test]
    fn reads_the_owner_and_role_the_gateway_set() -> Result<(), Error> {
        assert_eq!(Caller::from_metadata(&metadata(&[]))?, Caller::Service);
        let alice = Caller::from_metadata(&metadata(&[("kiln-owner", "alice")]))?;
        assert!(!alice.sees_everything());
        let root =
            Caller::from_metadata(&metadata(&[("kiln-owner", "root"), ("kiln-role", "admin")]))?;
        assert!(root.sees_everything());
        assert!(
            !Caller::from_metadata(&metadata(&[
                ("kiln-owner", "bob"),
                ("kiln-role", "submitter")
            ]))?
            .sees_everything()
        );
        assert!(matches!(
            Caller::from_metadata(&metadata(&[("kiln-owner", "")])),
            Err(Error::BadOwner)
        ));
        Ok(())
    }

    #[test]
    fn holders_are_fixed_length_hashes_apart_from_services() -> Result<(), Error> {
        let alice = Caller::from_metadata(&metadata(&[("kiln-owner", "alice")]))?.holder();
        let slash = Caller::from_metadata(&metadata(&[("kiln-owner", "../../x")]))?.holder();
        assert_eq!(alice.as_str().len(), 64);
        assert_ne!(alice, slash);
        assert!(slash.as_str().chars().all(|c| c.is_ascii_hexdigit()));
        assert_eq!(Caller::Service.holder().as_str(), "service");
        Ok(())
    }
}
