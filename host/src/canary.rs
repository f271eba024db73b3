//! Canaries: a candidate version run on a share of a handler's messages
//! beside the live version, with the failures of each counted, until the
//! fleet's deployer promotes it or rolls it back (docs/fleet.md, "Canary").
//!
//! This module keeps the candidate, picks which messages it runs (a stable
//! hash of the canary's id and the message's key, first attempts only, so
//! every retry runs on the live version), counts, and holds the rule that
//! decides. Starting one is the registry's (`registry::start_canary`);
//! following the fleet and ending one is `fleet`'s; running the picked
//! messages is the pipeline's.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::runtime::Module;

/// A canary in progress on this host.
#[derive(Debug)]
pub struct Canary {
    pub module: Arc<Module>,
    /// The fleet deploy that started it (the canary entry's correlation id).
    pub id: String,
    /// Share of first attempts the candidate runs, 1 to 100.
    pub percent: u8,
    /// When this host ends the canary by itself if no decision came
    /// (milliseconds since the Unix epoch).
    pub until_ms: u64,
    /// When it started here (milliseconds since the Unix epoch).
    pub started_ms: u64,
    /// Where the deployer waits for this host's counts.
    pub reply_to: Option<String>,
    counts: [AtomicU64; 4],
}

/// A canary's counts on one host, or summed over the fleet: first attempts
/// only, on each version, and how many of them failed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    pub canary: u64,
    pub canary_failed: u64,
    pub live: u64,
    pub live_failed: u64,
}

impl Counts {
    pub fn add(&mut self, o: &Counts) {
        self.canary += o.canary;
        self.canary_failed += o.canary_failed;
        self.live += o.live;
        self.live_failed += o.live_failed;
    }

    pub fn canary_rate(&self) -> f64 {
        rate(self.canary_failed, self.canary)
    }

    pub fn live_rate(&self) -> f64 {
        rate(self.live_failed, self.live)
    }
}

