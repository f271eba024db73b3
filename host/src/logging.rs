//! Log set-up: one line per event with structured fields, to stderr.
//! `RUST_LOG` picks levels (default `info`); `WARREN_LOG_FORMAT=json` switches
//! to JSON lines for log shippers.
//!
//! Every line passes through [`redact`] on its way out: a URL's password is
//! replaced by `***` wherever a URL appears, and so is every secret the
//! config registered with [`hide`], also inside a client library's error
//! text or its own debug lines, which warren does not control.

use std::io::{IsTerminal as _, Write as _};
use std::sync::RwLock;

use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;

/// Secrets shorter than this are not searched for in free text: they would
/// blank out common words. They are still hidden where they appear as a
/// URL's password.
const MIN_SECRET_LEN: usize = 4;

static SECRETS: RwLock<Vec<String>> = RwLock::new(Vec::new());

/// Installs the global subscriber; a second call is a no-op.
pub fn init() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(Redacting)
        .with_ansi(std::io::stderr().is_terminal());
    let _ = if std::env::var("WARREN_LOG_FORMAT").as_deref() == Ok("json") {
        builder.json().flatten_event(true).try_init()
    } else {
        builder.try_init()
    };
}

/// Registers secrets (passwords, tokens) that must never reach a log line
/// or an error printed by the binary.
pub fn hide(secrets: impl IntoIterator<Item = String>) {
    let mut all = SECRETS.write().unwrap_or_else(|e| e.into_inner());
    for s in secrets {
        if s.len() >= MIN_SECRET_LEN && !all.contains(&s) {
            all.push(s);
        }
    }
    // Longest first, so a secret that contains another is replaced whole.
    all.sort_by_key(|s| std::cmp::Reverse(s.len()));
}

/// `text` with every URL's password and every registered secret replaced
/// by `***`.
pub fn redact(text: &str) -> String {
    let mut out = redact_urls(text);
    for s in SECRETS.read().unwrap_or_else(|e| e.into_inner()).iter() {
        if out.contains(s.as_str()) {
            out = out.replace(s.as_str(), "***");
        }
    }
    out
}

/// Replaces the password of every `scheme://user:password@host` in free
/// text. The authority ends where a URL would, or at a quote, bracket or
/// blank, since the URL may sit inside a message.
fn redact_urls(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("://") {
        let (head, tail) = rest.split_at(i + 3);
        out.push_str(head);
        let end = tail
            .find(|c: char| "/?#\"'<>`\\ \t\r\n".contains(c))
            .unwrap_or(tail.len());
        let authority = &tail[..end];
        let split = authority
            .rfind('@')
            .and_then(|at| Some((authority[..at].split_once(':')?.0, &authority[at..])));
        match split {
            Some((user, host)) => {
                out.push_str(user);
                out.push_str(":***");
                out.push_str(host);
            }
            None => out.push_str(authority),
        }
        rest = &tail[end..];
    }
    out.push_str(rest);
    out
}

/// The log sink: collects one event's bytes and writes them, redacted, to
/// stderr when the formatter drops it (it makes one writer per event).
#[derive(Debug, Clone, Copy)]
struct Redacting;

#[derive(Debug)]
struct Line(Vec<u8>);

impl<'a> MakeWriter<'a> for Redacting {
    type Writer = Line;
    fn make_writer(&'a self) -> Line {
        Line(Vec::with_capacity(256))
    }
}

impl std::io::Write for Line {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for Line {
    fn drop(&mut self) {
        if self.0.is_empty() {
            return;
        }
        let text = redact(&String::from_utf8_lossy(&self.0));
        let _ = std::io::stderr().lock().write_all(text.as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::{hide, redact, redact_urls};

    #[test]
    fn urls_in_text_lose_their_passwords() {
        assert_eq!(
            redact_urls("cannot connect to \"amqp://u:pw@h:5672/%2f\": refused"),
            "cannot connect to \"amqp://u:***@h:5672/%2f\": refused"
        );
        assert_eq!(
            redact_urls("a redis://:x@h/0 and amqp://h/v"),
            "a redis://:***@h/0 and amqp://h/v"
        );
        assert_eq!(redact_urls("url=amqp://u@h/v"), "url=amqp://u@h/v");
    }

    #[test]
    fn registered_secrets_are_hidden_anywhere() {
        hide(["zq-unit-secret".to_string(), "abc".to_string()]);
        assert_eq!(
            redact("password: \"zq-unit-secret\", abc"),
            "password: \"***\", abc"
        );
    }
}
