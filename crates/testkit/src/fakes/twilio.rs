//! A Twilio-shaped HTTP server: the Messages API (`POST /2010-04-01/Accounts/{sid}/
//! Messages.json`, form-encoded, basic auth) with Twilio's answers and error bodies,
//! and status callbacks signed with `X-Twilio-Signature` like Twilio signs them.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use base64::Engine;
use hmac::{Hmac, Mac};
use serde_json::json;

/// One SMS the fake accepted.
#[derive(Debug, Clone)]
pub struct Sms {
    pub sid: String,
    pub to: String,
    pub from: String,
    pub body: String,
    pub status_callback: Option<String>,
    pub at: Instant,
}

#[derive(Default)]
struct Inner {
    sent: Vec<Sms>,
    /// Every request, accepted or not.
    requests: usize,
    /// The `To` of every request, in arrival order, before any answer.
    received: Vec<String>,
    invalid: HashSet<String>,
    /// Numbers accepted, then reported `undelivered` (30003) in the callback.
    undeliverable: HashSet<String>,
    throttle: usize,
    retry_after_secs: u64,
    server_errors: usize,
    latency: Duration,
    callbacks: bool,
    next: u64,
}

/// The fake Twilio.
#[derive(Clone)]
pub struct FakeTwilio {
    pub addr: SocketAddr,
    pub sid: String,
    pub token: String,
    inner: Arc<Mutex<Inner>>,
    client: reqwest::Client,
}

type Shared = (Arc<Mutex<Inner>>, String, String, reqwest::Client);

impl FakeTwilio {
    /// Starts on a free loopback port with account `sid` and auth `token`; status
    /// callbacks (sent, delivered) are on.
    pub async fn start(sid: &str, token: &str) -> std::io::Result<FakeTwilio> {
        FakeTwilio::start_on("127.0.0.1:0", sid, token).await
    }

