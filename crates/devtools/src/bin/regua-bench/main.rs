//! `regua-bench intake`, `regua-bench scheduler` ([`scheduler`]), `regua-bench
//! dispatch` ([`dispatch`]) and `regua-bench reconcile` ([`reconcile`]).
//!
//! `regua-bench intake`: intake throughput against the machine's own ceilings, measured
//! in the same run, because these machines are small and noisy.
//!
//! 1. Ceiling: raw JetStream publish of N invoice-sized messages (async, windowed acks).
//! 2. Ceiling: raw Postgres multi-row insert of N invoice rows (UNNEST, 1,000 per
//!    statement, one transaction each), the same shape intake stores.
//! 3. Floors: the work the contract demands of any intake, done by raw clients with
//!    none of intake's own (see [`intake_floor`]): N messages published, delivered in
//!    batches and acked, one multi-row insert per batch and 1.5 events stored per
//!    invoice; then the same with the customer rows and an outbox row per batch. They
//!    say how much of the gap to the Postgres ceiling is the contract's, and how much
//!    is intake's. A first floor does the JetStream part alone, with no Postgres: no
//!    intake, whatever its database work, can pass it.
//! 4. Intake: N `invoice.upsert` messages published through JetStream to a running
//!    `regua intake` process; timed from the first publish until the N-th
//!    `invoice.opened` is in the events stream. Intake's RSS is sampled every 100 ms.
//!
//! Everything runs on a private nats-server child (temp store) and a fresh database on
//! the local Postgres, both removed afterwards.

mod bullmq;
mod dispatch;
mod floor;
mod reconcile;
mod scheduler;

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::stream::RetentionPolicy;
use clap::{Parser, Subcommand};
use regua_contract::{InboundKind, TenantId, subjects};
use regua_devtools::say;
use regua_domain::document::example_cpf;
use regua_platform::{Clock, SystemClock, db, nats};
use serde_json::json;
use sqlx::postgres::PgPoolOptions;

#[derive(Parser)]
#[command(
    name = "regua-bench",
    about = "regua benchmarks, reported as ratios to ceilings measured in the same run"
)]
struct Cli {
    #[command(subcommand)]
    command: Bench,
}

/// What every benchmark takes.
#[derive(clap::Args)]
struct RunArgs {
    /// N: invoices to push through, steps to fire (the headline figures use 1,000,000).
    #[arg(long, default_value_t = 1_000_000)]
    invoices: usize,
    /// Postgres server to create the throwaway database on.
    #[arg(long, default_value = "postgres://postgres:postgres@127.0.0.1:5432")]
    postgres: String,
}

#[derive(Subcommand)]
enum Bench {
    /// Intake throughput and memory.
    Intake {
        #[command(flatten)]
        run: RunArgs,
        /// Intake batch size (REGUA_INTAKE_BATCH_SIZE).
        #[arg(long, default_value_t = 1000)]
        batch: usize,
        /// Concurrent batches in the intake process (REGUA_INTAKE_WORKERS).
        #[arg(long, default_value_t = 2)]
        workers: usize,
    },
    /// Scheduler planning, firing, lateness and memory.
    Scheduler {
        #[command(flatten)]
        run: RunArgs,
        /// REGUA_SCHEDULER_BATCH_SIZE of the scheduler process.
        #[arg(long, default_value_t = 1000)]
        batch: usize,
        /// REGUA_SCHEDULER_WORKERS of the scheduler process.
        #[arg(long, default_value_t = 4)]
        workers: usize,
        /// Steps per second for the lateness run.
        #[arg(long, default_value_t = 5000)]
        rate: usize,
        /// Length of the lateness run.
        #[arg(long, default_value_t = 60)]
        lateness_secs: u64,
        /// Also measure BullMQ firing 100,000 delayed jobs due at once, the reference
        /// of the firing target, from this folder (crates/devtools/bench/bullmq; needs
        /// node, npm and redis-server).
        #[arg(long)]
        bullmq: Option<PathBuf>,
    },
    /// One dispatcher worker's throughput against the same HTTP client's ceiling.
    Dispatch {
        /// Messages to send.
        #[arg(long, default_value_t = 20_000)]
        messages: usize,
        /// Postgres server to create the throwaway database on.
        #[arg(long, default_value = "postgres://postgres:postgres@127.0.0.1:5432")]
        postgres: String,
        /// REGUA_DISPATCH_BATCH_SIZE of the worker.
        #[arg(long, default_value_t = 64)]
        batch: usize,
        /// REGUA_DISPATCH_WORKERS of the worker.
        #[arg(long, default_value_t = 2)]
        workers: usize,
        /// How long the fake provider takes to answer (0: a free provider).
        #[arg(long, default_value_t = 0)]
        latency_ms: u64,
    },
    /// Payments matched and settled per second against the Postgres ceiling.
    Reconcile {
        /// Payments (and open invoices) to push through.
        #[arg(long, default_value_t = 50_000)]
        payments: usize,
        /// Postgres server to create the throwaway database on.
        #[arg(long, default_value = "postgres://postgres:postgres@127.0.0.1:5432")]
        postgres: String,
        /// REGUA_RECONCILE_BATCH_SIZE of the process.
        #[arg(long, default_value_t = 200)]
        batch: usize,
        /// REGUA_RECONCILE_WORKERS of the process.
        #[arg(long, default_value_t = 8)]
        workers: usize,
    },
}

