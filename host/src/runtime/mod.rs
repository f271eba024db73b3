//! The sandbox: the only module that knows wasmtime.
//!
//! One [`Runtime`] per process owns the `Engine` (pooling allocator,
//! copy-on-write memory images, epoch interruption) and a linker that offers
//! WASI with nothing granted plus the `warren:handler/host` imports. A module
//! version is compiled once into a [`Module`] (pre-linked, type-checked
//! against the world); each message then gets a fresh `Store` and instance
//! under a deadline and a per-instance memory cap, runs as a future on the
//! caller's task, and comes back as a [`Completed`] outcome or a typed
//! [`RunError`].
//!
//! It does not know AMQP, Redis or the config file: callers translate
//! deliveries into [`Message`] and act on the outcome.

mod bindings;
mod epoch;
mod http;
mod http_answers;
mod kv;
mod lift;
mod limits;
mod measure;
mod module;
mod run;
mod state;
mod stdio;
mod warm;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use wasmtime::component::{HasSelf, Linker};
use wasmtime::{
    Cache, CacheConfig, Config, Enabled, Engine, InstanceAllocationStrategy, ModuleVersionStrategy,
    PoolingAllocationConfig,
};

use bindings::Handler;
pub use bindings::{
    Decimal, FieldValue, Header, Headers, Level, Message, Nested, Outbound, Outcome, PublishError,
    Retry,
};
use epoch::EpochTicker;
pub use http::{HttpGrant, HttpSettings, IDEMPOTENCY_HEADER, idempotency_key};
pub use http_answers::{Answer, AskedRequest, HttpResponder, MAX_ASKED_BODY};
pub use kv::{KvGrant, KvLimits, KvStore, KvWrite, MAX_COUNTER};
pub use limits::{HandlerEnv, Limits, RuntimeConfig, truncate_on_char};
pub use module::{Digest, LoadError, Module, RUNS_AT_ONCE};
pub use run::{Completed, RunError};
use state::State;
pub use warm::WarmInstances;

/// The newest world a handler module may implement.
pub const WORLD: &str = "warren:handler/handler@0.2.0";

/// Every world the host serves, oldest first (`wit/README.md`): a module
/// built against any of them runs unchanged.
pub const WORLDS: [&str; 2] = ["warren:handler/handler@0.1.0", WORLD];

/// Bytes of each memory slot kept mapped between messages (reset in place
/// rather than returned to the kernel); bounds the resident set at this
/// times the pool size.
const KEEP_RESIDENT: usize = 4 << 20;

/// How often the epoch advances; a running guest checks its deadline and
/// yields its worker thread this often.
/// The ticker thread's wake-ups cost every message a little (about 2 us a
/// message at 1 ms under load, by the end-to-end profile), so it is no
/// finer than the deadlines need.
const TICK: Duration = Duration::from_millis(5);

/// Per-component maxima of the pool; see [`Runtime::new`].
const MAX_CORE_INSTANCES: u32 = 64;
const MAX_MEMORIES: u32 = 4;
const MAX_TABLES: u32 = 8;

/// Stack for wasm frames: wasmtime's default. A guest past it traps with
/// a stack overflow.
const WASM_STACK: usize = 512 << 10;

/// Each running guest's fiber stack: the wasm stack plus 1.5 MiB for the
/// host functions it calls (WASI, `log`, `publish`), which run on the same
/// stack and, unlike wasm, are not stopped at a limit: too little would
/// abort the process. Pool stacks are address space reserved up front and
/// committed only as touched.
const ASYNC_STACK: usize = WASM_STACK + (3 << 19);

/// The version compiled code is stamped with, in the module cache's keys and
/// in every compiled artifact. The vendored wasmtime (vendor/README.md)
/// compiles code that only its own runtime understands (a module's startup
/// asks for all its function references at once), so its code must never
/// meet the published 48.0.8's, which is what a cache directory shared by
/// two warren builds would otherwise allow: an artifact made by the other
/// build is now a cache miss, and a stale one a clean recompile, never a
/// crash. Change the suffix whenever a vendored patch changes compiled code
/// or what it expects of the runtime.
const CODE_VERSION: &str = "48.0.8+warren.startup-func-refs";

