//! Redis Sentinel of the test's own: one master, one replica and three
//! sentinels, every one a `redis-server` on a free loopback port, for a
//! test that kills the master. All of it goes when the value is dropped.
//!
//! The sentinels are told to call the master down after one second without
//! an answer and need two of them to agree, so a failover takes a few
//! seconds.

use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::process::free_port;
use crate::redis_server::RedisServer;

/// The name the sentinels monitor the master under.
pub const MASTER_NAME: &str = "warren-test";

/// One master, one replica, three sentinels.
#[derive(Debug)]
pub struct RedisSentinel {
    pub master: RedisServer,
    pub replica: RedisServer,
    sentinels: Vec<SentinelProcess>,
}

#[derive(Debug)]
struct SentinelProcess {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl Drop for SentinelProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl RedisSentinel {
    /// Starts everything and waits until every sentinel knows the replica
    /// and the two other sentinels, and the replica is in sync: until a
    /// failover can happen.
    pub fn start() -> RedisSentinel {
        let master = RedisServer::start();
        let replica = RedisServer::start_with(vec![
            "--replicaof".into(),
            "127.0.0.1".into(),
            master.port.to_string(),
        ]);
        let sentinels = (0..3).map(|_| spawn_sentinel(master.port)).collect();
        let s = RedisSentinel {
            master,
            replica,
            sentinels,
        };
        s.wait_until(Duration::from_secs(60), "sentinels ready", |s| {
            s.sentinels.iter().all(|p| {
                let m = s.master_info(p.port);
                m.get("num-slaves").map(String::as_str) == Some("1")
                    && m.get("num-other-sentinels").map(String::as_str) == Some("2")
            }) && s.replica_online()
        });
        s
    }

    /// The sentinels' URLs.
    pub fn urls(&self) -> Vec<String> {
        self.sentinels
            .iter()
            .map(|p| format!("redis://127.0.0.1:{}", p.port))
            .collect()
    }

    /// The keys of a `[redis]` section for warren: the sentinels and the
    /// master's name.
    pub fn toml(&self) -> String {
        let urls: Vec<String> = self.urls().iter().map(|u| format!("{u:?}")).collect();
        format!(
            "sentinels = [{}]\nmaster_name = \"{MASTER_NAME}\"\n",
            urls.join(", ")
        )
    }

    /// The master's port as every sentinel names it, once they agree.
    pub fn master_port(&self) -> Option<u16> {
        let ports: Vec<Option<u16>> = self
            .sentinels
            .iter()
            .map(|p| {
                let info = self.master_info(p.port);
                info.get("port").and_then(|v| v.parse().ok())
            })
            .collect();
        ports
            .first()
            .copied()
            .flatten()
            .filter(|first| ports.iter().all(|p| *p == Some(*first)))
    }

    /// Waits until every sentinel names the server on `port` as the master
    /// and it says it is one.
    pub fn wait_master(&self, port: u16, timeout: Duration) {
        self.wait_until(timeout, &format!("the master on port {port}"), |s| {
            s.master_port() == Some(port) && role(port).as_deref() == Some("master")
        });
    }

    /// What the sentinel on `port` says of the master (`SENTINEL master`).
    fn master_info(&self, port: u16) -> HashMap<String, String> {
        // A flat list of names and values.
        let flat: Vec<String> =
            query(port, redis::cmd("SENTINEL").arg("master").arg(MASTER_NAME)).unwrap_or_default();
        flat.chunks(2)
            .filter_map(|p| Some((p.first()?.clone(), p.get(1)?.clone())))
            .collect()
    }

    fn replica_online(&self) -> bool {
        let info: String =
            query(self.master.port, redis::cmd("INFO").arg("replication")).unwrap_or_default();
        info.contains("connected_slaves:1") && info.contains("state=online")
    }

    fn wait_until(&self, timeout: Duration, what: &str, cond: impl Fn(&Self) -> bool) {
        let deadline = Instant::now() + timeout;
        while !cond(self) {
            assert!(
                Instant::now() < deadline,
                "redis sentinel: timed out after {timeout:?} waiting for {what}; sentinel log:\n{}",
                self.sentinel_log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The first sentinel's log, for failure messages.
    pub fn sentinel_log(&self) -> String {
        std::fs::read_to_string(self.sentinels[0].dir.path().join("sentinel.log"))
            .unwrap_or_default()
    }
}

/// `ROLE`'s first element from the server on `port`.
pub fn role(port: u16) -> Option<String> {
    let reply: Vec<redis::Value> = query(port, &redis::cmd("ROLE")).ok()?;
    redis::from_owned_redis_value(reply.into_iter().next()?).ok()
}

fn query<T: redis::FromRedisValue>(port: u16, cmd: &redis::Cmd) -> redis::RedisResult<T> {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}"))?;
    let mut con = client.get_connection_with_timeout(Duration::from_secs(1))?;
    con.set_read_timeout(Some(Duration::from_secs(2)))?;
    cmd.query(&mut con)
}

/// A sentinel (`redis-server CONF --sentinel`) watching the master on
/// `master_port`; it rewrites its config file, so the file is its own.
fn spawn_sentinel(master_port: u16) -> SentinelProcess {
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("sentinel.conf");
    std::fs::write(
        &conf,
        format!(
            "port {port}\nbind 127.0.0.1\ndaemonize no\ndir {dir}\nlogfile {dir}/sentinel.log\n\
             sentinel monitor {MASTER_NAME} 127.0.0.1 {master_port} 2\n\
             sentinel down-after-milliseconds {MASTER_NAME} 1000\n\
             sentinel failover-timeout {MASTER_NAME} 5000\n\
             sentinel parallel-syncs {MASTER_NAME} 1\n",
            dir = dir.path().display()
        ),
    )
    .unwrap();
    let child = Command::new("redis-server")
        .arg(&conf)
        .arg("--sentinel")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect(
            "start redis-server --sentinel (is redis-server installed? .ci/setup.sh installs it)",
        );
    let p = SentinelProcess { child, port, dir };
    let deadline = Instant::now() + Duration::from_secs(10);
    while query::<String>(port, &redis::cmd("PING")).is_err() {
        assert!(
            Instant::now() < deadline,
            "sentinel on port {port} did not answer PING"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    p
}
