//! Messages, top to bottom, a batch at a time: idempotency keys, dedup
//! claims, the sandboxed handler, then exactly one settlement per message
//! (ack, delayed retry, dead-letter, or back to the queue).
//!
//! A batch is what one consumer channel had already received when a slot
//! for it freed up: at most the handler's `max_batch` messages, and never a
//! wait to fill one, so a lone message goes through alone and at once. Each
//! step runs for the whole batch, so its fixed cost is paid once per batch:
//! one Redis round trip per dedup step, one instance permit for its guests,
//! one wait for the broker's confirms. Every message still settles on its
//! own: one message's failure never changes another's outcome.
//!
//! The order of the success path is the at-least-once contract: outputs
//! published and confirmed, then the dedup done-marker written, then the
//! input acked. A crash between any two steps leaves the input unacked, so it
//! comes back; the dedup marker (or the deterministic output ids) makes the
//! second run harmless.
//!
//! This module decides; `amqp`, `dedup` and `runtime` carry it out.

mod claim;
pub mod convert;
mod guests;
mod keys;
mod kv;
mod outputs;
mod renew;
mod settle;
mod trace;

use keys::{describe_key, output_id_base};
pub use keys::{idempotency_key, output_message_id};
pub use kv::KvView;

use std::sync::Arc;
use std::time::Duration;

use tracing::Instrument as _;

use crate::amqp::limits::cap_text;
use crate::amqp::{Inbound, Publisher};
use crate::canary::Canary;
use crate::config::MissingKey;
use crate::context::{HandlerCtx, Shared};
use crate::dedup::{Commit, KvWrites, Lease};
use crate::runtime::{Completed, Module, Outbound, Outcome};
use settle::{InPlace, Settle};

/// Handles a batch of deliveries from one consumer channel to the end.
/// Never fails: every path settles each delivery one way or another, and a
/// delivery dropped without settling is requeued by `Inbound`'s destructor.
///
/// In ordered mode, a message to be retried stays with this task,
/// unacked, and runs again after its backoff (docs/semantics.md, "Ordered
/// mode"); the handler takes no other message meanwhile, since it holds
/// the handler's only permit.
pub async fn process(shared: &Shared, h: &HandlerCtx, publisher: &Publisher, batch: Vec<Inbound>) {
    let mut batch = batch;
    loop {
        h.metrics.batch.observe(batch.len() as f64);
        let span = tracing::debug_span!("batch", handler = %h.cfg.name, messages = batch.len());
        let trace = shared
            .tracer
            .clone()
            .map(|t| trace::BatchTrace::new(t, &h.cfg.name, &h.cfg.queue));
        let again = Pipeline {
            shared,
            h,
            publisher,
            trace,
        }
        .run(batch)
        .instrument(span)
        .await;
        let Some(longest) = again.iter().map(|k| k.delay).max() else {
            return;
        };
        let mut shutdown = shared.shutdown.clone();
        tokio::select! {
            _ = tokio::time::sleep(longest) => {}
            // Dropped unsettled, they go back to the queue, at its head.
            _ = shutdown.wait_for(|s| *s) => return,
        }
        batch = again.into_iter().map(|k| k.msg).collect();
    }
}

struct Pipeline<'a> {
    shared: &'a Shared,
    h: &'a HandlerCtx,
    publisher: &'a Publisher,
    /// The batch's spans, when telemetry is on.
    trace: Option<trace::BatchTrace>,
}

/// A message on its way through the batch.
struct Job {
    msg: Inbound,
    /// Its idempotency key, as the message gives it (not namespaced).
    key: Option<String>,
    /// The dedup lease, once claimed; none without dedup, without a key, or
    /// when the store was bypassed.
    lease: Option<Lease>,
    /// The key-value writes of an acked run, committed with the
    /// done-marker.
    writes: Option<KvWrites>,
}

/// What running and publishing a batch came to.
struct Ran {
    /// Acked, with every output confirmed: to be marked done and acked.
    done: Vec<Job>,
    /// Not to be acked as handled, with how each settles.
    failed: Vec<(Job, Settle)>,
    /// The digest of the module version that ran them.
    digest: String,
}

