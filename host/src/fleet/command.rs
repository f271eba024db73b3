//! The deployer side: `warren deploy --fleet`, `warren rollback --fleet`
//! and `warren status --fleet`. Each finds the hosts first (a ping through
//! the control exchange, answered by every host's own queue), then writes
//! the desired-state entry and prints each host's report as it comes in,
//! then a summary. A host that refuses, or does not answer in time, makes
//! the command fail.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

use super::{
    CANARY_ACTIONS, H_ACTION, H_DIGEST, H_HANDLER, H_KIND, HostStatus, KIND_CONFIG, KIND_MODULE,
    Outcome, Report,
};
use crate::amqp::fleet::{ControlMessage, ControlStream, FleetLink, Offset, Outgoing};
use crate::runtime::Digest;
use crate::signing::Signature;

/// Where the fleet is and how long to wait for it.
#[derive(Debug, Clone)]
pub struct FleetArgs {
    pub url: String,
    pub exchange: String,
    /// How long hosts get to answer the ping that finds them.
    pub discover: Duration,
    /// How long every host gets to report on a deploy.
    pub timeout: Duration,
}

pub(super) fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

pub(super) async fn connect(args: &FleetArgs) -> anyhow::Result<FleetLink> {
    let name = format!("warren-deployer pid {}", std::process::id());
    FleetLink::connect(&args.url, &name, &args.exchange)
        .await
        .with_context(|| {
            format!(
                "cannot connect to the fleet's broker at {}",
                crate::config::redact_url(&args.url)
            )
        })
}

/// Pings the fleet and collects every host's status for `args.discover`.
pub(super) async fn discover(
    link: &FleetLink,
    args: &FleetArgs,
) -> anyhow::Result<BTreeMap<String, HostStatus>> {
    link.declare_exchanges().await?;
    let (reply_to, mut replies) = link.reply_queue().await?;
    let id = format!("ping-{}", uuid::Uuid::new_v4());
    let deadline = tokio::time::Instant::now() + args.discover;
    let mut hosts = BTreeMap::new();
    // Pinged again every half second: a host whose ping queue was bound a
    // moment after the first ping still answers in the window.
    let mut again = tokio::time::interval(Duration::from_millis(500));
    loop {
        tokio::select! {
            _ = again.tick() => {
                let out = Outgoing {
                    reply_to: Some(reply_to.clone()),
                    correlation_id: Some(id.clone()),
                    ..Default::default()
                };
                // Unroutable (no host bound yet) is no error here.
                let _ = link.publish("ping", b"", out).await;
            }
            m = replies.next() => {
                let Some(m) = m else { bail!("the fleet connection closed while finding hosts") };
                if m.correlation_id.as_deref() != Some(&id) {
                    continue;
                }
                if let Ok(s) = serde_json::from_slice::<HostStatus>(&m.body) {
                    hosts.insert(s.host.clone(), s);
                }
            }
            _ = tokio::time::sleep_until(deadline) => break,
        }
    }
    Ok(hosts)
}

/// `warren status --fleet`: every host and its versions.
pub fn status(args: &FleetArgs) -> anyhow::Result<()> {
    runtime()?.block_on(async {
        let link = connect(args).await?;
        let hosts = discover(&link, args).await?;
        println!(
            "{:<28} {:<16} {:<20} {:<20} {:<24} SOURCE",
            "HOST", "HANDLER", "LIVE", "PREVIOUS", "SIGNER"
        );
        for s in hosts.values() {
            for h in &s.handlers {
                println!(
                    "{:<28} {:<16} {:<20} {:<20} {:<24} {}",
                    s.host,
                    h.name,
                    short(&h.live),
                    h.previous.as_deref().map_or("-".into(), short),
                    h.signer.as_deref().map_or("-".into(), short),
                    match (&h.canary, h.canary_percent) {
                        (Some(c), Some(p)) => format!("{} (canary {p}%: {})", h.source, short(c)),
                        _ => h.source.clone(),
                    }
                );
            }
        }
        println!(
            "{} host(s) answered within {:?}",
            hosts.len(),
            args.discover
        );
        link.close(Duration::from_secs(2)).await;
        Ok(())
    })
}

pub(super) fn short(d: &str) -> String {
    d.chars().take(19).collect()
}

