//! Tenancy, for every service: the tenants (in the `tenancy` schema, which the platform
//! owns), the API keys that open each one's routes, and the check itself as middleware
//! over `/v1/tenants/{tenant}/…` ([`tenant_routes`]).
//!
//! Intake creates tenants (it validates their CDC art. 42-A identity and emits
//! `tenant.created`) through [`register`]; any service checks keys and reads tenants
//! here, so each can run, and be tested, alone.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use regua_contract::TenantId;
use regua_contract::events::TenantCreated;
use sqlx::{PgConnection, PgPool, Row};
use uuid::Uuid;

use crate::http::Problem;
use crate::{PlatformError, db, secrets};

/// The tenancy schema.
pub const SCHEMA: &str = "tenancy";

/// Creates the tenancy schema (every service that checks keys runs this).
pub async fn migrate(pool: &PgPool) -> Result<(), PlatformError> {
    db::migrate(pool, sqlx::migrate!("./migrations/tenancy"), SCHEMA, &[]).await
}

/// A tenant: the creditor's identity (CDC art. 42-A) and its clock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tenant {
    pub id: TenantId,
    pub legal_name: String,
    pub cnpj: String,
    pub address: String,
    pub contact: String,
    pub timezone: String,
    pub test_clock: bool,
    pub clock_start: Option<DateTime<Utc>>,
}

impl Tenant {
    /// What `tenant.created` says of it.
    pub fn created(&self) -> TenantCreated {
        TenantCreated {
            id: self.id.to_string(),
            legal_name: self.legal_name.clone(),
            cnpj: self.cnpj.clone(),
            address: self.address.clone(),
            contact: self.contact.clone(),
            timezone: self.timezone.clone(),
            test_clock: self.test_clock,
            now: self.clock_start,
        }
    }
}

/// Registers `tenant`, opened by `api_key` (stored hashed), in the caller's
/// transaction. False when a tenant with that id exists already.
pub async fn register(
    conn: &mut PgConnection,
    tenant: &Tenant,
    api_key: &str,
    now: DateTime<Utc>,
) -> Result<bool, sqlx::Error> {
    let inserted = sqlx::query(
        "INSERT INTO tenancy.tenants (id, legal_name, cnpj, address, contact, timezone, test_clock, clock_start, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT (id) DO NOTHING",
    )
    .bind(tenant.id.as_str())
    .bind(&tenant.legal_name)
    .bind(&tenant.cnpj)
    .bind(&tenant.address)
    .bind(&tenant.contact)
    .bind(&tenant.timezone)
    .bind(tenant.test_clock)
    .bind(tenant.clock_start)
    .bind(now)
    .execute(&mut *conn)
    .await?;
    if inserted.rows_affected() != 1 {
        return Ok(false);
    }
    add_key(conn, tenant.id.as_str(), api_key, now).await?;
    Ok(true)
}

async fn add_key(
    conn: &mut PgConnection,
    tenant: &str,
    api_key: &str,
    now: DateTime<Utc>,
) -> Result<Uuid, sqlx::Error> {
    let id = Uuid::now_v7();
    sqlx::query(
        "INSERT INTO tenancy.api_keys (key_hash, id, tenant, created_at) VALUES ($1, $2, $3, $4)",
    )
    .bind(secrets::key_hash(api_key))
    .bind(id)
    .bind(tenant)
    .bind(now)
    .execute(conn)
    .await?;
    Ok(id)
}

/// The tenant an API key opens at `now`: not revoked, not expired.
pub async fn tenant_for_key(
    pool: &PgPool,
    key: &str,
    now: DateTime<Utc>,
) -> Result<Option<String>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT tenant FROM tenancy.api_keys WHERE key_hash = $1 AND revoked_at IS NULL \
         AND (expires_at IS NULL OR expires_at > $2)",
    )
    .bind(secrets::key_hash(key))
    .bind(now)
    .fetch_optional(pool)
    .await
}

/// Whether tenant `id` exists.
pub async fn exists(pool: &PgPool, id: &str) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM tenancy.tenants WHERE id = $1)")
        .bind(id)
        .fetch_one(pool)
        .await
}

/// One of a tenant's API keys, as listed: never the key itself.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ApiKey {
    pub key_id: Uuid,
    pub created_at: DateTime<Utc>,
    /// When it stops working (set by a rotation); absent: until rotated or revoked.
    pub expires_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
    /// Whether it opens the tenant's routes now.
    pub active: bool,
}

/// The longest grace a rotation may give the keys it replaces.
pub const MAX_ROTATION_GRACE: Duration = Duration::from_secs(30 * 24 * 3600);

/// What a rotation made.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Rotated {
    pub key_id: Uuid,
    /// The new key, shown this once.
    pub api_key: String,
    /// When the keys it replaces stop working.
    pub previous_keys_expire_at: DateTime<Utc>,
}

