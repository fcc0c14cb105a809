//! Refusals with `google.rpc` error details, built in one place so that every
//! service words them alike and clients can read them without parsing text.
//!
//! INVALID_ARGUMENT carries a `BadRequest` whose field violation names the
//! field (Kiln's messages start with it: `"priority: 120 is outside 0-100"`);
//! RESOURCE_EXHAUSTED carries a `RetryInfo` with the delay that REST sends as
//! `Retry-After`, which also stays in the [`crate::metadata::RETRY_AFTER`]
//! metadata for clients written before the details.

use std::time::Duration;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

/// INVALID_ARGUMENT with `message` as it is; when the message starts with a
/// field path (`"inputs[0].path: ..."`), also a field violation for it.
pub fn invalid_argument(message: impl Into<String>) -> Status {
    let message = message.into();
    match split_field(&message) {
        Some((field, description)) => invalid_field(field, description, message.clone()),
        None => Status::invalid_argument(message),
    }
}

/// INVALID_ARGUMENT saying `message`, with one field violation: `field` and
/// what is wrong with it.
pub fn invalid_field(field: &str, description: &str, message: impl Into<String>) -> Status {
    Status::with_error_details(
        Code::InvalidArgument,
        message,
        ErrorDetails::with_bad_request_violation(field, description),
    )
}

/// RESOURCE_EXHAUSTED saying `message`; with `retry_after_seconds`, a
/// `RetryInfo` and the `retry-after` metadata both giving the delay.
pub fn resource_exhausted(message: impl Into<String>, retry_after_seconds: Option<u32>) -> Status {
    let Some(seconds) = retry_after_seconds else {
        return Status::resource_exhausted(message);
    };
    let mut status = Status::with_error_details(
        Code::ResourceExhausted,
        message,
        ErrorDetails::with_retry_info(Some(Duration::from_secs(seconds.into()))),
    );
    status.metadata_mut().insert(
        crate::metadata::RETRY_AFTER,
        tonic::metadata::MetadataValue::from(seconds),
    );
    status
}

/// One field a request got wrong, as a client reads it from a status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldViolation {
    pub field: String,
    pub description: String,
}

/// The field violations a status carries (none when it has no `BadRequest`).
pub fn field_violations(status: &Status) -> Vec<FieldViolation> {
    status
        .get_details_bad_request()
        .map(|bad| {
            bad.field_violations
                .into_iter()
                .map(|v| FieldViolation {
                    field: v.field,
                    description: v.description,
                })
                .collect()
        })
        .unwrap_or_default()
}

/// How long a status asks its caller to wait before trying again: its
/// `RetryInfo`, else its `retry-after` metadata.
pub fn retry_delay(status: &Status) -> Option<Duration> {
    if let Some(delay) = status
        .get_details_retry_info()
        .and_then(|info| info.retry_delay)
    {
        return Some(delay);
    }
    status
        .metadata()
        .get(crate::metadata::RETRY_AFTER)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.trim().parse().ok())
        .map(Duration::from_secs)
}

/// `("inputs[0].path", "must be relative")` from
/// `"inputs[0].path: must be relative"`; none when the text before the first
/// `": "` is not a field path (e.g. `"invalid job template: ..."`).
fn split_field(message: &str) -> Option<(&str, &str)> {
    let (field, description) = message.split_once(": ")?;
    let starts_as_name = field.starts_with(|c: char| c.is_ascii_alphabetic());
    let path_chars = field
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '[' | ']'));
    (starts_as_name && path_chars && !description.is_empty()).then_some((field, description))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_leading_field_path_becomes_a_violation() {
        let status = invalid_argument("inputs[0].path: \"../x\" must be relative, without '..'");
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_eq!(
            status.message(),
            "inputs[0].path: \"../x\" must be relative, without '..'"
        );
        assert_eq!(
            field_violations(&status),
            vec![FieldViolation {
                field: "inputs[0].path".to_owned(),
                description: "\"../x\" must be relative, without '..'".to_owned(),
            }]
        );
    }

    #[test]
    fn prose_before_a_colon_is_not_a_field() {
        let status = invalid_argument("invalid job template: missing specificationVersion");
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(field_violations(&status).is_empty());
        assert!(field_violations(&invalid_argument("no colon at all")).is_empty());
    }

    #[test]
    fn resource_exhausted_says_when_to_retry_both_ways() {
        let status = resource_exhausted("refused by admission control: busy", Some(7));
        assert_eq!(status.code(), Code::ResourceExhausted);
        assert_eq!(retry_delay(&status), Some(Duration::from_secs(7)));
        let header = status.metadata().get(crate::metadata::RETRY_AFTER);
        assert_eq!(header.and_then(|v| v.to_str().ok()), Some("7"));
        // The details survive the trip through HTTP headers a client makes.
        let sent = status.into_http::<()>();
        let received = Status::from_header_map(sent.headers()).expect("a status");
        assert_eq!(retry_delay(&received), Some(Duration::from_secs(7)));
    }

    #[test]
    fn a_quota_without_a_delay_has_no_retry_info() {
        let status = resource_exhausted("quota max-jobs: 10 jobs", None);
        assert_eq!(retry_delay(&status), None);
        assert!(status.details().is_empty());
    }
}
