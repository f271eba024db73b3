//! URLs as they may be shown: in logs, errors and the admin API a URL's
//! password is replaced by `***`, so a config with credentials can be
//! logged and reported without leaking them.

/// `url` with the password of its user-info part, if any, replaced by
/// `***`: `amqp://user:secret@host/vhost` becomes `amqp://user:***@host/vhost`.
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
    let Some(at) = authority.rfind('@') else {
        return url.to_string();
    };
    let (userinfo, host) = authority.split_at(at);
    match userinfo.split_once(':') {
        Some((user, _password)) => format!("{scheme}://{user}:***{host}{tail}"),
        None => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::redact_url;

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
        assert_eq!(redact_url("amqp://host/v"), "amqp://host/v");
        assert_eq!(redact_url("amqp://user@host/v"), "amqp://user@host/v");
        assert_eq!(redact_url("not a url"), "not a url");
    }
}
