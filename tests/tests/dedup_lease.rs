//! The dedup lease end to end: a process killed with handlers in flight
//! leaves its leases to run out before another process runs those messages,
//! and a message held past its lease keeps it by renewal (in the shared
//! Redis under a key prefix of the test's own, and in the in-process store).
//!
//! The side effect counted is the guest's output message: the sandbox guest
//! (`sleep:N...`) publishes its body after busy-waiting N ms. "Runs" are the
//! guest invocations, read from `warren_handler_duration_seconds_count`.

use std::time::{Duration, Instant};

use redis::AsyncCommands as _;
use warren_tests::broker::Got;
use warren_tests::fixture::{Fixture, SHARED_REDIS};
use warren_tests::process::eventually;
use warren_tests::relay::Relay;
use warren_tests::tally::{assert_once_each, table};

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_mid_flight_the_other_process_runs_each_message_once_after_the_lease_runs_out() {
    const LEASE: Duration = Duration::from_millis(3000);
    const HANDLER: Duration = Duration::from_millis(1000);
    // Prefetch = consumers: everything a process holds is in flight, each
    // message in a batch of its own, all 8 at once.
    let mut f = Fixture::new("crash")
        .guest("sandbox")
        .handler("crash")
        .redis(SHARED_REDIS, "pause")
        .extra(&format!(
            "consumers = 8\nprefetch = 8\nmax_batch = 1\ntimeout_ms = 1800\n\
             [handler.dedup]\nlease_ms = {}\nwindow_s = 600\n\
             [handler.retry]\nbackoff_ms = 200\nmax_backoff_ms = 1000\n",
            LEASE.as_millis()
        ))
        .processes(2)
        .start()
        .await;
    // A leaves the fixture's processes: what settles after the kill is B's.
    let mut a = f.warrens.remove(0);
    let (r, q, out, b) = (&f.rabbit, &f.queue, &f.out, f.w());

    // 16 slow ones fill both processes' 8 slots; 48 quick ones queue behind.
    let slow: Vec<String> = (0..16)
        .map(|i| format!("sleep:{}#slow-{i}", HANDLER.as_millis()))
        .collect();
    let quick: Vec<String> = (0..48).map(|i| format!("sleep:5#quick-{i}")).collect();
    let all: Vec<String> = slow.iter().chain(&quick).cloned().collect();
    r.publish_many(
        q,
        all.iter()
            .enumerate()
            .map(|(i, b)| (Some(format!("c-{i}")), b.clone().into_bytes())),
    )
    .await;

    eventually(
        Duration::from_secs(15),
        "8 handlers running in A",
        || async { a.in_flight() == 8 },
    )
    .await;
    assert_eq!(a.outcome("ack"), 0, "A finished a message before the kill");
    a.signal("KILL");
    let killed = Instant::now();
    assert!(!a.wait(Duration::from_secs(5)).success());

    // Every output, with when it arrived.
    let mut arrivals: Vec<(Got, Duration)> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while arrivals.len() < all.len() {
        let batch = r.drain(out).await;
        let at = killed.elapsed();
        arrivals.extend(batch.into_iter().map(|g| (g, at)));
        assert!(
            Instant::now() < deadline,
            "{} of {} outputs after the kill:\n{}",
            arrivals.len(),
            all.len(),
            table(&[b])
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    f.settle(all.len() as u64, Duration::from_secs(20)).await;
    arrivals.extend(
        r.drain(out)
            .await
            .into_iter()
            .map(|g| (g, killed.elapsed())),
    );
    let got: Vec<Got> = arrivals.iter().map(|(g, _)| g.clone()).collect();
    assert_once_each(&got, &all);

    // A's eight waited for A's lease to run out (it was last renewed at most
    // a third of a lease before the kill), then ran on B. Only a lower
    // bound: how soon B's own eight came out is up to the machine.
    let t = table(&[b]);
    let late = arrivals
        .iter()
        .filter(|(g, at)| {
            g.body_str().contains("#slow-")
                && *at > LEASE * 2 / 3 + HANDLER - Duration::from_millis(500)
        })
        .count();
    assert!(
        late >= 8,
        "slow outputs late after the kill: {late}, expected at least A's 8\n{t}"
    );
    let mut slow_at: Vec<u128> = arrivals
        .iter()
        .filter(|(g, _)| g.body_str().contains("#slow-"))
        .map(|(_, at)| at.as_millis())
        .collect();
    slow_at.sort_unstable();
    eprintln!("slow outputs, ms after the kill: {slow_at:?}\n{t}");
    assert_eq!(b.outcome("ack"), all.len() as u64, "{t}");
    assert_eq!(b.runs(), all.len() as u64, "{t}");
    assert_eq!(b.outcome("dedup_hit"), 0, "A completed nothing:\n{t}");
    assert!(
        b.outcome("deferred") >= 8,
        "A's messages were not deferred:\n{t}"
    );
    for o in ["retry", "requeued", "dead_letter"] {
        assert_eq!(b.outcome(o), 0, "{o}:\n{t}");
    }
}

/// Keeps one message claimed for three leases and checks that it still runs
/// once: a duplicate that arrives two leases in must be deferred, not run.
///
/// The guest itself cannot run longer than its lease (config validation
/// wants `timeout_ms < lease_ms`, and the timeout is a wall-clock epoch
/// deadline), so what outlasts the lease here is the rest of the claim: the
/// guest runs 600 ms, then its output publish is held at the relay, unconfirmed,
/// while warren has to keep renewing the lease.
async fn lease_renewal(name: &str, redis: bool) {
    const LEASE: Duration = Duration::from_millis(1000);
    let relay = Relay::start(5672).await;
    // One message per batch: the duplicate runs beside the first, not
    // after it in the same batch.
    let mut f = Fixture::new(name)
        .guest("sandbox")
        .handler("lease")
        .warren_amqp(&relay.url())
        .extra(&format!(
            "consumers = 2\nprefetch = 2\nmax_batch = 1\ntimeout_ms = 900\n\
             [handler.dedup]\nlease_ms = {}\nwindow_s = 600\n\
             [handler.retry]\nbackoff_ms = 100\nmax_backoff_ms = 1000\n",
            LEASE.as_millis()
        ));
    if redis {
        f = f.redis(SHARED_REDIS, "pause");
    }
    let f = f.start().await;
    let (r, q, out, w) = (&f.rabbit, &f.queue, &f.out, f.w());
    let key = format!("{}:lease:long-1", f.prefix.as_deref().unwrap_or("none"));
    let mut con = if redis {
        let client = redis::Client::open(SHARED_REDIS).unwrap();
        Some(client.get_multiplexed_async_connection().await.unwrap())
    } else {
        None
    };

    let body = "sleep:600#long";
    r.publish(q, "long-1", body.as_bytes()).await;
    eventually(Duration::from_secs(15), "the handler running", || async {
        w.in_flight() == 1
    })
    .await;
    let claimed = Instant::now();
    // The guest finishes in 600 ms; its output then waits here.
    relay.hold(true);
    let owner: Option<String> = match con.as_mut() {
        Some(c) => {
            let v: Option<String> = c.get(&key).await.unwrap();
            assert!(
                v.as_deref().is_some_and(|v| v != "done"),
                "{key} holds {v:?}, not an owner token"
            );
            v
        }
        None => None,
    };

    // Two leases in, the lease would long have expired without renewal.
    tokio::time::sleep_until((claimed + LEASE * 2).into()).await;
    eventually(
        Duration::from_secs(10),
        "the guest finished, its output held",
        || async { w.in_flight() == 0 },
    )
    .await;
    if let Some(c) = con.as_mut() {
        let v: Option<String> = c.get(&key).await.unwrap();
        assert_eq!(v, owner, "{key} changed hands two leases in");
    }
    r.publish(q, "long-1", body.as_bytes()).await;
    // The duplicate reaches warren: confirmed, and no longer ready.
    let input = [q.clone()];
    eventually(
        Duration::from_secs(5),
        "the duplicate delivered",
        || async { r.ready(&input).await == [0] },
    )
    .await;

    tokio::time::sleep_until((claimed + LEASE * 3 + LEASE / 4).into()).await;
    assert_eq!(
        w.runs(),
        1,
        "the duplicate ran while the first was still claimed"
    );
    if let Some(c) = con.as_mut() {
        let v: Option<String> = c.get(&key).await.unwrap();
        assert_eq!(v, owner, "{key} changed hands three leases in");
        let ttl: i64 = c.pttl(&key).await.unwrap();
        assert!(ttl > 0 && ttl <= LEASE.as_millis() as i64, "pttl {ttl}");
    }
    relay.hold(false);

    let got = r.collect(out, 1, Duration::from_secs(10)).await;
    let held_for = claimed.elapsed();
    assert!(held_for >= LEASE * 3, "claimed for only {held_for:?}");
    assert_eq!(got[0].body_str(), body);
    f.settle(2, Duration::from_secs(15)).await;
    let t = table(&[w]);
    assert!(r.drain(out).await.is_empty(), "a second output:\n{t}");
    assert_eq!(w.outcome("ack"), 1, "{t}");
    assert_eq!(w.outcome("deferred"), 1, "{t}");
    assert_eq!(w.outcome("dedup_hit"), 1, "{t}");
    assert_eq!(w.outcome("requeued"), 0, "{t}");
    assert_eq!(w.runs(), 1, "{t}");
    let logs = w.logs();
    assert!(!logs.contains("lease lost"), "{logs}");
    assert!(!logs.contains("cannot renew"), "{logs}");
    if let Some(c) = con.as_mut() {
        let v: Option<String> = c.get(&key).await.unwrap();
        assert_eq!(v.as_deref(), Some("done"));
        // One key for the message: no counter of its own beside it.
        let fence: Option<String> = c.get(format!("{key}:fence")).await.unwrap();
        assert_eq!(fence, None);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn lease_is_renewed_while_a_message_is_held_three_leases_and_it_runs_once() {
    lease_renewal("lease-redis", true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn in_process_store_renews_the_lease_of_a_message_held_three_leases() {
    lease_renewal("lease-mem", false).await;
}
