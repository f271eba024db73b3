//! `warren shadow`: a candidate run beside the live version on live
//! messages. The live version is the sandbox guest (which rejects the body
//! `reject` and publishes the body `ack` back); the candidate is echo,
//! which publishes every body: they agree on `ack` and differ on exactly
//! the `reject` messages, and nothing the candidate produces reaches the
//! broker.

use std::io::{BufRead as _, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use warren::runtime::Digest;
use warren_tests::fixture::Fixture;
use warren_tests::guest;
use warren_tests::warren_bin;

#[tokio::test(flavor = "multi_thread")]
async fn a_candidate_that_differs_on_a_known_subset_is_reported_with_exactly_those_ids() {
    let f = Fixture::new("shadow")
        .guest("sandbox")
        .handler("h")
        .start()
        .await;
    let live = Digest::of(&std::fs::read(guest("sandbox")).unwrap()).to_string();
    let mut child = Command::new(warren_bin())
        .args([
            "shadow",
            "--handler",
            "h",
            "--messages",
            "40",
            "--timeout-s",
            "120",
        ])
        .args(["--admin", &format!("http://127.0.0.1:{}", f.port())])
        .arg(guest("echo"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let started = tokio::task::spawn_blocking(move || {
        let mut lines = BufReader::new(stderr).lines().map_while(Result::ok);
        let first = lines.find(|l| l.contains("shadow run of"));
        // Keep reading so the child never blocks on a full pipe.
        std::thread::spawn(move || lines.for_each(drop));
        first
    })
    .await
    .unwrap();
    assert!(started.is_some(), "warren shadow did not start");

    let mut msgs: Vec<(Option<String>, Vec<u8>)> = Vec::new();
    let mut differ = Vec::new();
    for i in 0..40 {
        let body = if i % 4 == 1 { "reject" } else { "ack" };
        if body == "reject" {
            differ.push(format!("m-{i}"));
        }
        msgs.push((Some(format!("m-{i}")), body.as_bytes().to_vec()));
    }
    f.rabbit.publish_many(&f.queue, msgs).await;
    f.settle(40, Duration::from_secs(60)).await;

    let out = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    let report = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{report}");
    assert!(report.contains(&format!("against live {live}")), "{report}");
    assert!(
        report.contains("compared 40: 30 agree, 10 differ"),
        "{report}"
    );
    let mut reported: Vec<String> = report
        .lines()
        .filter(|l| l.starts_with("  m-"))
        .map(|l| l.trim().to_string())
        .collect();
    reported.sort();
    differ.sort();
    assert_eq!(reported, differ, "{report}");
    assert!(report.contains("live:      reject: the sandbox guest rejects this on purpose"));
    assert!(report.contains("candidate: ack; publish"), "{report}");

    // Only the live version's outputs reached the broker.
    let got = f.rabbit.collect(&f.out, 30, Duration::from_secs(10)).await;
    assert!(
        got.iter()
            .all(|g| g.header("x-warren-module").as_deref() == Some(live.as_str()))
    );
    assert_eq!(f.rabbit.drain(&f.dead).await.len(), 10);
    f.assert_nothing_more().await;
    // And the comparison is over.
    assert_eq!(f.w().admin_get("/handlers/h/shadow").0, 404);
}
