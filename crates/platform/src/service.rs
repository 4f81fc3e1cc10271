//! The service kit: what every regua service is built on, so that a service crate holds
//! only its own logic.
//!
//! A service is a [`Core`] (settings, Postgres pool, NATS client and JetStream context,
//! the injected clock, its outbox and the relay's wake-up) plus its own state; it derefs
//! to its core. Its `lib.rs` then does three things with the kit:
//! - [`migrate`] its [`Schema`]: tenancy, its own migrations, its outbox table;
//! - [`Core::start`]: the streams checked or provisioned, the outbox relay running as a
//!   flusher of the shutdown;
//! - [`Core::consumer`] for each durable it reads, run with [`crate::nats::consume`] (or
//!   [`crate::nats::consume_batches`] when events must apply in stream order), and
//!   [`Core::tenant_routes`] around its tenant routes.

use std::sync::Arc;

use async_nats::jetstream::{self, consumer};
use axum::Router;
use sqlx::PgPool;
use sqlx::migrate::Migrator;
use tokio::sync::Notify;

use crate::outbox::{Outbox, Relay};
use crate::{Config, PlatformError, SharedClock, Shutdown, db, nats, outbox, tenancy};

/// A service's place in Postgres.
pub struct Schema {
    /// The schema it owns, named after it.
    pub name: &'static str,
    /// Its migrations (`sqlx::migrate!("./migrations")`), history in
    /// `<name>._sqlx_migrations`.
    pub migrations: Migrator,
    /// Its outbox, `<name>.outbox`.
    pub outbox: Outbox,
}

impl Schema {
    pub fn new(name: &'static str, migrations: Migrator, outbox: Outbox) -> Schema {
        Schema {
            name,
            migrations,
            outbox,
        }
    }
}

/// Migrates a service: the tenancy schema every tenant route checks, the service's own
/// migrations, then its outbox table.
pub async fn migrate(pool: &PgPool, schema: Schema) -> Result<(), PlatformError> {
    tenancy::migrate(pool).await?;
    let reissued = outbox::reissued(schema.name);
    db::migrate(pool, schema.migrations, schema.name, &reissued).await?;
    outbox::migrate(pool, schema.outbox).await
}

/// What every service shares: its settings, connections, clock and outbox.
pub struct Core {
    pub config: Config,
    pub pool: PgPool,
    pub client: async_nats::Client,
    pub js: jetstream::Context,
    pub clock: SharedClock,
    pub outbox: Outbox,
    /// Wakes the relay once a transaction that wrote to the outbox has committed.
    pub outbox_wake: Arc<Notify>,
    /// Checks the tenant routes' API keys and rates, on a pool of its own.
    pub gate: Arc<tenancy::Gate>,
}

impl Core {
    /// A core over connections the caller made (the binary's, or a test's own).
    pub fn new(
        config: Config,
        pool: PgPool,
        client: async_nats::Client,
        clock: SharedClock,
        outbox: Outbox,
    ) -> Core {
        Core {
            js: nats::jetstream(client.clone()),
            gate: Arc::new(tenancy::Gate::new(
                &pool,
                Arc::clone(&clock),
                config.http.tenant_rate,
                config.http.tenant_burst,
            )),
            config,
            pool,
            client,
            clock,
            outbox,
            outbox_wake: Arc::new(Notify::new()),
        }
    }

    /// The platform streams checked (or provisioned, as configured), and the outbox relay
    /// running as one of `shutdown`'s flushers: it stops after the work that fills the
    /// outbox, and publishes what that work left.
    pub async fn start(&self, shutdown: &Shutdown) -> Result<(), PlatformError> {
        nats::ensure_streams(&self.js, nats::Streams::of(&self.config)).await?;
        Relay::new(
            self.outbox,
            self.pool.clone(),
            self.js.clone(),
            Arc::clone(&self.outbox_wake),
            Arc::clone(&self.clock),
        )
        .spawn(shutdown);
        Ok(())
    }

    /// The durable pull consumer `config` on `stream`, created or adopted.
    pub async fn consumer(
        &self,
        stream: &str,
        config: consumer::pull::Config,
    ) -> Result<consumer::PullConsumer, PlatformError> {
        nats::ensure_pull_consumer(&self.js, stream, config).await
    }

    /// Tells the relay that committed messages wait.
    pub fn wake_relay(&self) {
        self.outbox_wake.notify_one();
    }

    /// `router` with its `/v1/tenants/{tenant}/…` routes behind that tenant's API key.
    pub fn tenant_routes(&self, router: Router) -> Router {
        tenancy::tenant_routes(router, Arc::clone(&self.gate))
    }
}
