//! The transactional outbox. A service writes its state change and the events it causes
//! in one transaction ([`Outbox::enqueue`]); the [`Relay`] publishes them afterwards,
//! in order, each with its own id as `Nats-Msg-Id` and the trace context stored with
//! it, then deletes them.
//!
//! Every service's outbox table has the same shape, and the platform owns it: [`migrate`]
//! creates `<schema>.outbox` for a service (its history in `<schema>._outbox_migrations`).
//! One row per enqueue (up to [`PACK`] messages), its messages in parallel arrays:
//!
//! ```sql
//! CREATE TABLE <schema>.outbox (
//!     seq          BIGSERIAL PRIMARY KEY,
//!     created_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
//!     n            INTEGER NOT NULL,   -- messages in the row
//!     ids          UUID[] NOT NULL,
//!     subjects     TEXT[] NOT NULL,
//!     payloads     BYTEA[] NOT NULL,
//!     traceparents TEXT[] NOT NULL,    -- NULL elements: no trace context
//!     CONSTRAINT outbox_pack CHECK (n > 0 AND cardinality(ids) = n
//!         AND cardinality(subjects) = n AND cardinality(payloads) = n
//!         AND cardinality(traceparents) = n)
//! );  -- the arrays compressed with lz4 where the server has it
//! ```
//!
//! A batch of messages written as one row costs one heap tuple and one index entry
//! instead of one each per message, and its payloads are compressed together (once a
//! row passes Postgres' TOAST threshold): a claim of 500 dispatch commands writes a
//! fraction of the WAL that 500 rows would.
//!
//! Only one relay publishes a table at a time (an advisory lock held by a connection of
//! its own), so events leave in order even with several replicas. It does not wait for
//! one batch's acks before it publishes the next: a row committed while a batch is in
//! flight leaves at once, and its batch is deleted once JetStream has acked it. If the
//! relay dies after a publish but before the delete, the rows are published again with
//! the same ids and JetStream's duplicate window drops the repeats.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream;
use async_nats::jetstream::context::PublishAckFuture;
use bytes::Bytes;
use futures::future::try_join_all;
// Table names come from service constants, never from input.
use async_nats::jetstream::context::PublishErrorKind;
use chrono::{DateTime, Utc};
use regua_contract::events::OutboxMessageParked;
use regua_contract::{DomainEvent, Envelope, EventType, subjects};
use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::postgres::PgRow;
use sqlx::{AssertSqlSafe, PgConnection, PgPool, Row, SqlSafeStr};
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use uuid::{NoContext, Timestamp, Uuid};

use crate::clock::SharedClock;
use crate::db::Reissued;
use crate::shutdown::Backoff;
use crate::{PlatformError, nats};

/// One message waiting to be published.
#[derive(Debug, Clone)]
pub struct OutboxMessage {
    pub id: Uuid,
    pub subject: String,
    pub payload: Vec<u8>,
    pub traceparent: Option<String>,
}

/// A UUIDv7 for `now`, taken from the injected clock rather than the system time.
pub fn new_id(now: DateTime<Utc>) -> Uuid {
    let secs = u64::try_from(now.timestamp()).unwrap_or(0);
    Uuid::new_v7(Timestamp::from_unix(
        NoContext,
        secs,
        now.timestamp_subsec_nanos(),
    ))
}

/// An enveloped event for `tenant`, ready for the outbox: its type and version are the
/// payload's own ([`DomainEvent`]).
pub fn event_message(
    now: DateTime<Utc>,
    tenant: &str,
    event: &DomainEvent,
    correlation_id: &str,
    causation_id: &str,
    traceparent: Option<String>,
) -> Result<OutboxMessage, serde_json::Error> {
    let id = new_id(now);
    let event_type = event.event_type();
    let envelope = Envelope {
        id,
        event_type,
        version: event_type.version(),
        occurred_at: now,
        tenant: tenant.to_owned(),
        correlation_id: correlation_id.to_owned(),
        causation_id: causation_id.to_owned(),
        data: event,
    };
    Ok(OutboxMessage {
        id,
        subject: subjects::event(tenant, event_type),
        payload: serde_json::to_vec(&envelope)?,
        traceparent,
    })
}

