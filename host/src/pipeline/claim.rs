//! Step 2 of a batch: claim every key in one round trip and settle the
//! messages that must not run now (duplicates acked, keys held elsewhere
//! deferred, keys the store refuses dead-lettered); the rest run with a
//! lease. While the store does not answer, the batch pauses or runs
//! without dedup, by the `on_unavailable` policy.

use std::sync::atomic::Ordering;
use std::time::Duration;

use super::settle::{InPlace, Settle};
use super::{Job, Pipeline};
use crate::config::OnUnavailable;
use crate::dedup::{Claim, DedupError, Lease};

impl Pipeline<'_> {
    /// Step 2: claims every key of the batch in one round trip and settles
    /// the messages that must not run now; returns those that run, and
    /// those an ordered handler defers in place.
    pub(super) async fn claim(&self, jobs: Vec<Job>) -> (Vec<Job>, Vec<InPlace>) {
        if !self.h.cfg.dedup.enabled {
            return (jobs, Vec::new());
        }
        let store = &self.shared.store;
        let namespace = self.h.cfg.kv_namespace();
        let keys: Vec<Option<String>> = jobs
            .iter()
            .map(|j| {
                j.key
                    .as_deref()
                    .map(|k| store.key_in(self.name(), namespace, k))
            })
            .collect();
        let started = crate::telemetry::now_ns();
        let claims = self.claim_keys(&keys).await;
        if let Some(t) = &self.trace {
            t.claimed(started);
        }

        let mut run = Vec::with_capacity(jobs.len());
        let mut settles = Vec::new();
        let mut bypassed = 0u64;
        for (mut job, claimed) in jobs.into_iter().zip(claims) {
            match claimed {
                Claimed::Lease(l) => {
                    job.lease = Some(l);
                    run.push(job);
                }
                Claimed::NoKey => run.push(job),
                Claimed::Bypass => {
                    bypassed += 1;
                    run.push(job);
                }
                Claimed::Done => {
                    tracing::debug!(
                        handler = self.name(),
                        message_id = job.msg.message_id().unwrap_or("-"),
                        "duplicate: already handled, acked without running"
                    );
                    self.h.metrics.dedup_hit.inc();
                    if let Some(t) = &self.trace {
                        let tag = job.msg.delivery_tag();
                        t.settling(tag);
                        t.settled(tag, super::trace::Fate::DedupHit);
                    }
                    job.msg.ack();
                }
                Claimed::Busy(remaining) => settles.push((job.msg, Settle::Defer(remaining))),
                Claimed::ShuttingDown => settles.push((job.msg, Settle::Requeue)),
                Claimed::Refused(reason) => settles.push((
                    job.msg,
                    Settle::DeadLetter {
                        kind: "dedup-store",
                        reason,
                    },
                )),
            }
        }
        if bypassed > 0 {
            tracing::warn!(
                handler = self.name(),
                messages = bypassed,
                "dedup store unavailable: handling without dedup (on_unavailable = process)"
            );
            self.h.metrics.dedup_bypassed.inc_by(bypassed);
        }
        let kept = self.settle_all(settles, None).await;
        (run, kept)
    }

    /// Asks the store for every key, pausing (`on_unavailable = "pause"`)
    /// while it does not answer: those messages wait, unacked and not
    /// started, and with every permit held by a waiting batch the consumer
    /// stops taking more, so the rest stay in the queue.
    async fn claim_keys(&self, keys: &[Option<String>]) -> Vec<Claimed> {
        let store = &self.shared.store;
        let mut claims: Vec<Claimed> = keys.iter().map(|_| Claimed::NoKey).collect();
        let mut ask: Vec<usize> = (0..keys.len()).filter(|&i| keys[i].is_some()).collect();
        while !ask.is_empty() {
            let names: Vec<&str> = ask.iter().filter_map(|&i| keys[i].as_deref()).collect();
            let answers = store.claim_many(&names, self.lease_ttl()).await;
            let mut unanswered = Vec::new();
            let mut down = None;
            for (i, answer) in ask.into_iter().zip(answers) {
                claims[i] = match answer {
                    Ok(Claim::Acquired(l)) => Claimed::Lease(l),
                    Ok(Claim::Done) => Claimed::Done,
                    Ok(Claim::Busy { retry_after }) => Claimed::Busy(retry_after),
                    // The store answers but cannot use this key (e.g. it
                    // holds a value of another type): waiting will not help.
                    Err(e @ DedupError::Rejected { .. }) => Claimed::Refused(e.to_string()),
                    Err(_) if self.shared.on_unavailable == OnUnavailable::Process => {
                        Claimed::Bypass
                    }
                    Err(e) => {
                        down = Some(e);
                        unanswered.push(i);
                        continue;
                    }
                };
            }
            match down {
                None => self.store_answers(),
                Some(e) => {
                    if !self.wait_for_store(&e).await {
                        for &i in &unanswered {
                            claims[i] = Claimed::ShuttingDown;
                        }
                        break;
                    }
                }
            }
            ask = unanswered;
        }
        claims
    }

    /// Marks the store as answering (after a pause, says so).
    fn store_answers(&self) {
        if !self.shared.health.dedup.swap(true, Ordering::Relaxed) {
            tracing::info!("dedup store answers again: resuming");
            self.shared.metrics.redis_available.set(1);
        }
    }

    /// Waits until the store answers a ping: true, or false if shutdown came
    /// first.
    async fn wait_for_store(&self, error: &DedupError) -> bool {
        if self.shared.health.dedup.swap(false, Ordering::Relaxed) {
            tracing::warn!(error = %error, "dedup store unavailable: pausing (on_unavailable = pause)");
            self.shared.metrics.redis_available.set(0);
        }
        let mut shutdown = self.shared.shutdown.clone();
        loop {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(250)) => {}
                _ = shutdown.wait_for(|s| *s) => return false,
            }
            if self.shared.store.ping().await.is_ok() {
                self.store_answers();
                return true;
            }
        }
    }
}

/// What the claim of one message's key came to.
enum Claimed {
    Lease(Lease),
    /// The message has no key and runs without dedup.
    NoKey,
    Done,
    Busy(Duration),
    /// The store is unavailable and the policy is to run without it.
    Bypass,
    ShuttingDown,
    Refused(String),
}
