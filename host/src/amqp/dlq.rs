//! A dead-letter queue as an operator works it: read every message without
//! taking it (`basic.get` without an ack, so each stays the broker's until
//! this session acks it or ends), and move chosen ones back to the work
//! queue.
//!
//! A move publishes the copy with a confirm and acks the dead-lettered
//! original only once the broker confirmed the copy. Killed between the
//! two, the original comes back to the dead-letter queue (the broker
//! requeues what a closed channel left unacked) beside its copy in the work
//! queue: a duplicate, which dedup and the deterministic output ids absorb,
//! never a loss. Messages read but not moved go back, in their order, when
//! the session closes.
//!
//! It does not decide which messages to move: `crate::dlq` filters and
//! reports.

use std::collections::BTreeMap;
use std::time::Duration;

use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions,
    QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldArray, FieldTable, ShortString};
use lapin::uri::AMQPUri;
use lapin::{Channel, Confirmation, Connection, ConnectionProperties};

use super::bookkeeping::{H_SIG, Key, Values, value_text};
use super::copies::{carried_from, other_properties_size, without_headers};
use super::limits::{BROKER_HEADER_RESERVE, cap_text, depth, header_budget, table_size};
use super::{
    CALL_TIMEOUT, CONFIRM_TIMEOUT, CONNECT_TIMEOUT, Error, H_ATTEMPT, H_DROPPED_HEADERS,
    H_ERROR_KIND, H_EXCHANGE, H_FAILED_AT, H_HANDLER, H_HOST, H_MODULE, H_REASON, H_ROUTING_KEY,
    HEARTBEAT_SECS, PublishError, bounded,
};

/// Header: a replayed message's earlier dead-letterings, oldest first, each
/// a table of `handler`, `error-kind`, `reason`, `module`, `attempt`,
/// `host`, `failed-at` and `replayed-at`. A replay appends one entry; a
/// dead-letter copy carries the list over, so a message that fails again
/// shows every failure.
pub const H_HISTORY: &str = "x-warren-history";
/// The most entries [`H_HISTORY`] keeps (the oldest go first).
pub const MAX_HISTORY: usize = 8;
/// The longest reason one history entry keeps, in bytes.
const HISTORY_REASON_BYTES: usize = 256;
/// The largest [`H_HISTORY`] value a dead-letter copy carries over: one
/// that a publisher forged larger is left off.
pub const MAX_HISTORY_BYTES: usize = MAX_HISTORY * (HISTORY_REASON_BYTES + 512);

/// One earlier dead-lettering of a message, from [`H_HISTORY`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Past {
    pub handler: Option<String>,
    pub kind: Option<String>,
    pub reason: Option<String>,
    pub module: Option<String>,
    pub attempt: Option<u32>,
    pub host: Option<String>,
    pub failed_at: Option<u64>,
    pub replayed_at: Option<u64>,
}

