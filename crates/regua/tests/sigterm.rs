//! A real `regua dispatch sms` process, stopped with a real SIGTERM mid-run: it stops
//! fetching, finishes the batch in hand and exits 0 within the drain timeout; nothing
//! is left `sending` (so nothing is reported unknown), and a second process sends the
//! rest, each message once.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::disallowed_methods
)]

mod common;

use std::collections::HashMap;
use std::time::Duration;

use chrono::Utc;
use regua_contract::inbound::Channel;
use regua_contract::subjects;
use regua_platform::nats;
use regua_testkit::fakes::{self, FakeProviders};
use regua_testkit::{NatsServer, eventually};
use sqlx::PgPool;

const N: u32 = 80;

fn spawn(nats_url: &str, db_url: &str, f: &FakeProviders) -> tokio::process::Child {
    common::regua(&["dispatch", "sms"], nats_url, db_url)
        .env("REGUA_HTTP_ADDR", "127.0.0.1:0")
        .env("REGUA_TWILIO_API_BASE", f.twilio.base())
        .env("REGUA_TWILIO_ACCOUNT_SID", fakes::TWILIO_SID)
        .env("REGUA_TWILIO_AUTH_TOKEN", fakes::TWILIO_TOKEN)
        .env("REGUA_TWILIO_FROM", fakes::TWILIO_FROM)
        .env("REGUA_SMS_RATE_PER_SEC", "20")
        .env("REGUA_DISPATCH_ACK_WAIT_SECS", "30")
        .env("REGUA_DRAIN_TIMEOUT_SECS", "10")
        .spawn()
        .unwrap()
}

async fn sigterm(child: &mut tokio::process::Child) -> std::process::ExitStatus {
    let pid = child.id().unwrap().to_string();
    let sent = tokio::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .await
        .unwrap();
    assert!(sent.success());
    tokio::time::timeout(Duration::from_secs(15), child.wait())
        .await
        .expect("exits within the drain timeout")
        .unwrap()
}

#[sqlx::test]
async fn sigterm_drains_a_dispatcher_without_loss_or_unknowns(pool: PgPool) {
    let server = NatsServer::start().await;
    let base = std::env::var("DATABASE_URL").unwrap();
    let base = base.rsplit_once('/').unwrap().0;
    let db = pool.connect_options().get_database().unwrap().to_owned();
    let db_url = format!("{base}/{db}");
    let f = FakeProviders::start().await.unwrap();
    f.twilio.callbacks(false);
    f.twilio.latency(Duration::from_millis(150));
    let js = nats::jetstream(nats::connect(&server.url(), "test").await.unwrap());
    nats::ensure_streams(&js, nats::Streams::Provision { replicas: 1 })
        .await
        .unwrap();
    let now = Utc::now();
    for n in 0..N {
        let cmd = regua_testkit::dispatch_command("sig", n, Channel::Sms, &[], now);
        js.publish(
            subjects::dispatch("sig", Channel::Sms),
            serde_json::to_vec(&cmd).unwrap().into(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    }

    let mut first = spawn(&server.url(), &db_url, &f);
    eventually("a few sent", Duration::from_secs(30), || async {
        (f.twilio.count() >= 15).then_some(())
    })
    .await;
    let status = sigterm(&mut first).await;
    assert!(status.success(), "a drained worker exits 0: {status:?}");
    let after_first = f.twilio.count();
    assert!(
        after_first < N as usize,
        "stopped mid-run ({after_first} of {N})"
    );
    let states: Vec<(String, i64)> =
        sqlx::query_as("SELECT state, count(*) FROM dispatch.attempts GROUP BY 1")
            .fetch_all(&pool)
            .await
            .unwrap();
    let states: HashMap<String, i64> = states.into_iter().collect();
    assert_eq!(
        states.get("sending"),
        None,
        "nothing left mid-send: {states:?}"
    );
    assert_eq!(states.get("unknown"), None, "{states:?}");
    assert_eq!(states.get("sent").copied().unwrap_or(0), after_first as i64);

    let mut second = spawn(&server.url(), &db_url, &f);
    eventually("all sent", Duration::from_secs(60), || async {
        (f.twilio.count() >= N as usize).then_some(())
    })
    .await;
    assert!(sigterm(&mut second).await.success());
    let received = f.twilio.received();
    let mut calls: HashMap<&str, usize> = HashMap::new();
    for to in &received {
        *calls.entry(to.as_str()).or_default() += 1;
    }
    assert_eq!(calls.len(), N as usize);
    assert!(calls.values().all(|c| *c == 1), "one provider call each");
    let unknown: i64 =
        sqlx::query_scalar("SELECT count(*) FROM dispatch.attempts WHERE state <> 'sent'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(unknown, 0);
}
