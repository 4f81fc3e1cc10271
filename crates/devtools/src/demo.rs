//! `regua-demo`: creates a demo tenant on a test clock and loads a realistic portfolio
//! through the public NATS subjects, exactly as an integrator would, reports intake's
//! outcomes, then advances the tenant's clock day by day over two months and prints
//! what the régua decided and sent per day and channel.
//!
//! Simulated customers pay through `payment.received`, each as its cohort does: some
//! the day after their first reminder, some only after the firm second notice, some on
//! the due date, some in part (and some of those the rest later), some never. Amounts
//! are what reconciliation says is due that day (fine and interest included). The
//! demo ends with the recovered amount, the recovery rate, messages per channel, the
//! thank-yous, and a check that no dunning message went out after a payment.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use async_nats::jetstream::message::PublishMessage;
use chrono::{DateTime, Days, NaiveDate, TimeDelta, Utc};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use regua_contract::{InboundKind, TenantId, subjects};
use regua_domain::document::{example_cnpj, example_cpf};
use regua_intake::Intake;
use regua_intake::tenants::{self, CreateTenantError};
use regua_platform::{Clock, Config, SystemClock, db, nats};
use serde_json::{Value, json};

use crate::say;

#[derive(clap::Args)]
pub struct DemoArgs {
    /// Tenant to create (if missing) and load.
    #[arg(long, default_value = "demo")]
    tenant: String,
    /// How many valid invoices to publish.
    #[arg(long, default_value_t = 1000)]
    invoices: usize,
    /// Where the tenant's API key is kept between runs.
    #[arg(long, default_value = ".regua-demo/demo.key")]
    key_file: PathBuf,
    /// How long to wait for every outcome.
    #[arg(long, default_value_t = 120)]
    wait_secs: u64,
    /// Days to advance the tenant's test clock.
    #[arg(long, default_value_t = 60)]
    days: u32,
}

const FIRST: &[&str] = &[
    "Maria",
    "José",
    "Ana",
    "João",
    "Francisca",
    "Antônio",
    "Adriana",
    "Carlos",
    "Juliana",
    "Paulo",
    "Márcia",
    "Lucas",
    "Fernanda",
    "Rafael",
    "Patrícia",
];
const LAST: &[&str] = &[
    "Silva",
    "Santos",
    "Oliveira",
    "Souza",
    "Rodrigues",
    "Ferreira",
    "Alves",
    "Pereira",
    "Lima",
    "Gomes",
    "Costa",
    "Ribeiro",
];
const COMPANIES: &[&str] = &[
    "Padaria Pão Quente Ltda",
    "Oficina Dois Irmãos ME",
    "Mercadinho Bom Preço Ltda",
    "Studio Bela Forma EIRELI",
    "Transportes Rápido Sul SA",
];
const ZONES: &[&str] = &[
    "America/Sao_Paulo",
    "America/Sao_Paulo",
    "America/Sao_Paulo",
    "America/Manaus",
    "America/Recife",
    "America/Cuiaba",
];
const CHANNELS: &[&str] = &["whatsapp", "sms", "email"];
const SEGMENTS: &[&str] = &["varejo", "pme", "premium"];

fn pick<'a>(rng: &mut StdRng, from: &[&'a str]) -> &'a str {
    from[rng.random_range(0..from.len())]
}

/// A customer; one in six is a company.
fn customer(rng: &mut StdRng, n: u64) -> Value {
    let company = n % 6 == 5;
    let name = if company {
        pick(rng, COMPANIES).to_owned()
    } else {
        format!(
            "{} {} {}",
            pick(rng, FIRST),
            pick(rng, LAST),
            pick(rng, LAST)
        )
    };
    let mut c = json!({
        "customer_id": format!("CLI-{n:05}"),
        "name": name,
        "document": if company { example_cnpj(10_000_000 + n) } else { example_cpf(100_000_000 + n * 7919) },
        "email": format!("cliente{n}@example.com"),
        "phone": format!("+55{}9{:08}", rng.random_range(11..=99u32).to_string().replace('0', "1"), rng.random_range(0..100_000_000u32)),
        "whatsapp_opt_in": rng.random_bool(0.7),
        "preferred_channel": pick(rng, CHANNELS),
        "segment": pick(rng, SEGMENTS),
    });
    let zone = pick(rng, ZONES);
    if zone != "America/Sao_Paulo" {
        c["timezone"] = json!(zone);
    }
    c
}

