//! `warren run` against messages a hostile publisher writes byte by byte:
//! headers nested as deep as the broker lets through, header frames at the
//! size limit, reasons of a MiB, forged bookkeeping. Each must end
//! dead-lettered (or handled) without killing the process or its
//! connection, and the queue must go on.

use std::time::Duration;

use warren_tests::broker::Rabbit;
use warren_tests::fixture::SHARED_REDIS;
use warren_tests::guest;
use warren_tests::process::{Warren, config, eventually, unique};
use warren_tests::raw_amqp::{
    RawProps, RawPublisher, entry, long_long, nested_arrays, table_bytes, text,
};

const LOST: &str = "connection to RabbitMQ lost";

fn props(id: &str, headers: &[Vec<u8>]) -> RawProps {
    let table = table_bytes(headers);
    RawProps {
        message_id: Some(id.as_bytes().to_vec()),
        // RawProps takes the entries; the length prefix is its own.
        headers: Some(table[4..].to_vec()),
        ..RawProps::default()
    }
}

/// The deepest nesting of one header `h` whose header frame still fits the
/// broker's `frame_max`.
fn deepest(frame_max: u32, id: &str) -> usize {
    let fixed = RawPublisher::header_frame_len(&props(id, &[entry(b"h", b"V")]));
    (frame_max as usize - fixed) / 5
}

/// The process never lost its broker connection over the test.
fn assert_connection_kept(w: &Warren) {
    let logs = w.logs();
    assert!(!logs.contains(LOST), "the connection was lost:\n{logs}");
}

fn start(module: &str, q: &str, extra: &str) -> Warren {
    let mut w = Warren::start(&config(&guest(module), "hostile", q, None, extra), None);
    w.wait_log("consuming", Duration::from_secs(30));
    w
}

/// The sandbox guest on `q`, publishing to `out` (declared here), with
/// `keys` added to its handler table.
async fn sandbox_to(r: &Rabbit, q: &str, out: &str, keys: &str) -> Warren {
    r.declare(out).await;
    let extra = format!("{keys}[handler.config]\nout_routing_key = \"{out}\"\n");
    start("sandbox", q, &extra)
}