/// A dead-lettered message as warren wrote it, decoded: what `warren dlq`
/// filters on and prints.
#[derive(Debug, Clone, Default)]
pub struct Record {
    pub message_id: Option<String>,
    pub handler: Option<String>,
    pub kind: Option<String>,
    pub reason: Option<String>,
    pub module: Option<String>,
    pub host: Option<String>,
    /// The attempt that failed last.
    pub attempt: Option<u32>,
    /// Seconds since the Unix epoch.
    pub failed_at: Option<u64>,
    /// Where the message was first published.
    pub exchange: Option<String>,
    pub routing_key: Option<String>,
    /// Inbound headers left off the copy to fit it in a frame.
    pub dropped_headers: Option<String>,
    pub history: Vec<Past>,
    /// The other properties that are set, by AMQP name.
    pub properties: Vec<(&'static str, String)>,
    /// The publisher's own headers, rendered as text.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// Whether the broker had delivered it before (a browse that ended
    /// without moving it counts).
    pub redelivered: bool,
}

/// A dead-lettered message this session holds (read, not yet acked).
#[derive(Debug)]
pub struct Parked {
    delivery: Delivery,
}

impl Parked {
    /// The message, decoded.
    pub fn record(&self) -> Record {
        let d = &self.delivery;
        let p = &d.properties;
        let empty = FieldTable::default();
        let h = p.headers().as_ref().unwrap_or(&empty).inner();
        let text = |name: &str| h.get(name).and_then(value_text);
        let mut headers = Vec::new();
        for (k, v) in h {
            if k.as_str().starts_with(super::INTERNAL_PREFIX) {
                continue;
            }
            headers.push((k.to_string(), render(v)));
        }
        Record {
            message_id: p.message_id().as_ref().map(|s| s.to_string()),
            handler: text(H_HANDLER),
            kind: text(H_ERROR_KIND),
            reason: text(H_REASON),
            module: text(H_MODULE),
            host: text(H_HOST),
            attempt: text(H_ATTEMPT).and_then(|a| a.parse().ok()),
            failed_at: h.get(H_FAILED_AT).and_then(seconds),
            exchange: text(H_EXCHANGE),
            routing_key: text(H_ROUTING_KEY),
            dropped_headers: text(H_DROPPED_HEADERS),
            history: h.get(H_HISTORY).map(history_of).unwrap_or_default(),
            properties: properties_of(p),
            headers,
            body: d.data.clone(),
            redelivered: d.redelivered,
        }
    }
}

/// A session on one dead-letter queue: a channel that reads it and acks
/// what was moved, and a confirm-mode channel that publishes the moves.
#[derive(Debug)]
pub struct DeadLetterQueue {
    conn: Connection,
    browse: Channel,
    publish: Channel,
    queue: String,
    key: Key,
    frame_max: usize,
}

impl DeadLetterQueue {
    /// Connects (the connection named `name`, for `rabbitmqctl
    /// list_connections`) and checks that `queue` exists; returns the
    /// session and how many messages the queue holds ready. `key` signs the
    /// bookkeeping of the moved copies, as the hosts of the group do.
    pub async fn open(
        url: &str,
        name: &str,
        queue: &str,
        key: Key,
    ) -> Result<(DeadLetterQueue, u32), Error> {
        let mut uri: AMQPUri = url.parse().map_err(Error::Url)?;
        if uri.query.heartbeat.is_none() {
            uri.query.heartbeat = Some(HEARTBEAT_SECS);
        }
        let (host, port) = (uri.authority.host.clone(), uri.authority.port);
        let props = ConnectionProperties::default().with_connection_name(name.into());
        let conn = bounded(
            || format!("connecting to {host}:{port}"),
            CONNECT_TIMEOUT,
            Connection::connect_uri(uri, props),
        )
        .await?;
        let what = || format!("opening the channels on dead-letter queue {queue:?}");
        let (browse, publish, ready) = bounded(what, CALL_TIMEOUT, async {
            let browse = conn.create_channel().await?;
            let passive = QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            };
            let q = browse
                .queue_declare(queue.into(), passive, FieldTable::default())
                .await?;
            let publish = conn.create_channel().await?;
            publish
                .confirm_select(ConfirmSelectOptions::default())
                .await?;
            Ok::<_, lapin::Error>((browse, publish, q.message_count()))
        })
        .await?;
        let frame_max = match conn.configuration().frame_max() {
            0 => u32::MAX as usize,
            n => n as usize,
        };
        Ok((
            DeadLetterQueue {
                conn,
                browse,
                publish,
                queue: queue.to_string(),
                key,
                frame_max,
            },
            ready,
        ))
    }

    /// The next message of the queue, held unacked; `None` when the queue
    /// has no more ready.
    pub async fn next(&self) -> Result<Option<Parked>, Error> {
        let what = || format!("basic.get on dead-letter queue {:?}", self.queue);
        let get = self.browse.basic_get(
            self.queue.as_str().into(),
            BasicGetOptions { no_ack: false },
        );
        let got = bounded(what, CALL_TIMEOUT, get).await?;
        Ok(got.map(|m| Parked {
            delivery: m.delivery,
        }))
    }

