//! HTTP plumbing shared by every service: serving with graceful shutdown, `/healthz`,
//! `/readyz` and `/metrics`, and a span per request that continues the caller's W3C trace.

use std::net::SocketAddr;
use std::time::Duration;

use async_nats::jetstream;
use axum::Router;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use serde::Serialize;
use serde_json::{Value, json};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::{PlatformError, nats};

/// An RFC 9457 `application/problem+json` answer, with a stable `type` per kind and
/// field-level `errors` for validation (boxed: it travels in `Err` through handlers).
#[derive(Debug)]
pub struct Problem(Box<ProblemBody>);

#[derive(Debug, Serialize)]
struct ProblemBody {
    #[serde(rename = "type")]
    kind: String,
    title: String,
    status: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    detail: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    errors: Vec<Value>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    warnings: Vec<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    message_id: Option<String>,
}

fn values<T: Serialize>(items: &[T]) -> Vec<Value> {
    items
        .iter()
        .map(|i| serde_json::to_value(i).unwrap_or(Value::Null))
        .collect()
}

impl Problem {
    /// A problem of kind `urn:regua:problem:<kind>`.
    pub fn new(
        status: StatusCode,
        kind: &str,
        title: &str,
        detail: impl Into<Option<String>>,
    ) -> Self {
        Problem(Box::new(ProblemBody {
            kind: format!("urn:regua:problem:{kind}"),
            title: title.to_owned(),
            status: status.as_u16(),
            detail: detail.into(),
            errors: Vec::new(),
            warnings: Vec::new(),
            message_id: None,
        }))
    }

    /// 422 with field-level `errors` (each `{field, code, message}`) and `warnings`.
    pub fn invalid<E: Serialize, W: Serialize>(errors: &[E], warnings: &[W]) -> Self {
        let mut p = Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation",
            "the request was rejected",
            Some("see errors for each field".to_owned()),
        );
        p.0.errors = values(errors);
        p.0.warnings = values(warnings);
        p
    }

    pub fn with_message_id(mut self, message_id: Option<String>) -> Self {
        self.0.message_id = message_id;
        self
    }

    /// 500; the cause is logged here, once, and not shown to the caller.
    pub fn internal(e: impl std::fmt::Display) -> Self {
        tracing::error!(error = %e, "request failed");
        Problem::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error",
            None,
        )
    }

    /// 503: a dependency is down; the caller should retry.
    pub fn unavailable(e: impl std::fmt::Display) -> Self {
        tracing::warn!(error = %e, "dependency unavailable");
        Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "the message could not be made durable; retry",
            None,
        )
    }

    pub fn not_found(what: &str) -> Self {
        Problem::new(
            StatusCode::NOT_FOUND,
            "not-found",
            &format!("{what} not found"),
            None,
        )
    }

    pub fn status(&self) -> u16 {
        self.0.status
    }

    /// The problem document, as JSON.
    pub fn body(&self) -> Value {
        serde_json::to_value(&self.0).unwrap_or(Value::Null)
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let status =
            StatusCode::from_u16(self.0.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = serde_json::to_vec(&self.0).unwrap_or_default();
        (
            status,
            [(header::CONTENT_TYPE, "application/problem+json")],
            body,
        )
            .into_response()
    }
}

/// What readiness checks.
#[derive(Clone)]
pub struct Health {
    pub pool: PgPool,
    pub client: async_nats::Client,
    pub js: jetstream::Context,
}

/// `/healthz` (the process answers), `/readyz` (Postgres and NATS reachable, the
/// platform streams present) and `/metrics` (Prometheus).
pub fn health_router(health: Health) -> Router {
    Router::new()
        .route("/healthz", get(|| async { (StatusCode::OK, "ok") }))
        .route("/readyz", get(ready))
        .route("/metrics", get(metrics))
        .with_state(health)
}

/// The Prometheus text exposition (crate::metrics).
async fn metrics() -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        crate::metrics::render(),
    )
        .into_response()
}

async fn ready(State(h): State<Health>) -> Response {
    let postgres = tokio::time::timeout(
        Duration::from_secs(2),
        sqlx::query("SELECT 1").execute(&h.pool),
    )
    .await
    .is_ok_and(|r| r.is_ok());
    let nats_connected = h.client.connection_state() == async_nats::connection::State::Connected;
    let streams = nats_connected
        && tokio::time::timeout(Duration::from_secs(2), nats::streams_present(&h.js))
            .await
            .unwrap_or(false);
    let ok = postgres && nats_connected && streams;
    let body = json!({
        "postgres": if postgres { "ok" } else { "unreachable" },
        "nats": if nats_connected { "ok" } else { "disconnected" },
        "streams": if streams { "ok" } else { "missing" },
    });
    let status = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, axum::Json(body)).into_response()
}

