//! Unit tests of parsing, defaults and validation.

use std::path::Path;

use super::*;

fn parse(text: &str) -> anyhow::Result<Config> {
    let dir = std::env::temp_dir();
    let module = dir.join("warren-config-test-module.wasm");
    std::fs::write(&module, b"\0asm").unwrap();
    let text = text.replace("MODULE", &module.display().to_string());
    Config::parse(&text, Path::new("/etc/warren/warren.toml"), |_| None)
}

const MINIMAL: &str = r#"
[amqp]
url = "amqp://guest:guest@127.0.0.1:5672/%2f"

[[handler]]
name = "echo"
module = "MODULE"
queue = "orders"
"#;

#[test]
fn minimal_config_gets_the_documented_defaults() {
    let c = parse(MINIMAL).unwrap();
    let h = &c.handlers[0];
    assert_eq!(
        (h.consumers, h.prefetch, h.timeout_ms, h.memory_mb),
        (8, 32, 5000, 64)
    );
    assert_eq!(h.dead_letter_queue(), "orders.dead");
    assert_eq!(h.dedup.key, DedupKey::MessageId);
    assert_eq!(h.publish.allow, [""]);
    assert!(c.redis.is_none());
}

#[test]
fn relative_module_paths_are_relative_to_the_config_file() {
    let text = MINIMAL.replace("MODULE", "guests/echo.wasm");
    let err = Config::parse(&text, Path::new("/srv/app/warren.toml"), |_| None).unwrap_err();
    assert_eq!(
        err.to_string(),
        "/srv/app/warren.toml: handler \"echo\": key module: module file /srv/app/guests/echo.wasm does not exist"
    );
}

#[test]
fn environment_overrides_the_urls() {
    let text = format!("{MINIMAL}\n[redis]\nurl = \"redis://127.0.0.1:6379/0\"\n");
    let dir = std::env::temp_dir();
    let module = dir.join("warren-config-test-module.wasm");
    std::fs::write(&module, b"\0asm").unwrap();
    let text = text.replace("MODULE", &module.display().to_string());
    let c = Config::parse(&text, Path::new("x.toml"), |k| match k {
        ENV_AMQP_URL => Some("amqp://u:p@rabbit:5672/v".into()),
        ENV_REDIS_URL => Some("redis://cache:6379/1".into()),
        _ => None,
    })
    .unwrap();
    assert_eq!(c.amqp.url, "amqp://u:p@rabbit:5672/v");
    assert_eq!(c.redis.unwrap().url, "redis://cache:6379/1");
}

#[test]
fn dedup_key_forms() {
    let c = parse(&format!(
        "{MINIMAL}[handler.dedup]\nkey = \"header:x-id\"\n"
    ))
    .unwrap();
    assert_eq!(c.handlers[0].dedup.key, DedupKey::Header("x-id".into()));
    let err = parse(&format!("{MINIMAL}[handler.dedup]\nkey = \"uuid\"\n")).unwrap_err();
    assert!(
        err.to_string().contains("invalid dedup key \"uuid\""),
        "{err}"
    );
}

#[test]
fn lease_must_outlast_the_deadline() {
    let err = parse(&format!("{MINIMAL}timeout_ms = 40000\n")).unwrap_err();
    assert_eq!(
        err.to_string(),
        "/etc/warren/warren.toml: handler \"echo\": key dedup.lease_ms: the lease (30000 ms) must be longer than timeout_ms (40000 ms)"
    );
}

