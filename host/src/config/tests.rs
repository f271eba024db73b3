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
        (256, 512, 5000, 64)
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
    assert_eq!((h.consumers, h.prefetch, h.max_batch), (256, 512, 16));
    assert_eq!(h.batch_slots(1), 16, "256 consumers in batches of 16");
    assert_eq!(h.batch_slots(32), 32, "one batch per core");
    let h = &parse(&format!("{MINIMAL}consumers = 8\n"))
        .unwrap()
        .handlers[0];
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

#[test]
fn telemetry_is_off_by_default_and_the_otel_variables_turn_it_on() {
    let c = parse(MINIMAL).unwrap();
    assert!(c.telemetry.otlp_endpoint.is_none());
    assert_eq!(c.telemetry.service_name, "warren");
    let dir = std::env::temp_dir();
    let module = dir.join("warren-config-test-module.wasm");
    std::fs::write(&module, b"\0asm").unwrap();
    let text = MINIMAL.replace("MODULE", &module.display().to_string());
    let with = |vars: &'static [(&'static str, &'static str)]| {
        Config::parse(&text, Path::new("x.toml"), |k| {
            vars.iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        })
    };
    let c = with(&[
        (ENV_OTLP_ENDPOINT, "http://collector:4318"),
        (ENV_SERVICE_NAME, "orders"),
    ])
    .unwrap();
    assert_eq!(
        c.telemetry.otlp_endpoint.as_deref(),
        Some("http://collector:4318")
    );
    assert!(!c.telemetry.endpoint_is_full_url);
    assert_eq!(c.telemetry.service_name, "orders");
    let c = with(&[
        (ENV_OTLP_ENDPOINT, "http://collector:4318"),
        (ENV_OTLP_TRACES_ENDPOINT, "http://other:4318/custom/traces"),
    ])
    .unwrap();
    assert_eq!(
        c.telemetry.otlp_endpoint.as_deref(),
        Some("http://other:4318/custom/traces")
    );
    assert!(c.telemetry.endpoint_is_full_url);
    let err = with(&[(ENV_OTLP_ENDPOINT, "https://collector:4318")]).unwrap_err();
    assert!(
        err.to_string().contains("key telemetry.otlp_endpoint")
            && err.to_string().contains("not an http:// URL"),
        "{err}"
    );
}
// `[handler.config]` values from the environment and files, and secrets.

fn parse_env(text: &str, env: impl Fn(&str) -> Option<String>) -> anyhow::Result<Config> {
    let module = std::env::temp_dir().join("warren-config-test-module.wasm");
    std::fs::write(&module, b"\0asm").unwrap();
    let text = text.replace("MODULE", &module.display().to_string());
    Config::parse(&text, Path::new("/etc/warren/warren.toml"), env)
}

#[test]
fn config_values_come_from_text_environment_and_files() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("db-pass"), "s3cret-from-file\n").unwrap();
    let text = format!(
        "{MINIMAL}[handler.config]\nregion = \"eu\"\nurl = {{ env = \"PRICE_URL\" }}\nkey = {{ env = \"PRICE_KEY\", secret = true }}\ndb = {{ file = \"db-pass\", secret = true }}\ntoken = {{ value = \"inline-secret\", secret = true }}\n"
    );
    let module = std::env::temp_dir().join("warren-config-test-module.wasm");
    std::fs::write(&module, b"\0asm").unwrap();
    let text = text.replace("MODULE", &module.display().to_string());
    let c = Config::parse(&text, &dir.path().join("warren.toml"), |k| match k {
        "PRICE_URL" => Some("http://127.0.0.1:8080".into()),
        "PRICE_KEY" => Some("k-123456".into()),
        _ => None,
    })
    .unwrap();
    let h = &c.handlers[0];
    let values = h.config_values();
    assert_eq!(values["region"], "eu");
    assert_eq!(values["url"], "http://127.0.0.1:8080");
    assert_eq!(values["key"], "k-123456");
    assert_eq!(
        values["db"], "s3cret-from-file",
        "one trailing newline dropped"
    );
    assert_eq!(values["token"], "inline-secret");
    let secrets = c.secrets();
    for s in ["k-123456", "s3cret-from-file", "inline-secret"] {
        assert!(secrets.contains(&s.to_string()), "{s} is registered");
    }
    assert!(!secrets.contains(&"http://127.0.0.1:8080".to_string()));
    // Debug (what a panic or a `{:?}` would print) shows no secret.
    let shown = format!("{c:?}");
    for s in ["k-123456", "s3cret-from-file", "inline-secret"] {
        assert!(!shown.contains(s), "{s} in {shown}");
    }
    assert!(shown.contains("eu"));
}

