//! A 3-node RabbitMQ cluster on loopback, shared by every test process that
//! asks for one: nextest runs each test in a process of its own, and
//! booting three nodes and joining them costs most of a minute on a small
//! machine, so the first test to ask starts the cluster and the others
//! find it.
//!
//! The cluster lives in a directory of its own under the temporary
//! directory: a lock (taken while the cluster is started or checked),
//! a `state` file naming the nodes, the nodes' data directories, and a
//! `users/` directory with a file per test process using the cluster. A
//! reaper process, started with the cluster, stops the nodes and removes
//! the directory once no user process has been alive for
//! [`LINGER_SECS`]; so the cluster outlives one test (the next one finds it
//! booted) but not the test run.
//!
//! A test that kills a node boots it again before it ends (see
//! [`RabbitCluster::kill9`]); a node found down when a test arrives (its
//! killer died first) is booted again then.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::private_broker::Node;

/// How long the cluster stays up after its last user process ended.
pub const LINGER_SECS: u32 = 60;

/// The shared cluster, for as long as this value lives.
#[derive(Debug)]
pub struct RabbitCluster {
    pub nodes: Vec<Node>,
    user_file: PathBuf,
}

fn base() -> PathBuf {
    std::env::temp_dir().join("warren-test-rabbit-cluster")
}

impl RabbitCluster {
    /// The running cluster, started if there is none.
    pub fn get() -> RabbitCluster {
        let base = base();
        std::fs::create_dir_all(base.join("users")).unwrap();
        let lock = Lock::take(&base);
        let nodes = match read_state(&base) {
            Some(nodes) => {
                for n in nodes.iter().filter(|n| !n.listening()) {
                    n.boot();
                }
                nodes
            }
            None => start(&base),
        };
        let user_file = base.join("users").join(std::process::id().to_string());
        std::fs::write(&user_file, "").unwrap();
        drop(lock);
        RabbitCluster { nodes, user_file }
    }

    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(Node::url).collect()
    }

    /// The node listening on `port`.
    pub fn node_on(&self, port: u16) -> &Node {
        self.nodes
            .iter()
            .find(|n| n.port == port)
            .unwrap_or_else(|| panic!("no node of the cluster listens on {port}"))
    }

    /// `kill -9` of node `i`; it boots again (and rejoins the cluster) when
    /// the returned guard is dropped, also when the test panics.
    pub fn kill9(&self, i: usize) -> Killed<'_> {
        self.nodes[i].kill9();
        Killed {
            node: &self.nodes[i],
        }
    }
}

impl Drop for RabbitCluster {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.user_file);
    }
}

/// A node killed by [`RabbitCluster::kill9`]; booted again when dropped.
#[derive(Debug)]
pub struct Killed<'a> {
    pub node: &'a Node,
}

impl Drop for Killed<'_> {
    fn drop(&mut self) {
        self.node.boot();
    }
}

/// The cluster directory's lock: a `lock` directory holding the pid of
/// its holder (creating a directory is atomic; a holder that died is seen
/// by its pid and its lock taken over). The reaper takes it the same way.
/// `redis_cluster` locks its own directory with it too.
#[derive(Debug)]
pub struct Lock(PathBuf);

impl Lock {
    /// Takes the lock of the directory `base`, waiting while a live
    /// process holds it.
    pub fn take(base: &Path) -> Lock {
        let dir = base.join("lock");
        loop {
            match std::fs::create_dir(&dir) {
                Ok(()) => {
                    std::fs::write(dir.join("pid"), std::process::id().to_string()).unwrap();
                    return Lock(dir);
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    let holder = std::fs::read_to_string(dir.join("pid")).unwrap_or_default();
                    let alive = !holder.trim().is_empty()
                        && Path::new(&format!("/proc/{}", holder.trim())).exists();
                    if !alive && !holder.trim().is_empty() {
                        let _ = std::fs::remove_dir_all(&dir);
                        continue;
                    }
                    std::thread::sleep(Duration::from_millis(200));
                }
                Err(e) => panic!("cannot lock {}: {e}", dir.display()),
            }
        }
    }
}

impl Drop for Lock {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The nodes the `state` file names, if a cluster was started.
fn read_state(base: &Path) -> Option<Vec<Node>> {
    let text = std::fs::read_to_string(base.join("state")).ok()?;
    let nodes: Option<Vec<Node>> = text
        .lines()
        .map(|l| {
            let mut f = l.split_whitespace();
            let name = f.next()?.to_string();
            let port = f.next()?.parse().ok()?;
            let dist_port = f.next()?.parse().ok()?;
            let dir = base.join("nodes").join(&name);
            Some(Node {
                name,
                port,
                dist_port,
                dir,
            })
        })
        .collect();
    nodes.filter(|n| n.len() == 3)
}

/// Boots three nodes, joins the second and third to the first, writes the
/// state file and starts the reaper.
fn start(base: &Path) -> Vec<Node> {
    let _ = std::fs::remove_dir_all(base.join("nodes"));
    let nodes: Vec<Node> = (1..=3)
        .map(|i| Node::configure_under(&format!("c{i}"), &base.join("nodes")))
        .collect();
    std::thread::scope(|s| {
        for n in &nodes {
            s.spawn(move || n.boot());
        }
    });
    let first = nodes[0].name.clone();
    for n in &nodes[1..] {
        n.ctl(&["stop_app"]);
        n.ctl(&["join_cluster", &first]);
        n.ctl(&["start_app"]);
        n.ctl(&["await_startup", "--timeout", "60"]);
    }
    let state: String = nodes
        .iter()
        .map(|n| format!("{} {} {}\n", n.name, n.port, n.dist_port))
        .collect();
    std::fs::write(base.join("state"), state).unwrap();
    spawn_reaper(base, &nodes);
    nodes
}

/// A detached shell that stops the nodes once no user process has been
/// alive for [`LINGER_SECS`], under the lock, then removes the state.
fn spawn_reaper(base: &Path, nodes: &[Node]) {
    let pid_files: Vec<String> = nodes
        .iter()
        .map(|n| format!("'{}'", n.dir.join("pid").display()))
        .collect();
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
  for p in {pids}; do kill -TERM "$(cat "$p" 2>/dev/null)" 2>/dev/null; done
  for i in $(seq 60); do
    up=0
    for p in {pids}; do kill -0 "$(cat "$p" 2>/dev/null)" 2>/dev/null && up=1; done
    [ "$up" = 0 ] && break
    sleep 1
  done
  for p in {pids}; do kill -KILL "$(cat "$p" 2>/dev/null)" 2>/dev/null; done
  rm -rf nodes lock
  exit 0
done
"#,
        base = base.display(),
        linger = LINGER_SECS,
        pids = pid_files.join(" "),
    );
    // `setsid --fork`: the reaper outlives this process and its group.
    let started = Command::new("setsid")
        .args(["--fork", "sh", "-c", &script])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("start the cluster's reaper");
    assert!(started.success(), "setsid --fork sh: {started}");
}