#[test]
fn batches_default_to_16_and_are_enough_for_consumers() {
    let h = &parse(MINIMAL).unwrap().handlers[0];
    assert_eq!(h.max_batch, 16);
    assert_eq!(h.batch_slots(1), 1, "8 consumers fit one batch");
    assert_eq!(h.batch_slots(4), 4, "one batch per core");
    assert_eq!(h.batch_slots(32), 8, "never more batches than consumers");
    let h = &parse(&format!("{MINIMAL}consumers = 64\nmax_batch = 10\n"))
        .unwrap()
        .handlers[0];
    assert_eq!(h.batch_slots(2), 7, "6 batches of 10 hold only 60 of 64");
    let h = &parse(&format!("{MINIMAL}consumers = 3\nmax_batch = 1\n"))
        .unwrap()
        .handlers[0];
    assert_eq!(h.batch_slots(1), 3);
    let err = parse(&format!("{MINIMAL}max_batch = 0\n")).unwrap_err();
    assert_eq!(
        err.to_string(),
        "/etc/warren/warren.toml: handler \"echo\": key max_batch: must be at least 1"
    );
}

#[test]
fn admin_off_loopback_needs_a_token() {
    let err = parse(&format!("[admin]\nlisten = \"0.0.0.0:9090\"\n{MINIMAL}")).unwrap_err();
    assert!(err.to_string().contains("admin.token"), "{err}");
}

// Several AMQP endpoints, quorum queues and ordered mode (issue 15).

const TWO_NODES: &str = r#"
[amqp]
urls = ["amqp://u:secret1@node-a:5672/%2f", "amqp://u:secret2@node-b:5672/%2f"]

[[handler]]
name = "echo"
module = "MODULE"
queue = "orders"
"#;

#[test]
fn urls_list_the_endpoints_and_url_is_the_first() {
    let c = parse(TWO_NODES).unwrap();
    assert_eq!(c.amqp.endpoints().len(), 2);
    assert_eq!(c.amqp.url, "amqp://u:secret1@node-a:5672/%2f");
    let debug = format!("{:?}", c.amqp);
    assert!(!debug.contains("secret"), "{debug}");
    let secrets = c.secrets();
    assert!(secrets.contains(&"secret1".to_string()), "{secrets:?}");
    assert!(secrets.contains(&"secret2".to_string()), "{secrets:?}");
    // One URL alone keeps the secret it always had.
    let one = parse(MINIMAL).unwrap();
    assert_eq!(one.amqp.endpoints(), std::slice::from_ref(&one.amqp.url));
    assert_eq!(one.amqp.bookkeeping_secret(), one.amqp.url);
}

#[test]
fn the_bookkeeping_secret_does_not_depend_on_the_order_of_the_urls() {
    let a = parse(TWO_NODES).unwrap();
    let swapped = TWO_NODES.replace(
        r#"["amqp://u:secret1@node-a:5672/%2f", "amqp://u:secret2@node-b:5672/%2f"]"#,
        r#"["amqp://u:secret2@node-b:5672/%2f", "amqp://u:secret1@node-a:5672/%2f"]"#,
    );
    let b = parse(&swapped).unwrap();
    assert_eq!(a.amqp.bookkeeping_secret(), b.amqp.bookkeeping_secret());
}

#[test]
fn url_and_urls_together_or_neither_are_errors() {
    let both = TWO_NODES.replace("[amqp]\n", "[amqp]\nurl = \"amqp://x\"\n");
    let err = parse(&both).unwrap_err().to_string();
    assert!(err.contains("key amqp.urls: set amqp.url"), "{err}");
    let neither = MINIMAL.replace("url = \"amqp://guest:guest@127.0.0.1:5672/%2f\"", "");
    let err = parse(&neither).unwrap_err().to_string();
    assert!(err.contains("key amqp.url: missing"), "{err}");
    let twice = TWO_NODES.replace("secret2@node-b", "secret1@node-a");
    let err = parse(&twice).unwrap_err().to_string();
    assert!(
        err.contains("listed twice") && !err.contains("secret1"),
        "{err}"
    );
}

