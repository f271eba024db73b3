//! The config file (`warren run --config FILE`): TOML, read once at start.
//!
//! Owns parsing, defaults, environment overrides and validation, so that the
//! rest of the host gets values it can use as they are. Every error names the
//! file, the key (TOML's own errors give the line) and what was expected;
//! unknown keys are errors.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, bail};
use serde::Deserialize;

/// The environment variable that overrides `amqp.url`.
pub const ENV_AMQP_URL: &str = "WARREN_AMQP_URL";
/// The environment variable that overrides `redis.url`.
pub const ENV_REDIS_URL: &str = "WARREN_REDIS_URL";
/// The environment variable that sets `amqp.bookkeeping_key`.
pub const ENV_BOOKKEEPING_KEY: &str = "WARREN_BOOKKEEPING_KEY";
/// The environment variable that sets `admin.token`.
pub const ENV_ADMIN_TOKEN: &str = "WARREN_ADMIN_TOKEN";

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub amqp: Amqp,
    /// Without it, dedup uses an in-process store (one process only).
    pub redis: Option<Redis>,
    #[serde(default)]
    pub admin: Admin,
    #[serde(default)]
    pub runtime: RuntimeSection,
    #[serde(rename = "handler", default)]
    pub handlers: Vec<Handler>,
    /// The file this was read from; set by [`Config::load`].
    #[serde(skip)]
    pub path: PathBuf,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Amqp {
    pub url: String,
    /// Longest wait between reconnection attempts.
    #[serde(default = "defaults::reconnect_max_ms")]
    pub reconnect_max_ms: u64,
    /// The secret that signs warren's bookkeeping headers (attempt, first
    /// exchange and routing key), shared by every process of a group;
    /// `WARREN_BOOKKEEPING_KEY` wins. Without it the AMQP URL (with its
    /// password) is the secret, which protects only against publishers
    /// that do not know warren's broker credentials.
    pub bookkeeping_key: Option<String>,
}

