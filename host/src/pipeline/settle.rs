//! Every way a message settles other than an ack after a successful run:
//! deferred while another owner holds its key, retried through a wait
//! queue, dead-lettered, or returned to the queue.
//!
//! The settlements of one batch run concurrently: each waits for its own
//! publish confirm, and none waits for another.

use std::time::Duration;

use futures_util::future::join_all;

use super::Pipeline;
use super::trace::Fate;
use crate::amqp::limits::cap_reason;
use crate::amqp::{DeadLetter, Inbound, PublishError, QueueKind};
use crate::retry;

/// How one message settles without an ack of its run.
#[derive(Debug)]
pub(super) enum Settle {
    /// Another owner holds the key: come back through a wait queue when it
    /// may have finished. Not an attempt.
    Defer(Duration),
    /// A failed attempt: retried through a wait queue after `delay` (or the
    /// backoff), or dead-lettered once attempts run out.
    Retry {
        delay: Option<Duration>,
        kind: &'static str,
        reason: String,
    },
    /// Straight to the dead-letter queue.
    DeadLetter { kind: &'static str, reason: String },
    /// Back to the queue after a pause: settling needed a step the broker or
    /// the dedup store refused, and an immediate requeue would spin
    /// (redpanda-data/connect#846).
    RequeueLater,
    /// Back to the queue now: it was not worked on (shutdown, a lost lease).
    Requeue,
}

/// Ordered mode: a message kept, unacked, to be run again by the same
/// host after `delay`, so that no later message overtakes it.
#[derive(Debug)]
pub(super) struct InPlace {
    pub msg: Inbound,
    pub delay: Duration,
}

impl Pipeline<'_> {
    /// Settles every message of `items`, concurrently. `module` is the
    /// digest of the version that ran them, if one did. Returns what an
    /// ordered handler retries in place instead.
    pub(super) async fn settle_all(
        &self,
        items: Vec<(Inbound, Settle)>,
        module: Option<&str>,
    ) -> Vec<InPlace> {
        join_all(
            items
                .into_iter()
                .map(|(msg, how)| self.settle_or_keep(msg, how, module)),
        )
        .await
        .into_iter()
        .flatten()
        .collect()
    }

    /// In ordered mode, a retry or a deferral waits in place: through a
    /// wait queue the message would come back behind the ones published
    /// after it.
    async fn settle_or_keep(
        &self,
        mut msg: Inbound,
        how: Settle,
        module: Option<&str>,
    ) -> Option<InPlace> {
        if !self.h.cfg.ordered {
            self.settle(msg, how, module).await;
            return None;
        }
        let attempt = msg.attempt();
        match how {
            Settle::Defer(remaining) => {
                let floor = Duration::from_millis(self.h.cfg.retry.backoff_ms);
                let delay = remaining.min(self.lease_ttl()).max(floor);
                self.h.metrics.deferred.inc();
                Some(InPlace { msg, delay })
            }
            Settle::Retry {
                delay,
                kind,
                reason,
            } if attempt < self.h.cfg.retry.max_attempts => {
                let delay = delay.unwrap_or_else(|| {
                    retry::backoff(&self.h.cfg.retry, attempt, rand::random::<f64>())
                });
                tracing::info!(
                    handler = self.name(),
                    message_id = msg.message_id().unwrap_or("-"),
                    attempt,
                    kind,
                    reason = &*cap_reason(&reason),
                    delay_ms = delay.as_millis() as u64,
                    "retry in place scheduled (ordered)"
                );
                self.h.metrics.retry.inc();
                msg.retry_in_place(attempt + 1);
                Some(InPlace { msg, delay })
            }
            how => {
                self.settle(msg, how, module).await;
                None
            }
        }
    }

    async fn settle(&self, msg: Inbound, how: Settle, module: Option<&str>) {
        let attempt = msg.attempt();
        if let Some(t) = &self.trace {
            let tag = msg.delivery_tag();
            t.settling(tag);
            match &how {
                Settle::Retry { kind, reason, .. } | Settle::DeadLetter { kind, reason } => {
                    t.failed(tag, kind, reason)
                }
                _ => {}
            }
        }
        match how {
            Settle::Defer(remaining) => {
                let floor = Duration::from_millis(self.h.cfg.retry.backoff_ms);
                // Not `clamp`: it panics when the floor (backoff_ms) is above
                // the lease, which the config allows.
                let delay = retry::tier(remaining.min(self.lease_ttl()).max(floor));
                tracing::debug!(
                    handler = self.name(),
                    message_id = msg.message_id().unwrap_or("-"),
                    delay_ms = delay.as_millis() as u64,
                    "dedup key held by another owner: deferred"
                );
                self.send_to_wait_queue(msg, attempt, delay, true).await
            }
            Settle::Retry {
                delay,
                kind,
                reason,
            } => self.retry(msg, attempt, delay, kind, &reason, module).await,
            Settle::DeadLetter { kind, reason } => {
                self.dead_letter(msg, kind, &reason, attempt, module).await
            }
            Settle::RequeueLater => self.requeue_later(msg).await,
            Settle::Requeue => {
                self.h.metrics.requeued.inc();
                self.traced(&msg, Fate::Requeue);
                msg.requeue()
            }
        }
    }

