//! Test helpers (dev-only): a real `nats-server` child process per test that can be
//! killed and restarted, one service started alone ([`service`]), the provider fakes
//! ([`fakes`]), payload builders with valid Brazilian documents, and polling helpers.
//! Nothing here is a mock: tests talk to real NATS and Postgres.

pub mod fakes;
pub mod proxy;
pub mod service;
#[cfg(feature = "trace")]
pub mod trace;

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use async_nats::jetstream;
use futures::StreamExt;
use serde_json::{Value, json};
use tokio::process::{Child, Command};

/// A `nats-server -js` child on a free port with its own store directory.
pub struct NatsServer {
    child: Option<Child>,
    port: u16,
    store: tempfile::TempDir,
    /// A configuration file (`-c`), the environment it reads, and the directory that
    /// holds it, when one was given.
    config: Option<ServerConfig>,
}

struct ServerConfig {
    path: PathBuf,
    env: Vec<(String, String)>,
    _dir: tempfile::TempDir,
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(0)
}

impl NatsServer {
    /// Starts a server and waits until it accepts connections.
    pub async fn start() -> NatsServer {
        NatsServer::start_with(None).await
    }

    /// Starts a server with configuration `text` (written to a file in the store
    /// directory beside `files`, which it may `include`) and `env` for the variables it
    /// reads; the port, address and store directory stay the test's own.
    pub async fn with_config(
        text: &str,
        files: &[(&str, &str)],
        env: &[(&str, &str)],
    ) -> NatsServer {
        let dir = tempfile::tempdir().unwrap_or_else(|e| fail(&format!("tempdir: {e}")));
        for (name, content) in files {
            std::fs::write(dir.path().join(name), content)
                .unwrap_or_else(|e| fail(&format!("writing {name}: {e}")));
        }
        let path = dir.path().join("nats-server.conf");
        std::fs::write(&path, text).unwrap_or_else(|e| fail(&format!("writing config: {e}")));
        let env = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        NatsServer::start_with(Some(ServerConfig {
            path,
            env,
            _dir: dir,
        }))
        .await
    }

    async fn start_with(config: Option<ServerConfig>) -> NatsServer {
        // Tests build HTTPS-capable clients right after their broker.
        regua_platform::tls::init();
        let store = tempfile::tempdir().unwrap_or_else(|e| fail(&format!("tempdir: {e}")));
        let mut server = NatsServer {
            child: None,
            port: free_port(),
            store,
            config,
        };
        server.spawn().await;
        server
    }

    async fn spawn(&mut self) {
        let store: PathBuf = self.store.path().to_path_buf();
        let mut command = Command::new("nats-server");
        if let Some(c) = &self.config {
            command.arg("-c").arg(&c.path).envs(c.env.iter().cloned());
        }
        let child = command
            .args([
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-js",
                "-sd",
            ])
            .arg(&store)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| fail(&format!("spawning nats-server (is it on PATH?): {e}")));
        self.child = Some(child);
        for _ in 0..200 {
            if tokio::net::TcpStream::connect(("127.0.0.1", self.port))
                .await
                .is_ok()
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        fail("nats-server did not start listening within 5 s");
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Kills the server with SIGKILL (no graceful shutdown).
    pub async fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().await.ok();
            c.wait().await.ok();
        }
    }

    /// Kills the server and starts it again on the same port and store.
    pub async fn restart(&mut self) {
        self.kill().await;
        self.spawn().await;
    }
}

#[allow(clippy::panic)]
pub(crate) fn fail(msg: &str) -> ! {
    panic!("{msg}")
}

/// Polls `check` every 50 ms until it returns `Some`, or fails after `timeout`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if tokio::time::Instant::now() > deadline {
            fail(&format!("timed out after {timeout:?} waiting for {what}"));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Every message on `stream` whose subject matches `filter`, read with an ephemeral
