//! Who may call the admin endpoint, checked before any route runs.
//!
//! The caller is trusted with deploys, so the checks keep out everyone who
//! is not a deliberate operator: a wrong or empty bearer token; a web page
//! that reaches a loopback endpoint through DNS rebinding (its requests name
//! the attacker's host in `Host`); and a web page that posts across sites
//! (a cross-site `Origin`, or, without a token, a request lacking the
//! [`ADMIN_HEADER`] a browser cannot add cross-site without a preflight the
//! endpoint never grants). It decides on headers only; it never reads a
//! body or the host's state.

use std::net::{IpAddr, SocketAddr};

use axum::http::{HeaderMap, Method, StatusCode, header};
use sha2::{Digest as _, Sha256};

pub use crate::client::ADMIN_HEADER;

/// The checks, built once from the `[admin]` config.
#[derive(Clone)]
pub(super) struct Guard {
    /// SHA-256 of the token, when one is set (an empty one is none).
    token: Option<[u8; 32]>,
    /// Host names accepted besides `localhost` and IP literals, lowercase.
    hosts: Vec<String>,
}

impl std::fmt::Debug for Guard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Guard")
            .field("token", &self.token.map(|_| "***"))
            .field("hosts", &self.hosts)
            .finish()
    }
}

/// Why a request was refused: its status and the line the caller reads.
pub(super) type Refusal = (StatusCode, String);

impl Guard {
    pub(super) fn new(token: Option<&str>, allowed_hosts: &[String]) -> Guard {
        Guard {
            token: token
                .filter(|t| !t.is_empty())
                .map(|t| Sha256::digest(t.as_bytes()).into()),
            hosts: allowed_hosts
                .iter()
                .map(|h| h.to_ascii_lowercase())
                .collect(),
        }
    }

    /// Checks only the `Host` header: for the dashboard page, which holds
    /// no data and which a browser loads without the token.
    pub(super) fn check_host(&self, headers: &HeaderMap) -> Result<(), Refusal> {
        let host = headers.get(header::HOST).and_then(|v| v.to_str().ok());
        if let Some(host) = host
            && !self.host_allowed(host)
        {
            return Err((
                StatusCode::FORBIDDEN,
                format!(
                    "host {host:?} is not this admin endpoint's: use an IP address or localhost, or add the name to admin.allowed_hosts\n"
                ),
            ));
        }
        Ok(())
    }

    /// Checks one request's method and headers.
    pub(super) fn check(&self, method: &Method, headers: &HeaderMap) -> Result<(), Refusal> {
        self.check_host(headers)?;
        let host = headers.get(header::HOST).and_then(|v| v.to_str().ok());
        if let Some(token) = &self.token {
            let given = headers
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "));
            if !given.is_some_and(|g| same_token(token, g)) {
                return Err((
                    StatusCode::UNAUTHORIZED,
                    "missing or wrong bearer token\n".into(),
                ));
            }
        }
        if method == Method::GET || method == Method::HEAD {
            return Ok(());
        }
        if let Some(origin) = headers.get(header::ORIGIN) {
            let origin = origin.to_str().unwrap_or("?");
            let same = host.is_some_and(|h| {
                origin.eq_ignore_ascii_case(&format!("http://{h}"))
                    || origin.eq_ignore_ascii_case(&format!("https://{h}"))
            });
            if !same {
                return Err((
                    StatusCode::FORBIDDEN,
                    format!("cross-origin {method} from {origin:?} refused\n"),
                ));
            }
        }
        if self.token.is_none() && !headers.contains_key(ADMIN_HEADER) {
            return Err((
                StatusCode::FORBIDDEN,
                format!(
                    "{method} needs the header {ADMIN_HEADER}: 1 when no admin.token is set (warren deploy and rollback send it)\n"
                ),
            ));
        }
        Ok(())
    }

    /// An IP literal (a DNS-rebinding page cannot make a browser send one
    /// for its own site), `localhost`, or a configured name; any port.
    fn host_allowed(&self, host: &str) -> bool {
        if host.parse::<SocketAddr>().is_ok() || host.parse::<IpAddr>().is_ok() {
            return true;
        }
        // `[::1]` without a port, or `name:port`.
        let name = match host.rsplit_once(':') {
            Some((n, port)) if port.chars().all(|c| c.is_ascii_digit()) => n,
            _ => host,
        };
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        if name
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
            .is_ok()
        {
            return true;
        }
        name == "localhost" || self.hosts.contains(&name)
    }
}

/// Compares the SHA-256 of the given token with the configured token's in
/// time independent of where they differ. Hashing first makes the lengths
/// equal (a length check would leak the token's length), and whatever a
/// timing could still reveal is about the digest, from which no token can
/// be learned byte by byte. The fold runs over all 32 bytes with no early
/// exit; `black_box` keeps the optimiser from adding one.
fn same_token(expected: &[u8; 32], given: &str) -> bool {
    let given: [u8; 32] = Sha256::digest(given.as_bytes()).into();
    let diff = expected
        .iter()
        .zip(given.iter())
        .fold(0u8, |acc, (a, b)| acc | std::hint::black_box(a ^ b));
    std::hint::black_box(diff) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn names_other_than_ip_literals_localhost_and_allowed_ones_are_refused() {
        let g = Guard::new(None, &["Warren.Internal".into()]);
        for ok in [
            "127.0.0.1:9090",
            "127.0.0.1",
            "[::1]:9090",
            "[::1]",
            "localhost:9090",
            "LOCALHOST",
            "warren.internal:80",
        ] {
            assert!(g.host_allowed(ok), "{ok}");
        }
        for bad in ["evil.example:9090", "localhost.evil.example", "warren"] {
            assert!(!g.host_allowed(bad), "{bad}");
        }
    }

    #[test]
    fn tokens_compare_whole() {
        let t: [u8; 32] = Sha256::digest(b"s3cret").into();
        assert!(same_token(&t, "s3cret"));
        for wrong in ["", "s3cre", "s3crett", "S3cret"] {
            assert!(!same_token(&t, wrong), "{wrong}");
        }
    }

    #[test]
    fn an_empty_token_is_no_token_and_an_empty_bearer_never_passes() {
        let open = Guard::new(Some(""), &[]);
        assert!(open.token.is_none());
        let g = Guard::new(Some("t0ken"), &[]);
        let get = Method::GET;
        assert!(
            g.check(&get, &headers(&[("authorization", "Bearer ")]))
                .is_err()
        );
        assert!(
            g.check(&get, &headers(&[("authorization", "Bearer t0ken")]))
                .is_ok()
        );
    }

    #[test]
    fn mutations_need_the_header_without_a_token_and_a_same_origin() {
        let g = Guard::new(None, &[]);
        let post = Method::POST;
        let host = ("host", "127.0.0.1:9090");
        assert!(g.check(&post, &headers(&[host])).is_err());
        assert!(
            g.check(&post, &headers(&[host, (ADMIN_HEADER, "1")]))
                .is_ok()
        );
        let cross = ("origin", "http://evil.example");
        assert!(
            g.check(&post, &headers(&[host, (ADMIN_HEADER, "1"), cross]))
                .is_err()
        );
        let same = ("origin", "http://127.0.0.1:9090");
        assert!(
            g.check(&post, &headers(&[host, (ADMIN_HEADER, "1"), same]))
                .is_ok()
        );
        assert!(g.check(&Method::GET, &headers(&[host])).is_ok());
    }
}
