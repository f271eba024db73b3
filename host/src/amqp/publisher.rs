//! The confirm-mode publishing channel: guest outputs, delayed retries and
//! dead-letters. Every publish is persistent and waits for the broker's
//! confirm; outputs are mandatory, so an unroutable one is an error rather
//! than a silent drop.
//!
//! Every header frame it writes is sized first against the connection's
//! `frame_max`: a frame over it makes the broker close the whole
//! connection. A retry copy that would not fit (with room for what the
//! broker adds on its way back) is refused with [`PublishError::TooLarge`],
//! and a dead-letter copy drops the largest inbound headers until it fits.
//!
//! A confirm is awaited at most [`CONFIRM_TIMEOUT`], a declaration or a
//! close at most [`CALL_TIMEOUT`].

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lapin::Confirmation;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Connection, PublisherConfirm};

use super::bookkeeping::{H_SIG, Key, Values};
use super::consumer::Inbound;
use super::copies::{carried_headers, other_properties_size, without_headers};
use super::limits::{
    BROKER_HEADER_RESERVE, cap_reason, cap_text, entry_size, header_budget, table_size,
};
use super::queues::QueueKind;
use super::{
    CALL_TIMEOUT, CONFIRM_TIMEOUT, Error, H_ATTEMPT, H_DROPPED_HEADERS, H_ERROR_KIND, H_EXCHANGE,
    H_FAILED_AT, H_HANDLER, H_HOST, H_MODULE, H_REASON, H_ROUTING_KEY, Probed, bounded,
};

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error(
        "the broker refused the message (nack) for exchange {exchange:?}, routing key {routing_key:?}"
    )]
    Nacked {
        exchange: String,
        routing_key: String,
    },
    #[error(
        "unroutable: no queue is bound to exchange {exchange:?} for routing key {routing_key:?} ({reply})"
    )]
    Unroutable {
        exchange: String,
        routing_key: String,
        reply: String,
    },
    #[error("exchange {exchange:?} does not exist")]
    NoExchange { exchange: String },
    #[error("invalid outbound message: {0}")]
    Invalid(String),
    #[error("too large to publish: {0}")]
    TooLarge(String),
    #[error("publish failed: {0}")]
    Amqp(#[from] lapin::Error),
    #[error("{0}")]
    Unanswered(Error),
}

impl From<Error> for PublishError {
    fn from(e: Error) -> Self {
        match e {
            Error::Amqp(e) => PublishError::Amqp(e),
            other => PublishError::Unanswered(other),
        }
    }
}

/// Why and where a message is dead-lettered; each field becomes an
/// `x-warren-*` header on the dead-lettered copy.
#[derive(Debug, Clone)]
pub struct DeadLetter<'a> {
    pub handler: &'a str,
    /// A short stable kind: `reject`, `max-attempts`, `trap`, `timeout`,
    /// `memory`, `stack-overflow`, `no-dedup-key`, `invalid-output`, ...
    pub kind: &'a str,
    pub reason: &'a str,
    pub attempt: u32,
    /// `sha256:...` of the module that handled it last, if one did.
    pub module: Option<&'a str>,
    pub host: &'a str,
}

/// The publishing channel. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Publisher {
    channel: Channel,
    /// Wait queues declared on this connection; a retry to a new delay tier
    /// declares its queue first.
    declared: Arc<Mutex<HashSet<String>>>,
    /// Signs the bookkeeping headers of retries.
    key: Arc<Key>,
    /// The negotiated largest frame, which a header frame must fit.
    frame_max: usize,
    /// Exchanges an output went to and the broker knows, on this
    /// connection. A publish to an exchange that does not exist makes the
    /// broker close the channel (404), which would take every other
    /// publish on it down too; each is checked once, on a channel of its
    /// own, before the first output to it.
    pub(super) exchanges: Arc<Mutex<HashSet<String>>>,
    /// Exchanges being checked or found missing: the broker's 404 on the
    /// throwaway channel reaches the connection's event stream, and the
    /// broker must know it is not a lost connection.
    pub(super) probed: Probed,
    /// Queues kept at another classic queue version, shared with the
    /// broker (see `queues::declare`).
    kept: Arc<super::queues::Kept>,
    pub(super) conn: Arc<Connection>,
}

