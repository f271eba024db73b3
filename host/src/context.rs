//! What the layers above the pipeline share with it: the process-wide
//! [`Shared`] (sandbox, dedup store, metrics, health, shutdown) and one
//! [`HandlerCtx`] per configured handler (settings, live module version,
//! concurrency limits, metric handles).
//!
//! A module of its own so that the pipeline, the registry, the admin
//! endpoint and the file watcher all depend on it, and none of them on
//! each other.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::{Semaphore, watch};

use crate::amqp::Topology;
use crate::config::{self, OnUnavailable};
use crate::dedup::Store;
use crate::metrics::{HandlerMetrics, Metrics};
use crate::runtime::{HandlerEnv, Runtime, WarmInstances};
use crate::signing::Trust;
use crate::telemetry::Tracer;
use crate::versions::Versions;

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
    /// Hands spans to the OTLP exporter; none when telemetry is off.
    pub tracer: Option<Tracer>,
    /// Which module signatures a deploy accepts (`[deploy]`).
    pub trust: Trust,
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
    /// The live version and its history. A deploy swaps it; a batch loads
    /// it once when its run starts, so its messages finish on the version
    /// they started with.
    pub versions: Versions,
    pub topology: Topology,
    /// Idle instances kept for the next message (`instances = "reuse"`).
    pub warm: Arc<WarmInstances>,
    /// `consumers` permits: messages in flight at once in this process.
    pub concurrency: Arc<Semaphore>,
    /// Batches in flight at once ([`config::Handler::batch_slots`]).
    /// Bounding batches, not only messages, is what makes batches form:
    /// while every slot is busy, deliveries gather in the prefetch buffer,
    /// and the next batch takes them all. With only a bound on messages, a
    /// loaded consumer settles into batches of one: each finished message
    /// frees one permit, and the next batch takes one delivery.
    pub batches: Arc<Semaphore>,
    pub metrics: HandlerMetrics,
    /// A candidate version compared with the live one on a sample of
    /// messages (`warren shadow`), if one is.
    pub shadow: arc_swap::ArcSwapOption<crate::shadow::Shadow>,
    /// A candidate version running on a share of the messages, beside the
    /// live one, until the fleet promotes or rolls it back
    /// (`warren deploy --fleet --canary`), if one is.
    pub canary: arc_swap::ArcSwapOption<crate::canary::Canary>,
}

/// Everything `warren run` started: what the admin endpoint and the file
/// watcher act on, and what tests can start in-process.
#[derive(Debug, Clone)]
pub struct Host {
    pub shared: Arc<Shared>,
    pub handlers: Vec<Arc<HandlerCtx>>,
}