/// Gives `tenant` a new API key; its other working keys stop working `grace` after
/// `now` (or sooner, when they were to expire sooner).
pub async fn rotate_key(
    conn: &mut PgConnection,
    tenant: &str,
    now: DateTime<Utc>,
    grace: Duration,
) -> Result<Rotated, sqlx::Error> {
    let grace = grace.min(MAX_ROTATION_GRACE);
    let until = now + chrono::TimeDelta::from_std(grace).unwrap_or_default();
    sqlx::query(
        "UPDATE tenancy.api_keys SET expires_at = LEAST(COALESCE(expires_at, 'infinity'), $3) \
         WHERE tenant = $1 AND revoked_at IS NULL AND (expires_at IS NULL OR expires_at > $2)",
    )
    .bind(tenant)
    .bind(now)
    .bind(until)
    .execute(&mut *conn)
    .await?;
    let api_key = secrets::new_api_key(tenant);
    let key_id = add_key(conn, tenant, &api_key, now).await?;
    Ok(Rotated {
        key_id,
        api_key,
        previous_keys_expire_at: until,
    })
}

/// How a revocation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Revoked {
    Done,
    NotFound,
    /// It is the tenant's last working key: rotate first.
    LastKey,
}

/// Revokes `tenant`'s key `key_id` at once.
pub async fn revoke_key(
    conn: &mut PgConnection,
    tenant: &str,
    key_id: Uuid,
    now: DateTime<Utc>,
) -> Result<Revoked, sqlx::Error> {
    let keys = keys(&mut *conn, tenant, now).await?;
    let Some(key) = keys.iter().find(|k| k.key_id == key_id) else {
        return Ok(Revoked::NotFound);
    };
    if key.active && keys.iter().filter(|k| k.active).count() == 1 {
        return Ok(Revoked::LastKey);
    }
    sqlx::query(
        "UPDATE tenancy.api_keys SET revoked_at = COALESCE(revoked_at, $3) WHERE tenant = $1 AND id = $2",
    )
    .bind(tenant)
    .bind(key_id)
    .bind(now)
    .execute(conn)
    .await?;
    Ok(Revoked::Done)
}

/// `tenant`'s API keys, oldest first.
pub async fn keys(
    conn: &mut PgConnection,
    tenant: &str,
    now: DateTime<Utc>,
) -> Result<Vec<ApiKey>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT id, created_at, expires_at, revoked_at FROM tenancy.api_keys WHERE tenant = $1 \
         ORDER BY created_at, id",
    )
    .bind(tenant)
    .fetch_all(conn)
    .await?;
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        let expires_at: Option<DateTime<Utc>> = r.try_get("expires_at")?;
        let revoked_at: Option<DateTime<Utc>> = r.try_get("revoked_at")?;
        out.push(ApiKey {
            key_id: r.try_get("id")?,
            created_at: r.try_get("created_at")?,
            active: revoked_at.is_none() && expires_at.is_none_or(|e| e > now),
            expires_at,
            revoked_at,
        });
    }
    Ok(out)
}

/// What the tenant routes check a request with: the API key, on a small pool of its own
/// (so key checks never wait behind the consumers' connections, nor starve them), a
/// short memory of unknown keys (so a stream of wrong keys costs one query per key per
/// [`UNKNOWN_KEY_TTL`], not one per request), and each tenant's request rate on this
/// replica (429 with `Retry-After` beyond it).
pub struct Gate {
    pool: PgPool,
    clock: crate::SharedClock,
    unknown: Mutex<HashMap<Vec<u8>, Instant>>,
    rate: f64,
    burst: f64,
    buckets: Mutex<HashMap<String, (f64, Instant)>>,
}

/// How long an unknown key is answered 401 from memory.
pub const UNKNOWN_KEY_TTL: Duration = Duration::from_secs(60);

/// Unknown keys remembered at most; past it the memory starts over.
const UNKNOWN_KEYS_MAX: usize = 10_000;

/// Connections of a [`Gate`]'s own pool.
const GATE_CONNECTIONS: u32 = 4;

impl Gate {
    /// A gate over `pool`'s database (a pool of its own, connected lazily), limiting
    /// each tenant to `rate` requests per second with bursts of `burst` (`rate` 0: no
    /// limit).
    pub fn new(pool: &PgPool, clock: crate::SharedClock, rate: u32, burst: u32) -> Gate {
        let own = sqlx::postgres::PgPoolOptions::new()
            .max_connections(GATE_CONNECTIONS)
            .acquire_timeout(Duration::from_secs(5))
            .connect_lazy_with((*pool.connect_options()).clone());
        Gate {
            pool: own,
            clock,
            unknown: Mutex::default(),
            rate: f64::from(rate),
            burst: f64::from(burst.max(1)),
            buckets: Mutex::default(),
        }
    }

    /// Checks that `headers` carry an API key of `tenant`: 401 when there is none or it
    /// is unknown, 404 when it is another tenant's (as if the resource did not exist).
    pub async fn authorize(&self, headers: &HeaderMap, tenant: &str) -> Result<(), Problem> {
        let unauthorized =
            |why: &str| Problem::new(StatusCode::UNAUTHORIZED, "unauthorized", why, None);
        let Some(key) = secrets::bearer(headers) else {
            return Err(unauthorized("missing bearer API key"));
        };
        let hash = secrets::key_hash(key);
        if self.known_unknown(&hash) {
            return Err(unauthorized("unknown API key"));
        }
        match tenant_for_key(&self.pool, key, self.clock.now()).await {
            Ok(Some(owner)) if owner == tenant => {
                tracing::Span::current().record("regua.tenant", tenant);
                Ok(())
            }
            Ok(Some(_)) => Err(Problem::not_found("tenant")),
            Ok(None) => {
                self.remember_unknown(hash);
                Err(unauthorized("unknown API key"))
            }
            Err(e) => Err(Problem::internal(e)),
        }
    }

