//! The sandbox: the only module that knows wasmtime.
//!
//! One [`Runtime`] per process owns the `Engine` (pooling allocator,
//! copy-on-write memory images, epoch interruption) and a linker that offers
//! WASI with nothing granted plus the `warren:handler/host` imports. A module
//! version is compiled once into a [`Module`] (pre-linked, type-checked
//! against the world); each message then gets a fresh `Store` and instance
//! under a CPU deadline and a memory cap, and comes back as a [`Completed`]
//! outcome or a typed [`RunError`].
//!
//! It does not know AMQP, Redis or the config file: callers translate
//! deliveries into [`Message`] and act on the outcome.

mod bindings;
mod epoch;
mod state;
mod stdio;
mod warm;

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sha2::{Digest as _, Sha256};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use wasmtime::component::types::ComponentItem;
use wasmtime::component::{Component, HasSelf, Linker};
use wasmtime::{
    Cache, CacheConfig, Config, Enabled, Engine, InstanceAllocationStrategy,
    PoolingAllocationConfig, Store, Trap,
};

pub use bindings::{
    Decimal, FieldValue, Header, Headers, Level, Message, Nested, Outbound, Outcome, PublishError,
    Retry,
};
use bindings::{Handler, HandlerPre};
use epoch::EpochTicker;
use state::State;
use warm::Warm;
pub use warm::WarmInstances;

/// The world every handler module must implement.
pub const WORLD: &str = "warren:handler/handler@0.1.0";

/// Bytes of each memory slot kept mapped between messages (reset in place
/// rather than returned to the kernel); bounds the resident set at this
/// times the pool size.
const KEEP_RESIDENT: usize = 4 << 20;

/// How often the epoch advances; a CPU deadline is accurate to about this.
/// The ticker thread's wake-ups cost every message a little (about 2 us a
/// message at 1 ms under load, by the end-to-end profile), so it is no
/// finer than the deadlines need.
const TICK: Duration = Duration::from_millis(5);

/// Process-wide sandbox settings, fixed when the engine is built.
#[derive(Clone, Debug)]
pub struct RuntimeConfig {
    /// How many handler instances may exist at once. This is the pool size,
    /// and [`Runtime::acquire`] hands out exactly this many permits, so the
    /// pool never refuses an instantiation.
    pub max_instances: u32,
    /// The largest linear memory any handler may be given; per-handler caps
    /// ([`Limits::memory_bytes`]) must not exceed it.
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
    /// CPU deadline for instantiation plus the `handle` call.
    pub timeout: Duration,
    /// Cap on each linear memory of the instance.
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

/// A module's SHA-256, the name of a version everywhere (logs, metrics,
/// dead-letter headers, the admin API).
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub struct Digest(String);

impl Digest {
    pub fn of(bytes: &[u8]) -> Self {
        Self(hex::encode(Sha256::digest(bytes)))
    }

    /// The hex digest without the `sha256:` prefix.
    pub fn hex(&self) -> &str {
        &self.0
    }

    /// The first 12 hex digits, enough to tell versions apart in a log line.
    pub fn short(&self) -> &str {
        &self.0[..12]
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.0)
    }
}

/// Why a file could not become a [`Module`]. The text does not name the file;
/// callers add it.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("not a WebAssembly file (no \\0asm header)")]
    NotWasm,
    #[error(
        "a core WebAssembly module, not a component: build for wasm32-wasip2, or wrap it with `wasm-tools component new`"
    )]
    CoreModule,
    #[error("invalid component: {0}")]
    Invalid(String),
    #[error("does not implement {WORLD}: it does not export a function `handle`")]
    MissingExport,
    #[error("does not implement {WORLD}: {0}")]
    WrongExport(String),
    #[error("imports something warren does not provide: {0}")]
    Link(String),
}

/// A compiled, pre-linked, type-checked module version. Cheap to clone;
/// instantiating it is what costs, and that happens per message.
#[derive(Clone)]
pub struct Module {
    inner: Arc<ModuleInner>,
}

struct ModuleInner {
    digest: Digest,
    size: usize,
    compile_time: Duration,
    from_cache: bool,
    pre: HandlerPre<State>,
    imports: Vec<String>,
    exports: Vec<String>,
}

impl fmt::Debug for Module {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Module")
            .field("digest", &self.inner.digest)
            .finish_non_exhaustive()
    }
}

