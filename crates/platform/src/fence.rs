//! The settlement fence: once a payment that settles an invoice is committed, no
//! provider call for that invoice's dunning steps may start (CDC art. 42).
//!
//! Events alone cannot promise that: `invoice.paid` reaches the dispatchers some
//! milliseconds after the commit, and a command already in a dispatcher's hands would
//! still go out. So the two services meet at one row and one lock, in the shared
//! Postgres (the only state two services share, and only this table):
//!
//! - A dispatcher opens a [`Gate`] before its provider calls: a transaction that takes
//!   a **shared** advisory lock per invoice (in key order) and reads `fence.settled` for
//!   them. It drops the settled invoices' messages, makes the calls for the rest, and
//!   releases the gate (commits) only after the calls have returned.
//! - Reconciliation, in the transaction that settles an invoice, calls [`settle_all`]
//!   last, right before the commit: it takes the **exclusive** lock on that invoice,
//!   which waits for every gate holding it, and then inserts the row.
//!
//! Why this holds by construction: a call starts only inside a gate that found no row.
//! If that gate was opened before the settling transaction took its exclusive lock, the
//! lock waited for the gate to close, so the call started (and ended) before the
//! settlement committed. If the gate asked for its shared lock after the exclusive lock
//! was granted, it waited until the settlement committed (Postgres queues the shared
//! request behind the held exclusive one), and then it reads the row and sends nothing.
//! There is no third case. The thank-you (`on_paid`) does not pass the gate.
//!
//! The cost: a settling payment may wait for the dispatch batch in flight on its invoice
//! (at most the batch's rate-limit spacing plus the provider timeout). Hash collisions
//! of the 64-bit lock key only add waiting, never a wrong answer: the row decides.

use std::collections::HashSet;

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgPool, Postgres, Transaction};

use crate::{PlatformError, db};

/// The fence's schema.
pub const SCHEMA: &str = "fence";

/// Creates `fence.settled` (any service that uses the fence runs this).
pub async fn migrate(pool: &PgPool) -> Result<(), PlatformError> {
    db::migrate(pool, sqlx::migrate!("./migrations/fence"), SCHEMA, &[]).await
}

/// The lock key of an invoice, as SQL over `$tenant` and `$invoice` text parameters.
macro_rules! key_sql {
    ($t:literal, $i:literal) => {
        concat!("hashtextextended(", $t, " || '/' || ", $i, ", 42)")
    };
}

#[derive(Clone, Copy)]
enum Lock {
    /// A settlement's: waits for every gate.
    Exclusive,
    /// A gate's.
    Shared,
}

/// Takes the invoices' locks until the end of the transaction, in key order (volatile
/// functions in the target list run after ORDER BY), the one order every gate and
/// settlement uses, so none of them waits on another in a cycle.
async fn lock(
    conn: &mut PgConnection,
    mode: Lock,
    tenants: &[&str],
    invoices: &[&str],
) -> Result<(), sqlx::Error> {
    const EXCLUSIVE: &str = concat!(
        "SELECT pg_advisory_xact_lock(k) FROM (SELECT DISTINCT ",
        key_sql!("t", "i"),
        " AS k FROM UNNEST($1::text[], $2::text[]) AS u(t, i)) s ORDER BY k"
    );
    const SHARED: &str = concat!(
        "SELECT pg_advisory_xact_lock_shared(k) FROM (SELECT DISTINCT ",
        key_sql!("t", "i"),
        " AS k FROM UNNEST($1::text[], $2::text[]) AS u(t, i)) s ORDER BY k"
    );
    let sql = match mode {
        Lock::Exclusive => EXCLUSIVE,
        Lock::Shared => SHARED,
    };
    sqlx::query(sql)
        .bind(tenants)
        .bind(invoices)
        .execute(conn)
        .await?;
    Ok(())
}

/// One invoice a transaction settles, and the payment that settles it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settlement {
    pub tenant: String,
    pub invoice_id: String,
    pub payment_id: String,
}

