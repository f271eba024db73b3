//! `warren run` as a library call: [`load_config`] reads and checks a
//! config file, [`serve`] runs a host on it until the shutdown signal.
//! The binary calls these two; tests can start a host the same way.
//!
//! The top of the crate: it starts the host (`server`), the admin endpoint
//! (`admin`) and the module file watcher (`watch`), and nothing imports it.

use std::path::Path;

use anyhow::Context as _;

use crate::config::Config;
use crate::context::Host;
use crate::{admin, amqp, dedup, fleet, logging, shutdown, watch};

/// Reads `path`, applies the environment overrides and validates every
/// key, including the URLs, which only the client libraries can check.
/// Errors name the file and the key; URLs in them are shown without their
/// passwords.
pub fn load_config(path: &Path) -> anyhow::Result<Config> {
    let config = Config::load(path)?;
    // Before anything can print a URL: a client library's error may embed
    // it, or its password, in any form.
    logging::hide(config.secrets());
    let at = |key: &str| format!("{}: key {key}", path.display());
    let several = config.amqp.endpoints().len() > 1;
    for (i, url) in config.amqp.endpoints().iter().enumerate() {
        amqp::validate_url(url)
            .map_err(anyhow::Error::msg)
            .with_context(|| match several {
                true => at(&format!("amqp.urls[{i}]")),
                false => at("amqp.url"),
            })?;
    }
    // Read once here so a missing or unreadable file fails the start; they
    // are read again at each connection, so renewed ones are picked up.
    config
        .amqp
        .tls
        .read("amqp.tls")
        .map_err(|e| anyhow::anyhow!("{}: {e:#}", path.display()))?;
    crate::signing::Trust::new(&config.deploy.trusted_keys, config.deploy.require_signed)
        .map_err(anyhow::Error::msg)
        .with_context(|| at("deploy.trusted_keys"))?;
    if let Some(url) = config.fleet.as_ref().and_then(|f| f.url.as_ref()) {
        amqp::validate_url(url)
            .map_err(anyhow::Error::msg)
            .with_context(|| at("fleet.url"))?;
    }
    if let Some(r) = &config.redis {
        r.tls
            .read("redis.tls")
            .map_err(|e| anyhow::anyhow!("{}: {e:#}", path.display()))?;
        for (key, url) in r.urls() {
            dedup::validate_url(url)
                .map_err(anyhow::Error::msg)
                .with_context(|| at(key))?;
        }
    }
    Ok(config)
}

/// Runs a host on `config` until `shutdown` fires: compiles the modules,
/// connects the dedup store, starts the admin endpoint (when configured)
/// and the module file watcher, then consumes, reconnecting as needed.
/// Returns once in-flight messages are settled or abandoned and the
/// connection is closed.
pub async fn serve(config: &Config, shutdown: shutdown::Signal) -> anyhow::Result<()> {
    let host = Host::start(config, shutdown.clone()).await?;
    if let Some(addr) = config.admin.listen {
        let listener = admin::bind(addr).await?;
        tracing::info!(listen = %listener.local_addr()?, "admin endpoint up");
        tokio::spawn(admin::serve(
            listener,
            host.clone(),
            config.admin.clone(),
            shutdown.clone(),
        ));
    }
    let _watcher = watch::start(host.shared.clone(), host.handlers.clone())?;
    if let Some(f) = &config.fleet {
        fleet::start(host.clone(), config, f);
    }
    let served = host.serve(config).await;
    if let Some(t) = &host.shared.tracer {
        // The last spans, sent off the runtime's workers.
        let t = t.clone();
        let _ = tokio::task::spawn_blocking(move || t.flush(TRACE_FLUSH)).await;
    }
    served
}

/// How long shutdown waits for the last spans to be exported.
const TRACE_FLUSH: std::time::Duration = std::time::Duration::from_secs(1);

/// Every thread warren does not size itself, among them the AMQP client's
/// frame-parsing thread, gets [`amqp::limits::THREAD_STACK_BYTES`] of
/// stack (address space; only what a deep header touches is used): the
/// client parses nested header values recursively, and a publisher can
/// nest them about 26,000 deep within RabbitMQ's default `frame_max`. The
/// standard library reads `RUST_MIN_STACK` once, before the first such
/// thread, and setting it from inside the process is not sound once any
/// thread runs, so the process starts itself again with it set (an
/// `exec`: same pid). An operator's own `RUST_MIN_STACK` is left as it is.
/// Call it first thing in `main`, before any thread starts.
pub fn ensure_thread_stacks() {
    use std::os::unix::process::CommandExt as _;
    const VAR: &str = "RUST_MIN_STACK";
    if std::env::var_os(VAR).is_some() {
        return;
    }
    let Ok(exe) = std::env::current_exe() else {
        return;
    };
    let err = std::process::Command::new(exe)
        .args(std::env::args_os().skip(1))
        .env(VAR, amqp::limits::THREAD_STACK_BYTES.to_string())
        .exec();
    eprintln!(
        "warning: cannot start again with {VAR} set ({err}); deep message headers may overflow a thread's stack"
    );
}
