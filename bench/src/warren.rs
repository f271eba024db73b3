//! A `warren run` process under measurement: its config, its admin endpoint
//! (readiness and the ack counter), its log, and a graceful stop.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

/// What one warren process runs: one handler.
#[derive(Debug, Clone)]
pub struct Spec {
    pub amqp_url: String,
    /// `Some((url, key prefix))` for the Redis store; `None` for none.
    pub redis: Option<(String, String)>,
    pub dedup: bool,
    pub name: String,
    pub module: PathBuf,
    pub queue: String,
    /// `queue_type = "quorum"`: warren declares quorum queues.
    pub quorum: bool,
    /// `[handler.config]`: e.g. echo's `out_routing_key`.
    pub config: Vec<(&'static str, String)>,
    /// The handler's settings; `None` leaves them all at warren's defaults.
    pub tuning: Option<Tuning>,
    /// `[handler.http] allow = [this]`: the handler may call it.
    pub http_allow: Option<String>,
}

/// The handler settings a tuned line sets.
#[derive(Debug, Clone)]
pub struct Tuning {
    pub consumers: u32,
    pub max_batch: u32,
    pub prefetch: u16,
    pub channels: u32,
    /// warren's `instances`: `per-message` (its default) or `reuse`.
    pub instances: String,
}

impl Spec {
    /// The config file for this spec, with its admin endpoint on `port`.
    pub fn config(&self, port: u16) -> String {
        let mut c = format!("[amqp]\nurl = {:?}\n\n", self.amqp_url);
        if let Some((url, prefix)) = &self.redis {
            c += &format!("[redis]\nurl = {url:?}\nprefix = {prefix:?}\n\n");
        }
        c += &format!(
            "[admin]\nlisten = \"127.0.0.1:{port}\"\n\n\
             [[handler]]\nname = {:?}\nmodule = {:?}\nqueue = {:?}\n",
            self.name,
            self.module.display().to_string(),
            self.queue,
        );
        if self.quorum {
            c += "queue_type = \"quorum\"\n";
        }
        if let Some(t) = &self.tuning {
            c += &format!(
                "consumers = {}\nmax_batch = {}\nprefetch = {}\nchannels = {}\ninstances = {:?}\n",
                t.consumers, t.max_batch, t.prefetch, t.channels, t.instances,
            );
        }
        // Dedup is on by default. The window only bounds what a crashed run
        // leaves behind (the bench deletes its keys when a line ends); an
        // untuned line keeps the default window too.
        if self.tuning.is_some() || !self.dedup {
            c += &format!(
                "\n[handler.dedup]\nenabled = {}\nwindow_s = 600\n",
                self.dedup,
            );
        }
        if let Some(allow) = &self.http_allow {
            c += &format!("\n[handler.http]\nallow = [{allow:?}]\n");
        }
        c += "\n[handler.config]\n";
        for (k, v) in &self.config {
            c += &format!("{k} = {v:?}\n");
        }
        c
    }
}

/// A running `warren run`; killed if dropped without [`Warren::stop`].
#[derive(Debug)]
pub struct Warren {
    child: Child,
    port: u16,
    name: String,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Warren {
    pub fn start(bin: &Path, spec: &Spec) -> anyhow::Result<Warren> {
        let dir = tempfile::Builder::new().prefix("warren-bench-").tempdir()?;
        let port = free_port()?;
        let path = dir.path().join("warren.toml");
        std::fs::write(&path, spec.config(port))?;
        let log = dir.path().join("warren.log");
        let child = Command::new(bin)
            .args(["run", "--config"])
            .arg(&path)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start {}", bin.display()))?;
        Ok(Warren {
            child,
            port,
            name: spec.name.clone(),
            log,
            _dir: dir,
        })
    }

    pub fn pid(&self) -> anyhow::Result<u32> {
        self.child.id().context("warren has exited")
    }

    /// The last lines of its log, for an error message.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }

    /// Polls `/readyz` every 2 ms until it answers 200.
    pub async fn wait_ready(&mut self, deadline: Instant) -> anyhow::Result<()> {
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "warren exited ({status}) before it was ready:\n{}",
                    self.log_tail()
                );
            }
            if let Ok((200, _)) = get(self.port, "/readyz").await {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("warren was not ready in time:\n{}", self.log_tail());
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// Messages the handler settled, by outcome, from `/metrics`.
    pub async fn outcomes(&mut self) -> anyhow::Result<Outcomes> {
        if let Some(status) = self.child.try_wait()? {
            bail!("warren exited ({status}):\n{}", self.log_tail());
        }
        let (code, body) = get(self.port, "/metrics").await?;
        if code != 200 {
            bail!("/metrics answered {code}");
        }
        Ok(Outcomes::parse(&body, &self.name))
    }

    /// SIGTERM, then up to 30 s for the graceful shutdown, then SIGKILL.
    pub async fn stop(mut self) {
        if let Some(pid) = self.child.id() {
            crate::child::terminate(pid);
            if tokio::time::timeout(Duration::from_secs(30), self.child.wait())
                .await
                .is_ok()
            {
                return;
            }
        }
        let _ = self.child.kill().await;
    }
}

/// The shortest wait between two reads of warren's ack counter while it
/// drains: how late the bench can see the end of a drain.
pub const POLL: Duration = Duration::from_millis(10);
/// The longest wait between two reads while it drains.
const POLL_FAR: Duration = Duration::from_millis(250);

/// How long to wait before reading warren's ack counter again, with
/// `left` messages to go at `rate` messages a second so far: half the time
/// the rest should take, between [`POLL`] and [`POLL_FAR`], so the end of
/// the drain is still seen within [`POLL`]. Every read is an HTTP request
/// that warren serves (a connection, and `/metrics` encoded): read every
/// 10 ms through a whole drain, as until 2026-12-01, the bench's own reads
/// were about 4% of warren's CPU in line 5's profile, charged to warren
/// and not to line 2e, whose child reports its end on a pipe.
pub fn next_poll(left: u64, rate: f64) -> Duration {
    if rate.is_nan() || rate <= 0.0 {
        return POLL;
    }
    // Capped before it becomes a Duration, which a huge figure would overflow.
    let secs = (left as f64 / rate / 2.0).min(POLL_FAR.as_secs_f64());
    Duration::from_secs_f64(secs).max(POLL)
}

/// `warren_messages_total` of one handler.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct Outcomes {
    pub ack: u64,
    /// Everything else: retries, dead-letters, dedup hits, requeues.
    pub other: u64,
}

impl Outcomes {
    fn parse(metrics: &str, handler: &str) -> Outcomes {
        let mut o = Outcomes::default();
        let label = format!("handler=\"{handler}\"");
        for line in metrics.lines() {
            let Some(rest) = line.strip_prefix("warren_messages_total{") else {
                continue;
            };
            let Some((labels, value)) = rest.split_once("} ") else {
                continue;
            };
            if !labels.contains(&label) {
                continue;
            }
            let n = value.trim().parse::<f64>().unwrap_or(0.0) as u64;
            if labels.contains("outcome=\"ack\"") {
                o.ack += n;
            } else {
                o.other += n;
            }
        }
        o
    }
}

/// A free port on loopback (bound, then released).
fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// A minimal HTTP/1.0 GET on loopback: status code and body.
async fn get(port: u16, path: &str) -> anyhow::Result<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).await?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").as_bytes())
        .await?;
    let mut resp = String::new();
    s.read_to_string(&mut resp).await?;
    let (head, body) = resp.split_once("\r\n\r\n").context("no HTTP header end")?;
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .context("no HTTP status")?;
    Ok((code, body.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_are_read_from_the_exposition() {
        let text = "# TYPE warren_messages counter\n\
            warren_messages_total{handler=\"echo\",outcome=\"ack\"} 1234\n\
            warren_messages_total{handler=\"echo\",outcome=\"retry\"} 2\n\
            warren_messages_total{handler=\"other\",outcome=\"ack\"} 99\n\
            warren_messages_created{handler=\"echo\",outcome=\"ack\"} 1.7e9\n";
        assert_eq!(
            Outcomes::parse(text, "echo"),
            Outcomes {
                ack: 1234,
                other: 2
            }
        );
    }

    #[test]
    fn config_is_valid_for_warren() {
        let module = tempfile::NamedTempFile::new().unwrap();
        let spec = Spec {
            amqp_url: "amqp://guest:guest@127.0.0.1:5672/%2f".into(),
            redis: Some(("redis://127.0.0.1:6379/0".into(), "bench-x".into())),
            dedup: true,
            name: "echo".into(),
            module: module.path().to_path_buf(),
            queue: "q".into(),
            quorum: false,
            config: vec![("out_routing_key", "q.out".into())],
            tuning: Some(Tuning {
                consumers: 32,
                max_batch: 8,
                prefetch: 256,
                channels: 2,
                instances: "reuse".into(),
            }),
            http_allow: Some("http://127.0.0.1:8080".into()),
        };
        let c = warren::config::Config::parse(&spec.config(9999), Path::new("w.toml"), |_| None)
            .unwrap();
        let h = &c.handlers[0];
        assert_eq!((h.consumers, h.max_batch, h.prefetch), (32, 8, 256));
        assert_eq!(h.channels, 2);
        assert_eq!(h.config["out_routing_key"].value(), "q.out");
        assert_eq!(c.redis.unwrap().prefix, "bench-x");
        assert!(h.dedup.enabled);
        assert_eq!(h.instances, warren::config::Instances::Reuse);
        assert_eq!(
            h.http.as_ref().unwrap().allow,
            ["http://127.0.0.1:8080".to_string()]
        );

        // Line 5d: only the queue, the module and the URLs; the rest is
        // warren's defaults.
        let untuned = Spec {
            tuning: None,
            http_allow: None,
            ..spec
        };
        let text = untuned.config(9999);
        for key in [
            "consumers",
            "max_batch",
            "prefetch",
            "channels",
            "instances",
            "[handler.dedup]",
        ] {
            assert!(!text.contains(key), "{key} is set in {text}");
        }
        let c = warren::config::Config::parse(&text, Path::new("w.toml"), |_| None).unwrap();
        let h = &c.handlers[0];
        let minimal = format!(
            "[amqp]\nurl = \"amqp://x\"\n[[handler]]\nname = \"n\"\nmodule = {:?}\nqueue = \"q\"\n",
            module.path().display().to_string()
        );
        let d = warren::config::Config::parse(&minimal, Path::new("d.toml"), |_| None).unwrap();
        let dh = &d.handlers[0];
        assert_eq!(
            (h.consumers, h.max_batch, h.prefetch, h.channels),
            (dh.consumers, dh.max_batch, dh.prefetch, dh.channels)
        );
        assert!(h.dedup.enabled);
    }

    #[test]
    fn polls_rarely_while_far_from_the_end_and_often_near_it() {
        // 30,000 to go at 5,000 msg/s: six seconds, read every 250 ms.
        assert_eq!(next_poll(30_000, 5_000.0), POLL_FAR);
        // 500 to go: 100 ms left, read again in 50.
        assert_eq!(next_poll(500, 5_000.0), Duration::from_millis(50));
        // The last few: every 10 ms, so the end is seen within 10 ms.
        assert_eq!(next_poll(20, 5_000.0), POLL);
        // No rate yet (nothing acked): as often as near the end.
        assert_eq!(next_poll(30_000, 0.0), POLL);
        assert_eq!(next_poll(30_000, f64::NAN), POLL);
        // A crawl: capped, not an overflow.
        assert_eq!(next_poll(u64::MAX, f64::MIN_POSITIVE), POLL_FAR);
    }
}
