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
//! - [`dlq`]: a dead-letter queue read without taking, and messages moved
//!   back to the work queue (`warren dlq`).
//! - [`fleet`]: the control exchange, desired-state streams and replies
//!   of fleet deploys.
//! - [`quarantine`]: after the client lost the connection to a frame it
//!   could not parse, a session of its own that dead-letters such
//!   deliveries so the queue can go on.
//!
//! It does not know handlers, dedup or the sandbox (it imports nothing from
//! them): the pipeline decides and converts, this module carries it out.
//!
//! Every call that waits for the broker is bounded (see [`CALL_TIMEOUT`],
//! [`CONFIRM_TIMEOUT`], [`CONNECT_TIMEOUT`]) and fails with
//! [`Error::Timeout`] naming what it waited for: lapin can leave a future
//! unresolved when the connection dies under it, and an unbounded await
//! there would hang the supervisor and shutdown with it.

pub mod bookkeeping;
pub mod consumer;
mod copies;
pub mod dlq;
mod exchanges;
pub mod fleet;
pub mod limits;
pub mod publisher;
pub mod quarantine;
pub mod queues;

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

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use lapin::options::{BasicQosOptions, ExchangeDeclareOptions, QueueBindOptions};
use lapin::tcp::{OwnedIdentity, OwnedTLSConfig};
use lapin::types::FieldTable;
use lapin::uri::AMQPUri;
use lapin::{Channel, Connection, ConnectionBuilder, ConnectionProperties, ExchangeKind};

use crate::config::{ExchangeType, TlsPem};

pub use consumer::{ConsumerChannel, Inbound};
pub use publisher::{DeadLetter, PublishError, Publisher};
pub use queues::{Binding, QueueKind, Topology};

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
            "{shown:?} is not an AMQP URL: expected amqp://host:port/vhost, with user and password before the host"
        ));
    }
    url.parse::<AMQPUri>()
        .map(|_| ())
        .map_err(|e| format!("{shown:?} is not a valid AMQP URL: {e}"))
}

/// The longest any one call to the broker may take: a declaration, opening
/// or closing a channel, `basic.qos`, `basic.consume`, `basic.cancel`, a
/// flush of acks. A healthy broker answers in milliseconds; past this the
/// connection is taken as wedged.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest a publish waits for its confirm. Longer than a call, since a
/// broker under memory or disk alarm holds publishes back; an output not
/// confirmed in time is retried with the same message id.
pub const CONFIRM_TIMEOUT: Duration = Duration::from_secs(30);
/// The longest a connection attempt (TCP, TLS, AMQP handshake) may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// The AMQP heartbeat asked for, in seconds, when the URL sets none
/// (`?heartbeat=N` in the URL overrides it). Without one, a connection
/// whose peer vanished without a reset is only noticed by the OS, after
/// minutes; with it lapin fails the connection after two silent intervals.
pub const HEARTBEAT_SECS: u16 = 10;
/// How often [`Broker::lost`] sends a round trip on its probe channel, and
/// how long it waits for the answer: a connection that answers nothing is
/// found dead within the heartbeat interval, even while no consumer stream
/// reports an error (a lapin consumer stream can go silent instead of failing).
pub const PROBE_EVERY: Duration = Duration::from_secs(2);
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(5);
/// How often [`Broker::lost`] checks the connection's and every consumer
/// channel's state.
const STATE_POLL: Duration = Duration::from_millis(250);

/// A broker call that failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Amqp(#[from] lapin::Error),
    #[error("invalid amqp.url: {0}")]
    Url(String),
    #[error("no answer from RabbitMQ within {}s to {what}", .after.as_secs_f32())]
    Timeout { what: String, after: Duration },
    /// The broker refused or could not route a fleet publish.
    #[error("{0}")]
    Refused(String),
    /// A TLS file could not be read.
    #[error("{0}")]
    Tls(String),
    /// The queue exists with other arguments (type, delivery limit, single
    /// active consumer...) than warren declares for it. No retry can fix
    /// that: an operator changes the config or migrates the queue.
    #[error(
        "queue {queue:?} exists with other arguments than warren declares for it ({broker}); warren never changes an existing queue: set the handler's queue_type, delivery_limit and ordered to match it, or move its messages to a queue declared anew (docs/semantics.md, \"Queue types\")"
    )]
    Mismatch { queue: String, broker: String },
}

impl Error {
    /// Whether retrying the same call cannot help (a queue declared with
    /// other arguments than it has).
    pub fn is_permanent(&self) -> bool {
        matches!(self, Error::Mismatch { .. })
    }
}

/// A declaration's error, as [`Error::Mismatch`] when the broker refused it
/// because `queue` exists with other arguments.
fn declare_error(queue: &str, e: lapin::Error) -> Error {
    if let lapin::ErrorKind::ProtocolError(amqp) = e.kind()
        && amqp.get_id() == 406
    {
        return Error::Mismatch {
            queue: queue.to_string(),
            broker: amqp.get_message().to_string(),
        };
    }
    Error::Amqp(e)
}

