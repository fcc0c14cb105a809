//! How the mesh treats each gRPC method it carries: whether a call may be
//! sent again to another replica, and whether a healthy replica answers it
//! promptly (so that a replica which does not is judged slow).
//!
//! Only reads and lookups are idempotent here. A submission, a control or
//! an upload is never sent twice by the mesh: the asset client resumes an
//! interrupted upload itself, from what the service holds.

use std::time::Duration;

/// The mesh's view of one method.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MethodPolicy {
    /// Safe to send again, to another replica, when a replica did not answer.
    pub idempotent: bool,
    /// A healthy replica starts answering (sends the response head) within
    /// [`PROMPT_ANSWER`]; one that does not is counted as failing.
    pub prompt: bool,
}

/// How long a healthy replica takes, at most, to start answering a prompt
/// method: far above a lookup's milliseconds, well below a stuck process.
pub const PROMPT_ANSWER: Duration = Duration::from_secs(2);

const READ: MethodPolicy = MethodPolicy {
    idempotent: true,
    prompt: true,
};
/// A read whose answer may take a while (a long list, a stream's head
/// after a replay).
const SLOW_READ: MethodPolicy = MethodPolicy {
    idempotent: true,
    prompt: false,
};
const WRITE: MethodPolicy = MethodPolicy {
    idempotent: false,
    prompt: false,
};

/// Every method the mesh knows; any other is treated as a write.
const METHODS: &[(&str, MethodPolicy)] = &[
    ("/kiln.v1.AssetService/Upload", WRITE),
    ("/kiln.v1.AssetService/Download", READ),
    ("/kiln.v1.AssetService/Stat", READ),
    ("/kiln.v1.AssetService/FindMissing", SLOW_READ),
    ("/kiln.v1.AssetService/UploadOffset", READ),
    ("/kiln.v1.AssetService/PresignDownload", READ),
    ("/kiln.v1.AssetReferences/ListReferencedDigests", SLOW_READ),
    ("/kiln.v1.JobService/SubmitJob", WRITE),
    ("/kiln.v1.JobService/GetJob", READ),
    ("/kiln.v1.JobService/ListJobs", READ),
    ("/kiln.v1.JobService/CancelJob", WRITE),
    ("/kiln.v1.JobService/WatchJob", SLOW_READ),
    ("/kiln.v1.JobService/WatchFarm", SLOW_READ),
    ("/kiln.v1.JobService/WatchTaskLog", SLOW_READ),
    ("/kiln.v1.JobService/GetTaskLog", READ),
    ("/kiln.v1.JobService/ListOutputs", READ),
    ("/kiln.v1.JobService/ListTasks", READ),
    ("/kiln.v1.JobService/PauseJob", WRITE),
    ("/kiln.v1.JobService/ResumeJob", WRITE),
    ("/kiln.v1.JobService/RetryJob", WRITE),
    ("/kiln.v1.JobService/SetJobPriority", WRITE),
    ("/kiln.v1.JobService/ClearBlocklist", WRITE),
    ("/grpc.health.v1.Health/Check", READ),
];

/// The policy of the method at `path` (`/package.Service/Method`).
pub fn policy(path: &str) -> MethodPolicy {
    METHODS
        .iter()
        .find(|(known, _)| *known == path)
        .map_or(WRITE, |(_, policy)| *policy)
}

/// `/package.Service/Method` split into the service and the method.
pub fn split_path(path: &str) -> Option<(&str, &str)> {
    let (service, method) = path.strip_prefix('/')?.split_once('/')?;
    (!service.is_empty() && !method.is_empty() && !method.contains('/'))
        .then_some((service, method))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_are_retried_and_writes_never() {
        assert!(policy("/kiln.v1.AssetService/Stat").idempotent);
        assert!(policy("/kiln.v1.JobService/GetJob").idempotent);
        assert!(!policy("/kiln.v1.JobService/SubmitJob").idempotent);
        assert!(!policy("/kiln.v1.AssetService/Upload").idempotent);
        assert!(!policy("/kiln.v1.Unknown/Anything").idempotent);
    }

    #[test]
    fn a_path_splits_into_service_and_method() {
        assert_eq!(
            split_path("/kiln.v1.JobService/GetJob"),
            Some(("kiln.v1.JobService", "GetJob"))
        );
        assert_eq!(split_path("/nothing"), None);
        assert_eq!(split_path("//GetJob"), None);
        assert_eq!(split_path("/a/b/c"), None);
    }
}
