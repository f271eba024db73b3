//! The config file (`warren run --config FILE`): TOML, read once at start.
//!
//! Owns parsing, defaults, environment overrides and validation, so that the
//! rest of the host gets values it can use as they are. Every error names the
//! file, the key (TOML's own errors give the line) and what was expected;
//! unknown keys are errors.
//!
//! The bottom layer: it imports no other module of the crate. What only the
//! client libraries can check (that a URL is one lapin or redis accepts) is
//! checked by `amqp::validate_url` and `dedup::validate_url`, which
//! `server::load_config` calls after [`Config::load`].
//!
//! - this file: the types, as the TOML reads;
//! - `defaults.rs`: the default of every optional key;
//! - `load.rs`: reading, environment overrides, relative paths;
//! - `validate.rs`: the checks that need more than one key;
//! - `redact.rs`: URLs without their passwords, for logs and errors.

mod defaults;
mod http;
mod load;
mod redact;
#[cfg(test)]
mod tests;
mod validate;
mod values;

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

pub use http::{Http, HttpPattern, HttpScheme};
pub use load::default_module_cache_dir;
pub use redact::{redact_url, secrets_of_url};
pub use values::{ConfigSource, ConfigValue};

/// The environment variable that overrides `amqp.url`.
pub const ENV_AMQP_URL: &str = "WARREN_AMQP_URL";
/// The environment variable that overrides `amqp.urls`: URLs separated by
/// commas. `WARREN_AMQP_URL` wins over it.
pub const ENV_AMQP_URLS: &str = "WARREN_AMQP_URLS";
/// The environment variable that overrides `redis.url`.
pub const ENV_REDIS_URL: &str = "WARREN_REDIS_URL";
/// The environment variable that overrides `redis.sentinels` (URLs separated
/// by commas).
pub const ENV_REDIS_SENTINELS: &str = "WARREN_REDIS_SENTINELS";
/// The environment variable that overrides `redis.master_name`.
pub const ENV_REDIS_MASTER_NAME: &str = "WARREN_REDIS_MASTER_NAME";
/// The environment variable that overrides `redis.cluster` (URLs separated
/// by commas).
pub const ENV_REDIS_CLUSTER: &str = "WARREN_REDIS_CLUSTER";
/// The environment variable that sets `amqp.bookkeeping_key`.
pub const ENV_BOOKKEEPING_KEY: &str = "WARREN_BOOKKEEPING_KEY";
/// The environment variable that sets `admin.token`.
pub const ENV_ADMIN_TOKEN: &str = "WARREN_ADMIN_TOKEN";
/// The standard variables that set `telemetry.otlp_endpoint` (the traces
/// one wins, and is taken as the full URL) and `telemetry.service_name`.
pub const ENV_OTLP_ENDPOINT: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";
pub const ENV_OTLP_TRACES_ENDPOINT: &str = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT";
pub const ENV_SERVICE_NAME: &str = "OTEL_SERVICE_NAME";

/// `[telemetry]`: OpenTelemetry traces over OTLP/HTTP (protobuf).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Telemetry {
    /// The collector's OTLP/HTTP base URL (`http://127.0.0.1:4318`); spans
    /// go to `/v1/traces` under it. Off when unset.
    pub otlp_endpoint: Option<String>,
    /// `service.name` of the spans.
    #[serde(default = "defaults::service_name")]
    pub service_name: String,
    /// Set from `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`: the endpoint is the
    /// full URL, not a base.
    #[serde(skip)]
    pub endpoint_is_full_url: bool,
}

impl Default for Telemetry {
    fn default() -> Self {
        Telemetry {
            otlp_endpoint: None,
            service_name: defaults::service_name(),
            endpoint_is_full_url: false,
        }
    }
}

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
    /// OpenTelemetry traces; off unless an endpoint is set.
    #[serde(default)]
    pub telemetry: Telemetry,
    /// Which module signatures every deploy path accepts.
    #[serde(default)]
    pub deploy: DeploySection,
    /// Fleet deploys through the broker; off without the section.
    pub fleet: Option<Fleet>,
    /// The file this was read from; set by [`Config::load`].
    #[serde(skip)]
    pub path: PathBuf,
}

