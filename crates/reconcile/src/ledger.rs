//! The payment ledger: recording a payment, matching it, applying it to an invoice,
//! and settling. Each payment is one transaction: the payment row (the idempotency
//! key), the match, the application, the settlement fence and the outbox events.

use chrono::{DateTime, NaiveDate, Utc};
use chrono_tz::Tz;
use regua_contract::DomainEvent;
use regua_contract::decode::PaymentDraft;
use regua_contract::events::{InvoicePaid, InvoicePartiallyPaid, PaymentMatched, PaymentUnmatched};
use regua_contract::signals::InvoiceSettled;
use regua_domain::charges::{self, Terms};
use regua_platform::fence;
use regua_platform::outbox::{OutboxMessage, event_message};
use serde::Serialize;
use sqlx::{PgConnection, Row};

use crate::{OUTBOX, ReconcileError};

/// Where a payment came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Nats,
    Http,
    PixWebhook,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Nats => "nats",
            Source::Http => "http",
            Source::PixWebhook => "pix_webhook",
        }
    }
}

/// What happened to one payment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Applied {
    /// Tied to an invoice and applied.
    Matched {
        payment_id: String,
        invoice_id: String,
        matched_by: &'static str,
        settled: bool,
        balance_cents: i64,
        credit_cents: i64,
    },
    /// Waiting for review in the unmatched queue.
    Unmatched { payment_id: String, reason: String },
    /// This `payment_id` was recorded before: no second effect.
    Duplicate { payment_id: String },
}

/// Counts one payment's result in `regua_reconcile_payments_total`: `paid` and
/// `partial` (matched, settling the invoice or not), `unmatched`, `duplicate`,
/// `rejected`.
pub fn count(result: &'static str) {
    metrics::counter!(regua_platform::metrics::RECONCILE_PAYMENTS, "result" => result).increment(1);
}

impl Applied {
    /// The metrics result (see [`count`]).
    pub fn result(&self) -> &'static str {
        match self {
            Applied::Matched { settled: true, .. } => "paid",
            Applied::Matched { settled: false, .. } => "partial",
            Applied::Unmatched { .. } => "unmatched",
            Applied::Duplicate { .. } => "duplicate",
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Applied::Matched { .. } => "matched",
            Applied::Unmatched { .. } => "unmatched",
            Applied::Duplicate { .. } => "duplicate",
        }
    }
}

/// An invoice as reconciliation keeps it.
#[derive(Debug, Clone)]
pub struct InvoiceRow {
    pub tenant: String,
    pub invoice_id: String,
    pub customer_id: String,
    pub status: String,
    pub currency: String,
    pub terms: Terms,
    /// Payments applied so far.
    pub applications: i32,
}

pub const INVOICE_COLUMNS: &str = "tenant, invoice_id, customer_id, status, currency, amount_cents, effective_due, fine_bps, interest_bps, applications";

impl InvoiceRow {
    pub fn from_row(r: &sqlx::postgres::PgRow) -> Result<InvoiceRow, sqlx::Error> {
        Ok(InvoiceRow {
            tenant: r.try_get("tenant")?,
            invoice_id: r.try_get("invoice_id")?,
            customer_id: r.try_get("customer_id")?,
            status: r.try_get("status")?,
            currency: r.try_get("currency")?,
            terms: Terms {
                principal_cents: r.try_get("amount_cents")?,
                effective_due_date: r.try_get("effective_due")?,
                fine_bps: u32::try_from(r.try_get::<i32, _>("fine_bps")?).unwrap_or(0),
                monthly_interest_bps: u32::try_from(r.try_get::<i32, _>("interest_bps")?)
                    .unwrap_or(0),
            },
            applications: r.try_get("applications")?,
        })
    }
}

/// A tenant's time zone and clock, as reconciliation knows them.
#[derive(Debug, Clone, Copy)]
pub struct TenantTime {
    pub tz: Tz,
    /// A test-clock tenant's simulated now.
    pub clock_now: Option<DateTime<Utc>>,
}

impl TenantTime {
    /// The tenant's calendar day at `at`.
    pub fn day(&self, at: DateTime<Utc>) -> NaiveDate {
        at.with_timezone(&self.tz).date_naive()
    }

    /// Today for the tenant: its test clock's day, else `now`'s.
    pub fn today(&self, now: DateTime<Utc>) -> NaiveDate {
        self.day(self.clock_now.unwrap_or(now))
    }
}