fn invoice(rng: &mut StdRng, i: usize, today: NaiveDate, customer: Value) -> Value {
    let due = if rng.random_bool(0.5) {
        today
            .checked_add_days(Days::new(rng.random_range(0..=30)))
            .unwrap_or(today)
    } else {
        today
            .checked_sub_days(Days::new(rng.random_range(1..=45)))
            .unwrap_or(today)
    };
    let issued = due.checked_sub_days(Days::new(30)).unwrap_or(due);
    let company = customer["document"].as_str().is_some_and(|d| d.len() == 14);
    let amount: i64 = rng.random_range(2_990..=250_000);
    let id = format!("DEMO-{i:06}");
    json!({
        "invoice_id": id,
        "revision": 1,
        "customer": customer,
        "amount_cents": amount,
        "currency": "BRL",
        "issued_on": issued.to_string(),
        "due_date": due.to_string(),
        "description": format!("Fatura {}/{}", due.format("%m"), due.format("%Y")),
        "reference": format!("TX{i:06}"),
        "payment": {
            "pix_copy_paste": format!("00020126580014br.gov.bcb.pix0136demo-{i:06}5204000053039865802BR5909REGUA DEMO6009SAO PAULO6304ABCD"),
            "boleto_line": format!("34191.79001 01043.510047 91020.150008 1 {:014}", amount),
            "payment_url": format!("https://pay.example.com/{id}"),
        },
        "late_fee": if company { json!({"fine_bps": 1000, "monthly_interest_bps": 200}) } else { json!({"fine_bps": 200, "monthly_interest_bps": 100}) },
        "tags": [if company { "b2b" } else { "b2c" }],
    })
}

/// Three invoices that intake must reject, to show `intake.rejected`.
fn bad_invoices(today: NaiveDate, rng: &mut StdRng) -> Vec<Value> {
    let c = customer(rng, 1);
    let mut negative = invoice(rng, 900_001, today, c);
    negative["amount_cents"] = json!(-500);
    let c = customer(rng, 2);
    let mut bad_cpf = invoice(rng, 900_002, today, c);
    bad_cpf["customer"]["document"] = json!("123.456.789-00");
    bad_cpf["customer"]["customer_id"] = json!("CLI-BAD");
    let c = customer(rng, 3);
    let mut fine = invoice(rng, 900_003, today, c);
    fine["customer"]["document"] = json!(example_cpf(424_242_424));
    fine["customer"]["customer_id"] = json!("CLI-FINE");
    fine["late_fee"]["fine_bps"] = json!(1000);
    vec![negative, bad_cpf, fine]
}

