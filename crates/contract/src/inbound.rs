//! Payloads integrators publish on `regua.v1.in.<tenant>.<entity>.<action>` (or POST over
//! HTTP). These types define the JSON shape and its schema; intake decodes with its own
//! field-by-field reader so that every problem is reported, not just the first.

use chrono::{DateTime, NaiveDate, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Upper bounds that are part of the contract.
pub mod limits {
    /// Largest inbound message body, in bytes.
    pub const MAX_PAYLOAD_BYTES: usize = 64 * 1024;
    /// Longest id (`invoice_id`, `customer_id`, `payment_id`), in characters.
    pub const MAX_ID_CHARS: usize = 128;
    /// Longest free text (`name`, `description`, payment data), in characters.
    pub const MAX_TEXT_CHARS: usize = 1000;
    /// Most tags on one invoice.
    pub const MAX_TAGS: usize = 32;
    /// Largest `metadata` object, serialized, in bytes.
    pub const MAX_METADATA_BYTES: usize = 4096;
    /// Most invoices in one HTTP batch.
    pub const MAX_BATCH: usize = 1000;
    /// Highest late fine on consumer (CPF) debt, CDC art. 52 §1: 2% (the domain's rule).
    pub const MAX_CONSUMER_FINE_BPS: u32 = regua_domain::charges::MAX_CONSUMER_FINE_BPS;
}

/// A channel a debtor can be reached on.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Channel {
    Email,
    Sms,
    Whatsapp,
}

impl Channel {
    pub const ALL: [Channel; 3] = [Channel::Email, Channel::Sms, Channel::Whatsapp];

    pub fn as_str(self) -> &'static str {
        match self {
            Channel::Email => "email",
            Channel::Sms => "sms",
            Channel::Whatsapp => "whatsapp",
        }
    }

    /// The channel named `s` (`email`, `sms`, `whatsapp`).
    pub fn parse(s: &str) -> Option<Channel> {
        Channel::ALL.into_iter().find(|c| c.as_str() == s)
    }
}

/// `customer.upsert`, and the embedded form of an invoice's `customer`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct CustomerUpsert {
    /// The integrator's id, unique per tenant.
    pub customer_id: String,
    pub name: String,
    /// CPF (11 digits) or CNPJ (14 digits), punctuation allowed; check digits are
    /// verified. Omit it for foreign customers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub document: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    /// E.164, e.g. `+5511987654321`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phone: Option<String>,
    #[serde(default)]
    pub whatsapp_opt_in: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preferred_channel: Option<Channel>,
    /// IANA zone; defaults to the tenant's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timezone: Option<String>,
    /// BCP 47; defaults to `pt-BR`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locale: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub segment: Option<String>,
}

/// A reference to a customer already known to regua.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct CustomerReference {
    pub customer_id: String,
}

/// An invoice's `customer`: a full customer (upserted with the invoice) or a bare
/// reference `{"customer_id": ...}` to one already known.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum InvoiceCustomer {
    Embedded(CustomerUpsert),
    Reference(CustomerReference),
}

/// How to pay. All optional; messages show whichever are present.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct PaymentData {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pix_copy_paste: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boleto_line: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payment_url: Option<String>,
}

/// Late charges, in basis points (100 bps = 1%).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct LateFee {
    /// One-off fine after the due date. At most 200 on consumer (CPF) invoices.
    #[serde(default)]
    pub fine_bps: u32,
    /// Interest per month, applied pro rata die.
    #[serde(default)]
    pub monthly_interest_bps: u32,
}

/// `invoice.upsert`: create or replace an invoice.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct InvoiceUpsert {
    /// The integrator's id, unique per tenant.
    pub invoice_id: String,
    /// Optional, monotonic. An upsert whose revision is not newer than the stored one
    /// changes nothing and is reported as `stale`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<u64>,
    /// The debtor, embedded or by reference. Alternatively give `customer_id`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub customer: Option<InvoiceCustomer>,
    /// A customer already known; an alternative to `customer`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub customer_id: Option<String>,
    /// Integer minor units (centavos), > 0.
    pub amount_cents: i64,
    /// ISO 4217; defaults to `BRL`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub currency: Option<String>,
    pub issued_on: NaiveDate,
    pub due_date: NaiveDate,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// What a payment names to settle this invoice: the boleto's nosso número, the PIX
    /// `txid`, or the integrator's own reference. Unique per tenant among open invoices;
    /// reconciliation matches `payment.received.reference` against it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payment: Option<PaymentData>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub late_fee: Option<LateFee>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    /// A small free-form object (at most 4 KiB serialized), carried through unchanged.
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub metadata: Map<String, Value>,
}

/// `invoice.cancel`: the invoice is no longer owed. Canceling is final; it may arrive
/// before the invoice itself, in which case a later upsert is reported `stale`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct InvoiceCancel {
    pub invoice_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// How a payment was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum PaymentMethod {
    Pix,
    Boleto,
    Card,
    Transfer,
    Cash,
}

/// `payment.received`: money arrived. The stream carries it now; reconciliation
/// consumes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct PaymentReceived {
    /// Unique per tenant; the same id twice has no second effect.
    pub payment_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub invoice_id: Option<String>,
    /// Nosso número, PIX txid or the integrator's own reference.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference: Option<String>,
    pub amount_cents: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub currency: Option<String>,
    pub paid_at: DateTime<Utc>,
    pub method: PaymentMethod,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payer_document: Option<String>,
}