fn payload(i: usize) -> Vec<u8> {
    // About two invoices per customer, like a real portfolio.
    let c = i / 2;
    json!({
        "invoice_id": format!("BENCH-{i:08}"),
        "revision": 1,
        "customer": {
            "customer_id": format!("C-{c:08}"),
            "name": format!("Cliente {c}"),
            "document": example_cpf(100_000_000 + c as u64),
            "email": format!("cliente{c}@example.com"),
            "phone": "+5511987654321",
            "whatsapp_opt_in": true,
            "preferred_channel": "whatsapp",
            "segment": "varejo",
        },
        "amount_cents": 10_000 + (i % 90_000) as i64,
        "currency": "BRL",
        "issued_on": "2026-11-01",
        "due_date": "2026-12-10",
        "description": "Mensalidade dezembro",
        "payment": { "payment_url": format!("https://pay.example.com/{i}") },
        "late_fee": { "fine_bps": 200, "monthly_interest_bps": 100 },
        "tags": ["b2c"],
    })
    .to_string()
    .into_bytes()
}

/// Publishes `n` messages to `subject(i)` through the platform's windowed publish.
async fn publish(
    js: &async_nats::jetstream::Context,
    n: usize,
    subject: impl Fn(usize) -> String,
    body: impl Fn(usize) -> Vec<u8>,
    id: impl Fn(usize) -> String,
) -> anyhow::Result<()> {
    let messages = (0..n).map(|i| {
        (
            subject(i),
            PublishMessage::build()
                .message_id(id(i))
                .payload(body(i).into()),
        )
    });
    nats::publish_windowed(js, messages).await?;
    Ok(())
}

/// Starts `regua <service>` (next to this binary) on the bench's broker and database,
/// logging only warnings, with `env` on top.
fn spawn_service(
    service: &str,
    nats_url: &str,
    db_url: &str,
    env: &[(&str, String)],
) -> anyhow::Result<tokio::process::Child> {
    let exe: PathBuf = std::env::current_exe()?.with_file_name("regua");
    let mut cmd = tokio::process::Command::new(&exe);
    cmd.args(service.split_whitespace())
        .env("REGUA_NATS_URL", nats_url)
        .env("REGUA_DATABASE_URL", db_url)
        .env("REGUA_HTTP_ADDR", "127.0.0.1:0")
        .env("REGUA_LOG", "warn")
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .stdout(Stdio::null())
        .kill_on_drop(true);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.spawn().with_context(|| {
        format!(
            "starting {} (build it: cargo build --release -p regua)",
            exe.display()
        )
    })
}

/// Checks the settings a bench hands its service process ([`spawn_service`]) as the
/// service will at startup, so that a bad value stops the bench at once rather than
/// after minutes of ceilings and floors.
fn check_settings(settings: &[(&str, String)]) -> anyhow::Result<()> {
    regua_platform::config::Config::from_sources(None, |name| {
        settings
            .iter()
            .find(|(key, _)| *key == name)
            .map(|(_, value)| value.clone())
    })
    .context("the settings for the service under test")?;
    Ok(())
}

fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

async fn opened_count(
    stream: &mut async_nats::jetstream::stream::Stream,
    subject: &str,
) -> anyhow::Result<u64> {
    let info = stream.info_with_subjects(subject).await?;
    let mut total = 0;
    let mut subjects = info;
    while let Some(entry) = futures::StreamExt::next(&mut subjects).await {
        total += entry?.1 as u64;
    }
    Ok(total)
}

/// Ceiling: raw JetStream publish of `n` invoice-sized messages to a file stream.
async fn jetstream_ceiling(js: &async_nats::jetstream::Context, n: usize) -> anyhow::Result<f64> {
    js.create_stream(async_nats::jetstream::stream::Config {
        name: "BENCH_RAW".into(),
        subjects: vec!["bench.raw.>".into()],
        storage: async_nats::jetstream::stream::StorageType::File,
        ..Default::default()
    })
    .await?;
    let t = Instant::now();
    publish(
        js,
        n,
        |_| "bench.raw.invoice".into(),
        payload,
        |i| format!("raw-{i}"),
    )
    .await?;
    let js_rate = n as f64 / t.elapsed().as_secs_f64();
    say(&format!(
        "ceiling  jetstream publish      {js_rate:>10.0} msg/s"
    ));
    js.delete_stream("BENCH_RAW").await?;

    Ok(js_rate)
}

/// Ceiling: raw Postgres multi-row insert of `n` invoice-shaped rows (keys byte-ordered,
/// `COLLATE "C"`, as the services' keys are).
async fn postgres_ceiling(pool: &sqlx::PgPool, n: usize) -> anyhow::Result<f64> {
    sqlx::query(
        "CREATE TABLE bench_raw (tenant TEXT COLLATE \"C\", invoice_id TEXT COLLATE \"C\", status TEXT, revision BIGINT, \
         customer_id TEXT COLLATE \"C\", content_hash BYTEA, state JSONB, created_at TIMESTAMPTZ, updated_at TIMESTAMPTZ, \
         PRIMARY KEY (tenant, invoice_id))",
    )
    .execute(pool)
    .await?;
    let t = Instant::now();
    for chunk in (0..n).collect::<Vec<_>>().chunks(1000) {
        let states: Vec<Vec<u8>> = chunk.iter().map(|i| payload(*i)).collect();
        insert_raw(pool, chunk, &states).await?;
    }
    let pg_rate = n as f64 / t.elapsed().as_secs_f64();
    say(&format!(
        "ceiling  postgres multi-row insert {pg_rate:>10.0} rows/s"
    ));
    sqlx::query("TRUNCATE bench_raw").execute(pool).await?;

    Ok(pg_rate)
}

/// The ceiling's statement: invoices `ns` (ids, customers and hashes derived from the
/// numbers) with their JSON `states`, in one multi-row insert into `bench_raw`.
async fn insert_raw(
    conn: impl sqlx::PgExecutor<'_>,
    ns: &[usize],
    states: &[impl AsRef<[u8]>],
) -> anyhow::Result<()> {
    let ids: Vec<String> = ns.iter().map(|i| format!("BENCH-{i:08}")).collect();
    let customers: Vec<String> = ns.iter().map(|i| format!("C-{:08}", i / 2)).collect();
    let states: Vec<&str> = states
        .iter()
        .map(|s| std::str::from_utf8(s.as_ref()))
        .collect::<Result<_, _>>()?;
    let hashes: Vec<Vec<u8>> = ns
        .iter()
        .map(|i| (*i as u64).to_le_bytes().repeat(4))
        .collect();
    sqlx::query(
        "INSERT INTO bench_raw SELECT 'bench', i, 'open', 1, c, h, s::jsonb, $5, $5 \
         FROM UNNEST($1::text[], $2::text[], $3::bytea[], $4::text[]) AS u(i, c, h, s)",
    )
    .bind(&ids)
    .bind(&customers)
    .bind(&hashes)
    .bind(&states)
    .bind(SystemClock.now())
    .execute(conn)
    .await?;
    Ok(())
}

