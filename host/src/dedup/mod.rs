//! Dedup store: claim, renew, complete and release a per-message lease, so a
//! message delivered twice runs its handler once.
//!
//! The protocol (docs/semantics.md, "Dedup"): a claim sets the key to a
//! random owner token with a lease (`SET NX PX`) and hands out a fencing token
//! from a per-key counter; the owner renews the lease while its handler runs;
//! on success it swaps its token for the done marker, which lives for the
//! dedup window; on failure it deletes the key so a retry can claim it again.
//! Every step after the claim is a compare-and-swap on the owner token, so an
//! owner that lost its lease can never overwrite its successor.
//!
//! Layout:
//!
//! - this file: the public API ([`Store`], [`Claim`], [`Lease`],
//!   [`DedupError`]) and what both stores share (key names, the done marker,
//!   millisecond conversion);
//! - `redis`: the shared store, four Lua scripts (`*.lua`) on one
//!   multiplexed, auto-reconnecting connection; a batch of messages makes
//!   each step one pipeline, so a batch costs one round trip per step;
//! - `conn`: that connection, to one server, to the master Sentinel names
//!   (followed through failovers) or to a Cluster;
//! - `memory`: the same semantics in-process, for a host without `[redis]`.
//!
//! Architecture Invariant: this is the only module that knows Redis. It does
//! not know AMQP, handlers or the retry policy: it does not decide when to
//! claim or what to do when the store is unavailable (pause or fail open);
//! the consumer pipeline does.

mod conn;
pub mod kv;
mod memory;
mod read_cache;
mod redis;
#[cfg(test)]
mod tests;

use std::time::Duration;

pub use self::kv::{Commit, KvOp, KvWrites};
pub use self::memory::MemoryStore;
pub use self::read_cache::CacheStats;
pub use self::redis::RedisStore;
use crate::config::{RedisServers, TlsPem};

/// The value a completed key holds. Owner tokens are uuid v4 strings, so an
/// owner token can never equal it.
const DONE: &str = "done";

/// The longest lease or window the stores accept (ten years); longer ones are
/// clamped. It keeps every deadline far from overflowing an `Instant` and
/// every sum the scripts compute exact in a Lua number.
const MAX_TTL_MS: u64 = 10 * 365 * 24 * 60 * 60 * 1000;

/// Outcome of trying to claim a key.
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use]
pub enum Claim {
    /// We hold the lease: run the handler.
    Acquired(Lease),
    /// The key is marked done within the dedup window: ack without running
    /// (a dedup hit).
    Done,
    /// Another owner holds the lease: retry later through the delayed path
    /// (not an attempt).
    Busy {
        /// The lease's remaining time (PTTL), at least 1 ms.
        retry_after: Duration,
    },
}

/// A held claim on one key: what renew, complete and release compare against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// The namespaced key, as [`Store::key`] built it.
    pub key: String,
    /// A random token, unique per claim; the key holds it while we own it.
    pub owner: String,
    /// Grows with every claim of this key (it survives release and expiry for
    /// at least the dedup window), so effects elsewhere can reject a stale
    /// owner that was paused past its lease.
    pub fencing_token: u64,
}

/// Why a dedup store call failed.
#[derive(Debug, thiserror::Error)]
pub enum DedupError {
    /// The store cannot be used right now (connection refused or lost,
    /// timeout, out of memory, read-only replica, ...). The caller decides
    /// whether to pause or to fail open.
    #[error("dedup store unavailable: {0}")]
    Unavailable(String),
    /// The Redis URL could not be parsed. Credentials are masked.
    #[error("invalid redis url {url}: {reason}")]
    InvalidUrl {
        /// The URL with any user and password masked.
        url: String,
        /// What the parser said.
        reason: String,
    },
    /// The store works but this one key holds something the protocol did not
    /// write (a foreign value of another type). Other keys are unaffected.
    #[error("dedup store rejected key {key}: {reason}")]
    Rejected {
        /// The namespaced key.
        key: String,
        /// What the store said.
        reason: String,
    },
}

/// The dedup store the consumer pipeline uses. Cheap to clone (an `Arc`
/// inside); concurrent callers share one store.
#[derive(Clone, Debug)]
pub enum Store {
    /// Redis, shared by every process of the consumer group.
    Redis(RedisStore),
    /// In-process, valid for this process only.
    Memory(MemoryStore),
}

