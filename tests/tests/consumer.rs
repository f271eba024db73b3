//! `warren run` against the real broker: a consumer group, outcomes, retries,
//! dead-letters, the outbox, shutdown and reconnect.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use warren_tests::broker::{Rabbit, connections, rabbitmqctl};
use warren_tests::fixture::Fixture;
use warren_tests::guest;
use warren_tests::process::{config, eventually};

fn ids(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("m-{i:05}")).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn two_processes_share_10000_messages_exactly_once() {
    let f = Fixture::new("group")
        .extra("prefetch = 64\n")
        .processes(2)
        .start()
        .await;
    let (r, q, out) = (&f.rabbit, &f.queue, &f.out);

    let all = ids(10_000);
    r.publish_many(
        q,
        all.iter()
            .map(|id| (Some(id.clone()), id.clone().into_bytes())),
    )
    .await;
    let mut got = r.collect(out, all.len(), Duration::from_secs(120)).await;
    f.settle(all.len() as u64, Duration::from_secs(30)).await;
    got.extend(r.drain(out).await);

    let bodies: Vec<String> = got.iter().map(|g| g.body_str()).collect();
    let unique_bodies: BTreeSet<&String> = bodies.iter().collect();
    assert_eq!(bodies.len(), all.len(), "duplicates in the output");
    assert_eq!(unique_bodies, all.iter().collect::<BTreeSet<_>>());
    let (a, b) = (&f.warrens[0], &f.warrens[1]);
    let (na, nb) = (a.outcome("ack"), b.outcome("ack"));
    assert_eq!(na + nb, 10_000, "acks a={na} b={nb}");
    assert!(na > 500 && nb > 500, "work was not shared: a={na} b={nb}");
}

#[tokio::test(flavor = "multi_thread")]
async fn retry_comes_back_with_the_next_attempt_after_the_backoff() {
    let f = Fixture::new("retry")
        .guest("sandbox")
        .handler("retrier")
        .extra("[handler.retry]\nmax_attempts = 5\nbackoff_ms = 400\nmax_backoff_ms = 800\n")
        .start()
        .await;
    let (r, q, out) = (&f.rabbit, &f.queue, &f.out);

    let started = Instant::now();
    r.publish(q, "retry-1", b"retry-twice").await;
    let got = r.collect(out, 1, Duration::from_secs(30)).await;
    let took = started.elapsed();
    assert_eq!(got[0].body_str(), "attempt 3");
    // Attempt 1 waits in [200, 400] ms and attempt 2 in [400, 800] ms (full
    // backoff with jitter in its upper half, rounded to a tier): a lower
    // bound only, what a loaded machine adds is no fault of warren's.
    assert!(
        took >= Duration::from_millis(600),
        "the two retries took only {took:?}"
    );

    let logs = f.w().logs();
    let retries: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("retry scheduled"))
        .collect();
    assert_eq!(retries.len(), 2, "{logs}");
    assert!(
        retries[0].contains("attempt=1") && retries[1].contains("attempt=2"),
        "{retries:?}"
    );
    // The delays were served by wait queues on the broker, with TTLs.
    let waits = rabbitmqctl(&["list_queues", "name", "arguments"]);
    let ours: Vec<&str> = waits
        .lines()
        .filter(|l| l.starts_with(&format!("{q}.retry.")))
        .collect();
    assert!(!ours.is_empty(), "no wait queue for {q}:\n{waits}");
    assert!(
        ours.iter()
            .all(|l| l.contains("x-message-ttl") && l.contains("x-dead-letter-routing-key")),
        "{ours:?}"
    );
    f.settle(1, Duration::from_secs(10)).await;
    f.assert_nothing_more().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn reject_trap_and_timeout_end_in_the_dead_letter_queue_with_reasons() {
    let f = Fixture::new("dlq")
        .guest("sandbox")
        .handler("failing")
        .extra("timeout_ms = 200\n[handler.retry]\nmax_attempts = 2\nbackoff_ms = 50\nmax_backoff_ms = 100\n")
        .start()
        .await;
    let (r, q) = (&f.rabbit, &f.queue);

    r.publish(q, "m-reject", b"reject").await;
    r.publish(q, "m-panic", b"panic").await;
    r.publish(q, "m-loop", b"loop").await;
    let got = r.collect(&f.dead, 3, Duration::from_secs(30)).await;
    let by_id: HashMap<String, _> = got
        .into_iter()
        .map(|g| (g.message_id.clone().unwrap(), g))
        .collect();
    let digest = warren::runtime::Digest::of(&std::fs::read(guest("sandbox")).unwrap()).to_string();

    let reject = &by_id["m-reject"];
    assert_eq!(
        reject.header("x-warren-error-kind").as_deref(),
        Some("reject")
    );
    assert_eq!(
        reject.header("x-warren-reason").as_deref(),
        Some("the sandbox guest rejects this on purpose")
    );
    assert_eq!(reject.header("x-warren-attempt").as_deref(), Some("1"));
    assert_eq!(reject.body_str(), "reject");

    let panic = &by_id["m-panic"];
    assert_eq!(panic.header("x-warren-error-kind").as_deref(), Some("trap"));
    let reason = panic.header("x-warren-reason").unwrap();
    assert!(
        reason.contains("panics on purpose") && reason.ends_with("(attempt 2 of 2)"),
        "{reason}"
    );
    assert_eq!(panic.header("x-warren-attempt").as_deref(), Some("2"));

    let lp = &by_id["m-loop"];
    assert_eq!(lp.header("x-warren-error-kind").as_deref(), Some("timeout"));
    assert_eq!(
        lp.header("x-warren-reason").as_deref(),
        Some("handler exceeded its time limit of 200 ms (attempt 2 of 2)")
    );

    for g in by_id.values() {
        assert_eq!(
            g.header("x-warren-module").as_deref(),
            Some(digest.as_str())
        );
        assert_eq!(g.header("x-warren-handler").as_deref(), Some("failing"));
        assert!(g.header("x-warren-host").is_some_and(|h| !h.is_empty()));
    }
    f.settle(3, Duration::from_secs(10)).await;
    f.assert_nothing_more().await;
    let logs = f.w().logs();
    assert_eq!(logs.matches("dead-lettered").count(), 3, "{logs}");
}