/// The outbox table's migrations, in order, over `{table}` (schema-qualified). A service
/// whose own early migrations made the table (the four first services did, in this
/// shape) finds the first one a no-op.
const MIGRATIONS: &[(i64, &str, &str)] = &[
    (
        1,
        "outbox",
        r#"CREATE TABLE IF NOT EXISTS {table} (
    seq          BIGSERIAL PRIMARY KEY,
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    n            INTEGER NOT NULL,
    ids          UUID[] NOT NULL,
    subjects     TEXT[] NOT NULL,
    payloads     BYTEA[] NOT NULL,
    traceparents TEXT[] NOT NULL,
    -- The relay reads the arrays side by side: one element per message in each.
    CONSTRAINT outbox_pack CHECK (
        n > 0 AND cardinality(ids) = n AND cardinality(subjects) = n
        AND cardinality(payloads) = n AND cardinality(traceparents) = n)
);
-- lz4 compresses a pack of JSON payloads (and the other arrays) several times faster
-- than the default pglz. A server built without lz4 keeps its default.
DO $$
BEGIN
    ALTER TABLE {table} ALTER COLUMN ids SET COMPRESSION lz4,
        ALTER COLUMN subjects SET COMPRESSION lz4,
        ALTER COLUMN payloads SET COMPRESSION lz4,
        ALTER COLUMN traceparents SET COMPRESSION lz4;
EXCEPTION WHEN feature_not_supported THEN
    RAISE NOTICE '{table}: lz4 is not available; the outbox keeps the default compression';
END
$$;
"#,
    ),
    (
        2,
        "parked",
        r#"-- Messages the relay could never publish (larger than the server accepts), moved
-- aside so the rows after them flow; `outbox.message_parked` reports each one.
CREATE TABLE IF NOT EXISTS {table}_parked (
    id          UUID PRIMARY KEY,
    parked_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    subject     TEXT NOT NULL,
    payload     BYTEA NOT NULL,
    traceparent TEXT,
    reason      TEXT NOT NULL
);"#,
    ),
];

/// The first four services' migrations rewritten when the outbox table moved out of
/// them into the platform, with the checksums databases recorded for their earlier
/// text ([`crate::db::migrate`] accepts those).
const REISSUED: &[(&str, Reissued)] = &[
    (
        "intake",
        Reissued {
            version: 1,
            applied: "6a57dcc33da33cd546141847586f5ee6b285ad343da3f6803f0ac9b54d022f4e746d058c78ce37e2370c6b8b1e77ac2e",
        },
    ),
    (
        "intake",
        Reissued {
            version: 2,
            applied: "4381583f601668f051365dea47efda4e73c20471f87a0ceb83f60bb408e14093a99195b7974e462391ccb8eed38bf9ab",
        },
    ),
    (
        "intake",
        Reissued {
            version: 3,
            applied: "69b11dbeca632ba4ea6ddc3982b40ca5c17eba7daa924aae1ed6a01723e18a5b4958f15ad40917e934ad51d10e183019",
        },
    ),
    (
        "scheduler",
        Reissued {
            version: 1,
            applied: "336bdbe6cee3cc98a6fb07c51837d8566ad31846b22fdf01797527418127f67aa10d7b8cbd6cde634067959f54a730be",
        },
    ),
    (
        "scheduler",
        Reissued {
            version: 8,
            applied: "d2bfa7994ac256ab4eb30327dbea0e848600f1b6fc1acc0d9ca704e3f55868d57e2a674560b144205f49881da8c60f4f",
        },
    ),
    (
        "dispatch",
        Reissued {
            version: 1,
            applied: "3c6a9b90e69433f5333653d142821f4a935f9a85cf2b97ce5fcfb2d30c1f24bad8da19cc37293fb4ae96ff5a29f71ee4",
        },
    ),
    (
        "dispatch",
        Reissued {
            version: 4,
            applied: "e1841c70e8abe6faaeb5cd40270b2b8807cf1b7774cbb1817c0ca73e698c2d8ea6b5d39186fa157b58223b4558b245da",
        },
    ),
    (
        "reconcile",
        Reissued {
            version: 1,
            applied: "303a77d6570a1d87f7607ae72a703f6ae92fee96adeed5e50314f032dc11cc072b48c635cf159f5ba6916ba9ff8fe613",
        },
    ),
    (
        "reconcile",
        Reissued {
            version: 2,
            applied: "4633ee9976704812632b1c931f26f527f59ad29dc7a3860d5bf5a6c14afe80eaeafbf1ac7df0e850b5abd8803ca45e6e",
        },
    ),
];

