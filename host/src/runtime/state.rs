//! What one store holds while one message runs: the WASI context (stdio
//! captured, nothing else granted), the memory limiter (one cap for the
//! whole instance), the message's deadline, and the host side of
//! the `warren:handler/host` imports (publish buffer, capped log, config).

use std::sync::Arc;
use std::time::Instant;

use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

use super::bindings::v2::warren::handler as handler_v2;
use super::bindings::{Level, Outbound, PublishError, warren::handler};
use super::http::HttpHooks;
use super::kv::{KvBuffer, KvGrant};
use super::limits::{MAX_SHORT_STRING, truncate_on_char};
use super::measure;
use super::stdio::CappedPipe;
use super::{HandlerEnv, Limits};
use handler_v2::kv::KvError;

/// The data of one `Store`: one message's worth with a fresh instance per
/// message; in reuse mode it lives as long as its warm instance, and
/// [`State::begin`] resets the per-message parts (buffers, caps, tags)
/// before each message.
pub(crate) struct State {
    wasi: WasiCtx,
    http_ctx: WasiHttpCtx,
    /// The handler's HTTP grant and this message's requests so far.
    pub(super) http: HttpHooks,
    table: ResourceTable,
    pub(super) stdout: CappedPipe,
    pub(super) stderr: CappedPipe,
    pub(super) limiter: MemoryLimiter,
    /// When the running message must end; the epoch callback traps past it.
    pub(super) deadline: Instant,
    env: Arc<HandlerEnv>,
    limits: Limits,
    /// Tags for guest log lines: the message id (or `-`) and the module's
    /// short digest.
    message_id: Arc<str>,
    module: Arc<str>,
    pub(super) published: Vec<Outbound>,
    published_bytes: usize,
    log_bytes: usize,
    log_lines: usize,
    pub(super) log_dropped: u64,
    /// This message's key-value writes and what they make each key.
    pub(super) kv: KvBuffer,
}

impl State {
    pub(super) fn new(
        env: Arc<HandlerEnv>,
        limits: Limits,
        message_id: Arc<str>,
        module: Arc<str>,
    ) -> Self {
        let stdout = CappedPipe::new(limits.stdio_bytes);
        let stderr = CappedPipe::new(limits.stdio_bytes);
        // No preopened directories, no environment, no arguments, no network:
        // the builder's defaults grant none of them, and sockets are refused
        // outright rather than only filtered by address.
        let wasi = WasiCtx::builder()
            .stdout(stdout.clone())
            .stderr(stderr.clone())
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .build();
        Self {
            wasi,
            http_ctx: WasiHttpCtx::new(),
            http: HttpHooks::new(env.clone(), message_id.clone()),
            table: ResourceTable::new(),
            stdout,
            stderr,
            limiter: MemoryLimiter::new(limits.memory_bytes),
            deadline: Instant::now(),
            env,
            limits,
            message_id,
            module,
            published: Vec::new(),
            published_bytes: 0,
            log_bytes: 0,
            log_lines: 0,
            log_dropped: 0,
            kv: KvBuffer::default(),
        }
    }
}

impl State {
    /// Readies a reused store for its next message: what the host counts per
    /// message starts from zero again.
    pub(super) fn begin(&mut self, message_id: Arc<str>) {
        self.message_id = message_id;
        self.published.clear();
        self.published_bytes = 0;
        self.log_bytes = 0;
        self.log_lines = 0;
        self.log_dropped = 0;
        self.kv.clear();
        self.limiter.hit = false;
    }
}

impl WasiHttpView for State {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http_ctx,
            table: &mut self.table,
            hooks: &mut self.http,
        }
    }
}

impl WasiView for State {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// Caps what one instance allocates, all its linear memories and tables
/// together, and remembers whether the cap was hit, so a later trap is
/// reported as out-of-memory. wasmtime asks about each memory and table on
/// its own (at creation, from 0, and at each growth), so the limiter keeps
/// the instance's total itself: a cap per memory would give a component
/// with several memories several times its cap.
#[derive(Debug)]
pub(crate) struct MemoryLimiter {
    cap: usize,
    /// Bytes granted so far to this store's memories and tables; they
    /// never shrink, so this only grows while the store lives.
    used: usize,
    pub(super) hit: bool,
}

/// What a table element costs the cap: a function reference is a pointer.
const TABLE_ELEMENT_BYTES: usize = 8;

impl MemoryLimiter {
    pub(super) fn new(cap: usize) -> Self {
        Self {
            cap,
            used: 0,
            hit: false,
        }
    }

    /// Grants `more` bytes if the instance's total stays within the cap.
    fn grant(&mut self, more: usize) -> bool {
        match self.used.checked_add(more) {
            Some(total) if total <= self.cap => {
                self.used = total;
                true
            }
            _ => {
                self.hit = true;
                false
            }
        }
    }
}

impl wasmtime::ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(self.grant(desired.saturating_sub(current)))
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let more = desired.saturating_sub(current);
        Ok(self.grant(more.saturating_mul(TABLE_ELEMENT_BYTES)))
    }
}

