//! What one store holds while one message runs: the WASI context (stdio
//! captured, nothing else granted), the memory limiter, and the host side of
//! the `warren:handler/host` imports (publish buffer, capped log, config).

use std::sync::Arc;

use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::bindings::{Level, Outbound, PublishError, warren::handler};
use super::stdio::CappedPipe;
use super::{HandlerEnv, Limits};

/// The data of one `Store`: one message's worth with a fresh instance per
/// message; in reuse mode it lives as long as its warm instance, and
/// [`State::begin`] resets the per-message parts (buffers, caps, tags)
/// before each message.
pub(crate) struct State {
    wasi: WasiCtx,
    table: ResourceTable,
    pub(super) stdout: CappedPipe,
    pub(super) stderr: CappedPipe,
    pub(super) limiter: MemoryLimiter,
    env: Arc<HandlerEnv>,
    limits: Limits,
    /// Tags for guest log lines: the message id (or `-`) and the module's
    /// short digest.
    message_id: Arc<str>,
    module: Arc<str>,
    pub(super) published: Vec<Outbound>,
    published_bytes: usize,
    log_bytes: usize,
    pub(super) log_dropped: u64,
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
            table: ResourceTable::new(),
            stdout,
            stderr,
            limiter: MemoryLimiter {
                cap: limits.memory_bytes,
                hit: false,
            },
            env,
            limits,
            message_id,
            module,
            published: Vec::new(),
            published_bytes: 0,
            log_bytes: 0,
            log_dropped: 0,
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
        self.log_dropped = 0;
        self.limiter.hit = false;
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

/// Caps the linear memory of every memory in the instance and remembers
/// whether the cap was hit, so a later trap is reported as out-of-memory.
/// wasmtime applies it per memory, not to the instance total (spin#3705);
/// handlers built by our toolchains have one memory that matters.
#[derive(Debug)]
pub(crate) struct MemoryLimiter {
    cap: usize,
    pub(super) hit: bool,
}

impl wasmtime::ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.cap {
            self.hit = true;
            return Ok(false);
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 1_000_000)
    }
}

impl handler::types::Host for State {}

impl handler::host::Host for State {
    fn publish(&mut self, msg: Outbound) -> Result<(), PublishError> {
        if !self.env.publish_allow.contains(&msg.exchange) {
            return Err(PublishError::NotAllowed(format!(
                "handler {} may not publish to exchange {:?}; allowed: {:?}",
                self.env.name, msg.exchange, self.env.publish_allow
            )));
        }
        if self.published.len() >= self.limits.max_publishes {
            return Err(PublishError::LimitExceeded(format!(
                "at most {} publishes per message",
                self.limits.max_publishes
            )));
        }
        let size = msg.body.len();
        if self.published_bytes + size > self.limits.max_publish_bytes {
            return Err(PublishError::LimitExceeded(format!(
                "at most {} bytes of published bodies per message",
                self.limits.max_publish_bytes
            )));
        }
        self.published_bytes += size;
        self.published.push(msg);
        Ok(())
    }

    fn log(&mut self, level: Level, message: String) {
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

    fn config(&mut self, key: String) -> Option<String> {
        self.env.config.get(&key).cloned()
    }
}
