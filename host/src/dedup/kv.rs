//! A handler's key-value writes, committed exactly once: together with the
//! message's done-marker, in one step that first checks the message still
//! holds its lease (owner token and fencing token).
//!
//! The runtime buffers a message's writes as [`KvOp`]s, in call order; the
//! pipeline hands them here when it marks the message done. Both stores
//! replay the ops over the current values first (checking each
//! compare-and-swap's expectation and each increment's counter), and only
//! if every op holds do they write the outcome and the done-marker; else
//! nothing at all is written. `kv_commit.lua` is that step in Redis;
//! [`replay`] is the same in the in-process store.
//!
//! Key layout: a namespace's keys are `{prefix}:kv/{NS}:{key}` and its
//! index (a sorted set of its keys, for listing by prefix) is
//! `{prefix}:kv/{NS}`. `/` cannot appear in a handler name, so no dedup
//! key (`{prefix}:{handler}:...`) can take one of these names, and `{NS}`
//! is a Redis Cluster hash tag: one namespace's keys share a slot.

use std::collections::BTreeMap;

/// The largest magnitude a counter may reach: 2^53 - 1, so that every
/// counter is exact in a Lua number (Redis scripts) and in a JavaScript
/// number (guests).
pub const MAX_COUNTER: i64 = (1 << 53) - 1;

/// One buffered write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KvOp {
    /// Set the value; with a TTL it expires after it, without one it never
    /// does (a TTL the key had is dropped).
    Set {
        key: String,
        value: Vec<u8>,
        ttl_ms: Option<u64>,
    },
    Delete {
        key: String,
    },
    /// Add `delta` to the counter (absent counts as 0) at commit time; the
    /// key keeps its TTL. Conflicts only if the key then holds something
    /// that is not a counter, or the sum leaves ±[`MAX_COUNTER`].
    Increment {
        key: String,
        delta: i64,
    },
    /// Write `new` (none deletes) if the key holds `expected` (none: is
    /// absent) at commit time, after the message's earlier ops; else the
    /// whole commit is a conflict.
    CompareAndSwap {
        key: String,
        expected: Option<Vec<u8>>,
        new: Option<Vec<u8>>,
    },
}

impl KvOp {
    pub fn key(&self) -> &str {
        match self {
            KvOp::Set { key, .. }
            | KvOp::Delete { key }
            | KvOp::Increment { key, .. }
            | KvOp::CompareAndSwap { key, .. } => key,
        }
    }
}

/// A message's writes to one namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvWrites {
    pub namespace: String,
    pub ops: Vec<KvOp>,
}

/// What a commit came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Commit {
    /// The writes (and the done-marker, with a lease) are in.
    Done,
    /// The message no longer holds its lease: nothing was written.
    Lost,
    /// A compare-and-swap found another value: nothing was written. The
    /// text names the key.
    Conflict(String),
    /// An increment found a value that is not a counter, or would leave
    /// the counter range: nothing was written. The text says which key.
    NotACounter(String),
}

/// Parses a stored value as a counter: ASCII decimal, within
/// ±[`MAX_COUNTER`].
pub fn counter(value: &[u8]) -> Option<i64> {
    let text = std::str::from_utf8(value).ok()?;
    let digits = text.strip_prefix('-').unwrap_or(text);
    if digits.is_empty() || digits.len() > 16 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: i64 = text.parse().ok()?;
    (-MAX_COUNTER..=MAX_COUNTER).contains(&n).then_some(n)
}

/// The value after one op, or why the op does not hold. `Set` and
/// `Delete` always hold.
fn step(current: Option<&[u8]>, op: &KvOp) -> Result<Option<Vec<u8>>, Commit> {
    match op {
        KvOp::Set { value, .. } => Ok(Some(value.clone())),
        KvOp::Delete { .. } => Ok(None),
        KvOp::Increment { key, delta } => {
            let now = match current {
                None => 0,
                Some(v) => counter(v).ok_or_else(|| {
                    Commit::NotACounter(format!("key {key:?} does not hold a counter"))
                })?,
            };
            match now.checked_add(*delta) {
                Some(n) if (-MAX_COUNTER..=MAX_COUNTER).contains(&n) => {
                    Ok(Some(n.to_string().into_bytes()))
                }
                _ => Err(Commit::NotACounter(format!(
                    "key {key:?}: the counter would leave ±{MAX_COUNTER}"
                ))),
            }
        }
        KvOp::CompareAndSwap { key, expected, new } => {
            if current == expected.as_deref() {
                Ok(new.clone())
            } else {
                Err(Commit::Conflict(format!(
                    "key {key:?} changed before the message committed"
                )))
            }
        }
    }
}

/// What a key ends as after a replay: its value (none: deleted) and its
/// expiry (`None` keeps what the key had, `Some(None)` none, `Some(ms)`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Final {
    pub value: Option<Vec<u8>>,
    pub ttl_ms: Option<Option<u64>>,
}

