//! `[handler.config]` values: a plain string, or a table that names where
//! the value comes from and whether it is a secret.
//!
//! ```toml
//! [handler.config]
//! region = "eu-west-1"                                  # plain
//! api_url = { env = "PRICE_API_URL" }                   # from the environment
//! api_key = { env = "PRICE_API_KEY", secret = true }    # ... and secret
//! db_pass = { file = "secrets/db-pass", secret = true } # from a file
//! token = { value = "t0k3n", secret = true }            # inline, secret
//! ```
//!
//! Values are read once, when the config is loaded; a missing variable or
//! unreadable file is a start-up error naming the handler and the key (never
//! the value). A file's one trailing line break (`\n` or `\r\n`) is dropped,
//! since most tools that write a secret to a file end it with one. Secrets
//! are registered with the log writer ([`super::Config::secrets`]), so they
//! show as `***` in every log line and error, and `Debug` shows them as
//! `***` too. The admin endpoint and `warren status` show no config values
//! at all.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde::de::{self, MapAccess, Visitor};

/// One `[handler.config]` value. After [`crate::config::Config::load`],
/// [`ConfigValue::value`] holds the resolved text.
#[derive(Clone, PartialEq, Eq)]
pub struct ConfigValue {
    value: String,
    /// Where the value came from.
    pub source: ConfigSource,
    /// Never logged, never shown.
    pub secret: bool,
}

/// Where a `[handler.config]` value comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigSource {
    /// Written in the config file.
    Inline,
    /// The environment variable of this name.
    Env(String),
    /// The file at this path (relative to the config file).
    File(PathBuf),
}

impl ConfigValue {
    /// A plain, inline value (what `key = "text"` reads as).
    pub fn plain(value: impl Into<String>) -> Self {
        Self {
            value: value.into(),
            source: ConfigSource::Inline,
            secret: false,
        }
    }

    /// The value the guest sees.
    pub fn value(&self) -> &str {
        &self.value
    }

    /// Reads the value from its source (the environment through `env`, a
    /// file relative to `base`). The error names the source, never the
    /// value.
    pub(super) fn resolve(
        &mut self,
        base: &Path,
        env: &impl Fn(&str) -> Option<String>,
    ) -> anyhow::Result<()> {
        match &mut self.source {
            ConfigSource::Inline => {}
            ConfigSource::Env(name) => {
                self.value = env(name).ok_or_else(|| {
                    anyhow::anyhow!("environment variable {name} is not set (or is empty)")
                })?;
            }
            ConfigSource::File(path) => {
                if path.is_relative() {
                    *path = base.join(&*path);
                }
                let text = std::fs::read_to_string(&*path)
                    .map_err(|e| anyhow::anyhow!("cannot read file {}: {e}", path.display()))?;
                let text = text
                    .strip_suffix("\r\n")
                    .or_else(|| text.strip_suffix('\n'))
                    .unwrap_or(&text);
                self.value = text.to_string();
            }
        }
        Ok(())
    }
}

impl fmt::Debug for ConfigValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("ConfigValue");
        if self.secret {
            d.field("value", &"***");
        } else {
            d.field("value", &self.value);
        }
        d.field("source", &self.source)
            .field("secret", &self.secret)
            .finish()
    }
}

/// The table form, as the TOML reads.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Table {
    value: Option<String>,
    env: Option<String>,
    file: Option<PathBuf>,
    #[serde(default)]
    secret: bool,
}

impl<'de> Deserialize<'de> for ConfigValue {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = ConfigValue;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(
                    "a string, or a table with one of `value`, `env` or `file` (and optionally `secret = true`)",
                )
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<ConfigValue, E> {
                Ok(ConfigValue::plain(v))
            }

            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<ConfigValue, A::Error> {
                let t = Table::deserialize(de::value::MapAccessDeserializer::new(map))?;
                let (value, source) = match (t.value, t.env, t.file) {
                    (Some(v), None, None) => (v, ConfigSource::Inline),
                    (None, Some(name), None) if !name.is_empty() => {
                        (String::new(), ConfigSource::Env(name))
                    }
                    (None, None, Some(path)) if !path.as_os_str().is_empty() => {
                        (String::new(), ConfigSource::File(path))
                    }
                    _ => {
                        return Err(de::Error::custom(
                            "a config value table needs exactly one of `value`, `env` (a variable name) or `file` (a path)",
                        ));
                    }
                };
                Ok(ConfigValue {
                    value,
                    source,
                    secret: t.secret,
                })
            }
        }
        d.deserialize_any(V)
    }
}

impl super::Handler {
    /// The resolved `[handler.config]` values, as the guest sees them.
    pub fn config_values(&self) -> std::collections::BTreeMap<String, String> {
        self.config
            .iter()
            .map(|(k, v)| (k.clone(), v.value.clone()))
            .collect()
    }

    /// The values marked `secret = true`.
    pub fn secret_config_values(&self) -> impl Iterator<Item = String> + '_ {
        self.config
            .values()
            .filter(|v| v.secret && !v.value.is_empty())
            .map(|v| v.value.clone())
    }
}