impl Module {
    pub fn digest(&self) -> &Digest {
        &self.inner.digest
    }
    /// Size of the component file in bytes.
    pub fn size(&self) -> usize {
        self.inner.size
    }
    /// Time spent compiling and linking it.
    pub fn compile_time(&self) -> Duration {
        self.inner.compile_time
    }
    /// Whether the compiled code came from the on-disk cache.
    pub fn from_cache(&self) -> bool {
        self.inner.from_cache
    }
    /// The names of the component's imports (interfaces), as the file lists them.
    pub fn imports(&self) -> &[String] {
        &self.inner.imports
    }
    /// The names of the component's exports.
    pub fn exports(&self) -> &[String] {
        &self.inner.exports
    }
}

/// Permission to run one instance; see [`Runtime::acquire`].
#[derive(Debug)]
pub struct Permit(#[allow(dead_code)] OwnedSemaphorePermit);

/// What a handler returned, with what it asked to publish.
#[derive(Debug)]
pub struct Completed {
    pub outcome: Outcome,
    /// The messages buffered by `publish`, in call order; to be sent only on
    /// ack.
    pub publishes: Vec<Outbound>,
    /// `log` calls dropped because the message went over its log cap.
    pub logs_dropped: u64,
    /// Bytes of stdout and stderr dropped past the cap.
    pub stdio_dropped: u64,
}

/// A run that ended without an outcome: the host's failure, never the guest's
/// own reject. Callers turn these into a retry or a dead-letter by policy.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum RunError {
    #[error("handler exceeded its CPU deadline of {} ms", .limit.as_millis())]
    Timeout { limit: Duration },
    #[error("handler exceeded its memory cap of {} MiB", .cap_bytes >> 20)]
    MemoryCap { cap_bytes: usize },
    #[error("handler overflowed its stack")]
    StackOverflow,
    #[error("handler trapped: {message}")]
    Trap { message: String },
    #[error("handler could not be instantiated: {message}")]
    Instantiate { message: String },
}

impl RunError {
    /// A short stable name for metrics and dead-letter headers.
    pub fn kind(&self) -> &'static str {
        match self {
            RunError::Timeout { .. } => "timeout",
            RunError::MemoryCap { .. } => "memory",
            RunError::StackOverflow => "stack-overflow",
            RunError::Trap { .. } => "trap",
            RunError::Instantiate { .. } => "instantiate",
        }
    }
}

/// The process's sandbox. Clone it freely: clones share the engine, the
/// linker, the instance permits and the epoch ticker.
#[derive(Clone)]
pub struct Runtime {
    engine: Engine,
    linker: Arc<Linker<State>>,
    permits: Arc<Semaphore>,
    config: RuntimeConfig,
    /// Compiles one at a time, so the cache's hit counter tells whether a
    /// given compile was a hit (and Cranelift does not take every core from
    /// the message path twice over).
    compiling: Arc<std::sync::Mutex<()>>,
    cache: Option<Cache>,
    _ticker: Arc<EpochTicker>,
}

