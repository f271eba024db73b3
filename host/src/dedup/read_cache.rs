//! Committed key-value values kept in the process, kept fresh by Redis's
//! server-assisted client-side caching (`CLIENT TRACKING`), so that a
//! handler's `get` of a key read before costs no round trip.
//!
//! How it stays fresh:
//!
//! - Reads that miss go over a connection of their own (RESP3) on which
//!   tracking is on: Redis remembers the keys it read and pushes an
//!   `invalidate` on that connection when one of them changes, whoever
//!   changed it. The push is handled in the connection's read loop, in wire
//!   order, before any reply after it.
//! - A reply can reach its caller after an invalidation that followed it on
//!   the wire: each key being read is `pending`, an invalidation marks it,
//!   and a marked read is not kept.
//! - This process's own commits go over the same connection
//!   ([`ReadCache::track_commit`]; `NOLOOP`: its own writes push it
//!   nothing) and the script reads each written key again, so Redis tracks
//!   it; the cache then keeps what the commit left (the value a set, a
//!   delete or a compare-and-swap wrote, the sum of an increment as the
//!   script answers it). A commit sent without the connection forgets its
//!   keys instead ([`ReadCache::forget`]). Either way the next message on
//!   this host reads its writes without waiting for a push.
//! - A connection that closes, fails a read or stops answering takes the
//!   whole cache with it (pushes may have been lost); reads go to the store
//!   directly until a new tracking connection is up.
//! - A connection that stalls without closing delivers no pushes: a ping
//!   every [`PING_EVERY`] proves that every push sent before it has been
//!   handled, and hits are served only while the last ping that came back
//!   was sent less than [`FRESH_FOR`] ago. That bounds how old a hit can be,
//!   whatever the network does; on a healthy connection it is the time a
//!   push takes to arrive.
//!
//! Memory is bounded by `capacity` bytes (key, value and a fixed overhead
//! per entry); the oldest entries go first.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use ::redis::aio::MultiplexedConnection;
use ::redis::{AsyncConnectionConfig, Client, PushInfo, PushKind, Value};

use super::conn::{CONNECT_TIMEOUT, RESPONSE_TIMEOUT};

/// How often the tracking connection is pinged.
pub(super) const PING_EVERY: Duration = Duration::from_millis(250);
/// How long after the last answered ping was sent hits are still served:
/// the bound on how old a cached value can be.
pub(super) const FRESH_FOR: Duration = Duration::from_secs(1);
/// How long to wait before trying again after a tracking connection could
/// not be made; doubled after each failure in a row, up to
/// [`RECONNECT_AT_MOST`].
const RECONNECT_AFTER: Duration = Duration::from_secs(1);
const RECONNECT_AT_MOST: Duration = Duration::from_secs(300);
/// What an entry costs beyond its key and value.
const ENTRY_OVERHEAD: usize = 64;

/// The cache of one store. Shared by every caller in the process.
pub(super) struct ReadCache {
    /// The server, RESP3 on.
    client: Client,
    /// The server as logs name it.
    server: String,
    capacity: usize,
    state: Arc<Mutex<State>>,
    next_id: AtomicU64,
    hits: AtomicU64,
    misses: AtomicU64,
}

#[derive(Default)]
struct State {
    /// The tracking connection and its id; none while there is none.
    live: Option<Live>,
    connecting: bool,
    retry_at: Option<Instant>,
    /// Tracking connections that could not be made in a row.
    failures: u32,
    entries: HashMap<String, Entry>,
    /// Keys in the order they were kept, with the stamp they were kept
    /// under (an entry kept again later has a newer one).
    order: VecDeque<(String, u64)>,
    stamp: u64,
    bytes: usize,
    /// Keys being read: how many reads, and whether one of their keys was
    /// invalidated meanwhile.
    pending: HashMap<String, Pending>,
}

struct Live {
    id: u64,
    /// The server's id of the connection (`CLIENT ID`).
    client_id: i64,
    conn: MultiplexedConnection,
    /// When the last ping that came back was sent.
    proven: Instant,
}

struct Entry {
    value: Option<Vec<u8>>,
    stamp: u64,
    /// When the key's TTL runs out: Redis's invalidation of an expired
    /// key can come late (expiry is lazy), so the entry ends itself.
    expires: Option<Instant>,
}

