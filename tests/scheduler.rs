//! The régua end to end, on a test-clock tenant: invoices enter through the intake
//! subjects, the clock is advanced day by day over two months, and the dispatch
//! commands that appear in `REGUA_CMD` are exactly the ones the plan preview announced,
//! at the announced instants. Also: policy versions with and without `migrate_open`,
//! the stop on payment with its one thank-you, and a scheduler killed mid-advance.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::disallowed_methods
)]

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use chrono::{DateTime, TimeDelta, Utc};
use regua::{Platform, Services};
use regua_contract::commands::DispatchCommand;
use regua_contract::{TenantId, subjects};
use regua_platform::{Config, SystemClock, nats};
use regua_scheduler::{fire, model};
use regua_testkit::{NatsServer, eventually, invoice};
use serde_json::{Value, json};
use sqlx::PgPool;

mod common;

use common::ADMIN;

const START: &str = "2026-12-01T03:00:00Z";

fn config(nats_url: &str, pool: &PgPool) -> Config {
    Config {
        scheduler_batch_size: 50,
        ..common::config(nats_url, pool)
    }
}

/// The platform in a runtime of its own, so a test can kill it outright.
struct Running {
    rt: Option<tokio::runtime::Runtime>,
    addr: SocketAddr,
}

impl Running {
    /// No drain: tasks stop mid-work, transactions are cut, acks never sent.
    fn kill(mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

async fn start(config: &Config) -> Running {
    start_services(config, Services::CORE).await
}

async fn start_services(config: &Config, services: Services) -> Running {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel();
    let config = config.clone();
    rt.spawn(async move {
        let platform = Platform::start(&config, Arc::new(SystemClock), services)
            .await
            .unwrap();
        tx.send(platform.addr).unwrap();
        std::future::pending::<()>().await;
        drop(platform);
    });
    let addr = rx.await.unwrap();
    Running { rt: Some(rt), addr }
}

struct World {
    server: NatsServer,
    config: Config,
    js: jetstream::Context,
    http: reqwest::Client,
    running: Option<Running>,
    key: String,
    tenant: String,
}

impl World {
    async fn new(pool: &PgPool, tenant: &str) -> World {
        let server = NatsServer::start().await;
        let config = config(&server.url(), pool);
        let running = start(&config).await;
        let client = nats::connect(&server.url(), "test").await.unwrap();
        let mut w = World {
            js: nats::jetstream(client),
            server,
            config,
            http: reqwest::Client::new(),
            running: Some(running),
            key: String::new(),
            tenant: tenant.to_owned(),
        };
        let mut body = regua_testkit::tenant(tenant);
        body["test_clock"] = json!(true);
        body["now"] = json!(START);
        let r = w
            .http
            .post(format!("{}/v1/tenants", w.base()))
            .bearer_auth(ADMIN)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
        let created: Value = r.json().await.unwrap();
        w.key = created["api_key"].as_str().unwrap().to_owned();
        // The scheduler learns of the tenant from `tenant.created`.
        eventually(
            "the scheduler to know the tenant",
            Duration::from_secs(30),
            || async { (w.get("clock").await.0 == 200).then_some(()) },
        )
        .await;
        w
    }

    fn base(&self) -> String {
        format!("http://{}", self.running.as_ref().unwrap().addr)
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        let r = self
            .http
            .get(format!("{}/v1/tenants/{}/{path}", self.base(), self.tenant))
            .bearer_auth(&self.key)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    async fn send(&self, method: reqwest::Method, path: &str, body: String) -> (u16, Value) {
        let r = self
            .http
            .request(
                method,
                format!("{}/v1/tenants/{}/{path}", self.base(), self.tenant),
            )
            .bearer_auth(&self.key)
            .body(body)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    async fn publish_invoices(&self, invoices: &[Value]) {
        let tenant = TenantId::parse(&self.tenant).unwrap();
        let subject = subjects::inbound(&tenant, regua_contract::InboundKind::InvoiceUpsert);
        for inv in invoices {
            self.js
                .publish(subject.clone(), serde_json::to_vec(inv).unwrap().into())
                .await
                .unwrap()
                .await
                .unwrap();
        }
    }

    /// The plans of `invoices`, once every one of them is planned (a plan accounts for
    /// the customer's other invoices).
    async fn plans(&self, invoices: &[Value]) -> BTreeMap<String, Value> {
        for inv in invoices {
            self.plan(inv["invoice_id"].as_str().unwrap()).await;
        }
        let mut plans = BTreeMap::new();
        for inv in invoices {
            let id = inv["invoice_id"].as_str().unwrap().to_owned();
            plans.insert(id.clone(), self.plan(&id).await);
        }
        plans
    }

    async fn plan(&self, invoice_id: &str) -> Value {
        eventually(
            "the invoice to be planned",
            Duration::from_secs(60),
            || async {
                let (status, body) = self.get(&format!("invoices/{invoice_id}/plan")).await;
                (status == 200).then_some(body)
            },
        )
        .await
    }

    /// Advances the test clock to `to` and waits until every due step fired and its
    /// commands are published.
    async fn advance(&self, to: DateTime<Utc>) {
        self.start_advance(to).await;
        self.ready(to).await;
    }

    /// Asks for the test clock to advance to `to`, without waiting for it.
    async fn start_advance(&self, to: DateTime<Utc>) {
        let (status, body) = self
            .send(
                reqwest::Method::POST,
                "clock:advance",
                json!({ "to": to.to_rfc3339() }).to_string(),
            )
            .await;
        assert_eq!(status, 202, "{body}");
    }

    async fn ready(&self, to: DateTime<Utc>) {
        eventually(
            "the clock to be ready",
            Duration::from_secs(120),
            || async {
                let (_, c) = self.get("clock").await;
                let now: Option<DateTime<Utc>> = c["now"].as_str().and_then(|s| s.parse().ok());
                (c["status"] == "ready" && now == Some(to)).then_some(())
            },
        )
        .await;
    }

    async fn commands(&self) -> Vec<(Option<String>, DispatchCommand)> {
        regua_testkit::read_work_queue(&self.js, subjects::STREAM_COMMANDS)
            .await
            .into_iter()
            .map(|(_, id, body)| (id, serde_json::from_value(body).unwrap()))
            .collect()
    }
}

fn start_instant() -> DateTime<Utc> {
    START.parse().unwrap()
}

/// (invoice, step, instant, channel) of every message.
type Sent = BTreeSet<(String, String, DateTime<Utc>, String)>;

fn announced(plans: &BTreeMap<String, Value>) -> Sent {
    let mut out = Sent::new();
    for (id, plan) in plans {
        for s in plan["steps"].as_array().unwrap() {
            if s["expected"] == "send" && s["action"] == "notify" {
                out.insert((
                    id.clone(),
                    s["step"].as_str().unwrap().to_owned(),
                    s["send_at"].as_str().unwrap().parse().unwrap(),
                    s["channel"].as_str().unwrap().to_owned(),
                ));
            }
        }
    }
    out
}

fn dispatched(commands: &[(Option<String>, DispatchCommand)]) -> Sent {
    let mut out = Sent::new();
    for (_, c) in commands {
        for inv in &c.invoices {
            out.insert((
                inv.invoice_id.clone(),
                c.step.clone(),
                c.scheduled_for,
                c.channel.as_str().to_owned(),
            ));
        }
    }
    out
}

/// Equal sets, or a failure listing (the first) differences only.
fn assert_same(expected: &Sent, actual: &Sent) {
    let missing: Vec<_> = expected.difference(actual).take(20).collect();
    let extra: Vec<_> = actual.difference(expected).take(20).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "{} announced, {} dispatched\nmissing {missing:#?}\nextra {extra:#?}",
        expected.len(),
        actual.len()
    );
}

fn assert_no_duplicate_commands(commands: &[(Option<String>, DispatchCommand)]) {
    let mut ids = BTreeSet::new();
    let mut msg_ids = BTreeSet::new();
    for (msg_id, c) in commands {
        assert!(
            ids.insert(c.command_id.clone()),
            "command {} twice",
            c.command_id
        );
        assert!(msg_ids.insert(msg_id.clone().unwrap()), "Nats-Msg-Id twice");
    }
}

fn portfolio() -> Vec<Value> {
    let mut out = Vec::new();
    // Due dates: weekdays, a Saturday, a Sunday, Christmas (Friday), New Year (Friday),
    // and Carnaval 2027 (Monday 8 Feb, beyond the two months: only its reminder lands).
    let dues = [
        "2026-12-08",
        "2026-12-10",
        "2026-12-12",
        "2026-12-13",
        "2026-12-17",
        "2026-12-25",
        "2027-01-01",
        "2027-01-06",
        "2027-01-15",
        "2027-02-08",
    ];
    for (n, due) in dues.iter().enumerate() {
        let mut inv = invoice(&format!("NF-{n}"), n as u64 + 1);
        inv["due_date"] = json!(due);
        out.push(inv);
    }
    // E-mail only (no phone): the step's first usable channel wins.
    let mut inv = invoice("NF-email-only", 50);
    inv["customer"].as_object_mut().unwrap().remove("phone");
    inv["customer"]["whatsapp_opt_in"] = json!(false);
    inv["due_date"] = json!("2026-12-09");
    out.push(inv);
    // Unreachable: every notify step is skipped with a reason, nothing is sent.
    let mut inv = invoice("NF-unreachable", 51);
    inv["customer"].as_object_mut().unwrap().remove("phone");
    inv["customer"].as_object_mut().unwrap().remove("email");
    inv["due_date"] = json!("2026-12-09");
    out.push(inv);
    // Two invoices of one customer due the same day: one message lists both.
    for id in ["NF-twin-a", "NF-twin-b"] {
        let mut inv = invoice(id, 60);
        inv["due_date"] = json!("2026-12-16");
        out.push(inv);
    }
    out
}

#[sqlx::test(migrations = false)]
async fn a_test_clock_fires_exactly_what_the_preview_announced(pool: PgPool) {
    let w = World::new(&pool, "relogio").await;
    let invoices = portfolio();
    w.publish_invoices(&invoices).await;
    let plans = w.plans(&invoices).await;
    let expected = announced(&plans);
    assert!(
        expected.len() > 30,
        "the portfolio announces many messages: {expected:?}"
    );
    // Respect: nothing announced outside Mon-Fri 08-20 / Sat 08-14 in São Paulo.
    for (_, _, at, _) in &expected {
        let local = at.with_timezone(&chrono_tz::America::Sao_Paulo);
        assert!(
            regua_domain::window::SendWindow::default().contains(
                *at,
                chrono_tz::America::Sao_Paulo,
                &Default::default()
            ),
            "{local}"
        );
    }
    let unreachable = &plans["NF-unreachable"]["steps"];
    assert!(
        unreachable
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["expected"] != "send")
    );

    // Two months, day by day.
    let end = start_instant() + TimeDelta::days(62);
    for day in 1..=62 {
        w.advance(start_instant() + TimeDelta::days(day)).await;
    }
    let expected: Sent = expected
        .into_iter()
        .filter(|(_, _, at, _)| *at <= end)
        .collect();
    let commands = w.commands().await;
    assert_no_duplicate_commands(&commands);
    let actual = dispatched(&commands);
    let missing: Vec<_> = expected.difference(&actual).collect();
    let extra: Vec<_> = actual.difference(&expected).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "missing {missing:#?}\nextra {extra:#?}"
    );

    // The twins share each message.
    let twin_messages: Vec<_> = commands
        .iter()
        .filter(|(_, c)| c.invoices.len() == 2)
        .collect();
    assert!(!twin_messages.is_empty());
    assert!(
        twin_messages
            .iter()
            .all(|(_, c)| c.recipient.customer_id == "C-60")
    );
    // Every command identifies the creditor (CDC art. 42-A) and stays in its window.
    for (_, c) in &commands {
        assert_eq!(c.creditor.cnpj, "11222333000181");
        assert!(c.scheduled_for < c.not_after);
    }
    // The escalation after the written notice was emitted for the December invoices.
    let escalated = regua_testkit::read_stream(
        &w.js,
        subjects::STREAM_EVENTS,
        "regua.v1.evt.relogio.invoice.escalated",
    )
    .await;
    assert!(!escalated.is_empty());
    // The preview after the fact shows the history.
    let after = w.plan("NF-0").await;
    let states: Vec<&str> = after["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["state"].as_str().unwrap())
        .collect();
    assert!(
        states.contains(&"sent") && states.contains(&"escalated"),
        "{states:?}"
    );
    drop(w.running);
}

const CUSTOM_V1: &str = r#"
applies_to: {tags: [vip]}
steps:
  - {name: antes, at: D-2, time: "10:00", notify: {channels: [email], template: lembrete_vencimento}}
  - {name: depois, at: D+2, time: "10:00", notify: {channels: [email], template: aviso_atraso}}
on_paid: {channels: [email], template: agradecimento}
"#;

const CUSTOM_V2: &str = r#"
applies_to: {tags: [vip]}
steps:
  - {name: antes, at: D-2, time: "10:00", notify: {channels: [email], template: lembrete_vencimento}}
  - {name: no_dia, at: D0, time: "11:00", notify: {channels: [email], template: vence_hoje}}
  - {name: depois, at: D+4, time: "10:00", notify: {channels: [email], template: aviso_atraso}}
on_paid: {channels: [email], template: agradecimento}
"#;

fn vip(id: &str, n: u64, due: &str) -> Value {
    let mut inv = invoice(id, n);
    inv["tags"] = json!(["vip"]);
    inv["due_date"] = json!(due);
    inv
}

fn steps_of(
    commands: &[(Option<String>, DispatchCommand)],
    invoice_id: &str,
) -> Vec<(String, u32)> {
    commands
        .iter()
        .filter(|(_, c)| c.invoices.iter().any(|i| i.invoice_id == invoice_id))
        .map(|(_, c)| (c.step.clone(), c.policy_version))
        .collect()
}

#[sqlx::test(migrations = false)]
async fn policy_versions_with_and_without_migrate_open(pool: PgPool) {
    let w = World::new(&pool, "versoes").await;
    // A bad policy gets field-level errors.
    let (status, body) = w
        .send(
            reqwest::Method::PUT,
            "policies/vip",
            "steps:\n  - {name: x, at: D+1, escalate: {level: negativacao}}\n".into(),
        )
        .await;
    assert_eq!(status, 422);
    assert_eq!(body["errors"][0]["field"], "steps[0].escalate", "{body}");

    let (status, v1) = w
        .send(reqwest::Method::PUT, "policies/vip", CUSTOM_V1.into())
        .await;
    assert_eq!(status, 201, "{v1}");
    // Simulation: the same plan shape, nothing stored.
    let (status, sim) = w
        .send(
            reqwest::Method::POST,
            "policies/vip:simulate",
            json!({ "invoice": vip("SIM", 9, "2026-12-12") }).to_string(),
        )
        .await;
    assert_eq!(status, 200, "{sim}");
    let sim_steps: Vec<(&str, &str)> = sim["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["step"].as_str().unwrap(), s["send_at"].as_str().unwrap()))
        .collect();
    // Due Saturday 12th: D-2 is Thursday 10th at 10:00; D+2 counts from Monday 14th.
    assert_eq!(
        sim_steps,
        vec![
            ("antes", "2026-12-10T13:00:00Z"),
            ("depois", "2026-12-16T13:00:00Z")
        ]
    );
    assert_eq!(sim["effective_due_date"], "2026-12-14");
    assert_eq!(
        w.get("invoices/SIM/plan").await.0,
        404,
        "a simulation stores nothing"
    );
    let (status, bad) = w
        .send(
            reqwest::Method::POST,
            "policies/vip:simulate",
            json!({ "invoice": {"invoice_id": "X"} }).to_string(),
        )
        .await;
    assert_eq!(status, 422, "{bad}");
    let (status, _) = w
        .send(
            reqwest::Method::POST,
            "clock:advance",
            json!({ "to": "2026-11-01T00:00:00Z" }).to_string(),
        )
        .await;
    assert_eq!(status, 422, "the clock never moves back");
    // Tenant routes take the tenant's own key: none is 401, another tenant's is 404.
    let url = format!("{}/v1/tenants/versoes/policies/vip", w.base());
    assert_eq!(w.http.get(&url).send().await.unwrap().status(), 401);
    let mut other = regua_testkit::tenant("outro");
    other["test_clock"] = json!(true);
    let created: Value = w
        .http
        .post(format!("{}/v1/tenants", w.base()))
        .bearer_auth(ADMIN)
        .json(&other)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let other_key = created["api_key"].as_str().unwrap();
    assert_eq!(
        w.http
            .get(&url)
            .bearer_auth(other_key)
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
    w.publish_invoices(&[vip("A", 1, "2026-12-10"), vip("B", 2, "2026-12-10")])
        .await;
    assert_eq!(w.plan("A").await["policy"], "vip");
    // Past A's and B's first step.
    w.advance("2026-12-09T12:00:00Z".parse().unwrap()).await;

    // v2 without migrate_open: A and B keep v1.
    let (status, v2) = w
        .send(reqwest::Method::PUT, "policies/vip", CUSTOM_V2.into())
        .await;
    assert_eq!((status, v2["version"].clone()), (200, json!(2)));
    assert_eq!(w.plan("A").await["policy_version"], 1);
    // A new invoice starts on v2.
    w.publish_invoices(&[vip("C", 3, "2026-12-17")]).await;
    assert_eq!(w.plan("C").await["policy_version"], 2);

    // v3 = v2's steps with migrate_open: B moves, its sent step is not doubled.
    let (status, v3) = w
        .send(
            reqwest::Method::PUT,
            "policies/vip?migrate_open=true",
            CUSTOM_V2.into(),
        )
        .await;
    assert_eq!(
        (status, v3["version"].clone(), v3["migrated"].clone()),
        (200, json!(3), json!(3)),
        "{v3}"
    );
    let b = w.plan("B").await;
    assert_eq!(b["policy_version"], 3);
    let b_steps: Vec<(&str, &str)> = b["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["step"].as_str().unwrap(), s["state"].as_str().unwrap()))
        .collect();
    assert_eq!(
        b_steps,
        vec![
            ("antes", "sent"),
            ("no_dia", "pending"),
            ("depois", "pending")
        ]
    );

    w.advance("2026-12-31T12:00:00Z".parse().unwrap()).await;
    let commands = w.commands().await;
    assert_no_duplicate_commands(&commands);
    assert_eq!(
        steps_of(&commands, "B"),
        vec![
            ("antes".into(), 1),
            ("no_dia".into(), 3),
            ("depois".into(), 3)
        ]
    );
    assert_eq!(
        steps_of(&commands, "C"),
        vec![
            ("antes".into(), 3),
            ("no_dia".into(), 3),
            ("depois".into(), 3)
        ]
    );
    // The other v1 invoice was migrated too (migrate_open moves every open one).
    assert_eq!(
        steps_of(&commands, "A"),
        vec![
            ("antes".into(), 1),
            ("no_dia".into(), 3),
            ("depois".into(), 3)
        ]
    );
    let depois_b = commands
        .iter()
        .find(|(_, c)| c.step == "depois" && c.invoices[0].invoice_id == "B")
        .unwrap();
    assert_eq!(
        depois_b.1.scheduled_for.to_rfc3339(),
        "2026-12-14T13:00:00+00:00",
        "D+4 of the v3 plan, 10:00 in São Paulo"
    );
    drop(w.running);
}

#[sqlx::test(migrations = false)]
async fn payment_stops_the_regua_and_thanks_once(pool: PgPool) {
    let w = World::new(&pool, "pago").await;
    w.publish_invoices(&[vip("P", 1, "2026-12-10")]).await;
    assert_eq!(w.plan("P").await["policy"], "padrao");
    let (status, _) = w
        .send(reqwest::Method::PUT, "policies/vip", CUSTOM_V1.into())
        .await;
    assert_eq!(status, 201);
    w.publish_invoices(&[vip("Q", 2, "2026-12-10")]).await;
    let plan = w.plan("Q").await;
    assert_eq!(plan["policy"], "vip");
    w.advance("2026-12-09T12:00:00Z".parse().unwrap()).await;
    // Reconciliation's event (its service comes later), published as it will be.
    let envelope = json!({
        "id": "019ab2c3-d4e5-7f00-8000-0000000000aa",
        "type": "invoice.paid",
        "version": 1,
        "occurred_at": "2026-12-09T12:00:00Z",
        "tenant": "pago",
        "correlation_id": "pay-1",
        "causation_id": "pay-1",
        "data": {"invoice_id": "Q", "customer_id": "C-2", "paid_at": "2026-12-09T12:00:00Z", "amount_paid_cents": 15990, "currency": "BRL", "days_late": 0}
    });
    // P's customer opts out of WhatsApp (the dispatchers' webhooks will emit this).
    let opted_out = json!({
        "id": "019ab2c3-d4e5-7f00-8000-0000000000bb",
        "type": "customer.channel_opted_out",
        "version": 1,
        "occurred_at": "2026-12-09T12:00:00Z",
        "tenant": "pago",
        "correlation_id": "optout-1",
        "causation_id": "optout-1",
        "data": {"customer_id": "C-1", "channel": "whatsapp", "source": "whatsapp_reply"}
    });
    w.js.publish(
        subjects::event("pago", regua_contract::EventType::CustomerChannelOptedOut),
        opted_out.to_string().into(),
    )
    .await
    .unwrap()
    .await
    .unwrap();
    for _ in 0..2 {
        // Twice: the second has no effect.
        w.js.publish(
            subjects::event("pago", regua_contract::EventType::InvoicePaid),
            envelope.to_string().into(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    }
    eventually("the régua to stop", Duration::from_secs(30), || async {
        let p = w.plan("Q").await;
        (p["status"] == "paid").then_some(())
    })
    .await;
    let p = w.plan("Q").await;
    let depois = p["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["step"] == "depois")
        .unwrap()
        .clone();
    assert_eq!(
        (depois["state"].as_str(), depois["reason"].as_str()),
        (Some("cancelled"), Some("invoice paid"))
    );
    w.advance("2026-12-31T12:00:00Z".parse().unwrap()).await;
    let commands = w.commands().await;
    assert_eq!(
        steps_of(&commands, "Q"),
        vec![("antes".into(), 1), ("on_paid".into(), 1)]
    );
    let thanks = commands.iter().find(|(_, c)| c.step == "on_paid").unwrap();
    assert_eq!(thanks.1.kind, regua_contract::commands::CommandKind::Thanks);
    // P (padrao) is untouched by Q's payment; after the opt-out its messages fall back
    // from WhatsApp to the step's next channel.
    assert!(
        steps_of(&commands, "P").len() >= 3,
        "{:#?}",
        steps_of(&commands, "P")
    );
    let p_channels: Vec<(&str, &str)> = commands
        .iter()
        .filter(|(_, c)| c.invoices[0].invoice_id == "P")
        .map(|(_, c)| (c.step.as_str(), c.channel.as_str()))
        .collect();
    assert_eq!(
        p_channels[0],
        ("lembrete", "whatsapp"),
        "before the opt-out"
    );
    assert!(
        p_channels[1..].iter().all(|(_, ch)| *ch != "whatsapp"),
        "{p_channels:?}"
    );
    drop(w.running);
}

#[sqlx::test(migrations = false)]
async fn a_scheduler_killed_mid_advance_loses_and_doubles_nothing(pool: PgPool) {
    let mut w = World::new(&pool, "queda").await;
    let invoices: Vec<Value> = (0..240u64)
        .map(|n| {
            let mut inv = invoice(&format!("K-{n}"), n + 1);
            inv["due_date"] = json!(format!("2026-12-{:02}", 8 + n % 20));
            inv
        })
        .collect();
    w.publish_invoices(&invoices).await;
    let plans = w.plans(&invoices).await;
    let expected = announced(&plans);
    let target = start_instant() + TimeDelta::days(60);
    let (status, _) = w
        .send(
            reqwest::Method::POST,
            "clock:advance",
            json!({ "to": target.to_rfc3339() }).to_string(),
        )
        .await;
    assert_eq!(status, 202);
    eventually(
        "the advance to be mid-way",
        Duration::from_secs(120),
        || async {
            let n = w.commands().await.len();
            (n >= expected.len() / 4).then_some(())
        },
    )
    .await;
    w.running.take().unwrap().kill();
    let at_kill = w.commands().await.len();
    assert!(
        at_kill < expected.len(),
        "the kill must land mid-advance ({at_kill} of {})",
        expected.len()
    );

    w.running = Some(start(&w.config).await);
    w.ready(target).await;
    let commands = w.commands().await;
    assert_no_duplicate_commands(&commands);
    assert_same(&expected, &dispatched(&commands));
    drop(w.server);
}

#[sqlx::test(migrations = false)]
async fn two_scheduler_replicas_fire_each_step_once(pool: PgPool) {
    let w = World::new(&pool, "replicas").await;
    // A second process running only the scheduler, on the same broker and database.
    let second = start_services(&w.config, Services::SCHEDULER).await;
    let invoices: Vec<Value> = (0..200u64)
        .map(|n| {
            // Ten invoices per customer, due on nearby days: caps and merges across
            // replicas are exercised.
            let mut inv = invoice(&format!("R-{n}"), n / 10 + 1);
            inv["due_date"] = json!(format!("2026-12-{:02}", 8 + n % 5));
            inv
        })
        .collect();
    w.publish_invoices(&invoices).await;
    let plans = w.plans(&invoices).await;
    let expected = announced(&plans);
    let target = start_instant() + TimeDelta::days(45);
    for day in [7, 14, 21, 30, 45] {
        w.advance(start_instant() + TimeDelta::days(day)).await;
    }
    let commands = w.commands().await;
    assert_no_duplicate_commands(&commands);
    let expected: Sent = expected
        .into_iter()
        .filter(|(_, _, at, _)| *at <= target)
        .collect();
    assert_same(&expected, &dispatched(&commands));
    // The caps held per customer: at most one message a day (São Paulo).
    let mut per_day: BTreeMap<(String, chrono::NaiveDate), usize> = BTreeMap::new();
    for (_, c) in &commands {
        let day = c
            .scheduled_for
            .with_timezone(&chrono_tz::America::Sao_Paulo)
            .date_naive();
        *per_day
            .entry((c.recipient.customer_id.clone(), day))
            .or_default() += 1;
    }
    assert!(per_day.values().all(|n| *n == 1), "{per_day:?}");
    second.kill();
}

#[sqlx::test(migrations = false)]
async fn a_malformed_event_is_dead_lettered_and_blocks_nothing(pool: PgPool) {
    let w = World::new(&pool, "veneno").await;
    let subject = subjects::event("veneno", regua_contract::EventType::InvoiceOpened);
    let poison = json!({
        "id": "019ab2c3-d4e5-7f00-8000-0000000000cc",
        "type": "invoice.opened",
        "version": 1,
        "occurred_at": "2026-12-01T03:00:00Z",
        "tenant": "veneno",
        "correlation_id": "x",
        "causation_id": "x",
        "data": {"invoice": {"invoice_id": 42}}
    });
    w.js.publish(subject, poison.to_string().into())
        .await
        .unwrap()
        .await
        .unwrap();
    // What comes after it is still planned.
    w.publish_invoices(&[invoice("DEPOIS", 1)]).await;
    assert_eq!(w.plan("DEPOIS").await["policy"], "padrao");
    let dead = eventually("the dead letter", Duration::from_secs(30), || async {
        let d = regua_testkit::read_stream(
            &w.js,
            subjects::STREAM_DEAD_LETTER,
            "regua.v1.dlq.scheduler.>",
        )
        .await;
        (!d.is_empty()).then_some(d)
    })
    .await;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].0, "regua.v1.dlq.scheduler.veneno");
    assert_eq!(
        dead[0].2["data"]["invoice"]["invoice_id"], 42,
        "the original payload, unchanged"
    );
}

/// The in-order event consumer never writes an invoice back over a firing claim's
/// decision. The test plays the claim: it holds the customer's lock (as a claim does)
/// and, in the same transaction, moves the invoice past its first step (what the claim
/// writes once it fired it), while an update of the invoice is published. The
/// consumer waits for the "claim" to commit before it reads the invoice, so the update
/// keeps the progress: the first step is neither fired nor logged a second time.
#[sqlx::test(migrations = false)]
async fn an_event_never_writes_an_invoice_over_a_firing_claim(pool: PgPool) {
    let w = World::new(&pool, "claim").await;
    let inv = invoice("NF-C", 1);
    w.publish_invoices(std::slice::from_ref(&inv)).await;
    w.plan("NF-C").await;
    let customer = inv["customer"]["customer_id"].as_str().unwrap().to_owned();
    let step = "SELECT next_step FROM scheduler.invoices WHERE invoice_id = 'NF-C'";
    let first: i32 = sqlx::query_scalar(step).fetch_one(&pool).await.unwrap();

    let mut claim = pool.begin().await.unwrap();
    hold_lock(&mut claim, &fire::customer_lock("claim", &customer)).await;
    sqlx::query(
        "UPDATE scheduler.invoices SET next_step = next_step + 1 WHERE invoice_id = 'NF-C'",
    )
    .execute(&mut *claim)
    .await
    .unwrap();
    let mut updated = inv.clone();
    updated["amount_cents"] = json!(inv["amount_cents"].as_i64().unwrap() + 100);
    w.publish_invoices(&[updated]).await;
    // The consumer has reached the update and waits (on the customer lock; without it,
    // on the row, having read the invoice as it was before the claim).
    lock_waited("the consumer to wait", &pool, "%").await;
    claim.commit().await.unwrap();

    let amount =
        "SELECT (state->>'amount_cents')::bigint FROM scheduler.invoices WHERE invoice_id = 'NF-C'";
    let want = inv["amount_cents"].as_i64().unwrap() + 100;
    eventually("the update applied", Duration::from_secs(30), || async {
        let now: i64 = sqlx::query_scalar(amount).fetch_one(&pool).await.unwrap();
        (now == want).then_some(())
    })
    .await;
    let after: i32 = sqlx::query_scalar(step).fetch_one(&pool).await.unwrap();
    assert_eq!(after, first + 1, "the claim's progress survives the update");
}

/// A claim reads its invoices without row locks; what keeps it off an invoice a policy
/// migration is re-planning is the tenant's schedule lock, which the migration holds
/// exclusively and every claim takes shared. The test plays the migration: it holds
/// that lock and, in the same transaction, moves the invoice past its first step and
/// far later (what a migration writes), while the clock crosses the first step. The
/// claim waits for the migration to commit before it reads the invoice, so the first
/// step is neither fired nor written back over the migration's progress.
#[sqlx::test(migrations = false)]
async fn a_claim_waits_for_a_policy_migration(pool: PgPool) {
    let w = World::new(&pool, "mig").await;
    let inv = invoice("NF-M", 1);
    w.publish_invoices(std::slice::from_ref(&inv)).await;
    let plan = w.plan("NF-M").await;
    let first_at: DateTime<Utc> = plan["steps"][0]["send_at"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let step = "SELECT next_step FROM scheduler.invoices WHERE invoice_id = 'NF-M'";
    let first: i32 = sqlx::query_scalar(step).fetch_one(&pool).await.unwrap();

    let mut migration = pool.begin().await.unwrap();
    hold_lock(&mut migration, &fire::schedule_lock("mig")).await;
    sqlx::query(
        "UPDATE scheduler.invoices SET next_step = next_step + 1, next_at = next_at + interval '100 days' \
         WHERE invoice_id = 'NF-M'",
    )
    .execute(&mut *migration)
    .await
    .unwrap();
    let to = first_at + TimeDelta::minutes(1);
    w.start_advance(to).await;
    // The claim has found the invoice due (as committed before the migration) and waits
    // on the schedule lock.
    lock_waited("a claim to wait", &pool, "advisory").await;
    migration.commit().await.unwrap();
    w.ready(to).await;

    let logged: i64 =
        sqlx::query_scalar("SELECT count(*) FROM scheduler.step_log WHERE invoice_id = 'NF-M'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(logged, 0, "no decision on the migrated invoice's old step");
    assert!(
        steps_of(&w.commands().await, "NF-M").is_empty(),
        "no command for the old step"
    );
    let after: i32 = sqlx::query_scalar(step).fetch_one(&pool).await.unwrap();
    assert_eq!(
        after,
        first + 1,
        "the migration's progress survives the claim"
    );
}

/// A claim writes its invoices back at the rows it read them from. Were one moved
/// in between (a writer that skipped the claim's locks), the write-back must fail, so
/// the claim rolls back, rather than skip that invoice and commit the rest.
#[sqlx::test(migrations = false)]
async fn a_write_back_refuses_an_invoice_whose_row_moved(pool: PgPool) {
    let w = World::new(&pool, "moved").await;
    let inv = invoice("NF-V", 1);
    w.publish_invoices(std::slice::from_ref(&inv)).await;
    w.plan("NF-V").await;
    let read = format!(
        "SELECT {}, ctid::text AS row_id FROM scheduler.invoices WHERE invoice_id = 'NF-V'",
        model::INVOICE_COLUMNS
    );
    let row = sqlx::query(sqlx::AssertSqlSafe(read))
        .fetch_one(&pool)
        .await
        .unwrap();
    let mut claimed = model::Invoice::from_row(&row).unwrap();
    let row_id: String = sqlx::Row::try_get(&row, "row_id").unwrap();
    let step = "SELECT next_step FROM scheduler.invoices WHERE invoice_id = 'NF-V'";
    let first: i32 = sqlx::query_scalar(step).fetch_one(&pool).await.unwrap();

    // Another writer moves the row (an update writes a new version elsewhere).
    sqlx::query(
        "UPDATE scheduler.invoices SET next_step = next_step + 5 WHERE invoice_id = 'NF-V'",
    )
    .execute(&pool)
    .await
    .unwrap();

    claimed.progress.next += 1;
    let mut conn = pool.acquire().await.unwrap();
    let err = model::save_progress(&mut conn, &[(&claimed, row_id.as_str())])
        .await
        .expect_err("a moved row is refused");
    assert!(
        matches!(
            err,
            model::SaveError::Moved {
                expected: 1,
                updated: 0
            }
        ),
        "{err}"
    );
    let after: i32 = sqlx::query_scalar(step).fetch_one(&pool).await.unwrap();
    assert_eq!(after, first + 5, "the other writer's progress stands");
}

/// Takes the scheduler's advisory lock `name` in `tx`, until it ends.
async fn hold_lock(tx: &mut sqlx::PgConnection, name: &str) {
    fire::take_locks(tx, vec![name.to_owned()], fire::LockMode::Exclusive)
        .await
        .unwrap();
}

/// Waits until another session of this database waits on a heavyweight lock whose
/// wait event is `like` (`advisory`, or `%` for any).
async fn lock_waited(what: &str, pool: &PgPool, like: &str) {
    eventually(what, Duration::from_secs(30), || async {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() \
             AND wait_event_type = 'Lock' AND wait_event LIKE $1 AND pid <> pg_backend_pid()",
        )
        .bind(like)
        .fetch_one(pool)
        .await
        .unwrap();
        (waiting > 0).then_some(())
    })
    .await;
}
