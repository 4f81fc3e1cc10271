//! The one dispatch pipeline, whatever the channel:
//!
//! 1. consume a batch from the channel's durable pull consumer;
//! 2. guard and render each command (no transaction open: a policy's text renders on
//!    fuel, into a capped output, and one over its limits fails alone, `permanent`),
//!    then claim each command's attempt (one transaction): a command already handled
//!    is acked again, one found mid-send becomes `unknown`, one the guard refuses is
//!    `skipped` (and moves to the next channel when the refusal is about this
//!    channel); the rest are marked `sending`;
//! 3. take rate-limit slots for them;
//! 4. send them concurrently through the channel's adapter;
//! 5. record every result, its `message.*` event and any fallback command (one
//!    transaction, through the outbox);
//! 6. ack, nak with a backoff (transient failures), or dead-letter (retries exhausted).

use regua_platform::metrics as metrics_names;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, AckKind, consumer};
use chrono::{DateTime, Utc};
use rand::Rng;
use regua_contract::commands::{CommandKind, DispatchCommand};
use regua_contract::events::MessageStatus;
use regua_contract::inbound::Channel;
use regua_contract::subjects;
use regua_domain::template::{self, Links, Rendered};
use regua_platform::nats::Held;
use regua_platform::outbox::OutboxMessage;
use regua_platform::{Config, PlatformError, db, fence, nats, telemetry};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::channels::{self, Adapter, Outcome, Outgoing};
use crate::limiter::Limiter;
use crate::sign::{self, LinkSubject};
use crate::store::{self, EventFacts, NewAttempt, State, Update};
use crate::{DispatchError, Dispatcher, OUTBOX};

/// Longest backoff between two provider calls of one message.
const MAX_BACKOFF: Duration = Duration::from_secs(300);

/// One channel's worker: the shared dispatcher, the adapter and its rate limit.
pub struct Worker {
    pub d: Arc<Dispatcher>,
    pub adapter: Adapter,
    pub limiter: Limiter,
    consumer_name: String,
    /// Commands fetched at once: the batch size, but no more than half a second of the
    /// rate limit, so reserved slots stay close to now.
    fetch_size: usize,
    /// Where providers post delivery statuses.
    status_callback: String,
}

impl Worker {
    pub fn new(d: Arc<Dispatcher>, channel: Channel) -> Result<Worker, DispatchError> {
        let adapter = Adapter::from_config(channel, &d.config)?;
        let rate = d.config.dispatch.rate(channel);
        let limiter = Limiter::new(d.pool.clone(), adapter.account(), rate);
        let batch = d.config.dispatch.batch_size;
        let fetch_size = if rate == 0 {
            batch
        } else {
            batch.min(usize::try_from(rate / 2).unwrap_or(1).max(1))
        };
        Ok(Worker {
            consumer_name: subjects::dispatch_consumer(channel),
            fetch_size,
            status_callback: d.public(crate::webhooks::TWILIO_STATUS),
            d,
            adapter,
            limiter,
        })
    }

    pub fn channel(&self) -> Channel {
        self.adapter.channel()
    }

    /// A `message.*` event about `cmd` on this worker's channel.
    fn event(
        &self,
        cmd: &DispatchCommand,
        kind: MessageStatus,
        at: DateTime<Utc>,
        facts: EventFacts,
        traceparent: Option<String>,
    ) -> Result<OutboxMessage, DispatchError> {
        let (channel, provider) = (self.channel(), self.adapter.provider());
        store::message_event(cmd, channel, provider, kind, at, facts, traceparent)
    }

    /// [`store::ended`] on this worker's channel.
    fn ended(
        &self,
        cmd: &DispatchCommand,
        kind: MessageStatus,
        at: DateTime<Utc>,
        facts: EventFacts,
        fallback: bool,
        traceparent: Option<String>,
    ) -> Result<Vec<OutboxMessage>, DispatchError> {
        let (channel, provider) = (self.channel(), self.adapter.provider());
        store::ended(
            cmd,
            channel,
            provider,
            kind,
            at,
            facts,
            fallback,
            traceparent,
        )
    }
}

