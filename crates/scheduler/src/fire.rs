//! Firing due steps. The customer is the unit of a claim: a claim picks up to a batch of
//! customers with a due invoice, try-locks each (a customer another claim or replica
//! holds is skipped: the SKIP LOCKED pattern at customer grain), then reads every due
//! invoice of the customers it got. So replicas never decide the same invoice, and caps
//! and same-instant merges see all of a customer's due invoices. The invoices are read
//! without row locks: every writer of an invoice holds its customer's lock, or (a
//! policy migration) its tenant's schedule lock exclusively ([`lock_schedules`]).
//! Every decision, the contact ledger, the invoice's next step and the dispatch
//! commands are written in the caller's transaction; the relay publishes the commands
//! after commit.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, NaiveDate, TimeDelta, Utc};
use regua_contract::commands::{CommandInvoice, CommandKind, DispatchCommand, Recipient};
use regua_contract::events::{AmountDue, InvoiceEscalated};
use regua_contract::{DomainEvent, subjects};
use regua_domain::charges;
use regua_domain::message::{MAX_INVOICES_PER_MESSAGE, MAX_MESSAGE_BYTES};
use regua_domain::policy::{Action, Channel, Notify, Policy};
use regua_domain::schedule::{self, Contact, Ledger, StepState, Subject};
use regua_domain::window::local_to_utc;
use regua_platform::outbox::{OutboxMessage, event_message};
use regua_platform::telemetry;
use sqlx::{PgConnection, Row};
use tokio_util::sync::CancellationToken;

use crate::model::{self, Customer, Invoice, LogRow, Status, Tenant};
use crate::{OUTBOX, Scheduler, SchedulerError};
use regua_platform::shutdown::Backoff;

/// Which due invoices a claim takes.
#[derive(Debug, Clone, Copy)]
pub enum Scope<'a> {
    /// Tenants on real time, at the real now.
    RealTime,
    /// One test-clock tenant, at its simulated now.
    TestClock(&'a str),
}

/// One of `of` disjoint shares of the customers (by a hash of the customer key), so
/// concurrent claims in one process never contend for the same customers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Part {
    pub index: u32,
    pub of: u32,
}

impl Part {
    /// The `workers` shares.
    pub fn all(workers: usize) -> impl Iterator<Item = Part> {
        let of = u32::try_from(workers.max(1)).unwrap_or(1);
        (0..of).map(move |index| Part { index, of })
    }
}

/// What an invoice's plan depends on (see [`model::plan_with`]): its policy version
/// (by address), due date, and debtor's time zone and risk class.
type PlanKey = (
    usize,
    NaiveDate,
    chrono_tz::Tz,
    regua_domain::policy::RiskClass,
);

/// A position in the due order: (next_at, tenant, customer_id, invoice_id).
pub type Key = (DateTime<Utc>, String, String, String);

/// Successive claims of one share. Each claim starts after the last row the previous
/// one saw, so it does not wade again through index entries of rows just decided
/// (dead until vacuum); when a claim past the cursor finds nothing, it starts over
/// from the beginning once, to pick up anything skipped.
pub struct Claimer {
    pub part: Part,
    after: Option<Key>,
}

impl Claimer {
    pub fn new(part: Part) -> Self {
        Claimer { part, after: None }
    }

    /// One claim in its own transaction; how many invoices it decided.
    pub async fn claim(
        &mut self,
        s: &Scheduler,
        scope: Scope<'_>,
        now: DateTime<Utc>,
    ) -> Result<usize, SchedulerError> {
        loop {
            let from_start = self.after.is_none();
            let (n, last) = fire_once(s, scope, self.part, self.after.as_ref(), now).await?;
            self.after = last;
            if n > 0 || from_start {
                return Ok(n);
            }
        }
    }
}

/// Claims and fires real-time due steps in `part` until `cancel`.
pub async fn run(s: Arc<Scheduler>, part: Part, cancel: CancellationToken) {
    let mut backoff = Backoff::new(Duration::from_millis(200));
    let mut claimer = Claimer::new(part);
    while !cancel.is_cancelled() {
        let now = s.clock.now();
        match claimer.claim(&s, Scope::RealTime, now).await {
            Ok(n) => {
                backoff.reset();
                if n >= s.config.scheduler_batch_size {
                    continue;
                }
                tokio::select! {
                    () = cancel.cancelled() => break,
                    () = s.idle(&s.fire_wake) => {}
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "firing due steps failed; retrying");
                if !backoff.wait(&cancel).await {
                    break;
                }
            }
        }
    }
}

