//! Everything at once: on one host and one handler, ordinary messages
//! beside hostile ones, from a publisher (deep headers, forged
//! bookkeeping) and from the guest (blocking sleeps, endless loops, memory
//! bombs, outputs that would amplify host memory, floods of text, an
//! output to a missing exchange). The ordinary messages must keep flowing,
//! each handled once; every hostile one must end dead-lettered with a
//! reason (none lost); the process must never restart or reconnect, its
//! memory must stay under a stated bound, and SIGTERM must still end it
//! with status 0 within its shutdown deadline.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use warren_tests::fixture::{Fixture, Running};
use warren_tests::process::{eventually, peak_rss_mb};
use warren_tests::raw_amqp::{
    RawProps, RawPublisher, entry, long_long, nested_arrays, table_bytes,
};

/// The guest's memory cap.
const GUEST_MEMORY_MB: u64 = 64;
/// The handler's deadline per message.
const TIMEOUT_MS: u64 = 1000;
/// The host's shutdown deadline.
const SHUTDOWN_MS: u64 = 5000;

/// The bound on the host's peak resident memory. Two batch slots can each
/// hold a guest at its cap; a publish budget per message; the clients and
/// the runtime; and what parsing a 5,000-deep header leaves on the client's
/// parsing thread (it recurses; each level costs stack the thread keeps).
/// Without the limits one of these messages took a host past a gibibyte.
const RSS_BOUND_MB: u64 = 8 * GUEST_MEMORY_MB;

fn raw_props(id: &str, headers: &[Vec<u8>]) -> RawProps {
    RawProps {
        message_id: Some(id.as_bytes().to_vec()),
        headers: Some(table_bytes(headers)[4..].to_vec()),
        ..RawProps::default()
    }
}

async fn ordinary(f: &Running, tag: &str, n: usize) -> Vec<String> {
    let ids: Vec<String> = (0..n).map(|i| format!("ok-{tag}-{i:03}")).collect();
    f.rabbit
        .publish_many(
            &f.queue,
            ids.iter()
                .map(|id| (Some(id.clone()), format!("ack {id}").into_bytes())),
        )
        .await;
    ids
}

