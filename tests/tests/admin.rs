//! The admin endpoint as a caller sees it: the token, the checks that keep
//! web pages out (cross-site requests, DNS rebinding), the upload bounds,
//! the bounded set of known versions, and URLs' passwords kept out of the
//! log and out of what the endpoint and `warren status` show.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use warren_tests::broker::rabbitmqctl;
use warren_tests::fixture::Fixture;
use warren_tests::guest;
use warren_tests::process::{Warren, admin_cli, config, eventually, free_port, unique};

/// One HTTP/1.1 request; the status and the body. A `Host` in `headers`
/// replaces the default `127.0.0.1:PORT`.
fn request(port: u16, head: &str, headers: &[(&str, &str)], body: &[u8]) -> (u16, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut text = format!("{head} HTTP/1.1\r\nConnection: close\r\n");
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        text += &format!("Host: 127.0.0.1:{port}\r\n");
    }
    if !headers
        .iter()
        .any(|(k, _)| k.eq_ignore_ascii_case("content-length"))
    {
        text += &format!("Content-Length: {}\r\n", body.len());
    }
    for (k, v) in headers {
        text += &format!("{k}: {v}\r\n");
    }
    text += "\r\n";
    s.write_all(text.as_bytes()).unwrap();
    let _ = s.write_all(body);
    response(&mut s)
}

fn response(s: &mut TcpStream) -> (u16, String) {
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    let raw = String::from_utf8_lossy(&raw).into_owned();
    let code = raw
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = raw.split_once("\r\n\r\n").map(|(_, b)| b.to_string());
    (code, body.unwrap_or_default())
}

const ADMIN: (&str, &str) = ("X-Warren-Admin", "1");

fn text(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr)
}