/// Samples `regua_scheduler_due_backlog` (real-time tenants' invoices whose next step
/// is due) until `cancel`.
pub async fn sample_backlog(s: Arc<Scheduler>, cancel: CancellationToken) {
    let mut tick = tokio::time::interval(regua_platform::sampler::INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        let due: Result<i64, _> = sqlx::query_scalar(
            sqlx::AssertSqlSafe(format!(
                "SELECT count(*) FROM scheduler.invoices i WHERE next_at <= $1 AND NOT test_clock AND {}",
                model::NOT_HALTED
            )),
        )
        .bind(s.clock.now())
        .fetch_one(&s.pool)
        .await;
        match due {
            Ok(n) => metrics::gauge!(regua_platform::metrics::SCHEDULER_DUE_BACKLOG).set(n as f64),
            Err(e) => tracing::debug!(error = %e, "due backlog not sampled"),
        }
    }
}

/// One claim in its own transaction. Returns how many invoices it decided and the
/// last due-order position it looked at.
pub async fn fire_once(
    s: &Scheduler,
    scope: Scope<'_>,
    part: Part,
    after: Option<&Key>,
    now: DateTime<Utc>,
) -> Result<(usize, Option<Key>), SchedulerError> {
    let mut tx = s.pool.begin().await?;
    let out = fire_batch(s, &mut tx, scope, part, after, now).await?;
    tx.commit().await?;
    if out.0 > 0 {
        s.wake_relay();
    }
    Ok(out)
}

/// What one claim produces, written at the end.
#[derive(Default)]
struct Output {
    log: Vec<LogRow>,
    contacts: Vec<(String, String, DateTime<Utc>, String, String)>,
    commands: Vec<(DispatchCommand, Option<String>)>,
    events: Vec<OutboxMessage>,
    /// (tenant, customer, template, instant) → index in `commands`.
    merge: HashMap<(String, String, String, DateTime<Utc>), usize>,
    /// Decisions by (outcome, reason), for `regua_scheduler_steps_total`: counted
    /// once per claim rather than once per step.
    steps: HashMap<(&'static str, &'static str), u64>,
    /// Bytes of the merged commands, by index in `commands`: measured at a command's
    /// first merge, so a command that merges nothing is never serialized twice.
    merged_bytes: HashMap<usize, usize>,
}

/// The bytes `v` takes as JSON, counted without building it.
fn wire_len(v: &impl serde::Serialize) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 = self.0.saturating_add(buf.len());
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut n = Count(0);
    match serde_json::to_writer(&mut n, v) {
        Ok(()) => n.0,
        Err(_) => usize::MAX,
    }
}

impl Output {
    /// Whether `line` fits in command `k`: under [`MAX_INVOICES_PER_MESSAGE`] invoices
    /// and [`MAX_MESSAGE_BYTES`] bytes once added (which it then counts).
    fn fits(&mut self, k: usize, line: &CommandInvoice) -> bool {
        let Some((cmd, _)) = self.commands.get(k) else {
            return false;
        };
        if cmd.invoices.len() >= MAX_INVOICES_PER_MESSAGE {
            return false;
        }
        let bytes = *self.merged_bytes.entry(k).or_insert_with(|| wire_len(cmd));
        let grown = bytes.saturating_add(wire_len(line)).saturating_add(1);
        if grown > MAX_MESSAGE_BYTES {
            return false;
        }
        self.merged_bytes.insert(k, grown);
        true
    }
}

/// The name of the advisory lock (`hashtextextended(name, 11)`) on a customer: a claim
/// try-locks it to decide the customer's due invoices; the in-order event consumer
/// waits for it before it writes any of them ([`crate::events`]).
pub fn customer_lock(tenant: &str, customer_id: &str) -> String {
    format!("customer/{tenant}/{customer_id}")
}

/// How [`take_locks`] takes its locks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockMode {
    Shared,
    Exclusive,
}

