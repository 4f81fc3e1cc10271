//! Webhooks and links on the HTTP server:
//!
//! - `GET /webhooks/whatsapp`: Meta's verification handshake (`hub.verify_token`);
//! - `POST /webhooks/whatsapp`: statuses (sent, delivered, read, failed) and inbound
//!   messages, verified with `X-Hub-Signature-256`;
//! - `POST /webhooks/twilio/status` and `POST /webhooks/twilio/inbound`: status
//!   callbacks and inbound SMS, verified with `X-Twilio-Signature`;
//! - `GET|POST /unsubscribe/{token}`: the signed one-click unsubscribe link (RFC 8058:
//!   mail clients POST `List-Unsubscribe=One-Click`; a person following the link gets a
//!   page with one button, because link scanners prefetch GETs).
//!
//! A request with a bad or missing signature gets 401 and changes nothing. Statuses
//! are idempotent: a provider retrying a callback produces one event.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use chrono::{DateTime, Utc};
use regua_contract::commands::DispatchCommand;
use regua_contract::events::MessageStatus;
use regua_contract::inbound::Channel;
use serde::Deserialize;
use sqlx::Row;
use tokio_util::sync::CancellationToken;

use regua_platform::telemetry;

use crate::channels::{phone_digits, sms, whatsapp};
use crate::sign;
use crate::store::{self, EventFacts, State as AttemptState, Update};
use crate::{DispatchError, Dispatcher, OUTBOX};

pub const WHATSAPP: &str = "/webhooks/whatsapp";
pub const TWILIO_STATUS: &str = "/webhooks/twilio/status";
pub const TWILIO_INBOUND: &str = "/webhooks/twilio/inbound";
pub const UNSUBSCRIBE: &str = "/unsubscribe";

/// Replies that opt a customer out (SMS, case-insensitive, whole message).
pub const STOP_WORDS: [&str; 8] = [
    "SAIR",
    "PARAR",
    "STOP",
    "CANCELAR",
    "STOPALL",
    "UNSUBSCRIBE",
    "END",
    "QUIT",
];
/// Replies that opt a customer back in.
pub const START_WORDS: [&str; 4] = ["VOLTAR", "START", "UNSTOP", "YES"];

/// Every webhook and the unsubscribe link. Each dispatcher process serves them all,
/// whatever channel it sends, so any replica behind one public address can take any
/// callback; a provider whose secret this process lacks gets 401.
pub fn router(d: Arc<Dispatcher>) -> Router {
    Router::new()
        .route(WHATSAPP, get(whatsapp_handshake).post(whatsapp_post))
        .route(TWILIO_STATUS, post(twilio_status))
        .route(TWILIO_INBOUND, post(twilio_inbound))
        .route(
            &format!("{UNSUBSCRIBE}/{{token}}"),
            get(unsubscribe_page).post(unsubscribe),
        )
        .with_state(d)
}

fn unauthorized(why: &str) -> Response {
    tracing::warn!(reason = why, "webhook refused");
    (StatusCode::UNAUTHORIZED, why.to_owned()).into_response()
}

fn internal(e: &DispatchError) -> Response {
    tracing::error!(error = %e, "webhook failed");
    // Providers retry a 5xx: nothing is lost.
    (StatusCode::INTERNAL_SERVER_ERROR, "try again").into_response()
}

/// What a reply asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyIntent {
    OptOut,
    OptIn,
    Other,
}

/// Reads a reply: a stop word or a start word, alone (punctuation and case aside).
pub fn reply_intent(text: &str) -> ReplyIntent {
    let word: String = text
        .trim()
        .trim_matches(|c: char| c.is_ascii_punctuation())
        .to_uppercase();
    if STOP_WORDS.contains(&word.as_str()) {
        ReplyIntent::OptOut
    } else if START_WORDS.contains(&word.as_str()) {
        ReplyIntent::OptIn
    } else {
        ReplyIntent::Other
    }
}

/// Applies a reply from `address_key` on `channel` to every customer sent to it.
async fn apply_reply(
    d: &Dispatcher,
    channel: Channel,
    address_key: &str,
    text: &str,
    source: &'static str,
) -> Result<usize, DispatchError> {
    let intent = reply_intent(text);
    if intent == ReplyIntent::Other {
        return Ok(0);
    }
    let now = d.clock.now();
    let mut tx = d.pool.begin().await?;
    let customers = store::customers_at(&mut tx, channel, address_key).await?;
    let mut changed = 0;
    for (tenant, customer) in &customers {
        let out = intent == ReplyIntent::OptOut;
        let did = store::set_opt_out(&mut tx, tenant, customer, channel, source, now, out).await?;
        changed += usize::from(did);
    }
    tx.commit().await?;
    d.wake_relay();
    tracing::info!(channel = channel.as_str(), intent = ?intent, customers = customers.len(), changed, "reply applied");
    Ok(changed)
}

