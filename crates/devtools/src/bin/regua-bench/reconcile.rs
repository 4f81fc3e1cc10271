//! `regua-bench reconcile`: payments matched per second against the Postgres ceiling
//! measured in the same run.
//!
//! 1. Ceilings: raw JetStream publish and raw Postgres multi-row insert of N rows (the
//!    [`Rig`]'s).
//! 2. Setup (not timed): N open invoices and their customers written straight into
//!    reconciliation's tables, and N `payment.received` messages preloaded on
//!    `regua.v1.in.bench.payment.received`: half name their `invoice_id`, half only a
//!    `reference` (the second matching rule), each for the full amount, so every one
//!    settles its invoice (fence row, `invoice.paid`, `payment.matched`).
//! 3. Reconciliation: one `regua reconcile` process started over the backlog; timed
//!    from its first application to the N-th (polled every 100 ms).

use std::time::{Duration, Instant};

use anyhow::bail;
use regua_contract::{InboundKind, TenantId, subjects};
use regua_platform::nats;
use serde_json::json;

use crate::{Rig, check_settings, say, spawn_service};

async fn applied(pool: &sqlx::PgPool) -> anyhow::Result<i64> {
    Ok(
        sqlx::query_scalar("SELECT count(*) FROM reconcile.applications")
            .fetch_one(pool)
            .await?,
    )
}

pub async fn run(n: usize, postgres: &str, batch: usize, workers: usize) -> anyhow::Result<()> {
    let cores = std::thread::available_parallelism()
        .map(|c| c.get())
        .unwrap_or(1);
    say(&format!(
        "regua-bench reconcile: N = {n}, {cores} cores, batch {batch}, {workers} payments in flight"
    ));
    let settings = [
        ("REGUA_RECONCILE_BATCH_SIZE", batch.to_string()),
        ("REGUA_RECONCILE_WORKERS", workers.to_string()),
        ("REGUA_DB_MAX_CONNECTIONS", (workers + 4).to_string()),
    ];
    check_settings(&settings)?;
    let rig = Rig::start(n, postgres).await?;
    regua_reconcile::Reconcile::migrate(&rig.pool).await?;
    nats::ensure_streams(&rig.js, nats::Streams::Provision { replicas: 1 }).await?;

    // Open invoices, as the state consumer would have stored them.
    sqlx::query(
        "INSERT INTO reconcile.tenants (id, timezone, test_clock) VALUES ('bench', 'America/Sao_Paulo', false)",
    )
    .execute(&rig.pool)
    .await?;
    for chunk in (0..n).collect::<Vec<_>>().chunks(5000) {
        let ids: Vec<String> = chunk.iter().map(|i| format!("NF-{i:08}")).collect();
        let refs: Vec<String> = chunk.iter().map(|i| format!("TX{i:010}")).collect();
        let customers: Vec<String> = chunk.iter().map(|i| format!("C-{i:08}")).collect();
        sqlx::query(
            "INSERT INTO reconcile.invoices (tenant, invoice_id, customer_id, status, amount_cents, currency, \
             due_date, effective_due, fine_bps, interest_bps, reference, state, opened_at, updated_at) \
             SELECT 'bench', i, c, 'open', 15990, 'BRL', DATE '2026-12-10', DATE '2026-12-10', 200, 100, r, \
             '{}'::jsonb, now(), now() FROM UNNEST($1::text[], $2::text[], $3::text[]) AS u(i, c, r)",
        )
        .bind(&ids)
        .bind(&customers)
        .bind(&refs)
        .execute(&rig.pool)
        .await?;
    }
    let tenant = TenantId::parse("bench").map_err(|e| anyhow::anyhow!("{e}"))?;
    let subject = subjects::inbound(&tenant, InboundKind::PaymentReceived);
    let messages = (0..n).map(|i| {
        let mut body = json!({
            "payment_id": format!("PAY-{i:08}"),
            "amount_cents": 15990,
            "currency": "BRL",
            "paid_at": "2026-12-08T14:00:00-03:00",
            "method": if i.is_multiple_of(2) { "pix" } else { "boleto" },
        });
        if i.is_multiple_of(2) {
            body["invoice_id"] = json!(format!("NF-{i:08}"));
        } else {
            body["reference"] = json!(format!("TX{i:010}"));
        }
        (
            subject.clone(),
            async_nats::jetstream::message::PublishMessage::build()
                .message_id(format!("pay-{i}"))
                .payload(body.to_string().into()),
        )
    });
    nats::publish_windowed(&rig.js, messages).await?;

    let mut child = spawn_service("reconcile", &rig.nats_url(), &rig.db_url, &settings)?;
    let started = Instant::now();
    let mut first = None;
    let mut last_report = Instant::now();
    let target = i64::try_from(n)?;
    loop {
        let done = applied(&rig.pool).await.unwrap_or(0);
        if done > 0 && first.is_none() {
            first = Some((Instant::now(), done));
        }
        if done >= target {
            break;
        }
        if started.elapsed() > Duration::from_secs(3600) {
            bail!("reconciliation did not finish within an hour ({done} of {n})");
        }
        if last_report.elapsed() > Duration::from_secs(10) {
            say(&format!(
                "  … {done} of {n} applied after {:.0} s",
                started.elapsed().as_secs_f64()
            ));
            last_report = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (t0, at_first) = first.unwrap_or((started, 0));
    let secs = t0.elapsed().as_secs_f64();
    let rate = (target - at_first) as f64 / secs.max(f64::EPSILON);
    child.kill().await.ok();
    let settled: i64 = sqlx::query_scalar("SELECT count(*) FROM fence.settled")
        .fetch_one(&rig.pool)
        .await?;
    say(&format!(
        "reconcile payments matched and settled {rate:>10.0} payments/s ({secs:.1} s first to last; {settled} invoices settled)"
    ));
    say(&format!(
        "ratio    reconcile / postgres ceiling = {:.2}; reconcile / jetstream ceiling = {:.2}",
        rate / rig.pg_rate,
        rate / rig.js_rate
    ));
    rig.finish().await
}
