//! OpenTelemetry traces over OTLP/HTTP (protobuf), off unless
//! `[telemetry] otlp_endpoint` or `OTEL_EXPORTER_OTLP_ENDPOINT` is set.
//!
//! - this file: the span model ([`Span`], [`SpanContext`]), W3C
//!   `traceparent` / `tracestate` parsing and formatting, and the
//!   [`Tracer`] that hands finished spans to the exporter;
//! - `otlp.rs`: the protobuf encoding of an export request;
//! - `export.rs`: the exporter thread (batches, POSTs, drops and counts
//!   what it cannot send).
//!
//! Why not the OpenTelemetry SDK: its OTLP exporter brings tonic or
//! reqwest, hyper and their TLS stacks, a second async runtime's worth of
//! compile time on a 2-core build, for what is a protobuf message and an
//! HTTP POST. The encoding is checked against the official protocol types
//! by the test's receiver, which decodes with them.
//!
//! It owns no decision about messages: the pipeline says which spans a
//! message has and when; this module gives them ids and ships them. When
//! telemetry is off there is no [`Tracer`] and the pipeline does not build
//! spans at all.

mod export;
pub mod otlp;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

pub use export::Exporter;

/// The header names of W3C Trace Context.
pub const TRACEPARENT: &str = "traceparent";
pub const TRACESTATE: &str = "tracestate";

/// The longest `tracestate` carried (the W3C limit is 32 members; 512
/// bytes is the size a vendor may rely on).
const MAX_TRACESTATE: usize = 512;

/// A span's identity and what propagates with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpanContext {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    /// W3C trace flags (bit 0: sampled).
    pub flags: u8,
    pub state: Option<String>,
}

