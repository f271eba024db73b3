//! Helpers for warren handlers in Rust: JSON in and out in one call, typed
//! header access, and the outcomes. Plain Rust over the generated bindings;
//! copy it into any handler.
//!
//! ```ignore
//! let obj: serde_json::Value = json_body(&msg)?;           // Err(NotJson)
//! let tenant = header_str(&msg, "tenant");                 // None if absent or not text
//! publish_json("", &routing_key, &obj, msg.correlation_id.clone())?;
//! return ack() | retry("db busy", Some(5000)) | reject("bad input");
//! ```

use crate::warren::handler::host;
use crate::warren::handler::types::{FieldValue, Headers, Outbound, PublishError, Retry};
use crate::{Message, Outcome};

/// Why the body is not JSON (or not UTF-8).
#[derive(Debug)]
pub struct NotJson(pub String);

impl std::fmt::Display for NotJson {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// The body parsed as JSON, into any type serde_json can build.
pub fn json_body<T: serde::de::DeserializeOwned>(msg: &Message) -> Result<T, NotJson> {
    serde_json::from_slice(&msg.body).map_err(|e| NotJson(e.to_string()))
}

/// Buffers `value` as a compact JSON message (content type
/// `application/json`), sent when the handler acks. The error is the
/// host's explanation of a refusal.
pub fn publish_json(
    exchange: &str,
    routing_key: &str,
    value: &impl serde::Serialize,
    correlation_id: Option<String>,
) -> Result<(), String> {
    let body = serde_json::to_vec(value).map_err(|e| e.to_string())?;
    let out = Outbound {
        exchange: exchange.into(),
        routing_key: routing_key.into(),
        body,
        content_type: Some("application/json".into()),
        content_encoding: None,
        correlation_id,
        type_: None,
        headers: Headers {
            entries: Vec::new(),
            nested: Vec::new(),
        },
    };
    host::publish(&out).map_err(|e| match e {
        PublishError::NotAllowed(why) | PublishError::LimitExceeded(why) => why,
    })
}

/// The top-level header `name`.
pub fn header<'m>(msg: &'m Message, name: &str) -> Option<&'m FieldValue> {
    msg.headers
        .entries
        .iter()
        .find(|h| h.name == name)
        .map(|h| &h.value)
}

/// A text header; `None` if absent or of another type.
pub fn header_str<'m>(msg: &'m Message, name: &str) -> Option<&'m str> {
    match header(msg, name)? {
        FieldValue::Text(s) => Some(s),
        _ => None,
    }
}

/// An integer header of any width; `None` if absent, of another type or
/// (a `u64` timestamp) past `i64`.
pub fn header_i64(msg: &Message, name: &str) -> Option<i64> {
    Some(match *header(msg, name)? {
        FieldValue::I8(i) => i.into(),
        FieldValue::U8(i) => i.into(),
        FieldValue::I16(i) => i.into(),
        FieldValue::U16(i) => i.into(),
        FieldValue::I32(i) => i.into(),
        FieldValue::U32(i) => i.into(),
        FieldValue::I64(i) => i,
        FieldValue::Timestamp(t) => i64::try_from(t).ok()?,
        _ => return None,
    })
}

/// A float header; `None` if absent or of another type.
pub fn header_f64(msg: &Message, name: &str) -> Option<f64> {
    match *header(msg, name)? {
        FieldValue::F32(f) => Some(f.into()),
        FieldValue::F64(f) => Some(f),
        _ => None,
    }
}

/// A boolean header; `None` if absent or of another type.
pub fn header_bool(msg: &Message, name: &str) -> Option<bool> {
    match *header(msg, name)? {
        FieldValue::Boolean(b) => Some(b),
        _ => None,
    }
}

/// The handler's `[handler.config]` value of `key`, or `default`.
pub fn config(key: &str, default: &str) -> String {
    host::config(key).unwrap_or_else(|| default.into())
}

/// Done: buffered publishes go out, then the message is acked.
pub fn ack() -> Outcome {
    Outcome::Ack
}

/// Again later: after `after_ms` milliseconds, or the handler's backoff
/// when `None`.
pub fn retry(reason: impl Into<String>, after_ms: Option<u64>) -> Outcome {
    Outcome::Retry(Retry {
        delay_ms: after_ms,
        reason: reason.into(),
    })
}

/// Never again: dead-letter the message with `reason`.
pub fn reject(reason: impl Into<String>) -> Outcome {
    Outcome::Reject(reason.into())
}
