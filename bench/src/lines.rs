//! The lines of the benchmark and how one line is measured, top to bottom:
//! fill a fresh durable queue with N persistent messages; start the
//! consumer and wait until it is ready; drain the queue, timing it and
//! reading the consumer's CPU time before and after; then publish at half
//! the drain rate for a while and take the p50/p99 latency; then stop the
//! consumer and delete the queues and dedup keys.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use tokio::process::Command;

use crate::amqp::{self, Queues, Rabbit};
use crate::child::Consumer;
use crate::machine::{self, Snapshot};
use crate::profile::Perf;
use crate::progress::{self, Every};
use crate::report::{Measured, percentile};
use crate::warren::{Spec, Tuning, Warren};

/// A drain with no progress for this long has failed.
const STALL: Duration = Duration::from_secs(60);

/// Settings for every line of one run.
#[derive(Debug, Clone)]
pub struct Opts {
    pub n: u64,
    pub latency_secs: f64,
    pub amqp_url: String,
    pub redis_url: String,
    pub warren: PathBuf,
    pub guests: PathBuf,
    pub python: PathBuf,
    pub seed_script: PathBuf,
    pub consumers: u32,
    pub max_batch: u32,
    /// `x-queue-mode` of the output queue of lines 2e and 4 to 7, if any.
    pub out_queue_mode: Option<String>,
    pub prefetch: u16,
    pub channels: u32,
    pub instances: String,
    /// How long to wait for a quiet machine before each line.
    pub wait_quiet: Duration,
    /// The ports the broker's nodes and Redis listen on, to find their
    /// processes.
    pub broker_ports: Vec<u16>,
    pub redis_port: Option<u16>,
    /// Record a perf profile of warren into this file while the line of
    /// this id drains.
    pub perf: Option<(PathBuf, String)>,
    /// A name unique to this run: queue names and key prefixes start with it.
    pub run_id: String,
    /// The bench's HTTP server (lines 2eh and 5h): `http://127.0.0.1:PORT`.
    pub http_url: Option<String>,
    /// The URLs warren process i connects to, the i-th modulo their number:
    /// `amqp_url` alone, or each node of the cluster.
    pub host_urls: Vec<String>,
    /// The settings of the cluster lines (`Line::cluster`), when the run
    /// has any: `amqp_url` on the cluster's first node, `host_urls` and
    /// `broker_ports` every node's.
    pub cluster: Option<Box<Opts>>,
}

impl Opts {
    /// The URL warren process `i` connects to.
    fn host_url(&self, i: u32) -> String {
        let urls = &self.host_urls;
        urls.get(i as usize % urls.len().max(1))
            .unwrap_or(&self.amqp_url)
            .clone()
    }
}

