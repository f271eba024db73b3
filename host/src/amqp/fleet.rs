//! The broker side of fleet deploys: the control exchange, the desired
//! state of each handler (a stream), the per-host queue that answers
//! pings, and the replies. It moves bytes and headers; what they mean
//! (deploy, validate, report) is `crate::fleet`'s.
//!
//! Names, for a control exchange `X` (default `warren.fleet`):
//!
//! - `X`, a durable topic exchange. `deploy.HANDLER` routes to the
//!   handler's desired-state stream; `ping` to every host's queue.
//! - `X.HANDLER`, a stream (`x-queue-type: stream`) bound with
//!   `deploy.HANDLER`: every desired version of that handler, the module in
//!   the body. A host reads it from its last chunk (offset `last`) and
//!   follows it, so one that starts late or reconnects gets the current
//!   desired version; the history stays for `warren rollback --fleet`.
//!   Bounded by [`STREAM_MAX_BYTES`].
//! - `X.replies`, a durable direct exchange: hosts answer a command by
//!   publishing there with the command's `reply-to` as routing key. Not
//!   the default exchange: a host that may publish to the default
//!   exchange may publish to any queue, a desired-state stream included
//!   (docs/fleet.md, permissions).
//! - a server-named exclusive queue per host, bound to `X` with `ping`, and
//!   one per deployer, bound to `X.replies` with its own name.
//!
//! The deployer declares the exchanges and the streams. A host declares the
//! two exchanges too (so its ping queue is bound before the first deploy)
//! but never a stream: it only consumes them, so it needs no right to
//! configure, bind or write to them.

use std::collections::BTreeMap;
use std::time::Duration;

use futures_util::StreamExt as _;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::uri::AMQPUri;
use lapin::{
    BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, Consumer,
    ExchangeKind,
};

use super::{CALL_TIMEOUT, CONNECT_TIMEOUT, Error, HEARTBEAT_SECS, bounded};

/// The most a desired-state stream keeps; older segments are dropped
/// (about 50 deploys of an interpreted guest of 18 MiB).
pub const STREAM_MAX_BYTES: i64 = 1 << 30;
/// Stream segment size: retention drops whole segments.
const SEGMENT_BYTES: i64 = 64 << 20;
/// The longest a module publish may wait for its confirm (tens of MiB
/// written to a stream's disk).
pub const FLEET_CONFIRM_TIMEOUT: Duration = Duration::from_secs(120);

/// Where a stream read starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offset {
    /// The oldest entry kept.
    First,
    /// The last chunk written: the current desired state.
    Last,
    /// From this offset (a canary's base entry).
    At(i64),
}

/// One message on the control plane, as its readers see it.
#[derive(Debug, Clone)]
pub struct ControlMessage {
    /// `x-warren-fleet-*` headers (and any other string header), by name.
    pub headers: BTreeMap<String, String>,
    pub body: Vec<u8>,
    pub reply_to: Option<String>,
    pub correlation_id: Option<String>,
    /// The broker-validated user that published it, when the publisher set
    /// it (RabbitMQ refuses a `user-id` that is not the connection's user).
    pub user_id: Option<String>,
    /// The entry's offset in its stream.
    pub offset: Option<i64>,
}

/// What a publisher sets on a control message.
#[derive(Debug, Clone, Default)]
pub struct Outgoing<'a> {
    pub headers: Vec<(&'a str, String)>,
    pub reply_to: Option<String>,
    pub correlation_id: Option<String>,
    pub user_id: Option<String>,
}

/// A connection to the fleet's broker.
pub struct FleetLink {
    conn: Connection,
    exchange: String,
    user: String,
}

impl std::fmt::Debug for FleetLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FleetLink")
            .field("exchange", &self.exchange)
            .finish()
    }
}

/// The stream of one handler's desired versions.
pub fn stream_name(exchange: &str, handler: &str) -> String {
    format!("{exchange}.{handler}")
}