/// Awaits `fut` for at most `after`; on time-out, an error naming `what`.
pub(crate) async fn bounded<T, E: Into<Error>>(
    what: impl FnOnce() -> String,
    after: Duration,
    fut: impl Future<Output = Result<T, E>>,
) -> Result<T, Error> {
    match tokio::time::timeout(after, fut).await {
        Ok(r) => r.map_err(Into::into),
        Err(_) => Err(Error::Timeout {
            what: what(),
            after,
        }),
    }
}

/// A consumer's channel, for [`Broker::lost`] to find it dead even when
/// its stream says nothing; see [`ConsumerChannel::probe`].
#[derive(Debug, Clone)]
pub struct ConsumerProbe {
    pub(crate) channel: Channel,
    pub(crate) tag: String,
}

impl ConsumerProbe {
    /// Why the consumer is dead, if its channel is no longer open.
    pub fn dead(&self) -> Option<String> {
        let status = self.channel.status();
        (!status.connected()).then(|| {
            let state = if status.closing() {
                "closing"
            } else {
                "closed"
            };
            format!("consumer {}: its channel is {state}", self.tag)
        })
    }
}

/// The process's connection to RabbitMQ.
pub struct Broker {
    /// Shared with the publisher, which opens throwaway channels on it.
    conn: Arc<Connection>,
    name: String,
    key: Arc<bookkeeping::Key>,
    /// Exchanges the publisher found missing with a passive declare on a
    /// throwaway channel: the broker reports that channel's 404 as an
    /// error on the connection, which must not count as losing it.
    probed_missing: Probed,
    /// Queues found at another classic queue version (see
    /// [`queues::declare`]), shared with the publisher.
    kept: Arc<queues::Kept>,
    /// A channel of its own for the liveness round trip of [`Broker::lost`].
    probe: Channel,
    /// The connection's events, listened to from the start: lapin sends
    /// them only while someone listens, and the error that ended the
    /// connection says whether a frame could not be parsed.
    events: tokio::sync::Mutex<BoxStream<'static, lapin::Event>>,
    /// The first error the connection reported.
    failure: std::sync::Mutex<Option<lapin::Error>>,
}

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broker").field("name", &self.name).finish()
    }
}

/// Exchange names a probe found missing, shared by a [`Broker`] and its
/// [`Publisher`]s.
pub(crate) type Probed = Arc<std::sync::Mutex<std::collections::HashSet<String>>>;

