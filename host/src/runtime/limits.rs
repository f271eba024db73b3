//! What the sandbox is told: process-wide settings fixed when the engine
//! is built ([`RuntimeConfig`]), and per-handler limits and grants
//! ([`Limits`], [`HandlerEnv`]).

use std::collections::BTreeMap;
use std::time::Duration;

/// Process-wide sandbox settings, fixed when the engine is built.
#[derive(Clone, Debug)]
pub struct RuntimeConfig {
    /// How many handler instances may exist at once. This is the pool size,
    /// and [`Runtime::acquire`] hands out exactly this many permits, so the
    /// pool never refuses an instantiation.
    pub max_instances: u32,
    /// The largest linear memory any handler may be given (the pool's slot
    /// size); per-handler caps ([`Limits::memory_bytes`]) must not exceed
    /// it.
    pub max_memory_bytes: usize,
    /// Where compiled code is cached on disk, keyed by the module's hash
    /// and the engine's settings, so a restart skips Cranelift; none to
    /// compile every time.
    pub cache_dir: Option<std::path::PathBuf>,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        Self {
            max_instances: 16,
            max_memory_bytes: 256 << 20,
            cache_dir: None,
        }
    }
}

/// Per-handler limits on one message's run.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Wall-clock deadline for instantiation plus the `handle` call,
    /// whether the guest computes or waits in a WASI call.
    pub timeout: Duration,
    /// Cap on the instance's linear memories and tables, all together.
    pub memory_bytes: usize,
    /// How many `publish` calls one message may make.
    pub max_publishes: usize,
    /// Total body bytes one message may publish.
    pub max_publish_bytes: usize,
    /// Bytes of `log` messages one message may write; the rest are dropped
    /// and counted.
    pub log_bytes: usize,
    /// Bytes kept from each of stdout and stderr per message.
    pub stdio_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(5),
            memory_bytes: 64 << 20,
            max_publishes: 1000,
            max_publish_bytes: 16 << 20,
            log_bytes: 16 << 10,
            stdio_bytes: 4 << 10,
        }
    }
}

/// What a handler is given besides the message: its name (for logs), its
/// `[handler.config]` values and the exchanges it may publish to.
#[derive(Clone, Debug, Default)]
pub struct HandlerEnv {
    pub name: String,
    pub config: BTreeMap<String, String>,
    pub publish_allow: Vec<String>,
    pub limits: Limits,
}
