//! Redis outages under the dedup protocol, on a private `redis-server` the
//! test stops and restarts (the shared one stays up for the tests running
//! beside it): with `on_unavailable = "pause"` nothing is handled until it
//! is back, with `"process"` messages are handled without dedup and each
//! bypass is counted.
//!
//! The side effect counted is the echo guest's output message (it
//! republishes each input body). "Runs" are the guest invocations, read from
//! `warren_handler_duration_seconds_count`.

use std::time::{Duration, Instant};

use warren_tests::fixture::Fixture;
use warren_tests::process::eventually;
use warren_tests::redis_server::RedisServer;
use warren_tests::tally::{assert_once_each, count_bodies, table};

/// The handler's settings in both outage tests.
const EXTRA: &str = "consumers = 8\nprefetch = 16\ntimeout_ms = 500\n\
                     [handler.dedup]\nlease_ms = 1000\nwindow_s = 600\n\
                     [handler.retry]\nbackoff_ms = 100\nmax_backoff_ms = 1000\n";

#[tokio::test(flavor = "multi_thread")]
async fn redis_down_10s_with_pause_handles_nothing_without_dedup_then_everything_once() {
    const OUTAGE: Duration = Duration::from_secs(10);
    let mut redis = RedisServer::start();
    let mut f = Fixture::new("pause")
        .handler("paused")
        .redis(&redis.url(), "pause")
        .extra(EXTRA)
        .start()
        .await;

    let before: Vec<String> = (0..100).map(|i| format!("before-{i}")).collect();
    f.rabbit
        .publish_many(
            &f.queue,
            before
                .iter()
                .map(|b| (Some(b.clone()), b.clone().into_bytes())),
        )
        .await;
    let got = f
        .rabbit
        .collect(&f.out, before.len(), Duration::from_secs(30))
        .await;
    assert_once_each(&got, &before);
    // Settled, done-markers written: nothing of this batch is left in flight
    // to fail when redis goes.
    f.settle(100, Duration::from_secs(20)).await;
    assert_eq!(f.w().admin_get("/readyz").0, 200);

    redis.stop();
    let stopped = Instant::now();
    // Published twice each during the outage: handled without dedup, both
    // copies would run.
    let during: Vec<String> = (0..300).map(|i| format!("during-{i}")).collect();
    f.rabbit
        .publish_many(
            &f.queue,
            during.iter().flat_map(|b| {
                let m = (Some(b.clone()), b.clone().into_bytes());
                [m.clone(), m]
            }),
        )
        .await;
    f.w_mut()
        .wait_log("dedup store unavailable: pausing", Duration::from_secs(10));
    let (r, q, out, w) = (&f.rabbit, &f.queue, &f.out, f.w());
    // Watched over the whole outage, not slept through: each look must find
    // warren unready and the output queue empty.
    while stopped.elapsed() < OUTAGE {
        let (code, body) = w.admin_get("/readyz");
        assert_eq!(code, 503, "ready while redis is down: {body}");
        assert!(
            body.contains("\"dedup\":false") && body.contains("\"amqp\":true"),
            "{body}"
        );
        let early = r.drain(out).await;
        assert!(
            early.is_empty(),
            "{} messages handled while redis was down, e.g. {:?}",
            early.len(),
            early[0].body_str()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // Nothing settled: all 600 are still in the queue, ready or unacked
    // (awaited, since `rabbitmqctl` counts lag by the stats interval).
    eventually(
        Duration::from_secs(10),
        "all 600 inputs still in the queue",
        || async { r.total(q).await == 600 },
    )
    .await;
    let t = table(&[w]);
    assert_eq!(w.outcome("ack"), 100, "{t}");
    assert_eq!(w.runs(), 100, "{t}");
    assert_eq!(w.bypassed(), 0, "{t}");
    assert_eq!(w.in_flight(), 0, "{t}");

    redis.restart();
    f.w_mut().wait_log(
        "dedup store answers again: resuming",
        Duration::from_secs(15),
    );
    let (r, out, w) = (&f.rabbit, &f.out, f.w());
    eventually(Duration::from_secs(10), "ready again", || async {
        w.admin_get("/readyz").0 == 200
    })
    .await;
    let mut got = r.collect(out, during.len(), Duration::from_secs(60)).await;
    f.settle(700, Duration::from_secs(30)).await;
    got.extend(r.drain(out).await);
    assert_once_each(&got, &during);
    let t = table(&[w]);
    assert_eq!(w.outcome("ack"), 400, "{t}");
    assert_eq!(w.outcome("dedup_hit"), 300, "{t}");
    assert_eq!(w.runs(), 400, "{t}");
    assert_eq!(w.bypassed(), 0, "{t}");
}

#[tokio::test(flavor = "multi_thread")]
async fn redis_down_with_process_handles_without_dedup_and_counts_each_bypass() {
    let mut redis = RedisServer::start();
    let f = Fixture::new("failopen")
        .handler("failopen")
        .redis(&redis.url(), "process")
        .extra(EXTRA)
        .start()
        .await;
    let (r, q, out, w) = (&f.rabbit, &f.queue, &f.out, f.w());
    let twice = |tag: &str| -> Vec<String> { (0..100).map(|i| format!("{tag}-{i}")).collect() };
    let pairs = |bodies: &[String]| -> Vec<(Option<String>, Vec<u8>)> {
        bodies
            .iter()
            .flat_map(|b| {
                let m = (Some(b.clone()), b.clone().into_bytes());
                [m.clone(), m]
            })
            .collect()
    };

    redis.stop();
    let down = twice("down");
    r.publish_many(q, pairs(&down)).await;
    let mut got = r
        .collect(out, 2 * down.len(), Duration::from_secs(30))
        .await;
    f.settle(200, Duration::from_secs(20)).await;
    got.extend(r.drain(out).await);
    // Fail open: both copies ran, and each handling was counted.
    let counts = count_bodies(&got);
    assert_eq!(counts.len(), down.len());
    assert!(counts.values().all(|n| *n == 2), "{counts:?}");
    let t = table(&[w]);
    assert_eq!(w.bypassed(), 200, "{t}");
    assert_eq!(w.outcome("ack"), 200, "{t}");
    assert_eq!(w.runs(), 200, "{t}");
    // One warning per batch, saying how many of its messages ran without.
    let logs = w.logs();
    let logged: u64 = logs
        .lines()
        .filter(|l| {
            l.contains("dedup store unavailable: handling without dedup (on_unavailable = process)")
        })
        .filter_map(|l| {
            l.split_once(" messages=")?
                .1
                .split(' ')
                .next()?
                .parse::<u64>()
                .ok()
        })
        .sum();
    assert_eq!(logged, 200, "{logs}");

    // Back: the first calls may still fail while the connection comes back;
    // probe one message at a time until one is handled with dedup.
    redis.restart();
    let mut probes = 0;
    loop {
        let before = w.bypassed();
        let probe = format!("probe-{probes}");
        r.publish(q, &probe, probe.as_bytes()).await;
        let p = r.collect(out, 1, Duration::from_secs(10)).await;
        assert_eq!(p[0].body_str(), probe);
        probes += 1;
        if w.bypassed() == before {
            break;
        }
        assert!(
            probes < 20,
            "dedup still bypassed after {probes} probes:\n{}",
            table(&[w])
        );
    }
    eprintln!("dedup back after {probes} probe(s)");
    let base = w.bypassed();
    let up = twice("up");
    r.publish_many(q, pairs(&up)).await;
    let mut got = r.collect(out, up.len(), Duration::from_secs(30)).await;
    f.settle(200 + probes + 200, Duration::from_secs(20)).await;
    got.extend(r.drain(out).await);
    assert_once_each(&got, &up);
    let t = table(&[w]);
    assert_eq!(w.bypassed(), base, "{t}");
    assert_eq!(w.outcome("dedup_hit"), 100, "{t}");
    assert_eq!(w.runs(), 200 + probes + 100, "{t}");
}