impl fmt::Debug for Runtime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Runtime")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Runtime {
    pub fn new(config: RuntimeConfig) -> anyhow::Result<Self> {
        let n = config.max_instances.max(1);
        let mut pool = PoolingAllocationConfig::new();
        // Interpreted guests (componentize-py, componentize-js) are made of
        // many core modules, memories and large tables; the per-component
        // limits are sized for them, the totals for `n` of the largest.
        pool.total_component_instances(n)
            .max_core_instances_per_component(64)
            .total_core_instances(n * 16)
            .max_memories_per_component(16)
            .total_memories(n * 4)
            .max_tables_per_component(32)
            .total_tables(n * 8)
            .table_elements(100_000)
            .max_memory_size(config.max_memory_bytes)
            .max_core_instance_size(8 << 20)
            .max_component_instance_size(8 << 20)
            // Reset a slot by rewriting only its dirty pages (PAGEMAP_SCAN,
            // Linux 6.7+) instead of madvise: the pages stay mapped, so the
            // next message neither makes the syscall nor takes page faults.
            // Measured on the echo guest: madvise and the faults after it
            // were over half of the per-message time.
            .pagemap_scan(Enabled::Auto)
            .linear_memory_keep_resident(KEEP_RESIDENT)
            .table_keep_resident(KEEP_RESIDENT / 16);

        let mut cfg = Config::new();
        let mut cache = None;
        if let Some(dir) = &config.cache_dir {
            let mut settings = CacheConfig::new();
            settings.with_directory(dir);
            let made = Cache::new(settings)
                .map_err(anyhow::Error::from)
                .map_err(|e| {
                    e.context(format!(
                        "cannot use module cache directory {}",
                        dir.display()
                    ))
                })?;
            cfg.cache(Some(made.clone()));
            cache = Some(made);
        }
        cfg.epoch_interruption(true)
            .memory_init_cow(true)
            .parallel_compilation(true)
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        let engine = Engine::new(&cfg)
            .map_err(anyhow::Error::from)
            .map_err(|e| e.context("cannot create the wasmtime engine"))?;

        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker).map_err(anyhow::Error::from)?;
        Handler::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s).map_err(anyhow::Error::from)?;

        Ok(Self {
            _ticker: Arc::new(EpochTicker::start(engine.clone())),
            engine,
            linker: Arc::new(linker),
            permits: Arc::new(Semaphore::new(n as usize)),
            config,
            compiling: Arc::default(),
            cache,
        })
    }

    pub fn config(&self) -> &RuntimeConfig {
        &self.config
    }

    /// Compiles, links and type-checks a component against the world.
    pub fn compile(&self, bytes: &[u8]) -> Result<Module, LoadError> {
        if bytes.len() < 8 || &bytes[..4] != b"\0asm" {
            return Err(LoadError::NotWasm);
        }
        // Bytes 4..8 are the version and layer: layer 0 is a core module,
        // layer 1 a component.
        if bytes[6..8] == [0, 0] {
            return Err(LoadError::CoreModule);
        }
        let started = Instant::now();
        let (component, from_cache) = {
            let _one_at_a_time = self.compiling.lock().unwrap_or_else(|p| p.into_inner());
            let hits = self.cache.as_ref().map_or(0, Cache::cache_hits);
            let component = Component::new(&self.engine, bytes)
                .map_err(|e| LoadError::Invalid(format!("{:#}", anyhow::Error::from(e))))?;
            let hit = self.cache.as_ref().is_some_and(|c| c.cache_hits() > hits);
            (component, hit)
        };
        let ty = component.component_type();
        let imports = ty
            .imports(&self.engine)
            .map(|(n, _)| n.to_string())
            .collect();
        let exports: Vec<String> = ty
            .exports(&self.engine)
            .map(|(n, _)| n.to_string())
            .collect();
        match ty.get_export(&self.engine, "handle").map(|e| e.ty) {
            Some(ComponentItem::ComponentFunc(_)) => {}
            _ => return Err(LoadError::MissingExport),
        }
        let pre = self
            .linker
            .instantiate_pre(&component)
            .map_err(|e| LoadError::Link(format!("{:#}", anyhow::Error::from(e))))?;
        let pre = HandlerPre::new(pre)
            .map_err(|e| LoadError::WrongExport(format!("{:#}", anyhow::Error::from(e))))?;
        Ok(Module {
            inner: Arc::new(ModuleInner {
                digest: Digest::of(bytes),
                size: bytes.len(),
                compile_time: started.elapsed(),
                from_cache,
                pre,
                imports,
                exports,
            }),
        })
    }

    /// Waits for a free instance slot. Hold the permit for the whole run:
    /// that is what keeps concurrency at or below the pool size.
    pub async fn acquire(&self) -> Permit {
        let permit = self
            .permits
            .clone()
            .acquire_owned()
            .await
            .expect("runtime semaphore is never closed");
        Permit(permit)
    }

    /// A permit if one is free now.
    pub fn try_acquire(&self) -> Option<Permit> {
        self.permits.clone().try_acquire_owned().ok().map(Permit)
    }

    /// Instantiates `module` once as `env`'s handler would be, and, given a
    /// smoke message, runs it: the check before a version goes live.
    /// Publishes are discarded; the outcome does not matter, only that the
    /// run ends without a trap. Blocking, like [`Runtime::run`].
    pub fn smoke(
        &self,
        module: &Module,
        env: &Arc<HandlerEnv>,
        msg: Option<&Message>,
        permit: &Permit,
    ) -> Result<(), RunError> {
        if let Some(msg) = msg {
            return self.run(module, env, msg, permit).map(|_| ());
        }
        let state = State::new(
            env.clone(),
            env.limits,
            "smoke".into(),
            module.digest().short().into(),
        );
        let mut store = Store::new(&self.engine, state);
        store.limiter(|s| &mut s.limiter);
        store.set_epoch_deadline(deadline_ticks(env.limits.timeout));
        store.epoch_deadline_trap();
        match module.inner.pre.instantiate(&mut store) {
            Ok(_) => Ok(()),
            Err(e) => {
                let hit = store.data().limiter.hit;
                Err(classify(e, true, hit, &env.limits, &[]))
            }
        }
    }

    /// Runs one message in a fresh instance. Blocking: call it from a blocking
    /// thread (`spawn_blocking`), never from an async task.
    pub fn run(
        &self,
        module: &Module,
        env: &Arc<HandlerEnv>,
        msg: &Message,
        _permit: &Permit,
    ) -> Result<Completed, RunError> {
        self.run_in(module, env, msg, None)
    }

    /// Runs one message in a warm instance of `module` from `warm` if there
    /// is one, else in a fresh one, and keeps the instance for the next
    /// message unless it trapped or has served `max_uses` messages. Guest
    /// state (globals, the heap) carries over between those messages: the
    /// handler's `instances = "reuse"` setting opts into that for speed.
    pub fn run_warm(
        &self,
        module: &Module,
        env: &Arc<HandlerEnv>,
        msg: &Message,
        _permit: &Permit,
        warm: &WarmInstances,
        max_uses: u32,
    ) -> Result<Completed, RunError> {
        self.run_in(module, env, msg, Some((warm, max_uses)))
    }

    fn run_in(
        &self,
        module: &Module,
        env: &Arc<HandlerEnv>,
        msg: &Message,
        reuse: Option<(&WarmInstances, u32)>,
    ) -> Result<Completed, RunError> {
        let limits = env.limits;
        let message_id: Arc<str> = msg.message_id.as_deref().unwrap_or("-").into();
        let taken = reuse.and_then(|(w, _)| w.take(module.digest()));
        let (mut store, warm_handler, served) = match taken {
            Some(w) => {
                let mut store = w.store;
                store.data_mut().begin(message_id);
                (store, Some(w.handler), w.served)
            }
            None => {
                let state = State::new(
                    env.clone(),
                    limits,
                    message_id,
                    module.digest().short().into(),
                );
                let mut store = Store::new(&self.engine, state);
                store.limiter(|s| &mut s.limiter);
                store.epoch_deadline_trap();
                (store, None, 0)
            }
        };
        store.set_epoch_deadline(deadline_ticks(limits.timeout));

        let result = match warm_handler {
            Some(h) => Ok(h),
            None => module
                .inner
                .pre
                .instantiate(&mut store)
                .map_err(|e| (true, e)),
        }
        .and_then(|h| {
            h.call_handle(&mut store, msg)
                .map(|o| (h, o))
                .map_err(|e| (false, e))
        });

        let state = store.data_mut();
        let stdout = state.stdout.take();
        let stderr = state.stderr.take();
        let stdio_dropped = stdout.dropped + stderr.dropped;
        let log_dropped = state.log_dropped;
        let memory_cap_hit = state.limiter.hit;
        let publishes = std::mem::take(&mut state.published);
        let tag = (
            &*env.name,
            msg.message_id.as_deref().unwrap_or("-"),
            module.digest().short(),
        );
        for (stream, c) in [("stdout", &stdout), ("stderr", &stderr)] {
            if !c.bytes.is_empty() || c.dropped > 0 {
                tracing::info!(
                    target: "warren::guest",
                    handler = tag.0, message_id = tag.1, module = tag.2, stream,
                    dropped_bytes = c.dropped,
                    "{}", String::from_utf8_lossy(&c.bytes).trim_end()
                );
            }
        }
        if log_dropped > 0 {
            tracing::warn!(
                handler = tag.0,
                message_id = tag.1,
                module = tag.2,
                dropped = log_dropped,
                cap_bytes = limits.log_bytes,
                "guest log lines dropped past the per-message cap"
            );
        }
        match result {
            Ok((handler, outcome)) => {
                if let Some((warm, max_uses)) = reuse
                    && served + 1 < max_uses
                {
                    warm.put(Warm {
                        store,
                        handler,
                        digest: module.digest().clone(),
                        served: served + 1,
                    });
                }
                Ok(Completed {
                    outcome,
                    publishes,
                    logs_dropped: log_dropped,
                    stdio_dropped,
                })
            }
            // A trapped instance is never reused: dropping the store here
            // is what gives the next message a fresh one.
            Err((during_instantiate, err)) => Err(classify(
                err,
                during_instantiate,
                memory_cap_hit,
                &limits,
                &stderr.bytes,
            )),
        }
    }
}