    fn known_unknown(&self, hash: &[u8]) -> bool {
        let unknown = self.unknown.lock().unwrap_or_else(PoisonError::into_inner);
        unknown
            .get(hash)
            .is_some_and(|at| at.elapsed() < UNKNOWN_KEY_TTL)
    }

    fn remember_unknown(&self, hash: Vec<u8>) {
        let mut unknown = self.unknown.lock().unwrap_or_else(PoisonError::into_inner);
        if unknown.len() >= UNKNOWN_KEYS_MAX {
            unknown.clear();
        }
        unknown.insert(hash, Instant::now());
    }

    /// Takes one request from `tenant`'s bucket; how long to wait when it is empty.
    fn take(&self, tenant: &str) -> Option<Duration> {
        if self.rate <= 0.0 {
            return None;
        }
        let now = Instant::now();
        let mut buckets = self.buckets.lock().unwrap_or_else(PoisonError::into_inner);
        let (tokens, at) = buckets
            .entry(tenant.to_owned())
            .or_insert((self.burst, now));
        // Tokens are a request budget, not money: a float is exact enough here.
        *tokens = (*tokens + now.duration_since(*at).as_secs_f64() * self.rate).min(self.burst);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            None
        } else {
            Some(Duration::from_secs_f64((1.0 - *tokens) / self.rate))
        }
    }
}

/// 429 with `Retry-After` (whole seconds, at least 1).
fn too_many(wait: Duration) -> Response {
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    let mut r = Problem::new(
        StatusCode::TOO_MANY_REQUESTS,
        "rate-limited",
        "this tenant's request rate is over its limit; retry after the time given",
        None,
    )
    .into_response();
    if let Ok(v) = axum::http::HeaderValue::from_str(&secs.max(1).to_string()) {
        r.headers_mut().insert(axum::http::header::RETRY_AFTER, v);
    }
    r
}

/// `router`'s routes under `/v1/tenants/{tenant}/` answer only to that tenant's API key
/// ([`Gate::authorize`]), within its request rate; other paths pass through.
pub fn tenant_routes(router: Router, gate: Arc<Gate>) -> Router {
    router.layer(axum::middleware::from_fn_with_state(gate, require_key))
}

async fn require_key(State(gate): State<Arc<Gate>>, req: Request, next: Next) -> Response {
    let tenant = req
        .uri()
        .path()
        .strip_prefix("/v1/tenants/")
        .and_then(|rest| rest.split('/').next())
        .map(str::to_owned);
    let Some(tenant) = tenant else {
        return next.run(req).await;
    };
    if let Err(p) = gate.authorize(req.headers(), &tenant).await {
        return p.into_response();
    }
    match gate.take(&tenant) {
        Some(wait) => too_many(wait),
        None => next.run(req).await,
    }
}

/// What processing a message needs to know about its tenant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantInfo {
    pub id: String,
    pub timezone: String,
}

/// Known tenants, cached. Tenants are never deleted and their zone never changes, so a
/// positive entry stays valid; unknown ids are looked up again each time.
#[derive(Debug, Default)]
pub struct Directory {
    cache: RwLock<HashMap<String, TenantInfo>>,
}

impl Directory {
    pub fn new() -> Self {
        Self::default()
    }

    /// The known tenants among `tokens`.
    pub async fn resolve(
        &self,
        conn: &mut PgConnection,
        tokens: &[&str],
    ) -> Result<HashMap<String, TenantInfo>, sqlx::Error> {
        let mut found = HashMap::new();
        let mut missing: Vec<&str> = Vec::new();
        if let Ok(cache) = self.cache.read() {
            for t in tokens {
                match cache.get(*t) {
                    Some(info) => {
                        found.insert((*t).to_owned(), info.clone());
                    }
                    None => missing.push(t),
                }
            }
        }
        missing.sort_unstable();
        missing.dedup();
        if missing.is_empty() {
            return Ok(found);
        }
        let rows = sqlx::query("SELECT id, timezone FROM tenancy.tenants WHERE id = ANY($1)")
            .bind(&missing)
            .fetch_all(conn)
            .await?;
        let mut fresh = Vec::with_capacity(rows.len());
        for r in rows {
            fresh.push(TenantInfo {
                id: r.try_get("id")?,
                timezone: r.try_get("timezone")?,
            });
        }
        if let Ok(mut cache) = self.cache.write() {
            for info in &fresh {
                cache.insert(info.id.clone(), info.clone());
            }
        }
        for info in fresh {
            found.insert(info.id.clone(), info);
        }
        Ok(found)
    }
}
