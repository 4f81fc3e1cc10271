//! Intake: regua's entry point for invoices, customers and tenants.
//!
//! What happens when an invoice arrives:
//! 1. An integrator publishes to `regua.v1.in.<tenant>.invoice.upsert` (the stream's
//!    PubAck means durable), or POSTs to the HTTP API ([`http`]), which validates at the
//!    edge and publishes the same message.
//! 2. The consumer ([`consumer`]) fetches a batch from the durable `intake` consumer and
//!    decodes every message ([`regua_contract::decode`]), collecting every problem with
//!    a stable code.
//! 3. The store ([`store`]) applies the batch in one transaction: revision and content
//!    rules, one outcome row per message (`accepted`, `duplicate`, `stale`,
//!    `rejected`), and the domain events written to the outbox.
//! 4. After commit the messages are acked, and the outbox relay (the platform's)
//!    publishes `invoice.opened`/`updated`/`canceled`, `customer.upserted` and
//!    `intake.rejected` on `regua.v1.evt.<tenant>.*`.
//!
//! Tenants are created here ([`tenants`]), with the creditor identity every message
//! must carry; the platform keeps them and checks their API keys for every service.

pub mod consumer;
pub mod http;
pub mod openapi;
pub mod store;
pub mod tenants;

use std::sync::Arc;

use regua_platform::outbox::Outbox;
use regua_platform::service::{self, Schema};
use regua_platform::{Config, Core, PlatformError, SharedClock, Shutdown, tenancy};
use sqlx::PgPool;

/// Intake's schema in Postgres.
pub const SCHEMA: &str = "intake";
/// Intake's outbox: `invoice.*`, `customer.upserted`, `intake.rejected`, `tenant.created`.
pub const OUTBOX: Outbox = Outbox::new("intake.outbox");

/// Errors starting intake.
#[derive(Debug, thiserror::Error)]
pub enum IntakeError {
    #[error(transparent)]
    Platform(#[from] PlatformError),
}

/// The intake service: its core, and the tenants it has seen.
pub struct Intake {
    pub core: Core,
    pub tenants: tenancy::Directory,
}

impl std::ops::Deref for Intake {
    type Target = Core;
    fn deref(&self) -> &Core {
        &self.core
    }
}

impl Intake {
    /// Builds intake over connections the caller made (tests inject their own).
    pub fn from_parts(
        config: Config,
        pool: PgPool,
        client: async_nats::Client,
        clock: SharedClock,
    ) -> Arc<Intake> {
        Arc::new(Intake {
            core: Core::new(config, pool, client, clock, OUTBOX),
            tenants: tenancy::Directory::new(),
        })
    }

    /// Runs intake's migrations.
    pub async fn migrate(pool: &PgPool) -> Result<(), IntakeError> {
        let schema = Schema::new(SCHEMA, sqlx::migrate!("./migrations"), OUTBOX);
        service::migrate(pool, schema).await?;
        Ok(())
    }

    /// Migrates, then starts the streams, the outbox relay and the consumer's workers.
    pub async fn start(self: &Arc<Self>, shutdown: &Shutdown) -> Result<(), IntakeError> {
        Intake::migrate(&self.pool).await?;
        self.core.start(shutdown).await?;
        let consumer = self
            .consumer(
                regua_contract::subjects::STREAM_INBOUND,
                consumer::config(&self.config),
            )
            .await?;
        for _ in 0..self.config.intake_workers {
            let run = consumer::run(Arc::clone(self), consumer.clone(), shutdown.token());
            shutdown.spawn(run);
        }
        Ok(())
    }

    /// Intake's HTTP routes.
    pub fn router(self: &Arc<Self>) -> axum::Router {
        http::router(Arc::clone(self), true)
    }

    /// [`Intake::router`] without the invoice read, which reconciliation serves.
    pub fn router_without_invoice_reads(self: &Arc<Self>) -> axum::Router {
        http::router(Arc::clone(self), false)
    }
}
