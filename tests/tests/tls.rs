//! TLS to RabbitMQ (`amqps://`) and Redis (`rediss://`), with certificates
//! the test makes: the CA and a client certificate get warren in; a wrong
//! CA is refused, with an error naming the URL without its password.

use std::time::Duration;

use warren_tests::fixture::Fixture;
use warren_tests::private_broker::PrivateBroker;
use warren_tests::process::{Warren, free_port};
use warren_tests::redis_server::RedisServer;
use warren_tests::tls_certs::Certs;

const PASSWORD: &str = "tls-s3cret-pw";

/// A broker with a TLS listener that requires a client certificate (and
/// its plain listener, for the test's own connection), and a user
/// `warren` whose password is [`PASSWORD`]. Returns the broker and the
/// `amqps://` URL.
fn tls_broker(certs: &Certs) -> (PrivateBroker, String) {
    let port = free_port();
    let conf = format!(
        "listeners.ssl.default = 127.0.0.1:{port}\n\
         ssl_options.cacertfile = {}\n\
         ssl_options.certfile = {}\n\
         ssl_options.keyfile = {}\n\
         ssl_options.verify = verify_peer\n\
         ssl_options.fail_if_no_peer_cert = true\n",
        certs.ca.display(),
        certs.server_cert.display(),
        certs.server_key.display()
    );
    let broker = PrivateBroker::start_with(&conf);
    broker.ctl(&["add_user", "warren", PASSWORD]);
    broker.ctl(&["set_permissions", "-p", "/", "warren", ".*", ".*", ".*"]);
    let url = format!("amqps://warren:{PASSWORD}@127.0.0.1:{port}/%2f");
    (broker, url)
}

/// A Redis with only a TLS port (client certificates required) and
/// [`PASSWORD`]; returns it and the `rediss://` URL.
fn tls_redis(certs: &Certs) -> (RedisServer, String) {
    let port = free_port();
    let arg = |p: &std::path::Path| p.display().to_string();
    let redis = RedisServer::start_with(vec![
        "--tls-port".into(),
        port.to_string(),
        "--tls-cert-file".into(),
        arg(&certs.server_cert),
        "--tls-key-file".into(),
        arg(&certs.server_key),
        "--tls-ca-cert-file".into(),
        arg(&certs.ca),
        "--tls-auth-clients".into(),
        "yes".into(),
    ]);
    let url = format!("rediss://:{PASSWORD}@127.0.0.1:{port}/0");
    // The password for the TLS port; the plain port answers the
    // readiness PING before it is set.
    redis_cli(&redis, &["CONFIG", "SET", "requirepass", PASSWORD]);
    (redis, url)
}

fn redis_cli(redis: &RedisServer, args: &[&str]) {
    let out = std::process::Command::new("redis-cli")
        .args(["-p", &redis.port.to_string()])
        .args(args)
        .output()
        .expect("run redis-cli");
    assert!(out.status.success(), "redis-cli {args:?}");
}

fn tls_section(section: &str, ca: &std::path::Path, certs: &Certs) -> String {
    format!(
        "[{section}.tls]\nca_file = \"{}\"\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
        ca.display(),
        certs.client_cert.display(),
        certs.client_key.display()
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn warren_consumes_and_dedups_over_tls_with_the_ca_and_a_client_certificate() {
    let certs = Certs::generate();
    let (broker, amqps) = tls_broker(&certs);
    let (_redis, rediss) = tls_redis(&certs);
    let f = Fixture::new("tls")
        .broker(&broker.url())
        .warren_amqp(&amqps)
        .redis(&rediss, "pause")
        .section(&tls_section("amqp", &certs.ca, &certs))
        .section(&tls_section("redis", &certs.ca, &certs))
        .start()
        .await;
    let logs = f.w().logs();
    assert!(
        logs.contains("endpoint=\"amqps://warren:***@127.0.0.1"),
        "{logs}"
    );
    assert!(logs.contains("rediss://127.0.0.1"), "{logs}");
    let ids: Vec<String> = (0..200).map(|i| format!("tls-{i}")).collect();
    let msgs = ids
        .iter()
        .map(|id| (Some(id.clone()), id.clone().into_bytes()));
    f.rabbit.publish_many(&f.queue, msgs).await;
    // Each twice: the second copies are dedup hits, so Redis answered.
    let again = ids
        .iter()
        .map(|id| (Some(id.clone()), id.clone().into_bytes()));
    f.rabbit.publish_many(&f.queue, again).await;
    let got = f.rabbit.collect(&f.out, 200, Duration::from_secs(60)).await;
    warren_tests::tally::assert_once_each(&got, &ids);
    f.settle(400, Duration::from_secs(60)).await;
    assert_eq!(f.w().outcome("dedup_hit"), 200);
    assert!(!f.w().logs().contains(PASSWORD));
    f.assert_nothing_more().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wrong_ca_is_refused_with_an_error_naming_the_url_without_its_password() {
    let certs = Certs::generate();
    let (broker, amqps) = tls_broker(&certs);
    let (redis, rediss) = tls_redis(&certs);

    // RabbitMQ: the host keeps trying, not ready, and says why.
    let f = Fixture::new("tls-wrong-ca")
        .broker(&broker.url())
        .warren_amqp(&amqps)
        .section(&tls_section("amqp", &certs.other_ca, &certs))
        .prepare()
        .await;
    let admin = free_port();
    let mut w = Warren::start(&f.config(admin), Some(admin));
    w.wait_log("cannot connect to RabbitMQ", Duration::from_secs(30));
    let logs = w.logs();
    let line = logs
        .lines()
        .find(|l| l.contains("cannot connect to RabbitMQ"))
        .unwrap();
    assert!(
        line.contains("amqps://warren:***@127.0.0.1") && line.contains("certificate"),
        "{line}"
    );
    assert!(!logs.contains(PASSWORD), "{logs}");
    assert_ne!(w.admin_get("/readyz").0, 200);
    drop(w);

    // Redis: the host does not start, and says why.
    let config = f.config(free_port()).replace(
        &tls_section("amqp", &certs.other_ca, &certs),
        &tls_section("amqp", &certs.ca, &certs),
    );
    let config = config.replacen(
        "[[handler]]",
        &format!(
            "[redis]\nurl = \"{rediss}\"\n{}\n[[handler]]",
            tls_section("redis", &certs.other_ca, &certs)
        ),
        1,
    );
    let mut w = Warren::start(&config, None);
    let status = w.wait(Duration::from_secs(30));
    assert!(!status.success());
    let logs = w.logs();
    let port = rediss.rsplit(':').next().unwrap().trim_end_matches("/0");
    assert!(
        logs.contains(&format!("rediss://127.0.0.1:{port}")) && logs.contains("certificate"),
        "{logs}"
    );
    assert!(!logs.contains(PASSWORD), "{logs}");
    drop(redis);
}
