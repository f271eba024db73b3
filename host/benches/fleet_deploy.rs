//! Fleet deploy latency: from `warren deploy --fleet` starting to the
//! first output of the new version on the last of three hosts, under a
//! steady load, next to a single host's `warren deploy` (admin endpoint)
//! measured the same way (command start to that host's first output).
//!
//! Needs RabbitMQ on 127.0.0.1:5672 and the built echo guest. Run with
//! `cargo bench -p warren --bench fleet_deploy`. The fleet command spends
//! `--discover-ms` (here 500) finding the hosts before it writes the
//! module; the table shows it.
//!
//! Each host publishes to an output queue of its own, so the first output
//! of the new version is known per host (outputs carry the digest of the
//! version that produced them in `x-warren-module`).

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Connection, ConnectionProperties};
use warren::runtime::Digest;

const AMQP: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
const DEPLOYS: usize = 10;
const HOSTS: usize = 3;
const DISCOVER_MS: &str = "500";

/// `bytes` with a custom section holding `tag`: a new digest, the same code.
fn variant(bytes: &[u8], tag: &str) -> Vec<u8> {
    let name = b"warren-bench-version";
    let mut payload = vec![name.len() as u8];
    payload.extend_from_slice(name);
    payload.extend_from_slice(tag.as_bytes());
    let mut out = bytes.to_vec();
    out.push(0);
    out.push(payload.len() as u8);
    out.extend_from_slice(&payload);
    out
}

struct Host(Child);

impl Drop for Host {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

type Seen = Arc<Mutex<Vec<Vec<(Instant, String)>>>>;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let echo = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../guests/build/echo.wasm");
    let original = std::fs::read(&echo)?;
    let id = std::process::id();
    let dir = std::env::temp_dir().join(format!("warren-bench-fleet-{id}"));
    std::fs::create_dir_all(&dir)?;
    let exchange = format!("bench-fleet-{id}");
    let queue = format!("bench-fleet-{id}");
    let outs: Vec<String> = (0..HOSTS).map(|i| format!("{queue}.out{i}")).collect();

