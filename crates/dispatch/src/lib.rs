//! The channel dispatchers turn the scheduler's commands into messages.
//!
//! One pipeline ([`pipeline`]) serves every channel: consume from the channel's durable
//! pull consumer, guard, render, take a rate-limit token, send through the channel's
//! adapter ([`channels`]), record the result through the outbox, ack. `regua dispatch
//! email|sms|whatsapp` runs one channel; `regua all` runs all three.
//!
//! - **Never twice.** A row per (command, channel) in `dispatch.attempts` is marked
//!   `sending` and committed before the provider call. A later delivery that finds it
//!   still `sending` means a worker died between the call and recording it: the
//!   outcome is marked `unknown`, reported as `message.unknown`, and not resent. A
//!   second call happens only after the first definitely failed (a refused connection,
//!   a 4xx/5xx answer).
//! - **Guard**, right before sending: the invoice is still open, the customer has not
//!   opted out of the channel, WhatsApp has an opt-in, the send window still holds.
//! - **Fallback**: a permanent failure (at send or in a status callback) moves the
//!   message to the step's next channel.
//! - **Retries**: transient failures are retried with jittered exponential backoff
//!   (honouring `Retry-After`), then dead-lettered with `message.failed`.
//! - **Rate limit**: one GCRA cell per provider account in Postgres ([`limiter`]),
//!   shared by every replica.
//! - **Webhooks** ([`webhooks`]): Twilio status and inbound SMS, WhatsApp handshake,
//!   statuses and inbound messages, and the signed one-click unsubscribe link.

pub mod channels;
pub mod limiter;
pub mod pipeline;
pub mod sign;
pub mod state;
pub mod store;
pub mod webhooks;

use std::sync::Arc;

use regua_contract::inbound::Channel;
use regua_contract::subjects::{STREAM_COMMANDS, STREAM_EVENTS};
use regua_platform::outbox::Outbox;
use regua_platform::service::{self, Schema};
use regua_platform::{Config, Core, PlatformError, SharedClock, Shutdown, fence};
use sqlx::PgPool;

/// The dispatchers' schema in Postgres.
pub const SCHEMA: &str = "dispatch";
/// The dispatchers' outbox: `message.*`, opt-outs, and fallback commands.
pub const OUTBOX: Outbox = Outbox::new("dispatch.outbox");

/// Errors of the dispatchers.
#[derive(Debug, thiserror::Error)]
pub enum DispatchError {
    #[error(transparent)]
    Platform(#[from] PlatformError),
    #[error("postgres: {0}")]
    Db(#[from] sqlx::Error),
    #[error("serializing: {0}")]
    Json(#[from] serde_json::Error),
    #[error("configuration: {0}")]
    Config(String),
}

/// What every channel's workers share: the service's core.
pub struct Dispatcher {
    pub core: Core,
}

impl std::ops::Deref for Dispatcher {
    type Target = Core;
    fn deref(&self) -> &Core {
        &self.core
    }
}

impl Dispatcher {
    /// Builds the dispatcher over connections the caller made (tests inject their own).
    pub fn from_parts(
        config: Config,
        pool: PgPool,
        client: async_nats::Client,
        clock: SharedClock,
    ) -> Arc<Dispatcher> {
        let core = Core::new(config, pool, client, clock, OUTBOX);
        Arc::new(Dispatcher { core })
    }

    /// Runs the dispatchers' migrations, and the settlement fence's (the guard's last
    /// check reads it).
    pub async fn migrate(pool: &PgPool) -> Result<(), DispatchError> {
        let schema = Schema::new(SCHEMA, sqlx::migrate!("./migrations"), OUTBOX);
        service::migrate(pool, schema).await?;
        fence::migrate(pool).await?;
        Ok(())
    }

    /// Starts `channels`' workers (each needs its provider configured), the consumer
    /// of domain events the guard reads, the matcher of statuses that arrived before
    /// their sends were recorded, and the outbox relay.
    pub async fn start(
        self: &Arc<Self>,
        channels: &[Channel],
        shutdown: &Shutdown,
    ) -> Result<(), DispatchError> {
        let mut workers = Vec::new();
        for &channel in channels {
            // Configuration errors stop startup before anything runs.
            workers.push(Arc::new(pipeline::Worker::new(Arc::clone(self), channel)?));
        }
        Dispatcher::migrate(&self.pool).await?;
        self.core.start(shutdown).await?;
        let events = self
            .consumer(STREAM_EVENTS, state::consumer_config())
            .await?;
        shutdown.spawn(state::run(Arc::clone(self), events, shutdown.token()));
        shutdown.spawn(webhooks::run_early_statuses(
            Arc::clone(self),
            shutdown.token(),
        ));
        for worker in workers {
            let config = pipeline::consumer_config(worker.channel(), &self.config);
            let consumer = self.consumer(STREAM_COMMANDS, config).await?;
            for _ in 0..self.config.dispatch.workers {
                let run = pipeline::run(Arc::clone(&worker), consumer.clone(), shutdown.token());
                shutdown.spawn(run);
            }
        }
        Ok(())
    }

    /// The webhooks and the unsubscribe link.
    pub fn router(self: &Arc<Self>) -> axum::Router {
        webhooks::router(Arc::clone(self))
    }

    /// The URL of a webhook or link path on this deployment.
    pub fn public(&self, path: &str) -> String {
        format!("{}{path}", self.config.public_url)
    }
}
