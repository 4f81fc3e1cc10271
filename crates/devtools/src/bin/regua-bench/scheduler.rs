//! `regua-bench scheduler`: the scheduler against the machine's ceilings, measured in
//! the same run.
//!
//! 1. Ceilings: raw JetStream publish and raw Postgres multi-row insert, N each; with
//!    `--bullmq`, also BullMQ firing 100,000 delayed jobs due at once, the reference
//!    the firing target is reasoned from ([`crate::bullmq`]).
//! 2. Floor: the work a fired step demands of any scheduler, done by raw clients with
//!    none of regua's code ([`firing_floor`]), on N steps due at once.
//! 3. Planning: a `regua scheduler` process consumes N `customer.upserted` and N
//!    `invoice.opened` events (one customer per invoice, all due the same day, tenant on
//!    a test clock); timed from the first publish until its consumer has applied all.
//! 4. Firing: after a `VACUUM (ANALYZE)` of the planned schedule (untimed; what
//!    autovacuum does in the days between planning and a due date), the test clock
//!    crosses the first step's instant, so N steps fall due at once; timed from the
//!    advance until the N-th dispatch command is in `REGUA_CMD`.
//!    The scheduler's RSS is sampled every 100 ms throughout.
//! 5. Lateness: a real-time tenant with steps due at a steady rate (default 5,000/s for
//!    60 s, written straight into the schedule); each command's arrival on its subject
//!    is compared with its due instant.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use async_nats::jetstream::stream::RetentionPolicy;
use chrono::{DateTime, TimeDelta, Utc};
use futures::StreamExt;
use regua_contract::commands::DispatchCommand;
use regua_contract::events::{
    CustomerState, CustomerUpserted, InvoiceChanged, InvoiceState, TenantCreated,
};
use regua_contract::{Envelope, EventType, subjects};
use regua_platform::{Clock, SystemClock, nats};
use regua_scheduler::model;
use serde_json::json;
use uuid::Uuid;

use crate::floor::publish_all;
use crate::{Rig, check_settings, rss_kib, say, spawn_service};

const TEST_CLOCK_START: &str = "2026-12-01T03:00:00Z";
/// All bench invoices are due 2026-12-10 (Thursday); padrao's first step (D-3, 10:00 in
/// São Paulo) is Monday 2026-12-07 13:00 UTC.
const FIRST_STEP: &str = "2026-12-07T13:00:00Z";

fn envelope<T: serde::Serialize>(
    tenant: &str,
    kind: EventType,
    data: T,
) -> anyhow::Result<(String, Vec<u8>, String)> {
    let id = Uuid::now_v7();
    let e = Envelope {
        id,
        event_type: kind,
        version: 1,
        occurred_at: SystemClock.now(),
        tenant: tenant.to_owned(),
        correlation_id: id.to_string(),
        causation_id: id.to_string(),
        data,
    };
    Ok((
        subjects::event(tenant, kind),
        serde_json::to_vec(&e)?,
        id.to_string(),
    ))
}

fn customer(i: usize, timezone: &str) -> CustomerState {
    CustomerState {
        customer_id: format!("C-{i:08}"),
        name: format!("Cliente {i}"),
        document: None,
        document_kind: None,
        email: Some(format!("cliente{i}@example.com")),
        phone: Some("+5511987654321".into()),
        whatsapp_opt_in: true,
        preferred_channel: None,
        timezone: timezone.into(),
        locale: "pt-BR".into(),
        segment: Some("varejo".into()),
    }
}

fn invoice(i: usize, due: chrono::NaiveDate) -> InvoiceState {
    InvoiceState {
        invoice_id: format!("INV-{i:08}"),
        revision: Some(1),
        customer_id: format!("C-{i:08}"),
        debtor_kind: None,
        amount_cents: 10_000 + (i % 90_000) as i64,
        currency: "BRL".into(),
        issued_on: due - TimeDelta::days(30),
        due_date: due,
        description: Some("Mensalidade".into()),
        reference: None,
        payment: None,
        late_fee: None,
        tags: vec![],
        metadata: Default::default(),
    }
}

fn tenant(id: &str, test_clock: bool, now: Option<DateTime<Utc>>) -> TenantCreated {
    TenantCreated {
        id: id.into(),
        legal_name: "Bench Ltda".into(),
        cnpj: "11222333000181".into(),
        address: "Av. Paulista, 1000".into(),
        contact: "0800 000 0000".into(),
        timezone: "America/Sao_Paulo".into(),
        test_clock,
        now,
    }
}

