//! Events intake emits: what integrators sent, once accepted or rejected.

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{CustomerState, InvoiceState};
use crate::rejection::{FieldIssue, RejectCode, WarnCode};

/// `customer.upserted`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct CustomerUpserted {
    pub customer: CustomerState,
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
