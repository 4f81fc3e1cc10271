//! Faults mid-stream: intake killed without a graceful stop, and the broker killed and
//! restarted. Afterwards every invoice is stored exactly once and each accepted change
//! produced exactly one domain event.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::message::PublishMessage;
use common::Harness;
use regua_intake::Intake;
use regua_platform::{Shutdown, SystemClock, nats};
use regua_testkit::{eventually, invoice};
use sqlx::PgPool;

const SUBJ: &str = "regua.v1.in.acme.invoice.upsert";

async fn outcomes(h: &Harness) -> i64 {
    h.count("SELECT count(*) FROM intake.messages").await
}

/// Everything the run must end with, for `n` distinct invoices.
async fn assert_each_stored_once_with_one_event(h: &Harness, n: usize) {
    let n64 = i64::try_from(n).unwrap();
    eventually("every outcome", Duration::from_secs(120), || async {
        (outcomes(h).await == n64).then_some(())
    })
    .await;
    assert_eq!(h.count("SELECT count(*) FROM intake.invoices").await, n64);
    assert_eq!(
        h.count("SELECT count(*) FROM intake.messages WHERE outcome = 'accepted'")
            .await,
        n64
    );
    eventually("the outbox to drain", Duration::from_secs(60), || async {
        (h.count("SELECT count(*) FROM intake.outbox").await == 0).then_some(())
    })
    .await;
    let opened = h.events("regua.v1.evt.acme.invoice.opened", n).await;
    let ids: HashSet<&str> = opened
        .iter()
        .map(|(_, _, e)| e["data"]["invoice"]["invoice_id"].as_str().unwrap())
        .collect();
    assert_eq!(
        opened.len(),
        n,
        "one invoice.opened per invoice, no duplicates"
    );
    assert_eq!(ids.len(), n);
    let customers = h.events("regua.v1.evt.acme.customer.upserted", n).await;
    assert_eq!(customers.len(), n);
}

/// Publishes `n` invoices, retrying each (same Nats-Msg-Id) until JetStream acks it.
async fn publish_all(js: async_nats::jetstream::Context, n: usize) {
    for i in 0..n {
        let body = serde_json::to_vec(&invoice(&format!("NF-{i}"), i as u64)).unwrap();
        loop {
            let publish = PublishMessage::build()
                .message_id(format!("m-{i}"))
                .payload(body.clone().into());
            let acked = async {
                js.send_publish(SUBJ, publish).await?.await?;
                Ok::<(), async_nats::Error>(())
            };
            match tokio::time::timeout(Duration::from_secs(3), acked).await {
                Ok(Ok(())) => break,
                _ => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }
}

#[sqlx::test(migrations = false)]
async fn killing_intake_mid_stream_loses_and_repeats_nothing(pool: PgPool) {
    let mut h = Harness::start(pool).await;
    h.tenant("acme").await;
    h.stop_intake().await;
    let n = 3000;
    publish_all(h.js.clone(), n).await;

    // Intake in a runtime of its own, with its own connections, so that dropping the
    // runtime kills it mid-work: no drain, open transactions cut, acks never sent.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let pool_opts = (*h.pool.connect_options()).clone();
    let url = h.nats.url();
    rt.spawn(async move {
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(5)
            .connect_with(pool_opts)
            .await
            .unwrap();
        let client = nats::connect(&url, "doomed").await.unwrap();
        let config = regua_platform::Config {
            intake_batch_size: 50,
            ..common::config(5)
        };
        let intake = Intake::from_parts(config, pool, client, Arc::new(SystemClock));
        let shutdown = Shutdown::new();
        intake.start(&shutdown).await.unwrap();
        std::future::pending::<()>().await;
    });
    eventually(
        "intake to be mid-stream",
        Duration::from_secs(60),
        || async { (outcomes(&h).await >= 600).then_some(()) },
    )
    .await;
    rt.shutdown_background();
    let at_kill = outcomes(&h).await;
    assert!(
        at_kill < i64::try_from(n).unwrap(),
        "the kill must land mid-stream ({at_kill} of {n} done)"
    );

    h.start_intake(common::config(5)).await;
    assert_each_stored_once_with_one_event(&h, n).await;
}

#[sqlx::test(migrations = false)]
async fn restarting_the_broker_mid_stream_loses_and_repeats_nothing(pool: PgPool) {
    let mut h = Harness::start(pool).await;
    h.tenant("acme").await;
    let n = 3000;
    let publisher = tokio::spawn(publish_all(h.js.clone(), n));
    eventually(
        "intake to be mid-stream",
        Duration::from_secs(60),
        || async { (outcomes(&h).await >= 600).then_some(()) },
    )
    .await;
    h.nats.restart().await;
    let after_restart = outcomes(&h).await;
    publisher.await.unwrap();
    assert!(
        after_restart < i64::try_from(n).unwrap(),
        "the restart must land mid-stream"
    );
    assert_each_stored_once_with_one_event(&h, n).await;
}
