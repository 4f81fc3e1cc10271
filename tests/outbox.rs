//! The outbox relay on its own, over a real nats-server child and Postgres: two replicas
//! relay one table; the leader is killed mid-stream; a row whose transaction commits
//! after later rows is still published; an enqueue too large for one row is packed into
//! several. Every message reaches the stream exactly once, in order, and the table
//! empties.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::disallowed_methods
)]

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use regua_contract::{EventType, subjects};
use regua_platform::clock::{SharedClock, SystemClock};
use regua_platform::nats;
use regua_platform::outbox::{self, Outbox, OutboxMessage, PACK, Relay};
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

fn clock() -> SharedClock {
    Arc::new(SystemClock)
}

/// One relay over the table, running until the token is cancelled.
fn relay(
    pool: &PgPool,
    js: &jetstream::Context,
) -> (CancellationToken, tokio::task::JoinHandle<()>) {
    let relay = Relay::new(
        OUTBOX,
        pool.clone(),
        js.clone(),
        Arc::new(Notify::new()),
        clock(),
    );
    let stop = CancellationToken::new();
    let running = tokio::spawn(relay.run(stop.clone()));
    (stop, running)
}

async fn left(pool: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM relaytest.outbox")
        .fetch_one(pool)
        .await
        .unwrap()
}

/// Waits until the table is empty and the stream holds `total` messages.
async fn relayed(what: &str, pool: &PgPool, js: &jetstream::Context, total: usize) {
    eventually(what, Duration::from_secs(30), || async {
        let mut stream = js.get_stream("RELAYTEST").await.unwrap();
        let stored = stream.info().await.unwrap().state.messages;
        (left(pool).await == 0 && stored == total as u64).then_some(())
    })
    .await;
}

/// The `n` of every message in the stream, in stream order.
async fn stored(js: &jetstream::Context) -> Vec<u64> {
    read_stream(js, "RELAYTEST", "relaytest.>")
        .await
        .into_iter()
        .map(|(_, _, body)| body["n"].as_u64().unwrap())
        .collect()
}

/// The relay's table (the shape every service's outbox has) and a nats-server with a
/// stream over its subjects.
async fn setup(pool: &PgPool) -> (NatsServer, jetstream::Context) {
    outbox::migrate(pool, OUTBOX).await.unwrap();
    let server = NatsServer::start().await;
    let js = nats::jetstream(nats::connect(&server.url(), "relaytest").await.unwrap());
    // The platform's streams too: a parked message is reported as an event.
    nats::ensure_streams(&js, nats::Streams::Provision { replicas: 1 })
        .await
        .unwrap();
    js.create_stream(jetstream::stream::Config {
        name: "RELAYTEST".into(),
        subjects: vec!["relaytest.>".into()],
        ..Default::default()
    })
    .await
    .unwrap();
    (server, js)
}

#[sqlx::test(migrations = false)]
async fn every_row_leaves_once_in_order_across_a_killed_leader_and_a_late_commit(pool: PgPool) {
    let (server, js) = setup(&pool).await;

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
            Relay::new(OUTBOX, pool, js, wake, clock())
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
    relayed("every committed row relayed", &pool, &js, N).await;
    late.commit().await.unwrap();
    wake.notify_waiters();
    relayed("the late row relayed", &pool, &js, N + 1).await;

    let order = stored(&js).await;
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
    relayed("the rows after the late one relayed", &pool, &js, N + 4).await;
    late.commit().await.unwrap();
    wake.notify_waiters();
    relayed("the second late row relayed", &pool, &js, N + 5).await;
    let tail: Vec<u64> = stored(&js).await.split_off(N + 1);
    let n = N as u64;
    assert_eq!(tail, vec![n + 2, n + 3, n + 4, n + 1], "in commit order");
    second_stop.cancel();
    second.await.unwrap();
}

