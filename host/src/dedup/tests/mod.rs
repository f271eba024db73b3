//! The dedup semantics, written once and run against both stores: `on_redis`
//! against the real Redis (`WARREN_TEST_REDIS_URL`, default
//! `redis://127.0.0.1:6379/0`) and `on_memory` in-process. Every test uses its
//! own key prefix, so tests run in parallel without seeing each other's keys.
//! The Redis-only tests (connection failures, error mapping, script reload,
//! counter lifetimes) are in `redis_only`.
//!
//! Sleeps here only let a TTL run out; nothing waits for another task by
//! sleeping.

mod read_cache;
mod redis_only;

use std::time::Duration;

use super::{Claim, Commit, KvOp, KvWrites, Lease, Store};

/// A lease long enough never to expire during a test unless it means to.
const LEASE: Duration = Duration::from_secs(10);
/// A window long enough never to expire during a test unless it means to;
/// short enough that the keys tests leave behind go away soon.
const WINDOW: Duration = Duration::from_secs(60);

fn redis_url() -> String {
    std::env::var("WARREN_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/0".into())
}

fn unique_prefix() -> String {
    format!("test-dedup-{}", uuid::Uuid::new_v4())
}

/// With a key-value read cache, so that every semantic test below also
/// runs through it.
async fn redis_store() -> Store {
    let url = redis_url();
    Store::redis_cached(&url, &unique_prefix(), 1 << 20)
        .await
        .unwrap_or_else(|err| panic!("the dedup tests need redis at {url} (.ci/setup.sh): {err}"))
}

fn memory_store() -> Store {
    Store::memory(&unique_prefix())
}

/// Claims `key`, which the test expects to be free.
async fn acquire(store: &Store, key: &str, lease: Duration) -> Lease {
    match store.claim(key, lease).await {
        Ok(Claim::Acquired(lease)) => lease,
        other => panic!("claim of {key}: expected acquired, got {other:?}"),
    }
}

/// Generates one test per store for each semantic test function below.
macro_rules! on_both_stores {
    ($($name:ident),+ $(,)?) => {
        mod on_redis {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    super::$name(super::redis_store().await).await;
                }
            )+
        }
        mod on_memory {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    super::$name(super::memory_store()).await;
                }
            )+
        }
    };
}

on_both_stores!(
    claim_acquires_with_a_fencing_token_from_one_counter,
    second_claim_is_busy_for_at_most_the_lease,
    completed_key_is_done_for_later_claims,
    release_lets_a_new_claim_acquire_with_a_larger_token,
    renew_extends_a_held_lease,
    renew_after_expiry_returns_false,
    stale_owner_cannot_complete_or_release,
    done_marker_expires_after_the_window,
    handlers_do_not_collide,
    concurrent_claims_yield_exactly_one_acquired,
    zero_durations_round_up_to_one_millisecond,
    owner_cannot_renew_or_complete_after_release,
    a_batch_claims_each_key_on_its_own,
    a_batch_completes_renews_and_releases_only_what_it_owns,
    an_empty_batch_asks_nothing,
    kv_commit_writes_with_the_done_marker_all_or_nothing,
    kv_commit_of_a_stale_owner_writes_nothing,
    kv_values_expire_and_listing_skips_them,
    an_increment_after_a_set_keeps_the_ttl_that_set_gave,
);

fn writes(ops: Vec<KvOp>) -> KvWrites {
    KvWrites {
        namespace: "orders".into(),
        ops,
    }
}

fn set(key: &str, value: &str, ttl_ms: Option<u64>) -> KvOp {
    KvOp::Set {
        key: key.into(),
        value: value.into(),
        ttl_ms,
    }
}

async fn commit(store: &Store, lease: Option<&Lease>, w: &KvWrites) -> Commit {
    store
        .commit_many(&[(lease, w)], WINDOW)
        .await
        .pop()
        .expect("one result")
        .expect("commit")
}

