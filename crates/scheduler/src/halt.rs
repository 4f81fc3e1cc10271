//! Stopping dunning the moment a payment settles an invoice, without waiting for the
//! in-order consumer.
//!
//! The in-order consumer ([`crate::events`]) applies `invoice.paid` completely: the
//! payment history and risk class, a `cancelled` step-log row per pending step, the
//! thank-you. But it applies every domain event in stream order, one batch at a time
//! across all replicas, so under load (a burst of firing, of `message.*` events) a
//! payment waits behind everything stored before it. This module's durable consumer
//! ([`subjects::CONSUMER_SCHEDULER_HALT`], filtered to `invoice.paid` only, up to
//! four batches at once per process) does the one urgent part at once: it **halts**
//! the invoice, inserting a row into `scheduler.halts`, one statement per batch.
//!
//! Why no pending step of a halted invoice can fire:
//! - every query that takes due invoices (the claim's candidates, its read of the
//!   locked customers' due invoices, a test clock's next instant) requires
//!   [`crate::model::NOT_HALTED`]: an open invoice with a halt row is never taken,
//!   whatever its `next_at` (the in-order consumer may still plan or re-plan it before
//!   it applies the payment);
//! - the halt takes no lock on the invoice, so it waits for nothing. A claim that
//!   already read the invoice when the halt commits (its statement began before)
//!   was already firing that one step: its command goes out, and the dispatcher's
//!   guard refuses it, because reconciliation settled the fence before `invoice.paid`
//!   existed. That is the "in-flight command" half of the guarantee (README, Stop);
//! - the in-order consumer's `stop` then marks the invoice paid and schedules the
//!   thank-you, which [`crate::model::NOT_HALTED`] lets through (a paid invoice never
//!   reopens, so its halt row can stay as the record of when dunning stopped).
//!
//! Halting is idempotent (`ON CONFLICT DO NOTHING`), so redeliveries and replicas need
//! no dedup; nothing here is recorded as processed, so the in-order consumer still
//! applies the event in full. An `invoice.paid` for an invoice the scheduler does not
//! know yet halts it before it is planned. The halt commits without waiting for the
//! WAL flush (`synchronous_commit = off`): a halt lost to a database crash is only a
//! lost shortcut, since the in-order consumer applies the same event durably and the
//! dispatcher's fence already refuses the invoice's dunning.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, consumer};
use chrono::{DateTime, Utc};
use regua_contract::events::InvoicePaid;
use regua_contract::signals::InvoiceSettled;
use regua_contract::{Envelope, EventType, subjects};
use regua_platform::nats;
use regua_platform::shutdown::Backoff;
use sqlx::PgConnection;
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

/// Batches halted at once per process.
pub const IN_FLIGHT: usize = 4;

/// Halts paid invoices until `cancel`, then finishes the batches in hand. Messages are
/// pulled continuously (no request per batch), and whatever has arrived is halted at
/// once as one batch.
pub async fn run(s: Arc<Scheduler>, consumer: consumer::PullConsumer, cancel: CancellationToken) {
    let name = subjects::CONSUMER_SCHEDULER_HALT;
    let mut backoff = Backoff::new(Duration::from_millis(200));
    let mut tasks = JoinSet::new();
    while !cancel.is_cancelled() {
        let messages = match consumer
            .stream()
            .max_messages_per_batch(BATCH)
            .heartbeat(Duration::from_secs(5))
            .messages()
            .await
        {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(error = %e, consumer = name, "pulling failed; retrying");
                if !backoff.wait(&cancel).await {
                    break;
                }
                continue;
            }
        };
        backoff.reset();
        let mut chunks = futures::StreamExt::ready_chunks(messages, BATCH);
        while let Some(chunk) = next_or_cancel(&mut chunks, &cancel).await {
            let mut msgs = Vec::with_capacity(chunk.len());
            for m in chunk {
                match m {
                    Ok(m) => msgs.push(m),
                    // The pull goes on (a missed heartbeat, a server restart).
                    Err(e) => tracing::warn!(error = %e, consumer = name, "pulling"),
                }
            }
            if !msgs.is_empty() {
                spawn_bounded(&mut tasks, settle(Arc::clone(&s), msgs)).await;
            }
        }
    }
    while tasks.join_next().await.is_some() {}
}

