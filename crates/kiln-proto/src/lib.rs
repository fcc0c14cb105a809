//! Kiln's gRPC contract, generated from `proto/kiln/v1`.
//!
//! Every message also has a proto3-JSON mapping (through pbjson), which the
//! gateway's REST API uses so that REST and gRPC cannot drift apart.

// Generated code: prost boxes no oneof variant, and events carry a whole Job.
#[allow(clippy::large_enum_variant)]
pub mod v1 {
    tonic::include_proto!("kiln.v1");
    include!(concat!(env!("OUT_DIR"), "/kiln.v1.serde.rs"));
}

/// Encoded `FileDescriptorSet` of every Kiln proto, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("kiln_descriptor");

pub mod chunk_frames;
pub mod codec;
pub mod status;

/// gRPC metadata keys Kiln's services agree on, defined once here.
pub mod metadata {
    /// The job owner a call is made for: set by the gateway from the caller's
    /// token. The scheduler and the assets service trust it only on a call
    /// that also carries the farm's [`SERVICE_TOKEN`].
    pub const OWNER: &str = "kiln-owner";
    /// The role of that owner (`viewer`, `submitter`, `admin`), trusted as
    /// [`OWNER`] is.
    pub const ROLE: &str = "kiln-role";
    /// The secret a worker presents to join the scheduler and to use the
    /// assets service.
    pub const JOIN_TOKEN: &str = "kiln-join-token";
    /// Seconds a caller refused for load (UNAVAILABLE, RESOURCE_EXHAUSTED)
    /// should wait before trying again; REST carries it as `Retry-After`.
    pub const RETRY_AFTER: &str = "retry-after";
    /// The farm-internal secret the gateway, the scheduler and the assets
    /// service present to each other: only a call carrying it may name an
    /// owner or reach a job API.
    pub const SERVICE_TOKEN: &str = "kiln-service-token";
}