/// What a floor run ([`intake_floor`]) stores in Postgres per batch.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Floor {
    /// No Postgres at all: only the contract's JetStream work (the integrator's
    /// messages stored, delivered and acked; 1.5 events stored per invoice). An upper
    /// bound on any intake, whatever its database work.
    MessagingOnly,
    /// The invoice rows only.
    Invoices,
    /// Also a row for each new customer (every second invoice, as two invoices share a
    /// customer) and the batch's events as one packed outbox row, inserted in the same
    /// transaction and deleted once they are published: what the contract (customers
    /// are stored and readable) and the project's rules (events leave through an
    /// outbox) add.
    WithCustomersAndOutbox,
}

/// The floor under intake: the work the contract demands of any intake, done by raw
/// clients with none of intake's own. The integrator's N messages are stored by
/// JetStream (published concurrently, as in the intake run); a durable pull consumer
/// delivers them in batches of `batch` to `workers` fetchers, and per batch the floor
/// makes one multi-row insert of the invoices (the ceiling's statement; nothing with
/// [`Floor::MessagingOnly`], more with [`Floor::WithCustomersAndOutbox`]), publishes
/// the events an intake emits for them (`invoice.opened` for each,
/// `customer.upserted` for every second one; acks awaited), and acks the messages. No
/// decoding, validation, locks, reads or outcome records: more generous than any real
/// intake can be. Timed from the first publish until the last batch's events are
/// stored.
async fn intake_floor(
    js: &async_nats::jetstream::Context,
    pool: &sqlx::PgPool,
    n: usize,
    batch: usize,
    workers: usize,
    floor: Floor,
) -> anyhow::Result<f64> {
    let consumer = floor::streams(js, RetentionPolicy::Limits).await?;
    let t = Instant::now();
    let publisher = {
        let js = js.clone();
        tokio::spawn(async move {
            publish(
                &js,
                n,
                |_| "floor.in.bench.invoice.upsert".into(),
                payload,
                |i| format!("floor-{i}"),
            )
            .await
        })
    };
    let (js_, pool_) = (js.clone(), pool.clone());
    floor::drain(&consumer, n, batch, workers, move |msgs| {
        let (js, pool) = (js_.clone(), pool_.clone());
        async move {
            // The invoice's number, from the publisher's message id.
            let ns: Vec<usize> = msgs
                .iter()
                .map(|m| {
                    nats::message_id(m)
                        .trim_start_matches("floor-")
                        .parse()
                        .unwrap_or_default()
                })
                .collect();
            let events: Vec<(String, bytes::Bytes, String)> = msgs
                .iter()
                .zip(&ns)
                .flat_map(|(m, i)| {
                    let opened = ("floor.evt.bench.invoice.opened", format!("opened-{i}"));
                    let customer = (i % 2 == 0)
                        .then(|| ("floor.evt.bench.customer.upserted", format!("customer-{i}")));
                    std::iter::once(opened)
                        .chain(customer)
                        .map(|(subject, id)| (subject.to_owned(), m.payload.clone(), id))
                })
                .collect();
            if floor == Floor::MessagingOnly {
                floor::publish_all(&js, events).await?;
                return Ok(msgs);
            }
            let states: Vec<&[u8]> = msgs.iter().map(|m| &m.payload[..]).collect();
            let mut tx = pool.begin().await?;
            insert_raw(&mut *tx, &ns, &states).await?;
            if floor == Floor::Invoices {
                tx.commit().await?;
                floor::publish_all(&js, events).await?;
                return Ok(msgs);
            }
            let (customers, customer_states): (Vec<String>, Vec<&str>) = ns
                .iter()
                .zip(&states)
                .filter(|(i, _)| *i % 2 == 0)
                .map(|(i, s)| std::str::from_utf8(s).map(|s| (format!("C-{:08}", i / 2), s)))
                .collect::<Result<Vec<_>, _>>()?
                .into_iter()
                .unzip();
            sqlx::query(
                "INSERT INTO bench_raw_customers SELECT 'bench', c, sha256(s::bytea), s::jsonb, $3, $3 \
                 FROM UNNEST($1::text[], $2::text[]) AS u(c, s)",
            )
            .bind(&customers)
            .bind(&customer_states)
            .bind(SystemClock.now())
            .execute(&mut *tx)
            .await?;
            let packed = floor::enqueue(&mut tx, events).await?;
            tx.commit().await?;
            packed.relay(&js, &pool).await?;
            Ok(msgs)
        }
    })
    .await?;
    let rate = n as f64 / t.elapsed().as_secs_f64();
    publisher.await??;
    let what = match floor {
        Floor::MessagingOnly => "floor    jetstream only, no postgres",
        Floor::Invoices => "floor    invoices only, raw        ",
        Floor::WithCustomersAndOutbox => "floor    + customers and outbox, raw",
    };
    say(&format!(
        "{what} {rate:>10.0} invoices/s (N stored, delivered, acked; 1.5 events stored per invoice)"
    ));
    floor::drop_streams(js).await?;
    sqlx::query("TRUNCATE bench_raw, bench_raw_customers")
        .execute(pool)
        .await?;
    Ok(rate)
}

