//! W3C trace context carried in gRPC metadata.

use std::collections::HashMap;

use opentelemetry::propagation::{Extractor, Injector};
use opentelemetry::trace::TraceContextExt;
use tracing_opentelemetry::OpenTelemetrySpanExt;

struct MetadataInjector<'a>(&'a mut tonic::metadata::MetadataMap);

impl Injector for MetadataInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        let Ok(key) = tonic::metadata::MetadataKey::from_bytes(key.as_bytes()) else {
            return;
        };
        let Ok(value) = value.parse() else { return };
        self.0.insert(key, value);
    }
}

struct MetadataExtractor<'a>(&'a tonic::metadata::MetadataMap);

impl Extractor for MetadataExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }
    fn keys(&self) -> Vec<&str> {
        self.0
            .keys()
            .filter_map(|k| match k {
                tonic::metadata::KeyRef::Ascii(k) => Some(k.as_str()),
                tonic::metadata::KeyRef::Binary(_) => None,
            })
            .collect()
    }
}

/// Client interceptor: writes the current span's context into outgoing metadata.
pub fn inject_context(
    mut request: tonic::Request<()>,
) -> Result<tonic::Request<()>, tonic::Status> {
    let context = tracing::Span::current().context();
    opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.inject_context(&context, &mut MetadataInjector(request.metadata_mut()))
    });
    Ok(request)
}

/// Makes `span` a child of the trace context found in a request's metadata.
pub fn adopt_remote_parent(span: &tracing::Span, metadata: &tonic::metadata::MetadataMap) {
    let parent = opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.extract(&MetadataExtractor(metadata))
    });
    let _ = span.set_parent(parent);
}

/// Server-side: a span for an incoming gRPC request, parented to the caller's
/// trace, with that trace's id in its `trace_id` field for the logs.
pub fn server_span(request: &http::Request<()>) -> tracing::Span {
    let span = tracing::info_span!(
        "grpc",
        path = %request.uri().path(),
        trace_id = tracing::field::Empty
    );
    let metadata = tonic::metadata::MetadataMap::from_headers(request.headers().clone());
    adopt_remote_parent(&span, &metadata);
    record_trace_id(&span);
    span
}

/// Writes the span's OpenTelemetry trace id into its `trace_id` field (the
/// span must declare it, as `trace_id = tracing::field::Empty`), so every
/// log line inside it names the trace.
pub fn record_trace_id(span: &tracing::Span) {
    let trace_id = span.context().span().span_context().trace_id();
    if trace_id != opentelemetry::trace::TraceId::INVALID {
        span.record("trace_id", tracing::field::display(trace_id));
    }
}

/// The current span's trace context as W3C key/value pairs (`traceparent`,
/// `tracestate`), for carrying a trace through a message or a database row
/// rather than a request's metadata.
pub fn current_context_map() -> HashMap<String, String> {
    let context = tracing::Span::current().context();
    let mut map = HashMap::new();
    opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.inject_context(&context, &mut map)
    });
    map
}

/// Makes `span` a child of a trace context written by [`current_context_map`];
/// an empty map leaves `span` where it is.
pub fn adopt_parent_from_map(span: &tracing::Span, map: &HashMap<String, String>) {
    if map.is_empty() {
        return;
    }
    let parent =
        opentelemetry::global::get_text_map_propagator(|propagator| propagator.extract(map));
    let _ = span.set_parent(parent);
    record_trace_id(span);
}
