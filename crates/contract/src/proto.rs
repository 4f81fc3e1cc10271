//! Renders the contract as files: one JSON Schema per message (`schemas/`), one example
//! per message (`examples/`) and an AsyncAPI 3 document (`asyncapi.json`). The
//! repository's `proto/` directory is exactly [`files`]; `proto_is_fresh` fails when it
//! is not (run with `REGUA_BLESS_PROTO=1` to rewrite it).

use chrono::{DateTime, NaiveDate, Utc};
use schemars::{JsonSchema, schema_for};
use serde::Serialize;
use serde_json::{Map, Value, json};
use uuid::Uuid;

use crate::commands::{CommandInvoice, CommandKind, Creditor, DispatchCommand, Recipient};
use crate::envelope::Envelope;
use crate::events::{
    AmountDue, CustomerChannelOptedIn, CustomerChannelOptedOut, CustomerState, CustomerUpserted,
    DocumentKind, IntakeRejected, InvoiceCanceled, InvoiceChanged, InvoiceEscalated, InvoicePaid,
    InvoicePartiallyPaid, InvoiceState, MessageEvent, PaymentMatched, PaymentUnmatched,
    TenantClockAdvanced, TenantCreated,
};
use crate::events::{DomainEvent, EventType};
use crate::inbound::{
    Channel, CustomerUpsert, InvoiceCancel, InvoiceCustomer, InvoiceUpsert, LateFee, PaymentData,
    PaymentMethod, PaymentReceived,
};
use crate::rejection::{FieldIssue, RejectCode, WarnCode};
use crate::signals::InvoiceSettled;
use crate::subjects::{self, InboundKind};

/// Whether a message goes into regua or comes out of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    In,
    Out,
    /// A command between services (`regua.v1.cmd.>`).
    Command,
    /// A core NATS signal between services (`regua.v1.sig.>`), in no stream.
    Signal,
}

/// One message of the contract.
#[derive(Debug, Clone)]
pub struct Message {
    /// `invoice.upsert`, `invoice.opened`, ...
    pub name: &'static str,
    pub direction: Direction,
    /// Subject with `{tenant}` as the parameter.
    pub address: String,
    /// The JetStream stream that stores it; `None` for a core NATS signal.
    pub stream: Option<&'static str>,
    pub summary: &'static str,
    pub schema: Value,
    pub example: Value,
}

impl Message {
    fn file_stem(&self) -> String {
        match self.direction {
            Direction::In => format!("in.{}", self.name),
            Direction::Out => format!("evt.{}", self.name),
            Direction::Command => format!("cmd.{}", self.name),
            Direction::Signal => format!("sig.{}", self.name),
        }
    }
}

fn schema<T: JsonSchema>() -> Value {
    serde_json::to_value(schema_for!(T)).unwrap_or(Value::Null)
}

fn example<T: Serialize>(value: &T) -> Value {
    serde_json::to_value(value).unwrap_or(Value::Null)
}

fn inbound_message(
    kind: InboundKind,
    summary: &'static str,
    schema: Value,
    example: Value,
) -> Message {
    Message {
        name: kind.suffix(),
        direction: Direction::In,
        address: format!("{}.v1.in.{{tenant}}.{}", subjects::ROOT, kind.suffix()),
        stream: Some(subjects::STREAM_INBOUND),
        summary,
        schema,
        example,
    }
}

fn event_message(kind: EventType, summary: &'static str, schema: Value, example: Value) -> Message {
    Message {
        name: kind.as_str(),
        direction: Direction::Out,
        address: format!("{}.v1.evt.{{tenant}}.{}", subjects::ROOT, kind.as_str()),
        stream: Some(subjects::STREAM_EVENTS),
        summary,
        schema,
        example,
    }
}

