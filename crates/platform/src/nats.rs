//! NATS and JetStream: connecting, the streams every service relies on, pull consumers,
//! traced publishing, and dead letters.

use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::{self, consumer, stream};
use bytes::Bytes;
use regua_contract::subjects;
use tracing::Span;

use crate::PlatformError;
use crate::config::Config;
use crate::lease::Lease;
use crate::telemetry;

/// How long JetStream remembers a `Nats-Msg-Id` on the inbound stream. Integrators that
/// retry a publish within this window are deduplicated by the server; later repeats are
/// still caught by intake's own record of processed ids.
pub const INBOUND_DUPLICATE_WINDOW: Duration = Duration::from_secs(10 * 60);
/// How long JetStream remembers an event id. An outbox relay that republishes after a
/// crash (or after Postgres was unreachable between publish and delete) within this
/// window produces no duplicate; consumers are idempotent on the envelope id beyond it.
pub const EVENTS_DUPLICATE_WINDOW: Duration = Duration::from_secs(30 * 60);

/// Connects with unlimited reconnects, so a broker restart is ridden out.
pub async fn connect(url: &str, name: &str) -> Result<async_nats::Client, PlatformError> {
    options(name)
        .connect(url)
        .await
        .map_err(PlatformError::nats)
}

/// Connects as `config` says: as its NATS user when one is set, with replies on that
/// user's private inbox ([`inbox_prefix`]), which deploy/nats lets no one else read.
pub async fn connect_as(config: &Config, name: &str) -> Result<async_nats::Client, PlatformError> {
    let mut options = options(name);
    if let Some(user) = &config.nats_user {
        let password = config
            .nats_password
            .as_ref()
            .map(|p| p.expose().to_owned())
            .unwrap_or_default();
        options = options
            .user_and_password(user.clone(), password)
            .custom_inbox_prefix(inbox_prefix(user));
    }
    if let Some(tls) = &config.nats_tls {
        crate::tls::init();
        options = options
            .require_tls(true)
            .add_root_certificates(tls.ca.clone());
        if let Some((cert, key)) = &tls.client {
            options = options.add_client_certificate(cert.clone(), key.clone());
        }
    }
    options
        .connect(config.nats_url.as_str())
        .await
        .map_err(PlatformError::nats)
}

/// The reply inbox prefix of NATS user `user`.
pub fn inbox_prefix(user: &str) -> String {
    format!("_INBOX_{user}")
}

fn options(name: &str) -> async_nats::ConnectOptions {
    async_nats::ConnectOptions::new()
        .name(name)
        .retry_on_initial_connect()
        .max_reconnects(None)
        .connection_timeout(Duration::from_secs(5))
}

/// A JetStream context with a request timeout suited to a busy 2-core machine.
pub fn jetstream(client: async_nats::Client) -> jetstream::Context {
    jetstream::ContextBuilder::new()
        .timeout(Duration::from_secs(10))
        .build(client)
}

/// How a process treats the platform streams at startup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Streams {
    /// Create them, or update them to the current configuration, with `replicas`
    /// copies each (3 on a 3-node cluster).
    Provision { replicas: usize },
    /// Only check that they exist: a least-privilege service user may not manage them.
    Check,
}

impl Streams {
    /// What `config` asks (`REGUA_NATS_PROVISION`, `REGUA_NATS_STREAM_REPLICAS`).
    pub fn of(config: &Config) -> Streams {
        if config.nats_provision {
            Streams::Provision {
                replicas: config.nats_stream_replicas,
            }
        } else {
            Streams::Check
        }
    }
}