async fn kv_commit_writes_with_the_done_marker_all_or_nothing(store: Store) {
    let key = store.key("orders", "m-1");
    let lease = acquire(&store, &key, LEASE).await;
    let w = writes(vec![
        set("a", "1", None),
        KvOp::Increment {
            key: "n".into(),
            delta: 5,
        },
        KvOp::Increment {
            key: "n".into(),
            delta: -2,
        },
        KvOp::CompareAndSwap {
            key: "c".into(),
            expected: None,
            new: Some(b"x".to_vec()),
        },
    ]);
    assert_eq!(commit(&store, Some(&lease), &w).await, Commit::Done);
    assert_eq!(
        store.kv_get("orders", "n").await.unwrap(),
        Some(b"3".to_vec())
    );
    assert_eq!(
        store.kv_get("orders", "a").await.unwrap(),
        Some(b"1".to_vec())
    );
    assert_eq!(
        store.kv_get("other", "a").await.unwrap(),
        None,
        "namespaces"
    );
    assert_eq!(
        store.claim(&key, LEASE).await.expect("claim"),
        Claim::Done,
        "the same step marked the key done"
    );
    assert_eq!(
        store.kv_list("orders", "", 10).await.unwrap(),
        ["a", "c", "n"]
    );

    // A compare-and-swap that no longer holds: nothing of the message is
    // written, and its lease is still held (not marked done).
    let key2 = store.key("orders", "m-2");
    let lease2 = acquire(&store, &key2, LEASE).await;
    let w = writes(vec![
        set("a", "2", None),
        KvOp::CompareAndSwap {
            key: "c".into(),
            expected: None,
            new: Some(b"y".to_vec()),
        },
    ]);
    assert!(matches!(
        commit(&store, Some(&lease2), &w).await,
        Commit::Conflict(why) if why.contains("\"c\"")
    ));
    assert_eq!(
        store.kv_get("orders", "a").await.unwrap(),
        Some(b"1".to_vec())
    );
    assert!(matches!(
        store.claim(&key2, LEASE).await,
        Ok(Claim::Busy { .. })
    ));
    // An increment of text: refused whole, too.
    let w = writes(vec![
        set("b", "new", None),
        KvOp::Increment {
            key: "a".into(),
            delta: 1,
        },
        KvOp::Increment {
            key: "c".into(),
            delta: 1,
        },
    ]);
    assert!(matches!(
        commit(&store, Some(&lease2), &w).await,
        Commit::NotACounter(why) if why.contains("\"c\"")
    ));
    assert_eq!(store.kv_get("orders", "b").await.unwrap(), None);
    assert_eq!(
        store.kv_get("orders", "a").await.unwrap(),
        Some(b"1".to_vec())
    );
    // Without a lease (dedup off): written, no key marked.
    let w = writes(vec![KvOp::Delete { key: "a".into() }]);
    assert_eq!(commit(&store, None, &w).await, Commit::Done);
    assert_eq!(store.kv_get("orders", "a").await.unwrap(), None);
    assert_eq!(store.kv_list("orders", "", 10).await.unwrap(), ["c", "n"]);
}

async fn kv_commit_of_a_stale_owner_writes_nothing(store: Store) {
    let key = store.key("orders", "m-1");
    let stale = acquire(&store, &key, Duration::from_millis(50)).await;
    tokio::time::sleep(Duration::from_millis(120)).await;
    let w = writes(vec![KvOp::Increment {
        key: "n".into(),
        delta: 1,
    }]);
    // Expired, no successor yet: refused.
    assert_eq!(commit(&store, Some(&stale), &w).await, Commit::Lost);
    let current = acquire(&store, &key, LEASE).await;
    assert_eq!(commit(&store, Some(&stale), &w).await, Commit::Lost);
    assert_eq!(store.kv_get("orders", "n").await.unwrap(), None);
    assert_eq!(commit(&store, Some(&current), &w).await, Commit::Done);
    assert_eq!(commit(&store, Some(&stale), &w).await, Commit::Lost);
    assert_eq!(
        store.kv_get("orders", "n").await.unwrap(),
        Some(b"1".to_vec())
    );
}

