//! Shadow runs: a candidate module run beside a handler's live version on
//! a sample of the live messages of this host, its outcome and outputs
//! compared with the live version's and never published.
//!
//! The pipeline runs the candidate right after the live version, on the
//! same message and the same instance permit, in a sandbox of its own; what
//! the candidate publishes stays in its buffer and is dropped. This module
//! keeps the candidate and the tally (counts by agreement, the first
//! differences with their message ids); the admin endpoint starts, reads
//! and stops it.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;

use crate::runtime::{Completed, Module, Outcome, RunError};

/// How many differences a report keeps.
pub const DIFFERENCES_KEPT: usize = 20;

/// A candidate under comparison.
#[derive(Debug)]
pub struct Shadow {
    pub module: Arc<Module>,
    /// Every how many messages one is compared (1: all).
    every: u64,
    seen: AtomicU64,
    report: Mutex<Report>,
}

/// What the comparison found so far.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    pub candidate: String,
    /// The live digest the first comparison ran against.
    pub live: Option<String>,
    pub compared: u64,
    pub agreed: u64,
    pub differed: u64,
    /// The first [`DIFFERENCES_KEPT`] differences, in the order found.
    pub differences: Vec<Difference>,
}

/// One message on which the candidate did not do what the live version did.
#[derive(Debug, Clone, Serialize)]
pub struct Difference {
    pub message_id: String,
    pub live: String,
    pub candidate: String,
}

impl Shadow {
    /// A shadow of `module` comparing one message in `every`.
    pub fn new(module: Arc<Module>, every: u64) -> Shadow {
        let report = Report {
            candidate: module.digest().to_string(),
            ..Report::default()
        };
        Shadow {
            module,
            every: every.max(1),
            seen: AtomicU64::new(0),
            report: Mutex::new(report),
        }
    }

    /// Whether the next message is one to compare.
    pub fn sampled(&self) -> bool {
        self.seen
            .fetch_add(1, Ordering::Relaxed)
            .is_multiple_of(self.every)
    }

    /// Records one comparison.
    pub fn record(
        &self,
        message_id: &str,
        live_digest: &str,
        live: &Result<Completed, RunError>,
        candidate: &Result<Completed, RunError>,
    ) {
        let (l, c) = (describe(live), describe(candidate));
        let mut r = self.report.lock().expect("shadow report lock");
        r.live.get_or_insert_with(|| live_digest.to_string());
        r.compared += 1;
        if l == c {
            r.agreed += 1;
        } else {
            r.differed += 1;
            if r.differences.len() < DIFFERENCES_KEPT {
                r.differences.push(Difference {
                    message_id: message_id.to_string(),
                    live: l,
                    candidate: c,
                });
            }
        }
    }

    pub fn report(&self) -> Report {
        self.report.lock().expect("shadow report lock").clone()
    }
}

/// A run's outcome and outputs as one comparable line: the outcome (and
/// reason), then each output's exchange, routing key, properties, headers
/// and body.
pub fn describe(r: &Result<Completed, RunError>) -> String {
    let c = match r {
        Ok(c) => c,
        Err(e) => return format!("failed ({}): {e}", e.kind()),
    };
    let mut s = match &c.outcome {
        Outcome::Ack => "ack".to_string(),
        Outcome::Retry(r) => format!("retry: {}", r.reason),
        Outcome::Reject(reason) => format!("reject: {reason}"),
    };
    for o in &c.publishes {
        let body = String::from_utf8_lossy(&o.body);
        let body: String = body.chars().take(200).collect();
        s.push_str(&format!(
            "; publish {:?} {:?} {:?} {body:?}",
            o.exchange,
            o.routing_key,
            (
                &o.content_type,
                &o.content_encoding,
                &o.correlation_id,
                &o.type_,
                &o.headers
            )
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn done(outcome: Outcome) -> Result<Completed, RunError> {
        Ok(Completed {
            outcome,
            publishes: Vec::new(),
            logs_dropped: 0,
            stdio_dropped: 0,
            kv_writes: Vec::new(),
        })
    }

    #[test]
    fn outcomes_compare_with_their_reasons_and_failures_by_kind() {
        assert_eq!(describe(&done(Outcome::Ack)), "ack");
        assert_eq!(
            describe(&done(Outcome::Reject("bad".into()))),
            "reject: bad"
        );
        let trap = Err(RunError::Trap {
            message: "unreachable".into(),
        });
        assert_eq!(
            describe(&trap),
            "failed (trap): handler trapped: unreachable"
        );
        assert_ne!(
            describe(&done(Outcome::Reject("bad".into()))),
            describe(&done(Outcome::Reject("worse".into())))
        );
    }
}
