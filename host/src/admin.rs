//! The admin endpoint: liveness, readiness, Prometheus metrics and the
//! handlers' state, over HTTP.
//!
//! It listens on loopback unless configured otherwise, and then requires a
//! bearer token (config validation enforces that). It reads the host's state;
//! it never touches AMQP or the sandbox itself.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::json;

use crate::server::Host;
use crate::shutdown;

#[derive(Clone, Debug)]
struct AdminState {
    host: Host,
    token: Option<Arc<str>>,
}

/// Serves the admin endpoint on `listener` until shutdown.
pub async fn serve(
    listener: tokio::net::TcpListener,
    host: Host,
    token: Option<String>,
    mut shutdown: shutdown::Signal,
) -> std::io::Result<()> {
    let state = AdminState {
        host,
        token: token.map(Arc::from),
    };
    let app = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/handlers", get(handlers))
        .layer(middleware::from_fn_with_state(state.clone(), auth))
        .with_state(state);
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            let _ = shutdown.wait_for(|s| *s).await;
        })
        .await
}

/// Binds the admin address, saying which one in the error.
pub async fn bind(addr: SocketAddr) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on admin.listen {addr}: {e}"))
}

async fn auth(State(s): State<AdminState>, req: Request, next: Next) -> Response {
    if let Some(token) = &s.token {
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if given != Some(token) {
            return (StatusCode::UNAUTHORIZED, "missing or wrong bearer token\n").into_response();
        }
    }
    next.run(req).await
}

async fn readyz(State(s): State<AdminState>) -> Response {
    let h = &s.host.shared.health;
    let amqp = h.amqp.load(std::sync::atomic::Ordering::Relaxed);
    let dedup = h.dedup.load(std::sync::atomic::Ordering::Relaxed);
    let body = json!({ "ready": amqp && dedup, "amqp": amqp, "dedup": dedup }).to_string() + "\n";
    let code = if amqp && dedup {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

async fn metrics(State(s): State<AdminState>) -> Response {
    let body = s.host.shared.metrics.encode();
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        body,
    )
        .into_response()
}

async fn handlers(State(s): State<AdminState>) -> Response {
    let m = &s.host.shared.metrics;
    let list: Vec<_> = s
        .host
        .handlers
        .iter()
        .map(|h| {
            let name = &h.cfg.name;
            let counts: serde_json::Map<String, serde_json::Value> = [
                "ack",
                "retry",
                "dead_letter",
                "dedup_hit",
                "deferred",
                "requeued",
            ]
            .iter()
            .map(|o| (o.to_string(), json!(m.count(name, o))))
            .collect();
            json!({
                "name": name,
                "queue": h.cfg.queue,
                "digest": h.module.load().digest().to_string(),
                "counters": counts,
            })
        })
        .collect();
    (
        [(header::CONTENT_TYPE, "application/json")],
        serde_json::to_string_pretty(&list).unwrap_or_default() + "\n",
    )
        .into_response()
}
