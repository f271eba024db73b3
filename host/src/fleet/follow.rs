//! The host side of fleet deploys: a connection of its own to the fleet's
//! broker (so a module of tens of MiB never delays message traffic, and a
//! deploy never touches the consuming connection), a follower per handler
//! on its desired-state stream, and a queue that answers pings.
//!
//! Each follower reads its stream from the last chunk, so the first entry
//! it sees is the fleet's current version for the handler; then every new
//! one as it is written. Entries that arrive while one is being applied
//! are coalesced: only the newest is applied, the others are answered as
//! superseded. Applying is `registry::deploy`, the same validation as an
//! admin upload or a file change (signature, compile, type check, smoke
//! test) before the swap.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio::task::JoinSet;

use super::{H_KIND, HandlerStatus, HostStatus, KIND_CONFIG, Outcome, Report};
use crate::amqp::fleet::{ControlMessage, ControlStream, FleetLink, Offset};
use crate::config::{Config, Fleet};
use crate::context::{HandlerCtx, Host};
use crate::registry;

/// How often a host retries what it could not set up (the exchanges, its
/// ping queue).
const RETRY_EVERY: Duration = Duration::from_secs(5);
/// Every how many retries a host looks again for streams it does not
/// follow (a minute); it also looks on every ping.
const FOLLOW_EVERY_TICKS: u32 = 12;
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// Starts following the fleet in the background until shutdown.
pub fn start(host: Host, config: &Config, fleet: &Fleet) -> tokio::task::JoinHandle<()> {
    let url = fleet.url.clone().unwrap_or_else(|| config.amqp.url.clone());
    let id = fleet
        .host_id
        .clone()
        .unwrap_or_else(|| format!("{}.{}", host.shared.host, std::process::id()));
    let exchange = fleet.exchange.clone();
    tokio::spawn(async move { run(host, url, exchange, id).await })
}

