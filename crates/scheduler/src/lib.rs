//! The scheduler: regua's régua engine.
//!
//! What happens to an invoice here:
//! 1. [`events`] consumes domain events from `regua.v1.evt.>` in order (a durable
//!    consumer run by the one replica holding its lease). `tenant.created` installs
//!    the starter policy `padrao`; `customer.upserted` keeps contacts and the time zone;
//!    `invoice.opened` picks the invoice's policy ([`policies`]), places its steps in
//!    time ([`regua_domain::schedule::base_plan`]) and stores only its *next* step.
//!    `invoice.paid`, `invoice.canceled` and `customer.channel_opted_out` stop or adjust pending
//!    steps in the same transaction. Because that consumer is in order, a payment can
//!    wait behind a burst of other events; [`halt`] (its own consumer of `invoice.paid`
//!    alone) stops the paid invoice's dunning at once, and the in-order consumer
//!    completes the stop (history, step log, thank-you) when it gets there.
//! 2. [`fire`] claims due invoices a customer at a time (try-locked customers, whose
//!    due invoices it then reads; any number of replicas and workers), decides each due step ([`regua_domain::schedule::fire`]: supersede stale
//!    steps, window, caps, same-day merge, the negativação notice rule), and writes the
//!    decision, the contact ledger and the dispatch command (to the outbox) in one
//!    transaction. The relay publishes commands on `regua.v1.cmd.<tenant>.dispatch.<channel>`.
//! 3. Tenants on a test clock ([`clock`]) live on simulated time: an advance fires, in
//!    time order, every step up to the target instant, exactly as real time would.
//! 4. [`http`] serves policies, the plan preview, simulation and the test clock.

pub mod clock;
pub mod events;
pub mod fire;
pub mod halt;
pub mod http;
pub mod model;
pub mod policies;
pub mod preview;
pub mod timeline;

use std::sync::{Arc, OnceLock};

use regua_contract::subjects::STREAM_EVENTS;
use regua_platform::db;
use regua_platform::lane::Lane;
use regua_platform::outbox::Outbox;
use regua_platform::service::{self, Schema};
use regua_platform::{Config, Core, PlatformError, SharedClock, Shutdown};
use sqlx::PgPool;
use tokio::sync::Notify;

/// The scheduler's schema in Postgres.
pub const SCHEMA: &str = "scheduler";
/// The scheduler's outbox: dispatch commands and `invoice.escalated`.
pub const OUTBOX: Outbox = Outbox::new("scheduler.outbox");

/// Errors of the scheduler.
#[derive(Debug, thiserror::Error)]
pub enum SchedulerError {
    #[error(transparent)]
    Platform(#[from] PlatformError),
    #[error("postgres: {0}")]
    Db(#[from] sqlx::Error),
    #[error("serializing: {0}")]
    Json(#[from] serde_json::Error),
    #[error("writing back the schedule: {0}")]
    Save(#[from] model::SaveError),
    #[error("stored policy {tenant}/{name} v{version} is invalid: {reason}")]
    BadPolicy {
        tenant: String,
        name: String,
        version: i32,
        reason: String,
    },
}

/// The scheduler service: its core, and what its loops share.
pub struct Scheduler {
    pub core: Core,
    pub policies: policies::Cache,
    /// Woken when there may be due work (an advance, a new plan).
    pub fire_wake: Arc<Notify>,
    /// The halt's connections ([`halt`]): same database, commits without waiting for
    /// the WAL flush. Opened and used on the halt's lane only.
    pub halt_pool: PgPool,
    /// The halt's thread ([`halt`], [`regua_platform::lane`]), made by
    /// [`Scheduler::start`].
    halt_lane: OnceLock<Lane>,
}

impl std::ops::Deref for Scheduler {
    type Target = Core;
    fn deref(&self) -> &Core {
        &self.core
    }
}

impl Scheduler {
    /// Builds the scheduler over connections the caller made (tests inject their own).
    pub fn from_parts(
        config: Config,
        pool: PgPool,
        client: async_nats::Client,
        clock: SharedClock,
    ) -> Arc<Scheduler> {
        let halt_pool = db::without_flush_wait(&pool, u32::try_from(halt::IN_FLIGHT).unwrap_or(4));
        Arc::new(Scheduler {
            core: Core::new(config, pool, client, clock, OUTBOX),
            halt_pool,
            policies: policies::Cache::default(),
            fire_wake: Arc::new(Notify::new()),
            halt_lane: OnceLock::new(),
        })
    }

    /// Runs the scheduler's migrations.
    pub async fn migrate(pool: &PgPool) -> Result<(), SchedulerError> {
        let schema = Schema::new(SCHEMA, sqlx::migrate!("./migrations"), OUTBOX);
        service::migrate(pool, schema).await?;
        Ok(())
    }

    /// Migrates, then starts the streams and the outbox relay, the event consumer, the
    /// firing workers, the test-clock driver, the due-backlog gauge, the journey
    /// timeline and the halt on payment (on a lane of its own).
    pub async fn start(self: &Arc<Self>, shutdown: &Shutdown) -> Result<(), SchedulerError> {
        Scheduler::migrate(&self.pool).await?;
        let lane = Lane::start("regua-halt")?;
        self.core.start(shutdown).await?;
        let batch = self.config.scheduler_batch_size;
        let events = self
            .consumer(STREAM_EVENTS, events::consumer_config(batch))
            .await?;
        let (s, token) = (|| Arc::clone(self), || shutdown.token());
        shutdown.spawn(events::run(s(), events.clone(), token()));
        for part in fire::Part::all(self.config.scheduler_workers) {
            shutdown.spawn(fire::run(s(), part, token()));
        }
        shutdown.spawn(clock::run(s(), events, token()));
        shutdown.spawn(fire::sample_backlog(s(), token()));
        let timeline = self
            .consumer(STREAM_EVENTS, timeline::consumer_config())
            .await?;
        shutdown.spawn(timeline::run(s(), timeline, token()));
        let halt = self
            .consumer(STREAM_EVENTS, halt::consumer_config())
            .await?;
        // The halt runs on a lane: a busy firing does not hold up the stop.
        let lane = self.halt_lane.get_or_init(|| lane);
        let pull = lane.spawn(halt::run(s(), halt, token()));
        let signals = lane.spawn(halt::run_signals(s(), token()));
        shutdown.spawn(async move {
            let _ = tokio::join!(pull, signals);
        });
        Ok(())
    }

    /// The scheduler's HTTP routes, behind the tenant's API key.
    pub fn router(self: &Arc<Self>) -> axum::Router {
        self.tenant_routes(http::router(Arc::clone(self)))
    }

    /// Sleeps for the poll interval or until woken, whichever comes first.
    async fn idle(&self, wake: &Notify) {
        tokio::select! {
            () = wake.notified() => {}
            () = tokio::time::sleep(self.config.scheduler_poll) => {}
        }
    }
}
