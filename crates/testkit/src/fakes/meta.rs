//! A Meta-shaped HTTP server: the WhatsApp Cloud API's `POST /{phone_number_id}/
//! messages` (bearer token, JSON) with Graph's answers and error bodies, and webhook
//! notifications (statuses, inbound messages) signed with `X-Hub-Signature-256`.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use hmac::{Hmac, Mac};
use serde_json::{Value, json};

use super::twilio::unreachable_key;

/// One WhatsApp message the fake accepted.
#[derive(Debug, Clone)]
pub struct WaSent {
    pub id: String,
    pub to: String,
    /// The request body as sent.
    pub body: Value,
    pub at: Instant,
    /// Wall-clock time the request arrived (before any configured latency), to compare
    /// with times other processes recorded.
    pub received_at: chrono::DateTime<chrono::Utc>,
}

impl WaSent {
    pub fn template_name(&self) -> String {
        self.body["template"]["name"]
            .as_str()
            .unwrap_or("")
            .to_owned()
    }

    pub fn language(&self) -> String {
        self.body["template"]["language"]["code"]
            .as_str()
            .unwrap_or("")
            .to_owned()
    }

    /// The body parameters' texts.
    pub fn params(&self) -> Vec<String> {
        self.body["template"]["components"][0]["parameters"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|p| p["text"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    }
}

#[derive(Default)]
struct Inner {
    sent: Vec<WaSent>,
    requests: usize,
    /// Refused at once: 131026.
    undeliverable: HashSet<String>,
    /// Accepted, then reported failed (131026) in a status webhook.
    fail_later: HashSet<String>,
    /// Accepted, but reported failed in a status webhook delivered before the API
    /// call returns (callbacks race the reply in production too).
    fail_before_reply: HashSet<String>,
    throttle: usize,
    retry_after_secs: u64,
    webhook: Option<String>,
    latency: Duration,
    next: u64,
}

/// The fake Cloud API.
#[derive(Clone)]
pub struct FakeMeta {
    pub addr: SocketAddr,
    pub phone_number_id: String,
    pub token: String,
    pub app_secret: String,
    inner: Arc<Mutex<Inner>>,
    client: reqwest::Client,
}

type Shared = (Arc<Mutex<Inner>>, String, String, String, reqwest::Client);

impl FakeMeta {
    pub async fn start(
        phone_number_id: &str,
        token: &str,
        app_secret: &str,
    ) -> std::io::Result<FakeMeta> {
        FakeMeta::start_on("127.0.0.1:0", phone_number_id, token, app_secret).await
    }

    /// Like [`FakeMeta::start`], on `addr`.
    pub async fn start_on(
        addr: &str,
        phone_number_id: &str,
        token: &str,
        app_secret: &str,
    ) -> std::io::Result<FakeMeta> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let inner = Arc::new(Mutex::new(Inner::default()));
        regua_platform::tls::init();
        let client = reqwest::Client::new();
        let shared: Shared = (
            Arc::clone(&inner),
            phone_number_id.to_owned(),
            token.to_owned(),
            app_secret.to_owned(),
            client.clone(),
        );
        let app = Router::new()
            .route("/{phone_number_id}/messages", post(send))
            .with_state(shared);
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(FakeMeta {
            addr,
            phone_number_id: phone_number_id.to_owned(),
            token: token.to_owned(),
            app_secret: app_secret.to_owned(),
            inner,
            client,
        })
    }

    /// The API base to configure (`REGUA_WHATSAPP_API_BASE`).
    pub fn base(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Where status notifications go (regua's `/webhooks/whatsapp`).
    pub fn webhook(&self, url: &str) {
        self.lock().webhook = Some(url.to_owned());
    }

    pub fn sent(&self) -> Vec<WaSent> {
        self.lock().sent.clone()
    }

    pub fn requests(&self) -> usize {
        self.lock().requests
    }

    /// Refuses `wa_id` (digits) at once with 131026.
    pub fn undeliverable(&self, wa_id: &str) {
        self.lock().undeliverable.insert(wa_id.to_owned());
    }

    /// Accepts `wa_id`, then notifies `failed` (131026).
    pub fn fail_later(&self, wa_id: &str) {
        self.lock().fail_later.insert(wa_id.to_owned());
    }

    /// Accepts `wa_id`, but notifies `failed` (131026) and waits for the webhook's
    /// answer before the API call returns: the status beats the sender's own record.
    pub fn fail_before_reply(&self, wa_id: &str) {
        self.lock().fail_before_reply.insert(wa_id.to_owned());
    }

    pub fn throttle_next(&self, n: usize, retry_after_secs: u64) {
        let mut s = self.lock();
        s.throttle = n;
        s.retry_after_secs = retry_after_secs;
    }

    pub fn latency(&self, d: Duration) {
        self.lock().latency = d;
    }

    /// Posts an inbound text message from `wa_id` to the webhook.
    pub async fn inbound(&self, url: &str, wa_id: &str, text: &str) -> reqwest::Result<u16> {
        let body = json!({
            "object": "whatsapp_business_account",
            "entry": [{"id": "WABA", "changes": [{"field": "messages", "value": {
                "messaging_product": "whatsapp",
                "metadata": {"display_phone_number": "15550000000", "phone_number_id": self.phone_number_id},
                "contacts": [{"profile": {"name": "Cliente"}, "wa_id": wa_id}],
                "messages": [{"from": wa_id, "id": "wamid.inbound1", "timestamp": "1764000000",
                              "type": "text", "text": {"body": text}}]
            }}]}]
        });
        post_signed(&self.client, &self.app_secret, url, &body, None).await
    }

    /// Posts a status notification, signed with `signature` or, when `None`, correctly.
    pub async fn status(
        &self,
        url: &str,
        id: &str,
        status: &str,
        signature: Option<&str>,
    ) -> reqwest::Result<u16> {
        let body = status_body(&self.phone_number_id, id, "0", status);
        post_signed(&self.client, &self.app_secret, url, &body, signature).await
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// `sha256=<hex HMAC-SHA256(app_secret, body)>`.
pub fn hub_signature(app_secret: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(app_secret.as_bytes())
        .unwrap_or_else(|_| unreachable_key());
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

fn status_body(phone_number_id: &str, id: &str, recipient: &str, status: &str) -> Value {
    let mut s =
        json!({"id": id, "status": status, "timestamp": "1764000000", "recipient_id": recipient});
    if status == "failed" {
        s["errors"] = json!([{"code": 131026, "title": "Message undeliverable"}]);
    }
    json!({
        "object": "whatsapp_business_account",
        "entry": [{"id": "WABA", "changes": [{"field": "messages", "value": {
            "messaging_product": "whatsapp",
            "metadata": {"display_phone_number": "15550000000", "phone_number_id": phone_number_id},
            "statuses": [s]
        }}]}]
    })
}

async fn post_signed(
    client: &reqwest::Client,
    app_secret: &str,
    url: &str,
    body: &Value,
    signature_override: Option<&str>,
) -> reqwest::Result<u16> {
    let bytes = body.to_string();
    let sig = signature_override
        .map(str::to_owned)
        .unwrap_or_else(|| hub_signature(app_secret, bytes.as_bytes()));
    let r = client
        .post(url)
        .header("X-Hub-Signature-256", sig)
        .header(header::CONTENT_TYPE, "application/json")
        .body(bytes)
        .send()
        .await?;
    Ok(r.status().as_u16())
}

fn graph_error(status: StatusCode, code: u32, message: &str) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        json!({"error": {
            "message": message,
            "type": "OAuthException",
            "code": code,
            "error_data": {"messaging_product": "whatsapp", "details": message},
            "fbtrace_id": "Afake000000"
        }})
        .to_string(),
    )
        .into_response()
}

async fn send(
    State((inner, phone_number_id, token, app_secret, client)): State<Shared>,
    Path(path_id): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    // The provider's own clock: a fake stands outside regua and its injected clock.
    #[allow(clippy::disallowed_methods)]
    let received_at = chrono::Utc::now();
    let lock = || inner.lock().unwrap_or_else(|p| p.into_inner());
    let latency = {
        let mut s = lock();
        s.requests += 1;
        s.latency
    };
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    let bearer = format!("Bearer {token}");
    if headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        != Some(bearer.as_str())
    {
        return graph_error(StatusCode::UNAUTHORIZED, 190, "Invalid OAuth access token.");
    }
    if path_id != phone_number_id {
        return graph_error(StatusCode::BAD_REQUEST, 100, "Unsupported post request.");
    }
    let Ok(request) = serde_json::from_slice::<Value>(&body) else {
        return graph_error(StatusCode::BAD_REQUEST, 100, "Invalid parameter");
    };
    if request["messaging_product"] != "whatsapp" || request["type"] != "template" {
        return graph_error(StatusCode::BAD_REQUEST, 100, "Invalid parameter");
    }
    let to = request["to"].as_str().unwrap_or("").to_owned();
    {
        let mut s = lock();
        if s.throttle > 0 {
            s.throttle -= 1;
            let secs = s.retry_after_secs;
            let mut r = graph_error(
                StatusCode::TOO_MANY_REQUESTS,
                130429,
                "(#130429) Rate limit hit",
            );
            if let Ok(v) = header::HeaderValue::from_str(&secs.to_string()) {
                r.headers_mut().insert(header::RETRY_AFTER, v);
            }
            return r;
        }
        if s.undeliverable.contains(&to) {
            return graph_error(
                StatusCode::BAD_REQUEST,
                131026,
                "(#131026) Message undeliverable",
            );
        }
    }
    let (id, webhook, fail, first) = {
        let mut s = lock();
        s.next += 1;
        let id = format!("wamid.FAKE{:024X}", s.next);
        s.sent.push(WaSent {
            id: id.clone(),
            to: to.clone(),
            body: request.clone(),
            at: Instant::now(),
            received_at,
        });
        (
            id,
            s.webhook.clone(),
            s.fail_later.contains(&to),
            s.fail_before_reply.contains(&to),
        )
    };
    if let (true, Some(url)) = (first, &webhook) {
        let body = status_body(&phone_number_id, &id, &to, "failed");
        let _ = post_signed(&client, &app_secret, url, &body, None).await;
    }
    if let (false, Some(url)) = (first, webhook) {
        let (id, to) = (id.clone(), to.clone());
        tokio::spawn(async move {
            let statuses: &[&str] = if fail {
                &["failed"]
            } else {
                &["sent", "delivered", "read"]
            };
            for status in statuses {
                tokio::time::sleep(Duration::from_millis(20)).await;
                let body = status_body(&phone_number_id, &id, &to, status);
                let _ = post_signed(&client, &app_secret, &url, &body, None).await;
            }
        });
    }
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        json!({
            "messaging_product": "whatsapp",
            "contacts": [{"input": to, "wa_id": to}],
            "messages": [{"id": id, "message_status": "accepted"}]
        })
        .to_string(),
    )
        .into_response()
}
