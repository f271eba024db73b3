//! Deploy latency: from `PUT /handlers/NAME/module` returning to the first
//! output produced by the new version, under a steady load, for the Rust
//! echo guest and the largest guest in `guests/build/`.
//!
//! Needs RabbitMQ on 127.0.0.1:5672 and the built guests
//! (`bash guests/rust/build.sh`, `bash guests/build-all.sh` for the
//! interpreted ones). Run with `cargo bench -p warren --bench deploy`.
//!
//! Two versions of a guest are the same component with a different custom
//! section appended, so they differ in digest only. Outputs carry the digest
//! of the version that produced them (`x-warren-module`), which is how the
//! first output of the new version is found.

use std::path::{Path, PathBuf};
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

/// `bytes` with a custom section named `warren-bench-version` holding `tag`:
/// a different digest, the same behaviour.
fn variant(bytes: &[u8], tag: &str) -> Vec<u8> {
    fn leb(mut n: usize, out: &mut Vec<u8>) {
        loop {
            let byte = (n & 0x7f) as u8;
            n >>= 7;
            if n == 0 {
                out.push(byte);
                return;
            }
            out.push(byte | 0x80);
        }
    }
    let name = b"warren-bench-version";
    let mut payload = Vec::new();
    leb(name.len(), &mut payload);
    payload.extend_from_slice(name);
    payload.extend_from_slice(tag.as_bytes());
    let mut out = bytes.to_vec();
    out.push(0);
    leb(payload.len(), &mut out);
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

async fn measure(name: &str, module: &Path, body: &'static [u8]) -> anyhow::Result<String> {
    let dir = std::env::temp_dir().join(format!("warren-bench-deploy-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let original = std::fs::read(module)?;
    let versions = [variant(&original, "a"), variant(&original, "b")];
    let path = dir.join(format!("{name}.wasm"));
    std::fs::write(&path, &versions[0])?;
    let (queue, out, port) = (
        format!("bench-deploy-{name}-{}", std::process::id()),
        format!("bench-deploy-{name}-out"),
        free_port(),
    );
    let config = format!(
        "[amqp]\nurl = \"{AMQP}\"\n[admin]\nlisten = \"127.0.0.1:{port}\"\n[runtime]\ncache_dir = \"\"\n\n[[handler]]\nname = \"{name}\"\nmodule = \"{}\"\nqueue = \"{queue}\"\ntimeout_ms = 10000\nmemory_mb = 256\n[handler.dedup]\nenabled = false\n[handler.config]\nout_routing_key = \"{out}\"\n",
        path.display()
    );
    let cfg_path = dir.join(format!("{name}.toml"));
    std::fs::write(&cfg_path, config)?;

    let conn = Connection::connect(AMQP, ConnectionProperties::default()).await?;
    let ch = conn.create_channel().await?;
    let durable = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    ch.queue_declare(queue.as_str().into(), durable, FieldTable::default())
        .await?;
    ch.queue_declare(out.as_str().into(), durable, FieldTable::default())
        .await?;

    let host = Host(
        Command::new(env!("CARGO_BIN_EXE_warren"))
            .args(["run", "--config"])
            .arg(&cfg_path)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()?,
    );
    let admin = format!("http://127.0.0.1:{port}");
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let deadline = Instant::now() + Duration::from_secs(120);
    while agent
        .get(format!("{admin}/readyz"))
        .call()
        .map(|r| r.status().as_u16())
        .unwrap_or(0)
        != 200
    {
        anyhow::ensure!(Instant::now() < deadline, "warren did not become ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Outputs: (arrival, digest of the version that produced it).
    let seen: Arc<Mutex<Vec<(Instant, String)>>> = Arc::default();
    let mut consumer = ch
        .basic_consume(
            out.as_str().into(),
            "bench".into(),
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
            sink.lock()
                .unwrap()
                .push((Instant::now(), module.unwrap_or_default()));
        }
    });
    // A steady load: one message a millisecond.
    let pch = conn.create_channel().await?;
    let q2 = queue.clone();
    let load = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(1));
        loop {
            tick.tick().await;
            if pch
                .basic_publish(
                    "".into(),
                    q2.as_str().into(),
                    BasicPublishOptions::default(),
                    body,
                    BasicProperties::default(),
                )
                .await
                .is_err()
            {
                return;
            }
        }
    });
    tokio::time::sleep(Duration::from_secs(1)).await;

    let mut latencies = Vec::new();
    let mut compile_first = 0.0;
    for i in 0..DEPLOYS {
        let bytes = versions[(i + 1) % 2].clone();
        let digest = Digest::of(&bytes).to_string();
        let url = format!("{admin}/handlers/{name}/module");
        let resp = tokio::task::spawn_blocking(move || -> anyhow::Result<String> {
            let mut r = agent_put(&url, &bytes)?;
            Ok(r.body_mut().read_to_string()?)
        })
        .await??;
        let returned = Instant::now();
        if i == 0 {
            let v: serde_json::Value = serde_json::from_str(&resp)?;
            compile_first = v["compile_ms"].as_f64().unwrap_or(0.0);
        }
        let wait_until = Instant::now() + Duration::from_secs(30);
        let first = loop {
            if let Some((at, _)) = seen.lock().unwrap().iter().find(|(_, m)| *m == digest) {
                break *at;
            }
            anyhow::ensure!(
                Instant::now() < wait_until,
                "no output from the new version of {name}"
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        };
        let ms = if first >= returned {
            (first - returned).as_secs_f64() * 1e3
        } else {
            -((returned - first).as_secs_f64() * 1e3)
        };
        latencies.push(ms);
        seen.lock().unwrap().clear();
        tokio::time::sleep(Duration::from_millis(300)).await;
        eprint!(".");
    }
    load.abort();
    // Stop warren before its output queue goes, or its last outputs bounce.
    drop(host);
    ch.queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
        .await?;
    ch.queue_delete(out.as_str().into(), QueueDeleteOptions::default())
        .await?;
    ch.queue_delete(
        format!("{queue}.dead").as_str().into(),
        QueueDeleteOptions::default(),
    )
    .await?;
    let _ = std::fs::remove_dir_all(&dir);
    latencies.sort_by(f64::total_cmp);
    Ok(format!(
        "| {name} | {} KiB | {compile_first:.1} | {:.2} | {:.2} | {:.2} |",
        original.len() / 1024,
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.9),
        latencies.last().copied().unwrap_or(0.0)
    ))
}

