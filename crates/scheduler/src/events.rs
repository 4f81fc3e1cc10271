//! The scheduler's view of the world, built from domain events on `regua.v1.evt.>`.
//!
//! Only the replica holding the durable's lease consumes it, one batch after another
//! ([`nats::consume_batches`]), so events are applied in stream order: a customer before
//! the invoice that names it, an invoice before its payment. Each batch is one
//! transaction: processed event ids, state, schedule rows, step log and outbox; the
//! batch is acked after commit. A batch that fails is retried message by message; a
//! message that keeps failing is dead-lettered with its reason.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, consumer};
use chrono::{DateTime, Utc};
use regua_contract::commands::DispatchCommand;
use regua_contract::events::{MessageEvent, TenantCreated};
use regua_contract::{DomainEvent, Envelope, EventType, subjects};
use regua_platform::{nats, telemetry};
use serde_json::value::RawValue;
use sqlx::{Connection, PgConnection};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::model::{self, Customer, Invoice, LogRow, Status, Tenant};
use crate::{Scheduler, SchedulerError, halt, policies};

/// Deliveries before a message that keeps failing is dead-lettered.
pub const MAX_DELIVER: i64 = 5;

/// The durable consumer the scheduler reads events from.
pub fn consumer_config(batch: usize) -> consumer::pull::Config {
    nats::in_order_events(
        subjects::CONSUMER_SCHEDULER,
        "regua scheduler: plans invoices, stops on payment",
        batch,
        MAX_DELIVER,
    )
}

/// Consumes until `cancel`; the batch in hand is finished first. A batch that fails is
/// retried message by message; a malformed event will never apply and is dead-lettered
/// at once.
pub async fn run(s: Arc<Scheduler>, consumer: consumer::PullConsumer, cancel: CancellationToken) {
    let c = nats::BatchConsumer {
        js: &s.js,
        consumer: &consumer,
        name: subjects::CONSUMER_SCHEDULER,
        pool: &s.pool,
        batch: s.config.scheduler_batch_size,
        expires: Duration::from_millis(500),
        max_deliver: MAX_DELIVER,
    };
    nats::consume_batches(
        c,
        &cancel,
        |conn, msgs| {
            let s = Arc::clone(&s);
            Box::pin(async move { apply_batch(&s, conn, msgs).await })
        },
        |e| matches!(e, EventError::Malformed(_)),
        || {
            s.fire_wake.notify_one();
            s.wake_relay();
        },
    )
    .await;
}

/// A decoded event with what processing needs.
struct Item {
    envelope: Envelope<DomainEvent>,
    span: tracing::Span,
}

/// Why a single event could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum EventError {
    #[error("malformed event: {0}")]
    Malformed(String),
    #[error(transparent)]
    Scheduler(#[from] SchedulerError),
}

impl From<sqlx::Error> for EventError {
    fn from(e: sqlx::Error) -> Self {
        EventError::Scheduler(SchedulerError::Db(e))
    }
}

fn decode(msg: &jetstream::Message) -> Result<Option<Item>, EventError> {
    let raw: Envelope<&RawValue> =
        serde_json::from_slice(&msg.payload).map_err(|e| EventError::Malformed(e.to_string()))?;
    let kind = raw.event_type;
    // The events the scheduler acts on, decoded once; the rest pass by.
    let data = match kind {
        EventType::TenantCreated
        | EventType::CustomerUpserted
        | EventType::InvoiceOpened
        | EventType::InvoiceUpdated
        | EventType::InvoiceCanceled
        | EventType::InvoicePaid
        | EventType::InvoicePartiallyPaid
        | EventType::CustomerChannelOptedOut
        | EventType::CustomerChannelOptedIn
        | EventType::MessageSkipped => DomainEvent::decode(kind, raw.data)
            .map_err(|e| EventError::Malformed(format!("{}: {e}", kind.as_str())))?,
        _ => return Ok(None),
    };
    // Of the skipped messages, only the ones that came too late are planned again.
    if let DomainEvent::MessageSkipped(m) = &data
        && !is_late(m)
    {
        return Ok(None);
    }
    let envelope = Envelope {
        id: raw.id,
        event_type: kind,
        version: raw.version,
        occurred_at: raw.occurred_at,
        tenant: raw.tenant,
        correlation_id: raw.correlation_id,
        causation_id: raw.causation_id,
        data,
    };
    let id = envelope.id.to_string();
    let span = nats::process_span(
        &msg.subject,
        &id,
        subjects::CONSUMER_SCHEDULER,
        msg.headers.as_ref(),
    );
    span.record("regua.tenant", envelope.tenant.as_str());
    Ok(Some(Item { envelope, span }))
}

