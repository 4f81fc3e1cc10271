//! The journey timeline: an invoice's (or a customer's) whole story in order, each
//! entry with the trace it happened in.
//!
//! Every domain event that names an invoice (opened, updated, messages and their
//! provider statuses, payments, escalation, settlement) is projected by its own
//! durable consumer ([`subjects::CONSUMER_TIMELINE`]), apart from the in-order consumer
//! that plans and stops invoices, so the projection never delays a stop. Step decisions
//! (sent, skipped, deferred, cancelled, with their reasons) come from the step log.
//! The trace id of an event is the one its producer published it in (the `traceparent`
//! header); a step's is the firing's.
//!
//! Entries carry facts, never the debtor's contact data: each event's detail keeps only
//! the fields in [`DETAIL_FIELDS`].

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, consumer};
use chrono::{DateTime, Utc};
use regua_contract::subjects;
use regua_platform::{nats, telemetry};
use serde::Serialize;
use serde_json::{Map, Value};
use sqlx::Row;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::{Scheduler, SchedulerError};

const MAX_DELIVER: i64 = 10;
const BATCH: usize = 500;

/// The fields of an event's data (or of its `invoice`) a timeline entry keeps. No name,
/// document, e-mail, phone or message text is among them.
pub const DETAIL_FIELDS: &[&str] = &[
    "invoice_id",
    "invoice_ids",
    "customer_id",
    "status",
    "revision",
    "reference",
    "amount_cents",
    "currency",
    "issued_on",
    "due_date",
    "effective_due_date",
    "step",
    "channel",
    "provider",
    "provider_message_id",
    "command_id",
    "reason",
    "fallback_to",
    "attempts",
    "segments",
    "sent_at",
    "level",
    "policy",
    "policy_version",
    "payment_id",
    "amount_paid_cents",
    "matched_by",
    "balance_cents",
    "credit_cents",
    "overpaid_cents",
    "days_late",
    "paid_at",
    "method",
];

pub fn consumer_config() -> consumer::pull::Config {
    nats::in_order_events(
        subjects::CONSUMER_TIMELINE,
        "regua timeline: every invoice's journey, for the timeline routes",
        BATCH,
        MAX_DELIVER,
    )
}

/// Projects events until `cancel`.
pub async fn run(s: Arc<Scheduler>, consumer: consumer::PullConsumer, cancel: CancellationToken) {
    let c = nats::BatchConsumer {
        js: &s.js,
        consumer: &consumer,
        name: subjects::CONSUMER_TIMELINE,
        pool: &s.pool,
        batch: BATCH,
        expires: Duration::from_millis(500),
        max_deliver: MAX_DELIVER,
    };
    nats::consume_batches(
        c,
        &cancel,
        |conn, msgs| Box::pin(async move { project(conn, msgs).await }),
        // Events that do not parse as envelopes are the in-order consumer's to report.
        |_| false,
        || {},
    )
    .await;
}

/// One row per (event, invoice it names).
struct Projected {
    event_id: Uuid,
    invoice_id: String,
    tenant: String,
    customer_id: Option<String>,
    at: DateTime<Utc>,
    recorded_at: DateTime<Utc>,
    stream_seq: i64,
    kind: String,
    detail: Value,
    trace_id: Option<String>,
}