/// Every message of contract v1, with its schema and example.
pub fn messages() -> Vec<Message> {
    let ex = Examples::new();
    let mut messages = vec![
        inbound_message(
            InboundKind::InvoiceUpsert,
            "Create or replace an invoice",
            schema::<InvoiceUpsert>(),
            example(&ex.invoice_upsert()),
        ),
        inbound_message(
            InboundKind::InvoiceCancel,
            "Cancel an invoice (final)",
            schema::<InvoiceCancel>(),
            example(&ex.invoice_cancel()),
        ),
        inbound_message(
            InboundKind::CustomerUpsert,
            "Create or replace a customer",
            schema::<CustomerUpsert>(),
            example(&ex.customer_upsert()),
        ),
        inbound_message(
            InboundKind::PaymentReceived,
            "A payment arrived (consumed by reconciliation)",
            schema::<PaymentReceived>(),
            example(&ex.payment_received()),
        ),
    ];
    for &kind in EventType::ALL {
        messages.push(event_message(
            kind,
            kind.summary(),
            serde_json::to_value(kind.envelope_schema()).unwrap_or(Value::Null),
            example(&ex.envelope(kind, ex.event(kind))),
        ));
    }
    messages.extend([Message {
        name: "dispatch",
        direction: Direction::Command,
        address: format!("{}.v1.cmd.{{tenant}}.dispatch.{{channel}}", subjects::ROOT),
        stream: Some(subjects::STREAM_COMMANDS),
        summary: "Send one message on one channel (scheduler to dispatchers)",
        schema: schema::<DispatchCommand>(),
        example: example(&ex.dispatch_command()),
    }]);
    messages.push(Message {
        name: "invoice.settled",
        direction: Direction::Signal,
        address: subjects::settled("{tenant}"),
        stream: None,
        summary: "Reconciliation settled an invoice (core NATS, at most once, right after the commit): the scheduler halts its dunning at once; invoice.paid follows",
        schema: schema::<InvoiceSettled>(),
        example: example(&ex.invoice_settled()),
    });
    messages
}

