//! The arguments of every queue warren declares, in one place: the work
//! queue, its dead-letter queue and its wait queues, for classic and quorum
//! queues. A queue's arguments are fixed when it is created, and the broker
//! refuses a declaration with other ones (406 PRECONDITION_FAILED), so what
//! is declared here is part of the deployed state: a change is a migration
//! (docs/semantics.md, "Queue types").
//!
//! Classic queues are declared as version 2 (`x-queue-version: 2`, RabbitMQ
//! 3.10 or later), which keeps a message's body on disk and only a small
//! index entry in memory where version 1 keeps every queued message in
//! memory up to a limit (BENCHMARKS.md, "Queue types"). A classic queue that
//! already exists as version 1 is kept as it is ([`declare`]): the version
//! is the one argument warren gives way on, because the broker can convert
//! a queue in place (a `queue-version` policy), which no other argument
//! allows.
//!
//! Quorum queues throughout: a work queue that survives a node loses
//! nothing if its wait and dead-letter queues survive it too. Their
//! dead-lettering is `at-least-once` (which needs `x-overflow:
//! reject-publish`): the broker moves a message to the dead-letter target
//! only once that queue confirmed it, where the default (`at-most-once`)
//! drops it if the target is unavailable.

use std::time::Duration;

use lapin::options::QueueDeclareOptions;
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Connection, Queue};

use super::{Error, declare_error};

/// What kind of queue a handler's queues are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueKind {
    Classic,
    /// Replicated over the cluster's nodes (Raft). `delivery_limit`: how
    /// many times a delivery may come back unsettled before the broker
    /// dead-letters it.
    Quorum {
        delivery_limit: u32,
    },
}

/// What to declare for one handler.
#[derive(Debug, Clone)]
pub struct Topology {
    pub queue: String,
    pub kind: QueueKind,
    /// Ordered mode: the work queue has a single active consumer, so one
    /// consumer in the whole group gets its messages, in order.
    pub single_active_consumer: bool,
    pub dead_letter_queue: String,
    pub bind: Option<Binding>,
}

#[derive(Debug, Clone)]
pub struct Binding {
    pub exchange: String,
    pub kind: crate::config::ExchangeType,
    pub routing_keys: Vec<String>,
}

fn text(s: &str) -> AMQPValue {
    AMQPValue::LongString(s.into())
}

/// The argument that makes a classic queue version 2.
pub(super) const VERSION: &str = "x-queue-version";

/// The broker's text for a declaration refused only over [`VERSION`].
pub(super) const VERSION_MISMATCH: &str = "inequivalent arg 'x-queue-version'";

/// `x-queue-type` for a quorum queue, `x-queue-version: 2` for a classic
/// one.
fn base(kind: QueueKind) -> FieldTable {
    let mut args = FieldTable::default();
    match kind {
        QueueKind::Quorum { .. } => args.insert("x-queue-type".into(), text("quorum")),
        QueueKind::Classic => args.insert(VERSION.into(), AMQPValue::LongInt(2)),
    };
    args
}

/// Queues of one connection that [`declare`] kept at another version than
/// warren's, with the arguments that declared them.
pub(super) type Kept =
    std::sync::Mutex<std::collections::HashMap<String, (FieldTable, &'static str)>>;

/// The one log line for a queue [`declare`] kept at another version.
pub(super) fn warn_kept(queue: &str, version: &str) {
    tracing::warn!(
        queue,
        version,
        "queue kept at its classic queue version: warren declares version 2, which holds less in memory; a policy with queue-version 2 converts it in place (docs/semantics.md, \"Queue types\")"
    );
}

/// Declares the durable `queue` with `args`, each try on a channel of its
/// own (a refused declaration closes its channel). When the queue exists
/// with another classic queue version than `args` asks for (a queue created
/// by an earlier warren, or by hand, as version 1), it is declared again as
/// it is: without the version, then as version 1 if it says so
/// explicitly. Any other difference is [`Error::Mismatch`]. Returns the
/// queue (its message count) and the version it was found with, when that
/// was not the one asked for.
///
/// `kept` remembers, for the connection, the queues found at another
/// version and the arguments that declared them, so that declaring one again
/// (each dead-letter depth reading, say) takes one try, not a refusal first.
pub(super) async fn declare(
    conn: &Connection,
    kept: &Kept,
    queue: &str,
    args: FieldTable,
) -> Result<(Queue, Option<&'static str>), Error> {
    let durable = QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    };
    let known = kept.lock().expect("kept queues lock").get(queue).cloned();
    let mut tries: Vec<(FieldTable, Option<&'static str>)> = match known {
        Some((args, found)) => vec![(args, Some(found))],
        None => vec![(args.clone(), None)],
    };
    if tries[0].1.is_none() && args.inner().contains_key(VERSION) {
        let without: FieldTable = args
            .inner()
            .iter()
            .filter(|(k, _)| k.as_str() != VERSION)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect::<std::collections::BTreeMap<_, _>>()
            .into();
        let mut one = without.clone();
        one.insert(VERSION.into(), AMQPValue::LongInt(1));
        tries.push((without, Some("1 (no x-queue-version)")));
        tries.push((one, Some("1")));
    }
    let mut last = None;
    for (args, found) in tries {
        let ch = conn.create_channel().await?;
        match ch.queue_declare(queue.into(), durable, args.clone()).await {
            Ok(q) => {
                let _ = ch.close(200, "declared".into()).await;
                if let Some(found) = found {
                    kept.lock()
                        .expect("kept queues lock")
                        .insert(queue.to_string(), (args, found));
                }
                return Ok((q, found));
            }
            Err(e) => match declare_error(queue, e) {
                Error::Mismatch { broker, .. } if broker.contains(VERSION_MISMATCH) => {
                    last = Some(broker);
                }
                other => return Err(other),
            },
        }
    }
    Err(Error::Mismatch {
        queue: queue.to_string(),
        broker: last.unwrap_or_default(),
    })
}

