//! The admin endpoint from the command line: `warren deploy`, `rollback` and
//! `status` talk to a running host over HTTP.
//!
//! Every request carries [`ADMIN_HEADER`] and, when given, the bearer
//! token: what the endpoint asks of a caller that is not a web page.

use std::path::Path;

use anyhow::{Context as _, bail};
use serde_json::Value;

/// The header the admin endpoint requires on `PUT` and `POST` when it has
/// no token: a web page cannot send it cross-site without a CORS preflight,
/// which the endpoint never grants.
pub const ADMIN_HEADER: &str = "x-warren-admin";

/// Where and how to reach a running host's admin endpoint.
#[derive(Debug, Clone)]
pub struct Admin {
    pub url: String,
    pub token: Option<String>,
}

impl Admin {
    fn agent() -> ureq::Agent {
        ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build()
            .into()
    }

    /// The headers every request carries.
    fn headers(&self) -> Vec<(&'static str, String)> {
        let mut h = vec![(ADMIN_HEADER, "1".to_string())];
        if let Some(t) = self.token.as_ref().filter(|t| !t.is_empty()) {
            h.push(("Authorization", format!("Bearer {t}")));
        }
        h
    }

    fn finish(
        &self,
        what: &str,
        result: Result<http::Response<ureq::Body>, ureq::Error>,
    ) -> anyhow::Result<Value> {
        let mut resp = result
            .with_context(|| format!("cannot reach the admin endpoint at {} ({what})", self.url))?;
        let status = resp.status();
        let text = resp.body_mut().read_to_string().unwrap_or_default();
        let body: Value =
            serde_json::from_str(&text).unwrap_or(Value::String(text.trim().to_string()));
        if !status.is_success() {
            let msg = body
                .get("error")
                .and_then(Value::as_str)
                .map(str::to_string)
                .unwrap_or_else(|| body.to_string());
            bail!("{what} failed ({status}): {msg}");
        }
        Ok(body)
    }

    /// `PUT /handlers/NAME/module` with the file's bytes.
    pub fn deploy(&self, handler: &str, file: &Path) -> anyhow::Result<Value> {
        let bytes = std::fs::read(file)
            .with_context(|| format!("cannot read module {}", file.display()))?;
        let mut req = Self::agent().put(format!(
            "{}/handlers/{handler}/module",
            self.url.trim_end_matches('/')
        ));
        for (k, v) in self.headers() {
            req = req.header(k, v);
        }
        self.finish(
            &format!("deploy of {} to handler {handler:?}", file.display()),
            req.send(&bytes[..]),
        )
    }

    /// `PUT /handlers/NAME/shadow?every=N` with the candidate's bytes.
    pub fn shadow_start(&self, handler: &str, file: &Path, every: u64) -> anyhow::Result<Value> {
        let bytes = std::fs::read(file)
            .with_context(|| format!("cannot read module {}", file.display()))?;
        let mut req = Self::agent().put(format!(
            "{}/handlers/{handler}/shadow?every={every}",
            self.url.trim_end_matches('/')
        ));
        for (k, v) in self.headers() {
            req = req.header(k, v);
        }
        self.finish(
            &format!("shadow run of {} on handler {handler:?}", file.display()),
            req.send(&bytes[..]),
        )
    }

    /// `GET` (or, with `stop`, `DELETE`) `/handlers/NAME/shadow`.
    pub fn shadow_report(&self, handler: &str, stop: bool) -> anyhow::Result<Value> {
        let url = format!(
            "{}/handlers/{handler}/shadow",
            self.url.trim_end_matches('/')
        );
        let mut req = if stop {
            Self::agent().delete(url)
        } else {
            Self::agent().get(url)
        };
        for (k, v) in self.headers() {
            req = req.header(k, v);
        }
        self.finish(&format!("shadow report of handler {handler:?}"), req.call())
    }

