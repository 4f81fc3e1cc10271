//! Samples what no code path observes, for the gauges in [`crate::metrics`]: each
//! registered durable consumer's pending and ack-pending counts, and each registered
//! outbox's depth.

use std::time::Duration;

use ::metrics::gauge;
use async_nats::jetstream;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::metrics::{self, CONSUMER_ACK_PENDING, CONSUMER_PENDING, OUTBOX_DEPTH};
use crate::outbox::Outbox;

/// How often [`run`] samples.
pub const INTERVAL: Duration = Duration::from_secs(5);

/// Samples what this process registered every `interval` until `cancel`. A failed
/// sample is skipped (the gauge keeps its last value).
pub async fn run(
    js: jetstream::Context,
    pool: PgPool,
    interval: Duration,
    cancel: CancellationToken,
) {
    let handle = metrics::install();
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        let watched = metrics::watched();
        for (stream, consumer) in &watched.consumers {
            // A stream handle without its own info request: one request per consumer.
            let info = match js.get_stream_no_info(stream).await {
                Ok(s) => s.consumer_info(consumer).await.ok(),
                Err(_) => None,
            };
            if let Some(info) = info {
                let labels = [("stream", stream.clone()), ("consumer", consumer.clone())];
                gauge!(CONSUMER_PENDING, &labels).set(info.num_pending as f64);
                gauge!(CONSUMER_ACK_PENDING, &labels).set(info.num_ack_pending as f64);
            }
        }
        for &table in &watched.outboxes {
            match Outbox::new(table).depth(&pool).await {
                Ok(n) => gauge!(OUTBOX_DEPTH, "outbox" => table).set(n as f64),
                Err(e) => tracing::debug!(error = %e, outbox = table, "outbox depth not sampled"),
            }
        }
        handle.run_upkeep();
    }
}
