//! RabbitMQ from the test's side: publish inputs, read outputs and queue
//! depths, and inject faults with `rabbitmqctl`.

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicGetOptions, BasicNackOptions, BasicPublishOptions,
    BasicQosOptions, ConfirmSelectOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};

use crate::process::{TOOL_LIMIT, output_within};

pub const AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// A message read back from a queue.
#[derive(Debug, Clone)]
pub struct Got {
    pub body: Vec<u8>,
    pub message_id: Option<String>,
    pub headers: BTreeMap<String, AMQPValue>,
    /// The broker's redelivered flag: this reader (or another) had this
    /// very message before and did not ack it.
    pub redelivered: bool,
}

impl Got {
    /// What the tests look at of a delivery.
    pub fn from_delivery(d: &lapin::message::Delivery) -> Got {
        let props = &d.properties;
        Got {
            body: d.data.clone(),
            message_id: props.message_id().as_ref().map(|s| s.to_string()),
            headers: props
                .headers()
                .as_ref()
                .map(|h| {
                    h.inner()
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.clone()))
                        .collect()
                })
                .unwrap_or_default(),
            redelivered: d.redelivered,
        }
    }

    pub fn body_str(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// A header as text (strings, and integers in decimal).
    pub fn header(&self, name: &str) -> Option<String> {
        match self.headers.get(name)? {
            AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
            AMQPValue::ShortString(s) => Some(s.to_string()),
            AMQPValue::LongLongInt(i) => Some(i.to_string()),
            AMQPValue::LongInt(i) => Some(i.to_string()),
            other => Some(format!("{other:?}")),
        }
    }
}

/// A test's own connection to the broker.
#[derive(Debug)]
pub struct Rabbit {
    conn: Connection,
    ch: Channel,
}

impl Rabbit {
    pub async fn connect() -> Rabbit {
        Self::connect_to(AMQP_URL).await
    }

    pub async fn connect_to(url: &str) -> Rabbit {
        let conn = Connection::connect(
            url,
            ConnectionProperties::default().with_connection_name("warren-test".into()),
        )
        .await
        .unwrap_or_else(|e| panic!("cannot connect to RabbitMQ at {url}: {e}"));
        let ch = conn.create_channel().await.expect("channel");
        ch.confirm_select(ConfirmSelectOptions::default())
            .await
            .expect("confirm mode");
        Rabbit { conn, ch }
    }

    /// Declares a durable classic queue as warren would: version 2.
    pub async fn declare(&self, queue: &str) {
        let mut args = FieldTable::default();
        args.insert("x-queue-version".into(), AMQPValue::LongInt(2));
        self.declare_args(queue, args).await;
    }

    /// Declares a durable queue with `args`, as it is (a version 1 classic
    /// queue with none, as warren declared them before version 2).
    pub async fn declare_args(&self, queue: &str, args: FieldTable) {
        let opts = QueueDeclareOptions {
            durable: true,
            ..QueueDeclareOptions::default()
        };
        self.ch
            .queue_declare(queue.into(), opts, args)
            .await
            .expect("queue.declare");
    }

    /// Declares a durable quorum queue.
    pub async fn declare_quorum(&self, queue: &str) {
        let opts = QueueDeclareOptions {
            durable: true,
            ..QueueDeclareOptions::default()
        };
        let mut args = FieldTable::default();
        args.insert(
            "x-queue-type".into(),
            AMQPValue::LongString("quorum".into()),
        );
        self.ch
            .queue_declare(queue.into(), opts, args)
            .await
            .expect("queue.declare of a quorum queue");
    }

    /// Ready plus unacked messages of `queue`, from the broker's own count.
    pub async fn total(&self, queue: &str) -> u32 {
        let out = rabbitmqctl(&["list_queues", "name", "messages"]);
        out.lines()
            .filter_map(|l| {
                let mut f = l.split_whitespace();
                (f.next()? == queue).then(|| f.next()?.parse::<u32>().ok())?
            })
            .next()
            .unwrap_or(0)
    }

