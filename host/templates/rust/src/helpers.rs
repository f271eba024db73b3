//! Helpers for warren handlers in Rust: JSON in and out in one call, typed
//! header access, a JSON GET over outbound HTTP, and the outcomes. Plain
//! Rust over the generated bindings and the `wasip2` crate; copy it into
//! any handler.
//!
//! ```ignore
//! let obj: serde_json::Value = json_body(&msg)?;           // Err(NotJson)
//! let tenant = header_str(&msg, "tenant");                 // None if absent or not text
//! let info = get_json(&format!("{base}/tenants/{}", url_segment(tenant)))?; // Err(why)
//! publish_json("", &routing_key, &obj, msg.correlation_id.clone())?;
//! return ack() | retry("db busy", Some(5000)) | reject("bad input");
//! ```

use wasip2::http::outgoing_handler;
use wasip2::http::types::{Fields, OutgoingRequest, Scheme};
use wasip2::io::streams::StreamError;

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

/// `GET url` (`http://` or `https://`) and the answer parsed as JSON. The
/// host sends it only if the handler's `[http]` grant allows the URL. The
/// error says why not: the request failed (the wasi:http error code, such
/// as `HttpRequestDenied` for a URL the grant does not allow or
/// `ConnectionTimeout`), the status was not 2xx (`status 404`), or the
/// answer is not JSON.
pub fn get_json(url: &str) -> Result<serde_json::Value, String> {
    let (scheme, rest) = url.split_once("://").ok_or("not an absolute URL")?;
    let scheme = match scheme {
        "http" => Scheme::Http,
        "https" => Scheme::Https,
        other => return Err(format!("not an HTTP URL: {other}")),
    };
    let (authority, path) = rest.split_at(rest.find(['/', '?']).unwrap_or(rest.len()));
    let path = if path.starts_with('/') { path.to_string() } else { format!("/{path}") };
    let request = OutgoingRequest::new(Fields::new());
    request
        .set_scheme(Some(&scheme))
        .and(request.set_authority(Some(authority)))
        .and(request.set_path_with_query(Some(&path)))
        .map_err(|()| "invalid URL".to_string())?;
    let code = |e: &dyn std::fmt::Debug| format!("{e:?}").replace("ErrorCode::", "");
    let future = outgoing_handler::handle(request, None).map_err(|e| code(&e))?;
    future.subscribe().block();
    let response = match future.get() {
        Some(Ok(Ok(response))) => response,
        Some(Ok(Err(e))) => return Err(code(&e)),
        Some(Err(())) | None => return Err("no response".into()),
    };
    let status = response.status();
    if !(200..300).contains(&status) {
        return Err(format!("status {status}"));
    }
    let body = response.consume().map_err(|()| "no response body")?;
    let stream = body.stream().map_err(|()| "no response body")?;
    let mut bytes = Vec::new();
    loop {
        match stream.blocking_read(64 << 10) {
            Ok(chunk) => bytes.extend(chunk),
            Err(StreamError::Closed) => break,
            Err(StreamError::LastOperationFailed(e)) => return Err(e.to_debug_string()),
        }
    }
    serde_json::from_slice(&bytes).map_err(|e| format!("the answer is not JSON: {e}"))
}

/// `s` made safe as one segment of a URL's path: every byte but letters,
/// digits and `-._~` percent-encoded.
pub fn url_segment(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                char::from(b).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
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