impl handler::types::Host for State {}

impl handler::host::Host for State {
    /// Reached only when the guest-memory version of `publish` (`lift.rs`)
    /// is not installed: the same checks, over a copy.
    fn publish(&mut self, msg: Outbound) -> Result<(), PublishError> {
        let limits = self.limits;
        let headers = &msg.headers;
        let names = headers.entries.iter().map(|e| e.name.as_str());
        self.admit(
            &msg.exchange,
            msg.routing_key.len(),
            names,
            outbound_fixed_bytes(&msg),
            |budget| {
                measure::headers(&mut &*headers, budget, limits.max_header_values)
                    .map(|c| c.bytes)
                    .map_err(|e| match e {
                        measure::Refused::Limit(s) => s,
                        measure::Refused::Read(never) => match never {},
                    })
            },
        )?;
        self.buffer(msg);
        Ok(())
    }

    fn log(&mut self, level: Level, message: String) {
        if self.log_line_admitted() {
            self.log_text(level, &message);
        }
    }

    fn config(&mut self, key: String) -> Option<String> {
        self.env.config.get(&key).cloned()
    }
}

// 0.2.0's `host` is 0.1.0's, over the same types.
impl handler_v2::host::Host for State {
    fn publish(&mut self, msg: Outbound) -> Result<(), PublishError> {
        handler::host::Host::publish(self, msg)
    }

    fn log(&mut self, level: Level, message: String) {
        handler::host::Host::log(self, level, message)
    }

    fn config(&mut self, key: String) -> Option<String> {
        handler::host::Host::config(self, key)
    }
}

impl State {
    /// The handler's key-value grant, or the error every call gets without
    /// one.
    fn kv_grant(&self) -> Result<KvGrant, KvError> {
        self.env.kv.clone().ok_or_else(|| {
            KvError::Unavailable(format!("handler {} has no key-value store", self.env.name))
        })
    }
}

impl handler_v2::kv::Host for State {
    async fn get(&mut self, key: String) -> Result<Option<Vec<u8>>, KvError> {
        let grant = self.kv_grant()?;
        self.kv.get(&grant, &key).await
    }

    fn set(&mut self, key: String, value: Vec<u8>, ttl_ms: Option<u64>) -> Result<(), KvError> {
        let grant = self.kv_grant()?;
        self.kv.set(&grant, key, value, ttl_ms)
    }

    fn delete(&mut self, key: String) -> Result<(), KvError> {
        let grant = self.kv_grant()?;
        self.kv.delete(&grant, key)
    }

    async fn increment(&mut self, key: String, delta: i64) -> Result<i64, KvError> {
        let grant = self.kv_grant()?;
        self.kv.increment(&grant, key, delta).await
    }

    async fn compare_and_swap(
        &mut self,
        key: String,
        expected: Option<Vec<u8>>,
        new: Option<Vec<u8>>,
    ) -> Result<bool, KvError> {
        let grant = self.kv_grant()?;
        self.kv.compare_and_swap(&grant, key, expected, new).await
    }

    async fn list_keys(&mut self, prefix: String, limit: u32) -> Result<Vec<String>, KvError> {
        let grant = self.kv_grant()?;
        self.kv.list(&grant, &prefix, limit).await
    }
}

/// The bytes of an outbound message outside its headers.
fn outbound_fixed_bytes(o: &Outbound) -> usize {
    let opt = |s: &Option<String>| s.as_ref().map_or(0, String::len);
    o.exchange.len()
        + o.routing_key.len()
        + o.body.len()
        + opt(&o.content_type)
        + opt(&o.content_encoding)
        + opt(&o.correlation_id)
        + opt(&o.type_)
}

/// Whether `name` is one of the headers the host writes itself, in any
/// letter case.
pub(super) fn is_reserved_header(name: &str) -> bool {
    name.len() >= RESERVED_PREFIX.len()
        && name.as_bytes()[..RESERVED_PREFIX.len()].eq_ignore_ascii_case(RESERVED_PREFIX.as_bytes())
}

/// Headers with this prefix are the host's bookkeeping (attempts, reasons,
/// the module digest); a guest may not set them.
const RESERVED_PREFIX: &str = "x-warren-";