/// Checks that `url` is a Redis URL the client accepts, without
/// connecting. The error shows the URL without its password.
pub fn validate_url(url: &str) -> Result<(), String> {
    let shown = crate::config::redact_url(url);
    let scheme = url.split_once("://").map(|(s, _)| s);
    if !matches!(scheme, Some("redis" | "rediss" | "redis+unix" | "unix")) {
        return Err(format!(
            "{shown:?} is not a Redis URL: expected redis://host:port/db"
        ));
    }
    ::redis::Client::open(url)
        .map(|_| ())
        .map_err(|e| format!("{shown:?} is not a valid Redis URL: {e}"))
}

impl Store {
    /// Connects to Redis at `url` and loads the scripts. Keys live under
    /// `prefix`.
    ///
    /// The whole process should share the one store this returns: it holds a
    /// single multiplexed, auto-reconnecting connection on which concurrent
    /// calls are pipelined.
    pub async fn redis(url: &str, prefix: &str) -> Result<Store, DedupError> {
        Self::redis_tls(url, prefix, &TlsPem::default()).await
    }

    /// [`Store::redis`] with certificates for a `rediss://` URL: the
    /// server's must chain to `tls.ca` (the system's roots without one),
    /// and `tls.identity` is presented when the server asks.
    pub async fn redis_tls(url: &str, prefix: &str, tls: &TlsPem) -> Result<Store, DedupError> {
        Self::connect(RedisServers::Single(url), prefix, tls, 0).await
    }

    /// [`Store::redis`] with a key-value read cache of `bytes`.
    pub async fn redis_cached(url: &str, prefix: &str, bytes: usize) -> Result<Store, DedupError> {
        Self::connect(RedisServers::Single(url), prefix, &TlsPem::default(), bytes).await
    }

    /// Connects to the deployment `[redis]` names (one server, a master
    /// through Sentinel, or a Cluster) and loads the scripts. Keys live
    /// under `prefix`. With one server and `read_cache` > 0, key-value
    /// reads are cached in up to that many bytes (`read_cache.rs`).
    pub async fn connect(
        servers: RedisServers<'_>,
        prefix: &str,
        tls: &TlsPem,
        read_cache: usize,
    ) -> Result<Store, DedupError> {
        RedisStore::connect(servers, prefix, tls, read_cache)
            .await
            .map(Store::Redis)
    }

    /// The in-process store with the same semantics, valid for one process
    /// only.
    pub fn memory(prefix: &str) -> Store {
        Store::Memory(MemoryStore::new(prefix))
    }

    /// A description for the start-up log, e.g.
    /// `redis redis://127.0.0.1:6379/0 (prefix warren)`. Never contains
    /// credentials.
    pub fn describe(&self) -> String {
        match self {
            Store::Redis(store) => store.describe(),
            Store::Memory(store) => store.describe(),
        }
    }

    /// [`Store::key_in`] for a handler whose key-value namespace is its
    /// own name.
    pub fn key(&self, handler: &str, key: &str) -> String {
        self.key_in(handler, handler, key)
    }

    /// The namespaced key `{prefix}:{handler}:{key}`, so two handlers
    /// consuming the same message do not collide.
    ///
    /// In Redis Cluster it is `{prefix}:{<namespace>}:{handler}:{key}`
    /// instead: `{<namespace>}` is the hash tag the handler's key-value
    /// keys carry (`kv::data_key`), so a message's dedup key, its fencing
    /// counter and the keys its commit writes share one slot, as one
    /// script's keys must (docs/semantics.md, "Redis Cluster"). One server
    /// and Sentinel keep the form without a tag, so an existing deployment
    /// keeps its keys.
    ///
    /// `%` and `:` inside `handler` and `key` are escaped as `%25` and `%3A`:
    /// that keeps the mapping one-to-one (handler `a:b` with key `c` differs
    /// from handler `a` with key `b:c`) and means no message key can name
    /// the fencing counter ([`Store::fence_counter`]). Ordinary names and ids
    /// (uuids, hex digests) appear unchanged.
    ///
    /// A message key longer than [`PLAIN_KEY_MAX`] bytes is stored as
    /// `sha256:` and its SHA-256 in hex instead: a `header:NAME` key can be
    /// as long as a frame (about 128 KiB), and its done-marker lives for
    /// `window_s` (a day by default), so without this a publisher could
    /// make every message cost Redis that much for a day. No escaped key
    /// contains the bare `:` of that form, so the mapping stays one-to-one.
    pub fn key_in(&self, handler: &str, namespace: &str, key: &str) -> String {
        let (prefix, tagged) = match self {
            Store::Redis(store) => (store.prefix(), store.cluster()),
            Store::Memory(store) => (store.prefix(), false),
        };
        let mut out = String::with_capacity(
            prefix.len()
                + handler.len()
                + key.len().min(PLAIN_KEY_MAX + 8)
                + 4
                + if tagged { namespace.len() + 3 } else { 0 },
        );
        out.push_str(prefix);
        out.push(':');
        if tagged {
            out.push('{');
            out.push_str(namespace);
            out.push_str("}:");
        }
        escape_into(handler, &mut out);
        out.push(':');
        if key.len() > PLAIN_KEY_MAX {
            use sha2::{Digest as _, Sha256};
            out.push_str("sha256:");
            out.push_str(&hex::encode(Sha256::digest(key.as_bytes())));
        } else {
            escape_into(key, &mut out);
        }
        out
    }

