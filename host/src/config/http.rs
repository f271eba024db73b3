//! `[handler.http]`: the destinations a handler may reach over outbound
//! HTTP, and the patterns of its `allow` list.
//!
//! A pattern is `scheme://host[:port]`: the scheme is `http` or `https`;
//! the host is a name whose labels may each be `*` (one whole label, never
//! part of one, and never more than one label: `*.example.com` matches
//! `api.example.com`, not `example.com` nor `a.b.example.com`), a lone `*`
//! (any host), or an IP address (IPv6 in brackets); the port is a number
//! or `*`, and without one it is the scheme's own (80 or 443). Nothing
//! else: no path, no user, no query. Matching is on the request's scheme,
//! host (letter case ignored) and port, and nothing else.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::defaults;

/// `[handler.http]`. Without the table a handler makes no request at all.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Http {
    /// Destinations: `scheme://host[:port]` patterns (module docs).
    #[serde(default)]
    pub allow: Vec<String>,
    /// The longest one request may take, from sending it to the last byte
    /// of its response; never past the message's deadline.
    #[serde(default = "defaults::http_timeout_ms")]
    pub timeout_ms: u64,
    /// The most response body bytes a request may receive; past it the
    /// body ends with an error the guest sees.
    #[serde(default = "defaults::http_max_response_bytes")]
    pub max_response_bytes: u64,
    /// Requests one message may make (refusals included).
    #[serde(default = "defaults::http_max_requests")]
    pub max_requests: u32,
    /// Send an `Idempotency-Key` header derived from the message's dedup
    /// key and the request's ordinal in the message (docs/semantics.md).
    #[serde(default = "defaults::http_idempotency_header")]
    pub idempotency_header: bool,
    /// A PEM file of CA certificates trusted besides the system's roots;
    /// relative to the config file.
    pub ca_file: Option<PathBuf>,
}

impl Http {
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }

    /// The `allow` list, parsed; the first entry that does not parse is the
    /// error.
    pub fn patterns(&self) -> Result<Vec<HttpPattern>, String> {
        self.allow
            .iter()
            .map(|p| HttpPattern::parse(p).map_err(|e| format!("{p:?}: {e}")))
            .collect()
    }
}

/// A URL scheme a handler may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpScheme {
    Http,
    Https,
}

impl HttpScheme {
    pub fn default_port(self) -> u16 {
        match self {
            HttpScheme::Http => 80,
            HttpScheme::Https => 443,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            HttpScheme::Http => "http",
            HttpScheme::Https => "https",
        }
    }
}

/// One entry of `allow`, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpPattern {
    pub scheme: HttpScheme,
    /// Lowercase labels, `*` for any one label; empty for any host. An IP
    /// address is one "label" compared whole (IPv6 without brackets).
    host: Vec<String>,
    /// `None` for any port.
    port: Option<u16>,
}

impl HttpPattern {
    pub fn parse(text: &str) -> Result<Self, String> {
        let (scheme, rest) = text
            .split_once("://")
            .ok_or("expected scheme://host[:port], as in \"https://api.example.com\"")?;
        let scheme = match scheme.to_ascii_lowercase().as_str() {
            "http" => HttpScheme::Http,
            "https" => HttpScheme::Https,
            other => return Err(format!("scheme {other:?} is not http or https")),
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.contains(['/', '?', '#', '@']) {
            return Err("only scheme://host[:port]: no path, query or user".into());
        }
        let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
            let (addr, after) = v6.split_once(']').ok_or("unclosed '[' in an IPv6 host")?;
            addr.parse::<std::net::Ipv6Addr>()
                .map_err(|_| format!("{addr:?} is not an IPv6 address"))?;
            let port = match after {
                "" => Some(scheme.default_port()),
                p => parse_port(p.strip_prefix(':').ok_or("expected ':' after ']'")?)?,
            };
            return Ok(Self {
                scheme,
                host: vec![addr.to_ascii_lowercase()],
                port,
            });
        } else {
            match rest.rsplit_once(':') {
                Some((h, p)) => (h, parse_port(p)?),
                None => (rest, Some(scheme.default_port())),
            }
        };
        if host.is_empty() {
            return Err("the host is empty".into());
        }
        if host == "*" {
            return Ok(Self {
                scheme,
                host: Vec::new(),
                port,
            });
        }
        let labels: Vec<String> = host.split('.').map(str::to_ascii_lowercase).collect();
        for l in &labels {
            let ok = l == "*"
                || (!l.is_empty()
                    && l.len() <= 63
                    && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'));
            if !ok {
                return Err(format!(
                    "host label {l:?} is not a name label or '*' (a '*' stands for one whole label)"
                ));
            }
        }
        Ok(Self {
            scheme,
            host: labels,
            port,
        })
    }

    /// Whether the host part has a wildcard: such a grant names no one
    /// machine, so the runtime does not let it reach internal addresses
    /// (docs/security.md, "Outbound HTTP").
    pub fn host_is_wildcard(&self) -> bool {
        self.host.is_empty() || self.host.iter().any(|l| l == "*")
    }

    /// Whether a request to `scheme://host:port` matches. `host` is the
    /// request's host as its URL names it (an IPv6 address with or without
    /// brackets).
    pub fn matches(&self, scheme: HttpScheme, host: &str, port: u16) -> bool {
        if scheme != self.scheme || self.port.is_some_and(|p| p != port) {
            return false;
        }
        if self.host.is_empty() {
            return true;
        }
        let host = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        if host.contains(':') {
            // IPv6: one label, compared as addresses so that spellings agree.
            return self.host.len() == 1
                && match (
                    host.parse::<std::net::Ipv6Addr>(),
                    self.host[0].parse::<std::net::Ipv6Addr>(),
                ) {
                    (Ok(a), Ok(b)) => a == b,
                    _ => false,
                };
        }
        let labels: Vec<&str> = host.split('.').collect();
        labels.len() == self.host.len()
            && labels
                .iter()
                .zip(&self.host)
                .all(|(l, p)| p == "*" || l.eq_ignore_ascii_case(p))
    }
}

impl fmt::Display for HttpPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://", self.scheme.as_str())?;
        match self.host.as_slice() {
            [] => f.write_str("*")?,
            [one] if one.contains(':') => write!(f, "[{one}]")?,
            labels => f.write_str(&labels.join("."))?,
        }
        match self.port {
            Some(p) => write!(f, ":{p}"),
            None => f.write_str(":*"),
        }
    }
}

