//! Redis that survives a node: the dedup store on Redis Sentinel (one
//! master, one replica, three sentinels of the test's own) with the master
//! killed mid-run, and on a Redis Cluster of three masters (shared by the
//! tests that ask for one, `warren_tests::redis_cluster`) with the dedup
//! scenarios of `dedup_duplicates.rs`, `dedup_lease.rs` and `kv.rs`:
//! duplicates suppressed, a lease that runs out after a `kill -9`, and
//! key-value writes exactly once.
//!
//! The side effect counted is the guest's output message; "runs" are the
//! guest invocations, read from `warren_handler_duration_seconds_count`.

use std::collections::BTreeMap;
use std::time::Duration;

use rand::seq::SliceRandom as _;
use redis::AsyncCommands as _;
use warren::config::{RedisServers, TlsPem};
use warren::dedup::{Claim, Commit, KvOp, KvWrites, Lease, Store};
use warren_tests::fixture::Fixture;
use warren_tests::process::{Warren, eventually, unique};
use warren_tests::redis_cluster::RedisCluster;
use warren_tests::redis_sentinel::{RedisSentinel, role};
use warren_tests::tally::{assert_once_each, count_bodies, sum, table};

/// The must-show case for Sentinel: 10,000 messages, the master killed
/// (SIGKILL) when 3,000 are settled. Nothing is lost, the host follows the
/// master the sentinels promote, and the only extra outputs are of messages
/// in flight at the kill (run on the old master, their commit refused by the
/// dead one, run again on the new), each carrying its first output's id.
#[tokio::test(flavor = "multi_thread")]
async fn sentinel_failover_mid_run_loses_nothing_and_the_host_follows_the_new_master() {
    const N: usize = 10_000;
    const PREFETCH: usize = 64;
    let mut ha = RedisSentinel::start();
    let new_master = ha.replica.port;
    let f = Fixture::new("sentinel")
        .handler("ha")
        .redis_with(&ha.toml(), "pause", &[])
        .extra(&format!(
            "consumers = 8\nprefetch = {PREFETCH}\ntimeout_ms = 2000\n\
             [handler.dedup]\nlease_ms = 3000\nwindow_s = 600\n\
             [handler.retry]\nbackoff_ms = 100\nmax_backoff_ms = 1000\n"
        ))
        .start()
        .await;
    let (r, q, out, w) = (&f.rabbit, &f.queue, &f.out, f.w());
    let bodies: Vec<String> = (0..N).map(|i| format!("s-{i:05}")).collect();
    let publisher = {
        let rabbit = warren_tests::broker::Rabbit::connect().await;
        let (queue, bodies) = (q.clone(), bodies.clone());
        tokio::spawn(async move {
            rabbit
                .publish_many(
                    &queue,
                    bodies
                        .into_iter()
                        .map(|b| (Some(b.clone()), b.into_bytes())),
                )
                .await;
        })
    };
    eventually(Duration::from_secs(120), "3000 settled", || async {
        w.settled() >= 3000
    })
    .await;
    ha.master.stop();
    // Claims fail from here until a replica is promoted: not ready.
    eventually(
        Duration::from_secs(10),
        "not ready without a master",
        || async { w.admin_get("/readyz").1.contains("\"dedup\":false") },
    )
    .await;
    ha.wait_master(new_master, Duration::from_secs(60));
    publisher.await.unwrap();

    let mut got = r.collect(out, N, Duration::from_secs(300)).await;
    f.settle(N as u64, Duration::from_secs(120)).await;
    got.extend(r.drain(out).await);
    let counts = count_bodies(&got);
    let lost: Vec<&String> = bodies
        .iter()
        .filter(|b| !counts.contains_key(*b))
        .take(20)
        .collect();
    assert!(
        lost.is_empty(),
        "lost (first 20): {lost:?}\n{}",
        table(&[w])
    );
    let duplicates = got.len() - N;
    let t = table(&[w]);
    eprintln!("sentinel failover: {N} messages, {duplicates} duplicate outputs\n{t}");
    assert!(
        duplicates <= PREFETCH,
        "{duplicates} duplicates, more than the {PREFETCH} a host holds at once\n{t}"
    );
    // A rerun repeats its output's id: downstream can drop the copy.
    for g in &got {
        let body = g.body_str();
        assert_eq!(
            g.message_id.as_deref(),
            Some(warren::pipeline::output_message_id("ha", &body, 0).as_str()),
            "{body}"
        );
    }
    // A commit that went through just before the kill, its reply lost with
    // the master, comes back as a duplicate of itself: acked either way.
    assert_eq!(w.outcome("ack") + w.outcome("dedup_hit"), N as u64, "{t}");
    assert_eq!(w.outcome("dead_letter"), 0, "{t}");

    // It follows the promoted replica, and is ready again.
    let logs = w.logs();
    assert!(logs.contains("lost the master"), "{logs}");
    assert!(
        logs.contains(&format!("127.0.0.1:{new_master}")),
        "no connection to the new master on port {new_master}:\n{logs}"
    );
    assert_eq!(role(new_master).as_deref(), Some("master"));
    assert_eq!(w.admin_get("/readyz").0, 200);
    // The done-markers the old master had replicated are on the new one:
    // copies of the first thousand are duplicates, not runs.
    let runs = w.runs();
    let hits = w.outcome("dedup_hit");
    r.publish_many(
        q,
        bodies[..1000]
            .iter()
            .map(|b| (Some(b.clone()), b.clone().into_bytes())),
    )
    .await;
    f.settle(N as u64 + 1000, Duration::from_secs(60)).await;
    let t = table(&[w]);
    assert_eq!(w.outcome("dedup_hit") - hits, 1000, "{t}");
    assert_eq!(w.runs(), runs, "a copy ran again:\n{t}");
    assert!(r.drain(out).await.is_empty(), "a copy published:\n{t}");
}

