//! The in-order consumers' lease, on a real nats-server child and a real Postgres:
//! several replicas run one in-order durable; only the lease holder applies events, a
//! holder that drains hands over, a holder killed mid-batch is taken over after the ack
//! wait, and every event is applied once, in stream order, while events keep arriving
//! in partial batches.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::disallowed_methods
)]

use std::time::Duration;

use async_nats::jetstream;
use regua_contract::{EventType, subjects};
use regua_platform::nats;
use regua_testkit::{NatsServer, eventually};
use sqlx::{Connection, PgConnection, PgPool};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

const DURABLE: &str = "in-order-test";
const EVENTS: i64 = 600;
const BATCH: usize = 10;

/// One replica's consumer loop.
struct Replica {
    task: JoinHandle<()>,
    cancel: CancellationToken,
}

fn replica(
    js: &jetstream::Context,
    consumer: &jetstream::consumer::PullConsumer,
    pool: &PgPool,
    name: &'static str,
) -> Replica {
    let cancel = CancellationToken::new();
    let (js, consumer, pool, stop) = (js.clone(), consumer.clone(), pool.clone(), cancel.clone());
    let task = tokio::spawn(async move {
        let c = nats::BatchConsumer {
            js: &js,
            consumer: &consumer,
            name: DURABLE,
            pool: &pool,
            batch: BATCH,
            expires: Duration::from_millis(200),
            max_deliver: 5,
        };
        nats::consume_batches(
            c,
            &stop,
            |conn, msgs| Box::pin(async move { apply(conn, msgs, name).await }),
            |_: &sqlx::Error| false,
            || {},
        )
        .await;
    });
    Replica { task, cancel }
}

/// Records each event's number with the replica that applied it, once (a redelivered
/// event that committed before is skipped, as every consumer's processed table does).
/// A batch takes a while, so replicas overlap.
async fn apply(
    conn: &mut PgConnection,
    msgs: &[jetstream::Message],
    replica: &str,
) -> Result<(), sqlx::Error> {
    let mut tx = conn.begin().await?;
    for m in msgs {
        let n: i64 = std::str::from_utf8(&m.payload).unwrap().parse().unwrap();
        sqlx::query("INSERT INTO applied (n, replica) VALUES ($1, $2) ON CONFLICT (n) DO NOTHING")
            .bind(n)
            .bind(replica)
            .execute(&mut *tx)
            .await?;
    }
    tokio::time::sleep(Duration::from_millis(20)).await;
    tx.commit().await
}

/// Publishes events `ns` a few at a time, so most fetches bring partial batches: the
/// case where two replicas fetching at once would split the stream between them.
async fn publish(js: &jetstream::Context, ns: std::ops::Range<i64>) {
    let subject = subjects::event("lease", EventType::InvoiceOpened);
    for n in ns {
        js.publish(subject.clone(), n.to_string().into())
            .await
            .unwrap()
            .await
            .unwrap();
        if n % 7 == 6 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

async fn applied(pool: &PgPool) -> Vec<(i64, String)> {
    sqlx::query_as("SELECT n, replica FROM applied ORDER BY at")
        .fetch_all(pool)
        .await
        .unwrap()
}

async fn wait_for(pool: &PgPool, what: &str, n: usize) -> Vec<(i64, String)> {
    eventually(what, Duration::from_secs(90), || async {
        let rows = applied(pool).await;
        (rows.len() >= n).then_some(rows)
    })
    .await
}

#[sqlx::test(migrations = false)]
async fn one_replica_applies_in_stream_order_across_a_drain_and_a_kill(pool: PgPool) {
    sqlx::query("CREATE TABLE applied (n bigint PRIMARY KEY, replica text NOT NULL, at bigserial)")
        .execute(&pool)
        .await
        .unwrap();
    let server = NatsServer::start().await;
    let client = nats::connect(&server.url(), "test").await.unwrap();
    let js = nats::jetstream(client);
    nats::ensure_streams(&js, nats::Streams::Provision { replicas: 1 })
        .await
        .unwrap();
    let mut config = nats::in_order_events(DURABLE, "the lease test's consumer", BATCH, 5);
    config.ack_wait = Duration::from_secs(3);
    let consumer = nats::ensure_pull_consumer(&js, subjects::STREAM_EVENTS, config)
        .await
        .unwrap();

    let a = replica(&js, &consumer, &pool, "a");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let b = replica(&js, &consumer, &pool, "b");
    publish(&js, 0..200).await;
    let rows = wait_for(&pool, "the first events", 200).await;
    assert!(
        rows.iter().all(|(_, r)| r == "a"),
        "only the lease holder applies while it lives: {rows:?}"
    );

    // A drain: the holder finishes what it has in hand and gives the lease up; the
    // standby takes over with nothing left unacked.
    a.cancel.cancel();
    a.task.await.unwrap();
    publish(&js, 200..400).await;
    let rows = wait_for(&pool, "the standby to take over", 400).await;
    assert!(rows[200..].iter().all(|(_, r)| r == "b"), "{rows:?}");

    // A kill: the holder stops mid-stream, its session ends, and a new replica takes
    // over once the killed holder's unacked messages are due again.
    let c = replica(&js, &consumer, &pool, "c");
    let more = tokio::spawn({
        let js = js.clone();
        async move { publish(&js, 400..500).await }
    });
    wait_for(&pool, "the holder to be mid-stream", 420).await;
    b.task.abort();
    more.await.unwrap();
    publish(&js, 500..EVENTS).await;
    let rows = wait_for(&pool, "every event", usize::try_from(EVENTS).unwrap()).await;
    let order: Vec<i64> = rows.iter().map(|(n, _)| *n).collect();
    assert_eq!(
        order,
        (0..EVENTS).collect::<Vec<_>>(),
        "every event applied once, in stream order"
    );
    assert!(
        rows[500..].iter().all(|(_, r)| r == "c"),
        "events published after the kill are the new holder's: {rows:?}"
    );
    c.cancel.cancel();
    c.task.await.unwrap();
    drop(b.cancel);
}
