//! The key-value read cache against the real Redis: a read it answers is
//! never older than what the server's invalidations, the store's own
//! commits, a lost connection or a stalled one allow (`read_cache.rs`).

use std::time::{Duration, Instant};

use super::redis_only::{Proxy, raw_redis};
use super::{commit, redis_url, set, unique_prefix, writes};
use crate::dedup::read_cache::FRESH_FOR;
use crate::dedup::{Commit, KvOp, Store, kv};

async fn cached_store(url: &str, prefix: &str) -> Store {
    Store::redis_cached(url, prefix, 1 << 20)
        .await
        .unwrap_or_else(|err| panic!("the dedup tests need redis at {url} (.ci/setup.sh): {err}"))
}

/// Commits `key` = `value` in the `orders` namespace.
async fn put(store: &Store, key: &str, value: &str) {
    let done = commit(store, None, &writes(vec![set(key, value, None)])).await;
    assert_eq!(done, Commit::Done, "commit of {key}");
}

/// A store with a cache, whose `k` holds `value` and is cached.
async fn with_k_cached(url: &str, prefix: &str, value: &str) -> Store {
    let store = cached_store(url, prefix).await;
    put(&store, "k", value).await;
    cached(&store, "k", value.as_bytes()).await;
    store
}

/// Reads `key` until the store has a tracking connection and answers it
/// from the cache, so that a test starts from a cached value.
async fn cached(store: &Store, key: &str, want: &[u8]) {
    let until = Instant::now() + Duration::from_secs(5);
    loop {
        let before = store.cache_stats().expect("a cache").hits;
        let got = store.kv_get("orders", key).await.expect("get");
        assert_eq!(got.as_deref(), Some(want), "key {key}");
        if store.cache_stats().expect("a cache").hits > before {
            return;
        }
        assert!(
            Instant::now() < until,
            "key {key} was never answered from the cache"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Sets a key of the store's `orders` namespace behind its back.
async fn set_behind(prefix: &str, key: &str, value: &str) {
    let mut raw = raw_redis().await;
    ::redis::cmd("SET")
        .arg(kv::data_key(prefix, "orders", key))
        .arg(value)
        .exec_async(&mut raw)
        .await
        .expect("raw set");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cached_value_changed_by_another_client_is_read_anew() {
    let prefix = unique_prefix();
    let store = with_k_cached(&redis_url(), &prefix, "1").await;

    // Another host's write: the server's invalidation reaches the cache
    // within the time a push takes, never later than FRESH_FOR.
    set_behind(&prefix, "k", "2").await;
    let changed = Instant::now();
    loop {
        let got = store.kv_get("orders", "k").await.expect("get");
        if got.as_deref() == Some(&b"2"[..]) {
            break;
        }
        assert_eq!(got.as_deref(), Some(&b"1"[..]));
        assert!(
            changed.elapsed() < FRESH_FOR,
            "still the old value {:?} after the write",
            changed.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    // And the new value is cached in turn.
    cached(&store, "k", b"2").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_tracking_connection_takes_the_cache_with_it() {
    let prefix = unique_prefix();
    let store = with_k_cached(&redis_url(), &prefix, "1").await;

    // Killed, the connection's invalidations are lost: a write after it
    // must not leave the old value cached.
    let id = store.cache_client_id().expect("a tracking connection");
    let mut raw = raw_redis().await;
    ::redis::cmd("CLIENT")
        .arg("KILL")
        .arg("ID")
        .arg(id)
        .exec_async(&mut raw)
        .await
        .expect("client kill");
    let until = Instant::now() + Duration::from_secs(5);
    while store.cache_client_id() == Some(id) {
        assert!(
            Instant::now() < until,
            "the cache never saw its connection close"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    set_behind(&prefix, "k", "2").await;
    assert_eq!(
        store.kv_get("orders", "k").await.expect("get"),
        Some(b"2".to_vec())
    );
    // A new tracking connection comes up by itself and caches again.
    cached(&store, "k", b"2").await;
    assert_ne!(store.cache_client_id(), Some(id));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_tracking_connection_serves_nothing_older_than_fresh_for() {
    let proxy = Proxy::start().await;
    let prefix = unique_prefix();
    let store = with_k_cached(&proxy.url, &prefix, "1").await;

    // Stalled, no push gets through: the write below is not seen as an
    // invalidation, so the cache must stop answering on its own.
    proxy.hang();
    set_behind(&prefix, "k", "2").await;
    let stalled = Instant::now();
    while stalled.elapsed() < FRESH_FOR + Duration::from_millis(500) {
        // Through the stalled proxy a read that is not a hit fails (the
        // store is unavailable): what must never come back after
        // FRESH_FOR is the old value.
        if let Ok(got) = store.kv_get("orders", "k").await
            && got.as_deref() == Some(&b"1"[..])
        {
            assert!(
                stalled.elapsed() < FRESH_FOR,
                "the old value served {:?} into the stall",
                stalled.elapsed()
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    proxy.heal();
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        match store.kv_get("orders", "k").await {
            Ok(got) => {
                assert_eq!(got.as_deref(), Some(&b"2"[..]), "after the stall");
                break;
            }
            Err(_) => {
                assert!(Instant::now() < until, "the store never came back");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_committed_value_is_kept_and_still_followed() {
    let prefix = unique_prefix();
    // Once the tracking connection is up, commits go over it and keep what
    // they wrote: the next read is a hit without a miss before it.
    let store = with_k_cached(&redis_url(), &prefix, "0").await;
    for i in 1..20 {
        let v = i.to_string();
        put(&store, "k", &v).await;
        let before = store.cache_stats().expect("a cache");
        assert_eq!(
            store.kv_get("orders", "k").await.expect("get"),
            Some(v.into_bytes())
        );
        let after = store.cache_stats().expect("a cache");
        assert_eq!(
            (after.hits - before.hits, after.misses - before.misses),
            (1, 0),
            "commit {i}: its value is read from the cache"
        );
    }
    // Kept by a commit, the key is still tracked: another client's write
    // reaches the cache.
    set_behind(&prefix, "k", "other").await;
    let changed = Instant::now();
    while store.kv_get("orders", "k").await.expect("get").as_deref() != Some(&b"other"[..]) {
        assert!(
            changed.elapsed() < FRESH_FOR,
            "another client's write after this store's commit was never seen"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    // Increments too: the script answers the counter's value.
    let inc = KvOp::Increment {
        key: "n".into(),
        delta: 5,
    };
    assert_eq!(
        commit(&store, None, &writes(vec![inc.clone()])).await,
        Commit::Done
    );
    assert_eq!(commit(&store, None, &writes(vec![inc])).await, Commit::Done);
    assert_eq!(
        store.kv_get("orders", "n").await.expect("get"),
        Some(b"10".to_vec())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cached_value_ends_with_its_ttl() {
    let prefix = unique_prefix();
    let store = cached_store(&redis_url(), &prefix).await;
    assert_eq!(
        commit(&store, None, &writes(vec![set("t", "x", None)])).await,
        Commit::Done
    );
    cached(&store, "t", b"x").await;
    assert_eq!(
        commit(&store, None, &writes(vec![set("t", "y", Some(300))])).await,
        Commit::Done
    );
    cached(&store, "t", b"y").await;
    tokio::time::sleep(Duration::from_millis(350)).await;
    assert_eq!(
        store.kv_get("orders", "t").await.expect("get"),
        None,
        "expired"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commits_sent_again_after_a_script_flush_leave_nothing_stale() {
    let prefix = unique_prefix();
    let store = with_k_cached(&redis_url(), &prefix, "0").await;
    let mut raw = raw_redis().await;
    ::redis::cmd("SCRIPT")
        .arg("FLUSH")
        .exec_async(&mut raw)
        .await
        .expect("script flush");
    // Two commits of one key in one batch, both sent again once the script
    // is loaded: the value read after is the one Redis holds.
    let (a, b) = (
        writes(vec![set("k", "a", None)]),
        writes(vec![set("k", "b", None)]),
    );
    let results = store
        .commit_many(&[(None, &a), (None, &b)], super::WINDOW)
        .await;
    assert!(
        results.iter().all(|r| matches!(r, Ok(Commit::Done))),
        "{results:?}"
    );
    let mut raw_value: Option<Vec<u8>> = ::redis::cmd("GET")
        .arg(kv::data_key(&prefix, "orders", "k"))
        .query_async(&mut raw)
        .await
        .expect("raw get");
    assert_eq!(raw_value.as_deref(), Some(&b"b"[..]));
    raw_value = store.kv_get("orders", "k").await.expect("get");
    assert_eq!(raw_value.as_deref(), Some(&b"b"[..]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_of_every_kind_is_kept_as_redis_holds_it() {
    let prefix = unique_prefix();
    let store = with_k_cached(&redis_url(), &prefix, "0").await;
    // Values the commit starts from, written by another client: an
    // increment's sum depends on them, which only Redis knows.
    for (key, value) in [("n", "5"), ("c", "old"), ("d", "gone"), ("f", "1")] {
        set_behind(&prefix, key, value).await;
    }
    let inc = |key: &str, delta| KvOp::Increment {
        key: key.into(),
        delta,
    };
    let ops = vec![
        set("a", "1", Some(60_000)),
        inc("n", 2),
        inc("n", 3),
        KvOp::CompareAndSwap {
            key: "c".into(),
            expected: Some(b"old".to_vec()),
            new: Some(b"new".to_vec()),
        },
        KvOp::Delete { key: "d".into() },
        set("e", "7", None),
        inc("e", 1),
        inc("f", 1),
        set("f", "x", None),
    ];
    assert_eq!(commit(&store, None, &writes(ops)).await, Commit::Done);
    let mut raw = raw_redis().await;
    for key in ["a", "n", "c", "d", "e", "f"] {
        let in_redis: Option<Vec<u8>> = ::redis::cmd("GET")
            .arg(kv::data_key(&prefix, "orders", key))
            .query_async(&mut raw)
            .await
            .expect("raw get");
        let before = store.cache_stats().expect("a cache");
        let got = store.kv_get("orders", key).await.expect("get");
        let after = store.cache_stats().expect("a cache");
        assert_eq!(got, in_redis, "key {key}: the cache against Redis");
        assert_eq!(
            (after.hits - before.hits, after.misses - before.misses),
            (1, 0),
            "key {key}: kept by the commit"
        );
    }
    let want: [(&str, Option<&[u8]>); 6] = [
        ("a", Some(b"1")),
        ("n", Some(b"10")),
        ("c", Some(b"new")),
        ("d", None),
        ("e", Some(b"8")),
        ("f", Some(b"x")),
    ];
    for (key, value) in want {
        let got = store.kv_get("orders", key).await.expect("get");
        assert_eq!(got.as_deref(), value, "key {key}");
    }
}