    // Single-key forms of the batch calls, for the unit tests: the
    // pipeline always works a batch at a time.
    #[cfg(test)]
    /// Tries to claim `key` (a namespaced key from [`Store::key`]) in one
    /// round trip.
    ///
    /// If the key is absent, it now holds a fresh owner token for `lease`,
    /// with a fencing token larger than any handed out before:
    /// [`Claim::Acquired`]. If it holds the done marker:
    /// [`Claim::Done`]. Otherwise another owner holds it: [`Claim::Busy`]
    /// with the lease's remaining time. Durations are rounded up to whole
    /// milliseconds, at least 1.
    pub async fn claim(&self, key: &str, lease: Duration) -> Result<Claim, DedupError> {
        one(self.claim_many(&[key], lease).await)
    }

    /// [`Store::claim`] for every key of a batch, in one round trip to
    /// Redis (a pipeline): one result per key, in order. Each key is claimed
    /// on its own; one key's error does not fail the others.
    pub async fn claim_many(
        &self,
        keys: &[&str],
        lease: Duration,
    ) -> Vec<Result<Claim, DedupError>> {
        match self {
            Store::Redis(store) => store.claim_many(keys, lease).await,
            Store::Memory(store) => keys.iter().map(|k| store.claim(k, lease)).collect(),
        }
    }

    /// The name of the fencing counter the claims of `key` (a namespaced
    /// key) take their tokens from: one per store on one Redis server or
    /// Sentinel and in the in-process store, one per hash tag on a Cluster
    /// (`RedisStore::counter`). No key from [`Store::key_in`] has this name.
    pub fn fence_counter(&self, key: &str) -> String {
        match self {
            Store::Redis(store) => store.counter(key),
            Store::Memory(store) => format!("{}::fence", store.prefix()),
        }
    }

    #[cfg(test)]
    /// Compare-and-pexpire: sets the lease's remaining time to `ttl` if we
    /// still own it. `Ok(false)` means the lease was lost (expired, taken or
    /// done): the caller must then not ack.
    pub async fn renew(&self, lease: &Lease, ttl: Duration) -> Result<bool, DedupError> {
        one(self.renew_many(&[lease], ttl).await)
    }

    /// [`Store::renew`] for every lease of a batch, in one round trip.
    pub async fn renew_many(
        &self,
        leases: &[&Lease],
        ttl: Duration,
    ) -> Vec<Result<bool, DedupError>> {
        match self {
            Store::Redis(store) => store.renew_many(leases, ttl).await,
            Store::Memory(store) => leases.iter().map(|l| store.renew(l, ttl)).collect(),
        }
    }

    #[cfg(test)]
    /// Compare-and-set to the done marker, which then lives for `window`.
    /// `Ok(false)` means we no longer owned the key and nothing was written.
    ///
    /// Call it only once the handler's effects are durable: a key marked done
    /// is never run again within the window.
    pub async fn complete(&self, lease: &Lease, window: Duration) -> Result<bool, DedupError> {
        one(self.complete_many(&[lease], window).await)
    }

    /// [`Store::complete`] for every lease of a batch, in one round trip.
    pub async fn complete_many(
        &self,
        leases: &[&Lease],
        window: Duration,
    ) -> Vec<Result<bool, DedupError>> {
        match self {
            Store::Redis(store) => store.complete_many(leases, window).await,
            Store::Memory(store) => leases.iter().map(|l| store.complete(l, window)).collect(),
        }
    }

    #[cfg(test)]
    /// Compare-and-delete, on handler failure, so a retry can claim the key
    /// again. `Ok(false)` means the key was not ours any more.
    pub async fn release(&self, lease: &Lease) -> Result<bool, DedupError> {
        one(self.release_many(&[lease]).await)
    }

    /// [`Store::release`] for every lease of a batch, in one round trip.
    pub async fn release_many(&self, leases: &[&Lease]) -> Vec<Result<bool, DedupError>> {
        match self {
            Store::Redis(store) => store.release_many(leases).await,
            Store::Memory(store) => leases.iter().map(|l| store.release(l)).collect(),
        }
    }

