//! The host side of `warren:handler/kv` (0.2.0): reads go to the store
//! through [`KvStore`] and see the message's own earlier writes; writes are
//! checked against [`KvLimits`] and buffered as [`KvWrite`]s, in call
//! order, for the caller to commit with the message's done-marker.
//!
//! The runtime does not know where the values live: the caller passes a
//! [`KvStore`] (the pipeline's view of the dedup store, one namespace).

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use super::bindings::v2::warren::handler::kv::KvError;

/// The largest magnitude a counter may reach: 2^53 - 1 (exact in a Lua
/// number, where Redis commits, and in a JavaScript number).
pub const MAX_COUNTER: i64 = (1 << 53) - 1;

/// The most keys one `list-keys` call returns.
pub const MAX_LIST: u32 = 1000;

/// Committed values of one namespace, as the handler names its keys.
#[async_trait::async_trait]
pub trait KvStore: Send + Sync + fmt::Debug {
    /// The committed value of `key`.
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, String>;
    /// Up to `limit` committed keys starting with `prefix`, in byte order.
    async fn list(&self, prefix: &str, limit: usize) -> Result<Vec<String>, String>;
}

/// One buffered write, as the guest made it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KvWrite {
    Set {
        key: String,
        value: Vec<u8>,
        ttl_ms: Option<u64>,
    },
    Delete {
        key: String,
    },
    Increment {
        key: String,
        delta: i64,
    },
    CompareAndSwap {
        key: String,
        expected: Option<Vec<u8>>,
        new: Option<Vec<u8>>,
    },
}

/// What one message may write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KvLimits {
    pub max_key_bytes: usize,
    pub max_value_bytes: usize,
    /// Writes (set, delete, increment, successful compare-and-swap) per
    /// message.
    pub max_writes: usize,
    /// Bytes of keys and values written per message, all writes together.
    pub max_write_bytes: usize,
}

impl Default for KvLimits {
    fn default() -> Self {
        Self {
            max_key_bytes: 512,
            max_value_bytes: 64 << 10,
            max_writes: 64,
            max_write_bytes: 1 << 20,
        }
    }
}

/// The store a handler is given, with its limits.
#[derive(Debug, Clone)]
pub struct KvGrant {
    pub store: Arc<dyn KvStore>,
    pub limits: KvLimits,
}

/// One message's view: its buffered writes and what they make each key.
#[derive(Debug, Default)]
pub(super) struct KvBuffer {
    pub(super) writes: Vec<KvWrite>,
    /// Each key written, as this message now sees it (none: deleted).
    view: HashMap<String, Option<Vec<u8>>>,
    bytes: usize,
}

/// Parses a stored value as a counter (ASCII decimal within
/// ±[`MAX_COUNTER`]); the store's commit uses the same rule.
pub fn counter(value: &[u8]) -> Option<i64> {
    let text = std::str::from_utf8(value).ok()?;
    let digits = text.strip_prefix('-').unwrap_or(text);
    if digits.is_empty() || digits.len() > 16 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: i64 = text.parse().ok()?;
    (-MAX_COUNTER..=MAX_COUNTER).contains(&n).then_some(n)
}

impl KvBuffer {
    pub(super) fn clear(&mut self) {
        self.writes.clear();
        self.view.clear();
        self.bytes = 0;
    }

    /// The value of `key` as this message sees it.
    pub(super) async fn get(&self, grant: &KvGrant, key: &str) -> Result<Option<Vec<u8>>, KvError> {
        check_key(grant, key)?;
        if let Some(v) = self.view.get(key) {
            return Ok(v.clone());
        }
        grant.store.get(key).await.map_err(KvError::Unavailable)
    }

    /// Committed keys with `prefix`, with this message's own writes laid
    /// over them.
    pub(super) async fn list(
        &self,
        grant: &KvGrant,
        prefix: &str,
        limit: u32,
    ) -> Result<Vec<String>, KvError> {
        if prefix.len() > grant.limits.max_key_bytes {
            return Err(too_long("prefix", prefix.len(), grant.limits.max_key_bytes));
        }
        let limit = limit.min(MAX_LIST) as usize;
        // Ask for enough that keys this message deleted cannot leave the
        // page short.
        let deleted = self.view.values().filter(|v| v.is_none()).count();
        let mut keys = grant
            .store
            .list(prefix, limit + deleted)
            .await
            .map_err(KvError::Unavailable)?;
        for (k, v) in &self.view {
            if k.starts_with(prefix) {
                match v {
                    Some(_) => keys.push(k.clone()),
                    None => keys.retain(|x| x != k),
                }
            }
        }
        keys.sort();
        keys.dedup();
        keys.truncate(limit);
        Ok(keys)
    }