#[tokio::test(flavor = "multi_thread")]
async fn outbox_publishes_exactly_the_confirmed_outputs_with_deterministic_ids() {
    let f = Fixture::new("outbox")
        .guest("sandbox")
        .handler("outbox")
        .start()
        .await;
    let (r, q, out) = (&f.rabbit, &f.queue, &f.out);

    r.publish(q, "three", b"publish3").await;
    let got = r.collect(out, 3, Duration::from_secs(30)).await;
    let bodies: Vec<String> = got.iter().map(|g| g.body_str()).collect();
    assert_eq!(bodies, ["part 0", "part 1", "part 2"]);
    for (i, g) in got.iter().enumerate() {
        assert_eq!(
            g.message_id.as_deref(),
            Some(warren::pipeline::output_message_id("outbox", "three", i).as_str())
        );
    }

    r.publish(q, "denied", b"publish-denied").await;
    let dl = r.collect(&f.dead, 1, Duration::from_secs(30)).await;
    let reason = dl[0].header("x-warren-reason").unwrap();
    assert!(
        reason.contains("NotAllowed") && reason.contains("forbidden"),
        "{reason}"
    );
    // Nothing else was published: the refused publish left no output.
    f.settle(2, Duration::from_secs(10)).await;
    f.assert_nothing_more().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_with_500_in_flight_loses_nothing_and_exits_0() {
    let mut f = Fixture::new("sigterm")
        .guest("sandbox")
        .handler("slow")
        .extra("consumers = 16\nprefetch = 200\n")
        .start()
        .await;

    let all: Vec<String> = (0..500).map(|i| format!("sleep:100#{i}")).collect();
    // The guest parses `sleep:N`; the suffix makes each body unique.
    f.rabbit
        .publish_many(
            &f.queue,
            all.iter()
                .enumerate()
                .map(|(i, b)| (Some(format!("s-{i}")), b.clone().into_bytes())),
        )
        .await;
    let mut done = f.rabbit.collect(&f.out, 20, Duration::from_secs(30)).await;
    let w = f.w_mut();
    w.signal("TERM");
    let status = w.wait(Duration::from_secs(40));
    assert!(status.success(), "exit status {status}:\n{}", w.logs());
    assert!(w.logs().contains("shutdown requested"));

    let r = &f.rabbit;
    done.extend(r.drain(&f.out).await);
    let handled: BTreeSet<String> = done.iter().map(|g| g.body_str()).collect();
    let back = r.drain(&f.queue).await;
    let returned: BTreeSet<String> = back.iter().map(|g| g.body_str()).collect();
    let seen: BTreeSet<&String> = handled.iter().chain(returned.iter()).collect();
    assert_eq!(seen, all.iter().collect::<BTreeSet<_>>(), "lost messages");
    assert!(
        handled.len() < 500,
        "all 500 finished before SIGTERM; the test proves nothing"
    );
    assert!(
        handled.is_disjoint(&returned),
        "a handled message was also returned (acked too late)"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn close_connection_mid_run_loses_nothing() {
    let mut f = Fixture::new("reconnect").start().await;
    let pid_name = format!("pid {}", f.w().pid());
    let before = connections(&pid_name);
    assert_eq!(before.len(), 1, "{before:?}");

    let all = ids(5_000);
    f.rabbit
        .publish_many(
            &f.queue,
            all.iter()
                .map(|id| (Some(id.clone()), id.clone().into_bytes())),
        )
        .await;
    let mut got = f.rabbit.collect(&f.out, 500, Duration::from_secs(60)).await;
    rabbitmqctl(&[
        "close_connection",
        &before[0].0,
        "test: closing warren's connection",
    ]);
    f.w_mut()
        .wait_log("connection to RabbitMQ lost", Duration::from_secs(10));

    let r = &f.rabbit;
    got.extend(
        r.collect(&f.out, all.len() - got.len(), Duration::from_secs(120))
            .await,
    );
    let bodies: BTreeSet<String> = got.iter().map(|g| g.body_str()).collect();
    assert_eq!(
        bodies,
        all.iter().cloned().collect::<BTreeSet<_>>(),
        "lost messages"
    );
    eventually(Duration::from_secs(10), "input queue empty", || async {
        r.total(&f.queue).await == 0
    })
    .await;
    let after = connections(&pid_name);
    assert_eq!(after.len(), 1);
    assert_ne!(after[0].0, before[0].0, "not a new connection");
    assert!(f.w().logs().contains("connected to RabbitMQ; consuming"));
    assert_eq!(f.w().admin_get("/readyz").0, 200);
}

#[test]
fn config_errors_name_the_file_the_key_and_what_was_expected() {
    let dir = tempfile::tempdir().unwrap();
    let module = guest("echo");
    let good = config(&module, "echo", "q", None, "");
    let cases: Vec<(&str, String, String)> = vec![
        (
            "missing key",
            good.replace("queue = \"q\"\n", ""),
            "missing field `queue`".into(),
        ),
        (
            "unknown key",
            good.replace("queue = \"q\"\n", "queue = \"q\"\nprefetsh = 10\n"),
            "unknown field `prefetsh`, expected one of".into(),
        ),
        (
            "bad URL",
            good.replace("amqp://guest:guest@127.0.0.1:5672/%2f", "http://localhost"),
            "key amqp.url: \"http://localhost\" is not an AMQP URL: expected amqp://host:port/vhost, with user and password before the host".into(),
        ),
        (
            "missing module",
            good.replace(&module.display().to_string(), "/nonexistent/handler.wasm"),
            "handler \"echo\": key module: module file /nonexistent/handler.wasm does not exist".into(),
        ),
    ];
    for (what, text, expected) in cases {
        let path = dir.path().join(format!("{}.toml", what.replace(' ', "-")));
        std::fs::write(&path, text).unwrap();
        let out = std::process::Command::new(warren_tests::warren_bin())
            .args(["run", "-c"])
            .arg(&path)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{what}: {stderr}");
        assert!(
            stderr.starts_with(&format!("error: {}: ", path.display())),
            "{what}: {stderr}"
        );
        assert!(
            stderr.contains(&expected),
            "{what}: expected {expected:?} in:\n{stderr}"
        );
    }
    // TOML's own errors point at the line.
    let path = dir.path().join("line.toml");
    std::fs::write(
        &path,
        good.replace("prefetch", "x")
            .replace("queue = \"q\"", "queue = \"q\"\nconsumers = \"eight\""),
    )
    .unwrap();
    let out = std::process::Command::new(warren_tests::warren_bin())
        .args(["run", "-c"])
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("line 8")
            && stderr.contains("invalid type: string \"eight\", expected u32"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn broker_stop_and_start_mid_run_loses_nothing_and_readiness_follows() {
    let broker = warren_tests::private_broker::PrivateBroker::start();
    let url = broker.url();
    let mut f = Fixture::new("restart").broker(&url).start().await;
    assert_eq!(f.w().admin_get("/readyz").0, 200);

    let all = ids(5_000);
    f.rabbit
        .publish_many(
            &f.queue,
            all.iter()
                .map(|id| (Some(id.clone()), id.clone().into_bytes())),
        )
        .await;
    let mut got = f.rabbit.collect(&f.out, 300, Duration::from_secs(60)).await;
    broker.stop();
    broker.wait_port(false, Duration::from_secs(30));
    f.w_mut()
        .wait_log("connection to RabbitMQ lost", Duration::from_secs(10));
    let w = f.w();
    let (code, body) = w.admin_get("/readyz");
    assert_eq!(code, 503, "ready while the broker is down: {body}");
    assert!(body.contains("\"amqp\":false"), "{body}");
    broker.restart();
    eventually(Duration::from_secs(60), "ready again", || async {
        w.admin_get("/readyz").0 == 200
    })
    .await;

    // The fixture's own connection died with the broker.
    let r = Rabbit::connect_to(&url).await;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        got.extend(r.drain(&f.out).await);
        let seen: BTreeSet<String> = got.iter().map(|g| g.body_str()).collect();
        if seen.len() == all.len() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {} messages came out after the restart",
            seen.len(),
            all.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let depth = broker.ctl(&["list_queues", "name", "messages"]);
    assert!(
        depth
            .lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>() == [f.queue.as_str(), "0"]),
        "{depth}"
    );
    assert!(
        w.logs().matches("connected to RabbitMQ; consuming").count() >= 2,
        "{}",
        w.logs()
    );
}