/// A provider's status for one of our messages.
struct StatusReport<'a> {
    provider: &'a str,
    provider_message_id: &'a str,
    /// `delivered`, `read` or `failed`.
    status: &'a str,
    reason: Option<String>,
}

/// How long a status for a send regua has not recorded waits for it.
const EARLY_STATUS_TTL: chrono::Duration = chrono::Duration::days(7);
/// How often waiting statuses are matched against recorded sends.
const EARLY_STATUS_SWEEP: std::time::Duration = std::time::Duration::from_millis(200);
/// How often statuses past [`EARLY_STATUS_TTL`] are dropped.
const EARLY_STATUS_EXPIRY: std::time::Duration = std::time::Duration::from_secs(60);

/// Turns a status into its `message.*` event once. A status that beats the worker's
/// commit of the send it reports on waits in `dispatch.early_statuses` and is applied
/// by [`run_early_statuses`] once the send is recorded: a callback is never dropped.
async fn apply_status(d: &Dispatcher, s: StatusReport<'_>) -> Result<(), DispatchError> {
    let Some(kind) = status_event(s.status) else {
        return Ok(());
    };
    let mut tx = d.pool.begin().await?;
    if !apply_status_in(&mut tx, d, &s, kind).await? {
        sqlx::query(
            "INSERT INTO dispatch.early_statuses \
             (provider, provider_message_id, status, reason, received_at) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
        )
        .bind(s.provider)
        .bind(s.provider_message_id)
        .bind(s.status)
        .bind(s.reason.as_deref())
        .bind(d.clock.now())
        .execute(&mut *tx)
        .await?;
        tracing::debug!(
            provider = s.provider,
            "status before its send was recorded; kept until it is"
        );
    }
    tx.commit().await?;
    d.wake_relay();
    Ok(())
}

fn status_event(status: &str) -> Option<MessageStatus> {
    match status {
        "delivered" => Some(MessageStatus::Delivered),
        "read" => Some(MessageStatus::Read),
        "failed" => Some(MessageStatus::Failed),
        _ => None,
    }
}

/// Applies `s` (whose event is `kind`) in `tx` if regua recorded the send it reports
/// on, and says so: its event once; a failure after acceptance marks the attempt failed
/// and moves the message to the next channel.
async fn apply_status_in(
    tx: &mut sqlx::PgConnection,
    d: &Dispatcher,
    s: &StatusReport<'_>,
    kind: MessageStatus,
) -> Result<bool, DispatchError> {
    let Some(row) = sqlx::query(
        "SELECT tenant, command_id, channel, state, calls, sent_at, command, traceparent \
         FROM dispatch.attempts WHERE provider = $1 AND provider_message_id = $2 FOR UPDATE",
    )
    .bind(s.provider)
    .bind(s.provider_message_id)
    .fetch_optional(&mut *tx)
    .await?
    else {
        return Ok(false);
    };
    let fresh = sqlx::query(
        "INSERT INTO dispatch.statuses (provider, provider_message_id, status) VALUES ($1, $2, $3) \
         ON CONFLICT DO NOTHING",
    )
    .bind(s.provider)
    .bind(s.provider_message_id)
    .bind(s.status)
    .execute(&mut *tx)
    .await?
    .rows_affected()
        > 0;
    if !fresh {
        return Ok(true);
    }
    let channel_name: String = row.try_get("channel")?;
    let Some(channel) = Channel::parse(&channel_name) else {
        return Ok(true);
    };
    let cmd: DispatchCommand = serde_json::from_value(row.try_get("command")?)?;
    // A provider's callback carries no trace context: its span links to the message's
    // trace, and the event it causes continues the callback's.
    let span = tracing::info_span!(
        "apply provider status",
        regua.tenant = cmd.tenant.as_str(),
        regua.invoice_id = cmd
            .invoices
            .first()
            .map(|i| i.invoice_id.as_str())
            .unwrap_or(""),
        regua.step = cmd.step.as_str(),
        regua.channel = channel_name.as_str(),
        regua.provider = s.provider,
        regua.outcome = s.status,
    );
    if let Some(tp) = row.try_get::<Option<String>, _>("traceparent")? {
        telemetry::link_to_traceparent(&span, &tp);
    }
    let traceparent = telemetry::traceparent(&span);
    let sent_at: Option<DateTime<Utc>> = row.try_get("sent_at")?;
    let calls: i32 = row.try_get("calls")?;
    let state: String = row.try_get("state")?;
    // A test-clock tenant's statuses happen at its (simulated) send time.
    let at = if cmd.test_clock {
        sent_at.unwrap_or(cmd.scheduled_for)
    } else {
        d.clock.now()
    };
    let mut facts = EventFacts {
        provider_message_id: Some(s.provider_message_id.to_owned()),
        sent_at,
        reason: s.reason.clone(),
        attempts: u32::try_from(calls).unwrap_or(0),
        ..Default::default()
    };
    // A failure after the provider accepted the message is permanent: the attempt
    // fails and the message moves to the step's next channel.
    let moves_on =
        kind == MessageStatus::Failed && AttemptState::parse(&state) == AttemptState::Sent;
    if moves_on {
        let reason = format!("permanent: {}", s.reason.as_deref().unwrap_or("failed"));
        let update = Update {
            reason: Some(reason.clone()),
            ..Update::new(&cmd, AttemptState::Failed)
        };
        store::update(&mut *tx, channel, &[update]).await?;
        facts.reason = Some(reason);
    }
    let out = store::ended(
        &cmd,
        channel,
        s.provider,
        kind,
        at,
        facts,
        moves_on,
        traceparent,
    )?;
    OUTBOX.enqueue(&mut *tx, &out).await?;
    Ok(true)
}

