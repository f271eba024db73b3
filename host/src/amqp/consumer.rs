//! One consumer channel: `basic.qos` then `basic.consume`, deliveries handed
//! out one at a time as [`Inbound`], and their acks batched.
//!
//! Acks are the throughput limit of a consumer (one `basic.ack` per message
//! costs about 3x the broker's delivery rate), so settled deliveries are
//! acked with `multiple` up to the highest tag whose predecessors are all
//! settled, once 64 are ready or 5 ms after the first. A delivery to be
//! returned to the queue is nacked on its own first, since a later
//! `multiple` ack would otherwise cover it. Acks on a channel that died
//! send nothing (lapin answers `Ok(false)`); those deliveries come back.
//! A flush that the broker does not answer within [`CALL_TIMEOUT`] is given
//! up: what it did not ack stays unacked and comes back.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{FutureExt as _, StreamExt as _};
use lapin::Acker;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, Consumer};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::bookkeeping::{Bookkeeping, Key, value_text, verified};
use super::limits::too_deep;
use super::{CALL_TIMEOUT, ConsumerProbe, Error, bounded};

/// Acks ready to send before a flush is forced.
const ACK_BATCH: usize = 64;
/// The longest a settled delivery waits for its ack.
const ACK_DELAY: Duration = Duration::from_millis(5);

/// A consumer on one channel of its own.
#[derive(Debug)]
pub struct ConsumerChannel {
    channel: Channel,
    consumer: Consumer,
    tag: String,
    acks: mpsc::UnboundedSender<AckEvent>,
    /// Verifies the bookkeeping headers of each delivery.
    key: Arc<Key>,
    /// The stream ended or failed (seen by [`ConsumerChannel::try_next`]);
    /// it gives nothing more.
    ended: bool,
}

