//! After the connection was lost to a frame the client could not parse:
//! the sweep that moves such deliveries out of the way, and what is logged
//! and counted of it.

use crate::amqp;
use crate::context::Host;

impl Host {
    /// After the client lost the connection to a frame it could not parse:
    /// moves such messages from the head of each handler's queue to its
    /// dead-letter queue before consuming again, so one of them cannot
    /// stop the queue, on `url`, the node the lost connection was to.
    /// Looks at up to `channels × prefetch` messages per
    /// queue (what the client could have been sent when it failed) plus
    /// [`amqp::quarantine::EXTRA`]. A failure is logged; consuming goes on.
    pub(super) async fn quarantine(&self, url: &str) {
        let targets = self
            .handlers
            .iter()
            .map(|h| amqp::quarantine::Target {
                handler: h.cfg.name.clone(),
                queue: h.cfg.queue.clone(),
                dead_letter_queue: h.topology.dead_letter_queue.clone(),
                bound: h
                    .cfg
                    .channels
                    .saturating_mul(u32::from(h.cfg.prefetch))
                    .saturating_add(amqp::quarantine::EXTRA),
            })
            .collect();
        let summary = amqp::quarantine::sweep(url, &self.shared.host, targets).await;
        for q in &summary.quarantined {
            tracing::warn!(
                handler = %q.handler,
                queue = %q.queue,
                delivery_tag = q.delivery_tag,
                reason = %q.reason,
                "unparseable message moved to the dead-letter queue"
            );
            self.shared
                .metrics
                .quarantined
                .get_or_create(&crate::metrics::HandlerLabel {
                    handler: q.handler.clone(),
                })
                .inc();
        }
        match &summary.error {
            Some(e) => tracing::warn!(
                error = %e,
                inspected = summary.inspected,
                quarantined = summary.quarantined.len(),
                "quarantine sweep ended early; consuming again"
            ),
            None => tracing::info!(
                inspected = summary.inspected,
                quarantined = summary.quarantined.len(),
                "quarantine sweep done"
            ),
        }
    }
}
