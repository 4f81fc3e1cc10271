//! The scheduler's own copy of tenants, customers and invoices, loaded per batch, and
//! the bridge from those rows to the pure schedule decisions.

use std::collections::HashMap;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use regua_contract::commands::Creditor;
use regua_contract::events::{CustomerState, InvoiceState};
use regua_domain::calendar::Calendar;
use regua_domain::policy::{Channel, InvoiceFacts, Notify, PaymentHistory, Policy, RiskClass};
use regua_domain::schedule::{BasePlan, Progress, base_plan};
use sqlx::{PgConnection, Row};

/// Where São Paulo is the fallback for a zone nobody gave.
pub const DEFAULT_TZ: Tz = chrono_tz::America::Sao_Paulo;

/// Parses an IANA zone, falling back to `fallback`.
pub fn zone(name: Option<&str>, fallback: Tz) -> Tz {
    name.and_then(|n| Tz::from_str(n).ok()).unwrap_or(fallback)
}

/// A tenant as the scheduler knows it.
#[derive(Debug, Clone)]
pub struct Tenant {
    pub id: String,
    pub creditor: Creditor,
    pub timezone: Tz,
    pub test_clock: bool,
    pub clock_now: Option<DateTime<Utc>>,
    pub clock_target: Option<DateTime<Utc>>,
}

impl Tenant {
    /// The tenant's current instant: its test clock, or the real one.
    pub fn now(&self, real: DateTime<Utc>) -> DateTime<Utc> {
        if self.test_clock {
            self.clock_now.unwrap_or(real)
        } else {
            real
        }
    }
}

/// Loads tenants by id.
pub async fn load_tenants(
    conn: &mut PgConnection,
    ids: &[String],
) -> Result<HashMap<String, Tenant>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT id, legal_name, cnpj, address, contact, timezone, test_clock, clock_now, clock_target \
         FROM scheduler.tenants WHERE id = ANY($1)",
    )
    .bind(ids)
    .fetch_all(conn)
    .await?;
    let mut out = HashMap::with_capacity(rows.len());
    for r in rows {
        let tz: String = r.try_get("timezone")?;
        let t = Tenant {
            id: r.try_get("id")?,
            creditor: Creditor {
                legal_name: r.try_get("legal_name")?,
                cnpj: r.try_get("cnpj")?,
                address: r.try_get("address")?,
                contact: r.try_get("contact")?,
            },
            timezone: zone(Some(&tz), DEFAULT_TZ),
            test_clock: r.try_get("test_clock")?,
            clock_now: r.try_get("clock_now")?,
            clock_target: r.try_get("clock_target")?,
        };
        out.insert(t.id.clone(), t);
    }
    Ok(out)
}

/// A customer: contacts, zone, opt-outs and payment history.
#[derive(Debug, Clone)]
pub struct Customer {
    pub state: CustomerState,
    pub opted_out: Vec<Channel>,
    pub history: PaymentHistory,
}

impl Customer {
    pub fn tz(&self, tenant: &Tenant) -> Tz {
        zone(Some(&self.state.timezone), tenant.timezone)
    }

    /// Whether `channel` can reach this customer now.
    pub fn usable(&self, channel: Channel) -> bool {
        if self.opted_out.contains(&channel) {
            return false;
        }
        match channel {
            Channel::Email => self.state.email.is_some(),
            Channel::Sms => self.state.phone.is_some(),
            Channel::Whatsapp => self.state.phone.is_some() && self.state.whatsapp_opt_in,
        }
    }

    /// The usable channels of a notify step, the customer's preferred one first.
    pub fn channels_for(&self, n: &Notify) -> Vec<Channel> {
        let preferred = self.state.preferred_channel.map(Into::into);
        n.channels_for(preferred, |c| self.usable(c))
    }
}

/// Parses a stored opt-out list.
pub fn channels_from(names: &[String]) -> Vec<Channel> {
    names.iter().filter_map(|n| Channel::parse(n)).collect()
}