impl Broker {
    /// Connects, naming the connection so operators can find it in
    /// `rabbitmqctl list_connections`, with a heartbeat of
    /// [`HEARTBEAT_SECS`] unless the URL asks for another. `key` signs and
    /// verifies the bookkeeping headers; every process of a group must
    /// share it.
    ///
    /// An `amqps://` URL is verified against `tls.ca` (the system's roots
    /// without one) and presents `tls.identity` when set.
    pub async fn connect(
        url: &str,
        name: &str,
        key: bookkeeping::Key,
        tls: &TlsPem,
    ) -> Result<Broker, Error> {
        let mut uri: AMQPUri = url.parse().map_err(Error::Url)?;
        if uri.query.heartbeat.is_none() {
            uri.query.heartbeat = Some(HEARTBEAT_SECS);
        }
        let (host, port) = (uri.authority.host.clone(), uri.authority.port);
        let what = || format!("connecting to {host}:{port}");
        let props = ConnectionProperties::default().with_connection_name(name.into());
        let tls = OwnedTLSConfig {
            cert_chain: tls
                .ca
                .as_ref()
                .map(|pem| String::from_utf8_lossy(pem).into_owned()),
            identity: tls
                .identity
                .as_ref()
                .map(|(cert, key)| OwnedIdentity::PKCS8 {
                    pem: cert.clone(),
                    key: key.clone(),
                }),
        };
        let connect = async {
            ConnectionBuilder::new()?
                .with_uri(uri)
                .with_properties(props)
                .with_tls_config(tls)
                .connect()
                .await
        };
        let conn = bounded(what, CONNECT_TIMEOUT, connect).await?;
        let probe = bounded(
            || "opening the liveness probe channel".into(),
            CALL_TIMEOUT,
            conn.create_channel(),
        )
        .await?;
        let events = tokio::sync::Mutex::new(conn.events_listener().boxed());
        Ok(Broker {
            conn: Arc::new(conn),
            name: name.to_string(),
            key: Arc::new(key),
            probed_missing: Probed::default(),
            kept: Arc::default(),
            probe,
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
        let what = || format!("declaring queue {:?} and its dead-letter queue", t.queue);
        bounded(what, CALL_TIMEOUT, self.declare_unbounded(t)).await
    }

    async fn declare_unbounded(&self, t: &Topology) -> Result<(), Error> {
        // The dead-letter queue first: a quorum work queue dead-letters
        // into it.
        let dead = &t.dead_letter_queue;
        self.declare_queue(dead, queues::dead_letter_queue(t.kind))
            .await?;
        self.declare_queue(&t.queue, queues::work_queue(t)).await?;
        let ch = self.conn.create_channel().await?;
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

    /// Declares one queue (see [`queues::declare`]), saying so when it is
    /// kept at another classic queue version than warren declares.
    async fn declare_queue(&self, queue: &str, args: FieldTable) -> Result<lapin::Queue, Error> {
        let (q, found) = queues::declare(&self.conn, &self.kept, queue, args).await?;
        if let Some(version) = found {
            queues::warn_kept(queue, version);
        }
        Ok(q)
    }

    /// How many messages each of the dead-letter `queues` (with its
    /// handler's queue kind) holds ready, on a channel of its own. Each is
    /// declared as [`Broker::declare`] declares a dead-letter queue (durable,
    /// with its kind's arguments: a declare without a quorum queue's
    /// arguments is refused as inequivalent), not passively: a passive
    /// declare of a queue an operator deleted would close the channel with
    /// a 404 that reads like a lost connection, and declaring it again is
    /// what every reconnect does anyway.
    pub async fn queue_depths(&self, queues: &[(String, QueueKind)]) -> Result<Vec<u32>, Error> {
        let what = || format!("counting the messages of {queues:?}");
        bounded(what, CALL_TIMEOUT, async {
            let mut out = Vec::with_capacity(queues.len());
            for (q, kind) in queues {
                let (declared, _) =
                    queues::declare(&self.conn, &self.kept, q, queues::dead_letter_queue(*kind))
                        .await?;
                out.push(declared.message_count());
            }
            Ok::<_, Error>(out)
        })
        .await
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
        Publisher::open(
            &self.conn,
            self.key.clone(),
            self.probed_missing.clone(),
            self.kept.clone(),
        )
        .await
    }

    /// Resolves, with the reason, when the connection or one of `consumers`
    /// is found dead: an error event (broker gone, connection closed by an
    /// operator, missed heartbeats), the connection or a consumer channel
    /// no longer open, or the probe round trip unanswered within
    /// [`PROBE_TIMEOUT`]. Watching the state and the round trip, not only
    /// the consumer streams, because a stream can go silent instead of
    /// failing, a known lapin behaviour.
    pub async fn lost(&self, consumers: &[ConsumerProbe]) -> String {
        let mut events = self.events.lock().await;
        let mut poll = tokio::time::interval(STATE_POLL);
        let mut probe = tokio::time::interval(PROBE_EVERY);
        probe.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                ev = events.next() => match ev {
                    Some(lapin::Event::Error(e)) if self.probe_closed(&e) => {}
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
                    if let Some(dead) = consumers.iter().find_map(ConsumerProbe::dead) {
                        return dead;
                    }
                }
                _ = probe.tick() => {
                    let what = || "the liveness probe (basic.qos on its own channel)".to_string();
                    let round_trip = self.probe.basic_qos(0, BasicQosOptions::default());
                    if let Err(e) = bounded(what, PROBE_TIMEOUT, round_trip).await {
                        return e.to_string();
                    }
                }
            }
        }
    }

    /// Whether `e` is only a throwaway channel closed by the broker: a
    /// probe of an exchange that does not exist, or a queue declaration
    /// refused over its classic queue version (which [`queues::declare`]
    /// tries again as the queue is).
    fn probe_closed(&self, e: &lapin::Error) -> bool {
        let lapin::ErrorKind::ProtocolError(amqp) = e.kind() else {
            return false;
        };
        if amqp.get_id() == 406
            && amqp
                .get_message()
                .as_str()
                .contains(queues::VERSION_MISMATCH)
        {
            return true;
        }
        if amqp.get_id() != 404 {
            return false;
        }
        let text = amqp.get_message().as_str();
        self.probed_missing
            .lock()
            .expect("probed exchanges lock")
            .iter()
            .any(|x| text.contains(&format!("no exchange '{x}' in vhost")))
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

    fn record(&self, e: lapin::Error) {
        self.failure.lock().expect("failure lock").get_or_insert(e);
    }

    /// Closes the connection (channels with it; unacked deliveries go back
    /// to their queues), waiting at most `within` for the broker's answer.
    pub async fn close(&self, within: Duration) {
        if self.conn.status().connected() {
            let close = self.conn.close(200, "warren shutting down".into());
            if let Err(e) = bounded(|| "connection.close".into(), within, close).await {
                tracing::warn!(connection = %self.name, error = %e, "connection not closed cleanly");
            }
        }
    }
}
