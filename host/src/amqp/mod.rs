//! RabbitMQ: the only module that knows lapin.
//!
//! - [`Broker`]: one connection per process, its topology declarations, and
//!   the signal that it was lost.
//! - [`consumer`]: one channel per consumer with `basic.qos` set before
//!   `basic.consume`, deliveries as [`Inbound`], and acks batched with
//!   `multiple` behind a short timer.
//! - [`publisher`]: one confirm-mode channel for outputs, retries and
//!   dead-letters; every publish waits for its confirm.
//! - [`wire`]: AMQP's own data types (field tables, properties), which
//!   callers convert to and from their own.
//! - [`bookkeeping`]: the signature that makes `x-warren-*` unforgeable.
//! - [`limits`]: depth, size and length limits against hostile deliveries.
//! - [`quarantine`]: after the client lost the connection to a frame it
//!   could not parse, a session of its own that dead-letters such
//!   deliveries so the queue can go on.
//!
//! It does not know handlers, dedup or the sandbox (it imports nothing from
//! them): the pipeline decides and converts, this module carries it out.

pub mod bookkeeping;
pub mod consumer;
pub mod limits;
pub mod publisher;
pub mod quarantine;

/// AMQP's data model as this module's callers see it: field tables and
/// values, short strings, message properties. Re-exported so that the
/// conversion to the guest's types (in the pipeline) never names the client
/// library.
pub mod wire {
    pub use lapin::BasicProperties;
    pub use lapin::types::{
        AMQPValue, ByteArray, DecimalValue, FieldArray, FieldTable, LongString, ShortString,
    };
}

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Connection, ConnectionProperties, ExchangeKind};

use crate::config::ExchangeType;

pub use consumer::{ConsumerChannel, Inbound};
/// The client's error: connection, channel and protocol failures.
pub use lapin::Error;
pub use publisher::{DeadLetter, PublishError, Publisher};

/// Every header warren writes for its own bookkeeping starts with this;
/// guests never see them, and may not write them.
pub const INTERNAL_PREFIX: &str = "x-warren-";
/// Dead-letter header: inbound headers left off the dead-letter copy to fit
/// it in a frame, by name.
pub const H_DROPPED_HEADERS: &str = "x-warren-dropped-headers";

/// Header: which attempt the next delivery of this message is (1-based).
pub const H_ATTEMPT: &str = "x-warren-attempt";
/// Header: the exchange the message was first published to (kept across
/// retries, which come back through the default exchange).
pub const H_EXCHANGE: &str = "x-warren-exchange";
/// Header: the routing key the message was first published with.
pub const H_ROUTING_KEY: &str = "x-warren-routing-key";

/// Header: the digest of the module version that produced an output, or
/// that last handled a dead-lettered message.
pub const H_MODULE: &str = "x-warren-module";
/// Dead-letter header: the handler that gave up on the message.
pub const H_HANDLER: &str = "x-warren-handler";
/// Dead-letter header: why, as a short stable kind (`reject`, `timeout`...).
pub const H_ERROR_KIND: &str = "x-warren-error-kind";
/// Dead-letter header: why, in words.
pub const H_REASON: &str = "x-warren-reason";
/// Dead-letter header: the host that dead-lettered it.
pub const H_HOST: &str = "x-warren-host";
/// Dead-letter header: when (seconds since the Unix epoch).
pub const H_FAILED_AT: &str = "x-warren-failed-at";

/// Checks that `url` is an AMQP URL the client accepts, without
/// connecting. The error shows the URL without its password.
pub fn validate_url(url: &str) -> Result<(), String> {
    let shown = crate::config::redact_url(url);
    let scheme = url.split_once("://").map(|(s, _)| s);
    if !matches!(scheme, Some("amqp" | "amqps")) {
        return Err(format!(
            "{shown:?} is not an AMQP URL: expected amqp://user:pass@host:port/vhost"
        ));
    }
    url.parse::<lapin::uri::AMQPUri>()
        .map(|_| ())
        .map_err(|e| format!("{shown:?} is not a valid AMQP URL: {e}"))
}

/// What to declare for one handler.
#[derive(Debug, Clone)]
pub struct Topology {
    pub queue: String,
    pub quorum: bool,
    pub dead_letter_queue: String,
    pub bind: Option<Binding>,
}

#[derive(Debug, Clone)]
pub struct Binding {
    pub exchange: String,
    pub kind: ExchangeType,
    pub routing_keys: Vec<String>,
}

/// The process's connection to RabbitMQ.
pub struct Broker {
    conn: Connection,
    name: String,
    key: Arc<bookkeeping::Key>,
    /// The connection's events, listened to from the start: lapin sends
    /// them only while someone listens, and the error that ended the
    /// connection says whether a frame could not be parsed.
    events: tokio::sync::Mutex<BoxStream<'static, lapin::Event>>,
    /// The first error the connection reported.
    failure: std::sync::Mutex<Option<Error>>,
}

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broker").field("name", &self.name).finish()
    }
}

