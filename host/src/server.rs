//! `warren run`: load the handlers, connect, consume until told to stop.
//!
//! A supervisor owns the connection: it connects (backing off while the
//! broker is away), declares every handler's topology, opens the publisher
//! and the consumer channels, and waits for the connection to fail or for
//! shutdown. On failure it starts over with a new connection and new
//! channels; deliveries of the dead channels are never acked (their acks go
//! to the dead channel's batcher, which sends nothing). On shutdown the
//! consumers are cancelled, in-flight messages finish within the deadline,
//! acks are flushed and the channels and the connection are closed.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;

use crate::amqp::{self, Binding, Broker, ConsumerChannel, Publisher, Topology};
use crate::config::{Config, QueueType};
use crate::context::{HandlerCtx, Health, Host, Shared};
use crate::dedup::Store;
use crate::metrics::Metrics;
use crate::pipeline::process;
use crate::registry::{self, CompiledBy};
use crate::runtime::{HandlerEnv, Limits, Runtime, RuntimeConfig};
use crate::shutdown;
use crate::versions::Versions;

impl Host {
    /// Compiles every handler's module and connects the dedup store; the
    /// broker connection comes in [`Host::serve`].
    pub async fn start(config: &Config, shutdown: shutdown::Signal) -> anyhow::Result<Host> {
        let host = hostname::get()
            .map(|h| h.to_string_lossy().into_owned())
            .unwrap_or_else(|_| "unknown".into());
        // One instance per message in flight, plus one so a deploy's smoke
        // test does not wait for a busy handler to finish a message.
        let instances: u32 = config.handlers.iter().map(|h| h.consumers).sum::<u32>() + 1;
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

        let metrics = Metrics::new();
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get() as u32);
        let mut handlers = Vec::new();
        for h in &config.handlers {
            let bytes = std::fs::read(&h.module).with_context(|| {
                format!(
                    "handler {:?}: cannot read module {}",
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
            let env = HandlerEnv {
                name: h.name.clone(),
                config: h.config.clone(),
                publish_allow: h.publish.allow.clone(),
                limits: Limits {
                    timeout: h.timeout(),
                    memory_bytes: (h.memory_mb as usize) << 20,
                    ..Limits::default()
                },
            };
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
                "module loaded"
            );
            metrics.set_module(&h.name, None, module.digest().hex());
            handlers.push(Arc::new(HandlerCtx {
                topology: Topology {
                    queue: h.queue.clone(),
                    quorum: h.queue_type == QueueType::Quorum,
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
                versions: Versions::new(module, format!("file {}", h.module.display())),
                env,
                cfg: h.clone(),
            }));
        }

        let (store, on_unavailable) = match &config.redis {
            Some(r) => {
                let store = Store::redis(&r.url, &r.prefix).await.with_context(|| {
                    format!(
                        "cannot connect to Redis at {}",
                        crate::config::redact_url(&r.url)
                    )
                })?;
                (store, r.on_unavailable)
            }
            None => (Store::memory("warren"), crate::config::OnUnavailable::Pause),
        };
        tracing::info!(store = %store.describe(), "dedup store ready");
        metrics.redis_available.set(1);

        let shared = Arc::new(Shared {
            runtime,
            store,
            on_unavailable,
            metrics,
            health: Health::default(),
            host,
            shutdown,
        });
        Ok(Host { shared, handlers })
    }

    /// Runs until shutdown: connects, consumes, reconnects.
    pub async fn serve(&self, config: &Config) -> anyhow::Result<()> {
        let name = format!("warren@{} pid {}", self.shared.host, std::process::id());
        let max_backoff = Duration::from_millis(config.amqp.reconnect_max_ms);
        let grace = Duration::from_millis(config.runtime.shutdown_timeout_ms);
        let mut shutdown = self.shared.shutdown.clone();
        let mut backoff = Duration::from_millis(100);
        let mut connected_before = false;
        loop {
            if *shutdown.borrow() {
                break;
            }
            let broker = match Broker::connect(&config.amqp.url, &name).await {
                Ok(b) => b,
                Err(e) => {
                    tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "cannot connect to RabbitMQ");
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = shutdown.wait_for(|s| *s) => break,
                    }
                    backoff = (backoff * 2).min(max_backoff);
                    continue;
                }
            };
            if connected_before {
                self.shared.metrics.reconnects.inc();
            }
            connected_before = true;
            let started = Instant::now();
            let end = self.session(&broker, grace).await;
            self.shared.health.amqp.store(false, Ordering::Relaxed);
            self.shared.metrics.amqp_connected.set(0);
            match end {
                SessionEnd::Shutdown => {
                    broker.close().await;
                    tracing::info!("connection closed");
                    break;
                }
                SessionEnd::Lost(reason) => {
                    if started.elapsed() > Duration::from_secs(10) {
                        backoff = Duration::from_millis(100);
                    }
                    tracing::warn!(reason = %reason, retry_in_ms = backoff.as_millis() as u64, "connection to RabbitMQ lost; reconnecting");
                    broker.close().await;
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = shutdown.wait_for(|s| *s) => break,
                    }
                    backoff = (backoff * 2).min(max_backoff);
                }
            }
        }
        Ok(())
    }

    /// One connection's life: declare, consume, and wait for its end.
    async fn session(&self, broker: &Broker, grace: Duration) -> SessionEnd {
        let setup = async {
            for h in &self.handlers {
                broker.declare(&h.topology).await?;
            }
            let publisher = broker.publisher().await?;
            let mut consumers = Vec::new();
            for h in &self.handlers {
                for n in 0..h.cfg.channels {
                    let tag = format!(
                        "warren.{}.{}.{}.{}",
                        h.cfg.name,
                        self.shared.host,
                        std::process::id(),
                        n
                    );
                    consumers.push((
                        h.clone(),
                        broker.consume(&h.cfg.queue, h.cfg.prefetch, &tag).await?,
                    ));
                }
            }
            Ok::<_, amqp::Error>((publisher, consumers))
        };
        let (publisher, consumers) = match setup.await {
            Ok(x) => x,
            Err(e) => return SessionEnd::Lost(format!("set-up failed: {e}")),
        };
        self.shared.health.amqp.store(true, Ordering::Relaxed);
        self.shared.metrics.amqp_connected.set(1);
        tracing::info!(
            connection = broker.name(),
            consumers = consumers.len(),
            handlers = self.handlers.len(),
            "connected to RabbitMQ; consuming"
        );

        let (stop_tx, stop_rx) = watch::channel(Stop::Running);
        let mut loops = JoinSet::new();
        for (h, consumer) in consumers {
            loops.spawn(consume_loop(
                self.shared.clone(),
                h,
                publisher.clone(),
                consumer,
                stop_rx.clone(),
                grace,
            ));
        }
        let mut shutdown = self.shared.shutdown.clone();
        let end = tokio::select! {
            reason = broker.lost() => SessionEnd::Lost(reason),
            _ = shutdown.wait_for(|s| *s) => SessionEnd::Shutdown,
            Some(_) = loops.join_next() => SessionEnd::Lost("a consumer ended".into()),
        };
        let stop = match end {
            SessionEnd::Shutdown => Stop::Shutdown,
            SessionEnd::Lost(_) => Stop::Lost,
        };
        let _ = stop_tx.send(stop);
        // Consumer loops end by themselves: at once when the connection was
        // lost, within the grace period on shutdown.
        while loops.join_next().await.is_some() {}
        if matches!(end, SessionEnd::Shutdown) {
            publisher.close().await;
        }
        end
    }
}

