//! Wiring every service into one process, as `regua all` does. The binary and the
//! end-to-end tests both start the platform through [`Platform::start`].

use std::net::SocketAddr;

use regua_intake::{Intake, IntakeError};
use regua_platform::{Config, PlatformError, SharedClock, Shutdown, db, http, nats};
use tokio::task::JoinHandle;

/// Why the platform did not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Platform(#[from] PlatformError),
    #[error(transparent)]
    Intake(#[from] IntakeError),
    #[error("binding {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// Every service running as its own task, plus the HTTP server.
pub struct Platform {
    pub shutdown: Shutdown,
    /// Where HTTP listens (the real port when `REGUA_HTTP_ADDR` asked for port 0).
    pub addr: SocketAddr,
    pub http: JoinHandle<Result<(), PlatformError>>,
}

impl Platform {
    /// Connects, migrates, creates streams and consumers, and starts every service.
    /// Today that is intake; later services start here too, each talking only
    /// through NATS.
    pub async fn start(config: &Config, clock: SharedClock) -> Result<Platform, StartError> {
        db::ensure_database(config.database_url.expose()).await?;
        let pool = db::connect(config.database_url.expose(), config.db_max_connections).await?;
        let client = nats::connect(&config.nats_url, "regua").await?;
        let js = nats::jetstream(client.clone());
        let shutdown = Shutdown::new();

        let intake = Intake::from_parts(config.clone(), pool.clone(), client.clone(), clock);
        intake.start(&shutdown).await?;
        let router: axum::Router = intake.router();

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
        let health = http::Health { pool, client, js };
        let http = shutdown.spawn(http::serve_on(listener, router, health, shutdown.token()));
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