/// The tenant's zone and clock; São Paulo on real time for a tenant not yet known.
pub async fn tenant_time(conn: &mut PgConnection, tenant: &str) -> Result<TenantTime, sqlx::Error> {
    let row =
        sqlx::query("SELECT timezone, test_clock, clock_now FROM reconcile.tenants WHERE id = $1")
            .bind(tenant)
            .fetch_optional(conn)
            .await?;
    let (tz, clock_now) = match row {
        Some(r) => {
            let tz: String = r.try_get("timezone")?;
            let test: bool = r.try_get("test_clock")?;
            let now: Option<DateTime<Utc>> = r.try_get("clock_now")?;
            (tz, if test { now } else { None })
        }
        None => (String::new(), None),
    };
    Ok(TenantTime {
        tz: tz.parse().unwrap_or(chrono_tz::America::Sao_Paulo),
        clock_now,
    })
}

/// The invoice's payments so far, oldest first.
pub async fn payments_of(
    conn: &mut PgConnection,
    tenant: &str,
    invoice_id: &str,
) -> Result<Vec<charges::Payment>, sqlx::Error> {
    let rows: Vec<(NaiveDate, i64)> = sqlx::query_as(
        "SELECT a.paid_on, a.amount_cents FROM reconcile.applications a \
         JOIN reconcile.payments p USING (tenant, payment_id) \
         WHERE a.tenant = $1 AND a.invoice_id = $2 ORDER BY p.seq",
    )
    .bind(tenant)
    .bind(invoice_id)
    .fetch_all(conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(on, amount_cents)| charges::Payment { on, amount_cents })
        .collect())
}

/// A recorded payment, as the ledger reads it back.
#[derive(Debug, Clone)]
pub struct Payment {
    pub tenant: String,
    pub payment_id: String,
    pub invoice_id: Option<String>,
    pub reference: Option<String>,
    pub amount_cents: i64,
    pub currency: String,
    pub paid_at: DateTime<Utc>,
    pub payer_document: Option<String>,
    pub message_id: String,
}

impl Payment {
    pub fn from_draft(tenant: &str, d: &PaymentDraft, message_id: &str) -> Payment {
        Payment {
            tenant: tenant.to_owned(),
            payment_id: d.payment_id.clone(),
            invoice_id: d.invoice_id.clone(),
            reference: d.reference.clone(),
            amount_cents: d.amount_cents,
            currency: d.currency.code().to_owned(),
            paid_at: d.paid_at,
            payer_document: d.payer_document.as_ref().map(|d| d.as_str().to_owned()),
            message_id: message_id.to_owned(),
        }
    }

    pub async fn load(
        conn: &mut PgConnection,
        tenant: &str,
        payment_id: &str,
    ) -> Result<Option<Payment>, sqlx::Error> {
        let row = sqlx::query(
            "SELECT tenant, payment_id, invoice_id, reference, amount_cents, currency, paid_at, \
             payer_document, message_id FROM reconcile.payments WHERE tenant = $1 AND payment_id = $2",
        )
        .bind(tenant)
        .bind(payment_id)
        .fetch_optional(conn)
        .await?;
        row.map(|r| {
            Ok(Payment {
                tenant: r.try_get("tenant")?,
                payment_id: r.try_get("payment_id")?,
                invoice_id: r.try_get("invoice_id")?,
                reference: r.try_get("reference")?,
                amount_cents: r.try_get("amount_cents")?,
                currency: r.try_get("currency")?,
                paid_at: r.try_get("paid_at")?,
                payer_document: r.try_get("payer_document")?,
                message_id: r.try_get("message_id")?,
            })
        })
        .transpose()
    }
}

/// Tenants' zones and clocks, read once per transaction.
#[derive(Debug, Default)]
pub struct Times(std::collections::HashMap<String, TenantTime>);

impl Times {
    pub async fn of(
        &mut self,
        conn: &mut PgConnection,
        tenant: &str,
    ) -> Result<TenantTime, sqlx::Error> {
        if let Some(t) = self.0.get(tenant) {
            return Ok(*t);
        }
        let t = tenant_time(conn, tenant).await?;
        self.0.insert(tenant.to_owned(), t);
        Ok(t)
    }
}