/// The exchange hosts answer on.
pub fn replies_exchange(exchange: &str) -> String {
    format!("{exchange}.replies")
}

impl FleetLink {
    /// Connects to `url` under connection name `name`, for control
    /// exchange `exchange`.
    pub async fn connect(url: &str, name: &str, exchange: &str) -> Result<FleetLink, Error> {
        let mut uri: AMQPUri = url.parse().map_err(Error::Url)?;
        if uri.query.heartbeat.is_none() {
            uri.query.heartbeat = Some(HEARTBEAT_SECS);
        }
        let user = uri.authority.userinfo.username.clone();
        let (host, port) = (uri.authority.host.clone(), uri.authority.port);
        let props = ConnectionProperties::default().with_connection_name(name.into());
        let conn = bounded(
            || format!("connecting to {host}:{port} (fleet)"),
            CONNECT_TIMEOUT,
            Connection::connect_uri(uri, props),
        )
        .await?;
        Ok(FleetLink {
            conn,
            exchange: exchange.to_string(),
            user,
        })
    }

    /// The broker user this link connected as.
    pub fn user(&self) -> &str {
        &self.user
    }

    pub fn connected(&self) -> bool {
        self.conn.status().connected()
    }

    async fn channel(&self) -> Result<Channel, Error> {
        bounded(
            || "opening a fleet channel".into(),
            CALL_TIMEOUT,
            self.conn.create_channel(),
        )
        .await
    }

    /// Declares the control and replies exchanges (idempotent). Hosts do
    /// this too, so their ping queue can be bound before any deploy.
    pub async fn declare_exchanges(&self) -> Result<(), Error> {
        let ch = self.channel().await?;
        let durable = ExchangeDeclareOptions {
            durable: true,
            ..Default::default()
        };
        let what = || format!("declaring the fleet exchanges {:?}", self.exchange);
        bounded(what, CALL_TIMEOUT, async {
            ch.exchange_declare(
                self.exchange.as_str().into(),
                ExchangeKind::Topic,
                durable,
                FieldTable::default(),
            )
            .await?;
            ch.exchange_declare(
                replies_exchange(&self.exchange).as_str().into(),
                ExchangeKind::Direct,
                durable,
                FieldTable::default(),
            )
            .await?;
            ch.close(200, "declared".into()).await
        })
        .await
    }