/// A message a dispatcher skipped because its send window had closed when it got there
/// (a backlog, a dispatcher outage): the scheduler plans the step again, for the next
/// allowed instant, rather than lose it (caps and windows defer, never drop).
fn is_late(m: &MessageEvent) -> bool {
    m.reason.as_deref() == Some(WINDOW_CLOSED)
}

/// The step name of a thank-you's command.
pub const THANKS_STEP: &str = "on_paid";

/// The `message.skipped` reason of a message that came after its window.
pub const WINDOW_CLOSED: &str = "window_closed";

/// The state a batch reads and writes.
struct Work {
    tenants: HashMap<String, Tenant>,
    customers: HashMap<(String, String), Customer>,
    invoices: HashMap<(String, String), Invoice>,
    dirty_customers: HashSet<(String, String)>,
    dirty_invoices: Vec<(String, String)>,
    log: Vec<LogRow>,
    current: HashMap<String, Vec<policies::Version>>,
    /// (tenant, command id) of messages that were never sent: their contacts no longer
    /// count against the caps.
    unsent: Vec<(String, String)>,
}

async fn apply_batch(
    s: &Scheduler,
    conn: &mut PgConnection,
    msgs: &[jetstream::Message],
) -> Result<(), EventError> {
    let mut items = Vec::with_capacity(msgs.len());
    for m in msgs {
        // A malformed event fails the batch; retried alone, it is dead-lettered.
        if let Some(i) = decode(m)? {
            items.push(i);
        }
    }
    if items.is_empty() {
        // Only events the scheduler does not act on (message.*, intake.rejected, …).
        return Ok(());
    }
    let mut tx = conn.begin().await?;
    let ids: Vec<Uuid> = items.iter().map(|i| i.envelope.id).collect();
    let now = s.clock.now();
    let fresh: HashSet<Uuid> = sqlx::query_scalar(
        "INSERT INTO scheduler.processed (event_id, processed_at) SELECT UNNEST($1::uuid[]), $2 \
         ON CONFLICT DO NOTHING RETURNING event_id",
    )
    .bind(&ids)
    .bind(now)
    .fetch_all(&mut *tx)
    .await?
    .into_iter()
    .collect();
    items.retain(|i| fresh.contains(&i.envelope.id));
    if items.is_empty() {
        tx.commit().await?;
        return Ok(());
    }
    for item in &items {
        match &item.envelope.data {
            DomainEvent::TenantCreated(t) => {
                tenant_created(&mut tx, t, item.envelope.occurred_at).await?;
            }
            DomainEvent::InvoicePartiallyPaid(p) => {
                let e = &item.envelope;
                let (i, c) = (&p.invoice_id, &p.customer_id);
                record_payment(&mut tx, e, i, c, p.due.on, p.amount_paid_cents, false).await?;
            }
            DomainEvent::InvoicePaid(p) => {
                let e = &item.envelope;
                let (i, c) = (&p.invoice_id, &p.customer_id);
                let on = p.paid_at.date_naive();
                record_payment(&mut tx, e, i, c, on, p.amount_paid_cents, true).await?;
            }
            _ => {}
        }
    }
    let mut tenant_ids: Vec<String> = items.iter().map(|i| i.envelope.tenant.clone()).collect();
    tenant_ids.sort();
    tenant_ids.dedup();
    let mut customer_keys = Vec::new();
    let mut invoice_keys = Vec::new();
    // The invoices the batch names that may exist already, and so be in a firing
    // claim: all but `invoice.opened`, which names one intake has never seen.
    let mut existing = Vec::new();
    for i in &items {
        let t = i.envelope.tenant.clone();
        let invoice = match &i.envelope.data {
            DomainEvent::CustomerUpserted(c) => {
                customer_keys.push((t, c.customer.customer_id.clone()));
                None
            }
            DomainEvent::CustomerChannelOptedOut(o) => {
                customer_keys.push((t, o.customer_id.clone()));
                None
            }
            DomainEvent::CustomerChannelOptedIn(o) => {
                customer_keys.push((t, o.customer_id.clone()));
                None
            }
            DomainEvent::InvoiceOpened(c) | DomainEvent::InvoiceUpdated(c) => {
                customer_keys.push((t.clone(), c.invoice.customer_id.clone()));
                Some((t, c.invoice.invoice_id.clone()))
            }
            DomainEvent::InvoiceCanceled(c) => Some((t, c.invoice_id.clone())),
            DomainEvent::InvoicePaid(p) => {
                customer_keys.push((t.clone(), p.customer_id.clone()));
                Some((t, p.invoice_id.clone()))
            }
            DomainEvent::MessageSkipped(m) => {
                for id in &m.invoice_ids {
                    existing.push((t.clone(), id.clone()));
                    invoice_keys.push((t.clone(), id.clone()));
                }
                None
            }
            _ => None,
        };
        if let Some(key) = invoice {
            if i.envelope.event_type != EventType::InvoiceOpened {
                existing.push(key.clone());
            }
            invoice_keys.push(key);
        }
    }
    crate::fire::lock_schedules(&mut tx, tenant_ids.iter().map(String::as_str)).await?;
    lock_owners(&mut tx, &existing).await?;
    let mut w = Work {
        tenants: model::load_tenants(&mut tx, &tenant_ids).await?,
        customers: model::load_customers(&mut tx, &customer_keys).await?,
        invoices: model::load_invoices(&mut tx, &invoice_keys).await?,
        dirty_customers: HashSet::new(),
        dirty_invoices: Vec::new(),
        log: Vec::new(),
        current: HashMap::new(),
        unsent: Vec::new(),
    };
    // Warm the policy cache for every invoice in hand, so stopping one can log its
    // pending steps without a query per event.
    let mut versions: Vec<(String, String, i32)> = w
        .invoices
        .values()
        .map(|i| (i.tenant.clone(), i.policy.clone(), i.policy_version))
        .collect();
    versions.sort();
    versions.dedup();
    for (t, name, v) in versions {
        s.policies.get(&mut tx, &t, &name, v).await?;
    }
    for item in &items {
        if matches!(
            item.envelope.event_type,
            EventType::InvoiceOpened | EventType::InvoiceUpdated
        ) {
            ensure_policies(s, &mut tx, &mut w, &item.envelope.tenant).await?;
        }
    }
    for item in &items {
        item.span.in_scope(|| apply(s, &mut w, item, now))?;
    }
    plan_pending(s, &mut tx, &mut w).await?;
    save_customers(&mut tx, &w).await?;
    let mut seen = HashSet::new();
    let dirty: Vec<&Invoice> = w
        .dirty_invoices
        .iter()
        .filter(|k| seen.insert((*k).clone()))
        .filter_map(|k| w.invoices.get(k))
        .collect();
    model::save_invoices(&mut tx, &dirty).await?;
    model::write_log(&mut tx, &w.log).await?;
    forget_contacts(&mut tx, &w.unsent).await?;
    // A payment the halt has not recorded yet (it would only repeat this stop) is
    // recorded as stopped here.
    let paid: Vec<halt::Paid> = items
        .iter()
        .filter_map(|item| match &item.envelope.data {
            DomainEvent::InvoicePaid(p) => Some(halt::Paid {
                tenant: item.envelope.tenant.clone(),
                invoice_id: p.invoice_id.clone(),
                settled_at: item.envelope.occurred_at,
            }),
            _ => None,
        })
        .collect();
    halt::record(&mut tx, &paid, halt::By::InOrder).await?;
    tx.commit().await?;
    Ok(())
}

