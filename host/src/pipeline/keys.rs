//! Idempotency keys: where a message's dedup key comes from, and the
//! deterministic message ids of a handler's outputs derived from it.

use sha2::{Digest as _, Sha256};

use crate::amqp::Inbound;
use crate::config::DedupKey;

/// The message's idempotency key, or none when it has none.
pub fn idempotency_key(how: &DedupKey, msg: &Inbound) -> Option<String> {
    match how {
        DedupKey::MessageId => msg
            .message_id()
            .filter(|s| !s.is_empty())
            .map(str::to_string),
        DedupKey::Header(name) => msg.header_text(name).filter(|s| !s.is_empty()),
        DedupKey::BodySha256 => Some(hex::encode(Sha256::digest(msg.body()))),
    }
}

pub(super) fn describe_key(how: &DedupKey) -> String {
    match how {
        DedupKey::MessageId => "no message-id property".into(),
        DedupKey::Header(name) => format!("no text or integer header {name:?}"),
        DedupKey::BodySha256 => "body-sha256".into(),
    }
}

/// What output ids derive from when a message has no dedup key.
pub(super) fn output_id_base(msg: &Inbound) -> String {
    msg.message_id()
        .map(str::to_string)
        .unwrap_or_else(|| hex::encode(Sha256::digest(msg.body())))
}

/// The message id of a handler's `index`-th output for input `key`: the same
/// on every run of the same input, so a retried or duplicated run publishes
/// the same ids and downstream consumers can drop the copies.
pub fn output_message_id(handler: &str, key: &str, index: usize) -> String {
    let name = format!("{handler}\n{key}\n{index}");
    uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, name.as_bytes()).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_ids_are_deterministic_and_distinct() {
        let a = output_message_id("echo", "k1", 0);
        assert_eq!(a, output_message_id("echo", "k1", 0));
        assert_ne!(a, output_message_id("echo", "k1", 1));
        assert_ne!(a, output_message_id("echo", "k2", 0));
        assert_ne!(a, output_message_id("other", "k1", 0));
    }
}