impl Pipeline<'_> {
    fn name(&self) -> &str {
        &self.h.cfg.name
    }

    /// Returns what an ordered handler keeps to run again in place.
    async fn run(self, batch: Vec<Inbound>) -> Vec<InPlace> {
        // 1. The idempotency keys.
        let jobs = self.keys(batch).await;

        // 2. Claim them, in one round trip. Duplicates are acked and keys
        //    held elsewhere deferred here; the rest hold a lease (or run
        //    without dedup).
        let (jobs, mut kept) = self.claim(jobs).await;
        if jobs.is_empty() {
            return kept;
        }

        // 3-4. Run and publish under lease renewal, in case the batch runs
        //      past a third of the lease. Renewal stops before the keys are
        //      marked done or released: a renewal after that would find them
        //      no longer ours.
        let leases: Vec<Lease> = jobs.iter().filter_map(|j| j.lease.clone()).collect();
        let renew = renew::keep_renewed(&self.shared.store, self.name(), leases, self.lease_ttl());
        let groups = tokio::select! {
            ran = self.run_versions(jobs) => ran,
            () = renew => unreachable!("renewal runs until the work is done"),
        };

        // One group per version that ran (two while a canary is in
        // progress), each settled with its own digest.
        for Ran {
            done,
            mut failed,
            digest,
        } in groups
        {
            // 5. Mark the keys done (one round trip), then ack.
            let unmarked = self.complete_and_ack(done).await;

            // 6. The failures give up their leases (one round trip), so a
            //    retry or a replay from the dead-letter queue can claim the
            //    key again, then each is retried, dead-lettered or requeued.
            self.release(failed.iter().filter_map(|(j, _)| j.lease.as_ref()))
                .await;
            failed.extend(unmarked);
            let settles = failed
                .into_iter()
                .map(|(job, how)| (job.msg, how))
                .collect();
            kept.extend(self.settle_all(settles, Some(&digest)).await);
        }
        kept
    }

    /// Steps 3 and 4 for the whole batch: on the live version, or, while a
    /// canary is in progress, the messages it picks on its candidate and
    /// the others on the live version, one group after the other. While a
    /// canary runs, each group's first attempts are counted for it.
    async fn run_versions(&self, jobs: Vec<Job>) -> Vec<Ran> {
        let live = self.h.versions.live();
        let Some(canary) = self.h.canary.load_full() else {
            return vec![self.run_and_publish(&live, jobs, None).await];
        };
        let (picked, rest): (Vec<Job>, Vec<Job>) = jobs.into_iter().partition(|j| {
            let key = j.key.clone().unwrap_or_else(|| output_id_base(&j.msg));
            canary.picks(&key, j.msg.attempt())
        });
        let mut groups = Vec::with_capacity(2);
        if !rest.is_empty() {
            groups.push(
                self.run_and_publish(&live, rest, Some((&*canary, false)))
                    .await,
            );
        }
        if !picked.is_empty() {
            groups.push(
                self.run_and_publish(&canary.module, picked, Some((&*canary, true)))
                    .await,
            );
        }
        groups
    }

    /// Steps 3 and 4: runs the handler on each message, on `module` and
    /// one after another on this task, then publishes the outputs of every
    /// acked message at once and waits for all their confirms.
    ///
    /// With a canary in progress (`canary`: it, and whether `module` is its
    /// candidate), each first attempt's result is counted: an ack whose
    /// outputs were confirmed is a success; a trap, a timeout, a reject, a
    /// retry the guest asked for and an output the broker refused are
    /// failures. A message the candidate rejects is retried (on the live
    /// version, whose verdict stands) rather than dead-lettered.
    async fn run_and_publish(
        &self,
        module: &Arc<Module>,
        jobs: Vec<Job>,
        canary: Option<(&Canary, bool)>,
    ) -> Ran {
        let on_canary = canary.is_some_and(|(_, c)| c);
        let results = self.run_guests(module, &jobs, on_canary).await;
        let digest = module.digest().to_string();
        // First attempts that failed, in the run or on publish.
        let mut failed_first = 0u64;

        let mut acked = Vec::new();
        let mut failed = Vec::new();
        for (mut job, result) in jobs.into_iter().zip(results) {
            let result = result.map(|c| self.capped(c));
            match result {
                Ok(Completed {
                    outcome: Outcome::Ack,
                    publishes,
                    kv_writes,
                    ..
                }) => {
                    if !kv_writes.is_empty() {
                        job.writes = Some(kv::writes(self.h.cfg.kv_namespace(), kv_writes));
                    }
                    acked.push((job, publishes))
                }
                Ok(Completed {
                    outcome: Outcome::Retry(r),
                    ..
                }) => failed.push((
                    job,
                    Settle::Retry {
                        delay: r.delay_ms.map(Duration::from_millis),
                        kind: "retry",
                        reason: r.reason,
                    },
                )),
                Ok(Completed {
                    outcome: Outcome::Reject(reason),
                    ..
                }) if on_canary => failed.push((
                    job,
                    Settle::Retry {
                        delay: None,
                        kind: "canary-reject",
                        reason: format!("the canary candidate rejected it: {reason}"),
                    },
                )),
                Ok(Completed {
                    outcome: Outcome::Reject(reason),
                    ..
                }) => failed.push((
                    job,
                    Settle::DeadLetter {
                        kind: "reject",
                        reason,
                    },
                )),
                Err(e) => {
                    self.h.metrics.failure(e.kind());
                    tracing::warn!(handler = self.name(), message_id = job.msg.message_id().unwrap_or("-"), attempt = job.msg.attempt(), module = module.digest().short(), error = %e, "handler failed");
                    failed.push((
                        job,
                        Settle::Retry {
                            delay: None,
                            kind: e.kind(),
                            reason: e.to_string(),
                        },
                    ))
                }
            }
        }

        if canary.is_some() {
            failed_first = failed.iter().filter(|(j, _)| j.msg.attempt() <= 1).count() as u64;
        }
        let acked = self.check_swaps(acked, &mut failed).await;
        let refused = self.publish_outputs(&acked, &digest).await;
        let mut done = Vec::with_capacity(acked.len());
        for ((job, _), refused) in acked.into_iter().zip(refused) {
            match refused {
                None => done.push(job),
                Some(reason) => {
                    self.h.metrics.failure("publish");
                    tracing::warn!(handler = self.name(), message_id = job.msg.message_id().unwrap_or("-"), error = %reason, "output not confirmed; input will be retried");
                    if job.msg.attempt() <= 1 {
                        failed_first += 1;
                    }
                    failed.push((
                        job,
                        Settle::Retry {
                            delay: None,
                            kind: "publish",
                            reason,
                        },
                    ));
                }
            }
        }
        if let Some((canary, on_canary)) = canary {
            let ok = done.iter().filter(|j| j.msg.attempt() <= 1).count() as u64;
            canary.record(on_canary, ok, failed_first);
            self.h.metrics.canary_runs(on_canary, ok, failed_first);
        }
        Ran {
            done,
            failed,
            digest,
        }
    }

    /// Before outputs go out: for each acked message that both swapped a
    /// key (`compare-and-swap`) and has outputs, checks in one round trip
    /// that its commit would go through now. One that would not is not
    /// published: a conflict reruns it (not an attempt), an increment of
    /// something that is not a counter retries it, a lost lease requeues
    /// it. The commit checks again; this only keeps a conflict found then
    /// (a swap that raced the confirms) from being the common case. A store
    /// error here decides nothing: the commit will.
    async fn check_swaps(
        &self,
        acked: Vec<(Job, Vec<Outbound>)>,
        failed: &mut Vec<(Job, Settle)>,
    ) -> Vec<(Job, Vec<Outbound>)> {
        let swaps = |j: &Job, outputs: &[Outbound]| {
            !outputs.is_empty()
                && j.writes.as_ref().is_some_and(|w| {
                    w.ops
                        .iter()
                        .any(|op| matches!(op, crate::dedup::KvOp::CompareAndSwap { .. }))
                })
        };
        if !acked.iter().any(|(j, o)| swaps(j, o)) {
            return acked;
        }
        let items: Vec<(Option<&Lease>, &KvWrites)> = acked
            .iter()
            .filter(|(j, o)| swaps(j, o))
            .filter_map(|(j, _)| Some((j.lease.as_ref(), j.writes.as_ref()?)))
            .collect();
        let mut checked = self.shared.store.check_many(&items).await.into_iter();
        let mut kept = Vec::with_capacity(acked.len());
        for (job, outputs) in acked {
            if !swaps(&job, &outputs) {
                kept.push((job, outputs));
                continue;
            }
            let message_id = job.msg.message_id().unwrap_or("-").to_owned();
            match checked.next() {
                Some(Ok(Commit::Conflict(why))) => {
                    self.h.metrics.kv_conflicts.inc();
                    tracing::info!(handler = self.name(), message_id, conflict = %why, "key-value conflict before publishing: nothing published or written; the message runs again later (not an attempt)");
                    let floor = Duration::from_millis(self.h.cfg.retry.backoff_ms);
                    failed.push((job, Settle::Defer(floor)));
                }
                Some(Ok(Commit::NotACounter(why))) => failed.push((
                    job,
                    Settle::Retry {
                        delay: None,
                        kind: "kv",
                        reason: format!("key-value commit refused: {why}"),
                    },
                )),
                Some(Ok(Commit::Lost)) => {
                    tracing::warn!(
                        handler = self.name(),
                        message_id,
                        "dedup lease lost while the handler ran: not publishing; the message goes back to the queue"
                    );
                    failed.push((job, Settle::Requeue));
                }
                _ => kept.push((job, outputs)),
            }
        }
        kept
    }

    /// Counts what the guest wrote past its caps, and cuts its reject or
    /// retry reason to the handler's `reason_bytes` (on a character
    /// boundary) before it reaches a log line or a header.
    fn capped(&self, mut c: Completed) -> Completed {
        let m = &self.h.metrics;
        m.log_dropped.inc_by(c.logs_dropped);
        m.stdio_dropped.inc_by(c.stdio_dropped);
        let cap = self.h.env.limits.reason_bytes;
        let reason = match &mut c.outcome {
            Outcome::Retry(r) => &mut r.reason,
            Outcome::Reject(reason) => reason,
            Outcome::Ack => return c,
        };
        if reason.len() > cap {
            // The same cut as every reason warren writes (the note of what
            // was left off included in the cap), so nothing cuts it twice.
            let capped = cap_text(reason, cap).into_owned();
            let kept = capped.rfind("... [").unwrap_or(capped.len());
            m.reason_dropped.inc_by((reason.len() - kept) as u64);
            *reason = capped;
        }
        c
    }

    fn lease_ttl(&self) -> Duration {
        Duration::from_millis(self.h.cfg.dedup.lease_ms)
    }

    fn window(&self) -> Duration {
        Duration::from_secs(self.h.cfg.dedup.window_s)
    }

    /// Step 1: each message's key; a message without one is dead-lettered
    /// when dedup needs one (`dedup.missing = "reject"`), and so is one with
    /// a header nested too deep or a body over the handler's limit.
    async fn keys(&self, batch: Vec<Inbound>) -> Vec<Job> {
        let dedup = &self.h.cfg.dedup;
        let mut jobs = Vec::with_capacity(batch.len());
        let mut keyless = Vec::new();
        for mut msg in batch {
            if let Some(t) = &self.trace {
                t.begin(&mut msg);
            }
            // A header too deep to hand to a guest: out of the way at once,
            // before any claim.
            if let Some(reason) = msg.unreadable() {
                keyless.push((
                    msg,
                    Settle::DeadLetter {
                        kind: "invalid-headers",
                        reason,
                    },
                ));
                continue;
            }
            // A body larger than the handler takes: never copied for a
            // guest, never retried.
            if let Some(reason) = self.h.cfg.body_refusal(msg.body().len() as u64) {
                keyless.push((
                    msg,
                    Settle::DeadLetter {
                        kind: "body-too-large",
                        reason,
                    },
                ));
                continue;
            }
            let key = idempotency_key(&dedup.key, &msg);
            if key.is_none() && dedup.enabled && dedup.missing == MissingKey::Reject {
                let reason = format!("message has no dedup key ({})", describe_key(&dedup.key));
                keyless.push((
                    msg,
                    Settle::DeadLetter {
                        kind: "no-dedup-key",
                        reason,
                    },
                ));
                continue;
            }
            jobs.push(Job {
                msg,
                key,
                lease: None,
                writes: None,
            });
        }
        // Dead-letters only: nothing is kept in place.
        let kept = self.settle_all(keyless, None).await;
        debug_assert!(kept.is_empty());
        jobs
    }

    /// Step 5: marks the keys of the messages whose outputs are durable as
    /// done, committing their key-value writes in the same atomic step, in
    /// one round trip per kind (plain marks, commits), and acks those
    /// marked (and those with neither a lease nor writes). Returns the
    /// messages that could not be marked, with how they settle: a lost
    /// lease goes back to the queue now (another owner may have it), a
    /// store error after a pause, a compare-and-swap conflict through a
    /// wait queue (not an attempt), an increment of something that is not
    /// a counter as a failed attempt. Nothing of their writes is in.
    async fn complete_and_ack(&self, done: Vec<Job>) -> Vec<(Job, Settle)> {
        if let Some(t) = &self.trace {
            for j in &done {
                t.settling(j.msg.delivery_tag());
            }
        }
        let leases: Vec<&Lease> = done
            .iter()
            .filter(|j| j.writes.is_none())
            .filter_map(|j| j.lease.as_ref())
            .collect();
        let commits: Vec<(Option<&Lease>, &KvWrites)> = done
            .iter()
            .filter_map(|j| Some((j.lease.as_ref(), j.writes.as_ref()?)))
            .collect();
        let (marked, committed) = tokio::join!(
            self.shared.store.complete_many(&leases, self.window()),
            self.shared.store.commit_many(&commits, self.window()),
        );
        let (mut marked, mut committed) = (marked.into_iter(), committed.into_iter());
        let mut unmarked = Vec::new();
        let mut acked = 0;
        for job in done {
            let message_id = job.msg.message_id().unwrap_or("-");
            let how = if let Some(writes) = &job.writes {
                let key = job.lease.as_ref().map_or("-", |l| l.key.as_str());
                match committed.next() {
                    Some(Ok(Commit::Done)) => {
                        self.h.metrics.kv_writes.inc_by(writes.ops.len() as u64);
                        None
                    }
                    Some(Ok(Commit::Lost)) => {
                        tracing::warn!(
                            handler = self.name(),
                            message_id,
                            key,
                            "dedup lease lost while the handler ran: its key-value writes are refused and it is not acked; the message goes back to the queue"
                        );
                        Some(Settle::Requeue)
                    }
                    Some(Ok(Commit::Conflict(why))) => {
                        self.h.metrics.kv_conflicts.inc();
                        tracing::info!(handler = self.name(), message_id, key, conflict = %why, "key-value commit conflict: nothing written; the message runs again later (not an attempt)");
                        let floor = Duration::from_millis(self.h.cfg.retry.backoff_ms);
                        Some(Settle::Defer(floor))
                    }
                    Some(Ok(Commit::NotACounter(why))) => Some(Settle::Retry {
                        delay: None,
                        kind: "kv",
                        reason: format!("key-value commit refused: {why}"),
                    }),
                    Some(Err(e)) => {
                        tracing::warn!(handler = self.name(), message_id, key, error = %e, "cannot commit key-value writes: not acking; the message goes back to the queue");
                        Some(Settle::RequeueLater)
                    }
                    None => Some(Settle::RequeueLater),
                }
            } else if let Some(lease) = &job.lease {
                match marked.next() {
                    Some(Ok(true)) => None,
                    Some(Ok(false)) => {
                        tracing::warn!(handler = self.name(), message_id, key = %lease.key, "dedup lease lost while the handler ran: not acking; the message goes back to the queue");
                        Some(Settle::Requeue)
                    }
                    Some(Err(e)) => {
                        tracing::warn!(handler = self.name(), message_id, key = %lease.key, error = %e, "cannot write the dedup done-marker: not acking; the message goes back to the queue");
                        Some(Settle::RequeueLater)
                    }
                    // The store answers every lease; were one missing, the
                    // key is not known to be done.
                    None => Some(Settle::RequeueLater),
                }
            } else {
                None
            };
            match how {
                Some(how) => unmarked.push((job, how)),
                None => {
                    acked += 1;
                    if let Some(t) = &self.trace {
                        t.settled(job.msg.delivery_tag(), trace::Fate::Ack);
                    }
                    job.msg.ack();
                }
            }
        }
        self.h.metrics.ack.inc_by(acked);
        // A refused commit left the lease in place: give it up, so the
        // message's next run (deferred or retried) can claim the key.
        self.release(
            unmarked
                .iter()
                .filter(|(_, how)| matches!(how, Settle::Defer(_) | Settle::Retry { .. }))
                .filter_map(|(j, _)| j.lease.as_ref()),
        )
        .await;
        unmarked
    }

    /// Gives up leases after failed or rejected runs, in one round trip.
    async fn release<'l>(&self, leases: impl Iterator<Item = &'l Lease>) {
        let leases: Vec<&Lease> = leases.collect();
        let results = self.shared.store.release_many(&leases).await;
        for (lease, result) in leases.iter().zip(results) {
            if let Err(e) = result {
                tracing::warn!(handler = self.name(), key = %lease.key, error = %e, "cannot release the dedup lease; it expires on its own");
            }
        }
    }
}
