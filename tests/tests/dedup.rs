//! Issue 4, the dedup protocol end to end: `warren run` processes against the
//! real RabbitMQ and a real Redis (the shared one on 6379 under a key prefix
//! of the test's own, or a private `redis-server` for the outage tests), and
//! the in-process store.
//!
//! The side effect counted everywhere is the guest's output message: the
//! echo guest republishes each input body, the sandbox guest (`sleep:N...`)
//! publishes its body after busy-waiting N ms. "Runs" are the guest
//! invocations, read from `warren_handler_duration_seconds_count`.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use lapin::options::{BasicGetOptions, BasicNackOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties};
use redis::AsyncCommands as _;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::sync::watch;
use warren_tests::broker::{AMQP_URL, Got, Rabbit, rabbitmqctl};
use warren_tests::guest;
use warren_tests::process::{Warren, config, eventually, free_port, unique};
use warren_tests::redis_server::RedisServer;

const SHARED_REDIS: &str = "redis://127.0.0.1:6379/0";

/// Where a test's warren keeps its dedup keys.
#[derive(Clone, Copy)]
enum Store<'a> {
    /// A `[redis]` section.
    Redis {
        url: &'a str,
        prefix: &'a str,
        on_unavailable: &'a str,
    },
    /// No `[redis]` section: the in-process store.
    InProcess,
}

/// A one-handler config (see [`config`]) with the store's section, which
/// must come before `[[handler]]`, and `amqp` as the broker URL.
fn config_with(
    module: &str,
    handler: &str,
    queue: &str,
    admin: u16,
    store: Store<'_>,
    amqp: &str,
    extra: &str,
) -> String {
    let text = config(&guest(module), handler, queue, Some(admin), extra).replace(AMQP_URL, amqp);
    match store {
        Store::Redis {
            url,
            prefix,
            on_unavailable,
        } => text.replacen(
            "[[handler]]",
            &format!(
                "[redis]\nurl = \"{url}\"\nprefix = \"{prefix}\"\non_unavailable = \"{on_unavailable}\"\n\n[[handler]]"
            ),
            1,
        ),
        Store::InProcess => text,
    }
}

/// Starts `warren run` with an admin port; does not wait for it.
fn start(
    module: &str,
    handler: &str,
    queue: &str,
    store: Store<'_>,
    amqp: &str,
    extra: &str,
) -> Warren {
    let admin = free_port();
    Warren::start(
        &config_with(module, handler, queue, admin, store, amqp, extra),
        Some(admin),
    )
}

fn outcome(w: &Warren, outcome: &str) -> u64 {
    w.metric("warren_messages_total", &[("outcome", outcome)]) as u64
}

/// Guest invocations so far (each run is observed in the duration
/// histogram, whatever its outcome).
fn runs(w: &Warren) -> u64 {
    w.metric("warren_handler_duration_seconds_count", &[]) as u64
}

fn in_flight(w: &Warren) -> u64 {
    w.metric("warren_in_flight", &[]) as u64
}

fn bypassed(w: &Warren) -> u64 {
    w.metric("warren_dedup_bypassed_total", &[]) as u64
}

fn sum(ws: &[&Warren], f: impl Fn(&Warren) -> u64) -> u64 {
    ws.iter().map(|w| f(w)).sum()
}