#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Amqp {
    /// One broker. After [`Config::load`]: the first of [`Amqp::urls`],
    /// whichever of the two keys the file set.
    #[serde(default)]
    pub url: String,
    /// Several nodes of one cluster: a host connects to one of them,
    /// starting at a random one so that hosts spread over the nodes, and
    /// moves to the next when it cannot connect or loses its connection.
    /// After [`Config::load`] it holds every endpoint, also when the file
    /// set only `url`.
    #[serde(default)]
    pub urls: Vec<String>,
    /// Longest wait between reconnection attempts.
    #[serde(default = "defaults::reconnect_max_ms")]
    pub reconnect_max_ms: u64,
    /// Certificates for `amqps://` URLs (`[amqp.tls]`).
    #[serde(default)]
    pub tls: Tls,
    /// The secret that signs warren's bookkeeping headers (attempt, first
    /// exchange and routing key), shared by every process of a group;
    /// `WARREN_BOOKKEEPING_KEY` wins. Without it the AMQP URL (with its
    /// password) is the secret, which protects only against publishers
    /// that do not know warren's broker credentials.
    pub bookkeeping_key: Option<String>,
}

impl Amqp {
    /// The secret that signs the bookkeeping headers: the key, or else the
    /// broker URLs (sorted, so hosts that list the same nodes in another
    /// order agree; one URL alone is the secret it always was).
    pub fn bookkeeping_secret(&self) -> String {
        if let Some(key) = &self.bookkeeping_key {
            return key.clone();
        }
        let mut urls = self.endpoints().to_vec();
        urls.sort();
        urls.join("\n")
    }

    /// The broker endpoints, at least one after [`Config::load`].
    pub fn endpoints(&self) -> &[String] {
        &self.urls
    }
}

#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Redis {
    /// One Redis server. With `sentinels`, only its user, password,
    /// database and scheme are used, for the master the sentinels name.
    /// Empty when not set.
    #[serde(default)]
    pub url: String,
    /// Redis Sentinel: the sentinels' URLs (each with its own user and
    /// password, if the sentinels want one). The store follows the master
    /// they name for `master_name`.
    #[serde(default)]
    pub sentinels: Vec<String>,
    /// The name the sentinels monitor the master under.
    #[serde(default)]
    pub master_name: String,
    /// Redis Cluster: the URLs of some of its nodes (the rest are found
    /// from them).
    #[serde(default)]
    pub cluster: Vec<String>,
    /// Every dedup key starts with this, then the handler name.
    #[serde(default = "defaults::redis_prefix")]
    pub prefix: String,
    #[serde(default)]
    pub on_unavailable: OnUnavailable,
    /// MiB of committed key-value values kept in the process (one server
    /// only; 0 turns it off). See docs/semantics.md, "Reads".
    #[serde(default = "defaults::read_cache_mb")]
    pub read_cache_mb: u32,
    /// Certificates for a `rediss://` URL (`[redis.tls]`).
    #[serde(default)]
    pub tls: Tls,
}

