//! One provider rate limit across every replica.
//!
//! The limiter is GCRA (the generic cell rate algorithm, as in the `governor` crate)
//! with its one cell in Postgres: a row per provider account holding the theoretical
//! arrival time (TAT) on the database's clock. Taking `k` tokens is one atomic
//! statement that moves the TAT `k` emission intervals forward and returns the slots
//! it reserved; each message waits for its slot. Replicas never talk to each other and
//! never share a clock: the row is the only state, so `R` messages per second hold for
//! the account whatever the number of replicas. No burst is allowed: the first of a
//! batch goes at once, the rest follow every `1/R` seconds.

use std::time::Duration;

use sqlx::PgPool;
use tokio::time::Instant;

/// A rate limit on one provider account.
#[derive(Debug, Clone)]
pub struct Limiter {
    key: String,
    /// Microseconds between two messages; 0 is unlimited.
    interval_us: i64,
    pool: PgPool,
}

impl Limiter {
    /// `per_second` messages per second on `key` (0 = unlimited).
    pub fn new(pool: PgPool, key: impl Into<String>, per_second: u32) -> Self {
        let interval_us = if per_second == 0 {
            0
        } else {
            1_000_000 / i64::from(per_second)
        };
        Limiter {
            key: key.into(),
            interval_us,
            pool,
        }
    }

    pub fn is_unlimited(&self) -> bool {
        self.interval_us == 0
    }

    /// Reserves `k` consecutive slots; returns when each may go, as local instants.
    pub async fn reserve(&self, k: usize) -> Result<Vec<Instant>, sqlx::Error> {
        let local_now = Instant::now();
        if self.is_unlimited() || k == 0 {
            return Ok(vec![local_now; k]);
        }
        let k64 = i64::try_from(k).unwrap_or(i64::MAX);
        let span = self.interval_us.saturating_mul(k64);
        let (first, db_now): (i64, i64) = sqlx::query_as(
            "WITH now AS (SELECT (extract(epoch FROM clock_timestamp()) * 1000000)::bigint AS us) \
             INSERT INTO dispatch.limiter AS l (key, tat_us) SELECT $1, now.us + $2 FROM now \
             ON CONFLICT (key) DO UPDATE \
             SET tat_us = greatest(l.tat_us, (SELECT us FROM now)) + $2 \
             RETURNING tat_us - $2, (SELECT us FROM now)",
        )
        .bind(&self.key)
        .bind(span)
        .fetch_one(&self.pool)
        .await?;
        let wait_us = |i: i64| {
            let slot = first.saturating_add(self.interval_us.saturating_mul(i));
            u64::try_from(slot.saturating_sub(db_now)).unwrap_or(0)
        };
        Ok((0..k64)
            .map(|i| local_now + Duration::from_micros(wait_us(i)))
            .collect())
    }
}
