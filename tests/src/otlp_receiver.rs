//! An OTLP/HTTP trace receiver on loopback, for the telemetry tests: it
//! answers `POST /v1/traces` with 200 and decodes each body with prost
//! into the OTLP trace messages (declared in [`proto`] from
//! opentelemetry-proto's `.proto` files, field numbers as published),
//! keeping every span.
//!
//! Why not the `opentelemetry-proto` crate's generated types: it brings
//! `opentelemetry_sdk`, whose features on `futures-util` make cargo
//! rebuild wasmtime for the test build, a quarter of an hour on a 2-core
//! machine. prost decodes by the wire format alone, so these types check
//! warren's hand-written encoder independently.
//!
//! A plain HTTP/1.1 server over a tokio listener (keep-alive honoured):
//! all an exporter needs.

use std::sync::{Arc, Mutex};

use prost::Message as _;
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};

/// The OTLP trace messages (opentelemetry/proto/collector/trace/v1,
/// trace/v1, common/v1, resource/v1), as much as the tests read.
pub mod proto {
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ExportTraceServiceRequest {
        #[prost(message, repeated, tag = "1")]
        pub resource_spans: Vec<ResourceSpans>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ResourceSpans {
        #[prost(message, optional, tag = "1")]
        pub resource: Option<Resource>,
        #[prost(message, repeated, tag = "2")]
        pub scope_spans: Vec<ScopeSpans>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Resource {
        #[prost(message, repeated, tag = "1")]
        pub attributes: Vec<KeyValue>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ScopeSpans {
        #[prost(message, optional, tag = "1")]
        pub scope: Option<InstrumentationScope>,
        #[prost(message, repeated, tag = "2")]
        pub spans: Vec<Span>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct InstrumentationScope {
        #[prost(string, tag = "1")]
        pub name: String,
        #[prost(string, tag = "2")]
        pub version: String,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Span {
        #[prost(bytes = "vec", tag = "1")]
        pub trace_id: Vec<u8>,
        #[prost(bytes = "vec", tag = "2")]
        pub span_id: Vec<u8>,
        #[prost(string, tag = "3")]
        pub trace_state: String,
        #[prost(bytes = "vec", tag = "4")]
        pub parent_span_id: Vec<u8>,
        #[prost(string, tag = "5")]
        pub name: String,
        /// SpanKind: 1 internal, 2 server, 3 client, 4 producer, 5 consumer.
        #[prost(int32, tag = "6")]
        pub kind: i32,
        #[prost(fixed64, tag = "7")]
        pub start_time_unix_nano: u64,
        #[prost(fixed64, tag = "8")]
        pub end_time_unix_nano: u64,
        #[prost(message, repeated, tag = "9")]
        pub attributes: Vec<KeyValue>,
        #[prost(message, repeated, tag = "13")]
        pub links: Vec<Link>,
        #[prost(message, optional, tag = "15")]
        pub status: Option<Status>,
        #[prost(fixed32, tag = "16")]
        pub flags: u32,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Link {
        #[prost(bytes = "vec", tag = "1")]
        pub trace_id: Vec<u8>,
        #[prost(bytes = "vec", tag = "2")]
        pub span_id: Vec<u8>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Status {
        #[prost(string, tag = "2")]
        pub message: String,
        /// 0 unset, 1 ok, 2 error.
        #[prost(int32, tag = "3")]
        pub code: i32,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct KeyValue {
        #[prost(string, tag = "1")]
        pub key: String,
        #[prost(message, optional, tag = "2")]
        pub value: Option<AnyValue>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct AnyValue {
        #[prost(oneof = "Value", tags = "1, 2, 3, 4, 7")]
        pub value: Option<Value>,
    }
    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum Value {
        #[prost(string, tag = "1")]
        StringValue(String),
        #[prost(bool, tag = "2")]
        BoolValue(bool),
        #[prost(int64, tag = "3")]
        IntValue(i64),
        #[prost(double, tag = "4")]
        DoubleValue(f64),
        #[prost(bytes = "vec", tag = "7")]
        BytesValue(Vec<u8>),
    }

    pub const KIND_PRODUCER: i32 = 4;
    pub const KIND_CONSUMER: i32 = 5;
}

use proto::{ExportTraceServiceRequest, Span, Value};

/// A span as received, with the resource attributes of its request.
#[derive(Debug, Clone)]
pub struct Received {
    pub span: Span,
    pub service_name: Option<String>,
}

/// The receiver; it runs on the test's runtime and stops with it.
#[derive(Debug, Clone)]
pub struct Receiver {
    pub port: u16,
    spans: Arc<Mutex<Vec<Received>>>,
    /// Bodies that did not decode, with the error.
    pub errors: Arc<Mutex<Vec<String>>>,
}

impl Receiver {
    pub async fn start() -> Receiver {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let r = Receiver {
            port,
            spans: Arc::default(),
            errors: Arc::default(),
        };
        let me = r.clone();
        tokio::spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                let me = me.clone();
                tokio::spawn(async move {
                    let _ = me.serve(conn).await;
                });
            }
        });
        r
    }

    async fn serve(&self, conn: tokio::net::TcpStream) -> std::io::Result<()> {
        let (rd, mut wr) = conn.into_split();
        let mut rd = BufReader::new(rd);
        loop {
            let mut request_line = String::new();
            if rd.read_line(&mut request_line).await? == 0 {
                return Ok(());
            }
            let mut length = 0usize;
            loop {
                let mut line = String::new();
                rd.read_line(&mut line).await?;
                let line = line.trim_end();
                if line.is_empty() {
                    break;
                }
                if let Some((k, v)) = line.split_once(':')
                    && k.eq_ignore_ascii_case("content-length")
                {
                    length = v.trim().parse().unwrap_or(0);
                }
            }
            let mut body = vec![0u8; length];
            rd.read_exact(&mut body).await?;
            if request_line.starts_with("POST /v1/traces ") {
                self.take(&body);
            }
            wr.write_all(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/x-protobuf\r\nContent-Length: 0\r\n\r\n",
            )
            .await?;
        }
    }

    fn take(&self, body: &[u8]) {
        match ExportTraceServiceRequest::decode(body) {
            Ok(req) => {
                let mut spans = self.spans.lock().unwrap();
                for rs in req.resource_spans {
                    let service_name = rs.resource.as_ref().and_then(|r| {
                        r.attributes
                            .iter()
                            .find(|kv| kv.key == "service.name")
                            .and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
                                Value::StringValue(s) => Some(s.clone()),
                                _ => None,
                            })
                    });
                    for ss in rs.scope_spans {
                        for span in ss.spans {
                            spans.push(Received {
                                span,
                                service_name: service_name.clone(),
                            });
                        }
                    }
                }
            }
            Err(e) => self.errors.lock().unwrap().push(e.to_string()),
        }
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<Received> {
        self.spans.lock().unwrap().clone()
    }
}

/// A string attribute of `span`.
pub fn attr(span: &Span, key: &str) -> Option<String> {
    let v = span.attributes.iter().find(|kv| kv.key == key)?;
    match v.value.as_ref()?.value.as_ref()? {
        Value::StringValue(s) => Some(s.clone()),
        Value::IntValue(i) => Some(i.to_string()),
        Value::BoolValue(b) => Some(b.to_string()),
        other => Some(format!("{other:?}")),
    }
}
