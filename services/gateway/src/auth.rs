//! Who is calling and what they may do.
//!
//! A caller is identified by a bearer token. Its name is the user every job
//! it submits belongs to; its role says what it may do. Non-admins reach only
//! their own jobs (see [`Principal::may_access`]).

use kiln_proto::v1 as pb;
use rand::RngCore;
use sha2::{Digest, Sha256};
use tonic::Status;
use uuid::Uuid;

/// Prefix of every secret, so a leaked one is easy to recognise and grep for.
pub const SECRET_PREFIX: &str = "kiln_";
/// Random bytes in a secret: 256 bits, far beyond guessing.
const SECRET_BYTES: usize = 32;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    Viewer,
    Submitter,
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Submitter => "submitter",
            Role::Admin => "admin",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "viewer" => Some(Role::Viewer),
            "submitter" => Some(Role::Submitter),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }

    pub fn from_proto(role: i32) -> Option<Self> {
        match pb::Role::try_from(role).ok()? {
            pb::Role::Viewer => Some(Role::Viewer),
            pb::Role::Submitter => Some(Role::Submitter),
            pb::Role::Admin => Some(Role::Admin),
            pb::Role::Unspecified => None,
        }
    }

    pub fn to_proto(self) -> pb::Role {
        match self {
            Role::Viewer => pb::Role::Viewer,
            Role::Submitter => pb::Role::Submitter,
            Role::Admin => pb::Role::Admin,
        }
    }
}

/// The highest priority a token may give unless an admin granted more: high.
pub const DEFAULT_MAX_PRIORITY: u32 = 75;

/// The authenticated caller, put in each request's extensions by the guard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub token_id: Uuid,
    pub name: String,
    pub role: Role,
    /// The highest job priority this token may give (admins: any).
    pub max_priority: u32,
}

impl Principal {
    pub fn is_admin(&self) -> bool {
        self.role == Role::Admin
    }

    /// Fails unless the caller's role is at least `needed`.
    pub fn require(&self, needed: Role) -> Result<(), Status> {
        if self.role >= needed {
            return Ok(());
        }
        Err(Status::permission_denied(format!(
            "this needs the {} role; token {:?} is a {}",
            needed.as_str(),
            self.name,
            self.role.as_str()
        )))
    }

    /// Fails unless the caller may give a job `priority`: above its token's
    /// grant (high, unless an admin granted more) only admins may.
    pub fn may_give_priority(&self, priority: u32) -> Result<(), Status> {
        if self.is_admin() || priority <= self.max_priority {
            return Ok(());
        }
        Err(Status::permission_denied(format!(
            "quota max-priority: priority {priority} is above the {} that token {:?} may give; an admin can grant more (kiln token create --max-priority)",
            self.max_priority, self.name
        )))
    }

    /// Fails unless the caller may see and control jobs of `owner`.
    pub fn may_access(&self, owner: &str, job_id: &str) -> Result<(), Status> {
        if self.is_admin() || self.name == owner {
            return Ok(());
        }
        Err(Status::permission_denied(format!(
            "job {job_id} belongs to another user"
        )))
    }
}

/// The caller of `request`; the guard layer put it there, so its absence
/// means the route was wrongly left unguarded.
pub fn principal<T>(request: &tonic::Request<T>) -> Result<Principal, Status> {
    request
        .extensions()
        .get::<Principal>()
        .cloned()
        .ok_or_else(|| Status::unauthenticated("a bearer token is required"))
}

/// A fresh random secret, `kiln_` and 64 hex characters.
pub fn new_secret() -> String {
    let mut bytes = [0u8; SECRET_BYTES];
    rand::rng().fill_bytes(&mut bytes);
    format!("{SECRET_PREFIX}{}", hex::encode(bytes))
}

/// What the token store keeps instead of a secret.
pub fn secret_hash(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

/// Token names become job owners and show up in listings and logs.
pub fn check_name(name: &str) -> Result<(), crate::error::GatewayError> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '@');
    if name.is_empty() || name.len() > 64 || !name.chars().all(allowed) {
        return Err(crate::error::GatewayError::Invalid {
            field: "name",
            reason: format!("{name:?} must be 1 to 64 letters, digits, '.', '_', '-' or '@'"),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn principal(name: &str, role: Role) -> Principal {
        Principal {
            token_id: Uuid::nil(),
            name: name.into(),
            role,
            max_priority: DEFAULT_MAX_PRIORITY,
        }
    }

    #[test]
    fn priorities_above_the_grant_are_for_admins_and_granted_tokens() {
        let alice = principal("alice", Role::Submitter);
        assert!(alice.may_give_priority(75).is_ok());
        let refused = alice
            .may_give_priority(100)
            .expect_err("critical without a grant");
        assert_eq!(refused.code(), tonic::Code::PermissionDenied);
        assert!(
            refused.message().starts_with("quota max-priority: "),
            "{refused:?}"
        );
        let granted = Principal {
            max_priority: 100,
            ..principal("render-bot", Role::Submitter)
        };
        assert!(granted.may_give_priority(100).is_ok());
        assert!(
            principal("root", Role::Admin)
                .may_give_priority(100)
                .is_ok()
        );
    }

    #[test]
    fn roles_nest_and_owners_are_isolated() {
        let viewer = principal("carol", Role::Viewer);
        assert!(viewer.require(Role::Viewer).is_ok());
        assert_eq!(
            viewer.require(Role::Submitter).map_err(|s| s.code()),
            Err(tonic::Code::PermissionDenied)
        );
        let alice = principal("alice", Role::Submitter);
        assert!(alice.may_access("alice", "j").is_ok());
        assert_eq!(
            alice.may_access("bob", "j").map_err(|s| s.code()),
            Err(tonic::Code::PermissionDenied)
        );
        assert!(
            principal("root", Role::Admin)
                .may_access("bob", "j")
                .is_ok()
        );
    }

    #[test]
    fn secrets_are_random_and_stored_only_as_hashes() {
        let (a, b) = (new_secret(), new_secret());
        assert_ne!(a, b);
        assert!(a.starts_with(SECRET_PREFIX) && a.len() == SECRET_PREFIX.len() + 64);
        assert_eq!(secret_hash(&a), secret_hash(&a));
        assert_ne!(secret_hash(&a), secret_hash(&b));
    }

    #[test]
    fn names_are_plain() {
        assert!(check_name("alice.smith@studio").is_ok());
        for bad in ["", "../etc", "a b", "nul\0", &"x".repeat(65)] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
    }
}