    /// Publishes `p` to `work_queue` (through the default exchange) as a
    /// first attempt, keeping its message id, its properties and its
    /// publisher's headers, signing its first exchange and routing key
    /// again and adding this dead-lettering to its history; acks the
    /// dead-lettered original once the broker confirmed the copy.
    pub async fn replay(
        &self,
        p: Parked,
        work_queue: &str,
        now: u64,
    ) -> Result<(), (Parked, PublishError)> {
        match self.publish_copy(&p, work_queue, now).await {
            Ok(()) => {}
            Err(e) => return Err((p, e)),
        }
        let what = || format!("acking a moved message on {:?}", self.queue);
        let ack = p.delivery.acker.ack(BasicAckOptions::default());
        match bounded(what, CALL_TIMEOUT, ack).await {
            Ok(true) => Ok(()),
            // The channel is gone: the original goes back to the queue
            // beside its copy (a duplicate, not a loss).
            Ok(false) => Err((
                p,
                PublishError::Invalid(
                    "the dead-letter queue's channel closed before the ack".into(),
                ),
            )),
            Err(e) => Err((p, PublishError::from(e))),
        }
    }

    async fn publish_copy(
        &self,
        p: &Parked,
        work_queue: &str,
        now: u64,
    ) -> Result<(), PublishError> {
        let d = &p.delivery;
        let rec = p.record();
        let exchange = rec.exchange.clone().unwrap_or_default();
        let routing_key = rec
            .routing_key
            .clone()
            .unwrap_or_else(|| work_queue.to_string());
        let (carried, _) = carried_from(d.properties.headers().as_ref());
        let mut headers = FieldTable::from(carried);
        let sig = self.key.sign(&Values {
            attempt: 1,
            exchange: &exchange,
            routing_key: &routing_key,
            message_id: rec.message_id.as_deref(),
            body: &d.data,
        });
        let text = |s: &str| AMQPValue::LongString(s.into());
        headers.insert(H_ATTEMPT.into(), AMQPValue::LongLongInt(1));
        headers.insert(H_EXCHANGE.into(), text(&exchange));
        headers.insert(H_ROUTING_KEY.into(), text(&routing_key));
        headers.insert(H_SIG.into(), text(&sig));
        let mut history = rec.history.clone();
        history.push(Past {
            handler: rec.handler.clone(),
            kind: rec.kind.clone(),
            reason: rec
                .reason
                .as_deref()
                .map(|r| cap_text(r, HISTORY_REASON_BYTES).into_owned()),
            module: rec.module.clone(),
            attempt: rec.attempt,
            host: rec.host.clone(),
            failed_at: rec.failed_at,
            replayed_at: Some(now),
        });
        let props = without_headers(&d.properties).with_delivery_mode(2);
        let budget = header_budget(self.frame_max, other_properties_size(&props))
            .saturating_sub(BROKER_HEADER_RESERVE);
        let start = history.len().saturating_sub(MAX_HISTORY);
        let mut history = history.split_off(start);
        loop {
            let mut with = headers.clone();
            with.insert(H_HISTORY.into(), history_value(&history));
            if table_size(&with) <= budget {
                headers = with;
                break;
            }
            if history.len() <= 1 {
                return Err(PublishError::TooLarge(format!(
                    "the replayed copy needs {} bytes of headers; at most {budget} fit in a frame",
                    table_size(&with)
                )));
            }
            history.remove(0);
        }
        let opts = BasicPublishOptions {
            mandatory: true,
            ..BasicPublishOptions::default()
        };
        let rk = ShortString::try_new(work_queue)
            .map_err(|_| PublishError::Invalid("queue name is longer than 255 bytes".into()))?;
        let what = || format!("the confirm of a replay to work queue {work_queue:?}");
        let props = props.with_headers(headers);
        let confirm = bounded(what, CONFIRM_TIMEOUT, async {
            self.publish
                .basic_publish("".into(), rk, opts, &d.data, props)
                .await?
                .await
        })
        .await?;
        match confirm {
            Confirmation::Ack(None) | Confirmation::NotRequested => Ok(()),
            Confirmation::Ack(Some(r)) => Err(PublishError::Unroutable {
                exchange: String::new(),
                routing_key: work_queue.into(),
                reply: format!("{} {}", r.reply_code, r.reply_text),
            }),
            Confirmation::Nack(_) => Err(PublishError::Nacked {
                exchange: String::new(),
                routing_key: work_queue.into(),
            }),
        }
    }