/// The durable consumer every replica of `channel` shares.
pub fn consumer_config(channel: Channel, config: &Config) -> consumer::pull::Config {
    consumer::pull::Config {
        durable_name: Some(subjects::dispatch_consumer(channel)),
        description: Some(format!("regua {} dispatcher", channel.as_str())),
        filter_subject: subjects::dispatch_any_tenant(channel),
        ack_policy: consumer::AckPolicy::Explicit,
        deliver_policy: consumer::DeliverPolicy::All,
        ack_wait: config.dispatch.ack_wait,
        // Attempts are counted in Postgres; this is only a backstop.
        max_deliver: i64::from(config.dispatch.max_attempts) + 20,
        max_ack_pending: 2_000,
        ..Default::default()
    }
}

/// Consumes until `cancel`: stops fetching, and finishes the batch in hand. A batch
/// that fails is not acked: it is redelivered after ack_wait, and attempts already
/// marked `sending` are reported as unknown, never resent.
pub async fn run(w: Arc<Worker>, consumer: consumer::PullConsumer, cancel: CancellationToken) {
    let expires = Duration::from_millis(1000);
    nats::consume(
        &consumer,
        &w.consumer_name,
        w.fetch_size,
        expires,
        &cancel,
        |msgs| process(&w, msgs, &cancel),
    )
    .await;
}

/// Whether `e` is Postgres being unreachable (an outage or a restart), not the batch.
fn is_outage(e: &DispatchError) -> bool {
    match e {
        DispatchError::Db(e) | DispatchError::Platform(PlatformError::Db(e)) => {
            db::is_connection_error(e)
        }
        _ => false,
    }
}

/// One command in a batch.
struct Item {
    msg: jetstream::Message,
    cmd: DispatchCommand,
    span: tracing::Span,
    /// The platform clock's time for this command (the test clock's, simulated).
    now: DateTime<Utc>,
}

/// What the guard decided for one command.
enum Plan {
    /// Already handled: ack again.
    Done,
    /// Skip, maybe moving to the next channel.
    Skip { reason: String, fallback: bool },
    /// A worker died mid-send.
    Unknown,
    /// Render failed: permanent on this channel.
    Broken(String),
    Send {
        rendered: Rendered,
        /// The signed unsubscribe link the message carries (e-mail).
        unsubscribe_url: Option<String>,
        calls: i32,
    },
}

/// How a message ends its trip through the batch.
enum Settle {
    Ack,
    Nak(Duration),
    DeadLetter(String),
}

fn now_for(d: &Dispatcher, cmd: &DispatchCommand) -> DateTime<Utc> {
    if cmd.test_clock {
        cmd.scheduled_for
    } else {
        d.clock.now()
    }
}

/// How far ahead of this replica's clock a command may be decided before it waits:
/// schedulers and dispatchers on different hosts never agree to the millisecond.
const CLOCK_SKEW: Duration = Duration::from_secs(1);

/// How long until `cmd`'s instant, when it is further ahead than [`CLOCK_SKEW`].
fn early(d: &Dispatcher, cmd: &DispatchCommand) -> Option<Duration> {
    let ahead = (cmd.scheduled_for - now_for(d, cmd)).to_std().ok()?;
    (ahead > CLOCK_SKEW).then_some(ahead)
}

