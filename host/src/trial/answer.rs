//! A case's outbound HTTP: the `[[http]]` requests it expects, each with
//! the answer the case gives it. Under `--cases` every request the
//! handler's grant admits is answered from this list (the first unused
//! entry with the same method and URL), never sent; a request the case
//! does not list is refused to the guest and fails the case naming the
//! URL, and so does an entry no request used.

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard, PoisonError};

use anyhow::{Context as _, bail};
use serde::Deserialize;

use super::case::{BodySpec, Mismatch};
use crate::runtime::{Answer, AskedRequest, HttpResponder};

/// One `[[http]]` entry as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expected {
    /// Default `GET`.
    pub method: Option<String>,
    /// `scheme://host[:port]/path[?query]`; compared with the default port
    /// filled in and the host in lower case.
    pub url: String,
    /// The request body the case expects; left out: not checked.
    pub body: Option<String>,
    pub body_json: Option<String>,
    pub body_hex: Option<String>,
    /// What the request gets instead of an answer: `timeout` (the server
    /// never answers) or `connection-refused`.
    pub error: Option<String>,
    pub response: Option<Response>,
}

/// The answer of an `[[http]]` entry.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Response {
    /// Default 200.
    pub status: Option<u16>,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    pub body: Option<String>,
    pub body_json: Option<String>,
    pub body_hex: Option<String>,
}

/// An entry made ready to answer with.
#[derive(Debug, Clone)]
struct Entry {
    method: String,
    url: String,
    key: String,
    body: Option<BodySpec>,
    answer: Answer,
}

/// Checks a case's entries (method, URL, bodies, status, error) and
/// readies them; errors name the entry.
fn prepare(list: &[Expected]) -> anyhow::Result<Vec<Entry>> {
    let mut out = Vec::new();
    for (i, e) in list.iter().enumerate() {
        let at = format!("http[{i}]");
        let method = e.method.as_deref().unwrap_or("GET").to_ascii_uppercase();
        http::Method::from_bytes(method.as_bytes())
            .map_err(|_| anyhow::anyhow!("{at}.method: {method:?} is not an HTTP method"))?;
        let key = normal(&e.url).with_context(|| format!("{at}.url"))?;
        let spec = BodySpec {
            body: e.body.clone(),
            body_json: e.body_json.clone(),
            body_hex: e.body_hex.clone(),
        };
        spec.bytes(&at)?;
        let body = (spec != BodySpec::default()).then_some(spec);
        let answer = match (&e.error, &e.response) {
            (Some(_), Some(_)) => bail!("{at}: give error or response, not both"),
            (Some(err), None) => match err.as_str() {
                "timeout" => Answer::Timeout,
                "connection-refused" => Answer::ConnectionRefused,
                other => bail!("{at}.error: {other:?} is not one of timeout, connection-refused"),
            },
            (None, r) => {
                let r = r.clone().unwrap_or_default();
                let status = r.status.unwrap_or(200);
                http::StatusCode::from_u16(status).map_err(|_| {
                    anyhow::anyhow!("{at}.response.status: {status} is not an HTTP status")
                })?;
                for (name, value) in &r.headers {
                    http::HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
                        anyhow::anyhow!("{at}.response.headers: {name:?} is not a header name")
                    })?;
                    http::HeaderValue::from_str(value).map_err(|_| {
                        anyhow::anyhow!("{at}.response.headers.{name}: not a header value")
                    })?;
                }
                let spec = BodySpec {
                    body: r.body.clone(),
                    body_json: r.body_json.clone(),
                    body_hex: r.body_hex.clone(),
                };
                let mut headers: Vec<(String, String)> = r.headers.into_iter().collect();
                if spec.body_json.is_some()
                    && !headers
                        .iter()
                        .any(|(n, _)| n.eq_ignore_ascii_case("content-type"))
                {
                    headers.push(("content-type".into(), "application/json".into()));
                }
                Answer::Response {
                    status,
                    headers,
                    body: spec.bytes(&format!("{at}.response"))?.unwrap_or_default(),
                }
            }
        };
        out.push(Entry {
            method,
            url: e.url.clone(),
            key,
            body,
            answer,
        });
    }
    Ok(out)
}

/// A URL as requests are matched: `scheme://host:port/path?query`, the
/// host in lower case, the scheme's port when none is written.
fn normal(url: &str) -> anyhow::Result<String> {
    let uri: http::Uri = url
        .parse()
        .map_err(|e| anyhow::anyhow!("{url:?} is not a URL: {e}"))?;
    let scheme = uri
        .scheme_str()
        .ok_or_else(|| anyhow::anyhow!("{url:?}: no scheme (http:// or https://)"))?
        .to_ascii_lowercase();
    let host = uri
        .host()
        .ok_or_else(|| anyhow::anyhow!("{url:?}: no host"))?
        .to_ascii_lowercase();
    let port = match (uri.port_u16(), scheme.as_str()) {
        (Some(p), _) => p,
        (None, "https") => 443,
        (None, "http") => 80,
        (None, other) => bail!("{url:?}: scheme {other} is not http or https"),
    };
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    Ok(format!("{scheme}://{host}:{port}{path}"))
}

#[derive(Debug, Default)]
struct State {
    entries: Vec<Entry>,
    used: Vec<bool>,
    problems: Vec<Mismatch>,
}

/// The answers of the case being run.
#[derive(Debug, Default)]
pub struct CaseHttp {
    state: Mutex<State>,
}

impl CaseHttp {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Starts a case with its `[[http]]` entries.
    pub fn reset(&self, list: &[Expected]) -> anyhow::Result<()> {
        let entries = prepare(list)?;
        *self.state() = State {
            used: vec![false; entries.len()],
            entries,
            problems: Vec::new(),
        };
        Ok(())
    }

    /// Ends the case: every request that did not go as the case says
    /// (unexpected, or with another body) and every entry no request used.
    pub fn finish(&self) -> Vec<Mismatch> {
        let mut state = self.state();
        let mut out = std::mem::take(&mut state.problems);
        for (i, (e, used)) in state.entries.iter().zip(&state.used).enumerate() {
            if !used {
                out.push(Mismatch {
                    what: format!("http[{i}]"),
                    want: format!("a request {} {}", e.method, e.url),
                    got: "(no such request)".into(),
                });
            }
        }
        out
    }
}

impl HttpResponder for CaseHttp {
    fn answer(&self, asked: AskedRequest) -> Answer {
        let mut state = self.state();
        let key = normal(&asked.url).unwrap_or_else(|_| asked.url.clone());
        let State {
            entries,
            used,
            problems,
        } = &mut *state;
        let found = entries
            .iter()
            .zip(used.iter())
            .position(|(e, used)| !used && e.method == asked.method && e.key == key);
        let Some(i) = found else {
            problems.push(Mismatch {
                what: "http".into(),
                want: "(no request: the case lists none like it)".into(),
                got: format!("unexpected request {} {}", asked.method, asked.url),
            });
            return Answer::Denied;
        };
        used[i] = true;
        let entry = &entries[i];
        if let Some(spec) = &entry.body {
            super::case::compare_body(spec, &asked.body, &format!("http[{i}].body"), problems);
        }
        entry.answer.clone()
    }
}
