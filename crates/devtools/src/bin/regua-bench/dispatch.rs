//! `regua-bench dispatch`: one SMS worker's throughput against the raw ceiling of the
//! same HTTP client, both against the same local Twilio-shaped fake with no rate limit,
//! measured in the same run.
//!
//! 1. Ceiling: the dispatcher's own HTTP client (`regua_dispatch::channels::
//!    http_client`) posting N Twilio message forms to the fake, with the same number of
//!    requests in flight as the worker keeps (batch size × workers).
//! 2. Floor: the work the guarantees demand of any dispatcher (mark before the call,
//!    call, record, event, ack), done by raw clients with none of the worker's own
//!    (see [`floor`]), with the worker's batch size and workers.
//! 3. Worker: N dispatch commands preloaded on `regua.v1.cmd.bench.dispatch.sms`, then
//!    one `regua dispatch sms` process started; timed from the fake's first accepted
//!    message to its N-th. Every message goes through the whole pipeline: claim and
//!    guard (Postgres), render, send, record with its `message.sent` event (outbox),
//!    ack.
//!
//! `--latency-ms` makes both fakes answer after a delay, like a real provider API
//! (Twilio answers in the order of 100 ms): with it, the ratio shows what the pipeline
//! costs in production; without it, what it costs against a free provider.

use std::time::{Duration, Instant};

use anyhow::bail;
use async_nats::jetstream::stream::RetentionPolicy;
use chrono::TimeDelta;
use regua_contract::commands::DispatchCommand;
use regua_contract::inbound::Channel;
use regua_contract::subjects;
use regua_platform::{Clock, Config, SystemClock, nats};
use regua_testkit::fakes::{self, FakeTwilio};

use crate::{Rig, check_settings, say, spawn_service};

/// The ceiling's and the floor's message text.
const BODY: &str = "Bench Comércio Ltda: Cliente, sua fatura de R$ 159,90 vence em 27/11/2026.";

fn command(i: usize, now: chrono::DateTime<chrono::Utc>) -> DispatchCommand {
    let n = u32::try_from(i).unwrap_or(u32::MAX);
    let mut cmd = regua_testkit::dispatch_command("bench", n, Channel::Sms, &[], now);
    cmd.invoices[0].payment = None;
    cmd.not_after = now + TimeDelta::days(1);
    cmd
}

/// Publishes the N bench commands to `subject`, each with its command's message id.
async fn preload(
    js: &async_nats::jetstream::Context,
    n: usize,
    subject: &str,
) -> anyhow::Result<()> {
    let now = SystemClock.now();
    let commands = (0..n)
        .map(|i| {
            let cmd = command(i, now);
            Ok((
                subject.to_owned(),
                serde_json::to_vec(&cmd)?,
                DispatchCommand::message_id(&cmd.command_id).to_string(),
            ))
        })
        .collect::<Result<Vec<_>, serde_json::Error>>()?;
    crate::floor::publish_all(js, commands).await
}