impl SpanContext {
    /// A context from a `traceparent` header (version 00, or a later
    /// version read as 00) and an optional `tracestate`; `None` when the
    /// header is malformed or has an all-zero id.
    pub fn parse(traceparent: &str, tracestate: Option<&str>) -> Option<SpanContext> {
        let t = traceparent.trim();
        let mut parts = t.split('-');
        let (version, trace, span, flags) =
            (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        if version.len() != 2 || version == "ff" || (version == "00" && parts.next().is_some()) {
            return None;
        }
        let hex = |s: &str, n: usize| {
            (s.len() == 2 * n && s.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f')))
                .then(|| hex::decode(s).ok())
                .flatten()
        };
        let trace_id: [u8; 16] = hex(trace, 16)?.try_into().ok()?;
        let span_id: [u8; 8] = hex(span, 8)?.try_into().ok()?;
        let flags = hex(flags, 1)?[0];
        if trace_id == [0; 16] || span_id == [0; 8] {
            return None;
        }
        let state = tracestate
            .map(str::trim)
            .filter(|s| !s.is_empty() && s.len() <= MAX_TRACESTATE && s.is_ascii())
            .map(str::to_string);
        Some(SpanContext {
            trace_id,
            span_id,
            flags,
            state,
        })
    }

    /// The `traceparent` header value of this context.
    pub fn traceparent(&self) -> String {
        format!(
            "00-{}-{}-{:02x}",
            hex::encode(self.trace_id),
            hex::encode(self.span_id),
            self.flags
        )
    }

    /// A child of this context: same trace, flags and state, a new span id.
    pub fn child(&self) -> SpanContext {
        SpanContext {
            span_id: new_span_id(),
            ..self.clone()
        }
    }

    /// The root of a new trace, sampled.
    pub fn root() -> SpanContext {
        let mut trace_id = [0u8; 16];
        while trace_id == [0; 16] {
            trace_id = rand::random();
        }
        SpanContext {
            trace_id,
            span_id: new_span_id(),
            flags: 1,
            state: None,
        }
    }
}

fn new_span_id() -> [u8; 8] {
    loop {
        let id: [u8; 8] = rand::random();
        if id != [0; 8] {
            return id;
        }
    }
}

/// Nanoseconds since the Unix epoch.
pub fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpanKind {
    Internal,
    Producer,
    Consumer,
}

#[derive(Debug, Clone, PartialEq)]
pub enum AttrValue {
    Str(String),
    Int(i64),
    Bool(bool),
}

impl From<&str> for AttrValue {
    fn from(s: &str) -> Self {
        AttrValue::Str(s.to_string())
    }
}
impl From<String> for AttrValue {
    fn from(s: String) -> Self {
        AttrValue::Str(s)
    }
}
impl From<i64> for AttrValue {
    fn from(i: i64) -> Self {
        AttrValue::Int(i)
    }
}
impl From<bool> for AttrValue {
    fn from(b: bool) -> Self {
        AttrValue::Bool(b)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Status {
    Unset,
    Ok,
    Error(String),
}

/// A finished span.
#[derive(Debug, Clone)]
pub struct Span {
    pub context: SpanContext,
    /// The parent's span id (same trace), if any.
    pub parent: Option<[u8; 8]>,
    /// Whether the parent came from another process (a message's headers).
    pub parent_remote: bool,
    pub name: String,
    pub kind: SpanKind,
    pub start_ns: u64,
    pub end_ns: u64,
    pub attributes: Vec<(String, AttrValue)>,
    pub links: Vec<SpanContext>,
    pub status: Status,
}

impl Span {
    /// A span of `context` under `parent` (a span of the same process).
    pub fn new(name: impl Into<String>, kind: SpanKind, context: SpanContext) -> Span {
        Span {
            context,
            parent: None,
            parent_remote: false,
            name: name.into(),
            kind,
            start_ns: 0,
            end_ns: 0,
            attributes: Vec::new(),
            links: Vec::new(),
            status: Status::Unset,
        }
    }

    pub fn attr(&mut self, k: &str, v: impl Into<AttrValue>) -> &mut Span {
        self.attributes.push((k.to_string(), v.into()));
        self
    }
}

/// Hands finished spans to the exporter. Cheap to clone; one per process.
#[derive(Debug, Clone)]
pub struct Tracer {
    exporter: Arc<Exporter>,
    dropped: Arc<AtomicU64>,
}

impl Tracer {
    /// Starts the exporter thread sending to `endpoint` (the full URL of
    /// the traces path) with `resource` describing this process.
    pub fn start(endpoint: String, resource: Vec<(String, AttrValue)>) -> Tracer {
        let dropped = Arc::new(AtomicU64::new(0));
        Tracer {
            exporter: Arc::new(Exporter::start(endpoint, resource, dropped.clone())),
            dropped,
        }
    }

    /// Queues finished spans for export; never blocks (spans that do not
    /// fit the queue are dropped and counted).
    pub fn finish(&self, spans: Vec<Span>) {
        self.exporter.send(spans);
    }

    /// Spans dropped so far (queue full or export failed).
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Sends what is queued and waits up to `within` for it to go out.
    pub fn flush(&self, within: std::time::Duration) {
        self.exporter.flush(within);
    }
}

/// The URL spans are POSTed to: `endpoint` as given when it already ends
/// in `/v1/traces`, else with that path appended (how
/// `OTEL_EXPORTER_OTLP_ENDPOINT` is read).
pub fn traces_url(endpoint: &str) -> String {
    let e = endpoint.trim_end_matches('/');
    if e.ends_with("/v1/traces") {
        e.to_string()
    } else {
        format!("{e}/v1/traces")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_round_trips_and_rejects_what_w3c_rejects() {
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let c = SpanContext::parse(tp, Some("congo=t61rcWkgMzE")).unwrap();
        assert_eq!(c.traceparent(), tp);
        assert_eq!(c.state.as_deref(), Some("congo=t61rcWkgMzE"));
        assert_eq!(c.flags, 1);
        let child = c.child();
        assert_eq!(child.trace_id, c.trace_id);
        assert_ne!(child.span_id, c.span_id);
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
        ] {
            assert!(SpanContext::parse(bad, None).is_none(), "{bad}");
        }
        // A later version may add fields.
        assert!(
            SpanContext::parse(
                "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-later",
                None
            )
            .is_some()
        );
    }

    #[test]
    fn the_traces_path_is_appended_once() {
        assert_eq!(traces_url("http://c:4318"), "http://c:4318/v1/traces");
        assert_eq!(traces_url("http://c:4318/"), "http://c:4318/v1/traces");
        assert_eq!(
            traces_url("http://c:4318/v1/traces"),
            "http://c:4318/v1/traces"
        );
    }
}