/// Applies waiting statuses whose sends are now recorded, until `cancel`; replicas
/// share the work (`SKIP LOCKED`). Statuses older than [`EARLY_STATUS_TTL`] that never
/// matched a send are dropped (checked every [`EARLY_STATUS_EXPIRY`]).
pub async fn run_early_statuses(d: Arc<Dispatcher>, cancel: CancellationToken) {
    let mut tick = tokio::time::interval(EARLY_STATUS_SWEEP);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut expiry = tokio::time::interval(EARLY_STATUS_EXPIRY);
    expiry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let result = tokio::select! {
            () = cancel.cancelled() => return,
            _ = tick.tick() => sweep_early_statuses(&d).await,
            _ = expiry.tick() => expire_early_statuses(&d).await.map(|_| 0),
        };
        match result {
            Ok(0) => {}
            Ok(n) => {
                tracing::debug!(applied = n, "early statuses applied");
                d.wake_relay();
            }
            Err(e) => tracing::warn!(error = %e, "applying early statuses failed; retrying"),
        }
    }
}

/// One pass of [`run_early_statuses`]: takes (deletes, in one statement) the waiting
/// statuses whose sends are recorded and applies them in the same transaction; how
/// many.
async fn sweep_early_statuses(d: &Dispatcher) -> Result<usize, DispatchError> {
    let mut tx = d.pool.begin().await?;
    let ready: Vec<(String, String, String, Option<String>)> = sqlx::query_as(
        "DELETE FROM dispatch.early_statuses WHERE (provider, provider_message_id, status) IN ( \
           SELECT e.provider, e.provider_message_id, e.status FROM dispatch.early_statuses e \
           WHERE EXISTS (SELECT 1 FROM dispatch.attempts a \
                         WHERE a.provider = e.provider AND a.provider_message_id = e.provider_message_id) \
           ORDER BY e.received_at LIMIT 100 FOR UPDATE OF e SKIP LOCKED) \
         RETURNING provider, provider_message_id, status, reason",
    )
    .fetch_all(&mut *tx)
    .await?;
    for (provider, id, status, reason) in &ready {
        let Some(kind) = status_event(status) else {
            continue;
        };
        let report = StatusReport {
            provider,
            provider_message_id: id,
            status,
            reason: reason.clone(),
        };
        apply_status_in(&mut tx, d, &report, kind).await?;
    }
    tx.commit().await?;
    Ok(ready.len())
}

/// Drops statuses that waited longer than [`EARLY_STATUS_TTL`] for a send.
async fn expire_early_statuses(d: &Dispatcher) -> Result<(), DispatchError> {
    let expired = sqlx::query("DELETE FROM dispatch.early_statuses WHERE received_at < $1")
        .bind(d.clock.now() - EARLY_STATUS_TTL)
        .execute(&d.pool)
        .await?
        .rows_affected();
    if expired > 0 {
        tracing::info!(
            dropped = expired,
            "statuses for messages regua did not send dropped"
        );
    }
    Ok(())
}

