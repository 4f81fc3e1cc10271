//! The NATS identities in deploy/nats/accounts.conf, on a real nats-server that loads
//! that very file: `regua migrate`'s provisioning user creates the streams; then each
//! service runs in its own process under its own user (with REGUA_NATS_PROVISION=false)
//! and an integrator publishes a payment under the integrator user, and one invoice's
//! whole life goes through: intake, planning, the reminder on WhatsApp, the payment, the
//! stop and the thank-you. Then each user is shown refused outside its permissions:
//! managing streams, publishing where it does not produce, pulling another service's
//! consumer, reading another service's replies.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::disallowed_methods
)]

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream;
use regua::Services;
use regua_contract::inbound::Channel;
use regua_contract::{InboundKind, TenantId, subjects};
use regua_platform::{Config, Secret, nats};
use regua_testkit::fakes::FakeProviders;
use regua_testkit::{NatsServer, eventually, invoice, read_stream};
use serde_json::{Value, json};
use sqlx::PgPool;

use common::{ADMIN, Running};

const TENANT: &str = "perm";
const USERS: [&str; 7] = [
    "provisioner",
    "operator",
    "intake",
    "scheduler",
    "dispatch",
    "reconcile",
    "integrator",
];

fn password(user: &str) -> String {
    format!("{user}-secret-0123456789")
}

/// A nats-server that loads deploy/nats/accounts.conf as deployed.
async fn server() -> NatsServer {
    let accounts = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/nats/accounts.conf"
    ))
    .unwrap();
    let mut env: Vec<(String, String)> = USERS
        .iter()
        .map(|u| {
            (
                format!("REGUA_NATS_{}_PASSWORD", u.to_uppercase()),
                password(u),
            )
        })
        .collect();
    env.push(("NATS_SYS_PASSWORD".into(), password("sys")));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    NatsServer::with_config(
        "jetstream {}\ninclude ./accounts.conf\n",
        &[("accounts.conf", &accounts)],
        &env,
    )
    .await
}

fn as_user(config: &Config, user: &str) -> Config {
    Config {
        nats_user: Some(user.into()),
        nats_password: Some(Secret::new(password(user))),
        nats_provision: false,
        ..config.clone()
    }
}

/// A connection as `user` that records the server's error messages (permission
/// violations arrive that way, not as replies).
async fn connect(
    url: &str,
    user: &str,
    inbox: &str,
) -> (async_nats::Client, Arc<Mutex<Vec<String>>>) {
    let errors = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&errors);
    let client = async_nats::ConnectOptions::with_user_and_password(user.into(), password(user))
        .custom_inbox_prefix(inbox)
        .event_callback(move |event| {
            let seen = Arc::clone(&seen);
            async move {
                if let async_nats::Event::ServerError(e) = event {
                    seen.lock().unwrap().push(e.to_string());
                }
            }
        })
        .connect(url)
        .await
        .unwrap();
    (client, errors)
}

/// Waits until the server refused `user` something naming `subject`.
async fn refused(errors: &Arc<Mutex<Vec<String>>>, user: &str, subject: &str) {
    eventually(
        &format!("{user} refused on {subject}"),
        Duration::from_secs(10),
        || async {
            errors
                .lock()
                .unwrap()
                .iter()
                .any(|e| e.to_lowercase().contains("permissions violation") && e.contains(subject))
                .then_some(())
        },
    )
    .await;
}