/// ordered consumer, as (subject, Nats-Msg-Id, JSON body).
pub async fn read_stream(
    js: &jetstream::Context,
    stream: &str,
    filter: &str,
) -> Vec<(String, Option<String>, Value)> {
    let Ok(s) = js.get_stream(stream).await else {
        return Vec::new();
    };
    let Ok(consumer) = s
        .create_consumer(jetstream::consumer::pull::OrderedConfig {
            filter_subject: filter.to_owned(),
            ..Default::default()
        })
        .await
    else {
        return Vec::new();
    };
    let pending = consumer.cached_info().num_pending;
    let mut out = Vec::new();
    if pending == 0 {
        return out;
    }
    let Ok(mut msgs) = consumer.messages().await else {
        return out;
    };
    while let Ok(Some(Ok(m))) = tokio::time::timeout(Duration::from_secs(5), msgs.next()).await {
        let id = m
            .headers
            .as_ref()
            .and_then(|h| h.get("Nats-Msg-Id"))
            .map(|v| v.as_str().to_owned());
        let body = serde_json::from_slice(&m.payload).unwrap_or(Value::Null);
        out.push((m.subject.to_string(), id, body));
        if out.len() as u64 >= pending {
            break;
        }
    }
    out
}

/// Every message still in a work-queue stream (which refuses ordered consumers), read
/// by sequence without consuming it, as (subject, Nats-Msg-Id, JSON body).
pub async fn read_work_queue(
    js: &jetstream::Context,
    stream: &str,
) -> Vec<(String, Option<String>, Value)> {
    let Ok(mut s) = js.get_stream(stream).await else {
        return Vec::new();
    };
    let Ok(info) = s.info().await else {
        return Vec::new();
    };
    let (first, last) = (info.state.first_sequence, info.state.last_sequence);
    let mut out = Vec::new();
    if info.state.messages == 0 {
        return out;
    }
    for seq in first..=last {
        let Ok(m) = s.get_raw_message(seq).await else {
            continue;
        };
        let id = m.headers.get("Nats-Msg-Id").map(|v| v.as_str().to_owned());
        let body = serde_json::from_slice(&m.payload).unwrap_or(Value::Null);
        out.push((m.subject.to_string(), id, body));
    }
    out
}

/// A valid CPF built from a number, so tests can make many distinct debtors.
pub use regua_domain::document::example_cpf as cpf;

/// A valid `invoice.upsert` body with an embedded consumer (CPF) customer.
pub fn invoice(invoice_id: &str, customer_n: u64) -> Value {
    json!({
        "invoice_id": invoice_id,
        "customer": {
            "customer_id": format!("C-{customer_n}"),
            "name": format!("Cliente {customer_n}"),
            "document": cpf(customer_n),
            "email": format!("cliente{customer_n}@example.com"),
            "phone": "+5511987654321",
            "whatsapp_opt_in": true,
        },
        "amount_cents": 15990,
        "currency": "BRL",
        "issued_on": "2026-11-01",
        "due_date": "2026-12-10",
        "description": "Mensalidade",
        "late_fee": { "fine_bps": 200, "monthly_interest_bps": 100 },
    })
}

/// Advances test-clock tenant `tenant`'s clock to `to` (RFC 3339, UTC) through the
/// scheduler at `base` and waits until the clock is `ready` there: every step due by
/// then decided and its commands published. First it waits until the scheduler knows
/// the tenant: it learns of it from `tenant.created`, after intake has answered.
pub async fn advance_clock(http: &reqwest::Client, base: &str, tenant: &str, key: &str, to: &str) {
    let clock = format!("{base}/v1/tenants/{tenant}/clock");
    eventually(
        "the scheduler to know the tenant",
        Duration::from_secs(30),
        || async {
            let r = http.get(&clock).bearer_auth(key).send().await.ok()?;
            (r.status() == 200).then_some(())
        },
    )
    .await;
    let r = http
        .post(format!("{base}/v1/tenants/{tenant}/clock:advance"))
        .bearer_auth(key)
        .json(&json!({ "to": to }))
        .send()
        .await
        .unwrap_or_else(|e| fail(&format!("clock:advance: {e}")));
    if r.status() != 202 {
        fail(&format!("clock:advance answered {}", r.status()));
    }
    let prefix = to.get(..19).unwrap_or(to);
    eventually("the clock", Duration::from_secs(60), || async {
        let c: Value = http
            .get(&clock)
            .bearer_auth(key)
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        (c["status"] == "ready" && c["now"].as_str().is_some_and(|n| n.starts_with(prefix)))
            .then_some(())
    })
    .await;
}

