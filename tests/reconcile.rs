//! Reconciliation end to end, over a real nats-server child and a real Postgres: every
//! matching path (invoice id over NATS, reference over HTTP, the PIX webhook, document
//! plus exact amount), the unmatched queue and a manual match that stops the régua,
//! partial payments with fine and interest on the test clock, overpayment as credit,
//! duplicates, bad input, a payment that arrives before its invoice, and a
//! reconciliation killed between receiving and committing a payment.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::disallowed_methods
)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use regua::Services;
use regua_contract::{InboundKind, TenantId, subjects};
use regua_platform::{Config, Shutdown, SystemClock, nats};
use regua_reconcile::{Pause, Reconcile};
use regua_testkit::fakes::FakeProviders;
use regua_testkit::{NatsServer, cpf, eventually, invoice, read_stream};
use serde_json::{Value, json};
use sqlx::PgPool;

use common::{ADMIN, Running};

const TENANT: &str = "acme";
const START: &str = "2026-12-01T03:00:00Z";

struct World {
    _server: NatsServer,
    config: Config,
    js: jetstream::Context,
    http: reqwest::Client,
    pool: PgPool,
    base: String,
    key: String,
    running: Option<Running>,
}

impl World {
    async fn new(pool: &PgPool, services: Services) -> World {
        World::with(pool, services, |_| {}).await
    }

    async fn with(pool: &PgPool, services: Services, tweak: impl FnOnce(&mut Config)) -> World {
        let server = NatsServer::start().await;
        let mut config = common::config(&server.url(), pool);
        let port = regua_testkit::free_port();
        config.http_addr = format!("127.0.0.1:{port}").parse().unwrap();
        config.public_url = format!("http://127.0.0.1:{port}");
        tweak(&mut config);
        let running = Running::start(&config, services).await;
        let js = nats::jetstream(nats::connect(&server.url(), "test").await.unwrap());
        let mut w = World {
            _server: server,
            base: config.public_url.clone(),
            config,
            js,
            http: reqwest::Client::new(),
            pool: pool.clone(),
            key: String::new(),
            running: Some(running),
        };
        let body = regua_testkit::test_clock_tenant(TENANT, START);
        w.key = regua_testkit::create_tenant(&w.http, &w.base, ADMIN, &body).await;
        w
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut req = self
            .http
            .request(method, format!("{}/v1/tenants/{TENANT}/{path}", self.base))
            .bearer_auth(&self.key);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let r = req.send().await.unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        self.call(reqwest::Method::GET, path, None).await
    }

    async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        self.call(reqwest::Method::POST, path, Some(body)).await
    }

    /// Submits an invoice through intake and waits until reconciliation knows it.
    async fn invoice(&self, body: Value) {
        let id = body["invoice_id"].as_str().unwrap().to_owned();
        let (status, out) = self.post("invoices", body).await;
        assert_eq!(status, 202, "{out}");
        self.known(&id).await;
    }

    async fn known(&self, id: &str) -> Value {
        eventually(
            "reconciliation to know the invoice",
            Duration::from_secs(30),
            || async {
                let (status, body) = self.get(&format!("invoices/{id}")).await;
                (status == 200).then_some(body)
            },
        )
        .await
    }

    async fn publish_payment(&self, body: &Value) {
        let subject = subjects::inbound(
            &TenantId::parse(TENANT).unwrap(),
            InboundKind::PaymentReceived,
        );
        self.js
            .publish(subject, serde_json::to_vec(body).unwrap().into())
            .await
            .unwrap()
            .await
            .unwrap();
    }

    async fn events(&self, kind: &str) -> Vec<Value> {
        read_stream(
            &self.js,
            subjects::STREAM_EVENTS,
            &format!("regua.v1.evt.{TENANT}.{kind}"),
        )
        .await
        .into_iter()
        .map(|(_, _, e)| e)
        .collect()
    }

    async fn count(&self, sql: &str) -> i64 {
        sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_owned()))
            .fetch_one(&self.pool)
            .await
            .unwrap()
    }

    /// One firing claim at `due` by another scheduler replica; how many invoices it took.
    async fn claim_as_replica(&self, due: chrono::DateTime<chrono::Utc>) -> usize {
        let replica = regua_scheduler::Scheduler::from_parts(
            self.config.clone(),
            self.pool.clone(),
            nats::connect(&self.config.nats_url, "replica")
                .await
                .unwrap(),
            Arc::new(SystemClock),
        );
        regua_scheduler::fire::fire_once(
            &replica,
            regua_scheduler::fire::Scope::TestClock(TENANT),
            regua_scheduler::fire::Part { index: 0, of: 1 },
            None,
            due,
        )
        .await
        .unwrap()
        .0
    }

    async fn status(&self, id: &str) -> String {
        self.get(&format!("invoices/{id}")).await.1["status"]
            .as_str()
            .unwrap_or("")
            .to_owned()
    }
}

