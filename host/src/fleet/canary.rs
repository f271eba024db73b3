//! The deployer side of a canary: `warren deploy --fleet --canary PERCENT`.
//!
//! It finds the hosts and the fleet's desired version (the canary's base),
//! writes a canary entry (the candidate, its share, a deadline, the base's
//! offset) to the handler's desired-state stream, and reads every host's
//! counts as they come in, once a second. It rolls back as soon as the
//! rule says the candidate fails more often than the live version
//! ([`crate::canary::Rule`]), or when a host refuses the candidate; at the
//! end of the window it promotes (or rolls back, with too few candidate
//! runs). The decision is itself an entry: for a promotion, the candidate
//! as the desired version; for a rollback, the base written again. Each
//! host reports on the decision like on a deploy.
//!
//! If this command dies, no decision is written: each host drops the
//! candidate at the entry's deadline (window plus grace), so the fleet is
//! back on the base, and a host that starts later sees the canary entry
//! as expired.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use anyhow::{Context as _, bail};

use super::command::{FleetArgs, collect, connect, describe, discover, last_two, runtime, short};
use super::{
    H_ACTION, H_CANARY, H_CANARY_BASE, H_CANARY_PERCENT, H_CANARY_UNTIL, H_DIGEST, H_HANDLER,
    H_KIND, KIND_CANARY, KIND_CONFIG, KIND_MODULE, Outcome, Report,
};
use crate::amqp::fleet::{FleetLink, Outgoing};
use crate::canary::{Counts, Rule, Verdict, now_ms};
use crate::runtime::Digest;
use crate::signing::Signature;

/// What `--canary` and its companions say.
#[derive(Debug, Clone)]
pub struct CanaryArgs {
    /// Share of first attempts on the candidate, 1 to 100.
    pub percent: u8,
    /// How long the candidate runs before it is promoted.
    pub window: Duration,
    /// How long after the window hosts wait for a decision before they
    /// drop the candidate by themselves.
    pub grace: Duration,
    pub rule: Rule,
}

/// `warren deploy --fleet --handler NAME FILE --canary PERCENT`: succeeds
/// when the candidate was promoted on every host.
pub fn canary(args: &FleetArgs, c: &CanaryArgs, handler: &str, file: &Path) -> anyhow::Result<()> {
    if !(1..=100).contains(&c.percent) {
        bail!("--canary {}: the share must be 1 to 100 percent", c.percent);
    }
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
        let r = run(&link, args, c, handler, bytes, &digest).await;
        link.close(Duration::from_secs(2)).await;
        r
    })
}

async fn run(
    link: &FleetLink,
    args: &FleetArgs,
    c: &CanaryArgs,
    handler: &str,
    bytes: Vec<u8>,
    digest: &str,
) -> anyhow::Result<()> {
    link.declare_for(handler).await.with_context(|| {
        format!(
            "cannot set up the fleet's exchanges and the stream of handler {handler:?} as broker user {:?} (a deployer's permissions are in docs/fleet.md)",
            link.user()
        )
    })?;
    println!(
        "finding hosts ({:?}) and the fleet's desired version...",
        args.discover
    );
    let (hosts, history) = tokio::join!(discover(link, args), last_two(link, handler));
    let (hosts, history) = (hosts?, history?);
    let base = history.last().cloned();
    let hosts: Vec<String> = hosts
        .values()
        .filter(|s| s.handlers.iter().any(|h| h.name == handler))
        .map(|s| s.host.clone())
        .collect();
    let base_digest = base
        .as_ref()
        .and_then(|b| b.headers.get(H_DIGEST).cloned())
        .unwrap_or_else(|| "each host's configured module".into());
    println!(
        "{} host(s) run handler {handler}: {}; the canary runs against {base_digest}",
        hosts.len(),
        if hosts.is_empty() {
            "none".to_string()
        } else {
            hosts.join(", ")
        }
    );

    let (reply_to, mut replies) = link.reply_queue().await?;
    let id = uuid::Uuid::new_v4().to_string();
    let until = now_ms() + (c.window + c.grace).as_millis() as u64;
    let mut headers = vec![
        (H_HANDLER, handler.to_string()),
        (H_KIND, KIND_CANARY.to_string()),
        (H_DIGEST, digest.to_string()),
        (H_ACTION, "canary".to_string()),
        (H_CANARY, id.clone()),
        (H_CANARY_PERCENT, c.percent.to_string()),
        (H_CANARY_UNTIL, until.to_string()),
    ];
    if let Some(offset) = base.as_ref().and_then(|b| b.offset) {
        headers.push((H_CANARY_BASE, offset.to_string()));
    }
    let out = Outgoing {
        headers,
        reply_to: Some(reply_to.clone()),
        correlation_id: Some(id.clone()),
        user_id: Some(link.user().to_string()).filter(|u| !u.is_empty()),
    };
    link.publish(&format!("deploy.{handler}"), &bytes, out)
        .await
        .with_context(|| format!("cannot write the canary of handler {handler:?}"))?;
    println!(
        "canary {id}: {}% of first attempts on {} for {:?}; without a decision, hosts drop it {:?} after that",
        c.percent,
        short(digest),
        c.window,
        c.grace
    );

    let watched = watch(&mut replies, &id, c, &hosts).await;
    let (verdict, running) = match watched {
        Watched::Superseded(why) => bail!(
            "canary {id} of handler {handler:?} was superseded: {why}; no decision written (the newer entry is the fleet's desired state)"
        ),
        Watched::Lost => bail!(
            "the fleet connection closed during canary {id} of handler {handler:?}; no decision written: hosts drop the candidate at its deadline"
        ),
        Watched::Decided(v, running) => (v, running),
    };
    let (promoted, why) = match verdict {
        Verdict::Promote(why) => (true, why),
        Verdict::RollBack(why) => (false, why),
        Verdict::Wait => unreachable!("watch decides"),
    };
    println!(
        "decision: {}: {why}",
        if promoted { "promote" } else { "roll back" }
    );

    // The decision, as the fleet's next desired version.
    let (body, kind, new_digest, action) = if promoted {
        (bytes, KIND_MODULE, digest.to_string(), "canary-promote")
    } else {
        match &base {
            Some(b) => (
                b.body.clone(),
                if b.headers.get(H_KIND).map(String::as_str) == Some(KIND_CONFIG) {
                    KIND_CONFIG
                } else {
                    KIND_MODULE
                },
                base_digest.clone(),
                "canary-rollback",
            ),
            None => (
                Vec::new(),
                KIND_CONFIG,
                base_digest.clone(),
                "canary-rollback",
            ),
        }
    };
    let decision = uuid::Uuid::new_v4().to_string();
    let out = Outgoing {
        headers: vec![
            (H_HANDLER, handler.to_string()),
            (H_KIND, kind.to_string()),
            (H_DIGEST, new_digest),
            (H_ACTION, action.to_string()),
            (H_CANARY, id.clone()),
        ],
        reply_to: Some(reply_to),
        correlation_id: Some(decision.clone()),
        user_id: Some(link.user().to_string()).filter(|u| !u.is_empty()),
    };
    link.publish(&format!("deploy.{handler}"), &body, out)
        .await
        .with_context(|| {
            format!("cannot write the decision on canary {id} of handler {handler:?}")
        })?;
    let mut waiting: Vec<String> = hosts
        .iter()
        .cloned()
        .chain(running)
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let summary = collect(&mut replies, &decision, &mut waiting, args.timeout).await;
    summary.print(&waiting, args.timeout);
    let everywhere = !summary.failed() && waiting.is_empty();
    if promoted {
        if !everywhere {
            bail!(
                "canary of handler {handler:?} promoted, but not on every host: {} refused, {} did not answer",
                summary.refused,
                waiting.len()
            );
        }
        println!("canary promoted on every host: {why}");
        Ok(())
    } else {
        println!(
            "canary rolled back{}: {why}",
            if everywhere { " on every host" } else { "" }
        );
        bail!("canary of handler {handler:?} rolled back: {why}")
    }
}

