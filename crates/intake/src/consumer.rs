//! The JetStream side of intake: a durable pull consumer on `regua.v1.in.>`, fetched in
//! batches. Each batch is decoded, applied in one transaction ([`crate::store`]) and
//! only then acknowledged.
//!
//! Failures are told apart:
//! - a connection-level database failure (Postgres down) is waited out in place: the
//!   batch is retried with `Progress` acks so that no delivery attempt is used up and
//!   no message is dead-lettered because of an outage;
//! - any other failure of a batch is retried message by message; a message that still
//!   fails is NAKed with a growing delay, and on its last delivery it is copied to the
//!   dead-letter subject with the reason and terminated, so it cannot block the stream.

use std::sync::Arc;

use async_nats::jetstream::{self, AckKind, consumer};
use futures::future::join_all;
use regua_contract::decode::{Decoded, decode};
use regua_contract::{InboundKind, RejectCode, subjects};
use regua_platform::nats::Held;
use regua_platform::{Config, db, nats, telemetry};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, Span};

use crate::Intake;
use crate::store::{self, Applied, Inbound, StoreError};

/// The durable consumer intake reads from.
pub fn config(config: &Config) -> consumer::pull::Config {
    consumer::pull::Config {
        durable_name: Some(subjects::CONSUMER_INTAKE.into()),
        description: Some("regua intake: invoices and customers".into()),
        filter_subject: subjects::inbound_all(),
        ack_policy: consumer::AckPolicy::Explicit,
        deliver_policy: consumer::DeliverPolicy::All,
        ack_wait: config.intake_ack_wait,
        max_deliver: config.intake_max_deliver,
        // A cap across all replicas; well above batch size x workers x replicas.
        max_ack_pending: 20_000,
        ..Default::default()
    }
}

/// One fetched message and what processing needs of it.
struct Pending {
    msg: jetstream::Message,
    span: Span,
    delivered: i64,
    reply_to: Option<String>,
}

/// Fetches and processes batches until `cancel`; the batch in hand is finished first.
pub async fn run(intake: Arc<Intake>, consumer: consumer::PullConsumer, cancel: CancellationToken) {
    let (name, batch) = (subjects::CONSUMER_INTAKE, intake.config.intake_batch_size);
    nats::consume(
        &consumer,
        name,
        batch,
        nats::FETCH_EXPIRES,
        &cancel,
        |msgs| {
            let (intake, cancel) = (&intake, &cancel);
            async move {
                let started = std::time::Instant::now();
                metrics::histogram!(regua_platform::metrics::INTAKE_BATCH_SIZE)
                    .record(msgs.len() as f64);
                process(intake, msgs, cancel).await;
                metrics::histogram!(regua_platform::metrics::INTAKE_BATCH_SECONDS)
                    .record(started.elapsed().as_secs_f64());
                // Every failure is settled message by message in `process`.
                Ok::<(), std::convert::Infallible>(())
            }
        },
    )
    .await;
}