    /// A retry after a failure: through a wait queue, or to the dead-letter
    /// queue once attempts run out.
    async fn retry(
        &self,
        msg: Inbound,
        attempt: u32,
        delay: Option<Duration>,
        kind: &str,
        reason: &str,
        module: Option<&str>,
    ) {
        let reason = &*cap_reason(reason);
        let max = self.h.cfg.retry.max_attempts;
        if attempt >= max {
            let reason = format!("{reason} (attempt {attempt} of {max})");
            return self.dead_letter(msg, kind, &reason, attempt, module).await;
        }
        let delay = delay
            .unwrap_or_else(|| retry::backoff(&self.h.cfg.retry, attempt, rand::random::<f64>()));
        let delay = retry::tier(delay);
        self.recent_failure(&msg, kind, reason, "retry", module);
        tracing::info!(
            handler = self.name(),
            message_id = msg.message_id().unwrap_or("-"),
            attempt,
            kind,
            reason,
            delay_ms = delay.as_millis() as u64,
            "retry scheduled"
        );
        self.send_to_wait_queue(msg, attempt + 1, delay, false)
            .await
    }

    /// Publishes the message to the wait queue of `delay`'s tier, from which
    /// the broker dead-letters it back to the work queue as `next_attempt`,
    /// then acks it.
    async fn send_to_wait_queue(
        &self,
        msg: Inbound,
        next_attempt: u32,
        delay: Duration,
        deferred: bool,
    ) {
        let queue = &self.h.cfg.queue;
        let kind = self.h.topology.kind;
        let wait = retry::wait_queue(queue, delay, kind != QueueKind::Classic);
        match self
            .publisher
            .retry(&msg, queue, (&wait, kind), delay, next_attempt)
            .await
        {
            Ok(()) => {
                let counter = if deferred {
                    &self.h.metrics.deferred
                } else {
                    &self.h.metrics.retry
                };
                counter.inc();
                self.traced(&msg, if deferred { Fate::Defer } else { Fate::Retry });
                msg.ack();
            }
            Err(PublishError::TooLarge(why)) => {
                let attempt = msg.attempt();
                self.dead_letter(msg, "too-large", &why, attempt, None)
                    .await
            }
            Err(e) => {
                tracing::error!(handler = self.name(), message_id = msg.message_id().unwrap_or("-"), wait_queue = %wait, error = %e, "cannot publish to the wait queue; the message goes back to the queue");
                self.requeue_later(msg).await;
            }
        }
    }

    async fn dead_letter(
        &self,
        msg: Inbound,
        kind: &str,
        reason: &str,
        attempt: u32,
        module: Option<&str>,
    ) {
        let reason = &*cap_reason(reason);
        let dlq = self.h.cfg.dead_letter_queue();
        let info = DeadLetter {
            handler: self.name(),
            kind,
            reason,
            attempt,
            module,
            host: &self.shared.host,
        };
        match self.publisher.dead_letter(&msg, &dlq, &info).await {
            Ok(()) => {
                tracing::warn!(handler = self.name(), message_id = msg.message_id().unwrap_or("-"), attempt, kind, reason, dead_letter_queue = %dlq, "dead-lettered");
                self.h.metrics.dead_letter.inc();
                self.recent_failure(&msg, kind, reason, "dead_letter", module);
                if let Some(t) = &self.trace {
                    t.failed(msg.delivery_tag(), kind, reason);
                }
                self.traced(&msg, Fate::DeadLetter);
                msg.ack();
            }
            Err(e) => {
                tracing::error!(handler = self.name(), message_id = msg.message_id().unwrap_or("-"), dead_letter_queue = %dlq, error = %e, "cannot dead-letter; the message goes back to the queue");
                self.requeue_later(msg).await;
            }
        }
    }

    /// Keeps the failure for the dashboard's recent failures.
    fn recent_failure(
        &self,
        msg: &Inbound,
        kind: &str,
        reason: &str,
        outcome: &'static str,
        module: Option<&str>,
    ) {
        let at = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        self.h.metrics.recent.failure(crate::recent::Failure {
            at,
            message_id: msg.message_id().unwrap_or("-").to_string(),
            kind: kind.to_string(),
            reason: reason.to_string(),
            outcome,
            module: module.map(str::to_string),
        });
    }

    /// Requeues after a pause (or at once when shutting down).
    async fn requeue_later(&self, msg: Inbound) {
        let mut shutdown = self.shared.shutdown.clone();
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = shutdown.wait_for(|s| *s) => {}
        }
        self.h.metrics.requeued.inc();
        self.traced(&msg, Fate::Requeue);
        msg.requeue();
    }

    /// Finishes `msg`'s spans, when telemetry is on.
    fn traced(&self, msg: &Inbound, fate: Fate) {
        if let Some(t) = &self.trace {
            t.settled(msg.delivery_tag(), fate);
        }
    }
}
