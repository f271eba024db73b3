//! The case file format of `warren test --cases`: one TOML file per case,
//! an `[input]` message and what is `[expect]`ed of it. docs/testing.md
//! documents the format for authors; this module parses it, turns the input
//! into the guest's [`Message`], compares what a run did with the
//! expectation, and writes observed results back as an expectation
//! (`--update`).

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context as _, bail};
use serde::{Deserialize, Serialize};

use super::store::{Written, value_from_toml, value_to_toml};
use crate::runtime::{Completed, FieldValue, Header, Headers, Message, Nested, Outbound, Outcome};

/// One case file as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaseFile {
    /// What the case is about; shown when it fails.
    pub description: Option<String>,
    #[serde(default)]
    pub input: Input,
    pub expect: Option<Expect>,
    /// The outbound HTTP requests the case expects, each with its answer
    /// (`answer.rs`).
    #[serde(default)]
    pub http: Vec<super::answer::Expected>,
    /// What the handler's key-value namespace holds when the case starts
    /// (`store.rs` has the value forms).
    #[serde(default)]
    pub kv: BTreeMap<String, toml::Value>,
}

/// The message a case sends, as the handler will see it. Every property
/// is optional; the defaults are those of a first delivery from the
/// default exchange.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Input {
    pub body: Option<String>,
    pub body_json: Option<String>,
    pub body_hex: Option<String>,
    /// A file whose bytes are the body, relative to the case file.
    pub body_file: Option<String>,
    pub routing_key: Option<String>,
    #[serde(default)]
    pub exchange: String,
    /// Default: the case's file name without `.toml`.
    pub message_id: Option<String>,
    pub content_type: Option<String>,
    pub content_encoding: Option<String>,
    pub correlation_id: Option<String>,
    pub reply_to: Option<String>,
    pub timestamp: Option<u64>,
    #[serde(rename = "type")]
    pub type_: Option<String>,
    pub app_id: Option<String>,
    #[serde(default)]
    pub headers: BTreeMap<String, toml::Value>,
    #[serde(default)]
    pub redelivered: bool,
    pub attempt: Option<u32>,
    pub dedup_key: Option<String>,
    #[serde(default)]
    pub fencing_token: u64,
}

/// A body written one of three ways: text, JSON text (compared as JSON:
/// key order and spacing do not matter) or hex for bytes that are not
/// UTF-8. At most one may be given. (The input and each expected output
/// carry the three keys themselves: serde cannot flatten a struct into one
/// that refuses unknown keys.)
#[derive(Debug, Default, Clone, PartialEq)]
pub struct BodySpec {
    pub body: Option<String>,
    pub body_json: Option<String>,
    pub body_hex: Option<String>,
}

/// What a case expects of the run.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Expect {
    /// `ack`, `retry` or `reject` (the handler's outcomes), or how the run
    /// failed: `timeout`, `memory`, `stack-overflow`, `trap`, `instantiate`
    /// (the names `warren run` puts in `x-warren-error-kind`).
    pub outcome: String,
    /// The reject or retry reason, or the run error's text, exactly.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Or only how the reason starts.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason_starts_with: Option<String>,
    /// A retry's delay; absent to not check it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delay_ms: Option<u64>,
    /// The `log` lines, as `"level: text"`; absent to not check them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub logs: Option<Vec<String>>,
    /// Every message the handler published, in order; absent means none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub publish: Vec<ExpectOut>,
    /// Every key-value key the message wrote, with its value after the
    /// commit (`false`: deleted); absent means none.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub kv: BTreeMap<String, toml::Value>,
}

/// One published message a case expects. Properties left out must be
/// unset; headers left out must be empty.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ExpectOut {
    #[serde(default)]
    pub exchange: String,
    pub routing_key: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content_encoding: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<String>,
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub type_: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub body_json: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub body_hex: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, toml::Value>,
}

