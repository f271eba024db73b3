//! The dedup protocol against duplicates: every message published twice to
//! one or two `warren run` processes (keyed by message id or by the body's
//! SHA-256, in the shared Redis under a key prefix of the test's own or in
//! the in-process store), and two copies at the same moment on two
//! processes.
//!
//! The side effect counted is the guest's output message: the echo guest
//! republishes each input body, the sandbox guest (`sleep:N...`) publishes
//! its body after busy-waiting N ms. "Runs" are the guest invocations, read
//! from `warren_handler_duration_seconds_count`.

use std::time::Duration;

use warren_tests::fixture::{Fixture, SHARED_REDIS};
use warren_tests::process::{Warren, eventually};
use warren_tests::tally::{assert_once_each, sum, table};

#[derive(Clone, Copy, PartialEq)]
enum Key {
    MessageId,
    BodySha256,
}

/// Publishes `n` messages twice each to `processes` warrens with 8 consumers
/// each, and checks that every key's output came out exactly once, the guest
/// ran once per key, and the other copy was acked as a duplicate.
///
/// Even keys have their two copies back to back, so both are in flight at
/// once (the second finds the lease held and is deferred); odd keys have
/// their second copy after all the first copies (it finds the key done).
async fn published_twice(name: &str, n: usize, processes: usize, key: Key, redis: bool) {
    let key_name = match key {
        Key::MessageId => "message-id",
        Key::BodySha256 => "body-sha256",
    };
    // The lease outlasts any stall of a loaded machine by far, so no lease
    // expires under a running handler; a deferred copy waits about a lease.
    let mut f = Fixture::new(name)
        .handler("dd")
        .extra(&format!(
            "consumers = 8\nprefetch = 32\ntimeout_ms = 1000\n\
             [handler.dedup]\nkey = \"{key_name}\"\nlease_ms = 3000\nwindow_s = 600\n\
             [handler.retry]\nbackoff_ms = 100\nmax_backoff_ms = 1000\n"
        ))
        .processes(processes);
    if redis {
        f = f.redis(SHARED_REDIS, "pause");
    }
    let f = f.start().await;
    let (r, q, out) = (&f.rabbit, &f.queue, &f.out);

    let bodies: Vec<String> = (0..n)
        .map(|i| match key {
            Key::MessageId => format!("m-{i:05}"),
            Key::BodySha256 => format!("body-{i:05}"),
        })
        .collect();
    let copy = |b: &String| {
        let id = (key == Key::MessageId).then(|| b.clone());
        (id, b.clone().into_bytes())
    };
    let first = bodies.iter().enumerate().flat_map(|(i, b)| {
        let again = (i % 2 == 0).then(|| copy(b));
        std::iter::once(copy(b)).chain(again)
    });
    let late = bodies.iter().skip(1).step_by(2).map(copy);
    r.publish_many(q, first.chain(late)).await;

    let mut got = r.collect(out, n, Duration::from_secs(180)).await;
    f.settle(2 * n as u64, Duration::from_secs(60)).await;
    // Every output was confirmed before its input was counted: anything
    // extra is in the queue now.
    got.extend(r.drain(out).await);
    assert_once_each(&got, &bodies);
    match key {
        // Output ids derive from the key, so a second run would repeat them.
        Key::MessageId => {
            for g in &got {
                let body = g.body_str();
                assert_eq!(
                    g.message_id.as_deref(),
                    Some(warren::pipeline::output_message_id("dd", &body, 0).as_str()),
                    "{body}"
                );
            }
        }
        // No message-id at all: the output ids still differ per body.
        Key::BodySha256 => {
            let ids: std::collections::BTreeSet<_> = got.iter().map(|g| &g.message_id).collect();
            assert_eq!(ids.len(), n, "output ids are not one per body");
        }
    }

    let refs: Vec<&Warren> = f.warrens.iter().collect();
    let t = table(&refs);
    assert_eq!(sum(&refs, |w| w.outcome("ack")), n as u64, "{t}");
    assert_eq!(sum(&refs, |w| w.outcome("dedup_hit")), n as u64, "{t}");
    assert_eq!(
        sum(&refs, Warren::runs),
        n as u64,
        "the guest ran more than once per key:\n{t}"
    );
    for o in ["retry", "requeued", "dead_letter"] {
        assert_eq!(sum(&refs, |w| w.outcome(o)), 0, "{o}:\n{t}");
    }
    // Both duplicate paths were taken: deferred while the lease was held,
    // and acked at once as done (a deferred copy counts once per deferral,
    // so fewer deferrals than hits means some hits were direct).
    let deferred = sum(&refs, |w| w.outcome("deferred"));
    assert!(deferred > 0, "no copy found its lease held:\n{t}");
    assert!(deferred < n as u64, "no copy found its key done:\n{t}");
    if processes > 1 {
        for w in &refs {
            assert!(
                w.outcome("ack") > n as u64 / 10,
                "the work was not shared:\n{t}"
            );
        }
    }
    eprintln!("{name}: {n} keys, 2 copies each:\n{t}");
}