/// Takes, waiting, the advisory locks `names` (each `hashtextextended(name, 11)`) until
/// the transaction ends, in name order, so that two takers never wait on each other
/// in a cycle.
pub async fn take_locks(
    conn: &mut PgConnection,
    mut names: Vec<String>,
    mode: LockMode,
) -> Result<(), sqlx::Error> {
    names.sort();
    names.dedup();
    let sql = match mode {
        LockMode::Shared => {
            "SELECT pg_advisory_xact_lock_shared(hashtextextended(k, 11)) FROM UNNEST($1::text[]) WITH ORDINALITY AS u(k, n) ORDER BY n"
        }
        LockMode::Exclusive => {
            "SELECT pg_advisory_xact_lock(hashtextextended(k, 11)) FROM UNNEST($1::text[]) WITH ORDINALITY AS u(k, n) ORDER BY n"
        }
    };
    sqlx::query(sql).bind(&names).execute(conn).await?;
    Ok(())
}

/// Takes, waiting, the tenants' schedule locks ([`schedule_lock`]) in shared mode,
/// before any customer lock. Claims and the in-order consumer hold them shared while
/// they read and write invoices; a policy write with `migrate_open` holds its tenant's
/// exclusively while it re-plans ([`crate::policies`]). With the customer locks, they
/// are what keeps two writers off one invoice: no writer takes row locks first.
pub async fn lock_schedules<'a>(
    conn: &mut PgConnection,
    tenants: impl IntoIterator<Item = &'a str>,
) -> Result<(), sqlx::Error> {
    let names = tenants.into_iter().map(schedule_lock).collect();
    take_locks(conn, names, LockMode::Shared).await
}

/// The name of a tenant's schedule lock (see [`lock_schedules`]).
pub fn schedule_lock(tenant: &str) -> String {
    format!("schedule/{tenant}")
}

