//! Answers to a handler's HTTP requests from a list instead of the
//! network: what `warren test` answers a case's expected requests with.
//!
//! A grant given an [`HttpResponder`] ([`super::HttpGrant::answered_by`])
//! checks each request exactly as a real one (the grant, `allow`,
//! `max_requests`, the `Idempotency-Key`), then hands it, body read, to
//! the responder instead of sending it. The answer reaches the guest
//! through the same `wasi:http` types as a server's would, with the same
//! `max_response_bytes` cut-off, so a handler cannot tell the two apart.

use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use wasmtime_wasi_http::{Error, WasiBody};

use super::http::{SendFuture, Sent};

/// The most request body bytes an answered request may carry: a guest
/// that streams without end is stopped here, not by the host's memory.
pub const MAX_ASKED_BODY: usize = 16 << 20;

/// Answers admitted requests; see the module comment.
pub trait HttpResponder: Send + Sync + fmt::Debug {
    fn answer(&self, request: AskedRequest) -> Answer;
}

/// A request as the guest made it, with the headers the host added (the
/// `Idempotency-Key`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AskedRequest {
    /// Upper case, as sent: `GET`, `POST`, ...
    pub method: String,
    /// `scheme://authority/path?query`, as the guest gave it.
    pub url: String,
    /// Names in lower case, values as bytes (a header need not be text).
    pub headers: Vec<(String, Vec<u8>)>,
    pub body: Vec<u8>,
}

/// What a request gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    Response {
        status: u16,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
    },
    /// A server that never answers: the guest's read times out.
    Timeout,
    /// Nothing listens at the address.
    ConnectionRefused,
    /// A request nobody expected: refused like one outside `allow`.
    Denied,
}

/// The future the send hook returns for an answered request: the body is
/// read (until `end`, the request's time-out or the message's deadline),
/// then the responder answers.
pub(super) fn answer(
    responder: Arc<dyn HttpResponder>,
    request: http::Request<WasiBody>,
    end: Instant,
    max_response_bytes: u64,
) -> SendFuture {
    Box::new(async move {
        let (parts, body) = request.into_parts();
        let body = match tokio::time::timeout_at(end.into(), read_body(body)).await {
            Ok(body) => body?,
            Err(_) => return Err(Error::ConnectionWriteTimeout),
        };
        let asked = AskedRequest {
            method: parts.method.as_str().to_owned(),
            url: parts.uri.to_string(),
            headers: parts
                .headers
                .iter()
                .map(|(k, v)| (k.as_str().to_owned(), v.as_bytes().to_vec()))
                .collect(),
            body,
        };
        let (status, headers, body) = match responder.answer(asked) {
            Answer::Response {
                status,
                headers,
                body,
            } => (status, headers, body),
            Answer::Timeout => {
                tokio::time::sleep_until(end.into()).await;
                return Err(Error::ConnectionReadTimeout);
            }
            Answer::ConnectionRefused => return Err(Error::ConnectionRefused),
            Answer::Denied => return Err(Error::HttpRequestDenied),
        };
        let mut response = http::Response::builder().status(status);
        for (name, value) in &headers {
            response = response.header(name, value);
        }
        let body = Answered {
            data: Some(Bytes::from(body)),
            max: max_response_bytes,
            cut: false,
        };
        let response = response
            .body(body.boxed_unsync())
            .map_err(|e| Error::InternalError(Some(format!("cannot build the answer: {e}"))))?;
        let io: Box<dyn Future<Output = Result<(), Error>> + Send> =
            Box::new(std::future::ready(Ok(())));
        let sent: Sent = Ok((response, io));
        sent
    })
}

async fn read_body(mut body: WasiBody) -> Result<Vec<u8>, Error> {
    let mut out = Vec::new();
    while let Some(frame) = body.frame().await {
        if let Some(data) = frame?.data_ref() {
            if out.len() + data.len() > MAX_ASKED_BODY {
                return Err(Error::HttpRequestBodySize(Some(MAX_ASKED_BODY as u64)));
            }
            out.extend_from_slice(data);
        }
    }
    Ok(out)
}

/// An answer's body: all of it in one frame, or as much as
/// `max_response_bytes` allows followed by the error a server's longer
/// body gets.
struct Answered {
    data: Option<Bytes>,
    max: u64,
    /// The allowed part went out: the error is next.
    cut: bool,
}

impl Body for Answered {
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        let this = &mut *self;
        let Some(data) = this.data.take() else {
            return Poll::Ready(None);
        };
        let too_large = Poll::Ready(Some(Err(Error::HttpResponseBodySize(Some(this.max)))));
        if this.cut {
            return too_large;
        }
        if data.len() as u64 > this.max {
            if this.max == 0 {
                return too_large;
            }
            this.cut = true;
            this.data = Some(Bytes::new());
            return Poll::Ready(Some(Ok(Frame::data(data.slice(..this.max as usize)))));
        }
        Poll::Ready(Some(Ok(Frame::data(data))))
    }

    fn is_end_stream(&self) -> bool {
        self.data.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        match &self.data {
            Some(d) if !self.cut && d.len() as u64 <= self.max => {
                SizeHint::with_exact(d.len() as u64)
            }
            Some(_) => SizeHint::default(),
            None => SizeHint::with_exact(0),
        }
    }
}
