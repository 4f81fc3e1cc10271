//! What reconciliation knows, built from domain events: tenants (time zone, test
//! clock), customers' documents, and invoices (terms, reference, status). One durable
//! consumer shared by every replica; each batch is one transaction with its event ids,
//! acked after commit. When an invoice appears, payments that arrived before it and
//! name it are matched at once.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, consumer};
use regua_contract::{DomainEvent, Envelope, EventType, subjects};
use regua_domain::calendar::CalendarConfig;
use regua_platform::{nats, outbox};
use serde_json::value::RawValue;
use sqlx::PgConnection;
use tokio_util::sync::CancellationToken;

use crate::{Reconcile, ReconcileError, ledger};

const BATCH: usize = 500;
const MAX_DELIVER: i64 = 5;

/// The events reconciliation's state comes from.
const STATE_EVENTS: [EventType; 6] = [
    EventType::TenantCreated,
    EventType::TenantClockAdvanced,
    EventType::CustomerUpserted,
    EventType::InvoiceOpened,
    EventType::InvoiceUpdated,
    EventType::InvoiceCanceled,
];

/// The durable consumer of domain events.
pub fn consumer_config() -> consumer::pull::Config {
    nats::in_order_events(
        subjects::CONSUMER_RECONCILE_STATE,
        "regua reconciliation: tenants, customers, invoices",
        BATCH,
        MAX_DELIVER,
    )
}

/// Consumes until `cancel`.
pub async fn run(r: Arc<Reconcile>, consumer: consumer::PullConsumer, cancel: CancellationToken) {
    let c = nats::BatchConsumer {
        js: &r.js,
        consumer: &consumer,
        name: subjects::CONSUMER_RECONCILE_STATE,
        pool: &r.pool,
        batch: BATCH,
        expires: Duration::from_millis(500),
        max_deliver: MAX_DELIVER,
    };
    let poison = |e: &ReconcileError| matches!(e, ReconcileError::Json(_));
    let wake = || r.wake_relay();
    nats::consume_batches(
        c,
        &cancel,
        |conn, msgs| {
            let r = Arc::clone(&r);
            Box::pin(async move { apply(&r, conn, msgs).await })
        },
        poison,
        wake,
    )
    .await;
}

async fn apply(
    r: &Reconcile,
    conn: &mut sqlx::PgConnection,
    msgs: &[jetstream::Message],
) -> Result<(), ReconcileError> {
    let mut tx = sqlx::Connection::begin(conn).await?;
    // Most events (the dispatchers' own `message.*`, say) are not of these kinds: no
    // write for them.
    let table = "reconcile.processed";
    let mut settled = ledger::Settled::default();
    for env in outbox::fresh_events(&mut tx, table, msgs, &STATE_EVENTS).await? {
        apply_one(r, &mut tx, &env, &mut settled).await?;
    }
    tx.commit().await?;
    r.signal(&settled).await;
    Ok(())
}

async fn apply_one(
    r: &Reconcile,
    conn: &mut PgConnection,
    env: &Envelope<&RawValue>,
    settled: &mut ledger::Settled,
) -> Result<(), ReconcileError> {
    let tenant = env.tenant.as_str();
    match DomainEvent::decode(env.event_type, env.data)? {
        DomainEvent::TenantCreated(t) => {
            sqlx::query(
                "INSERT INTO reconcile.tenants (id, timezone, test_clock, clock_now) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (id) DO UPDATE SET timezone = EXCLUDED.timezone, test_clock = EXCLUDED.test_clock, \
                 clock_now = GREATEST(reconcile.tenants.clock_now, EXCLUDED.clock_now)",
            )
            .bind(&t.id)
            .bind(&t.timezone)
            .bind(t.test_clock)
            .bind(t.now)
            .execute(&mut *conn)
            .await?;
        }
        DomainEvent::TenantClockAdvanced(c) => {
            sqlx::query(
                "UPDATE reconcile.tenants SET clock_now = GREATEST(clock_now, $2) WHERE id = $1",
            )
            .bind(tenant)
            .bind(c.now)
            .execute(&mut *conn)
            .await?;
        }
        DomainEvent::CustomerUpserted(c) => {
            sqlx::query(
                "INSERT INTO reconcile.customers (tenant, customer_id, document) VALUES ($1, $2, $3) \
                 ON CONFLICT (tenant, customer_id) DO UPDATE SET document = EXCLUDED.document",
            )
            .bind(tenant)
            .bind(&c.customer.customer_id)
            .bind(&c.customer.document)
            .execute(&mut *conn)
            .await?;
        }
        DomainEvent::InvoiceOpened(c) | DomainEvent::InvoiceUpdated(c) => {
            let i = &c.invoice;
            let effective = CalendarConfig::default()
                .calendar()
                .next_business_day(i.due_date);
            let fee = i.late_fee.unwrap_or_default();
            let opened = env.event_type == EventType::InvoiceOpened;
            if opened {
                // An id reused for a new invoice: the old settlement no longer applies.
                regua_platform::fence::reopen(conn, tenant, &i.invoice_id).await?;
            }
            sqlx::query(
                "INSERT INTO reconcile.invoices (tenant, invoice_id, customer_id, status, revision, amount_cents, \
                 currency, due_date, effective_due, fine_bps, interest_bps, reference, state, opened_at, updated_at) \
                 VALUES ($1, $2, $3, 'open', $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $13) \
                 ON CONFLICT (tenant, invoice_id) DO UPDATE SET customer_id = EXCLUDED.customer_id, \
                 status = CASE WHEN $14 THEN 'open' ELSE reconcile.invoices.status END, \
                 revision = EXCLUDED.revision, amount_cents = EXCLUDED.amount_cents, currency = EXCLUDED.currency, \
                 due_date = EXCLUDED.due_date, effective_due = EXCLUDED.effective_due, fine_bps = EXCLUDED.fine_bps, \
                 interest_bps = EXCLUDED.interest_bps, reference = EXCLUDED.reference, state = EXCLUDED.state, \
                 updated_at = EXCLUDED.updated_at",
            )
            .bind(tenant)
            .bind(&i.invoice_id)
            .bind(&i.customer_id)
            .bind(i.revision.and_then(|r| i64::try_from(r).ok()))
            .bind(i.amount_cents)
            .bind(&i.currency)
            .bind(i.due_date)
            .bind(effective)
            .bind(i32::try_from(fee.fine_bps).unwrap_or(0))
            .bind(i32::try_from(fee.monthly_interest_bps).unwrap_or(0))
            .bind(&i.reference)
            .bind(sqlx::types::Json(i))
            .bind(env.occurred_at)
            .bind(opened)
            .execute(&mut *conn)
            .await?;
            let now = r.clock.now();
            for payment_id in
                ledger::waiting_for(conn, tenant, &i.invoice_id, i.reference.as_deref()).await?
            {
                ledger::rematch(conn, settled, tenant, &payment_id, None, now).await?;
            }
        }
        DomainEvent::InvoiceCanceled(c) => {
            sqlx::query(
                "UPDATE reconcile.invoices SET status = 'canceled', updated_at = $3 \
                 WHERE tenant = $1 AND invoice_id = $2 AND status = 'open'",
            )
            .bind(tenant)
            .bind(&c.invoice_id)
            .bind(env.occurred_at)
            .execute(&mut *conn)
            .await?;
        }
        _ => {}
    }
    Ok(())
}