impl State {
    /// Checks one `publish` before its message is copied into the host:
    /// the exchange is allowed, the exchange and routing key fit AMQP's
    /// 255 bytes, no top-level header is the host's own, the message is
    /// within the count, and `fixed` bytes plus what `headers` measures
    /// (given the bytes left) stay within the message's publish budget.
    /// Counts the message on success; the caller then [`State::buffer`]s it.
    pub(super) fn admit<'n>(
        &mut self,
        exchange: &str,
        routing_key: usize,
        mut header_names: impl Iterator<Item = &'n str>,
        fixed: usize,
        headers: impl FnOnce(usize) -> Result<usize, String>,
    ) -> Result<(), PublishError> {
        if exchange.len() > MAX_SHORT_STRING {
            return Err(PublishError::LimitExceeded(format!(
                "exchange name is {} bytes; at most {MAX_SHORT_STRING}",
                exchange.len()
            )));
        }
        if !self.env.publish_allow.iter().any(|a| a == exchange) {
            return Err(PublishError::NotAllowed(format!(
                "handler {} may not publish to exchange {:?}; allowed: {:?}",
                self.env.name, exchange, self.env.publish_allow
            )));
        }
        if routing_key > MAX_SHORT_STRING {
            return Err(PublishError::LimitExceeded(format!(
                "routing key is {routing_key} bytes; at most {MAX_SHORT_STRING}"
            )));
        }
        if let Some(name) = header_names.find(|n| is_reserved_header(n)) {
            let (shown, _) = truncate_on_char(name, 64);
            return Err(PublishError::NotAllowed(format!(
                "header {shown:?} is reserved: {RESERVED_PREFIX}* headers are written by the host"
            )));
        }
        if self.published.len() >= self.limits.max_publishes {
            return Err(PublishError::LimitExceeded(format!(
                "at most {} publishes per message",
                self.limits.max_publishes
            )));
        }
        let budget = self.limits.publish_budget();
        let over = || {
            PublishError::LimitExceeded(format!(
                "at most {budget} bytes published per message (bodies, routing keys, exchanges, properties and headers)"
            ))
        };
        let left = budget.saturating_sub(self.published_bytes);
        if fixed > left {
            return Err(over());
        }
        let header_bytes = headers(left - fixed).map_err(|why| {
            PublishError::LimitExceeded(format!(
                "{why} (a message may publish {budget} bytes in all, {left} are left)"
            ))
        })?;
        let size = fixed + header_bytes;
        if size > left {
            return Err(over());
        }
        self.published_bytes += size;
        Ok(())
    }

    /// Bytes this message may still publish.
    pub(super) fn publish_left(&self) -> usize {
        self.limits
            .publish_budget()
            .saturating_sub(self.published_bytes)
    }

    pub(super) fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Buffers a message [`State::admit`] let through.
    pub(super) fn buffer(&mut self, msg: Outbound) {
        self.published.push(msg);
    }

    /// Counts one `log` call against the line cap; false (and counted as
    /// dropped) past it. Called before the text is looked at, so a guest
    /// that logs forever costs the host a counter per call.
    pub(super) fn log_line_admitted(&mut self) -> bool {
        self.log_lines += 1;
        if self.log_lines > self.limits.log_lines {
            self.log_dropped += 1;
            return false;
        }
        true
    }

    /// Counts an admitted `log` line dropped without being read: it is
    /// longer than the whole byte cap.
    pub(super) fn log_too_long(&mut self) {
        self.log_dropped += 1;
    }

    /// Writes one admitted `log` line, unless it would pass the byte cap.
    pub(super) fn log_text(&mut self, level: Level, message: &str) {
        if self.log_bytes + message.len() > self.limits.log_bytes {
            self.log_dropped += 1;
            return;
        }
        self.log_bytes += message.len();
        let (handler, message_id, digest) = (&*self.env.name, &*self.message_id, &*self.module);
        macro_rules! emit {
            ($lvl:ident) => {
                tracing::$lvl!(target: "warren::guest", handler, message_id, module = digest, "{message}")
            };
        }
        match level {
            Level::Trace => emit!(trace),
            Level::Debug => emit!(debug),
            Level::Info => emit!(info),
            Level::Warn => emit!(warn),
            Level::Error => emit!(error),
        }
    }
}

#[cfg(test)]
mod tests {
    use wasmtime::ResourceLimiter as _;

    use super::*;

    #[test]
    fn the_cap_holds_for_all_memories_and_tables_together() {
        let mut l = MemoryLimiter::new(10 << 20);
        // Two memories of 4 MiB each are created: 8 MiB in all.
        assert!(l.memory_growing(0, 4 << 20, None).unwrap());
        assert!(l.memory_growing(0, 4 << 20, None).unwrap());
        // A third would be within a per-memory cap, not the instance's.
        assert!(!l.memory_growing(0, 4 << 20, None).unwrap());
        assert!(l.hit);
        // Growth counts only what is added; tables count 8 bytes an element.
        assert!(l.memory_growing(4 << 20, 5 << 20, None).unwrap());
        assert!(l.table_growing(0, 1000, None).unwrap());
        assert!(!l.table_growing(1000, 1 << 20, None).unwrap());
    }
}
