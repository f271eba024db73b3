//! Outbound HTTP for handlers: the host side of `wasi:http/outgoing-handler`.
//!
//! wasmtime's `wasi:http` implementation turns a guest's request into an
//! `http::Request` and hands it to [`HttpHooks::send_request`], the one
//! place where warren decides: a handler without a grant (`[handler.http]`)
//! is refused, and so is a request past the message's `max_requests` or to
//! a destination no `allow` pattern matches. An admitted request gets its
//! `Idempotency-Key`, then is sent by [`send`] over its own connection
//! (hyper's HTTP/1.1 client on tokio, TLS by rustls with the system's roots
//! plus the grant's CA), every step under one instant: the request's
//! `timeout_ms` or the message's deadline, whichever comes first. The
//! response body is counted as the guest reads it and cut off with an
//! error past `max_response_bytes`.
//!
//! Each request is counted (requests, errors by kind, latency), labelled by
//! the handler and the `allow` pattern it matched, never by a name the
//! guest chose, so a guest cannot grow the metric families; a refusal is
//! logged on one line with the destination as `scheme://host:port/path`
//! (never the query or a user), and so is every failure.
//!
//! It does not know the config file: the caller builds an [`HttpGrant`]
//! from `[handler.http]`'s values.

use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::uri::Scheme;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use sha2::{Digest as _, Sha256};
use tokio::net::TcpStream;
use wasmtime_wasi_http::io::TokioIo;
use wasmtime_wasi_http::{Error, RequestOptions, WasiBody, WasiHttpHooks};

use super::HandlerEnv;
use super::http_answers::{self, HttpResponder};
use crate::config::{HttpPattern, HttpScheme};
use crate::metrics::{HttpErrorLabels, HttpLabels, Metrics};

/// The header an admitted request carries when the grant asks for it.
pub const IDEMPOTENCY_HEADER: &str = "idempotency-key";

/// What a handler may do over HTTP (`[handler.http]`).
pub struct HttpGrant {
    pub allow: Vec<HttpPattern>,
    pub timeout: Duration,
    pub max_response_bytes: u64,
    pub max_requests: u32,
    pub idempotency_header: bool,
    tls: Arc<rustls::ClientConfig>,
    /// Answers admitted requests instead of the network (`warren test`).
    responder: Option<Arc<dyn HttpResponder>>,
}

impl std::fmt::Debug for HttpGrant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpGrant")
            .field("allow", &self.allow)
            .field("timeout", &self.timeout)
            .field("max_response_bytes", &self.max_response_bytes)
            .field("max_requests", &self.max_requests)
            .field("idempotency_header", &self.idempotency_header)
            .field("answered", &self.responder.is_some())
            .finish_non_exhaustive()
    }
}

/// What [`HttpGrant::new`] is told.
#[derive(Debug, Clone)]
pub struct HttpSettings {
    pub allow: Vec<HttpPattern>,
    pub timeout: Duration,
    pub max_response_bytes: u64,
    pub max_requests: u32,
    pub idempotency_header: bool,
    /// PEM CA certificates trusted besides the system's roots.
    pub ca_pem: Option<Vec<u8>>,
}

impl HttpGrant {
    /// A grant with its TLS settings: the system's roots (read once per
    /// process) plus the certificates of `ca_pem`. An error says what in
    /// the PEM is wrong; the caller names the file and the key.
    pub fn new(settings: HttpSettings) -> Result<Self, String> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add_parsable_certificates(system_roots().iter().cloned());
        if let Some(pem) = &settings.ca_pem {
            use rustls::pki_types::CertificateDer;
            use rustls::pki_types::pem::PemObject;
            let mut added = 0;
            for cert in CertificateDer::pem_slice_iter(pem) {
                let cert = cert.map_err(|e| format!("cannot read a PEM certificate: {e}"))?;
                roots
                    .add(cert)
                    .map_err(|e| format!("not a usable CA certificate: {e}"))?;
                added += 1;
            }
            if added == 0 {
                return Err("no PEM certificate in the file".into());
            }
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("cannot set up TLS: {e}"))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Self {
            allow: settings.allow,
            timeout: settings.timeout,
            max_response_bytes: settings.max_response_bytes,
            max_requests: settings.max_requests,
            idempotency_header: settings.idempotency_header,
            tls: Arc::new(tls),
            responder: None,
        })
    }

    /// This grant with every admitted request answered by `responder`
    /// instead of sent: checked as a sent one would be, never sent.
    pub fn answered_by(mut self, responder: Arc<dyn HttpResponder>) -> Self {
        self.responder = Some(responder);
        self
    }
}

