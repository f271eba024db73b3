//! Batches: what a consumer channel has already received is handled
//! together (one dedup round trip, one hand-off to the sandbox, one wait for
//! confirms), and every message of a batch still settles on its own.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use warren_tests::broker::Rabbit;
use warren_tests::guest;
use warren_tests::process::{Warren, config, eventually, free_port, unique};

/// Batches of `handler` seen so far, and how many of them held one message.
fn batches(w: &Warren, handler: &str) -> (f64, f64) {
    let h = [("handler", handler)];
    let all = w.metric("warren_batch_messages_count", &h);
    let single = w.metric("warren_batch_messages_bucket", &[h[0], ("le", "1.0")]);
    (all, single)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_batch_of_mixed_outcomes_settles_each_message_on_its_own() {
    let q = unique("batch-mixed");
    let (out, dead) = (format!("{q}.out"), format!("{q}.dead"));
    let r = Rabbit::connect().await;
    r.declare(&out).await;
    r.declare(&q).await;
    // The whole burst is in the queue before warren starts, so its first
    // batches are full: acks, rejects, retries and traps side by side.
    let modes = ["ack", "reject", "retry-twice", "ack", "panic", "ack"];
    let msgs: Vec<(String, &str)> = (0..60)
        .map(|i| (format!("m-{i:02}"), modes[i % modes.len()]))
        .collect();
    r.publish_many(
        &q,
        msgs.iter()
            .map(|(id, mode)| (Some(id.clone()), mode.as_bytes().to_vec())),
    )
    .await;

    let port = free_port();
    let extra = format!(
        "consumers = 32\nmax_batch = 32\nprefetch = 64\n\
         [handler.retry]\nmax_attempts = 3\nbackoff_ms = 50\nmax_backoff_ms = 100\n\
         [handler.config]\nout_routing_key = \"{out}\"\n"
    );
    let mut w = Warren::start(
        &config(&guest("sandbox"), "mixed", &q, Some(port), &extra),
        Some(port),
    );
    w.wait_log("consuming", Duration::from_secs(30));

    let want = |m: &str| -> BTreeSet<String> {
        msgs.iter()
            .filter(|(_, mode)| *mode == m)
            .map(|(id, _)| id.clone())
            .collect()
    };
    // Acked messages publish their body; retry-twice publishes the attempt
    // that acked. Each output carries its input's deterministic output id.
    let outputs = r.collect(&out, 40, Duration::from_secs(60)).await;
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

    // Rejects go to the dead-letter queue at once, traps after 3 attempts.
    let dl = r.collect(&dead, 20, Duration::from_secs(60)).await;
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
    assert_eq!(dl.len(), 20);

    eventually(Duration::from_secs(10), "input queue empty", || async {
        r.total(&q).await == 0
    })
    .await;
    let ack = w.metric("warren_messages_total", &[("outcome", "ack")]);
    assert_eq!(ack, 40.0);
    let (all, single) = batches(&w, "mixed");
    assert!(
        all > 0.0 && single < all,
        "no batch held more than one message ({all} batches, {single} of one)"
    );
    r.delete(&[&q, &out, &dead]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn max_batch_1_handles_every_message_alone() {
    let q = unique("batch-one");
    let out = format!("{q}.out");
    let r = Rabbit::connect().await;
    r.declare(&out).await;
    r.declare(&q).await;
    r.publish_many(
        &q,
        (0..50).map(|i| (Some(format!("m-{i}")), format!("m-{i}").into_bytes())),
    )
    .await;
    let port = free_port();
    let extra = format!(
        "consumers = 8\nmax_batch = 1\nprefetch = 64\n[handler.config]\nout_routing_key = \"{out}\"\n"
    );
    let mut w = Warren::start(
        &config(&guest("echo"), "alone", &q, Some(port), &extra),
        Some(port),
    );
    w.wait_log("consuming", Duration::from_secs(30));
    let got = r.collect(&out, 50, Duration::from_secs(60)).await;
    let bodies: BTreeSet<String> = got.iter().map(|g| g.body_str()).collect();
    assert_eq!(bodies.len(), 50);
    eventually(Duration::from_secs(10), "50 acks", || async {
        w.metric("warren_messages_total", &[("outcome", "ack")]) == 50.0
    })
    .await;
    assert_eq!(batches(&w, "alone"), (50.0, 50.0));
    r.delete(&[&q, &out, &format!("{q}.dead")]).await;
}
