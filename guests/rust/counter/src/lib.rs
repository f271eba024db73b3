//! A test handler for the key-value store: the body is a script, one
//! operation per line, run in order; what each returns is written to a
//! transcript, published (to `out_routing_key`) unless the script says
//! `quiet`.
//!
//! ```text
//! inc KEY N          KEY+N=<value seen>
//! get KEY            KEY=<value>|KEY=nil
//! set KEY VALUE [TTL_MS]
//! del KEY
//! cas KEY EXPECTED NEW   (`-` for none)  cas=true|false
//! list PREFIX [LIMIT]    list=a,b,c
//! sleep MS           busy-waits MS milliseconds
//! retry | reject     the outcome (default ack)
//! quiet              publish nothing
//! config KEY         KEY=<value>|KEY=nil, also written to the host's log
//! ```
//!
//! A failed call appends `err=<error>` and the script goes on. With a
//! `script` config value (lines separated by `;`), every message runs that
//! instead of its body (the benchmark's line 5k).

use warren_guest::kv::{self, KvError};
use warren_guest::{Handler, Message, Outbound, Outcome};

struct Counter;

fn opt(s: &str) -> Option<&[u8]> {
    (s != "-").then_some(s.as_bytes())
}

fn shown(e: KvError) -> String {
    format!("err={e:?}")
}

impl Handler for Counter {
    fn handle(msg: Message) -> Outcome {
        let script = match warren_guest::config("script") {
            Some(s) => s.replace(';', "\n"),
            None => String::from_utf8_lossy(&msg.body).into_owned(),
        };
        let mut out: Vec<String> = Vec::new();
        let mut outcome = Outcome::Ack;
        let mut quiet = false;
        for line in script.lines() {
            let w: Vec<&str> = line.split_whitespace().collect();
            let arg = |i: usize| w.get(i).copied().unwrap_or("");
            let r = match w.first().copied() {
                Some("inc") => kv::increment(arg(1), arg(2).parse().unwrap_or(1))
                    .map(|n| format!("{}+{}={n}", arg(1), arg(2))),
                Some("get") => kv::get(arg(1)).map(|v| match v {
                    Some(v) => format!("{}={}", arg(1), String::from_utf8_lossy(&v)),
                    None => format!("{}=nil", arg(1)),
                }),
                Some("set") => {
                    kv::set(arg(1), arg(2).as_bytes(), arg(3).parse().ok()).map(|()| "set".into())
                }
                Some("del") => kv::delete(arg(1)).map(|()| "del".into()),
                Some("cas") => kv::compare_and_swap(arg(1), opt(arg(2)), opt(arg(3)))
                    .map(|ok| format!("cas={ok}")),
                Some("list") => kv::list_keys(arg(1), arg(2).parse().unwrap_or(100))
                    .map(|keys| format!("list={}", keys.join(","))),
                Some("sleep") => {
                    let ms: u64 = arg(1).parse().unwrap_or(0);
                    let until = std::time::Instant::now() + std::time::Duration::from_millis(ms);
                    while std::time::Instant::now() < until {
                        std::hint::spin_loop();
                    }
                    Ok("slept".into())
                }
                Some("retry") => {
                    outcome = Outcome::Retry(warren_guest::Retry {
                        delay_ms: Some(100),
                        reason: "asked to".into(),
                    });
                    Ok("retry".into())
                }
                Some("reject") => {
                    outcome = Outcome::Reject("asked to".into());
                    Ok("reject".into())
                }
                Some("config") => {
                    let v = warren_guest::config(arg(1)).unwrap_or_else(|| "nil".into());
                    warren_guest::info(&format!("config {}={v}", arg(1)));
                    Ok(format!("{}={v}", arg(1)))
                }
                Some("quiet") => {
                    quiet = true;
                    Ok("quiet".into())
                }
                _ => Ok(String::new()),
            };
            out.push(r.unwrap_or_else(shown));
        }
        if !quiet {
            let routing_key = warren_guest::config("out_routing_key")
                .unwrap_or_else(|| format!("{}.out", msg.routing_key));
            let mut o = Outbound::new("", &routing_key, out.join("\n").into_bytes());
            o.correlation_id = msg.message_id;
            if let Err(e) = warren_guest::publish(o) {
                return Outcome::reject(format!("cannot publish: {e:?}"));
            }
        }
        outcome
    }
}

warren_guest::export!(Counter);