/// Halts the invoices reconciliation signals settled
/// ([`subjects::settled_any_tenant`], core NATS, the queue group
/// [`subjects::QUEUE_SCHEDULER_HALT`] across replicas) until `cancel`, then finishes the
/// batches in hand. The signal leaves reconciliation right after its commit, before
/// `invoice.paid` has gone through the outbox and the event stream: whichever arrives
/// first halts the invoice. A signal is at most once, so a lost one (this process
/// down, a broker restart) or a failed write only leaves the halt to `invoice.paid`.
pub async fn run_signals(s: Arc<Scheduler>, cancel: CancellationToken) {
    let mut backoff = Backoff::new(Duration::from_millis(200));
    let (_client, subscriber) = loop {
        // A connection of its own: signals do not queue behind the shared one's traffic
        // (pulls, acks, publishes of the firing).
        let subscribed = match nats::connect_as(&s.config, "regua-scheduler-signals").await {
            Ok(client) => client
                .queue_subscribe(
                    subjects::settled_any_tenant(),
                    subjects::QUEUE_SCHEDULER_HALT.to_owned(),
                )
                .await
                .map(|sub| (client, sub))
                .map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        match subscribed {
            Ok(sub) => break sub,
            Err(e) => {
                tracing::warn!(error = %e, "subscribing to settlement signals failed; retrying");
                if !backoff.wait(&cancel).await {
                    return;
                }
            }
        }
    };
    let mut chunks = futures::StreamExt::ready_chunks(subscriber, BATCH);
    let mut tasks = JoinSet::new();
    while let Some(chunk) = next_or_cancel(&mut chunks, &cancel).await {
        let paid: Vec<Paid> = chunk.iter().filter_map(signalled).collect();
        if paid.is_empty() {
            continue;
        }
        let s = Arc::clone(&s);
        let halt = async move {
            if let Err(e) = halt_paid(&s, &paid).await {
                // Only the shortcut is lost: `invoice.paid` halts these invoices.
                tracing::warn!(error = %e, n = paid.len(), "halting signalled settlements failed");
            }
        };
        spawn_bounded(&mut tasks, halt).await;
    }
    // Dropping the subscription unsubscribes; then the batches in hand finish.
    drop(chunks);
    while tasks.join_next().await.is_some() {}
}

/// The next item of `stream`, or `None` once it ends or `cancel` fires.
async fn next_or_cancel<S: futures::Stream + Unpin>(
    stream: &mut S,
    cancel: &CancellationToken,
) -> Option<S::Item> {
    tokio::select! {
        () = cancel.cancelled() => None,
        item = futures::StreamExt::next(stream) => item,
    }
}

/// Spawns `batch` once fewer than [`IN_FLIGHT`] batches are in hand.
async fn spawn_bounded(
    tasks: &mut JoinSet<()>,
    batch: impl std::future::Future<Output = ()> + Send + 'static,
) {
    while tasks.try_join_next().is_some() {}
    while tasks.len() >= IN_FLIGHT {
        tasks.join_next().await;
    }
    tasks.spawn(batch);
}

/// The paid invoice a settlement signal reports; `None` (logged) for one that does not
/// decode.
fn signalled(m: &async_nats::Message) -> Option<Paid> {
    match serde_json::from_slice::<InvoiceSettled>(&m.payload) {
        Ok(sig) => Some(Paid {
            tenant: subjects::tenant_token(&m.subject).to_owned(),
            invoice_id: sig.invoice_id,
            settled_at: sig.settled_at,
        }),
        Err(e) => {
            tracing::warn!(error = %e, subject = %m.subject, "a settlement signal that does not decode");
            None
        }
    }
}

/// Halts one batch, then acks it (or has it delivered again).
async fn settle(s: Arc<Scheduler>, msgs: Vec<jetstream::Message>) {
    let name = subjects::CONSUMER_SCHEDULER_HALT;
    match halt(&s, &msgs).await {
        Ok(_) => {
            for m in &msgs {
                nats::settle(m, jetstream::AckKind::Ack).await;
            }
        }
        Err(e) => {
            // Not any one message's fault (halting cannot fail on content): all of
            // them are delivered again later.
            tracing::warn!(error = %e, consumer = name, n = msgs.len(), "halt failed; will retry");
            for m in &msgs {
                nats::settle_failure(&s.js, m, name, MAX_DELIVER, &e.to_string(), false).await;
            }
        }
    }
}

/// Halts the invoices `msgs` report paid; returns how many it halted (a repeat, or
/// an invoice the in-order consumer already stopped, halts nothing).
pub async fn halt(s: &Scheduler, msgs: &[jetstream::Message]) -> Result<usize, SchedulerError> {
    let paid: Vec<Paid> = msgs
        .iter()
        .filter_map(|m| serde_json::from_slice::<Envelope<InvoicePaid>>(&m.payload).ok())
        .filter(|e| e.event_type == EventType::InvoicePaid)
        .map(|e| Paid {
            tenant: e.tenant,
            invoice_id: e.data.invoice_id,
            settled_at: e.occurred_at,
        })
        .collect();
    halt_paid(s, &paid).await
}

/// Halts `paid`: one statement on the halt's pool, whose commits do not wait for the
/// WAL flush. Returns how many it halted.
async fn halt_paid(s: &Scheduler, paid: &[Paid]) -> Result<usize, SchedulerError> {
    if paid.is_empty() {
        return Ok(0);
    }
    let mut conn = s.halt_pool.acquire().await?;
    Ok(record(&mut conn, paid, By::Halt).await?)
}

/// A paid invoice, as its `invoice.paid` reports it.
pub struct Paid {
    pub tenant: String,
    pub invoice_id: String,
    /// Reconciliation's settlement instant (the event's `occurred_at`).
    pub settled_at: DateTime<Utc>,
}

/// Which path stopped an invoice's dunning first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum By {
    /// This module's consumer.
    Halt,
    /// The in-order consumer, applying `invoice.paid` in full before the halt came.
    InOrder,
}