/// Which Redis deployment `[redis]` names: one server, a master followed
/// through Sentinel, or a Cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RedisServers<'a> {
    /// `url`.
    Single(&'a str),
    /// `sentinels` and `master_name`; `url`, when set, gives the user,
    /// password, database and scheme for the master.
    Sentinel {
        sentinels: &'a [String],
        master_name: &'a str,
        node_url: Option<&'a str>,
    },
    /// `cluster`.
    Cluster(&'a [String]),
}

impl Redis {
    /// The deployment this section names (checked by [`Config::load`]:
    /// exactly one of them).
    pub fn servers(&self) -> RedisServers<'_> {
        if !self.cluster.is_empty() {
            RedisServers::Cluster(&self.cluster)
        } else if !self.sentinels.is_empty() {
            RedisServers::Sentinel {
                sentinels: &self.sentinels,
                master_name: &self.master_name,
                node_url: (!self.url.is_empty()).then_some(self.url.as_str()),
            }
        } else {
            RedisServers::Single(&self.url)
        }
    }

    /// Every URL of the section, with the key that names it, for checks
    /// and error messages.
    pub fn urls(&self) -> Vec<(&'static str, &str)> {
        let mut out = Vec::new();
        if !self.url.is_empty() {
            out.push(("redis.url", self.url.as_str()));
        }
        out.extend(
            self.sentinels
                .iter()
                .map(|u| ("redis.sentinels", u.as_str())),
        );
        out.extend(self.cluster.iter().map(|u| ("redis.cluster", u.as_str())));
        out
    }
}

/// The certificates of a TLS connection (`amqps://`, `rediss://`), as PEM
/// files; relative paths are relative to the config file. Each key has an
/// environment override, `WARREN_AMQP_TLS_*` and `WARREN_REDIS_TLS_*`
/// (`CA_FILE`, `CERT_FILE`, `KEY_FILE`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tls {
    /// CA certificates the server's certificate may chain to. For AMQP
    /// they are trusted besides the system's roots; for Redis, instead of
    /// them (what each client library does with a CA).
    pub ca_file: Option<PathBuf>,
    /// A client certificate (chain), for servers that ask for one; needs
    /// `key_file`.
    pub cert_file: Option<PathBuf>,
    /// The client certificate's private key (PKCS#8, PKCS#1 or SEC1 PEM).
    pub key_file: Option<PathBuf>,
}

/// What [`Tls`] names, read: the PEM texts the client libraries take. The
/// key never shows in `Debug`.
#[derive(Clone, Default)]
pub struct TlsPem {
    pub ca: Option<Vec<u8>>,
    /// Client certificate and key.
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
}

impl fmt::Debug for TlsPem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsPem")
            .field("ca", &self.ca.as_ref().map(Vec::len))
            .field("identity", &self.identity.as_ref().map(|_| "***"))
            .finish()
    }
}

impl Tls {
    /// Whether any file is set.
    pub fn is_set(&self) -> bool {
        self.ca_file.is_some() || self.cert_file.is_some() || self.key_file.is_some()
    }

    /// Reads the files. `section` (`amqp.tls`, `redis.tls`) names the keys
    /// in errors.
    pub fn read(&self, section: &str) -> anyhow::Result<TlsPem> {
        let read = |key: &str, path: &PathBuf| {
            std::fs::read(path).map_err(|e| {
                anyhow::anyhow!("key {section}.{key}: cannot read {}: {e}", path.display())
            })
        };
        // The pairing first: a config mistake before any file is read.
        match (&self.cert_file, &self.key_file) {
            (Some(_), None) => {
                anyhow::bail!("key {section}.key_file: missing: cert_file needs the key")
            }
            (None, Some(_)) => {
                anyhow::bail!("key {section}.cert_file: missing: key_file needs the certificate")
            }
            _ => {}
        }
        let ca = self
            .ca_file
            .as_ref()
            .map(|p| read("ca_file", p))
            .transpose()?;
        let identity = match (&self.cert_file, &self.key_file) {
            (Some(c), Some(k)) => Some((read("cert_file", c)?, read("key_file", k)?)),
            _ => None,
        };
        Ok(TlsPem { ca, identity })
    }
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

#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Admin {
    /// Where the admin endpoint listens (health, readiness, metrics,
    /// deploy); off when unset.
    pub listen: Option<SocketAddr>,
    /// Bearer token the admin endpoint requires; `WARREN_ADMIN_TOKEN` wins.
    /// Empty means none.
    pub token: Option<String>,
    /// Host names the endpoint answers to besides its listen address,
    /// `localhost` and loopback addresses (a name behind a proxy, say). A
    /// request naming any other host is refused: it may come from a web page
    /// through DNS rebinding.
    #[serde(default)]
    pub allowed_hosts: Vec<String>,
    /// The largest module `PUT /handlers/NAME/module` accepts, in MiB
    /// (interpreted guests carry their interpreter: tens of MiB). One upload
    /// is received at a time.
    #[serde(default = "defaults::max_upload_mb")]
    pub max_upload_mb: u32,
}

