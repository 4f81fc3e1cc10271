//! Reconciliation's HTTP API.
//!
//! Tenant routes (behind the tenant API-key layer the platform wires around them):
//! - `POST /v1/tenants/{tenant}/payments`: the `payment.received` body; 200 with the
//!   outcome (`matched`, `unmatched` or `duplicate`), 422 with every problem.
//! - `GET /v1/tenants/{tenant}/payments/unmatched`: the review queue.
//! - `POST /v1/tenants/{tenant}/payments/{payment_id}:match` `{"invoice_id": ...}`.
//! - `GET /v1/tenants/{tenant}/invoices/{invoice_id}`: the invoice with what it owes
//!   today (the tenant's test-clock day included): principal, fine, interest, paid,
//!   balance, and its ledger.
//! - `GET /v1/tenants/{tenant}/credits`: overpayments held as credit, for review.
//! - `POST /v1/tenants/{tenant}/pix/webhook-secret`: issues (or rotates) the PIX
//!   webhook secret; it is shown once.
//!
//! The PIX webhook, `POST /webhooks/pix/{tenant}`, is authenticated by that secret,
//! presented as `?hmac=<secret>` on the registered URL (PSPs cannot add headers; this
//! is how Efí and others document it) or as `Authorization: Bearer <secret>`.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use chrono::{DateTime, NaiveDate, Utc};
use rand::RngCore;
use regua_contract::decode::{PaymentDraft, decode_payment, pix_valor};
use regua_contract::subjects::TenantId;
use regua_contract::{FieldIssue, RejectCode};
use regua_domain::charges;
use regua_platform::http::Problem;
use serde::Deserialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use sqlx::Row;

use crate::ledger::{self, Applied, INVOICE_COLUMNS, InvoiceRow, Source};
use crate::{Reconcile, ReconcileError};

/// The tenant routes.
pub fn tenant_router(r: Arc<Reconcile>) -> Router {
    Router::new()
        .route("/v1/tenants/{tenant}/payments", post(post_payment))
        .route(
            "/v1/tenants/{tenant}/payments/unmatched",
            get(get_unmatched),
        )
        .route("/v1/tenants/{tenant}/payments/{action}", post(post_match))
        .route(
            "/v1/tenants/{tenant}/invoices/{invoice_id}",
            get(get_invoice),
        )
        .route("/v1/tenants/{tenant}/credits", get(get_credits))
        .route(
            "/v1/tenants/{tenant}/pix/webhook-secret",
            post(post_pix_secret),
        )
        .with_state(r)
}

/// The PIX webhook (its own authentication).
pub fn webhook_router(r: Arc<Reconcile>) -> Router {
    Router::new()
        .route("/webhooks/pix/{tenant}", post(post_pix))
        .with_state(r)
}

fn internal(e: impl std::fmt::Display) -> Problem {
    Problem::internal(e)
}

fn tenant_id(tenant: &str) -> Result<TenantId, Problem> {
    TenantId::parse(tenant).map_err(|_| Problem::not_found("tenant"))
}

/// Applies one valid payment in its own transaction.
async fn ingest(
    r: &Reconcile,
    tenant: &str,
    draft: &PaymentDraft,
    source: Source,
    message_id: &str,
) -> Result<Applied, ReconcileError> {
    let mut tx = r.pool.begin().await?;
    let mut settlements = ledger::Settlements::default();
    let applied = ledger::ingest(
        &mut tx,
        &mut ledger::Times::default(),
        &mut settlements,
        tenant,
        draft,
        source,
        message_id,
        r.clock.now(),
        // The events continue the request's trace (the payment's own).
        regua_platform::telemetry::traceparent(&tracing::Span::current()),
    )
    .await?;
    let settled = settlements.settle(&mut tx).await?;
    r.commit(tx).await?;
    r.signal(&settled).await;
    r.wake_relay();
    ledger::count(applied.result());
    Ok(applied)
}

