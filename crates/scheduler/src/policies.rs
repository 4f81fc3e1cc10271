//! Versioned policies. Every write is a new version; an invoice keeps the version it
//! started with unless the write asks `migrate_open`, which re-plans open invoices
//! without doubling a step already decided and without losing one.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use chrono::{DateTime, Utc};
use regua_domain::policy::{PADRAO, PADRAO_YAML, Policy, padrao};
use regua_domain::schedule::Progress;
use serde::Serialize;
use sqlx::{PgConnection, Row};

use crate::SchedulerError;
use crate::fire::{LockMode, schedule_lock, take_locks};
use crate::model::{self, Invoice, Status};

/// Parsed policy versions; a version never changes once written.
#[derive(Default)]
pub struct Cache {
    versions: RwLock<HashMap<(String, String, i32), Arc<Policy>>>,
}

fn parse_stored(
    tenant: &str,
    name: &str,
    version: i32,
    body: serde_json::Value,
) -> Result<Policy, SchedulerError> {
    Policy::from_value(body).map_err(|issues| SchedulerError::BadPolicy {
        tenant: tenant.to_owned(),
        name: name.to_owned(),
        version,
        reason: issues
            .first()
            .map(|i| format!("{}: {}", i.field, i.message))
            .unwrap_or_default(),
    })
}

/// A policy version as stored.
#[derive(Debug, Clone, Serialize)]
pub struct Version {
    pub name: String,
    pub version: i32,
    pub created_at: DateTime<Utc>,
    pub migrate_open: bool,
    #[serde(skip)]
    pub policy: Arc<Policy>,
    /// The document as written (YAML or JSON).
    #[serde(skip)]
    pub source: String,
}

impl Cache {
    /// The version of `name`.
    pub async fn get(
        &self,
        conn: &mut PgConnection,
        tenant: &str,
        name: &str,
        version: i32,
    ) -> Result<Option<Arc<Policy>>, SchedulerError> {
        let key = (tenant.to_owned(), name.to_owned(), version);
        if let Some(p) = self.versions.read().ok().and_then(|m| m.get(&key).cloned()) {
            return Ok(Some(p));
        }
        let body: Option<serde_json::Value> = sqlx::query_scalar(
            "SELECT body FROM scheduler.policies WHERE tenant = $1 AND name = $2 AND version = $3",
        )
        .bind(tenant)
        .bind(name)
        .bind(version)
        .fetch_optional(conn)
        .await?;
        let Some(body) = body else { return Ok(None) };
        let policy = Arc::new(parse_stored(tenant, name, version, body)?);
        if let Ok(mut m) = self.versions.write() {
            m.insert(key, Arc::clone(&policy));
        }
        Ok(Some(policy))
    }

    /// A version already in the cache.
    pub fn cached(&self, tenant: &str, name: &str, version: i32) -> Option<Arc<Policy>> {
        let key = (tenant.to_owned(), name.to_owned(), version);
        self.versions.read().ok().and_then(|m| m.get(&key).cloned())
    }

    /// The latest version of every policy of `tenant`, by name.
    pub async fn current(
        &self,
        conn: &mut PgConnection,
        tenant: &str,
    ) -> Result<Vec<Version>, SchedulerError> {
        let rows = sqlx::query(
            "SELECT DISTINCT ON (name) name, version, body, source, migrate_open, created_at FROM scheduler.policies \
             WHERE tenant = $1 ORDER BY name, version DESC",
        )
        .bind(tenant)
        .fetch_all(conn)
        .await?;
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            let name: String = r.try_get("name")?;
            let version: i32 = r.try_get("version")?;
            let key = (tenant.to_owned(), name.clone(), version);
            let cached = self.versions.read().ok().and_then(|m| m.get(&key).cloned());
            let policy = match cached {
                Some(p) => p,
                None => {
                    let p = Arc::new(parse_stored(tenant, &name, version, r.try_get("body")?)?);
                    if let Ok(mut m) = self.versions.write() {
                        m.insert(key, Arc::clone(&p));
                    }
                    p
                }
            };
            out.push(Version {
                name,
                version,
                created_at: r.try_get("created_at")?,
                migrate_open: r.try_get("migrate_open")?,
                policy,
                source: r.try_get("source")?,
            });
        }
        Ok(out)
    }
}

