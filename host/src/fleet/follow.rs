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
//!
//! A canary entry starts a canary instead (`registry::start_canary`, the
//! same validation); the follower then sends the deployer its counts
//! every second, and ends the canary when an entry with its decision
//! arrives, when any other desired version arrives (telling the canary's
//! deployer it was superseded), or by itself at the entry's deadline.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio::task::JoinSet;

use super::{
    H_ACTION, H_CANARY, H_CANARY_BASE, H_CANARY_PERCENT, H_CANARY_UNTIL, H_KIND, HandlerStatus,
    HostStatus, KIND_CANARY, KIND_CONFIG, Outcome, Report,
};
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
    // A canary this host can neither report on nor hear the decision of
    // ends here; the stream is read again on the next connection.
    for h in &host.handlers {
        registry::end_canary(h, "the fleet connection ended");
    }
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
    stream: ControlStream,
    id: String,
) -> String {
    let (mut reader, mut rx) = read(stream);
    // Whether a desired version (not a canary) was applied on this
    // stream: a canary entry met before any means the host started, or
    // came back, during a canary, and must first run the version the
    // canary is measured against.
    let mut based = false;
    let mut tick = tokio::time::interval(CANARY_REPORT_EVERY);
    loop {
        let mut entry = tokio::select! {
            e = rx.recv() => match e {
                Some(e) => e,
                None => break,
            },
            _ = tick.tick() => {
                canary_tick(&h, &link, &id).await;
                continue;
            }
        };
        while let Ok(newer) = rx.try_recv() {
            let old = std::mem::replace(&mut entry, newer);
            let report = Report {
                result: Outcome::Superseded,
                reason: Some("a newer desired version arrived first".into()),
                apply_ms: old.1.elapsed().as_secs_f64() * 1e3,
                ..blank_report(&id, &h, &old.0)
            };
            send(&link, &old.0, &report).await;
        }
        let (m, received) = entry;
        if m.headers.get(H_KIND).map(String::as_str) == Some(KIND_CANARY) {
            if !based {
                based = true;
                match m
                    .headers
                    .get(H_CANARY_BASE)
                    .and_then(|b| b.parse::<i64>().ok())
                {
                    Some(base) => match link.follow(&h.cfg.name, Offset::At(base)).await {
                        Ok(s) => {
                            tracing::info!(handler = %h.cfg.name, base, "a canary is in progress: reading the fleet's desired state again from the version it runs against");
                            reader.abort();
                            (reader, rx) = read(s);
                            continue;
                        }
                        Err(e) => {
                            tracing::warn!(handler = %h.cfg.name, error = %e, "cannot read the canary's base version; the canary starts against the live version");
                        }
                    },
                    None => {
                        // The canary runs against each host's configured
                        // module.
                        let config = ControlMessage {
                            headers: [(H_KIND.to_string(), KIND_CONFIG.to_string())].into(),
                            body: Vec::new(),
                            reply_to: None,
                            correlation_id: m.correlation_id.clone(),
                            user_id: m.user_id.clone(),
                            offset: None,
                        };
                        apply(&host, &h, config, received, &id).await;
                    }
                }
            }
            let report = start_canary(&host, &h, &link, m.clone(), received, &id).await;
            send(&link, &m, &report).await;
            continue;
        }
        based = true;
        let report = apply(&host, &h, m.clone(), received, &id).await;
        // Any desired version ends a canary in progress: its own decision
        // (promote or roll back, applied just now), or a newer deploy,
        // which the canary's deployer is told superseded it.
        let decision = m.headers.get(H_CANARY).cloned();
        if let Some(c) = h.canary.load_full() {
            if decision.as_deref() == Some(c.id.as_str()) {
                let action = m.headers.get(H_ACTION).map_or("decision", String::as_str);
                registry::end_canary(&h, action);
            } else if let Some(ended) =
                registry::end_canary(&h, "superseded by a newer fleet entry")
            {
                let note = Report {
                    deploy: ended.id.clone(),
                    result: Outcome::Superseded,
                    reason: Some(format!(
                        "fleet entry {} ended the canary before its decision",
                        m.correlation_id.as_deref().unwrap_or("-")
                    )),
                    counts: Some(ended.counts()),
                    ..report.clone()
                };
                reply(&link, ended.reply_to.as_deref(), &ended.id, &note).await;
            }
        }
        send(&link, &m, &report).await;
    }
    reader.abort();
    registry::end_canary(&h, "the fleet connection ended");
    h.cfg.name.clone()
}

/// How often a host sends a canary's counts to its deployer, and checks
/// its deadline.
const CANARY_REPORT_EVERY: Duration = Duration::from_secs(1);

/// Reads `stream` on a task of its own into a channel that keeps at most
/// two entries waiting (each may be tens of MiB), so the applier can
/// coalesce what arrived while it worked.
fn read(
    mut stream: ControlStream,
) -> (
    tokio::task::JoinHandle<()>,
    mpsc::Receiver<(ControlMessage, Instant)>,
) {
    let (tx, rx) = mpsc::channel::<(ControlMessage, Instant)>(2);
    let reader = tokio::spawn(async move {
        while let Some(m) = stream.next().await {
            if tx.send((m, Instant::now())).await.is_err() {
                return;
            }
        }
    });
    (reader, rx)
}