/// The system's trusted roots, read once per process; unreadable ones are
/// skipped (with a warning), as a browser would.
fn system_roots() -> &'static [rustls::pki_types::CertificateDer<'static>] {
    static ROOTS: OnceLock<Vec<rustls::pki_types::CertificateDer<'static>>> = OnceLock::new();
    ROOTS.get_or_init(|| {
        let found = rustls_native_certs::load_native_certs();
        if let Some(first) = found.errors.first() {
            tracing::warn!(
                errors = found.errors.len(),
                first = %first,
                "some system CA certificates could not be read; outbound HTTPS trusts the rest"
            );
        }
        found.certs
    })
}

/// The per-store side: the grant, and what this message has sent so far.
pub(crate) struct HttpHooks {
    /// The handler: its name, its grant (none refuses every request) and
    /// where requests and refusals are counted (none counts nothing).
    /// Shared, not copied: a store is made per message.
    env: Arc<HandlerEnv>,
    /// The running message's deadline (the store's).
    pub(super) deadline: Instant,
    /// Requests this message has asked for, refused ones included.
    sent: u32,
    /// What the idempotency keys derive from: the message's dedup key, or
    /// its message id when dedup is off; none for neither.
    key_seed: Option<String>,
    message_id: Arc<str>,
}

impl HttpHooks {
    pub(super) fn new(env: Arc<HandlerEnv>, message_id: Arc<str>) -> Self {
        Self {
            env,
            deadline: Instant::now(),
            sent: 0,
            key_seed: None,
            message_id,
        }
    }

    /// Readies the hooks for a message: its counts start at zero.
    pub(super) fn begin(&mut self, message_id: Arc<str>, key_seed: Option<String>) {
        self.sent = 0;
        self.message_id = message_id;
        self.key_seed = key_seed;
    }

    /// Logs and counts a refusal, and gives the guest its error.
    fn refuse(&self, target: &Target, kind: &str, code: Error, why: &str) -> Error {
        if let Some(m) = &self.env.metrics {
            m.http_errors
                .get_or_create(&HttpErrorLabels {
                    handler: self.env.name.clone(),
                    destination: "-".into(),
                    kind: kind.into(),
                })
                .inc();
        }
        tracing::warn!(
            handler = self.env.name.as_str(),
            message_id = &*self.message_id,
            url = %target,
            refused = kind,
            "outbound HTTP request refused: {why}"
        );
        code
    }
}

/// The idempotency key of request `ordinal` (1-based) of the message whose
/// dedup key is `seed`: the same for every run of the same message.
pub fn idempotency_key(seed: &str, ordinal: u32) -> String {
    let mut h = Sha256::new();
    h.update(b"warren-http-idempotency\0");
    h.update(seed.as_bytes());
    h.update(b"\0");
    h.update(ordinal.to_be_bytes());
    hex::encode(&h.finalize()[..16])
}

/// Where a request goes, as logs show it: no user, no query.
struct Target {
    scheme: Option<HttpScheme>,
    host: String,
    port: u16,
    path: String,
}