#[derive(Default)]
struct Pending {
    reads: u32,
    invalidated: bool,
}

/// How many reads the cache answered, and how many went to the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheStats {
    pub hits: u64,
    pub misses: u64,
}

impl State {
    /// Drops the connection `id` (when it is still the live one) and every
    /// entry: invalidations may have been lost with it.
    fn drop_conn(&mut self, id: u64) -> bool {
        if self.live.as_ref().is_some_and(|l| l.id == id) {
            self.live = None;
            self.clear();
            true
        } else {
            false
        }
    }

    fn clear(&mut self) {
        self.entries.clear();
        self.order.clear();
        self.bytes = 0;
        for p in self.pending.values_mut() {
            p.invalidated = true;
        }
    }

    fn remove(&mut self, key: &str) {
        if let Some(e) = self.entries.remove(key) {
            self.bytes -= cost(key, &e.value);
        }
    }

    /// Drops `key`'s entry, and marks a read of it in flight so that its
    /// answer is not kept.
    fn invalidate(&mut self, key: &str) {
        self.remove(key);
        if let Some(p) = self.pending.get_mut(key) {
            p.invalidated = true;
        }
    }

    /// The live connection's id, and whether a ping proves it fresh (hits
    /// may be served).
    fn live_state(&self) -> Option<(u64, bool)> {
        let l = self.live.as_ref()?;
        Some((l.id, l.proven.elapsed() < FRESH_FOR))
    }

    /// The kept value of `key`, unless its TTL ran out (then it goes).
    fn lookup(&mut self, key: &str) -> Option<Option<Vec<u8>>> {
        let e = self.entries.get(key)?;
        if e.expires.is_some_and(|t| Instant::now() >= t) {
            self.invalidate(key);
            return None;
        }
        Some(e.value.clone())
    }

    /// Unmarks one read (or commit) of `key`; whether the key was
    /// invalidated while it was marked.
    fn unmark(&mut self, key: &str) -> bool {
        match self.pending.get_mut(key) {
            Some(p) => {
                p.reads = p.reads.saturating_sub(1);
                let invalidated = p.invalidated;
                if p.reads == 0 {
                    self.pending.remove(key);
                }
                invalidated
            }
            None => true,
        }
    }

    fn keep(
        &mut self,
        key: &str,
        value: &Option<Vec<u8>>,
        expires: Option<Instant>,
        capacity: usize,
    ) {
        let size = cost(key, value);
        if size > capacity / 4 {
            return;
        }
        self.remove(key);
        self.stamp += 1;
        self.entries.insert(
            key.to_owned(),
            Entry {
                value: value.clone(),
                stamp: self.stamp,
                expires,
            },
        );
        self.order.push_back((key.to_owned(), self.stamp));
        self.bytes += size;
        while self.bytes > capacity {
            let Some((old, stamp)) = self.order.pop_front() else {
                break;
            };
            if self.entries.get(&old).is_some_and(|e| e.stamp == stamp)
                && let Some(e) = self.entries.remove(&old)
            {
                self.bytes -= cost(&old, &e.value);
            }
        }
        // Stale order items (keys kept again or invalidated) are skipped
        // above; drop them before they outgrow the entries.
        if self.order.len() > 2 * self.entries.len() + 64 {
            let entries = &self.entries;
            self.order
                .retain(|(k, s)| entries.get(k).is_some_and(|e| e.stamp == *s));
        }
    }
}

/// A commit sent over the tracking connection (`CLIENT TRACKING ... NOLOOP`:
/// its own writes send it no invalidation, and the script reads each
/// written key again, so Redis tracks them for it). Its keys are marked
/// until it ends, so an invalidation from another client meanwhile stops
/// the committed value being kept.
pub(super) struct TrackedCommit<'a> {
    cache: &'a ReadCache,
    id: u64,
    pub(super) conn: MultiplexedConnection,
    keys: Vec<String>,
    done: bool,
}

