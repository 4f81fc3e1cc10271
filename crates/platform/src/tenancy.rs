//! Tenancy, for every service: the tenants (in the `tenancy` schema, which the platform
//! owns), the API keys that open each one's routes, and the check itself as middleware
//! over `/v1/tenants/{tenant}/…` ([`tenant_routes`]).
//!
//! Intake creates tenants (it validates their CDC art. 42-A identity and emits
//! `tenant.created`) through [`register`]; any service checks keys and reads tenants
//! here, so each can run, and be tested, alone.

use std::collections::HashMap;
use std::sync::RwLock;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use regua_contract::TenantId;
use regua_contract::events::TenantCreated;
use sqlx::{PgConnection, PgPool, Row};

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
        "INSERT INTO tenancy.tenants (id, legal_name, cnpj, address, contact, timezone, test_clock, clock_start, api_key_hash, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) ON CONFLICT (id) DO NOTHING",
    )
    .bind(tenant.id.as_str())
    .bind(&tenant.legal_name)
    .bind(&tenant.cnpj)
    .bind(&tenant.address)
    .bind(&tenant.contact)
    .bind(&tenant.timezone)
    .bind(tenant.test_clock)
    .bind(tenant.clock_start)
    .bind(secrets::key_hash(api_key))
    .bind(now)
    .execute(conn)
    .await?;
    Ok(inserted.rows_affected() == 1)
}

/// The tenant an API key opens.
pub async fn tenant_for_key(pool: &PgPool, key: &str) -> Result<Option<String>, sqlx::Error> {
    sqlx::query_scalar("SELECT id FROM tenancy.tenants WHERE api_key_hash = $1")
        .bind(secrets::key_hash(key))
        .fetch_optional(pool)
        .await
}

/// Checks that `headers` carry an API key of `tenant`: 401 when there is none or it is
/// unknown, 404 when it is another tenant's (as if the resource did not exist).
pub async fn authorize(pool: &PgPool, headers: &HeaderMap, tenant: &str) -> Result<(), Problem> {
    let Some(key) = secrets::bearer(headers) else {
        return Err(Problem::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing bearer API key",
            None,
        ));
    };
    match tenant_for_key(pool, key).await {
        Ok(Some(owner)) if owner == tenant => {
            tracing::Span::current().record("regua.tenant", tenant);
            Ok(())
        }
        Ok(Some(_)) => Err(Problem::not_found("tenant")),
        Ok(None) => Err(Problem::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "unknown API key",
            None,
        )),
        Err(e) => Err(Problem::internal(e)),
    }
}

/// `router`'s routes under `/v1/tenants/{tenant}/` answer only to that tenant's API key
/// ([`authorize`]); other paths pass through.
pub fn tenant_routes(router: Router, pool: PgPool) -> Router {
    router.layer(axum::middleware::from_fn_with_state(pool, require_key))
}

async fn require_key(State(pool): State<PgPool>, req: Request, next: Next) -> Response {
    let tenant = req
        .uri()
        .path()
        .strip_prefix("/v1/tenants/")
        .and_then(|rest| rest.split('/').next())
        .map(str::to_owned);
    let Some(tenant) = tenant else {
        return next.run(req).await;
    };
    match authorize(&pool, req.headers(), &tenant).await {
        Ok(()) => next.run(req).await,
        Err(p) => p.into_response(),
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