/// Ticks until the deadline: one more than the timeout needs, because the
/// first tick may come at any moment after the store starts.
fn deadline_ticks(timeout: Duration) -> u64 {
    (timeout.as_micros().div_ceil(TICK.as_micros()) as u64).max(1) + 1
}

/// Turns a wasmtime error into what the caller acts on. The last line of the
/// guest's stderr is kept with a plain trap: that is where Rust, C and Python
/// guests write their panic or exception.
fn classify(
    err: wasmtime::Error,
    during_instantiate: bool,
    memory_cap_hit: bool,
    limits: &Limits,
    stderr: &[u8],
) -> RunError {
    match err.downcast_ref::<Trap>() {
        Some(Trap::Interrupt) => RunError::Timeout {
            limit: limits.timeout,
        },
        Some(Trap::StackOverflow) => RunError::StackOverflow,
        _ if memory_cap_hit => RunError::MemoryCap {
            cap_bytes: limits.memory_bytes,
        },
        _ if during_instantiate => RunError::Instantiate {
            message: format!("{:#}", anyhow::Error::from(err)),
        },
        trap => {
            let what = match trap {
                Some(t) => t.to_string(),
                None => format!("{:#}", anyhow::Error::from(err)),
            };
            let message = match stderr_tail(stderr) {
                Some(tail) => format!("{what} (guest stderr: {tail})"),
                None => what,
            };
            RunError::Trap { message }
        }
    }
}

