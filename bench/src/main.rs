//! The end-to-end benchmark of warren (BENCHMARKS.md): on the local RabbitMQ
//! and Redis, each line fills a durable queue with N persistent 256-byte
//! messages and measures the drain rate, the consumer's CPU time per message
//! and the p50/p99 latency at half that rate, for bare lapin consumers (the
//! broker's limit), the seed article's Python design, and warren.
//!
//! Layout:
//!
//! - `lines`: the lines, and how one line is measured, top to bottom;
//! - `amqp`: the bench's own RabbitMQ side (fill, paced publish, latency sink);
//! - `bare`: the bare lapin consumer of lines 1 and 2 (a child process);
//! - `bare_echo`: the bare lapin echo of line 2e, consume-publish-ack with
//!   confirms (a child process);
//! - `child`: CPU time from /proc, and the line protocol of the bench's own
//!   consumer processes (the bare one and `bench/seed_consumer.py`);
//! - `warren`: a `warren run` process, its config and admin endpoint;
//! - `machine`: CPU time of the consumer, the broker and everything else;
//! - `profile`: `perf record` of warren in line 5;
//! - `report`: the table and the targets.
//!
//! Progress goes to stderr; the table to stdout and to `--out`.

mod amqp;
mod bare;
mod bare_echo;
mod child;
mod lines;
mod machine;
mod price_server;
mod profile;
mod progress;
mod report;
mod warren;

use std::net::IpAddr;
use std::path::PathBuf;

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};

use crate::report::Row;

#[derive(Parser, Debug)]
#[command(
    name = "bench",
    about = "End-to-end benchmark: warren against bare lapin consumers and the seed's Python design",
    // bench/run passes the paths; an option given again overrides them.
    args_override_self = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Cmd>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// The bare lapin consumer of lines 1 and 2; the bench starts it itself.
    #[command(hide = true)]
    BareConsumer(bare::Args),
    /// The bare lapin echo of line 2e; the bench starts it itself.
    #[command(hide = true)]
    BareEcho(bare_echo::Args),
}