/// Claims up to a batch of due invoices in `scope` at `now` and decides them, inside
/// the caller's transaction.
pub async fn fire_batch(
    s: &Scheduler,
    conn: &mut PgConnection,
    scope: Scope<'_>,
    part: Part,
    after: Option<&Key>,
    now: DateTime<Utc>,
) -> Result<(usize, Option<Key>), SchedulerError> {
    let limit = i64::try_from(s.config.scheduler_batch_size).unwrap_or(500);
    let tenant = match scope {
        Scope::RealTime => None,
        Scope::TestClock(t) => Some(t),
    };
    // A customer's invoices due at one instant are decided in invoice id order: byte
    // order, as the preview's simulation does, because the scheduler's id columns are
    // `COLLATE "C"` (migration 0006).
    //
    // The customer is the unit of a claim: caps and same-instant merges look at all of
    // a customer's due invoices at once, and no other claim (replica or worker) can
    // take any of them meanwhile. Candidates in due order; each customer is try-locked
    // (a customer another claim holds is skipped, as SKIP LOCKED would); then every due
    // invoice of the locked customers is taken.
    // Two statements rather than an `OR $6 IS NULL`, so the cursor stays an index bound
    // in the prepared (generic) plan.
    const CANDIDATES: &str = "SELECT tenant, customer_id, next_at, invoice_id FROM scheduler.invoices i WHERE next_at <= $1 \
         AND (CASE WHEN $3::text IS NULL THEN NOT test_clock ELSE tenant = $3 END) \
         AND (hashtextextended(tenant || '/' || customer_id, 0) & 9223372036854775807) % $4 = $5";
    const ORDER: &str = " ORDER BY next_at, tenant, customer_id, invoice_id LIMIT $2";
    let sql = match after {
        None => format!("{CANDIDATES} AND {}{ORDER}", model::NOT_HALTED),
        Some(_) => format!(
            "{CANDIDATES} AND {} AND (next_at, tenant, customer_id, invoice_id) > ($6, $7, $8, $9){ORDER}",
            model::NOT_HALTED
        ),
    };
    let mut q = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(now)
        .bind(limit)
        .bind(tenant)
        .bind(i64::from(part.of))
        .bind(i64::from(part.index));
    if let Some((at, t, c, i)) = after {
        q = q.bind(at).bind(t).bind(c).bind(i);
    }
    let rows = q.fetch_all(&mut *conn).await?;
    let mut seen = std::collections::HashSet::new();
    let mut candidates: Vec<(String, String)> = Vec::new();
    let mut last = None;
    for r in rows {
        let key: (String, String) = (r.try_get("tenant")?, r.try_get("customer_id")?);
        last = Some((
            r.try_get("next_at")?,
            key.0.clone(),
            key.1.clone(),
            r.try_get("invoice_id")?,
        ));
        if seen.insert(key.clone()) {
            candidates.push(key);
        }
    }
    if candidates.is_empty() {
        return Ok((0, last));
    }
    lock_schedules(conn, candidates.iter().map(|(t, _)| t.as_str())).await?;
    let lock_keys: Vec<String> = candidates
        .iter()
        .map(|(t, c)| customer_lock(t, c))
        .collect();
    let locked: std::collections::HashSet<String> = sqlx::query_scalar(
        "SELECT k FROM UNNEST($1::text[]) AS k WHERE pg_try_advisory_xact_lock(hashtextextended(k, 11))",
    )
    .bind(&lock_keys)
    .fetch_all(&mut *conn)
    .await?
    .into_iter()
    .collect();
    let customer_keys: Vec<(String, String)> = candidates
        .into_iter()
        .zip(lock_keys)
        .filter(|(_, k)| locked.contains(k))
        .map(|(c, _)| c)
        .collect();
    if customer_keys.is_empty() {
        return Ok((0, last));
    }
    let (ts, cs): (Vec<&str>, Vec<&str>) = customer_keys
        .iter()
        .map(|(t, c)| (t.as_str(), c.as_str()))
        .unzip();
    let sql = format!(
        "SELECT {}, i.ctid::text AS row_id FROM scheduler.invoices i JOIN UNNEST($2::text[], $3::text[]) AS k(tenant, customer_id) \
         USING (tenant, customer_id) WHERE i.next_at <= $1 AND {} \
         ORDER BY i.next_at, i.tenant, i.customer_id, i.invoice_id",
        model::INVOICE_COLUMNS.replace(
            "tenant, invoice_id, customer_id,",
            "i.tenant, i.invoice_id, i.customer_id,"
        ),
        model::NOT_HALTED
    );
    let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(now)
        .bind(&ts)
        .bind(&cs)
        .fetch_all(&mut *conn)
        .await?;
    let mut invoices = Vec::with_capacity(rows.len());
    let mut row_ids = Vec::with_capacity(rows.len());
    for r in &rows {
        invoices.push(Invoice::from_row(r)?);
        row_ids.push(r.try_get::<String, _>("row_id")?);
    }
    load_payments(conn, &ts, &cs, &mut invoices).await?;
    let mut tenant_ids: Vec<String> = invoices.iter().map(|i| i.tenant.clone()).collect();
    tenant_ids.sort();
    tenant_ids.dedup();
    let tenants = model::load_tenants(conn, &tenant_ids).await?;
    let customers = model::load_customers(conn, &customer_keys).await?;
    let mut ledgers = load_ledgers(conn, &customer_keys, now - TimeDelta::days(8)).await?;
    let mut out = Output::default();
    // Plans made in this claim. An invoice's plan depends only on its policy version,
    // due date, and debtor's time zone and risk class, and invoices that fall due
    // together mostly share a few of those. Keyed by the policy's address, which is
    // unique while the entry holds the policy.
    let mut plans: HashMap<PlanKey, (Arc<Policy>, model::Planned)> = HashMap::new();
    for inv in &mut invoices {
        let Some(tenant) = tenants.get(&inv.tenant) else {
            continue;
        };
        let Some(policy) = s
            .policies
            .get(conn, &inv.tenant, &inv.policy, inv.policy_version)
            .await?
        else {
            tracing::warn!(tenant = %inv.tenant, policy = %inv.policy, "invoice's policy version is missing; not fired");
            inv.next_at = None;
            continue;
        };
        let ckey = (inv.tenant.clone(), inv.customer_id.clone());
        let customer = customers.get(&ckey);
        let (tz, risk) = model::plan_inputs(&policy, customer, tenant);
        let key = (Arc::as_ptr(&policy) as usize, inv.state.due_date, tz, risk);
        let (_, planned) = plans.entry(key).or_insert_with(|| {
            let planned = model::plan_with(&policy, inv.state.due_date, tz, risk);
            (policy.clone(), planned)
        });
        let ledger = ledgers.entry(ckey).or_default();
        decide(
            inv, tenant, &policy, planned, customer, ledger, now, &mut out,
        )?;
    }
    for ((outcome, reason), n) in out.steps.drain() {
        metrics::counter!(
            regua_platform::metrics::SCHEDULER_STEPS,
            "outcome" => outcome,
            "reason" => reason,
        )
        .increment(n);
    }
    let rows: Vec<(&Invoice, &str)> = invoices
        .iter()
        .zip(row_ids.iter().map(String::as_str))
        .collect();
    model::save_progress(conn, &rows).await?;
    model::write_log(conn, &out.log).await?;
    write_contacts(conn, &out.contacts).await?;
    let mut messages = Vec::with_capacity(out.commands.len() + out.events.len());
    for (cmd, traceparent) in &out.commands {
        messages.push(OutboxMessage {
            id: DispatchCommand::message_id(&cmd.command_id),
            subject: subjects::dispatch(&cmd.tenant, cmd.channel),
            payload: serde_json::to_vec(cmd)?,
            traceparent: traceparent.clone(),
        });
    }
    messages.append(&mut out.events);
    OUTBOX.enqueue(conn, &messages).await?;
    Ok((invoices.len(), last))
}