/// A fixture on the shared cluster.
fn on_cluster(cluster: &RedisCluster, name: &str) -> Fixture {
    Fixture::new(name).redis_with(&cluster.toml(), "pause", &cluster.urls())
}

/// `dedup_duplicates.rs`'s case on the cluster: 2,000 message ids published
/// twice to two processes take effect once; the second copies were
/// deferred (lease held) or acked as done.
#[tokio::test(flavor = "multi_thread")]
async fn cluster_duplicates_published_twice_to_two_processes_take_effect_once() {
    const N: usize = 2000;
    let cluster = RedisCluster::get();
    let f = on_cluster(&cluster, "cl-twice")
        .handler("dd")
        .extra(
            "consumers = 8\nprefetch = 32\ntimeout_ms = 1000\n\
             [handler.dedup]\nlease_ms = 3000\nwindow_s = 600\n\
             [handler.retry]\nbackoff_ms = 100\nmax_backoff_ms = 1000\n",
        )
        .processes(2)
        .start()
        .await;
    let (r, q, out) = (&f.rabbit, &f.queue, &f.out);
    let bodies: Vec<String> = (0..N).map(|i| format!("m-{i:05}")).collect();
    let copy = |b: &String| (Some(b.clone()), b.clone().into_bytes());
    // Even ones back to back (in flight together), odd ones again at the end.
    let first = bodies.iter().enumerate().flat_map(|(i, b)| {
        let again = (i % 2 == 0).then(|| copy(b));
        std::iter::once(copy(b)).chain(again)
    });
    let late = bodies.iter().skip(1).step_by(2).map(copy);
    r.publish_many(q, first.chain(late)).await;

    let mut got = r.collect(out, N, Duration::from_secs(180)).await;
    f.settle(2 * N as u64, Duration::from_secs(60)).await;
    got.extend(r.drain(out).await);
    assert_once_each(&got, &bodies);
    let refs: Vec<&Warren> = f.warrens.iter().collect();
    let t = table(&refs);
    assert_eq!(sum(&refs, |w| w.outcome("ack")), N as u64, "{t}");
    assert_eq!(sum(&refs, |w| w.outcome("dedup_hit")), N as u64, "{t}");
    assert_eq!(sum(&refs, Warren::runs), N as u64, "{t}");
    let deferred = sum(&refs, |w| w.outcome("deferred"));
    assert!(deferred > 0, "no copy found its lease held:\n{t}");
    assert!(deferred < N as u64, "no copy found its key done:\n{t}");

    // The keys are where docs/semantics.md says: tagged with the
    // namespace (here the handler's name), all in one slot.
    let prefix = f.prefix.clone().unwrap();
    let mut con = cluster.connection().await;
    let done: Option<String> = con
        .get(format!("{prefix}:{{dd}}:dd:m-00000"))
        .await
        .unwrap();
    assert_eq!(done.as_deref(), Some("done"));
}

