//! One message, top to bottom: idempotency key, dedup claim, the sandboxed
//! handler, then exactly one settlement (ack, delayed retry, dead-letter, or
//! back to the queue).
//!
//! The order of the success path is the at-least-once contract: outputs
//! published and confirmed, then the dedup done-marker written, then the
//! input acked. A crash between any two steps leaves the input unacked, so it
//! comes back; the dedup marker (or the deterministic output ids) makes the
//! second run harmless.
//!
//! This module decides; `amqp`, `dedup` and `runtime` carry it out.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use sha2::{Digest as _, Sha256};
use tokio::sync::{Semaphore, watch};
use tracing::Instrument as _;

use crate::amqp::{DeadLetter, Inbound, Publisher, Topology};
use crate::config::{self, DedupKey, MissingKey, OnUnavailable};
use crate::dedup::{Claim, DedupError, Lease, Store};
use crate::metrics::Metrics;
use crate::registry::Versions;
use crate::retry;
use crate::runtime::{Completed, HandlerEnv, Module, Outcome, RunError, Runtime, WarmInstances};

/// What every message of the process shares.
#[derive(Debug)]
pub struct Shared {
    pub runtime: Runtime,
    pub store: Store,
    pub on_unavailable: OnUnavailable,
    pub metrics: Metrics,
    pub health: Health,
    /// This host's name, for dead-letter headers.
    pub host: String,
    pub shutdown: watch::Receiver<bool>,
}

/// Readiness: connected to RabbitMQ, and the dedup store answering.
#[derive(Debug)]
pub struct Health {
    pub amqp: AtomicBool,
    pub dedup: AtomicBool,
}

impl Default for Health {
    fn default() -> Self {
        Self {
            amqp: AtomicBool::new(false),
            dedup: AtomicBool::new(true),
        }
    }
}

impl Health {
    pub fn ready(&self) -> bool {
        self.amqp.load(Ordering::Relaxed) && self.dedup.load(Ordering::Relaxed)
    }
}

/// One configured handler: its settings, its live module version and its
/// limit on messages in flight.
#[derive(Debug)]
pub struct HandlerCtx {
    pub cfg: config::Handler,
    pub env: Arc<HandlerEnv>,
    /// The live version and its history. A deploy swaps it; a message loads
    /// it once when its run starts, so it finishes on the version it started
    /// with.
    pub versions: Versions,
    pub topology: Topology,
    /// Idle instances kept for the next message (`instances = "reuse"`).
    pub warm: Arc<WarmInstances>,
    /// `consumers` permits: messages in flight at once in this process.
    pub concurrency: Arc<Semaphore>,
}

/// Handles one delivery to the end. Never fails: every path settles the
/// delivery one way or another, and a delivery dropped without settling is
/// requeued by `Inbound`'s destructor.
pub async fn process(shared: &Shared, h: &HandlerCtx, publisher: &Publisher, msg: Inbound) {
    let span = tracing::debug_span!(
        "message",
        handler = %h.cfg.name,
        message_id = msg.message_id().unwrap_or("-"),
        attempt = msg.attempt(),
    );
    Pipeline {
        shared,
        h,
        publisher,
    }
    .run(msg)
    .instrument(span)
    .await
}

struct Pipeline<'a> {
    shared: &'a Shared,
    h: &'a HandlerCtx,
    publisher: &'a Publisher,
}