async fn project(
    conn: &mut sqlx::PgConnection,
    msgs: &[jetstream::Message],
) -> Result<(), SchedulerError> {
    let rows: Vec<Projected> = msgs.iter().flat_map(rows_of).collect();
    if rows.is_empty() {
        return Ok(());
    }
    let ids: Vec<Uuid> = rows.iter().map(|r| r.event_id).collect();
    let invoices: Vec<&str> = rows.iter().map(|r| r.invoice_id.as_str()).collect();
    let tenants: Vec<&str> = rows.iter().map(|r| r.tenant.as_str()).collect();
    let customers: Vec<Option<&str>> = rows.iter().map(|r| r.customer_id.as_deref()).collect();
    let ats: Vec<DateTime<Utc>> = rows.iter().map(|r| r.at).collect();
    let recorded: Vec<DateTime<Utc>> = rows.iter().map(|r| r.recorded_at).collect();
    let seqs: Vec<i64> = rows.iter().map(|r| r.stream_seq).collect();
    let kinds: Vec<&str> = rows.iter().map(|r| r.kind.as_str()).collect();
    let details: Vec<&Value> = rows.iter().map(|r| &r.detail).collect();
    let traces: Vec<Option<&str>> = rows.iter().map(|r| r.trace_id.as_deref()).collect();
    sqlx::query(
        "INSERT INTO scheduler.timeline \
         (event_id, invoice_id, tenant, customer_id, at, stream_seq, kind, detail, trace_id, recorded_at) \
         SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::text[], $5::timestamptz[], \
                              $6::bigint[], $7::text[], $8::jsonb[], $9::text[], $10::timestamptz[]) \
         ON CONFLICT DO NOTHING",
    )
    .bind(&ids)
    .bind(&invoices)
    .bind(&tenants)
    .bind(&customers)
    .bind(&ats)
    .bind(&seqs)
    .bind(&kinds)
    .bind(&details)
    .bind(&traces)
    .bind(&recorded)
    .execute(conn)
    .await?;
    Ok(())
}

/// The timeline rows of one event: one per invoice it names, none when it names none
/// (or is not an envelope).
fn rows_of(msg: &jetstream::Message) -> Vec<Projected> {
    let Ok(e) = serde_json::from_slice::<Value>(&msg.payload) else {
        return Vec::new();
    };
    let data = &e["data"];
    let invoice = &data["invoice"];
    let mut invoices: Vec<String> = Vec::new();
    for v in [&data["invoice_id"], &invoice["invoice_id"]] {
        if let Some(id) = v.as_str() {
            invoices.push(id.to_owned());
        }
    }
    if let Some(ids) = data["invoice_ids"].as_array() {
        invoices.extend(ids.iter().filter_map(|v| v.as_str().map(str::to_owned)));
    }
    invoices.sort();
    invoices.dedup();
    let (Some(id), Some(tenant), Some(kind), Some(at)) = (
        e["id"].as_str().and_then(|s| Uuid::parse_str(s).ok()),
        e["tenant"].as_str(),
        e["type"].as_str(),
        e["occurred_at"]
            .as_str()
            .and_then(|s| DateTime::parse_from_rfc3339(s).ok()),
    ) else {
        return Vec::new();
    };
    let customer_id = data["customer_id"]
        .as_str()
        .or(invoice["customer_id"].as_str())
        .map(str::to_owned);
    let detail = detail(data);
    let trace_id = msg
        .headers
        .as_ref()
        .and_then(|h| h.get("traceparent"))
        .and_then(|tp| telemetry::trace_id_of(tp.as_str()));
    let info = msg.info().ok();
    let stream_seq = info
        .as_ref()
        .and_then(|i| i64::try_from(i.stream_sequence).ok())
        .unwrap_or(0);
    let recorded_at = info
        .and_then(|i| {
            DateTime::from_timestamp(i.published.unix_timestamp(), i.published.nanosecond())
        })
        .unwrap_or(at.with_timezone(&Utc));
    invoices
        .into_iter()
        .map(|invoice_id| Projected {
            event_id: id,
            invoice_id,
            tenant: tenant.to_owned(),
            customer_id: customer_id.clone(),
            at: at.with_timezone(&Utc),
            recorded_at,
            stream_seq,
            kind: kind.to_owned(),
            detail: detail.clone(),
            trace_id: trace_id.clone(),
        })
        .collect()
}

/// The allowed fields of `data` and of its `invoice`, as one object.
fn detail(data: &Value) -> Value {
    let mut out = Map::new();
    for source in [&data["invoice"], data] {
        if let Some(obj) = source.as_object() {
            for (k, v) in obj {
                if DETAIL_FIELDS.contains(&k.as_str()) && !v.is_null() {
                    out.insert(k.clone(), v.clone());
                }
            }
        }
    }
    // What was due, when a payment event states it (amounts only).
    if let Some(due) = data["due"].as_object() {
        out.insert("due".into(), Value::Object(due.clone()));
    }
    Value::Object(out)
}