/// The configuration of every platform stream, with `replicas` copies each.
pub fn stream_configs(replicas: usize) -> Vec<stream::Config> {
    const DAY: u64 = 24 * 3600;
    let configs = vec![
        stream::Config {
            name: subjects::STREAM_INBOUND.into(),
            description: Some("regua v1 inbound: what integrators publish".into()),
            subjects: vec![subjects::inbound_all()],
            retention: stream::RetentionPolicy::Limits,
            storage: stream::StorageType::File,
            max_age: Duration::from_secs(7 * DAY),
            duplicate_window: INBOUND_DUPLICATE_WINDOW,
            ..Default::default()
        },
        stream::Config {
            name: subjects::STREAM_EVENTS.into(),
            description: Some("regua v1 domain events, from service outboxes".into()),
            subjects: vec![subjects::events_all()],
            retention: stream::RetentionPolicy::Limits,
            storage: stream::StorageType::File,
            max_age: Duration::from_secs(30 * DAY),
            duplicate_window: EVENTS_DUPLICATE_WINDOW,
            ..Default::default()
        },
        stream::Config {
            name: subjects::STREAM_COMMANDS.into(),
            description: Some("regua v1 commands to the channel dispatchers".into()),
            subjects: vec![subjects::commands_all()],
            retention: stream::RetentionPolicy::WorkQueue,
            storage: stream::StorageType::File,
            max_age: Duration::from_secs(7 * DAY),
            duplicate_window: EVENTS_DUPLICATE_WINDOW,
            ..Default::default()
        },
        stream::Config {
            name: subjects::STREAM_DEAD_LETTER.into(),
            description: Some("regua v1 dead letters, with the reason in headers".into()),
            subjects: vec![subjects::dead_letter_all()],
            retention: stream::RetentionPolicy::Limits,
            storage: stream::StorageType::File,
            max_age: Duration::from_secs(30 * DAY),
            ..Default::default()
        },
    ];
    configs
        .into_iter()
        .map(|c| stream::Config {
            num_replicas: replicas,
            ..c
        })
        .collect()
}

/// Provisions the platform streams (creates them or updates them to the current
/// configuration: what `regua migrate` and a development process do) or, under a
/// least-privilege service user, checks that each exists and fails naming the one that
/// does not.
pub async fn ensure_streams(js: &jetstream::Context, mode: Streams) -> Result<(), PlatformError> {
    let replicas = match mode {
        Streams::Provision { replicas } => replicas,
        Streams::Check => 1,
    };
    for config in stream_configs(replicas) {
        let name = config.name.clone();
        if mode == Streams::Check {
            js.get_stream(&name).await.map_err(|e| {
                PlatformError::Nats(format!(
                    "stream {name} is not there ({e}); provision the streams with \
                     `regua migrate` as the provisioning NATS user"
                ))
            })?;
        } else {
            js.create_or_update_stream(config)
                .await
                .map_err(|e| PlatformError::Nats(format!("stream {name}: {e}")))?;
        }
    }
    Ok(())
}

/// Whether every platform stream exists (for readiness).
pub async fn streams_present(js: &jetstream::Context) -> bool {
    for config in stream_configs(1) {
        if js.get_stream(&config.name).await.is_err() {
            return false;
        }
    }
    true
}

/// Creates a durable pull consumer, or adopts the existing one.
pub async fn ensure_pull_consumer(
    js: &jetstream::Context,
    stream_name: &str,
    config: consumer::pull::Config,
) -> Result<consumer::PullConsumer, PlatformError> {
    let stream = js
        .get_stream(stream_name)
        .await
        .map_err(|e| PlatformError::Nats(format!("stream {stream_name}: {e}")))?;
    let name = config.durable_name.clone().unwrap_or_default();
    crate::metrics::watch_consumer(stream_name, &name);
    match stream.create_consumer(config).await {
        Ok(c) => Ok(c),
        Err(create_err) => {
            // An older server refuses to change some fields of an existing consumer;
            // keep running on the existing one and say so.
            tracing::warn!(consumer = %name, error = %create_err, "consumer config not applied; using the existing consumer");
            stream
                .get_consumer(&name)
                .await
                .map_err(|e| PlatformError::Nats(format!("consumer {name}: {e}")))
        }
    }
}

