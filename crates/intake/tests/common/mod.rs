//! A running intake over a real nats-server child and a fresh database per test.
#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use regua_intake::Intake;
use regua_platform::{Config, Shutdown, SystemClock, nats};
use regua_testkit::NatsServer;
use serde_json::Value;
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;

pub const ADMIN: &str = "test-admin-token-0123456789";

pub fn config(max_deliver: i64) -> Config {
    let mut config = Config {
        admin_token: Some(regua_platform::Secret::new(ADMIN)),
        intake_max_deliver: max_deliver,
        intake_batch_size: 200,
        http_outcome_wait: Duration::from_secs(10),
        intake_ack_wait: Duration::from_secs(5),
        ..Config::default()
    };
    // Tests submit faster than an integrator should (tests/http.rs checks the limit).
    config.http.tenant_rate = 0;
    config
}

pub struct Harness {
    pub nats: NatsServer,
    pub pool: PgPool,
    pub client: async_nats::Client,
    pub js: jetstream::Context,
    pub intake: Option<Arc<Intake>>,
    pub shutdown: Shutdown,
    pub base: String,
    pub http: reqwest::Client,
}

impl Harness {
    pub async fn start(pool: PgPool) -> Harness {
        Harness::start_with(pool, config(5)).await
    }

    pub async fn start_with(pool: PgPool, config: Config) -> Harness {
        let nats = NatsServer::start().await;
        let client = nats::connect(&nats.url(), "test").await.unwrap();
        let js = nats::jetstream(client.clone());
        let mut h = Harness {
            nats,
            pool,
            client,
            js,
            intake: None,
            shutdown: Shutdown::new(),
            base: String::new(),
            http: reqwest::Client::new(),
        };
        h.start_intake(config).await;
        h
    }

    /// Starts intake and its HTTP server in this runtime.
    pub async fn start_intake(&mut self, config: Config) {
        self.shutdown = Shutdown::new();
        let limits = regua_platform::http::Limits::of(&config);
        let intake = Intake::from_parts(
            config,
            self.pool.clone(),
            self.client.clone(),
            Arc::new(SystemClock),
        );
        intake.start(&self.shutdown).await.unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        self.base = format!("http://{}", listener.local_addr().unwrap());
        let health = regua_platform::http::Health {
            pool: self.pool.clone(),
            client: self.client.clone(),
            js: self.js.clone(),
        };
        self.shutdown.spawn(regua_platform::http::serve_on(
            listener,
            intake.router(),
            health,
            limits,
            self.shutdown.token(),
        ));
        self.intake = Some(intake);
    }

    pub async fn stop_intake(&mut self) {
        assert!(
            self.shutdown.drain(Duration::from_secs(30)).await,
            "intake did not drain"
        );
        self.intake = None;
    }

    /// Creates a tenant over HTTP; returns its API key.
    pub async fn tenant(&self, id: &str) -> String {
        let r = self
            .http
            .post(format!("{}/v1/tenants", self.base))
            .bearer_auth(ADMIN)
            .json(&regua_testkit::tenant(id))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
        let body: Value = r.json().await.unwrap();
        body["api_key"].as_str().unwrap().to_owned()
    }

    /// Publishes with an optional Nats-Msg-Id; returns whether JetStream called it a duplicate.
    pub async fn publish(&self, subject: &str, msg_id: Option<&str>, body: &[u8]) -> bool {
        let mut p = jetstream::message::PublishMessage::build().payload(body.to_vec().into());
        if let Some(id) = msg_id {
            p = p.message_id(id);
        }
        self.js
            .send_publish(subject.to_owned(), p)
            .await
            .unwrap()
            .await
            .unwrap()
            .duplicate
    }

    pub async fn publish_json(&self, subject: &str, msg_id: &str, body: &Value) -> bool {
        self.publish(subject, Some(msg_id), &serde_json::to_vec(body).unwrap())
            .await
    }

    /// Waits for the recorded outcome of a message.
    pub async fn outcome(&self, tenant: &str, msg_id: &str) -> (String, Value) {
        let pool = self.pool.clone();
        regua_testkit::eventually(&format!("outcome of {msg_id}"), Duration::from_secs(20), || {
            let pool = pool.clone();
            async move {
                sqlx::query_as::<_, (String, Option<Value>)>(
                    "SELECT outcome, detail FROM intake.messages WHERE tenant = $1 AND message_id = $2",
                )
                .bind(tenant)
                .bind(msg_id)
                .fetch_optional(&pool)
                .await
                .unwrap()
                .map(|(o, d)| (o, d.unwrap_or(Value::Null)))
            }
        })
        .await
    }

    /// Every event on the events stream matching `filter`, waiting until there are at
    /// least `at_least` of them (and a moment more, so extra ones would be seen).
    pub async fn events(
        &self,
        filter: &str,
        at_least: usize,
    ) -> Vec<(String, Option<String>, Value)> {
        let js = self.js.clone();
        let filter = filter.to_owned();
        regua_testkit::eventually(
            &format!("{at_least} events on {filter}"),
            Duration::from_secs(30),
            || {
                let js = js.clone();
                let filter = filter.clone();
                async move {
                    let ev = regua_testkit::read_stream(
                        &js,
                        regua_contract::subjects::STREAM_EVENTS,
                        &filter,
                    )
                    .await;
                    (ev.len() >= at_least).then_some(ev)
                }
            },
        )
        .await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        regua_testkit::read_stream(&self.js, regua_contract::subjects::STREAM_EVENTS, &filter).await
    }

    pub async fn count(&self, sql: &'static str) -> i64 {
        sqlx::query_scalar(sql).fetch_one(&self.pool).await.unwrap()
    }

    /// `GET <base><path>` with tenant key `key`: the status and the JSON body.
    pub async fn get(&self, key: &str, path: &str) -> (reqwest::StatusCode, Value) {
        let r = self
            .http
            .get(format!("{}{path}", self.base))
            .bearer_auth(key)
            .send()
            .await
            .unwrap();
        (r.status(), r.json().await.unwrap())
    }
}

/// A fresh pool on the same test database, for a second runtime.
pub async fn pool_like(pool: &PgPool) -> PgPool {
    let opts = (*pool.connect_options()).clone();
    PgPoolOptions::new()
        .max_connections(5)
        .connect_with(opts)
        .await
        .unwrap()
}