fn rate(failed: u64, of: u64) -> f64 {
    if of == 0 {
        0.0
    } else {
        failed as f64 / of as f64
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Canary {
    pub fn new(
        module: Arc<Module>,
        id: String,
        percent: u8,
        until_ms: u64,
        reply_to: Option<String>,
    ) -> Canary {
        Canary {
            module,
            id,
            percent: percent.clamp(1, 100),
            until_ms,
            started_ms: now_ms(),
            reply_to,
            counts: Default::default(),
        }
    }

    /// Whether the candidate runs this message: only a first attempt (a
    /// retry always runs on the live version, so a message the candidate
    /// failed is retried on the old one), and then by a hash of the
    /// canary's id and the message's key, the same on every host and for
    /// every redelivery of the message.
    pub fn picks(&self, key: &str, attempt: u32) -> bool {
        attempt <= 1 && slot(&self.id, key) < u64::from(self.percent)
    }

    /// Counts first attempts on the candidate or the live version: `ok`
    /// succeeded, `failed` did not.
    pub fn record(&self, on_canary: bool, ok: u64, failed: u64) {
        let base = if on_canary { 0 } else { 2 };
        self.counts[base].fetch_add(ok + failed, Ordering::Relaxed);
        self.counts[base + 1].fetch_add(failed, Ordering::Relaxed);
    }

    pub fn counts(&self) -> Counts {
        let c = |i: usize| self.counts[i].load(Ordering::Relaxed);
        Counts {
            canary: c(0),
            canary_failed: c(1),
            live: c(2),
            live_failed: c(3),
        }
    }

    /// Whether the canary outlived its deadline without a decision.
    pub fn expired(&self, now_ms: u64) -> bool {
        now_ms >= self.until_ms
    }

    /// What `/handlers` and the dashboard show of it.
    pub fn view(&self) -> View {
        View {
            id: self.id.clone(),
            candidate: self.module.digest().to_string(),
            percent: self.percent,
            started_ms: self.started_ms,
            until_ms: self.until_ms,
            counts: self.counts(),
        }
    }
}

/// A canary in progress, as the admin endpoint shows it.
#[derive(Debug, Clone, Serialize)]
pub struct View {
    pub id: String,
    pub candidate: String,
    pub percent: u8,
    pub started_ms: u64,
    pub until_ms: u64,
    pub counts: Counts,
}

/// FNV-1a 64 of `id`, a newline and `key`, modulo 100: stable across hosts,
/// processes and versions of warren (no randomly seeded hasher).
fn slot(id: &str, key: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in id.bytes().chain(std::iter::once(b'\n')).chain(key.bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h % 100
}

/// Rolling back needs at least this many failed candidate runs, whatever
/// the rates: two unlucky messages are not a verdict.
pub const MIN_FAILURES: u64 = 3;

/// How the deployer judges a canary from the fleet's summed counts.
#[derive(Debug, Clone, Copy)]
pub struct Rule {
    /// Promoting needs at least this many candidate runs.
    pub min_messages: u64,
    /// How many percentage points the candidate's failure rate may exceed
    /// the live version's.
    pub margin_points: f64,
}

/// What the rule says.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    Promote(String),
    RollBack(String),
    /// Not yet: the window is still open and nothing calls for a rollback.
    Wait,
}

impl Rule {
    /// Judges `c`. A rollback is called as soon as the candidate has failed
    /// [`MIN_FAILURES`] times and its failure rate exceeds the live
    /// version's by more than the margin; a promotion only when the window
    /// is over (`over`), with at least `min_messages` candidate runs.
    pub fn judge(&self, c: &Counts, over: bool) -> Verdict {
        let (cr, lr) = (c.canary_rate(), c.live_rate());
        let rates = format!(
            "candidate failed {}/{} ({:.1}%), live version {}/{} ({:.1}%), margin {:.1} points",
            c.canary_failed,
            c.canary,
            cr * 100.0,
            c.live_failed,
            c.live,
            lr * 100.0,
            self.margin_points
        );
        if c.canary_failed >= MIN_FAILURES && cr * 100.0 > lr * 100.0 + self.margin_points {
            return Verdict::RollBack(format!("the candidate fails more often: {rates}"));
        }
        if !over {
            return Verdict::Wait;
        }
        if c.canary < self.min_messages {
            return Verdict::RollBack(format!(
                "too few messages ran on the candidate to judge it ({} < {}): {rates}",
                c.canary, self.min_messages
            ));
        }
        Verdict::Promote(format!("the candidate fails no more often: {rates}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(canary: u64, canary_failed: u64, live: u64, live_failed: u64) -> Counts {
        Counts {
            canary,
            canary_failed,
            live,
            live_failed,
        }
    }

    const RULE: Rule = Rule {
        min_messages: 20,
        margin_points: 5.0,
    };

    #[test]
    fn a_candidate_failing_more_is_rolled_back_before_the_window_ends() {
        let v = RULE.judge(&counts(10, 3, 90, 0), false);
        assert!(
            matches!(v, Verdict::RollBack(ref r) if r.contains("3/10")),
            "{v:?}"
        );
        // Two failures are not enough, whatever the rate.
        assert_eq!(RULE.judge(&counts(2, 2, 90, 0), false), Verdict::Wait);
        // Within the margin of the live version's rate.
        assert_eq!(RULE.judge(&counts(100, 12, 900, 90), false), Verdict::Wait);
        assert!(matches!(
            RULE.judge(&counts(100, 16, 900, 90), false),
            Verdict::RollBack(_)
        ));
    }

    #[test]
    fn promotion_needs_the_window_over_and_enough_candidate_runs() {
        assert_eq!(RULE.judge(&counts(50, 0, 450, 0), false), Verdict::Wait);
        assert!(matches!(
            RULE.judge(&counts(50, 1, 450, 0), true),
            Verdict::Promote(_)
        ));
        let v = RULE.judge(&counts(5, 0, 45, 0), true);
        assert!(
            matches!(v, Verdict::RollBack(ref r) if r.contains("too few")),
            "{v:?}"
        );
    }

    #[test]
    fn the_pick_is_stable_and_near_the_percent() {
        let slot_of = |k: &str| slot("deploy-1", k);
        assert_eq!(slot_of("m-1"), slot_of("m-1"));
        let n = 10_000;
        let picked = (0..n).filter(|i| slot_of(&format!("m-{i}")) < 10).count();
        assert!((800..1200).contains(&picked), "{picked}");
        // Another canary picks another slice.
        let other = (0..n)
            .filter(|i| slot_of(&format!("m-{i}")) < 10 && slot("deploy-2", &format!("m-{i}")) < 10)
            .count();
        assert!(other < 300, "{other}");
    }
}
