//! The HTTP API, for systems that do not speak NATS.
//!
//! Submissions take the same path as NATS publishes: validated at the edge (a stateless
//! error is answered with 422 at once), then published to the inbound stream and
//! processed by the consumer. The handler waits for the committed outcome (up to
//! `REGUA_HTTP_OUTCOME_WAIT_MS`) via a reply subject, so the answer is the real outcome;
//! if the wait runs out the answer is 202 `pending` and the outcome can be read at
//! `GET /v1/tenants/{tenant}/messages/{message_id}`.

use std::collections::HashMap;
use std::sync::Arc;

use async_nats::HeaderMap;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap as HttpHeaders, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, get, post};
use futures::StreamExt;
use futures::future::join_all;
use regua_contract::inbound::limits;
use regua_contract::{FieldIssue, InboundKind, RejectCode, TenantId, WarnCode, subjects};
use regua_platform::http::Problem;
use regua_platform::{nats, secrets, telemetry, tenancy};
use serde::Serialize;
use serde_json::{Value, json};
use tracing::{Instrument, Span};

use crate::Intake;
use crate::store::{self, Inbound, Outcome};
use crate::tenants::{self, CreateTenantError};
use regua_contract::decode::{Decoded, Issues, decode_value};
use regua_platform::outbox::new_id;

/// Intake's routes: tenant creation (admin) and the tenant routes, behind the tenant's
/// API key. Without `invoice_reads`, `GET /v1/tenants/{tenant}/invoices/{invoice_id}`
/// is left out, for a process where reconciliation serves that read (with what the
/// invoice owes).
pub fn router(intake: Arc<Intake>, invoice_reads: bool) -> Router {
    let tenant_routes = Router::new()
        .route(
            "/v1/tenants/{tenant}/invoices",
            submit_one(InboundKind::InvoiceUpsert),
        )
        .route(
            "/v1/tenants/{tenant}/invoices:batch",
            post(post_invoice_batch),
        )
        .route(
            "/v1/tenants/{tenant}/invoices:cancel",
            submit_one(InboundKind::InvoiceCancel),
        )
        .route(
            "/v1/tenants/{tenant}/customers",
            submit_one(InboundKind::CustomerUpsert),
        )
        .route(
            "/v1/tenants/{tenant}/customers/{customer_id}",
            get(get_customer),
        )
        .route(
            "/v1/tenants/{tenant}/messages/{message_id}",
            get(get_message),
        )
        .route("/v1/tenants/{tenant}/keys", get(list_keys))
        .route("/v1/tenants/{tenant}/keys:rotate", post(rotate_key))
        .route(
            "/v1/tenants/{tenant}/keys/{key_id}",
            axum::routing::delete(revoke_key),
        );
    let tenant_routes = if invoice_reads {
        tenant_routes.route(
            "/v1/tenants/{tenant}/invoices/{invoice_id}",
            get(get_invoice),
        )
    } else {
        tenant_routes
    };
    let admin = Router::new()
        .route("/v1/tenants", post(create_tenant))
        .route("/openapi.json", get(openapi));
    intake.tenant_routes(admin.merge(tenant_routes).with_state(Arc::clone(&intake)))
}

/// `POST` of one `kind` message: 202 with its outcome, or 422.
fn submit_one(kind: InboundKind) -> MethodRouter<Arc<Intake>> {
    post(
        move |State(intake): State<Arc<Intake>>,
              Path(tenant): Path<String>,
              headers: HttpHeaders,
              body: Bytes| async move {
            post_single(&intake, &headers, &tenant, kind, &body).await
        },
    )
}

/// 422 with every field issue.
fn invalid(issues: Issues, message_id: Option<String>) -> Problem {
    Problem::invalid(&issues.errors, &issues.warnings).with_message_id(message_id)
}

