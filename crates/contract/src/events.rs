//! Domain event payloads: the `data` of an [`Envelope`](crate::Envelope). Events carry
//! the full state after the change, so consumers never call back into intake.

use chrono::{DateTime, NaiveDate, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::inbound::{Channel, LateFee, PaymentData};
use crate::rejection::{FieldIssue, RejectCode, WarnCode};

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

/// `customer.upserted`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct CustomerUpserted {
    pub customer: CustomerState,
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

/// `invoice.opened` and `invoice.updated`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct InvoiceChanged {
    pub invoice: InvoiceState,
}

/// `invoice.canceled`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct InvoiceCanceled {
    pub invoice_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// False when the cancel arrived before any upsert: nothing was open, and a later
    /// upsert of this invoice will be `stale`.
    pub was_open: bool,
}

/// `intake.rejected`: an inbound message that changed nothing, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct IntakeRejected {
    /// The subject it arrived on (for HTTP, the subject it would have used).
    pub source_subject: String,
    /// Its `Nats-Msg-Id`, or the id intake assigned when there was none.
    pub message_id: String,
    /// Its sequence in the inbound stream, when it came through NATS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream_sequence: Option<u64>,
    pub errors: Vec<FieldIssue<RejectCode>>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<FieldIssue<WarnCode>>,
    /// The payload as text (lossy UTF-8), cut at 4 KiB.
    pub payload: String,
    /// Size of the original payload, in bytes.
    pub payload_bytes: usize,
    pub payload_truncated: bool,
}

impl IntakeRejected {
    /// The report of `payload`, echoed up to [`REJECTED_PAYLOAD_ECHO_BYTES`].
    pub fn new(
        source_subject: String,
        message_id: String,
        stream_sequence: Option<u64>,
        errors: Vec<FieldIssue<RejectCode>>,
        warnings: Vec<FieldIssue<WarnCode>>,
        payload: &[u8],
    ) -> IntakeRejected {
        let echo_len = payload.len().min(REJECTED_PAYLOAD_ECHO_BYTES);
        IntakeRejected {
            source_subject,
            message_id,
            stream_sequence,
            errors,
            warnings,
            payload: String::from_utf8_lossy(&payload[..echo_len]).into_owned(),
            payload_bytes: payload.len(),
            payload_truncated: payload.len() > echo_len,
        }
    }
}

/// `tenant.created`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct TenantCreated {
    pub id: String,
    pub legal_name: String,
    pub cnpj: String,
    pub address: String,
    pub contact: String,
    pub timezone: String,
    pub test_clock: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub now: Option<DateTime<Utc>>,
}

/// Largest payload echoed in an `intake.rejected` event, in bytes.
pub const REJECTED_PAYLOAD_ECHO_BYTES: usize = 4096;

/// `invoice.escalated`: a régua step escalated the invoice (emitted by the scheduler).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct InvoiceEscalated {
    pub invoice_id: String,
    pub customer_id: String,
    /// `negativacao`, `legal`, or a level the tenant's policy names.
    pub level: String,
    pub step: String,
    pub policy: String,
    pub policy_version: u32,
}

/// `invoice.paid`: the invoice is settled (emitted by reconciliation). The scheduler
/// cancels every pending step in the same transaction as it records this, and sends
/// the policy's thank-you once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct InvoicePaid {
    pub invoice_id: String,
    pub customer_id: String,
    pub paid_at: DateTime<Utc>,
    pub amount_paid_cents: i64,
    pub currency: String,
    /// Days after the effective due date; 0 when paid on time.
    pub days_late: u32,
    /// Paid beyond the amount due, held as the customer's credit (and flagged for
    /// review); 0 when the payment was exact.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub overpaid_cents: i64,
}

