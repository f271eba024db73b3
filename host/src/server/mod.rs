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

use crate::amqp::{self, Broker, ConsumerProbe, QueueKind};
use crate::config::{Config, redact_url};
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
        let mut endpoints = Endpoints::new(config.amqp.endpoints(), rand::random::<u32>() as usize);
        let down = Down::new("not connected yet");
        let reporter = tokio::spawn(report_not_consuming(self.shared.clone(), down.clone()));
        let secret = config.amqp.bookkeeping_secret();
        let result = loop {
            if *shutdown.borrow() {
                break Ok(());
            }
            let key = amqp::bookkeeping::Key::new(secret.as_bytes());
            let url = endpoints.current();
            let endpoint = redact_url(url);
            // Read at every attempt, so renewed certificates are picked up.
            let connect = async {
                let tls = config
                    .amqp
                    .tls
                    .read("amqp.tls")
                    .map_err(|e| amqp::Error::Tls(format!("{e:#}")))?;
                Broker::connect(url, &name, key, &tls).await
            };
            let connect = tokio::select! {
                c = connect => c,
                _ = shutdown.wait_for(|s| *s) => break Ok(()),
            };
            let broker = match connect {
                Ok(b) => b,
                Err(e) => {
                    // The next node at once; the backoff only once every
                    // node was tried in a row.
                    let pause = match endpoints.advance() {
                        true => backoff,
                        false => Duration::ZERO,
                    };
                    tracing::warn!(endpoint = %endpoint, error = %e, retry_in_ms = pause.as_millis() as u64, "cannot connect to RabbitMQ");
                    down.set(format!("cannot connect to {endpoint}: {e}"));
                    tokio::select! {
                        _ = tokio::time::sleep(pause) => {}
                        _ = shutdown.wait_for(|s| *s) => break Ok(()),
                    }
                    if !pause.is_zero() {
                        backoff = (backoff * 2).min(max_backoff);
                    }
                    continue;
                }
            };
            endpoints.connected();
            if connected_before {
                self.shared.metrics.reconnects.inc();
            }
            connected_before = true;
            let started = Instant::now();
            let end = self.session(&broker, &endpoint, grace, &down).await;
            match end {
                SessionEnd::Shutdown { close_by } => {
                    let left = close_by.saturating_duration_since(Instant::now());
                    broker.close(left.max(Duration::from_millis(50))).await;
                    tracing::info!("connection closed");
                    break Ok(());
                }
                SessionEnd::Refused(e) => {
                    tracing::error!(endpoint = %endpoint, error = %e, "RabbitMQ refuses the topology; stopping");
                    broker.close(LOST_CLOSE).await;
                    break Err(anyhow::Error::new(e)
                        .context(format!("cannot declare the handlers' queues on {endpoint}")));
                }
                SessionEnd::Lost(reason) => {
                    if started.elapsed() > BACKOFF_RESET_AFTER {
                        backoff = Duration::from_millis(100);
                    }
                    let unparseable = broker.lost_to_unparseable_frame().await;
                    // A lost node is likely still gone: the next attempt
                    // goes to the next one (the same, with one URL).
                    endpoints.advance();
                    tracing::warn!(endpoint = %endpoint, reason = %reason, retry_in_ms = backoff.as_millis() as u64, next_endpoint = %redact_url(endpoints.current()), "connection to RabbitMQ lost; reconnecting");
                    down.set(reason);
                    tokio::select! {
                        _ = broker.close(LOST_CLOSE) => {}
                        _ = shutdown.wait_for(|s| *s) => break Ok(()),
                    }
                    if unparseable {
                        tokio::select! {
                            _ = self.quarantine(url) => {}
                            _ = shutdown.wait_for(|s| *s) => break Ok(()),
                        }
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = shutdown.wait_for(|s| *s) => break Ok(()),
                    }
                    backoff = (backoff * 2).min(max_backoff);
                }
            }
        };
        reporter.abort();
        result
    }

    /// One connection's life: declare, consume, and wait for its end. Every
    /// step is bounded: the set-up by the broker calls' own time-outs, the
    /// end of the consumer loops by [`LOST_END`] after a loss and by the
    /// grace period plus [`CLOSE_BUDGET`] on shutdown.
    async fn session(
        &self,
        broker: &Broker,
        endpoint: &str,
        grace: Duration,
        down: &Down,
    ) -> SessionEnd {
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
                Err(e) if e.is_permanent() => return SessionEnd::Refused(e),
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
            endpoint,
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
            SessionEnd::Lost(_) | SessionEnd::Refused(_) => (Stop::Lost, Instant::now() + LOST_END),
        };
        let _ = stop_tx.send(stop);
        let join =
            tokio::time::timeout_at(end_by, async { while loops.join_next().await.is_some() {} });
        // A shutdown during a loss's wind-down need not wait for it: the
        // channels are dead and their deliveries come back anyway.
        let ended = match end {
            SessionEnd::Shutdown { .. } => join.await.is_ok(),
            SessionEnd::Lost(_) | SessionEnd::Refused(_) => tokio::select! {
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
    /// shows it), and the read cache's counts into
    /// `warren_kv_read_cache_{hits,misses}_total`. A failed count is logged
    /// at debug and tried again: the connection's own watch decides whether
    /// it is lost.
    async fn poll_dead_letter_depths(&self, broker: &Broker) -> std::convert::Infallible {
        let queues: Vec<(String, QueueKind)> = self
            .handlers
            .iter()
            .map(|h| (h.topology.dead_letter_queue.clone(), h.topology.kind))
            .collect();
        let mut cached = self.shared.store.cache_stats();
        loop {
            match broker.queue_depths(&queues).await {
                Ok(depths) => {
                    for (h, n) in self.handlers.iter().zip(depths) {
                        h.metrics.dead_letter_depth.set(i64::from(n));
                    }
                }
                Err(e) => tracing::debug!(error = %e, "cannot count the dead-letter queues"),
            }
            // The read cache counts in the store; its counters follow here.
            if let (Some(before), Some(now)) = (cached, self.shared.store.cache_stats()) {
                let m = &self.shared.metrics;
                m.kv_read_cache_hits
                    .inc_by(now.hits.saturating_sub(before.hits));
                m.kv_read_cache_misses
                    .inc_by(now.misses.saturating_sub(before.misses));
                cached = Some(now);
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
    /// The broker refuses what warren must declare, and will until an
    /// operator changes something: the host stops.
    Refused(amqp::Error),
}

/// The broker endpoints and which one is next: a host starts at a random
/// one, so the hosts of a group spread over a cluster's nodes, and moves
/// on in list order.
#[derive(Debug)]
struct Endpoints<'a> {
    urls: &'a [String],
    at: usize,
    /// Failed attempts since the last connection.
    failed: usize,
}

impl<'a> Endpoints<'a> {
    fn new(urls: &'a [String], random: usize) -> Self {
        assert!(!urls.is_empty(), "the config holds at least one AMQP URL");
        Self {
            urls,
            at: random % urls.len(),
            failed: 0,
        }
    }

    fn current(&self) -> &'a str {
        &self.urls[self.at]
    }

    /// Moves to the next endpoint after a failure. True when every endpoint
    /// failed since the last connection (time to back off).
    fn advance(&mut self) -> bool {
        self.at = (self.at + 1) % self.urls.len();
        self.failed += 1;
        self.failed >= self.urls.len()
    }

    fn connected(&mut self) {
        self.failed = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::Endpoints;

    #[test]
    fn endpoints_start_at_random_and_back_off_after_a_full_round() {
        let urls: Vec<String> = ["a", "b", "c"].map(String::from).to_vec();
        let mut e = Endpoints::new(&urls, 4);
        assert_eq!(e.current(), "b");
        assert!(!e.advance());
        assert_eq!(e.current(), "c");
        assert!(!e.advance());
        assert_eq!(e.current(), "a");
        assert!(e.advance(), "every node failed once: back off");
        e.connected();
        assert!(!e.advance());
        let one = vec!["only".to_string()];
        let mut e = Endpoints::new(&one, 7);
        assert!(e.advance(), "one URL: back off after each failure");
        assert_eq!(e.current(), "only");
    }
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
