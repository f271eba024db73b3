//! Ordered mode (`ordered = true`): one active consumer in the group, one
//! message at a time, retries in place.

use std::time::{Duration, Instant};

use warren_tests::broker::Got;
use warren_tests::fixture::{Fixture, Running, SHARED_REDIS};
use warren_tests::process::eventually;

/// Reads the output queue into `got` until `n` distinct bodies arrived in
/// all; every copy, in arrival order.
async fn outputs_until(f: &Running, got: &mut Vec<Got>, n: usize, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    let mut distinct: std::collections::HashSet<String> = got.iter().map(Got::body_str).collect();
    while distinct.len() < n {
        let batch = f.rabbit.drain(&f.out).await;
        if batch.is_empty() {
            assert!(
                Instant::now() < deadline,
                "only {} of {n} outputs within {timeout:?}",
                distinct.len()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        for g in batch {
            distinct.insert(g.body_str());
            got.push(g);
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn two_hosts_keep_1000_messages_in_order_and_the_survivor_takes_over_without_a_gap() {
    const N: usize = 1_000;
    let mut f = Fixture::new("ordered")
        .quorum()
        .redis(SHARED_REDIS, "pause")
        .extra("ordered = true\ntimeout_ms = 2000\n[handler.dedup]\nlease_ms = 3000\n")
        .processes(2)
        .start()
        .await;
    let body = |i: usize| format!("{i:04}");
    f.rabbit
        .publish_many(
            &f.queue,
            (0..N).map(|i| (Some(format!("s-{i:04}")), body(i).into_bytes())),
        )
        .await;

    // A third of the way, the host doing the work is killed.
    let mut got = Vec::new();
    outputs_until(&f, &mut got, N / 3, Duration::from_secs(600)).await;
    let acks: Vec<u64> = f.warrens.iter().map(|w| w.outcome("ack")).collect();
    let active = usize::from(acks[1] > 0);
    assert_eq!(
        acks[1 - active],
        0,
        "both hosts handled messages at once: {acks:?}"
    );
    f.warrens[active].signal("KILL");
    f.warrens[active].wait(Duration::from_secs(10));
    let survivor = 1 - active;
    outputs_until(&f, &mut got, N, Duration::from_secs(900)).await;
    // Whatever the dead host had in flight is back and handled by now.
    eventually(Duration::from_secs(30), "work queue empty", || async {
        f.rabbit.ready(std::slice::from_ref(&f.queue)).await == [0]
    })
    .await;
    got.extend(f.rabbit.drain(&f.out).await);
    assert!(f.warrens[survivor].outcome("ack") > 0);

    // In order, no gap; the only repeat allowed is the message that was in
    // flight on the killed host, right after its first copy, same id.
    let mut next = 0;
    let mut repeats = 0;
    let mut last_id = None;
    for g in &got {
        let seq: usize = g.body_str().parse().expect("a sequence number");
        if seq == next {
            next += 1;
            last_id = g.message_id.clone();
        } else if next > 0 && seq == next - 1 && g.message_id == last_id {
            repeats += 1;
        } else {
            panic!(
                "{seq} came after {}: out of order or a gap",
                next as i64 - 1
            );
        }
    }
    assert_eq!(next, N, "not every message came out");
    assert!(repeats <= 1, "{repeats} repeats; at most the one in flight");
    eprintln!("ordered takeover: {N} messages in order, {repeats} repeat");
    assert!(f.rabbit.drain(&f.dead).await.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failing_message_is_retried_in_place_and_nothing_overtakes_it() {
    let f = Fixture::new("ordered-retry")
        .guest("sandbox")
        .handler("sandbox")
        .quorum()
        .extra("ordered = true\n[handler.retry]\nbackoff_ms = 100\n")
        .start()
        .await;
    // The sixth fails on its first two attempts.
    let bodies: Vec<String> = (0..12)
        .map(|i| match i {
            5 => "retry-twice".to_string(),
            i => format!("sleep:1 #{i}"),
        })
        .collect();
    f.rabbit
        .publish_many(
            &f.queue,
            bodies
                .iter()
                .enumerate()
                .map(|(i, b)| (Some(format!("r-{i}")), b.clone().into_bytes())),
        )
        .await;
    let got = f.rabbit.collect(&f.out, 12, Duration::from_secs(60)).await;
    let order: Vec<String> = got.iter().map(Got::body_str).collect();
    let mut expected: Vec<String> = (0..12).map(|i| format!("sleep:1 #{i}")).collect();
    expected[5] = "attempt 3".into();
    assert_eq!(order, expected);
    assert_eq!(f.w().outcome("retry"), 2);
    // In place: no wait queue was used.
    assert!(f.wait_queues().is_empty(), "{:?}", f.wait_queues());
    f.settle(12, Duration::from_secs(30)).await;
    f.assert_nothing_more().await;
}