async fn create_tenant(
    State(intake): State<Arc<Intake>>,
    headers: HttpHeaders,
    body: Bytes,
) -> Result<Response, Problem> {
    let Some(admin) = intake.config.admin_token.as_ref() else {
        return Err(Problem::new(
            StatusCode::FORBIDDEN,
            "admin-disabled",
            "tenant administration is off: set REGUA_ADMIN_TOKEN",
            None,
        ));
    };
    let authorized = secrets::bearer(&headers)
        .is_some_and(|t| secrets::same(t.as_bytes(), admin.expose().as_bytes()));
    if !authorized {
        return Err(Problem::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "admin token required",
            None,
        ));
    }
    let value = json(&body)?;
    let new = tenants::validate_new_tenant(&value).map_err(|i| invalid(i, None))?;
    let now = intake.clock.now();
    match tenants::create_tenant(
        &intake.pool,
        now,
        new,
        telemetry::traceparent(&Span::current()),
    )
    .await
    {
        Ok(created) => {
            intake.wake_relay();
            Ok((StatusCode::CREATED, axum::Json(created)).into_response())
        }
        Err(CreateTenantError::Exists(id)) => Err(Problem::new(
            StatusCode::CONFLICT,
            "tenant-exists",
            "tenant already exists",
            Some(format!("tenant {id} already exists")),
        )),
        Err(CreateTenantError::Invalid(i)) => Err(invalid(i, None)),
        Err(e) => Err(Problem::internal(e)),
    }
}

/// One submission's result.
#[derive(Debug, Clone, Serialize)]
struct ItemResult {
    #[serde(skip_serializing_if = "Option::is_none")]
    index: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    invoice_id: Option<String>,
    message_id: String,
    /// accepted, duplicate, stale, rejected, or pending (durable, not yet processed).
    outcome: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    errors: Vec<FieldIssue<RejectCode>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    warnings: Vec<FieldIssue<WarnCode>>,
}

/// A message about to be submitted.
struct Submission {
    message_id: String,
    value: Value,
    decoded: Decoded,
}

/// The caller's `Idempotency-Key`: at most [`subjects::MAX_MESSAGE_ID_BYTES`] of
/// visible ASCII. One that is not is refused (422), never silently ignored: a retry
/// would otherwise be taken for a new message.
fn idempotency_key(headers: &HttpHeaders) -> Result<Option<String>, Problem> {
    let Some(v) = headers.get("Idempotency-Key") else {
        return Ok(None);
    };
    let key = v.to_str().map(str::trim).unwrap_or("");
    let ok = !key.is_empty()
        && key.len() <= subjects::MAX_MESSAGE_ID_BYTES
        && key.bytes().all(|b| b.is_ascii_graphic());
    if ok {
        return Ok(Some(key.to_owned()));
    }
    let mut issues = Issues::default();
    issues.error(
        "Idempotency-Key",
        RejectCode::InvalidValue,
        format!(
            "Idempotency-Key must be 1 to {} visible ASCII characters",
            subjects::MAX_MESSAGE_ID_BYTES
        ),
    );
    Err(invalid(issues, None))
}

