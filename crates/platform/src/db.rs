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

/// A migration whose text changed after databases had applied it: what moved out of
/// it now lives elsewhere (the outbox table, owned by the platform since it moved out of
/// each service's first migrations). `applied` is the SHA-384, in hex, that those
/// databases recorded; [`migrate`] accepts it as the current text's.
#[derive(Debug, Clone, Copy)]
pub struct Reissued {
    pub version: i64,
    pub applied: &'static str,
}

/// Runs `migrator` with its history table inside `schema`. A database that applied an
/// earlier text of a `reissued` migration has that record brought up to the current
/// text first, so the history check passes; no statement of it runs again.
pub async fn migrate(
    pool: &PgPool,
    mut migrator: Migrator,
    schema: &'static str,
    reissued: &[Reissued],
) -> Result<(), PlatformError> {
    let table = format!("{schema}._sqlx_migrations");
    if !reissued.is_empty() {
        accept_reissued(pool, &migrator, &table, reissued).await?;
    }
    migrator.create_schema(schema);
    migrator.dangerous_set_table_name(table);
    migrator.run(pool).await?;
    Ok(())
}

async fn accept_reissued(
    pool: &PgPool,
    migrator: &Migrator,
    table: &str,
    reissued: &[Reissued],
) -> Result<(), PlatformError> {
    let exists: bool = sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
        .bind(table)
        .fetch_one(pool)
        .await?;
    if !exists {
        return Ok(());
    }
    for r in reissued {
        let Some(current) = migrator.iter().find(|m| m.version == r.version) else {
            continue;
        };
        // The table name is the service's constant schema, never input.
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "UPDATE {table} SET checksum = $1 WHERE version = $2 AND checksum = decode($3, 'hex')"
        )))
        .bind(current.checksum.as_ref())
        .bind(r.version)
        .bind(r.applied)
        .execute(pool)
        .await?;
    }
    Ok(())
}

/// Whether `e` says Postgres could not be reached (an outage to wait out), rather than
/// that it refused a statement.
pub fn is_connection_error(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::WorkerCrashed => true,
        // Class 08 (connection exception) and 57P01-57P03 (the server shutting down,
        // crashed, or not accepting connections yet): a restart, not the statement.
        sqlx::Error::Database(d) => d
            .code()
            .is_some_and(|c| c.starts_with("08") || matches!(&*c, "57P01" | "57P02" | "57P03")),
        _ => false,
    }
}