#[test]
fn environment_overrides_the_endpoints() {
    let dir = std::env::temp_dir();
    let module = dir.join("warren-config-test-module.wasm");
    std::fs::write(&module, b"\0asm").unwrap();
    let text = TWO_NODES.replace("MODULE", &module.display().to_string());
    let c = Config::parse(&text, Path::new("x.toml"), |k| match k {
        ENV_AMQP_URLS => Some("amqp://a:1/v, amqp://b:2/v,amqp://c:3/v".into()),
        _ => None,
    })
    .unwrap();
    assert_eq!(
        c.amqp.endpoints(),
        ["amqp://a:1/v", "amqp://b:2/v", "amqp://c:3/v"]
    );
    let c = Config::parse(&text, Path::new("x.toml"), |k| match k {
        ENV_AMQP_URL => Some("amqp://one:1/v".into()),
        ENV_AMQP_URLS => Some("amqp://a:1/v,amqp://b:2/v".into()),
        _ => None,
    })
    .unwrap();
    assert_eq!(c.amqp.endpoints(), ["amqp://one:1/v"]);
}

#[test]
fn a_delivery_limit_needs_a_quorum_queue_and_defaults_to_20() {
    let err = parse(&format!("{MINIMAL}delivery_limit = 3\n"))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("key delivery_limit: only quorum queues"),
        "{err}"
    );
    let c = parse(&format!("{MINIMAL}queue_type = \"quorum\"\n")).unwrap();
    assert_eq!(c.handlers[0].delivery_limit(), Some(DEFAULT_DELIVERY_LIMIT));
    let c = parse(&format!(
        "{MINIMAL}queue_type = \"quorum\"\ndelivery_limit = 3\n"
    ))
    .unwrap();
    assert_eq!(c.handlers[0].delivery_limit(), Some(3));
    assert_eq!(parse(MINIMAL).unwrap().handlers[0].delivery_limit(), None);
}

#[test]
fn ordered_handlers_take_one_message_at_a_time() {
    let c = parse(&format!(
        "{MINIMAL}ordered = true\nconsumers = 16\nprefetch = 100\n"
    ))
    .unwrap();
    let h = &c.handlers[0];
    assert_eq!(
        (h.consumers, h.channels, h.prefetch, h.max_batch),
        (1, 1, 1, 1)
    );
    let err = parse(&format!(
        "{MINIMAL}ordered = true\n[handler.retry]\nmax_attempts = 50\nmax_backoff_ms = 60000\n"
    ))
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("key ordered: an ordered handler holds"),
        "{err}"
    );
}

#[test]
fn tls_files_need_a_tls_url_and_come_from_the_environment_too() {
    let with_tls = MINIMAL.replace(
        "[[handler]]",
        "[amqp.tls]\nca_file = \"ca.pem\"\n\n[[handler]]",
    );
    let err = parse(&with_tls).unwrap_err().to_string();
    assert!(
        err.contains("key amqp.tls: certificates are set but no AMQP URL is amqps://"),
        "{err}"
    );
    let amqps = with_tls.replace("amqp://guest", "amqps://guest");
    let c = parse(&amqps).unwrap();
    assert_eq!(
        c.amqp.tls.ca_file.as_deref(),
        Some(Path::new("/etc/warren/ca.pem")),
        "relative to the config file"
    );
    let dir = std::env::temp_dir();
    let module = dir.join("warren-config-test-module.wasm");
    std::fs::write(&module, b"\0asm").unwrap();
    let text = amqps.replace("MODULE", &module.display().to_string());
    let c = Config::parse(&text, Path::new("/etc/warren/warren.toml"), |k| match k {
        "WARREN_AMQP_TLS_CERT_FILE" => Some("/run/secrets/client.pem".into()),
        _ => None,
    })
    .unwrap();
    assert_eq!(
        c.amqp.tls.cert_file.as_deref(),
        Some(Path::new("/run/secrets/client.pem"))
    );
    let err = c.amqp.tls.read("amqp.tls").unwrap_err().to_string();
    assert!(err.contains("key amqp.tls.key_file: missing"), "{err}");
}