#[tokio::test(flavor = "multi_thread")]
async fn headers_nested_as_deep_as_the_broker_passes_are_dead_lettered_and_the_queue_goes_on() {
    let q = unique("deep");
    let (out, dead) = (format!("{q}.out"), format!("{q}.dead"));
    let r = Rabbit::connect().await;
    let w = sandbox_to(&r, &q, &out, "").await;

    let mut raw = RawPublisher::connect();
    let max = deepest(raw.frame_max, "deep-max");
    assert!(
        max > 20_000,
        "frame_max {} allows only {max}",
        raw.frame_max
    );
    // Every depth from just past the limit to the most the broker accepts:
    // the publish below fails the test if the broker refuses one.
    let hostile = [33, 1_500, 5_000, max];
    for d in hostile {
        let id = format!(
            "deep-{}",
            if d == max {
                "max".into()
            } else {
                d.to_string()
            }
        );
        raw.publish(
            &q,
            &props(&id, &[entry(b"h", &nested_arrays(d))]),
            b"sleep:0 deep",
        );
    }
    raw.publish(
        &q,
        &props("at-limit", &[entry(b"h", &nested_arrays(32))]),
        b"sleep:0 at-limit",
    );
    raw.publish(&q, &props("plain", &[]), b"sleep:0 plain");

    let handled = r.collect(&out, 2, Duration::from_secs(60)).await;
    let mut bodies: Vec<String> = handled.iter().map(|g| g.body_str()).collect();
    bodies.sort();
    assert_eq!(bodies, ["sleep:0 at-limit", "sleep:0 plain"]);
    let dl = r
        .collect(&dead, hostile.len(), Duration::from_secs(60))
        .await;
    assert_eq!(dl.len(), hostile.len());
    for g in &dl {
        assert_eq!(
            g.header("x-warren-error-kind").as_deref(),
            Some("invalid-headers")
        );
        let reason = g.header("x-warren-reason").unwrap_or_default();
        assert!(reason.contains("at most 32"), "{reason}");
        // The copy keeps what fits: the deep header is named, not carried.
        assert!(!g.headers.contains_key("h"));
        assert_eq!(g.header("x-warren-dropped-headers").as_deref(), Some("h"));
        assert_eq!(g.body_str(), "sleep:0 deep");
    }
    assert_connection_kept(&w);
    r.delete(&[&q, &out, &dead]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reason_of_a_mib_is_capped_in_the_header_and_the_log() {
    let q = unique("reason");
    let dead = format!("{q}.dead");
    let r = Rabbit::connect().await;
    let w = start("sandbox", &q, "");
    // The sandbox guest rejects an unknown mode with the mode in the
    // reason: a 1 MiB body makes a reason of more than 1 MiB.
    let body = "m".repeat(1 << 20);
    r.publish(&q, "huge-reason", body.as_bytes()).await;
    r.publish(&q, "after", b"reject").await;

    let dl = r.collect(&dead, 2, Duration::from_secs(60)).await;
    let huge = dl
        .iter()
        .find(|g| g.message_id.as_deref() == Some("huge-reason"))
        .expect("the huge-reason message is dead-lettered");
    let reason = huge.header("x-warren-reason").unwrap_or_default();
    assert!(reason.len() <= 1024, "reason of {} bytes", reason.len());
    assert!(reason.contains("more bytes]"), "{reason}");
    assert_eq!(huge.body.len(), body.len());
    let logs = w.logs();
    assert!(!logs.contains(LOST), "the connection was lost");
    assert!(
        logs.lines().all(|l| l.len() < 16 * 1024),
        "a log line longer than 16 KiB"
    );
    r.delete(&[&q, &dead]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failing_message_with_headers_at_the_frame_limit_is_dead_lettered_with_what_fits() {
    let q = unique("bighdr");
    let dead = format!("{q}.dead");
    let r = Rabbit::connect().await;
    let w = start(
        "sandbox",
        &q,
        "[handler.retry]\nmax_attempts = 5\nbackoff_ms = 100\n",
    );
    let mut raw = RawPublisher::connect();
    // One header as large as the frame allows, one small one, and a retry
    // from the guest: the retry copy would not fit with warren's
    // bookkeeping and the broker's x-death on the way back.
    let small = entry(b"small", &text(b"kept"));
    let probe = props("big", &[small.clone(), entry(b"big", &text(b""))]);
    let room = raw.frame_max as usize - RawPublisher::header_frame_len(&probe);
    let big = entry(b"big", &text(&vec![b'b'; room]));
    let p = props("big", &[small, big]);
    assert_eq!(RawPublisher::header_frame_len(&p), raw.frame_max as usize);
    raw.publish(&q, &p, b"retry");

    let dl = r.collect(&dead, 1, Duration::from_secs(60)).await;
    let g = &dl[0];
    assert_eq!(
        g.header("x-warren-error-kind").as_deref(),
        Some("too-large")
    );
    assert_eq!(g.header("x-warren-dropped-headers").as_deref(), Some("big"));
    assert_eq!(g.header("small").as_deref(), Some("kept"));
    assert_eq!(g.body_str(), "retry");
    assert_connection_kept(&w);
    r.delete(&[&q, &dead]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_forged_attempt_does_not_shorten_the_retries() {
    let q = unique("forged-attempt");
    let dead = format!("{q}.dead");
    let r = Rabbit::connect().await;
    let w = start(
        "sandbox",
        &q,
        "[handler.retry]\nmax_attempts = 3\nbackoff_ms = 100\nmax_backoff_ms = 200\n",
    );
    let mut raw = RawPublisher::connect();
    let forged = [
        entry(b"x-warren-attempt", &long_long(99)),
        entry(b"x-warren-exchange", &text(b"")),
        entry(b"x-warren-routing-key", &text(q.as_bytes())),
        entry(b"x-warren-sig", &text(&[b'0'; 64])),
    ];
    raw.publish(&q, &props("forged", &forged), b"retry");

    let dl = r.collect(&dead, 1, Duration::from_secs(60)).await;
    let g = &dl[0];
    // Attempts 1 and 2 went through the wait queue; the third ran out.
    assert_eq!(g.header("x-warren-attempt").as_deref(), Some("3"));
    assert_eq!(
        w.logs().matches("retry scheduled").count(),
        2,
        "{}",
        w.logs()
    );
    assert!(w.logs().contains("wrong signature"));
    r.delete(&[&q, &dead]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_forged_routing_key_does_not_redirect_the_output() {
    let q = unique("forged-rk");
    let (out, victim) = (format!("{q}.out"), format!("{q}.victim"));
    let r = Rabbit::connect().await;
    r.declare(&out).await;
    r.declare(&format!("{victim}.out")).await;
    // The echo guest publishes to the input's routing key + ".out".
    let w = start("echo", &q, "");
    let mut raw = RawPublisher::connect();
    let forged = [
        entry(b"x-warren-attempt", &long_long(1)),
        entry(b"x-warren-exchange", &text(b"")),
        entry(b"x-warren-routing-key", &text(victim.as_bytes())),
        entry(b"x-warren-module", &text(b"sha256:forged")),
    ];
    raw.publish(&q, &props("forged", &forged), b"hello");

    let got = r.collect(&out, 1, Duration::from_secs(60)).await;
    assert_eq!(got[0].body_str(), "hello");
    // Warren's own module digest, not the forged one, and no other
    // bookkeeping carried over from the input.
    let module = got[0].header("x-warren-module").unwrap_or_default();
    assert!(module.starts_with("sha256:") && module != "sha256:forged");
    assert!(!got[0].headers.contains_key("x-warren-routing-key"));
    eventually(Duration::from_secs(10), "input queue empty", || async {
        r.total(&q).await == 0
    })
    .await;
    assert_eq!(r.total(&format!("{victim}.out")).await, 0);
    drop(w);
    r.delete(&[&q, &out, &format!("{victim}.out"), &format!("{q}.dead")])
        .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_body_over_the_handlers_limit_is_dead_lettered_at_once_and_whole() {
    let q = unique("big-body");
    let (out, dead) = (format!("{q}.out"), format!("{q}.dead"));
    let r = Rabbit::connect().await;
    let w = sandbox_to(&r, &q, &out, "max_message_bytes = 65536\n").await;

    // One byte over the limit, then one at it, then a small one: the first
    // never reaches the guest (no attempt, no retry), the others run.
    let mut over = b"sleep:0 ".to_vec();
    over.resize(65_537, b'o');
    let mut at = b"sleep:0 ".to_vec();
    at.resize(65_536, b'a');
    r.publish(&q, "over", &over).await;
    r.publish(&q, "at", &at).await;
    r.publish(&q, "plain", b"sleep:0 plain").await;

    let handled = r.collect(&out, 2, Duration::from_secs(60)).await;
    let mut sizes: Vec<usize> = handled.iter().map(|g| g.body.len()).collect();
    sizes.sort();
    assert_eq!(sizes, [13, 65_536]);
    let dl = r.collect(&dead, 1, Duration::from_secs(60)).await;
    assert_eq!(dl.len(), 1);
    let g = &dl[0];
    assert_eq!(g.message_id.as_deref(), Some("over"));
    assert_eq!(
        g.header("x-warren-error-kind").as_deref(),
        Some("body-too-large")
    );
    let reason = g.header("x-warren-reason").unwrap_or_default();
    assert!(
        reason.contains("65537 bytes") && reason.contains("at most 65536"),
        "{reason}"
    );
    assert_eq!(g.body, over, "the dead-lettered copy keeps the whole body");
    // Dead-lettered on its first and only delivery to the handler.
    assert_eq!(g.header("x-warren-attempt").as_deref(), Some("1"));
    assert_connection_kept(&w);
    r.delete(&[&q, &out, &dead]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dedup_key_of_a_hundred_kib_costs_redis_a_short_key_and_still_deduplicates() {
    let q = unique("long-key");
    let (out, dead) = (format!("{q}.out"), format!("{q}.dead"));
    let prefix = unique("long-key-redis");
    let r = Rabbit::connect().await;
    r.declare(&out).await;
    let cfg = config(
        &guest("sandbox"),
        "hostile",
        &q,
        None,
        &format!(
            "[handler.dedup]\nkey = \"header:k\"\n[handler.config]\nout_routing_key = \"{out}\"\n"
        ),
    )
    .replacen(
        "[[handler]]",
        &format!("[redis]\nurl = \"{SHARED_REDIS}\"\nprefix = \"{prefix}\"\n\n[[handler]]"),
        1,
    );
    let mut w = Warren::start(&cfg, None);
    w.wait_log("consuming", Duration::from_secs(30));

    // Two messages with one 100 KiB key (the second a duplicate), then one
    // whose key differs only in its last byte.
    let long = vec![b'k'; 100_000];
    let mut other = long.clone();
    *other.last_mut().unwrap() = b'x';
    let mut raw = RawPublisher::connect();
    raw.publish(&q, &props("a1", &[entry(b"k", &text(&long))]), b"sleep:0 a");
    raw.publish(&q, &props("a2", &[entry(b"k", &text(&long))]), b"sleep:0 a");
    raw.publish(
        &q,
        &props("b1", &[entry(b"k", &text(&other))]),
        b"sleep:0 b",
    );

    let handled = r.collect(&out, 2, Duration::from_secs(60)).await;
    let mut bodies: Vec<String> = handled.iter().map(|g| g.body_str()).collect();
    bodies.sort();
    assert_eq!(bodies, ["sleep:0 a", "sleep:0 b"]);
    // The duplicate is settled (acked as done, or deferred first if it
    // came in the same batch) without another output.
    eventually(
        Duration::from_secs(60),
        "the input queue to empty",
        || async { r.total(&q).await == 0 },
    )
    .await;
    assert!(r.drain(&out).await.is_empty(), "the duplicate ran again");

    let mut con = redis::Client::open(SHARED_REDIS)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}:*"))
        .query_async(&mut con)
        .await
        .unwrap();
    assert!(keys.len() >= 2, "{keys:?}");
    for k in &keys {
        assert!(
            k.len() < 200,
            "a Redis key of {} bytes: {}...",
            k.len(),
            &k[..80]
        );
    }
    assert_connection_kept(&w);
    let _: () = redis::cmd("DEL")
        .arg(&keys)
        .query_async(&mut con)
        .await
        .unwrap();
    r.delete(&[&q, &out, &dead]).await;
}
