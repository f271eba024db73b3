//! Outbound HTTP from a handler (`wasi:http/outgoing-handler`), as one
//! blocking call per request.
//!
//! The host sends a request only to a destination its handler's
//! `[handler.http] allow` list names, at most `max_requests` per message,
//! each within `timeout_ms` and the message's deadline; anything else
//! comes back as an [`HttpError`] (a refusal is
//! `ErrorCode::HttpRequestDenied`). Each request carries an
//! `Idempotency-Key` that is the same on every run of the same message.
//!
//! ```ignore
//! let price = warren_guest::http::get("https://prices.example.com/v1/sku/42")?;
//! if price.status != 200 { return Outcome::retry(format!("price service said {}", price.status)); }
//! let created = warren_guest::http::Request::post("https://api.example.com/orders", body)
//!     .header("content-type", "application/json")
//!     .send()?;
//! ```

use std::fmt;

use wasip2::http::outgoing_handler;
use wasip2::http::types::{
    ErrorCode, Fields, IncomingBody, Method, OutgoingBody, OutgoingRequest, Scheme,
};
use wasip2::io::streams::StreamError;

/// A request to send with [`Request::send`].
#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    pub url: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// A response, its body read in full (up to the host's
/// `max_response_bytes`).
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, Vec<u8>)>,
    pub body: Vec<u8>,
}

impl Response {
    /// The first value of header `name` (any letter case) as text.
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
    }

    /// The body as UTF-8 text (lossy).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Why a request failed.
#[derive(Debug, Clone)]
pub enum HttpError {
    /// The URL is not `http://` or `https://` with a host.
    InvalidUrl(String),
    /// A header name or value the host would not take.
    InvalidHeader(String),
    /// The host refused or failed the request (`HttpRequestDenied` for a
    /// destination that is not allowed, `ConnectionLimitReached` past
    /// `max_requests`, `ConnectionReadTimeout` at the request's end, ...).
    Failed(ErrorCode),
    /// The request or response body stream failed, with the host's
    /// description (a response body cut off past `max_response_bytes`
    /// reads `HTTP response body size exceeds limit: <max> bytes`).
    Stream(String),
}

impl fmt::Display for HttpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HttpError::InvalidUrl(u) => write!(f, "invalid URL: {u}"),
            HttpError::InvalidHeader(h) => write!(f, "invalid header: {h}"),
            HttpError::Failed(code) => {
                // wit-bindgen's Debug names the type first.
                let name = format!("{code:?}");
                let name = name.strip_prefix("ErrorCode::").unwrap_or(&name);
                write!(f, "request failed: {name}")
            }
            HttpError::Stream(s) => write!(f, "stream failed: {s}"),
        }
    }
}

impl std::error::Error for HttpError {}

/// `GET url`.
pub fn get(url: &str) -> Result<Response, HttpError> {
    Request::get(url).send()
}

/// `POST url` with `body` of `content_type`.
pub fn post(url: &str, content_type: &str, body: &[u8]) -> Result<Response, HttpError> {
    Request::post(url, body.to_vec())
        .header("content-type", content_type)
        .send()
}

