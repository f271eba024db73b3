//! The HTTP server lines 2eh and 5h call: hyper on 127.0.0.1, a free port,
//! answering every request with a small JSON price, as a pricing API
//! would. It runs in the bench's own process, so its CPU is not counted
//! as the consumer's.

use std::convert::Infallible;

use anyhow::Context as _;
use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

/// What every request gets.
const PRICE: &str = r#"{"sku": "sku-1", "price_cents": 250}"#;

/// Starts the server; returns its base URL, `http://127.0.0.1:PORT`. It
/// serves until the process ends.
pub async fn start() -> anyhow::Result<String> {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .context("cannot listen on 127.0.0.1")?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let _ = tcp.set_nodelay(true);
            tokio::spawn(async move {
                let service = service_fn(|_req: Request<hyper::body::Incoming>| async {
                    Ok::<_, Infallible>(
                        Response::builder()
                            .header("content-type", "application/json")
                            .body(Full::new(Bytes::from_static(PRICE.as_bytes())))
                            .expect("a valid response"),
                    )
                });
                // A client that goes away mid-request is not the bench's
                // failure: the line's own checks see what went missing.
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), service)
                    .await;
            });
        }
    });
    Ok(format!("http://{addr}"))
}