/// Decides one claimed invoice, planned as `planned`.
#[allow(clippy::too_many_arguments)]
fn decide(
    inv: &mut Invoice,
    tenant: &Tenant,
    policy: &Policy,
    planned: &model::Planned,
    customer: Option<&Customer>,
    ledger: &mut Ledger,
    real_now: DateTime<Utc>,
    out: &mut Output,
) -> Result<(), SchedulerError> {
    let now = tenant.now(real_now);
    let cal = &planned.cal;
    let span = tracing::info_span!(
        parent: None,
        "fire",
        otel.name = "fire regua step",
        otel.kind = "internal",
        regua.tenant = %inv.tenant,
        regua.invoice_id = %inv.invoice_id,
        regua.step = tracing::field::Empty,
        regua.channel = tracing::field::Empty,
        regua.outcome = tracing::field::Empty,
    );
    if let Some(tp) = &inv.traceparent {
        telemetry::link_to_traceparent(&span, tp);
    }
    let _enter = span.enter();
    if inv.status == Status::Paid && inv.thanks_pending {
        return thank(inv, tenant, policy, customer, planned, cal, now, out, &span);
    }
    if inv.status != Status::Open {
        inv.next_at = None;
        return Ok(());
    }
    let subject = Subject {
        policy,
        cal,
        tz: planned.tz,
        plan: &planned.plan,
    };
    let reachable = |n: &Notify| customer.is_some_and(|c| !c.channels_for(n).is_empty());
    let fired = schedule::fire(&subject, inv.progress, now, ledger, &reachable);
    let mut command_id = None;
    let mut channel = None;
    if let Some(i) = fired.send
        && let (Action::Notify(n), Some(c)) = (policy.steps[i].action(), customer)
    {
        let step = &policy.steps[i].name;
        let key = (
            inv.tenant.clone(),
            inv.customer_id.clone(),
            n.template.clone(),
            now,
        );
        let line = command_invoice(
            inv,
            &planned.plan,
            now.with_timezone(&planned.tz).date_naive(),
        );
        // The message this invoice joins, unless it is full: then the invoice starts
        // another message of the same contact (counted once against the caps).
        let joins = out.merge.get(&key).copied().filter(|&k| out.fits(k, &line));
        if let Some(k) = joins {
            let (cmd, _) = &mut out.commands[k];
            cmd.invoices.push(line);
            command_id = Some(cmd.command_id.clone());
            channel = Some(cmd.channel.as_str());
        } else if out.merge.contains_key(&key) || !ledger.same_message(now, &n.template) {
            let continues = out.merge.contains_key(&key);
            let usable = c.channels_for(n);
            if let Some((&first, rest)) = usable.split_first() {
                let id = DispatchCommand::id_for(
                    &inv.tenant,
                    &inv.invoice_id,
                    step,
                    u32::try_from(inv.policy_version).unwrap_or(0),
                    u32::try_from(inv.refires).unwrap_or(0),
                );
                let cmd = command(
                    inv,
                    tenant,
                    c,
                    policy,
                    Message {
                        id: id.clone(),
                        kind: CommandKind::Step,
                        step,
                        template: &n.template,
                        first,
                        rest,
                        now,
                        not_after: window_close(policy, cal, planned.tz, now),
                    },
                    line,
                );
                span.record("regua.step", step.as_str());
                span.record("regua.channel", first.as_str());
                channel = Some(first.as_str());
                command_id = Some(id.clone());
                out.merge.insert(key, out.commands.len());
                out.commands.push((cmd, telemetry::traceparent(&span)));
                if !continues {
                    ledger.push(Contact {
                        at: now,
                        template: n.template.clone(),
                    });
                    out.contacts.push((
                        inv.tenant.clone(),
                        inv.customer_id.clone(),
                        now,
                        n.template.clone(),
                        id,
                    ));
                }
            }
        }
    }
    for e in &fired.events {
        let (state, reason) = (e.state.name(), e.state.reason());
        *out.steps.entry((state, e.state.reason_code())).or_default() += 1;
        if !matches!(e.state, StepState::Deferred { .. }) {
            let late = (now - e.planned_at).to_std().unwrap_or_default();
            metrics::histogram!(regua_platform::metrics::SCHEDULER_FIRE_LATENESS)
                .record(late.as_secs_f64());
        }
        let sent = matches!(e.state, StepState::Sent { .. });
        if let StepState::Escalated { level } = &e.state {
            let data = DomainEvent::InvoiceEscalated(InvoiceEscalated {
                invoice_id: inv.invoice_id.clone(),
                customer_id: inv.customer_id.clone(),
                level: level.clone(),
                step: e.name.clone(),
                policy: inv.policy.clone(),
                policy_version: u32::try_from(inv.policy_version).unwrap_or(0),
            });
            let corr = format!("{}:{}", inv.invoice_id, e.name);
            out.events.push(event_message(
                now,
                &inv.tenant,
                &data,
                &corr,
                &corr,
                telemetry::traceparent(&span),
            )?);
        }
        span.record("regua.outcome", state);
        out.log.push(LogRow {
            tenant: inv.tenant.clone(),
            invoice_id: inv.invoice_id.clone(),
            step: e.name.clone(),
            policy_version: inv.policy_version,
            state,
            reason,
            planned_at: Some(e.planned_at),
            at: now,
            channel: if sent { channel } else { None },
            command_id: if sent { command_id.clone() } else { None },
            trace_id: telemetry::trace_id(&span),
        });
    }
    inv.progress = fired.progress;
    inv.next_at = inv.progress.next_at(&planned.plan);
    if inv.next_at.is_none() {
        inv.status = Status::Done;
    }
    Ok(())
}