/// Decodes `msgs`, applies them, and settles each with JetStream.
async fn process(intake: &Intake, msgs: Vec<jetstream::Message>, cancel: &CancellationToken) {
    let mut items = Vec::with_capacity(msgs.len());
    let mut pending = Vec::with_capacity(msgs.len());
    for msg in msgs {
        let (stream_seq, delivered) = msg
            .info()
            .map(|i| (i.stream_sequence, i.delivered))
            .unwrap_or((0, 1));
        let subject = msg.subject.to_string();
        let parsed = subjects::parse_inbound(&subject);
        if parsed.as_ref().and_then(|p| p.kind) == Some(InboundKind::PaymentReceived) {
            // Reconciliation's message; the stream keeps it for its own consumer.
            ack(&msg, AckKind::Ack).await;
            continue;
        }
        let message_id = nats::message_id(&msg);
        let span = nats::process_span(
            &subject,
            &message_id,
            subjects::CONSUMER_INTAKE,
            msg.headers.as_ref(),
        );
        let (tenant, decoded) = match &parsed {
            None => (
                "_invalid".to_owned(),
                Decoded::rejected(
                    "",
                    RejectCode::UnknownSubject,
                    format!("{subject} is not a regua v1 inbound subject"),
                ),
            ),
            Some(p) => match p.kind {
                None => (
                    p.tenant.to_owned(),
                    Decoded::rejected(
                        "",
                        RejectCode::UnknownSubject,
                        format!(
                            "{subject} names no v1 message; expected invoice.upsert, invoice.cancel, customer.upsert or payment.received"
                        ),
                    ),
                ),
                Some(kind) => match nats::message_id_too_long(&msg) {
                    Some(n) => (
                        p.tenant.to_owned(),
                        Decoded::rejected(
                            "",
                            RejectCode::InvalidValue,
                            format!(
                                "the message id (Regua-Message-Id or Nats-Msg-Id) is {n} bytes; at most {}",
                                subjects::MAX_MESSAGE_ID_BYTES
                            ),
                        ),
                    ),
                    None => (p.tenant.to_owned(), decode(kind, &msg.payload)),
                },
            },
        };
        span.record("regua.tenant", tenant.as_str());
        if let Some(id) = decoded.command.as_ref().and_then(|c| c.invoice_id()) {
            span.record("regua.invoice_id", id);
        }
        let reply_to = msg
            .headers
            .as_ref()
            .and_then(|h| h.get(subjects::HEADER_REPLY_TO))
            .map(|v| v.as_str().to_owned());
        items.push(Inbound {
            tenant,
            message_id,
            subject,
            stream_seq: Some(stream_seq),
            payload: msg.payload.clone(),
            decoded,
            traceparent: telemetry::traceparent(&span),
        });
        pending.push(Pending {
            msg,
            span,
            delivered,
            reply_to,
        });
    }
    if items.is_empty() {
        return;
    }

    let msgs: Vec<&jetstream::Message> = pending.iter().map(|p| &p.msg).collect();
    let apply = || {
        let span = tracing::info_span!("intake.apply_batch", batch.size = items.len());
        store::apply_batch(&intake.pool, &intake.tenants, intake.clock.now(), &items)
            .instrument(span)
    };
    match nats::hold_through_outage(&msgs, cancel, apply, is_connection_error).await {
        Held::Done(applied) => settle(intake, &pending, &items, applied).await,
        Held::Failed(e) => {
            tracing::warn!(error = %e, batch = items.len(), "batch failed; retrying message by message");
            one_by_one(intake, pending, items).await;
        }
        Held::HandedBack => {}
    }
}

async fn one_by_one(intake: &Intake, pending: Vec<Pending>, items: Vec<Inbound>) {
    for (p, item) in pending.into_iter().zip(items) {
        let one = std::slice::from_ref(&item);
        match store::apply_batch(&intake.pool, &intake.tenants, intake.clock.now(), one).await {
            Ok(applied) => settle(intake, std::slice::from_ref(&p), one, applied).await,
            Err(e) if is_connection_error(&e) => {
                // Not this message's fault: redeliver soon without judging it.
                ack(&p.msg, AckKind::Nak(Some(nats::RETRY_BASE))).await;
            }
            Err(e) => {
                tracing::warn!(parent: &p.span, error = %e, delivered = p.delivered, stream_seq = item.stream_seq, "message failed");
                let reason = format!("intake failed after {} deliveries: {e}", p.delivered);
                let max_deliver = intake.config.intake_max_deliver;
                let (js, name) = (&intake.js, subjects::CONSUMER_INTAKE);
                nats::settle_failure(js, &p.msg, name, max_deliver, &reason, false).await;
            }
        }
    }
}

/// Acks committed messages, records outcomes on spans, answers HTTP waiters and wakes
/// the outbox relay.
async fn settle(intake: &Intake, pending: &[Pending], items: &[Inbound], applied: Vec<Applied>) {
    intake.wake_relay();
    let acks = pending.iter().map(|p| ack(&p.msg, AckKind::Ack));
    join_all(acks).await;
    for ((p, item), a) in pending.iter().zip(items).zip(&applied) {
        p.span.record("regua.outcome", a.outcome.as_str());
        a.count();
        if a.outcome == store::Outcome::Rejected {
            let codes: Vec<&str> = a.errors.iter().map(|e| e.code.as_str()).collect();
            tracing::info!(parent: &p.span, tenant = %item.tenant, message_id = %item.message_id, codes = ?codes, "message rejected");
        }
        if let Some(reply) = &p.reply_to {
            let body = serde_json::json!({
                "message_id": item.message_id,
                "outcome": a.outcome,
                "reason": a.reason,
                "errors": a.errors,
                "warnings": a.warnings,
            });
            if let Ok(bytes) = serde_json::to_vec(&body)
                && let Err(e) = intake.client.publish(reply.clone(), bytes.into()).await
            {
                tracing::debug!(error = %e, "outcome reply not sent; the caller sees it as pending");
            }
        }
    }
}

async fn ack(msg: &jetstream::Message, kind: AckKind) {
    if let Err(e) = msg.ack_with(kind).await {
        // The server redelivers after ack_wait, and the outcome row makes that a
        // duplicate, so a lost ack costs time, not correctness.
        tracing::warn!(error = %e, "ack not sent");
    }
}

fn is_connection_error(e: &StoreError) -> bool {
    matches!(e, StoreError::Db(e) if db::is_connection_error(e))
}