/// Validates at the edge, records stateless rejections, publishes the rest durably and
/// waits for their outcomes.
async fn submit(
    intake: &Intake,
    tenant: &TenantId,
    kind: InboundKind,
    submissions: Vec<Submission>,
) -> Result<Vec<ItemResult>, Problem> {
    let subject = subjects::inbound(tenant, kind);
    let mut results: Vec<Option<ItemResult>> = vec![None; submissions.len()];
    let here = Span::current();

    // Stateless rejections: recorded (outcome row and intake.rejected event) at once.
    let mut rejected = Vec::new();
    for (i, s) in submissions.iter().enumerate() {
        if s.decoded.issues.is_rejected() {
            rejected.push((
                i,
                Inbound {
                    tenant: tenant.to_string(),
                    message_id: s.message_id.clone(),
                    subject: subject.clone(),
                    stream_seq: None,
                    payload: serde_json::to_vec(&s.value).unwrap_or_default().into(),
                    decoded: s.decoded.clone(),
                    traceparent: telemetry::traceparent(&here),
                },
            ));
        }
    }
    if !rejected.is_empty() {
        let items: Vec<Inbound> = rejected.iter().map(|(_, i)| i.clone()).collect();
        let applied = store::apply_batch(&intake.pool, &intake.tenants, intake.clock.now(), &items)
            .await
            .map_err(Problem::internal)?;
        intake.wake_relay();
        for ((i, item), a) in rejected.iter().zip(applied) {
            a.count();
            results[*i] = Some(ItemResult {
                index: None,
                invoice_id: None,
                message_id: item.message_id.clone(),
                outcome: a.outcome.as_str().to_owned(),
                reason: a.reason,
                errors: a.errors,
                warnings: a.warnings,
            });
        }
    }

    // Durable publish, with a reply subject for the outcome.
    let inbox = intake.client.new_inbox();
    let mut replies = intake
        .client
        .subscribe(inbox.clone())
        .await
        .map_err(Problem::unavailable)?;
    let mut acks = Vec::new();
    for (i, s) in submissions.iter().enumerate() {
        if results[i].is_some() {
            continue;
        }
        let span = nats::publish_span(&subject, &s.message_id);
        span.record("regua.tenant", tenant.as_str());
        let mut headers = HeaderMap::new();
        headers.insert(subjects::HEADER_REPLY_TO, inbox.as_str());
        // Recorded under the caller's id; deduplicated by JetStream under the tenant's.
        headers.insert(subjects::HEADER_MESSAGE_ID, s.message_id.as_str());
        let nats_id = subjects::scoped_message_id(tenant, &s.message_id);
        let payload = serde_json::to_vec(&s.value).map_err(Problem::internal)?;
        let publish = nats::traced_publish(&span, headers, &nats_id, payload.into());
        let ack = intake
            .js
            .send_publish(subject.clone(), publish)
            .instrument(span)
            .await
            .map_err(Problem::unavailable)?;
        acks.push((i, ack.into_future()));
    }
    let (indexes, futures): (Vec<usize>, Vec<_>) = acks.into_iter().unzip();
    let mut waiting: HashMap<String, usize> = HashMap::new();
    for (i, ack) in indexes.into_iter().zip(join_all(futures).await) {
        let ack = ack.map_err(Problem::unavailable)?;
        let message_id = submissions[i].message_id.clone();
        if ack.duplicate {
            results[i] = Some(ItemResult {
                index: None,
                invoice_id: None,
                message_id,
                outcome: Outcome::Duplicate.as_str().to_owned(),
                reason: Some("the same message id was published moments ago".into()),
                errors: Vec::new(),
                warnings: submissions[i].decoded.issues.warnings.clone(),
            });
        } else {
            waiting.insert(message_id, i);
        }
    }

    let deadline = tokio::time::Instant::now() + intake.config.http_outcome_wait;
    while !waiting.is_empty() {
        let Ok(Some(msg)) = tokio::time::timeout_at(deadline, replies.next()).await else {
            break;
        };
        let Ok(reply) = serde_json::from_slice::<Value>(&msg.payload) else {
            continue;
        };
        let Some(i) = reply["message_id"]
            .as_str()
            .and_then(|id| waiting.remove(id))
        else {
            continue;
        };
        results[i] = Some(ItemResult {
            index: None,
            invoice_id: None,
            message_id: submissions[i].message_id.clone(),
            outcome: reply["outcome"].as_str().unwrap_or("pending").to_owned(),
            reason: reply["reason"].as_str().map(str::to_owned),
            errors: serde_json::from_value(reply["errors"].clone()).unwrap_or_default(),
            warnings: serde_json::from_value(reply["warnings"].clone()).unwrap_or_default(),
        });
    }
    replies.unsubscribe().await.ok();
    for (_, i) in waiting {
        results[i] = Some(ItemResult {
            index: None,
            invoice_id: None,
            message_id: submissions[i].message_id.clone(),
            outcome: "pending".into(),
            reason: Some("durably queued; not processed yet".into()),
            errors: Vec::new(),
            warnings: submissions[i].decoded.issues.warnings.clone(),
        });
    }
    Ok(results.into_iter().flatten().collect())
}

fn parse_body(body: &Bytes) -> Result<Value, Problem> {
    if body.len() > limits::MAX_PAYLOAD_BYTES * limits::MAX_BATCH {
        return Err(Problem::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload-too-large",
            "request body too large",
            None,
        ));
    }
    json(body)
}

fn tenant_id(tenant: &str) -> Result<TenantId, Problem> {
    TenantId::parse(tenant).map_err(|_| Problem::not_found("tenant"))
}

/// Answers a single submission: 202 with the outcome, or 422 when rejected.
fn single_response(mut r: ItemResult, invoice_id: Option<String>) -> Response {
    r.invoice_id = invoice_id;
    if r.outcome == Outcome::Rejected.as_str() {
        let issues = Issues {
            errors: r.errors,
            warnings: r.warnings,
        };
        return invalid(issues, Some(r.message_id)).into_response();
    }
    (StatusCode::ACCEPTED, axum::Json(r)).into_response()
}

