//! What the dashboard shows of the last moments of one handler: the
//! sandbox times of its last [`LATENCY_WINDOW`] messages (for live
//! percentiles, which a lifetime histogram cannot give) and its last
//! [`FAILURES_KEPT`] failures with their reasons.
//!
//! Bounded by construction: both are rings. It records; the pipeline
//! decides what to record and the admin endpoint reads it.

use std::collections::VecDeque;
use std::sync::Mutex;

use serde::Serialize;

/// How many of the latest sandbox times the percentiles cover.
pub const LATENCY_WINDOW: usize = 2048;
/// How many of the latest failures are kept.
pub const FAILURES_KEPT: usize = 20;
/// The longest reason kept per failure, in bytes.
const REASON_BYTES: usize = 300;

/// One failed message.
#[derive(Debug, Clone, Serialize)]
pub struct Failure {
    /// Seconds since the Unix epoch.
    pub at: u64,
    pub message_id: String,
    /// `reject`, `trap`, `timeout`, ...
    pub kind: String,
    pub reason: String,
    /// What happened to it: `retry` or `dead_letter`.
    pub outcome: &'static str,
    /// The module digest that ran it, if one did.
    pub module: Option<String>,
}

/// Percentiles of the latest sandbox times, in milliseconds.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Latency {
    pub samples: usize,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

/// One handler's recent latencies and failures.
#[derive(Debug, Default)]
pub struct Recent {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    latencies: VecDeque<f32>,
    failures: VecDeque<Failure>,
}

impl Recent {
    /// Records the sandbox times of a batch, in seconds (one lock a batch).
    pub fn latencies(&self, secs: &[f64]) {
        let mut i = self.inner.lock().expect("recent lock");
        for s in secs {
            if i.latencies.len() == LATENCY_WINDOW {
                i.latencies.pop_front();
            }
            i.latencies.push_back(*s as f32);
        }
    }

    /// Records a failure; the reason is cut to a few hundred bytes.
    pub fn failure(&self, mut f: Failure) {
        if f.reason.len() > REASON_BYTES {
            let mut end = REASON_BYTES;
            while !f.reason.is_char_boundary(end) {
                end -= 1;
            }
            f.reason.truncate(end);
            f.reason.push('…');
        }
        let mut i = self.inner.lock().expect("recent lock");
        if i.failures.len() == FAILURES_KEPT {
            i.failures.pop_front();
        }
        i.failures.push_back(f);
    }

    /// The percentiles of the latest times (nearest rank).
    pub fn latency(&self) -> Latency {
        let mut v: Vec<f32> = {
            let i = self.inner.lock().expect("recent lock");
            i.latencies.iter().copied().collect()
        };
        if v.is_empty() {
            return Latency::default();
        }
        v.sort_by(f32::total_cmp);
        let at = |p: f64| {
            let rank = ((p * v.len() as f64).ceil() as usize).clamp(1, v.len());
            f64::from(v[rank - 1]) * 1000.0
        };
        Latency {
            samples: v.len(),
            p50_ms: at(0.50),
            p90_ms: at(0.90),
            p99_ms: at(0.99),
            max_ms: at(1.0),
        }
    }

    /// The latest failures, newest first.
    pub fn failures(&self) -> Vec<Failure> {
        let i = self.inner.lock().expect("recent lock");
        i.failures.iter().rev().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_cover_only_the_window() {
        let r = Recent::default();
        r.latencies(&[10.0; LATENCY_WINDOW]);
        // 1..=128 ms, 17 times over: the window holds the last 16 rounds.
        let ms: Vec<f64> = (1..=128).map(|i| f64::from(i) / 1000.0).collect();
        for _ in 0..=(LATENCY_WINDOW / 128) {
            r.latencies(&ms);
        }
        let l = r.latency();
        assert_eq!(l.samples, LATENCY_WINDOW);
        assert!((l.p50_ms - 64.0).abs() < 0.01, "{l:?}");
        assert!((l.p90_ms - 116.0).abs() < 0.01, "{l:?}");
        assert!((l.p99_ms - 127.0).abs() < 0.01, "{l:?}");
        assert!((l.max_ms - 128.0).abs() < 0.01, "{l:?}");
        assert_eq!(Recent::default().latency(), Latency::default());
    }

    #[test]
    fn failures_are_a_ring_of_short_reasons() {
        let r = Recent::default();
        for i in 0..(FAILURES_KEPT + 5) {
            r.failure(Failure {
                at: i as u64,
                message_id: format!("m-{i}"),
                kind: "reject".into(),
                reason: "é".repeat(1000),
                outcome: "dead_letter",
                module: None,
            });
        }
        let f = r.failures();
        assert_eq!(f.len(), FAILURES_KEPT);
        assert_eq!(f[0].message_id, format!("m-{}", FAILURES_KEPT + 4));
        assert!(f[0].reason.len() <= REASON_BYTES + 3);
    }
}