#[derive(Debug, Clone)]
pub enum Kind {
    /// A bare lapin consumer, acking each message or with no ack at all.
    Bare { ack: bool },
    /// A bare lapin echo: each message published persistent, mandatory and
    /// confirmed to an output queue, the input acked after the confirm;
    /// with `http`, after one GET to the bench's HTTP server (hyper, a
    /// connection per request, as warren sends a handler's requests).
    BareEcho { http: bool },
    /// The Python seed design made correct.
    Seed,
    /// warren with the guest `module` (a file in the guests folder), which
    /// publishes each message to an output queue (`output`), or, without
    /// `output`, is the `sandbox` test guest in its `ack` mode: it acks and
    /// publishes nothing, which shows what echo's output costs.
    Warren {
        module: &'static str,
        dedup: bool,
        processes: u32,
        output: bool,
        /// The run's settings (`--consumers`, `--prefetch`, ...) in the
        /// config; without, only the queue, the module and the URLs, so
        /// warren runs at its defaults (line 5d).
        tuned: bool,
    },
    /// warren with the `counter` test guest running `script` (its lines
    /// separated by `;`) on every message, publishing nothing: line 5n's
    /// work plus what the script asks of the key-value store.
    WarrenKv { script: &'static str },
    /// warren with the `fetcher` test guest making one GET to the bench's
    /// HTTP server per message and publishing what it got: line 5's work
    /// plus one loopback HTTP request.
    WarrenHttp,
}

#[derive(Debug, Clone)]
pub struct Line {
    pub id: &'static str,
    pub what: &'static str,
    pub kind: Kind,
    /// The kind of its input and output queues (and of warren's own).
    pub queues: Queues,
    /// On the run's 3-node cluster (`Opts::cluster`) instead of the local
    /// broker: the bench's own connection and a bare consumer on its first
    /// node, warren process i on node i.
    pub cluster: bool,
}

/// Every line, in the order.
pub fn all() -> Vec<Line> {
    let warren = |module, dedup, processes| Kind::Warren {
        module,
        dedup,
        processes,
        output: true,
        tuned: true,
    };
    let mut lines = vec![
        Line {
            id: "1",
            what: "bare lapin, ack each message",
            kind: Kind::Bare { ack: true },
            queues: Queues::ClassicV2,
            cluster: false,
        },
        Line {
            id: "2",
            what: "bare lapin, no ack (ceiling)",
            kind: Kind::Bare { ack: false },
            queues: Queues::ClassicV2,
            cluster: false,
        },
        Line {
            id: "2e",
            what: "(not in the issue) bare lapin echo: publish each message with confirms, then ack",
            kind: Kind::BareEcho { http: false },
            queues: Queues::ClassicV2,
            cluster: false,
        },
        Line {
            id: "3",
            what: "Python pika, 5 threads, Redis SET NX, manual ack",
            kind: Kind::Seed,
            queues: Queues::ClassicV2,
            cluster: false,
        },
        Line {
            id: "4",
            what: "warren, Rust echo, dedup off",
            kind: warren("echo.wasm", false, 1),
            queues: Queues::ClassicV2,
            cluster: false,
        },
        Line {
            id: "5",
            what: "warren, Rust echo, dedup on Redis",
            kind: warren("echo.wasm", true, 1),
            queues: Queues::ClassicV2,
            cluster: false,
        },
        Line {
            id: "5n",
            what: "(not in the issue) line 5 with an ack-only guest: no output",
            kind: Kind::Warren {
                module: "sandbox.wasm",
                dedup: true,
                processes: 1,
                output: false,
                tuned: true,
            },
            queues: Queues::ClassicV2,
            cluster: false,
        },
        Line {
            id: "5d",
            what: "line 5 with no tuning: warren's defaults",
            kind: Kind::Warren {
                module: "echo.wasm",
                dedup: true,
                processes: 1,
                output: true,
                tuned: false,
            },
            queues: Queues::ClassicV2,
            cluster: false,
        },
        Line {
            id: "5c",
            what: "(issue 14) line 5k's counter guest with no key-value call: the base 5k is read against",
            kind: Kind::WarrenKv { script: "quiet" },
            queues: Queues::ClassicV2,
            cluster: false,
        },
        Line {
            id: "5k",
            what: "(issue 14) line 5n with a key-value get + set per message (the counter guest)",
            kind: Kind::WarrenKv {
                script: "quiet;get bench;set bench v",
            },
            queues: Queues::ClassicV2,
            cluster: false,
        },
        Line {
            id: "2eh",
            what: "(issue 14) line 2e with one loopback HTTP GET per message: a bare hyper client, a connection per request",
            kind: Kind::BareEcho { http: true },
            queues: Queues::ClassicV2,
            cluster: false,
        },
        Line {
            id: "5h",
            what: "(issue 14) line 5 with one loopback HTTP GET per message (the fetcher guest)",
            kind: Kind::WarrenHttp,
            queues: Queues::ClassicV2,
            cluster: false,
        },
        Line {
            id: "6",
            what: "warren, Rust echo, dedup on Redis, 2 processes",
            kind: warren("echo.wasm", true, 2),
            queues: Queues::ClassicV2,
            cluster: false,
        },
        Line {
            id: "7a",
            what: "warren, Python enrich, dedup on Redis",
            kind: warren("enrich_python.wasm", true, 1),
            queues: Queues::ClassicV2,
            cluster: false,
        },
        Line {
            id: "7b",
            what: "warren, JavaScript enrich, dedup on Redis",
            kind: warren("enrich_js.wasm", true, 1),
            queues: Queues::ClassicV2,
            cluster: false,
        },
        // The same handler in the other languages (issue 15's capacity
        // figures: the per-message cost of each language).
        Line {
            id: "7r",
            what: "warren, Rust enrich, dedup on Redis",
            kind: warren("enrich.wasm", true, 1),
            queues: Queues::ClassicV2,
            cluster: false,
        },
        Line {
            id: "7c",
            what: "warren, C enrich, dedup on Redis",
            kind: warren("enrich_c.wasm", true, 1),
            queues: Queues::ClassicV2,
            cluster: false,
        },
        Line {
            id: "7g",
            what: "warren, Go enrich, dedup on Redis",
            kind: warren("enrich_go.wasm", true, 1),
            queues: Queues::ClassicV2,
            cluster: false,
        },
    ];
    // Lines 2e and 5 again on other queue kinds (issue 13: which queue kind
    // warren declares; issue 15: quorum queues), each to be read against
    // the 2e of its own kind.
    let again = |of: &str, id, what, queues| Line {
        id,
        what,
        queues,
        cluster: false,
        ..lines
            .iter()
            .find(|l| l.id == of)
            .expect("line exists")
            .clone()
    };
    let variants = [
        again(
            "2e",
            "2e1",
            "line 2e on version 1 classic queues",
            Queues::ClassicV1,
        ),
        again(
            "5",
            "51",
            "line 5 on version 1 classic queues",
            Queues::ClassicV1,
        ),
        again("2e", "2eq", "line 2e on quorum queues", Queues::Quorum),
        // Issue 15: past one broker. The same quorum queues on a 3-node
        // cluster: the bare echo on one node, and two warren hosts on two
        // nodes (one of them not the queue's leader, as in a real cluster
        // behind a load balancer).
        Line {
            cluster: true,
            ..again(
                "2e",
                "2ec",
                "line 2e on quorum queues of a 3-node cluster",
                Queues::Quorum,
            )
        },
        Line {
            cluster: true,
            ..again(
                "6",
                "6c",
                "line 6 on quorum queues of a 3-node cluster: 2 processes, each on its own node",
                Queues::Quorum,
            )
        },
        again(
            "5",
            "5q",
            "line 5 on quorum queues (queue_type = \"quorum\")",
            Queues::Quorum,
        ),
    ];
    lines.extend(variants);
    lines
}

/// What consumes the queue in one line.
enum Subject {
    Own(Box<Consumer>),
    Warren(Vec<Warren>),
}

/// Queue and key names of one line.
struct Names {
    queue: String,
    out: String,
    /// Prefix of every dedup key of the line (warren's `redis.prefix`).
    prefix: String,
}

/// Why a line has no figures without having failed: a guest not built yet.
pub fn skip_reason(opts: &Opts, line: &Line) -> Option<String> {
    match &line.kind {
        Kind::Warren { module, .. } if !opts.guests.join(module).is_file() => Some(format!(
            "skipped: {} not found (bash guests/build-all.sh builds it)",
            opts.guests.join(module).display()
        )),
        Kind::WarrenKv { .. } if !opts.guests.join("counter.wasm").is_file() => Some(format!(
            "skipped: {} not found (bash guests/rust/build.sh builds it)",
            opts.guests.join("counter.wasm").display()
        )),
        Kind::WarrenHttp if !opts.guests.join("fetcher.wasm").is_file() => Some(format!(
            "skipped: {} not found (bash guests/rust/build.sh builds it)",
            opts.guests.join("fetcher.wasm").display()
        )),
        _ => None,
    }
}

/// Measures one line and cleans up after it, whether it succeeded or not.
pub async fn run(opts: &Opts, line: &Line, rabbit: &Rabbit) -> anyhow::Result<Measured> {
    let queue = format!("{}-{}", opts.run_id, line.id);
    let names = Names {
        out: format!("{queue}.out"),
        prefix: queue.clone(),
        queue,
    };
    let result = measure(opts, line, rabbit, &names).await;
    for q in [&names.queue, &names.out, &format!("{}.dead", names.queue)] {
        rabbit.delete(q).await;
    }
    if matches!(
        line.kind,
        Kind::Seed | Kind::Warren { dedup: true, .. } | Kind::WarrenKv { .. } | Kind::WarrenHttp
    ) {
        match crate::delete_keys(&opts.redis_url, &format!("{}:*", names.prefix)).await {
            Ok(n) => progress::say(format_args!("    deleted {n} dedup keys")),
            Err(e) => progress::say(format_args!("    cannot delete the dedup keys: {e:#}")),
        }
    }
    result
}

async fn measure(
    opts: &Opts,
    line: &Line,
    rabbit: &Rabbit,
    names: &Names,
) -> anyhow::Result<Measured> {
    let n = opts.n;
    let busy_before = wait_quiet(opts.wait_quiet).await?;
    progress::say(format_args!(
        "    machine busy before the line: {:.0}% of CPU{}",
        busy_before * 100.0,
        if busy_before > 0.1 {
            " (other programs are running: the figures will suffer)"
        } else {
            ""
        }
    ));
    rabbit.declare_input(&names.queue, line.queues).await?;
    let output = !matches!(
        line.kind,
        Kind::Warren { output: false, .. } | Kind::WarrenKv { .. }
    );
    if matches!(
        line.kind,
        Kind::Warren { .. } | Kind::BareEcho { .. } | Kind::WarrenHttp
    ) {
        // Echo's outputs are mandatory publishes: their queue must exist.
        rabbit
            .declare_with(&names.out, line.queues, opts.out_queue_mode.as_deref())
            .await?;
    }
    rabbit.fill(&names.queue, n, &names.queue).await?;
    // What the broker holds in memory for the full queue (read before the
    // consumer starts, off the clock).
    let queue_mib = amqp::queue_memory_mib(&names.queue);
    progress::say(format_args!(
        "    the full queue: {} MiB in the broker's memory",
        queue_mib.map_or("unknown".into(), |m| format!("{m:.1}"))
    ));

    // Start the consumer; the clock starts when it begins to consume.
    let mut subject = start(opts, line, names).await?;
    let pids = subject.pids()?;
    // Who else uses the CPU while it drains: the broker, Redis, the bench.
    let broker: Vec<u32> = opts
        .broker_ports
        .iter()
        .filter_map(|p| machine::listener(*p))
        .collect();
    let redis = opts.redis_port.and_then(machine::listener);
    let others: Vec<u32> = broker
        .iter()
        .copied()
        .chain([redis, Some(std::process::id())].into_iter().flatten())
        .collect();
    let watched: Vec<u32> = pids.iter().chain(&others).copied().collect();
    let (started, before) = match &mut subject {
        Subject::Own(c) => {
            let snap = Snapshot::take(&watched)?;
            c.send("go").await?;
            (Instant::now(), snap)
        }
        Subject::Warren(ws) => {
            let deadline = Instant::now() + Duration::from_secs(300);
            for w in ws.iter_mut() {
                w.wait_ready(deadline).await?;
            }
            (Instant::now(), Snapshot::take(&watched)?)
        }
    };
    let rss_idle_mib = machine::rss_mib(&pids);
    let rss = machine::RssPeak::start(pids.clone());
    let perf = match &opts.perf {
        Some((file, id)) if id == line.id => Some(Perf::start(file, pids[0])?),
        _ => None,
    };
    progress::say(format_args!("    draining {n} messages"));
    subject.drained(rabbit, &names.queue, n).await?;
    let took = started.elapsed();
    let after = Snapshot::take(&watched)?;
    let rss_drain_mib = rss.finish().await;
    if let Some(p) = perf {
        p.stop().await;
    }
    let consumer = machine::usage(&before, &after, &pids);
    let cpu_us = consumer.of * 1e6 / n as f64;
    let broker_cpu_us =
        (!broker.is_empty()).then(|| machine::usage(&before, &after, &broker).of * 1e6 / n as f64);
    let redis_cpu_us = redis.map(|r| machine::usage(&before, &after, &[r]).of * 1e6 / n as f64);
    let known = machine::usage(&before, &after, &watched).of;
    let others_busy = (consumer.machine - known).max(0.0) / consumer.capacity.max(1e-9);
    let drain_rate = n as f64 / took.as_secs_f64();
    progress::say(format_args!(
        "    drained in {:.2} s: {drain_rate:.0} msg/s, {cpu_us:.1} µs consumer CPU per message, \
         broker {}, Redis {}, other programs {:.0}% of the machine",
        took.as_secs_f64(),
        broker_cpu_us.map_or("unknown".into(), |b| format!("{b:.1} µs")),
        redis_cpu_us.map_or("unknown".into(), |b| format!("{b:.1} µs")),
        others_busy * 100.0,
    ));

    // Latency at a fixed rate: half the maximum just measured. An ack-only
    // guest publishes nothing to time.
    if !output {
        subject.stop().await;
        return Ok(Measured {
            drain_rate,
            cpu_us,
            latency_rate: f64::NAN,
            achieved_rate: f64::NAN,
            broker_cpu_us,
            redis_cpu_us,
            others_busy,
            samples: 0,
            published: 0,
            p50_ms: f64::NAN,
            p99_ms: f64::NAN,
            rss_idle_mib,
            rss_drain_mib,
            queue_mib,
        });
    }
    let rate = drain_rate / 2.0;
    let count = ((rate * opts.latency_secs) as u64).max(100);
    progress::say(format_args!(
        "    latency: publishing {count} messages at {rate:.0} msg/s"
    ));
    let deadline =
        Instant::now() + Duration::from_secs_f64(opts.latency_secs) + Duration::from_secs(60);
    // A consumer with an output queue (warren, the bare echo) is timed when
    // its output arrives, on an output queue emptied first and drained as
    // it goes, so the broker is not also holding the drain's outputs.
    let (achieved, mut samples) = match &mut subject {
        Subject::Own(c) if !matches!(line.kind, Kind::BareEcho { .. }) => {
            let achieved = rabbit
                .paced(&names.queue, rate, count, n, &names.queue)
                .await?;
            (achieved, c.latencies(count, deadline).await?)
        }
        Subject::Own(_) | Subject::Warren(_) => {
            rabbit.purge(&names.out).await?;
            let mut sink = rabbit.latency_sink(&names.out).await?;
            let (sent, samples) = tokio::join!(
                rabbit.paced(&names.queue, rate, count, n, &names.queue),
                sink.collect(count as usize, deadline)
            );
            (sent?, samples)
        }
    };
    subject.stop().await;
    let mut ms = |p| percentile(&mut samples, p).map_or(f64::NAN, |us| us as f64 / 1000.0);
    let (p50_ms, p99_ms) = (ms(0.50), ms(0.99));
    // The table keeps p50 and p99; the progress line also shows the body
    // and the far tail, which say whether a p99 is a few stalls or a wide
    // distribution.
    let (p90_ms, p999_ms) = (ms(0.90), ms(0.999));
    progress::say(format_args!(
        "    p50 {p50_ms:.2} ms, p90 {p90_ms:.2} ms, p99 {p99_ms:.2} ms, p99.9 {p999_ms:.2} ms ({} samples; the broker took {achieved:.0} msg/s)",
        samples.len()
    ));
    Ok(Measured {
        drain_rate,
        cpu_us,
        latency_rate: rate,
        achieved_rate: achieved,
        broker_cpu_us,
        redis_cpu_us,
        others_busy,
        samples: samples.len(),
        published: count,
        p50_ms,
        p99_ms,
        rss_idle_mib,
        rss_drain_mib,
        queue_mib,
    })
}

async fn start(opts: &Opts, line: &Line, names: &Names) -> anyhow::Result<Subject> {
    match &line.kind {
        Kind::Bare { .. } | Kind::BareEcho { .. } => {
            let exe = std::env::current_exe().context("cannot find the bench binary")?;
            let mut cmd = Command::new(exe);
            let (sub, what) = match line.kind {
                Kind::BareEcho { .. } => ("bare-echo", "the bare lapin echo"),
                _ => ("bare-consumer", "the bare lapin consumer"),
            };
            cmd.args([sub, "--url", &opts.amqp_url, "--queue"])
                .arg(&names.queue)
                .args(["--drain", &opts.n.to_string()])
                .args(["--prefetch", &opts.prefetch.to_string()]);
            match line.kind {
                Kind::BareEcho { http } => {
                    cmd.arg("--out").arg(&names.out);
                    if http {
                        cmd.arg("--http").arg(http_target(opts)?);
                    }
                }
                Kind::Bare { ack: false } => {
                    cmd.arg("--no-ack");
                }
                _ => {}
            }
            Ok(Subject::Own(Box::new(Consumer::start(cmd, what).await?)))
        }
        Kind::Seed => {
            let mut cmd = Command::new(&opts.python);
            cmd.arg(&opts.seed_script)
                .arg(&opts.amqp_url)
                .arg(&names.queue)
                .arg(&opts.redis_url)
                .arg(format!("{}:", names.prefix))
                .arg(opts.n.to_string());
            Ok(Subject::Own(Box::new(
                Consumer::start(cmd, "the Python seed consumer").await?,
            )))
        }
        Kind::Warren {
            module,
            dedup,
            processes,
            output,
            tuned,
        } => {
            let tuning = tuned.then(|| tuning(opts));
            let path = std::path::absolute(opts.guests.join(module))?;
            let spec = |i| Spec {
                amqp_url: opts.host_url(i),
                redis: dedup.then(|| (opts.redis_url.clone(), names.prefix.clone())),
                dedup: *dedup,
                name: module.trim_end_matches(".wasm").replace('_', "-"),
                module: path.clone(),
                queue: names.queue.clone(),
                quorum: line.queues == Queues::Quorum,
                config: if *output {
                    vec![("out_routing_key", names.out.clone())]
                } else {
                    vec![("mode", "ack".into())]
                },
                tuning: tuning.clone(),
                http_allow: None,
            };
            let ws = (0..*processes)
                .map(|i| Warren::start(&opts.warren, &spec(i)))
                .collect::<anyhow::Result<Vec<_>>>()?;
            Ok(Subject::Warren(ws))
        }
        Kind::WarrenKv { script } => {
            let spec = Spec {
                amqp_url: opts.amqp_url.clone(),
                redis: Some((opts.redis_url.clone(), names.prefix.clone())),
                dedup: true,
                name: "counter".into(),
                module: std::path::absolute(opts.guests.join("counter.wasm"))?,
                queue: names.queue.clone(),
                quorum: line.queues == Queues::Quorum,
                config: vec![("script", script.to_string())],
                tuning: Some(tuning(opts)),
                http_allow: None,
            };
            Ok(Subject::Warren(vec![Warren::start(&opts.warren, &spec)?]))
        }
        Kind::WarrenHttp => {
            let target = http_target(opts)?;
            let spec = Spec {
                amqp_url: opts.amqp_url.clone(),
                redis: Some((opts.redis_url.clone(), names.prefix.clone())),
                dedup: true,
                name: "fetcher".into(),
                module: std::path::absolute(opts.guests.join("fetcher.wasm"))?,
                queue: names.queue.clone(),
                quorum: line.queues == Queues::Quorum,
                config: vec![
                    ("script", format!("get {target}")),
                    ("out_routing_key", names.out.clone()),
                ],
                tuning: Some(tuning(opts)),
                http_allow: opts.http_url.clone(),
            };
            Ok(Subject::Warren(vec![Warren::start(&opts.warren, &spec)?]))
        }
    }
}

/// The run's handler settings (`--consumers`, `--prefetch`, ...).
fn tuning(opts: &Opts) -> Tuning {
    Tuning {
        consumers: opts.consumers,
        max_batch: opts.max_batch,
        prefetch: opts.prefetch,
        channels: opts.channels,
        instances: opts.instances.clone(),
    }
}

/// What lines 2eh and 5h request: a price from the bench's HTTP server.
fn http_target(opts: &Opts) -> anyhow::Result<String> {
    let base = opts
        .http_url
        .as_deref()
        .context("the bench's HTTP server is not running")?;
    Ok(format!("{base}/price/sku-1"))
}

impl Subject {
    fn pids(&self) -> anyhow::Result<Vec<u32>> {
        match self {
            Subject::Own(c) => Ok(vec![c.pid()?]),
            Subject::Warren(ws) => ws.iter().map(Warren::pid).collect(),
        }
    }