/// A report on entry `m` with nothing filled in yet.
fn blank_report(id: &str, h: &HandlerCtx, m: &ControlMessage) -> Report {
    Report {
        host: id.to_string(),
        handler: h.cfg.name.clone(),
        deploy: m.correlation_id.clone().unwrap_or_default(),
        result: Outcome::Refused,
        reason: None,
        old_digest: None,
        new_digest: None,
        signer: None,
        compile_ms: 0.0,
        apply_ms: 0.0,
        swap_us: 0.0,
        counts: None,
    }
}

/// Starts the canary entry `m` describes: refused like a deploy (the
/// candidate is validated the same way), or expired when its deadline
/// passed before it arrived.
async fn start_canary(
    host: &Host,
    h: &Arc<HandlerCtx>,
    link: &FleetLink,
    m: ControlMessage,
    received: Instant,
    id: &str,
) -> Report {
    let base = blank_report(id, h, &m);
    let canary = base.deploy.clone();
    let percent = m
        .headers
        .get(H_CANARY_PERCENT)
        .and_then(|p| p.parse::<u8>().ok())
        .filter(|p| (1..=100).contains(p));
    let until = m
        .headers
        .get(H_CANARY_UNTIL)
        .and_then(|u| u.parse::<u64>().ok());
    let (Some(percent), Some(until)) = (percent, until) else {
        return Report {
            reason: Some(format!(
                "canary entry without a valid {H_CANARY_PERCENT} (1 to 100) and {H_CANARY_UNTIL}"
            )),
            ..base
        };
    };
    if crate::canary::now_ms() >= until {
        tracing::info!(handler = %h.cfg.name, canary, "the fleet canary expired before this host read it; the live version stays");
        return Report {
            result: Outcome::Expired,
            reason: Some(
                "the canary's deadline passed before this host read it; the live version stays"
                    .into(),
            ),
            ..base
        };
    }
    // A canary in progress that this one replaces: its deployer is told.
    if let Some(old) = h.canary.load_full()
        && old.id != canary
        && let Some(ended) = registry::end_canary(h, "superseded by a newer canary")
    {
        let note = Report {
            deploy: ended.id.clone(),
            result: Outcome::Superseded,
            reason: Some(format!("canary {canary} replaced it before its decision")),
            counts: Some(ended.counts()),
            ..base.clone()
        };
        reply(link, ended.reply_to.as_deref(), &ended.id, &note).await;
    }
    let started = registry::start_canary(
        &host.shared,
        h,
        m.body,
        canary.clone(),
        percent,
        until,
        m.reply_to.clone(),
    )
    .await;
    let apply_ms = received.elapsed().as_secs_f64() * 1e3;
    match started {
        Ok(s) => Report {
            result: Outcome::Canary,
            old_digest: Some(s.live_digest),
            new_digest: Some(s.candidate),
            signer: s.signer,
            compile_ms: s.compile_ms,
            apply_ms,
            counts: Some(crate::canary::Counts::default()),
            ..base
        },
        Err(e) => {
            tracing::warn!(handler = %h.cfg.name, canary, reason = %e, "fleet canary refused; the live version keeps serving alone");
            Report {
                reason: Some(e.to_string()),
                apply_ms,
                old_digest: Some(h.versions.live().digest().to_string()),
                ..base
            }
        }
    }
}

/// Every second of a canary: its counts to the deployer, or, past its
/// deadline with no decision, its end on this host (the live version
/// stays).
async fn canary_tick(h: &HandlerCtx, link: &FleetLink, id: &str) {
    let Some(c) = h.canary.load_full() else {
        return;
    };
    let mut r = Report {
        host: id.to_string(),
        handler: h.cfg.name.clone(),
        deploy: c.id.clone(),
        result: Outcome::Canary,
        reason: None,
        old_digest: Some(h.versions.live().digest().to_string()),
        new_digest: Some(c.module.digest().to_string()),
        signer: None,
        compile_ms: 0.0,
        apply_ms: 0.0,
        swap_us: 0.0,
        counts: Some(c.counts()),
    };
    if c.expired(crate::canary::now_ms()) {
        tracing::warn!(handler = %h.cfg.name, canary = %c.id, "no decision on the canary by its deadline: this host drops the candidate; the live version stays");
        registry::end_canary(h, "no decision by its deadline");
        r.result = Outcome::Expired;
        r.reason = Some("no decision by the canary's deadline: the candidate was dropped".into());
    }
    reply(link, c.reply_to.as_deref(), &c.id, &r).await;
}

async fn reply(link: &FleetLink, to: Option<&str>, correlation: &str, report: &Report) {
    let Some(to) = to else { return };
    let body = serde_json::to_vec(report).unwrap_or_default();
    if let Err(e) = link.reply(to, &body, Some(correlation.to_string())).await {
        tracing::debug!(error = %e, "cannot send a canary report");
    }
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
        counts: None,
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
                let canary = h.canary.load_full();
                HandlerStatus {
                    name: h.cfg.name.clone(),
                    live: live.digest,
                    previous: previous.map(|p| p.digest),
                    signer: live.signer,
                    source: live.source,
                    canary: canary.as_ref().map(|c| c.module.digest().to_string()),
                    canary_percent: canary.as_ref().map(|c| c.percent),
                }
            })
            .collect(),
    };
    let body = serde_json::to_vec(&status).unwrap_or_default();
    if let Err(e) = link.reply(to, &body, m.correlation_id.clone()).await {
        tracing::warn!(error = %e, "cannot answer a fleet ping");
    }
}