impl Amqp {
    /// The secret that signs the bookkeeping headers.
    pub fn bookkeeping_secret(&self) -> &str {
        self.bookkeeping_key.as_deref().unwrap_or(&self.url)
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Redis {
    pub url: String,
    /// Every dedup key starts with this, then the handler name.
    #[serde(default = "defaults::redis_prefix")]
    pub prefix: String,
    #[serde(default)]
    pub on_unavailable: OnUnavailable,
}

/// What to do with messages while Redis does not answer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnUnavailable {
    /// Stop starting new messages and leave them in the queue until Redis
    /// answers again.
    #[default]
    Pause,
    /// Handle messages without dedup, counted and logged as such.
    Process,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Admin {
    /// Where the admin endpoint listens (health, readiness, metrics,
    /// deploy); off when unset.
    pub listen: Option<SocketAddr>,
    /// Bearer token the admin endpoint requires; `WARREN_ADMIN_TOKEN` wins.
    pub token: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuntimeSection {
    /// How long a graceful shutdown waits for in-flight handlers.
    #[serde(default = "defaults::shutdown_timeout_ms")]
    pub shutdown_timeout_ms: u64,
    /// Where compiled modules are cached, by module hash and engine
    /// settings; default `$XDG_CACHE_HOME/warren/modules` (or
    /// `~/.cache/warren/modules`); `""` turns the cache off.
    pub cache_dir: Option<PathBuf>,
}

impl Default for RuntimeSection {
    fn default() -> Self {
        Self {
            shutdown_timeout_ms: defaults::shutdown_timeout_ms(),
            cache_dir: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Handler {
    pub name: String,
    /// The component file; relative paths are relative to the config file.
    pub module: PathBuf,
    pub queue: String,
    #[serde(default)]
    pub queue_type: QueueType,
    /// Messages in flight at once in this process.
    #[serde(default = "defaults::consumers")]
    pub consumers: u32,
    /// `basic.qos` per consumer channel.
    #[serde(default = "defaults::prefetch")]
    pub prefetch: u16,
    /// AMQP consumer channels for this handler in this process.
    #[serde(default = "defaults::channels")]
    pub channels: u32,
    /// The most deliveries handled together as one batch: one dedup round
    /// trip, one hand-off to the sandbox and one wait for confirms for all
    /// of them. A batch takes only what has already arrived, so it never
    /// waits to fill; its messages run one after another, so a slow one
    /// delays the settling of the others in its batch. 1 handles every
    /// message on its own, up to `consumers` at once.
    #[serde(default = "defaults::max_batch")]
    pub max_batch: u32,
    #[serde(default = "defaults::timeout_ms")]
    pub timeout_ms: u64,
    #[serde(default = "defaults::memory_mb")]
    pub memory_mb: u32,
    /// Where messages end that cannot be handled; default `<queue>.dead`.
    pub dead_letter_queue: Option<String>,
    pub bind: Option<Bind>,
    #[serde(default)]
    pub retry: Retry,
    #[serde(default)]
    pub dedup: Dedup,
    #[serde(default)]
    pub publish: Publish,
    /// `per-message` (default): a fresh instance per message, nothing
    /// carries over. `reuse`: an instance serves up to `reuse_max`
    /// messages (a fresh one after any trap); far cheaper for interpreted
    /// guests, at the price of state carrying over between messages.
    #[serde(default)]
    pub instances: Instances,
    #[serde(default = "defaults::reuse_max")]
    pub reuse_max: u32,
    /// A message body to run through a new module version before it goes
    /// live (at start and on deploy); the run must end without a trap.
    /// Without it, a new version is only instantiated.
    pub smoke_body: Option<String>,
    /// Free key/values handed to the guest through `config`.
    #[serde(default)]
    pub config: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Instances {
    #[default]
    PerMessage,
    Reuse,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum QueueType {
    #[default]
    Classic,
    Quorum,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Bind {
    pub exchange: String,
    #[serde(default = "defaults::exchange_type")]
    pub exchange_type: String,
    #[serde(default)]
    pub routing_keys: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Retry {
    /// Attempts in all, the first included; past it the message is
    /// dead-lettered.
    #[serde(default = "defaults::max_attempts")]
    pub max_attempts: u32,
    /// Backoff before attempt 2; doubles per attempt, with jitter.
    #[serde(default = "defaults::backoff_ms")]
    pub backoff_ms: u64,
    #[serde(default = "defaults::max_backoff_ms")]
    pub max_backoff_ms: u64,
}

impl Default for Retry {
    fn default() -> Self {
        Self {
            max_attempts: defaults::max_attempts(),
            backoff_ms: defaults::backoff_ms(),
            max_backoff_ms: defaults::max_backoff_ms(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Dedup {
    #[serde(default = "defaults::yes")]
    pub enabled: bool,
    #[serde(default)]
    pub key: DedupKey,
    #[serde(default = "defaults::lease_ms")]
    pub lease_ms: u64,
    #[serde(default = "defaults::window_s")]
    pub window_s: u64,
    /// What to do with a message that has no key.
    #[serde(default)]
    pub missing: MissingKey,
}

impl Default for Dedup {
    fn default() -> Self {
        Self {
            enabled: true,
            key: DedupKey::default(),
            lease_ms: defaults::lease_ms(),
            window_s: defaults::window_s(),
            missing: MissingKey::default(),
        }
    }
}

/// Where a message's idempotency key comes from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum DedupKey {
    /// The AMQP `message-id` property.
    #[default]
    MessageId,
    /// A header, by name.
    Header(String),
    /// The SHA-256 of the body.
    BodySha256,
}

impl<'de> Deserialize<'de> for DedupKey {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        match s.as_str() {
            "message-id" => Ok(DedupKey::MessageId),
            "body-sha256" => Ok(DedupKey::BodySha256),
            _ => match s.strip_prefix("header:") {
                Some(name) if !name.is_empty() => Ok(DedupKey::Header(name.to_string())),
                _ => Err(serde::de::Error::custom(format!(
                    "invalid dedup key {s:?}: expected \"message-id\", \"header:NAME\" or \"body-sha256\""
                ))),
            },
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MissingKey {
    /// Dead-letter the message, saying it had no key.
    #[default]
    Reject,
    /// Handle it without dedup.
    Process,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Publish {
    /// Exchanges the handler may publish to; `""` is the default exchange.
    #[serde(default = "defaults::allow")]
    pub allow: Vec<String>,
}

impl Default for Publish {
    fn default() -> Self {
        Self {
            allow: defaults::allow(),
        }
    }
}

mod defaults {
    pub fn reconnect_max_ms() -> u64 {
        10_000
    }
    pub fn redis_prefix() -> String {
        "warren".into()
    }
    pub fn shutdown_timeout_ms() -> u64 {
        30_000
    }
    pub fn consumers() -> u32 {
        8
    }
    pub fn prefetch() -> u16 {
        32
    }
    pub fn channels() -> u32 {
        1
    }
    pub fn max_batch() -> u32 {
        16
    }
    pub fn timeout_ms() -> u64 {
        5_000
    }
    pub fn reuse_max() -> u32 {
        1000
    }
    pub fn memory_mb() -> u32 {
        64
    }
    pub fn exchange_type() -> String {
        "topic".into()
    }
    pub fn max_attempts() -> u32 {
        5
    }
    pub fn backoff_ms() -> u64 {
        200
    }
    pub fn max_backoff_ms() -> u64 {
        60_000
    }
    pub fn yes() -> bool {
        true
    }
    pub fn lease_ms() -> u64 {
        30_000
    }
    pub fn window_s() -> u64 {
        86_400
    }
    pub fn allow() -> Vec<String> {
        vec![String::new()]
    }
}

/// The largest memory cap a handler may ask for.
pub const MAX_MEMORY_MB: u32 = 4096;

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
        }
        config
            .validate()
            .map_err(|e| anyhow::anyhow!("{}: {e:#}", path.display()))?;
        Ok(config)
    }

    fn validate(&self) -> anyhow::Result<()> {
        validate_amqp_url(&self.amqp.url).context("key amqp.url")?;
        if let Some(r) = &self.redis {
            validate_redis_url(&r.url).context("key redis.url")?;
        }
        if let Some(addr) = self.admin.listen
            && !addr.ip().is_loopback()
            && self.admin.token.is_none()
        {
            bail!(
                "key admin.listen: {addr} is not a loopback address, so admin.token (or {ENV_ADMIN_TOKEN}) must be set"
            );
        }
        if self.handlers.is_empty() {
            bail!("no [[handler]] entries: at least one handler is needed");
        }
        let mut names = HashSet::new();
        let mut queues = HashSet::new();
        for h in &self.handlers {
            let at = |key: &str| format!("handler {:?}: key {key}", h.name);
            if h.name.is_empty()
                || !h
                    .name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            {
                bail!(
                    "{}: {:?} must be non-empty ASCII letters, digits, '-', '_' or '.'",
                    at("name"),
                    h.name
                );
            }
            if !names.insert(&h.name) {
                bail!("{}: the name {:?} is used twice", at("name"), h.name);
            }
            if !queues.insert(&h.queue) {
                bail!(
                    "{}: queue {:?} is already consumed by another handler",
                    at("queue"),
                    h.queue
                );
            }
            if h.queue.is_empty() {
                bail!("{}: must not be empty", at("queue"));
            }
            if !h.module.is_file() {
                bail!(
                    "{}: module file {} does not exist",
                    at("module"),
                    h.module.display()
                );
            }
            for (key, v) in [
                ("consumers", h.consumers as u64),
                ("prefetch", h.prefetch as u64),
                ("channels", h.channels as u64),
                ("max_batch", h.max_batch as u64),
                ("timeout_ms", h.timeout_ms),
                ("memory_mb", h.memory_mb as u64),
                ("retry.max_attempts", h.retry.max_attempts as u64),
                ("dedup.lease_ms", h.dedup.lease_ms),
                ("dedup.window_s", h.dedup.window_s),
            ] {
                if v == 0 {
                    bail!("{}: must be at least 1", at(key));
                }
            }
            if h.memory_mb > MAX_MEMORY_MB {
                bail!(
                    "{}: {} MiB is over the limit of {MAX_MEMORY_MB} MiB",
                    at("memory_mb"),
                    h.memory_mb
                );
            }
            if h.retry.max_backoff_ms < h.retry.backoff_ms {
                bail!(
                    "{}: must be at least retry.backoff_ms ({})",
                    at("retry.max_backoff_ms"),
                    h.retry.backoff_ms
                );
            }
            // A lease shorter than the handler's deadline could expire while
            // the handler still runs and let a duplicate in (DESIGN.md).
            if h.dedup.enabled && h.dedup.lease_ms <= h.timeout_ms {
                bail!(
                    "{}: the lease ({} ms) must be longer than timeout_ms ({} ms)",
                    at("dedup.lease_ms"),
                    h.dedup.lease_ms,
                    h.timeout_ms
                );
            }
            if let Some(b) = &h.bind {
                if b.exchange.is_empty() {
                    bail!(
                        "{}: the default exchange cannot be bound; name an exchange",
                        at("bind.exchange")
                    );
                }
                if !["direct", "topic", "fanout", "headers"].contains(&b.exchange_type.as_str()) {
                    bail!(
                        "{}: {:?} is not one of \"direct\", \"topic\", \"fanout\", \"headers\"",
                        at("bind.exchange_type"),
                        b.exchange_type
                    );
                }
            }
        }
        Ok(())
    }
}

impl Handler {
    pub fn dead_letter_queue(&self) -> String {
        self.dead_letter_queue
            .clone()
            .unwrap_or_else(|| format!("{}.dead", self.queue))
    }

    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }

    /// How many batches may be in flight at once on a machine with `cores`
    /// CPUs: enough to hold `consumers` messages in batches of `max_batch`,
    /// and at least one per core (up to `consumers`), because a batch runs
    /// its messages one after another on one thread, and a guest can only
    /// compute (it has no I/O to wait for), so batches beyond the cores
    /// would not run guests faster, and fewer would leave cores idle.
    pub fn batch_slots(&self, cores: u32) -> u32 {
        let to_hold = self.consumers.div_ceil(self.max_batch.max(1));
        to_hold.max(cores.min(self.consumers)).max(1)
    }
}

/// `$XDG_CACHE_HOME/warren/modules`, or `$HOME/.cache/warren/modules`.
fn default_cache_dir(env: &impl Fn(&str) -> Option<String>) -> Option<PathBuf> {
    let base = env("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| env("HOME").map(|h| Path::new(&h).join(".cache")))?;
    Some(base.join("warren").join("modules"))
}

fn validate_amqp_url(url: &str) -> anyhow::Result<()> {
    let scheme = url.split_once("://").map(|(s, _)| s);
    if !matches!(scheme, Some("amqp" | "amqps")) {
        bail!("{url:?} is not an AMQP URL: expected amqp://user:pass@host:port/vhost");
    }
    url.parse::<lapin::uri::AMQPUri>()
        .map(|_| ())
        .map_err(|e| anyhow::anyhow!("{url:?} is not a valid AMQP URL: {e}"))
}

fn validate_redis_url(url: &str) -> anyhow::Result<()> {
    let scheme = url.split_once("://").map(|(s, _)| s);
    if !matches!(scheme, Some("redis" | "rediss" | "redis+unix" | "unix")) {
        bail!("{url:?} is not a Redis URL: expected redis://host:port/db");
    }
    redis::Client::open(url)
        .map(|_| ())
        .map_err(|e| anyhow::anyhow!("{url:?} is not a valid Redis URL: {e}"))
}

#[cfg(test)]
mod tests {
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
}
