//! A `warren run` process under test: its config in a temporary directory,
//! its log in a file, signals and exit status; and any other tool a test
//! runs, within a time limit (`output_within`).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::warren_bin;

/// A unique name for this test's queues: `t-<name>-<random>`.
pub fn unique(name: &str) -> String {
    format!(
        "t-{name}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..10]
    )
}

/// The peak resident set size of process `pid`, in MiB (`VmHWM`: the
/// high-water mark of `VmRSS`, so a spike between two reads counts).
pub fn peak_rss_mb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no VmHWM in /proc/{pid}/status:\n{status}"));
    kb / 1024
}

/// Runs `warren ARGS --admin http://127.0.0.1:PORT` (`deploy`, `rollback`,
/// `status`) to the end.
pub fn admin_cli(port: u16, args: &[&str]) -> std::process::Output {
    Command::new(warren_bin())
        .args(args)
        .args(["--admin", &format!("http://127.0.0.1:{port}")])
        .output()
        .expect("run warren")
}

/// How long a tool the tests run (`rabbitmqctl` above all) may take before
/// it counts as hung: generous, since a cluster operation on a loaded
/// two-core machine can take a minute, but finite, so that a hung tool
/// fails its test with the command named instead of stalling the suite.
pub const TOOL_LIMIT: Duration = Duration::from_secs(180);

/// `cmd.output()`, but a child still running after `limit` is killed, and
/// `Err` says which command hung. Output read as it comes, so a chatty
/// child never blocks on a full pipe.
pub fn output_within(cmd: &mut Command, limit: Duration) -> Result<std::process::Output, String> {
    let what = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run {what}: {e}"))?;
    let stdout = read_all(child.stdout.take().expect("piped"));
    let stderr = read_all(child.stderr.take().expect("piped"));
    let deadline = Instant::now() + limit;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("{what} did not finish within {limit:?}; killed"));
            }
            Err(e) => return Err(format!("waiting for {what}: {e}")),
        }
    };
    Ok(std::process::Output {
        status,
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
    })
}

/// Reads `pipe` to its end on a thread of its own.
fn read_all(mut pipe: impl Read + Send + 'static) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = pipe.read_to_end(&mut buf);
        buf
    })
}

/// A free TCP port on loopback (bound then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A running `warren run`. Killed when dropped.
#[derive(Debug)]
pub struct Warren {
    child: Option<Child>,
    pub log: PathBuf,
    pub admin: Option<u16>,
    _dir: tempfile::TempDir,
}

impl Warren {
    /// Starts `warren run` with `config` (TOML text); `admin` is the port of
    /// its admin endpoint, if the config sets one.
    pub fn start(config: &str, admin: Option<u16>) -> Warren {
        Self::start_with_env(config, admin, &[])
    }

