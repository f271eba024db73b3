//! The bare lapin consumers of lines 1 and 2, run as a child process of the
//! bench (`bench bare-consumer`) so that their CPU time is theirs alone.
//!
//! One connection, one channel, one consumer, nothing else: with `--no-ack`
//! the broker forgets each message as it sends it (the ceiling); without, the
//! naive consumer awaits one `basic.ack` per message before it takes the
//! next. It speaks the protocol described in `child.rs`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use futures_util::StreamExt as _;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties};
use tokio::io::{AsyncBufReadExt as _, BufReader, Lines, Stdin};

use crate::amqp::{now_us, stamp};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[arg(long)]
    pub url: String,
    #[arg(long)]
    pub queue: String,
    /// Say `drained` after this many messages.
    #[arg(long)]
    pub drain: u64,
    /// basic.qos on the channel (ignored by the broker with --no-ack).
    #[arg(long, default_value_t = 256)]
    pub prefetch: u16,
    #[arg(long)]
    pub no_ack: bool,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let props = ConnectionProperties::default().with_connection_name("warren-bench-bare".into());
    let conn = Connection::connect(&args.url, props)
        .await
        .context("cannot connect")?;
    let ch = conn.create_channel().await?;
    if !args.no_ack {
        ch.basic_qos(args.prefetch, BasicQosOptions::default())
            .await?;
    }
    let mut stdin = BufReader::new(tokio::io::stdin()).lines();
    println!("ready");
    while stdin.next_line().await?.context("stdin closed")? != "go" {}

    let opts = BasicConsumeOptions {
        no_ack: args.no_ack,
        ..BasicConsumeOptions::default()
    };
    let mut consumer = ch
        .basic_consume(
            args.queue.as_str().into(),
            "bare".into(),
            opts,
            FieldTable::default(),
        )
        .await?;

    let mut samples = Vec::new();
    let expected = expected_from(stdin);

    let mut handled = 0u64;
    let mut check = tokio::time::interval(Duration::from_millis(10));
    loop {
        tokio::select! {
            d = consumer.next() => {
                let d = d.context("consumer ended")??;
                if !args.no_ack {
                    d.acker.ack(BasicAckOptions::default()).await?;
                }
                handled += 1;
                if handled == args.drain {
                    println!("drained");
                }
                let t = stamp(&d.data);
                if t > 0 {
                    samples.push(now_us().saturating_sub(t));
                }
            }
            _ = check.tick() => {}
        }
        if samples.len() as u64 >= expected.load(Ordering::SeqCst) {
            print_latencies(&samples);
            return Ok(());
        }
    }
}

/// Reads the commands that come after `go` while the consumer runs: the
/// number of timed messages to wait for (`expect N`), `u64::MAX` until told.
fn expected_from(mut stdin: Lines<BufReader<Stdin>>) -> Arc<AtomicU64> {
    let expected = Arc::new(AtomicU64::new(u64::MAX));
    let set = expected.clone();
    tokio::spawn(async move {
        while let Ok(Some(line)) = stdin.next_line().await {
            if let Some(n) = line.strip_prefix("expect ") {
                set.store(n.trim().parse().unwrap_or(0), Ordering::SeqCst);
            }
        }
    });
    expected
}

/// Prints `latencies v1,v2,...` (microseconds).
fn print_latencies(samples: &[u64]) {
    let list: Vec<String> = samples.iter().map(u64::to_string).collect();
    println!("latencies {}", list.join(","));
}
