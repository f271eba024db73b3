//! The admin endpoint: liveness, readiness, Prometheus metrics and the
//! handlers' state, over HTTP, and deploys and rollbacks.
//!
//! `GET /` is a live dashboard of the handlers (`dashboard.rs`).
//!
//! It listens on loopback unless configured otherwise, and then requires a
//! bearer token (config validation enforces that). Every request passes
//! `guard.rs` (token, `Host`, `Origin`, the admin header) first; module
//! uploads are received by `upload.rs` within its bounds. It reads the
//! host's state and calls the registry; it never touches AMQP or the
//! sandbox itself.

mod dashboard;
mod guard;
mod upload;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::Path;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use serde_json::json;

use crate::config::Admin;
use crate::context::Host;
use crate::shutdown;

pub use guard::ADMIN_HEADER;

#[derive(Clone, Debug)]
struct AdminState {
    host: Host,
    guard: guard::Guard,
    uploads: upload::Uploads,
}

/// Serves the admin endpoint on `listener` until shutdown, with the token
/// and limits of `config`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    host: Host,
    config: Admin,
    mut shutdown: shutdown::Signal,
) -> std::io::Result<()> {
    let state = AdminState {
        host,
        guard: guard::Guard::new(config.token(), &config.allowed_hosts),
        uploads: upload::Uploads::new(config.max_upload_mb),
    };
    let app = Router::new()
        .route("/", get(dashboard::page))
        .route("/dashboard.json", get(dashboard::data))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/handlers", get(handlers))
        .route("/handlers/{name}/module", put(deploy))
        .route("/handlers/{name}/rollback", post(rollback))
        .route(
            "/handlers/{name}/shadow",
            put(shadow_start).get(shadow_report).delete(shadow_stop),
        )
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
    // The dashboard page holds no data (its script fetches it with the
    // token), so a browser may load it without one.
    let page = req.uri().path() == "/" && req.method() == http::Method::GET;
    let checked = if page {
        s.guard.check_host(req.headers())
    } else {
        s.guard.check(req.method(), req.headers())
    };
    match checked {
        Ok(()) => next.run(req).await,
        Err(refusal) => refusal.into_response(),
    }
}

fn find<'a>(
    s: &'a AdminState,
    name: &str,
) -> Result<&'a Arc<crate::context::HandlerCtx>, Box<Response>> {
    s.host
        .handlers
        .iter()
        .find(|h| h.cfg.name == name)
        .ok_or_else(|| {
            let known: Vec<&str> = s
                .host
                .handlers
                .iter()
                .map(|h| h.cfg.name.as_str())
                .collect();
            let body =
                json!({ "error": format!("no handler named {name:?}; handlers: {known:?}") });
            Box::new((StatusCode::NOT_FOUND, axum::Json(body)).into_response())
        })
}

fn report(result: Result<crate::registry::DeployReport, crate::registry::DeployError>) -> Response {
    match result {
        Ok(r) => (StatusCode::OK, axum::Json(r)).into_response(),
        Err(e) => {
            let code = match e {
                crate::registry::DeployError::Refused { .. } => StatusCode::UNPROCESSABLE_ENTITY,
                crate::registry::DeployError::NoPrevious(_) => StatusCode::CONFLICT,
            };
            (code, axum::Json(json!({ "error": e.to_string() }))).into_response()
        }
    }
}

/// `PUT /handlers/NAME/module`: the body is the component.
async fn deploy(
    State(s): State<AdminState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let h = match find(&s, &name) {
        Ok(h) => h,
        Err(r) => return *r,
    };
    let upload = match s.uploads.receive(&headers, body).await {
        Ok(u) => u,
        Err(refusal) => return refusal.into_response(),
    };
    // The slot is held until the deploy is over: the bytes are in memory
    // until then.
    let (bytes, _slot) = (upload.bytes, upload.slot);
    report(crate::registry::deploy(&s.host.shared, h, bytes, "upload".into()).await)
}

/// `PUT /handlers/NAME/shadow?every=N`: the body is the candidate.
async fn shadow_start(
    State(s): State<AdminState>,
    Path(name): Path<String>,
    axum::extract::Query(q): axum::extract::Query<ShadowQuery>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let h = match find(&s, &name) {
        Ok(h) => h,
        Err(r) => return *r,
    };
    let upload = match s.uploads.receive(&headers, body).await {
        Ok(u) => u,
        Err(refusal) => return refusal.into_response(),
    };
    let (bytes, _slot) = (upload.bytes, upload.slot);
    let every = q.every.unwrap_or(1);
    match crate::registry::start_shadow(&s.host.shared, h, bytes, every).await {
        Ok(r) => (StatusCode::OK, axum::Json(r)).into_response(),
        Err(e) => (
            StatusCode::UNPROCESSABLE_ENTITY,
            axum::Json(json!({ "error": e.to_string() })),
        )
            .into_response(),
    }
}

#[derive(Debug, serde::Deserialize)]
struct ShadowQuery {
    every: Option<u64>,
}

/// `GET /handlers/NAME/shadow`: the comparison so far.
async fn shadow_report(State(s): State<AdminState>, Path(name): Path<String>) -> Response {
    let h = match find(&s, &name) {
        Ok(h) => h,
        Err(r) => return *r,
    };
    match h.shadow.load_full() {
        Some(sh) => (StatusCode::OK, axum::Json(sh.report())).into_response(),
        None => (
            StatusCode::NOT_FOUND,
            axum::Json(json!({ "error": format!("no shadow run on handler {name:?}") })),
        )
            .into_response(),
    }
}

/// `DELETE /handlers/NAME/shadow`: stops it, with its last report.
async fn shadow_stop(State(s): State<AdminState>, Path(name): Path<String>) -> Response {
    let h = match find(&s, &name) {
        Ok(h) => h,
        Err(r) => return *r,
    };
    match h.shadow.swap(None) {
        Some(sh) => {
            let r = sh.report();
            tracing::info!(handler = %name, candidate = %r.candidate, compared = r.compared, differed = r.differed, "shadow run stopped");
            (StatusCode::OK, axum::Json(r)).into_response()
        }
        None => (
            StatusCode::NOT_FOUND,
            axum::Json(json!({ "error": format!("no shadow run on handler {name:?}") })),
        )
            .into_response(),
    }
}

/// `POST /handlers/NAME/rollback`.
async fn rollback(State(s): State<AdminState>, Path(name): Path<String>) -> Response {
    let h = match find(&s, &name) {
        Ok(h) => h,
        Err(r) => return *r,
    };
    report(crate::registry::rollback(&s.host.shared, h).await)
}

async fn readyz(State(s): State<AdminState>) -> Response {
    let h = &s.host.shared.health;
    let amqp = h.amqp.load(std::sync::atomic::Ordering::Relaxed);
    let dedup = h.dedup.load(std::sync::atomic::Ordering::Relaxed);
    let ready = h.ready();
    let body = json!({ "ready": ready, "amqp": amqp, "dedup": dedup }).to_string() + "\n";
    let code = if ready {
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
                "live": h.versions.info().0,
                "previous": h.versions.info().1,
                "known": h.versions.known_digests(),
                "canary": h.canary.load_full().map(|c| c.view()),
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
