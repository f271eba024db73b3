//! The bench's own side of RabbitMQ: declare and delete its queues, fill a
//! queue as fast as the broker confirms, publish at a fixed rate with a
//! timestamp in each body, and read those timestamps back from an output
//! queue.
//!
//! Every message body is a 256-byte JSON object, `{"t":T,"seq":S,"pad":"x.."}`,
//! so the `enrich` guests (which want a JSON object) take it as it is. `T` is
//! the publish time in microseconds since the epoch (it stays exact in a
//! JavaScript number), or 0 for the messages that only fill the queue.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, bail};
use futures_util::StreamExt as _;
use futures_util::stream::FuturesUnordered;
use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions,
    QueueDeclareOptions, QueueDeleteOptions, QueuePurgeOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{
    BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, PublisherConfirm,
};

use crate::progress;

/// Size of every message body.
pub const BODY_BYTES: usize = 256;

/// Publishes in flight (unconfirmed) while filling a queue.
const CONFIRM_WINDOW: usize = 4096;

/// The body of message `seq`, published at `t_us` (0: not timed).
pub fn body(seq: u64, t_us: u64) -> Vec<u8> {
    let head = format!(r#"{{"t":{t_us},"seq":{seq},"pad":""#);
    let mut b = Vec::with_capacity(BODY_BYTES);
    b.extend_from_slice(head.as_bytes());
    b.resize(BODY_BYTES - 2, b'x');
    b.extend_from_slice(b"\"}");
    b
}

/// The publish time stamped in a body (or an `enrich` output, which keeps
/// the field), in microseconds since the epoch; 0 if untimed.
pub fn stamp(body: &[u8]) -> u64 {
    let Some(at) = body.windows(4).position(|w| w == b"\"t\":") else {
        return 0;
    };
    body[at + 4..]
        .iter()
        .take_while(|c| c.is_ascii_digit())
        .fold(0u64, |n, c| n * 10 + u64::from(c - b'0'))
}

/// Now, in microseconds since the epoch.
pub fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_micros() as u64
}

/// The kind of the queues a line runs on: its input queue and its output
/// queue (and warren's own queues, which warren declares alike).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Queues {
    /// Classic, version 1 (declared without `x-queue-version`).
    ClassicV1,
    /// Classic, version 2: what warren declares by default.
    ClassicV2,
    /// Quorum (warren's `queue_type = "quorum"`).
    Quorum,
}

/// The memory the broker reports for `queue` (its process and the
/// messages it holds in memory), in MiB, from `rabbitmqctl list_queues`.
pub fn queue_memory_mib(queue: &str) -> Option<f64> {
    let out = std::process::Command::new("rabbitmqctl")
        .args(["-q", "list_queues", "name", "memory"])
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| {
            let mut f = l.split_whitespace();
            (f.next()? == queue).then(|| f.next()?.parse::<f64>().ok())?
        })
        .map(|bytes| bytes / (1024.0 * 1024.0))
}

/// One connection with a confirm-mode channel, for declaring, filling and
/// publishing.
#[derive(Debug)]
pub struct Rabbit {
    conn: Connection,
    ch: Channel,
}

impl Rabbit {
    pub async fn connect(url: &str) -> anyhow::Result<Rabbit> {
        let props = ConnectionProperties::default().with_connection_name("warren-bench".into());
        let conn = Connection::connect(url, props)
            .await
            .with_context(|| format!("cannot connect to RabbitMQ at {url}"))?;
        let ch = conn.create_channel().await?;
        ch.confirm_select(ConfirmSelectOptions::default()).await?;
        Ok(Rabbit { conn, ch })
    }

    /// Declares a durable queue of the `kind` a line runs on.
    pub async fn declare(&self, queue: &str, kind: Queues) -> anyhow::Result<()> {
        self.declare_with(queue, kind, None).await
    }