/// A case's results, whether they came from a run or a run error.
#[derive(Debug, Clone)]
pub struct Outcomes<'a> {
    pub result: Result<&'a Completed, (&'static str, String)>,
    pub logs: &'a [String],
    /// What the run's key-value writes commit to.
    pub kv: &'a Written,
}

/// One difference between what a case expects and what happened.
#[derive(Debug, Clone, PartialEq)]
pub struct Mismatch {
    /// Which part: `outcome`, `publish[0].body_json`, ...
    pub what: String,
    pub want: String,
    pub got: String,
}

impl CaseFile {
    pub fn parse(text: &str, path: &Path) -> anyhow::Result<CaseFile> {
        let case: CaseFile = toml::from_str(text)
            .map_err(|e| anyhow::anyhow!("{}: {}", path.display(), e.to_string().trim_end()))?;
        if let Some(e) = &case.expect {
            outcome_kind(&e.outcome)
                .with_context(|| format!("{}: key expect.outcome", path.display()))?;
            for (key, v) in &e.kv {
                value_from_toml(v)
                    .with_context(|| format!("{}: key expect.kv.{key:?}", path.display()))?;
            }
        }
        Ok(case)
    }
}

/// The outcome names a case may expect.
const OUTCOMES: [&str; 10] = [
    "ack",
    "retry",
    "reject",
    "timeout",
    "memory",
    "stack-overflow",
    "trap",
    "instantiate",
    "body-too-large",
    "invalid-headers",
];

fn outcome_kind(name: &str) -> anyhow::Result<()> {
    if !OUTCOMES.contains(&name) {
        bail!("unknown outcome {name:?}: one of {}", OUTCOMES.join(", "));
    }
    Ok(())
}

impl BodySpec {
    /// The bytes this spec stands for; `what` names it in errors.
    pub fn bytes(&self, what: &str) -> anyhow::Result<Option<Vec<u8>>> {
        let given = [&self.body, &self.body_json, &self.body_hex]
            .iter()
            .filter(|b| b.is_some())
            .count();
        if given > 1 {
            bail!("{what}: give one of body, body_json and body_hex, not {given}");
        }
        if let Some(text) = &self.body {
            return Ok(Some(text.clone().into_bytes()));
        }
        if let Some(json) = &self.body_json {
            let value: serde_json::Value = serde_json::from_str(json)
                .with_context(|| format!("{what}: body_json is not JSON"))?;
            return Ok(Some(
                serde_json::to_vec(&value).expect("a JSON value serialises"),
            ));
        }
        if let Some(h) = &self.body_hex {
            let clean: String = h.chars().filter(|c| !c.is_whitespace()).collect();
            return hex::decode(clean)
                .map(Some)
                .with_context(|| format!("{what}: body_hex is not hex"));
        }
        Ok(None)
    }

    /// The best way to write `bytes` down: JSON text when `json` says the
    /// body is JSON and it parses, else text, else hex.
    pub fn of(bytes: &[u8], json: bool) -> BodySpec {
        if json && let Ok(v) = serde_json::from_slice::<serde_json::Value>(bytes) {
            return BodySpec {
                body_json: Some(serde_json::to_string(&v).expect("a JSON value serialises")),
                ..BodySpec::default()
            };
        }
        match std::str::from_utf8(bytes) {
            Ok(text) => BodySpec {
                body: Some(text.into()),
                ..BodySpec::default()
            },
            Err(_) => BodySpec {
                body_hex: Some(hex::encode(bytes)),
                ..BodySpec::default()
            },
        }
    }
}

