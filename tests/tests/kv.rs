//! The key-value store end to end (`warren:handler/kv`): what a handler
//! reads and writes, in the in-process store and in Redis; writes that take
//! effect exactly once per message, across duplicates, two processes and a
//! `kill -9`; a stale run (its lease lost while Redis stalled) whose writes
//! are refused; and a compare-and-swap conflict at commit.
//!
//! The guest is `counter` (guests/rust/counter): its body is a script of
//! key-value operations, and its output the transcript of what each returned.

use std::collections::BTreeMap;
use std::time::Duration;

use rand::seq::SliceRandom as _;
use redis::AsyncCommands as _;
use warren_tests::fixture::{Fixture, Running, SHARED_REDIS};
use warren_tests::process::{Warren, eventually};
use warren_tests::relay::Relay;
use warren_tests::tally::table;

/// Runs `script` as one message and returns the guest's transcript, once
/// the message has settled: its output goes out before its writes are
/// committed (docs/semantics.md), so the next message may only count on
/// them after that.
async fn run(f: &Running, id: &str, script: &str) -> String {
    // A process the fixture did not start (a test's own) is not watched.
    let w = f.warrens.first();
    let before = w.map(Warren::settled);
    f.rabbit.publish(&f.queue, id, script.as_bytes()).await;
    let got = f.rabbit.collect(&f.out, 1, Duration::from_secs(20)).await;
    if let (Some(w), Some(before)) = (w, before) {
        eventually(Duration::from_secs(20), "the message settled", || async {
            w.settled() > before
        })
        .await;
    }
    got[0].body_str()
}