async fn post_single(
    intake: &Intake,
    headers: &HttpHeaders,
    tenant: &str,
    kind: InboundKind,
    body: &Bytes,
) -> Result<Response, Problem> {
    let tenant = tenant_id(tenant)?;
    let value = parse_body(body)?;
    let decoded = if body.len() > limits::MAX_PAYLOAD_BYTES {
        Decoded::rejected(
            "",
            RejectCode::PayloadTooLarge,
            format!(
                "payload is {} bytes; the limit is {}",
                body.len(),
                limits::MAX_PAYLOAD_BYTES
            ),
        )
    } else {
        decode_value(kind, &value)
    };
    let invoice_id = decoded
        .command
        .as_ref()
        .and_then(|c| c.invoice_id())
        .map(str::to_owned);
    if let Some(id) = &invoice_id {
        Span::current().record("regua.invoice_id", id.as_str());
    }
    let message_id =
        idempotency_key(headers)?.unwrap_or_else(|| new_id(intake.clock.now()).to_string());
    let mut results = submit(
        intake,
        &tenant,
        kind,
        vec![Submission {
            message_id,
            value,
            decoded,
        }],
    )
    .await?;
    let r = results
        .pop()
        .ok_or_else(|| Problem::internal("no result"))?;
    Ok(single_response(r, invoice_id))
}

async fn post_invoice_batch(
    State(intake): State<Arc<Intake>>,
    Path(tenant): Path<String>,
    headers: HttpHeaders,
    body: Bytes,
) -> Result<Response, Problem> {
    let tenant = tenant_id(&tenant)?;
    let value = parse_body(&body)?;
    let items = match &value {
        Value::Array(a) => a,
        Value::Object(o) => match o.get("invoices") {
            Some(Value::Array(a)) => a,
            _ => {
                let mut issues = Issues::default();
                issues.error(
                    "invoices",
                    RejectCode::MissingField,
                    "body must be {\"invoices\": [...]} or an array",
                );
                return Err(invalid(issues, None));
            }
        },
        _ => {
            let mut issues = Issues::default();
            issues.error(
                "",
                RejectCode::NotAnObject,
                "body must be {\"invoices\": [...]} or an array",
            );
            return Err(invalid(issues, None));
        }
    };
    if items.is_empty() || items.len() > limits::MAX_BATCH {
        let mut issues = Issues::default();
        issues.error(
            "invoices",
            RejectCode::InvalidValue,
            format!(
                "a batch holds 1 to {} invoices; this one has {}",
                limits::MAX_BATCH,
                items.len()
            ),
        );
        return Err(invalid(issues, None));
    }
    let key = idempotency_key(&headers)?;
    let now = intake.clock.now();
    let submissions: Vec<Submission> = items
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let size = serde_json::to_vec(v).map(|b| b.len()).unwrap_or(usize::MAX);
            let decoded = if size > limits::MAX_PAYLOAD_BYTES {
                Decoded::rejected(
                    "",
                    RejectCode::PayloadTooLarge,
                    format!(
                        "item is {size} bytes; the limit is {}",
                        limits::MAX_PAYLOAD_BYTES
                    ),
                )
            } else {
                decode_value(InboundKind::InvoiceUpsert, v)
            };
            Submission {
                message_id: key
                    .as_ref()
                    .map_or_else(|| new_id(now).to_string(), |k| format!("{k}:{i}")),
                value: v.clone(),
                decoded,
            }
        })
        .collect();
    let invoice_ids: Vec<Option<String>> = items
        .iter()
        .map(|v| {
            v.get("invoice_id")
                .and_then(Value::as_str)
                .map(str::to_owned)
        })
        .collect();
    let results = submit(&intake, &tenant, InboundKind::InvoiceUpsert, submissions).await?;
    let mut summary: HashMap<String, usize> = HashMap::new();
    let results: Vec<ItemResult> = results
        .into_iter()
        .enumerate()
        .map(|(i, mut r)| {
            *summary.entry(r.outcome.clone()).or_default() += 1;
            r.index = Some(i);
            r.invoice_id = invoice_ids.get(i).cloned().flatten();
            r
        })
        .collect();
    Ok((
        StatusCode::OK,
        axum::Json(json!({ "results": results, "summary": summary })),
    )
        .into_response())
}

/// A stored resource as JSON, or 404 naming `what`.
fn found<T: Serialize>(
    what: &str,
    row: Result<Option<T>, sqlx::Error>,
) -> Result<Response, Problem> {
    match row {
        Ok(Some(v)) => Ok(axum::Json(v).into_response()),
        Ok(None) => Err(Problem::not_found(what)),
        Err(e) => Err(Problem::internal(e)),
    }
}

async fn get_invoice(
    State(intake): State<Arc<Intake>>,
    Path((tenant, invoice_id)): Path<(String, String)>,
) -> Result<Response, Problem> {
    Span::current().record("regua.invoice_id", invoice_id.as_str());
    found(
        "invoice",
        store::get_invoice(&intake.pool, &tenant, &invoice_id).await,
    )
}

