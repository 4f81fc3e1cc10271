//! What the floors share: the work an issue's guarantees demand of any implementation,
//! done by raw clients with none of regua's code ([`crate::intake_floor`],
//! `dispatch::floor`, `scheduler::firing_floor`). Their streams, a batch loop over a
//! durable pull consumer, and an outbox shaped as the services' (one packed row per
//! transaction, published after commit, then deleted).

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_nats::jetstream::consumer::{self, PullConsumer};
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::stream::{self, RetentionPolicy};
use async_nats::jetstream::{Context, Message};
use bytes::Bytes;
use regua_platform::nats;
use sqlx::{PgConnection, PgPool};

/// A floor run's streams: its input on `floor.in.>` (with `retention`), with a durable
/// pull consumer, which this returns, and its events on `floor.evt.>`.
pub async fn streams(js: &Context, retention: RetentionPolicy) -> anyhow::Result<PullConsumer> {
    let input = js
        .create_stream(stream::Config {
            name: "FLOOR_IN".into(),
            subjects: vec!["floor.in.>".into()],
            retention,
            storage: stream::StorageType::File,
            ..Default::default()
        })
        .await?;
    js.create_stream(stream::Config {
        name: "FLOOR_EVT".into(),
        subjects: vec!["floor.evt.>".into()],
        storage: stream::StorageType::File,
        ..Default::default()
    })
    .await?;
    Ok(input
        .create_consumer(consumer::pull::Config {
            durable_name: Some("floor".into()),
            ack_policy: consumer::AckPolicy::Explicit,
            max_ack_pending: 20_000,
            ..Default::default()
        })
        .await?)
}

/// Deletes what [`streams`] created.
pub async fn drop_streams(js: &Context) -> anyhow::Result<()> {
    js.delete_stream("FLOOR_IN").await?;
    js.delete_stream("FLOOR_EVT").await?;
    Ok(())
}

/// Publishes `(subject, body, message id)`s, acks awaited (every bench's preloads use
/// it too).
pub async fn publish_all<B: Into<Bytes>>(
    js: &Context,
    messages: impl IntoIterator<Item = (String, B, String)>,
) -> anyhow::Result<()> {
    let publishes = messages.into_iter().map(|(subject, body, id)| {
        (
            subject,
            PublishMessage::build().message_id(id).payload(body.into()),
        )
    });
    nats::publish_windowed(js, publishes).await?;
    Ok(())
}

/// Up to `batch` messages from `consumer`, waiting at most half a second.
async fn fetch(consumer: &PullConsumer, batch: usize) -> anyhow::Result<Vec<Message>> {
    let mut fetched = consumer
        .fetch()
        .max_messages(batch)
        .expires(Duration::from_millis(500))
        .messages()
        .await
        .map_err(|e| anyhow::anyhow!("fetch: {e}"))?;
    let mut msgs = Vec::with_capacity(batch);
    while let Some(m) = futures::StreamExt::next(&mut fetched).await {
        msgs.push(m.map_err(|e| anyhow::anyhow!("fetch: {e}"))?);
    }
    Ok(msgs)
}

/// `workers` fetchers share `consumer` until `n` messages are done: each takes batches
/// of up to `batch`, hands each to `handle` (which gives it back once its effects are
/// stored) and then acks it.
pub async fn drain<H, F>(
    consumer: &PullConsumer,
    n: usize,
    batch: usize,
    workers: usize,
    handle: H,
) -> anyhow::Result<()>
where
    H: Fn(Vec<Message>) -> F + Clone + Send + 'static,
    F: Future<Output = anyhow::Result<Vec<Message>>> + Send,
{
    let done = Arc::new(AtomicUsize::new(0));
    let fetchers = (0..workers.max(1)).map(|_| {
        let (consumer, done, handle) = (consumer.clone(), done.clone(), handle.clone());
        tokio::spawn(async move {
            while done.load(Ordering::Relaxed) < n {
                let msgs = fetch(&consumer, batch).await?;
                if msgs.is_empty() {
                    continue;
                }
                let msgs = handle(msgs).await?;
                futures::future::try_join_all(msgs.iter().map(|m| m.ack()))
                    .await
                    .map_err(|e| anyhow::anyhow!("ack: {e}"))?;
                done.fetch_add(msgs.len(), Ordering::Relaxed);
            }
            anyhow::Ok(())
        })
    });
    for f in futures::future::join_all(fetchers).await {
        f??;
    }
    Ok(())
}

/// Creates the floors' outbox table: packed rows, payloads lz4, as the services' are.
pub async fn create_outbox(pool: &PgPool) -> anyhow::Result<()> {
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS floor_outbox (seq BIGSERIAL PRIMARY KEY, subjects TEXT[] NOT NULL, \
         payloads BYTEA[] COMPRESSION lz4 NOT NULL)",
    )
    .execute(pool)
    .await?;
    Ok(())
}

/// A transaction's messages, stored as one outbox row.
pub struct Packed {
    seq: i64,
    messages: Vec<(String, Bytes, String)>,
}

/// Stores `(subject, body, message id)`s as one outbox row in the caller's transaction.
pub async fn enqueue(
    conn: &mut PgConnection,
    messages: Vec<(String, Bytes, String)>,
) -> anyhow::Result<Packed> {
    let subjects: Vec<&str> = messages.iter().map(|(s, _, _)| s.as_str()).collect();
    let payloads: Vec<&[u8]> = messages.iter().map(|(_, b, _)| &b[..]).collect();
    let seq = sqlx::query_scalar(
        "INSERT INTO floor_outbox (subjects, payloads) VALUES ($1, $2) RETURNING seq",
    )
    .bind(&subjects)
    .bind(&payloads)
    .fetch_one(conn)
    .await?;
    Ok(Packed { seq, messages })
}

impl Packed {
    /// After commit: publishes the messages from memory, then deletes their row.
    pub async fn relay(self, js: &Context, pool: &PgPool) -> anyhow::Result<()> {
        publish_all(js, self.messages).await?;
        sqlx::query("DELETE FROM floor_outbox WHERE seq = $1")
            .bind(self.seq)
            .execute(pool)
            .await?;
        Ok(())
    }
}