/// What [`REISSUED`] holds for the service with schema `schema`.
pub fn reissued(schema: &str) -> Vec<Reissued> {
    REISSUED
        .iter()
        .filter(|(s, _)| *s == schema)
        .map(|(_, r)| *r)
        .collect()
}

/// Creates or brings up to date `outbox`'s table, in its service's schema.
pub async fn migrate(pool: &PgPool, outbox: Outbox) -> Result<(), PlatformError> {
    let table = outbox.table();
    let schema = table.split_once('.').map_or(table, |(schema, _)| schema);
    let migrations = MIGRATIONS
        .iter()
        .map(|(version, description, sql)| {
            Migration::new(
                *version,
                (*description).into(),
                MigrationType::Simple,
                AssertSqlSafe(sql.replace("{table}", table)).into_sql_str(),
                false,
            )
        })
        .collect();
    let mut migrator = Migrator::with_migrations(migrations);
    migrator.create_schema(schema.to_owned());
    migrator.dangerous_set_table_name(format!("{schema}._outbox_migrations"));
    migrator.run(pool).await?;
    Ok(())
}

/// A service's outbox table.
#[derive(Debug, Clone, Copy)]
pub struct Outbox {
    table: &'static str,
}

impl Outbox {
    /// `table` is schema-qualified, e.g. `intake.outbox`. It is a constant of the
    /// service, never input.
    pub const fn new(table: &'static str) -> Self {
        Outbox { table }
    }

    /// The schema-qualified table name.
    pub fn table(&self) -> &'static str {
        self.table
    }

    /// Messages waiting to be published (or published and not deleted yet), in up to
    /// [`DEPTH_CAP`] rows in sequence order from the floor of this process's relay, if it
    /// leads: a plain `count(*)` would also read every relayed row not vacuumed yet
    /// (1 s per sample after a million relayed rows, with no vacuum in between).
    pub async fn depth(&self, pool: &sqlx::PgPool) -> Result<i64, sqlx::Error> {
        let from = floors().get(self.table).copied().unwrap_or(i64::MIN);
        sqlx::query_scalar(AssertSqlSafe(format!(
            "SELECT coalesce(sum(n), 0) FROM (SELECT n FROM {} WHERE seq >= $1 ORDER BY seq LIMIT $2) AS waiting",
            self.table
        )))
        .bind(from)
        .bind(DEPTH_CAP)
        .fetch_one(pool)
        .await
    }

    /// Writes `messages` inside the caller's transaction, in order: one row per
    /// [`PACK`] of them.
    pub async fn enqueue(
        &self,
        conn: &mut PgConnection,
        messages: &[OutboxMessage],
    ) -> Result<(), sqlx::Error> {
        // The transaction id is taken (`pg_current_xact_id`, evaluated before the row's
        // sequence is drawn) so that the relay's [`Floor`] can tell, from snapshots,
        // when every sequence drawn so far belongs to a finished transaction.
        let sql = format!(
            "INSERT INTO {} (n, ids, subjects, payloads, traceparents) \
             SELECT $1, $2, $3, $4, $5 WHERE pg_current_xact_id() IS NOT NULL",
            self.table
        );
        for pack in messages.chunks(PACK) {
            let mut ids = Vec::with_capacity(pack.len());
            let mut subjects = Vec::with_capacity(pack.len());
            let mut payloads = Vec::with_capacity(pack.len());
            let mut traceparents = Vec::with_capacity(pack.len());
            for m in pack {
                ids.push(m.id);
                subjects.push(m.subject.as_str());
                payloads.push(m.payload.as_slice());
                traceparents.push(m.traceparent.as_deref());
            }
            sqlx::query(AssertSqlSafe(sql.as_str()))
                .bind(i32::try_from(pack.len()).unwrap_or(i32::MAX))
                .bind(&ids)
                .bind(&subjects)
                .bind(&payloads)
                .bind(&traceparents)
                .execute(&mut *conn)
                .await?;
        }
        Ok(())
    }
}