/// Loads customers by (tenant, customer_id).
pub async fn load_customers(
    conn: &mut PgConnection,
    keys: &[(String, String)],
) -> Result<HashMap<(String, String), Customer>, sqlx::Error> {
    let (tenants, ids): (Vec<&str>, Vec<&str>) =
        keys.iter().map(|(t, c)| (t.as_str(), c.as_str())).unzip();
    let rows = sqlx::query(
        "SELECT c.tenant, c.customer_id, c.state, c.opted_out, c.paid, c.paid_late, c.max_days_late \
         FROM scheduler.customers c JOIN UNNEST($1::text[], $2::text[]) AS k(tenant, customer_id) \
         USING (tenant, customer_id)",
    )
    .bind(&tenants)
    .bind(&ids)
    .fetch_all(conn)
    .await?;
    let mut out = HashMap::with_capacity(rows.len());
    for r in rows {
        let state: sqlx::types::Json<CustomerState> = r.try_get("state")?;
        let opted: Vec<String> = r.try_get("opted_out")?;
        let history = PaymentHistory {
            paid: u32::try_from(r.try_get::<i32, _>("paid")?).unwrap_or(0),
            paid_late: u32::try_from(r.try_get::<i32, _>("paid_late")?).unwrap_or(0),
            max_days_late: u32::try_from(r.try_get::<i32, _>("max_days_late")?).unwrap_or(0),
        };
        out.insert(
            (r.try_get("tenant")?, r.try_get("customer_id")?),
            Customer {
                state: state.0,
                opted_out: channels_from(&opted),
                history,
            },
        );
    }
    Ok(out)
}

/// An invoice's lifecycle in the scheduler.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Open,
    Paid,
    Canceled,
    /// Still open, but its régua has no step left.
    Done,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Open => "open",
            Status::Paid => "paid",
            Status::Canceled => "canceled",
            Status::Done => "done",
        }
    }

    pub fn parse(s: &str) -> Status {
        match s {
            "paid" => Status::Paid,
            "canceled" => Status::Canceled,
            "done" => Status::Done,
            _ => Status::Open,
        }
    }
}

/// One row of the schedule.
#[derive(Debug, Clone)]
pub struct Invoice {
    pub tenant: String,
    pub invoice_id: String,
    pub customer_id: String,
    pub state: InvoiceState,
    pub status: Status,
    pub test_clock: bool,
    pub policy: String,
    pub policy_version: i32,
    pub progress: Progress,
    pub thanks_pending: bool,
    pub next_at: Option<DateTime<Utc>>,
    /// The trace the invoice's next firing links to: the planning's, then, once paid,
    /// the payment's (for the thank-you).
    pub traceparent: Option<String>,
    pub opened_at: DateTime<Utc>,
    /// Times a step was planned again after its message reached a dispatcher past its
    /// window (migration 0010).
    pub refires: i32,
    /// Payments reconciliation reported, loaded when firing.
    pub paid: Vec<Paid>,
}

/// A payment reconciliation reported for an invoice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Paid {
    /// The payment's day on the tenant's calendar.
    pub on: chrono::NaiveDate,
    pub amount_cents: i64,
    /// `invoice.paid`: `amount_cents` is everything paid.
    pub settles: bool,
}

/// The condition (on `scheduler.invoices i`) that firing may take the invoice: not an
/// open invoice that [`crate::halt`] halted. A paid one still sends its thank-you.
pub const NOT_HALTED: &str = "(i.status = 'paid' OR NOT EXISTS (SELECT 1 FROM scheduler.halts h \
     WHERE h.tenant = i.tenant AND h.invoice_id = i.invoice_id))";

pub const INVOICE_COLUMNS: &str = "tenant, invoice_id, customer_id, state, status, test_clock, policy, policy_version, \
     next_step, deferred_to, notice_sent_at, thanks_pending, next_at, traceparent, opened_at, refires";

impl Invoice {
    pub fn from_row(r: &sqlx::postgres::PgRow) -> Result<Invoice, sqlx::Error> {
        let state: sqlx::types::Json<InvoiceState> = r.try_get("state")?;
        let status: String = r.try_get("status")?;
        Ok(Invoice {
            tenant: r.try_get("tenant")?,
            invoice_id: r.try_get("invoice_id")?,
            customer_id: r.try_get("customer_id")?,
            state: state.0,
            status: Status::parse(&status),
            test_clock: r.try_get("test_clock")?,
            policy: r.try_get("policy")?,
            policy_version: r.try_get("policy_version")?,
            progress: Progress {
                next: usize::try_from(r.try_get::<i32, _>("next_step")?).unwrap_or(0),
                deferred_to: r.try_get("deferred_to")?,
                notice_sent_at: r.try_get("notice_sent_at")?,
            },
            thanks_pending: r.try_get("thanks_pending")?,
            next_at: r.try_get("next_at")?,
            traceparent: r.try_get("traceparent")?,
            opened_at: r.try_get("opened_at")?,
            refires: r.try_get("refires")?,
            paid: Vec::new(),
        })
    }