impl Input {
    /// The message the handler gets; `stem` is the case's name, `dir` the
    /// directory `body_file` is relative to.
    pub fn message(&self, stem: &str, dir: &Path) -> anyhow::Result<Message> {
        let spec = BodySpec {
            body: self.body.clone(),
            body_json: self.body_json.clone(),
            body_hex: self.body_hex.clone(),
        };
        let body = match (spec.bytes("input")?, &self.body_file) {
            (Some(_), Some(_)) => bail!("input: give body_file or a body, not both"),
            (Some(b), None) => b,
            (None, Some(f)) => {
                let path = dir.join(f);
                std::fs::read(&path)
                    .with_context(|| format!("input.body_file: cannot read {}", path.display()))?
            }
            (None, None) => Vec::new(),
        };
        let mut msg = Message::synthetic(
            body,
            self.message_id.as_deref().unwrap_or(stem),
            self.routing_key.as_deref().unwrap_or(DEFAULT_ROUTING_KEY),
        );
        msg.exchange = self.exchange.clone();
        msg.content_type = self.content_type.clone();
        msg.content_encoding = self.content_encoding.clone();
        msg.correlation_id = self.correlation_id.clone();
        msg.reply_to = self.reply_to.clone();
        msg.timestamp = self.timestamp;
        msg.type_ = self.type_.clone();
        msg.app_id = self.app_id.clone();
        msg.headers = headers_from_toml(&self.headers).context("input.headers")?;
        msg.redelivered = self.redelivered;
        msg.attempt = self.attempt.unwrap_or(1);
        if msg.attempt == 0 {
            bail!("input.attempt: attempts count from 1");
        }
        msg.dedup_key = self.dedup_key.clone();
        msg.fencing_token = self.fencing_token;
        Ok(msg)
    }
}

/// The routing key a message gets when neither the case nor the command
/// line names one.
pub const DEFAULT_ROUTING_KEY: &str = "test";

/// AMQP headers from a TOML table: strings become text, integers 64-bit
/// integers, floats doubles, booleans booleans, date-times timestamps
/// (seconds), arrays and tables nested arrays and tables.
pub fn headers_from_toml(table: &BTreeMap<String, toml::Value>) -> anyhow::Result<Headers> {
    let mut headers = Headers {
        entries: Vec::new(),
        nested: Vec::new(),
    };
    for (name, value) in table {
        let value =
            field_value(value, &mut headers.nested).with_context(|| format!("header {name:?}"))?;
        headers.entries.push(Header {
            name: name.clone(),
            value,
        });
    }
    Ok(headers)
}

fn field_value(v: &toml::Value, arena: &mut Vec<Nested>) -> anyhow::Result<FieldValue> {
    Ok(match v {
        toml::Value::String(s) => FieldValue::Text(s.clone()),
        toml::Value::Integer(i) => FieldValue::I64(*i),
        toml::Value::Float(f) => FieldValue::F64(*f),
        toml::Value::Boolean(b) => FieldValue::Boolean(*b),
        toml::Value::Datetime(d) => {
            bail!("date-time {d} is not supported: write the timestamp as seconds (an integer)")
        }
        toml::Value::Array(items) => {
            let values = items
                .iter()
                .map(|i| field_value(i, arena))
                .collect::<anyhow::Result<Vec<_>>>()?;
            arena.push(Nested::Array(values));
            FieldValue::Array((arena.len() - 1) as u32)
        }
        toml::Value::Table(t) => {
            let mut entries = Vec::new();
            for (k, v) in t {
                entries.push(Header {
                    name: k.clone(),
                    value: field_value(v, arena)?,
                });
            }
            arena.push(Nested::Table(entries));
            FieldValue::Table((arena.len() - 1) as u32)
        }
    })
}

/// Headers as a TOML table, for comparison and for writing down. AMQP
/// types TOML lacks are written as text: `void`, `decimal:VALUE/10^SCALE`,
/// `hex:BYTES`; integers of every width are TOML integers (so a case
/// compares header integers by value, not by width).
pub fn headers_to_toml(headers: &Headers) -> BTreeMap<String, toml::Value> {
    headers
        .entries
        .iter()
        .map(|h| (h.name.clone(), to_toml(&h.value, &headers.nested, 0)))
        .collect()
}

