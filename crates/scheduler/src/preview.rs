//! The plan preview: every step of an invoice's régua with its send instant after the
//! calendar, the window, grace and caps, and its state. Past decisions come from the
//! step log; the future is [`regua_domain::schedule::simulate`] run over the customer's
//! open invoices from where they are, so the preview is the decision the scheduler
//! will make, not an approximation of it.

use chrono::{DateTime, NaiveDate, Utc};
use regua_domain::policy::{Action, Policy};
use regua_domain::schedule::{Contact, Ledger, Progress, SimInvoice, StepState, Subject, simulate};
use serde::Serialize;
use sqlx::{PgConnection, Row};

use crate::model::{self, Customer, Invoice, Planned, Status, Tenant};
use crate::{Scheduler, SchedulerError};

/// One step in a plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PlanStep {
    pub step: String,
    /// `D-3`, `D0`, `D+10`; `on_paid` for the thank-you.
    pub offset: String,
    /// `notify`, `escalate` or `offer`.
    pub action: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub template: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub channel: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub level: Option<String>,
    /// When it goes out (or went out, or was decided).
    pub send_at: DateTime<Utc>,
    /// `pending`, `sent`, `escalated`, `skipped` or `cancelled`.
    pub state: String,
    /// For `pending`: what the scheduler will do when it comes (`send`, `escalate`,
    /// `skip`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expected: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// `GET .../invoices/{id}/plan` and `:simulate`.
#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    pub invoice_id: String,
    pub policy: String,
    pub policy_version: i32,
    pub status: &'static str,
    pub due_date: NaiveDate,
    pub effective_due_date: NaiveDate,
    pub risk_class: &'static str,
    pub timezone: String,
    pub steps: Vec<PlanStep>,
}

fn describe(
    policy: &Policy,
    index: usize,
) -> (&'static str, Option<String>, Option<String>, String) {
    let step = &policy.steps[index];
    match step.action() {
        Action::Notify(n) => (
            "notify",
            Some(n.template.clone()),
            None,
            step.at.to_string(),
        ),
        Action::Escalate(e) => ("escalate", None, Some(e.level.clone()), step.at.to_string()),
        Action::Offer => ("offer", None, None, step.at.to_string()),
    }
}

/// One invoice, placed in time and ready to simulate.
struct Prepared<'a> {
    invoice: &'a Invoice,
    policy: &'a Policy,
    planned: Planned,
}

impl<'a> Prepared<'a> {
    fn new(
        invoice: &'a Invoice,
        policy: &'a Policy,
        customer: Option<&Customer>,
        tenant: &Tenant,
    ) -> Self {
        Prepared {
            invoice,
            policy,
            planned: model::plan_for(policy, &invoice.state, customer, tenant),
        }
    }
}