#[test]
fn a_missing_config_source_is_an_error_naming_the_key() {
    let text =
        format!("{MINIMAL}[handler.config]\napi_key = {{ env = \"NOPE\", secret = true }}\n");
    let err = parse_env(&text, |_| None).unwrap_err();
    assert_eq!(
        err.to_string(),
        "/etc/warren/warren.toml: handler \"echo\": key config.api_key: environment variable NOPE is not set (or is empty)"
    );
    let text =
        format!("{MINIMAL}[handler.config]\ncert = {{ file = \"/nonexistent/warren/ca.pem\" }}\n");
    let err = parse_env(&text, |_| None).unwrap_err().to_string();
    assert!(
        err.starts_with("/etc/warren/warren.toml: handler \"echo\": key config.cert: cannot read file /nonexistent/warren/ca.pem:"),
        "{err}"
    );
}

#[test]
fn a_config_value_table_needs_exactly_one_source() {
    for bad in [
        "x = { secret = true }",
        "x = { env = \"A\", file = \"b\" }",
        "x = { env = \"\" }",
        "x = { envv = \"A\" }",
        "x = 3",
    ] {
        let text = format!("{MINIMAL}[handler.config]\n{bad}\n");
        let err = parse_env(&text, |_| Some("v".into()))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("a config value table needs exactly one of")
                || err.contains("one of `value`, `env` or `file`")
                || err.contains("unknown field `envv`"),
            "{bad}: {err}"
        );
    }
}

#[test]
fn deploy_and_fleet_sections_parse_and_are_checked() {
    let c = parse(MINIMAL).unwrap();
    assert!(!c.deploy.require_signed && c.deploy.trusted_keys.is_empty());
    assert!(c.fleet.is_none());

    let text = MINIMAL.replace(
        "[[handler]]",
        "[deploy]\nrequire_signed = true\n\n[[handler]]",
    );
    let err = parse(&text).unwrap_err().to_string();
    assert!(err.contains("key deploy.require_signed"), "{err}");

    let text = MINIMAL.replace(
        "[[handler]]",
        "[fleet]\nurl = \"amqp://deployer:s3cret@broker:5672/fleet\"\n\n[[handler]]",
    );
    let c = parse(&text).unwrap();
    let f = c.fleet.as_ref().unwrap();
    assert_eq!(f.exchange, "warren.fleet");
    assert!(c.secrets().contains(&"s3cret".to_string()));
    assert!(!format!("{c:?}").contains("s3cret"));

    let text = MINIMAL.replace(
        "[[handler]]",
        "[fleet]\nexchange = \"amq.topic\"\n\n[[handler]]",
    );
    let err = parse(&text).unwrap_err().to_string();
    assert!(err.contains("key fleet.exchange"), "{err}");
}

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

const TWO_NODES: &str = r#"
[amqp]
urls = ["amqp://u:secret1@node-a:5672/%2f", "amqp://u:secret2@node-b:5672/%2f"]

[[handler]]
name = "echo"
module = "MODULE"
queue = "orders"
"#;

#[test]
fn redis_sentinel_and_cluster_sections() {
    let c = parse(&format!(
        "{MINIMAL}\n[redis]\nsentinels = [\"redis://s1:26379\", \"redis://:pw@s2:26379\"]\nmaster_name = \"main\"\n"
    ))
    .unwrap();
    let r = c.redis.as_ref().unwrap();
    assert_eq!(
        r.servers(),
        RedisServers::Sentinel {
            sentinels: &["redis://s1:26379".into(), "redis://:pw@s2:26379".into()],
            master_name: "main",
            node_url: None,
        }
    );
    assert!(c.secrets().contains(&"pw".to_string()));
    assert!(!format!("{r:?}").contains("pw"));

    let c = parse(&format!("{MINIMAL}\n[redis]\nurl = \"redis://a\"\n")).unwrap();
    assert_eq!(
        c.redis.unwrap().read_cache_mb,
        16,
        "the read cache's default"
    );
    let c = parse(&format!(
        "{MINIMAL}\n[redis]\ncluster = [\"redis://n1:7000\", \"redis://n2:7000\"]\n"
    ))
    .unwrap();
    assert!(matches!(
        c.redis.unwrap().servers(),
        RedisServers::Cluster(urls) if urls.len() == 2
    ));

    for (keys, error) in [
        (
            "url = \"redis://a\"\ncluster = [\"redis://b\"]",
            "key redis.cluster: set redis.url (one server), redis.sentinels (Sentinel) or redis.cluster (Cluster), not several",
        ),
        (
            "sentinels = [\"redis://s1:26379\"]",
            "key redis.master_name: missing",
        ),
        (
            "master_name = \"main\"",
            "key redis.sentinels: redis.master_name is set",
        ),
        ("prefix = \"w\"", "key redis.url: missing"),
        (
            "cluster = [\"redis://b\", \"redis://b\"]",
            "key redis.cluster: redis://b is listed twice",
        ),
        (
            "cluster = [\"redis://b\"]\nprefix = \"{w}\"",
            "key redis.prefix: \"{w}\" holds a brace",
        ),
        (
            "url = \"redis://a\"\nread_cache_mb = 5000",
            "key redis.read_cache_mb: 5000 MiB is more than the 4096 allowed",
        ),
    ] {
        let err = parse(&format!("{MINIMAL}\n[redis]\n{keys}\n")).unwrap_err();
        assert!(err.to_string().contains(error), "{keys}: {err}");
    }
}