async fn kv_values_expire_and_listing_skips_them(store: Store) {
    let w = writes(vec![
        set("t:1", "short", Some(50)),
        set("t:2", "long", Some(60_000)),
        set("t:3", "forever", None),
        set("u", "other prefix", None),
    ]);
    assert_eq!(commit(&store, None, &w).await, Commit::Done);
    assert_eq!(
        store.kv_list("orders", "t:", 10).await.unwrap(),
        ["t:1", "t:2", "t:3"]
    );
    assert_eq!(
        store.kv_list("orders", "t:", 2).await.unwrap(),
        ["t:1", "t:2"]
    );
    tokio::time::sleep(Duration::from_millis(120)).await;
    assert_eq!(store.kv_get("orders", "t:1").await.unwrap(), None);
    assert_eq!(
        store.kv_list("orders", "t:", 10).await.unwrap(),
        ["t:2", "t:3"]
    );
    // An increment keeps the TTL; a set without one drops it.
    let w = writes(vec![KvOp::Increment {
        key: "ctr".into(),
        delta: 1,
    }]);
    assert_eq!(commit(&store, None, &w).await, Commit::Done);
    assert_eq!(
        store.kv_get("orders", "ctr").await.unwrap(),
        Some(b"1".to_vec())
    );
}

async fn an_increment_after_a_set_keeps_the_ttl_that_set_gave(store: Store) {
    let inc = |key: &str| KvOp::Increment {
        key: key.into(),
        delta: 1,
    };
    // `k` had a short TTL; a set without one, then an increment, in one
    // commit: the set dropped the TTL and the increment keeps that.
    let w = writes(vec![set("k", "1", Some(100))]);
    assert_eq!(commit(&store, None, &w).await, Commit::Done);
    let w = writes(vec![set("k", "5", None), inc("k")]);
    assert_eq!(commit(&store, None, &w).await, Commit::Done);
    // `j`: a set with a short TTL, then an increment: the TTL stays.
    let w = writes(vec![set("j", "1", Some(100)), inc("j")]);
    assert_eq!(commit(&store, None, &w).await, Commit::Done);
    assert_eq!(
        store.kv_get("orders", "j").await.unwrap(),
        Some(b"2".to_vec())
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        store.kv_get("orders", "k").await.unwrap(),
        Some(b"6".to_vec()),
        "the set without a TTL dropped the old one"
    );
    assert_eq!(store.kv_get("orders", "j").await.unwrap(), None, "expired");
}

async fn claim_acquires_with_a_fencing_token_from_one_counter(store: Store) {
    let key = store.key("orders", "m-1");
    let lease = acquire(&store, &key, LEASE).await;
    assert_eq!(lease.key, key);
    assert!(lease.fencing_token > 0, "{lease:?}");
    assert!(
        uuid::Uuid::parse_str(&lease.owner).is_ok(),
        "owner {} is a uuid",
        lease.owner
    );
    let other = acquire(&store, &store.key("orders", "m-2"), LEASE).await;
    assert!(
        other.fencing_token > lease.fencing_token,
        "one counter for every key: {} after {}",
        other.fencing_token,
        lease.fencing_token
    );
    assert_ne!(
        other.owner, lease.owner,
        "owner tokens are unique per claim"
    );
}

async fn second_claim_is_busy_for_at_most_the_lease(store: Store) {
    let key = store.key("orders", "m-1");
    let lease = Duration::from_secs(5);
    acquire(&store, &key, lease).await;
    match store.claim(&key, lease).await {
        Ok(Claim::Busy { retry_after }) => {
            assert!(retry_after <= lease, "retry_after {retry_after:?} > lease");
            assert!(
                retry_after > lease / 2,
                "retry_after {retry_after:?} is the lease's remaining time"
            );
        }
        other => panic!("expected busy, got {other:?}"),
    }
}

async fn completed_key_is_done_for_later_claims(store: Store) {
    let key = store.key("orders", "m-1");
    let lease = acquire(&store, &key, LEASE).await;
    assert!(store.complete(&lease, WINDOW).await.expect("complete"));
    for _ in 0..2 {
        assert_eq!(store.claim(&key, LEASE).await.expect("claim"), Claim::Done);
    }
    assert!(
        !store.renew(&lease, LEASE).await.expect("renew"),
        "a done key has no lease left to renew"
    );
    assert!(
        !store.release(&lease).await.expect("release"),
        "a done key is never released"
    );
    assert_eq!(store.claim(&key, LEASE).await.expect("claim"), Claim::Done);
}

