//! One service started alone, in a runtime of its own as its own process would be,
//! over the test's broker and database, serving its routes (and health) on the
//! configured address: so a service crate's tests start that service and nothing
//! else, and can kill it outright or drain it as SIGTERM does.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use regua_contract::events::{
    CustomerState, CustomerUpserted, DocumentKind, InvoiceChanged, InvoiceState, TenantCreated,
};
use regua_contract::inbound::LateFee;
use regua_contract::{DomainEvent, Envelope, TenantId, subjects};
use regua_platform::{Config, SharedClock, Shutdown, SystemClock, db, http, nats, tenancy};
use sqlx::PgPool;

use crate::fail;

/// What a service is built from: the test's settings, connections and clock.
pub struct Parts {
    pub config: Config,
    pub pool: PgPool,
    pub client: async_nats::Client,
    pub clock: SharedClock,
}

/// A running service.
pub struct Running {
    rt: Option<tokio::runtime::Runtime>,
    addr: SocketAddr,
    drain: Option<tokio::sync::oneshot::Sender<()>>,
    done: Option<tokio::sync::oneshot::Receiver<bool>>,
}

impl Running {
    /// Connects as `config` says (on the system clock), hands the parts to `start`,
    /// which starts the service with the shutdown it is given and returns its routes,
    /// and serves them on `config.http_addr` (port 0: a free one, see [`Running::addr`]).
    pub async fn start<F, Fut, E>(config: &Config, start: F) -> Running
    where
        F: FnOnce(Parts, Shutdown) -> Fut + Send + 'static,
        Fut: Future<Output = Result<axum::Router, E>> + Send,
        E: std::fmt::Display,
    {
        Running::start_with_clock(config, Arc::new(SystemClock), start).await
    }

    /// [`Running::start`] on `clock`.
    pub async fn start_with_clock<F, Fut, E>(
        config: &Config,
        clock: SharedClock,
        start: F,
    ) -> Running
    where
        F: FnOnce(Parts, Shutdown) -> Fut + Send + 'static,
        Fut: Future<Output = Result<axum::Router, E>> + Send,
        E: std::fmt::Display,
    {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap_or_else(|e| fail(&format!("runtime: {e}")));
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let (drain_tx, drain_rx) = tokio::sync::oneshot::channel::<()>();
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        let config = config.clone();
        rt.spawn(async move {
            let url = config.database_url.expose();
            let pool = db::connect(url, config.db_max_connections)
                .await
                .unwrap_or_else(|e| fail(&format!("postgres: {e}")));
            let client = nats::connect_as(&config, "test-service")
                .await
                .unwrap_or_else(|e| fail(&format!("nats: {e}")));
            let shutdown = Shutdown::new();
            let parts = Parts {
                config: config.clone(),
                pool: pool.clone(),
                client: client.clone(),
                clock,
            };
            let router = start(parts, shutdown.clone())
                .await
                .unwrap_or_else(|e| fail(&format!("starting the service: {e}")));
            let listener = tokio::net::TcpListener::bind(config.http_addr)
                .await
                .unwrap_or_else(|e| fail(&format!("binding {}: {e}", config.http_addr)));
            let addr = listener
                .local_addr()
                .unwrap_or_else(|e| fail(&format!("local address: {e}")));
            let js = nats::jetstream(client.clone());
            let health = http::Health { pool, client, js };
            let limits = http::Limits::of(&config);
            shutdown.spawn(http::serve_on(
                listener,
                router,
                health,
                limits,
                shutdown.token(),
            ));
            ready_tx.send(addr).ok();
            drain_rx.await.ok();
            // What a service process does on SIGTERM.
            done_tx
                .send(shutdown.drain(config.drain_timeout).await)
                .ok();
        });
        let addr = match tokio::time::timeout(Duration::from_secs(60), ready_rx).await {
            Ok(Ok(addr)) => addr,
            _ => fail("the service did not start within 60 s"),
        };
        Running {
            rt: Some(rt),
            addr,
            drain: Some(drain_tx),
            done: Some(done_rx),
        }
    }