async fn wait_sent(fake: &FakeTwilio, n: usize, what: &str) -> anyhow::Result<()> {
    let t = Instant::now();
    let mut last = Instant::now();
    while fake.count() < n {
        if t.elapsed() > Duration::from_secs(1800) {
            bail!("{what}: {} of {n} after 30 minutes", fake.count());
        }
        if last.elapsed() > Duration::from_secs(10) {
            say(&format!("  … {what}: {} of {n}", fake.count()));
            last = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// Requests per second from the first accepted message to the last of `sent`.
fn rate(sent: &[fakes::twilio::Sms]) -> (f64, f64) {
    let first = sent.iter().map(|s| s.at).min();
    let last = sent.iter().map(|s| s.at).max();
    match (first, last) {
        (Some(a), Some(b)) if b > a => {
            let secs = b.duration_since(a).as_secs_f64();
            ((sent.len() - 1) as f64 / secs, secs)
        }
        _ => (0.0, 0.0),
    }
}

/// A fresh fake answering after `latency_ms`, the dispatcher's own HTTP client, and
/// the fake's Messages URL.
async fn provider(latency_ms: u64) -> anyhow::Result<(FakeTwilio, reqwest::Client, String)> {
    let fake = FakeTwilio::start(fakes::TWILIO_SID, fakes::TWILIO_TOKEN).await?;
    fake.callbacks(false);
    fake.latency(Duration::from_millis(latency_ms));
    let mut config = Config::default();
    config.providers.twilio_api_base = fake.base();
    let client = regua_dispatch::channels::http_client(&config)?;
    let url = format!(
        "{}/2010-04-01/Accounts/{}/Messages.json",
        fake.base(),
        fakes::TWILIO_SID
    );
    Ok((fake, client, url))
}

/// The Twilio message request the ceiling and the floor make, to recipient number `i`.
fn sms_request(client: &reqwest::Client, url: &str, i: usize) -> reqwest::RequestBuilder {
    let to = format!("+55119{:08}", i % 100_000_000);
    let form = [
        ("To", to.as_str()),
        ("From", fakes::TWILIO_FROM),
        ("Body", BODY),
        (
            "StatusCallback",
            "http://127.0.0.1:9/webhooks/twilio/status",
        ),
    ];
    client
        .post(url)
        .basic_auth(fakes::TWILIO_SID, Some(fakes::TWILIO_TOKEN))
        .form(&form)
}

/// The dispatcher's HTTP client posting `n` Twilio forms to a fresh fake, `in_flight`
/// at a time: requests per second, first to last accepted, and the seconds that took.
async fn ceiling(n: usize, in_flight: usize, latency_ms: u64) -> anyhow::Result<(f64, f64)> {
    let (fake, client, url) = provider(latency_ms).await?;
    let requests = futures::stream::iter(0..n).map(|i| {
        let request = sms_request(&client, &url, i);
        async move { request.send().await.map(|r| r.status().as_u16()) }
    });
    let statuses: Vec<_> =
        futures::StreamExt::collect(futures::StreamExt::buffer_unordered(requests, in_flight))
            .await;
    if statuses.iter().any(|s| !matches!(s, Ok(201))) {
        bail!("the ceiling run had failed requests");
    }
    Ok(rate(&fake.sent()))
}

/// The floor under a dispatcher: the work "never send the same step twice" and "ack
/// only after the result is recorded" demand of any dispatcher, done by raw clients
/// with none of regua's own. The N commands wait on a stream of their own; `workers`
/// fetchers share one durable pull consumer, and per batch of `batch` the floor marks
/// every command as being sent (one multi-row insert, committed before any call),
/// makes the provider calls concurrently (the ceiling's requests, to a fresh fake),
/// records each result (one multi-row update), publishes one `message.sent`-sized
/// event per message (acks awaited) and acks the batch. No decoding, guard, render,
/// rate limit or outbox. Requests per second, first to last accepted, as the ceiling.
async fn floor(
    rig: &Rig,
    n: usize,
    batch: usize,
    workers: usize,
    latency_ms: u64,
) -> anyhow::Result<f64> {
    let js = &rig.js;
    let consumer = crate::floor::streams(js, RetentionPolicy::WorkQueue).await?;
    preload(js, n, "floor.in.bench.dispatch.sms").await?;
    sqlx::query(
        "CREATE TABLE floor_attempts (command_id TEXT COLLATE \"C\" PRIMARY KEY, state TEXT NOT NULL, \
         provider_message_id TEXT, at TIMESTAMPTZ NOT NULL)",
    )
    .execute(&rig.pool)
    .await?;
    let (fake, client, url) = provider(latency_ms).await?;
    let pool = rig.pool.clone();
    let js_ = js.clone();
    crate::floor::drain(&consumer, n, batch, workers, move |msgs| {
        let (js, pool, client, url) = (js_.clone(), pool.clone(), client.clone(), url.clone());
        async move {
            let ids: Vec<String> = msgs.iter().map(nats::message_id).collect();
            sqlx::query(
                "INSERT INTO floor_attempts SELECT id, 'sending', NULL, $2 FROM UNNEST($1::text[]) AS id",
            )
            .bind(&ids)
            .bind(SystemClock.now())
            .execute(&pool)
            .await?;
            let calls = (0..ids.len()).map(|k| {
                let request = sms_request(&client, &url, k);
                async move {
                    let r = request.send().await?.error_for_status()?;
                    let v: serde_json::Value = r.json().await?;
                    anyhow::Ok(v["sid"].as_str().unwrap_or_default().to_owned())
                }
            });
            let sids = futures::future::try_join_all(calls).await?;
            sqlx::query(
                "UPDATE floor_attempts a SET state = 'sent', provider_message_id = u.sid, at = $3 \
                 FROM UNNEST($1::text[], $2::text[]) AS u(id, sid) WHERE a.command_id = u.id",
            )
            .bind(&ids)
            .bind(&sids)
            .bind(SystemClock.now())
            .execute(&pool)
            .await?;
            let events: Vec<_> = msgs
                .iter()
                .zip(&ids)
                .map(|(m, id)| {
                    (
                        "floor.evt.bench.message.sent".to_owned(),
                        m.payload.slice(..m.payload.len().min(700)),
                        format!("sent-{id}"),
                    )
                })
                .collect();
            crate::floor::publish_all(&js, events).await?;
            Ok(msgs)
        }
    })
    .await?;
    let (per_sec, _) = rate(&fake.sent());
    crate::floor::drop_streams(js).await?;
    sqlx::query("DROP TABLE floor_attempts")
        .execute(&rig.pool)
        .await?;
    Ok(per_sec)
}

pub async fn run(
    n: usize,
    postgres: &str,
    batch: usize,
    workers: usize,
    latency_ms: u64,
) -> anyhow::Result<()> {
    let cores = std::thread::available_parallelism()
        .map(|c| c.get())
        .unwrap_or(1);
    let in_flight = batch * workers;
    say(&format!(
        "regua-bench dispatch: N = {n}, {cores} cores, batch {batch} × {workers} workers = {in_flight} in flight, provider latency {latency_ms} ms"
    ));
    let worker_settings = [
        ("REGUA_SMS_RATE_PER_SEC", "0".to_owned()),
        ("REGUA_DISPATCH_BATCH_SIZE", batch.to_string()),
        ("REGUA_DISPATCH_WORKERS", workers.to_string()),
    ];
    check_settings(&worker_settings)?;
    let rig = Rig::start(n.min(100_000), postgres).await?;

    // Ceilings: the same client against the same kind of fake, one request at a time
    // (a tight loop, literally) and with the worker's concurrency (the headline).
    let sequential_n = if latency_ms == 0 {
        n.min(5_000)
    } else {
        n.min(50)
    };
    let (sequential, _) = ceiling(sequential_n, 1, latency_ms).await?;
    say(&format!(
        "ceiling  http client, one at a time {sequential:>10.0} req/s ({sequential_n} requests)"
    ));
    let (ceiling, ceiling_secs) = ceiling(n, in_flight, latency_ms).await?;
    say(&format!(
        "ceiling  http client, {in_flight} in flight {ceiling:>10.0} req/s ({ceiling_secs:.1} s)"
    ));

    let floor = floor(&rig, n, batch, workers, latency_ms).await?;
    say(&format!(
        "floor    the guarantees' work, raw  {floor:>10.0} msg/s (mark, call, record, event, ack; batch {batch} × {workers})"
    ));

    // The worker, as its own process, over a preloaded backlog.
    let (fake, _, _) = provider(latency_ms).await?;
    nats::ensure_streams(&rig.js, nats::Streams::Provision { replicas: 1 }).await?;
    regua_dispatch::Dispatcher::migrate(&rig.pool).await?;
    preload(&rig.js, n, &subjects::dispatch("bench", Channel::Sms)).await?;
    let provider_settings = [
        ("REGUA_TWILIO_API_BASE", fake.base()),
        ("REGUA_TWILIO_ACCOUNT_SID", fakes::TWILIO_SID.into()),
        ("REGUA_TWILIO_AUTH_TOKEN", fakes::TWILIO_TOKEN.into()),
        ("REGUA_TWILIO_FROM", fakes::TWILIO_FROM.into()),
    ];
    let mut child = spawn_service(
        "dispatch sms",
        &rig.nats_url(),
        &rig.db_url,
        &[&provider_settings[..], &worker_settings[..]].concat(),
    )?;
    let started = Instant::now();
    wait_sent(&fake, n, "worker").await?;
    let wall = started.elapsed().as_secs_f64();
    child.kill().await.ok();
    let sent = fake.sent();
    let (worker, worker_secs) = rate(&sent);
    let mut tos: Vec<&str> = sent.iter().map(|s| s.to.as_str()).collect();
    tos.sort_unstable();
    tos.dedup();
    say(&format!(
        "worker   regua dispatch sms         {worker:>10.0} msg/s ({worker_secs:.1} s first to last send; {wall:.1} s from process start; {} distinct recipients)",
        tos.len()
    ));
    say(&format!(
        "ratio    worker / http ceiling at {in_flight} in flight = {:.2} (target ≥ 0.60); worker / one-at-a-time loop = {:.2}",
        worker / ceiling,
        worker / sequential
    ));
    say(&format!(
        "ratio    floor / http ceiling at {in_flight} in flight = {:.2}; worker / floor = {:.2}",
        floor / ceiling,
        worker / floor
    ));
    rig.finish().await
}

use futures::StreamExt as _;