    /// Declares a line's input queue: of `kind`, and for a quorum queue
    /// with the arguments warren gives its work queue at the default
    /// delivery limit (dead-lettering to `<queue>.dead`), so that warren
    /// finds the queue as it would declare it; a bare consumer does not
    /// mind them.
    pub async fn declare_input(&self, queue: &str, kind: Queues) -> anyhow::Result<()> {
        if kind != Queues::Quorum {
            return self.declare(queue, kind).await;
        }
        let topology = warren::amqp::Topology {
            queue: queue.into(),
            kind: warren::amqp::QueueKind::Quorum {
                delivery_limit: warren::config::DEFAULT_DELIVERY_LIMIT,
            },
            single_active_consumer: false,
            dead_letter_queue: format!("{queue}.dead"),
            bind: None,
        };
        let opts = QueueDeclareOptions {
            durable: true,
            ..QueueDeclareOptions::default()
        };
        self.ch
            .queue_declare(
                queue.into(),
                opts,
                warren::amqp::queues::work_queue(&topology),
            )
            .await
            .with_context(|| format!("cannot declare queue {queue}"))?;
        Ok(())
    }

    /// Declares a durable queue of `kind`, for a classic one in RabbitMQ's
    /// `x-queue-mode` `mode` if given (`lazy`: messages go to disk at once
    /// instead of staying in the queue process's memory).
    pub async fn declare_with(
        &self,
        queue: &str,
        kind: Queues,
        mode: Option<&str>,
    ) -> anyhow::Result<()> {
        let opts = QueueDeclareOptions {
            durable: true,
            ..QueueDeclareOptions::default()
        };
        let mut args = FieldTable::default();
        match kind {
            // Declared without a version, as warren did before version 2:
            // warren keeps such a queue as it is.
            Queues::ClassicV1 => {}
            Queues::ClassicV2 => {
                args.insert("x-queue-version".into(), AMQPValue::LongInt(2));
            }
            Queues::Quorum => {
                args.insert(
                    "x-queue-type".into(),
                    AMQPValue::LongString("quorum".into()),
                );
            }
        }
        if let (Some(mode), false) = (mode, kind == Queues::Quorum) {
            args.insert("x-queue-mode".into(), AMQPValue::LongString(mode.into()));
        }
        self.ch
            .queue_declare(queue.into(), opts, args)
            .await
            .with_context(|| format!("cannot declare queue {queue}"))?;
        Ok(())
    }

    /// Messages ready in `queue` (not counting delivered, unacked ones), by a
    /// passive declare on a channel of its own: a missing queue closes only
    /// that channel.
    pub async fn ready(&self, queue: &str) -> anyhow::Result<u32> {
        let ch = self.conn.create_channel().await?;
        let opts = QueueDeclareOptions {
            passive: true,
            ..QueueDeclareOptions::default()
        };
        let q = ch
            .queue_declare(queue.into(), opts, FieldTable::default())
            .await
            .with_context(|| format!("queue {queue} is gone"))?;
        let _ = ch.close(200, "counted".into()).await;
        Ok(q.message_count())
    }

    pub async fn purge(&self, queue: &str) -> anyhow::Result<()> {
        self.ch
            .queue_purge(queue.into(), QueuePurgeOptions::default())
            .await
            .with_context(|| format!("cannot purge queue {queue}"))?;
        Ok(())
    }

    /// Deletes `queue`, saying nothing if it is already gone.
    pub async fn delete(&self, queue: &str) {
        if let Ok(ch) = self.conn.create_channel().await {
            let _ = ch
                .queue_delete(queue.into(), QueueDeleteOptions::default())
                .await;
            let _ = ch.close(200, "deleted".into()).await;
        }
    }

    async fn publish(
        &self,
        queue: &str,
        id: String,
        body: &[u8],
    ) -> anyhow::Result<PublisherConfirm> {
        let props = BasicProperties::default()
            .with_delivery_mode(2)
            .with_message_id(id.into());
        Ok(self
            .ch
            .basic_publish(
                "".into(),
                queue.into(),
                BasicPublishOptions::default(),
                body,
                props,
            )
            .await?)
    }

    /// Fills `queue` with `n` persistent untimed messages, ids
    /// `{id_prefix}-0` up, and waits for every confirm.
    pub async fn fill(&self, queue: &str, n: u64, id_prefix: &str) -> anyhow::Result<()> {
        let started = Instant::now();
        let mut pending = FuturesUnordered::new();
        let mut confirmed = 0u64;
        let mut shown = progress::Every::new(Duration::from_secs(1));
        for seq in 0..n {
            pending.push(
                self.publish(queue, format!("{id_prefix}-{seq}"), &body(seq, 0))
                    .await?,
            );
            while pending.len() >= CONFIRM_WINDOW {
                confirm(pending.next().await)?;
                confirmed += 1;
            }
            if shown.due() {
                progress::say(format_args!("    filling {queue}: {confirmed}/{n}"));
            }
        }
        while let Some(c) = pending.next().await {
            confirm(Some(c))?;
        }
        let took = started.elapsed();
        progress::say(format_args!(
            "    filled {n} messages in {:.1} s ({:.0} msg/s)",
            took.as_secs_f64(),
            n as f64 / took.as_secs_f64()
        ));
        Ok(())
    }