/// Replays `ops` over the values `read` returns, in order, and returns
/// what each touched key ends as, or the first op that does not hold.
/// The in-process store's commit; `kv_commit.lua` does the same in Redis.
pub fn replay(
    ops: &[KvOp],
    mut read: impl FnMut(&str) -> Option<Vec<u8>>,
) -> Result<BTreeMap<String, Final>, Commit> {
    let mut out: BTreeMap<String, Final> = BTreeMap::new();
    for op in ops {
        let key = op.key();
        let entry = out.entry(key.to_owned()).or_insert_with(|| Final {
            value: read(key),
            ttl_ms: None,
        });
        entry.value = step(entry.value.as_deref(), op)?;
        match op {
            KvOp::Set { ttl_ms, .. } => entry.ttl_ms = Some(*ttl_ms),
            KvOp::Delete { .. } | KvOp::CompareAndSwap { .. } => entry.ttl_ms = Some(None),
            KvOp::Increment { .. } => {}
        }
    }
    Ok(out)
}

/// The Redis (and in-process) name of a namespace's key.
pub fn data_key(prefix: &str, namespace: &str, key: &str) -> String {
    joined(&[prefix, ":kv/{", namespace, "}:", key])
}

/// What every key of a namespace starts with.
pub fn data_prefix(prefix: &str, namespace: &str) -> String {
    joined(&[prefix, ":kv/{", namespace, "}:"])
}

/// The sorted set of a namespace's keys.
pub fn index_key(prefix: &str, namespace: &str) -> String {
    joined(&[prefix, ":kv/{", namespace, "}"])
}

/// `parts` end to end, in one allocation: these names are made for every
/// read and write, where `format!` costs several times as much.
fn joined(parts: &[&str]) -> String {
    let mut s = String::with_capacity(parts.iter().map(|p| p.len()).sum());
    for p in parts {
        s.push_str(p);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(key: &str, v: &str) -> KvOp {
        KvOp::Set {
            key: key.into(),
            value: v.into(),
            ttl_ms: None,
        }
    }

    #[test]
    fn counters_are_decimal_within_range() {
        assert_eq!(counter(b"42"), Some(42));
        assert_eq!(counter(b"-7"), Some(-7));
        assert_eq!(counter(b"9007199254740991"), Some(MAX_COUNTER));
        assert_eq!(counter(b"9007199254740992"), None);
        for bad in [&b""[..], b"-", b"1.5", b" 1", b"0x10", b"12345678901234567"] {
            assert_eq!(counter(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn replay_applies_in_order_and_checks_each_op() {
        let store = |k: &str| (k == "n").then(|| b"5".to_vec());
        let ops = [
            KvOp::Increment {
                key: "n".into(),
                delta: 2,
            },
            KvOp::CompareAndSwap {
                key: "n".into(),
                expected: Some(b"7".to_vec()),
                new: Some(b"8".to_vec()),
            },
            set("a", "x"),
            KvOp::Delete { key: "a".into() },
        ];
        let out = replay(&ops, store).unwrap();
        assert_eq!(out["n"].value.as_deref(), Some(&b"8"[..]));
        assert_eq!(out["a"].value, None);

        let conflict = [KvOp::CompareAndSwap {
            key: "n".into(),
            expected: None,
            new: Some(b"1".to_vec()),
        }];
        assert!(matches!(replay(&conflict, store), Err(Commit::Conflict(_))));
        let not_counter = [
            set("s", "text"),
            KvOp::Increment {
                key: "s".into(),
                delta: 1,
            },
        ];
        assert!(matches!(
            replay(&not_counter, |_| None),
            Err(Commit::NotACounter(_))
        ));
        let overflow = [KvOp::Increment {
            key: "n".into(),
            delta: MAX_COUNTER,
        }];
        assert!(matches!(
            replay(&overflow, store),
            Err(Commit::NotACounter(_))
        ));
    }

    #[test]
    fn increments_keep_the_ttl_and_sets_replace_it() {
        let ops = [
            KvOp::Increment {
                key: "n".into(),
                delta: 1,
            },
            KvOp::Set {
                key: "t".into(),
                value: b"v".to_vec(),
                ttl_ms: Some(1000),
            },
        ];
        let out = replay(&ops, |_| None).unwrap();
        assert_eq!(out["n"].ttl_ms, None);
        assert_eq!(out["t"].ttl_ms, Some(Some(1000)));
    }

    #[test]
    fn namespace_keys_cannot_be_dedup_keys() {
        assert_eq!(data_key("w", "orders", "a:b"), "w:kv/{orders}:a:b");
        assert_eq!(index_key("w", "orders"), "w:kv/{orders}");
        assert!(data_key("w", "orders", "").starts_with(&index_key("w", "orders")));
    }
}