/// Messages per outbox row, at most.
pub const PACK: usize = 512;

/// Messages a relay round publishes, about: it takes rows in order until their
/// messages reach this (at least one row).
const ROUND_MESSAGES: i64 = 1024;

/// Rows a relay round looks at, at most.
const ROUND_ROWS: i64 = 256;

/// Publishes an [`Outbox`] to JetStream.
pub struct Relay {
    outbox: Outbox,
    pool: PgPool,
    js: jetstream::Context,
    wake: Arc<Notify>,
    /// Stamps the `outbox.message_parked` events.
    clock: SharedClock,
    /// The next rows from sequence `$3` on, skipping the sequences in `$1`
    /// ([`Relay::next_rows`]).
    select_next: String,
}

impl Relay {
    pub fn new(
        outbox: Outbox,
        pool: PgPool,
        js: jetstream::Context,
        wake: Arc<Notify>,
        clock: SharedClock,
    ) -> Self {
        Relay {
            outbox,
            pool,
            js,
            wake,
            clock,
            // Up to `$2` rows, cut once the messages of the rows before reach `$4`.
            // The inner select passes the packed columns on as TOAST pointers: a row
            // the cut leaves out is not read past its header.
            select_next: format!(
                "SELECT seq, n, ids, subjects, payloads, traceparents FROM ( \
                 SELECT seq, n, ids, subjects, payloads, traceparents, sum(n) OVER (ORDER BY seq) - n AS before \
                 FROM {} WHERE seq >= $3 AND seq <> ALL($1) ORDER BY seq LIMIT $2) AS next \
                 WHERE before < $4 ORDER BY seq",
                outbox.table
            ),
        }
    }

    /// Runs the relay as one of `shutdown`'s flushers: it stops after the work that
    /// fills the outbox, and flushes what that work left.
    pub fn spawn(self, shutdown: &crate::Shutdown) {
        crate::metrics::watch_outbox(self.outbox.table());
        let flush = shutdown.flush_token();
        shutdown.spawn_flusher(self.run(flush));
    }