impl Target {
    fn of(uri: &http::Uri) -> Self {
        let scheme = match uri.scheme() {
            Some(s) if *s == Scheme::HTTPS => Some(HttpScheme::Https),
            Some(s) if *s == Scheme::HTTP => Some(HttpScheme::Http),
            _ => None,
        };
        let port = uri
            .port_u16()
            .unwrap_or_else(|| scheme.map_or(0, HttpScheme::default_port));
        let (path, _) = truncate(uri.path(), 256);
        Self {
            scheme,
            host: uri.host().unwrap_or("").to_ascii_lowercase(),
            port,
            path: path.into(),
        }
    }
}

fn truncate(s: &str, max: usize) -> (&str, bool) {
    let (cut, n) = super::truncate_on_char(s, max);
    (cut, n > 0)
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let scheme = self.scheme.map_or("?", HttpScheme::as_str);
        write!(f, "{scheme}://{}:{}{}", self.host, self.port, self.path)
    }
}

pub(super) type Sent = Result<
    (
        http::Response<WasiBody>,
        Box<dyn Future<Output = Result<(), Error>> + Send>,
    ),
    Error,
>;
pub(super) type SendFuture = Box<dyn Future<Output = Sent> + Send>;

/// The answer to a request refused before sending.
fn refused(e: Error) -> SendFuture {
    let sent: Sent = Err(e);
    Box::new(std::future::ready(sent))
}

impl WasiHttpHooks for HttpHooks {
    fn send_request(
        &mut self,
        mut request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        _fut: Box<dyn Future<Output = Result<(), Error>> + Send>,
    ) -> SendFuture {
        self.sent = self.sent.saturating_add(1);
        let ordinal = self.sent;
        let target = Target::of(request.uri());
        let Some(grant) = self.env.http.clone() else {
            let e = self.refuse(
                &target,
                "no_grant",
                Error::HttpRequestDenied,
                "the handler has no [handler.http] table",
            );
            return refused(e);
        };
        if ordinal > grant.max_requests {
            let why = format!(
                "request {ordinal} of the message is over http.max_requests ({})",
                grant.max_requests
            );
            let e = self.refuse(&target, "max_requests", Error::ConnectionLimitReached, &why);
            return refused(e);
        }
        let pattern = target.scheme.and_then(|scheme| {
            grant
                .allow
                .iter()
                .find(|p| p.matches(scheme, &target.host, target.port))
        });
        let Some(pattern) = pattern else {
            let e = self.refuse(
                &target,
                "not_allowed",
                Error::HttpRequestDenied,
                "no http.allow pattern matches the scheme, host and port",
            );
            return refused(e);
        };
        if grant.idempotency_header
            && let Some(seed) = &self.key_seed
        {
            let key = idempotency_key(seed, ordinal);
            request.headers_mut().insert(
                IDEMPOTENCY_HEADER,
                http::HeaderValue::from_str(&key).expect("hex is a valid header value"),
            );
        }
        let started = Instant::now();
        if let Some(responder) = grant.responder.clone() {
            let end = (started + grant.timeout).min(self.deadline);
            return http_answers::answer(responder, request, end, grant.max_response_bytes);
        }
        // The guest's own request options may shorten a step, never lengthen
        // one past the request's end.
        let end = (started + grant.timeout).min(self.deadline);
        let opts = options.unwrap_or_default();
        let step = |d: Option<Duration>| d.map_or(end, |d| (started + d).min(end));
        let limits = Steps {
            end,
            connect: step(opts.connect_timeout),
            first_byte: step(opts.first_byte_timeout),
            between_bytes: opts.between_bytes_timeout,
        };
        let done = Done {
            metrics: self.env.metrics.clone(),
            labels: HttpLabels {
                handler: self.env.name.clone(),
                destination: pattern.to_string(),
            },
            handler: self.env.name.as_str().into(),
            message_id: self.message_id.clone(),
            url: target.to_string(),
            started,
            status: None,
            finished: false,
        };
        if let Some(m) = &done.metrics {
            m.http_requests.get_or_create(&done.labels).inc();
        }
        let tls = (target.scheme == Some(HttpScheme::Https)).then(|| grant.tls.clone());
        let internal_ok = !pattern.host_is_wildcard();
        let max_body = grant.max_response_bytes;
        Box::new(async move {
            let mut done = done;
            match send(request, &target, tls, internal_ok, limits).await {
                Ok((response, io)) => {
                    done.status = Some(response.status().as_u16());
                    let response = response.map(|incoming| {
                        LimitedBody {
                            incoming,
                            read: 0,
                            max: max_body,
                            end: Box::pin(tokio::time::sleep_until(limits.end.into())),
                            between: limits
                                .between_bytes
                                .map(|d| (d, Box::pin(tokio::time::sleep(d)))),
                            done,
                        }
                        .boxed_unsync()
                    });
                    let io: Box<dyn Future<Output = Result<(), Error>> + Send> = Box::new(io);
                    Ok((response, io))
                }
                Err(e) => {
                    done.fail(&e);
                    Err(e)
                }
            }
        })
    }
}