/// Fetches the next batch of up to `max` messages from `consumer`, waiting at most
/// `expires` for them. A failed fetch is logged (as `what`) and retried after
/// `backoff`; `None` once `cancel` fires. A fetch under way is not cut short (keep
/// `expires` short): messages it brings are returned, to be finished, rather than left
/// unacked until their ack wait runs out. An empty batch is `Some(vec![])`.
pub async fn fetch_batch(
    consumer: &consumer::PullConsumer,
    max: usize,
    expires: Duration,
    backoff: &mut crate::shutdown::Backoff,
    cancel: &tokio_util::sync::CancellationToken,
    what: &str,
) -> Option<Vec<jetstream::Message>> {
    loop {
        if cancel.is_cancelled() {
            return None;
        }
        match consumer
            .fetch()
            .max_messages(max)
            .expires(expires)
            .messages()
            .await
        {
            Ok(mut batch) => {
                backoff.reset();
                let mut msgs = Vec::new();
                while let Some(Ok(m)) = futures::StreamExt::next(&mut batch).await {
                    msgs.push(m);
                }
                return Some(msgs);
            }
            Err(e) => {
                tracing::warn!(error = %e, consumer = what, "fetch failed; retrying");
                if !backoff.wait(cancel).await {
                    return None;
                }
            }
        }
    }
}

/// A durable pull consumer of every domain event (`regua.v1.evt.>`) that applies them
/// in stream order, run by [`consume_batches`]: only the replica holding the consumer's
/// lease fetches, with at most two batches of `batch` unacked (the one applying and the
/// next, fetched meanwhile).
pub fn in_order_events(
    durable: &str,
    description: &str,
    batch: usize,
    max_deliver: i64,
) -> consumer::pull::Config {
    consumer::pull::Config {
        durable_name: Some(durable.into()),
        description: Some(description.into()),
        filter_subject: subjects::events_all(),
        ack_policy: consumer::AckPolicy::Explicit,
        deliver_policy: consumer::DeliverPolicy::All,
        ack_wait: Duration::from_secs(60),
        max_deliver,
        max_ack_pending: i64::try_from(batch.saturating_mul(2)).unwrap_or(1000),
        ..Default::default()
    }
}

/// How a consumer whose batches apply as one unit (one transaction, in stream order)
/// is run by [`consume_batches`].
pub struct BatchConsumer<'a> {
    pub js: &'a jetstream::Context,
    pub consumer: &'a consumer::PullConsumer,
    /// The durable's name, for logs, dead letters and its lease.
    pub name: &'a str,
    /// Where the lease is held and the batches are written.
    pub pool: &'a sqlx::PgPool,
    pub batch: usize,
    pub expires: Duration,
    pub max_deliver: i64,
}

/// The name of the lease ([`Lease`]) an in-order consumer's replicas contend for.
fn in_order_lease(durable: &str) -> String {
    format!("in-order/{durable}")
}

/// Why [`consume_leased`] returned.
enum Ended {
    Cancelled,
    /// The lease's session ended, or a fetched batch was lost in a failed task: start
    /// over from the lease, which waits for what is left unacked to come back in order.
    Interrupted,
}