fn to_toml(v: &FieldValue, arena: &[Nested], depth: usize) -> toml::Value {
    use toml::Value as T;
    // Nested values index an arena the guest wrote: a cycle would recurse
    // forever, so past a depth no real message has, stop.
    if depth > 64 {
        return T::String("(nested too deep)".into());
    }
    match v {
        FieldValue::Void => T::String("void".into()),
        FieldValue::Boolean(b) => T::Boolean(*b),
        FieldValue::I8(i) => T::Integer((*i).into()),
        FieldValue::U8(i) => T::Integer((*i).into()),
        FieldValue::I16(i) => T::Integer((*i).into()),
        FieldValue::U16(i) => T::Integer((*i).into()),
        FieldValue::I32(i) => T::Integer((*i).into()),
        FieldValue::U32(i) => T::Integer((*i).into()),
        FieldValue::I64(i) => T::Integer(*i),
        FieldValue::F32(f) => T::Float((*f).into()),
        FieldValue::F64(f) => T::Float(*f),
        FieldValue::Decimal(d) => T::String(format!("decimal:{}/10^{}", d.value, d.scale)),
        FieldValue::Text(s) => T::String(s.clone()),
        FieldValue::Bytes(b) => T::String(format!("hex:{}", hex::encode(b))),
        FieldValue::Timestamp(t) => T::Integer(*t as i64),
        FieldValue::Array(i) | FieldValue::Table(i) => match arena.get(*i as usize) {
            Some(Nested::Array(items)) => {
                T::Array(items.iter().map(|x| to_toml(x, arena, depth + 1)).collect())
            }
            Some(Nested::Table(entries)) => T::Table(
                entries
                    .iter()
                    .map(|h| (h.name.clone(), to_toml(&h.value, arena, depth + 1)))
                    .collect(),
            ),
            None => T::String(format!("(no nested value {i})")),
        },
    }
}

/// Whether a message with this content type is JSON.
fn is_json(content_type: Option<&str>) -> bool {
    content_type.is_some_and(|c| {
        let c = c.split(';').next().unwrap_or("").trim();
        c == "application/json" || c.ends_with("+json")
    })
}

/// What happened, written as an expectation: what `--update` records.
pub fn observed(o: &Outcomes<'_>) -> Expect {
    let mut e = Expect {
        outcome: String::new(),
        reason: None,
        reason_starts_with: None,
        delay_ms: None,
        logs: None,
        publish: Vec::new(),
        kv: BTreeMap::new(),
    };
    if let Ok(written) = o.kv {
        e.kv = written
            .iter()
            .map(|(k, v)| (k.clone(), value_to_toml(v.as_deref())))
            .collect();
    }
    match &o.result {
        Err((kind, message)) => {
            e.outcome = (*kind).into();
            e.reason = Some(message.clone());
        }
        Ok(done) => {
            match &done.outcome {
                Outcome::Ack => e.outcome = "ack".into(),
                Outcome::Retry(r) => {
                    e.outcome = "retry".into();
                    e.reason = Some(r.reason.clone());
                    e.delay_ms = r.delay_ms;
                }
                Outcome::Reject(why) => {
                    e.outcome = "reject".into();
                    e.reason = Some(why.clone());
                }
            }
            if !o.logs.is_empty() {
                e.logs = Some(o.logs.to_vec());
            }
            e.publish = done.publishes.iter().map(expect_out).collect();
        }
    }
    e
}

fn expect_out(p: &Outbound) -> ExpectOut {
    let body = BodySpec::of(&p.body, is_json(p.content_type.as_deref()));
    ExpectOut {
        exchange: p.exchange.clone(),
        routing_key: p.routing_key.clone(),
        content_type: p.content_type.clone(),
        content_encoding: p.content_encoding.clone(),
        correlation_id: p.correlation_id.clone(),
        type_: p.type_.clone(),
        body: body.body,
        body_json: body.body_json,
        body_hex: body.body_hex,
        headers: headers_to_toml(&p.headers),
    }
}