/// Dead-letters from a quorum queue into `target` (on the default
/// exchange), at least once.
fn dead_letter_to(args: &mut FieldTable, kind: QueueKind, target: &str) {
    args.insert("x-dead-letter-exchange".into(), text(""));
    args.insert("x-dead-letter-routing-key".into(), text(target));
    if let QueueKind::Quorum { .. } = kind {
        args.insert("x-dead-letter-strategy".into(), text("at-least-once"));
        args.insert("x-overflow".into(), text("reject-publish"));
    }
}

/// The work queue's arguments. A quorum work queue has a delivery limit
/// past which the broker dead-letters a message to the dead-letter queue:
/// a message that keeps killing its consumer ends there instead of
/// looping.
pub fn work_queue(t: &Topology) -> FieldTable {
    let mut args = base(t.kind);
    if let QueueKind::Quorum { delivery_limit } = t.kind {
        args.insert(
            "x-delivery-limit".into(),
            AMQPValue::LongLongInt(i64::from(delivery_limit)),
        );
        dead_letter_to(&mut args, t.kind, &t.dead_letter_queue);
    }
    if t.single_active_consumer {
        args.insert("x-single-active-consumer".into(), AMQPValue::Boolean(true));
    }
    args
}

/// The dead-letter queue's arguments.
pub fn dead_letter_queue(kind: QueueKind) -> FieldTable {
    base(kind)
}

/// A wait queue's arguments: its messages expire after `delay` and the
/// broker dead-letters them back to `work_queue`.
pub fn wait_queue(kind: QueueKind, work_queue: &str, delay: Duration) -> FieldTable {
    let mut args = base(kind);
    args.insert(
        "x-message-ttl".into(),
        AMQPValue::LongLongInt(delay.as_millis() as i64),
    );
    dead_letter_to(&mut args, kind, work_queue);
    args
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topology(kind: QueueKind, sac: bool) -> Topology {
        Topology {
            queue: "orders".into(),
            kind,
            single_active_consumer: sac,
            dead_letter_queue: "orders.dead".into(),
            bind: None,
        }
    }

    fn get<'a>(args: &'a FieldTable, key: &str) -> Option<&'a AMQPValue> {
        args.inner().get(key)
    }

    #[test]
    fn a_classic_work_queue_is_version_2() {
        let args = work_queue(&topology(QueueKind::Classic, false));
        assert_eq!(args.inner().len(), 1, "{args:?}");
        assert_eq!(get(&args, VERSION), Some(&AMQPValue::LongInt(2)));
        let dead = dead_letter_queue(QueueKind::Classic);
        assert_eq!(get(&dead, VERSION), Some(&AMQPValue::LongInt(2)));
        let quorum = dead_letter_queue(QueueKind::Quorum { delivery_limit: 1 });
        assert_eq!(get(&quorum, VERSION), None);
    }

    #[test]
    fn a_quorum_work_queue_dead_letters_past_its_delivery_limit() {
        let q = QueueKind::Quorum { delivery_limit: 7 };
        let args = work_queue(&topology(q, true));
        assert_eq!(get(&args, "x-queue-type"), Some(&text("quorum")));
        assert_eq!(
            get(&args, "x-delivery-limit"),
            Some(&AMQPValue::LongLongInt(7))
        );
        assert_eq!(
            get(&args, "x-dead-letter-routing-key"),
            Some(&text("orders.dead"))
        );
        assert_eq!(
            get(&args, "x-dead-letter-strategy"),
            Some(&text("at-least-once"))
        );
        assert_eq!(
            get(&args, "x-single-active-consumer"),
            Some(&AMQPValue::Boolean(true))
        );
        assert_eq!(
            get(&dead_letter_queue(q), "x-queue-type"),
            Some(&text("quorum"))
        );
    }

    #[test]
    fn wait_queues_expire_back_into_the_work_queue() {
        for kind in [QueueKind::Classic, QueueKind::Quorum { delivery_limit: 3 }] {
            let args = wait_queue(kind, "orders", Duration::from_millis(1500));
            assert_eq!(
                get(&args, "x-message-ttl"),
                Some(&AMQPValue::LongLongInt(1500))
            );
            assert_eq!(
                get(&args, "x-dead-letter-routing-key"),
                Some(&text("orders"))
            );
            let quorum = get(&args, "x-queue-type").is_some();
            assert_eq!(quorum, kind != QueueKind::Classic);
            assert_eq!(get(&args, "x-dead-letter-strategy").is_some(), quorum);
        }
    }
}
