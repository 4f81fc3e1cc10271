//! The demo's simulated debtors: each invoice belongs to a cohort that decides when
//! (and how much) its customer pays, through `payment.received` as a bank or an ERP
//! would publish it. Amounts come from reconciliation's own account of the invoice on
//! the payment's day (fine and interest included), so a late payer pays in full.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use chrono::{DateTime, NaiveDate, TimeDelta, Utc};
use chrono_tz::America::Sao_Paulo;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use regua_contract::{InboundKind, TenantId, subjects};
use regua_domain::charges;
use regua_reconcile::ledger::{self, INVOICE_COLUMNS, InvoiceRow};
use serde_json::json;
use sqlx::PgPool;

/// How a simulated customer behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Cohort {
    /// Pays on the due date, before any dunning.
    OnTime,
    /// Forgot; pays the day after the first message reaches them.
    AfterFirstReminder,
    /// Pays only after the firm second notice (D+10): `padrao` has no negotiation
    /// offer yet, so this stands for "after the last word before negativação".
    AfterFirmNotice,
    /// Pays half after the first overdue notice; completes after the negativação notice.
    PartialThenRest,
    /// Pays half after the first overdue notice, and nothing more.
    PartialOnly,
    /// Never pays.
    Never,
}

impl Cohort {
    pub fn name(self) -> &'static str {
        match self {
            Cohort::OnTime => "pays on the due date",
            Cohort::AfterFirstReminder => "pays after the first message",
            Cohort::AfterFirmNotice => "pays after the firm notice",
            Cohort::PartialThenRest => "pays half, then the rest",
            Cohort::PartialOnly => "pays half only",
            Cohort::Never => "never pays",
        }
    }

    fn draw(rng: &mut StdRng) -> Cohort {
        match rng.random_range(0..100) {
            0..10 => Cohort::OnTime,
            10..40 => Cohort::AfterFirstReminder,
            40..55 => Cohort::AfterFirmNotice,
            55..63 => Cohort::PartialThenRest,
            63..70 => Cohort::PartialOnly,
            _ => Cohort::Never,
        }
    }
}

/// Every simulated debtor, and what they paid so far.
pub struct Payers {
    cohorts: BTreeMap<String, Cohort>,
    partial_paid: HashSet<String>,
    settled: HashSet<String>,
    payments: usize,
}

impl Payers {
    pub fn new(invoice_ids: &[String]) -> Payers {
        let mut rng = StdRng::seed_from_u64(548);
        Payers {
            cohorts: invoice_ids
                .iter()
                .map(|id| (id.clone(), Cohort::draw(&mut rng)))
                .collect(),
            partial_paid: HashSet::new(),
            settled: HashSet::new(),
            payments: 0,
        }
    }

    pub fn cohorts(&self) -> &BTreeMap<String, Cohort> {
        &self.cohorts
    }

    pub fn payments(&self) -> usize {
        self.payments
    }

    /// Pays what each cohort pays on the local day that starts at `day_start`, at
    /// 15:00 São Paulo; returns how many payments were published.
    pub async fn pay_day(
        &mut self,
        pool: &PgPool,
        js: &async_nats::jetstream::Context,
        tenant: &TenantId,
        day_start: DateTime<Utc>,
    ) -> anyhow::Result<usize> {
        let today = day_start.with_timezone(&Sao_Paulo).date_naive();
        let paid_at = day_start + TimeDelta::hours(15);
        let sent = steps_sent_before(pool, tenant, day_start).await?;
        let subject = subjects::inbound(tenant, InboundKind::PaymentReceived);
        let mut published = 0;
        let cohorts: Vec<(String, Cohort)> =
            self.cohorts.iter().map(|(k, v)| (k.clone(), *v)).collect();
        for (id, cohort) in cohorts {
            if self.settled.contains(&id) {
                continue;
            }
            let steps = sent.get(&id);
            let has = |step: &str| steps.is_some_and(|s| s.contains(step));
            let Some((inv, due)) = account(pool, tenant, &id, today).await? else {
                continue;
            };
            if inv.status != "open" {
                self.settled.insert(id);
                continue;
            }
            let share = match cohort {
                Cohort::OnTime if today >= inv.terms.effective_due_date => Some(1.0),
                Cohort::AfterFirstReminder if steps.is_some_and(|s| !s.is_empty()) => Some(1.0),
                Cohort::AfterFirmNotice if has("segundo_aviso") => Some(1.0),
                Cohort::PartialThenRest | Cohort::PartialOnly
                    if has("primeiro_aviso") && !self.partial_paid.contains(&id) =>
                {
                    Some(0.5)
                }
                Cohort::PartialThenRest if has("aviso_previo_negativacao") => Some(1.0),
                _ => None,
            };
            let Some(share) = share else { continue };
            let amount = if share < 1.0 {
                due.balance_cents / 2
            } else {
                due.balance_cents
            };
            if amount <= 0 {
                continue;
            }
            self.payments += 1;
            // Half the payers name the invoice; the other half only its reference (a
            // PIX txid or nosso número), as banks report them.
            let mut body = json!({
                "payment_id": format!("PAY-{id}-{}", self.payments),
                "amount_cents": amount,
                "currency": "BRL",
                "paid_at": paid_at.to_rfc3339(),
                "method": if self.payments.is_multiple_of(3) { "boleto" } else { "pix" },
            });
            if self.payments.is_multiple_of(2) {
                body["invoice_id"] = json!(id);
            } else {
                body["reference"] = json!(format!("TX{}", id.trim_start_matches("DEMO-")));
            }
            js.publish(subject.clone(), serde_json::to_vec(&body)?.into())
                .await?
                .await?;
            published += 1;
            if share < 1.0 {
                self.partial_paid.insert(id);
            } else {
                self.settled.insert(id);
            }
        }
        Ok(published)
    }