fn is_zero(v: &i64) -> bool {
    *v == 0
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

/// `invoice.partially_paid`: a payment covered part of the invoice. The régua goes
/// on; later messages state `balance_cents`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct InvoicePartiallyPaid {
    pub invoice_id: String,
    pub customer_id: String,
    pub payment_id: String,
    pub paid_at: DateTime<Utc>,
    /// This payment.
    pub amount_paid_cents: i64,
    pub currency: String,
    /// The account after it, on the payment's day.
    pub due: AmountDue,
}

/// `payment.matched`: a payment was tied to an invoice and applied to its ledger.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct PaymentMatched {
    pub payment_id: String,
    pub invoice_id: String,
    pub customer_id: String,
    pub amount_cents: i64,
    pub currency: String,
    pub paid_at: DateTime<Utc>,
    /// `invoice_id`, `reference`, `document_amount` (the payer's document and the
    /// exact amount of their single open invoice) or `manual`.
    pub matched_by: String,
    /// The invoice is settled by it.
    pub settled: bool,
    /// The part beyond what was due, held as credit; 0 when none.
    pub credit_cents: i64,
}

/// `payment.unmatched`: a payment no rule could tie to one open invoice. It waits in
/// `GET /v1/tenants/{tenant}/payments/unmatched` for a manual match.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct PaymentUnmatched {
    pub payment_id: String,
    pub amount_cents: i64,
    pub currency: String,
    pub paid_at: DateTime<Utc>,
    /// `unknown_invoice`, `unknown_reference`, `no_candidate`, `ambiguous`,
    /// `invoice_closed` or `currency_mismatch`.
    pub reason: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub invoice_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference: Option<String>,
}

/// `tenant.clock_advanced`: a test-clock tenant's simulated time moved to `now`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct TenantClockAdvanced {
    pub now: DateTime<Utc>,
}

/// `customer.channel_opted_out`: the customer asked not to be contacted on `channel`
/// (an e-mail one-click unsubscribe, an SMS `SAIR`/`PARAR`/`STOP`/`CANCELAR`, a
/// WhatsApp "parar"). No later message goes out on that channel until
/// `customer.channel_opted_in`; pending steps fall back to other channels.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct CustomerChannelOptedOut {
    pub customer_id: String,
    pub channel: Channel,
    /// How the customer asked: `email_unsubscribe`, `sms_reply`, `whatsapp_reply`.
    pub source: String,
}

/// `customer.channel_opted_in`: the customer asked to hear on `channel` again (an SMS
/// or WhatsApp reply of `VOLTAR`/`START`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct CustomerChannelOptedIn {
    pub customer_id: String,
    pub channel: Channel,
    pub source: String,
}

/// `message.sent|delivered|read|failed|skipped|unknown`: what happened to one message.
/// One shape for all six; `status` repeats the event type.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct MessageEvent {
    /// The scheduler's command id.
    pub command_id: String,
    /// `sent`, `delivered`, `read`, `failed`, `skipped` or `unknown`.
    pub status: String,
    pub channel: Channel,
    /// `smtp`, `twilio` or `whatsapp_cloud`.
    pub provider: String,
    /// The provider's id (the e-mail `Message-ID`, the Twilio `sid`, the `wamid`);
    /// absent when nothing was accepted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider_message_id: Option<String>,
    pub customer_id: String,
    pub invoice_ids: Vec<String>,
    pub step: String,
    /// When the message was handed to the provider, on the platform clock (simulated
    /// for a test-clock tenant); absent when it never was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sent_at: Option<DateTime<Utc>>,
    /// When this status was observed, on the same clock.
    pub at: DateTime<Utc>,
    /// Why it failed or was skipped: `invoice_closed`, `opted_out`, `no_whatsapp_opt_in`,
    /// `window_closed`, `permanent: ...`, `retries_exhausted: ...`, `outcome_unknown`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// For `failed`: the next channel the message moved to, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback_to: Option<Channel>,
    /// Provider calls made for this (step, channel).
    pub attempts: u32,
    /// SMS only: segments billed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub segments: Option<u32>,
}
