//! Outbound HTTP end to end (`wasi:http/outgoing-handler`, `[handler.http]`):
//! the `fetcher` guest (guests/rust/fetcher) runs a script of requests
//! against an HTTP server the test starts on loopback
//! (`tests/src/http_server.rs`), plain or with TLS, and publishes what
//! each request returned.
//!
//! What it shows: an allowed destination works and one not in `allow` is
//! refused before anything is sent, with an error the guest sees, a
//! counted metric and a log line without the query; a handler without
//! `[handler.http]` cannot send at all; a server that never answers ends at
//! `timeout_ms` and the message retries; a body over `max_response_bytes`
//! is cut off with an error, and so is a response head too large to
//! parse; `max_requests` holds; a rerun of a message
//! sends the same `Idempotency-Key`s; HTTPS trusts the configured CA and
//! refuses a server another CA signed; a batch of a module that sends
//! requests runs several messages at once.

use std::time::Duration;

use warren_tests::fixture::{Fixture, Running};
use warren_tests::http_server::HttpServer;
use warren_tests::process::eventually;
use warren_tests::tls_certs::Certs;

/// Runs `script` as message `id` and returns the guest's transcript.
async fn run(f: &Running, id: &str, script: &str) -> String {
    f.rabbit.publish(&f.queue, id, script.as_bytes()).await;
    let got = f.rabbit.collect(&f.out, 1, Duration::from_secs(20)).await;
    got[0].body_str()
}

/// The `allow` key that lets a handler reach `server`, and nothing else.
fn allow_only(server: &HttpServer) -> String {
    format!("allow = [\"http://127.0.0.1:{}\"]", server.addr.port())
}

