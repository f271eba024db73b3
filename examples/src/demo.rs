//! The demo's client: publishes orders to a running warren, some of them
//! twice with the same message id, then reads what came out and what the
//! dedup skipped.
//!
//! `cargo run -p warren-examples --bin demo -- [COUNT] [DUPLICATES]`, with
//! warren running `examples/demo.toml` (`bash examples/demo.sh` does it all).

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use lapin::options::{
    BasicAckOptions, BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions,
    QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};

const AMQP: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
const INPUT: &str = "demo.orders";
const OUTPUT: &str = "demo.orders.out";
const ADMIN: &str = "127.0.0.1:9099";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let count: usize = args
        .next()
        .map(|a| a.parse())
        .transpose()
        .context("COUNT must be a number")?
        .unwrap_or(300);
    let dups: usize = args
        .next()
        .map(|a| a.parse())
        .transpose()
        .context("DUPLICATES must be a number")?
        .unwrap_or(50);
    let run = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();

    let conn = Connection::connect(
        AMQP,
        ConnectionProperties::default().with_connection_name("warren-demo".into()),
    )
    .await
    .context("cannot connect to RabbitMQ at 127.0.0.1:5672")?;
    let ch = conn.create_channel().await?;
    ch.confirm_select(ConfirmSelectOptions::default()).await?;
    let durable = QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    };
    ch.queue_declare(OUTPUT.into(), durable, FieldTable::default())
        .await?;

    // Orders 0..count once each, then the first `dups` of them again with the
    // same message id: a publisher retrying after a lost confirm.
    let ids: Vec<usize> = (0..count).chain(0..dups.min(count)).collect();
    println!(
        "publishing {} messages to {INPUT}: {count} orders, {dups} of them twice",
        ids.len()
    );
    let mut confirms = Vec::new();
    for &i in &ids {
        let body = format!("{{\"order\":{i},\"run\":{run}}}");
        let props = BasicProperties::default()
            .with_delivery_mode(2)
            .with_content_type("application/json".into())
            .with_message_id(format!("order-{run}-{i}").into());
        confirms.push(
            ch.basic_publish(
                "".into(),
                INPUT.into(),
                BasicPublishOptions::default(),
                body.as_bytes(),
                props,
            )
            .await?,
        );
    }
    for c in confirms {
        if !c.await?.is_ack() {
            bail!("the broker did not confirm a publish");
        }
    }

    println!("waiting for warren's outputs in {OUTPUT} ...");
    let started = Instant::now();
    let mut seen = BTreeSet::new();
    let mut outputs = 0usize;
    let mut sample = None;
    while seen.len() < count {
        if started.elapsed() > Duration::from_secs(60) {
            bail!(
                "only {} of {count} orders came out within 60 s; see warren's log",
                seen.len()
            );
        }
        match ch
            .basic_get(OUTPUT.into(), BasicGetOptions::default())
            .await?
        {
            Some(m) => {
                m.ack(BasicAckOptions::default()).await?;
                let body = String::from_utf8_lossy(&m.delivery.data).into_owned();
                if body.contains(&format!("\"run\":{run}")) {
                    outputs += 1;
                    seen.insert(body.clone());
                    sample.get_or_insert(body);
                }
            }
            None => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
    // Duplicates are acked without running; give the last of them a moment
    // to be counted before reading the metrics.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let metrics = http_get(ADMIN, "/metrics").unwrap_or_default();
    let metric = |outcome: &str| -> u64 {
        metrics
            .lines()
            .filter(|l| {
                l.starts_with("warren_messages_total")
                    && l.contains(&format!("outcome=\"{outcome}\""))
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>() as u64
    };

    println!();
    println!(
        "  published          {:>6}  ({count} orders + {dups} duplicates)",
        ids.len()
    );
    println!(
        "  outputs            {outputs:>6}  (distinct orders: {})",
        seen.len()
    );
    println!("  handled (ack)      {:>6}", metric("ack"));
    println!("  skipped by dedup   {:>6}", metric("dedup_hit"));
    println!("  deferred (busy)    {:>6}", metric("deferred"));
    println!(
        "  took               {:>6.2} s",
        started.elapsed().as_secs_f64()
    );
    if let Some(s) = sample {
        println!("  sample output      {s}");
    }
    if outputs != count {
        bail!("{outputs} outputs for {count} orders: dedup did not hold");
    }
    println!("\nevery order came out exactly once.");
    Ok(())
}

/// A plain HTTP GET to warren's admin endpoint.
fn http_get(addr: &str, path: &str) -> std::io::Result<String> {
    let mut s = std::net::TcpStream::connect(addr)?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = String::new();
    s.read_to_string(&mut raw)?;
    Ok(raw
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default())
}