/// Runs an in-order consumer until `cancel`, on the replica that holds its lease
/// (`in-order/<durable>`, a [`Lease`]); the others stand by and take over when the
/// holder's Postgres session ends.
///
/// The holder applies each batch with `apply`, on the lease's own connection (so that
/// a holder that lost the lease cannot commit), while it fetches the next one. A batch
/// that applied is acked; one that failed is retried message by message, and a message
/// that fails alone is dead-lettered at once when `poison` says it never will apply,
/// else naked until `max_deliver`. `after` runs after every non-empty batch (to wake a
/// relay). On `cancel`, the batches in hand are finished first.
///
/// Order across a change of holder: a holder that takes over while messages are still
/// unacked (a previous holder's batches, cut short) waits the consumer's ack wait
/// before it fetches, so that those come back, in stream order, before anything newer.
pub async fn consume_batches<E: std::fmt::Display>(
    c: BatchConsumer<'_>,
    cancel: &tokio_util::sync::CancellationToken,
    apply: impl for<'m> Fn(
        &'m mut sqlx::PgConnection,
        &'m [jetstream::Message],
    ) -> futures::future::BoxFuture<'m, Result<(), E>>,
    poison: impl Fn(&E) -> bool,
    after: impl Fn(),
) {
    let name = in_order_lease(c.name);
    while let Some(mut lease) = Lease::acquire(c.pool, &name, cancel).await {
        match await_earlier_batches(&c, &mut lease, cancel).await {
            Waited::Done => {}
            Waited::Cancelled => {
                lease.release().await;
                return;
            }
            Waited::LeaseLost => {
                tracing::warn!(consumer = c.name, "the lease's session ended while waiting");
                continue;
            }
        }
        match consume_leased(&c, &mut lease, cancel, &apply, &poison, &after).await {
            Ended::Cancelled => {
                lease.release().await;
                return;
            }
            Ended::Interrupted => tracing::warn!(
                consumer = c.name,
                "in-order consumption interrupted; the batches in hand come back after the ack wait"
            ),
        }
    }
}

/// How [`await_earlier_batches`] ended.
enum Waited {
    Done,
    Cancelled,
    /// The lease's session ended meanwhile: take the lease again.
    LeaseLost,
}

/// Waits, after taking the lease, until messages another holder left unacked are due
/// again (the consumer's ack wait), so they are redelivered before newer ones, keeping
/// the lease's session alive meanwhile.
async fn await_earlier_batches(
    c: &BatchConsumer<'_>,
    lease: &mut Lease,
    cancel: &tokio_util::sync::CancellationToken,
) -> Waited {
    let mut backoff = crate::shutdown::Backoff::new(Duration::from_millis(200));
    let info = loop {
        match c.consumer.get_info().await {
            Ok(info) => break info,
            Err(e) => {
                tracing::warn!(consumer = c.name, error = %e, "consumer info not read; retrying");
                if !backoff.wait(cancel).await {
                    return Waited::Cancelled;
                }
                if !lease.keep_alive().await {
                    return Waited::LeaseLost;
                }
            }
        }
    };
    if info.num_ack_pending == 0 {
        return Waited::Done;
    }
    let wait = info.config.ack_wait + Duration::from_secs(1);
    tracing::info!(
        consumer = c.name,
        unacked = info.num_ack_pending,
        wait_secs = wait.as_secs(),
        "waiting for an earlier holder's unacked messages to come back, in order"
    );
    let until = tokio::time::Instant::now() + wait;
    while tokio::time::Instant::now() < until {
        tokio::select! {
            () = cancel.cancelled() => return Waited::Cancelled,
            () = tokio::time::sleep(crate::lease::KEEPALIVE.min(until - tokio::time::Instant::now())) => {}
        }
        if !lease.keep_alive().await {
            return Waited::LeaseLost;
        }
    }
    Waited::Done
}

/// Fetches the next batch in a task of its own, so it arrives while the batch in hand
/// applies; `None` when `cancel` has fired.
fn prefetch(
    c: &BatchConsumer<'_>,
    cancel: &tokio_util::sync::CancellationToken,
) -> Option<tokio::task::JoinHandle<Option<Vec<jetstream::Message>>>> {
    if cancel.is_cancelled() {
        return None;
    }
    let (consumer, cancel) = (c.consumer.clone(), cancel.clone());
    let (batch, expires, name) = (c.batch, c.expires, c.name.to_owned());
    Some(tokio::spawn(async move {
        let mut backoff = crate::shutdown::Backoff::new(Duration::from_millis(200));
        fetch_batch(&consumer, batch, expires, &mut backoff, &cancel, &name).await
    }))
}

