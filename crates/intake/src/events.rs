//! Building domain events as outbox rows.

use chrono::{DateTime, Utc};
use regua_contract::{Envelope, EventType, subjects};
use regua_platform::outbox::OutboxMessage;
use serde::Serialize;
use uuid::{NoContext, Timestamp, Uuid};

/// A UUIDv7 for `now`, taken from the injected clock rather than the system time.
pub fn new_id(now: DateTime<Utc>) -> Uuid {
    let secs = u64::try_from(now.timestamp()).unwrap_or(0);
    Uuid::new_v7(Timestamp::from_unix(
        NoContext,
        secs,
        now.timestamp_subsec_nanos(),
    ))
}

/// An enveloped event for `tenant`, ready for the outbox.
pub fn event_message<T: Serialize>(
    now: DateTime<Utc>,
    tenant: &str,
    event_type: EventType,
    data: &T,
    correlation_id: &str,
    causation_id: &str,
    traceparent: Option<String>,
) -> Result<OutboxMessage, serde_json::Error> {
    let id = new_id(now);
    let envelope = Envelope {
        id,
        event_type,
        version: 1,
        occurred_at: now,
        tenant: tenant.to_owned(),
        correlation_id: correlation_id.to_owned(),
        causation_id: causation_id.to_owned(),
        data,
    };
    Ok(OutboxMessage {
        id,
        subject: subjects::event(tenant, event_type),
        payload: serde_json::to_vec(&envelope)?,
        traceparent,
    })
}
