//! The quarantine: moving deliveries the AMQP client cannot parse out of
//! the way, so that one of them cannot stop a queue.
//!
//! lapin treats a frame it cannot parse (a short string that is not UTF-8
//! in a property, a header name or the routing key) as fatal: it closes the
//! connection before warren sees the delivery, the broker returns the
//! message to the queue, and the next connection receives it again. When a
//! connection was lost that way ([`super::Broker::lost_to_unparseable_frame`]),
//! the supervisor runs [`sweep`] before it consumes again: a short AMQP
//! 0-9-1 session of its own over TCP that `basic.get`s (unacked) up to a
//! bound of messages from the head of each handler's queue and checks each
//! `get-ok` and content header with the client's own parser
//! ([`check`]). An unparseable message is published to the handler's
//! dead-letter queue with well-formed properties (confirmed, mandatory)
//! and then acked; the parseable ones are never acked and return to the
//! queue, in their order, when the session closes.
//!
//! The bound per queue is `channels × prefetch + 16` (the caller computes
//! it): what the client could have had delivered when it failed, plus
//! room for what other consumers took meanwhile. A bad message further
//! back is found on a later loss.
//!
//! Every read and write has a timeout and the whole sweep a deadline; a
//! failure ends the sweep with what it did so far, and never the host.
//! TLS (`amqps`) is not supported yet: the sweep says so and skips. It
//! does not count metrics or log per message: it returns a [`Summary`].

mod check;
mod session;

use std::time::{Duration, Instant};

use amq_protocol::uri::{AMQPScheme, AMQPUri};

use super::{H_ERROR_KIND, H_FAILED_AT, H_HANDLER, H_HOST, H_REASON};
use session::{Got, Session};

/// Dead-letter header: the message's properties as they came (flags and
/// fields, the bytes the client could not parse), when they fit.
pub const H_RAW_PROPERTIES: &str = "x-warren-raw-properties";
/// Dead-letter header: the queue the message was taken from.
pub const H_QUEUE: &str = "x-warren-queue";
/// The `x-warren-error-kind` of a quarantined message.
pub const KIND: &str = "unparseable";

/// Messages looked at per queue beyond `channels × prefetch`.
pub const EXTRA: u32 = 16;
/// The longest any one step (connect, a read, a write) may take.
const STEP: Duration = Duration::from_secs(5);
/// The longest the whole sweep may take.
const DEADLINE: Duration = Duration::from_secs(60);

/// One handler's queue to sweep.
#[derive(Debug, Clone)]
pub struct Target {
    pub handler: String,
    pub queue: String,
    pub dead_letter_queue: String,
    /// At most this many messages are looked at.
    pub bound: u32,
}

/// One message moved to its dead-letter queue.
#[derive(Debug, Clone)]
pub struct Quarantined {
    pub handler: String,
    pub queue: String,
    pub delivery_tag: u64,
    pub reason: String,
}

/// What a sweep did.
#[derive(Debug, Default)]
pub struct Summary {
    pub quarantined: Vec<Quarantined>,
    /// Messages looked at, parseable or not.
    pub inspected: u64,
    /// Why the sweep ended early or did not run, if it did.
    pub error: Option<String>,
}

/// Sweeps `targets` over a session of its own to the broker at `url`, as
/// host `host`. Runs on a thread of its own with the stack the client's
/// parser needs for deep headers (see [`super::limits::THREAD_STACK_BYTES`]).
pub async fn sweep(url: &str, host: &str, targets: Vec<Target>) -> Summary {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let (url, host) = (url.to_string(), host.to_string());
    let spawned = std::thread::Builder::new()
        .name("warren-quarantine".into())
        .stack_size(super::limits::THREAD_STACK_BYTES)
        .spawn(move || {
            let _ = tx.send(sweep_blocking(&url, &host, &targets));
        });
    if let Err(e) = spawned {
        return Summary {
            error: Some(format!("cannot start the quarantine thread: {e}")),
            ..Summary::default()
        };
    }
    rx.await.unwrap_or_else(|_| Summary {
        error: Some("the quarantine thread ended without a summary".into()),
        ..Summary::default()
    })
}