impl Publisher {
    pub(super) async fn open(
        conn: &Arc<Connection>,
        key: Arc<Key>,
        probed: Probed,
        kept: Arc<super::queues::Kept>,
    ) -> Result<Self, Error> {
        let what = || "opening the publishing channel in confirm mode".to_string();
        let channel = bounded(what, CALL_TIMEOUT, async {
            let channel = conn.create_channel().await?;
            channel
                .confirm_select(ConfirmSelectOptions::default())
                .await?;
            Ok::<_, lapin::Error>(channel)
        })
        .await?;
        let frame_max = match conn.configuration().frame_max() {
            0 => u32::MAX as usize,
            n => n as usize,
        };
        Ok(Self {
            channel,
            declared: Arc::default(),
            key,
            frame_max,
            exchanges: Arc::default(),
            probed,
            kept,
            conn: conn.clone(),
        })
    }

    /// Closes the channel and waits, at most `within`, for the broker to
    /// confirm, so the connection can close after it cleanly.
    pub async fn close(&self, within: Duration) {
        if self.channel.status().connected() {
            let close = self.channel.close(200, "warren shutting down".into());
            let what = || "channel.close of the publishing channel".to_string();
            if let Err(e) = bounded(what, within, close).await {
                tracing::warn!(error = %e, "publishing channel not closed cleanly");
            }
        }
    }

    /// Publishes, mandatory, and waits for the confirm, at most
    /// [`CONFIRM_TIMEOUT`].
    async fn publish(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        properties: BasicProperties,
    ) -> Result<(), PublishError> {
        let ready = Ready::new((exchange, routing_key), body, properties)?;
        let sent = async { self.send(ready).await?.confirmed().await };
        match tokio::time::timeout(CONFIRM_TIMEOUT, sent).await {
            Ok(confirmed) => confirmed,
            Err(_) => Err(PublishError::Unanswered(Error::Timeout {
                what: format!(
                    "the confirm of a publish to exchange {exchange:?}, routing key {routing_key:?}"
                ),
                after: CONFIRM_TIMEOUT,
            })),
        }
    }

