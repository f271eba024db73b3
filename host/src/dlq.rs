//! `warren dlq list|show|replay`: a handler's dead-letter queue as a
//! workflow, through the broker.
//!
//! Every command reads the queue from its head without taking anything
//! (see [`crate::amqp::dlq`]), up to the number of messages it held when
//! the command started, and keeps those that pass the [`Filter`] up to
//! `--limit`. `list` prints one line each, `show` everything warren wrote
//! into each, decoded, and `replay` moves them back to the work queue as
//! first attempts with their message ids (so dedup and output ids still
//! hold); `--dry-run` says what it would move. Whatever is not moved goes
//! back to the dead-letter queue, in its order, when the command ends, or
//! when it is killed.
//!
//! It knows the config (for the queue names, the AMQP URL and the
//! bookkeeping key) and the dead-letter headers; it does not know lapin.

use std::fmt::Write as _;
use std::io::Write;
use std::time::Duration;

use anyhow::Context as _;

use crate::amqp::bookkeeping::Key;
use crate::amqp::dlq::{DeadLetterQueue, Past, Record};
use crate::config::Config;

/// Which dead-lettered messages a command works on; every condition set
/// must hold.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// The reason contains this (case-insensitive).
    pub reason: Option<String>,
    /// The error kind is this (`reject`, `timeout`, `trap`...).
    pub kind: Option<String>,
    /// The module digest starts with this (`sha256:` may be left off).
    pub module: Option<String>,
    /// Dead-lettered at or after (seconds since the Unix epoch).
    pub since: Option<u64>,
    /// Dead-lettered before.
    pub until: Option<u64>,
    /// The message id is this.
    pub id: Option<String>,
}

impl Filter {
    pub fn matches(&self, r: &Record) -> bool {
        let contains = |hay: &Option<String>, needle: &str| {
            hay.as_deref()
                .is_some_and(|h| h.to_lowercase().contains(&needle.to_lowercase()))
        };
        let module_ok = |want: &str| {
            r.module.as_deref().is_some_and(|m| {
                let bare = m.strip_prefix("sha256:").unwrap_or(m);
                m.starts_with(want)
                    || bare.starts_with(want.strip_prefix("sha256:").unwrap_or(want))
            })
        };
        self.reason
            .as_deref()
            .is_none_or(|w| contains(&r.reason, w))
            && self
                .kind
                .as_deref()
                .is_none_or(|k| r.kind.as_deref() == Some(k))
            && self.module.as_deref().is_none_or(module_ok)
            && self
                .since
                .is_none_or(|s| r.failed_at.is_some_and(|t| t >= s))
            && self
                .until
                .is_none_or(|u| r.failed_at.is_some_and(|t| t < u))
            && self
                .id
                .as_deref()
                .is_none_or(|id| r.message_id.as_deref() == Some(id))
    }
}

/// What to do with the messages that pass the filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    List,
    Show,
    Replay { dry_run: bool },
}

/// One `warren dlq` command.
#[derive(Debug, Clone)]
pub struct Request {
    pub handler: String,
    pub action: Action,
    pub filter: Filter,
    /// At most this many messages (all when `None`).
    pub limit: Option<usize>,
}

/// What a command did, for its last line and for callers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    /// Messages the queue held ready when the command started.
    pub depth: u32,
    /// Messages read.
    pub scanned: u32,
    /// Messages that passed the filter (up to the limit).
    pub matched: u32,
    /// Messages moved back to the work queue.
    pub replayed: u32,
}

/// How often `replay` reports progress on stderr.
const PROGRESS_EVERY: u32 = 50;