/// The AsyncAPI 3 document over [`messages`]; payloads refer to `schemas/*.json`.
pub fn asyncapi(messages: &[Message]) -> Value {
    let mut channels = Map::new();
    let mut operations = Map::new();
    let mut components = Map::new();
    for m in messages {
        let id = camel(&m.file_stem());
        channels.insert(
            id.clone(),
            json!({
                "address": m.address,
                "title": m.name,
                "summary": m.summary,
                "parameters": if m.direction == Direction::Command {
                    json!({ "tenant": { "description": "Tenant id" }, "channel": { "enum": ["email", "sms", "whatsapp"] } })
                } else {
                    json!({ "tenant": { "description": "Tenant id: a single NATS token of a-z, 0-9, '-' and '_'" } })
                },
                "messages": { id.clone(): { "$ref": format!("#/components/messages/{id}") } },
                "x-jetstream-stream": m.stream,
                "x-delivery": match m.stream {
                    Some(_) => "JetStream: durable, at least once",
                    None => "core NATS: at most once, no stream; a shortcut for a durable event",
                },
            }),
        );
        let (action, verb) = match m.direction {
            Direction::In => ("send", "publish"),
            Direction::Out | Direction::Command | Direction::Signal => ("receive", "consume"),
        };
        operations.insert(
            format!("{verb}{}", upper_first(&id)),
            json!({
                "action": action,
                "channel": { "$ref": format!("#/channels/{id}") },
                "summary": m.summary,
            }),
        );
        let mut message = json!({
            "name": m.name,
            "title": m.summary,
            "contentType": "application/json",
            "payload": {
                "schemaFormat": "application/schema+json;version=draft-2020-12",
                "schema": { "$ref": format!("./schemas/{}.json", m.file_stem()) },
            },
            "examples": [ { "name": "example", "payload": m.example } ],
        });
        let headers = match m.direction {
            Direction::In => json!({
                "Nats-Msg-Id": { "type": "string", "description": "Optional. JetStream deduplicates repeats within the stream's duplicate window; intake reports a later repeat as `duplicate`." },
                "traceparent": { "type": "string", "description": "Optional W3C trace context." },
            }),
            Direction::Command => json!({
                "Nats-Msg-Id": { "type": "string", "description": "UUIDv5 (namespace 6f1d2b0e-9c1a-4f43-9a57-7d0b3c1ea001) of the command_id <tenant>:<invoice_id>:<step>:v<policy_version>, so a step fires once." },
                "traceparent": { "type": "string", "description": "W3C trace context of the firing; it links to the trace that planned the invoice." },
            }),
            Direction::Out => json!({
                "Nats-Msg-Id": { "type": "string", "description": "The envelope id (UUIDv7)." },
                "traceparent": { "type": "string", "description": "W3C trace context of the change." },
            }),
            Direction::Signal => json!({
                "traceparent": { "type": "string", "description": "W3C trace context of the payment." },
            }),
        };
        if let Some(obj) = message.as_object_mut() {
            obj.insert(
                "headers".into(),
                json!({ "type": "object", "properties": headers }),
            );
        }
        components.insert(id, message);
    }
    channels.insert(
        "deadLetter".into(),
        json!({
            "address": format!("{}.v1.dlq.{{consumer}}.{{tenant}}", subjects::ROOT),
            "title": "dead letters",
            "summary": "Messages a consumer could not process after max_deliver attempts: the original payload and headers, plus the reason",
            "parameters": {
                "consumer": { "description": "The durable consumer that gave up, e.g. intake" },
                "tenant": { "description": "The tenant token of the original subject" }
            },
            "messages": { "deadLetter": { "$ref": "#/components/messages/deadLetter" } },
            "x-jetstream-stream": subjects::STREAM_DEAD_LETTER,
        }),
    );
    operations.insert(
        "consumeDeadLetter".into(),
        json!({ "action": "receive", "channel": { "$ref": "#/channels/deadLetter" }, "summary": "Inspect and replay what could not be processed" }),
    );
    components.insert(
        "deadLetter".into(),
        json!({
            "name": "dead letter",
            "contentType": "application/octet-stream",
            "payload": { "description": "The original message body, unchanged" },
            "headers": {
                "type": "object",
                "properties": {
                    subjects::HEADER_DLQ_REASON: { "type": "string", "description": "Why processing failed (at most 512 bytes)" },
                    subjects::HEADER_DLQ_SUBJECT: { "type": "string", "description": "The original subject" },
                    subjects::HEADER_DLQ_STREAM_SEQ: { "type": "string", "description": "The original stream sequence" },
                },
            },
        }),
    );
    json!({
        "asyncapi": "3.0.0",
        "info": {
            "title": "regua",
            "version": "1.0.0",
            "description": "The regua event contract v1. Integrators publish on regua.v1.in.<tenant>.<entity>.<action> (stream REGUA_IN: a PubAck means durable); every inbound message gets exactly one outcome: accepted (domain events on regua.v1.evt.<tenant>.*), duplicate, stale, or rejected (regua.v1.evt.<tenant>.intake.rejected with field-level reasons).",
        },
        "defaultContentType": "application/json",
        "servers": { "nats": { "host": "127.0.0.1:4222", "protocol": "nats", "description": "JetStream enabled (nats-server 2.9+)" } },
        "channels": channels,
        "operations": operations,
        "components": { "messages": components },
        "x-jetstream-streams": {
            subjects::STREAM_INBOUND: { "subjects": [subjects::inbound_all()], "retention": "limits", "description": "What integrators publish" },
            subjects::STREAM_EVENTS: { "subjects": [subjects::events_all()], "retention": "limits", "description": "Domain events, from service outboxes" },
            subjects::STREAM_COMMANDS: { "subjects": [subjects::commands_all()], "retention": "workqueue", "description": "Commands to the channel dispatchers; removed when acked" },
            subjects::STREAM_DEAD_LETTER: { "subjects": [subjects::dead_letter_all()], "retention": "limits", "description": "Messages that exhausted their deliveries; headers Regua-Dlq-Reason, Regua-Dlq-Subject, Regua-Dlq-Stream-Seq" },
        },
        "x-reject-codes": reject_codes(),
    })
}

