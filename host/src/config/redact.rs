//! URLs as they may be shown: in logs, errors and the admin API a URL's
//! password is replaced by `***`, so a config with credentials can be
//! logged and reported without leaking them.

/// Query parameters that carry a password (the Redis client reads `pass`
/// from `redis+unix://` URLs).
const SECRET_PARAMS: [&str; 2] = ["pass", "password"];

/// `url` with the password of its user-info part, if any, and the value of
/// a `pass` or `password` query parameter replaced by `***`:
/// `amqp://user:secret@host/vhost` becomes `amqp://user:***@host/vhost`.
/// A URL without a password, or text that is not a URL, comes back
/// unchanged.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    // The authority ends at the first '/', '?' or '#'; the user-info is
    // what comes before its last '@' (a password may itself contain '@'
    // only percent-encoded, but be generous).
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let tail = redact_query(tail);
    let Some(at) = authority.rfind('@') else {
        return format!("{scheme}://{authority}{tail}");
    };
    let (userinfo, host) = authority.split_at(at);
    match userinfo.split_once(':') {
        Some((user, _password)) => format!("{scheme}://{user}:***{host}{tail}"),
        None => format!("{scheme}://{authority}{tail}"),
    }
}

/// The path, query and fragment with secret query values replaced.
fn redact_query(tail: &str) -> String {
    let Some((path, query)) = tail.split_once('?') else {
        return tail.to_string();
    };
    let (query, fragment) = match query.split_once('#') {
        Some((q, f)) => (q, format!("#{f}")),
        None => (query, String::new()),
    };
    let params: Vec<String> = query
        .split('&')
        .map(|p| match p.split_once('=') {
            Some((k, _)) if SECRET_PARAMS.contains(&k) => format!("{k}=***"),
            _ => p.to_string(),
        })
        .collect();
    format!("{path}?{}{fragment}", params.join("&"))
}

/// The secrets in `url` as they may appear in text: its password and
/// secret query values, each as written and percent-decoded (a client's
/// error may show either).
pub fn secrets_of_url(url: &str) -> Vec<String> {
    let Some((_, rest)) = url.split_once("://") else {
        return Vec::new();
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let mut raw = Vec::new();
    // A password equal to the user name is no secret: the user name is
    // shown everywhere (it is `guest:guest` on a development broker), and
    // hiding it would blank out the word in every log line.
    if let Some((userinfo, _)) = authority.rsplit_once('@')
        && let Some((user, password)) = userinfo.split_once(':')
        && user != password
    {
        raw.push(password.to_string());
    }
    if let Some((_, query)) = tail.split_once('?') {
        let query = query.split('#').next().unwrap_or_default();
        for p in query.split('&') {
            if let Some((k, v)) = p.split_once('=')
                && SECRET_PARAMS.contains(&k)
            {
                raw.push(v.to_string());
            }
        }
    }
    let mut out = Vec::new();
    for s in raw.into_iter().filter(|s| !s.is_empty()) {
        let decoded = percent_decode(&s);
        if decoded != s {
            out.push(decoded);
        }
        out.push(s);
    }
    out
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        if b[i] == b'%'
            && i + 2 < b.len()
            && let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2]))
        {
            out.push((h * 16 + l) as u8);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::{redact_url, secrets_of_url};

    #[test]
    fn passwords_are_replaced_and_nothing_else_changes() {
        assert_eq!(
            redact_url("amqp://guest:s3cr3t@127.0.0.1:5672/%2f"),
            "amqp://guest:***@127.0.0.1:5672/%2f"
        );
        assert_eq!(
            redact_url("redis://:hunter2@cache:6379/0"),
            "redis://:***@cache:6379/0"
        );
        assert_eq!(
            redact_url("rediss://u:p@ss@h/0?x=a@b"),
            "rediss://u:***@h/0?x=a@b"
        );
        assert_eq!(
            redact_url("redis+unix:///run/r.sock?db=1&pass=hunter2#f"),
            "redis+unix:///run/r.sock?db=1&pass=***#f"
        );
        assert_eq!(redact_url("amqp://host/v"), "amqp://host/v");
        assert_eq!(redact_url("amqp://user@host/v"), "amqp://user@host/v");
        assert_eq!(redact_url("not a url"), "not a url");
    }

    #[test]
    fn secrets_come_raw_and_decoded() {
        assert_eq!(
            secrets_of_url("amqp://u:p%40ss@h/v"),
            ["p@ss".to_string(), "p%40ss".to_string()]
        );
        assert_eq!(
            secrets_of_url("redis+unix:///r.sock?pass=x1&db=0"),
            ["x1".to_string()]
        );
        assert!(secrets_of_url("redis://h:6379/0").is_empty());
        assert!(secrets_of_url("amqp://guest:guest@h/v").is_empty());
        assert!(secrets_of_url("redis://:@h:6379/0").is_empty());
    }
}