impl Default for Admin {
    fn default() -> Self {
        Self {
            listen: None,
            token: None,
            allowed_hosts: Vec::new(),
            max_upload_mb: defaults::max_upload_mb(),
        }
    }
}

impl Admin {
    /// The token, when one is set (an empty one is none).
    pub fn token(&self) -> Option<&str> {
        self.token.as_deref().filter(|t| !t.is_empty())
    }
}

// The URL and token holders show their secrets redacted, so a `{:?}` of the
// config in a log line or a panic leaks nothing.
impl fmt::Debug for Amqp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let urls: Vec<String> = self.urls.iter().map(|u| redact_url(u)).collect();
        f.debug_struct("Amqp")
            .field("urls", &urls)
            .field("reconnect_max_ms", &self.reconnect_max_ms)
            .finish()
    }
}

impl fmt::Debug for Redis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let redacted = |urls: &[String]| urls.iter().map(|u| redact_url(u)).collect::<Vec<_>>();
        f.debug_struct("Redis")
            .field("url", &redact_url(&self.url))
            .field("sentinels", &redacted(&self.sentinels))
            .field("master_name", &self.master_name)
            .field("cluster", &redacted(&self.cluster))
            .field("prefix", &self.prefix)
            .field("on_unavailable", &self.on_unavailable)
            .field("read_cache_mb", &self.read_cache_mb)
            .finish()
    }
}

impl fmt::Debug for Admin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Admin")
            .field("listen", &self.listen)
            .field("token", &self.token().map(|_| "***"))
            .field("allowed_hosts", &self.allowed_hosts)
            .field("max_upload_mb", &self.max_upload_mb)
            .finish()
    }
}

impl Config {
    /// Every secret the config holds (URL passwords, the admin token), for
    /// the log writer to hide wherever one turns up, also inside a client
    /// library's error text.
    pub fn secrets(&self) -> Vec<String> {
        let mut out = secrets_of_url(&self.amqp.url);
        for url in &self.amqp.urls {
            out.extend(secrets_of_url(url));
        }
        if let Some(r) = &self.redis {
            out.extend(secrets_of_url(&r.url));
            for url in r.sentinels.iter().chain(&r.cluster) {
                out.extend(secrets_of_url(url));
            }
        }
        out.extend(self.admin.token().map(str::to_string));
        // `[handler.config]` values marked `secret = true`.
        for h in &self.handlers {
            out.extend(h.secret_config_values());
        }
        if let Some(url) = self.fleet.as_ref().and_then(|f| f.url.as_ref()) {
            out.extend(secrets_of_url(url));
        }
        out
    }
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
    /// Module versions kept in memory per handler (live and previous
    /// included) so a redeploy skips compiling; older ones are dropped, with
    /// their metric series.
    #[serde(default = "defaults::keep_versions")]
    pub keep_versions: u32,
}

