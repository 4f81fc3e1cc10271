//! What every regua service stands on, so that each service crate holds only its own
//! logic: the service kit ([`service`]: a service's core, schema and start), layered
//! configuration ([`config`]), tracing with OpenTelemetry and W3C trace context in NATS
//! headers ([`telemetry`]), NATS connection, JetStream streams, the consumer loops and
//! their retry policy, dead letters ([`nats`]), the Postgres pool and per-service
//! migrations ([`db`]), the transactional outbox and its relay ([`outbox`]), tenants and
//! their API keys ([`tenancy`]), secrets and signed links ([`secrets`]), ordered
//! shutdown ([`shutdown`]), latency-critical work on a thread of its own ([`lane`]),
//! leases for what one replica runs at a time ([`lease`]), metrics ([`metrics`],
//! [`sampler`]) and the injected [`clock`].

pub mod clock;
pub mod config;
pub mod db;
pub mod dlq;
pub mod fence;
pub mod http;
pub mod lane;
pub mod lease;
pub mod metrics;
pub mod nats;
pub mod outbox;
pub mod sampler;
pub mod secrets;
pub mod service;
pub mod shutdown;
pub mod telemetry;
pub mod tenancy;
pub mod tls;

pub use clock::{Clock, ManualClock, SharedClock, SystemClock};
pub use config::{Config, ConfigError};
pub use secrets::Secret;
pub use service::Core;
pub use shutdown::Shutdown;

/// Errors of the platform layer.
#[derive(Debug, thiserror::Error)]
pub enum PlatformError {
    #[error("nats: {0}")]
    Nats(String),
    #[error("postgres: {0}")]
    Db(#[from] sqlx::Error),
    #[error("migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("http: {0}")]
    Http(String),
    #[error("telemetry: {0}")]
    Telemetry(String),
    #[error("a background task ended abnormally: {0}")]
    Task(String),
}

impl PlatformError {
    pub fn nats(e: impl std::fmt::Display) -> Self {
        PlatformError::Nats(e.to_string())
    }
}