/// A fetcher handler with `[handler.http]` keys `http` (none: no table).
async fn fetcher(name: &str, http: Option<&str>, extra: &str) -> Running {
    let mut toml = extra.to_string();
    if let Some(keys) = http {
        toml.push_str(&format!("[handler.http]\n{keys}\n"));
    }
    Fixture::new(name)
        .guest("fetcher")
        .handler("fetcher")
        .extra(&toml)
        .start()
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_allowed_host_is_reached_and_any_other_is_refused_before_sending() {
    let server = HttpServer::start().await;
    let port = server.addr.port();
    let f = fetcher("http-allow", Some(&allow_only(&server)), "").await;
    let out = run(
        &f,
        "m1",
        &format!(
            "get {}\npost {} hello there\nget http://localhost:{port}/echo?token=s3cret\nget http://127.0.0.1:{}/echo\nget https://127.0.0.1:{port}/echo",
            server.url("http", "/echo/a?x=1"),
            server.url("http", "/echo/b"),
            port.wrapping_add(1).max(1),
        ),
    )
    .await;
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 5, "{out}");
    assert!(
        lines[0].starts_with("status=200 key=") && lines[0].ends_with(" body=echo GET /echo/a?x=1"),
        "{out}"
    );
    assert!(lines[1].ends_with(" body=echo POST /echo/b"), "{out}");
    // Another host name (even one that resolves to the same address),
    // another port, another scheme: refused, and the guest says why.
    for refused in &lines[2..] {
        assert_eq!(*refused, "err=request failed: HttpRequestDenied", "{out}");
    }
    let seen = server.seen();
    assert_eq!(seen.len(), 2, "refused requests never leave: {seen:?}");
    assert_eq!(seen[1].body, b"hello there");
    let w = f.w();
    assert_eq!(
        w.metric(
            "warren_http_errors_total",
            &[("handler", "fetcher"), ("kind", "not_allowed")]
        ),
        3.0
    );
    let dest = format!("http://127.0.0.1:{port}");
    assert_eq!(
        w.metric(
            "warren_http_requests_total",
            &[("handler", "fetcher"), ("destination", &dest)]
        ),
        2.0
    );
    assert_eq!(
        w.metric(
            "warren_http_request_duration_seconds_count",
            &[("destination", &dest)]
        ),
        2.0
    );
    // One line per refusal, with the destination but never the query.
    let logs = w.logs();
    assert!(
        logs.contains(&format!("http://localhost:{port}/echo")),
        "{logs}"
    );
    assert!(logs.contains("outbound HTTP request refused"), "{logs}");
    assert!(!logs.contains("s3cret"), "the query reached the log");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wildcard_grant_does_not_reach_internal_addresses() {
    let server = HttpServer::start().await;
    let port = server.addr.port();
    // `*` names no one machine: it may not be turned on the host's own
    // network, whether the URL says so or a name resolves there.
    let f = fetcher(
        "http-wild",
        Some(&format!("allow = [\"http://*:{port}\"]")),
        "",
    )
    .await;
    let out = run(
        &f,
        "m1",
        &format!(
            "get {}\nget http://localhost:{port}/echo",
            server.url("http", "/echo")
        ),
    )
    .await;
    assert_eq!(
        out,
        "err=request failed: DestinationIpProhibited\nerr=request failed: DestinationIpProhibited"
    );
    assert!(server.seen().is_empty());
    assert_eq!(
        f.w()
            .metric("warren_http_errors_total", &[("kind", "internal_address")]),
        2.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_without_an_http_table_cannot_send() {
    let server = HttpServer::start().await;
    let f = fetcher("http-none", None, "").await;
    let out = run(&f, "m1", &format!("get {}", server.url("http", "/echo"))).await;
    assert_eq!(out, "err=request failed: HttpRequestDenied");
    assert!(server.seen().is_empty());
    assert_eq!(
        f.w()
            .metric("warren_http_errors_total", &[("kind", "no_grant")]),
        1.0
    );
    assert!(
        f.w()
            .logs()
            .contains("the handler has no [handler.http] table")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_never_answers_ends_at_timeout_ms_and_the_message_retries() {
    let server = HttpServer::start().await;
    let f = fetcher(
        "http-timeout",
        Some(&format!("{}\ntimeout_ms = 300", allow_only(&server))),
        "[handler.retry]\nmax_attempts = 2\nbackoff_ms = 50\nmax_backoff_ms = 100\n",
    )
    .await;
    let script = format!("retry-on-error\nget {}", server.url("http", "/hang"));
    f.rabbit.publish(&f.queue, "m1", script.as_bytes()).await;
    // Two attempts, each ended by the request's timeout (the handler's own
    // 5 s deadline is far off), then the dead-letter queue.
    let dead = f.rabbit.collect(&f.dead, 1, Duration::from_secs(30)).await;
    assert_eq!(dead[0].body_str(), script);
    let w = f.w();
    assert_eq!(w.outcome("retry"), 1);
    assert_eq!(
        w.metric("warren_http_errors_total", &[("kind", "timeout")]),
        2.0
    );
    assert_eq!(
        w.metric("warren_handler_failures_total", &[("kind", "timeout")]),
        0.0,
        "the request timed out, not the handler"
    );
    assert_eq!(server.seen().len(), 2);
    let reason = dead[0].header("x-warren-reason").unwrap_or_default();
    assert!(reason.contains("ConnectionReadTimeout"), "{reason}");
    assert!(
        w.logs().contains("outbound HTTP request failed"),
        "{}",
        w.logs()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_never_outlives_the_message_deadline() {
    let server = HttpServer::start().await;
    // The request may take 20 s, the message only 800 ms: the request ends
    // at the message's deadline (the guest sees a timeout there, or is
    // stopped as a handler timeout if it is still running), and the
    // message retries.
    let f = fetcher(
        "http-deadline",
        Some(&format!("{}\ntimeout_ms = 20000", allow_only(&server))),
        "timeout_ms = 800\n[handler.retry]\nmax_attempts = 2\nbackoff_ms = 50\nmax_backoff_ms = 100\n",
    )
    .await;
    let script = format!("retry-on-error\nget {}", server.url("http", "/hang"));
    f.rabbit.publish(&f.queue, "m1", script.as_bytes()).await;
    let dead = f.rabbit.collect(&f.dead, 1, Duration::from_secs(30)).await;
    assert_eq!(dead[0].body_str(), script);
    let w = f.w();
    assert_eq!(w.outcome("retry"), 1);
    assert_eq!(server.seen().len(), 2);
    eventually(Duration::from_secs(5), "both requests counted", || async {
        w.metric("warren_http_errors_total", &[("kind", "timeout")]) == 2.0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_over_max_response_bytes_is_cut_off_with_an_error() {
    let server = HttpServer::start().await;
    let f = fetcher(
        "http-body",
        Some(&format!(
            "{}\nmax_response_bytes = 100000",
            allow_only(&server)
        )),
        "",
    )
    .await;
    let out = run(
        &f,
        "m1",
        &format!(
            "get {}\nget {}\nget {}",
            server.url("http", "/bytes/100000"),
            server.url("http", "/bytes/100001"),
            server.url("http", "/bytes/5000000"),
        ),
    )
    .await;
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3, "{out}");
    assert_eq!(lines[0], "status=200 len=100000");
    for cut in &lines[1..] {
        assert!(
            *cut == "err=stream failed: HTTP response body size exceeds limit: 100000 bytes",
            "{out}"
        );
    }
    assert_eq!(
        f.w()
            .metric("warren_http_errors_total", &[("kind", "body_too_large")]),
        2.0
    );
}

/// A hostile server answers with megabytes of headers: the request fails
/// with an error the guest sees (the client stops reading the head at its
/// limit), the next request of the same message works, and the host goes
/// on with the next message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_head_too_large_fails_that_request_only() {
    let server = HttpServer::start().await;
    let f = fetcher("http-head", Some(&allow_only(&server)), "").await;
    let out = run(
        &f,
        "m1",
        &format!(
            "get {}\nget {}\nget {}",
            server.url("http", "/big-head/2000"),
            server.url("http", "/big-head/150"),
            server.url("http", "/echo/after"),
        ),
    )
    .await;
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3, "{out}");
    assert!(lines[0].starts_with("err="), "{out}");
    assert!(lines[1].starts_with("err="), "{out}");
    assert!(
        lines[2].starts_with("status=200 ") && lines[2].ends_with(" body=echo GET /echo/after"),
        "{out}"
    );
    let next = run(&f, "m2", &format!("get {}", server.url("http", "/echo/m2"))).await;
    assert!(
        next.starts_with("status=200 ") && next.ends_with(" body=echo GET /echo/m2"),
        "{next}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_requests_holds_per_message_and_the_header_can_be_turned_off() {
    let server = HttpServer::start().await;
    let f = fetcher(
        "http-max",
        Some("allow = [\"http://127.0.0.1:*\"]\nmax_requests = 2\nidempotency_header = false"),
        "",
    )
    .await;
    let three = format!("get {0}\nget {0}\nget {0}", server.url("http", "/echo"));
    let out = run(&f, "m1", &three).await;
    assert_eq!(
        out,
        "status=200 body=echo GET /echo\nstatus=200 body=echo GET /echo\nerr=request failed: ConnectionLimitReached"
    );
    // The count is per message: the next one may send two again.
    let out = run(&f, "m2", &three).await;
    assert!(
        out.ends_with("err=request failed: ConnectionLimitReached"),
        "{out}"
    );
    let seen = server.seen();
    assert_eq!(seen.len(), 4);
    assert!(seen.iter().all(|s| s.idempotency_key.is_none()), "{seen:?}");
    assert_eq!(
        f.w()
            .metric("warren_http_errors_total", &[("kind", "max_requests")]),
        2.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rerun_of_a_message_sends_the_same_idempotency_keys() {
    let server = HttpServer::start().await;
    let f = fetcher(
        "http-idem",
        Some(&allow_only(&server)),
        "[handler.retry]\nmax_attempts = 3\nbackoff_ms = 50\nmax_backoff_ms = 100\n",
    )
    .await;
    // The first run gets a 503 on its second request and retries; the
    // rerun sends both requests again.
    let script = |id: &str| {
        format!(
            "retry-on-error\nget {}\nget {}",
            server.url("http", "/echo/first"),
            server.url("http", &format!("/fail-once/{id}"))
        )
    };
    let out = run(&f, "m1", &script("m1")).await;
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out}");
    assert_eq!(f.w().outcome("retry"), 1);
    let seen = server.seen();
    assert_eq!(seen.len(), 4, "{seen:?}");
    let key = |i: usize| seen[i].idempotency_key.clone().expect("a key is sent");
    assert_eq!(key(0), key(2), "the first request of both runs");
    assert_eq!(key(1), key(3), "the second request of both runs");
    assert_ne!(key(0), key(1), "each request of a message has its own");
    // What the guest saw is the key the server got.
    assert!(lines[0].contains(&format!("key={}", key(2))), "{out}");
    // Another message: other keys.
    run(&f, "m2", &script("m2")).await;
    let seen = server.seen();
    assert_eq!(seen.len(), 8);
    assert_ne!(seen[4].idempotency_key.as_deref(), Some(key(0).as_str()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_trusts_the_configured_ca_and_no_other() {
    let certs = Certs::generate();
    let server = HttpServer::start_tls(&certs.server_cert, &certs.server_key).await;
    let port = server.addr.port();
    let allow = format!("allow = [\"https://127.0.0.1:{port}\", \"https://localhost:{port}\"]");
    let f = fetcher(
        "http-tls",
        Some(&format!("{allow}\nca_file = \"{}\"", certs.ca.display())),
        "",
    )
    .await;
    let out = run(
        &f,
        "m1",
        &format!(
            "get {}\nget https://localhost:{port}/echo/name",
            server.url("https", "/echo/ip")
        ),
    )
    .await;
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].ends_with("body=echo GET /echo/ip"), "{out}");
    assert!(lines[1].ends_with("body=echo GET /echo/name"), "{out}");
    drop(f);

    // A CA that signed nothing here: the server's certificate is refused
    // and nothing reaches the server's handler.
    let other = fetcher(
        "http-tls-other",
        Some(&format!(
            "{allow}\nca_file = \"{}\"",
            certs.other_ca.display()
        )),
        "",
    )
    .await;
    let out = run(
        &other,
        "m1",
        &format!("get {}", server.url("https", "/echo/x")),
    )
    .await;
    assert_eq!(out, "err=request failed: TlsCertificateError");
    assert_eq!(server.seen().len(), 2);
    eventually(
        Duration::from_secs(5),
        "the TLS failure counted",
        || async {
            other
                .w()
                .metric("warren_http_errors_total", &[("kind", "tls")])
                == 1.0
        },
    )
    .await;
}

/// A module that sends HTTP requests runs several messages of a batch at
/// once (`RUNS_AT_ONCE`), so a batch calling a slow API is not one request
/// after another: with 2 batches in flight (8 consumers in batches of 8 on
/// a 2-core machine), a batch running its messages in turn would hold at
/// most 2 requests at once. Every message still comes out once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_waiting_on_http_runs_its_messages_at_once() {
    let server = HttpServer::start().await;
    let f = fetcher(
        "http-at-once",
        Some(&allow_only(&server)),
        "consumers = 8\nmax_batch = 8\n",
    )
    .await;
    let script = format!("get {}", server.url("http", "/slow/400"));
    let ids: Vec<String> = (0..8).map(|i| format!("slow-{i}")).collect();
    for id in &ids {
        f.rabbit.publish(&f.queue, id, script.as_bytes()).await;
    }
    let got = f.rabbit.collect(&f.out, 8, Duration::from_secs(30)).await;
    assert_eq!(got.len(), 8);
    for g in &got {
        assert!(g.body_str().contains("slow 400"), "{}", g.body_str());
    }
    let most = server.most_at_once();
    assert!(
        most >= 3,
        "at most {most} requests at once: the batch ran its messages one after another"
    );
    assert_eq!(server.seen().len(), 8, "one request per message");
}