impl ConsumerChannel {
    /// Opens a channel, sets its prefetch, and starts consuming `queue`
    /// under consumer tag `tag`.
    pub async fn open(
        conn: &Connection,
        queue: &str,
        prefetch: u16,
        tag: &str,
        key: Arc<Key>,
    ) -> Result<Self, Error> {
        let what = || format!("opening consumer {tag} on queue {queue:?}");
        let (channel, consumer) = bounded(what, CALL_TIMEOUT, async {
            let channel = conn.create_channel().await?;
            // QoS before consume: without it the broker pushes the whole
            // queue to the first consumer and the group is not a group.
            channel
                .basic_qos(prefetch, BasicQosOptions::default())
                .await?;
            let consumer = channel
                .basic_consume(
                    queue.into(),
                    tag.into(),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await?;
            Ok::<_, lapin::Error>((channel, consumer))
        })
        .await?;
        let (tx, rx) = mpsc::unbounded_channel();
        // With a prefetch of one the broker sends the next delivery only
        // after this one's ack: holding it back would only add the delay.
        let batch = if prefetch == 1 { 1 } else { ACK_BATCH };
        tokio::spawn(ack_batcher(rx, tag.to_string(), batch));
        Ok(Self {
            channel,
            consumer,
            tag: tag.to_string(),
            acks: tx,
            key,
            ended: false,
        })
    }

    pub fn tag(&self) -> &str {
        &self.tag
    }

    /// A handle the supervisor polls to find this consumer's channel dead
    /// even when its stream says nothing.
    pub fn probe(&self) -> ConsumerProbe {
        ConsumerProbe {
            channel: self.channel.clone(),
            tag: self.tag.clone(),
        }
    }

    /// The next delivery, or `None` when the consumer ended (cancelled, or
    /// the channel or connection died).
    pub async fn next(&mut self) -> Option<Inbound> {
        if self.ended {
            return None;
        }
        let next = self.consumer.next().await;
        self.take(next)
    }

    /// A delivery that has already arrived, without waiting: how a batch
    /// takes what the broker sent while the previous one was being handled.
    pub fn try_next(&mut self) -> Option<Inbound> {
        if self.ended {
            return None;
        }
        let next = self.consumer.next().now_or_never()?;
        self.take(next)
    }

    fn take(&mut self, next: Option<Result<Delivery, lapin::Error>>) -> Option<Inbound> {
        match next {
            Some(Ok(delivery)) => {
                let _ = self.acks.send(AckEvent::Received(delivery.delivery_tag));
                let bookkeeping = verified(&delivery, &self.key);
                Some(Inbound {
                    delivery,
                    bookkeeping,
                    acks: self.acks.clone(),
                    settled: false,
                    copy_headers: Vec::new(),
                })
            }
            Some(Err(e)) => {
                tracing::warn!(consumer = %self.tag, error = %e, "consumer stream failed");
                self.ended = true;
                None
            }
            None => {
                self.ended = true;
                None
            }
        }
    }

    /// Stops the broker sending more deliveries to this consumer, waiting
    /// at most `within` for its answer. What was prefetched but not taken
    /// stays unacked and goes back to the queue when the channel closes.
    pub async fn cancel(&self, within: Duration) {
        if !self.channel.status().connected() {
            return;
        }
        let cancel = self
            .channel
            .basic_cancel(self.tag.as_str().into(), BasicCancelOptions::default());
        if let Err(e) = bounded(|| format!("basic.cancel of {}", self.tag), within, cancel).await {
            tracing::warn!(consumer = %self.tag, error = %e, "basic.cancel failed");
        }
    }

    /// Sends every ack that is ready, then closes the channel; the broker
    /// requeues whatever is still unacked. Waits at most `within` for each
    /// of the two: an ack or a close the broker does not answer is given up,
    /// and those deliveries come back.
    pub async fn close(self, within: Duration) {
        let (tx, rx) = oneshot::channel();
        if self.acks.send(AckEvent::Flush(tx)).is_ok()
            && tokio::time::timeout(within, rx).await.is_err()
        {
            tracing::warn!(consumer = %self.tag, within_ms = within.as_millis() as u64, "acks not flushed in time; the broker will redeliver those deliveries");
        }
        if self.channel.status().connected() {
            let close = self.channel.close(200, "consumer closed".into());
            if let Err(e) = bounded(
                || format!("channel.close of consumer {}", self.tag),
                within,
                close,
            )
            .await
            {
                tracing::warn!(consumer = %self.tag, error = %e, "consumer channel not closed cleanly");
            }
        }
    }
}

/// One delivery. Disposition it with [`Inbound::ack`] or [`Inbound::requeue`];
/// dropped unsettled, it is requeued.
#[derive(Debug)]
pub struct Inbound {
    delivery: Delivery,
    /// The bookkeeping headers, when their signature holds.
    bookkeeping: Option<Bookkeeping>,
    acks: mpsc::UnboundedSender<AckEvent>,
    settled: bool,
    /// Text headers that replace the delivery's own of the same name on
    /// its retry and dead-letter copies (the trace context of this attempt).
    copy_headers: Vec<(String, String)>,
}

impl Inbound {
    pub fn body(&self) -> &[u8] {
        &self.delivery.data
    }

    /// The broker's tag of this delivery: unique on its channel, so within
    /// a batch.
    pub fn delivery_tag(&self) -> u64 {
        self.delivery.delivery_tag
    }

    /// Sets header `name` to `value` on this delivery's retry and
    /// dead-letter copies, in place of the delivery's own.
    pub fn set_copy_header(&mut self, name: &str, value: String) {
        self.copy_headers.retain(|(n, _)| n != name);
        self.copy_headers.push((name.to_string(), value));
    }

    /// The headers [`Inbound::set_copy_header`] set.
    pub(super) fn copy_headers(&self) -> &[(String, String)] {
        &self.copy_headers
    }

    pub fn properties(&self) -> &BasicProperties {
        &self.delivery.properties
    }