/// `dedup_lease.rs`'s case on the cluster: a process killed with eight
/// handlers in flight leaves their leases to run out; the other process
/// then runs each of them once.
#[tokio::test(flavor = "multi_thread")]
async fn cluster_kill_9_mid_flight_the_other_process_runs_each_message_once() {
    let cluster = RedisCluster::get();
    let mut f = on_cluster(&cluster, "cl-crash")
        .guest("sandbox")
        .handler("crash")
        .extra(
            "consumers = 8\nprefetch = 8\nmax_batch = 1\ntimeout_ms = 1800\n\
             [handler.dedup]\nlease_ms = 3000\nwindow_s = 600\n\
             [handler.retry]\nbackoff_ms = 200\nmax_backoff_ms = 1000\n",
        )
        .processes(2)
        .start()
        .await;
    let mut a = f.warrens.remove(0);
    let (r, q, out, b) = (&f.rabbit, &f.queue, &f.out, f.w());
    let slow: Vec<String> = (0..16).map(|i| format!("sleep:1000#slow-{i}")).collect();
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
    assert!(!a.wait(Duration::from_secs(5)).success());

    let mut got = r.collect(out, all.len(), Duration::from_secs(60)).await;
    f.settle(all.len() as u64, Duration::from_secs(30)).await;
    got.extend(r.drain(out).await);
    assert_once_each(&got, &all);
    let t = table(&[b]);
    assert_eq!(b.outcome("ack"), all.len() as u64, "{t}");
    assert_eq!(b.runs(), all.len() as u64, "{t}");
    assert!(
        b.outcome("deferred") >= 8,
        "A's messages were not deferred:\n{t}"
    );
    for o in ["retry", "dead_letter"] {
        assert_eq!(b.outcome(o), 0, "{o}:\n{t}");
    }
}

/// `kv.rs`'s must-show case on the cluster, smaller: 4,000 increments of
/// 20 counters, a quarter of them duplicates, two processes and one killed
/// mid-run. Every counter ends at exactly its number of distinct messages:
/// each commit wrote the counter and the done-marker in one script, in one
/// slot.
#[tokio::test(flavor = "multi_thread")]
async fn cluster_key_value_increments_with_duplicates_and_a_kill_9_count_exactly_once() {
    const TOTAL: usize = 4000;
    const DISTINCT: usize = 3000;
    const COUNTERS: usize = 20;
    let cluster = RedisCluster::get();
    let mut f = on_cluster(&cluster, "cl-kv")
        .guest("counter")
        .handler("counter")
        .extra(
            "consumers = 16\nprefetch = 64\ntimeout_ms = 2000\n\
             [handler.dedup]\nlease_ms = 3000\nwindow_s = 600\n",
        )
        .prepare()
        .await;
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
    f.rabbit
        .publish_many(
            &f.queue,
            msgs.into_iter().map(|(id, b)| (Some(id), b.into_bytes())),
        )
        .await;
    eventually(Duration::from_secs(120), "A has settled 600", || async {
        f.warrens[0].settled() >= 600
    })
    .await;
    f.warrens[0].signal("KILL");
    f.warrens[0].wait(Duration::from_secs(10));
    let a = f.warrens.remove(0);
    let b = f.w();
    eventually(
        Duration::from_secs(300),
        "the work queue drained",
        || async {
            let mut qs = f.wait_queues();
            qs.push(f.queue.clone());
            b.in_flight() == 0 && f.rabbit.ready(&qs).await.iter().all(|n| *n == 0)
        },
    )
    .await;
    let prefix = f.prefix.clone().unwrap();
    let con = cluster.connection().await;
    let read = || {
        let (expected, prefix, mut con) = (&expected, &prefix, con.clone());
        async move {
            let mut out = Vec::new();
            for k in expected.keys() {
                let got: Option<i64> = con
                    .get(format!("{prefix}:kv/{{counter}}:{k}"))
                    .await
                    .unwrap();
                out.push((k.clone(), got));
            }
            out
        }
    };
    eventually(Duration::from_secs(60), "every counter exact", || async {
        read()
            .await
            .iter()
            .all(|(k, got)| *got == Some(expected[k]))
    })
    .await;
    assert!(b.outcome("dedup_hit") > 0, "{}", table(&[b]));
    drop(a);
}