/// In the settling transaction, as its last step before the commit: waits for every
/// dispatcher gate on these invoices, then marks them settled. Returns each invoice it
/// settled with when (the database's clock, read after every lock was granted); an
/// invoice already settled is left out.
///
/// The locks are taken in key order, as gates take theirs. Taking them last, rather than as
/// each payment is applied, keeps the settlement's moment next to its commit: the
/// gates wait the least, and `invoice.paid` leaves right after the moment it records.
pub async fn settle_all(
    conn: &mut PgConnection,
    settlements: &[Settlement],
) -> Result<Vec<(Settlement, DateTime<Utc>)>, sqlx::Error> {
    if settlements.is_empty() {
        return Ok(Vec::new());
    }
    let tenants: Vec<&str> = settlements.iter().map(|s| s.tenant.as_str()).collect();
    let invoices: Vec<&str> = settlements.iter().map(|s| s.invoice_id.as_str()).collect();
    let payments: Vec<&str> = settlements.iter().map(|s| s.payment_id.as_str()).collect();
    lock(conn, Lock::Exclusive, &tenants, &invoices).await?;
    let rows: Vec<(String, String, String, DateTime<Utc>)> = sqlx::query_as(
        "INSERT INTO fence.settled (tenant, invoice_id, payment_id, settled_at) \
         SELECT t, i, p, clock_timestamp() FROM UNNEST($1::text[], $2::text[], $3::text[]) AS u(t, i, p) \
         ON CONFLICT DO NOTHING RETURNING tenant, invoice_id, payment_id, settled_at",
    )
    .bind(&tenants)
    .bind(&invoices)
    .bind(&payments)
    .fetch_all(&mut *conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(tenant, invoice_id, payment_id, at)| {
            (
                Settlement {
                    tenant,
                    invoice_id,
                    payment_id,
                },
                at,
            )
        })
        .collect())
}

/// A dispatcher's gate: shared locks on some invoices, held until [`Gate::close`].
pub struct Gate {
    tx: Option<Transaction<'static, Postgres>>,
}

impl Gate {
    /// Locks `invoices` (tenant, invoice id) shared and returns the gate and which of
    /// them are settled. With no invoices it holds nothing.
    pub async fn open(
        pool: &PgPool,
        invoices: &[(String, String)],
    ) -> Result<(Gate, HashSet<(String, String)>), sqlx::Error> {
        if invoices.is_empty() {
            return Ok((Gate { tx: None }, HashSet::new()));
        }
        let (tenants, ids): (Vec<&str>, Vec<&str>) = invoices
            .iter()
            .map(|(t, i)| (t.as_str(), i.as_str()))
            .unzip();
        let mut tx = pool.begin().await?;
        lock(&mut tx, Lock::Shared, &tenants, &ids).await?;
        let settled: Vec<(String, String)> = sqlx::query_as(
            "SELECT f.tenant, f.invoice_id FROM fence.settled f \
             JOIN UNNEST($1::text[], $2::text[]) AS u(t, i) ON f.tenant = u.t AND f.invoice_id = u.i",
        )
        .bind(&tenants)
        .bind(&ids)
        .fetch_all(&mut *tx)
        .await?;
        Ok((Gate { tx: Some(tx) }, settled.into_iter().collect()))
    }

    /// Releases the locks: call after the provider calls have returned.
    pub async fn close(mut self) -> Result<(), sqlx::Error> {
        match self.tx.take() {
            Some(tx) => tx.commit().await,
            None => Ok(()),
        }
    }
}

/// Clears an invoice's fence row: its id was reused for a new invoice.
pub async fn reopen(
    conn: &mut PgConnection,
    tenant: &str,
    invoice_id: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM fence.settled WHERE tenant = $1 AND invoice_id = $2")
        .bind(tenant)
        .bind(invoice_id)
        .execute(conn)
        .await?;
    Ok(())
}
