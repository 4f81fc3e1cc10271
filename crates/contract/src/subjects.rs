//! Subjects, streams and durable consumer names. Services never spell a subject
//! themselves: they call these functions.

use std::fmt;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// First token of every regua subject.
pub const ROOT: &str = "regua";

/// Stream over `regua.v1.in.>`: what integrators publish. Its PubAck means durable.
pub const STREAM_INBOUND: &str = "REGUA_IN";
/// Stream over `regua.v1.evt.>`: domain events, published only through outboxes.
pub const STREAM_EVENTS: &str = "REGUA_EVT";
/// Stream over `regua.v1.dlq.>`: messages that exhausted their deliveries, with a reason.
pub const STREAM_DEAD_LETTER: &str = "REGUA_DLQ";

/// Stream over `regua.v1.cmd.>`: work for the channel dispatchers. Work-queue retention:
/// a command is removed once a dispatcher acks it.
pub const STREAM_COMMANDS: &str = "REGUA_CMD";

/// Durable pull consumer of the intake service on [`STREAM_INBOUND`].
pub const CONSUMER_INTAKE: &str = "intake";
/// Durable pull consumer of the scheduler on [`STREAM_EVENTS`].
pub const CONSUMER_SCHEDULER: &str = "scheduler";
/// The dispatchers' durable consumer of domain events (invoices closed, opt-outs).
pub const CONSUMER_DISPATCH_STATE: &str = "dispatch-state";
/// Reconciliation's durable consumer of `payment.received` on [`STREAM_INBOUND`].
pub const CONSUMER_RECONCILE: &str = "reconcile";
/// Reconciliation's durable consumer of domain events (tenants, customers, invoices).
pub const CONSUMER_RECONCILE_STATE: &str = "reconcile-state";

/// The scheduler's durable consumer of every domain event, for the journey timeline.
pub const CONSUMER_TIMELINE: &str = "scheduler-timeline";
/// The scheduler's durable consumer of `invoice.paid` alone: halts the invoice's
/// pending steps at once, apart from the in-order consumer.
pub const CONSUMER_SCHEDULER_HALT: &str = "scheduler-halt";

/// The queue group of the scheduler replicas subscribed to [`settled_any_tenant`]: each
/// signal reaches one of them.
pub const QUEUE_SCHEDULER_HALT: &str = "scheduler-halt";

/// The durable consumer one channel's dispatchers share: `dispatch-<channel>`.
pub fn dispatch_consumer(channel: crate::inbound::Channel) -> String {
    format!("dispatch-{}", channel.as_str())
}

/// Header carrying the reason on a dead-lettered message.
pub const HEADER_DLQ_REASON: &str = "Regua-Dlq-Reason";
/// Header carrying the original subject on a dead-lettered message.
pub const HEADER_DLQ_SUBJECT: &str = "Regua-Dlq-Subject";
/// Header carrying the original stream sequence on a dead-lettered message.
pub const HEADER_DLQ_STREAM_SEQ: &str = "Regua-Dlq-Stream-Seq";
/// Header carrying the original `Nats-Msg-Id` on a dead-lettered message (the copy
/// itself must not be deduplicated against the original, so it cannot keep it).
pub const HEADER_DLQ_MSG_ID: &str = "Regua-Dlq-Msg-Id";

/// Header on an inbound message asking intake to publish the message's outcome (JSON:
/// `message_id`, `outcome`, `errors`, `warnings`, `reason`) to this core NATS subject
/// once it is committed. Intake's HTTP API uses it to answer with the real outcome.
pub const HEADER_REPLY_TO: &str = "Regua-Reply-To";

/// Header on an inbound message naming the id intake records it under (its outcome is
/// read at `GET /v1/tenants/{tenant}/messages/{id}`). Without it, the `Nats-Msg-Id`.
/// The HTTP API sets it to the caller's `Idempotency-Key`, and the `Nats-Msg-Id` to
/// [`scoped_message_id`], so that JetStream's duplicate window, which spans every
/// tenant's messages, never drops one tenant's message for another's.
pub const HEADER_MESSAGE_ID: &str = "Regua-Message-Id";

/// Longest message id an integrator may give (an `Idempotency-Key`, a
/// `Regua-Message-Id`), in bytes.
pub const MAX_MESSAGE_ID_BYTES: usize = 200;