/// Samples a process's RSS peak while `done` polls false.
struct Rss {
    pid: u32,
    peak: u64,
}

impl Rss {
    fn sample(&mut self) -> anyhow::Result<()> {
        match rss_kib(self.pid) {
            Some(k) => {
                self.peak = self.peak.max(k);
                Ok(())
            }
            None => bail!("the scheduler exited during the run"),
        }
    }
}

/// The floor under firing: the work a fired step demands of any scheduler, done by raw
/// clients with none of regua's code. N invoices due at one instant wait in a table
/// keyed and indexed as the schedule is (primary key, due index), with their state as
/// `json`; `workers` claimers each loop, one transaction per claim of `batch`: take the
/// next due rows `FOR UPDATE SKIP LOCKED`, move them to a later step (one multi-row
/// update), log the step (one multi-row insert), build each row's dispatch command
/// (the stored state read back into a `DispatchCommand`, serialized, as the scheduler's
/// are) and store the claim's
/// commands as one packed outbox row; after commit, publish the commands to a
/// WorkQueue stream (acks awaited) and delete the outbox row. No customers, ledger,
/// payments, locks, calendar or decisions. Steps per second, until the last command
/// is stored.
async fn firing_floor(
    pool: &sqlx::PgPool,
    js: &async_nats::jetstream::Context,
    n: usize,
    batch: usize,
    workers: usize,
) -> anyhow::Result<f64> {
    sqlx::query(
        "CREATE TABLE floor_schedule (tenant TEXT COLLATE \"C\", invoice_id TEXT COLLATE \"C\", customer_id TEXT COLLATE \"C\", \
         state JSON NOT NULL, next_step INT NOT NULL, next_at TIMESTAMPTZ, PRIMARY KEY (tenant, invoice_id))",
    )
    .execute(pool)
    .await?;
    sqlx::query("CREATE INDEX floor_due ON floor_schedule (next_at, tenant, invoice_id) WHERE next_at IS NOT NULL")
        .execute(pool)
        .await?;
    sqlx::query(
        "CREATE TABLE floor_log (tenant TEXT COLLATE \"C\", invoice_id TEXT COLLATE \"C\", seq BIGSERIAL, step TEXT NOT NULL, \
         state TEXT NOT NULL, at TIMESTAMPTZ NOT NULL, command_id TEXT, PRIMARY KEY (tenant, invoice_id, seq))",
    )
    .execute(pool)
    .await?;
    crate::floor::create_outbox(pool).await?;
    let due_at: DateTime<Utc> = FIRST_STEP.parse()?;
    let due = chrono::NaiveDate::from_ymd_opt(2026, 12, 10).context("date")?;
    for chunk in (0..n).collect::<Vec<_>>().chunks(10_000) {
        let ids: Vec<String> = chunk.iter().map(|i| format!("INV-{i:08}")).collect();
        let states = chunk
            .iter()
            .map(|i| model::state_text(&invoice(*i, due)))
            .collect::<Result<Vec<_>, _>>()?;
        sqlx::query(
            "INSERT INTO floor_schedule SELECT 'bench', i, 'C-' || substr(i, 5), s::json, 0, $3 \
             FROM UNNEST($1::text[], $2::text[]) AS u(i, s)",
        )
        .bind(&ids)
        .bind(&states)
        .bind(due_at)
        .execute(pool)
        .await?;
    }
    sqlx::query("VACUUM (ANALYZE) floor_schedule")
        .execute(pool)
        .await?;
    // The commands' stream; nothing consumes it here (its consumer stands for the
    // dispatchers'), as nothing consumes REGUA_CMD during the scheduler's firing.
    let _commands = crate::floor::streams(js, RetentionPolicy::WorkQueue).await?;

    let t = Instant::now();
    let claimers = (0..workers.max(1)).map(|_| {
        let (pool, js) = (pool.clone(), js.clone());
        tokio::spawn(async move {
            let mut fired = 0usize;
            loop {
                let mut tx = pool.begin().await?;
                let rows: Vec<(String, String, String)> = sqlx::query_as(
                    "SELECT invoice_id, customer_id, state::text FROM floor_schedule WHERE next_at <= $1 \
                     ORDER BY next_at, tenant, invoice_id LIMIT $2 FOR UPDATE SKIP LOCKED",
                )
                .bind(due_at)
                .bind(i64::try_from(batch).unwrap_or(1000))
                .fetch_all(&mut *tx)
                .await?;
                if rows.is_empty() {
                    tx.commit().await?;
                    return anyhow::Ok(fired);
                }
                let ids: Vec<&str> = rows.iter().map(|(i, _, _)| i.as_str()).collect();
                sqlx::query(
                    "UPDATE floor_schedule f SET next_step = 1, next_at = $2 FROM UNNEST($1::text[]) AS u(i) \
                     WHERE f.tenant = 'bench' AND f.invoice_id = u.i",
                )
                .bind(&ids)
                .bind(due_at + TimeDelta::days(2))
                .execute(&mut *tx)
                .await?;
                let mut commands = Vec::with_capacity(rows.len());
                for (invoice_id, customer_id, state) in &rows {
                    let n: u32 = invoice_id.trim_start_matches("INV-").parse().unwrap_or(0);
                    let mut cmd = regua_testkit::dispatch_command(
                        "bench",
                        n,
                        regua_contract::inbound::Channel::Whatsapp,
                        &[],
                        due_at,
                    );
                    // The command carries the stored invoice, as the scheduler's do.
                    let stored: InvoiceState = serde_json::from_str(state)?;
                    cmd.recipient.customer_id.clone_from(customer_id);
                    let line = &mut cmd.invoices[0];
                    line.invoice_id = stored.invoice_id;
                    line.amount_cents = stored.amount_cents;
                    line.due_date = stored.due_date;
                    line.description = stored.description;
                    commands.push((
                        "floor.in.bench.dispatch.whatsapp".to_owned(),
                        bytes::Bytes::from(serde_json::to_vec(&cmd)?),
                        cmd.command_id,
                    ));
                }
                let command_ids: Vec<&str> = commands.iter().map(|(_, _, id)| id.as_str()).collect();
                sqlx::query(
                    "INSERT INTO floor_log (tenant, invoice_id, step, state, at, command_id) \
                     SELECT 'bench', i, 'D-3', 'sent', $3, c FROM UNNEST($1::text[], $2::text[]) AS u(i, c)",
                )
                .bind(&ids)
                .bind(&command_ids)
                .bind(due_at)
                .execute(&mut *tx)
                .await?;
                let packed = crate::floor::enqueue(&mut tx, commands).await?;
                tx.commit().await?;
                packed.relay(&js, &pool).await?;
                fired += rows.len();
            }
        })
    });
    let mut fired = 0;
    for c in futures::future::join_all(claimers).await {
        fired += c??;
    }
    let rate = fired as f64 / t.elapsed().as_secs_f64();
    if fired != n {
        bail!("the firing floor fired {fired} of {n} steps");
    }
    say(&format!(
        "floor    the step's own work, raw      {rate:>10.0} steps/s (claim, next step, log, command through an outbox; batch {batch} × {workers})"
    ));
    crate::floor::drop_streams(js).await?;
    sqlx::query("DROP TABLE floor_schedule, floor_log, floor_outbox")
        .execute(pool)
        .await?;
    Ok(rate)
}