fn agent_put(url: &str, bytes: &[u8]) -> anyhow::Result<http::Response<ureq::Body>> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let r = agent.put(url).send(bytes)?;
    anyhow::ensure!(
        r.status().is_success(),
        "deploy to {url} failed: {}",
        r.status()
    );
    Ok(r)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let build = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../guests/build");
    let mut guests: Vec<(String, PathBuf)> = Vec::new();
    guests.push(("echo".into(), build.join("echo.wasm")));
    // The largest guest in guests/build (the interpreted ones carry their
    // interpreter), if it is not echo.
    if let Some(largest) = std::fs::read_dir(&build)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "wasm"))
        .filter(|p| {
            p.file_stem()
                .is_some_and(|s| s.to_string_lossy().starts_with("enrich"))
        })
        .max_by_key(|p| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0))
    {
        guests.push((
            largest.file_stem().unwrap().to_string_lossy().into_owned(),
            largest,
        ));
    }
    println!(
        "deploy latency: PUT returned -> first output of the new version, {DEPLOYS} deploys under 1,000 msg/s"
    );
    println!("(negative: the new version's first output arrived before the PUT's response did)\n");
    println!("| guest | size | first compile ms | median ms | p90 ms | max ms |");
    println!("|---|---|---|---|---|---|");
    for (name, path) in guests {
        // The enrich guests want a JSON object; echo takes anything.
        let row = measure(&name.replace('_', "-"), &path, br#"{"order":1}"#).await?;
        eprintln!();
        println!("{row}");
    }
    Ok(())
}