/// Every difference between `want` and what happened.
pub fn compare(want: &Expect, o: &Outcomes<'_>) -> Vec<Mismatch> {
    let got = observed(o);
    let mut out = Vec::new();
    let got_reason = got.reason.clone().unwrap_or_default();
    if want.outcome != got.outcome {
        // A wrong outcome shows its reason too when the case checks none,
        // so an unexpected `instantiate` or `trap` says what went wrong.
        let shown = match &got.reason {
            Some(r) if want.reason.is_none() && want.reason_starts_with.is_none() => {
                format!("{} ({r})", got.outcome)
            }
            _ => got.outcome.clone(),
        };
        differ(&mut out, "outcome", want.outcome.clone(), shown);
    }
    if let Some(r) = &want.reason {
        differ(&mut out, "reason", r.clone(), got_reason.clone());
    }
    if let Some(start) = &want.reason_starts_with
        && !got_reason.starts_with(start.as_str())
    {
        differ(
            &mut out,
            "reason (start)",
            format!("{start}..."),
            got_reason,
        );
    }
    if let Some(d) = want.delay_ms {
        differ(&mut out, "delay_ms", d.to_string(), show_opt(&got.delay_ms));
    }
    if let Some(logs) = &want.logs {
        let got_logs = got.logs.clone().unwrap_or_default();
        differ(&mut out, "logs", logs.join("\n"), got_logs.join("\n"));
    }
    let Ok(done) = &o.result else {
        return out;
    };
    compare_kv(want, o.kv, &mut out);
    if want.publish.len() != got.publish.len() {
        differ(
            &mut out,
            "publish count",
            want.publish.len().to_string(),
            got.publish.len().to_string(),
        );
    }
    for (i, (w, g)) in want.publish.iter().zip(&got.publish).enumerate() {
        let at = |field: &str| format!("publish[{i}].{field}");
        differ(
            &mut out,
            &at("exchange"),
            quoted(&w.exchange),
            quoted(&g.exchange),
        );
        differ(
            &mut out,
            &at("routing_key"),
            quoted(&w.routing_key),
            quoted(&g.routing_key),
        );
        for (field, a, b) in [
            ("content_type", &w.content_type, &g.content_type),
            ("content_encoding", &w.content_encoding, &g.content_encoding),
            ("correlation_id", &w.correlation_id, &g.correlation_id),
            ("type", &w.type_, &g.type_),
        ] {
            differ(&mut out, &at(field), show_opt(a), show_opt(b));
        }
        let spec = BodySpec {
            body: w.body.clone(),
            body_json: w.body_json.clone(),
            body_hex: w.body_hex.clone(),
        };
        compare_body(&spec, &done.publishes[i].body, &at("body"), &mut out);
        let pretty = |h: &BTreeMap<String, toml::Value>| {
            if h.is_empty() {
                "(none)".to_string()
            } else {
                toml::to_string(h)
                    .unwrap_or_default()
                    .trim_end()
                    .to_string()
            }
        };
        if w.headers != g.headers {
            differ(
                &mut out,
                &at("headers"),
                pretty(&w.headers),
                pretty(&g.headers),
            );
        }
    }
    out
}

/// The keys a case expects written against what the run's writes commit
/// to, by value bytes (so `7` and `"7"` are the same counter).
fn compare_kv(want: &Expect, got: &Written, out: &mut Vec<Mismatch>) {
    let got = match got {
        Ok(g) => g,
        Err(why) => {
            let want = if want.kv.is_empty() {
                "(no writes)".to_string()
            } else {
                "(the writes commit)".to_string()
            };
            return differ(out, "kv", want, why.clone());
        }
    };
    let show = |v: Option<&toml::Value>| match v {
        None => "(not written)".to_string(),
        Some(toml::Value::Boolean(false)) => "(deleted)".to_string(),
        Some(v) => v.to_string(),
    };
    let keys: std::collections::BTreeSet<&String> = want.kv.keys().chain(got.keys()).collect();
    for key in keys {
        let w = want.kv.get(key);
        let g = got.get(key);
        let same = match (w, g) {
            (Some(w), Some(g)) => value_from_toml(w).ok().as_ref() == Some(g),
            _ => false,
        };
        if !same {
            let g = g.map(|v| value_to_toml(v.as_deref()));
            differ(out, &format!("kv[{key:?}]"), show(w), show(g.as_ref()));
        }
    }
}

