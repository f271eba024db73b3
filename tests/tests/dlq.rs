//! `warren dlq`: a dead-letter queue listed, shown and replayed through the
//! broker against a running host; a replay killed midway.
//!
//! The failing version is the sandbox guest, which rejects every body that
//! names no mode of its own (`item-N`); the fixed version is `stamp_a`,
//! which publishes `v-a item-N`. Dedup is on (the shared Redis), as it
//! would be wherever a replay can duplicate.

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use warren_tests::fixture::{Fixture, Running, SHARED_REDIS};
use warren_tests::guest;
use warren_tests::process::{admin_cli, eventually};
use warren_tests::relay::Relay;
use warren_tests::tally::assert_once_each;
use warren_tests::warren_bin;

const N: usize = 500;

fn ids() -> Vec<(Option<String>, Vec<u8>)> {
    (0..N)
        .map(|i| (Some(format!("m-{i}")), format!("item-{i}").into_bytes()))
        .collect()
}

fn fixed_bodies() -> Vec<String> {
    (0..N).map(|i| format!("v-a item-{i}")).collect()
}

/// The config the host runs with, in a file for `warren dlq --config`.
fn config_file(f: &Running, dir: &Path, amqp: Option<&str>) -> PathBuf {
    let mut text = f.config(f.port());
    if let Some(url) = amqp {
        text = text.replace(warren_tests::broker::AMQP_URL, url);
    }
    let path = dir.join(format!("warren-{}.toml", uuid::Uuid::new_v4().simple()));
    std::fs::write(&path, text).unwrap();
    path
}