    /// Ends the session: whatever was read and not moved goes back to the
    /// queue. Waits at most `within` for the broker.
    pub async fn close(self, within: Duration) {
        let close = self.conn.close(200, "warren dlq done".into());
        if let Err(e) = bounded(|| "connection.close".into(), within, close).await {
            tracing::warn!(error = %e, "connection not closed cleanly; the broker requeues what it held");
        }
    }
}

/// The [`H_HISTORY`] of an inbound message to carry onto its dead-letter
/// copy: only a list of at most [`MAX_HISTORY`] flat tables within
/// [`MAX_HISTORY_BYTES`] (a publisher may have forged anything).
pub(super) fn carried_history(headers: Option<&FieldTable>) -> Option<AMQPValue> {
    let v = headers?.inner().get(H_HISTORY)?;
    let AMQPValue::FieldArray(a) = v else {
        return None;
    };
    let ok = a.as_slice().len() <= MAX_HISTORY
        && depth(v) <= 2
        && a.as_slice()
            .iter()
            .all(|e| matches!(e, AMQPValue::FieldTable(_)))
        && super::limits::value_size(v) <= MAX_HISTORY_BYTES;
    ok.then(|| v.clone())
}

fn history_value(entries: &[Past]) -> AMQPValue {
    let mut a = FieldArray::default();
    for e in entries {
        let mut t = FieldTable::default();
        let mut put = |k: &str, v: &Option<String>| {
            if let Some(v) = v {
                t.insert(k.into(), AMQPValue::LongString(v.as_str().into()));
            }
        };
        put("handler", &e.handler);
        put("error-kind", &e.kind);
        put("reason", &e.reason);
        put("module", &e.module);
        put("host", &e.host);
        if let Some(n) = e.attempt {
            t.insert("attempt".into(), AMQPValue::LongLongInt(n as i64));
        }
        if let Some(s) = e.failed_at {
            t.insert("failed-at".into(), AMQPValue::Timestamp(s));
        }
        if let Some(s) = e.replayed_at {
            t.insert("replayed-at".into(), AMQPValue::Timestamp(s));
        }
        a.push(AMQPValue::FieldTable(t));
    }
    AMQPValue::FieldArray(a)
}

fn history_of(v: &AMQPValue) -> Vec<Past> {
    let AMQPValue::FieldArray(a) = v else {
        return Vec::new();
    };
    a.as_slice()
        .iter()
        .filter_map(|e| match e {
            AMQPValue::FieldTable(t) => Some(t.inner()),
            _ => None,
        })
        .map(|t| {
            let text = |k: &str| t.get(k).and_then(value_text);
            Past {
                handler: text("handler"),
                kind: text("error-kind"),
                reason: text("reason"),
                module: text("module"),
                host: text("host"),
                attempt: text("attempt").and_then(|a| a.parse().ok()),
                failed_at: t.get("failed-at").and_then(seconds),
                replayed_at: t.get("replayed-at").and_then(seconds),
            }
        })
        .collect()
}

fn seconds(v: &AMQPValue) -> Option<u64> {
    match v {
        AMQPValue::Timestamp(s) => Some(*s),
        other => value_text(other)?.parse().ok(),
    }
}

/// A header value as one line of text: strings quoted, bytes in hex,
/// tables and arrays in braces and brackets.
fn render(v: &AMQPValue) -> String {
    let mut out = String::new();
    render_into(v, &mut out, 0);
    cap_text(&out, 2048).into_owned()
}

