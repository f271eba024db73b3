//! What `warren test` prints: one run in full, a line per case, the
//! mismatches of a failed case as a readable diff, and the summary.
//! Colours and the progress line only when writing to a terminal.

use std::io::{self, IsTerminal as _, Write};
use std::time::Duration;

use super::case::{Mismatch, headers_to_toml};
use super::store::{Written, value_to_toml};
use super::{Failure, Observed, Summary, Trial};
use crate::runtime::{Completed, Outbound, Outcome};

/// How to print: plain (a file, a pipe, CI) or for a terminal.
#[derive(Debug, Clone, Copy, Default)]
pub struct Style {
    /// ANSI colours on stdout.
    pub colour: bool,
    /// A transient progress line on stderr.
    pub progress: bool,
}

impl Style {
    /// Colours when stdout is a terminal and `NO_COLOR` is unset;
    /// progress when stderr is a terminal.
    pub fn detect() -> Style {
        Style {
            colour: io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none(),
            progress: io::stderr().is_terminal(),
        }
    }

    /// Shows `what` on the progress line (overwritten by the next).
    pub fn progress(&self, what: &str) {
        if self.progress {
            let mut err = io::stderr().lock();
            let _ = write!(err, "\r\x1b[2K{what}");
            let _ = err.flush();
        }
    }

    fn clear_progress(&self) {
        if self.progress {
            let _ = write!(io::stderr().lock(), "\r\x1b[2K");
        }
    }

    fn paint(&self, code: &str, text: &str) -> String {
        if self.colour {
            format!("\x1b[{code}m{text}\x1b[0m")
        } else {
            text.to_string()
        }
    }

    fn green(&self, t: &str) -> String {
        self.paint("32", t)
    }
    fn red(&self, t: &str) -> String {
        self.paint("31", t)
    }
    fn yellow(&self, t: &str) -> String {
        self.paint("33", t)
    }
    fn dim(&self, t: &str) -> String {
        self.paint("2", t)
    }
}