/// Runs `req` against the broker in `config`; writes its report to `out`
/// and progress to stderr. A move the broker refuses stops the command
/// with that message left in the dead-letter queue.
pub async fn run(config: &Config, req: &Request, out: &mut dyn Write) -> anyhow::Result<Summary> {
    let handler = config
        .handlers
        .iter()
        .find(|h| h.name == req.handler)
        .with_context(|| {
            let names: Vec<&str> = config.handlers.iter().map(|h| h.name.as_str()).collect();
            format!(
                "no handler {:?} in {} (it has: {})",
                req.handler,
                config.path.display(),
                names.join(", ")
            )
        })?;
    crate::amqp::validate_url(&config.amqp.url).map_err(anyhow::Error::msg)?;
    let dlq_name = handler.dead_letter_queue();
    let key = Key::new(config.amqp.bookkeeping_secret().as_bytes());
    let conn_name = format!("warren dlq {}", req.handler);
    let (dlq, depth) = DeadLetterQueue::open(&config.amqp.url, &conn_name, &dlq_name, key)
        .await
        .with_context(|| format!("cannot open dead-letter queue {dlq_name:?}"))?;
    let mut sum = Summary {
        depth,
        ..Summary::default()
    };
    let result = work(&dlq, req, &handler.queue, &dlq_name, &mut sum, out).await;
    dlq.close(Duration::from_secs(5)).await;
    result?;
    let verb = match req.action {
        Action::List | Action::Show => "matched",
        Action::Replay { dry_run: true } => "would be replayed",
        Action::Replay { dry_run: false } => "replayed",
    };
    let n = match req.action {
        Action::Replay { dry_run: false } => sum.replayed,
        _ => sum.matched,
    };
    writeln!(
        out,
        "{dlq_name}: {} messages, {} read, {n} {verb}",
        sum.depth, sum.scanned
    )?;
    Ok(sum)
}

async fn work(
    dlq: &DeadLetterQueue,
    req: &Request,
    work_queue: &str,
    dlq_name: &str,
    sum: &mut Summary,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    if matches!(req.action, Action::List) {
        writeln!(
            out,
            "{:<36}  {:<19}  {:<14}  {:>3}  {:<19}  REASON",
            "MESSAGE ID", "FAILED AT (UTC)", "KIND", "TRY", "MODULE"
        )?;
    }
    let limit = req.limit.unwrap_or(usize::MAX);
    while sum.scanned < sum.depth && (sum.matched as usize) < limit {
        let Some(p) = dlq.next().await? else { break };
        sum.scanned += 1;
        let rec = p.record();
        if !req.filter.matches(&rec) {
            continue;
        }
        sum.matched += 1;
        match req.action {
            Action::List | Action::Replay { dry_run: true } => {
                out.write_all(line(&rec).as_bytes())?
            }
            Action::Show => out.write_all(full(&rec).as_bytes())?,
            Action::Replay { dry_run: false } => {
                if let Err((_, e)) = dlq.replay(p, work_queue, now()).await {
                    anyhow::bail!(
                        "cannot move message {} from {dlq_name:?} to {work_queue:?}: {e}; it stays in the dead-letter queue ({} moved before it)",
                        rec.message_id.as_deref().unwrap_or("(no id)"),
                        sum.replayed
                    );
                }
                sum.replayed += 1;
                if sum.replayed.is_multiple_of(PROGRESS_EVERY) {
                    eprintln!("replayed {} to {work_queue} ...", sum.replayed);
                }
            }
        }
    }
    Ok(())
}

/// One line per message, for `list` and `replay --dry-run`.
fn line(r: &Record) -> String {
    let module = r
        .module
        .as_deref()
        .map(|m| m.chars().take(19).collect::<String>())
        .unwrap_or_else(|| "-".into());
    let reason = r.reason.as_deref().unwrap_or("-").replace('\n', " ");
    let reason: String = reason.chars().take(100).collect();
    format!(
        "{:<36}  {:<19}  {:<14}  {:>3}  {:<19}  {reason}\n",
        r.message_id.as_deref().unwrap_or("(no id)"),
        r.failed_at.map(utc).unwrap_or_else(|| "-".into()),
        r.kind.as_deref().unwrap_or("-"),
        r.attempt
            .map(|a| a.to_string())
            .unwrap_or_else(|| "-".into()),
        module,
    )
}