fn reject_codes() -> Vec<String> {
    // The schema of RejectCode lists every variant; read them from there so this list
    // cannot drift from the enum.
    let s = schema::<RejectCode>();
    let mut codes = Vec::new();
    collect_enum_strings(&s, &mut codes);
    codes
}

fn collect_enum_strings(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(o) => {
            for (k, val) in o {
                if k == "enum" || k == "const" {
                    match val {
                        Value::Array(a) => {
                            out.extend(a.iter().filter_map(|x| x.as_str().map(str::to_owned)))
                        }
                        Value::String(s) => out.push(s.clone()),
                        _ => {}
                    }
                } else {
                    collect_enum_strings(val, out);
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|x| collect_enum_strings(x, out)),
        _ => {}
    }
}

fn camel(stem: &str) -> String {
    let mut out = String::new();
    for (i, part) in stem.split(['.', '_']).enumerate() {
        if i == 0 {
            out.push_str(part);
        } else {
            out.push_str(&upper_first(part));
        }
    }
    out
}

fn upper_first(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_uppercase().chain(c).collect(),
        None => String::new(),
    }
}

/// Every file of `proto/`, as (relative path, contents).
pub fn files() -> Vec<(String, String)> {
    let messages = messages();
    let mut out = Vec::new();
    for m in &messages {
        out.push((format!("schemas/{}.json", m.file_stem()), pretty(&m.schema)));
        out.push((
            format!("examples/{}.json", m.file_stem()),
            pretty(&m.example),
        ));
    }
    out.push(("asyncapi.json".into(), pretty(&asyncapi(&messages))));
    out
}

fn pretty(v: &Value) -> String {
    let mut s = serde_json::to_string_pretty(v).unwrap_or_default();
    s.push('\n');
    s
}

/// Example values, shared by `proto/examples` and tests.
pub struct Examples {
    at: DateTime<Utc>,
}

impl Default for Examples {
    fn default() -> Self {
        Self::new()
    }
}

impl Examples {
    pub fn new() -> Self {
        Examples {
            at: DateTime::<Utc>::from_timestamp(1_795_000_000, 0).unwrap_or_default(),
        }
    }

    fn date(y: i32, m: u32, d: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(y, m, d).unwrap_or_default()
    }

    pub fn customer_upsert(&self) -> CustomerUpsert {
        CustomerUpsert {
            customer_id: "C-1001".into(),
            name: "Maria da Silva".into(),
            document: Some("529.982.247-25".into()),
            email: Some("maria@example.com".into()),
            phone: Some("+5511987654321".into()),
            whatsapp_opt_in: true,
            preferred_channel: Some(Channel::Whatsapp),
            timezone: Some("America/Sao_Paulo".into()),
            locale: Some("pt-BR".into()),
            segment: Some("varejo".into()),
        }
    }

    pub fn invoice_upsert(&self) -> InvoiceUpsert {
        let mut metadata = Map::new();
        metadata.insert("erp_ref".into(), json!("PED-88412"));
        InvoiceUpsert {
            invoice_id: "NF-2026-000123".into(),
            revision: Some(3),
            customer: Some(InvoiceCustomer::Embedded(self.customer_upsert())),
            customer_id: None,
            amount_cents: 15990,
            currency: Some("BRL".into()),
            issued_on: Self::date(2026, 11, 1),
            due_date: Self::date(2026, 12, 10),
            description: Some("Plano Fibra 500 Mega - dezembro".into()),
            reference: Some("34191790010".into()),
            payment: Some(PaymentData {
                pix_copy_paste: Some("00020126580014br.gov.bcb.pix0136a1b2c3d4-e5f6-7890-abcd-ef1234567890520400005303986540515.995802BR5913REGUA DEMO SA6009SAO PAULO62070503***6304ABCD".into()),
                boleto_line: Some("34191.79001 01043.510047 91020.150008 1 98760000015990".into()),
                payment_url: Some("https://pay.example.com/i/NF-2026-000123".into()),
            }),
            late_fee: Some(LateFee {
                fine_bps: 200,
                monthly_interest_bps: 100,
            }),
            tags: vec!["fibra".into(), "residencial".into()],
            metadata,
        }
    }