/// Every process's outcome counters, for failure messages.
fn table(ws: &[&Warren]) -> String {
    ws.iter()
        .map(|w| {
            format!(
                "pid {}: ack={} dedup_hit={} deferred={} retry={} requeued={} dead_letter={} runs={} bypassed={}",
                w.pid(),
                outcome(w, "ack"),
                outcome(w, "dedup_hit"),
                outcome(w, "deferred"),
                outcome(w, "retry"),
                outcome(w, "requeued"),
                outcome(w, "dead_letter"),
                runs(w),
                bypassed(w)
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Waits until the processes settled `n` deliveries for good (acked after a
/// run, or acked as a duplicate), then until the input queue and its wait
/// queues are empty.
async fn settle(q: &str, ws: &[&Warren], n: u64, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let done = sum(ws, |w| outcome(w, "ack") + outcome(w, "dedup_hit"));
        if done == n {
            break;
        }
        assert!(
            done < n && Instant::now() < deadline,
            "expected {n} deliveries settled, have {done} after {timeout:?}:\n{}",
            table(ws)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut queues = wait_queues(q);
    queues.push(q.to_string());
    eventually(
        Duration::from_secs(20),
        "input and wait queues empty",
        || async { ready(&queues).await.iter().all(|n| *n == 0) },
    )
    .await;
}

/// The wait queues warren declared for `q`.
fn wait_queues(q: &str) -> Vec<String> {
    let prefix = format!("{q}.retry.");
    rabbitmqctl(&["list_queues", "name"])
        .lines()
        .filter(|name| name.starts_with(&prefix))
        .map(str::to_string)
        .collect()
}

/// Messages ready in each queue, asked of the queue itself (a passive
/// declare): `rabbitmqctl list_queues` counts can lag by the broker's
/// statistics interval.
async fn ready(queues: &[String]) -> Vec<u32> {
    let conn = Connection::connect(AMQP_URL, ConnectionProperties::default())
        .await
        .unwrap();
    let ch = conn.create_channel().await.unwrap();
    let mut counts = Vec::new();
    for q in queues {
        let opts = QueueDeclareOptions {
            passive: true,
            ..QueueDeclareOptions::default()
        };
        let declared = ch
            .queue_declare(q.as_str().into(), opts, FieldTable::default())
            .await
            .unwrap_or_else(|e| panic!("queue {q}: {e}"));
        counts.push(declared.message_count());
    }
    let _ = conn.close(200, "counted".into()).await;
    counts
}

/// How many outputs carry each body.
fn count_bodies(got: &[Got]) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for g in got {
        *counts.entry(g.body_str()).or_insert(0) += 1;
    }
    counts
}

/// Asserts that `got` holds exactly one output per expected body.
fn assert_once_each(got: &[Got], expected: &[String]) {
    let counts = count_bodies(got);
    let wrong: Vec<(&String, usize)> = expected
        .iter()
        .map(|b| (b, counts.get(b).copied().unwrap_or(0)))
        .filter(|(_, n)| *n != 1)
        .take(20)
        .collect();
    assert!(
        wrong.is_empty(),
        "{} outputs for {} keys; keys not produced exactly once (first 20): {wrong:?}",
        got.len(),
        expected.len()
    );
    assert_eq!(
        got.len(),
        expected.len(),
        "outputs that match no input: {:?}",
        counts
            .keys()
            .filter(|b| !expected.contains(b))
            .take(20)
            .collect::<Vec<_>>()
    );
}

/// Deletes the test's queues: input, output, dead letters and wait queues.
async fn cleanup(r: &Rabbit, q: &str, out: &str) {
    let mut names = wait_queues(q);
    names.extend([q.to_string(), out.to_string(), format!("{q}.dead")]);
    r.delete(&names.iter().map(String::as_str).collect::<Vec<_>>())
        .await;
}

async fn redis_conn(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap_or_else(|e| panic!("cannot connect to redis at {url}: {e}"))
}

/// Drops every key under `prefix` (the shared Redis outlives the test).
async fn forget(url: &str, prefix: &str) {
    let mut con = redis_conn(url).await;
    let mut cursor = 0u64;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("{prefix}:*"))
            .arg("COUNT")
            .arg(1000)
            .query_async(&mut con)
            .await
            .unwrap();
        if !keys.is_empty() {
            let _: () = con.unlink(keys).await.unwrap();
        }
        if next == 0 {
            return;
        }
        cursor = next;
    }
}

// ---------------------------------------------------------------------------
// Every message published twice.

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
    let q = unique(name);
    let out = format!("{q}.out");
    let prefix = unique("dedup");
    let r = Rabbit::connect().await;
    r.declare(&out).await;
    let store = if redis {
        Store::Redis {
            url: SHARED_REDIS,
            prefix: &prefix,
            on_unavailable: "pause",
        }
    } else {
        Store::InProcess
    };
    let key_name = match key {
        Key::MessageId => "message-id",
        Key::BodySha256 => "body-sha256",
    };
    // The lease outlasts any stall of a loaded machine by far, so no lease
    // expires under a running handler; a deferred copy waits about a lease.
    let extra = format!(
        "consumers = 8\nprefetch = 32\ntimeout_ms = 1000\n\
         [handler.dedup]\nkey = \"{key_name}\"\nlease_ms = 3000\nwindow_s = 600\n\
         [handler.retry]\nbackoff_ms = 100\nmax_backoff_ms = 1000\n\
         [handler.config]\nout_routing_key = \"{out}\"\n"
    );
    let mut ws: Vec<Warren> = (0..processes)
        .map(|_| start("echo", "dd", &q, store, AMQP_URL, &extra))
        .collect();
    for w in &mut ws {
        w.wait_log("consuming", Duration::from_secs(30));
    }

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
    r.publish_many(&q, first.chain(late)).await;

    let mut got = r.collect(&out, n, Duration::from_secs(180)).await;
    let refs: Vec<&Warren> = ws.iter().collect();
    settle(&q, &refs, 2 * n as u64, Duration::from_secs(60)).await;
    // Every output was confirmed before its input was counted: anything
    // extra is in the queue now.
    got.extend(r.drain(&out).await);
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

    let t = table(&refs);
    assert_eq!(sum(&refs, |w| outcome(w, "ack")), n as u64, "{t}");
    assert_eq!(sum(&refs, |w| outcome(w, "dedup_hit")), n as u64, "{t}");
    assert_eq!(
        sum(&refs, runs),
        n as u64,
        "the guest ran more than once per key:\n{t}"
    );
    for o in ["retry", "requeued", "dead_letter"] {
        assert_eq!(sum(&refs, |w| outcome(w, o)), 0, "{o}:\n{t}");
    }
    // Both duplicate paths were taken: deferred while the lease was held,
    // and acked at once as done (a deferred copy counts once per deferral,
    // so fewer deferrals than hits means some hits were direct).
    let deferred = sum(&refs, |w| outcome(w, "deferred"));
    assert!(deferred > 0, "no copy found its lease held:\n{t}");
    assert!(deferred < n as u64, "no copy found its key done:\n{t}");
    if processes > 1 {
        for w in &refs {
            assert!(
                outcome(w, "ack") > n as u64 / 10,
                "the work was not shared:\n{t}"
            );
        }
    }
    eprintln!("{name}: {n} keys, 2 copies each:\n{t}");
    drop(ws);
    cleanup(&r, &q, &out).await;
    if redis {
        forget(SHARED_REDIS, &prefix).await;
    }
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

// ---------------------------------------------------------------------------
// Two copies at the same moment on two processes.

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_duplicates_on_two_processes_one_runs_the_other_is_deferred_then_acked() {
    // The deferred copy waits about a lease: long enough for the test to
    // find it in its wait queue on a loaded machine.
    const LEASE_MS: u64 = 8000;
    let q = unique("concurrent");
    let out = format!("{q}.out");
    let prefix = unique("dedup");
    let r = Rabbit::connect().await;
    r.declare(&out).await;
    let store = Store::Redis {
        url: SHARED_REDIS,
        prefix: &prefix,
        on_unavailable: "pause",
    };
    // One delivery in flight per process: the second copy cannot go to the
    // process that holds the first. One attempt only: a duplicate sent down
    // the failure-retry path instead of deferred would be dead-lettered.
    let extra = format!(
        "consumers = 1\nprefetch = 1\ntimeout_ms = 3000\n\
         [handler.dedup]\nlease_ms = {LEASE_MS}\nwindow_s = 600\n\
         [handler.retry]\nmax_attempts = 1\nbackoff_ms = 100\nmax_backoff_ms = 1000\n\
         [handler.config]\nout_routing_key = \"{out}\"\n"
    );
    let mut a = start("sandbox", "pair", &q, store, AMQP_URL, &extra);
    let mut b = start("sandbox", "pair", &q, store, AMQP_URL, &extra);
    a.wait_log("consuming", Duration::from_secs(30));
    b.wait_log("consuming", Duration::from_secs(30));

    let body = "sleep:2500#pair".to_string();
    r.publish_many(
        &q,
        [
            (Some("pair-1".to_string()), body.clone().into_bytes()),
            (Some("pair-1".to_string()), body.clone().into_bytes()),
        ],
    )
    .await;

    // The loser is deferred while the winner is still inside its handler.
    eventually(Duration::from_secs(5), "one copy deferred", || async {
        outcome(&a, "deferred") + outcome(&b, "deferred") == 1
    })
    .await;
    let (winner, loser) = if outcome(&a, "deferred") == 1 {
        (&b, &a)
    } else {
        (&a, &b)
    };
    assert_eq!(in_flight(winner), 1, "{}", table(&[&a, &b]));
    assert_eq!(in_flight(loser), 0, "the loser ran:\n{}", table(&[&a, &b]));
    assert_eq!(outcome(&a, "ack") + outcome(&b, "ack"), 0);
    assert!(
        r.drain(&out).await.is_empty(),
        "an output before the winner finished"
    );

    // It waits on the broker, in a wait queue for about the lease's
    // remaining time, still on attempt 1.
    let waiting = wait_queues(&q);
    assert_eq!(waiting.len(), 1, "{waiting:?}");
    let wait = &waiting[0];
    assert_eq!(ready(&waiting).await, [1], "{wait}");
    let delay_ms: u64 = wait
        .strip_prefix(&format!("{q}.retry."))
        .and_then(|s| s.strip_suffix("ms"))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not a wait queue name: {wait}"));
    assert!(
        (LEASE_MS / 2..=LEASE_MS).contains(&delay_ms),
        "deferred for {delay_ms} ms with a {LEASE_MS} ms lease"
    );
    let peeked = peek(wait).await;
    assert_eq!(peeked.message_id.as_deref(), Some("pair-1"));
    assert_eq!(peeked.body_str(), body);
    assert_eq!(
        peeked.header("x-warren-attempt").as_deref(),
        Some("1"),
        "a deferral must not count as an attempt"
    );

    let got = r.collect(&out, 1, Duration::from_secs(10)).await;
    assert_eq!(got[0].body_str(), body);
    settle(&q, &[&a, &b], 2, Duration::from_secs(15)).await;
    let t = table(&[&a, &b]);
    assert!(r.drain(&out).await.is_empty(), "a second output:\n{t}");
    assert_eq!(outcome(winner, "ack"), 1, "{t}");
    assert_eq!(outcome(loser, "ack"), 0, "{t}");
    assert_eq!(outcome(loser, "deferred"), 1, "{t}");
    assert_eq!(outcome(winner, "deferred"), 0, "{t}");
    assert_eq!(
        outcome(&a, "dedup_hit") + outcome(&b, "dedup_hit"),
        1,
        "{t}"
    );
    assert_eq!(runs(&a) + runs(&b), 1, "{t}");
    for w in [&a, &b] {
        let logs = w.logs();
        assert!(!logs.contains("retry scheduled"), "{logs}");
        assert!(!logs.contains("dead-lettered"), "{logs}");
    }
    drop((a, b));
    cleanup(&r, &q, &out).await;
    forget(SHARED_REDIS, &prefix).await;
}

/// Reads the message at the head of `queue` and puts it back (nack with
/// requeue keeps its place and its expiry).
async fn peek(queue: &str) -> Got {
    let conn = Connection::connect(AMQP_URL, ConnectionProperties::default())
        .await
        .unwrap();
    let ch = conn.create_channel().await.unwrap();
    let m = ch
        .basic_get(queue.into(), BasicGetOptions::default())
        .await
        .unwrap()
        .unwrap_or_else(|| panic!("{queue} is empty"));
    let got = Got::from_delivery(&m.delivery);
    m.nack(BasicNackOptions {
        multiple: false,
        requeue: true,
    })
    .await
    .unwrap();
    let _ = conn.close(200, "peeked".into()).await;
    got
}

// ---------------------------------------------------------------------------
// kill -9 with handlers in flight.

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_mid_flight_the_other_process_runs_each_message_once_within_lease_plus_retry_delay()
{
    const LEASE: Duration = Duration::from_millis(3000);
    const HANDLER: Duration = Duration::from_millis(1000);
    // A deferral waits in a wait-queue tier near the lease's remaining time
    // (rounding adds at most a quarter of a tier step, 250 ms here) or, when
    // it came back a little early, the 200 ms backoff floor once more.
    const RETRY_DELAY: Duration = Duration::from_millis(500);
    // Broker round trips, the test's 50 ms polling, a machine shared with
    // other tests.
    const SLACK: Duration = Duration::from_millis(1000);
    let q = unique("crash");
    let out = format!("{q}.out");
    let prefix = unique("dedup");
    let r = Rabbit::connect().await;
    r.declare(&out).await;
    let store = Store::Redis {
        url: SHARED_REDIS,
        prefix: &prefix,
        on_unavailable: "pause",
    };
    // Prefetch = consumers: everything a process holds is in flight, each
    // message in a batch of its own, all 8 at once.
    let extra = format!(
        "consumers = 8\nprefetch = 8\nmax_batch = 1\ntimeout_ms = 1800\n\
         [handler.dedup]\nlease_ms = {}\nwindow_s = 600\n\
         [handler.retry]\nbackoff_ms = 200\nmax_backoff_ms = 1000\n\
         [handler.config]\nout_routing_key = \"{out}\"\n",
        LEASE.as_millis()
    );
    let mut a = start("sandbox", "crash", &q, store, AMQP_URL, &extra);
    let mut b = start("sandbox", "crash", &q, store, AMQP_URL, &extra);
    a.wait_log("consuming", Duration::from_secs(30));
    b.wait_log("consuming", Duration::from_secs(30));

    // 16 slow ones fill both processes' 8 slots; 48 quick ones queue behind.
    let slow: Vec<String> = (0..16)
        .map(|i| format!("sleep:{}#slow-{i}", HANDLER.as_millis()))
        .collect();
    let quick: Vec<String> = (0..48).map(|i| format!("sleep:5#quick-{i}")).collect();
    let all: Vec<String> = slow.iter().chain(&quick).cloned().collect();
    r.publish_many(
        &q,
        all.iter()
            .enumerate()
            .map(|(i, b)| (Some(format!("c-{i}")), b.clone().into_bytes())),
    )
    .await;

    eventually(
        Duration::from_secs(15),
        "8 handlers running in A",
        || async { in_flight(&a) == 8 },
    )
    .await;
    assert_eq!(
        outcome(&a, "ack"),
        0,
        "A finished a message before the kill"
    );
    a.signal("KILL");
    let killed = Instant::now();
    assert!(!a.wait(Duration::from_secs(5)).success());

    // Every output, with when it arrived.
    let mut arrivals: Vec<(Got, Duration)> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while arrivals.len() < all.len() {
        let batch = r.drain(&out).await;
        let at = killed.elapsed();
        arrivals.extend(batch.into_iter().map(|g| (g, at)));
        assert!(
            Instant::now() < deadline,
            "{} of {} outputs after the kill:\n{}",
            arrivals.len(),
            all.len(),
            table(&[&b])
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    settle(&q, &[&b], all.len() as u64, Duration::from_secs(20)).await;
    arrivals.extend(
        r.drain(&out)
            .await
            .into_iter()
            .map(|g| (g, killed.elapsed())),
    );
    let got: Vec<Got> = arrivals.iter().map(|(g, _)| g.clone()).collect();
    assert_once_each(&got, &all);

    // A's eight waited for A's lease to run out (it was last renewed at most
    // a third of a lease before the kill), then ran on B.
    let t = table(&[&b]);
    let late = arrivals
        .iter()
        .filter(|(g, at)| {
            g.body_str().contains("#slow-")
                && *at > LEASE * 2 / 3 + HANDLER - Duration::from_millis(500)
        })
        .count();
    assert_eq!(
        late, 8,
        "slow outputs late after the kill: {late}, expected A's 8\n{t}"
    );
    let mut slow_at: Vec<u128> = arrivals
        .iter()
        .filter(|(g, _)| g.body_str().contains("#slow-"))
        .map(|(_, at)| at.as_millis())
        .collect();
    slow_at.sort_unstable();
    eprintln!("slow outputs, ms after the kill: {slow_at:?}\n{t}");
    for (g, at) in &arrivals {
        let waited = at.saturating_sub(HANDLER);
        assert!(
            waited <= LEASE + RETRY_DELAY + SLACK,
            "{} waited {waited:?} after the kill, more than the lease {LEASE:?} + retry delay {RETRY_DELAY:?} (+ {SLACK:?})",
            g.body_str()
        );
    }
    assert_eq!(outcome(&b, "ack"), all.len() as u64, "{t}");
    assert_eq!(runs(&b), all.len() as u64, "{t}");
    assert_eq!(outcome(&b, "dedup_hit"), 0, "A completed nothing:\n{t}");
    assert!(
        outcome(&b, "deferred") >= 8,
        "A's messages were not deferred:\n{t}"
    );
    for o in ["retry", "requeued", "dead_letter"] {
        assert_eq!(outcome(&b, o), 0, "{o}:\n{t}");
    }
    drop(b);
    cleanup(&r, &q, &out).await;
    forget(SHARED_REDIS, &prefix).await;
}

// ---------------------------------------------------------------------------
// Lease renewal.

/// A TCP relay in front of RabbitMQ whose client-to-broker direction the
/// test can hold: what warren sends (output publishes, acks) waits, what the
/// broker sends (deliveries) still arrives.
struct Relay {
    port: u16,
    hold: watch::Sender<bool>,
}

impl Relay {
    async fn start(upstream: u16) -> Relay {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (hold, held) = watch::channel(false);
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let mut held = held.clone();
                tokio::spawn(async move {
                    let Ok(server) = tokio::net::TcpStream::connect(("127.0.0.1", upstream)).await
                    else {
                        return;
                    };
                    let (mut from_client, mut to_client) = client.into_split();
                    let (mut from_server, mut to_server) = server.into_split();
                    let up = async {
                        let mut buf = vec![0u8; 64 << 10];
                        loop {
                            let n = from_client.read(&mut buf).await?;
                            if n == 0 {
                                return Ok::<_, std::io::Error>(());
                            }
                            let _ = held.wait_for(|h| !*h).await;
                            to_server.write_all(&buf[..n]).await?;
                        }
                    };
                    let down = tokio::io::copy(&mut from_server, &mut to_client);
                    tokio::select! {
                        _ = up => {}
                        _ = down => {}
                    }
                });
            }
        });
        Relay { port, hold }
    }

    fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    fn hold(&self, on: bool) {
        self.hold.send_replace(on);
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
    let q = unique(name);
    let out = format!("{q}.out");
    let prefix = unique("dedup");
    let r = Rabbit::connect().await;
    r.declare(&out).await;
    let relay = Relay::start(5672).await;
    let store = if redis {
        Store::Redis {
            url: SHARED_REDIS,
            prefix: &prefix,
            on_unavailable: "pause",
        }
    } else {
        Store::InProcess
    };
    // One message per batch: the duplicate runs beside the first, not
    // after it in the same batch.
    let extra = format!(
        "consumers = 2\nprefetch = 2\nmax_batch = 1\ntimeout_ms = 900\n\
         [handler.dedup]\nlease_ms = {}\nwindow_s = 600\n\
         [handler.retry]\nbackoff_ms = 100\nmax_backoff_ms = 1000\n\
         [handler.config]\nout_routing_key = \"{out}\"\n",
        LEASE.as_millis()
    );
    let mut w = start("sandbox", "lease", &q, store, &relay.url(), &extra);
    w.wait_log("consuming", Duration::from_secs(30));
    let key = format!("{prefix}:lease:long-1");
    let mut con = if redis {
        Some(redis_conn(SHARED_REDIS).await)
    } else {
        None
    };

    let body = "sleep:600#long";
    r.publish(&q, "long-1", body.as_bytes()).await;
    eventually(Duration::from_secs(15), "the handler running", || async {
        in_flight(&w) == 1
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
    assert_eq!(in_flight(&w), 0, "the guest should have finished");
    if let Some(c) = con.as_mut() {
        let v: Option<String> = c.get(&key).await.unwrap();
        assert_eq!(v, owner, "{key} changed hands two leases in");
    }
    r.publish(&q, "long-1", body.as_bytes()).await;
    // The duplicate reaches warren: confirmed, and no longer ready.
    let input = [q.clone()];
    eventually(
        Duration::from_secs(5),
        "the duplicate delivered",
        || async { ready(&input).await == [0] },
    )
    .await;

    tokio::time::sleep_until((claimed + LEASE * 3 + LEASE / 4).into()).await;
    assert_eq!(
        runs(&w),
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

    let got = r.collect(&out, 1, Duration::from_secs(10)).await;
    let held_for = claimed.elapsed();
    assert!(held_for >= LEASE * 3, "claimed for only {held_for:?}");
    assert_eq!(got[0].body_str(), body);
    settle(&q, &[&w], 2, Duration::from_secs(15)).await;
    let t = table(&[&w]);
    assert!(r.drain(&out).await.is_empty(), "a second output:\n{t}");
    assert_eq!(outcome(&w, "ack"), 1, "{t}");
    assert_eq!(outcome(&w, "deferred"), 1, "{t}");
    assert_eq!(outcome(&w, "dedup_hit"), 1, "{t}");
    assert_eq!(outcome(&w, "requeued"), 0, "{t}");
    assert_eq!(runs(&w), 1, "{t}");
    let logs = w.logs();
    assert!(!logs.contains("lease lost"), "{logs}");
    assert!(!logs.contains("cannot renew"), "{logs}");
    if let Some(c) = con.as_mut() {
        let v: Option<String> = c.get(&key).await.unwrap();
        assert_eq!(v.as_deref(), Some("done"));
        // One claim ever: the fencing counter never moved past 1.
        let fence: Option<String> = c.get(format!("{key}:fence")).await.unwrap();
        assert_eq!(fence.as_deref(), Some("1"));
    }
    drop(w);
    cleanup(&r, &q, &out).await;
    if redis {
        forget(SHARED_REDIS, &prefix).await;
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

// ---------------------------------------------------------------------------
// Redis outages, on a private redis-server.

#[tokio::test(flavor = "multi_thread")]
async fn redis_down_10s_with_pause_handles_nothing_without_dedup_then_everything_once() {
    const OUTAGE: Duration = Duration::from_secs(10);
    let mut redis = RedisServer::start();
    let url = redis.url();
    let q = unique("pause");
    let out = format!("{q}.out");
    let prefix = unique("dedup");
    let r = Rabbit::connect().await;
    r.declare(&out).await;
    let store = Store::Redis {
        url: &url,
        prefix: &prefix,
        on_unavailable: "pause",
    };
    let extra = format!(
        "consumers = 8\nprefetch = 16\ntimeout_ms = 500\n\
         [handler.dedup]\nlease_ms = 1000\nwindow_s = 600\n\
         [handler.retry]\nbackoff_ms = 100\nmax_backoff_ms = 1000\n\
         [handler.config]\nout_routing_key = \"{out}\"\n"
    );
    let mut w = start("echo", "paused", &q, store, AMQP_URL, &extra);
    w.wait_log("consuming", Duration::from_secs(30));

    let before: Vec<String> = (0..100).map(|i| format!("before-{i}")).collect();
    r.publish_many(
        &q,
        before
            .iter()
            .map(|b| (Some(b.clone()), b.clone().into_bytes())),
    )
    .await;
    let got = r.collect(&out, before.len(), Duration::from_secs(30)).await;
    assert_once_each(&got, &before);
    // Settled, done-markers written: nothing of this batch is left in flight
    // to fail when redis goes.
    settle(&q, &[&w], 100, Duration::from_secs(20)).await;
    assert_eq!(w.admin_get("/readyz").0, 200);

    redis.stop();
    let stopped = Instant::now();
    // Published twice each during the outage: handled without dedup, both
    // copies would run.
    let during: Vec<String> = (0..300).map(|i| format!("during-{i}")).collect();
    r.publish_many(
        &q,
        during.iter().flat_map(|b| {
            let m = (Some(b.clone()), b.clone().into_bytes());
            [m.clone(), m]
        }),
    )
    .await;
    w.wait_log("dedup store unavailable: pausing", Duration::from_secs(10));
    while stopped.elapsed() < OUTAGE {
        let (code, body) = w.admin_get("/readyz");
        assert_eq!(code, 503, "ready while redis is down: {body}");
        assert!(
            body.contains("\"dedup\":false") && body.contains("\"amqp\":true"),
            "{body}"
        );
        let early = r.drain(&out).await;
        assert!(
            early.is_empty(),
            "{} messages handled while redis was down, e.g. {:?}",
            early.len(),
            early[0].body_str()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // Nothing settled: all 600 are still in the queue, ready or unacked
    // (awaited, since `rabbitmqctl` counts lag by the stats interval).
    eventually(
        Duration::from_secs(10),
        "all 600 inputs still in the queue",
        || async { r.total(&q).await == 600 },
    )
    .await;
    let t = table(&[&w]);
    assert_eq!(outcome(&w, "ack"), 100, "{t}");
    assert_eq!(runs(&w), 100, "{t}");
    assert_eq!(bypassed(&w), 0, "{t}");
    assert_eq!(in_flight(&w), 0, "{t}");

    redis.restart();
    w.wait_log(
        "dedup store answers again: resuming",
        Duration::from_secs(15),
    );
    eventually(Duration::from_secs(10), "ready again", || async {
        w.admin_get("/readyz").0 == 200
    })
    .await;
    let mut got = r.collect(&out, during.len(), Duration::from_secs(60)).await;
    settle(&q, &[&w], 700, Duration::from_secs(30)).await;
    got.extend(r.drain(&out).await);
    assert_once_each(&got, &during);
    let t = table(&[&w]);
    assert_eq!(outcome(&w, "ack"), 400, "{t}");
    assert_eq!(outcome(&w, "dedup_hit"), 300, "{t}");
    assert_eq!(runs(&w), 400, "{t}");
    assert_eq!(bypassed(&w), 0, "{t}");
    drop(w);
    cleanup(&r, &q, &out).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn redis_down_with_process_handles_without_dedup_and_counts_each_bypass() {
    let mut redis = RedisServer::start();
    let url = redis.url();
    let q = unique("failopen");
    let out = format!("{q}.out");
    let prefix = unique("dedup");
    let r = Rabbit::connect().await;
    r.declare(&out).await;
    let store = Store::Redis {
        url: &url,
        prefix: &prefix,
        on_unavailable: "process",
    };
    let extra = format!(
        "consumers = 8\nprefetch = 16\ntimeout_ms = 500\n\
         [handler.dedup]\nlease_ms = 1000\nwindow_s = 600\n\
         [handler.retry]\nbackoff_ms = 100\nmax_backoff_ms = 1000\n\
         [handler.config]\nout_routing_key = \"{out}\"\n"
    );
    let mut w = start("echo", "failopen", &q, store, AMQP_URL, &extra);
    w.wait_log("consuming", Duration::from_secs(30));
    let twice = |tag: &str| -> Vec<String> { (0..100).map(|i| format!("{tag}-{i}")).collect() };
    let pairs = |bodies: &[String]| -> Vec<(Option<String>, Vec<u8>)> {
        bodies
            .iter()
            .flat_map(|b| {
                let m = (Some(b.clone()), b.clone().into_bytes());
                [m.clone(), m]
            })
            .collect()
    };

    redis.stop();
    let down = twice("down");
    r.publish_many(&q, pairs(&down)).await;
    let mut got = r
        .collect(&out, 2 * down.len(), Duration::from_secs(30))
        .await;
    settle(&q, &[&w], 200, Duration::from_secs(20)).await;
    got.extend(r.drain(&out).await);
    // Fail open: both copies ran, and each handling was counted.
    let counts = count_bodies(&got);
    assert_eq!(counts.len(), down.len());
    assert!(counts.values().all(|n| *n == 2), "{counts:?}");
    let t = table(&[&w]);
    assert_eq!(bypassed(&w), 200, "{t}");
    assert_eq!(outcome(&w, "ack"), 200, "{t}");
    assert_eq!(runs(&w), 200, "{t}");
    // One warning per batch, saying how many of its messages ran without.
    let logs = w.logs();
    let logged: u64 = logs
        .lines()
        .filter(|l| {
            l.contains("dedup store unavailable: handling without dedup (on_unavailable = process)")
        })
        .filter_map(|l| {
            l.split_once(" messages=")?
                .1
                .split(' ')
                .next()?
                .parse::<u64>()
                .ok()
        })
        .sum();
    assert_eq!(logged, 200, "{logs}");

    // Back: the first calls may still fail while the connection comes back;
    // probe one message at a time until one is handled with dedup.
    redis.restart();
    let mut probes = 0;
    loop {
        let before = bypassed(&w);
        let probe = format!("probe-{probes}");
        r.publish(&q, &probe, probe.as_bytes()).await;
        let p = r.collect(&out, 1, Duration::from_secs(10)).await;
        assert_eq!(p[0].body_str(), probe);
        probes += 1;
        if bypassed(&w) == before {
            break;
        }
        assert!(
            probes < 20,
            "dedup still bypassed after {probes} probes:\n{}",
            table(&[&w])
        );
    }
    eprintln!("dedup back after {probes} probe(s)");
    let base = bypassed(&w);
    let up = twice("up");
    r.publish_many(&q, pairs(&up)).await;
    let mut got = r.collect(&out, up.len(), Duration::from_secs(30)).await;
    settle(&q, &[&w], 200 + probes + 200, Duration::from_secs(20)).await;
    got.extend(r.drain(&out).await);
    assert_once_each(&got, &up);
    let t = table(&[&w]);
    assert_eq!(bypassed(&w), base, "{t}");
    assert_eq!(outcome(&w, "dedup_hit"), 100, "{t}");
    assert_eq!(runs(&w), 200 + probes + 100, "{t}");
    drop(w);
    cleanup(&r, &q, &out).await;
}