/// The same semantics whichever store holds the values.
async fn semantics(f: &Running) {
    assert_eq!(
        run(f, "m1", "inc a 1\ninc a 2\nget a\nget nothing").await,
        "a+1=1\na+2=3\na=3\nnothing=nil",
        "reads see the message's own writes"
    );
    assert_eq!(
        run(
            f,
            "m2",
            "get a\nset b hello\nset c x 60000\nlist \ncas b hello bye\ncas b hello no\nget b"
        )
        .await,
        "a=3\nset\nset\nlist=a,b,c\ncas=true\ncas=false\nb=bye",
        "committed by the first message; listing includes this message's own keys"
    );
    assert_eq!(
        run(f, "m3", "del a\nlist \nlist b\nget a").await,
        "del\nlist=b,c\nlist=b\na=nil"
    );
    // A rejected message writes nothing (its transcript is not published
    // either: a reject drops outputs). The next message shows it.
    f.rabbit
        .publish(&f.queue, "m4", b"quiet\ninc r 5\nset b lost\nreject")
        .await;
    let dead = f.rabbit.collect(&f.dead, 1, Duration::from_secs(20)).await;
    assert_eq!(dead[0].body_str(), "quiet\ninc r 5\nset b lost\nreject");
    assert_eq!(run(f, "m5", "get r\nget b").await, "r=nil\nb=bye");
    // A duplicate (same message id) runs no more and writes no more.
    f.rabbit.publish(&f.queue, "m1", b"inc a 1\ninc a 2").await;
    eventually(Duration::from_secs(20), "the duplicate acked", || async {
        f.w().outcome("dedup_hit") == 1
    })
    .await;
    // Errors the guest sees, each naming what is wrong; nothing is written
    // by a refused call.
    let long = "k".repeat(600);
    let out = run(
        f,
        "m6",
        &format!("set s text\ninc s 1\nset {long} v\ninc big 9007199254740991\ninc big 1\nget a"),
    )
    .await;
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "set");
    assert!(
        lines[1].starts_with(
            "err=KvError::NotACounter(\"key \\\"s\\\" holds 4 bytes that are not a counter"
        ),
        "{out}"
    );
    assert_eq!(
        lines[2],
        "err=KvError::LimitExceeded(\"key is 600 bytes; at most 512\")"
    );
    assert_eq!(lines[3], "big+9007199254740991=9007199254740991");
    assert!(
        lines[4].starts_with(
            "err=KvError::NotACounter(\"key \\\"big\\\": 9007199254740991 + 1 is outside"
        ),
        "{out}"
    );
    assert_eq!(lines[5], "a=nil");
    // Expiry: a key set with a TTL is gone after it.
    assert_eq!(run(f, "m7", "set t v 300\nget t").await, "set\nt=v");
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(run(f, "m8", "get t\nlist t").await, "t=nil\nlist=");
    f.settle(9, Duration::from_secs(20)).await;
    f.assert_nothing_more().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn reads_writes_and_errors_in_the_in_process_store() {
    let f = Fixture::new("kv-mem")
        .guest("counter")
        .handler("counter")
        .extra("[handler.retry]\nmax_attempts = 1\n")
        .start()
        .await;
    semantics(&f).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn reads_writes_and_errors_in_redis() {
    let f = Fixture::new("kv-redis")
        .guest("counter")
        .handler("counter")
        .redis(SHARED_REDIS, "pause")
        .extra("[handler.retry]\nmax_attempts = 1\n")
        .start()
        .await;
    semantics(&f).await;
    // The values are where the docs say: under the prefix, in the
    // handler's namespace (a Redis Cluster hash tag).
    let prefix = f.prefix.as_ref().unwrap();
    let mut con = redis_con().await;
    let b: Option<String> = con.get(format!("{prefix}:kv/{{counter}}:b")).await.unwrap();
    assert_eq!(b.as_deref(), Some("bye"));
}

/// The read cache (redis.read_cache_mb, on by default with one server):
/// repeated reads of a key are answered in the process, and a value
/// another client writes is what the next message reads.
#[tokio::test(flavor = "multi_thread")]
async fn reads_come_from_the_cache_and_another_writer_is_seen_at_once() {
    let f = Fixture::new("kv-cache")
        .guest("counter")
        .handler("counter")
        .redis(SHARED_REDIS, "pause")
        .start()
        .await;
    assert_eq!(run(&f, "c1", "set p 1").await, "set");
    for i in 2..12 {
        assert_eq!(run(&f, &format!("c{i}"), "get p").await, "p=1");
    }
    let hits = "warren_kv_read_cache_hits_total";
    eventually(
        Duration::from_secs(10),
        "reads answered by the cache",
        || async { f.w().metric(hits, &[]) >= 5.0 },
    )
    .await;
    // Another writer (as another host's commit would): the next message,
    // on the same host, reads the new value.
    let prefix = f.prefix.as_ref().unwrap();
    let mut con = redis_con().await;
    let _: () = con
        .set(format!("{prefix}:kv/{{counter}}:p"), "2")
        .await
        .unwrap();
    assert_eq!(run(&f, "c20", "get p").await, "p=2");
    // And this host's own commit, at once.
    assert_eq!(run(&f, "c21", "set p 3\nget p").await, "set\np=3");
    assert_eq!(run(&f, "c22", "get p").await, "p=3");
}

/// Two handlers that name one namespace share it; a third does not see it.
#[tokio::test(flavor = "multi_thread")]
async fn namespaces_are_per_handler_unless_shared() {
    let shared = Fixture::new("kv-ns-a")
        .guest("counter")
        .handler("writer")
        .redis(SHARED_REDIS, "pause")
        .extra("[handler.kv]\nnamespace = \"orders\"\n")
        .start()
        .await;
    assert_eq!(run(&shared, "w1", "set total 7").await, "set");
    // The second handler in a process of its own, under the same prefix.
    let prefix = shared.prefix.clone().unwrap();
    for (handler, ns, seen) in [("reader", "orders", "total=7"), ("other", "", "total=nil")] {
        let ns_line = if ns.is_empty() {
            String::new()
        } else {
            format!("[handler.kv]\nnamespace = \"{ns}\"\n")
        };
        let f = Fixture::new("kv-ns-b")
            .guest("counter")
            .handler(handler)
            .extra(&ns_line)
            .prepare()
            .await;
        let admin = warren_tests::process::free_port();
        let config = f.config(admin).replacen(
            "[[handler]]",
            &format!("[redis]\nurl = \"{SHARED_REDIS}\"\nprefix = \"{prefix}\"\n\n[[handler]]"),
            1,
        );
        let mut w = Warren::start(&config, Some(admin));
        w.wait_log("consuming", Duration::from_secs(30));
        assert_eq!(run(&f, "r1", "get total").await, seen, "handler {handler}");
    }
}

async fn redis_con() -> redis::aio::MultiplexedConnection {
    redis::Client::open(SHARED_REDIS)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

/// The must-show case: 20,000 messages, each one increment of one of 100
/// counters, a quarter of them duplicates (the same message id again), two
/// processes and one of them killed with `kill -9` mid-run. Every counter
/// ends at exactly the number of distinct messages for it.
#[tokio::test(flavor = "multi_thread")]
async fn twenty_thousand_increments_with_duplicates_and_a_kill_9_count_exactly_once() {
    const TOTAL: usize = 20_000;
    const DISTINCT: usize = 15_000;
    const COUNTERS: usize = 100;
    let mut f = Fixture::new("kv-exactly-once")
        .guest("counter")
        .handler("counter")
        .redis(SHARED_REDIS, "pause")
        .extra(
            "consumers = 16\nprefetch = 64\ntimeout_ms = 2000\n\
             [handler.dedup]\nlease_ms = 3000\nwindow_s = 600\n",
        )
        .processes(2)
        .prepare()
        .await;
    // Distinct message i increments counter i % 100 (by a body that makes
    // the counter's name); duplicates repeat random earlier ones, ids and
    // bodies alike, so a quarter of all deliveries are copies.
    let mut rng = rand::rng();
    let mut msgs: Vec<(String, String)> = (0..DISTINCT)
        .map(|i| (format!("m-{i}"), format!("quiet\ninc c{} 1", i % COUNTERS)))
        .collect();
    let copies: Vec<(String, String)> = (0..TOTAL - DISTINCT)
        .map(|_| msgs[rand::Rng::random_range(&mut rng, 0..DISTINCT)].clone())
        .collect();
    msgs.extend(copies);
    msgs.shuffle(&mut rng);
    let mut expected: BTreeMap<String, i64> = BTreeMap::new();
    for i in 0..DISTINCT {
        *expected.entry(format!("c{}", i % COUNTERS)).or_default() += 1;
    }

    f.launch();
    f.launch();
    // Published while both consume; the kill comes when A has done a
    // good share, with a window's worth in flight.
    let publisher = {
        let rabbit = warren_tests::broker::Rabbit::connect().await;
        let queue = f.queue.clone();
        let msgs = msgs.clone();
        tokio::spawn(async move {
            rabbit
                .publish_many(
                    &queue,
                    msgs.into_iter().map(|(id, b)| (Some(id), b.into_bytes())),
                )
                .await;
        })
    };
    eventually(Duration::from_secs(120), "A has settled 3000", || async {
        f.warrens[0].settled() >= 3000
    })
    .await;
    f.warrens[0].signal("KILL");
    f.warrens[0].wait(Duration::from_secs(10));
    let a = f.warrens.remove(0);
    publisher.await.unwrap();

    // B settles everything A did not: each distinct message once by a run
    // somewhere, every other copy as a duplicate. A's settled count is from
    // its last scrape; what it settled after that, B sees as duplicates, so
    // the exact check is on the counters, not on B's tally.
    let b = f.w();
    eventually(
        Duration::from_secs(300),
        "the work queue drained",
        || async {
            let ready = f.rabbit.ready(&[f.queue.clone()]).await[0];
            ready == 0 && b.in_flight() == 0 && {
                let mut qs = f.wait_queues();
                qs.push(f.queue.clone());
                f.rabbit.ready(&qs).await.iter().all(|n| *n == 0)
            }
        },
    )
    .await;
    // Counters, read straight from Redis.
    let prefix = f.prefix.clone().unwrap();
    let mut con = redis_con().await;
    let mut wrong = Vec::new();
    eventually(Duration::from_secs(60), "every counter exact", || {
        let (expected, prefix) = (&expected, &prefix);
        let mut con = con.clone();
        async move {
            let mut all_right = true;
            for (k, want) in expected {
                let got: Option<i64> = con
                    .get(format!("{prefix}:kv/{{counter}}:{k}"))
                    .await
                    .unwrap();
                if got != Some(*want) {
                    all_right = false;
                }
            }
            all_right
        }
    })
    .await;
    for (k, want) in &expected {
        let got: Option<i64> = con
            .get(format!("{prefix}:kv/{{counter}}:{k}"))
            .await
            .unwrap();
        if got != Some(*want) {
            wrong.push((k.clone(), *want, got));
        }
    }
    assert!(wrong.is_empty(), "counters off: {wrong:?}\n{}", table(&[b]));
    let total: i64 = expected.values().sum();
    assert_eq!(total, DISTINCT as i64);
    // Every distinct message ran to a commit once: the writes committed
    // across both processes are the distinct messages (A's last scrape may
    // miss some of its own, so B's alone is at most that).
    assert!(b.metric("warren_kv_writes_total", &[]) as usize <= DISTINCT);
    assert!(b.outcome("dedup_hit") > 0, "{}", table(&[b]));
    drop(a);
}

/// A run whose lease ran out while Redis stalled (a relay holding what its
/// process sends) finishes its handler, but its commit is refused: the
/// other process ran the message again under a new lease and committed,
/// and the counter counts the message once.
#[tokio::test(flavor = "multi_thread")]
async fn a_stale_run_whose_lease_expired_has_its_writes_refused() {
    let relay = Relay::start(6379).await;
    let mut f = Fixture::new("kv-stale")
        .guest("counter")
        .handler("counter")
        .redis(SHARED_REDIS, "pause")
        .extra(
            "consumers = 1\nprefetch = 1\nmax_batch = 1\ntimeout_ms = 1500\n\
             [handler.dedup]\nlease_ms = 1600\nwindow_s = 600\n\
             [handler.retry]\nbackoff_ms = 100\nmax_backoff_ms = 200\n",
        )
        .prepare()
        .await;
    // A talks to Redis through the relay; B directly.
    let admin = warren_tests::process::free_port();
    let config = f.config(admin).replace(SHARED_REDIS, &relay.redis_url());
    let mut a = Warren::start(&config, Some(admin));
    a.wait_log("consuming", Duration::from_secs(30));

    f.rabbit
        .publish(&f.queue, "once", b"quiet\ninc n 1\nsleep 1000")
        .await;
    eventually(Duration::from_secs(10), "A runs the message", || async {
        a.in_flight() == 1
    })
    .await;
    // The guest's read of `n` went through; now Redis stalls for A: its
    // renewals and its commit wait at the relay while the lease runs out.
    tokio::time::sleep(Duration::from_millis(200)).await;
    relay.hold(true);
    // B starts only now, so the first run was A's. The message comes to B
    // as a copy (the same id): B claims the key once A's lease is gone.
    f.launch();
    f.rabbit
        .publish(&f.queue, "once", b"quiet\ninc n 1\nsleep 1000")
        .await;
    let b = f.w();
    eventually(
        Duration::from_secs(30),
        "B ran and acked the copy",
        || async { b.outcome("ack") == 1 },
    )
    .await;
    // A's held commands now reach Redis: its renewals and its commit find
    // another owner's done-marker and write nothing.
    relay.hold(false);
    eventually(
        Duration::from_secs(30),
        "A gave the message back",
        || async {
            a.outcome("requeued") >= 1 || a.logs().contains("cannot commit key-value writes")
        },
    )
    .await;
    assert_eq!(
        a.outcome("ack"),
        0,
        "A must not ack a run whose lease it lost:\n{}",
        a.logs()
    );
    // The requeued original ends as a duplicate somewhere.
    eventually(
        Duration::from_secs(30),
        "the original settled as a duplicate",
        || async { a.outcome("dedup_hit") + b.outcome("dedup_hit") == 1 },
    )
    .await;
    let prefix = f.prefix.clone().unwrap();
    let n: Option<i64> = redis_con()
        .await
        .get(format!("{prefix}:kv/{{counter}}:n"))
        .await
        .unwrap();
    assert_eq!(
        n,
        Some(1),
        "A's stale increment was refused\nA:\n{}",
        a.logs()
    );
}

/// A compare-and-swap that held when called but not at commit (another
/// message changed the key in between) writes nothing and publishes
/// nothing; the message runs again, not counted as an attempt, and then
/// sees the other's value.
#[tokio::test(flavor = "multi_thread")]
async fn a_compare_and_swap_conflict_reruns_the_message_before_it_publishes() {
    let f = Fixture::new("kv-cas")
        .guest("counter")
        .handler("counter")
        .redis(SHARED_REDIS, "pause")
        .extra(
            "consumers = 2\nprefetch = 2\nmax_batch = 1\n\
             [handler.retry]\nmax_attempts = 1\nbackoff_ms = 100\n",
        )
        .start()
        .await;
    // First: sees `k` absent, swaps in `one`, then takes a while.
    f.rabbit
        .publish(&f.queue, "slow", b"cas k - one\ninc tries 1\nsleep 1500")
        .await;
    eventually(Duration::from_secs(10), "the slow one runs", || async {
        f.w().in_flight() == 1
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    // Second: swaps in `two` and commits first.
    f.rabbit.publish(&f.queue, "fast", b"cas k - two").await;
    f.settle(2, Duration::from_secs(30)).await;
    let w = f.w();
    assert_eq!(
        w.metric("warren_kv_conflicts_total", &[]),
        1.0,
        "{}",
        table(&[w])
    );
    assert_eq!(w.outcome("retry"), 0, "a conflict is not an attempt");
    assert_eq!(
        w.outcome("dead_letter"),
        0,
        "max_attempts = 1, yet no dead letter"
    );
    // One output each: the slow one's first run published nothing.
    let mut outputs: Vec<String> = f
        .rabbit
        .drain(&f.out)
        .await
        .iter()
        .map(|g| g.body_str())
        .collect();
    outputs.sort();
    assert_eq!(outputs, ["cas=false\ntries+1=1\nslept", "cas=true"]);
    assert_eq!(
        run(&f, "check", "get k\nget tries").await,
        "k=two\ntries=1",
        "the slow one's first run wrote nothing (not even its increment); its rerun found `two`"
    );
}

/// A module built against `warren:handler@0.1.0` loads and runs unchanged
/// beside 0.2.0 ones.
#[tokio::test(flavor = "multi_thread")]
async fn a_module_built_against_0_1_0_still_runs() {
    let f = Fixture::new("kv-v01")
        .guest("echo_v01")
        .handler("old")
        .start()
        .await;
    f.rabbit.publish(&f.queue, "v01", b"hello from 0.1.0").await;
    let got = f.rabbit.collect(&f.out, 1, Duration::from_secs(20)).await;
    assert_eq!(got[0].body_str(), "hello from 0.1.0");
    f.settle(1, Duration::from_secs(10)).await;
}
