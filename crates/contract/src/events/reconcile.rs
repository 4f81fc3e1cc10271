//! Events reconciliation emits: payments matched or waiting, invoices paid in part or
//! in full.

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::AmountDue;

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