/// Permission to run one instance; see [`Runtime::acquire`].
#[derive(Debug)]
pub struct Permit(#[allow(dead_code)] OwnedSemaphorePermit);

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
        // Every total is `n` times its per-component maximum, so any `n`
        // instances fit whatever their shape: a handler whose component has
        // many memories or tables can never take the slots another handler
        // needs, and the permits alone (one per instance) decide who runs.
        // A component over a per-component maximum is refused when it is
        // compiled (deploy, start-up, `warren check`), never at run time.
        // The maxima are what our toolchains produce with room to spare
        // (every guest we build has one memory and two tables; Python's
        // has about 15 core instances); a memory slot reserves its address
        // space up front, which is what keeps `MAX_MEMORIES` small.
        pool.total_component_instances(n)
            .max_core_instances_per_component(MAX_CORE_INSTANCES)
            .total_core_instances(n * MAX_CORE_INSTANCES)
            // Multi-memory (wasm 3.0) modules are allowed up to the same
            // maximum: the memory cap holds for the instance as a whole.
            .max_memories_per_module(MAX_MEMORIES)
            .max_memories_per_component(MAX_MEMORIES)
            .total_memories(n * MAX_MEMORIES)
            .max_tables_per_component(MAX_TABLES)
            .total_tables(n * MAX_TABLES)
            .table_elements(100_000)
            .max_memory_size(config.max_memory_bytes)
            .max_core_instance_size(8 << 20)
            .max_component_instance_size(8 << 20)
            // One fiber stack per running call, and a store keeps its last
            // stack between calls: with at most `n` stores alive (one per
            // permit, idle warm instances included), `n` stacks never run
            // out. Stacks are reused without zeroing, so a message pays no
            // syscall for its stack.
            .total_stacks(n)
            // Reset a slot by rewriting only its dirty pages (PAGEMAP_SCAN,
            // Linux 6.7+) instead of madvise: the pages stay mapped, so the
            // next message neither makes the syscall nor takes page faults.
            // Measured on the echo guest: madvise and the faults after it
            // were over half of the per-message time. The vendored wasmtime
            // (vendor/README.md) scans past the first 32 runs of dirty
            // pages, so an interpreter's heap stays mapped too, and resets
            // dirty pages that are swapped out.
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
        // Guests run as futures (`instantiate_async`, `call_async`; wasmtime
        // turns async support on by itself since 48) on a fiber stack of
        // their own: a guest blocked in a WASI poll is then a pending future
        // that the deadline's timeout can drop, where a synchronous call
        // would hold its thread until the poll returned.
        cfg.async_stack_size(ASYNC_STACK)
            .max_wasm_stack(WASM_STACK)
            .epoch_interruption(true)
            .memory_init_cow(true)
            .module_version(ModuleVersionStrategy::Custom(CODE_VERSION.into()))
            .map_err(anyhow::Error::from)?
            .parallel_compilation(true)
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        let engine = Engine::new(&cfg)
            .map_err(anyhow::Error::from)
            .map_err(|e| e.context("cannot create the wasmtime engine"))?;

        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker).map_err(anyhow::Error::from)?;
        // `wasi:http` is linked for every handler, so a module that imports
        // it loads and runs anywhere; what it may reach is each handler's
        // grant, checked per request (`http.rs`): without one, every
        // request is refused.
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)
            .map_err(anyhow::Error::from)?;
        Handler::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s).map_err(anyhow::Error::from)?;
        bindings::v2::Handler::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s)
            .map_err(anyhow::Error::from)?;
        lift::install(&mut linker).map_err(anyhow::Error::from)?;

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

    /// The engine every guest runs on, with warren's settings (pooling
    /// allocator, epochs, the vendored wasmtime's code version): for tests
    /// of what the engine itself does with a core module.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }
}
