//! An HTTP/1.1 server a test starts on loopback for handlers to call, plain
//! or with TLS (a certificate from `tls_certs`), that records every
//! request it gets.
//!
//! Paths:
//! - `/echo...`: 200, body `echo <method> <path>`, and the request's
//!   `Idempotency-Key` echoed in `x-idempotency-key`;
//! - `/bytes/N`: 200 with a body of N bytes (`x`), sent in 16 KiB chunks;
//! - `/big-head/N`: 200 with N headers of 1,000 bytes each (a hostile
//!   server's response head);
//! - `/fail-once/ID`: 503 the first time for each ID, then as `/echo`;
//! - `/slow/MS`: 200 after MS milliseconds; the server counts how many
//!   of these it held at once ([`HttpServer::most_at_once`]);
//! - `/hang`: never answers (the connection is held until the test ends or
//!   30 s pass);
//! - `/price/SKU`: with a price table ([`HttpServer::start_prices`]), the
//!   price service the `orders` handlers call: 200 with
//!   `{"sku": SKU, "price_cents": N}`, or 404 for a SKU not in the table;
//! - anything else: 404.
//!
//! The server stops when its guard is dropped.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Bytes, Frame, Incoming};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

/// One request as the server saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    pub method: String,
    /// Path and query.
    pub path: String,
    pub idempotency_key: Option<String>,
    pub body: Vec<u8>,
}

/// A running server; stops on drop.
#[derive(Debug)]
pub struct HttpServer {
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    slow: Arc<Slow>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

type Body = http_body_util::combinators::BoxBody<Bytes, Infallible>;

/// `/slow/MS` requests held now, and the most held at once.
#[derive(Debug, Default)]
struct Slow {
    now: AtomicUsize,
    most: AtomicUsize,
}

impl HttpServer {
    /// A plain HTTP server on 127.0.0.1, a free port.
    pub async fn start() -> HttpServer {
        Self::serve(None, HashMap::new()).await
    }

    /// A plain HTTP server on 127.0.0.1 that also answers `/price/SKU` from
    /// `prices` (SKU, price in cents).
    pub async fn start_prices(prices: &[(&str, u64)]) -> HttpServer {
        let table = prices.iter().map(|(s, p)| (s.to_string(), *p)).collect();
        Self::serve(None, table).await
    }

    /// An HTTPS server on 127.0.0.1 with `cert` and `key` (PEM).
    pub async fn start_tls(cert: &Path, key: &Path) -> HttpServer {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
            .unwrap()
            .map(Result::unwrap)
            .collect();
        let key = PrivateKeyDer::from_pem_file(key).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .unwrap();
        Self::serve(
            Some(tokio_rustls::TlsAcceptor::from(Arc::new(config))),
            HashMap::new(),
        )
        .await
    }

    async fn serve(
        tls: Option<tokio_rustls::TlsAcceptor>,
        prices: HashMap<String, u64>,
    ) -> HttpServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let log = seen.clone();
        let prices = Arc::new(prices);
        let slow: Arc<Slow> = Arc::default();
        let held = slow.clone();
        let task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let log = log.clone();
                let tls = tls.clone();
                let prices = prices.clone();
                let held = held.clone();
                conns.spawn(async move {
                    let service = service_fn(move |req| {
                        answer(req, log.clone(), prices.clone(), held.clone())
                    });
                    let builder = hyper::server::conn::http1::Builder::new();
                    let _ = match tls {
                        Some(acceptor) => match acceptor.accept(tcp).await {
                            Ok(stream) => {
                                builder
                                    .serve_connection(TokioIo::new(stream), service)
                                    .await
                            }
                            Err(_) => return,
                        },
                        None => builder.serve_connection(TokioIo::new(tcp), service).await,
                    };
                });
                // Reap finished connections so a long test holds no more
                // than those still open.
                while conns.try_join_next().is_some() {}
            }
        });
        HttpServer {
            addr,
            seen,
            slow,
            task,
        }
    }

    /// `http://127.0.0.1:PORT` (or `https://`) plus `path`.
    pub fn url(&self, scheme: &str, path: &str) -> String {
        format!("{scheme}://{}{path}", self.addr)
    }

    /// Every request so far, in arrival order.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// The most `/slow/MS` requests the server held at one time.
    pub fn most_at_once(&self) -> usize {
        self.slow.most.load(Ordering::SeqCst)
    }
}

async fn answer(
    req: Request<Incoming>,
    seen: Arc<Mutex<Vec<Seen>>>,
    prices: Arc<HashMap<String, u64>>,
    slow: Arc<Slow>,
) -> Result<Response<Body>, Infallible> {
    let method = req.method().to_string();
    let path = req
        .uri()
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_string();
    let key = req
        .headers()
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes().to_vec())
        .unwrap_or_default();
    seen.lock().unwrap().push(Seen {
        method: method.clone(),
        path: path.clone(),
        idempotency_key: key.clone(),
        body,
    });
    let full = |status: u16, text: String| {
        Response::builder()
            .status(status)
            .body(Full::new(Bytes::from(text)).boxed())
            .unwrap()
    };
    let first_of_id = path.starts_with("/fail-once/")
        && seen
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.path == path)
            .count()
            == 1;
    if first_of_id {
        return Ok(full(503, "try again".into()));
    }
    if path.starts_with("/echo") || path.starts_with("/fail-once/") {
        let mut r = full(200, format!("echo {method} {path}"));
        if let Some(k) = key {
            r.headers_mut()
                .insert("x-idempotency-key", k.parse().unwrap());
        }
        return Ok(r);
    }
    if let Some(n) = path.strip_prefix("/bytes/") {
        let n: usize = n.parse().unwrap_or(0);
        let chunks = (0..n.div_ceil(16 << 10)).map(move |i| {
            let len = (n - i * (16 << 10)).min(16 << 10);
            Ok::<_, Infallible>(Frame::data(Bytes::from(vec![b'x'; len])))
        });
        let body = StreamBody::new(futures_util::stream::iter(chunks));
        return Ok(Response::builder()
            .status(200)
            .body(BodyExt::boxed(body))
            .unwrap());
    }
    if let Some(sku) = path.strip_prefix("/price/")
        && !prices.is_empty()
    {
        let (status, json) = match prices.get(sku) {
            Some(cents) => (200, serde_json::json!({"sku": sku, "price_cents": cents})),
            None => (
                404,
                serde_json::json!({"error": format!("no price for {sku}")}),
            ),
        };
        let mut r = full(status, json.to_string());
        r.headers_mut()
            .insert("content-type", "application/json".parse().unwrap());
        return Ok(r);
    }
    if let Some(n) = path.strip_prefix("/big-head/") {
        let n: usize = n.parse().unwrap_or(0);
        let mut r = full(200, "small body".into());
        let value: hyper::header::HeaderValue = "h".repeat(1000).parse().unwrap();
        for i in 0..n {
            let name: hyper::header::HeaderName = format!("x-filler-{i}").parse().unwrap();
            r.headers_mut().insert(name, value.clone());
        }
        return Ok(r);
    }
    if let Some(ms) = path.strip_prefix("/slow/") {
        let now = slow.now.fetch_add(1, Ordering::SeqCst) + 1;
        slow.most.fetch_max(now, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(ms.parse().unwrap_or(0))).await;
        slow.now.fetch_sub(1, Ordering::SeqCst);
        return Ok(full(200, format!("slow {ms}")));
    }
    if path == "/hang" {
        tokio::time::sleep(Duration::from_secs(30)).await;
        return Ok(full(504, "gave up".into()));
    }
    Ok(full(404, "no such path".into()))
}
