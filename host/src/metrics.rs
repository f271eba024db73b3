//! Prometheus metrics: what happened to messages, per handler, and the state
//! of the connections. Served as text by the admin endpoint.
//!
//! Counting is a lock-free add: each handler's label sets are created once,
//! when the handler is set up ([`Metrics::handler`]), so the message path
//! never builds a label or takes a lock.

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::recent::Recent;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HandlerLabel {
    pub handler: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub handler: String,
    /// `ack`, `retry`, `dead_letter`, `dedup_hit`, `deferred`, `requeued`.
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FailureLabels {
    pub handler: String,
    /// A [`crate::runtime::RunError::kind`], or `publish`.
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DroppedLabels {
    pub handler: String,
    /// `log` (lines), `stdio` (bytes of stdout and stderr) or `reason`
    /// (bytes cut from reject and retry reasons).
    pub channel: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CanaryLabels {
    pub handler: String,
    /// `canary` (the candidate) or `live`.
    pub version: String,
    /// `ok` or `failed`.
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModuleLabels {
    pub handler: String,
    pub digest: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabels {
    pub handler: String,
    /// The `http.allow` pattern the request matched (as
    /// `scheme://host:port`, wildcards kept): bounded by the config, never
    /// a name the guest chose.
    pub destination: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpErrorLabels {
    pub handler: String,
    /// As in [`HttpLabels`]; `-` for a refused request.
    pub destination: String,
    /// `no_grant`, `not_allowed`, `max_requests` (refusals before
    /// sending), `internal_address` (a wildcard grant resolving to the
    /// host's own network), `timeout`, `body_too_large`, `connect`, `tls`,
    /// `protocol`.
    pub kind: String,
}

/// Every metric warren exports. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Metrics {
    registry: Arc<Registry>,
    pub messages: Family<OutcomeLabels, Counter>,
    pub failures: Family<FailureLabels, Counter>,
    /// Messages handled without dedup because the store was unavailable and
    /// the policy is `process`.
    pub dedup_bypassed: Family<HandlerLabel, Counter>,
    pub duration: Family<HandlerLabel, Histogram>,
    pub batch: Family<HandlerLabel, Histogram>,
    /// Key-value writes committed, and commits refused by a conflict.
    pub kv_writes: Family<HandlerLabel, Counter>,
    pub kv_conflicts: Family<HandlerLabel, Counter>,
    /// Key-value reads the read cache answered, and those that went to
    /// Redis through it (copied from the store every few seconds).
    pub kv_read_cache_hits: Counter,
    pub kv_read_cache_misses: Counter,
    /// Outbound HTTP requests sent, the ones that failed or were refused,
    /// and their latency to the end of the response body.
    pub http_requests: Family<HttpLabels, Counter>,
    pub http_errors: Family<HttpErrorLabels, Counter>,
    pub http_duration: Family<HttpLabels, Histogram>,
    pub in_flight: Family<HandlerLabel, Gauge>,
    /// 1 for the live module version of each handler, 0 for the other
    /// versions it keeps in memory (`runtime.keep_versions`); a dropped
    /// version's series goes with it.
    pub module: Family<ModuleLabels, Gauge>,
    pub deploys: Family<HandlerLabel, Counter>,
    /// What guests wrote past their per-message caps and the host dropped.
    pub guest_dropped: Family<DroppedLabels, Counter>,
    pub amqp_connected: Gauge,
    pub redis_available: Gauge,
    pub reconnects: Counter,
    /// Messages the AMQP client could not parse, moved to the dead-letter
    /// queue by the quarantine (they never reach the pipeline, so they are
    /// not in `messages`).
    pub quarantined: Family<HandlerLabel, Counter>,
    /// Messages ready in each handler's dead-letter queue, as the broker
    /// last said (polled by the supervisor).
    pub dead_letter_depth: Family<HandlerLabel, Gauge>,
    /// First attempts run while a canary is in progress, by version and
    /// result.
    pub canary_messages: Family<CanaryLabels, Counter>,
    /// The share of messages a canary in progress runs (0: none).
    pub canary_percent: Family<HandlerLabel, Gauge>,
    /// Each handler's latest latencies and failures, for the dashboard.
    recent: Arc<std::sync::Mutex<std::collections::HashMap<String, Arc<Recent>>>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut r = Registry::with_prefix("warren");
        let messages = Family::<OutcomeLabels, Counter>::default();
        r.register(
            "messages",
            "Messages settled, by handler and outcome",
            messages.clone(),
        );
        let failures = Family::<FailureLabels, Counter>::default();
        r.register(
            "handler_failures",
            "Handler runs that ended without an outcome, by kind",
            failures.clone(),
        );
        let dedup_bypassed = Family::<HandlerLabel, Counter>::default();
        r.register(
            "dedup_bypassed",
            "Messages handled without dedup while the dedup store was unavailable",
            dedup_bypassed.clone(),
        );
        let duration = Family::<HandlerLabel, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.000_05, 2.0, 20))
        });
        r.register(
            "handler_duration_seconds",
            "Time in the sandbox per message",
            duration.clone(),
        );
        let batch = Family::<HandlerLabel, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(1.0, 2.0, 10))
        });
        r.register(
            "batch_messages",
            "Messages per batch: what a consumer channel had received when a batch slot freed up",
            batch.clone(),
        );
        let in_flight = Family::<HandlerLabel, Gauge>::default();
        r.register("in_flight", "Messages being handled now", in_flight.clone());
        let module = Family::<ModuleLabels, Gauge>::default();
        r.register(
            "module_info",
            "The live module version (digest) of each handler",
            module.clone(),
        );
        let deploys = Family::<HandlerLabel, Counter>::default();
        r.register("deploys", "Module versions swapped in", deploys.clone());
        let guest_dropped = Family::<DroppedLabels, Counter>::default();
        r.register(
            "guest_output_dropped",
            "What guests wrote past their per-message caps and the host dropped: log lines (channel log), stdout and stderr bytes (stdio), reason bytes (reason)",
            guest_dropped.clone(),
        );
        let amqp_connected = Gauge::default();
        r.register(
            "amqp_connected",
            "1 while connected to RabbitMQ",
            amqp_connected.clone(),
        );
        let redis_available = Gauge::default();
        r.register(
            "redis_available",
            "1 while the dedup store answers",
            redis_available.clone(),
        );
        let reconnects = Counter::default();
        r.register(
            "amqp_reconnects",
            "Connections to RabbitMQ re-established",
            reconnects.clone(),
        );
        let quarantined = Family::<HandlerLabel, Counter>::default();
        r.register(
            "quarantined",
            "Messages the AMQP client could not parse, moved to the dead-letter queue",
            quarantined.clone(),
        );
        let dead_letter_depth = Family::<HandlerLabel, Gauge>::default();
        r.register(
            "dead_letter_depth",
            "Messages ready in the handler's dead-letter queue, polled every few seconds",
            dead_letter_depth.clone(),
        );
        let kv_writes = Family::<HandlerLabel, Counter>::default();
        r.register(
            "kv_writes",
            "Key-value writes committed with their message's done-marker",
            kv_writes.clone(),
        );
        let kv_conflicts = Family::<HandlerLabel, Counter>::default();
        r.register(
            "kv_conflicts",
            "Key-value commits refused because a compare-and-swap no longer held (the message runs again)",
            kv_conflicts.clone(),
        );
        let kv_read_cache_hits = Counter::default();
        r.register(
            "kv_read_cache_hits",
            "Key-value reads answered by the process's read cache (redis.read_cache_mb)",
            kv_read_cache_hits.clone(),
        );
        let kv_read_cache_misses = Counter::default();
        r.register(
            "kv_read_cache_misses",
            "Key-value reads the read cache sent to Redis",
            kv_read_cache_misses.clone(),
        );
        let http_requests = Family::<HttpLabels, Counter>::default();
        r.register(
            "http_requests",
            "Outbound HTTP requests sent by handlers, by destination pattern",
            http_requests.clone(),
        );
        let http_errors = Family::<HttpErrorLabels, Counter>::default();
        r.register(
            "http_errors",
            "Outbound HTTP requests refused or failed, by kind",
            http_errors.clone(),
        );
        let http_duration = Family::<HttpLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.000_1, 2.0, 18))
        });
        r.register(
            "http_request_duration_seconds",
            "Outbound HTTP request time, from sending to the end of the response body",
            http_duration.clone(),
        );
        let canary_messages = Family::<CanaryLabels, Counter>::default();
        r.register(
            "canary_messages",
            "First attempts run while a canary is in progress, by version (canary, live) and result (ok, failed)",
            canary_messages.clone(),
        );
        let canary_percent = Family::<HandlerLabel, Gauge>::default();
        r.register(
            "canary_percent",
            "The share of first attempts a canary in progress runs on its candidate (0: no canary)",
            canary_percent.clone(),
        );
        Self {
            http_requests,
            http_errors,
            http_duration,
            dead_letter_depth,
            canary_messages,
            canary_percent,
            recent: Arc::default(),
            registry: Arc::new(r),
            kv_writes,
            kv_conflicts,
            kv_read_cache_hits,
            kv_read_cache_misses,
            messages,
            failures,
            dedup_bypassed,
            duration,
            batch,
            in_flight,
            module,
            deploys,
            guest_dropped,
            amqp_connected,
            redis_available,
            reconnects,
            quarantined,
        }
    }

    /// The handles one handler counts its messages with, created now so that
    /// counting costs an atomic add.
    pub fn handler(&self, handler: &str) -> HandlerMetrics {
        let label = HandlerLabel {
            handler: handler.into(),
        };
        let outcome = |o: &str| {
            self.messages
                .get_or_create(&OutcomeLabels {
                    handler: handler.into(),
                    outcome: o.into(),
                })
                .clone()
        };
        let dropped = |channel: &str| {
            self.guest_dropped
                .get_or_create(&DroppedLabels {
                    handler: handler.into(),
                    channel: channel.into(),
                })
                .clone()
        };
        HandlerMetrics {
            log_dropped: dropped("log"),
            stdio_dropped: dropped("stdio"),
            reason_dropped: dropped("reason"),
            ack: outcome("ack"),
            dedup_hit: outcome("dedup_hit"),
            retry: outcome("retry"),
            deferred: outcome("deferred"),
            dead_letter: outcome("dead_letter"),
            requeued: outcome("requeued"),
            duration: self.duration.get_or_create(&label).clone(),
            batch: self.batch.get_or_create(&label).clone(),
            in_flight: self.in_flight.get_or_create(&label).clone(),
            dedup_bypassed: self.dedup_bypassed.get_or_create(&label).clone(),
            kv_writes: self.kv_writes.get_or_create(&label).clone(),
            kv_conflicts: self.kv_conflicts.get_or_create(&label).clone(),
            failures: self.failures.clone(),
            handler: handler.into(),
            recent: self.recent(handler),
            dead_letter_depth: self.dead_letter_depth.get_or_create(&label).clone(),
            canary: ["canary", "live"].map(|version| {
                ["ok", "failed"].map(|result| {
                    self.canary_messages
                        .get_or_create(&CanaryLabels {
                            handler: handler.into(),
                            version: version.into(),
                            result: result.into(),
                        })
                        .clone()
                })
            }),
            canary_percent: self.canary_percent.get_or_create(&label).clone(),
        }
    }

    /// The latest latencies and failures of `handler` (one per handler,
    /// however often it is asked for).
    pub fn recent(&self, handler: &str) -> Arc<Recent> {
        self.recent
            .lock()
            .expect("recent map lock")
            .entry(handler.to_string())
            .or_default()
            .clone()
    }

    /// Records `digest` as the live version of `handler`, replacing `old`.
    pub fn set_module(&self, handler: &str, old: Option<&str>, digest: &str) {
        if let Some(old) = old {
            self.module
                .get_or_create(&ModuleLabels {
                    handler: handler.into(),
                    digest: old.into(),
                })
                .set(0);
        }
        self.module
            .get_or_create(&ModuleLabels {
                handler: handler.into(),
                digest: digest.into(),
            })
            .set(1);
    }

    /// Drops the series of a version no longer kept in memory.
    pub fn forget_module(&self, handler: &str, digest: &str) {
        self.module.remove(&ModuleLabels {
            handler: handler.into(),
            digest: digest.into(),
        });
    }

    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }

    /// The value of counter `messages{handler, outcome}` (for tests and
    /// `warren status`).
    pub fn count(&self, handler: &str, outcome: &str) -> u64 {
        self.messages
            .get_or_create(&OutcomeLabels {
                handler: handler.into(),
                outcome: outcome.into(),
            })
            .get()
    }
}