    /// Commits each message's key-value writes, and marks its key done when
    /// it holds a lease, in one atomic step per message (one round trip for
    /// all): a lost lease, a compare-and-swap that does not hold or an
    /// increment on something that is not a counter writes nothing at all
    /// ([`kv`] has the details). One result per item, in order.
    pub async fn commit_many(
        &self,
        items: &[(Option<&Lease>, &KvWrites)],
        window: Duration,
    ) -> Vec<Result<Commit, DedupError>> {
        match self {
            Store::Redis(store) => store.commit_many(items, window, false).await,
            Store::Memory(store) => items
                .iter()
                .map(|(lease, writes)| store.commit(*lease, writes, window, false))
                .collect(),
        }
    }

    /// [`Store::commit_many`] without writing anything: whether each
    /// commit would go through now (`Commit::Done`), or why not. Run
    /// before a message's outputs are published, so that a
    /// compare-and-swap that no longer holds reruns the message before its
    /// outputs go out rather than after; the commit checks again.
    pub async fn check_many(
        &self,
        items: &[(Option<&Lease>, &KvWrites)],
    ) -> Vec<Result<Commit, DedupError>> {
        let window = Duration::from_secs(1);
        match self {
            Store::Redis(store) => store.commit_many(items, window, true).await,
            Store::Memory(store) => items
                .iter()
                .map(|(lease, writes)| store.commit(*lease, writes, window, true))
                .collect(),
        }
    }

    /// The committed value of `key` in `namespace`.
    pub async fn kv_get(&self, namespace: &str, key: &str) -> Result<Option<Vec<u8>>, DedupError> {
        match self {
            Store::Redis(store) => store.kv_get(namespace, key).await,
            Store::Memory(store) => Ok(store.kv_get(namespace, key)),
        }
    }

    /// How many key-value reads the read cache answered and how many went
    /// to the server; none without a cache.
    pub fn cache_stats(&self) -> Option<CacheStats> {
        match self {
            Store::Redis(store) => store.cache_stats(),
            Store::Memory(_) => None,
        }
    }

    /// The server's id of the read cache's tracking connection, while
    /// there is one (tests kill it with `CLIENT KILL ID`; the log line
    /// "tracking connection up" names it for operators).
    pub fn cache_client_id(&self) -> Option<i64> {
        match self {
            Store::Redis(store) => store.cache_client_id(),
            Store::Memory(_) => None,
        }
    }

    /// Up to `limit` committed keys of `namespace` starting with `prefix`,
    /// in byte order.
    pub async fn kv_list(
        &self,
        namespace: &str,
        prefix: &str,
        limit: usize,
    ) -> Result<Vec<String>, DedupError> {
        match self {
            Store::Redis(store) => store.kv_list(namespace, prefix, limit).await,
            Store::Memory(store) => Ok(store.kv_list(namespace, prefix, limit)),
        }
    }

    /// Checks that the store is reachable (PING for Redis; always `Ok` for
    /// the in-process store).
    pub async fn ping(&self) -> Result<(), DedupError> {
        match self {
            Store::Redis(store) => store.ping().await,
            Store::Memory(_) => Ok(()),
        }
    }
}

/// The one result of a batch call made with one item.
#[cfg(test)]
fn one<T>(results: Vec<Result<T, DedupError>>) -> Result<T, DedupError> {
    results
        .into_iter()
        .next()
        .unwrap_or_else(|| Err(DedupError::Unavailable("the store answered nothing".into())))
}

/// A new owner token: a uuid v4, which can never equal [`DONE`]. Its
/// randomness comes from the thread's CSPRNG (seeded from the OS), not a
/// system call per claim.
fn new_owner() -> String {
    uuid::Builder::from_random_bytes(rand::random())
        .into_uuid()
        .to_string()
}

/// A duration in whole milliseconds as the stores use it: rounded up, at least
/// 1 (Redis rejects `PX 0`), at most [`MAX_TTL_MS`].
fn ttl_millis(duration: Duration) -> u64 {
    let millis = duration.as_nanos().div_ceil(1_000_000);
    u64::try_from(millis)
        .unwrap_or(u64::MAX)
        .clamp(1, MAX_TTL_MS)
}

/// The longest message key stored in Redis as it is (an AMQP message id's
/// own limit); longer ones are stored by their SHA-256 ([`Store::key_in`]).
pub const PLAIN_KEY_MAX: usize = 255;

/// Appends `part` with `%` and `:` escaped, so it holds no `:` of its own.
fn escape_into(part: &str, out: &mut String) {
    for c in part.chars() {
        match c {
            '%' => out.push_str("%25"),
            ':' => out.push_str("%3A"),
            c => out.push(c),
        }
    }
}