impl Default for RuntimeSection {
    fn default() -> Self {
        Self {
            shutdown_timeout_ms: defaults::shutdown_timeout_ms(),
            cache_dir: None,
            keep_versions: defaults::keep_versions(),
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
    /// Quorum queues only: how many times the broker may hand out a
    /// delivery that comes back unsettled (its consumer's connection or
    /// process died with it) before it dead-letters the message to the
    /// dead-letter queue (`x-delivery-limit`); default
    /// [`DEFAULT_DELIVERY_LIMIT`]. Failures the handler reports go through
    /// `retry` and do not count (docs/semantics.md, "Quorum queues").
    pub delivery_limit: Option<u32>,
    /// One message at a time, in queue order, across every host: a single
    /// active consumer on the queue, and a failed message retried in place
    /// (docs/semantics.md, "Ordered mode"). `consumers`, `channels`,
    /// `prefetch` and `max_batch` are then 1.
    #[serde(default)]
    pub ordered: bool,
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
    /// waits to fill; its messages run one after another (four at a time
    /// for a module that sends HTTP requests), so a slow one delays the
    /// settling of the others in its batch. 1 handles every
    /// message on its own, up to `consumers` at once.
    #[serde(default = "defaults::max_batch")]
    pub max_batch: u32,
    /// Wall-clock deadline of one run (instantiate and `handle`), whether
    /// the guest computes or waits in a WASI call.
    #[serde(default = "defaults::timeout_ms")]
    pub timeout_ms: u64,
    /// Cap on one instance's linear memories and tables, all together.
    #[serde(default = "defaults::memory_mb")]
    pub memory_mb: u32,
    /// The largest message body this handler takes; a larger one is
    /// dead-lettered at once (kind `body-too-large`), before any claim or
    /// guest run. The guest's memory cap bounds it too (see
    /// [`Handler::body_limit`]).
    #[serde(default = "defaults::max_message_bytes")]
    pub max_message_bytes: u64,
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
    /// The key-value store (`warren:handler/kv`): namespace and limits.
    #[serde(default)]
    pub kv: Kv,
    /// Outbound HTTP (`wasi:http/outgoing-handler`); without the table
    /// every request the handler makes is refused.
    pub http: Option<Http>,
    /// Key/values handed to the guest through `config`: a plain string, or
    /// a table that reads the value from an environment variable or a file
    /// and may mark it secret (see [`ConfigValue`]).
    #[serde(default)]
    pub config: BTreeMap<String, ConfigValue>,
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
    #[serde(default)]
    pub exchange_type: ExchangeType,
    #[serde(default)]
    pub routing_keys: Vec<String>,
}

/// The kind of exchange `bind.exchange` is declared as.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ExchangeType {
    Direct,
    #[default]
    Topic,
    Fanout,
    Headers,
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

/// The `x-delivery-limit` of a quorum work queue when the handler sets none:
/// RabbitMQ 4's own default for quorum queues.
pub const DEFAULT_DELIVERY_LIMIT: u32 = 20;

/// The largest memory cap a handler may ask for.
pub const MAX_MEMORY_MB: u32 = 4096;

impl Handler {
    pub fn dead_letter_queue(&self) -> String {
        self.dead_letter_queue
            .clone()
            .unwrap_or_else(|| format!("{}.dead", self.queue))
    }

    /// The quorum work queue's `x-delivery-limit`; none for a classic queue.
    pub fn delivery_limit(&self) -> Option<u32> {
        (self.queue_type == QueueType::Quorum)
            .then(|| self.delivery_limit.unwrap_or(DEFAULT_DELIVERY_LIMIT))
    }

    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }

    /// The largest body a message may have to be handled: `max_message_bytes`,
    /// and never more than the guest's memory cap, since the body is copied
    /// into the guest's memory (a body the guest cannot hold would only
    /// fail in the guest, attempt after attempt, each copying it again).
    pub fn body_limit(&self) -> u64 {
        self.max_message_bytes.min(u64::from(self.memory_mb) << 20)
    }

    /// Why a body of `size` bytes is not handled (over
    /// [`Handler::body_limit`]), or none: the reason `warren run`
    /// dead-letters it with (kind `body-too-large`), and `warren test`
    /// reports.
    pub fn body_refusal(&self, size: u64) -> Option<String> {
        let limit = self.body_limit();
        (size > limit).then(|| {
            format!(
                "message body is {size} bytes; handler {} takes at most {limit} (max_message_bytes, and the guest's memory_mb)",
                self.name
            )
        })
    }

    /// How many batches may be in flight at once on a machine with `cores`
    /// CPUs: enough to hold `consumers` messages in batches of `max_batch`,
    /// and at least one per core (up to `consumers`), because a batch runs
    /// its messages one after another on one thread, and a guest mostly
    /// computes, so batches beyond the cores would not run guests faster,
    /// and fewer would leave cores idle. (A guest that sends HTTP requests
    /// mostly waits: its batch runs several at once instead, see
    /// `runtime::RUNS_AT_ONCE`.)
    pub fn batch_slots(&self, cores: u32) -> u32 {
        let to_hold = self.consumers.div_ceil(self.max_batch.max(1));
        to_hold.max(cores.min(self.consumers)).max(1)
    }
}

// ---- The key-value store (`[handler.kv]`) ----

/// `[handler.kv]`: where a handler's keys live and how much one message may
/// write.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Kv {
    /// The namespace; default the handler's name. Handlers that name the
    /// same namespace share its keys; no other handler sees them.
    pub namespace: Option<String>,
    #[serde(default = "defaults::kv_max_key_bytes")]
    pub max_key_bytes: u32,
    #[serde(default = "defaults::kv_max_value_bytes")]
    pub max_value_bytes: u32,
    /// Writes (set, delete, increment, compare-and-swap) per message.
    #[serde(default = "defaults::kv_max_writes")]
    pub max_writes: u32,
    /// Bytes of keys and values one message may write, all writes together.
    #[serde(default = "defaults::kv_max_write_bytes")]
    pub max_write_bytes: u32,
}

