//! A handler that attacks the host through what it hands it (outputs, log
//! lines, reasons), for testing that the host bounds what a guest can make
//! it allocate or write. The message body selects the attack:
//!
//! - `ack`: publish the body to `out_routing_key` (config) and ack: an
//!   ordinary message, to show the host still serves.
//! - `alias-headers N LEN`: one publish whose N header names all point at
//!   one LEN-byte string in the guest's memory (copied, they would be
//!   N x LEN bytes in the host).
//! - `nested-bomb DEPTH`: one publish whose header arena is
//!   `nested[i] = [array(i+1), array(i+1)]`: 2^DEPTH values expanded.
//! - `big-routing-key N`: N publishes of one message with a 4 MiB routing
//!   key (the same guest bytes each time).
//! - `log-flood`: 100,000 `log` lines of 1 KiB and as much to stdout.
//! - `empty-log-flood`: 1,000,000 empty `log` lines.
//! - `huge-reason BYTES`: reject with a reason of BYTES bytes of `é`.
//! - `publish-missing-exchange NAME`: publish to exchange NAME (allowed,
//!   but never declared) and ack.
//! - `forge-warren-header`: publish with an `x-warren-attempt` header.
//! - `sleep MS`: block in a WASI poll (`std::thread::sleep`) for MS ms.
//! - `spin`: compute forever.
//! - `oom`: allocate 1 MiB at a time until the memory cap stops it.
//!
//! Every attack that publishes rejects with the host's refusal as its
//! reason, so a test can read what the guest was told; one the host let
//! through acks.

use std::mem::ManuallyDrop;

use warren_guest::warren::handler::host;
use warren_guest::{
    FieldValue, Handler, Header, Headers, Level, Message, Nested, Outbound, Outcome,
};

struct Hostile;

impl Handler for Hostile {
    fn handle(msg: Message) -> Outcome {
        let body = String::from_utf8_lossy(&msg.body).to_string();
        let mut words = body.split_whitespace();
        let mode = words.next().unwrap_or("");
        let mut arg = |default: usize| words.next().and_then(|w| w.parse().ok()).unwrap_or(default);
        match mode {
            "ack" => {
                let queue = warren_guest::config("out_routing_key").unwrap_or_default();
                settle(host::publish(&Outbound::new("", queue, msg.body)))
            }
            "alias-headers" => {
                let (n, len) = (arg(100_000), arg(1 << 20));
                alias_headers(n, len)
            }
            "nested-bomb" => nested_bomb(arg(31) as u32),
            "big-routing-key" => {
                let n = arg(100);
                let out = Outbound::new("", "k".repeat(4 << 20), "x");
                // The same message each time: the guest pays for it once.
                for _ in 0..n {
                    if let Err(e) = host::publish(&out) {
                        return Outcome::reject(format!("publish refused: {e:?}"));
                    }
                }
                Outcome::Ack
            }
            "log-flood" => {
                let line = "x".repeat(1024);
                for _ in 0..100_000 {
                    host::log(Level::Warn, &line);
                    println!("{line}");
                }
                Outcome::Ack
            }
            "empty-log-flood" => {
                for _ in 0..1_000_000 {
                    host::log(Level::Warn, "");
                }
                Outcome::Ack
            }
            "huge-reason" => Outcome::reject("é".repeat(arg(1 << 20) / 2)),
            "publish-missing-exchange" => {
                let exchange = words.next().unwrap_or("").to_string();
                settle(host::publish(&Outbound::new(exchange, "anything", "lost")))
            }
            "forge-warren-header" => {
                let mut out = Outbound::new("", "anywhere", "forged");
                out.headers.entries.push(Header {
                    name: "x-warren-attempt".into(),
                    value: FieldValue::I64(-1),
                });
                settle(host::publish(&out))
            }
            // Blocks in a WASI poll (std's sleep is `subscribe-duration`):
            // epoch interruption alone cannot stop it.
            "sleep" => {
                std::thread::sleep(std::time::Duration::from_millis(arg(60_000) as u64));
                Outcome::Ack
            }
            // Computes forever.
            "spin" => {
                let mut x = 0u64;
                loop {
                    x = std::hint::black_box(x.wrapping_add(1));
                }
            }
            // Allocates until the memory cap stops it.
            "oom" => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(vec![1u8; 1 << 20]);
                    std::hint::black_box(&hoard);
                }
            }
            other => Outcome::reject(format!("unknown mode {other:?}")),
        }
    }
}

fn settle(published: Result<(), warren_guest::PublishError>) -> Outcome {
    match published {
        Ok(()) => Outcome::Ack,
        Err(e) => Outcome::reject(format!("publish refused: {e:?}")),
    }
}

fn alias_headers(n: usize, len: usize) -> Outcome {
    let big = "h".repeat(len);
    let mut entries = Vec::with_capacity(n);
    for _ in 0..n {
        // SAFETY: every name aliases `big`, which outlives the call; the
        // message is never dropped (ManuallyDrop), so nothing is freed
        // twice. The instance ends with this message.
        let name = unsafe { String::from_raw_parts(big.as_ptr().cast_mut(), len, len) };
        entries.push(Header {
            name,
            value: FieldValue::Void,
        });
    }
    let mut out = Outbound::new("", "anywhere", "aliased");
    out.headers = Headers {
        entries,
        nested: Vec::new(),
    };
    let out = ManuallyDrop::new(out);
    settle(host::publish(&out))
}

fn nested_bomb(depth: u32) -> Outcome {
    let mut nested: Vec<Nested> = (0..depth)
        .map(|i| Nested::Array(vec![FieldValue::Array(i + 1), FieldValue::Array(i + 1)]))
        .collect();
    nested.push(Nested::Array(Vec::new()));
    let mut out = Outbound::new("", "anywhere", "bomb");
    out.headers = Headers {
        entries: vec![Header {
            name: "bomb".into(),
            value: FieldValue::Array(0),
        }],
        nested,
    };
    settle(host::publish(&out))
}

warren_guest::export!(Hostile);