/// The `Nats-Msg-Id` of `tenant`'s message `id`: unique across tenants, for a duplicate
/// window that spans the whole inbound stream.
pub fn scoped_message_id(tenant: &TenantId, id: &str) -> String {
    format!("{}:{id}", tenant.as_str())
}

/// `regua.v1.in.>`
pub fn inbound_all() -> String {
    format!("{ROOT}.v1.in.>")
}

/// `regua.v1.in.<tenant>.<entity>.<action>`
pub fn inbound(tenant: &TenantId, kind: InboundKind) -> String {
    format!("{ROOT}.v1.in.{}.{}", tenant.as_str(), kind.suffix())
}

/// `regua.v1.in.*.<entity>.<action>`: one inbound kind, every tenant.
pub fn inbound_any_tenant(kind: InboundKind) -> String {
    format!("{ROOT}.v1.in.*.{}", kind.suffix())
}

/// `regua.v1.evt.>`
pub fn events_all() -> String {
    format!("{ROOT}.v1.evt.>")
}

/// `regua.v1.evt.<tenant>.<entity>.<event>`; `tenant` is a raw subject token because a
/// rejection may concern a tenant that does not exist.
pub fn event(tenant_token: &str, kind: crate::EventType) -> String {
    format!("{ROOT}.v1.evt.{tenant_token}.{}", kind.as_str())
}

/// `regua.v1.evt.*.<entity>.<event>`: one event type across tenants.
pub fn event_any_tenant(kind: crate::EventType) -> String {
    format!("{ROOT}.v1.evt.*.{}", kind.as_str())
}

/// `regua.v1.cmd.>`
pub fn commands_all() -> String {
    format!("{ROOT}.v1.cmd.>")
}

/// `regua.v1.cmd.<tenant>.dispatch.<channel>`: a message for one channel's dispatchers.
pub fn dispatch(tenant: &str, channel: crate::inbound::Channel) -> String {
    format!("{ROOT}.v1.cmd.{tenant}.dispatch.{}", channel.as_str())
}

/// `regua.v1.cmd.*.dispatch.<channel>`: one channel's commands across tenants.
pub fn dispatch_any_tenant(channel: crate::inbound::Channel) -> String {
    format!("{ROOT}.v1.cmd.*.dispatch.{}", channel.as_str())
}

/// `regua.v1.sig.<tenant>.invoice.settled`: reconciliation's signal, right after the
/// commit that settled an invoice ([`crate::signals::InvoiceSettled`]). Core NATS, in
/// no stream: at most once, a shortcut for `invoice.paid`, never a substitute.
pub fn settled(tenant: &str) -> String {
    format!("{ROOT}.v1.sig.{tenant}.invoice.settled")
}

/// `regua.v1.sig.*.invoice.settled`: the settlement signals of every tenant.
pub fn settled_any_tenant() -> String {
    format!("{ROOT}.v1.sig.*.invoice.settled")
}

/// The subject prefixes (`regua.v1.evt.<tenant>.` and `regua.v1.cmd.<tenant>.`) of
/// everything regua emits for one tenant.
pub fn tenant_output_prefixes(tenant: &str) -> [String; 2] {
    [
        format!("{ROOT}.v1.evt.{tenant}."),
        format!("{ROOT}.v1.cmd.{tenant}."),
    ]
}

/// The tenant token of any `regua.v1.<kind>.<tenant>.…` subject (`_` when there is
/// none), for dead letters of messages that may not decode.
pub fn tenant_token(subject: &str) -> &str {
    subject.split('.').nth(3).unwrap_or("_")
}

/// `regua.v1.dlq.>`
pub fn dead_letter_all() -> String {
    format!("{ROOT}.v1.dlq.>")
}

/// `regua.v1.dlq.<consumer>.<tenant>`
pub fn dead_letter(consumer: &str, tenant_token: &str) -> String {
    format!("{ROOT}.v1.dlq.{consumer}.{tenant_token}")
}

/// The (consumer, tenant) of a [`dead_letter`] subject.
pub fn dead_letter_parts(subject: &str) -> Option<(&str, &str)> {
    let rest = subject.strip_prefix(&format!("{ROOT}.v1.dlq."))?;
    rest.split_once('.')
}

/// What an inbound subject names, once parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InboundSubject<'a> {
    /// The tenant token as published; it may name no tenant.
    pub tenant: &'a str,
    /// The entity and action, or `None` when they name nothing in v1.
    pub kind: Option<InboundKind>,
}