async fn process(
    w: &Worker,
    msgs: Vec<jetstream::Message>,
    cancel: &CancellationToken,
) -> Result<(), DispatchError> {
    let channel = w.channel();
    let mut items = Vec::with_capacity(msgs.len());
    for msg in msgs {
        let id = nats::message_id(&msg);
        let span = nats::process_span(&msg.subject, &id, &w.consumer_name, msg.headers.as_ref());
        let decoded: Result<DispatchCommand, String> =
            serde_json::from_slice(&msg.payload).map_err(|e| e.to_string());
        let wait = decoded.as_ref().ok().and_then(|cmd| early(&w.d, cmd));
        match decoded {
            Ok(cmd) if cmd.channel == channel && wait.is_some() => {
                // Decided for an instant this replica's clock has not reached (a
                // clock-skewed replica): back to the stream until then, unrecorded.
                let wait = wait.unwrap_or_default();
                span.record("regua.outcome", "early");
                let wait_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX);
                tracing::info!(parent: &span, wait_ms, "command before its instant; redelivered then");
                nats::settle(&msg, AckKind::Nak(Some(wait))).await;
            }
            Ok(cmd) if cmd.channel == channel => {
                span.record("regua.tenant", cmd.tenant.as_str());
                span.record(
                    "regua.invoice_id",
                    cmd.invoices.first().map_or("", |i| i.invoice_id.as_str()),
                );
                let now = now_for(&w.d, &cmd);
                items.push(Item {
                    msg,
                    cmd,
                    span,
                    now,
                });
            }
            other => {
                let reason = match other {
                    Ok(cmd) => format!(
                        "command for {} on the {} subject",
                        cmd.channel.as_str(),
                        channel.as_str()
                    ),
                    Err(e) => format!("malformed dispatch command: {e}"),
                };
                span.record("regua.outcome", "dead_letter");
                let tenant = subjects::tenant_token(&msg.subject);
                nats::dead_letter(&w.d.js, &msg, &w.consumer_name, tenant, &reason).await?;
            }
        }
    }
    if items.is_empty() {
        return Ok(());
    }

    // Claim and guard. A Postgres outage holds the batch, with progress acks, however
    // long it lasts: no delivery is spent, no command stranded.
    let held: Vec<&jetstream::Message> = items.iter().map(|i| &i.msg).collect();
    let claimed =
        nats::hold_through_outage(&held, cancel, || claim_and_guard(w, &items), is_outage).await;
    let plans = match claimed {
        Held::Done(plans) => plans,
        Held::Failed(e) => return Err(e),
        Held::HandedBack => return Ok(()),
    };

    // Rate limit, then send concurrently.
    let sends: Vec<(usize, &Rendered, Option<&str>)> = plans
        .iter()
        .enumerate()
        .filter_map(|(i, p)| match p {
            Plan::Send {
                rendered,
                unsubscribe_url,
                ..
            } => Some((i, rendered, unsubscribe_url.as_deref())),
            _ => None,
        })
        .collect();
    let n = sends.len();
    let reserved = nats::hold_through_outage(
        &held,
        cancel,
        || w.limiter.reserve(n),
        db::is_connection_error,
    )
    .await;
    let slots = match reserved {
        Held::Done(slots) => slots,
        Held::Failed(e) => return Err(e.into()),
        // Claimed `sending` and never called: reported unknown when redelivered.
        Held::HandedBack => return Ok(()),
    };
    let mut outcomes: Vec<Option<Outcome>> = vec![None; items.len()];
    // The settlement fence: shared locks on the dunning messages' invoices, held until
    // their calls return; a message naming a settled invoice is not sent.
    let gated: Vec<(String, String)> = sends
        .iter()
        .filter(|(i, ..)| items[*i].cmd.kind == CommandKind::Step)
        .flat_map(|(i, ..)| {
            let cmd = &items[*i].cmd;
            cmd.invoices
                .iter()
                .map(|inv| (cmd.tenant.clone(), inv.invoice_id.clone()))
        })
        .collect();
    let (gate, settled) = match fence::Gate::open(&w.d.pool, &gated).await {
        Ok(g) => (Some(g.0), Some(g.1)),
        Err(e) => {
            tracing::warn!(error = %e, "settlement fence unavailable; dunning messages wait");
            (None, None)
        }
    };
    let sends: Vec<_> = sends
        .into_iter()
        .zip(slots)
        .filter(|((i, ..), _)| {
            let cmd = &items[*i].cmd;
            if cmd.kind != CommandKind::Step {
                return true;
            }
            let blocked = match &settled {
                None => Some(Outcome::Transient {
                    reason: "settlement fence unavailable".into(),
                    retry_after: None,
                }),
                Some(s) => cmd
                    .invoices
                    .iter()
                    .any(|inv| s.contains(&(cmd.tenant.clone(), inv.invoice_id.clone())))
                    .then_some(Outcome::Fenced),
            };
            match blocked {
                Some(o) => {
                    outcomes[*i] = Some(o);
                    false
                }
                None => true,
            }
        })
        .collect();
    let calls = sends
        .into_iter()
        .map(|((i, rendered, unsubscribe_url), slot)| {
            let item = &items[i];
            let out = Outgoing {
                cmd: &item.cmd,
                rendered,
                key: key_of(&item.cmd, channel),
                unsubscribe_url,
                status_callback: &w.status_callback,
            };
            let span = tracing::info_span!(
                parent: &item.span,
                "provider send",
                otel.kind = "client",
                regua.channel = channel.as_str(),
                regua.provider = w.adapter.provider(),
                regua.step = item.cmd.step.as_str(),
                regua.outcome = tracing::field::Empty,
            );
            async move {
                let (channel, provider) = (channel.as_str(), w.adapter.provider());
                let wait = slot.saturating_duration_since(tokio::time::Instant::now());
                metrics::histogram!(metrics_names::DISPATCH_RATE_LIMIT_WAIT, "channel" => channel)
                    .record(wait.as_secs_f64());
                tokio::time::sleep_until(slot).await;
                let started = tokio::time::Instant::now();
                let outcome = w.adapter.send(&out).await;
                metrics::histogram!(
                    metrics_names::DISPATCH_PROVIDER_SECONDS,
                    "channel" => channel,
                    "provider" => provider,
                )
                .record(started.elapsed().as_secs_f64());
                tracing::Span::current().record("regua.outcome", outcome_name(&outcome));
                (i, outcome)
            }
            .instrument(span)
        });
    for (i, outcome) in futures::future::join_all(calls).await {
        outcomes[i] = Some(outcome);
    }
    if let Some(gate) = gate
        && let Err(e) = gate.close().await
    {
        // A failed commit still ends the transaction and frees its locks.
        tracing::warn!(error = %e, "closing the settlement fence gate failed");
    }

    // Record the provider calls' results, holding them (and the provider's ids) through
    // a Postgres outage or restart: an attempt left `sending` would be reported
    // unknown. Only a stop during an outage gives up on them.
    let recorded = nats::hold_through_outage(
        &held,
        cancel,
        || record(w, &items, &plans, &outcomes),
        is_outage,
    )
    .await;
    let settles = match recorded {
        Held::Done(settles) => settles,
        Held::Failed(e) => return Err(e),
        Held::HandedBack => return Ok(()),
    };
    w.d.wake_relay();
    for (item, settle) in items.iter().zip(settles) {
        match settle {
            Settle::Ack => nats::settle(&item.msg, AckKind::Ack).await,
            Settle::Nak(delay) => nats::settle(&item.msg, AckKind::Nak(Some(delay))).await,
            Settle::DeadLetter(reason) => {
                let (js, consumer) = (&w.d.js, &w.consumer_name);
                if let Err(e) =
                    nats::dead_letter(js, &item.msg, consumer, &item.cmd.tenant, &reason).await
                {
                    tracing::warn!(error = %e, "dead-lettering failed; the command will be redelivered and found done");
                }
            }
        }
    }
    Ok(())
}