    /// Waits until reconciliation has recorded every payment published so far.
    pub async fn wait_applied(
        &self,
        pool: &PgPool,
        tenant: &TenantId,
        wait_secs: u64,
    ) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(wait_secs);
        loop {
            let applied: i64 =
                sqlx::query_scalar("SELECT count(*) FROM reconcile.payments WHERE tenant = $1")
                    .bind(tenant.as_str())
                    .fetch_one(pool)
                    .await?;
            if usize::try_from(applied).unwrap_or(0) >= self.payments {
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                anyhow::bail!(
                    "reconciliation recorded {applied} of {} payments: is `regua all` running?",
                    self.payments
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// The invoice as reconciliation keeps it, and what it owes on `on`.
async fn account(
    pool: &PgPool,
    tenant: &TenantId,
    invoice_id: &str,
    on: NaiveDate,
) -> anyhow::Result<Option<(InvoiceRow, charges::Statement)>> {
    let mut conn = pool.acquire().await?;
    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {INVOICE_COLUMNS} FROM reconcile.invoices WHERE tenant = $1 AND invoice_id = $2"
    )))
    .bind(tenant.as_str())
    .bind(invoice_id)
    .fetch_optional(&mut *conn)
    .await?;
    let Some(row) = row else { return Ok(None) };
    let inv = InvoiceRow::from_row(&row)?;
    let paid = ledger::payments_of(&mut conn, tenant.as_str(), invoice_id).await?;
    let due = charges::statement(&inv.terms, &paid, on)?;
    Ok(Some((inv, due)))
}

/// The steps whose message reached a provider before `before`, per invoice.
async fn steps_sent_before(
    pool: &PgPool,
    tenant: &TenantId,
    before: DateTime<Utc>,
) -> anyhow::Result<HashMap<String, HashSet<String>>> {
    let rows: Vec<(String, String)> = sqlx::query_as(
        "SELECT DISTINCT unnest(invoice_ids), step FROM dispatch.attempts WHERE tenant = $1 AND state = 'sent' \
         AND (command->>'scheduled_for')::timestamptz < $2",
    )
    .bind(tenant.as_str())
    .bind(before)
    .fetch_all(pool)
    .await?;
    let mut out: HashMap<String, HashSet<String>> = HashMap::new();
    for (id, step) in rows {
        out.entry(id).or_default().insert(step);
    }
    Ok(out)
}

/// The story's ending: what was recovered, by whom, on which channels, and whether any
/// dunning message went out after a payment settled its invoice.
pub async fn report(
    pool: &PgPool,
    tenant: &TenantId,
    payers: &Payers,
    say: impl Fn(&str),
) -> anyhow::Result<()> {
    let t = tenant.as_str();
    // The story filled these tables in seconds, with two months of history: statistics
    // autovacuum would have gathered meanwhile (and a server may run without it).
    // Without them the planner nests the joins below (1.8 s at 1,000 invoices,
    // quadratic beyond).
    sqlx::query(
        "ANALYZE reconcile.invoices, reconcile.applications, reconcile.payments, dispatch.attempts",
    )
    .execute(pool)
    .await?;
    let owed: i64 = sqlx::query_scalar(
        "SELECT COALESCE(sum(amount_cents), 0)::bigint FROM reconcile.invoices WHERE tenant = $1",
    )
    .bind(t)
    .fetch_one(pool)
    .await?;
    let (recovered, credit): (i64, i64) = sqlx::query_as(
        "SELECT COALESCE(sum(amount_cents), 0)::bigint, COALESCE(sum(credit_cents), 0)::bigint \
         FROM reconcile.applications WHERE tenant = $1",
    )
    .bind(t)
    .fetch_one(pool)
    .await?;
    let statuses: Vec<(String, i64)> = sqlx::query_as(
        "SELECT status, count(*) FROM reconcile.invoices WHERE tenant = $1 GROUP BY 1 ORDER BY 1",
    )
    .bind(t)
    .fetch_all(pool)
    .await?;
    let partly: i64 = sqlx::query_scalar(
        "SELECT count(DISTINCT a.invoice_id) FROM reconcile.applications a JOIN reconcile.invoices i \
         USING (tenant, invoice_id) WHERE a.tenant = $1 AND i.status = 'open'",
    )
    .bind(t)
    .fetch_one(pool)
    .await?;
    let unmatched: i64 =
        sqlx::query_scalar("SELECT count(*) FROM reconcile.unmatched WHERE tenant = $1")
            .bind(t)
            .fetch_one(pool)
            .await?;
    let brl = |c: i64| {
        let whole = (c / 100).to_string();
        let mut grouped = String::new();
        for (i, ch) in whole.chars().enumerate() {
            if i > 0 && (whole.len() - i).is_multiple_of(3) {
                grouped.push('.');
            }
            grouped.push(ch);
        }
        format!("R$ {grouped},{:02}", c % 100)
    };
    say("");
    say("the portfolio's story:");
    let mut by_cohort: BTreeMap<&str, usize> = BTreeMap::new();
    for c in payers.cohorts().values() {
        *by_cohort.entry(c.name()).or_default() += 1;
    }
    let cohorts: Vec<String> = by_cohort.iter().map(|(k, n)| format!("{k} {n}")).collect();
    say(&format!(
        "  simulated customers: {}; {} payments published on payment.received",
        cohorts.join(", "),
        payers.payments()
    ));
    let statuses: Vec<String> = statuses.iter().map(|(s, n)| format!("{s} {n}")).collect();
    say(&format!(
        "  invoices now: {} ({partly} open ones partly paid); payments waiting for a match: {unmatched}",
        statuses.join(", ")
    ));
    say(&format!(
        "  recovered {} of {} owed in principal ({:.1}%), fine and interest included; {} held as customer credit",
        brl(recovered),
        brl(owed),
        if owed > 0 {
            recovered as f64 * 100.0 / owed as f64
        } else {
            0.0
        },
        brl(credit)
    ));
    let channels: Vec<(String, String, i64)> = sqlx::query_as(
        "SELECT channel, CASE WHEN step = 'on_paid' THEN 'thanks' ELSE 'dunning' END, count(*) \
         FROM dispatch.attempts WHERE tenant = $1 AND state = 'sent' GROUP BY 1, 2 ORDER BY 1, 2",
    )
    .bind(t)
    .fetch_all(pool)
    .await?;
    let channels: Vec<String> = channels
        .iter()
        .map(|(c, k, n)| format!("{c} {k} {n}"))
        .collect();
    say(&format!(
        "  messages sent per channel: {}",
        channels.join(", ")
    ));
    // In story time: a dunning message decided after the settling payment was made.
    let after: i64 = sqlx::query_scalar(
        "WITH sent AS (SELECT unnest(invoice_ids) AS invoice_id, (command->>'scheduled_for')::timestamptz AS at \
         FROM dispatch.attempts WHERE tenant = $1 AND state = 'sent' AND step <> 'on_paid'), \
         paid AS (SELECT s.invoice_id, p.paid_at FROM reconcile.applications s \
         JOIN reconcile.payments p USING (tenant, payment_id) WHERE s.tenant = $1 AND s.settled) \
         SELECT count(*) FROM sent JOIN paid USING (invoice_id) WHERE sent.at > paid.paid_at",
    )
    .bind(t)
    .fetch_one(pool)
    .await?;
    let stopped: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM dispatch.attempts WHERE tenant = $1 AND state = 'skipped' AND reason = 'invoice_closed' \
         AND step <> 'on_paid'",
    )
    .bind(t)
    .fetch_one(pool)
    .await?;
    say(&format!(
        "  dunning messages sent after their invoice was paid: {after} (messages stopped at the dispatcher because of a payment: {stopped})"
    ));
    Ok(())
}
