//! Tests only the Redis store needs: an unreachable or stalled server, URL
//! and error handling, script reloading and the fencing counter.

use std::time::{Duration, Instant};

use super::{LEASE, WINDOW, acquire, redis_store, redis_url, unique_prefix};
use crate::dedup::{Claim, DedupError, Lease, Store};

/// A raw connection for looking behind the store's back.
pub(super) async fn raw_redis() -> ::redis::aio::MultiplexedConnection {
    ::redis::Client::open(redis_url())
        .expect("redis url")
        .get_multiplexed_async_connection()
        .await
        .expect("raw redis connection")
}

#[tokio::test]
async fn redis_unreachable_is_unavailable_promptly() {
    let started = Instant::now();
    let outcome = tokio::time::timeout(Duration::from_secs(5), async {
        match Store::redis("redis://127.0.0.1:1/0", &unique_prefix()).await {
            Err(err) => err,
            Ok(store) => {
                let key = store.key("orders", "m-1");
                store
                    .claim(&key, LEASE)
                    .await
                    .expect_err("claim on a dead redis")
            }
        }
    })
    .await;
    let err = outcome.expect("an unreachable redis must fail within 5 s");
    assert!(matches!(err, DedupError::Unavailable(_)), "{err:?}");
    let message = err.to_string();
    assert!(
        message.starts_with("dedup store unavailable: "),
        "{message}"
    );
    assert!(
        message.contains("127.0.0.1:1"),
        "names the store: {message}"
    );
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn redis_invalid_url_is_reported_without_credentials() {
    let err = Store::redis("redis://user:secret@localhost:notaport/0", "warren")
        .await
        .expect_err("a url with a bad port");
    assert!(matches!(err, DedupError::InvalidUrl { .. }), "{err:?}");
    let message = err.to_string();
    assert!(!message.contains("secret"), "{message}");
    assert!(
        message.contains("localhost:notaport"),
        "names the url: {message}"
    );
}

#[tokio::test]
async fn redis_describe_names_the_server_and_prefix() {
    let prefix = unique_prefix();
    let store = Store::redis("redis://127.0.0.1:6379", &prefix)
        .await
        .expect("connect");
    assert_eq!(
        store.describe(),
        format!("redis redis://127.0.0.1:6379/0 (prefix {prefix})")
    );
    store.ping().await.expect("ping");
}

#[tokio::test]
async fn redis_wrong_type_key_is_rejected_not_unavailable() {
    let store = redis_store().await;
    let key = store.key("orders", "m-1");
    let _: () = ::redis::cmd("HSET")
        .arg(&key)
        .arg("field")
        .arg("value")
        .query_async(&mut raw_redis().await)
        .await
        .expect("hset");
    match store.claim(&key, LEASE).await {
        Err(DedupError::Rejected { key: named, reason }) => {
            assert_eq!(named, key);
            assert!(reason.contains("WRONGTYPE"), "{reason}");
        }
        other => panic!("expected rejected, got {other:?}"),
    }
    // The store as a whole is fine, and so are other keys.
    store.ping().await.expect("ping");
    acquire(&store, &store.key("orders", "m-2"), LEASE).await;
}

#[tokio::test]
async fn redis_scripts_reload_after_script_flush() {
    let store = redis_store().await;
    let _: () = ::redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query_async(&mut raw_redis().await)
        .await
        .expect("script flush");
    // Every script must find its way back (EVALSHA, NOSCRIPT, load, EVALSHA).
    let key = store.key("orders", "m-1");
    let lease = acquire(&store, &key, LEASE).await;
    assert!(store.renew(&lease, LEASE).await.expect("renew"));
    assert!(store.complete(&lease, WINDOW).await.expect("complete"));
    let other = acquire(&store, &store.key("orders", "m-2"), LEASE).await;
    assert!(store.release(&other).await.expect("release"));
}

#[tokio::test]
async fn redis_wrong_type_key_in_a_batch_rejects_only_that_key() {
    let store = redis_store().await;
    let bad = store.key("orders", "bad");
    let _: () = ::redis::cmd("HSET")
        .arg(&bad)
        .arg("field")
        .arg("value")
        .query_async(&mut raw_redis().await)
        .await
        .expect("hset");
    let (a, b) = (store.key("orders", "a"), store.key("orders", "b"));
    let got = store.claim_many(&[&a, &bad, &b], LEASE).await;
    assert!(matches!(got[0], Ok(Claim::Acquired(_))), "{:?}", got[0]);
    match &got[1] {
        Err(DedupError::Rejected { key, reason }) => {
            assert_eq!(key, &bad);
            assert!(reason.contains("WRONGTYPE"), "{reason}");
        }
        other => panic!("expected rejected, got {other:?}"),
    }
    assert!(matches!(got[2], Ok(Claim::Acquired(_))), "{:?}", got[2]);
}

#[tokio::test]
async fn redis_batch_reloads_scripts_after_script_flush_and_runs_each_call_once() {
    let store = redis_store().await;
    let keys: Vec<String> = (0..8)
        .map(|i| store.key("orders", &format!("m-{i}")))
        .collect();
    let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
    let _: () = ::redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query_async(&mut raw_redis().await)
        .await
        .expect("script flush");
    let leases: Vec<Lease> = store
        .claim_many(&refs, LEASE)
        .await
        .into_iter()
        .map(|c| match c {
            Ok(Claim::Acquired(l)) => l,
            other => panic!("expected acquired, got {other:?}"),
        })
        .collect();
    // Each key was claimed once: a call retried after NOSCRIPT had not run,
    // so the tokens are the counter's next eight, and it holds the last.
    let first = leases[0].fencing_token;
    assert!(
        leases
            .iter()
            .zip(first..)
            .all(|(l, t)| l.fencing_token == t),
        "{leases:?}"
    );
    let counter: u64 = ::redis::cmd("GET")
        .arg(store.fence_counter(&keys[0]))
        .query_async(&mut raw_redis().await)
        .await
        .expect("get");
    assert_eq!(counter, first + 7);
    let _: () = ::redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query_async(&mut raw_redis().await)
        .await
        .expect("script flush");
    let all: Vec<&Lease> = leases.iter().collect();
    assert!(
        store
            .complete_many(&all, WINDOW)
            .await
            .into_iter()
            .all(|r| r.expect("complete"))
    );
}

/// A message costs Redis one key: its lease, then its done-marker. The
/// fencing tokens come from one counter, which expires a lease after the
/// last claim, are at least the server's clock in microseconds, and do not
/// go back when the counter is lost. A counter that cannot count fails the claims as the store's fault
/// (not the keys'), naming it, and leaves their keys free.
#[tokio::test]
async fn redis_fencing_counter_is_one_key_floored_by_the_clock() {
    let store = redis_store().await;
    let mut raw = raw_redis().await;
    let key = store.key("orders", "m-1");
    let counter = store.fence_counter(&key);
    let micros = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_micros()
    };

    let before = micros();
    let lease = acquire(&store, &key, LEASE).await;
    assert!(
        u128::from(lease.fencing_token) >= before,
        "token {} below the clock {before}",
        lease.fencing_token
    );
    assert!(store.renew(&lease, LEASE).await.expect("renew"));
    assert!(store.complete(&lease, WINDOW).await.expect("complete"));
    let exists: i64 = ::redis::cmd("EXISTS")
        .arg(format!("{key}:fence"))
        .query_async(&mut raw)
        .await
        .expect("exists");
    assert_eq!(exists, 0, "no counter of the message's own");
    let pttl: i64 = ::redis::cmd("PTTL")
        .arg(&counter)
        .query_async(&mut raw)
        .await
        .expect("pttl");
    assert!(
        pttl > 0 && u128::from(pttl.unsigned_abs()) <= LEASE.as_millis(),
        "the counter {counter} lives a lease past the last claim: {pttl} ms"
    );
    let held: String = ::redis::cmd("GET")
        .arg(&counter)
        .query_async(&mut raw)
        .await
        .expect("get");
    assert_eq!(held, lease.fencing_token.to_string());

    // Lost, as after a restart without persistence: still no going back.
    let _: () = ::redis::cmd("DEL")
        .arg(&counter)
        .query_async(&mut raw)
        .await
        .expect("del");
    let other = acquire(&store, &store.key("orders", "m-2"), LEASE).await;
    assert!(
        other.fencing_token > lease.fencing_token,
        "the token went back: {} after {}",
        other.fencing_token,
        lease.fencing_token
    );

    // A counter that is not a number fails every claim of the call, as
    // the store's fault, and leaves the keys free for when it is fixed.
    let _: () = ::redis::cmd("DEL")
        .arg(&counter)
        .query_async(&mut raw)
        .await
        .expect("del");
    let _: () = ::redis::cmd("HSET")
        .arg(&counter)
        .arg("field")
        .arg("value")
        .query_async(&mut raw)
        .await
        .expect("hset");
    let free = store.key("orders", "m-3");
    match store.claim(&free, LEASE).await {
        Err(DedupError::Unavailable(why)) => {
            assert!(why.contains(&counter), "{why}");
            assert!(why.contains(&free), "{why}");
        }
        other => panic!("expected unavailable, got {other:?}"),
    }
    let _: () = ::redis::cmd("DEL")
        .arg(&counter)
        .query_async(&mut raw)
        .await
        .expect("del");
    let fixed = acquire(&store, &free, LEASE).await;
    assert!(fixed.fencing_token > other.fencing_token);
    let _: () = ::redis::cmd("DEL")
        .arg(&counter)
        .query_async(&mut raw)
        .await
        .expect("del");
}

