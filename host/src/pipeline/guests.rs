//! Step 3: the batch's guests, run in the sandbox: one after another, or
//! a few at once for a module that sends HTTP requests.

use std::sync::Arc;
use std::time::Instant;

use futures_util::StreamExt as _;
use futures_util::stream::FuturesOrdered;

use super::{Job, Pipeline, convert};
use crate::config;
use crate::runtime::{Completed, Message, Module, Permit, RUNS_AT_ONCE, RunError};

impl Pipeline<'_> {
    /// Step 3: runs every message of the batch on the batch's own task.
    /// Each run is a future that yields its worker every epoch tick and
    /// ends at the handler's deadline, so no blocking thread is needed (a
    /// hand-off to one was a large share of the per-message cost).
    ///
    /// The runs go one after another under one permit (one instance at a
    /// time: the guest computes, and more at once would only take turns on
    /// the same thread), except for a module that sends HTTP requests on
    /// fresh instances (`instances = "per-message"`, the default): it
    /// mostly waits on servers, so up to
    /// [`RUNS_AT_ONCE`] of its runs go at once, each with a permit (and an
    /// instance) of its own, their results kept in the batch's order. A
    /// batch of 16 calling a 50 ms API then takes 200 ms, not 800.
    ///
    /// A canary's candidate (`on_canary`) always runs on a fresh instance
    /// (warm instances are the live version's) and is never shadowed.
    pub(super) async fn run_guests(
        &self,
        module: &Arc<Module>,
        jobs: &[Job],
        on_canary: bool,
    ) -> Vec<Result<Completed, RunError>> {
        let messages: Vec<Message> = jobs
            .iter()
            .map(|j| {
                let token = j.lease.as_ref().map_or(0, |l| l.fencing_token);
                convert::message_for_guest(&j.msg, j.key.clone(), token)
            })
            .collect();
        let n = messages.len();
        let rt = &self.shared.runtime;
        let reuse = self.h.cfg.instances == config::Instances::Reuse && !on_canary;
        self.h.metrics.in_flight.inc_by(n as i64);
        // Only where the pool has the slots for it: a `reuse` handler's
        // warm instances sit idle in slots of their own, so even its canary
        // candidate (fresh instances) runs one message at a time.
        let at_once =
            self.h.cfg.instances == config::Instances::PerMessage && module.waits_on_http();
        let ran: Vec<(Result<Completed, RunError>, f64)> = if at_once {
            // A window of runs in flight, refilled as the oldest ends.
            let mut waiting = messages.iter().zip(jobs);
            let mut running = FuturesOrdered::new();
            for (message, job) in waiting.by_ref().take(RUNS_AT_ONCE as usize) {
                running.push_back(self.run_with_permit(module, message, job, on_canary));
            }
            let mut ran = Vec::with_capacity(n);
            while let Some(one) = running.next().await {
                ran.push(one);
                if let Some((message, job)) = waiting.next() {
                    running.push_back(self.run_with_permit(module, message, job, on_canary));
                }
            }
            ran
        } else {
            let permit = rt.acquire().await;
            let mut ran = Vec::with_capacity(n);
            for (message, job) in messages.iter().zip(jobs) {
                ran.push(
                    self.run_one(module, message, job, on_canary, reuse, &permit)
                        .await,
                );
            }
            ran
        };
        let (results, times): (Vec<_>, Vec<_>) = ran.into_iter().unzip();
        self.h.metrics.recent.latencies(&times);
        self.h.metrics.in_flight.dec_by(n as i64);
        results
    }

    /// [`Self::run_one`] on a fresh instance, with a permit of its own.
    async fn run_with_permit(
        &self,
        module: &Arc<Module>,
        message: &Message,
        job: &Job,
        on_canary: bool,
    ) -> (Result<Completed, RunError>, f64) {
        let permit = self.shared.runtime.acquire().await;
        self.run_one(module, message, job, on_canary, false, &permit)
            .await
    }

    /// One message's run (and its shadow run, when sampled), timed.
    async fn run_one(
        &self,
        module: &Arc<Module>,
        message: &Message,
        job: &Job,
        on_canary: bool,
        reuse: bool,
        permit: &Permit,
    ) -> (Result<Completed, RunError>, f64) {
        let rt = &self.shared.runtime;
        let env = &self.h.env;
        let started = Instant::now();
        let from = self.trace.as_ref().map(|_| crate::telemetry::now_ns());
        let result = if reuse {
            let max = self.h.cfg.reuse_max;
            rt.run_warm(module, env, message, permit, &self.h.warm, max)
                .await
        } else {
            rt.run(module, env, message, permit).await
        };
        let took = started.elapsed().as_secs_f64();
        if !on_canary
            && let Some(shadow) = self.h.shadow.load_full()
            && shadow.sampled()
        {
            // The candidate, on the same message and permit; what it
            // publishes stays in its buffer and is dropped with it.
            let candidate = rt.run(&shadow.module, env, message, permit).await;
            let id = job.msg.message_id().unwrap_or("-");
            shadow.record(id, &module.digest().to_string(), &result, &candidate);
        }
        if let (Some(t), Some(from)) = (&self.trace, from) {
            let error = result.as_ref().err().map(|e| e.kind());
            let digest = module.digest().to_string();
            let to = crate::telemetry::now_ns();
            t.ran(job.msg.delivery_tag(), &digest, from, to, error);
        }
        self.h.metrics.duration.observe(took);
        (result, took)
    }
}
