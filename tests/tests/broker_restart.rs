//! The connection supervisor against a broker that restarts, stops or goes
//! silent, on a private RabbitMQ node: two hosts sharing a queue through
//! repeated restarts, a broker that answers nothing, and SIGTERM while the
//! broker is away.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use warren_tests::broker::{Got, Rabbit};
use warren_tests::guest;
use warren_tests::private_broker::PrivateBroker;
use warren_tests::process::{Warren, config, eventually, free_port, unique};

const SHARED_REDIS: &str = "redis://127.0.0.1:6379/0";
const HANDLER: &str = "echo";

/// The reported set-up: echo guest, Redis dedup on the message id, 8
/// consumers, prefetch 32; `shutdown_ms` as the shutdown timeout.
fn host_config(
    url: &str,
    q: &str,
    out: &str,
    prefix: &str,
    admin: u16,
    shutdown_ms: u64,
) -> String {
    let extra = format!(
        "consumers = 8\nprefetch = 32\ntimeout_ms = 1000\n\
         [handler.dedup]\nkey = \"message-id\"\nlease_ms = 2000\n\
         [handler.retry]\nbackoff_ms = 100\nmax_backoff_ms = 1000\n\
         [handler.config]\nout_routing_key = \"{out}\"\n"
    );
    config(&guest("echo"), HANDLER, q, Some(admin), &extra)
        .replace(warren_tests::broker::AMQP_URL, url)
        .replacen(
            "[[handler]]",
            &format!(
                "[runtime]\nshutdown_timeout_ms = {shutdown_ms}\n\n\
                 [redis]\nurl = \"{SHARED_REDIS}\"\nprefix = \"{prefix}\"\n\n[[handler]]"
            ),
            1,
        )
}

fn start_host(url: &str, q: &str, out: &str, prefix: &str, shutdown_ms: u64) -> Warren {
    let admin = free_port();
    Warren::start(
        &host_config(url, q, out, prefix, admin, shutdown_ms),
        Some(admin),
    )
}

fn ready(w: &Warren) -> bool {
    w.admin_get("/readyz").0 == 200
}

fn acked(hosts: &[Warren]) -> u64 {
    hosts
        .iter()
        .map(|w| w.metric("warren_messages_total", &[("outcome", "ack")]) as u64)
        .sum()
}

fn consuming_count(w: &Warren) -> usize {
    w.logs().matches("connected to RabbitMQ; consuming").count()
}

/// Every body of `expected` came out at least once, nothing else did, and
/// every copy carries the output id of its input: a duplicate is the same
/// output published again, which a consumer dedups by id.
fn assert_outputs(got: &[Got], expected: &BTreeSet<String>, round: usize) {
    let mut copies: BTreeMap<String, usize> = BTreeMap::new();
    for g in got {
        let body = g.body_str();
        assert!(
            expected.contains(&body),
            "round {round}: unexpected output {body:?}"
        );
        assert_eq!(
            g.message_id.as_deref(),
            Some(warren::pipeline::output_message_id(HANDLER, &body, 0).as_str()),
            "round {round}: a copy of {body} with another output id"
        );
        *copies.entry(body).or_default() += 1;
    }
    let missing: Vec<&String> = expected
        .iter()
        .filter(|b| !copies.contains_key(*b))
        .collect();
    assert!(
        missing.is_empty(),
        "round {round}: {} of {} inputs never came out, e.g. {:?}",
        missing.len(),
        expected.len(),
        missing.iter().take(5).collect::<Vec<_>>()
    );
}

async fn depth(broker: &PrivateBroker, q: &str) -> Option<u32> {
    let out = broker.ctl(&["list_queues", "name", "messages"]);
    out.lines().find_map(|l| {
        let mut f = l.split_whitespace();
        (f.next()? == q).then(|| f.next()?.parse().ok())?
    })
}