/// One enqueue larger than a row holds, and than a relay round takes: it is packed into
/// rows of at most [`PACK`] messages, and every message leaves once, in order, under
/// its own id.
#[sqlx::test(migrations = false)]
async fn a_large_enqueue_is_packed_and_leaves_in_order_under_its_ids(pool: PgPool) {
    let (_server, js) = setup(&pool).await;
    const N: usize = 2 * PACK + 276;
    let msgs: Vec<OutboxMessage> = (0..N).map(message).collect();
    let mut tx = pool.begin().await.unwrap();
    OUTBOX.enqueue(&mut tx, &msgs).await.unwrap();
    let packs: Vec<i32> = sqlx::query_scalar("SELECT n FROM relaytest.outbox ORDER BY seq")
        .fetch_all(&mut *tx)
        .await
        .unwrap();
    assert_eq!(
        packs,
        vec![PACK as i32, PACK as i32, 276],
        "rows of at most PACK"
    );
    tx.commit().await.unwrap();

    let (stop, running) = relay(&pool, &js);
    relayed("the packed rows relayed", &pool, &js, N).await;
    stop.cancel();
    running.await.unwrap();

    let stored = read_stream(&js, "RELAYTEST", "relaytest.>").await;
    let order: Vec<u64> = stored
        .iter()
        .map(|(_, _, b)| b["n"].as_u64().unwrap())
        .collect();
    assert_eq!(
        order,
        (0..N as u64).collect::<Vec<_>>(),
        "once each, in order"
    );
    let ids: Vec<String> = stored.into_iter().map(|(_, id, _)| id.unwrap()).collect();
    let expected: Vec<String> = msgs.iter().map(|m| m.id.to_string()).collect();
    assert_eq!(ids, expected, "each under its own Nats-Msg-Id");
}

/// A message larger than the server accepts can never be published: it is moved aside
/// (to `relaytest.outbox_parked`, reported by `outbox.message_parked`) and every message
/// after it, in its row and in later rows, is published in order. Before, the relay
/// retried that row forever and nothing after it ever left.
#[sqlx::test(migrations = false)]
async fn a_message_too_large_to_publish_is_parked_and_the_rest_flow(pool: PgPool) {
    let (_server, js) = setup(&pool).await;
    let max = js.client().server_info().max_payload;
    let big = OutboxMessage {
        id: uuid::Uuid::now_v7(),
        subject: "relaytest.big".to_owned(),
        payload: vec![b'x'; max + 1],
        traceparent: None,
    };
    let rows = [
        vec![message(1)],
        vec![message(2), big.clone(), message(3)],
        vec![message(4)],
    ];
    for row in &rows {
        let mut tx = pool.begin().await.unwrap();
        OUTBOX.enqueue(&mut tx, row).await.unwrap();
        tx.commit().await.unwrap();
    }
    let (stop, running) = relay(&pool, &js);
    relayed("the rest relayed", &pool, &js, 4).await;
    assert_eq!(stored(&js).await, vec![1, 2, 3, 4], "in order, none lost");
    let parked: Vec<(uuid::Uuid, String, i32)> =
        sqlx::query_as("SELECT id, subject, length(payload) FROM relaytest.outbox_parked")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(
        parked,
        vec![(big.id, big.subject.clone(), (max + 1) as i32)]
    );
    let reported = eventually("the parked event", Duration::from_secs(30), || async {
        let e = read_stream(
            &js,
            subjects::STREAM_EVENTS,
            &subjects::event_any_tenant(EventType::OutboxMessageParked),
        )
        .await;
        (!e.is_empty()).then_some(e)
    })
    .await;
    assert_eq!(reported.len(), 1);
    let data = &reported[0].2["data"];
    assert_eq!(data["message_id"], big.id.to_string());
    assert_eq!(data["subject"], "relaytest.big");
    assert_eq!(data["outbox"], "relaytest.outbox");
    assert_eq!(data["bytes"], max as u64 + 1);
    stop.cancel();
    running.await.unwrap();
}