/// The future of `invoices` (all of one customer), from their progress. Returns, per
/// invoice, the simulated decisions.
fn future(
    invoices: &[Prepared<'_>],
    customer: Option<&Customer>,
    tz: chrono_tz::Tz,
    ledger: Ledger,
    first_channel: &dyn Fn(&regua_domain::policy::Notify) -> Option<String>,
) -> Vec<Vec<PlanStep>> {
    let mut ledger = ledger;
    let mut sims: Vec<SimInvoice<'_>> = invoices
        .iter()
        .map(|p| SimInvoice {
            subject: Subject {
                policy: p.policy,
                cal: &p.planned.cal,
                tz,
                plan: &p.planned.plan,
            },
            progress: if p.invoice.status == Status::Open {
                p.invoice.progress
            } else {
                Progress {
                    next: p.planned.plan.steps.len(),
                    ..p.invoice.progress
                }
            },
        })
        .collect();
    let reachable =
        |n: &regua_domain::policy::Notify| customer.is_some_and(|c| !c.channels_for(n).is_empty());
    let events = simulate(&mut sims, &mut ledger, None, &reachable);
    let mut out: Vec<Vec<PlanStep>> = vec![Vec::new(); invoices.len()];
    for (k, e) in events {
        let policy = invoices[k].policy;
        let (action, template, level, offset) = describe(policy, e.index);
        let (expected, channel) = match &e.state {
            StepState::Deferred { .. } => continue,
            StepState::Sent { .. } => (
                "send",
                match policy.steps[e.index].action() {
                    Action::Notify(n) => first_channel(n),
                    _ => None,
                },
            ),
            StepState::Escalated { .. } => ("escalate", None),
            StepState::Skipped { .. } => ("skip", None),
        };
        let reason = match &e.state {
            StepState::Escalated { .. } => None,
            state => state.reason(),
        };
        out[k].push(PlanStep {
            step: e.name.clone(),
            offset,
            action,
            template,
            channel,
            level,
            send_at: e.at,
            state: "pending".into(),
            expected: Some(expected),
            reason,
        });
    }
    out
}

/// The plan of a stored invoice, or `None` when the scheduler does not know it.
pub async fn plan(
    s: &Scheduler,
    conn: &mut PgConnection,
    tenant: &str,
    invoice_id: &str,
) -> Result<Option<Plan>, SchedulerError> {
    let one = model::load_invoices(conn, &[(tenant.to_owned(), invoice_id.to_owned())]).await?;
    let Some(target) = one.into_values().next() else {
        return Ok(None);
    };
    let tenants = model::load_tenants(conn, &[tenant.to_owned()]).await?;
    let Some(t) = tenants.get(tenant) else {
        return Ok(None);
    };
    let ckey = (tenant.to_owned(), target.customer_id.clone());
    let customers = model::load_customers(conn, std::slice::from_ref(&ckey)).await?;
    let customer = customers.get(&ckey);
    // The customer's other open invoices share the caps and the same-day merge.
    let sql = format!(
        "SELECT {} FROM scheduler.invoices WHERE tenant = $1 AND customer_id = $2 AND status = 'open' AND invoice_id <> $3",
        model::INVOICE_COLUMNS
    );
    let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(tenant)
        .bind(&target.customer_id)
        .bind(invoice_id)
        .fetch_all(&mut *conn)
        .await?;
    let mut all = vec![target.clone()];
    for r in &rows {
        all.push(Invoice::from_row(r)?);
    }
    // A claim decides a customer's invoices due at the same instant in invoice id
    // order (byte order); the simulation fires same-instant invoices in slice order.
    all.sort_by(|a, b| a.invoice_id.cmp(&b.invoice_id));
    let mut owned = Vec::with_capacity(all.len());
    for inv in all {
        if let Some(policy) = s
            .policies
            .get(conn, tenant, &inv.policy, inv.policy_version)
            .await?
        {
            owned.push((inv, policy));
        }
    }
    let prepared: Vec<Prepared<'_>> = owned
        .iter()
        .map(|(inv, policy)| Prepared::new(inv, policy, customer, t))
        .collect();
    let Some(k) = prepared
        .iter()
        .position(|p| p.invoice.invoice_id == invoice_id)
    else {
        return Ok(None);
    };
    let (inv, policy, planned) = (
        prepared[k].invoice,
        prepared[k].policy,
        &prepared[k].planned,
    );
    let tz = planned.tz;
    let ledger = customer_ledger(conn, tenant, &inv.customer_id).await?;
    let first_channel = |n: &regua_domain::policy::Notify| {
        customer.and_then(|c| c.channels_for(n).first().map(|c| c.as_str().to_owned()))
    };
    let mut future = future(&prepared, customer, tz, ledger, &first_channel);
    let mut steps = past(conn, tenant, invoice_id, policy).await?;
    steps.append(&mut future.swap_remove(k));
    if inv.thanks_pending
        && let (Some(n), Some(at)) = (&policy.on_paid, inv.next_at)
    {
        steps.push(PlanStep {
            step: crate::events::THANKS_STEP.into(),
            offset: crate::events::THANKS_STEP.into(),
            action: "notify",
            template: Some(n.template.clone()),
            channel: first_channel(n),
            level: None,
            send_at: at,
            state: "pending".into(),
            expected: Some("send"),
            reason: None,
        });
    }
    Ok(Some(Plan {
        invoice_id: inv.invoice_id.clone(),
        policy: inv.policy.clone(),
        policy_version: inv.policy_version,
        status: inv.status.as_str(),
        due_date: planned.plan.due_date,
        effective_due_date: planned.plan.effective_due_date,
        risk_class: planned.risk.as_str(),
        timezone: tz.name().to_owned(),
        steps,
    }))
}

async fn customer_ledger(
    conn: &mut PgConnection,
    tenant: &str,
    customer_id: &str,
) -> Result<Ledger, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT at, template FROM scheduler.contacts WHERE tenant = $1 AND customer_id = $2",
    )
    .bind(tenant)
    .bind(customer_id)
    .fetch_all(conn)
    .await?;
    let mut contacts = Vec::with_capacity(rows.len());
    for r in rows {
        contacts.push(Contact {
            at: r.try_get("at")?,
            template: r.try_get("template")?,
        });
    }
    Ok(Ledger::new(contacts))
}

/// Decided steps, from the step log (deferrals are not shown: the final decision is).
async fn past(
    conn: &mut PgConnection,
    tenant: &str,
    invoice_id: &str,
    policy: &Policy,
) -> Result<Vec<PlanStep>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT step, state, reason, at, channel FROM scheduler.step_log WHERE tenant = $1 AND invoice_id = $2 AND state <> 'deferred' ORDER BY seq",
    )
    .bind(tenant)
    .bind(invoice_id)
    .fetch_all(conn)
    .await?;
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        let name: String = r.try_get("step")?;
        let (action, template, level, offset) =
            match policy.steps.iter().position(|s| s.name == name) {
                Some(i) => describe(policy, i),
                None if name == crate::events::THANKS_STEP => (
                    "notify",
                    policy.on_paid.as_ref().map(|n| n.template.clone()),
                    None,
                    crate::events::THANKS_STEP.to_owned(),
                ),
                None => ("notify", None, None, String::new()),
            };
        out.push(PlanStep {
            step: name,
            offset,
            action,
            template,
            channel: r.try_get("channel")?,
            level,
            send_at: r.try_get("at")?,
            state: r.try_get("state")?,
            expected: None,
            reason: r.try_get("reason")?,
        });
    }
    Ok(out)
}

/// The plan of an invoice that is not stored: `:simulate`. Nothing is written.
pub fn simulate_one(
    policy_name: &str,
    policy: &Policy,
    invoice: &Invoice,
    customer: &Customer,
    tenant: &Tenant,
) -> Plan {
    let prepared = [Prepared::new(invoice, policy, Some(customer), tenant)];
    let planned = &prepared[0].planned;
    let first_channel = |n: &regua_domain::policy::Notify| {
        customer
            .channels_for(n)
            .first()
            .map(|c| c.as_str().to_owned())
    };
    let mut steps = future(
        &prepared,
        Some(customer),
        planned.tz,
        Ledger::default(),
        &first_channel,
    );
    Plan {
        invoice_id: invoice.invoice_id.clone(),
        policy: policy_name.to_owned(),
        policy_version: invoice.policy_version,
        status: "simulated",
        due_date: planned.plan.due_date,
        effective_due_date: planned.plan.effective_due_date,
        risk_class: planned.risk.as_str(),
        timezone: planned.tz.name().to_owned(),
        steps: steps.swap_remove(0),
    }
}