/// Deletes the contacts of `commands` ((tenant, command id)): messages never sent.
async fn forget_contacts(
    conn: &mut PgConnection,
    commands: &[(String, String)],
) -> Result<(), sqlx::Error> {
    if commands.is_empty() {
        return Ok(());
    }
    let (tenants, ids): (Vec<&str>, Vec<&str>) = commands
        .iter()
        .map(|(t, c)| (t.as_str(), c.as_str()))
        .unzip();
    sqlx::query(
        "DELETE FROM scheduler.contacts c USING UNNEST($1::text[], $2::text[]) AS u(tenant, command_id) \
         WHERE c.tenant = u.tenant AND c.command_id = u.command_id",
    )
    .bind(&tenants)
    .bind(&ids)
    .execute(conn)
    .await?;
    Ok(())
}

/// Takes, waiting, the customer locks a firing claim holds while it decides and writes
/// an invoice's progress, for the invoices among `keys` that exist, before the batch
/// reads them. Without it, an invoice read here just before a claim fired its step
/// would be written back with the progress from before that step (the step then fired
/// again and logged twice). Only existing invoices can be in a claim; claims only
/// try-lock, so they never wait on this, and this consumer is the only one that waits.
async fn lock_owners(
    conn: &mut PgConnection,
    keys: &[(String, String)],
) -> Result<(), sqlx::Error> {
    if keys.is_empty() {
        return Ok(());
    }
    let (tenants, ids): (Vec<&str>, Vec<&str>) =
        keys.iter().map(|(t, i)| (t.as_str(), i.as_str())).unzip();
    let owners: Vec<(String, String)> = sqlx::query_as(
        "SELECT i.tenant, i.customer_id FROM UNNEST($1::text[], $2::text[]) AS u(tenant, invoice_id) \
         CROSS JOIN LATERAL (SELECT tenant, customer_id FROM scheduler.invoices i \
         WHERE i.tenant = u.tenant AND i.invoice_id = u.invoice_id OFFSET 0) AS i",
    )
    .bind(&tenants)
    .bind(&ids)
    .fetch_all(&mut *conn)
    .await?;
    if owners.is_empty() {
        return Ok(());
    }
    let names = owners
        .iter()
        .map(|(t, c)| crate::fire::customer_lock(t, c))
        .collect();
    crate::fire::take_locks(conn, names, crate::fire::LockMode::Exclusive).await
}