impl Request {
    pub fn new(method: &str, url: &str) -> Self {
        Self {
            method: method.into(),
            url: url.into(),
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    pub fn get(url: &str) -> Self {
        Self::new("GET", url)
    }

    pub fn post(url: &str, body: Vec<u8>) -> Self {
        Self {
            body,
            ..Self::new("POST", url)
        }
    }

    /// Adds a header.
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Sends the request and reads the whole response.
    pub fn send(&self) -> Result<Response, HttpError> {
        let url = Url::parse(&self.url)?;
        let entries: Vec<(String, Vec<u8>)> = self
            .headers
            .iter()
            .map(|(n, v)| (n.clone(), v.as_bytes().to_vec()))
            .collect();
        let headers =
            Fields::from_list(&entries).map_err(|e| HttpError::InvalidHeader(format!("{e:?}")))?;
        let req = OutgoingRequest::new(headers);
        let method = match self.method.to_ascii_uppercase().as_str() {
            "GET" => Method::Get,
            "HEAD" => Method::Head,
            "POST" => Method::Post,
            "PUT" => Method::Put,
            "DELETE" => Method::Delete,
            "PATCH" => Method::Patch,
            "OPTIONS" => Method::Options,
            other => Method::Other(other.into()),
        };
        let bad = |what: &str| HttpError::InvalidUrl(format!("{what} of {:?}", self.url));
        req.set_method(&method).map_err(|()| bad("method"))?;
        req.set_scheme(Some(&url.scheme))
            .map_err(|()| bad("scheme"))?;
        req.set_authority(Some(&url.authority))
            .map_err(|()| bad("authority"))?;
        req.set_path_with_query(Some(&url.path))
            .map_err(|()| bad("path"))?;
        let out = req
            .body()
            .map_err(|()| HttpError::Stream("no request body".into()))?;
        let future = outgoing_handler::handle(req, None).map_err(HttpError::Failed)?;
        write_body(&out, &self.body)?;
        OutgoingBody::finish(out, None).map_err(HttpError::Failed)?;

        future.subscribe().block();
        let response = match future.get() {
            Some(Ok(Ok(r))) => r,
            Some(Ok(Err(code))) => return Err(HttpError::Failed(code)),
            Some(Err(())) | None => return Err(HttpError::Stream("response already taken".into())),
        };
        let status = response.status();
        let headers = response.headers().entries();
        let body = response
            .consume()
            .map_err(|()| HttpError::Stream("response body already taken".into()))?;
        let bytes = read_body(&body)?;
        drop(IncomingBody::finish(body));
        Ok(Response {
            status,
            headers,
            body: bytes,
        })
    }
}

fn write_body(out: &OutgoingBody, body: &[u8]) -> Result<(), HttpError> {
    let stream = out
        .write()
        .map_err(|()| HttpError::Stream("request body already taken".into()))?;
    // A blocking write takes at most 4096 bytes at a time.
    for chunk in body.chunks(4096) {
        stream
            .blocking_write_and_flush(chunk)
            .map_err(stream_error)?;
    }
    Ok(())
}

fn read_body(body: &IncomingBody) -> Result<Vec<u8>, HttpError> {
    let stream = body
        .stream()
        .map_err(|()| HttpError::Stream("response body already taken".into()))?;
    let mut bytes = Vec::new();
    loop {
        match stream.blocking_read(64 << 10) {
            Ok(chunk) => bytes.extend_from_slice(&chunk),
            Err(StreamError::Closed) => return Ok(bytes),
            Err(e) => return Err(stream_error(e)),
        }
    }
}

fn stream_error(e: StreamError) -> HttpError {
    match e {
        StreamError::LastOperationFailed(err) => match wasip2::http::types::http_error_code(&err) {
            Some(code) => HttpError::Failed(code),
            None => HttpError::Stream(err.to_debug_string()),
        },
        StreamError::Closed => HttpError::Stream("closed".into()),
    }
}

/// A URL split as `wasi:http` takes it.
#[derive(Debug)]
struct Url {
    scheme: Scheme,
    authority: String,
    /// Path and query, `/` when empty; the fragment is dropped.
    path: String,
}

impl Url {
    fn parse(url: &str) -> Result<Self, HttpError> {
        let bad = || HttpError::InvalidUrl(url.into());
        let (scheme, rest) = url.split_once("://").ok_or_else(bad)?;
        let scheme = match scheme.to_ascii_lowercase().as_str() {
            "http" => Scheme::Http,
            "https" => Scheme::Https,
            _ => return Err(bad()),
        };
        let rest = rest.split('#').next().unwrap_or("");
        let cut = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, path) = rest.split_at(cut);
        if authority.is_empty() {
            return Err(bad());
        }
        let path = match path {
            "" => "/".to_string(),
            p if p.starts_with('?') => format!("/{p}"),
            p => p.to_string(),
        };
        Ok(Url {
            scheme,
            authority: authority.into(),
            path,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_split_into_scheme_authority_and_path() {
        let u = Url::parse("https://api.example.com:8443/v1/x?q=1#frag").unwrap();
        assert!(matches!(u.scheme, Scheme::Https));
        assert_eq!(u.authority, "api.example.com:8443");
        assert_eq!(u.path, "/v1/x?q=1");
        let u = Url::parse("http://127.0.0.1").unwrap();
        assert_eq!((u.authority.as_str(), u.path.as_str()), ("127.0.0.1", "/"));
        let u = Url::parse("http://h?x=1").unwrap();
        assert_eq!(u.path, "/?x=1");
        for bad in ["ftp://h/", "h/x", "http:///x", "http://"] {
            assert!(Url::parse(bad).is_err(), "{bad}");
        }
    }
}
