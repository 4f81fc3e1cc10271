//! Each service as its own `regua` process (intake, scheduler, reconcile, the WhatsApp
//! dispatcher), scraped at `/metrics` before and during an end-to-end run: on a
//! test-clock tenant, an invoice in over HTTP, its reminder sent, paid, the thank-you
//! sent; on a real-clock tenant, an invoice paid at once (the payment → cancel
//! latency). Every named series is on its service's page, and it moved.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::disallowed_methods
)]

mod common;

use std::collections::HashMap;
use std::time::Duration;

use regua_testkit::fakes::{self, FakeProviders};
use regua_testkit::{NatsServer, eventually, free_port, invoice};
use serde_json::{Value, json};
use sqlx::PgPool;

const ADMIN: &str = "metrics-admin-token-0123456789";

struct Service {
    url: String,
    _child: tokio::process::Child,
}

fn spawn(args: &[&str], nats: &str, db: &str, f: &FakeProviders, port: u16) -> Service {
    let url = format!("http://127.0.0.1:{port}");
    let child = common::regua(args, nats, db)
        .env("REGUA_HTTP_ADDR", format!("127.0.0.1:{port}"))
        .env("REGUA_PUBLIC_URL", &url)
        .env("REGUA_ADMIN_TOKEN", ADMIN)
        .env("REGUA_SCHEDULER_POLL_MS", "50")
        .env("REGUA_WHATSAPP_API_BASE", f.meta.base())
        .env("REGUA_WHATSAPP_TOKEN", fakes::WA_TOKEN)
        .env("REGUA_WHATSAPP_PHONE_NUMBER_ID", fakes::WA_PHONE_NUMBER_ID)
        .env("REGUA_WHATSAPP_APP_SECRET", fakes::WA_APP_SECRET)
        .env("REGUA_WHATSAPP_VERIFY_TOKEN", fakes::WA_VERIFY_TOKEN)
        .spawn()
        .unwrap();
    Service { url, _child: child }
}

/// The sum of `name`'s samples whose labels include `labels`, if any sample matches.
fn value(page: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut total = None;
    for line in page.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, v)) = line.rsplit_once(' ') else {
            continue;
        };
        let (n, l) = series.split_once('{').unwrap_or((series, ""));
        if n != name {
            continue;
        }
        if labels
            .iter()
            .all(|(k, want)| l.contains(&format!("{k}=\"{want}\"")))
        {
            *total.get_or_insert(0.0) += v.parse::<f64>().unwrap();
        }
    }
    total
}

async fn scrape(http: &reqwest::Client, s: &Service) -> String {
    let r = http.get(format!("{}/metrics", s.url)).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    r.text().await.unwrap()
}

