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
//!
//! - this file: the supervisor (`Host::serve`) and one connection's life
//!   (`session`);
//! - `start.rs`: `Host::start`, compiling the handlers' modules and
//!   connecting the dedup store;
//! - `consume.rs`: one consumer channel's loop, taking batches;
//! - `quarantine.rs`: after the client failed to parse a frame, moving such
//!   deliveries to the dead-letter queue before consuming again.

mod consume;
mod quarantine;
mod start;

use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::amqp::{self, Broker, ConsumerProbe};
use crate::config::Config;
use crate::context::Host;
use crate::liveness::{Down, report_not_consuming};
use consume::consume_loop;

impl Host {
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
                    let unparseable = broker.lost_to_unparseable_frame().await;
                    tracing::warn!(reason = %reason, retry_in_ms = backoff.as_millis() as u64, "connection to RabbitMQ lost; reconnecting");
                    down.set(reason);
                    tokio::select! {
                        _ = broker.close(LOST_CLOSE) => {}
                        _ = shutdown.wait_for(|s| *s) => break,
                    }
                    if unparseable {
                        tokio::select! {
                            _ = self.quarantine(config) => {}
                            _ = shutdown.wait_for(|s| *s) => break,
                        }
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
            never = self.poll_dead_letter_depths(broker) => match never {},
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

impl Host {
    /// Every [`DEPTH_POLL`], the number of messages in each handler's
    /// dead-letter queue, into `warren_dead_letter_depth` (the dashboard
    /// shows it). A failed count is logged at debug and tried again: the
    /// connection's own watch decides whether it is lost.
    async fn poll_dead_letter_depths(&self, broker: &Broker) -> std::convert::Infallible {
        let queues: Vec<String> = self
            .handlers
            .iter()
            .map(|h| h.cfg.dead_letter_queue())
            .collect();
        loop {
            match broker.queue_depths(&queues).await {
                Ok(depths) => {
                    for (h, n) in self.handlers.iter().zip(depths) {
                        h.metrics.dead_letter_depth.set(i64::from(n));
                    }
                }
                Err(e) => tracing::debug!(error = %e, "cannot count the dead-letter queues"),
            }
            tokio::time::sleep(DEPTH_POLL).await;
        }
    }
}

/// How often the dead-letter queues are counted.
const DEPTH_POLL: Duration = Duration::from_secs(2);
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
