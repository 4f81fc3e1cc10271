//! The stop-on-payment race, end to end on real NATS and Postgres with every service
//! running: 10,000 invoices on a test clock each have a step due at T; the clock is
//! advanced to T (the scheduler fires 10,000 commands, the WhatsApp dispatchers send
//! them to the fake Cloud API) while 10,000 payments arrive at random real moments
//! within two seconds after R, the moment the first step's message reaches the provider
//! (the firing of all 10,000 takes a few seconds, so each payment lands within a second
//! or two of its own step's firing, before or after it). The fake records the wall-clock arrival of every call.
//!
//! Must hold: no dunning call reached the provider after the settlement of its invoice
//! was taken (the fence's `settled_at`, read after the exclusive lock and before the
//! commit, so the check is if anything stricter than "after the commit"). Reported:
//! the distribution of settlement → all pending steps stopped in the schedule (the
//! halt, or the in-order consumer if it got there first), and of settlement → the
//! in-order consumer applying `invoice.paid` in full.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::disallowed_methods,
    clippy::print_stdout
)]

mod common;

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use rand::Rng;
use regua::Services;
use regua_contract::{InboundKind, TenantId, subjects};
use regua_platform::nats;
use regua_testkit::fakes::FakeProviders;
use regua_testkit::{NatsServer, cpf, eventually};
use serde_json::{Value, json};
use sqlx::PgPool;

use common::{ADMIN, Running};

const TENANT: &str = "race";
const START: &str = "2026-12-01T03:00:00Z";
/// `padrao`'s first step: D-3 at 10:00 in São Paulo for invoices due 2026-12-10.
const T: &str = "2026-12-07T13:00:00Z";

fn count() -> usize {
    std::env::var("REGUA_RACE_INVOICES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000)
}

fn phone(n: usize) -> String {
    format!("+55119{n:08}")
}

fn invoice(n: usize) -> Value {
    json!({
        "invoice_id": format!("NF-{n}"),
        "customer": {
            "customer_id": format!("C-{n}"),
            "name": format!("Cliente {n}"),
            "document": cpf(n as u64),
            "phone": phone(n),
            "whatsapp_opt_in": true,
        },
        "amount_cents": 15_990,
        "issued_on": "2026-11-01",
        "due_date": "2026-12-10",
    })
}

async fn count_sql(pool: &PgPool, sql: &str) -> i64 {
    sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_owned()))
        .fetch_one(pool)
        .await
        .unwrap_or(-1)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

/// The stream's own timestamp of each event on `subject`, by event id.
async fn stored_at(
    js: &async_nats::jetstream::Context,
    subject: &str,
    n: usize,
) -> HashMap<String, DateTime<Utc>> {
    use futures::StreamExt;
    let stream = js.get_stream(subjects::STREAM_EVENTS).await.unwrap();
    let consumer = stream
        .create_consumer(async_nats::jetstream::consumer::pull::OrderedConfig {
            filter_subject: subject.to_owned(),
            ..Default::default()
        })
        .await
        .unwrap();
    let mut msgs = consumer.messages().await.unwrap();
    let mut out = HashMap::new();
    while out.len() < n {
        let Ok(Some(Ok(m))) = tokio::time::timeout(Duration::from_secs(5), msgs.next()).await
        else {
            break;
        };
        let body: Value = serde_json::from_slice(&m.payload).unwrap_or(Value::Null);
        let published = m.info().map(|i| i.published).unwrap();
        let at = DateTime::<Utc>::from_timestamp_nanos(
            i64::try_from(published.unix_timestamp_nanos()).unwrap(),
        );
        out.insert(body["id"].as_str().unwrap_or("").to_owned(), at);
    }
    out
}

