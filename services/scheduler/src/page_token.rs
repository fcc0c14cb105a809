//! AIP-158 page tokens for job listings: where the last page ended (the last
//! job's submission time and id, the listing's sort key) and a fingerprint of
//! the filters it was made for, so that a token cannot be replayed under other
//! filters (or another user's owner filter).
//!
//! The token is opaque to clients (hex of 32 bytes). It is not a secret:
//! forging one only moves where a listing the caller may already read starts.

use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::queries::JobFilter;

/// Bytes in a token: time (8), id (16), fingerprint (8).
const TOKEN_BYTES: usize = 32;

/// Where the next page starts: strictly after this job in the listing's order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageToken {
    /// The last job's `created_at`, in microseconds (Postgres' precision).
    pub created_micros: i64,
    pub id: Uuid,
    fingerprint: [u8; 8],
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PageTokenError {
    #[error("page_token: not a token this listing gave out")]
    Malformed,
    #[error("page_token: made for other filters; list again from the first page")]
    OtherFilters,
}

impl PageToken {
    /// The token for the page after the job `(created_at, id)` under `filter`.
    pub fn after(filter: &JobFilter, created_at: DateTime<Utc>, id: Uuid) -> Self {
        Self {
            created_micros: created_at.timestamp_micros(),
            id,
            fingerprint: fingerprint(filter),
        }
    }

    pub fn encode(&self) -> String {
        let mut bytes = Vec::with_capacity(TOKEN_BYTES);
        bytes.extend_from_slice(&self.created_micros.to_be_bytes());
        bytes.extend_from_slice(self.id.as_bytes());
        bytes.extend_from_slice(&self.fingerprint);
        hex::encode(bytes)
    }

    /// Reads a token, checking it was made for `filter`.
    pub fn decode(text: &str, filter: &JobFilter) -> Result<Self, PageTokenError> {
        if text.len() != TOKEN_BYTES * 2 {
            return Err(PageTokenError::Malformed);
        }
        let bytes = hex::decode(text).map_err(|_| PageTokenError::Malformed)?;
        let (time, rest) = bytes.split_at(8);
        let (id, print) = rest.split_at(16);
        let token = Self {
            created_micros: i64::from_be_bytes(
                time.try_into().map_err(|_| PageTokenError::Malformed)?,
            ),
            id: Uuid::from_slice(id).map_err(|_| PageTokenError::Malformed)?,
            fingerprint: print.try_into().map_err(|_| PageTokenError::Malformed)?,
        };
        if token.fingerprint != fingerprint(filter) {
            return Err(PageTokenError::OtherFilters);
        }
        Ok(token)
    }

    /// The last job's submission time.
    pub fn created_at(&self) -> Result<DateTime<Utc>, PageTokenError> {
        DateTime::from_timestamp_micros(self.created_micros).ok_or(PageTokenError::Malformed)
    }
}

/// A digest of every field of the filter, in a fixed form.
fn fingerprint(filter: &JobFilter) -> [u8; 8] {
    let mut states: Vec<&str> = filter.states.iter().map(|s| s.as_str()).collect();
    states.sort_unstable();
    states.dedup();
    let mut hash = Sha256::new();
    // Each part length-prefixed, so that no two filters write the same bytes.
    let mut part = |bytes: &[u8]| {
        hash.update((bytes.len() as u64).to_be_bytes());
        hash.update(bytes);
    };
    part(filter.owner.as_deref().unwrap_or("").as_bytes());
    part(states.join(",").as_bytes());
    // The name filter ignores case, so its token does too.
    part(
        filter
            .name_contains
            .as_deref()
            .unwrap_or("")
            .to_lowercase()
            .as_bytes(),
    );
    let micros = |t: Option<DateTime<Utc>>| t.map_or(i64::MIN, |t| t.timestamp_micros());
    part(&micros(filter.submitted_after).to_be_bytes());
    part(&micros(filter.submitted_before).to_be_bytes());
    let digest = hash.finalize();
    let mut out = [0; 8];
    out.copy_from_slice(&digest[..8]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job_state::JobState;

    fn filter() -> JobFilter {
        JobFilter {
            owner: Some("alice".into()),
            states: vec![JobState::Running, JobState::Pending],
            name_contains: Some("shot".into()),
            ..Default::default()
        }
    }

    #[test]
    fn a_token_reads_back_under_the_same_filters() {
        let at = DateTime::from_timestamp_micros(1_780_000_000_123_456).unwrap();
        let id = Uuid::new_v4();
        let token = PageToken::after(&filter(), at, id).encode();
        let mut same = filter();
        same.states.reverse();
        same.name_contains = Some("SHOT".into());
        let read = PageToken::decode(&token, &same).unwrap();
        assert_eq!(read.id, id);
        assert_eq!(read.created_at().unwrap(), at);
    }

    #[test]
    fn a_token_is_refused_under_other_filters() {
        let token = PageToken::after(&filter(), Utc::now(), Uuid::new_v4()).encode();
        let mut other = filter();
        other.owner = Some("bob".into());
        assert_eq!(
            PageToken::decode(&token, &other),
            Err(PageTokenError::OtherFilters)
        );
        let mut other = filter();
        other.name_contains = None;
        assert_eq!(
            PageToken::decode(&token, &other),
            Err(PageTokenError::OtherFilters)
        );
    }

    #[test]
    fn garbage_is_malformed() {
        for text in ["", "zz", &"g".repeat(64), &"0".repeat(63), &"0".repeat(66)] {
            assert_eq!(
                PageToken::decode(text, &filter()),
                Err(PageTokenError::Malformed),
                "{text:?}"
            );
        }
    }
}
