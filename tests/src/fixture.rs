//! The set-up of a `warren run` test, and its clean-up: a work queue and its
//! output queue of the test's own, a connection to the broker, a config
//! written and `warren run` started (one or more processes, each with an
//! admin port) and waited for until it consumes; on drop, the processes
//! killed and the test's queues and Redis keys deleted, also when the test
//! panics.
//!
//! It does not assert anything about warren: the tests do, with what it
//! hands them (the connection, the queue names, the processes). Servers of
//! the test's own (a private broker or Redis) are the test's to keep.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use lapin::options::QueueDeleteOptions;
use lapin::{Connection, ConnectionProperties};

use crate::broker::{AMQP_URL, Rabbit};
use crate::guest;
use crate::process::{TOOL_LIMIT, Warren, config, eventually, free_port, output_within, unique};
use crate::tally::table;

/// The Redis every test shares; a test's keys live under a prefix of its own.
pub const SHARED_REDIS: &str = "redis://127.0.0.1:6379/0";

/// A `[redis]` section: its keys (but `prefix` and `on_unavailable`), and
/// the servers whose keys under the test's prefix are deleted on drop.
#[derive(Debug, Clone)]
struct RedisSetup {
    keys: String,
    on_unavailable: String,
    nodes: Vec<String>,
}

/// What a test's warren runs and how: built with the methods below, then
/// [`Fixture::start`] (or [`Fixture::prepare`] to publish before warren
/// starts).
#[derive(Debug, Clone)]
pub struct Fixture {
    name: String,
    module: PathBuf,
    handler: String,
    extra: String,
    sections: String,
    admin: String,
    redis: Option<RedisSetup>,
    warren_amqp: Option<String>,
    broker: String,
    processes: usize,
    /// The work queue is a quorum queue, declared by warren.
    quorum: bool,
}

impl Fixture {
    /// A fixture for queue `t-<name>-<random>`: one process of the echo
    /// guest as handler `echo`, on the shared broker, no Redis.
    pub fn new(name: &str) -> Fixture {
        Fixture {
            name: name.into(),
            module: guest("echo"),
            handler: "echo".into(),
            extra: String::new(),
            sections: String::new(),
            admin: String::new(),
            redis: None,
            warren_amqp: None,
            broker: AMQP_URL.into(),
            processes: 1,
            quorum: false,
        }
    }

    /// The built guest `name` as the module.
    pub fn guest(self, name: &str) -> Fixture {
        self.module(guest(name))
    }

    /// A module file of the test's own.
    pub fn module(mut self, path: PathBuf) -> Fixture {
        self.module = path;
        self
    }

    /// The handler's name (the output ids derive from it).
    pub fn handler(mut self, name: &str) -> Fixture {
        self.handler = name.into();
        self
    }

    /// TOML appended to the `[[handler]]` table (keys, then sub-tables). The
    /// fixture adds `[handler.config] out_routing_key` after it.
    pub fn extra(mut self, toml: &str) -> Fixture {
        self.extra.push_str(toml);
        self
    }

    /// A top-level TOML section (e.g. `[runtime]`), put before `[[handler]]`.
    pub fn section(mut self, toml: &str) -> Fixture {
        self.sections.push_str(toml);
        self.sections.push('\n');
        self
    }

    /// Keys of the `[admin]` table (the fixture sets `listen`).
    pub fn admin(mut self, toml: &str) -> Fixture {
        self.admin.push_str(toml);
        self.admin.push('\n');
        self
    }

    /// A `[redis]` section at `url`, under a key prefix of the test's own
    /// (deleted on drop), with `on_unavailable` (`pause` or `process`).
    pub fn redis(self, url: &str, on_unavailable: &str) -> Fixture {
        self.redis_with(
            &format!("url = \"{url}\"\n"),
            on_unavailable,
            &[url.to_string()],
        )
    }

    /// A `[redis]` section with `keys` (Sentinel's or Cluster's, say), under
    /// a key prefix of the test's own, which is deleted on drop from every
    /// server of `nodes` (each scanned on its own: a Cluster's nodes).
    pub fn redis_with(mut self, keys: &str, on_unavailable: &str, nodes: &[String]) -> Fixture {
        self.redis = Some(RedisSetup {
            keys: keys.into(),
            on_unavailable: on_unavailable.into(),
            nodes: nodes.to_vec(),
        });
        self
    }

    /// The AMQP URL warren connects to, when it is not the test's broker
    /// (e.g. a relay in front of it).
    pub fn warren_amqp(mut self, url: &str) -> Fixture {
        self.warren_amqp = Some(url.into());
        self
    }

    /// Another broker (a private one) for both warren and the test.
    pub fn broker(mut self, url: &str) -> Fixture {
        self.broker = url.into();
        self
    }