pub async fn run(config: &Config, args: DemoArgs) -> anyhow::Result<()> {
    let tenant = TenantId::parse(&args.tenant).map_err(|e| anyhow::anyhow!("--tenant: {e}"))?;
    db::ensure_database(config.database_url.expose()).await?;
    let pool = db::connect(config.database_url.expose(), 4).await?;
    Intake::migrate(&pool).await?;
    regua_scheduler::Scheduler::migrate(&pool).await?;
    regua_dispatch::Dispatcher::migrate(&pool).await?;
    regua_reconcile::Reconcile::migrate(&pool).await?;
    let run_started = SystemClock.now();
    // The demo tenant lives on a test clock that starts at local midnight today; a
    // second run continues from wherever the clock is.
    let midnight = SystemClock
        .now()
        .date_naive()
        .and_hms_opt(3, 0, 0)
        .unwrap_or_default()
        .and_utc();
    let clock_now: Option<DateTime<Utc>> =
        sqlx::query_scalar("SELECT clock_now FROM scheduler.tenants WHERE id = $1")
            .bind(tenant.as_str())
            .fetch_optional(&pool)
            .await?
            .flatten();
    let now = clock_now.unwrap_or(midnight);

    let body = json!({
        "id": tenant.as_str(),
        "legal_name": "Regua Demo Telecom Ltda",
        "cnpj": "11.222.333/0001-81",
        "address": "Av. Paulista, 1000, Bela Vista, São Paulo - SP, 01310-100",
        "contact": "0800 000 0000 · cobranca@demo.example.com",
        "test_clock": true,
        "now": now.to_rfc3339(),
    });
    let new = tenants::validate_new_tenant(&body)
        .map_err(|i| anyhow::anyhow!("demo tenant: {:?}", i.errors))?;
    match tenants::create_tenant(&pool, now, new, None).await {
        Ok(created) => {
            if let Some(dir) = args.key_file.parent() {
                std::fs::create_dir_all(dir)?;
            }
            std::fs::write(&args.key_file, &created.api_key)
                .with_context(|| format!("writing {}", args.key_file.display()))?;
            say(&format!(
                "created tenant {} (API key in {})",
                tenant,
                args.key_file.display()
            ));
        }
        Err(CreateTenantError::Exists(_)) => {
            say(&format!(
                "tenant {tenant} exists (API key in {}, if this machine created it)",
                args.key_file.display()
            ));
        }
        Err(e) => return Err(e.into()),
    }

    let client = nats::connect_as(config, "regua-demo").await?;
    let js = nats::jetstream(client);
    nats::ensure_streams(&js, nats::Streams::of(config)).await?;
    let subject = subjects::inbound(&tenant, InboundKind::InvoiceUpsert);
    let mut rng = StdRng::seed_from_u64(2026);
    let today = now.date_naive();
    // Message ids are unique per run: a second run shows content-level `duplicate`
    // outcomes rather than being swallowed by JetStream's duplicate window.
    let run = run_started.timestamp_millis();
    // About two invoices per customer, as in a real portfolio.
    let customers: Vec<Value> = (0..(args.invoices / 2).max(1) as u64)
        .map(|n| customer(&mut rng, n))
        .collect();
    let mut messages: Vec<(String, Value)> = (0..args.invoices)
        .map(|i| {
            let c = customers[i % customers.len()].clone();
            (
                format!("demo-{tenant}-{run}-{i}"),
                invoice(&mut rng, i, today, c),
            )
        })
        .collect();
    for (k, bad) in bad_invoices(today, &mut rng).into_iter().enumerate() {
        messages.push((format!("demo-{tenant}-{run}-bad-{k}"), bad));
    }
    let mut publishes = Vec::with_capacity(messages.len());
    for (id, body) in &messages {
        let publish = PublishMessage::build()
            .message_id(id.as_str())
            .payload(serde_json::to_vec(body)?.into());
        publishes.push((subject.clone(), publish));
    }
    let acked = nats::publish_windowed(&js, publishes).await?;
    let repeats = acked.iter().filter(|a| a.duplicate).count();
    say(&format!(
        "published {} invoices to {subject} ({repeats} deduplicated by JetStream)",
        messages.len()
    ));

    let ids: Vec<&str> = messages.iter().map(|(id, _)| id.as_str()).collect();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(args.wait_secs);
    let outcomes: Vec<(String, i64)> = loop {
        let rows: Vec<(String, i64)> = sqlx::query_as(
            "SELECT outcome, count(*) FROM intake.messages WHERE tenant = $1 AND message_id = ANY($2) GROUP BY 1 ORDER BY 1",
        )
        .bind(tenant.as_str())
        .bind(&ids)
        .fetch_all(&pool)
        .await?;
        let done: i64 = rows.iter().map(|(_, n)| n).sum();
        if usize::try_from(done).unwrap_or(0) >= ids.len() {
            break rows;
        }
        if tokio::time::Instant::now() > deadline {
            anyhow::bail!(
                "only {done} of {} outcomes after {}s: is `regua all` running?",
                ids.len(),
                args.wait_secs
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let summary: Vec<String> = outcomes.iter().map(|(o, n)| format!("{o} {n}")).collect();
    say(&format!("outcomes: {}", summary.join(", ")));

    let mut by_type: BTreeMap<String, usize> = BTreeMap::new();
    let mut sample = None;
    let events_subject = format!("{}.v1.evt.{tenant}.>", subjects::ROOT);
    let stream = js.get_stream(subjects::STREAM_EVENTS).await?;
    let consumer = stream
        .create_consumer(async_nats::jetstream::consumer::pull::OrderedConfig {
            filter_subject: events_subject.clone(),
            ..Default::default()
        })
        .await?;
    let pending = consumer.cached_info().num_pending;
    let mut seen = 0u64;
    let mut msgs = futures::StreamExt::take(
        consumer.messages().await?,
        usize::try_from(pending).unwrap_or(0),
    );
    while let Ok(Some(Ok(m))) =
        tokio::time::timeout(Duration::from_secs(5), futures::StreamExt::next(&mut msgs)).await
    {
        seen += 1;
        // Only this run's events (the stream keeps earlier runs').
        let body = serde_json::from_slice::<Value>(&m.payload).unwrap_or(Value::Null);
        let occurred = body["occurred_at"]
            .as_str()
            .and_then(|t| t.parse::<DateTime<Utc>>().ok());
        // Events stamped by the test clock can be "in the future": not this run's either.
        if occurred.is_none_or(|t| t < run_started || t > SystemClock.now()) {
            if seen >= pending {
                break;
            }
            continue;
        }
        let kind = m
            .subject
            .as_str()
            .rsplitn(3, '.')
            .take(2)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<Vec<_>>()
            .join(".");
        if kind == "intake.rejected" && sample.is_none() {
            sample = Some(body);
        }
        *by_type.entry(kind).or_default() += 1;
        if seen >= pending {
            break;
        }
    }
    let events: Vec<String> = by_type.iter().map(|(k, n)| format!("{k} {n}")).collect();
    say(&format!(
        "this run's events on {events_subject}: {}",
        events.join(", ")
    ));
    if let Some(s) = sample {
        say(&format!(
            "a rejection, as integrators see it:\n{}",
            serde_json::to_string_pretty(&s["data"]["errors"])?
        ));
    }
    let accepted: Vec<String> = messages
        .iter()
        .filter_map(|(_, b)| b["invoice_id"].as_str().map(str::to_owned))
        .filter(|id| !id.starts_with("DEMO-9"))
        .collect();
    regua_run(
        &pool,
        &js,
        &tenant,
        &accepted,
        now,
        args.days,
        args.wait_secs,
    )
    .await?;
    say(&format!(
        "try: curl -s -H \"Authorization: Bearer $(cat {key})\" http://{addr}/v1/tenants/{tenant}/invoices/DEMO-000001/plan",
        key = args.key_file.display(),
        addr = config.http_addr
    ));
    Ok(())
}

/// Waits until the scheduler has planned the invoices, advances the test clock one day
/// at a time, and prints the régua's decisions per local day and channel.
async fn regua_run(
    pool: &sqlx::PgPool,
    js: &async_nats::jetstream::Context,
    tenant: &TenantId,
    invoice_ids: &[String],
    start: DateTime<Utc>,
    days: u32,
    wait_secs: u64,
) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(wait_secs);
    loop {
        let planned: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM scheduler.invoices WHERE tenant = $1 AND invoice_id = ANY($2)",
        )
        .bind(tenant.as_str())
        .bind(invoice_ids)
        .fetch_one(pool)
        .await?;
        if usize::try_from(planned).unwrap_or(0) >= invoice_ids.len() {
            break;
        }
        if tokio::time::Instant::now() > deadline {
            anyhow::bail!(
                "the scheduler planned only {planned} of {} invoices",
                invoice_ids.len()
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let policy: Vec<(String, i64)> = sqlx::query_as(
        "SELECT policy || ' v' || policy_version, count(*) FROM scheduler.invoices WHERE tenant = $1 AND invoice_id = ANY($2) GROUP BY 1",
    )
    .bind(tenant.as_str())
    .bind(invoice_ids)
    .fetch_all(pool)
    .await?;
    let policy: Vec<String> = policy.iter().map(|(p, n)| format!("{p}: {n}")).collect();
    say(&format!("planned by the scheduler ({})", policy.join(", ")));
    say(&format!(
        "advancing {tenant}'s test clock {days} days from {} (times are São Paulo's):",
        start.format("%Y-%m-%d")
    ));
    say(
        "                  steps sent (per invoice)   | messages at the fake providers |                            | payments",
    );
    say(
        "  day             whatsapp   sms  email     | whatsapp   sms  email  fell back | deferred skipped escalated | paid thanks",
    );
    let mut payers = crate::payers::Payers::new(invoice_ids);
    let mut at = start;
    for _ in 0..days {
        let to = at + TimeDelta::days(1);
        regua_scheduler::clock::advance(pool, tenant.as_str(), to)
            .await
            .map_err(|e| anyhow::anyhow!("advancing the clock: {e}"))?;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(wait_secs);
        loop {
            let status = regua_scheduler::clock::status(pool, tenant.as_str()).await?;
            if status.is_some_and(|s| s.status == "ready" && s.now == to) {
                break;
            }
            if tokio::time::Instant::now() > deadline {
                anyhow::bail!("the clock did not reach {to}: is `regua all` running?");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        wait_dispatched(pool, js, wait_secs).await?;
        let paid_today = payers.pay_day(pool, js, tenant, at).await?;
        payers.wait_applied(pool, tenant, wait_secs).await?;
        let sent: Vec<(String, String, i64)> = sqlx::query_as(
            "SELECT state, channel, count(*) FROM dispatch.attempts WHERE tenant = $1 \
             AND (command->>'scheduled_for')::timestamptz >= $2 AND (command->>'scheduled_for')::timestamptz < $3 GROUP BY 1, 2",
        )
        .bind(tenant.as_str())
        .bind(at)
        .bind(to)
        .fetch_all(pool)
        .await?;
        let at_provider = |state: &str, channel: Option<&str>| -> i64 {
            sent.iter()
                .filter(|(s, c, _)| s == state && channel.is_none_or(|ch| c == ch))
                .map(|(_, _, n)| n)
                .sum()
        };
        let rows: Vec<(String, Option<String>, i64)> = sqlx::query_as(
            "SELECT state, channel, count(*) FROM scheduler.step_log WHERE tenant = $1 AND at >= $2 AND at < $3 GROUP BY 1, 2",
        )
        .bind(tenant.as_str())
        .bind(at)
        .bind(to)
        .fetch_all(pool)
        .await?;
        let count = |state: &str, channel: Option<&str>| -> i64 {
            rows.iter()
                .filter(|(s, c, _)| s == state && (channel.is_none() || c.as_deref() == channel))
                .map(|(_, _, n)| n)
                .sum()
        };
        let day = at
            .with_timezone(&chrono_tz::America::Sao_Paulo)
            .format("%Y-%m-%d %a");
        let thanks: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM dispatch.attempts WHERE tenant = $1 AND step = 'on_paid' AND state = 'sent' \
             AND (command->>'scheduled_for')::timestamptz >= $2 AND (command->>'scheduled_for')::timestamptz < $3",
        )
        .bind(tenant.as_str())
        .bind(at)
        .bind(to)
        .fetch_one(pool)
        .await?;
        if rows.is_empty() && paid_today == 0 && thanks == 0 {
            say(&format!("  {day}   (nothing due)"));
        } else {
            say(&format!(
                "  {day}   {:>8} {:>5} {:>6}     | {:>8} {:>5} {:>6} {:>10} | {:>8} {:>7} {:>9} | {:>4} {:>6}",
                count("sent", Some("whatsapp")),
                count("sent", Some("sms")),
                count("sent", Some("email")),
                at_provider("sent", Some("whatsapp")),
                at_provider("sent", Some("sms")),
                at_provider("sent", Some("email")),
                at_provider("failed", None) + at_provider("skipped", None),
                count("deferred", None),
                count("skipped", None),
                count("escalated", None),
                paid_today,
                thanks,
            ));
        }
        at = to;
    }
    let commands: i64 = sqlx::query_scalar("SELECT count(DISTINCT command_id) FROM scheduler.step_log WHERE tenant = $1 AND command_id IS NOT NULL")
        .bind(tenant.as_str())
        .fetch_one(pool)
        .await?;
    let delivered: Vec<(String, i64)> = sqlx::query_as(
        "SELECT channel || ' ' || state, count(*) FROM dispatch.attempts WHERE tenant = $1 GROUP BY 1 ORDER BY 1",
    )
    .bind(tenant.as_str())
    .fetch_all(pool)
    .await?;
    let delivered: Vec<String> = delivered.iter().map(|(k, n)| format!("{k} {n}")).collect();
    say(&format!(
        "{commands} dispatch commands went out on {} (regua.v1.cmd.{tenant}.dispatch.<channel>); \
         the dispatchers' record: {}",
        subjects::STREAM_COMMANDS,
        delivered.join(", ")
    ));
    crate::payers::report(pool, tenant, &payers, say).await
}

/// Waits until the dispatchers have taken every command and settled every attempt.
async fn wait_dispatched(
    pool: &sqlx::PgPool,
    js: &async_nats::jetstream::Context,
    wait_secs: u64,
) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(wait_secs);
    loop {
        let mut stream = js.get_stream(subjects::STREAM_COMMANDS).await?;
        let queued = stream.info().await?.state.messages;
        let open: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM dispatch.attempts WHERE state IN ('pending', 'sending', 'retry')",
        )
        .fetch_one(pool)
        .await?;
        if queued == 0 && open == 0 {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            anyhow::bail!("the dispatchers did not catch up ({queued} queued, {open} in flight)");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