/// `warren deploy --fleet --handler NAME FILE`.
pub fn deploy(args: &FleetArgs, handler: &str, file: &Path) -> anyhow::Result<()> {
    let bytes =
        std::fs::read(file).with_context(|| format!("cannot read module {}", file.display()))?;
    let digest = Digest::of(&bytes).to_string();
    println!(
        "module {}: {digest}, {} bytes, {}",
        file.display(),
        bytes.len(),
        Signature::of(&bytes)
    );
    runtime()?.block_on(async {
        let link = connect(args).await?;
        let r = publish_and_wait(&link, args, handler, bytes, KIND_MODULE, "deploy", &digest).await;
        link.close(Duration::from_secs(2)).await;
        r
    })
}

/// `warren rollback --fleet --handler NAME`: writes the entry before the
/// current one again (or, when the fleet has only one, the module each
/// host's config names), and reports like a deploy.
pub fn rollback(args: &FleetArgs, handler: &str) -> anyhow::Result<()> {
    runtime()?.block_on(async {
        let link = connect(args).await?;
        link.declare_for(handler).await?;
        let history = last_two(&link, handler).await?;
        let (bytes, kind, digest) = match history.as_slice() {
            [] => bail!("handler {handler:?}: the fleet has no desired version to roll back from"),
            [_only] => (
                Vec::new(),
                KIND_CONFIG,
                "each host's configured module".to_string(),
            ),
            [previous, _current] => (
                previous.body.clone(),
                previous.headers.get(H_KIND).map_or(KIND_MODULE, |k| {
                    if k == KIND_CONFIG {
                        KIND_CONFIG
                    } else {
                        KIND_MODULE
                    }
                }),
                previous
                    .headers
                    .get(H_DIGEST)
                    .cloned()
                    .unwrap_or_else(|| Digest::of(&previous.body).to_string()),
            ),
            _ => unreachable!("last_two keeps two"),
        };
        println!("handler {handler}: rolling the fleet back to {digest}");
        let r = publish_and_wait(&link, args, handler, bytes, kind, "rollback", &digest).await;
        link.close(Duration::from_secs(2)).await;
        r
    })
}

/// The last two desired versions in the handler's stream, oldest first:
/// canary entries and a canary's rollback (a copy of the version before
/// it) are not desired versions of their own. A stream says nothing of
/// where it ends, so the read stops when no entry came for a second (three
/// before the first).
pub(super) async fn last_two(
    link: &FleetLink,
    handler: &str,
) -> anyhow::Result<Vec<ControlMessage>> {
    let mut s = link.follow(handler, Offset::First).await?;
    let mut kept: Vec<ControlMessage> = Vec::new();
    let mut wait = Duration::from_secs(3);
    while let Ok(Some(m)) = tokio::time::timeout(wait, s.next()).await {
        wait = Duration::from_secs(1);
        if m.headers.get(H_HANDLER).map(String::as_str) != Some(handler) {
            continue;
        }
        let action = m.headers.get(H_ACTION).map_or("deploy", String::as_str);
        if CANARY_ACTIONS.contains(&action) {
            continue;
        }
        kept.push(m);
        if kept.len() > 2 {
            kept.remove(0);
        }
    }
    Ok(kept)
}