fn dlq(config: &Path, args: &[&str]) -> Output {
    let (cmd, rest) = args.split_first().unwrap();
    let out = Command::new(warren_bin())
        .args(["dlq", cmd, "--config"])
        .arg(config)
        .args(["--handler", "h"])
        .args(rest)
        .output()
        .expect("run warren dlq");
    assert!(
        out.status.success(),
        "warren dlq {args:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// The sandbox guest as a file of the test's own, so a new process can be
/// started on another version by writing over it.
fn own_module(dir: &Path) -> PathBuf {
    let path = dir.join("h.wasm");
    std::fs::copy(guest("sandbox"), &path).unwrap();
    path
}

async fn dead_lettered_by_the_failing_version(dir: &Path) -> Running {
    let f = Fixture::new("dlq")
        .module(own_module(dir))
        .handler("h")
        .redis(SHARED_REDIS, "pause")
        .extra("consumers = 8\n")
        .start()
        .await;
    f.rabbit.publish_many(&f.queue, ids()).await;
    f.settle(N as u64, Duration::from_secs(120)).await;
    assert_eq!(f.w().outcome("dead_letter"), N as u64);
    assert_eq!(
        f.rabbit.ready(std::slice::from_ref(&f.dead)).await,
        [N as u32]
    );
    f
}

#[tokio::test(flavor = "multi_thread")]
async fn a_replay_after_the_fix_handles_each_message_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let f = dead_lettered_by_the_failing_version(dir.path()).await;
    let cfg = config_file(&f, dir.path(), None);
    let dead = std::slice::from_ref(&f.dead);

    // list: filters and a limit; nothing leaves the queue.
    let listed = stdout(&dlq(&cfg, &["list", "--kind", "reject", "--limit", "3"]));
    assert_eq!(
        listed.lines().filter(|l| l.starts_with("m-")).count(),
        3,
        "{listed}"
    );
    assert!(listed.contains("unknown sandbox mode"), "{listed}");
    assert!(
        listed.contains(&format!("{}: {N} messages, 3 read, 3 matched", f.dead)),
        "{listed}"
    );
    let none = stdout(&dlq(
        &cfg,
        &["list", "--module", "sha256:0000", "--since", "1h"],
    ));
    assert!(none.contains(&format!("{N} read, 0 matched")), "{none}");
    let none = stdout(&dlq(&cfg, &["list", "--until", "1h"]));
    assert!(none.contains("0 matched"), "{none}");
    let dry = stdout(&dlq(
        &cfg,
        &["replay", "--dry-run", "--reason", "UNKNOWN SANDBOX"],
    ));
    assert!(dry.contains(&format!("{N} would be replayed")), "{dry}");
    assert_eq!(f.rabbit.ready(dead).await, [N as u32]);

    // show: warren's headers decoded.
    let shown = stdout(&dlq(&cfg, &["show", "--id", "m-7"]));
    for want in [
        "message m-7",
        "handler:        h",
        "error kind:     reject",
        "attempt:        1",
        "module:         sha256:",
        "body (6 bytes): \"item-7\"",
        "1 matched",
    ] {
        assert!(shown.contains(want), "no {want:?} in:\n{shown}");
    }

    // One message replayed while the version still fails comes back with
    // its history.
    let one = stdout(&dlq(&cfg, &["replay", "--id", "m-7"]));
    assert!(one.contains("1 replayed"), "{one}");
    f.settle(N as u64 + 1, Duration::from_secs(60)).await;
    eventually(
        Duration::from_secs(20),
        "m-7 back in the dead-letter queue",
        || async { f.rabbit.ready(dead).await == [N as u32] },
    )
    .await;
    let shown = stdout(&dlq(&cfg, &["show", "--id", "m-7"]));
    assert!(shown.contains("earlier failures (1):"), "{shown}");
    assert!(
        shown.contains("1. ") && shown.contains("reject on attempt 1 by h"),
        "{shown}"
    );

    // The fix, then the replay.
    let port = f.port();
    let deployed = admin_cli(
        port,
        &[
            "deploy",
            "--handler",
            "h",
            guest("stamp_a").to_str().unwrap(),
        ],
    );
    assert!(deployed.status.success(), "{deployed:?}");
    let replayed = dlq(&cfg, &["replay"]);
    assert!(
        stdout(&replayed).contains(&format!("{N} replayed")),
        "{replayed:?}"
    );
    assert!(
        String::from_utf8_lossy(&replayed.stderr).contains("replayed 50 to"),
        "no progress on stderr: {replayed:?}"
    );
    f.settle(2 * N as u64 + 1, Duration::from_secs(120)).await;
    let got = f.rabbit.collect(&f.out, N, Duration::from_secs(30)).await;
    assert_once_each(&got, &fixed_bodies());
    // The outputs carry the ids derived from the original message ids.
    let mut want: Vec<String> = (0..N)
        .map(|i| warren::pipeline::output_message_id("h", &format!("m-{i}"), 0))
        .collect();
    let mut have: Vec<String> = got.iter().filter_map(|g| g.message_id.clone()).collect();
    want.sort();
    have.sort();
    assert_eq!(
        have, want,
        "output ids are not those of the original message ids"
    );
    assert_eq!(f.rabbit.ready(dead).await, [0]);
    f.assert_nothing_more().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_replay_killed_midway_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut f = dead_lettered_by_the_failing_version(dir.path()).await;
    // No host while the replays run: what reaches the work queue stays
    // there to be counted.
    let relay = Relay::start(5672).await;
    let via_relay = config_file(&f, dir.path(), Some(&relay.url()));
    let direct = config_file(&f, dir.path(), None);
    f.warrens.clear();
    let (dead, work) = (f.dead.clone(), f.queue.clone());

    let mut child = Command::new(warren_bin())
        .args(["dlq", "replay", "--handler", "h", "--config"])
        .arg(&via_relay)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let progress = tokio::task::spawn_blocking(move || {
        BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
            .find(|l| l.starts_with("replayed "))
    });
    let line = tokio::time::timeout(Duration::from_secs(60), progress)
        .await
        .expect("no progress line within a minute")
        .unwrap();
    assert_eq!(
        line.as_deref(),
        Some(format!("replayed 50 to {work} ...").as_str())
    );
    // Stall what it sends (its next confirm never comes), then kill it.
    relay.hold(true);
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    relay.hold(false);

    let counts = || async { f.rabbit.ready(&[dead.clone(), work.clone()]).await };
    eventually(
        Duration::from_secs(30),
        "every message back in the dead-letter queue or moved",
        || async { counts().await.iter().sum::<u32>() >= N as u32 },
    )
    .await;
    let [in_dead, in_work] = counts().await[..] else {
        unreachable!()
    };
    assert!(
        in_dead > 0 && in_work >= 50,
        "not midway: {in_dead} left, {in_work} moved"
    );

    // The replay run again finishes the move.
    let done = stdout(&dlq(&direct, &["replay"]));
    assert!(done.contains(&format!("{in_dead} replayed")), "{done}");
    let [0, moved] = counts().await[..] else {
        panic!(
            "dead-letter queue not empty after the second replay: {:?}",
            counts().await
        )
    };
    assert!(moved >= N as u32, "{moved} moved of {N}");

    // The fixed version, started on the work queue: each message once,
    // whatever the killed replay left twice.
    std::fs::copy(guest("stamp_a"), dir.path().join("h.wasm")).unwrap();
    f.launch();
    f.settle(u64::from(moved), Duration::from_secs(120)).await;
    let got = f.rabbit.collect(&f.out, N, Duration::from_secs(30)).await;
    assert_once_each(&got, &fixed_bodies());
    f.assert_nothing_more().await;
}
