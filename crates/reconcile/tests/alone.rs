//! Reconciliation started alone, on a real nats-server child and Postgres: fed the
//! domain events intake would emit, it takes payments from `payment.received`, matches
//! them, settles the invoice (`payment.matched`, `invoice.paid`, the settlement signal
//! right after the commit), parks what matches nothing, and rejects a bad payment with
//! reasons. No other service runs.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use async_nats::jetstream;
use chrono::{DateTime, Utc};
use futures::StreamExt;
use regua_contract::signals::InvoiceSettled;
use regua_contract::{DomainEvent, InboundKind, TenantId, subjects};
use regua_platform::{Config, nats};
use regua_reconcile::{Reconcile, ReconcileError};
use regua_testkit::proxy::TcpProxy;
use regua_testkit::service::{self, Running};
use regua_testkit::{NatsServer, eventually, read_stream};
use serde_json::{Value, json};
use sqlx::PgPool;

const TENANT: &str = "caixa";
const KEY: &str = "rk_caixa_test-key-0123456789";
const START: &str = "2026-12-01T03:00:00Z";

fn at(s: &str) -> DateTime<Utc> {
    s.parse().unwrap()
}

struct World {
    _server: NatsServer,
    client: async_nats::Client,
    js: jetstream::Context,
    http: reqwest::Client,
    running: Running,
}

impl World {
    /// Reconciliation alone, the tenant registered with the platform (as intake registers
    /// the tenants it creates, so its key opens the routes), and `tenant.created`
    /// published as intake's relay would.
    async fn new(pool: &PgPool) -> World {
        World::through(pool, None).await
    }

    /// [`World::new`], reaching Postgres through `proxy` when one is given.
    async fn through(pool: &PgPool, proxy: Option<&TcpProxy>) -> World {
        let server = NatsServer::start().await;
        let mut config: Config = service::config(&server.url(), pool);
        if let Some(proxy) = proxy {
            service::database_through(&mut config, proxy.addr());
        }
        let running = Running::start(&config, |p, shutdown| async move {
            let r = Reconcile::from_parts(p.config, p.pool, p.client, p.clock);
            r.start(&shutdown).await?;
            Ok::<_, ReconcileError>(r.router())
        })
        .await;
        let client = nats::connect(&server.url(), "test").await.unwrap();
        let w = World {
            _server: server,
            js: nats::jetstream(client.clone()),
            client,
            http: reqwest::Client::new(),
            running,
        };
        let created = service::register_tenant(pool, TENANT, KEY, at(START)).await;
        w.event(DomainEvent::TenantCreated(created)).await;
        w
    }

    /// Publishes `event` on the events stream, as intake's outbox relay would.
    async fn event(&self, event: DomainEvent) {
        service::publish_event(&self.js, TENANT, event, at(START)).await;
    }

    /// Publishes a `payment.received` body, as an integrator would.
    async fn payment(&self, body: Value) {
        let tenant = TenantId::parse(TENANT).unwrap();
        let subject = subjects::inbound(&tenant, InboundKind::PaymentReceived);
        let ack = self.js.publish(subject, body.to_string().into());
        ack.await.unwrap().await.unwrap();
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        service::get_tenant(&self.http, &self.running.base(), TENANT, KEY, path).await
    }

    /// The events of `kind` (`invoice.paid`, …) reconciliation published so far.
    async fn events(&self, kind: &str) -> Vec<Value> {
        let filter = format!("regua.v1.evt.{TENANT}.{kind}");
        read_stream(&self.js, subjects::STREAM_EVENTS, &filter)
            .await
            .into_iter()
            .map(|(_, _, e)| e)
            .collect()
    }
}

