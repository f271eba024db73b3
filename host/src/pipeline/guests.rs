//! Step 3: the batch's guests, run one after another in the sandbox.

use std::sync::Arc;
use std::time::Instant;

use super::{Job, Pipeline, convert};
use crate::config;
use crate::runtime::{Completed, Message, Module, RunError};

impl Pipeline<'_> {
    /// Step 3: runs every message of the batch, one after the other, on
    /// the batch's own task. Each run is a future that yields its worker
    /// every epoch tick and ends at the handler's deadline, so no blocking
    /// thread is needed (a hand-off to one was a large share of the
    /// per-message cost).
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
        let permit = rt.acquire().await;
        let env = &self.h.env;
        let reuse = self.h.cfg.instances == config::Instances::Reuse && !on_canary;
        self.h.metrics.in_flight.inc_by(n as i64);
        let mut results = Vec::with_capacity(n);
        let mut times = Vec::with_capacity(n);
        for (message, job) in messages.iter().zip(jobs) {
            let started = Instant::now();
            let from = self.trace.as_ref().map(|_| crate::telemetry::now_ns());
            let result = if reuse {
                let max = self.h.cfg.reuse_max;
                rt.run_warm(module, env, message, &permit, &self.h.warm, max)
                    .await
            } else {
                rt.run(module, env, message, &permit).await
            };
            let took = started.elapsed().as_secs_f64();
            if !on_canary
                && let Some(shadow) = self.h.shadow.load_full()
                && shadow.sampled()
            {
                // The candidate, on the same message and permit; what it
                // publishes stays in its buffer and is dropped with it.
                let candidate = rt.run(&shadow.module, env, message, &permit).await;
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
            times.push(took);
            results.push(result);
        }
        self.h.metrics.recent.latencies(&times);
        self.h.metrics.in_flight.dec_by(n as i64);
        results
    }
}