    /// Sends one message, mandatory (an unroutable one comes back as an
    /// error), without waiting for its confirm.
    async fn send<'a>(&self, r: Ready<'a>) -> Result<Sent<'a>, PublishError> {
        let opts = BasicPublishOptions {
            mandatory: true,
            ..BasicPublishOptions::default()
        };
        let confirm = self
            .channel
            .basic_publish(r.exchange, r.routing_key, opts, r.body, r.properties)
            .await?;
        Ok(Sent { confirm, to: r.to })
    }

    /// Makes an output ready to send, with `properties` and `headers` as
    /// the caller built them (taken, not copied) and, in
    /// `x-warren-module`, the digest of the module version that produced
    /// it. Headers that would not fit in a frame, and names over 255 bytes,
    /// are refused here, before anything is sent. Its exchange must have
    /// been checked first ([`Publisher::check_exchanges`]).
    pub fn ready_output<'a>(
        &self,
        (exchange, routing_key): (&'a str, &'a str),
        body: &'a [u8],
        properties: BasicProperties,
        mut headers: FieldTable,
        module: &str,
    ) -> Result<Ready<'a>, PublishError> {
        headers.insert(H_MODULE.into(), AMQPValue::LongString(module.into()));
        let budget = header_budget(self.frame_max, other_properties_size(&properties));
        let size = table_size(&headers);
        if size > budget {
            return Err(PublishError::Invalid(format!(
                "output headers take {size} bytes; at most {budget} fit in a frame"
            )));
        }
        Ready::new(
            (exchange, routing_key),
            body,
            properties.with_headers(headers),
        )
    }

    /// Sends every output in `ready` at once and in order, mandatory (an
    /// unroutable output is an error), without waiting for the confirms:
    /// per output, the confirm to wait for ([`Sent::confirmed`]) or why it
    /// could not be sent. The caller bounds the wait for the confirms (one
    /// timer for a batch's outputs instead of one each).
    ///
    /// One future per output, polled together: lapin queues an output's
    /// frames when its future is first polled and resolves it once the
    /// frames are written, so awaiting them one by one would wait for the
    /// connection's writer once per output.
    pub async fn send_outputs<'a>(
        &self,
        ready: Vec<Ready<'a>>,
    ) -> Vec<Result<Sent<'a>, PublishError>> {
        let sends = ready.into_iter().map(|r| self.send(r));
        futures_util::future::join_all(sends).await
    }

    /// Sends `msg` to wait `delay` in `wait_queue` (a queue of `kind`),
    /// after which the broker dead-letters it back to `work_queue` as
    /// attempt `attempt`.
    pub async fn retry(
        &self,
        msg: &Inbound,
        work_queue: &str,
        (wait_queue, kind): (&str, QueueKind),
        delay: Duration,
        attempt: u32,
    ) -> Result<(), PublishError> {
        let (exchange, routing_key) = (msg.original_exchange(), msg.original_routing_key());
        let (headers, _) = carried_headers(msg);
        let sig = self.key.sign(&Values {
            attempt,
            exchange: &exchange,
            routing_key: &routing_key,
            message_id: msg.message_id(),
            body: msg.body(),
        });
        let mut headers = FieldTable::from(headers);
        headers.insert(H_ATTEMPT.into(), AMQPValue::LongLongInt(attempt as i64));
        headers.insert(H_EXCHANGE.into(), AMQPValue::LongString(exchange.into()));
        headers.insert(
            H_ROUTING_KEY.into(),
            AMQPValue::LongString(routing_key.into()),
        );
        headers.insert(H_SIG.into(), AMQPValue::LongString(sig.into()));
        let props = without_headers(msg.properties()).with_delivery_mode(2);
        let budget = header_budget(self.frame_max, other_properties_size(&props))
            .saturating_sub(BROKER_HEADER_RESERVE);
        let size = table_size(&headers);
        if size > budget {
            return Err(PublishError::TooLarge(format!(
                "a retry copy needs {size} bytes of headers; at most {budget} fit in a frame with room for the broker's own"
            )));
        }
        self.declare_wait_queue(work_queue, wait_queue, kind, delay)
            .await?;
        let props = props.with_headers(headers);
        self.publish("", wait_queue, msg.body(), props).await
    }

    /// Copies `msg` to `dead_letter_queue` with the reason headers.
    pub async fn dead_letter(
        &self,
        msg: &Inbound,
        dead_letter_queue: &str,
        dl: &DeadLetter<'_>,
    ) -> Result<(), PublishError> {
        let (mut headers, mut dropped) = carried_headers(msg);
        let text = |s: &str| AMQPValue::LongString(s.into());
        let mut ours = FieldTable::default();
        ours.insert(H_HANDLER.into(), text(dl.handler));
        ours.insert(H_ERROR_KIND.into(), text(dl.kind));
        ours.insert(H_REASON.into(), text(&cap_reason(dl.reason)));
        // Not signed: a dead-lettered message shovelled back to the work
        // queue starts again at attempt 1.
        ours.insert(H_ATTEMPT.into(), AMQPValue::LongLongInt(dl.attempt as i64));
        if let Some(m) = dl.module {
            ours.insert(H_MODULE.into(), text(m));
        }
        ours.insert(H_HOST.into(), text(dl.host));
        // A replayed message's earlier failures (`warren dlq replay`).
        if let Some(h) = super::dlq::carried_history(msg.properties().headers().as_ref()) {
            ours.insert(super::dlq::H_HISTORY.into(), h);
        }
        ours.insert(
            H_EXCHANGE.into(),
            text(&cap_text(&msg.original_exchange(), 255)),
        );
        ours.insert(
            H_ROUTING_KEY.into(),
            text(&cap_text(&msg.original_routing_key(), 255)),
        );
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        ours.insert(H_FAILED_AT.into(), AMQPValue::Timestamp(now.as_secs()));
        let props = without_headers(msg.properties()).with_delivery_mode(2);
        // What must fit: ours, the list of dropped names (at most
        // MAX_REASON_BYTES) and what is kept of the inbound headers.
        let budget = header_budget(self.frame_max, other_properties_size(&props))
            .saturating_sub(table_size(&ours) + 40 + super::limits::MAX_REASON_BYTES);
        let mut size = 4 + headers
            .iter()
            .map(|(k, v)| entry_size(k.as_str(), v))
            .sum::<usize>();
        if size > budget {
            let mut by_size: Vec<(usize, ShortString)> = headers
                .iter()
                .map(|(k, v)| (entry_size(k.as_str(), v), k.clone()))
                .collect();
            by_size.sort_by_key(|e| std::cmp::Reverse(e.0));
            for (n, k) in by_size {
                if size <= budget {
                    break;
                }
                size -= n;
                dropped.push(k.to_string());
                headers.remove(&k);
            }
        }
        let mut headers = FieldTable::from(headers);
        for (k, v) in ours.inner() {
            headers.insert(k.clone(), v.clone());
        }
        if !dropped.is_empty() {
            headers.insert(
                H_DROPPED_HEADERS.into(),
                text(&cap_reason(&dropped.join(","))),
            );
        }
        let props = props.with_headers(headers);
        self.publish("", dead_letter_queue, msg.body(), props).await
    }

    async fn declare_wait_queue(
        &self,
        work_queue: &str,
        wait_queue: &str,
        kind: QueueKind,
        delay: Duration,
    ) -> Result<(), PublishError> {
        if self
            .declared
            .lock()
            .expect("declared set lock")
            .contains(wait_queue)
        {
            return Ok(());
        }
        // On a channel of its own, not the publishing one: a wait queue
        // that an earlier warren declared as a version 1 classic queue is
        // refused once (closing the channel it was declared on) and kept.
        let args = super::queues::wait_queue(kind, work_queue, delay);
        let what = || format!("declaring wait queue {wait_queue:?}");
        let declare = super::queues::declare(&self.conn, &self.kept, wait_queue, args);
        let (_, found) = bounded(what, CALL_TIMEOUT, declare).await?;
        if let Some(version) = found {
            super::queues::warn_kept(wait_queue, version);
        }
        self.declared
            .lock()
            .expect("declared set lock")
            .insert(wait_queue.to_string());
        Ok(())
    }
}