    /// The deployer's declarations: both exchanges, and the handler's
    /// stream bound to the control exchange. Idempotent.
    pub async fn declare_for(&self, handler: &str) -> Result<(), Error> {
        self.declare_exchanges().await?;
        let ch = self.channel().await?;
        let stream = stream_name(&self.exchange, handler);
        let what = || format!("declaring the fleet stream {stream:?}");
        bounded(what, CALL_TIMEOUT, async {
            let mut args = FieldTable::default();
            args.insert(
                "x-queue-type".into(),
                AMQPValue::LongString("stream".into()),
            );
            args.insert(
                "x-max-length-bytes".into(),
                AMQPValue::LongLongInt(STREAM_MAX_BYTES),
            );
            args.insert(
                "x-stream-max-segment-size-bytes".into(),
                AMQPValue::LongLongInt(SEGMENT_BYTES),
            );
            ch.queue_declare(
                stream.as_str().into(),
                QueueDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                args,
            )
            .await?;
            ch.queue_bind(
                stream.as_str().into(),
                self.exchange.as_str().into(),
                format!("deploy.{handler}").as_str().into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
            ch.close(200, "declared".into()).await?;
            Ok::<_, lapin::Error>(())
        })
        .await
    }

    /// Publishes `body` to the control exchange with `routing_key`, waits
    /// for the broker's confirm, and fails if nothing routed it.
    pub async fn publish(
        &self,
        routing_key: &str,
        body: &[u8],
        out: Outgoing<'_>,
    ) -> Result<(), Error> {
        let exchange = self.exchange.clone();
        self.publish_to(&exchange, routing_key, body, out).await
    }

    /// Answers a command: publishes `body` to the replies exchange with
    /// the command's `reply-to` as routing key (no confirm awaited beyond
    /// the call; a deployer gone is nobody to tell).
    pub async fn reply(
        &self,
        reply_to: &str,
        body: &[u8],
        correlation_id: Option<String>,
    ) -> Result<(), Error> {
        let out = Outgoing {
            correlation_id,
            ..Default::default()
        };
        let ex = replies_exchange(&self.exchange);
        let ch = self.channel().await?;
        let what = || format!("a fleet reply to {reply_to:?}");
        bounded(what, CALL_TIMEOUT, async {
            ch.basic_publish(
                ex.as_str().into(),
                reply_to.into(),
                BasicPublishOptions::default(),
                body,
                properties(out),
            )
            .await?;
            ch.close(200, "replied".into()).await
        })
        .await
    }

    async fn publish_to(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        out: Outgoing<'_>,
    ) -> Result<(), Error> {
        let ch = self.channel().await?;
        bounded(
            || "confirm.select".into(),
            CALL_TIMEOUT,
            ch.confirm_select(ConfirmSelectOptions::default()),
        )
        .await?;
        let rk = ShortString::try_new(routing_key).map_err(|_| {
            Error::Url(format!(
                "routing key {routing_key:?} is longer than 255 bytes"
            ))
        })?;
        let opts = BasicPublishOptions {
            mandatory: true,
            ..Default::default()
        };
        let what =
            || format!("the confirm of a fleet publish to {exchange:?} with key {routing_key:?}");
        let confirm = bounded(what, FLEET_CONFIRM_TIMEOUT, async {
            ch.basic_publish(exchange.into(), rk, opts, body, properties(out))
                .await?
                .await
        })
        .await?;
        let _ = bounded(
            || "closing a fleet channel".into(),
            CALL_TIMEOUT,
            ch.close(200, "published".into()),
        )
        .await;
        match confirm {
            Confirmation::Ack(None) | Confirmation::NotRequested => Ok(()),
            Confirmation::Ack(Some(r)) => Err(Error::Refused(format!(
                "nothing routes key {routing_key:?} on exchange {exchange:?} ({} {})",
                r.reply_code, r.reply_text
            ))),
            Confirmation::Nack(_) => Err(Error::Refused(format!(
                "the broker refused the publish to {exchange:?} with key {routing_key:?}"
            ))),
        }
    }

    /// Follows the handler's desired-state stream from `from`. Fails with
    /// a 404 while no deployer has declared it.
    pub async fn follow(&self, handler: &str, from: Offset) -> Result<ControlStream, Error> {
        let ch = self.channel().await?;
        let stream = stream_name(&self.exchange, handler);
        let what = || format!("following stream {stream:?}");
        let consumer = bounded(what, CALL_TIMEOUT, async {
            // Streams need a prefetch; one or two modules of tens of MiB
            // in flight is plenty.
            ch.basic_qos(2, BasicQosOptions::default()).await?;
            let mut args = FieldTable::default();
            let offset = match from {
                Offset::First => AMQPValue::LongString("first".into()),
                Offset::Last => AMQPValue::LongString("last".into()),
                Offset::At(n) => AMQPValue::LongLongInt(n),
            };
            args.insert("x-stream-offset".into(), offset);
            ch.basic_consume(
                stream.as_str().into(),
                "".into(),
                BasicConsumeOptions::default(),
                args,
            )
            .await
        })
        .await?;
        Ok(ControlStream {
            _channel: ch,
            consumer,
            ack: true,
        })
    }

    /// This host's queue for pings: exclusive, server-named, bound to the
    /// control exchange with `ping`. The exchange must exist (a deployer
    /// declares it).
    pub async fn ping_queue(&self) -> Result<ControlStream, Error> {
        let ex = self.exchange.clone();
        Ok(self.own_queue(&ex, Some("ping")).await?.1)
    }

    /// A deployer's queue for replies, bound to the replies exchange under
    /// its own name; returns the name to put in `reply-to`.
    pub async fn reply_queue(&self) -> Result<(String, ControlStream), Error> {
        let ex = replies_exchange(&self.exchange);
        self.own_queue(&ex, None).await
    }

    async fn own_queue(
        &self,
        exchange: &str,
        key: Option<&str>,
    ) -> Result<(String, ControlStream), Error> {
        let ch = self.channel().await?;
        let what = || format!("declaring a queue bound to {exchange:?}");
        let (name, consumer) = bounded(what, CALL_TIMEOUT, async {
            let q = ch
                .queue_declare(
                    "".into(),
                    QueueDeclareOptions {
                        exclusive: true,
                        auto_delete: true,
                        ..Default::default()
                    },
                    FieldTable::default(),
                )
                .await?;
            let name = q.name().to_string();
            ch.queue_bind(
                name.as_str().into(),
                exchange.into(),
                key.unwrap_or(&name).into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
            let consumer = ch
                .basic_consume(
                    name.as_str().into(),
                    "".into(),
                    BasicConsumeOptions {
                        no_ack: true,
                        ..Default::default()
                    },
                    FieldTable::default(),
                )
                .await?;
            Ok::<_, lapin::Error>((name, consumer))
        })
        .await?;
        let stream = ControlStream {
            _channel: ch,
            consumer,
            ack: false,
        };
        Ok((name, stream))
    }

    /// Closes the connection, waiting at most `within`.
    pub async fn close(&self, within: Duration) {
        if self.conn.status().connected() {
            let _ = bounded(
                || "closing the fleet connection".into(),
                within,
                self.conn.close(200, "done".into()),
            )
            .await;
        }
    }
}

/// Messages from a stream or a queue of the control plane.
pub struct ControlStream {
    _channel: Channel,
    consumer: Consumer,
    /// Stream deliveries are acked (a stream needs it for credit).
    ack: bool,
}

impl std::fmt::Debug for ControlStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlStream").finish_non_exhaustive()
    }
}