    /// A newly opened invoice, not yet planned (no policy chosen).
    pub fn opened(
        tenant: &Tenant,
        state: InvoiceState,
        traceparent: Option<String>,
        opened_at: DateTime<Utc>,
    ) -> Invoice {
        Invoice {
            tenant: tenant.id.clone(),
            invoice_id: state.invoice_id.clone(),
            customer_id: state.customer_id.clone(),
            state,
            status: Status::Open,
            test_clock: tenant.test_clock,
            policy: String::new(),
            policy_version: 0,
            progress: Progress::default(),
            thanks_pending: false,
            next_at: None,
            traceparent,
            opened_at,
            refires: 0,
            paid: Vec::new(),
        }
    }

    /// What policy selection looks at.
    pub fn facts<'a>(
        &'a self,
        customer: Option<&'a Customer>,
        risk: RiskClass,
    ) -> InvoiceFacts<'a> {
        InvoiceFacts {
            segment: customer.and_then(|c| c.state.segment.as_deref()),
            tags: &self.state.tags,
            risk,
            amount_cents: self.state.amount_cents,
        }
    }
}

/// Loads invoices by (tenant, invoice_id).
pub async fn load_invoices(
    conn: &mut PgConnection,
    keys: &[(String, String)],
) -> Result<HashMap<(String, String), Invoice>, sqlx::Error> {
    let (tenants, ids): (Vec<&str>, Vec<&str>) =
        keys.iter().map(|(t, c)| (t.as_str(), c.as_str())).unzip();
    let sql = format!(
        "SELECT {INVOICE_COLUMNS} FROM scheduler.invoices i \
         JOIN UNNEST($1::text[], $2::text[]) AS k(tenant, invoice_id) USING (tenant, invoice_id)"
    );
    let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(&tenants)
        .bind(&ids)
        .fetch_all(conn)
        .await?;
    let mut out = HashMap::with_capacity(rows.len());
    for r in &rows {
        let i = Invoice::from_row(r)?;
        out.insert((i.tenant.clone(), i.invoice_id.clone()), i);
    }
    Ok(out)
}

/// Writes invoices back (insert or full update), in one statement. (An open invoice
/// that [`crate::halt`] halted may be given a next step here; firing never takes it.)
pub async fn save_invoices(
    conn: &mut PgConnection,
    invoices: &[&Invoice],
) -> Result<(), sqlx::Error> {
    if invoices.is_empty() {
        return Ok(());
    }
    let mut c = InvoiceColumns::default();
    for i in invoices {
        c.push(i)?;
    }
    c.bind_progress(sqlx::query(
        "INSERT INTO scheduler.invoices (tenant, invoice_id, status, policy_version, next_step, deferred_to, \
         notice_sent_at, thanks_pending, next_at, customer_id, state, test_clock, policy, traceparent, opened_at, refires) \
         SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::int[], $5::int[], $6::timestamptz[], \
         $7::timestamptz[], $8::bool[], $9::timestamptz[], $10::text[], $11::text[]::json[], $12::bool[], $13::text[], \
         $14::text[], $15::timestamptz[], $16::int[]) \
         ON CONFLICT (tenant, invoice_id) DO UPDATE SET customer_id = EXCLUDED.customer_id, state = EXCLUDED.state, \
         status = EXCLUDED.status, policy = EXCLUDED.policy, policy_version = EXCLUDED.policy_version, \
         next_step = EXCLUDED.next_step, deferred_to = EXCLUDED.deferred_to, notice_sent_at = EXCLUDED.notice_sent_at, \
         thanks_pending = EXCLUDED.thanks_pending, traceparent = EXCLUDED.traceparent, \
         next_at = EXCLUDED.next_at, refires = EXCLUDED.refires",
    ))
    .bind(&c.customer_id)
    .bind(&c.state)
    .bind(&c.test_clock)
    .bind(&c.policy)
    .bind(&c.traceparent)
    .bind(&c.opened_at)
    .bind(&c.refires)
    .execute(conn)
    .await?;
    Ok(())
}

