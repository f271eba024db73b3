//! Canaries through the broker: `warren deploy --fleet --canary PERCENT`
//! on three hosts under a steady load. A candidate that traps on about 30%
//! of messages is rolled back on every host, its failed messages retried
//! and handled by the old version; one that behaves is promoted. No input
//! is lost or handled twice either way. A host that starts during a
//! canary joins it. A canary whose deployer dies ends on every host at its
//! deadline, and a host that starts later does not run it.

use std::collections::{BTreeMap, BTreeSet};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use warren_tests::broker::{AMQP_URL, Rabbit};
use warren_tests::fixture::Running;
use warren_tests::fleet_plane::{Plane, digest_of, err, fleet_hosts, id_of, out, wait_following};
use warren_tests::process::{Warren, eventually};
use warren_tests::{guest, warren_bin};

/// `stamp-flaky`'s choice (FNV-1a 64 of the body, modulo 10, below 3):
/// the inputs on which the bad candidate traps.
fn traps(body: &[u8]) -> bool {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in body {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h % 10 < 3
}

/// `per_tick` messages every 100 ms for `ticks` ticks, ids and bodies
/// `PREFIX-i`, from a task of its own; returns how many it sent.
fn steady_load(
    queue: &str,
    prefix: &'static str,
    per_tick: usize,
    ticks: u32,
) -> tokio::task::JoinHandle<usize> {
    let queue = queue.to_string();
    tokio::spawn(async move {
        let r = Rabbit::connect().await;
        let started = Instant::now();
        let mut sent = 0usize;
        for tick in 0..ticks {
            let due = started + Duration::from_millis(100) * tick;
            tokio::time::sleep_until(due.into()).await;
            let batch: Vec<_> = (sent..sent + per_tick)
                .map(|i| {
                    (
                        Some(format!("{prefix}-{i}")),
                        format!("{prefix}-{i}").into_bytes(),
                    )
                })
                .collect();
            r.publish_many(&queue, batch).await;
            sent += per_tick;
        }
        sent
    })
}

/// `warren deploy --fleet --handler stamp MODULE --canary ...` on a
/// blocking thread.
async fn canary_deploy(plane: &Plane, module: &str, args: &[&str]) -> Output {
    let mut cmd = canary_command(plane, module, args);
    tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap()
}

fn canary_command(plane: &Plane, module: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new(warren_bin());
    cmd.args(["deploy", "--handler", "stamp", module])
        .args(args)
        .args(["--fleet", "--amqp", AMQP_URL, "--exchange", &plane.exchange])
        .args(["--discover-ms", "1500", "--timeout", "60"]);
    cmd
}

/// Whether the command printed that host `w` runs the candidate.
fn running_line(text: &str, w: &Warren) -> bool {
    text.lines().any(|l| {
        let mut words = l.split_whitespace();
        words.next() == Some(id_of(w).as_str()) && words.next() == Some("canary")
    })
}

/// The host's `/handlers` entry: live digest and the canary (null when
/// none).
fn handler_state(w: &Warren) -> (String, serde_json::Value) {
    let (_, body) = w.admin_get("/handlers");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    (
        v[0]["live"]["digest"].as_str().unwrap().to_string(),
        v[0]["canary"].clone(),
    )
}

/// Every input's outputs, by input body: the versions that stamped them.
/// Each output's `x-warren-module` must name the module of the version
/// that stamped it (`modules`: version, guest).
async fn outputs_by_input(
    f: &Running,
    sent: usize,
    modules: &[(&str, &str)],
) -> BTreeMap<String, Vec<String>> {
    let mut got = f
        .rabbit
        .collect(&f.out, sent, Duration::from_secs(120))
        .await;
    f.settle(sent as u64, Duration::from_secs(60)).await;
    got.extend(f.rabbit.drain(&f.out).await);
    let mut per_input: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for g in &got {
        let body = g.body_str();
        let (version, input) = body.split_once(' ').unwrap();
        let guest_name = modules
            .iter()
            .find(|(v, _)| *v == version)
            .unwrap_or_else(|| panic!("output by an unexpected version: {body}"))
            .1;
        assert_eq!(
            g.header("x-warren-module"),
            Some(digest_of(&guest(guest_name))),
            "{body}"
        );
        per_input
            .entry(input.to_string())
            .or_default()
            .push(version.to_string());
    }
    per_input
}

fn canary_metric(f: &Running, version: &str, result: &str) -> f64 {
    f.warrens
        .iter()
        .map(|w| {
            w.metric(
                "warren_canary_messages_total",
                &[("version", version), ("result", result)],
            )
        })
        .sum()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_canary_that_traps_is_rolled_back_everywhere_and_its_failures_run_on_the_old_version() {
    let plane = Plane::new(&["stamp"]);
    let mut f = fleet_hosts(&plane, "stamp", "", 3).await;
    wait_following(&mut f);
    let old = digest_of(&guest("stamp_a"));

    // 200 messages a second for 12 seconds.
    let load = steady_load(&f.queue, "bad", 20, 120);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let flaky = guest("stamp_flaky");
    let o = canary_deploy(
        &plane,
        flaky.to_str().unwrap(),
        &["--canary", "10", "--canary-window", "30s"],
    )
    .await;
    println!("{}{}", out(&o), err(&o));
    assert_eq!(o.status.code(), Some(1), "{}", out(&o));
    let text = out(&o);
    // Three hosts ran the candidate, then the rule called the rollback
    // (before the window's end: only a rollback is decided early).
    for w in &f.warrens {
        assert!(running_line(&text, w), "{text}");
    }
    assert!(
        text.contains("decision: roll back: the candidate fails more often"),
        "{text}"
    );
    assert!(text.contains("canary rolled back on every host"), "{text}");
    assert!(
        text.contains("summary: 0 deployed, 3 unchanged, 0 refused"),
        "{text}"
    );
    assert!(err(&o).contains("rolled back"), "{}", err(&o));

    // Every host dropped the candidate and runs the old version.
    for w in &f.warrens {
        let (live, canary) = handler_state(w);
        assert_eq!(live, old);
        assert!(canary.is_null(), "{canary}");
    }

    // Every input handled exactly once; none lost, none dead-lettered.
    let sent = load.await.unwrap();
    let per_input = outputs_by_input(&f, sent, &[("v-a", "stamp_a"), ("v-c", "stamp_flaky")]).await;
    f.assert_nothing_more().await;
    assert_eq!(per_input.len(), sent, "inputs missing from the output");
    assert!(
        per_input.values().all(|v| v.len() == 1),
        "an input came out twice"
    );
    // The candidate failed at least the rule's three times, and each
    // failure was retried: every input it traps on was handled by the old
    // version, and it handled none of them.
    let failed = canary_metric(&f, "canary", "failed");
    assert!(failed >= 3.0, "candidate failures counted: {failed}");
    let retried: u64 = f.warrens.iter().map(|w| w.outcome("retry")).sum();
    assert!(
        retried as f64 >= failed,
        "{retried} retries, {failed} failures"
    );
    let mut versions = BTreeSet::new();
    for (input, v) in &per_input {
        versions.insert(v[0].clone());
        if traps(input.as_bytes()) {
            assert_eq!(v[0], "v-a", "input {input} handled by {v:?}");
        }
        assert!(v[0] == "v-a" || v[0] == "v-c", "{input}: {v:?}");
    }
    println!("versions seen: {versions:?}; candidate failures {failed}, retries {retried}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_canary_that_behaves_is_promoted_everywhere_a_late_host_joins_it_and_no_input_is_lost() {
    let plane = Plane::new(&["stamp"]);
    let mut f = fleet_hosts(&plane, "stamp", "", 3).await;
    wait_following(&mut f);
    let new = digest_of(&guest("stamp_b"));

    // 150 messages a second for 20 seconds: through the 10 s window.
    let load = steady_load(&f.queue, "good", 15, 200);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let b = guest("stamp_b");
    let mut cmd = canary_command(
        &plane,
        b.to_str().unwrap(),
        &["--canary", "10", "--canary-window", "10s"],
    );
    let deploy = tokio::task::spawn_blocking(move || cmd.output().unwrap());

    // A host started while the canary runs joins it: it reads the canary
    // entry, runs the base, then the candidate on its share.
    eventually(Duration::from_secs(30), "the canary on every host", || {
        let all = f.warrens.iter().all(|w| !handler_state(w).1.is_null());
        async move { all }
    })
    .await;
    let late = f.launch();
    let port = late.admin.unwrap();
    eventually(
        Duration::from_secs(10),
        "the canary on the late host",
        || {
            let (_, body) = warren_tests::process::http_get(port, "/handlers");
            let v: serde_json::Value = serde_json::from_str(&body).unwrap();
            let on = v[0]["canary"]["percent"] == 10;
            async move { on }
        },
    )
    .await;

    let o = deploy.await.unwrap();
    println!("{}{}", out(&o), err(&o));
    assert!(o.status.success(), "{}\n{}", out(&o), err(&o));
    let text = out(&o);
    for w in &f.warrens {
        assert!(running_line(&text, w), "{text}");
    }
    assert!(
        text.contains("decision: promote: the candidate fails no more often"),
        "{text}"
    );
    assert!(
        text.contains("summary: 4 deployed, 0 unchanged, 0 refused"),
        "{text}"
    );
    assert!(text.contains("canary promoted on every host"), "{text}");
    for w in &f.warrens {
        let (live, canary) = handler_state(w);
        assert_eq!(live, new);
        assert!(canary.is_null(), "{canary}");
    }
    assert!(canary_metric(&f, "canary", "ok") >= 20.0);
    assert_eq!(canary_metric(&f, "canary", "failed"), 0.0);

    let sent = load.await.unwrap();
    let per_input = outputs_by_input(&f, sent, &[("v-a", "stamp_a"), ("v-b", "stamp_b")]).await;
    f.assert_nothing_more().await;
    assert_eq!(per_input.len(), sent, "inputs missing from the output");
    assert!(
        per_input.values().all(|v| v.len() == 1),
        "an input came out twice"
    );
    let versions: BTreeSet<&str> = per_input.values().map(|v| v[0].as_str()).collect();
    assert_eq!(versions, BTreeSet::from(["v-a", "v-b"]));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_canary_whose_deployer_dies_ends_on_every_host_at_its_deadline() {
    let plane = Plane::new(&["stamp"]);
    let mut f = fleet_hosts(&plane, "stamp", "", 2).await;
    wait_following(&mut f);
    let old = digest_of(&guest("stamp_a"));
    let load = steady_load(&f.queue, "dies", 5, 100);

    let b = guest("stamp_b");
    let mut cmd = canary_command(
        &plane,
        b.to_str().unwrap(),
        &[
            "--canary",
            "50",
            "--canary-window",
            "4s",
            "--canary-grace",
            "2s",
        ],
    );
    let mut child = cmd.stdout(Stdio::null()).spawn().unwrap();
    // Killed once every host runs the candidate: no decision is written.
    eventually(Duration::from_secs(30), "the canary on every host", || {
        let all = f.warrens.iter().all(|w| !handler_state(w).1.is_null());
        async move { all }
    })
    .await;
    child.kill().unwrap();
    child.wait().unwrap();

    // The hosts end it by themselves at the deadline, on the old version.
    eventually(
        Duration::from_secs(30),
        "every host to drop the candidate",
        || {
            let all = f.warrens.iter().all(|w| handler_state(w).1.is_null());
            async move { all }
        },
    )
    .await;
    for w in &mut f.warrens {
        assert_eq!(handler_state(w).0, old);
        w.wait_log(
            "no decision on the canary by its deadline",
            Duration::from_secs(5),
        );
    }

    // A host that starts now reads the expired canary and does not run it.
    let late = f.launch();
    late.wait_log(
        "the fleet canary expired before this host read it",
        Duration::from_secs(30),
    );
    let (live, canary) = handler_state(late);
    assert_eq!(live, old);
    assert!(canary.is_null(), "{canary}");

    let sent = load.await.unwrap();
    let per_input = outputs_by_input(&f, sent, &[("v-a", "stamp_a"), ("v-b", "stamp_b")]).await;
    assert_eq!(per_input.len(), sent, "inputs missing from the output");
    assert!(per_input.values().all(|v| v.len() == 1));
}
