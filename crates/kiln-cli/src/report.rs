//! How a failed command tells its user: one readable line with its causes
//! (never a backtrace), or with `--output json` one JSON object on stderr.

use std::io::Write as _;

use kiln_proto::status::{FieldViolation, field_violations, retry_delay};
use serde::Serialize;

use crate::error::CliError;
use crate::{exit_code, output};

#[derive(Debug, Serialize)]
struct ErrorDocument<'a> {
    error: ErrorBody<'a>,
}

#[derive(Debug, Serialize)]
struct ErrorBody<'a> {
    code: &'a str,
    message: String,
    exit_code: u8,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    field_violations: Vec<Violation>,
    #[serde(skip_serializing_if = "Option::is_none")]
    retry_after_seconds: Option<u64>,
}

#[derive(Debug, Serialize)]
struct Violation {
    field: String,
    description: String,
}

/// A command line clap refused, as JSON on stderr.
pub fn usage(message: &str) {
    let document = ErrorDocument {
        error: ErrorBody {
            code: "usage",
            message: message.trim().to_owned(),
            exit_code: exit_code::USAGE,
            field_violations: Vec::new(),
            retry_after_seconds: None,
        },
    };
    if let Ok(line) = serde_json::to_string(&document) {
        let _ = writeln!(std::io::stderr(), "{line}");
    }
}

pub fn error(err: &CliError) {
    let status = match err {
        CliError::Rpc { status, .. } => Some(status),
        CliError::Asset(kiln_asset_client::AssetClientError::Status(status)) => Some(status),
        _ => None,
    };
    let violations: Vec<FieldViolation> = status.map(field_violations).unwrap_or_default();
    let retry = status.and_then(retry_delay);
    let mut stderr = std::io::stderr().lock();
    if output::is_json() {
        let document = ErrorDocument {
            error: ErrorBody {
                code: exit_code::code_name(err),
                message: err.to_string(),
                exit_code: exit_code::for_error(err),
                field_violations: violations
                    .into_iter()
                    .map(|v| Violation {
                        field: v.field,
                        description: v.description,
                    })
                    .collect(),
                retry_after_seconds: retry.map(|d| d.as_secs()),
            },
        };
        if let Ok(line) = serde_json::to_string(&document) {
            let _ = writeln!(stderr, "{line}");
        }
        return;
    }
    let _ = writeln!(stderr, "error: {err}");
    for violation in &violations {
        let _ = writeln!(
            stderr,
            "  field {}: {}",
            violation.field, violation.description
        );
    }
    if let Some(delay) = retry {
        let _ = writeln!(stderr, "  try again in {} s", delay.as_secs().max(1));
    }
}
