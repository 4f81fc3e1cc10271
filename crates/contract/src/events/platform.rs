//! Events any service's platform kit emits about its own plumbing.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// `outbox.message_parked`: a message a service wrote could never be published (it is
/// larger than the NATS server accepts), so its outbox relay moved it aside, to
/// `<schema>.outbox_parked`, instead of retrying it forever ahead of every later
/// message. Nothing it would have caused happens until an operator deals with it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct OutboxMessageParked {
    /// The parked message's id (its `Nats-Msg-Id`).
    pub message_id: String,
    /// The subject it was for.
    pub subject: String,
    /// The outbox table it left, e.g. `scheduler.outbox`.
    pub outbox: String,
    /// Its payload's size.
    pub bytes: u64,
    pub reason: String,
}
