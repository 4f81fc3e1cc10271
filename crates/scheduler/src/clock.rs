//! Test clocks, like Stripe's: a tenant created with `test_clock: true` lives on
//! simulated time. An advance moves its clock to the earliest due step, fires
//! everything due at that instant, and repeats until the target, so steps fire in time
//! order with windows, caps and grace exactly as real time would apply them. The clock
//! never moves back.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer;
use chrono::{DateTime, Utc};
use regua_contract::subjects;
use serde::Serialize;
use sqlx::{PgPool, Row};
use tokio_util::sync::CancellationToken;

use crate::fire::{self, Scope};
use crate::model;
use crate::{OUTBOX, Scheduler, SchedulerError};
use regua_contract::DomainEvent;
use regua_contract::events::TenantClockAdvanced;
use regua_platform::outbox::event_message;
use regua_platform::shutdown::Backoff;

/// `GET /v1/tenants/{tenant}/clock`
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ClockStatus {
    /// `advancing` until every step due up to the target has fired and its commands
    /// are published; then `ready`.
    pub status: &'static str,
    pub now: DateTime<Utc>,
    pub target: DateTime<Utc>,
}

/// Why an advance was refused.
#[derive(Debug, thiserror::Error)]
pub enum AdvanceError {
    #[error("tenant not found")]
    NotFound,
    #[error("tenant is not on a test clock")]
    NotTestClock,
    #[error("the clock never moves back: it is at {now}, asked for {to}")]
    Backwards {
        now: DateTime<Utc>,
        to: DateTime<Utc>,
    },
    #[error(transparent)]
    Scheduler(#[from] SchedulerError),
}

impl From<sqlx::Error> for AdvanceError {
    fn from(e: sqlx::Error) -> Self {
        AdvanceError::Scheduler(SchedulerError::Db(e))
    }
}

/// Asks the tenant's clock to move to `to`; the driver does the moving.
pub async fn advance(
    pool: &PgPool,
    tenant: &str,
    to: DateTime<Utc>,
) -> Result<ClockStatus, AdvanceError> {
    let row = sqlx::query("SELECT test_clock, clock_now, clock_target FROM scheduler.tenants WHERE id = $1 FOR UPDATE")
        .bind(tenant)
        .fetch_optional(pool)
        .await?;
    let Some(row) = row else {
        return Err(AdvanceError::NotFound);
    };
    if !row.try_get::<bool, _>("test_clock")? {
        return Err(AdvanceError::NotTestClock);
    }
    let now: Option<DateTime<Utc>> = row.try_get("clock_now")?;
    let target: Option<DateTime<Utc>> = row.try_get("clock_target")?;
    let floor = target.max(now).unwrap_or(to);
    if to < floor {
        return Err(AdvanceError::Backwards { now: floor, to });
    }
    sqlx::query("UPDATE scheduler.tenants SET clock_target = $2 WHERE id = $1")
        .bind(tenant)
        .bind(to)
        .execute(pool)
        .await?;
    Ok(ClockStatus {
        status: "advancing",
        now: now.unwrap_or(to),
        target: to,
    })
}

/// The tenant's clock, or `None` when the tenant is unknown or on real time.
pub async fn status(pool: &PgPool, tenant: &str) -> Result<Option<ClockStatus>, SchedulerError> {
    let row = sqlx::query(
        "SELECT test_clock, clock_now, clock_target FROM scheduler.tenants WHERE id = $1",
    )
    .bind(tenant)
    .fetch_optional(pool)
    .await?;
    let Some(row) = row else { return Ok(None) };
    if !row.try_get::<bool, _>("test_clock")? {
        return Ok(None);
    }
    let (Some(now), Some(target)) = (
        row.try_get::<Option<DateTime<Utc>>, _>("clock_now")?,
        row.try_get::<Option<DateTime<Utc>>, _>("clock_target")?,
    ) else {
        return Ok(None);
    };
    let [evt, cmd] = subjects::tenant_output_prefixes(tenant);
    let unpublished: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM scheduler.outbox o, UNNEST(o.subjects) AS s WHERE starts_with(s, $1) OR starts_with(s, $2))",
    )
    .bind(evt)
    .bind(cmd)
    .fetch_one(pool)
    .await?;
    let status = if now < target || unpublished {
        "advancing"
    } else {
        "ready"
    };
    Ok(Some(ClockStatus {
        status,
        now,
        target,
    }))
}

