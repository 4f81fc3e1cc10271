//! Two real `regua scheduler` processes contend for the in-order consumer's lease. The
//! holder is frozen (SIGSTOP): its Postgres session stays open, so only the lease's
//! session timeout can free it. The standby takes over within the stated time and
//! applies the events published meanwhile; the frozen holder, resumed, finds its lease
//! gone and stands by, and every event is applied once.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::disallowed_methods
)]

mod common;

use std::time::{Duration, Instant};

use chrono::Utc;
use regua_contract::DomainEvent;
use regua_contract::proto::Examples;
use regua_platform::{lease, nats};
use regua_testkit::service::publish_event;
use regua_testkit::{NatsServer, eventually, free_port};
use sqlx::PgPool;

struct Scheduler {
    child: tokio::process::Child,
    url: String,
}

fn spawn(nats: &str, db: &str) -> Scheduler {
    let port = free_port();
    let child = common::regua(&["scheduler"], nats, db)
        .env("REGUA_HTTP_ADDR", format!("127.0.0.1:{port}"))
        .spawn()
        .unwrap();
    Scheduler {
        child,
        url: format!("http://127.0.0.1:{port}"),
    }
}

/// Whether the process at `url` says it holds the scheduler's lease (`None`: no answer).
async fn holds(http: &reqwest::Client, url: &str) -> Option<bool> {
    let body = http
        .get(format!("{url}/metrics"))
        .timeout(Duration::from_secs(2))
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    Some(body.lines().any(|l| {
        l.starts_with("regua_lease_held{") && l.contains("in-order/scheduler") && l.ends_with(" 1")
    }))
}

async fn signal(child: &tokio::process::Child, sig: &str) {
    let pid = child.id().unwrap().to_string();
    let ok = tokio::process::Command::new("kill")
        .args([sig, &pid])
        .status()
        .await
        .unwrap();
    assert!(ok.success());
}

async fn tenants(pool: &PgPool) -> Vec<String> {
    sqlx::query_scalar("SELECT id FROM scheduler.tenants ORDER BY id")
        .fetch_all(pool)
        .await
        .unwrap_or_default()
}

async fn tenant_created(js: &async_nats::jetstream::Context, id: &str) {
    let mut t = Examples::new().tenant_created();
    t.id = id.to_owned();
    publish_event(js, id, DomainEvent::TenantCreated(t), Utc::now()).await;
}

#[sqlx::test(migrations = false)]
async fn a_frozen_lease_holder_is_replaced_and_stands_by_when_it_wakes(pool: PgPool) {
    let server = NatsServer::start().await;
    let base = std::env::var("DATABASE_URL").unwrap();
    let base = base.rsplit_once('/').unwrap().0;
    let db = format!("{base}/{}", pool.connect_options().get_database().unwrap());
    let js = nats::jetstream(nats::connect(&server.url(), "test").await.unwrap());
    let http = reqwest::Client::new();

    let mut first = spawn(&server.url(), &db);
    eventually(
        "the first holds the lease",
        Duration::from_secs(60),
        || async { (holds(&http, &first.url).await == Some(true)).then_some(()) },
    )
    .await;
    let mut second = spawn(&server.url(), &db);
    eventually("the second stands by", Duration::from_secs(60), || async {
        (holds(&http, &second.url).await == Some(false)).then_some(())
    })
    .await;
    tenant_created(&js, "antes").await;
    eventually("applied by the holder", Duration::from_secs(30), || async {
        (tenants(&pool).await == ["antes"]).then_some(())
    })
    .await;

    // Frozen: its process stops, its sessions stay open.
    signal(&first.child, "-STOP").await;
    let frozen = Instant::now();
    tenant_created(&js, "durante").await;
    eventually(
        "the standby takes over",
        Duration::from_secs(60),
        || async { (holds(&http, &second.url).await == Some(true)).then_some(()) },
    )
    .await;
    let took = frozen.elapsed();
    println!(
        "takeover after {took:?} (lease timeout {:?})",
        lease::TIMEOUT
    );
    assert!(
        took < lease::TIMEOUT + lease::RETRY + Duration::from_secs(10),
        "took {took:?}"
    );
    // The frozen holder may have had the event delivered (it stays unacked): the new
    // holder waits for the consumer's ack wait (60 s) to get it back, in order.
    eventually(
        "applied by the new holder",
        Duration::from_secs(120),
        || async { (tenants(&pool).await == ["antes", "durante"]).then_some(()) },
    )
    .await;

    // Woken: it finds its session ended and stands by.
    signal(&first.child, "-CONT").await;
    eventually(
        "the woken one stands by",
        Duration::from_secs(60),
        || async { (holds(&http, &first.url).await == Some(false)).then_some(()) },
    )
    .await;
    tenant_created(&js, "depois").await;
    eventually("applied once more", Duration::from_secs(60), || async {
        (tenants(&pool).await == ["antes", "depois", "durante"]).then_some(())
    })
    .await;
    assert_eq!(holds(&http, &second.url).await, Some(true));
    let processed: i64 = sqlx::query_scalar("SELECT count(*) FROM scheduler.processed")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(processed, 3, "each event applied once");
    first.child.kill().await.unwrap();
    second.child.kill().await.unwrap();
}