impl Broker {
    /// Connects, naming the connection so operators can find it in
    /// `rabbitmqctl list_connections`. `key` signs and verifies the
    /// bookkeeping headers; every process of a group must share it.
    pub async fn connect(url: &str, name: &str, key: bookkeeping::Key) -> Result<Broker, Error> {
        let props = ConnectionProperties::default().with_connection_name(name.into());
        let conn = Connection::connect(url, props).await?;
        let events = tokio::sync::Mutex::new(conn.events_listener().boxed());
        Ok(Broker {
            conn,
            name: name.to_string(),
            key: Arc::new(key),
            events,
            failure: std::sync::Mutex::new(None),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Declares a handler's queues and binding. Idempotent; run again after
    /// every reconnect.
    pub async fn declare(&self, t: &Topology) -> Result<(), Error> {
        let ch = self.conn.create_channel().await?;
        let durable = QueueDeclareOptions {
            durable: true,
            ..QueueDeclareOptions::default()
        };
        let mut args = FieldTable::default();
        if t.quorum {
            args.insert(
                "x-queue-type".into(),
                AMQPValue::LongString("quorum".into()),
            );
        }
        ch.queue_declare(t.queue.as_str().into(), durable, args)
            .await?;
        ch.queue_declare(
            t.dead_letter_queue.as_str().into(),
            durable,
            FieldTable::default(),
        )
        .await?;
        if let Some(b) = &t.bind {
            let kind = match b.kind {
                ExchangeType::Direct => ExchangeKind::Direct,
                ExchangeType::Fanout => ExchangeKind::Fanout,
                ExchangeType::Headers => ExchangeKind::Headers,
                ExchangeType::Topic => ExchangeKind::Topic,
            };
            let opts = ExchangeDeclareOptions {
                durable: true,
                ..ExchangeDeclareOptions::default()
            };
            ch.exchange_declare(
                b.exchange.as_str().into(),
                kind,
                opts,
                FieldTable::default(),
            )
            .await?;
            for key in &b.routing_keys {
                ch.queue_bind(
                    t.queue.as_str().into(),
                    b.exchange.as_str().into(),
                    key.as_str().into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await?;
            }
        }
        ch.close(200, "declared".into()).await?;
        Ok(())
    }

    /// Opens a consumer channel on `queue`; see [`ConsumerChannel::open`].
    pub async fn consume(
        &self,
        queue: &str,
        prefetch: u16,
        tag: &str,
    ) -> Result<ConsumerChannel, Error> {
        ConsumerChannel::open(&self.conn, queue, prefetch, tag, self.key.clone()).await
    }

    /// Opens the confirm-mode publishing channel.
    pub async fn publisher(&self) -> Result<Publisher, Error> {
        Publisher::open(&self.conn, self.key.clone()).await
    }

    /// Resolves when the connection fails (broker gone, connection closed by
    /// an operator, missed heartbeats). Watching the connection, not only the
    /// consumer streams, because a stream can go silent instead (lapin#389).
    pub async fn lost(&self) -> String {
        let mut events = self.events.lock().await;
        let mut poll = tokio::time::interval(Duration::from_millis(500));
        loop {
            tokio::select! {
                ev = events.next() => match ev {
                    Some(lapin::Event::Error(e)) => {
                        let reason = e.to_string();
                        self.record(e);
                        return reason;
                    }
                    Some(_) => {}
                    None => return "connection event stream ended".into(),
                },
                _ = poll.tick() => {
                    if !self.conn.status().connected() {
                        return "connection is no longer connected".to_string();
                    }
                }
            }
        }
    }

    /// After the connection ended: whether it ended because the client
    /// could not parse a frame the broker sent (a delivery with a short
    /// string that is not UTF-8, say), which [`quarantine`] can move out
    /// of the way. Waits up to a second for the client to report its
    /// error, which it does just after the consumers see the end.
    pub async fn lost_to_unparseable_frame(&self) -> bool {
        let recorded = || {
            self.failure
                .lock()
                .expect("failure lock")
                .as_ref()
                .is_some_and(|e| matches!(e.kind(), lapin::ErrorKind::ParsingError(_)))
        };
        if self.failure.lock().expect("failure lock").is_none() {
            let mut events = self.events.lock().await;
            let wait = async {
                while let Some(ev) = events.next().await {
                    if let lapin::Event::Error(e) = ev {
                        self.record(e);
                        return;
                    }
                }
            };
            let _ = tokio::time::timeout(Duration::from_secs(1), wait).await;
        }
        recorded()
    }

    fn record(&self, e: Error) {
        self.failure.lock().expect("failure lock").get_or_insert(e);
    }

    /// Closes the connection (channels with it; unacked deliveries go back
    /// to their queues).
    pub async fn close(&self) {
        if self.conn.status().connected() {
            let _ = self.conn.close(200, "warren shutting down".into()).await;
        }
    }
}