fn payment(id: &str, amount: i64) -> Value {
    json!({
        "payment_id": id,
        "amount_cents": amount,
        "currency": "BRL",
        "paid_at": "2026-12-05T15:00:00-03:00",
        "method": "pix",
    })
}

fn with_reference(mut inv: Value, reference: &str) -> Value {
    inv["reference"] = json!(reference);
    inv
}

#[sqlx::test(migrations = false)]
async fn every_matching_path_and_the_unmatched_queue(pool: PgPool) {
    let w = World::new(&pool, Services::CORE_RECONCILE).await;
    w.invoice(invoice("NF-1", 1)).await;
    w.invoice(with_reference(invoice("NF-2", 2), "34191790010"))
        .await;
    w.invoice(invoice("NF-3", 3)).await;
    w.invoice(invoice("NF-4", 4)).await;

    // 1. By invoice id, over NATS: settles.
    let mut p = payment("PAY-1", 15_990);
    p["invoice_id"] = json!("NF-1");
    w.publish_payment(&p).await;
    eventually("NF-1 paid", Duration::from_secs(30), || async {
        (w.status("NF-1").await == "paid").then_some(())
    })
    .await;

    // 2. By reference, over HTTP.
    let mut p = payment("PAY-2", 15_990);
    p["reference"] = json!("34191790010");
    let (status, out) = w.post("payments", p).await;
    assert_eq!(status, 200, "{out}");
    assert_eq!(out["outcome"], "matched");
    assert_eq!(out["matched_by"], "reference");
    assert_eq!(out["invoice_id"], "NF-2");
    assert_eq!(out["settled"], true);

    // 3. By the payer's document and the exact amount of their single open invoice.
    let mut p = payment("PAY-3", 15_990);
    p["payer_document"] = json!(cpf(3));
    let (_, out) = w.post("payments", p).await;
    assert_eq!(out["matched_by"], "document_amount", "{out}");
    assert_eq!(out["invoice_id"], "NF-3");
    // Not the exact amount: no guess.
    let mut p = payment("PAY-3b", 15_000);
    p["payer_document"] = json!(cpf(4));
    let (_, out) = w.post("payments", p).await;
    assert_eq!(out["outcome"], "unmatched", "{out}");
    assert_eq!(out["reason"], "no_candidate");

    // 4. Unknown reference: the unmatched queue, then a manual match that settles.
    let mut p = payment("PAY-4", 15_990);
    p["reference"] = json!("NOT-A-REFERENCE");
    let (_, out) = w.post("payments", p).await;
    assert_eq!(out["outcome"], "unmatched");
    assert_eq!(out["reason"], "unknown_reference");
    let (_, queue) = w.get("payments/unmatched").await;
    let ids: Vec<&str> = queue["payments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["payment_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["PAY-3b", "PAY-4"]);
    // A match to an unknown invoice is refused and changes nothing.
    let (status, _) = w
        .post("payments/PAY-4:match", json!({"invoice_id": "NF-404"}))
        .await;
    assert_eq!(status, 422);
    let (status, out) = w
        .post("payments/PAY-4:match", json!({"invoice_id": "NF-4"}))
        .await;
    assert_eq!(status, 200, "{out}");
    assert_eq!(out["matched_by"], "manual");
    assert_eq!(out["settled"], true);
    let (status, _) = w
        .post("payments/PAY-4:match", json!({"invoice_id": "NF-4"}))
        .await;
    assert_eq!(status, 409, "a second match is refused");
    let (_, queue) = w.get("payments/unmatched").await;
    assert_eq!(queue["payments"].as_array().unwrap().len(), 1);
    // The manual match stops the régua: the scheduler marks the invoice paid and
    // cancels its pending steps.
    eventually("the scheduler to stop NF-4", Duration::from_secs(30), || async {
        let n = w
            .count("SELECT count(*) FROM scheduler.invoices WHERE invoice_id = 'NF-4' AND status = 'paid'")
            .await;
        (n == 1).then_some(())
    })
    .await;
    assert!(
        w.count("SELECT count(*) FROM scheduler.step_log WHERE invoice_id = 'NF-4' AND state = 'cancelled'")
            .await
            > 0
    );

    // The events: one payment.matched per match, one invoice.paid per settled invoice,
    // payment.unmatched for each parked payment.
    eventually("the events", Duration::from_secs(30), || async {
        let matched = w.events("payment.matched").await.len();
        let paid = w.events("invoice.paid").await.len();
        let unmatched = w.events("payment.unmatched").await.len();
        (matched == 4 && paid == 4 && unmatched == 2).then_some(())
    })
    .await;

    // The same payment id again: no second effect.
    let mut p = payment("PAY-2", 15_990);
    p["reference"] = json!("34191790010");
    let (_, out) = w.post("payments", p).await;
    assert_eq!(out["outcome"], "duplicate");
    let mut p = payment("PAY-1", 15_990);
    p["invoice_id"] = json!("NF-1");
    w.publish_payment(&p).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        w.count("SELECT count(*) FROM reconcile.applications").await,
        4
    );
    assert_eq!(w.count("SELECT count(*) FROM reconcile.payments").await, 5);
}