impl TrackedCommit<'_> {
    /// Keeps what the commit wrote (each key with its value, none when
    /// absent, and when it expires) and forgets the keys of
    /// `unknown`, whose commit may or may not have gone in.
    pub(super) fn finish(
        mut self,
        written: Vec<(String, Option<Vec<u8>>, Option<Instant>)>,
        unknown: &[String],
    ) {
        self.done = true;
        let mut s = self.cache.lock();
        let mut invalidated = std::collections::HashSet::new();
        for k in &self.keys {
            if s.unmark(k) {
                invalidated.insert(k.as_str());
            }
        }
        let live = s.live.as_ref().is_some_and(|l| l.id == self.id);
        for (k, v, expires) in written {
            if live && !invalidated.contains(k.as_str()) {
                s.keep(&k, &v, expires, self.cache.capacity);
            } else {
                s.invalidate(&k);
            }
        }
        for k in unknown {
            s.invalidate(k);
        }
    }
}

impl Drop for TrackedCommit<'_> {
    fn drop(&mut self) {
        if !self.done {
            // Dropped mid-way: whether it went in is unknown.
            let mut s = self.cache.lock();
            for k in &self.keys {
                s.unmark(k);
                s.invalidate(k);
            }
        }
    }
}

/// A read of `key` in flight, marked in `pending` until it ends.
struct PendingRead<'a> {
    state: &'a Mutex<State>,
    key: &'a str,
    done: bool,
}

impl PendingRead<'_> {
    /// Unmarks the key; whether it was invalidated while being read.
    fn finish(&mut self, s: &mut State) -> bool {
        self.done = true;
        s.unmark(self.key)
    }
}

impl Drop for PendingRead<'_> {
    fn drop(&mut self) {
        if !self.done {
            let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
            self.finish(&mut s);
        }
    }
}

/// When an entry whose key has `pttl` (Redis's PTTL: milliseconds, or -1
/// for none, -2 for no key) ends.
pub(super) fn expiry(pttl: i64) -> Option<Instant> {
    u64::try_from(pttl)
        .ok()
        .map(|ms| Instant::now() + Duration::from_millis(ms))
}

fn cost(key: &str, value: &Option<Vec<u8>>) -> usize {
    key.len() + value.as_ref().map_or(0, Vec::len) + ENTRY_OVERHEAD
}

