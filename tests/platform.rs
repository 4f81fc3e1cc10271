//! The whole platform, started the way `regua all` starts it, seen from outside: an
//! admin creates a tenant over HTTP, an integrator publishes on the public subjects,
//! and a downstream service reads domain events from its own durable consumer. The
//! platform is drained mid-stream and restarted; nothing is lost or repeated.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::disallowed_methods
)]

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer::pull;
use async_nats::jetstream::message::PublishMessage;
use futures::StreamExt;
use regua::Platform;
use regua_contract::subjects;
use regua_platform::{Config, SystemClock, nats};
use regua_testkit::{NatsServer, eventually, invoice};
use serde_json::Value;
use sqlx::PgPool;

mod common;

use common::ADMIN;

/// This scenario's configuration: the shared one on five connections.
fn config(nats_url: &str, pool: &PgPool) -> Config {
    Config {
        db_max_connections: 5,
        scheduler_poll: Config::default().scheduler_poll,
        ..common::config(nats_url, pool)
    }
}

async fn count(pool: &PgPool, sql: &'static str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(pool).await.unwrap()
}

#[sqlx::test(migrations = false)]
async fn invoices_flow_through_a_drain_and_restart_exactly_once(pool: PgPool) {
    let server = NatsServer::start().await;
    let config = config(&server.url(), &pool);
    let platform = Platform::start(&config, Arc::new(SystemClock), regua::Services::CORE)
        .await
        .unwrap();
    let base = format!("http://{}", platform.addr);
    let http = reqwest::Client::new();
    assert_eq!(
        http.get(format!("{base}/readyz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let r = http
        .post(format!("{base}/v1/tenants"))
        .bearer_auth(ADMIN)
        .json(&regua_testkit::tenant("e2e"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);

    // A downstream service's durable consumer on the events it cares about.
    let client = nats::connect(&server.url(), "downstream").await.unwrap();
    let js = nats::jetstream(client);
    let downstream = js
        .get_stream(subjects::STREAM_EVENTS)
        .await
        .unwrap()
        .create_consumer(pull::Config {
            durable_name: Some("downstream".into()),
            filter_subject: "regua.v1.evt.e2e.invoice.opened".into(),
            ..Default::default()
        })
        .await
        .unwrap();

    let n = 2000;
    let messages = (0..n).map(|i| {
        let body = serde_json::to_vec(&invoice(&format!("E2E-{i}"), i as u64)).unwrap();
        (
            "regua.v1.in.e2e.invoice.upsert".to_owned(),
            PublishMessage::build()
                .message_id(format!("e2e-{i}"))
                .payload(body.into()),
        )
    });
    nats::publish_windowed(&js, messages).await.unwrap();

    // Drain mid-stream: batches in hand finish and are acked, the outbox is flushed.
    eventually(
        "intake to be mid-stream",
        Duration::from_secs(60),
        || async {
            (count(&pool, "SELECT count(*) FROM intake.messages").await >= 200).then_some(())
        },
    )
    .await;
    assert!(platform.drain(&config).await, "drain within the timeout");
    let at_drain = count(&pool, "SELECT count(*) FROM intake.messages").await;
    assert!(
        at_drain < n as i64,
        "the drain must land mid-stream ({at_drain})"
    );
    assert_eq!(
        count(&pool, "SELECT count(*) FROM intake.outbox").await,
        0,
        "outbox flushed on drain"
    );
    let mut intake = js
        .get_stream(subjects::STREAM_INBOUND)
        .await
        .unwrap()
        .get_consumer::<pull::Config>(subjects::CONSUMER_INTAKE)
        .await
        .unwrap();
    assert_eq!(
        intake.info().await.unwrap().num_ack_pending,
        0,
        "nothing left half-done"
    );

    let platform = Platform::start(&config, Arc::new(SystemClock), regua::Services::CORE)
        .await
        .unwrap();
    eventually("every outcome", Duration::from_secs(120), || async {
        (count(&pool, "SELECT count(*) FROM intake.messages").await == n as i64).then_some(())
    })
    .await;
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM intake.messages WHERE outcome = 'accepted'"
        )
        .await,
        n as i64
    );

    let mut seen = HashSet::new();
    let mut total = 0;
    while seen.len() < n {
        let mut batch = downstream
            .fetch()
            .max_messages(500)
            .expires(Duration::from_secs(2))
            .messages()
            .await
            .unwrap();
        let mut got = 0;
        while let Some(Ok(m)) = batch.next().await {
            let env: Value = serde_json::from_slice(&m.payload).unwrap();
            seen.insert(
                env["data"]["invoice"]["invoice_id"]
                    .as_str()
                    .unwrap()
                    .to_owned(),
            );
            total += 1;
            got += 1;
            m.ack().await.unwrap();
        }
        assert!(
            got > 0 || seen.len() == n,
            "events stopped at {} of {n}",
            seen.len()
        );
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let extra = downstream.clone().info().await.unwrap().num_pending;
    assert_eq!(
        (seen.len(), total, extra),
        (n, n, 0),
        "one invoice.opened per invoice"
    );
    assert!(platform.drain(&config).await);
}