/// Drives advancing test clocks until `cancel`. It waits while the scheduler's event
/// consumer has unapplied events, so invoices sent before an advance are planned first.
pub async fn run(s: Arc<Scheduler>, events: consumer::PullConsumer, cancel: CancellationToken) {
    let mut backoff = Backoff::new(Duration::from_millis(200));
    let mut events = events;
    while !cancel.is_cancelled() {
        match drive(&s, &mut events, &cancel).await {
            Ok(busy) => {
                backoff.reset();
                if busy {
                    continue;
                }
                tokio::select! {
                    () = cancel.cancelled() => break,
                    () = tokio::time::sleep(Duration::from_millis(100)) => {}
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "advancing test clocks failed; retrying");
                if !backoff.wait(&cancel).await {
                    break;
                }
            }
        }
    }
}

/// One pass over advancing tenants; true when there was work.
async fn drive(
    s: &Scheduler,
    events: &mut consumer::PullConsumer,
    cancel: &CancellationToken,
) -> Result<bool, SchedulerError> {
    let tenants: Vec<String> = sqlx::query_scalar(
        "SELECT id FROM scheduler.tenants WHERE test_clock AND clock_target > clock_now ORDER BY id",
    )
    .fetch_all(&s.pool)
    .await?;
    if tenants.is_empty() {
        return Ok(false);
    }
    match events.info().await {
        Ok(info) if info.num_pending > 0 || info.num_ack_pending > 0 => return Ok(false),
        Ok(_) => {}
        Err(e) => {
            tracing::debug!(error = %e, "consumer info unavailable; advancing anyway");
        }
    }
    for tenant in tenants {
        while !cancel.is_cancelled() {
            if !step(s, &tenant).await? {
                break;
            }
        }
    }
    Ok(true)
}

/// Moves one tenant's clock to its next due instant (or the target), then fires
/// everything due at that instant with the configured number of concurrent claims.
/// False when the tenant reached its target.
async fn step(s: &Scheduler, tenant: &str) -> Result<bool, SchedulerError> {
    let Some(at) = move_clock(s, tenant).await? else {
        return Ok(false);
    };
    // Claims at one instant are independent (each over its own share of customers,
    // each customer try-locked), so they run side by side; the clock moves on only when none is left.
    let claims = fire::Part::all(s.config.scheduler_workers).map(|part| async move {
        let mut fired = 0;
        let mut claimer = fire::Claimer::new(part);
        loop {
            let n = claimer.claim(s, Scope::TestClock(tenant), at).await?;
            if n == 0 {
                return Ok::<usize, SchedulerError>(fired);
            }
            fired += n;
        }
    });
    for r in futures::future::join_all(claims).await {
        r?;
    }
    Ok(true)
}

/// In one transaction under a per-tenant lock: reads the clock and the earliest due
/// step and moves the clock there (or to the target when nothing is due before it).
/// Returns the instant to fire at, or `None` when the target is reached (or another
/// replica holds the lock).
async fn move_clock(s: &Scheduler, tenant: &str) -> Result<Option<DateTime<Utc>>, SchedulerError> {
    let mut tx = s.pool.begin().await?;
    let locked: bool =
        sqlx::query_scalar("SELECT pg_try_advisory_xact_lock(hashtextextended($1, 11))")
            .bind(format!("clock/{tenant}"))
            .fetch_one(&mut *tx)
            .await?;
    if !locked {
        return Ok(None);
    }
    let row = sqlx::query("SELECT clock_now, clock_target FROM scheduler.tenants WHERE id = $1")
        .bind(tenant)
        .fetch_one(&mut *tx)
        .await?;
    let (Some(now), Some(target)) = (
        row.try_get::<Option<DateTime<Utc>>, _>("clock_now")?,
        row.try_get::<Option<DateTime<Utc>>, _>("clock_target")?,
    ) else {
        return Ok(None);
    };
    let next: Option<DateTime<Utc>> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT MIN(next_at) FROM scheduler.invoices i WHERE tenant = $1 AND next_at IS NOT NULL AND {}",
        model::NOT_HALTED
    )))
    .bind(tenant)
    .fetch_one(&mut *tx)
    .await?;
    let (at, due) = match next {
        Some(n) if n <= target => (n.max(now), true),
        _ => (target.max(now), false),
    };
    if at > now {
        sqlx::query("UPDATE scheduler.tenants SET clock_now = $2 WHERE id = $1")
            .bind(tenant)
            .bind(at)
            .execute(&mut *tx)
            .await?;
        // Reconciliation's "today" for this tenant (fine and interest) follows it.
        let cause = format!("clock:{tenant}:{}", at.timestamp_millis());
        let event = event_message(
            s.clock.now(),
            tenant,
            &DomainEvent::TenantClockAdvanced(TenantClockAdvanced { now: at }),
            &cause,
            &cause,
            None,
        )?;
        OUTBOX.enqueue(&mut tx, &[event]).await?;
    }
    tx.commit().await?;
    Ok(due.then_some(at))
}
