//! Structured logging and trace export for every Kiln binary.
//!
//! Logs always go to stderr through `tracing`. When an OTLP endpoint is
//! configured, spans are also exported over OTLP/gRPC, and the W3C trace
//! context travels between services in gRPC metadata (see [`propagation`]).

pub mod propagation;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::{EnvFilter, layer::SubscriberExt, util::SubscriberInitExt};

#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("cannot build the otlp exporter: {0}")]
    Exporter(#[from] opentelemetry_otlp::ExporterBuildError),
    #[error("cannot install the tracing subscriber: {0}")]
    Subscriber(#[from] tracing_subscriber::util::TryInitError),
}

/// Command-line options every service shares for logs and traces.
#[derive(Debug, Clone, clap::Args)]
pub struct TelemetryArgs {
    /// OTLP/gRPC endpoint to export traces to, e.g. http://127.0.0.1:4317; traces stay local when unset
    #[arg(long, env = "KILN_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,
    /// Log filter in tracing's EnvFilter syntax
    #[arg(long, env = "KILN_LOG", default_value = "info")]
    pub log: String,
    /// Print logs as JSON lines instead of text
    #[arg(long, env = "KILN_LOG_JSON", default_value_t = false)]
    pub log_json: bool,
}

/// Flushes exported spans when dropped; keep it alive for the life of `main`.
pub struct TelemetryGuard {
    provider: Option<SdkTracerProvider>,
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take() {
            let _ = provider.shutdown();
        }
    }
}

/// Installs the global subscriber for `service` (e.g. "kiln-scheduler").
pub fn init(service: &'static str, args: &TelemetryArgs) -> Result<TelemetryGuard, TelemetryError> {
    let filter = EnvFilter::try_new(&args.log).unwrap_or_else(|_| EnvFilter::new("info"));
    let provider = match &args.otlp_endpoint {
        Some(endpoint) => Some(otlp_provider(service, endpoint)?),
        None => None,
    };
    let otel_layer = provider
        .as_ref()
        .map(|p| tracing_opentelemetry::layer().with_tracer(p.tracer(service)));
    if provider.is_some() {
        opentelemetry::global::set_text_map_propagator(
            opentelemetry_sdk::propagation::TraceContextPropagator::new(),
        );
    }
    let registry = tracing_subscriber::registry().with(filter).with(otel_layer);
    if args.log_json {
        registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .with_writer(std::io::stderr),
            )
            .try_init()?;
    } else {
        registry
            .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr))
            .try_init()?;
    }
    Ok(TelemetryGuard { provider })
}

fn otlp_provider(
    service: &'static str,
    endpoint: &str,
) -> Result<SdkTracerProvider, TelemetryError> {
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint)
        .build()?;
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name(service)
        .build();
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource)
        .build())
}