/// Everything about a message, for `show`.
fn full(r: &Record) -> String {
    let mut s = String::new();
    let dash = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
    let _ = writeln!(
        s,
        "message {}",
        r.message_id.as_deref().unwrap_or("(no id)")
    );
    let _ = writeln!(s, "  handler:        {}", dash(&r.handler));
    let _ = writeln!(s, "  error kind:     {}", dash(&r.kind));
    let _ = writeln!(s, "  reason:         {}", dash(&r.reason));
    let _ = writeln!(
        s,
        "  attempt:        {}",
        r.attempt
            .map(|a| a.to_string())
            .unwrap_or_else(|| "-".into())
    );
    let _ = writeln!(s, "  module:         {}", dash(&r.module));
    let _ = writeln!(s, "  host:           {}", dash(&r.host));
    let _ = writeln!(
        s,
        "  failed at:      {}",
        r.failed_at.map(utc).unwrap_or_else(|| "-".into())
    );
    let _ = writeln!(
        s,
        "  exchange:       {:?}",
        r.exchange.as_deref().unwrap_or("")
    );
    let _ = writeln!(
        s,
        "  routing key:    {:?}",
        r.routing_key.as_deref().unwrap_or("")
    );
    if let Some(d) = &r.dropped_headers {
        let _ = writeln!(s, "  headers left off to fit a frame: {d}");
    }
    if !r.history.is_empty() {
        let _ = writeln!(s, "  earlier failures ({}):", r.history.len());
        for (i, p) in r.history.iter().enumerate() {
            let _ = writeln!(s, "    {}. {}", i + 1, past(p));
        }
    }
    for (k, v) in &r.properties {
        let _ = writeln!(s, "  property {k}: {v}");
    }
    for (k, v) in &r.headers {
        let _ = writeln!(s, "  header {k}: {v}");
    }
    let _ = writeln!(s, "  body ({} bytes): {}", r.body.len(), body(&r.body));
    s
}

fn past(p: &Past) -> String {
    format!(
        "{} {} on attempt {} by {} ({}), replayed {}: {}",
        p.failed_at.map(utc).unwrap_or_else(|| "-".into()),
        p.kind.as_deref().unwrap_or("-"),
        p.attempt
            .map(|a| a.to_string())
            .unwrap_or_else(|| "-".into()),
        p.handler.as_deref().unwrap_or("-"),
        p.module.as_deref().unwrap_or("-"),
        p.replayed_at.map(utc).unwrap_or_else(|| "-".into()),
        p.reason.as_deref().unwrap_or("-"),
    )
}

