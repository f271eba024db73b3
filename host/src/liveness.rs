//! What a host that is not consuming tells: since when and why it has not
//! been consuming, and a warning in its log every [`NOT_CONSUMING_EVERY`]
//! until it consumes again. Readiness itself is `Health.amqp`, set by the
//! supervisor in `server.rs`; this module only reports.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use crate::context::Shared;

/// How often a host that is not consuming says so in its log.
pub const NOT_CONSUMING_EVERY: Duration = Duration::from_secs(5);

/// Since when this host has not been consuming, and why; empty while it
/// consumes. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Down(Arc<Mutex<Option<(Instant, String)>>>);

impl Down {
    /// Not consuming from now, for `reason`.
    pub fn new(reason: &str) -> Down {
        Down(Arc::new(Mutex::new(Some((Instant::now(), reason.into())))))
    }

    /// Not consuming, for `reason`; since the earlier time if already down.
    pub fn set(&self, reason: String) {
        let mut d = self.0.lock().expect("down lock");
        let since = d.as_ref().map_or_else(Instant::now, |(since, _)| *since);
        *d = Some((since, reason));
    }

    /// Consuming again.
    pub fn consuming(&self) {
        *self.0.lock().expect("down lock") = None;
    }

    fn get(&self) -> Option<(Instant, String)> {
        self.0.lock().expect("down lock").clone()
    }
}

/// Logs a warning every [`NOT_CONSUMING_EVERY`] while the host consumes
/// nothing, until shutdown: an operator, or a process supervisor reading
/// `/readyz`, sees a host that lost its consumers, not a quiet one.
pub async fn report_not_consuming(shared: Arc<Shared>, down: Down) {
    let mut tick = tokio::time::interval(NOT_CONSUMING_EVERY);
    tick.tick().await;
    loop {
        tick.tick().await;
        if *shared.shutdown.borrow() {
            return;
        }
        let Some((since, reason)) = down.get() else {
            continue;
        };
        tracing::warn!(
            down_s = since.elapsed().as_secs(),
            reason = %reason,
            "not consuming from RabbitMQ: messages wait in their queues and /readyz reports not ready"
        );
    }
}
