//! The in-process dedup store: the Redis store's semantics on a mutex-guarded
//! map, for a host without a `[redis]` section.
//!
//! It owns expiry (lazy on access, plus a sweep whose cost is amortised over
//! the operations, so memory stays proportional to the live keys). It does not
//! dedup across processes or survive a restart, and `Store::describe` says so
//! at start-up.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use super::kv::{self, Commit, KvWrites};
use super::{Claim, DedupError, Lease, MAX_TTL_MS, new_owner, ttl_millis};

/// Sweep at most this often (in operations) while the maps are small.
const MIN_SWEEP_INTERVAL: usize = 1024;

/// The in-process store. Cheap to clone: clones share the map.
#[derive(Clone)]
pub struct MemoryStore {
    prefix: Arc<str>,
    state: Arc<Mutex<State>>,
}

impl fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryStore")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

#[derive(Default)]
struct State {
    /// Namespaced key to its current holder, as Redis would hold it.
    keys: HashMap<String, Entry>,
    /// The fencing counter every claim takes its token from, as the Redis
    /// store's `<prefix>::fence`: it never expires, so a token is larger
    /// than every one handed out before it in this process.
    fence: u64,
    /// Key-value data by its full name ([`kv::data_key`]), ordered so a
    /// prefix is a range.
    kv: BTreeMap<String, KvEntry>,
    /// Operations since the last sweep.
    ops: usize,
}

struct KvEntry {
    value: Vec<u8>,
    expires: Option<Instant>,
}

struct Entry {
    value: Value,
    expires: Instant,
}

enum Value {
    Owner(String),
    Done,
}

impl MemoryStore {
    pub(super) fn new(prefix: &str) -> Self {
        Self {
            prefix: Arc::from(prefix),
            state: Arc::default(),
        }
    }

    pub(super) fn prefix(&self) -> &str {
        &self.prefix
    }

    pub(super) fn describe(&self) -> String {
        format!(
            "in-process (prefix {}; dedups within this process only)",
            self.prefix
        )
    }

    pub(super) fn claim(&self, key: &str, lease: Duration) -> Result<Claim, DedupError> {
        let now = Instant::now();
        let lease = Duration::from_millis(ttl_millis(lease));
        let mut state = self.lock(now);
        if let Some(entry) = state.live_entry(key, now) {
            return Ok(match entry.value {
                Value::Done => Claim::Done,
                Value::Owner(_) => Claim::Busy {
                    retry_after: remaining(entry.expires, now),
                },
            });
        }
        let owner = new_owner();
        state.keys.insert(
            key.to_owned(),
            Entry {
                value: Value::Owner(owner.clone()),
                expires: now + lease,
            },
        );
        state.fence = state.fence.saturating_add(1);
        Ok(Claim::Acquired(Lease {
            key: key.to_owned(),
            owner,
            fencing_token: state.fence,
        }))
    }

    pub(super) fn renew(&self, lease: &Lease, ttl: Duration) -> Result<bool, DedupError> {
        let now = Instant::now();
        let mut state = self.lock(now);
        let Some(entry) = state.owned_entry(lease, now) else {
            return Ok(false);
        };
        entry.expires = now + Duration::from_millis(ttl_millis(ttl));
        Ok(true)
    }

    pub(super) fn complete(&self, lease: &Lease, window: Duration) -> Result<bool, DedupError> {
        let now = Instant::now();
        let mut state = self.lock(now);
        Ok(state.complete(lease, window, now))
    }

    /// Commits a message's writes, with its done-marker when it holds a
    /// lease, under the one lock: all or nothing, as `kv_commit.lua`.
    pub(super) fn commit(
        &self,
        lease: Option<&Lease>,
        writes: &KvWrites,
        window: Duration,
        check_only: bool,
    ) -> Result<Commit, DedupError> {
        let now = Instant::now();
        let mut state = self.lock(now);
        // A new owner token per claim: a key that still holds this one was
        // claimed by no one since (as in kv_commit.lua).
        if let Some(lease) = lease
            && state.owned_entry(lease, now).is_none()
        {
            return Ok(Commit::Lost);
        }
        let prefix = kv::data_prefix(&self.prefix, &writes.namespace);
        let finals = match kv::replay(&writes.ops, |k| {
            state
                .kv_live(&format!("{prefix}{k}"), now)
                .map(|e| e.value.clone())
        }) {
            Ok(f) => f,
            Err(failed) => return Ok(failed),
        };
        if check_only {
            return Ok(Commit::Done);
        }
        for (key, f) in finals {
            let name = format!("{prefix}{key}");
            match f.value {
                None => {
                    state.kv.remove(&name);
                }
                Some(value) => {
                    let expires = match f.ttl_ms {
                        None => state.kv.get(&name).and_then(|e| e.expires),
                        Some(None) => None,
                        Some(Some(ms)) => {
                            Some(now + Duration::from_millis(ms.clamp(1, MAX_TTL_MS)))
                        }
                    };
                    state.kv.insert(name, KvEntry { value, expires });
                }
            }
        }
        if let Some(lease) = lease {
            state.complete(lease, window, now);
        }
        Ok(Commit::Done)
    }

    pub(super) fn kv_get(&self, namespace: &str, key: &str) -> Option<Vec<u8>> {
        let now = Instant::now();
        let mut state = self.lock(now);
        let name = kv::data_key(&self.prefix, namespace, key);
        state.kv_live(&name, now).map(|e| e.value.clone())
    }