/// One version of one policy, with its source.
pub async fn version(
    conn: &mut PgConnection,
    tenant: &str,
    name: &str,
    version: Option<i32>,
) -> Result<Option<(Version, serde_json::Value)>, SchedulerError> {
    let row = sqlx::query(
        "SELECT name, version, body, source, migrate_open, created_at FROM scheduler.policies \
         WHERE tenant = $1 AND name = $2 AND ($3::int IS NULL OR version = $3) ORDER BY version DESC LIMIT 1",
    )
    .bind(tenant)
    .bind(name)
    .bind(version)
    .fetch_optional(conn)
    .await?;
    let Some(r) = row else { return Ok(None) };
    let body: serde_json::Value = r.try_get("body")?;
    let v: i32 = r.try_get("version")?;
    let policy = Arc::new(parse_stored(tenant, name, v, body.clone())?);
    Ok(Some((
        Version {
            name: r.try_get("name")?,
            version: v,
            created_at: r.try_get("created_at")?,
            migrate_open: r.try_get("migrate_open")?,
            policy,
            source: r.try_get("source")?,
        },
        body,
    )))
}

/// Picks the policy for an invoice: the matching non-default policy with the highest
/// priority (then name), else a default one, else the built-in `padrao`.
pub fn select(current: &[Version], matches: impl Fn(&Policy) -> bool) -> Option<&Version> {
    let mut specific: Vec<&Version> = current
        .iter()
        .filter(|v| !v.policy.applies_to.default && matches(&v.policy))
        .collect();
    specific.sort_by(|a, b| {
        b.policy
            .priority
            .cmp(&a.policy.priority)
            .then(a.name.cmp(&b.name))
    });
    if let Some(v) = specific.first() {
        return Some(v);
    }
    let mut defaults: Vec<&Version> = current
        .iter()
        .filter(|v| v.policy.applies_to.default)
        .collect();
    defaults.sort_by(|a, b| {
        b.policy
            .priority
            .cmp(&a.policy.priority)
            .then(a.name.cmp(&b.name))
    });
    defaults.first().copied()
}

/// Installs `padrao` v1 for a new tenant (nothing when the tenant has it already).
pub async fn install_starter(
    conn: &mut PgConnection,
    tenant: &str,
    now: DateTime<Utc>,
) -> Result<(), SchedulerError> {
    let body = serde_json::to_value(padrao())?;
    sqlx::query(
        "INSERT INTO scheduler.policies (tenant, name, version, body, source, created_at) \
         VALUES ($1, $2, 1, $3, $4, $5) ON CONFLICT DO NOTHING",
    )
    .bind(tenant)
    .bind(PADRAO)
    .bind(body)
    .bind(PADRAO_YAML)
    .bind(now)
    .execute(conn)
    .await?;
    Ok(())
}

/// What writing a policy did.
#[derive(Debug, Clone, Serialize)]
pub struct Written {
    pub name: String,
    pub version: i32,
    pub migrate_open: bool,
    /// Open invoices moved to this version.
    pub migrated: usize,
}