/// The invoices a transaction settles, owed to the settlement fence. They are taken
/// together as the transaction's last step ([`Settlements::settle`]), in key order and
/// right before the commit, rather than one by one as payments are applied: a group of
/// payments then holds the fence's exclusive locks (and keeps dispatcher gates
/// waiting) only for its commit, and the settlement's recorded moment is next to it.
#[derive(Debug, Default)]
pub struct Settlements(Vec<Owed>);

/// One invoice owed to the fence, with what its settlement signal will carry.
#[derive(Debug)]
struct Owed {
    tenant: String,
    signal: InvoiceSettled,
    traceparent: Option<String>,
}

/// The invoices a committed transaction settled, to be signalled
/// ([`crate::Reconcile::signal`]).
#[derive(Debug, Default)]
pub struct Settled(Vec<Owed>);

impl Settled {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn extend(&mut self, other: Settled) {
        self.0.extend(other.0);
    }

    /// (tenant, signal, traceparent) of each settled invoice.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &InvoiceSettled, Option<&str>)> {
        self.0
            .iter()
            .map(|o| (o.tenant.as_str(), &o.signal, o.traceparent.as_deref()))
    }
}

impl Settlements {
    /// Owes the fence `inv`, settled by `p`; `invoice.paid` is `event_id`, at `at`.
    fn push(
        &mut self,
        inv: &InvoiceRow,
        p: &Payment,
        (event_id, at): (uuid::Uuid, DateTime<Utc>),
        traceparent: Option<String>,
    ) {
        self.0.push(Owed {
            tenant: inv.tenant.clone(),
            signal: InvoiceSettled {
                invoice_id: inv.invoice_id.clone(),
                payment_id: p.payment_id.clone(),
                settled_at: at,
                event_id,
            },
            traceparent,
        });
    }

    /// Settles the invoices in the fence and records when on their applications. Call
    /// it last, right before the commit; once committed, signal what it returns.
    pub async fn settle(self, conn: &mut PgConnection) -> Result<Settled, sqlx::Error> {
        let owed: Vec<fence::Settlement> = self
            .0
            .iter()
            .map(|o| fence::Settlement {
                tenant: o.tenant.clone(),
                invoice_id: o.signal.invoice_id.clone(),
                payment_id: o.signal.payment_id.clone(),
            })
            .collect();
        let settled = fence::settle_all(conn, &owed).await?;
        if settled.is_empty() {
            return Ok(Settled::default());
        }
        let tenants: Vec<&str> = settled.iter().map(|(s, _)| s.tenant.as_str()).collect();
        let payments: Vec<&str> = settled.iter().map(|(s, _)| s.payment_id.as_str()).collect();
        let at: Vec<DateTime<Utc>> = settled.iter().map(|(_, at)| *at).collect();
        sqlx::query(
            "UPDATE reconcile.applications a SET settled_at = u.at \
             FROM UNNEST($1::text[], $2::text[], $3::timestamptz[]) AS u(tenant, payment_id, at) \
             WHERE a.tenant = u.tenant AND a.payment_id = u.payment_id",
        )
        .bind(&tenants)
        .bind(&payments)
        .bind(&at)
        .execute(conn)
        .await?;
        // Only what this transaction settled (an invoice settled before is left out).
        let mut owed = self.0;
        owed.retain(|o| {
            settled.iter().any(|(s, _)| {
                s.tenant == o.tenant
                    && s.invoice_id == o.signal.invoice_id
                    && s.payment_id == o.signal.payment_id
            })
        });
        Ok(Settled(owed))
    }
}

/// Records `draft` and applies it, inside the caller's transaction. A `payment_id`
/// seen before is [`Applied::Duplicate`] and changes nothing.
#[allow(clippy::too_many_arguments)]
pub async fn ingest(
    conn: &mut PgConnection,
    times: &mut Times,
    settlements: &mut Settlements,
    tenant: &str,
    draft: &PaymentDraft,
    source: Source,
    message_id: &str,
    now: DateTime<Utc>,
    traceparent: Option<String>,
) -> Result<Applied, ReconcileError> {
    let p = Payment::from_draft(tenant, draft, message_id);
    let fresh = sqlx::query(
        "INSERT INTO reconcile.payments (tenant, payment_id, invoice_id, reference, amount_cents, currency, \
         paid_at, method, payer_document, source, message_id, received_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) ON CONFLICT DO NOTHING",
    )
    .bind(tenant)
    .bind(&p.payment_id)
    .bind(&p.invoice_id)
    .bind(&p.reference)
    .bind(p.amount_cents)
    .bind(&p.currency)
    .bind(p.paid_at)
    .bind(method_name(draft))
    .bind(&p.payer_document)
    .bind(source.as_str())
    .bind(message_id)
    .bind(now)
    .execute(&mut *conn)
    .await?
    .rows_affected()
        > 0;
    if !fresh {
        return Ok(Applied::Duplicate {
            payment_id: p.payment_id,
        });
    }
    let time = times.of(conn, tenant).await?;
    match find(conn, &p, &time).await? {
        Found::One(inv, by) => {
            apply(conn, settlements, &p, &inv, by, &time, now, traceparent).await
        }
        Found::None(reason) => park(conn, &p, reason, now, traceparent).await,
    }
}