    pub(super) fn kv_list(&self, namespace: &str, prefix: &str, limit: usize) -> Vec<String> {
        let now = Instant::now();
        let state = self.lock(now);
        let base = kv::data_prefix(&self.prefix, namespace);
        let start = format!("{base}{prefix}");
        state
            .kv
            .range(start.clone()..)
            .take_while(|(k, _)| k.starts_with(&start))
            .filter(|(_, e)| e.expires.is_none_or(|t| t > now))
            .map(|(k, _)| k[base.len()..].to_owned())
            .take(limit)
            .collect()
    }

    pub(super) fn release(&self, lease: &Lease) -> Result<bool, DedupError> {
        let now = Instant::now();
        let mut state = self.lock(now);
        if state.owned_entry(lease, now).is_none() {
            return Ok(false);
        }
        state.keys.remove(&lease.key);
        Ok(true)
    }

    /// Locks the state and counts one operation, sweeping when due.
    ///
    /// A poisoned lock is taken over: every critical section leaves the maps
    /// consistent at each step, so a panic elsewhere cannot leave them torn.
    fn lock(&self, now: Instant) -> MutexGuard<'_, State> {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.tick(now);
        state
    }
}

impl State {
    /// The entry under `key` unless it has expired (an expired one is
    /// removed, as Redis does on access).
    fn live_entry(&mut self, key: &str, now: Instant) -> Option<&mut Entry> {
        if self.keys.get(key).is_some_and(|entry| entry.expires <= now) {
            self.keys.remove(key);
        }
        self.keys.get_mut(key)
    }

    /// The entry under the lease's key if the lease's owner still holds it.
    fn owned_entry(&mut self, lease: &Lease, now: Instant) -> Option<&mut Entry> {
        self.live_entry(&lease.key, now)
            .filter(|entry| matches!(&entry.value, Value::Owner(owner) if *owner == lease.owner))
    }

    /// Marks the lease's key done for `window` if the lease's owner still
    /// holds it.
    fn complete(&mut self, lease: &Lease, window: Duration, now: Instant) -> bool {
        let Some(entry) = self.owned_entry(lease, now) else {
            return false;
        };
        let expires = now + Duration::from_millis(ttl_millis(window));
        *entry = Entry {
            value: Value::Done,
            expires,
        };
        true
    }

    /// The key-value entry named `name` unless it has expired.
    fn kv_live(&mut self, name: &str, now: Instant) -> Option<&KvEntry> {
        if self
            .kv
            .get(name)
            .is_some_and(|e| e.expires.is_some_and(|t| t <= now))
        {
            self.kv.remove(name);
        }
        self.kv.get(name)
    }

    /// Counts an operation and drops every expired entry once the operations
    /// since the last sweep reach half the maps' size: each sweep is paid for
    /// by as many operations as it visits entries, and expired entries never
    /// outnumber the live ones by more than that.
    fn tick(&mut self, now: Instant) {
        self.ops += 1;
        let due = MIN_SWEEP_INTERVAL.max((self.keys.len() + self.kv.len()) / 2);
        if self.ops >= due {
            self.ops = 0;
            self.keys.retain(|_, entry| entry.expires > now);
            self.kv.retain(|_, e| e.expires.is_none_or(|t| t > now));
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.keys.len()
    }
}

/// The time left until `expires`, in whole milliseconds rounded up and at
/// least 1, like Redis's PTTL on a live key.
fn remaining(expires: Instant, now: Instant) -> Duration {
    let left = expires.saturating_duration_since(now);
    Duration::from_millis(ttl_millis(left))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Expired keys do not pile up: a sweep drops them without any of them
    /// being touched again.
    #[test]
    fn sweep_drops_expired_entries() {
        let store = MemoryStore::new("test-dedup-sweep");
        // Fewer operations than a sweep interval, so nothing is swept yet.
        let filled = MIN_SWEEP_INTERVAL - 24;
        for i in 0..filled {
            let claim = store
                .claim(&format!("k{i}"), Duration::from_millis(1))
                .expect("memory claim cannot fail");
            assert!(matches!(claim, Claim::Acquired(_)), "k{i}: {claim:?}");
        }
        let before = store.state.lock().expect("lock").len();
        assert_eq!(before, filled, "one key per claim");

        std::thread::sleep(Duration::from_millis(10));
        // Enough operations on one other key to make a sweep due.
        let lease = match store
            .claim("other", Duration::from_secs(60))
            .expect("memory claim cannot fail")
        {
            Claim::Acquired(lease) => lease,
            other => panic!("expected acquired, got {other:?}"),
        };
        for _ in 0..MIN_SWEEP_INTERVAL {
            assert!(store.renew(&lease, Duration::from_secs(60)).expect("renew"));
        }
        let after = store.state.lock().expect("lock").len();
        assert_eq!(after, 1, "only the live key remains");
    }

    /// The counter is the store's, not the key's: it does not start again
    /// when a key expires, and every claim's token is larger than all
    /// before it.
    #[test]
    fn fencing_tokens_grow_across_keys_and_expiry() {
        let store = MemoryStore::new("test-dedup-fence");
        let claim = |key: &str| match store.claim(key, Duration::from_millis(5)).expect("claim") {
            Claim::Acquired(lease) => lease,
            other => panic!("expected acquired, got {other:?}"),
        };
        let first = claim("k");
        assert!(store.release(&first).expect("release"));
        let other = claim("other");
        std::thread::sleep(Duration::from_millis(20));
        let second = claim("k");
        assert_eq!(
            [
                first.fencing_token,
                other.fencing_token,
                second.fencing_token
            ],
            [1, 2, 3]
        );
    }
}