/// Counts one message's end in `regua_dispatch_sends_total`.
fn count_send(w: &Worker, outcome: &'static str) {
    metrics::counter!(
        metrics_names::DISPATCH_SENDS,
        "channel" => w.channel().as_str(),
        "provider" => w.adapter.provider(),
        "outcome" => outcome,
    )
    .increment(1);
}

fn outcome_name(o: &Outcome) -> &'static str {
    match o {
        Outcome::Sent { .. } => "sent",
        Outcome::Permanent { .. } => "permanent_failure",
        Outcome::Transient { .. } => "transient_failure",
        Outcome::Unknown { .. } => "unknown",
        Outcome::Fenced => "skipped",
    }
}

/// The stable id of (command, channel): the e-mail `Message-ID`.
pub fn key_of(cmd: &DispatchCommand, channel: Channel) -> uuid::Uuid {
    DispatchCommand::message_id(&format!("{}:{}", cmd.command_id, channel.as_str()))
}

/// The signed one-click unsubscribe URL for `cmd`'s recipient (`None` only for ids that
/// cannot be signed, which intake never accepts).
pub fn unsubscribe_url(d: &Dispatcher, cmd: &DispatchCommand) -> Option<String> {
    let token = sign::link_token(
        &d.config.link_secret,
        &LinkSubject {
            tenant: cmd.tenant.clone(),
            customer_id: cmd.recipient.customer_id.clone(),
            channel: Channel::Email,
        },
    )?;
    Some(d.public(&format!("{}/{token}", crate::webhooks::UNSUBSCRIBE)))
}