async fn release_lets_a_new_claim_acquire_with_a_larger_token(store: Store) {
    let key = store.key("orders", "m-1");
    let first = acquire(&store, &key, LEASE).await;
    assert!(store.release(&first).await.expect("release"));
    let second = acquire(&store, &key, LEASE).await;
    assert!(
        second.fencing_token > first.fencing_token,
        "{} after {}",
        second.fencing_token,
        first.fencing_token
    );
    assert_ne!(second.owner, first.owner);
}

async fn renew_extends_a_held_lease(store: Store) {
    let key = store.key("orders", "m-1");
    let lease = acquire(&store, &key, Duration::from_millis(100)).await;
    assert!(store.renew(&lease, LEASE).await.expect("renew"));
    // Past the original lease, the renewed one still holds.
    tokio::time::sleep(Duration::from_millis(200)).await;
    match store.claim(&key, LEASE).await {
        Ok(Claim::Busy { retry_after }) => {
            assert!(retry_after > LEASE / 2, "retry_after {retry_after:?}");
        }
        other => panic!("expected busy, got {other:?}"),
    }
    assert!(store.complete(&lease, WINDOW).await.expect("complete"));
}

async fn renew_after_expiry_returns_false(store: Store) {
    let key = store.key("orders", "m-1");
    let lease = acquire(&store, &key, Duration::from_millis(50)).await;
    tokio::time::sleep(Duration::from_millis(120)).await;
    assert!(
        !store.renew(&lease, LEASE).await.expect("renew"),
        "renewed an expired lease"
    );
    // Nothing was recreated: the key is free to claim.
    let next = acquire(&store, &key, LEASE).await;
    assert!(
        !store.renew(&lease, LEASE).await.expect("renew"),
        "renewed a lease another owner holds"
    );
    assert!(store.renew(&next, LEASE).await.expect("renew"));
}

async fn stale_owner_cannot_complete_or_release(store: Store) {
    let key = store.key("orders", "m-1");
    let stale = acquire(&store, &key, Duration::from_millis(50)).await;
    tokio::time::sleep(Duration::from_millis(120)).await;
    let current = acquire(&store, &key, LEASE).await;
    assert!(current.fencing_token > stale.fencing_token);

    assert!(!store.complete(&stale, WINDOW).await.expect("complete"));
    assert!(!store.release(&stale).await.expect("release"));
    assert!(
        matches!(store.claim(&key, LEASE).await, Ok(Claim::Busy { .. })),
        "the current owner still holds the key"
    );
    assert!(store.renew(&current, LEASE).await.expect("renew"));

    assert!(store.complete(&current, WINDOW).await.expect("complete"));
    assert_eq!(store.claim(&key, LEASE).await.expect("claim"), Claim::Done);
}

async fn done_marker_expires_after_the_window(store: Store) {
    let key = store.key("orders", "m-1");
    let window = Duration::from_millis(100);
    let first = acquire(&store, &key, LEASE).await;
    assert!(store.complete(&first, window).await.expect("complete"));
    assert_eq!(store.claim(&key, LEASE).await.expect("claim"), Claim::Done);
    tokio::time::sleep(Duration::from_millis(250)).await;
    let second = acquire(&store, &key, LEASE).await;
    assert!(
        second.fencing_token > first.fencing_token,
        "the counter outlives the marker: {} after {}",
        second.fencing_token,
        first.fencing_token
    );
}

