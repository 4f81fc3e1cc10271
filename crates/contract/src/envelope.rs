//! The envelope every domain event travels in.

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Every domain event type of contract v1. The string form is also the subject suffix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum EventType {
    #[serde(rename = "tenant.created")]
    TenantCreated,
    #[serde(rename = "customer.upserted")]
    CustomerUpserted,
    #[serde(rename = "invoice.opened")]
    InvoiceOpened,
    #[serde(rename = "invoice.updated")]
    InvoiceUpdated,
    #[serde(rename = "invoice.canceled")]
    InvoiceCanceled,
    #[serde(rename = "intake.rejected")]
    IntakeRejected,
    #[serde(rename = "invoice.escalated")]
    InvoiceEscalated,
    #[serde(rename = "invoice.paid")]
    InvoicePaid,
    #[serde(rename = "customer.channel_opted_out")]
    CustomerChannelOptedOut,
    #[serde(rename = "customer.channel_opted_in")]
    CustomerChannelOptedIn,
    #[serde(rename = "message.sent")]
    MessageSent,
    #[serde(rename = "message.delivered")]
    MessageDelivered,
    #[serde(rename = "message.read")]
    MessageRead,
    #[serde(rename = "message.failed")]
    MessageFailed,
    #[serde(rename = "message.skipped")]
    MessageSkipped,
    #[serde(rename = "message.unknown")]
    MessageUnknown,
    #[serde(rename = "invoice.partially_paid")]
    InvoicePartiallyPaid,
    #[serde(rename = "payment.matched")]
    PaymentMatched,
    #[serde(rename = "payment.unmatched")]
    PaymentUnmatched,
    #[serde(rename = "tenant.clock_advanced")]
    TenantClockAdvanced,
}

impl EventType {
    pub const ALL: [EventType; 20] = [
        EventType::TenantCreated,
        EventType::CustomerUpserted,
        EventType::InvoiceOpened,
        EventType::InvoiceUpdated,
        EventType::InvoiceCanceled,
        EventType::IntakeRejected,
        EventType::InvoiceEscalated,
        EventType::InvoicePaid,
        EventType::CustomerChannelOptedOut,
        EventType::CustomerChannelOptedIn,
        EventType::MessageSent,
        EventType::MessageDelivered,
        EventType::MessageRead,
        EventType::MessageFailed,
        EventType::MessageSkipped,
        EventType::MessageUnknown,
        EventType::InvoicePartiallyPaid,
        EventType::PaymentMatched,
        EventType::PaymentUnmatched,
        EventType::TenantClockAdvanced,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventType::TenantCreated => "tenant.created",
            EventType::CustomerUpserted => "customer.upserted",
            EventType::InvoiceOpened => "invoice.opened",
            EventType::InvoiceUpdated => "invoice.updated",
            EventType::InvoiceCanceled => "invoice.canceled",
            EventType::IntakeRejected => "intake.rejected",
            EventType::InvoiceEscalated => "invoice.escalated",
            EventType::InvoicePaid => "invoice.paid",
            EventType::CustomerChannelOptedOut => "customer.channel_opted_out",
            EventType::CustomerChannelOptedIn => "customer.channel_opted_in",
            EventType::MessageSent => "message.sent",
            EventType::MessageDelivered => "message.delivered",
            EventType::MessageRead => "message.read",
            EventType::MessageFailed => "message.failed",
            EventType::MessageSkipped => "message.skipped",
            EventType::MessageUnknown => "message.unknown",
            EventType::InvoicePartiallyPaid => "invoice.partially_paid",
            EventType::PaymentMatched => "payment.matched",
            EventType::PaymentUnmatched => "payment.unmatched",
            EventType::TenantClockAdvanced => "tenant.clock_advanced",
        }
    }
}

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
