//! `payment.received` from NATS: a durable pull consumer over
//! `regua.v1.in.*.payment.received`, shared by every replica. A group of payments is
//! one transaction (payment rows, matches, applications, fence rows, outbox), committed
//! before the messages are acked; up to `reconcile_workers` groups run at once. A
//! payment that cannot be decoded is reported as `intake.rejected` (never dropped) and
//! acked.

use std::hash::{Hash, Hasher};
use std::sync::Arc;

use async_nats::jetstream::{self, AckKind, consumer};
use futures::StreamExt;
use regua_contract::decode::{Issues, PaymentDraft, decode_payment};
use regua_contract::events::IntakeRejected;
use regua_contract::{DomainEvent, InboundKind, subjects};
use regua_platform::nats::Held;
use regua_platform::outbox::event_message;
use regua_platform::{Config, db, nats, telemetry};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::ledger::{self, Source};
use crate::{OUTBOX, Reconcile, ReconcileError};

/// Payments per transaction, on average.
const GROUP_SIZE: usize = 4;

/// Deliveries before a payment that keeps failing is dead-lettered.
pub const MAX_DELIVER: i64 = 10;

/// The durable consumer of payments.
pub fn consumer_config(config: &Config) -> consumer::pull::Config {
    consumer::pull::Config {
        durable_name: Some(subjects::CONSUMER_RECONCILE.into()),
        description: Some("regua reconciliation: payments".into()),
        filter_subject: subjects::inbound_any_tenant(InboundKind::PaymentReceived),
        ack_policy: consumer::AckPolicy::Explicit,
        deliver_policy: consumer::DeliverPolicy::All,
        ack_wait: config.reconcile_ack_wait,
        max_deliver: MAX_DELIVER,
        max_ack_pending: i64::try_from(config.reconcile_batch_size * 4).unwrap_or(1000),
        ..Default::default()
    }
}

/// Consumes until `cancel`; payments in hand are finished first.
///
/// A fetched batch is split into `reconcile_workers` groups by what each payment names
/// (its invoice, reference or payer), so payments to one invoice stay in one group and
/// in order. Each group is one transaction, committed before its messages are acked:
/// one commit for many payments. A group that fails is retried payment by payment.
pub async fn run(r: Arc<Reconcile>, consumer: consumer::PullConsumer, cancel: CancellationToken) {
    let (name, batch) = (subjects::CONSUMER_RECONCILE, r.config.reconcile_batch_size);
    nats::consume(
        &consumer,
        name,
        batch,
        nats::FETCH_EXPIRES,
        &cancel,
        |msgs| {
            let (r, cancel) = (&r, &cancel);
            async move {
                // Small groups: a settlement is committed (and its `invoice.paid` published)
                // only when its whole group is, so a group's size bounds that delay.
                let workers = r.config.reconcile_workers.max(1);
                let groups = msgs.len().div_ceil(GROUP_SIZE).max(workers);
                let mut parts: Vec<Vec<Item>> = (0..groups).map(|_| Vec::new()).collect();
                for msg in msgs {
                    let item = Item::new(msg);
                    let slot = usize::try_from(item.group_key() % groups as u64).unwrap_or(0);
                    parts[slot].push(item);
                }
                futures::stream::iter(parts.into_iter().filter(|p| !p.is_empty()))
                    .for_each_concurrent(workers, |part| handle(r, part, cancel))
                    .await;
                // Every failure is settled payment by payment in `handle`.
                Ok::<(), std::convert::Infallible>(())
            }
        },
    )
    .await;
}

/// One consumed message, decoded.
struct Item {
    msg: jetstream::Message,
    message_id: String,
    tenant: String,
    span: tracing::Span,
    draft: Option<PaymentDraft>,
    issues: Issues,
}

impl Item {
    fn new(msg: jetstream::Message) -> Item {
        let message_id = nats::message_id(&msg);
        let span = nats::process_span(
            &msg.subject,
            &message_id,
            subjects::CONSUMER_RECONCILE,
            msg.headers.as_ref(),
        );
        let tenant = subjects::parse_inbound(&msg.subject)
            .map(|p| p.tenant.to_owned())
            .unwrap_or_else(|| subjects::tenant_token(&msg.subject).to_owned());
        span.record("regua.tenant", tenant.as_str());
        let (draft, issues) = decode_payment(&msg.payload);
        if let Some(id) = draft.as_ref().and_then(|d| d.invoice_id.as_deref()) {
            span.record("regua.invoice_id", id);
        }
        Item {
            msg,
            message_id,
            tenant,
            span,
            draft,
            issues,
        }
    }

