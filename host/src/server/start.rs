//! Start-up: every handler's module compiled, type-checked and smoke
//! tested, the sandbox sized for the handlers, the dedup store connected.

use std::sync::Arc;

use anyhow::Context as _;
use tokio::sync::Semaphore;

use crate::amqp::{Binding, QueueKind, Topology};
use crate::config::Config;
use crate::context::{HandlerCtx, Health, Host, Shared};
use crate::dedup::Store;
use crate::metrics::Metrics;
use crate::pipeline::KvView;
use crate::registry::{self, CompiledBy};
use crate::runtime::{Runtime, RuntimeConfig};
use crate::shutdown;
use crate::signing::Trust;
use crate::versions::Versions;

impl Host {
    /// Compiles every handler's module and connects the dedup store; the
    /// broker connection comes in [`Host::serve`].
    pub async fn start(config: &Config, shutdown: shutdown::Signal) -> anyhow::Result<Host> {
        let host = hostname::get()
            .map(|h| h.to_string_lossy().into_owned())
            .unwrap_or_else(|_| "unknown".into());
        // A batch runs its messages one after another, each in one instance
        // (fresh, or taken from the handler's idle warm ones and put back),
        // and holds one permit while it runs: so a handler never has more
        // instances than batches in flight, and the pool needs one slot per
        // batch slot, not one per message in flight. Plus one, so a
        // deploy's smoke test does not wait for a busy handler. A slot
        // reserves address space and, once used, keeps up to
        // `KEEP_RESIDENT` of its memory resident: sizing it by `consumers`
        // (256 by default) would pay for instances that never run. With
        // `instances = "reuse"` a batch's warm instance is idle, still in
        // its slot, while a shadow candidate runs on the same message:
        // two slots per batch slot there. With fresh instances, a module
        // that sends HTTP requests runs `RUNS_AT_ONCE` of a batch's
        // messages at once, a permit each; which module a handler will run
        // is not known here (a deploy can change it), so every such
        // handler gets that many slots per batch slot. A slot that is
        // never used costs address space only.
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get() as u32);
        let instances: u32 = config
            .handlers
            .iter()
            .map(|h| {
                let per_batch = if h.instances == crate::config::Instances::Reuse {
                    2
                } else {
                    crate::runtime::RUNS_AT_ONCE
                };
                h.batch_slots(cores) * per_batch
            })
            .sum::<u32>()
            + 1;
        let max_memory = config
            .handlers
            .iter()
            .map(|h| h.memory_mb)
            .max()
            .unwrap_or(64) as usize;
        let runtime = Runtime::new(RuntimeConfig {
            max_instances: instances,
            max_memory_bytes: max_memory << 20,
            cache_dir: config.runtime.cache_dir.clone(),
        })?;
        if let Some(dir) = &config.runtime.cache_dir {
            tracing::info!(dir = %dir.display(), "compiled modules are cached on disk");
        }

        let trust = Trust::new(&config.deploy.trusted_keys, config.deploy.require_signed)
            .map_err(anyhow::Error::msg)
            .context("key deploy.trusted_keys")?;
        let metrics = Metrics::new();
        let (store, on_unavailable) = match &config.redis {
            Some(r) => {
                let tls = r.tls.read("redis.tls")?;
                let cache = r.read_cache_mb as usize * (1 << 20);
                let store = Store::connect(r.servers(), &r.prefix, &tls, cache)
                    .await
                    .with_context(|| match r.servers() {
                        crate::config::RedisServers::Single(url) => format!(
                            "cannot connect to Redis at {}",
                            crate::config::redact_url(url)
                        ),
                        crate::config::RedisServers::Sentinel { master_name, .. } => {
                            format!(
                                "cannot reach Redis master {master_name:?} through the sentinels"
                            )
                        }
                        crate::config::RedisServers::Cluster(_) => {
                            "cannot connect to the Redis Cluster".to_owned()
                        }
                    })?;
                (store, r.on_unavailable)
            }
            None => (Store::memory("warren"), crate::config::OnUnavailable::Pause),
        };
        tracing::info!(store = %store.describe(), "dedup store ready");
        metrics.redis_available.set(1);

