//! Stopping dunning the moment a payment settles an invoice, without waiting for the
//! in-order consumer.
//!
//! The in-order consumer ([`crate::events`]) applies `invoice.paid` completely: the
//! payment history and risk class, a `cancelled` step-log row per pending step, the
//! thank-you. But it applies every domain event in stream order, one batch at a time
//! across all replicas, so under load (a burst of firing, of `message.*` events) a
//! payment waits behind everything stored before it. This module's durable consumer
//! ([`subjects::CONSUMER_SCHEDULER_HALT`], filtered to `invoice.paid` only, up to
//! four batches at once per process) does the one urgent part at once: it
//! **halts** the invoice, in one statement per batch that clears the open invoice's
//! next step and stamps `halted_at` (rows a firing claim holds are tried again once
//! it has committed).
//!
//! Why a halted invoice stays halted until the in-order consumer stops it:
//! - firing takes due invoices `FOR UPDATE ... WHERE next_at <= now`; the halt of a
//!   row a claim already holds waits for the claim's commit (so after the halt no step
//!   of the invoice can fire), and a claim that comes after re-reads the row and skips
//!   it (its `next_at` is NULL);
//! - every other writer of an invoice's schedule (the in-order consumer's replanning,
//!   a policy migration) goes through [`crate::model::save_invoices`], which keeps
//!   `next_at` NULL while the invoice is halted and still open;
//! - the in-order consumer's `stop` then marks the invoice paid and schedules the
//!   thank-you, which firing sends as before (a paid invoice is no longer "open").
//!
//! Halting is idempotent (only an open, unhalted invoice changes), so redeliveries and
//! replicas need no dedup; nothing here is recorded as processed, so the in-order
//! consumer still applies the event in full. An `invoice.paid` for an invoice the
//! scheduler does not know yet halts nothing: its `invoice.opened` is still ahead of
//! it in the in-order consumer, which plans and then stops it.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, consumer};
use chrono::{DateTime, Utc};
use regua_contract::events::InvoicePaid;
use regua_contract::{Envelope, EventType, subjects};
use regua_platform::nats;
use regua_platform::shutdown::Backoff;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::{Scheduler, SchedulerError};

const MAX_DELIVER: i64 = 10;
const BATCH: usize = 500;

/// The durable consumer of `invoice.paid` (every tenant). Batches may overlap across
/// replicas: halting does not depend on order.
pub fn consumer_config() -> consumer::pull::Config {
    consumer::pull::Config {
        durable_name: Some(subjects::CONSUMER_SCHEDULER_HALT.into()),
        description: Some("regua scheduler: halts an invoice's dunning once it is paid".into()),
        filter_subject: subjects::event_any_tenant(EventType::InvoicePaid),
        ack_policy: consumer::AckPolicy::Explicit,
        // Created on a stream with history, it starts at the tail: the in-order
        // consumer applies every earlier payment in full anyway.
        deliver_policy: consumer::DeliverPolicy::New,
        ack_wait: Duration::from_secs(30),
        max_deliver: MAX_DELIVER,
        max_ack_pending: 10_000,
        ..Default::default()
    }
}

/// Batches halted at once: a batch waiting for rows a firing claim holds does not hold
/// up the payments behind it.
const IN_FLIGHT: usize = 4;

/// Halts paid invoices until `cancel`, then finishes the batches in hand.
pub async fn run(s: Arc<Scheduler>, consumer: consumer::PullConsumer, cancel: CancellationToken) {
    let name = subjects::CONSUMER_SCHEDULER_HALT;
    let mut backoff = Backoff::new(Duration::from_millis(200));
    let mut tasks = JoinSet::new();
    while let Some(msgs) = nats::fetch_batch(
        &consumer,
        BATCH,
        Duration::from_millis(500),
        &mut backoff,
        &cancel,
        name,
    )
    .await
    {
        while tasks.try_join_next().is_some() {}
        if msgs.is_empty() {
            continue;
        }
        while tasks.len() >= IN_FLIGHT {
            tasks.join_next().await;
        }
        let s = Arc::clone(&s);
        tasks.spawn(async move {
            match halt(&s, &msgs).await {
                Ok(_) => {
                    for m in &msgs {
                        nats::settle(m, jetstream::AckKind::Ack).await;
                    }
                }
                Err(e) => {
                    // Not any one message's fault (halting cannot fail on content):
                    // all of them are delivered again later.
                    tracing::warn!(error = %e, consumer = name, n = msgs.len(), "halt failed; will retry");
                    for m in &msgs {
                        nats::settle_failure(&s.js, m, name, MAX_DELIVER, &e.to_string(), false)
                            .await;
                    }
                }
            }
        });
    }
    while tasks.join_next().await.is_some() {}
}

