//! Batches: what a consumer channel has already received is handled
//! together (one dedup round trip, one hand-off to the sandbox, one wait for
//! confirms), and every message of a batch still settles on its own.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use warren_tests::fixture::Fixture;
use warren_tests::process::Warren;
use warren_tests::redis_server::RedisServer;

/// Batches of `handler` seen so far, and how many of them held one message.
fn batches(w: &Warren, handler: &str) -> (f64, f64) {
    let h = [("handler", handler)];
    let all = w.metric("warren_batch_messages_count", &h);
    let single = w.metric("warren_batch_messages_bucket", &[h[0], ("le", "1.0")]);
    (all, single)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_batch_of_mixed_outcomes_settles_each_message_on_its_own() {
    // The whole burst is in the queue before warren starts, so its first
    // batches are full: acks, rejects, retries and traps side by side.
    let mut f = Fixture::new("batch-mixed")
        .guest("sandbox")
        .handler("mixed")
        .extra(
            "consumers = 32\nmax_batch = 32\nprefetch = 64\n\
             [handler.retry]\nmax_attempts = 3\nbackoff_ms = 50\nmax_backoff_ms = 100\n",
        )
        .prepare()
        .await;
    let modes = ["ack", "reject", "retry-twice", "ack", "panic", "ack"];
    let msgs: Vec<(String, &str)> = (0..60)
        .map(|i| (format!("m-{i:02}"), modes[i % modes.len()]))
        .collect();
    f.rabbit
        .publish_many(
            &f.queue,
            msgs.iter()
                .map(|(id, mode)| (Some(id.clone()), mode.as_bytes().to_vec())),
        )
        .await;
    f.launch();
    let r = &f.rabbit;

    let want = |m: &str| -> BTreeSet<String> {
        msgs.iter()
            .filter(|(_, mode)| *mode == m)
            .map(|(id, _)| id.clone())
            .collect()
    };
    // Acked messages publish their body; retry-twice publishes the attempt
    // that acked. Each output carries its input's deterministic output id.
    let mut outputs = r.collect(&f.out, 40, Duration::from_secs(60)).await;
    // Rejects go to the dead-letter queue at once, traps after 3 attempts.
    let mut dl = r.collect(&f.dead, 20, Duration::from_secs(60)).await;
    // Every input settled: a late duplicate, had there been one, is in its
    // queue by now.
    f.settle(60, Duration::from_secs(30)).await;
    outputs.extend(r.drain(&f.out).await);
    dl.extend(r.drain(&f.dead).await);
    let mut by_output: BTreeMap<String, String> = BTreeMap::new();
    for g in &outputs {
        by_output.insert(g.message_id.clone().unwrap(), g.body_str());
    }
    for id in want("ack") {
        let oid = warren::pipeline::output_message_id("mixed", &id, 0);
        assert_eq!(by_output.get(&oid).map(String::as_str), Some("ack"), "{id}");
    }
    for id in want("retry-twice") {
        let oid = warren::pipeline::output_message_id("mixed", &id, 0);
        assert_eq!(
            by_output.get(&oid).map(String::as_str),
            Some("attempt 3"),
            "{id}"
        );
    }
    assert_eq!(outputs.len(), 40, "no output twice, none for a failure");

    let kinds: BTreeMap<String, (String, String)> = dl
        .iter()
        .map(|g| {
            (
                g.message_id.clone().unwrap(),
                (
                    g.header("x-warren-error-kind").unwrap(),
                    g.header("x-warren-attempt").unwrap(),
                ),
            )
        })
        .collect();
    for id in want("reject") {
        assert_eq!(kinds[&id], ("reject".into(), "1".into()), "{id}");
    }
    for id in want("panic") {
        assert_eq!(kinds[&id], ("trap".into(), "3".into()), "{id}");
    }
    assert_eq!(dl.len(), 20, "a dead letter twice");

    let w = f.w();
    assert_eq!(w.outcome("ack"), 40);
    assert_eq!(w.outcome("dead_letter"), 20);
    let (all, single) = batches(w, "mixed");
    assert!(
        all > 0.0 && single < all,
        "no batch held more than one message ({all} batches, {single} of one)"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn max_batch_1_handles_every_message_alone() {
    let mut f = Fixture::new("batch-one")
        .handler("alone")
        .extra("consumers = 8\nmax_batch = 1\nprefetch = 64\n")
        .prepare()
        .await;
    f.rabbit
        .publish_many(
            &f.queue,
            (0..50).map(|i| (Some(format!("m-{i}")), format!("m-{i}").into_bytes())),
        )
        .await;
    f.launch();
    let r = &f.rabbit;
    let mut got = r.collect(&f.out, 50, Duration::from_secs(60)).await;
    // Keep looking past the 50th: a late duplicate would be in the queue
    // once every input settled.
    f.settle(50, Duration::from_secs(30)).await;
    got.extend(r.drain(&f.out).await);
    assert_eq!(got.len(), 50, "an output twice");
    let bodies: BTreeSet<String> = got.iter().map(|g| g.body_str()).collect();
    assert_eq!(bodies.len(), 50);
    assert_eq!(f.w().outcome("ack"), 50);
    assert_eq!(batches(f.w(), "alone"), (50.0, 50.0));
}

/// Script calls Redis has run since it started (`INFO commandstats`).
async fn evalsha_calls(url: &str) -> u64 {
    let client = redis::Client::open(url).expect("redis url");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("connect to the test's redis");
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut conn)
        .await
        .expect("info commandstats");
    info.lines()
        .find_map(|l| l.strip_prefix("cmdstat_evalsha:calls="))
        .and_then(|rest| rest.split(',').next())
        .map_or(0, |n| n.parse().expect("a call count"))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_batch_claims_and_completes_its_keys_in_one_script_call_each() {
    // A Redis of the test's own, so that its command counts are this
    // test's alone.
    let redis = RedisServer::start();
    let mut f = Fixture::new("batch-redis")
        .handler("scripted")
        .redis(&redis.url(), "pause")
        .extra("consumers = 32\nmax_batch = 32\nprefetch = 64\n")
        .prepare()
        .await;
    const N: usize = 96;
    f.rabbit
        .publish_many(
            &f.queue,
            (0..N).map(|i| (Some(format!("m-{i}")), format!("m-{i}").into_bytes())),
        )
        .await;
    f.launch();
    let mut got = f.rabbit.collect(&f.out, N, Duration::from_secs(60)).await;
    f.settle(N as u64, Duration::from_secs(30)).await;
    got.extend(f.rabbit.drain(&f.out).await);
    assert_eq!(got.len(), N, "an output twice or missing");

    let (all, single) = batches(f.w(), "scripted");
    assert!(
        single < all && all < N as f64,
        "no batch held more than one message ({all} batches, {single} of one)"
    );
    // One claim and one done-marker call per batch, whatever its size:
    // not one per message.
    let calls = evalsha_calls(&redis.url()).await;
    assert_eq!(
        calls,
        2 * all as u64,
        "{calls} script calls for {all} batches of {N} messages (redis log: {})",
        redis.log()
    );
}
