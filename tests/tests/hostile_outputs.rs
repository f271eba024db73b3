//! `warren run` against a guest that attacks the host through what it
//! hands it: outputs whose headers alias one large string or expand
//! exponentially, huge routing keys, floods of log lines, huge reasons,
//! forged `x-warren-*` headers and outputs to an exchange that does not
//! exist. Each such message must end dead-lettered with a reason the
//! guest was given (or be handled), ordinary messages on the same host
//! must keep flowing, the host's memory must stay bounded, and SIGTERM
//! must still stop it cleanly.

use std::collections::HashMap;
use std::time::Duration;

use warren_tests::broker::Got;
use warren_tests::fixture::{Fixture, Running};
use warren_tests::process::{peak_rss_mb, unique};

/// The guests' memory cap in these tests (the default).
const GUEST_MEMORY_MB: u64 = 64;

/// The bound on the host's peak resident memory: the runtime, the broker
/// and Redis clients, one guest's linear memory at a time per batch slot
/// (two here, on two cores) at its cap, and what the publish budget lets
/// a message buffer. Without the limits one of these messages took the
/// host past a gibibyte.
const RSS_BOUND_MB: u64 = 6 * GUEST_MEMORY_MB;

/// Publishes `n` ordinary messages (`ack ok-<tag>-<i>`), each one echoed
/// to the output queue.
async fn ordinary(f: &Running, tag: &str, n: usize) {
    f.rabbit
        .publish_many(
            &f.queue,
            (0..n).map(|i| {
                let id = format!("ok-{tag}-{i}");
                (Some(id.clone()), format!("ack {id}").into_bytes())
            }),
        )
        .await;
}

fn by_id(got: Vec<Got>) -> HashMap<String, Got> {
    got.into_iter()
        .map(|g| (g.message_id.clone().expect("a message id"), g))
        .collect()
}

/// The dead-letter reason of `id`, after checking its kind.
fn reason(dead: &HashMap<String, Got>, id: &str, kind: &str) -> String {
    let g = dead
        .get(id)
        .unwrap_or_else(|| panic!("{id} was not dead-lettered; got {:?}", dead.keys()));
    assert_eq!(
        g.header("x-warren-error-kind").as_deref(),
        Some(kind),
        "{id}: {:?}",
        g.header("x-warren-reason")
    );
    g.header("x-warren-reason").expect("a reason header")
}

async fn terminate(f: &mut Running) {
    let w = f.w_mut();
    w.signal("TERM");
    let status = w.wait(Duration::from_secs(60));
    assert!(status.success(), "exit status {status}:\n{}", w.logs());
}