    /// Messages ready in each queue, asked of the queue itself (a passive
    /// declare, on a channel of its own since a missing queue closes it):
    /// `rabbitmqctl list_queues` counts can lag by the broker's statistics
    /// interval.
    pub async fn ready(&self, queues: &[String]) -> Vec<u32> {
        let ch = self.conn.create_channel().await.expect("channel");
        let mut counts = Vec::new();
        for q in queues {
            let opts = QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            };
            let declared = ch
                .queue_declare(q.as_str().into(), opts, FieldTable::default())
                .await
                .unwrap_or_else(|e| panic!("queue {q}: {e}"));
            counts.push(declared.message_count());
        }
        let _ = ch.close(200, "counted".into()).await;
        counts
    }

    /// Reads the message at the head of `queue` and puts it back (nack with
    /// requeue keeps its place and its expiry).
    pub async fn peek(&self, queue: &str) -> Got {
        let ch = self.conn.create_channel().await.expect("channel");
        let m = ch
            .basic_get(queue.into(), BasicGetOptions::default())
            .await
            .expect("basic.get")
            .unwrap_or_else(|| panic!("{queue} is empty"));
        let got = Got::from_delivery(&m.delivery);
        m.nack(BasicNackOptions {
            multiple: false,
            requeue: true,
        })
        .await
        .expect("nack");
        let _ = ch.close(200, "peeked".into()).await;
        got
    }

    /// Publishes persistent messages to the default exchange, each with its
    /// message id, and waits for every confirm.
    pub async fn publish_many(
        &self,
        queue: &str,
        msgs: impl IntoIterator<Item = (Option<String>, Vec<u8>)>,
    ) {
        let mut pending = Vec::new();
        for (id, body) in msgs {
            let mut props = BasicProperties::default().with_delivery_mode(2);
            if let Some(id) = id {
                props = props.with_message_id(id.into());
            }
            let confirm = self
                .ch
                .basic_publish(
                    "".into(),
                    queue.into(),
                    BasicPublishOptions::default(),
                    &body,
                    props,
                )
                .await
                .expect("basic.publish");
            pending.push(confirm);
            if pending.len() >= 500 {
                for c in pending.drain(..) {
                    assert!(c.await.expect("confirm").is_ack());
                }
            }
        }
        for c in pending {
            assert!(c.await.expect("confirm").is_ack());
        }
    }

    /// Publishes one persistent message with text headers and waits for
    /// its confirm.
    pub async fn publish_with_headers(
        &self,
        queue: &str,
        id: &str,
        body: &[u8],
        headers: &[(&str, &str)],
    ) {
        let mut table = FieldTable::default();
        for (k, v) in headers {
            table.insert((*k).into(), AMQPValue::LongString((*v).into()));
        }
        let props = BasicProperties::default()
            .with_delivery_mode(2)
            .with_message_id(id.into())
            .with_headers(table);
        let confirm = self
            .ch
            .basic_publish(
                "".into(),
                queue.into(),
                BasicPublishOptions::default(),
                body,
                props,
            )
            .await
            .expect("basic.publish");
        assert!(confirm.await.expect("confirm").is_ack());
    }

    pub async fn publish(&self, queue: &str, id: &str, body: &[u8]) {
        self.publish_many(queue, [(Some(id.to_string()), body.to_vec())])
            .await
    }

    /// Takes every message now in `queue` (acked, so they are gone).
    pub async fn drain(&self, queue: &str) -> Vec<Got> {
        let mut out = Vec::new();
        while let Some(m) = self
            .ch
            .basic_get(queue.into(), BasicGetOptions::default())
            .await
            .expect("basic.get")
        {
            m.ack(BasicAckOptions::default()).await.expect("ack");
            out.push(Got::from_delivery(&m.delivery));
        }
        out
    }

    /// Takes messages from `queue` until `n` arrived, or panics after
    /// `timeout` saying how many did.
    pub async fn collect(&self, queue: &str, n: usize, timeout: Duration) -> Vec<Got> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut got = Vec::new();
        while got.len() < n {
            let batch = self.drain(queue).await;
            if batch.is_empty() {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "only {} of {n} messages arrived in {queue} within {timeout:?}",
                    got.len()
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            got.extend(batch);
        }
        got
    }

    /// Takes messages from `queue` through a consumer of its own (much
    /// faster than `basic.get` for thousands of messages) until `enough`
    /// says so of what arrived so far; panics after `timeout`.
    pub async fn consume_until(
        &self,
        queue: &str,
        timeout: Duration,
        mut enough: impl FnMut(&[Got]) -> bool,
    ) -> Vec<Got> {
        use futures_util::StreamExt as _;
        let ch = self.conn.create_channel().await.expect("channel");
        ch.basic_qos(1000, BasicQosOptions::default())
            .await
            .expect("basic.qos");
        let mut consumer = ch
            .basic_consume(
                queue.into(),
                "warren-test-reader".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .expect("basic.consume");
        let deadline = tokio::time::Instant::now() + timeout;
        let mut got = Vec::new();
        while !enough(&got) {
            let next = tokio::time::timeout_at(deadline, consumer.next()).await;
            let Ok(Some(Ok(d))) = next else {
                panic!(
                    "consuming {queue}: not enough within {timeout:?} ({} messages)",
                    got.len()
                );
            };
            got.push(Got::from_delivery(&d));
            d.ack(BasicAckOptions::default()).await.expect("ack");
        }
        let _ = ch.close(200, "read".into()).await;
        got
    }

    /// Deletes queues, ignoring ones that do not exist.
    pub async fn delete(&self, queues: &[&str]) {
        for q in queues {
            let _ = self
                .ch
                .queue_delete((*q).into(), QueueDeleteOptions::default())
                .await;
        }
    }
}

/// Runs `rabbitmqctl` (against the default node unless `-n` is given) and
/// returns its stdout; panics naming the command if it fails or hangs
/// past [`TOOL_LIMIT`].
pub fn rabbitmqctl(args: &[&str]) -> String {
    let out = output_within(Command::new("rabbitmqctl").arg("-q").args(args), TOOL_LIMIT)
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        out.status.success(),
        "rabbitmqctl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The broker-side names (`pid` column) and client-given names of the
/// connections whose name contains `needle`.
pub fn connections(needle: &str) -> Vec<(String, String)> {
    rabbitmqctl(&["list_connections", "pid", "client_properties"])
        .lines()
        .filter(|l| l.contains(needle))
        .filter_map(|l| {
            let pid = l.split_whitespace().next()?.to_string();
            let name = l
                .split("{\"connection_name\",\"")
                .nth(1)?
                .split('"')
                .next()?
                .to_string();
            Some((pid, name))
        })
        .collect()
}

/// Consumer tags on `queue`.
pub fn consumer_tags(queue: &str) -> Vec<String> {
    rabbitmqctl(&["list_consumers", "queue_name", "consumer_tag"])
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            (f.next()? == queue).then(|| f.next().map(str::to_string))?
        })
        .collect()
}