#[derive(clap::Args, Debug)]
struct RunArgs {
    /// Messages per line (the queue is filled with this many, then drained).
    #[arg(short, long, default_value_t = 100_000)]
    n: u64,
    /// Seconds of publishing at half the drain rate, for the latency figures.
    #[arg(long, default_value_t = 10.0)]
    latency_secs: f64,
    /// Lines to run, comma-separated (1,2,2e,3,4,5,5n,5d,5c,5k,2eh,5h,6,7a,7b,7r,7c,7g,2e1,51,2eq,5q); all by default.
    #[arg(long, value_delimiter = ',')]
    lines: Vec<String>,
    #[arg(long, default_value = "amqp://guest:guest@127.0.0.1:5672/%2f")]
    amqp_url: String,
    #[arg(long, default_value = "redis://127.0.0.1:6379/0")]
    redis_url: String,
    /// The warren binary (a release build).
    #[arg(long, default_value = "target/release/warren")]
    warren: PathBuf,
    /// Where the guest components are (echo.wasm, enrich_python.wasm, ...).
    #[arg(long, default_value = "guests/build")]
    guests: PathBuf,
    /// The Python with pika and redis for line 3.
    #[arg(long, default_value = "bench/.venv/bin/python")]
    python: PathBuf,
    /// The seed consumer script of line 3.
    #[arg(long, default_value = "bench/seed_consumer.py")]
    seed_script: PathBuf,
    /// Where the markdown table is written.
    #[arg(long, default_value = "bench/results.md")]
    out: PathBuf,
    /// warren's `consumers` (messages in flight per process). With batches,
    /// 256 drained faster than 64 or 128 on a 2-core machine (BENCHMARKS.md).
    #[arg(long, default_value_t = 256)]
    consumers: u32,
    /// warren's `max_batch`: the most messages handled as one batch. With
    /// `consumers` 256 and `prefetch` 512, 64 cost less CPU per message than
    /// 16 or 32 and had a lower p99 than 128 (BENCHMARKS.md).
    #[arg(long, default_value_t = 64)]
    max_batch: u32,
    /// RabbitMQ's `x-queue-mode` for the output queue of lines 2e and 4 to
    /// 7 (`lazy`); by default a plain durable classic queue, which keeps the
    /// outputs in the queue process's memory as they pile up.
    #[arg(long)]
    out_queue_mode: Option<String>,
    /// `prefetch` per consumer channel, for warren and lines 1 and 2e.
    #[arg(long, default_value_t = 512)]
    prefetch: u16,
    /// warren's consumer `channels` per process.
    #[arg(long, default_value_t = 2)]
    channels: u32,
    /// warren's `instances`: `per-message` (a fresh sandbox per message,
    /// warren's default) or `reuse`.
    #[arg(long, default_value = "per-message", value_parser = ["per-message", "reuse"])]
    instances: String,
    /// Seconds to wait before each line for the machine to be quiet (under
    /// 10% CPU busy); past it the line runs anyway, and the table says how
    /// busy the machine was.
    #[arg(long, default_value_t = 120)]
    wait_quiet: u64,
    /// Another warren binary (e.g. a build of an earlier commit) to measure
    /// beside `--warren`: every warren line runs with it too, right before
    /// the line with `--warren` (after it in every second round of
    /// `--rounds`), as line `ID@base`, and the report gives
    /// the ratios of each pair. Comparing two builds in one run is what
    /// makes a before/after figure trustworthy on a shared machine.
    #[arg(long)]
    baseline: Option<PathBuf>,
    /// The guests the baseline binary runs (default: `--guests`): a build
    /// from before a WIT change cannot load today's modules, so give it
    /// the same guests built at its own commit.
    #[arg(long)]
    baseline_guests: Option<PathBuf>,
    /// Record `perf record` data of warren in line 5 (or `--perf-line`)
    /// into this file (the profiler slows it: the figures of that run are
    /// not the benchmark's). With `--baseline`, the baseline's profile goes
    /// to the same name with `.base` appended.
    #[arg(long)]
    perf: Option<PathBuf>,
    /// The line `--perf` profiles.
    #[arg(long, default_value = "5")]
    perf_line: String,
    /// Runs every chosen line this many times, one round after another;
    /// each line's row is then its round with the median CPU per message,
    /// and the report lists every round. A line's CPU per message spreads
    /// by a few µs from one drain to the next on a shared 2-core machine:
    /// a difference of two lines (5k - 5c) needs several rounds.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=50))]
    rounds: u32,
}