/// The body as text when it is UTF-8 without control characters, else as
/// hex; at most 4 KiB of it either way.
fn body(b: &[u8]) -> String {
    const MAX: usize = 4096;
    let shown = &b[..b.len().min(MAX)];
    let more = if b.len() > MAX {
        format!(" ... [{} more bytes]", b.len() - MAX)
    } else {
        String::new()
    };
    match std::str::from_utf8(shown) {
        Ok(t) if !t.chars().any(|c| c.is_control() && c != '\n' && c != '\t') => {
            format!("{t:?}{more}")
        }
        _ => format!("hex {}{more}", hex::encode(shown)),
    }
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

/// `secs` since the Unix epoch as `YYYY-MM-DD HH:MM:SS` in UTC.
pub fn utc(secs: u64) -> String {
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Howard Hinnant's `civil_from_days`: the proleptic Gregorian date of a
/// day count since 1970-01-01.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (era * 400 + yoe + i64::from(m <= 2), m, d)
}

/// Its inverse: days since 1970-01-01 of a Gregorian date.
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = i64::from((m + 9) % 12);
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// A point in time from the command line, in seconds since the Unix
/// epoch: a duration ago (`90s`, `30m`, `2h`, `7d`), a UTC date and time
/// (`2026-11-29T19:30:00Z`, `2026-11-29 19:30:00`, `2026-11-29`), or a
/// number of seconds since the epoch.
pub fn parse_time(s: &str, now: u64) -> Result<u64, String> {
    let s = s.trim();
    let bad = || {
        format!(
            "{s:?} is not a time: give a duration ago (30m, 2h, 7d), a UTC time (2026-11-29T19:30:00Z) or seconds since the epoch"
        )
    };
    if let Some(unit) = s.chars().last().filter(|c| "smhd".contains(*c))
        && let Ok(n) = s[..s.len() - 1].parse::<u64>()
    {
        let mul = match unit {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            _ => 86_400,
        };
        return Ok(now.saturating_sub(n.saturating_mul(mul)));
    }
    if let Ok(n) = s.parse::<u64>() {
        return Ok(n);
    }
    let s2 = s.trim_end_matches('Z').replace('T', " ");
    let (date, time) = s2.split_once(' ').unwrap_or((&s2, "00:00:00"));
    let num = |t: &str| t.parse::<u32>().map_err(|_| bad());
    let dp: Vec<&str> = date.split('-').collect();
    let tp: Vec<&str> = time.split(':').collect();
    if dp.len() != 3 || !(2..=3).contains(&tp.len()) {
        return Err(bad());
    }
    let (y, m, d) = (num(dp[0])?, num(dp[1])?, num(dp[2])?);
    let (hh, mm) = (num(tp[0])?, num(tp[1])?);
    let ss = tp.get(2).map_or(Ok(0), |t| num(t))?;
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) || hh > 23 || mm > 59 || ss > 60 {
        return Err(bad());
    }
    let days = days_from_civil(i64::from(y), m, d);
    u64::try_from(days * 86_400 + i64::from(hh * 3600 + mm * 60 + ss)).map_err(|_| bad())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_round_trip() {
        assert_eq!(utc(0), "1970-01-01 00:00:00");
        assert_eq!(utc(1_795_980_600), "2026-11-29 19:30:00");
        for t in [0u64, 951_782_400, 1_795_980_600, 4_102_444_800] {
            let shown = utc(t);
            assert_eq!(parse_time(&shown, 0), Ok(t), "{shown}");
        }
        assert_eq!(parse_time("2026-11-29T19:30:00Z", 0), Ok(1_795_980_600));
        assert_eq!(parse_time("2026-11-29", 0), Ok(1_795_910_400));
    }

    #[test]
    fn relative_times_count_back_from_now() {
        assert_eq!(parse_time("30m", 10_000), Ok(10_000 - 1800));
        assert_eq!(parse_time("2h", 10_000), Ok(10_000 - 7200));
        assert_eq!(parse_time("1d", 10), Ok(0));
        assert_eq!(parse_time("1700000000", 0), Ok(1_700_000_000));
        for bad in ["yesterday", "2026-13-01", "12:00", "-5m", ""] {
            let e = parse_time(bad, 0).unwrap_err();
            assert!(e.contains("is not a time"), "{bad}: {e}");
        }
    }

    fn rec() -> Record {
        Record {
            message_id: Some("m-1".into()),
            kind: Some("reject".into()),
            reason: Some("Bad Input: field x".into()),
            module: Some("sha256:abcdef".into()),
            failed_at: Some(1000),
            ..Record::default()
        }
    }

    #[test]
    fn every_filter_must_hold() {
        let r = rec();
        assert!(Filter::default().matches(&r));
        let f = |f: Filter| f.matches(&r);
        assert!(f(Filter {
            reason: Some("bad input".into()),
            ..Filter::default()
        }));
        assert!(!f(Filter {
            reason: Some("timeout".into()),
            ..Filter::default()
        }));
        assert!(f(Filter {
            kind: Some("reject".into()),
            ..Filter::default()
        }));
        assert!(!f(Filter {
            kind: Some("trap".into()),
            ..Filter::default()
        }));
        assert!(f(Filter {
            module: Some("abc".into()),
            ..Filter::default()
        }));
        assert!(f(Filter {
            module: Some("sha256:abc".into()),
            ..Filter::default()
        }));
        assert!(!f(Filter {
            module: Some("abd".into()),
            ..Filter::default()
        }));
        assert!(f(Filter {
            since: Some(1000),
            until: Some(1001),
            ..Filter::default()
        }));
        assert!(!f(Filter {
            until: Some(1000),
            ..Filter::default()
        }));
        assert!(!f(Filter {
            id: Some("m-2".into()),
            kind: Some("reject".into()),
            ..Filter::default()
        }));
    }
}
