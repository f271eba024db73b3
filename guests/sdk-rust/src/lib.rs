//! Write warren message handlers in Rust.
//!
//! A handler is a type that implements [`Handler`], exported with
//! [`export!`](crate::export):
//!
//! ```ignore
//! use warren_guest::{Handler, Message, Outcome, Outbound};
//!
//! struct Echo;
//!
//! impl Handler for Echo {
//!     fn handle(msg: Message) -> Outcome {
//!         let out = Outbound::new("", "replies", msg.body);
//!         match warren_guest::publish(out) {
//!             Ok(()) => Outcome::Ack,
//!             Err(e) => Outcome::reject(format!("publish refused: {e:?}")),
//!         }
//!     }
//! }
//!
//! warren_guest::export!(Echo);
//! ```
//!
//! Build it with `cargo build --release --target wasm32-wasip2`; the `.wasm`
//! file is a component that `warren check` accepts.
//!
//! The types are generated from `wit/handler.wit` by wit-bindgen; this crate
//! adds constructors and lookups so handlers stay short.

pub mod http;

#[allow(missing_debug_implementations, unused_qualifications)]
mod bindings {
    wit_bindgen::generate!({
        path: "../../wit",
        world: "handler",
        pub_export_macro: true,
        default_bindings_module: "warren_guest",
        additional_derives: [PartialEq],
    });
}

#[doc(hidden)]
pub use bindings::*;

pub use bindings::Guest as Handler;
pub use bindings::warren::handler::types::{
    Decimal, FieldValue, Header, Headers, Level, Message, Nested, Outbound, Outcome, PublishError,
    Retry,
};

/// Buffers `msg` for publishing when the handler returns [`Outcome::Ack`].
/// Refused when the exchange is not in the handler's `publish.allow` list or
/// the message went over the host's publish limits.
pub fn publish(msg: Outbound) -> Result<(), PublishError> {
    warren::handler::host::publish(&msg)
}

/// The value of `key` in the handler's `[handler.config]` table.
pub fn config(key: &str) -> Option<String> {
    warren::handler::host::config(key)
}

/// Writes a line to the host's log, tagged with the handler and message.
pub fn log(level: Level, message: &str) {
    warren::handler::host::log(level, message)
}

/// `log(Level::Info, ..)`.
pub fn info(message: &str) {
    log(Level::Info, message)
}

/// `log(Level::Warn, ..)`.
pub fn warn(message: &str) {
    log(Level::Warn, message)
}

/// `log(Level::Error, ..)`.
pub fn error(message: &str) {
    log(Level::Error, message)
}

impl Outcome {
    /// Done: buffered publishes go out, then the message is acked.
    pub fn ack() -> Self {
        Outcome::Ack
    }

    /// Retry after the handler's backoff for this attempt.
    pub fn retry(reason: impl Into<String>) -> Self {
        Outcome::Retry(Retry {
            delay_ms: None,
            reason: reason.into(),
        })
    }

    /// Retry after `delay_ms` milliseconds.
    pub fn retry_after(delay_ms: u64, reason: impl Into<String>) -> Self {
        Outcome::Retry(Retry {
            delay_ms: Some(delay_ms),
            reason: reason.into(),
        })
    }

    /// Dead-letter the message with `reason`.
    pub fn reject(reason: impl Into<String>) -> Self {
        Outcome::Reject(reason.into())
    }
}

// The type is generated: a derive would have to apply to every generated type.
#[allow(clippy::derivable_impls)]
impl Default for Headers {
    fn default() -> Self {
        Headers {
            entries: Vec::new(),
            nested: Vec::new(),
        }
    }
}

impl Headers {
    /// The top-level value named `name`.
    pub fn get(&self, name: &str) -> Option<&FieldValue> {
        self.entries
            .iter()
            .find(|h| h.name == name)
            .map(|h| &h.value)
    }

    /// A top-level text value.
    pub fn get_str(&self, name: &str) -> Option<&str> {
        match self.get(name)? {
            FieldValue::Text(s) => Some(s),
            _ => None,
        }
    }

