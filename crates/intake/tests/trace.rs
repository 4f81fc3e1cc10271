//! One trace from an HTTP POST through its NATS publish, intake's processing and the
//! domain event, asserted with an in-memory OpenTelemetry exporter. Alone in its binary
//! because it installs the global subscriber.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use common::Harness;
use opentelemetry::trace::SpanId;
use regua_testkit::invoice;
use regua_testkit::trace::{self, attr, find};
use sqlx::PgPool;

#[sqlx::test(migrations = false)]
async fn an_http_post_its_publish_processing_and_event_form_one_trace(pool: PgPool) {
    let (exporter, provider) = trace::capture();

    let h = Harness::start(pool).await;
    let key = h.tenant("acme").await;
    let body = invoice("NF-T", 42);
    let r = h
        .http
        .post(format!("{}/v1/tenants/acme/invoices", h.base))
        .bearer_auth(&key)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    h.events("regua.v1.evt.acme.invoice.opened", 1).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    provider.force_flush().unwrap();
    let spans = exporter.get_finished_spans().unwrap();

    let http = find(&spans, "POST /v1/tenants/{tenant}/invoices");
    let publish = find(&spans, "send regua.v1.in.acme.invoice.upsert");
    let process = find(&spans, "process regua.v1.in.acme.invoice.upsert");
    let event = find(&spans, "send regua.v1.evt.acme.invoice.opened");
    let trace = http.span_context.trace_id();
    for s in [publish, process, event] {
        assert_eq!(
            s.span_context.trace_id(),
            trace,
            "{} is in another trace",
            s.name
        );
    }
    assert_eq!(http.parent_span_id, SpanId::INVALID);
    assert_eq!(publish.parent_span_id, http.span_context.span_id());
    assert_eq!(process.parent_span_id, publish.span_context.span_id());
    assert_eq!(event.parent_span_id, process.span_context.span_id());

    assert_eq!(
        attr(http, "http.response.status_code").as_deref(),
        Some("202")
    );
    assert_eq!(attr(http, "regua.tenant").as_deref(), Some("acme"));
    for (s, op) in [(publish, "send"), (process, "process"), (event, "send")] {
        assert_eq!(attr(s, "messaging.system").as_deref(), Some("nats"));
        assert_eq!(attr(s, "messaging.operation.type").as_deref(), Some(op));
        assert!(attr(s, "messaging.destination.name").is_some());
        assert!(attr(s, "messaging.message.id").is_some());
    }
    assert_eq!(attr(process, "regua.tenant").as_deref(), Some("acme"));
    assert_eq!(attr(process, "regua.invoice_id").as_deref(), Some("NF-T"));
    assert_eq!(attr(process, "regua.outcome").as_deref(), Some("accepted"));
    assert_eq!(
        attr(process, "messaging.message.id"),
        attr(publish, "messaging.message.id")
    );

    // No PII in any span of the whole run.
    let pii = trace::pii_of(&body);
    trace::assert_no_pii(&spans, &pii);
}
