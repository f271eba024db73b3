//! Quorum queues and several AMQP endpoints: a 3-node cluster that loses a
//! node under load, a message that keeps killing its consumer's
//! connection, and a queue declared with other arguments.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use warren_tests::broker::Rabbit;
use warren_tests::fixture::{Fixture, SHARED_REDIS};
use warren_tests::process::{Warren, eventually};
use warren_tests::rabbit_cluster::RabbitCluster;

/// The ports of the nodes a host logged it consumes from, in order.
fn consuming_ports(w: &Warren) -> Vec<u16> {
    w.logs()
        .lines()
        .filter(|l| l.contains("connected to RabbitMQ; consuming"))
        .filter_map(|l| {
            let at = l.split("endpoint=").nth(1)?;
            let port = at.split("127.0.0.1:").nth(1)?;
            port.split(|c: char| !c.is_ascii_digit())
                .next()?
                .parse()
                .ok()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn two_hosts_on_a_3_node_cluster_lose_nothing_when_a_node_is_killed() {
    const N: usize = 20_000;
    const PREFETCH: usize = 32;
    let cluster = RabbitCluster::get();
    let urls = cluster.urls();
    let mut f = Fixture::new("cluster")
        .broker(&urls[0])
        .quorum()
        .redis(SHARED_REDIS, "pause")
        .extra(&format!("prefetch = {PREFETCH}\n"))
        .prepare()
        .await;
    // Host A on the first node only (the test's own connection is there
    // too); host B on the others, starting at a random one of them.
    f.launch_urls(&urls[..1]);
    f.launch_urls(&urls[1..]);
    let b_port = consuming_ports(&f.warrens[1])[0];
    let victim = cluster
        .nodes
        .iter()
        .position(|n| n.port == b_port)
        .expect("host B is on a node of the cluster");
    assert_ne!(victim, 0);
    assert_eq!(consuming_ports(&f.warrens[0]), [cluster.nodes[0].port]);

    let ids: Vec<String> = (0..N).map(|i| format!("m-{i:05}")).collect();
    let publish = ids
        .iter()
        .map(|id| (Some(id.clone()), id.clone().into_bytes()));
    f.rabbit.publish_many(&f.queue, publish).await;

    // Mid-run: once both hosts have handled some.
    eventually(Duration::from_secs(120), "both hosts at work", || async {
        f.warrens.iter().all(|w| w.settled() >= 1_000)
    })
    .await;
    let killed = cluster.kill9(victim);
    let at_kill: u64 = f.warrens.iter().map(Warren::settled).sum();
    f.warrens[1].wait_log("connection to RabbitMQ lost", Duration::from_secs(30));
    let b = &f.warrens[1];
    let deadline = Instant::now() + Duration::from_secs(60);
    while consuming_ports(b).len() < 2 {
        assert!(
            Instant::now() < deadline,
            "host B did not consume again:\n{}",
            b.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let moved_to = consuming_ports(b)[1];
    assert_ne!(moved_to, b_port, "host B reconnected to the killed node");
    assert_ne!(cluster.node_on(moved_to).name, killed.node.name);
    eventually(Duration::from_secs(30), "host B ready again", || async {
        b.admin_get("/readyz").0 == 200
    })
    .await;

    // The output queue's leader may have been on the killed node. Read it
    // once a live node leads it: a leader change while this reader holds
    // unacked deliveries hands them to it again, and those copies would
    // count as duplicates warren never published.
    eventually(
        Duration::from_secs(60),
        "output queue led by a live node",
        || async {
            let listed =
                cluster.nodes[0].ctl(&["list_queues", "name", "leader", "--no-table-headers"]);
            listed.lines().any(|l| {
                let mut cols = l.split_whitespace();
                cols.next() == Some(f.out.as_str())
                    && cols.next().is_some_and(|leader| leader != killed.node.name)
            })
        },
    )
    .await;

    // Every message handled: each body in the output queue at least once.
    let mut seen = std::collections::HashSet::new();
    let got = f
        .rabbit
        .consume_until(&f.out, Duration::from_secs(600), |got| {
            if let Some(g) = got.last() {
                seen.insert(g.body_str());
            }
            seen.len() == N
        })
        .await;
    let mut copies: BTreeMap<String, Vec<Option<String>>> = BTreeMap::new();
    // Deliveries this reader got again (a failover after the wait above,
    // or its own unread prefetch returned when it closed): reported with
    // the duplicates, so a failure says which side made them.
    let mut redelivered = got.iter().filter(|g| g.redelivered).count();
    for g in got {
        copies.entry(g.body_str()).or_default().push(g.message_id);
    }
    let queue = vec![f.queue.clone()];
    eventually(Duration::from_secs(60), "work queue empty", || async {
        f.rabbit.ready(&queue).await == [0]
    })
    .await;
    // Whatever was still in flight has been settled by now: anything more
    // in the output queue is a duplicate too.
    tokio::time::sleep(Duration::from_secs(2)).await;
    for g in f.rabbit.drain(&f.out).await {
        redelivered += usize::from(g.redelivered);
        copies.entry(g.body_str()).or_default().push(g.message_id);
    }

    let expected: Vec<&String> = ids.iter().collect();
    assert_eq!(
        copies.keys().collect::<Vec<_>>(),
        expected,
        "lost or foreign messages"
    );
    let mut duplicates = 0;
    for (body, ids) in &copies {
        duplicates += ids.len() - 1;
        assert!(
            ids.iter().all(|id| id.is_some() && *id == ids[0]),
            "copies of {body} carry different message ids: {ids:?}"
        );
    }
    // Only what was in flight on the hosts when the node died can run
    // twice: at most a prefetch window per host.
    eprintln!(
        "cluster failover: {N} messages, {at_kill} settled at the kill, {duplicates} output duplicates ({redelivered} deliveries redelivered to the reader), host B moved from port {b_port} to {moved_to}"
    );
    assert!(
        duplicates <= 2 * PREFETCH,
        "{duplicates} duplicates, more than two prefetch windows ({redelivered} of the reader's deliveries were redeliveries)"
    );
    assert!(f.rabbit.drain(&f.dead).await.is_empty());

    // The wait queues of a quorum queue, if a publish failed on the way.
    let listed = cluster.nodes[0].ctl(&["list_queues", "name"]);
    let prefix = format!("{}.retry.", f.queue);
    for name in listed.lines().filter(|l| l.starts_with(&prefix)) {
        f.track(name);
    }
    drop(killed);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_message_that_kills_the_connection_each_time_is_dead_lettered_by_the_delivery_limit() {
    // Each delivery of the message takes its consumer down with it (here
    // the test kills the process whenever the message runs, the way a
    // crash would), so warren never settles it.
    const LIMIT: usize = 2;
    let mut f = Fixture::new("poison")
        .guest("sandbox")
        .handler("sandbox")
        .quorum()
        .extra(&format!(
            "delivery_limit = {LIMIT}\ntimeout_ms = 20000\n[handler.dedup]\nenabled = false\n"
        ))
        .start()
        .await;
    f.rabbit.publish(&f.queue, "poison-1", b"sleep:10000").await;

    let mut kills = 0;
    let deadline = Instant::now() + Duration::from_secs(180);
    let dead = loop {
        let dead = f.rabbit.drain(&f.dead).await;
        if !dead.is_empty() {
            break dead;
        }
        assert!(
            Instant::now() < deadline,
            "not dead-lettered after {kills} crashes:\n{}",
            f.warrens.last().unwrap().logs()
        );
        let w = f.warrens.last_mut().unwrap();
        if w.in_flight() >= 1 {
            w.signal("KILL");
            w.wait(Duration::from_secs(10));
            kills += 1;
            f.launch();
            continue;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // Delivered LIMIT + 1 times, each time its consumer died.
    assert_eq!(kills, LIMIT + 1, "crashes before dead-lettering");
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].message_id.as_deref(), Some("poison-1"));
    let reason = dead[0].header("x-first-death-reason");
    eprintln!("poison dead-lettered after {kills} crashes, x-first-death-reason {reason:?}");
    assert_eq!(reason.as_deref(), Some("delivery_limit"));
    assert!(f.rabbit.drain(&f.out).await.is_empty());
    f.assert_nothing_more().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_queue_declared_with_other_arguments_stops_the_host_with_a_clear_error() {
    // The work queue exists as a classic queue; the handler says quorum.
    let f = Fixture::new("mismatch").prepare().await;
    let config = f.config(warren_tests::process::free_port()).replacen(
        "[[handler]]\n",
        "[[handler]]\nqueue_type = \"quorum\"\n",
        1,
    );
    let mut w = Warren::start(&config, None);
    let status = w.wait(Duration::from_secs(60));
    assert!(!status.success(), "warren kept running:\n{}", w.logs());
    let logs = w.logs();
    assert!(
        logs.contains(&format!(
            "queue \"{}\" exists with other arguments than warren declares",
            f.queue
        )) && logs.contains("inequivalent arg"),
        "{logs}"
    );
    assert_eq!(
        logs.matches("cannot declare the handlers' queues").count(),
        1,
        "{logs}"
    );
    assert!(!logs.contains("guest:guest"), "{logs}");
    let r = Rabbit::connect().await;
    assert_eq!(r.ready(std::slice::from_ref(&f.queue)).await, [0]);
}