    /// A quorum work queue (`queue_type = "quorum"`), which warren
    /// declares (the fixture does not: it could not match its arguments),
    /// and a quorum output queue: both survive a node of a cluster.
    pub fn quorum(mut self) -> Fixture {
        self.extra = format!("queue_type = \"quorum\"\n{}", self.extra);
        self.quorum = true;
        self
    }

    /// How many `warren run` processes share the queue.
    pub fn processes(mut self, n: usize) -> Fixture {
        self.processes = n;
        self
    }

    /// Connects, declares the work and output queues, starts the processes
    /// and waits until each consumes.
    pub async fn start(self) -> Running {
        let mut f = self.prepare().await;
        for _ in 0..f.setup.processes {
            f.launch();
        }
        f
    }

    /// Connects and declares the work and output queues; no process yet
    /// (see [`Running::launch`]).
    pub async fn prepare(self) -> Running {
        let queue = unique(&self.name);
        let out = format!("{queue}.out");
        let prefix = self.redis.as_ref().map(|_| unique("dedup"));
        let rabbit = Rabbit::connect_to(&self.broker).await;
        // Registered before anything can fail, so a failed declare still
        // cleans up.
        let f = Running {
            rabbit,
            dead: format!("{queue}.dead"),
            queue,
            out,
            prefix,
            warrens: Vec::new(),
            tracked: Vec::new(),
            setup: self,
        };
        if f.setup.quorum {
            f.rabbit.declare_quorum(&f.out).await;
        } else {
            f.rabbit.declare(&f.queue).await;
            f.rabbit.declare(&f.out).await;
        }
        f
    }
}

/// A started fixture: what the test works with. Dropping it kills the
/// processes, then deletes the test's queues and Redis keys.
#[derive(Debug)]
pub struct Running {
    /// The test's own connection to the broker.
    pub rabbit: Rabbit,
    /// The work queue warren consumes.
    pub queue: String,
    /// Where the guests publish (`out_routing_key`).
    pub out: String,
    /// The dead-letter queue warren declares.
    pub dead: String,
    /// The Redis key prefix, with a `[redis]` section.
    pub prefix: Option<String>,
    /// The `warren run` processes, in start order.
    pub warrens: Vec<Warren>,
    tracked: Vec<String>,
    setup: Fixture,
}

impl Running {
    /// The first process.
    pub fn w(&self) -> &Warren {
        &self.warrens[0]
    }

    pub fn w_mut(&mut self) -> &mut Warren {
        &mut self.warrens[0]
    }

    /// The admin port of the first process.
    pub fn port(&self) -> u16 {
        self.w()
            .admin
            .expect("the fixture gives every process an admin port")
    }

    /// The config a process runs with, for its admin port.
    pub fn config(&self, admin: u16) -> String {
        let s = &self.setup;
        let extra = format!(
            "{}\n[handler.config]\nout_routing_key = \"{}\"\n",
            s.extra, self.out
        );
        let text = config(&s.module, &s.handler, &self.queue, Some(admin), &extra)
            .replace(AMQP_URL, s.warren_amqp.as_deref().unwrap_or(&s.broker));
        // `config` puts `[admin]` last before `[[handler]]`, where the
        // sections go: the admin keys come first, inside that table.
        let mut sections = s.admin.clone();
        sections.push_str(&s.sections);
        if let (Some(r), Some(prefix)) = (&s.redis, &self.prefix) {
            sections.push_str(&format!(
                "[redis]\n{}prefix = \"{prefix}\"\non_unavailable = \"{}\"\n\n",
                r.keys, r.on_unavailable
            ));
        }
        text.replacen("[[handler]]", &format!("{sections}[[handler]]"), 1)
    }

    /// Starts one more process (its own admin port) and waits until it
    /// consumes.
    pub fn launch(&mut self) -> &mut Warren {
        let admin = free_port();
        self.warrens
            .push(Warren::start(&self.config(admin), Some(admin)));
        let w = self.warrens.last_mut().unwrap();
        w.wait_log("consuming", Duration::from_secs(30));
        w
    }

    /// Starts one more process connecting to `urls` (`[amqp] urls`) and
    /// waits until it consumes.
    pub fn launch_urls(&mut self, urls: &[String]) -> &mut Warren {
        let admin = free_port();
        let s = &self.setup;
        let one = s.warren_amqp.as_deref().unwrap_or(&s.broker);
        let list: Vec<String> = urls.iter().map(|u| format!("{u:?}")).collect();
        let config = self.config(admin).replacen(
            &format!("url = \"{one}\""),
            &format!("urls = [{}]", list.join(", ")),
            1,
        );
        self.warrens.push(Warren::start(&config, Some(admin)));
        let w = self.warrens.last_mut().unwrap();
        w.wait_log("consuming", Duration::from_secs(30));
        w
    }

    /// Deletes `queue` too on drop.
    pub fn track(&mut self, queue: &str) {
        self.tracked.push(queue.into());
    }