/// Writes a new version of `name` and, with `migrate_open`, re-plans the open invoices
/// on that policy. Runs in the caller's transaction.
pub async fn write(
    conn: &mut PgConnection,
    tenant: &str,
    name: &str,
    policy: &Policy,
    source: &str,
    migrate_open: bool,
    now: DateTime<Utc>,
) -> Result<Written, SchedulerError> {
    take_locks(
        conn,
        vec![format!("policy/{tenant}/{name}")],
        LockMode::Exclusive,
    )
    .await?;
    let version: i32 = sqlx::query_scalar(
        "SELECT COALESCE(MAX(version), 0) + 1 FROM scheduler.policies WHERE tenant = $1 AND name = $2",
    )
    .bind(tenant)
    .bind(name)
    .fetch_one(&mut *conn)
    .await?;
    sqlx::query(
        "INSERT INTO scheduler.policies (tenant, name, version, body, source, migrate_open, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(tenant)
    .bind(name)
    .bind(version)
    .bind(serde_json::to_value(policy)?)
    .bind(source)
    .bind(migrate_open)
    .bind(now)
    .execute(&mut *conn)
    .await?;
    let migrated = if migrate_open {
        migrate(conn, tenant, name, version, policy).await?
    } else {
        0
    };
    Ok(Written {
        name: name.to_owned(),
        version,
        migrate_open,
        migrated,
    })
}

/// Moves the open invoices of `name` to `version`: each continues at the first step of
/// the new plan that it has not decided yet and that is not before its last decision.
async fn migrate(
    conn: &mut PgConnection,
    tenant: &str,
    name: &str,
    version: i32,
    policy: &Policy,
) -> Result<usize, SchedulerError> {
    // Every other writer of invoices (firing claims, the in-order consumer) holds this
    // lock shared while it reads and writes them: taking it exclusively waits for those
    // in flight and holds off new ones until this transaction ends, so the invoices
    // need no row locks.
    take_locks(conn, vec![schedule_lock(tenant)], LockMode::Exclusive).await?;
    let sql = format!(
        "SELECT {} FROM scheduler.invoices WHERE tenant = $1 AND policy = $2 AND status = 'open'",
        model::INVOICE_COLUMNS
    );
    let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(tenant)
        .bind(name)
        .fetch_all(&mut *conn)
        .await?;
    let mut invoices = Vec::with_capacity(rows.len());
    for r in &rows {
        invoices.push(Invoice::from_row(r)?);
    }
    if invoices.is_empty() {
        return Ok(0);
    }
    let ids: Vec<String> = invoices.iter().map(|i| i.invoice_id.clone()).collect();
    let decided = sqlx::query(
        "SELECT invoice_id, step, at FROM scheduler.step_log WHERE tenant = $1 AND invoice_id = ANY($2) \
         AND state <> 'deferred' ORDER BY seq",
    )
    .bind(tenant)
    .bind(&ids)
    .fetch_all(&mut *conn)
    .await?;
    let mut history: HashMap<String, (Vec<String>, Option<DateTime<Utc>>)> = HashMap::new();
    for r in decided {
        let e = history.entry(r.try_get("invoice_id")?).or_default();
        e.0.push(r.try_get("step")?);
        let at: DateTime<Utc> = r.try_get("at")?;
        e.1 = Some(e.1.map_or(at, |x: DateTime<Utc>| x.max(at)));
    }
    let tenants = model::load_tenants(conn, &[tenant.to_owned()]).await?;
    let Some(t) = tenants.get(tenant) else {
        return Ok(0);
    };
    let keys: Vec<(String, String)> = invoices
        .iter()
        .map(|i| (i.tenant.clone(), i.customer_id.clone()))
        .collect();
    let customers = model::load_customers(conn, &keys).await?;
    for inv in &mut invoices {
        let customer = customers.get(&(inv.tenant.clone(), inv.customer_id.clone()));
        let planned = model::plan_for(policy, &inv.state, customer, t);
        let (names, last) = history.get(&inv.invoice_id).cloned().unwrap_or_default();
        inv.progress = Progress::migrate(&planned.plan, &names, last, inv.progress.notice_sent_at);
        inv.policy_version = version;
        inv.next_at = inv.progress.next_at(&planned.plan);
        if inv.next_at.is_none() {
            inv.status = Status::Done;
        }
    }
    let refs: Vec<&Invoice> = invoices.iter().collect();
    model::save_invoices(conn, &refs).await?;
    Ok(invoices.len())
}
