//! Reading a config file: TOML, then environment overrides, then paths
//! made absolute, then [`Config::validate`].

use std::path::{Path, PathBuf};

use anyhow::Context as _;

use super::{
    Config, ENV_ADMIN_TOKEN, ENV_AMQP_URL, ENV_BOOKKEEPING_KEY, ENV_OTLP_ENDPOINT,
    ENV_OTLP_TRACES_ENDPOINT, ENV_REDIS_URL, ENV_SERVICE_NAME,
};

impl Config {
    /// Reads, parses, applies the environment overrides and validates.
    pub fn load(path: &Path) -> anyhow::Result<Config> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config file {}", path.display()))?;
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        Self::parse(&text, path, env)
    }

    /// Parses `text` as if read from `path`, taking environment overrides
    /// from `env`.
    pub fn parse(
        text: &str,
        path: &Path,
        env: impl Fn(&str) -> Option<String>,
    ) -> anyhow::Result<Config> {
        let mut config: Config = toml::from_str(text)
            .map_err(|e| anyhow::anyhow!("{}: {}", path.display(), e.to_string().trim_end()))?;
        config.path = path.to_path_buf();
        if let Some(url) = env(ENV_AMQP_URL) {
            config.amqp.url = url;
        }
        if let (Some(redis), Some(url)) = (config.redis.as_mut(), env(ENV_REDIS_URL)) {
            redis.url = url;
        }
        if let Some(key) = env(ENV_BOOKKEEPING_KEY) {
            config.amqp.bookkeeping_key = Some(key);
        }
        if let Some(token) = env(ENV_ADMIN_TOKEN) {
            config.admin.token = Some(token);
        }
        if let Some(url) = env(ENV_OTLP_TRACES_ENDPOINT) {
            config.telemetry.otlp_endpoint = Some(url);
            config.telemetry.endpoint_is_full_url = true;
        } else if let Some(url) = env(ENV_OTLP_ENDPOINT) {
            config.telemetry.otlp_endpoint = Some(url);
        }
        if let Some(name) = env(ENV_SERVICE_NAME) {
            config.telemetry.service_name = name;
        }
        let base = path.parent().unwrap_or(Path::new("."));
        config.runtime.cache_dir = match config.runtime.cache_dir.take() {
            Some(dir) if dir.as_os_str().is_empty() => None,
            Some(dir) if dir.is_relative() => Some(base.join(dir)),
            Some(dir) => Some(dir),
            None => default_cache_dir(&env),
        };
        for h in &mut config.handlers {
            if h.module.is_relative() {
                h.module = base.join(&h.module);
            }
            // Environment variables and files behind `[handler.config]`
            // values; the error names the key, never a value.
            for (key, value) in &mut h.config {
                value.resolve(base, &env).map_err(|e| {
                    anyhow::anyhow!(
                        "{}: handler {:?}: key config.{key}: {e}",
                        path.display(),
                        h.name
                    )
                })?;
            }
        }
        config
            .validate()
            .map_err(|e| anyhow::anyhow!("{}: {e:#}", path.display()))?;
        Ok(config)
    }
}

/// Where compiled modules are cached when the config does not say:
/// `$XDG_CACHE_HOME/warren/modules`, or `$HOME/.cache/warren/modules`
/// (`warren test` caches there too).
pub fn default_module_cache_dir() -> Option<PathBuf> {
    default_cache_dir(&|k: &str| std::env::var(k).ok().filter(|v| !v.is_empty()))
}

/// `$XDG_CACHE_HOME/warren/modules`, or `$HOME/.cache/warren/modules`.
fn default_cache_dir(env: &impl Fn(&str) -> Option<String>) -> Option<PathBuf> {
    let base = env("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| env("HOME").map(|h| Path::new(&h).join(".cache")))?;
    Some(base.join("warren").join("modules"))
}
