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
    /// OTLP/gRPC endpoint to export traces to, e.g. http://127.0.0.1:4317; traces stay local when unset or empty
    #[arg(long, env = "KILN_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,
    /// Log filter in tracing's EnvFilter syntax
    #[arg(long, env = "KILN_LOG", default_value = "info")]
    pub log: String,
    /// Log line format; json lines carry the trace id of the span they were logged in
    #[arg(long, env = "KILN_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines
    Text,
    /// One JSON object per line, with the enclosing spans' fields (including `trace_id`)
    Json,
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
///
/// Spans always get OpenTelemetry trace ids (so logs and propagated
/// contexts carry them); they are exported only with an OTLP endpoint.
pub fn init(service: &'static str, args: &TelemetryArgs) -> Result<TelemetryGuard, TelemetryError> {
    let filter = EnvFilter::try_new(&args.log).unwrap_or_else(|_| EnvFilter::new("info"));
    let provider = tracer_provider(service, args.otlp_endpoint.as_deref())?;
    let otel_layer = tracing_opentelemetry::layer().with_tracer(provider.tracer(service));
    opentelemetry::global::set_text_map_propagator(
        opentelemetry_sdk::propagation::TraceContextPropagator::new(),
    );
    let registry = tracing_subscriber::registry().with(filter).with(otel_layer);
    if args.log_format == LogFormat::Json {
        registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .with_current_span(true)
                    .with_span_list(true)
                    .with_writer(std::io::stderr),
            )
            .try_init()?;
    } else {
        registry
            .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr))
            .try_init()?;
    }
    Ok(TelemetryGuard {
        provider: Some(provider),
    })
}

fn tracer_provider(
    service: &'static str,
    otlp_endpoint: Option<&str>,
) -> Result<SdkTracerProvider, TelemetryError> {
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name(service)
        .build();
    let builder = SdkTracerProvider::builder().with_resource(resource);
    // Empty counts as unset, so a deployment can leave the variable blank.
    let Some(endpoint) = otlp_endpoint.filter(|e| !e.trim().is_empty()) else {
        return Ok(builder.build());
    };
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint)
        .build()?;
    Ok(builder.with_batch_exporter(exporter).build())
}