    /// What decides the group: the invoice (or reference, or payer) it names.
    fn group_key(&self) -> u64 {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        self.tenant.hash(&mut h);
        match &self.draft {
            Some(d) => {
                let key = d
                    .invoice_id
                    .as_deref()
                    .or(d.reference.as_deref())
                    .or(d.payer_document.as_ref().map(|p| p.as_str()))
                    .unwrap_or(&d.payment_id);
                key.hash(&mut h);
            }
            None => self.message_id.hash(&mut h),
        }
        h.finish()
    }
}

/// Applies a group and settles its messages. A database outage holds the group (no
/// delivery spent) until Postgres returns; a group that fails otherwise is retried
/// payment by payment, and a payment that still fails is retried later, then
/// dead-lettered.
async fn handle(r: &Reconcile, items: Vec<Item>, cancel: &CancellationToken) {
    let msgs: Vec<&jetstream::Message> = items.iter().map(|i| &i.msg).collect();
    match nats::hold_through_outage(&msgs, cancel, || apply(r, &items), is_outage).await {
        Held::Done(outcomes) => {
            r.wake_relay();
            for (item, outcome) in items.iter().zip(outcomes) {
                item.span.record("regua.outcome", outcome);
                nats::settle(&item.msg, AckKind::Ack).await;
            }
        }
        Held::Failed(e) if items.len() > 1 => {
            tracing::warn!(error = %e, n = items.len(), "a payment group failed; retrying one by one");
            for item in items {
                Box::pin(handle(r, vec![item], cancel)).await;
            }
        }
        Held::Failed(e) => {
            for item in &items {
                tracing::warn!(parent: &item.span, error = %e, "applying a payment failed");
                nats::settle_failure(
                    &r.js,
                    &item.msg,
                    subjects::CONSUMER_RECONCILE,
                    MAX_DELIVER,
                    &e.to_string(),
                    false,
                )
                .await;
            }
        }
        Held::HandedBack => {}
    }
}

/// Whether `e` is Postgres being unreachable, which no payment is to blame for.
fn is_outage(e: &ReconcileError) -> bool {
    matches!(e, ReconcileError::Db(e) if db::is_connection_error(e))
}

/// Applies `items` in one transaction; returns each one's outcome.
async fn apply(r: &Reconcile, items: &[Item]) -> Result<Vec<&'static str>, ReconcileError> {
    let now = r.clock.now();
    let mut tx = r.pool.begin().await?;
    let mut times = ledger::Times::default();
    let mut settlements = ledger::Settlements::default();
    let mut outcomes = Vec::with_capacity(items.len());
    let mut results = Vec::with_capacity(items.len());
    for item in items {
        let traceparent = telemetry::traceparent(&item.span);
        let outcome = match &item.draft {
            None => {
                let seq = item.msg.info().ok().map(|i| i.stream_sequence);
                let report = IntakeRejected::new(
                    item.msg.subject.to_string(),
                    item.message_id.clone(),
                    seq,
                    item.issues.errors.clone(),
                    item.issues.warnings.clone(),
                    &item.msg.payload,
                );
                let event = event_message(
                    now,
                    &item.tenant,
                    &DomainEvent::IntakeRejected(report),
                    &item.message_id,
                    &item.message_id,
                    traceparent,
                )?;
                OUTBOX.enqueue(&mut tx, &[event]).await?;
                results.push("rejected");
                "rejected"
            }
            Some(d) => {
                let applied = ledger::ingest(
                    &mut tx,
                    &mut times,
                    &mut settlements,
                    &item.tenant,
                    d,
                    Source::Nats,
                    &item.message_id,
                    now,
                    traceparent,
                )
                .instrument(item.span.clone())
                .await?;
                results.push(applied.result());
                applied.name()
            }
        };
        outcomes.push(outcome);
    }
    let settled = settlements.settle(&mut tx).await?;
    r.commit(tx).await?;
    r.signal(&settled).await;
    results.into_iter().for_each(ledger::count);
    Ok(outcomes)
}
