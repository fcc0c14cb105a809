use std::net::SocketAddr;

use kiln_discovery::DiscoveryArgs;
use kiln_telemetry::TelemetryArgs;

/// Kiln's gateway: the public gRPC API and REST/JSON under /v1.
#[derive(Debug, clap::Parser)]
#[command(name = "kiln-gateway", version)]
pub struct Config {
    /// Address for the public gRPC API
    #[arg(long, env = "KILN_GRPC_LISTEN", default_value = "127.0.0.1:7070")]
    pub grpc_listen: SocketAddr,
    /// Address for REST/JSON
    #[arg(long, env = "KILN_HTTP_LISTEN", default_value = "127.0.0.1:7080")]
    pub http_listen: SocketAddr,
    /// Largest JSON request body, in bytes
    #[arg(long, env = "KILN_MAX_JSON_BYTES", default_value_t = 1024 * 1024)]
    pub max_json_bytes: usize,
    /// Largest asset upload through REST, in bytes
    #[arg(long, env = "KILN_MAX_UPLOAD_BYTES", default_value_t = 20 * 1024 * 1024 * 1024)]
    pub max_upload_bytes: usize,
    /// Seconds a REST request may take before it is answered with 504 (downloads excepted)
    #[arg(long, env = "KILN_REQUEST_TIMEOUT_SECONDS", default_value_t = 60)]
    pub request_timeout_seconds: u64,
    #[command(flatten)]
    pub ops: kiln_service::OpsArgs,
    #[command(flatten)]
    pub discovery: DiscoveryArgs,
    #[command(flatten)]
    pub telemetry: TelemetryArgs,
}
