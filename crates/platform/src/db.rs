//! Postgres: the pool, creating the database when missing, and per-service migrations.
//! Each service owns a schema named after it and keeps its migration history in
//! `<schema>._sqlx_migrations`, so services migrate independently.

use std::str::FromStr;
use std::time::Duration;

use sqlx::migrate::{MigrateDatabase, Migrator};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{PgPool, Postgres};

use crate::PlatformError;

/// Creates the database named in `url` if it does not exist.
pub async fn ensure_database(url: &str) -> Result<(), PlatformError> {
    if !Postgres::database_exists(url).await? {
        Postgres::create_database(url).await?;
    }
    Ok(())
}

/// A pool that waits for the server instead of failing on the first refused connect.
///
/// Its sessions run with `jit = off`. regua's statements are short batches over
/// indexes; Postgres's cost estimates for them (`UNNEST` of a thousand keys, tables
/// without statistics yet) often pass `jit_above_cost`, and compiling then costs more
/// than the statement (the scheduler's firing: 15,000 → 17,000 steps/s without it).
pub async fn connect(url: &str, max_connections: u32) -> Result<PgPool, PlatformError> {
    let options = PgConnectOptions::from_str(url)?
        .application_name("regua")
        .options([("jit", "off")]);
    let pool = pool_options(max_connections).connect_with(options).await?;
    Ok(pool)
}

/// A pool over `pool`'s database, connecting lazily, whose commits do not wait for the
/// WAL flush (`synchronous_commit = off`). Only for writes whose loss in a database
/// crash is harmless because something durable repeats them: what it saves is the
/// flush's latency, not the write.
pub fn without_flush_wait(pool: &PgPool, max_connections: u32) -> PgPool {
    let options = (*pool.connect_options())
        .clone()
        .options([("synchronous_commit", "off")]);
    pool_options(max_connections).connect_lazy_with(options)
}

/// Every regua pool's sizing and acquire timeout.
fn pool_options(max_connections: u32) -> PgPoolOptions {
    PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(10))
}

/// Runs `migrator` with its history table inside `schema`.
pub async fn migrate(
    pool: &PgPool,
    mut migrator: Migrator,
    schema: &'static str,
) -> Result<(), PlatformError> {
    migrator.create_schema(schema);
    migrator.dangerous_set_table_name(format!("{schema}._sqlx_migrations"));
    migrator.run(pool).await?;
    Ok(())
}