/// When each step of one request must be over.
#[derive(Clone, Copy)]
struct Steps {
    end: Instant,
    connect: Instant,
    first_byte: Instant,
    between_bytes: Option<Duration>,
}

/// Connects (TLS when `tls` is given), sends `request` and waits for the
/// response head, each step by its instant. The returned future drives
/// the connection until the body is read, and ends at `steps.end` too.
async fn send(
    mut request: http::Request<WasiBody>,
    target: &Target,
    tls: Option<Arc<rustls::ClientConfig>>,
    internal_ok: bool,
    steps: Steps,
) -> Result<
    (
        http::Response<hyper::body::Incoming>,
        impl Future<Output = Result<(), Error>> + Send + use<>,
    ),
    Error,
> {
    let host = target
        .host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(&target.host)
        .to_string();
    let connect = async {
        let tcp = connect_to(&host, target.port, internal_ok).await?;
        let _ = tcp.set_nodelay(true);
        let io: Box<dyn Stream> = match tls {
            Some(config) => {
                let name = rustls::pki_types::ServerName::try_from(host.clone())
                    .map_err(|_| Error::HttpRequestUriInvalid)?;
                let stream = tokio_rustls::TlsConnector::from(config)
                    .connect(name, tcp)
                    .await
                    .map_err(|e| {
                        if e.get_ref()
                            .and_then(|i| i.downcast_ref::<rustls::Error>())
                            .is_some_and(|r| matches!(r, rustls::Error::InvalidCertificate(_)))
                        {
                            Error::TlsCertificateError
                        } else {
                            Error::Tls(e)
                        }
                    })?;
                Box::new(stream)
            }
            None => Box::new(tcp),
        };
        hyper::client::conn::http1::handshake(TokioIo::new(io))
            .await
            .map_err(Error::from)
    };
    let (mut sender, conn) = tokio::time::timeout_at(steps.connect.into(), connect)
        .await
        .map_err(|_| Error::ConnectionTimeout)??;

    // Origin form on the wire: the scheme and authority went into the
    // connection and the `Host` header.
    let path = request
        .uri()
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_string();
    *request.uri_mut() = http::Uri::try_from(path).map_err(|_| Error::HttpRequestUriInvalid)?;

    let end = steps.end;
    let mut conn = Some(Box::pin(async move {
        match tokio::time::timeout_at(end.into(), conn).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(Error::from(e)),
            Err(_) => Err(Error::HttpResponseTimeout),
        }
    }));
    let head = tokio::time::timeout_at(steps.first_byte.into(), sender.send_request(request));
    tokio::pin!(head);
    type Head = Result<
        Result<http::Response<hyper::body::Incoming>, hyper::Error>,
        tokio::time::error::Elapsed,
    >;
    let answered = |r: Head| match r {
        Ok(r) => r.map_err(Error::from),
        Err(_) => Err(Error::ConnectionReadTimeout),
    };
    // Drive the connection while waiting for the head. A connection that
    // ends (a server that answers and closes) has handed the head over by
    // then; one that fails fails the request.
    let response = std::future::poll_fn(|cx| {
        if let Poll::Ready(r) = head.as_mut().poll(cx) {
            return Poll::Ready(answered(r));
        }
        if let Some(c) = conn.as_mut()
            && let Poll::Ready(r) = c.as_mut().poll(cx)
        {
            conn = None;
            if let Err(e) = r {
                return Poll::Ready(Err(e));
            }
            return head.as_mut().poll(cx).map(answered);
        }
        Poll::Pending
    })
    .await?;
    let io = async move {
        match conn {
            Some(c) => c.await,
            None => Ok(()),
        }
    };
    Ok((response, io))
}