    /// Like [`FakeTwilio::start`], on `addr`.
    pub async fn start_on(addr: &str, sid: &str, token: &str) -> std::io::Result<FakeTwilio> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let inner = Arc::new(Mutex::new(Inner {
            callbacks: true,
            ..Inner::default()
        }));
        regua_platform::tls::init();
        let client = reqwest::Client::new();
        let shared: Shared = (
            Arc::clone(&inner),
            sid.to_owned(),
            token.to_owned(),
            client.clone(),
        );
        let app = Router::new()
            .route("/2010-04-01/Accounts/{sid}/Messages.json", post(create))
            .with_state(shared);
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(FakeTwilio {
            addr,
            sid: sid.to_owned(),
            token: token.to_owned(),
            inner,
            client,
        })
    }

    /// The API base to configure (`REGUA_TWILIO_API_BASE`).
    pub fn base(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn sent(&self) -> Vec<Sms> {
        self.lock().sent.clone()
    }

    pub fn requests(&self) -> usize {
        self.lock().requests
    }

    /// How many messages were accepted (cheaper than `sent().len()`).
    pub fn count(&self) -> usize {
        self.lock().sent.len()
    }

    /// The `To` of every request received, answered or not.
    pub fn received(&self) -> Vec<String> {
        self.lock().received.clone()
    }

    /// Answers 400 / 21211 for `number`.
    pub fn invalid_number(&self, number: &str) {
        self.lock().invalid.insert(number.to_owned());
    }

    /// Accepts `number`, then reports it `undelivered` (30003).
    pub fn undeliverable(&self, number: &str) {
        self.lock().undeliverable.insert(number.to_owned());
    }

    /// Answers the next `n` requests with 429 and `Retry-After: secs`.
    pub fn throttle_next(&self, n: usize, retry_after_secs: u64) {
        let mut s = self.lock();
        s.throttle = n;
        s.retry_after_secs = retry_after_secs;
    }

    /// Answers the next `n` requests with 503.
    pub fn fail_next(&self, n: usize) {
        self.lock().server_errors = n;
    }

    /// Waits this long before answering each request.
    pub fn latency(&self, d: Duration) {
        self.lock().latency = d;
    }

    pub fn callbacks(&self, on: bool) {
        self.lock().callbacks = on;
    }

    /// Posts an inbound SMS to `url`, signed as Twilio signs it.
    pub async fn inbound(&self, url: &str, from: &str, body: &str) -> reqwest::Result<u16> {
        let params = vec![
            (
                "MessageSid".to_owned(),
                "SMinbound0000000000000000000000001".to_owned(),
            ),
            ("AccountSid".to_owned(), self.sid.clone()),
            ("From".to_owned(), from.to_owned()),
            ("To".to_owned(), "+15005550006".to_owned()),
            ("Body".to_owned(), body.to_owned()),
        ];
        post_signed(&self.client, &self.token, url, &params, None).await
    }

    /// Posts a status callback to `url`, signed with `signature` or, when `None`,
    /// correctly.
    pub async fn status(
        &self,
        url: &str,
        sid: &str,
        status: &str,
        signature: Option<&str>,
    ) -> reqwest::Result<u16> {
        let params = vec![
            ("MessageSid".to_owned(), sid.to_owned()),
            ("MessageStatus".to_owned(), status.to_owned()),
            ("AccountSid".to_owned(), self.sid.clone()),
        ];
        post_signed(&self.client, &self.token, url, &params, signature).await
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Twilio's signature: base64 HMAC-SHA1(auth token, URL + sorted name/value pairs).
pub fn signature(token: &str, url: &str, params: &[(String, String)]) -> String {
    let mut sorted: Vec<&(String, String)> = params.iter().collect();
    sorted.sort();
    let mut data = url.to_owned();
    for (k, v) in sorted {
        data.push_str(k);
        data.push_str(v);
    }
    let mut mac =
        Hmac::<sha1::Sha1>::new_from_slice(token.as_bytes()).unwrap_or_else(|_| unreachable_key());
    mac.update(data.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

#[allow(clippy::panic)]
pub(crate) fn unreachable_key<T>() -> T {
    panic!("hmac takes keys of any length")
}

async fn post_signed(
    client: &reqwest::Client,
    token: &str,
    url: &str,
    params: &[(String, String)],
    signature_override: Option<&str>,
) -> reqwest::Result<u16> {
    let sig = signature_override
        .map(str::to_owned)
        .unwrap_or_else(|| signature(token, url, params));
    let r = client
        .post(url)
        .header("X-Twilio-Signature", sig)
        .form(params)
        .send()
        .await?;
    Ok(r.status().as_u16())
}

fn error(status: StatusCode, code: u32, message: &str) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        json!({
            "code": code,
            "message": message,
            "more_info": format!("https://www.twilio.com/docs/errors/{code}"),
            "status": status.as_u16(),
        })
        .to_string(),
    )
        .into_response()
}

async fn create(
    State((inner, sid, token, client)): State<Shared>,
    Path(path_sid): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let lock = || inner.lock().unwrap_or_else(|p| p.into_inner());
    let latency = {
        let mut s = lock();
        s.requests += 1;
        if let Ok(params) = serde_urlencoded::from_bytes::<Vec<(String, String)>>(&body) {
            let to = params
                .iter()
                .find(|(k, _)| k == "To")
                .map(|(_, v)| v.clone());
            s.received.push(to.unwrap_or_default());
        }
        s.latency
    };
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    let expected = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{sid}:{token}"))
    );
    let authorized = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        == Some(expected.as_str());
    if !authorized || path_sid != sid {
        return error(StatusCode::UNAUTHORIZED, 20003, "Authenticate");
    }
    let params: Vec<(String, String)> = serde_urlencoded::from_bytes(&body).unwrap_or_default();
    let get = |k: &str| params.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    {
        let mut s = lock();
        if s.throttle > 0 {
            s.throttle -= 1;
            let secs = s.retry_after_secs;
            let mut r = error(StatusCode::TOO_MANY_REQUESTS, 20429, "Too Many Requests");
            if let Ok(v) = header::HeaderValue::from_str(&secs.to_string()) {
                r.headers_mut().insert(header::RETRY_AFTER, v);
            }
            return r;
        }
        if s.server_errors > 0 {
            s.server_errors -= 1;
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                20500,
                "Internal Server Error",
            );
        }
    }
    let (Some(to), Some(text)) = (get("To"), get("Body")) else {
        return error(
            StatusCode::BAD_REQUEST,
            21604,
            "A 'To' phone number is required.",
        );
    };
    let from = get("From")
        .or_else(|| get("MessagingServiceSid"))
        .unwrap_or_default();
    if lock().invalid.contains(&to) {
        return error(
            StatusCode::BAD_REQUEST,
            21211,
            &format!("The 'To' number {to} is not a valid phone number."),
        );
    }
    let callback = get("StatusCallback");
    let (message_sid, callbacks, undeliverable) = {
        let mut s = lock();
        s.next += 1;
        let message_sid = format!("SM{:032x}", s.next);
        s.sent.push(Sms {
            sid: message_sid.clone(),
            to: to.clone(),
            from: from.clone(),
            body: text.clone(),
            status_callback: callback.clone(),
            at: Instant::now(),
        });
        (message_sid, s.callbacks, s.undeliverable.contains(&to))
    };
    if let (true, Some(url)) = (callbacks, callback) {
        let sid_for_cb = message_sid.clone();
        let account = sid.clone();
        tokio::spawn(async move {
            let finals: &[&str] = if undeliverable {
                &["sent", "undelivered"]
            } else {
                &["sent", "delivered"]
            };
            for status in finals {
                tokio::time::sleep(Duration::from_millis(20)).await;
                let mut params = vec![
                    ("MessageSid".to_owned(), sid_for_cb.clone()),
                    ("MessageStatus".to_owned(), (*status).to_owned()),
                    ("AccountSid".to_owned(), account.clone()),
                ];
                if *status == "undelivered" {
                    params.push(("ErrorCode".to_owned(), "30003".to_owned()));
                }
                let _ = post_signed(&client, &token, &url, &params, None).await;
            }
        });
    }
    (
        StatusCode::CREATED,
        [(header::CONTENT_TYPE, "application/json")],
        json!({
            "sid": message_sid,
            "account_sid": sid,
            "to": to,
            "from": from,
            "body": text,
            "status": "queued",
            "num_segments": "1",
            "direction": "outbound-api",
            "api_version": "2010-04-01",
        })
        .to_string(),
    )
        .into_response()
}
