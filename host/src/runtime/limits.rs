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
    /// Total bytes one message may publish, across its `publish` calls:
    /// bodies, exchanges, routing keys, properties and every header name
    /// and value as the host would send them (nested values counted once
    /// per place they appear), plus [`HEADER_VALUE_COST`] per header value.
    /// Never more than the memory cap: a guest cannot make the host buffer
    /// more than the guest itself may hold.
    pub max_publish_bytes: usize,
    /// Header values (top-level and nested, counted as expanded) one
    /// published message may carry.
    pub max_header_values: usize,
    /// Bytes of `log` messages one message may write; the rest are dropped
    /// and counted.
    pub log_bytes: usize,
    /// `log` calls one message may make, whatever their length (an empty
    /// line still costs a log event); the rest are dropped and counted.
    pub log_lines: usize,
    /// Bytes kept from each of stdout and stderr per message.
    pub stdio_bytes: usize,
    /// Bytes kept of a guest's reject or retry reason (cut on a character
    /// boundary) before it reaches a log line or a dead-letter header.
    pub reason_bytes: usize,
}

/// What each header value costs against [`Limits::max_publish_bytes`] on
/// top of its text or bytes: about what the host holds per value while it
/// converts and sends it, so that many empty values are not free.
pub const HEADER_VALUE_COST: usize = 32;

/// The longest exchange name or routing key AMQP can carry.
pub const MAX_SHORT_STRING: usize = 255;

impl Limits {
    /// What one message may publish in total: the configured cap, and never
    /// more than the memory cap.
    pub fn publish_budget(&self) -> usize {
        self.max_publish_bytes.min(self.memory_bytes)
    }
}

/// `text` cut to at most `max` bytes on a character boundary, with how many
/// bytes were cut.
pub fn truncate_on_char(text: &str, max: usize) -> (&str, usize) {
    if text.len() <= max {
        return (text, 0);
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    (&text[..end], text.len() - end)
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(5),
            memory_bytes: 64 << 20,
            max_publishes: 1000,
            max_publish_bytes: 16 << 20,
            max_header_values: 4096,
            log_bytes: 16 << 10,
            log_lines: 1000,
            stdio_bytes: 4 << 10,
            reason_bytes: 1024,
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
    /// The key-value store (`warren:handler/kv`, 0.2.0 modules); without
    /// one every call fails with `unavailable`.
    pub kv: Option<super::kv::KvGrant>,
    /// Outbound HTTP (`wasi:http`); without a grant every request is
    /// refused.
    pub http: Option<std::sync::Arc<super::http::HttpGrant>>,
    /// Where the sandbox counts outbound HTTP requests and refusals; none
    /// counts nothing.
    pub metrics: Option<crate::metrics::Metrics>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncation_keeps_whole_characters() {
        assert_eq!(truncate_on_char("abc", 5), ("abc", 0));
        // "é" is two bytes: a cut inside it falls back before it.
        assert_eq!(truncate_on_char("aéb", 2), ("a", 3));
        assert_eq!(truncate_on_char("aéb", 3), ("aé", 1));
        assert_eq!(truncate_on_char("", 0), ("", 0));
    }

    #[test]
    fn the_publish_budget_never_exceeds_the_memory_cap() {
        let l = Limits {
            memory_bytes: 8 << 20,
            ..Limits::default()
        };
        assert_eq!(l.publish_budget(), 8 << 20);
        assert_eq!(Limits::default().publish_budget(), 16 << 20);
    }
}