fn differ(out: &mut Vec<Mismatch>, what: &str, want: String, got: String) {
    if want != got {
        out.push(Mismatch {
            what: what.into(),
            want,
            got,
        });
    }
}

/// A body expectation against the bytes published: JSON compared as
/// values (shown pretty, keys sorted, so a diff points at the field),
/// text and hex as written.
pub(super) fn compare_body(want: &BodySpec, got: &[u8], what: &str, out: &mut Vec<Mismatch>) {
    let push = |out: &mut Vec<Mismatch>, field: &str, want: String, got: String| {
        out.push(Mismatch {
            what: format!("{what}{field}"),
            want,
            got,
        })
    };
    if let Some(json) = &want.body_json {
        let Ok(w) = serde_json::from_str::<serde_json::Value>(json) else {
            return push(
                out,
                "_json",
                json.clone(),
                "(the case's JSON does not parse)".into(),
            );
        };
        match serde_json::from_slice::<serde_json::Value>(got) {
            Ok(g) if g == w => {}
            Ok(g) => push(out, "_json", pretty_json(&w), pretty_json(&g)),
            Err(e) => push(
                out,
                "_json",
                pretty_json(&w),
                format!("(not JSON: {e}) {}", String::from_utf8_lossy(got)),
            ),
        }
    } else if let Some(hex_text) = &want.body_hex {
        let clean: String = hex_text.chars().filter(|c| !c.is_whitespace()).collect();
        if !clean.eq_ignore_ascii_case(&hex::encode(got)) {
            push(out, "_hex", clean, hex::encode(got));
        }
    } else {
        let w = want.body.clone().unwrap_or_default();
        if w.as_bytes() != got {
            let g = match std::str::from_utf8(got) {
                Ok(t) => t.to_string(),
                Err(_) => format!("(not UTF-8) hex:{}", hex::encode(got)),
            };
            push(out, "", w, g);
        }
    }
}

/// JSON with sorted keys, one field a line.
fn pretty_json(v: &serde_json::Value) -> String {
    fn sort(v: &serde_json::Value) -> serde_json::Value {
        match v {
            serde_json::Value::Object(m) => {
                let sorted: BTreeMap<&String, serde_json::Value> =
                    m.iter().map(|(k, v)| (k, sort(v))).collect();
                serde_json::Value::Object(sorted.into_iter().map(|(k, v)| (k.clone(), v)).collect())
            }
            serde_json::Value::Array(a) => serde_json::Value::Array(a.iter().map(sort).collect()),
            other => other.clone(),
        }
    }
    serde_json::to_string_pretty(&sort(v)).expect("a JSON value serialises")
}

fn quoted(s: &str) -> String {
    format!("{s:?}")
}

fn show_opt<T: std::fmt::Debug>(v: &Option<T>) -> String {
    match v {
        Some(v) => format!("{v:?}"),
        None => "(unset)".into(),
    }
}