/// Resolves `host` and connects to the first address that answers; with
/// `internal_ok` false (a wildcard grant) internal addresses are skipped,
/// and a name that resolves only to them is refused.
async fn connect_to(host: &str, port: u16, internal_ok: bool) -> Result<TcpStream, Error> {
    let addrs: Vec<std::net::SocketAddr> = tokio::net::lookup_host((host, port))
        .await
        .map_err(|_| Error::DnsError {
            rcode: Some("no address for the host".into()),
            info_code: None,
        })?
        .collect();
    let mut last = None;
    let mut prohibited = false;
    for addr in addrs {
        if !internal_ok && is_internal(addr.ip()) {
            prohibited = true;
            continue;
        }
        match TcpStream::connect(addr).await {
            Ok(tcp) => return Ok(tcp),
            Err(e) => last = Some(e),
        }
    }
    match last {
        Some(e) => Err(Error::Connect(e)),
        None if prohibited => Err(Error::DestinationIpProhibited),
        None => Err(Error::DestinationNotFound),
    }
}

/// Loopback, private, link-local, shared (CGNAT), unspecified, broadcast
/// and multicast addresses: the host's own network, not the internet.
fn is_internal(ip: std::net::IpAddr) -> bool {
    use std::net::IpAddr;
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || o[0] == 0
                || (o[0] == 100 && (o[1] & 0xc0) == 64)
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_internal(IpAddr::V4(v4));
            }
            let first = v6.segments()[0];
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (first & 0xfe00) == 0xfc00
                || (first & 0xffc0) == 0xfe80
        }
    }
}

trait Stream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static> Stream for T {}

/// A response body as the guest reads it: cut off past `max` bytes, at the
/// request's end, or when it stalls longer than the guest's
/// between-bytes option; the request is counted when it ends.
struct LimitedBody {
    incoming: hyper::body::Incoming,
    read: u64,
    max: u64,
    end: Pin<Box<tokio::time::Sleep>>,
    between: Option<(Duration, Pin<Box<tokio::time::Sleep>>)>,
    done: Done,
}

