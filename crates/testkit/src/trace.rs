//! Span capture for trace tests: an in-memory OpenTelemetry exporter behind the
//! platform's own tracing layer, every log line kept in memory beside it, and the
//! assertions every trace test makes.

use std::sync::{Arc, Mutex, OnceLock};

use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use regua_platform::telemetry;
use tracing_subscriber::layer::SubscriberExt;

use crate::fail;

/// Every log line written since [`capture`], as text.
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Logs {
    type Writer = Logs;

    fn make_writer(&'a self) -> Logs {
        self.clone()
    }
}

static LOGS: OnceLock<Logs> = OnceLock::new();

/// The log lines written so far (at debug, but for HTTP and TLS plumbing).
pub fn logs() -> String {
    let logs = LOGS.get_or_init(Logs::default);
    let bytes = logs.0.lock().unwrap_or_else(|p| p.into_inner()).clone();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// Installs the global subscriber (once per test binary) with an in-memory exporter
/// and an in-memory log writer ([`logs`]).
pub fn capture() -> (InMemorySpanExporter, SdkTracerProvider) {
    let exporter = InMemorySpanExporter::default();
    let provider =
        telemetry::provider_with("regua-test", |b| b.with_simple_exporter(exporter.clone()));
    let writer = LOGS.get_or_init(Logs::default).clone();
    let subscriber = tracing_subscriber::Registry::default()
        .with(tracing_subscriber::EnvFilter::new(
            "debug,h2=info,hyper=info,hyper_util=info,reqwest=info,rustls=info,tower=info,\
             tower_http=info,axum=info,lettre=info",
        ))
        .with(telemetry::otel_layer(&provider))
        .with(
            tracing_subscriber::fmt::layer()
                .with_ansi(false)
                .with_writer(writer),
        );
    if tracing::subscriber::set_global_default(subscriber).is_err() {
        fail("a global subscriber is already installed: keep trace tests alone in their binary");
    }
    (exporter, provider)
}

/// The value of attribute `key` of `span`.
pub fn attr(span: &SpanData, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| kv.value.to_string())
}

/// The first span named `name`; fails listing the names there are.
pub fn find<'a>(spans: &'a [SpanData], name: &str) -> &'a SpanData {
    spans.iter().find(|s| s.name == name).unwrap_or_else(|| {
        fail(&format!(
            "no span {name}; have {:?}",
            spans.iter().map(|s| s.name.to_string()).collect::<Vec<_>>()
        ))
    })
}

/// The personal data of an invoice payload's embedded customer, as spans must never
/// carry it: document, e-mail, and phone with and without its `+`.
pub fn pii_of(invoice: &serde_json::Value) -> Vec<String> {
    let c = &invoice["customer"];
    let mut out: Vec<String> = ["document", "email", "phone"]
        .iter()
        .filter_map(|k| c[*k].as_str().map(str::to_owned))
        .collect();
    if let Some(p) = c["phone"].as_str().and_then(|p| p.strip_prefix('+')) {
        out.push(p.to_owned());
    }
    out
}

/// Fails if any log line holds one of `pii`.
pub fn assert_no_pii_in_logs(pii: &[String]) {
    for line in logs().lines() {
        if let Some(p) = pii.iter().find(|p| line.contains(p.as_str())) {
            fail(&format!(
                "a log line holds PII ({} chars): {}",
                p.len(),
                line.replace(p.as_str(), "<redacted>")
            ));
        }
    }
}

/// Fails if any attribute of any span or span event holds one of `pii`.
pub fn assert_no_pii(spans: &[SpanData], pii: &[String]) {
    for s in spans {
        let events = s.events.iter().flat_map(|e| e.attributes.iter());
        for kv in s.attributes.iter().chain(events) {
            let v = kv.value.to_string();
            if let Some(p) = pii.iter().find(|p| v.contains(p.as_str())) {
                fail(&format!(
                    "span {} attribute {} holds PII ({} chars)",
                    s.name,
                    kv.key,
                    p.len()
                ));
            }
        }
    }
}