async fn post_payment(
    State(r): State<Arc<Reconcile>>,
    Path(tenant): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Problem> {
    tenant_id(&tenant)?;
    let (draft, issues) = decode_payment(&body);
    let Some(draft) = draft else {
        return Err(Problem::invalid(&issues.errors, &issues.warnings));
    };
    let message_id = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .map_or_else(|| format!("http:{}", draft.payment_id), str::to_owned);
    let applied = ingest(&r, &tenant, &draft, Source::Http, &message_id)
        .await
        .map_err(internal)?;
    let mut body = serde_json::to_value(&applied).map_err(internal)?;
    if let Some(o) = body.as_object_mut() {
        o.insert("warnings".into(), json!(issues.warnings));
    }
    Ok(axum::Json(body).into_response())
}

async fn get_unmatched(
    State(r): State<Arc<Reconcile>>,
    Path(tenant): Path<String>,
) -> Result<Response, Problem> {
    let rows = sqlx::query(
        "SELECT p.payment_id, p.invoice_id, p.reference, p.amount_cents, p.currency, p.paid_at, p.method, \
         p.source, u.reason, u.since FROM reconcile.unmatched u JOIN reconcile.payments p USING (tenant, payment_id) \
         WHERE u.tenant = $1 ORDER BY p.seq LIMIT 1000",
    )
    .bind(&tenant)
    .fetch_all(&r.pool)
    .await
    .map_err(internal)?;
    let mut out = Vec::with_capacity(rows.len());
    for row in rows {
        out.push(unmatched_json(&row).map_err(internal)?);
    }
    Ok(axum::Json(json!({ "payments": out })).into_response())
}

fn unmatched_json(row: &sqlx::postgres::PgRow) -> Result<Value, sqlx::Error> {
    Ok(json!({
        "payment_id": row.try_get::<String, _>("payment_id")?,
        "invoice_id": row.try_get::<Option<String>, _>("invoice_id")?,
        "reference": row.try_get::<Option<String>, _>("reference")?,
        "amount_cents": row.try_get::<i64, _>("amount_cents")?,
        "currency": row.try_get::<String, _>("currency")?,
        "paid_at": row.try_get::<DateTime<Utc>, _>("paid_at")?,
        "method": row.try_get::<String, _>("method")?,
        "source": row.try_get::<String, _>("source")?,
        "reason": row.try_get::<String, _>("reason")?,
        "since": row.try_get::<DateTime<Utc>, _>("since")?,
    }))
}

#[derive(Deserialize)]
struct MatchBody {
    invoice_id: String,
}

async fn post_match(
    State(r): State<Arc<Reconcile>>,
    Path((tenant, action)): Path<(String, String)>,
    body: Bytes,
) -> Result<Response, Problem> {
    let Some(payment_id) = action.strip_suffix(":match") else {
        return Err(Problem::not_found("route"));
    };
    let m: MatchBody = serde_json::from_slice(&body).map_err(|e| {
        let issue = FieldIssue {
            field: "invoice_id".to_owned(),
            code: RejectCode::MissingField,
            message: format!("expected {{\"invoice_id\": \"...\"}}: {e}"),
        };
        Problem::invalid::<_, Value>(&[issue], &[])
    })?;
    let mut tx = r.pool.begin().await.map_err(internal)?;
    let mut settled = ledger::Settled::default();
    let result = ledger::rematch(
        &mut tx,
        &mut settled,
        &tenant,
        payment_id,
        Some(&m.invoice_id),
        r.clock.now(),
    )
    .await
    .map_err(internal)?;
    match result {
        None => {
            let known = ledger::Payment::load(&mut tx, &tenant, payment_id)
                .await
                .map_err(internal)?
                .is_some();
            if known {
                Err(Problem::new(
                    StatusCode::CONFLICT,
                    "already_matched",
                    "the payment is not waiting for a match",
                    Some(format!("payment {payment_id} was already applied")),
                ))
            } else {
                Err(Problem::not_found("payment"))
            }
        }
        Some(Err(reason)) => {
            let issue = FieldIssue {
                field: "invoice_id".to_owned(),
                code: RejectCode::InvalidValue,
                message: format!("cannot match to {}: {reason}", m.invoice_id),
            };
            Err(Problem::invalid::<_, Value>(&[issue], &[]))
        }
        Some(Ok(applied)) => {
            r.commit(tx).await.map_err(internal)?;
            r.signal(&settled).await;
            r.wake_relay();
            Ok(axum::Json(applied).into_response())
        }
    }
}

async fn get_invoice(
    State(r): State<Arc<Reconcile>>,
    Path((tenant, invoice_id)): Path<(String, String)>,
) -> Result<Response, Problem> {
    let mut conn = r.pool.acquire().await.map_err(internal)?;
    let sql = format!(
        "SELECT {INVOICE_COLUMNS}, revision, state, reference FROM reconcile.invoices WHERE tenant = $1 AND invoice_id = $2"
    );
    let Some(row) = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(&tenant)
        .bind(&invoice_id)
        .fetch_optional(&mut *conn)
        .await
        .map_err(internal)?
    else {
        return Err(Problem::not_found("invoice"));
    };
    let inv = InvoiceRow::from_row(&row).map_err(internal)?;
    let time = ledger::tenant_time(&mut conn, &tenant)
        .await
        .map_err(internal)?;
    let today = time.today(r.clock.now());
    let paid = ledger::payments_of(&mut conn, &tenant, &invoice_id)
        .await
        .map_err(internal)?;
    let statement = charges::statement(&inv.terms, &paid, today).map_err(internal)?;
    let payments: Vec<(String, NaiveDate, i64, i64, String)> = sqlx::query_as(
        "SELECT payment_id, paid_on, amount_cents, credit_cents, matched_by FROM reconcile.applications \
         WHERE tenant = $1 AND invoice_id = $2 ORDER BY applied_at",
    )
    .bind(&tenant)
    .bind(&invoice_id)
    .fetch_all(&mut *conn)
    .await
    .map_err(internal)?;
    let state: sqlx::types::Json<Value> = row.try_get("state").map_err(internal)?;
    Ok(axum::Json(json!({
        "invoice_id": inv.invoice_id,
        "customer_id": inv.customer_id,
        "status": inv.status,
        "revision": row.try_get::<Option<i64>, _>("revision").map_err(internal)?,
        "reference": row.try_get::<Option<String>, _>("reference").map_err(internal)?,
        "effective_due_date": inv.terms.effective_due_date,
        "invoice": state.0,
        "amount_due": regua_contract::events::AmountDue::from(statement.due()),
        "ledger": statement.lines,
        "payments": payments.into_iter().map(|(id, on, amount, credit, by)| json!({
            "payment_id": id, "paid_on": on, "amount_cents": amount, "credit_cents": credit, "matched_by": by,
        })).collect::<Vec<_>>(),
        "rules": {
            "fine": "once, on the first day after the effective due date, on the principal then owed",
            "interest": "simple, pro rata die on a 30-day month, on principal only, from the effective due date",
            "rounding": "each amount computed exactly, rounded half away from zero to whole cents",
            "application": "payments cover interest, then the fine, then principal; any excess is credit",
        },
    }))
    .into_response())
}

async fn get_credits(
    State(r): State<Arc<Reconcile>>,
    Path(tenant): Path<String>,
) -> Result<Response, Problem> {
    let rows: Vec<(String, String, String, i64, DateTime<Utc>)> = sqlx::query_as(
        "SELECT payment_id, invoice_id, customer_id, credit_cents, applied_at FROM reconcile.applications \
         WHERE tenant = $1 AND credit_cents > 0 ORDER BY applied_at LIMIT 1000",
    )
    .bind(&tenant)
    .fetch_all(&r.pool)
    .await
    .map_err(internal)?;
    let credits: Vec<Value> = rows
        .into_iter()
        .map(|(p, i, c, cents, at)| {
            json!({ "payment_id": p, "invoice_id": i, "customer_id": c, "credit_cents": cents, "at": at, "flag": "overpayment" })
        })
        .collect();
    Ok(axum::Json(json!({ "credits": credits })).into_response())
}

fn sha256_hex(s: &str) -> String {
    hex::encode(Sha256::digest(s.as_bytes()))
}

async fn post_pix_secret(
    State(r): State<Arc<Reconcile>>,
    Path(tenant): Path<String>,
) -> Result<Response, Problem> {
    tenant_id(&tenant)?;
    let mut bytes = [0u8; 24];
    rand::rng().fill_bytes(&mut bytes);
    let secret = hex::encode(bytes);
    sqlx::query(
        "INSERT INTO reconcile.tenants (id, timezone, test_clock, pix_secret_sha256) VALUES ($1, 'America/Sao_Paulo', false, $2) \
         ON CONFLICT (id) DO UPDATE SET pix_secret_sha256 = EXCLUDED.pix_secret_sha256",
    )
    .bind(&tenant)
    .bind(sha256_hex(&secret))
    .execute(&r.pool)
    .await
    .map_err(internal)?;
    let url = format!(
        "{}/webhooks/pix/{tenant}?hmac={secret}",
        r.config.public_url
    );
    Ok((
        StatusCode::CREATED,
        axum::Json(json!({ "secret": secret, "webhook_url": url })),
    )
        .into_response())
}

#[derive(Deserialize)]
struct PixQuery {
    hmac: Option<String>,
}

fn unauthorized(detail: &str) -> Problem {
    Problem::new(
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        "PIX webhook secret missing or wrong",
        Some(detail.to_owned()),
    )
}

async fn post_pix(
    State(r): State<Arc<Reconcile>>,
    Path(tenant): Path<String>,
    Query(q): Query<PixQuery>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Problem> {
    let presented = q.hmac.or_else(|| {
        headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::to_owned)
    });
    let Some(presented) = presented else {
        return Err(unauthorized(
            "present the secret as ?hmac=<secret> or a bearer token",
        ));
    };
    let stored: Option<Option<String>> =
        sqlx::query_scalar("SELECT pix_secret_sha256 FROM reconcile.tenants WHERE id = $1")
            .bind(&tenant)
            .fetch_optional(&r.pool)
            .await
            .map_err(internal)?;
    // Comparing digests: equal-length values whose comparison time says nothing about
    // the secret.
    if stored.flatten().as_deref() != Some(sha256_hex(&presented).as_str()) {
        return Err(unauthorized("the secret does not match this tenant's"));
    }
    let items = match serde_json::from_slice::<Value>(&body) {
        Ok(Value::Object(o)) => match o.get("pix") {
            Some(Value::Array(a)) => a.clone(),
            _ => {
                let issue = FieldIssue {
                    field: "pix".to_owned(),
                    code: RejectCode::MissingField,
                    message: "expected {\"pix\": [ ... ]}".to_owned(),
                };
                return Err(Problem::invalid::<_, Value>(&[issue], &[]));
            }
        },
        _ => {
            let issue = FieldIssue {
                field: String::new(),
                code: RejectCode::MalformedJson,
                message: "expected a JSON object {\"pix\": [ ... ]}".to_owned(),
            };
            return Err(Problem::invalid::<_, Value>(&[issue], &[]));
        }
    };
    let mut results = Vec::with_capacity(items.len());
    let mut rejected = false;
    for (n, item) in items.iter().enumerate() {
        match pix_payment(n, item) {
            Err(errors) => {
                rejected = true;
                results.push(json!({ "index": n, "outcome": "rejected", "errors": errors }));
            }
            Ok(draft) => {
                let message_id = format!("pix:{}", draft.payment_id);
                let applied = ingest(&r, &tenant, &draft, Source::PixWebhook, &message_id)
                    .await
                    .map_err(internal)?;
                let mut v = serde_json::to_value(&applied).map_err(internal)?;
                if let Some(o) = v.as_object_mut() {
                    o.insert("index".into(), json!(n));
                }
                results.push(v);
            }
        }
    }
    let status = if rejected {
        StatusCode::UNPROCESSABLE_ENTITY
    } else {
        StatusCode::OK
    };
    Ok((status, axum::Json(json!({ "results": results }))).into_response())
}

/// One entry of a PIX webhook as a payment: `endToEndId` is the payment id, `txid` the
/// reference, `valor` the amount (a decimal string, read exactly), `horario` the time.
fn pix_payment(n: usize, item: &Value) -> Result<PaymentDraft, Vec<FieldIssue<RejectCode>>> {
    let path = |f: &str| format!("pix[{n}].{f}");
    let Some(o) = item.as_object() else {
        return Err(vec![FieldIssue {
            field: format!("pix[{n}]"),
            code: RejectCode::NotAnObject,
            message: "each pix entry must be an object".to_owned(),
        }]);
    };
    let mut errors = Vec::new();
    let amount = match o.get("valor") {
        None | Some(Value::Null) => {
            errors.push(FieldIssue {
                field: path("valor"),
                code: RejectCode::MissingField,
                message: "valor is required".to_owned(),
            });
            None
        }
        Some(Value::String(v)) => {
            let cents = pix_valor(v);
            match cents {
                Some(c) if c > 0 => Some(c),
                Some(_) => {
                    errors.push(FieldIssue {
                        field: path("valor"),
                        code: RejectCode::AmountNotPositive,
                        message: "valor must be greater than zero".to_owned(),
                    });
                    None
                }
                None => {
                    errors.push(FieldIssue {
                        field: path("valor"),
                        code: RejectCode::InvalidValue,
                        message: format!(
                            "valor {v:?} must be a decimal string with exactly two places, e.g. \"123.45\""
                        ),
                    });
                    None
                }
            }
        }
        Some(_) => {
            errors.push(FieldIssue {
                field: path("valor"),
                code: RejectCode::InvalidType,
                message: "valor must be a string such as \"123.45\" (never a number)".to_owned(),
            });
            None
        }
    };
    // The rest through the one payment decoder, names mapped back on errors.
    let mut payment = serde_json::Map::new();
    for (pix, ours) in [
        ("endToEndId", "payment_id"),
        ("txid", "reference"),
        ("horario", "paid_at"),
    ] {
        if let Some(v) = o.get(pix) {
            payment.insert(ours.into(), v.clone());
        }
    }
    payment.insert("amount_cents".into(), json!(amount.unwrap_or(1)));
    payment.insert("method".into(), json!("pix"));
    let bytes = serde_json::to_vec(&Value::Object(payment)).unwrap_or_default();
    let (draft, issues) = decode_payment(&bytes);
    for mut e in issues.errors {
        let name = match e.field.as_str() {
            "payment_id" => "endToEndId",
            "reference" => "txid",
            "paid_at" => "horario",
            other => other,
        };
        e.field = path(name);
        e.message = e
            .message
            .replace("payment_id", "endToEndId")
            .replace("paid_at", "horario")
            .replace("reference", "txid");
        errors.push(e);
    }
    match draft {
        Some(d) if errors.is_empty() => Ok(d),
        _ => Err(errors),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pix_entries_become_payments_with_exact_amounts() {
        let d = pix_payment(
            0,
            &json!({"endToEndId": "E1234", "txid": "TX1", "valor": "1234.56", "horario": "2026-12-10T14:03:00.00-03:00", "infoPagador": "obrigado"}),
        )
        .unwrap();
        assert_eq!(d.amount_cents, 123_456);
        assert_eq!(d.reference.as_deref(), Some("TX1"));
        assert_eq!(d.payment_id, "E1234");
    }

    #[test]
    fn bad_pix_entries_say_which_field_in_pix_terms() {
        let e = pix_payment(2, &json!({"txid": "TX1", "valor": 10.5})).unwrap_err();
        let fields: Vec<&str> = e.iter().map(|i| i.field.as_str()).collect();
        assert!(fields.contains(&"pix[2].valor"), "{fields:?}");
        assert!(fields.contains(&"pix[2].endToEndId"), "{fields:?}");
        assert!(fields.contains(&"pix[2].horario"), "{fields:?}");
        let e = pix_payment(
            0,
            &json!({"endToEndId": "E1", "valor": "10.5", "horario": "2026-12-10T14:03:00Z"}),
        )
        .unwrap_err();
        assert_eq!(e[0].field, "pix[0].valor");
    }
}