impl ControlStream {
    /// The next message, or `None` when the consumer or its connection
    /// ended.
    pub async fn next(&mut self) -> Option<ControlMessage> {
        let d = match self.consumer.next().await? {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(error = %e, "fleet consumer ended");
                return None;
            }
        };
        if self.ack {
            let _ = d.acker.ack(BasicAckOptions::default()).await;
        }
        let p = &d.properties;
        let mut headers = BTreeMap::new();
        let mut offset = None;
        if let Some(h) = p.headers() {
            for (k, v) in h.inner() {
                match v {
                    AMQPValue::LongString(s) => {
                        headers.insert(
                            k.to_string(),
                            String::from_utf8_lossy(s.as_bytes()).into_owned(),
                        );
                    }
                    AMQPValue::ShortString(s) => {
                        headers.insert(k.to_string(), s.to_string());
                    }
                    AMQPValue::LongLongInt(n) if k.as_str() == "x-stream-offset" => {
                        offset = Some(*n)
                    }
                    _ => {}
                }
            }
        }
        Some(ControlMessage {
            headers,
            body: d.data,
            reply_to: p.reply_to().as_ref().map(|s| s.to_string()),
            correlation_id: p.correlation_id().as_ref().map(|s| s.to_string()),
            user_id: p.user_id().as_ref().map(|s| s.to_string()),
            offset,
        })
    }
}

fn properties(out: Outgoing<'_>) -> BasicProperties {
    let mut headers = FieldTable::default();
    for (k, v) in out.headers {
        headers.insert(k.into(), AMQPValue::LongString(LongString::from(v)));
    }
    let mut p = BasicProperties::default()
        .with_headers(headers)
        .with_timestamp(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
        );
    if let Some(r) = out.reply_to {
        p = p.with_reply_to(r.as_str().into());
    }
    if let Some(c) = out.correlation_id {
        p = p.with_correlation_id(c.as_str().into());
    }
    if let Some(u) = out.user_id {
        p = p.with_user_id(u.as_str().into());
    }
    p
}