/// Records, in the caller's transaction, that the dunning of `paid` stopped now, for
/// those not recorded yet, and measures settlement → stopped for them
/// (`regua_payment_to_cancel_seconds`, real-time tenants only: a test clock's events
/// carry simulated time). Returns how many it recorded.
pub async fn record(conn: &mut PgConnection, paid: &[Paid], by: By) -> Result<usize, sqlx::Error> {
    if paid.is_empty() {
        return Ok(0);
    }
    // In key order: concurrent writers (the halt's batches, the in-order consumer) that
    // name the same invoices then wait for one another instead of deadlocking (which
    // Postgres would break only after `deadlock_timeout`, a second).
    let mut sorted: Vec<&Paid> = paid.iter().collect();
    sorted.sort_by(|a, b| (&a.tenant, &a.invoice_id).cmp(&(&b.tenant, &b.invoice_id)));
    let mut tenants = Vec::with_capacity(paid.len());
    let mut invoices = Vec::with_capacity(paid.len());
    let mut settled = Vec::with_capacity(paid.len());
    for p in sorted {
        tenants.push(p.tenant.as_str());
        invoices.push(p.invoice_id.as_str());
        settled.push(p.settled_at);
    }
    // `clock_timestamp()` (the column's default): the database's clock at the write,
    // the one reconciliation's settlement is stamped with, so the two compare.
    let rows: Vec<(DateTime<Utc>, DateTime<Utc>, Option<bool>)> = sqlx::query_as(
        "WITH h AS (INSERT INTO scheduler.halts (tenant, invoice_id, settled_at, by_halt) \
         SELECT t.tenant, t.invoice_id, t.settled_at, $4 \
         FROM UNNEST($1::text[], $2::text[], $3::timestamptz[]) WITH ORDINALITY AS t(tenant, invoice_id, settled_at, n) \
         ORDER BY t.n ON CONFLICT DO NOTHING RETURNING tenant, settled_at, halted_at) \
         SELECT h.halted_at, h.settled_at, t.test_clock FROM h \
         LEFT JOIN scheduler.tenants t ON t.id = h.tenant",
    )
    .bind(&tenants)
    .bind(&invoices)
    .bind(&settled)
    .bind(by == By::Halt)
    .fetch_all(conn)
    .await?;
    for (at, settled_at, test_clock) in &rows {
        if *test_clock == Some(false) {
            let took = (*at - *settled_at).to_std().unwrap_or_default();
            metrics::histogram!(regua_platform::metrics::PAYMENT_TO_CANCEL)
                .record(took.as_secs_f64());
        }
    }
    Ok(rows.len())
}
