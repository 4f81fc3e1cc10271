//! Tenants: creation, with the legal identity every collection message must carry
//! (CDC art. 42-A). The platform keeps them and their API keys
//! ([`regua_platform::tenancy`]); intake validates them and emits `tenant.created`.

use chrono::{DateTime, Utc};
use regua_contract::decode::Issues;
use regua_contract::events::TenantCreated;
use regua_contract::{DomainEvent, RejectCode, TenantId};
use regua_domain::Document;
use regua_platform::outbox::event_message;
use regua_platform::secrets;
use regua_platform::tenancy::{self, Tenant};
use serde::Serialize;
use serde_json::Value;
use sqlx::PgPool;

use crate::OUTBOX;

/// The answer to creating a tenant: the tenant as `tenant.created` describes it, plus
/// its `api_key`, shown only here.
#[derive(Debug, Clone, Serialize)]
pub struct CreatedTenant {
    #[serde(flatten)]
    pub tenant: TenantCreated,
    pub api_key: String,
    pub created_at: DateTime<Utc>,
}

/// Why a tenant could not be created.
#[derive(Debug, thiserror::Error)]
pub enum CreateTenantError {
    #[error("invalid tenant")]
    Invalid(Issues),
    #[error("tenant {0} already exists")]
    Exists(String),
    #[error("postgres: {0}")]
    Db(#[from] sqlx::Error),
    #[error("serializing: {0}")]
    Json(#[from] serde_json::Error),
}

/// Validates a `POST /v1/tenants` body, reporting every problem.
pub fn validate_new_tenant(body: &Value) -> Result<Tenant, Issues> {
    let mut issues = Issues::default();
    let Some(map) = body.as_object() else {
        issues.error("", RejectCode::NotAnObject, "body must be a JSON object");
        return Err(issues);
    };
    let text = |issues: &mut Issues, name: &str, required: bool| -> Option<String> {
        match map.get(name) {
            None | Some(Value::Null) => {
                if required {
                    issues.error(
                        name,
                        RejectCode::MissingField,
                        format!("{name} is required"),
                    );
                }
                None
            }
            Some(Value::String(s)) if !s.trim().is_empty() && s.len() <= 500 => {
                Some(s.trim().to_owned())
            }
            Some(Value::String(_)) => {
                issues.error(
                    name,
                    RejectCode::InvalidValue,
                    format!("{name} must be 1 to 500 characters"),
                );
                None
            }
            Some(_) => {
                issues.error(
                    name,
                    RejectCode::InvalidType,
                    format!("{name} must be a string"),
                );
                None
            }
        }
    };
    let id = text(&mut issues, "id", true).and_then(|s| match TenantId::parse(&s) {
        Ok(id) => Some(id),
        Err(e) => {
            issues.error("id", RejectCode::InvalidValue, e.to_string());
            None
        }
    });
    let legal_name = text(&mut issues, "legal_name", true);
    let cnpj = text(&mut issues, "cnpj", true).and_then(|s| match Document::parse(&s) {
        Ok(Document::Cnpj(c)) => Some(c),
        Ok(Document::Cpf(_)) => {
            issues.error(
                "cnpj",
                RejectCode::InvalidCnpj,
                "a creditor is identified by a CNPJ, not a CPF",
            );
            None
        }
        Err(_) => {
            issues.error(
                "cnpj",
                RejectCode::InvalidCnpj,
                "cnpj check digits do not verify",
            );
            None
        }
    });
    let address = text(&mut issues, "address", true);
    let contact = text(&mut issues, "contact", true);
    let timezone =
        text(&mut issues, "timezone", false).map_or(Some("America/Sao_Paulo".to_owned()), |tz| {
            if tz.parse::<chrono_tz::Tz>().is_ok() {
                Some(tz)
            } else {
                issues.error(
                    "timezone",
                    RejectCode::InvalidTimezone,
                    format!("{tz} is not an IANA time zone"),
                );
                None
            }
        });
    let test_clock = match map.get("test_clock") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => {
            issues.error(
                "test_clock",
                RejectCode::InvalidType,
                "test_clock must be true or false",
            );
            false
        }
    };
    let now =
        text(&mut issues, "now", false).and_then(|s| match DateTime::parse_from_rfc3339(&s) {
            Ok(t) => Some(t.with_timezone(&Utc)),
            Err(_) => {
                issues.error(
                    "now",
                    RejectCode::InvalidDate,
                    "now must be an RFC 3339 instant",
                );
                None
            }
        });
    if now.is_some() && !test_clock {
        issues.error(
            "now",
            RejectCode::InvalidValue,
            "now is only meaningful with test_clock: true",
        );
    }
    if issues.is_rejected() {
        return Err(issues);
    }
    match (id, legal_name, cnpj, address, contact, timezone) {
        (Some(id), Some(legal_name), Some(cnpj), Some(address), Some(contact), Some(timezone)) => {
            Ok(Tenant {
                id,
                legal_name,
                cnpj,
                address,
                contact,
                timezone,
                test_clock,
                clock_start: now,
            })
        }
        _ => Err(issues),
    }
}

/// Creates a tenant and emits `tenant.created`, in one transaction.
pub async fn create_tenant(
    pool: &PgPool,
    now: DateTime<Utc>,
    new: Tenant,
    traceparent: Option<String>,
) -> Result<CreatedTenant, CreateTenantError> {
    let api_key = secrets::new_api_key(new.id.as_str());
    let mut tx = pool.begin().await?;
    if !tenancy::register(&mut tx, &new, &api_key, now).await? {
        return Err(CreateTenantError::Exists(new.id.to_string()));
    }
    let tenant = new.created();
    let correlation = format!("tenant-create:{}", new.id);
    let msg = event_message(
        now,
        new.id.as_str(),
        &DomainEvent::TenantCreated(tenant.clone()),
        &correlation,
        &correlation,
        traceparent,
    )?;
    OUTBOX.enqueue(&mut tx, &[msg]).await?;
    tx.commit().await?;
    Ok(CreatedTenant {
        tenant,
        api_key,
        created_at: now,
    })
}