impl Pipeline<'_> {
    fn name(&self) -> &str {
        &self.h.cfg.name
    }

    async fn run(self, msg: Inbound) {
        let dedup = &self.h.cfg.dedup;
        let attempt = msg.attempt();

        // 1. The idempotency key.
        let key = idempotency_key(&dedup.key, &msg);
        if key.is_none() && dedup.enabled && dedup.missing == MissingKey::Reject {
            let reason = format!("message has no dedup key ({})", describe_key(&dedup.key));
            return self
                .dead_letter(msg, "no-dedup-key", &reason, attempt, None)
                .await;
        }

        // 2. Claim it.
        let mut lease = None;
        if let (true, Some(k)) = (dedup.enabled, key.as_deref()) {
            match self.claim(k).await {
                Claimed::Lease(l) => lease = Some(l),
                Claimed::Bypass => {}
                Claimed::Done => {
                    tracing::debug!("duplicate: already handled, acked without running");
                    self.shared.metrics.outcome(self.name(), "dedup_hit");
                    return msg.ack();
                }
                Claimed::Busy(remaining) => return self.defer(msg, remaining).await,
                Claimed::ShuttingDown => return msg.requeue(),
                Claimed::Refused(reason) => {
                    return self
                        .dead_letter(msg, "dedup-store", &reason, attempt, None)
                        .await;
                }
            }
        }

        // 3. Run the handler on the live version, renewing the lease.
        let module = self.h.versions.live();
        let message = msg.to_message(key.clone(), lease.as_ref().map_or(0, |l| l.fencing_token));
        let renewal = lease
            .clone()
            .map(|l| Renewal::start(self.shared.store.clone(), l, self.lease_ttl()));
        let started = Instant::now();
        let result = self.run_guest(&module, message).await;
        self.shared.metrics.observe(self.name(), started.elapsed());
        let digest = module.digest().to_string();

        // 4. Settle.
        match result {
            Ok(Completed {
                outcome: Outcome::Ack,
                publishes,
                ..
            }) => {
                let base = key.unwrap_or_else(|| output_id_base(&msg));
                for (i, out) in publishes.iter().enumerate() {
                    let id = output_message_id(self.name(), &base, i);
                    if let Err(e) = self.publisher.output(out, &id, &digest).await {
                        self.shared.metrics.failure(self.name(), "publish");
                        tracing::warn!(handler = self.name(), error = %e, output = i, "output not confirmed; input will be retried");
                        self.release(renewal, lease.as_ref()).await;
                        let reason = format!("output {i} not confirmed: {e}");
                        return self
                            .retry(msg, attempt, None, "publish", &reason, Some(&digest))
                            .await;
                    }
                }
                if let Some(l) = lease {
                    let lost = renewal.map(Renewal::stop).unwrap_or(false);
                    let completed = if lost {
                        Ok(false)
                    } else {
                        self.shared.store.complete(&l, self.window()).await
                    };
                    match completed {
                        Ok(true) => {}
                        Ok(false) => {
                            tracing::warn!(handler = self.name(), key = %l.key, "dedup lease lost while the handler ran: not acking; the message goes back to the queue");
                            self.shared.metrics.outcome(self.name(), "requeued");
                            return msg.requeue();
                        }
                        Err(e) => {
                            tracing::warn!(handler = self.name(), key = %l.key, error = %e, "cannot write the dedup done-marker: not acking; the message goes back to the queue");
                            self.shared.metrics.outcome(self.name(), "requeued");
                            return self.requeue_later(msg).await;
                        }
                    }
                }
                self.shared.metrics.outcome(self.name(), "ack");
                msg.ack();
            }
            Ok(Completed {
                outcome: Outcome::Retry(r),
                ..
            }) => {
                self.release(renewal, lease.as_ref()).await;
                let delay = r.delay_ms.map(Duration::from_millis);
                self.retry(msg, attempt, delay, "retry", &r.reason, Some(&digest))
                    .await
            }
            Ok(Completed {
                outcome: Outcome::Reject(reason),
                ..
            }) => {
                self.release(renewal, lease.as_ref()).await;
                self.dead_letter(msg, "reject", &reason, attempt, Some(&digest))
                    .await
            }
            Err(e) => {
                self.shared.metrics.failure(self.name(), e.kind());
                tracing::warn!(handler = self.name(), module = module.digest().short(), error = %e, attempt, "handler failed");
                self.release(renewal, lease.as_ref()).await;
                self.retry(msg, attempt, None, e.kind(), &e.to_string(), Some(&digest))
                    .await
            }
        }
    }

    fn lease_ttl(&self) -> Duration {
        Duration::from_millis(self.h.cfg.dedup.lease_ms)
    }

    fn window(&self) -> Duration {
        Duration::from_secs(self.h.cfg.dedup.window_s)
    }

    async fn claim(&self, key: &str) -> Claimed {
        let store = &self.shared.store;
        let full = store.key(self.name(), key);
        let mut shutdown = self.shared.shutdown.clone();
        loop {
            match store.claim(&full, self.lease_ttl(), self.window()).await {
                Ok(Claim::Acquired(l)) => {
                    self.shared.health.dedup.store(true, Ordering::Relaxed);
                    return Claimed::Lease(l);
                }
                Ok(Claim::Done) => return Claimed::Done,
                Ok(Claim::Busy { retry_after }) => return Claimed::Busy(retry_after),
                // The store answers but cannot use this key (e.g. it holds a
                // value of another type): waiting will not help.
                Err(e @ DedupError::Rejected { .. }) => return Claimed::Refused(e.to_string()),
                Err(e) if self.shared.on_unavailable == OnUnavailable::Process => {
                    tracing::warn!(handler = self.name(), error = %e, "dedup store unavailable: handling without dedup (on_unavailable = process)");
                    self.shared
                        .metrics
                        .dedup_bypassed
                        .get_or_create(&crate::metrics::HandlerLabel {
                            handler: self.name().into(),
                        })
                        .inc();
                    return Claimed::Bypass;
                }
                Err(e) => {
                    // Pause: this message waits, unacked and not started;
                    // with every permit held by a waiting message, the
                    // consumer stops taking more, and the rest stay in the
                    // queue.
                    if self.shared.health.dedup.swap(false, Ordering::Relaxed) {
                        tracing::warn!(error = %e, "dedup store unavailable: pausing (on_unavailable = pause)");
                        self.shared.metrics.redis_available.set(0);
                    }
                    loop {
                        tokio::select! {
                            _ = tokio::time::sleep(Duration::from_millis(250)) => {}
                            _ = shutdown.wait_for(|s| *s) => return Claimed::ShuttingDown,
                        }
                        if store.ping().await.is_ok() {
                            if !self.shared.health.dedup.swap(true, Ordering::Relaxed) {
                                tracing::info!("dedup store answers again: resuming");
                                self.shared.metrics.redis_available.set(1);
                            }
                            break;
                        }
                    }
                }
            }
        }
    }

    async fn run_guest(
        &self,
        module: &Arc<Module>,
        message: crate::runtime::Message,
    ) -> Result<Completed, RunError> {
        let permit = self.shared.runtime.acquire().await;
        let (rt, env, module) = (
            self.shared.runtime.clone(),
            self.h.env.clone(),
            module.clone(),
        );
        let gauge = self
            .shared
            .metrics
            .in_flight
            .get_or_create(&crate::metrics::HandlerLabel {
                handler: self.name().into(),
            })
            .clone();
        gauge.inc();
        let reuse = (self.h.cfg.instances == config::Instances::Reuse)
            .then(|| (self.h.warm.clone(), self.h.cfg.reuse_max));
        let result = tokio::task::spawn_blocking(move || match reuse {
            Some((warm, max)) => rt.run_warm(&module, &env, &message, &permit, &warm, max),
            None => rt.run(&module, &env, &message, &permit),
        })
        .await
        .unwrap_or_else(|e| {
            Err(RunError::Trap {
                message: format!("host task failed: {e}"),
            })
        });
        gauge.dec();
        result
    }

    /// Gives up the lease after a failed or rejected run, so the retry (or an
    /// operator's replay from the dead-letter queue) can claim the key again.
    async fn release(&self, renewal: Option<Renewal>, lease: Option<&Lease>) {
        if let Some(r) = renewal {
            r.stop();
        }
        if let Some(l) = lease
            && let Err(e) = self.shared.store.release(l).await
        {
            tracing::warn!(handler = self.name(), key = %l.key, error = %e, "cannot release the dedup lease; it expires on its own");
        }
    }

    /// Another host holds the lease: come back when it may have finished.
    /// Not an attempt.
    async fn defer(&self, msg: Inbound, remaining: Duration) {
        let floor = Duration::from_millis(self.h.cfg.retry.backoff_ms);
        let delay = retry::tier(remaining.clamp(floor, self.lease_ttl()));
        let attempt = msg.attempt();
        tracing::debug!(
            delay_ms = delay.as_millis() as u64,
            "dedup key held by another owner: deferred"
        );
        self.send_to_wait_queue(msg, attempt, delay, "deferred")
            .await
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
        let max = self.h.cfg.retry.max_attempts;
        if attempt >= max {
            let reason = format!("{reason} (attempt {attempt} of {max})");
            return self.dead_letter(msg, kind, &reason, attempt, module).await;
        }
        let delay = delay
            .unwrap_or_else(|| retry::backoff(&self.h.cfg.retry, attempt, rand::random::<f64>()));
        let delay = retry::tier(delay);
        tracing::info!(
            handler = self.name(),
            message_id = msg.message_id().unwrap_or("-"),
            attempt,
            kind,
            reason,
            delay_ms = delay.as_millis() as u64,
            "retry scheduled"
        );
        self.send_to_wait_queue(msg, attempt + 1, delay, "retry")
            .await
    }

    async fn send_to_wait_queue(
        &self,
        msg: Inbound,
        next_attempt: u32,
        delay: Duration,
        outcome: &str,
    ) {
        let queue = &self.h.cfg.queue;
        let wait = retry::wait_queue(queue, delay);
        match self
            .publisher
            .retry(&msg, queue, &wait, delay, next_attempt)
            .await
        {
            Ok(()) => {
                self.shared.metrics.outcome(self.name(), outcome);
                msg.ack();
            }
            Err(e) => {
                tracing::error!(handler = self.name(), wait_queue = %wait, error = %e, "cannot publish to the wait queue; the message goes back to the queue");
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
                self.shared.metrics.outcome(self.name(), "dead_letter");
                msg.ack();
            }
            Err(e) => {
                tracing::error!(handler = self.name(), dead_letter_queue = %dlq, error = %e, "cannot dead-letter; the message goes back to the queue");
                self.requeue_later(msg).await;
            }
        }
    }

    /// Requeues after a pause: only reached when the broker or the dedup
    /// store refused what settling needed, and an immediate requeue would
    /// spin (redpanda-data/connect#846).
    async fn requeue_later(&self, msg: Inbound) {
        let mut shutdown = self.shared.shutdown.clone();
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = shutdown.wait_for(|s| *s) => {}
        }
        self.shared.metrics.outcome(self.name(), "requeued");
        msg.requeue();
    }
}