/// One handler's counters, gauges and histogram, looked up once.
#[derive(Clone, Debug)]
pub struct HandlerMetrics {
    /// `messages{outcome="ack"}`: handled, outputs confirmed, acked.
    pub ack: Counter,
    /// Acked without running: the key was already done.
    pub dedup_hit: Counter,
    /// Sent to a wait queue after a failure.
    pub retry: Counter,
    /// Sent to a wait queue because another owner held the key.
    pub deferred: Counter,
    pub dead_letter: Counter,
    /// Returned to the queue unhandled (shutdown, lost lease, a refusal).
    pub requeued: Counter,
    pub duration: Histogram,
    /// Messages per batch.
    pub batch: Histogram,
    pub in_flight: Gauge,
    pub dedup_bypassed: Counter,
    /// Guest log lines dropped past the per-message caps.
    pub log_dropped: Counter,
    /// Guest stdout and stderr bytes dropped past the per-message cap.
    pub stdio_dropped: Counter,
    /// Bytes cut from guests' reject and retry reasons.
    pub reason_dropped: Counter,
    pub kv_writes: Counter,
    pub kv_conflicts: Counter,
    failures: Family<FailureLabels, Counter>,
    handler: String,
    /// The latest latencies and failures, for the dashboard.
    pub recent: Arc<Recent>,
    /// Messages ready in the dead-letter queue.
    pub dead_letter_depth: Gauge,
    /// `canary_messages`, by version (candidate, live) then result (ok,
    /// failed).
    canary: [[Counter; 2]; 2],
    pub canary_percent: Gauge,
}

impl HandlerMetrics {
    /// Counts first attempts run while a canary is in progress, on its
    /// candidate or on the live version.
    pub fn canary_runs(&self, on_canary: bool, ok: u64, failed: u64) {
        let c = &self.canary[usize::from(!on_canary)];
        c[0].inc_by(ok);
        c[1].inc_by(failed);
    }

    /// Counts a run that ended without an outcome (a trap, a timeout, an
    /// output the broker refused), by kind. Rare, so the label is built here.
    pub fn failure(&self, kind: &str) {
        self.failures
            .get_or_create(&FailureLabels {
                handler: self.handler.clone(),
                kind: kind.into(),
            })
            .inc();
    }
}
