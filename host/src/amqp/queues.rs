//! The arguments of every queue warren declares, in one place: the work
//! queue, its dead-letter queue and its wait queues, for classic and quorum
//! queues. A queue's arguments are fixed when it is created, and the broker
//! refuses a declaration with other ones (406 PRECONDITION_FAILED), so what
//! is declared here is part of the deployed state: a change is a migration
//! (docs/semantics.md, "Queue types").
//!
//! Quorum queues throughout: a work queue that survives a node loses
//! nothing if its wait and dead-letter queues survive it too. Their
//! dead-lettering is `at-least-once` (which needs `x-overflow:
//! reject-publish`): the broker moves a message to the dead-letter target
//! only once that queue confirmed it, where the default (`at-most-once`)
//! drops it if the target is unavailable.

use std::time::Duration;

use lapin::types::{AMQPValue, FieldTable};

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

/// `x-queue-type` and what every quorum queue of warren's carries.
fn base(kind: QueueKind) -> FieldTable {
    let mut args = FieldTable::default();
    if let QueueKind::Quorum { .. } = kind {
        args.insert("x-queue-type".into(), text("quorum"));
    }
    args
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
    fn a_classic_work_queue_has_no_arguments() {
        let args = work_queue(&topology(QueueKind::Classic, false));
        assert!(args.inner().is_empty(), "{args:?}");
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
