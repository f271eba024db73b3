//! The default of every optional key (serde's `default = "..."` needs a
//! function per key).

pub fn reconnect_max_ms() -> u64 {
    10_000
}
pub fn redis_prefix() -> String {
    "warren".into()
}
/// The key-value read cache: 16 MiB holds about 100,000 small counters;
/// a read it answers costs no round trip (BENCHMARKS.md, line 5k).
pub fn read_cache_mb() -> u32 {
    16
}
pub fn shutdown_timeout_ms() -> u64 {
    30_000
}
/// Messages in flight per handler and process. A consumer that publishes
/// a confirmed output per message drains at about its messages in flight
/// over the broker's confirm time (milliseconds for a persistent message),
/// so this is what sets the drain rate at the defaults: 8 drained a
/// quarter of what 256 did (BENCHMARKS.md, "The defaults"). In flight costs
/// memory only for the messages themselves, not sandbox slots (one per
/// batch, see `batch_slots`).
pub fn consumers() -> u32 {
    256
}
/// `basic.qos` per consumer channel: twice the messages in flight, so a
/// freed permit finds its next delivery already buffered instead of waiting
/// a round trip for the broker to send it. The client holds up to this many
/// messages: lower it for large messages.
pub fn prefetch() -> u16 {
    512
}
pub fn channels() -> u32 {
    1
}
pub fn max_batch() -> u32 {
    16
}
pub fn timeout_ms() -> u64 {
    5_000
}
pub fn reuse_max() -> u32 {
    1000
}
pub fn memory_mb() -> u32 {
    64
}
/// 16 MiB: RabbitMQ 4's own default `max_message_size`, and a quarter of
/// the default guest memory cap, so a body this size leaves the guest room
/// to work on it.
pub fn max_message_bytes() -> u64 {
    16 << 20
}
pub fn max_attempts() -> u32 {
    5
}
pub fn backoff_ms() -> u64 {
    200
}
pub fn max_backoff_ms() -> u64 {
    60_000
}
pub fn yes() -> bool {
    true
}
pub fn lease_ms() -> u64 {
    30_000
}
pub fn window_s() -> u64 {
    86_400
}
pub fn allow() -> Vec<String> {
    vec![String::new()]
}
pub fn max_upload_mb() -> u32 {
    256
}
pub fn keep_versions() -> u32 {
    8
}

/// `telemetry.service_name`.
pub fn service_name() -> String {
    "warren".into()
}
// `[handler.kv]`
pub fn kv_max_key_bytes() -> u32 {
    512
}
pub fn kv_max_value_bytes() -> u32 {
    64 << 10
}
pub fn kv_max_writes() -> u32 {
    64
}
pub fn kv_max_write_bytes() -> u32 {
    1 << 20
}
pub fn fleet_exchange() -> String {
    "warren.fleet".into()
}
// `[handler.http]`
pub fn http_timeout_ms() -> u64 {
    2000
}
pub fn http_max_response_bytes() -> u64 {
    1 << 20
}
pub fn http_max_requests() -> u32 {
    16
}
pub fn http_idempotency_header() -> bool {
    true
}
