//! The confirm-mode publishing channel: guest outputs, delayed retries and
//! dead-letters. Every publish is persistent and waits for the broker's
//! confirm; outputs are mandatory, so an unroutable one is an error rather
//! than a silent drop. A confirm is awaited at most [`CONFIRM_TIMEOUT`], a
//! declaration or a close at most [`CALL_TIMEOUT`].

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lapin::Confirmation;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Connection};

use super::consumer::Inbound;
use super::convert::outbound_properties;
use super::{
    CALL_TIMEOUT, CONFIRM_TIMEOUT, Error, H_ATTEMPT, H_EXCHANGE, H_MODULE, H_ROUTING_KEY, bounded,
};
use crate::runtime::Outbound;

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
    #[error("invalid outbound message: {0}")]
    Invalid(String),
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
}

impl Publisher {
    pub(super) async fn open(conn: &Connection) -> Result<Self, Error> {
        let what = || "opening the publishing channel in confirm mode".to_string();
        let channel = bounded(what, CALL_TIMEOUT, async {
            let channel = conn.create_channel().await?;
            channel
                .confirm_select(ConfirmSelectOptions::default())
                .await?;
            Ok::<_, lapin::Error>(channel)
        })
        .await?;
        Ok(Self {
            channel,
            declared: Arc::default(),
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

    async fn publish(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        properties: BasicProperties,
        mandatory: bool,
    ) -> Result<(), PublishError> {
        let ex = ShortString::try_new(exchange)
            .map_err(|_| PublishError::Invalid("exchange name is longer than 255 bytes".into()))?;
        let rk = ShortString::try_new(routing_key)
            .map_err(|_| PublishError::Invalid("routing key is longer than 255 bytes".into()))?;
        let opts = BasicPublishOptions {
            mandatory,
            ..BasicPublishOptions::default()
        };
        let what = || {
            format!(
                "the confirm of a publish to exchange {exchange:?}, routing key {routing_key:?}"
            )
        };
        let confirm = bounded(what, CONFIRM_TIMEOUT, async {
            self.channel
                .basic_publish(ex, rk, opts, body, properties)
                .await?
                .await
        })
        .await?;
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

    /// Publishes a guest's output with its deterministic message id and, in
    /// `x-warren-module`, the digest of the module version that produced it.
    pub async fn output(
        &self,
        o: &Outbound,
        message_id: &str,
        module: &str,
    ) -> Result<(), PublishError> {
        let mut props = outbound_properties(o, message_id).map_err(PublishError::Invalid)?;
        let mut headers = props.headers().clone().unwrap_or_default();
        headers.insert(H_MODULE.into(), AMQPValue::LongString(module.into()));
        props = props.with_headers(headers);
        self.publish(&o.exchange, &o.routing_key, &o.body, props, true)
            .await
    }

    /// Sends `msg` to wait `delay` in `wait_queue`, after which the broker
    /// dead-letters it back to `work_queue` as attempt `attempt`.
    pub async fn retry(
        &self,
        msg: &Inbound,
        work_queue: &str,
        wait_queue: &str,
        delay: Duration,
        attempt: u32,
    ) -> Result<(), PublishError> {
        self.declare_wait_queue(work_queue, wait_queue, delay)
            .await?;
        let mut headers = carried_headers(msg);
        headers.insert(H_ATTEMPT.into(), AMQPValue::LongLongInt(attempt as i64));
        headers.insert(
            H_EXCHANGE.into(),
            AMQPValue::LongString(msg.original_exchange().into()),
        );
        headers.insert(
            H_ROUTING_KEY.into(),
            AMQPValue::LongString(msg.original_routing_key().into()),
        );
        let props = msg
            .properties()
            .clone()
            .with_headers(headers)
            .with_delivery_mode(2);
        self.publish("", wait_queue, msg.body(), props, true).await
    }

    /// Copies `msg` to `dead_letter_queue` with the reason headers.
    pub async fn dead_letter(
        &self,
        msg: &Inbound,
        dead_letter_queue: &str,
        dl: &DeadLetter<'_>,
    ) -> Result<(), PublishError> {
        let mut headers = carried_headers(msg);
        let text = |s: &str| AMQPValue::LongString(s.into());
        headers.insert("x-warren-handler".into(), text(dl.handler));
        headers.insert("x-warren-error-kind".into(), text(dl.kind));
        headers.insert("x-warren-reason".into(), text(dl.reason));
        headers.insert(H_ATTEMPT.into(), AMQPValue::LongLongInt(dl.attempt as i64));
        if let Some(m) = dl.module {
            headers.insert(H_MODULE.into(), text(m));
        }
        headers.insert("x-warren-host".into(), text(dl.host));
        headers.insert(H_EXCHANGE.into(), text(&msg.original_exchange()));
        headers.insert(H_ROUTING_KEY.into(), text(&msg.original_routing_key()));
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        headers.insert(
            "x-warren-failed-at".into(),
            AMQPValue::Timestamp(now.as_secs()),
        );
        let props = msg
            .properties()
            .clone()
            .with_headers(headers)
            .with_delivery_mode(2);
        self.publish("", dead_letter_queue, msg.body(), props, true)
            .await
    }

    async fn declare_wait_queue(
        &self,
        work_queue: &str,
        wait_queue: &str,
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
        let mut args = FieldTable::default();
        args.insert(
            "x-message-ttl".into(),
            AMQPValue::LongLongInt(delay.as_millis() as i64),
        );
        args.insert(
            "x-dead-letter-exchange".into(),
            AMQPValue::LongString("".into()),
        );
        args.insert(
            "x-dead-letter-routing-key".into(),
            AMQPValue::LongString(work_queue.into()),
        );
        let opts = QueueDeclareOptions {
            durable: true,
            ..QueueDeclareOptions::default()
        };
        let what = || format!("declaring wait queue {wait_queue:?}");
        let declare = self.channel.queue_declare(wait_queue.into(), opts, args);
        bounded(what, CALL_TIMEOUT, declare).await?;
        self.declared
            .lock()
            .expect("declared set lock")
            .insert(wait_queue.to_string());
        Ok(())
    }
}

/// The headers of `msg` to carry onto a retry or dead-letter copy: the
/// publisher's own, without the broker's `x-death` trail.
fn carried_headers(msg: &Inbound) -> FieldTable {
    let mut t = FieldTable::default();
    if let Some(h) = msg.properties().headers() {
        for (k, v) in h.inner() {
            if k.as_str() != "x-death" {
                t.insert(k.clone(), v.clone());
            }
        }
    }
    t
}
