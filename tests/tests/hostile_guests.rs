//! Guests that try to outlast or outgrow their sandbox, against a real
//! `warren run` and the real broker: a guest asleep in a blocking WASI call
//! ends at its deadline (on a message, in a deploy's smoke test, on
//! SIGTERM), and a component with several memories gets one memory cap for
//! the whole instance and no more of the pool than an instance slot holds.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use warren_tests::fixture::Fixture;
use warren_tests::process::{Warren, eventually, free_port};
use warren_tests::{guest, multi_memory, warren_bin};

/// A body the sandbox guest sleeps on (in `std::thread::sleep`, a blocking
/// WASI poll) far longer than any test waits: only a deadline ends it.
const SLEEP: &[u8] = b"sleep 600000";

/// `warren deploy`, waited for at most `timeout` (a deploy that hangs is
/// what some of these tests look for, so `output()` alone would hang too).
fn deploy(port: u16, handler: &str, module: &Path, timeout: Duration) -> Output {
    let mut child = Command::new(warren_bin())
        .args(["deploy", "--handler", handler])
        .arg(module)
        .args(["--admin", &format!("http://127.0.0.1:{port}")])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run warren deploy");
    let deadline = Instant::now() + timeout;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("warren deploy did not return within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_sleeping_guest_ends_as_a_timeout_at_500_ms_and_the_next_message_runs() {
    // One consumer: the next message can only run once the sleeper has
    // given its slot back.
    let f = Fixture::new("sleeper")
        .guest("sandbox")
        .handler("sleeper")
        .extra("timeout_ms = 500\nconsumers = 1\nprefetch = 2\n[handler.retry]\nmax_attempts = 1\n")
        .start()
        .await;
    let (r, q) = (&f.rabbit, &f.queue);

    r.publish(q, "m-sleep", SLEEP).await;
    r.publish(q, "m-next", b"ack").await;

    let dead = r.collect(&f.dead, 1, Duration::from_secs(30)).await;
    assert_eq!(dead[0].message_id.as_deref(), Some("m-sleep"));
    assert_eq!(
        dead[0].header("x-warren-error-kind").as_deref(),
        Some("timeout")
    );
    assert_eq!(
        dead[0].header("x-warren-reason").as_deref(),
        Some("handler exceeded its time limit of 500 ms (attempt 1 of 1)")
    );
    let next = r.collect(&f.out, 1, Duration::from_secs(30)).await;
    assert_eq!(next[0].body_str(), "ack");
    f.settle(2, Duration::from_secs(10)).await;
    f.assert_nothing_more().await;
    assert_eq!(f.w().outcome("ack"), 1);
    assert_eq!(f.w().in_flight(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_while_a_guest_sleeps_exits_0_and_returns_the_message() {
    // The guest's own deadline (20 s) is far past the shutdown deadline
    // (1 s): shutdown must not wait for it.
    let mut f = Fixture::new("sleep-term")
        .guest("sandbox")
        .handler("sleeper")
        .section("[runtime]\nshutdown_timeout_ms = 1000\n")
        .extra("timeout_ms = 20000\nconsumers = 1\n")
        .start()
        .await;
    f.rabbit.publish(&f.queue, "m-sleep", SLEEP).await;
    eventually(Duration::from_secs(20), "the guest is running", || async {
        f.w().in_flight() == 1
    })
    .await;

    let w = f.w_mut();
    w.signal("TERM");
    let status = w.wait(Duration::from_secs(15));
    assert!(status.success(), "exit status {status}:\n{}", w.logs());
    assert!(
        w.logs().contains("abandoning in-flight messages"),
        "{}",
        w.logs()
    );
    // Never acked, so back in the queue for the next host.
    let back = f.rabbit.drain(&f.queue).await;
    assert_eq!(back.len(), 1);
    assert_eq!(back[0].message_id.as_deref(), Some("m-sleep"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_deploy_whose_smoke_body_sleeps_is_refused_as_a_timeout() {
    // The live version (echo) passes the smoke body; the sandbox guest
    // sleeps on it.
    let f = Fixture::new("sleep-smoke")
        .handler("h")
        .extra("timeout_ms = 500\nsmoke_body = \"sleep 600000\"\n")
        .start()
        .await;
    let port = f.port();
    // Twice: the first refusal released the deploy lock.
    for _ in 0..2 {
        let o = deploy(port, "h", &guest("sandbox"), Duration::from_secs(30));
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{err}");
        assert!(
            err.contains("handler \"h\": module refused: smoke test failed: handler exceeded its time limit of 500 ms"),
            "{err}"
        );
    }
    // Still serving, on the old version.
    f.rabbit.publish(&f.queue, "m-1", b"still here").await;
    let got = f.rabbit.collect(&f.out, 1, Duration::from_secs(30)).await;
    assert_eq!(got[0].body_str(), "still here");
    f.settle(1, Duration::from_secs(10)).await;
    assert_eq!(f.w().metric("warren_deploys_total", &[]), 0.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_memory_cap_holds_for_all_memories_of_an_instance() {
    // Three memories besides the canonical one, each grown by the body's
    // length in 64 KiB pages: 100 pages is 6.25 MiB each, 18.75 MiB in
    // all, over a 16 MiB cap that each memory alone would pass.
    let dir = tempfile::tempdir().unwrap();
    let module = dir.path().join("wide.wasm");
    std::fs::write(&module, multi_memory::component(3)).unwrap();
    let f = Fixture::new("wide")
        .module(module)
        .handler("wide")
        .extra("memory_mb = 16\n[handler.retry]\nmax_attempts = 1\n")
        .start()
        .await;
    let (r, q) = (&f.rabbit, &f.queue);

    r.publish(q, "m-wide", &[b'x'; 100]).await;
    r.publish(q, "m-narrow", &[b'x'; 16]).await;
    let dead = r.collect(&f.dead, 1, Duration::from_secs(30)).await;
    assert_eq!(dead[0].message_id.as_deref(), Some("m-wide"));
    assert_eq!(
        dead[0].header("x-warren-error-kind").as_deref(),
        Some("memory")
    );
    f.settle(2, Duration::from_secs(30)).await;
    assert_eq!(f.w().outcome("ack"), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_component_with_more_memories_than_an_instance_slot_is_refused_at_start() {
    // Nine memories: past what one instance may take of the pool (4), so
    // it could only run by taking slots other handlers are promised.
    let dir = tempfile::tempdir().unwrap();
    let module = dir.path().join("wider.wasm");
    std::fs::write(&module, multi_memory::component(8)).unwrap();
    let f = Fixture::new("wider")
        .module(module)
        .handler("wider")
        .prepare()
        .await;
    let port = free_port();
    let mut w = Warren::start(&f.config(port), Some(port));
    let status = w.wait(Duration::from_secs(30));
    assert!(!status.success(), "{}", w.logs());
    let logs = w.logs();
    assert!(
        logs.contains("handler \"wider\": module") && logs.contains("is refused"),
        "{logs}"
    );
    assert!(
        logs.contains("memories count of 9 exceeds the per-instance limit of 4"),
        "{logs}"
    );
}
