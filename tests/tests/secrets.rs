//! `[handler.config]` values from the environment and from files, and
//! secrets: the guest gets them, no log line, `/handlers` or `warren
//! status` shows them, and a missing one stops start-up naming the key.
//!
//! The guest is `counter`, whose `config KEY` line returns the value in its
//! output and writes it to the host's log.

use std::time::Duration;

use warren_tests::fixture::Fixture;
use warren_tests::process::{Warren, admin_cli, free_port};

const API_KEY: &str = "sk-live-5f1e2d3c4b";
const DB_PASSWORD: &str = "correct horse battery";

#[tokio::test(flavor = "multi_thread")]
async fn secrets_reach_the_guest_and_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("db-pass"), format!("{DB_PASSWORD}\n")).unwrap();
    let f = Fixture::new("secrets")
        .guest("counter")
        .handler("counter")
        .prepare()
        .await;
    let admin = free_port();
    let config = f.config(admin).replace(
        "[handler.config]\n",
        &format!(
            "[handler.config]\nregion = \"eu-west\"\napi_key = {{ env = \"WARREN_TEST_API_KEY\", secret = true }}\ndb = {{ file = \"{}\", secret = true }}\n",
            dir.path().join("db-pass").display()
        ),
    );
    let mut w = Warren::start_with_env(&config, Some(admin), &[("WARREN_TEST_API_KEY", API_KEY)]);
    w.wait_log("consuming", Duration::from_secs(30));

    f.rabbit
        .publish(&f.queue, "s1", b"config api_key\nconfig db\nconfig region")
        .await;
    let got = f.rabbit.collect(&f.out, 1, Duration::from_secs(20)).await;
    assert_eq!(
        got[0].body_str(),
        format!("api_key={API_KEY}\ndb={DB_PASSWORD}\nregion=eu-west"),
        "the guest gets the values (the file's trailing newline dropped)"
    );

    // The guest logged all three: the secrets show as ***.
    w.wait_log("config region=eu-west", Duration::from_secs(10));
    let logs = w.logs();
    assert!(logs.contains("config api_key=***"), "{logs}");
    assert!(logs.contains("config db=***"), "{logs}");
    for secret in [API_KEY, DB_PASSWORD] {
        assert!(!logs.contains(secret), "{secret} in the log:\n{logs}");
        let (status, handlers) = w.admin_get("/handlers");
        assert_eq!(status, 200);
        assert!(!handlers.contains(secret), "{handlers}");
        let out = admin_cli(admin, &["status"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let shown = String::from_utf8_lossy(&out.stdout);
        assert!(shown.contains("counter"), "{shown}");
        assert!(!shown.contains(secret), "{shown}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_missing_secret_stops_start_up_naming_the_key() {
    let f = Fixture::new("secrets-missing")
        .guest("counter")
        .handler("counter")
        .prepare()
        .await;
    let config = f.config(free_port()).replace(
        "[handler.config]\n",
        "[handler.config]\napi_key = { env = \"WARREN_TEST_NOT_SET\", secret = true }\n",
    );
    let mut w = Warren::start(&config, None);
    let status = w.wait(Duration::from_secs(20));
    assert!(!status.success());
    let logs = w.logs();
    assert!(
        logs.contains(
            "handler \"counter\": key config.api_key: environment variable WARREN_TEST_NOT_SET is not set (or is empty)"
        ),
        "{logs}"
    );
}