/// The reported hang, in a loop: two hosts share a queue, and the broker
/// restarts (`stop_app`, a short pause, `start_app`) while each round's
/// messages are being handled. Every round must end with every message
/// handled, duplicates only with the same output ids, both hosts not ready
/// while the broker is away and consuming again after it.
#[tokio::test(flavor = "multi_thread")]
async fn two_hosts_recover_from_twenty_broker_restarts_mid_run() {
    const ROUNDS: usize = 20;
    // A round's size grows whenever the hosts finished it before the broker
    // stopped: how fast they drain depends on what else the machine runs,
    // how long `rabbitmqctl` takes to start too, and a fixed size that is
    // mid-run on a quiet machine is already done on a busy one.
    const FIRST_ROUND: usize = 3_000;
    const LARGEST_ROUND: usize = 48_000;
    let mut per_round = FIRST_ROUND;
    let broker = PrivateBroker::start();
    let url = broker.url();
    let q = unique("restarts");
    let out = format!("{q}.out");
    let prefix = unique("restarts");
    let r = Rabbit::connect_to(&url).await;
    r.declare(&out).await;
    drop(r);
    let mut hosts = [
        start_host(&url, &q, &out, &prefix, 30_000),
        start_host(&url, &q, &out, &prefix, 30_000),
    ];
    for w in &mut hosts {
        w.wait_log("consuming", Duration::from_secs(30));
    }

    let mut interrupted = 0;
    for round in 0..ROUNDS {
        let ids: Vec<String> = (0..per_round)
            .map(|i| format!("r{round:02}-{i:05}"))
            .collect();
        let expected: BTreeSet<String> = ids.iter().cloned().collect();
        let before: Vec<usize> = hosts.iter().map(consuming_count).collect();
        let acked_before = acked(&hosts);
        // `rabbitmqctl` takes about a second to start: launched as the
        // publishing ends, it stops the broker while the round runs.
        let r = Rabbit::connect_to(&url).await;
        r.publish_many(
            &q,
            ids.iter()
                .map(|id| (Some(id.clone()), id.clone().into_bytes())),
        )
        .await;
        drop(r);
        std::thread::scope(|s| s.spawn(|| broker.stop_app()).join().unwrap());
        let mut got = Vec::new();
        let started = std::time::Instant::now();
        // This round's acks before the connections dropped: fewer than its
        // messages means the restart hit the round mid-run.
        let acked_at_stop = acked(&hosts) - acked_before;
        let was_interrupted = acked_at_stop < per_round as u64;
        interrupted += usize::from(was_interrupted);
        eventually(
            Duration::from_secs(30),
            "both hosts not ready while the broker is stopped",
            || async { hosts.iter().all(|w| !ready(w)) },
        )
        .await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        broker.start_app();
        eventually(
            Duration::from_secs(60),
            "both hosts consuming again",
            || async {
                hosts
                    .iter()
                    .zip(&before)
                    .all(|(w, n)| consuming_count(w) > *n && ready(w))
            },
        )
        .await;

        let r = Rabbit::connect_to(&url).await;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
        loop {
            got.extend(r.drain(&out).await);
            let seen: BTreeSet<String> = got.iter().map(|g| g.body_str()).collect();
            if seen.len() == expected.len() && depth(&broker, &q).await == Some(0) {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "round {round}: {} of {per_round} inputs came out, {:?} left in the queue",
                seen.len(),
                depth(&broker, &q).await
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // Whatever a host published before the queue emptied is in `out`.
        got.extend(r.drain(&out).await);
        assert_outputs(&got, &expected, round);
        eprintln!(
            "round {round}: {} acked when the broker stopped; {} outputs for {per_round} inputs; {:?} from stop to all out",
            acked_at_stop,
            got.len(),
            started.elapsed()
        );
        if !was_interrupted {
            per_round = (per_round * 2).min(LARGEST_ROUND);
        }
    }
    // Some rounds finish before `rabbitmqctl` gets to stop the broker (the
    // next one is then larger); the test is only worth its name if enough
    // of them do not.
    assert!(
        interrupted >= ROUNDS / 4,
        "only {interrupted} of {ROUNDS} restarts came before the round's messages were done"
    );
    for w in &hosts {
        let logs = w.logs();
        assert!(
            logs.matches("connection to RabbitMQ lost; reconnecting")
                .count()
                >= ROUNDS,
            "{logs}"
        );
    }
    for w in &mut hosts {
        w.signal("TERM");
        assert!(w.wait(Duration::from_secs(60)).success(), "{}", w.logs());
    }
}

/// A broker that answers nothing (its process stopped: the sockets stay
/// open, no error, no reset) is found dead by the liveness probe, the host
/// says every few seconds that it is not consuming and is not ready, and
/// it consumes again once the broker answers.
#[tokio::test(flavor = "multi_thread")]
async fn a_silent_broker_is_noticed_reported_and_recovered_from() {
    let broker = PrivateBroker::start();
    let url = broker.url();
    let q = unique("silent");
    let out = format!("{q}.out");
    let prefix = unique("silent");
    let r = Rabbit::connect_to(&url).await;
    r.declare(&out).await;
    let mut w = start_host(&url, &q, &out, &prefix, 30_000);
    w.wait_log("consuming", Duration::from_secs(30));
    r.publish_many(
        &q,
        (0..100).map(|i| (Some(format!("s-{i}")), format!("s-{i}").into_bytes())),
    )
    .await;
    r.collect(&out, 100, Duration::from_secs(30)).await;
    drop(r);

    {
        let _paused = broker.pause();
        w.wait_log("connection to RabbitMQ lost", Duration::from_secs(60));
        assert!(!ready(&w), "ready while the broker answers nothing");
        w.wait_log("not consuming from RabbitMQ", Duration::from_secs(60));
        let logs = w.logs();
        let lost = logs
            .lines()
            .find(|l| l.contains("connection to RabbitMQ lost"))
            .unwrap();
        assert!(
            lost.contains("liveness probe")
                || lost.contains("heartbeat")
                || lost.contains("no answer"),
            "lost for another reason than silence: {lost}"
        );
    }
    eventually(
        Duration::from_secs(90),
        "ready again after the broker answers",
        || async { ready(&w) },
    )
    .await;
    let r = Rabbit::connect_to(&url).await;
    r.publish(&q, "after", b"after").await;
    let got = r.collect(&out, 1, Duration::from_secs(30)).await;
    assert_eq!(got[0].body_str(), "after");
    w.signal("TERM");
    assert!(w.wait(Duration::from_secs(60)).success(), "{}", w.logs());
}

/// SIGTERM ends the process while the broker is stopped, while it is
/// restarting, and while it answers nothing: the graceful stop bounds every
/// broker call, and a hard deadline ends whatever is left.
#[tokio::test(flavor = "multi_thread")]
async fn sigterm_ends_the_process_whatever_the_broker_is_doing() {
    const SHUTDOWN_MS: u64 = 1_000;
    // The promise: SIGTERM ends the process within the shutdown deadline
    // plus a second, whatever the broker does.
    const WITHIN: Duration = Duration::from_millis(SHUTDOWN_MS + 1_000);
    let broker = PrivateBroker::start();
    let url = broker.url();
    let q = unique("term");
    let out = format!("{q}.out");
    let prefix = unique("term");
    let r = Rabbit::connect_to(&url).await;
    r.declare(&out).await;
    drop(r);
    let feed = |n: usize, tag: &'static str| {
        let (url, q) = (url.clone(), q.clone());
        async move {
            let r = Rabbit::connect_to(&url).await;
            r.publish_many(
                &q,
                (0..n).map(|i| {
                    (
                        Some(format!("{tag}-{i}")),
                        format!("{tag}-{i}").into_bytes(),
                    )
                }),
            )
            .await;
        }
    };

    // The broker is stopped.
    let mut w = start_host(&url, &q, &out, &prefix, SHUTDOWN_MS);
    w.wait_log("consuming", Duration::from_secs(30));
    feed(2_000, "stopped").await;
    broker.stop_app();
    w.wait_log("connection to RabbitMQ lost", Duration::from_secs(30));
    w.signal("TERM");
    let status = w.wait(WITHIN);
    assert_stopped(&w, status, "the broker stopped");
    broker.start_app();

    // The broker is restarting: SIGTERM lands between stop_app and
    // start_app, with messages in flight when the connection dropped.
    let mut w = start_host(&url, &q, &out, &prefix, SHUTDOWN_MS);
    w.wait_log("consuming", Duration::from_secs(30));
    feed(2_000, "restarting").await;
    broker.stop_app();
    let restart = std::thread::scope(|s| {
        let t = s.spawn(|| broker.start_app());
        w.signal("TERM");
        let status = w.wait(WITHIN);
        t.join().unwrap();
        status
    });
    assert_stopped(&w, restart, "the broker restarting");

    // The broker answers nothing.
    let mut w = start_host(&url, &q, &out, &prefix, SHUTDOWN_MS);
    w.wait_log("consuming", Duration::from_secs(30));
    {
        let _paused = broker.pause();
        w.signal("TERM");
        let status = w.wait(WITHIN);
        assert_stopped(&w, status, "the broker silent");
    }
}

/// The process ended by the graceful stop (status 0, "warren stopped"), or
/// by the hard deadline that bounds it (status 1, saying so).
fn assert_stopped(w: &Warren, status: std::process::ExitStatus, while_: &str) {
    let logs = w.logs();
    let graceful = status.success() && logs.contains("warren stopped");
    let cut = status.code() == Some(1) && logs.contains("hard deadline");
    assert!(graceful || cut, "SIGTERM with {while_}: {status}\n{logs}");
    eprintln!(
        "SIGTERM with {while_}: {}",
        if graceful {
            "graceful stop"
        } else {
            "hard deadline"
        }
    );
}
