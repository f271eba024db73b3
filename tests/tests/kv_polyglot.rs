//! The key-value store from Python (componentize-py), JavaScript
//! (componentize-js) and C (wit-bindgen): the `tally` handler in each
//! language increments the counter its body names, reads and sets `last`,
//! and publishes what it saw. A duplicate counts nothing.

use std::time::Duration;

use warren_tests::fixture::{Fixture, SHARED_REDIS};
use warren_tests::module_cache_dir;
use warren_tests::process::{Warren, free_port};

async fn tally(guest: &str) {
    let mut f = Fixture::new(&format!("kv-{}", guest.replace('_', "-")))
        .guest(guest)
        .handler("tally")
        .redis(SHARED_REDIS, "pause")
        .section(&format!(
            "[runtime]\ncache_dir = \"{}\"\n",
            module_cache_dir().display()
        ))
        .extra("timeout_ms = 10000\nmemory_mb = 128\n")
        .prepare()
        .await;
    let admin = free_port();
    let mut w = Warren::start(&f.config(admin), Some(admin));
    // Interpreted guests compile for a while the first time on a machine.
    w.wait_log("consuming", Duration::from_secs(240));
    f.warrens.push(w);
    // An output goes out before its message's writes are committed with
    // the done-marker, so each message is sent once the one before it is
    // settled.
    for (n, (id, body, want)) in [
        ("t1", "apples", "apples=1 last=nil"),
        ("t2", "pears", "pears=1 last=apples"),
        ("t3", "apples", "apples=2 last=pears"),
    ]
    .into_iter()
    .enumerate()
    {
        f.rabbit.publish(&f.queue, id, body.as_bytes()).await;
        let got = f.rabbit.collect(&f.out, 1, Duration::from_secs(30)).await;
        assert_eq!(got[0].body_str(), want, "{guest}");
        f.settle(n as u64 + 1, Duration::from_secs(30)).await;
    }
    // A copy of t1: acked as a duplicate, nothing counted.
    f.rabbit.publish(&f.queue, "t1", b"apples").await;
    f.settle(4, Duration::from_secs(30)).await;
    assert_eq!(f.w().outcome("dedup_hit"), 1);
    f.rabbit.publish(&f.queue, "t4", b"apples").await;
    let got = f.rabbit.collect(&f.out, 1, Duration::from_secs(30)).await;
    assert_eq!(got[0].body_str(), "apples=3 last=apples", "{guest}");
    f.settle(5, Duration::from_secs(30)).await;
    f.assert_nothing_more().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn python_uses_the_key_value_store() {
    tally("tally_python").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn javascript_uses_the_key_value_store() {
    tally("tally_js").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn c_uses_the_key_value_store() {
    tally("tally_c").await;
}
