//! Events the scheduler emits: escalations, and a test clock's moves.

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

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

/// `tenant.clock_advanced`: a test-clock tenant's simulated time moved to `now`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct TenantClockAdvanced {
    pub now: DateTime<Utc>,
}
