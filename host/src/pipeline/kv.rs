//! The key-value store as a handler sees it: one namespace of the dedup
//! store ([`KvView`], what the runtime reads through), and a run's
//! buffered writes turned into the store's ops for the commit.

use async_trait::async_trait;

use crate::dedup::{KvOp, KvWrites, Store};
use crate::runtime::{KvStore, KvWrite};

/// One namespace of the store, for the runtime's reads.
#[derive(Debug)]
pub struct KvView {
    pub store: Store,
    pub namespace: String,
}

#[async_trait]
impl KvStore for KvView {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, String> {
        self.store
            .kv_get(&self.namespace, key)
            .await
            .map_err(|e| e.to_string())
    }

    async fn list(&self, prefix: &str, limit: usize) -> Result<Vec<String>, String> {
        self.store
            .kv_list(&self.namespace, prefix, limit)
            .await
            .map_err(|e| e.to_string())
    }
}

/// A run's writes as the store commits them.
pub(super) fn writes(namespace: &str, buffered: Vec<KvWrite>) -> KvWrites {
    let ops = buffered
        .into_iter()
        .map(|w| match w {
            KvWrite::Set { key, value, ttl_ms } => KvOp::Set { key, value, ttl_ms },
            KvWrite::Delete { key } => KvOp::Delete { key },
            KvWrite::Increment { key, delta } => KvOp::Increment { key, delta },
            KvWrite::CompareAndSwap { key, expected, new } => {
                KvOp::CompareAndSwap { key, expected, new }
            }
        })
        .collect();
    KvWrites {
        namespace: namespace.to_owned(),
        ops,
    }
}
