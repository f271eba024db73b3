//! The key-value store under `warren test`: one namespace in memory, set
//! up by each case's `[kv]` table (empty for `--body`), read by the
//! handler through the same host import as under `warren run`. A run's
//! writes are replayed over it exactly as the store's commit replays them
//! ([`crate::dedup::kv::replay`]: the same increment and compare-and-swap
//! rules), and only for an ack: what the case then sees is what a host
//! would have committed.

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard, PoisonError};

use anyhow::bail;
use async_trait::async_trait;

use crate::dedup::kv::{Commit, KvOp, counter, replay};
use crate::runtime::{Completed, KvStore, KvWrite, Outcome};

/// What a run leaves in the store: each key it wrote, with its value
/// after the commit (none: deleted); or why the commit would fail.
pub type Written = Result<BTreeMap<String, Option<Vec<u8>>>, String>;

/// One handler namespace, in memory.
#[derive(Debug, Default)]
pub struct CaseStore {
    values: Mutex<BTreeMap<String, Vec<u8>>>,
}

impl CaseStore {
    fn values(&self) -> MutexGuard<'_, BTreeMap<String, Vec<u8>>> {
        self.values.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Starts a case: the store holds exactly `values`.
    pub fn reset(&self, values: BTreeMap<String, Vec<u8>>) {
        *self.values() = values;
    }

    /// What the run's writes commit to, over the values the case started
    /// with: nothing unless the outcome is ack, as on a host.
    pub fn written(&self, done: &Completed) -> Written {
        if done.outcome != Outcome::Ack || done.kv_writes.is_empty() {
            return Ok(BTreeMap::new());
        }
        let ops: Vec<KvOp> = done.kv_writes.iter().cloned().map(op).collect();
        let values = self.values();
        match replay(&ops, |k| values.get(k).cloned()) {
            Ok(finals) => Ok(finals.into_iter().map(|(k, f)| (k, f.value)).collect()),
            Err(Commit::Conflict(why)) => Err(format!(
                "the commit would conflict, and a host would run the message again: {why}"
            )),
            Err(Commit::NotACounter(why)) => Err(format!("the commit would fail: {why}")),
            Err(other) => Err(format!("the commit would fail: {other:?}")),
        }
    }
}

/// A buffered write as the store's op (the pipeline makes the same
/// translation for the real commit).
fn op(w: KvWrite) -> KvOp {
    match w {
        KvWrite::Set { key, value, ttl_ms } => KvOp::Set { key, value, ttl_ms },
        KvWrite::Delete { key } => KvOp::Delete { key },
        KvWrite::Increment { key, delta } => KvOp::Increment { key, delta },
        KvWrite::CompareAndSwap { key, expected, new } => {
            KvOp::CompareAndSwap { key, expected, new }
        }
    }
}

#[async_trait]
impl KvStore for CaseStore {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, String> {
        Ok(self.values().get(key).cloned())
    }

    async fn list(&self, prefix: &str, limit: usize) -> Result<Vec<String>, String> {
        Ok(self
            .values()
            .range(prefix.to_owned()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .take(limit)
            .map(|(k, _)| k.clone())
            .collect())
    }
}

/// A value as a case writes it: text, an integer (a counter, stored as
/// its decimal text, as `increment` stores it), `{ hex = "..." }` for
/// bytes, or `false` (in an expectation: deleted). Returns none for
/// `false`.
pub fn value_from_toml(v: &toml::Value) -> anyhow::Result<Option<Vec<u8>>> {
    Ok(Some(match v {
        toml::Value::String(s) => s.clone().into_bytes(),
        toml::Value::Integer(i) => i.to_string().into_bytes(),
        toml::Value::Boolean(false) => return Ok(None),
        toml::Value::Table(t) if t.len() == 1 && t.contains_key("hex") => {
            let Some(text) = t["hex"].as_str() else {
                bail!("hex: must be a string of hex digits");
            };
            let clean: String = text.chars().filter(|c| !c.is_whitespace()).collect();
            hex::decode(clean).map_err(|e| anyhow::anyhow!("hex: not hex ({e})"))?
        }
        other => bail!(
            "{} is not a value: write text, an integer (a counter), {{ hex = \"...\" }}, or false for a deleted key",
            other.type_str()
        ),
    }))
}

/// The way to write `value` down (none: `false`, deleted): an integer for
/// a counter in its canonical spelling, text for UTF-8, else hex.
pub fn value_to_toml(value: Option<&[u8]>) -> toml::Value {
    let Some(bytes) = value else {
        return toml::Value::Boolean(false);
    };
    // Only a counter's own spelling: "007" stays text, so that writing it
    // back gives the same bytes.
    if let Some(n) = counter(bytes)
        && n.to_string().as_bytes() == bytes
    {
        return toml::Value::Integer(n);
    }
    match std::str::from_utf8(bytes) {
        Ok(text) => toml::Value::String(text.into()),
        Err(_) => {
            let mut t = toml::Table::new();
            t.insert("hex".into(), toml::Value::String(hex::encode(bytes)));
            toml::Value::Table(t)
        }
    }
}

/// A case's `[kv]` table as the values the store starts with; `false` is
/// refused there (there is nothing to delete).
pub fn seed(table: &BTreeMap<String, toml::Value>) -> anyhow::Result<BTreeMap<String, Vec<u8>>> {
    let mut out = BTreeMap::new();
    for (key, v) in table {
        match value_from_toml(v).map_err(|e| anyhow::anyhow!("kv.{key:?}: {e}"))? {
            Some(bytes) => {
                out.insert(key.clone(), bytes);
            }
            None => bail!(
                "kv.{key:?}: false means deleted, which a store's starting value cannot be: leave the key out"
            ),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_round_trip_and_counters_are_integers() {
        for bytes in [&b"7"[..], b"-12", b"hello", b"\xff\x00", b"007", b"-0"] {
            let t = value_to_toml(Some(bytes));
            assert_eq!(value_from_toml(&t).unwrap().as_deref(), Some(bytes), "{t}");
        }
        assert_eq!(value_to_toml(Some(b"42")), toml::Value::Integer(42));
        assert_eq!(value_to_toml(None), toml::Value::Boolean(false));
        assert!(value_from_toml(&toml::Value::Float(1.5)).is_err());
    }

    #[tokio::test]
    async fn lists_by_prefix_and_replays_an_ack_only() {
        let store = CaseStore::default();
        let table: BTreeMap<String, toml::Value> =
            toml::from_str("\"total:a\" = 5\n\"total:b\" = \"x\"\nother = 1\n").unwrap();
        store.reset(seed(&table).unwrap());
        assert_eq!(
            store.list("total:", 10).await.unwrap(),
            ["total:a", "total:b"]
        );
        let mut done = Completed {
            outcome: Outcome::Ack,
            publishes: vec![],
            logs_dropped: 0,
            stdio_dropped: 0,
            kv_writes: vec![KvWrite::Increment {
                key: "total:a".into(),
                delta: 3,
            }],
        };
        let written = store.written(&done).unwrap();
        assert_eq!(written["total:a"].as_deref(), Some(&b"8"[..]));
        done.kv_writes = vec![KvWrite::Increment {
            key: "total:b".into(),
            delta: 1,
        }];
        let err = store.written(&done).unwrap_err();
        assert!(err.contains("total:b"), "{err}");
        done.outcome = Outcome::Reject("no".into());
        assert!(store.written(&done).unwrap().is_empty());
    }
}
