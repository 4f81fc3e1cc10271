//! Domain events: the `data` of an [`Envelope`], grouped by the service that emits
//! them ([`intake`], [`scheduler`], [`dispatch`], [`reconcile`], and [`platform`] for
//! any service's plumbing), and the one registry
//! that ties each event type to its payload and version ([`EventType`],
//! [`DomainEvent`]). Events carry the full state after the change, so consumers never
//! call back into the service that emitted them.
//!
//! Adding an event is one payload struct (in its service's module), one line in the
//! registry below, and one example in [`crate::proto`]; the schema, the AsyncAPI entry
//! and the subject follow from them.

pub mod dispatch;
pub mod intake;
pub mod platform;
pub mod reconcile;
pub mod scheduler;

use chrono::NaiveDate;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize, Serializer};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

pub use dispatch::{CustomerChannelOptedIn, CustomerChannelOptedOut, MessageEvent, MessageStatus};
pub use intake::{
    CustomerUpserted, IntakeRejected, InvoiceCanceled, InvoiceChanged, REJECTED_PAYLOAD_ECHO_BYTES,
    TenantCreated,
};
pub use platform::OutboxMessageParked;
pub use reconcile::{InvoicePaid, InvoicePartiallyPaid, PaymentMatched, PaymentUnmatched};
pub use scheduler::{InvoiceEscalated, TenantClockAdvanced};

use crate::Envelope;
use crate::inbound::{Channel, LateFee, PaymentData};

/// The registry: every event type with its name (also the subject suffix), the version
/// of its `data` schema, its payload type and a summary. It generates [`EventType`] and
/// [`DomainEvent`], so a type can never travel with another type's payload.
macro_rules! registry {
    ($( $variant:ident: $name:literal version $version:literal, $payload:ty, $summary:literal; )*) => {
        /// Every domain event type of contract v1. The string form is also the subject suffix.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
        pub enum EventType {
            $( #[serde(rename = $name)] $variant, )*
        }

        impl EventType {
            /// Every event type, in the registry's order.
            pub const ALL: &'static [EventType] = &[$( EventType::$variant, )*];

            pub fn as_str(self) -> &'static str {
                match self { $( EventType::$variant => $name, )* }
            }

            /// The version of this type's `data` schema (the envelope's `version`).
            pub fn version(self) -> u32 {
                match self { $( EventType::$variant => $version, )* }
            }

            /// What the event says happened, in one line (the AsyncAPI summary).
            pub fn summary(self) -> &'static str {
                match self { $( EventType::$variant => $summary, )* }
            }

            /// The JSON Schema of an envelope of this type.
            pub fn envelope_schema(self) -> schemars::Schema {
                match self { $( EventType::$variant => schemars::schema_for!(Envelope<$payload>), )* }
            }
        }

        /// A domain event's `data`, typed: one variant per [`EventType`], holding that
        /// type's payload. Producers build one to emit; consumers decode one from an
        /// envelope ([`DomainEvent::decode`]).
        #[derive(Debug, Clone, PartialEq)]
        pub enum DomainEvent {
            $( $variant($payload), )*
        }

        impl DomainEvent {
            pub fn event_type(&self) -> EventType {
                match self { $( DomainEvent::$variant(_) => EventType::$variant, )* }
            }

            /// The `data` of an envelope of type `kind`.
            pub fn decode(kind: EventType, data: &RawValue) -> Result<DomainEvent, serde_json::Error> {
                Ok(match kind {
                    $( EventType::$variant => DomainEvent::$variant(serde_json::from_str(data.get())?), )*
                })
            }
        }

        /// Serializes the payload alone, as an envelope's `data`.
        impl Serialize for DomainEvent {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                match self { $( DomainEvent::$variant(d) => d.serialize(s), )* }
            }
        }
    };
}

