//! The dispatchers, started alone, on real NATS and Postgres, against provider fakes
//! that speak the real wire formats (an SMTP server, a Twilio-shaped and a Meta-shaped
//! HTTP server). Commands are published on the contract subject
//! `regua.v1.cmd.<tenant>.dispatch.<channel>`, as the scheduler publishes them; the
//! domain events the guard reads are published as their services would.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::disallowed_methods
)]

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use async_nats::jetstream;
use chrono::{TimeDelta, Utc};
use regua_contract::commands::DispatchCommand;
use regua_contract::inbound::Channel;
use regua_contract::{EventType, subjects};
use regua_dispatch::{DispatchError, Dispatcher};
use regua_platform::{Config, nats};
use regua_testkit::fakes::{self, FakeProviders};
use regua_testkit::service::Running;
use regua_testkit::{NatsServer, eventually, read_stream};
use serde_json::{Value, json};
use sqlx::PgPool;

const TENANT: &str = "loja";

/// The dispatchers of `channels`, alone, as `regua dispatch <channel>` runs them.
async fn dispatchers(config: &Config, channels: &'static [Channel]) -> Running {
    Running::start(config, move |p, shutdown| async move {
        let d = Dispatcher::from_parts(p.config, p.pool, p.client, p.clock);
        d.start(channels, &shutdown).await?;
        Ok::<_, DispatchError>(d.router())
    })
    .await
}

struct World {
    _server: NatsServer,
    config: Config,
    js: jetstream::Context,
    fakes: FakeProviders,
    public: String,
    http: reqwest::Client,
    pool: PgPool,
}

impl World {
    async fn new(pool: &PgPool, tweak: impl FnOnce(&mut Config)) -> World {
        let server = NatsServer::start().await;
        let fakes = FakeProviders::start().await.unwrap();
        let mut config = regua_testkit::service::config(&server.url(), pool);
        let port = regua_testkit::free_port();
        config.http_addr = format!("127.0.0.1:{port}").parse().unwrap();
        config.public_url = format!("http://127.0.0.1:{port}");
        fakes.configure(&mut config);
        fakes.webhooks_to(&config.public_url);
        config.dispatch.email_rate = 0;
        config.dispatch.sms_rate = 0;
        config.dispatch.whatsapp_rate = 0;
        config.dispatch.batch_size = 16;
        config.dispatch.max_attempts = 3;
        config.dispatch.retry_base = Duration::from_millis(100);
        config.dispatch.ack_wait = Duration::from_secs(3);
        tweak(&mut config);
        let client = nats::connect(&server.url(), "test").await.unwrap();
        let js = nats::jetstream(client);
        nats::ensure_streams(&js, nats::Streams::Provision { replicas: 1 })
            .await
            .unwrap();
        World {
            public: config.public_url.clone(),
            _server: server,
            config,
            js,
            fakes,
            http: reqwest::Client::new(),
            pool: pool.clone(),
        }
    }

    async fn start(&self) -> Running {
        dispatchers(&self.config, &Channel::ALL).await
    }

    async fn publish(&self, cmd: &DispatchCommand) {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(
            "Nats-Msg-Id",
            format!("{}:{}", cmd.command_id, cmd.channel.as_str()).as_str(),
        );
        self.js
            .publish_with_headers(
                subjects::dispatch(&cmd.tenant, cmd.channel),
                headers,
                serde_json::to_vec(cmd).unwrap().into(),
            )
            .await
            .unwrap()
            .await
            .unwrap();
    }

    async fn publish_event(&self, kind: EventType, data: Value) {
        let envelope = json!({
            "id": uuid::Uuid::now_v7(),
            "type": kind.as_str(),
            "version": 1,
            "occurred_at": Utc::now(),
            "tenant": TENANT,
            "correlation_id": "test",
            "causation_id": "test",
            "data": data,
        });
        self.js
            .publish(subjects::event(TENANT, kind), envelope.to_string().into())
            .await
            .unwrap()
            .await
            .unwrap();
    }

    /// Every event of `kind` so far, as `data`.
    async fn events(&self, kind: EventType) -> Vec<Value> {
        read_stream(
            &self.js,
            subjects::STREAM_EVENTS,
            &subjects::event(TENANT, kind),
        )
        .await
        .into_iter()
        .map(|(_, _, v)| v["data"].clone())
        .collect()
    }

    async fn wait_events(&self, kind: EventType, n: usize) -> Vec<Value> {
        eventually(
            &format!("{n} {}", kind.as_str()),
            Duration::from_secs(30),
            || async {
                let e = self.events(kind).await;
                (e.len() >= n).then_some(e)
            },
        )
        .await
    }

    async fn attempt_states(&self) -> BTreeMap<(String, String), String> {
        sqlx::query_as::<_, (String, String, String)>(
            "SELECT command_id, channel, state FROM dispatch.attempts",
        )
        .fetch_all(&self.pool)
        .await
        .unwrap()
        .into_iter()
        .map(|(c, ch, s)| ((c, ch), s))
        .collect()
    }
}

fn command(n: u32, channel: Channel, fallback: &[Channel]) -> DispatchCommand {
    regua_testkit::dispatch_command(TENANT, n, channel, fallback, Utc::now())
}