#[test]
fn environment_overrides_the_redis_deployment() {
    let text = format!("{MINIMAL}\n[redis]\nurl = \"redis://127.0.0.1:6379/0\"\n");
    // Each variable overrides its own key: a cluster over a file's url is
    // two deployments.
    let err = parse_env(&text, |k| match k {
        ENV_REDIS_CLUSTER => Some("redis://n1:7000, redis://n2:7000".into()),
        _ => None,
    })
    .unwrap_err();
    assert!(err.to_string().contains("not several"), "{err}");

    let c = parse_env(
        &format!("{MINIMAL}\n[redis]\nprefix = \"w\"\n"),
        |k| match k {
            ENV_REDIS_SENTINELS => Some("redis://s1:26379,redis://s2:26379".into()),
            ENV_REDIS_MASTER_NAME => Some("main".into()),
            _ => None,
        },
    )
    .unwrap();
    let r = c.redis.unwrap();
    assert_eq!(r.sentinels, ["redis://s1:26379", "redis://s2:26379"]);
    assert_eq!(r.master_name, "main");
}

#[test]
fn http_is_off_without_the_table_and_defaults_with_it() {
    assert!(parse(MINIMAL).unwrap().handlers[0].http.is_none());
    let c = parse(&format!(
        "{MINIMAL}[handler.http]\nallow = [\"https://api.example.com\", \"http://127.0.0.1:*\"]\n"
    ))
    .unwrap();
    let h = c.handlers[0].http.as_ref().unwrap();
    assert_eq!(
        (
            h.timeout_ms,
            h.max_response_bytes,
            h.max_requests,
            h.idempotency_header
        ),
        (2000, 1 << 20, 16, true)
    );
    assert_eq!(h.patterns().unwrap().len(), 2);
    assert!(h.ca_file.is_none());
}

#[test]
fn http_errors_name_the_handler_and_the_key() {
    for (table, key, why) in [
        (
            "allow = [\"api.example.com\"]",
            "http.allow",
            "scheme://host",
        ),
        ("allow = [\"http://x:99999\"]", "http.allow", "65535"),
        ("timeout_ms = 0", "http.timeout_ms", "at least 1"),
        ("max_requests = 0", "http.max_requests", "at least 1"),
        (
            "max_response_bytes = 0",
            "http.max_response_bytes",
            "at least 1",
        ),
        (
            "ca_file = \"no-such-ca.pem\"",
            "http.ca_file",
            "does not exist",
        ),
        ("allow_all = true", "allow_all", "unknown field"),
    ] {
        let err = format!(
            "{:#}",
            parse(&format!("{MINIMAL}[handler.http]\n{table}\n")).unwrap_err()
        );
        assert!(err.contains(key) && err.contains(why), "{table}: {err}");
        if key.starts_with("http.") {
            assert!(err.contains("handler \"echo\""), "{table}: {err}");
        }
    }
}

#[test]
fn the_body_limit_is_max_message_bytes_within_the_guests_memory_cap() {
    let h = &parse(MINIMAL).unwrap().handlers[0];
    assert_eq!(h.max_message_bytes, 16 << 20);
    assert_eq!(h.body_limit(), 16 << 20);
    let h = &parse(&format!("{MINIMAL}max_message_bytes = 1000\n"))
        .unwrap()
        .handlers[0];
    assert_eq!(h.body_limit(), 1000);
    // A body is copied into the guest's memory: never more than its cap.
    let h = &parse(&format!("{MINIMAL}memory_mb = 8\n"))
        .unwrap()
        .handlers[0];
    assert_eq!(h.body_limit(), 8 << 20);
    let err = parse(&format!("{MINIMAL}max_message_bytes = 0\n")).unwrap_err();
    assert_eq!(
        err.to_string(),
        "/etc/warren/warren.toml: handler \"echo\": key max_message_bytes: must be at least 1"
    );
}
