//! The default of every optional key (serde's `default = "..."` needs a
//! function per key).

pub fn reconnect_max_ms() -> u64 {
    10_000
}
pub fn redis_prefix() -> String {
    "warren".into()
}
pub fn shutdown_timeout_ms() -> u64 {
    30_000
}
pub fn consumers() -> u32 {
    8
}
pub fn prefetch() -> u16 {
    32
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
pub fn fleet_exchange() -> String {
    "warren.fleet".into()
}