/// The guard's decision for a command seen for the first time: skip, broken (render
/// failed), or send.
fn guard(w: &Worker, item: &Item, facts: &store::GuardFacts) -> Plan {
    let channel = w.channel();
    let cmd = &item.cmd;
    // A closed invoice stops its dunning; the thank-you is sent because it was paid.
    let closed = |invoice_id: &str| {
        cmd.kind == CommandKind::Step
            && facts
                .closed
                .contains(&(cmd.tenant.clone(), invoice_id.to_owned()))
    };
    let customer = (cmd.tenant.clone(), cmd.recipient.customer_id.clone());
    let skip = |reason: &str, fallback: bool| Plan::Skip {
        reason: reason.to_owned(),
        fallback,
    };
    if cmd.test_clock && !w.d.config.dispatch.test_clock_sends {
        // A simulation never reaches a real debtor: only sandboxes take these.
        skip("test_clock", false)
    } else if cmd.invoices.iter().all(|i| closed(&i.invoice_id)) {
        skip("invoice_closed", false)
    } else if facts.opted_out.contains(&customer) {
        skip("opted_out", true)
    } else if channel == Channel::Whatsapp
        && (!cmd.recipient.whatsapp_opt_in || facts.no_whatsapp.contains(&customer))
    {
        skip("no_whatsapp_opt_in", true)
    } else if item.now > cmd.not_after {
        skip("window_closed", false)
    } else {
        // Invoices closed since the command was made leave the message.
        let mut message = cmd.message();
        message.invoices.retain(|i| !closed(&i.invoice_id));
        let links = Links {
            unsubscribe_url: (channel == Channel::Email)
                .then(|| unsubscribe_url(&w.d, cmd))
                .flatten(),
        };
        match template::render(&message, channel.into(), &links) {
            Ok(rendered) => Plan::Send {
                rendered,
                unsubscribe_url: links.unsubscribe_url,
                calls: 0,
            },
            Err(e) => Plan::Broken(format!("permanent: {e}")),
        }
    }
}