/// A payment reconciliation applied: later messages state the balance.
async fn record_payment(
    conn: &mut PgConnection,
    e: &Envelope<DomainEvent>,
    invoice_id: &str,
    customer_id: &str,
    paid_on: chrono::NaiveDate,
    amount_cents: i64,
    settles: bool,
) -> Result<(), EventError> {
    sqlx::query(
        "INSERT INTO scheduler.payments (tenant, invoice_id, customer_id, event_id, paid_on, amount_cents, settles) \
         VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING",
    )
    .bind(&e.tenant)
    .bind(invoice_id)
    .bind(customer_id)
    .bind(e.id)
    .bind(paid_on)
    .bind(amount_cents)
    .bind(settles)
    .execute(conn)
    .await?;
    Ok(())
}

async fn tenant_created(
    conn: &mut PgConnection,
    t: &TenantCreated,
    at: DateTime<Utc>,
) -> Result<(), EventError> {
    sqlx::query(
        "INSERT INTO scheduler.tenants (id, legal_name, cnpj, address, contact, timezone, test_clock, clock_now, clock_target, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8, $9) ON CONFLICT (id) DO NOTHING",
    )
    .bind(&t.id)
    .bind(&t.legal_name)
    .bind(&t.cnpj)
    .bind(&t.address)
    .bind(&t.contact)
    .bind(&t.timezone)
    .bind(t.test_clock)
    .bind(if t.test_clock { Some(t.now.unwrap_or(at)) } else { None })
    .bind(at)
    .execute(&mut *conn)
    .await?;
    policies::install_starter(conn, &t.id, at).await?;
    Ok(())
}

async fn ensure_policies(
    s: &Scheduler,
    conn: &mut PgConnection,
    w: &mut Work,
    tenant: &str,
) -> Result<(), EventError> {
    if !w.current.contains_key(tenant) {
        let current = s.policies.current(conn, tenant).await?;
        w.current.insert(tenant.to_owned(), current);
    }
    Ok(())
}