#[tokio::test(flavor = "multi_thread")]
async fn ten_thousand_message_ids_published_twice_to_two_processes_take_effect_once() {
    published_twice("twice-id", 10_000, 2, Key::MessageId, true).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn ten_thousand_bodies_without_message_id_published_twice_take_effect_once_by_sha256() {
    published_twice("twice-sha", 10_000, 2, Key::BodySha256, true).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn in_process_store_runs_messages_published_twice_to_one_process_once() {
    published_twice("twice-mem", 10_000, 1, Key::MessageId, false).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_duplicates_on_two_processes_one_runs_the_other_is_deferred_then_acked() {
    // The deferred copy waits about a lease: long enough for the test to
    // find it in its wait queue on a loaded machine.
    const LEASE_MS: u64 = 8000;
    // One delivery in flight per process: the second copy cannot go to the
    // process that holds the first. One attempt only: a duplicate sent down
    // the failure-retry path instead of deferred would be dead-lettered.
    let f = Fixture::new("concurrent")
        .guest("sandbox")
        .handler("pair")
        .redis(SHARED_REDIS, "pause")
        .extra(&format!(
            "consumers = 1\nprefetch = 1\ntimeout_ms = 3000\n\
             [handler.dedup]\nlease_ms = {LEASE_MS}\nwindow_s = 600\n\
             [handler.retry]\nmax_attempts = 1\nbackoff_ms = 100\nmax_backoff_ms = 1000\n"
        ))
        .processes(2)
        .start()
        .await;
    let (r, q, out) = (&f.rabbit, &f.queue, &f.out);
    let (a, b) = (&f.warrens[0], &f.warrens[1]);

    let body = "sleep:2500#pair".to_string();
    r.publish_many(
        q,
        [
            (Some("pair-1".to_string()), body.clone().into_bytes()),
            (Some("pair-1".to_string()), body.clone().into_bytes()),
        ],
    )
    .await;

    // The loser is deferred while the winner is still inside its handler.
    eventually(Duration::from_secs(5), "one copy deferred", || async {
        a.outcome("deferred") + b.outcome("deferred") == 1
    })
    .await;
    let (winner, loser) = if a.outcome("deferred") == 1 {
        (b, a)
    } else {
        (a, b)
    };
    assert_eq!(winner.in_flight(), 1, "{}", table(&[a, b]));
    assert_eq!(loser.in_flight(), 0, "the loser ran:\n{}", table(&[a, b]));
    assert_eq!(a.outcome("ack") + b.outcome("ack"), 0);
    assert!(
        r.drain(out).await.is_empty(),
        "an output before the winner finished"
    );

    // It waits on the broker, in a wait queue for about the lease's
    // remaining time, still on attempt 1.
    let waiting = f.wait_queues();
    assert_eq!(waiting.len(), 1, "{waiting:?}");
    let wait = &waiting[0];
    assert_eq!(r.ready(&waiting).await, [1], "{wait}");
    let delay_ms: u64 = wait
        .strip_prefix(&format!("{q}.retry."))
        .and_then(|s| s.strip_suffix("ms"))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not a wait queue name: {wait}"));
    assert!(
        (LEASE_MS / 2..=LEASE_MS).contains(&delay_ms),
        "deferred for {delay_ms} ms with a {LEASE_MS} ms lease"
    );
    let peeked = r.peek(wait).await;
    assert_eq!(peeked.message_id.as_deref(), Some("pair-1"));
    assert_eq!(peeked.body_str(), body);
    assert_eq!(
        peeked.header("x-warren-attempt").as_deref(),
        Some("1"),
        "a deferral must not count as an attempt"
    );

    let got = r.collect(out, 1, Duration::from_secs(10)).await;
    assert_eq!(got[0].body_str(), body);
    f.settle(2, Duration::from_secs(15)).await;
    let t = table(&[a, b]);
    assert!(r.drain(out).await.is_empty(), "a second output:\n{t}");
    assert_eq!(winner.outcome("ack"), 1, "{t}");
    assert_eq!(loser.outcome("ack"), 0, "{t}");
    assert_eq!(loser.outcome("deferred"), 1, "{t}");
    assert_eq!(winner.outcome("deferred"), 0, "{t}");
    assert_eq!(a.outcome("dedup_hit") + b.outcome("dedup_hit"), 1, "{t}");
    assert_eq!(a.runs() + b.runs(), 1, "{t}");
    for w in [a, b] {
        let logs = w.logs();
        assert!(!logs.contains("retry scheduled"), "{logs}");
        assert!(!logs.contains("dead-lettered"), "{logs}");
    }
}
