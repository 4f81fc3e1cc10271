//! Reconciliation: payment signals in, settled invoices out, and the régua stopped.
//!
//! - **Payments in** ([`consumer`], [`http`]): `payment.received` on
//!   `regua.v1.in.<tenant>.payment.received`, `POST /v1/tenants/{tenant}/payments`, and
//!   the PIX webhook `POST /webhooks/pix/{tenant}` in the Banco Central format. Every
//!   body is validated field by field ([`regua_contract::decode::decode_payment`]); bad
//!   input is rejected with codes (422 over HTTP, `intake.rejected` over NATS). The
//!   same `payment_id` twice has no second effect.
//! - **Matching** ([`ledger`]): by `invoice_id`, then `reference`, then the payer's
//!   document plus the exact amount due on their single open invoice. Anything else
//!   waits in the unmatched queue (`payment.unmatched`) until its invoice appears or a
//!   person matches it (`payment.matched`).
//! - **Amounts** ([`regua_domain::charges`]): principal, fine once after the effective
//!   due date, interest pro rata die, rounded half away from zero to cents. Payments
//!   are an append-only ledger and the balance is always derived from it.
//! - **Settling** emits `invoice.paid` (the scheduler cancels pending steps and sends
//!   the thank-you once) and writes the settlement fence ([`regua_platform::fence`]) in
//!   the same transaction, so that no dunning call can start after the commit.
//! - **State** ([`state`]): tenants, customers' documents, invoices and test clocks,
//!   from domain events.

pub mod consumer;
pub mod http;
pub mod ledger;
pub mod signals;
pub mod state;

use std::sync::{Arc, OnceLock};

use regua_contract::subjects::{STREAM_EVENTS, STREAM_INBOUND};
use regua_platform::lane::Lane;
use regua_platform::outbox::Outbox;
use regua_platform::service::{self, Schema};
use regua_platform::{Config, Core, PlatformError, SharedClock, Shutdown, fence, nats};
use sqlx::PgPool;
use tokio::sync::Notify;

/// Reconciliation's schema in Postgres.
pub const SCHEMA: &str = "reconcile";
/// Reconciliation's outbox: `payment.*`, `invoice.paid`, `invoice.partially_paid`.
pub const OUTBOX: Outbox = Outbox::new("reconcile.outbox");

/// Errors of reconciliation.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error(transparent)]
    Platform(#[from] PlatformError),
    #[error("postgres: {0}")]
    Db(#[from] sqlx::Error),
    #[error("serializing: {0}")]
    Json(#[from] serde_json::Error),
    #[error("amounts: {0}")]
    Charges(#[from] regua_domain::charges::ChargeError),
}

/// A test's handle on the moment between applying a payment and committing it.
#[derive(Debug, Default)]
pub struct Pause {
    /// Notified when a payment's transaction is ready to commit.
    pub reached: Notify,
}

/// The reconciliation service.
pub struct Reconcile {
    pub core: Core,
    /// The connection settlement signals leave on ([`Reconcile::signal`]), apart from
    /// the shared one, so that they do not queue behind its traffic. Made by
    /// [`Reconcile::start`]; until then signals use the shared connection.
    pub(crate) signals: OnceLock<(async_nats::Client, Lane)>,
    /// Tests only: hold every payment transaction open before its commit, forever.
    pub pause_before_commit: Option<Arc<Pause>>,
}

impl std::ops::Deref for Reconcile {
    type Target = Core;
    fn deref(&self) -> &Core {
        &self.core
    }
}

impl Reconcile {
    /// Builds the service over connections the caller made (tests inject their own).
    pub fn from_parts(
        config: Config,
        pool: PgPool,
        client: async_nats::Client,
        clock: SharedClock,
    ) -> Arc<Reconcile> {
        Arc::new(Reconcile::new(config, pool, client, clock, None))
    }

    /// Like [`Reconcile::from_parts`], with a test's pause before each commit.
    pub fn new(
        config: Config,
        pool: PgPool,
        client: async_nats::Client,
        clock: SharedClock,
        pause_before_commit: Option<Arc<Pause>>,
    ) -> Reconcile {
        let core = Core::new(config, pool, client, clock, OUTBOX);
        let signals = OnceLock::new();
        Reconcile {
            core,
            signals,
            pause_before_commit,
        }
    }

    /// Runs reconciliation's migrations and the settlement fence's.
    pub async fn migrate(pool: &PgPool) -> Result<(), ReconcileError> {
        let schema = Schema::new(SCHEMA, sqlx::migrate!("./migrations"), OUTBOX);
        service::migrate(pool, schema).await?;
        fence::migrate(pool).await?;
        Ok(())
    }

    /// Migrates, then starts the streams and the outbox relay, the settlement signals'
    /// connection, and the consumers of payments and of domain events.
    pub async fn start(self: &Arc<Self>, shutdown: &Shutdown) -> Result<(), ReconcileError> {
        Reconcile::migrate(&self.pool).await?;
        // The signals' connection lives on a lane: its socket is written at once, not
        // when the busy service runtime gets to it.
        let lane = Lane::start("regua-signals")?;
        let config = self.config.clone();
        let signals = lane
            .run(async move { nats::connect_as(&config, "regua-reconcile-signals").await })
            .await??;
        // Started once: a second start keeps the first connection.
        let _ = self.signals.set((signals, lane));
        self.core.start(shutdown).await?;
        let events = self
            .consumer(STREAM_EVENTS, state::consumer_config())
            .await?;
        shutdown.spawn(state::run(Arc::clone(self), events, shutdown.token()));
        let payments = consumer::consumer_config(&self.config);
        let payments = self.consumer(STREAM_INBOUND, payments).await?;
        shutdown.spawn(consumer::run(Arc::clone(self), payments, shutdown.token()));
        Ok(())
    }

    /// The tenant routes (behind the tenant's API key) and the PIX webhook.
    pub fn router(self: &Arc<Self>) -> axum::Router {
        let tenant_routes = self.tenant_routes(http::tenant_router(Arc::clone(self)));
        tenant_routes.merge(http::webhook_router(Arc::clone(self)))
    }
}