/// The policy's `on_paid` thank-you: sent once, inside the window, not counted against
/// the collection caps.
#[allow(clippy::too_many_arguments)]
fn thank(
    inv: &mut Invoice,
    tenant: &Tenant,
    policy: &Policy,
    customer: Option<&Customer>,
    planned: &model::Planned,
    cal: &regua_domain::calendar::Calendar,
    now: DateTime<Utc>,
    out: &mut Output,
    span: &tracing::Span,
) -> Result<(), SchedulerError> {
    let (Some(n), Some(c)) = (&policy.on_paid, customer) else {
        inv.thanks_pending = false;
        inv.next_at = None;
        return Ok(());
    };
    let tz = planned.tz;
    if !policy.send_window.contains(now, tz, cal) {
        inv.next_at = Some(policy.send_window.next_open(now, tz, cal));
        return Ok(());
    }
    inv.thanks_pending = false;
    inv.next_at = None;
    let usable = c.channels_for(n);
    let version = u32::try_from(inv.policy_version).unwrap_or(0);
    let (state, reason, channel, id) = match usable.split_first() {
        Some((&first, rest)) => {
            let refires = u32::try_from(inv.refires).unwrap_or(0);
            let id = DispatchCommand::id_for(
                &inv.tenant,
                &inv.invoice_id,
                crate::events::THANKS_STEP,
                version,
                refires,
            );
            let cmd = command(
                inv,
                tenant,
                c,
                policy,
                Message {
                    id: id.clone(),
                    kind: CommandKind::Thanks,
                    step: crate::events::THANKS_STEP,
                    template: &n.template,
                    first,
                    rest,
                    now,
                    not_after: window_close(policy, cal, tz, now),
                },
                command_invoice(
                    inv,
                    &planned.plan,
                    now.with_timezone(&planned.tz).date_naive(),
                ),
            );
            span.record("regua.step", crate::events::THANKS_STEP);
            span.record("regua.channel", first.as_str());
            out.commands.push((cmd, telemetry::traceparent(span)));
            ("sent", None, Some(first.as_str()), Some(id))
        }
        None => ("skipped", Some("no_usable_channel".to_owned()), None, None),
    };
    let reason_code = if state == "sent" {
        "thanks"
    } else {
        "no_usable_channel"
    };
    *out.steps.entry((state, reason_code)).or_default() += 1;
    out.log.push(LogRow {
        tenant: inv.tenant.clone(),
        invoice_id: inv.invoice_id.clone(),
        step: crate::events::THANKS_STEP.into(),
        policy_version: inv.policy_version,
        state,
        reason,
        planned_at: None,
        at: now,
        channel,
        command_id: id,
        trace_id: telemetry::trace_id(span),
    });
    Ok(())
}