/// Measures one line, or says why it was skipped or failed.
async fn measure_line(
    opts: &lines::Opts,
    line: &lines::Line,
    rabbit: &amqp::Rabbit,
    cluster: Result<&amqp::Rabbit, &str>,
) -> Result<report::Measured, String> {
    // A cluster line runs against the cluster's nodes, with the bench's
    // connection to its first node.
    let (opts, rabbit) = match (line.cluster, &opts.cluster, cluster) {
        (false, _, _) => (opts, rabbit),
        (true, Some(o), Ok(r)) => (&**o, r),
        (true, _, Err(why)) => {
            progress::say(format_args!("    FAILED: no cluster: {why}"));
            return Err(format!("failed: no cluster: {why}"));
        }
        (true, None, Ok(_)) => return Err("failed: no cluster settings".into()),
    };
    match lines::skip_reason(opts, line) {
        Some(why) => {
            progress::say(format_args!("    {why}"));
            Err(why)
        }
        None => lines::run(opts, line, rabbit).await.map_err(|e| {
            progress::say(format_args!("    FAILED: {e:#}"));
            format!("failed: {e:#}")
        }),
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let rt = tokio::runtime::Runtime::new()?;
    match cli.command {
        Some(Cmd::BareConsumer(args)) => rt.block_on(bare::run(args)),
        Some(Cmd::BareEcho(args)) => rt.block_on(bare_echo::run(args)),
        None => rt.block_on(run(cli.run)),
    }
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    check_loopback(&args.amqp_url, &args.redis_url)?;
    if args.n == 0 {
        bail!("-n must be at least 1");
    }
    let all = lines::all();
    let chosen: Vec<_> = if args.lines.is_empty() {
        all
    } else {
        for id in &args.lines {
            if !all.iter().any(|l| l.id == id) {
                let ids: Vec<&str> = all.iter().map(|l| l.id).collect();
                bail!("no line {id:?}: the lines are {}", ids.join(", "));
            }
        }
        all.into_iter()
            .filter(|l| args.lines.iter().any(|id| id == l.id))
            .collect()
    };
    let http_url = if chosen.iter().any(|l| {
        matches!(
            l.kind,
            lines::Kind::WarrenHttp | lines::Kind::BareEcho { http: true }
        )
    }) {
        let url = price_server::start().await?;
        progress::say(format_args!("HTTP server for lines 2eh and 5h at {url}"));
        Some(url)
    } else {
        None
    };
    let opts = lines::Opts {
        http_url,
        n: args.n,
        latency_secs: args.latency_secs,
        amqp_url: args.amqp_url.clone(),
        redis_url: args.redis_url.clone(),
        warren: args.warren.clone(),
        guests: args.guests.clone(),
        python: args.python.clone(),
        seed_script: args.seed_script.clone(),
        consumers: args.consumers,
        max_batch: args.max_batch,
        out_queue_mode: args.out_queue_mode.clone(),
        prefetch: args.prefetch,
        channels: args.channels,
        instances: args.instances.clone(),
        wait_quiet: std::time::Duration::from_secs(args.wait_quiet),
        broker_ports: args
            .amqp_url
            .parse::<lapin::uri::AMQPUri>()
            .ok()
            .map(|u| u.authority.port)
            .into_iter()
            .collect(),
        host_urls: vec![args.amqp_url.clone()],
        cluster: None,
        redis_port: match &redis::Client::open(args.redis_url.as_str())?
            .get_connection_info()
            .addr
        {
            redis::ConnectionAddr::Tcp(_, port) => Some(*port),
            _ => None,
        },
        perf: args.perf.clone().map(|f| (f, args.perf_line.clone())),
        run_id: format!(
            "bench-{}-{:x}",
            std::process::id(),
            amqp::now_us() % 0xffffff
        ),
    };
    if chosen.iter().any(|l| {
        matches!(
            l.kind,
            lines::Kind::Warren { .. } | lines::Kind::WarrenKv { .. } | lines::Kind::WarrenHttp
        )
    }) && !opts.warren.is_file()
    {
        bail!(
            "no warren binary at {} (build it: cargo build --release -p warren)",
            opts.warren.display()
        );
    }
    // The cluster lines' 3 nodes, started (or found running) before the
    // first line, and stopped a minute after the run (the tests' cluster).
    let cluster = if chosen.iter().any(|l| l.cluster) {
        progress::say(format_args!(
            "starting a 3-node RabbitMQ cluster on loopback for lines {} (most of a minute)",
            chosen
                .iter()
                .filter(|l| l.cluster)
                .map(|l| l.id)
                .collect::<Vec<_>>()
                .join(", ")
        ));
        // The tests' helper panics with what went wrong (a node that does
        // not boot, a join refused): here that fails the cluster lines,
        // not the run.
        let started = tokio::task::block_in_place(|| {
            std::panic::catch_unwind(warren_tests::rabbit_cluster::RabbitCluster::get)
        });
        match started {
            Ok(cluster) => {
                progress::say(format_args!(
                    "cluster up: nodes on ports {}",
                    cluster
                        .nodes
                        .iter()
                        .map(|n| n.port.to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
                match amqp::Rabbit::connect(&cluster.urls()[0]).await {
                    Ok(rabbit) => Ok((cluster, rabbit)),
                    Err(e) => Err(format!("{e:#}")),
                }
            }
            Err(panic) => Err(panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "the cluster did not start".into())),
        }
    } else {
        Err("no line of this run needs it".into())
    };
    if let Err(why) = &cluster
        && chosen.iter().any(|l| l.cluster)
    {
        progress::say(format_args!("cannot start the 3-node cluster: {why}"));
    }
    let opts = lines::Opts {
        cluster: cluster.as_ref().ok().map(|(c, _)| {
            Box::new(lines::Opts {
                amqp_url: c.urls()[0].clone(),
                host_urls: c.urls(),
                broker_ports: c.nodes.iter().map(|n| n.port).collect(),
                ..opts.clone()
            })
        }),
        ..opts
    };
    let rabbit = amqp::Rabbit::connect(&opts.amqp_url).await?;
    let redis_version = redis_version(&opts.redis_url).await?;
    progress::say(format_args!(
        "run {}: {} lines, N = {}, latency for {} s at half each line's drain rate",
        opts.run_id,
        chosen.len(),
        opts.n,
        opts.latency_secs
    ));

    let baseline = match &args.baseline {
        Some(path) if !path.is_file() => bail!("no baseline warren binary at {}", path.display()),
        // Its own run id: its queues and dedup keys must not be the ones the
        // same line with `--warren` uses.
        Some(path) => {
            let base = |o: &lines::Opts| lines::Opts {
                warren: path.clone(),
                guests: args.baseline_guests.clone().unwrap_or(args.guests.clone()),
                run_id: format!("{}-base", opts.run_id),
                ..o.clone()
            };
            Some(lines::Opts {
                cluster: opts.cluster.as_deref().map(|c| Box::new(base(c))),
                perf: opts.perf.as_ref().map(|(f, line)| {
                    let mut name = f.clone().into_os_string();
                    name.push(".base");
                    (name.into(), line.clone())
                }),
                ..base(&opts)
            })
        }
        None => None,
    };
    let cluster_rabbit = cluster.as_ref().map(|(_, r)| r).map_err(String::as_str);
    let mut rounds: Vec<Vec<Row>> = Vec::new();
    for round in 1..=args.rounds {
        // Each round its own run id: its queues and dedup keys are new.
        if args.rounds > 1 {
            progress::say(format_args!("round {round} of {}", args.rounds));
        }
        let in_round = |o: &lines::Opts| {
            let mut o = o.clone();
            if args.rounds > 1 {
                o.run_id = format!("{}-r{round}", o.run_id);
            }
            o
        };
        let opts = in_round(&opts);
        let baseline = baseline.as_ref().map(in_round);
        let mut rows = Vec::new();
        for line in &chosen {
            let is_warren = matches!(
                line.kind,
                lines::Kind::Warren { .. } | lines::Kind::WarrenKv { .. } | lines::Kind::WarrenHttp
            );
            // The baseline first in odd rounds, second in even ones: on
            // this machine whichever of a pair runs second costs about 5%
            // less, so rounds that alternate cancel the order out.
            let base = baseline.as_ref().filter(|_| is_warren);
            let order = if round % 2 == 1 {
                [true, false]
            } else {
                [false, true]
            };
            for is_base in order {
                match (is_base, base) {
                    (true, Some(base)) => {
                        let id = format!("{}@base", line.id);
                        progress::say(format_args!("line {id}: {} (baseline binary)", line.what));
                        let result = measure_line(base, line, &rabbit, cluster_rabbit).await;
                        rows.push(Row {
                            id,
                            what: format!("{} (baseline)", line.what),
                            result,
                        });
                    }
                    (true, None) => {}
                    (false, _) => {
                        progress::say(format_args!("line {}: {}", line.id, line.what));
                        let result = measure_line(&opts, line, &rabbit, cluster_rabbit).await;
                        rows.push(Row {
                            id: line.id.to_string(),
                            what: line.what.to_string(),
                            result,
                        });
                    }
                }
            }
        }
        rounds.push(rows);
    }
    let rows = report::median_rounds(&rounds);
    rabbit.close().await;
    if let Ok((cluster, r)) = cluster {
        r.close().await;
        drop(cluster);
    }

    let table = report::table(&rows);
    let mut targets = report::targets(&rows);
    if baseline.is_some() {
        targets.push_str(&report::against_baseline(&rows));
    }
    targets.push_str(&report::queue_kinds(&rows));
    targets.push_str(&report::extras(&rows));
    if rounds.len() > 1 {
        targets.push_str(&report::rounds(&rounds));
    }
    let doc = format!(
        "# warren end-to-end benchmark: results\n\n\
         Written by `bench/run` (see BENCHMARKS.md for what each line is and how \
         it is measured).\n\n\
         - N = {} persistent 256-byte messages per line, in one durable queue (classic version 2 unless the line says otherwise){}\n\
         - latency: {} s of publishing at half each line's drain rate\n\
         - warren: consumers = {}, max_batch = {}, prefetch = {}, channels = {} per process, instances = {}\n\
         - output queue (lines 2e, 4 to 7): durable, of the line's queue kind{}\n\
         - machine: {} cores, Linux {}, RabbitMQ {}, Redis {}\n\n\
         {table}\n\
         Targets:\n\n{targets}",
        opts.n,
        if args.rounds > 1 {
            format!(
                "\n- rounds: {}, every line once per round; each row is the line's round with the median CPU per message (every round at the end)",
                args.rounds
            )
        } else {
            String::new()
        },
        opts.latency_secs,
        opts.consumers,
        opts.max_batch,
        opts.prefetch,
        opts.channels,
        opts.instances,
        opts.out_queue_mode
            .as_deref()
            .map_or(String::new(), |m| format!(", x-queue-mode {m}")),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim(),
        rabbitmq_version(),
        redis_version,
    );
    if let Some(dir) = args.out.parent() {
        std::fs::create_dir_all(dir).ok();
    }
    std::fs::write(&args.out, &doc)
        .with_context(|| format!("cannot write {}", args.out.display()))?;
    println!("{doc}");
    progress::say(format_args!("table written to {}", args.out.display()));
    Ok(())
}

/// The bench sends traffic to this machine only.
fn check_loopback(amqp_url: &str, redis_url: &str) -> anyhow::Result<()> {
    let loopback = |host: &str| {
        host == "localhost"
            || host
                .trim_matches(|c| c == '[' || c == ']')
                .parse::<IpAddr>()
                .is_ok_and(|ip| ip.is_loopback())
    };
    let amqp: lapin::uri::AMQPUri = amqp_url
        .parse()
        .map_err(|e| anyhow::anyhow!("invalid AMQP URL {amqp_url:?}: {e}"))?;
    if !loopback(&amqp.authority.host) {
        bail!("{amqp_url:?} is not on loopback: the bench only runs against this machine");
    }
    let info = redis::Client::open(redis_url)
        .with_context(|| format!("invalid Redis URL {redis_url:?}"))?;
    match &info.get_connection_info().addr {
        redis::ConnectionAddr::Tcp(host, _) if loopback(host) => Ok(()),
        redis::ConnectionAddr::Unix(_) => Ok(()),
        _ => bail!("{redis_url:?} is not on loopback: the bench only runs against this machine"),
    }
}

async fn redis_version(url: &str) -> anyhow::Result<String> {
    let mut con = redis::Client::open(url)?
        .get_multiplexed_async_connection()
        .await
        .with_context(|| format!("cannot connect to Redis at {url}"))?;
    let info: String = redis::cmd("INFO")
        .arg("server")
        .query_async(&mut con)
        .await?;
    Ok(info
        .lines()
        .find_map(|l| l.strip_prefix("redis_version:"))
        .unwrap_or("unknown")
        .trim()
        .to_string())
}

fn rabbitmq_version() -> String {
    std::process::Command::new("rabbitmqctl")
        .arg("version")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".into())
}

/// Deletes every Redis key matching `pattern`; returns how many.
async fn delete_keys(url: &str, pattern: &str) -> anyhow::Result<u64> {
    let mut con = redis::Client::open(url)?
        .get_multiplexed_async_connection()
        .await?;
    let (mut cursor, mut deleted) = (0u64, 0u64);
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(1000)
            .query_async(&mut con)
            .await?;
        if !keys.is_empty() {
            deleted += redis::cmd("UNLINK")
                .arg(&keys)
                .query_async::<u64>(&mut con)
                .await?;
        }
        if next == 0 {
            return Ok(deleted);
        }
        cursor = next;
    }
}