#[tokio::test(flavor = "multi_thread")]
async fn outputs_that_would_amplify_host_memory_are_refused_at_publish() {
    let mut f = Fixture::new("hostile-mem")
        .guest("hostile")
        .handler("hostile")
        .extra(&format!(
            "memory_mb = {GUEST_MEMORY_MB}\ntimeout_ms = 20000\n[handler.retry]\nmax_attempts = 2\nbackoff_ms = 50\nmax_backoff_ms = 100\n"
        ))
        .start()
        .await;
    let pid = f.w().pid();
    let attacks: [(&str, &str); 6] = [
        // 100,000 names x 1 MiB: 100 GiB if copied.
        ("alias-count", "alias-headers 100000 1048576"),
        // Few enough names to be counted, each 1 MiB: over the byte budget.
        ("alias-bytes", "alias-headers 4000 1048576"),
        // 2^31 values once expanded.
        ("bomb", "nested-bomb 31"),
        // 100 x 4 MiB routing keys: 400 MiB buffered if accepted.
        ("routing-key", "big-routing-key 100"),
        ("reason", "huge-reason 4194304"),
        ("forge", "forge-warren-header"),
    ];
    ordinary(&f, "before", 20).await;
    for (id, body) in attacks {
        f.rabbit.publish(&f.queue, id, body.as_bytes()).await;
    }
    f.rabbit.publish(&f.queue, "log-flood", b"log-flood").await;
    f.rabbit
        .publish(&f.queue, "empty-log-flood", b"empty-log-flood")
        .await;
    ordinary(&f, "after", 20).await;

    let out = f.rabbit.collect(&f.out, 40, Duration::from_secs(120)).await;
    let dead = by_id(
        f.rabbit
            .collect(&f.dead, attacks.len(), Duration::from_secs(120))
            .await,
    );
    f.settle(40 + attacks.len() as u64 + 2, Duration::from_secs(60))
        .await;
    f.assert_nothing_more().await;
    let ok: Vec<String> = out.iter().map(|g| g.body_str()).collect();
    assert_eq!(ok.len(), 40, "{ok:?}");
    assert!(ok.iter().all(|b| b.starts_with("ack ok-")), "{ok:?}");

    // Each refusal reached the guest (it rejected with what it was told).
    let r = reason(&dead, "alias-count", "reject");
    assert!(
        r.contains("LimitExceeded") && r.contains("100000 entries"),
        "{r}"
    );
    let r = reason(&dead, "alias-bytes", "reject");
    assert!(r.contains("LimitExceeded") && r.contains("bytes"), "{r}");
    let r = reason(&dead, "bomb", "reject");
    assert!(r.contains("LimitExceeded") && r.contains("values"), "{r}");
    let r = reason(&dead, "routing-key", "reject");
    assert!(
        r.contains("routing key is 4194304 bytes; at most 255"),
        "{r}"
    );
    let r = reason(&dead, "forge", "reject");
    assert!(
        r.contains("NotAllowed") && r.contains("x-warren-attempt"),
        "{r}"
    );
    // The huge reason was cut to the 1 KiB cap on a character boundary
    // (`é` is two bytes) before it reached the header.
    let r = reason(&dead, "reason", "reject");
    assert!(r.len() <= 1024, "{} bytes", r.len());
    let (kept, note) = r.split_once("... [").expect("a truncation note");
    assert!(kept.len() >= 1024 - 32, "{} bytes", kept.len());
    assert!(kept.chars().all(|c| c == 'é'));
    assert_eq!(note, format!("{} more bytes]", 4194304 - kept.len()));

    // Floods were cut at the log caps and counted; nothing long reached
    // the host's log.
    let w = f.w();
    let logs = w.logs();
    let guest_lines = logs
        .lines()
        .filter(|l| l.contains("warren::guest") && l.contains("empty-log-flood"))
        .count();
    assert!(guest_lines <= 1001, "{guest_lines} guest lines logged");
    let dropped_lines = w.metric(
        "warren_guest_output_dropped_total",
        &[("handler", "hostile"), ("channel", "log")],
    );
    assert!(
        dropped_lines >= (1_000_000 - 1000 + 100_000 - 16) as f64,
        "only {dropped_lines} log lines counted as dropped"
    );
    let reason_cut = w.metric(
        "warren_guest_output_dropped_total",
        &[("channel", "reason")],
    );
    assert!(reason_cut >= (4194304 - 1024) as f64, "{reason_cut}");
    let stdio_cut = w.metric("warren_guest_output_dropped_total", &[("channel", "stdio")]);
    assert!(stdio_cut >= (100_000 * 1025 - 4096) as f64, "{stdio_cut}");
    let longest = logs.lines().map(str::len).max().unwrap_or(0);
    assert!(longest < 32 << 10, "a log line of {longest} bytes");

    let peak = peak_rss_mb(pid);
    eprintln!("host peak RSS {peak} MiB (bound {RSS_BOUND_MB} MiB)");
    assert!(
        peak < RSS_BOUND_MB,
        "host peak RSS {peak} MiB, bound {RSS_BOUND_MB} MiB"
    );
    terminate(&mut f).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_output_to_a_missing_exchange_fails_that_message_alone() {
    let missing = unique("no-such-exchange");
    let mut f = Fixture::new("hostile-exchange")
        .guest("hostile")
        .handler("hostile")
        .extra(&format!(
            "[handler.retry]\nmax_attempts = 3\nbackoff_ms = 50\nmax_backoff_ms = 100\n[handler.publish]\nallow = [\"\", \"{missing}\"]\n"
        ))
        .start()
        .await;
    let pid = f.w().pid();
    ordinary(&f, "before", 30).await;
    f.rabbit
        .publish(
            &f.queue,
            "missing",
            format!("publish-missing-exchange {missing}").as_bytes(),
        )
        .await;
    ordinary(&f, "after", 30).await;

    let out = f.rabbit.collect(&f.out, 60, Duration::from_secs(60)).await;
    let dead = by_id(f.rabbit.collect(&f.dead, 1, Duration::from_secs(60)).await);
    f.settle(61, Duration::from_secs(60)).await;
    f.assert_nothing_more().await;
    assert_eq!(out.len(), 60);

    // Retried by policy and dead-lettered with the reason, each attempt
    // counted.
    let r = reason(&dead, "missing", "publish");
    assert!(
        r.contains(&format!("exchange {missing:?} does not exist")),
        "{r}"
    );
    assert_eq!(
        dead["missing"].header("x-warren-attempt").as_deref(),
        Some("3")
    );
    // The publishing channel, and so the connection, survived.
    let w = f.w();
    assert_eq!(
        w.metric("warren_amqp_reconnects_total", &[]),
        0.0,
        "{}",
        w.logs()
    );
    assert!(
        !w.logs().contains("connection to RabbitMQ lost"),
        "the connection went down:\n{}",
        w.logs()
    );
    assert!(peak_rss_mb(pid) < RSS_BOUND_MB);
    terminate(&mut f).await;
}
