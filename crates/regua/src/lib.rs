//! Wiring services into one process. `regua all` runs every service; `regua intake`,
//! `regua scheduler`, `regua dispatch <channel>` and `regua reconcile` run one. The binary and the end-to-end tests both start services
//! through [`Platform::start`]; services talk to each other only through NATS.

use std::net::SocketAddr;
use std::sync::Arc;

use regua_contract::inbound::Channel;
use regua_dispatch::{DispatchError, Dispatcher};
use regua_intake::{Intake, IntakeError};
use regua_platform::{
    Config, PlatformError, SharedClock, Shutdown, db, http, metrics, nats, sampler,
};
use regua_reconcile::{Reconcile, ReconcileError};
use regua_scheduler::{Scheduler, SchedulerError};
use tokio::task::JoinHandle;

/// Why the platform did not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Platform(#[from] PlatformError),
    #[error(transparent)]
    Intake(#[from] IntakeError),
    #[error(transparent)]
    Scheduler(#[from] SchedulerError),
    #[error(transparent)]
    Dispatch(#[from] DispatchError),
    #[error(transparent)]
    Reconcile(#[from] ReconcileError),
    #[error("binding {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// Which services a process runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Services {
    pub intake: bool,
    pub scheduler: bool,
    pub reconcile: bool,
    /// The channels whose dispatchers run here.
    pub dispatch: &'static [Channel],
}

impl Services {
    pub const ALL: Services = Services {
        intake: true,
        scheduler: true,
        reconcile: true,
        dispatch: &Channel::ALL,
    };
    pub const INTAKE: Services = Services {
        intake: true,
        scheduler: false,
        reconcile: false,
        dispatch: &[],
    };
    pub const SCHEDULER: Services = Services {
        intake: false,
        scheduler: true,
        reconcile: false,
        dispatch: &[],
    };
    pub const RECONCILE: Services = Services {
        intake: false,
        scheduler: false,
        reconcile: true,
        dispatch: &[],
    };
    /// Intake, the scheduler and reconciliation, no dispatchers.
    pub const CORE_RECONCILE: Services = Services {
        intake: true,
        scheduler: true,
        reconcile: true,
        dispatch: &[],
    };
    /// Intake and the scheduler, no dispatchers.
    pub const CORE: Services = Services {
        intake: true,
        scheduler: true,
        reconcile: false,
        dispatch: &[],
    };

    /// One channel's dispatcher.
    pub const fn dispatch(channel: Channel) -> Services {
        Services {
            intake: false,
            scheduler: false,
            reconcile: false,
            dispatch: match channel {
                Channel::Email => &[Channel::Email],
                Channel::Sms => &[Channel::Sms],
                Channel::Whatsapp => &[Channel::Whatsapp],
            },
        }
    }
}

/// Services running as tasks, plus the HTTP server.
pub struct Platform {
    pub shutdown: Shutdown,
    /// Where HTTP listens (the real port when `REGUA_HTTP_ADDR` asked for port 0).
    pub addr: SocketAddr,
    pub http: JoinHandle<Result<(), PlatformError>>,
}

impl Platform {
    /// Connects, migrates, creates streams and consumers, and starts `services`.
    pub async fn start(
        config: &Config,
        clock: SharedClock,
        services: Services,
    ) -> Result<Platform, StartError> {
        db::ensure_database(config.database_url.expose()).await?;
        let pool = db::connect(config.database_url.expose(), config.db_max_connections).await?;
        metrics::install();
        let client = nats::connect_as(config, "regua").await?;
        let js = nats::jetstream(client.clone());
        let shutdown = Shutdown::new();
        let parts = || {
            (
                config.clone(),
                pool.clone(),
                client.clone(),
                Arc::clone(&clock),
            )
        };

        let mut router = axum::Router::new();
        if services.intake {
            let (config, pool, client, clock) = parts();
            let intake = Intake::from_parts(config, pool, client, clock);
            intake.start(&shutdown).await?;
            // With reconciliation here, it answers `GET …/invoices/{id}` (the same
            // fields plus what the invoice owes today).
            router = router.merge(if services.reconcile {
                intake.router_without_invoice_reads()
            } else {
                intake.router()
            });
        }
        if services.reconcile {
            let (config, pool, client, clock) = parts();
            let reconcile = Reconcile::from_parts(config, pool, client, clock);
            reconcile.start(&shutdown).await?;
            router = router.merge(reconcile.router());
        }
        if services.scheduler {
            let (config, pool, client, clock) = parts();
            let scheduler = Scheduler::from_parts(config, pool, client, clock);
            scheduler.start(&shutdown).await?;
            router = router.merge(scheduler.router());
        }
        if !services.dispatch.is_empty() {
            let (config, pool, client, clock) = parts();
            let dispatcher = Dispatcher::from_parts(config, pool, client, clock);
            dispatcher.start(services.dispatch, &shutdown).await?;
            router = router.merge(dispatcher.router());
        }

        let listener = tokio::net::TcpListener::bind(config.http_addr)
            .await
            .map_err(|source| StartError::Bind {
                addr: config.http_addr,
                source,
            })?;
        let addr = listener.local_addr().map_err(|source| StartError::Bind {
            addr: config.http_addr,
            source,
        })?;
        let sampling = sampler::run(
            js.clone(),
            pool.clone(),
            sampler::INTERVAL,
            shutdown.token(),
        );
        shutdown.spawn(sampling);
        let health = http::Health { pool, client, js };
        let limits = http::Limits::of(config);
        let http = shutdown.spawn(http::serve_on(
            listener,
            router,
            health,
            limits,
            shutdown.token(),
        ));
        Ok(Platform {
            shutdown,
            addr,
            http,
        })
    }

    /// Stops taking work, finishes what is in hand and flushes outboxes; false when
    /// the drain timeout ran out first.
    pub async fn drain(&self, config: &Config) -> bool {
        self.shutdown.drain(config.drain_timeout).await
    }
}
