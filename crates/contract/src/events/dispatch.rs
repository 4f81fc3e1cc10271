//! Events the dispatchers emit: what happened to each message, and a debtor's
//! opt-outs and opt-ins.

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{DomainEvent, EventType};
use crate::inbound::Channel;

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
    /// `window_closed`, `test_clock` (a simulation, and the providers are not
    /// sandboxes), `permanent: ...`, `retries_exhausted: ...`, `outcome_unknown`.
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

/// What happened to a message: the six `message.*` event types, for the code that
/// decides which one a message gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MessageStatus {
    Sent,
    Delivered,
    Read,
    Failed,
    Skipped,
    Unknown,
}

impl MessageStatus {
    /// The `status` field's value: `sent`, `delivered`, ….
    pub fn as_str(self) -> &'static str {
        match self {
            MessageStatus::Sent => "sent",
            MessageStatus::Delivered => "delivered",
            MessageStatus::Read => "read",
            MessageStatus::Failed => "failed",
            MessageStatus::Skipped => "skipped",
            MessageStatus::Unknown => "unknown",
        }
    }

    pub fn event_type(self) -> EventType {
        match self {
            MessageStatus::Sent => EventType::MessageSent,
            MessageStatus::Delivered => EventType::MessageDelivered,
            MessageStatus::Read => EventType::MessageRead,
            MessageStatus::Failed => EventType::MessageFailed,
            MessageStatus::Skipped => EventType::MessageSkipped,
            MessageStatus::Unknown => EventType::MessageUnknown,
        }
    }

    /// `data` as this status's event, its `status` field set to match.
    pub fn event(self, mut data: MessageEvent) -> DomainEvent {
        data.status = self.as_str().to_owned();
        match self {
            MessageStatus::Sent => DomainEvent::MessageSent(data),
            MessageStatus::Delivered => DomainEvent::MessageDelivered(data),
            MessageStatus::Read => DomainEvent::MessageRead(data),
            MessageStatus::Failed => DomainEvent::MessageFailed(data),
            MessageStatus::Skipped => DomainEvent::MessageSkipped(data),
            MessageStatus::Unknown => DomainEvent::MessageUnknown(data),
        }
    }
}