/// Applies one event to the in-memory state. Invoices that need a (re)plan are marked
/// with `next_at = None` and `status = Open` and planned afterwards, once policies are
/// loaded.
fn apply(
    s: &Scheduler,
    w: &mut Work,
    item: &Item,
    real_now: DateTime<Utc>,
) -> Result<(), EventError> {
    let tenant = item.envelope.tenant.clone();
    let Some(t) = w.tenants.get(&tenant).cloned() else {
        tracing::warn!(tenant = %tenant, kind = item.envelope.event_type.as_str(), "event for a tenant the scheduler does not know; ignored");
        return Ok(());
    };
    let now = t.now(real_now);
    match &item.envelope.data {
        DomainEvent::CustomerUpserted(c) => {
            let c = c.customer.clone();
            let key = (tenant, c.customer_id.clone());
            match w.customers.get_mut(&key) {
                Some(existing) => existing.state = c,
                None => {
                    w.customers.insert(
                        key.clone(),
                        Customer {
                            state: c,
                            opted_out: Vec::new(),
                            history: Default::default(),
                        },
                    );
                }
            }
            w.dirty_customers.insert(key);
        }
        DomainEvent::CustomerChannelOptedOut(o) => {
            let key = (tenant, o.customer_id.clone());
            if let Some(c) = w.customers.get_mut(&key) {
                let ch = o.channel.into();
                if !c.opted_out.contains(&ch) {
                    c.opted_out.push(ch);
                }
                w.dirty_customers.insert(key);
            }
        }
        DomainEvent::CustomerChannelOptedIn(o) => {
            let key = (tenant, o.customer_id.clone());
            if let Some(c) = w.customers.get_mut(&key) {
                let ch = o.channel.into();
                c.opted_out.retain(|c| *c != ch);
                w.dirty_customers.insert(key);
            }
        }
        DomainEvent::InvoiceOpened(c) | DomainEvent::InvoiceUpdated(c) => {
            let state = c.invoice.clone();
            let key = (tenant.clone(), state.invoice_id.clone());
            match w.invoices.get_mut(&key) {
                Some(inv) if matches!(inv.status, Status::Open | Status::Done) => {
                    inv.customer_id = state.customer_id.clone();
                    inv.state = state;
                    inv.status = Status::Open;
                    inv.next_at = None;
                    inv.progress.deferred_to = None;
                    w.dirty_invoices.push(key);
                }
                Some(_) => {}
                None => {
                    w.invoices.insert(
                        key.clone(),
                        // Only an opened invoice keeps its trace (firing links to it).
                        Invoice::opened(&t, state, telemetry::traceparent(&item.span), now),
                    );
                    w.dirty_invoices.push(key);
                }
            }
        }
        DomainEvent::InvoiceCanceled(c) => {
            let key = (tenant, c.invoice_id.clone());
            if let Some(inv) = w.invoices.get_mut(&key)
                && matches!(inv.status, Status::Open | Status::Done)
            {
                stop(w, &key, Status::Canceled, "invoice canceled", now, s)?;
            }
        }
        DomainEvent::InvoicePaid(p) => {
            let ckey = (tenant.clone(), p.customer_id.clone());
            let key = (tenant, p.invoice_id.clone());
            let open = w
                .invoices
                .get(&key)
                .is_some_and(|i| matches!(i.status, Status::Open | Status::Done));
            if open {
                if let Some(c) = w.customers.get_mut(&ckey) {
                    c.history.record(p.days_late);
                    w.dirty_customers.insert(ckey);
                }
                stop(w, &key, Status::Paid, "invoice paid", now, s)?;
            }
        }
        DomainEvent::MessageSkipped(m) => refire(w, &tenant, m, now, s),
        _ => {}
    }
    Ok(())
}