async fn run(host: Host, url: String, exchange: String, id: String) {
    let mut shutdown = host.shared.shutdown.clone();
    let mut backoff = Duration::from_millis(100);
    let name = format!("warren-fleet@{id}");
    loop {
        if *shutdown.borrow() {
            return;
        }
        let link = tokio::select! {
            l = FleetLink::connect(&url, &name, &exchange) => l,
            _ = shutdown.wait_for(|s| *s) => return,
        };
        match link {
            Ok(link) => {
                backoff = Duration::from_millis(100);
                tracing::info!(host_id = %id, exchange = %exchange, "following the fleet");
                session(&host, Arc::new(link), &id).await;
            }
            Err(e) => {
                tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "cannot connect to the fleet's broker");
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// One fleet connection's life; returns when it is lost or on shutdown.
async fn session(host: &Host, link: Arc<FleetLink>, id: &str) {
    let mut shutdown = host.shared.shutdown.clone();
    let mut ping: Option<ControlStream> = None;
    let mut following: Vec<String> = Vec::new();
    let mut followers: JoinSet<String> = JoinSet::new();
    let mut retry = tokio::time::interval(RETRY_EVERY);
    let mut exchanges = false;
    let mut ticks: u32 = 0;
    loop {
        // The event first, acted on after the select: a branch body that
        // awaits would hold the shutdown watch's guard across the await.
        let event = tokio::select! {
            _ = retry.tick() => Event::Retry,
            m = next(&mut ping), if ping.is_some() => Event::Ping(m),
            Some(ended) = followers.join_next() => Event::Ended(ended.ok()),
            _ = shutdown.wait_for(|s| *s) => Event::Shutdown,
        };
        match event {
            Event::Shutdown => break,
            Event::Retry => {
                if !link.connected() {
                    break;
                }
                if !exchanges {
                    match link.declare_exchanges().await {
                        Ok(()) => exchanges = true,
                        Err(e) => tracing::warn!(error = %e, "cannot declare the fleet exchanges"),
                    }
                }
                if exchanges && ping.is_none() {
                    match link.ping_queue().await {
                        Ok(p) => ping = Some(p),
                        Err(e) => tracing::warn!(error = %e, "cannot set up the fleet ping queue"),
                    }
                }
                // A missing stream costs a 404 the broker and the client
                // both log, so it is looked for again only now and then;
                // every deployer pings before it writes, which looks too.
                if ticks.is_multiple_of(FOLLOW_EVERY_TICKS) {
                    follow_missing(host, &link, id, &mut following, &mut followers).await;
                }
                ticks = ticks.wrapping_add(1);
            }
            Event::Ping(Some(m)) => {
                follow_missing(host, &link, id, &mut following, &mut followers).await;
                answer_ping(host, &link, id, m).await;
            }
            Event::Ping(None) => {
                ping = None;
                if !link.connected() {
                    break;
                }
            }
            Event::Ended(handler) => {
                if let Some(handler) = handler {
                    following.retain(|h| *h != handler);
                }
                if !link.connected() {
                    break;
                }
            }
        }
    }
    followers.abort_all();
    link.close(Duration::from_secs(1)).await;
    tracing::info!(host_id = %id, "fleet connection closed");
}

enum Event {
    Retry,
    Ping(Option<ControlMessage>),
    Ended(Option<String>),
    Shutdown,
}

async fn next(s: &mut Option<ControlStream>) -> Option<ControlMessage> {
    s.as_mut()?.next().await
}

/// Starts a follower for every handler that has none, when its stream
/// exists (a deployer declares it with the first deploy).
async fn follow_missing(
    host: &Host,
    link: &Arc<FleetLink>,
    id: &str,
    following: &mut Vec<String>,
    followers: &mut JoinSet<String>,
) {
    for h in &host.handlers {
        if following.contains(&h.cfg.name) {
            continue;
        }
        match link.follow(&h.cfg.name, Offset::Last).await {
            Ok(stream) => {
                following.push(h.cfg.name.clone());
                tracing::info!(handler = %h.cfg.name, "following the handler's fleet desired state");
                followers.spawn(follow(
                    host.clone(),
                    h.clone(),
                    link.clone(),
                    stream,
                    id.to_string(),
                ));
            }
            Err(e) => {
                tracing::debug!(handler = %h.cfg.name, error = %e, "no fleet desired state for the handler yet")
            }
        }
    }
}

/// Follows one handler's stream until it ends; returns the handler's name.
async fn follow(
    host: Host,
    h: Arc<HandlerCtx>,
    link: Arc<FleetLink>,
    mut stream: ControlStream,
    id: String,
) -> String {
    // A reader that keeps at most two entries waiting (each may be tens of
    // MiB), so the applier can coalesce what arrived while it worked.
    let (tx, mut rx) = mpsc::channel::<(ControlMessage, Instant)>(2);
    let reader = tokio::spawn(async move {
        while let Some(m) = stream.next().await {
            if tx.send((m, Instant::now())).await.is_err() {
                return;
            }
        }
    });
    while let Some(mut entry) = rx.recv().await {
        while let Ok(newer) = rx.try_recv() {
            let old = std::mem::replace(&mut entry, newer);
            let report = Report {
                host: id.clone(),
                handler: h.cfg.name.clone(),
                deploy: old.0.correlation_id.clone().unwrap_or_default(),
                result: Outcome::Superseded,
                reason: Some("a newer desired version arrived first".into()),
                old_digest: None,
                new_digest: None,
                signer: None,
                compile_ms: 0.0,
                apply_ms: old.1.elapsed().as_secs_f64() * 1e3,
                swap_us: 0.0,
            };
            send(&link, &old.0, &report).await;
        }
        let report = apply(&host, &h, entry.0.clone(), entry.1, &id).await;
        send(&link, &entry.0, &report).await;
    }
    reader.abort();
    h.cfg.name.clone()
}

/// Validates and swaps one entry, exactly as a local deploy.
async fn apply(
    host: &Host,
    h: &HandlerCtx,
    m: ControlMessage,
    received: Instant,
    id: &str,
) -> Report {
    let deploy = m.correlation_id.clone().unwrap_or_default();
    let kind = m.headers.get(H_KIND).map(String::as_str);
    let (bytes, source) = if kind == Some(KIND_CONFIG) {
        match tokio::fs::read(&h.cfg.module).await {
            Ok(b) => (
                Ok(b),
                format!("fleet {deploy} (file {})", h.cfg.module.display()),
            ),
            Err(e) => (
                Err(format!(
                    "cannot read module {}: {e}",
                    h.cfg.module.display()
                )),
                String::new(),
            ),
        }
    } else {
        (Ok(m.body), format!("fleet {deploy}"))
    };
    let result = match bytes {
        Ok(b) => registry::deploy(&host.shared, h, b, source)
            .await
            .map_err(|e| e.to_string()),
        Err(e) => Err(e),
    };
    let apply_ms = received.elapsed().as_secs_f64() * 1e3;
    let base = Report {
        host: id.to_string(),
        handler: h.cfg.name.clone(),
        deploy: deploy.clone(),
        result: Outcome::Refused,
        reason: None,
        old_digest: Some(h.versions.live().digest().to_string()),
        new_digest: None,
        signer: None,
        compile_ms: 0.0,
        apply_ms,
        swap_us: 0.0,
    };
    match result {
        Ok(r) => {
            tracing::info!(handler = %h.cfg.name, deploy, new = %r.new_digest, swapped = r.swapped, apply_ms, user = m.user_id.as_deref().unwrap_or("-"), "fleet deploy applied");
            Report {
                result: if r.swapped {
                    Outcome::Deployed
                } else {
                    Outcome::Unchanged
                },
                old_digest: Some(r.old_digest),
                new_digest: Some(r.new_digest),
                signer: r.signer,
                compile_ms: r.compile_ms,
                swap_us: r.swap_us,
                ..base
            }
        }
        Err(reason) => {
            tracing::warn!(handler = %h.cfg.name, deploy, reason = %reason, user = m.user_id.as_deref().unwrap_or("-"), "fleet deploy refused; the old version keeps serving");
            Report {
                reason: Some(reason),
                ..base
            }
        }
    }
}

async fn send(link: &FleetLink, m: &ControlMessage, report: &Report) {
    let Some(to) = &m.reply_to else { return };
    let body = serde_json::to_vec(report).unwrap_or_default();
    if let Err(e) = link.reply(to, &body, m.correlation_id.clone()).await {
        tracing::warn!(error = %e, "cannot send the fleet deploy report");
    }
}

async fn answer_ping(host: &Host, link: &FleetLink, id: &str, m: ControlMessage) {
    let Some(to) = &m.reply_to else { return };
    let status = HostStatus {
        host: id.to_string(),
        handlers: host
            .handlers
            .iter()
            .map(|h| {
                let (live, previous) = h.versions.info();
                HandlerStatus {
                    name: h.cfg.name.clone(),
                    live: live.digest,
                    previous: previous.map(|p| p.digest),
                    signer: live.signer,
                    source: live.source,
                }
            })
            .collect(),
    };
    let body = serde_json::to_vec(&status).unwrap_or_default();
    if let Err(e) = link.reply(to, &body, m.correlation_id.clone()).await {
        tracing::warn!(error = %e, "cannot answer a fleet ping");
    }
}
