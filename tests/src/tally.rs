//! Reading what a test's warrens did: their outcome counters side by side
//! for failure messages, and the outputs counted per body.
//!
//! The counters themselves come from [`Warren`]'s `/metrics` readers; this
//! module only adds them up and compares.

use std::collections::BTreeMap;

use crate::broker::Got;
use crate::process::Warren;

/// Every process's outcome counters, for failure messages.
pub fn table(ws: &[&Warren]) -> String {
    ws.iter()
        .map(|w| {
            format!(
                "pid {}: ack={} dedup_hit={} deferred={} retry={} requeued={} dead_letter={} runs={} bypassed={}",
                w.pid(),
                w.outcome("ack"),
                w.outcome("dedup_hit"),
                w.outcome("deferred"),
                w.outcome("retry"),
                w.outcome("requeued"),
                w.outcome("dead_letter"),
                w.runs(),
                w.bypassed()
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The sum of `f` over the processes.
pub fn sum(ws: &[&Warren], f: impl Fn(&Warren) -> u64) -> u64 {
    ws.iter().map(|w| f(w)).sum()
}

/// How many outputs carry each body.
pub fn count_bodies(got: &[Got]) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for g in got {
        *counts.entry(g.body_str()).or_insert(0) += 1;
    }
    counts
}

/// Asserts that `got` holds exactly one output per expected body.
pub fn assert_once_each(got: &[Got], expected: &[String]) {
    let counts = count_bodies(got);
    let wrong: Vec<(&String, usize)> = expected
        .iter()
        .map(|b| (b, counts.get(b).copied().unwrap_or(0)))
        .filter(|(_, n)| *n != 1)
        .take(20)
        .collect();
    assert!(
        wrong.is_empty(),
        "{} outputs for {} keys; keys not produced exactly once (first 20): {wrong:?}",
        got.len(),
        expected.len()
    );
    assert_eq!(
        got.len(),
        expected.len(),
        "outputs that match no input: {:?}",
        counts
            .keys()
            .filter(|b| !expected.contains(b))
            .take(20)
            .collect::<Vec<_>>()
    );
}
