//! The outbox relay on its own, over a real nats-server child and Postgres: two replicas
//! relay one table; the leader is killed mid-stream; a row whose transaction commits
//! after later rows is still published. Every row reaches the stream exactly once, in
//! order, and the table empties.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::disallowed_methods
)]

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use regua_platform::nats;
use regua_platform::outbox::{Outbox, OutboxMessage, Relay};
use regua_testkit::{NatsServer, eventually, read_stream};
use serde_json::json;
use sqlx::PgPool;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

const OUTBOX: Outbox = Outbox::new("relaytest.outbox");

fn message(n: usize) -> OutboxMessage {
    OutboxMessage {
        id: uuid::Uuid::now_v7(),
        subject: "relaytest.m".to_owned(),
        payload: serde_json::to_vec(&json!({ "n": n })).unwrap(),
        traceparent: None,
    }
}

async fn left(pool: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM relaytest.outbox")
        .fetch_one(pool)
        .await
        .unwrap()
}

#[sqlx::test(migrations = false)]
async fn every_row_leaves_once_in_order_across_a_killed_leader_and_a_late_commit(pool: PgPool) {
    sqlx::raw_sql(
        "CREATE SCHEMA relaytest; CREATE TABLE relaytest.outbox (seq BIGSERIAL PRIMARY KEY, \
         id UUID NOT NULL, subject TEXT NOT NULL, payload BYTEA NOT NULL, traceparent TEXT, \
         created_at TIMESTAMPTZ NOT NULL DEFAULT now())",
    )
    .execute(&pool)
    .await
    .unwrap();
    let server = NatsServer::start().await;
    let js = nats::jetstream(nats::connect(&server.url(), "relaytest").await.unwrap());
    js.create_stream(jetstream::stream::Config {
        name: "RELAYTEST".into(),
        subjects: vec!["relaytest.>".into()],
        ..Default::default()
    })
    .await
    .unwrap();

    // Row 0 is written first but committed last.
    let mut late = pool.begin().await.unwrap();
    OUTBOX.enqueue(&mut late, &[message(0)]).await.unwrap();

    let wake = Arc::new(Notify::new());
    let replica = |name: &'static str| {
        let pool = pool.clone();
        let url = server.url();
        let wake = Arc::clone(&wake);
        async move {
            let js = nats::jetstream(nats::connect(&url, name).await.unwrap());
            Relay::new(OUTBOX, pool, js, wake)
        }
    };
    let first = tokio::spawn(replica("first").await.run(CancellationToken::new()));
    // The first replica leads (the second, started later, waits for its lock).
    tokio::time::sleep(Duration::from_millis(300)).await;
    let second_stop = CancellationToken::new();
    let second = tokio::spawn(replica("second").await.run(second_stop.clone()));

    const N: usize = 3000;
    for chunk in (1..=N).collect::<Vec<_>>().chunks(100) {
        let mut tx = pool.begin().await.unwrap();
        let msgs: Vec<OutboxMessage> = chunk.iter().map(|&n| message(n)).collect();
        OUTBOX.enqueue(&mut tx, &msgs).await.unwrap();
        tx.commit().await.unwrap();
        wake.notify_waiters();
        if chunk[0] == 1001 {
            // Killed mid-stream, as a crash would: no flush, its connection (and so
            // its lock) dropped. The second replica takes over.
            first.abort();
        }
    }
    let stored = || async {
        let mut stream = js.get_stream("RELAYTEST").await.unwrap();
        stream.info().await.unwrap().state.messages
    };
    eventually(
        "every committed row relayed",
        Duration::from_secs(30),
        || async { (left(&pool).await == 0 && stored().await == N as u64).then_some(()) },
    )
    .await;
    late.commit().await.unwrap();
    wake.notify_waiters();
    eventually("the late row relayed", Duration::from_secs(30), || async {
        (left(&pool).await == 0 && stored().await == N as u64 + 1).then_some(())
    })
    .await;

    let order: Vec<u64> = read_stream(&js, "RELAYTEST", "relaytest.>")
        .await
        .into_iter()
        .map(|(_, _, body)| body["n"].as_u64().unwrap())
        .collect();
    assert_eq!(order.len(), N + 1, "each row once: {} stored", order.len());
    let expected: Vec<u64> = (1..=N as u64).chain([0]).collect();
    assert_eq!(order, expected, "in commit order");

    // Again once the relay's select starts above the rows already relayed: a row
    // drawn before later rows that are relayed, and committed after them.
    let mut late = pool.begin().await.unwrap();
    OUTBOX.enqueue(&mut late, &[message(N + 1)]).await.unwrap();
    for n in N + 2..N + 5 {
        let mut tx = pool.begin().await.unwrap();
        OUTBOX.enqueue(&mut tx, &[message(n)]).await.unwrap();
        tx.commit().await.unwrap();
        wake.notify_waiters();
        // A few rounds of the relay each, so its floor has moments to move.
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    eventually(
        "the rows after the late one relayed",
        Duration::from_secs(30),
        || async { (left(&pool).await == 0 && stored().await == N as u64 + 4).then_some(()) },
    )
    .await;
    late.commit().await.unwrap();
    wake.notify_waiters();
    eventually(
        "the second late row relayed",
        Duration::from_secs(30),
        || async { (left(&pool).await == 0 && stored().await == N as u64 + 5).then_some(()) },
    )
    .await;
    let tail: Vec<u64> = read_stream(&js, "RELAYTEST", "relaytest.>")
        .await
        .into_iter()
        .skip(N + 1)
        .map(|(_, _, body)| body["n"].as_u64().unwrap())
        .collect();
    let n = N as u64;
    assert_eq!(tail, vec![n + 2, n + 3, n + 4, n + 1], "in commit order");
    second_stop.cancel();
    second.await.unwrap();
}