    /// The wait queues warren declared for the work queue.
    pub fn wait_queues(&self) -> Vec<String> {
        wait_queues_of(&self.queue)
    }

    /// Waits until the processes settled `n` deliveries for good (acked
    /// after a run, acked as a duplicate, or dead-lettered), then until the
    /// work queue and its wait queues hold nothing ready. More than `n`
    /// fails at once. Every output is confirmed before its input is counted,
    /// so after this anything a test did not expect is in its queue.
    pub async fn settle(&self, n: u64, timeout: Duration) {
        let ws: Vec<&Warren> = self.warrens.iter().collect();
        let deadline = Instant::now() + timeout;
        loop {
            let done: u64 = ws.iter().map(|w| w.settled()).sum();
            if done == n {
                break;
            }
            assert!(
                done < n && Instant::now() < deadline,
                "expected {n} deliveries settled, have {done} after {timeout:?}:\n{}",
                table(&ws)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let mut queues = self.wait_queues();
        queues.push(self.queue.clone());
        eventually(
            Duration::from_secs(20),
            "work and wait queues empty",
            || async { self.rabbit.ready(&queues).await.iter().all(|n| *n == 0) },
        )
        .await;
    }

    /// Asserts that nothing more came to the output and dead-letter queues
    /// (call after [`Running::settle`]).
    pub async fn assert_nothing_more(&self) {
        for q in [&self.out, &self.dead] {
            let extra = self.rabbit.drain(q).await;
            assert!(
                extra.is_empty(),
                "{} more in {q} after everything settled, e.g. {:?}",
                extra.len(),
                extra[0].body_str()
            );
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        // Killed first: a running warren would declare its queues again.
        self.warrens.clear();
        let mut queues = vec![self.queue.clone(), self.out.clone(), self.dead.clone()];
        queues.append(&mut self.tracked);
        if self.setup.broker == AMQP_URL {
            queues.extend(wait_queues_of(&self.queue));
        }
        delete_queues(&self.setup.broker, queues);
        if let (Some(r), Some(prefix)) = (&self.setup.redis, &self.prefix) {
            for url in &r.nodes {
                forget(url, prefix);
            }
        }
    }
}

/// The wait queues (`<queue>.retry.<delay>`) the broker has for `queue`;
/// none when `rabbitmqctl` fails (this runs during clean-up too, which must
/// not panic).
fn wait_queues_of(queue: &str) -> Vec<String> {
    let prefix = format!("{queue}.retry.");
    let mut cmd = std::process::Command::new("rabbitmqctl");
    cmd.args(["-q", "list_queues", "name"]);
    let Ok(out) = output_within(&mut cmd, TOOL_LIMIT) else {
        return Vec::new();
    };
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|name| name.starts_with(&prefix))
        .map(str::to_string)
        .collect()
}

/// Deletes `queues` over a connection of its own, on a thread with its own
/// runtime: drop may run inside the test's runtime (where blocking on it
/// would panic) and during a panic (where nothing may panic again).
fn delete_queues(url: &str, queues: Vec<String>) {
    let url = url.to_string();
    let work = move || {
        let Ok(rt) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        else {
            return;
        };
        rt.block_on(async {
            let delete = async {
                let conn = Connection::connect(&url, ConnectionProperties::default())
                    .await
                    .ok()?;
                for q in &queues {
                    // A channel per queue: an error closes the channel.
                    let Ok(ch) = conn.create_channel().await else {
                        break;
                    };
                    let _ = ch
                        .queue_delete(q.as_str().into(), QueueDeleteOptions::default())
                        .await;
                    let _ = ch.close(200, "deleted".into()).await;
                }
                let _ = conn.close(200, "test cleaned up".into()).await;
                Some(())
            };
            let _ = tokio::time::timeout(Duration::from_secs(15), delete).await;
        });
    };
    let _ = std::thread::spawn(work).join();
}

/// Deletes every key under `prefix` (the shared Redis outlives the test);
/// a Redis that does not answer is left alone.
fn forget(url: &str, prefix: &str) {
    let Ok(client) = redis::Client::open(url) else {
        return;
    };
    let Ok(mut con) = client.get_connection_with_timeout(Duration::from_secs(2)) else {
        return;
    };
    let mut cursor = 0u64;
    loop {
        let Ok((next, keys)): redis::RedisResult<(u64, Vec<String>)> = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("{prefix}:*"))
            .arg("COUNT")
            .arg(1000)
            .query(&mut con)
        else {
            return;
        };
        // One UNLINK per key: a Cluster node refuses one over keys of
        // several slots.
        if !keys.is_empty() {
            let mut pipe = redis::pipe();
            for key in keys {
                pipe.cmd("UNLINK").arg(key).ignore();
            }
            let _: redis::RedisResult<()> = pipe.query(&mut con);
        }
        if next == 0 {
            return;
        }
        cursor = next;
    }
}
