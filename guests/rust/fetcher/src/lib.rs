//! A test handler for outbound HTTP: the body is a script, one request per
//! line, sent in order; what each returns is written to a transcript and
//! published (to `out_routing_key`, default `<routing key>.out`).
//!
//! ```text
//! get URL              status=200 body=<text>   or   err=<error>
//! post URL BODY        the same, BODY sent as text/plain
//! retry-on-error       an error or a 5xx status makes the outcome a retry
//!                      (nothing published)
//! ```
//!
//! A body over 200 bytes is shown as `len=<bytes>`.
//!
//! With a `script` config value (lines separated by `;`), every message runs
//! that instead of its body (the benchmark's line 5h).
//!
//! A response's `x-idempotency-key` header (the test server echoes the
//! request's `Idempotency-Key` there) is added as `key=<value>`.

use warren_guest::http::{self, Request};
use warren_guest::{Handler, Message, Outbound, Outcome, Retry};

struct Fetcher;

impl Handler for Fetcher {
    fn handle(msg: Message) -> Outcome {
        let script = match warren_guest::config("script") {
            Some(s) => s.replace(';', "\n"),
            None => String::from_utf8_lossy(&msg.body).into_owned(),
        };
        let mut out: Vec<String> = Vec::new();
        let mut retry_on_error = false;
        let mut failed = None;
        for line in script.lines() {
            let w: Vec<&str> = line.splitn(3, ' ').collect();
            let arg = |i: usize| w.get(i).copied().unwrap_or("");
            let sent = match w.first().copied() {
                Some("get") => http::get(arg(1)),
                Some("post") => Request::post(arg(1), arg(2).as_bytes().to_vec())
                    .header("content-type", "text/plain")
                    .send(),
                Some("retry-on-error") => {
                    retry_on_error = true;
                    continue;
                }
                _ => continue,
            };
            out.push(match sent {
                Ok(r) => {
                    let key = r
                        .header("x-idempotency-key")
                        .map(|k| format!(" key={k}"))
                        .unwrap_or_default();
                    if r.status >= 500 {
                        failed.get_or_insert_with(|| format!("status {}", r.status));
                    }
                    let body = if r.body.len() > 200 {
                        format!("len={}", r.body.len())
                    } else {
                        format!("body={}", r.text())
                    };
                    format!("status={}{key} {body}", r.status)
                }
                Err(e) => {
                    failed.get_or_insert_with(|| e.to_string());
                    format!("err={e}")
                }
            });
        }
        if retry_on_error && let Some(why) = failed {
            return Outcome::Retry(Retry {
                delay_ms: Some(50),
                reason: why,
            });
        }
        let routing_key = warren_guest::config("out_routing_key")
            .unwrap_or_else(|| format!("{}.out", msg.routing_key));
        let mut o = Outbound::new("", &routing_key, out.join("\n").into_bytes());
        o.correlation_id = msg.message_id;
        if let Err(e) = warren_guest::publish(o) {
            return Outcome::reject(format!("cannot publish: {e:?}"));
        }
        Outcome::Ack
    }
}

warren_guest::export!(Fetcher);