fn render_into(v: &AMQPValue, out: &mut String, level: usize) {
    use std::fmt::Write as _;
    if level > 8 {
        out.push('…');
        return;
    }
    match v {
        AMQPValue::LongString(s) => {
            let _ = write!(out, "{:?}", String::from_utf8_lossy(s.as_bytes()));
        }
        AMQPValue::ShortString(s) => {
            let _ = write!(out, "{:?}", s.as_str());
        }
        AMQPValue::ByteArray(b) => out.push_str(&hex::encode(b.as_slice())),
        AMQPValue::FieldArray(a) => {
            out.push('[');
            for (i, e) in a.as_slice().iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                render_into(e, out, level + 1);
            }
            out.push(']');
        }
        AMQPValue::FieldTable(t) => {
            out.push('{');
            for (i, (k, e)) in t.inner().iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                let _ = write!(out, "{}: ", k.as_str());
                render_into(e, out, level + 1);
            }
            out.push('}');
        }
        AMQPValue::Boolean(b) => {
            let _ = write!(out, "{b}");
        }
        AMQPValue::Timestamp(t) => {
            let _ = write!(out, "@{t}");
        }
        AMQPValue::Float(f) => {
            let _ = write!(out, "{f}");
        }
        AMQPValue::Double(f) => {
            let _ = write!(out, "{f}");
        }
        AMQPValue::Void => out.push_str("void"),
        other => match value_text(other) {
            Some(t) => out.push_str(&t),
            None => {
                let _ = write!(out, "{other:?}");
            }
        },
    }
}

fn properties_of(p: &lapin::BasicProperties) -> Vec<(&'static str, String)> {
    let mut out: BTreeMap<&'static str, String> = BTreeMap::new();
    let mut s = |name: &'static str, v: &Option<ShortString>| {
        if let Some(v) = v {
            out.insert(name, v.as_str().to_string());
        }
    };
    s("content-type", p.content_type());
    s("content-encoding", p.content_encoding());
    s("correlation-id", p.correlation_id());
    s("reply-to", p.reply_to());
    s("expiration", p.expiration());
    s("type", p.kind());
    s("user-id", p.user_id());
    s("app-id", p.app_id());
    if let Some(t) = p.timestamp() {
        out.insert("timestamp", t.to_string());
    }
    if let Some(m) = p.delivery_mode() {
        out.insert("delivery-mode", m.to_string());
    }
    if let Some(m) = p.priority() {
        out.insert("priority", m.to_string());
    }
    out.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn past(i: u64) -> Past {
        Past {
            handler: Some("h".into()),
            kind: Some("reject".into()),
            reason: Some(format!("failure {i}")),
            module: Some("sha256:ab".into()),
            attempt: Some(1),
            host: Some("host-1".into()),
            failed_at: Some(1_000 + i),
            replayed_at: Some(2_000 + i),
        }
    }

    #[test]
    fn history_round_trips_through_its_header_value() {
        let entries: Vec<Past> = (0..3).map(past).collect();
        assert_eq!(history_of(&history_value(&entries)), entries);
    }

    #[test]
    fn a_forged_history_is_not_carried() {
        let mut t = FieldTable::default();
        t.insert(H_HISTORY.into(), history_value(&[past(1)]));
        assert!(carried_history(Some(&t)).is_some());
        let many: Vec<Past> = (0..MAX_HISTORY as u64 + 1).map(past).collect();
        t.insert(H_HISTORY.into(), history_value(&many));
        assert!(carried_history(Some(&t)).is_none(), "too many entries");
        t.insert(H_HISTORY.into(), AMQPValue::LongString("x".into()));
        assert!(carried_history(Some(&t)).is_none(), "not a list");
        let mut a = FieldArray::default();
        a.push(AMQPValue::FieldArray(FieldArray::default()));
        t.insert(H_HISTORY.into(), AMQPValue::FieldArray(a));
        assert!(carried_history(Some(&t)).is_none(), "not tables");
        let mut big = FieldTable::default();
        big.insert(
            "reason".into(),
            AMQPValue::LongString("x".repeat(MAX_HISTORY_BYTES).into()),
        );
        let mut a = FieldArray::default();
        a.push(AMQPValue::FieldTable(big));
        t.insert(H_HISTORY.into(), AMQPValue::FieldArray(a));
        assert!(carried_history(Some(&t)).is_none(), "too large");
    }

    #[test]
    fn headers_render_on_one_line() {
        let mut t = FieldTable::default();
        t.insert("a".into(), AMQPValue::LongString("x\ny".into()));
        t.insert("n".into(), AMQPValue::LongLongInt(7));
        assert_eq!(render(&AMQPValue::FieldTable(t)), r#"{a: "x\ny", n: 7}"#);
    }
}
