//! The live dashboard (`GET /` on the admin endpoint) in a real headless
//! browser (Debian's chromium through chromedriver), with an admin token:
//! the page loads, shows the handler, and its numbers change by themselves
//! as messages flow.
//!
//! Set `WARREN_DASHBOARD_SCREENSHOT=docs/dashboard.png` to keep the
//! screenshot the README shows.

use std::time::Duration;

use warren_tests::browser::Browser;
use warren_tests::fixture::Fixture;
use warren_tests::guest;
use warren_tests::process::{admin_cli, http_get, unique};

#[tokio::test(flavor = "multi_thread")]
async fn the_dashboard_shows_a_handler_whose_numbers_move_as_messages_flow() {
    let token = unique("dash-token");
    let f = Fixture::new("dash")
        .guest("sandbox")
        .handler("orders")
        .admin(&format!("token = \"{token}\""))
        .start()
        .await;
    let port = f.port();

    // The page loads without the token; its data does not.
    let (code, page) = http_get(port, "/");
    assert_eq!(code, 200);
    assert!(page.contains("<title>warren</title>"), "{page}");
    assert!(!page.contains("src=\"http") && !page.contains("href=\"http"));
    assert_eq!(http_get(port, "/dashboard.json").0, 401);

    // 20 handled, 3 rejected (dead-lettered at once).
    let mut first: Vec<(Option<String>, Vec<u8>)> = (0..20)
        .map(|i| (Some(format!("ok-{i}")), b"ack".to_vec()))
        .collect();
    first.extend((0..3).map(|i| (Some(format!("bad-{i}")), b"reject".to_vec())));
    f.rabbit.publish_many(&f.queue, first).await;

    let b = tokio::task::block_in_place(|| Browser::start(1280, 860));
    let url = format!("http://127.0.0.1:{port}/#token={token}");
    tokio::task::block_in_place(|| {
        b.open(&url);
        let card = r#"[data-handler="orders"]"#;
        b.wait_text(
            &format!("{card} h2"),
            Duration::from_secs(30),
            "the handler",
            |t| t.starts_with("orders"),
        );
        b.wait_text(
            &format!("{card} [data-field=total-ack]"),
            Duration::from_secs(30),
            "20 handled",
            |t| t == "20",
        );
        b.wait_text(
            &format!("{card} [data-field=dlq-depth]"),
            Duration::from_secs(30),
            "3 in the dead-letter queue",
            |t| t == "3",
        );
        let failures = b
            .text(&format!("{card} [data-field=failures]"))
            .unwrap_or_default();
        assert!(
            failures.contains("bad-") && failures.contains("rejects this on purpose"),
            "{failures}"
        );
        // The token left the address bar, and every request stayed on
        // this endpoint.
        let href = b.eval("return location.href;");
        assert!(!href.as_str().unwrap().contains(&token), "{href}");
        let elsewhere = b.eval(
            "return performance.getEntriesByType('resource').map(e => e.name).filter(n => !n.startsWith(location.origin));",
        );
        assert_eq!(
            elsewhere,
            serde_json::json!([]),
            "requests off the endpoint"
        );
    });

    // A new version, then messages flowing: the same page, not reloaded,
    // follows.
    let deployed = admin_cli(
        port,
        &[
            "deploy",
            "--token",
            &token,
            "--handler",
            "orders",
            guest("echo").to_str().unwrap(),
        ],
    );
    assert!(deployed.status.success(), "{deployed:?}");
    let (queue, rabbit) = (
        f.queue.clone(),
        warren_tests::broker::Rabbit::connect().await,
    );
    let flow = tokio::spawn(async move {
        for round in 0..40 {
            let batch = (0..25).map(|i| (Some(format!("flow-{round}-{i}")), b"hello".to_vec()));
            rabbit.publish_many(&queue, batch).await;
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    });
    tokio::task::block_in_place(|| {
        let card = r#"[data-handler="orders"]"#;
        b.wait_text(
            &format!("{card} [data-field=rate-ack]"),
            Duration::from_secs(30),
            "a rate of handled messages above zero",
            |t| t.parse::<f64>().is_ok_and(|r| r > 0.0),
        );
        b.wait_text(
            &format!("{card} [data-field=total-ack]"),
            Duration::from_secs(60),
            "the handled count to grow",
            |t| t.parse::<u64>().is_ok_and(|n| n > 100),
        );
        let deploys = b
            .text(&format!("{card} [data-field=deploys]"))
            .unwrap_or_default();
        assert!(
            deploys.contains("upload") && deploys.contains("file"),
            "{deploys}"
        );
        let p50 = b.text(&format!("{card} [data-field=p50]")).unwrap();
        assert!(p50.parse::<f64>().is_ok_and(|v| v > 0.0), "p50 {p50}");
        let png = b.screenshot();
        assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
        let path = std::env::var_os("WARREN_DASHBOARD_SCREENSHOT")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|| std::env::temp_dir().join(format!("{}.png", unique("dashboard"))));
        std::fs::write(&path, &png).unwrap();
    });
    flow.await.unwrap();
}