/// How one case went.
#[derive(Debug)]
pub enum Verdict {
    Pass(Duration),
    Fail {
        elapsed: Duration,
        description: Option<String>,
        mismatches: Vec<Mismatch>,
        logs: Vec<String>,
    },
    /// The case has no `[expect]`: it ran, but nothing was checked.
    NoExpectation(Duration),
    /// `--update` wrote what was observed.
    Updated(Duration),
    /// The case file could not be read, parsed or turned into a message.
    Broken(String),
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

/// A single run in full: the outcome, each output, the log lines, the time.
pub fn one(trial: &Trial, o: &Observed, style: Style, out: &mut impl Write) -> io::Result<()> {
    style.clear_progress();
    let m = trial.module();
    writeln!(out, "module:   {} ({})", m.digest().short(), trial.env.name)?;
    match &o.result {
        Ok(done) => {
            let outcome = match &done.outcome {
                Outcome::Ack => style.green("ack"),
                Outcome::Retry(r) => style.yellow(&format!(
                    "retry after {}: {}",
                    r.delay_ms
                        .map_or("the handler's backoff".into(), |d| format!("{d} ms")),
                    r.reason
                )),
                Outcome::Reject(why) => style.red(&format!("reject: {why}")),
            };
            writeln!(out, "outcome:  {outcome}")?;
            if done.publishes.is_empty() {
                writeln!(out, "outputs:  none")?;
            } else {
                let sent = if done.outcome == Outcome::Ack {
                    "sent on ack"
                } else {
                    "dropped: the outcome is not ack"
                };
                writeln!(out, "outputs:  {} ({sent})", done.publishes.len())?;
            }
            for (i, p) in done.publishes.iter().enumerate() {
                output(i, p, out)?;
            }
            kv(done, &o.kv, out)?;
            if done.logs_dropped > 0 || done.stdio_dropped > 0 {
                writeln!(
                    out,
                    "dropped:  {} log lines, {} bytes of stdout/stderr (past the per-message caps)",
                    done.logs_dropped, done.stdio_dropped
                )?;
            }
        }
        Err(e) => {
            writeln!(out, "outcome:  {} ({e})", style.red(e.kind()))?;
            let then = match e {
                Failure::Run(_) => {
                    "warren run would retry it with backoff, and dead-letter it past max_attempts"
                }
                Failure::BeforeGuest { .. } => {
                    "warren run dead-letters it at once, before any guest runs; it is never retried"
                }
            };
            writeln!(out, "          {then}")?;
        }
    }
    if o.logs.is_empty() {
        writeln!(out, "logs:     none")?;
    } else {
        writeln!(out, "logs:")?;
        for l in &o.logs {
            writeln!(out, "  {l}")?;
        }
    }
    writeln!(out, "time:     {} (instantiate and handle)", ms(o.elapsed))
}

/// The run's key-value writes: what they commit to on an ack, or that
/// they are dropped.
fn kv(done: &Completed, written: &Written, out: &mut impl Write) -> io::Result<()> {
    if done.kv_writes.is_empty() {
        return writeln!(out, "kv:       no writes");
    }
    let n = done.kv_writes.len();
    if done.outcome != Outcome::Ack {
        return writeln!(
            out,
            "kv:       {n} writes (dropped: the outcome is not ack)"
        );
    }
    match written {
        Err(why) => writeln!(out, "kv:       {n} writes, not committed: {why}"),
        Ok(keys) => {
            writeln!(out, "kv:       {n} writes, committed with the done-marker:")?;
            for (key, value) in keys {
                match value_to_toml(value.as_deref()) {
                    toml::Value::Boolean(false) => writeln!(out, "  {key:?} deleted")?,
                    v => writeln!(out, "  {key:?} = {v}")?,
                }
            }
            Ok(())
        }
    }
}

fn output(i: usize, p: &Outbound, out: &mut impl Write) -> io::Result<()> {
    writeln!(out, "  [{i}] exchange:    {:?}", p.exchange)?;
    writeln!(out, "      routing key: {:?}", p.routing_key)?;
    for (name, v) in [
        ("content-type", &p.content_type),
        ("content-encoding", &p.content_encoding),
        ("correlation-id", &p.correlation_id),
        ("type", &p.type_),
    ] {
        if let Some(v) = v {
            writeln!(out, "      {name}: {v:?}")?;
        }
    }
    let headers = headers_to_toml(&p.headers);
    if !headers.is_empty() {
        writeln!(out, "      headers:")?;
        for line in toml::to_string(&headers).unwrap_or_default().lines() {
            writeln!(out, "        {line}")?;
        }
    }
    let body = match std::str::from_utf8(&p.body) {
        Ok(t) => t.to_string(),
        Err(_) => format!("hex:{}", hex::encode(&p.body)),
    };
    writeln!(out, "      body ({} bytes): {body}", p.body.len())
}

/// The line of one case, and for a failure what differs.
pub fn case_line(name: &str, v: &Verdict, style: Style, out: &mut impl Write) -> io::Result<()> {
    style.clear_progress();
    match v {
        Verdict::Pass(t) => writeln!(out, "{} {name} {}", style.green("PASS"), style.dim(&ms(*t))),
        Verdict::Updated(t) => writeln!(
            out,
            "{} {name} {} (expectation written)",
            style.yellow("UPDATED"),
            style.dim(&ms(*t))
        ),
        Verdict::NoExpectation(t) => writeln!(
            out,
            "{} {name} {} (no [expect]: run with --update to record what it did)",
            style.red("FAIL"),
            style.dim(&ms(*t))
        ),
        Verdict::Broken(why) => writeln!(out, "{} {name}: {why}", style.red("FAIL")),
        Verdict::Fail {
            elapsed,
            description,
            mismatches,
            logs,
        } => {
            write!(
                out,
                "{} {name} {}",
                style.red("FAIL"),
                style.dim(&ms(*elapsed))
            )?;
            match description {
                Some(d) => writeln!(out, " ({d})")?,
                None => writeln!(out)?,
            }
            for m in mismatches {
                mismatch(m, style, out)?;
            }
            if !logs.is_empty() {
                writeln!(out, "    logs:")?;
                for l in logs {
                    writeln!(out, "      {l}")?;
                }
            }
            Ok(())
        }
    }
}

/// One difference: on one line when both sides are, else a line diff
/// (`-` expected, `+` got).
fn mismatch(m: &Mismatch, style: Style, out: &mut impl Write) -> io::Result<()> {
    if !m.want.contains('\n') && !m.got.contains('\n') {
        writeln!(out, "    {}:", m.what)?;
        writeln!(
            out,
            "      {}",
            style.red(&format!("- expected: {}", m.want))
        )?;
        return writeln!(
            out,
            "      {}",
            style.green(&format!("+ got:      {}", m.got))
        );
    }
    writeln!(
        out,
        "    {}: {} / {}",
        m.what,
        style.red("- expected"),
        style.green("+ got")
    )?;
    for line in diff_lines(&m.want, &m.got) {
        let text = match line {
            Line::Same(l) => format!("        {l}"),
            Line::Want(l) => style.red(&format!("      - {l}")),
            Line::Got(l) => style.green(&format!("      + {l}")),
        };
        writeln!(out, "{text}")?;
    }
    Ok(())
}

#[derive(Debug, PartialEq)]
enum Line<'a> {
    Same(&'a str),
    Want(&'a str),
    Got(&'a str),
}

/// A line diff by longest common subsequence. Past a size where the table
/// would be large, both sides whole instead.
fn diff_lines<'a>(want: &'a str, got: &'a str) -> Vec<Line<'a>> {
    let a: Vec<&str> = want.lines().collect();
    let b: Vec<&str> = got.lines().collect();
    if a.len().saturating_mul(b.len()) > 4_000_000 {
        return a
            .into_iter()
            .map(Line::Want)
            .chain(b.into_iter().map(Line::Got))
            .collect();
    }
    // lcs[i][j]: the common subsequence length of a[i..] and b[j..].
    let mut lcs = vec![vec![0u32; b.len() + 1]; a.len() + 1];
    for i in (0..a.len()).rev() {
        for j in (0..b.len()).rev() {
            lcs[i][j] = if a[i] == b[j] {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    let (mut i, mut j, mut lines) = (0, 0, Vec::new());
    while i < a.len() || j < b.len() {
        if i < a.len() && j < b.len() && a[i] == b[j] {
            lines.push(Line::Same(a[i]));
            i += 1;
            j += 1;
        } else if i < a.len() && (j == b.len() || lcs[i + 1][j] >= lcs[i][j + 1]) {
            lines.push(Line::Want(a[i]));
            i += 1;
        } else {
            lines.push(Line::Got(b[j]));
            j += 1;
        }
    }
    lines
}

/// The last line: counts and time.
pub fn summary(
    s: &Summary,
    elapsed: Duration,
    style: Style,
    out: &mut impl Write,
) -> io::Result<()> {
    style.clear_progress();
    let total = s.passed + s.failed + s.updated;
    let head = if s.failed > 0 {
        style.red("FAILED")
    } else {
        style.green("ok")
    };
    write!(
        out,
        "{head}: {total} cases, {} passed, {} failed",
        s.passed, s.failed
    )?;
    if s.updated > 0 {
        write!(out, ", {} updated", s.updated)?;
    }
    writeln!(out, " in {:.2} s", elapsed.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_diff_keeps_common_lines_and_marks_the_rest() {
        let d = diff_lines(
            "{\n  \"a\": 1,\n  \"b\": 2\n}",
            "{\n  \"a\": 1,\n  \"b\": 3\n}",
        );
        assert_eq!(
            d,
            [
                Line::Same("{"),
                Line::Same("  \"a\": 1,"),
                Line::Want("  \"b\": 2"),
                Line::Got("  \"b\": 3"),
                Line::Same("}"),
            ]
        );
    }

    #[test]
    fn a_failed_case_prints_plain_without_a_terminal() {
        let v = Verdict::Fail {
            elapsed: Duration::from_millis(2),
            description: Some("d".into()),
            mismatches: vec![Mismatch {
                what: "outcome".into(),
                want: "ack".into(),
                got: "reject".into(),
            }],
            logs: vec![],
        };
        let mut out = Vec::new();
        case_line("c1", &v, Style::default(), &mut out).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "FAIL c1 2.00 ms (d)\n    outcome:\n      - expected: ack\n      + got:      reject\n"
        );
    }
}
