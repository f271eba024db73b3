//! The results: one row per line, each figure with its ratio to line 2 (the
//! broker's no-ack ceiling), and the targets, as a markdown table.

use std::fmt::Write as _;

/// What one line measured.
#[derive(Debug, Clone, PartialEq)]
pub struct Measured {
    /// Messages per second while draining the filled queue.
    pub drain_rate: f64,
    /// Consumer CPU time (user + system, every consumer process) per message
    /// drained, in microseconds.
    pub cpu_us: f64,
    /// The fixed publish rate of the latency phase (half the drain rate).
    pub latency_rate: f64,
    /// The rate the broker actually took those messages at (to the last
    /// confirm); below `latency_rate` when it could not keep up.
    pub achieved_rate: f64,
    /// The broker's CPU time per message drained, in microseconds (if its
    /// process was found).
    pub broker_cpu_us: Option<f64>,
    /// Redis's CPU time per message drained, in microseconds (if its
    /// process was found): what dedup costs the server.
    pub redis_cpu_us: Option<f64>,
    /// Share of the machine's CPU used by other programs (not the consumer,
    /// the broker, Redis or the bench) while the line drained.
    pub others_busy: f64,
    /// Latency samples received, of those published.
    pub samples: usize,
    pub published: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// The consumer's resident memory (all its processes) once ready,
    /// before the drain, in MiB.
    pub rss_idle_mib: f64,
    /// The highest resident memory seen while it drained (every 20 ms).
    pub rss_drain_mib: f64,
    /// The broker's memory for the input queue once filled with N
    /// messages, in MiB.
    pub queue_mib: Option<f64>,
}

/// One line of the table.
#[derive(Debug, Clone)]
pub struct Row {
    pub id: String,
    pub what: String,
    /// The figures, or why there are none (skipped or failed).
    pub result: Result<Measured, String>,
}

/// The `p`-th percentile (0 < p <= 1) by nearest rank; `samples` is sorted
/// in place.
pub fn percentile(samples: &mut [u64], p: f64) -> Option<u64> {
    if samples.is_empty() {
        return None;
    }
    samples.sort_unstable();
    let rank = (p * samples.len() as f64).ceil().max(1.0) as usize;
    Some(samples[rank.min(samples.len()) - 1])
}

fn find<'a>(rows: &'a [Row], id: &str) -> Option<&'a Measured> {
    rows.iter()
        .find(|r| r.id == id)
        .and_then(|r| r.result.as_ref().ok())
}

/// A figure with `decimals`, or "-" if it was not measured.
fn fig(x: f64, decimals: usize) -> String {
    if x.is_nan() {
        "-".into()
    } else {
        format!("{x:.decimals$}")
    }
}

fn ratio(x: f64, base: Option<f64>) -> String {
    match base {
        _ if x.is_nan() => "-".into(),
        Some(b) if b > 0.0 && x / b < 0.1 => format!("{:.3}x", x / b),
        Some(b) if b > 0.0 => format!("{:.2}x", x / b),
        _ => "-".into(),
    }
}