async fn handlers_do_not_collide(store: Store) {
    let a = store.key("billing", "m-1");
    let b = store.key("shipping", "m-1");
    assert_ne!(a, b);
    let lease_a = acquire(&store, &a, LEASE).await;
    let lease_b = acquire(&store, &b, LEASE).await;
    assert!(store.complete(&lease_a, WINDOW).await.expect("complete"));
    assert_eq!(store.claim(&a, LEASE).await.expect("claim"), Claim::Done);
    assert!(
        matches!(store.claim(&b, LEASE).await, Ok(Claim::Busy { .. })),
        "completing one handler's key leaves the other's alone"
    );
    assert!(store.release(&lease_b).await.expect("release"));

    // Separators inside names cannot make two pairs meet, and no message key
    // can name the fencing counter.
    assert_ne!(store.key("a:b", "c"), store.key("a", "b:c"));
    let counter = store.fence_counter(&store.key("h", "x"));
    // (Handler names are never empty: the config refuses one.)
    for (handler, key) in [
        ("h", ":fence"),
        ("h", "fence"),
        ("h:", "fence"),
        (":", "fence"),
    ] {
        assert_ne!(store.key(handler, key), counter, "{handler:?} {key:?}");
    }
    assert_ne!(store.key("h", "%3A"), store.key("h", ":"));

    // A key past PLAIN_KEY_MAX is stored by its digest: bounded, the same
    // for the same key, distinct for another, and never equal to a short
    // key spelling out the digest form.
    let at = "k".repeat(crate::dedup::PLAIN_KEY_MAX);
    assert!(
        store.key("h", &at).ends_with(&at),
        "a key at the limit is kept"
    );
    let long = "k".repeat(100_000);
    let hashed = store.key("h", &long);
    assert!(hashed.len() < 128, "{} bytes", hashed.len());
    assert_eq!(hashed, store.key("h", &long));
    assert_ne!(hashed, store.key("h", &format!("{long}x")));
    let spelled = hashed
        .rsplit_once(":sha256:")
        .map(|(_, d)| format!("sha256:{d}"));
    assert_ne!(store.key("h", &spelled.expect("the digest form")), hashed);
    let l = acquire(&store, &hashed, LEASE).await;
    assert!(store.complete(&l, WINDOW).await.expect("complete"));
    assert_eq!(
        store
            .claim(&store.key("h", &long), LEASE)
            .await
            .expect("claim"),
        Claim::Done
    );
    // Tokens come from one counter, so each claim's is larger than the last,
    // whatever its key.
    let x = acquire(&store, &store.key("h", "x"), LEASE).await;
    let x_fence = acquire(&store, &store.key("h", "x:fence"), LEASE).await;
    assert!(
        x_fence.fencing_token > x.fencing_token,
        "{x:?} then {x_fence:?}"
    );
}

async fn concurrent_claims_yield_exactly_one_acquired(store: Store) {
    let key = store.key("orders", "m-1");
    let claims: Vec<_> = (0..200)
        .map(|_| {
            let (store, key) = (store.clone(), key.clone());
            tokio::spawn(async move { store.claim(&key, LEASE).await })
        })
        .collect();
    let (mut acquired, mut busy) = (Vec::new(), 0);
    for claim in claims {
        match claim.await.expect("claim task panicked") {
            Ok(Claim::Acquired(lease)) => acquired.push(lease),
            Ok(Claim::Busy { .. }) => busy += 1,
            other => panic!("expected acquired or busy, got {other:?}"),
        }
    }
    assert_eq!(acquired.len(), 1, "winners: {acquired:?}");
    assert_eq!(busy, 199);
    assert!(acquired[0].fencing_token > 0);
}

async fn zero_durations_round_up_to_one_millisecond(store: Store) {
    let key = store.key("orders", "m-1");
    let lease = acquire(&store, &key, Duration::ZERO).await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    let next = acquire(&store, &key, LEASE).await;
    assert!(next.fencing_token > lease.fencing_token);
    assert!(
        store
            .complete(&next, Duration::ZERO)
            .await
            .expect("complete")
    );
    tokio::time::sleep(Duration::from_millis(20)).await;
    acquire(&store, &key, LEASE).await;
}

async fn owner_cannot_renew_or_complete_after_release(store: Store) {
    let key = store.key("orders", "m-1");
    let lease = acquire(&store, &key, LEASE).await;
    assert!(store.release(&lease).await.expect("release"));
    assert!(!store.release(&lease).await.expect("release"));
    assert!(!store.renew(&lease, LEASE).await.expect("renew"));
    assert!(!store.complete(&lease, WINDOW).await.expect("complete"));
    // The failed complete wrote nothing: the key is still free.
    acquire(&store, &key, LEASE).await;
}