    pub fn invoice_cancel(&self) -> InvoiceCancel {
        InvoiceCancel {
            invoice_id: "NF-2026-000123".into(),
            revision: Some(4),
            reason: Some("renegotiated".into()),
        }
    }

    pub fn amount_due(&self) -> AmountDue {
        AmountDue {
            on: Self::date(2026, 12, 14),
            principal_cents: 15990,
            fine_cents: 320,
            interest_cents: 21,
            paid_cents: 10000,
            balance_cents: 6331,
            days_late: 4,
        }
    }

    pub fn payment_received(&self) -> PaymentReceived {
        PaymentReceived {
            payment_id: "PAY-77120".into(),
            invoice_id: Some("NF-2026-000123".into()),
            reference: Some("E1234567820261210153012345678901".into()),
            amount_cents: 15990,
            currency: Some("BRL".into()),
            paid_at: self.at,
            method: PaymentMethod::Pix,
            payer_document: Some("52998224725".into()),
        }
    }

    pub fn customer_state(&self) -> CustomerState {
        CustomerState {
            customer_id: "C-1001".into(),
            name: "Maria da Silva".into(),
            document: Some("52998224725".into()),
            document_kind: Some(DocumentKind::Cpf),
            email: Some("maria@example.com".into()),
            phone: Some("+5511987654321".into()),
            whatsapp_opt_in: true,
            preferred_channel: Some(Channel::Whatsapp),
            timezone: "America/Sao_Paulo".into(),
            locale: "pt-BR".into(),
            segment: Some("varejo".into()),
        }
    }

    pub fn invoice_changed(&self) -> InvoiceChanged {
        let u = self.invoice_upsert();
        InvoiceChanged {
            invoice: InvoiceState {
                invoice_id: u.invoice_id,
                revision: u.revision,
                customer_id: "C-1001".into(),
                debtor_kind: Some(DocumentKind::Cpf),
                amount_cents: u.amount_cents,
                currency: "BRL".into(),
                issued_on: u.issued_on,
                due_date: u.due_date,
                description: u.description,
                reference: u.reference,
                payment: u.payment,
                late_fee: u.late_fee,
                tags: u.tags,
                metadata: u.metadata,
            },
        }
    }

    pub fn tenant_created(&self) -> TenantCreated {
        TenantCreated {
            id: "acme".into(),
            legal_name: "ACME Telecom Ltda".into(),
            cnpj: "11222333000181".into(),
            address: "Av. Paulista, 1000, Sao Paulo - SP, 01310-100".into(),
            contact: "cobranca@acme.example.com / 0800 000 0000".into(),
            timezone: "America/Sao_Paulo".into(),
            test_clock: false,
            now: None,
        }
    }

    pub fn intake_rejected(&self) -> IntakeRejected {
        let payload = r#"{"invoice_id":"NF-9","amount_cents":-5,"issued_on":"2026-11-01","due_date":"2026-10-01","customer_id":"C-1001","colour":"red"}"#;
        IntakeRejected {
            source_subject: "regua.v1.in.acme.invoice.upsert".into(),
            message_id: "erp-9-1".into(),
            stream_sequence: Some(812),
            errors: vec![
                FieldIssue {
                    field: "amount_cents".into(),
                    code: RejectCode::AmountNotPositive,
                    message: "amount_cents must be greater than zero".into(),
                },
                FieldIssue {
                    field: "due_date".into(),
                    code: RejectCode::DueBeforeIssue,
                    message: "due_date 2026-10-01 is before issued_on 2026-11-01".into(),
                },
            ],
            warnings: vec![FieldIssue {
                field: "colour".into(),
                code: WarnCode::UnknownField,
                message: "unknown field ignored".into(),
            }],
            payload: payload.into(),
            payload_bytes: payload.len(),
            payload_truncated: false,
        }
    }

