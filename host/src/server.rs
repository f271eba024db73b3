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
use std::time::Duration;

use anyhow::Context as _;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::amqp::{self, Binding, Broker, ConsumerChannel, ConsumerProbe, Publisher, Topology};
use crate::config::{Config, QueueType};
use crate::context::{HandlerCtx, Health, Host, Shared};
use crate::dedup::Store;
use crate::liveness::{Down, report_not_consuming};
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
                versions: Versions::new(
                    module,
                    format!("file {}", h.module.display()),
                    config.runtime.keep_versions as usize,
                ),
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

    /// Runs until shutdown: connects, consumes, reconnects. While it is not
    /// consuming it says so every
    /// [`NOT_CONSUMING_EVERY`](crate::liveness::NOT_CONSUMING_EVERY), and `/readyz`
    /// reports not ready, so a process supervisor can act on it.
    pub async fn serve(&self, config: &Config) -> anyhow::Result<()> {
        let name = format!("warren@{} pid {}", self.shared.host, std::process::id());
        let max_backoff = Duration::from_millis(config.amqp.reconnect_max_ms);
        let grace = Duration::from_millis(config.runtime.shutdown_timeout_ms);
        let mut shutdown = self.shared.shutdown.clone();
        let mut backoff = Duration::from_millis(100);
        let mut connected_before = false;
        let down = Down::new("not connected yet");
        let reporter = tokio::spawn(report_not_consuming(self.shared.clone(), down.clone()));
        loop {
            if *shutdown.borrow() {
                break;
            }
            let key = amqp::bookkeeping::Key::new(config.amqp.bookkeeping_secret().as_bytes());
            let connect = tokio::select! {
                c = Broker::connect(&config.amqp.url, &name, key) => c,
                _ = shutdown.wait_for(|s| *s) => break,
            };
            let broker = match connect {
                Ok(b) => b,
                Err(e) => {
                    tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "cannot connect to RabbitMQ");
                    down.set(format!("cannot connect: {e}"));
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
            let end = self.session(&broker, grace, &down).await;
            match end {
                SessionEnd::Shutdown { close_by } => {
                    let left = close_by.saturating_duration_since(Instant::now());
                    broker.close(left.max(Duration::from_millis(50))).await;
                    tracing::info!("connection closed");
                    break;
                }
                SessionEnd::Lost(reason) => {
                    if started.elapsed() > BACKOFF_RESET_AFTER {
                        backoff = Duration::from_millis(100);
                    }
                    tracing::warn!(reason = %reason, retry_in_ms = backoff.as_millis() as u64, "connection to RabbitMQ lost; reconnecting");
                    down.set(reason);
                    tokio::select! {
                        _ = broker.close(LOST_CLOSE) => {}
                        _ = shutdown.wait_for(|s| *s) => break,
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = shutdown.wait_for(|s| *s) => break,
                    }
                    backoff = (backoff * 2).min(max_backoff);
                }
            }
        }
        reporter.abort();
        Ok(())
    }

    /// One connection's life: declare, consume, and wait for its end. Every
    /// step is bounded: the set-up by the broker calls' own time-outs, the
    /// end of the consumer loops by [`LOST_END`] after a loss and by the
    /// grace period plus [`CLOSE_BUDGET`] on shutdown.
    async fn session(&self, broker: &Broker, grace: Duration, down: &Down) -> SessionEnd {
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
        let mut shutdown = self.shared.shutdown.clone();
        let (publisher, consumers) = tokio::select! {
            r = setup => match r {
                Ok(x) => x,
                Err(e) => return SessionEnd::Lost(format!("set-up failed: {e}")),
            },
            _ = shutdown.wait_for(|s| *s) => return SessionEnd::Shutdown { close_by: Instant::now() + CLOSE_BUDGET },
        };
        let probes: Vec<ConsumerProbe> = consumers.iter().map(|(_, c)| c.probe()).collect();
        down.consuming();
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
            ));
        }
        let end = tokio::select! {
            reason = broker.lost(&probes) => SessionEnd::Lost(reason),
            _ = shutdown.wait_for(|s| *s) => SessionEnd::Shutdown { close_by: Instant::now() + grace + CLOSE_BUDGET },
            Some(r) = loops.join_next() => SessionEnd::Lost(r.unwrap_or_else(|e| format!("a consumer loop failed: {e}"))),
        };
        // Not consuming from here on, whatever the loops still finish.
        self.shared.health.amqp.store(false, Ordering::Relaxed);
        self.shared.metrics.amqp_connected.set(0);
        let (stop, end_by) = match &end {
            SessionEnd::Shutdown { close_by } => (
                Stop::Shutdown {
                    drain_by: *close_by - CLOSE_BUDGET,
                },
                *close_by,
            ),
            SessionEnd::Lost(_) => (Stop::Lost, Instant::now() + LOST_END),
        };
        let _ = stop_tx.send(stop);
        let join =
            tokio::time::timeout_at(end_by, async { while loops.join_next().await.is_some() {} });
        // A shutdown during a loss's wind-down need not wait for it: the
        // channels are dead and their deliveries come back anyway.
        let ended = match end {
            SessionEnd::Shutdown { .. } => join.await.is_ok(),
            SessionEnd::Lost(_) => tokio::select! {
                r = join => r.is_ok(),
                _ = shutdown.wait_for(|s| *s) => false,
            },
        };
        if !ended {
            tracing::warn!(
                consumers = loops.len(),
                "consumer loops did not end in time; abandoning them (their deliveries return to the queue)"
            );
            loops.abort_all();
        }
        if let SessionEnd::Shutdown { close_by } = end {
            let left = close_by.saturating_duration_since(Instant::now());
            publisher.close(left.max(Duration::from_millis(50))).await;
        }
        end
    }
}