enum Claimed {
    Lease(Lease),
    Done,
    Busy(Duration),
    Bypass,
    ShuttingDown,
    Refused(String),
}

/// The message's idempotency key, or none when it has none.
pub fn idempotency_key(how: &DedupKey, msg: &Inbound) -> Option<String> {
    match how {
        DedupKey::MessageId => msg
            .message_id()
            .filter(|s| !s.is_empty())
            .map(str::to_string),
        DedupKey::Header(name) => msg.header_text(name).filter(|s| !s.is_empty()),
        DedupKey::BodySha256 => Some(hex::encode(Sha256::digest(msg.body()))),
    }
}

fn describe_key(how: &DedupKey) -> String {
    match how {
        DedupKey::MessageId => "no message-id property".into(),
        DedupKey::Header(name) => format!("no text or integer header {name:?}"),
        DedupKey::BodySha256 => "body-sha256".into(),
    }
}

/// What output ids derive from when a message has no dedup key.
fn output_id_base(msg: &Inbound) -> String {
    msg.message_id()
        .map(str::to_string)
        .unwrap_or_else(|| hex::encode(Sha256::digest(msg.body())))
}

/// The message id of a handler's `index`-th output for input `key`: the same
/// on every run of the same input, so a retried or duplicated run publishes
/// the same ids and downstream consumers can drop the copies.
pub fn output_message_id(handler: &str, key: &str, index: usize) -> String {
    let name = format!("{handler}\n{key}\n{index}");
    uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, name.as_bytes()).to_string()
}