/// The run's knobs (see `regua-bench scheduler --help`).
pub struct Settings {
    pub batch: usize,
    pub workers: usize,
    pub rate: usize,
    pub lateness_secs: u64,
    pub bullmq: Option<std::path::PathBuf>,
}

#[allow(clippy::too_many_lines)]
pub async fn run(n: usize, postgres: &str, settings: Settings) -> anyhow::Result<()> {
    let Settings {
        batch,
        workers,
        rate,
        lateness_secs,
        bullmq,
    } = settings;
    let cores = std::thread::available_parallelism()
        .map(|c| c.get())
        .unwrap_or(1);
    say(&format!(
        "regua-bench scheduler: N = {n}, {cores} cores, scheduler batch {batch}, {workers} workers; lateness at {rate}/s for {lateness_secs}s"
    ));
    let service_settings = [
        ("REGUA_SCHEDULER_BATCH_SIZE", batch.to_string()),
        ("REGUA_SCHEDULER_WORKERS", workers.to_string()),
    ];
    check_settings(&service_settings)?;
    let rig = Rig::start(n, postgres).await?;
    let (client, js) = (rig.client.clone(), rig.js.clone());
    let (pool, db_url) = (rig.pool.clone(), rig.db_url.clone());
    let (js_rate, pg_rate) = (rig.js_rate, rig.pg_rate);
    let reference = match &bullmq {
        Some(dir) => {
            let (rate, concurrency) = crate::bullmq::fire(dir).await?;
            say(&format!(
                "bullmq   {} delayed jobs due at once, fired {rate:>10.0} jobs/s (worker concurrency {concurrency}, the best of {:?})",
                crate::bullmq::JOBS,
                crate::bullmq::CONCURRENCY
            ));
            Some(rate)
        }
        None => None,
    };
    let floor = firing_floor(&pool, &js, n, batch, workers).await?;
    regua_intake::Intake::migrate(&pool).await?;
    regua_scheduler::Scheduler::migrate(&pool).await?;
    nats::ensure_streams(&js, nats::Streams::Provision { replicas: 1 }).await?;
    let mut child = spawn_service("scheduler", &rig.nats_url(), &db_url, &service_settings)?;
    let pid = child.id().context("scheduler pid")?;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let mut rss = Rss { pid, peak: 0 };
    rss.sample()?;
    let idle_rss = rss.peak;

    // Lateness first, on an otherwise idle scheduler.
    let lateness = lateness(&pool, &client, rate, lateness_secs, &mut rss).await?;

    // Planning.
    let start: DateTime<Utc> = TEST_CLOCK_START.parse()?;
    let due = chrono::NaiveDate::from_ymd_opt(2026, 12, 10).context("date")?;
    publish_all(
        &js,
        vec![envelope(
            "bench",
            EventType::TenantCreated,
            tenant("bench", true, Some(start)),
        )?],
    )
    .await?;
    let consumer = js
        .get_stream(subjects::STREAM_EVENTS)
        .await?
        .get_consumer::<async_nats::jetstream::consumer::pull::Config>(subjects::CONSUMER_SCHEDULER)
        .await
        .map_err(|e| anyhow::anyhow!("scheduler consumer: {e}"))?;
    let t = Instant::now();
    let publisher = {
        let js = js.clone();
        tokio::spawn(async move {
            for chunk in (0..n).collect::<Vec<_>>().chunks(10_000) {
                let mut messages = Vec::with_capacity(chunk.len() * 2);
                for &i in chunk {
                    messages.push(envelope(
                        "bench",
                        EventType::CustomerUpserted,
                        CustomerUpserted {
                            customer: customer(i, "America/Sao_Paulo"),
                        },
                    )?);
                    messages.push(envelope(
                        "bench",
                        EventType::InvoiceOpened,
                        InvoiceChanged {
                            invoice: invoice(i, due),
                        },
                    )?);
                }
                publish_all(&js, messages).await?;
            }
            anyhow::Ok(())
        })
    };
    let mut consumer = consumer;
    loop {
        rss.sample()?;
        if publisher.is_finished() {
            let info = consumer.info().await?;
            if info.num_pending == 0 && info.num_ack_pending == 0 {
                break;
            }
        }
        if t.elapsed() > Duration::from_secs(3600) {
            bail!("planning did not finish within an hour");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let plan_secs = t.elapsed().as_secs_f64();
    publisher.await??;
    let planned: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM scheduler.invoices WHERE tenant = 'bench' AND next_at IS NOT NULL",
    )
    .fetch_one(&pool)
    .await?;
    if usize::try_from(planned).unwrap_or(0) != n {
        bail!("planned {planned} of {n}");
    }
    let plan_rss = rss.peak;
    say(&format!(
        "planning {n} invoices (+{n} customers) in {plan_secs:.1} s = {:.0} invoices/s (target ≤ 120 s)",
        n as f64 / plan_secs
    ));
    say(&format!(
        "ratio    planning / postgres ceiling = {:.2}; planning / jetstream ceiling = {:.2}",
        n as f64 / plan_secs / pg_rate,
        n as f64 / plan_secs / js_rate
    ));

    // Real invoices are planned days before their steps fall due, and autovacuum goes
    // through the freshly loaded tables in between (statistics, hint bits, visibility
    // map). The bench fires right after planning, on a server that may not run
    // autovacuum at all (this project's CI machines do not), so it does that pass
    // itself, outside the timings.
    let t = Instant::now();
    sqlx::query("VACUUM (ANALYZE) scheduler.invoices, scheduler.customers")
        .execute(&pool)
        .await?;
    say(&format!(
        "vacuum   VACUUM (ANALYZE) of the planned schedule, as autovacuum would before the due date: {:.1} s (not timed)",
        t.elapsed().as_secs_f64()
    ));
    // Firing: the clock crosses the first step.
    let mut cmd_stream = js.get_stream(subjects::STREAM_COMMANDS).await?;
    let before = cmd_stream.info().await?.state.messages;
    let to: DateTime<Utc> = FIRST_STEP.parse::<DateTime<Utc>>()? + TimeDelta::minutes(1);
    let t = Instant::now();
    regua_scheduler::clock::advance(&pool, "bench", to)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut last_report = Instant::now();
    let mut decided_secs = None;
    // Whether every due step is decided is asked of the schedule once a second, not at
    // every 100 ms poll: the query walks the due index from its start, through an entry
    // for every step already fired, and that walk is the bench's own load on the
    // database it measures (1.7 s of statement time in a 48 s firing of 1,000,000).
    let mut last_decided_check: Option<Instant> = None;
    loop {
        rss.sample()?;
        if decided_secs.is_none()
            && last_decided_check.is_none_or(|c| c.elapsed() >= Duration::from_secs(1))
        {
            last_decided_check = Some(Instant::now());
            let pending: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM scheduler.invoices WHERE next_at <= $1 AND tenant = 'bench')")
                .bind(to)
                .fetch_one(&pool)
                .await?;
            if !pending {
                decided_secs = Some(t.elapsed().as_secs_f64());
            }
        }
        let now_in = cmd_stream.info().await?.state.messages - before;
        if now_in >= n as u64 {
            break;
        }
        if last_report.elapsed() > Duration::from_secs(10) {
            say(&format!(
                "  … {now_in} commands after {:.0}s",
                t.elapsed().as_secs_f64()
            ));
            last_report = Instant::now();
        }
        if t.elapsed() > Duration::from_secs(3600) {
            bail!("firing did not finish within an hour ({now_in} of {n})");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let fire_secs = t.elapsed().as_secs_f64();
    let fire_rate = n as f64 / fire_secs;
    child.kill().await.ok();
    say(&format!(
        "firing   {n} due steps → commands in REGUA_CMD in {fire_secs:.1} s = {fire_rate:.0} steps/s (target ≥ 26,000)"
    ));
    say(&format!(
        "         (every step decided and committed after {:.0} s, checked once a second; the rest is the outbox relay publishing)",
        decided_secs.unwrap_or(fire_secs)
    ));
    say(&format!(
        "ratio    firing / postgres ceiling = {:.2}; firing / jetstream ceiling = {:.2}",
        fire_rate / pg_rate,
        fire_rate / js_rate
    ));
    say(&format!(
        "ratio    firing / floor = {:.2}; floor / postgres ceiling = {:.2}",
        fire_rate / floor,
        floor / pg_rate
    ));
    if let Some(bullmq) = reference {
        say(&format!(
            "ratio    firing / bullmq = {:.2} (the target's reasoning: twice BullMQ; 26,000 assumed BullMQ at 13,000 jobs/s)",
            fire_rate / bullmq
        ));
    }
    say(&format!(
        "rss      scheduler idle {} MiB, peak while planning {} MiB, peak overall {} MiB (target < 150 MiB)",
        idle_rss / 1024,
        plan_rss / 1024,
        rss.peak / 1024
    ));
    say(&lateness);

    rig.finish().await
}

/// Steps due at `rate` per second for `secs` seconds on a real-time tenant; returns the
/// report line. Rows go straight into the schedule (a policy whose only step is due at
/// the deferral instant) so the due instants are exact.
async fn lateness(
    pool: &sqlx::PgPool,
    client: &async_nats::Client,
    rate: usize,
    secs: u64,
    rss: &mut Rss,
) -> anyhow::Result<String> {
    let total = rate * usize::try_from(secs).unwrap_or(0);
    let now = SystemClock.now();
    sqlx::query(
        "INSERT INTO scheduler.tenants (id, legal_name, cnpj, address, contact, timezone, test_clock, created_at) \
         VALUES ('live', 'Bench Ltda', '11222333000181', 'Av. Paulista, 1000', '0800', 'UTC', false, $1)",
    )
    .bind(now)
    .execute(pool)
    .await?;
    // Open all week, all day, no caps that matter: lateness is about the timer.
    let policy = json!({
        "applies_to": {"default": true},
        "steps": [{"name": "agora", "at": "D0", "notify": {"channels": ["email"], "template": "vence_hoje"}}],
        "send_window": {"weekdays": {"from": "00:00", "to": "23:59"}, "saturday": {"from": "00:00", "to": "23:59"}, "sunday": {"from": "00:00", "to": "23:59"}},
        "caps": {"per_day": 1000, "per_7_days": 1000},
        "calendar": {"carnaval": false, "corpus_christi": false}
    });
    sqlx::query("INSERT INTO scheduler.policies (tenant, name, version, body, source, created_at) VALUES ('live', 'bench', 1, $1, '', $2)")
        .bind(&policy)
        .bind(now)
        .execute(pool)
        .await?;
    let today = now.date_naive();
    let base = now + TimeDelta::seconds(30);
    let due_at =
        |i: usize| base + TimeDelta::microseconds(i64::try_from(i * 1_000_000 / rate).unwrap_or(0));
    for chunk in (0..total).collect::<Vec<_>>().chunks(5_000) {
        let ids: Vec<String> = chunk.iter().map(|i| format!("L-{i:08}")).collect();
        let customers: Vec<String> = chunk.iter().map(|i| format!("C-{i:08}")).collect();
        let cstates: Vec<String> = chunk
            .iter()
            .map(|&i| model::state_text(&customer(i, "UTC")))
            .collect::<Result<_, _>>()?;
        let istates: Vec<String> = chunk
            .iter()
            .map(|&i| {
                model::state_text(&InvoiceState {
                    invoice_id: format!("L-{i:08}"),
                    ..invoice(i, today)
                })
            })
            .collect::<Result<_, _>>()?;
        let due: Vec<DateTime<Utc>> = chunk.iter().map(|&i| due_at(i)).collect();
        sqlx::query("INSERT INTO scheduler.customers (tenant, customer_id, state) SELECT 'live', c, s FROM UNNEST($1::text[], $2::text[]::json[]) AS x(c, s)")
            .bind(&customers)
            .bind(&cstates)
            .execute(pool)
            .await?;
        sqlx::query(
            "INSERT INTO scheduler.invoices (tenant, invoice_id, customer_id, state, status, test_clock, policy, policy_version, next_step, deferred_to, next_at, opened_at) \
             SELECT 'live', i, c, s, 'open', false, 'bench', 1, 0, d, d, $5 FROM UNNEST($1::text[], $2::text[], $3::text[]::json[], $4::timestamptz[]) AS x(i, c, s, d)",
        )
        .bind(&ids)
        .bind(&customers)
        .bind(&istates)
        .bind(&due)
        .bind(now)
        .execute(pool)
        .await?;
    }
    let ready = SystemClock.now();
    if ready > base {
        bail!("writing the schedule took longer than its 30 s head start");
    }
    // Each command's arrival on its subject (a core subscription sees the relay's
    // JetStream publishes as they land).
    let mut sub = client
        .subscribe(format!("{}.v1.cmd.live.>", subjects::ROOT))
        .await?;
    let mut arrivals: HashMap<String, DateTime<Utc>> = HashMap::with_capacity(total);
    let deadline = Instant::now() + Duration::from_secs(secs + 120);
    while arrivals.len() < total {
        rss.sample()?;
        let Ok(Some(msg)) = tokio::time::timeout(Duration::from_millis(200), sub.next()).await
        else {
            if Instant::now() > deadline {
                bail!(
                    "lateness: only {} of {total} commands arrived",
                    arrivals.len()
                );
            }
            continue;
        };
        let at = SystemClock.now();
        let cmd: DispatchCommand = serde_json::from_slice(&msg.payload)?;
        for inv in cmd.invoices {
            arrivals.entry(inv.invoice_id).or_insert(at);
        }
    }
    let mut late: Vec<i64> = arrivals
        .iter()
        .filter_map(|(id, at)| {
            let i: usize = id.strip_prefix("L-")?.parse().ok()?;
            Some((*at - due_at(i)).num_milliseconds())
        })
        .collect();
    late.sort_unstable();
    let pct = |p: f64| {
        late.get(((late.len() as f64 - 1.0) * p).round() as usize)
            .copied()
            .unwrap_or(0)
    };
    Ok(format!(
        "lateness {total} steps due at {rate}/s, due → command on its subject: p50 {} ms, p99 {} ms, max {} ms (target p99 ≤ 1000 ms)",
        pct(0.5),
        pct(0.99),
        late.last().copied().unwrap_or(0)
    ))
}