/// A private nats-server child and a throwaway database, with both ceilings measured
/// on them first.
pub struct Rig {
    server: regua_testkit::NatsServer,
    pub client: async_nats::Client,
    pub js: async_nats::jetstream::Context,
    pub pool: sqlx::PgPool,
    pub db_url: String,
    db_name: String,
    postgres: String,
    pub js_rate: f64,
    pub pg_rate: f64,
}

impl Rig {
    pub async fn start(n: usize, postgres: &str) -> anyhow::Result<Rig> {
        let server = regua_testkit::NatsServer::start().await;
        let client = nats::connect(&server.url(), "bench").await?;
        let js = nats::jetstream(client.clone());
        let js_rate = jetstream_ceiling(&js, n).await?;
        let db_name = format!("regua_bench_{}", std::process::id());
        let db_url = format!("{postgres}/{db_name}");
        db::ensure_database(&db_url).await?;
        let pool = PgPoolOptions::new()
            .max_connections(4)
            .connect(&db_url)
            .await?;
        let pg_rate = postgres_ceiling(&pool, n).await?;
        Ok(Rig {
            server,
            client,
            js,
            pool,
            db_url,
            db_name,
            postgres: postgres.to_owned(),
            js_rate,
            pg_rate,
        })
    }

    pub fn nats_url(&self) -> String {
        self.server.url()
    }

    /// Drops the database and stops the broker.
    pub async fn finish(mut self) -> anyhow::Result<()> {
        self.pool.close().await;
        let admin = PgPoolOptions::new()
            .max_connections(1)
            .connect(&format!("{}/postgres", self.postgres))
            .await?;
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE {} WITH (FORCE)",
            self.db_name
        )))
        .execute(&admin)
        .await?;
        self.server.kill().await;
        Ok(())
    }
}