fn sweep_blocking(url: &str, host: &str, targets: &[Target]) -> Summary {
    let mut summary = Summary::default();
    let uri = match url.parse::<AMQPUri>() {
        Ok(u) => u,
        Err(e) => {
            summary.error = Some(format!("the AMQP URL does not parse: {e}"));
            return summary;
        }
    };
    if uri.scheme == AMQPScheme::AMQPS {
        summary.error = Some(
            "the quarantine does not support amqps yet; an unparseable message stays in its queue"
                .into(),
        );
        return summary;
    }
    let deadline = Instant::now() + DEADLINE;
    let result = Session::open(&uri, host, STEP).and_then(|mut s| {
        for t in targets {
            sweep_queue(&mut s, t, host, deadline, &mut summary)?;
        }
        s.close();
        Ok(())
    });
    if let Err(e) = result {
        summary.error = Some(e);
    }
    summary
}

/// Looks at up to `t.bound` messages of `t.queue`.
fn sweep_queue(
    s: &mut Session,
    t: &Target,
    host: &str,
    deadline: Instant,
    summary: &mut Summary,
) -> Result<(), String> {
    s.declare(&t.dead_letter_queue)?;
    for _ in 0..t.bound {
        if Instant::now() > deadline {
            return Err(format!(
                "the sweep took longer than {}s; stopped in queue {:?}",
                DEADLINE.as_secs(),
                t.queue
            ));
        }
        let Some(got) = s.get(&t.queue)? else {
            break;
        };
        summary.inspected += 1;
        let verdict = check::get_ok(&got.method).and_then(|()| check::content_header(&got.header));
        let Err(reason) = verdict else {
            continue;
        };
        let headers = dead_letter_headers(t, host, &reason, &got, s.frame_max());
        s.publish_confirmed(&t.dead_letter_queue, &got.body, headers)?;
        s.ack(got.delivery_tag)?;
        summary.quarantined.push(Quarantined {
            handler: t.handler.clone(),
            queue: t.queue.clone(),
            delivery_tag: got.delivery_tag,
            reason,
        });
    }
    Ok(())
}

/// Warren's headers on a quarantined copy, with the raw properties when
/// the header frame they make fits `frame_max`.
fn dead_letter_headers(
    t: &Target,
    host: &str,
    reason: &str,
    got: &Got,
    frame_max: usize,
) -> amq_protocol::types::FieldTable {
    use amq_protocol::types::{AMQPValue, ByteArray, FieldTable};
    let text = |s: &str| AMQPValue::LongString(s.into());
    let mut h = FieldTable::default();
    h.insert(H_ERROR_KIND.into(), text(KIND));
    h.insert(H_REASON.into(), text(&super::limits::cap_reason(reason)));
    h.insert(H_HANDLER.into(), text(&t.handler));
    h.insert(H_HOST.into(), text(host));
    h.insert(H_QUEUE.into(), text(&t.queue));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    h.insert(H_FAILED_AT.into(), AMQPValue::Timestamp(now.as_secs()));
    // The frame: 8 bytes of framing, 14 of class, weight, size and flags,
    // the delivery mode, the table's length, ours and the raw entry.
    let ours: usize = h
        .inner()
        .iter()
        .map(|(k, v)| super::limits::entry_size(k.as_str(), v))
        .sum();
    let raw = got.raw_properties();
    let raw_entry = 1 + H_RAW_PROPERTIES.len() + 1 + 4 + raw.len();
    if 8 + 14 + 1 + 4 + ours + raw_entry <= frame_max {
        h.insert(
            H_RAW_PROPERTIES.into(),
            AMQPValue::ByteArray(ByteArray::from(raw.to_vec())),
        );
    }
    h
}