async fn get_customer(
    State(intake): State<Arc<Intake>>,
    Path((tenant, customer_id)): Path<(String, String)>,
) -> Result<Response, Problem> {
    found(
        "customer",
        store::get_customer(&intake.pool, &tenant, &customer_id).await,
    )
}

async fn get_message(
    State(intake): State<Arc<Intake>>,
    Path((tenant, message_id)): Path<(String, String)>,
) -> Result<Response, Problem> {
    found(
        "message",
        store::get_message(&intake.pool, &tenant, &message_id).await,
    )
}

/// `body` as JSON, or 422 `malformed_json`.
fn json(body: &[u8]) -> Result<Value, Problem> {
    serde_json::from_slice(body).map_err(|e| {
        let mut issues = Issues::default();
        issues.error(
            "",
            RejectCode::MalformedJson,
            format!("malformed JSON: {e}"),
        );
        invalid(issues, None)
    })
}

/// `GET /v1/tenants/{tenant}/keys`: the tenant's API keys (ids and dates, never keys).
async fn list_keys(
    State(intake): State<Arc<Intake>>,
    Path(tenant): Path<String>,
) -> Result<Response, Problem> {
    let mut conn = intake.pool.acquire().await.map_err(Problem::unavailable)?;
    let keys = tenancy::keys(&mut conn, &tenant, intake.clock.now())
        .await
        .map_err(Problem::internal)?;
    Ok(axum::Json(json!({ "keys": keys })).into_response())
}

/// `POST /v1/tenants/{tenant}/keys:rotate` (`{"grace_seconds": n}`, default a day, at
/// most 30): a new key, shown once; the keys it replaces keep working for the grace.
async fn rotate_key(
    State(intake): State<Arc<Intake>>,
    Path(tenant): Path<String>,
    body: Bytes,
) -> Result<Response, Problem> {
    const DAY: u64 = 24 * 3600;
    let max = tenancy::MAX_ROTATION_GRACE.as_secs();
    let grace = if body.iter().all(u8::is_ascii_whitespace) {
        DAY
    } else {
        match json(&body)?.get("grace_seconds") {
            None => DAY,
            Some(g) => g.as_u64().filter(|g| *g <= max).ok_or_else(|| {
                let mut issues = Issues::default();
                issues.error(
                    "grace_seconds",
                    RejectCode::InvalidValue,
                    format!("a whole number of seconds from 0 to {max}"),
                );
                invalid(issues, None)
            })?,
        }
    };
    let mut tx = intake.pool.begin().await.map_err(Problem::unavailable)?;
    let rotated = tenancy::rotate_key(
        &mut tx,
        &tenant,
        intake.clock.now(),
        std::time::Duration::from_secs(grace),
    )
    .await
    .map_err(Problem::internal)?;
    tx.commit().await.map_err(Problem::unavailable)?;
    tracing::info!(tenant = %tenant, key_id = %rotated.key_id, "API key rotated");
    Ok((StatusCode::CREATED, axum::Json(rotated)).into_response())
}

/// `DELETE /v1/tenants/{tenant}/keys/{key_id}`: the key stops working at once (409 for
/// the tenant's last working key: rotate first).
async fn revoke_key(
    State(intake): State<Arc<Intake>>,
    Path((tenant, key_id)): Path<(String, String)>,
) -> Result<Response, Problem> {
    let Ok(key_id) = uuid::Uuid::parse_str(&key_id) else {
        return Err(Problem::not_found("key"));
    };
    let mut tx = intake.pool.begin().await.map_err(Problem::unavailable)?;
    let revoked = tenancy::revoke_key(&mut tx, &tenant, key_id, intake.clock.now())
        .await
        .map_err(Problem::internal)?;
    tx.commit().await.map_err(Problem::unavailable)?;
    match revoked {
        tenancy::Revoked::Done => {
            tracing::info!(tenant = %tenant, key_id = %key_id, "API key revoked");
            Ok(StatusCode::NO_CONTENT.into_response())
        }
        tenancy::Revoked::NotFound => Err(Problem::not_found("key")),
        tenancy::Revoked::LastKey => Err(Problem::new(
            StatusCode::CONFLICT,
            "last-key",
            "this is the tenant's last working key: rotate it instead",
            None,
        )),
    }
}

async fn openapi() -> axum::Json<Value> {
    axum::Json(crate::openapi::document())
}
