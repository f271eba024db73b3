//! `warren run` against deliveries the AMQP client cannot parse: a message
//! id, a content type or a header name that is not UTF-8. The client
//! closes the connection on such a frame before warren sees the delivery;
//! each must still end in the dead-letter queue (kind `unparseable`, with
//! a reason naming the part at fault) after at most one lost connection,
//! and every ordinary message around it must be handled once.

use std::time::Duration;

use lapin::types::AMQPValue;
use warren_tests::fixture::{Fixture, Running, SHARED_REDIS};
use warren_tests::process::eventually;
use warren_tests::raw_amqp::{RawProps, RawPublisher, entry, table_bytes, text};
use warren_tests::tally::assert_once_each;

const LOST: &str = "connection to RabbitMQ lost";
const MOVED: &str = "unparseable message moved to the dead-letter queue";

/// Plain properties: a message id (the dedup key) and nothing else.
fn plain(id: &str) -> RawProps {
    RawProps {
        message_id: Some(id.as_bytes().to_vec()),
        ..RawProps::default()
    }
}

/// `n` ordinary messages, published raw to the work queue in order; their
/// bodies (which the echo guest sends on to the output queue).
fn publish_ordinary(raw: &mut RawPublisher, queue: &str, tag: &str, n: usize) -> Vec<String> {
    (0..n)
        .map(|i| {
            let body = format!("{tag}-{i}");
            raw.publish(queue, &plain(&body), body.as_bytes());
            body
        })
        .collect()
}

/// Checks the one dead-lettered copy of the bad message: kind, reason,
/// who moved it, its body and (as bytes) the properties as they came.
async fn assert_quarantined(f: &Running, reason: &str, raw_bytes: &[u8]) {
    let dl = f.rabbit.collect(&f.dead, 1, Duration::from_secs(60)).await;
    assert_eq!(dl.len(), 1);
    let g = &dl[0];
    assert_eq!(
        g.header("x-warren-error-kind").as_deref(),
        Some("unparseable")
    );
    let got = g.header("x-warren-reason").unwrap_or_default();
    assert_eq!(got, reason);
    assert_eq!(g.header("x-warren-handler").as_deref(), Some("echo"));
    assert!(g.header("x-warren-host").is_some_and(|h| !h.is_empty()));
    assert_eq!(
        g.header("x-warren-queue").as_deref(),
        Some(f.queue.as_str())
    );
    assert_eq!(g.body_str(), "the bad one");
    match g.headers.get("x-warren-raw-properties") {
        Some(AMQPValue::ByteArray(b)) => assert!(
            b.as_slice()
                .windows(raw_bytes.len())
                .any(|w| w == raw_bytes),
            "raw properties {:?} do not hold {raw_bytes:?}",
            b.as_slice()
        ),
        other => panic!("x-warren-raw-properties is {other:?}"),
    }
}

/// The connection was lost at most once, and the quarantine (not some
/// other path) moved exactly one message.
fn assert_one_loss_one_quarantined(f: &Running) {
    let logs = f.w().logs();
    let lost = logs.matches(LOST).count();
    assert!(lost <= 1, "{lost} lost connections:\n{logs}");
    assert_eq!(logs.matches(MOVED).count(), 1, "{logs}");
    assert_eq!(
        f.w()
            .metric("warren_quarantined_total", &[("handler", "echo")]),
        1.0
    );
}

/// One host; the bad message first, then ordinary ones: the bad one is
/// dead-lettered with `reason`, the others are handled once each.
async fn bad_first_then_ordinary(name: &str, bad: RawProps, reason: &str, raw_bytes: &[u8]) {
    let f = Fixture::new(name).start().await;
    let mut raw = RawPublisher::connect();
    raw.publish(&f.queue, &bad, b"the bad one");
    let bodies = publish_ordinary(&mut raw, &f.queue, name, 5);

    assert_quarantined(&f, reason, raw_bytes).await;
    f.settle(bodies.len() as u64, Duration::from_secs(60)).await;
    let out = f
        .rabbit
        .collect(&f.out, bodies.len(), Duration::from_secs(30))
        .await;
    assert_once_each(&out, &bodies);
    f.assert_nothing_more().await;
    assert_one_loss_one_quarantined(&f);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_message_id_that_is_not_utf8_is_dead_lettered_and_the_queue_goes_on() {
    let bad = RawProps {
        message_id: Some(vec![0xFF, 0xFE]),
        ..RawProps::default()
    };
    bad_first_then_ordinary(
        "bad-id",
        bad,
        "property message-id is not valid UTF-8",
        &[2, 0xFF, 0xFE],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_header_name_that_is_not_utf8_is_dead_lettered_and_the_queue_goes_on() {
    let table = table_bytes(&[
        entry(b"fine", &text(b"kept")),
        entry(b"bad\xff", &text(b"value")),
    ]);
    let bad = RawProps {
        message_id: Some(b"bad-header".to_vec()),
        headers: Some(table[4..].to_vec()),
        ..RawProps::default()
    };
    bad_first_then_ordinary(
        "bad-header",
        bad,
        "header name \"bad\\xff\" is not valid UTF-8",
        b"\x04bad\xff",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_content_type_that_is_not_utf8_is_dead_lettered_and_the_queue_goes_on() {
    let bad = RawProps {
        content_type: Some(b"text/pl\xe9in".to_vec()),
        message_id: Some(b"bad-type".to_vec()),
        ..RawProps::default()
    };
    bad_first_then_ordinary(
        "bad-type",
        bad,
        "property content-type is not valid UTF-8",
        b"text/pl\xe9in",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bad_message_inside_a_burst_loses_nothing_around_it() {
    // Published before the host starts, so the first ten are prefetched and
    // in flight when the bad one kills the connection: with dedup on, those
    // that were handled but not acked come back as duplicates and produce
    // no second output.
    let mut f = Fixture::new("burst")
        .extra("prefetch = 32\n")
        .redis(SHARED_REDIS, "pause")
        .prepare()
        .await;
    let mut raw = RawPublisher::connect();
    let mut bodies = publish_ordinary(&mut raw, &f.queue, "before", 10);
    raw.publish(
        &f.queue,
        &RawProps {
            message_id: Some(vec![0xFF, 0xFE]),
            ..RawProps::default()
        },
        b"the bad one",
    );
    bodies.extend(publish_ordinary(&mut raw, &f.queue, "after", 10));
    f.launch();

    assert_quarantined(
        &f,
        "property message-id is not valid UTF-8",
        &[2, 0xFF, 0xFE],
    )
    .await;
    let out = f
        .rabbit
        .collect(&f.out, bodies.len(), Duration::from_secs(60))
        .await;
    assert_once_each(&out, &bodies);
    // Everything settled: nothing ready in the work and wait queues and
    // nothing in flight, so no later output can come.
    eventually(
        Duration::from_secs(60),
        "work and wait queues empty, nothing in flight",
        || async {
            let mut queues = f.wait_queues();
            queues.push(f.queue.clone());
            f.rabbit.ready(&queues).await.iter().all(|n| *n == 0) && f.w().in_flight() == 0
        },
    )
    .await;
    eventually(
        Duration::from_secs(30),
        "every delivery settled",
        || async { f.w().settled() >= bodies.len() as u64 },
    )
    .await;
    f.assert_nothing_more().await;
    assert_one_loss_one_quarantined(&f);
}
