//! The live dashboard: `GET /` serves one page (HTML, CSS and a small
//! script, embedded in the binary; nothing is fetched from elsewhere) and
//! the page polls `GET /dashboard.json` every two seconds.
//!
//! The page itself holds no data, so the guard lets it through without the
//! token (the `Host` check still applies); the script sends the token with
//! each poll. The operator gives it once, in the page's field or in the
//! address as `#token=...` (a fragment, never sent to the server nor
//! logged), and the page keeps it in the tab's session storage.
//!
//! Rates are the page's own: the difference of two polls' counters over
//! the time between them.

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::AdminState;

/// The page, as served.
pub(super) const PAGE: &str = include_str!("dashboard.html");

/// `GET /`.
pub(super) async fn page() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            // Nothing from elsewhere, no framing by other sites.
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; img-src data:; frame-ancestors 'none'",
            ),
            (header::CACHE_CONTROL, "no-store"),
        ],
        PAGE,
    )
        .into_response()
}

/// `GET /dashboard.json`: per handler, everything the page shows.
pub(super) async fn data(State(s): State<AdminState>) -> Response {
    let shared = &s.host.shared;
    let handlers: Vec<_> = s
        .host
        .handlers
        .iter()
        .map(|h| {
            let m = &h.metrics;
            let (live, previous) = h.versions.info();
            let counters = json!({
                "ack": m.ack.get(),
                "dedup_hit": m.dedup_hit.get(),
                "retry": m.retry.get(),
                "deferred": m.deferred.get(),
                "dead_letter": m.dead_letter.get(),
                "requeued": m.requeued.get(),
            });
            json!({
                "name": h.cfg.name,
                "queue": h.cfg.queue,
                "dead_letter_queue": h.cfg.dead_letter_queue(),
                "live": live,
                "previous": previous,
                "deploys": h.versions.deploys(),
                "canary": h.canary.load_full().map(|c| c.view()),
                "counters": counters,
                "in_flight": m.in_flight.get(),
                "dead_letter_depth": m.dead_letter_depth.get(),
                "latency": m.recent.latency(),
                "failures": m.recent.failures(),
            })
        })
        .collect();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    let body = json!({
        "host": shared.host,
        "version": env!("CARGO_PKG_VERSION"),
        "ready": shared.health.ready(),
        "now": now,
        "handlers": handlers,
    });
    (
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        body.to_string(),
    )
        .into_response()
}