/// Plans `m`'s step again for its invoices that are still open and have not moved past
/// it: due now, so firing decides it afresh (the window defers it to the next opening,
/// caps to the next allowed instant, a later step supersedes it, with the reason in
/// the log); its command gets a new id (`:r<k>`). The late message's contact is
/// forgotten, since it was never sent.
fn refire(w: &mut Work, tenant: &str, m: &MessageEvent, now: DateTime<Utc>, s: &Scheduler) {
    let mut refired = false;
    let plan = DispatchCommand::refires_of(&m.command_id);
    for invoice_id in &m.invoice_ids {
        let key = (tenant.to_owned(), invoice_id.clone());
        let Some(inv) = w.invoices.get_mut(&key) else {
            continue;
        };
        // The command is named after its first invoice: a late message of an earlier
        // plan of that invoice (its step was planned again since) changes nothing.
        let named = DispatchCommand::is_named_after(&m.command_id, tenant, invoice_id);
        if named && u32::try_from(inv.refires).unwrap_or(0) != plan {
            continue;
        }
        if inv.status == Status::Paid && m.step == THANKS_STEP && !inv.thanks_pending {
            // A late thank-you goes out at the next opening instead.
            inv.thanks_pending = true;
            inv.next_at = Some(now);
            inv.refires = inv.refires.saturating_add(1);
            w.dirty_invoices.push(key);
            refired = true;
            continue;
        }
        if inv.status != Status::Open {
            continue;
        }
        let Some(policy) = s
            .policies
            .cached(&inv.tenant, &inv.policy, inv.policy_version)
        else {
            continue;
        };
        let Some(i) = policy.steps.iter().position(|st| st.name == m.step) else {
            continue;
        };
        if inv.progress.next != i + 1 {
            // Planned again already, or a later step was decided since.
            continue;
        }
        inv.progress.next = i;
        inv.progress.deferred_to = None;
        inv.next_at = Some(now);
        inv.refires = inv.refires.saturating_add(1);
        w.log.push(LogRow {
            tenant: inv.tenant.clone(),
            invoice_id: inv.invoice_id.clone(),
            step: m.step.clone(),
            policy_version: inv.policy_version,
            state: "deferred",
            reason: Some(WINDOW_CLOSED.to_owned()),
            planned_at: None,
            at: now,
            channel: Some(m.channel.as_str()),
            command_id: Some(m.command_id.clone()),
            trace_id: regua_platform::telemetry::trace_id(&tracing::Span::current()),
        });
        w.dirty_invoices.push(key);
        refired = true;
    }
    if refired {
        w.unsent.push((tenant.to_owned(), m.command_id.clone()));
    }
}

/// Ends an invoice's régua: every pending step is logged as cancelled with `reason`.
/// A paid invoice whose policy has `on_paid` gets its thank-you scheduled at the next
/// window opening.
fn stop(
    w: &mut Work,
    key: &(String, String),
    status: Status,
    reason: &str,
    now: DateTime<Utc>,
    s: &Scheduler,
) -> Result<(), EventError> {
    let Some(inv) = w.invoices.get_mut(key) else {
        return Ok(());
    };
    let policy = s
        .policies
        .cached(&inv.tenant, &inv.policy, inv.policy_version);
    if let Some(p) = &policy {
        for step in p.steps.iter().skip(inv.progress.next) {
            w.log.push(LogRow {
                tenant: inv.tenant.clone(),
                invoice_id: inv.invoice_id.clone(),
                step: step.name.clone(),
                policy_version: inv.policy_version,
                state: "cancelled",
                reason: Some(reason.to_owned()),
                planned_at: None,
                at: now,
                channel: None,
                command_id: None,
                trace_id: regua_platform::telemetry::trace_id(&tracing::Span::current()),
            });
        }
    }
    inv.progress.next = policy.as_ref().map_or(inv.progress.next, |p| p.steps.len());
    inv.progress.deferred_to = None;
    inv.status = status;
    inv.next_at = None;
    inv.thanks_pending = false;
    if status == Status::Paid
        && let Some(p) = &policy
        && p.on_paid.is_some()
    {
        let tz = w
            .customers
            .get(&(inv.tenant.clone(), inv.customer_id.clone()))
            .map(|c| c.state.timezone.clone());
        let tenant_tz = w
            .tenants
            .get(&inv.tenant)
            .map_or(model::DEFAULT_TZ, |t| t.timezone);
        let tz = model::zone(tz.as_deref(), tenant_tz);
        inv.thanks_pending = true;
        inv.next_at = Some(p.send_window.next_open(now, tz, &p.calendar.calendar()));
        // The thank-you's firing links to what caused it: the payment's trace (this
        // event is processed in it), no longer the planning's.
        if let Some(tp) = regua_platform::telemetry::traceparent(&tracing::Span::current()) {
            inv.traceparent = Some(tp);
        }
    }
    w.dirty_invoices.push(key.clone());
    Ok(())
}