// ---- Twilio ----

/// Why a callback was refused.
enum Refused {
    Unauthorized(&'static str),
    BadRequest(&'static str),
}

impl IntoResponse for Refused {
    fn into_response(self) -> Response {
        match self {
            Refused::Unauthorized(why) => unauthorized(why),
            Refused::BadRequest(why) => (StatusCode::BAD_REQUEST, why).into_response(),
        }
    }
}

/// Parses and verifies a Twilio callback posted to `path`.
fn twilio_params(
    d: &Dispatcher,
    path: &str,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Vec<(String, String)>, Refused> {
    let token = d.config.providers.twilio_auth_token.expose();
    let Some(signature) = headers
        .get("X-Twilio-Signature")
        .and_then(|v| v.to_str().ok())
    else {
        return Err(Refused::Unauthorized("missing X-Twilio-Signature"));
    };
    let params: Vec<(String, String)> =
        serde_urlencoded::from_bytes(body).map_err(|_| Refused::BadRequest("not a form body"))?;
    if token.is_empty() || !sign::twilio_verify(token, &d.public(path), &params, signature) {
        return Err(Refused::Unauthorized("bad X-Twilio-Signature"));
    }
    Ok(params)
}

fn param<'a>(params: &'a [(String, String)], name: &str) -> Option<&'a str> {
    params
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

async fn twilio_status(
    State(d): State<Arc<Dispatcher>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let params = match twilio_params(&d, TWILIO_STATUS, &headers, &body) {
        Ok(p) => p,
        Err(r) => return r.into_response(),
    };
    let (Some(sid), Some(status)) = (
        param(&params, "MessageSid"),
        param(&params, "MessageStatus"),
    ) else {
        return (
            StatusCode::BAD_REQUEST,
            "MessageSid and MessageStatus are required",
        )
            .into_response();
    };
    let status = match status {
        "delivered" => "delivered",
        "read" => "read",
        "failed" | "undelivered" => "failed",
        _ => return StatusCode::NO_CONTENT.into_response(),
    };
    let reason = param(&params, "ErrorCode").map(|c| format!("twilio error {c}"));
    match apply_status(
        &d,
        StatusReport {
            provider: sms::PROVIDER,
            provider_message_id: sid,
            status,
            reason,
        },
    )
    .await
    {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => internal(&e),
    }
}

async fn twilio_inbound(
    State(d): State<Arc<Dispatcher>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let params = match twilio_params(&d, TWILIO_INBOUND, &headers, &body) {
        Ok(p) => p,
        Err(r) => return r.into_response(),
    };
    let (Some(from), Some(text)) = (param(&params, "From"), param(&params, "Body")) else {
        return (StatusCode::BAD_REQUEST, "From and Body are required").into_response();
    };
    if let Err(e) = apply_reply(&d, Channel::Sms, &phone_digits(from), text, "sms_reply").await {
        return internal(&e);
    }
    // An empty TwiML answer: no auto-reply from regua.
    (
        [(header::CONTENT_TYPE, "text/xml")],
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Response></Response>",
    )
        .into_response()
}

// ---- WhatsApp ----

#[derive(Deserialize)]
struct Handshake {
    #[serde(rename = "hub.mode")]
    mode: Option<String>,
    #[serde(rename = "hub.verify_token")]
    verify_token: Option<String>,
    #[serde(rename = "hub.challenge")]
    challenge: Option<String>,
}

async fn whatsapp_handshake(
    State(d): State<Arc<Dispatcher>>,
    Query(q): Query<Handshake>,
) -> Response {
    let expected = d.config.providers.whatsapp_verify_token.expose();
    match (q.mode.as_deref(), q.verify_token, q.challenge) {
        (Some("subscribe"), Some(token), Some(challenge))
            if !expected.is_empty() && token == expected =>
        {
            challenge.into_response()
        }
        _ => unauthorized("bad hub.verify_token"),
    }
}

#[derive(Deserialize)]
struct Notification {
    #[serde(default)]
    entry: Vec<Entry>,
}

#[derive(Deserialize)]
struct Entry {
    #[serde(default)]
    changes: Vec<Change>,
}

#[derive(Deserialize)]
struct Change {
    value: ChangeValue,
}

#[derive(Deserialize)]
struct ChangeValue {
    #[serde(default)]
    statuses: Vec<WaStatus>,
    #[serde(default)]
    messages: Vec<WaMessage>,
}

#[derive(Deserialize)]
struct WaStatus {
    id: String,
    status: String,
    #[serde(default)]
    errors: Vec<WaError>,
}

#[derive(Deserialize)]
struct WaError {
    code: Option<i64>,
    title: Option<String>,
}

#[derive(Deserialize)]
struct WaMessage {
    from: String,
    #[serde(default)]
    text: Option<WaText>,
    #[serde(default)]
    button: Option<WaButton>,
}

#[derive(Deserialize)]
struct WaText {
    body: String,
}

#[derive(Deserialize)]
struct WaButton {
    text: String,
}

async fn whatsapp_post(
    State(d): State<Arc<Dispatcher>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some(signature) = headers
        .get("X-Hub-Signature-256")
        .and_then(|v| v.to_str().ok())
    else {
        return unauthorized("missing X-Hub-Signature-256");
    };
    if !sign::hub_verify(
        d.config.providers.whatsapp_app_secret.expose(),
        &body,
        signature,
    ) {
        return unauthorized("bad X-Hub-Signature-256");
    }
    let Ok(n) = serde_json::from_slice::<Notification>(&body) else {
        return (StatusCode::BAD_REQUEST, "not a WhatsApp notification").into_response();
    };
    for change in n.entry.iter().flat_map(|e| &e.changes) {
        for s in &change.value.statuses {
            let reason = s.errors.first().map(|e| {
                format!(
                    "whatsapp error {} {}",
                    e.code.map(|c| c.to_string()).unwrap_or_default(),
                    e.title.clone().unwrap_or_default()
                )
            });
            let report = StatusReport {
                provider: whatsapp::PROVIDER,
                provider_message_id: &s.id,
                status: &s.status,
                reason,
            };
            if let Err(e) = apply_status(&d, report).await {
                return internal(&e);
            }
        }
        for m in &change.value.messages {
            let text = m
                .text
                .as_ref()
                .map(|t| t.body.as_str())
                .or(m.button.as_ref().map(|b| b.text.as_str()))
                .unwrap_or("");
            if let Err(e) = apply_reply(
                &d,
                Channel::Whatsapp,
                &phone_digits(&m.from),
                text,
                "whatsapp_reply",
            )
            .await
            {
                return internal(&e);
            }
        }
    }
    StatusCode::OK.into_response()
}

// ---- One-click unsubscribe ----

async fn unsubscribe_page(State(d): State<Arc<Dispatcher>>, Path(token): Path<String>) -> Response {
    if sign::link_verify(&d.config.link_secret, &token).is_none() {
        return unauthorized("bad unsubscribe link");
    }
    Html(format!(
        "<!doctype html><html><body style=\"font-family:sans-serif\">\
         <p>Deseja parar de receber e-mails de cobrança? / Stop receiving collection e-mails?</p>\
         <form method=\"post\" action=\"{UNSUBSCRIBE}/{token}\">\
         <input type=\"hidden\" name=\"List-Unsubscribe\" value=\"One-Click\">\
         <button type=\"submit\">Descadastrar / Unsubscribe</button></form></body></html>"
    ))
    .into_response()
}

async fn unsubscribe(State(d): State<Arc<Dispatcher>>, Path(token): Path<String>) -> Response {
    let Some(subject) = sign::link_verify(&d.config.link_secret, &token) else {
        return unauthorized("bad unsubscribe link");
    };
    let now = d.clock.now();
    let result = async {
        let mut tx = d.pool.begin().await?;
        store::set_opt_out(
            &mut tx,
            &subject.tenant,
            &subject.customer_id,
            subject.channel,
            "email_unsubscribe",
            now,
            true,
        )
        .await?;
        tx.commit().await?;
        Ok::<(), DispatchError>(())
    }
    .await;
    match result {
        Ok(()) => {
            d.wake_relay();
            Html(
                "<!doctype html><html><body style=\"font-family:sans-serif\">\
                 <p>Pronto: você não receberá mais e-mails de cobrança deste credor. / Done: you will not receive these e-mails any more.</p>\
                 </body></html>",
            )
            .into_response()
        }
        Err(e) => internal(&e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_are_read_as_whole_words() {
        for stop in ["SAIR", "parar", " Stop ", "cancelar.", "PARAR!"] {
            assert_eq!(reply_intent(stop), ReplyIntent::OptOut, "{stop}");
        }
        for start in ["voltar", "START"] {
            assert_eq!(reply_intent(start), ReplyIntent::OptIn, "{start}");
        }
        for other in ["não quero parar de pagar", "ok", ""] {
            assert_eq!(reply_intent(other), ReplyIntent::Other, "{other}");
        }
    }
}