#[sqlx::test(migrations = false)]
async fn no_dunning_call_starts_after_the_settling_payment_commits(pool: PgPool) {
    let n = count();
    let server = NatsServer::start().await;
    let fakes = FakeProviders::start().await.unwrap();
    let mut config = common::config(&server.url(), &pool);
    let port = regua_testkit::free_port();
    config.http_addr = format!("127.0.0.1:{port}").parse().unwrap();
    config.public_url = format!("http://127.0.0.1:{port}");
    config.db_max_connections = 24;
    config.scheduler_batch_size = 500;
    fakes.configure(&mut config);
    config.dispatch.email_rate = 0;
    config.dispatch.sms_rate = 0;
    config.dispatch.whatsapp_rate = 0;
    config.dispatch.batch_size = 128;
    let _running = Running::start(&config, Services::ALL).await;
    let base = config.public_url.clone();
    let http = reqwest::Client::new();
    let js = nats::jetstream(nats::connect(&server.url(), "race").await.unwrap());

    let mut body = regua_testkit::tenant(TENANT);
    body["test_clock"] = json!(true);
    body["now"] = json!(START);
    let r = http
        .post(format!("{base}/v1/tenants"))
        .bearer_auth(ADMIN)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let key = r.json::<Value>().await.unwrap()["api_key"]
        .as_str()
        .unwrap()
        .to_owned();
    let tenant_url = |p: &str| format!("{base}/v1/tenants/{TENANT}/{p}");

    for chunk in (0..n).collect::<Vec<_>>().chunks(1000) {
        let invoices: Vec<Value> = chunk.iter().map(|&i| invoice(i)).collect();
        let r = http
            .post(tenant_url("invoices:batch"))
            .bearer_auth(&key)
            .json(&json!({ "invoices": invoices }))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    let n64 = i64::try_from(n).unwrap();
    eventually(
        "every invoice planned and known to reconciliation",
        Duration::from_secs(300),
        || async {
            let planned = count_sql(
                &pool,
                "SELECT count(*) FROM scheduler.invoices WHERE next_at IS NOT NULL",
            )
            .await;
            let known = count_sql(&pool, "SELECT count(*) FROM reconcile.invoices").await;
            (planned == n64 && known == n64).then_some(())
        },
    )
    .await;

    // The race. The advance to T is asked for; R is the moment the first step's message
    // reaches the provider, and the scheduler is then firing all 10,000 (which takes a
    // few seconds). Payments arrive at R + U(0, 2 s): each lands within a second or two
    // of its own step's firing, some before it, some while its command is in a
    // dispatcher's hands, some after. (Payments published before the firing starts
    // would only delay it: the scheduler applies waiting events before it fires.)
    let t: DateTime<Utc> = T.parse().unwrap();
    let subject = subjects::inbound(
        &TenantId::parse(TENANT).unwrap(),
        InboundKind::PaymentReceived,
    );
    let mut offsets: Vec<(usize, u64)> = {
        let mut rng = rand::rng();
        (0..n).map(|i| (i, rng.random_range(0..=2000))).collect()
    };
    offsets.sort_by_key(|(_, ms)| *ms);
    // Settlement signals as they arrive (a plain subscriber, beside the scheduler's
    // queue group), to show where the time goes: settlement -> signalled -> halted.
    let signalled = {
        use futures::StreamExt;
        let mut sub = js
            .client()
            .subscribe(subjects::settled_any_tenant())
            .await
            .unwrap();
        tokio::spawn(async move {
            let mut at = HashMap::new();
            while at.len() < n {
                let Ok(Some(m)) = tokio::time::timeout(Duration::from_secs(30), sub.next()).await
                else {
                    break;
                };
                let now = Utc::now();
                let sig: Value = serde_json::from_slice(&m.payload).unwrap_or(Value::Null);
                at.insert(sig["invoice_id"].as_str().unwrap_or("").to_owned(), now);
            }
            at
        })
    };
    let r = http
        .post(tenant_url("clock:advance"))
        .bearer_auth(&key)
        .json(&json!({ "to": T }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    eventually(
        "the first step to fire",
        Duration::from_secs(120),
        || async { (fakes.meta.requests() > 0).then_some(()) },
    )
    .await;
    let r0 = tokio::time::Instant::now();
    let publisher = {
        let js = js.clone();
        tokio::spawn(async move {
            let mut acks = Vec::with_capacity(offsets.len());
            for (i, ms) in offsets {
                tokio::time::sleep_until(r0 + Duration::from_millis(ms)).await;
                let body = json!({
                    "payment_id": format!("PAY-{i}"),
                    "invoice_id": format!("NF-{i}"),
                    "amount_cents": 15_990,
                    "paid_at": (t + TimeDelta::seconds(1)).to_rfc3339(),
                    "method": "pix",
                });
                acks.push(
                    js.publish(subject.clone(), serde_json::to_vec(&body).unwrap().into())
                        .await
                        .unwrap(),
                );
                if acks.len() >= 500 {
                    for a in acks.drain(..) {
                        a.await.unwrap();
                    }
                }
            }
            for a in acks {
                a.await.unwrap();
            }
        })
    };
    publisher.await.unwrap();

    eventually(
        "every payment settled",
        Duration::from_secs(300),
        || async {
            let settled = count_sql(&pool, "SELECT count(*) FROM fence.settled").await;
            (settled == n64).then_some(())
        },
    )
    .await;
    eventually(
        "the scheduler to apply every invoice.paid",
        Duration::from_secs(300),
        || async {
            let paid = count_sql(
                &pool,
                "SELECT count(*) FROM scheduler.invoices WHERE status = 'paid'",
            )
            .await;
            (paid == n64).then_some(())
        },
    )
    .await;
    eventually("every fired command to be settled by a dispatcher", Duration::from_secs(300), || async {
        let open = count_sql(&pool, "SELECT count(*) FROM dispatch.attempts WHERE state IN ('pending', 'sending', 'retry')").await;
        let stream = js.get_stream(subjects::STREAM_COMMANDS).await.ok()?;
        let mut stream = stream;
        let left = stream.info().await.ok()?.state.messages;
        (open == 0 && left == 0).then_some(())
    })
    .await;

    // The check: every dunning call against its invoice's settlement.
    let settled: HashMap<String, DateTime<Utc>> = sqlx::query_as::<_, (String, DateTime<Utc>)>(
        "SELECT invoice_id, settled_at FROM fence.settled WHERE tenant = $1",
    )
    .bind(TENANT)
    .fetch_all(&pool)
    .await
    .unwrap()
    .into_iter()
    .collect();
    let by_phone: HashMap<String, String> = (0..n)
        .map(|i| {
            (
                phone(i).trim_start_matches('+').to_owned(),
                format!("NF-{i}"),
            )
        })
        .collect();
    let calls = fakes.meta.sent();
    let mut dunning = 0;
    let mut before = 0;
    let mut late = Vec::new();
    for c in &calls {
        // The thank-you (template `regua_agradecimento`) is meant to follow the payment.
        if c.template_name().contains("agradecimento") {
            continue;
        }
        dunning += 1;
        let invoice = by_phone
            .get(c.to.trim_start_matches('+'))
            .unwrap_or_else(|| panic!("a call to an unknown number {}", c.to));
        let s = settled[invoice];
        if c.received_at >= s {
            late.push((invoice.clone(), c.received_at, s));
        } else {
            before += 1;
        }
    }
    let skipped = count_sql(
        &pool,
        "SELECT count(*) FROM dispatch.attempts WHERE step = 'lembrete' AND state = 'skipped' AND reason = 'invoice_closed'",
    )
    .await;
    let cancelled_before_firing = n64
        - count_sql(
            &pool,
            "SELECT count(DISTINCT command_id) FROM dispatch.attempts WHERE step = 'lembrete'",
        )
        .await;

    // Latency: settlement → the invoice's pending steps stopped in the schedule
    // (`scheduler.halts`: by the halt, or by the in-order consumer if it got there
    // first); and settlement → invoice.paid applied in full. One row per settlement:
    // its invoice.paid event, settled, applied in full, stopped, by the halt.
    type Settled = (
        uuid::Uuid,
        DateTime<Utc>,
        DateTime<Utc>,
        DateTime<Utc>,
        bool,
        String,
    );
    let rows: Vec<Settled> = sqlx::query_as(
        "SELECT a.invoice_paid_event, a.settled_at, p.processed_at, h.halted_at, h.by_halt, a.invoice_id \
         FROM reconcile.applications a JOIN scheduler.processed p ON p.event_id = a.invoice_paid_event \
         JOIN scheduler.halts h ON h.tenant = a.tenant AND h.invoice_id = a.invoice_id",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    let ms = |d: TimeDelta| d.num_microseconds().unwrap_or(0) as f64 / 1000.0;
    let halted = rows.iter().filter(|r| r.4).count();
    let mut lat: Vec<f64> = rows.iter().map(|(_, s, _, h, ..)| ms(*h - *s)).collect();
    lat.sort_by(f64::total_cmp);
    let mut full: Vec<f64> = rows.iter().map(|(_, s, p, ..)| ms(*p - *s)).collect();
    full.sort_by(f64::total_cmp);
    // Where that time goes: settlement → the event stored in REGUA_EVT (the outbox
    // relay), stored → halted, and stored → applied (the in-order consumer).
    let stored = stored_at(&js, "regua.v1.evt.race.invoice.paid", n).await;
    let by_event: HashMap<String, _> = rows
        .iter()
        .map(|(id, s, p, h, by_halt, _)| (id.to_string(), (*s, *p, by_halt.then_some(*h))))
        .collect();
    let mut relay = Vec::new();
    let mut consume = Vec::new();
    let mut halt = Vec::new();
    for (id, at) in &stored {
        if let Some((settled, processed, halted)) = by_event.get(id) {
            relay.push(ms(*at - *settled));
            consume.push(ms(*processed - *at));
            if let Some(h) = halted {
                halt.push(ms(*h - *at));
            }
        }
    }
    relay.sort_by(f64::total_cmp);
    consume.sort_by(f64::total_cmp);
    halt.sort_by(f64::total_cmp);
    let signalled = signalled.await.unwrap();
    let (mut to_signal, mut signal_to_halt) = (Vec::new(), Vec::new());
    for (_, s, _, h, _, invoice) in &rows {
        if let Some(at) = signalled.get(invoice) {
            to_signal.push(ms(*at - *s));
            signal_to_halt.push(ms(*h - *at));
        }
    }
    to_signal.sort_by(f64::total_cmp);
    signal_to_halt.sort_by(f64::total_cmp);
    println!(
        "  settlement signals seen: {}; settlement -> signal received, ms: p50 {:.1}, p99 {:.1}; signal -> halted, ms: p50 {:.1}, p99 {:.1}",
        to_signal.len(),
        percentile(&to_signal, 0.5),
        percentile(&to_signal, 0.99),
        percentile(&signal_to_halt, 0.5),
        percentile(&signal_to_halt, 0.99),
    );
    println!(
        "  of which settlement -> stored in REGUA_EVT, ms: p50 {:.1}, p99 {:.1}; stored -> halted, ms: p50 {:.1}, p99 {:.1}; \
         stored -> applied in full, ms: p50 {:.1}, p99 {:.1}",
        percentile(&relay, 0.5),
        percentile(&relay, 0.99),
        percentile(&halt, 0.5),
        percentile(&halt, 0.99),
        percentile(&consume, 0.5),
        percentile(&consume, 0.99),
    );
    println!(
        "race: {n} invoices; {dunning} dunning calls reached the provider, all {before} before their invoice's settlement; \
         {skipped} commands refused by the fence or guard; {cancelled_before_firing} steps cancelled before firing"
    );
    println!(
        "settlement -> all pending steps stopped in the schedule, ms: p50 {:.1}, p90 {:.1}, p99 {:.1}, max {:.1} \
         (n = {}; {halted} by the halt, the rest by the in-order consumer)",
        percentile(&lat, 0.5),
        percentile(&lat, 0.9),
        percentile(&lat, 0.99),
        lat.last().copied().unwrap_or(f64::NAN),
        lat.len()
    );
    println!(
        "settlement -> invoice.paid applied in full (history, step log, thank-you), ms: p50 {:.1}, p99 {:.1}",
        percentile(&full, 0.5),
        percentile(&full, 0.99),
    );
    assert!(
        late.is_empty(),
        "{} dunning calls reached the provider after their invoice was settled, e.g. {:?}",
        late.len(),
        &late[..late.len().min(5)]
    );
    assert_eq!(lat.len(), n, "every settlement reached the scheduler");
    // The race was real: some messages went out before payment, some were stopped.
    assert!(
        dunning > 0 && skipped + cancelled_before_firing > 0,
        "no race happened"
    );
}
