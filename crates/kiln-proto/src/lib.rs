//! Kiln's gRPC contract, generated from `proto/kiln/v1`.
//!
//! Every message also has a proto3-JSON mapping (through pbjson), which the
//! gateway's REST API uses so that REST and gRPC cannot drift apart.

pub mod v1 {
    tonic::include_proto!("kiln.v1");
    include!(concat!(env!("OUT_DIR"), "/kiln.v1.serde.rs"));
}

/// Encoded `FileDescriptorSet` of every Kiln proto, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("kiln_descriptor");

/// gRPC metadata keys Kiln's services agree on, defined once here.
pub mod metadata {
    /// The job owner a call is made for: set by the gateway from the caller's
    /// token; the scheduler, which is internal, trusts it.
    pub const OWNER: &str = "kiln-owner";
    /// The secret a worker presents to join the scheduler.
    pub const JOIN_TOKEN: &str = "kiln-join-token";
    /// Seconds a caller refused for load (UNAVAILABLE, RESOURCE_EXHAUSTED)
    /// should wait before trying again; REST carries it as `Retry-After`.
    pub const RETRY_AFTER: &str = "retry-after";
}