impl Body for LimitedBody {
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        let this = &mut *self;
        if this.done.finished {
            return Poll::Ready(None);
        }
        match Pin::new(&mut this.incoming).poll_frame(cx) {
            Poll::Ready(None) => {
                this.done.finish(None);
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(e))) => {
                let e = Error::from(e);
                this.done.fail(&e);
                Poll::Ready(Some(Err(e)))
            }
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.read = this.read.saturating_add(data.len() as u64);
                    if this.read > this.max {
                        let e = Error::HttpResponseBodySize(Some(this.max));
                        this.done.fail(&e);
                        return Poll::Ready(Some(Err(e)));
                    }
                }
                if let Some((d, sleep)) = &mut this.between {
                    sleep.as_mut().reset(tokio::time::Instant::now() + *d);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Pending => {
                if this.end.as_mut().poll(cx).is_ready() {
                    let e = Error::HttpResponseTimeout;
                    this.done.fail(&e);
                    return Poll::Ready(Some(Err(e)));
                }
                if let Some((_, sleep)) = &mut this.between
                    && sleep.as_mut().poll(cx).is_ready()
                {
                    let e = Error::ConnectionReadTimeout;
                    this.done.fail(&e);
                    return Poll::Ready(Some(Err(e)));
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done.finished || self.incoming.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.incoming.size_hint()
    }
}

/// Counts and logs one admitted request once, when it ends: its body read
/// to the end, an error, or the guest dropping it.
struct Done {
    metrics: Option<Metrics>,
    labels: HttpLabels,
    handler: Arc<str>,
    message_id: Arc<str>,
    url: String,
    started: Instant,
    status: Option<u16>,
    finished: bool,
}

impl Done {
    fn finish(&mut self, error: Option<&Error>) {
        if std::mem::replace(&mut self.finished, true) {
            return;
        }
        let elapsed = self.started.elapsed();
        if let Some(m) = &self.metrics {
            m.http_duration
                .get_or_create(&self.labels)
                .observe(elapsed.as_secs_f64());
        }
        let ms = elapsed.as_secs_f64() * 1000.0;
        match error {
            None => tracing::debug!(
                handler = &*self.handler,
                message_id = &*self.message_id,
                url = %self.url,
                status = self.status,
                ms,
                "outbound HTTP request done"
            ),
            Some(e) => {
                if let Some(m) = &self.metrics {
                    m.http_errors
                        .get_or_create(&HttpErrorLabels {
                            handler: self.labels.handler.clone(),
                            destination: self.labels.destination.clone(),
                            kind: error_kind(e).into(),
                        })
                        .inc();
                }
                tracing::warn!(
                    handler = &*self.handler,
                    message_id = &*self.message_id,
                    url = %self.url,
                    status = self.status,
                    ms,
                    error = %e,
                    "outbound HTTP request failed"
                );
            }
        }
    }

    fn fail(&mut self, e: &Error) {
        self.finish(Some(e));
    }
}

impl Drop for Done {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        // A body the guest did not read to the end still ends the request;
        // a request dropped before its response head (the message's
        // deadline, or the guest dropping its future) is a failure.
        if self.status.is_some() {
            self.finish(None);
        } else {
            self.finish(Some(&Error::HttpResponseTimeout));
        }
    }
}

/// A short stable name for an error, for the metric label.
fn error_kind(e: &Error) -> &'static str {
    match e {
        Error::ConnectionTimeout | Error::ConnectionReadTimeout | Error::HttpResponseTimeout => {
            "timeout"
        }
        Error::HttpResponseBodySize(_) => "body_too_large",
        Error::Connect(_) | Error::ConnectionRefused | Error::DnsError { .. } => "connect",
        Error::DestinationIpProhibited => "internal_address",
        Error::Tls(_) | Error::TlsCertificateError | Error::TlsProtocolError => "tls",
        _ => "protocol",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idempotency_keys_are_stable_and_differ_by_ordinal_and_message() {
        let a1 = idempotency_key("orders:m-1", 1);
        assert_eq!(a1, idempotency_key("orders:m-1", 1));
        assert_eq!(a1.len(), 32);
        assert_ne!(a1, idempotency_key("orders:m-1", 2));
        assert_ne!(a1, idempotency_key("orders:m-2", 1));
        // The ordinal is not text glued to the seed.
        assert_ne!(idempotency_key("a1", 1), idempotency_key("a", 11));
    }

    #[test]
    fn internal_addresses_are_the_host_network() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "::1",
            "fd00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
        ] {
            assert!(is_internal(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["93.184.216.34", "2606:2800:220:1::1", "100.128.0.1"] {
            assert!(!is_internal(ip.parse().unwrap()), "{ip}");
        }
    }

    #[test]
    fn logs_show_no_query_nor_user() {
        let uri: http::Uri = "https://user:pw@API.example.com/v1/price?token=s3cret"
            .parse()
            .unwrap();
        let t = Target::of(&uri);
        assert_eq!(t.to_string(), "https://api.example.com:443/v1/price");
    }
}
