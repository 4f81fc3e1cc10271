//! Leases: which one of a service's replicas runs a loop that must run once, such as an
//! in-order event consumer ([`crate::nats::consume_batches`]).
//!
//! A lease is a Postgres session advisory lock (`hashtextextended(name, 11)`) held on a
//! connection of its own, outside the pool. The holder does its writes **on that
//! connection**, so a replica whose session ended (its process died, the server
//! restarted, the network dropped it) cannot commit anything more under the lease: the
//! session that held the lock is the session that writes. Another replica takes the
//! lease once the old session is gone; it waits, polling, until then.
//!
//! A holder that stops answering without its session ending (its process frozen, its
//! host partitioned from Postgres) loses the lease within [`TIMEOUT`]: the session is
//! opened with `idle_session_timeout` and `idle_in_transaction_session_timeout` at
//! [`TIMEOUT`], so Postgres ends a session that does nothing for that long, and a live
//! holder touches it at least every [`KEEPALIVE`] ([`Lease::keep_alive`]). TCP
//! keepalives on the session find a vanished peer too.

use std::time::Duration;

use sqlx::{ConnectOptions, Connection, PgConnection, PgPool};
use tokio_util::sync::CancellationToken;

use crate::shutdown::Backoff;

/// How often a replica that does not hold a lease asks for it again.
pub const RETRY: Duration = Duration::from_secs(1);

/// How long a holder may go silent before Postgres ends its session, and so its lease:
/// a frozen or partitioned holder is replaced within this plus [`RETRY`].
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// How often a live holder touches its session when it has nothing else to write.
pub const KEEPALIVE: Duration = Duration::from_secs(2);

/// The session settings of a lease's connection (see the module's documentation).
/// `idle_session_timeout` is Postgres 14's; an older server keeps the rest.
const SESSION: [&str; 5] = [
    "SET idle_session_timeout = '10s'",
    "SET idle_in_transaction_session_timeout = '10s'",
    "SET tcp_keepalives_idle = 5",
    "SET tcp_keepalives_interval = 2",
    "SET tcp_keepalives_count = 2",
];

/// A held lease: dropping it ends its session, and so releases it.
pub struct Lease {
    name: String,
    conn: PgConnection,
    /// When the session last ran a statement this process knows of.
    touched: tokio::time::Instant,
}

impl Lease {
    /// Waits until this replica holds the lease `name`; `None` once `cancel` fires.
    /// Failures to reach Postgres are logged and retried with a backoff.
    pub async fn acquire(pool: &PgPool, name: &str, cancel: &CancellationToken) -> Option<Lease> {
        let held = metrics::gauge!(crate::metrics::LEASE_HELD, "lease" => name.to_owned());
        held.set(0.0);
        let lease = Self::wait(pool, name, cancel).await;
        if lease.is_some() {
            held.set(1.0);
        }
        lease
    }

    async fn wait(pool: &PgPool, name: &str, cancel: &CancellationToken) -> Option<Lease> {
        let mut backoff = Backoff::new(Duration::from_millis(200));
        loop {
            if cancel.is_cancelled() {
                return None;
            }
            match pool.connect_options().connect().await {
                Ok(conn) => {
                    let mut lease = Lease {
                        name: name.to_owned(),
                        conn,
                        touched: tokio::time::Instant::now(),
                    };
                    match lease.wait_for_lock(cancel).await {
                        Ok(true) => return Some(lease),
                        Ok(false) => return None,
                        Err(e) => {
                            tracing::warn!(lease = name, error = %e, "lease not taken; retrying")
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(lease = name, error = %e, "no connection for the lease; retrying")
                }
            }
            if !backoff.wait(cancel).await {
                return None;
            }
        }
    }

    /// Asks for the lock every [`RETRY`] until it is granted (true) or `cancel` fires.
    async fn wait_for_lock(&mut self, cancel: &CancellationToken) -> Result<bool, sqlx::Error> {
        for set in SESSION {
            match sqlx::raw_sql(set).execute(&mut self.conn).await {
                Ok(_) => {}
                // 42704: a setting this server does not have.
                Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("42704") => {
                    tracing::warn!(lease = %self.name, setting = set, "not supported by this Postgres; a frozen holder keeps the lease longer");
                }
                Err(e) => return Err(e),
            }
        }
        let mut waited = false;
        loop {
            let granted: bool =
                sqlx::query_scalar("SELECT pg_try_advisory_lock(hashtextextended($1, 11))")
                    .bind(&self.name)
                    .fetch_one(&mut self.conn)
                    .await?;
            if granted {
                if waited {
                    tracing::info!(lease = %self.name, "lease taken over");
                }
                return Ok(true);
            }
            if !waited {
                tracing::info!(lease = %self.name, "another replica holds the lease; standing by");
                waited = true;
            }
            tokio::select! {
                () = cancel.cancelled() => return Ok(false),
                () = tokio::time::sleep(RETRY) => {}
            }
        }
    }

    /// The session that holds the lease, for the holder's writes.
    pub fn conn(&mut self) -> &mut PgConnection {
        self.touched = tokio::time::Instant::now();
        &mut self.conn
    }

    /// Touches the session when nothing has for [`KEEPALIVE`], so Postgres does not end
    /// a live holder's session; false when the session (and so the lease) is gone.
    pub async fn keep_alive(&mut self) -> bool {
        if self.touched.elapsed() < KEEPALIVE {
            return true;
        }
        let alive = self.held().await;
        self.touched = tokio::time::Instant::now();
        alive
    }

    /// Whether the session, and so the lease, is still there.
    pub async fn held(&mut self) -> bool {
        matches!(
            tokio::time::timeout(Duration::from_secs(5), self.conn.ping()).await,
            Ok(Ok(()))
        )
    }

    /// Gives the lease up at once (rather than when the server notices the session is
    /// gone), so that a standby replica takes over without waiting.
    pub async fn release(self) {
        let name = self.name.clone();
        metrics::gauge!(crate::metrics::LEASE_HELD, "lease" => name.clone()).set(0.0);
        if let Err(e) = self.conn.close().await {
            tracing::debug!(lease = %name, error = %e, "lease session not closed cleanly");
        }
    }
}