/// The last few lines of a guest's stderr, where a panic or an uncaught
/// exception is described, without Rust's backtrace hint.
fn stderr_tail(stderr: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(stderr);
    let mut lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("note: run with `RUST_BACKTRACE"))
        .rev()
        .take(3)
        .collect();
    lines.reverse();
    (!lines.is_empty()).then(|| lines.join(" / "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadline_is_never_shorter_than_the_timeout() {
        // 5 ms ticks: the deadline lands between the timeout and one tick
        // past it.
        assert_eq!(deadline_ticks(Duration::from_millis(100)), 21);
        assert_eq!(deadline_ticks(Duration::from_millis(101)), 22);
        assert_eq!(deadline_ticks(Duration::from_micros(1500)), 2);
        assert_eq!(deadline_ticks(Duration::ZERO), 2);
    }

    #[test]
    fn refuses_what_is_not_a_component() {
        let rt = Runtime::new(RuntimeConfig {
            max_instances: 1,
            ..Default::default()
        })
        .unwrap();
        assert!(matches!(
            rt.compile(b"hello world"),
            Err(LoadError::NotWasm)
        ));
        let core = b"\0asm\x01\0\0\0";
        assert!(matches!(rt.compile(core), Err(LoadError::CoreModule)));
        let broken = b"\0asm\x0d\0\x01\0garbage";
        assert!(matches!(rt.compile(broken), Err(LoadError::Invalid(_))));
    }

    #[test]
    fn stderr_tail_keeps_the_panic_not_the_hint() {
        let stderr = b"\nthread '<unnamed>' panicked at src/lib.rs:3:9:\nboom\nnote: run with `RUST_BACKTRACE=1` environment variable to display a backtrace\n";
        assert_eq!(
            stderr_tail(stderr).unwrap(),
            "thread '<unnamed>' panicked at src/lib.rs:3:9: / boom"
        );
        assert_eq!(stderr_tail(b"\n \n"), None);
    }

    #[test]
    fn digest_is_sha256_hex() {
        let d = Digest::of(b"");
        assert_eq!(
            d.hex(),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(d.short(), "e3b0c44298fc");
        assert!(d.to_string().starts_with("sha256:e3b0"));
    }
}