/// The table, in markdown.
pub fn table(rows: &[Row]) -> String {
    let base = find(rows, "2");
    let mut t = String::new();
    t += "| # | consumer | drain (msg/s) | vs 2 | CPU/msg (µs) | vs 2 | broker CPU/msg (µs) | Redis CPU/msg (µs) | p50 (ms) | vs 2 | p99 (ms) | vs 2 | latency at (msg/s) | RSS idle (MiB) | RSS draining (MiB) | full queue in broker memory (MiB) | notes |\n";
    t += "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|\n";
    for r in rows {
        match &r.result {
            Ok(m) => {
                let mut notes = Vec::new();
                if m.achieved_rate < 0.95 * m.latency_rate {
                    notes.push(format!(
                        "the broker took only {:.0} msg/s of the latency load",
                        m.achieved_rate
                    ));
                }
                if (m.samples as u64) < m.published {
                    notes.push(format!(
                        "{} of {} timed messages came back",
                        m.samples, m.published
                    ));
                }
                if m.others_busy > 0.05 {
                    notes.push(format!(
                        "other programs used {:.0}% of the machine while it drained",
                        m.others_busy * 100.0
                    ));
                }
                let _ = writeln!(
                    t,
                    "| {} | {} | {:.0} | {} | {:.1} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                    r.id,
                    r.what,
                    m.drain_rate,
                    ratio(m.drain_rate, base.map(|b| b.drain_rate)),
                    m.cpu_us,
                    ratio(m.cpu_us, base.map(|b| b.cpu_us)),
                    m.broker_cpu_us.map_or("-".into(), |b| format!("{b:.1}")),
                    m.redis_cpu_us.map_or("-".into(), |b| format!("{b:.1}")),
                    fig(m.p50_ms, 2),
                    ratio(m.p50_ms, base.map(|b| b.p50_ms)),
                    fig(m.p99_ms, 2),
                    ratio(m.p99_ms, base.map(|b| b.p99_ms)),
                    fig(m.latency_rate, 0),
                    fig(m.rss_idle_mib, 0),
                    fig(m.rss_drain_mib, 0),
                    m.queue_mib.map_or("-".into(), |q| format!("{q:.1}")),
                    notes.join("; "),
                );
            }
            Err(why) => {
                let _ = writeln!(
                    t,
                    "| {} | {} | | | | | | | | | | | | | | | {} |",
                    r.id,
                    r.what,
                    why.replace('\n', " ").replace('|', "/")
                );
            }
        }
    }
    t
}

/// The targets, each reached, missed or not measured.
/// Each warren line against its `@base` twin from the baseline binary:
/// drain rate and consumer CPU per message as ratios (this build over the
/// baseline).
pub fn against_baseline(rows: &[Row]) -> String {
    let mut t =
        String::from("\nAgainst the baseline binary (this build / baseline, same run):\n\n");
    for r in rows {
        let Some(id) = r.id.strip_suffix("@base") else {
            continue;
        };
        match (find(rows, id), find(rows, &r.id)) {
            (Some(new), Some(base)) => t.push_str(&format!(
                "- line {id}: drain {:.3}x ({:.0} vs {:.0} msg/s), consumer CPU per message {:.3}x ({:.1} vs {:.1} us)\n",
                new.drain_rate / base.drain_rate,
                new.drain_rate,
                base.drain_rate,
                new.cpu_us / base.cpu_us,
                new.cpu_us,
                base.cpu_us,
            )),
            _ => t.push_str(&format!("- line {id}: not measured for both binaries\n")),
        }
    }
    t
}

/// Lines 2e and 5 on each queue kind (classic version 2, warren's
/// default; version 1; quorum): warren against the bare echo on the same
/// kind, and what the broker holds in memory for a full input queue; and
/// two warren hosts on two nodes of a 3-node cluster against the bare echo
/// on the same cluster (issue 15).
pub fn queue_kinds(rows: &[Row]) -> String {
    let kinds = [
        ("classic version 2", "2e", "5"),
        ("classic version 1", "2e1", "51"),
        ("quorum", "2eq", "5q"),
        ("quorum, 3-node cluster, 2 warren hosts", "2ec", "6c"),
    ];
    let mut t = String::new();
    for (kind, bare, ours) in kinds {
        let (Some(b), Some(w)) = (find(rows, bare), find(rows, ours)) else {
            continue;
        };
        let mib = |m: &Measured| m.queue_mib.map_or("-".into(), |q| format!("{q:.1}"));
        t.push_str(&format!(
            "- {kind}: line {ours} {:.0} msg/s vs line {bare} {:.0} msg/s: drain {:.2}x, consumer CPU per message {:.2}x; full input queue in broker memory {} / {} MiB\n",
            w.drain_rate,
            b.drain_rate,
            w.drain_rate / b.drain_rate,
            w.cpu_us / b.cpu_us,
            mib(w),
            mib(b),
        ));
    }
    if !t.is_empty() {
        t.insert_str(
            0,
            "\nQueue kinds (warren against the bare echo on the same kind, same run):\n\n",
        );
    }
    t
}