/// Consumes while `lease` is held, until `cancel`.
async fn consume_leased<E: std::fmt::Display>(
    c: &BatchConsumer<'_>,
    lease: &mut Lease,
    cancel: &tokio_util::sync::CancellationToken,
    apply: &impl for<'m> Fn(
        &'m mut sqlx::PgConnection,
        &'m [jetstream::Message],
    ) -> futures::future::BoxFuture<'m, Result<(), E>>,
    poison: &impl Fn(&E) -> bool,
    after: &impl Fn(),
) -> Ended {
    let mut backoff = crate::shutdown::Backoff::new(Duration::from_millis(200));
    let mut next: Option<Vec<jetstream::Message>> = None;
    loop {
        let msgs = match next.take() {
            Some(msgs) => msgs,
            None => match fetch_batch(c.consumer, c.batch, c.expires, &mut backoff, cancel, c.name)
                .await
            {
                Some(msgs) => msgs,
                None => return Ended::Cancelled,
            },
        };
        if msgs.is_empty() {
            if !lease.keep_alive().await {
                tracing::warn!(consumer = c.name, "the lease's session is gone");
                return Ended::Interrupted;
            }
            continue;
        }
        let following = prefetch(c, cancel);
        let lost = match apply(lease.conn(), &msgs).await {
            Ok(()) => {
                for m in &msgs {
                    settle(m, jetstream::AckKind::Ack).await;
                }
                false
            }
            Err(e) if !lease.held().await => {
                tracing::warn!(error = %e, consumer = c.name, "batch failed with the lease's session gone");
                true
            }
            Err(e) => {
                tracing::warn!(error = %e, consumer = c.name, n = msgs.len(), "batch failed; retrying one by one");
                retry_one_by_one(c, lease, &msgs, apply, poison).await
            }
        };
        if lost {
            // Unsettled, the batch in hand and the one fetched meanwhile come back
            // after the ack wait to whichever replica holds the lease then.
            if let Some(task) = following {
                task.abort();
            }
            return Ended::Interrupted;
        }
        after();
        if let Some(task) = following {
            match task.await {
                Ok(fetched) => next = fetched,
                Err(e) => {
                    // Whatever it fetched is unacked now; fetching on would overtake it.
                    tracing::warn!(error = %e, consumer = c.name, "prefetch ended abnormally");
                    return Ended::Interrupted;
                }
            }
        }
    }
}

/// Applies a failed batch's messages one at a time; true when the lease's session was
/// found gone (the rest are left unsettled).
async fn retry_one_by_one<E: std::fmt::Display>(
    c: &BatchConsumer<'_>,
    lease: &mut Lease,
    msgs: &[jetstream::Message],
    apply: &impl for<'m> Fn(
        &'m mut sqlx::PgConnection,
        &'m [jetstream::Message],
    ) -> futures::future::BoxFuture<'m, Result<(), E>>,
    poison: &impl Fn(&E) -> bool,
) -> bool {
    for m in msgs {
        match apply(lease.conn(), std::slice::from_ref(m)).await {
            Ok(()) => settle(m, jetstream::AckKind::Ack).await,
            Err(_) if !lease.held().await => return true,
            Err(e) => {
                let dead = poison(&e);
                settle_failure(c.js, m, c.name, c.max_deliver, &e.to_string(), dead).await;
            }
        }
    }
    false
}

/// Most publishes [`publish_windowed`] keeps awaiting acks. The JetStream context allows
/// 5,000 in flight and blocks the next publish beyond that, so holding more unawaited
/// ack futures than that would deadlock.
pub const PUBLISH_WINDOW: usize = 1_000;

/// Publishes every message in order, keeping at most [`PUBLISH_WINDOW`] acks in flight;
/// returns the acks in order.
pub async fn publish_windowed(
    js: &jetstream::Context,
    messages: impl IntoIterator<Item = (String, PublishMessage)>,
) -> Result<Vec<jetstream::publish::PublishAck>, PlatformError> {
    let mut acks = Vec::new();
    let mut pending = Vec::with_capacity(PUBLISH_WINDOW);
    for (subject, message) in messages {
        let ack = js
            .send_publish(subject, message)
            .await
            .map_err(PlatformError::nats)?;
        pending.push(ack.into_future());
        if pending.len() == PUBLISH_WINDOW {
            acks.extend(
                futures::future::try_join_all(pending.drain(..))
                    .await
                    .map_err(PlatformError::nats)?,
            );
        }
    }
    acks.extend(
        futures::future::try_join_all(pending)
            .await
            .map_err(PlatformError::nats)?,
    );
    Ok(acks)
}