/// A valid `POST /v1/tenants` body.
pub fn tenant(id: &str) -> Value {
    json!({
        "id": id,
        "legal_name": "ACME Telecom Ltda",
        "cnpj": "11.222.333/0001-81",
        "address": "Av. Paulista, 1000, Sao Paulo - SP",
        "contact": "cobranca@acme.example.com",
    })
}

/// [`tenant`] on a test clock that starts at `now` (RFC 3339).
pub fn test_clock_tenant(id: &str, now: &str) -> Value {
    let mut t = tenant(id);
    t["test_clock"] = json!(true);
    t["now"] = json!(now);
    t
}

/// Creates `body` with `POST {base}/v1/tenants` as the administrator and returns the
/// tenant's API key (shown once, with 201).
pub async fn create_tenant(
    http: &reqwest::Client,
    base: &str,
    admin: &str,
    body: &Value,
) -> String {
    let r = http
        .post(format!("{base}/v1/tenants"))
        .bearer_auth(admin)
        .json(body)
        .send()
        .await
        .unwrap_or_else(|e| fail(&format!("POST /v1/tenants: {e}")));
    if r.status() != 201 {
        fail(&format!("POST /v1/tenants answered {}", r.status()));
    }
    let created: Value = r
        .json()
        .await
        .unwrap_or_else(|e| fail(&format!("POST /v1/tenants body: {e}")));
    created["api_key"]
        .as_str()
        .unwrap_or_else(|| fail("POST /v1/tenants: no api_key"))
        .to_owned()
}

/// A dispatch command as the scheduler sends it: step `lembrete` of invoice `NF-<n>`
/// for customer `C-<n>` (e-mail `joao<n>@example.com`, phone `+55119<n:08>`, WhatsApp
/// opt-in), on `channel` with `fallback`, made `now` and sendable for two hours.
pub fn dispatch_command(
    tenant: &str,
    n: u32,
    channel: regua_contract::inbound::Channel,
    fallback: &[regua_contract::inbound::Channel],
    now: chrono::DateTime<chrono::Utc>,
) -> regua_contract::commands::DispatchCommand {
    use regua_contract::commands::{
        CommandInvoice, CommandKind, Creditor, DispatchCommand, Recipient, SmsOptions,
    };
    use regua_contract::inbound::PaymentData;
    let due = now.date_naive() + chrono::TimeDelta::days(3);
    DispatchCommand {
        command_id: DispatchCommand::id_for(tenant, &format!("NF-{n}"), "lembrete", 1, 0),
        kind: CommandKind::Step,
        tenant: tenant.into(),
        creditor: Creditor {
            legal_name: "Loja Exemplo Comércio Ltda".into(),
            cnpj: "11222333000181".into(),
            address: "Rua Augusta, 100, São Paulo - SP".into(),
            contact: "0800 123 4567".into(),
        },
        recipient: Recipient {
            customer_id: format!("C-{n}"),
            name: format!("João da Silva {n}"),
            email: Some(format!("joao{n}@example.com")),
            phone: Some(format!("+55119{n:08}")),
            whatsapp_opt_in: true,
            locale: "pt-BR".into(),
            timezone: "America/Sao_Paulo".into(),
        },
        channel,
        fallback: fallback.to_vec(),
        template: "lembrete_vencimento".into(),
        step: "lembrete".into(),
        policy: "padrao".into(),
        policy_version: 1,
        invoices: vec![CommandInvoice {
            invoice_id: format!("NF-{n}"),
            amount_cents: 15_990,
            currency: "BRL".into(),
            due_date: due,
            effective_due_date: due,
            description: Some("Plano fibra".into()),
            payment: Some(PaymentData {
                pix_copy_paste: Some("00020126580014br.gov.bcb.pix0136fake".into()),
                boleto_line: None,
                payment_url: Some(format!("https://pay.example.com/{n}")),
            }),
            late_fee: None,
            due: None,
        }],
        scheduled_for: now,
        not_after: now + chrono::TimeDelta::hours(2),
        test_clock: false,
        sms: SmsOptions::default(),
        templates: None,
    }
}