/// Plans every invoice marked for planning in this batch.
async fn plan_pending(
    s: &Scheduler,
    conn: &mut PgConnection,
    w: &mut Work,
) -> Result<(), EventError> {
    let keys: Vec<(String, String)> = w
        .dirty_invoices
        .iter()
        .filter(|k| {
            w.invoices.get(*k).is_some_and(|i| {
                i.status == Status::Open && i.next_at.is_none() && !i.thanks_pending
            })
        })
        .cloned()
        .collect();
    for key in keys {
        let Some(t) = w.tenants.get(&key.0).cloned() else {
            continue;
        };
        let Some(inv) = w.invoices.get(&key).cloned() else {
            continue;
        };
        let customer = w
            .customers
            .get(&(inv.tenant.clone(), inv.customer_id.clone()))
            .cloned();
        let (name, version, policy) = if inv.policy.is_empty() {
            let current = w
                .current
                .get(&inv.tenant)
                .map(Vec::as_slice)
                .unwrap_or_default();
            let chosen = policies::select(current, |p| {
                let risk = customer
                    .as_ref()
                    .map_or(regua_domain::policy::RiskClass::Regular, |c| {
                        p.risk_rules.classify(&c.history)
                    });
                p.applies_to.matches(&inv.facts(customer.as_ref(), risk))
            });
            match chosen {
                Some(v) => (v.name.clone(), v.version, Arc::clone(&v.policy)),
                None => {
                    tracing::warn!(tenant = %inv.tenant, "no policy applies and the tenant has no default; invoice not scheduled");
                    continue;
                }
            }
        } else {
            match s
                .policies
                .get(conn, &inv.tenant, &inv.policy, inv.policy_version)
                .await?
            {
                Some(p) => (inv.policy.clone(), inv.policy_version, p),
                None => continue,
            }
        };
        let planned = model::plan_for(&policy, &inv.state, customer.as_ref(), &t);
        if let Some(entry) = w.invoices.get_mut(&key) {
            entry.policy = name;
            entry.policy_version = version;
            entry.next_at = entry.progress.next_at(&planned.plan);
            if entry.next_at.is_none() {
                entry.status = Status::Done;
            }
            tracing::debug!(tenant = %entry.tenant, steps = planned.plan.steps.len(), risk = planned.risk.as_str(), "planned");
        }
    }
    Ok(())
}

async fn save_customers(conn: &mut PgConnection, w: &Work) -> Result<(), sqlx::Error> {
    if w.dirty_customers.is_empty() {
        return Ok(());
    }
    let mut tenant = Vec::new();
    let mut id = Vec::new();
    let mut state = Vec::new();
    let mut opted: Vec<String> = Vec::new();
    let mut paid = Vec::new();
    let mut late = Vec::new();
    let mut max = Vec::new();
    for key in &w.dirty_customers {
        let Some(c) = w.customers.get(key) else {
            continue;
        };
        tenant.push(key.0.as_str());
        id.push(key.1.as_str());
        state.push(model::state_text(&c.state)?);
        // A text[] per row travels as one comma-joined string (channel names have none).
        opted.push(
            c.opted_out
                .iter()
                .map(|c| c.as_str())
                .collect::<Vec<_>>()
                .join(","),
        );
        paid.push(i32::try_from(c.history.paid).unwrap_or(i32::MAX));
        late.push(i32::try_from(c.history.paid_late).unwrap_or(i32::MAX));
        max.push(i32::try_from(c.history.max_days_late).unwrap_or(i32::MAX));
    }
    sqlx::query(
        "INSERT INTO scheduler.customers (tenant, customer_id, state, opted_out, paid, paid_late, max_days_late) \
         SELECT t, c, s, CASE WHEN o = '' THEN '{}'::text[] ELSE string_to_array(o, ',') END, p, l, m \
         FROM UNNEST($1::text[], $2::text[], $3::text[]::json[], $4::text[], $5::int[], $6::int[], $7::int[]) AS x(t, c, s, o, p, l, m) \
         ON CONFLICT (tenant, customer_id) DO UPDATE SET state = EXCLUDED.state, opted_out = EXCLUDED.opted_out, \
         paid = EXCLUDED.paid, paid_late = EXCLUDED.paid_late, max_days_late = EXCLUDED.max_days_late",
    )
    .bind(&tenant)
    .bind(&id)
    .bind(&state)
    .bind(&opted)
    .bind(&paid)
    .bind(&late)
    .bind(&max)
    .execute(conn)
    .await?;
    Ok(())
}