#[tokio::test]
async fn memory_store_describes_itself_as_one_process_only() {
    let store = Store::memory("warren");
    assert_eq!(
        store.describe(),
        "in-process (prefix warren; dedups within this process only)"
    );
    assert_eq!(store.key("orders", "m-1"), "warren:orders:m-1");
    store.ping().await.expect("memory ping");
}

async fn a_batch_claims_each_key_on_its_own(store: Store) {
    let (free, done, held) = (
        store.key("orders", "free"),
        store.key("orders", "done"),
        store.key("orders", "held"),
    );
    let marked = acquire(&store, &done, LEASE).await;
    assert!(store.complete(&marked, WINDOW).await.expect("complete"));
    let holder = acquire(&store, &held, LEASE).await;

    // The same key twice in one batch: the first claim wins, the second
    // sees it held, exactly as two messages claiming one after the other.
    let keys = [free.as_str(), done.as_str(), held.as_str(), free.as_str()];
    let got = store.claim_many(&keys, LEASE).await;
    assert_eq!(got.len(), 4, "one result per key");
    match &got[0] {
        Ok(Claim::Acquired(l)) => {
            assert_eq!(l.key, free);
            assert!(
                l.fencing_token > holder.fencing_token,
                "{l:?} after {holder:?}"
            );
        }
        other => panic!("free key: expected acquired, got {other:?}"),
    }
    assert_eq!(got[1].as_ref().expect("done key"), &Claim::Done);
    assert!(
        matches!(got[2], Ok(Claim::Busy { .. })),
        "held key: {:?}",
        got[2]
    );
    assert!(
        matches!(got[3], Ok(Claim::Busy { .. })),
        "free key again: {:?}",
        got[3]
    );
}

async fn a_batch_completes_renews_and_releases_only_what_it_owns(store: Store) {
    let keys: Vec<String> = (0..4)
        .map(|i| store.key("orders", &format!("m-{i}")))
        .collect();
    let mut leases = Vec::new();
    for k in &keys {
        leases.push(acquire(&store, k, LEASE).await);
    }
    // Lease 3 is lost: released, then claimed by someone else.
    assert!(store.release(&leases[3]).await.expect("release"));
    let thief = acquire(&store, &keys[3], LEASE).await;

    let all: Vec<&Lease> = leases.iter().collect();
    let renewed: Vec<bool> = store
        .renew_many(&all, LEASE)
        .await
        .into_iter()
        .map(|r| r.expect("renew"))
        .collect();
    assert_eq!(renewed, [true, true, true, false]);

    let done: Vec<bool> = store
        .complete_many(&all[..2], WINDOW)
        .await
        .into_iter()
        .chain(store.complete_many(&all[3..], WINDOW).await)
        .map(|r| r.expect("complete"))
        .collect();
    assert_eq!(done, [true, true, false], "the lost lease writes nothing");
    let released: Vec<bool> = store
        .release_many(&all)
        .await
        .into_iter()
        .map(|r| r.expect("release"))
        .collect();
    assert_eq!(
        released,
        [false, false, true, false],
        "done keys stay done; only the held lease is released"
    );
    for (k, want) in keys
        .iter()
        .zip([Some(Claim::Done), Some(Claim::Done), None, None])
    {
        let got = store.claim(k, LEASE).await.expect("claim");
        match want {
            Some(w) => assert_eq!(got, w, "{k}"),
            None if k == &keys[2] => assert!(matches!(got, Claim::Acquired(_)), "{k}: {got:?}"),
            None => assert!(
                matches!(got, Claim::Busy { .. }),
                "{k} is the thief's: {got:?}"
            ),
        }
    }
    assert!(
        store
            .release(&thief)
            .await
            .expect("the thief still owns its key")
    );
}

async fn an_empty_batch_asks_nothing(store: Store) {
    assert!(store.claim_many(&[], LEASE).await.is_empty());
    assert!(store.complete_many(&[], WINDOW).await.is_empty());
    assert!(store.renew_many(&[], LEASE).await.is_empty());
    assert!(store.release_many(&[]).await.is_empty());
}
