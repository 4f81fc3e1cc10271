//! What the guard knows, built from domain events: invoices paid or canceled,
//! customers' WhatsApp opt-ins, and opt-outs from any source. Every replica of every
//! channel shares one durable consumer; each batch is one transaction with its event
//! ids, acked after commit.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, consumer};
use regua_contract::{DomainEvent, Envelope, EventType, subjects};
use regua_platform::{nats, outbox};
use serde_json::value::RawValue;
use sqlx::PgConnection;
use tokio_util::sync::CancellationToken;

use crate::{DispatchError, Dispatcher};

const BATCH: usize = 500;

/// The events the guard's facts come from.
const GUARD_EVENTS: [EventType; 6] = [
    EventType::InvoicePaid,
    EventType::InvoiceCanceled,
    EventType::InvoiceOpened,
    EventType::CustomerUpserted,
    EventType::CustomerChannelOptedOut,
    EventType::CustomerChannelOptedIn,
];
const MAX_DELIVER: i64 = 5;

/// The durable consumer of domain events.
pub fn consumer_config() -> consumer::pull::Config {
    nats::in_order_events(
        subjects::CONSUMER_DISPATCH_STATE,
        "regua dispatchers: invoices closed, opt-ins and opt-outs",
        BATCH,
        MAX_DELIVER,
    )
}

/// Consumes until `cancel`.
pub async fn run(d: Arc<Dispatcher>, consumer: consumer::PullConsumer, cancel: CancellationToken) {
    let c = nats::BatchConsumer {
        js: &d.js,
        consumer: &consumer,
        name: subjects::CONSUMER_DISPATCH_STATE,
        pool: &d.pool,
        batch: BATCH,
        expires: Duration::from_millis(1000),
        max_deliver: MAX_DELIVER,
    };
    nats::consume_batches(
        c,
        &cancel,
        |conn, msgs| Box::pin(async move { apply(conn, msgs).await }),
        |_| false,
        || {},
    )
    .await;
}

async fn apply(
    conn: &mut sqlx::PgConnection,
    msgs: &[jetstream::Message],
) -> Result<(), DispatchError> {
    let mut tx = sqlx::Connection::begin(conn).await?;
    // Most events (the dispatchers' own `message.*`, say) are not of these kinds: no
    // write for them.
    let table = "dispatch.processed";
    for env in outbox::fresh_events(&mut tx, table, msgs, &GUARD_EVENTS).await? {
        apply_one(&mut tx, &env).await?;
    }
    tx.commit().await?;
    Ok(())
}

async fn apply_one(
    conn: &mut PgConnection,
    env: &Envelope<&RawValue>,
) -> Result<(), DispatchError> {
    let tenant = env.tenant.as_str();
    let close = |invoice_id: String, reason: &'static str| {
        sqlx::query(
            "INSERT INTO dispatch.closed_invoices (tenant, invoice_id, reason) VALUES ($1, $2, $3) \
             ON CONFLICT DO NOTHING",
        )
        .bind(tenant.to_owned())
        .bind(invoice_id)
        .bind(reason)
    };
    match DomainEvent::decode(env.event_type, env.data)? {
        DomainEvent::InvoicePaid(p) => {
            close(p.invoice_id, "paid").execute(&mut *conn).await?;
        }
        DomainEvent::InvoiceCanceled(c) => {
            close(c.invoice_id, "canceled").execute(&mut *conn).await?;
        }
        DomainEvent::InvoiceOpened(o) => {
            // An id reused for a new invoice opens it again.
            sqlx::query(
                "DELETE FROM dispatch.closed_invoices WHERE tenant = $1 AND invoice_id = $2",
            )
            .bind(tenant)
            .bind(&o.invoice.invoice_id)
            .execute(&mut *conn)
            .await?;
        }
        DomainEvent::CustomerUpserted(c) => {
            sqlx::query(
                "INSERT INTO dispatch.customers (tenant, customer_id, whatsapp_opt_in) VALUES ($1, $2, $3) \
                 ON CONFLICT (tenant, customer_id) DO UPDATE SET whatsapp_opt_in = EXCLUDED.whatsapp_opt_in",
            )
            .bind(tenant)
            .bind(&c.customer.customer_id)
            .bind(c.customer.whatsapp_opt_in)
            .execute(&mut *conn)
            .await?;
        }
        DomainEvent::CustomerChannelOptedOut(o) => {
            sqlx::query(
                "INSERT INTO dispatch.opt_outs (tenant, customer_id, channel, source, at) \
                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
            )
            .bind(tenant)
            .bind(&o.customer_id)
            .bind(o.channel.as_str())
            .bind(&o.source)
            .bind(env.occurred_at)
            .execute(&mut *conn)
            .await?;
        }
        DomainEvent::CustomerChannelOptedIn(o) => {
            sqlx::query(
                "DELETE FROM dispatch.opt_outs WHERE tenant = $1 AND customer_id = $2 AND channel = $3 \
                 AND at <= $4",
            )
            .bind(tenant)
            .bind(&o.customer_id)
            .bind(o.channel.as_str())
            .bind(env.occurred_at)
            .execute(&mut *conn)
            .await?;
        }
        _ => {}
    }
    Ok(())
}
