use std::net::SocketAddr;

use kiln_discovery::DiscoveryArgs;
use kiln_telemetry::TelemetryArgs;

/// Kiln's gateway: the public gRPC API and REST/JSON under /v1, behind bearer tokens.
#[derive(Debug, clap::Parser)]
#[command(name = "kiln-gateway", version)]
pub struct Config {
    /// Address for the public gRPC API
    #[arg(long, env = "KILN_GRPC_LISTEN", default_value = "127.0.0.1:7070")]
    pub grpc_listen: SocketAddr,
    /// Address for REST/JSON
    #[arg(long, env = "KILN_HTTP_LISTEN", default_value = "127.0.0.1:7080")]
    pub http_listen: SocketAddr,
    /// Postgres connection URL; the gateway keeps its tokens in schema `gateway`
    #[arg(long, env = "KILN_DATABASE_URL")]
    pub database_url: String,
    /// Most Postgres connections the gateway holds
    #[arg(long, env = "KILN_DATABASE_MAX_CONNECTIONS", default_value_t = 8)]
    pub database_max_connections: u32,
    /// An admin token (named "admin") to create at start-up, replacing the one an earlier start made; pass it by environment, not on the command line
    #[arg(long, env = "KILN_BOOTSTRAP_ADMIN_TOKEN", hide_env_values = true)]
    pub bootstrap_admin_token: Option<String>,
    /// Farm-internal secret presented to the scheduler and the assets service (metadata kiln-service-token), which trust the user a call names only with it; required. `kiln dev` and the deploy scripts generate it
    #[arg(long, env = "KILN_SERVICE_TOKEN", hide_env_values = true)]
    pub service_token: String,
    #[command(flatten)]
    pub limits: LimitArgs,
    #[command(flatten)]
    pub mesh: kiln_mesh::MeshArgs,
    #[command(flatten)]
    pub ops: kiln_service::OpsArgs,
    #[command(flatten)]
    pub tls: kiln_tls::TlsArgs,
    #[command(flatten)]
    pub discovery: DiscoveryArgs,
    #[command(flatten)]
    pub telemetry: TelemetryArgs,
}

/// Limits on what one request, and one token, may ask of the gateway.
#[derive(Debug, Clone, clap::Args)]
pub struct LimitArgs {
    /// Requests per second each token may make on average (REST and gRPC together)
    #[arg(long, env = "KILN_RATE_LIMIT_PER_SECOND", default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..))]
    pub rate_limit_per_second: u32,
    /// Requests a token may make in a burst above its average rate
    #[arg(long, env = "KILN_RATE_LIMIT_BURST", default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..))]
    pub rate_limit_burst: u32,
    /// Largest JSON request body, in bytes (413 above it)
    #[arg(long, env = "KILN_MAX_JSON_BYTES", default_value_t = 1024 * 1024)]
    pub max_json_bytes: usize,
    /// Largest asset upload through REST, in bytes (413 above it)
    #[arg(long, env = "KILN_MAX_UPLOAD_BYTES", default_value_t = 20 * 1024 * 1024 * 1024)]
    pub max_upload_bytes: usize,
    /// Largest gRPC message, in bytes
    #[arg(long, env = "KILN_MAX_GRPC_MESSAGE_BYTES", default_value_t = 8 * 1024 * 1024)]
    pub max_grpc_message_bytes: usize,
    /// Most bytes of request headers (names and values) a request may carry (431 above it)
    #[arg(long, env = "KILN_MAX_HEADER_BYTES", default_value_t = 16 * 1024)]
    pub max_header_bytes: usize,
    /// Requests served at once on each of REST and gRPC; more wait their turn
    #[arg(long, env = "KILN_MAX_CONCURRENT_REQUESTS", default_value_t = 512, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_concurrent_requests: u32,
    /// Requests that may wait their turn on each of REST and gRPC; beyond that the gateway sheds load: 503 (UNAVAILABLE) with Retry-After
    #[arg(long, env = "KILN_MAX_QUEUED_REQUESTS", default_value_t = 512)]
    pub max_queued_requests: u32,
    /// Seconds a request may take before REST answers 504 and gRPC DEADLINE_EXCEEDED (streams excepted)
    #[arg(long, env = "KILN_REQUEST_TIMEOUT_SECONDS", default_value_t = 60)]
    pub request_timeout_seconds: u64,
    /// Streams (watches, uploads, downloads) one token may hold open through this gateway (0: no limit)
    #[arg(long, env = "KILN_MAX_STREAMS_PER_TOKEN", default_value_t = 32)]
    pub max_streams_per_token: usize,
    /// Lookups of tokens this gateway does not know that one client address may cause per second, before any reaches Postgres
    #[arg(long, env = "KILN_MAX_TOKEN_LOOKUPS_PER_PEER", default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_token_lookups_per_peer: u32,
    /// Such lookups one client address may cause in a burst
    #[arg(long, env = "KILN_TOKEN_LOOKUP_BURST", default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..))]
    pub token_lookup_burst: u32,
    /// Token lookups in Postgres at once, over all clients (the rest of the pool stays for the API)
    #[arg(long, env = "KILN_MAX_CONCURRENT_TOKEN_LOOKUPS", default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_concurrent_token_lookups: u32,
}