/// One entry of a timeline.
#[derive(Debug, Serialize)]
pub struct Entry {
    /// The entry's own time: for a test-clock tenant, the scheduler's decisions and the
    /// dispatchers' messages are on the simulated clock, intake's and reconciliation's
    /// events on the real one.
    pub at: DateTime<Utc>,
    /// When it was recorded (the broker's clock for events, the database's for step
    /// decisions): the timeline's order.
    pub recorded_at: DateTime<Utc>,
    pub invoice_id: String,
    /// The event type (`invoice.opened`, `message.delivered`, `invoice.paid`, …) or
    /// `step` for a step decision.
    pub kind: String,
    pub trace_id: Option<String>,
    #[serde(flatten)]
    pub detail: Map<String, Value>,
}

/// Whose timeline.
pub enum Of<'a> {
    Invoice(&'a str),
    Customer(&'a str),
}

/// The entries of an invoice or a customer, in the order they were recorded (a step
/// decision before the events recorded at the same instant, events in stream order).
pub async fn entries(
    pool: &sqlx::PgPool,
    tenant: &str,
    of: Of<'_>,
) -> Result<Vec<Entry>, sqlx::Error> {
    let (filter_events, filter_steps, key) = match of {
        Of::Invoice(id) => ("t.invoice_id = $2", "l.invoice_id = $2", id),
        Of::Customer(id) => (
            "t.customer_id = $2",
            "l.invoice_id IN (SELECT invoice_id FROM scheduler.invoices WHERE tenant = $1 AND customer_id = $2)",
            id,
        ),
    };
    let sql = format!(
        "SELECT at, recorded_at, invoice_id, kind, trace_id, detail, o, seq FROM ( \
           SELECT l.at, l.recorded_at, l.invoice_id, 'step' AS kind, l.trace_id, \
                  jsonb_strip_nulls(jsonb_build_object('step', l.step, 'state', l.state, 'reason', l.reason, \
                    'planned_at', l.planned_at, 'channel', l.channel, 'command_id', l.command_id, \
                    'policy_version', l.policy_version)) AS detail, 0 AS o, l.seq \
           FROM scheduler.step_log l WHERE l.tenant = $1 AND {filter_steps} \
           UNION ALL \
           SELECT t.at, t.recorded_at, t.invoice_id, t.kind, t.trace_id, t.detail, 1 AS o, t.stream_seq AS seq \
           FROM scheduler.timeline t WHERE t.tenant = $1 AND {filter_events} \
         ) e ORDER BY recorded_at, o, seq"
    );
    let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(tenant)
        .bind(key)
        .fetch_all(pool)
        .await?;
    rows.into_iter()
        .map(|r| {
            let detail = match r.try_get::<Value, _>("detail")? {
                Value::Object(m) => m,
                _ => Map::new(),
            };
            Ok(Entry {
                at: r.try_get("at")?,
                recorded_at: r.try_get("recorded_at")?,
                invoice_id: r.try_get("invoice_id")?,
                kind: r.try_get("kind")?,
                trace_id: r.try_get("trace_id")?,
                detail,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn detail_keeps_facts_and_drops_contact_data() {
        let data = json!({
            "invoice": {
                "invoice_id": "NF-1", "customer_id": "C-1", "amount_cents": 15990,
                "due_date": "2026-12-10", "status": "open",
                "customer": {"name": "João", "document": "529.982.247-25",
                             "email": "joao@example.com", "phone": "+5511987654321"}
            },
            "recipient": {"email": "joao@example.com"},
            "channel": "whatsapp", "text": "Olá João"
        });
        let d = detail(&data);
        assert_eq!(d["invoice_id"], "NF-1");
        assert_eq!(d["amount_cents"], 15990);
        assert_eq!(d["channel"], "whatsapp");
        let text = d.to_string();
        for pii in [
            "João",
            "529.982.247-25",
            "joao@example.com",
            "+5511987654321",
            "Olá",
        ] {
            assert!(!text.contains(pii), "{pii} in {text}");
        }
    }
}