    /// Waits until the consumer has handled the first `n` messages,
    /// showing progress and failing if it stalls.
    async fn drained(&mut self, rabbit: &Rabbit, queue: &str, n: u64) -> anyhow::Result<()> {
        let started = Instant::now();
        let mut shown = Every::new(Duration::from_secs(1));
        let mut stall = Stall::default();
        let mut wait = crate::warren::POLL;
        match self {
            Subject::Own(c) => {
                let drained =
                    c.expect_line("drained", Instant::now() + Duration::from_secs(86_400));
                tokio::pin!(drained);
                let mut tick = tokio::time::interval(Duration::from_secs(1));
                loop {
                    tokio::select! {
                        r = &mut drained => return r.map(|_| ()),
                        _ = tick.tick() => {
                            let left = rabbit.ready(queue).await?;
                            progress::say(format_args!("    draining: {left} ready in the queue"));
                            stall.check(u64::from(left))?;
                        }
                    }
                }
            }
            Subject::Warren(ws) => loop {
                tokio::time::sleep(wait).await;
                let (mut acked, mut other) = (0, 0);
                for w in ws.iter_mut() {
                    let o = w.outcomes().await?;
                    (acked, other) = (acked + o.ack, other + o.other);
                }
                if acked >= n {
                    return Ok(());
                }
                let rate = acked as f64 / started.elapsed().as_secs_f64();
                wait = crate::warren::next_poll(n - acked, rate);
                if shown.due() {
                    let note = if other > 0 {
                        format!(", {other} NOT acked (retried, dead-lettered or duplicates)")
                    } else {
                        String::new()
                    };
                    progress::say(format_args!(
                        "    draining: {acked}/{n} acked ({rate:.0} msg/s){note}"
                    ));
                }
                stall.check(acked + other)?;
            },
        }
    }