    /// Where its routes are served.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://<addr>`.
    pub fn base(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// No drain: tasks stop mid-work, transactions are cut, acks never sent.
    pub fn kill(mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }

    /// Stops fetching, finishes in-flight work, flushes; true when it finished in time.
    pub async fn terminate(mut self) -> bool {
        if let Some(drain) = self.drain.take() {
            drain.send(()).ok();
        }
        let clean = match self.done.take() {
            Some(done) => done.await.unwrap_or(false),
            None => false,
        };
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
        clean
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

/// The platform's settings on `nats_url` and the database `#[sqlx::test]` made for
/// `pool` (on the server `DATABASE_URL` names), serving on a free port, with short
/// waits so tests run quickly. Test-clock tenants' messages may be sent: the tests'
/// providers are the fakes.
pub fn config(nats_url: &str, pool: &PgPool) -> Config {
    // Tests read the database server from the environment, as sqlx::test does.
    #[allow(clippy::disallowed_methods)]
    let base = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| fail("DATABASE_URL is not set (see .cargo/config.toml)"));
    let base = base.rsplit_once('/').map_or(base.as_str(), |(b, _)| b);
    let db = pool
        .connect_options()
        .get_database()
        .unwrap_or("postgres")
        .to_owned();
    let mut config = Config {
        nats_url: nats_url.to_owned(),
        database_url: regua_platform::Secret::new(format!("{base}/{db}")),
        http_addr: ([127, 0, 0, 1], 0).into(),
        intake_batch_size: 100,
        intake_ack_wait: Duration::from_secs(5),
        reconcile_ack_wait: Duration::from_secs(5),
        scheduler_poll: Duration::from_millis(50),
        db_max_connections: 8,
        ..Config::default()
    };
    config.dispatch.test_clock_sends = true;
    // Tests poll tenant routes faster than an integrator should; tests/http.rs checks
    // the limit itself.
    config.http.tenant_rate = 0;
    config
}

/// Registers tenant `id` with the platform, as intake does when it creates one: on a
/// test clock that starts at `start`, its routes opened by `key`. Returns what
/// `tenant.created` would say of it, for the test to publish.
pub async fn register_tenant(
    pool: &PgPool,
    id: &str,
    key: &str,
    start: DateTime<Utc>,
) -> TenantCreated {
    let tenant = tenancy::Tenant {
        id: TenantId::parse(id).unwrap_or_else(|e| fail(&format!("tenant id {id}: {e}"))),
        legal_name: "ACME Telecom Ltda".into(),
        cnpj: "11222333000181".into(),
        address: "Av. Paulista, 1000, São Paulo - SP".into(),
        contact: "0800 123 4567".into(),
        timezone: "America/Sao_Paulo".into(),
        test_clock: true,
        clock_start: Some(start),
    };
    let mut conn = pool
        .acquire()
        .await
        .unwrap_or_else(|e| fail(&format!("postgres: {e}")));
    if !tenancy::register(&mut conn, &tenant, key, start)
        .await
        .unwrap_or_else(|e| fail(&format!("registering {id}: {e}")))
    {
        fail(&format!("tenant {id} exists already"));
    }
    tenant.created()
}

/// Publishes `event` of `tenant`, stamped `occurred_at`, on the events stream, as its
/// service's outbox relay would (its envelope id as `Nats-Msg-Id`).
pub async fn publish_event(
    js: &async_nats::jetstream::Context,
    tenant: &str,
    event: DomainEvent,
    occurred_at: DateTime<Utc>,
) {
    let kind = event.event_type();
    let envelope = Envelope {
        id: uuid::Uuid::now_v7(),
        event_type: kind,
        version: kind.version(),
        occurred_at,
        tenant: tenant.to_owned(),
        correlation_id: "test".into(),
        causation_id: "test".into(),
        data: event,
    };
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Nats-Msg-Id", envelope.id.to_string().as_str());
    let body = serde_json::to_vec(&envelope).unwrap_or_else(|e| fail(&format!("{e}")));
    let subject = subjects::event(tenant, kind);
    match js.publish_with_headers(subject, headers, body.into()).await {
        Ok(ack) => {
            ack.await
                .unwrap_or_else(|e| fail(&format!("publishing {}: {e}", kind.as_str())));
        }
        Err(e) => fail(&format!("publishing {}: {e}", kind.as_str())),
    }
}

/// `GET {base}/v1/tenants/{tenant}/{path}` with `key`: the status and the JSON body
/// (`null` when there is none).
pub async fn get_tenant(
    http: &reqwest::Client,
    base: &str,
    tenant: &str,
    key: &str,
    path: &str,
) -> (u16, serde_json::Value) {
    let r = http
        .get(format!("{base}/v1/tenants/{tenant}/{path}"))
        .bearer_auth(key)
        .send()
        .await
        .unwrap_or_else(|e| fail(&format!("GET {path}: {e}")));
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(serde_json::Value::Null))
}

/// `config`'s database reached through `addr` (a [`crate::proxy::TcpProxy`]) instead of
/// its own host and port.
pub fn database_through(config: &mut Config, addr: std::net::SocketAddr) {
    let url = config.database_url.expose();
    let (scheme_auth, rest) = url.split_once('@').unwrap_or(("postgres://", url));
    let db = rest.split_once('/').map_or("", |(_, db)| db);
    config.database_url = regua_platform::Secret::new(format!("{scheme_auth}@{addr}/{db}"));
}

/// The address of the Postgres server `pool` is on.
pub fn database_addr(pool: &PgPool) -> std::net::SocketAddr {
    let options = pool.connect_options();
    let host = match options.get_host() {
        "localhost" => "127.0.0.1",
        h => h,
    };
    format!("{host}:{}", options.get_port())
        .parse()
        .unwrap_or_else(|e| fail(&format!("database address {host}: {e}")))
}

/// Customer `C-1`, as `customer.upserted` carries it: a consumer (CPF) reachable on
/// every channel, with no preferred one.
pub fn customer_state() -> CustomerState {
    CustomerState {
        customer_id: "C-1".into(),
        name: "Maria da Silva".into(),
        document: Some("52998224725".into()),
        document_kind: Some(DocumentKind::Cpf),
        email: Some("maria@example.com".into()),
        phone: Some("+5511987654321".into()),
        whatsapp_opt_in: true,
        preferred_channel: None,
        timezone: "America/Sao_Paulo".into(),
        locale: "pt-BR".into(),
        segment: None,
    }
}

/// Invoice `NF-1` of [`customer_state`], as `invoice.opened` carries it: R$ 159,90 due
/// Thursday 2026-12-10 (D-3 is Monday the 7th), reference `NN-0001`, 2% fine and 1% a
/// month of interest.
pub fn invoice_state() -> InvoiceState {
    let date = |s: &str| {
        s.parse()
            .unwrap_or_else(|e| fail(&format!("date {s}: {e}")))
    };
    InvoiceState {
        invoice_id: "NF-1".into(),
        revision: None,
        customer_id: "C-1".into(),
        debtor_kind: Some(DocumentKind::Cpf),
        amount_cents: 15_990,
        currency: "BRL".into(),
        issued_on: date("2026-11-01"),
        due_date: date("2026-12-10"),
        description: Some("Plano fibra".into()),
        reference: Some("NN-0001".into()),
        payment: None,
        late_fee: Some(LateFee {
            fine_bps: 200,
            monthly_interest_bps: 100,
        }),
        tags: Vec::new(),
        metadata: Default::default(),
    }
}

/// Publishes `customer` and then [`invoice_state`] as intake's relay would, stamped
/// `occurred_at`: what a service alone needs to know of an open invoice.
pub async fn open_invoice(
    js: &async_nats::jetstream::Context,
    tenant: &str,
    customer: CustomerState,
    occurred_at: DateTime<Utc>,
) {
    let upserted = DomainEvent::CustomerUpserted(CustomerUpserted { customer });
    publish_event(js, tenant, upserted, occurred_at).await;
    let opened = DomainEvent::InvoiceOpened(InvoiceChanged {
        invoice: invoice_state(),
    });
    publish_event(js, tenant, opened, occurred_at).await;
}