struct HttpExtractor<'a>(&'a HeaderMap);

impl Extractor for HttpExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

/// Wraps every request in a server span with HTTP semantic-convention attributes,
/// continuing a `traceparent` sent by the caller.
pub async fn trace_request(request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let method = request.method().to_string();
    let span = tracing::info_span!(
        "http",
        otel.name = %format!("{method} {route}"),
        otel.kind = "server",
        http.request.method = %method,
        http.route = %route,
        url.path = %request.uri().path(),
        http.response.status_code = tracing::field::Empty,
        regua.tenant = tracing::field::Empty,
    );
    let parent = TraceContextPropagator::new().extract(&HttpExtractor(request.headers()));
    if opentelemetry::trace::TraceContextExt::span(&parent)
        .span_context()
        .is_valid()
    {
        span.set_parent(parent).ok();
    }
    let response = next.run(request).instrument(span.clone()).await;
    span.record("http.response.status_code", response.status().as_u16());
    response
}

/// What one replica's HTTP server accepts: every route's body limit, a client's time to
/// send its headers and to finish a request, and how many requests run at once.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_body_bytes: usize,
    pub header_timeout: Duration,
    pub request_timeout: Duration,
    pub max_concurrency: usize,
}

impl Limits {
    pub fn of(config: &crate::Config) -> Limits {
        Limits {
            max_body_bytes: config.http.max_body_bytes,
            header_timeout: config.http.header_timeout,
            request_timeout: config.http.request_timeout,
            max_concurrency: config.http.max_concurrency,
        }
    }
}

/// Serves `router` (plus health routes and request tracing) until `cancel`, then lets
/// requests in flight finish.
pub async fn serve(
    addr: SocketAddr,
    router: Router,
    health: Health,
    limits: Limits,
    cancel: CancellationToken,
) -> Result<(), PlatformError> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| PlatformError::Http(format!("bind {addr}: {e}")))?;
    serve_on(listener, router, health, limits, cancel).await
}

/// Like [`serve`], on a listener the caller bound (tests bind port 0).
///
/// Every route's body is limited to `limits.max_body_bytes` (413 beyond); a request
/// that takes longer than `limits.request_timeout` (a slow body included) gets 408; past
/// `limits.max_concurrency` requests at once the next get 503 with `Retry-After` (the
/// health routes are not counted, so probes still answer under load); and a connection
/// that has not sent a request's headers within `limits.header_timeout` is closed.
pub async fn serve_on(
    listener: tokio::net::TcpListener,
    router: Router,
    health: Health,
    limits: Limits,
    cancel: CancellationToken,
) -> Result<(), PlatformError> {
    use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
    use hyper_util::server::conn::auto;
    use hyper_util::server::graceful::GracefulShutdown;
    use hyper_util::service::TowerToHyperService;

    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(limits.max_concurrency));
    let timeout = limits.request_timeout;
    let app = router
        .layer(middleware::from_fn(move |req: Request, next: Next| {
            let slots = std::sync::Arc::clone(&slots);
            async move {
                let Ok(_slot) = slots.try_acquire_owned() else {
                    return busy();
                };
                match tokio::time::timeout(timeout, next.run(req)).await {
                    Ok(response) => response,
                    Err(_) => Problem::new(
                        StatusCode::REQUEST_TIMEOUT,
                        "request-timeout",
                        &format!("the request took longer than {} s", timeout.as_secs()),
                        None,
                    )
                    .into_response(),
                }
            }
        }))
        .merge(health_router(health))
        .layer(axum::extract::DefaultBodyLimit::max(limits.max_body_bytes))
        .layer(middleware::from_fn(trace_request));
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "http listening");
    }
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout);
    let graceful = GracefulShutdown::new();
    loop {
        let (stream, _) = tokio::select! {
            () = cancel.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors, say: wait a moment rather than spin.
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let service = TowerToHyperService::new(app.clone());
        let conn = builder
            .serve_connection_with_upgrades(TokioIo::new(stream), service)
            .into_owned();
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "http connection ended with an error");
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

/// 503 with `Retry-After`: this replica serves as many requests as it may.
fn busy() -> Response {
    let mut r = Problem::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "busy",
        "too many requests in flight on this replica; retry shortly",
        None,
    )
    .into_response();
    r.headers_mut()
        .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
    r
}
