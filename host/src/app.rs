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
use crate::{admin, amqp, dedup, logging, shutdown, watch};

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
    amqp::validate_url(&config.amqp.url)
        .map_err(anyhow::Error::msg)
        .with_context(|| at("amqp.url"))?;
    if let Some(r) = &config.redis {
        dedup::validate_url(&r.url)
            .map_err(anyhow::Error::msg)
            .with_context(|| at("redis.url"))?;
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
    host.serve(config).await
}
