//! Tracing and OpenTelemetry.
//!
//! [`init`] installs a `tracing` subscriber: logs to stderr (text or JSON) and, when
//! `OTEL_EXPORTER_OTLP_ENDPOINT` is set, spans exported over OTLP/HTTP (the standard
//! `OTEL_*` variables configure the exporter). The returned guard flushes on drop.
//!
//! Trace context crosses NATS as W3C `traceparent`/`tracestate` headers: [`inject`] on
//! every publish, [`extract`] on every consume. Span attributes follow the OpenTelemetry
//! messaging conventions plus `regua.*` keys; PII (CPF, phone, e-mail) never goes into
//! a span or a log line.

use async_nats::HeaderMap;
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, Registry};

use crate::PlatformError;
use crate::config::{Config, LogFormat};

/// Flushes and shuts the OpenTelemetry provider down when dropped.
#[derive(Debug)]
pub struct TelemetryGuard {
    provider: Option<SdkTracerProvider>,
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Some(Err(e)) = self.provider.take().map(|p| p.shutdown()) {
            tracing::warn!(error = %e, "opentelemetry shutdown failed");
        }
    }
}

/// Installs the global subscriber for `service`.
pub fn init(service: &'static str, config: &Config) -> Result<TelemetryGuard, PlatformError> {
    crate::tls::init();
    let filter = EnvFilter::try_new(&config.log)
        .map_err(|e| PlatformError::Telemetry(format!("invalid REGUA_LOG: {e}")))?;
    let fmt = match config.log_format {
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .with_writer(std::io::stderr)
            .boxed(),
    };
    let provider = if config.otlp_export {
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .build()
            .map_err(|e| PlatformError::Telemetry(e.to_string()))?;
        Some(provider_with(service, |b| b.with_batch_exporter(exporter)))
    } else {
        None
    };
    let otel = provider.as_ref().map(otel_layer);
    Registry::default()
        .with(filter)
        .with(fmt)
        .with(otel)
        .try_init()
        .map_err(|e| PlatformError::Telemetry(e.to_string()))?;
    Ok(TelemetryGuard { provider })
}

/// A tracer provider named for `service`; `configure` adds exporters (tests add an
/// in-memory one).
pub fn provider_with(
    service: &'static str,
    configure: impl FnOnce(
        opentelemetry_sdk::trace::TracerProviderBuilder,
    ) -> opentelemetry_sdk::trace::TracerProviderBuilder,
) -> SdkTracerProvider {
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name(service)
        .build();
    configure(SdkTracerProvider::builder().with_resource(resource)).build()
}

/// The tracing layer that turns spans into OpenTelemetry spans of `provider`.
pub fn otel_layer<S>(provider: &SdkTracerProvider) -> impl Layer<S> + use<S>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    tracing_opentelemetry::layer().with_tracer(provider.tracer("regua"))
}

struct HeaderInjector<'a>(&'a mut HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        self.0.insert(key, value.as_str());
    }
}

struct HeaderExtractor<'a>(&'a HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(|v| v.as_str())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.iter().map(|(k, _)| k.as_ref()).collect()
    }
}

/// Writes the trace context of `span` into NATS headers.
pub fn inject(span: &Span, headers: &mut HeaderMap) {
    let cx = span.context();
    TraceContextPropagator::new().inject_context(&cx, &mut HeaderInjector(headers));
}

/// Reads a trace context from NATS headers (an empty context when there is none).
pub fn extract(headers: Option<&HeaderMap>) -> opentelemetry::Context {
    match headers {
        Some(h) => TraceContextPropagator::new().extract(&HeaderExtractor(h)),
        None => opentelemetry::Context::new(),
    }
}

/// Makes `span` a child of the context carried in `headers`, if any.
pub fn continue_from(span: &Span, headers: Option<&HeaderMap>) {
    let cx = extract(headers);
    if opentelemetry::trace::TraceContextExt::span(&cx)
        .span_context()
        .is_valid()
    {
        // Fails only when the span is disabled; then there is nothing to parent.
        span.set_parent(cx).ok();
    }
}

/// The W3C `traceparent` of `span`, for carrying context through a database row.
pub fn traceparent(span: &Span) -> Option<String> {
    let mut h = HeaderMap::new();
    inject(span, &mut h);
    h.get("traceparent").map(|v| v.as_str().to_owned())
}

/// The trace id (32 hex digits) of `span`, when it is recorded.
pub fn trace_id(span: &Span) -> Option<String> {
    traceparent(span).as_deref().and_then(trace_id_of)
}

/// The trace id of a W3C `traceparent` (`00-<trace id>-<span id>-<flags>`).
pub fn trace_id_of(traceparent: &str) -> Option<String> {
    traceparent.split('-').nth(1).map(str::to_owned)
}

/// Makes `span` a child of a stored `traceparent`.
pub fn continue_from_traceparent(span: &Span, traceparent: &str) {
    let mut h = HeaderMap::new();
    h.insert("traceparent", traceparent);
    continue_from(span, Some(&h));
}

/// Adds a span link from `span` to the span a stored `traceparent` names: a new trace
/// that points back at the one that caused it (a step firing days after planning).
pub fn link_to_traceparent(span: &Span, traceparent: &str) {
    let mut h = HeaderMap::new();
    h.insert("traceparent", traceparent);
    let cx = extract(Some(&h));
    let linked = opentelemetry::trace::TraceContextExt::span(&cx)
        .span_context()
        .clone();
    if linked.is_valid() {
        span.add_link(linked);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extract_reads_what_inject_wrote() {
        let mut h = HeaderMap::new();
        h.insert(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        );
        let cx = extract(Some(&h));
        let span = opentelemetry::trace::TraceContextExt::span(&cx);
        assert_eq!(
            span.span_context().trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert!(
            !opentelemetry::trace::TraceContextExt::span(&extract(None))
                .span_context()
                .is_valid()
        );
    }
}
