//! `perf record` attached to warren while one line drains (`--perf FILE`,
//! `--perf-line ID`, line 5 unless given);
//! `bench/perf_summary.py` reads what it wrote.

use anyhow::Context as _;
use tokio::process::Command;

use crate::progress;

/// `perf record` attached to one process.
pub struct Perf {
    child: tokio::process::Child,
}

impl Perf {
    pub fn start(file: &std::path::Path, pid: u32) -> anyhow::Result<Perf> {
        progress::say(format_args!(
            "    profiling warren (pid {pid}) into {}",
            file.display()
        ));
        let child = Command::new("perf")
            .args(["record", "-F", "1999", "--call-graph", "dwarf,16384", "-o"])
            .arg(file)
            .args(["-p", &pid.to_string()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("cannot start perf")?;
        Ok(Perf { child })
    }

    pub async fn stop(mut self) {
        if let Some(pid) = self.child.id() {
            let _ = std::process::Command::new("kill")
                .args(["-INT", &pid.to_string()])
                .status();
        }
        let _ = self.child.wait().await;
    }
}
