//! The scheduler's HTTP API: policies (versioned, YAML or JSON), the plan preview,
//! simulation, and test clocks. Tenant routes sit behind the API-key layer the
//! platform wires around them.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use chrono::{DateTime, Utc};
use regua_contract::InboundKind;
use regua_contract::decode::{self, Command, CustomerSource};
use regua_domain::policy::{Policy, PolicyIssue, valid_name};
use regua_platform::SharedClock;
use regua_platform::http::Problem;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sqlx::PgPool;

use crate::clock::{self, AdvanceError};
use crate::model::{self, Customer, Invoice};
use crate::{Scheduler, policies, preview, timeline};

/// The scheduler's routes.
pub fn router(s: Arc<Scheduler>) -> Router {
    Router::new()
        .route("/v1/tenants/{tenant}/policies", get(list_policies))
        .route(
            "/v1/tenants/{tenant}/policies/{name}",
            get(get_policy).put(put_policy).post(post_policy_action),
        )
        .route(
            "/v1/tenants/{tenant}/invoices/{invoice_id}/plan",
            get(get_plan),
        )
        .route(
            "/v1/tenants/{tenant}/invoices/{invoice_id}/timeline",
            get(get_invoice_timeline),
        )
        .route(
            "/v1/tenants/{tenant}/customers/{customer_id}/timeline",
            get(get_customer_timeline),
        )
        .route("/v1/tenants/{tenant}/clock", get(get_clock))
        .route("/v1/tenants/{tenant}/clock:advance", post(post_advance))
        .with_state(s)
}

fn issue(field: &str, code: &str, message: impl Into<String>) -> Value {
    json!({ "field": field, "code": code, "message": message.into() })
}

fn invalid(issues: &[Value]) -> Problem {
    Problem::invalid::<Value, Value>(issues, &[])
}

fn policy_invalid(issues: &[PolicyIssue]) -> Problem {
    Problem::invalid::<PolicyIssue, Value>(issues, &[])
}

async fn known_tenant(s: &Scheduler, tenant: &str) -> Result<model::Tenant, Problem> {
    let mut conn = s.pool.acquire().await.map_err(Problem::internal)?;
    model::load_tenants(&mut conn, &[tenant.to_owned()])
        .await
        .map_err(Problem::internal)?
        .remove(tenant)
        .ok_or_else(|| Problem::not_found("tenant"))
}

#[derive(Debug, Deserialize)]
struct WriteQuery {
    #[serde(default)]
    migrate_open: Option<bool>,
}

/// `PUT /v1/tenants/{tenant}/policies/{name}`: a new version. The body is the policy
/// in YAML or JSON; `migrate_open: true` (in the body or the query) re-plans open
/// invoices on this policy.
async fn put_policy(
    State(s): State<Arc<Scheduler>>,
    Path((tenant, name)): Path<(String, String)>,
    Query(q): Query<WriteQuery>,
    body: Bytes,
) -> Result<Response, Problem> {
    let text = std::str::from_utf8(&body)
        .map_err(|_| invalid(&[issue("", "not_utf8", "the body must be UTF-8 YAML or JSON")]))?;
    let written = apply(&s.pool, &s.clock, &tenant, &name, text, q.migrate_open).await?;
    s.fire_wake.notify_one();
    let status = if written.version == 1 {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, axum::Json(written)).into_response())
}

/// Validates and writes a policy document; shared by HTTP and `regua policy apply`.
pub async fn apply(
    pool: &PgPool,
    clock: &SharedClock,
    tenant: &str,
    name: &str,
    text: &str,
    migrate_open: Option<bool>,
) -> Result<policies::Written, Problem> {
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM scheduler.tenants WHERE id = $1)")
            .bind(tenant)
            .fetch_one(pool)
            .await
            .map_err(Problem::internal)?;
    if !exists {
        return Err(Problem::not_found("tenant"));
    }
    if !valid_name(name) {
        return Err(invalid(&[issue(
            "name",
            "invalid_name",
            "policy names are 1-64 characters of a-z, 0-9, '_' or '-'",
        )]));
    }
    let mut doc = Policy::document(text).map_err(|i| policy_invalid(&i))?;
    let mut migrate = migrate_open.unwrap_or(false);
    if let Some(map) = doc.as_object_mut() {
        match map.remove("migrate_open") {
            None | Some(Value::Null) => {}
            Some(Value::Bool(b)) => migrate = migrate || b,
            Some(_) => {
                return Err(invalid(&[issue(
                    "migrate_open",
                    "invalid_type",
                    "migrate_open must be true or false",
                )]));
            }
        }
        if let Some(n) = map.remove("name")
            && n.as_str() != Some(name)
        {
            return Err(invalid(&[issue(
                "name",
                "conflict",
                format!("the document names {n} but the path names {name}"),
            )]));
        }
    }
    let policy = Policy::from_value(doc).map_err(|i| policy_invalid(&i))?;
    let now = match clock::status(pool, tenant)
        .await
        .map_err(Problem::internal)?
    {
        Some(c) => c.now,
        None => clock.now(),
    };
    let mut tx = pool.begin().await.map_err(Problem::internal)?;
    let written = policies::write(&mut tx, tenant, name, &policy, text, migrate, now)
        .await
        .map_err(Problem::internal)?;
    tx.commit().await.map_err(Problem::internal)?;
    Ok(written)
}