    async fn stop(self) {
        match self {
            Subject::Own(c) => c.stop().await,
            Subject::Warren(ws) => {
                for w in ws {
                    w.stop().await;
                }
            }
        }
    }
}

/// Fails a drain whose progress figure has not moved for [`STALL`].
#[derive(Default)]
struct Stall {
    last: Option<(u64, Instant)>,
}

impl Stall {
    fn check(&mut self, figure: u64) -> anyhow::Result<()> {
        match self.last {
            Some((f, since)) if f == figure => {
                if since.elapsed() > STALL {
                    bail!("no progress for {} s (stuck at {figure})", STALL.as_secs());
                }
            }
            _ => self.last = Some((figure, Instant::now())),
        }
        Ok(())
    }
}

/// Waits up to `patience` for the machine to be quiet (under 10% busy
/// over a second), so that the line does not compete with other programs;
/// returns the last busy share seen.
async fn wait_quiet(patience: Duration) -> anyhow::Result<f64> {
    let since = Instant::now();
    let mut shown = Every::new(Duration::from_secs(10));
    loop {
        let busy = machine::busy(Duration::from_secs(1)).await?;
        if busy <= 0.1 || since.elapsed() >= patience {
            return Ok(busy);
        }
        if shown.due() {
            progress::say(format_args!(
                "    waiting for the machine to be quiet: {:.0}% busy",
                busy * 100.0
            ));
        }
    }
}
