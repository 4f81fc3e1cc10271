//! Traces across the asynchronous hop: an invoice POSTed over HTTP is planned by the
//! scheduler in the same trace; days later (on a test clock) its step fires in a new
//! trace whose span links back to the planning, and the dispatch command's publish
//! belongs to the firing trace, as do the dispatcher's processing, its provider call
//! (to the WhatsApp fake) and the `message.sent` it publishes. The provider's delivery
//! callback starts a trace linked to the firing's; the debtor's payment over HTTP
//! carries the settlement events, and the scheduler cancels the pending steps in that
//! trace; the thank-you fires in a trace linked to the payment; the provider calls are
//! HTTP client spans with the HTTP conventions; the journey timeline names each
//! entry's trace. No span attribute and no log
//! line holds the test customer's CPF, phone or e-mail. Asserted with an in-memory
//! exporter and log writer, alone in its binary because it installs the global
//! subscriber.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::disallowed_methods
)]

use std::sync::Arc;
use std::time::Duration;

use regua::{Platform, Services};
use regua_platform::SystemClock;
use regua_testkit::trace::{self, attr, find};
use regua_testkit::{NatsServer, eventually, invoice};
use serde_json::{Value, json};
use sqlx::PgPool;

mod common;

use common::ADMIN;

#[sqlx::test(migrations = false)]
async fn a_fired_step_links_back_to_the_trace_that_planned_it(pool: PgPool) {
    let (exporter, provider) = trace::capture();

    let server = NatsServer::start().await;
    let fakes = regua_testkit::fakes::FakeProviders::start().await.unwrap();
    let mut config = common::config(&server.url(), &pool);
    fakes.configure(&mut config);
    let platform = Platform::start(&config, Arc::new(SystemClock), Services::ALL)
        .await
        .unwrap();
    let url = format!("http://{}", platform.addr);
    fakes.webhooks_to(&url);
    let http = reqwest::Client::new();
    let tenant = regua_testkit::test_clock_tenant("trc", "2026-12-01T03:00:00Z");
    let key = regua_testkit::create_tenant(&http, &url, ADMIN, &tenant).await;
    let body = invoice("NF-TRACE", 7);
    let r = http
        .post(format!("{url}/v1/tenants/trc/invoices"))
        .bearer_auth(&key)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    eventually("the plan", Duration::from_secs(30), || async {
        let r = http
            .get(format!("{url}/v1/tenants/trc/invoices/NF-TRACE/plan"))
            .bearer_auth(&key)
            .send()
            .await
            .unwrap();
        (r.status() == 200).then_some(())
    })
    .await;
    // Past the first step (D-3 of 2026-12-10 at 10:00 in São Paulo).
    let to = "2026-12-07T14:00:00Z";
    http.post(format!("{url}/v1/tenants/trc/clock:advance"))
        .bearer_auth(&key)
        .json(&json!({ "to": to }))
        .send()
        .await
        .unwrap();
    eventually("the clock", Duration::from_secs(30), || async {
        let c: Value = http
            .get(format!("{url}/v1/tenants/trc/clock"))
            .bearer_auth(&key)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        (c["status"] == "ready" && c["now"] == "2026-12-07T14:00:00Z").then_some(())
    })
    .await;
    eventually("the whatsapp message", Duration::from_secs(30), || async {
        (fakes.meta.sent().len() == 1).then_some(())
    })
    .await;
    // The provider reports it delivered; then the debtor pays over HTTP.
    let timeline_url = format!("{url}/v1/tenants/trc/invoices/NF-TRACE/timeline");
    let timeline_now = || {
        let req = http.get(&timeline_url).bearer_auth(&key);
        async move { req.send().await.unwrap().json::<Value>().await.unwrap() }
    };
    let has = |t: &Value, kind: &str| {
        t["entries"]
            .as_array()
            .is_some_and(|e| e.iter().any(|e| e["kind"] == kind))
    };
    eventually("the delivery status", Duration::from_secs(30), || async {
        has(&timeline_now().await, "message.delivered").then_some(())
    })
    .await;
    let paid = http
        .post(format!("{url}/v1/tenants/trc/payments"))
        .bearer_auth(&key)
        .json(
            &json!({"payment_id": "PAY-TRACE", "invoice_id": "NF-TRACE", "amount_cents": 15_990,
                      "currency": "BRL", "paid_at": "2026-12-07T12:00:00-03:00", "method": "pix"}),
        )
        .send()
        .await
        .unwrap();
    assert!(paid.status().is_success());
    let timeline = eventually("the steps cancelled", Duration::from_secs(30), || async {
        let t = timeline_now().await;
        let cancelled = t["entries"]
            .as_array()
            .is_some_and(|e| e.iter().any(|e| e["state"] == "cancelled"));
        cancelled.then_some(t)
    })
    .await;
    // The thank-you, on the next clock move.
    regua_testkit::advance_clock(&http, &url, "trc", &key, "2026-12-08T14:00:00Z").await;
    eventually("the thank-you", Duration::from_secs(30), || async {
        (fakes.meta.sent().len() == 2).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    provider.force_flush().unwrap();
    let spans = exporter.get_finished_spans().unwrap();

    let post = find(&spans, "POST /v1/tenants/{tenant}/invoices");
    let planned = find(&spans, "process regua.v1.evt.trc.invoice.opened");
    let fired = find(&spans, "fire regua step");
    let command = find(&spans, "send regua.v1.cmd.trc.dispatch.whatsapp");
    let planning_trace = post.span_context.trace_id();
    assert_eq!(
        planned.span_context.trace_id(),
        planning_trace,
        "the scheduler plans in the invoice's trace"
    );
    assert_ne!(
        fired.span_context.trace_id(),
        planning_trace,
        "firing starts a trace of its own"
    );
    let links: Vec<_> = fired.links.iter().map(|l| l.span_context.clone()).collect();
    assert_eq!(links.len(), 1, "one link, to the planning");
    assert_eq!(links[0].trace_id(), planning_trace);
    assert_eq!(links[0].span_id(), planned.span_context.span_id());
    assert_eq!(
        command.span_context.trace_id(),
        fired.span_context.trace_id()
    );
    assert_eq!(command.parent_span_id, fired.span_context.span_id());
    assert_eq!(attr(fired, "regua.tenant").as_deref(), Some("trc"));
    assert_eq!(attr(fired, "regua.invoice_id").as_deref(), Some("NF-TRACE"));
    assert_eq!(attr(fired, "regua.step").as_deref(), Some("lembrete"));
    assert_eq!(attr(fired, "regua.channel").as_deref(), Some("whatsapp"));
    assert_eq!(attr(fired, "regua.outcome").as_deref(), Some("sent"));

    // The dispatcher continues the firing trace: processing, the provider call, the event.
    let dispatched = find(&spans, "process regua.v1.cmd.trc.dispatch.whatsapp");
    assert_eq!(
        dispatched.span_context.trace_id(),
        fired.span_context.trace_id()
    );
    assert_eq!(dispatched.parent_span_id, command.span_context.span_id());
    assert_eq!(attr(dispatched, "regua.tenant").as_deref(), Some("trc"));
    assert_eq!(
        attr(dispatched, "regua.invoice_id").as_deref(),
        Some("NF-TRACE")
    );
    assert_eq!(attr(dispatched, "regua.outcome").as_deref(), Some("sent"));
    assert_eq!(
        attr(dispatched, "messaging.consumer.group.name").as_deref(),
        Some("dispatch-whatsapp")
    );
    let call = find(&spans, "provider send");
    assert_eq!(call.parent_span_id, dispatched.span_context.span_id());
    assert_eq!(attr(call, "regua.channel").as_deref(), Some("whatsapp"));
    assert_eq!(
        attr(call, "regua.provider").as_deref(),
        Some("whatsapp_cloud")
    );
    assert_eq!(attr(call, "regua.step").as_deref(), Some("lembrete"));
    assert_eq!(attr(call, "regua.outcome").as_deref(), Some("sent"));
    // The HTTP request itself: a client span with the HTTP conventions, no account ids
    // in its name (url.template) and no URL with them.
    let request = find(&spans, "POST /{Phone-Number-ID}/messages");
    assert_eq!(request.parent_span_id, call.span_context.span_id());
    assert_eq!(request.span_kind, opentelemetry::trace::SpanKind::Client);
    assert_eq!(
        attr(request, "http.request.method").as_deref(),
        Some("POST")
    );
    assert_eq!(
        attr(request, "http.response.status_code").as_deref(),
        Some("200")
    );
    assert_eq!(
        attr(request, "server.address").as_deref(),
        Some("127.0.0.1")
    );
    assert!(attr(request, "url.full").is_none());
    let sent = find(&spans, "send regua.v1.evt.trc.message.sent");
    assert_eq!(sent.span_context.trace_id(), fired.span_context.trace_id());

    // The provider's status callback: its own trace (it carries no context), linked to
    // the firing's, and the message.delivered event continues it.
    let status = spans
        .iter()
        .find(|s| {
            s.name == "apply provider status"
                && attr(s, "regua.outcome").as_deref() == Some("delivered")
        })
        .expect("a span for the delivered status");
    assert_eq!(
        attr(status, "regua.invoice_id").as_deref(),
        Some("NF-TRACE")
    );
    assert_eq!(
        attr(status, "regua.provider").as_deref(),
        Some("whatsapp_cloud")
    );
    let links: Vec<_> = status
        .links
        .iter()
        .map(|l| l.span_context.trace_id())
        .collect();
    assert_eq!(
        links,
        vec![fired.span_context.trace_id()],
        "linked to the message's trace"
    );
    let delivered = find(&spans, "send regua.v1.evt.trc.message.delivered");
    assert_eq!(
        delivered.span_context.trace_id(),
        status.span_context.trace_id()
    );

    // The payment: its HTTP request's trace carries the settlement events, and the
    // scheduler cancels the pending steps in that same trace.
    let pay = find(&spans, "POST /v1/tenants/{tenant}/payments");
    let payment_trace = pay.span_context.trace_id();
    let published = find(&spans, "send regua.v1.evt.trc.invoice.paid");
    assert_eq!(published.span_context.trace_id(), payment_trace);
    let cancelled = spans
        .iter()
        .find(|s| {
            s.name == "process regua.v1.evt.trc.invoice.paid"
                && attr(s, "messaging.consumer.group.name").as_deref() == Some("scheduler")
        })
        .expect("the scheduler's processing of invoice.paid");
    assert_eq!(cancelled.span_context.trace_id(), payment_trace);

    // The thank-you fires in a trace of its own, linked to the payment that caused it,
    // and its provider call is in that trace.
    let thanks = spans
        .iter()
        .find(|s| {
            s.name == "fire regua step" && attr(s, "regua.step").as_deref() == Some("on_paid")
        })
        .expect("the thank-you's firing");
    let links: Vec<_> = thanks
        .links
        .iter()
        .map(|l| l.span_context.trace_id())
        .collect();
    assert_eq!(links, vec![payment_trace], "linked to the payment");
    assert!(spans.iter().any(|s| s.name == "provider send"
        && attr(s, "regua.step").as_deref() == Some("on_paid")
        && s.span_context.trace_id() == thanks.span_context.trace_id()));

    // The journey timeline names each entry's trace: the invoice's, the firing's, the
    // callback's, the payment's.
    let trace_of = |kind: &str, state: Option<&str>| -> String {
        timeline["entries"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["kind"] == kind && state.is_none_or(|s| e["state"] == s))
            .and_then(|e| e["trace_id"].as_str())
            .unwrap_or_else(|| panic!("no trace id for {kind} {state:?} in {timeline}"))
            .to_owned()
    };
    assert_eq!(trace_of("invoice.opened", None), planning_trace.to_string());
    assert_eq!(
        trace_of("step", Some("sent")),
        fired.span_context.trace_id().to_string()
    );
    assert_eq!(
        trace_of("message.sent", None),
        fired.span_context.trace_id().to_string()
    );
    assert_eq!(
        trace_of("message.delivered", None),
        status.span_context.trace_id().to_string()
    );
    assert_eq!(trace_of("invoice.paid", None), payment_trace.to_string());
    assert_eq!(
        trace_of("step", Some("cancelled")),
        payment_trace.to_string()
    );

    // No PII in any span or log line of the whole run.
    let pii = trace::pii_of(&body);
    trace::assert_no_pii(&spans, &pii);
    let logs = trace::logs();
    assert!(logs.lines().count() > 10, "the run logged: {logs}");
    trace::assert_no_pii_in_logs(&pii);
    platform.drain(&config).await;
}
