//! Signed bookkeeping: the `x-warren-*` values a retry carries (attempt,
//! first exchange, first routing key) are trusted only under a valid
//! HMAC-SHA256 in `x-warren-sig`.
//!
//! Anyone who may publish to a handler's queue may also set `x-warren-*`
//! headers, so without a signature a publisher could send a message to the
//! dead-letter queue on its first failure (`x-warren-attempt: 99`) or show
//! the guest a forged exchange or routing key. The signature covers those
//! values, the message id and a digest of the body, under a key the group
//! shares; a missing or wrong one makes warren ignore every bookkeeping
//! header (attempt 1, the delivery's own exchange and routing key).
//!
//! It does not decide what to do with a message, only whether its
//! bookkeeping is the host's own.

use lapin::message::Delivery;
use lapin::types::AMQPValue;
use sha2::{Digest as _, Sha256};

use super::{H_ATTEMPT, H_EXCHANGE, H_ROUTING_KEY};

/// Header: the signature over the bookkeeping values.
pub const H_SIG: &str = "x-warren-sig";

/// The group's signing key (a digest of the configured secret).
#[derive(Clone)]
pub struct Key([u8; 32]);

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Key(..)")
    }
}

impl Key {
    /// A key from any secret: every process of a group must use the same.
    pub fn new(secret: &[u8]) -> Key {
        Key(Sha256::digest(secret).into())
    }

    fn mac(&self, data: &[u8]) -> [u8; 32] {
        // HMAC (RFC 2104) over SHA-256: the key is 32 bytes, so it is padded
        // to the 64-byte block and never hashed again.
        let mut ipad = [0x36u8; 64];
        let mut opad = [0x5cu8; 64];
        for (i, k) in self.0.iter().enumerate() {
            ipad[i] ^= k;
            opad[i] ^= k;
        }
        let inner = Sha256::new()
            .chain_update(ipad)
            .chain_update(data)
            .finalize();
        Sha256::new()
            .chain_update(opad)
            .chain_update(inner)
            .finalize()
            .into()
    }

    /// The signature of these bookkeeping values for this message, in hex.
    pub fn sign(&self, v: &Values<'_>) -> String {
        hex::encode(self.mac(&v.encode()))
    }

    /// Whether `sig` is the signature of `v`, compared in constant time.
    pub fn verify(&self, v: &Values<'_>, sig: &str) -> bool {
        let Ok(given) = hex::decode(sig) else {
            return false;
        };
        let want = self.mac(&v.encode());
        given.len() == want.len() && given.iter().zip(want).fold(0u8, |d, (a, b)| d | (a ^ b)) == 0
    }
}

/// What the signature covers.
#[derive(Debug, Clone)]
pub struct Values<'a> {
    pub attempt: u32,
    pub exchange: &'a str,
    pub routing_key: &'a str,
    pub message_id: Option<&'a str>,
    pub body: &'a [u8],
}

impl Values<'_> {
    fn encode(&self) -> Vec<u8> {
        // Length-prefixed fields, so that no two value sets encode alike.
        let mut out = b"warren-bookkeeping-v1".to_vec();
        let mut field = |b: &[u8]| {
            out.extend_from_slice(&(b.len() as u64).to_be_bytes());
            out.extend_from_slice(b);
        };
        field(&self.attempt.to_be_bytes());
        field(self.exchange.as_bytes());
        field(self.routing_key.as_bytes());
        match self.message_id {
            Some(id) => field(id.as_bytes()),
            None => field(b"\xff-no-id"),
        }
        field(&Sha256::digest(self.body));
        out
    }
}

/// A header value as text: strings as they are, integers in decimal.
pub(super) fn value_text(v: &AMQPValue) -> Option<String> {
    match v {
        AMQPValue::LongString(s) => std::str::from_utf8(s.as_bytes()).ok().map(str::to_string),
        AMQPValue::ShortString(s) => Some(s.to_string()),
        AMQPValue::ShortShortInt(i) => Some(i.to_string()),
        AMQPValue::ShortShortUInt(i) => Some(i.to_string()),
        AMQPValue::ShortInt(i) => Some(i.to_string()),
        AMQPValue::ShortUInt(i) => Some(i.to_string()),
        AMQPValue::LongInt(i) => Some(i.to_string()),
        AMQPValue::LongUInt(i) => Some(i.to_string()),
        AMQPValue::LongLongInt(i) => Some(i.to_string()),
        _ => None,
    }
}

/// Bookkeeping values whose signature held.
#[derive(Debug, Clone)]
pub(super) struct Bookkeeping {
    pub attempt: u32,
    pub exchange: String,
    pub routing_key: String,
}

/// The bookkeeping headers of `d` if `x-warren-sig` signs them under `key`;
/// `None` (attempt 1, the delivery's own exchange and routing key) when a
/// header is missing or the signature does not hold.
pub(super) fn verified(d: &Delivery, key: &Key) -> Option<Bookkeeping> {
    let h = d.properties.headers().as_ref()?.inner();
    let text = |name: &str| h.get(name).and_then(value_text);
    let sig = text(H_SIG)?;
    let b = Bookkeeping {
        attempt: text(H_ATTEMPT)?.parse().ok()?,
        exchange: text(H_EXCHANGE)?,
        routing_key: text(H_ROUTING_KEY)?,
    };
    let values = Values {
        attempt: b.attempt,
        exchange: &b.exchange,
        routing_key: &b.routing_key,
        message_id: d.properties.message_id().as_ref().map(|s| s.as_str()),
        body: &d.data,
    };
    if key.verify(&values, &sig) {
        Some(b)
    } else {
        tracing::warn!(
            message_id = values.message_id.unwrap_or("-"),
            "bookkeeping headers with a wrong signature: ignored"
        );
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(attempt: u32) -> Values<'static> {
        Values {
            attempt,
            exchange: "ex",
            routing_key: "rk",
            message_id: Some("id-1"),
            body: b"body",
        }
    }

    #[test]
    fn a_signature_holds_only_for_its_values_and_key() {
        let k = Key::new(b"secret");
        let sig = k.sign(&values(2));
        assert!(k.verify(&values(2), &sig));
        assert!(!k.verify(&values(99), &sig));
        assert!(!Key::new(b"other").verify(&values(2), &sig));
        let other_body = Values {
            body: b"other",
            ..values(2)
        };
        assert!(!k.verify(&other_body, &sig));
        assert!(!k.verify(&values(2), "not hex"));
        assert!(!k.verify(&values(2), ""));
    }

    #[test]
    fn hmac_matches_rfc_4231_test_case_1() {
        // A 20-byte key zero-padded to 32 bytes pads to the same block.
        let mut key = [0u8; 32];
        key[..20].copy_from_slice(&[0x0b; 20]);
        assert_eq!(
            hex::encode(Key(key).mac(b"Hi There")),
            "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7"
        );
    }
}
