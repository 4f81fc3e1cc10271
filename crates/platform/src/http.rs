//! HTTP plumbing shared by every service: serving with graceful shutdown, `/healthz`
//! and `/readyz`, and a span per request that continues the caller's W3C trace.

use std::net::SocketAddr;
use std::time::Duration;

use async_nats::jetstream;
use axum::Router;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use serde_json::json;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::{PlatformError, nats};

/// What readiness checks.
#[derive(Clone)]
pub struct Health {
    pub pool: PgPool,
    pub client: async_nats::Client,
    pub js: jetstream::Context,
}

/// `/healthz` (the process answers) and `/readyz` (Postgres and NATS reachable, the
/// platform streams present).
pub fn health_router(health: Health) -> Router {
    Router::new()
        .route("/healthz", get(|| async { (StatusCode::OK, "ok") }))
        .route("/readyz", get(ready))
        .with_state(health)
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

/// Serves `router` (plus health routes and request tracing) until `cancel`, then lets
/// requests in flight finish.
pub async fn serve(
    addr: SocketAddr,
    router: Router,
    health: Health,
    cancel: CancellationToken,
) -> Result<(), PlatformError> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| PlatformError::Http(format!("bind {addr}: {e}")))?;
    serve_on(listener, router, health, cancel).await
}

/// Like [`serve`], on a listener the caller bound (tests bind port 0).
pub async fn serve_on(
    listener: tokio::net::TcpListener,
    router: Router,
    health: Health,
    cancel: CancellationToken,
) -> Result<(), PlatformError> {
    let app = router
        .merge(health_router(health))
        .layer(middleware::from_fn(trace_request));
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "http listening");
    }
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { cancel.cancelled().await })
        .await
        .map_err(|e| PlatformError::Http(e.to_string()))
}
