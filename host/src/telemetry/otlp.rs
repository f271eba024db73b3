//! OTLP/HTTP's protobuf encoding of spans (`ExportTraceServiceRequest`,
//! opentelemetry-proto's `collector/trace/v1`), written by hand: a few
//! dozen lines of protobuf wire format instead of a code generator and the
//! gRPC stack that comes with the generated types. Only encoding: warren
//! never reads OTLP.

use super::{AttrValue, Span, SpanKind, Status};

const VARINT: u8 = 0;
const FIXED64: u8 = 1;
const LEN: u8 = 2;
const FIXED32: u8 = 5;

#[derive(Default)]
struct Buf(Vec<u8>);

impl Buf {
    fn varint(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.0.push((v as u8) | 0x80);
            v >>= 7;
        }
        self.0.push(v as u8);
    }
    fn tag(&mut self, field: u32, wire: u8) {
        self.varint(u64::from(field) << 3 | u64::from(wire));
    }
    fn bytes(&mut self, field: u32, b: &[u8]) {
        self.tag(field, LEN);
        self.varint(b.len() as u64);
        self.0.extend_from_slice(b);
    }
    fn string(&mut self, field: u32, s: &str) {
        if !s.is_empty() {
            self.bytes(field, s.as_bytes());
        }
    }
    fn message(&mut self, field: u32, m: Buf) {
        self.bytes(field, &m.0);
    }
    fn uint(&mut self, field: u32, v: u64) {
        if v != 0 {
            self.tag(field, VARINT);
            self.varint(v);
        }
    }
    fn fixed64(&mut self, field: u32, v: u64) {
        self.tag(field, FIXED64);
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn fixed32(&mut self, field: u32, v: u32) {
        self.tag(field, FIXED32);
        self.0.extend_from_slice(&v.to_le_bytes());
    }
}

fn any_value(v: &AttrValue) -> Buf {
    let mut b = Buf::default();
    match v {
        AttrValue::Str(s) => b.bytes(1, s.as_bytes()),
        AttrValue::Bool(x) => {
            b.tag(2, VARINT);
            b.varint(u64::from(*x));
        }
        AttrValue::Int(i) => {
            b.tag(3, VARINT);
            b.varint(*i as u64);
        }
    }
    b
}

fn key_value(k: &str, v: &AttrValue) -> Buf {
    let mut b = Buf::default();
    b.string(1, k);
    b.message(2, any_value(v));
    b
}

fn span(s: &Span) -> Buf {
    let mut b = Buf::default();
    b.bytes(1, &s.context.trace_id);
    b.bytes(2, &s.context.span_id);
    if let Some(state) = &s.context.state {
        b.string(3, state);
    }
    if let Some(parent) = &s.parent {
        b.bytes(4, parent);
    }
    b.string(5, &s.name);
    b.uint(
        6,
        match s.kind {
            SpanKind::Internal => 1,
            SpanKind::Producer => 4,
            SpanKind::Consumer => 5,
        },
    );
    b.fixed64(7, s.start_ns);
    b.fixed64(8, s.end_ns.max(s.start_ns));
    for (k, v) in &s.attributes {
        b.message(9, key_value(k, v));
    }
    for l in &s.links {
        let mut lb = Buf::default();
        lb.bytes(1, &l.trace_id);
        lb.bytes(2, &l.span_id);
        if let Some(state) = &l.state {
            lb.string(3, state);
        }
        lb.fixed32(6, 0x100 | u32::from(l.flags));
        b.message(13, lb);
    }
    let mut st = Buf::default();
    match &s.status {
        Status::Unset => {}
        Status::Ok => st.uint(3, 1),
        Status::Error(msg) => {
            st.string(2, msg);
            st.uint(3, 2);
        }
    }
    b.message(15, st);
    // Bits 0-7: the W3C trace flags; bit 8: whether the parent is known to
    // be remote or not, bit 9: that it is remote.
    let remote = if s.parent_remote { 0x300 } else { 0x100 };
    b.fixed32(16, u32::from(s.context.flags) | remote);
    b
}

/// An `ExportTraceServiceRequest` of `spans`, from one resource (the
/// process: `service.name`, `host.name`, ...) and one instrumentation scope.
pub fn export_request(resource: &[(String, AttrValue)], spans: &[Span]) -> Vec<u8> {
    let mut res = Buf::default();
    for (k, v) in resource {
        res.message(1, key_value(k, v));
    }
    let mut scope = Buf::default();
    scope.string(1, "warren");
    scope.string(2, env!("CARGO_PKG_VERSION"));
    let mut scope_spans = Buf::default();
    scope_spans.message(1, scope);
    for s in spans {
        scope_spans.message(2, span(s));
    }
    let mut rs = Buf::default();
    rs.message(1, res);
    rs.message(2, scope_spans);
    let mut req = Buf::default();
    req.message(1, rs);
    req.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_are_little_endian_base_128() {
        let mut b = Buf::default();
        b.varint(1);
        b.varint(300);
        b.varint(u64::MAX);
        assert_eq!(&b.0[..3], &[0x01, 0xac, 0x02]);
        assert_eq!(b.0.len(), 3 + 10);
    }

    #[test]
    fn a_string_attribute_encodes_as_the_spec_says() {
        // KeyValue{key: "k", value: AnyValue{string_value: "v"}}
        let b = key_value("k", &AttrValue::Str("v".into()));
        assert_eq!(b.0, [0x0a, 0x01, b'k', 0x12, 0x03, 0x0a, 0x01, b'v']);
    }
}