/// A span for publishing to `subject`, with the OpenTelemetry messaging attributes.
pub fn publish_span(subject: &str, message_id: &str) -> Span {
    tracing::info_span!(
        "publish",
        otel.name = %format!("send {subject}"),
        otel.kind = "producer",
        messaging.system = "nats",
        messaging.operation.type = "send",
        messaging.operation.name = "publish",
        messaging.destination.name = %subject,
        messaging.message.id = %message_id,
    )
}

/// A [`publish_span`] that continues the trace of a stored `traceparent` (the change
/// that produced the message), when there is one.
pub fn publish_span_continuing(subject: &str, message_id: &str, traceparent: Option<&str>) -> Span {
    let span = publish_span(subject, message_id);
    if let Some(tp) = traceparent {
        telemetry::continue_from_traceparent(&span, tp);
    }
    span
}

/// A span for processing one consumed message, continuing the publisher's trace.
pub fn process_span(
    subject: &str,
    message_id: &str,
    consumer: &str,
    headers: Option<&HeaderMap>,
) -> Span {
    let span = tracing::info_span!(
        "process",
        otel.name = %format!("process {subject}"),
        otel.kind = "consumer",
        messaging.system = "nats",
        messaging.operation.type = "process",
        messaging.operation.name = "process",
        messaging.destination.name = %subject,
        messaging.consumer.group.name = %consumer,
        messaging.message.id = %message_id,
        regua.tenant = tracing::field::Empty,
        regua.invoice_id = tracing::field::Empty,
        regua.outcome = tracing::field::Empty,
    );
    telemetry::continue_from(&span, headers);
    span
}

/// Builds a JetStream publish whose headers carry `span`'s trace context and whose
/// `Nats-Msg-Id` is `message_id`. The id is set after the headers because setting
/// headers replaces the whole map.
pub fn traced_publish(
    span: &Span,
    mut headers: HeaderMap,
    message_id: &str,
    payload: Bytes,
) -> PublishMessage {
    telemetry::inject(span, &mut headers);
    PublishMessage::build()
        .headers(headers)
        .message_id(message_id)
        .payload(payload)
}

/// Settles `msg` with `kind`; a failure is logged (the message will be redelivered).
pub async fn settle(msg: &jetstream::Message, kind: jetstream::AckKind) {
    if let Err(e) = msg.ack_with(kind).await {
        tracing::warn!(error = %e, "ack failed; the message will be redelivered");
    }
}

/// Settles a message that failed on its own with `error`: dead-lettered for `consumer`
/// when it fails for good (`poison`: it never will apply; or its deliveries reached
/// `max_deliver`), otherwise naked with a delay that doubles per delivery.
pub async fn settle_failure(
    js: &jetstream::Context,
    msg: &jetstream::Message,
    consumer: &str,
    max_deliver: i64,
    error: &str,
    poison: bool,
) {
    let delivered = msg.info().map(|i| i.delivered).unwrap_or(1);
    if poison || delivered >= max_deliver {
        let tenant = subjects::tenant_token(&msg.subject);
        if let Err(dl) = dead_letter(js, msg, consumer, tenant, error).await {
            tracing::error!(error = %dl, "dead-lettering failed; the message will be redelivered");
        }
    } else {
        settle(msg, jetstream::AckKind::Nak(Some(retry_delay(delivered)))).await;
    }
}

/// How [`hold_through_outage`] ended.
#[derive(Debug)]
pub enum Held<T, E> {
    /// `attempt` succeeded.
    Done(T),
    /// `attempt` failed for a reason of its own (not an outage): the caller judges it.
    Failed(E),
    /// The process is stopping during an outage: the messages were handed back.
    HandedBack,
}