/// A message checked and ready to send ([`Publisher::ready_output`]).
#[derive(Debug)]
pub struct Ready<'a> {
    /// The exchange and routing key, for errors.
    to: (&'a str, &'a str),
    exchange: ShortString,
    routing_key: ShortString,
    body: &'a [u8],
    properties: BasicProperties,
}

impl<'a> Ready<'a> {
    /// A message for `to` (exchange, routing key): an error if either name
    /// is longer than an AMQP short string.
    fn new(
        to: (&'a str, &'a str),
        body: &'a [u8],
        properties: BasicProperties,
    ) -> Result<Self, PublishError> {
        Ok(Ready {
            to,
            exchange: short_name("exchange name", to.0)?,
            routing_key: short_name("routing key", to.1)?,
            body,
            properties,
        })
    }
}

/// An output the broker has been sent, whose confirm may not have come.
#[derive(Debug)]
pub struct Sent<'a> {
    confirm: PublisherConfirm,
    to: (&'a str, &'a str),
}

impl Sent<'_> {
    /// Waits for the broker's confirm: an error if it refused the output
    /// or could route it nowhere. Not bounded: the caller bounds it.
    pub async fn confirmed(self) -> Result<(), PublishError> {
        let confirm = self.confirm.await?;
        checked(confirm, self.to.0, self.to.1)
    }
}

/// The outcome of a mandatory publish from its confirm.
fn checked(confirm: Confirmation, exchange: &str, routing_key: &str) -> Result<(), PublishError> {
    match confirm {
        Confirmation::Ack(None) | Confirmation::NotRequested => Ok(()),
        Confirmation::Ack(Some(returned)) => Err(PublishError::Unroutable {
            exchange: exchange.into(),
            routing_key: routing_key.into(),
            reply: format!("{} {}", returned.reply_code, returned.reply_text),
        }),
        Confirmation::Nack(_) => Err(PublishError::Nacked {
            exchange: exchange.into(),
            routing_key: routing_key.into(),
        }),
    }
}

/// `name` as an AMQP short string, or an error naming `what` is too long.
fn short_name(what: &str, name: &str) -> Result<ShortString, PublishError> {
    ShortString::try_new(name)
        .map_err(|_| PublishError::Invalid(format!("{what} is longer than 255 bytes")))
}