/// What a capability costs the host per message, each against its own
/// base line of the same run: a key-value get + set (5k against 5c, the
/// same guest making no call), and
/// one loopback HTTP request in warren (5h against 5) next to a bare hyper
/// client doing the same request (2eh against 2e).
pub fn extras(rows: &[Row]) -> String {
    let mut t = String::new();
    if let (Some(k), Some(c)) = (find(rows, "5k"), find(rows, "5c")) {
        t.push_str(&format!(
            "- key-value get + set: {:.1} µs of host CPU per message (line 5k {:.1} µs - line 5c {:.1} µs, the same guest without the calls; issue 14 wants at most 5)\n",
            k.cpu_us - c.cpu_us,
            k.cpu_us,
            c.cpu_us
        ));
    }
    if let (Some(h), Some(w)) = (find(rows, "5h"), find(rows, "5")) {
        let bare = match (find(rows, "2eh"), find(rows, "2e")) {
            (Some(bh), Some(b)) => format!(
                "; a bare hyper client: {:.1} µs (line 2eh {:.1} - line 2e {:.1}), so warren's request costs {:.2}x the bare client's",
                bh.cpu_us - b.cpu_us,
                bh.cpu_us,
                b.cpu_us,
                (h.cpu_us - w.cpu_us) / (bh.cpu_us - b.cpu_us)
            ),
            _ => String::new(),
        };
        t.push_str(&format!(
            "- one loopback HTTP request: {:.1} µs of consumer CPU per message in warren (line 5h {:.1} - line 5 {:.1}; drain {:.0} vs {:.0} msg/s){bare}\n",
            h.cpu_us - w.cpu_us,
            h.cpu_us,
            w.cpu_us,
            h.drain_rate,
            w.drain_rate
        ));
    }
    if !t.is_empty() {
        t.insert_str(0, "\nWhat a capability costs (same run):\n\n");
    }
    t
}

pub fn targets(rows: &[Row]) -> String {
    let (l2, l2e, l5, l5n, l5d) = (
        find(rows, "2"),
        find(rows, "2e"),
        find(rows, "5"),
        find(rows, "5n"),
        find(rows, "5d"),
    );
    let mut t = String::new();
    // Each target is a ratio of two figures of this run: `x / y` against
    // the bound, at least (`at_least`) or at most.
    let mut check = |name: &str, got: Option<(f64, f64)>, bound: f64, at_least: bool| {
        let want = format!("want {} {bound}x", if at_least { ">=" } else { "<=" });
        let line = match got.filter(|(x, y)| *y > 0.0 && !x.is_nan() && !y.is_nan()) {
            Some((x, y)) => {
                let r = x / y;
                let ok = if at_least { r >= bound } else { r <= bound };
                format!(
                    "- {name}: {} ({want}; measured {r:.2}x)",
                    if ok { "reached" } else { "MISSED" }
                )
            }
            None => format!("- {name}: not measured ({want})"),
        };
        t.push_str(&line);
        t.push('\n');
    };
    let pair =
        |a: Option<&Measured>, b: Option<&Measured>, f: fn(&Measured) -> f64| Some((f(a?), f(b?)));
    check(
        "line 5 vs line 2e (drain)",
        pair(l5, l2e, |m| m.drain_rate),
        0.95,
        true,
    );
    check(
        "line 5 vs line 2e (consumer CPU per message)",
        pair(l5, l2e, |m| m.cpu_us),
        1.4,
        false,
    );
    check(
        "line 5n vs line 2 (drain)",
        pair(l5n, l2, |m| m.drain_rate),
        0.6,
        true,
    );
    check(
        "line 5d vs line 5 (drain)",
        pair(l5d, l5, |m| m.drain_rate),
        0.9,
        true,
    );
    check(
        "line 5 vs line 2e (p99 at half load)",
        pair(l5, l2e, |m| m.p99_ms),
        2.0,
        false,
    );
    t
}