    /// Relays until `cancel`, then flushes what is left (bounded by a few attempts).
    pub async fn run(self, cancel: CancellationToken) {
        let mut backoff = Backoff::new(Duration::from_millis(100));
        while !cancel.is_cancelled() {
            match self.lead(&cancel).await {
                Ok(()) => backoff.reset(),
                Err(e) => {
                    tracing::warn!(error = %e, table = self.outbox.table, "outbox relay failed; retrying");
                    if !backoff.wait(&cancel).await {
                        break;
                    }
                }
            }
        }
        for _ in 0..20 {
            match self.relay_once().await {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "outbox flush at shutdown failed; rows stay for the next start");
                    break;
                }
            }
        }
    }

    /// Takes the table's relay lock (session-scoped, on a connection of its own) and
    /// relays until `cancel` or a failure; closing the connection releases the lock.
    /// Returns at once, after a pause, when another replica holds it.
    async fn lead(&self, cancel: &CancellationToken) -> Result<(), PlatformError> {
        let mut pooled = self.pool.acquire().await?;
        if !self.try_lock(&mut pooled, LockScope::Session).await? {
            drop(pooled);
            tokio::select! {
                () = cancel.cancelled() => {}
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
            return Ok(());
        }
        // Out of the pool: the lock (and this setting) live as long as this connection.
        let mut conn = pooled.detach();
        sqlx::query("SET plan_cache_mode = force_custom_plan")
            .execute(&mut conn)
            .await?;
        let result = self.pump(&mut conn, cancel).await;
        // Rows below the floor may still be in flight: the next leader starts over.
        floors().remove(self.outbox.table);
        if let Err(e) = sqlx::Connection::close(conn).await {
            tracing::debug!(error = %e, "closing the relay's connection");
        }
        result
    }

    /// Publishes rows as they commit, without waiting for the acks of what it already
    /// published: a confirming task awaits those (in order) and deletes the rows, while
    /// this loop selects and publishes the next ones, skipping rows still in flight.
    async fn pump(
        &self,
        conn: &mut PgConnection,
        cancel: &CancellationToken,
    ) -> Result<(), PlatformError> {
        let in_flight: Arc<InFlight> = Arc::default();
        let (sent, confirmed) = mpsc::channel::<Sent>(IN_FLIGHT_BATCHES);
        let confirming = tokio::spawn(confirm(
            self.outbox,
            self.pool.clone(),
            confirmed,
            Arc::clone(&in_flight),
        ));
        let mut floor = Floor::new(self.outbox);
        let pumped = async {
            while !cancel.is_cancelled() && !confirming.is_finished() {
                floor.observe(conn).await?;
                let skip: Vec<i64> = lock(&in_flight).iter().copied().collect();
                let round = self.next_rows(conn, &skip, floor.at).await?;
                floor.advance(&round.seqs, round.cut);
                if !round.seqs.is_empty() {
                    let mut acks = Vec::with_capacity(round.messages);
                    let mut parked = Vec::new();
                    for row in &round.rows {
                        self.publish(row, &mut acks, &mut parked).await?;
                    }
                    // Moved aside before the rows can be deleted.
                    self.park(parked).await?;
                    lock(&in_flight).extend(round.seqs.iter().copied());
                    let seqs = round.seqs;
                    if sent.send(Sent { seqs, acks }).await.is_err() {
                        // The confirming task ended: its result says why.
                        break;
                    }
                }
                if round.cut {
                    continue;
                }
                tokio::select! {
                    () = cancel.cancelled() => {}
                    () = self.wake.notified() => {}
                    () = tokio::time::sleep(Duration::from_millis(250)) => {}
                }
            }
            Ok::<(), PlatformError>(())
        }
        .await;
        drop(sent);
        let confirmed = confirming
            .await
            .map_err(|e| PlatformError::Task(format!("outbox confirmation: {e}")))?;
        pumped.and(confirmed)
    }

    /// Tries to take the table's relay lock, for the connection's session or for the
    /// transaction it is in.
    async fn try_lock(
        &self,
        conn: &mut PgConnection,
        scope: LockScope,
    ) -> Result<bool, sqlx::Error> {
        let sql = match scope {
            LockScope::Session => "SELECT pg_try_advisory_lock(hashtext($1))",
            LockScope::Transaction => "SELECT pg_try_advisory_xact_lock(hashtext($1))",
        };
        sqlx::query_scalar(sql)
            .bind(self.outbox.table)
            .fetch_one(conn)
            .await
    }

    /// The next rows in sequence order from `from` on, skipping the sequences in
    /// `skip`: up to [`ROUND_ROWS`] rows, and no more once their messages reach
    /// [`ROUND_MESSAGES`]. (The pump's connection plans each execution with the actual
    /// list, which Postgres then probes as a hash table: a generic plan would compare
    /// each row with every sequence in flight.)
    async fn next_rows(
        &self,
        conn: &mut PgConnection,
        skip: &[i64],
        from: i64,
    ) -> Result<Round, sqlx::Error> {
        let rows = sqlx::query(AssertSqlSafe(self.select_next.as_str()))
            .bind(skip)
            .bind(ROUND_ROWS)
            .bind(from)
            .bind(ROUND_MESSAGES)
            .fetch_all(conn)
            .await?;
        let mut seqs = Vec::with_capacity(rows.len());
        let mut messages = 0usize;
        for row in &rows {
            seqs.push(row.try_get::<i64, _>("seq")?);
            messages += usize::try_from(row.try_get::<i32, _>("n")?).unwrap_or(0);
        }
        // Whether rows may be left that this round's select could have taken: the
        // row limit or the message budget stopped it.
        let cut = seqs.len() as i64 >= ROUND_ROWS || messages as i64 >= ROUND_MESSAGES;
        Ok(Round {
            seqs,
            rows,
            messages,
            cut,
        })
    }

    /// Publishes one outbox row's messages in order, each with its id as
    /// `Nats-Msg-Id` and its trace context, adding their acks to `acks`. A message the
    /// server can never take (over its maximum payload) goes to `parked` instead.
    async fn publish(
        &self,
        row: &PgRow,
        acks: &mut Vec<PublishAckFuture>,
        parked: &mut Vec<Parked>,
    ) -> Result<(), PlatformError> {
        let ids: Vec<Uuid> = row.try_get("ids")?;
        let subjects: Vec<String> = row.try_get("subjects")?;
        let payloads: Vec<Vec<u8>> = row.try_get("payloads")?;
        let traceparents: Vec<Option<String>> = row.try_get("traceparents")?;
        // The table's `outbox_pack` constraint holds the arrays to one element per
        // message each, so they zip without a remainder.
        let messages = ids
            .into_iter()
            .zip(subjects)
            .zip(payloads)
            .zip(traceparents);
        for (((id, subject), payload), tp) in messages {
            let key = id.to_string();
            let span = nats::publish_span_continuing(&subject, &key, tp.as_deref());
            let payload = Bytes::from(payload);
            let publish =
                nats::traced_publish(&span, async_nats::HeaderMap::new(), &key, payload.clone());
            match self
                .js
                .send_publish(subject.clone(), publish)
                .instrument(span)
                .await
            {
                Ok(ack) => acks.push(ack),
                Err(e) if e.kind() == PublishErrorKind::MaxPayloadExceeded => {
                    parked.push(Parked {
                        id,
                        subject,
                        payload,
                        traceparent: tp,
                        reason: e.to_string(),
                    });
                }
                Err(e) => return Err(PlatformError::nats(e)),
            }
        }
        Ok(())
    }

    /// Moves `parked` aside, to `<table>_parked`, and reports each one newly parked:
    /// an `outbox.message_parked` event (through this outbox), a metric and a log
    /// line (ids, subject and size: no payload, so no personal data).
    async fn park(&self, parked: Vec<Parked>) -> Result<(), PlatformError> {
        if parked.is_empty() {
            return Ok(());
        }
        let table = self.outbox.table;
        let mut tx = self.pool.begin().await?;
        let mut events = Vec::with_capacity(parked.len());
        for p in parked {
            let inserted = sqlx::query(AssertSqlSafe(format!(
                "INSERT INTO {table}_parked (id, subject, payload, traceparent, reason) \
                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT (id) DO NOTHING"
            )))
            .bind(p.id)
            .bind(&p.subject)
            .bind(p.payload.as_ref())
            .bind(&p.traceparent)
            .bind(&p.reason)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if inserted == 0 {
                // Parked by an earlier leader that died before deleting the row.
                continue;
            }
            let bytes = u64::try_from(p.payload.len()).unwrap_or(u64::MAX);
            tracing::error!(
                outbox = table,
                message_id = %p.id,
                subject = %p.subject,
                bytes,
                reason = %p.reason,
                "outbox message can never be published; parked"
            );
            metrics::counter!(crate::metrics::OUTBOX_PARKED, "outbox" => table).increment(1);
            let id = p.id.to_string();
            let data = DomainEvent::OutboxMessageParked(OutboxMessageParked {
                message_id: id.clone(),
                subject: p.subject.clone(),
                outbox: table.to_owned(),
                bytes,
                reason: p.reason,
            });
            let tenant = subjects::tenant_token(&p.subject);
            let tp = p.traceparent;
            let event = event_message(self.clock.now(), tenant, &data, &id, &id, tp)
                .map_err(|e| PlatformError::Task(format!("outbox.message_parked: {e}")))?;
            events.push(event);
        }
        self.outbox.enqueue(&mut tx, &events).await?;
        tx.commit().await?;
        self.wake.notify_one();
        Ok(())
    }

    /// Publishes one batch in order and deletes it, in one transaction under the
    /// table's relay lock. Returns how many were published. (The flush at shutdown,
    /// once the pumping connection has let the lock go.)
    pub async fn relay_once(&self) -> Result<usize, PlatformError> {
        let mut tx = self.pool.begin().await?;
        if !self.try_lock(&mut tx, LockScope::Transaction).await? {
            return Ok(0);
        }
        let round = self.next_rows(&mut tx, &[], i64::MIN).await?;
        if round.seqs.is_empty() {
            return Ok(0);
        }
        let mut acks = Vec::with_capacity(round.messages);
        let mut parked = Vec::new();
        for row in &round.rows {
            self.publish(row, &mut acks, &mut parked).await?;
        }
        self.park(parked).await?;
        try_join_all(acks.into_iter().map(IntoFuture::into_future))
            .await
            .map_err(PlatformError::nats)?;
        delete(&mut tx, self.outbox, &round.seqs).await?;
        tx.commit().await?;
        Ok(round.messages)
    }
}