fn parse_port(p: &str) -> Result<Option<u16>, String> {
    if p == "*" {
        return Ok(None);
    }
    match p.parse::<u16>() {
        Ok(0) | Err(_) => Err(format!("port {p:?} is not a number from 1 to 65535 or '*'")),
        Ok(n) => Ok(Some(n)),
    }
}

#[cfg(test)]
mod tests {
    use super::HttpScheme::{Http, Https};
    use super::*;

    fn p(s: &str) -> HttpPattern {
        HttpPattern::parse(s).unwrap()
    }

    #[test]
    fn exact_hosts_and_default_ports() {
        let a = p("https://API.example.com");
        assert!(a.matches(Https, "api.example.com", 443));
        assert!(a.matches(Https, "Api.Example.COM", 443));
        assert!(!a.matches(Https, "api.example.com", 8443));
        assert!(!a.matches(Http, "api.example.com", 443));
        assert!(!a.matches(Https, "api.example.com.evil.net", 443));
        assert!(!a.matches(Https, "evil-api.example.com", 443));
        assert!(!a.matches(Https, "example.com", 443));
        assert_eq!(a.to_string(), "https://api.example.com:443");
    }

    #[test]
    fn a_star_is_one_whole_label_or_any_port() {
        let a = p("http://*.example.com:*");
        assert!(a.matches(Http, "api.example.com", 8080));
        assert!(!a.matches(Http, "example.com", 80));
        assert!(!a.matches(Http, "a.b.example.com", 80));
        assert!(!a.matches(Http, "api.example.org", 80));
        let any = p("http://127.0.0.1:*");
        assert!(any.matches(Http, "127.0.0.1", 1));
        assert!(!any.matches(Http, "127.0.0.2", 80));
        let all = p("https://*");
        assert!(all.matches(Https, "anything.at.all", 443));
        assert!(!all.matches(Https, "anything", 444));
        assert!(HttpPattern::parse("http://ap*.example.com").is_err());
    }

    #[test]
    fn ipv6_is_compared_as_an_address() {
        let a = p("http://[::1]:8080");
        assert!(a.matches(Http, "[::1]", 8080));
        assert!(a.matches(Http, "[0:0:0:0:0:0:0:1]", 8080));
        assert!(!a.matches(Http, "[::2]", 8080));
        assert!(!a.matches(Http, "127.0.0.1", 8080));
        assert_eq!(a.to_string(), "http://[::1]:8080");
    }

    #[test]
    fn bad_patterns_say_why() {
        for (bad, why) in [
            ("api.example.com", "scheme://host"),
            ("ftp://x", "not http or https"),
            ("http://x/path", "no path"),
            ("http://u:p@x", "no path, query or user"),
            ("http://x:0", "1 to 65535"),
            ("http://x:http", "1 to 65535"),
            ("http://", "empty"),
            ("http://a..b", "not a name label"),
            ("http://[zz]", "not an IPv6"),
        ] {
            let e = HttpPattern::parse(bad).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }
}
