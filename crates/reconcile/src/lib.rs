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
pub mod state;

use std::sync::{Arc, OnceLock};

use async_nats::jetstream;
use regua_contract::subjects;
use regua_platform::lane::Lane;
use regua_platform::outbox::{Outbox, Relay};
use regua_platform::{Config, PlatformError, SharedClock, Shutdown, db, fence, nats, telemetry};
use sqlx::PgPool;
use tokio::sync::Notify;
use tracing::Instrument;

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
    pub config: Config,
    pub pool: PgPool,
    pub js: jetstream::Context,
    pub clock: SharedClock,
    pub outbox_wake: Arc<Notify>,
    /// The connection settlement signals leave on ([`Reconcile::signal`]), apart from
    /// the shared one, so that they do not queue behind its traffic. Made by
    /// [`Reconcile::start`]; until then signals use the shared connection.
    signals: OnceLock<(async_nats::Client, Lane)>,
    /// Tests only: hold every payment transaction open before its commit, forever.
    pub pause_before_commit: Option<Arc<Pause>>,
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
        Reconcile {
            config,
            pool,
            js: nats::jetstream(client),
            clock,
            outbox_wake: Arc::new(Notify::new()),
            signals: OnceLock::new(),
            pause_before_commit,
        }
    }

    /// Runs reconciliation's migrations and the settlement fence's.
    pub async fn migrate(pool: &PgPool) -> Result<(), ReconcileError> {
        db::migrate(pool, sqlx::migrate!("./migrations"), SCHEMA).await?;
        fence::migrate(pool).await?;
        Ok(())
    }

    /// Starts the consumers (payments, domain events) and the outbox relay.
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
        nats::ensure_streams(&self.js, nats::Streams::of(&self.config)).await?;
        let events =
            nats::ensure_pull_consumer(&self.js, subjects::STREAM_EVENTS, state::consumer_config())
                .await?;
        shutdown.spawn(state::run(Arc::clone(self), events, shutdown.token()));
        let payments = nats::ensure_pull_consumer(
            &self.js,
            subjects::STREAM_INBOUND,
            consumer::consumer_config(&self.config),
        )
        .await?;
        shutdown.spawn(consumer::run(Arc::clone(self), payments, shutdown.token()));
        Relay::new(
            OUTBOX,
            self.pool.clone(),
            self.js.clone(),
            Arc::clone(&self.outbox_wake),
        )
        .spawn(shutdown);
        Ok(())
    }

    /// The tenant routes (behind the API-key layer) and the PIX webhook.
    pub fn router(self: &Arc<Self>) -> (axum::Router, axum::Router) {
        (
            http::tenant_router(Arc::clone(self)),
            http::webhook_router(Arc::clone(self)),
        )
    }

    /// Commits a payment's transaction (after a test's pause, if any).
    pub(crate) async fn commit(
        &self,
        tx: sqlx::Transaction<'static, sqlx::Postgres>,
    ) -> Result<(), sqlx::Error> {
        if let Some(p) = &self.pause_before_commit {
            p.reached.notify_waiters();
            std::future::pending::<()>().await;
        }
        tx.commit().await
    }

    /// Signals each invoice `settled` settled (`regua.v1.sig.<tenant>.invoice.settled`,
    /// core NATS), right after the commit: the scheduler halts its dunning without
    /// waiting for `invoice.paid` to leave through the outbox. At most once: a signal
    /// that cannot be sent is only a lost shortcut, and `invoice.paid` follows anyway.
    pub(crate) async fn signal(&self, settled: &ledger::Settled) {
        if settled.is_empty() {
            return;
        }
        let client = match self.signals.get() {
            Some((client, _)) => client.clone(),
            None => self.js.client(),
        };
        for (tenant, signal, traceparent) in settled.iter() {
            let payload = match serde_json::to_vec(signal) {
                Ok(p) => p,
                Err(e) => {
                    tracing::warn!(error = %e, "encoding a settlement signal");
                    continue;
                }
            };
            let subject = subjects::settled(tenant);
            let span =
                nats::publish_span_continuing(&subject, &signal.event_id.to_string(), traceparent);
            let mut headers = async_nats::HeaderMap::new();
            telemetry::inject(&span, &mut headers);
            if let Err(e) = client
                .publish_with_headers(subject, headers, payload.into())
                .instrument(span)
                .await
            {
                tracing::warn!(error = %e, "sending a settlement signal");
            }
        }
    }
}