    pub fn message_id(&self) -> Option<&str> {
        self.delivery
            .properties
            .message_id()
            .as_ref()
            .map(|s| s.as_str())
    }

    /// The broker's redelivered flag: this delivery may have been seen
    /// before.
    pub fn redelivered(&self) -> bool {
        self.delivery.redelivered
    }

    fn header(&self, name: &str) -> Option<&AMQPValue> {
        self.delivery
            .properties
            .headers()
            .as_ref()?
            .inner()
            .get(name)
    }

    /// A header as text: strings as they are, integers in decimal; other
    /// types have no text form and count as missing.
    pub fn header_text(&self, name: &str) -> Option<String> {
        value_text(self.header(name)?)
    }

    /// Why this delivery cannot be handed to a guest, if it cannot: a
    /// header nested deeper than the limit.
    pub fn unreadable(&self) -> Option<String> {
        let (name, depth) = too_deep(self.delivery.properties.headers().as_ref()?)?;
        Some(super::limits::too_deep_reason(&name, depth))
    }

    /// The attempt this delivery is: the signed `x-warren-attempt` a retry
    /// set, or 1.
    pub fn attempt(&self) -> u32 {
        self.bookkeeping.as_ref().map_or(1, |b| b.attempt)
    }

    /// Ordered mode: the delivery stays with this host, unacked, for another
    /// attempt in place; from now on it counts as attempt `attempt`. Kept
    /// in memory only: if the host dies, the broker's redelivery starts
    /// again from the attempt its headers say.
    pub fn retry_in_place(&mut self, attempt: u32) {
        let d = &self.delivery;
        let b = self.bookkeeping.get_or_insert_with(|| Bookkeeping {
            attempt: 1,
            exchange: d.exchange.to_string(),
            routing_key: d.routing_key.to_string(),
        });
        b.attempt = attempt;
    }

    /// The exchange the message was first published to: the signed
    /// `x-warren-exchange` of a retry, or the delivery's own.
    pub fn original_exchange(&self) -> String {
        match &self.bookkeeping {
            Some(b) => b.exchange.clone(),
            None => self.delivery.exchange.to_string(),
        }
    }

    /// The routing key the message was first published with.
    pub fn original_routing_key(&self) -> String {
        match &self.bookkeeping {
            Some(b) => b.routing_key.clone(),
            None => self.delivery.routing_key.to_string(),
        }
    }

    /// The exchange and routing key the broker delivered it with (for a
    /// retry, the default exchange and the work queue).
    pub fn delivered_via(&self) -> (&str, &str) {
        (
            self.delivery.exchange.as_str(),
            self.delivery.routing_key.as_str(),
        )
    }

    /// Done with it: acked with the next batch.
    pub fn ack(mut self) {
        self.settle(Disposition::Ack);
    }

    /// Back to the head of the queue now. Only for deliveries that were not
    /// worked on (shutdown, a paused dedup store, a lost lease): a failed
    /// handler is retried through a wait queue instead, never requeued hot.
    pub fn requeue(mut self) {
        self.settle(Disposition::Requeue);
    }

    fn settle(&mut self, how: Disposition) {
        self.settled = true;
        let _ = self.acks.send(AckEvent::Settled(
            self.delivery.delivery_tag,
            self.delivery.acker.clone(),
            how,
        ));
    }
}

impl Drop for Inbound {
    fn drop(&mut self) {
        if !self.settled {
            self.settle(Disposition::Requeue);
        }
    }
}

/// How the ack batcher is to settle a delivery with the broker.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Disposition {
    Ack,
    Requeue,
}

#[derive(Debug)]
enum AckEvent {
    Received(u64),
    Settled(u64, Acker, Disposition),
    Flush(oneshot::Sender<()>),
}

