//! One consumer channel's loop: at most `consumers` of the handler in
//! flight, batches of what has already arrived, and the end of the loop on
//! shutdown (drain within the grace period) or loss (detach).

use std::sync::Arc;

use tokio::sync::watch;
use tokio::task::JoinSet;

use super::{CLOSE_BUDGET, LOST_CLOSE, Stop};
use crate::amqp::{self, ConsumerChannel, Publisher};
use crate::context::{HandlerCtx, Shared};
use crate::pipeline::process;

/// Takes deliveries from one consumer channel, at most `consumers` of the
/// handler in flight, in batches of what has already arrived (at most
/// `max_batch`), each batch handled in its own task. Returns why it ended.
pub(super) async fn consume_loop(
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
