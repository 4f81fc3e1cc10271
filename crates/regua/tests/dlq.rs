//! `regua dlq list|show|replay` on a real nats-server: a payment a consumer gave up on
//! (dead-lettered by the same code every consumer uses) is listed without its payload,
//! shown with it, and replayed on its original subject under its original message id,
//! once: a second replay of the same sequence is refused, and the stream holds one copy.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::disallowed_methods
)]

mod common;

use std::time::Duration;

use async_nats::jetstream::{self, consumer};
use futures::StreamExt;
use regua_contract::subjects;
use regua_platform::nats;
use regua_testkit::{NatsServer, read_stream};
use serde_json::{Value, json};

async fn regua(server: &NatsServer, args: &[&str]) -> std::process::Output {
    common::regua(args, &server.url(), "postgres://unused/unused")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .output()
        .await
        .unwrap()
}

#[tokio::test]
async fn dead_letters_are_listed_shown_and_replayed_once() {
    let server = NatsServer::start().await;
    let js = nats::jetstream(nats::connect(&server.url(), "test").await.unwrap());
    nats::ensure_streams(&js, nats::Streams::Provision { replicas: 1 })
        .await
        .unwrap();
    let loja = subjects::TenantId::parse("loja").unwrap();
    let subject = subjects::inbound(&loja, subjects::InboundKind::PaymentReceived);
    let payment = json!({"payment_id": "PAY-9", "invoice_id": "NF-9", "amount_cents": 15990});
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Nats-Msg-Id", "pay-9");
    js.publish_with_headers(subject.clone(), headers, payment.to_string().into())
        .await
        .unwrap()
        .await
        .unwrap();
    // A consumer takes it and gives up on it, as reconciliation would.
    let stream = js.get_stream(subjects::STREAM_INBOUND).await.unwrap();
    let c = stream
        .create_consumer(consumer::pull::Config {
            durable_name: Some("giving-up".into()),
            filter_subject: subject.clone(),
            ack_policy: consumer::AckPolicy::Explicit,
            ..Default::default()
        })
        .await
        .unwrap();
    let mut batch = c.fetch().max_messages(1).messages().await.unwrap();
    let msg: jetstream::Message = batch.next().await.unwrap().unwrap();
    nats::dead_letter(&js, &msg, "reconcile", "loja", "database said no")
        .await
        .unwrap();

    let list = regua(&server, &["dlq", "list", "--json"]).await;
    assert!(list.status.success(), "{list:?}");
    let stdout = String::from_utf8(list.stdout).unwrap();
    let letters: Vec<Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(letters.len(), 1, "{stdout}");
    let letter = &letters[0];
    assert_eq!(letter["consumer"], "reconcile");
    assert_eq!(letter["tenant"], "loja");
    assert_eq!(letter["subject"], subject);
    assert_eq!(letter["reason"], "database said no");
    assert_eq!(letter["message_id"], "pay-9");
    assert!(
        !stdout.contains("PAY-9"),
        "no payload in the list: {stdout}"
    );
    let seq = letter["seq"].as_u64().unwrap().to_string();
    let other = regua(&server, &["dlq", "list", "--json", "--consumer", "intake"]).await;
    assert!(String::from_utf8(other.stdout).unwrap().is_empty());

    let show = regua(&server, &["dlq", "show", &seq]).await;
    assert!(show.status.success(), "{show:?}");
    assert!(String::from_utf8(show.stdout).unwrap().contains("PAY-9"));

    let replay = regua(&server, &["dlq", "replay", &seq]).await;
    assert!(replay.status.success(), "{replay:?}");
    let again = regua(&server, &["dlq", "replay", &seq]).await;
    assert!(!again.status.success(), "the same dead letter twice");
    assert!(
        String::from_utf8(again.stderr)
            .unwrap()
            .contains(&format!("dead letter {seq}")),
        "says which"
    );
    let left = regua(&server, &["dlq", "list", "--json"]).await;
    assert!(String::from_utf8(left.stdout).unwrap().is_empty());

    // Back on its subject, under the id consumers know it by (the original and the
    // replay: one copy each).
    tokio::time::sleep(Duration::from_millis(200)).await;
    let inbound = read_stream(&js, subjects::STREAM_INBOUND, &subject).await;
    assert_eq!(inbound.len(), 2, "{inbound:?}");
    assert_eq!(inbound[1].2["payment_id"], "PAY-9");
    let replayed = stream.get_raw_message(2).await.unwrap();
    assert_eq!(
        replayed
            .headers
            .get(subjects::HEADER_MESSAGE_ID)
            .map(|v| v.as_str()),
        Some("pay-9")
    );
    assert!(
        replayed.headers.get(subjects::HEADER_DLQ_REASON).is_none(),
        "replayed clean"
    );
}