    pub fn dispatch_command(&self) -> DispatchCommand {
        let t = self.tenant_created();
        let c = self.customer_state();
        let i = self.invoice_changed().invoice;
        DispatchCommand {
            command_id: DispatchCommand::id_for("acme", &i.invoice_id, "vence_hoje", 1, 0),
            kind: CommandKind::Step,
            tenant: t.id.clone(),
            creditor: Creditor {
                legal_name: t.legal_name,
                cnpj: t.cnpj,
                address: t.address,
                contact: t.contact,
            },
            recipient: Recipient {
                customer_id: c.customer_id,
                name: c.name,
                email: c.email,
                phone: c.phone,
                whatsapp_opt_in: c.whatsapp_opt_in,
                locale: c.locale,
                timezone: c.timezone,
            },
            channel: Channel::Whatsapp,
            fallback: vec![Channel::Email, Channel::Sms],
            template: "vence_hoje".into(),
            step: "vence_hoje".into(),
            policy: "padrao".into(),
            policy_version: 1,
            invoices: vec![CommandInvoice {
                invoice_id: i.invoice_id,
                amount_cents: i.amount_cents,
                currency: i.currency,
                due_date: i.due_date,
                effective_due_date: i.due_date,
                description: i.description,
                payment: i.payment,
                late_fee: i.late_fee,
                due: Some(self.amount_due()),
            }],
            scheduled_for: self.at,
            not_after: self.at,
            test_clock: false,
            sms: crate::commands::SmsOptions::default(),
            templates: None,
        }
    }