/// Runs `attempt` until it succeeds or fails for a reason that is not an outage
/// (`is_outage`, e.g. [`crate::db::is_connection_error`]). While it fails for an
/// outage, `attempt` is retried after a growing pause (at most 5 s), and all along,
/// attempts and pauses alike, `msgs` are kept from redelivery by a progress ack every
/// [`PROGRESS_EVERY`]: an outage is never the messages' fault, and spends none of their
/// deliveries, however long it lasts. If `cancel` fires during an outage, the messages
/// are handed back at once (NAK) for another replica or a restart.
pub async fn hold_through_outage<T, E, F, Fut>(
    msgs: &[&jetstream::Message],
    cancel: &tokio_util::sync::CancellationToken,
    mut attempt: F,
    is_outage: impl Fn(&E) -> bool,
) -> Held<T, E>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
    E: std::fmt::Display,
{
    let mut wait = Duration::from_millis(200);
    loop {
        match in_progress(msgs, attempt()).await {
            Ok(done) => return Held::Done(done),
            Err(e) if !is_outage(&e) => return Held::Failed(e),
            Err(e) if cancel.is_cancelled() => {
                tracing::warn!(error = %e, "outage while stopping; handing the batch back");
                let naks = msgs
                    .iter()
                    .map(|m| settle(m, jetstream::AckKind::Nak(None)));
                futures::future::join_all(naks).await;
                return Held::HandedBack;
            }
            Err(e) => {
                tracing::warn!(error = %e, n = msgs.len(), "postgres unreachable; holding the batch");
                let pause = async {
                    tokio::select! {
                        () = cancel.cancelled() => {}
                        () = tokio::time::sleep(wait) => {}
                    }
                };
                in_progress(msgs, pause).await;
                wait = (wait * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// How often a held batch tells JetStream it is still being worked on: well under the
/// ack waits regua runs with (30 to 60 s by default, 5 s in tests).
pub const PROGRESS_EVERY: Duration = Duration::from_secs(1);

/// Runs `work`, sending `msgs` a progress ack every [`PROGRESS_EVERY`] until it ends
/// (nothing when it ends sooner, as a batch normally does).
async fn in_progress<O>(
    msgs: &[&jetstream::Message],
    work: impl std::future::Future<Output = O>,
) -> O {
    tokio::pin!(work);
    let mut tick =
        tokio::time::interval_at(tokio::time::Instant::now() + PROGRESS_EVERY, PROGRESS_EVERY);
    loop {
        tokio::select! {
            out = &mut work => return out,
            _ = tick.tick() => {
                let progress = msgs.iter().map(|m| settle(m, jetstream::AckKind::Progress));
                futures::future::join_all(progress).await;
            }
        }
    }
}

/// The retry policy of every consumer: a message that failed on its `delivered`-th
/// delivery comes back after 250 ms, doubled per delivery, at most 30 s.
pub fn retry_delay(delivered: i64) -> Duration {
    let doublings = u32::try_from(delivered.saturating_sub(1))
        .unwrap_or(0)
        .min(7);
    (RETRY_BASE * 2u32.pow(doublings)).min(RETRY_CAP)
}

/// The first retry's delay ([`retry_delay`]).
pub const RETRY_BASE: Duration = Duration::from_millis(250);
const RETRY_CAP: Duration = Duration::from_secs(30);

/// The loop of every consumer that is not in order: fetches batches of up to `max` from
/// `consumer` (each fetch waiting at most `expires`) and hands each non-empty one to
/// `handle`, until `cancel`; the batch in hand is finished first. A failed fetch, or a
/// batch `handle` gives back as failed (having settled none of it, so that it comes
/// back after the ack wait), is followed by a growing pause. `name` names the consumer
/// in logs.
pub async fn consume<F, Fut, E>(
    consumer: &consumer::PullConsumer,
    name: &str,
    max: usize,
    expires: Duration,
    cancel: &tokio_util::sync::CancellationToken,
    mut handle: F,
) where
    F: FnMut(Vec<jetstream::Message>) -> Fut,
    Fut: std::future::Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    let mut backoff = crate::shutdown::Backoff::new(Duration::from_millis(200));
    while let Some(msgs) = fetch_batch(consumer, max, expires, &mut backoff, cancel, name).await {
        if msgs.is_empty() {
            continue;
        }
        if let Err(e) = handle(msgs).await {
            tracing::error!(error = %e, consumer = name, "batch failed; it comes back after the ack wait");
            if !backoff.wait(cancel).await {
                break;
            }
        }
    }
}

/// How long a fetch waits for messages before it returns what it has (kept short: a
/// drain waits for the fetch under way).
pub const FETCH_EXPIRES: Duration = Duration::from_millis(500);

/// The message id the publisher gave `msg`: its `Regua-Message-Id`
/// ([`subjects::HEADER_MESSAGE_ID`]), else its `Nats-Msg-Id`, whatever its length.
fn given_id(msg: &jetstream::Message) -> Option<&str> {
    let header = |name: &str| {
        msg.headers
            .as_ref()
            .and_then(|h| h.get(name))
            .map(|v| v.as_str())
            .filter(|v| !v.is_empty())
    };
    header(subjects::HEADER_MESSAGE_ID).or_else(|| header("Nats-Msg-Id"))
}

/// A consumed message's id: the one its publisher gave ([`given_id`]) when it is at most
/// [`subjects::MAX_MESSAGE_ID_BYTES`], else `seq-<stream sequence>` (so no consumer
/// stores or logs an unbounded key; see [`message_id_too_long`]).
pub fn message_id(msg: &jetstream::Message) -> String {
    given_id(msg)
        .filter(|id| id.len() <= subjects::MAX_MESSAGE_ID_BYTES)
        .map_or_else(
            || {
                let seq = msg.info().map(|i| i.stream_sequence).unwrap_or(0);
                format!("seq-{seq}")
            },
            str::to_owned,
        )
}

/// The length of the id `msg`'s publisher gave, when it is over
/// [`subjects::MAX_MESSAGE_ID_BYTES`].
pub fn message_id_too_long(msg: &jetstream::Message) -> Option<usize> {
    given_id(msg)
        .map(str::len)
        .filter(|&n| n > subjects::MAX_MESSAGE_ID_BYTES)
}

/// Copies `msg` to the dead-letter subject with its reason, waits for the PubAck, then
/// terminates the original so it is never delivered again.
pub async fn dead_letter(
    js: &jetstream::Context,
    msg: &jetstream::Message,
    consumer_name: &str,
    tenant_token: &str,
    reason: &str,
) -> Result<(), PlatformError> {
    // Copy the original headers except its Nats-Msg-Id: a dead letter must not be
    // deduplicated against the original.
    let mut headers = HeaderMap::new();
    if let Some(original) = &msg.headers {
        for (name, values) in original.iter() {
            if AsRef::<str>::as_ref(name).eq_ignore_ascii_case("Nats-Msg-Id") {
                // Kept aside, so a replay can restore the id consumers know it by.
                if let Some(id) = values.first() {
                    headers.insert(subjects::HEADER_DLQ_MSG_ID, id.clone());
                }
            } else {
                for v in values {
                    headers.append(name.clone(), v.clone());
                }
            }
        }
    }
    headers.insert(subjects::HEADER_DLQ_REASON, truncate(reason, 512));
    headers.insert(subjects::HEADER_DLQ_SUBJECT, msg.subject.as_str());
    if let Ok(info) = msg.info() {
        headers.insert(
            subjects::HEADER_DLQ_STREAM_SEQ,
            info.stream_sequence.to_string().as_str(),
        );
    }
    let subject = subjects::dead_letter(consumer_name, tenant_token);
    js.publish_with_headers(subject, headers, msg.payload.clone())
        .await
        .map_err(PlatformError::nats)?
        .await
        .map_err(PlatformError::nats)?;
    msg.ack_with(jetstream::AckKind::Term)
        .await
        .map_err(PlatformError::nats)?;
    Ok(())
}

fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}