/// Applies the guard and renders what may go, with no transaction open (a render runs
/// on its fuel, but holds no lock or connection meanwhile); then transaction 1 claims
/// every command's attempt in its decided state — `sending` before any provider call.
/// A command seen before (a redelivery) is locked and decided from its attempt
/// instead: final ones are done, one still `sending` is unknown, one waiting for a
/// retry goes again.
async fn claim_and_guard(w: &Worker, items: &[Item]) -> Result<Vec<Plan>, DispatchError> {
    let channel = w.channel();
    let provider = w.adapter.provider();
    let cmds: Vec<&DispatchCommand> = items.iter().map(|i| &i.cmd).collect();
    let facts = {
        let mut conn = w.d.pool.acquire().await?;
        store::guard_facts(&mut conn, channel, &cmds).await?
    };
    let first: Vec<Plan> = items.iter().map(|item| guard(w, item, &facts)).collect();
    let mut tx = w.d.pool.begin().await?;
    let mut new = Vec::with_capacity(items.len());
    for (item, plan) in items.iter().zip(&first) {
        let (state, reason) = match plan {
            Plan::Skip { reason, .. } => (State::Skipped, Some(reason.clone())),
            Plan::Broken(reason) => (State::Failed, Some(reason.clone())),
            _ => (State::Sending, None),
        };
        new.push(NewAttempt {
            cmd: &item.cmd,
            address_key: channels::address_key(&item.cmd, channel),
            provider,
            json: String::from_utf8_lossy(&item.msg.payload).into_owned(),
            state,
            reason,
        });
    }
    let fresh = store::claim(&mut tx, channel, &new).await?;
    let seen: Vec<&DispatchCommand> = cmds
        .iter()
        .copied()
        .filter(|c| !fresh.contains(&(c.tenant.clone(), c.command_id.clone())))
        .collect();
    let existing = store::lock(&mut tx, channel, &seen).await?;
    let mut plans = Vec::with_capacity(items.len());
    let mut updates = Vec::new();
    let mut events: Vec<OutboxMessage> = Vec::new();
    for (item, plan) in items.iter().zip(first) {
        let cmd = &item.cmd;
        let key = (cmd.tenant.clone(), cmd.command_id.clone());
        let is_fresh = fresh.contains(&key);
        let (state, calls) = if is_fresh {
            (State::Pending, 0)
        } else {
            existing.get(&key).copied().unwrap_or((State::Pending, 0))
        };
        let plan = if state.is_final() {
            Plan::Done
        } else if state == State::Sending {
            Plan::Unknown
        } else {
            match plan {
                Plan::Send {
                    rendered,
                    unsubscribe_url,
                    ..
                } => Plan::Send {
                    rendered,
                    unsubscribe_url,
                    calls,
                },
                other => other,
            }
        };
        let tp = telemetry::traceparent(&item.span);
        // A fresh attempt was inserted in its decided state; a seen one is updated.
        let mut base = |state: State, reason: Option<String>, call: bool| {
            if !is_fresh {
                updates.push(Update {
                    reason,
                    call,
                    ..Update::new(cmd, state)
                });
            }
        };
        let because = |reason: &str| EventFacts {
            reason: Some(reason.to_owned()),
            ..Default::default()
        };
        match &plan {
            Plan::Done => {
                item.span.record("regua.outcome", "duplicate");
            }
            Plan::Unknown => {
                item.span.record("regua.outcome", "unknown");
                base(State::Unknown, Some("outcome_unknown".into()), false);
                let facts = EventFacts {
                    attempts: u32::try_from(calls).unwrap_or(0),
                    ..because("outcome_unknown")
                };
                events.push(w.event(cmd, MessageStatus::Unknown, item.now, facts, tp)?);
            }
            Plan::Skip { reason, fallback } => {
                count_send(w, "skipped");
                item.span.record("regua.outcome", "skipped");
                base(State::Skipped, Some(reason.clone()), false);
                let kind = MessageStatus::Skipped;
                events.extend(w.ended(cmd, kind, item.now, because(reason), *fallback, tp)?);
            }
            Plan::Broken(reason) => {
                item.span.record("regua.outcome", "failed");
                base(State::Failed, Some(reason.clone()), false);
                let kind = MessageStatus::Failed;
                events.extend(w.ended(cmd, kind, item.now, because(reason), true, tp)?);
            }
            Plan::Send { .. } => base(State::Sending, None, true),
        }
        plans.push(plan);
    }
    store::update(&mut tx, channel, &updates).await?;
    OUTBOX.enqueue(&mut tx, &events).await?;
    tx.commit().await?;
    Ok(plans)
}

/// The backoff before call `calls + 1`: exponential from the configured base, with
/// full jitter, at least the provider's `Retry-After`, at most five minutes.
pub fn retry_delay(
    base: Duration,
    calls: i32,
    retry_after: Option<Duration>,
    rng: &mut impl Rng,
) -> Duration {
    let exp =
        base.saturating_mul(2u32.saturating_pow(u32::try_from(calls.max(1) - 1).unwrap_or(0)));
    let capped = exp.min(MAX_BACKOFF);
    // Half fixed, half jitter: replicas retrying together spread out.
    let half = capped / 2;
    let jitter =
        Duration::from_millis(rng.random_range(0..=u64::try_from(half.as_millis()).unwrap_or(0)));
    let delay = half + jitter;
    match retry_after {
        Some(r) => delay.max(r).min(MAX_BACKOFF.max(r)),
        None => delay,
    }
}

