//! Lease renewal for a batch: every held lease is renewed, in one round
//! trip, every third of its length while the batch's messages run and their
//! outputs are published (not after: then the keys are marked done or
//! released, and a renewal would find them no longer ours).
//!
//! It runs inside the batch's own task (raced against the work with
//! `select!`), not as a task of its own: a lease outlives the handler's
//! deadline by design, so in the common case it never fires and costs one
//! timer per batch. It only logs what it finds; the compare-and-set that
//! marks a key done is what refuses a lease that was lost.

use std::time::Duration;

use crate::dedup::{Lease, Store};

/// Renews `leases` (clones of the batch's) every `ttl / 3`, forever: the
/// caller drops it when the work it guards is done.
pub(super) async fn keep_renewed(store: &Store, handler: &str, leases: Vec<Lease>, ttl: Duration) {
    if leases.is_empty() {
        return std::future::pending().await;
    }
    let mut live: Vec<&Lease> = leases.iter().collect();
    loop {
        tokio::time::sleep(ttl / 3).await;
        let results = store.renew_many(&live, ttl).await;
        let mut kept = Vec::with_capacity(live.len());
        for (lease, result) in live.into_iter().zip(results) {
            match result {
                Ok(true) => kept.push(lease),
                Ok(false) => {
                    tracing::warn!(handler, key = %lease.key, "dedup lease lost while the handler runs; the message will not be acked")
                }
                // The lease may still be ours; the next renewal, or the
                // compare-and-set at the end, will tell.
                Err(e) => {
                    tracing::warn!(handler, key = %lease.key, error = %e, "cannot renew the dedup lease");
                    kept.push(lease);
                }
            }
        }
        live = kept;
        if live.is_empty() {
            return std::future::pending().await;
        }
    }
}