/// One row per line from several rounds: the line's round with the median
/// CPU per message (of the rounds it was measured in; the first failure
/// when it never was), in the order of the first round.
pub fn median_rounds(rounds: &[Vec<Row>]) -> Vec<Row> {
    let Some(first) = rounds.first() else {
        return Vec::new();
    };
    first
        .iter()
        .map(|row| {
            let mut measured: Vec<&Row> = rounds
                .iter()
                .filter_map(|r| r.iter().find(|x| x.id == row.id))
                .filter(|x| x.result.is_ok())
                .collect();
            measured.sort_by(|a, b| {
                let cpu = |r: &Row| r.result.as_ref().map_or(f64::NAN, |m| m.cpu_us);
                cpu(a).total_cmp(&cpu(b))
            });
            let pick = measured.get(measured.len() / 2).copied().unwrap_or(row);
            Row {
                id: pick.id.clone(),
                what: pick.what.clone(),
                result: pick.result.clone(),
            }
        })
        .collect()
}

/// Every round's CPU per message by line, and the key-value cost (5k - 5c)
/// paired within each round, with its median.
pub fn rounds(rounds: &[Vec<Row>]) -> String {
    let mut t = String::from("\nEvery round (consumer CPU per message, µs):\n\n| line |");
    for i in 1..=rounds.len() {
        t.push_str(&format!(" round {i} |"));
    }
    t.push_str("\n|---|");
    t.push_str(&"---:|".repeat(rounds.len()));
    t.push('\n');
    let Some(first) = rounds.first() else {
        return String::new();
    };
    for row in first {
        t.push_str(&format!("| {} |", row.id));
        for r in rounds {
            let cpu = find(r, &row.id).map_or(f64::NAN, |m| m.cpu_us);
            t.push_str(&format!(" {} |", fig(cpu, 1)));
        }
        t.push('\n');
    }
    for (k, c, label) in [("5k", "5c", ""), ("5k@base", "5c@base", " (baseline)")] {
        let mut diffs: Vec<f64> = rounds
            .iter()
            .filter_map(|r| Some(find(r, k)?.cpu_us - find(r, c)?.cpu_us))
            .collect();
        if diffs.len() < 2 {
            continue;
        }
        let shown: Vec<String> = diffs.iter().map(|d| format!("{d:.1}")).collect();
        diffs.sort_by(f64::total_cmp);
        let median = if diffs.len() % 2 == 1 {
            diffs[diffs.len() / 2]
        } else {
            (diffs[diffs.len() / 2 - 1] + diffs[diffs.len() / 2]) / 2.0
        };
        t.push_str(&format!(
            "\n- key-value get + set{label}, line {k} - line {c} within each round: {} µs; median **{median:.1} µs** (issue 14 wants at most 5)\n",
            shown.join(", ")
        ));
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_by_nearest_rank() {
        let mut s: Vec<u64> = (1..=100).rev().collect();
        assert_eq!(percentile(&mut s, 0.5), Some(50));
        assert_eq!(percentile(&mut s, 0.99), Some(99));
        assert_eq!(percentile(&mut s, 1.0), Some(100));
        assert_eq!(percentile(&mut [7], 0.99), Some(7));
        assert_eq!(percentile(&mut [], 0.5), None);
    }

    fn m(drain_rate: f64, cpu_us: f64) -> Measured {
        Measured {
            drain_rate,
            cpu_us,
            latency_rate: drain_rate / 2.0,
            achieved_rate: drain_rate / 2.0,
            broker_cpu_us: Some(5.0),
            redis_cpu_us: Some(2.5),
            others_busy: 0.0,
            samples: 10,
            published: 10,
            p50_ms: 1.0,
            p99_ms: 2.0,
            rss_idle_mib: 10.0,
            rss_drain_mib: 20.0,
            queue_mib: Some(1.5),
        }
    }

    fn row(id: &'static str, r: Result<Measured, String>) -> Row {
        Row {
            id: id.to_string(),
            what: format!("line {id}"),
            result: r,
        }
    }

    #[test]
    fn ratios_are_to_line_2_and_targets_are_judged() {
        let rows = [
            row("1", Ok(m(10_000.0, 30.0))),
            row("2", Ok(m(40_000.0, 10.0))),
            row("3", Ok(m(1_000.0, 300.0))),
            row("5", Ok(m(25_000.0, 20.0))),
            row("7a", Err("skipped: no module".into())),
        ];
        let t = table(&rows);
        assert!(
            t.contains("| 5 | line 5 | 25000 | 0.62x | 20.0 | 2.00x | 5.0 | 2.5 | 1.00 | 1.00x |"),
            "{t}"
        );
        assert!(t.contains("| 3 | line 3 | 1000 | 0.025x |"), "{t}");
        assert!(
            t.contains("| 7a | line 7a | | | | | | | | | | | | | | | skipped: no module |"),
            "{t}"
        );
        let busy = Measured {
            others_busy: 0.3,
            achieved_rate: 100.0,
            ..m(1000.0, 10.0)
        };
        let no_output = Measured {
            p50_ms: f64::NAN,
            p99_ms: f64::NAN,
            latency_rate: f64::NAN,
            achieved_rate: f64::NAN,
            ..m(1000.0, 10.0)
        };
        let t = table(&[row("2", Ok(m(2000.0, 5.0))), row("5n", Ok(no_output))]);
        assert!(
            t.contains(
                "| 5n | line 5n | 1000 | 0.50x | 10.0 | 2.00x | 5.0 | 2.5 | - | - | - | - | - | 10 | 20 | 1.5 |  |"
            ),
            "{t}"
        );
        let t = table(&[row("4", Ok(busy))]);
        assert!(
            t.contains("| 500 | 10 | 20 | 1.5 | the broker took only 100 msg/s of the latency load; other programs used 30% of the machine while it drained |"),
            "{t}"
        );
        let g = targets(&[
            row("2", Ok(m(40_000.0, 10.0))),
            row("2e", Ok(m(10_000.0, 20.0))),
            row("5", Ok(m(9_600.0, 30.0))),
            row("5n", Ok(m(20_000.0, 25.0))),
            row("5d", Ok(m(8_000.0, 30.0))),
        ]);
        assert!(
            g.contains("- line 5 vs line 2e (drain): reached (want >= 0.95x; measured 0.96x)\n"),
            "{g}"
        );
        assert!(
            g.contains("- line 5 vs line 2e (consumer CPU per message): MISSED (want <= 1.4x; measured 1.50x)\n"),
            "{g}"
        );
        assert!(g.contains("line 5n vs line 2 (drain): MISSED"), "{g}");
        assert!(g.contains("line 5d vs line 5 (drain): MISSED"), "{g}");
        assert!(
            g.contains(
                "line 5 vs line 2e (p99 at half load): reached (want <= 2x; measured 1.00x)"
            ),
            "{g}"
        );
        let kinds = queue_kinds(&[
            row("2e", Ok(m(10_000.0, 20.0))),
            row("5", Ok(m(9_000.0, 30.0))),
            row("2eq", Ok(m(5_000.0, 20.0))),
        ]);
        assert!(
            kinds.contains("- classic version 2: line 5 9000 msg/s vs line 2e 10000 msg/s: drain 0.90x, consumer CPU per message 1.50x; full input queue in broker memory 1.5 / 1.5 MiB\n"),
            "{kinds}"
        );
        assert!(!kinds.contains("quorum"), "5q was not measured: {kinds}");
        let missing = targets(&[row("5", Ok(m(25_000.0, 30.0)))]);
        assert!(
            missing.contains("- line 5d vs line 5 (drain): not measured (want >= 0.9x)"),
            "{missing}"
        );
    }

    #[test]
    fn rounds_pick_the_median_row_and_pair_the_key_value_cost() {
        let round = |c: f64, k: f64| vec![row("5c", Ok(m(1.0, c))), row("5k", Ok(m(1.0, k)))];
        let rounds = [round(30.0, 34.0), round(20.0, 29.0), round(25.0, 28.0)];
        let rows = median_rounds(&rounds);
        let cpu: Vec<f64> = rows
            .iter()
            .map(|r| r.result.as_ref().unwrap().cpu_us)
            .collect();
        assert_eq!(cpu, [25.0, 29.0]);
        let text = super::rounds(&rounds);
        assert!(
            text.contains("4.0, 9.0, 3.0 µs; median **4.0 µs**"),
            "{text}"
        );
        // A line that failed in one round is read from the others.
        let mut failed = rounds.to_vec();
        failed[1][0].result = Err("skipped".into());
        let rows = median_rounds(&failed);
        assert_eq!(rows[0].result.as_ref().unwrap().cpu_us, 30.0);
    }
}
