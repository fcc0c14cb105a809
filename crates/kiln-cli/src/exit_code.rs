//! The exit codes scripts can rely on, decided here and nowhere else.

use kiln_proto::v1::JobState;
use tonic::Code;

use crate::error::CliError;

pub const OK: u8 = 0;
/// Anything not listed below: a local file, a bad flag value, a bug.
pub const FAILURE: u8 = 1;
/// The command line itself is wrong (clap exits with it before we run).
pub const USAGE: u8 = 2;
pub const JOB_FAILED: u8 = 3;
pub const JOB_CANCELLED: u8 = 4;
/// The farm refused the request: permission, quota, invalid argument, not found.
pub const REFUSED: u8 = 5;
/// The farm could not be reached or could not answer now.
pub const UNAVAILABLE: u8 = 6;
/// Ctrl-C (128 + SIGINT, as shells report it).
pub const INTERRUPTED: u8 = 130;

/// The table `kiln --help` ends with.
pub const HELP: &str = "\
Exit codes:
  0    success
  1    error (local files, bad values, anything not below)
  2    usage: the command line is wrong
  3    the job failed
  4    the job was cancelled
  5    refused by the farm: permission, quota, invalid argument, not found
  6    the farm is unavailable or unreachable
  130  interrupted (Ctrl-C)

With --output json, stdout holds only JSON (JSON Lines for commands that follow a job) and an
error is one JSON object on stderr: {\"error\": {\"code\": ..., \"message\": ..., \"exit_code\": ...}}.";

/// The exit code for a call the farm answered with `code`.
pub fn for_status(code: Code) -> u8 {
    match code {
        Code::Ok => OK,
        Code::InvalidArgument
        | Code::NotFound
        | Code::AlreadyExists
        | Code::PermissionDenied
        | Code::Unauthenticated
        | Code::ResourceExhausted
        | Code::FailedPrecondition
        | Code::OutOfRange => REFUSED,
        Code::Unavailable | Code::DeadlineExceeded => UNAVAILABLE,
        Code::Cancelled
        | Code::Unknown
        | Code::Aborted
        | Code::Unimplemented
        | Code::Internal
        | Code::DataLoss => FAILURE,
    }
}

/// The exit code for a job that ended in `state`.
pub fn for_job_state(state: JobState) -> u8 {
    match state {
        JobState::Succeeded => OK,
        JobState::Cancelled => JOB_CANCELLED,
        JobState::Failed => JOB_FAILED,
        // Not final: whoever asked did not wait for the end.
        JobState::Unspecified | JobState::Pending | JobState::Running | JobState::Paused => OK,
    }
}

/// The exit code a command that failed with `err` ends with.
pub fn for_error(err: &CliError) -> u8 {
    match err {
        CliError::Rpc { status, .. } => for_status(status.code()),
        CliError::Asset(kiln_asset_client::AssetClientError::Status(status)) => {
            for_status(status.code())
        }
        CliError::JobEnded { state, .. } => match for_job_state(*state) {
            OK => FAILURE,
            code => code,
        },
        CliError::NoGateway | CliError::Unreachable { .. } | CliError::WatchLost { .. } => {
            UNAVAILABLE
        }
        CliError::Interrupted => INTERRUPTED,
        _ => FAILURE,
    }
}

/// A stable snake_case name for `err`, the `code` of JSON errors: gRPC's
/// code names (as the REST API uses them) for the farm's answers.
pub fn code_name(err: &CliError) -> &'static str {
    match err {
        CliError::Rpc { status, .. } => status_name(status.code()),
        CliError::Asset(kiln_asset_client::AssetClientError::Status(status)) => {
            status_name(status.code())
        }
        CliError::JobEnded { state, .. } => match state {
            JobState::Cancelled => "job_cancelled",
            _ => "job_failed",
        },
        CliError::NoGateway => "no_gateway",
        CliError::Unreachable { .. } => "unreachable",
        CliError::WatchLost { .. } => "watch_lost",
        CliError::Interrupted => "interrupted",
        CliError::NoProfile(_) => "no_profile",
        CliError::Io { .. } => "io",
        _ => "error",
    }
}

fn status_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "ok",
        Code::Cancelled => "cancelled",
        Code::Unknown => "unknown",
        Code::InvalidArgument => "invalid_argument",
        Code::DeadlineExceeded => "deadline_exceeded",
        Code::NotFound => "not_found",
        Code::AlreadyExists => "already_exists",
        Code::PermissionDenied => "permission_denied",
        Code::ResourceExhausted => "resource_exhausted",
        Code::FailedPrecondition => "failed_precondition",
        Code::Aborted => "aborted",
        Code::OutOfRange => "out_of_range",
        Code::Unimplemented => "unimplemented",
        Code::Internal => "internal",
        Code::Unavailable => "unavailable",
        Code::DataLoss => "data_loss",
        Code::Unauthenticated => "unauthenticated",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rpc(code: Code) -> CliError {
        CliError::Rpc {
            action: "submitting the job",
            status: tonic::Status::new(code, "no"),
        }
    }

    #[test]
    fn refusals_unavailability_and_the_rest_are_told_apart() {
        for code in [
            Code::InvalidArgument,
            Code::NotFound,
            Code::PermissionDenied,
            Code::Unauthenticated,
            Code::ResourceExhausted,
        ] {
            assert_eq!(for_error(&rpc(code)), REFUSED, "{code:?}");
        }
        assert_eq!(for_error(&rpc(Code::Unavailable)), UNAVAILABLE);
        assert_eq!(for_error(&rpc(Code::DeadlineExceeded)), UNAVAILABLE);
        assert_eq!(for_error(&rpc(Code::Internal)), FAILURE);
        assert_eq!(code_name(&rpc(Code::InvalidArgument)), "invalid_argument");
        assert_eq!(code_name(&rpc(Code::PermissionDenied)), "permission_denied");
    }

    #[test]
    fn a_job_ending_badly_has_its_own_codes() {
        let ended = |state| CliError::JobEnded {
            id: "j".to_owned(),
            state,
            message: String::new(),
        };
        assert_eq!(for_error(&ended(JobState::Failed)), JOB_FAILED);
        assert_eq!(for_error(&ended(JobState::Cancelled)), JOB_CANCELLED);
        assert_eq!(code_name(&ended(JobState::Cancelled)), "job_cancelled");
        assert_eq!(for_job_state(JobState::Succeeded), OK);
    }

    #[test]
    fn no_farm_and_ctrl_c() {
        assert_eq!(for_error(&CliError::NoGateway), UNAVAILABLE);
        let unreachable = CliError::Unreachable {
            url: "http://127.0.0.1:1".to_owned(),
            reason: "refused".to_owned(),
        };
        assert_eq!(for_error(&unreachable), UNAVAILABLE);
        assert_eq!(for_error(&CliError::Interrupted), INTERRUPTED);
        assert_eq!(for_error(&CliError::BadFps(-1.0)), FAILURE);
    }

    #[test]
    fn the_help_lists_every_code() {
        for code in [
            OK,
            FAILURE,
            USAGE,
            JOB_FAILED,
            JOB_CANCELLED,
            REFUSED,
            UNAVAILABLE,
            INTERRUPTED,
        ] {
            assert!(HELP.contains(&format!("\n  {code} ")), "{code} in {HELP}");
        }
    }
}