/// What varies between the messages [`command`] builds.
struct Message<'a> {
    id: String,
    kind: CommandKind,
    step: &'a str,
    template: &'a str,
    first: Channel,
    rest: &'a [Channel],
    now: DateTime<Utc>,
    not_after: DateTime<Utc>,
}

/// The dispatch command of one message about `inv` (more invoices may join it).
fn command(
    inv: &Invoice,
    tenant: &Tenant,
    c: &Customer,
    policy: &Policy,
    m: Message<'_>,
    line: CommandInvoice,
) -> DispatchCommand {
    DispatchCommand {
        command_id: m.id,
        kind: m.kind,
        tenant: inv.tenant.clone(),
        creditor: tenant.creditor.clone(),
        recipient: recipient(c),
        channel: m.first.into(),
        fallback: m.rest.iter().map(|&c| c.into()).collect(),
        template: m.template.to_owned(),
        step: m.step.to_owned(),
        policy: inv.policy.clone(),
        policy_version: u32::try_from(inv.policy_version).unwrap_or(0),
        invoices: vec![line],
        scheduled_for: m.now,
        not_after: m.not_after,
        test_clock: tenant.test_clock,
        sms: policy.sms.into(),
        templates: policy
            .texts(m.template, &c.state.locale)
            .cloned()
            .map(Into::into),
    }
}

fn recipient(c: &Customer) -> Recipient {
    Recipient {
        customer_id: c.state.customer_id.clone(),
        name: c.state.name.clone(),
        email: c.state.email.clone(),
        phone: c.state.phone.clone(),
        whatsapp_opt_in: c.state.whatsapp_opt_in,
        locale: c.state.locale.clone(),
        timezone: c.state.timezone.clone(),
    }
}

/// Fills each invoice's payments (reported by reconciliation), for the amounts its
/// messages state.
async fn load_payments(
    conn: &mut PgConnection,
    tenants: &[&str],
    customers: &[&str],
    invoices: &mut [Invoice],
) -> Result<(), SchedulerError> {
    let rows: Vec<(String, String, NaiveDate, i64, bool)> = sqlx::query_as(
        "SELECT p.tenant, p.invoice_id, p.paid_on, p.amount_cents, p.settles FROM scheduler.payments p \
         JOIN UNNEST($1::text[], $2::text[]) AS k(tenant, customer_id) USING (tenant, customer_id) \
         ORDER BY p.paid_on",
    )
    .bind(tenants)
    .bind(customers)
    .fetch_all(conn)
    .await?;
    if rows.is_empty() {
        return Ok(());
    }
    let mut by_invoice: HashMap<(String, String), Vec<model::Paid>> = HashMap::new();
    for (t, i, on, amount_cents, settles) in rows {
        by_invoice.entry((t, i)).or_default().push(model::Paid {
            on,
            amount_cents,
            settles,
        });
    }
    for inv in invoices {
        if let Some(p) = by_invoice.remove(&(inv.tenant.clone(), inv.invoice_id.clone())) {
            inv.paid = p;
        }
    }
    Ok(())
}

/// What `inv` owes on `on` (fine and interest by [`charges`], partial payments out);
/// for a paid invoice's thank-you, what was paid.
fn amount_due(inv: &Invoice, plan: &schedule::BasePlan, on: NaiveDate) -> Option<AmountDue> {
    let fee = inv.state.late_fee.unwrap_or_default();
    let terms = charges::Terms {
        principal_cents: inv.state.amount_cents,
        effective_due_date: plan.effective_due_date,
        fine_bps: fee.fine_bps,
        monthly_interest_bps: fee.monthly_interest_bps,
    };
    if let Some(&model::Paid {
        on: paid_on,
        amount_cents: total,
        ..
    }) = inv.paid.iter().find(|p| p.settles)
    {
        return Some(AmountDue {
            on: paid_on,
            principal_cents: inv.state.amount_cents,
            fine_cents: 0,
            interest_cents: 0,
            paid_cents: total,
            balance_cents: 0,
            days_late: u32::try_from((paid_on - plan.effective_due_date).num_days().max(0))
                .unwrap_or(0),
        });
    }
    let paid: Vec<charges::Payment> = inv
        .paid
        .iter()
        .map(|p| charges::Payment {
            on: p.on,
            amount_cents: p.amount_cents,
        })
        .collect();
    charges::statement(&terms, &paid, on)
        .ok()
        .map(|s| s.due().into())
}