impl Default for Kv {
    fn default() -> Self {
        Self {
            namespace: None,
            max_key_bytes: defaults::kv_max_key_bytes(),
            max_value_bytes: defaults::kv_max_value_bytes(),
            max_writes: defaults::kv_max_writes(),
            max_write_bytes: defaults::kv_max_write_bytes(),
        }
    }
}

impl Handler {
    /// The key-value namespace: `kv.namespace`, or the handler's name.
    pub fn kv_namespace(&self) -> &str {
        self.kv.namespace.as_deref().unwrap_or(&self.name)
    }
}

// ---- Signed modules and fleet deploys (`[deploy]`, `[fleet]`) ----

/// `[deploy]`: the signatures a module needs, on every path a module takes
/// (the config at start, a file change, an admin upload, a fleet deploy).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeploySection {
    /// Public keys (`ed25519:<64 hex digits>`, as `warren keygen` prints
    /// them) whose signatures are accepted. When the list is not empty, a
    /// module signed by any other key is refused.
    #[serde(default)]
    pub trusted_keys: Vec<String>,
    /// Refuse unsigned modules. Needs at least one trusted key.
    #[serde(default)]
    pub require_signed: bool,
}

/// `[fleet]`: this host follows the fleet's desired versions on the broker
/// and answers `warren deploy --fleet` and `warren status --fleet`.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fleet {
    /// The broker (and vhost) of the fleet's control exchange and desired
    /// state; default `amqp.url`. A connection of its own, so a module of
    /// tens of MiB never queues behind or ahead of message traffic.
    pub url: Option<String>,
    /// The control exchange; the desired-state streams are named after it.
    #[serde(default = "defaults::fleet_exchange")]
    pub exchange: String,
    /// This host's name in fleet reports; default `HOSTNAME.PID`.
    pub host_id: Option<String>,
}

impl fmt::Debug for Fleet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Fleet")
            .field("url", &self.url.as_deref().map(redact_url))
            .field("exchange", &self.exchange)
            .field("host_id", &self.host_id)
            .finish()
    }
}