/// Renews a dedup lease every third of its length while the handler runs.
struct Renewal {
    stop: tokio::sync::oneshot::Sender<()>,
    lost: Arc<AtomicBool>,
}

impl Renewal {
    fn start(store: Store, lease: Lease, ttl: Duration) -> Self {
        let (stop, mut stopped) = tokio::sync::oneshot::channel();
        let lost = Arc::new(AtomicBool::new(false));
        let flag = lost.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(ttl / 3);
            every.tick().await;
            loop {
                tokio::select! {
                    _ = every.tick() => match store.renew(&lease, ttl).await {
                        Ok(true) => {}
                        Ok(false) => {
                            flag.store(true, Ordering::Relaxed);
                            tracing::warn!(key = %lease.key, "dedup lease lost while the handler runs");
                            return;
                        }
                        // The lease may still be ours; the next renewal, or
                        // the compare-and-set at the end, will tell.
                        Err(e) => tracing::warn!(key = %lease.key, error = %e, "cannot renew the dedup lease"),
                    },
                    _ = &mut stopped => return,
                }
            }
        });
        Self { stop, lost }
    }

    /// Stops renewing; true if the lease was lost meanwhile.
    fn stop(self) -> bool {
        let _ = self.stop.send(());
        self.lost.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_ids_are_deterministic_and_distinct() {
        let a = output_message_id("echo", "k1", 0);
        assert_eq!(a, output_message_id("echo", "k1", 0));
        assert_ne!(a, output_message_id("echo", "k1", 1));
        assert_ne!(a, output_message_id("echo", "k2", 0));
        assert_ne!(a, output_message_id("other", "k1", 0));
    }
}