/// A message the server can never take, on its way aside.
struct Parked {
    id: Uuid,
    subject: String,
    payload: Bytes,
    traceparent: Option<String>,
    reason: String,
}

/// How long the relay lock is held.
#[derive(Debug, Clone, Copy)]
enum LockScope {
    /// Until the connection closes (the pump).
    Session,
    /// Until the transaction ends (the flush at shutdown).
    Transaction,
}

/// What one [`Relay::next_rows`] took.
struct Round {
    seqs: Vec<i64>,
    rows: Vec<PgRow>,
    /// Messages in `rows`.
    messages: usize,
    /// Whether the row limit or the message budget ended the select.
    cut: bool,
}

/// Published batches whose acks are not awaited yet, at most, before the pump waits.
const IN_FLIGHT_BATCHES: usize = 4;

/// A published batch: its rows' sequence numbers and the acks to await.
struct Sent {
    seqs: Vec<i64>,
    acks: Vec<PublishAckFuture>,
}

/// [`Outbox::depth`] reads no more rows than this.
pub const DEPTH_CAP: i64 = 1_000_000;

/// Each relayed table's [`Floor`] in this process, while its relay leads.
fn floors() -> std::sync::MutexGuard<'static, HashMap<&'static str, i64>> {
    static FLOORS: std::sync::LazyLock<Mutex<HashMap<&'static str, i64>>> =
        std::sync::LazyLock::new(Mutex::default);
    FLOORS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Where the pump's select starts. Relayed rows are deleted, but their index entries
/// stay until the table is vacuumed, and a select that started at the lowest sequence
/// every time would walk all of them (15 ms per select after 400,000 relayed rows with
/// no vacuum in between). Starting higher is safe only below rows that can no longer
/// appear: a transaction that drew a sequence may commit after rows with higher
/// sequences were relayed. So the floor moves in two steps. A *mark* pairs the
/// sequence's last value, read in one round, with a transaction id taken in a later
/// round: every sequence up to that value was drawn by a transaction that had its id by
/// then ([`Outbox::enqueue`] takes it before drawing; the sequence caches one value at
/// a time, as `BIGSERIAL` does), so a lower id. Once a later snapshot's `xmin` passes
/// the mark's id, all those transactions have ended, and that round's select sees every
/// row up to the mark.
#[derive(Debug)]
struct Floor {
    outbox: Outbox,
    /// Every row below this sequence has been published (or is in flight).
    at: i64,
    /// The last value of the sequence, read in the previous round.
    last_read: Option<i64>,
    /// (sequence value, transaction id) waiting for the snapshots to pass the id.
    mark: Option<(i64, i64)>,
    /// The mark's sequence value once every row up to it is visible to this round's
    /// select ([`Floor::observe`]).
    ready: Option<i64>,
    /// Whether the previous round selected rows: only then is a new mark worth a
    /// transaction id.
    busy: bool,
}

impl Floor {
    fn new(outbox: Outbox) -> Self {
        Floor {
            outbox,
            at: 0,
            last_read: None,
            mark: None,
            ready: None,
            busy: false,
        }
    }

    /// Reads the snapshot and the sequence before a round's select (and, when the
    /// relay is busy and no mark is waiting, takes a transaction id for a new mark).
    async fn observe(&mut self, conn: &mut PgConnection) -> Result<(), sqlx::Error> {
        let new_mark = self.busy && self.mark.is_none() && self.last_read.is_some();
        // A CASE evaluates only the branch it takes: no id is taken otherwise.
        let (xmin, last, xid): (i64, Option<i64>, Option<i64>) = sqlx::query_as(
            "SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint, \
             pg_sequence_last_value(pg_get_serial_sequence($1, 'seq')::regclass), \
             CASE WHEN $2 THEN pg_current_xact_id()::text::bigint END",
        )
        .bind(self.outbox.table)
        .bind(new_mark)
        .fetch_one(conn)
        .await?;
        self.ready = self.mark.filter(|&(_, id)| xmin > id).map(|(seq, _)| seq);
        if let (Some(seq), Some(id)) = (self.last_read, xid) {
            // The value read in the previous round, with an id taken after it.
            self.mark = Some((seq, id));
        }
        self.last_read = last;
        Ok(())
    }

    /// After a round's select, which took `seqs` (in order) and was `cut` short or not:
    /// when its select could see every row up to the mark, the floor rises to the mark,
    /// or only past the last row taken when the select was cut short.
    fn advance(&mut self, seqs: &[i64], cut: bool) {
        self.busy = !seqs.is_empty();
        let Some(mark) = self.ready.take() else {
            return;
        };
        let covered = match seqs.last() {
            Some(&last) if cut => last.min(mark),
            _ => mark,
        };
        self.at = self.at.max(covered.saturating_add(1));
        floors().insert(self.outbox.table, self.at);
        if covered == mark {
            self.mark = None;
        }
    }
}

/// The sequences published and not deleted yet.
type InFlight = Mutex<HashSet<i64>>;

fn lock(set: &InFlight) -> std::sync::MutexGuard<'_, HashSet<i64>> {
    set.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Awaits each published batch's acks in order and deletes its rows; the first failed
/// ack ends it (the pump then stops, and the next leader publishes the rows again:
/// JetStream's duplicate window drops what was stored).
async fn confirm(
    outbox: Outbox,
    pool: PgPool,
    mut batches: mpsc::Receiver<Sent>,
    in_flight: Arc<InFlight>,
) -> Result<(), PlatformError> {
    while let Some(batch) = batches.recv().await {
        try_join_all(batch.acks.into_iter().map(IntoFuture::into_future))
            .await
            .map_err(PlatformError::nats)?;
        let mut conn = pool.acquire().await?;
        delete(&mut conn, outbox, &batch.seqs).await?;
        let mut set = lock(&in_flight);
        for seq in &batch.seqs {
            set.remove(seq);
        }
    }
    Ok(())
}

/// Deletes published rows.
async fn delete(conn: &mut PgConnection, outbox: Outbox, seqs: &[i64]) -> Result<(), sqlx::Error> {
    sqlx::query(AssertSqlSafe(format!(
        "DELETE FROM {} WHERE seq = ANY($1)",
        outbox.table
    )))
    .bind(seqs)
    .execute(conn)
    .await?;
    Ok(())
}

/// The events among `msgs` of one of `kinds` that `processed` (a service's
/// `(id UUID PRIMARY KEY, at TIMESTAMPTZ DEFAULT now())` table) has not seen, marked
/// seen in the caller's transaction, in stream order. Messages that are not events of
/// this contract, or of other kinds, are skipped without a write.
pub async fn fresh_events<'m>(
    conn: &mut PgConnection,
    processed: &'static str,
    msgs: &'m [jetstream::Message],
    kinds: &[EventType],
) -> Result<Vec<Envelope<&'m serde_json::value::RawValue>>, sqlx::Error> {
    let events: Vec<Envelope<&serde_json::value::RawValue>> = msgs
        .iter()
        .filter_map(|m| serde_json::from_slice(&m.payload).ok())
        .filter(|e: &Envelope<&serde_json::value::RawValue>| kinds.contains(&e.event_type))
        .collect();
    if events.is_empty() {
        return Ok(events);
    }
    let ids: Vec<Uuid> = events.iter().map(|e| e.id).collect();
    let fresh: std::collections::HashSet<Uuid> = sqlx::query_scalar(AssertSqlSafe(format!(
        "INSERT INTO {processed} (id) SELECT UNNEST($1::uuid[]) ON CONFLICT DO NOTHING RETURNING id"
    )))
    .bind(&ids)
    .fetch_all(conn)
    .await?
    .into_iter()
    .collect();
    Ok(events
        .into_iter()
        .filter(|e| fresh.contains(&e.id))
        .collect())
}