    let conn = Connection::connect(AMQP, ConnectionProperties::default()).await?;
    let ch = conn.create_channel().await?;
    let durable = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    for q in std::iter::once(&queue).chain(&outs) {
        ch.queue_declare(q.as_str().into(), durable, FieldTable::default())
            .await?;
    }
    let start_module = dir.join("start.wasm");
    std::fs::write(&start_module, variant(&original, "start"))?;
    let mut hosts = Vec::new();
    let mut ports = Vec::new();
    for (i, out) in outs.iter().enumerate() {
        let port = free_port();
        let config = format!(
            "[amqp]\nurl = \"{AMQP}\"\n[admin]\nlisten = \"127.0.0.1:{port}\"\n[fleet]\nexchange = \"{exchange}\"\n\n[[handler]]\nname = \"echo\"\nmodule = \"{}\"\nqueue = \"{queue}\"\n[handler.dedup]\nenabled = false\n[handler.config]\nout_routing_key = \"{out}\"\n",
            start_module.display()
        );
        let path = dir.join(format!("host{i}.toml"));
        std::fs::write(&path, config)?;
        hosts.push(Host(
            Command::new(env!("CARGO_BIN_EXE_warren"))
                .args(["run", "--config"])
                .arg(&path)
                .env("RUST_LOG", "warn")
                .stdout(Stdio::null())
                .spawn()?,
        ));
        ports.push(port);
    }
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    for port in &ports {
        let deadline = Instant::now() + Duration::from_secs(60);
        while agent
            .get(format!("http://127.0.0.1:{port}/readyz"))
            .call()
            .map(|r| r.status().as_u16())
            .unwrap_or(0)
            != 200
        {
            anyhow::ensure!(Instant::now() < deadline, "a host did not become ready");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    let seen: Seen = Arc::new(Mutex::new(vec![Vec::new(); HOSTS]));
    for (i, out) in outs.iter().enumerate() {
        let mut consumer = ch
            .basic_consume(
                out.as_str().into(),
                format!("bench-{i}").as_str().into(),
                BasicConsumeOptions {
                    no_ack: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await?;
        let sink = seen.clone();
        tokio::spawn(async move {
            while let Some(Ok(d)) = consumer.next().await {
                let module = d.properties.headers().as_ref().and_then(|h| {
                    match h.inner().get("x-warren-module") {
                        Some(AMQPValue::LongString(s)) => {
                            Some(String::from_utf8_lossy(s.as_bytes()).into_owned())
                        }
                        _ => None,
                    }
                });
                sink.lock().unwrap()[i].push((Instant::now(), module.unwrap_or_default()));
            }
        });
    }
    // One message a millisecond, shared by the three hosts.
    let pch = conn.create_channel().await?;
    let q2 = queue.clone();
    let load = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(1));
        loop {
            tick.tick().await;
            let sent = pch
                .basic_publish(
                    "".into(),
                    q2.as_str().into(),
                    BasicPublishOptions::default(),
                    b"x",
                    BasicProperties::default(),
                )
                .await;
            if sent.is_err() {
                return;
            }
        }
    });
    tokio::time::sleep(Duration::from_secs(2)).await;

    let mut fleet = Vec::new();
    let mut single = Vec::new();
    for round in 0..DEPLOYS * 2 {
        let to_fleet = round % 2 == 0;
        let bytes = variant(&original, &format!("v{round}"));
        let digest = Digest::of(&bytes).to_string();
        let file = dir.join(format!("v{round}.wasm"));
        std::fs::write(&file, &bytes)?;
        for s in seen.lock().unwrap().iter_mut() {
            s.clear();
        }
        let started = Instant::now();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_warren"));
        cmd.args(["deploy", "--handler", "echo"]).arg(&file);
        if to_fleet {
            cmd.args(["--fleet", "--amqp", AMQP, "--exchange", &exchange])
                .args(["--discover-ms", DISCOVER_MS]);
        } else {
            cmd.args(["--admin", &format!("http://127.0.0.1:{}", ports[0])]);
        }
        let o = tokio::task::spawn_blocking(move || cmd.output()).await??;
        anyhow::ensure!(
            o.status.success(),
            "deploy failed: {}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        // The fleet deploy waits for the last host's first output; the
        // single one for host 0's.
        let watch: Vec<usize> = if to_fleet {
            (0..HOSTS).collect()
        } else {
            vec![0]
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        let last = loop {
            let firsts: Vec<Option<Instant>> = {
                let s = seen.lock().unwrap();
                watch
                    .iter()
                    .map(|&i| s[i].iter().find(|(_, m)| *m == digest).map(|(at, _)| *at))
                    .collect()
            };
            if firsts.iter().all(Option::is_some) {
                break firsts.into_iter().flatten().max().unwrap();
            }
            anyhow::ensure!(Instant::now() < deadline, "no output of the new version");
            tokio::time::sleep(Duration::from_millis(1)).await;
        };
        let ms = (last - started).as_secs_f64() * 1e3;
        if to_fleet {
            fleet.push(ms);
        } else {
            single.push(ms);
        }
        eprint!(".");
    }
    eprintln!();
    load.abort();
    drop(hosts);
    for q in std::iter::once(&queue)
        .chain(&outs)
        .cloned()
        .chain([format!("{queue}.dead"), format!("{exchange}.echo")])
    {
        let _ = ch
            .queue_delete(q.as_str().into(), QueueDeleteOptions::default())
            .await;
    }
    for ex in [exchange.clone(), format!("{exchange}.replies")] {
        let _ = ch
            .exchange_delete(ex.as_str().into(), Default::default())
            .await;
    }
    let _ = std::fs::remove_dir_all(&dir);
    fleet.sort_by(f64::total_cmp);
    single.sort_by(f64::total_cmp);
    println!(
        "deploy command started -> first output of the new version (last host), {DEPLOYS} deploys each, echo, 1,000 msg/s over {HOSTS} hosts\n"
    );
    println!("| deploy | hosts | median ms | p90 ms | max ms |");
    println!("|---|---|---|---|---|");
    for (what, n, v) in [
        (
            format!("`warren deploy --fleet` (discover {DISCOVER_MS} ms)"),
            HOSTS,
            &fleet,
        ),
        ("`warren deploy` (admin endpoint)".to_string(), 1, &single),
    ] {
        println!(
            "| {what} | {n} | {:.1} | {:.1} | {:.1} |",
            percentile(v, 0.5),
            percentile(v, 0.9),
            v.last().copied().unwrap_or(0.0)
        );
    }
    Ok(())
}