/// Finds the hosts, writes the entry, prints each report as it comes in
/// and a summary; fails if any host refused or did not answer in time.
async fn publish_and_wait(
    link: &FleetLink,
    args: &FleetArgs,
    handler: &str,
    bytes: Vec<u8>,
    kind: &str,
    action: &str,
    digest: &str,
) -> anyhow::Result<()> {
    link.declare_for(handler).await.with_context(|| {
        format!(
            "cannot set up the fleet's exchanges and the stream of handler {handler:?} as broker user {:?} (a deployer's permissions are in docs/fleet.md)",
            link.user()
        )
    })?;
    println!("finding hosts ({:?})...", args.discover);
    let hosts = discover(link, args).await?;
    let mut waiting: Vec<String> = hosts
        .values()
        .filter(|s| s.handlers.iter().any(|h| h.name == handler))
        .map(|s| s.host.clone())
        .collect();
    println!(
        "{} host(s) run handler {handler}: {}",
        waiting.len(),
        if waiting.is_empty() {
            "none (the desired version is kept for hosts that start later)".to_string()
        } else {
            waiting.join(", ")
        }
    );
    let (reply_to, mut replies) = link.reply_queue().await?;
    let id = uuid::Uuid::new_v4().to_string();
    let out = Outgoing {
        headers: vec![
            (H_HANDLER, handler.to_string()),
            (H_KIND, kind.to_string()),
            (H_DIGEST, digest.to_string()),
            (H_ACTION, action.to_string()),
        ],
        reply_to: Some(reply_to),
        correlation_id: Some(id.clone()),
        // The broker checks it is the connection's user: hosts log who
        // wrote each entry.
        user_id: Some(link.user().to_string()).filter(|u| !u.is_empty()),
    };
    let started = Instant::now();
    link.publish(&format!("deploy.{handler}"), &bytes, out)
        .await
        .with_context(|| {
            format!("cannot write the fleet's desired version of handler {handler:?}")
        })?;
    println!(
        "{action} {id}: {} bytes written in {:.0} ms; waiting up to {:?} for reports",
        bytes.len(),
        started.elapsed().as_secs_f64() * 1e3,
        args.timeout
    );
    let summary = collect(&mut replies, &id, &mut waiting, args.timeout).await;
    summary.print(&waiting, args.timeout);
    if summary.failed() || !waiting.is_empty() {
        bail!(
            "{action} of handler {handler:?} did not succeed everywhere: {} refused, {} did not answer",
            summary.refused,
            waiting.len()
        );
    }
    Ok(())
}

#[derive(Debug, Default)]
pub(super) struct Summary {
    deployed: usize,
    unchanged: usize,
    pub(super) refused: usize,
    superseded: usize,
}

impl Summary {
    pub(super) fn failed(&self) -> bool {
        self.refused > 0 || self.superseded > 0
    }

    pub(super) fn print(&self, missing: &[String], timeout: Duration) {
        for h in missing {
            println!("{h:<28} no answer within {timeout:?}");
        }
        println!(
            "summary: {} deployed, {} unchanged, {} refused, {} superseded, {} no answer",
            self.deployed,
            self.unchanged,
            self.refused,
            self.superseded,
            missing.len()
        );
    }
}

/// Reports for deploy `id` until every host in `waiting` answered (each
/// removed as it does) or `timeout`. Hosts that were not found but answer
/// are reported too.
pub(super) async fn collect(
    replies: &mut ControlStream,
    id: &str,
    waiting: &mut Vec<String>,
    timeout: Duration,
) -> Summary {
    let mut s = Summary::default();
    let deadline = tokio::time::Instant::now() + timeout;
    while !waiting.is_empty() {
        let m = match tokio::time::timeout_at(deadline, replies.next()).await {
            Ok(Some(m)) => m,
            _ => break,
        };
        if m.correlation_id.as_deref() != Some(id) {
            continue;
        }
        let Ok(r) = serde_json::from_slice::<Report>(&m.body) else {
            continue;
        };
        waiting.retain(|h| *h != r.host);
        println!("{}", describe(&r));
        match r.result {
            Outcome::Deployed => s.deployed += 1,
            Outcome::Unchanged => s.unchanged += 1,
            Outcome::Refused => s.refused += 1,
            // Not answers to a plain deploy: counted as refusals, so an
            // odd reply fails the command rather than passing it.
            Outcome::Superseded | Outcome::Expired => s.superseded += 1,
            Outcome::Canary => s.refused += 1,
        }
    }
    s
}

/// One host's line.
pub fn describe(r: &Report) -> String {
    let d = |x: &Option<String>| x.as_deref().map_or("-".to_string(), short);
    match r.result {
        Outcome::Refused | Outcome::Superseded | Outcome::Expired => format!(
            "{:<28} {:<10} {} after {:.0} ms: {}",
            r.host,
            r.result.as_str(),
            r.handler,
            r.apply_ms,
            r.reason.as_deref().unwrap_or("-")
        ),
        _ => format!(
            "{:<28} {:<10} {} {} -> {} in {:.0} ms (compile {:.0} ms, swap {:.1} us, signer {})",
            r.host,
            r.result.as_str(),
            r.handler,
            d(&r.old_digest),
            d(&r.new_digest),
            r.apply_ms,
            r.compile_ms,
            r.swap_us,
            d(&r.signer),
        ),
    }
}
