//! Step 3: the batch's guests, run one after another in the sandbox.

use std::sync::Arc;
use std::time::Instant;

use super::{Job, Pipeline, convert};
use crate::config;
use crate::runtime::{Completed, Message, Module, RunError};

impl Pipeline<'_> {
    /// Step 3: runs every message of the batch, one after the other, on one
    /// blocking thread: one hand-off for the batch, not one per message.
    pub(super) async fn run_guests(
        &self,
        module: &Arc<Module>,
        jobs: &[Job],
    ) -> Vec<Result<Completed, RunError>> {
        let messages: Vec<Message> = jobs
            .iter()
            .map(|j| {
                let token = j.lease.as_ref().map_or(0, |l| l.fencing_token);
                convert::message_for_guest(&j.msg, j.key.clone(), token)
            })
            .collect();
        let n = messages.len();
        let permit = self.shared.runtime.acquire().await;
        let (rt, env, module) = (
            self.shared.runtime.clone(),
            self.h.env.clone(),
            module.clone(),
        );
        let reuse = (self.h.cfg.instances == config::Instances::Reuse)
            .then(|| (self.h.warm.clone(), self.h.cfg.reuse_max));
        let duration = self.h.metrics.duration.clone();
        self.h.metrics.in_flight.inc_by(n as i64);
        let ran = tokio::task::spawn_blocking(move || {
            messages
                .iter()
                .map(|message| {
                    let started = Instant::now();
                    let result = match &reuse {
                        Some((warm, max)) => {
                            rt.run_warm(&module, &env, message, &permit, warm, *max)
                        }
                        None => rt.run(&module, &env, message, &permit),
                    };
                    duration.observe(started.elapsed().as_secs_f64());
                    result
                })
                .collect::<Vec<_>>()
        })
        .await;
        self.h.metrics.in_flight.dec_by(n as i64);
        ran.unwrap_or_else(|e| {
            (0..n)
                .map(|_| {
                    Err(RunError::Trap {
                        message: format!("host task failed: {e}"),
                    })
                })
                .collect()
        })
    }
}
