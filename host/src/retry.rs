//! Retry timing: exponential backoff with jitter, and the delay tiers that
//! name the broker's wait queues.
//!
//! A retry waits in a durable queue whose per-queue TTL dead-letters the
//! message back to the work queue. One queue per distinct delay avoids the
//! head-of-line blocking of per-message TTLs (RabbitMQ only expires the
//! message at the head of a queue), and rounding delays to a few tiers per
//! decade keeps the number of wait queues small (at most 11 per decade).
//! This module only computes; it knows nothing of AMQP.

use std::time::Duration;

use crate::config;

/// Mantissas of the delay tiers, in tenths: 1, 1.5, 2, 2.5, 3, 4, ... 9 (x10^n ms).
const MANTISSAS: [u64; 11] = [10, 15, 20, 25, 30, 40, 50, 60, 70, 80, 90];

/// The longest delay a wait queue gets; longer requests are clamped.
pub const MAX_DELAY: Duration = Duration::from_secs(24 * 3600);

/// The delay before the next attempt after attempt `attempt` failed:
/// `backoff_ms * 2^(attempt-1)`, capped at `max_backoff_ms`, then a random
/// point in its upper half (`jitter` in `[0, 1)`), so that a burst of
/// failures does not come back as a burst.
pub fn backoff(policy: &config::Retry, attempt: u32, jitter: f64) -> Duration {
    let exp = attempt.saturating_sub(1).min(40);
    let base = policy
        .backoff_ms
        .saturating_mul(1u64 << exp)
        .min(policy.max_backoff_ms);
    let jittered = base as f64 * (0.5 + 0.5 * jitter.clamp(0.0, 1.0));
    Duration::from_millis(jittered.round().max(1.0) as u64)
}

/// The wait-queue tier for `delay`: the nearest of 1, 1.5, 2, 2.5, 3, 4, 5, 6,
/// 7, 8, 9 times a power of ten milliseconds, at least 1 ms, at most
/// [`MAX_DELAY`] (itself a tier).
pub fn tier(delay: Duration) -> Duration {
    let ms = delay.min(MAX_DELAY).as_millis().max(1) as u64;
    let mut best = 1u64;
    let mut scale = 1u64;
    while scale <= ms * 10 {
        for m in MANTISSAS {
            let t = m * scale / 10;
            if t == 0 {
                continue;
            }
            if t.abs_diff(ms) < best.abs_diff(ms) {
                best = t;
            }
        }
        scale *= 10;
    }
    Duration::from_millis(best).min(MAX_DELAY)
}

/// The name of the wait queue for `queue` and a tier. A quorum work
/// queue's wait queues are quorum queues too, under names of their own
/// (`orders.retry.quorum.1500ms`): a queue's type is fixed when it is
/// created, so a handler moved from classic to quorum declares new wait
/// queues rather than clash with the old ones, which still drain into the
/// work queue.
pub fn wait_queue(queue: &str, tier: Duration, quorum: bool) -> String {
    let ms = tier.as_millis();
    match quorum {
        false => format!("{queue}.retry.{ms}ms"),
        true => format!("{queue}.retry.quorum.{ms}ms"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> config::Retry {
        config::Retry {
            max_attempts: 5,
            backoff_ms: 200,
            max_backoff_ms: 60_000,
        }
    }

    #[test]
    fn backoff_doubles_per_attempt_and_is_capped() {
        let p = policy();
        assert_eq!(backoff(&p, 1, 1.0), Duration::from_millis(200));
        assert_eq!(backoff(&p, 2, 1.0), Duration::from_millis(400));
        assert_eq!(backoff(&p, 3, 1.0), Duration::from_millis(800));
        assert_eq!(backoff(&p, 30, 1.0), Duration::from_millis(60_000));
        assert_eq!(backoff(&p, u32::MAX, 1.0), Duration::from_millis(60_000));
    }

    #[test]
    fn jitter_stays_in_the_upper_half() {
        let p = policy();
        assert_eq!(backoff(&p, 3, 0.0), Duration::from_millis(400));
        assert_eq!(backoff(&p, 3, 0.5), Duration::from_millis(600));
    }

    #[test]
    fn tiers_round_to_the_nearest_step() {
        let ms = |n| Duration::from_millis(n);
        assert_eq!(tier(ms(0)), ms(1));
        assert_eq!(tier(ms(100)), ms(100));
        assert_eq!(tier(ms(137)), ms(150));
        assert_eq!(tier(ms(560)), ms(600));
        assert_eq!(tier(ms(1000)), ms(1000));
        assert_eq!(tier(ms(2300)), ms(2500));
        assert_eq!(tier(ms(60_000)), ms(60_000));
        assert_eq!(tier(ms(96_000)), ms(100_000));
        assert_eq!(tier(Duration::from_secs(10 * 24 * 3600)), MAX_DELAY);
    }

    #[test]
    fn tiers_are_few() {
        let mut seen = std::collections::BTreeSet::new();
        for ms in (1..=60_000).step_by(7) {
            seen.insert(tier(Duration::from_millis(ms)));
        }
        assert!(seen.len() <= 11 * 5 + 1, "{} tiers", seen.len());
        assert_eq!(
            wait_queue("orders", Duration::from_millis(1500), false),
            "orders.retry.1500ms"
        );
        assert_eq!(
            wait_queue("orders", Duration::from_millis(1500), true),
            "orders.retry.quorum.1500ms"
        );
    }
}