/// A connection that lasted this long was no failed attempt: the next one
/// starts from the shortest backoff, however often the broker restarts.
const BACKOFF_RESET_AFTER: Duration = Duration::from_secs(2);
/// How long a consumer loop gets, after its connection was lost, to flush
/// and close its dead channel (each step, so twice this in all).
const LOST_CLOSE: Duration = Duration::from_secs(2);
/// How long the consumer loops of a lost connection get to end.
const LOST_END: Duration = Duration::from_secs(5);
/// On shutdown, after the in-flight deadline: how long flushing the last
/// acks and closing the channels and the connection may take together.
pub const CLOSE_BUDGET: Duration = Duration::from_millis(500);
#[derive(Debug)]
enum SessionEnd {
    /// Shutdown: everything is to be closed by `close_by`.
    Shutdown {
        close_by: Instant,
    },
    Lost(String),
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Stop {
    Running,
    /// Finish in-flight messages by `drain_by`, then flush and close within
    /// [`CLOSE_BUDGET`].
    Shutdown {
        drain_by: Instant,
    },
    Lost,
}

/// Takes deliveries from one consumer channel, at most `consumers` of the
/// handler in flight, in batches of what has already arrived (at most
/// `max_batch`), each batch handled in its own task. Returns why it ended.
async fn consume_loop(
    shared: Arc<Shared>,
    h: Arc<HandlerCtx>,
    publisher: Publisher,
    mut consumer: ConsumerChannel,
    mut stop: watch::Receiver<Stop>,
) -> String {
    let mut tasks = JoinSet::new();
    let max_batch = h.cfg.max_batch as usize;
    let mut ended = "stopped".to_string();
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
                None => {
                    ended = format!("consumer {} ended (cancelled, or its channel closed)", consumer.tag());
                    break;
                }
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

    let how = *stop.borrow();
    if let Stop::Shutdown { drain_by } = how {
        let _ = tokio::time::timeout_at(drain_by, consumer.cancel(amqp::CALL_TIMEOUT)).await;
        while tasks.try_join_next().is_some() {}
        let in_flight = tasks.len();
        if in_flight > 0 {
            tracing::info!(handler = %h.cfg.name, consumer = consumer.tag(), in_flight, "waiting for in-flight messages");
        }
        let drained = tokio::time::timeout_at(drain_by, async {
            while tasks.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            tracing::warn!(
                handler = %h.cfg.name,
                abandoned = tasks.len(),
                "shutdown deadline passed: abandoning in-flight messages; they return to the queue"
            );
            tasks.abort_all();
        }
        // Flush, then close: each gets half of what is left.
        consumer.close(CLOSE_BUDGET / 2).await;
    } else {
        // The channel is gone: nothing of it can be acked any more. Let the
        // in-flight messages finish in the background so they release their
        // dedup leases; their deliveries come back on the new connection.
        tasks.detach_all();
        consumer.close(LOST_CLOSE).await;
    }
    ended
}