    /// Publishes `n` timed messages to `queue` at `rate` per second, ids
    /// `{id_prefix}-{first}` up, each stamped as it is sent; waits for every
    /// confirm. Returns the rate the broker took them at: `n` over the time
    /// to the last confirm, below `rate` when the broker fell behind.
    pub async fn paced(
        &self,
        queue: &str,
        rate: f64,
        n: u64,
        first: u64,
        id_prefix: &str,
    ) -> anyhow::Result<f64> {
        let started = Instant::now();
        let mut pending = FuturesUnordered::new();
        let mut tick = tokio::time::interval(Duration::from_millis(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut sent = 0u64;
        while sent < n {
            tokio::select! {
                _ = tick.tick() => {}
                Some(c) = pending.next(), if !pending.is_empty() => {
                    confirm(Some(c))?;
                    continue;
                }
            }
            let due = ((started.elapsed().as_secs_f64() * rate) as u64 + 1).min(n);
            while sent < due {
                let seq = first + sent;
                let b = body(seq, now_us());
                pending.push(
                    self.publish(queue, format!("{id_prefix}-{seq}"), &b)
                        .await?,
                );
                sent += 1;
            }
        }
        while let Some(c) = pending.next().await {
            confirm(Some(c))?;
        }
        Ok(n as f64 / started.elapsed().as_secs_f64())
    }

    /// Starts reading `queue` without acks, for [`Sink::collect`].
    pub async fn latency_sink(&self, queue: &str) -> anyhow::Result<Sink> {
        let ch = self.conn.create_channel().await?;
        ch.basic_qos(0, BasicQosOptions::default()).await?;
        let opts = BasicConsumeOptions {
            no_ack: true,
            ..BasicConsumeOptions::default()
        };
        let consumer = ch
            .basic_consume(
                queue.into(),
                "warren-bench-sink".into(),
                opts,
                FieldTable::default(),
            )
            .await
            .with_context(|| format!("cannot consume output queue {queue}"))?;
        Ok(Sink { _ch: ch, consumer })
    }

    pub async fn close(self) {
        let _ = self.conn.close(200, "bench done".into()).await;
    }
}

fn confirm(c: Option<Result<Confirmation, lapin::Error>>) -> anyhow::Result<()> {
    match c {
        Some(Ok(c)) if c.is_ack() => Ok(()),
        Some(Ok(c)) => bail!("the broker did not confirm a publish: {c:?}"),
        Some(Err(e)) => Err(e).context("publish failed"),
        None => Ok(()),
    }
}

/// A no-ack consumer of an output queue that measures latencies.
#[derive(Debug)]
pub struct Sink {
    _ch: Channel,
    consumer: lapin::Consumer,
}

impl Sink {
    /// Collects the latencies (µs) of the next `want` timed messages, or of
    /// those that came before `deadline`.
    pub async fn collect(&mut self, want: usize, deadline: Instant) -> Vec<u64> {
        let mut out = Vec::with_capacity(want);
        while out.len() < want {
            let next = tokio::time::timeout_at(deadline.into(), self.consumer.next()).await;
            let Ok(Some(Ok(d))) = next else { break };
            let t = stamp(&d.data);
            if t > 0 {
                out.push(now_us().saturating_sub(t));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_are_256_bytes_of_json_with_their_stamp() {
        let b = body(42, 1_732_000_000_123_456);
        assert_eq!(b.len(), BODY_BYTES);
        assert!(b.starts_with(br#"{"t":1732000000123456,"seq":42,"pad":"xx"#));
        assert!(b.ends_with(br#"xx"}"#));
        assert_eq!(stamp(&b), 1_732_000_000_123_456);
        assert_eq!(stamp(&body(7, 0)), 0);
        assert_eq!(stamp(br#"{"seq":1,"t":99,"enriched":""}"#), 99);
        assert_eq!(stamp(b"not json"), 0);
    }
}