#[sqlx::test(migrations = false)]
async fn one_message_per_channel_with_content_headers_segments_and_status_events(pool: PgPool) {
    let w = World::new(&pool, |_| {}).await;
    let _running = w.start().await;
    let email = command(1, Channel::Email, &[]);
    let sms = command(2, Channel::Sms, &[]);
    let wa = command(3, Channel::Whatsapp, &[]);
    let mut cheap = command(4, Channel::Sms, &[]);
    cheap.sms.transliterate = true;
    for c in [&email, &sms, &wa, &cheap] {
        w.publish(c).await;
    }
    let sent = w.wait_events(EventType::MessageSent, 4).await;
    let by_channel: HashMap<String, &Value> = sent
        .iter()
        .map(|e| (e["customer_id"].as_str().unwrap().to_owned(), e))
        .collect();

    // E-mail: multipart text + HTML, creditor identity, Message-ID, RFC 8058 headers.
    let mails = w.fakes.smtp.mails();
    assert_eq!(mails.len(), 1);
    let mail = &mails[0];
    assert_eq!(mail.to, vec!["joao1@example.com"]);
    assert_eq!(mail.from, "cobranca@regua.local");
    assert_eq!(mail.from_name(), "Loja Exemplo Comércio Ltda");
    assert!(
        mail.header("Content-Type")
            .unwrap()
            .contains("multipart/alternative")
    );
    assert!(mail.subject().contains("R$ 159,90"), "{}", mail.subject());
    let text = mail.text();
    for needle in [
        "João",
        "R$ 159,90",
        "CNPJ 11.222.333/0001-81",
        "Loja Exemplo Comércio Ltda",
        "https://pay.example.com/1",
        "Pix copia e cola",
    ] {
        assert!(text.contains(needle), "{needle} not in {text}");
    }
    assert!(mail.html().contains("<table"), "{}", mail.html());
    let message_id = mail.header("Message-ID").unwrap();
    assert!(
        message_id.starts_with('<') && message_id.ends_with("@regua.local>"),
        "{message_id}"
    );
    assert_eq!(by_channel["C-1"]["provider_message_id"], json!(message_id));
    let unsubscribe = mail.header("List-Unsubscribe").unwrap();
    assert!(
        unsubscribe.starts_with(&format!("<{}/unsubscribe/", w.public)),
        "{unsubscribe}"
    );
    assert_eq!(
        mail.header("List-Unsubscribe-Post").unwrap(),
        "List-Unsubscribe=One-Click"
    );

    // SMS: the Twilio form, the status callback, the segment count.
    let sms_sent = w.fakes.twilio.sent();
    assert_eq!(sms_sent.len(), 2);
    let plain = sms_sent.iter().find(|s| s.to == "+5511900000002").unwrap();
    assert_eq!(plain.from, fakes::TWILIO_FROM);
    assert!(
        plain
            .body
            .starts_with("Loja Exemplo Comércio Ltda (CNPJ 11.222.333/0001-81): João, sua fatura de R$ 159,90 vence em"),
        "{}",
        plain.body
    );
    assert_eq!(
        plain.status_callback.as_deref(),
        Some(format!("{}/webhooks/twilio/status", w.public).as_str())
    );
    let seg = regua_domain::sms::segments(&plain.body);
    assert_eq!(seg.encoding, regua_domain::sms::Encoding::Ucs2);
    assert_eq!(by_channel["C-2"]["segments"], json!(seg.count));
    assert_eq!(by_channel["C-2"]["provider_message_id"], json!(plain.sid));
    let translit = sms_sent.iter().find(|s| s.to == "+5511900000004").unwrap();
    // ã goes, é stays: GSM-7 has it.
    assert!(
        translit.body.contains("Comércio") && translit.body.contains("Joao"),
        "{}",
        translit.body
    );
    let seg4 = regua_domain::sms::segments(&translit.body);
    assert_eq!(seg4.encoding, regua_domain::sms::Encoding::Gsm7);
    assert_eq!(by_channel["C-4"]["segments"], json!(seg4.count));
    assert!(seg4.count <= seg.count);

    // WhatsApp: an approved template with body parameters.
    let wa_sent = w.fakes.meta.sent();
    assert_eq!(wa_sent.len(), 1);
    assert_eq!(wa_sent[0].to, "5511900000003");
    assert_eq!(wa_sent[0].template_name(), "regua_lembrete_vencimento");
    assert_eq!(wa_sent[0].language(), "pt_BR");
    let params = wa_sent[0].params();
    assert_eq!(params[0], "João");
    assert_eq!(params[1], "R$ 159,90");
    assert_eq!(params[3], "Loja Exemplo Comércio Ltda");

    // Every event names the command, channel, customer, invoices and step.
    for e in &sent {
        assert_eq!(e["step"], "lembrete");
        assert_eq!(e["attempts"], 1);
        assert!(e["sent_at"].is_string());
        let n = e["customer_id"]
            .as_str()
            .unwrap()
            .trim_start_matches("C-")
            .to_owned();
        assert_eq!(e["invoice_ids"], json!([format!("NF-{n}")]));
    }
    assert_eq!(by_channel["C-3"]["channel"], "whatsapp");
    assert_eq!(by_channel["C-3"]["provider"], "whatsapp_cloud");

    // Signed status callbacks become events: Twilio's delivered, Meta's delivered and read.
    let delivered = w.wait_events(EventType::MessageDelivered, 3).await;
    let ids: Vec<&str> = delivered
        .iter()
        .map(|e| e["provider_message_id"].as_str().unwrap())
        .collect();
    assert!(
        ids.contains(&plain.sid.as_str()) && ids.contains(&wa_sent[0].id.as_str()),
        "{ids:?}"
    );
    let read = w.wait_events(EventType::MessageRead, 1).await;
    assert_eq!(read[0]["provider_message_id"], json!(wa_sent[0].id));
    // A provider retrying a callback produces no second event.
    assert_eq!(
        w.fakes
            .twilio
            .status(
                &format!("{}/webhooks/twilio/status", w.public),
                &plain.sid,
                "delivered",
                None
            )
            .await
            .unwrap(),
        204
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(w.events(EventType::MessageDelivered).await.len(), 3);
}

#[sqlx::test(migrations = false)]
async fn permanent_failures_fall_back_to_the_next_channel(pool: PgPool) {
    let w = World::new(&pool, |_| {}).await;
    let _running = w.start().await;
    // An invalid number (Twilio 21211) moves to e-mail.
    let sms = command(1, Channel::Sms, &[Channel::Email]);
    w.fakes.twilio.invalid_number("+5511900000001");
    // An undeliverable WhatsApp recipient (131026 at once) moves to SMS.
    let wa = command(2, Channel::Whatsapp, &[Channel::Sms]);
    w.fakes.meta.undeliverable("5511900000002");
    // A rejected e-mail address (550) moves to SMS.
    let mut email = command(3, Channel::Email, &[Channel::Sms]);
    email.recipient.email = Some("reject-me@example.com".into());
    w.fakes.smtp.reject("reject-me");
    // Accepted by WhatsApp, then reported failed by webhook: moves to e-mail.
    let late = command(4, Channel::Whatsapp, &[Channel::Email]);
    w.fakes.meta.fail_later("5511900000004");
    // Reported failed before the API call even returns: the status waits for the send
    // to be recorded, then moves the message to e-mail all the same.
    let early = command(5, Channel::Whatsapp, &[Channel::Email]);
    w.fakes.meta.fail_before_reply("5511900000005");
    for c in [&sms, &wa, &email, &late, &early] {
        w.publish(c).await;
    }
    let failed = w.wait_events(EventType::MessageFailed, 5).await;
    let by_customer: HashMap<&str, &Value> = failed
        .iter()
        .map(|e| (e["customer_id"].as_str().unwrap(), e))
        .collect();
    assert_eq!(by_customer["C-1"]["fallback_to"], "email");
    assert!(
        by_customer["C-1"]["reason"]
            .as_str()
            .unwrap()
            .contains("21211")
    );
    assert_eq!(by_customer["C-2"]["fallback_to"], "sms");
    assert!(
        by_customer["C-2"]["reason"]
            .as_str()
            .unwrap()
            .contains("131026")
    );
    assert_eq!(by_customer["C-3"]["fallback_to"], "sms");
    assert!(
        by_customer["C-3"]["reason"]
            .as_str()
            .unwrap()
            .contains("550")
    );
    assert_eq!(by_customer["C-4"]["fallback_to"], "email");
    assert!(by_customer["C-4"]["provider_message_id"].is_string());
    assert_eq!(by_customer["C-5"]["fallback_to"], "email");
    assert!(by_customer["C-5"]["provider_message_id"].is_string());

    // Each lands on its next channel, once.
    let sent = w.wait_events(EventType::MessageSent, 7).await;
    let landed: Vec<(String, String)> = sent
        .iter()
        .map(|e| {
            (
                e["customer_id"].as_str().unwrap().to_owned(),
                e["channel"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    for expected in [
        ("C-1", "email"),
        ("C-2", "sms"),
        ("C-3", "sms"),
        ("C-4", "whatsapp"),
        ("C-4", "email"),
        ("C-5", "whatsapp"),
        ("C-5", "email"),
    ] {
        assert!(
            landed.contains(&(expected.0.into(), expected.1.into())),
            "{expected:?} not in {landed:?}"
        );
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(w.events(EventType::MessageSent).await.len(), 7);
    assert_eq!(w.events(EventType::MessageFailed).await.len(), 5);
    let mails: Vec<Vec<String>> = w.fakes.smtp.mails().into_iter().map(|m| m.to).collect();
    assert_eq!(mails.len(), 3, "{mails:?}");
}

#[sqlx::test(migrations = false)]
async fn a_429_is_retried_after_retry_after_and_exhausted_retries_are_dead_lettered(pool: PgPool) {
    let w = World::new(&pool, |_| {}).await;
    let _running = w.start().await;
    w.fakes.twilio.throttle_next(1, 2);
    let started = Instant::now();
    w.publish(&command(1, Channel::Sms, &[])).await;
    let sent = w.wait_events(EventType::MessageSent, 1).await;
    assert_eq!(sent[0]["attempts"], 2);
    assert_eq!(w.fakes.twilio.requests(), 2);
    let sms = w.fakes.twilio.sent();
    // The retry waited for Retry-After (2 s), not the 100 ms base backoff.
    assert!(sms[0].at.duration_since(started) >= Duration::from_secs(2));

    // 503s until the attempts run out (3): message.failed, then the dead letter.
    w.fakes.twilio.fail_next(100);
    w.publish(&command(2, Channel::Sms, &[Channel::Email]))
        .await;
    let failed = w.wait_events(EventType::MessageFailed, 1).await;
    assert!(
        failed[0]["reason"]
            .as_str()
            .unwrap()
            .starts_with("retries_exhausted: http 503"),
        "{}",
        failed[0]
    );
    assert_eq!(failed[0]["attempts"], 3);
    // Transient failures do not fall back: the message waits in the DLQ for a replay.
    assert!(failed[0].get("fallback_to").is_none());
    assert_eq!(w.fakes.twilio.requests(), 2 + 3);
    let dlq = eventually("dead letter", Duration::from_secs(10), || async {
        let d = read_stream(
            &w.js,
            subjects::STREAM_DEAD_LETTER,
            &subjects::dead_letter("dispatch-sms", TENANT),
        )
        .await;
        (!d.is_empty()).then_some(d)
    })
    .await;
    assert_eq!(
        dlq[0].2["command_id"],
        json!(DispatchCommand::id_for(TENANT, "NF-2", "lembrete", 1, 0))
    );
    assert!(w.fakes.smtp.mails().is_empty());
}

#[sqlx::test(migrations = false)]
async fn opt_out_by_each_route_stops_later_sends_until_opt_in(pool: PgPool) {
    let w = World::new(&pool, |_| {}).await;
    let _running = w.start().await;
    let first = [
        command(1, Channel::Sms, &[]),
        command(2, Channel::Whatsapp, &[]),
        command(3, Channel::Email, &[]),
    ];
    for c in &first {
        w.publish(c).await;
    }
    w.wait_events(EventType::MessageSent, 3).await;

    // SMS reply PARAR; WhatsApp "parar"; the e-mail's one-click link.
    assert_eq!(
        w.fakes
            .twilio
            .inbound(
                &format!("{}/webhooks/twilio/inbound", w.public),
                "+5511900000001",
                "PARAR"
            )
            .await
            .unwrap(),
        200
    );
    assert_eq!(
        w.fakes
            .meta
            .inbound(
                &format!("{}/webhooks/whatsapp", w.public),
                "5511900000002",
                "parar"
            )
            .await
            .unwrap(),
        200
    );
    let link = w.fakes.smtp.mails()[0].header("List-Unsubscribe").unwrap();
    let link = link
        .trim_start_matches('<')
        .trim_end_matches('>')
        .to_owned();
    let page = w.http.get(&link).send().await.unwrap();
    assert_eq!(page.status(), 200);
    assert!(page.text().await.unwrap().contains("<form method=\"post\""));
    let one_click = w
        .http
        .post(&link)
        .header("Content-Type", "application/x-www-form-urlencoded")
        .body("List-Unsubscribe=One-Click")
        .send()
        .await
        .unwrap();
    assert_eq!(one_click.status(), 200);

    let opted = w.wait_events(EventType::CustomerChannelOptedOut, 3).await;
    let got: Vec<(String, String, String)> = opted
        .iter()
        .map(|e| {
            (
                e["customer_id"].as_str().unwrap().into(),
                e["channel"].as_str().unwrap().into(),
                e["source"].as_str().unwrap().into(),
            )
        })
        .collect();
    for expected in [
        ("C-1", "sms", "sms_reply"),
        ("C-2", "whatsapp", "whatsapp_reply"),
        ("C-3", "email", "email_unsubscribe"),
    ] {
        assert!(
            got.contains(&(expected.0.into(), expected.1.into(), expected.2.into())),
            "{expected:?} not in {got:?}"
        );
    }

    // The next step on each channel is skipped (and the e-mail one moves to SMS).
    let mut later: Vec<DispatchCommand> = first.to_vec();
    for c in &mut later {
        c.command_id =
            DispatchCommand::id_for(TENANT, &c.invoices[0].invoice_id, "vence_hoje", 1, 0);
        c.step = "vence_hoje".into();
    }
    later[2].fallback = vec![Channel::Sms];
    later[2].recipient.phone = Some("+5511977777777".into());
    for c in &later {
        w.publish(c).await;
    }
    let skipped = w.wait_events(EventType::MessageSkipped, 3).await;
    assert!(
        skipped.iter().all(|e| e["reason"] == "opted_out"),
        "{skipped:?}"
    );
    let moved = skipped.iter().find(|e| e["customer_id"] == "C-3").unwrap();
    assert_eq!(moved["fallback_to"], "sms");
    w.wait_events(EventType::MessageSent, 4).await;
    assert_eq!(w.fakes.twilio.sent().len(), 2);
    assert_eq!(w.fakes.meta.sent().len(), 1);
    assert_eq!(w.fakes.smtp.mails().len(), 1);

    // VOLTAR opts back in: the next SMS goes out.
    w.fakes
        .twilio
        .inbound(
            &format!("{}/webhooks/twilio/inbound", w.public),
            "+5511900000001",
            "VOLTAR",
        )
        .await
        .unwrap();
    w.wait_events(EventType::CustomerChannelOptedIn, 1).await;
    let mut again = first[0].clone();
    again.command_id = DispatchCommand::id_for(TENANT, "NF-1", "primeiro_aviso", 1, 0);
    w.publish(&again).await;
    eventually("the sms after opt-in", Duration::from_secs(20), || async {
        (w.fakes.twilio.sent().len() == 3).then_some(())
    })
    .await;
}

#[sqlx::test(migrations = false)]
async fn webhooks_refuse_bad_signatures_and_change_nothing(pool: PgPool) {
    let w = World::new(&pool, |_| {}).await;
    w.fakes.twilio.callbacks(false);
    let _running = w.start().await;
    w.publish(&command(1, Channel::Sms, &[])).await;
    w.wait_events(EventType::MessageSent, 1).await;
    let sid = w.fakes.twilio.sent()[0].sid.clone();
    let status_url = format!("{}/webhooks/twilio/status", w.public);

    // Twilio: a wrong signature, a missing one, one for another URL.
    assert_eq!(
        w.fakes
            .twilio
            .status(&status_url, &sid, "delivered", Some("bm9wZQ=="))
            .await
            .unwrap(),
        401
    );
    let missing = w
        .http
        .post(&status_url)
        .form(&[("MessageSid", sid.as_str()), ("MessageStatus", "delivered")])
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 401);
    let other_url = fakes::twilio::signature(
        fakes::TWILIO_TOKEN,
        "http://elsewhere/webhooks/twilio/status",
        &[
            ("MessageSid".into(), sid.clone()),
            ("MessageStatus".into(), "delivered".into()),
        ],
    );
    assert_eq!(
        w.fakes
            .twilio
            .status(&status_url, &sid, "delivered", Some(&other_url))
            .await
            .unwrap(),
        401
    );
    let inbound = w
        .http
        .post(format!("{}/webhooks/twilio/inbound", w.public))
        .header("X-Twilio-Signature", "x")
        .form(&[("From", "+5511900000001"), ("Body", "PARAR")])
        .send()
        .await
        .unwrap();
    assert_eq!(inbound.status(), 401);

    // Meta: a wrong signature on a status and on an inbound STOP; the handshake's token.
    let wa_url = format!("{}/webhooks/whatsapp", w.public);
    assert_eq!(
        w.fakes
            .meta
            .status(&wa_url, "wamid.x", "delivered", Some("sha256=00"))
            .await
            .unwrap(),
        401
    );
    let unsigned = w
        .http
        .post(&wa_url)
        .json(&json!({"entry": []}))
        .send()
        .await
        .unwrap();
    assert_eq!(unsigned.status(), 401);
    let bad = w
        .http
        .get(format!(
            "{wa_url}?hub.mode=subscribe&hub.verify_token=wrong&hub.challenge=42"
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 401);
    let good = w
        .http
        .get(format!(
            "{wa_url}?hub.mode=subscribe&hub.verify_token={}&hub.challenge=42",
            fakes::WA_VERIFY_TOKEN
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(good.status(), 200);
    assert_eq!(good.text().await.unwrap(), "42");

    // A forged unsubscribe link.
    let forged = w
        .http
        .post(format!(
            "{}/unsubscribe/YWNtZR9DLTEfZW1haWw.AAAAAAAAAAAAAAAAAAAAAAAAAAA",
            w.public
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), 401);

    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(w.events(EventType::MessageDelivered).await.is_empty());
    assert!(
        w.events(EventType::CustomerChannelOptedOut)
            .await
            .is_empty()
    );
    let opt_outs: i64 = sqlx::query_scalar("SELECT count(*) FROM dispatch.opt_outs")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(opt_outs, 0);

    // The genuine callback is accepted.
    assert_eq!(
        w.fakes
            .twilio
            .status(&status_url, &sid, "delivered", None)
            .await
            .unwrap(),
        204
    );
    w.wait_events(EventType::MessageDelivered, 1).await;
}

#[sqlx::test(migrations = false)]
async fn the_guard_skips_closed_invoices_missing_opt_in_and_closed_windows(pool: PgPool) {
    let w = World::new(&pool, |_| {}).await;
    let _running = w.start().await;
    w.publish_event(
        EventType::InvoicePaid,
        json!({"invoice_id": "NF-1", "customer_id": "C-1", "paid_at": Utc::now(), "amount_paid_cents": 15990, "currency": "BRL", "days_late": 0}),
    )
    .await;
    w.publish_event(
        EventType::CustomerUpserted,
        json!({"customer": {"customer_id": "C-2", "name": "X", "whatsapp_opt_in": false, "timezone": "America/Sao_Paulo", "locale": "pt-BR"}}),
    )
    .await;
    // The projection is eventually consistent: wait until it has the payment.
    eventually("the guard's facts", Duration::from_secs(20), || async {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM dispatch.closed_invoices")
            .fetch_one(&pool)
            .await
            .unwrap();
        let m: i64 = sqlx::query_scalar("SELECT count(*) FROM dispatch.customers")
            .fetch_one(&pool)
            .await
            .unwrap();
        (n == 1 && m == 1).then_some(())
    })
    .await;
    let paid = command(1, Channel::Email, &[Channel::Sms]);
    let no_opt_in = command(2, Channel::Whatsapp, &[Channel::Email]);
    let mut late = command(3, Channel::Sms, &[]);
    late.not_after = Utc::now() - TimeDelta::minutes(1);
    for c in [&paid, &no_opt_in, &late] {
        w.publish(c).await;
    }
    let skipped = w.wait_events(EventType::MessageSkipped, 3).await;
    let reasons: BTreeMap<&str, (&str, Option<&str>)> = skipped
        .iter()
        .map(|e| {
            (
                e["customer_id"].as_str().unwrap(),
                (e["reason"].as_str().unwrap(), e["fallback_to"].as_str()),
            )
        })
        .collect();
    assert_eq!(reasons["C-1"], ("invoice_closed", None));
    assert_eq!(reasons["C-2"], ("no_whatsapp_opt_in", Some("email")));
    assert_eq!(reasons["C-3"], ("window_closed", None));
    // Only the WhatsApp one moves on, to e-mail.
    w.wait_events(EventType::MessageSent, 1).await;
    assert!(w.fakes.twilio.sent().is_empty());
    assert!(w.fakes.meta.sent().is_empty());
    assert_eq!(w.fakes.smtp.mails().len(), 1);
    // Redelivering a handled command changes nothing.
    w.publish(&command(2, Channel::Whatsapp, &[Channel::Email]))
        .await; // deduplicated by Nats-Msg-Id
    let mut replay = command(2, Channel::Whatsapp, &[Channel::Email]);
    replay.scheduled_for += TimeDelta::seconds(1);
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Nats-Msg-Id", "a-fresh-id");
    w.js.publish_with_headers(
        subjects::dispatch(TENANT, Channel::Whatsapp),
        headers,
        serde_json::to_vec(&replay).unwrap().into(),
    )
    .await
    .unwrap()
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(w.events(EventType::MessageSkipped).await.len(), 3);
    assert_eq!(w.fakes.smtp.mails().len(), 1);
}

/// A worker killed mid-batch and restarted: no (step, channel) gets two provider calls,
/// and the ones cut between the call and its record are reported unknown.
#[sqlx::test(migrations = false)]
async fn a_worker_killed_mid_batch_never_calls_a_provider_twice(pool: PgPool) {
    let w = World::new(&pool, |c| c.dispatch.batch_size = 10).await;
    w.fakes.twilio.latency(Duration::from_millis(400));
    w.fakes.twilio.callbacks(false);
    let n = 40;
    for i in 0..n {
        w.publish(&command(i, Channel::Sms, &[])).await;
    }
    let first = w.start().await;
    eventually("calls in flight", Duration::from_secs(20), || async {
        (w.fakes.twilio.received().len() >= 12).then_some(())
    })
    .await;
    first.kill();
    let at_kill = w.fakes.twilio.received().len();
    // Let any answer still travelling land in the fake, then restart.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let _second = w.start().await;
    let settled = eventually("every command settled", Duration::from_secs(60), || async {
        let states = w.attempt_states().await;
        (states.len() == n as usize && states.values().all(|s| s == "sent" || s == "unknown"))
            .then_some(states)
    })
    .await;
    let received = w.fakes.twilio.received();
    let mut calls: HashMap<&str, usize> = HashMap::new();
    for to in &received {
        *calls.entry(to.as_str()).or_default() += 1;
    }
    let twice: Vec<_> = calls.iter().filter(|(_, c)| **c > 1).collect();
    assert!(twice.is_empty(), "called twice: {twice:?}");
    let unknown = settled.values().filter(|s| *s == "unknown").count();
    let sent = settled.values().filter(|s| *s == "sent").count();
    assert!(
        unknown >= 1,
        "the kill cut calls in flight ({at_kill} received at kill)"
    );
    assert_eq!(sent + unknown, n as usize);
    assert_eq!(
        received.len(),
        n as usize,
        "every command was called exactly once"
    );
    let reported = w.wait_events(EventType::MessageUnknown, unknown).await;
    assert!(reported.iter().all(|e| e["reason"] == "outcome_unknown"));
    assert_eq!(
        w.wait_events(EventType::MessageSent, sent).await.len(),
        sent
    );
}

/// Four replicas of the SMS dispatcher against one Twilio account limited to R msgs/s:
/// the combined rate holds R, nothing is sent twice, and two replicas terminated
/// mid-run (drained as on SIGTERM) lose nothing.
#[sqlx::test(migrations = false)]
async fn four_replicas_share_one_rate_limit_and_drain_without_loss(pool: PgPool) {
    const R: u32 = 20;
    const N: u32 = 240;
    let w = World::new(&pool, |c| {
        c.dispatch.sms_rate = R;
        c.dispatch.batch_size = 64;
    })
    .await;
    w.fakes.twilio.callbacks(false);
    for i in 0..N {
        w.publish(&command(i, Channel::Sms, &[])).await;
    }
    let mut replicas = Vec::new();
    for _ in 0..4 {
        let mut c = w.config.clone();
        c.http_addr = "127.0.0.1:0".parse().unwrap();
        replicas.push(dispatchers(&c, &[Channel::Sms]).await);
    }
    eventually("a third sent", Duration::from_secs(60), || async {
        (w.fakes.twilio.sent().len() >= (N / 3) as usize).then_some(())
    })
    .await;
    let b = replicas.pop().unwrap();
    let a = replicas.pop().unwrap();
    let (clean_a, clean_b) = tokio::join!(a.terminate(), b.terminate());
    assert!(clean_a && clean_b, "both drained within the timeout");
    let sent = eventually("all sent", Duration::from_secs(60), || async {
        let s = w.fakes.twilio.sent();
        (s.len() >= N as usize).then_some(s)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let sent_now = w.fakes.twilio.sent();
    assert_eq!(sent_now.len(), N as usize, "nothing sent twice");
    let mut tos: Vec<&str> = sent.iter().map(|s| s.to.as_str()).collect();
    tos.sort_unstable();
    tos.dedup();
    assert_eq!(tos.len(), N as usize, "every command sent once");
    let states = w.attempt_states().await;
    assert!(
        states.values().all(|s| s == "sent"),
        "no unknowns after a drain"
    );
    // The sustained rate: first to last send, all replicas together.
    let mut at: Vec<Instant> = sent.iter().map(|s| s.at).collect();
    at.sort_unstable();
    let span = at[at.len() - 1].duration_since(at[0]).as_secs_f64();
    let rate = f64::from(N - 1) / span;
    let ratio = rate / f64::from(R);
    println!("four replicas: {rate:.2} msgs/s against R = {R} ({ratio:.3}) over {span:.1} s");
    assert!(
        (0.95..=1.05).contains(&ratio),
        "combined rate {rate:.2}/s against R = {R} ({ratio:.3})"
    );
    // And no second of the run exceeded R by more than one message.
    let mut worst = 0;
    for (i, t) in at.iter().enumerate() {
        let within = at[i..]
            .iter()
            .take_while(|u| u.duration_since(*t) < Duration::from_secs(1))
            .count();
        worst = worst.max(within);
    }
    assert!(worst <= R as usize + 1, "{worst} sends in one second");
}

#[sqlx::test(migrations = false)]
async fn test_clock_messages_reach_only_sandboxes(pool: PgPool) {
    // Real provider accounts (as far as the dispatcher knows): no test-clock sends.
    let w = World::new(&pool, |c| c.dispatch.test_clock_sends = false).await;
    let _running = w.start().await;
    let mut simulated = command(1, Channel::Sms, &[Channel::Email]);
    simulated.test_clock = true;
    let real = command(2, Channel::Sms, &[]);
    w.publish(&simulated).await;
    w.publish(&real).await;
    let skipped = w.wait_events(EventType::MessageSkipped, 1).await;
    assert_eq!(skipped.len(), 1);
    assert_eq!(skipped[0]["customer_id"], "C-1");
    assert_eq!(skipped[0]["reason"], "test_clock");
    assert!(
        skipped[0]["fallback_to"].is_null(),
        "no other channel either"
    );
    w.wait_events(EventType::MessageSent, 1).await;
    let to: Vec<String> = w.fakes.twilio.sent().iter().map(|m| m.to.clone()).collect();
    assert_eq!(
        to,
        vec!["+5511900000002".to_owned()],
        "only the real tenant's message"
    );
    assert!(w.fakes.smtp.mails().is_empty());
}

/// A text a policy could not have stored (a command carries its own) that loops past
/// its fuel, or builds a huge string: that message alone fails, `permanent`, fast; the
/// message beside it in the batch is sent.
#[sqlx::test(migrations = false)]
async fn a_template_over_its_limits_fails_its_message_alone(pool: PgPool) {
    use regua_contract::commands::ChannelTemplates;
    let w = World::new(&pool, |_| {}).await;
    let _running = w.start().await;
    let with_sms = |n: u32, sms: &str| {
        let mut c = command(n, Channel::Sms, &[]);
        c.templates = Some(ChannelTemplates {
            sms: Some(sms.to_owned()),
            ..Default::default()
        });
        c
    };
    let spins = "{% for a in name %}{% for b in name %}{% for c in name %}{% for d in name %}\
                 {% endfor %}{% endfor %}{% endfor %}{% endfor %}{{ total }}";
    let floods = "{% for a in name %}{% for b in name %}{{ creditor }}{% endfor %}{% endfor %}";
    let builds = "{% for c in ('x' * 100000000)|list %}{{ c }}{% endfor %}";
    let fine = "{{ creditor.legal_name }}: {{ first_name|upper }}, {{ total }} ({{ due_date }})";
    for c in [
        with_sms(1, spins),
        with_sms(2, floods),
        with_sms(3, builds),
        with_sms(4, fine),
    ] {
        w.publish(&c).await;
    }
    let failed = w.wait_events(EventType::MessageFailed, 3).await;
    let reasons: BTreeMap<&str, &str> = failed
        .iter()
        .map(|e| {
            (
                e["customer_id"].as_str().unwrap(),
                e["reason"].as_str().unwrap(),
            )
        })
        .collect();
    assert!(reasons["C-1"].contains("out of fuel"), "{reasons:?}");
    assert!(reasons["C-2"].contains("more than"), "{reasons:?}");
    assert!(reasons["C-3"].contains("not available"), "{reasons:?}");
    for r in reasons.values() {
        assert!(r.starts_with("permanent"), "{r}");
    }
    w.wait_events(EventType::MessageSent, 1).await;
    let sent: Vec<(String, String)> = w
        .fakes
        .twilio
        .sent()
        .iter()
        .map(|m| (m.to.clone(), m.body.clone()))
        .collect();
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert_eq!(sent[0].0, "+5511900000004");
    assert!(sent[0].1.contains("JOÃO"), "{sent:?}");
}

/// A command decided for an instant this replica's clock has not reached (a scheduler
/// whose clock runs ahead) waits for it: nothing is sent or recorded before, and it
/// goes out then.
#[sqlx::test(migrations = false)]
async fn a_command_before_its_instant_waits_for_it(pool: PgPool) {
    let w = World::new(&pool, |_| {}).await;
    let _running = w.start().await;
    let ahead = Duration::from_secs(4);
    let mut cmd = command(1, Channel::Sms, &[]);
    cmd.scheduled_for = Utc::now() + TimeDelta::from_std(ahead).unwrap();
    cmd.not_after = cmd.scheduled_for + TimeDelta::hours(1);
    let published = Instant::now();
    w.publish(&cmd).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(w.fakes.twilio.sent().is_empty(), "not before its instant");
    assert!(
        w.attempt_states().await.is_empty(),
        "nothing recorded before"
    );
    w.wait_events(EventType::MessageSent, 1).await;
    let sent = w.fakes.twilio.sent();
    assert_eq!(sent.len(), 1);
    assert!(
        sent[0].at.duration_since(published) >= ahead - Duration::from_millis(1500),
        "sent {:?} after publishing",
        sent[0].at.duration_since(published)
    );
}

/// Postgres unreachable: before the claim, the batch is held (progress acks) however
/// long it lasts, and spends no delivery; right after a provider call, the result is
/// held until it can be recorded, with the provider's id, instead of turning a real
/// send into `unknown`. Each message goes to the provider once.
#[sqlx::test(migrations = false)]
async fn a_postgres_outage_strands_no_command_and_loses_no_provider_call(pool: PgPool) {
    use regua_testkit::proxy::TcpProxy;
    use regua_testkit::service;
    let proxy = TcpProxy::start(service::database_addr(&pool)).await;
    let w = World::new(&pool, |c| service::database_through(c, proxy.addr())).await;
    let _running = w.start().await;
    w.publish(&command(1, Channel::Sms, &[])).await;
    w.wait_events(EventType::MessageSent, 1).await;

    // Down before the claim, for several ack waits (3 s here).
    proxy.cut();
    w.publish(&command(2, Channel::Sms, &[])).await;
    tokio::time::sleep(Duration::from_secs(15)).await;
    let consumer = subjects::dispatch_consumer(Channel::Sms);
    let info =
        w.js.get_stream(subjects::STREAM_COMMANDS)
            .await
            .unwrap()
            .consumer_info(&consumer)
            .await
            .unwrap();
    assert_eq!(
        info.num_redelivered, 0,
        "the outage spent a delivery: {info:?}"
    );
    assert_eq!(
        w.fakes.twilio.count(),
        1,
        "nothing sent while Postgres is down"
    );
    proxy.restore();
    w.wait_events(EventType::MessageSent, 2).await;

    // Down while the provider answers: the call is made, its result waits.
    w.fakes.twilio.latency(Duration::from_secs(2));
    w.publish(&command(3, Channel::Sms, &[])).await;
    eventually("the provider call", Duration::from_secs(20), || async {
        (w.fakes.twilio.requests() == 3).then_some(())
    })
    .await;
    proxy.cut();
    tokio::time::sleep(Duration::from_secs(10)).await;
    proxy.restore();
    let sent = w.wait_events(EventType::MessageSent, 3).await;
    let third = sent.iter().find(|e| e["customer_id"] == "C-3").unwrap();
    let sms = w.fakes.twilio.sent();
    let sid = sms
        .iter()
        .find(|s| s.to == "+5511900000003")
        .unwrap()
        .sid
        .clone();
    assert_eq!(
        third["provider_message_id"],
        json!(sid),
        "the provider's id kept"
    );
    assert_eq!(sms.len(), 3, "each message sent once");
    assert!(w.events(EventType::MessageUnknown).await.is_empty());
    let dead = read_stream(
        &w.js,
        subjects::STREAM_DEAD_LETTER,
        &subjects::dead_letter_all(),
    )
    .await;
    assert!(dead.is_empty(), "nothing dead-lettered: {dead:?}");
}