/// The store itself on the cluster: a handler's dedup key, its fencing
/// counter and its namespace's keys share a slot; the protocol's steps
/// and a key-value commit work there; and a claim on a counter that was
/// lost (as on a replica promoted before it saw the last claim) still gets
/// a larger fencing token than the one handed out before.
#[tokio::test(flavor = "multi_thread")]
async fn cluster_store_keeps_a_handlers_keys_in_one_slot_and_fencing_tokens_never_go_back() {
    let cluster = RedisCluster::get();
    let prefix = unique("cl-store");
    let urls = cluster.urls();
    let store = Store::connect(RedisServers::Cluster(&urls), &prefix, &TlsPem::default(), 0)
        .await
        .expect("connect to the cluster");
    assert!(store.describe().contains("cluster"), "{}", store.describe());
    let lease_ttl = Duration::from_secs(10);
    let window = Duration::from_secs(60);

    let key = store.key_in("worker", "orders", "m-1");
    assert_eq!(key, format!("{prefix}:{{orders}}:worker:m-1"));
    // The slots as the cluster computes them.
    let mut con = cluster.connection().await;
    let mut slots = Vec::new();
    let counter = store.fence_counter(&key);
    assert_eq!(counter, format!("{prefix}:{{orders}}::fence"));
    for k in [
        key.clone(),
        counter.clone(),
        format!("{prefix}:kv/{{orders}}"),
        format!("{prefix}:kv/{{orders}}:total"),
    ] {
        let slot: u16 = redis::cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(&k)
            .query_async(&mut con)
            .await
            .unwrap();
        slots.push((k, slot));
    }
    assert!(
        slots.iter().all(|(_, s)| *s == slots[0].1),
        "a handler's keys in several slots: {slots:?}"
    );

    let claim = |k: String| {
        let store = store.clone();
        async move {
            store
                .claim_many(&[k.as_str()], lease_ttl)
                .await
                .pop()
                .unwrap()
                .unwrap()
        }
    };
    let Claim::Acquired(first) = claim(key.clone()).await else {
        panic!("a free key is acquired");
    };
    // Floored by the server's clock, in microseconds.
    let now_us = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64;
    assert!(
        first.fencing_token > now_us - 60_000_000,
        "token {} is not floored by the clock",
        first.fencing_token
    );
    assert!(matches!(claim(key.clone()).await, Claim::Busy { .. }));

    // The lease and its counter are lost, as on a replica that never had
    // them: the next claim's token is still larger.
    let _: () = con.del(&key).await.unwrap();
    let _: () = con.del(&counter).await.unwrap();
    let Claim::Acquired(second) = claim(key.clone()).await else {
        panic!("a lost key is acquired again");
    };
    assert!(
        second.fencing_token > first.fencing_token,
        "the token went back: {} after {}",
        second.fencing_token,
        first.fencing_token
    );

    // The stale holder's commit is refused; the current one's writes its
    // key-value op and the done-marker together.
    let writes = KvWrites {
        namespace: "orders".into(),
        ops: vec![KvOp::Increment {
            key: "total".into(),
            delta: 5,
        }],
    };
    let commit = |lease: &Lease| {
        let (store, lease, writes) = (store.clone(), lease.clone(), writes.clone());
        async move {
            store
                .commit_many(&[(Some(&lease), &writes)], window)
                .await
                .pop()
                .unwrap()
                .unwrap()
        }
    };
    assert_eq!(commit(&first).await, Commit::Lost);
    assert_eq!(commit(&second).await, Commit::Done);
    assert_eq!(claim(key.clone()).await, Claim::Done);
    assert_eq!(
        store.kv_get("orders", "total").await.unwrap(),
        Some(b"5".to_vec())
    );
    assert_eq!(
        store.kv_list("orders", "", 10).await.unwrap(),
        vec!["total".to_string()]
    );

    // Renew and release on a key of another handler (another slot).
    let other = store.key_in("billing", "billing", "m-9");
    let Claim::Acquired(lease) = claim(other.clone()).await else {
        panic!("a free key is acquired");
    };
    assert!(matches!(
        store.renew_many(&[&lease], lease_ttl).await[..],
        [Ok(true)]
    ));
    assert!(matches!(
        store.release_many(&[&lease]).await[..],
        [Ok(true)]
    ));
    assert!(matches!(claim(other.clone()).await, Claim::Acquired(_)));
    assert!(store.ping().await.is_ok());

    for k in [
        key.clone(),
        counter.clone(),
        other.clone(),
        store.fence_counter(&other),
        format!("{prefix}:kv/{{orders}}"),
        format!("{prefix}:kv/{{orders}}:total"),
    ] {
        let _: () = con.del(k).await.unwrap();
    }
}