registry! {
    TenantCreated: "tenant.created" version 1, TenantCreated, "A tenant was created";
    CustomerUpserted: "customer.upserted" version 1, CustomerUpserted, "A customer was created or changed";
    InvoiceOpened: "invoice.opened" version 1, InvoiceChanged, "An invoice was accepted for the first time";
    InvoiceUpdated: "invoice.updated" version 1, InvoiceChanged, "An open invoice changed";
    InvoiceCanceled: "invoice.canceled" version 1, InvoiceCanceled, "An invoice was canceled";
    IntakeRejected: "intake.rejected" version 1, IntakeRejected, "An inbound message was rejected, with reasons";
    InvoiceEscalated: "invoice.escalated" version 1, InvoiceEscalated, "A régua step escalated an invoice (negativação, legal)";
    InvoicePaid: "invoice.paid" version 1, InvoicePaid, "An invoice was settled; the régua stops and thanks the customer";
    CustomerChannelOptedOut: "customer.channel_opted_out" version 1, CustomerChannelOptedOut, "A customer opted out of one channel (unsubscribe link, STOP reply)";
    CustomerChannelOptedIn: "customer.channel_opted_in" version 1, CustomerChannelOptedIn, "A customer asked to hear on a channel again";
    MessageSent: "message.sent" version 1, MessageEvent, "A message was accepted by the provider";
    MessageDelivered: "message.delivered" version 1, MessageEvent, "The provider reported delivery";
    MessageRead: "message.read" version 1, MessageEvent, "The recipient read the message (WhatsApp)";
    MessageFailed: "message.failed" version 1, MessageEvent, "A message failed for good on this channel";
    MessageSkipped: "message.skipped" version 1, MessageEvent, "A command was not sent: guarded out";
    MessageUnknown: "message.unknown" version 1, MessageEvent, "A worker died between the provider call and recording it; not resent";
    InvoicePartiallyPaid: "invoice.partially_paid" version 1, InvoicePartiallyPaid, "A payment covered part of an invoice; the régua goes on with the balance";
    PaymentMatched: "payment.matched" version 1, PaymentMatched, "A payment was tied to an invoice and applied";
    PaymentUnmatched: "payment.unmatched" version 1, PaymentUnmatched, "A payment matched no single open invoice; it waits for review";
    TenantClockAdvanced: "tenant.clock_advanced" version 1, TenantClockAdvanced, "A test-clock tenant's simulated time moved";
    OutboxMessageParked: "outbox.message_parked" version 1, OutboxMessageParked, "A message too large to publish was moved aside; later messages flow";
}

/// Whether the debtor is a person (CPF: consumer law applies), a company (CNPJ), or not
/// identified by a Brazilian document.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum DocumentKind {
    Cpf,
    Cnpj,
}

/// A customer after validation and normalisation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct CustomerState {
    pub customer_id: String,
    pub name: String,
    /// Digits only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub document: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub document_kind: Option<DocumentKind>,
    /// Lowercased domain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    /// E.164.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phone: Option<String>,
    pub whatsapp_opt_in: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preferred_channel: Option<Channel>,
    /// IANA zone, the tenant's when the integrator gave none.
    pub timezone: String,
    pub locale: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub segment: Option<String>,
}

/// An invoice after validation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct InvoiceState {
    pub invoice_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<u64>,
    pub customer_id: String,
    /// The debtor's document kind when the invoice was accepted; `cpf` means consumer
    /// law (CDC) applies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub debtor_kind: Option<DocumentKind>,
    pub amount_cents: i64,
    pub currency: String,
    pub issued_on: NaiveDate,
    pub due_date: NaiveDate,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Nosso número, PIX `txid` or the integrator's own reference.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payment: Option<PaymentData>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub late_fee: Option<LateFee>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub metadata: Map<String, Value>,
}

/// What an invoice owes on one day (see `GET /v1/tenants/{tenant}/invoices/{id}`).
/// Fine and interest follow the rules in `regua_domain::charges`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct AmountDue {
    /// The day it is computed for, on the tenant's calendar (test clock included).
    pub on: NaiveDate,
    pub principal_cents: i64,
    pub fine_cents: i64,
    pub interest_cents: i64,
    pub paid_cents: i64,
    pub balance_cents: i64,
    pub days_late: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_type_decodes_what_its_payload_serializes() {
        let ex = crate::proto::Examples::new();
        for &kind in EventType::ALL {
            let event = ex.event(kind);
            assert_eq!(event.event_type(), kind);
            let raw = serde_json::value::to_raw_value(&event).unwrap();
            assert_eq!(DomainEvent::decode(kind, &raw).unwrap(), event);
        }
    }
}