    pub(super) fn set(
        &mut self,
        grant: &KvGrant,
        key: String,
        value: Vec<u8>,
        ttl_ms: Option<u64>,
    ) -> Result<(), KvError> {
        check_key(grant, &key)?;
        check_value(grant, &value)?;
        self.admit(grant, key.len() + value.len())?;
        self.view.insert(key.clone(), Some(value.clone()));
        self.writes.push(KvWrite::Set { key, value, ttl_ms });
        Ok(())
    }

    pub(super) fn delete(&mut self, grant: &KvGrant, key: String) -> Result<(), KvError> {
        check_key(grant, &key)?;
        self.admit(grant, key.len())?;
        self.view.insert(key.clone(), None);
        self.writes.push(KvWrite::Delete { key });
        Ok(())
    }

    pub(super) async fn increment(
        &mut self,
        grant: &KvGrant,
        key: String,
        delta: i64,
    ) -> Result<i64, KvError> {
        let now = match self.get(grant, &key).await? {
            None => 0,
            Some(v) => counter(&v).ok_or_else(|| {
                KvError::NotACounter(format!(
                    "key {key:?} holds {} bytes that are not a counter (ASCII decimal within ±{MAX_COUNTER})",
                    v.len()
                ))
            })?,
        };
        let sum = now
            .checked_add(delta)
            .filter(|n| (-MAX_COUNTER..=MAX_COUNTER).contains(n))
            .ok_or_else(|| {
                KvError::NotACounter(format!(
                    "key {key:?}: {now} + {delta} is outside ±{MAX_COUNTER}"
                ))
            })?;
        self.admit(grant, key.len() + 8)?;
        self.view
            .insert(key.clone(), Some(sum.to_string().into_bytes()));
        self.writes.push(KvWrite::Increment { key, delta });
        Ok(sum)
    }

    pub(super) async fn compare_and_swap(
        &mut self,
        grant: &KvGrant,
        key: String,
        expected: Option<Vec<u8>>,
        new: Option<Vec<u8>>,
    ) -> Result<bool, KvError> {
        if let Some(v) = &new {
            check_value(grant, v)?;
        }
        let current = self.get(grant, &key).await?;
        if current != expected {
            return Ok(false);
        }
        let size =
            key.len() + expected.as_ref().map_or(0, Vec::len) + new.as_ref().map_or(0, Vec::len);
        self.admit(grant, size)?;
        self.view.insert(key.clone(), new.clone());
        self.writes
            .push(KvWrite::CompareAndSwap { key, expected, new });
        Ok(true)
    }

    /// Counts one write of `size` bytes against the message's limits.
    fn admit(&mut self, grant: &KvGrant, size: usize) -> Result<(), KvError> {
        let l = &grant.limits;
        if self.writes.len() >= l.max_writes {
            return Err(KvError::LimitExceeded(format!(
                "at most {} key-value writes per message",
                l.max_writes
            )));
        }
        if self.bytes + size > l.max_write_bytes {
            return Err(KvError::LimitExceeded(format!(
                "at most {} bytes of keys and values written per message",
                l.max_write_bytes
            )));
        }
        self.bytes += size;
        Ok(())
    }
}

fn too_long(what: &str, len: usize, max: usize) -> KvError {
    KvError::LimitExceeded(format!("{what} is {len} bytes; at most {max}"))
}

fn check_key(grant: &KvGrant, key: &str) -> Result<(), KvError> {
    if key.is_empty() {
        return Err(KvError::InvalidKey("keys must not be empty".into()));
    }
    if key.len() > grant.limits.max_key_bytes {
        return Err(too_long("key", key.len(), grant.limits.max_key_bytes));
    }
    Ok(())
}

fn check_value(grant: &KvGrant, value: &[u8]) -> Result<(), KvError> {
    if value.len() > grant.limits.max_value_bytes {
        return Err(too_long("value", value.len(), grant.limits.max_value_bytes));
    }
    Ok(())
}
