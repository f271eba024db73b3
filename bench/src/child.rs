//! The bench's own consumer processes (the bare lapin one and the Python
//! seed) and the line protocol they speak on stdin and stdout.
//!
//! The protocol: the consumer connects and sets up its channels, prints
//! `ready`, and waits for `go` before it consumes, so the measured drain
//! starts with the first `basic.consume`. It prints `drained` once it has
//! handled the queue's first N messages. After `expect L` it waits until it
//! has timed L messages (bodies stamped with a publish time), prints
//! `latencies v1,v2,...` (microseconds, publish to handler completion) and
//! exits.

use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

/// One of the bench's own consumer processes.
#[derive(Debug)]
pub struct Consumer {
    child: Child,
    stdin: ChildStdin,
    lines: Lines<BufReader<ChildStdout>>,
    what: String,
}

impl Consumer {
    /// Starts `cmd` and waits (up to a minute) for its `ready`.
    pub async fn start(mut cmd: Command, what: &str) -> anyhow::Result<Consumer> {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start {what}"))?;
        let stdin = child.stdin.take().context("no stdin")?;
        let stdout = child.stdout.take().context("no stdout")?;
        let mut c = Consumer {
            child,
            stdin,
            lines: BufReader::new(stdout).lines(),
            what: what.to_string(),
        };
        c.expect_line("ready", Instant::now() + Duration::from_secs(60))
            .await?;
        Ok(c)
    }

    pub fn pid(&self) -> anyhow::Result<u32> {
        self.child
            .id()
            .with_context(|| format!("{} has exited", self.what))
    }

    pub async fn send(&mut self, line: &str) -> anyhow::Result<()> {
        self.stdin.write_all(format!("{line}\n").as_bytes()).await?;
        self.stdin.flush().await?;
        Ok(())
    }

    /// Waits for a line starting with `word`; returns the rest of it.
    pub async fn expect_line(&mut self, word: &str, deadline: Instant) -> anyhow::Result<String> {
        loop {
            let line = tokio::time::timeout_at(deadline.into(), self.lines.next_line())
                .await
                .map_err(|_| anyhow::anyhow!("{} did not say {word:?} in time", self.what))?
                .with_context(|| format!("reading from {}", self.what))?;
            match line {
                Some(l) if l.starts_with(word) => return Ok(l[word.len()..].trim().to_string()),
                Some(_) => {}
                None => bail!("{} exited before saying {word:?}", self.what),
            }
        }
    }

    /// Asks for `n` latency samples and returns them (µs).
    pub async fn latencies(&mut self, n: u64, deadline: Instant) -> anyhow::Result<Vec<u64>> {
        self.send(&format!("expect {n}")).await?;
        let line = self.expect_line("latencies", deadline).await?;
        line.split(',')
            .filter(|s| !s.is_empty())
            .map(|s| s.parse().with_context(|| format!("bad latency {s:?}")))
            .collect()
    }

    pub async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}

/// Sends SIGTERM to `pid` (a process the bench started).
pub fn terminate(pid: u32) {
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
}