/// Splits `regua.v1.in.<tenant>.<entity>.<action>`. Returns `None` when the subject is
/// not an inbound v1 subject at all.
pub fn parse_inbound(subject: &str) -> Option<InboundSubject<'_>> {
    let rest = subject.strip_prefix(ROOT)?.strip_prefix(".v1.in.")?;
    let (tenant, suffix) = rest.split_once('.')?;
    Some(InboundSubject {
        tenant,
        kind: InboundKind::from_suffix(suffix),
    })
}

/// The v1 inbound messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum InboundKind {
    InvoiceUpsert,
    InvoiceCancel,
    CustomerUpsert,
    PaymentReceived,
}

impl InboundKind {
    pub const ALL: [InboundKind; 4] = [
        InboundKind::InvoiceUpsert,
        InboundKind::InvoiceCancel,
        InboundKind::CustomerUpsert,
        InboundKind::PaymentReceived,
    ];

    /// `<entity>.<action>`
    pub fn suffix(self) -> &'static str {
        match self {
            InboundKind::InvoiceUpsert => "invoice.upsert",
            InboundKind::InvoiceCancel => "invoice.cancel",
            InboundKind::CustomerUpsert => "customer.upsert",
            InboundKind::PaymentReceived => "payment.received",
        }
    }

    pub fn from_suffix(suffix: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.suffix() == suffix)
    }
}

/// A tenant id: 2 to 63 characters of `a-z`, `0-9`, `-` and `_`, starting with a letter
/// or digit, so that it is always a single NATS subject token.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct TenantId(String);

impl JsonSchema for TenantId {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "TenantId".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "pattern": "^[a-z0-9][a-z0-9_-]{1,62}$",
            "description": "A single NATS subject token of a-z, 0-9, '-' and '_'"
        })
    }
}

/// Why a string is not a [`TenantId`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidTenantId;

impl fmt::Display for InvalidTenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("tenant id must be 2-63 characters of a-z, 0-9, '-' or '_', starting with a letter or digit")
    }
}

impl std::error::Error for InvalidTenantId {}

impl TenantId {
    pub fn parse(s: &str) -> Result<Self, InvalidTenantId> {
        let bytes = s.as_bytes();
        let ok = (2..=63).contains(&bytes.len())
            && bytes
                .first()
                .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
            && bytes
                .iter()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-' || *b == b'_');
        if ok {
            Ok(TenantId(s.to_owned()))
        } else {
            Err(InvalidTenantId)
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for TenantId {
    type Error = InvalidTenantId;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        TenantId::parse(&s)
    }
}

impl From<TenantId> for String {
    fn from(t: TenantId) -> String {
        t.0
    }
}

impl fmt::Display for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::EventType;

    #[test]
    fn inbound_subjects_round_trip() {
        let t = TenantId::parse("acme").unwrap();
        for kind in InboundKind::ALL {
            let s = inbound(&t, kind);
            assert!(s.starts_with("regua.v1.in.acme."));
            let parsed = parse_inbound(&s).unwrap();
            assert_eq!(parsed.tenant, "acme");
            assert_eq!(parsed.kind, Some(kind));
        }
        assert_eq!(
            parse_inbound("regua.v1.in.acme.invoice.delete")
                .unwrap()
                .kind,
            None
        );
        assert!(parse_inbound("regua.v2.in.acme.invoice.upsert").is_none());
    }

    #[test]
    fn event_subjects_follow_the_contract() {
        assert_eq!(
            event("acme", EventType::InvoiceOpened),
            "regua.v1.evt.acme.invoice.opened"
        );
        assert_eq!(
            event("acme", EventType::IntakeRejected),
            "regua.v1.evt.acme.intake.rejected"
        );
        assert_eq!(
            dispatch("acme", crate::inbound::Channel::Whatsapp),
            "regua.v1.cmd.acme.dispatch.whatsapp"
        );
    }

    #[test]
    fn tenant_ids_are_single_tokens() {
        assert!(TenantId::parse("acme-01").is_ok());
        for bad in [
            "",
            "a",
            "Acme",
            "a.b",
            "a*",
            "a>",
            "a b",
            "-ab",
            &"x".repeat(64),
        ] {
            assert!(TenantId::parse(bad).is_err(), "{bad}");
        }
    }
}
