//! The checks that TOML's types cannot express: values in range, names
//! unique, a lease longer than the deadline, a token off loopback.

use std::collections::HashSet;

use anyhow::bail;

use super::{Config, ENV_ADMIN_TOKEN, MAX_MEMORY_MB, QueueType, redact_url};

/// The longest an ordered handler may hold one delivery unacked through
/// its retries in place: well inside RabbitMQ's default consumer_timeout.
const ORDERED_HOLD_MAX_MS: u64 = 20 * 60 * 1000;

impl super::Redis {
    /// One deployment named, its keys complete, TLS only with `rediss://`,
    /// and a prefix that cannot break Cluster's hash tags.
    fn validate(&self) -> anyhow::Result<()> {
        let (single, sentinel, cluster) = (
            !self.url.is_empty(),
            !self.sentinels.is_empty() || !self.master_name.is_empty(),
            !self.cluster.is_empty(),
        );
        if cluster && (single || sentinel) {
            bail!(
                "key redis.cluster: set redis.url (one server), redis.sentinels (Sentinel) or redis.cluster (Cluster), not several"
            );
        }
        if !single && !sentinel && !cluster {
            bail!(
                "key redis.url: missing: set redis.url (one server), redis.sentinels with redis.master_name (Sentinel) or redis.cluster (Cluster)"
            );
        }
        if sentinel && self.sentinels.is_empty() {
            bail!("key redis.sentinels: redis.master_name is set, so list the sentinels too");
        }
        if sentinel && self.master_name.is_empty() {
            bail!(
                "key redis.master_name: missing: the name the sentinels monitor the master under"
            );
        }
        let mut seen = HashSet::new();
        for (key, url) in self.urls() {
            if !seen.insert(url) {
                bail!("key {key}: {} is listed twice", redact_url(url));
            }
        }
        if self.tls.is_set() && !self.urls().iter().any(|(_, u)| u.starts_with("rediss://")) {
            bail!("key redis.tls: certificates are set but no Redis URL is rediss://");
        }
        if self.read_cache_mb > 4096 {
            bail!(
                "key redis.read_cache_mb: {} MiB is more than the 4096 allowed (0 turns the cache off)",
                self.read_cache_mb
            );
        }
        // Cluster hash tags are the first `{...}` of a key name: the
        // prefix comes first, so a brace in it would decide the slot.
        if cluster && self.prefix.contains(['{', '}']) {
            bail!(
                "key redis.prefix: {:?} holds a brace, which would decide the Cluster slot of every key (docs/semantics.md, \"Redis Cluster\")",
                self.prefix
            );
        }
        Ok(())
    }
}

impl Config {
    pub(super) fn validate(&self) -> anyhow::Result<()> {
        if let Some(addr) = self.admin.listen
            && !addr.ip().is_loopback()
            && self.admin.token().is_none()
        {
            bail!(
                "key admin.listen: {addr} is not a loopback address, so admin.token (or {ENV_ADMIN_TOKEN}) must be set"
            );
        }
        let amqps = self.amqp.urls.iter().any(|u| u.starts_with("amqps://"));
        if self.amqp.tls.is_set() && !amqps {
            bail!("key amqp.tls: certificates are set but no AMQP URL is amqps://");
        }
        if let Some(r) = &self.redis {
            r.validate()?;
        }
        if self.admin.max_upload_mb == 0 {
            bail!("key admin.max_upload_mb: must be at least 1");
        }
        // The live and the previous version are always kept.
        if self.runtime.keep_versions < 2 {
            bail!(
                "key runtime.keep_versions: {} is too few: the live and the previous version are always kept, so at least 2",
                self.runtime.keep_versions
            );
        }
        if let Some(url) = &self.telemetry.otlp_endpoint
            && !url.starts_with("http://")
        {
            bail!(
                "key telemetry.otlp_endpoint: {:?} is not an http:// URL (OTLP/HTTP without TLS: send to a collector on this host or its network, which may forward over TLS)",
                redact_url(url)
            );
        }
        if self.deploy.require_signed && self.deploy.trusted_keys.is_empty() {
            bail!(
                "key deploy.require_signed: no key could sign a module: list at least one in deploy.trusted_keys"
            );
        }
        if let Some(f) = &self.fleet
            && (f.exchange.is_empty() || f.exchange.starts_with("amq."))
        {
            bail!(
                "key fleet.exchange: {:?} cannot be used: name an exchange that is not empty and does not start with \"amq.\"",
                f.exchange
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
                ("max_message_bytes", h.max_message_bytes),
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
            // the handler still runs and let a duplicate in (docs/semantics.md).
            if h.dedup.enabled && h.dedup.lease_ms <= h.timeout_ms {
                bail!(
                    "{}: the lease ({} ms) must be longer than timeout_ms ({} ms)",
                    at("dedup.lease_ms"),
                    h.dedup.lease_ms,
                    h.timeout_ms
                );
            }
            if let Some(ns) = &h.kv.namespace
                && (ns.is_empty()
                    || !ns
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)))
            {
                bail!(
                    "{}: {ns:?} must be non-empty ASCII letters, digits, '-', '_' or '.'",
                    at("kv.namespace")
                );
            }
            for (key, v) in [
                ("kv.max_key_bytes", h.kv.max_key_bytes),
                ("kv.max_value_bytes", h.kv.max_value_bytes),
                ("kv.max_writes", h.kv.max_writes),
                ("kv.max_write_bytes", h.kv.max_write_bytes),
            ] {
                if v == 0 {
                    bail!("{}: must be at least 1", at(key));
                }
            }
            if let Some(http) = &h.http {
                http.patterns()
                    .map_err(|e| anyhow::anyhow!("{}: {e}", at("http.allow")))?;
                for (key, v) in [
                    ("http.timeout_ms", http.timeout_ms),
                    ("http.max_response_bytes", http.max_response_bytes),
                    ("http.max_requests", u64::from(http.max_requests)),
                ] {
                    if v == 0 {
                        bail!("{}: must be at least 1", at(key));
                    }
                }
                if let Some(ca) = &http.ca_file
                    && !ca.is_file()
                {
                    bail!(
                        "{}: CA file {} does not exist",
                        at("http.ca_file"),
                        ca.display()
                    );
                }
            }
            match (h.delivery_limit, h.queue_type) {
                (Some(_), QueueType::Classic) => bail!(
                    "{}: only quorum queues have a delivery limit; set queue_type = \"quorum\" or remove the key",
                    at("delivery_limit")
                ),
                (Some(0), _) => bail!("{}: must be at least 1", at("delivery_limit")),
                _ => {}
            }
            // An ordered retry holds the delivery unacked through every
            // attempt and backoff; RabbitMQ closes the channel of a delivery
            // unacked past its consumer_timeout (30 min by default).
            let held = u64::from(h.retry.max_attempts)
                .saturating_mul(h.timeout_ms.saturating_add(h.retry.max_backoff_ms));
            if h.ordered && held > ORDERED_HOLD_MAX_MS {
                bail!(
                    "{}: an ordered handler holds a failing message unacked for up to max_attempts x (timeout_ms + retry.max_backoff_ms) = {} s, over {} s (RabbitMQ's consumer_timeout is 30 min by default): lower retry.max_attempts or retry.max_backoff_ms",
                    at("ordered"),
                    held / 1000,
                    ORDERED_HOLD_MAX_MS / 1000
                );
            }
            if let Some(b) = &h.bind
                && b.exchange.is_empty()
            {
                bail!(
                    "{}: the default exchange cannot be bound; name an exchange",
                    at("bind.exchange")
                );
            }
        }
        Ok(())
    }
}