/// Transaction 2: every result, its event, and any fallback command.
async fn record(
    w: &Worker,
    items: &[Item],
    plans: &[Plan],
    outcomes: &[Option<Outcome>],
) -> Result<Vec<Settle>, DispatchError> {
    let max_attempts = i32::try_from(w.d.config.dispatch.max_attempts).unwrap_or(5);
    let mut updates = Vec::new();
    let mut events = Vec::new();
    let mut settles = Vec::with_capacity(items.len());
    let mut ended: Vec<&'static str> = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let cmd = &item.cmd;
        let (
            Plan::Send {
                rendered, calls, ..
            },
            Some(outcome),
        ) = (&plans[i], &outcomes[i])
        else {
            settles.push(Settle::Ack);
            continue;
        };
        // This call is the (calls + 1)th.
        let calls = calls + 1;
        let attempts = u32::try_from(calls).unwrap_or(0);
        let tp = telemetry::traceparent(&item.span);
        let sent_at = now_for(&w.d, cmd);
        let segments = rendered
            .segments
            .map(|s| u32::try_from(s.count).unwrap_or(u32::MAX));
        let mut update = Update {
            segments: segments.and_then(|s| i32::try_from(s).ok()),
            ..Update::new(cmd, State::Sent)
        };
        let tried = |reason: String| EventFacts {
            reason: Some(reason),
            attempts,
            ..Default::default()
        };
        item.span.record("regua.outcome", outcome_name(outcome));
        ended.push(match outcome {
            Outcome::Sent { .. } => "sent",
            Outcome::Permanent { .. } => "failed",
            Outcome::Transient { .. } if calls >= max_attempts => "dead_lettered",
            Outcome::Transient { .. } => "retried",
            Outcome::Fenced => "fenced",
            Outcome::Unknown { .. } => "unknown",
        });
        match outcome {
            Outcome::Sent {
                provider_message_id,
            } => {
                update.provider_message_id = Some(provider_message_id.clone());
                update.sent_at = Some(sent_at);
                update.traceparent = tp.clone();
                let facts = EventFacts {
                    provider_message_id: Some(provider_message_id.clone()),
                    sent_at: Some(sent_at),
                    attempts,
                    segments,
                    ..Default::default()
                };
                events.push(w.event(cmd, MessageStatus::Sent, sent_at, facts, tp)?);
                settles.push(Settle::Ack);
            }
            Outcome::Permanent { reason } => {
                let reason = format!("permanent: {reason}");
                update.state = State::Failed;
                update.reason = Some(reason.clone());
                let kind = MessageStatus::Failed;
                events.extend(w.ended(cmd, kind, sent_at, tried(reason), true, tp)?);
                settles.push(Settle::Ack);
            }
            Outcome::Transient {
                reason,
                retry_after,
            } => {
                if calls >= max_attempts {
                    let reason = format!("retries_exhausted: {reason}");
                    update.state = State::Failed;
                    update.reason = Some(reason.clone());
                    let facts = tried(reason.clone());
                    events.push(w.event(cmd, MessageStatus::Failed, sent_at, facts, tp)?);
                    settles.push(Settle::DeadLetter(reason));
                } else {
                    update.state = State::Retry;
                    update.reason = Some(reason.clone());
                    settles.push(Settle::Nak(retry_delay(
                        w.d.config.dispatch.retry_base,
                        calls,
                        *retry_after,
                        &mut rand::rng(),
                    )));
                }
            }
            Outcome::Fenced => {
                let reason = "invoice_closed".to_owned();
                update.state = State::Skipped;
                update.reason = Some(reason.clone());
                let facts = EventFacts {
                    reason: Some(reason),
                    ..Default::default()
                };
                let kind = MessageStatus::Skipped;
                events.extend(w.ended(cmd, kind, sent_at, facts, false, tp)?);
                settles.push(Settle::Ack);
            }
            Outcome::Unknown { reason } => {
                let reason = format!("outcome_unknown: {reason}");
                update.state = State::Unknown;
                update.reason = Some(reason.clone());
                let facts = tried(reason);
                events.push(w.event(cmd, MessageStatus::Unknown, sent_at, facts, tp)?);
                settles.push(Settle::Ack);
            }
        }
        updates.push(update);
    }
    let mut tx = w.d.pool.begin().await?;
    store::update(&mut tx, w.channel(), &updates).await?;
    OUTBOX.enqueue(&mut tx, &events).await?;
    tx.commit().await?;
    for outcome in ended {
        count_send(w, outcome);
    }
    Ok(settles)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_delay_grows_jitters_honours_retry_after_and_is_capped() {
        let mut rng = rand::rng();
        let base = Duration::from_secs(1);
        for calls in 1..8 {
            let d = retry_delay(base, calls, None, &mut rng);
            let full = base * 2u32.pow(u32::try_from(calls - 1).unwrap());
            assert!(d >= full / 2 && d <= full, "{calls}: {d:?}");
        }
        assert!(retry_delay(base, 30, None, &mut rng) <= MAX_BACKOFF);
        let r = retry_delay(base, 1, Some(Duration::from_secs(7)), &mut rng);
        assert_eq!(r, Duration::from_secs(7));
    }
}