    /// A top-level integer of any width (and a timestamp within `i64`).
    pub fn get_i64(&self, name: &str) -> Option<i64> {
        Some(match *self.get(name)? {
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

    /// A top-level float (`f32` or `f64`).
    pub fn get_f64(&self, name: &str) -> Option<f64> {
        match *self.get(name)? {
            FieldValue::F32(f) => Some(f.into()),
            FieldValue::F64(f) => Some(f),
            _ => None,
        }
    }

    /// A top-level boolean.
    pub fn get_bool(&self, name: &str) -> Option<bool> {
        match *self.get(name)? {
            FieldValue::Boolean(b) => Some(b),
            _ => None,
        }
    }

    /// The array or table a `FieldValue::Array` / `FieldValue::Table` points to.
    pub fn resolve(&self, value: &FieldValue) -> Option<&Nested> {
        match value {
            FieldValue::Array(i) | FieldValue::Table(i) => self.nested.get(*i as usize),
            _ => None,
        }
    }

    /// Sets a top-level value, replacing one of the same name.
    pub fn insert(&mut self, name: impl Into<String>, value: FieldValue) {
        let name = name.into();
        match self.entries.iter_mut().find(|h| h.name == name) {
            Some(h) => h.value = value,
            None => self.entries.push(Header { name, value }),
        }
    }
}

impl Message {
    /// The body as UTF-8 text.
    pub fn body_str(&self) -> Result<&str, std::str::Utf8Error> {
        std::str::from_utf8(&self.body)
    }

    /// The body parsed as JSON, into any type serde can build (a
    /// `serde_json::Value`, a map, your own struct).
    #[cfg(feature = "json")]
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_slice(&self.body)
    }

    /// The top-level header `name`; see [`Headers::get`].
    pub fn header(&self, name: &str) -> Option<&FieldValue> {
        self.headers.get(name)
    }

    /// A text header; `None` if absent or of another type.
    pub fn header_str(&self, name: &str) -> Option<&str> {
        self.headers.get_str(name)
    }

    /// An integer header of any width; see [`Headers::get_i64`].
    pub fn header_i64(&self, name: &str) -> Option<i64> {
        self.headers.get_i64(name)
    }

    /// A float header; see [`Headers::get_f64`].
    pub fn header_f64(&self, name: &str) -> Option<f64> {
        self.headers.get_f64(name)
    }

    /// A boolean header; see [`Headers::get_bool`].
    pub fn header_bool(&self, name: &str) -> Option<bool> {
        self.headers.get_bool(name)
    }
}

impl Outbound {
    /// `value` as a compact JSON message to `exchange` with `routing_key`,
    /// content type `application/json`, no headers.
    #[cfg(feature = "json")]
    pub fn json(
        exchange: impl Into<String>,
        routing_key: impl Into<String>,
        value: &impl serde::Serialize,
    ) -> Result<Self, serde_json::Error> {
        let mut out = Outbound::new(exchange, routing_key, serde_json::to_vec(value)?);
        out.content_type = Some("application/json".into());
        Ok(out)
    }

    /// A message to `exchange` with `routing_key`, no properties and no headers.
    pub fn new(
        exchange: impl Into<String>,
        routing_key: impl Into<String>,
        body: impl Into<Vec<u8>>,
    ) -> Self {
        Outbound {
            exchange: exchange.into(),
            routing_key: routing_key.into(),
            body: body.into(),
            content_type: None,
            content_encoding: None,
            correlation_id: None,
            type_: None,
            headers: Headers::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_insert_replaces_and_resolves_nested() {
        let mut h = Headers::default();
        h.insert("a", FieldValue::Text("x".into()));
        h.insert("a", FieldValue::Text("y".into()));
        assert_eq!(h.entries.len(), 1);
        assert_eq!(h.get_str("a"), Some("y"));
        h.nested.push(Nested::Array(vec![FieldValue::I32(7)]));
        h.insert("arr", FieldValue::Array(0));
        assert_eq!(
            h.resolve(h.get("arr").unwrap()),
            Some(&Nested::Array(vec![FieldValue::I32(7)]))
        );
        assert_eq!(h.get_str("arr"), None);
    }

    #[test]
    fn typed_headers_and_json() {
        let mut h = Headers::default();
        h.insert("n", FieldValue::U16(7));
        h.insert("t", FieldValue::Timestamp(u64::MAX));
        h.insert("f", FieldValue::F32(0.5));
        h.insert("b", FieldValue::Boolean(true));
        assert_eq!(h.get_i64("n"), Some(7));
        assert_eq!(h.get_i64("t"), None);
        assert_eq!(h.get_f64("f"), Some(0.5));
        assert_eq!(h.get_bool("b"), Some(true));
        assert_eq!(h.get_bool("n"), None);
        let out = Outbound::json("", "k", &serde_json::json!({"a": 1})).unwrap();
        assert_eq!(out.body, br#"{"a":1}"#);
        assert_eq!(out.content_type.as_deref(), Some("application/json"));
    }

    #[test]
    fn outcome_helpers() {
        assert_eq!(Outcome::reject("bad"), Outcome::Reject("bad".into()));
        assert_eq!(
            Outcome::retry_after(5, "later"),
            Outcome::Retry(Retry {
                delay_ms: Some(5),
                reason: "later".into()
            })
        );
    }
}

pub use bindings::warren::handler::kv::KvError;

/// The key-value store (`warren:handler/kv`, world 0.2.0): the handler's
/// state, written exactly once per message.
///
/// Reads see the store as committed plus this message's own earlier
/// writes. Writes are buffered and committed only if the handler returns
/// [`Outcome::Ack`], atomically with the message's dedup done-marker, so a
/// message processed twice never counts twice; a retry, a reject, a trap
/// or a lost lease writes nothing.
///
/// ```ignore
/// let total = warren_guest::kv::increment(&format!("orders:{customer}"), 1)?;
/// warren_guest::kv::set("last-order", order_id.as_bytes(), None)?;
/// ```
pub mod kv {
    use crate::bindings::warren::handler::kv as imp;
    pub use imp::KvError;

    /// The value of `key`, or none.
    pub fn get(key: &str) -> Result<Option<Vec<u8>>, KvError> {
        imp::get(key)
    }

    /// The value of `key` as UTF-8 text (lossy), or none.
    pub fn get_string(key: &str) -> Result<Option<String>, KvError> {
        Ok(get(key)?.map(|v| String::from_utf8_lossy(&v).into_owned()))
    }

    /// Sets `key`; with `ttl_ms` it expires that long after the commit.
    pub fn set(key: &str, value: &[u8], ttl_ms: Option<u64>) -> Result<(), KvError> {
        imp::set(key, value, ttl_ms)
    }

    /// Removes `key`.
    pub fn delete(key: &str) -> Result<(), KvError> {
        imp::delete(key)
    }

    /// Adds `delta` to the counter at `key` (absent: 0) and returns the
    /// value this message now sees. The addition is applied at commit, so
    /// concurrent increments from other messages all count.
    pub fn increment(key: &str, delta: i64) -> Result<i64, KvError> {
        imp::increment(key, delta)
    }

    /// The counter at `key` (absent: 0).
    pub fn counter(key: &str) -> Result<i64, KvError> {
        match get(key)? {
            None => Ok(0),
            Some(v) => std::str::from_utf8(&v)
                .ok()
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| KvError::NotACounter(format!("key {key:?} is not a counter"))),
        }
    }

    /// Sets `key` to `new` (none: deletes it) if it holds `expected` (none:
    /// is absent). Checked again at commit: if the key changed meanwhile,
    /// nothing of the message is written and it runs again later.
    pub fn compare_and_swap(
        key: &str,
        expected: Option<&[u8]>,
        new: Option<&[u8]>,
    ) -> Result<bool, KvError> {
        imp::compare_and_swap(key, expected, new)
    }

    /// Up to `limit` keys starting with `prefix`, in byte order.
    pub fn list_keys(prefix: &str, limit: u32) -> Result<Vec<String>, KvError> {
        imp::list_keys(prefix, limit)
    }
}