async fn intake(n: usize, postgres: &str, batch: usize, workers: usize) -> anyhow::Result<()> {
    let cores = std::thread::available_parallelism()
        .map(|c| c.get())
        .unwrap_or(1);
    say(&format!(
        "regua-bench intake: N = {n}, {cores} cores, intake batch {batch}, {workers} workers"
    ));
    let settings = [
        ("REGUA_INTAKE_BATCH_SIZE", batch.to_string()),
        ("REGUA_INTAKE_WORKERS", workers.to_string()),
    ];
    check_settings(&settings)?;
    let rig = Rig::start(n, postgres).await?;
    let (js, pool, db_url) = (rig.js.clone(), rig.pool.clone(), rig.db_url.clone());
    let (js_rate, pg_rate) = (rig.js_rate, rig.pg_rate);

    sqlx::query(
        "CREATE TABLE bench_raw_customers (tenant TEXT COLLATE \"C\", customer_id TEXT COLLATE \"C\", content_hash BYTEA, \
         state JSONB, created_at TIMESTAMPTZ, updated_at TIMESTAMPTZ, PRIMARY KEY (tenant, customer_id))",
    )
    .execute(&pool)
    .await?;
    floor::create_outbox(&pool).await?;
    let floor_messaging = intake_floor(&js, &pool, n, batch, workers, Floor::MessagingOnly).await?;
    let floor_invoices = intake_floor(&js, &pool, n, batch, workers, Floor::Invoices).await?;
    let floor_rate =
        intake_floor(&js, &pool, n, batch, workers, Floor::WithCustomersAndOutbox).await?;

    // Intake, as its own process.
    regua_intake::Intake::migrate(&pool).await?;
    nats::ensure_streams(&js, nats::Streams::Provision { replicas: 1 }).await?;
    let tenant = TenantId::parse("bench").map_err(|e| anyhow::anyhow!("{e}"))?;
    let new = regua_intake::tenants::validate_new_tenant(&regua_testkit::tenant("bench"))
        .map_err(|e| anyhow::anyhow!("tenant: {:?}", e.errors))?;
    regua_intake::tenants::create_tenant(&pool, SystemClock.now(), new, None).await?;
    let mut child = spawn_service("intake", &rig.nats_url(), &db_url, &settings)?;
    let pid = child.id().context("intake pid")?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let idle_rss = rss_kib(pid).unwrap_or(0);

    let opened_subject = subjects::event(tenant.as_str(), regua_contract::EventType::InvoiceOpened);
    let mut events = js.get_stream(subjects::STREAM_EVENTS).await?;
    let inbound = subjects::inbound(&tenant, InboundKind::InvoiceUpsert);
    let t = Instant::now();
    let publisher = {
        let js = js.clone();
        tokio::spawn(async move {
            publish(&js, n, |_| inbound.clone(), payload, |i| format!("in-{i}")).await
        })
    };
    let mut peak_rss = idle_rss;
    let mut last_report = Instant::now();
    let mut publish_secs = None;
    loop {
        if let Some(kib) = rss_kib(pid) {
            peak_rss = peak_rss.max(kib);
        } else {
            bail!("intake exited during the run");
        }
        if publish_secs.is_none() && publisher.is_finished() {
            publish_secs = Some(t.elapsed().as_secs_f64());
        }
        let done = opened_count(&mut events, &opened_subject).await?;
        if done >= n as u64 {
            break;
        }
        if last_report.elapsed() > Duration::from_secs(10) {
            say(&format!(
                "  … {done} opened after {:.0}s, intake rss {} MiB",
                t.elapsed().as_secs_f64(),
                peak_rss / 1024
            ));
            last_report = Instant::now();
        }
        if t.elapsed() > Duration::from_secs(3600) {
            bail!("intake did not finish within an hour ({done} of {n})");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let secs = t.elapsed().as_secs_f64();
    publisher.await??;
    let intake_rate = n as f64 / secs;
    child.kill().await.ok();
    say(&format!(
        "intake   N invoices → invoice.opened {intake_rate:>10.0} invoices/s ({secs:.1} s; publishing alone took {:.1} s)",
        publish_secs.unwrap_or(secs)
    ));
    say(&format!(
        "intake   rss idle {} MiB, peak {} MiB (target < 150 MiB)",
        idle_rss / 1024,
        peak_rss / 1024
    ));
    say(&format!(
        "ratio    intake / postgres ceiling = {:.2} (target ≥ 0.40); intake / jetstream ceiling = {:.2}",
        intake_rate / pg_rate,
        intake_rate / js_rate
    ));
    say(&format!(
        "ratio    floors / postgres ceiling = {:.2} (invoices only), {:.2} (+ customers and outbox); intake / floors = {:.2}, {:.2}",
        floor_invoices / pg_rate,
        floor_rate / pg_rate,
        intake_rate / floor_invoices,
        intake_rate / floor_rate
    ));
    say(&format!(
        "ratio    jetstream-only floor / postgres ceiling = {:.2}: no intake that stores what the contract asks of JetStream passes this, whatever its database work",
        floor_messaging / pg_rate
    ));

    rig.finish().await
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Bench::Intake {
            run,
            batch,
            workers,
        } => intake(run.invoices, &run.postgres, batch, workers).await,
        Bench::Scheduler {
            run,
            batch,
            workers,
            rate,
            lateness_secs,
            bullmq,
        } => {
            scheduler::run(
                run.invoices,
                &run.postgres,
                scheduler::Settings {
                    batch,
                    workers,
                    rate,
                    lateness_secs,
                    bullmq,
                },
            )
            .await
        }
        Bench::Dispatch {
            messages,
            postgres,
            batch,
            workers,
            latency_ms,
        } => dispatch::run(messages, &postgres, batch, workers, latency_ms).await,
        Bench::Reconcile {
            payments,
            postgres,
            batch,
            workers,
        } => reconcile::run(payments, &postgres, batch, workers).await,
    }
}