fn method_name(d: &PaymentDraft) -> String {
    serde_json::to_value(d.method)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// The outcome of matching.
enum Found {
    One(InvoiceRow, &'static str),
    None(&'static str),
}

/// Matches in order: `invoice_id`, `reference`, then the payer's document plus the
/// exact amount due against their single open invoice. The candidate is locked.
async fn find(
    conn: &mut PgConnection,
    p: &Payment,
    time: &TenantTime,
) -> Result<Found, ReconcileError> {
    let found = if let Some(id) = &p.invoice_id {
        by_id(conn, &p.tenant, id, "invoice_id").await?
    } else if let Some(reference) = &p.reference {
        let sql = format!(
            "SELECT {INVOICE_COLUMNS} FROM reconcile.invoices WHERE tenant = $1 AND reference = $2 \
             ORDER BY (status = 'open') DESC, invoice_id LIMIT 2 FOR UPDATE"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(&p.tenant)
            .bind(reference)
            .fetch_all(&mut *conn)
            .await?;
        let open: Vec<_> = rows
            .iter()
            .filter(|r| r.try_get::<String, _>("status").is_ok_and(|s| s == "open"))
            .collect();
        match (open.as_slice(), rows.first()) {
            ([one], _) => Found::One(InvoiceRow::from_row(one)?, "reference"),
            ([], Some(closed)) => Found::One(InvoiceRow::from_row(closed)?, "reference"),
            ([], None) => Found::None("unknown_reference"),
            _ => Found::None("ambiguous"),
        }
    } else if let Some(doc) = &p.payer_document {
        let sql = format!(
            "SELECT {INVOICE_COLUMNS} FROM reconcile.invoices i WHERE i.tenant = $1 AND i.status = 'open' \
             AND i.customer_id IN (SELECT customer_id FROM reconcile.customers WHERE tenant = $1 AND document = $2) \
             ORDER BY invoice_id LIMIT 2 FOR UPDATE"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(&p.tenant)
            .bind(doc)
            .fetch_all(&mut *conn)
            .await?;
        match rows.as_slice() {
            [one] => {
                let inv = InvoiceRow::from_row(one)?;
                let paid = if inv.applications > 0 {
                    payments_of(conn, &inv.tenant, &inv.invoice_id).await?
                } else {
                    Vec::new()
                };
                let due = charges::statement(&inv.terms, &paid, time.day(p.paid_at))?;
                if due.balance_cents == p.amount_cents && inv.currency == p.currency {
                    Found::One(inv, "document_amount")
                } else {
                    Found::None("no_candidate")
                }
            }
            [] => Found::None("no_candidate"),
            _ => Found::None("ambiguous"),
        }
    } else {
        Found::None("no_candidate")
    };
    Ok(usable(found, p))
}

/// The invoice `id`, locked, as matched `by`.
async fn by_id(
    conn: &mut PgConnection,
    tenant: &str,
    id: &str,
    by: &'static str,
) -> Result<Found, ReconcileError> {
    let sql = format!(
        "SELECT {INVOICE_COLUMNS} FROM reconcile.invoices WHERE tenant = $1 AND invoice_id = $2 FOR UPDATE"
    );
    let row = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(tenant)
        .bind(id)
        .fetch_optional(conn)
        .await?;
    Ok(match row {
        None => Found::None("unknown_invoice"),
        Some(r) => Found::One(InvoiceRow::from_row(&r)?, by),
    })
}

/// A match only stands on an open invoice in the payment's currency.
fn usable(found: Found, p: &Payment) -> Found {
    match found {
        Found::One(inv, _) if inv.status != "open" => Found::None("invoice_closed"),
        Found::One(inv, _) if inv.currency != p.currency => Found::None("currency_mismatch"),
        other => other,
    }
}

/// Puts a payment in the unmatched queue and says so.
async fn park(
    conn: &mut PgConnection,
    p: &Payment,
    reason: &'static str,
    now: DateTime<Utc>,
    traceparent: Option<String>,
) -> Result<Applied, ReconcileError> {
    sqlx::query(
        "INSERT INTO reconcile.unmatched (tenant, payment_id, reason, since) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (tenant, payment_id) DO UPDATE SET reason = EXCLUDED.reason",
    )
    .bind(&p.tenant)
    .bind(&p.payment_id)
    .bind(reason)
    .bind(now)
    .execute(&mut *conn)
    .await?;
    let event = DomainEvent::PaymentUnmatched(PaymentUnmatched {
        payment_id: p.payment_id.clone(),
        amount_cents: p.amount_cents,
        currency: p.currency.clone(),
        paid_at: p.paid_at,
        reason: reason.to_owned(),
        invoice_id: p.invoice_id.clone(),
        reference: p.reference.clone(),
    });
    let msg = event_message(
        now,
        &p.tenant,
        &event,
        &p.message_id,
        &p.message_id,
        traceparent,
    )?;
    OUTBOX.enqueue(conn, &[msg]).await?;
    Ok(Applied::Unmatched {
        payment_id: p.payment_id.clone(),
        reason: reason.to_owned(),
    })
}

/// Applies `p` to the locked, open invoice `inv`: the application row, and then either
/// the settlement (status, `invoice.paid`, and the fence owed in `settlements`) or
/// `invoice.partially_paid`.
#[allow(clippy::too_many_arguments)]
pub async fn apply(
    conn: &mut PgConnection,
    settlements: &mut Settlements,
    p: &Payment,
    inv: &InvoiceRow,
    matched_by: &'static str,
    time: &TenantTime,
    now: DateTime<Utc>,
    traceparent: Option<String>,
) -> Result<Applied, ReconcileError> {
    let paid_on = time.day(p.paid_at);
    let mut paid = if inv.applications > 0 {
        payments_of(conn, &inv.tenant, &inv.invoice_id).await?
    } else {
        Vec::new()
    };
    let on = paid
        .iter()
        .map(|x| x.on)
        .max()
        .unwrap_or(paid_on)
        .max(paid_on);
    let before = charges::statement(&inv.terms, &paid, on)?;
    paid.push(charges::Payment {
        on: paid_on,
        amount_cents: p.amount_cents,
    });
    let after = charges::statement(&inv.terms, &paid, on)?;
    let credit = after.credit_cents - before.credit_cents;
    let settled = after.settled();
    let mut events: Vec<OutboxMessage> = Vec::new();
    let (t, cause) = (inv.tenant.as_str(), p.message_id.as_str());
    events.push(event(
        now,
        t,
        DomainEvent::PaymentMatched(PaymentMatched {
            payment_id: p.payment_id.clone(),
            invoice_id: inv.invoice_id.clone(),
            customer_id: inv.customer_id.clone(),
            amount_cents: p.amount_cents,
            currency: p.currency.clone(),
            paid_at: p.paid_at,
            matched_by: matched_by.to_owned(),
            settled,
            credit_cents: credit,
        }),
        cause,
        traceparent.clone(),
    )?);
    let mut paid_event = None;
    if settled {
        let msg = event(
            now,
            t,
            DomainEvent::InvoicePaid(InvoicePaid {
                invoice_id: inv.invoice_id.clone(),
                customer_id: inv.customer_id.clone(),
                paid_at: p.paid_at,
                amount_paid_cents: after.paid_cents,
                currency: inv.currency.clone(),
                days_late: after.days_late,
                overpaid_cents: after.credit_cents,
            }),
            cause,
            traceparent.clone(),
        )?;
        paid_event = Some(msg.id);
        settlements.push(inv, p, (msg.id, now), traceparent.clone());
        events.push(msg);
    } else {
        events.push(event(
            now,
            t,
            DomainEvent::InvoicePartiallyPaid(InvoicePartiallyPaid {
                invoice_id: inv.invoice_id.clone(),
                customer_id: inv.customer_id.clone(),
                payment_id: p.payment_id.clone(),
                paid_at: p.paid_at,
                amount_paid_cents: p.amount_cents,
                currency: inv.currency.clone(),
                due: after.due().into(),
            }),
            cause,
            traceparent,
        )?);
    }
    sqlx::query(
        "INSERT INTO reconcile.applications (tenant, payment_id, invoice_id, customer_id, paid_on, amount_cents, \
         credit_cents, matched_by, settled, invoice_paid_event, applied_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
    )
    .bind(&inv.tenant)
    .bind(&p.payment_id)
    .bind(&inv.invoice_id)
    .bind(&inv.customer_id)
    .bind(paid_on)
    .bind(p.amount_cents)
    .bind(credit)
    .bind(matched_by)
    .bind(settled)
    .bind(paid_event)
    .bind(now)
    .execute(&mut *conn)
    .await?;
    sqlx::query(
        "UPDATE reconcile.invoices SET applications = applications + 1, updated_at = $3, \
         status = CASE WHEN $4 THEN 'paid' ELSE status END WHERE tenant = $1 AND invoice_id = $2",
    )
    .bind(&inv.tenant)
    .bind(&inv.invoice_id)
    .bind(now)
    .bind(settled)
    .execute(&mut *conn)
    .await?;
    OUTBOX.enqueue(conn, &events).await?;
    Ok(Applied::Matched {
        payment_id: p.payment_id.clone(),
        invoice_id: inv.invoice_id.clone(),
        matched_by,
        settled,
        balance_cents: after.balance_cents,
        credit_cents: credit,
    })
}

fn event(
    now: DateTime<Utc>,
    tenant: &str,
    event: DomainEvent,
    cause: &str,
    traceparent: Option<String>,
) -> Result<OutboxMessage, serde_json::Error> {
    event_message(now, tenant, &event, cause, cause, traceparent)
}

/// Unmatched payments that name `invoice_id` or `reference`, to retry when that
/// invoice appears (a payment may arrive before its invoice's event).
pub async fn waiting_for(
    conn: &mut PgConnection,
    tenant: &str,
    invoice_id: &str,
    reference: Option<&str>,
) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT p.payment_id FROM reconcile.unmatched u JOIN reconcile.payments p USING (tenant, payment_id) \
         WHERE u.tenant = $1 AND (p.invoice_id = $2 OR (p.invoice_id IS NULL AND p.reference = $3)) \
         ORDER BY p.seq FOR UPDATE OF u",
    )
    .bind(tenant)
    .bind(invoice_id)
    .bind(reference)
    .fetch_all(conn)
    .await
}

/// Retries the match of an unmatched payment (after its invoice appeared, or by
/// hand with `to`). `None` when the payment is not waiting. An invoice it settles is
/// added to `settled`, to be signalled once the caller commits.
pub async fn rematch(
    conn: &mut PgConnection,
    settled: &mut Settled,
    tenant: &str,
    payment_id: &str,
    to: Option<&str>,
    now: DateTime<Utc>,
) -> Result<Option<Result<Applied, &'static str>>, ReconcileError> {
    let waiting: Option<String> = sqlx::query_scalar(
        "SELECT reason FROM reconcile.unmatched WHERE tenant = $1 AND payment_id = $2 FOR UPDATE",
    )
    .bind(tenant)
    .bind(payment_id)
    .fetch_optional(&mut *conn)
    .await?;
    if waiting.is_none() {
        return Ok(None);
    }
    let Some(p) = Payment::load(conn, tenant, payment_id).await? else {
        return Ok(None);
    };
    let time = tenant_time(conn, tenant).await?;
    let found = match to {
        Some(invoice_id) => usable(by_id(conn, tenant, invoice_id, "manual").await?, &p),
        None => find(conn, &p, &time).await?,
    };
    match found {
        Found::One(inv, by) => {
            sqlx::query("DELETE FROM reconcile.unmatched WHERE tenant = $1 AND payment_id = $2")
                .bind(tenant)
                .bind(payment_id)
                .execute(&mut *conn)
                .await?;
            let mut settlements = Settlements::default();
            let applied = apply(conn, &mut settlements, &p, &inv, by, &time, now, None).await?;
            settled.extend(settlements.settle(conn).await?);
            Ok(Some(Ok(applied)))
        }
        Found::None(reason) => Ok(Some(Err(reason))),
    }
}