/// Writes back only the schedule columns of existing invoices (what firing changes).
///
/// Each invoice comes with its physical row (`ctid`) as its claim read it, so the
/// update goes straight to the row instead of probing the primary key again. That is
/// sound because the caller holds, since that read, what keeps every other writer off
/// these invoices (their customers' locks and their tenants' schedule locks). The key
/// is still compared, and an invoice whose row has moved anyway is an error that rolls
/// the claim back, never a silent skip.
pub async fn save_progress(
    conn: &mut PgConnection,
    invoices: &[(&Invoice, &str)],
) -> Result<(), SaveError> {
    if invoices.is_empty() {
        return Ok(());
    }
    let mut c = InvoiceColumns::default();
    let mut rows = Vec::with_capacity(invoices.len());
    for &(i, row) in invoices {
        c.push_progress(i);
        rows.push(row);
    }
    let updated = c
        .bind_progress(sqlx::query(
            "UPDATE scheduler.invoices AS i SET status = u.status, policy_version = u.policy_version, next_step = u.next_step, \
             deferred_to = u.deferred_to, notice_sent_at = u.notice_sent_at, thanks_pending = u.thanks_pending, next_at = u.next_at \
             FROM UNNEST($1::text[], $2::text[], $3::text[], $4::int[], $5::int[], $6::timestamptz[], $7::timestamptz[], $8::bool[], \
             $9::timestamptz[], $10::tid[]) AS u(tenant, invoice_id, status, policy_version, next_step, deferred_to, notice_sent_at, thanks_pending, next_at, row_id) \
             WHERE i.ctid = u.row_id AND i.tenant = u.tenant AND i.invoice_id = u.invoice_id",
        ))
        .bind(&rows)
        .execute(conn)
        .await?
        .rows_affected();
    if updated != invoices.len() as u64 {
        return Err(SaveError::Moved {
            expected: invoices.len(),
            updated,
        });
    }
    Ok(())
}

/// Why [`save_progress`] failed. What it wrote must not be committed: the caller's
/// transaction rolls back.
#[derive(Debug, thiserror::Error)]
pub enum SaveError {
    #[error("postgres: {0}")]
    Db(#[from] sqlx::Error),
    /// Some invoice's row is no longer where the claim read it: a writer that does
    /// not take the claim's locks changed it meanwhile.
    #[error("{expected} invoices to write back, {updated} found where they were read")]
    Moved { expected: usize, updated: u64 },
}

/// An invoice's or customer's state as the JSON text its `json` column stores
/// (migration 0009). Writers bind these as `text[]` and cast with `::text[]::json[]`, so
/// Postgres only checks each one, where a bound `jsonb` would be parsed and printed.
pub fn state_text(state: &impl serde::Serialize) -> Result<String, sqlx::Error> {
    serde_json::to_string(state).map_err(|e| sqlx::Error::Encode(Box::new(e)))
}

#[derive(Default)]
struct InvoiceColumns {
    tenant: Vec<String>,
    invoice_id: Vec<String>,
    customer_id: Vec<String>,
    /// As JSON text: the columns are `json` (migration 0009).
    state: Vec<String>,
    status: Vec<&'static str>,
    test_clock: Vec<bool>,
    policy: Vec<String>,
    policy_version: Vec<i32>,
    next_step: Vec<i32>,
    deferred_to: Vec<Option<DateTime<Utc>>>,
    notice_sent_at: Vec<Option<DateTime<Utc>>>,
    thanks_pending: Vec<bool>,
    next_at: Vec<Option<DateTime<Utc>>>,
    traceparent: Vec<Option<String>>,
    opened_at: Vec<DateTime<Utc>>,
    refires: Vec<i32>,
}

impl InvoiceColumns {
    /// The key and the schedule columns (what firing changes).
    fn push_progress(&mut self, i: &Invoice) {
        self.tenant.push(i.tenant.clone());
        self.invoice_id.push(i.invoice_id.clone());
        self.status.push(i.status.as_str());
        self.policy_version.push(i.policy_version);
        self.next_step
            .push(i32::try_from(i.progress.next).unwrap_or(i32::MAX));
        self.deferred_to.push(i.progress.deferred_to);
        self.notice_sent_at.push(i.progress.notice_sent_at);
        self.thanks_pending.push(i.thanks_pending);
        self.next_at.push(i.next_at);
    }

    /// Every column: the schedule columns, then the rest.
    fn push(&mut self, i: &Invoice) -> Result<(), sqlx::Error> {
        self.push_progress(i);
        self.customer_id.push(i.customer_id.clone());
        self.state.push(state_text(&i.state)?);
        self.test_clock.push(i.test_clock);
        self.policy.push(i.policy.clone());
        self.traceparent.push(i.traceparent.clone());
        self.opened_at.push(i.opened_at);
        self.refires.push(i.refires);
        Ok(())
    }