    /// An example of every event type's payload.
    pub fn event(&self, kind: EventType) -> DomainEvent {
        match kind {
            EventType::TenantCreated => DomainEvent::TenantCreated(self.tenant_created()),
            EventType::CustomerUpserted => DomainEvent::CustomerUpserted(CustomerUpserted {
                customer: self.customer_state(),
            }),
            EventType::InvoiceOpened => DomainEvent::InvoiceOpened(self.invoice_changed()),
            EventType::InvoiceUpdated => DomainEvent::InvoiceUpdated(self.invoice_changed()),
            EventType::InvoiceCanceled => DomainEvent::InvoiceCanceled(InvoiceCanceled {
                invoice_id: "NF-2026-000123".into(),
                revision: Some(4),
                reason: Some("renegotiated".into()),
                was_open: true,
            }),
            EventType::IntakeRejected => DomainEvent::IntakeRejected(self.intake_rejected()),
            EventType::InvoiceEscalated => DomainEvent::InvoiceEscalated(InvoiceEscalated {
                invoice_id: "NF-2026-000123".into(),
                customer_id: "C-1001".into(),
                level: "negativacao".into(),
                step: "negativacao".into(),
                policy: "padrao".into(),
                policy_version: 1,
            }),
            EventType::OutboxMessageParked => {
                DomainEvent::OutboxMessageParked(crate::events::OutboxMessageParked {
                    message_id: "0193a5b2-7c1e-7d3a-9f00-5b1c2d3e4f50".into(),
                    subject: "regua.v1.cmd.loja.dispatch.email".into(),
                    outbox: "scheduler.outbox".into(),
                    bytes: 1_200_000,
                    reason: "max payload size exceeded".into(),
                })
            }
            EventType::InvoicePaid => DomainEvent::InvoicePaid(InvoicePaid {
                invoice_id: "NF-2026-000123".into(),
                customer_id: "C-1001".into(),
                paid_at: self.at,
                amount_paid_cents: 15990,
                currency: "BRL".into(),
                days_late: 2,
                overpaid_cents: 0,
            }),
            EventType::InvoicePartiallyPaid => {
                DomainEvent::InvoicePartiallyPaid(InvoicePartiallyPaid {
                    invoice_id: "NF-2026-000123".into(),
                    customer_id: "C-1001".into(),
                    payment_id: "PAY-77120".into(),
                    paid_at: self.at,
                    amount_paid_cents: 10000,
                    currency: "BRL".into(),
                    due: self.amount_due(),
                })
            }
            EventType::PaymentMatched => DomainEvent::PaymentMatched(PaymentMatched {
                payment_id: "PAY-77120".into(),
                invoice_id: "NF-2026-000123".into(),
                customer_id: "C-1001".into(),
                amount_cents: 10000,
                currency: "BRL".into(),
                paid_at: self.at,
                matched_by: "reference".into(),
                settled: false,
                credit_cents: 0,
            }),
            EventType::PaymentUnmatched => DomainEvent::PaymentUnmatched(PaymentUnmatched {
                payment_id: "PAY-77121".into(),
                amount_cents: 4990,
                currency: "BRL".into(),
                paid_at: self.at,
                reason: "unknown_reference".into(),
                invoice_id: None,
                reference: Some("E2E-TXID-0001".into()),
            }),
            EventType::TenantClockAdvanced => {
                DomainEvent::TenantClockAdvanced(TenantClockAdvanced { now: self.at })
            }
            EventType::CustomerChannelOptedOut => {
                DomainEvent::CustomerChannelOptedOut(CustomerChannelOptedOut {
                    customer_id: "C-1001".into(),
                    channel: Channel::Sms,
                    source: "sms_reply".into(),
                })
            }
            EventType::CustomerChannelOptedIn => {
                DomainEvent::CustomerChannelOptedIn(CustomerChannelOptedIn {
                    customer_id: "C-1001".into(),
                    channel: Channel::Sms,
                    source: "sms_reply".into(),
                })
            }
            EventType::MessageSent => DomainEvent::MessageSent(self.message_event(kind)),
            EventType::MessageDelivered => DomainEvent::MessageDelivered(self.message_event(kind)),
            EventType::MessageRead => DomainEvent::MessageRead(self.message_event(kind)),
            EventType::MessageFailed => DomainEvent::MessageFailed(self.message_event(kind)),
            EventType::MessageSkipped => DomainEvent::MessageSkipped(self.message_event(kind)),
            EventType::MessageUnknown => DomainEvent::MessageUnknown(self.message_event(kind)),
        }
    }

    pub fn message_event(&self, kind: EventType) -> MessageEvent {
        let status = kind.as_str().trim_start_matches("message.").to_owned();
        let sent = !matches!(kind, EventType::MessageSkipped);
        MessageEvent {
            command_id: DispatchCommand::id_for("acme", "NF-2026-000123", "vence_hoje", 1, 0),
            reason: match kind {
                EventType::MessageFailed => {
                    Some("permanent: 21211 invalid 'To' phone number".into())
                }
                EventType::MessageSkipped => Some("invoice_closed".into()),
                EventType::MessageUnknown => Some("outcome_unknown".into()),
                _ => None,
            },
            status,
            channel: Channel::Sms,
            provider: "twilio".into(),
            provider_message_id: sent.then(|| "SM0123456789abcdef0123456789abcdef".into()),
            customer_id: "C-1001".into(),
            invoice_ids: vec!["NF-2026-000123".into()],
            step: "vence_hoje".into(),
            sent_at: sent.then_some(self.at),
            at: self.at,
            fallback_to: matches!(kind, EventType::MessageFailed).then_some(Channel::Email),
            attempts: u32::from(sent),
            segments: sent.then_some(1),
        }
    }