#[sqlx::test(migrations = false)]
async fn every_service_exposes_its_series_and_they_move(pool: PgPool) {
    let server = NatsServer::start().await;
    let base = std::env::var("DATABASE_URL").unwrap();
    let base = base.rsplit_once('/').unwrap().0;
    let db = format!("{base}/{}", pool.connect_options().get_database().unwrap());
    let f = FakeProviders::start().await.unwrap();
    let http = reqwest::Client::new();
    let mut services = HashMap::new();
    for (name, args) in [
        ("intake", &["intake"][..]),
        ("scheduler", &["scheduler"][..]),
        ("reconcile", &["reconcile"][..]),
        ("dispatch", &["dispatch", "whatsapp"][..]),
    ] {
        let s = spawn(args, &server.url(), &db, &f, free_port());
        // One at a time: each migrates its schema on start.
        eventually(
            &format!("{name} ready"),
            Duration::from_secs(60),
            || async {
                let r = http.get(format!("{}/readyz", s.url)).send().await;
                r.is_ok_and(|r| r.status() == 200).then_some(())
            },
        )
        .await;
        if name == "dispatch" {
            f.webhooks_to(&s.url);
        }
        services.insert(name, s);
    }
    let before: HashMap<&str, String> = {
        let mut m = HashMap::new();
        for (name, s) in &services {
            m.insert(*name, scrape(&http, s).await);
        }
        m
    };
    assert_eq!(
        value(&before["intake"], "regua_intake_messages_total", &[]).unwrap_or(0.0),
        0.0
    );

    let mut keys = HashMap::new();
    for (id, tenant) in [
        (
            "sim",
            regua_testkit::test_clock_tenant("sim", "2026-12-01T03:00:00Z"),
        ),
        ("live", regua_testkit::tenant("live")),
    ] {
        let key =
            regua_testkit::create_tenant(&http, &services["intake"].url, ADMIN, &tenant).await;
        keys.insert(id, key);
    }
    let call = |service: &str, tenant: &str, path: &str, body: Option<Value>| {
        let url = format!("{}/v1/tenants/{tenant}/{path}", services[service].url);
        let req = match body {
            Some(b) => http.post(url).json(&b),
            None => http.get(url),
        }
        .bearer_auth(&keys[tenant]);
        async move {
            let r = req.send().await.unwrap();
            (
                r.status().as_u16(),
                r.json::<Value>().await.unwrap_or(Value::Null),
            )
        }
    };

    // Intake: one accepted, one rejected (a bad amount).
    let (s, _) = call("intake", "sim", "invoices", Some(invoice("NF-M", 1))).await;
    assert_eq!(s, 202);
    let mut bad = invoice("NF-BAD", 2);
    bad["amount_cents"] = json!(-5);
    let (s, _) = call("intake", "sim", "invoices", Some(bad)).await;
    assert_eq!(s, 422);
    eventually("the plan", Duration::from_secs(30), || async {
        (call("scheduler", "sim", "invoices/NF-M/plan", None).await.0 == 200).then_some(())
    })
    .await;
    eventually(
        "reconciliation to know it",
        Duration::from_secs(30),
        || async { (call("reconcile", "sim", "invoices/NF-M", None).await.0 == 200).then_some(()) },
    )
    .await;
    let advance = |to: &'static str| {
        regua_testkit::advance_clock(&http, &services["scheduler"].url, "sim", &keys["sim"], to)
    };
    advance("2026-12-07T14:00:00Z").await;
    eventually("the reminder", Duration::from_secs(30), || async {
        (f.meta.sent().len() == 1).then_some(())
    })
    .await;
    let pay = |id: &str, invoice: &str, at: &str| {
        json!({"payment_id": id, "invoice_id": invoice, "amount_cents": 15_990,
               "currency": "BRL", "paid_at": at, "method": "pix"})
    };
    let (s, out) = call(
        "reconcile",
        "sim",
        "payments",
        Some(pay("PAY-M", "NF-M", "2026-12-07T15:00:00-03:00")),
    )
    .await;
    assert!(s < 300 && out["settled"] == true, "{s} {out}");
    advance("2027-01-10T14:00:00Z").await;
    eventually("the thank-you", Duration::from_secs(30), || async {
        (f.meta.sent().len() == 2).then_some(())
    })
    .await;

    // A real-clock tenant's invoice, paid at once: the payment → cancel latency.
    let mut live = invoice("NF-LIVE", 3);
    live["due_date"] = json!("2031-01-10");
    live["issued_on"] = json!("2030-12-01");
    let (s, out) = call("intake", "live", "invoices", Some(live)).await;
    assert_eq!(s, 202, "{out}");
    eventually(
        "reconciliation to know NF-LIVE",
        Duration::from_secs(30),
        || async {
            (call("reconcile", "live", "invoices/NF-LIVE", None).await.0 == 200).then_some(())
        },
    )
    .await;
    eventually(
        "the scheduler to know NF-LIVE",
        Duration::from_secs(30),
        || async {
            (call("scheduler", "live", "invoices/NF-LIVE/plan", None)
                .await
                .0
                == 200)
                .then_some(())
        },
    )
    .await;
    let now = chrono::Utc::now().to_rfc3339();
    let (s, out) = call(
        "reconcile",
        "live",
        "payments",
        Some(pay("PAY-L", "NF-LIVE", &now)),
    )
    .await;
    assert!(s < 300 && out["settled"] == true, "{s} {out}");

    // The sampled gauges refresh every 5 s; the latency needs the scheduler's apply.
    let pages: HashMap<&str, String> = eventually("every series", Duration::from_secs(30), || {
        let (http, services) = (&http, &services);
        async move {
            let mut m = HashMap::new();
            for (name, s) in services {
                m.insert(*name, scrape(http, s).await);
            }
            let ready = value(
                &m["scheduler"],
                "regua_payment_to_cancel_seconds_count",
                &[],
            )
            .is_some_and(|n| n >= 1.0)
                && value(&m["dispatch"], "regua_jetstream_consumer_pending", &[]).is_some()
                && value(&m["intake"], "regua_outbox_depth", &[]).is_some();
            ready.then_some(m)
        }
    })
    .await;
    let at_least = |service: &str, name: &str, labels: &[(&str, &str)], n: f64| {
        let v = value(&pages[service], name, labels);
        assert!(
            v.is_some_and(|v| v >= n),
            "{service}: {name}{labels:?} = {v:?}, expected >= {n}\n{}",
            pages[service]
        );
    };
    let present = |service: &str, name: &str, labels: &[(&str, &str)]| {
        assert!(
            value(&pages[service], name, labels).is_some(),
            "{service}: no {name}{labels:?}\n{}",
            pages[service]
        );
    };
    // Intake.
    at_least(
        "intake",
        "regua_intake_messages_total",
        &[("outcome", "accepted")],
        2.0,
    );
    at_least(
        "intake",
        "regua_intake_messages_total",
        &[("outcome", "rejected"), ("code", "amount_not_positive")],
        1.0,
    );
    at_least("intake", "regua_intake_batch_size_count", &[], 1.0);
    at_least("intake", "regua_intake_batch_seconds_count", &[], 1.0);
    present(
        "intake",
        "regua_jetstream_consumer_pending",
        &[("consumer", "intake")],
    );
    present(
        "intake",
        "regua_jetstream_consumer_ack_pending",
        &[("consumer", "intake")],
    );
    present(
        "intake",
        "regua_outbox_depth",
        &[("outbox", "intake.outbox")],
    );
    // Scheduler.
    at_least(
        "scheduler",
        "regua_scheduler_steps_total",
        &[("outcome", "sent")],
        2.0,
    );
    at_least(
        "scheduler",
        "regua_scheduler_fire_lateness_seconds_count",
        &[],
        1.0,
    );
    at_least(
        "scheduler",
        "regua_payment_to_cancel_seconds_count",
        &[],
        1.0,
    );
    present("scheduler", "regua_scheduler_due_backlog", &[]);
    // The only scheduler holds its in-order consumers' leases.
    for lease in ["in-order/scheduler", "in-order/scheduler-timeline"] {
        at_least("scheduler", "regua_lease_held", &[("lease", lease)], 1.0);
    }
    present(
        "scheduler",
        "regua_jetstream_consumer_pending",
        &[("consumer", "scheduler")],
    );
    present(
        "scheduler",
        "regua_outbox_depth",
        &[("outbox", "scheduler.outbox")],
    );
    // Dispatch.
    at_least(
        "dispatch",
        "regua_dispatch_sends_total",
        &[("channel", "whatsapp"), ("outcome", "sent")],
        2.0,
    );
    at_least(
        "dispatch",
        "regua_dispatch_provider_seconds_count",
        &[("channel", "whatsapp")],
        2.0,
    );
    at_least(
        "dispatch",
        "regua_dispatch_rate_limit_wait_seconds_count",
        &[],
        2.0,
    );
    present(
        "dispatch",
        "regua_jetstream_consumer_pending",
        &[("stream", "REGUA_CMD"), ("consumer", "dispatch-whatsapp")],
    );
    present(
        "dispatch",
        "regua_outbox_depth",
        &[("outbox", "dispatch.outbox")],
    );
    // Reconciliation.
    at_least(
        "reconcile",
        "regua_reconcile_payments_total",
        &[("result", "paid")],
        2.0,
    );
    present(
        "reconcile",
        "regua_jetstream_consumer_pending",
        &[("consumer", "reconcile")],
    );
    present(
        "reconcile",
        "regua_outbox_depth",
        &[("outbox", "reconcile.outbox")],
    );

    // Each page is its own service's: no one else's series.
    assert!(value(&pages["intake"], "regua_dispatch_sends_total", &[]).is_none());
    assert!(value(&pages["dispatch"], "regua_intake_messages_total", &[]).is_none());
    // Bounded labels: no tenant or invoice id anywhere.
    for (name, page) in &pages {
        for id in ["NF-M", "NF-LIVE", "PAY-M", "sim\"", "live\""] {
            assert!(!page.contains(id), "{name}'s metrics name {id}");
        }
    }
}