#[sqlx::test(migrations = false)]
async fn reconciliation_alone_settles_parks_and_rejects_payments(pool: PgPool) {
    let w = World::new(&pool).await;
    service::open_invoice(&w.js, TENANT, service::customer_state(), at(START)).await;
    // Known from the events alone: what it owes on the tenant's (test clock) today.
    let owed = eventually("the invoice", Duration::from_secs(30), || async {
        let (status, body) = w.get("invoices/NF-1").await;
        (status == 200).then_some(body)
    })
    .await;
    assert_eq!(owed["amount_due"]["balance_cents"], 15_990, "{owed}");
    assert_eq!(owed["status"], "open");

    // A payment naming the invoice's reference settles it; the signal comes first.
    let mut signals = w
        .client
        .subscribe(subjects::settled_any_tenant())
        .await
        .unwrap();
    w.payment(json!({
        "payment_id": "PAY-1",
        "reference": "NN-0001",
        "amount_cents": 15_990,
        "paid_at": "2026-12-01T10:00:00-03:00",
        "method": "boleto",
    }))
    .await;
    let signal = tokio::time::timeout(Duration::from_secs(30), signals.next())
        .await
        .unwrap()
        .unwrap();
    let signal: InvoiceSettled = serde_json::from_slice(&signal.payload).unwrap();
    assert_eq!(
        (signal.invoice_id.as_str(), signal.payment_id.as_str()),
        ("NF-1", "PAY-1")
    );
    let paid = eventually("invoice.paid", Duration::from_secs(30), || async {
        let e = w.events("invoice.paid").await;
        (!e.is_empty()).then_some(e)
    })
    .await;
    assert_eq!(paid.len(), 1);
    assert_eq!(
        paid[0]["id"],
        signal.event_id.to_string(),
        "the signal names the event"
    );
    assert_eq!(paid[0]["data"]["amount_paid_cents"], 15_990);
    assert_eq!(paid[0]["data"]["days_late"], 0);
    let matched = w.events("payment.matched").await;
    assert_eq!(matched.len(), 1);
    assert_eq!(matched[0]["data"]["matched_by"], "reference");
    assert_eq!(matched[0]["data"]["settled"], true);
    let (_, owed) = w.get("invoices/NF-1").await;
    assert_eq!(owed["status"], "paid", "{owed}");
    assert_eq!(owed["amount_due"]["balance_cents"], 0);

    // One that matches nothing waits for review; a bad one is rejected with reasons.
    w.payment(json!({
        "payment_id": "PAY-2",
        "reference": "NN-9999",
        "amount_cents": 5_000,
        "paid_at": "2026-12-01T11:00:00-03:00",
        "method": "pix",
    }))
    .await;
    w.payment(json!({
        "payment_id": "PAY-3",
        "invoice_id": "NF-1",
        "amount_cents": -5,
        "paid_at": "2026-12-01T11:00:00-03:00",
        "method": "pix",
    }))
    .await;
    let unmatched = eventually("the review queue", Duration::from_secs(30), || async {
        let (_, body) = w.get("payments/unmatched").await;
        let list = body["payments"].as_array()?.clone();
        (!list.is_empty()).then_some(list)
    })
    .await;
    assert_eq!(unmatched.len(), 1);
    assert_eq!(unmatched[0]["payment_id"], "PAY-2");
    assert_eq!(unmatched[0]["reason"], "unknown_reference");
    let rejected = eventually("intake.rejected", Duration::from_secs(30), || async {
        let e = w.events("intake.rejected").await;
        (!e.is_empty()).then_some(e)
    })
    .await;
    let codes: Vec<&str> = rejected[0]["data"]["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["code"].as_str().unwrap())
        .collect();
    assert_eq!(codes, vec!["amount_not_positive"]);
    assert_eq!(w.events("invoice.paid").await.len(), 1, "paid once");

    // No other service ran: intake's tables were never made.
    let intake: bool = sqlx::query_scalar("SELECT to_regclass('intake.invoices') IS NULL")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(intake, "reconciliation started alone");
}

/// A Postgres outage is nobody's payment's fault: the payment waits it out, held
/// without spending a delivery, and is applied once Postgres returns; nothing is
/// dead-lettered and the invoice is paid once.
#[sqlx::test(migrations = false)]
async fn a_postgres_outage_holds_payments_without_spending_deliveries(pool: PgPool) {
    let proxy = TcpProxy::start(service::database_addr(&pool)).await;
    let w = World::through(&pool, Some(&proxy)).await;
    service::open_invoice(&w.js, TENANT, service::customer_state(), at(START)).await;
    eventually("the invoice", Duration::from_secs(30), || async {
        (w.get("invoices/NF-1").await.0 == 200).then_some(())
    })
    .await;

    proxy.cut();
    w.payment(json!({
        "payment_id": "PAY-1",
        "invoice_id": "NF-1",
        "amount_cents": 15_990,
        "paid_at": "2026-12-01T10:00:00-03:00",
        "method": "pix",
    }))
    .await;
    // Longer than the payments' ack wait (5 s here) several times over, and than a
    // failed attempt to reach Postgres (the pool's 10 s).
    tokio::time::sleep(Duration::from_secs(25)).await;
    let info =
        w.js.get_stream(subjects::STREAM_INBOUND)
            .await
            .unwrap()
            .consumer_info(subjects::CONSUMER_RECONCILE)
            .await
            .unwrap();
    assert_eq!(
        info.num_redelivered, 0,
        "the outage spent a delivery: {info:?}"
    );
    assert_eq!(info.num_ack_pending, 1, "the payment is held");
    proxy.restore();

    let paid = eventually("invoice.paid", Duration::from_secs(60), || async {
        let e = w.events("invoice.paid").await;
        (!e.is_empty()).then_some(e)
    })
    .await;
    assert_eq!(paid.len(), 1);
    let dead = read_stream(
        &w.js,
        subjects::STREAM_DEAD_LETTER,
        &subjects::dead_letter_all(),
    )
    .await;
    assert!(dead.is_empty(), "nothing dead-lettered: {dead:?}");
}
