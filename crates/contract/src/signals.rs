//! Signals: core NATS messages between regua services, outside every stream.
//!
//! A signal is a shortcut that makes something happen sooner; the durable domain event
//! it shadows makes it happen for sure. A signal may be lost (no subscriber at that
//! moment, a broker restart, a slow consumer) and nothing depends on it arriving.

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// On `regua.v1.sig.<tenant>.invoice.settled`, published by reconciliation right after
/// the commit that settled the invoice, so that the scheduler halts its dunning without
/// waiting for `invoice.paid` to pass through the outbox and the event stream. The
/// `invoice.paid` event (`event_id`) follows and is applied in full as always.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct InvoiceSettled {
    pub invoice_id: String,
    /// The payment that settled it.
    pub payment_id: String,
    /// The `occurred_at` of the `invoice.paid` event (the tenant's clock: simulated on a
    /// test clock).
    pub settled_at: DateTime<Utc>,
    /// The id of that `invoice.paid` event.
    pub event_id: Uuid,
}