    pub fn invoice_settled(&self) -> InvoiceSettled {
        InvoiceSettled {
            invoice_id: "NF-2026-000123".into(),
            payment_id: "PAY-77120".into(),
            settled_at: self.at,
            event_id: Uuid::from_u128(0x019a_b2c3_d4e5_7f00_8000_0000_0000_0001),
        }
    }

    pub fn envelope<T>(&self, event_type: EventType, data: T) -> Envelope<T> {
        Envelope {
            id: Uuid::from_u128(0x019a_b2c3_d4e5_7f00_8000_0000_0000_0001),
            event_type,
            version: event_type.version(),
            occurred_at: self.at,
            tenant: "acme".into(),
            correlation_id: "erp-123-3".into(),
            causation_id: "erp-123-3".into(),
            data,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn proto_dir() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../proto")
    }

    #[test]
    #[allow(clippy::disallowed_methods)]
    fn proto_is_fresh() {
        let dir = proto_dir();
        let bless = std::env::var("REGUA_BLESS_PROTO").is_ok_and(|v| v == "1");
        let mut stale = Vec::new();
        for (path, contents) in files() {
            let full = dir.join(&path);
            let on_disk = std::fs::read_to_string(&full).unwrap_or_default();
            if on_disk != contents {
                if bless {
                    std::fs::create_dir_all(full.parent().unwrap()).unwrap();
                    std::fs::write(&full, contents).unwrap();
                } else {
                    stale.push(path);
                }
            }
        }
        assert!(
            stale.is_empty(),
            "proto/ is stale ({stale:?}); regenerate with REGUA_BLESS_PROTO=1 cargo test -p regua-contract proto_is_fresh"
        );
    }

    #[test]
    fn every_message_has_schema_and_example() {
        let ms = messages();
        assert_eq!(ms.len(), InboundKind::ALL.len() + EventType::ALL.len() + 2);
        for m in &ms {
            assert!(m.schema.get("$schema").is_some(), "{}", m.name);
            assert!(m.example.is_object(), "{}", m.name);
        }
    }

    #[test]
    fn examples_round_trip_through_the_types() {
        let ex = Examples::new();
        let v = example(&ex.invoice_upsert());
        let back: InvoiceUpsert = serde_json::from_value(v).unwrap();
        assert_eq!(back, ex.invoice_upsert());
        let v = example(&ex.envelope(EventType::InvoiceOpened, ex.invoice_changed()));
        assert_eq!(v["type"], "invoice.opened");
        let back: Envelope<InvoiceChanged> = serde_json::from_value(v).unwrap();
        assert_eq!(back.data, ex.invoice_changed());
    }

    #[test]
    fn asyncapi_lists_every_subject_and_stream() {
        let doc = asyncapi(&messages());
        let channels = doc["channels"].as_object().unwrap();
        let addresses: Vec<&str> = channels
            .values()
            .map(|c| c["address"].as_str().unwrap())
            .collect();
        for kind in InboundKind::ALL {
            assert!(
                addresses.contains(&format!("regua.v1.in.{{tenant}}.{}", kind.suffix()).as_str())
            );
        }
        for kind in EventType::ALL {
            assert!(
                addresses.contains(&format!("regua.v1.evt.{{tenant}}.{}", kind.as_str()).as_str())
            );
        }
        assert!(
            doc["x-reject-codes"]
                .as_array()
                .unwrap()
                .contains(&json!("unknown_tenant"))
        );
        assert_eq!(doc["x-jetstream-streams"].as_object().unwrap().len(), 4);
        assert!(addresses.contains(&"regua.v1.cmd.{tenant}.dispatch.{channel}"));
        assert!(addresses.contains(&"regua.v1.sig.{tenant}.invoice.settled"));
        assert_eq!(
            doc["channels"]["deadLetter"]["address"],
            "regua.v1.dlq.{consumer}.{tenant}"
        );
    }
}