#[sqlx::test(migrations = false)]
async fn bad_payments_are_rejected_with_reasons_and_nothing_is_dropped(pool: PgPool) {
    let w = World::new(&pool, Services::CORE_RECONCILE).await;
    let (status, out) = w
        .post(
            "payments",
            json!({"payment_id": "P 1", "amount_cents": 12.5, "paid_at": "yesterday", "method": "cheque", "payer_document": "123.456.789-00"}),
        )
        .await;
    assert_eq!(status, 422);
    let mut codes: Vec<(String, String)> = out["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["field"].as_str().unwrap().into(),
                e["code"].as_str().unwrap().into(),
            )
        })
        .collect();
    codes.sort();
    assert_eq!(
        codes,
        [
            ("amount_cents".to_owned(), "invalid_type".to_owned()),
            ("method".into(), "invalid_value".into()),
            ("paid_at".into(), "invalid_date".into()),
            ("payer_document".into(), "invalid_cpf".into()),
            ("payment_id".into(), "invalid_value".into()),
        ]
    );
    // Over NATS a bad payment becomes `intake.rejected`, with the payload echoed.
    w.publish_payment(&json!({"payment_id": "P-9", "amount_cents": -1}))
        .await;
    let rejected = eventually("the rejection", Duration::from_secs(30), || async {
        let r = w.events("intake.rejected").await;
        (!r.is_empty()).then_some(r)
    })
    .await;
    let data = &rejected[0]["data"];
    assert_eq!(data["source_subject"], "regua.v1.in.acme.payment.received");
    let fields: Vec<&str> = data["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["field"].as_str().unwrap())
        .collect();
    assert!(
        fields.contains(&"amount_cents")
            && fields.contains(&"paid_at")
            && fields.contains(&"method")
    );
    assert!(data["payload"].as_str().unwrap().contains("P-9"));
}

