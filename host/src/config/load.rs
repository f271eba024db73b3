//! Reading a config file: TOML, then environment overrides, then paths
//! made absolute, then [`Config::validate`].

use std::path::{Path, PathBuf};

use anyhow::Context as _;

use super::{
    Config, ENV_ADMIN_TOKEN, ENV_AMQP_URL, ENV_AMQP_URLS, ENV_BOOKKEEPING_KEY, ENV_OTLP_ENDPOINT,
    ENV_OTLP_TRACES_ENDPOINT, ENV_REDIS_CLUSTER, ENV_REDIS_MASTER_NAME, ENV_REDIS_SENTINELS,
    ENV_REDIS_URL, ENV_SERVICE_NAME,
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
        config
            .amqp_endpoints(env(ENV_AMQP_URL), env(ENV_AMQP_URLS))
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        if let Some(redis) = config.redis.as_mut() {
            let list = |v: String| -> Vec<String> {
                v.split(',')
                    .map(|u| u.trim().to_string())
                    .filter(|u| !u.is_empty())
                    .collect()
            };
            if let Some(url) = env(ENV_REDIS_URL) {
                redis.url = url;
            }
            if let Some(urls) = env(ENV_REDIS_SENTINELS) {
                redis.sentinels = list(urls);
            }
            if let Some(name) = env(ENV_REDIS_MASTER_NAME) {
                redis.master_name = name;
            }
            if let Some(urls) = env(ENV_REDIS_CLUSTER) {
                redis.cluster = list(urls);
            }
        }
        tls_overrides(&mut config.amqp.tls, "WARREN_AMQP_TLS", &env);
        if let Some(redis) = config.redis.as_mut() {
            tls_overrides(&mut redis.tls, "WARREN_REDIS_TLS", &env);
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
        let mut tls: Vec<&mut super::Tls> = vec![&mut config.amqp.tls];
        tls.extend(config.redis.as_mut().map(|r| &mut r.tls));
        for t in tls {
            for file in [&mut t.ca_file, &mut t.cert_file, &mut t.key_file] {
                if let Some(f) = file.as_mut()
                    && f.is_relative()
                {
                    *f = base.join(&*f);
                }
            }
        }
        for h in &mut config.handlers {
            if h.module.is_relative() {
                h.module = base.join(&h.module);
            }
            if let Some(ca) = h.http.as_mut().and_then(|x| x.ca_file.as_mut())
                && ca.is_relative()
            {
                *ca = base.join(&*ca);
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
            // Ordered: one message at a time, whatever the file says for
            // the keys that would allow more (docs/semantics.md).
            if h.ordered {
                h.consumers = 1;
                h.channels = 1;
                h.prefetch = 1;
                h.max_batch = 1;
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

impl Config {
    /// Settles `amqp.url` and `amqp.urls` into one list of endpoints (in
    /// `urls`, the first also in `url`), the environment winning over the
    /// file: `WARREN_AMQP_URL` (one broker), else `WARREN_AMQP_URLS`
    /// (comma-separated).
    fn amqp_endpoints(&mut self, one: Option<String>, many: Option<String>) -> anyhow::Result<()> {
        let amqp = &mut self.amqp;
        if let Some(url) = one {
            amqp.urls = vec![url];
        } else if let Some(list) = many {
            amqp.urls = list
                .split(',')
                .map(|u| u.trim().to_string())
                .filter(|u| !u.is_empty())
                .collect();
        } else {
            match (amqp.url.is_empty(), amqp.urls.is_empty()) {
                (false, false) => anyhow::bail!(
                    "key amqp.urls: set amqp.url (one broker) or amqp.urls (several nodes), not both"
                ),
                (true, true) => anyhow::bail!(
                    "key amqp.url: missing: set amqp.url (one broker) or amqp.urls (several nodes)"
                ),
                (false, true) => amqp.urls = vec![amqp.url.clone()],
                (true, false) => {}
            }
        }
        let mut seen = std::collections::HashSet::new();
        for url in &amqp.urls {
            if !seen.insert(url) {
                anyhow::bail!("key amqp.urls: {} is listed twice", super::redact_url(url));
            }
        }
        if amqp.urls.is_empty() {
            anyhow::bail!("key amqp.urls: the list is empty; name at least one broker");
        }
        amqp.url = amqp.urls[0].clone();
        Ok(())
    }
}

/// `<prefix>_CA_FILE`, `<prefix>_CERT_FILE` and `<prefix>_KEY_FILE` over
/// the file's TLS keys.
fn tls_overrides(tls: &mut super::Tls, prefix: &str, env: &impl Fn(&str) -> Option<String>) {
    for (name, file) in [
        ("CA_FILE", &mut tls.ca_file),
        ("CERT_FILE", &mut tls.cert_file),
        ("KEY_FILE", &mut tls.key_file),
    ] {
        if let Some(v) = env(&format!("{prefix}_{name}")) {
            *file = Some(PathBuf::from(v));
        }
    }
}

/// `$XDG_CACHE_HOME/warren/modules`, or `$HOME/.cache/warren/modules`.
fn default_cache_dir(env: &impl Fn(&str) -> Option<String>) -> Option<PathBuf> {
    let base = env("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| env("HOME").map(|h| Path::new(&h).join(".cache")))?;
    Some(base.join("warren").join("modules"))
}
