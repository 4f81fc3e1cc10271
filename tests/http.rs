//! Every service's HTTP server, as the platform serves it, on a real socket: a body over
//! the limit, a request over its time, a replica over its concurrency, a client that
//! never finishes its headers, a tenant over its rate, and a stream of unknown keys that
//! must not reach Postgres each time.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::disallowed_methods
)]

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::routing::{get, post};
use chrono::Utc;
use regua_platform::http::{self, Health, Limits};
use regua_platform::{nats, tenancy};
use regua_testkit::NatsServer;
use regua_testkit::service::register_tenant;
use sqlx::PgPool;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

const ALFA: &str = "rk_alfa_test-key-0123456789";
const BETA: &str = "rk_beta_test-key-0123456789";

fn routes() -> Router {
    Router::new()
        .route(
            "/v1/tenants/{tenant}/echo",
            post(|body: Bytes| async move { body.len().to_string() }),
        )
        .route(
            "/v1/tenants/{tenant}/wait/{ms}",
            get(
                |axum::extract::Path((_, ms)): axum::extract::Path<(String, u64)>| async move {
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                    "done"
                },
            ),
        )
}

/// Serves [`routes`] behind a tenant gate of `rate`/s (burst 2) with `limits`.
async fn serve(
    pool: &PgPool,
    nats_url: &str,
    limits: Limits,
    rate: u32,
    cancel: &CancellationToken,
) -> String {
    let clock: regua_platform::SharedClock = Arc::new(regua_platform::SystemClock);
    let gate = Arc::new(tenancy::Gate::new(pool, clock, rate, 2));
    let router = tenancy::tenant_routes(routes(), gate);
    let client = nats::connect(nats_url, "http-test").await.unwrap();
    let health = Health {
        pool: pool.clone(),
        js: nats::jetstream(client.clone()),
        client,
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(http::serve_on(
        listener,
        router,
        health,
        limits,
        cancel.clone(),
    ));
    base
}

fn limits() -> Limits {
    Limits {
        max_body_bytes: 1024,
        header_timeout: Duration::from_millis(500),
        request_timeout: Duration::from_secs(1),
        max_concurrency: 2,
    }
}

async fn tenants(pool: &PgPool) {
    tenancy::migrate(pool).await.unwrap();
    register_tenant(pool, "alfa", ALFA, Utc::now()).await;
    register_tenant(pool, "beta", BETA, Utc::now()).await;
}

#[sqlx::test(migrations = false)]
async fn bodies_times_and_concurrency_are_bounded(pool: PgPool) {
    tenants(&pool).await;
    let server = NatsServer::start().await;
    let cancel = CancellationToken::new();
    let base = serve(&pool, &server.url(), limits(), 0, &cancel).await;
    let http = reqwest::Client::new();
    let echo = format!("{base}/v1/tenants/alfa/echo");

    let ok = http
        .post(&echo)
        .bearer_auth(ALFA)
        .body(vec![b'x'; 1000])
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    let big = http
        .post(&echo)
        .bearer_auth(ALFA)
        .body(vec![b'x'; 2000])
        .send()
        .await
        .unwrap();
    assert_eq!(big.status(), 413, "over the body limit");

    let slow = http
        .get(format!("{base}/v1/tenants/alfa/wait/3000"))
        .bearer_auth(ALFA)
        .send()
        .await
        .unwrap();
    assert_eq!(slow.status(), 408, "over the request time");

    // Two requests hold both slots; the third is shed at once, the health probe is not.
    let wait = |t: &'static str, key: &'static str| {
        let (http, base) = (http.clone(), base.clone());
        tokio::spawn(async move {
            http.get(format!("{base}/v1/tenants/{t}/wait/700"))
                .bearer_auth(key)
                .send()
                .await
                .unwrap()
                .status()
        })
    };
    let first = wait("alfa", ALFA);
    let second = wait("beta", BETA);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let third = http
        .get(format!("{base}/v1/tenants/alfa/wait/10"))
        .bearer_auth(ALFA)
        .send()
        .await
        .unwrap();
    assert_eq!(third.status(), 503, "over the concurrency");
    assert_eq!(third.headers()["retry-after"], "1");
    let health = http.get(format!("{base}/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200, "probes are not shed");
    assert_eq!(first.await.unwrap(), 200);
    assert_eq!(second.await.unwrap(), 200);

    // A client that never finishes its headers is cut off.
    let addr = base.trim_start_matches("http://");
    let mut sock = tokio::net::TcpStream::connect(addr).await.unwrap();
    sock.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 256];
    let read = tokio::time::timeout(Duration::from_secs(5), sock.read(&mut buf))
        .await
        .expect("the server closes the connection");
    let n = read.unwrap_or(0);
    let answer = String::from_utf8_lossy(&buf[..n]);
    assert!(
        n == 0 || answer.starts_with("HTTP/1.1 408"),
        "closed, or told it timed out: {answer}"
    );
    cancel.cancel();
}

#[sqlx::test(migrations = false)]
async fn each_tenant_has_its_rate_and_unknown_keys_stay_out_of_postgres(pool: PgPool) {
    tenants(&pool).await;
    let server = NatsServer::start().await;
    let cancel = CancellationToken::new();
    let base = serve(&pool, &server.url(), limits(), 1, &cancel).await;
    let http = reqwest::Client::new();
    let get = |tenant: &str, key: &str| {
        http.get(format!("{base}/v1/tenants/{tenant}/wait/0"))
            .bearer_auth(key.to_owned())
            .timeout(Duration::from_secs(3))
            .send()
    };
    // A burst of 2 at 1 request per second: the third is refused, with when to retry.
    assert_eq!(get("alfa", ALFA).await.unwrap().status(), 200);
    assert_eq!(get("alfa", ALFA).await.unwrap().status(), 200);
    let limited = get("alfa", ALFA).await.unwrap();
    assert_eq!(limited.status(), 429);
    assert_eq!(limited.headers()["retry-after"], "1");
    assert_eq!(
        get("beta", BETA).await.unwrap().status(),
        200,
        "another tenant is not slowed"
    );
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(
        get("alfa", ALFA).await.unwrap().status(),
        200,
        "and it refills"
    );

    // An unknown key is looked up once; while the keys table is locked, asking again
    // with it is still answered at once, and only a new unknown key waits for Postgres.
    assert_eq!(get("alfa", "rk_nobody_1").await.unwrap().status(), 401);
    let mut lock = pool.begin().await.unwrap();
    sqlx::query("LOCK TABLE tenancy.api_keys IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *lock)
        .await
        .unwrap();
    assert_eq!(get("alfa", "rk_nobody_1").await.unwrap().status(), 401);
    // (It waits on the lock until the request's time runs out.)
    let new_key = get("alfa", "rk_nobody_2").await.unwrap();
    assert_eq!(new_key.status(), 408, "a new key reaches Postgres");
    lock.rollback().await.unwrap();
    cancel.cancel();
}