#[sqlx::test(migrations = false)]
async fn the_pix_webhook_is_authenticated_and_reads_valor_exactly(pool: PgPool) {
    let w = World::new(&pool, Services::CORE_RECONCILE).await;
    w.invoice(with_reference(invoice("NF-P", 7), "txid7")).await;
    let url = format!("{}/webhooks/pix/{TENANT}", w.base);
    let body = json!({"pix": [{
        "endToEndId": "E18236120202612051500s0000000001",
        "txid": "txid7",
        "valor": "159.90",
        "horario": "2026-12-05T15:00:00.00-03:00",
        "infoPagador": "pagamento NF-P"
    }]});
    // No secret issued yet, or a wrong one: 401, nothing recorded.
    let r = w
        .http
        .post(format!("{url}?hmac=guess"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let (status, issued) = w.post("pix/webhook-secret", json!({})).await;
    assert_eq!(status, 201);
    let secret = issued["secret"].as_str().unwrap().to_owned();
    assert!(
        issued["webhook_url"]
            .as_str()
            .unwrap()
            .ends_with(&format!("?hmac={secret}"))
    );
    let r = w.http.post(&url).json(&body).send().await.unwrap();
    assert_eq!(r.status(), 401, "no secret presented");
    assert_eq!(w.count("SELECT count(*) FROM reconcile.payments").await, 0);

    let r = w
        .http
        .post(issued["webhook_url"].as_str().unwrap())
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let out: Value = r.json().await.unwrap();
    assert_eq!(out["results"][0]["outcome"], "matched", "{out}");
    assert_eq!(out["results"][0]["settled"], true);
    let amount: i64 = sqlx::query_scalar("SELECT amount_cents FROM reconcile.payments")
        .fetch_one(&w.pool)
        .await
        .unwrap();
    assert_eq!(amount, 15_990);
    // The PSP retries: the same endToEndId has no second effect (bearer form this time).
    let r = w
        .http
        .post(&url)
        .bearer_auth(&secret)
        .json(&body)
        .send()
        .await
        .unwrap();
    let out: Value = r.json().await.unwrap();
    assert_eq!(out["results"][0]["outcome"], "duplicate");
    // A float or a malformed valor is refused by field, in PIX terms.
    let bad = json!({"pix": [{"endToEndId": "E2", "valor": 159.9, "horario": "2026-12-05T15:00:00Z"},
                             {"endToEndId": "E3", "valor": "1.5", "horario": "2026-12-05T15:00:00Z"}]});
    let r = w
        .http
        .post(&url)
        .bearer_auth(&secret)
        .json(&bad)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 422);
    let out: Value = r.json().await.unwrap();
    assert_eq!(out["results"][0]["errors"][0]["field"], "pix[0].valor");
    assert_eq!(out["results"][1]["errors"][0]["field"], "pix[1].valor");
}

#[sqlx::test(migrations = false)]
async fn partial_payments_fine_interest_and_overpayment(pool: PgPool) {
    let w = World::new(&pool, Services::CORE_RECONCILE).await;
    w.invoice(invoice("NF-A", 1)).await;
    w.invoice(invoice("NF-B", 2)).await;
    // On time (the test clock is at 2026-12-01): the principal only.
    let body = w.known("NF-A").await;
    assert_eq!(body["amount_due"]["balance_cents"], 15_990);
    assert_eq!(body["amount_due"]["on"], "2026-12-01");

    // Five days after the due date (Thursday 2026-12-10) the tenant's clock says
    // 2026-12-15: fine 2% = 319.80 → 320; interest 1% a.m. × 5/30 = 26.65 → 27.
    let (status, _) = w
        .post("clock:advance", json!({"to": "2026-12-15T12:00:00Z"}))
        .await;
    assert_eq!(status, 202);
    let due = eventually(
        "the clock to reach reconciliation",
        Duration::from_secs(60),
        || async {
            let (_, b) = w.get("invoices/NF-A").await;
            (b["amount_due"]["on"] == "2026-12-15").then_some(b["amount_due"].clone())
        },
    )
    .await;
    assert_eq!(
        (
            due["fine_cents"].as_i64(),
            due["interest_cents"].as_i64(),
            due["balance_cents"].as_i64(),
            due["days_late"].as_i64()
        ),
        (Some(320), Some(27), Some(16_337), Some(5))
    );

    // A partial payment on the 12th: the invoice stays open with its balance.
    let mut p = payment("PAY-A1", 10_000);
    p["invoice_id"] = json!("NF-A");
    p["paid_at"] = json!("2026-12-12T10:00:00-03:00");
    let (_, out) = w.post("payments", p).await;
    assert_eq!(out["settled"], false, "{out}");
    let (_, b) = w.get("invoices/NF-A").await;
    assert_eq!(b["status"], "open");
    // On the 12th: fine 320 + interest 2 days (10.66 → 11) = 16 321; 10 000 paid covers
    // the charges first, leaving 5 990 − … principal 6 321; three more days on it.
    let left = 15_990 + 320 + 11 - 10_000;
    let more = regua_domain::charges::interest(left, 100, 3).unwrap();
    assert_eq!(b["amount_due"]["balance_cents"].as_i64(), Some(left + more));
    let lines: i64 = b["ledger"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["amount_cents"].as_i64().unwrap())
        .sum();
    assert_eq!(lines, left + more, "the ledger sums to the balance");
    let partial = eventually(
        "invoice.partially_paid",
        Duration::from_secs(30),
        || async {
            let e = w.events("invoice.partially_paid").await;
            (!e.is_empty()).then_some(e)
        },
    )
    .await;
    assert_eq!(partial[0]["data"]["due"]["balance_cents"], left);

    // Paying exactly the balance on the 15th settles it.
    let mut p = payment("PAY-A2", left + more);
    p["invoice_id"] = json!("NF-A");
    p["paid_at"] = json!("2026-12-15T09:00:00-03:00");
    let (_, out) = w.post("payments", p).await;
    assert_eq!(out["settled"], true, "{out}");
    assert_eq!(out["credit_cents"], 0);
    let paid = eventually("invoice.paid", Duration::from_secs(30), || async {
        let e = w.events("invoice.paid").await;
        (!e.is_empty()).then_some(e)
    })
    .await;
    assert_eq!(paid[0]["data"]["days_late"], 5);
    assert_eq!(paid[0]["data"]["amount_paid_cents"], 10_000 + left + more);

    // Overpayment: recorded as credit, flagged, never lost.
    let mut p = payment("PAY-B", 20_000);
    p["invoice_id"] = json!("NF-B");
    p["paid_at"] = json!("2026-12-09T10:00:00-03:00");
    let (_, out) = w.post("payments", p).await;
    assert_eq!(
        (out["settled"].as_bool(), out["credit_cents"].as_i64()),
        (Some(true), Some(4_010))
    );
    let (_, credits) = w.get("credits").await;
    assert_eq!(credits["credits"][0]["credit_cents"], 4_010);
    assert_eq!(credits["credits"][0]["flag"], "overpayment");
}

#[sqlx::test(migrations = false)]
async fn a_payment_before_its_invoice_waits_then_matches(pool: PgPool) {
    let w = World::new(&pool, Services::CORE_RECONCILE).await;
    let mut p = payment("PAY-EARLY", 15_990);
    p["invoice_id"] = json!("NF-LATE");
    let (_, out) = w.post("payments", p).await;
    assert_eq!(out["reason"], "unknown_invoice", "{out}");
    w.invoice(invoice("NF-LATE", 9)).await;
    eventually(
        "the waiting payment to settle it",
        Duration::from_secs(30),
        || async { (w.status("NF-LATE").await == "paid").then_some(()) },
    )
    .await;
    let (_, queue) = w.get("payments/unmatched").await;
    assert!(queue["payments"].as_array().unwrap().is_empty());
}

/// Reconciliation is killed between receiving a payment and committing it; restarted,
/// it applies the payment exactly once.
#[sqlx::test(migrations = false)]
async fn killed_between_receiving_and_committing_applies_once(pool: PgPool) {
    let mut w = World::new(&pool, Services::CORE).await;
    // Intake and the scheduler only; reconciliation runs below, on its own.
    let pause = Arc::new(Pause::default());
    let reached = pause.clone();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let opts = (*w.pool.connect_options()).clone();
    let (config, url) = (w.config.clone(), w.config.nats_url.clone());
    let waiting = reached.reached.notified();
    tokio::pin!(waiting);
    waiting.as_mut().enable();
    rt.spawn(async move {
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(5)
            .connect_with(opts)
            .await
            .unwrap();
        let client = nats::connect(&url, "doomed").await.unwrap();
        let r = Arc::new(Reconcile::new(
            config,
            pool,
            client,
            Arc::new(SystemClock),
            Some(pause),
        ));
        let shutdown = Shutdown::new();
        r.start(&shutdown).await.unwrap();
        std::future::pending::<()>().await;
    });
    let mut body = invoice("NF-K", 1);
    body["reference"] = json!("ref-k");
    let (status, _) = w.post("invoices", body).await;
    assert_eq!(status, 202);
    eventually(
        "reconciliation to know NF-K",
        Duration::from_secs(30),
        || async {
            // The table appears once the doomed replica has migrated.
            let n: Option<i64> = sqlx::query_scalar(
                "SELECT count(*) FROM reconcile.invoices WHERE invoice_id = 'NF-K'",
            )
            .fetch_one(&w.pool)
            .await
            .ok();
            (n == Some(1)).then_some(())
        },
    )
    .await;
    let mut p = payment("PAY-K", 15_990);
    p["reference"] = json!("ref-k");
    w.publish_payment(&p).await;
    tokio::time::timeout(Duration::from_secs(30), waiting)
        .await
        .expect("the payment to reach the commit");
    // Mid-transaction: nothing is visible yet.
    assert_eq!(w.count("SELECT count(*) FROM reconcile.payments").await, 0);
    rt.shutdown_background();

    // A fresh reconciliation (with the rest of the platform) gets the redelivery.
    w.running.take().unwrap().kill();
    w.running = Some(Running::start(&w.config, Services::CORE_RECONCILE).await);
    eventually(
        "the payment to be applied",
        Duration::from_secs(90),
        || async {
            let n = w.count("SELECT count(*) FROM reconcile.applications").await;
            (n == 1).then_some(())
        },
    )
    .await;
    eventually("its events", Duration::from_secs(30), || async {
        (w.events("invoice.paid").await.len() == 1).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(w.count("SELECT count(*) FROM reconcile.payments").await, 1);
    assert_eq!(
        w.count("SELECT count(*) FROM reconcile.applications").await,
        1
    );
    assert_eq!(w.events("payment.matched").await.len(), 1);
    assert_eq!(w.events("invoice.paid").await.len(), 1);
}

/// With every service and the provider fakes: the reminder goes out, the customer pays,
/// the later steps never reach a provider, and the thank-you does, once. The journey
/// timeline tells that story in order, per invoice and per customer.
/// The templates of the WhatsApp messages the fake received, once `n` have arrived and
/// a second more has brought no other.
async fn whatsapp_templates(fakes: &FakeProviders, n: usize) -> Vec<String> {
    eventually("the messages", Duration::from_secs(30), || async {
        (fakes.meta.sent().len() >= n).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    fakes
        .meta
        .sent()
        .iter()
        .map(|m| m.template_name())
        .collect()
}

#[sqlx::test(migrations = false)]
async fn payment_stops_the_messages_and_the_thank_you_goes_out_once(pool: PgPool) {
    let fakes = FakeProviders::start().await.unwrap();
    let w = World::with(&pool, Services::ALL, |c| fakes.configure(c)).await;
    fakes.webhooks_to(&w.base);
    w.invoice(invoice("NF-T", 1)).await;
    let advance =
        |to: &'static str| regua_testkit::advance_clock(&w.http, &w.base, TENANT, &w.key, to);
    // D-3 at 10:00 São Paulo: the reminder, on WhatsApp.
    advance("2026-12-07T14:00:00Z").await;
    eventually("the reminder", Duration::from_secs(30), || async {
        (fakes.meta.sent().len() == 1).then_some(())
    })
    .await;
    let mut p = payment("PAY-T", 15_990);
    p["invoice_id"] = json!("NF-T");
    p["paid_at"] = json!("2026-12-07T15:00:00-03:00");
    let (_, out) = w.post("payments", p).await;
    assert_eq!(out["settled"], true, "{out}");
    eventually("the scheduler to stop NF-T", Duration::from_secs(30), || async {
        let n = w
            .count("SELECT count(*) FROM scheduler.invoices WHERE invoice_id = 'NF-T' AND status = 'paid'")
            .await;
        (n == 1).then_some(())
    })
    .await;
    // A month on: every dunning step would have fired by now.
    advance("2027-01-10T14:00:00Z").await;
    let templates = whatsapp_templates(&fakes, 2).await;
    assert_eq!(templates.len(), 2, "{templates:?}");
    assert!(templates[0].contains("lembrete"), "{templates:?}");
    assert!(templates[1].contains("agradecimento"), "{templates:?}");
    assert!(fakes.smtp.mails().is_empty() && fakes.twilio.sent().is_empty());

    // The journey, in order: opened; the reminder decided, sent, delivered; paid; the
    // pending steps cancelled; the thank-you decided and sent.
    let timeline = eventually("the timeline", Duration::from_secs(30), || async {
        let (status, t) = w.get("invoices/NF-T/timeline").await;
        assert_eq!(status, 200, "{t}");
        let n = t["entries"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["kind"] == "message.read")
            .count();
        // Both messages read: the provider's last status, so nothing more will come.
        (n == 2).then_some(t)
    })
    .await;
    let entries = timeline["entries"].as_array().unwrap();
    let story: Vec<String> = entries
        .iter()
        .map(|e| match e["kind"].as_str().unwrap() {
            "step" => format!(
                "step {} {}",
                e["step"].as_str().unwrap(),
                e["state"].as_str().unwrap()
            ),
            kind => kind.to_owned(),
        })
        .collect();
    let position = |what: &str| {
        story
            .iter()
            .position(|s| s == what)
            .unwrap_or_else(|| panic!("no {what} in {story:?}"))
    };
    let order = [
        "invoice.opened",
        "step lembrete sent",
        "message.sent",
        "payment.matched",
        "invoice.paid",
        "step on_paid sent",
    ];
    for pair in order.windows(2) {
        assert!(
            position(pair[0]) < position(pair[1]),
            "{pair:?} out of order in {story:?}"
        );
    }
    // The provider's statuses follow their message (the reminder's may come after the
    // payment: the provider calls back when it likes).
    assert!(
        position("message.sent") < position("message.delivered"),
        "{story:?}"
    );
    assert!(
        story
            .iter()
            .any(|s| s.starts_with("step ") && s.ends_with(" cancelled")),
        "the pending steps are cancelled: {story:?}"
    );
    let reminder = &entries[position("message.sent")];
    assert_eq!(reminder["channel"], "whatsapp");
    assert_eq!(reminder["provider"], "whatsapp_cloud");
    assert!(reminder["provider_message_id"].is_string());
    assert_eq!(entries[position("payment.matched")]["payment_id"], "PAY-T");
    let paid = &entries[position("invoice.paid")];
    assert_eq!(paid["amount_paid_cents"], 15_990);
    assert_eq!(paid["days_late"], 0);
    let recorded: Vec<chrono::DateTime<chrono::Utc>> = entries
        .iter()
        .map(|e| e["recorded_at"].as_str().unwrap().parse().unwrap())
        .collect();
    assert!(
        recorded.windows(2).all(|p| p[0] <= p[1]),
        "in order: {recorded:?}"
    );
    // No contact data in it.
    let text = timeline.to_string();
    for pii in ["@example.com", "+5511", "98765", "Cliente 1", &cpf(1)] {
        assert!(!text.contains(pii), "{pii} in the timeline");
    }
    // The customer's timeline holds the same story.
    let (status, c) = w.get("customers/C-1/timeline").await;
    assert_eq!(status, 200);
    assert_eq!(c["entries"].as_array().unwrap().len(), entries.len());
    assert_eq!(w.get("invoices/NOPE/timeline").await.0, 404);
    assert_eq!(w.get("customers/NOPE/timeline").await.0, 404);
}

/// A payment halts the invoice's dunning at once even while the scheduler's in-order
/// consumer is held up (here by a lock on its processed-events table, as a burst of
/// other events would hold it up): the halt's own consumer records the halt, and
/// neither a write of the schedule from a row read before the halt (what the in-order
/// consumer or a policy migration would do) nor the clock passing the step's instant
/// fires it. Once the in-order consumer moves, it completes the stop: paid, pending
/// steps cancelled, thank-you.
#[sqlx::test(migrations = false)]
async fn a_payment_halts_dunning_while_the_in_order_consumer_is_held_up(pool: PgPool) {
    let fakes = FakeProviders::start().await.unwrap();
    let w = World::with(&pool, Services::ALL, |c| fakes.configure(c)).await;
    fakes.webhooks_to(&w.base);
    w.invoice(invoice("NF-H", 1)).await;
    let planned =
        "SELECT count(*) FROM scheduler.invoices WHERE invoice_id = 'NF-H' AND next_at IS NOT NULL";
    eventually("NF-H planned", Duration::from_secs(30), || async {
        (w.count(planned).await == 1).then_some(())
    })
    .await;
    let key = (TENANT.to_owned(), "NF-H".to_owned());
    let mut conn = pool.acquire().await.unwrap();
    let before = regua_scheduler::model::load_invoices(&mut conn, std::slice::from_ref(&key))
        .await
        .unwrap()
        .remove(&key)
        .unwrap();
    let due = before.next_at.unwrap();

    let mut hold = pool.begin().await.unwrap();
    sqlx::query("LOCK TABLE scheduler.processed IN EXCLUSIVE MODE")
        .execute(&mut *hold)
        .await
        .unwrap();
    let mut p = payment("PAY-H", 15_990);
    p["invoice_id"] = json!("NF-H");
    p["paid_at"] = json!("2026-12-02T15:00:00-03:00");
    let (_, out) = w.post("payments", p).await;
    assert_eq!(out["settled"], true, "{out}");
    let halted = "SELECT count(*) FROM scheduler.halts WHERE invoice_id = 'NF-H' AND by_halt";
    eventually("NF-H halted", Duration::from_secs(30), || async {
        (w.count(halted).await == 1).then_some(())
    })
    .await;
    // The in-order consumer has not applied the payment: the invoice is still open, and
    // nothing is cancelled in the step log yet.
    let open =
        "SELECT count(*) FROM scheduler.invoices WHERE invoice_id = 'NF-H' AND status = 'open'";
    assert_eq!(w.count(open).await, 1);
    let cancelled = "SELECT count(*) FROM scheduler.step_log WHERE invoice_id = 'NF-H' \
                     AND state = 'cancelled' AND reason = 'invoice paid'";
    assert_eq!(w.count(cancelled).await, 0);
    // A write of the row as it was read before the halt (its next step still set)...
    regua_scheduler::model::save_invoices(&mut conn, &[&before])
        .await
        .unwrap();
    assert_eq!(w.count(planned).await, 1);
    // ...and a claim at the step's instant (a firing replica's) takes nothing.
    let fired = w.claim_as_replica(due).await;
    assert_eq!(fired, 0, "a halted invoice is not fired");

    hold.rollback().await.unwrap();
    eventually("the scheduler to stop NF-H", Duration::from_secs(30), || async {
        let n = w
            .count("SELECT count(*) FROM scheduler.invoices WHERE invoice_id = 'NF-H' AND status = 'paid'")
            .await;
        (n == 1).then_some(())
    })
    .await;
    assert!(
        w.count(cancelled).await > 0,
        "the pending steps are logged as cancelled"
    );
    // The thank-you is the paid invoice's next step: the halt does not hold it back.
    assert_eq!(
        w.count("SELECT count(*) FROM scheduler.invoices WHERE invoice_id = 'NF-H' AND thanks_pending AND next_at IS NOT NULL")
            .await,
        1
    );
    regua_testkit::advance_clock(&w.http, &w.base, TENANT, &w.key, "2027-01-10T14:00:00Z").await;
    let templates = whatsapp_templates(&fakes, 1).await;
    assert_eq!(
        templates.len(),
        1,
        "only the thank-you went out: {templates:?}"
    );
    assert!(templates[0].contains("agradecimento"), "{templates:?}");
}

/// The settlement signal alone (core NATS, as reconciliation sends it right after its
/// commit) halts an invoice's dunning, before any `invoice.paid` exists; one that does
/// not decode changes nothing and the next one still works.
#[sqlx::test(migrations = false)]
async fn a_settlement_signal_halts_dunning_before_invoice_paid_exists(pool: PgPool) {
    // No reconciliation here: the signal is sent by hand.
    let w = World::new(&pool, Services::CORE).await;
    w.invoice(invoice("NF-S", 1)).await;
    w.invoice(invoice("NF-T", 2)).await;
    let planned = "SELECT count(*) FROM scheduler.invoices WHERE invoice_id IN ('NF-S', 'NF-T') AND next_at IS NOT NULL";
    eventually("both planned", Duration::from_secs(30), || async {
        (w.count(planned).await == 2).then_some(())
    })
    .await;
    let client = w.js.client();
    let subject = subjects::settled(TENANT);
    client
        .publish(subject.clone(), "not json".into())
        .await
        .unwrap();
    let settled_at: chrono::DateTime<chrono::Utc> = "2026-12-02T18:00:00Z".parse().unwrap();
    let signal = regua_contract::signals::InvoiceSettled {
        invoice_id: "NF-S".into(),
        payment_id: "PAY-S".into(),
        settled_at,
        event_id: uuid::Uuid::now_v7(),
    };
    client
        .publish(subject, serde_json::to_vec(&signal).unwrap().into())
        .await
        .unwrap();
    client.flush().await.unwrap();
    let halted = "SELECT count(*) FROM scheduler.halts WHERE tenant = 'acme' AND invoice_id = 'NF-S' AND by_halt";
    eventually(
        "NF-S halted by its signal",
        Duration::from_secs(30),
        || async { (w.count(halted).await == 1).then_some(()) },
    )
    .await;
    let recorded: chrono::DateTime<chrono::Utc> =
        sqlx::query_scalar("SELECT settled_at FROM scheduler.halts WHERE invoice_id = 'NF-S'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(recorded, settled_at);
    assert!(w.events("invoice.paid").await.is_empty());
    assert_eq!(
        w.count("SELECT count(*) FROM scheduler.halts").await,
        1,
        "only the signalled invoice is halted"
    );
    // At the steps' instant a claim takes NF-T only: NF-S, still open for the in-order
    // consumer (no invoice.paid), is halted.
    let mut conn = pool.acquire().await.unwrap();
    let keys = [
        (TENANT.to_owned(), "NF-S".to_owned()),
        (TENANT.to_owned(), "NF-T".to_owned()),
    ];
    let invoices = regua_scheduler::model::load_invoices(&mut conn, &keys)
        .await
        .unwrap();
    assert!(
        invoices
            .values()
            .all(|i| i.status == regua_scheduler::model::Status::Open)
    );
    let due = invoices.values().filter_map(|i| i.next_at).max().unwrap();
    let fired = w.claim_as_replica(due).await;
    assert_eq!(fired, 1, "NF-T is taken, NF-S is not");
    // Of the two invoices due, the claim took one (NF-T); NF-S still waits, untaken.
    let after = regua_scheduler::model::load_invoices(&mut conn, &keys)
        .await
        .unwrap();
    assert_eq!(after[&keys[0]].next_at, Some(due), "NF-S was not taken");
}

/// After a partial payment the régua goes on, and its next message states what is
/// left, not the original amount.
#[sqlx::test(migrations = false)]
async fn after_a_partial_payment_the_next_message_states_the_balance(pool: PgPool) {
    let fakes = FakeProviders::start().await.unwrap();
    let w = World::with(&pool, Services::ALL, |c| fakes.configure(c)).await;
    w.invoice(invoice("NF-H", 1)).await;
    let mut p = payment("PAY-H", 10_000);
    p["invoice_id"] = json!("NF-H");
    p["paid_at"] = json!("2026-12-02T10:00:00-03:00");
    let (_, out) = w.post("payments", p).await;
    assert_eq!(out["settled"], false, "{out}");
    eventually(
        "the scheduler to learn of it",
        Duration::from_secs(30),
        || async {
            let n = w.count("SELECT count(*) FROM scheduler.payments").await;
            (n == 1).then_some(())
        },
    )
    .await;
    // D-3 at 10:00 São Paulo: the reminder, for R$ 59,90 (159,90 − 100,00).
    let (status, _) = w
        .post("clock:advance", json!({ "to": "2026-12-07T14:00:00Z" }))
        .await;
    assert_eq!(status, 202);
    let sent = eventually("the reminder", Duration::from_secs(60), || async {
        let s = fakes.meta.sent();
        (s.len() == 1).then_some(s)
    })
    .await;
    let params = sent[0].params();
    assert_eq!(params[1], "R$ 59,90", "{params:?}");
}