/// How long a halt waits before trying again the invoices a claim had locked.
const LOCKED_RETRY: Duration = Duration::from_millis(5);

/// Halts the open invoices `msgs` settle; returns how many it halted.
///
/// Rows another transaction holds (a firing claim, the in-order consumer's write) are
/// skipped and tried again once it has committed, rather than waited for: a claim locks
/// its invoices in due order and this batch in its own, and waiting on each other's
/// rows could deadlock.
pub async fn halt(s: &Scheduler, msgs: &[jetstream::Message]) -> Result<usize, SchedulerError> {
    let mut paid: Vec<(String, String, DateTime<Utc>)> = msgs
        .iter()
        .filter_map(|m| serde_json::from_slice::<Envelope<InvoicePaid>>(&m.payload).ok())
        .filter(|e| e.event_type == EventType::InvoicePaid)
        .map(|e| (e.tenant, e.data.invoice_id, e.occurred_at))
        .collect();
    let mut halted = 0;
    while !paid.is_empty() {
        let (tenants, invoices): (Vec<&str>, Vec<&str>) = paid
            .iter()
            .map(|(t, i, _)| (t.as_str(), i.as_str()))
            .unzip();
        let settled: Vec<DateTime<Utc>> = paid.iter().map(|p| p.2).collect();
        // `clock_timestamp()`: the database's clock at the write, the one
        // reconciliation's settlement is stamped with, so the two compare.
        let rows: Vec<(bool, DateTime<Utc>, DateTime<Utc>)> = sqlx::query_as(
            // Each key is looked up by the primary key on its own (a locking subquery is
            // never flattened into a join), whatever the planner guesses about how many
            // invoices are open: a join it costs on a bad guess scans the whole table
            // per key, holding the locks it took meanwhile.
            "WITH t AS (SELECT i.tenant, i.invoice_id, p.settled_at \
             FROM UNNEST($1::text[], $2::text[], $3::timestamptz[]) AS p(tenant, invoice_id, settled_at) \
             CROSS JOIN LATERAL (SELECT tenant, invoice_id FROM scheduler.invoices i \
             WHERE i.tenant = p.tenant AND i.invoice_id = p.invoice_id AND i.status = 'open' \
             AND i.halted_at IS NULL FOR UPDATE SKIP LOCKED) AS i) \
             UPDATE scheduler.invoices AS i SET next_at = NULL, halted_at = clock_timestamp() FROM t \
             WHERE i.tenant = t.tenant AND i.invoice_id = t.invoice_id \
             RETURNING i.test_clock, i.halted_at, t.settled_at",
        )
        .bind(&tenants)
        .bind(&invoices)
        .bind(&settled)
        .fetch_all(&s.pool)
        .await?;
        halted += rows.len();
        for (test_clock, at, settled_at) in &rows {
            // A test clock's events carry simulated time: only real-time tenants measure.
            if !test_clock {
                let took = (*at - *settled_at).to_std().unwrap_or_default();
                metrics::histogram!(regua_platform::metrics::PAYMENT_TO_CANCEL)
                    .record(took.as_secs_f64());
            }
        }
        if rows.len() == paid.len() {
            break;
        }
        // The rest needs no halt (unknown yet, already stopped) or was locked: keep
        // only those still open and unhalted, and try them again.
        let still: HashSet<(String, String)> = sqlx::query_as(
            "SELECT i.tenant, i.invoice_id FROM UNNEST($1::text[], $2::text[]) AS p(tenant, invoice_id) \
             CROSS JOIN LATERAL (SELECT tenant, invoice_id FROM scheduler.invoices i \
             WHERE i.tenant = p.tenant AND i.invoice_id = p.invoice_id AND i.status = 'open' \
             AND i.halted_at IS NULL OFFSET 0) AS i",
        )
        .bind(&tenants)
        .bind(&invoices)
        .fetch_all(&s.pool)
        .await?
        .into_iter()
        .collect();
        paid.retain(|(t, i, _)| still.contains(&(t.clone(), i.clone())));
        if !paid.is_empty() {
            tokio::time::sleep(LOCKED_RETRY).await;
        }
    }
    Ok(halted)
}