#[tokio::test(flavor = "multi_thread")]
async fn hostile_messages_and_guests_beside_ordinary_ones_leave_the_host_standing() {
    let mut f = Fixture::new("contain")
        .guest("hostile")
        .handler("contain")
        .extra(&format!(
            "memory_mb = {GUEST_MEMORY_MB}\ntimeout_ms = {TIMEOUT_MS}\nconsumers = 4\n\
             [handler.retry]\nmax_attempts = 2\nbackoff_ms = 50\nmax_backoff_ms = 100\n\
             [handler.publish]\nallow = [\"\", \"contain-missing-exchange\"]\n"
        ))
        .section(&format!("[runtime]\nshutdown_timeout_ms = {SHUTDOWN_MS}\n"))
        .start()
        .await;
    let pid = f.w().pid();

    // From the guest: each of these must end in the dead-letter queue, with
    // one of the kinds given.
    let from_guest: [(&str, &str, &[&str]); 10] = [
        ("g-sleep", "sleep 60000", &["timeout"]),
        ("g-spin", "spin", &["timeout"]),
        ("g-oom", "oom", &["memory", "trap"]),
        ("g-alias", "alias-headers 100000 1048576", &["reject"]),
        ("g-bomb", "nested-bomb 31", &["reject"]),
        ("g-routing-key", "big-routing-key 100", &["reject"]),
        ("g-reason", "huge-reason 4194304", &["reject"]),
        ("g-forge", "forge-warren-header", &["reject"]),
        (
            "g-missing",
            "publish-missing-exchange contain-missing-exchange",
            &["publish"],
        ),
        ("g-unknown", "\u{0}\u{ff}garbage", &["reject"]),
    ];
    let mut want_ok = ordinary(&f, "a", 40).await;
    for (id, body, _) in &from_guest {
        f.rabbit.publish(&f.queue, id, body.as_bytes()).await;
    }
    // Floods its log and stdout, then acks without an output (or runs out
    // of time doing so): handled or dead-lettered, never more.
    f.rabbit
        .publish(&f.queue, "g-log-flood", b"log-flood")
        .await;
    want_ok.extend(ordinary(&f, "b", 40).await);

    // From a publisher: a header 5,000 levels deep (the client's parser
    // overflowed its stack at about 1,500 before), and a forged attempt
    // count on a message whose run fails, which must still get all of its
    // attempts.
    let mut raw = RawPublisher::connect();
    raw.publish(
        &f.queue,
        &raw_props("p-deep", &[entry(b"h", &nested_arrays(5_000))]),
        b"ack p-deep",
    );
    raw.publish(
        &f.queue,
        &raw_props("p-forged", &[entry(b"x-warren-attempt", &long_long(99))]),
        b"spin",
    );
    want_ok.extend(ordinary(&f, "c", 40).await);

    // The guest's attacks, the log flood and the publisher's two.
    let hostile = from_guest.len() + 1 + 2;
    let out = f
        .rabbit
        .collect(&f.out, want_ok.len(), Duration::from_secs(180))
        .await;
    f.settle((want_ok.len() + hostile) as u64, Duration::from_secs(180))
        .await;
    let dead = f.rabbit.drain(&f.dead).await;
    assert!(
        f.rabbit.drain(&f.out).await.is_empty(),
        "an output after everything settled"
    );

    // Every ordinary message handled once, nothing else published.
    let got_ok: Vec<String> = out.iter().map(|g| g.body_str()).collect();
    let unique_ok: BTreeSet<&String> = got_ok.iter().collect();
    assert_eq!(unique_ok.len(), got_ok.len(), "an output came twice");
    let want: BTreeSet<String> = want_ok.iter().map(|id| format!("ack {id}")).collect();
    assert_eq!(
        unique_ok.into_iter().cloned().collect::<BTreeSet<_>>(),
        want
    );

    // Every hostile one dead-lettered, with a kind it may have and a reason.
    let dead: BTreeMap<String, _> = dead
        .into_iter()
        .map(|g| (g.message_id.clone().expect("a message id"), g))
        .collect();
    let named: BTreeSet<&str> = from_guest
        .iter()
        .map(|(id, _, _)| *id)
        .chain(["p-deep", "p-forged", "g-log-flood"])
        .collect();
    for id in dead.keys() {
        assert!(named.contains(id.as_str()), "{id} was dead-lettered");
    }
    if let Some(g) = dead.get("g-log-flood") {
        assert_eq!(g.header("x-warren-error-kind").as_deref(), Some("timeout"));
    }
    for (id, _, kinds) in &from_guest {
        let g = dead
            .get(*id)
            .unwrap_or_else(|| panic!("{id} not dead-lettered: {:?}", dead.keys()));
        let kind = g.header("x-warren-error-kind").unwrap_or_default();
        assert!(kinds.contains(&kind.as_str()), "{id}: kind {kind:?}");
        let reason = g.header("x-warren-reason").unwrap_or_default();
        assert!(
            !reason.is_empty() && reason.len() <= 4096,
            "{id}: {reason:?}"
        );
    }
    let deep = &dead["p-deep"];
    assert_eq!(
        deep.header("x-warren-error-kind").as_deref(),
        Some("invalid-headers")
    );
    let forged = &dead["p-forged"];
    assert_eq!(
        forged.header("x-warren-error-kind").as_deref(),
        Some("timeout")
    );
    assert_eq!(
        forged.header("x-warren-attempt").as_deref(),
        Some("2"),
        "the forged attempt count was believed"
    );

    // The same process all along, on its first connection, within bounds.
    let w = f.w_mut();
    let logs = w.logs();
    assert_eq!(logs.matches("warren starting").count(), 1, "{logs}");
    assert!(!logs.contains("connection to RabbitMQ lost"), "{logs}");
    assert_eq!(w.metric("warren_amqp_reconnects_total", &[]), 0.0);
    let peak = peak_rss_mb(pid);
    assert!(
        peak < RSS_BOUND_MB,
        "peak RSS {peak} MiB, bound {RSS_BOUND_MB} MiB"
    );

    // SIGTERM while a guest blocks in a sleep: the host still stops, with
    // status 0, within its shutdown deadline (plus a second of slack for
    // the process to exit).
    f.rabbit
        .publish(&f.queue, "g-sleep-at-exit", b"sleep 60000")
        .await;
    let w = f.w();
    eventually(
        Duration::from_secs(30),
        "the sleeping guest in flight",
        || async { w.in_flight() > 0 },
    )
    .await;
    w.signal("TERM");
    let w = f.w_mut();
    let status = w.wait(Duration::from_millis(SHUTDOWN_MS + 1000));
    assert!(status.success(), "exit status {status}:\n{}", w.logs());
}