fn command_invoice(inv: &Invoice, plan: &schedule::BasePlan, on: NaiveDate) -> CommandInvoice {
    CommandInvoice {
        invoice_id: inv.invoice_id.clone(),
        amount_cents: inv.state.amount_cents,
        currency: inv.state.currency.clone(),
        due_date: inv.state.due_date,
        effective_due_date: plan.effective_due_date,
        description: inv.state.description.clone(),
        payment: inv.state.payment.clone(),
        late_fee: inv.state.late_fee,
        due: amount_due(inv, plan, on),
    }
}

/// When the window that `now` is in closes (that local day's closing time).
fn window_close(
    policy: &Policy,
    cal: &regua_domain::calendar::Calendar,
    tz: chrono_tz::Tz,
    now: DateTime<Utc>,
) -> DateTime<Utc> {
    let day = now.with_timezone(&tz).date_naive();
    policy
        .send_window
        .hours(day, cal)
        .map_or(now, |h| local_to_utc(tz, day.and_time(h.to)))
}

async fn load_ledgers(
    conn: &mut PgConnection,
    keys: &[(String, String)],
    since: DateTime<Utc>,
) -> Result<HashMap<(String, String), Ledger>, sqlx::Error> {
    let (tenants, ids): (Vec<&str>, Vec<&str>) =
        keys.iter().map(|(t, c)| (t.as_str(), c.as_str())).unzip();
    // One index probe per customer, whatever the statistics say: as a plain join, a
    // plan made while the ledger was small (a fresh table, or one not analyzed since it
    // grew) sorts and merges the whole ledger, a cost that grows with the ledger on
    // every claim. `OFFSET 0` keeps the planner from flattening the lateral subquery
    // back into that join.
    let rows = sqlx::query(
        "SELECT k.tenant, k.customer_id, c.at, c.template FROM UNNEST($1::text[], $2::text[]) AS k(tenant, customer_id) \
         CROSS JOIN LATERAL (SELECT c.at, c.template FROM scheduler.contacts c \
         WHERE c.tenant = k.tenant AND c.customer_id = k.customer_id AND c.at > $3 OFFSET 0) AS c",
    )
    .bind(&tenants)
    .bind(&ids)
    .bind(since)
    .fetch_all(conn)
    .await?;
    let mut contacts: HashMap<(String, String), Vec<Contact>> = HashMap::new();
    for r in rows {
        contacts
            .entry((r.try_get("tenant")?, r.try_get("customer_id")?))
            .or_default()
            .push(Contact {
                at: r.try_get("at")?,
                template: r.try_get("template")?,
            });
    }
    Ok(contacts
        .into_iter()
        .map(|(k, v)| (k, Ledger::new(v)))
        .collect())
}

async fn write_contacts(
    conn: &mut PgConnection,
    rows: &[(String, String, DateTime<Utc>, String, String)],
) -> Result<(), sqlx::Error> {
    if rows.is_empty() {
        return Ok(());
    }
    let mut t = Vec::new();
    let mut c = Vec::new();
    let mut at = Vec::new();
    let mut tpl = Vec::new();
    let mut id = Vec::new();
    for r in rows {
        t.push(r.0.as_str());
        c.push(r.1.as_str());
        at.push(r.2);
        tpl.push(r.3.as_str());
        id.push(r.4.as_str());
    }
    sqlx::query(
        "INSERT INTO scheduler.contacts (tenant, customer_id, at, template, command_id) \
         SELECT * FROM UNNEST($1::text[], $2::text[], $3::timestamptz[], $4::text[], $5::text[])",
    )
    .bind(&t)
    .bind(&c)
    .bind(&at)
    .bind(&tpl)
    .bind(&id)
    .execute(conn)
    .await?;
    Ok(())
}
