//! The confirm-mode publishing channel: guest outputs, delayed retries and
//! dead-letters. Every publish is persistent and waits for the broker's
//! confirm; outputs are mandatory, so an unroutable one is an error rather
//! than a silent drop.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lapin::Confirmation;
use lapin::options::{
    BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Connection, ExchangeKind};

use super::consumer::Inbound;
use super::{
    H_ATTEMPT, H_ERROR_KIND, H_EXCHANGE, H_FAILED_AT, H_HANDLER, H_HOST, H_MODULE, H_REASON,
    H_ROUTING_KEY, Probed,
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
    #[error("publish failed: {0}")]
    Amqp(#[from] lapin::Error),
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
    /// Exchanges an output went to and the broker knows, on this
    /// connection. A publish to an exchange that does not exist makes the
    /// broker close the channel (404), which would take every other
    /// publish on it down too; each is checked once, on a channel of its
    /// own, before the first output to it.
    exchanges: Arc<Mutex<HashSet<String>>>,
    /// Exchanges being checked or found missing: the broker's 404 on the
    /// throwaway channel reaches the connection's event stream, and the
    /// broker must know it is not a lost connection.
    probed: Probed,
    conn: Arc<Connection>,
}

impl Publisher {
    pub(super) async fn open(conn: &Arc<Connection>, probed: Probed) -> Result<Self, lapin::Error> {
        let channel = conn.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        Ok(Self {
            channel,
            declared: Arc::default(),
            exchanges: Arc::default(),
            probed,
            conn: conn.clone(),
        })
    }

    /// Closes the channel and waits for the broker to confirm, so the
    /// connection can close after it cleanly.
    pub async fn close(&self) {
        if self.channel.status().connected() {
            let _ = self.channel.close(200, "warren shutting down".into()).await;
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
        let confirm = self
            .channel
            .basic_publish(ex, rk, opts, body, properties)
            .await?
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

    /// Publishes an output, with `properties` as the caller built them
    /// and, in `x-warren-module`, the digest of the module version that
    /// produced it. Mandatory: an unroutable output is an error.
    pub async fn output(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        properties: BasicProperties,
        module: &str,
    ) -> Result<(), PublishError> {
        self.check_exchange(exchange).await?;
        let mut headers = properties.headers().clone().unwrap_or_default();
        headers.insert(H_MODULE.into(), AMQPValue::LongString(module.into()));
        let props = properties.with_headers(headers);
        self.publish(exchange, routing_key, body, props, true).await
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
        headers.insert(H_HANDLER.into(), text(dl.handler));
        headers.insert(H_ERROR_KIND.into(), text(dl.kind));
        headers.insert(H_REASON.into(), text(dl.reason));
        headers.insert(H_ATTEMPT.into(), AMQPValue::LongLongInt(dl.attempt as i64));
        if let Some(m) = dl.module {
            headers.insert(H_MODULE.into(), text(m));
        }
        headers.insert(H_HOST.into(), text(dl.host));
        headers.insert(H_EXCHANGE.into(), text(&msg.original_exchange()));
        headers.insert(H_ROUTING_KEY.into(), text(&msg.original_routing_key()));
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        headers.insert(H_FAILED_AT.into(), AMQPValue::Timestamp(now.as_secs()));
        let props = msg
            .properties()
            .clone()
            .with_headers(headers)
            .with_delivery_mode(2);
        self.publish("", dead_letter_queue, msg.body(), props, true)
            .await
    }

    /// Makes sure `exchange` exists before anything is published to it:
    /// once per connection, with a passive declare on a throwaway channel,
    /// so that a missing one fails this output alone (the broker closes
    /// the throwaway channel, not the publishing one).
    async fn check_exchange(&self, exchange: &str) -> Result<(), PublishError> {
        let known =
            |set: &Mutex<HashSet<String>>| set.lock().expect("exchanges lock").contains(exchange);
        if exchange.is_empty() || known(&self.exchanges) {
            return Ok(());
        }
        let name = ShortString::try_new(exchange)
            .map_err(|_| PublishError::Invalid("exchange name is longer than 255 bytes".into()))?;
        let ch = self.conn.create_channel().await?;
        // Marked before the check, whose 404 may reach the connection's
        // event stream before the check returns; unmarked only when it
        // exists (then no 404 comes).
        self.probed
            .lock()
            .expect("probed exchanges lock")
            .insert(exchange.to_string());
        let opts = ExchangeDeclareOptions {
            passive: true,
            ..ExchangeDeclareOptions::default()
        };
        let checked = ch
            .exchange_declare(name, ExchangeKind::Direct, opts, FieldTable::default())
            .await;
        match checked {
            Ok(()) => {
                let _ = ch.close(200, "exchange checked".into()).await;
                self.probed
                    .lock()
                    .expect("probed exchanges lock")
                    .remove(exchange);
                self.exchanges
                    .lock()
                    .expect("exchanges lock")
                    .insert(exchange.to_string());
                Ok(())
            }
            // The broker closed the throwaway channel with it.
            Err(e) if not_found(&e) => Err(PublishError::NoExchange {
                exchange: exchange.into(),
            }),
            Err(e) => {
                if ch.status().connected() {
                    let _ = ch.close(200, "exchange check failed".into()).await;
                }
                Err(e.into())
            }
        }
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
        self.channel
            .queue_declare(wait_queue.into(), opts, args)
            .await?;
        self.declared
            .lock()
            .expect("declared set lock")
            .insert(wait_queue.to_string());
        Ok(())
    }
}

/// Whether the broker answered 404 (no such exchange or queue).
fn not_found(e: &lapin::Error) -> bool {
    matches!(e.kind(), lapin::ErrorKind::ProtocolError(amqp) if amqp.get_id() == 404)
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
