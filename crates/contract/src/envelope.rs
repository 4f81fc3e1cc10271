//! The envelope every domain event travels in.

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

pub use crate::events::EventType;

/// A domain event: metadata plus a typed `data` payload.
///
/// `id` is a UUIDv7 and is also the `Nats-Msg-Id` of the publish, so a relay that
/// republishes after a crash is deduplicated by JetStream. The W3C `traceparent` travels
/// in the NATS headers, not here.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Envelope<T> {
    pub id: Uuid,
    #[serde(rename = "type")]
    pub event_type: EventType,
    /// Version of the `data` schema for this type.
    pub version: u32,
    pub occurred_at: DateTime<Utc>,
    /// Tenant token from the subject; for `intake.rejected` it may name no known tenant.
    pub tenant: String,
    /// Id shared by everything one inbound request caused.
    pub correlation_id: String,
    /// Id of the message that directly caused this event.
    pub causation_id: String,
    pub data: T,
}