fn handlers(port: u16) -> serde_json::Value {
    let (code, body) = request(port, "GET /handlers", &[], b"");
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wrong_or_empty_token_gets_401_and_the_right_one_passes() {
    let token = unique("token");
    let f = Fixture::new("admin-token")
        .admin(&format!("token = \"{token}\""))
        .start()
        .await;
    let port = f.port();
    let wrong = [
        String::new(),
        "Bearer ".into(),
        "Bearer wrong".into(),
        format!("Bearer {}", &token[..token.len() - 1]),
        format!("Bearer {token}x"),
        format!("bearer {token}"),
    ];
    for auth in &wrong {
        let headers: &[(&str, &str)] = if auth.is_empty() {
            &[]
        } else {
            &[("Authorization", auth)]
        };
        let (code, body) = request(port, "GET /handlers", headers, b"");
        assert_eq!(code, 401, "{auth:?}: {body}");
        let (code, _) = request(port, "POST /handlers/echo/rollback", headers, b"");
        assert_eq!(code, 401, "{auth:?}");
    }
    let right = format!("Bearer {token}");
    let (code, body) = request(port, "GET /handlers", &[("Authorization", &right)], b"");
    assert_eq!(code, 200, "{body}");
    // With the token, no other header is needed: a page cannot send it.
    let (code, body) = request(
        port,
        "POST /handlers/echo/rollback",
        &[("Authorization", &right)],
        b"",
    );
    assert_eq!(code, 409, "{body}");

    let o = admin_cli(port, &["status"]);
    assert!(
        !o.status.success() && text(&o).contains("401"),
        "{}",
        text(&o)
    );
    let o = admin_cli(port, &["status", "--token", &token]);
    assert!(o.status.success(), "{}", text(&o));
}

#[tokio::test(flavor = "multi_thread")]
async fn cross_site_requests_and_foreign_host_names_are_refused() {
    let f = Fixture::new("admin-csrf")
        .admin("allowed_hosts = [\"warren.test\"]")
        .start()
        .await;
    let port = f.port();
    let live = handlers(port)[0]["live"]["digest"].clone();
    let module = std::fs::read(guest("stamp_b")).unwrap();
    let rollback = "POST /handlers/echo/rollback";
    let deploy = "PUT /handlers/echo/module";

    // A form post or a simple fetch from any page: no admin header.
    let (code, body) = request(port, rollback, &[], b"");
    assert_eq!(code, 403, "{body}");
    assert!(
        body.contains("X-Warren-Admin") || body.contains("x-warren-admin"),
        "{body}"
    );
    let (code, _) = request(port, deploy, &[], &module);
    assert_eq!(code, 403);
    // A cross-site origin, even with the header.
    let evil = ("Origin", "http://evil.example");
    let (code, body) = request(port, rollback, &[ADMIN, evil], b"");
    assert_eq!(code, 403, "{body}");
    let (code, _) = request(port, deploy, &[ADMIN, evil], &module);
    assert_eq!(code, 403);
    let (code, _) = request(port, rollback, &[ADMIN, ("Origin", "null")], b"");
    assert_eq!(code, 403);
    // DNS rebinding: the page's own name in Host, reads and writes alike.
    let rebound = ("Host", "evil.example:80");
    for (head, body) in [
        ("GET /handlers", &b""[..]),
        ("GET /metrics", b""),
        (deploy, &module),
    ] {
        let (code, text) = request(port, head, &[ADMIN, rebound], body);
        assert_eq!(code, 403, "{head}: {text}");
    }
    assert_eq!(
        handlers(port)[0]["live"]["digest"],
        live,
        "nothing deployed"
    );

    // What passes: a configured name, the same origin, localhost.
    let (code, _) = request(port, "GET /handlers", &[("Host", "warren.test")], b"");
    assert_eq!(code, 200);
    let (code, _) = request(
        port,
        "GET /healthz",
        &[("Host", &format!("localhost:{port}"))],
        b"",
    );
    assert_eq!(code, 200);
    let same = format!("http://127.0.0.1:{port}");
    let (code, body) = request(port, rollback, &[ADMIN, ("Origin", &same)], b"");
    assert_eq!(code, 409, "past the guard, nothing to roll back: {body}");
    let o = admin_cli(
        port,
        &[
            "deploy",
            "--handler",
            "echo",
            guest("stamp_b").to_str().unwrap(),
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
    let o = admin_cli(port, &["rollback", "--handler", "echo"]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(handlers(port)[0]["live"]["digest"], live);
}

#[tokio::test(flavor = "multi_thread")]
async fn uploads_over_the_cap_get_413_and_one_is_received_at_a_time() {
    let f = Fixture::new("admin-upload")
        .admin("max_upload_mb = 1")
        .start()
        .await;
    let port = f.port();
    let deploy = "PUT /handlers/echo/module";

    // Declared too large: refused before a byte of the body is read.
    let (code, body) = request(
        port,
        deploy,
        &[
            ADMIN,
            ("Content-Length", "2097152"),
            ("Expect", "100-continue"),
        ],
        b"",
    );
    assert_eq!(code, 413, "{body}");
    assert!(
        body.contains("1 MiB") && body.contains("admin.max_upload_mb"),
        "{body}"
    );
    // Not declared (chunked): refused once the cap is passed.
    let mut chunked = Vec::new();
    for _ in 0..3 {
        chunked.extend(format!("{:x}\r\n", 512 << 10).as_bytes());
        chunked.extend(vec![0u8; 512 << 10]);
        chunked.extend(b"\r\n");
    }
    chunked.extend(b"0\r\n\r\n");
    let (code, body) = request(
        port,
        deploy,
        &[
            ADMIN,
            ("Transfer-Encoding", "chunked"),
            ("Content-Length", ""),
        ],
        &chunked,
    );
    assert_eq!(code, 413, "{body}");

    // An upload under way holds the one slot: once the endpoint asks for
    // its body (100 Continue), a second upload is turned away.
    let mut first = TcpStream::connect(("127.0.0.1", port)).unwrap();
    first
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    write!(
        first,
        "{deploy} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nX-Warren-Admin: 1\r\nConnection: close\r\nContent-Length: 1000\r\nExpect: 100-continue\r\n\r\n"
    )
    .unwrap();
    let mut buf = [0u8; 64];
    let n = first.read(&mut buf).unwrap();
    assert!(
        String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 100"),
        "{:?}",
        String::from_utf8_lossy(&buf[..n])
    );
    let module = std::fs::read(guest("stamp_b")).unwrap();
    let (code, body) = request(port, deploy, &[ADMIN], &module);
    assert_eq!(code, 429, "{body}");
    // The first one finishes (a body that is no module): refused, and the
    // slot is free again.
    first.write_all(&[0u8; 1000]).unwrap();
    let (code, body) = response(&mut first);
    assert_eq!(code, 422, "{body}");
    let (code, body) = request(port, deploy, &[ADMIN], &module);
    assert_eq!(code, 200, "{body}");

    // A client that goes away mid-upload frees the slot too.
    let mut gone = TcpStream::connect(("127.0.0.1", port)).unwrap();
    gone.set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    write!(
        gone,
        "{deploy} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nX-Warren-Admin: 1\r\nConnection: close\r\nContent-Length: 1000\r\nExpect: 100-continue\r\n\r\n"
    )
    .unwrap();
    let _ = gone.read(&mut buf).unwrap();
    drop(gone);
    let echo = std::fs::read(guest("echo")).unwrap();
    eventually(Duration::from_secs(10), "the upload slot freed", || {
        let code = request(port, deploy, &[ADMIN], &echo).0;
        async move { code == 200 }
    })
    .await;
}

/// The echo guest with a custom section appended: the same code under
/// another digest.
fn variant(dir: &Path, i: u8) -> PathBuf {
    let mut bytes = std::fs::read(guest("echo")).unwrap();
    bytes.extend([0x00, 4, 2, b'v', b'n', i]);
    let path = dir.join(format!("echo-{i}.wasm"));
    std::fs::write(&path, bytes).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread")]
async fn known_versions_and_their_metric_series_stay_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let f = Fixture::new("admin-known")
        .section("[runtime]\nkeep_versions = 3\ncache_dir = \"\"")
        .start()
        .await;
    let port = f.port();
    for i in 0..7 {
        let o = admin_cli(
            port,
            &[
                "deploy",
                "--handler",
                "echo",
                variant(dir.path(), i).to_str().unwrap(),
            ],
        );
        assert!(o.status.success(), "{}", text(&o));
    }
    let h = handlers(port);
    let known: Vec<&str> = h[0]["known"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d.as_str().unwrap())
        .collect();
    assert_eq!(known.len(), 3, "{known:?}");
    let hex = |k: &str| {
        h[0][k]["digest"]
            .as_str()
            .unwrap()
            .trim_start_matches("sha256:")
            .to_string()
    };
    let (live, previous) = (hex("live"), hex("previous"));
    assert!(
        known.contains(&live.as_str()) && known.contains(&previous.as_str()),
        "{known:?}"
    );
    let (_, metrics) = request(port, "GET /metrics", &[], b"");
    let series: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("warren_module_info"))
        .collect();
    assert_eq!(series.len(), 3, "{series:?}");
    assert!(
        series
            .iter()
            .any(|l| l.contains(&live) && l.ends_with(" 1")),
        "{series:?}"
    );

    // The previous version is kept, so a rollback needs no compile.
    let o = admin_cli(port, &["rollback", "--handler", "echo"]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(hex_of(&handlers(port), "live"), previous);
}

fn hex_of(h: &serde_json::Value, k: &str) -> String {
    h[0][k]["digest"]
        .as_str()
        .unwrap()
        .trim_start_matches("sha256:")
        .to_string()
}

/// A RabbitMQ user of the test's own, deleted on drop.
struct User(String);

impl Drop for User {
    fn drop(&mut self) {
        let _ = Command::new("rabbitmqctl")
            .args(["delete_user", &self.0])
            .output();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn passwords_stay_out_of_logs_errors_and_the_admin_api() {
    let (name, password) = (unique("user"), unique("pw"));
    rabbitmqctl(&["add_user", &name, &password]);
    let _user = User(name.clone());
    rabbitmqctl(&["set_permissions", "-p", "/", &name, ".*", ".*", ".*"]);
    let url = format!("amqp://{name}:{password}@127.0.0.1:5672/%2f");

    // A host at trace level, client libraries' own lines included.
    let mut f = Fixture::new("admin-secret")
        .warren_amqp(&url)
        .prepare()
        .await;
    let port = free_port();
    f.warrens.push(Warren::start_with_env(
        &f.config(port),
        Some(port),
        &[("RUST_LOG", "trace")],
    ));
    f.w_mut().wait_log("consuming", Duration::from_secs(30));
    f.rabbit.publish(&f.queue, "1", b"one").await;
    f.rabbit.collect(&f.out, 1, Duration::from_secs(20)).await;
    let o = admin_cli(port, &["status"]);
    let (_, metrics) = request(port, "GET /metrics", &[], b"");
    for (what, shown) in [
        ("log", f.w().logs()),
        ("status", text(&o)),
        ("metrics", metrics),
    ] {
        assert!(
            !shown.contains(&password),
            "the password is in the {what}:\n{shown}"
        );
    }

    // A wrong password: the broker's refusal is logged, not the password.
    let wrong = unique("wrongpw");
    let bad = f.config(free_port()).replace(&password, &wrong);
    let mut w = Warren::start_with_env(&bad, None, &[("RUST_LOG", "trace")]);
    w.wait_log("cannot connect to RabbitMQ", Duration::from_secs(30));
    assert!(!w.logs().contains(&wrong), "{}", w.logs());

    // A Redis that does not answer: the start-up error shows the URL
    // redacted; so do a URL the client refuses and a TOML syntax error.
    let module = guest("echo");
    let base = config(&module, "echo", &unique("admin-cfg"), None, "");
    let closed = free_port();
    let cases = [
        base.replacen(
            "[[handler]]",
            &format!("[redis]\nurl = \"redis://:{password}@127.0.0.1:{closed}/0\"\n\n[[handler]]"),
            1,
        ),
        base.replacen(
            "[[handler]]",
            &format!(
                "[redis]\nurl = \"redis+unix:///nonexistent.sock?pass={password}\"\n\n[[handler]]"
            ),
            1,
        ),
        base.replace(
            "url = \"amqp://guest:guest@127.0.0.1:5672/%2f\"",
            &format!("url = \"amqp://u:{password}@127.0.0.1:notaport/%2f\""),
        ),
        base.replace(
            "url = \"amqp://guest:guest@127.0.0.1:5672/%2f\"",
            &format!("url = \"amqp://u:{password}@127.0.0.1/%2f\" junk"),
        ),
    ];
    for case in cases {
        assert!(case.contains(&password), "{case}");
        let mut w = Warren::start_with_env(&case, None, &[("RUST_LOG", "trace")]);
        assert!(!w.wait(Duration::from_secs(60)).success());
        let log = w.logs();
        assert!(log.contains("error:") && log.contains("***"), "{log}");
        assert!(!log.contains(&password), "{log}");
    }
}
