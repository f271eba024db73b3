//! Classic queues are declared as version 2, and a queue that already
//! exists as version 1 (declared by an earlier warren) is kept as it is,
//! with a warning, instead of stopping the host or its publishing channel.

use std::time::Duration;

use lapin::types::{AMQPValue, FieldTable};
use warren_tests::broker::{Got, rabbitmqctl};
use warren_tests::fixture::Fixture;

/// The `x-queue-version` of each of `queues`, as the broker lists it
/// (`None`: declared without one, which is version 1).
fn versions(queues: &[String]) -> Vec<Option<String>> {
    let out = rabbitmqctl(&["list_queues", "name", "arguments"]);
    queues
        .iter()
        .map(|q| {
            let line = out
                .lines()
                .find(|l| l.split_whitespace().next() == Some(q.as_str()))
                .unwrap_or_else(|| panic!("queue {q} is not listed:\n{out}"));
            let at = line.find("{\"x-queue-version\",")?;
            let rest = &line[at..];
            let value = rest.split(',').nth(1)?.trim_end_matches(['}', ']']);
            Some(value.to_string())
        })
        .collect()
}

fn attempts(outputs: &[Got]) -> Vec<String> {
    outputs.iter().map(Got::body_str).collect()
}

/// The sandbox guest's `retry` asks for a retry after 100 ms (so one wait
/// queue, `<queue>.retry.100ms`); on the third attempt the message is
/// dead-lettered.
const RETRY: &str = "[handler.retry]\nmax_attempts = 3\n";

#[tokio::test(flavor = "multi_thread")]
async fn new_classic_queues_are_version_2() {
    let mut f = Fixture::new("qv2")
        .guest("sandbox")
        .extra(RETRY)
        .start()
        .await;
    let wait = format!("{}.retry.100ms", f.queue);
    f.track(&wait);
    f.rabbit.publish(&f.queue, "v2-retry", b"retry").await;
    f.rabbit.publish(&f.queue, "v2-ack", b"ack").await;
    f.settle(2, Duration::from_secs(60)).await;
    assert_eq!(attempts(&f.rabbit.drain(&f.out).await), ["ack"]);
    assert_eq!(f.rabbit.drain(&f.dead).await.len(), 1);
    assert_eq!(f.wait_queues(), std::slice::from_ref(&wait));
    assert_eq!(
        versions(&[f.queue.clone(), f.dead.clone(), wait]),
        [Some("2".into()), Some("2".into()), Some("2".into())]
    );
    let logs = f.w().logs();
    assert!(
        !logs.contains("kept at its classic queue version"),
        "{logs}"
    );
    f.assert_nothing_more().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn version_1_queues_from_before_are_kept_and_used() {
    let mut f = Fixture::new("qv1")
        .guest("sandbox")
        .extra(RETRY)
        .prepare()
        .await;
    // The work queue, its dead-letter queue and a wait queue as the warren
    // before version 2 declared them. The fixture declared the work queue
    // as version 2: make it version 1 again.
    f.rabbit.delete(&[&f.queue]).await;
    let wait = format!("{}.retry.100ms", f.queue);
    f.track(&wait);
    f.rabbit.declare_args(&f.queue, FieldTable::default()).await;
    f.rabbit.declare_args(&f.dead, FieldTable::default()).await;
    let mut old_wait = FieldTable::default();
    old_wait.insert("x-message-ttl".into(), AMQPValue::LongLongInt(100));
    old_wait.insert(
        "x-dead-letter-exchange".into(),
        AMQPValue::LongString("".into()),
    );
    old_wait.insert(
        "x-dead-letter-routing-key".into(),
        AMQPValue::LongString(f.queue.as_str().into()),
    );
    f.rabbit.declare_args(&wait, old_wait).await;
    f.launch();

    // Two retries through the old wait queue, then the old dead-letter
    // queue; a reject into it; an ordinary message.
    f.rabbit.publish(&f.queue, "v1-retry", b"retry").await;
    f.rabbit.publish(&f.queue, "v1-reject", b"reject").await;
    f.rabbit.publish(&f.queue, "v1-ack", b"ack").await;
    f.settle(3, Duration::from_secs(60)).await;
    let out = attempts(&f.rabbit.drain(&f.out).await);
    assert_eq!(out, ["ack"], "{}", f.w().logs());
    let mut dead: Vec<String> = f
        .rabbit
        .drain(&f.dead)
        .await
        .into_iter()
        .filter_map(|g| g.message_id)
        .collect();
    dead.sort();
    assert_eq!(dead, ["v1-reject", "v1-retry"]);
    assert_eq!(f.wait_queues(), std::slice::from_ref(&wait));
    assert_eq!(
        versions(&[f.queue.clone(), f.dead.clone(), wait.clone()]),
        [None, None, None],
        "the queues were changed"
    );
    let logs = f.w().logs();
    for q in [&f.queue, &f.dead, &wait] {
        assert!(
            logs.lines()
                .any(|l| l.contains("kept at its classic queue version") && l.contains(q.as_str())),
            "no warning for {q}:\n{logs}"
        );
    }
    // The dead-letter queue's depth is read every 2 s: once kept, it is
    // declared as it is, not refused first each time.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let logs = f.w().logs();
    let refused = |q: &str| {
        logs.lines()
            .filter(|l| l.contains("inequivalent arg") && l.contains(&format!("queue '{q}'")))
            .count()
    };
    assert_eq!(refused(&f.dead), 1, "{logs}");
    // Each refused declaration closed a channel of its own: never the
    // connection, never the publishing channel.
    assert!(!logs.contains("connection to RabbitMQ lost"), "{logs}");
    assert_eq!(
        logs.matches("connected to RabbitMQ; consuming").count(),
        1,
        "{logs}"
    );
    f.assert_nothing_more().await;
}