/// `text` (a case file) with its expectation replaced by `expect`: every
/// line outside the `[expect]` and `[[expect.…]]` tables is kept as
/// written (the input, `[kv]`, `[[http]]`, comments), the expectation is
/// written anew at the end.
pub fn rewrite(text: &str, expect: &Expect) -> String {
    let mut kept = String::new();
    let mut in_expect = false;
    for line in text.lines() {
        let t = line.trim_start();
        if t.starts_with('[') {
            let name = t.trim_start_matches('[').trim_start();
            in_expect = name == "expect"
                || name.starts_with("expect]")
                || name.starts_with("expect.")
                || name.starts_with("expect ");
        }
        if !in_expect {
            kept.push_str(line);
            kept.push('\n');
        }
    }
    let kept = kept.trim_end();
    #[derive(Serialize)]
    struct Wrap<'a> {
        expect: &'a Expect,
    }
    let written = toml::to_string(&Wrap { expect }).expect("an expectation serialises");
    if kept.is_empty() {
        written
    } else {
        format!("{kept}\n\n{written}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_round_trip_through_toml() {
        let table: BTreeMap<String, toml::Value> =
            toml::from_str("a = \"x\"\nb = 7\nc = [1, \"two\", { d = true }]\ne = { f = 1.5 }\n")
                .unwrap();
        let h = headers_from_toml(&table).unwrap();
        assert_eq!(h.entries.len(), 4);
        assert_eq!(h.nested.len(), 3);
        assert_eq!(headers_to_toml(&h), table);
    }

    #[test]
    fn one_body_form_at_most() {
        let b = BodySpec {
            body: Some("a".into()),
            body_hex: Some("00".into()),
            ..BodySpec::default()
        };
        assert!(b.bytes("input").unwrap_err().to_string().contains("not 2"));
        assert_eq!(BodySpec::of(b"\xff", false).body_hex.as_deref(), Some("ff"));
        assert_eq!(BodySpec::of(b"{}", true).body_json.as_deref(), Some("{}"));
        assert_eq!(BodySpec::of(b"{}", false).body.as_deref(), Some("{}"));
    }

    #[test]
    fn unknown_keys_outcomes_and_values_are_refused() {
        let p = Path::new("c.toml");
        let err = CaseFile::parse("[[http]]\nurl = \"x\"\nverb = 1\n", p).unwrap_err();
        assert!(err.to_string().contains("verb"), "{err}");
        let err =
            CaseFile::parse("[expect]\noutcome = \"ack\"\n[expect.kv]\na = 1.5\n", p).unwrap_err();
        assert!(format!("{err:#}").contains("expect.kv.\"a\""), "{err:#}");
        let err = CaseFile::parse("[expect]\noutcome = \"nack\"\n", p).unwrap_err();
        assert!(
            format!("{err:#}").contains("unknown outcome \"nack\""),
            "{err:#}"
        );
        let err = CaseFile::parse("[input]\nbodi = \"x\"\n", p).unwrap_err();
        assert!(err.to_string().contains("bodi"), "{err}");
    }

    #[test]
    fn a_wrong_failure_outcome_shows_its_reason_unless_the_case_checks_it() {
        let want = |reason: Option<&str>| Expect {
            outcome: "ack".into(),
            reason: reason.map(Into::into),
            reason_starts_with: None,
            delay_ms: None,
            logs: None,
            publish: vec![],
            kv: BTreeMap::new(),
        };
        let written: Written = Ok(Default::default());
        let got = Outcomes {
            result: Err(("instantiate", "no memory slot free".into())),
            logs: &[],
            kv: &written,
        };
        let out = compare(&want(None), &got);
        assert_eq!(out.len(), 1, "{out:?}");
        assert_eq!(out[0].what, "outcome");
        assert_eq!(out[0].got, "instantiate (no memory slot free)");
        // A case that names a reason gets the reason on a line of its own.
        let out = compare(&want(Some("x")), &got);
        assert_eq!(out[0].got, "instantiate");
        assert_eq!(out[1].what, "reason");
        assert_eq!(out[1].got, "no memory slot free");
    }

    #[test]
    fn rewrite_keeps_the_input_and_its_comments() {
        let text = "# a comment\n[input]\nbody = \"x\"\n\n[expect]\noutcome = \"reject\"\n";
        let e = Expect {
            outcome: "ack".into(),
            reason: None,
            reason_starts_with: None,
            delay_ms: None,
            logs: None,
            publish: vec![],
            kv: BTreeMap::new(),
        };
        let out = rewrite(text, &e);
        assert_eq!(
            out,
            "# a comment\n[input]\nbody = \"x\"\n\n[expect]\noutcome = \"ack\"\n"
        );
        let back = CaseFile::parse(&out, Path::new("c.toml")).unwrap();
        assert_eq!(back.expect.unwrap(), e);
    }
}