/// How the window ended.
enum Watched {
    /// With a verdict, and the hosts that ran the candidate.
    Decided(Verdict, BTreeSet<String>),
    /// A newer entry ended the canary on a host.
    Superseded(String),
    /// The fleet connection closed.
    Lost,
}

/// Reads the hosts' reports on canary `id` until the window ends or a
/// report calls for a rollback.
async fn watch(
    replies: &mut crate::amqp::fleet::ControlStream,
    id: &str,
    c: &CanaryArgs,
    hosts: &[String],
) -> Watched {
    let end = tokio::time::Instant::now() + c.window;
    let mut counts: BTreeMap<String, Counts> = BTreeMap::new();
    let mut running: BTreeSet<String> = BTreeSet::new();
    let mut progress = tokio::time::interval(Duration::from_secs(2));
    progress.tick().await;
    let sum = |counts: &BTreeMap<String, Counts>| {
        let mut s = Counts::default();
        for c in counts.values() {
            s.add(c);
        }
        s
    };
    loop {
        let m = tokio::select! {
            m = tokio::time::timeout_at(end, replies.next()) => match m {
                Err(_) => break,
                Ok(None) => return Watched::Lost,
                Ok(Some(m)) => m,
            },
            _ = progress.tick() => {
                let s = sum(&counts);
                println!(
                    "canary: {} host(s) running it; candidate failed {}/{} ({:.1}%), live version {}/{} ({:.1}%)",
                    running.len(),
                    s.canary_failed,
                    s.canary,
                    s.canary_rate() * 100.0,
                    s.live_failed,
                    s.live,
                    s.live_rate() * 100.0
                );
                continue;
            }
        };
        if m.correlation_id.as_deref() != Some(id) {
            continue;
        }
        let Ok(r) = serde_json::from_slice::<Report>(&m.body) else {
            continue;
        };
        match r.result {
            Outcome::Canary => {
                if running.insert(r.host.clone()) {
                    println!("{}", describe(&r));
                }
                counts.insert(r.host.clone(), r.counts.unwrap_or_default());
            }
            Outcome::Refused => {
                println!("{}", describe(&r));
                let why = format!(
                    "host {} refused the candidate: {}",
                    r.host,
                    r.reason.as_deref().unwrap_or("-")
                );
                return Watched::Decided(Verdict::RollBack(why), running);
            }
            Outcome::Expired => {
                println!("{}", describe(&r));
                let why = format!(
                    "host {}: {}",
                    r.host,
                    r.reason.as_deref().unwrap_or("the canary expired")
                );
                return Watched::Decided(Verdict::RollBack(why), running);
            }
            Outcome::Superseded => {
                println!("{}", describe(&r));
                return Watched::Superseded(format!(
                    "host {}: {}",
                    r.host,
                    r.reason.as_deref().unwrap_or("-")
                ));
            }
            Outcome::Deployed | Outcome::Unchanged => {}
        }
        if let Verdict::RollBack(why) = c.rule.judge(&sum(&counts), false) {
            return Watched::Decided(Verdict::RollBack(why), running);
        }
    }
    let missing: Vec<&String> = hosts.iter().filter(|h| !running.contains(*h)).collect();
    if !missing.is_empty() {
        let why = format!(
            "host(s) {} did not report the candidate running within the window",
            missing
                .iter()
                .map(|h| h.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
        return Watched::Decided(Verdict::RollBack(why), running);
    }
    Watched::Decided(c.rule.judge(&sum(&counts), true), running)
}
