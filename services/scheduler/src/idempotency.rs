//! Idempotent submission: a client that lost the answer to a SubmitJob (a
//! dropped connection, a timeout) sends it again with the same
//! `request_id` (REST: `Idempotency-Key`) and gets the job the first one
//! made, not a second render. The rule lives here, without I/O; the rows
//! (`submit_requests`, keyed by owner and key) are written with the job in
//! `inserts.rs`, so a key holds across a scheduler failover.

use kiln_proto::v1 as pb;
use prost::Message;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::SchedulerError;
use crate::error::invalid;

/// Longest key accepted (Stripe's limit, room for any UUID or hash).
pub const MAX_KEY_BYTES: usize = 255;
/// How long a key is remembered; a repeat after this makes a new job.
pub const RETENTION_HOURS: i32 = 24;

/// A validated idempotency key of one submission.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyKey {
    key: String,
    /// What the submission asked for, so a reuse of the key for another
    /// request is told apart from a repeat.
    fingerprint: String,
}

/// What was stored under a key the first time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Remembered {
    pub fingerprint: String,
    pub job_id: Uuid,
}

/// What a submission carrying a key should do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The key is new (or expired): make the job and remember the key.
    Create,
    /// The same request again: answer with this job.
    Repeat(Uuid),
}

impl IdempotencyKey {
    /// The key of `request`, if it carries one; an error names what is wrong
    /// with a bad one.
    pub fn of(request: &pb::SubmitJobRequest) -> Result<Option<Self>, SchedulerError> {
        let key = &request.request_id;
        if key.is_empty() {
            return Ok(None);
        }
        if key.len() > MAX_KEY_BYTES {
            return Err(invalid(format!(
                "request_id: {} bytes, more than the limit of {MAX_KEY_BYTES}",
                key.len()
            )));
        }
        if !key.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(invalid(
                "request_id: only printable ASCII characters without spaces are allowed",
            ));
        }
        Ok(Some(Self {
            key: key.clone(),
            fingerprint: fingerprint(request),
        }))
    }

    pub fn key(&self) -> &str {
        &self.key
    }

    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// Decides from what was stored under this key (for this owner, within
    /// the retention).
    pub fn decide(&self, stored: Option<&Remembered>) -> Result<Outcome, SchedulerError> {
        match stored {
            None => Ok(Outcome::Create),
            Some(stored) if stored.fingerprint == self.fingerprint => {
                Ok(Outcome::Repeat(stored.job_id))
            }
            Some(stored) => Err(SchedulerError::AlreadyExists(format!(
                "request_id: the key {:?} was already used for a different submission (job {}); \
                 use a new key for a new job",
                self.key, stored.job_id
            ))),
        }
    }
}

/// SHA-256 of the request without its key, in a canonical form: prost
/// encodes a map in its hash order, so parameters go in sorted.
fn fingerprint(request: &pb::SubmitJobRequest) -> String {
    let mut rest = request.clone();
    rest.request_id.clear();
    let mut parameters: Vec<(String, String)> =
        std::mem::take(&mut rest.parameters).into_iter().collect();
    parameters.sort();
    let mut hasher = Sha256::new();
    hasher.update(rest.encode_to_vec());
    for (name, value) in parameters {
        for part in [name, value] {
            hasher.update((part.len() as u64).to_le_bytes());
            hasher.update(part.as_bytes());
        }
    }
    hex::encode(hasher.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(key: &str, frames: &str) -> pb::SubmitJobRequest {
        pb::SubmitJobRequest {
            template: Some(pb::submit_job_request::Template::BuiltinTemplate(
                "blender".into(),
            )),
            parameters: [
                ("Frames".to_owned(), frames.to_owned()),
                ("ChunkSize".to_owned(), "2".to_owned()),
                ("Scene".to_owned(), "a.blend".to_owned()),
            ]
            .into(),
            request_id: key.into(),
            ..Default::default()
        }
    }

    fn key_of(request: &pb::SubmitJobRequest) -> IdempotencyKey {
        IdempotencyKey::of(request)
            .expect("a valid key")
            .expect("a key")
    }

    #[test]
    fn a_submission_without_a_key_is_not_idempotent() {
        assert_eq!(IdempotencyKey::of(&request("", "1-10")).ok(), Some(None));
    }

    #[test]
    fn a_new_key_creates_and_a_repeat_answers_with_the_first_job() {
        let key = key_of(&request("retry-1", "1-10"));
        assert_eq!(key.decide(None).ok(), Some(Outcome::Create));
        let job_id = Uuid::new_v4();
        let stored = Remembered {
            fingerprint: key.fingerprint().to_owned(),
            job_id,
        };
        // The same request built again (maps iterate in another order).
        let again = key_of(&request("retry-1", "1-10"));
        assert_eq!(
            again.decide(Some(&stored)).ok(),
            Some(Outcome::Repeat(job_id))
        );
    }

    #[test]
    fn a_key_reused_for_another_request_is_refused_naming_the_key() {
        let first = key_of(&request("retry-1", "1-10"));
        let stored = Remembered {
            fingerprint: first.fingerprint().to_owned(),
            job_id: Uuid::new_v4(),
        };
        let other = key_of(&request("retry-1", "1-20"));
        match other.decide(Some(&stored)) {
            Err(SchedulerError::AlreadyExists(message)) => {
                assert!(message.contains("\"retry-1\""), "{message}");
                assert!(message.contains("different submission"), "{message}");
            }
            outcome => panic!("expected a refusal, got {outcome:?}"),
        }
    }

    #[test]
    fn the_key_itself_is_not_part_of_what_is_compared() {
        assert_eq!(
            key_of(&request("a", "1-10")).fingerprint(),
            key_of(&request("b", "1-10")).fingerprint()
        );
    }

    #[test]
    fn keys_are_bounded_printable_ascii() {
        let long = "k".repeat(MAX_KEY_BYTES + 1);
        assert!(matches!(
            IdempotencyKey::of(&request(&long, "1")),
            Err(SchedulerError::InvalidArgument(m)) if m.starts_with("request_id: ")
        ));
        for bad in ["has space", "tab\t", "nul\0", "é"] {
            assert!(
                IdempotencyKey::of(&request(bad, "1")).is_err(),
                "{bad:?} should be refused"
            );
        }
        let longest = "k".repeat(MAX_KEY_BYTES);
        assert!(matches!(
            IdempotencyKey::of(&request(&longest, "1")),
            Ok(Some(_))
        ));
    }
}