    pub fn start_with_env(config: &str, admin: Option<u16>, env: &[(&str, &str)]) -> Warren {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("warren.toml");
        std::fs::write(&path, config).unwrap();
        let log = dir.path().join("warren.log");
        let child = Command::new(warren_bin())
            .args(["run", "--config"])
            .arg(&path)
            .env("RUST_LOG", "info")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start warren");
        Warren {
            child: Some(child),
            log,
            admin,
            _dir: dir,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the log contains `needle`; panics with the log after
    /// `timeout`.
    pub fn wait_log(&mut self, needle: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while !self.logs().contains(needle) {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!(
                    "warren exited ({status}) before logging {needle:?}:\n{}",
                    self.logs()
                );
            }
            assert!(
                Instant::now() < deadline,
                "no {needle:?} in the log within {timeout:?}:\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Sends a signal (`TERM`, `KILL`, `INT`).
    pub fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.pid().to_string())
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Waits for the process to exit; panics after `timeout`.
    pub fn wait(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "warren did not exit within {timeout:?}:\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// GET on the admin endpoint; the status code and body.
    pub fn admin_get(&self, path: &str) -> (u16, String) {
        http_get(self.admin.expect("admin port"), path)
    }

    /// A counter's value from `/metrics` (sum over label sets matching all
    /// of `labels`).
    pub fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let (_, body) = self.admin_get("/metrics");
        body.lines()
            .filter(|l| l.starts_with(name) && !l.starts_with('#'))
            .filter(|l| {
                labels
                    .iter()
                    .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// `warren_messages_total` for `outcome` (`ack`, `dedup_hit`,
    /// `deferred`, `retry`, `requeued`, `dead_letter`).
    pub fn outcome(&self, outcome: &str) -> u64 {
        self.metric("warren_messages_total", &[("outcome", outcome)]) as u64
    }

    /// Deliveries settled for good: acked after a run, acked as a
    /// duplicate, or dead-lettered.
    pub fn settled(&self) -> u64 {
        self.outcome("ack") + self.outcome("dedup_hit") + self.outcome("dead_letter")
    }

    /// Guest invocations so far (each run is observed in the duration
    /// histogram, whatever its outcome).
    pub fn runs(&self) -> u64 {
        self.metric("warren_handler_duration_seconds_count", &[]) as u64
    }

    /// Handler runs under way now.
    pub fn in_flight(&self) -> u64 {
        self.metric("warren_in_flight", &[]) as u64
    }

    /// Messages handled without dedup (`on_unavailable = "process"`).
    pub fn bypassed(&self) -> u64 {
        self.metric("warren_dedup_bypassed_total", &[]) as u64
    }
}

impl Drop for Warren {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // The test failed: its warren's log is the first thing to read.
            let _ = std::io::Write::write_all(
                &mut std::io::stderr(),
                format!(
                    "--- warren log (pid {}) ---\n{}--- end of warren log ---\n",
                    self.pid(),
                    self.logs()
                )
                .as_bytes(),
            );
        }
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A minimal HTTP/1.1 GET, enough for the admin endpoint.
pub fn http_get(port: u16, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return (0, String::new());
    };
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = String::new();
    let _ = s.read_to_string(&mut raw);
    let code = raw
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = raw
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (code, body)
}

/// A config for one handler on `queue`, with `extra` appended to the
/// `[[handler]]` table (so it can set keys and sub-tables).
pub fn config(module: &Path, name: &str, queue: &str, admin: Option<u16>, extra: &str) -> String {
    let admin = admin
        .map(|p| format!("[admin]\nlisten = \"127.0.0.1:{p}\"\n"))
        .unwrap_or_default();
    format!(
        "[amqp]\nurl = \"{}\"\n{admin}\n[[handler]]\nname = \"{name}\"\nmodule = \"{}\"\nqueue = \"{queue}\"\n{extra}\n",
        crate::broker::AMQP_URL,
        module.display()
    )
}

/// Polls `cond` every 50 ms until it holds; panics with `what` after
/// `timeout`.
pub async fn eventually<F, Fut>(timeout: Duration, what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    while !cond().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tool_that_finishes_gives_its_output_and_one_that_hangs_is_killed_and_named() {
        let out = output_within(
            Command::new("sh").args(["-c", "echo out; echo err >&2; exit 3"]),
            Duration::from_secs(30),
        )
        .unwrap();
        assert_eq!(out.stdout, b"out\n");
        assert_eq!(out.stderr, b"err\n");
        assert_eq!(out.status.code(), Some(3));

        let started = Instant::now();
        let e =
            output_within(Command::new("sleep").arg("30"), Duration::from_millis(300)).unwrap_err();
        assert!(e.contains("\"sleep\"") && e.contains("killed"), "{e}");
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "{:?}",
            started.elapsed()
        );

        let e = output_within(&mut Command::new("/nonexistent/tool"), TOOL_LIMIT).unwrap_err();
        assert!(
            e.contains("cannot run") && e.contains("/nonexistent/tool"),
            "{e}"
        );
    }
}