        let mut handlers = Vec::new();
        for h in &config.handlers {
            let bytes = std::fs::read(&h.module).with_context(|| {
                format!(
                    "handler {:?}: cannot read module {}",
                    h.name,
                    h.module.display()
                )
            })?;
            let signer = trust.check(&bytes).with_context(|| {
                format!(
                    "handler {:?}: module {} is refused",
                    h.name,
                    h.module.display()
                )
            })?;
            let module = runtime.compile(&bytes).with_context(|| {
                format!(
                    "handler {:?}: module {} is refused",
                    h.name,
                    h.module.display()
                )
            })?;
            // The same settings `warren test` runs a module under, with
            // the handler's namespace of the store.
            let kv: Arc<dyn crate::runtime::KvStore> = Arc::new(KvView {
                store: store.clone(),
                namespace: h.kv_namespace().to_owned(),
            });
            let env = crate::trial::handler_env(h, Some(kv), None, &metrics)?;
            let env = Arc::new(env);
            let smoke = h.smoke_body.as_deref().map(registry::smoke_message);
            let permit = runtime
                .try_acquire()
                .expect("no message runs before start-up ends");
            runtime
                .smoke(&module, &env, smoke.as_ref(), &permit)
                .await
                .with_context(|| {
                    format!(
                        "handler {:?}: module {} fails its smoke test",
                        h.name,
                        h.module.display()
                    )
                })?;
            drop(permit);
            tracing::info!(
                handler = %h.name,
                module = %module.digest(),
                path = %h.module.display(),
                compile_ms = module.compile_time().as_millis() as u64,
                compiled_by = CompiledBy::of(&module).as_str(),
                signer = signer.as_ref().map_or("none".to_string(), |s| s.to_string()),
                "module loaded"
            );
            metrics.set_module(&h.name, None, module.digest().hex());
            handlers.push(Arc::new(HandlerCtx {
                topology: Topology {
                    queue: h.queue.clone(),
                    kind: match h.delivery_limit() {
                        Some(delivery_limit) => QueueKind::Quorum { delivery_limit },
                        None => QueueKind::Classic,
                    },
                    single_active_consumer: h.ordered,
                    dead_letter_queue: h.dead_letter_queue(),
                    bind: h.bind.as_ref().map(|b| Binding {
                        exchange: b.exchange.clone(),
                        kind: b.exchange_type,
                        routing_keys: b.routing_keys.clone(),
                    }),
                },
                concurrency: Arc::new(Semaphore::new(h.consumers as usize)),
                batches: Arc::new(Semaphore::new(h.batch_slots(cores) as usize)),
                metrics: metrics.handler(&h.name),
                warm: Arc::default(),
                shadow: Default::default(),
                canary: Default::default(),
                versions: Versions::new(
                    module,
                    format!("file {}", h.module.display()),
                    config.runtime.keep_versions as usize,
                )
                .signed_by(signer.map(|s| s.to_string())),
                env,
                cfg: h.clone(),
            }));
        }

        let tracer = config.telemetry.otlp_endpoint.as_ref().map(|e| {
            let url = if config.telemetry.endpoint_is_full_url {
                e.clone()
            } else {
                crate::telemetry::traces_url(e)
            };
            tracing::info!(endpoint = %crate::config::redact_url(&url), "exporting traces over OTLP/HTTP");
            let resource = vec![
                (
                    "service.name".to_string(),
                    config.telemetry.service_name.clone().into(),
                ),
                ("service.version".to_string(), env!("CARGO_PKG_VERSION").into()),
                ("host.name".to_string(), host.clone().into()),
                (
                    "process.pid".to_string(),
                    i64::from(std::process::id()).into(),
                ),
            ];
            crate::telemetry::Tracer::start(url, resource)
        });
        let shared = Arc::new(Shared {
            runtime,
            store,
            on_unavailable,
            metrics,
            health: Health::default(),
            host,
            shutdown,
            tracer,
            trust,
        });
        Ok(Host { shared, handlers })
    }
}
