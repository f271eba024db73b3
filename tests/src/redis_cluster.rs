//! A Redis Cluster of three masters on loopback, shared by every test
//! process that asks for one, as `rabbit_cluster` shares its RabbitMQ
//! cluster: the first test to ask starts it, the others find it, and a
//! reaper stops it [`LINGER_SECS`] after the last user process ended.
//!
//! Its directory under the temporary directory holds a lock (the same
//! kind as the RabbitMQ cluster's), a `state` file with the nodes' ports, a
//! directory per node (config, pid file, log) and `users/`, a file per
//! test process using it. Each test keeps its keys under a prefix of its
//! own; the fixture deletes them from every node.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::process::free_port;
use crate::rabbit_cluster::Lock;

/// How long the cluster stays up after its last user process ended.
pub const LINGER_SECS: u32 = 60;

/// The shared cluster, for as long as this value lives.
#[derive(Debug)]
pub struct RedisCluster {
    pub ports: Vec<u16>,
    user_file: PathBuf,
}

fn base() -> PathBuf {
    std::env::temp_dir().join("warren-test-redis-cluster")
}

impl RedisCluster {
    /// The running cluster, started if there is none (or if a node of it
    /// does not answer).
    pub fn get() -> RedisCluster {
        let base = base();
        std::fs::create_dir_all(base.join("users")).unwrap();
        let lock = Lock::take(&base);
        let ports = match read_state(&base) {
            Some(ports) if ports.iter().all(|p| cluster_ok(*p)) => ports,
            Some(_) => {
                stop_nodes(&base);
                start(&base)
            }
            None => start(&base),
        };
        let user_file = base.join("users").join(std::process::id().to_string());
        std::fs::write(&user_file, "").unwrap();
        drop(lock);
        RedisCluster { ports, user_file }
    }

    /// The nodes' URLs.
    pub fn urls(&self) -> Vec<String> {
        self.ports
            .iter()
            .map(|p| format!("redis://127.0.0.1:{p}"))
            .collect()
    }

    /// The keys of a `[redis]` section for warren.
    pub fn toml(&self) -> String {
        let urls: Vec<String> = self.urls().iter().map(|u| format!("{u:?}")).collect();
        format!("cluster = [{}]\n", urls.join(", "))
    }

    /// A connection that follows the cluster's slots.
    pub async fn connection(&self) -> redis::cluster_async::ClusterConnection {
        redis::cluster::ClusterClient::new(self.urls())
            .unwrap()
            .get_async_connection()
            .await
            .unwrap()
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.user_file);
    }
}

/// The ports the `state` file names, if a cluster was started.
fn read_state(base: &Path) -> Option<Vec<u16>> {
    let text = std::fs::read_to_string(base.join("state")).ok()?;
    let ports: Option<Vec<u16>> = text.split_whitespace().map(|p| p.parse().ok()).collect();
    ports.filter(|p| p.len() == 3)
}

/// Whether the node on `port` answers and sees every slot served.
fn cluster_ok(port: u16) -> bool {
    let Ok(client) = redis::Client::open(format!("redis://127.0.0.1:{port}")) else {
        return false;
    };
    let Ok(mut con) = client.get_connection_with_timeout(Duration::from_secs(1)) else {
        return false;
    };
    let info: redis::RedisResult<String> = redis::cmd("CLUSTER").arg("INFO").query(&mut con);
    info.is_ok_and(|i| i.contains("cluster_state:ok"))
}

/// Starts three empty nodes (daemonized, so they outlive this process),
/// makes them a cluster with `redis-cli --cluster create`, waits until each
/// sees every slot served, writes the state file and starts the reaper.
fn start(base: &Path) -> Vec<u16> {
    let _ = std::fs::remove_dir_all(base.join("nodes"));
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    for port in &ports {
        let dir = base.join("nodes").join(port.to_string());
        std::fs::create_dir_all(&dir).unwrap();
        let status = Command::new("redis-server")
            .args(["--port", &port.to_string()])
            .args(["--bind", "127.0.0.1"])
            .args(["--cluster-enabled", "yes"])
            .args(["--cluster-node-timeout", "2000"])
            .args(["--save", ""])
            .args(["--appendonly", "no"])
            .args(["--daemonize", "yes"])
            .arg("--dir")
            .arg(&dir)
            .arg("--pidfile")
            .arg(dir.join("pid"))
            .arg("--logfile")
            .arg(dir.join("redis.log"))
            .stdin(Stdio::null())
            .status()
            .expect("start redis-server (is it installed? .ci/setup.sh installs it)");
        assert!(status.success(), "redis-server on port {port}: {status}");
    }
    let nodes: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(&nodes)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .expect("run redis-cli --cluster create");
        if out.status.success() {
            break;
        }
        // The nodes may still be starting.
        assert!(
            Instant::now() < deadline,
            "redis-cli --cluster create failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    while !ports.iter().all(|p| cluster_ok(*p)) {
        assert!(
            Instant::now() < deadline,
            "the redis cluster on {ports:?} did not reach cluster_state:ok"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let state: Vec<String> = ports.iter().map(u16::to_string).collect();
    std::fs::write(base.join("state"), state.join("\n")).unwrap();
    spawn_reaper(base);
    ports
}

/// Stops the nodes the state file names (under the lock).
fn stop_nodes(base: &Path) {
    let _ = Command::new("sh")
        .arg("-c")
        .arg("for p in nodes/*/pid; do kill -KILL \"$(cat \"$p\")\" 2>/dev/null; done; rm -f state")
        .current_dir(base)
        .status();
}

/// A detached shell that stops the nodes once no user process has been
/// alive for [`LINGER_SECS`], under the lock, then removes the state.
fn spawn_reaper(base: &Path) {
    let script = format!(
        r#"
cd '{base}' || exit 1
idle=0
while :; do
  sleep 2
  alive=0
  for f in users/*; do
    [ -e "$f" ] || continue
    if kill -0 "${{f#users/}}" 2>/dev/null; then alive=1; else rm -f "$f"; fi
  done
  if [ "$alive" = 1 ]; then idle=0; continue; fi
  idle=$((idle + 2))
  [ "$idle" -ge {linger} ] || continue
  until mkdir lock 2>/dev/null; do
    h=$(cat lock/pid 2>/dev/null)
    if [ -n "$h" ] && ! kill -0 "$h" 2>/dev/null; then rm -rf lock; else sleep 1; fi
  done
  echo $$ > lock/pid
  if ls users | grep -q .; then rm -rf lock; idle=0; continue; fi
  rm -f state
  for p in nodes/*/pid; do kill -KILL "$(cat "$p" 2>/dev/null)" 2>/dev/null; done
  rm -rf nodes lock
  exit 0
done
"#,
        base = base.display(),
        linger = LINGER_SECS,
    );
    // `setsid --fork`: the reaper outlives this process and its group.
    let started = Command::new("setsid")
        .args(["--fork", "sh", "-c", &script])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("start the redis cluster's reaper");
    assert!(started.success(), "setsid --fork sh: {started}");
}