#[sqlx::test(migrations = false)]
async fn each_service_does_its_job_under_its_own_user_and_nothing_more(pool: PgPool) {
    let server = server().await;
    let fakes = FakeProviders::start().await.unwrap();
    let mut base = common::config(&server.url(), &pool);
    fakes.configure(&mut base);

    // Without credentials nothing connects to this server.
    let anonymous = async_nats::ConnectOptions::new()
        .connection_timeout(Duration::from_secs(2))
        .connect(server.url())
        .await;
    assert!(anonymous.is_err(), "an anonymous client was let in");

    // `regua migrate`: the provisioner creates the streams.
    let provisioner = Config {
        nats_provision: true,
        ..as_user(&base, "provisioner")
    };
    let js = nats::jetstream(nats::connect_as(&provisioner, "migrate").await.unwrap());
    nats::ensure_streams(&js, nats::Streams::of(&provisioner))
        .await
        .unwrap();

    // Each service alone, under its own user, on its own port.
    let mut running = Vec::new();
    let mut addr = std::collections::HashMap::new();
    let services = [
        ("intake", Services::INTAKE),
        ("scheduler", Services::SCHEDULER),
        ("reconcile", Services::RECONCILE),
        ("dispatch", Services::dispatch(Channel::Whatsapp)),
    ];
    for (user, services) in services {
        let mut config = as_user(&base, user);
        let port = regua_testkit::free_port();
        config.http_addr = format!("127.0.0.1:{port}").parse().unwrap();
        config.public_url = format!("http://127.0.0.1:{port}");
        if user == "dispatch" {
            fakes.webhooks_to(&config.public_url);
        }
        addr.insert(user, config.public_url.clone());
        running.push(Running::start(&config, services).await);
    }
    let http = reqwest::Client::new();
    let tenant = regua_testkit::test_clock_tenant(TENANT, "2026-12-01T03:00:00Z");
    let key = regua_testkit::create_tenant(&http, &addr["intake"], ADMIN, &tenant).await;
    let call = |service: &str, method: reqwest::Method, path: &str, body: Option<Value>| {
        let mut req = http
            .request(
                method,
                format!("{}/v1/tenants/{TENANT}/{path}", addr[service]),
            )
            .bearer_auth(&key);
        if let Some(b) = body {
            req = req.json(&b);
        }
        async move {
            let r = req.send().await.unwrap();
            (
                r.status().as_u16(),
                r.json::<Value>().await.unwrap_or(Value::Null),
            )
        }
    };

    // Intake: over HTTP (published into regua.v1.in, the outcome on intake's inbox).
    let (status, out) = call(
        "intake",
        reqwest::Method::POST,
        "invoices",
        Some(invoice("NF-P", 1)),
    )
    .await;
    assert_eq!(status, 202, "{out}");
    assert_eq!(out["outcome"], "accepted", "{out}");
    // The scheduler plans it, reconciliation knows it.
    eventually("the plan", Duration::from_secs(30), || async {
        let (s, _) = call(
            "scheduler",
            reqwest::Method::GET,
            "invoices/NF-P/plan",
            None,
        )
        .await;
        (s == 200).then_some(())
    })
    .await;
    eventually(
        "reconciliation to know it",
        Duration::from_secs(30),
        || async {
            let (s, _) = call("reconcile", reqwest::Method::GET, "invoices/NF-P", None).await;
            (s == 200).then_some(())
        },
    )
    .await;
    let scheduler_url = addr["scheduler"].clone();
    let advance =
        |to: &'static str| regua_testkit::advance_clock(&http, &scheduler_url, TENANT, &key, to);
    // The step fires; the dispatcher sends the reminder.
    advance("2026-12-07T14:00:00Z").await;
    eventually("the reminder", Duration::from_secs(30), || async {
        (fakes.meta.sent().len() == 1).then_some(())
    })
    .await;

    // An integrator pays over NATS under its own user.
    let (integrator, integrator_errors) = connect(&server.url(), "integrator", "_INBOX").await;
    let ijs = nats::jetstream(integrator.clone());
    let payment = json!({
        "payment_id": "PAY-P",
        "invoice_id": "NF-P",
        "amount_cents": 15_990,
        "currency": "BRL",
        "paid_at": "2026-12-07T15:00:00-03:00",
        "method": "pix",
    });
    ijs.publish(
        subjects::inbound(
            &TenantId::parse(TENANT).unwrap(),
            InboundKind::PaymentReceived,
        ),
        payment.to_string().into(),
    )
    .await
    .unwrap()
    .await
    .unwrap();
    eventually("the invoice settled", Duration::from_secs(30), || async {
        let (_, inv) = call("reconcile", reqwest::Method::GET, "invoices/NF-P", None).await;
        (inv["status"] == "paid").then_some(())
    })
    .await;
    advance("2027-01-10T14:00:00Z").await;
    eventually("the thank-you", Duration::from_secs(30), || async {
        (fakes.meta.sent().len() == 2).then_some(())
    })
    .await;
    let templates: Vec<String> = fakes
        .meta
        .sent()
        .iter()
        .map(|m| m.template_name())
        .collect();
    assert!(templates[0].contains("lembrete"), "{templates:?}");
    assert!(templates[1].contains("agradecimento"), "{templates:?}");
    // Every service's events reached the stream.
    let events: Vec<String> = read_stream(&js, subjects::STREAM_EVENTS, &subjects::events_all())
        .await
        .into_iter()
        .map(|(_, _, e)| e["type"].as_str().unwrap_or("").to_owned())
        .collect();
    for kind in [
        "invoice.opened",
        "payment.matched",
        "invoice.paid",
        "message.sent",
    ] {
        assert!(events.iter().any(|t| t == kind), "no {kind} in {events:?}");
    }

    // ---- Refused outside its permissions ----
    // No service user may manage streams, not even to create one of its own.
    let (scheduler, scheduler_errors) =
        connect(&server.url(), "scheduler", "_INBOX_scheduler").await;
    let sjs = jetstream::ContextBuilder::new()
        .timeout(Duration::from_secs(2))
        .build(scheduler.clone());
    let created = sjs
        .create_stream(jetstream::stream::Config {
            name: "ROGUE".into(),
            subjects: vec!["rogue.>".into()],
            ..Default::default()
        })
        .await;
    assert!(created.is_err(), "the scheduler created a stream");
    refused(
        &scheduler_errors,
        "scheduler",
        "$JS.API.STREAM.CREATE.ROGUE",
    )
    .await;
    let deleted = sjs.delete_stream(subjects::STREAM_EVENTS).await;
    assert!(deleted.is_err(), "the scheduler deleted a stream");
    refused(
        &scheduler_errors,
        "scheduler",
        "$JS.API.STREAM.DELETE.REGUA_EVT",
    )
    .await;

    // Intake may not issue dispatch commands.
    let (intake, intake_errors) = connect(&server.url(), "intake", "_INBOX_intake").await;
    let cmd = subjects::dispatch(TENANT, Channel::Sms);
    intake.publish(cmd.clone(), "{}".into()).await.unwrap();
    intake.flush().await.unwrap();
    refused(&intake_errors, "intake", &cmd).await;
    // Nor read the dispatchers' replies.
    let _ = intake.subscribe("_INBOX_dispatch.>").await;
    refused(&intake_errors, "intake", "_INBOX_dispatch.>").await;

    // A dispatcher may not pull intake's consumer.
    let (dispatch, dispatch_errors) = connect(&server.url(), "dispatch", "_INBOX_dispatch").await;
    let next = "$JS.API.CONSUMER.MSG.NEXT.REGUA_IN.intake";
    dispatch
        .publish_with_reply(next, "_INBOX_dispatch.x", "{\"batch\":1}".into())
        .await
        .unwrap();
    dispatch.flush().await.unwrap();
    refused(&dispatch_errors, "dispatch", next).await;

    // Reconciliation may not publish commands; an integrator may not forge events.
    let (reconcile, reconcile_errors) =
        connect(&server.url(), "reconcile", "_INBOX_reconcile").await;
    reconcile.publish(cmd.clone(), "{}".into()).await.unwrap();
    reconcile.flush().await.unwrap();
    refused(&reconcile_errors, "reconcile", &cmd).await;
    let forged = format!("regua.v1.evt.{TENANT}.invoice.paid");
    integrator
        .publish(forged.clone(), "{}".into())
        .await
        .unwrap();
    integrator.flush().await.unwrap();
    refused(&integrator_errors, "integrator", &forged).await;

    // An operator lists and replays dead letters, and may do nothing else.
    let letter = subjects::dead_letter("intake", TENANT);
    let mut headers = async_nats::HeaderMap::new();
    let target = subjects::inbound(
        &TenantId::parse(TENANT).unwrap(),
        InboundKind::CustomerUpsert,
    );
    headers.insert(subjects::HEADER_DLQ_SUBJECT, target.as_str());
    headers.insert(subjects::HEADER_DLQ_REASON, "a test");
    headers.insert(subjects::HEADER_DLQ_MSG_ID, "dlq-perm-1");
    // (An empty object: intake rejects it when it comes back, and nothing else moves.)
    nats::jetstream(intake.clone())
        .publish_with_headers(letter, headers, "{}".into())
        .await
        .unwrap()
        .await
        .unwrap();
    let operator = as_user(&base, "operator");
    let ojs = nats::jetstream(nats::connect_as(&operator, "dlq").await.unwrap());
    let letters = regua_platform::dlq::list(&ojs, &Default::default(), 10)
        .await
        .unwrap();
    assert_eq!(letters.len(), 1, "{letters:?}");
    let replayed = regua_platform::dlq::replay(&ojs, letters[0].seq)
        .await
        .unwrap();
    assert_eq!(replayed.message_id.as_deref(), Some("dlq-perm-1"));
    let (op, op_errors) = connect(&server.url(), "operator", "_INBOX_operator").await;
    let create = "$JS.API.STREAM.CREATE.ROGUE";
    op.publish_with_reply(create, "_INBOX_operator.x", "{}".into())
        .await
        .unwrap();
    op.flush().await.unwrap();
    refused(&op_errors, "operator", create).await;

    // Nothing refused reached a stream: still one reminder and one thank-you.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(fakes.meta.sent().len(), 2);
    assert!(fakes.twilio.sent().is_empty());
    drop(running);
}