#[derive(Debug, Deserialize)]
struct VersionQuery {
    version: Option<i32>,
}

#[derive(Serialize)]
struct PolicyBody {
    name: String,
    version: i32,
    created_at: DateTime<Utc>,
    migrate_open: bool,
    policy: Value,
    /// The document as written.
    source: String,
}

async fn get_policy(
    State(s): State<Arc<Scheduler>>,
    Path((tenant, name)): Path<(String, String)>,
    Query(q): Query<VersionQuery>,
) -> Result<axum::Json<PolicyBody>, Problem> {
    known_tenant(&s, &tenant).await?;
    let mut conn = s.pool.acquire().await.map_err(Problem::internal)?;
    let (v, body) = policies::version(&mut conn, &tenant, &name, q.version)
        .await
        .map_err(Problem::internal)?
        .ok_or_else(|| Problem::not_found("policy"))?;
    Ok(axum::Json(PolicyBody {
        name: v.name,
        version: v.version,
        created_at: v.created_at,
        migrate_open: v.migrate_open,
        policy: body,
        source: v.source,
    }))
}

#[derive(Serialize)]
struct ListedPolicy {
    name: String,
    version: i32,
    default: bool,
    priority: i32,
    steps: usize,
    created_at: DateTime<Utc>,
}

async fn list_policies(
    State(s): State<Arc<Scheduler>>,
    Path(tenant): Path<String>,
) -> Result<axum::Json<Value>, Problem> {
    known_tenant(&s, &tenant).await?;
    let mut conn = s.pool.acquire().await.map_err(Problem::internal)?;
    let current = s
        .policies
        .current(&mut conn, &tenant)
        .await
        .map_err(Problem::internal)?;
    let list: Vec<ListedPolicy> = current
        .into_iter()
        .map(|v| ListedPolicy {
            default: v.policy.applies_to.default,
            priority: v.policy.priority,
            steps: v.policy.steps.len(),
            name: v.name,
            version: v.version,
            created_at: v.created_at,
        })
        .collect();
    Ok(axum::Json(json!({ "policies": list })))
}

/// `POST .../policies/{name}:simulate` (the colon form shares the `{name}` segment).
async fn post_policy_action(
    State(s): State<Arc<Scheduler>>,
    Path((tenant, name)): Path<(String, String)>,
    body: Bytes,
) -> Result<Response, Problem> {
    let Some(name) = name.strip_suffix(":simulate") else {
        return Err(Problem::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method-not-allowed",
            "use PUT to write a policy, or POST {name}:simulate",
            None,
        ));
    };
    let t = known_tenant(&s, &tenant).await?;
    let mut conn = s.pool.acquire().await.map_err(Problem::internal)?;
    let (v, _) = policies::version(&mut conn, &tenant, name, None)
        .await
        .map_err(Problem::internal)?
        .ok_or_else(|| Problem::not_found("policy"))?;
    let body: Value = serde_json::from_slice(&body)
        .map_err(|e| invalid(&[issue("", "invalid_json", e.to_string())]))?;
    let Some(raw) = body.get("invoice").cloned() else {
        return Err(invalid(&[issue(
            "invoice",
            "missing_field",
            "give {\"invoice\": <an invoice payload with its embedded customer>}",
        )]));
    };
    let (invoice, customer) = simulated_invoice(&raw, &t)?;
    let invoice = Invoice {
        policy: v.name.clone(),
        policy_version: v.version,
        ..invoice
    };
    let plan = preview::simulate_one(&v.name, &v.policy, &invoice, &customer, &t);
    Ok(axum::Json(plan).into_response())
}

/// Reads the invoice of a simulation: an `invoice.upsert` with an embedded customer,
/// decoded and checked by the same decoder as intake's, its fields reported under
/// `invoice.`.
fn simulated_invoice(raw: &Value, t: &model::Tenant) -> Result<(Invoice, Customer), Problem> {
    let decoded = decode::decode_value(InboundKind::InvoiceUpsert, raw);
    let draft = match decoded.command {
        Some(Command::UpsertInvoice(draft)) => draft,
        _ => {
            let issues: Vec<Value> = decoded
                .issues
                .errors
                .iter()
                .map(|e| {
                    let field = match e.field.as_str() {
                        "" => "invoice".to_owned(),
                        f => format!("invoice.{f}"),
                    };
                    issue(&field, e.code.as_str(), e.message.clone())
                })
                .collect();
            return Err(invalid(&issues));
        }
    };
    let CustomerSource::Embedded(customer) = &draft.customer else {
        return Err(invalid(&[issue(
            "invoice.customer",
            "missing_field",
            "a simulation needs the customer embedded",
        )]));
    };
    let state = customer.resolve(t.timezone.name());
    let invoice = Invoice::opened(
        t,
        draft.state(state.document_kind),
        None,
        t.now(DateTime::<Utc>::MIN_UTC),
    );
    Ok((
        invoice,
        Customer {
            state,
            opted_out: Vec::new(),
            history: Default::default(),
        },
    ))
}

