//! Leases: which one of a service's replicas runs a loop that must run once, such as an
//! in-order event consumer ([`crate::nats::consume_batches`]).
//!
//! A lease is a Postgres session advisory lock (`hashtextextended(name, 11)`) held on a
//! connection of its own, outside the pool. The holder does its writes **on that
//! connection**, so a replica whose session ended (its process died, the server
//! restarted, the network dropped it) cannot commit anything more under the lease: the
//! session that held the lock is the session that writes. Another replica takes the
//! lease once the old session is gone; it waits, polling, until then.

use std::time::Duration;

use sqlx::{ConnectOptions, Connection, PgConnection, PgPool};
use tokio_util::sync::CancellationToken;

use crate::shutdown::Backoff;

/// How often a replica that does not hold a lease asks for it again.
pub const RETRY: Duration = Duration::from_secs(1);

/// A held lease: dropping it ends its session, and so releases it.
pub struct Lease {
    name: String,
    conn: PgConnection,
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
        &mut self.conn
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
