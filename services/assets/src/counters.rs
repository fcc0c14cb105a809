//! The counters the assets service records.

/// Bytes of uploads received (before deduplication).
pub const BYTES_RECEIVED: &str = "asset_bytes_received_total";
/// Bytes of downloads sent.
pub const BYTES_SENT: &str = "asset_bytes_sent_total";
/// S3 requests that failed, by operation.
pub const S3_ERRORS: &str = "asset_s3_errors_total";

/// Downloads whose stored bytes did not match their digest.
pub const CORRUPT: &str = "asset_corrupt_objects_total";
/// Objects the collector deleted.
pub const COLLECTED: &str = "asset_collected_objects_total";
/// Bytes of the objects the collector deleted.
pub const COLLECTED_BYTES: &str = "asset_collected_bytes_total";
/// Collections this replica completed.
pub const COLLECTIONS: &str = "asset_collections_total";

/// Gives each metric its help text, once the metrics recorder is installed.
pub fn describe() {
    metrics::describe_counter!(
        BYTES_RECEIVED,
        metrics::Unit::Bytes,
        "Bytes of uploaded files received"
    );
    metrics::describe_counter!(
        BYTES_SENT,
        metrics::Unit::Bytes,
        "Bytes of files sent to downloaders"
    );
    metrics::describe_counter!(
        CORRUPT,
        "Downloads refused because the stored bytes did not match their digest"
    );
    metrics::describe_counter!(COLLECTED, "Unreferenced objects the collector deleted");
    metrics::describe_counter!(
        COLLECTED_BYTES,
        metrics::Unit::Bytes,
        "Bytes of unreferenced objects the collector deleted"
    );
    metrics::describe_counter!(COLLECTIONS, "Collections this replica completed");
    metrics::describe_counter!(S3_ERRORS, "S3 requests that failed, by operation");
}