#[derive(Debug)]
enum SessionEnd {
    Shutdown,
    Lost(String),
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Stop {
    Running,
    Shutdown,
    Lost,
}

/// Takes deliveries from one consumer channel, at most `consumers` of the
/// handler in flight, in batches of what has already arrived (at most
/// `max_batch`), each batch handled in its own task.
async fn consume_loop(
    shared: Arc<Shared>,
    h: Arc<HandlerCtx>,
    publisher: Publisher,
    mut consumer: ConsumerChannel,
    mut stop: watch::Receiver<Stop>,
    grace: Duration,
) {
    let mut tasks = JoinSet::new();
    let max_batch = h.cfg.max_batch as usize;
    loop {
        // A batch slot and a permit first, then a delivery: what the loop
        // has not taken stays prefetched, unacked and unstarted, and returns
        // to the queue if this host stops.
        let slot = tokio::select! {
            p = h.batches.clone().acquire_owned() => p.expect("batch semaphore is never closed"),
            _ = stop.wait_for(|s| *s != Stop::Running) => break,
        };
        let mut permits = tokio::select! {
            p = h.concurrency.clone().acquire_owned() => p.expect("handler semaphore is never closed"),
            _ = stop.wait_for(|s| *s != Stop::Running) => break,
        };
        let first = tokio::select! {
            d = consumer.next() => match d {
                Some(d) => d,
                None => break,
            },
            _ = stop.wait_for(|s| *s != Stop::Running) => break,
        };
        // Then whatever else has arrived, while permits last: under load a
        // batch fills from the prefetch buffer, and a lone message goes on
        // alone without waiting for company.
        let mut batch = vec![first];
        while batch.len() < max_batch {
            let Ok(more) = h.concurrency.clone().try_acquire_owned() else {
                break;
            };
            let Some(d) = consumer.try_next() else {
                break;
            };
            permits.merge(more);
            batch.push(d);
        }
        let (shared, h, publisher) = (shared.clone(), h.clone(), publisher.clone());
        tasks.spawn(async move {
            process(&shared, &h, &publisher, batch).await;
            drop((permits, slot));
        });
        while tasks.try_join_next().is_some() {}
    }

    if *stop.borrow() == Stop::Shutdown {
        consumer.cancel().await;
        while tasks.try_join_next().is_some() {}
        let in_flight = tasks.len();
        if in_flight > 0 {
            tracing::info!(handler = %h.cfg.name, consumer = consumer.tag(), in_flight, "waiting for in-flight messages");
        }
        let drained =
            tokio::time::timeout(grace, async { while tasks.join_next().await.is_some() {} }).await;
        if drained.is_err() {
            tracing::warn!(
                handler = %h.cfg.name,
                abandoned = tasks.len(),
                grace_ms = grace.as_millis() as u64,
                "shutdown deadline passed: abandoning in-flight messages; they return to the queue"
            );
            tasks.abort_all();
        }
        consumer.close().await;
    } else {
        // The channel is gone: nothing of it can be acked any more. Let the
        // in-flight messages finish in the background so they release their
        // dedup leases; their deliveries come back on the new connection.
        tasks.detach_all();
        consumer.close().await;
    }
}