impl ReadCache {
    /// A cache of at most `capacity` bytes for the server `client` points
    /// at. Connects lazily, on the first read.
    pub(super) fn new(client: Client, server: String, capacity: usize) -> Arc<ReadCache> {
        Arc::new(ReadCache {
            client,
            server,
            capacity,
            state: Arc::default(),
            next_id: AtomicU64::new(1),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn stats(&self) -> CacheStats {
        CacheStats {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
        }
    }

    /// `key`'s value when the cache holds it and may answer now: a lookup,
    /// no future (most reads, on a hot key).
    pub(super) fn hit(&self, key: &str) -> Option<Option<Vec<u8>>> {
        let mut s = self.lock();
        if !s.live_state()?.1 {
            return None;
        }
        let value = s.lookup(key)?;
        self.hits.fetch_add(1, Ordering::Relaxed);
        Some(value)
    }

    /// Reads `key`: from the cache when it holds it and the tracking
    /// connection is proven fresh, else over the tracking connection
    /// (keeping the answer). `None` when there is no tracking connection
    /// (one is being made): the caller reads from the store itself.
    pub(super) async fn get(self: &Arc<Self>, key: &str) -> Option<Option<Vec<u8>>> {
        let (id, mut conn) = {
            let mut s = self.lock();
            match s.live_state() {
                Some((id, true)) => {
                    if let Some(value) = s.lookup(key) {
                        self.hits.fetch_add(1, Ordering::Relaxed);
                        return Some(value);
                    }
                    let conn = s.live.as_ref().map(|l| l.conn.clone())?;
                    s.pending.entry(key.to_owned()).or_default().reads += 1;
                    (id, conn)
                }
                Some((id, false)) => {
                    // Pings stopped coming back: the connection may have
                    // lost pushes. Let it go and read from the store.
                    if s.drop_conn(id) {
                        tracing::warn!(server = %self.server, "key-value read cache: its tracking connection stopped answering; cache dropped");
                    }
                    self.connect_later(&mut s);
                    return None;
                }
                None => {
                    self.connect_later(&mut s);
                    return None;
                }
            }
        };
        self.misses.fetch_add(1, Ordering::Relaxed);
        // Unmarks the key however this read ends, also when the caller
        // drops it (a guest past its deadline).
        let mut read = PendingRead {
            state: &self.state,
            key,
            done: false,
        };
        let mut pipe = ::redis::pipe();
        pipe.cmd("GET").arg(key).cmd("PTTL").arg(key);
        let reply = pipe.query_async::<(Option<Vec<u8>>, i64)>(&mut conn).await;
        let mut s = self.lock();
        let invalidated = read.finish(&mut s);
        let (value, pttl) = match reply {
            Ok(reply) => reply,
            // The store reads again and reports an error about the key.
            Err(e)
                if !(e.is_io_error()
                    || e.is_timeout()
                    || e.is_connection_dropped()
                    || e.is_unrecoverable_error()) =>
            {
                return None;
            }
            Err(e) => {
                if s.drop_conn(id) {
                    tracing::warn!(server = %self.server, error = %e, "key-value read cache: a read on its tracking connection failed; cache dropped, reading from the store");
                }
                return None;
            }
        };
        let still_live = s.live.as_ref().is_some_and(|l| l.id == id);
        if still_live && !invalidated {
            s.keep(key, &value, expiry(pttl), self.capacity);
        }
        Some(value)
    }

    /// The tracking connection for a commit of `keys` (full data key
    /// names), marked as being read until the commit ends; none while
    /// there is no proven connection (the commit goes over the store's own
    /// connection and [`ReadCache::forget`]s its keys after).
    pub(super) fn track_commit(&self, keys: Vec<String>) -> Option<TrackedCommit<'_>> {
        let mut s = self.lock();
        let (id, true) = s.live_state()? else {
            return None;
        };
        let conn = s.live.as_ref()?.conn.clone();
        for k in &keys {
            s.pending.entry(k.clone()).or_default().reads += 1;
        }
        Some(TrackedCommit {
            cache: self,
            id,
            conn,
            keys,
            done: false,
        })
    }

    /// The server's id of the tracking connection, while there is one.
    pub(super) fn client_id(&self) -> Option<i64> {
        self.lock().live.as_ref().map(|l| l.client_id)
    }

    /// Forgets `keys`, which this process has just written (or may have).
    pub(super) fn forget<'a>(&self, keys: impl IntoIterator<Item = &'a str>) {
        let mut s = self.lock();
        for k in keys {
            s.invalidate(k);
        }
    }

    /// Starts making a tracking connection unless one is being made or the
    /// last attempt failed less than [`RECONNECT_AFTER`] ago.
    fn connect_later(self: &Arc<Self>, s: &mut State) {
        if s.connecting || s.retry_at.is_some_and(|t| Instant::now() < t) {
            return;
        }
        s.connecting = true;
        let this = Arc::clone(self);
        tokio::spawn(async move {
            let id = this.next_id.fetch_add(1, Ordering::Relaxed);
            let made = this.connect(id).await;
            let mut s = this.lock();
            s.connecting = false;
            match made {
                Ok((conn, client_id)) => {
                    s.clear();
                    s.failures = 0;
                    s.live = Some(Live {
                        id,
                        client_id,
                        conn: conn.clone(),
                        proven: Instant::now(),
                    });
                    drop(s);
                    tracing::info!(server = %this.server, client_id, "key-value read cache: tracking connection up");
                    tokio::spawn(Arc::clone(&this).keep_proving(id, conn));
                }
                Err(e) => {
                    let pause = RECONNECT_AFTER
                        .saturating_mul(1 << s.failures.min(16))
                        .min(RECONNECT_AT_MOST);
                    s.failures += 1;
                    s.retry_at = Some(Instant::now() + pause);
                    let first = s.failures == 1;
                    drop(s);
                    // A server without RESP3 or CLIENT TRACKING fails the
                    // same way every time: said once, then quietly.
                    if first {
                        tracing::warn!(server = %this.server, error = %e, retry_in = ?pause, "key-value read cache: no tracking connection; reads go to the store");
                    } else {
                        tracing::debug!(server = %this.server, error = %e, retry_in = ?pause, "key-value read cache: still no tracking connection");
                    }
                }
            }
        });
    }

    /// A tracking connection and the server's id for it.
    async fn connect(&self, id: u64) -> ::redis::RedisResult<(MultiplexedConnection, i64)> {
        let state = Arc::downgrade(&self.state);
        let on_push = move |push: PushInfo| -> Result<(), ()> {
            let Some(state) = state.upgrade() else {
                return Err(());
            };
            let mut s = state.lock().unwrap_or_else(|p| p.into_inner());
            if s.live.as_ref().is_some_and(|l| l.id != id) {
                return Ok(());
            }
            match push.kind {
                PushKind::Invalidate => match push.data.first() {
                    Some(Value::Array(keys)) => {
                        for k in keys {
                            if let Ok(k) = ::redis::from_redis_value::<String>(k) {
                                s.invalidate(&k);
                            }
                        }
                    }
                    // A null: the server flushed its tracking table (FLUSHALL,
                    // memory pressure): everything goes.
                    _ => s.clear(),
                },
                PushKind::Disconnection => {
                    s.drop_conn(id);
                }
                _ => {}
            }
            Ok(())
        };
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(CONNECT_TIMEOUT)
            .set_response_timeout(RESPONSE_TIMEOUT)
            .set_push_sender(on_push);
        let mut conn = self
            .client
            .get_multiplexed_async_connection_with_config(&config)
            .await?;
        ::redis::cmd("CLIENT")
            .arg("TRACKING")
            .arg("ON")
            .arg("NOLOOP")
            .exec_async(&mut conn)
            .await?;
        ::redis::cmd("CLIENT")
            .arg("SETNAME")
            .arg("warren-kv-read-cache")
            .exec_async(&mut conn)
            .await?;
        let client_id: i64 = ::redis::cmd("CLIENT")
            .arg("ID")
            .query_async(&mut conn)
            .await?;
        Ok((conn, client_id))
    }

    /// Pings the connection `id` every [`PING_EVERY`] while it is the live
    /// one; a ping that comes back proves every push sent before it was
    /// handled. One that fails drops the connection and the cache.
    async fn keep_proving(self: Arc<Self>, id: u64, mut conn: MultiplexedConnection) {
        loop {
            tokio::time::sleep(PING_EVERY).await;
            if self.lock().live.as_ref().is_none_or(|l| l.id != id) {
                return;
            }
            let sent = Instant::now();
            let pong = tokio::time::timeout(
                FRESH_FOR,
                ::redis::cmd("PING").query_async::<String>(&mut conn),
            )
            .await;
            let mut s = self.lock();
            match pong {
                Ok(Ok(_)) => match s.live.as_mut() {
                    Some(l) if l.id == id => l.proven = sent,
                    _ => return,
                },
                Ok(Err(e)) => {
                    if s.drop_conn(id) {
                        tracing::warn!(server = %self.server, error = %e, "key-value read cache: its tracking connection failed; cache dropped");
                    }
                    return;
                }
                Err(_) => {
                    if s.drop_conn(id) {
                        tracing::warn!(server = %self.server, "key-value read cache: its tracking connection stopped answering; cache dropped");
                    }
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_oldest_entries_go_first_and_the_bytes_stay_under_capacity() {
        let mut s = State::default();
        let cap = 10 * (ENTRY_OVERHEAD + 2 + 10);
        for i in 0..100 {
            s.keep(&format!("k{i:01}"), &Some(vec![b'x'; 10]), None, cap);
            assert!(s.bytes <= cap, "{} > {cap}", s.bytes);
        }
        assert!(s.entries.contains_key("k99"));
        assert!(!s.entries.contains_key("k0"));
        assert!(s.order.len() <= 2 * s.entries.len() + 64);
        // Kept again: the newer stamp counts, the bytes are not doubled.
        let before = s.bytes;
        s.keep("k99", &Some(vec![b'y'; 10]), None, cap);
        assert_eq!(s.bytes, before);
        assert_eq!(s.entries["k99"].value.as_deref(), Some(&b"yyyyyyyyyy"[..]));
    }

    #[test]
    fn an_invalidation_during_a_read_stops_it_being_kept() {
        let mut s = State::default();
        s.pending.entry("k".into()).or_default().reads += 1;
        s.invalidate("k");
        assert!(s.pending["k"].invalidated);
        s.keep("a", &None, None, 1 << 20);
        s.clear();
        assert!(s.entries.is_empty());
        assert_eq!(s.bytes, 0);
    }

    #[test]
    fn a_value_larger_than_a_quarter_of_the_capacity_is_not_kept() {
        let mut s = State::default();
        s.keep("big", &Some(vec![0; 1000]), None, 1000);
        assert!(s.entries.is_empty());
        assert_eq!(s.bytes, 0);
    }
}