async fn get_plan(
    State(s): State<Arc<Scheduler>>,
    Path((tenant, invoice_id)): Path<(String, String)>,
) -> Result<axum::Json<preview::Plan>, Problem> {
    let mut conn = s.pool.acquire().await.map_err(Problem::internal)?;
    preview::plan(&s, &mut conn, &tenant, &invoice_id)
        .await
        .map_err(Problem::internal)?
        .map(axum::Json)
        .ok_or_else(|| Problem::not_found("invoice"))
}

/// `{tenant, invoice_id | customer_id, entries: [...]}`.
#[derive(Serialize)]
struct Timeline {
    tenant: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    invoice_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    customer_id: Option<String>,
    entries: Vec<timeline::Entry>,
}

async fn get_invoice_timeline(
    State(s): State<Arc<Scheduler>>,
    Path((tenant, invoice_id)): Path<(String, String)>,
) -> Result<axum::Json<Timeline>, Problem> {
    let entries = timeline_of(&s, &tenant, timeline::Of::Invoice(&invoice_id)).await?;
    Ok(axum::Json(Timeline {
        tenant,
        invoice_id: Some(invoice_id),
        customer_id: None,
        entries,
    }))
}

async fn get_customer_timeline(
    State(s): State<Arc<Scheduler>>,
    Path((tenant, customer_id)): Path<(String, String)>,
) -> Result<axum::Json<Timeline>, Problem> {
    let entries = timeline_of(&s, &tenant, timeline::Of::Customer(&customer_id)).await?;
    Ok(axum::Json(Timeline {
        tenant,
        invoice_id: None,
        customer_id: Some(customer_id),
        entries,
    }))
}

/// The entries of `of`, or 404 when the scheduler does not know it.
async fn timeline_of(
    s: &Scheduler,
    tenant: &str,
    of: timeline::Of<'_>,
) -> Result<Vec<timeline::Entry>, Problem> {
    let (sql, id, what) = match of {
        timeline::Of::Invoice(id) => (
            "SELECT EXISTS (SELECT 1 FROM scheduler.invoices WHERE tenant = $1 AND invoice_id = $2)",
            id,
            "invoice",
        ),
        timeline::Of::Customer(id) => (
            "SELECT EXISTS (SELECT 1 FROM scheduler.customers WHERE tenant = $1 AND customer_id = $2)",
            id,
            "customer",
        ),
    };
    let known: bool = sqlx::query_scalar(sql)
        .bind(tenant)
        .bind(id)
        .fetch_one(&s.pool)
        .await
        .map_err(Problem::internal)?;
    if !known {
        return Err(Problem::not_found(what));
    }
    timeline::entries(&s.pool, tenant, of)
        .await
        .map_err(Problem::internal)
}

async fn get_clock(
    State(s): State<Arc<Scheduler>>,
    Path(tenant): Path<String>,
) -> Result<axum::Json<clock::ClockStatus>, Problem> {
    clock::status(&s.pool, &tenant)
        .await
        .map_err(Problem::internal)?
        .map(axum::Json)
        .ok_or_else(|| Problem::not_found("test clock"))
}

#[derive(Debug, Deserialize)]
struct Advance {
    to: String,
}

async fn post_advance(
    State(s): State<Arc<Scheduler>>,
    Path(tenant): Path<String>,
    body: Bytes,
) -> Result<Response, Problem> {
    let a: Advance = serde_json::from_slice(&body).map_err(|e| {
        invalid(&[issue(
            "to",
            "invalid",
            format!("give {{\"to\": \"<RFC 3339>\"}}: {e}"),
        )])
    })?;
    let to = DateTime::parse_from_rfc3339(&a.to)
        .map_err(|_| {
            invalid(&[issue(
                "to",
                "invalid_date",
                "to must be an RFC 3339 instant",
            )])
        })?
        .with_timezone(&Utc);
    match clock::advance(&s.pool, &tenant, to).await {
        Ok(status) => Ok((StatusCode::ACCEPTED, axum::Json(status)).into_response()),
        Err(AdvanceError::NotFound) => Err(Problem::not_found("tenant")),
        Err(AdvanceError::NotTestClock) => Err(Problem::new(
            StatusCode::CONFLICT,
            "not-test-clock",
            "the tenant is on real time",
            None,
        )),
        Err(e @ AdvanceError::Backwards { .. }) => {
            Err(invalid(&[issue("to", "clock_backwards", e.to_string())]))
        }
        Err(e) => Err(Problem::internal(e)),
    }
}
