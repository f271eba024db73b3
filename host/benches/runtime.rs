//! One message through the sandbox, for each built guest, in both instance
//! modes: per-message (instantiate, call `handle`, drop) and reuse (call
//! `handle` on a warm instance), printing median and p99 per message; and
//! a fresh instance alone (instantiate and drop, no call), which tells the
//! instance's cost from the guest's first call.
//!
//! Run with `cargo bench -p warren --bench runtime` after
//! `bash guests/rust/build.sh`. Pass guest names to pick them (default: echo),
//! or paths to .wasm files;
//! `WARREN_BENCH_ITERS` sets the number of messages (default 20000);
//! `WARREN_BENCH_CACHE=DIR` caches the compiled modules there, so a rerun
//! skips the minute Cranelift takes over each interpreted guest;
//! `WARREN_BENCH_MODES=per-message,instantiate,reuse,after-large` runs only
//! the modes it names (a profile of one mode, say). `after-large` is
//! per-message again after one message with a 300,000-byte body has run in
//! the same slot (its outcome, a memory cap say, does not matter): what a
//! slot that once served a large message costs every message after it.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use warren::runtime::{
    HandlerEnv, Limits, Message, Outcome, Runtime, RuntimeConfig, WarmInstances,
};

fn message() -> Message {
    // A 256-byte JSON object: echo copies anything, enrich wants an object.
    let body = format!("{{\"id\":\"bench-1\",\"pad\":\"{}\"}}", "x".repeat(231));
    let mut msg = Message::synthetic(body.into_bytes(), "bench-1", "bench");
    msg.content_type = Some("application/json".into());
    msg.dedup_key = Some("bench-1".into());
    msg.fencing_token = 1;
    msg
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn us(d: Duration) -> String {
    format!("{:.1} us", d.as_secs_f64() * 1e6)
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let guests = if args.is_empty() {
        vec!["echo".to_string()]
    } else {
        args
    };
    let iters: usize = std::env::var("WARREN_BENCH_ITERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    const MODES: [&str; 4] = ["per-message", "instantiate", "reuse", "after-large"];
    let modes: Vec<&str> = match std::env::var("WARREN_BENCH_MODES") {
        Ok(names) => {
            let names: Vec<&str> = names.split(',').map(str::trim).collect();
            if let Some(bad) = names.iter().find(|n| !MODES.contains(n)) {
                anyhow::bail!(
                    "WARREN_BENCH_MODES: no mode {bad:?} (the modes: {})",
                    MODES.join(", ")
                );
            }
            // In the bench's own order, each once.
            MODES.into_iter().filter(|m| names.contains(m)).collect()
        }
        Err(_) => MODES.to_vec(),
    };
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../guests/build");

    // Guests run as futures: a one-thread runtime drives them.
    let tokio = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let rt = Runtime::new(RuntimeConfig {
        max_instances: 4,
        cache_dir: std::env::var_os("WARREN_BENCH_CACHE").map(PathBuf::from),
        ..Default::default()
    })?;
    let env = Arc::new(HandlerEnv {
        name: "bench".into(),
        config: BTreeMap::from([("out_routing_key".to_string(), "bench.out".to_string())]),
        publish_allow: vec![String::new()],
        limits: Limits::default(),
        kv: None,
        http: None,
        metrics: None,
    });
    let msg = message();
    let large = {
        let body = format!(
            "{{\"id\":\"bench-large\",\"pad\":\"{}\"}}",
            "x".repeat(300_000)
        );
        let mut large = Message::synthetic(body.into_bytes(), "bench-large", "bench");
        large.content_type = Some("application/json".into());
        large
    };

    println!("one message through the runtime, {iters} messages per guest and mode:");
    println!(
        "  per-message: fresh instance + handle() + drop; instantiate: fresh instance + drop; reuse: handle() on a warm instance"
    );
    println!(
        "{:<16} {:>10} {:>11} {:>12} {:>12} {:>12} {:>12}",
        "guest", "size", "compile", "mode", "median", "p99", "mean"
    );
    for name in &guests {
        // A name is a guest in guests/build/; a path to a .wasm file (a
        // `warren new` project's build, say) is taken as it is.
        let path = if name.ends_with(".wasm") {
            PathBuf::from(name)
        } else {
            root.join(format!("{name}.wasm"))
        };
        let bytes = std::fs::read(&path).map_err(|e| {
            anyhow::anyhow!(
                "cannot read {}: {e} (build the guests: bash guests/rust/build.sh)",
                path.display()
            )
        })?;
        let module = rt.compile(&bytes)?;
        let permit = rt.try_acquire().expect("a free permit");
        let warm = WarmInstances::default();
        for &mode in &modes {
            // Every message is one future awaited on this thread, as a
            // batch's task awaits its guests on a worker: the time includes
            // the fiber switch in and out and the deadline's timer, and no
            // hand-off between threads. "instantiate" is a fresh instance
            // and its drop without the call, so per-message minus it is
            // what the guest's first `handle` costs.
            let once = async || -> anyhow::Result<()> {
                let done = match mode {
                    "reuse" => {
                        rt.run_warm(&module, &env, &msg, &permit, &warm, u32::MAX)
                            .await?
                    }
                    "per-message" | "after-large" => rt.run(&module, &env, &msg, &permit).await?,
                    _ => return Ok(rt.smoke(&module, &env, None, &permit).await?),
                };
                anyhow::ensure!(
                    done.outcome == Outcome::Ack,
                    "{name} did not ack: {:?}",
                    done.outcome
                );
                Ok(())
            };
            let mut times = tokio.block_on(async {
                // Warm up: page in the code and the pool's slots.
                for _ in 0..iters / 10 {
                    once().await?;
                }
                if mode == "after-large" {
                    let _ = rt.run(&module, &env, &large, &permit).await;
                }
                let mut times = Vec::with_capacity(iters);
                for i in 0..iters {
                    let t = Instant::now();
                    once().await?;
                    times.push(t.elapsed());
                    if i % (iters / 4).max(1) == 0 {
                        eprint!(".");
                    }
                }
                anyhow::Ok(times)
            })?;
            eprintln!();
            let mean = times.iter().sum::<Duration>() / iters as u32;
            times.sort();
            println!(
                "{:<16} {:>10} {:>11} {:>12} {:>12} {:>12} {:>12}",
                name,
                format!("{} KiB", module.size() / 1024),
                format!("{:.1} ms", module.compile_time().as_secs_f64() * 1e3),
                mode,
                us(percentile(&times, 0.5)),
                us(percentile(&times, 0.99)),
                us(mean),
            );
        }
        warm.clear();
    }
    Ok(())
}