    /// Binds the schedule columns as `$1`..`$9` (key, then schedule), in
    /// [`InvoiceColumns::push_progress`] order.
    fn bind_progress<'q>(
        &'q self,
        q: sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>,
    ) -> sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments> {
        q.bind(&self.tenant)
            .bind(&self.invoice_id)
            .bind(&self.status)
            .bind(&self.policy_version)
            .bind(&self.next_step)
            .bind(&self.deferred_to)
            .bind(&self.notice_sent_at)
            .bind(&self.thanks_pending)
            .bind(&self.next_at)
    }
}

/// One decision about a step, for `scheduler.step_log`.
#[derive(Debug, Clone)]
pub struct LogRow {
    pub tenant: String,
    pub invoice_id: String,
    pub step: String,
    pub policy_version: i32,
    pub state: &'static str,
    pub reason: Option<String>,
    pub planned_at: Option<DateTime<Utc>>,
    pub at: DateTime<Utc>,
    pub channel: Option<&'static str>,
    pub command_id: Option<String>,
    /// The trace the decision was made in (the journey timeline shows it).
    pub trace_id: Option<String>,
}

/// Appends step decisions, in order.
pub async fn write_log(conn: &mut PgConnection, rows: &[LogRow]) -> Result<(), sqlx::Error> {
    if rows.is_empty() {
        return Ok(());
    }
    let mut tenant = Vec::new();
    let mut invoice = Vec::new();
    let mut step = Vec::new();
    let mut version = Vec::new();
    let mut state = Vec::new();
    let mut reason = Vec::new();
    let mut planned = Vec::new();
    let mut at = Vec::new();
    let mut channel = Vec::new();
    let mut command = Vec::new();
    let mut trace = Vec::new();
    for r in rows {
        trace.push(r.trace_id.as_deref());
        tenant.push(r.tenant.as_str());
        invoice.push(r.invoice_id.as_str());
        step.push(r.step.as_str());
        version.push(r.policy_version);
        state.push(r.state);
        reason.push(r.reason.as_deref());
        planned.push(r.planned_at);
        at.push(r.at);
        channel.push(r.channel);
        command.push(r.command_id.as_deref());
    }
    sqlx::query(
        "INSERT INTO scheduler.step_log (tenant, invoice_id, step, policy_version, state, reason, planned_at, at, channel, command_id, trace_id) \
         SELECT t, i, s, v, st, r, p, a, c, cmd, tr FROM UNNEST($1::text[], $2::text[], $3::text[], $4::int[], $5::text[], \
         $6::text[], $7::timestamptz[], $8::timestamptz[], $9::text[], $10::text[], $11::text[]) WITH ORDINALITY \
         AS x(t, i, s, v, st, r, p, a, c, cmd, tr, n) ORDER BY n",
    )
    .bind(&tenant)
    .bind(&invoice)
    .bind(&step)
    .bind(&version)
    .bind(&state)
    .bind(&reason)
    .bind(&planned)
    .bind(&at)
    .bind(&channel)
    .bind(&command)
    .bind(&trace)
    .execute(conn)
    .await?;
    Ok(())
}

/// Everything needed to decide an invoice's steps.
pub struct Planned {
    pub tz: Tz,
    pub risk: RiskClass,
    /// The policy's business calendar, which placed the plan.
    pub cal: Calendar,
    pub plan: BasePlan,
}

/// Places `policy`'s steps for `invoice`.
pub fn plan_for(
    policy: &Policy,
    invoice: &InvoiceState,
    customer: Option<&Customer>,
    tenant: &Tenant,
) -> Planned {
    let (tz, risk) = plan_inputs(policy, customer, tenant);
    plan_with(policy, invoice.due_date, tz, risk)
}

/// What, besides the policy and the due date, an invoice's plan depends on: the
/// debtor's time zone and risk class.
pub fn plan_inputs(
    policy: &Policy,
    customer: Option<&Customer>,
    tenant: &Tenant,
) -> (Tz, RiskClass) {
    let tz = customer.map_or(tenant.timezone, |c| c.tz(tenant));
    let risk = customer.map_or(RiskClass::Regular, |c| {
        policy.risk_rules.classify(&c.history)
    });
    (tz, risk)
}

/// Places `policy`'s steps for an invoice due on `due_date`, for a debtor in `tz`
/// of class `risk`.
pub fn plan_with(policy: &Policy, due_date: chrono::NaiveDate, tz: Tz, risk: RiskClass) -> Planned {
    let cal = policy.calendar.calendar();
    let plan = base_plan(policy, &cal, tz, due_date, risk);
    Planned {
        tz,
        risk,
        cal,
        plan,
    }
}