/// Keeps the channel's outstanding delivery tags in order and sends the
/// acks; ends when every sender (the consumer and its deliveries) is gone.
/// Every flush is bounded, so a dead connection whose ack futures never
/// resolve cannot wedge the batcher, nor [`ConsumerChannel::close`] behind it.
async fn ack_batcher(mut rx: mpsc::UnboundedReceiver<AckEvent>, tag: String, batch: usize) {
    let mut outstanding: BTreeMap<u64, Option<(Acker, Disposition)>> = BTreeMap::new();
    let mut ready = 0usize;
    let mut deadline: Option<Instant> = None;
    loop {
        let event = tokio::select! {
            ev = rx.recv() => ev,
            _ = sleep_until(deadline), if deadline.is_some() => {
                flush(&mut outstanding, &tag).await;
                (ready, deadline) = (0, None);
                continue;
            }
        };
        match event {
            None => {
                flush(&mut outstanding, &tag).await;
                return;
            }
            Some(AckEvent::Received(t)) => {
                outstanding.insert(t, None);
            }
            Some(AckEvent::Settled(t, acker, how)) => {
                outstanding.insert(t, Some((acker, how)));
                ready += 1;
                if how == Disposition::Requeue || ready >= batch {
                    flush(&mut outstanding, &tag).await;
                    (ready, deadline) = (0, None);
                } else if deadline.is_none() {
                    deadline = Some(Instant::now() + ACK_DELAY);
                }
            }
            Some(AckEvent::Flush(done)) => {
                flush(&mut outstanding, &tag).await;
                (ready, deadline) = (0, None);
                let _ = done.send(());
            }
        }
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    if let Some(d) = deadline {
        tokio::time::sleep_until(d).await;
    }
}

/// [`flush_unbounded`] for at most [`CALL_TIMEOUT`].
async fn flush(outstanding: &mut BTreeMap<u64, Option<(Acker, Disposition)>>, tag: &str) {
    if tokio::time::timeout(CALL_TIMEOUT, flush_unbounded(outstanding, tag))
        .await
        .is_err()
    {
        tracing::warn!(
            consumer = tag,
            timeout_ms = CALL_TIMEOUT.as_millis() as u64,
            "no answer from RabbitMQ to an ack or nack; the broker will redeliver what was not acked"
        );
    }
}

/// Settles the longest settled prefix of `outstanding`: one `multiple` ack
/// per run of acks, one nack per requeue.
async fn flush_unbounded(outstanding: &mut BTreeMap<u64, Option<(Acker, Disposition)>>, tag: &str) {
    let mut last_ack: Option<(u64, Acker)> = None;
    while let Some(entry) = outstanding.first_entry() {
        let Some((acker, how)) = entry.get().clone() else {
            break;
        };
        let t = *entry.key();
        entry.remove();
        match how {
            Disposition::Ack => last_ack = Some((t, acker)),
            Disposition::Requeue => {
                if let Some((t, a)) = last_ack.take() {
                    send_ack(&a, t, tag).await;
                }
                let opts = BasicNackOptions {
                    multiple: false,
                    requeue: true,
                };
                match acker.nack(opts).await {
                    Ok(true) => {}
                    Ok(false) => tracing::debug!(
                        consumer = tag,
                        delivery_tag = t,
                        "nack not sent: channel gone"
                    ),
                    Err(e) => {
                        tracing::warn!(consumer = tag, delivery_tag = t, error = %e, "nack failed")
                    }
                }
            }
        }
    }
    if let Some((t, a)) = last_ack {
        send_ack(&a, t, tag).await;
    }
}

async fn send_ack(acker: &Acker, delivery_tag: u64, tag: &str) {
    match acker.ack(BasicAckOptions { multiple: true }).await {
        Ok(true) => {}
        // The channel is gone: nothing was acked and the broker will
        // redeliver; never retry an ack on another channel.
        Ok(false) => tracing::warn!(
            consumer = tag,
            delivery_tag,
            "ack not sent: channel gone, the broker will redeliver"
        ),
        Err(e) => {
            tracing::warn!(consumer = tag, delivery_tag, error = %e, "ack failed, the broker will redeliver")
        }
    }
}
