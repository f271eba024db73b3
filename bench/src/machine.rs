//! Who used the machine's CPU while a line drained: the consumer, the
//! broker, Redis, the bench, and everything else. On a small shared machine
//! the broker's share explains the ceiling, and the others' share says
//! whether a figure was disturbed.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::Context as _;

/// USER_HZ, the unit of /proc CPU times: 100 on every Linux architecture
/// the bench runs on.
pub const TICKS_PER_SECOND: u64 = 100;

/// CPU time (user + system, all threads) the process `pid` has used so far,
/// from fields 14 and 15 of /proc/<pid>/stat, in ticks.
pub fn ticks(pid: u32) -> anyhow::Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("cannot read /proc/{pid}/stat"))?;
    // The command name (field 2) is in parentheses and may hold spaces; the
    // fields after the last ')' start with field 3.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .context("malformed /proc stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| -> anyhow::Result<u64> {
        fields
            .get(n - 3)
            .and_then(|f| f.parse().ok())
            .with_context(|| format!("no field {n} in /proc/{pid}/stat"))
    };
    Ok(field(14)? + field(15)?)
}

/// Busy and total ticks of all CPUs, from the first line of /proc/stat.
fn machine_ticks() -> anyhow::Result<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat")?;
    let cpu = stat.lines().next().context("empty /proc/stat")?;
    let v: Vec<u64> = cpu
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal: idle is idle + iowait.
    let total: u64 = v.iter().take(8).sum();
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    Ok((total - idle, total))
}

/// The share of the machine's CPU that was busy over `window`.
pub async fn busy(window: Duration) -> anyhow::Result<f64> {
    let (b0, t0) = machine_ticks()?;
    tokio::time::sleep(window).await;
    let (b1, t1) = machine_ticks()?;
    Ok(b1.saturating_sub(b0) as f64 / t1.saturating_sub(t0).max(1) as f64)
}

/// The process listening on TCP `port` (IPv4 or IPv6), found through the
/// socket's inode in /proc/net and the processes' file descriptors.
pub fn listener(port: u16) -> Option<u32> {
    let want = format!(":{port:04X}");
    let inode = ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|f| std::fs::read_to_string(f).ok())
        .flat_map(|t| t.lines().skip(1).map(str::to_string).collect::<Vec<_>>())
        .find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            // local_address, then state 0A is LISTEN; the inode is field 9.
            (f.get(1)?.ends_with(&want) && *f.get(3)? == "0A")
                .then(|| f.get(9).map(|s| s.to_string()))?
        })?;
    let target = format!("socket:[{inode}]");
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|p| {
        let pid: u32 = p.file_name().to_str()?.parse().ok()?;
        std::fs::read_dir(p.path().join("fd"))
            .ok()?
            .flatten()
            .any(|fd| std::fs::read_link(fd.path()).is_ok_and(|l| l.as_os_str() == target.as_str()))
            .then_some(pid)
    })
}

/// CPU ticks of the machine and of the processes that matter, at one moment.
#[derive(Debug, Clone)]
pub struct Snapshot {
    machine_busy: u64,
    machine_total: u64,
    procs: HashMap<u32, u64>,
}

impl Snapshot {
    pub fn take(pids: &[u32]) -> anyhow::Result<Snapshot> {
        let (machine_busy, machine_total) = machine_ticks()?;
        let procs = pids
            .iter()
            .filter_map(|&p| ticks(p).ok().map(|t| (p, t)))
            .collect();
        Ok(Snapshot {
            machine_busy,
            machine_total,
            procs,
        })
    }
}

/// CPU used between two snapshots.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Usage {
    /// CPU-seconds used by the given processes together.
    pub of: f64,
    /// CPU-seconds the whole machine was busy.
    pub machine: f64,
    /// The machine's capacity over the interval, in CPU-seconds.
    pub capacity: f64,
}

/// What `pids` used between `a` and `b`.
pub fn usage(a: &Snapshot, b: &Snapshot, pids: &[u32]) -> Usage {
    let s = |t: u64| t as f64 / TICKS_PER_SECOND as f64;
    let of = pids
        .iter()
        .filter_map(|p| Some(b.procs.get(p)?.saturating_sub(*a.procs.get(p)?)))
        .sum();
    Usage {
        of: s(of),
        machine: s(b.machine_busy.saturating_sub(a.machine_busy)),
        capacity: s(b.machine_total.saturating_sub(a.machine_total)),
    }
}

/// Resident memory of the processes `pids` together, in MiB, from `VmRSS`
/// in /proc/<pid>/status (0 for a process that has gone).
pub fn rss_mib(pids: &[u32]) -> f64 {
    pids.iter()
        .filter_map(|pid| std::fs::read_to_string(format!("/proc/{pid}/status")).ok())
        .filter_map(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .sum::<u64>() as f64
        / 1024.0
}

/// The highest [`rss_mib`] of `pids` seen every 20 ms until the returned
/// guard is finished.
pub struct RssPeak {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    task: tokio::task::JoinHandle<f64>,
}

impl RssPeak {
    pub fn start(pids: Vec<u32>) -> RssPeak {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let task = tokio::spawn(async move {
            let mut peak = rss_mib(&pids);
            while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_millis(20)).await;
                peak = peak.max(rss_mib(&pids));
            }
            peak
        });
        RssPeak { stop, task }
    }

    pub async fn finish(self) -> f64 {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.task.await.unwrap_or(f64::NAN)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn own_cpu_time_is_readable_and_grows() {
        let pid = std::process::id();
        let before = ticks(pid).unwrap();
        let spin = Instant::now();
        let mut x = 0u64;
        while spin.elapsed() < Duration::from_millis(100) {
            x = std::hint::black_box(x.wrapping_add(1));
        }
        assert!(ticks(pid).unwrap() > before);
    }

    #[test]
    fn finds_the_process_listening_on_a_port() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        assert_eq!(listener(port), Some(std::process::id()));
        drop(l);
        assert_eq!(listener(port), None);
    }

    #[test]
    fn usage_counts_the_given_processes_and_the_machine() {
        let pid = std::process::id();
        let a = Snapshot::take(&[pid]).unwrap();
        let spin = Instant::now();
        while spin.elapsed() < Duration::from_millis(100) {
            std::hint::black_box(0);
        }
        let b = Snapshot::take(&[pid]).unwrap();
        let u = usage(&a, &b, &[pid]);
        assert!(
            u.of > 0.0 && u.machine >= u.of * 0.5 && u.capacity >= u.machine,
            "{u:?}"
        );
    }
}