    /// `POST /handlers/NAME/rollback`.
    pub fn rollback(&self, handler: &str) -> anyhow::Result<Value> {
        let mut req = Self::agent().post(format!(
            "{}/handlers/{handler}/rollback",
            self.url.trim_end_matches('/')
        ));
        for (k, v) in self.headers() {
            req = req.header(k, v);
        }
        self.finish(
            &format!("rollback of handler {handler:?}"),
            req.send_empty(),
        )
    }

    /// `GET /handlers`.
    pub fn status(&self) -> anyhow::Result<Value> {
        let mut req = Self::agent().get(format!("{}/handlers", self.url.trim_end_matches('/')));
        for (k, v) in self.headers() {
            req = req.header(k, v);
        }
        self.finish("status", req.call())
    }
}

/// The lines `warren deploy` and `warren rollback` print for a report.
pub fn describe_report(r: &Value) -> String {
    let s = |k: &str| r.get(k).and_then(Value::as_str).unwrap_or("?").to_string();
    let f = |k: &str| r.get(k).and_then(Value::as_f64).unwrap_or(0.0);
    if r.get("swapped").and_then(Value::as_bool) == Some(false) {
        return format!(
            "handler {}: {} is already live; nothing changed\n",
            s("handler"),
            s("new_digest")
        );
    }
    format!(
        "handler {}: deployed\n  old:     {}\n  new:     {}\n  compile: {:.1} ms ({})\n  swap:    {:.1} us\n",
        s("handler"),
        s("old_digest"),
        s("new_digest"),
        f("compile_ms"),
        s("compiled_by"),
        f("swap_us"),
    )
}

/// The table `warren status` prints.
pub fn describe_status(handlers: &Value) -> String {
    let mut out = format!(
        "{:<16} {:<24} {:<20} {:<20} {}\n",
        "HANDLER", "QUEUE", "LIVE", "PREVIOUS", "COUNTERS"
    );
    for h in handlers.as_array().map(Vec::as_slice).unwrap_or_default() {
        let short = |v: Option<&Value>| {
            v.and_then(|v| v.get("digest"))
                .and_then(Value::as_str)
                .map_or("-".to_string(), |d| d.chars().take(19).collect())
        };
        let counters = h
            .get("counters")
            .and_then(Value::as_object)
            .map(|c| {
                c.iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .unwrap_or_default();
        out += &format!(
            "{:<16} {:<24} {:<20} {:<20} {}\n",
            h.get("name").and_then(Value::as_str).unwrap_or("?"),
            h.get("queue").and_then(Value::as_str).unwrap_or("?"),
            short(h.get("live")),
            short(h.get("previous")),
            counters
        );
        if let Some(c) = h.get("canary").filter(|c| !c.is_null()) {
            let n = |k: &str| c["counts"][k].as_u64().unwrap_or(0);
            out += &format!(
                "{:<16} canary {}% of first attempts on {}: candidate failed {}/{}, live {}/{}\n",
                "",
                c["percent"].as_u64().unwrap_or(0),
                c["candidate"]
                    .as_str()
                    .map_or("-".to_string(), |d| d.chars().take(19).collect()),
                n("canary_failed"),
                n("canary"),
                n("live_failed"),
                n("live"),
            );
        }
    }
    out
}

/// A shadow run's report (`GET /handlers/NAME/shadow`) in words.
pub fn describe_shadow(r: &Value) -> String {
    let n = |k: &str| r.get(k).and_then(Value::as_u64).unwrap_or(0);
    let s = |k: &str| r.get(k).and_then(Value::as_str).unwrap_or("-").to_string();
    let mut out = format!(
        "candidate {} against live {}\ncompared {}: {} agree, {} differ\n",
        s("candidate"),
        s("live"),
        n("compared"),
        n("agreed"),
        n("differed")
    );
    let diffs = r.get("differences").and_then(Value::as_array);
    if let Some(d) = diffs.filter(|d| !d.is_empty()) {
        out.push_str("first differences:\n");
        for x in d {
            let f = |k: &str| x.get(k).and_then(Value::as_str).unwrap_or("-").to_string();
            out.push_str(&format!(
                "  {}\n    live:      {}\n    candidate: {}\n",
                f("message_id"),
                f("live"),
                f("candidate")
            ));
        }
    }
    out
}