/// A TCP proxy in front of the real Redis. Hung, it keeps every connection
/// open but forwards nothing (a stalled server or a partition); healed, it
/// closes the connections it held and forwards again.
pub(super) struct Proxy {
    pub(super) url: String,
    hung: tokio::sync::watch::Sender<bool>,
    accept: tokio::task::JoinHandle<()>,
}

impl Proxy {
    pub(super) async fn start() -> Proxy {
        use ::redis::{ConnectionAddr, IntoConnectionInfo};

        let info = redis_url().into_connection_info().expect("redis url");
        let ConnectionAddr::Tcp(host, port) = info.addr else {
            panic!("the proxy test needs redis over tcp, not {}", info.addr);
        };
        let upstream = format!("{host}:{port}");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind proxy");
        let url = format!(
            "redis://{}/{}",
            listener.local_addr().expect("proxy address"),
            info.redis.db
        );
        let (hung, hung_rx) = tokio::sync::watch::channel(false);
        let accept = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let (upstream, mut hung) = (upstream.clone(), hung_rx.clone());
                tokio::spawn(async move {
                    let Ok(mut server) = tokio::net::TcpStream::connect(&upstream).await else {
                        return;
                    };
                    // Biased: every poll checks for a hang before it
                    // forwards anything, so nothing sent after `hang()`
                    // returns gets through.
                    let hang = tokio::select! {
                        biased;
                        _ = hung.wait_for(|hung| *hung) => true,
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => false,
                    };
                    if hang {
                        let _ = hung.wait_for(|hung| !*hung).await;
                    }
                    // Dropping the sockets closes both sides.
                });
            }
        });
        Proxy { url, hung, accept }
    }

    pub(super) fn hang(&self) {
        self.hung.send_replace(true);
    }

    pub(super) fn heal(&self) {
        self.hung.send_replace(false);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_stall_is_unavailable_promptly_then_recovers() {
    let proxy = Proxy::start().await;
    let store = Store::redis(&proxy.url, &unique_prefix())
        .await
        .expect("connect through the proxy");
    let key = store.key("orders", "m-1");
    acquire(&store, &key, LEASE).await;

    // A server that stops answering fails the call within the deadline
    // instead of holding the message.
    proxy.hang();
    let started = Instant::now();
    let err = store
        .claim(&key, LEASE)
        .await
        .expect_err("claim through a hung proxy");
    assert!(matches!(err, DedupError::Unavailable(_)), "{err:?}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );

    // Healed, the same store reconnects by itself. The first call after the
    // drop may still see the dead connection, so wait for a ping to pass.
    proxy.heal();
    tokio::time::timeout(Duration::from_secs(5), async {
        while let Err(err) = store.ping().await {
            assert!(matches!(err, DedupError::Unavailable(_)), "{err:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the store reconnects within 5 s");
    assert!(
        matches!(store.claim(&key, LEASE).await, Ok(Claim::Busy { .. })),
        "the lease taken before the stall is still held"
    );
}
