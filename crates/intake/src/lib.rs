//! Intake: regua's entry point for invoices, customers and tenants.
//!
//! What happens when an invoice arrives:
//! 1. An integrator publishes to `regua.v1.in.<tenant>.invoice.upsert` (the stream's
//!    PubAck means durable), or POSTs to the HTTP API ([`http`]), which validates at the
//!    edge and publishes the same message.
//! 2. The consumer ([`consumer`]) fetches a batch from the durable `intake` consumer and
//!    decodes every message ([`regua_contract::decode`]), collecting every problem with a
//!    stable code.
//! 3. The store ([`store`]) applies the batch in one transaction: revision and content
//!    rules, one outcome row per message (`accepted`, `duplicate`, `stale`,
//!    `rejected`), and the domain events written to the outbox.
//! 4. After commit the messages are acked, and the outbox relay (in the platform crate)
//!    publishes `invoice.opened`/`updated`/`canceled`, `customer.upserted` and
//!    `intake.rejected` on `regua.v1.evt.<tenant>.*`.

pub mod consumer;
pub mod http;
pub mod openapi;
pub mod store;
pub mod tenants;

use std::sync::Arc;

use async_nats::jetstream;
use regua_platform::outbox::Relay;
use regua_platform::{Config, PlatformError, SharedClock, Shutdown, db, nats};
use sqlx::PgPool;
use tokio::sync::Notify;

/// Intake's schema in Postgres.
pub const SCHEMA: &str = "intake";

/// Errors starting intake.
#[derive(Debug, thiserror::Error)]
pub enum IntakeError {
    #[error(transparent)]
    Platform(#[from] PlatformError),
}

/// The intake service: its connections and shared state.
pub struct Intake {
    pub config: Config,
    pub pool: PgPool,
    pub client: async_nats::Client,
    pub js: jetstream::Context,
    pub clock: SharedClock,
    pub tenants: tenants::Tenants,
    pub outbox_wake: Arc<Notify>,
}

impl Intake {
    /// Builds intake over connections the caller made (tests inject their own).
    pub fn from_parts(
        config: Config,
        pool: PgPool,
        client: async_nats::Client,
        clock: SharedClock,
    ) -> Arc<Intake> {
        let js = nats::jetstream(client.clone());
        Arc::new(Intake {
            config,
            pool,
            client,
            js,
            clock,
            tenants: tenants::Tenants::new(),
            outbox_wake: Arc::new(Notify::new()),
        })
    }

    /// Runs intake's migrations.
    pub async fn migrate(pool: &PgPool) -> Result<(), IntakeError> {
        db::migrate(pool, sqlx::migrate!("./migrations"), SCHEMA).await?;
        Ok(())
    }

    /// Makes sure the streams, intake's consumer and its schema exist, then starts the
    /// consumer workers (work) and the outbox relay (a flusher, stopped after them).
    pub async fn start(self: &Arc<Self>, shutdown: &Shutdown) -> Result<(), IntakeError> {
        Intake::migrate(&self.pool).await?;
        nats::ensure_streams(&self.js, nats::Streams::of(&self.config)).await?;
        let consumer = nats::ensure_pull_consumer(
            &self.js,
            regua_contract::subjects::STREAM_INBOUND,
            consumer::consumer_config(self.config.intake_max_deliver, self.config.intake_ack_wait),
        )
        .await?;
        for _ in 0..self.config.intake_workers {
            shutdown.spawn(consumer::run(
                Arc::clone(self),
                consumer.clone(),
                shutdown.token(),
            ));
        }
        Relay::new(
            store::OUTBOX,
            self.pool.clone(),
            self.js.clone(),
            Arc::clone(&self.outbox_wake),
        )
        .spawn(shutdown);
        Ok(())
    }

    /// Intake's HTTP routes.
    pub fn router(self: &Arc<Self>) -> axum::Router {
        http::router(Arc::clone(self))
    }

    /// [`Intake::router`] without the invoice read, which reconciliation serves.
    pub fn router_without_invoice_reads(self: &Arc<Self>) -> axum::Router {
        http::router_without_invoice_reads(Arc::clone(self))
    }
}
